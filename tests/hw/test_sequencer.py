# amaranth: UnusedElaboratable=no
"""hw/sequencer.py's ComputeSequencer on a 2 x 3 array in Amaranth's simulator.

The sequencer is driven only through its ports (launch, command, ``now``)
and joined to a small ``DeviceMemory``; every result is compared bit for bit
with ``gradsync.model.numerics`` and every command's duration with
``gradsync.spec.timing``. A monitor records every trace record, IRQ and
error pulse and every memory access, so refused commands can be shown to
touch nothing.
"""

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import wiring
from amaranth.sim import Simulator

from gradsync.hw.sequencer import ComputeSequencer
from gradsync.hw.sram import DeviceMemory
from gradsync.model import numerics as nx
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig

HW = HardwareConfig(
    array_rows=2,
    array_cols=3,
    vector_lanes=3,
    scratchpad_words=256,
    gradient_words=128,
    cmd_fifo_depth=2,
)
FMT = FixedPointFormat()
WB = FMT.word_bytes
GUARD = nx.wrap(0x5A5A, FMT.total_bits)
TIMEOUT = 2000


class Harness(Elaboratable):
    """The sequencer, its memory, a cycle counter and one spare write port for the testbench."""

    def __init__(self, hw: HardwareConfig = HW, fmt=FMT):
        if isinstance(fmt, FixedPointFormat):  # the fixed-point parameters, one by one
            kwargs = dict(
                total_bits=fmt.total_bits,
                frac_bits=fmt.frac_bits,
                acc_bits=fmt.acc_bits,
                rounding=fmt.rounding,
                saturate=fmt.saturate,
            )
        else:
            kwargs = dict(fmt=fmt)
        self.seq = ComputeSequencer(
            rows=hw.array_rows,
            cols=hw.array_cols,
            lanes=hw.vector_lanes,
            scratch_words=hw.scratchpad_words,
            grad_words=hw.gradient_words,
            fifo_depth=hw.cmd_fifo_depth,
            **kwargs,
        )
        self.mem = DeviceMemory(
            hw.scratchpad_words,
            hw.gradient_words,
            fmt.word_bits,
            read_ports=self.seq.n_read,
            write_ports=self.seq.n_write + 1,
            debug_port=True,
        )
        self.now = Signal(64)

    @property
    def load_port(self):
        return self.mem.wr[-1]

    def elaborate(self, platform):
        m = Module()
        m.submodules.seq = self.seq
        m.submodules.mem = self.mem
        for a, b in zip(self.seq.rd, self.mem.rd, strict=True):
            wiring.connect(m, a, b)
        for a, b in zip(self.seq.wr, list(self.mem.wr)[:-1], strict=True):
            wiring.connect(m, a, b)
        m.d.sync += self.now.eq(self.now + 1)
        m.d.comb += self.seq.now.eq(self.now)
        return m


def addr(region: str, word: int) -> int:
    return (rm.SCRATCH_BASE if region == "scratch" else rm.GRAD_BASE) + word * WB


def dev(region: str, word: int, dut: Harness) -> int:
    return (region == "grad") << (dut.mem.addr_bits - 1) | word


class SequencerTB:
    """Launches commands, loads and inspects memory, and monitors every output pulse."""

    def __init__(self, dut: Harness):
        self.dut = dut
        self.events = []  # (cycle, what, details)
        self.accesses = []  # (cycle, "rd"/"wr") of every sequencer memory access
        self.launches = 0

    def run(self, bench) -> None:
        sim = Simulator(self.dut)
        sim.add_clock(1e-8)

        async def testbench(ctx):
            await bench(ctx, self)

        sim.add_testbench(testbench)
        sim.add_testbench(self._monitor, background=True)
        sim.run()

    async def _monitor(self, ctx):
        seq = self.dut.seq
        t = seq.trace
        ce, le = seq.cmd_err, seq.launch_err
        sampled = [
            self.dut.now,
            seq.irq,
            t.valid,
            t.cycle,
            t.engine,
            t.event,
            t.kind,
            t.tag,
            t.aux,
            ce.valid,
            ce.code,
            ce.engine,
            ce.index,
            ce.info,
            le.valid,
            le.code,
            le.engine,
            le.index,
            le.info,
        ]
        sampled += [p.en for p in seq.rd] + [p.en for p in seq.wr]
        n = len(sampled) - len(seq.rd) - len(seq.wr)
        async for _clk, _rst, *v in ctx.tick().sample(*sampled):
            now = v[0]
            if v[1]:
                self.events.append((now, "irq", None))
            if v[2]:
                rec = rm.TraceRecord(
                    cycle=v[3], engine=v[4], event=v[5], kind=v[6], tag=v[7], aux=v[8]
                )
                self.events.append((now, "trace", rec))
            if v[9]:
                self.events.append((now, "cmd_err", tuple(v[10:14])))
            if v[14]:
                self.events.append((now, "launch_err", tuple(v[15:19])))
            if any(v[n : n + len(seq.rd)]):
                self.accesses.append((now, "rd"))
            if any(v[n + len(seq.rd) :]):
                self.accesses.append((now, "wr"))

    async def load(self, ctx, region: str, word: int, values) -> None:
        port = self.dut.load_port
        ctx.set(port.en, 1)
        for i, x in enumerate(np.asarray(values).reshape(-1)):
            ctx.set(port.addr, dev(region, word + i, self.dut))
            ctx.set(port.data, int(x) & ((1 << FMT.total_bits) - 1))
            await ctx.tick()
        ctx.set(port.en, 0)

    def peek(self, ctx, region: str, word: int, n: int) -> np.ndarray:
        out = []
        for i in range(n):
            ctx.set(self.dut.mem.dbg_addr, dev(region, word + i, self.dut))
            out.append(ctx.get(self.dut.mem.dbg_data))
        return nx.wrap(np.array(out, dtype=np.int64), FMT.total_bits)

    async def launch(
        self, ctx, opcode, a, b, c, m, k, n, *, arg=0, tag=0, trans_a=0, trans_b=0, irq=1, kind=0
    ) -> tuple[int, int]:
        """Pulse ``launch`` for one cycle; return (launch cycle, launch number)."""
        cmd = self.dut.seq.launch_cmd
        word = rm.reg("CMD_OPCODE").pack(
            opcode=int(opcode), trans_a=trans_a, trans_b=trans_b, irq=irq, kind=kind
        )
        for field, value in (
            ("word", word),
            ("a", a),
            ("b", b),
            ("c", c),
            ("m", m),
            ("k", k),
            ("n", n),
            ("arg", arg & 0xFFFF_FFFF),
            ("tag", tag),
        ):
            ctx.set(getattr(cmd, field), value)
        ctx.set(self.dut.seq.launch, 1)
        t = ctx.get(self.dut.now)
        await ctx.tick()
        ctx.set(self.dut.seq.launch, 0)
        self.launches += 1
        return t, self.launches - 1

    async def wait_done(self, ctx, count: int, peek=None):
        """Wait until ``done_count`` reaches ``count``; return the cycle it became visible and
        the words ``peek = (region, word, n)`` held in that cycle. One more cycle passes before returning, so that
        the monitor has recorded the pulses of the completing cycle."""
        for _ in range(TIMEOUT):
            if ctx.get(self.dut.seq.done_count) >= count:
                assert ctx.get(self.dut.seq.done_count) == count
                t = ctx.get(self.dut.now)
                seen = self.peek(ctx, *peek) if peek else None
                await ctx.tick()
                return t, seen
            await ctx.tick()
        raise AssertionError(f"done_count did not reach {count} in {TIMEOUT} cycles")

    def take(self, since: int) -> list:
        return [e for e in self.events if e[0] >= since]


def operands(rng, shape, mode):
    if mode == "full":
        return rng.integers(FMT.qmin, FMT.qmax + 1, size=shape)
    if mode == "small":
        return rng.integers(-(1 << (FMT.frac_bits - 2)), 1 << (FMT.frac_bits - 2), size=shape)
    return rng.choice([FMT.qmin, FMT.qmin + 1, -1, 0, 1, FMT.qmax], size=shape)


def vector_reference(name: str, x, y, arg: int) -> np.ndarray:
    if name == "relu":
        return nx.relu(x)
    if name == "relu_bwd":
        return nx.relu_backward(x, y)
    if name == "scale":
        return nx.scale(x, arg, FMT)
    return nx.sgd_update(x, y, arg, FMT)


R, C, L = HW.array_rows, HW.array_cols, HW.vector_lanes
#: (m, k, n): one tile, exact tiles, edge tiles in both directions, K = 1 < R, K = R, K >> R.
GEMM_SHAPES = [(1, 1, 1), (R, 4, C), (R + 1, 5, C + 1), (5, 1, 7), (4, R, 2 * C), (3, 11, 2)]


@pytest.mark.parametrize(("trans_a", "trans_b"), [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm_matches_numerics_and_timing(trans_a, trans_b):
    dut = Harness()
    tb = SequencerTB(dut)
    rng = np.random.default_rng(10 * trans_a + trans_b)
    shifts = [0, 1, -1, 2, 45, 0]

    async def bench(ctx, tb):
        saturated = 0
        for i, ((m, k, n), shift) in enumerate(zip(GEMM_SHAPES, shifts, strict=True)):
            mode = ["full", "small", "corner"][i % 3]
            a = operands(rng, (k, m) if trans_a else (m, k), mode)
            b = operands(rng, (n, k) if trans_b else (k, n), mode)
            a_w, b_w, c_w = 3, 3 + a.size + 1, 5
            await tb.load(ctx, "scratch", a_w, a)
            await tb.load(ctx, "scratch", b_w, b)
            await tb.load(ctx, "grad", c_w - 4, np.full(m * n + 8, GUARD))
            tag = rm.encode_tag(i + 1, i, 3)
            t_launch, _ = await tb.launch(
                ctx,
                rm.Opcode.GEMM,
                addr("scratch", a_w),
                addr("scratch", b_w),
                addr("grad", c_w),
                m,
                k,
                n,
                arg=shift,
                tag=tag,
                trans_a=trans_a,
                trans_b=trans_b,
                kind=rm.Kind.DW,
            )
            t_done, got = await tb.wait_done(  # the result is in memory in the done cycle
                ctx, i + 1, ("grad", c_w - 4, m * n + 8)
            )
            want = nx.gemm(
                a, b, FMT, trans_a=bool(trans_a), trans_b=bool(trans_b), extra_shift=max(shift, 0)
            )
            assert (got[:4] == GUARD).all() and (got[4 + m * n :] == GUARD).all(), got
            res = got[4 : 4 + m * n].reshape(m, n)
            bad = np.argwhere(res != want)
            assert not len(bad), (
                f"GEMM {m}x{k}x{n} shift {shift}: {len(bad)} mismatches, "
                f"first {bad[0]}: {res[tuple(bad[0])]} != {want[tuple(bad[0])]}"
            )
            saturated += int((want == FMT.qmax).sum() + (want == FMT.qmin).sum())
            cycles = tm.gemm_cycles(m, k, n, HW)
            start = t_launch + 1  # an idle sequencer takes a launch in the next cycle
            assert t_done == start + cycles, (m, k, n, t_done - start, cycles)
            ev = tb.take(t_launch)
            ok, end = rm.TraceEvent.START, rm.TraceEvent.END
            eng, kind = rm.Engine.COMPUTE, rm.Kind.DW
            assert ev == [
                (start + 1, "trace", rm.TraceRecord(start, eng, ok, kind, tag, m * k * n)),
                (t_done - 1, "irq", None),
                (t_done - 1, "trace", rm.TraceRecord(t_done, eng, end, kind, tag, m * k * n)),
            ], ev
        assert saturated > 0
        assert ctx.get(dut.seq.gemm_busy_cycles) == sum(
            tm.gemm_cycles(m, k, n, HW) for m, k, n in GEMM_SHAPES
        )

    tb.run(bench)


@pytest.mark.parametrize("opcode", list(rm.VECTOR_OPCODES), ids=lambda o: o.name)
def test_vector_op_matches_numerics_and_timing(opcode):
    dut = Harness()
    tb = SequencerTB(dut)
    rng = np.random.default_rng(int(opcode))
    name = rm.VECTOR_OPCODES[opcode]
    args = [FMT.qmax, FMT.qmin, 1 << FMT.frac_bits, 3, -5]
    sizes = [(1, 1), (1, L), (2, L + 1), (3, 7), (5, 4)]

    async def bench(ctx, tb):
        total = 0
        for i, ((m, n), arg) in enumerate(zip(sizes, args, strict=True)):
            size = m * n
            x = operands(rng, size, "corner" if i % 2 else "full")
            y = operands(rng, size, "corner" if i % 2 == 0 else "full")
            await tb.load(ctx, "scratch", 10, x)
            await tb.load(ctx, "grad", 20 + i, y)
            await tb.load(ctx, "scratch", 96, np.full(size + 8, GUARD))
            t_launch, _ = await tb.launch(
                ctx,
                opcode,
                addr("scratch", 10),
                addr("grad", 20 + i),
                addr("scratch", 100),
                m,
                0,
                n,
                arg=arg,
                tag=0x77 + i,
                kind=rm.Kind.UPDATE,
                irq=i % 2,
            )
            t_done, got = await tb.wait_done(ctx, i + 1, ("scratch", 96, size + 8))
            assert (got[:4] == GUARD).all() and (got[4 + size :] == GUARD).all(), got
            want = vector_reference(name, x, y, arg)
            bad = np.nonzero(got[4 : 4 + size] != want)[0]
            assert not len(bad), (
                f"{name} arg={arg} n={size}: first mismatch at {bad[0]}: "
                f"got {got[4 + bad[0]]} want {want[bad[0]]}"
            )
            cycles = tm.vector_cycles(name, size, HW)
            total += cycles
            start = t_launch + 1
            assert t_done == start + cycles, (name, size, t_done - start, cycles)
            eng, kind = rm.Engine.VECTOR, rm.Kind.UPDATE
            want_events = [
                (
                    start + 1,
                    "trace",
                    rm.TraceRecord(start, eng, rm.TraceEvent.START, kind, 0x77 + i, size),
                )
            ]
            if i % 2:
                want_events.append((t_done - 1, "irq", None))
            want_events.append(
                (
                    t_done - 1,
                    "trace",
                    rm.TraceRecord(t_done, eng, rm.TraceEvent.END, kind, 0x77 + i, size),
                )
            )
            assert tb.take(t_launch) == want_events
        assert ctx.get(dut.seq.vector_busy_cycles) == total

    tb.run(bench)


def test_refused_commands_report_the_error_and_touch_nothing():
    """In the model's order: opcode, zero dimension, K too large, operand ranges; each retires
    ``refused_command_cycles`` after it was taken, with no trace record and no memory access."""
    dut = Harness()
    tb = SequencerTB(dut)
    a, b, c = addr("scratch", 0), addr("scratch", 64), addr("grad", 8)
    last_grad = addr("grad", HW.gradient_words - 4)
    E = rm.ErrorCode
    cases = [
        (0x3F, a, b, c, 4, 4, 4, E.CMD_BAD_OPCODE),
        (max(rm.Opcode) + 1, a, b, c, 4, 4, 4, E.CMD_BAD_OPCODE),
        (rm.Opcode.GEMM, a, b, c, 0, 4, 4, E.CMD_ZERO_DIM),
        (rm.Opcode.GEMM, a, b, c, 4, 0, 4, E.CMD_ZERO_DIM),
        (rm.Opcode.GEMM, a, b, c, 4, 4, 0, E.CMD_ZERO_DIM),
        (rm.Opcode.RELU, a, b, c, 3, 1, 0, E.CMD_ZERO_DIM),
        (rm.Opcode.GEMM, 0, 0, 0, 0, FMT.max_exact_k + 1, 2, E.CMD_ZERO_DIM),  # order
        (rm.Opcode.GEMM, a, b, c, 2, FMT.max_exact_k + 1, 2, E.CMD_K_TOO_LARGE),
        (rm.Opcode.GEMM, 0, 0, 0, 2, FMT.max_exact_k + 1, 2, E.CMD_K_TOO_LARGE),  # order
        (rm.Opcode.GEMM, a, b, last_grad, 4, 4, 4, E.CMD_OUT_OF_BOUNDS),
        (rm.Opcode.GEMM, a + 1, b, c, 4, 4, 4, E.CMD_OUT_OF_BOUNDS),
        (rm.Opcode.GEMM, a, 0x0800_0000, c, 4, 4, 4, E.CMD_OUT_OF_BOUNDS),
        (
            rm.Opcode.SGD,
            a,
            addr("scratch", HW.scratchpad_words - 2),
            c,
            2,
            0,
            2,
            E.CMD_OUT_OF_BOUNDS,
        ),
        (
            rm.Opcode.GEMM,
            addr("scratch", HW.scratchpad_words - 8),
            b,
            c,
            3,
            3,
            3,
            E.CMD_OUT_OF_BOUNDS,
        ),
        (rm.Opcode.RELU, a, b, addr("grad", HW.gradient_words), 1, 0, 1, E.CMD_OUT_OF_BOUNDS),
        (rm.Opcode.NOP, a, b, last_grad, 4, 4, 4, E.OK),
    ]

    async def bench(ctx, tb):
        await tb.load(ctx, "scratch", 0, np.arange(128) - 64)
        await tb.load(ctx, "grad", 0, np.full(48, GUARD))
        await tb.load(ctx, "grad", HW.gradient_words - 12, np.full(12, GUARD))
        tb.accesses.clear()
        for i, (op, pa, pb, pc, m, k, n, code) in enumerate(cases):
            tag = 0x1000 + i
            t_launch, index = await tb.launch(ctx, op, pa, pb, pc, m, k, n, tag=tag, irq=i % 2)
            t_done, _ = await tb.wait_done(ctx, i + 1)
            assert t_done == t_launch + 1 + tm.refused_command_cycles(), (i, t_done - t_launch)
            want = [(t_done - 1, "irq", None)] if i % 2 else []
            if code != E.OK:
                want.append((t_done - 1, "cmd_err", (code, rm.Engine.COMPUTE, index, tag)))
            assert tb.take(t_launch) == want, (i, tb.take(t_launch))
        assert tb.accesses == []
        assert (tb.peek(ctx, "grad", 0, 48) == GUARD).all()
        assert (tb.peek(ctx, "grad", HW.gradient_words - 12, 12) == GUARD).all()
        # A valid command after the refused ones still runs.
        await tb.launch(ctx, rm.Opcode.RELU, a, b, c, 4, 0, 8)
        await tb.wait_done(ctx, len(cases) + 1)
        assert (tb.peek(ctx, "grad", 8, 32) == nx.relu(np.arange(128) - 64)[:32]).all()

    tb.run(bench)


def test_fifo_queues_back_to_back_and_drops_when_full():
    """A running command plus ``cmd_fifo_depth`` queued ones; the next launch is dropped
    with CMD_FIFO_FULL; queued commands start in the cycle the previous one completes."""
    dut = Harness()
    tb = SequencerTB(dut)
    m, k, n = 4, 20, 6
    word = rm.reg("CMD_OPCODE").pack(opcode=rm.Opcode.GEMM, irq=1)

    async def bench(ctx, tb):
        assert ctx.get(dut.seq.fifo_free) == HW.cmd_fifo_depth
        launches = []
        for i in range(HW.cmd_fifo_depth + 2):
            launches.append(
                await tb.launch(
                    ctx,
                    rm.Opcode.GEMM,
                    addr("scratch", 0),
                    addr("scratch", 0),
                    addr("grad", 0),
                    m,
                    k,
                    n,
                    tag=i,
                )
            )
            want_free = max(HW.cmd_fifo_depth - max(i, 1), 0)  # the first is taken next cycle
            assert ctx.get(dut.seq.fifo_free) == want_free, (i, ctx.get(dut.seq.fifo_free))
        t_done, _ = await tb.wait_done(ctx, HW.cmd_fifo_depth + 1)
        dropped_at, dropped = launches[-1]
        assert (
            dropped_at,
            "launch_err",
            (rm.ErrorCode.CMD_FIFO_FULL, rm.Engine.COMPUTE, dropped, word),
        ) in tb.events
        cycles = tm.gemm_cycles(m, k, n, HW)
        starts = [
            r.cycle
            for _, what, r in tb.events
            if what == "trace" and r.event == rm.TraceEvent.START
        ]
        ends = [
            r.cycle for _, what, r in tb.events if what == "trace" and r.event == rm.TraceEvent.END
        ]
        assert starts[0] == launches[0][0] + 1
        assert ends == [s + cycles for s in starts]
        assert starts[1:] == ends[:-1]  # back to back
        assert t_done == ends[-1]
        for _ in range(5):
            await ctx.tick()
        assert ctx.get(dut.seq.done_count) == HW.cmd_fifo_depth + 1  # the dropped one never runs
        assert ctx.get(dut.seq.fifo_free) == HW.cmd_fifo_depth

    tb.run(bench)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fifo_depth": 0}, "fifo_depth must be a positive integer, not 0"),
        ({"fifo_depth": 2.0}, "fifo_depth must be a positive integer, not 2.0"),
        ({"total_bits": 12}, "total_bits must be 8, 16 or 32, not 12"),
        ({"frac_bits": 16}, r"frac_bits must be in \[0, 16\), not 16"),
    ],
)
def test_sequencer_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        ComputeSequencer(**kwargs)
