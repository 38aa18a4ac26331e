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

from gradsync.hw.link import LINK_COUNTERS, Link
from gradsync.hw.packet import header0
from gradsync.spec.faults import LinkReference, packet_words


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
    """The width-8 Amaranth Link and LinkReference on the same random beats (idle cycles
    between them, an acknowledge message every few cycles): per-cycle (ready, rx beat, ack)
    of each, and both sets of counters."""
    rng = np.random.default_rng(seed)
    beats = _beats(rng, packets, two_words=bpc == 8)
    total = len(beats) * (4 // max(1, bpc // 2) + 2) + 300
    idle = rng.random(total) < 0.1
    acks = rng.integers(0, 1 << 41, size=total, dtype=np.uint64)
    ref = LinkReference(latency, bpc, controls)
    link = Link(latency, bpc, width_bytes=8)
    seen = {"rtl": [], "ref": []}
    counters = {}

    async def drive(ctx):
        for name, value in controls.items():
            ctx.set(getattr(link, name), value)
        ctx.set(link.seed_load, 1)
        await ctx.tick()
        ctx.set(link.seed_load, 0)
        i = 0
        for cycle in range(total):
            offer = i < len(beats) and not idle[cycle]
            data, last, data1 = beats[i] if offer else (0, 0, None)
            ack = int(acks[cycle]) if cycle % 5 == 2 else None
            ctx.set(link.tx.valid, int(offer))
            ctx.set(link.tx.p.data, data)
            ctx.set(link.tx.p.last, last)
            ctx.set(link.tx.p.data1, data1 or 0)
            ctx.set(link.tx.p.two, int(data1 is not None))
            ctx.set(link.ack_tx.valid, int(ack is not None))
            ctx.set(link.ack_tx.p.as_value(), ack or 0)
            r_ready = ref.ready()
            taken, beat, ack_out = ref.cycle(offer, data, bool(last), ack, data1)
            _, _, ready, rv, rd, rl, rd1, two, av, ap = await ctx.tick().sample(
                link.tx.ready,
                link.rx.valid,
                link.rx.p.data,
                link.rx.p.last,
                link.rx.p.data1,
                link.rx.p.two,
                link.ack_rx.valid,
                link.ack_rx.p.as_value(),
            )
            got = ((rd, bool(rl), rd1) if two else (rd, bool(rl))) if rv else None
            seen["rtl"].append((bool(ready), got, ap if av else None))
            seen["ref"].append((r_ready, beat, ack_out))
            i += bool(taken)
        counters["rtl"] = {c: ctx.get(getattr(link, c)) for c in LINK_COUNTERS}

    sim = Simulator(link)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.run()
    counters["ref"] = dict(ref.counters)
    return seen, counters


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
