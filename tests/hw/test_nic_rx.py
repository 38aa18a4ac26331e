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
    RxWindowTable,
)

REGIONS = ((0x1000, 256), (0x4000, 128))
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
    return window, rng.choice([w.tag, w.tag ^ 1]), addr & 0xFFFF_FFFF, nbytes, rng.random() < 0.5


def _random_write(rng, ref):
    reg = rng.randrange(7)
    idx = rng.randrange(NW + 1)
    value = {
        WIN_CTRL: rng.choice([0, 1, 1, 3]),
        WIN_DST: rng.choice([0x1000, 0x1040, 0x40F0, 0x4000, 0x3FF0]),
        WIN_SRC: rng.choice([0x1000, 0x10C0, 0x4000, 0x4002, 0xFFFF_FFF0]),
        WIN_LEN: rng.choice([0, 64, 128, 256]),
        WIN_TAG: rng.choice([0x55, 0x56]),
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
    assert seen["codes"] == {0, RX_NO_WINDOW, RX_TAG_MISMATCH, RX_OUT_OF_WINDOW}
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
