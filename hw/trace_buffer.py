"""Trace buffer of a node: engine records in, the host's TRACE_DATA pops and bulk reads out.

``DESIGN.md`` ("Observability"): every engine's :data:`~gradsync.hw.events.TraceWrite`
lands here, packed as ``gradsync.spec.regmap.TRACE_RECORD_LAYOUT`` says; the
CSR block (``hw/csr.py``) exposes the ``TRACE_*`` registers over
:func:`trace_regs_signature`, and the host bulk port reads the memory directly.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from gradsync.spec import regmap as rm

from .events import TraceWrite
from .sram import read_port_signature

#: One trace record in the trace memory: ``w<i>`` is word ``i`` of ``rm.TRACE_RECORD_LAYOUT``.
TraceRecordLayout = data.StructLayout({f"w{i}": 32 for i in range(rm.TRACE_RECORD_WORDS)})


def pack_fields(fields, values: dict):
    """``Cat`` of ``values[f.name]`` placed at each ``regmap.Field``'s bits, gaps zero."""
    parts, pos = [], 0
    for f in sorted(fields, key=lambda f: f.lsb):
        if f.lsb > pos:
            parts.append(Const(0, f.lsb - pos))
        parts.append(values[f.name][: f.width])
        pos = f.lsb + f.width
    return Cat(*parts)


def pack_trace_record(w) -> list:
    """The words of trace record ``w`` (a :data:`TraceWrite`), as ``rm.TRACE_RECORD_LAYOUT`` lays them out."""
    values = {
        "CYCLE_LO": w.cycle[:32], "TAG": w.tag, "AUX": w.aux,
        "cycle_hi": w.cycle[32:], "engine": w.engine, "event": w.event, "kind": w.kind,
    }  # fmt: skip
    words = []
    for index, name, fields, _doc in rm.TRACE_RECORD_LAYOUT:
        assert index == len(words), "TRACE_RECORD_LAYOUT lists the words in order"
        words.append(values[name] if fields is None else pack_fields(fields, values))
    return words


def trace_regs_signature(count_bits: int) -> wiring.Signature:
    """The ``TRACE_*`` registers as the register file sees the trace buffer.

    Members
    -------
    pop : Out(1)
        A read of TRACE_DATA is accepted: move to the next word (and record).
    tail_we, tail_wdata : Out
        A write of TRACE_TAIL.
    data : In(32)
        TRACE_DATA: the current word of the oldest record (``rm.TRACE_EMPTY_WORD`` when empty).
    underrun : In(1)
        The ``pop`` of this cycle found the buffer empty (``ErrorCode.TRACE_EMPTY``).
    count : In(count_bits)
        TRACE_COUNT: records waiting.
    head, tail, drops : In(32)
        TRACE_HEAD, TRACE_TAIL, TRACE_DROPS.
    """
    return wiring.Signature(
        {
            "pop": Out(1),
            "tail_we": Out(1),
            "tail_wdata": Out(32),
            "data": In(32),
            "underrun": In(1),
            "count": In(count_bits),
            "head": In(32),
            "tail": In(32),
            "drops": In(32),
        }
    )


class TraceBuffer(wiring.Component):
    """Circular buffer of trace records with a drop count, a pop port and bulk read ports.

    Parameters
    ----------
    records:
        Capacity in records (a power of two >= 2).
    writers:
        Number of record inputs.
    read_ports:
        Read ports into the memory as 32-bit words (record ``r`` word ``w`` at
        word address ``4 r + w``).

    Attributes
    ----------
    writes : In(TraceWrite).array(writers)
        Records to append; all valid ones of a cycle are stored in port order,
        visible next cycle. With ``enable`` low they are ignored; those that
        do not fit are counted in ``drops``.
    enable : In(1)
        ``CONTROL.trace_enable``.
    half : Out(1)
        A record is being stored and at least half the buffer is then in use
        (``Irq.TRACE``).
    regs : In(trace_regs_signature)
        The ``TRACE_*`` registers. A TRACE_DATA pop of an empty buffer reads
        ``rm.TRACE_EMPTY_WORD``, moves nothing and pulses ``underrun``; a
        TRACE_TAIL write moves the tail only within the records written
        (``TAIL - old TAIL <= COUNT``) and restarts a pop in progress.
        When a pop and such a write meet in one cycle, the write wins.  The
        memory read behind ``data`` is synchronous: a new tail record (after
        its predecessor's last pop, a TAIL write, or its own store into an
        empty buffer) shows in ``data`` one cycle after ``count``/``tail``
        say so.  The AXI4-Lite front end accepts one read every other cycle,
        which covers consecutive pops, but not a TRACE_DATA read in the cycle
        right after a TAIL write or a store into an empty buffer.
    rd : In(read_port_signature).array(read_ports)
        Data the cycle after ``en``, held while ``en`` is low.
    """

    def __init__(self, *, records: int, writers: int, read_ports: int = 0):
        if records < 2 or records & (records - 1):
            raise ValueError(f"records must be a power of two >= 2, not {records!r}")
        if writers < 1:
            raise ValueError(f"writers must be >= 1, not {writers!r}")
        self.records = records
        self.count_bits = ceil_log2(records) + 1
        self.word_bits = ceil_log2(records * rm.TRACE_RECORD_WORDS)
        ports = {
            "writes": In(TraceWrite).array(writers),
            "enable": In(1),
            "half": Out(1),
            "regs": In(trace_regs_signature(self.count_bits)),
        }
        if read_ports:
            ports["rd"] = In(read_port_signature(self.word_bits, 32)).array(read_ports)
        self.read_ports = read_ports
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        depth = self.records
        regs = self.regs
        m.submodules.mem = mem = memory.Memory(shape=TraceRecordLayout, depth=depth, init=[])
        head = Signal(32)
        tail = Signal(32)
        drops = Signal(32)
        used = Signal(self.count_bits)
        m.d.comb += [
            used.eq(head - tail),
            regs.count.eq(used),
            regs.head.eq(head),
            regs.tail.eq(tail),
            regs.drops.eq(drops),
        ]

        # Appends: each valid record takes the next free slot, in port order, while there is one.
        writes = list(self.writes)
        stored = Const(0, len(writes).bit_length())
        dropped = Const(0, len(writes).bit_length())
        for w in writes:
            wp = mem.write_port()
            go = Signal()
            m.d.comb += go.eq(w.valid & self.enable & (used + stored < depth))
            m.d.comb += [
                wp.en.eq(go),
                wp.addr.eq(head + stored),
                *(wp.data[f"w{i}"].eq(word) for i, word in enumerate(pack_trace_record(w))),
            ]
            next_stored = Signal(len(writes).bit_length() + 1)
            next_dropped = Signal(len(writes).bit_length() + 1)
            m.d.comb += [
                next_stored.eq(stored + go),
                next_dropped.eq(dropped + (w.valid & self.enable & ~go)),
            ]
            stored, dropped = next_stored, next_dropped
        m.d.sync += [head.eq(head + stored), drops.eq(drops + dropped)]
        m.d.comb += self.half.eq((stored != 0) & (used + stored >= depth // 2))

        # TRACE_DATA: word pop_word of the record at the tail.
        tail_rd = mem.read_port()
        m.d.comb += [tail_rd.addr.eq(tail), tail_rd.en.eq(1)]
        pop_word = Signal(range(rm.TRACE_RECORD_WORDS))
        value = tail_rd.data.as_value().word_select(pop_word, 32)
        m.d.comb += [
            regs.data.eq(Mux(used != 0, value, rm.TRACE_EMPTY_WORD)),
            regs.underrun.eq(regs.pop & (used == 0)),
        ]
        with m.If(regs.pop & (used != 0)):
            m.d.sync += pop_word.eq(pop_word + 1)
            with m.If(pop_word == rm.TRACE_RECORD_WORDS - 1):
                m.d.sync += tail.eq(tail + 1)
        with m.If(regs.tail_we & ((regs.tail_wdata - tail)[:32] <= used)):
            m.d.sync += [tail.eq(regs.tail_wdata), pop_word.eq(0)]

        for i in range(self.read_ports):
            host = self.rd[i]
            rp = mem.read_port()
            word = Signal(range(rm.TRACE_RECORD_WORDS), name=f"rd{i}_word")
            m.d.comb += [rp.addr.eq(host.addr[len(word) :]), rp.en.eq(host.en)]
            with m.If(host.en):
                m.d.sync += word.eq(host.addr[: len(word)])
            m.d.comb += host.data.eq(rp.data.as_value().word_select(word, 32))
        return m
