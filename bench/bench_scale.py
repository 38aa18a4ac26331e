"""Benchmark: seconds per configuration of the collective-level simulator, and its ratio to the
golden model on the same MLP point.  It does not pass or fail on time.

    .venv/bin/python bench/bench_scale.py [--quick]

Per configuration: ResNet-50 and GPT-2 small (built-in workloads, 128 x 128 array,
1 GHz, 100 Gb/s links, 1 us latency, ``priority``) at N = 8, 64, 1024 with 1 MiB
and 64 KiB chunks: wall seconds, descriptors simulated per step, events, and the
simulated step time.  Then the digits MLP (N = 4, 512-byte chunks) on
``gradsync.scale`` and on the golden model side by side, with the ratio.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

from gradsync.firmware import experiment
from gradsync.firmware.schedules import load_schedule
from gradsync.model_backend import run_model
from gradsync.scale.config import ScaleConfig, ScaleLink
from gradsync.scale.sim import simulate
from gradsync.spec.hardware import HardwareConfig, preset
from gradsync.workloads import builtin

BIG = HardwareConfig(array_rows=128, array_cols=128, vector_lanes=128)


def networks(quick: bool) -> None:
    link = ScaleLink.from_gbps(100, 1000, 1.0)
    nodes = (8, 64) if quick else (8, 64, 1024)
    print(
        f"{'workload':<10} {'N':>5} {'chunk':>8} {'seconds':>8} {'desc/step':>10} "
        f"{'events':>9} {'step ms':>9}"
    )
    for name in ("resnet50", "gpt2"):
        wl = builtin(name)
        for n in nodes:
            for chunk in (1 << 20, 64 << 10):
                cfg = ScaleConfig(wl, n, load_schedule("priority"), chunk, link, hardware=BIG)
                t0 = time.perf_counter()
                res = simulate(cfg)
                dt = time.perf_counter() - t0
                print(
                    f"{name:<10} {n:>5} {chunk:>8} {dt:>8.2f} {res.descriptors:>10} "
                    f"{res.events:>9} {res.step_cycles / 1e6:>9.2f}",
                    flush=True,
                )


def against_model() -> None:
    hw, nodes, chunk, steps, layers = preset("large"), 4, 512, 5, (64, 32, 10)
    cfg = experiment.TrainConfig(
        nodes=nodes,
        schedule="priority",
        chunk_bytes=chunk,
        steps=steps,
        layers=layers,
        global_batch=64,
        hardware=hw,
    )
    t0 = time.perf_counter()
    res = experiment.run(cfg, run_model)
    model_s = time.perf_counter() - t0
    wl = builtin("mlp", layers=layers, batch=64 // nodes, hardware=hw)
    scfg = ScaleConfig(
        wl,
        nodes,
        copy.copy(load_schedule("priority")),
        chunk,
        ScaleLink.from_hardware(hw),
        hardware=hw,
        steps=steps,
    )
    t0 = time.perf_counter()
    sres = simulate(scfg)
    scale_s = time.perf_counter() - t0
    print(f"\nMLP 64,32,10, N={nodes}, {chunk} B chunks, {steps} steps (the same steps on both):")
    print(f"  golden model   {model_s:8.3f} s   cycles/step (step 3) {res.steps[3].cycles}")
    print(f"  gradsync.scale {scale_s:8.3f} s   cycles/step (step 3) {sres.step_cycles:.0f}")
    print(f"  ratio model / scale: {model_s / scale_s:.0f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip N = 1024")
    args = ap.parse_args()
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    networks(args.quick)
    against_model()


if __name__ == "__main__":
    main()
