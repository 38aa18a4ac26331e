"""The link packet as the NIC builds and parses it: words, header fields, CRC.

``DESIGN.md`` ("NIC + links"): the DMA engine (``hw/dma.py``) emits
:data:`TxWord` packets, the transmitter (``hw/nic.py``) stamps the sequence
number and appends the CRC, the receiver (``hw/nic_rx.py``) checks both and
hands :data:`PacketHeader` to its applier.  The byte counts come from
``gradsync.spec.link`` (``PACKET_HEADER_BYTES``, ``PACKET_CRC_BYTES``), which
the golden model's timing uses too.

Packet format (32-bit words, little-endian fields)::

    H0  [6:0] RX window  [7] bf16  [8] reduce-add  [15:9] payload words - 1  [31:16] sequence
    H1  tag (layer, chunk, step)
    H2  destination byte address in the receiver's memory
    payload words (each holds 32 / operand_bits operands, lowest address in the low bits;
                   with bf16 set, two bf16 gradients widened to fp32 at the receiver)
    CRC-32 (Ethernet polynomial) over H0..payload

On a 64-bit link (``link_width_bytes`` 8) at 8 bytes/cycle the same words travel two per
beat (:data:`TxBeat`, ``hw.link.LinkBeat2``); the transmitter and receiver fold the CRC
register over two words a cycle with :func:`crc32_step`, the same CRC.
"""

from __future__ import annotations

import zlib

from amaranth.hdl import Cat, Const, Module, Signal, Value
from amaranth.lib import crc, data

from gradsync.spec.link import PACKET_CRC_BYTES, PACKET_HEADER_BYTES

#: A word from the DMA engine to the transmitter: ``last`` ends a packet,
#: ``chunk_end`` marks the last packet of a descriptor.
TxWord = data.StructLayout({"data": 32, "last": 1, "chunk_end": 1})
#: A beat from the DMA engine to a 64-bit transmitter (``link_width_bytes`` 8): ``data`` and,
#: if ``two``, the packet's next word ``data1``; ``last``/``chunk_end`` as :data:`TxWord`'s.
TxBeat = data.StructLayout({"data": 32, "last": 1, "chunk_end": 1, "data1": 32, "two": 1})


def tx_beat(width_bytes: int) -> data.StructLayout:
    """The DMA-to-transmitter beat of a link ``width_bytes`` wide (:data:`TxWord` at 4)."""
    return TxWord if width_bytes == 4 else TxBeat


#: Link words of a packet's header, from ``gradsync.spec.link``'s framing.
HEADER_WORDS = PACKET_HEADER_BYTES // 4
# The NIC parses exactly H0..H2 (module docstring) and trails one CRC-32 link word (crc32):
# a different framing in the spec must change this file too, not pass silently.
if (HEADER_WORDS, PACKET_HEADER_BYTES % 4, PACKET_CRC_BYTES) != (3, 0, 4):
    raise ValueError(
        "hw/packet.py frames packets as three 32-bit header words and a CRC-32 word, so "
        "gradsync.spec.link must give PACKET_HEADER_BYTES 12 and PACKET_CRC_BYTES 4, not "
        f"{PACKET_HEADER_BYTES!r} and {PACKET_CRC_BYTES!r}"
    )

#: The H0 word's fields.
Header0 = data.StructLayout({"window": 7, "bf16": 1, "reduce": 1, "words_minus_1": 7, "seq": 16})

#: A packet's header as the receiver's front end hands it to the applier: H0, H1, H2.
PacketHeader = data.StructLayout({"h0": Header0, "tag": 32, "addr": 32})


def crc32() -> crc.Parameters:
    """The packet CRC: CRC-32 (Ethernet) over 32-bit words."""
    return crc.catalog.CRC32_ETHERNET(32)


def header0(window, reduce, payload_words, seq=0, bf16=False):
    """Python helper: the H0 word (tests and models build packets with it)."""
    return (
        (window & 0x7F)
        | (int(bf16) << 7)
        | (int(reduce) << 8)
        | ((payload_words - 1) << 9)
        | (seq << 16)
    )


def _crc_columns() -> list[int]:
    """Column ``j`` of the CRC-32 register update over one 32-bit word: the register after
    one word when register xor word is ``1 << j`` (zlib's reflected register, linear in GF(2))."""
    cols = []
    for j in range(32):
        r = 1 << j
        for _ in range(32):
            r = (r >> 1) ^ (0xEDB88320 if r & 1 else 0)
        cols.append(r)
    return cols


_CRC_COLUMNS = _crc_columns()
#: The CRC register before a packet's first word (the packet's CRC is the register inverted).
CRC_INIT = 0xFFFF_FFFF


def crc32_step(m: Module, reg, word, name: str) -> Signal:
    """The CRC-32 register after one more 32-bit word (combinational, a Signal named
    ``name``): ``crc32_value`` of it is the packet CRC (``crc32()``, zlib's) over every word
    so far, so a 64-bit transmitter or receiver can fold two words, or a word and the CRC,
    into one cycle.  The input is held in a Signal too, so that the XOR taps slice a wire,
    not a copy of the expression that computes it."""
    x = Signal(32, name=f"{name}_in")
    out = Signal(32, name=name)
    m.d.comb += x.eq(reg ^ word)
    bits = [Cat(*(x[j] for j in range(32) if _CRC_COLUMNS[j] >> i & 1)).xor() for i in range(32)]
    m.d.comb += out.eq(Cat(*bits))
    return out


def crc32_value(reg) -> Value:
    """The packet CRC of a CRC register (its complement)."""
    return reg ^ Const(CRC_INIT, 32)


def crc32_words_py(words) -> int:
    """Python twin of :func:`crc32_step` folded over ``words``, inverted (tests)."""
    return zlib.crc32(b"".join(int(w).to_bytes(4, "little") for w in words))
