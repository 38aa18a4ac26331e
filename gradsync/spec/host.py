"""The host side of a node's ports: the bulk port's beats and header, the debug port's word
address, the counter ports.

One source for what the RTL (``hw/bulk.py``, ``hw/sram.py``, ``hw/node.py``) builds and
what a testbench or the RTL backend (``sim/rtl_device.py``, ``sim/train_cocotb.py``) drives
and reads, importable without Amaranth (a simulator process does not load the HDL).
"""

from __future__ import annotations

#: Width of a bulk-port beat (AXI4-Stream ``TDATA``), both directions.
BEAT_BITS = 64

#: Header beat of a bulk transfer: byte address in [31:0], word count in [62:32], 1 = dump
#: in [63].
HEADER_DUMP_BIT = 63


def bulk_header(byte_addr: int, words: int, dump: bool) -> int:
    """The 64-bit header beat that starts a bulk transfer."""
    if not 0 <= byte_addr < 1 << 32 or not 0 < words < 1 << 31:
        raise ValueError(f"bulk transfer of {words!r} words at {byte_addr!r} is not encodable")
    return byte_addr | words << 32 | int(dump) << HEADER_DUMP_BIT


def device_addr_bits(scratch_words: int, grad_words: int) -> int:
    """Width of a device word address: bank bit + the larger bank's index
    (``1 + ceil(log2(max(scratch_words, grad_words, 2)))``)."""
    return 1 + (max(scratch_words, grad_words, 2) - 1).bit_length()


#: SRAM words the debug port (``dbg_en``/``dbg_addr``/``dbg_data``) returns per address: a testbench
#: reading a layer's weights pays one simulator evaluation per 8 words, not per word.
DEBUG_WORDS = 8

#: Counters every node exposes as ports (beside the registers).
NODE_COUNTERS = (
    "tx_packets",
    "tx_retransmits",
    "tx_timeouts",
    "tx_naks",
    "rx_packets",
    "rx_crc_errors",
    "rx_seq_errors",
    "rx_duplicates",
    "rx_drops",
    "rx_holds",
    "rx_held_window",
    "rx_held_tag",
)
