"""sim/check.py finds every kind of difference between two runs, and none between equal ones."""

from __future__ import annotations

import copy
import dataclasses

from gradsync.firmware import data as digits
from gradsync.firmware.experiment import TrainConfig, build_jobs
from gradsync.model_backend import run_model
from gradsync.sim.check import compare
from gradsync.spec import regmap as rm

CFG = TrainConfig(nodes=2, steps=2, schedule="priority", global_batch=8, layers=(64, 16, 10))


def _run(cfg=CFG):
    jobs, _ = build_jobs(cfg, digits.load(cfg.seed))
    return run_model(cfg, jobs)


def test_equal_runs_pass():
    rep = compare(_run(), _run())
    assert rep.ok, rep.details
    assert rep.weight_arrays == 2 * 3 * 2 and rep.records > 100
    assert rep.verdict().startswith("check OK")


def test_one_weight_bit_one_cycle_one_event_are_each_found():
    a, b = _run(), _run()
    key = (1, 2, 1)
    b.weights[key] = b.weights[key].copy()
    b.weights[key][5] ^= 1
    rep = compare(a, b)
    assert not rep.ok and rep.weight_mismatches == 1 and "node 1 step 2 layer 1" in rep.details[0]

    b = _run()
    recs = b.nodes[0].records
    i = next(i for i, r in enumerate(recs) if r.engine == rm.Engine.NIC_TX)
    recs[i] = dataclasses.replace(recs[i], cycle=recs[i].cycle + 3)
    rep = compare(a, b)
    assert rep.cycle_differences == 1 and rep.max_cycle_difference == 3
    assert rep.event_mismatches == 0 and not rep.ok

    b = _run()
    recs = b.nodes[1].records
    j = next(i for i, r in enumerate(recs) if r.engine == rm.Engine.DMA_LO)
    del recs[j]
    rep = compare(a, b)
    assert rep.event_mismatches >= 1 and "FAILED" in rep.verdict()


def test_other_schedule_differs():
    other = _run(dataclasses.replace(CFG, schedule="fifo"))
    rep = compare(copy.deepcopy(other), _run())
    assert not rep.ok and rep.event_mismatches + rep.cycle_differences > 0
