# amaranth: UnusedElaboratable=no
"""hw/trace_buffer.py in Amaranth's simulator: record packing against ``spec.regmap``, fill, drops, pops.

The references are ``gradsync.spec.regmap.TraceRecord.encode`` (the record
layout every reader decodes) and hand-counted occupancies.
"""

import random

import pytest
from amaranth.sim import Simulator

from gradsync.hw.trace_buffer import TraceBuffer
from gradsync.spec import regmap as rm


def _records(n, seed):
    rng = random.Random(seed)
    return [
        rm.TraceRecord(
            cycle=rng.getrandbits(48), engine=rng.getrandbits(4), event=rng.getrandbits(4),
            kind=rng.getrandbits(8), tag=rng.getrandbits(32), aux=rng.getrandbits(32),
        )
        for _ in range(n)
    ]  # fmt: skip


class _Bench:
    """Drives a :class:`TraceBuffer`'s writers and ``TRACE_*`` register interface."""

    def __init__(self, ctx, dut):
        self.ctx, self.dut = ctx, dut

    async def append(self, *records):
        """One cycle in which writer ``i`` offers ``records[i]`` (``None``: idle)."""
        for port, rec in zip(self.dut.writes, records, strict=False):
            if rec is not None:
                for name in ("cycle", "engine", "event", "kind", "tag", "aux"):
                    self.ctx.set(getattr(port, name), getattr(rec, name))
            self.ctx.set(port.valid, rec is not None)
        await self.ctx.tick()
        for port in self.dut.writes:
            self.ctx.set(port.valid, 0)

    async def pop_record(self):
        """Four TRACE_DATA reads, spaced as the AXI4-Lite front end spaces them (every other
        cycle at most; the tail's memory read is synchronous): the words of the oldest record."""
        words = []
        for _ in range(rm.TRACE_RECORD_WORDS):
            await self.ctx.tick()
            words.append(self.ctx.get(self.dut.regs.data))
            self.ctx.set(self.dut.regs.pop, 1)
            await self.ctx.tick()
            self.ctx.set(self.dut.regs.pop, 0)
        return words

    async def write_tail(self, value):
        self.ctx.set(self.dut.regs.tail_wdata, value)
        self.ctx.set(self.dut.regs.tail_we, 1)
        await self.ctx.tick()
        self.ctx.set(self.dut.regs.tail_we, 0)

    async def read_word(self, addr):
        """A word of the memory through bulk read port 0 (data the cycle after ``en``)."""
        self.ctx.set(self.dut.rd[0].addr, addr)
        self.ctx.set(self.dut.rd[0].en, 1)
        await self.ctx.tick()
        self.ctx.set(self.dut.rd[0].en, 0)
        return self.ctx.get(self.dut.rd[0].data)

    def regs(self):
        r = self.dut.regs
        return {n: self.ctx.get(getattr(r, n)) for n in ("count", "head", "tail", "drops")}


def _run(dut, body):
    async def bench(ctx):
        ctx.set(dut.enable, 1)
        await body(_Bench(ctx, dut))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_records_are_stored_as_the_regmap_encodes_them():
    """Two writers per cycle, port order kept; TRACE_DATA pops and the bulk port both see encode()."""
    dut = TraceBuffer(records=8, writers=2, read_ports=1)
    recs = _records(6, seed=1)

    async def body(b):
        await b.append(recs[0], recs[1])
        await b.append(None, recs[2])
        await b.append(recs[3], None)
        assert b.regs() == {"count": 4, "head": 4, "tail": 0, "drops": 0}
        for slot, rec in enumerate(recs[:4]):
            words = [await b.read_word(4 * slot + w) for w in range(4)]
            assert words == rec.encode(), f"bulk read of record {slot}"
        for rec in recs[:4]:
            assert await b.pop_record() == rec.encode()
        assert b.regs() == {"count": 0, "head": 4, "tail": 4, "drops": 0}
        assert b.ctx.get(b.dut.regs.data) == rm.TRACE_EMPTY_WORD, "TRACE_DATA when empty"
        assert not b.ctx.get(b.dut.regs.underrun)
        b.ctx.set(b.dut.regs.pop, 1)  # popping an empty buffer: underrun, nothing moves
        assert b.ctx.get(b.dut.regs.underrun)
        await b.ctx.tick()
        b.ctx.set(b.dut.regs.pop, 0)
        assert b.regs() == {"count": 0, "head": 4, "tail": 4, "drops": 0}
        assert b.ctx.get(b.dut.regs.data) == rm.TRACE_EMPTY_WORD
        await b.append(recs[4], None)  # once a record is stored, a pop is no underrun
        b.ctx.set(b.dut.regs.pop, 1)
        assert not b.ctx.get(b.dut.regs.underrun)
        b.ctx.set(b.dut.regs.pop, 0)
        assert await b.pop_record() == recs[4].encode()

    _run(dut, body)


def test_full_buffer_counts_drops_and_raises_half_while_storing():
    dut = TraceBuffer(records=4, writers=2)
    recs = _records(7, seed=2)

    async def body(b):
        halves = []
        for pair in ((recs[0], None), (recs[1], recs[2]), (recs[3], recs[4]), (recs[5], recs[6])):
            for port, rec in zip(b.dut.writes, pair, strict=True):
                b.ctx.set(port.valid, rec is not None)
            halves.append(b.ctx.get(b.dut.half))
            await b.append(*pair)
        # used before + stored >= 2 with something stored: cycles 2 and 3; the last stores nothing.
        assert halves == [0, 1, 1, 0]
        assert b.regs() == {"count": 4, "head": 4, "tail": 0, "drops": 3}
        assert await b.pop_record() == recs[0].encode()
        await b.append(recs[5], recs[6])  # one slot free: the first fits, the second drops
        assert b.regs() == {"count": 4, "head": 5, "tail": 1, "drops": 4}

    _run(dut, body)


def test_disabled_buffer_neither_stores_nor_drops():
    dut = TraceBuffer(records=4, writers=1)
    (rec,) = _records(1, seed=3)

    async def body(b):
        b.ctx.set(b.dut.enable, 0)
        await b.append(rec)
        assert b.regs() == {"count": 0, "head": 0, "tail": 0, "drops": 0}

    _run(dut, body)


def test_tail_write_moves_only_within_the_written_records_and_restarts_a_pop():
    dut = TraceBuffer(records=8, writers=1)
    recs = _records(3, seed=4)

    async def body(b):
        for rec in recs:
            await b.append(rec)
        await b.write_tail(4)  # past HEAD = 3: ignored
        assert b.regs()["tail"] == 0
        b.ctx.set(b.dut.regs.pop, 1)  # one word into record 0 ...
        await b.ctx.tick()
        b.ctx.set(b.dut.regs.pop, 0)
        assert b.regs()["tail"] == 0
        await b.write_tail(1)  # ... then the tail moves: the pop restarts at word 0 of record 1
        assert b.regs() == {"count": 2, "head": 3, "tail": 1, "drops": 0}
        assert await b.pop_record() == recs[1].encode()
        await b.write_tail(3)  # TAIL = HEAD: empty
        assert b.regs()["count"] == 0

    _run(dut, body)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"records": 6, "writers": 1}, "records must be a power of two >= 2, not 6"),
        ({"records": 1, "writers": 1}, "records must be a power of two >= 2, not 1"),
        ({"records": 4, "writers": 0}, "writers must be >= 1, not 0"),
    ],
)
def test_trace_buffer_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TraceBuffer(**kwargs)
