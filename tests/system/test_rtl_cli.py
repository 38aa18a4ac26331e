"""`gradsync train --backend rtl --check --out DIR`: the main job's outputs on RTL equal the model's.

The output contract (shared/OUTPUTS.md) does not depend on the backend: the
same configuration run on the golden model must leave the same
``results.json`` (except the backend's name and wall-clock figures), the same
weights per step bit for bit and the same ``trace.json`` event for event.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from gradsync.cli import main

pytest.importorskip("gradsync.hw.cluster")

ARGS = [
    "train", "--nodes", "2", "--steps", "2", "--global-batch", "16", "--layers", "64,16,10",
    "--chunk-bytes", "256", "--schedule", "priority", "--quiet", "--no-progress",
]
WALL_CLOCK = ("wall_seconds", "simulated_cycles_per_second")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for backend in ("rtl", "model"):
        d = tmp_path_factory.mktemp(backend)
        # the same flags on both backends (the RTL run also checks itself against the model):
        # one default hardware preset, so the same cycles
        check = ["--check"] if backend == "rtl" else []
        code = main([*ARGS, *check, "--backend", backend, "--out", str(d)])
        assert code == 0, backend
        out[backend] = d
    return out


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_run_writes_every_output(runs):
    rtl = runs["rtl"]
    for name in ("results.json", "trace.json", "timeline.png"):
        assert (rtl / name).stat().st_size > 0, name
    assert (rtl / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    steps = sorted(p.name for p in (rtl / "weights").iterdir())
    assert steps == ["step_0000.npz", "step_0001.npz", "step_0002.npz"]


@pytest.mark.rtl
@pytest.mark.slow
def test_results_json_equal_to_the_model_backend(runs):
    rtl, model = (json.loads((runs[b] / "results.json").read_text()) for b in ("rtl", "model"))
    assert rtl["backend"] == "rtl" and model["backend"] == "model"
    for key in WALL_CLOCK:
        assert rtl["totals"].pop(key) > 0
        model["totals"].pop(key)
    rtl.pop("backend")
    model.pop("backend")
    record = rtl.pop("rtl")  # the RTL run's own record: build, simulation, link/NIC counters
    assert record["link_faults"] == [] and record["sim_seconds"] > 0
    links, nodes = record["counters"]["links"], record["counters"]["nodes"]
    assert len(links) == len(nodes) == 2
    assert all(c["corrupted"] == c["dropped"] == 0 and c["packets"] > 0 for c in links)
    assert all(c["tx_retransmits"] == 0 and c["tx_packets"] == c["rx_packets"] > 0 for c in nodes)
    assert rtl == model
    assert rtl["totals"]["cycles"] > 0 and len(rtl["steps"]) == 2


@pytest.mark.rtl
@pytest.mark.slow
def test_weights_bit_identical_to_the_model_backend(runs):
    for k in range(3):
        a = np.load(runs["rtl"] / "weights" / f"step_{k:04d}.npz")
        b = np.load(runs["model"] / "weights" / f"step_{k:04d}.npz")
        assert sorted(a.files) == sorted(b.files) == [
            "layer1", "layer1_raw", "layer2", "layer2_raw"]
        for name in a.files:
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), (k, name)


@pytest.mark.rtl
@pytest.mark.slow
def test_trace_json_identical_to_the_model_backend(runs):
    rtl, model = (json.loads((runs[b] / "trace.json").read_text()) for b in ("rtl", "model"))
    ev_r = [e for e in rtl["traceEvents"] if e["ph"] == "X"]
    ev_m = [e for e in model["traceEvents"] if e["ph"] == "X"]
    assert len(ev_r) > 100
    for i, (a, b) in enumerate(zip(ev_r, ev_m, strict=True)):
        assert a == b, f"event {i}: rtl {a} != model {b}"
    names = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in rtl["traceEvents"]
        if e["ph"] == "M" and e["name"] == "thread_name"
    }
    kinds = {names[e["pid"], e["tid"]] for e in ev_r}
    assert {"compute", "vector", "dma.hi", "nic.tx", "nic.rx", "host"} <= kinds


@pytest.mark.rtl
@pytest.mark.slow
def test_link_faults_from_the_cli_are_recovered_and_checked(runs, tmp_path, capsys):
    """--link-faults: the NICs resend what the links corrupt and drop; --check still passes
    (weights, losses and event order identical to the golden model, cycles not compared)."""
    out = tmp_path / "faulty"
    argv = [*ARGS, "--check", "--backend", "rtl", "--out", str(out),
            "--link-faults", "corrupt=6000,drop=6000,seed=11"]
    capsys.readouterr()
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "check OK against the golden model" in text
    assert "0 cycle differences" in text  # the model injects the same faults
    record = json.loads((out / "results.json").read_text())["rtl"]
    assert record["link_faults"] == [
        {"corrupt_rate": 6000, "drop_rate": 6000, "seed": 11},
        {"corrupt_rate": 6000, "drop_rate": 6000, "seed": 12},
    ]
    links, nodes = record["counters"]["links"], record["counters"]["nodes"]
    faults = sum(c["corrupted"] + c["dropped"] for c in links)
    assert faults > 0 and sum(c["tx_retransmits"] for c in nodes) >= faults
    assert f"links: {sum(c['packets'] for c in links)} packets" in text
    for k in range(3):  # the weights of the fault-free run, bit for bit
        a = np.load(out / "weights" / f"step_{k:04d}.npz")
        b = np.load(runs["rtl"] / "weights" / f"step_{k:04d}.npz")
        assert all(np.array_equal(a[n], b[n]) for n in b.files)
