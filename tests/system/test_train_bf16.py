"""``gradsync train --format bf16`` on the model backend: accuracy, the record, refusals.

The README's main job (``--layers 64,32,32,10``, 2 nodes, batch 16, lr 0.25)
needs 20352 gradient SRAM words in bf16 (fp32 gradients G and R, fp32 master
weights) and the ``small`` preset has 8192, so these runs take ``--hardware
large`` with the small preset's link (1 byte/cycle, 100 cycles latency).
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from gradsync.cli import main
from gradsync.spec import regmap as rm
from gradsync.spec.formats import BFloat16Format

BF16 = BFloat16Format()
MAIN_JOB_BF16 = [
    "train",
    "--backend",
    "model",
    "--format",
    "bf16",
    "--hardware",
    "large",
    "--link-bytes-per-cycle",
    "1",
    "--link-latency-cycles",
    "100",
    "--quiet",
    "--no-baselines",
]


def held_out_accuracy(printed: str) -> float:
    return float(re.search(r"held-out accuracy ([\d.]+)%", printed)[1]) / 100


def test_bf16_main_job_reaches_94_percent(capsys):
    """Issue 18's target, >= 94 % held-out accuracy, after 300 steps: 96.66 % (Q5.10 96.38 %).

    After the main job's 100 steps bf16 reaches 90.53 % (Q5.10 91.92 %), and so does
    exact arithmetic: float64 SGD from the same initial weights on the same batches ends
    at 89.97 % (held-out accuracy of its weights rounded to bf16). 100 steps of 16 samples
    see 1600 samples, barely one epoch of the 1437 training digits; the lr is not the
    limit (float64 at 100 steps: 84.4 % at lr 0.1, 87.2 % at 0.15, 74.4 % at 0.5).
    """
    code = main([*MAIN_JOB_BF16, "--steps", "300"])
    printed = capsys.readouterr().out
    assert code == 0
    assert held_out_accuracy(printed) >= 0.94


def test_bf16_record_names_the_format_and_decodes_the_weights(tmp_path, capsys):
    out = tmp_path / "run"
    code = main([*MAIN_JOB_BF16, "--steps", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((out / "results.json").read_text())["config"]
    assert cfg["format"]["name"] == "bf16" and cfg["format"]["gradient"] == "fp32"
    assert cfg["fixed_point"] is None and cfg["grad_format"] == "fp32"
    w = np.load(out / "weights" / "step_0002.npz")
    raw = w["layer1_raw"]
    assert raw.shape == (64, 32) and raw.min() >= 0 and raw.max() <= 0xFFFF  # bf16 words
    # layer1 is the bf16 value of each word: sign, exponent and 7 fraction bits by hand
    sign = np.where(raw >> 15, -1.0, 1.0)
    exp, frac = (raw >> 7) & 0xFF, raw & 0x7F
    assert exp.min() > 0 and exp.max() < 255  # normal numbers only (initial weights are)
    np.testing.assert_array_equal(w["layer1"], sign * (1 + frac / 128) * 2.0 ** (exp - 127))
    first = np.load(out / "weights" / "step_0000.npz")["layer1"]
    assert not np.array_equal(first, w["layer1"])


def test_fixed_point_record_keeps_its_keys(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--backend", "model", "--steps", "1", "--quiet", "--no-baselines"]
    assert main([*argv, "--format", "q5.10", "--out", str(out)]) == 0
    cfg = json.loads((out / "results.json").read_text())["config"]
    assert cfg["fixed_point"] == {
        "total_bits": 16,
        "frac_bits": 10,
        "acc_bits": 40,
        "rounding": "nearest-even",
        "saturate": True,
    }
    assert "format" not in cfg and "grad_format" not in cfg  # as before bf16 (sweeps hash it)


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.xdist_group("bf16_cluster2_large")  # the build of tests/system/test_rtl_train_bf16.py
def test_bf16_on_the_rtl_backend_checks_against_the_model(tmp_path, capsys):
    """``--backend rtl --format bf16 --hardware large --check``: the RTL cluster in bf16
    matches the golden model bit, event and cycle exactly; its record is bf16's."""
    pytest.importorskip("gradsync.hw.cluster")
    out = tmp_path / "run"
    argv = ["train", "--backend", "rtl", "--format", "bf16", "--hardware", "large", "--check",
            "--nodes", "2", "--steps", "2", "--global-batch", "16", "--layers", "64,16,10",
            "--chunk-bytes", "256", "--quiet", "--no-progress", "--no-baselines",
            "--out", str(out)]  # fmt: skip
    code = main(argv)
    text = capsys.readouterr().out
    assert code == 0
    assert "check OK against the golden model" in text, text
    assert "0 mismatches" in text and "0 event mismatches, 0 cycle differences" in text
    record = json.loads((out / "results.json").read_text())
    assert record["backend"] == "rtl" and record["config"]["format"]["name"] == "bf16"
    raw = np.load(out / "weights" / "step_0002.npz")["layer1_raw"]
    assert raw.shape == (64, 16) and raw.max() <= 0xFFFF  # bf16 words


def test_bf16_on_the_rtl_backend_needs_room_before_anything_is_built(tmp_path, capsys, monkeypatch):
    """The default (rtl) backend takes bf16 now; the small preset's gradient SRAM is still
    refused with one sentence before a backend is made."""
    import gradsync.cmd_train as ct

    def no_backend(*a, **kw):
        raise AssertionError("a backend was made for a bf16 run that does not fit")

    monkeypatch.setattr(ct, "backend_for", no_backend)
    out = tmp_path / "run"
    argv = ["train", "--backend", "rtl", "--format", "bf16", "--hardware", "small"]
    code = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "need 20352 gradient SRAM words" in err and "try --hardware large" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (
            ["--format", "q5.11"],
            "--format must be bf16 or a fixed-point format of 8, 16 or 32 bits (q5.11 has "
            "17), not q5.11",
        ),
        (["--format", "q5.10", "--frac-bits", "8"], "--format q5.10 and --total-bits/--frac-bits"),
        (["--format", "bf16", "--total-bits", "8"], "--format bf16 and --total-bits/--frac-bits"),
        (["--grad-format", "fp32"], "--grad-format must be left out with a fixed-point format"),
        (["--grad-format", "bf16"], "--grad-format must be left out with a fixed-point format"),
        (
            ["--format", "bf16", "--hardware", "large", "--grad-format", "bf8"],
            "--grad-format must be fp32 or bf16, not bf8",
        ),
        (
            ["--format", "bf16", "--hardware", "large", "--grad-format", "bf16"]
            + ["--chunk-bytes", "12"],
            "--chunk-bytes must be a multiple of 8 bytes (two fp32 elements) with "
            "--grad-format bf16, not 12",
        ),
        (
            ["--format", "bf16", "--hardware", "large", "--grad-format", "bf16"]
            + ["--chunk-bytes", "0"],
            "--chunk-bytes must be a positive multiple of 4 bytes, not 0",
        ),
        (
            ["--format", "bf16", "--hardware", "small"],
            "need 20352 gradient SRAM words (gradients and fp32 master weights) but the device "
            "has 8192 (--hardware small); try --hardware large",
        ),
        (["--format", "bf16", "--hardware", "large", "--lr", "1e-50"], "--lr must be a positive"),
    ],
)
def test_bad_format_options_fail_with_one_sentence(argv, text, capsys, tmp_path):
    out = tmp_path / "run"
    code = main(["train", "--backend", "model", "--steps", "1", "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert text in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_unparsable_format_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--backend", "model", "--format", "bf17"])
    assert exc.value.code == 2
    assert "argument --format: format must be bf16 or fixed point qI.F" in capsys.readouterr().err


def test_q_format_sets_the_fixed_point_fields(tmp_path, capsys):
    """q3.4 is an 8-bit format with 4 fractional bits, as --total-bits 8 --frac-bits 4."""
    out = tmp_path / "run"
    argv = ["train", "--backend", "model", "--steps", "1", "--quiet", "--no-baselines"]
    assert main([*argv, "--format", "q3.4", "--out", str(out)]) == 0
    cfg = json.loads((out / "results.json").read_text())["config"]
    assert (cfg["fixed_point"]["total_bits"], cfg["fixed_point"]["frac_bits"]) == (8, 4)


# --- the bf16 gradient exchange (--grad-format bf16) -------------------------------------

EXCHANGE_BF16 = [*MAIN_JOB_BF16, "--grad-format", "bf16"]


def test_bf16_exchange_main_job_reaches_94_percent(capsys):
    """``--grad-format bf16``, 300 steps, 2 nodes: 95.82 % held-out (fp32 exchange 96.66 %)."""
    code = main([*EXCHANGE_BF16, "--steps", "300"])
    printed = capsys.readouterr().out
    assert code == 0
    assert held_out_accuracy(printed) >= 0.94


@pytest.mark.parametrize("nodes", [2, 4])
def test_bf16_exchange_cli_runs_and_records_its_format(nodes, tmp_path, capsys):
    """The CLI run checks every step's weights identical on all nodes (``experiment.run``
    raises otherwise); the record names the exchange format."""
    out = tmp_path / "run"
    code = main([*EXCHANGE_BF16, "--nodes", str(nodes), "--steps", "3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((out / "results.json").read_text())["config"]
    assert cfg["grad_format"] == "bf16" and cfg["format"]["name"] == "bf16"
    assert cfg["nodes"] == nodes


def _exchange_run(grad_format: str, nodes: int, bytes_per_cycle: int, steps: int = 3):
    """(RunResult, cluster) of the main job in bf16 on the large preset's SRAMs."""
    from gradsync.firmware.experiment import TrainConfig, run
    from gradsync.model_backend import run_model_cluster
    from gradsync.spec.hardware import preset

    hw = preset("large", link_bytes_per_cycle=bytes_per_cycle, link_latency_cycles=100)
    cfg = TrainConfig(nodes=nodes, steps=steps, hardware=hw, number_format=BF16,
                      grad_format=grad_format)  # fmt: skip
    clusters = []

    def backend(c, jobs):
        res, cluster = run_model_cluster(c, jobs)
        clusters.append(cluster)
        return res

    return run(cfg, backend), clusters[0]


@pytest.mark.parametrize("nodes", [2, 4])
def test_bf16_exchange_halves_the_link_bytes_and_the_step_on_a_slow_link(nodes):
    """1 byte/cycle (communication-bound): PERF_TX_BYTES exactly half the fp32 exchange's on
    every node, and fewer cycles per step. Measured over 100 steps at latency 50 (docs/numerics.md): 2 nodes
    16,477 -> 9,242 cycles/step, 4 nodes 27,852 -> 18,279."""
    from gradsync.firmware.training import plan_memory_for

    runs = {g: _exchange_run(g, nodes, 1) for g in ("fp32", "bf16")}
    for d32, d16 in zip(runs["fp32"][1].devices, runs["bf16"][1].devices, strict=True):
        tx32 = d32.mmio_read(rm.offset("PERF_TX_BYTES"))
        tx16 = d16.mmio_read(rm.offset("PERF_TX_BYTES"))
        assert tx32 == 2 * tx16 > 0
    per_step = {g: np.mean([m.cycles for m in r[0].steps]) for g, r in runs.items()}
    assert per_step["bf16"] < 0.75 * per_step["fp32"], per_step
    # every replica holds the same fp32 master weights too (run() compared the bf16 copies)
    res, cluster = runs["bf16"]
    hw = res.config.hardware
    lay = plan_memory_for(BF16, res.config.layers, 16 // nodes, hw.scratchpad_words,
                          hw.gradient_words, "bf16")  # fmt: skip
    first = (lay.master[1] - rm.GRAD_BASE) // 2
    masters = [d.grad[first : first + lay.grad_window_bytes // 4] for d in cluster.devices]
    for m in masters[1:]:
        np.testing.assert_array_equal(m, masters[0])
    assert np.any(masters[0] != 0)


def test_bf16_exchange_baselines_table_names_one_exchange(capsys):
    """``train --grad-format bf16`` with baselines: the run's own row and the golden model's
    fifo/sequential rows are all bf16-exchange runs, so the table has no exchange column
    and the run's row equals its own step means."""
    argv = ["train", "--backend", "model", "--format", "bf16", "--grad-format", "bf16",
            "--steps", "2"]  # fmt: skip
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("schedule"))
    assert "exchange" not in lines[head]
    steps = [line.split() for line in lines if line.startswith("step ")]
    mean = sum(int(s[s.index("cycles") + 1]) for s in steps) / len(steps)
    own = lines[head + 2].split()
    assert own[0] == "priority" and int(own[1]) == round(mean)
