"""The modelled DMA engine through its registers: descriptor validation, priority, fences."""

from __future__ import annotations

import numpy as np
import pytest

from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm

from .conftest import (
    GUARD,
    HW,
    gaddr,
    intervals,
    launch,
    open_window,
    post,
    run_programs,
    saddr,
    setup_queues,
)


@pytest.mark.parametrize(
    "change, code",
    [
        ({"src_addr": gaddr(HW.gradient_words - 8)}, rm.ErrorCode.OUT_OF_WINDOW),
        ({"length": 0}, rm.ErrorCode.ZERO_LENGTH),
        ({"length": 6}, rm.ErrorCode.MISALIGNED),
        ({"remote_addr": gaddr(1)}, rm.ErrorCode.MISALIGNED),
        ({"peer": 7}, rm.ErrorCode.UNKNOWN_PEER),
        ({"peer": 0}, rm.ErrorCode.UNKNOWN_PEER),
        ({"version": 2}, rm.ErrorCode.BAD_VERSION),
    ],
)
def test_bad_descriptor_is_refused_with_code_and_irq_and_moves_nothing(change, code):
    good = dict(
        src_addr=gaddr(0),
        length=64,
        peer=1,
        remote_addr=gaddr(512),
        window=0,
        tag=rm.encode_tag(1, 0, 0),
        flags=int(rm.DescFlag.IRQ),
    )
    good.update(change)
    desc = rm.Descriptor(**good)
    out = {}

    async def sender(dev):
        await setup_queues(dev, win_len=HW.gradient_words * 2 - 64)
        await dev.load(gaddr(0), np.arange(32))
        await dev.load(saddr(0), np.zeros(2048))  # let the receiver open its window first
        await post(dev, 1, 0, desc)
        out["status"] = await dev.wait_irq(int(rm.Irq.ERROR))
        out["err"] = await dev.read32(rm.offset("ERR_CODE"))
        out["ring"] = await dev.dump(rm.RING_MEM_BASE + HW.ring_entries * 32, 8)
        out["done"] = await dev.read32(rm.dma_reg(1, "DONE"))
        out["errors"] = await dev.read32(rm.dma_reg(1, "ERRORS"))

    async def receiver(dev):
        await setup_queues(dev)
        await dev.load(gaddr(0), np.full(1024, GUARD))
        await open_window(dev, 0, gaddr(512), gaddr(0), 256, rm.encode_tag(1, 0, 0), 64)

    cl = run_programs([sender, receiver])
    assert out["status"] & rm.Irq.ERROR
    assert rm.reg("ERR_CODE").field("code").get(out["err"]) == code
    assert rm.Descriptor.decode(out["ring"].tolist()).status == rm.descriptor_status(code)
    assert (out["done"], out["errors"]) == (1, 1)
    assert (cl.devices[1].grad[:1024] == GUARD).all()
    assert not intervals(cl.devices[0], rm.Engine.NIC_TX)
    ((start, end, _, aux),) = intervals(cl.devices[0], rm.Engine.DMA_LO)
    assert end - start == tm.refused_descriptor_cycles(HW) and aux == code


def test_high_priority_descriptor_overtakes_at_chunk_boundary():
    out = {}
    tag = rm.encode_tag(1, 0, 0)

    async def sender(dev):
        await setup_queues(dev)
        for slot in range(3):
            await dev.load(
                rm.RING_MEM_BASE + (HW.ring_entries + slot) * 32,
                np.array(
                    rm.Descriptor(
                        gaddr(slot * 512), 1024, 1, gaddr(4096 - 1024 + 0), 0, tag
                    ).encode()
                ),
            )
        await dev.write32(rm.dma_reg(1, "DOORBELL"), 3)
        # post the high-priority chunk while the first low-priority one is on the link
        await dev.load(gaddr(1024 * 3), np.zeros(8))
        out["hi_posted"] = dev.sim.now
        await post(dev, 0, 0, rm.Descriptor(gaddr(2048), 64, 1, gaddr(4096 - 1024), 0, tag))

    async def receiver(dev):
        await setup_queues(dev)
        await open_window(dev, 0, gaddr(4096 - 1024), gaddr(0), 1024, tag, 3 * 1024 + 64)

    cl = run_programs([sender, receiver])
    lo = intervals(cl.devices[0], rm.Engine.DMA_LO)
    (hi,) = intervals(cl.devices[0], rm.Engine.DMA_HI)
    assert lo[0][0] < out["hi_posted"] < lo[0][1]
    # the hi chunk starts exactly when the running lo chunk completes, ahead of lo chunks 2 and 3
    assert hi[0] == lo[0][1]
    assert lo[1][0] == hi[1]
    assert hi[0] - out["hi_posted"] <= tm.priority_wait_bound(1024, HW)


def test_fence_waits_for_compute_completion():
    async def prog(dev):
        await setup_queues(dev)
        await launch(dev, rm.Opcode.GEMM, saddr(0), saddr(0), saddr(2000), 16, 40, 16)
        await post(
            dev,
            1,
            0,
            rm.Descriptor(
                gaddr(0), 64, 1, gaddr(0), 0, 0, flags=int(rm.DescFlag.FENCE), fence_count=1
            ),
        )

    async def receiver(dev):
        await setup_queues(dev)
        await open_window(dev, 0, gaddr(0), gaddr(0), 64, 0, 64)

    cl = run_programs([prog, receiver])
    ((_, gemm_end, _, _),) = intervals(cl.devices[0], rm.Engine.COMPUTE)
    ((tx_start, _, _, _),) = intervals(cl.devices[0], rm.Engine.NIC_TX)
    ((d_start, _, _, _),) = intervals(cl.devices[0], rm.Engine.DMA_LO)
    assert d_start + tm.descriptor_fetch_cycles(HW) < gemm_end == tx_start
