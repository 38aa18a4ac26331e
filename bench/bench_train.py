"""Benchmark: the main job on the RTL backend against the golden model, wall time and cycles/s.

A thin front end of ``gradsync bench``'s ``main_job`` (``gradsync/cmd_bench.py``,
the one source of this figure): runs the same training (default: the
README's ``make run`` configuration) on the model backend and on the RTL
backend back to back, prints for each the wall time, simulated cycles and
cycles per wall second, the ratio RTL wall / model wall, and whether both left
identical weights and cycle counts. It does not pass or fail on time.

    .venv/bin/python bench/bench_train.py [--nodes 2 --steps 100 --schedule priority]

With ``GRADSYNC_CACHE`` pointing at an empty directory the RTL time includes a fresh build.
"""

from __future__ import annotations

import argparse
import os

from gradsync.cmd_bench import main_job
from gradsync.firmware.experiment import TrainConfig


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
    r = main_job(cfg)
    cache = os.environ.get("GRADSYNC_CACHE", "~/.cache/gradsync")
    print(
        f"config: {cfg.nodes} nodes, {cfg.schedule}, {cfg.steps} steps, layers "
        f"{','.join(map(str, cfg.layers))}, global batch {cfg.global_batch}; cache {cache}; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"model backend: {r['model_seconds']:7.2f} s wall, {r['model_cycles']} cycles, "
        f"{r['model_cycles'] / r['model_seconds']:,.0f} cycles/s"
    )
    print(
        f"RTL backend:   {r['rtl_seconds']:7.2f} s wall (simulator process "
        f"{r['rtl_sim_seconds']:.2f} s), {r['rtl_cycles']} cycles, "
        f"{r['rtl_cycles'] / r['rtl_sim_seconds']:,.0f} cycles/s in the simulator"
    )
    print(
        f"ratio RTL/model wall: {r['rtl_over_model']:.2f}x; identical weights and cycles: "
        f"{'yes' if r['identical'] else 'NO'}"
    )


if __name__ == "__main__":
    main()
