"""The sweep file: grid product, zip group, where filter, and every refusal naming the key."""

from __future__ import annotations

import pytest

from gradsync.sweep.sweepfile import SweepFileError, read, where_holds


def _write(tmp_path, text: str):
    path = tmp_path / "sweep.toml"
    path.write_text(text)
    return path


GRID = """
command = "train"
[options]
backend = "model"
[grid]
schedule = ["fifo", "priority"]
chunk_bytes = [64, 128, 256]
[zip]
link_bytes_per_cycle = [2, 8]
link_latency_cycles = [100, 25]
"""


def test_grid_is_a_product_and_zip_one_more_axis(tmp_path):
    points = read(_write(tmp_path, GRID)).points()
    assert len(points) == 2 * 3 * 2
    # worked by hand: grid keys in file order, the zip pairs varying fastest
    assert points[0] == {
        "backend": "model",
        "schedule": "fifo",
        "chunk_bytes": 64,
        "link_bytes_per_cycle": 2,
        "link_latency_cycles": 100,
    }
    assert points[1]["link_bytes_per_cycle"] == 8 and points[1]["link_latency_cycles"] == 25
    assert points[2]["chunk_bytes"] == 128
    assert points[-1]["schedule"] == "priority" and points[-1]["chunk_bytes"] == 256
    pairs = {(p["link_bytes_per_cycle"], p["link_latency_cycles"]) for p in points}
    assert pairs == {(2, 100), (8, 25)}  # zipped, never crossed


def test_where_drops_points(tmp_path):
    text = GRID.replace(
        'command = "train"',
        'command = "train"\nwhere = "not (schedule == \'fifo\' and chunk_bytes < 256)"',
    )
    points = read(_write(tmp_path, text)).points()
    # fifo keeps only chunk 256 (x2 zip), priority keeps all 3 (x2 zip)
    assert len(points) == 2 + 6
    assert all(p["chunk_bytes"] == 256 for p in points if p["schedule"] == "fifo")


def test_where_evaluates_expressions_not_code():
    assert where_holds("a * 2 in [4, 6] and max(a, b) < 5", {"a": 2, "b": 4})
    assert not where_holds("len(s) > 3", {"s": "abc"})
    with pytest.raises(SweepFileError, match=r"where = '__import__\(\"os\"\)'.*__import__"):
        where_holds('__import__("os")', {})
    with pytest.raises(SweepFileError, match="__class__"):
        where_holds("s.__class__", {"s": "x"})
    with pytest.raises(SweepFileError, match="'nodez' is not defined"):
        where_holds("nodez > 2", {"nodes": 2})


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('command = "train"\n[grid\nx = [1]\n', r"is not valid TOML.*line 2"),
        ('command = "train"\ncolour = 3\n', "unknown key 'colour'"),
        ("[grid]\nx = [1]\n", "command must name a gradsync command, not None"),
        ('command = "train"\n[grid]\nsteps = 3\n', r"\[grid\] steps must be a non-empty list.*3"),
        ('command = "train"\n[grid]\nsteps = []\n', r"\[grid\] steps must be a non-empty list"),
        ('command = "train"\n[zip]\na = [1, 2]\nb = [1]\n', r"one length, not \{'a': 2, 'b': 1\}"),
        (
            'command = "train"\n[options]\nsteps = 2\n[grid]\nsteps = [1]\n',
            r"'steps' is set in both",
        ),
        ('command = "train"\nwhere = 3\n', "where must be an expression in a string, not 3"),
        ('command = "train"\noptions = 3\n', r"options must be a table \(\[options\]\), not 3"),
    ],
)
def test_bad_files_are_refused_naming_the_key(tmp_path, text, match):
    with pytest.raises(SweepFileError, match=match):
        read(_write(tmp_path, text))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(SweepFileError, match="cannot read the sweep file .*nope.toml"):
        read(tmp_path / "nope.toml")
