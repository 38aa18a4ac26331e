"""Benchmark: 200 sweep points run serially in one process vs on 2 local Dask workers.

By default the points are ``scale`` points, the cheapest and most numerous
kind: one simulated step of ``--workload`` (ResNet-50) on 8 nodes with 1 MiB
chunks, 4 schedules (sequential, fifo, priority, ddp) x link speeds of 10,
20, ... Gb/s (about 0.15-0.2 s each). ``--train`` runs ``train --backend
model`` points instead: ``--steps`` steps of the default MLP, 4 chunk sizes x
seeds. Prints the serial time, the sweep's time (cluster start apart), their
ratio and the Dask overhead per point: (workers x sweep time - time spent
inside the points) / points, i.e. what each point costs beyond its own run
(scheduling, transfer, writing its file). It does not pass or fail on time.

    .venv/bin/python bench/bench_sweep.py [--points 200 --workers 2 --workload resnet50]
    .venv/bin/python bench/bench_sweep.py --train [--points 200 --steps 10]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from gradsync.sweep import runner, store
from gradsync.sweep.cluster import open_session
from gradsync.sweep.sweepfile import SweepFile

CHUNKS = [128, 256, 512, 1024]
SCHEDULES = ["sequential", "fifo", "priority", "ddp"]


def _train_points(n: int, steps: int):
    seeds = list(range(-(-n // len(CHUNKS))))
    sweep = SweepFile(
        Path("bench.toml"),
        "train",
        {"backend": "model", "steps": steps},
        {"seed": seeds, "chunk_bytes": CHUNKS},
    )
    command, points = runner.prepare(sweep)
    return command, points[:n]


def _scale_points(n: int, workload: str):
    gbps = [10 * (k + 1) for k in range(-(-n // len(SCHEDULES)))]
    sweep = SweepFile(
        Path("bench.toml"),
        "scale",
        {"workload": workload, "nodes": 8, "chunk_bytes": 1 << 20},
        {"link_gbps": gbps, "schedule": SCHEDULES},
    )
    command, points = runner.prepare(sweep)
    return command, points[:n]


def _without_wall(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "wall_seconds"}


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process (run on each worker by ``client.run``)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--workload", default="resnet50", help="scale points: the workload")
    p.add_argument("--train", action="store_true", help="train --backend model points instead")
    p.add_argument("--steps", type=int, default=10, help="train points: steps each")
    args = p.parse_args()
    if args.train:
        command, points = _train_points(args.points, args.steps)
        what = f"train --backend model points, {args.steps} steps each"
    else:
        command, points = _scale_points(args.points, args.workload)
        what = f"scale points: {args.workload}, 8 nodes, 1 MiB chunks, {len(SCHEDULES)} schedules"

    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    serial = [command.run(pt.config) for pt in points]
    serial_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        session = open_session(workers=args.workers)
        start_s = time.perf_counter() - t0
        summary = runner.Summary(total=len(points))
        try:
            t0 = time.perf_counter()
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            workers0 = session.client.run(_cpu_seconds)
            runner.run_points(session.client, command, points, out, summary, progress=False)
            sweep_s = time.perf_counter() - t0
            workers1 = session.client.run(_cpu_seconds)
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            session.close()
        records = [store.read_point(out, pt.key) for pt in points]
    inside = sum(r["wall_seconds"] for r in records)
    same = all(
        _without_wall(r["result"]) == _without_wall(s) for r, s in zip(records, serial, strict=True)
    )
    overhead_ms = 1e3 * (args.workers * sweep_s - inside) / len(points)
    print(f"{len(points)} {what}")
    print(
        f"serial, one process:        {serial_s:7.2f} s ({1e3 * serial_s / len(points):.0f} ms/point)"
    )
    print(
        f"gradsync sweep, {args.workers} workers:  {sweep_s:7.2f} s "
        f"(+ {start_s:.2f} s to start the cluster; {summary.done} done, {summary.failed} failed)"
    )
    print(
        f"speed-up:                   {serial_s / sweep_s:7.2f}x "
        f"({serial_s / (sweep_s + start_s):.2f}x with the cluster start)"
    )
    print(f"Dask overhead per point:    {overhead_ms:7.1f} ms")
    client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print(
        f"inside the points:          {1e3 * inside / len(points):7.0f} ms/point on a worker; "
        f"client process CPU {client_cpu:.2f} s (scheduler, nannies, point files)"
    )
    worker_cpu = sum(workers1[w] - workers0.get(w, 0.0) for w in workers1)
    print(
        f"worker CPU:                 {1e3 * worker_cpu / len(points):7.0f} ms/point "
        f"(less than the wall time above: the workers waited for a core)"
    )
    print(f"load average (1 min):       {load0:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"results identical to serial: {same}")


if __name__ == "__main__":
    main()
