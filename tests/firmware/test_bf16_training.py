"""Training in bf16 on the model backend: memory plan, one step's gradients, the update.

The references share no code with ``model/fp.py`` or ``ml_dtypes``: float64
NumPy (products of bf16 values and their sums of a few terms are exact or
nearly so), bf16/fp32 rounding by ``BFloat16Format.quantize`` /
``quantize_fp32`` (integer round to nearest even on the float64 bits), and
NumPy ``float32`` with flush-to-zero for the SGD update.
"""

from __future__ import annotations

import numpy as np
import pytest

from gradsync.firmware import data as digits
from gradsync.firmware.experiment import TrainConfig, build_jobs
from gradsync.firmware.training import MemoryPlanError, plan_memory, plan_memory_for
from gradsync.model_backend import run_model_cluster
from gradsync.spec import regmap as rm
from gradsync.spec.formats import BFloat16Format, FixedPointFormat
from gradsync.spec.hardware import PRESETS, preset

BF16 = BFloat16Format()
FIXED = FixedPointFormat()
LAYERS = (64, 32, 32, 10)  # the README's main job
#: the main job's link on SRAMs large enough for fp32 gradients and master weights
HW = preset("large", link_bytes_per_cycle=1, link_latency_cycles=100)
U = 2.0**-24  # fp32 unit roundoff


def b16(v: np.ndarray) -> np.ndarray:
    """float64 -> the nearest bf16 value (float64), ties to even."""
    return BF16.dequantize(BF16.quantize(v))


def f32(v: np.ndarray) -> np.ndarray:
    return BF16.dequantize_fp32(BF16.quantize_fp32(v))


def working_copy(w: np.ndarray) -> np.ndarray:
    """The device's bf16 weights: the init rounded to fp32 (master), then to bf16."""
    return b16(f32(w))


def softmax_grad(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return p


def backprop(x, y, weights, batch: int, rounding=lambda v: v):
    """(dW, activations, dZ) of every layer (float64) for inputs ``x``, labels ``y``, loss averaged over ``batch``.

    ``rounding`` is applied where the device stores a value in the scratchpad
    (inputs, activations, dZ, dA): identity for the plain float64 backprop,
    :func:`b16` to follow the bf16 device's storage roundings.
    """
    acts = [rounding(x)]
    for i, w in enumerate(weights):
        z = rounding(acts[-1] @ w)
        acts.append(np.maximum(z, 0.0) if i < len(weights) - 1 else z)
    dz = rounding(softmax_grad(acts[-1], y) / batch)
    grads, dzs = [None] * len(weights), [None] * len(weights)
    for i in range(len(weights) - 1, -1, -1):
        grads[i], dzs[i] = acts[i].T @ dz, dz
        if i:
            dz = rounding(dz @ weights[i].T) * (acts[i] > 0)
    return grads, acts, dzs


def one_step(fmt, nodes: int = 2, seed: int = 0):
    cfg = TrainConfig(
        nodes=nodes, steps=1, layers=LAYERS, hardware=HW, number_format=fmt, seed=seed
    )
    jobs, _ = build_jobs(cfg, digits.load(seed))
    _, cluster = run_model_cluster(cfg, jobs)
    lay = plan_memory_for(
        fmt, LAYERS, cfg.global_batch // nodes, HW.scratchpad_words, HW.gradient_words
    )
    return cfg, jobs, cluster, lay


def fp32_at(dev, addr: int, n: int) -> np.ndarray:
    """``n`` fp32 elements of the gradient SRAM at byte ``addr``, as float64."""
    idx = (addr - rm.GRAD_BASE) // BF16.word_bytes
    return BF16.dequantize_fp32(BF16.join_fp32(dev.grad[idx : idx + 2 * n]))


def reduced(dev, lay, fmt, layer: int) -> np.ndarray:
    n_in, n_out = LAYERS[layer - 1], LAYERS[layer]
    if fmt is BF16:
        return fp32_at(dev, lay.r[layer], n_in * n_out).reshape(n_in, n_out)
    idx = (lay.r[layer] - rm.GRAD_BASE) // fmt.word_bytes
    return fmt.dequantize(dev.grad[idx : idx + n_in * n_out]).reshape(n_in, n_out)


def agreement(got: np.ndarray, want: np.ndarray) -> tuple[float, float, float]:
    """(1 - cosine similarity, norm ratio - 1, relative Frobenius error)."""
    cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    ratio = float(np.linalg.norm(got) / np.linalg.norm(want))
    return 1.0 - cos, ratio - 1.0, float(np.linalg.norm(got - want) / np.linalg.norm(want))


# --- the memory plan ------------------------------------------------------------------


def test_bf16_plan_holds_fp32_gradients_and_master_weights_outside_the_window():
    lay = plan_memory_for(BF16, LAYERS, 8, HW.scratchpad_words, HW.gradient_words)
    sizes = [a * b for a, b in zip(LAYERS[:-1], LAYERS[1:], strict=True)]  # 2048, 1024, 320
    assert lay.grad_bytes[1:] == [4 * n for n in sizes]  # fp32 elements, 4-byte aligned
    assert lay.grad_window_bytes == 2 * 4 * sum(sizes)  # G and R of every layer: the DMA window
    want_master = [rm.GRAD_BASE + lay.grad_window_bytes + 4 * sum(sizes[:i]) for i in range(3)]
    assert lay.master[1:] == want_master
    # the scratchpad is as in 16-bit fixed point: bf16 words
    fixed = plan_memory(LAYERS, 8, 2, HW.scratchpad_words, HW.gradient_words)
    assert (lay.w, lay.act, lay.dz) == (fixed.w, fixed.act, fixed.dz) and fixed.master == []


def test_bf16_plan_on_the_small_preset_names_the_words_it_needs():
    small = PRESETS["small"]
    # (G + R + master) x 3392 weights x 4 bytes / 2 bytes per SRAM word
    with pytest.raises(MemoryPlanError, match=r"need 20352 gradient SRAM words .* has 8192"):
        plan_memory_for(BF16, LAYERS, 8, small.scratchpad_words, small.gradient_words)


# --- one step's reduced gradients -----------------------------------------------------


@pytest.mark.parametrize(("nodes", "seed"), [(2, 0), (2, 1), (4, 2)])
def test_reduced_gradients_match_float64_with_the_device_roundings(nodes, seed):
    """dW after the exchange (fp32, read from R) against float64 NumPy backprop that rounds
    to bf16 where the device stores in the scratchpad, on the same bf16 weights and batch.

    What is left is fp32 arithmetic: each node's dW element sums K = 8 exact products in
    fp32 (error <= gamma(K-1) sum |a dz|), and the ring's reduce-add adds N of them in fp32
    (gamma(N-1) more), so ``|dW - ref| <= (K + N) u (|A|^T |dZ|)`` with u = 2**-24 (Higham,
    3.1). Measured (seeds 0-4, 2 nodes): relative Frobenius error <= 1.2e-8, 1 - cosine
    <= 2.3e-16; asserted: the elementwise bound, relative error <= 2**-20.
    """
    cfg, jobs, cluster, lay = one_step(BF16, nodes, seed)
    weights = [working_copy(w) for w in jobs[0].init_weights]
    want = [np.zeros_like(w) for w in weights]
    bound = [np.zeros_like(w) for w in weights]
    k = cfg.global_batch // nodes
    for job in jobs:
        grads, acts, dzs = backprop(job.inputs[0], job.labels[0], weights, cfg.global_batch, b16)
        for i in range(len(weights)):
            want[i] += grads[i]
            bound[i] += (k + nodes) * U * (np.abs(acts[i]).T @ np.abs(dzs[i]))
    for dev in cluster.devices:
        for layer in range(1, len(LAYERS)):
            got = reduced(dev, lay, BF16, layer)
            w = want[layer - 1]
            assert np.all(np.abs(got - w) <= bound[layer - 1]), f"layer {layer}"
            assert agreement(got, w)[2] <= 2.0**-20, f"layer {layer}"
            assert np.abs(w).max() > 1e-3  # not vacuous


def test_reduced_gradients_against_plain_float64_bf16_and_fixed_point():
    """bf16 and Q5.10 against the same plain float64 backprop (no rounding anywhere), seed 0.

    Measured (1 - cosine, |norm ratio - 1|, relative error), worst layer over both nodes:
    bf16 2.3e-6, 4.0e-4, 0.21 %; Q5.10 1.2e-3, 5.6e-3, 4.9 %. Asserted for bf16, and seen
    to fail for Q5.10: 1 - cosine <= 1e-5 and |ratio - 1| <= 1e-3 on every layer.

    Not every batch is this close: bf16 rounds an activation to 8 significant bits
    (2**-9 relative), coarser than Q5.10's 2**-11 absolute for values above 1/4, so a
    layer-2 pre-activation that close to zero may flip its ReLU in bf16 and not in float64;
    with seeds 1 and 2 one does, and layers 1-2 then differ by 7-10 % (Q5.10: 2-3 %).
    The top layer has no mask below it: bf16 0.21-0.33 % there on seeds 0-2, Q5.10
    0.9-1.5 %, both asserted against 2**-7 (0.78 %) in the loop below.
    """
    results = {}
    for fmt in (BF16, FIXED):
        cfg, jobs, cluster, lay = one_step(fmt)
        if fmt is BF16:
            weights = [working_copy(w) for w in jobs[0].init_weights]
        else:
            weights = [fmt.dequantize(fmt.quantize(w)) for w in jobs[0].init_weights]
        x = np.concatenate([j.inputs[0] for j in jobs])
        y = np.concatenate([j.labels[0] for j in jobs])
        want, _, _ = backprop(x, y, weights, cfg.global_batch)
        results[fmt.name] = [
            agreement(reduced(dev, lay, fmt, layer), want[layer - 1])
            for dev in cluster.devices
            for layer in range(1, len(LAYERS))
        ]
    for name, tight in (("bf16", True), ("fixed", False)):
        worst_cos = max(r[0] for r in results[name])
        worst_ratio = max(abs(r[1]) for r in results[name])
        assert (worst_cos <= 1e-5 and worst_ratio <= 1e-3) == tight, (name, worst_cos, worst_ratio)
    top = [r[2] for r in results["bf16"][2::3]], [r[2] for r in results["fixed"][2::3]]
    assert max(top[0]) <= 2.0**-7 < min(top[1]), top


# --- the update: fp32 master weights, bf16 working copy ----------------------------------


def test_update_is_fp32_sgd_on_master_weights_then_rounded_to_the_working_copy():
    """After one step every node holds W32' = fl(W32 - fl(lr * G)) (NumPy float32, flushed)
    as master and its bf16 rounding in the scratchpad, and W32 is the fp32 init."""
    cfg, jobs, cluster, lay = one_step(BF16)
    lr = np.float32(f32(np.array(cfg.learning_rate))[()])
    for dev in cluster.devices:
        for layer in range(1, len(LAYERS)):
            n = LAYERS[layer - 1] * LAYERS[layer]
            g = reduced(dev, lay, BF16, layer).reshape(-1).astype(np.float32)
            w0 = f32(jobs[0].init_weights[layer - 1]).reshape(-1).astype(np.float32)
            with np.errstate(all="ignore"):
                step = ftz(lr * g)
                want = ftz(w0 - step)
            got = fp32_at(dev, lay.master[layer], n)
            np.testing.assert_array_equal(got, want.astype(np.float64))
            idx = (lay.w[layer] - rm.SCRATCH_BASE) // BF16.word_bytes
            copy = BF16.dequantize(dev.scratch[idx : idx + n])
            np.testing.assert_array_equal(copy, b16(want.astype(np.float64)))
            assert not np.array_equal(want, w0)  # the step changed the weights


def ftz(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < np.float32(2.0**-126), np.copysign(np.float32(0), x), x)
