"""bf16 training on two RTL nodes under Verilator, checked against the golden model.

Issue 18: the RTL cluster built for ``BFloat16Format`` (bf16 SRAM words, fp32
gradients and master weights in the gradient SRAM, the receiver's fp32
reduce-add) runs the same firmware as the model backend; ``sim/check.py``
compares every weight word, every trace record and its cycle, and the losses.
Small layers and two steps keep the run short; the ``large`` preset holds the
fp32 gradient buffers. ``--grad-format bf16`` (the exchange in bf16, half the
link bytes) runs on the same build, its slow link set at run time.

The tests share one Verilator build (``xdist_group``): one worker builds it and
runs them in turn while the other goes on with other tests.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gradsync.firmware import data as digits
from gradsync.firmware.experiment import TrainConfig, build_jobs, intervals
from gradsync.spec import regmap as rm
from gradsync.spec.formats import BFloat16Format
from gradsync.spec.hardware import build_config, preset
from gradsync.spec.link import chunk_tx_cycles, wire_bytes

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


#: The bf16 exchange on a communication-bound link (1 byte/cycle, latency 100, set at run time).
BF16_EXCHANGE = dataclasses.replace(
    BF16_SMALL,
    grad_format="bf16",
    hardware=dataclasses.replace(preset("large"), link_bytes_per_cycle=1, link_latency_cycles=100),
)


def _run_exactly(cfg: TrainConfig, tmp_path):
    """(RTL result, check report) of ``cfg`` on 2 RTL nodes: weights, events, losses and
    cycles equal the golden model's."""
    jobs, _ = build_jobs(cfg, digits.load(cfg.seed))
    res = run_rtl(cfg, jobs, work_dir=tmp_path, progress=False, max_cycles=3_000_000)
    rep = check_run(cfg, res)
    assert rep.weight_mismatches == 0 and rep.event_mismatches == 0, rep.details
    assert rep.loss_mismatches == 0, rep.details
    assert rep.cycle_differences == 0, "\n".join(rep.details)
    return res, rep


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.xdist_group("bf16_cluster2_large")
def test_bf16_two_nodes_match_model_bit_and_cycle_exactly(tmp_path):
    cfg = BF16_SMALL
    res, rep = _run_exactly(cfg, tmp_path)
    assert rep.weight_arrays == 2 * 3 * 2 and rep.records > 100
    # the snapshots are bf16 words (the scratchpad's working copy) and training moved them
    w0, w2 = (np.asarray(res.weights[(0, s, 1)]) for s in (0, 2))
    assert w0.shape == (64 * 16,) and w0.min() >= 0 and w2.max() <= 0xFFFF
    assert not np.array_equal(w0, w2)
    # both nodes hold the same weights after the exchange (data parallel)
    np.testing.assert_array_equal(res.weights[(0, 2, 2)], res.weights[(1, 2, 2)])


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.xdist_group("bf16_cluster2_large")
def test_bf16_exchange_matches_model_and_puts_half_the_bytes_on_the_link(tmp_path):
    """``grad_format="bf16"``: every gradient send is a BF16 descriptor; the RTL's packing,
    widening and reduce-add equal the model's bit for bit and cycle for cycle, each chunk's
    link time is that of half its bytes, and both nodes end with the same weights."""
    cfg = BF16_EXCHANGE
    assert build_config(cfg.hardware) == build_config(BF16_SMALL.hardware)  # the same build
    res, _ = _run_exactly(cfg, tmp_path)
    for node in (0, 1):
        tx = [
            iv for iv in intervals(res.nodes[node].records, node) if iv.engine == rm.Engine.NIC_TX
        ]
        assert len(tx) >= 6
        for iv in tx:  # aux: the descriptor's LENGTH in fp32 bytes; the link carries half
            wire = wire_bytes(iv.aux, bf16=True)
            assert iv.end - iv.start == chunk_tx_cycles(wire, cfg.hardware.link), iv
            assert iv.end - iv.start < chunk_tx_cycles(iv.aux, cfg.hardware.link) * 0.6
    for layer in (1, 2):
        np.testing.assert_array_equal(res.weights[(0, 2, layer)], res.weights[(1, 2, layer)])
