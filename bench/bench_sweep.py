"""Benchmark: 200 sweep points run serially in one process vs on 2 local Dask workers.

The points are ``train --backend model`` points (the scale simulator's points
replace them once ``gradsync scale`` is sweepable): ``--steps`` steps of the
default MLP, 4 chunk sizes x 50 seeds. Prints the serial time, the sweep's
time (cluster start apart), their ratio and the Dask overhead per point:
(workers x sweep time - time spent inside the points) / points, i.e. what
each point costs beyond its own run (scheduling, transfer, writing its file).
It does not pass or fail on time.

    .venv/bin/python bench/bench_sweep.py [--points 200 --steps 10 --workers 2]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from gradsync.sweep import runner, store
from gradsync.sweep.cluster import open_session
from gradsync.sweep.sweepfile import SweepFile

CHUNKS = [128, 256, 512, 1024]


def _points(n: int, steps: int):
    seeds = list(range(-(-n // len(CHUNKS))))
    sweep = SweepFile(
        Path("bench.toml"),
        "train",
        {"backend": "model", "steps": steps},
        {"seed": seeds, "chunk_bytes": CHUNKS},
    )
    command, points = runner.prepare(sweep)
    return command, points[:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=200)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    command, points = _points(args.points, args.steps)

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
            runner.run_points(session.client, command, points, out, summary, progress=False)
            sweep_s = time.perf_counter() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            session.close()
        records = [store.read_point(out, pt.key) for pt in points]
    inside = sum(r["wall_seconds"] for r in records)
    same = all(
        r["result"]["final_loss"] == s["final_loss"]
        and r["result"]["total_cycles"] == s["total_cycles"]
        for r, s in zip(records, serial, strict=True)
    )
    overhead_ms = 1e3 * (args.workers * sweep_s - inside) / len(points)
    print(f"{len(points)} train --backend model points, {args.steps} steps each")
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
    print(f"results identical to serial: {same}")


if __name__ == "__main__":
    main()
