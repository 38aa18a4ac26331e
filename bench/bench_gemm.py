"""Benchmark: simulated cycles per second of a large GEMM on the compute node under Verilator + cocotb.

Prints the build options, the build time, simulated cycles per wall second
(host driving the CSRs through cocotbext-axi, waiting on the IRQ line) and the
array utilisation ``useful MACs / (R * C * GEMM cycles)`` from the model's
formula (which the RTL hits exactly; the run asserts it through
``PERF_GEMM_CYCLES``). It does not pass or fail on time.

    .venv/bin/python bench/bench_gemm.py [--rows 8 --cols 8 --m 64 --k 128 --n 64 --reps 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

from gradsync.hw.compute_node import ComputeNode
from gradsync.sim.build import BuildOptions, build_component, run_cocotb
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig
from gradsync.spec.timing import gemm_cycles

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.hw.cocotb_compute_node import node_env  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--cols", type=int, default=8)
    p.add_argument("--m", type=int, default=64)
    p.add_argument("--k", type=int, default=128)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    words = args.m * args.k + args.k * args.n
    scratch = 1 << max(12, (words - 1).bit_length())
    grad = 1 << max(11, (args.m * args.n - 1).bit_length())
    hw = HardwareConfig(array_rows=args.rows, array_cols=args.cols, vector_lanes=8,
                        scratchpad_words=scratch, gradient_words=grad, trace_records=256,
                        cmd_fifo_depth=4)
    fmt = FixedPointFormat()
    options = BuildOptions()
    t0 = time.perf_counter()
    model = build_component(ComputeNode(hw, fmt), f"bench_node_{args.rows}x{args.cols}_{scratch}", options)
    build_s = time.perf_counter() - t0
    env = node_env(hw, fmt)
    env["NODE_BENCH"] = f"{args.m},{args.k},{args.n},{args.reps}"
    with tempfile.TemporaryDirectory() as d:
        run_cocotb(model, "tests.hw.cocotb_compute_node", testcase="gemm_throughput",
                   test_dir=Path(d), extra_env=env)
        r = json.loads((Path(d) / "bench_gemm.json").read_text())
    print(f"build options: {dataclasses.asdict(options)}; SRAM {scratch}+{grad} words")
    print(f"verilator build: {model.build_seconds:.1f} s ({'cached' if model.cached else 'fresh'}; "
          f"this call {build_s:.1f} s incl. Verilog generation)")
    print(f"GEMM {args.m}x{args.k}x{args.n} on {args.rows}x{args.cols}, {args.reps} back to back: "
          f"{gemm_cycles(args.m, args.k, args.n, hw)} cycles each (model formula = RTL)")
    print(f"simulated cycles: {r['cycles']} (GEMM busy {r['gemm_cycles']}) in {r['wall_seconds']:.2f} s "
          f"wall -> {r['cycles_per_second']:,.0f} cycles/s")
    print(f"array utilisation: {r['utilisation']:.3f} (useful MACs / (R*C*GEMM cycles))")


if __name__ == "__main__":
    main()
