"""The modelled NIC between two nodes: window and memory checks, reduce-add timing and saturation."""

from __future__ import annotations

import numpy as np
import pytest

from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm

from .conftest import (
    FMT,
    GUARD,
    HW,
    gaddr,
    intervals,
    open_window,
    post,
    run_programs,
    saddr,
    setup_queues,
)


@pytest.mark.parametrize(
    "window_change, code",
    [
        ({"ctrl": 0}, rm.ErrorCode.RX_NO_WINDOW),
        ({"tag": rm.encode_tag(2, 0, 0)}, rm.ErrorCode.RX_TAG_MISMATCH),
        ({"length": 32}, rm.ErrorCode.RX_OUT_OF_WINDOW),
    ],
)
def test_packet_outside_open_window_is_dropped_and_writes_nothing(window_change, code):
    desc = rm.Descriptor(
        src_addr=gaddr(0),
        length=64,
        peer=1,
        remote_addr=gaddr(512),
        window=3,
        tag=rm.encode_tag(1, 0, 0),
        flags=int(rm.DescFlag.REDUCE_ADD),
    )
    out = {}
    win = dict(ctrl=1, tag=rm.encode_tag(1, 0, 0), length=256)
    win.update(window_change)

    async def sender(dev):
        await setup_queues(dev)
        await dev.load(gaddr(0), np.arange(32))
        await dev.load(saddr(0), np.zeros(2048))  # let the receiver open its window first
        await post(dev, 0, 0, desc)

    async def receiver(dev):
        await setup_queues(dev)
        await dev.load(gaddr(0), np.full(1024, GUARD))
        for name, v in (
            ("DST", gaddr(512)),
            ("SRC", gaddr(0)),
            ("LEN", win["length"]),
            ("TAG", win["tag"]),
            ("CTRL", win["ctrl"]),
            ("EXPECT", 64),
        ):
            await dev.write32(rm.rx_window_reg(3, name), v)
        out["status"] = await dev.wait_irq(int(rm.Irq.ERROR | rm.Irq.RX))
        out["err"] = await dev.read32(rm.offset("ERR_CODE"))
        out["drops"] = await dev.read32(rm.offset("RX_DROPS"))

    cl = run_programs([sender, receiver])
    assert out["status"] == int(rm.Irq.ERROR)
    assert rm.reg("ERR_CODE").field("code").get(out["err"]) == code
    assert out["drops"] == 1
    assert (cl.devices[1].grad[:1024] == GUARD).all()


@pytest.mark.parametrize(
    "dst, src",
    [
        # the window (and the packet) lies outside both SRAMs
        (0x0800_0000, gaddr(0)),
        # the window straddles the gradient SRAM's end: the packet's last 32 bytes leave it
        (gaddr(HW.gradient_words - 16), gaddr(0)),
        # the reduce-add source lies outside both SRAMs
        (gaddr(512), rm.RING_MEM_BASE),
        # operand-aligned but not 32-bit aligned source: the receiver moves 32-bit words
        (gaddr(512), gaddr(1)),
    ],
    ids=["dst_outside_srams", "dst_straddles_grad_end", "src_outside_srams", "src_misaligned"],
)
def test_packet_outside_device_memory_is_refused_and_writes_nothing(dst, src):
    """Inside its window but not inside one SRAM (or not 32-bit aligned): RX_OUT_OF_WINDOW,
    ERR_INFO = tag, an ERROR record at the refusal, nothing written, nothing counted received."""
    tag = rm.encode_tag(1, 0, 0)
    desc = rm.Descriptor(
        src_addr=gaddr(0),
        length=64,
        peer=1,
        remote_addr=dst,
        window=3,
        tag=tag,
        flags=int(rm.DescFlag.REDUCE_ADD),
    )
    out = {}

    async def sender(dev):
        await setup_queues(dev)
        await dev.load(gaddr(0), np.arange(32))
        for _ in range(3):  # let the receiver fill its guards and open its window first
            await dev.load(saddr(0), np.zeros(HW.scratchpad_words))
        await post(dev, 0, 0, desc)

    async def receiver(dev):
        await setup_queues(dev)
        await dev.load(gaddr(0), np.full(HW.gradient_words, GUARD))
        await dev.load(saddr(0), np.full(HW.scratchpad_words, GUARD))
        await open_window(dev, 3, dst, src, 256, tag, 64)
        out["status"] = await dev.wait_irq(int(rm.Irq.ERROR | rm.Irq.RX))
        out["err"] = await dev.read32(rm.offset("ERR_CODE"))
        out["info"] = await dev.read32(rm.offset("ERR_INFO"))
        out["drops"] = await dev.read32(rm.offset("RX_DROPS"))
        out["received"] = await dev.read32(rm.rx_window_reg(3, "RECEIVED"))

    cl = run_programs([sender, receiver])
    err = rm.reg("ERR_CODE")
    assert out["status"] == int(rm.Irq.ERROR)
    assert err.field("code").get(out["err"]) == rm.ErrorCode.RX_OUT_OF_WINDOW
    assert err.field("engine").get(out["err"]) == rm.Engine.NIC_RX
    assert err.field("index").get(out["err"]) == 3
    assert (out["info"], out["drops"], out["received"]) == (tag, 1, 0)
    rx = cl.devices[1]
    assert (rx.grad == GUARD).all() and (rx.scratch == GUARD).all()
    end, error = [r for r in rx.trace if r.engine == rm.Engine.NIC_RX]
    assert (end.event, end.tag, end.aux) == (rm.TraceEvent.END, tag, 0)
    assert (error.event, error.cycle, error.tag, error.aux) == (
        rm.TraceEvent.ERROR,
        end.cycle,
        tag,
        rm.ErrorCode.RX_OUT_OF_WINDOW,
    )


def test_reduce_add_transfer_timing_and_saturation():
    n_words = 300  # 600 bytes: packets of 256, 256, 88
    local = np.full(n_words, 30000)
    local[::2] = -5
    remote = np.full(n_words, 10000)
    out = {}

    async def sender(dev):
        await setup_queues(dev)
        await dev.load(gaddr(0), remote)
        await dev.load(saddr(0), np.zeros(2048))  # let the receiver open its window first
        await post(
            dev,
            1,
            0,
            rm.Descriptor(
                gaddr(0),
                600,
                1,
                gaddr(1024),
                5,
                rm.encode_tag(2, 1, 0),
                flags=int(rm.DescFlag.REDUCE_ADD | rm.DescFlag.IRQ),
            ),
        )
        out["posted"] = dev.sim.now
        await dev.wait_irq(int(rm.Irq.DMA_Q1))

    async def receiver(dev):
        await setup_queues(dev)
        await dev.load(gaddr(0), local)
        await open_window(dev, 5, gaddr(1024), gaddr(0), 600, rm.encode_tag(2, 1, 0), 600)
        await dev.wait_irq(int(rm.Irq.RX))
        out["rx_done"] = await dev.read32(rm.offset("RX_DONE_LO"))
        out["received"] = await dev.read32(rm.rx_window_reg(5, "RECEIVED"))

    cl = run_programs([sender, receiver])
    want = np.clip(local + remote, FMT.qmin, FMT.qmax)
    assert np.array_equal(cl.devices[1].grad[1024 : 1024 + n_words], want)
    assert out["rx_done"] == 1 << 5 and out["received"] == 600
    ((d_start, d_end, _, _),) = intervals(cl.devices[0], rm.Engine.DMA_LO)
    assert d_start == out["posted"]
    assert d_end - d_start == tm.descriptor_cycles(600, HW)
    ((t_start, t_end, _, _),) = intervals(cl.devices[0], rm.Engine.NIC_TX)
    assert t_start == d_start + tm.descriptor_fetch_cycles(HW)
    assert t_end - t_start == (12 + 256 + 4) // 4 * 2 + -(-(12 + 88 + 4) // 4)
    rx = intervals(cl.devices[1], rm.Engine.NIC_RX)
    assert [r[3] for r in rx] == [256, 256, 88]
    # store-and-forward applier, in order: a packet is visible max(CRC arrival + 1, previous
    # packet visible) + 3 + payload words after; the first one when the receiver is idle
    t1 = t_start + 68
    assert rx[0][1] == t1 + tm.packet_arrival_offset(HW, 256) == t1 + 50 - 1 + 1 + 3 + 64
    crc = [t_start + 68 * 2 + 49, t_end + 49]
    assert rx[1][1] == max(crc[0] + 1, rx[0][1]) + 3 + 64
    assert rx[2][1] == max(crc[1] + 1, rx[1][1]) + 3 + 22
