"""The main job (`make run`'s configuration: TrainConfig's defaults) shows the scheme.

Run on the golden model, which the RTL matches cycle for cycle
(tests/system/test_rtl_schedule.py).  "Sent" is as there: the NIC_TX END
record of the chunk's descriptor (the interval's end).
"""

from __future__ import annotations

import dataclasses

import pytest

from gradsync.cli import main
from gradsync.firmware.experiment import TrainConfig, run
from gradsync.model_backend import run_model
from gradsync.spec import regmap as rm
from gradsync.spec.hardware import DEFAULT_HARDWARE


@pytest.fixture(scope="module")
def default_runs():
    return {s: run(TrainConfig(schedule=s), run_model) for s in ("priority", "fifo", "sequential")}


def test_default_has_three_weight_layers_and_fits_the_default_preset():
    cfg = TrainConfig()
    assert len(cfg.layers) - 1 >= 3 and cfg.hardware == DEFAULT_HARDWARE
    cfg.validate()  # raises MemoryPlanError when the SRAMs are too small


def test_priority_makes_layer_1_ready_earlier_than_fifo_in_every_step(default_runs):
    prio, fifo = default_runs["priority"].steps, default_runs["fifo"].steps
    assert len(prio) == len(fifo) == 100
    for p, f in zip(prio, fifo, strict=True):
        assert 0 < p.layer1_ready_cycle < f.layer1_ready_cycle, p.step
    assert prio[-1].accuracy >= 0.90


def _sends(res, node: int, step: int) -> dict[int, list[int]]:
    """Sent cycles (NIC_TX ends) per layer of ``node``'s exchange in ``step``."""
    out: dict[int, list[int]] = {}
    for iv in res.intervals:
        if iv.node == node and iv.step == step and iv.engine == rm.Engine.NIC_TX:
            out.setdefault(iv.layer, []).append(iv.end)
    return out


def test_priority_sends_lower_layer_chunks_before_an_upper_layers_last(default_runs):
    res = default_runs["priority"]
    cfg = res.config
    for node in range(cfg.nodes):
        for step in range(cfg.steps):
            sent = _sends(res, node, step)
            ahead = [
                (lower, t)
                for lower in sent
                for t in sent[lower]
                if any(max(sent[up]) > t for up in sent if up > lower)
            ]
            assert ahead, (node, step)


def test_fifo_never_sends_a_lower_chunk_before_an_upper_layers_last(default_runs):
    """The check above is not true of every schedule: fifo sends in production order."""
    res = default_runs["fifo"]
    for step in range(3):
        sent = _sends(res, 0, step)
        for lower in sent:
            for up in (u for u in sent if u > lower):
                assert min(sent[lower]) > max(sent[up]), (step, lower, up)


def test_timeline_marks_exactly_the_overtaking_chunks(default_runs):
    from gradsync.outputs import overtakes

    for schedule, res in default_runs.items():
        marked = {(iv.node, iv.step, iv.layer, iv.chunk) for iv in overtakes(res.intervals)}
        want = set()
        for iv in res.intervals:
            if iv.engine != rm.Engine.NIC_TX:
                continue
            sent = _sends(res, iv.node, iv.step)
            if any(max(sent[up]) > iv.end for up in sent if up > iv.layer):
                want.add((iv.node, iv.step, iv.layer, iv.chunk))
        assert marked == want, schedule
        assert bool(marked) == (schedule == "priority")


def test_train_summary_prints_fifo_and_sequential_and_the_gains(default_runs, capsys):
    steps = 5
    assert main(["train", "--backend", "model", "--steps", str(steps), "--quiet"]) == 0
    text = capsys.readouterr().out

    def means(schedule: str) -> tuple[float, float]:
        r = run(dataclasses.replace(TrainConfig(), schedule=schedule, steps=steps), run_model)
        n = len(r.steps)
        return (
            sum(m.cycles for m in r.steps) / n,
            sum(m.layer1_ready_cycle for m in r.steps) / n,
        )

    table = [line.split() for line in text.splitlines()]
    rows = {w[0]: w for w in table if len(w) == 5 and w[1].isdigit()}
    own = means("priority")
    for name in ("priority", "fifo", "sequential"):
        c, l1 = means(name)
        assert (float(rows[name][1]), float(rows[name][2])) == (round(c), round(l1)), name
        if name != "priority":
            gain = f"priority vs {name}: {c - own[0]:.0f} ({100 * (c - own[0]) / c:.1f} %) fewer"
            assert gain in text
            assert (
                f"layer 1 ready {l1 - own[1]:.0f} ({100 * (l1 - own[1]) / l1:.1f} %) earlier"
                in text
            )
