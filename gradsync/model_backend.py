"""The model backend of a training run: the firmware on N golden-model nodes.

``run_model(cfg, jobs)`` is a :data:`gradsync.firmware.experiment.Backend`.
Weight snapshots are backdoor reads of the modelled scratchpad at the moments
the firmware reports (they cost no simulated cycles).
"""

from __future__ import annotations

from gradsync.firmware.experiment import BackendResult, TrainConfig
from gradsync.firmware.training import NodeFirmware, NodeJob, Observer
from gradsync.model.cluster import Cluster
from gradsync.spec import regmap as rm


def run_model(
    cfg: TrainConfig,
    jobs: list[NodeJob],
    max_cycles: int | None = None,
    link_faults: list[dict] | None = None,
) -> BackendResult:
    return run_model_cluster(cfg, jobs, max_cycles, link_faults)[0]


def run_model_cluster(
    cfg: TrainConfig,
    jobs: list[NodeJob],
    max_cycles: int | None = None,
    link_faults: list[dict] | None = None,
    seq_start: int = 0,
) -> tuple[BackendResult, Cluster]:
    """:func:`run_model`, also returning the cluster for backdoor inspection (tests).

    ``link_faults``: per link, fault controls (``gradsync.spec.faults``); the
    links are then stepped cycle by cycle (``gradsync.model.link``), starting
    their sequence numbers at ``seq_start``.
    """
    hw, fmt = cfg.hardware, cfg.fixed_point
    cluster = Cluster(cfg.nodes, hw, fmt, link_faults, seq_start)
    weights = {}

    def program(node: int):
        dev = cluster.devices[node]

        def snapshot(step: int, layer: int, addr: int, n: int) -> None:
            idx = (addr - rm.SCRATCH_BASE) // fmt.word_bytes
            weights[(node, step, layer)] = dev.scratch[idx : idx + n].copy()

        job = jobs[node]
        job.observer = Observer(weights=snapshot)
        return lambda d: NodeFirmware(d, job).run()

    run = cluster.run([program(i) for i in range(cfg.nodes)], max_cycles)
    return BackendResult(run.results, weights, run.cycles), cluster
