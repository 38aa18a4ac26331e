"""bf16 training on two RTL nodes under Verilator, checked against the golden model.

Issue 18: the RTL cluster built for ``BFloat16Format`` (bf16 SRAM words, fp32
gradients and master weights in the gradient SRAM, the receiver's fp32
reduce-add) runs the same firmware as the model backend; ``sim/check.py``
compares every weight word, every trace record and its cycle, and the losses.
Small layers and two steps keep the run short; the ``large`` preset holds the
fp32 gradient buffers.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradsync.firmware import data as digits
from gradsync.firmware.experiment import TrainConfig, build_jobs
from gradsync.spec.formats import BFloat16Format
from gradsync.spec.hardware import preset

pytest.importorskip("gradsync.hw.cluster")

from gradsync.sim.check import check_run  # noqa: E402
from gradsync.sim.rtl_backend import run_rtl  # noqa: E402

BF16_SMALL = TrainConfig(
    nodes=2,
    steps=2,
    global_batch=16,
    layers=(64, 16, 10),
    chunk_bytes=256,
    schedule="priority",
    number_format=BFloat16Format(),
    hardware=preset("large"),
)


@pytest.mark.rtl
@pytest.mark.slow
def test_bf16_two_nodes_match_model_bit_and_cycle_exactly(tmp_path):
    cfg = BF16_SMALL
    jobs, _ = build_jobs(cfg, digits.load(cfg.seed))
    res = run_rtl(cfg, jobs, work_dir=tmp_path, progress=False, max_cycles=3_000_000)
    rep = check_run(cfg, res)
    assert rep.weight_mismatches == 0 and rep.event_mismatches == 0, rep.details
    assert rep.loss_mismatches == 0, rep.details
    assert rep.cycle_differences == 0, "\n".join(rep.details)
    assert rep.weight_arrays == 2 * 3 * 2 and rep.records > 100
    # the snapshots are bf16 words (the scratchpad's working copy) and training moved them
    w0, w2 = (np.asarray(res.weights[(0, s, 1)]) for s in (0, 2))
    assert w0.shape == (64 * 16,) and w0.min() >= 0 and w2.max() <= 0xFFFF
    assert not np.array_equal(w0, w2)
    # both nodes hold the same weights after the exchange (data parallel)
    np.testing.assert_array_equal(res.weights[(0, 2, 2)], res.weights[(1, 2, 2)])
