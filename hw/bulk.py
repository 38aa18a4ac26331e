"""Host bulk-load/dump port: AXI4-Stream in and out, one beat of 64 bits per cycle.

``DESIGN.md`` ("Firmware and its two backends"): the device protocol's
``load(addr, array)`` / ``dump(addr, n)``. A testbench drives it with
cocotbext-axi's ``AxiStreamSource``/``AxiStreamSink`` so thousands of words
cost one Python call, not one bus transaction per word.

Regions (``gradsync.spec.regmap`` memory map): the scratchpad and gradient SRAMs
in operand words, and -- when the node has them (``wide_regions``) -- ring
memory (load and dump) and trace memory (dump) in 32-bit words, as
``model/device.py``'s ``load``/``dump`` accept them.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from gradsync.spec import regmap as rm
from gradsync.spec.host import BEAT_BITS, HEADER_DUMP_BIT, bulk_header, device_addr_bits

from .events import TraceWrite
from .sram import read_port_signature, write_port_signature

__all__ = ["BEAT_BITS", "HEADER_DUMP_BIT", "BulkPort", "bulk_header"]

WIDE_PER_BEAT = BEAT_BITS // 32

#: Region codes of a transfer (scratchpad and gradient are the device-address banks).
REGION_SCRATCH, REGION_GRAD, REGION_RING, REGION_TRACE, REGION_NONE = range(5)

#: (The header beat's layout, :data:`BEAT_BITS` and :func:`bulk_header`: ``gradsync.spec.host``.)


class BulkPort(wiring.Component):
    """AXI4-Stream host port into the scratchpad and gradient SRAMs (and ring/trace memory).

    Parameters
    ----------
    word_bits:
        Operand word width (8, 16 or 32): ``64 / word_bits`` words per beat,
        word ``i`` of a beat in bits ``[i*word_bits, (i+1)*word_bits)``.
    scratch_words, grad_words:
        Bank sizes (for the device word address; see ``hw/sram.py``).
    wide_regions:
        Also serve ring memory (``RING_MEM_BASE``) and trace memory
        (``TRACE_MEM_BASE``) in 32-bit words, two per beat, through
        ``ring_wr``/``ring_rd``/``trace_rd``; ``wide_words`` is the larger of
        the two memories in 32-bit words. Trace memory is read-only: load
        beats to it are consumed and written nowhere.
    host_trace, host_lead_cycles, host_lag_cycles, host_dump_lag_cycles:
        Report every transfer as a pair of HOST trace records (``trace``),
        as ``model/device.py`` does for ``load``/``dump``: START stamped
        ``host_lead_cycles`` before the header beat's handshake (the host's
        call) or, with ``host_lead_cycles=None``, ``host_bulk_cycles`` of
        ``gradsync.spec.timing`` (``host_setup_cycles + ceil(bytes /
        host_bytes_per_cycle)``, the host bus cost of the transfer) before
        its END, END ``host_lag_cycles`` (dumps: ``host_dump_lag_cycles``)
        after the last beat's handshake (the host's return; cocotbext-axi's
        sink returns a frame one cycle sooner after its last beat than its
        source reports the last beat sent); both are emitted in the last beat's cycle, kind
        LOAD, RING (ring loads), DUMP or TRACE (trace dumps), tag ``tag``
        (``HOST_TAG``), aux the bytes moved.

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
    ring_wr, ring_rd, trace_rd :
        Two 32-bit-word ports each (``wide_regions``); addresses are word
        indices within the memory; read data is expected the cycle after
        ``en`` and held while ``en`` is low.
    now : In(48), tag : In(32), trace : Out(TraceWrite).array(2)
        Cycle counter, ``HOST_TAG`` and the START/END records (``host_trace``).
    busy : Out(1)
        A transfer is in progress.

    Behaviour
    ---------
    Loads accept one beat per cycle (``s_axis_tready`` is high except during
    a dump); dumps deliver one beat per cycle while ``m_axis_tready`` is high,
    so both sides run at ``8`` bytes/cycle. Words whose address is outside
    the memories are not written (loads) or read as 0 (dumps); there is no
    error response on this port: the host backend checks ranges first.
    """

    def __init__(self, word_bits: int = 16, scratch_words: int = 1 << 16, grad_words: int = 1 << 15,
                 *, wide_regions: bool = False, wide_words: int = 1 << 14,
                 host_trace: bool = False, host_lead_cycles: int | None = 1, host_lag_cycles: int = 1,
                 host_dump_lag_cycles: int = 0, host_setup_cycles: int = 16,
                 host_bytes_per_cycle: int = 8):
        if word_bits not in (8, 16, 32):
            raise ValueError(f"word_bits must be 8, 16 or 32, not {word_bits!r}")
        if wide_words < 2:
            raise ValueError(f"wide_words must be >= 2, not {wide_words!r}")
        self.word_bits = word_bits
        self.per_beat = BEAT_BITS // word_bits
        self.scratch_words, self.grad_words = scratch_words, grad_words
        self.addr_bits = device_addr_bits(scratch_words, grad_words)
        self.wide_regions = wide_regions
        self.wide_bits = ceil_log2(wide_words)
        self.host_trace = host_trace
        self.host_lead_cycles, self.host_lag_cycles = host_lead_cycles, host_lag_cycles
        self.host_dump_lag_cycles = host_dump_lag_cycles
        if host_bytes_per_cycle < 1 or host_bytes_per_cycle & (host_bytes_per_cycle - 1):
            raise ValueError(f"host_bytes_per_cycle must be a power of two, not "
                             f"{host_bytes_per_cycle!r}")
        self.host_setup_cycles, self.host_bytes_per_cycle = host_setup_cycles, host_bytes_per_cycle
        ports = {
            "s_axis_tdata": In(BEAT_BITS), "s_axis_tvalid": In(1), "s_axis_tready": Out(1),
            "s_axis_tlast": In(1),
            "m_axis_tdata": Out(BEAT_BITS), "m_axis_tvalid": Out(1), "m_axis_tready": In(1),
            "m_axis_tlast": Out(1),
            "wr": Out(write_port_signature(self.addr_bits, word_bits)).array(self.per_beat),
            "rd": Out(read_port_signature(self.addr_bits, word_bits)).array(self.per_beat),
            "busy": Out(1),
        }
        if wide_regions:
            ports.update({
                "ring_wr": Out(write_port_signature(self.wide_bits, 32)).array(WIDE_PER_BEAT),
                "ring_rd": Out(read_port_signature(self.wide_bits, 32)).array(WIDE_PER_BEAT),
                "trace_rd": Out(read_port_signature(self.wide_bits, 32)).array(WIDE_PER_BEAT),
            })
        if host_trace:
            ports.update({"now": In(48), "tag": In(32), "trace": Out(TraceWrite).array(2)})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        wb = self.word_bits // 8
        sh = ceil_log2(wb)
        index_bits = self.addr_bits - 1
        hdr = self.s_axis_tdata
        base_addr = hdr[:32]
        # Decode the header's byte address: region, and word address within it.
        region = Signal(3)  # REGION_* below
        dev = Signal(self.addr_bits)
        wide_addr = Signal(self.wide_bits)
        m.d.comb += region.eq(REGION_NONE)
        for bank, base in enumerate((rm.SCRATCH_BASE, rm.GRAD_BASE)):
            with m.If((base_addr >= base) & (base_addr < base + rm.REGION_SPAN)):
                m.d.comb += [region.eq(bank),
                             dev.eq(Cat(((base_addr - base) >> sh)[:index_bits], Const(bank, 1)))]
        if self.wide_regions:
            for code, base in ((REGION_RING, rm.RING_MEM_BASE), (REGION_TRACE, rm.TRACE_MEM_BASE)):
                with m.If((base_addr >= base) & (base_addr < base + rm.REGION_SPAN)):
                    m.d.comb += [region.eq(code), wide_addr.eq((base_addr - base)[2:])]
        ptr = Signal(max(self.addr_bits, self.wide_bits) + 1)
        reg = Signal(3)  # region of the transfer in progress
        left = Signal(31)
        beat_fire = Signal()
        is_wide = Signal()
        m.d.comb += is_wide.eq((reg == REGION_RING) | (reg == REGION_TRACE))
        step = Signal(range(max(self.per_beat, WIDE_PER_BEAT) + 1))
        m.d.comb += step.eq(Mux(is_wide, WIDE_PER_BEAT, self.per_beat))
        lanes = max(self.per_beat, WIDE_PER_BEAT)
        last_beat = Signal()  # the cycle a transfer's last beat is handed over
        with m.FSM():
            with m.State("HEADER"):
                m.d.comb += self.s_axis_tready.eq(1)
                with m.If(self.s_axis_tvalid & (hdr[32:63] != 0)):
                    m.d.sync += [ptr.eq(Mux(region >= REGION_RING, wide_addr, dev)),
                                 reg.eq(region), left.eq(hdr[32:63])]
                    with m.If(hdr[HEADER_DUMP_BIT]):
                        m.next = "DUMP_FIRST"
                    with m.Else():
                        m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += [self.s_axis_tready.eq(1), self.busy.eq(1)]
                with m.If(self.s_axis_tvalid):
                    for i, port in enumerate(self.wr):
                        m.d.comb += [
                            port.en.eq((reg <= REGION_GRAD) & (left > i)),
                            port.addr.eq(ptr + i),
                            port.data.eq(self.s_axis_tdata[i * self.word_bits:(i + 1) * self.word_bits]),
                        ]
                    if self.wide_regions:
                        for i, port in enumerate(self.ring_wr):
                            m.d.comb += [
                                port.en.eq((reg == REGION_RING) & (left > i)),
                                port.addr.eq(ptr + i),
                                port.data.eq(self.s_axis_tdata[32 * i:32 * (i + 1)]),
                            ]
                    m.d.sync += [ptr.eq(ptr + step), left.eq(left - step)]
                    with m.If(left <= step):
                        m.d.sync += left.eq(0)
                        m.d.comb += last_beat.eq(1)
                        m.next = "HEADER"
            with m.State("DUMP_FIRST"):
                m.d.comb += [beat_fire.eq(1), self.busy.eq(1)]
                m.next = "DUMP"
            with m.State("DUMP"):
                m.d.comb += [self.m_axis_tvalid.eq(1), self.busy.eq(1),
                             self.m_axis_tlast.eq(left <= step)]
                with m.If(self.m_axis_tready):
                    with m.If(left <= step):
                        m.d.sync += left.eq(0)
                        m.d.comb += last_beat.eq(1)
                        m.next = "HEADER"
                    with m.Else():
                        m.d.sync += left.eq(left - step)
                        m.d.comb += beat_fire.eq(1)
        # Reads: issue a beat's reads when entering DUMP and on every accepted beat but the last.
        issue_left = Signal(31)
        m.d.comb += issue_left.eq(Mux(self.m_axis_tvalid, left - step, left))
        lane_on = Signal(lanes)
        data_reg = Signal(3)
        for i, port in enumerate(self.rd):
            m.d.comb += [port.en.eq(beat_fire & (reg <= REGION_GRAD) & (issue_left > i)),
                         port.addr.eq(ptr + i)]
        wide_ports = {}
        if self.wide_regions:
            wide_ports = {REGION_RING: self.ring_rd, REGION_TRACE: self.trace_rd}
            for code, ports in wide_ports.items():
                for i, port in enumerate(ports):
                    m.d.comb += [port.en.eq(beat_fire & (reg == code) & (issue_left > i)),
                                 port.addr.eq(ptr + i)]
        with m.If(beat_fire):
            m.d.sync += [lane_on.eq(Cat(*[(reg != REGION_NONE) & (issue_left > i)
                                          for i in range(lanes)])),
                         data_reg.eq(reg),
                         ptr.eq(ptr + step)]
        with m.If(data_reg <= REGION_GRAD):
            for i, port in enumerate(self.rd):
                m.d.comb += self.m_axis_tdata[i * self.word_bits:(i + 1) * self.word_bits].eq(
                    Mux(lane_on[i], port.data, 0))
        for code, ports in wide_ports.items():
            with m.If(data_reg == code):
                for i, port in enumerate(ports):
                    m.d.comb += self.m_axis_tdata[32 * i:32 * (i + 1)].eq(
                        Mux(lane_on[i], port.data, 0))

        if self.host_trace:
            # The model records a host transfer's START and END when it completes.
            started = Signal(48)
            dump = Signal()
            nbytes = Signal(32)
            with m.If(self.s_axis_tvalid & self.s_axis_tready & ~self.busy
                      & (hdr[32:63] != 0)):
                m.d.sync += [
                    started.eq(self.now - (self.host_lead_cycles or 0)),
                    dump.eq(hdr[HEADER_DUMP_BIT]),
                    nbytes.eq(hdr[32:63] * Mux(region >= REGION_RING, 4, wb)),
                ]
            kind = Signal(8)
            with m.If(dump):
                m.d.comb += kind.eq(Mux(reg == REGION_TRACE, rm.Kind.TRACE, rm.Kind.DUMP))
            with m.Else():
                m.d.comb += kind.eq(Mux(reg == REGION_RING, rm.Kind.RING, rm.Kind.LOAD))
            end = Signal(48)
            m.d.comb += end.eq(self.now + Mux(dump, self.host_dump_lag_cycles,
                                              self.host_lag_cycles))
            if self.host_lead_cycles is None:
                sh_b = ceil_log2(self.host_bytes_per_cycle)
                cost = self.host_setup_cycles + ((nbytes + self.host_bytes_per_cycle - 1) >> sh_b)
                begin = (end - cost)[:48]
            else:
                begin = started
            for t, (event, cycle) in zip(self.trace, (
                    (rm.TraceEvent.START, begin), (rm.TraceEvent.END, end)), strict=True):
                m.d.comb += [
                    t.valid.eq(last_beat), t.cycle.eq(cycle), t.engine.eq(rm.Engine.HOST),
                    t.event.eq(event), t.kind.eq(kind), t.tag.eq(self.tag), t.aux.eq(nbytes),
                ]
        return m
