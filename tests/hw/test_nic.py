# amaranth: UnusedElaboratable=no
"""NIC: reliable delivery under fault injection, window refusals; Amaranth simulator and Verilator."""

import re

import pytest

from gradsync.hw.nic import NicRx, NicTx, header0
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from tests.hw.comm_host import FMT, GB, HW, Host, run_sim, small_cluster


def test_corrupted_and_dropped_packets_are_resent_and_applied_once():
    """Every packet of a 1 KiB chunk is corrupted or dropped at first; it still arrives once.

    The link faults every packet for the first 600 cycles, then none: the
    receiver must reject the corrupted ones by CRC, the sender must resend
    (NAK or timeout), and the reduce-add must be applied exactly once (a
    second application would double the payload).
    """
    dut = small_cluster()

    async def bench(ctx):
        h = Host(ctx, dut)
        await h.load(0, GB, [((i + 1) & 0x7FFF) * 0x00010001 for i in range(256)])
        await h.load(1, GB + 0x400, [0x0003_0003] * 256)
        await h.window(1, 1, GB + 0x400, GB + 0x400, 1024, 0x55)
        ctx.set(dut.l0_corrupt_rate, 0xFFFF)
        ctx.set(dut.l0_drop_rate, 0x8000)
        await h.send(
            0,
            rm.Descriptor(
                src_addr=GB,
                length=1024,
                peer=1,
                remote_addr=GB + 0x400,
                window=1,
                tag=0x55,
                flags=rm.DescFlag.REDUCE_ADD,
            ),
        )
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
        for i, got in enumerate(await h.dump(1, GB + 0x400, 256)):
            v = ((i + 1) & 0x7FFF) + 3
            assert got == v * 0x00010001, f"word {i}: {got:#x}"
        assert await h.read(1, rm.rx_window_reg(1, "RECEIVED")) == 1024

    run_sim(dut, bench)


@pytest.mark.parametrize(
    "faults",
    [
        {"burst_rate": 0xFFFF, "burst_len": 9, "frame_rate": 0x8000},
        {"ack_drop_rate": 0xC000, "ack_corrupt_rate": 0xFFFF, "drop_rate": 0x4000},
        {"down_at": 0, "down_len": 500},
    ],
    ids=["burst+frame", "ack-sideband", "down"],
)
def test_sequence_numbers_wrap_under_every_fault_kind(faults):
    """Sequence numbers from 0xFFFE wrap inside one chunk; bursts anywhere, framing faults,
    a faulted acknowledge sideband (corrupted messages must be ignored: a flipped ``exp``
    or ``limit`` taken at face value would lose or overrun packets) and an outage are all
    recovered: each packet applied once, the data bit for bit."""
    dut = small_cluster(seq_start=0xFFFE)

    async def bench(ctx):
        h = Host(ctx, dut)
        await h.load(0, GB, [((i + 1) & 0x7FFF) * 0x00010001 for i in range(256)])
        await h.load(1, GB + 0x400, [0x0003_0003] * 256)
        await h.window(1, 1, GB + 0x400, GB + 0x400, 1024, 0x55)
        for name, value in faults.items():
            ctx.set(getattr(dut, f"l0_{name}"), value)
            ctx.set(getattr(dut, f"l1_{name}"), value)
        ctx.set(dut.l0_seed_load, 1)
        await ctx.tick()
        ctx.set(dut.l0_seed_load, 0)
        desc = rm.Descriptor(
            src_addr=GB, length=1024, peer=1, remote_addr=GB + 0x400, window=1, tag=0x55,
            flags=rm.DescFlag.REDUCE_ADD,
        )  # fmt: skip
        await h.send(0, desc)
        for _ in range(600):
            await ctx.tick()
        for name in faults:
            ctx.set(getattr(dut, f"l0_{name}"), 0)
            ctx.set(getattr(dut, f"l1_{name}"), 0)
        for _ in range(4000):
            await ctx.tick()
        assert ctx.get(dut.n1_rx_packets) == ctx.get(dut.n0_tx_packets) == 4
        assert ctx.get(dut.n0_tx_retransmits) > 0
        faulted = sum(ctx.get(getattr(dut, f"l0_{c}")) for c in
                      ("corrupted", "framed", "acks_corrupted", "down_cycles"))  # fmt: skip
        assert faulted > 0
        for i, got in enumerate(await h.dump(1, GB + 0x400, 256)):
            v = ((i + 1) & 0x7FFF) + 3
            assert got == v * 0x00010001, f"word {i}: {got:#x}"

    run_sim(dut, bench)


@pytest.mark.parametrize("kind", ["closed", "tag", "below", "above"])
def test_packet_outside_the_open_window_is_dropped_counted_and_writes_nothing(kind):
    dut = small_cluster()
    E = rm.ErrorCode
    code = {
        "closed": E.RX_NO_WINDOW,
        "tag": E.RX_TAG_MISMATCH,
        "below": E.RX_OUT_OF_WINDOW,
        "above": E.RX_OUT_OF_WINDOW,
    }[kind]

    async def bench(ctx):
        h = Host(ctx, dut)
        await h.load(0, GB, [0x1111_1111] * 64)
        await h.load(1, GB + 0x400, [0x0BAD_F00D + i for i in range(192)])
        # window 2 accepts [0x500, 0x600) with tag 0x77; the packet is 64 bytes
        await h.window(1, 2, GB + 0x500, GB + 0x500, 0x100, 0x77)
        remote = {"closed": 0x500, "tag": 0x500, "below": 0x4F0, "above": 0x5D0}[kind]
        window = 3 if kind == "closed" else 2
        tag = 0x78 if kind == "tag" else 0x77
        await h.write(1, rm.offset("IRQ_MASK"), int(rm.Irq.ERROR))
        await h.send(
            0,
            rm.Descriptor(
                src_addr=GB,
                length=64,
                peer=1,
                remote_addr=GB + remote,
                window=window,
                tag=tag,
                flags=rm.DescFlag.REDUCE_ADD,
            ),
        )
        for _ in range(300):
            await ctx.tick()
        assert await h.read(1, rm.offset("RX_DROPS")) == 1
        assert ctx.get(dut.n1_rx_packets) == 0
        err = await h.read(1, rm.offset("ERR_CODE"))
        assert err & 0xFF == code and (err >> 8) & 0xF == rm.Engine.NIC_RX
        assert (err >> 16) == window
        assert await h.read(1, rm.offset("ERR_INFO")) == tag
        assert ctx.get(dut.n1_irq) == 1
        assert await h.dump(1, GB + 0x400, 192) == [0x0BAD_F00D + i for i in range(192)], (
            "memory was written"
        )
        assert await h.read(1, rm.rx_window_reg(2, "RECEIVED")) == 0
        # the sender saw a normal completion: refusal is the receiver's business
        assert await h.read(0, rm.dma_reg(1, "ERRORS")) == 0

    run_sim(dut, bench)


@pytest.mark.parametrize(
    "kind",
    [
        "past_end",
        "straddles_end",
        "past_scratchpad",
        "straddles_scratchpad",
        "src_past_end",
        "src_misaligned",
    ],
)
def test_packet_outside_the_node_memory_is_refused_and_writes_nothing(kind):
    """Inside its window but not inside one of the node's SRAMs (2 KiB each here) or not 32-bit
    aligned: RX_OUT_OF_WINDOW, and not one word of memory written (the receiver used to wrap
    such addresses into the memory)."""
    dut = small_cluster()
    end = GB + HW.gradient_words * FMT.word_bytes
    scratch_end = rm.SCRATCH_BASE + HW.scratchpad_words * FMT.word_bytes
    dst, src = {
        "past_end": (end, GB),
        "straddles_end": (end - 0x20, GB),
        "past_scratchpad": (scratch_end, GB),
        "straddles_scratchpad": (scratch_end - 0x20, GB),
        "src_past_end": (GB + 0x400, end - 0x20),
        "src_misaligned": (GB + 0x400, GB + 2),
    }[kind]
    tag = 0x99

    async def bench(ctx):
        h = Host(ctx, dut)
        guard = [0x0BAD_0000 + i for i in range(512)]
        await h.load(0, GB, [0x0101_0101 * (i + 1) for i in range(16)])
        await h.load(1, GB, guard)
        await h.load(1, rm.SCRATCH_BASE, guard)
        await h.window(1, 1, dst, src, 0x100, tag)
        await h.write(1, rm.offset("IRQ_MASK"), int(rm.Irq.ERROR | rm.Irq.RX))
        await h.send(
            0,
            rm.Descriptor(
                src_addr=GB,
                length=64,
                peer=1,
                remote_addr=dst,
                window=1,
                tag=tag,
                flags=rm.DescFlag.REDUCE_ADD,
            ),
        )
        for _ in range(300):
            await ctx.tick()
        assert ctx.get(dut.n1_rx_packets) == 0
        assert await h.read(1, rm.offset("RX_DROPS")) == 1
        err = await h.read(1, rm.offset("ERR_CODE"))
        assert (err & 0xFF, (err >> 8) & 0xF, err >> 16) == (
            rm.ErrorCode.RX_OUT_OF_WINDOW,
            rm.Engine.NIC_RX,
            1,
        )
        assert await h.read(1, rm.offset("ERR_INFO")) == tag
        assert await h.read(1, rm.offset("IRQ_STATUS")) == int(rm.Irq.ERROR)
        assert await h.read(1, rm.rx_window_reg(1, "RECEIVED")) == 0
        for base in (GB, rm.SCRATCH_BASE):
            got = await h.dump(1, base, 512)
            assert got == guard, (
                f"word {next(i for i, g in enumerate(got) if g != guard[i])} "
                f"of the SRAM at {base:#x} was written"
            )

    run_sim(dut, bench)


def test_credits_throttle_the_sender_without_losing_data():
    """One credit: the sender waits for each packet to be applied; data still complete."""
    dut = small_cluster(credits=1)

    async def bench(ctx):
        h = Host(ctx, dut)
        await h.load(0, GB, list(range(256)))
        await h.window(1, 0, GB + 0x400, GB + 0x400, 1024, 9)
        await h.send(
            0,
            rm.Descriptor(
                src_addr=GB, length=1024, peer=1, remote_addr=GB + 0x400, window=0, tag=9
            ),
        )
        for _ in range(1500):
            await ctx.tick()
        assert await h.read(0, rm.dma_reg(1, "DONE")) == 1
        assert await h.dump(1, GB + 0x400, 256) == list(range(256))
        # with one credit each packet waits for the previous one's apply and credit return
        # (two link latencies and the apply), so the chunk takes longer than back to back
        recs = [r for r in await h.trace(0) if r.engine == rm.Engine.DMA_LO]
        assert [r.event for r in recs] == [rm.TraceEvent.START, rm.TraceEvent.END]
        assert recs[1].cycle - recs[0].cycle >= tm.descriptor_cycles(1024, HW) + 3 * (2 * 6 + 64)

    run_sim(dut, bench)


def test_header_word_layout():
    assert header0(window=5, reduce=True, payload_words=64, seq=0x1234) == (
        5 | 1 << 8 | 63 << 9 | 0x1234 << 16
    )


_REGIONS = (
    "regions must be (base, bytes) pairs with 4-byte aligned bases, at least 4 bytes, "
    "inside the 32-bit address space, not "
)


@pytest.mark.parametrize(
    "cls,bad,match",
    [
        (NicTx, {"max_payload_words": 0}, "max_payload_words must be in 1..128, not 0"),
        (NicTx, {"window_packets": 12}, "window_packets must be a power of 2 in 1..16384, not 12"),
        (NicTx, {"seq_start": 70000}, "seq_start must be in 0..65535, not 70000"),
        (NicTx, {"credits": 0}, "credits must be in 1..32767, not 0"),
        (NicTx, {"timeout_cycles": 0}, "timeout_cycles must be >= 1, not 0"),
        (NicRx, {"windows": 65}, "windows must be in 1..64, not 65"),
        (NicRx, {"operand_bits": 12}, "operand_bits must be 8, 16 or 32, not 12"),
        (NicRx, {"max_payload_words": 200}, "max_payload_words must be in 1..128, not 200"),
        (NicRx, {"regions": ()}, _REGIONS + "()"),
        (
            NicRx,
            {"regions": ((rm.GRAD_BASE + 2, 1024),)},
            _REGIONS + repr(((rm.GRAD_BASE + 2, 1024),)),
        ),
        (NicRx, {"regions": ((0xFFFF_F000, 0x2000),)}, _REGIONS + repr(((0xFFFF_F000, 0x2000),))),
    ],
)
def test_nic_rejects_bad_parameters(cls, bad, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        cls(**bad)


@pytest.mark.rtl
def test_allreduce_with_link_faults_two_nodes(tmp_path):
    """5 % corrupted + 5 % dropped packets on both links and random stalls, under Verilator."""
    from tests.hw.comm_builds import run

    run(2, "allreduce_with_faults", tmp_path, seed=9, words=2048, repeats=8)


@pytest.mark.rtl
def test_allreduce_with_link_faults_and_bus_pauses(tmp_path):
    """Link faults and random pauses on every host bus channel at once: data still exact."""
    from tests.hw.comm_builds import run

    run(2, "allreduce_with_faults", tmp_path, seed=10, words=2048, repeats=8, pauses=True)


@pytest.mark.rtl
@pytest.mark.slow
def test_allreduce_with_link_faults_four_node_ring(tmp_path):
    from tests.hw.comm_builds import run

    run(4, "allreduce_with_faults", tmp_path, seed=11, words=2048, repeats=8)


@pytest.mark.parametrize("chk_ok", [True, False])
def test_acknowledgement_with_a_bad_check_byte_is_ignored(chk_ok):
    """A message corrupted on the sideband fails ``spec.faults.ack_check`` and counts for
    nothing: the packet stays unacknowledged and times out.  A good one acknowledges it."""
    from amaranth.sim import Simulator

    from gradsync.spec.faults import ack_check

    tx = NicTx(max_payload_words=4, window_packets=4, credits=4, timeout_cycles=40)
    out = {}

    async def bench(ctx):
        ctx.set(tx.link.ready, 1)
        words = [header0(1, 0, 1), 0x55, 0x100, 0x1234]
        for i, w in enumerate(words):
            ctx.set(tx.pkt.valid, 1)
            ctx.set(tx.pkt.p.data, w)
            ctx.set(tx.pkt.p.last, i == len(words) - 1)
            await ctx.tick()
        ctx.set(tx.pkt.valid, 0)
        for _ in range(5):
            await ctx.tick()
        chk = ack_check(1, 5, 0) ^ (0 if chk_ok else 0x10)
        ctx.set(tx.ack.valid, 1)
        ctx.set(tx.ack.p.as_value(), 1 | 5 << 16 | chk << 33)
        await ctx.tick()
        ctx.set(tx.ack.valid, 0)
        for _ in range(100):
            await ctx.tick()
        out.update(timeouts=ctx.get(tx.timeouts), resent=ctx.get(tx.retransmits))

    sim = Simulator(tx)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    if chk_ok:
        assert out == {"timeouts": 0, "resent": 0}
    else:
        assert out["timeouts"] >= 1 and out["resent"] >= 1
