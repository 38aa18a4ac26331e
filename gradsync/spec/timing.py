"""Closed cycle formulas of the gradsync device: the single source of timing truth.

Compute, DMA, receiver and host-bus timing, and the bound of the run
watchdog (:func:`watchdog_cycles`); the link's framing and packet timing are
in :mod:`gradsync.spec.link`.

Every engine of the golden model takes exactly the number of cycles these
functions return, and the RTL must hit them exactly (issue 5/6 block tests
compare command-to-interrupt cycle counts against them).  Formulas are plain
functions of a shape and a :class:`HardwareConfig`; the fixed latencies are
named module constants so that a change is made in one place.

Cycle accounting convention: an engine that *starts* a job at cycle ``t``
(the cycle in which the command/descriptor is taken) raises its completion
(counter increment, trace end record, interrupt status bit) at cycle
``t + <formula>``.  Commands queued back to back start at the completion cycle
of their predecessor.
"""

from __future__ import annotations

from gradsync.spec import regmap as rm
from gradsync.spec.formats import DEFAULT_FORMAT, BFloat16Format, FixedPointFormat
from gradsync.spec.hardware import HardwareConfig
from gradsync.spec.link import (
    NIC_WINDOW_PACKETS,
    ceil_div,
    chunk_tx_cycles,
    nic_timeouts,
    packet_cycles,
    wire_bytes,
)
from gradsync.spec.link import word_period as link_word_period

# --- fixed latencies (cycles) -------------------------------------------------

#: Compute sequencer: pop the command FIFO and decode one command.
CMD_DECODE_CYCLES = 2
#: Synchronous SRAM read latency (address to data), every SRAM.
SRAM_READ_LATENCY_CYCLES = 1
#: Last result word leaving the array / vector pipe to its SRAM write.
WRITEBACK_LATENCY_CYCLES = 1
#: Vector unit pipeline depth (multiply, round, saturate stages).
VECTOR_PIPELINE_CYCLES = 3
#: 32-bit words in one DMA descriptor (see ``gradsync.spec.regmap``).
DESCRIPTOR_WORDS = rm.DESCRIPTOR_WORDS
#: Descriptor validation after its last word is fetched.
DESCRIPTOR_CHECK_CYCLES = 1
#: Writing the descriptor's status word back to ring memory on completion.
DESCRIPTOR_WRITEBACK_CYCLES = 1
#: Receiver: commit of a CRC-checked packet, header load and window check
#: before its first payload word is applied (store-and-forward: a packet is
#: applied only after its CRC word arrived, one 32-bit word per cycle).
RX_APPLY_LATENCY_CYCLES = 3


def gemm_tiles(m: int, n: int, hw: HardwareConfig) -> int:
    """Output tiles of an ``m x n`` result on an ``R x C`` array (rows of C by R)."""
    return ceil_div(m, hw.array_rows) * ceil_div(n, hw.array_cols)


def gemm_cycles(
    m: int,
    k: int,
    n: int,
    hw: HardwareConfig,
    fmt: FixedPointFormat | BFloat16Format = DEFAULT_FORMAT,
) -> int:
    """Cycles of one GEMM command ``C[m,n] = A[m,k] @ B[k,n]``, launch to completion.

    Output-stationary ``R x C`` array: PE ``(i, j)`` accumulates ``C[i, j]`` of
    the current tile; row ``i`` of A enters from the left delayed by ``i``
    cycles, column ``j`` of B from the top delayed by ``j`` cycles.  Tiles are
    taken row-major over the ``ceil(m/R) x ceil(n/C)`` output tiles (partial
    edge tiles cost as much as full ones: idle PEs).

    ``CMD_DECODE + SRAM_READ_LATENCY``
        command decode, then the first operand words arrive from SRAM.
    ``(T - 1) * max(k, R)``
        tile issue interval: a tile streams ``k`` operand beats; its ``R x C``
        results are copied into shadow registers and drained one row of ``C``
        words per cycle (``R`` cycles) *while the next tile streams*, so
        consecutive tiles are ``max(k, R)`` cycles apart (double buffering).
    ``k + (R + C - 2)``
        the last tile: ``k`` beats, plus the skew until PE ``(R-1, C-1)``
        has consumed its last operand pair.
    ``fmt.mac_latency_cycles - 1``
        the PE pipeline beyond one cycle: 0 in fixed point, 1 in bf16 (the
        product is registered before the fp32 add). It delays every result by
        the same cycle, so it is paid once per command, not per tile.
    ``R + WRITEBACK_LATENCY``
        drain of the last tile's shadow registers, last SRAM write.
    """
    if min(m, k, n) < 1:
        raise ValueError(f"GEMM dimensions must be >= 1, not {(m, k, n)!r}")
    r, c = hw.array_rows, hw.array_cols
    tiles = gemm_tiles(m, n, hw)
    return (
        CMD_DECODE_CYCLES
        + SRAM_READ_LATENCY_CYCLES
        + (tiles - 1) * max(k, r)
        + k
        + (r + c - 2)
        + (fmt.mac_latency_cycles - 1)
        + r
        + WRITEBACK_LATENCY_CYCLES
    )


VECTOR_OPS = ("relu", "relu_bwd", "scale", "sgd")


def refused_command_cycles() -> int:
    """Cycles of a compute command refused at decode (or a NOP): decode only, nothing written.

    The completion counter, ERR_CODE and ``Irq.ERROR`` become visible in the
    cycle ``CMD_DECODE_CYCLES`` after the command was taken.
    """
    return CMD_DECODE_CYCLES


def vector_cycles(op: str, n: int, hw: HardwareConfig) -> int:
    """Cycles of one vector command over ``n`` elements, launch to completion.

    ``CMD_DECODE + SRAM_READ_LATENCY + ceil(n / lanes) + VECTOR_PIPELINE +
    WRITEBACK_LATENCY``: ``lanes`` elements per cycle in a fully pipelined unit.
    Two-operand ops (``relu_bwd``, ``sgd``) read both operands in the same
    cycle from different banks, so every op has the same formula.
    """
    if op not in VECTOR_OPS:
        raise ValueError(f"vector op must be one of {VECTOR_OPS}, not {op!r}")
    if n < 1:
        raise ValueError(f"vector length must be >= 1, not {n!r}")
    return (
        CMD_DECODE_CYCLES
        + SRAM_READ_LATENCY_CYCLES
        + ceil_div(n, hw.vector_lanes)
        + VECTOR_PIPELINE_CYCLES
        + WRITEBACK_LATENCY_CYCLES
    )


def descriptor_fetch_cycles(hw: HardwareConfig) -> int:
    """Cycles from the DMA arbiter's grant to a validated descriptor.

    One 32-bit ring-memory word per cycle after the SRAM read latency, then
    the validation cycle.
    """
    return SRAM_READ_LATENCY_CYCLES + DESCRIPTOR_WORDS + DESCRIPTOR_CHECK_CYCLES


def descriptor_cycles(length_bytes: int, hw: HardwareConfig, bf16: bool = False) -> int:
    """DMA engine occupancy of one valid descriptor, grant to completion.

    ``descriptor_fetch + chunk_tx + DESCRIPTOR_WRITEBACK``, the chunk's link time
    of its wire bytes (half its LENGTH with ``DescFlag.BF16``: ``wire_bytes``).  The arbiter grants
    the next descriptor in the cycle after completion, so a high-priority
    descriptor posted while a low-priority one runs waits at most one
    ``descriptor_cycles`` of the running chunk (chunk-granular preemption).
    """
    return (
        descriptor_fetch_cycles(hw)
        + chunk_tx_cycles(wire_bytes(length_bytes, bf16), hw.link)
        + (DESCRIPTOR_WRITEBACK_CYCLES)
    )


def priority_wait_bound(running_length_bytes: int, hw: HardwareConfig, bf16: bool = False) -> int:
    """Longest wait of a queue-0 descriptor whose doorbell rings while a queue-1
    descriptor of ``running_length_bytes`` is running: the remainder of that
    descriptor, at most all of it (granted in the doorbell's cycle otherwise)."""
    return descriptor_cycles(running_length_bytes, hw, bf16)


def refused_descriptor_cycles(hw: HardwareConfig) -> int:
    """DMA engine occupancy of a descriptor refused by validation (nothing sent)."""
    return descriptor_fetch_cycles(hw) + DESCRIPTOR_WRITEBACK_CYCLES


def packet_arrival_offset(hw: HardwareConfig, payload_bytes: int) -> int:
    """Cycles from the end of a packet's transmission to its reduce-add being visible.

    The packet's last (CRC) word is put on the link one word period
    (``gradsync.spec.link.word_period``) before its transmission ends and arrives
    ``link_latency_cycles`` later; the receiver then commits it, checks its window and
    applies :func:`rx_apply_words` 32-bit payload words per cycle (store-and-forward, so no corrupted word is
    ever applied).  A packet refused by the window checks takes the same time.
    This is the idle-receiver case of :func:`rx_visible_cycle`, which also
    accounts for a previous packet still being applied.
    """
    return (
        hw.link_latency_cycles
        + rx_apply_cycles(payload_bytes, rx_apply_words(hw))
        + 1
        - link_word_period(hw.link_bytes_per_cycle)
    )


def crc_arrival_offset(hw: HardwareConfig) -> int:
    """Cycles from the end of a packet's transmission to its CRC word's arrival (the CRC's
    beat is the packet's last, put on the link one word period before the end)."""
    return hw.link_latency_cycles - link_word_period(hw.link_bytes_per_cycle)


def rx_apply_words(hw: HardwareConfig) -> int:
    """Payload words the receiver's applier writes per cycle: the build's link width in
    words (1, or 2 on a ``link_width_bytes`` 8 build, at any bandwidth it runs at), so that
    it keeps up with an 8 bytes/cycle link."""
    return hw.link_width_bytes // 4


def rx_apply_cycles(payload_bytes: int, words_per_cycle: int = 1) -> int:
    """Receiver applier occupancy of one packet: window check, then ``words_per_cycle``
    payload words per cycle (:func:`rx_apply_words`).

    A bf16 packet's payload word is two fp32 elements, applied in the same cycle.
    """
    return RX_APPLY_LATENCY_CYCLES + ceil_div(payload_bytes, 4 * words_per_cycle)


def rx_visible_cycle(
    crc_arrival: int, applier_free: int, payload_bytes: int, words_per_cycle: int = 1
) -> int:
    """Cycle a packet's effects (memory, RECEIVED, RX_DONE) become visible.

    Packets are applied in order, one at a time: the applier takes a packet
    the cycle after its CRC word arrived or when it finished the previous
    packet, whichever is later.  For an idle receiver this equals
    ``t_end + packet_arrival_offset(hw, payload_bytes)``.
    """
    return max(crc_arrival + 1, applier_free) + rx_apply_cycles(payload_bytes, words_per_cycle)


#: Cycles from a CSR-port handshake (AXI4-Lite AW+W, or AR) to its response (BVALID, RVALID):
#: the RTL registers the request, performs it in the next cycle and answers in the one after
#: (``hw/axil.py``).  A host write that returns ``host_write_cycles`` after it starts hands
#: its request over ``CSR_RESPONSE_CYCLES`` before that (a read likewise), so the host's
#: cycles must be at least this (the RTL backend's calibration checks it).
CSR_RESPONSE_CYCLES = 2


def host_bulk_cycles(n_bytes: int, hw: HardwareConfig) -> int:
    """Cycles of a host bulk load or dump of ``n_bytes`` of device memory."""
    return hw.host_bulk_setup_cycles + ceil_div(max(n_bytes, 0), hw.host_bulk_bytes_per_cycle)


# --- watchdog -----------------------------------------------------------------

#: Packets a NIC keeps for resending, its replay window (one source: ``spec.link``).
NIC_REPLAY_WINDOW_PACKETS = NIC_WINDOW_PACKETS
#: Resend rounds (:func:`resend_round_cycles`) a run may spend without any progress
#: before the watchdog stops it.  The NICs resend forever, so a held-down link is only
#: ever noticed here.  At a packet loss rate ``p`` a healthy run is stopped only if
#: one packet is lost this many times in a row while nothing else moves: ``p**64``,
#: below 1e-6 even at ``p = 0.8``.
WATCHDOG_RESEND_ROUNDS = 64
#: Host latencies around an event (interrupt, register reads, a descriptor) and margin.
WATCHDOG_SLACK_CYCLES = 1024


def longest_command_cycles(
    layers: tuple[int, ...],
    local_batch: int,
    hw: HardwareConfig,
    fmt: FixedPointFormat | BFloat16Format = DEFAULT_FORMAT,
) -> int:
    """Cycles of the longest compute command a training step of ``layers`` issues.

    Per layer ``n_in -> n_out`` with local batch ``b``: the forward GEMM
    ``(b, n_in, n_out)``, the weight-gradient GEMM ``(n_in, b, n_out)``, the
    activation-gradient GEMM ``(b, n_out, n_in)`` and the SGD update over
    ``n_in * n_out`` elements (the longest vector command).
    """
    longest = 0
    for n_in, n_out in zip(layers[:-1], layers[1:], strict=True):
        b = local_batch
        longest = max(
            longest,
            gemm_cycles(b, n_in, n_out, hw, fmt),
            gemm_cycles(n_in, b, n_out, hw, fmt),
            gemm_cycles(b, n_out, n_in, hw, fmt),
            vector_cycles("sgd", n_in * n_out, hw),
        )
    return longest


def longest_bulk_cycles(hw: HardwareConfig, word_bytes: int) -> int:
    """Cycles of the longest host bulk transfer: the whole scratchpad or trace memory."""
    trace_bytes = hw.trace_records * rm.TRACE_RECORD_WORDS * 4
    return host_bulk_cycles(max(hw.scratchpad_words * word_bytes, trace_bytes), hw)


def resend_round_cycles(hw: HardwareConfig) -> int:
    """Longest resend round of a NIC: its resend timeout, then its whole replay window of
    largest packets sent again (``nic_timeouts(hw.link)[0] + NIC_REPLAY_WINDOW_PACKETS *
    packet_cycles(max_payload_bytes)``)."""
    resend_timeout, _holdoff = nic_timeouts(hw.link)
    return resend_timeout + NIC_REPLAY_WINDOW_PACKETS * packet_cycles(hw.max_payload_bytes, hw.link)


def watchdog_cycles(
    hw: HardwareConfig,
    layers: tuple[int, ...],
    local_batch: int,
    word_bytes: int,
    fmt: FixedPointFormat | BFloat16Format = DEFAULT_FORMAT,
) -> int:
    """Cycles without progress after which a training run is stopped as hung (both backends).

    Progress is an engine event or a packet: a packet sent or applied by a
    NIC, an interrupt taken or a bulk transfer ended by a node's firmware.  In
    a healthy run the longest gap between two of them is a lost packet's
    resend rounds, or one compute command, or one bulk transfer, plus host
    latencies; the bound is their sum::

        WATCHDOG_RESEND_ROUNDS * resend_round_cycles(hw)
        + longest_command_cycles(layers, local_batch, hw)
        + longest_bulk_cycles(hw, word_bytes)
        + WATCHDOG_SLACK_CYCLES

    About 350,000 cycles for the ``small`` preset's default run.
    """
    return (
        WATCHDOG_RESEND_ROUNDS * resend_round_cycles(hw)
        + longest_command_cycles(tuple(layers), local_batch, hw, fmt)
        + longest_bulk_cycles(hw, word_bytes)
        + WATCHDOG_SLACK_CYCLES
    )
