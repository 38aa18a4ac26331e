"""The build cache as a user sees it: builds that say what they do, small entries, LRU eviction,
``gradsync cache list|prune|clear``."""

from __future__ import annotations

import json
import os
import time

import pytest

from gradsync.cli import main
from gradsync.sim import cache

MB = 1 << 20


def fake_entry(root, name: str, megabytes: float, age_s: float, build_s: float = 10.0):
    """A finished cache entry of ``megabytes`` last used ``age_s`` seconds ago."""
    d = root / name
    d.mkdir(parents=True)
    (d / "gradsync_tb").write_bytes(b"\0" * int(megabytes * MB))
    stamp = d / cache.STAMP
    stamp.write_text(json.dumps({"design_top": name.split("-")[0], "build_seconds": build_s}))
    t = time.time() - age_s
    os.utime(stamp, (t, t))
    return d


def test_prune_evicts_least_recently_used_beyond_the_limit(tmp_path):
    a = fake_entry(tmp_path, "cluster2-aaa", 3, age_s=10)
    b = fake_entry(tmp_path, "cluster4-bbb", 3, age_s=1000)
    c = fake_entry(tmp_path, "ctr-ccc", 3, age_s=100)
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "cluster4-x.json").write_text(json.dumps({"directory": b.name}))
    (tmp_path / "index" / "cluster2-y.json").write_text(json.dumps({"directory": a.name}))
    # 7 MB hold the two most recent (a: 10 s ago, c: 100 s ago); b is the oldest
    evicted = cache.prune(tmp_path, 7 * MB)
    assert [e.path for e in evicted] == [b]
    assert a.is_dir() and c.is_dir() and not b.exists()
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == ["cluster2-y.json"]
    # the model just built is never evicted, even when it alone is over the limit
    evicted = cache.prune(tmp_path, 1 * MB, keep=c)
    assert [e.path for e in evicted] == [a] and c.is_dir()


def test_touch_makes_an_entry_the_most_recent(tmp_path):
    old = fake_entry(tmp_path, "a-1", 1, age_s=5000)
    fake_entry(tmp_path, "b-2", 1, age_s=10)
    cache.touch(old)
    assert [e.path.name for e in cache.entries(tmp_path)] == ["a-1", "b-2"]


def test_trim_keeps_what_a_simulation_needs(tmp_path):
    for name in ("gradsync_tb", "gradsync_build.json", "build.log", "Vtop__pch.h.fast.gch",
                 "Vtop__ALL.a", "verilated.o", "Vtop.cpp", "Vtop.mk"):  # fmt: skip
        (tmp_path / name).write_text("x")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "cluster2.v").write_text("module m; endmodule")
    (tmp_path / "obj").mkdir()
    cache.trim_entry(tmp_path, "gradsync_tb")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "build.log", "gradsync_build.json", "gradsync_tb", "src"]  # fmt: skip


def test_announcement_names_the_design_the_reason_and_the_last_time(tmp_path, capsys):
    cache.announce_build(tmp_path, "cluster2", "no cached model for this design")
    first = capsys.readouterr().err
    assert first == (
        "gradsync: building the Verilator model of cluster2 (no cached model for this design); "
        "a first build takes about 1 to 3 minutes on 2 cores\n"
    )
    cache.record_build_time(tmp_path, "cluster2", 49.34)
    cache.announce_build(tmp_path, "cluster2", "why")
    assert capsys.readouterr().err.endswith("(why); the last build of cluster2 took 49 s\n")


def test_limit_from_the_environment(monkeypatch):
    monkeypatch.setenv("GRADSYNC_CACHE_MAX_MB", "512")
    assert cache.max_bytes() == 512 * MB
    monkeypatch.setenv("GRADSYNC_CACHE_MAX_MB", "lots")
    with pytest.raises(ValueError, match="GRADSYNC_CACHE_MAX_MB must be a number of MB, not 'lots'"):
        cache.max_bytes()


def test_cache_command_lists_prunes_and_clears(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GRADSYNC_CACHE", str(tmp_path))
    root = tmp_path / "verilator"
    fake_entry(root, "cluster2-aaa", 2, age_s=30, build_s=49)
    fake_entry(root, "cluster4-bbb", 2, age_s=7200, build_s=80)
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{root}: 2 model(s)"
    assert out[2].split()[:3] == ["cluster2-aaa", "2.0", "MB"] and out[2].endswith("49 s")
    assert "2 h ago" in out[3] and out[-1] == "total 4.0 MB of a 2.0 GB limit"
    assert main(["cache", "prune", "--max-mb", "3"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "removed 1 model(s), 2.0 MB; limit 3.0 MB", "  cluster4-bbb"]  # fmt: skip
    assert main(["cache", "prune", "--max-mb", "-1"]) == 2
    assert capsys.readouterr().err == (
        "gradsync cache: --max-mb must be a positive number of MB, not -1\n"
    )
    assert main(["cache", "clear"]) == 0
    assert capsys.readouterr().out.startswith(f"cleared {root} (2.0 MB")
    assert not root.exists()
    assert main(["cache"]) == 2  # no action: the usage


@pytest.mark.rtl
def test_a_build_says_what_it_builds_and_why_and_keeps_a_small_entry(tmp_path, monkeypatch, capsys):
    """One line before (what, why, how long last time), one after (time split, where); the
    entry keeps only the executable, stamp, sources and log, and still simulates."""
    from gradsync.sim.build import build_component
    from tests.sim.test_build_cache import Counter

    monkeypatch.setenv("GRADSYNC_CACHE", str(tmp_path))
    capsys.readouterr()
    model = build_component(Counter(6), "ctr", params={"step": 6})
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("gradsync: generating the Verilog of ctr (no cached model")
    assert lines[1].startswith(
        "gradsync: building the Verilator model of ctr (no cached model for this design"
    )
    assert lines[2].startswith("gradsync: built ctr in ") and f"cached in {model.directory}" in lines[2]
    info = model.info
    assert 0 < info["verilator_seconds"] < info["build_seconds"]
    assert 0 < info["cxx_seconds"] < info["build_seconds"]
    assert sorted(p.name for p in model.directory.iterdir()) == sorted(
        [model.toplevel, "gradsync_build.json", "build.log", "src"]
    )
    again = build_component(Counter(6), "ctr", params={"step": 6})
    assert again.cached and capsys.readouterr().err == ""  # a cache hit says nothing
    history = json.loads((tmp_path / "verilator" / cache.HISTORY).read_text())
    assert history["ctr"] == round(info["build_seconds"], 1)
