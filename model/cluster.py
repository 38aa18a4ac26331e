"""N modelled nodes on a unidirectional ring of links, each driven by its own firmware task.

This is the model backend of a training run: it builds one
:class:`~gradsync.model.device.ModelDevice` per node on a shared
:class:`~gradsync.model.events.Simulator`, links node i's transmitter to node
i+1 (for N = 2 the two links form the exchange pair), starts the firmware
coroutine of every node and runs the event loop until all finish.

``link_faults`` (per link, ``gradsync.spec.faults`` control values, as
``--link-faults`` gives them) sends every packet through the cycle-by-cycle
link layer of :mod:`gradsync.model.link` instead of the fault-free formulas.
Without them a packet the receiver would hold for its window's next step
stops the run with :class:`~gradsync.model.nic.ReceiverHold` (the fast path
cannot time it; ``gradsync.model_backend`` then reruns with link layers).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass

from gradsync.model.device import ModelDevice
from gradsync.model.events import SimulationError, Simulator
from gradsync.model.nic import ReceiverHold
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig


@dataclass
class ClusterRun:
    sim: Simulator
    devices: list[ModelDevice]
    results: list
    cycles: int


class Cluster:
    def __init__(
        self,
        nodes: int,
        hw: HardwareConfig,
        fmt: FixedPointFormat,
        link_faults: list[dict] | None = None,
        seq_start: int = 0,
    ) -> None:
        if nodes < 1:
            raise ValueError(f"nodes must be >= 1, not {nodes!r}")
        self.sim = Simulator()
        self.devices = [ModelDevice(self.sim, i, nodes, hw, fmt) for i in range(nodes)]
        for i, dev in enumerate(self.devices):
            dev.link_to = self.devices[(i + 1) % nodes]
        if link_faults is not None:
            if len(link_faults) != nodes:
                raise ValueError(f"{len(link_faults)} link fault settings for {nodes} links")
            for dev, controls in zip(self.devices, link_faults, strict=True):
                dev.nic.attach_link_layer(controls, seq_start)

    def link_counters(self) -> list[dict]:
        """Per link: the fault and transport counters of its link layer (faulted runs)."""
        return [d.nic.layer.counters for d in self.devices if d.nic.layer is not None]

    def run(
        self, programs: list[Callable[[ModelDevice], Coroutine]], max_cycles: int | None = None
    ) -> ClusterRun:
        if len(programs) != len(self.devices):
            raise ValueError(f"{len(programs)} programs for {len(self.devices)} nodes")
        ended: list[int] = []

        async def timed(coro):
            result = await coro
            ended.append(self.sim.now)
            return result

        tasks = [
            self.sim.spawn(f"node{i}", timed(prog(dev)))
            for i, (prog, dev) in enumerate(zip(programs, self.devices, strict=True))
        ]
        faulted = any(d.nic.layer is not None for d in self.devices)
        try:
            self.sim.run(max_cycles, stop_when_done=faulted)
        except ReceiverHold:
            raise  # the fast path gave up (the caller reruns with link layers)
        except SimulationError as exc:
            report = "; ".join(f"node {d.node_id}: {d.outstanding()}" for d in self.devices)
            raise type(exc)(f"{exc} ({report})") from None
        # a faulted run ends with the programs, as the RTL's does (the link layers' ticks
        # after it are left unrun), and a link layer that stopped stepping before it (quiet)
        cycles = max(ended) if faulted and ended else self.sim.now
        # steps on to it: the RTL reads its link counters in cycle ``cycles``, and the idle
        # tail's repeated acknowledgements (and the faults they meet) count too
        for d in self.devices:
            if d.nic.layer is not None and d.nic.layer.now < cycles:
                d.nic.layer.advance(cycles)
        return ClusterRun(self.sim, self.devices, [t.result for t in tasks], cycles)
