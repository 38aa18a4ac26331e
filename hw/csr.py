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

The block is a register file (:class:`CsrBlock`, which decodes the map) with
three parts joined to it by ``wiring.connect``: the AXI4-Lite front end
(``hw/axil.py``), the trace buffer (``hw/trace_buffer.py``) and
:class:`IrqErrorLatch` (``IRQ_*``, ``ERR_*``).
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from gradsync.spec import regmap as rm

from .axil import AxiLiteTarget, axil_signature, register_bus_signature
from .events import ErrorEvent, TraceWrite
from .sram import read_port_signature
from .trace_buffer import TraceBuffer, pack_fields, trace_regs_signature

__all__ = ["CONSTANTS", "INTERNAL", "LINK_CURRENT", "CsrBlock", "IrqErrorLatch", "axil_signature"]

#: Registers whose behaviour lives in this block.
INTERNAL = {
    "CYCLE_LO",
    "CYCLE_HI",
    "IRQ_STATUS",
    "IRQ_MASK",
    "IRQ_PENDING",
    "ERR_CODE",
    "ERR_INFO",
    "ERR_COUNT",
    "TRACE_COUNT",
    "TRACE_DATA",
    "TRACE_HEAD",
    "TRACE_TAIL",
    "TRACE_DROPS",
}

#: Read-only build constants; values come from the ``constants`` parameter (default: reset).
CONSTANTS = {
    "ID",
    "VERSION",
    "NODE_ID",
    "NUM_NODES",
    "TX_PEER",
    "HW_ARRAY",
    "HW_FORMAT",
    "SCRATCH_WORDS",
    "GRAD_WORDS",
    "HW_QUEUES",
    "TRACE_DEPTH",
    "LINK_INFO",
    "LINK_LATENCY",
    "LINK_MAX_PAYLOAD",
    "LINK_LIMITS",
}

#: Build constants a node with a run-time link drives instead (``LINK_SET``):
#: ``CsrBlock(live=LINK_CURRENT)`` makes them ``ro_`` ports.
LINK_CURRENT = ("LINK_INFO", "LINK_LATENCY", "LINK_MAX_PAYLOAD")


def irq_regs_signature() -> wiring.Signature:
    """The ``IRQ_*`` and ``ERR_*`` registers as the register file sees :class:`IrqErrorLatch`.

    Members
    -------
    clear : Out(32)
        Bits written as ones to IRQ_STATUS (W1C).
    mask_we, mask_wdata : Out
        A write of IRQ_MASK.
    status, mask, err_code, err_info, err_count : In(32)
        IRQ_STATUS, IRQ_MASK, ERR_CODE, ERR_INFO, ERR_COUNT.
    """
    return wiring.Signature(
        {
            "clear": Out(32),
            "mask_we": Out(1),
            "mask_wdata": Out(32),
            "status": In(32),
            "mask": In(32),
            "err_code": In(32),
            "err_info": In(32),
            "err_count": In(32),
        }
    )


class IrqErrorLatch(wiring.Component):
    """Interrupt status and mask; the latest error, the error count and the errors' trace records.

    Parameters
    ----------
    error_sources:
        Number of error-event inputs.

    Attributes
    ----------
    err_in : In(ErrorEvent).array(error_sources)
        Each valid event counts in ERR_COUNT and sets ``Irq.ERROR``; the
        highest-numbered one of a cycle is latched in ERR_CODE/ERR_INFO; all
        visible next cycle.
    err_trace : Out(TraceWrite).array(error_sources)
        The ERROR trace record of each event (tag = info, aux = code), stamped ``now + 1``.
    now : In(48)
        The cycle counter.
    irq_set : In(32)
        IRQ_STATUS bits to set (besides ``Irq.ERROR``); visible next cycle.
    irq : Out(1)
        ``(IRQ_STATUS & IRQ_MASK) != 0``.
    regs : In(irq_regs_signature)
        The registers; a W1C clear and a set of one bit in one cycle leave it set.
    """

    def __init__(self, *, error_sources: int):
        super().__init__(
            {
                "err_in": In(ErrorEvent).array(error_sources),
                "err_trace": Out(TraceWrite).array(error_sources),
                "now": In(48),
                "irq_set": In(32),
                "irq": Out(1),
                "regs": In(irq_regs_signature()),
            }
        )

    def elaborate(self, platform):
        m = Module()
        regs = self.regs
        status = Signal(32)
        mask = Signal(32)
        n_err = Signal(range(len(self.err_in) + 1))
        m.d.comb += n_err.eq(sum(e.valid for e in self.err_in))
        set_bits = self.irq_set | ((n_err != 0) << (rm.Irq.ERROR.bit_length() - 1))
        m.d.sync += status.eq((status & ~regs.clear) | set_bits)
        with m.If(regs.mask_we):
            m.d.sync += mask.eq(regs.mask_wdata)
        m.d.comb += [
            self.irq.eq((status & mask) != 0),
            regs.status.eq(status),
            regs.mask.eq(mask),
        ]

        code, info, count = Signal(32), Signal(32), Signal(32)
        m.d.sync += count.eq(count + n_err)
        code_fields = rm.reg("ERR_CODE").fields
        for e, rec in zip(self.err_in, self.err_trace, strict=True):
            with m.If(e.valid):
                m.d.sync += [
                    code.eq(
                        pack_fields(
                            code_fields, {"code": e.code, "engine": e.engine, "index": e.index}
                        )
                    ),
                    info.eq(e.info),
                ]
            m.d.comb += [
                rec.valid.eq(e.valid),
                rec.cycle.eq(self.now + 1),
                rec.engine.eq(e.engine),
                rec.event.eq(rm.TraceEvent.ERROR),
                rec.kind.eq(rm.Kind.OTHER),
                rec.tag.eq(e.info),
                rec.aux.eq(e.code),
            ]
        m.d.comb += [regs.err_code.eq(code), regs.err_info.eq(info), regs.err_count.eq(count)]
        return m


class CsrBlock(wiring.Component):
    """AXI4-Lite register file of one node, generated from ``gradsync.spec.regmap``.

    Parameters
    ----------
    constants:
        Values of the read-only build-constant registers by name (see
        :data:`CONSTANTS`); missing ones read their regmap reset value.
    live:
        Names in :data:`CONSTANTS` that are not constant here but read an
        ``ro_<name>`` port the node drives (:data:`LINK_CURRENT`: the link as
        set by ``LINK_SET``); their ``constants`` entries are ignored.
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
        A TRACE_DATA read of an empty trace buffer is one more source after
        them (``TRACE_EMPTY``, engine HOST, info = TRACE_TAIL), counted and
        latched alike but not traced.
    rw_<name>, wo_<name>, wo_data, ro_<name>, w1c_<name> :
        The engine-facing registers (see the module docstring).
    win_index, win_reg, win_wdata, win_we, win_rdata :
        Forwarded RX window registers (with ``rx_windows``).
    trace_rd : In(read_port_signature).array(trace_read_ports)
        Trace memory read ports: data the cycle after ``en``, held while ``en`` is low.
    """

    def __init__(
        self,
        *,
        constants: dict | None = None,
        live: tuple[str, ...] = (),
        trace_records: int = 1 << 14,
        trace_writers: int = 1,
        error_sources: int = 1,
        addr_bits: int = 13,
        rx_windows: int | None = None,
        trace_read_ports: int = 0,
    ):
        if trace_records < 2 or trace_records & (trace_records - 1):
            raise ValueError(f"trace_records must be a power of two >= 2, not {trace_records!r}")
        constants = dict(constants or {})
        unknown = set(constants) - CONSTANTS
        if unknown:
            raise ValueError(f"constants only cover {sorted(CONSTANTS)}, not {sorted(unknown)!r}")
        if set(live) - CONSTANTS:
            raise ValueError(f"live only covers {sorted(CONSTANTS)}, not {sorted(live)!r}")
        self.constants = {
            name: constants.get(name, rm.reg(name).reset)
            for name in CONSTANTS
            if name in rm.BY_NAME and name not in live
        }
        self.trace_records = trace_records
        self.addr_bits = addr_bits
        if rx_windows is not None and not 1 <= rx_windows <= rm.MAX_RX_WINDOWS:
            raise ValueError(f"rx_windows must be in 1..{rm.MAX_RX_WINDOWS}, not {rx_windows!r}")
        self.rx_windows = rx_windows
        self.trace_read_ports = trace_read_ports
        self.trace_word_bits = ceil_log2(trace_records * rm.TRACE_RECORD_WORDS)
        self.engine_regs = [
            r
            for r in rm.REGISTERS
            if r.name not in INTERNAL
            and (r.name not in CONSTANTS or r.name in live)
            and not self._forwarded(r)
        ]
        ports = axil_signature(addr_bits)
        ports.update(
            {
                "irq": Out(1),
                "now": Out(64),
                "irq_set": In(8),
                "trace_in": In(TraceWrite).array(trace_writers),
                "err_in": In(ErrorEvent).array(error_sources),
                "wo_data": Out(32),
            }
        )
        if rx_windows is not None:
            ports.update(
                {
                    "win_index": Out(6),
                    "win_reg": Out(3),
                    "win_wdata": Out(32),
                    "win_we": Out(1),
                    "win_rdata": In(32),
                }
            )
        if trace_read_ports:
            ports["trace_rd"] = In(read_port_signature(self.trace_word_bits, 32)).array(
                trace_read_ports
            )
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
        m.submodules.axil = axil = AxiLiteTarget(self.addr_bits)
        # The engines' error sources, then this block's own: a TRACE_DATA read of an empty
        # trace buffer (TRACE_EMPTY, not traced: its record would fill the buffer it found empty).
        m.submodules.irq_latch = irq = IrqErrorLatch(error_sources=len(self.err_in) + 1)
        m.submodules.trace = trace = TraceBuffer(
            records=self.trace_records,
            writers=len(self.trace_in) + len(self.err_in),
            read_ports=self.trace_read_ports,
        )
        # This block's ends of the three parts' interfaces.
        bus = register_bus_signature(self.addr_bits).flip().create()
        irq_regs = irq_regs_signature().create()
        trace_regs = trace_regs_signature(trace.count_bits).create()
        wiring.connect(m, axil.bus, bus)
        wiring.connect(m, irq_regs, irq.regs)
        wiring.connect(m, trace_regs, trace.regs)
        for name, member in axil_signature(self.addr_bits).items():
            outer, inner = getattr(self, name), getattr(axil, name)
            m.d.comb += inner.eq(outer) if member.flow is In else outer.eq(inner)
        for i in range(self.trace_read_ports):
            wiring.connect(m, wiring.flipped(self.trace_rd[i]), trace.rd[i])

        # ---- cycle counter, IRQ, errors, trace inputs ------------------------------------
        m.d.sync += self.now.eq(self.now + 1)
        trace_enable = self.rw_control[rm.reg("CONTROL").field("trace_enable").lsb]
        m.d.comb += [
            irq.now.eq(self.now[:48]),
            irq.irq_set.eq(self.irq_set | (trace.half << (rm.Irq.TRACE.bit_length() - 1))),
            self.irq.eq(irq.irq),
            trace.enable.eq(trace_enable),
            *(
                w.eq(r)
                for w, r in zip(
                    trace.writes, [*self.trace_in, *irq.err_trace[: len(self.err_in)]], strict=True
                )
            ),
        ]
        for outer, inner in zip(self.err_in, irq.err_in[: len(self.err_in)], strict=True):
            m.d.comb += inner.eq(outer)
        empty = irq.err_in[len(self.err_in)]
        m.d.comb += [
            empty.valid.eq(trace_regs.underrun),
            empty.code.eq(rm.ErrorCode.TRACE_EMPTY),
            empty.engine.eq(rm.Engine.HOST),
            empty.info.eq(trace_regs.tail),
        ]

        # ---- forwarded RX window registers ---------------------------------------------
        fwd = self.rx_windows is not None
        win_write = Signal()
        if fwd:
            lo, hi = self._win_span
            stride_bits = ceil_log2(rm.RX_WINDOW_STRIDE)
            received = (rm.offset("WIN0_RECEIVED") - rm.RX_WINDOW_BASE) // 4

            def in_win(addr):
                return (addr >= lo) & (addr < hi)

            def win_fields(addr):
                off = (addr - lo)[:16]
                return off[stride_bits : stride_bits + 6], off[2:stride_bits]

            w_index, w_reg = win_fields(bus.w_addr)
            r_index, r_reg = win_fields(bus.r_addr)
            m.d.comb += [
                win_write.eq(bus.w_en & in_win(bus.w_addr)),
                self.win_wdata.eq(bus.w_data),
                self.win_we.eq(win_write & (w_index < self.rx_windows) & (w_reg != received)),
                self.win_index.eq(w_index),
                self.win_reg.eq(w_reg),
                # A read of a window register waits while one is written (shared index).
                bus.r_stall.eq(win_write & in_win(bus.r_addr)),
            ]
            with m.If(bus.r_en & ~win_write):
                m.d.comb += [self.win_index.eq(r_index), self.win_reg.eq(r_reg)]
            with m.If(in_win(bus.r_addr) & (r_index < self.rx_windows)):
                m.d.comb += bus.r_data.eq(self.win_rdata)

        # ---- register writes ---------------------------------------------------------------
        m.d.comb += [
            self.wo_data.eq(bus.w_data),
            irq_regs.mask_wdata.eq(bus.w_data),
            trace_regs.tail_wdata.eq(bus.w_data),
        ]
        with m.If(bus.w_en), m.Switch(bus.w_addr):
            for r in rm.REGISTERS:
                if r.access is rm.Access.RO or self._forwarded(r):
                    continue
                with m.Case(r.offset):
                    if r.name == "IRQ_STATUS":
                        m.d.comb += irq_regs.clear.eq(bus.w_data)
                    elif r.name == "IRQ_MASK":
                        m.d.comb += irq_regs.mask_we.eq(1)
                    elif r.name == "TRACE_TAIL":
                        m.d.comb += trace_regs.tail_we.eq(1)
                    elif r.access is rm.Access.RW:
                        m.d.sync += self.port("rw", r.name).eq(bus.w_data)
                    elif r.access is rm.Access.WO:
                        m.d.comb += self.port("wo", r.name).eq(1)
                    elif r.access is rm.Access.W1C:
                        m.d.comb += self.port("w1c", r.name).eq(bus.w_data)

        # ---- register reads ----------------------------------------------------------------
        cycle_hi = Signal(32)
        internal = {
            "CYCLE_LO": self.now[:32],
            "CYCLE_HI": cycle_hi,
            "IRQ_STATUS": irq_regs.status,
            "IRQ_MASK": irq_regs.mask,
            "IRQ_PENDING": irq_regs.status & irq_regs.mask,
            "ERR_CODE": irq_regs.err_code,
            "ERR_INFO": irq_regs.err_info,
            "ERR_COUNT": irq_regs.err_count,
            "TRACE_COUNT": trace_regs.count,
            "TRACE_HEAD": trace_regs.head,
            "TRACE_TAIL": trace_regs.tail,
            "TRACE_DROPS": trace_regs.drops,
            "TRACE_DATA": trace_regs.data,
        }
        with m.Switch(bus.r_addr):
            for r in rm.REGISTERS:
                if r.access is rm.Access.WO or self._forwarded(r):
                    continue
                with m.Case(r.offset):
                    m.d.comb += bus.r_data.eq(self._read_value(r, internal))
                    # Side effects of an accepted read.
                    if r.name == "CYCLE_LO":
                        with m.If(bus.r_en):
                            m.d.sync += cycle_hi.eq(self.now[32:])
                    elif r.name == "TRACE_DATA":
                        m.d.comb += trace_regs.pop.eq(bus.r_en)
        return m

    def _read_value(self, r, internal: dict):
        """The value a read of register ``r`` returns: constant, internal, or an engine port."""
        if r.name in self.constants:
            return Const(self.constants[r.name] & 0xFFFF_FFFF, 32)
        if r.name in internal:
            return internal[r.name]
        if r.access is rm.Access.RW:
            return self.port("rw", r.name)
        return self.port("ro", r.name)
