"""Compute sequencer: command FIFO, validation, GEMM tiling on the array, vector streaming.

``DESIGN.md`` ("One node"): the engine behind the ``CMD_*`` registers of
``gradsync.spec.regmap``. It takes commands in order from a FIFO, refuses
malformed ones before touching memory, runs a GEMM of any ``M x K x N`` by
tiling it onto the ``R x C`` systolic array (``hw/array.py``) or streams a
vector op through the vector unit (``hw/vector.py``), and reports start/end
trace records, completion and errors to the CSR block (``hw/csr.py``).
Every cycle count is ``spec.timing``'s; every result is the golden model's.

:class:`ComputeSequencer` is the structure only; each idea is its own part::

    launch -> CommandQueue -stream-> CommandControl (CommandDecoder inside)
                                       | job        | job          | job
                                   GemmTiler -> array -> GemmWriteback   VectorStreamer
                                       | rd         (rounding)  | wr      | rd, wr

The control hands each engine the running command over :func:`engine_job_signature`;
the sequencer's memory ports go to the GEMM parts or the vector streamer by opcode.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.formats import BFloat16Format, FixedPointFormat, is_float

from .arith import round_shift, saturate
from .array import SystolicArray
from .events import ErrorEvent, TraceWrite
from .fp import bf16_to_fp32, fp32_to_bf16
from .gating import gated_core
from .sram import device_addr_bits, read_port_signature, write_port_signature
from .vector import Fp32VectorUnit, VectorOp, VectorUnit

#: A staged command as the CSR block pushes it (register values, plus the launch number).
CommandLayout = data.StructLayout(
    dict.fromkeys(("word", "a", "b", "c", "m", "k", "n", "arg", "tag", "index"), 32)
)

_VECTOR_OPS = {
    rm.Opcode.RELU: VectorOp.RELU,
    rm.Opcode.RELU_BWD: VectorOp.RELU_BWD,
    rm.Opcode.SCALE: VectorOp.SCALE,
    rm.Opcode.SGD: VectorOp.SGD,
}


def _field(value, name: str):
    f = rm.reg("CMD_OPCODE").field(name)
    return value[f.lsb : f.lsb + f.width]


def _two_operand(opcode):
    """The vector ops that read ``y`` (at ``CMD_B``) besides ``x``."""
    return (opcode == rm.Opcode.RELU_BWD) | (opcode == rm.Opcode.SGD)


def element_words(fmt, dev_addr):
    """SRAM words per element at device word address ``dev_addr``: 2 for an fp32 element
    (bf16 family, gradient bank: the address's top bit), else 1."""
    if is_float(fmt):
        return Cat(~dev_addr[-1], dev_addr[-1])  # 1 or 2
    return Const(1, 2)


def engine_job_signature(addr_bits: int, *, ends: bool = True) -> wiring.Signature:
    """The running command as :class:`CommandControl` hands it to an engine.

    Members (from the control's side)
    ---------------------------------
    start : Out(1)
        Pulse in the decode cycle of a validated command that is not a NOP: the
        engine loads its counters and pointers.
    run : Out(1)
        The command executes (``ISSUE``) and is this engine's kind (GEMM or vector).
    cmd : Out(CommandLayout)
        The command; held from ``start`` until the next command is taken.
    elements : Out(64)
        ``M * N``, the number of result words.
    a, b, c : Out(addr_bits)
        Device word addresses of the operands and the result (valid with ``cmd``).
    done : In(1)
        Only with ``ends``: the engine's last cycle of the command (it retires).
    """
    members = {
        "start": Out(1),
        "run": Out(1),
        "cmd": Out(CommandLayout),
        "elements": Out(64),
        "a": Out(addr_bits),
        "b": Out(addr_bits),
        "c": Out(addr_bits),
    }
    if ends:
        members["done"] = In(1)
    return wiring.Signature(members)


class CommandQueue(wiring.Component):
    """The command FIFO behind ``CMD_LAUNCH``: numbers each launch, pushes it or drops it.

    Parameters
    ----------
    depth:
        FIFO entries.

    Attributes
    ----------
    launch : In(1), launch_cmd : In(CommandLayout)
    fifo_free : Out(32), launch_err : Out(ErrorEvent)
        As on :class:`ComputeSequencer`.
    cmd : Out(stream.Signature(CommandLayout))
        The oldest command, ``index`` set to its launch number (0, 1, ...).
    """

    def __init__(self, depth: int):
        self.depth = depth
        super().__init__(
            {
                "launch": In(1),
                "launch_cmd": In(CommandLayout),
                "fifo_free": Out(32),
                "launch_err": Out(ErrorEvent),
                "cmd": Out(stream.Signature(CommandLayout)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = cmd_fifo = fifo.SyncFIFO(width=CommandLayout.size, depth=self.depth)
        launches = Signal(32)
        pushed = Signal(CommandLayout)
        m.d.comb += [pushed.eq(self.launch_cmd), pushed.index.eq(launches)]
        with m.If(self.launch):
            m.d.sync += launches.eq(launches + 1)
        m.d.comb += [
            cmd_fifo.w_data.eq(pushed.as_value()),
            cmd_fifo.w_en.eq(self.launch & cmd_fifo.w_rdy),
            self.fifo_free.eq(self.depth - cmd_fifo.level),
        ]
        with m.If(self.launch & ~cmd_fifo.w_rdy):
            m.d.comb += [
                self.launch_err.valid.eq(1),
                self.launch_err.code.eq(rm.ErrorCode.CMD_FIFO_FULL),
                self.launch_err.engine.eq(rm.Engine.COMPUTE),
                self.launch_err.index.eq(launches),
                self.launch_err.info.eq(self.launch_cmd.word),
            ]
        m.d.comb += [
            self.cmd.payload.eq(cmd_fifo.r_data),
            self.cmd.valid.eq(cmd_fifo.r_rdy),
            cmd_fifo.r_en.eq(self.cmd.ready & cmd_fifo.r_rdy),
        ]
        return m


class CommandDecoder(wiring.Component):
    """Validation of a command, combinational, in the golden model's order.

    Parameters
    ----------
    fmt:
        The number format. Fixed point: ``max_exact_k`` bounds ``K``, every element is
        one word. bf16: no K bound (fp32 does not wrap); a gradient-SRAM element is an
        fp32 value of two words (4-byte aligned), and GEMM operands must be bf16, so in
        the scratchpad.
    scratch_words, grad_words, addr_bits:
        SRAM bank sizes in SRAM words and the device word address width.

    Attributes
    ----------
    cmd : In(CommandLayout)
    code : Out(8)
        ``ErrorCode``: unknown opcode, then zero dimension, ``K > max_exact_k``
        (fixed point), an operand range outside its SRAM bank, not element-aligned
        or (bf16) a GEMM operand outside the scratchpad; ``OK`` for a valid command
        and for a NOP.
    known : Out(1)
        The opcode is one of ``Opcode``.
    elements : Out(64)
        ``M * N``.
    a, b, c : Out(addr_bits)
        Device word addresses of the operand byte addresses ``CMD_A/B/C``.
    """

    def __init__(self, fmt: FixedPointFormat, scratch_words: int, grad_words: int, addr_bits: int):
        self.fmt = fmt
        self.scratch_words, self.grad_words = scratch_words, grad_words
        self.addr_bits = addr_bits
        super().__init__(
            {
                "cmd": In(CommandLayout),
                "code": Out(8),
                "known": Out(1),
                "elements": Out(64),
                "a": Out(addr_bits),
                "b": Out(addr_bits),
                "c": Out(addr_bits),
            }
        )

    def _region(self, m: Module, addr, size, dev, name: str, *, grad=True):
        """Drive ``dev`` with the device word address of byte ``addr``; return whether the
        ``size``-element range there is element-aligned and inside its bank (in the
        gradient SRAM only where ``grad`` is true)."""
        sh = ceil_log2(self.fmt.word_bytes)
        index_bits = self.addr_bits - 1
        ok = Signal(name=f"{name}_ok")
        for bank, (base, words) in enumerate(
            ((rm.SCRATCH_BASE, self.scratch_words), (rm.GRAD_BASE, self.grad_words))
        ):
            wide = bank == 1 and is_float(self.fmt)  # fp32 elements: two words
            esh = sh + wide
            off = Signal(32, name=f"{name}_off{bank}")
            m.d.comb += off.eq(addr - base)
            with m.If((addr >= base) & (addr < base + rm.REGION_SPAN)):
                aligned = (off[:esh] == 0) if esh else Const(1)
                allowed = grad if bank == 1 else True
                m.d.comb += [
                    ok.eq(allowed & aligned & ((off >> sh) + (size << wide) <= words)),
                    dev.eq(Cat((off >> sh)[:index_bits], Const(bank, 1))),
                ]
        return ok

    def _max_k(self) -> int:
        """Largest K: fixed point's ``max_exact_k``; in bf16 any 32-bit K (no wrap)."""
        return (1 << 32) - 1 if is_float(self.fmt) else self.fmt.max_exact_k

    def elaborate(self, platform):
        m = Module()
        cmd = self.cmd
        opcode = _field(cmd.word, "opcode")
        is_gemm = opcode == rm.Opcode.GEMM
        mn = self.elements
        m.d.comb += mn.eq(cmd.m * cmd.n)
        size_a = Signal(64)
        size_b = Signal(64)
        m.d.comb += [
            size_a.eq(Mux(is_gemm, cmd.m * cmd.k, mn)),
            size_b.eq(Mux(is_gemm, cmd.k * cmd.n, mn)),
        ]
        # bf16: GEMM operands are bf16 elements, so they must be in the scratchpad
        operand_grad = ~is_gemm if is_float(self.fmt) else True
        ok_a = self._region(m, cmd.a, size_a, self.a, "a", grad=operand_grad)
        ok_b = self._region(m, cmd.b, size_b, self.b, "b", grad=operand_grad)
        ok_c = self._region(m, cmd.c, mn, self.c, "c")
        m.d.comb += self.known.eq(opcode <= max(int(o) for o in rm.Opcode))
        code = self.code
        with m.If(~self.known):
            m.d.comb += code.eq(rm.ErrorCode.CMD_BAD_OPCODE)
        with m.Elif(opcode == rm.Opcode.NOP):
            m.d.comb += code.eq(rm.ErrorCode.OK)
        with m.Elif((cmd.m == 0) | (cmd.n == 0) | (is_gemm & (cmd.k == 0))):
            m.d.comb += code.eq(rm.ErrorCode.CMD_ZERO_DIM)
        with m.Elif(is_gemm & (cmd.k > self._max_k())):
            m.d.comb += code.eq(rm.ErrorCode.CMD_K_TOO_LARGE)
        with m.Elif(~ok_a | ((is_gemm | _two_operand(opcode)) & ~ok_b) | ~ok_c):
            m.d.comb += code.eq(rm.ErrorCode.CMD_OUT_OF_BOUNDS)
        return m


class CommandControl(wiring.Component):
    """Takes commands in order, validates them, runs them on the engines, reports them.

    Parameters
    ----------
    decoder:
        The :class:`CommandDecoder` (a submodule of this control).

    Attributes
    ----------
    cmd : In(stream.Signature(CommandLayout))
        From :class:`CommandQueue`; taken only when idle.
    now : In(64)
    gemm_tiles, gemm_rows, vector : Out(engine_job_signature)
        The running command for the tiler (``ends=False``), the write-back (which
        ends a GEMM) and the vector streamer.
    done_count, irq, trace, cmd_err, gemm_busy_cycles, vector_busy_cycles : Out
        As on :class:`ComputeSequencer`.

    Behaviour
    ---------
    ``IDLE`` takes a command in cycle ``t``; ``DECODE`` (``t + 1``) retires a NOP or
    a refused command (``t + CMD_DECODE_CYCLES`` visible) or starts the engines;
    ``ISSUE`` lasts until the engine's ``done``.
    """

    def __init__(self, decoder: CommandDecoder):
        self.decoder = decoder
        job = engine_job_signature(decoder.addr_bits)
        super().__init__(
            {
                "cmd": In(stream.Signature(CommandLayout)),
                "now": In(64),
                "gemm_tiles": Out(engine_job_signature(decoder.addr_bits, ends=False)),
                "gemm_rows": Out(job),
                "vector": Out(job),
                "done_count": Out(32),
                "irq": Out(1),
                "trace": Out(TraceWrite),
                "cmd_err": Out(ErrorEvent),
                "gemm_busy_cycles": Out(32),
                "vector_busy_cycles": Out(32),
            }
        )

    def _record(self, m: Module, cmd, cycle, event, engine, aux):
        m.d.comb += [
            self.trace.valid.eq(1),
            self.trace.cycle.eq(cycle),
            self.trace.engine.eq(engine),
            self.trace.event.eq(event),
            self.trace.kind.eq(_field(cmd.word, "kind")),
            self.trace.tag.eq(cmd.tag),
            self.trace.aux.eq(aux),
        ]

    def elaborate(self, platform):
        m = Module()
        m.submodules.decoder = dec = self.decoder
        cmd = Signal(CommandLayout)
        start = Signal(64)
        m.d.comb += dec.cmd.eq(cmd)
        opcode = _field(cmd.word, "opcode")
        is_gemm = opcode == rm.Opcode.GEMM

        # ---- events -------------------------------------------------------------------
        finish = Signal()  # retire the command this cycle (effects visible next cycle)
        finish_code = Signal(8)
        begin = Signal()  # a validated command starts: trace START, engines load
        engine = Mux(is_gemm, rm.Engine.COMPUTE, rm.Engine.VECTOR)
        aux = Mux(is_gemm, cmd.m * cmd.k * cmd.n, dec.elements)
        with m.If(begin):
            self._record(m, cmd, start, rm.TraceEvent.START, engine, aux)
        with m.If(finish):
            m.d.sync += self.done_count.eq(self.done_count + 1)
            m.d.comb += self.irq.eq(_field(cmd.word, "irq"))
            with m.If(finish_code != rm.ErrorCode.OK):
                m.d.comb += [
                    self.cmd_err.valid.eq(1),
                    self.cmd_err.code.eq(finish_code),
                    self.cmd_err.engine.eq(rm.Engine.COMPUTE),
                    self.cmd_err.index.eq(cmd.index),
                    self.cmd_err.info.eq(cmd.tag),
                ]
            with m.Elif(dec.known & (opcode != rm.Opcode.NOP)):
                self._record(m, cmd, self.now + 1, rm.TraceEvent.END, engine, aux)
                busy = Mux(is_gemm, self.gemm_busy_cycles, self.vector_busy_cycles)
                total = (busy + (self.now + 1 - start))[:32]
                with m.If(is_gemm):
                    m.d.sync += self.gemm_busy_cycles.eq(total)
                with m.Else():
                    m.d.sync += self.vector_busy_cycles.eq(total)

        # ---- FSM ------------------------------------------------------------------------
        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [cmd.eq(self.cmd.payload), start.eq(self.now)]
                    m.next = "DECODE"
            with m.State("DECODE"):
                # First decode cycle: validate; refused commands and NOPs retire now.
                with m.If((dec.code != rm.ErrorCode.OK) | (opcode == rm.Opcode.NOP)):
                    m.d.comb += [finish.eq(1), finish_code.eq(dec.code)]
                    m.next = "IDLE"
                with m.Else():
                    m.next = "ISSUE"
                    m.d.comb += begin.eq(1)
            with m.State("ISSUE"), m.If(Mux(is_gemm, self.gemm_rows.done, self.vector.done)):
                m.d.comb += finish.eq(1)
                m.next = "IDLE"

        in_issue = fsm.ongoing("ISSUE")
        for job, run in (
            (self.gemm_tiles, is_gemm),
            (self.gemm_rows, is_gemm),
            (self.vector, ~is_gemm),
        ):
            m.d.comb += [
                job.start.eq(begin),
                job.run.eq(in_issue & run),
                job.cmd.eq(cmd),
                job.elements.eq(dec.elements),
                job.a.eq(dec.a),
                job.b.eq(dec.b),
                job.c.eq(dec.c),
            ]
        return m


class GemmTiler(wiring.Component):
    """Operand address generator of a GEMM: feeds the systolic array tile by tile.

    Tiles are taken row-major over ``ceil(M/R) x ceil(N/C)``, one every ``max(K, R)``
    cycles; beat ``k`` of a tile reads column ``k`` of ``A``'s ``R`` rows and row ``k`` of
    ``B``'s ``C`` columns (``trans_a``/``trans_b`` select the strides). Edge tiles
    read nothing for rows/columns past ``M``/``N`` and feed zeros there.

    Attributes
    ----------
    job : In(engine_job_signature(ends=False))
    rd : Out(read_port_signature).array(R + C)
        Ports ``0 .. R-1`` read ``A``, ``R .. R+C-1`` read ``B``.
    a_in, b_in, in_valid, in_first, in_last : Out
        To the array's ports of the same names, one cycle after the reads.
    """

    def __init__(self, rows: int, cols: int, total_bits: int, addr_bits: int, operand=None):
        self.rows, self.cols = rows, cols
        self.addr_bits = addr_bits
        #: the array's operand shape: signed fixed-point words, or bf16 bit patterns
        self.operand = signed(total_bits) if operand is None else operand
        super().__init__(
            {
                "job": In(engine_job_signature(addr_bits, ends=False)),
                "rd": Out(read_port_signature(addr_bits, total_bits)).array(rows + cols),
                "a_in": Out(data.ArrayLayout(self.operand, rows)),
                "b_in": Out(data.ArrayLayout(self.operand, cols)),
                "in_valid": Out(1),
                "in_first": Out(1),
                "in_last": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        R, C = self.rows, self.cols
        cmd = self.job.cmd
        trans_a = _field(cmd.word, "trans_a")
        trans_b = _field(cmd.word, "trans_b")
        beat = Signal(32)  # cycle within the tile's max(K, R) issue interval
        tile_m0 = Signal(32)  # first result row of the issuing tile
        tile_n0 = Signal(32)  # first result column of the issuing tile
        a_tile = Signal(self.addr_bits + 1)
        b_tile = Signal(self.addr_bits + 1)
        a_ptr = Signal(self.addr_bits + 1)
        b_ptr = Signal(self.addr_bits + 1)
        issuing = Signal()
        interval = Mux(cmd.k > R, cmd.k, R)
        a_lane_stride = Mux(trans_a, 1, cmd.k)
        a_beat_stride = Mux(trans_a, cmd.m, 1)
        b_lane_stride = Mux(trans_b, cmd.k, 1)
        b_beat_stride = Mux(trans_b, 1, cmd.n)

        with m.If(self.job.start):
            m.d.sync += [
                beat.eq(0),
                tile_m0.eq(0),
                tile_n0.eq(0),
                a_tile.eq(self.job.a),
                b_tile.eq(self.job.b),
                a_ptr.eq(self.job.a),
                b_ptr.eq(self.job.b),
                issuing.eq(1),
            ]
        with m.If(self.job.run & issuing):
            m.d.sync += [
                beat.eq(beat + 1),
                a_ptr.eq(a_ptr + a_beat_stride),
                b_ptr.eq(b_ptr + b_beat_stride),
            ]
            with m.If(beat == interval - 1):
                m.d.sync += beat.eq(0)
                with m.If(tile_n0 + C >= cmd.n):
                    m.d.sync += [
                        tile_n0.eq(0),
                        tile_m0.eq(tile_m0 + R),
                        a_tile.eq(a_tile + R * a_lane_stride),
                        a_ptr.eq(a_tile + R * a_lane_stride),
                        b_tile.eq(self.job.b),
                        b_ptr.eq(self.job.b),
                    ]
                    with m.If(tile_m0 + R >= cmd.m):
                        m.d.sync += issuing.eq(0)
                with m.Else():
                    m.d.sync += [
                        tile_n0.eq(tile_n0 + C),
                        b_tile.eq(b_tile + C * b_lane_stride),
                        b_ptr.eq(b_tile + C * b_lane_stride),
                        a_ptr.eq(a_tile),
                    ]

        # Reads, beat control and zero masking of the edge tiles.
        gemm_read = Signal()
        m.d.comb += gemm_read.eq(issuing & (beat < cmd.k) & self.job.run)
        row_ok = Signal(R)
        col_ok = Signal(C)
        for i in range(R):
            m.d.comb += row_ok[i].eq(tile_m0 + i < cmd.m)
        for j in range(C):
            m.d.comb += col_ok[j].eq(tile_n0 + j < cmd.n)
        row_ok_d = Signal(R)
        col_ok_d = Signal(C)
        m.d.sync += [
            row_ok_d.eq(row_ok),
            col_ok_d.eq(col_ok),
            self.in_valid.eq(gemm_read),
            self.in_first.eq(beat == 0),
            self.in_last.eq(beat == cmd.k - 1),
        ]
        for i in range(R):
            m.d.comb += [
                self.rd[i].en.eq(gemm_read & row_ok[i]),
                self.rd[i].addr.eq(a_ptr + i * a_lane_stride),
                self.a_in[i].eq(Mux(row_ok_d[i], self._word(self.rd[i].data), 0)),
            ]
        for j in range(C):
            m.d.comb += [
                self.rd[R + j].en.eq(gemm_read & col_ok[j]),
                self.rd[R + j].addr.eq(b_ptr + j * b_lane_stride),
                self.b_in[j].eq(Mux(col_ok_d[j], self._word(self.rd[R + j].data), 0)),
            ]
        return m

    def _word(self, data):
        return data.as_signed() if self.operand.signed else data


class GemmWriteback(wiring.Component):
    """Drain side of a GEMM: converts the array's rows to the destination's format and writes them.

    The array hands out one row of ``C`` accumulators per cycle (last row first),
    written at ``C`` row-major; rows/columns past ``M``/``N`` are not written.
    ``job.done`` pulses with the final row of the final tile.

    Fixed point: each accumulator is shifted right by ``frac_bits + clamp(CMD_ARG, 0,
    acc_bits)`` with the format's rounding and saturated to ``total_bits``.
    bf16: the destination's bank decides (``CMD_ARG`` is ignored): in the scratchpad
    an fp32 result is rounded to bf16 (``fp32_to_bf16``, one word: forward
    activations, dA); in the gradient SRAM it is written whole, two words, low half
    first (dW).

    The command's M, N, ``CMD_ARG`` and C address are taken at ``job.start``; in the
    Verilog a simulator builds the write-back's registers run on a gated clock
    (``hw/gating.py``) while a command starts or runs.

    Attributes
    ----------
    job : In(engine_job_signature)
    out_data, out_valid, out_row : In
        From the array's ports of the same names.
    wr : Out(write_port_signature).array(C), or (2C) in bf16
        bf16: ports ``0 .. C-1`` write the low (or only) word, ``C .. 2C-1`` the high.
    """

    def __init__(self, rows: int, cols: int, fmt, addr_bits: int):
        self.rows, self.cols, self.fmt = rows, cols, fmt
        acc = unsigned(32) if is_float(fmt) else signed(fmt.acc_bits)
        ports = cols * (2 if is_float(fmt) else 1)
        super().__init__(
            {
                "job": In(engine_job_signature(addr_bits)),
                "out_data": In(data.ArrayLayout(acc, cols)),
                "out_valid": In(1),
                "out_row": In(range(rows)),
                "wr": Out(write_port_signature(addr_bits, fmt.word_bits)).array(ports),
            }
        )

    #: Cycles the write-back's clock runs after a command's last ``run`` cycle. Its
    #: registers change only in ``start`` and ``run`` cycles (the last row is written in
    #: the last ``run`` cycle), so 0 would do; 2 is a margin.
    DRAIN_CYCLES = 2

    def elaborate(self, platform):
        # In a simulator's Verilog the registers below run on a gated clock while a command
        # starts or runs; the row logic then reads only them and the array's outputs, so
        # the simulator evaluates it only in those cycles.
        top, m = gated_core(self.job.start | self.job.run, self.DRAIN_CYCLES)
        R, C = self.rows, self.cols
        # The command's fields, taken at start (the control holds them until the next
        # command is taken, after this one's last row).
        cmd = Signal(data.StructLayout({"m": 32, "n": 32, "arg": 32}))
        c = Signal.like(self.job.c)
        with m.If(self.job.start):
            m.d.sync += [
                cmd.m.eq(self.job.cmd.m),
                cmd.n.eq(self.job.cmd.n),
                cmd.arg.eq(self.job.cmd.arg),
                c.eq(self.job.c),
            ]
        # Which tile's rows leave the array now.
        drain_m0 = Signal(32)
        drain_n0 = Signal(32)
        with m.If(self.job.start):
            m.d.sync += [drain_m0.eq(0), drain_n0.eq(0)]
        with m.If(self.job.run & self.out_valid & (self.out_row == 0)):
            with m.If(drain_n0 + C >= cmd.n):
                m.d.sync += [drain_n0.eq(0), drain_m0.eq(drain_m0 + R)]
                with m.If(drain_m0 + R >= cmd.m):
                    m.d.comb += self.job.done.eq(1)
            with m.Else():
                m.d.sync += drain_n0.eq(drain_n0 + C)

        drain_row = Signal(32)
        m.d.comb += drain_row.eq(drain_m0 + self.out_row)
        ew = element_words(self.fmt, c)
        row_addr = Signal(len(c) + 1)
        m.d.comb += row_addr.eq(c + (drain_row * cmd.n + drain_n0) * ew)
        for j in range(C):
            m.d.comb += [
                self.wr[j].en.eq(self.out_valid & (drain_row < cmd.m) & (drain_n0 + j < cmd.n)),
                self.wr[j].addr.eq(row_addr + j * ew),
            ]
        if is_float(self.fmt):
            self._words_float(m, c)
        else:
            self._words_fixed(m, cmd.arg)
        return top

    def _words_fixed(self, m: Module, arg) -> None:
        """Round-shift by ``frac_bits + clamp(CMD_ARG, 0, acc_bits)``, saturate."""
        fmt = self.fmt
        extra = Signal(signed(32))
        shift = Signal(range(fmt.frac_bits + fmt.acc_bits + 1))
        m.d.comb += extra.eq(arg)
        with m.If(extra < 0):
            m.d.comb += shift.eq(fmt.frac_bits)
        with m.Elif(extra > fmt.acc_bits):
            m.d.comb += shift.eq(fmt.frac_bits + fmt.acc_bits)
        with m.Else():
            m.d.comb += shift.eq(fmt.frac_bits + extra)
        for j in range(self.cols):
            rounded = round_shift(
                m, self.out_data[j], shift, fmt.frac_bits + fmt.acc_bits, fmt.rounding, f"wb{j}"
            )
            m.d.comb += self.wr[j].data.eq(
                saturate(m, rounded, fmt.total_bits, fmt.saturate, f"wbsat{j}")
            )

    def _words_float(self, m: Module, c) -> None:
        """Scratchpad: the fp32 result rounded to bf16; gradient SRAM: both halves."""
        C = self.cols
        to_grad = c[-1]
        for j in range(C):
            word = self.out_data[j]
            lo, hi = self.wr[j], self.wr[C + j]
            m.d.comb += [
                lo.data.eq(Mux(to_grad, word[:16], fp32_to_bf16(m, word, f"wb{j}_bf16"))),
                hi.en.eq(lo.en & to_grad),
                hi.addr.eq(lo.addr + 1),
                hi.data.eq(word[16:]),
            ]


class VectorStreamer(wiring.Component):
    """A vector op over ``M * N`` elements: reads, the vector unit, the write-back register.

    ``L`` lanes per beat, one beat per cycle; lanes past ``M * N`` are masked off
    (not read, not written). ``x`` is read at ``a``, ``y`` (RELU_BWD, SGD) at ``b``,
    the result written at ``c`` one register after the unit's pipeline
    (``WRITEBACK_LATENCY_CYCLES``). ``job.done`` pulses with the last beat's write.

    With :class:`hw.vector.Fp32VectorUnit` (bf16 family) each operand's bank decides
    its element: a scratchpad element is a bf16 word, widened exactly to fp32; a
    gradient-SRAM element is an fp32 value in two words (low half first). The
    fp32 result is written to a scratchpad ``c`` rounded to bf16 (``fp32_to_bf16``),
    to the gradient SRAM whole.

    In the Verilog a simulator builds, the streamer and its unit run on a gated clock
    (``hw/gating.py``) while a command starts or runs and ``DRAIN_CYCLES`` after.

    Parameters
    ----------
    unit:
        The :class:`hw.vector.VectorUnit` or :class:`hw.vector.Fp32VectorUnit`
        (a submodule of this streamer).
    word_bits:
        SRAM word width.

    Attributes
    ----------
    job : In(engine_job_signature)
    rd : Out(read_port_signature).array(2L), or (4L) in bf16
        Ports ``0 .. L-1`` read ``x``, ``L .. 2L-1`` read ``y``; in bf16 ``2L .. 4L-1``
        read their high words.
    wr : Out(write_port_signature).array(L), or (2L) in bf16 (``L .. 2L-1``: high words)
    """

    def __init__(self, unit, addr_bits: int, word_bits: int | None = None):
        self.unit = unit
        self.addr_bits = addr_bits
        self.float = isinstance(unit, Fp32VectorUnit)
        self.word_bits = unit.total_bits if word_bits is None else word_bits
        L, g = unit.lanes, 2 if self.float else 1
        super().__init__(
            {
                "job": In(engine_job_signature(addr_bits)),
                "rd": Out(read_port_signature(addr_bits, self.word_bits)).array(2 * L * g),
                "wr": Out(write_port_signature(addr_bits, self.word_bits)).array(L * g),
            }
        )

    def _elem_words(self, dev_addr):
        return Cat(~dev_addr[-1], dev_addr[-1]) if self.float else Const(1, 2)

    #: Cycles after a command's last ``run`` cycle until the pipeline holds no valid beat:
    #: the read register, the unit's stages and the write-back register, with a margin.
    DRAIN_CYCLES = 1 + tm.VECTOR_PIPELINE_CYCLES + tm.WRITEBACK_LATENCY_CYCLES + 2

    def elaborate(self, platform):
        # In a simulator's Verilog the clock runs only while a command is started or runs.
        top, m = gated_core(self.job.start | self.job.run, self.DRAIN_CYCLES)
        m.submodules.unit = vector = self.unit
        L, tb = vector.lanes, vector.total_bits
        cmd, mn = self.job.cmd, self.job.elements
        opcode = _field(cmd.word, "opcode")
        ex, ey, ew = (self._elem_words(a) for a in (self.job.a, self.job.b, self.job.c))
        vbeats = Signal(64)
        m.d.comb += vbeats.eq((mn + (L - 1)) // L)
        vbeat = Signal(64)
        vwbeat = Signal(64)
        x_ptr = Signal(self.addr_bits + 1)
        y_ptr = Signal(self.addr_bits + 1)
        w_ptr = Signal(self.addr_bits + 1)
        # Write-back register after the vector pipe (WRITEBACK_LATENCY_CYCLES).
        vw_valid = Signal()
        vw_mask = Signal(L)
        vw_data = Signal(data.ArrayLayout(unsigned(tb) if self.float else signed(tb), L))

        with m.If(self.job.start):
            m.d.sync += [
                vbeat.eq(0),
                vwbeat.eq(0),
                x_ptr.eq(self.job.a),
                y_ptr.eq(self.job.b),
                w_ptr.eq(self.job.c),
            ]
        with m.If(self.job.run):
            with m.If(vbeat < vbeats):
                m.d.sync += [
                    vbeat.eq(vbeat + 1),
                    x_ptr.eq(x_ptr + L * ex),
                    y_ptr.eq(y_ptr + L * ey),
                ]
            with m.If(vw_valid):
                m.d.sync += [vwbeat.eq(vwbeat + 1), w_ptr.eq(w_ptr + L * ew)]
                with m.If(vwbeat == vbeats - 1):
                    m.d.comb += self.job.done.eq(1)

        vec_read = Signal()
        m.d.comb += vec_read.eq((vbeat < vbeats) & self.job.run)
        vmask = Signal(L)
        for lane in range(L):
            m.d.comb += vmask[lane].eq(vbeat * L + lane < mn)
        vmask_d = Signal(L)
        vvalid_d = Signal()
        m.d.sync += [vmask_d.eq(vmask), vvalid_d.eq(vec_read)]
        vop = Signal(VectorOp)
        with m.Switch(opcode):
            for opc, vo in _VECTOR_OPS.items():
                with m.Case(opc):
                    m.d.comb += vop.eq(vo)
        m.d.comb += [
            vector.op.eq(vop),
            vector.arg.eq(cmd.arg[:tb]),
            vector.in_valid.eq(vvalid_d),
            vector.in_mask.eq(vmask_d),
        ]
        m.d.sync += [
            vw_valid.eq(vector.out_valid),
            vw_mask.eq(vector.out_mask),
            vw_data.eq(vector.out),
        ]
        for lane in range(L):
            x_rd, y_rd, wr = self.rd[lane], self.rd[L + lane], self.wr[lane]
            m.d.comb += [
                x_rd.en.eq(vec_read & vmask[lane]),
                x_rd.addr.eq(x_ptr + lane * ex),
                y_rd.en.eq(vec_read & _two_operand(opcode) & vmask[lane]),
                y_rd.addr.eq(y_ptr + lane * ey),
                wr.en.eq(vw_valid & vw_mask[lane]),
                wr.addr.eq(w_ptr + lane * ew),
            ]
            if self.float:
                x, y, out = self._float_lane(m, lane, vw_data[lane])
            else:
                x, y, out = x_rd.data.as_signed(), y_rd.data.as_signed(), vw_data[lane]
            m.d.comb += [
                vector.x[lane].eq(Mux(vmask_d[lane], x, 0)),
                vector.y[lane].eq(Mux(vmask_d[lane], y, 0)),
                wr.data.eq(out),
            ]
        return top

    def _float_lane(self, m: Module, lane: int, result):
        """bf16 family: drive the high-word ports of ``lane``; return its fp32 operands and
        the low (or only) word of its ``result``."""
        L = self.unit.lanes
        job = self.job
        lo_x, lo_y, lo_w = self.rd[lane], self.rd[L + lane], self.wr[lane]
        hi_x, hi_y, hi_w = self.rd[2 * L + lane], self.rd[3 * L + lane], self.wr[L + lane]
        grad_x, grad_y, grad_w = job.a[-1], job.b[-1], job.c[-1]
        m.d.comb += [
            hi_x.en.eq(lo_x.en & grad_x),
            hi_x.addr.eq(lo_x.addr + 1),
            hi_y.en.eq(lo_y.en & grad_y),
            hi_y.addr.eq(lo_y.addr + 1),
            hi_w.en.eq(lo_w.en & grad_w),
            hi_w.addr.eq(lo_w.addr + 1),
        ]
        x = Mux(grad_x, Cat(lo_x.data, hi_x.data), bf16_to_fp32(m, lo_x.data, f"x{lane}_fp32"))
        y = Mux(grad_y, Cat(lo_y.data, hi_y.data), bf16_to_fp32(m, lo_y.data, f"y{lane}_fp32"))
        m.d.comb += hi_w.data.eq(result[16:])
        low = Mux(grad_w, result[:16], fp32_to_bf16(m, result, f"w{lane}_bf16"))
        return x, y, low


def _share_ports(m: Module, ports, sel, when_true, when_false) -> None:
    """Memory ``ports`` driven by the engine ports ``when_true`` if ``sel`` else by
    ``when_false`` (either list may be shorter); read data go to both engines."""
    for p, port in enumerate(ports):
        members = port.signature.members.items()
        outs = [name for name, member in members if member.flow == Out]
        ins = [name for name, member in members if member.flow == In]
        with m.If(sel):
            if p < len(when_true):
                m.d.comb += [getattr(port, n).eq(getattr(when_true[p], n)) for n in outs]
        with m.Else():
            if p < len(when_false):
                m.d.comb += [getattr(port, n).eq(getattr(when_false[p], n)) for n in outs]
        for engine in (when_true, when_false):
            if p < len(engine):
                m.d.comb += [getattr(engine[p], n).eq(getattr(port, n)) for n in ins]


class ComputeSequencer(wiring.Component):
    """In-order executor of compute commands.

    Parameters
    ----------
    rows, cols, lanes:
        Systolic array size ``R x C`` and vector lanes ``L``.
    total_bits, frac_bits, acc_bits, rounding, saturate:
        The fixed-point format (``gradsync.spec.formats.FixedPointFormat``).
    fmt:
        A number format instead of the five above: a ``FixedPointFormat``, or a
        ``BFloat16Format`` (bf16 PEs, :class:`hw.vector.Fp32VectorUnit`, element
        sizes by bank as :class:`CommandDecoder` says; twice the memory ports).
    scratch_words, grad_words:
        SRAM bank sizes in SRAM words (for the bounds checks and addresses).
    fifo_depth:
        Command FIFO entries (``HardwareConfig.cmd_fifo_depth``).

    Attributes
    ----------
    launch : In(1), launch_cmd : In(CommandLayout)
        Doorbell (``CMD_LAUNCH``): push ``launch_cmd`` into the FIFO. A launch
        into a full FIFO is dropped and reported as ``CMD_FIFO_FULL`` on
        ``launch_err``.
    fifo_free : Out(32)
        Free FIFO entries (``CMD_FIFO_FREE``); the running command is not counted.
    now : In(64)
        The free-running cycle counter (for trace time stamps).
    rd : Out(read_port_signature).array(max(R + C, 2L))
    wr : Out(write_port_signature).array(max(C, L))
        Ports into :class:`hw.sram.DeviceMemory`.
    done_count : Out(32)
        Commands retired, refused ones included (``COMPUTE_DONE``).
    irq : Out(1)
        Pulse: a command whose ``irq`` flag was set retires (``Irq.COMPUTE``).
    trace : Out(TraceWrite)
        START (stamped with the cycle the command was taken) and END records.
    cmd_err, launch_err : Out(ErrorEvent)
        Refused command (at retirement) and dropped launch.

    ``irq``, ``trace`` and the error events are combinational pulses in the
    cycle before the event is visible; the CSR block registers them.
    gemm_busy_cycles, vector_busy_cycles : Out(32)
        Cycles of retired GEMM / vector commands, taken to completion
        (``PERF_GEMM_CYCLES`` / ``PERF_VECTOR_CYCLES``).

    Behaviour
    ---------
    A command taken from the FIFO in cycle ``t`` completes — result in memory,
    ``done_count`` incremented, ``irq`` status and END record visible — in
    cycle ``t + gradsync.spec.timing.gemm_cycles(M, K, N)`` or
    ``t + gradsync.spec.timing.vector_cycles(op, M*N)``; the next command is taken in
    that cycle. Validation runs in the first decode cycle, in the model's
    order: unknown opcode, zero dimension, ``K > max_exact_k``, operand
    range outside its SRAM bank or not word-aligned. A refused command or a
    NOP retires at ``t + CMD_DECODE_CYCLES`` without a memory access; a
    refused one reports its ``ErrorCode`` with the launch number as index and
    ``CMD_TAG`` as info. GEMM tiles are taken row-major over
    ``ceil(M/R) x ceil(N/C)``, one every ``max(K, R)`` cycles; edge tiles feed
    zeros into the unused rows/columns and write only the real results.
    """

    def __init__(
        self,
        *,
        rows: int = 8,
        cols: int = 8,
        lanes: int = 8,
        total_bits: int = 16,
        frac_bits: int = 10,
        acc_bits: int = 40,
        rounding: str = "nearest-even",
        saturate: bool = True,
        scratch_words: int = 1 << 16,
        grad_words: int = 1 << 15,
        fifo_depth: int = 16,
        fmt: FixedPointFormat | BFloat16Format | None = None,
    ):
        if fmt is None:  # validates the format parameters and answers max_exact_k
            fmt = FixedPointFormat(total_bits, frac_bits, acc_bits, rounding, bool(saturate))
        if not isinstance(fmt, (FixedPointFormat, BFloat16Format)):
            raise TypeError(f"fmt must be a FixedPointFormat or a BFloat16Format, not {fmt!r}")
        if not isinstance(fifo_depth, int) or fifo_depth < 1:
            raise ValueError(f"fifo_depth must be a positive integer, not {fifo_depth!r}")
        self.fmt = fmt
        self.array = SystolicArray(rows, cols, fmt=fmt)
        if is_float(fmt):
            self.vector = Fp32VectorUnit(lanes)
        else:
            self.vector = VectorUnit(lanes, fmt.total_bits, fmt.frac_bits, fmt.rounding,
                                     fmt.saturate)  # fmt: skip
        self.rows, self.cols, self.lanes = rows, cols, lanes
        self.word_bits = fmt.word_bits
        self.scratch_words, self.grad_words = scratch_words, grad_words
        self.fifo_depth = fifo_depth
        self.addr_bits = device_addr_bits(scratch_words, grad_words)
        g = 2 if is_float(fmt) else 1  # fp32 elements: a second port per lane for the high word
        self.n_read = max(rows + cols, 2 * lanes * g)
        self.n_write = max(cols, lanes) * g
        wb = self.word_bits
        super().__init__(
            {
                "launch": In(1),
                "launch_cmd": In(CommandLayout),
                "fifo_free": Out(32),
                "now": In(64),
                "rd": Out(read_port_signature(self.addr_bits, wb)).array(self.n_read),
                "wr": Out(write_port_signature(self.addr_bits, wb)).array(self.n_write),
                "done_count": Out(32),
                "irq": Out(1),
                "trace": Out(TraceWrite),
                "cmd_err": Out(ErrorEvent),
                "launch_err": Out(ErrorEvent),
                "gemm_busy_cycles": Out(32),
                "vector_busy_cycles": Out(32),
            }
        )

    def elaborate(self, platform):
        m = Module()
        R, C, wb, ab = self.rows, self.cols, self.word_bits, self.addr_bits
        m.submodules.queue = queue = CommandQueue(self.fifo_depth)
        m.submodules.control = control = CommandControl(
            CommandDecoder(self.fmt, self.scratch_words, self.grad_words, ab)
        )
        m.submodules.tiler = tiler = GemmTiler(R, C, wb, ab, self.array.operand_shape)
        m.submodules.array = array = self.array
        m.submodules.writeback = writeback = GemmWriteback(R, C, self.fmt, ab)
        m.submodules.vector = streamer = VectorStreamer(self.vector, ab, wb)

        m.d.comb += [
            queue.launch.eq(self.launch),
            queue.launch_cmd.eq(self.launch_cmd),
            self.fifo_free.eq(queue.fifo_free),
            self.launch_err.eq(queue.launch_err),
            control.now.eq(self.now),
        ]
        wiring.connect(m, queue.cmd, control.cmd)
        for name in (
            "done_count",
            "irq",
            "trace",
            "cmd_err",
            "gemm_busy_cycles",
            "vector_busy_cycles",
        ):
            m.d.comb += getattr(self, name).eq(getattr(control, name))

        wiring.connect(m, control.gemm_tiles, tiler.job)
        wiring.connect(m, control.gemm_rows, writeback.job)
        wiring.connect(m, control.vector, streamer.job)
        for name in ("a_in", "b_in", "in_valid", "in_first", "in_last"):
            m.d.comb += getattr(array, name).eq(getattr(tiler, name))
        for name in ("out_data", "out_valid", "out_row"):
            m.d.comb += getattr(writeback, name).eq(getattr(array, name))

        # The running command's engines own the memory ports: GEMM parts or vector streamer.
        is_gemm = _field(control.gemm_rows.cmd.word, "opcode") == rm.Opcode.GEMM
        _share_ports(m, self.rd, is_gemm, tiler.rd, streamer.rd)
        _share_ports(m, self.wr, is_gemm, writeback.wr, streamer.wr)
        return m
