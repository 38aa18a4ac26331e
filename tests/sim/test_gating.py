"""Gated clocks of idle blocks (``hw/gating.py``): only in the Verilog a simulator builds.

That the gated Verilog behaves cycle for cycle as the ungated design is checked where it
matters, against the golden model: every RTL training and device test builds its cluster
through ``sim/build.py``'s ``to_verilog`` (e.g. ``tests/system/test_rtl_device.py``,
``tests/system/test_rtl_faults.py``, bf16 and 16x16 runs). A drain bound that is too short
hangs those runs (tried: ``drain_cycles = rows + 2`` on the array; the main job stopped
at the watchdog with every GEMM unfinished).
"""

from __future__ import annotations

import pytest
from amaranth.back import verilog
from amaranth.hdl import Elaboratable, Fragment, Module, Signal
from amaranth.sim import Simulator

from gradsync.hw.array import SystolicArray
from gradsync.hw.gating import activity, clock_gating, gating
from gradsync.hw.sequencer import ComputeSequencer
from gradsync.sim.build import to_verilog


def test_the_array_runs_on_a_gated_clock_only_in_the_simulators_verilog():
    gated = to_verilog(SystolicArray(2, 2), "arr")
    plain = verilog.convert(SystolicArray(2, 2), name="arr", emit_src=False)
    assert "negedge clk" in gated and "core_clk" in gated
    assert "negedge" not in plain and "core_clk" not in plain


def test_the_sequencer_gates_the_array_the_vector_streamer_and_the_write_back():
    text = to_verilog(ComputeSequencer(rows=2, cols=2, lanes=2, scratch_words=64,
                                       grad_words=64), "seq")  # fmt: skip
    gated_modules = {line.split()[1] for line in text.splitlines()
                     if line.startswith("module ") and "core_clk" in line}  # fmt: skip
    assert any(".array.core" in m for m in gated_modules), gated_modules
    assert any(".vector.core" in m for m in gated_modules), gated_modules
    assert any(".writeback.core" in m for m in gated_modules), gated_modules


def test_clock_gating_is_scoped():
    assert not gating()
    with pytest.raises(RuntimeError), clock_gating():
        assert gating()
        raise RuntimeError
    assert not gating()


class _Activity(Elaboratable):
    def __init__(self, drain: int):
        self.busy, self.active, self.drain = Signal(), Signal(), drain

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.active.eq(activity(m, self.busy, self.drain))
        return m


@pytest.mark.parametrize("drain", [1, 3])
def test_activity_holds_busy_for_the_drain_cycles(drain):
    """busy in cycles 2-3 and 10: active in 2 .. 3 + drain and 10 .. 10 + drain."""
    busy_cycles = {2, 3, 10}
    with clock_gating():
        dut = _Activity(drain)
        sim = Simulator(dut)  # elaborates here, inside clock_gating
    sim.add_clock(1e-6)
    seen = []

    async def bench(ctx):
        for cycle in range(20):
            ctx.set(dut.busy, cycle in busy_cycles)
            seen.append(ctx.get(dut.active))
            await ctx.tick()

    sim.add_testbench(bench)
    sim.run()
    expect = [any(0 <= c - b <= drain for b in busy_cycles) for c in range(20)]
    assert seen == [int(e) for e in expect]


def test_activity_outside_clock_gating_is_always_on():
    m = Module()
    assert activity(m, Signal(), 5) == 1
    assert not Fragment.get(m, None).statements  # and adds no logic
