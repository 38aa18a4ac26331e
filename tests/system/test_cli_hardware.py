"""``--hardware NAME``: one preset is the default of both backends; bad choices exit 2 early."""

from __future__ import annotations

import json

import pytest

from gradsync.cli import main
from gradsync.cmd_train import add_config_arguments, config_from_args
from gradsync.spec.hardware import DEFAULT_HARDWARE, PRESETS


def _cfg(argv):
    import argparse

    p = argparse.ArgumentParser()
    add_config_arguments(p)
    p.add_argument("--check", action="store_true")
    return config_from_args(p.parse_args(argv))


def test_both_backends_default_to_the_same_hardware():
    model = _cfg(["--backend", "model"])
    rtl = _cfg(["--backend", "rtl"])
    assert model.hardware == rtl.hardware == DEFAULT_HARDWARE == PRESETS["small"]
    # flags still override the preset's fields
    large = _cfg(["--backend", "model", "--hardware", "large", "--link-latency-cycles", "7"])
    assert large.hardware.scratchpad_words == PRESETS["large"].scratchpad_words
    assert large.hardware.link_latency_cycles == 7


def test_preset_is_recorded_in_results_json(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--backend", "model", "--steps", "1", "--quiet", "--hardware", "large"]
    assert main([*argv, "--out", str(out)]) == 0
    hw = json.loads((out / "results.json").read_text())["config"]["hardware"]
    assert hw["scratchpad_words"] == 65536 and hw["trace_records"] == 16384


def test_unknown_preset_exits_2_naming_option_and_value(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--backend", "model", "--hardware", "huge"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --hardware: invalid choice: 'huge'" in err


def test_layers_too_big_for_the_preset_exit_2_before_running(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    # the main job's MLP until issue 17, on one node (the default 64,32,32,10 fits)
    argv = [
        "--hardware",
        "small",
        "--layers",
        "64,32,10",
        "--global-batch",
        "64",
        "--out",
        str(out),
    ]
    code = main(["train", "--backend", "model", "--nodes", "1", "--steps", "1", *argv])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "need 11840 scratchpad words but the device has 8192 (--hardware small)" in err[0]
    assert err[0].endswith("try --hardware large")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_no_preset_is_suggested_when_none_fits(capsys):
    code = main(["train", "--backend", "model", "--layers", "64,1000,10", "--steps", "1"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("need 90672 scratchpad words but the device has 8192")
    assert "try --hardware" not in err


def test_without_hardware_a_run_that_does_not_fit_gets_the_next_presets_srams(tmp_path, capsys):
    """No --hardware: the default preset, with the SRAMs of the first preset the run fits,
    said in one line before the run; its link and array stay the default's. With --hardware
    the same run is refused (above)."""
    cfg = _cfg(
        ["--backend", "model", "--layers", "64,32,10", "--global-batch", "64", "--nodes", "1"]
    )
    small, large = PRESETS["small"], PRESETS["large"]
    assert (cfg.hardware.scratchpad_words, cfg.hardware.gradient_words) == (
        large.scratchpad_words,
        large.gradient_words,
    )
    assert cfg.hardware.link == small.link and cfg.hardware.array_rows == small.array_rows
    out = tmp_path / "run"
    argv = ["train", "--backend", "model", "--nodes", "1", "--steps", "1", "--layers", "64,32,10"]
    code = main([*argv, "--global-batch", "64", "--no-baselines", "--out", str(out)])
    assert code == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == (
        "hardware: small with the large preset's SRAMs (65,536 scratchpad + 32,768 gradient "
        "words), since layers 64,32,10 (widest 64) with a local batch of 64 need 11840 "
        "scratchpad words but the device has 8192"
    )
    record = json.loads((out / "results.json").read_text())
    assert record["config"]["hardware"]["scratchpad_words"] == large.scratchpad_words
    assert record["config"]["hardware"]["link_bytes_per_cycle"] == small.link_bytes_per_cycle
