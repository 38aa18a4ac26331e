"""Compute sequencer: command FIFO, validation, GEMM tiling on the array, vector streaming.

``DESIGN.md`` ("One node"): the engine behind the ``CMD_*`` registers of
``gradsync.spec.regmap``. It takes commands in order from a FIFO, refuses
malformed ones before touching memory, runs a GEMM of any ``M x K x N`` by
tiling it onto the ``R x C`` systolic array (``hw/array.py``) or streams a
vector op through the vector unit (``hw/vector.py``), and reports start/end
trace records, completion and errors to the CSR block (``hw/csr.py``).
Every cycle count is ``model.timing``'s; every result is ``model.numerics``'s.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, fifo, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from gradsync.spec import regmap as rm
from gradsync.spec.formats import FixedPointFormat

from .array import SystolicArray
from .events import ErrorEvent, TraceWrite
from .sram import device_addr_bits, read_port_signature, write_port_signature
from .vector import VectorOp, VectorUnit, round_shift, saturate

#: A staged command as the CSR block pushes it (register values, plus the launch number).
CommandLayout = data.StructLayout({
    "word": 32, "a": 32, "b": 32, "c": 32, "m": 32, "k": 32, "n": 32,
    "arg": 32, "tag": 32, "index": 32,
})

_VECTOR_OPS = {
    rm.Opcode.RELU: VectorOp.RELU,
    rm.Opcode.RELU_BWD: VectorOp.RELU_BWD,
    rm.Opcode.SCALE: VectorOp.SCALE,
    rm.Opcode.SGD: VectorOp.SGD,
}


def _field(value, name: str):
    f = rm.reg("CMD_OPCODE").field(name)
    return value[f.lsb:f.lsb + f.width]


class ComputeSequencer(wiring.Component):
    """In-order executor of compute commands.

    Parameters
    ----------
    rows, cols, lanes:
        Systolic array size ``R x C`` and vector lanes ``L``.
    total_bits, frac_bits, acc_bits, rounding, saturate:
        The fixed-point format (``model.FixedPointFormat``).
    scratch_words, grad_words:
        SRAM bank sizes in operand words (for the bounds checks and addresses).
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
    cycle ``t + model.timing.gemm_cycles(M, K, N)`` or
    ``t + model.timing.vector_cycles(op, M*N)``; the next command is taken in
    that cycle. Validation runs in the first decode cycle, in the model's
    order: unknown opcode, zero dimension, ``K > max_exact_k``, operand
    range outside its SRAM bank or not word-aligned. A refused command or a
    NOP retires at ``t + CMD_DECODE_CYCLES`` without a memory access; a
    refused one reports its ``ErrorCode`` with the launch number as index and
    ``CMD_TAG`` as info. GEMM tiles are taken row-major over
    ``ceil(M/R) x ceil(N/C)``, one every ``max(K, R)`` cycles; edge tiles feed
    zeros into the unused rows/columns and write only the real results.
    """

    def __init__(self, *, rows: int = 8, cols: int = 8, lanes: int = 8, total_bits: int = 16,
                 frac_bits: int = 10, acc_bits: int = 40, rounding: str = "nearest-even",
                 saturate: bool = True, scratch_words: int = 1 << 16, grad_words: int = 1 << 15,
                 fifo_depth: int = 16):
        # validates the format parameters and answers max_exact_k
        self.fmt = FixedPointFormat(total_bits, frac_bits, acc_bits, rounding, bool(saturate))
        if not isinstance(fifo_depth, int) or fifo_depth < 1:
            raise ValueError(f"fifo_depth must be a positive integer, not {fifo_depth!r}")
        self.array = SystolicArray(rows, cols, total_bits, acc_bits)
        self.vector = VectorUnit(lanes, total_bits, frac_bits, rounding, saturate)
        self.rows, self.cols, self.lanes = rows, cols, lanes
        self.total_bits, self.frac_bits, self.acc_bits = total_bits, frac_bits, acc_bits
        self.rounding, self.saturate = rounding, bool(saturate)
        self.scratch_words, self.grad_words = scratch_words, grad_words
        self.fifo_depth = fifo_depth
        self.addr_bits = device_addr_bits(scratch_words, grad_words)
        self.n_read = max(rows + cols, 2 * lanes)
        self.n_write = max(cols, lanes)
        super().__init__({
            "launch": In(1),
            "launch_cmd": In(CommandLayout),
            "fifo_free": Out(32),
            "now": In(64),
            "rd": Out(read_port_signature(self.addr_bits, total_bits)).array(self.n_read),
            "wr": Out(write_port_signature(self.addr_bits, total_bits)).array(self.n_write),
            "done_count": Out(32),
            "irq": Out(1),
            "trace": Out(TraceWrite),
            "cmd_err": Out(ErrorEvent),
            "launch_err": Out(ErrorEvent),
            "gemm_busy_cycles": Out(32),
            "vector_busy_cycles": Out(32),
        })

    # -- helpers -------------------------------------------------------------------
    def _region(self, m: Module, addr, size, name: str):
        """(ok, device word address) of an operand range of ``size`` words at byte ``addr``."""
        wb = self.total_bits // 8
        sh = ceil_log2(wb)
        index_bits = self.addr_bits - 1
        ok = Signal(name=f"{name}_ok")
        dev = Signal(self.addr_bits, name=f"{name}_dev")
        for bank, (base, words) in enumerate(((rm.SCRATCH_BASE, self.scratch_words),
                                              (rm.GRAD_BASE, self.grad_words))):
            off = Signal(32, name=f"{name}_off{bank}")
            m.d.comb += off.eq(addr - base)
            with m.If((addr >= base) & (addr < base + rm.REGION_SPAN)):
                aligned = (off[:sh] == 0) if sh else Const(1)
                m.d.comb += [
                    ok.eq(aligned & ((off >> sh) + size <= words)),
                    dev.eq(Cat((off >> sh)[:index_bits], Const(bank, 1))),
                ]
        return ok, dev

    def elaborate(self, platform):
        m = Module()
        R, C, L = self.rows, self.cols, self.lanes
        tb = self.total_bits
        m.submodules.array = array = self.array
        m.submodules.vector = vector = self.vector
        m.submodules.fifo = cmd_fifo = fifo.SyncFIFO(width=CommandLayout.size, depth=self.fifo_depth)

        # ---- launch: number it, push or drop --------------------------------------------
        launches = Signal(32)
        pushed = Signal(CommandLayout)
        m.d.comb += [pushed.eq(self.launch_cmd), pushed.index.eq(launches)]
        with m.If(self.launch):
            m.d.sync += launches.eq(launches + 1)
        m.d.comb += [
            cmd_fifo.w_data.eq(pushed.as_value()),
            cmd_fifo.w_en.eq(self.launch & cmd_fifo.w_rdy),
            self.fifo_free.eq(self.fifo_depth - cmd_fifo.level),
        ]
        with m.If(self.launch & ~cmd_fifo.w_rdy):
            m.d.comb += [
                self.launch_err.valid.eq(1),
                self.launch_err.code.eq(rm.ErrorCode.CMD_FIFO_FULL),
                self.launch_err.engine.eq(rm.Engine.COMPUTE),
                self.launch_err.index.eq(launches),
                self.launch_err.info.eq(self.launch_cmd.word),
            ]

        # ---- the command being executed ---------------------------------------------
        cmd = Signal(CommandLayout)
        start = Signal(64)
        opcode = _field(cmd.word, "opcode")
        trans_a = _field(cmd.word, "trans_a")
        trans_b = _field(cmd.word, "trans_b")
        is_gemm = opcode == rm.Opcode.GEMM
        two_operand = (opcode == rm.Opcode.RELU_BWD) | (opcode == rm.Opcode.SGD)
        mn = Signal(64)
        m.d.comb += mn.eq(cmd.m * cmd.n)

        # ---- validation (combinational from the latched command) ----------------------
        size_a = Signal(64)
        size_b = Signal(64)
        m.d.comb += [
            size_a.eq(Mux(is_gemm, cmd.m * cmd.k, mn)),
            size_b.eq(Mux(is_gemm, cmd.k * cmd.n, mn)),
        ]
        ok_a, dev_a = self._region(m, cmd.a, size_a, "a")
        ok_b, dev_b = self._region(m, cmd.b, size_b, "b")
        ok_c, dev_c = self._region(m, cmd.c, mn, "c")
        known = Signal()
        m.d.comb += known.eq(opcode <= max(int(o) for o in rm.Opcode))
        code = Signal(8)
        with m.If(~known):
            m.d.comb += code.eq(rm.ErrorCode.CMD_BAD_OPCODE)
        with m.Elif(opcode == rm.Opcode.NOP):
            m.d.comb += code.eq(rm.ErrorCode.OK)
        with m.Elif((cmd.m == 0) | (cmd.n == 0) | (is_gemm & (cmd.k == 0))):
            m.d.comb += code.eq(rm.ErrorCode.CMD_ZERO_DIM)
        with m.Elif(is_gemm & (cmd.k > self.fmt.max_exact_k)):
            m.d.comb += code.eq(rm.ErrorCode.CMD_K_TOO_LARGE)
        with m.Elif(~ok_a | ((is_gemm | two_operand) & ~ok_b) | ~ok_c):
            m.d.comb += code.eq(rm.ErrorCode.CMD_OUT_OF_BOUNDS)

        # ---- events -------------------------------------------------------------------
        finish = Signal()  # retire the command this cycle (effects visible next cycle)
        finish_code = Signal(8)
        trace_start = Signal()
        engine = Mux(is_gemm, rm.Engine.COMPUTE, rm.Engine.VECTOR)
        aux = Mux(is_gemm, cmd.m * cmd.k * cmd.n, mn)
        with m.If(trace_start):
            m.d.comb += [
                self.trace.valid.eq(1), self.trace.cycle.eq(start),
                self.trace.engine.eq(engine), self.trace.event.eq(rm.TraceEvent.START),
                self.trace.kind.eq(_field(cmd.word, "kind")), self.trace.tag.eq(cmd.tag),
                self.trace.aux.eq(aux),
            ]
        with m.If(finish):
            m.d.sync += self.done_count.eq(self.done_count + 1)
            m.d.comb += self.irq.eq(_field(cmd.word, "irq"))
            with m.If(finish_code != rm.ErrorCode.OK):
                m.d.comb += [
                    self.cmd_err.valid.eq(1), self.cmd_err.code.eq(finish_code),
                    self.cmd_err.engine.eq(rm.Engine.COMPUTE),
                    self.cmd_err.index.eq(cmd.index), self.cmd_err.info.eq(cmd.tag),
                ]
            with m.Elif(known & (opcode != rm.Opcode.NOP)):
                m.d.comb += [
                    self.trace.valid.eq(1), self.trace.cycle.eq(self.now + 1),
                    self.trace.engine.eq(engine), self.trace.event.eq(rm.TraceEvent.END),
                    self.trace.kind.eq(_field(cmd.word, "kind")), self.trace.tag.eq(cmd.tag),
                    self.trace.aux.eq(aux),
                ]
                busy = Mux(is_gemm, self.gemm_busy_cycles, self.vector_busy_cycles)
                total = (busy + (self.now + 1 - start))[:32]
                with m.If(is_gemm):
                    m.d.sync += self.gemm_busy_cycles.eq(total)
                with m.Else():
                    m.d.sync += self.vector_busy_cycles.eq(total)

        # ---- GEMM issue state -----------------------------------------------------------
        beat = Signal(32)          # cycle within the tile's max(K, R) issue interval
        tile_m0 = Signal(32)       # first result row of the issuing tile
        tile_n0 = Signal(32)       # first result column of the issuing tile
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

        # Drain side: which tile's rows leave the array now.
        drain_m0 = Signal(32)
        drain_n0 = Signal(32)
        extra = Signal(signed(32))
        shift = Signal(range(self.frac_bits + self.acc_bits + 1))
        m.d.comb += extra.eq(cmd.arg)
        with m.If(extra < 0):
            m.d.comb += shift.eq(self.frac_bits)
        with m.Elif(extra > self.acc_bits):
            m.d.comb += shift.eq(self.frac_bits + self.acc_bits)
        with m.Else():
            m.d.comb += shift.eq(self.frac_bits + extra)

        # ---- vector state -----------------------------------------------------------------
        vbeats = Signal(64)
        m.d.comb += vbeats.eq((mn + (L - 1)) // L)
        vbeat = Signal(64)
        vwbeat = Signal(64)
        x_ptr = Signal(self.addr_bits + 1)
        y_ptr = Signal(self.addr_bits + 1)
        w_ptr = Signal(self.addr_bits + 1)

        vector_wvalid = Signal()

        # ---- FSM ------------------------------------------------------------------------
        with m.FSM() as fsm:
            with m.State("IDLE"):  # noqa: SIM117
                with m.If(cmd_fifo.r_rdy):
                    m.d.comb += cmd_fifo.r_en.eq(1)
                    m.d.sync += [cmd.eq(cmd_fifo.r_data), start.eq(self.now)]
                    m.next = "DECODE"
            with m.State("DECODE"):
                # First decode cycle: validate; refused commands and NOPs retire now.
                with m.If((code != rm.ErrorCode.OK) | (opcode == rm.Opcode.NOP)):
                    m.d.comb += [finish.eq(1), finish_code.eq(code)]
                    m.next = "IDLE"
                with m.Else():
                    m.next = "ISSUE"
                    m.d.comb += trace_start.eq(1)
                    m.d.sync += [
                        beat.eq(0), tile_m0.eq(0), tile_n0.eq(0), drain_m0.eq(0), drain_n0.eq(0),
                        a_tile.eq(dev_a), b_tile.eq(dev_b), a_ptr.eq(dev_a), b_ptr.eq(dev_b),
                        issuing.eq(1),
                        vbeat.eq(0), vwbeat.eq(0), x_ptr.eq(dev_a), y_ptr.eq(dev_b), w_ptr.eq(dev_c),
                    ]
            with m.State("ISSUE"):
                with m.If(is_gemm):
                    with m.If(issuing):
                        m.d.sync += [beat.eq(beat + 1), a_ptr.eq(a_ptr + a_beat_stride),
                                     b_ptr.eq(b_ptr + b_beat_stride)]
                        with m.If(beat == interval - 1):
                            m.d.sync += beat.eq(0)
                            with m.If(tile_n0 + C >= cmd.n):
                                m.d.sync += [tile_n0.eq(0), tile_m0.eq(tile_m0 + R),
                                             a_tile.eq(a_tile + R * a_lane_stride),
                                             a_ptr.eq(a_tile + R * a_lane_stride),
                                             b_tile.eq(dev_b), b_ptr.eq(dev_b)]
                                with m.If(tile_m0 + R >= cmd.m):
                                    m.d.sync += issuing.eq(0)
                            with m.Else():
                                m.d.sync += [tile_n0.eq(tile_n0 + C),
                                             b_tile.eq(b_tile + C * b_lane_stride),
                                             b_ptr.eq(b_tile + C * b_lane_stride),
                                             a_ptr.eq(a_tile)]
                    with m.If(array.out_valid & (array.out_row == 0)):
                        with m.If(drain_n0 + C >= cmd.n):
                            m.d.sync += [drain_n0.eq(0), drain_m0.eq(drain_m0 + R)]
                            with m.If(drain_m0 + R >= cmd.m):
                                m.d.comb += finish.eq(1)
                                m.next = "IDLE"
                        with m.Else():
                            m.d.sync += drain_n0.eq(drain_n0 + C)
                with m.Else():
                    with m.If(vbeat < vbeats):
                        m.d.sync += [vbeat.eq(vbeat + 1), x_ptr.eq(x_ptr + L), y_ptr.eq(y_ptr + L)]
                    with m.If(vector_wvalid):
                        m.d.sync += [vwbeat.eq(vwbeat + 1), w_ptr.eq(w_ptr + L)]
                        with m.If(vwbeat == vbeats - 1):
                            m.d.comb += finish.eq(1)
                            m.next = "IDLE"

        in_issue = fsm.ongoing("ISSUE")

        # ---- GEMM datapath: reads, beat control, zero masking -----------------------------
        gemm_read = Signal()
        m.d.comb += gemm_read.eq(is_gemm & issuing & (beat < cmd.k) & in_issue)
        row_ok = Signal(R)
        col_ok = Signal(C)
        for i in range(R):
            m.d.comb += row_ok[i].eq(tile_m0 + i < cmd.m)
        for j in range(C):
            m.d.comb += col_ok[j].eq(tile_n0 + j < cmd.n)
        row_ok_d = Signal(R)
        col_ok_d = Signal(C)
        beat_valid_d = Signal()
        beat_first_d = Signal()
        beat_last_d = Signal()
        m.d.sync += [row_ok_d.eq(row_ok), col_ok_d.eq(col_ok), beat_valid_d.eq(gemm_read),
                     beat_first_d.eq(beat == 0), beat_last_d.eq(beat == cmd.k - 1)]
        # ---- vector datapath ------------------------------------------------------------
        vec_read = Signal()
        m.d.comb += vec_read.eq(~is_gemm & (vbeat < vbeats) & in_issue)
        vmask = Signal(L)
        for lane in range(L):
            m.d.comb += vmask[lane].eq(vbeat * L + lane < mn)
        vmask_d = Signal(L)
        vvalid_d = Signal()
        m.d.sync += [vmask_d.eq(vmask), vvalid_d.eq(vec_read)]

        for p in range(self.n_read):
            port = self.rd[p]
            with m.If(is_gemm):
                if p < R:
                    m.d.comb += [port.en.eq(gemm_read & row_ok[p]),
                                 port.addr.eq(a_ptr + p * a_lane_stride)]
                elif p < R + C:
                    j = p - R
                    m.d.comb += [port.en.eq(gemm_read & col_ok[j]),
                                 port.addr.eq(b_ptr + j * b_lane_stride)]
            with m.Else():
                if p < L:
                    m.d.comb += [port.en.eq(vec_read & vmask[p]), port.addr.eq(x_ptr + p)]
                elif p < 2 * L:
                    m.d.comb += [port.en.eq(vec_read & two_operand & vmask[p - L]),
                                 port.addr.eq(y_ptr + (p - L))]

        for i in range(R):
            m.d.comb += array.a_in[i].eq(Mux(row_ok_d[i], self.rd[i].data.as_signed(), 0))
        for j in range(C):
            m.d.comb += array.b_in[j].eq(Mux(col_ok_d[j], self.rd[R + j].data.as_signed(), 0))
        m.d.comb += [
            array.in_valid.eq(beat_valid_d),
            array.in_first.eq(beat_first_d),
            array.in_last.eq(beat_last_d),
        ]

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
        for lane in range(L):
            m.d.comb += [
                vector.x[lane].eq(Mux(vmask_d[lane], self.rd[lane].data.as_signed(), 0)),
                vector.y[lane].eq(Mux(vmask_d[lane], self.rd[L + lane].data.as_signed(), 0)),
            ]
        # Write-back register after the vector pipe (WRITEBACK_LATENCY_CYCLES).
        vw_valid = Signal()
        vw_mask = Signal(L)
        vw_data = Signal(data.ArrayLayout(signed(tb), L))
        m.d.sync += [vw_valid.eq(vector.out_valid), vw_mask.eq(vector.out_mask),
                     vw_data.eq(vector.out)]
        m.d.comb += vector_wvalid.eq(vw_valid)

        # ---- GEMM drain: round, saturate, write one row per cycle -------------------------
        drain_row = Signal(32)
        m.d.comb += drain_row.eq(drain_m0 + array.out_row)
        row_addr = Signal(self.addr_bits + 1)
        m.d.comb += row_addr.eq(dev_c + drain_row * cmd.n + drain_n0)
        written = []
        for j in range(C):
            rounded = round_shift(m, array.out_data[j], shift,
                                  self.frac_bits + self.acc_bits, self.rounding, f"wb{j}")
            written.append(saturate(m, rounded, tb, self.saturate, f"wbsat{j}"))
        for p in range(self.n_write):
            port = self.wr[p]
            with m.If(is_gemm):
                if p < C:
                    m.d.comb += [
                        port.en.eq(array.out_valid & (drain_row < cmd.m) & (drain_n0 + p < cmd.n)),
                        port.addr.eq(row_addr + p),
                        port.data.eq(written[p]),
                    ]
            with m.Else():
                if p < L:
                    m.d.comb += [
                        port.en.eq(vw_valid & vw_mask[p]),
                        port.addr.eq(w_ptr + p),
                        port.data.eq(vw_data[p]),
                    ]
        return m
