"""Link framing and the timing of a chunk on a link: packets, efficiency, automatic chunk size.

A chunk (one DMA descriptor) is cut into packets of at most
``max_payload_bytes``; every packet carries a :data:`PACKET_HEADER_BYTES`
header and a :data:`PACKET_CRC_BYTES` CRC and is serialised at
``bytes_per_cycle``; the receiver sees its last byte ``latency_cycles``
later.  The NIC (``hw/nic.py``) builds exactly this framing, the golden model
times it with these functions, and the firmware picks ``--chunk-bytes auto``
with :func:`auto_chunk_bytes` from the ``LINK_*`` registers
(:meth:`LinkConfig.from_registers`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gradsync.spec import regmap as rm

#: Packet header: the link word of sequence/window/flags/length, address, tag.
PACKET_HEADER_BYTES = 12
#: CRC-32 trailer of every packet.
PACKET_CRC_BYTES = 4
#: Bits of the header's payload-length field (payload words - 1).
PAYLOAD_WORDS_BITS = 7
#: Largest payload a packet header can describe: 2**PAYLOAD_WORDS_BITS words of 4 bytes.
MAX_PAYLOAD_BYTES = 4 << PAYLOAD_WORDS_BITS
#: Link bandwidths (bytes per cycle) the RTL implements: 1, 2 and 4 send a 32-bit word every
#: ``4 / bytes_per_cycle`` cycles, 8 two words per cycle (a build of ``link_width_bytes`` 8).
LINK_BYTES_PER_CYCLE = (1, 2, 4, 8)
#: Widths of a build's link datapath (``HardwareConfig.link_width_bytes``, fixed at
#: elaboration): 4 carries one 32-bit word per beat, 8 two (a 64-bit beat).  A link may run
#: at any ``LINK_BYTES_PER_CYCLE`` up to its build's width (``LINK_SET``).
LINK_WIDTHS_BYTES = (4, 8)
#: Largest link latency the RTL's delay lines hold (``LINK_LIMITS.max_latency``): a latency is
#: a run-time setting (``LINK_SET``) up to this bound fixed at elaboration.
LINK_MAX_LATENCY_CYCLES = 1023


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def link_bytes_allowed(width_bytes: int) -> tuple[int, ...]:
    """The bandwidths (bytes per cycle) a build of link width ``width_bytes`` may run at."""
    return tuple(b for b in LINK_BYTES_PER_CYCLE if b <= width_bytes)


def word_period(bytes_per_cycle: int) -> int:
    """Cycles between beats of a link at ``bytes_per_cycle``: ``4 / bytes_per_cycle`` for 1, 2
    and 4 (a 32-bit word per beat), 1 for 8 (a beat of two words every cycle)."""
    return max(1, 4 // bytes_per_cycle)


def beat_words(bytes_per_cycle: int) -> int:
    """32-bit words a link at ``bytes_per_cycle`` carries per beat: 2 at 8, else 1."""
    return 2 if bytes_per_cycle == 8 else 1


@dataclass(frozen=True)
class LinkConfig:
    """A link as the sender sees it."""

    bytes_per_cycle: int
    latency_cycles: int
    max_payload_bytes: int
    header_bytes: int = PACKET_HEADER_BYTES
    crc_bytes: int = PACKET_CRC_BYTES

    @property
    def framing_bytes(self) -> int:
        return self.header_bytes + self.crc_bytes

    @classmethod
    def from_registers(cls, link_info: int, latency_cycles: int, max_payload_bytes: int):
        """The link a device reports in ``LINK_INFO``, ``LINK_LATENCY``, ``LINK_MAX_PAYLOAD``."""
        r = rm.reg("LINK_INFO")
        return cls(
            bytes_per_cycle=r.field("bytes_per_cycle").get(link_info),
            latency_cycles=latency_cycles,
            max_payload_bytes=max_payload_bytes,
            header_bytes=r.field("header_bytes").get(link_info),
            crc_bytes=r.field("crc_bytes").get(link_info),
        )


def link_width_from_info(link_info: int) -> int:
    """The build's link width in bytes (4 or 8) from a ``LINK_INFO`` value (its ``width8``)."""
    return 8 if rm.reg("LINK_INFO").field("width8").get(link_info) else 4


def link_set_value(link: LinkConfig) -> int:
    """The ``LINK_SET`` register value that sets ``link`` (bytes per cycle, payload, latency)."""
    r = rm.reg("LINK_SET")
    return r.pack(
        bytes_per_cycle=link.bytes_per_cycle,
        payload_words=link.max_payload_bytes // 4,
        latency=link.latency_cycles,
    )


def link_set_refusal(
    value: int, limits: int, width_bytes: int = 4
) -> tuple[rm.ErrorCode, int] | None:
    """Why an unlocked node refuses ``LINK_SET = value`` given ``LINK_LIMITS = limits``.

    ``(LINK_SET_BAD, index)`` for the first bad field in the register's order
    (0 bytes_per_cycle: not one of :func:`link_bytes_allowed` of the build's
    ``width_bytes`` -- 8 on a 4-byte-wide build is refused --, 1 payload_words,
    2 latency), ``None`` if it is accepted.  The RTL (``hw/node.py``) checks the
    same fields in the same order.
    """
    r, lim = rm.reg("LINK_SET"), rm.reg("LINK_LIMITS")
    if r.field("bytes_per_cycle").get(value) not in link_bytes_allowed(width_bytes):
        return rm.ErrorCode.LINK_SET_BAD, 0
    if not 1 <= r.field("payload_words").get(value) <= lim.field("max_payload_words").get(limits):
        return rm.ErrorCode.LINK_SET_BAD, 1
    if r.field("latency").get(value) > lim.field("max_latency").get(limits):
        return rm.ErrorCode.LINK_SET_BAD, 2
    return None


def link_from_set_value(value: int) -> LinkConfig:
    """The link an accepted ``LINK_SET = value`` sets."""
    r = rm.reg("LINK_SET")
    return LinkConfig(
        bytes_per_cycle=r.field("bytes_per_cycle").get(value),
        latency_cycles=r.field("latency").get(value),
        max_payload_bytes=4 * r.field("payload_words").get(value),
    )


#: Gradient exchange formats (``--grad-format``): bytes of one gradient element on the link.
#: The gradient SRAM holds fp32 either way; ``bf16`` is a descriptor flag (``DescFlag.BF16``).
EXCHANGE_ELEMENT_BYTES = {"fp32": 4, "bf16": 2}


def wire_bytes(length_bytes: int, bf16: bool = False) -> int:
    """Payload bytes on the link of a descriptor of ``length_bytes`` fp32 gradient bytes.

    With ``DescFlag.BF16`` each 32-bit payload word carries two bf16 elements (the
    lower-addressed one in bits 15:0), so the link carries half the descriptor's LENGTH.
    Every link-time function below takes these wire bytes.
    """
    return length_bytes // 2 if bf16 else length_bytes


def memory_bytes(payload_bytes: int, bf16: bool = False) -> int:
    """Bytes of fp32 memory a packet of ``payload_bytes`` covers at the receiver (twice with bf16).

    A window's ``RECEIVED``, the receive trace's byte count and the window checks use these.
    """
    return 2 * payload_bytes if bf16 else payload_bytes


def packet_payloads(length_bytes: int, link: LinkConfig) -> list[int]:
    """Payload sizes of the packets a chunk of ``length_bytes`` is cut into."""
    full, rest = divmod(length_bytes, link.max_payload_bytes)
    return [link.max_payload_bytes] * full + ([rest] if rest else [])


def packet_cycles(payload_bytes: int, link: LinkConfig) -> int:
    """Cycles one packet occupies the transmitter (serialisation only).

    ``ceil((header + payload + CRC) / bytes_per_cycle)``; packets of a chunk
    are sent back to back.  At 8 bytes/cycle that is the packet's 64-bit beats: its
    ``(header + payload + CRC) / 4`` words two per beat, the last beat holding only the
    CRC word when the count is odd.
    """
    return ceil_div(link.framing_bytes + payload_bytes, link.bytes_per_cycle)


def chunk_tx_cycles(length_bytes: int, link: LinkConfig) -> int:
    """Transmitter busy time of one chunk (one descriptor), without the descriptor fetch."""
    return sum(packet_cycles(p, link) for p in packet_payloads(length_bytes, link))


def link_efficiency(chunk_bytes: int, link: LinkConfig, bf16: bool = False) -> float:
    """Payload fraction of a chunk's link time including framing and latency.

    ``wire / (bytes_per_cycle * (chunk_tx_cycles(wire) + latency))`` with ``wire =
    wire_bytes(chunk_bytes, bf16)`` -- the quantity ``--chunk-bytes auto`` drives
    above a target.
    """
    wire = wire_bytes(chunk_bytes, bf16)
    busy = chunk_tx_cycles(wire, link) + link.latency_cycles
    return wire / (link.bytes_per_cycle * busy)


def auto_chunk_bytes(
    link: LinkConfig, word_bytes: int, target_efficiency: float = 0.8, bf16: bool = False
) -> int:
    """Smallest chunk (whole number of full packets) with link efficiency >= target.

    Small chunks let a lower layer overtake sooner; each chunk pays header,
    CRC and link latency, so it must be large enough to amortise them.  If no
    chunk up to 64 packets reaches the target the largest candidate is
    returned.  The result is a multiple of ``word_bytes`` (of memory bytes: with
    ``bf16`` a packet carries twice its payload in fp32 gradient bytes, so the chunk
    is twice as large for the same packets).
    """
    if not 0.0 < target_efficiency < 1.0:
        raise ValueError(f"target_efficiency must be in (0, 1), not {target_efficiency!r}")
    candidate = link.max_payload_bytes
    for packets in range(1, 65):
        candidate = memory_bytes(packets * link.max_payload_bytes, bf16)
        if link_efficiency(candidate, link, bf16) >= target_efficiency:
            break
    return candidate - candidate % word_bytes


#: NIC flow control of every node (``docs/comm.md``: enough that a fault-free transfer never
#: stalls): receive-buffer credits, and replay-buffer slots (packets sent, not yet acknowledged).
NIC_CREDITS = 16
NIC_WINDOW_PACKETS = 16


def nic_timeouts(link: LinkConfig) -> tuple[int, int]:
    """(retransmission timeout, NAK hold-off) in cycles, as every NIC uses them.

    The hold-off is one round trip of the longest packet, its acknowledgement
    and some slack; the timeout two of them plus margin.  The packet's serialisation
    is ``words * 4 // bytes_per_cycle`` (at 8 bytes/cycle: half its words, rounded down).
    """
    max_packet_words = ceil_div(link.framing_bytes + link.max_payload_bytes, 4)
    rtt = 2 * link.latency_cycles + max_packet_words * 4 // link.bytes_per_cycle + 16
    return 2 * rtt + 64, rtt
