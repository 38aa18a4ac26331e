"""Host bulk-load/dump port: AXI4-Stream in and out, one beat of 64 bits per cycle.

``DESIGN.md`` ("Firmware and its two backends"): the device protocol's
``load(addr, array)`` / ``dump(addr, n)``. A testbench drives it with
cocotbext-axi's ``AxiStreamSource``/``AxiStreamSink`` so thousands of words
cost one Python call, not one bus transaction per word.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from gradsync.firmware import regmap as rm

from .sram import device_addr_bits, read_port_signature, write_port_signature

BEAT_BITS = 64

#: Header beat: byte address in [31:0], word count in [62:32], 1 = dump in [63].
HEADER_DUMP_BIT = 63


def bulk_header(byte_addr: int, words: int, dump: bool) -> int:
    """The 64-bit header beat that starts a bulk transfer."""
    if not 0 <= byte_addr < 1 << 32 or not 0 < words < 1 << 31:
        raise ValueError(f"bulk transfer of {words!r} words at {byte_addr!r} is not encodable")
    return byte_addr | words << 32 | int(dump) << HEADER_DUMP_BIT


class BulkPort(wiring.Component):
    """AXI4-Stream host port into the scratchpad and gradient SRAMs.

    Parameters
    ----------
    word_bits:
        Operand word width (8, 16 or 32): ``64 / word_bits`` words per beat,
        word ``i`` of a beat in bits ``[i*word_bits, (i+1)*word_bits)``.
    scratch_words, grad_words:
        Bank sizes (for the device word address; see ``hw/sram.py``).

    Attributes
    ----------
    s_axis_tdata/tvalid/tready/tlast :
        Commands and load data. A transfer starts with a header beat
        (:func:`bulk_header`). A load is followed by ``ceil(words / per_beat)``
        data beats (``tlast`` is not interpreted; the count decides).
    m_axis_tdata/tvalid/tready/tlast :
        Dump data: ``ceil(words / per_beat)`` beats, ``tlast`` on the final one;
        unused words of the final beat are 0.
    wr, rd :
        ``per_beat`` write and read ports into :class:`hw.sram.DeviceMemory`.
    busy : Out(1)
        A transfer is in progress.

    Behaviour
    ---------
    Loads accept one beat per cycle (``s_axis_tready`` is high except during
    a dump); dumps deliver one beat per cycle while ``m_axis_tready`` is high,
    so both sides run at ``8`` bytes/cycle. Words whose address is outside
    both SRAMs are not written (loads) or read as 0 (dumps); there is no
    error response on this port: the host backend checks ranges first.
    """

    def __init__(self, word_bits: int = 16, scratch_words: int = 1 << 16, grad_words: int = 1 << 15):
        if word_bits not in (8, 16, 32):
            raise ValueError(f"word_bits must be 8, 16 or 32, not {word_bits!r}")
        self.word_bits = word_bits
        self.per_beat = BEAT_BITS // word_bits
        self.scratch_words, self.grad_words = scratch_words, grad_words
        self.addr_bits = device_addr_bits(scratch_words, grad_words)
        super().__init__({
            "s_axis_tdata": In(BEAT_BITS), "s_axis_tvalid": In(1), "s_axis_tready": Out(1),
            "s_axis_tlast": In(1),
            "m_axis_tdata": Out(BEAT_BITS), "m_axis_tvalid": Out(1), "m_axis_tready": In(1),
            "m_axis_tlast": Out(1),
            "wr": Out(write_port_signature(self.addr_bits, word_bits)).array(self.per_beat),
            "rd": Out(read_port_signature(self.addr_bits, word_bits)).array(self.per_beat),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        wb = self.word_bits // 8
        sh = ceil_log2(wb)
        index_bits = self.addr_bits - 1
        hdr = self.s_axis_tdata
        # Decode the header's byte address into a device word address.
        in_bank = Signal()
        dev = Signal(self.addr_bits)
        for bank, base in enumerate((rm.SCRATCH_BASE, rm.GRAD_BASE)):
            with m.If((hdr[:32] >= base) & (hdr[:32] < base + rm.REGION_SPAN)):
                m.d.comb += [in_bank.eq(1),
                             dev.eq(Cat(((hdr[:32] - base) >> sh)[:index_bits], Const(bank, 1)))]
        ptr = Signal(self.addr_bits + 1)
        valid_bank = Signal()
        left = Signal(31)
        beat_fire = Signal()
        with m.FSM():
            with m.State("HEADER"):
                m.d.comb += self.s_axis_tready.eq(1)
                with m.If(self.s_axis_tvalid & (hdr[32:63] != 0)):
                    m.d.sync += [ptr.eq(dev), valid_bank.eq(in_bank), left.eq(hdr[32:63])]
                    with m.If(hdr[HEADER_DUMP_BIT]):
                        m.next = "DUMP_FIRST"
                    with m.Else():
                        m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += [self.s_axis_tready.eq(1), self.busy.eq(1)]
                with m.If(self.s_axis_tvalid):
                    for i, port in enumerate(self.wr):
                        m.d.comb += [
                            port.en.eq(valid_bank & (left > i)),
                            port.addr.eq(ptr + i),
                            port.data.eq(self.s_axis_tdata[i * self.word_bits:(i + 1) * self.word_bits]),
                        ]
                    m.d.sync += [ptr.eq(ptr + self.per_beat), left.eq(left - self.per_beat)]
                    with m.If(left <= self.per_beat):
                        m.d.sync += left.eq(0)
                        m.next = "HEADER"
            with m.State("DUMP_FIRST"):
                m.d.comb += [beat_fire.eq(1), self.busy.eq(1)]
                m.next = "DUMP"
            with m.State("DUMP"):
                m.d.comb += [self.m_axis_tvalid.eq(1), self.busy.eq(1),
                             self.m_axis_tlast.eq(left <= self.per_beat)]
                with m.If(self.m_axis_tready):
                    with m.If(left <= self.per_beat):
                        m.d.sync += left.eq(0)
                        m.next = "HEADER"
                    with m.Else():
                        m.d.sync += left.eq(left - self.per_beat)
                        m.d.comb += beat_fire.eq(1)
        # Reads: issue a beat's reads when entering DUMP and on every accepted beat but the last.
        issue_left = Signal(31)
        m.d.comb += issue_left.eq(Mux(self.m_axis_tvalid, left - self.per_beat, left))
        lane_on = Signal(self.per_beat)
        for i, port in enumerate(self.rd):
            m.d.comb += [port.en.eq(beat_fire & valid_bank & (issue_left > i)),
                         port.addr.eq(ptr + i)]
        m.d.sync += lane_on.eq(Mux(beat_fire, Cat(*[valid_bank & (issue_left > i)
                                                      for i in range(self.per_beat)]), lane_on))
        with m.If(beat_fire):
            m.d.sync += ptr.eq(ptr + self.per_beat)
        for i, port in enumerate(self.rd):
            m.d.comb += self.m_axis_tdata[i * self.word_bits:(i + 1) * self.word_bits].eq(
                Mux(lane_on[i], port.data, 0))
        return m
