"""Run-time link settings of the golden model: ``LINK_SET``, ``LINK_LIMITS``, the doorbell lock.

A node's link (width, latency, maximum payload) is set by one ``LINK_SET``
write before its first doorbell, within ``LINK_LIMITS``.  The references here
are independent of the model's code: the register map's field layout packed by
hand, hand-worked packet arrival cycles (``spec.link.packet_cycles`` plus the
latency and the applier's fixed cost), and a cluster built with the link
itself (no run-time change), which must give the same cycles, events and link
counters as one built with ``BUILD_LINK`` that sets the link at start-up.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gradsync.model.cluster import Cluster
from gradsync.model.events import SimulationError
from gradsync.spec import regmap as rm
from gradsync.spec.faults import LinkReference
from gradsync.spec.hardware import BUILD_LINK
from gradsync.spec.link import LinkConfig, link_set_value, packet_cycles

from .conftest import FMT, HW, gaddr, idle, intervals, open_window, post, setup_queues

LINK_SET = rm.offset("LINK_SET")
#: LINK_SET fields by hand: bytes_per_cycle [3:0], payload_words [11:4], latency [31:12].


def set_value(bytes_per_cycle: int, payload_words: int, latency: int) -> int:
    return bytes_per_cycle | payload_words << 4 | latency << 12


BUILD_HW = dataclasses.replace(HW, **BUILD_LINK)


def link_reads(dev, cycle: int | None = None) -> tuple[int, int, int]:
    """(LINK_INFO, LINK_LATENCY, LINK_MAX_PAYLOAD) as a read sampling ``cycle`` sees them."""
    return tuple(
        dev.csr.read(rm.offset(n), cycle) for n in ("LINK_INFO", "LINK_LATENCY", "LINK_MAX_PAYLOAD")
    )


def info(bytes_per_cycle: int) -> int:
    """LINK_INFO by hand: bytes_per_cycle [7:0], header 12 [15:8], CRC 4 [23:16]."""
    return bytes_per_cycle | 12 << 8 | 4 << 16


# ------------------------------------------------------------------ registers


def test_reset_values_are_the_build_link_and_limits_are_constant():
    dev = Cluster(2, BUILD_HW, FMT).devices[1]
    b = BUILD_LINK
    assert link_reads(dev) == (
        info(b["link_bytes_per_cycle"]),
        b["link_latency_cycles"],
        b["max_payload_bytes"],
    )
    # max_payload_words 128 [7:0], max_latency 1023 [31:8]
    assert dev.mmio_read(rm.offset("LINK_LIMITS")) == 128 | 1023 << 8
    assert dev.mmio_read(LINK_SET) == 0  # write-only


def test_an_accepted_write_sets_the_link_from_the_next_cycle():
    dev = Cluster(2, BUILD_HW, FMT).devices[0]
    build = link_reads(dev)
    dev.sim.now = 40
    dev.mmio_write(LINK_SET, set_value(2, 16, 777))
    assert link_reads(dev, 40) == build  # the write's own cycle still has the old link
    assert link_reads(dev, 41) == (info(2), 777, 64)
    assert dev.err_count == 0 and dev.irq_status & rm.Irq.ERROR == 0
    dev.mmio_write(LINK_SET, set_value(4, 128, 0))  # a second write before any doorbell
    assert link_reads(dev, 41) == (info(4), 0, 512)
    assert dev.nic.link.at(41) == LinkConfig(4, 0, 512)


def test_a_host_write_is_read_back_through_the_host_port():
    got = {}

    async def prog(dev):
        await dev.write32(LINK_SET, set_value(1, 1, 1023))
        got["reads"] = [await dev.read32(rm.offset(n))
                        for n in ("LINK_INFO", "LINK_LATENCY", "LINK_MAX_PAYLOAD")]  # fmt: skip

    Cluster(2, BUILD_HW, FMT).run([prog, idle])
    assert got["reads"] == [info(1), 1023, 4]


def _refused(dev, value: int, code: rm.ErrorCode, index: int, errors_before: int) -> None:
    before = link_reads(dev, dev.sim.now + 1)
    dev.mmio_write(LINK_SET, value)
    assert dev.mmio_read(rm.offset("ERR_CODE")) == int(code) | rm.Engine.HOST << 8 | index << 16
    assert dev.mmio_read(rm.offset("ERR_INFO")) == value
    assert dev.mmio_read(rm.offset("ERR_COUNT")) == errors_before + 1
    assert dev.irq_status & rm.Irq.ERROR
    last = dev.trace[-1]
    assert (last.cycle, last.engine, last.event, last.tag, last.aux) == (
        dev.sim.now, rm.Engine.HOST, rm.TraceEvent.ERROR, value, int(code),
    )  # fmt: skip
    assert link_reads(dev, dev.sim.now + 1) == before  # nothing changed
    assert len(dev.nic.link.history) == 1


BAD = {
    "width 3": (set_value(3, 16, 10), 0),
    "width 0": (set_value(0, 16, 10), 0),
    "payload 0 words": (set_value(4, 0, 10), 1),
    "payload 129 words": (set_value(4, 129, 10), 1),
    "latency 1024": (set_value(4, 16, 1024), 2),
    "width and latency bad: the width is named": (set_value(8, 16, 5000), 0),
    "payload and latency bad: the payload is named": (set_value(2, 200, 1024), 1),
}


@pytest.mark.parametrize("case", BAD)
def test_a_value_outside_the_limits_is_refused_and_changes_nothing(case):
    value, index = BAD[case]
    dev = Cluster(2, BUILD_HW, FMT).devices[0]
    dev.sim.now = 17
    _refused(dev, value, rm.ErrorCode.LINK_SET_BAD, index, 0)


@pytest.mark.parametrize("accepted", [True, False], ids=["accepted-doorbell", "refused-doorbell"])
def test_any_doorbell_locks_the_link(accepted):
    dev = Cluster(2, BUILD_HW, FMT).devices[0]
    if accepted:  # a valid ring: the doorbell is taken (its descriptor then fails validation)
        dev.mmio_write(rm.dma_reg(0, "RING_BASE"), rm.RING_MEM_BASE)
        dev.mmio_write(rm.dma_reg(0, "RING_SIZE"), HW.ring_entries)
    dev.mmio_write(rm.dma_reg(0, "DOORBELL"), 1)
    errors = dev.err_count
    assert errors == (0 if accepted else 1)  # RING_BAD_SIZE for the empty ring
    dev.sim.now = 3
    good = set_value(2, 16, 10)
    _refused(dev, good, rm.ErrorCode.LINK_SET_LOCKED, 0, errors)
    # locked beats bad: a value outside the limits after a doorbell is LINK_SET_LOCKED too
    _refused(dev, set_value(3, 0, 1024), rm.ErrorCode.LINK_SET_LOCKED, 0, errors + 1)


# ------------------------------------------------------------------ timing

#: (bytes per cycle, latency, payload bytes) the tests set at run time.
LINKS = [(4, 7, 64), (2, 0, 512), (1, 300, 128)]
CHUNK_BYTES = 200


def _exchange(hw, value: int, link_faults=None, chunks: int = 1):
    """Both nodes write LINK_SET = value first; node 0 sends ``chunks`` descriptors of
    CHUNK_BYTES to node 1's window 2.  Returns the cluster, its run and node 0's post cycle."""
    n_words = CHUNK_BYTES // FMT.word_bytes
    data = np.arange(chunks * n_words) * 7 - 500
    tag = rm.encode_tag(1, 0, 0)
    posted = {}

    async def sender(dev):
        await dev.write32(LINK_SET, value)
        await setup_queues(dev)
        await dev.load(gaddr(0), data)
        await dev.load(gaddr(2048), np.zeros(1024))  # the receiver opens its window first
        posted["cycle"] = dev.sim.now
        for c in range(chunks):
            d = rm.Descriptor(gaddr(c * n_words), CHUNK_BYTES, 1, gaddr(1024 + c * n_words), 2,
                              tag, flags=int(rm.DescFlag.IRQ))  # fmt: skip
            await post(dev, 0, c, d)
        for _ in range(chunks):
            await dev.wait_irq(int(rm.Irq.DMA_Q0))
            await dev.write32(rm.offset("IRQ_STATUS"), int(rm.Irq.DMA_Q0))

    async def receiver(dev):
        await dev.write32(LINK_SET, value)
        await setup_queues(dev)
        await open_window(dev, 2, gaddr(1024), gaddr(0), chunks * CHUNK_BYTES, tag,
                          chunks * CHUNK_BYTES)  # fmt: skip
        await dev.wait_irq(int(rm.Irq.RX))

    cluster = Cluster(2, hw, FMT, link_faults)
    run = cluster.run([sender, receiver], max_cycles=3_000_000)
    got = cluster.devices[1].grad[1024 : 1024 + chunks * n_words]
    assert np.array_equal(got, data)
    return cluster, run, posted["cycle"]


def _events(cluster) -> list:
    return [list(d.trace) for d in cluster.devices]


def _hand_arrivals(start: int, bpc: int, latency: int, payload: int) -> list[int]:
    """Visible cycles of a CHUNK_BYTES chunk's packets sent from ``start`` to an idle
    receiver: each packet's CRC word leaves a word period before its last cycle and arrives
    ``latency`` later; the applier takes it the cycle after (or when it finished the
    previous one), checks it for 3 cycles and writes a payload word per cycle."""
    link = LinkConfig(bpc, latency, payload)
    word_period = max(1, 4 // bpc)
    t, free, out = start, 0, []
    for rest in range(CHUNK_BYTES, 0, -payload):
        p = min(rest, payload)
        t += packet_cycles(p, link)
        crc_arrives = t - word_period + latency
        free = max(crc_arrives + 1, free) + 3 + p // 4
        out.append(free)
    return out


@pytest.mark.parametrize("bpc, latency, payload", LINKS)
def test_a_link_set_at_start_times_like_a_build_with_that_link(bpc, latency, payload):
    value = set_value(bpc, payload // 4, latency)
    assert value == link_set_value(LinkConfig(bpc, latency, payload))
    built = dataclasses.replace(
        HW, link_bytes_per_cycle=bpc, link_latency_cycles=latency, max_payload_bytes=payload
    )
    ref, ref_run, _ = _exchange(built, value)
    got, run, posted = _exchange(BUILD_HW, value)
    assert _events(got) == _events(ref)
    assert run.cycles == ref_run.cycles
    ((t_start, t_end, _, _),) = intervals(got.devices[0], rm.Engine.NIC_TX)
    # the descriptor is fetched (SRAM read 1 + 8 words + check 1 = 10 cycles after the grant)
    ((d_start, _, _, _),) = intervals(got.devices[0], rm.Engine.DMA_HI)
    assert t_start == d_start + 10 and d_start >= posted
    rx = [r[1] for r in intervals(got.devices[1], rm.Engine.NIC_RX)]
    assert rx == _hand_arrivals(t_start, bpc, latency, payload)
    assert got.devices[1].perf["rx_pkts"] == -(-CHUNK_BYTES // payload)


def test_the_build_link_itself_would_time_differently():
    """The comparison above can fail: without the LINK_SET write the build link is used."""
    _, run_set, _ = _exchange(BUILD_HW, set_value(4, 16, 7))
    b = BUILD_LINK
    _, run_build, _ = _exchange(
        BUILD_HW,
        set_value(
            b["link_bytes_per_cycle"], b["max_payload_bytes"] // 4, b["link_latency_cycles"]
        ),  # fmt: skip
    )
    assert run_set.cycles != run_build.cycles


FAULTS = {"drop_rate": 9000, "corrupt_rate": 9000, "ack_drop_rate": 6000}


@pytest.mark.parametrize("bpc, latency, payload", [(4, 7, 64), (2, 40, 256)])
def test_a_faulted_link_set_at_start_runs_like_a_build_with_that_link(bpc, latency, payload):
    value = set_value(bpc, payload // 4, latency)
    built = dataclasses.replace(
        HW, link_bytes_per_cycle=bpc, link_latency_cycles=latency, max_payload_bytes=payload
    )
    faults = [{**FAULTS, "seed": 11 + i} for i in range(2)]
    ref, ref_run, _ = _exchange(built, value, faults, chunks=6)
    got, run, _ = _exchange(BUILD_HW, value, faults, chunks=6)
    counters = got.link_counters()
    assert counters == ref.link_counters()
    assert counters[0]["dropped"] > 0 and counters[0]["retransmits"] > 0
    assert run.cycles == ref_run.cycles
    assert _events(got) == _events(ref)
    # the link layer ran on the set link: its NicTx timeout is the set link's
    assert got.devices[0].nic.layer.timeout == ref.devices[0].nic.layer.timeout


def test_a_faulted_link_layer_needs_a_latency_of_one_cycle_or_more():
    with pytest.raises(SimulationError, match="needs a latency >= 1 cycle, not 0"):
        _exchange(BUILD_HW, set_value(4, 16, 0), [{"drop_rate": 100, "seed": 1 + i}
                                                   for i in range(2)])  # fmt: skip


# ------------------------------------------------------------------ the delay line


def _line_outputs(changes: dict[int, int], cycles: int, first_latency: int):
    """Ack messages and words 100 + t entering in every cycle t, latency changed to
    ``changes[t]`` before cycle t: what leaves the line in each cycle."""
    ref = LinkReference(first_latency, 4, {})
    acks, beats = [], []
    for t in range(cycles):
        if t in changes:
            ref.set_link(changes[t], 4)
        _, beat, ack = ref.cycle(True, 1000 + t, True, 100 + t)
        acks.append(ack)
        beats.append(None if beat is None else beat[0] - 900)
    return acks, beats


def test_a_latency_change_reads_the_line_at_the_new_latency():
    """output(t) = input(t - L(t)): L = 3, then 6 from cycle 8 (three inputs repeat), then 1
    from cycle 14 (five inputs are skipped)."""
    acks, beats = _line_outputs({8: 6, 14: 1}, 20, 3)
    want = [None, None, None, 100, 101, 102, 103, 104,  # L = 3
            102, 103, 104, 105, 106, 107,  # L = 6: 102..104 again
            113, 114, 115, 116, 117, 118]  # L = 1: 108..112 never leave  # fmt: skip
    assert acks == want
    assert beats == want


def test_latency_zero_passes_the_input_in_its_own_cycle_and_the_limit_is_1023():
    acks, _ = _line_outputs({2: 0, 4: 1023}, 6, 1)
    assert acks == [None, 100, 102, 103, None, None]  # 1023 back: before reset
    ref = LinkReference(5, 4, {})
    with pytest.raises(ValueError, match="latency_cycles must be in 0..1023, not 1024"):
        ref.set_link(1024, 4)
    with pytest.raises(ValueError, match=r"bytes_per_cycle must be one of \(1, 2, 4, 8\), not 3"):
        ref.set_link(5, 3)


def _count_acks(cluster) -> dict[int, list[int]]:
    """Per link, the cycles an acknowledgement enters its sideband (from the receiver)."""
    sent = {}
    for i, dev in enumerate(cluster.devices):
        ref, cycle = dev.nic.layer.link, dev.nic.layer.link.cycle
        sent[i] = []

        def counting(valid, data, last, ack, ref=ref, cycle=cycle, out=sent[i]):
            if ack is not None:
                out.append(ref.t)
            return cycle(valid, data, last, ack)

        ref.cycle = counting
    return sent


def test_each_link_layer_takes_its_sender_and_receiver_settings_from_their_own_links():
    """Node 0 sets (4 B/cycle, 20, 64 B), node 1 (2, 50, 256 B); no traffic.  By hand
    (``nic_timeouts``: round trip = 2 latency + longest packet's cycles + 16, timeout = 2 round
    trips + 64): node 0's round trip 40 + 20 + 16 = 76, node 1's 100 + 136 + 16 = 252.  An idle
    receiver repeats its acknowledgement when its quiet counter reaches its own hold-off (its
    round trip): in cycles H + 1, 2H + 3, ... (period H + 2)."""
    links = {0: set_value(4, 16, 20), 1: set_value(2, 64, 50)}
    end = 2000

    def program(node):
        async def prog(dev):
            await dev.write32(LINK_SET, links[node])
            await dev.sim.delay(end - dev.sim.now)

        return prog

    cluster = Cluster(2, BUILD_HW, FMT, [{"seed": 1}, {"seed": 2}])
    sent = _count_acks(cluster)
    run = cluster.run([program(0), program(1)])
    assert run.cycles == end
    l0, l1 = (d.nic.layer for d in cluster.devices)
    assert (l0.timeout, l0.holdoff, l0.link.latency, l0.link.period) == (216, 252, 20, 1)
    assert (l1.timeout, l1.holdoff, l1.link.latency, l1.link.period) == (568, 76, 50, 2)
    # link 0 carries node 1's acknowledgements (hold-off 252), link 1 node 0's (76)
    assert sent[0] == list(range(253, end, 254))
    assert sent[1] == list(range(77, end, 78))


def test_a_hold_off_lowered_below_the_quiet_count_fires_at_once():
    """Node 1 sets hold-off 76 (as above) in cycle 304 (a 300-cycle wait, then a 4-cycle host
    write), effective from 305, when its quiet counter is past 76: it fires in 305 (counter >=
    threshold), the acknowledgement leaves in 306, then every 78 cycles.  Node 0 keeps the
    build link: hold-off 200 + 272 + 16 = 488, acknowledgements in 489, 489 + 490, ..."""
    end = 2000
    wrote = []

    async def late(dev):
        await dev.sim.delay(300)
        await dev.write32(LINK_SET, set_value(4, 16, 20))
        wrote.append(dev.sim.now)
        await dev.sim.delay(end - dev.sim.now)

    async def quiet(dev):
        await dev.sim.delay(end)

    cluster = Cluster(2, BUILD_HW, FMT, [{"seed": 1}, {"seed": 2}])
    sent = _count_acks(cluster)
    cluster.run([quiet, late])
    assert wrote == [304]
    assert sent[0] == list(range(306, end, 78))
    assert sent[1] == list(range(489, end, 490))


def test_a_link_set_after_a_faulted_layer_ran_ahead_of_it_stops_the_run():
    """A faulted link layer steps a sent chunk's cycles before the event loop reaches them;
    a receiving node that sets its link (NAK hold-off) in one of those cycles is refused by
    the model with a sentence, not timed wrong."""
    shared = {}

    async def sender(dev):
        await setup_queues(dev)
        await post(dev, 0, 0, rm.Descriptor(gaddr(0), CHUNK_BYTES, 1, gaddr(1024), 2, 0))
        shared["posted"] = dev.sim.now  # the doorbell's cycle
        await dev.sim.delay(3000)

    async def receiver(dev):
        while "posted" not in shared:
            await dev.sim.delay(1)
        await dev.sim.delay(20)  # the chunk is on its way (fetched 10 cycles after the grant)
        await dev.write32(LINK_SET, set_value(4, 16, 20))

    cluster = Cluster(2, BUILD_HW, FMT, [{"seed": 1}, {"seed": 2}])
    with pytest.raises(SimulationError, match=r"LINK_SET in cycle \d+ changes a link link 0 "):
        cluster.run([sender, receiver])
