"""Clock gating of a block that is idle most cycles, in the Verilog the simulator builds.

A Verilated model evaluates every register's next state at every clock edge, busy or
not: the systolic array (``hw/array.py``) computes its R x C products in every cycle of a
run although it holds a beat in fewer than one cycle in five of the main job (GEMM
cycles were 15 % of each node's cycles in a 20-step run). On a gated clock its
registers, and the logic that reads only them, are not evaluated at all while the clock
is stopped (Verilator schedules a block by the edges of its own clock). Gated: the
array, the vector streamer with its unit and the GEMM write-back (``hw/sequencer.py``;
the write-back takes its command's fields at start, so its row logic reads only gated
registers and the array's outputs).

:func:`gated` adds a block either plainly (the Amaranth simulator, which the block tests
use, and every design elaborated outside :func:`clock_gating`) or, inside
:func:`clock_gating` (``sim/build.py``'s ``to_verilog``), on a clock that runs only in
cycles where ``active`` is high: a negative-edge register samples ``active`` in the
middle of each cycle and ANDs the clock of the next rising edge, as an integrated
clock-gating cell does (the clock is low while the enable changes, so it never glitches).
The block's reset stays the design's.

Behaviour per cycle is the same either way only if the block, while ``active`` is low,
holds nothing that matters: every register it would update then must be unobservable
(data beside a low valid bit) until ``active`` is high again. The caller keeps
``active`` high from the first cycle of work until the block has drained.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from amaranth.hdl import ClockDomain, ClockSignal, DomainRenamer, Module, ResetSignal, Signal

_GATING = contextvars.ContextVar("gradsync_clock_gating", default=False)


@contextlib.contextmanager
def clock_gating() -> Iterator[None]:
    """Elaborate with gated clocks (for Verilog a simulator builds; see the module doc)."""
    token = _GATING.set(True)
    try:
        yield
    finally:
        _GATING.reset(token)


def gating() -> bool:
    """True while elaborating inside :func:`clock_gating`."""
    return _GATING.get()


def activity(m: Module, busy, drain_cycles: int):
    """``busy``, held high ``drain_cycles`` cycles longer: the ``active`` of :func:`gated`
    for a block that works while ``busy`` and drains within ``drain_cycles`` after it.
    Outside :func:`clock_gating` no logic: constant 1."""
    if not gating():
        return 1
    left = Signal(range(drain_cycles + 1), name="drain_left")
    active = Signal(name="active")
    with m.If(busy):
        m.d.sync += left.eq(drain_cycles)
    with m.Elif(left != 0):
        m.d.sync += left.eq(left - 1)
    m.d.comb += active.eq(busy | (left != 0))
    return active


def gated_core(busy, drain_cycles: int) -> tuple[Module, Module]:
    """``(top, core)``: a block's module ``top`` and the module ``core`` under it that
    holds the block's logic, gated by ``busy`` held ``drain_cycles`` longer
    (:func:`activity`); ``elaborate`` fills ``core`` and returns ``top``."""
    top, core = Module(), Module()
    gated(top, core, activity(top, busy, drain_cycles), "core")
    return top, core


def gated(m: Module, block, active, name: str) -> None:
    """Add ``block`` to ``m`` as submodule ``name``; inside :func:`clock_gating` its ``sync``
    domain runs on ``m``'s clock gated by ``active`` (high in the cycles the block works)."""
    if not gating():
        m.submodules[name] = block
        return
    en = Signal(name=f"{name}_clk_en")
    sample = ClockDomain(f"{name}_en", clk_edge="neg", reset_less=True, local=True)
    clock = ClockDomain(f"{name}_clk", async_reset=True, local=True)
    m.domains += [sample, clock]
    m.d.comb += [
        sample.clk.eq(ClockSignal("sync")),
        clock.clk.eq(ClockSignal("sync") & en),
        clock.rst.eq(ResetSignal("sync")),
    ]
    m.d[sample.name] += en.eq(active)
    m.submodules[name] = DomainRenamer({"sync": clock.name})(block)
