"""Training in bf16 on the model backend: memory plan, one step's gradients, the update.

The references share no code with ``model/fp.py`` or ``ml_dtypes``: float64
NumPy (products of bf16 values and their sums of a few terms are exact or
nearly so), bf16/fp32 rounding by ``BFloat16Format.quantize`` /
``quantize_fp32`` (integer round to nearest even on the float64 bits), and
NumPy ``float32`` with flush-to-zero for the SGD update.
"""

from __future__ import annotations

import dataclasses

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


# --- the bf16 gradient exchange (--grad-format bf16) -------------------------------------

NAN32 = 0x7FC0_0000


def _ftz32(x: np.ndarray) -> np.ndarray:
    return np.where(np.abs(x) < np.float32(2.0**-126), np.copysign(np.float32(0), x), x)


def r_bf16(words: np.ndarray) -> np.ndarray:
    """fp32 words rounded to bf16 (nearest even, ``ml_dtypes``) and widened: fp32 words."""
    import ml_dtypes

    x = _ftz32(np.asarray(words, np.uint32).view(np.float32))
    with np.errstate(invalid="ignore"):
        y = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    return np.where(np.isnan(y), np.uint32(NAN32), y.view(np.uint32)).astype(np.uint32)


def add32(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        s = _ftz32(a.view(np.float32) + b.view(np.float32))
    return np.where(np.isnan(s), np.uint32(NAN32), s.view(np.uint32)).astype(np.uint32)


def words_at(dev, addr: int, n: int) -> np.ndarray:
    """``n`` fp32 words of the gradient SRAM at byte ``addr``."""
    idx = (addr - rm.GRAD_BASE) // BF16.word_bytes
    w = dev.grad[idx : idx + 2 * n]
    return (w[0::2] | (w[1::2] << 16)).astype(np.uint32)


def exchange_step(grad_format: str | None, nodes: int = 2, layers=LAYERS, **kw):
    cfg = TrainConfig(
        nodes=nodes, steps=1, layers=layers, hardware=HW, number_format=BF16,
        grad_format=grad_format, **kw,
    )  # fmt: skip
    jobs, _ = build_jobs(cfg, digits.load(cfg.seed))
    _, cluster = run_model_cluster(cfg, jobs)
    lay = plan_memory_for(
        BF16, layers, cfg.global_batch // nodes, HW.scratchpad_words, HW.gradient_words,
        cfg.grad_format or "fp32",
    )  # fmt: skip
    return cfg, cluster, lay


@pytest.fixture(scope="module")
def two_node_exchanges():
    return {g: exchange_step(g) for g in ("fp32", "bf16")}


def test_bf16_exchange_reduces_to_r_of_r_g0_plus_r_g1_on_both_nodes(two_node_exchanges):
    """2 nodes: R = r(fp32(r(G0) + r(G1))) bit for bit on both (G: each node's own dW,
    still in G after the step), with r = round to bf16 by ``ml_dtypes`` here."""
    _, cluster, lay = two_node_exchanges["bf16"]
    for layer in range(1, len(LAYERS)):
        n = LAYERS[layer - 1] * LAYERS[layer]
        g0, g1 = (words_at(d, lay.g[layer], n) for d in cluster.devices)
        want = r_bf16(add32(r_bf16(g0), r_bf16(g1)))
        for dev in cluster.devices:
            np.testing.assert_array_equal(words_at(dev, lay.r[layer], n), want)
        assert np.count_nonzero(r_bf16(g0) != g0) > n // 2  # the rounding is not vacuous


def test_bf16_exchange_is_within_its_bound_of_the_fp32_exchange(two_node_exchanges):
    """One step's reduced gradient with bf16 exchange against fp32 exchange (same G).

    Three roundings to bf16 (each operand, then the sum), each within half an ulp of 8
    significant bits (at most 2**-8 relative), and the fp32 adds within 2**-24:
    elementwise ``|R16 - R32| <= (2**-7 + 2**-15) (|G0| + |G1|)``. Measured (seed 0, the
    main job's three layers): worst element 1.66 * 2**-8 (|G0| + |G1|); relative Frobenius
    error 0.24 %, 0.21 %, 0.28 %; 1 - cosine <= 3.0e-6. Asserted: the bound, relative
    error <= 2**-8 (0.39 %) and 1 - cosine <= 1e-5.
    """
    results = []
    for layer in range(1, len(LAYERS)):
        n = LAYERS[layer - 1] * LAYERS[layer]
        r32, r16 = (
            fp32_at(two_node_exchanges[g][1].devices[0], two_node_exchanges[g][2].r[layer], n)
            for g in ("fp32", "bf16")
        )
        g0, g1 = (fp32_at(d, two_node_exchanges["fp32"][2].g[layer], n)
                  for d in two_node_exchanges["fp32"][1].devices)  # fmt: skip
        bound = (2.0**-7 + 2.0**-15) * (np.abs(g0) + np.abs(g1))
        assert np.all(np.abs(r16 - r32) <= bound), f"layer {layer}"
        assert not np.array_equal(r16, r32)
        results.append(agreement(r16, r32))
    assert max(r[2] for r in results) <= 2.0**-8, results
    assert max(r[0] for r in results) <= 1e-5, results


def test_bf16_exchange_ring_reduces_each_segment_in_ring_order_and_all_replicas_agree():
    """4 nodes, ring: segment j of a chunk is r(r(G_{j+3}) + r(r(G_{j+2}) + r(r(G_{j+1}) +
    r(G_j)))) on every node, every ring piece a multiple of 8 bytes."""
    from gradsync.firmware.collectives import segments
    from gradsync.firmware.training import split_chunks
    from gradsync.spec.link import auto_chunk_bytes

    cfg, cluster, lay = exchange_step("bf16", nodes=4, chunk_bytes=None)
    devs = cluster.devices
    for layer in range(1, len(LAYERS)):
        n = LAYERS[layer - 1] * LAYERS[layer]
        gs = [words_at(d, lay.g[layer], n) for d in devs]
        want = np.empty(n, np.uint32)
        chunk = auto_chunk_bytes(HW.link, 4, bf16=True)
        for off, length in split_chunks(lay.grad_bytes[layer], chunk):
            for j, (s_off, s_len) in enumerate(segments(length, 4, 8)):
                assert s_len % 8 == 0
                sl = slice((off + s_off) // 4, (off + s_off + s_len) // 4)
                acc = r_bf16(gs[j][sl])
                for k in range(1, 4):
                    acc = r_bf16(add32(r_bf16(gs[(j + k) % 4][sl]), acc))
                want[sl] = acc
        for dev in devs:
            np.testing.assert_array_equal(words_at(dev, lay.r[layer], n), want)
            m = LAYERS[layer - 1] * LAYERS[layer]
            np.testing.assert_array_equal(
                words_at(dev, lay.master[layer], m), words_at(devs[0], lay.master[layer], m)
            )


def test_bf16_exchange_auto_chunk_is_twice_the_fp32_bytes_of_the_same_packets():
    """``--chunk-bytes auto``: a bf16 chunk has the fp32 chunk's packets and twice its fp32
    bytes, so the run sends as many packets, of half the bytes (PERF_TX_*)."""
    from gradsync.spec import link as lk
    from gradsync.spec.link import auto_chunk_bytes

    runs = {}
    for g in ("fp32", "bf16"):
        cfg = TrainConfig(nodes=2, steps=1, layers=LAYERS, hardware=HW, number_format=BF16,
                          grad_format=g, chunk_bytes=None)  # fmt: skip
        jobs, _ = build_jobs(cfg, digits.load(0))
        runs[g] = run_model_cluster(cfg, jobs)
    chunk32 = auto_chunk_bytes(HW.link, 4)
    assert runs["fp32"][0].nodes[0].chunk_bytes == chunk32
    assert runs["bf16"][0].nodes[0].chunk_bytes == 2 * chunk32
    # a full chunk is the same packets; the 3392 gradients need half the packets overall
    full = HW.link.max_payload_bytes
    assert chunk32 % full == 0 and chunk32 // full == len(lk.packet_payloads(chunk32, HW.link))
    sizes = [4 * a * b for a, b in zip(LAYERS[:-1], LAYERS[1:], strict=True)]
    packets32 = sum(-(-n // full) for n in sizes)  # 8192, 4096, 1280 bytes: 32 + 16 + 5
    packets16 = sum(-(-n // (2 * full)) for n in sizes)  # 16 + 8 + 3
    assert (packets32, packets16) == (53, 27)
    for d32, d16 in zip(runs["fp32"][1].devices, runs["bf16"][1].devices, strict=True):
        assert (d32.perf["tx_pkts"], d16.perf["tx_pkts"]) == (packets32, packets16)
        assert 2 * d16.perf["tx_bytes"] == d32.perf["tx_bytes"] == 4 * 3392  # every gradient
        assert d16.perf["rx_bytes"] == d32.perf["rx_bytes"]  # fp32 bytes applied


def test_odd_gradient_is_padded_to_8_bytes_and_the_pad_stays_zero():
    """Layers 64,5,7,10: layer 2 has 35 fp32 elements (140 bytes), padded to 144 with a
    bf16 exchange (140 with fp32); 4 nodes exchange it and the pad stays 0 everywhere."""
    layers = (64, 5, 7, 10)
    fp32_plan = plan_memory_for(BF16, layers, 4, HW.scratchpad_words, HW.gradient_words)
    assert fp32_plan.grad_bytes[1:] == [1280, 140, 280]
    cfg, cluster, lay = exchange_step("bf16", nodes=4, layers=layers, chunk_bytes=64)
    assert lay.grad_bytes[1:] == [1280, 144, 280]
    for dev in cluster.devices:
        for buf in (lay.g[2], lay.r[2]):
            assert words_at(dev, buf + 140, 1).tolist() == [0]
        np.testing.assert_array_equal(
            words_at(dev, lay.r[2], 35), words_at(cluster.devices[0], lay.r[2], 35)
        )
    assert np.any(words_at(cluster.devices[0], lay.r[2], 35) != 0)


def test_bf16_exchange_refusals_name_the_value():
    from gradsync.firmware.training import ConfigError, NodeFirmware
    from gradsync.spec.limits import LimitError

    base = dict(nodes=2, steps=1, layers=LAYERS, hardware=HW, number_format=BF16)
    with pytest.raises(
        LimitError, match=r"chunk size must be a multiple of 8 bytes .*bf16, not 12"
    ):
        TrainConfig(**base, grad_format="bf16", chunk_bytes=12).validate()
    TrainConfig(**base, grad_format="fp32", chunk_bytes=12).validate()  # fp32 takes 4-byte ones
    with pytest.raises(LimitError, match="grad_format must be fp32 or bf16, not 'bf8'"):
        TrainConfig(**base, grad_format="bf8").validate()
    with pytest.raises(LimitError, match="grad_format must be left out with a fixed-point"):
        TrainConfig(nodes=2, steps=1, grad_format="bf16").validate()
    # the firmware reads the device's format: a fixed-point device refuses a bf16 exchange
    cfg = TrainConfig(nodes=2, steps=1)
    jobs, _ = build_jobs(cfg, digits.load(0))
    jobs = [dataclasses.replace(j, grad_format="bf16") for j in jobs]
    with pytest.raises(ConfigError, match="grad_format bf16 needs a bf16 device"):
        run_model_cluster(cfg, jobs)
    assert NodeFirmware  # the class that raises it
