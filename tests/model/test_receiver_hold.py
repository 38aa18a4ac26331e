"""Receiver not ready: a peer's packet of step k waits for this node's TAG of step k.

The firmware writes a window's TAG for step k only once its own dW of step k
is in place, so an early reduce-add is held by the receiver instead of adding
the stale gradient (issue 15's race).  References: the fault-free run's
weights (a hold changes only timing), an explicit zero-rate link-layer run
(the exact per-cycle path) and the link counters (a hold costs no resend).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gradsync import model_backend
from gradsync.firmware import data as digits
from gradsync.firmware.experiment import TrainConfig, build_jobs
from gradsync.firmware.training import NodeFirmware
from gradsync.model.nic import held_sentence, next_step_hold
from gradsync.model_backend import run_model_cluster
from gradsync.sim.check import compare
from gradsync.spec import regmap as rm
from gradsync.spec.faults import parse_link_faults
from gradsync.watchdog import WatchdogError
from tests.readme import readme_schedule

CFG = TrainConfig(nodes=2, steps=2, global_batch=16, layers=(64, 16, 10), chunk_bytes=256)
#: Register reads a late node spins before writing its TAGs: ~5,000 cycles, longer than
#: two resend timeouts of the small preset's link (``spec.link.nic_timeouts``).
LATE_READS = 400


def _run(cfg=CFG, faults=None, capsys=None):
    jobs, _ = build_jobs(cfg, digits.load(cfg.seed))
    res, cluster = run_model_cluster(cfg, jobs, 4_000_000, link_faults=faults)
    return res, cluster


def _same_weights(a, b) -> bool:
    return a.weights.keys() == b.weights.keys() and all(
        np.array_equal(w, b.weights[k]) for k, w in a.weights.items()
    )


class LateTags(NodeFirmware):
    """Node 1 writes its windows' TAGs late (after spinning on a register): node 0's
    reduce-adds of the step arrive first and must wait in node 1's receiver."""

    async def _tag_windows(self, layer: int) -> None:
        if self.node == 1:
            for _ in range(LATE_READS):
                await self.drv.read("TRACE_COUNT")
        await super()._tag_windows(layer)


def test_rule_is_layer_and_chunk_equal_and_the_next_step_modulo_4096():
    t = rm.encode_tag
    assert next_step_hold(t(3, 5, 8), t(3, 5, 7))
    assert next_step_hold(t(3, 5, 0), t(3, 5, 4095))  # step -1: how the firmware opens it
    assert not next_step_hold(t(3, 5, 9), t(3, 5, 7))
    assert not next_step_hold(t(3, 5, 7), t(3, 5, 7))
    assert not next_step_hold(t(3, 4, 8), t(3, 5, 7))
    assert not next_step_hold(t(2, 5, 8), t(3, 5, 7))


def test_a_late_tag_is_held_on_the_fast_path_and_rerun_exactly(monkeypatch, capsys):
    """The fast path meets the hold, says so once and reruns with zero-rate link layers:
    the result is the explicit zero-rate run's to the cycle, the weights the fault-free
    run's, and the hold cost no resend, NAK or timeout though it outlasts two timeouts."""
    clean, fast = _run()
    assert all(d.nic.layer is None for d in fast.devices)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(model_backend, "NodeFirmware", LateTags)
    got, cluster = _run()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fast path met a receiver hold" in err, err
    assert "node 1 window" in err
    assert all(d.nic.layer is not None for d in cluster.devices), "no rerun with link layers"
    ref, ref_cluster = _run(faults=[{} for _ in range(CFG.nodes)])
    assert capsys.readouterr().err == ""
    rep = compare(got, ref)
    assert rep.ok and rep.cycle_differences == 0 and rep.records > 100, rep.details
    assert got.total_cycles == ref.total_cycles > clean.total_cycles
    assert _same_weights(got, clean)
    assert cluster.devices[0].nic.layer.holds > 0  # link 0: node 0 -> node 1
    for c in cluster.link_counters():
        assert c["retransmits"] == c["timeouts"] == c["naks"] == 0, c


def test_symmetric_fault_free_runs_never_hold(capsys):
    """Each node writes its TAG before its peer's packet can arrive: the fast path holds."""
    for cfg in (CFG, dataclasses.replace(CFG, nodes=4, steps=3, global_batch=32)):
        _, cluster = _run(cfg)
        assert all(d.nic.layer is None for d in cluster.devices)
    assert capsys.readouterr().err == ""


def test_four_nodes_three_steps_under_faults_keep_the_fault_free_weights():
    cfg = dataclasses.replace(CFG, nodes=4, steps=3, global_batch=64, layers=(64, 32, 10))
    clean, _ = _run(cfg)
    res, cluster = _run(cfg, parse_link_faults("corrupt=6000,drop=6000,seed=11", cfg.nodes))
    assert sum(d.nic.layer.holds for d in cluster.devices) > 0, "no packet was held"
    assert _same_weights(res, clean)
    assert all(d.nic.rx_drops == 0 for d in cluster.devices)


def test_top_first_user_schedule_under_faults_keeps_the_fault_free_weights(tmp_path):
    """The README's TopFirst sends the top layer of step k first; the step barrier keeps
    every step k-1 packet ahead of it, so the holds resolve (module docstring of
    firmware/training.py) and the weights are the fault-free run's."""
    path = tmp_path / "top_first.py"
    path.write_text(readme_schedule())
    cfg = dataclasses.replace(
        CFG, schedule=f"{path}:TopFirst", steps=3, global_batch=32, layers=(64, 32, 32, 10)
    )
    clean, _ = _run(cfg)
    for nodes in (2, 4):
        c = dataclasses.replace(cfg, nodes=nodes)
        ref = clean if nodes == 2 else _run(c)[0]
        res, cluster = _run(c, parse_link_faults("corrupt=8000,drop=8000,seed=5", nodes))
        assert _same_weights(res, ref), nodes
        assert sum(d.nic.layer.holds for d in cluster.devices) > 0, nodes


class NeverTags(NodeFirmware):
    """Node 1 never writes its windows' TAGs for step 1: node 0's packet is held for good."""

    async def _tag_windows(self, layer: int) -> None:
        if self.node == 1 and self.exchange_step == 1:
            return
        await super()._tag_windows(layer)


@pytest.mark.parametrize("faults", [None, [{}, {}]], ids=["fast-path", "link-layer"])
def test_a_packet_held_for_good_is_named_by_the_watchdog(monkeypatch, faults):
    monkeypatch.setattr(model_backend, "NodeFirmware", NeverTags)
    jobs, _ = build_jobs(CFG, digits.load(CFG.seed))
    with pytest.raises(WatchdogError) as err:
        run_model_cluster(CFG, jobs, 4_000_000, link_faults=faults)
    window_tag, packet_tag = rm.encode_tag(2, 0, 0), rm.encode_tag(2, 0, 1)
    window = 8  # layer 1's eight chunks have windows 0..7
    assert held_sentence(1, window, packet_tag, window_tag) in str(err.value)
    assert "holds a packet tagged L2c0s1 for window 8, whose tag is L2c0s0" in str(err.value)
