"""Simulated cycles per second of a Verilator model under cocotb, per build option set.

Run: ``.venv/bin/python bench/bench_sim_speed.py [--cycles N]``. Prints one row
per option set: cocotb runner defaults (every signal public, -Os, clock from
Python), ports-only public, -O3, and the clock generated in the model. The
design is the processing element accumulating every cycle, so the numbers
show the per-cycle cost of the simulator/cocotb boundary, not of a big design.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradsync.hw.pe import ProcessingElement  # noqa: E402
from gradsync.sim.build import BuildOptions, build_component, run_cocotb  # noqa: E402

VARIANTS = [
    ("runner defaults: public-flat-rw, -Os, cocotb Clock",
     BuildOptions(public="all", opt_fast="-Os", internal_clock=False)),
    ("ports public, -Os, cocotb Clock", BuildOptions(public="ports", opt_fast="-Os", internal_clock=False)),
    ("ports public, -O3, cocotb Clock", BuildOptions(public="ports", opt_fast="-O3", internal_clock=False)),
    ("ports public, -O3, clock in model (--timing)", BuildOptions()),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2_000_000)
    args = parser.parse_args()
    print(f"{'build options':<48} {'build s':>8} {'Mcycles/s':>10} {'ratio':>6}")
    base = None
    for label, options in VARIANTS:
        model = build_component(ProcessingElement(16, 40, True), "pe_bench", options)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "bench.json"
            run_cocotb(model, "bench.sim_speed_cocotb", test_dir=tmp,
                       extra_env={"BENCH_CYCLES": str(args.cycles), "BENCH_OUT": str(out)})
            result = json.loads(out.read_text())
        rate = result["cycles"] / result["seconds"]
        base = base or rate
        built = "cached" if model.cached else f"{model.build_seconds:.1f}"
        print(f"{label:<48} {built:>8} {rate / 1e6:>10.3f} {rate / base:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
