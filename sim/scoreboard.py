"""Scoreboard: the same host programs on the golden model and on the RTL, compared.

A *host program* is an ``async def program(dev)`` that awaits only the device
protocol (``firmware.device.Device``: ``read32``, ``write32``, ``wait_irq``,
``load``, ``dump``), directly or through ``firmware.driver.Driver``.  The
:class:`Scoreboard` runs one program per node on ``model.cluster.Cluster``
(:meth:`Scoreboard.expect`) and on the RTL devices of a ``sim.testbench``
TB (:meth:`Scoreboard.observe`), each device wrapped in a
:class:`RecordingDevice` that logs everything the program saw with the cycle
it saw it in.  After its program, each node's ``memories`` are dumped and
(``exact``) its trace buffer drained; :meth:`Scoreboard.compare` then asserts
that results, memories, the call log (values and cycles) and every engine's
trace records are identical, naming the first difference.

``exact=False`` compares only program results and memories: for runs whose
timing legitimately differs from the model's, such as link faults (the model
has no faulty links; resends change cycles, not data).

The log format (``[what, cycle, value]`` entries, trace as ``{engine: [[cycle,
event, kind, tag, aux]]}``) and :func:`compare_logs` are shared with the
project's own cluster tests (``tests/hw/cocotb_cluster.py``).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from gradsync.spec import regmap as rm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import DEFAULT_HARDWARE, HardwareConfig

#: A host program: awaits only the device it is given; its return value is compared.
Program = Callable[[Any], Awaitable[Any]]


class ScoreboardMismatch(AssertionError):
    """The RTL saw something else than the golden model; the message names the first difference."""


def plain(value):
    """``value`` as JSON-able Python (arrays -> lists, tuples -> lists), for comparing."""

    def default(x):
        if isinstance(x, np.ndarray):
            return x.tolist()
        if isinstance(x, np.integer):
            return int(x)
        raise TypeError(f"a program result must be JSON-able or NumPy, not {type(x).__name__}")

    return json.loads(json.dumps(value, default=default))


class Recorder:
    """What a host program saw, with the cycle of each note (JSON-able ``[what, cycle, value]``)."""

    def __init__(self, now: Callable[[], int]):
        self.now = now
        self.log: list = []

    def note(self, what: str, value=None) -> None:
        if isinstance(value, np.ndarray):
            value = value.tolist()
        self.log.append([what, self.now(), value])


class RecordingDevice:
    """A device (protocol ``firmware.device.Device``) that notes every call and its return cycle.

    ``now``: the cycle counter of the backend (``RtlDevice.now``, or the model's
    ``cluster.sim.now``). Attributes of the wrapped device stay reachable.
    """

    def __init__(self, dev, now: Callable[[], int]):
        self.dev = dev
        self.rec = Recorder(now)

    def __getattr__(self, name):
        return getattr(self.dev, name)

    async def read32(self, addr: int) -> int:
        value = await self.dev.read32(addr)
        self.rec.note("read32", [addr, int(value)])
        return value

    async def write32(self, addr: int, value: int) -> None:
        await self.dev.write32(addr, value)
        self.rec.note("write32", [addr, int(value)])

    async def wait_irq(self, mask: int) -> int:
        status = await self.dev.wait_irq(mask)
        self.rec.note("wait_irq", [mask, int(status)])
        return status

    async def load(self, addr: int, array) -> None:
        await self.dev.load(addr, array)
        self.rec.note("load", [addr, len(np.asarray(array).reshape(-1))])

    async def dump(self, addr: int, n: int) -> np.ndarray:
        words = await self.dev.dump(addr, n)
        self.rec.note("dump", [addr, np.asarray(words).tolist()])
        return words


def records_by_engine(records: Sequence[rm.TraceRecord]) -> dict[str, list]:
    """Trace records grouped per engine: ``{str(engine): [[cycle, event, kind, tag, aux]]}``."""
    out: dict[str, list] = {}
    for r in records:
        out.setdefault(str(int(r.engine)), []).append(
            [int(r.cycle), int(r.event), int(r.kind), int(r.tag), int(r.aux)]
        )
    return out


def trace_differences(got: dict, want: dict, who: str = "") -> list[str]:
    """First differing record of every engine between two :func:`records_by_engine` dicts."""
    out = []
    for engine in sorted(set(got) | set(want)):
        name = rm.Engine(int(engine)).name
        ge, we = got.get(engine, []), want.get(engine, [])
        for j, (a, b) in enumerate(zip(ge, we, strict=False)):
            if a != b:
                out.append(f"{who}engine {name} record {j}: RTL {a} != model {b}")
                break
        else:
            if len(ge) != len(we):
                out.append(f"{who}engine {name}: {len(ge)} records, model {len(we)}")
    return out


def compare_logs(got: list, want: list, who: str) -> None:
    """Assert two :class:`Recorder` logs are identical, naming the first difference
    (``"trace"`` entries: per engine)."""
    g_trace = next((e[2] for e in got if e[0] == "trace"), {})
    w_trace = next((e[2] for e in want if e[0] == "trace"), {})
    diffs = trace_differences(g_trace, w_trace)
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        if g[0] == "trace" and w[0] == "trace":
            if g[1] != w[1]:
                raise ScoreboardMismatch(
                    f"{who}: trace read returned in cycle {g[1]}, model {w[1]}"
                )
            if first := trace_differences(g[2], w[2], f"{who}: "):
                raise ScoreboardMismatch(first[0])
            continue
        if g != w:
            raise ScoreboardMismatch(
                f"{who}: entry {i}: RTL {g} != model {w} (before: {got[max(0, i - 3) : i]})"
                f"; trace: {diffs}"
            )
    if len(got) != len(want):
        raise ScoreboardMismatch(f"{who}: {len(got)} entries, model {len(want)}")


async def _idle(dev) -> None:
    return None


class Scoreboard:
    """Runs host programs on the golden model and the RTL and compares what they saw.

    Parameters
    ----------
    nodes, hardware, fmt:
        The cluster (must be the one the TB's model was built for; see :meth:`for_tb`).
    memories:
        ``(byte address, words)`` regions dumped from every node after its program
        (SRAM words are signed raw operands; ring/trace memory 32-bit words).
    exact:
        Also compare every call's value and return cycle and all trace records.
    max_cycles:
        Budget of the model run, in cycles.
    """

    def __init__(
        self,
        nodes: int = 2,
        hardware: HardwareConfig = DEFAULT_HARDWARE,
        fmt: FixedPointFormat | None = None,
        *,
        memories: Sequence[tuple[int, int]] = (),
        exact: bool = True,
        max_cycles: int = 2_000_000,
    ) -> None:
        self.nodes, self.hw = nodes, hardware
        self.fmt = fmt or FixedPointFormat()
        self.memories = [(int(a), int(n)) for a, n in memories]
        self.exact = exact
        self.max_cycles = max_cycles

    @classmethod
    def for_tb(cls, tb, **kwargs) -> Scoreboard:
        """A scoreboard for the cluster of ``tb`` (a ``ClusterTB`` or ``NodeTB``)."""
        return cls(tb.nodes, tb.hw, tb.fmt, **kwargs)

    def _programs(self, programs: Sequence[Program | None]) -> list[Program]:
        if len(programs) > self.nodes:
            raise ValueError(f"{len(programs)} programs for {self.nodes} nodes")
        progs = list(programs) + [None] * (self.nodes - len(programs))
        return [p or _idle for p in progs]

    async def _node(self, program: Program, dev, now) -> dict:
        from gradsync.firmware.driver import Driver

        rdev = RecordingDevice(dev, now)
        result = plain(await program(rdev))
        memories = {f"0x{a:08x}": (await dev.dump(a, n)).tolist() for a, n in self.memories}
        trace = records_by_engine(await Driver(dev).drain_trace()) if self.exact else {}
        return {"result": result, "memories": memories, "calls": rdev.rec.log, "trace": trace}

    def expect(self, programs: Sequence[Program | None]) -> list[dict]:
        """Run ``programs`` (one per node; missing or ``None``: idle) on the golden model."""
        from gradsync.model.cluster import Cluster

        cluster = Cluster(self.nodes, self.hw, self.fmt)

        def start(program):
            return lambda dev: self._node(program, dev, lambda: cluster.sim.now)

        run = cluster.run([start(p) for p in self._programs(programs)], self.max_cycles)
        return plain(run.results)

    async def observe(
        self, devices: Sequence, programs: Sequence[Program | None], timeout_ns: int = 10**9
    ) -> list[dict]:
        """Run ``programs`` concurrently on the RTL ``devices`` (``tb.devices``)."""
        import cocotb
        from cocotb.triggers import with_timeout

        tasks = [
            cocotb.start_soon(self._node(p, d, d.now))
            for p, d in zip(self._programs(programs), devices, strict=True)
        ]
        return plain([await with_timeout(t, timeout_ns, "ns") for t in tasks])

    def compare(self, got: list[dict], want: list[dict]) -> None:
        """Raise :class:`ScoreboardMismatch` at the first difference of RTL ``got`` and model
        ``want``: per node, the result, each memory, then (``exact``) calls and trace."""
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            who = f"node {i}"
            if g["result"] != w["result"]:
                raise ScoreboardMismatch(
                    f"{who}: program returned {g['result']}, model {w['result']}"
                )
            for addr, words in w["memories"].items():
                mine = g["memories"][addr]
                bad = [j for j, (a, b) in enumerate(zip(mine, words, strict=True)) if a != b]
                if bad:
                    j = bad[0]
                    raise ScoreboardMismatch(
                        f"{who}: memory at {addr}: {len(bad)} words differ, first word {j}: "
                        f"RTL {mine[j]} != model {words[j]}"
                    )
            if self.exact:
                compare_logs(g["calls"], w["calls"], who)
                if first := trace_differences(g["trace"], w["trace"], f"{who}: "):
                    raise ScoreboardMismatch(first[0])

    async def check(self, tb, programs: Sequence[Program | None]) -> list[dict]:
        """:meth:`expect`, :meth:`observe` on ``tb.devices`` and :meth:`compare`; returns the
        RTL's logs (per node: ``result``, ``memories``, ``calls``, ``trace``)."""
        want = self.expect(programs)
        got = await self.observe(tb.devices, programs)
        self.compare(got, want)
        return got
