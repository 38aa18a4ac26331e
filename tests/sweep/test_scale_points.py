"""`scale` points in a sweep: the same numbers as `gradsync.scale.point` run in-process,
bad points refused before anything runs, a stopped sweep resumed without touching
finished points, and the example sweep files valid."""

from __future__ import annotations

import csv
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from gradsync.scale import point as scale_point
from gradsync.sweep import runner, sweepfile

from .test_cli import ROOT, _resume_and_check, _snapshot, _wait_for_points, gradsync

#: 2 x 2 x 3 grid points x 2 zipped (workload, chunk) pairs = 24 points, 2-300 ms each
GRID = """
command = "scale"
[options]
steps = 3
[grid]
nodes = [4, 8]
link_gbps = [25, 400]
schedule = ["sequential", "fifo", "priority"]
[zip]
workload = ["mlp", "resnet50"]
chunk_bytes = [4096, 1048576]
"""


def _expected_options() -> list[dict]:
    """The 24 points of GRID, written out by hand in the file's order (zip varies fastest)."""
    points = []
    for nodes, gbps, schedule in itertools.product(
        [4, 8], [25, 400], ["sequential", "fifo", "priority"]
    ):
        for workload, chunk in (("mlp", 4096), ("resnet50", 1048576)):
            points.append(
                {
                    "steps": 3,
                    "nodes": nodes,
                    "link_gbps": gbps,
                    "schedule": schedule,
                    "workload": workload,
                    "chunk_bytes": chunk,
                }
            )
    return points


def _same_cell(cell: str, value) -> bool:
    """A results.csv cell against an in-process value: numbers exactly, None as empty."""
    if value is None:
        return cell == ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return cell == str(value)
    return float(cell) == value  # CSV holds repr(float): it round-trips exactly


def test_grid_of_24_scale_points_equals_the_points_run_one_by_one(client, tmp_path):
    path, out = tmp_path / "scale.toml", tmp_path / "out"
    path.write_text(GRID)
    # the real command, on the fixture's LocalCluster of 2 workers
    r = gradsync("sweep", str(path), "--out", str(out), "--scheduler", client.scheduler.address)
    assert r.returncode == 0, r.stderr
    assert "24 points: 24 done, 0 skipped (finished before), 0 failed" in r.stdout
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    expected = _expected_options()
    assert len(table) == len(expected) == 24
    workers = set()
    for row, options in zip(table, expected, strict=True):
        ref = scale_point.run(scale_point.validate(options))
        for col, value in ref.items():
            if col == "wall_seconds":  # the time the run took, not a result
                continue
            assert _same_cell(row[col], value), (options, col, row[col], value)
        assert row["status"] == "done" and row["workload"] == options["workload"]
        rec = json.loads((out / "points" / f"{row['point']}.json").read_text())
        assert rec["options"] == options
        assert {k: v for k, v in rec["result"].items() if k != "wall_seconds"} == {
            k: v for k, v in ref.items() if k != "wall_seconds"
        }
        workers.add(rec["worker"])
    assert len(workers) == 2  # both workers took points


#: a sweep file whose only bad points are the ones named; the point numbers count from 1
BAD = {
    "unknown workload": (
        GRID.replace('"resnet50"', '"resnet5O"'),
        r"point 2 of 24 \(nodes=4, link_gbps=25, schedule='sequential', workload='resnet5O', "
        r"chunk_bytes=1048576\): --workload resnet5O is neither a built-in workload .* "
        r"nor an existing file$",
    ),
    "chunk larger than the largest layer": (
        GRID.replace("1048576]", "67108864]"),
        r"point 2 of 24 \(nodes=4, link_gbps=25, schedule='sequential', workload='resnet50', "
        r"chunk_bytes=67108864\): --chunk-bytes 67108864: is larger than the largest layer's "
        r"gradients of resnet50 \((?P<largest>\d+) bytes\)$",
    ),
    "per_box not dividing nodes": (
        GRID.replace("nodes = [4, 8]", "nodes = [8, 12]").replace(
            "steps = 3", 'steps = 3\ntopology = "hierarchical"\nper_box = 8'
        ),
        r"point 13 of 24 \(nodes=12, link_gbps=25, schedule='sequential', workload='mlp', "
        r"chunk_bytes=4096\): --per-box 8 does not divide --nodes 12$",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_scale_point_is_refused_before_any_point_runs(tmp_path, case):
    text, match = BAD[case]
    path, out = tmp_path / "bad.toml", tmp_path / "out"
    path.write_text(text)
    r = gradsync("sweep", str(path), "--out", str(out), "--workers", "2")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gradsync sweep: {path}: "), r.stderr
    found = re.search(match, lines[0])
    assert found, lines[0]
    if "largest" in found.groupdict():  # the size it names is resnet50's largest layer
        from gradsync.workloads import builtin

        largest = max(layer.grad_bytes for layer in builtin("resnet50").layers)
        assert int(found["largest"]) == largest > 4 << 20
    assert "sweep:" not in r.stdout  # no cluster was started
    assert not out.exists()  # nothing written


SMALL = ROOT / "examples" / "sweep_scale_small.toml"
STUDY = ROOT / "examples" / "sweep_scale_study.toml"


@pytest.mark.slow
def test_ctrl_c_then_rerun_leaves_finished_scale_points_untouched(tmp_path):
    """The small example, stopped after 3 points: the rerun runs only the rest."""
    out = tmp_path / "out"
    shutil.copy(SMALL, tmp_path / "sweep.toml")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gradsync.cli", "sweep", str(tmp_path / "sweep.toml")]
        + ["--out", str(out), "--workers", "2"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    _wait_for_points(out, 3, proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    before = _snapshot(out)
    for rec in (json.loads((out / "points" / name).read_text()) for name in before):
        assert rec["command"] == "scale" and rec["result"]["step_seconds"] > 0
    _resume_and_check(tmp_path, out, before)


def test_the_small_example_is_24_valid_points():
    _, points = runner.prepare(sweepfile.read(SMALL))
    expected = itertools.product(
        ["resnet50", "bert-base"], [10, 25, 100, 400], ["sequential", "fifo", "priority"]
    )
    assert [(p.config.workload, p.config.link_gbps, p.config.schedule) for p in points] == list(
        expected
    )
    assert {(p.config.nodes, p.config.chunk_bytes) for p in points} == {(8, 1 << 20)}


def test_the_study_validates_every_point_without_running_one():
    command, points = runner.prepare(sweepfile.read(STUDY))
    assert command.name == "scale"
    # 4 networks x 2 node counts x 4 links: 4 schedules x 4 chunks, and p3 once (its own slices)
    assert len(points) == 4 * 2 * 4 * (4 * 4 + 1) == 544
    p3 = [p for p in points if p.config.schedule == "p3"]
    assert len(p3) == 32 and {p.config.chunk_bytes for p in p3} == {"auto"}
    chunks = {p.config.chunk_bytes for p in points}
    assert chunks == {"auto", 1 << 18, 1 << 20, 1 << 22}
    assert len({p.key for p in points}) == 544  # no two points share a configuration
