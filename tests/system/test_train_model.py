"""The main job on the model backend: accuracy, identical weights, trace proofs, outputs, bad input."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from gradsync.cli import main
from gradsync.firmware.experiment import TrainConfig, intervals, run
from gradsync.model import numerics as nx
from gradsync.model_backend import run_model
from gradsync.spec import regmap as rm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig, preset
from tests.readme import readme_schedule

# 64,64,64,10 needs the large preset's SRAMs
COMM_BOUND = preset("large", link_bytes_per_cycle=1, link_latency_cycles=100)
COMM_LAYERS = (64, 64, 64, 10)


@pytest.mark.parametrize("nodes", [2, 4])
def test_training_reaches_90_percent_in_under_a_minute(nodes):
    t0 = time.perf_counter()
    res = run(TrainConfig(nodes=nodes, steps=100, schedule="priority"), run_model)
    wall = time.perf_counter() - t0
    assert wall < 60
    assert res.steps[-1].accuracy >= 0.90
    assert res.steps[-1].loss < 0.5 * res.steps[0].loss
    # every step's weights were checked identical on all nodes by run(); they also changed
    assert not np.array_equal(res.weights[0][0], res.weights[-1][0])


@pytest.fixture(scope="module")
def comm_bound_runs():
    return {
        s: run(
            TrainConfig(nodes=2, steps=2, layers=COMM_LAYERS, schedule=s, hardware=COMM_BOUND),
            run_model,
        )
        for s in ("sequential", "fifo", "priority")
    }


def test_priority_trace_shows_the_scheme(comm_bound_runs):
    res = comm_bound_runs["priority"]
    upper, lower = 2, 1
    for node, recs in enumerate(res.records):
        ivs = intervals(recs, node)
        for step in range(2):
            tx = [iv for iv in ivs if iv.engine == rm.Engine.NIC_TX and iv.step == step]
            tx_upper = [iv for iv in tx if iv.layer == upper]
            tx_lower = [iv for iv in tx if iv.layer == lower]
            first = min(tx_upper, key=lambda iv: iv.start)
            backward_lower = [
                iv
                for iv in ivs
                if iv.engine == rm.Engine.COMPUTE
                and iv.kind in (rm.Kind.DA, rm.Kind.DW)
                and iv.layer == lower
                and iv.step == step
            ]
            assert any(first.start < g.end and first.end > g.start for g in backward_lower)
            last_upper = max(tx_upper, key=lambda iv: iv.start)
            assert max(iv.end for iv in tx_lower) <= last_upper.start
            # and the next step's first forward starts before the upper layer's last chunk is sent
            if step == 0:
                fwd1 = min(
                    iv.start
                    for iv in ivs
                    if iv.kind == rm.Kind.FWD and iv.layer == 1 and iv.step == 1
                )
                assert fwd1 < max(iv.end for iv in tx_upper)


def test_fifo_sends_layers_in_production_order(comm_bound_runs):
    res = comm_bound_runs["fifo"]
    for node, recs in enumerate(res.records):
        tx = [iv for iv in intervals(recs, node) if iv.engine == rm.Engine.NIC_TX and iv.step == 0]
        order = [iv.layer for iv in sorted(tx, key=lambda iv: iv.start)]
        assert order == sorted(order, reverse=True) and order[0] == len(COMM_LAYERS) - 1


def test_sequential_never_overlaps_exchange_with_compute(comm_bound_runs):
    res = comm_bound_runs["sequential"]
    for node, recs in enumerate(res.records):
        ivs = intervals(recs, node)
        comm = [
            iv
            for iv in ivs
            if iv.engine in (rm.Engine.DMA_HI, rm.Engine.DMA_LO, rm.Engine.NIC_TX, rm.Engine.NIC_RX)
        ]
        comp = [iv for iv in ivs if iv.engine in (rm.Engine.COMPUTE, rm.Engine.VECTOR)]
        assert comm and comp
        for c in comm:
            for g in comp:
                assert c.end <= g.start or g.end <= c.start, (c, g)


def test_priority_layer1_ready_strictly_earliest(comm_bound_runs):
    ready = {s: [m.layer1_ready_cycle for m in r.steps] for s, r in comm_bound_runs.items()}
    for k in range(2):
        assert ready["priority"][k] < ready["fifo"][k] < ready["sequential"][k]
    # schedules change timing only, never numbers
    w = [r.weights[-1] for r in comm_bound_runs.values()]
    assert all(np.array_equal(a, b) for x in w[1:] for a, b in zip(w[0], x, strict=True))


def thread_names(trace: dict) -> dict[tuple[int, int], str]:
    """(pid, tid) -> engine name, from the trace's thread_name metadata events."""
    return {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in trace["traceEvents"]
        if e["ph"] == "M" and e["name"] == "thread_name"
    }


def recompute_step(rec: dict, w_raw: list[np.ndarray], step: int) -> list[np.ndarray]:
    """Step ``step`` from the record alone, with the documented integer numerics (N = 2)."""
    from sklearn.datasets import load_digits

    cfg = rec["config"]
    fmt = FixedPointFormat(**cfg["fixed_point"])
    d = load_digits()
    gb = cfg["global_batch"]
    s = int(np.floor(np.log2(gb)))
    lr = int(fmt.quantize(cfg["learning_rate"]))
    per_node = []
    for idx in rec["steps"][step]["batch_indices"]:
        x = fmt.quantize(d.data[idx] * cfg["data"]["input_scale"])
        a1 = nx.relu(nx.gemm(x, w_raw[0], fmt))
        z2 = nx.gemm(a1, w_raw[1], fmt)
        logits = fmt.dequantize(z2)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(idx)), d.target[idx]] -= 1.0
        dz2 = fmt.quantize(p / gb * 2**s)
        dw2 = nx.gemm(a1, dz2, fmt, trans_a=True, extra_shift=s)
        dz1 = nx.relu_backward(nx.gemm(dz2, w_raw[1], fmt, trans_b=True), a1)
        dw1 = nx.gemm(x, dz1, fmt, trans_a=True, extra_shift=s)
        per_node.append((dw1, dw2))
    reduced = [nx.add_saturating(per_node[0][i], per_node[1][i], fmt) for i in range(2)]
    return [nx.sgd_update(w_raw[i], reduced[i], lr, fmt) for i in range(2)]


def test_outputs_follow_the_contract_and_recompute_bit_exactly(tmp_path, capsys):
    out = tmp_path / "run"
    # two layers and a global batch of 64 (the main job's until issue 17): recompute_step
    # spells out a two-layer step by hand
    argv = ["--layers", "64,32,10", "--global-batch", "64", "--lr", "0.25", "--out", str(out)]
    code = main(["train", "--backend", "model", "--nodes", "2", "--steps", "3", *argv])
    assert code == 0
    printed = capsys.readouterr().out
    assert printed.count("step ") >= 3 and "layer1-ready" in printed
    rec = json.loads((out / "results.json").read_text())
    assert rec["format_version"] == 1 and rec["backend"] == "model"
    for key in (
        "nodes",
        "schedule",
        "chunk_bytes",
        "steps",
        "layers",
        "global_batch",
        "learning_rate",
        "seed",
        "fixed_point",
        "data",
        "hardware",
    ):
        assert key in rec["config"]
    assert set(rec["config"]["data"]) >= {"name", "input_scale", "train_indices", "test_indices"}
    assert not set(rec["config"]["data"]["train_indices"]) & set(
        rec["config"]["data"]["test_indices"]
    )
    for st in rec["steps"]:
        assert set(st) >= {
            "step",
            "loss",
            "accuracy",
            "cycles",
            "layer1_ready_cycle",
            "exposed_comm_cycles",
            "batch_indices",
        }
        assert len(st["batch_indices"]) == 2 and all(len(b) == 32 for b in st["batch_indices"])
        assert 0 < st["layer1_ready_cycle"] <= st["cycles"]
    assert rec["totals"]["cycles"] >= sum(s["cycles"] for s in rec["steps"][:-1])
    files = sorted(p.name for p in (out / "weights").iterdir())
    assert files == [f"step_{k:04d}.npz" for k in range(4)]
    for k in range(3):
        w = np.load(out / "weights" / f"step_{k:04d}.npz")
        nxt = np.load(out / "weights" / f"step_{k + 1:04d}.npz")
        assert np.array_equal(w["layer1"], w["layer1_raw"] * 2.0**-10)
        want = recompute_step(rec, [w["layer1_raw"], w["layer2_raw"]], k)
        assert np.array_equal(nxt["layer1_raw"], want[0]) and np.array_equal(
            nxt["layer2_raw"], want[1]
        )
    trace = json.loads((out / "trace.json").read_text())
    xs = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    names = thread_names(trace)
    assert {names[e["pid"], e["tid"]] for e in xs} >= {
        "compute",
        "vector",
        "dma.lo",
        "dma.hi",
        "nic.tx",
        "nic.rx",
        "host",
    }
    assert {e["cat"] for e in xs} <= {"compute", "vector", "dma", "link", "host"}
    sends = [e for e in xs if names[e["pid"], e["tid"]] == "nic.tx"]
    assert all(e["name"].startswith("send L") and e["args"]["bytes"] > 0 for e in sends)
    assert any(e["args"]["kind"] == "dw" for e in xs)
    assert trace["otherData"]["time_unit"] == "cycles"
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "argv, text",
    [
        (["--nodes", "0"], "nodes must be >= 1, not 0"),
        (["--layers", "64,40000,10"], "widest 40000"),
        (["--chunk-bytes", "1048576"], "chunk size 1048576 bytes is larger than the gradient SRAM"),
        (["--chunk-bytes", "6"], "not 6"),
        (["--nodes", "3"], "--global-batch must be a positive multiple of the 3 nodes, not 16"),
        (["--schedule", "nope"], "unknown schedule 'nope'"),
    ],
)
def test_impossible_configs_fail_with_one_clear_message(argv, text, capsys):
    code = main(["train", "--backend", "model", "--steps", "1", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert text in err
    assert len(err.strip().splitlines()) == 1


def test_rtl_config_that_does_not_fit_the_simulated_sram_is_refused_before_any_build(
    capsys, monkeypatch
):
    """The RTL build's SRAM sizes are checked up front: no Verilator build, no simulation."""
    import gradsync.sim.rtl_backend as rb

    def no_build(*a, **kw):
        raise AssertionError("the RTL cluster was built for a configuration that cannot fit")

    monkeypatch.setattr(rb, "build_cluster", no_build)
    argv = ["train", "--backend", "rtl", "--hardware", "small", "--steps", "1"]
    code = main([*argv, "--layers", "64,128,10"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == (
        "gradsync train: layers 64,128,10 (widest 128) with a local batch of 8 need 12192 "
        "scratchpad words but the device has 8192 (--hardware small); try --hardware large"
    )


def test_gemm_longer_than_the_exact_accumulator_is_refused_before_running():
    from gradsync.firmware.training import ConfigError

    big = HardwareConfig(scratchpad_words=1 << 17, gradient_words=1 << 17)
    cfg = TrainConfig(layers=(64, 520, 10), global_batch=16, steps=1, hardware=big)
    with pytest.raises(ConfigError, match="layer width 520 exceeds the 511-term sums the 40-bit"):
        run(cfg, run_model)


USER_SCHEDULE = readme_schedule()  # the README's own example


def test_user_schedule_from_a_file(tmp_path, capsys):
    path = tmp_path / "my_schedule.py"
    path.write_text(USER_SCHEDULE)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--backend",
            "model",
            "--steps",
            "2",
            "--schedule",
            f"{path}:TopFirst",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    trace = json.loads((out / "trace.json").read_text())
    dma = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["cat"] == "dma"]
    names = thread_names(trace)
    assert dma and all(names[e["pid"], e["tid"]] == "dma.hi" for e in dma)


def test_compare_prints_a_row_per_schedule(capsys):
    code = main(
        [
            "compare",
            "--backend",
            "model",
            "--steps",
            "2",
            "--layers",
            "64,64,64,10",
            "--link-bytes-per-cycle",
            "1",
            "--link-latency-cycles",
            "100",
            "--hardware",
            "large",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0
    rows = {line.split()[0]: line.split() for line in text.splitlines()[3:]}
    assert set(rows) == {"sequential", "fifo", "priority"}
    assert float(rows["priority"][2]) < float(rows["fifo"][2]) < float(rows["sequential"][2])


@pytest.mark.parametrize(
    "spec, text",
    [
        ("corrupt=70000", "--link-faults corrupt must be in 0..65535, not 70000"),
        ("seed=0", "--link-faults seed must be in 1..4294967293, not 0"),
        (
            "flip=3",
            "--link-faults takes corrupt=N, drop=N, stall=N, stall-max=N, burst=N, burst-len=N, "
            "frame=N, ack-drop=N, ack-corrupt=N, down-rate=N, down-mean=N, down-at=N, "
            "down-len=N, seed=N, not 'flip=3'",
        ),
        ("drop=lots", "--link-faults drop must be an integer, not 'lots'"),
        (
            ",",
            "--link-faults needs at least one of corrupt=, drop=, stall=, burst=, frame=, "
            "ack-drop=, ack-corrupt=, down-rate=, down-len=",
        ),
        ("3:drop=5", "--link-faults link 3 does not exist: links are 0..1"),
    ],
)
def test_bad_link_fault_specs_are_refused_with_one_message(spec, text, capsys, monkeypatch):
    import gradsync.sim.rtl_backend as rb

    monkeypatch.setattr(rb, "build_cluster", lambda *a, **k: pytest.fail("built for a bad spec"))
    code = main(["train", "--backend", "rtl", "--steps", "1", "--link-faults", spec])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"gradsync train: {text}"


def _cycles_per_step(text: str) -> float:
    return float(text.split(" cycles/step")[0].rsplit(" ", 1)[1])


def test_link_faults_run_on_the_model_backend_and_cost_cycles(capsys):
    """Issue 15: the model backend injects the RTL's fault process (it was refused before)."""
    argv = ["train", "--backend", "model", "--steps", "1", "--no-baselines"]
    assert main(argv) == 0
    clean = _cycles_per_step(capsys.readouterr().out)
    assert main([*argv, "--link-faults", "drop=6000;0:down-at=500,down-len=4000"]) == 0
    faulty = _cycles_per_step(capsys.readouterr().out)
    assert faulty > clean + 4000


def test_link_fault_spec_gives_every_link_its_own_seed():
    from gradsync.sim.rtl_backend import link_faults_from_spec

    assert link_faults_from_spec("drop=600, stall=100 ,seed=0x10", 3) == [
        {"drop_rate": 600, "stall_rate": 100, "stall_max": 16, "seed": 16 + i} for i in range(3)
    ]


def test_compare_both_exchange_formats_side_by_side(capsys):
    """``--grad-format fp32,bf16``: every schedule with each exchange format; the rows are the
    runs' own step means (run again here through ``experiment.run``), bf16 exchange is faster
    on the slow default link, and the gain lines say by how much."""
    import dataclasses

    from gradsync.firmware import experiment
    from gradsync.model_backend import run_model
    from gradsync.spec.formats import BFloat16Format
    from gradsync.spec.hardware import PRESETS

    argv = ["compare", "--format", "bf16", "--grad-format", "fp32,bf16", "--steps", "2",
            "--schedules", "fifo,priority"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("hardware: small with the large preset's SRAMs")
    assert lines[1] == "2 nodes, chunk 512 B, 2 steps, backend model"
    assert lines[2].split() == [
        "schedule", "exchange", "cycles/step", "layer1-ready", "exposed", "comm", "final", "loss"
    ]  # fmt: skip
    rows = {(c[0], c[1]): c for c in (line.split() for line in lines[4:8])}
    assert set(rows) == {(s, f) for s in ("fifo", "priority") for f in ("fp32", "bf16")}
    hw = dataclasses.replace(
        PRESETS["small"],
        scratchpad_words=PRESETS["large"].scratchpad_words,
        gradient_words=PRESETS["large"].gradient_words,
    )
    for (sched, fmt), cols in rows.items():
        cfg = experiment.TrainConfig(
            nodes=2, schedule=sched, steps=2, number_format=BFloat16Format(), grad_format=fmt,
            hardware=hw,
        )  # fmt: skip
        res = experiment.run(cfg, run_model)
        mean = sum(m.cycles for m in res.steps) / 2
        ready = sum(m.layer1_ready_cycle for m in res.steps) / 2
        assert (int(cols[2]), int(cols[3])) == (round(mean), round(ready))
    for sched in ("fifo", "priority"):
        assert int(rows[sched, "bf16"][2]) < 0.7 * int(rows[sched, "fp32"][2])
    assert lines[8].startswith("fifo bf16 exchange vs fp32: ") and "fewer cycles" in lines[8]
    assert lines[9].startswith("priority bf16 exchange vs fp32: ") and len(lines) == 10
