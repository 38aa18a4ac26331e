"""CSR block generated from ``gradsync.spec.regmap``: AXI4-Lite slave, cycle counter, IRQ, errors, trace.

``DESIGN.md`` ("One node", "Observability"): the host's only window into a
node besides the bulk port. Offsets, access types and reset values come from
``gradsync.spec.regmap.REGISTERS`` at elaboration time; nothing is copied by hand.

Registers fall in three groups:

* implemented here: the build constants (``ID``, ``VERSION``, ``HW_*``, ...),
  ``CYCLE_LO/HI``, ``IRQ_STATUS/MASK/PENDING``, ``ERR_CODE/INFO/COUNT`` and the
  trace buffer (``TRACE_*``);
* ``RW`` storage and ``WO`` strobes for the engines: each ``RW`` register is an
  output port ``rw_<name>``; each ``WO`` register pulses ``wo_<name>`` for one
  cycle with the written value on ``wo_data``;
* ``RO`` and ``W1C`` values the engines own: input ports ``ro_<name>`` (read as
  is) and, for ``W1C`` registers other than ``IRQ_STATUS``, ``w1c_<name>`` pulses
  with the bits written as ones.

Ports of engines that are not instantiated simply stay at 0.

With ``rx_windows`` set, the ``WINn_*`` registers are not stored here but
forwarded to the receiver (``hw/nic.py``'s ``cfg_*`` port, which keeps the
window table): a write pulses ``win_we`` with ``win_index``/``win_reg``/
``win_wdata``; a read returns ``win_rdata`` for the ``win_index``/``win_reg``
it drives in the read's address cycle.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, memory, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from gradsync.spec import regmap as rm

from .events import ErrorEvent, TraceWrite
from .sram import read_port_signature

#: Registers whose behaviour lives in this block.
INTERNAL = {
    "CYCLE_LO", "CYCLE_HI", "IRQ_STATUS", "IRQ_MASK", "IRQ_PENDING",
    "ERR_CODE", "ERR_INFO", "ERR_COUNT",
    "TRACE_COUNT", "TRACE_DATA", "TRACE_HEAD", "TRACE_TAIL", "TRACE_DROPS",
}

#: Read-only build constants; values come from the ``constants`` parameter (default: reset).
CONSTANTS = {
    "ID", "VERSION", "NODE_ID", "NUM_NODES", "TX_PEER", "HW_ARRAY", "HW_FORMAT",
    "SCRATCH_WORDS", "GRAD_WORDS", "HW_QUEUES", "TRACE_DEPTH", "LINK_INFO",
    "LINK_LATENCY", "LINK_MAX_PAYLOAD",
}

#: One trace record in the trace memory: ``w<i>`` is word ``i`` of ``rm.TRACE_RECORD_LAYOUT``.
TraceRecordLayout = data.StructLayout({f"w{i}": 32 for i in range(rm.TRACE_RECORD_WORDS)})


def pack_trace_record(w) -> list:
    """The words of trace record ``w`` (a :data:`TraceWrite`), as ``rm.TRACE_RECORD_LAYOUT`` lays them out."""
    values = {
        "CYCLE_LO": w.cycle[:32], "TAG": w.tag, "AUX": w.aux,
        "cycle_hi": w.cycle[32:], "engine": w.engine, "event": w.event, "kind": w.kind,
    }
    words = []
    for index, name, fields, _doc in rm.TRACE_RECORD_LAYOUT:
        assert index == len(words), "TRACE_RECORD_LAYOUT lists the words in order"
        if fields is None:
            words.append(values[name])
            continue
        parts, pos = [], 0
        for f in sorted(fields, key=lambda f: f.lsb):
            if f.lsb > pos:
                parts.append(Const(0, f.lsb - pos))
            parts.append(values[f.name][:f.width])
            pos = f.lsb + f.width
        words.append(Cat(*parts))
    return words

AXI_OKAY = 0b00


def axil_signature(addr_bits: int) -> dict:
    """Flat AXI4-Lite slave ports named as cocotbext-axi's ``AxiLiteBus.from_prefix(dut, "s_axil")``."""
    p = "s_axil_"
    return {
        p + "awaddr": In(addr_bits), p + "awprot": In(3), p + "awvalid": In(1), p + "awready": Out(1),
        p + "wdata": In(32), p + "wstrb": In(4), p + "wvalid": In(1), p + "wready": Out(1),
        p + "bresp": Out(2), p + "bvalid": Out(1), p + "bready": In(1),
        p + "araddr": In(addr_bits), p + "arprot": In(3), p + "arvalid": In(1), p + "arready": Out(1),
        p + "rdata": Out(32), p + "rresp": Out(2), p + "rvalid": Out(1), p + "rready": In(1),
    }


class CsrBlock(wiring.Component):
    """AXI4-Lite register file of one node, generated from ``gradsync.spec.regmap``.

    Parameters
    ----------
    constants:
        Values of the read-only build-constant registers by name (see
        :data:`CONSTANTS`); missing ones read their regmap reset value.
    trace_records:
        Trace buffer capacity in records (a power of two).
    trace_writers, error_sources:
        Number of engine trace-write and error-event inputs.
    addr_bits:
        Width of the AXI4-Lite byte address (the map spans 0x0000..0x1FFF).
    rx_windows:
        ``None``: every ``WINn_*`` register is an ordinary engine port.
        Otherwise the populated RX windows, whose registers are forwarded
        (module docstring); windows at or above it read 0 and ignore writes.
    trace_read_ports:
        Read ports into the trace memory as 32-bit words (record ``r`` word
        ``w`` at word address ``4 r + w``), for the host bulk port's dumps
        of ``TRACE_MEM_BASE``.

    Attributes
    ----------
    s_axil_* :
        AXI4-Lite slave. One write (AW and W together) and one read in flight;
        ``BVALID``/``RVALID`` follow the accepting cycle by one cycle. Every
        response is OKAY. Unmapped offsets and ``WO`` registers read 0; writes
        to unmapped offsets and ``RO`` registers change nothing (the
        regmap's documented behaviour, which the golden model shares).
        ``WSTRB`` is ignored: registers are written whole.
    irq : Out(1)
        ``(IRQ_STATUS & IRQ_MASK) != 0``.
    now : Out(64)
        The free-running cycle counter (0 in the first cycle after reset).
    irq_set : In(8)
        Set bits of ``IRQ_STATUS`` (``gradsync.spec.regmap.Irq``); visible next cycle.
    trace_in : In(TraceWrite).array(trace_writers)
        Records to append; all valid ones of a cycle are stored in port
        order, visible next cycle. With ``CONTROL.trace_enable`` clear they
        are ignored; when the buffer is full they are counted in ``TRACE_DROPS``.
        Storing sets ``Irq.TRACE`` while at least half the buffer is in use.
    err_in : In(ErrorEvent).array(error_sources)
        Each valid event counts in ``ERR_COUNT``, appends an ERROR trace
        record (tag = info, aux = code) and sets ``Irq.ERROR``; the
        highest-numbered one of a cycle is latched in ``ERR_CODE``/``ERR_INFO``.
    rw_<name>, wo_<name>, wo_data, ro_<name>, w1c_<name> :
        The engine-facing registers (see the module docstring).
    win_index, win_reg, win_wdata, win_we, win_rdata :
        Forwarded RX window registers (with ``rx_windows``).
    trace_rd : In(read_port_signature).array(trace_read_ports)
        Trace memory read ports: data the cycle after ``en``, held while ``en`` is low.
    """

    def __init__(self, *, constants: dict | None = None, trace_records: int = 1 << 14,
                 trace_writers: int = 1, error_sources: int = 1, addr_bits: int = 13,
                 rx_windows: int | None = None, trace_read_ports: int = 0):
        if trace_records < 2 or trace_records & (trace_records - 1):
            raise ValueError(f"trace_records must be a power of two >= 2, not {trace_records!r}")
        constants = dict(constants or {})
        unknown = set(constants) - CONSTANTS
        if unknown:
            raise ValueError(f"constants only cover {sorted(CONSTANTS)}, not {sorted(unknown)!r}")
        self.constants = {name: constants.get(name, rm.reg(name).reset) for name in CONSTANTS
                          if name in rm.BY_NAME}
        self.trace_records = trace_records
        self.addr_bits = addr_bits
        if rx_windows is not None and not 1 <= rx_windows <= rm.MAX_RX_WINDOWS:
            raise ValueError(f"rx_windows must be in 1..{rm.MAX_RX_WINDOWS}, not {rx_windows!r}")
        self.rx_windows = rx_windows
        self.trace_read_ports = trace_read_ports
        self.trace_word_bits = ceil_log2(trace_records * rm.TRACE_RECORD_WORDS)
        self.engine_regs = [r for r in rm.REGISTERS
                            if r.name not in INTERNAL and r.name not in CONSTANTS
                            and not self._forwarded(r)]
        ports = axil_signature(addr_bits)
        ports.update({
            "irq": Out(1), "now": Out(64), "irq_set": In(8),
            "trace_in": In(TraceWrite).array(trace_writers),
            "err_in": In(ErrorEvent).array(error_sources),
            "wo_data": Out(32),
        })
        if rx_windows is not None:
            ports.update({"win_index": Out(6), "win_reg": Out(3), "win_wdata": Out(32),
                          "win_we": Out(1), "win_rdata": In(32)})
        if trace_read_ports:
            ports["trace_rd"] = In(read_port_signature(self.trace_word_bits, 32)).array(
                trace_read_ports)
        for r in self.engine_regs:
            if r.access is rm.Access.RW:
                ports[f"rw_{r.name.lower()}"] = Out(32, init=r.reset)
            elif r.access is rm.Access.WO:
                ports[f"wo_{r.name.lower()}"] = Out(1)
            else:
                ports[f"ro_{r.name.lower()}"] = In(32)
                if r.access is rm.Access.W1C:
                    ports[f"w1c_{r.name.lower()}"] = Out(32)
        super().__init__(ports)

    def _forwarded(self, r) -> bool:
        return self.rx_windows is not None and self._win_span[0] <= r.offset < self._win_span[1]

    @property
    def _win_span(self) -> tuple[int, int]:
        return rm.RX_WINDOW_BASE, rm.RX_WINDOW_BASE + rm.RX_WINDOW_STRIDE * rm.MAX_RX_WINDOWS

    def port(self, kind: str, name: str):
        """The engine-facing port ``<kind>_<name>`` (e.g. ``port("rw", "CMD_A")``)."""
        return getattr(self, f"{kind}_{name.lower()}")

    def elaborate(self, platform):
        m = Module()
        ax = {k[len("s_axil_"):]: getattr(self, k) for k in axil_signature(self.addr_bits)}
        depth = self.trace_records
        ptr_bits = ceil_log2(depth) + 1

        # ---- cycle counter, IRQ -------------------------------------------------------
        m.d.sync += self.now.eq(self.now + 1)
        irq_status = Signal(32)
        irq_mask = Signal(32)
        irq_set = Signal(32)
        irq_clear = Signal(32)
        m.d.sync += irq_status.eq((irq_status & ~irq_clear) | irq_set)
        m.d.comb += self.irq.eq((irq_status & irq_mask) != 0)
        control = self.rw_control
        trace_enable = control[rm.reg("CONTROL").field("trace_enable").lsb]

        # ---- errors -------------------------------------------------------------------------
        err_code = Signal(32)
        err_info = Signal(32)
        err_count = Signal(32)
        code_reg = rm.reg("ERR_CODE")
        n_err = Signal(range(len(self.err_in) + 1))
        m.d.comb += n_err.eq(sum(e.valid for e in self.err_in))
        m.d.sync += err_count.eq(err_count + n_err)
        for e in self.err_in:
            with m.If(e.valid):
                m.d.sync += [
                    err_code.eq(Cat(e.code, e.engine, Const(0, 4), e.index)),
                    err_info.eq(e.info),
                ]
        assert [f.lsb for f in code_reg.fields] == [0, 8, 16]

        # ---- trace buffer ---------------------------------------------------------------------
        writes = list(self.trace_in)
        for e in self.err_in:
            rec = Signal(TraceWrite)
            m.d.comb += [
                rec.valid.eq(e.valid), rec.cycle.eq(self.now + 1), rec.engine.eq(e.engine),
                rec.event.eq(rm.TraceEvent.ERROR), rec.kind.eq(rm.Kind.OTHER),
                rec.tag.eq(e.info), rec.aux.eq(e.code),
            ]
            writes.append(rec)
        trace_mem = memory.Memory(shape=TraceRecordLayout, depth=depth, init=[])
        m.submodules.trace_mem = trace_mem
        head = Signal(32)
        tail = Signal(32)
        drops = Signal(32)
        used = Signal(ptr_bits)
        m.d.comb += used.eq(head - tail)
        stored = Const(0, len(writes).bit_length())
        dropped = Const(0, len(writes).bit_length())
        for w in writes:
            wp = trace_mem.write_port()
            go = Signal()
            m.d.comb += go.eq(w.valid & trace_enable & (used + stored < depth))
            m.d.comb += [
                wp.en.eq(go),
                wp.addr.eq(head + stored),
                *(wp.data[f"w{i}"].eq(word) for i, word in enumerate(pack_trace_record(w))),
            ]
            next_stored = Signal(len(writes).bit_length() + 1)
            next_dropped = Signal(len(writes).bit_length() + 1)
            m.d.comb += [next_stored.eq(stored + go),
                         next_dropped.eq(dropped + (w.valid & trace_enable & ~go))]
            stored, dropped = next_stored, next_dropped
        m.d.sync += [head.eq(head + stored), drops.eq(drops + dropped)]
        half = Signal()
        m.d.comb += half.eq((stored != 0) & (used + stored >= depth // 2))
        trace_irq = Signal(32)
        m.d.comb += trace_irq.eq(half << (rm.Irq.TRACE.bit_length() - 1))

        trace_rd = trace_mem.read_port()
        m.d.comb += [trace_rd.addr.eq(tail), trace_rd.en.eq(1)]
        pop_word = Signal(2)
        for i in range(self.trace_read_ports):
            host = self.trace_rd[i]
            rp = trace_mem.read_port()
            word = Signal(2, name=f"trace_rd{i}_word")
            m.d.comb += [rp.addr.eq(host.addr[2:]), rp.en.eq(host.en)]
            with m.If(host.en):
                m.d.sync += word.eq(host.addr[:2])
            m.d.comb += host.data.eq(rp.data.as_value().word_select(word, 32))

        # ---- forwarded RX window registers ----------------------------------------------------
        fwd = self.rx_windows is not None
        stride_bits = ceil_log2(rm.RX_WINDOW_STRIDE)
        received = rm.offset("WIN0_RECEIVED") - rm.RX_WINDOW_BASE
        if fwd:
            lo, hi = self._win_span

            def in_win(addr):
                return (addr >= lo) & (addr < hi)

            def win_fields(addr):
                off = (addr - lo)[:16]
                return off[stride_bits:stride_bits + 6], off[2:stride_bits]

        # ---- AXI4-Lite write ------------------------------------------------------------------
        m.d.comb += [ax["bresp"].eq(AXI_OKAY), ax["rresp"].eq(AXI_OKAY)]
        wr_go = Signal()
        m.d.comb += [
            wr_go.eq(ax["awvalid"] & ax["wvalid"] & ~ax["bvalid"]),
            ax["awready"].eq(wr_go), ax["wready"].eq(wr_go),
        ]
        with m.If(ax["bvalid"] & ax["bready"]):
            m.d.sync += ax["bvalid"].eq(0)
        with m.If(wr_go):
            m.d.sync += ax["bvalid"].eq(1)
        waddr = ax["awaddr"]
        wdata = ax["wdata"]
        m.d.comb += self.wo_data.eq(wdata)
        tail_write = Signal()
        win_write = Signal()
        if fwd:
            w_index, w_reg = win_fields(waddr)
            m.d.comb += [
                win_write.eq(wr_go & in_win(waddr)),
                self.win_wdata.eq(wdata),
                self.win_we.eq(win_write & (w_index < self.rx_windows)
                               & (w_reg != received // 4)),
                self.win_index.eq(w_index),
                self.win_reg.eq(w_reg),
            ]
        with m.If(wr_go), m.Switch(waddr):
            for r in rm.REGISTERS:
                if r.access is rm.Access.RO or self._forwarded(r):
                    continue
                with m.Case(r.offset):
                    if r.name == "IRQ_STATUS":
                        m.d.comb += irq_clear.eq(wdata)
                    elif r.name == "IRQ_MASK":
                        m.d.sync += irq_mask.eq(wdata)
                    elif r.name == "TRACE_TAIL":
                        # Only forward within the written records; a pop in progress restarts.
                        with m.If((wdata - tail)[:32] <= used):
                            m.d.comb += tail_write.eq(1)
                    elif r.access is rm.Access.RW:
                        m.d.sync += self.port("rw", r.name).eq(wdata)
                    elif r.access is rm.Access.WO:
                        m.d.comb += self.port("wo", r.name).eq(1)
                    elif r.access is rm.Access.W1C:
                        m.d.comb += self.port("w1c", r.name).eq(wdata)
        m.d.comb += irq_set.eq(self.irq_set | ((n_err != 0) << (rm.Irq.ERROR.bit_length() - 1))
                               | trace_irq)

        # ---- AXI4-Lite read -------------------------------------------------------------------
        rd_go = Signal()
        # A read of a window register waits while a window register is written (shared index).
        m.d.comb += [rd_go.eq(ax["arvalid"] & ~ax["rvalid"]
                              & ~(win_write & (in_win(ax["araddr"]) if fwd else 0))),
                     ax["arready"].eq(rd_go)]
        with m.If(ax["rvalid"] & ax["rready"]):
            m.d.sync += ax["rvalid"].eq(0)
        cycle_hi = Signal(32)
        pop = Signal()
        with m.If(rd_go):
            m.d.sync += [ax["rvalid"].eq(1), ax["rdata"].eq(0)]
            if fwd:
                r_index, r_reg = win_fields(ax["araddr"])
                with m.If(~win_write):
                    m.d.comb += [self.win_index.eq(r_index), self.win_reg.eq(r_reg)]
                with m.If(in_win(ax["araddr"]) & (r_index < self.rx_windows)):
                    m.d.sync += ax["rdata"].eq(self.win_rdata)
            with m.Switch(ax["araddr"]):
                for r in rm.REGISTERS:
                    if r.access is rm.Access.WO or self._forwarded(r):
                        continue
                    with m.Case(r.offset):
                        value = self._read_value(r, locals())
                        m.d.sync += ax["rdata"].eq(value)
                        if r.name == "CYCLE_LO":
                            m.d.sync += cycle_hi.eq(self.now[32:])
                        elif r.name == "TRACE_DATA":
                            m.d.comb += pop.eq(used != 0)
        with m.If(pop):
            m.d.sync += pop_word.eq(pop_word + 1)
            with m.If(pop_word == rm.TRACE_RECORD_WORDS - 1):
                m.d.sync += tail.eq(tail + 1)
        with m.If(tail_write):
            m.d.sync += [tail.eq(wdata), pop_word.eq(0)]
        return m

    def _read_value(self, r, env):
        """The value a read of register ``r`` returns (evaluated in :meth:`elaborate`)."""
        name = r.name
        if name in self.constants:
            return Const(self.constants[name] & 0xFFFF_FFFF, 32)
        table = {
            "CYCLE_LO": lambda: self.now[:32],
            "CYCLE_HI": lambda: env["cycle_hi"],
            "IRQ_STATUS": lambda: env["irq_status"],
            "IRQ_MASK": lambda: env["irq_mask"],
            "IRQ_PENDING": lambda: env["irq_status"] & env["irq_mask"],
            "ERR_CODE": lambda: env["err_code"],
            "ERR_INFO": lambda: env["err_info"],
            "ERR_COUNT": lambda: env["err_count"],
            "TRACE_COUNT": lambda: env["used"],
            "TRACE_HEAD": lambda: env["head"],
            "TRACE_TAIL": lambda: env["tail"],
            "TRACE_DROPS": lambda: env["drops"],
            "TRACE_DATA": lambda: self._trace_word(env),
        }
        if name in table:
            return table[name]()
        if r.access is rm.Access.RW:
            return self.port("rw", name)
        return self.port("ro", name)

    @staticmethod
    def _trace_word(env):
        rec = env["trace_rd"].data
        word = env["pop_word"]
        value = Mux(word == 0, rec.w0, Mux(word == 1, rec.w1, Mux(word == 2, rec.w2, rec.w3)))
        return Mux(env["used"] != 0, value, 0)
