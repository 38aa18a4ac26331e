# amaranth: UnusedElaboratable=no
"""hw/bulk.py's BulkPort in Amaranth's simulator: load/dump round trips against NumPy.

The port is joined to a small ``DeviceMemory`` and to ring and trace
memories; a testbench drives its AXI-Stream input and output with random
idle cycles (``s_axis_tvalid`` low) and back-pressure (``m_axis_tready``
low). Every region's contents, every dumped word and every HOST trace record
must be the same with and without pauses, and equal a NumPy model.
"""

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator

from gradsync.hw.bulk import BEAT_BITS, BulkPort, bulk_header
from gradsync.hw.sram import DeviceMemory
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.hardware import HardwareConfig

SCRATCH, GRAD, WIDE = 40, 24, 32  # words; WIDE = ring and trace memory, 32-bit words
HW = HardwareConfig(
    scratchpad_words=SCRATCH,
    gradient_words=GRAD,
    host_bulk_setup_cycles=5,
    host_bulk_bytes_per_cycle=4,
)
LAG, DUMP_LAG = 2, 1
TIMEOUT = 1000
BASES = {
    "scratch": rm.SCRATCH_BASE,
    "grad": rm.GRAD_BASE,
    "ring": rm.RING_MEM_BASE,
    "trace": rm.TRACE_MEM_BASE,
}
KINDS = {
    ("scratch", False): rm.Kind.LOAD,
    ("grad", False): rm.Kind.LOAD,
    ("ring", False): rm.Kind.RING,
    ("trace", False): rm.Kind.LOAD,
    ("scratch", True): rm.Kind.DUMP,
    ("grad", True): rm.Kind.DUMP,
    ("ring", True): rm.Kind.DUMP,
    ("trace", True): rm.Kind.TRACE,
}


class Harness(Elaboratable):
    """BulkPort + operand SRAMs + ring memory (read/write) + trace memory (read-only)."""

    def __init__(self, word_bits: int, trace_init, host_lead_cycles):
        self.bulk = BulkPort(
            word_bits,
            SCRATCH,
            GRAD,
            wide_regions=True,
            wide_words=WIDE,
            host_trace=True,
            host_lead_cycles=host_lead_cycles,
            host_lag_cycles=LAG,
            host_dump_lag_cycles=DUMP_LAG,
            host_setup_cycles=HW.host_bulk_setup_cycles,
            host_bytes_per_cycle=HW.host_bulk_bytes_per_cycle,
        )
        self.mem = DeviceMemory(
            SCRATCH,
            GRAD,
            word_bits,
            read_ports=self.bulk.per_beat,
            write_ports=self.bulk.per_beat,
            debug_port=True,
        )
        self.ring = memory.Memory(shape=32, depth=WIDE, init=[])
        self.trace_mem = memory.Memory(shape=32, depth=WIDE, init=[int(x) for x in trace_init])
        self.now = Signal(48)
        self.tag = Signal(32)
        self.ring_dbg_addr = Signal(range(WIDE))
        self.ring_dbg_data = Signal(32)
        self.trace_dbg_addr = Signal(range(WIDE))
        self.trace_dbg_data = Signal(32)

    def elaborate(self, platform):
        m = Module()
        bulk = self.bulk
        m.submodules.bulk = bulk
        m.submodules.mem = self.mem
        m.submodules.ring = self.ring
        m.submodules.trace_mem = self.trace_mem
        for a, b in zip(bulk.rd, self.mem.rd, strict=True):
            wiring.connect(m, a, b)
        for a, b in zip(bulk.wr, self.mem.wr, strict=True):
            wiring.connect(m, a, b)
        for port in bulk.ring_wr:
            wp = self.ring.write_port()
            m.d.comb += [wp.addr.eq(port.addr), wp.data.eq(port.data), wp.en.eq(port.en)]
        for mem, ports in ((self.ring, bulk.ring_rd), (self.trace_mem, bulk.trace_rd)):
            for port in ports:
                rp = mem.read_port()
                m.d.comb += [rp.addr.eq(port.addr), rp.en.eq(port.en), port.data.eq(rp.data)]
        for mem, a, d in (
            (self.ring, self.ring_dbg_addr, self.ring_dbg_data),
            (self.trace_mem, self.trace_dbg_addr, self.trace_dbg_data),
        ):
            rp = mem.read_port(domain="comb")
            m.d.comb += [rp.addr.eq(a), d.eq(rp.data)]
        m.d.sync += self.now.eq(self.now + 1)
        m.d.comb += [bulk.now.eq(self.now), bulk.tag.eq(self.tag)]
        return m


class BulkModel:
    """What the memories hold: NumPy arrays of unsigned words, and the transfers' rules."""

    def __init__(self, word_bits: int, trace_init):
        self.word_bits = word_bits
        self.mems = {
            "scratch": np.zeros(SCRATCH, np.int64),
            "grad": np.zeros(GRAD, np.int64),
            "ring": np.zeros(WIDE, np.int64),
            "trace": np.array(trace_init, np.int64),
        }

    def width(self, region: str) -> int:
        return 32 if region in ("ring", "trace") else self.word_bits

    def load(self, region: str, index: int, words) -> None:
        if region == "trace":
            return  # read-only: consumed, written nowhere
        mem = self.mems[region]
        for i, w in enumerate(words):
            if index + i < len(mem):
                mem[index + i] = w

    def dump(self, region: str, index: int, n: int) -> np.ndarray:
        mem = self.mems[region]
        return np.array([mem[index + i] if index + i < len(mem) else 0 for i in range(n)])


def pack(words, width: int) -> list[int]:
    """Words into 64-bit beats, word i of a beat at bits [i*width, (i+1)*width); 0-padded."""
    per = BEAT_BITS // width
    words = list(words) + [0] * (-len(words) % per)
    return [
        sum(int(w) << (width * i) for i, w in enumerate(words[b : b + per]))
        for b in range(0, len(words), per)
    ]


def unpack(beats, width: int, n: int) -> np.ndarray:
    per = BEAT_BITS // width
    mask = (1 << width) - 1
    return np.array([(b >> (width * i)) & mask for b in beats for i in range(per)][:n])


class BulkTB:
    """AXI-Stream source and sink for the bulk port, with idle and back-pressure generators."""

    def __init__(self, dut: Harness, seed: int = 0):
        self.dut = dut
        self.rng = np.random.default_rng(seed)
        self.idle = 0.0
        self.backpressure = 0.0
        self.records = []  # (cycle seen, TraceRecord) of every HOST trace write
        self.transfers = []  # (region, dump, n words, header cycle, last beat cycle, tag)

    def set_idle_generator(self, probability: float) -> None:
        self.idle = probability

    def set_backpressure_generator(self, probability: float) -> None:
        self.backpressure = probability

    def run(self, bench) -> None:
        sim = Simulator(self.dut)
        sim.add_clock(1e-8)

        async def testbench(ctx):
            await bench(ctx, self)

        sim.add_testbench(testbench)
        sim.add_testbench(self._monitor, background=True)
        sim.run()

    async def _monitor(self, ctx):
        t = self.dut.bulk.trace
        fields = ("valid", "cycle", "engine", "event", "kind", "tag", "aux")
        sigs = [getattr(t[i], f) for i in range(2) for f in fields]
        async for _clk, _rst, now, *v in ctx.tick().sample(self.dut.now, *sigs):
            for i in range(2):
                valid, cycle, engine, event, kind, tag, aux = v[7 * i : 7 * i + 7]
                if valid:
                    self.records.append((now, rm.TraceRecord(cycle, engine, event, kind, tag, aux)))

    async def _beat(self, ctx, data: int) -> int:
        """Present one input beat after random idle cycles; return its handshake cycle."""
        s = self.dut.bulk
        while self.rng.random() < self.idle:
            ctx.set(s.s_axis_tvalid, 0)
            ctx.set(s.s_axis_tdata, int(self.rng.integers(0, 1 << 63)))  # junk while idle
            await ctx.tick()
        ctx.set(s.s_axis_tdata, data)
        ctx.set(s.s_axis_tvalid, 1)
        for _ in range(TIMEOUT):
            if ctx.get(s.s_axis_tready):
                t = ctx.get(self.dut.now)
                await ctx.tick()
                ctx.set(s.s_axis_tvalid, 0)
                return t
            await ctx.tick()
        raise AssertionError("input beat not accepted")

    async def load(self, ctx, region: str, index: int, words, width: int) -> None:
        byte_addr = BASES[region] + index * width // 8
        t_head = await self._beat(ctx, bulk_header(byte_addr, len(words), dump=False))
        t_last = t_head
        for beat in pack(words, width):
            t_last = await self._beat(ctx, beat)
        self.transfers.append((region, False, len(words), t_head, t_last, ctx.get(self.dut.tag)))

    async def dump(self, ctx, region: str, index: int, n: int, width: int) -> np.ndarray:
        s = self.dut.bulk
        byte_addr = BASES[region] + index * width // 8
        t_head = await self._beat(ctx, bulk_header(byte_addr, n, dump=True))
        beats = []
        want = -(-n // (BEAT_BITS // width))
        t_last = None
        for _ in range(TIMEOUT):
            ready = int(self.rng.random() >= self.backpressure)
            ctx.set(s.m_axis_tready, ready)
            if ready and ctx.get(s.m_axis_tvalid):
                beats.append(ctx.get(s.m_axis_tdata))
                assert ctx.get(s.m_axis_tlast) == (len(beats) == want), (len(beats), want)
                if len(beats) == want:
                    t_last = ctx.get(self.dut.now)
                    await ctx.tick()
                    break
            await ctx.tick()
        ctx.set(s.m_axis_tready, 0)
        assert len(beats) == want, f"dump of {n} words: {len(beats)} of {want} beats"
        for _ in range(3):
            assert not ctx.get(s.m_axis_tvalid), "beats after the last one"
            await ctx.tick()
        self.transfers.append((region, True, n, t_head, t_last, ctx.get(self.dut.tag)))
        per = BEAT_BITS // width
        if n % per:  # unused words of the final beat are 0
            assert beats[-1] >> (width * (n % per)) == 0, hex(beats[-1])
        return unpack(beats, width, n)

    def expected_records(self, word_bits: int, host_lead_cycles) -> list:
        out = []
        for region, dump, n, t_head, t_last, tag in self.transfers:
            nbytes = n * (4 if region in ("ring", "trace") else word_bits // 8)
            end = t_last + (DUMP_LAG if dump else LAG)
            if host_lead_cycles is None:
                start = end - tm.host_bulk_cycles(nbytes, HW)
            else:
                start = t_head - host_lead_cycles
            kind = KINDS[(region, dump)]
            out.append(
                (
                    t_last,
                    rm.TraceRecord(start, rm.Engine.HOST, rm.TraceEvent.START, kind, tag, nbytes),
                )
            )
            out.append(
                (t_last, rm.TraceRecord(end, rm.Engine.HOST, rm.TraceEvent.END, kind, tag, nbytes))
            )
        return out


#: (region, first word, words): full and partial beats, a run past the end of a bank.
TRANSFERS = [
    ("scratch", 0, 17),
    ("scratch", 5, 3),
    ("grad", 2, 22),
    ("scratch", 37, 7),
    ("ring", 0, 32),
    ("ring", 7, 5),
    ("grad", 23, 1),
    ("trace", 3, 9),
    ("scratch", 20, 1),
    ("grad", 0, 24),
]


def run_transfers(
    word_bits: int, idle: float, backpressure: float, host_lead_cycles, seed: int = 1
):
    """Load then dump every TRANSFERS entry with fresh random words; return everything seen."""
    rng = np.random.default_rng(seed)
    trace_init = rng.integers(0, 1 << 32, size=WIDE)
    dut = Harness(word_bits, trace_init, host_lead_cycles)
    model = BulkModel(word_bits, trace_init)
    tb = BulkTB(dut, seed=seed + 100)
    tb.set_idle_generator(idle)
    tb.set_backpressure_generator(backpressure)
    seen = {"dumps": [], "final": {}}

    async def bench(ctx, tb):
        for _ in range(30):  # so that START stamps (before the header) are not negative
            await ctx.tick()
        for i, (region, index, n) in enumerate(TRANSFERS):
            width = model.width(region)
            words = rng.integers(0, 1 << width, size=n)
            ctx.set(dut.tag, 0x100 + i)
            await tb.load(ctx, region, index, words, width)
            model.load(region, index, words)
            ctx.set(dut.tag, 0x200 + i)
            got = await tb.dump(ctx, region, index, n, width)
            want = model.dump(region, index, n)
            assert (got == want).all(), (region, index, n, got, want)
            seen["dumps"].append(got)
        # Every memory, read behind the port's back, equals the model.
        for region in ("scratch", "grad"):
            bank = region == "grad"
            got = []
            for i in range(1 << (dut.mem.addr_bits - 1)):
                ctx.set(dut.mem.dbg_addr, bank << (dut.mem.addr_bits - 1) | i)
                got.append(ctx.get(dut.mem.dbg_data))
            want = np.zeros(len(got), np.int64)
            want[: len(model.mems[region])] = model.mems[region]
            assert (np.array(got) == want).all(), region
            seen["final"][region] = got
        for region, a, d in (
            ("ring", dut.ring_dbg_addr, dut.ring_dbg_data),
            ("trace", dut.trace_dbg_addr, dut.trace_dbg_data),
        ):
            got = []
            for i in range(WIDE):
                ctx.set(a, i)
                got.append(ctx.get(d))
            assert (np.array(got) == model.mems[region]).all(), region
            seen["final"][region] = got
        for _ in range(2):
            await ctx.tick()

    tb.run(bench)
    assert tb.records == tb.expected_records(word_bits, host_lead_cycles)
    assert {r.kind for _, r in tb.records} == set(KINDS.values())
    return seen, tb


@pytest.mark.parametrize("word_bits", [16, 8, 32])
def test_round_trip_of_every_region_matches_numpy(word_bits):
    run_transfers(word_bits, 0.0, 0.0, host_lead_cycles=None)


@pytest.mark.parametrize("host_lead_cycles", [None, 3])
def test_random_idle_and_backpressure_leave_data_and_records_unchanged(host_lead_cycles):
    quiet, quiet_tb = run_transfers(16, 0.0, 0.0, host_lead_cycles)
    paused, paused_tb = run_transfers(16, 0.6, 0.6, host_lead_cycles)
    for a, b in zip(quiet["dumps"], paused["dumps"], strict=True):
        assert (a == b).all()
    assert quiet["final"] == paused["final"]
    # The pauses really happened: the same transfers took longer.
    assert paused_tb.transfers[-1][4] > quiet_tb.transfers[-1][4] + 50


def test_header_with_zero_words_is_ignored():
    rng = np.random.default_rng(5)
    dut = Harness(16, np.zeros(WIDE, np.int64), None)
    tb = BulkTB(dut)

    async def bench(ctx, tb):
        await tb._beat(ctx, rm.SCRATCH_BASE)  # 0 words: consumed, no transfer
        assert not ctx.get(dut.bulk.busy)
        words = rng.integers(0, 1 << 16, size=6)
        await tb.load(ctx, "scratch", 4, words, 16)
        assert (await tb.dump(ctx, "scratch", 4, 6, 16) == words).all()

    tb.run(bench)
    assert len(tb.records) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"word_bits": 12}, "word_bits must be 8, 16 or 32, not 12"),
        ({"wide_words": 1}, "wide_words must be >= 2, not 1"),
        ({"host_bytes_per_cycle": 6}, "host_bytes_per_cycle must be a power of two, not 6"),
    ],
)
def test_bulk_port_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        BulkPort(**kwargs)


@pytest.mark.parametrize(
    ("addr", "words", "message"),
    [
        (1 << 32, 1, f"bulk transfer of 1 words at {1 << 32} is not encodable"),
        (0, 0, "bulk transfer of 0 words at 0 is not encodable"),
        (0, 1 << 31, f"bulk transfer of {1 << 31} words at 0 is not encodable"),
    ],
)
def test_bulk_header_rejects_unencodable_transfers(addr, words, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        bulk_header(addr, words, dump=False)
