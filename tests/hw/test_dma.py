# amaranth: UnusedElaboratable=no
"""DMA engine: regmap agreement, parameter checks, and under Verilator against the golden model."""

import pytest

from gradsync.hw import dma, nic
from gradsync.spec import link as lk
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.hardware import HardwareConfig
from tests.hw.fabric_builds import HW


def test_engine_layouts_match_the_register_map():
    """Layouts the engines encode structurally (not by importing a constant) agree with the regmap."""
    assert dma.DESCRIPTOR_WORDS == rm.DESCRIPTOR_WORDS == tm.DESCRIPTOR_WORDS
    assert rm.DMA_ALIGN_BYTES == 4
    # RX window register order of nic.WIN_* is the regmap's
    names = ["CTRL", "DST", "SRC", "LEN", "TAG", "EXPECT", "RECEIVED"]
    for idx, name in enumerate(names):
        assert rm.rx_window_reg(0, name) - rm.RX_WINDOW_BASE == 4 * idx
    # packet framing is the model's header + CRC
    assert HW.packet_header_bytes == nic.HEADER_WORDS * 4 and HW.packet_crc_bytes == 4


@pytest.mark.parametrize("bad", [
    {"queues": 1}, {"ring_words": 1000}, {"max_payload_bytes": 6}, {"src_regions": ()},
    {"ring_base_addr": 0x3000_0004},
])
def test_engine_rejects_bad_parameters(bad):
    with pytest.raises(ValueError, match="not"):
        dma.DmaEngine(**bad)


@pytest.mark.rtl
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dma_random_descriptors_match_model(seed, tmp_path):
    """Both queues of both nodes, random doorbell times: bytes, guards, statuses and cycles."""
    from tests.hw.fabric_builds import run

    run(2, "dma_random_descriptors", tmp_path, seed=seed, descriptors=16)


@pytest.mark.rtl
@pytest.mark.parametrize("seed", [1, 5])
def test_dma_high_priority_overtakes_within_model_bound(seed, tmp_path):
    from tests.hw.fabric_builds import run

    run(2, "priority_overtake", tmp_path, seed=seed)


@pytest.mark.rtl
def test_dma_descriptor_fuzz_500(tmp_path):
    """500 random valid/invalid descriptors, error code and memory checked for each."""
    from tests.hw.fabric_builds import run

    run(2, "descriptor_fuzz", tmp_path, seed=11, descriptors=500)


def test_fence_holds_the_chunk_until_compute_done_reaches_its_count():
    """FENCE: nothing leaves before COMPUTE_DONE >= FENCE_COUNT; the first word leaves then."""
    from tests.hw.comm_host import GB, Host, run_sim, small_fabric

    dut = small_fabric()

    async def bench(ctx):
        h = Host(ctx, dut)
        await h.window(1, 0, GB + 0x400, GB + 0x400, 256, 5)
        await h.send(0, rm.Descriptor(src_addr=GB, length=256, peer=1, remote_addr=GB + 0x400,
                                      window=0, tag=5, flags=rm.DescFlag.FENCE, fence_count=3))
        ctx.set(dut.n0_compute_done, 2)
        for _ in range(400):
            await ctx.tick()
        assert ctx.get(dut.n0_tx_packets) == 0
        assert await h.read(0, rm.dma_reg(1, "DONE"), 1) == 0
        released = await h.read(0, rm.offset("CYCLE_LO"), 1) + 1
        ctx.set(dut.n0_compute_done, 3)
        for _ in range(200):
            await ctx.tick()
        assert await h.read(0, rm.dma_reg(1, "DONE"), 1) == 1
        recs = [rm.TraceRecord.decode([await h.read(0, rm.TRACE_MEM_BASE + 16 * r + 4 * k, 0)
                                       for k in range(4)]) for r in range(4)]
        tx = {r.event: r.cycle for r in recs if r.engine == rm.Engine.NIC_TX}
        dma_ = {r.event: r.cycle for r in recs if r.engine == rm.Engine.DMA_LO}
        assert tx[rm.TraceEvent.START] == released
        hw = HardwareConfig(link_latency_cycles=6)
        assert tx[rm.TraceEvent.END] - tx[rm.TraceEvent.START] == lk.chunk_tx_cycles(256, hw.link)
        assert dma_[rm.TraceEvent.END] == tx[rm.TraceEvent.END] + 1

    run_sim(dut, bench)


def test_refused_descriptor_with_irq_flag_raises_queue_and_error_irqs_like_the_model():
    from gradsync.model.cluster import Cluster
    from gradsync.spec.formats import FixedPointFormat
    from tests.hw.comm_host import GB, Host, run_sim, small_fabric

    bad = rm.Descriptor(src_addr=GB, length=0, peer=1, remote_addr=GB + 0x400, window=0, tag=5,
                        flags=rm.DescFlag.IRQ)
    want = int(rm.Irq.DMA_Q1 | rm.Irq.ERROR)

    # the golden model
    cl = Cluster(2, HardwareConfig(gradient_words=1024, ring_entries=8, rx_windows=4),
                 FixedPointFormat())
    dev = cl.devices[0]
    for name, value in (("RING_BASE", rm.RING_MEM_BASE + 0x100), ("RING_SIZE", 8),
                        ("WIN_BASE", GB), ("WIN_LEN", 0x800)):
        dev.mmio_write(rm.dma_reg(1, name), value)
    dev.ring[0x40:0x48] = bad.encode()
    dev.mmio_write(rm.dma_reg(1, "DOORBELL"), 1)
    cl.sim.run()
    assert dev.irq_status & want == want

    dut = small_fabric()

    async def bench(ctx):
        h = Host(ctx, dut)
        await h.send(0, bad)
        for _ in range(40):
            await ctx.tick()
        assert await h.read(0, rm.offset("IRQ_STATUS"), 1) & want == want
        assert await h.read(0, rm.dma_reg(1, "ERRORS"), 1) == 1

    run_sim(dut, bench)
