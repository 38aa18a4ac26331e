"""`gradsync sweep` as a user runs it: refusals, Ctrl-C and kill -9 then resume, --retry-failed, plot."""

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

ROOT = Path(__file__).resolve().parents[2]

#: 24 points of ~0.3 s each: long enough to be stopped half-way on 2 workers.
SLOW = """
command = "train"
[options]
backend = "model"
steps = 30
nodes = 2
[grid]
schedule = ["sequential", "fifo", "priority"]
chunk_bytes = [128, 256, 512, 1024]
seed = [0, 1]
"""


def gradsync(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gradsync.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        **kw,
    )


def _write(tmp_path: Path, text: str, name: str = "sweep.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _snapshot(out: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "points").glob("*.json")}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('command = "train"\n[grid\nsteps = [1]\n', "is not valid TOML"),
        (
            'command = "train"\n[options]\nbackend = "model"\n[grid]\nsteps = [1, 2]\n'
            "chunk_byts = [64]\n",
            r"point 1 of 2 \(steps=1, chunk_byts=64\): unknown option 'chunk_byts' for train",
        ),
    ],
)
def test_bad_sweep_files_are_refused_before_anything_runs(tmp_path, text, match):
    out = tmp_path / "out"
    r = gradsync("sweep", str(_write(tmp_path, text)), "--out", str(out))
    assert r.returncode == 2
    assert r.stderr.startswith("gradsync sweep: ") and len(r.stderr.splitlines()) == 1
    assert re.search(match, r.stderr), r.stderr
    assert not out.exists()  # nothing written


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--workers", "0"], "--workers must be >= 1, not 0"),
        (["--scheduler", "tcp://h:1", "--jobqueue", "slurm"], "exclude each other"),
        (["--x", "nodes"], "--x is an option of `gradsync sweep plot`"),
        (["extra.toml"], "unrecognized arguments: extra.toml"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, args, match):
    path = _write(tmp_path, SLOW)
    r = gradsync("sweep", str(path), "--out", str(tmp_path / "out"), *args)
    assert r.returncode == 2 and match in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def _start(tmp_path: Path, out: Path) -> subprocess.Popen:
    log = open(tmp_path / "client.log", "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gradsync.cli",
            "sweep",
            str(_write(tmp_path, SLOW)),
            "--out",
            str(out),
            "--workers",
            "2",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_for_points(out: Path, n: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while len(list((out / "points").glob("*.json"))) < n:
        assert proc.poll() is None, "the sweep ended before it could be stopped"
        assert time.monotonic() < deadline, "no points finished in 60 s"
        time.sleep(0.05)


def _resume_and_check(tmp_path: Path, out: Path, before: dict) -> None:
    assert 3 <= len(before) < 24
    for name in before:  # whole files only: written to a temporary name, then renamed
        assert json.loads((out / "points" / name).read_text())["status"] == "done"
    r = gradsync("sweep", str(tmp_path / "sweep.toml"), "--out", str(out), "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert f"{24 - len(before)} done, {len(before)} skipped" in r.stdout
    after = _snapshot(out)
    assert len(after) == 24
    for name, (mtime, content) in before.items():
        assert after[name] == (mtime, content), f"{name} was rewritten"
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 24


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_a_rerun_completes_the_rest(tmp_path):
    out = tmp_path / "out"
    proc = _start(tmp_path, out)
    _wait_for_points(out, 3, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradsync sweep: interrupted;"), err
    before = _snapshot(out)
    # results.csv was rebuilt from the points that finished
    assert len((out / "results.csv").read_text().splitlines()) == 1 + len(before)
    _resume_and_check(tmp_path, out, before)


@pytest.mark.slow
def test_kill_9_of_the_client_loses_only_unfinished_points(tmp_path):
    out = tmp_path / "out"
    proc = _start(tmp_path, out)
    try:
        _wait_for_points(out, 3, proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        before = _snapshot(out)
    finally:  # the orphaned workers stop on their own when the scheduler is gone; don't wait
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    _resume_and_check(tmp_path, out, before)


FAILING = """
command = "train"
[options]
backend = "model"
steps = 2
layers = [64, 16, 10]
[zip]
chunk_bytes = [64, 128, 256]
max_cycles = [1000000, 300, 1000000]
"""


def test_failed_points_are_kept_until_retry_failed(tmp_path):
    path, out = _write(tmp_path, FAILING), tmp_path / "out"
    r = gradsync("sweep", str(path), "--out", str(out), "--workers", "2")
    assert r.returncode == 1, r.stderr
    assert "2 done, 0 skipped (finished before), 1 failed" in r.stdout
    recs = {p: json.loads(p.read_text()) for p in (out / "points").glob("*.json")}
    good = next(p for p, rec in recs.items() if rec["options"]["chunk_bytes"] == 64)
    bad = next(p for p, rec in recs.items() if rec["status"] == "failed")
    original = recs[good]
    # as if the good point had failed on a flaky host
    good.write_text(json.dumps({**original, "status": "failed", "error": "OSError: host gone"}))
    kept = _snapshot(out)
    r = gradsync("sweep", str(path), "--out", str(out), "--workers", "2")
    assert r.returncode == 1 and "2 failed before (rerun with --retry-failed)" in r.stdout
    assert _snapshot(out) == kept  # nothing rerun
    r = gradsync("sweep", str(path), "--out", str(out), "--workers", "2", "--retry-failed")
    assert r.returncode == 1, r.stderr
    assert "1 done, 1 skipped (finished before), 1 failed" in r.stdout
    rerun = json.loads(good.read_text())
    assert rerun["status"] == "done"
    assert {k: v for k, v in rerun["result"].items() if k != "wall_seconds"} == {
        k: v for k, v in original["result"].items() if k != "wall_seconds"
    }
    assert bad.stat().st_mtime_ns != kept[bad.name][0]  # the failing point was run again


CSV = """point,status,schedule,chunk_bytes,nodes,cycles_per_step,error
a,done,fifo,64,2,5000,
b,done,fifo,256,2,4000,
c,done,priority,64,2,4500,
d,done,priority,256,2,3500,
e,done,priority,256,4,3700,
f,failed,fifo,512,2,,SimulationError: cycle budget
"""


def test_plot_writes_a_png(tmp_path):
    (tmp_path / "results.csv").write_text(CSV)
    r = gradsync(
        "sweep",
        "plot",
        str(tmp_path),
        "--x",
        "chunk_bytes",
        "--y",
        "cycles_per_step",
        "--hue",
        "schedule",
        "--col",
        "nodes",
    )
    assert r.returncode == 0, r.stderr
    png = tmp_path / "cycles_per_step_vs_chunk_bytes.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "(5 points)" in r.stdout  # the failed point is left out


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--x", "chunk", "--y", "cycles_per_step"], "--x 'chunk' is not a column of"),
        (["--x", "chunk_bytes", "--y", "schedule"], "--y 'schedule' must be a numeric column"),
        (["--x", "chunk_bytes"], "plot needs --x COL and --y COL"),
        (
            ["--workers", "2", "--x", "nodes", "--y", "cycles_per_step"],
            "--workers is an option of a sweep run",
        ),
        (["--x", "nodes", "--y", "cycles_per_step", "--out", "f.txt"], "--out must end in .png"),
    ],
)
def test_plot_refuses_bad_columns(tmp_path, args, match):
    (tmp_path / "results.csv").write_text(CSV)
    r = gradsync("sweep", "plot", str(tmp_path), *args)
    assert r.returncode == 2 and match in r.stderr, r.stderr
