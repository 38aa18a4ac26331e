"""The model backend of a training run: the firmware on N golden-model nodes.

``run_model(cfg, jobs)`` is a :data:`gradsync.firmware.experiment.Backend`.
Weight snapshots are backdoor reads of the modelled scratchpad at the moments
the firmware reports (they cost no simulated cycles).

A watchdog (:mod:`gradsync.watchdog`) stops a run that makes no progress for
:func:`gradsync.spec.timing.watchdog_cycles` cycles with a
:class:`~gradsync.watchdog.WatchdogError`; the event loop's own deadlock
detection still reports a run in which nothing at all is scheduled.

A fault-free run takes the model's fast path (apply cycles computed when a
chunk is sent).  It cannot time a packet the receiver holds for its window's
next step (``docs/comm.md``); when it meets one
(:class:`~gradsync.model.nic.ReceiverHold`) the whole run is done again with
a zero-rate link layer on every link -- cycle by cycle, exact, and otherwise
identical to the fast path -- after a one-line notice on stderr.  The aborted
attempt leaves nothing behind: its weights, results and schedule state are
dropped (each attempt gets its own copy of the jobs' schedules).
"""

from __future__ import annotations

import copy
import dataclasses
import sys

from gradsync.firmware.experiment import BackendResult, TrainConfig
from gradsync.firmware.training import NodeFirmware, NodeJob, Observer
from gradsync.model.cluster import Cluster
from gradsync.model.device import ModelDevice
from gradsync.model.events import SimulationError
from gradsync.model.link import LinkStalled
from gradsync.model.nic import ReceiverHold
from gradsync.spec import regmap as rm
from gradsync.spec.hardware import build_config
from gradsync.watchdog import (
    NodeProgress,
    Watchdog,
    WatchdogError,
    config_watchdog_cycles,
    pending_sends,
)

#: ``watchdog_cycles`` argument: the bound of :func:`gradsync.spec.timing.watchdog_cycles`.
DEFAULT = "default"


def run_model(
    cfg: TrainConfig,
    jobs: list[NodeJob],
    max_cycles: int | None = None,
    watchdog_cycles: int | str | None = DEFAULT,
    link_faults: list[dict] | None = None,
) -> BackendResult:
    return run_model_cluster(
        cfg, jobs, max_cycles, watchdog_cycles=watchdog_cycles, link_faults=link_faults
    )[0]


def run_model_cluster(
    cfg: TrainConfig,
    jobs: list[NodeJob],
    max_cycles: int | None = None,
    watchdog_cycles: int | str | None = DEFAULT,
    link_faults: list[dict] | None = None,
    seq_start: int = 0,
) -> tuple[BackendResult, Cluster]:
    """:func:`run_model`, also returning the cluster for backdoor inspection (tests).

    ``watchdog_cycles``: :data:`DEFAULT` (the configuration's bound), a bound in
    cycles, or ``None`` (no watchdog). ``link_faults``: per link, fault controls
    (``gradsync.spec.faults``); the links are then stepped cycle by cycle
    (``gradsync.model.link``), starting their sequence numbers at ``seq_start``.
    Without them a run that meets a receiver hold is rerun with zero-rate link layers
    (module docstring).
    """
    if link_faults is None and cfg.nodes > 1:
        try:
            return _run_once(cfg, _own_copy(jobs), max_cycles, watchdog_cycles, None, seq_start)
        except ReceiverHold as exc:
            print(
                f"gradsync: the model's fast path met a receiver hold ({exc}); rerunning the "
                "run with cycle-by-cycle links (exact, same timing otherwise)",
                file=sys.stderr,
            )
            link_faults = [{} for _ in range(cfg.nodes)]
    return _run_once(cfg, jobs, max_cycles, watchdog_cycles, link_faults, seq_start)


def _own_copy(jobs: list[NodeJob]) -> list[NodeJob]:
    """The jobs with their own schedule objects, so an aborted attempt changes none of the
    caller's (a schedule may keep state)."""
    try:
        return [dataclasses.replace(j, schedule=copy.deepcopy(j.schedule)) for j in jobs]
    except (TypeError, copy.Error):  # a schedule that cannot be copied: shared, as before
        return [dataclasses.replace(j) for j in jobs]


def _run_once(
    cfg: TrainConfig,
    jobs: list[NodeJob],
    max_cycles: int | None,
    watchdog_cycles: int | str | None,
    link_faults: list[dict] | None,
    seq_start: int,
) -> tuple[BackendResult, Cluster]:
    hw, fmt = cfg.hardware, cfg.fixed_point
    # built with the build link, as the RTL is; the firmware sets the run's (LINK_SET)
    cluster = Cluster(cfg.nodes, build_config(hw), fmt, link_faults, seq_start)
    weights = {}
    firmware: list[NodeFirmware | None] = [None] * cfg.nodes

    def program(node: int):
        dev = cluster.devices[node]

        def snapshot(step: int, layer: int, addr: int, n: int) -> None:
            idx = (addr - rm.SCRATCH_BASE) // fmt.word_bytes
            weights[(node, step, layer)] = dev.scratch[idx : idx + n].copy()

        job = jobs[node]
        job.observer = Observer(weights=snapshot)

        def start(d):
            firmware[node] = NodeFirmware(d, job)
            return firmware[node].run()

        return start

    if watchdog_cycles == DEFAULT:
        watchdog_cycles = config_watchdog_cycles(cfg)
    run = run_watched(
        cluster, [program(i) for i in range(cfg.nodes)], max_cycles, watchdog_cycles, firmware
    )
    return BackendResult(run.results, weights, run.cycles), cluster


class CountingDevice:
    """A node's device protocol as its firmware uses it, counting the calls (for the watchdog)."""

    def __init__(self, dev: ModelDevice) -> None:
        self.dev = dev
        self.calls = {"read32": 0, "write32": 0, "wait_irq": 0, "load": 0, "dump": 0}

    async def read32(self, addr: int) -> int:
        self.calls["read32"] += 1
        return await self.dev.read32(addr)

    async def write32(self, addr: int, value: int) -> None:
        self.calls["write32"] += 1
        await self.dev.write32(addr, value)

    async def wait_irq(self, mask: int) -> int:
        self.calls["wait_irq"] += 1
        return await self.dev.wait_irq(mask)

    async def load(self, addr: int, array) -> None:
        await self.dev.load(addr, array)
        self.calls["load"] += 1

    async def dump(self, addr: int, n: int):
        out = await self.dev.dump(addr, n)
        self.calls["dump"] += 1
        return out


def run_watched(
    cluster: Cluster,
    programs: list,
    max_cycles: int | None,
    bound: int | None,
    firmware: list | None = None,
):
    """``cluster.run(programs, max_cycles)`` under a watchdog of ``bound`` cycles (None: off).

    Each program is called with a :class:`CountingDevice`; every
    ``Watchdog.period`` cycles (``Simulator.watch``) a callback compares the nodes' progress
    (:class:`~gradsync.watchdog.NodeProgress`) and raises
    :class:`~gradsync.watchdog.WatchdogError` when it stood still for ``bound``.
    ``firmware``: per node its :class:`NodeFirmware` once started (for the report).
    """
    devices = [CountingDevice(d) for d in cluster.devices]
    wrapped = [lambda _d, p=p, c=c: p(c) for p, c in zip(programs, devices, strict=True)]
    if bound is not None:
        dog = Watchdog(bound)
        sim = cluster.sim

        def check() -> None:
            if dog.sample(sim.now, [_progress(c) for c in devices]):
                raise WatchdogError(_report(dog, sim.now, cluster, devices, firmware))

        sim.watch(dog.period, check)
        for dev in cluster.devices:  # a faulted link steps cycles inside one send: bound it too
            if dev.nic.layer is not None:
                dev.nic.layer.stall_limit = bound
    try:
        return cluster.run(wrapped, max_cycles)
    except LinkStalled:
        since, cycle, message = next(
            d.nic.layer.stalled for d in cluster.devices if d.nic.layer and d.nic.layer.stalled
        )
        dog.sample(cycle, [_progress(c) for c in devices])
        dog.since = since  # the link stepped these cycles inside one send
        report = _report(dog, cycle, cluster, devices, firmware)
        raise WatchdogError(f"{report} [{message}]") from None
    except SimulationError as exc:
        if bound is None or not str(exc).startswith("deadlock at cycle"):
            raise  # a failed task, a spent budget
        # the event loop ran dry: the same report as a spent bound, naming the link or
        # node and the counters
        sim = cluster.sim
        dog.sample(sim.now, [_progress(c) for c in devices])
        raise WatchdogError(
            _report(dog, sim.now, cluster, devices, firmware, deadlock=True)
        ) from None


def _progress(c: CountingDevice) -> NodeProgress:
    dev, calls = c.dev, c.calls
    return NodeProgress(
        tx_packets=dev.nic.perf["tx_pkts"],
        rx_packets=dev.nic.perf["rx_pkts"],
        interrupts=calls["wait_irq"],
        bulk=calls["load"] + calls["dump"],
        reads=calls["read32"],
        writes=calls["write32"],
    )


def _report(
    dog: Watchdog, cycle: int, cluster: Cluster, devices, firmware, deadlock: bool = False
) -> str:
    n = len(cluster.devices)
    work = []
    for i, dev in enumerate(cluster.devices):
        parts = [dev.outstanding()]
        fw = firmware[i] if firmware else None
        if fw is not None:
            parts.append(pending_sends(fw))
        parts.append(f"{devices[i].calls['wait_irq']} interrupt wait(s) so far")
        work.append(", ".join(p for p in parts if p))
    nics = [
        {
            "tx_packets": d.nic.perf["tx_pkts"],
            "rx_packets": d.nic.perf["rx_pkts"],
            "rx_drops": d.rx_drops,
            **_held_status(d),
        }
        for d in cluster.devices
    ]
    return dog.report(cycle, work, [{} for _ in range(n)], nics, deadlock)


def _held_status(dev: ModelDevice) -> dict[str, int]:
    """The receiver's hold, as the RTL's ``rx_holds``/``rx_held_*`` ports give it (link layers)."""
    layer = dev.nic.rx_layer
    if layer is None:
        return {}
    held = dev.nic.held()
    window, tag = (held[0] + 1, held[1]) if held else (0, 0)
    return {"rx_holds": layer.holds, "rx_held_window": window, "rx_held_tag": tag}
