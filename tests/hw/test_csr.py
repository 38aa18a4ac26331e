# amaranth: UnusedElaboratable=no
"""hw/csr.py's CsrBlock in Amaranth's simulator, over its external ports only.

Every register is checked against ``gradsync.spec.regmap.REGISTERS`` (offset,
access type, reset value) through the AXI4-Lite slave, with random idle
cycles on the master's valid signals and random back-pressure on its ready
signals; the cycle counter, the IRQ line, error events and the trace buffer
against small Python models.
"""

import asyncio

import numpy as np
import pytest
from amaranth.sim import Simulator

from gradsync.hw.csr import CONSTANTS, CsrBlock
from gradsync.spec import regmap as rm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig, constant_registers

DEPTH = 8  # trace records: small, so that full, drops and half-full are quick to reach
HW = HardwareConfig(
    array_rows=4,
    array_cols=8,
    vector_lanes=4,
    scratchpad_words=4096,
    gradient_words=2048,
    ring_entries=32,
    rx_windows=8,
    cmd_fifo_depth=4,
    trace_records=DEPTH,
    link_latency_cycles=37,
    max_payload_bytes=128,
)
FMT = FixedPointFormat()
CONSTS = constant_registers(HW, FMT, node_id=2, num_nodes=3)
#: Registers whose value the block itself keeps (everything else is a build constant,
#: an engine-facing port or a WO strobe).
OWN = {
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
TRACE_IRQ = int(rm.Irq.TRACE)
ERROR_IRQ = int(rm.Irq.ERROR)
TIMEOUT = 100  # cycles a handshake may take, pauses included


def make_csr(**kwargs) -> CsrBlock:
    args = dict(
        constants=CONSTS, trace_records=DEPTH, trace_writers=2, error_sources=2, trace_read_ports=2
    )
    args.update(kwargs)
    return CsrBlock(**args)


def engine_port(dut, r: rm.Register):
    """The engine-facing port that holds (RW) or supplies (RO, W1C) register ``r``."""
    kind = {rm.Access.RW: "rw", rm.Access.RO: "ro", rm.Access.W1C: "ro"}[r.access]
    return dut.port(kind, r.name)


def is_engine_reg(r: rm.Register) -> bool:
    return r.name not in OWN and r.name not in CONSTANTS


class CsrTB:
    """AXI4-Lite master with random idle/back-pressure, pulse monitor and event drivers.

    ``idle`` and ``backpressure`` are the probabilities that the master holds
    back ``*VALID`` (before each attempt) and ``BREADY``/``RREADY`` (per cycle).
    """

    def __init__(self, dut: CsrBlock, seed: int = 0, idle: float = 0.0, backpressure: float = 0.0):
        self.dut = dut
        self.rng = np.random.default_rng(seed)
        self.idle = idle
        self.backpressure = backpressure
        self.pulses = []  # (cycle, port name, value) of every WO / W1C strobe
        self.irq_samples = []  # (cycle, irq) at every edge
        self.cycle = 0

    def set_idle_generator(self, probability: float) -> None:
        self.idle = probability

    def set_backpressure_generator(self, probability: float) -> None:
        self.backpressure = probability

    def ax(self, name):
        return getattr(self.dut, f"s_axil_{name}")

    def run(self, bench, *, monitor: bool = True) -> None:
        sim = Simulator(self.dut)
        sim.add_clock(1e-8)

        async def testbench(ctx):
            await bench(ctx, self)

        sim.add_testbench(testbench)
        if monitor:
            sim.add_testbench(self._monitor, background=True)
        sim.run()

    async def _monitor(self, ctx):
        dut = self.dut
        strobes = [
            (f"wo_{r.name.lower()}", dut.port("wo", r.name))
            for r in dut.engine_regs
            if r.access is rm.Access.WO
        ]
        strobes += [
            (f"w1c_{r.name.lower()}", dut.port("w1c", r.name))
            for r in dut.engine_regs
            if r.access is rm.Access.W1C
        ]
        sigs = [s for _, s in strobes]
        async for _clk, _rst, wo_data, irq, *values in ctx.tick().sample(
            dut.wo_data, dut.irq, *sigs
        ):
            for (name, _), v in zip(strobes, values, strict=True):
                if v:
                    self.pulses.append((self.cycle, name, wo_data if name.startswith("wo_") else v))
            self.irq_samples.append((self.cycle, irq))
            self.cycle += 1

    @staticmethod
    async def _until(ctx, condition) -> None:
        for _ in range(TIMEOUT):
            if condition():
                return
            await ctx.tick()
        raise AssertionError(f"no handshake within {TIMEOUT} cycles")

    async def _pause(self, ctx, probability):
        while self.rng.random() < probability:
            await ctx.tick()

    async def write(self, ctx, offset: int, value: int, *, split: bool = False) -> int:
        """One AXI4-Lite write; returns BRESP. ``split`` presents AW before W."""
        await self._pause(ctx, self.idle)
        ctx.set(self.ax("awaddr"), offset)
        ctx.set(self.ax("awvalid"), 1)
        ctx.set(self.ax("wdata"), value & 0xFFFF_FFFF)
        ctx.set(self.ax("wstrb"), 0xF)
        if split:
            for _ in range(int(self.rng.integers(1, 4))):
                assert not ctx.get(self.ax("awready")), "AW accepted without W"
                await ctx.tick()
        ctx.set(self.ax("wvalid"), 1)
        await self._until(ctx, lambda: ctx.get(self.ax("awready")) and ctx.get(self.ax("wready")))
        await ctx.tick()
        ctx.set(self.ax("awvalid"), 0)
        ctx.set(self.ax("wvalid"), 0)
        for _ in range(TIMEOUT):
            ready = int(self.rng.random() >= self.backpressure)
            ctx.set(self.ax("bready"), ready)
            if ready and ctx.get(self.ax("bvalid")):
                resp = ctx.get(self.ax("bresp"))
                await ctx.tick()
                ctx.set(self.ax("bready"), 0)
                return resp
            await ctx.tick()
        raise AssertionError(f"no write response within {TIMEOUT} cycles")

    async def read_resp(self, ctx, offset: int) -> tuple[int, int]:
        """One AXI4-Lite read; returns (RDATA, RRESP)."""
        await self._pause(ctx, self.idle)
        ctx.set(self.ax("araddr"), offset)
        ctx.set(self.ax("arvalid"), 1)
        await self._until(ctx, lambda: ctx.get(self.ax("arready")))
        await ctx.tick()
        ctx.set(self.ax("arvalid"), 0)
        for _ in range(TIMEOUT):
            ready = int(self.rng.random() >= self.backpressure)
            ctx.set(self.ax("rready"), ready)
            if ready and ctx.get(self.ax("rvalid")):
                out = ctx.get(self.ax("rdata")), ctx.get(self.ax("rresp"))
                await ctx.tick()
                ctx.set(self.ax("rready"), 0)
                return out
            await ctx.tick()
        raise AssertionError(f"no read response within {TIMEOUT} cycles")

    async def read(self, ctx, name_or_offset) -> int:
        off = rm.offset(name_or_offset) if isinstance(name_or_offset, str) else name_or_offset
        data, resp = await self.read_resp(ctx, off)
        assert resp == 0, f"read of 0x{off:x} answered {resp}"
        return data

    async def wr(self, ctx, name_or_offset, value: int) -> None:
        off = rm.offset(name_or_offset) if isinstance(name_or_offset, str) else name_or_offset
        assert await self.write(ctx, off, value) == 0, f"write of 0x{off:x} not OKAY"

    async def push(self, ctx, records, errors=()) -> None:
        """One cycle of trace writes (``TraceRecord`` per writer or None) and error events
        (``(code, engine, index, info)`` per source or None)."""
        dut = self.dut
        for port, rec in zip(dut.trace_in, records, strict=False):
            if rec is not None:
                for f in ("cycle", "engine", "event", "kind", "tag", "aux"):
                    ctx.set(getattr(port, f), getattr(rec, f))
                ctx.set(port.valid, 1)
        for port, ev in zip(dut.err_in, errors, strict=False):
            if ev is not None:
                for f, v in zip(("code", "engine", "index", "info"), ev, strict=True):
                    ctx.set(getattr(port, f), v)
                ctx.set(port.valid, 1)
        await ctx.tick()
        for port in list(dut.trace_in) + list(dut.err_in):
            ctx.set(port.valid, 0)

    async def pop_records(self, ctx) -> list[rm.TraceRecord]:
        count = await self.read(ctx, "TRACE_COUNT")
        recs = []
        for _ in range(count):
            words = [await self.read(ctx, "TRACE_DATA") for _ in range(rm.TRACE_RECORD_WORDS)]
            recs.append(rm.TraceRecord.decode(words))
        return recs


PAUSES = [pytest.param(0.0, 0.0, id="no-pauses"), pytest.param(0.5, 0.5, id="pauses")]


def test_reset_values_and_build_constants():
    """After reset every register reads its REGISTERS reset value, build constants read
    ``constant_registers``; ID and VERSION the regmap's."""
    dut = make_csr()
    tb = CsrTB(dut)
    assert {n for n in CONSTANTS if n not in ("ID", "VERSION")} == set(CONSTS)

    async def bench(ctx, tb):
        for r in rm.REGISTERS:
            got = await tb.read(ctx, r.offset)
            if r.name in CONSTS:
                want = CONSTS[r.name]
            elif r.name == "CYCLE_LO":
                continue  # running; see test_cycle_counter_and_cycle_hi_latch
            else:
                want = r.reset
            assert got == want, f"{r.name}: reads 0x{got:x}, regmap reset 0x{want:x}"
        for r in dut.engine_regs:
            if r.access is rm.Access.RW:
                assert ctx.get(engine_port(dut, r)) == r.reset, r.name

    tb.run(bench)
    assert rm.reg("CONTROL").reset == 1  # the check above saw a non-zero reset value
    assert CONSTS["NODE_ID"] == 2 and CONSTS["TX_PEER"] == 0 and CONSTS["TRACE_DEPTH"] == DEPTH


@pytest.mark.parametrize(("idle", "backpressure"), PAUSES)
def test_every_register_by_access_type(idle, backpressure):
    """RW read back (and drive their port), RO ignore writes and read their source, WO
    strobe their port with the data and read 0, engine W1C strobe the written ones."""
    dut = make_csr()
    tb = CsrTB(dut, seed=3, idle=idle, backpressure=backpressure)
    rng = np.random.default_rng(11)
    values = {r.name: int(rng.integers(0, 1 << 32)) for r in rm.REGISTERS}
    sources = {
        r.name: int(rng.integers(1, 1 << 32))
        for r in dut.engine_regs
        if r.access in (rm.Access.RO, rm.Access.W1C)
    }
    skip = {"IRQ_STATUS", "IRQ_MASK", "TRACE_TAIL", "CONTROL", "CYCLE_LO", "CYCLE_HI"}
    expected_pulses = []

    async def bench(ctx, tb):
        for name, v in sources.items():
            ctx.set(dut.port("ro", name), v)
        for r in rm.REGISTERS:
            if r.name in skip:
                continue
            v = values[r.name]
            before = await tb.read(ctx, r.offset)
            assert await tb.write(ctx, r.offset, v, split=bool(r.offset & 4)) == 0, r.name
            after = await tb.read(ctx, r.offset)
            if r.access is rm.Access.RW:
                assert after == v, f"RW {r.name}: wrote 0x{v:x}, read 0x{after:x}"
                assert ctx.get(engine_port(dut, r)) == v, r.name
            elif r.access is rm.Access.WO:
                assert before == after == 0, f"WO {r.name} reads {before}, {after}"
                expected_pulses.append((f"wo_{r.name.lower()}", v))
            else:  # RO, and the engines' W1C registers: the source's value, unchanged
                want = CONSTS.get(r.name, sources.get(r.name, r.reset))
                assert before == after == want, f"{r.access.value} {r.name}: {before}, {after}"
                if r.access is rm.Access.W1C:
                    expected_pulses.append((f"w1c_{r.name.lower()}", v))
        # the only errors: the two TRACE_DATA reads of the empty trace buffer
        assert await tb.read(ctx, "ERR_COUNT") == 2
        assert rm.reg("ERR_CODE").field("code").get(await tb.read(ctx, "ERR_CODE")) == (
            rm.ErrorCode.TRACE_EMPTY
        )

    tb.run(bench)
    assert [(n, v) for _, n, v in tb.pulses] == expected_pulses
    assert len(set(n for n, _ in expected_pulses)) >= 4  # CMD_LAUNCH, DOORBELLs, RX_DONE_*


@pytest.mark.parametrize(("idle", "backpressure"), PAUSES)
def test_unmapped_offsets_read_zero_okay_and_writes_change_nothing(idle, backpressure):
    dut = make_csr()
    tb = CsrTB(dut, seed=5, idle=idle, backpressure=backpressure)
    rng = np.random.default_rng(7)
    aligned = [o for o in range(0, 0x2000, 4) if o not in rm.BY_OFFSET]
    unmapped = [0x05C, 0x09C, 0x2FC, 0x101C, 0x17FC, 0x1800, 0x1FFC, 0x001, 0x402, 0x0FF3]
    unmapped += [int(o) for o in rng.choice(aligned, size=30, replace=False)]
    assert not set(unmapped) & set(rm.BY_OFFSET)
    rw = [r for r in dut.engine_regs if r.access is rm.Access.RW]
    own = [
        "IRQ_STATUS",
        "IRQ_MASK",
        "IRQ_PENDING",
        "ERR_CODE",
        "ERR_COUNT",
        "TRACE_COUNT",
        "TRACE_HEAD",
        "TRACE_TAIL",
        "TRACE_DROPS",
        "CONTROL",
    ]

    async def bench(ctx, tb):
        ports = {r.name: ctx.get(engine_port(dut, r)) for r in rw}
        regs = {n: await tb.read(ctx, n) for n in own}
        for o in unmapped:
            assert await tb.write(ctx, o, 0xFFFF_FFFF) == 0, hex(o)
            assert await tb.read_resp(ctx, o) == (0, 0), hex(o)
        assert {r.name: ctx.get(engine_port(dut, r)) for r in rw} == ports
        assert {n: await tb.read(ctx, n) for n in own} == regs

    tb.run(bench)
    assert tb.pulses == []


def test_cycle_counter_and_cycle_hi_latch():
    """``now`` counts from 0; CYCLE_LO returns it and latches bits 63:32 into CYCLE_HI,
    which holds them until the next CYCLE_LO read."""
    dut = make_csr()
    tb = CsrTB(dut)

    async def bench(ctx, tb):
        assert ctx.get(dut.now) == 0
        for _ in range(5):
            await ctx.tick()
        assert ctx.get(dut.now) == 5
        ctx.set(dut.now, (7 << 32) | 0xFFFF_FFF0)  # jump close to a carry into bit 32
        await ctx.tick()
        assert ctx.get(dut.now) == (7 << 32) | 0xFFFF_FFF1
        assert await tb.read(ctx, "CYCLE_HI") == 0  # not latched yet
        ctx.set(tb.ax("araddr"), rm.offset("CYCLE_LO"))
        ctx.set(tb.ax("arvalid"), 1)
        while not ctx.get(tb.ax("arready")):
            await ctx.tick()
        await ctx.tick()
        ctx.set(tb.ax("arvalid"), 0)
        at_read = ctx.get(dut.now)  # the accepted read is performed in the next cycle
        await ctx.tick()
        ctx.set(tb.ax("rready"), 1)
        assert ctx.get(tb.ax("rvalid"))
        assert ctx.get(tb.ax("rdata")) == at_read & 0xFFFF_FFFF
        await ctx.tick()
        ctx.set(tb.ax("rready"), 0)
        while ctx.get(dut.now) < 8 << 32:  # carry into bit 32
            await ctx.tick()
        assert await tb.read(ctx, "CYCLE_HI") == 7  # still the latched value
        lo = await tb.read(ctx, "CYCLE_LO")
        assert lo < 64
        assert await tb.read(ctx, "CYCLE_HI") == 8

    tb.run(bench)


@pytest.mark.parametrize(("idle", "backpressure"), PAUSES)
def test_irq_line_is_status_and_mask_and_w1c_clears_only_written_bits(idle, backpressure):
    dut = make_csr()
    tb = CsrTB(dut, seed=9, idle=idle, backpressure=backpressure)
    rng = np.random.default_rng(13)
    model = {"status": 0, "mask": 0}

    async def check(ctx):
        status = await tb.read(ctx, "IRQ_STATUS")
        mask = await tb.read(ctx, "IRQ_MASK")
        pending = await tb.read(ctx, "IRQ_PENDING")
        assert (status, mask) == (model["status"], model["mask"])
        assert pending == status & mask
        assert ctx.get(dut.irq) == int(pending != 0)

    async def bench(ctx, tb):
        await check(ctx)
        seen = set()
        for _ in range(40):
            action = rng.integers(0, 3)
            if action == 0:
                bits = int(rng.integers(1, 256))
                ctx.set(dut.irq_set, bits)
                await ctx.tick()
                ctx.set(dut.irq_set, 0)
                model["status"] |= bits
            elif action == 1:
                mask = int(rng.integers(0, 1 << 32))
                await tb.wr(ctx, "IRQ_MASK", mask)
                model["mask"] = mask
            else:
                clear = int(rng.integers(0, 256)) & int(rng.integers(0, 256))
                await tb.wr(ctx, "IRQ_STATUS", clear)
                model["status"] &= ~clear
            await check(ctx)
            seen.add(ctx.get(dut.irq))
        assert seen == {0, 1}
        # A set and a W1C of the same bit in one cycle: the set wins.
        await tb.wr(ctx, "IRQ_MASK", 0xFF)
        model["mask"] = 0xFF
        ctx.set(tb.ax("awaddr"), rm.offset("IRQ_STATUS"))
        ctx.set(tb.ax("wdata"), 0xFF)
        ctx.set(tb.ax("awvalid"), 1)
        ctx.set(tb.ax("wvalid"), 1)
        assert ctx.get(tb.ax("awready"))
        await ctx.tick()
        ctx.set(tb.ax("awvalid"), 0)
        ctx.set(tb.ax("wvalid"), 0)
        ctx.set(dut.irq_set, 0x3)  # in the cycle the accepted write is performed
        await ctx.tick()
        ctx.set(dut.irq_set, 0)
        ctx.set(tb.ax("bready"), 1)
        await ctx.tick()
        ctx.set(tb.ax("bready"), 0)
        model["status"] = 0x3
        await check(ctx)

    tb.run(bench)


def test_error_events_latch_count_trace_and_raise_irq():
    dut = make_csr()
    tb = CsrTB(dut)
    code_reg = rm.reg("ERR_CODE")

    async def bench(ctx, tb):
        await tb.wr(ctx, "IRQ_MASK", ERROR_IRQ)
        assert not ctx.get(dut.irq)
        t = ctx.get(dut.now)
        await tb.push(ctx, [], [(rm.ErrorCode.CMD_ZERO_DIM, rm.Engine.COMPUTE, 7, 0xABCD)])
        assert ctx.get(dut.irq)
        assert await tb.read(ctx, "ERR_COUNT") == 1
        assert await tb.read(ctx, "ERR_CODE") == code_reg.pack(
            code=rm.ErrorCode.CMD_ZERO_DIM, engine=rm.Engine.COMPUTE, index=7
        )
        assert await tb.read(ctx, "ERR_INFO") == 0xABCD
        # Two in one cycle: both counted and traced (in source order), the last one latched.
        t2 = ctx.get(dut.now)
        await tb.push(
            ctx,
            [],
            [
                (rm.ErrorCode.RING_FULL, rm.Engine.DMA_LO, 3, 0x11),
                (rm.ErrorCode.CMD_FIFO_FULL, rm.Engine.COMPUTE, 0xFFFF, 0x22),
            ],
        )
        assert await tb.read(ctx, "ERR_COUNT") == 3
        assert await tb.read(ctx, "ERR_CODE") == code_reg.pack(
            code=rm.ErrorCode.CMD_FIFO_FULL, engine=rm.Engine.COMPUTE, index=0xFFFF
        )
        assert await tb.read(ctx, "ERR_INFO") == 0x22
        recs = await tb.pop_records(ctx)
        err = rm.TraceEvent.ERROR
        assert recs == [
            rm.TraceRecord(
                t + 1, rm.Engine.COMPUTE, err, rm.Kind.OTHER, 0xABCD, rm.ErrorCode.CMD_ZERO_DIM
            ),
            rm.TraceRecord(
                t2 + 1, rm.Engine.DMA_LO, err, rm.Kind.OTHER, 0x11, rm.ErrorCode.RING_FULL
            ),
            rm.TraceRecord(
                t2 + 1, rm.Engine.COMPUTE, err, rm.Kind.OTHER, 0x22, rm.ErrorCode.CMD_FIFO_FULL
            ),
        ]
        assert await tb.read(ctx, "IRQ_STATUS") == ERROR_IRQ

    tb.run(bench)


def random_record(rng, i: int) -> rm.TraceRecord:
    return rm.TraceRecord(
        cycle=int(rng.integers(0, 1 << 48)),
        engine=int(rng.integers(0, 7)),
        event=int(rng.integers(0, 3)),
        kind=int(rng.integers(0, 14)),
        tag=int(rng.integers(0, 1 << 32)),
        aux=i,
    )


@pytest.mark.parametrize(("idle", "backpressure"), PAUSES)
def test_trace_buffer_order_drops_and_half_full_irq(idle, backpressure):
    """Records pop in write order (writers of one cycle in port order, then errors);
    a full buffer drops and counts; Irq.TRACE is set by a store that leaves it at least
    half full; with trace_enable clear nothing is stored or dropped."""
    dut = make_csr()
    tb = CsrTB(dut, seed=17, idle=idle, backpressure=backpressure)
    rng = np.random.default_rng(19)
    recs = [random_record(rng, i) for i in range(32)]

    async def status(ctx):
        return {
            n: await tb.read(ctx, n)
            for n in ("TRACE_COUNT", "TRACE_HEAD", "TRACE_TAIL", "TRACE_DROPS")
        }

    async def bench(ctx, tb):
        # Empty: TRACE_DATA reads TRACE_EMPTY_WORD, pops nothing, latches TRACE_EMPTY
        # (engine HOST, info = TRACE_TAIL) and stores no ERROR record.
        assert await tb.read(ctx, "TRACE_DATA") == rm.TRACE_EMPTY_WORD
        assert await status(ctx) == {
            "TRACE_COUNT": 0,
            "TRACE_HEAD": 0,
            "TRACE_TAIL": 0,
            "TRACE_DROPS": 0,
        }
        assert await tb.read(ctx, "ERR_COUNT") == 1
        assert await tb.read(ctx, "ERR_CODE") == rm.reg("ERR_CODE").pack(
            code=rm.ErrorCode.TRACE_EMPTY, engine=rm.Engine.HOST, index=0
        )
        assert await tb.read(ctx, "IRQ_STATUS") == ERROR_IRQ
        await tb.wr(ctx, "IRQ_STATUS", ERROR_IRQ)
        # Three records (two in one cycle): below half full, no TRACE irq.
        await tb.push(ctx, [recs[0], recs[1]])
        await tb.push(ctx, [None, recs[2]])
        assert await tb.read(ctx, "IRQ_STATUS") == 0
        await tb.push(ctx, [recs[3]])  # the 4th of 8: half full
        assert await tb.read(ctx, "IRQ_STATUS") == TRACE_IRQ
        await tb.wr(ctx, "IRQ_STATUS", TRACE_IRQ)
        # Fill up: 4 more fit, the rest of the cycle's records and later ones drop.
        await tb.push(ctx, [recs[4], recs[5]])
        await tb.push(ctx, [recs[6], recs[7]])
        await tb.wr(ctx, "IRQ_STATUS", TRACE_IRQ)
        await tb.push(ctx, [recs[8], recs[9]], [(1, 2, 3, 4)])  # all three dropped
        assert await tb.read(ctx, "IRQ_STATUS") == ERROR_IRQ  # a drop stores nothing
        await tb.wr(ctx, "IRQ_STATUS", ERROR_IRQ)
        assert await status(ctx) == {
            "TRACE_COUNT": DEPTH,
            "TRACE_HEAD": DEPTH,
            "TRACE_TAIL": 0,
            "TRACE_DROPS": 3,
        }
        # The host bulk ports see record r word w at word address 4 r + w.
        for r in range(DEPTH):
            for w in range(rm.TRACE_RECORD_WORDS):
                port = dut.trace_rd[(r + w) % 2]
                ctx.set(port.addr, 4 * r + w)
                ctx.set(port.en, 1)
                await ctx.tick()
                ctx.set(port.en, 0)
                await ctx.tick()
                assert ctx.get(port.data) == recs[r].encode()[w], (r, w)
        # Pop 6: order kept, count and tail follow.
        got = []
        for _ in range(6):
            words = [await tb.read(ctx, "TRACE_DATA") for _ in range(rm.TRACE_RECORD_WORDS)]
            got.append(rm.TraceRecord.decode(words))
        assert got == recs[:6]
        assert await status(ctx) == {
            "TRACE_COUNT": 2,
            "TRACE_HEAD": 8,
            "TRACE_TAIL": 6,
            "TRACE_DROPS": 3,
        }
        # 2 in use: a store that leaves 3 does not raise TRACE, one that leaves 4 does.
        await tb.push(ctx, [recs[10]])
        assert await tb.read(ctx, "IRQ_STATUS") == 0
        await tb.push(ctx, [None, recs[11]])
        assert await tb.read(ctx, "IRQ_STATUS") == TRACE_IRQ
        await tb.wr(ctx, "IRQ_STATUS", TRACE_IRQ)
        # trace_enable clear: ignored, not dropped.
        await tb.wr(ctx, "CONTROL", 0)
        await tb.push(ctx, [recs[12], recs[13]])
        await tb.wr(ctx, "CONTROL", 1)
        assert await status(ctx) == {
            "TRACE_COUNT": 4,
            "TRACE_HEAD": 10,
            "TRACE_TAIL": 6,
            "TRACE_DROPS": 3,
        }
        # TRACE_TAIL: a write past TRACE_HEAD is ignored, one within it skips records.
        await tb.wr(ctx, "TRACE_TAIL", 11)
        assert await tb.read(ctx, "TRACE_TAIL") == 6
        await tb.wr(ctx, "TRACE_TAIL", 7)
        assert await tb.pop_records(ctx) == [recs[7], recs[10], recs[11]]
        assert await status(ctx) == {
            "TRACE_COUNT": 0,
            "TRACE_HEAD": 10,
            "TRACE_TAIL": 10,
            "TRACE_DROPS": 3,
        }
        # The ring wraps: records 10.. land in slots 2.. and still pop in order.
        more = recs[14:22]
        for i in range(0, 8, 2):
            await tb.push(ctx, more[i : i + 2])
        assert await tb.pop_records(ctx) == more

    tb.run(bench)


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"trace_records": 12}, ValueError, "trace_records must be a power of two >= 2, not 12"),
        ({"trace_records": 1}, ValueError, "trace_records must be a power of two >= 2, not 1"),
        ({"rx_windows": 0}, ValueError, "rx_windows must be in 1..64, not 0"),
        ({"rx_windows": 65}, ValueError, "rx_windows must be in 1..64, not 65"),
        (
            {"constants": {"NODE_ID": 1, "CMD_A": 3}},
            ValueError,
            r"constants only cover \[.*\], not \['CMD_A'\]",
        ),
    ],
)
def test_csr_rejects_bad_parameters(kwargs, exc, message):
    with pytest.raises(exc, match=f"^{message}$"):
        CsrBlock(**kwargs)


def test_empty_trace_data_reads_on_a_node_match_the_model():
    """A node (CSR block, DMA engine, trace buffer) against the golden model: an empty
    TRACE_DATA read returns TRACE_EMPTY_WORD and latches TRACE_EMPTY (info = TRACE_TAIL)
    without an ERROR record; a real record still pops as its words."""
    from gradsync.model.cluster import Cluster
    from tests.hw.comm_host import FMT as CFMT
    from tests.hw.comm_host import HW as CHW
    from tests.hw.comm_host import Host, run_sim, small_cluster

    data = rm.offset("TRACE_DATA")
    seen = ("ERR_CODE", "ERR_INFO", "ERR_COUNT", "TRACE_COUNT", "TRACE_TAIL")

    def program(read, write):
        """The same register accesses on both: (what, value) for each read."""

        async def run():
            log = [("TRACE_DATA", await read(data))]
            log += [(n, await read(rm.offset(n))) for n in seen]
            await write(rm.dma_reg(1, "DOORBELL"), 1)  # RING_SIZE 0: one ERROR record, tag 0
            words = [await read(data) for _ in range(rm.TRACE_RECORD_WORDS)]
            r = rm.TraceRecord.decode(words)
            log.append(("record", (r.engine, r.event, r.kind, r.tag, r.aux)))
            log.append(("TRACE_DATA", await read(data)))
            log += [(n, await read(rm.offset(n))) for n in seen]
            return log

        return run

    model = Cluster(2, CHW, CFMT).devices[0]

    async def mread(addr):
        return model.mmio_read(addr)

    async def mwrite(addr, value):
        model.mmio_write(addr, value)

    want = asyncio.run(program(mread, mwrite)())
    code = rm.reg("ERR_CODE").pack(code=rm.ErrorCode.TRACE_EMPTY, engine=rm.Engine.HOST, index=0)
    assert want[0] == ("TRACE_DATA", rm.TRACE_EMPTY_WORD)
    assert want[1:4] == [("ERR_CODE", code), ("ERR_INFO", 0), ("ERR_COUNT", 1)]
    bad_size = (rm.Engine.DMA_LO, rm.TraceEvent.ERROR, rm.Kind.OTHER, 0, rm.ErrorCode.RING_BAD_SIZE)
    assert want[6] == ("record", bad_size)
    assert want[7:11] == [("TRACE_DATA", rm.TRACE_EMPTY_WORD), ("ERR_CODE", code)] + [
        ("ERR_INFO", 1),
        ("ERR_COUNT", 3),
    ]
    got = []
    dut = small_cluster()

    async def bench(ctx):
        h = Host(ctx, dut)
        got.extend(await program(lambda a: h.read(0, a), lambda a, v: h.write(0, a, v))())

    run_sim(dut, bench)
    assert got == want
