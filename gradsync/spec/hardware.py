"""The hardware configuration of a node and its link, and the named presets.

One :class:`HardwareConfig` describes the device every room builds or
models: the RTL elaborates it (``hw/``), the golden model times it
(``model/``), the firmware reads it back from the build-constant registers
(:func:`constant_registers`), and the CLI picks one of :data:`PRESETS` by name
(``--hardware NAME``).  Both backends default to the same preset,
:data:`DEFAULT_PRESET`, so ``gradsync train --backend model`` and
``--backend rtl`` with the same flags run the same hardware.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from gradsync.spec import regmap as rm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.limits import LimitError, check_link, check_link_latency, check_link_width
from gradsync.spec.link import (
    LINK_MAX_LATENCY_CYCLES,
    MAX_PAYLOAD_BYTES,
    PACKET_CRC_BYTES,
    PACKET_HEADER_BYTES,
    LinkConfig,
)


@dataclass(frozen=True)
class HardwareConfig:
    """Parameters of one node and its link.  Units are in the names.

    Memory sizes are in operand words (the number format's width).  The
    defaults are the ``small`` preset (:data:`PRESETS`) but for its slower link.
    """

    array_rows: int = 8
    array_cols: int = 8
    vector_lanes: int = 8
    scratchpad_words: int = 8192
    gradient_words: int = 8192
    ring_entries: int = 64
    cmd_fifo_depth: int = 16
    rx_windows: int = 64
    trace_records: int = 2048
    link_bytes_per_cycle: int = 4
    link_latency_cycles: int = 50
    packet_header_bytes: int = PACKET_HEADER_BYTES
    packet_crc_bytes: int = PACKET_CRC_BYTES
    max_payload_bytes: int = 256
    host_write_cycles: int = 4
    host_read_cycles: int = 8
    host_irq_latency_cycles: int = 10
    host_bulk_setup_cycles: int = 16
    host_bulk_bytes_per_cycle: int = 8
    #: The link datapath's width fixed at elaboration (``LINK_WIDTHS_BYTES``): 4, a 32-bit
    #: word per beat (the default, today's datapath), or 8, a 64-bit beat of two words.  The
    #: link runs at any bandwidth up to it (``LINK_SET``): 8 bytes/cycle needs width 8.
    link_width_bytes: int = 4

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an int, not {value!r}")
            minimum = 0 if name in ("link_latency_cycles", "packet_crc_bytes") else 1
            if value < minimum:
                raise LimitError(name, value, f">= {minimum}")
        if self.max_payload_bytes % 4:
            raise LimitError("max_payload_bytes", self.max_payload_bytes, "a multiple of 4")
        check_link_width(self.link_width_bytes)
        if self.rx_windows > rm.MAX_RX_WINDOWS:
            raise LimitError("rx_windows", self.rx_windows, f"<= {rm.MAX_RX_WINDOWS}")

    @property
    def link(self) -> LinkConfig:
        """The link facts the timing of a chunk depends on."""
        return LinkConfig(
            bytes_per_cycle=self.link_bytes_per_cycle,
            latency_cycles=self.link_latency_cycles,
            header_bytes=self.packet_header_bytes,
            crc_bytes=self.packet_crc_bytes,
            max_payload_bytes=self.max_payload_bytes,
        )

    def check_carriable(self) -> None:
        """Raise :class:`~gradsync.spec.limits.LimitError` unless the packet format and the
        RTL's link and NIC carry this link (1, 2, 4 bytes/cycle, 8 on a build of
        ``link_width_bytes`` 8; payload up to 512 bytes).

        Not a constructor check: the scale simulator models links of any width.
        """
        check_link_width(self.link_width_bytes, self.link_bytes_per_cycle)
        check_link(
            self.link_bytes_per_cycle,
            self.max_payload_bytes,
            self.packet_header_bytes,
            self.packet_crc_bytes,
        )
        check_link_latency(self.link_latency_cycles)

    def to_dict(self) -> dict:
        return asdict(self)


#: Named hardware presets (``gradsync train --hardware NAME``).
PRESETS: dict[str, HardwareConfig] = {
    # SRAMs and trace buffer just large enough for the default training run
    # (--layers 64,32,32,10 --global-batch 16 on 2 or more nodes needs 5088
    # scratchpad and 6784 gradient words at 16 bits); small Verilator builds.
    # A slow link (1 byte/cycle, 100 cycles latency) makes that run
    # communication-bound, so that priority's lower layers overtake the upper
    # layers' remaining chunks and layer 1 is ready earlier than under fifo.
    "small": HardwareConfig(link_bytes_per_cycle=1, link_latency_cycles=100),
    # room for wider layers: 64 Ki scratchpad / 32 Ki gradient words, 16 Ki trace records
    "large": HardwareConfig(
        scratchpad_words=1 << 16, gradient_words=1 << 15, trace_records=1 << 14
    ),
}
#: What both backends run unless told otherwise.
DEFAULT_PRESET = "small"
DEFAULT_HARDWARE = PRESETS[DEFAULT_PRESET]

PRESET_HELP = {
    "small": "8 Ki scratchpad + 8 Ki gradient words, 2 Ki trace records, 1 byte/cycle link "
    "with 100 cycles latency (default)",
    "large": "64 Ki scratchpad + 32 Ki gradient words, 16 Ki trace records, 4 bytes/cycle link "
    "with 50 cycles latency",
}


def preset(name: str, **overrides: int) -> HardwareConfig:
    """The preset ``name``, with ``overrides`` replacing some of its fields."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ValueError(
            f"hardware preset must be one of {', '.join(PRESETS)}, not {name!r}"
        ) from None
    return replace(base, **overrides)


def constant_registers(
    hw: HardwareConfig, fmt: FixedPointFormat, node_id: int = 0, num_nodes: int = 1
) -> dict[str, int]:
    """Values of the build-constant (read-only) registers of node ``node_id``.

    The RTL's CSR block is generated with these values and the golden model
    presets its registers with them; the firmware decodes them at start-up.
    """
    return {
        "NODE_ID": node_id,
        "NUM_NODES": num_nodes,
        "TX_PEER": (node_id + 1) % num_nodes,
        "HW_ARRAY": rm.reg("HW_ARRAY").pack(
            rows=hw.array_rows, cols=hw.array_cols, lanes=hw.vector_lanes
        ),
        "HW_FORMAT": fmt.to_register(),
        "SCRATCH_WORDS": hw.scratchpad_words,
        "GRAD_WORDS": hw.gradient_words,
        "HW_QUEUES": rm.reg("HW_QUEUES").pack(
            ring_entries=hw.ring_entries,
            rx_windows=hw.rx_windows,
            cmd_fifo_depth=hw.cmd_fifo_depth,
        ),
        "TRACE_DEPTH": hw.trace_records,
        "LINK_INFO": rm.reg("LINK_INFO").pack(
            bytes_per_cycle=hw.link_bytes_per_cycle,
            header_bytes=hw.packet_header_bytes,
            crc_bytes=hw.packet_crc_bytes,
            width8=int(hw.link_width_bytes == 8),
        ),
        "LINK_LATENCY": hw.link_latency_cycles,
        "LINK_MAX_PAYLOAD": hw.max_payload_bytes,
        "LINK_LIMITS": rm.reg("LINK_LIMITS").pack(
            max_payload_words=MAX_PAYLOAD_BYTES // 4, max_latency=LINK_MAX_LATENCY_CYCLES
        ),
    }


#: The link a device is built with (the reset values of ``LINK_INFO``/``LINK_LATENCY``/
#: ``LINK_MAX_PAYLOAD``) when the run's link is set at run time through ``LINK_SET``: the
#: ``small`` preset's, so that a run on that link writes nothing and any other link reuses
#: the same Verilator build.
BUILD_LINK = {
    name: getattr(PRESETS["small"], name)
    for name in ("link_bytes_per_cycle", "link_latency_cycles", "max_payload_bytes")
}


def build_config(hw: HardwareConfig) -> HardwareConfig:
    """``hw`` with :data:`BUILD_LINK`: what both backends build for a run on ``hw``, whose
    firmware then sets ``hw.link`` with ``LINK_SET`` (the link is not part of a build)."""
    return replace(hw, **BUILD_LINK)
