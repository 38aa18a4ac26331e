# amaranth: UnusedElaboratable=no
"""hw/nic_rx.py's window table alone in Amaranth's simulator, against a plain-Python window table.

The reference restates the golden model's RX rules (``model/device.py``:
``_window_write``, ``receive``'s checks, ``_check_window``) on plain integers:
which packets a window refuses and why, where an accepted one goes, RECEIVED,
arming and the done bits.  The whole receiver is tested end to end in
``test_nic.py``.
"""

import random
from dataclasses import dataclass

import pytest
from amaranth.sim import Simulator

from gradsync.hw.nic_rx import (
    RX_NO_WINDOW,
    RX_OUT_OF_WINDOW,
    RX_TAG_MISMATCH,
    WIN_CTRL,
    WIN_DST,
    WIN_EXPECT,
    WIN_LEN,
    WIN_RECEIVED,
    WIN_SRC,
    WIN_TAG,
    NicRx,
    RxWindowTable,
)
from gradsync.hw.packet import header0
from gradsync.model.link import crc32_words
from gradsync.spec import regmap as rm

REGIONS = ((0x1000, 256), (0x4000, 128))
HOLD = "hold"  # the reference's verdict for a packet of the window's next step
NW = 3


@dataclass
class Window:
    ctrl: int = 0
    dst: int = 0
    src: int = 0
    length: int = 0
    tag: int = 0
    expect: int = 0
    received: int = 0
    armed: bool = False


class Reference:
    """The model's window rules on plain integers."""

    def __init__(self):
        self.windows = [Window() for _ in range(NW)]
        self.done = 0

    def write(self, idx, reg, value):
        if idx >= NW:
            return False
        w = self.windows[idx]
        irq = False
        if reg == WIN_CTRL:
            w.ctrl = value & 1
            if value & 1:
                w.received, w.armed = 0, False
                self.done &= ~(1 << idx)
        elif reg == WIN_EXPECT:
            w.expect, w.armed = value, True
            irq = self._check(idx)
        elif reg != WIN_RECEIVED:
            setattr(
                w, {WIN_DST: "dst", WIN_SRC: "src", WIN_LEN: "length", WIN_TAG: "tag"}[reg], value
            )
        return irq

    def read(self, idx, reg):
        if idx >= NW:
            return 0
        w = self.windows[idx]
        return {
            WIN_CTRL: w.ctrl, WIN_DST: w.dst, WIN_SRC: w.src, WIN_LEN: w.length, WIN_TAG: w.tag,
            WIN_EXPECT: w.expect, WIN_RECEIVED: w.received,
        }.get(reg, 0)  # fmt: skip

    def _check(self, idx):
        w = self.windows[idx]
        if w.armed and w.received >= w.expect:
            w.armed = False
            self.done |= 1 << idx
            return True
        return False

    @staticmethod
    def _region(addr, nbytes):
        for i, (base, size) in enumerate(REGIONS):
            if base <= addr and addr + nbytes <= base + size:
                return i, (addr - base) >> 2
        return None

    def check(self, window, tag, addr, nbytes, reduce):
        """``(code, dst, src)``: the refusal code, else the (region, word) of destination and source."""
        if window >= NW or not self.windows[window].ctrl & 1:
            return RX_NO_WINDOW, None, None
        w = self.windows[window]
        step = 0xFFF << 20
        if (
            w.tag != tag
            and (w.tag ^ tag) & ~step == 0
            and (tag >> 20) == ((w.tag >> 20) + 1) % 4096
        ):
            return HOLD, None, None  # the window's next step (docs/comm.md)
        if w.tag != tag:
            return RX_TAG_MISMATCH, None, None
        if not (w.dst <= addr and addr + nbytes <= w.dst + w.length):
            return RX_OUT_OF_WINDOW, None, None
        src_addr = w.src + (addr - w.dst)
        dst, src = self._region(addr, nbytes), self._region(src_addr, nbytes)
        if dst is None or addr % 4 or (reduce and (src is None or src_addr % 4)):
            return RX_OUT_OF_WINDOW, None, None
        return 0, dst, src

    def commit(self, window, nbytes):
        self.windows[window].received = (self.windows[window].received + nbytes) & 0xFFFF_FFFF
        return self._check(window)


def _random_packet(rng, ref):
    window = rng.randrange(NW + 1)
    w = ref.windows[min(window, NW - 1)]
    nbytes = 4 * rng.randint(1, 16)
    addr = rng.choice([w.dst, w.dst + 4 * rng.randrange(8), rng.choice(REGIONS)[0], w.dst + 2])
    tag = rng.choice([w.tag, w.tag ^ 1, w.tag + (1 << 20), w.tag + (2 << 20)]) & 0xFFFF_FFFF
    return window, tag, addr & 0xFFFF_FFFF, nbytes, rng.random() < 0.5


def _random_write(rng, ref):
    reg = rng.randrange(7)
    idx = rng.randrange(NW + 1)
    value = {
        WIN_CTRL: rng.choice([0, 1, 1, 3]),
        WIN_DST: rng.choice([0x1000, 0x1040, 0x40F0, 0x4000, 0x3FF0]),
        WIN_SRC: rng.choice([0x1000, 0x10C0, 0x4000, 0x4002, 0xFFFF_FFF0]),
        WIN_LEN: rng.choice([0, 64, 128, 256]),
        WIN_TAG: rng.choice([0x55, 0x56, 0x55 + (1 << 20), 0xFFF0_0055]),
        WIN_EXPECT: rng.choice([0, 16, 64, 128, 1 << 20]),
        WIN_RECEIVED: rng.getrandbits(32),
    }[reg]
    return idx, reg, value


@pytest.mark.parametrize("seed", [1, 2])
def test_window_table_checks_counts_and_done_bits_follow_the_model_rules(seed):
    rng = random.Random(seed)
    dut = RxWindowTable(windows=NW, regions=REGIONS, mem_addr_width=6)
    ref = Reference()
    seen = {"codes": set(), "irqs": 0, "dones": 0}

    async def bench(ctx):
        lk = dut.lookup
        for step in range(1500):
            if rng.random() < 0.4:
                idx, reg, value = _random_write(rng, ref)
                for port, v in ((dut.cfg_window, idx), (dut.cfg_reg, reg), (dut.cfg_wdata, value)):
                    ctx.set(port, v)
                ctx.set(dut.cfg_we, 1)
                want_irq = ref.write(idx, reg, value)
                assert ctx.get(dut.rx_irq) == want_irq, f"step {step}: rx_irq on write {reg}"
                await ctx.tick()
                ctx.set(dut.cfg_we, 0)
            else:
                window, tag, addr, nbytes, reduce = pkt = _random_packet(rng, ref)
                for port, v in zip(
                    (lk.window, lk.tag, lk.addr, lk.bytes, lk.reduce), pkt, strict=True
                ):
                    ctx.set(port, v)
                code, dst, src = ref.check(*pkt)
                assert ctx.get(lk.hold) == (code == HOLD), f"step {step}: {pkt}"
                if code != HOLD:
                    assert ctx.get(lk.code) == code, f"step {step}: {pkt}"
                seen["codes"].add(code)
                if code == 0:
                    assert (ctx.get(lk.dst_region), ctx.get(lk.dst)) == dst, f"step {step}: {pkt}"
                    if reduce:
                        assert (ctx.get(lk.src_region), ctx.get(lk.src)) == src, (
                            f"step {step}: {pkt}"
                        )
                    ctx.set(lk.commit, 1)
                    want_irq = ref.commit(window, nbytes)
                    assert ctx.get(dut.rx_irq) == want_irq, f"step {step}: rx_irq on {pkt}"
                    seen["irqs"] += want_irq
                await ctx.tick()
                ctx.set(lk.commit, 0)
            if rng.random() < 0.05:
                mask = rng.getrandbits(NW)
                ctx.set(dut.done_clear, mask)
                ref.done &= ~mask
                await ctx.tick()
                ctx.set(dut.done_clear, 0)
            assert ctx.get(dut.done_bits) == ref.done, f"step {step}"
            seen["dones"] += ref.done != 0
            idx, reg = rng.randrange(NW + 1), rng.randrange(7)
            ctx.set(dut.cfg_window, idx)
            ctx.set(dut.cfg_reg, reg)
            assert ctx.get(dut.cfg_rdata) == ref.read(idx, reg), f"step {step}: read {idx}/{reg}"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    # The random walk must reach every outcome, or the comparison above proves little.
    assert seen["codes"] == {0, HOLD, RX_NO_WINDOW, RX_TAG_MISMATCH, RX_OUT_OF_WINDOW}
    assert seen["irqs"] > 0 and seen["dones"] > 0


def test_expect_write_that_completes_an_armed_window_disarms_it():
    dut = RxWindowTable(windows=1, regions=REGIONS, mem_addr_width=6)

    async def bench(ctx):
        lk = dut.lookup
        for reg, value in (
            (WIN_DST, 0x1000),
            (WIN_LEN, 256),
            (WIN_TAG, 0x55),
            (WIN_CTRL, 1),
            (WIN_EXPECT, 1 << 20),
            (WIN_EXPECT, 0),
        ):  # armed, then complete
            ctx.set(dut.cfg_reg, reg)
            ctx.set(dut.cfg_wdata, value)
            ctx.set(dut.cfg_we, 1)
            await ctx.tick()
        ctx.set(dut.cfg_we, 0)
        assert ctx.get(dut.done_bits) == 1
        ctx.set(dut.done_clear, 1)
        await ctx.tick()
        ctx.set(dut.done_clear, 0)
        for port, v in zip(
            (lk.window, lk.tag, lk.addr, lk.bytes), (0, 0x55, 0x1000, 16), strict=True
        ):
            ctx.set(port, v)
        assert ctx.get(lk.code) == 0
        ctx.set(lk.commit, 1)
        assert ctx.get(dut.rx_irq) == 0, "the model's window is no longer armed"
        await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


# ------------------------------------------------------------- receiver not ready (hold)

TAG_L1C0 = {step: rm.encode_tag(1, 0, step) for step in (4095, 0, 1, 2, 3)}
HOLD_BASE = 0x1000


def _beats(window, tag, addr, payload, seq, reduce=True):
    """The link words of one packet (``hw/packet.py``: H0, tag, address, payload, CRC)."""
    words = [header0(window, reduce, len(payload), seq), tag, addr, *payload]
    return [(w, 0) for w in words] + [(crc32_words(words), 1)]


class RxBench:
    """One NicRx in the Amaranth simulator: link beats in, a word memory behind its ports."""

    def __init__(self, ctx, dut):
        self.ctx, self.dut = ctx, dut
        self.mem = {i: 0x0001_0001 * (i + 1) for i in range(64)}  # word address -> word
        self.beats: list[tuple[int, int]] = []
        self.cycle = 0
        self.rd_addr = None
        self.events: list[tuple[int, str, int]] = []  # (cycle, "trace"/"error", value)

    async def tick(self):
        ctx, dut = self.ctx, self.dut
        if self.beats:
            data, last = self.beats.pop(0)
            ctx.set(dut.link.valid, 1)
            ctx.set(dut.link.p.data, data)
            ctx.set(dut.link.p.last, last)
        else:
            ctx.set(dut.link.valid, 0)
        ctx.set(dut.mem_rd_data, self.mem.get(self.rd_addr, 0) if self.rd_addr is not None else 0)
        self.rd_addr = ctx.get(dut.mem_rd_addr)
        if ctx.get(dut.mem_wr_en):
            self.mem[ctx.get(dut.mem_wr_addr)] = ctx.get(dut.mem_wr_data)
        if ctx.get(dut.trace.valid):
            self.events.append((self.cycle, "trace", ctx.get(dut.trace.aux)))
        if ctx.get(dut.error.valid):
            self.events.append((self.cycle, "error", ctx.get(dut.error.code)))
        await ctx.tick()
        ctx.set(dut.cfg_we, 0)
        self.cycle += 1

    async def write(self, window, reg, value):
        """A window register write: ``cfg_we`` in this cycle, visible from the next."""
        for port, v in ((self.dut.cfg_window, window), (self.dut.cfg_reg, reg)):
            self.ctx.set(port, v)
        self.ctx.set(self.dut.cfg_wdata, value)
        self.ctx.set(self.dut.cfg_we, 1)
        await self.tick()

    async def open(self, window, tag, dst_word=16, src_word=0, length=64):
        for reg, value in (
            (WIN_DST, HOLD_BASE + 4 * dst_word),
            (WIN_SRC, HOLD_BASE + 4 * src_word),
            (WIN_LEN, length),
            (WIN_TAG, tag),
            (WIN_CTRL, 1),
        ):
            await self.write(window, reg, value)


def _rx_dut():
    return NicRx(
        max_payload_words=4,
        credits=2,
        windows=2,
        regions=((HOLD_BASE, 256),),
        operand_bits=16,
        nak_holdoff_cycles=64,
    )


def test_next_step_packet_is_held_until_its_tag_is_written_then_applied():
    """A packet tagged with the window's step + 1 waits (no error, no write, no trace, its
    slot kept) until TAG is written in cycle w, is checked in w + 1 and applied as an idle
    receiver applies one checked then: its last word written and RECEIVED visible in
    ``w + 1 + payload_words + 2`` (the applier's timing, ``RxApplier``)."""
    dut = _rx_dut()
    payload = [0x0002_0003, 0x0004_0005, 0x0006_0007, 0x0008_0009]

    async def bench(ctx):
        b = RxBench(ctx, dut)
        await b.open(0, TAG_L1C0[4095])  # step -1, as the firmware opens it
        b.beats = _beats(0, TAG_L1C0[0], HOLD_BASE + 64, payload, seq=0)
        for _ in range(40):
            await b.tick()
        assert ctx.get(dut.holds) == 1
        assert ctx.get(dut.held_window) == 1 and ctx.get(dut.held_tag) == TAG_L1C0[0]
        assert b.events == [] and ctx.get(dut.packets_applied) == 0 and ctx.get(dut.drops) == 0
        assert all(b.mem[16 + i] == 0x0001_0001 * (17 + i) for i in range(4)), "written early"
        w = b.cycle
        await b.write(0, WIN_TAG, TAG_L1C0[0])
        pw = len(payload)
        while b.cycle < w + 1 + pw + 2:
            assert ctx.get(dut.packets_applied) == 0, f"applied in cycle {b.cycle}"
            await b.tick()
        assert ctx.get(dut.packets_applied) == 1 and ctx.get(dut.held_window) == 0
        ctx.set(dut.cfg_window, 0)
        ctx.set(dut.cfg_reg, WIN_RECEIVED)
        assert ctx.get(dut.cfg_rdata) == 4 * pw
        assert b.events == [(w + 1 + pw + 1, "trace", 4 * pw)]  # the LAST cycle
        for i, p in enumerate(payload):  # dst = src + payload, per 16-bit lane
            src = 0x0001_0001 * (i + 1)
            want = ((src & 0xFFFF) + (p & 0xFFFF)) | ((src >> 16) + (p >> 16)) << 16
            assert b.mem[16 + i] == want, f"word {i}"
        assert ctx.get(dut.holds) == 1 and ctx.get(dut.drops) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize(
    "window_tag, packet_tag, enabled, code",
    [
        (rm.encode_tag(1, 0, 2), rm.encode_tag(1, 0, 4), True, RX_TAG_MISMATCH),  # step + 2
        (rm.encode_tag(1, 0, 2), rm.encode_tag(1, 0, 1), True, RX_TAG_MISMATCH),  # step - 1
        (rm.encode_tag(1, 0, 2), rm.encode_tag(2, 0, 3), True, RX_TAG_MISMATCH),  # other layer
        (rm.encode_tag(1, 0, 2), rm.encode_tag(1, 1, 3), True, RX_TAG_MISMATCH),  # other chunk
        (rm.encode_tag(1, 0, 2), rm.encode_tag(1, 0, 3), False, RX_NO_WINDOW),  # closed window
        (rm.encode_tag(1, 0, 4095), rm.encode_tag(1, 0, 0), True, None),  # step wraps: hold
    ],
    ids=["step+2", "step-1", "layer", "chunk", "closed", "wrap-holds"],
)
def test_only_the_next_step_of_an_enabled_window_is_held(window_tag, packet_tag, enabled, code):
    """Every other tag stays an error, refused in the idle receiver's time (CRC word in
    cycle c, error one cycle before ``c + 4 + payload_words``); a disabled window refuses
    even its next step."""
    dut = _rx_dut()

    async def bench(ctx):
        b = RxBench(ctx, dut)
        await b.open(0, window_tag)
        if not enabled:
            await b.write(0, WIN_CTRL, 0)
        b.beats = _beats(0, packet_tag, HOLD_BASE + 64, [0x10001] * 4, seq=0)
        crc_cycle = b.cycle + 7
        for _ in range(40):
            await b.tick()
        if code is None:
            assert ctx.get(dut.holds) == 1 and b.events == []
            return
        assert ctx.get(dut.holds) == 0 and ctx.get(dut.drops) == 1
        assert (crc_cycle + 4 + 4 - 1, "error", code) in b.events, b.events

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
