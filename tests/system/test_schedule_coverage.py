"""Schedule-decision coverage (gradsync.sim.coverage) sampled from short model-backend training runs.

Each built-in schedule trains the default MLP (three weight layers: bottom,
middle, top) for two steps on two golden-model nodes; the decisions read from
the trace must be the ones ``firmware/schedules.py`` documents for it.
"""

from __future__ import annotations

import dataclasses

import pytest

from gradsync.firmware.experiment import TrainConfig, run
from gradsync.model_backend import run_model
from gradsync.sim import coverage as cov
from gradsync.spec.hardware import DEFAULT_HARDWARE

#: schedule -> (queue of (bottom, middle, top), overtakes, early updates), from the
#: schedules' documentation: only priority puts layer 1 on the high-priority queue and
#: lets lower layers overtake; priority and p3 update each layer once it is reduced.
DOCUMENTED = {
    "sequential": ((1, 1, 1), False, False),
    "fifo": ((1, 1, 1), False, False),
    "ddp": ((1, 1, 1), False, False),
    "priority": ((0, 1, 1), True, True),
    "p3": ((1, 1, 1), False, True),  # one P3 slice (50,000 parameters) holds a whole layer
}


def train(schedule: str):
    hw = DEFAULT_HARDWARE
    if schedule == "p3":  # a 50,000-parameter slice needs 100 kB of gradient SRAM
        hw = dataclasses.replace(hw, gradient_words=1 << 16)
    return run(TrainConfig(steps=2, schedule=schedule, hardware=hw), run_model)


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    out = {}
    for name in cov.BUILTIN_SCHEDULES:
        result = train(name)
        layers = len(result.config.layers) - 1
        out[name] = [cov.sample_schedule(name, recs, layers) for recs in result.records]
    path = cov.write(tmp_path_factory.mktemp("cov"), "schedules", print, "gradsync.schedule")
    return out, path


@pytest.mark.parametrize("schedule", cov.BUILTIN_SCHEDULES)
def test_schedule_decisions_are_the_documented_ones(sampled, schedule):
    queues, overtake, early = DOCUMENTED[schedule]
    by_node = sampled[0][schedule]
    assert len(by_node) == 2 and all(len(steps) == 2 for steps in by_node)
    for steps in by_node:
        for st in steps:
            assert st.overtake == overtake, (st.step, st.sends)
            assert st.early_update == early, st.step
            want = dict(zip(cov.POSITIONS, queues, strict=True))
            assert {pos for pos, _ in st.sends} == set(cov.POSITIONS)
            assert all(q == want[pos] for pos, q in st.sends), st.sends


def test_schedule_coverage_file_holds_every_documented_decision(sampled):
    data = cov.load([sampled[1]])
    cross = data["gradsync.schedule.send.schedule_x_position_x_queue"]["bins:_hits"]
    hit = {key for key, n in cross.items() if n}
    want = {
        str((s, pos, q))
        for s, (queues, _, _) in DOCUMENTED.items()
        for pos, q in zip(cov.POSITIONS, queues, strict=True)
    }
    assert want <= hit  # other tests in this process may have sampled more
    early = data["gradsync.schedule.step.schedule_x_early_update"]["bins:_hits"]
    assert all(early[str((s, e))] for s, (_, _, e) in DOCUMENTED.items())
