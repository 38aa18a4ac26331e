# amaranth: UnusedElaboratable=no
"""DMA engine: regmap agreement, parameter checks, and under Verilator against the golden model."""

import re

import pytest

from gradsync.hw import dma, nic
from gradsync.spec import link as lk
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from tests.hw.comm_builds import HW


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


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"queues": 1}, "queues must be >= 2, not 1"),
        ({"ring_words": 1000}, "ring_words must be a power of 2 >= 8, not 1000"),
        ({"max_payload_bytes": 6}, "max_payload_bytes must be a multiple of 4 in 4..512, not 6"),
        ({"src_regions": ()}, "src_regions must name at least one region, not ()"),
        ({"ring_base_addr": 0x3000_0004}, "ring_base_addr 0x30000004 must be aligned"),
        ({"host_lanes": 3}, "host_lanes must be 1 or 2, not 3"),
        ({"link_bytes_per_cycle": 3}, "link_bytes_per_cycle must be 1, 2 or 4, not 3"),
    ],
)
def test_engine_rejects_bad_parameters(bad, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        dma.DmaEngine(**bad)


@pytest.mark.rtl
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dma_random_descriptors_match_model(seed, tmp_path):
    """Both queues of both nodes, random doorbell times: bytes, guards, statuses and cycles."""
    from tests.hw.comm_builds import run

    run(2, "dma_random_descriptors", tmp_path, seed=seed, descriptors=16)


@pytest.mark.rtl
@pytest.mark.parametrize("seed", [1, 2])
def test_dma_random_descriptors_with_bus_pauses_match_model(seed, tmp_path):
    """As above with random idle cycles on the host's AXI4-Lite AW/W/AR channels and bulk load
    stream: registers are written in other cycles, and memories, statuses, registers and every
    trace record (cycles included) still equal the model's, which replays those cycles."""
    from tests.hw.comm_builds import run

    run(2, "dma_random_descriptors", tmp_path, seed=seed, descriptors=16, pauses=True)


@pytest.mark.rtl
@pytest.mark.parametrize("seed,pauses", [(1, False), (5, False), (3, True)])
def test_dma_high_priority_overtakes_within_model_bound(seed, pauses, tmp_path):
    from tests.hw.comm_builds import run

    run(2, "priority_overtake", tmp_path, seed=seed, pauses=pauses)


@pytest.mark.rtl
def test_dma_descriptor_fuzz_500(tmp_path):
    """500 random valid/invalid descriptors, error code and memory checked for each."""
    from tests.hw.comm_builds import run

    run(2, "descriptor_fuzz", tmp_path, seed=11, descriptors=500)


@pytest.mark.rtl
def test_dma_descriptor_fuzz_with_bus_pauses(tmp_path):
    from tests.hw.comm_builds import run

    run(2, "descriptor_fuzz", tmp_path, seed=13, descriptors=200, pauses=True)


def test_fence_holds_the_chunk_until_compute_done_reaches_its_count():
    """FENCE: nothing leaves before COMPUTE_DONE >= FENCE_COUNT; the first word leaves then."""
    from tests.hw.comm_host import GB, HW, Host, run_sim, small_cluster

    dut = small_cluster()

    async def bench(ctx):
        h = Host(ctx, dut)
        await h.window(1, 0, GB + 0x400, GB + 0x400, 256, 5)
        await h.send(
            0,
            rm.Descriptor(
                src_addr=GB,
                length=256,
                peer=1,
                remote_addr=GB + 0x400,
                window=0,
                tag=5,
                flags=rm.DescFlag.FENCE,
                fence_count=3,
            ),
        )
        ctx.set(dut.n0_compute_done, 2)
        for _ in range(400):
            await ctx.tick()
        assert ctx.get(dut.n0_tx_packets) == 0
        assert await h.read(0, rm.dma_reg(1, "DONE")) == 0
        assert await h.read(0, rm.offset("COMPUTE_DONE")) == 2
        ctx.set(dut.n0_compute_done, 3)
        released = ctx.get(dut.n0_cycle)
        for _ in range(200):
            await ctx.tick()
        assert await h.read(0, rm.dma_reg(1, "DONE")) == 1
        recs = await h.trace(0)
        tx = {r.event: r.cycle for r in recs if r.engine == rm.Engine.NIC_TX}
        dma_ = {r.event: r.cycle for r in recs if r.engine == rm.Engine.DMA_LO}
        assert tx[rm.TraceEvent.START] == released
        assert tx[rm.TraceEvent.END] - tx[rm.TraceEvent.START] == lk.chunk_tx_cycles(256, HW.link)
        assert dma_[rm.TraceEvent.END] == tx[rm.TraceEvent.END] + 1

    run_sim(dut, bench)


def test_refused_descriptor_with_irq_flag_raises_queue_and_error_irqs_like_the_model():
    from gradsync.model.cluster import Cluster
    from tests.hw.comm_host import FMT, GB, HW, Host, run_sim, small_cluster

    bad = rm.Descriptor(
        src_addr=GB,
        length=0,
        peer=1,
        remote_addr=GB + 0x400,
        window=0,
        tag=5,
        flags=rm.DescFlag.IRQ,
    )
    want = int(rm.Irq.DMA_Q1 | rm.Irq.ERROR)

    # the golden model
    cl = Cluster(2, HW, FMT)
    dev = cl.devices[0]
    for name, value in (
        ("RING_BASE", rm.RING_MEM_BASE + 0x100),
        ("RING_SIZE", 8),
        ("WIN_BASE", GB),
        ("WIN_LEN", 0x800),
    ):
        dev.mmio_write(rm.dma_reg(1, name), value)
    dev.ring[0x40:0x48] = bad.encode()
    dev.mmio_write(rm.dma_reg(1, "DOORBELL"), 1)
    cl.sim.run()
    assert dev.irq_status & want == want

    dut = small_cluster()

    async def bench(ctx):
        h = Host(ctx, dut)
        await h.send(0, bad)
        for _ in range(40):
            await ctx.tick()
        assert await h.read(0, rm.offset("IRQ_STATUS")) & want == want
        assert await h.read(0, rm.dma_reg(1, "ERRORS")) == 1
        err = await h.read(0, rm.offset("ERR_CODE"))
        assert err == dev.mmio_read(rm.offset("ERR_CODE")), hex(err)

    run_sim(dut, bench)


def test_each_doorbell_mistake_reports_the_models_code_register_and_value():
    """Every doorbell mistake of ``tests/model/test_device_errors.py`` on the RTL: the hand-
    written code and value, ERR_CODE/ERR_INFO/ERR_COUNT/TAIL and the ERROR records as the model."""
    from gradsync.model.cluster import Cluster
    from tests.hw.comm_host import FMT, HW, Host, run_sim, small_cluster
    from tests.model.test_device_errors import doorbell_mistakes

    cases = doorbell_mistakes(HW.ring_entries)
    regs = ("ERR_CODE", "ERR_INFO", "ERR_COUNT")
    model = Cluster(2, HW, FMT).devices[0]
    want = []
    for i, (_, base, size, value, _, _) in enumerate(cases):
        q = i % 2
        for name, v in (("RING_BASE", base), ("RING_SIZE", size), ("DOORBELL", value)):
            model.mmio_write(rm.dma_reg(q, name), v)
        want.append([model.mmio_read(rm.offset(n)) for n in regs])
        want[-1].append(model.mmio_read(rm.dma_reg(q, "TAIL")))
    code_reg = rm.reg("ERR_CODE")
    for i, (name, _, _, _, code, info) in enumerate(cases):  # the model against the table
        packed = code_reg.pack(code=code, engine=rm.Engine.DMA_HI + i % 2, index=i % 2)
        assert want[i] == [packed, info, i + 1, 0], name
    got = []
    dut = small_cluster()

    async def bench(ctx):
        h = Host(ctx, dut)
        for i, (_, base, size, value, _, _) in enumerate(cases):
            q = i % 2
            for name, v in (("RING_BASE", base), ("RING_SIZE", size), ("DOORBELL", value)):
                await h.write(0, rm.dma_reg(q, name), v)
            got.append([await h.read(0, rm.offset(n)) for n in regs])
            got[-1].append(await h.read(0, rm.dma_reg(q, "TAIL")))
        records = await h.trace(0)
        got.append([(r.engine, r.event, r.kind, r.tag, r.aux) for r in records])

    run_sim(dut, bench)
    want.append([(r.engine, r.event, r.kind, r.tag, r.aux) for r in model.trace])
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"{cases[i][0] if i < len(cases) else 'trace'}: RTL {g} != model {w}"
