"""What the C++ optimisation level of a Verilated cluster costs to build and buys in speed.

Side by side in one run, on the main job's 2-node cluster (its cached build's
Verilog, the raw C++ main of ``gradsync bench``, no cocotb): for each
``OPT_FAST`` (the model's hot code) and ``OPT_SLOW`` (its start-up code)
pair, the Verilator step, the whole ``make`` and the part of it spent on the
Verilator runtime library (the objects every build compiles again), then the
replay speed of the same recorded stimulus (best of three, interleaved with
the other variants).  Usage::

    .venv/bin/python bench/build_opts.py            # the table
    .venv/bin/python bench/build_opts.py --json     # and the numbers as JSON
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from gradsync.sim.build import VERILATOR_BUILD_ARGS, WRAPPER_TOP
from gradsync.sim.raw_build import EXECUTABLE, MAIN_CPP, RawModel, _ports_include, run_raw
from gradsync.sim.toolchain import find_verilator

#: (label, OPT_FAST, OPT_SLOW, Verilator arguments); the first is what sim/build.py uses
#: today.  An empty OPT_SLOW is verilated.mk's own default: no -O flag, i.e. g++'s -O0
#: (sim/toolchain.py's make_flags sets OPT_FAST only).  The Verilog is the cached model's,
#: i.e. without zero-only memory initialisers (sim/build.py's strip_zero_memory_init).
NATIVE = "-O3 -march=native -fno-plt -fno-semantic-interposition"
USED = VERILATOR_BUILD_ARGS
VARIANTS = (
    ("used", "-O3", "", USED),
    ("split 20000", "-O3", "", ("--output-split", "20000")),  # Verilator's default
    ("split 60000", "-O3", "", ("--output-split", "60000")),
    ("slow -Os", "-O3", "-Os", USED),
    ("x fast", "-O3", "", (*USED, "--x-assign", "fast", "--x-initial", "fast")),
    ("native", NATIVE, "", USED),
    ("verilator -O3", "-O3", "", (*USED, "-O3")),
    ("-O1 fast", "-O1", "", USED),
    ("threads 2", "-O3", "", (*USED, "--threads", "2")),
)


def _children_cpu() -> float:
    """User + system CPU seconds of this process's finished children."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def compile_variant(model, work: Path, opt_fast: str, opt_slow: str, extra=()) -> dict:
    """Verilate and compile the raw main of ``model`` in ``work``; seconds of each part.

    ``extra``: further Verilator arguments.  ``cxx_files``: the C++ files make compiled."""
    verilator = find_verilator()
    include, _names = _ports_include(model)
    (work / "bench_ports.inc").write_text(include)
    shutil.copy(MAIN_CPP, work / MAIN_CPP.name)
    src = model.directory / "src"
    design = src / f"{model.design_top}.v"
    cmd = [
        str(verilator.executable), "-cc", "--exe", "-Mdir", str(work),
        "--top-module", WRAPPER_TOP, "--prefix", "Vtop", "-o", EXECUTABLE,
        "-CFLAGS", f"-I{work}", "-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC",
        "--timing", *extra, "--timescale", "1ns/1ps", str(work / MAIN_CPP.name),
        str(src / "public.vlt"), str(design),
        str(src / f"{WRAPPER_TOP}.v"),
    ]  # fmt: skip
    env = verilator.environment()
    env["MAKEFLAGS"] = "CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_COROUTINES=-fcoroutines"
    make = ["make", "-j", str(os.cpu_count() or 1), "-C", str(work), "-f", "Vtop.mk", "VM_TRACE=0",
            f"OPT_FAST={opt_fast}", f"OPT_SLOW={opt_slow}"]  # fmt: skip
    out = {}
    with open(work / "build.log", "w") as log:
        for name, step in (("verilator", cmd), ("make", make)):
            t0, c0 = time.perf_counter(), _children_cpu()
            if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT, env=env).returncode:
                raise RuntimeError(f"{name} failed; log {work / 'build.log'}")
            out[name] = time.perf_counter() - t0
            # CPU seconds (user + system) of the step's processes: what other load on a
            # shared machine does not inflate
            out[f"{name}_cpu"] = _children_cpu() - c0
        # the model's own objects again, the runtime library's kept: the difference is
        # what compiling the runtime library cost
        for f in work.glob("Vtop*.o"):
            f.unlink()
        (work / EXECUTABLE).unlink()
        t0 = time.perf_counter()
        subprocess.run(make, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
        out["make_model_only"] = time.perf_counter() - t0
    out["runtime_library"] = out["make"] - out["make_model_only"]
    out["cxx_files"] = len(list(work.glob("Vtop*.cpp")))
    return out


def record_stimulus(tmp: Path):
    """The main job's cached cluster and a recorded (b)-style stimulus of it."""
    from gradsync.cmd_bench import record_idle
    from gradsync.firmware.experiment import TrainConfig
    from gradsync.sim.raw_build import build_raw
    from gradsync.sim.rtl_backend import build_cluster

    cfg = TrainConfig()
    model = build_cluster(cfg)
    raw = build_raw(model)
    plan = {"rounds": 2, "count": 64, "chunk": 2048, "gemm": [64, 32, 64]}
    res, stim = record_idle(model, raw, cfg, plan, tmp)
    return model, raw, stim, res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    ap.add_argument("--rounds", type=int, default=3, help="replays per variant (best is kept)")
    ap.add_argument("--only", default="", help="comma-separated variant labels (default: all)")
    args = ap.parse_args()
    chosen = [v for v in VARIANTS if not args.only or v[0] in args.only.split(",")]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gradsync-buildopts-") as tmp_s:
        tmp = Path(tmp_s)
        model, raw, stim, res = record_stimulus(tmp)
        cycles = res["end_steps"] // res["period_steps"]
        rows = {}
        for n, (label, fast, slow, extra) in enumerate(chosen):
            work = tmp / f"v{n}"
            work.mkdir()
            row = rows[label] = compile_variant(model, work, fast, slow, extra)
            row.update(opt_fast=fast, opt_slow=slow, verilator_args=" ".join(extra))
            row["exe"] = RawModel(work / EXECUTABLE, raw.ports, False, 0.0)
            print(f"built {label}: Verilator {row['verilator']:.1f} s, make {row['make']:.1f} s",
                  flush=True)  # fmt: skip
        for _ in range(args.rounds):
            for row in rows.values():
                s = run_raw(row["exe"], stim, res["end_steps"])["seconds"]
                row["replay_s"] = min(row.get("replay_s", s), s)
    load_after = os.getloadavg()
    base = next(iter(rows.values()))
    print(f"\n{cycles} cycles of the idle exchange, 2-node cluster; {os.cpu_count()} cores; "
          f"load {load_before[0]:.1f} -> {load_after[0]:.1f}; best of {args.rounds} replays")  # fmt: skip
    print(f"{'variant':14} {'OPT_FAST':10} {'OPT_SLOW':8} {'verilator args':28} files  verilator"
          "  make  (runtime lib)  CPU s: verilator  make  cycles/s  speed  make CPU")  # fmt: skip
    table = []
    for label, r in rows.items():
        speed = cycles / r["replay_s"]
        fast = "native" if r["opt_fast"] == NATIVE else r["opt_fast"]
        print(f"{label:14} {fast:10} {r['opt_slow'] or '(-O0)':8} {r['verilator_args']:28} "
              f"{r['cxx_files']:5} {r['verilator']:9.1f} {r['make']:5.1f}  "
              f"({r['runtime_library']:5.1f})  {r['verilator_cpu']:16.1f} {r['make_cpu']:5.1f}"
              f"  {speed:10,.0f}  {base['replay_s'] / r['replay_s']:5.2f}"
              f" {r['make_cpu'] / base['make_cpu']:8.2f}")  # fmt: skip
        table.append({"variant": label, "cycles_per_s": speed,
                      **{k: v for k, v in r.items() if k != "exe"}})  # fmt: skip
    if args.json:
        print(json.dumps({"load": [load_before, load_after], "rows": table}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
