"""The ``--out`` run record can be trusted (issue 15 item 6) and bad options are refused by
name (item 7): every refusal is one sentence naming the option and its value, exit 2, and
nothing is run or written; a record is whole, marked, locked and never written through a link.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gradsync import outputs
from gradsync.cli import main

FAST = ["--backend", "model", "--steps", "2", "--quiet", "--no-baselines"]


def _train(out: Path, *extra: str) -> int:
    return main(["train", *FAST, "--out", str(out), *extra])


def _refused(capsys, *needles: str) -> str:
    """The one stderr line of a refusal; it contains every needle."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert captured.out == "", captured.out  # nothing ran: no step, no summary
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _status(out: Path) -> str:
    return json.loads((out / "results.json").read_text())["status"]


def _run_nothing(monkeypatch):
    """Fail the test if a backend starts: refusals must come before anything runs."""
    import gradsync.model_backend as mb

    def boom(*a, **k):
        raise AssertionError("the backend ran")

    monkeypatch.setattr(mb, "run_model", boom)


# --- --out checked before anything runs ------------------------------------------------


def test_out_that_is_a_file_is_refused_before_the_run(tmp_path, capsys, monkeypatch):
    _run_nothing(monkeypatch)
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    assert _train(f) == 2
    _refused(capsys, "--out", str(f), "is a file")
    assert f.read_text() == "mine"


@pytest.mark.parametrize("value", [".", "..", "/"])
def test_out_without_a_folder_name_is_refused(value, tmp_path, capsys, monkeypatch):
    _run_nothing(monkeypatch)
    (tmp_path / "a" / "b").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "a" / "b")  # were the check broken, only this is at stake
    assert main(["train", *FAST, "--out", value]) == 2
    _refused(capsys, "--out", repr(value), "folder name")


def test_out_holding_the_current_folder_is_refused(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert _train(out) == 0
    capsys.readouterr()
    monkeypatch.chdir(out / "weights")
    _run_nothing(monkeypatch)
    for value in (str(out), "../../run"):
        assert main(["train", *FAST, "--overwrite", "--out", value]) == 2
        _refused(capsys, "--out", repr(value), "current folder")
    assert _status(out) == "complete" and (out / "weights").is_dir()


def test_publish_moves_only_a_record_or_an_empty_folder(tmp_path, monkeypatch):
    """The last guard, should the folder change between the check and the rename."""
    out = tmp_path / "run"
    rec = outputs.RunRecord(out, True, "model").open()
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(outputs.OutError, match="no longer an empty folder or a run record"):
        rec._publish()
    assert (out / "thesis.tex").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # temp folder and lock gone


def test_out_under_a_file_or_unwritable_parent_is_refused(tmp_path, capsys, monkeypatch):
    _run_nothing(monkeypatch)
    f = tmp_path / "file"
    f.write_text("")
    assert _train(f / "run") == 2
    _refused(capsys, "--out", str(f / "run"), "is not a folder")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root may write anywhere: let the check see what a user would
        real = os.access
        monkeypatch.setattr(outputs.os, "access", lambda p, m: Path(p) != ro and real(p, m))
    try:
        assert _train(ro / "run") == 2
        _refused(capsys, "--out", str(ro / "run"), "not writable")
    finally:
        ro.chmod(0o700)
    assert list(ro.iterdir()) == []


def test_out_control_characters_and_long_names_are_refused(tmp_path, capsys, monkeypatch):
    _run_nothing(monkeypatch)
    assert _train(tmp_path / "a\nb") == 2
    _refused(capsys, "--out", "control characters")
    assert _train(tmp_path / ("x" * 220)) == 2
    _refused(capsys, "--out", "longer than 200 bytes")


def test_foreign_folder_is_refused_even_with_overwrite(tmp_path, capsys, monkeypatch):
    _run_nothing(monkeypatch)
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("precious")
    for extra in ((), ("--overwrite",)):
        assert _train(out, *extra) == 2
        _refused(capsys, "--out", str(out), "not a gradsync run record", "chapter1.tex")
    assert (out / "chapter1.tex").read_text() == "precious"


def test_previous_record_needs_overwrite_and_is_replaced_whole(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--backend", "model", "--steps", "4", "--quiet", "--no-baselines"]
    assert main([*argv, "--out", str(out)]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in (out / "weights").iterdir())
    assert before == [f"step_{k:04d}.npz" for k in range(5)]
    assert _train(out) == 2
    _refused(capsys, "--out", str(out), "previous run record", "--overwrite")
    assert sorted(p.name for p in (out / "weights").iterdir()) == before  # untouched
    assert _train(out, "--overwrite") == 0
    after = sorted(p.name for p in (out / "weights").iterdir())
    assert after == [f"step_{k:04d}.npz" for k in range(3)]  # no stale step_0003/0004
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "complete" and len(res["steps"]) == 2
    assert res["config"]["chunk_bytes_resolved"] == 512
    # nothing left beside it: no temporary folder, no lock
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_empty_folder_is_used(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    assert _train(out) == 0
    assert _status(out) == "complete"


def test_symlinks_are_never_written_through(tmp_path, capsys, monkeypatch):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "run"
    assert _train(out) == 0
    capsys.readouterr()
    # a link planted inside a previous record: refused even with --overwrite
    import shutil

    shutil.rmtree(out / "weights")
    (out / "weights").symlink_to(outside, target_is_directory=True)
    _run_nothing(monkeypatch)
    assert _train(out, "--overwrite") == 2
    _refused(capsys, "--out", str(out), "symbolic link", "weights")
    assert list(outside.iterdir()) == []
    # --out itself a link to a folder
    link = tmp_path / "link"
    link.symlink_to(outside, target_is_directory=True)
    assert _train(link, "--overwrite") == 2
    _refused(capsys, "--out", str(link), "symbolic link")
    assert list(outside.iterdir()) == []


def test_a_second_run_into_a_locked_out_is_refused(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    with outputs.OutLock(out):  # what a running `gradsync train --out run` holds
        _run_nothing(monkeypatch)
        assert _train(out) == 2
        line = _refused(capsys, "--out", str(out), "another gradsync run")
        assert f"process {os.getpid()}" in line
        assert not out.exists()
    monkeypatch.undo()
    assert _train(out) == 0  # released: the lock file is gone and the run goes ahead
    assert not (tmp_path / ".run.gradsync-lock").exists()


def test_lock_is_held_by_a_separate_process(tmp_path):
    """flock, not a pid file: another process sees it, and it goes when that process dies."""
    out = tmp_path / "run"
    code = (
        "import sys, time; from pathlib import Path; from gradsync.outputs import OutLock\n"
        f"OutLock(Path({str(out)!r})).acquire(); print('locked', flush=True); time.sleep(30)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(outputs.OutError, match="another gradsync run"):
            outputs.OutLock(out).acquire()
    finally:
        holder.kill()
        holder.wait()
    with outputs.OutLock(out):  # the dead holder's lock is gone
        pass


def test_failed_run_leaves_a_marked_partial_record(tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(out, "--max-cycles", "3000") == 1
    err = capsys.readouterr().err
    assert "partial record in" in err and str(out) in err
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "failed"
    assert "3000" in res["error"] or "budget" in res["error"].lower()
    assert res["config"]["nodes"] == 2 and res["config"]["data"]["train_indices"]
    assert res["format_version"] == outputs.FORMAT_VERSION
    assert not (out / "weights").exists()  # nothing half-written beside it
    # a failed record counts as a previous record: refused, then replaced with --overwrite
    assert _train(out) == 2
    capsys.readouterr()
    assert _train(out, "--overwrite") == 0
    assert _status(out) == "complete"


def test_ctrl_c_stops_with_one_line_exit_130_and_an_interrupted_record(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gradsync.cli", "train", "--backend", "model", "--steps", "3000"]
    cmd += ["--quiet", "--no-baselines", "--out", str(out)]
    # Ctrl-C as in an interactive shell: SIGINT at its default in the child, whatever this
    # (pytest worker) process has it set to -- a child started with SIGINT ignored keeps
    # ignoring it (Python installs its KeyboardInterrupt handler only over SIG_DFL)
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".run.gradsync-tmp-*/results.json")):  # the run is on
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)
        (running,) = tmp_path.glob(".run.gradsync-tmp-*/results.json")
        assert json.loads(running.read_text())["status"] == "running"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0] and str(out) in lines[0], stderr
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "interrupted"
    assert res["error"] == "KeyboardInterrupt: "
    assert res["config"]["steps"] == 3000 and len(res["steps"]) < 3000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temp folder, no lock


# --- options the device cannot carry: named, before anything runs -----------------------


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["--lr", "nan"], ["--lr", "not nan", "31.999"]),
        (["--lr", "inf"], ["--lr", "not inf"]),
        (["--lr", "-0.25"], ["--lr", "not -0.25"]),
        (["--lr", "0.0001"], ["--lr", "not 0.0001"]),  # rounds to 0 at 10 fractional bits
        (["--nodes", "1000", "--global-batch", "1000"], ["--nodes", "at most 256", "not 1000"]),
        (["--link-bytes-per-cycle", "3"], ["--link-bytes-per-cycle", "1, 2, 4", "not 3"]),
        (["--link-bytes-per-cycle", "16"], ["--link-bytes-per-cycle", "not 16"]),
        (
            ["--link-bytes-per-cycle", "8", "--link-width-bytes", "4"],
            ["--link-bytes-per-cycle", "link width 4 bytes", "--link-width-bytes 8", "not 8"],
        ),
        (["--max-payload-bytes", "1024"], ["--max-payload-bytes", "512", "not 1024"]),
        (["--max-payload-bytes", "6"], ["--max-payload-bytes", "not 6"]),
        (["--link-latency-cycles", "1024"], ["--link-latency-cycles", "0..1023", "not 1024"]),
        (["--layers", "64,32,11"], ["--layers", "64,32,11"]),
        (["--chunk-bytes", "6"], ["--chunk-bytes", "not 6"]),
        (["--total-bits", "12"], ["--total-bits", "not 12"]),
    ],
)
def test_train_names_the_option_the_value_and_the_limit(argv, needles, capsys, monkeypatch):
    _run_nothing(monkeypatch)
    assert main(["train", "--backend", "model", "--steps", "2", "--no-baselines", *argv]) == 2
    line = _refused(capsys, *needles)
    assert line.startswith("gradsync train: --")
    assert "field peer" not in line


def test_compare_empty_schedule_is_one_sentence(capsys, monkeypatch):
    _run_nothing(monkeypatch)
    argv = ["compare", "--backend", "model", "--steps", "2", "--schedules", "fifo,,priority"]
    assert main(argv) == 2
    _refused(capsys, "--schedules 'fifo,,priority'", "not ''")


def test_compare_checks_every_schedule_before_the_first_runs(capsys, monkeypatch):
    _run_nothing(monkeypatch)
    argv = ["compare", "--backend", "model", "--steps", "2", "--schedules", "fifo,bogus"]
    assert main(argv) == 2
    _refused(capsys, "bogus")


def test_compare_names_the_option(capsys, monkeypatch):
    _run_nothing(monkeypatch)
    assert main(["compare", "--backend", "model", "--steps", "2", "--lr", "nan"]) == 2
    _refused(capsys, "gradsync compare: --lr", "not nan")


def test_model_backend_refuses_what_the_rtl_cannot_carry():
    """The limit is the spec's, checked by TrainConfig for both backends (not the CLI)."""
    import dataclasses

    from gradsync.firmware import experiment
    from gradsync.model_backend import run_model
    from gradsync.spec.hardware import DEFAULT_HARDWARE
    from gradsync.spec.limits import LimitError

    hw = dataclasses.replace(DEFAULT_HARDWARE, link_bytes_per_cycle=3)
    cfg = experiment.TrainConfig(steps=1, hardware=hw)
    rule = "link_bytes_per_cycle must be one of 1, 2, 4 (8 with link_width_bytes=8), not 3"
    with pytest.raises(LimitError, match=re.escape(rule)):
        experiment.run(cfg, run_model)


# --- temporary simulation folders --------------------------------------------------------


@pytest.mark.parametrize(
    "ending, kept",
    [("result", False), ("error", False), ("ctrl-c", False), ("no result", True)],
)
def test_rtl_work_folder_is_removed_unless_it_holds_the_only_log(
    ending, kept, tmp_path, monkeypatch
):
    """run_rtl's own ``gradsync-rtl-*`` folder goes when the run ends (the simulator is
    replaced by a stand-in that writes what it would: a log and, unless it crashed, a result)."""
    import tempfile

    import gradsync.sim.rtl_backend as rb

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []

    def fake(cfg, jobs, *, work_dir, **kw):
        seen.append(work_dir)
        (work_dir / "sim.log").write_text("log")
        if ending != "no result":
            (work_dir / "result.pkl").write_bytes(b"")
        if ending == "ctrl-c":
            raise KeyboardInterrupt
        if ending in ("error", "no result"):
            raise rb.RtlRunError("stopped")
        return "done"

    monkeypatch.setattr(rb, "_run_rtl", fake)
    with contextlib.suppress(rb.RtlRunError, KeyboardInterrupt):
        rb.run_rtl(None, [])
    (work,) = seen
    assert work.name.startswith("gradsync-rtl-") and work.parent == tmp_path
    assert work.exists() == kept


# --- scale and sweep write into their --out: the same path checks ----------------------


@pytest.mark.parametrize("command", ["scale", "sweep"])
def test_scale_and_sweep_refuse_an_out_under_a_file_before_running(
    command, tmp_path, capsys, monkeypatch
):
    import gradsync.cmd_scale as cs

    monkeypatch.setattr(cs, "_simulate", lambda *a, **k: pytest.fail("scale simulated"))
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    sweep = tmp_path / "s.toml"
    sweep.write_text('command = "train"\n[fixed]\nbackend = "model"\nsteps = 1\n')
    argv = {
        "scale": ["scale", "--workload", "mlp", "--nodes", "2", "--link-gbps", "100"],
        "sweep": ["sweep", str(sweep)],
    }[command]
    for out, needle in ((f / "run", "is not a folder"), (f, "is a file")):
        assert main([*argv, "--out", str(out)]) == 2
        _refused(capsys, f"gradsync {command}: --out", str(out), needle)
    assert f.read_text() == "mine"


def test_compare_checks_every_exchange_format_before_the_first_runs(capsys, monkeypatch):
    _run_nothing(monkeypatch)
    argv = ["compare", "--backend", "model", "--steps", "2", "--format", "bf16",
            "--grad-format", "fp32,bogus"]  # fmt: skip
    assert main(argv) == 2
    _refused(capsys, "gradsync compare: --grad-format 'fp32,bogus': each format", "not bogus")
