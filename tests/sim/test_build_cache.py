"""The Verilator build cache: keyed by design and options, reused, safe under concurrency."""

import json
import multiprocessing

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from gradsync.sim import build as simbuild
from gradsync.sim.build import BuildOptions, build_component, parse_ports, to_verilog


class Counter(wiring.Component):
    """A tiny design whose Verilog changes with ``step``."""

    en: In(1)
    count: Out(8)

    def __init__(self, step: int = 1):
        self.step = step
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        with m.If(self.en):
            m.d.sync += self.count.eq(self.count + self.step)
        return m


def test_ports_parsed_from_generated_verilog():
    ports = {p.name: (p.direction, p.width) for p in parse_ports(to_verilog(Counter(), "ctr"), "ctr")}
    assert ports == {"clk": ("input", 1), "rst": ("input", 1), "en": ("input", 1), "count": ("output", 8)}


def test_key_depends_on_verilog_and_options():
    v1, v3 = to_verilog(Counter(1), "ctr"), to_verilog(Counter(3), "ctr")
    assert simbuild.build_key(v1, "ctr", BuildOptions()) == simbuild.build_key(v1, "ctr", BuildOptions())
    assert simbuild.build_key(v1, "ctr", BuildOptions()) != simbuild.build_key(v3, "ctr", BuildOptions())
    assert simbuild.build_key(v1, "ctr", BuildOptions()) != simbuild.build_key(v1, "ctr", BuildOptions(opt_fast="-O1"))
    assert simbuild.build_key(v1, "ctr", BuildOptions()) != simbuild.build_key(v1, "ctr", BuildOptions(public="all"))


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="'lxt'"):
        BuildOptions(waves="lxt")
    with pytest.raises(ValueError, match="7"):
        BuildOptions(clock_period_ns=7)
    with pytest.raises(ValueError, match="'some'"):
        BuildOptions(public="some")


def _build_in_child(cache, step, queue):
    import os

    os.environ["GRADSYNC_CACHE"] = cache
    model = build_component(Counter(step), "ctr")
    queue.put((str(model.directory), model.cached))


@pytest.mark.rtl
def test_concurrent_builds_share_one_cache_entry(tmp_path):
    """Two processes build the same new design at once: one builds, the other reuses it."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(str(tmp_path), 5, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0][0] == results[1][0]
    assert sorted(cached for _, cached in results) == [False, True]
    entries = [p for p in (tmp_path / "verilator").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1
    # a third build in this process is a cache hit with the same model
    with pytest.MonkeyPatch.context() as mp:  # restores the caller's GRADSYNC_CACHE, set or not
        mp.setenv("GRADSYNC_CACHE", str(tmp_path))
        again = build_component(Counter(5), "ctr")
    assert again.cached and str(again.directory) == results[0][0]


@pytest.mark.rtl
def test_elaboration_index_skips_verilog_generation_and_misses_on_any_change(tmp_path, monkeypatch):
    """A warm call with ``params`` reuses the model without elaborating; changes miss the index."""
    monkeypatch.setenv("GRADSYNC_CACHE", str(tmp_path))
    first = build_component(Counter(2), "ctr", params={"step": 2})
    assert not first.cached
    assert len(list((tmp_path / "verilator" / "index").glob("ctr-*.json"))) == 1

    calls = []
    real = simbuild.to_verilog

    def counting(component, name):
        calls.append(name)
        return real(component, name)

    monkeypatch.setattr(simbuild, "to_verilog", counting)
    again = build_component(Counter(2), "ctr", params={"step": 2})
    assert calls == [] and again.cached
    assert (again.directory, again.key, again.ports, again.toplevel) == (
        first.directory, first.key, first.ports, first.toplevel)

    # every miss elaborates and goes on to the Verilog-hash cache
    class Missed(Exception):
        pass

    def no_build(verilog_text, design_top, options):
        raise Missed(verilog_text == real(Counter(2), "ctr"))

    monkeypatch.setattr(simbuild, "build_verilog", no_build)

    def misses(component, params) -> bool:
        """True if the call elaborated; reports whether the Verilog equals Counter(2)'s."""
        before = len(calls)
        with pytest.raises(Missed) as missed:
            build_component(component, "ctr", params=params)
        assert len(calls) == before + 1
        return missed.value.args[0]

    assert misses(Counter(3), {"step": 3}) is False  # other parameters
    with monkeypatch.context() as m:  # changed design sources
        m.setattr(simbuild, "source_digest", lambda *a, **k: "edited")
        assert misses(Counter(2), {"step": 2}) is True
    with monkeypatch.context() as m:  # the bypass switch
        m.setenv("GRADSYNC_REELABORATE", "1")
        assert misses(Counter(2), {"step": 2}) is True
    # an index entry whose model was deleted from the cache
    (first.directory / "gradsync_build.json").unlink()
    assert misses(Counter(2), {"step": 2}) is True


@pytest.mark.rtl
def test_partial_is_constructed_only_when_the_index_misses(tmp_path, monkeypatch):
    import functools

    monkeypatch.setenv("GRADSYNC_CACHE", str(tmp_path))
    made = []

    class Counted(Counter):
        def __init__(self, step):
            made.append(step)
            super().__init__(step)

    first = build_component(functools.partial(Counted, 4), "ctr", params={"step": 4})
    assert made == [4] and not first.cached
    again = build_component(functools.partial(Counted, 4), "ctr", params={"step": 4})
    assert made == [4] and again.cached and again.key == first.key
    assert simbuild.elaboration_key(
        functools.partial(Counted, 4), "ctr", BuildOptions(), {"step": 4}
    ) == simbuild.elaboration_key(Counted(4), "ctr", BuildOptions(), {"step": 4})



def test_a_deferred_component_is_not_even_imported_on_an_index_hit(tmp_path, monkeypatch):
    """``Deferred`` names a component by module and class: a miss imports and builds it, a
    hit returns the cached model without importing the module (the RTL backend's cluster:
    Amaranth and the design stay unimported in a warm run), under the key its class gets."""
    import inspect
    import sys

    monkeypatch.setenv("GRADSYNC_CACHE", str(tmp_path / "cache"))
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "deferred_ctr.py").write_text(
        "from amaranth.hdl import Module\nfrom amaranth.lib import wiring\n"
        "from amaranth.lib.wiring import In, Out\n\n\n" + inspect.getsource(Counter)
    )
    monkeypatch.syspath_prepend(str(pkg))
    lazy = simbuild.Deferred("deferred_ctr", "Counter", (3,))
    first = build_component(lazy, "ctr", params={"step": 3})
    assert not first.cached and "deferred_ctr" in sys.modules
    cls = sys.modules["deferred_ctr"].Counter
    assert simbuild.elaboration_key(
        lazy, "ctr", BuildOptions(), {"step": 3}
    ) == simbuild.elaboration_key(cls(3), "ctr", BuildOptions(), {"step": 3})
    del sys.modules["deferred_ctr"]
    again = build_component(lazy, "ctr", params={"step": 3})
    assert again.cached and again.key == first.key and "deferred_ctr" not in sys.modules

def test_elaboration_key_covers_class_params_options_and_sources(monkeypatch):
    key = simbuild.elaboration_key
    base = key(Counter(1), "ctr", BuildOptions(), {"step": 1})
    assert base == key(Counter(1), "ctr", BuildOptions(), {"step": 1})
    assert base != key(Counter(1), "ctr", BuildOptions(), {"step": 2})
    assert base != key(Counter(1), "ctr2", BuildOptions(), {"step": 1})
    assert base != key(Counter(1), "ctr", BuildOptions(opt_fast="-O1"), {"step": 1})
    assert base != key(Counter(1), "ctr", BuildOptions(waves="vcd"), {"step": 1})
    monkeypatch.setattr(simbuild, "source_digest", lambda *a, **k: "edited")
    assert base != key(Counter(1), "ctr", BuildOptions(), {"step": 1})


def test_source_digest_reads_the_hardware_and_model_sources():
    digest = simbuild.source_digest()
    assert digest == simbuild.source_digest() and len(digest) == 64
    assert simbuild.source_digest(("gradsync.hw",)) != digest
    with pytest.raises(simbuild.BuildError, match="no_such_pkg"):
        simbuild.source_digest(("gradsync.no_such_pkg",))


@pytest.mark.rtl
def test_cached_model_runs_after_the_venv_that_built_it_is_gone(tmp_path):
    """The cache outlives venvs: a model whose recorded cocotb library folder is gone still runs."""
    import dataclasses
    import re
    import shutil

    from cocotb_tools.config import libs_dir

    from gradsync.hw.pe import ProcessingElement
    from gradsync.sim.build import run_cocotb
    from gradsync.sim.pe_selftest import pe_env

    model = build_component(ProcessingElement(16, 32, True), "pe_16_32")
    moved = tmp_path / model.directory.name
    shutil.copytree(model.directory, moved)
    exe = moved / model.toplevel
    binary = exe.read_bytes()
    # the RUNPATH: the cocotb library folder of whichever venv built the cached model
    found = re.search(rb"/[^\0:]*/cocotb/libs(?=[\0:])", binary)
    assert found is not None
    recorded = found.group(0)
    exe.write_bytes(binary.replace(recorded, recorded.replace(b"cocotb/libs", b"cocotb/gone")))
    assert str(libs_dir).encode() not in exe.read_bytes()
    run_cocotb(
        dataclasses.replace(model, directory=moved),
        "gradsync.sim.pe_selftest",
        extra_env=pe_env(16, 32, True, cycles=200, seed=3),
        test_dir=tmp_path / "run",
    )


@pytest.mark.rtl
def test_a_damaged_entry_is_rebuilt_with_a_notice_and_index_paths_stay_in_the_cache(
    tmp_path, monkeypatch, capsys
):
    """Issue 15: a tampered simulator ran, a deleted one was a FileNotFoundError and never
    rebuilt, and the index's ``directory`` could point outside the cache root."""
    monkeypatch.setenv("GRADSYNC_CACHE", str(tmp_path))
    first = build_component(Counter(4), "ctr", params={"step": 4})
    exe = first.directory / first.toplevel
    good = simbuild.file_sha256(exe)
    assert first.info["executable_sha256"] == good and simbuild.entry_damage(first.directory) is None

    with open(exe, "r+b") as f:  # tamper: one byte of the executable
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert "does not match the hash" in simbuild.entry_damage(first.directory)
    capsys.readouterr()
    again = build_component(Counter(4), "ctr", params={"step": 4})
    err = capsys.readouterr().err
    assert not again.cached and simbuild.entry_damage(again.directory) is None
    (line,) = [x for x in err.splitlines() if "building the Verilator model of ctr" in x]
    assert "(the cached model ctr-" in line
    assert "is damaged: its executable gradsync_tb does not match the hash" in line

    exe.unlink()  # deleted
    assert "is missing" in simbuild.entry_damage(first.directory)
    third = build_component(Counter(4), "ctr", params={"step": 4})
    assert not third.cached and simbuild.entry_damage(third.directory) is None
    assert "missing" in capsys.readouterr().err

    # an index entry pointing outside the cache root is not followed
    outside = tmp_path / "elsewhere"
    import shutil

    shutil.copytree(first.directory, outside)
    (index,) = (tmp_path / "verilator" / "index").glob("ctr-*.json")
    entry = json.loads(index.read_text())
    for bad in ("../../elsewhere", str(outside), "..", ""):
        index.write_text(json.dumps(dict(entry, directory=bad)))
        assert simbuild._from_index(index, BuildOptions()) is None, bad
    index.write_text(json.dumps(entry))
    assert simbuild._from_index(index, BuildOptions()).directory == first.directory
