"""The golden model's faulted links: the spec's fault process, go-back-N, NAK, timeout, credits.

With ``link_faults`` the model steps ``model/link.py``'s transcription of the
RTL link layer cycle by cycle.  The references here are independent of it:
the fault-free model's formulas (``gradsync.spec.timing``), the fault-free
run's weights, and the per-packet bookkeeping every reliable transport must
satisfy (each packet applied exactly once, in order).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gradsync.firmware import data as digits
from gradsync.firmware.experiment import TrainConfig, build_jobs
from gradsync.model_backend import run_model_cluster
from gradsync.sim.check import compare
from gradsync.spec import regmap as rm
from gradsync.spec.faults import parse_link_faults
from gradsync.spec.hardware import preset

CFG = TrainConfig(nodes=2, steps=1, global_batch=16, layers=(64, 16, 10), chunk_bytes=256)


def _run(cfg=CFG, spec: str | None = None, seq_start: int = 0):
    jobs, _ = build_jobs(cfg, digits.load(cfg.seed))
    if spec == "":  # the link layer with every rate 0
        faults = [{"seed": 1 + i} for i in range(cfg.nodes)]
    else:
        faults = None if spec is None else parse_link_faults(spec, cfg.nodes)
    return run_model_cluster(cfg, jobs, 2_000_000, link_faults=faults, seq_start=seq_start)


def _total(cluster) -> dict:
    out: dict = {}
    for c in cluster.link_counters():
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out


@pytest.fixture(scope="module")
def clean():
    return _run()[0]


@pytest.mark.parametrize("nodes, bytes_per_cycle", [(2, 1), (4, 1), (2, 2), (2, 4), (4, 4)])
def test_fault_free_link_layer_is_the_timing_formulas_cycle_for_cycle(nodes, bytes_per_cycle):
    """Zero rates: stepping the transcribed NicTx/link/RxFrontEnd per cycle gives exactly the
    fault-free model's trace (``spec.timing``'s closed forms), weights and cycle count."""
    hw = preset("small", link_bytes_per_cycle=bytes_per_cycle)
    cfg = dataclasses.replace(CFG, nodes=nodes, steps=2, hardware=hw)
    ref, _ = _run(cfg)
    got, cluster = _run(cfg, "")
    rep = compare(got, ref)
    assert rep.records > 100 and rep.ok and rep.cycle_differences == 0, rep.details
    assert got.total_cycles == ref.total_cycles
    tot = _total(cluster)
    assert tot["packets"] == tot["packets_sent"] > 0 and tot["retransmits"] == 0


#: Per fault kind: a spec and the counters it must move.
KINDS = {
    "corrupt+drop": ("corrupt=6000,drop=6000,seed=2", ("corrupted", "dropped", "naks")),
    "burst": ("burst=9000,burst-len=12,seed=3", ("corrupted", "crc_errors")),
    "frame": ("frame=8000,seed=5", ("framed", "crc_errors")),
    "stall": ("stall=2000,stall-max=30", ("stalls",)),
    "ack": ("drop=3000,ack-drop=12000,ack-corrupt=40000,seed=2", ("acks_corrupted", "naks")),
    "down-fixed": ("down-at=2500,down-len=1500", ("down_cycles", "timeouts")),
    "down-random": ("down-rate=20,down-mean=300,seed=9", ("downs", "retransmits")),
    "per-link": ("0:burst=9000;1:drop=9000,ack-drop=9000", ("corrupted", "dropped")),
}


@pytest.mark.parametrize("kind", KINDS)
def test_every_fault_kind_is_recovered_with_the_fault_free_weights(kind, clean):
    spec, moved = KINDS[kind]
    res, cluster = _run(spec=spec)
    tot = _total(cluster)
    assert all(tot[c] > 0 for c in moved), tot
    assert res.weights.keys() == clean.weights.keys()
    for key, w in clean.weights.items():
        assert np.array_equal(w, res.weights[key]), key
    for dev in cluster.devices:  # every packet applied once: the RX windows saw every byte
        assert dev.nic.rx_drops == 0
    assert sum(d.nic.perf["rx_pkts"] for d in cluster.devices) == tot["packets_sent"]


def test_duplicates_are_discarded_and_acknowledged():
    """Lost acknowledgements make the sender resend packets the receiver already has: it
    counts and drops them (the issue's duplicate-discard path, 0 in every run before)."""
    res, cluster = _run(spec="corrupt=10000,ack-drop=60000,seed=3")
    tot = _total(cluster)
    assert tot["duplicates"] > 0 and tot["timeouts"] + tot["naks"] > 0, tot
    clean, _ = _run()
    assert all(np.array_equal(w, res.weights[k]) for k, w in clean.weights.items())


def test_sequence_numbers_wrap_without_a_trace_of_it(clean):
    """Starting 20 below 65536, every run wraps the 16-bit sequence number; fault-free the
    trace is unchanged to the cycle, and with faults the weights are those of a clean run."""
    start = 0x10000 - 20
    ref, _ = _run(dataclasses.replace(CFG, steps=2))
    got, cluster = _run(dataclasses.replace(CFG, steps=2), "", seq_start=start)
    for dev in cluster.devices:
        assert dev.nic.layer.seq_next < start, "the sequence number did not wrap"
    rep = compare(got, ref)
    assert rep.ok and rep.cycle_differences == 0, rep.details
    spec = "drop=8000,corrupt=8000,ack-drop=8000,seed=8"
    res, cluster = _run(spec=spec, seq_start=0x10000 - 4)
    assert all(d.nic.layer.resent_across_wrap > 0 for d in cluster.devices)
    assert all(np.array_equal(w, res.weights[k]) for k, w in clean.weights.items())


def test_a_seed_replays_its_faults_and_other_seeds_differ():
    counts = []
    for seed in (5, 5, 6):
        res, cluster = _run(spec=f"corrupt=9000,drop=9000,seed={seed}")
        counts.append(([tuple(c.values()) for c in cluster.link_counters()], res.total_cycles))
    assert counts[0] == counts[1] and counts[0] != counts[2]
    assert counts[0][0][0] != counts[0][0][1], "link 0 and link 1 faulted alike"


def test_faulted_runs_cost_cycles_and_are_reported_per_link():
    clean, _ = _run()
    res, cluster = _run(spec="down-at=1000,down-len=3000")
    assert res.total_cycles > clean.total_cycles
    assert [c["down_cycles"] for c in cluster.link_counters()] == [3000, 3000]


def test_two_steps_under_faults_keep_the_fault_free_weights():
    cfg = dataclasses.replace(CFG, steps=2, global_batch=64, layers=(64, 32, 10))
    clean, _ = _run(cfg)
    res, _ = _run(cfg, "corrupt=6000,drop=6000,seed=11")
    early = []
    for node in res.nodes:
        dw = {
            rm.decode_tag(r.tag)[0:3:2]: r.cycle
            for r in node.records
            if r.kind == rm.Kind.DW and r.event == rm.TraceEvent.END
        }
        early += [
            r
            for r in node.records
            if r.engine == rm.Engine.NIC_RX and r.cycle < dw.get(rm.decode_tag(r.tag)[0:3:2], 0)
        ]
    assert not early, f"{len(early)} reduce-adds applied before the node's own dW"
    assert all(np.array_equal(w, res.weights[k]) for k, w in clean.weights.items())


@pytest.mark.parametrize(
    "spec, text",
    [
        ("2:drop=5", "--link-faults link 2 does not exist: links are 0..1"),
        ("x:drop=5", "--link-faults link must be a link number, not 'x'"),
        ("burst-len=40", "--link-faults burst-len must be in 1..32, not 40"),
        ("down-at=5", "--link-faults down-at needs down-len (cycles the link is down)"),
        ("seed=4", "--link-faults needs at least one of corrupt=, drop=, stall=, burst=, "
         "frame=, ack-drop=, ack-corrupt=, down-rate=, down-len="),
    ],
)  # fmt: skip
def test_bad_specs_are_refused_with_one_sentence(spec, text):
    with pytest.raises(ValueError) as err:
        parse_link_faults(spec, 2)
    assert str(err.value) == text


def test_per_link_groups_override_the_all_links_group():
    assert parse_link_faults("corrupt=600,seed=9;1:drop=7,corrupt=0,seed=70;0:burst=5", 3) == [
        {"corrupt_rate": 600, "burst_rate": 5, "burst_len": 8, "seed": 9},
        {"drop_rate": 7, "seed": 70},
        {"corrupt_rate": 600, "seed": 11},
    ]


@pytest.mark.parametrize(
    "sent, holdoff_count, naks", [(False, 0, True), (True, 39, False), (True, 40, False)]
)
def test_a_bad_packet_as_the_nak_hold_off_ends_is_nakked_as_the_rtl_does(
    sent, holdoff_count, naks
):
    """``hw/nic_rx.py``'s verdict reads the NAK flag before the clock edge, and the hold-off
    clears it at that same edge: a bad packet whose last beat lands in the hold-off's last
    cycle is not NAKed (the flag then clears), only one landing after it is.  The model's
    link layer stepped past this boundary (it NAKed there), so a faulted 8 B/cycle RTL run
    differed from it by 306 trace records (``tests/system/test_rtl_link8.py``)."""
    from gradsync.model.cluster import Cluster
    from gradsync.spec.formats import FixedPointFormat
    from gradsync.spec.hardware import DEFAULT_HARDWARE

    layer = Cluster(2, DEFAULT_HARDWARE, FixedPointFormat(), [{}, {}]).devices[0].nic.layer
    layer.holdoff, layer.nak_sent, layer.nak_holdoff = 40, sent, holdoff_count
    layer.nak_pending = layer.dirty = False
    layer._rx(100, False, (0x1234, True))  # a last beat, nothing before it: bad length
    assert layer.rx_counters["crc_errors"] == 1
    assert layer.nak_pending is naks
    # the flag after the edge: set by the NAK, still set within the hold-off, cleared at its end
    assert layer.nak_sent is (naks or holdoff_count < 40)
    layer._rx(101, False, (0x1234, True))  # the next bad packet: NAKed once the flag cleared
    assert layer.nak_pending is (naks or holdoff_count == 40)
