# amaranth: UnusedElaboratable=no
"""Links of 8 bytes/cycle (issue 14, item 3): the 64-bit link beat and its fault process.

A width-8 link (``hw.link.Link(..., width_bytes=8)``) carries a beat of two words per cycle
at 8 bytes/cycle and one word per beat at 1, 2 and 4; its faults must equal
``gradsync.spec.faults.LinkReference`` cycle by cycle (``spec.faults``, "Beats of two words").
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from gradsync.hw.link import Link
from gradsync.hw.packet import header0
from gradsync.spec.faults import LinkReference, packet_words
from tests.hw.test_link import _against_reference as link_against_reference


def _beats(rng, packets: int, two_words: bool, max_payload: int = 12):
    """Random packets with a valid H0, as beats (data, last, data1 or None): two words per
    beat when ``two_words`` (the last beat holds one if the packet's word count is odd)."""
    out = []
    for _ in range(packets):
        pw = int(rng.integers(1, max_payload + 1))
        words = [header0(1, 0, pw, int(rng.integers(0, 1 << 16)))]
        words += [int(x) for x in rng.integers(0, 1 << 32, size=2 + pw + 1, dtype=np.uint64)]
        assert len(words) == packet_words(words[0])
        step = 2 if two_words else 1
        for i in range(0, len(words), step):
            part = words[i : i + step]
            last = i + step >= len(words)
            out.append((part[0], int(last), part[1] if len(part) == 2 else None))
    return out


def _against_reference(controls: dict, *, latency: int, bpc: int, packets=100, seed=1):
    """The width-8 Amaranth Link and LinkReference on the same random beats (two words a
    beat at 8 bytes/cycle), as ``tests/hw/test_link.py``'s check of the width-4 link."""
    beats = _beats(np.random.default_rng(seed), packets, two_words=bpc == 8)
    cycles = len(beats) * (4 // max(1, bpc // 2) + 2) + 300
    return link_against_reference(
        controls, latency=latency, bpc=bpc, seed=seed + 1, cycles=cycles, width_bytes=8,
        beats=beats,
    )  # fmt: skip


#: One configuration per fault kind (rates per 65536) and the counters it must move.
KINDS = {
    "drop+corrupt": ({"drop_rate": 9000, "corrupt_rate": 30000}, ("dropped", "corrupted")),
    "stall": ({"stall_rate": 3000, "stall_max": 20}, ("stalls",)),
    "burst": ({"burst_rate": 30000, "burst_len": 13}, ("corrupted",)),
    "frame": ({"frame_rate": 20000}, ("framed",)),
    "down-random": ({"down_rate": 200, "down_mean": 40}, ("downs", "down_cycles")),
    "all": (
        {"drop_rate": 3000, "corrupt_rate": 3000, "stall_rate": 1000, "stall_max": 9,
         "burst_rate": 4000, "burst_len": 5, "frame_rate": 3000, "ack_drop_rate": 4000,
         "ack_corrupt_rate": 4000, "down_rate": 100, "down_mean": 20},
        ("dropped", "corrupted", "stalls", "framed", "acks_dropped", "downs"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("latency, bpc", [(3, 8), (0, 8), (2, 4), (1, 1)])
def test_width8_link_injects_exactly_the_reference_faults(kind, latency, bpc):
    """Cycle by cycle the 64-bit link equals LinkReference at 8 bytes/cycle (beats of two
    words) and at 4 and 1 (beats of one word on the same width-8 link)."""
    controls, moved = KINDS[kind]
    seen, counters = _against_reference(dict(controls, seed=0xBEEF), latency=latency, bpc=bpc)
    for cycle, (got, want) in enumerate(zip(seen["rtl"], seen["ref"], strict=True)):
        assert got == want, f"cycle {cycle}: RTL {got} != reference {want}"
    assert counters["rtl"] == counters["ref"]
    assert all(counters["rtl"][c] > 0 for c in moved), counters["rtl"]


def test_faults_at_8_hit_both_halves_of_a_beat():
    """A bit/burst fault on an odd word flips the beat's second half, on an even word its
    first; framing faults truncate and merge packets at 8 bytes/cycle as at 4."""
    ref = LinkReference(0, 8, {"burst_rate": 30000, "burst_len": 8, "frame_rate": 30000, "seed": 5})
    rng = np.random.default_rng(2)
    halves, frames = set(), set()
    for data, last, data1 in _beats(rng, 400, two_words=True):
        _, beat, _ = ref.cycle(True, data, bool(last), None, data1)
        if beat[0] != data:
            halves.add("first")
        if data1 is not None and beat[2] != data1:
            halves.add("second")
        if beat[1] != bool(last):
            frames.add("merge" if last else "truncate")
    assert halves == {"first", "second"}
    assert frames == {"merge", "truncate"}


@pytest.mark.parametrize("bpc, gap", [(8, 1), (4, 1), (2, 2), (1, 4)])
def test_a_width8_link_takes_beats_at_its_bandwidth(bpc, gap):
    """Beats offered back to back are taken every ``4 / bpc`` cycles (1 at 8 bytes/cycle:
    two words per cycle), and arrive ``latency`` later (hand-worked: cycles 0, gap, 2 gap..)."""
    link = Link(5, bpc, width_bytes=8)
    taken, arrived = [], []

    async def drive(ctx):
        for cycle in range(30):
            ctx.set(link.tx.valid, 1)
            ctx.set(link.tx.p.data, cycle)
            ctx.set(link.tx.p.data1, cycle + 100)
            ctx.set(link.tx.p.two, int(bpc == 8))
            _, _, ready, rv, rd, rd1 = await ctx.tick().sample(
                link.tx.ready, link.rx.valid, link.rx.p.data, link.rx.p.data1
            )
            if ready:
                taken.append(cycle)
            if rv:
                arrived.append((cycle, rd, rd1))

    sim = Simulator(link)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.run()
    assert taken[:6] == [gap * k for k in range(6)]
    assert arrived[:3] == [(t + 5, t, t + 100) for t in taken[:3]]


# ------------------------------------------------------------ a 2-node exchange, RTL vs model

import dataclasses  # noqa: E402
import zlib  # noqa: E402

from gradsync.hw.cluster import Cluster  # noqa: E402
from gradsync.model.cluster import Cluster as ModelCluster  # noqa: E402
from gradsync.spec import link as lk  # noqa: E402
from gradsync.spec import regmap as rm  # noqa: E402
from gradsync.spec import timing as tm  # noqa: E402
from gradsync.spec.link import LinkConfig, link_set_value, packet_cycles, packet_payloads  # noqa: E402
from tests.hw.comm_host import FMT, GB, Host  # noqa: E402
from tests.hw.comm_host import HW as COMM_HW  # noqa: E402

#: The one width-8 build every setting below runs on (the link is set at run time).
HW8 = dataclasses.replace(COMM_HW, link_width_bytes=8)
DST = GB + 0x400  # node 1's window; its local gradients (SRC) sit at GB
TAG = rm.encode_tag(3, 2, 5)
WINDOW = 2
#: 4 packets of 44 bytes (14 words: the CRC in a beat of its own at 8 bytes/cycle) and one
#: of 24 (9 words: the CRC beside the last payload word, the chunk's end in that beat)
LENGTH = 200


def _operands(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(sent, local) 16-bit operands, large enough that some sums saturate."""
    rng = np.random.default_rng(seed)
    n = LENGTH // 2
    return (
        rng.integers(-30000, 30000, n).astype(np.int16),
        rng.integers(-30000, 30000, n).astype(np.int16),
    )


def _words(ops: np.ndarray) -> list[int]:
    return [int(w) for w in ops.astype("<i2").view("<u4")]


def _descriptor(flags: int) -> rm.Descriptor:
    return rm.Descriptor(
        src_addr=GB, length=LENGTH, peer=1, remote_addr=DST, window=WINDOW, tag=TAG, flags=flags
    )


def _timeline(trace0, trace1) -> list[tuple]:
    """Node 0's DMA and NIC_TX records and node 1's NIC_RX records: (node, cycle relative to
    node 0's DMA START -- the grant --, engine, event, aux), in that order (two records of
    one cycle may reach the trace buffer in either order)."""
    t0 = next(r.cycle for r in trace0 if r.engine == rm.Engine.DMA_LO and r.event == 0)
    # queue 1 is DMA_LO
    keep = {0: (rm.Engine.DMA_LO, rm.Engine.NIC_TX), 1: (rm.Engine.NIC_RX,)}
    return sorted(
        (n, r.cycle - t0, int(r.engine), int(r.event), r.aux)
        for n, trace in ((0, trace0), (1, trace1))
        for r in trace
        if r.engine in keep[n]
    )


#: The settings run on the one width-8 build: (bytes per cycle, descriptor flags).
SETTINGS = [
    (8, int(rm.DescFlag.REDUCE_ADD)),
    (8, 0),
    (4, int(rm.DescFlag.REDUCE_ADD)),
    (2, 0),
    (1, int(rm.DescFlag.REDUCE_ADD)),
]


#: The faulted run after them, at 8 bytes/cycle on link 0 (node 0 -> node 1, and node 1's
#: acknowledgements back): dropped, corrupted and mis-framed packets, lost acknowledgements.
#: Which faults a run meets depends on the cycle each packet starts in (the generators step
#: every cycle): rates and seed are picked so that this run meets every kind (the seed
#: changed from 7 when the CSR port started answering a cycle later).
FAULTS = {"drop_rate": 12000, "corrupt_rate": 10000, "frame_rate": 12000, "ack_drop_rate": 8000,
          "seed": 1}  # fmt: skip


def _link(bpc: int) -> LinkConfig:
    return LinkConfig(bpc, 7, 44)


async def _exchange_on(ctx, dut, link: LinkConfig, sent, local, flags) -> dict:
    """One exchange after a reset: both nodes' LINK_SET, node 0 sends ``sent`` into node
    1's window over ``local``; what the host then reads back."""
    out = {}
    h = Host(ctx, dut)
    for n in (0, 1):
        await h.write(n, rm.offset("CONTROL"), 1)  # trace_enable
        await h.write(n, rm.offset("LINK_SET"), link_set_value(link))
    await h.load(0, GB, _words(sent))
    await h.load(1, GB, _words(local))
    await h.window(1, WINDOW, DST, GB, LENGTH, TAG)
    await h.send(0, _descriptor(flags), queue=1)
    for _ in range(400):  # bounded: a lost packet fails the test, it does not hang
        if await h.read(1, rm.rx_window_reg(WINDOW, "RECEIVED")) >= LENGTH:
            break
        for _ in range(20):
            await ctx.tick()
    for _ in range(60):
        await ctx.tick()
    for n in (0, 1):
        out[f"{n}.ERR_COUNT"] = await h.read(n, rm.offset("ERR_COUNT"))
    out["tx_cycles"] = await h.read(0, rm.offset("PERF_TX_CYCLES"))
    out["timeline"] = _timeline(await h.trace(0), await h.trace(1))
    words = np.array(await h.dump(1, DST, LENGTH // 4), dtype=np.uint32)
    out["data"] = words.astype("<u4").view("<i2")
    return out


@pytest.fixture(scope="module")
def rtl_runs() -> dict:
    """Every setting of :data:`SETTINGS` on ONE elaboration and simulation of the width-8
    communication cluster, reset between settings (the link is set at run time: LINK_SET
    is refused after a doorbell until reset)."""
    from amaranth.hdl import ClockDomain, Module

    dut = Cluster(HW8, FMT, 2, compute=False)
    top = Module()
    top.domains.sync = cd = ClockDomain("sync")
    top.submodules.dut = dut
    runs, beats = {}, []

    async def monitor(ctx):
        tx = dut.nodes[0].tx
        async for _, _, valid, ready, beat in ctx.tick().sample(tx.valid, tx.ready, tx.p):
            if valid and ready:
                words = [int(beat.data)] + ([int(beat.data1)] if beat.two else [])
                beats.append((words, int(beat.last)))

    async def bench(ctx):
        faulted = (8, int(rm.DescFlag.REDUCE_ADD), "faulted")
        for bpc, flags, *name in [*SETTINGS, faulted]:
            key = name[0] if name else (bpc, flags)
            if name:  # the seed is loaded in the reset cycle
                for control, value in FAULTS.items():
                    ctx.set(getattr(dut, f"l0_{control}"), value)
            ctx.set(cd.rst, 1)
            await ctx.tick()
            ctx.set(cd.rst, 0)
            beats.clear()
            sent, local = _operands(seed=bpc + flags)
            try:  # one failing setting must not hide the others' results
                runs[key] = await _exchange_on(ctx, dut, _link(bpc), sent, local, flags)
            except AssertionError as exc:
                runs[key] = {"failed": repr(exc)}
                continue
            runs[key]["beats"] = list(beats)
            names = ("l0_dropped", "l0_corrupted", "l0_framed", "l0_acks_dropped")
            runs[key].update({n: ctx.get(getattr(dut, n)) for n in names})
            runs[key]["retransmits"] = ctx.get(dut.n0_tx_retransmits)
        for control in FAULTS:
            ctx.set(getattr(dut, f"l0_{control}"), 0)
        ctx.set(cd.rst, 1)
        await ctx.tick()
        ctx.set(cd.rst, 0)
        try:
            runs["both"] = await _both_on(ctx, dut)
        except AssertionError as exc:
            runs["both"] = {"failed": repr(exc)}

    sim = Simulator(top)
    sim.add_clock(1e-8, domain="sync")
    sim.add_process(monitor)
    sim.add_testbench(bench)
    sim.run()
    return runs


def _model_exchange(link: LinkConfig, sent, local, flags) -> dict:
    """The same exchange on the golden model's cluster of :data:`HW8`."""
    out = {}

    async def setup(dev):
        await dev.write32(rm.offset("CONTROL"), 1)
        await dev.write32(rm.offset("LINK_SET"), link_set_value(link))

    async def sender(dev):
        await setup(dev)
        await dev.write32(rm.dma_reg(1, "RING_BASE"), rm.RING_MEM_BASE + 0x100)
        await dev.write32(rm.dma_reg(1, "RING_SIZE"), 8)
        await dev.write32(rm.dma_reg(1, "WIN_BASE"), GB)
        await dev.write32(rm.dma_reg(1, "WIN_LEN"), 0x800)
        await dev.load(GB, sent)
        await dev.load(rm.SCRATCH_BASE, np.zeros(512, np.int16))  # the receiver opens first
        await dev.load(rm.RING_MEM_BASE + 0x100, np.array(_descriptor(flags).encode()))
        await dev.write32(rm.dma_reg(1, "DOORBELL"), 1)

    async def receiver(dev):
        await setup(dev)
        await dev.load(GB, local)
        for name, v in (("DST", DST), ("SRC", GB), ("LEN", LENGTH), ("TAG", TAG), ("CTRL", 1)):
            await dev.write32(rm.rx_window_reg(WINDOW, name), v)

    cl = ModelCluster(2, HW8, FMT)
    cl.run([sender, receiver])
    d0, d1 = cl.devices
    out["timeline"] = _timeline(d0.trace, d1.trace)
    out["data"] = np.asarray(d1.grad[0x200 : 0x200 + LENGTH // 2], dtype=np.int16)
    return out


def _saturating_sum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The reduce-add's 16-bit saturating lanes (NumPy reference)."""
    return np.clip(a.astype(np.int32) + b.astype(np.int32), -32768, 32767).astype(np.int16)


def _packets(beats) -> list[list[int]]:
    """The link beats cut into packets of words (H0 .. CRC), as ``last`` marks them."""
    packets, cur = [], []
    for words, last in beats:
        cur += words
        if last:
            packets.append(cur)
            cur = []
    assert not cur
    return packets


def _grant_to_done(link: LinkConfig) -> int:
    """DMA grant to completion, from the spec's formulas (hand-worked at 8 in the test)."""
    return tm.descriptor_cycles(LENGTH, dataclasses.replace(HW8, **_fields(link)))


def _fields(link: LinkConfig) -> dict:
    return {
        "link_bytes_per_cycle": link.bytes_per_cycle,
        "link_latency_cycles": link.latency_cycles,
        "max_payload_bytes": link.max_payload_bytes,
    }


@pytest.mark.parametrize("bpc, flags", SETTINGS)
def test_one_width8_build_equals_the_model_at_every_bandwidth(rtl_runs, bpc, flags):
    """A 200-byte chunk in packets of 44 bytes (and one of 24) from node 0 into node 1's
    window, the link set at run time to ``bpc`` on the same width-8 build: memory equals
    NumPy's reference and the golden model's; every DMA/NIC_TX/NIC_RX trace cycle equals the
    model's; the link beats carry two words at 8 bytes/cycle with a correct CRC per packet."""
    link = _link(bpc)
    sent, local = _operands(seed=bpc + flags)
    rtl = rtl_runs[bpc, flags]
    assert "failed" not in rtl, rtl
    ref = _model_exchange(link, sent, local, flags)
    want = _saturating_sum(local, sent) if flags else sent
    np.testing.assert_array_equal(rtl["data"], want)
    np.testing.assert_array_equal(ref["data"], want)
    assert rtl["timeline"] == ref["timeline"]
    assert (rtl["0.ERR_COUNT"], rtl["1.ERR_COUNT"]) == (0, 0)

    payloads = packet_payloads(LENGTH, link)
    packets = _packets(rtl["beats"])
    assert [len(p) - 4 for p in packets] == [p // 4 for p in payloads]
    for pkt in packets:
        assert pkt[-1] == zlib.crc32(b"".join(w.to_bytes(4, "little") for w in pkt[:-1]))
    assert len(rtl["beats"]) == sum(packet_cycles(p, link) for p in payloads) * min(bpc, 4) // 4
    assert all(len(w) == (2 if bpc == 8 else 1) or last for w, last in rtl["beats"])
    dma = [c for n, c, e, ev, _ in rtl["timeline"] if e == rm.Engine.DMA_LO]
    assert dma[1] - dma[0] == _grant_to_done(link)
    assert rtl["tx_cycles"] == sum(packet_cycles(p, link) for p in payloads)


def test_a_faulted_8_byte_link_resends_until_every_packet_lands(rtl_runs):
    """At 8 bytes/cycle with drops, bit errors, framing faults and lost acknowledgements on
    link 0, the width-8 NICs resend (two words a beat, the CRC folded) until node 1 holds
    NumPy's saturating sum, with no error; every fault kind did happen."""
    run = rtl_runs["faulted"]
    assert "failed" not in run, run
    sent, local = _operands(seed=8 + int(rm.DescFlag.REDUCE_ADD))
    np.testing.assert_array_equal(run["data"], _saturating_sum(local, sent))
    assert (run["0.ERR_COUNT"], run["1.ERR_COUNT"]) == (0, 0)
    assert run["retransmits"] > 0
    for name in ("l0_dropped", "l0_corrupted", "l0_framed", "l0_acks_dropped"):
        assert run[name] > 0, (name, run)


def test_the_folded_crc_is_zlibs_crc32_over_the_words():
    """``hw.packet.crc32_step`` folded over two words in one cycle equals zlib's CRC-32 of
    their little-endian bytes (the packet CRC, ``model/link.py``'s ``crc32_words``)."""
    from amaranth.hdl import Module, Signal

    from gradsync.hw.packet import CRC_INIT, crc32_step, crc32_value

    m = Module()
    a, b, out = Signal(32), Signal(32), Signal(32)
    m.d.comb += out.eq(crc32_value(crc32_step(m, crc32_step(m, CRC_INIT, a, "s1"), b, "s2")))
    rng = np.random.default_rng(5)
    pairs = [(0, 0), (0xFFFF_FFFF, 1)] + [
        tuple(int(x) for x in rng.integers(0, 1 << 32, 2)) for _ in range(30)
    ]

    async def bench(ctx):
        for x, y in pairs:
            ctx.set(a, x)
            ctx.set(b, y)
            want = zlib.crc32(x.to_bytes(4, "little") + y.to_bytes(4, "little"))
            assert ctx.get(out) == want, (hex(x), hex(y))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


# ------------------------------------- both directions at once, two chunks back to back each

#: Each node sends two 200-byte chunks (reduce-add, then a plain write) from GB + 0x200 into
#: the other's windows 2 and 3 at GB + 0x400 / GB + 0x600, over its local gradients at GB.
BOTH_SRC, BOTH_DST = GB + 0x200, (GB + 0x400, GB + 0x600)
BOTH_FLAGS = (int(rm.DescFlag.REDUCE_ADD), 0)


def _both_descriptors(node: int) -> list[rm.Descriptor]:
    return [
        rm.Descriptor(src_addr=BOTH_SRC + LENGTH * i, length=LENGTH, peer=1 - node,
                      remote_addr=BOTH_DST[i], window=2 + i, tag=TAG + i, flags=BOTH_FLAGS[i])
        for i in range(2)
    ]  # fmt: skip


def _both_data(node: int) -> tuple[np.ndarray, np.ndarray]:
    """(two chunks to send, local gradients) of ``node``: 200 operands each."""
    sent, local = _operands(seed=40 + node)
    more, local2 = _operands(seed=50 + node)
    return np.concatenate([sent, more]), np.concatenate([local, local2])


def _both_want(receiver: int) -> list[np.ndarray]:
    """What ``receiver``'s windows hold afterwards: the sum into window 2, the copy in 3."""
    sent, _ = _both_data(1 - receiver)
    _, local = _both_data(receiver)
    n = LENGTH // 2
    return [_saturating_sum(local[:n], sent[:n]), sent[n:]]


def _directions(traces) -> list[tuple]:
    """Per sending node: its DMA/NIC_TX records and its peer's NIC_RX records, cycles
    relative to the sender's first grant (the directions share no timing but the links')."""
    out = []
    for src in (0, 1):
        tx, rx = traces[src], traces[1 - src]
        t0 = min(r.cycle for r in tx if r.engine == rm.Engine.DMA_LO and r.event == 0)
        mine = [r for r in tx if r.engine in (rm.Engine.DMA_LO, rm.Engine.NIC_TX)]
        theirs = [r for r in rx if r.engine == rm.Engine.NIC_RX]
        out += sorted((src, r.cycle - t0, int(r.engine), int(r.event), r.aux)
                      for r in mine + theirs)  # fmt: skip
    return out


async def _both_on(ctx, dut) -> dict:
    h = Host(ctx, dut)
    for n in (0, 1):
        await h.write(n, rm.offset("CONTROL"), 1)
        await h.write(n, rm.offset("LINK_SET"), link_set_value(_link(8)))
        send, local = _both_data(n)
        await h.load(n, BOTH_SRC, _words(send))
        await h.load(n, GB, _words(local))
        for i in range(2):
            await h.window(n, 2 + i, BOTH_DST[i], GB + LENGTH * i, LENGTH, TAG + i)
    for n in (0, 1):
        q = rm.RING_MEM_BASE + 0x100
        for name, value in (("RING_BASE", q), ("RING_SIZE", 8), ("WIN_BASE", GB),
                            ("WIN_LEN", 0x800)):  # fmt: skip
            await h.write(n, rm.dma_reg(1, name), value)
        for i, d in enumerate(_both_descriptors(n)):
            await h.load(n, q + 32 * i, d.encode())
    for n in (0, 1):
        await h.write(n, rm.dma_reg(1, "DOORBELL"), 2)
    for _ in range(60):
        for _ in range(20):
            await ctx.tick()
        if all([await h.read(n, rm.dma_reg(1, "DONE")) == 2 for n in (0, 1)]):
            break
    for _ in range(80):
        await ctx.tick()
    out = {"errors": [await h.read(n, rm.offset("ERR_COUNT")) for n in (0, 1)]}
    out["timeline"] = _directions([await h.trace(0), await h.trace(1)])
    out["data"] = [
        [np.array(await h.dump(n, BOTH_DST[i], LENGTH // 4), np.uint32).view("<i2")
         for i in range(2)]
        for n in (0, 1)
    ]  # fmt: skip
    return out


def _both_model() -> dict:
    async def prog(dev):
        n = dev.node_id
        await dev.write32(rm.offset("CONTROL"), 1)
        await dev.write32(rm.offset("LINK_SET"), link_set_value(_link(8)))
        send, local = _both_data(n)
        await dev.load(BOTH_SRC, send)
        await dev.load(GB, local)
        for i in range(2):
            regs = (("DST", BOTH_DST[i]), ("SRC", GB + LENGTH * i), ("LEN", LENGTH),
                    ("TAG", TAG + i), ("CTRL", 1))  # fmt: skip
            for name, v in regs:
                await dev.write32(rm.rx_window_reg(2 + i, name), v)
        q = rm.RING_MEM_BASE + 0x100
        for name, value in (("RING_BASE", q), ("RING_SIZE", 8), ("WIN_BASE", GB),
                            ("WIN_LEN", 0x800)):  # fmt: skip
            await dev.write32(rm.dma_reg(1, name), value)
        for i, d in enumerate(_both_descriptors(n)):
            await dev.load(q + 32 * i, np.array(d.encode()))
        await dev.write32(rm.dma_reg(1, "DOORBELL"), 2)

    cl = ModelCluster(2, HW8, FMT)
    cl.run([prog, prog])
    n = LENGTH // 2
    data = [
        [np.asarray(d.grad[(a - GB) // 2 : (a - GB) // 2 + n], np.int16) for a in BOTH_DST]
        for d in cl.devices
    ]
    return {"timeline": _directions([d.trace for d in cl.devices]), "data": data}


def test_both_directions_two_chunks_each_at_8_equal_the_model(rtl_runs):
    """Both nodes send two chunks back to back at once (a reduce-add and a plain write, the
    second granted as the first completes): memory is NumPy's, every DMA/NIC trace cycle
    of each direction is the model's."""
    rtl, ref = rtl_runs["both"], _both_model()
    assert "failed" not in rtl, rtl
    assert rtl["errors"] == [0, 0]
    for n in (0, 1):
        for got, model, want in zip(rtl["data"][n], ref["data"][n], _both_want(n), strict=True):
            np.testing.assert_array_equal(got, want)
            np.testing.assert_array_equal(model, want)
    assert rtl["timeline"] == ref["timeline"]
    assert len([t for t in rtl["timeline"] if t[2] == rm.Engine.NIC_RX]) == 2 * 2 * 5


# ------------------------------------------------------------- LINK_SET at the RTL's LinkSetting


@pytest.mark.parametrize("width", [4, 8])
def test_link_set_refuses_8_on_a_width_4_build_as_the_spec_says(width):
    """``hw.node.LinkSetting``: LINK_SET values of every bandwidth 0..15 (and bad payloads and
    latencies) are refused or taken exactly as ``spec.link.link_set_refusal`` says for the
    build's width -- 8 bytes/cycle refused (LINK_SET_BAD, index 0) on width 4 only -- and an
    accepted one sets the outputs and the NIC timeouts of ``spec.link.nic_timeouts``."""
    from gradsync.hw.node import LinkSetting
    from gradsync.spec.hardware import constant_registers
    from gradsync.spec.link import link_set_refusal, nic_timeouts

    hw = dataclasses.replace(COMM_HW, link_width_bytes=width)
    limits = constant_registers(hw, FMT)["LINK_LIMITS"]
    dut = LinkSetting(hw, limits)
    r = rm.reg("LINK_SET")
    values = [r.pack(bytes_per_cycle=b, payload_words=16, latency=30) for b in range(16)]
    values += [r.pack(bytes_per_cycle=8, payload_words=p, latency=5) for p in (0, 1, 128, 129)]
    values += [r.pack(bytes_per_cycle=8, payload_words=64, latency=lat) for lat in (1023, 1024)]
    seen = []

    async def bench(ctx):
        for v in values:
            ctx.set(dut.set_data, v)
            ctx.set(dut.set_we, 1)
            valid, code, index = (ctx.get(dut.error.valid), ctx.get(dut.error.code),
                                  ctx.get(dut.error.index))  # fmt: skip
            await ctx.tick()
            ctx.set(dut.set_we, 0)
            now = (ctx.get(dut.bytes_per_cycle), ctx.get(dut.timeout), ctx.get(dut.holdoff))
            seen.append(((code, index) if valid else None, now))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    for v, (refused, (bpc, timeout, holdoff)) in zip(values, seen, strict=True):
        want = link_set_refusal(v, limits, width)
        assert refused == (None if want is None else (int(want[0]), want[1])), hex(v)
        if want is None:
            link = lk.link_from_set_value(v)
            assert (bpc, timeout, holdoff) == (link.bytes_per_cycle, *nic_timeouts(link))
    eights = [
        s for v, s in zip(values, seen, strict=True) if r.field("bytes_per_cycle").get(v) == 8
    ]
    assert (eights[0][0] is None) == (width == 8)
