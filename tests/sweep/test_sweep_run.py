"""Points fanned out on a LocalCluster of 2 workers give what the same runs give in-process."""

from __future__ import annotations

import argparse
import csv
import json
import os

import numpy as np
import pytest

from gradsync import cmd_train
from gradsync.firmware import experiment
from gradsync.sweep import commands, runner, store
from gradsync.sweep.sweepfile import SweepFile

from .conftest import TINY


def _reference(options: dict) -> dict:
    """One point run in this process the way `gradsync train` runs it, metrics by NumPy."""
    p = argparse.ArgumentParser()
    cmd_train.add_config_arguments(p)
    argv = []
    for k, v in options.items():
        argv += [
            f"--{k.replace('_', '-')}",
            ",".join(map(str, v)) if isinstance(v, list) else str(v),
        ]
    args = p.parse_args(argv)
    res = experiment.run(
        cmd_train.config_from_args(args), cmd_train.backend_for(args.backend, args)
    )
    return {
        "chunk_bytes": res.chunk_bytes,
        "cycles_per_step": float(np.mean([m.cycles for m in res.steps])),
        "layer1_ready_cycle": float(np.mean([m.layer1_ready_cycle for m in res.steps])),
        "exposed_comm_cycles": float(np.mean([m.exposed_comm_cycles for m in res.steps])),
        "total_cycles": res.total_cycles,
        "final_loss": res.steps[-1].loss,
        "accuracy": res.steps[-1].accuracy,
    }


def _sweep(tmp_path, options, grid, zip_=None) -> tuple[commands.Command, list[runner.Point]]:
    return runner.prepare(SweepFile(tmp_path / "s.toml", "train", options, grid, zip_ or {}))


def test_grid_of_24_points_equals_the_points_run_one_by_one(client, tmp_path):
    grid = {
        "schedule": ["sequential", "fifo", "priority"],
        "chunk_bytes": [64, 128, 256, 512],
        "nodes": [2, 4],
    }
    command, points = _sweep(tmp_path, {k: v for k, v in TINY.items() if k != "nodes"}, grid)
    assert len(points) == 24
    summary = runner.Summary(total=len(points))
    runner.run_points(client, command, points, tmp_path, summary, progress=False)
    assert (summary.done, summary.failed, summary.unfinished) == (24, 0, 0)
    store.write_results(tmp_path, [p.key for p in points])
    with open(tmp_path / "results.csv", newline="") as f:
        table = {row["point"]: row for row in csv.DictReader(f)}
    assert len(table) == 24
    for p in points:
        ref = _reference(p.options)
        got = json.loads(store.point_path(tmp_path, p.key).read_text())
        assert got["status"] == "done" and got["options"] == p.options
        for col, value in ref.items():
            assert got["result"][col] == value, (p.options, col)
            assert float(table[p.key][col]) == pytest.approx(value, rel=1e-12)
        assert table[p.key]["schedule"] == p.options["schedule"]


def test_a_failing_point_is_recorded_and_the_others_complete(client, tmp_path):
    zip_ = {"chunk_bytes": [64, 128, 256], "max_cycles": [10**6, 300, 10**6]}
    command, points = _sweep(tmp_path, TINY, {}, zip_)
    summary = runner.Summary(total=3)
    runner.run_points(client, command, points, tmp_path, summary, progress=False)
    assert (summary.done, summary.failed) == (2, 1)
    recs = [store.read_point(tmp_path, p.key) for p in points]
    assert [r["status"] for r in recs] == ["done", "failed", "done"]
    assert recs[1]["error"].startswith("SimulationError: cycle budget of 300 exhausted")
    assert "Traceback" in recs[1]["traceback"] and "experiment.py" in recs[1]["traceback"]
    assert "result" not in recs[1]
    rows = store.rows(tmp_path, [p.key for p in points])
    assert rows[1]["status"] == "failed" and "cycle budget" in rows[1]["error"]


def test_a_lost_worker_reruns_its_point_once_then_records_it_failed(client, tmp_path, monkeypatch):
    monkeypatch.setitem(
        commands.COMMANDS, "crashy", commands.Command("crashy", "tests.sweep.crashing")
    )
    marks = tmp_path / "marks"
    recs = {}
    # one point in flight at a time: a crash then counts against that point alone
    for name, crash in (("once", 1), ("always", 9)):
        sweep = SweepFile(
            tmp_path / "s.toml", "crashy", {"marks": str(marks), "name": name, "crash": crash}, {}
        )
        command, points = runner.prepare(sweep)
        summary = runner.Summary(total=1)
        runner.run_points(client, command, points, tmp_path, summary, progress=False)
        recs[name] = store.read_point(tmp_path, points[0].key)
    assert recs["once"]["status"] == "done" and recs["once"]["result"] == {
        "name": "once",
        "runs": 2,
    }
    assert recs["always"]["status"] == "failed"
    assert recs["always"]["error"].startswith("the worker running this point was lost twice")
    assert len(list(marks.glob("always-*"))) == 2  # run twice, not more
    client.wait_for_workers(2, timeout=60)  # the nannies restart the dead workers


def test_each_model_is_built_once_before_its_points_run(client, tmp_path, monkeypatch):
    monkeypatch.setitem(
        commands.COMMANDS, "built", commands.Command("built", "tests.sweep.building")
    )
    marks = tmp_path / "marks"
    sweep = SweepFile(
        tmp_path / "s.toml",
        "built",
        {"marks": str(marks)},
        {"hw": ["a", "b", "broken"], "point": [1, 2, 3]},
    )
    command, points = runner.prepare(sweep)
    summary = runner.Summary(total=len(points))
    runner.run_points(client, command, points, tmp_path, summary, progress=False)
    assert (summary.done, summary.failed) == (6, 3)
    assert sorted(p.name.split("-")[1] for p in marks.glob("build-*")) == ["a", "b"]  # once each
    for p in points:
        rec = store.read_point(tmp_path, p.key)
        if p.options["hw"] == "broken":  # a failed build fails its points, not the sweep
            assert rec["error"] == "RuntimeError: the model of 'broken' does not build"
        else:
            assert rec["result"] == {"hw": p.options["hw"], "builds_before_run": 1}


def test_scheduler_flag_runs_the_points_on_an_existing_cluster(client, tmp_path):
    import subprocess
    import sys

    sweep = tmp_path / "s.toml"
    sweep.write_text(
        'command = "train"\n[options]\nbackend = "model"\nsteps = 2\nlayers = [64, 16, 10]\n'
        "[grid]\nchunk_bytes = [128, 256]\n"
    )
    address = client.scheduler.address
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradsync.cli",
            "sweep",
            str(sweep),
            "--out",
            str(tmp_path / "o"),
            "--scheduler",
            address,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert f"to run on the scheduler at {address}" in r.stdout
    assert "2 points: 2 done" in r.stdout
    workers = {
        json.loads(p.read_text())["worker"].split(":")[1]
        for p in (tmp_path / "o" / "points").glob("*.json")
    }
    pids = {str(pid) for pid in client.run(os.getpid).values()}
    assert workers <= pids  # the points ran on the fixture's workers
