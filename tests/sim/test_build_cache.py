"""The Verilator build cache: keyed by design and options, reused, safe under concurrency."""

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
    import os

    os.environ["GRADSYNC_CACHE"] = str(tmp_path)
    try:
        again = build_component(Counter(5), "ctr")
    finally:
        del os.environ["GRADSYNC_CACHE"]
    assert again.cached and str(again.directory) == results[0][0]
