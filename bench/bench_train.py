"""Benchmark: the main job on the RTL backend against the golden model, wall time and cycles/s.

Runs the same training (default: the README's ``make run`` configuration)
on the model backend and on the RTL backend, prints for each the wall time,
simulated cycles and cycles per wall second, the RTL build (fresh or reused
from the cache) and the ratio RTL wall / model wall, and checks that both
left identical weights. It does not pass or fail on time.

    .venv/bin/python bench/bench_train.py [--nodes 2 --steps 100 --schedule priority]

With ``GRADSYNC_CACHE`` pointing at an empty directory it measures a fresh
build.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from gradsync.firmware import experiment
from gradsync.firmware.experiment import TrainConfig
from gradsync.model_backend import run_model
from gradsync.sim.rtl_backend import LAST_RUN, run_rtl


def _timed(cfg: TrainConfig, backend) -> tuple[experiment.RunResult, float]:
    t0 = time.perf_counter()
    res = experiment.run(cfg, backend)
    return res, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    d = TrainConfig()  # the defaults of `gradsync train`, i.e. the README's make run
    p.add_argument("--nodes", type=int, default=d.nodes)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--schedule", default=d.schedule)
    p.add_argument("--global-batch", type=int, default=d.global_batch)
    p.add_argument("--layers", default=",".join(map(str, d.layers)))
    args = p.parse_args()
    cfg = TrainConfig(
        nodes=args.nodes,
        steps=args.steps,
        schedule=args.schedule,
        global_batch=args.global_batch,
        layers=tuple(int(x) for x in args.layers.split(",")),
    )
    model, model_wall = _timed(cfg, lambda c, j: run_model(c, j))
    rtl, rtl_wall = _timed(cfg, lambda c, j: run_rtl(c, j, progress=False))
    for k, (wm, wr) in enumerate(zip(model.weights, rtl.weights, strict=True)):
        for layer, (a, b) in enumerate(zip(wm, wr, strict=True), start=1):
            if not np.array_equal(a, b):
                raise SystemExit(f"weights differ at step {k} layer {layer}")
    cycles = rtl.total_cycles
    cache = os.environ.get("GRADSYNC_CACHE", "~/.cache/gradsync")
    print(
        f"config: {cfg.nodes} nodes, {cfg.schedule}, {cfg.steps} steps, layers "
        f"{','.join(map(str, cfg.layers))}, global batch {cfg.global_batch}; cache {cache}"
    )
    print(
        f"model backend: {model_wall:7.1f} s wall, {model.total_cycles} cycles, "
        f"{model.total_cycles / model_wall:,.0f} cycles/s"
    )
    print(
        f"RTL backend:   {rtl_wall:7.1f} s wall = build {LAST_RUN.build_seconds:.1f} s "
        f"({'reused from cache' if LAST_RUN.build_cached else 'fresh'}) + simulation "
        f"{LAST_RUN.sim_seconds:.1f} s + rest; {cycles} cycles, "
        f"{cycles / LAST_RUN.sim_seconds:,.0f} cycles/s during simulation"
    )
    print(
        f"ratio RTL/model wall: {rtl_wall / model_wall:.1f}x total, "
        f"{LAST_RUN.sim_seconds / model_wall:.1f}x simulation only; weights identical: yes"
    )


if __name__ == "__main__":
    main()
