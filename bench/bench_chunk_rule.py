"""The chunk-size study of issue 12: each rule's chunk against the best chunk of a grid.

    .venv/bin/python bench/bench_chunk_rule.py [--nodes 8,64] [--gbps 100,400] [--json FILE]

For ResNet-50, VGG-19, BERT-base and GPT-2 (built-in workloads, 128 x 128 array,
1 GHz, 1 us links, ``priority``), at each node count and bandwidth: the best chunk
of the grid (256 KiB .. 64 MiB, powers of two) by simulated step time, and for
each candidate rule its chunk and how much slower its step is than the best.
The default rule (``gradsync.scale.chunking.DEFAULT_RULE``) must be within 5 %
everywhere.
"""

from __future__ import annotations

import argparse
import json
import time

from gradsync.firmware.schedules import load_schedule
from gradsync.scale.chunking import study
from gradsync.scale.config import ScaleConfig, ScaleLink
from gradsync.spec.hardware import HardwareConfig
from gradsync.workloads import builtin

BIG = HardwareConfig(array_rows=128, array_cols=128, vector_lanes=128)
RULES = [
    ("efficiency", 0.5),
    ("efficiency", 0.8),
    ("efficiency", 0.9),
    ("time", 20_000),
    ("time", 100_000),
]
GRID = tuple(1 << k for k in range(18, 27))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="8,64")
    ap.add_argument("--gbps", default="100,400")
    ap.add_argument("--workloads", default="resnet50,vgg19,bert-base,gpt2")
    ap.add_argument("--json", help="also write every number to this file")
    args = ap.parse_args()
    rows = []
    for name in args.workloads.split(","):
        wl = builtin(name)
        for n in map(int, args.nodes.split(",")):
            for gbps in map(float, args.gbps.split(",")):
                cfg = ScaleConfig(
                    wl,
                    n,
                    load_schedule("priority"),
                    0,
                    ScaleLink.from_gbps(gbps, 1000, 1.0),
                    hardware=BIG,
                )
                t0 = time.perf_counter()
                res = study(cfg, RULES, GRID)
                gaps = "  ".join(
                    f"{k} {v['chunk'] >> 10}K {v['gap']:+.1%}" for k, v in res["rules"].items()
                )
                print(
                    f"{name:<9} N={n:<4} {gbps:>5.0f} Gb/s best {res['best_chunk'] >> 10}K "
                    f"({res['best_step_cycles'] / 1e6:.2f} Mcyc)  {gaps}  "
                    f"[{time.perf_counter() - t0:.0f} s]",
                    flush=True,
                )
                rows.append({"workload": name, "nodes": n, "gbps": gbps, **res})
    worst = {k: max(r["rules"][k]["gap"] for r in rows) for k in rows[0]["rules"]}
    print("worst gap per rule:", {k: f"{v:+.1%}" for k, v in worst.items()})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
