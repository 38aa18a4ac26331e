# amaranth: UnusedElaboratable=no
"""NIC: reliable delivery under fault injection, window refusals; Amaranth simulator and Verilator."""

import pytest

from gradsync.hw.fabric import Fabric
from gradsync.hw.nic import NicRx, NicTx, header0
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.hardware import HardwareConfig
from tests.hw.comm_host import GB, Host, run_sim, small_fabric


def test_corrupted_and_dropped_packets_are_resent_and_applied_once():
    """Every packet of a 1 KiB chunk is corrupted or dropped at first; it still arrives once.

    The link faults every packet for the first 600 cycles, then none: the
    receiver must reject the corrupted ones by CRC, the sender must resend
    (NAK or timeout), and the reduce-add must be applied exactly once (a
    second application would double the payload).
    """
    dut = small_fabric()

    async def bench(ctx):
        h = Host(ctx, dut)
        for i in range(256):
            await h.write(0, GB + 4 * i, ((i + 1) & 0x7FFF) * 0x00010001, 0)
            await h.write(1, GB + 0x400 + 4 * i, 0x0003_0003, 0)
        await h.window(1, 1, GB + 0x400, GB + 0x400, 1024, 0x55)
        ctx.set(dut.l0_corrupt_rate, 0xFFFF)
        ctx.set(dut.l0_drop_rate, 0x8000)
        await h.send(0, rm.Descriptor(src_addr=GB, length=1024, peer=1, remote_addr=GB + 0x400,
                                      window=1, tag=0x55, flags=rm.DescFlag.REDUCE_ADD))
        for _ in range(600):
            await ctx.tick()
        assert ctx.get(dut.n1_rx_packets) == 0, "a corrupted packet was applied"
        assert ctx.get(dut.n1_rx_crc_errors) > 0 and ctx.get(dut.l0_dropped) > 0
        ctx.set(dut.l0_corrupt_rate, 0)
        ctx.set(dut.l0_drop_rate, 0)
        for _ in range(3000):
            await ctx.tick()
        assert ctx.get(dut.n1_rx_packets) == ctx.get(dut.n0_tx_packets) == 4
        assert ctx.get(dut.n0_tx_retransmits) > 0
        for i in range(256):
            got = await h.read(1, GB + 0x400 + 4 * i, 0)
            v = ((i + 1) & 0x7FFF) + 3
            assert got == v * 0x00010001, f"word {i}: {got:#x}"
        assert await h.read(1, rm.rx_window_reg(1, "RECEIVED"), 1) == 1024

    run_sim(dut, bench)


@pytest.mark.parametrize("kind", ["closed", "tag", "below", "above"])
def test_packet_outside_the_open_window_is_dropped_counted_and_writes_nothing(kind):
    dut = small_fabric()
    E = rm.ErrorCode
    code = {"closed": E.RX_NO_WINDOW, "tag": E.RX_TAG_MISMATCH, "below": E.RX_OUT_OF_WINDOW,
            "above": E.RX_OUT_OF_WINDOW}[kind]

    async def bench(ctx):
        h = Host(ctx, dut)
        for i in range(64):
            await h.write(0, GB + 4 * i, 0x1111_1111, 0)
        for i in range(192):
            await h.write(1, GB + 0x400 + 4 * i, 0x0BAD_F00D + i, 0)
        # window 2 accepts [0x500, 0x600) with tag 0x77; the packet is 64 bytes
        await h.window(1, 2, GB + 0x500, GB + 0x500, 0x100, 0x77)
        remote = {"closed": 0x500, "tag": 0x500, "below": 0x4F0, "above": 0x5D0}[kind]
        window = 3 if kind == "closed" else 2
        tag = 0x78 if kind == "tag" else 0x77
        await h.write(1, rm.offset("IRQ_MASK"), int(rm.Irq.ERROR), 1)
        await h.send(0, rm.Descriptor(src_addr=GB, length=64, peer=1, remote_addr=GB + remote,
                                      window=window, tag=tag, flags=rm.DescFlag.REDUCE_ADD))
        for _ in range(300):
            await ctx.tick()
        assert await h.read(1, rm.offset("RX_DROPS"), 1) == 1
        assert ctx.get(dut.n1_rx_packets) == 0
        err = await h.read(1, rm.offset("ERR_CODE"), 1)
        assert err & 0xFF == code and (err >> 8) & 0xF == rm.Engine.NIC_RX
        assert (err >> 16) == window
        assert await h.read(1, rm.offset("ERR_INFO"), 1) == tag
        assert ctx.get(dut.n1_irq) == 1
        for i in range(192):
            assert await h.read(1, GB + 0x400 + 4 * i, 0) == 0x0BAD_F00D + i, "memory was written"
        assert await h.read(1, rm.rx_window_reg(2, "RECEIVED"), 1) == 0
        # the sender saw a normal completion: refusal is the receiver's business
        assert await h.read(0, rm.dma_reg(1, "ERRORS"), 1) == 0

    run_sim(dut, bench)


@pytest.mark.parametrize("kind", ["past_end", "straddles_end", "scratchpad", "src_past_end",
                                  "src_misaligned"])
def test_packet_outside_the_gradient_memory_is_refused_and_writes_nothing(kind):
    """Inside its window but not inside the node's memory (``CommNode``: the gradient SRAM only,
    2 KiB here) or not 32-bit aligned: RX_OUT_OF_WINDOW, and not one word of memory written
    (the receiver used to wrap such addresses into the memory)."""
    dut = small_fabric()
    end = GB + 0x800
    dst, src = {"past_end": (end, GB), "straddles_end": (end - 0x20, GB),
                "scratchpad": (rm.SCRATCH_BASE, GB), "src_past_end": (GB + 0x400, end - 0x20),
                "src_misaligned": (GB + 0x400, GB + 2)}[kind]
    tag = 0x99

    async def bench(ctx):
        h = Host(ctx, dut)
        for i in range(16):
            await h.write(0, GB + 4 * i, 0x0101_0101 * (i + 1), 0)
        for i in range(512):
            await h.write(1, GB + 4 * i, 0x0BAD_0000 + i, 0)
        await h.window(1, 1, dst, src, 0x100, tag)
        await h.write(1, rm.offset("IRQ_MASK"), int(rm.Irq.ERROR | rm.Irq.RX), 1)
        await h.send(0, rm.Descriptor(src_addr=GB, length=64, peer=1, remote_addr=dst,
                                      window=1, tag=tag, flags=rm.DescFlag.REDUCE_ADD))
        for _ in range(300):
            await ctx.tick()
        assert ctx.get(dut.n1_rx_packets) == 0
        assert await h.read(1, rm.offset("RX_DROPS"), 1) == 1
        err = await h.read(1, rm.offset("ERR_CODE"), 1)
        assert (err & 0xFF, (err >> 8) & 0xF, err >> 16) == (
            rm.ErrorCode.RX_OUT_OF_WINDOW, rm.Engine.NIC_RX, 1)
        assert await h.read(1, rm.offset("ERR_INFO"), 1) == tag
        assert await h.read(1, rm.offset("IRQ_STATUS"), 1) == int(rm.Irq.ERROR)
        assert await h.read(1, rm.rx_window_reg(1, "RECEIVED"), 1) == 0
        for i in range(512):
            assert await h.read(1, GB + 4 * i, 0) == 0x0BAD_0000 + i, f"word {i} was written"

    run_sim(dut, bench)


def test_credits_throttle_the_sender_without_losing_data():
    """One credit: the sender waits for each packet to be applied; data still complete."""
    dut = Fabric(rm, num_nodes=2, link_latency_cycles=6, rx_windows=4, gradient_words=1024,
                 ring_entries=8, credits=1)

    async def bench(ctx):
        h = Host(ctx, dut)
        for i in range(256):
            await h.write(0, GB + 4 * i, i, 0)
        await h.window(1, 0, GB + 0x400, GB + 0x400, 1024, 9)
        await h.send(0, rm.Descriptor(src_addr=GB, length=1024, peer=1, remote_addr=GB + 0x400,
                                      window=0, tag=9))
        for _ in range(1500):
            await ctx.tick()
        assert await h.read(0, rm.dma_reg(1, "DONE"), 1) == 1
        for i in range(256):
            assert await h.read(1, GB + 0x400 + 4 * i, 0) == i
        # with one credit each packet waits for the previous one's apply and credit return
        # (two link latencies and the apply), so the chunk takes longer than back to back
        recs = [rm.TraceRecord.decode([await h.read(0, rm.TRACE_MEM_BASE + 16 * r + 4 * k, 0)
                                       for k in range(4)]) for r in range(4)]
        recs = [r for r in recs if r.engine == rm.Engine.DMA_LO]
        assert [r.event for r in recs] == [rm.TraceEvent.START, rm.TraceEvent.END]
        hw = HardwareConfig(link_latency_cycles=6)
        assert recs[1].cycle - recs[0].cycle >= tm.descriptor_cycles(1024, hw) + 3 * (2 * 6 + 64)

    run_sim(dut, bench)


def test_header_word_layout():
    assert header0(window=5, reduce=True, payload_words=64, seq=0x1234) == (
        5 | 1 << 8 | 63 << 9 | 0x1234 << 16)


@pytest.mark.parametrize("cls,bad", [
    (NicTx, {"max_payload_words": 0}), (NicTx, {"window_packets": 12}), (NicTx, {"credits": 0}),
    (NicRx, {"windows": 65}), (NicRx, {"operand_bits": 12}), (NicRx, {"max_payload_words": 200}),
    (NicRx, {"regions": ()}), (NicRx, {"regions": ((rm.GRAD_BASE + 2, 1024),)}),
    (NicRx, {"regions": ((0xFFFF_F000, 0x2000),)}),
])
def test_nic_rejects_bad_parameters(cls, bad):
    with pytest.raises(ValueError, match="not"):
        cls(**bad)


@pytest.mark.rtl
def test_allreduce_with_link_faults_two_nodes(tmp_path):
    """5 % corrupted + 5 % dropped packets on both links and random stalls, under Verilator."""
    from tests.hw.fabric_builds import run

    run(2, "allreduce_with_faults", tmp_path, seed=9, words=2048, repeats=8)


@pytest.mark.rtl
@pytest.mark.slow
def test_allreduce_with_link_faults_four_node_ring(tmp_path):
    from tests.hw.fabric_builds import run

    run(4, "allreduce_with_faults", tmp_path, seed=11, words=2048, repeats=8)
