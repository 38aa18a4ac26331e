"""What a training configuration must stay within to be carried by the device and its link.

One place for the limits both backends obey: the golden model would happily
simulate a 3-byte link, a 1 KiB packet payload or a 1000-node ring, but the
packet format (``gradsync.spec.link``), the descriptor and tag fields
(``gradsync.spec.regmap``) and the RTL cannot carry them.  Every check raises
:class:`LimitError`, which names the configuration field, the value and the
rule; the CLI turns the field into its option name (``--nodes``, ``--lr``, ...).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from gradsync.spec import link as lk
from gradsync.spec import regmap as rm

if TYPE_CHECKING:
    from gradsync.spec.formats import FixedPointFormat


class LimitError(ValueError):
    """A configuration value outside what the device, its formats or its link carry.

    ``field`` is the configuration field (``nodes``, ``learning_rate``,
    ``link_bytes_per_cycle``, ...), ``value`` the refused value and ``rule``
    what it must be, so that ``str(exc)`` reads ``FIELD must be RULE, not VALUE``
    (``label`` replaces FIELD where a plainer word reads better).
    """

    def __init__(self, field: str, value: object, rule: str, label: str | None = None):
        self.field, self.value, self.rule = field, value, rule
        super().__init__(f"{label or field} must be {rule}, not {value!r}")


def _descriptor_field(name: str) -> rm.Field:
    control = next(f for _, word, f, _ in rm.DESCRIPTOR_LAYOUT if word == "CONTROL")
    return next(f for f in control if f.name == name)


#: Nodes a ring can have: every node's link peer is a descriptor ``peer`` field value.
MAX_NODES = 1 << _descriptor_field("peer").width
#: Weight layers a tag can name (its ``layer`` field; layer 0 tags the inputs).
MAX_WEIGHT_LAYERS = (1 << next(f for f in rm.TAG_FIELDS if f.name == "layer").width) - 1


def check_nodes(nodes: int) -> None:
    """1 .. :data:`MAX_NODES` nodes (the descriptor's ``peer`` field)."""
    if nodes < 1:
        raise LimitError("nodes", nodes, ">= 1")
    if nodes > MAX_NODES:
        width = _descriptor_field("peer").width
        raise LimitError(
            "nodes", nodes, f"at most {MAX_NODES} (a descriptor's peer field holds {width} bits)"
        )


def check_layers(layers: tuple[int, ...]) -> None:
    """At least two positive widths, at most :data:`MAX_WEIGHT_LAYERS` weight layers."""
    if len(layers) < 2 or min(layers) < 1:
        raise LimitError("layers", tuple(layers), "at least two positive widths")
    if len(layers) - 1 > MAX_WEIGHT_LAYERS:
        raise LimitError(
            "layers",
            len(layers) - 1,
            f"at most {MAX_WEIGHT_LAYERS} weight layers (the tag's field)",
        )


def check_learning_rate(lr: float, fmt: FixedPointFormat) -> None:
    """A finite rate whose operand value (``fmt.quantize``) is 1 LSB .. the largest, unsaturated.

    The device applies ``W - round(lr_raw * g >> frac_bits)`` with ``lr_raw`` held
    in an operand word: NaN would saturate to the most negative value, infinity
    to the largest (about 32 at 16/10) and a tiny rate to 0 (no training).
    """
    largest = fmt.qmax * fmt.lsb
    if not (math.isfinite(lr) and 0 < lr <= largest and int(fmt.quantize(lr)) >= 1):
        raise LimitError(
            "learning_rate",
            lr,
            f"a finite number whose {fmt.total_bits}-bit fixed-point value "
            f"({fmt.frac_bits} fractional bits) lies in {fmt.lsb:g}..{largest:g}",
        )


def check_link_latency(latency_cycles: int) -> None:
    """0 .. :data:`gradsync.spec.link.LINK_MAX_LATENCY_CYCLES` cycles (the RTL's delay lines)."""
    if not 0 <= latency_cycles <= lk.LINK_MAX_LATENCY_CYCLES:
        raise LimitError(
            "link_latency_cycles",
            latency_cycles,
            f"in 0..{lk.LINK_MAX_LATENCY_CYCLES} (the RTL link's delay line)",
        )


def check_link_width(width_bytes: int, bytes_per_cycle: int | None = None) -> None:
    """A build's link datapath width (:data:`gradsync.spec.link.LINK_WIDTHS_BYTES`) and, if
    given, a bandwidth it can run at (at most the width: 8 bytes/cycle needs width 8)."""
    if width_bytes not in lk.LINK_WIDTHS_BYTES:
        allowed = " or ".join(map(str, lk.LINK_WIDTHS_BYTES))
        raise LimitError("link_width_bytes", width_bytes, allowed)
    allowed = lk.link_bytes_allowed(width_bytes)
    if bytes_per_cycle is not None and bytes_per_cycle not in allowed:
        rule = f"one of {', '.join(map(str, allowed))}"
        wider = [b for b in lk.LINK_BYTES_PER_CYCLE if b not in allowed]
        if bytes_per_cycle in lk.LINK_BYTES_PER_CYCLE:
            rule += (
                f" on a build of link width {width_bytes} bytes "
                f"({bytes_per_cycle} bytes/cycle needs link_width_bytes={bytes_per_cycle})"
            )
        elif wider:  # name what a wider build takes too
            more = ", ".join(map(str, wider))
            rule += f" ({more} with link_width_bytes={max(lk.LINK_WIDTHS_BYTES)})"
        raise LimitError("link_bytes_per_cycle", bytes_per_cycle, rule)


def check_link(bytes_per_cycle: int, max_payload_bytes: int, header_bytes: int, crc_bytes: int):
    """The link widths and packet sizes the packet format and the NIC carry.

    ``bytes_per_cycle`` one of :data:`gradsync.spec.link.LINK_BYTES_PER_CYCLE` (the
    build's width bound is :func:`check_link_width`'s);
    ``max_payload_bytes`` a multiple of 4 up to :data:`gradsync.spec.link.MAX_PAYLOAD_BYTES`;
    the header and CRC exactly the packet format's.
    """
    if bytes_per_cycle not in lk.LINK_BYTES_PER_CYCLE:
        allowed = ", ".join(map(str, lk.LINK_BYTES_PER_CYCLE))
        raise LimitError("link_bytes_per_cycle", bytes_per_cycle, f"one of {allowed}")
    if not 4 <= max_payload_bytes <= lk.MAX_PAYLOAD_BYTES or max_payload_bytes % 4:
        raise LimitError(
            "max_payload_bytes",
            max_payload_bytes,
            f"a multiple of 4 from 4 to {lk.MAX_PAYLOAD_BYTES} (a packet header counts "
            f"payload words in {lk.PAYLOAD_WORDS_BITS} bits)",
        )
    if header_bytes != lk.PACKET_HEADER_BYTES:
        raise LimitError("packet_header_bytes", header_bytes, f"{lk.PACKET_HEADER_BYTES}")
    if crc_bytes != lk.PACKET_CRC_BYTES:
        raise LimitError("packet_crc_bytes", crc_bytes, f"{lk.PACKET_CRC_BYTES}")
