"""Longer model-backend runs: larger rings, odd node counts, automatic chunks (marked slow)."""

from __future__ import annotations

import pytest

from gradsync.firmware.experiment import TrainConfig, run
from gradsync.model_backend import run_model
from gradsync.spec.hardware import PRESETS


@pytest.mark.slow
@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(nodes=8, steps=100, schedule="priority"),
        TrainConfig(nodes=3, steps=100, global_batch=48, schedule="fifo", chunk_bytes=None),
        # three hidden layers need more gradient SRAM than the default preset has
        TrainConfig(
            nodes=4,
            steps=100,
            schedule="sequential",
            layers=(64, 48, 24, 10),
            global_batch=64,  # the batch this case was written for (the default is now 16)
            hardware=PRESETS["large"],
        ),
    ],
    ids=["8-ring-priority", "3-ring-fifo-auto", "4-ring-sequential-3-layers"],
)
def test_longer_runs_reach_90_percent(cfg):
    res = run(cfg, run_model)
    assert res.steps[-1].accuracy >= 0.90
    assert all(m.layer1_ready_cycle > 0 for m in res.steps)
