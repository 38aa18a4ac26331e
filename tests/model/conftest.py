from __future__ import annotations

import numpy as np
import pytest

from gradsync.firmware.driver import IRQ_ENABLED
from gradsync.model.cluster import Cluster
from gradsync.spec import regmap as rm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig

FMT = FixedPointFormat()
HW = HardwareConfig(scratchpad_words=4096, gradient_words=4096, ring_entries=8)


def run_programs(programs, nodes=None, hw=HW, fmt=FMT):
    """Run one coroutine factory per node on a fresh cluster; return the cluster."""
    cluster = Cluster(nodes or len(programs), hw, fmt)
    cluster.run(programs)
    return cluster


def saddr(word: int, fmt=FMT) -> int:
    return rm.SCRATCH_BASE + word * fmt.word_bytes


def gaddr(word: int, fmt=FMT) -> int:
    return rm.GRAD_BASE + word * fmt.word_bytes


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)


# --- helpers driving a modelled node through its registers (test_compute/dma/nic/device) ---



async def launch(dev, opcode, a, b, c, m, k, n, *, arg=0, trans_a=0, trans_b=0, kind=0, tag=0):
    staged = rm.command_registers(
        opcode, a, b, c, m, k, n, arg=arg, tag=tag, kind=kind, trans_a=trans_a, trans_b=trans_b
    )
    for name, v in staged:
        await dev.write32(rm.offset(name), v)
    await dev.write32(rm.offset("CMD_LAUNCH"), 1)


async def setup_queues(dev, win_len=HW.gradient_words * 2):
    for q in range(2):
        await dev.write32(rm.dma_reg(q, "RING_BASE"), rm.RING_MEM_BASE + q * HW.ring_entries * 32)
        await dev.write32(rm.dma_reg(q, "RING_SIZE"), HW.ring_entries)
        await dev.write32(rm.dma_reg(q, "WIN_BASE"), rm.GRAD_BASE)
        await dev.write32(rm.dma_reg(q, "WIN_LEN"), win_len)
    await dev.write32(rm.offset("IRQ_MASK"), int(IRQ_ENABLED))


async def post(dev, q, slot, desc):
    await dev.load(rm.RING_MEM_BASE + (q * HW.ring_entries + slot) * 32, np.array(desc.encode()))
    await dev.write32(rm.dma_reg(q, "DOORBELL"), slot + 1)


async def open_window(dev, w, dst, src, length, tag, expect):
    for name, v in (
        ("DST", dst),
        ("SRC", src),
        ("LEN", length),
        ("TAG", tag),
        ("CTRL", 1),
        ("EXPECT", expect),
    ):
        await dev.write32(rm.rx_window_reg(w, name), v)


def idle(dev):
    async def prog():
        return None

    return prog()


def intervals(dev, engine):
    out, open_ = [], []
    for r in dev.trace:
        if r.engine != engine:
            continue
        if engine == rm.Engine.NIC_RX:  # one END record per packet, when it is applied
            assert r.event == rm.TraceEvent.END
            out.append((None, r.cycle, r.tag, r.aux))
        elif r.event == rm.TraceEvent.START:
            open_.append(r)
        elif r.event == rm.TraceEvent.END:
            s = open_.pop(0)
            out.append((s.cycle, r.cycle, s.tag, r.aux))
    return out


GUARD = 0x1234
