"""One training step's reduced gradients against float64 NumPy backprop.

Tolerance, in LSBs of the operand format (2**-frac_bits), for layer l of L on
N nodes: ``N/2 + 1 + 1.5 * (L - l)``.  Each node's dW is rounded once on
write-back (half an LSB), and the all-reduce adds N of them; the activations
and the loss gradient feeding the dW GEMM are themselves rounded (one LSB
after scaling); every layer the gradient travels down adds the rounding of
dA and of the forward activations it is masked and multiplied with (1.5 LSB
with |W| < 1).  The relative (Frobenius) error must also stay below 8 %.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradsync.firmware import data as digits
from gradsync.firmware.experiment import TrainConfig, build_jobs
from gradsync.firmware.training import plan_memory
from gradsync.model_backend import run_model_cluster
from gradsync.spec import regmap as rm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import PRESETS

FMT = FixedPointFormat()


def float_backprop(x, y, weights):
    acts = [x]
    for i, w in enumerate(weights):
        z = acts[-1] @ w
        acts.append(np.maximum(z, 0.0) if i < len(weights) - 1 else z)
    z = acts[-1]
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    dz = p / len(y)
    grads = [None] * len(weights)
    for i in range(len(weights) - 1, -1, -1):
        grads[i] = acts[i].T @ dz
        if i:
            dz = (dz @ weights[i].T) * (acts[i] > 0)
    return grads


@pytest.mark.parametrize("layers", [(64, 32, 10), (64, 48, 24, 10)])
@pytest.mark.parametrize("nodes", [1, 2, 4])
def test_reduced_gradients_match_float64_backprop(layers, nodes):
    # 64,48,24,10 on one node needs more than the default preset's SRAMs
    cfg = TrainConfig(nodes=nodes, steps=1, layers=layers, hardware=PRESETS["large"])
    data = digits.load(0)
    jobs, _ = build_jobs(cfg, data)
    _, cluster = run_model_cluster(cfg, jobs)
    x = np.concatenate([j.inputs[0] for j in jobs])
    y = np.concatenate([j.labels[0] for j in jobs])
    weights = [FMT.dequantize(FMT.quantize(w)) for w in jobs[0].init_weights]
    want = float_backprop(x, y, weights)
    hw = cfg.hardware
    layout = plan_memory(
        layers, cfg.global_batch // nodes, 2, hw.scratchpad_words, hw.gradient_words
    )
    top = len(layers) - 1
    for i in range(top):
        base = layout.r[i + 1] if nodes > 1 else layout.g[i + 1]
        idx = (base - rm.GRAD_BASE) // FMT.word_bytes
        n = layers[i] * layers[i + 1]
        for dev in cluster.devices:
            got = FMT.dequantize(dev.grad[idx : idx + n]).reshape(layers[i], layers[i + 1])
            tol = (nodes / 2 + 1 + 1.5 * (top - (i + 1))) * FMT.lsb
            assert np.abs(got - want[i]).max() <= tol, f"layer {i + 1}"
            assert np.linalg.norm(got - want[i]) <= 0.08 * np.linalg.norm(want[i])
            assert np.abs(want[i]).max() > 20 * FMT.lsb  # the comparison is not vacuous
