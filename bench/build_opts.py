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
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from gradsync.sim.build import WRAPPER_TOP
from gradsync.sim.raw_build import EXECUTABLE, MAIN_CPP, RawModel, _ports_include, run_raw
from gradsync.sim.toolchain import find_verilator

#: (OPT_FAST, OPT_SLOW) pairs; the first is what sim/build.py uses today.
VARIANTS = (("-O3", "-Os"), ("-O2", "-Os"), ("-O1", "-Os"), ("-O2", "-O0"), ("-O1", "-O0"))


def compile_variant(model, work: Path, opt_fast: str, opt_slow: str) -> dict:
    """Verilate and compile the raw main of ``model`` in ``work``; seconds of each part."""
    verilator = find_verilator()
    include, _names = _ports_include(model)
    (work / "bench_ports.inc").write_text(include)
    shutil.copy(MAIN_CPP, work / MAIN_CPP.name)
    src = model.directory / "src"
    cmd = [
        str(verilator.executable), "-cc", "--exe", "-Mdir", str(work),
        "--top-module", WRAPPER_TOP, "--prefix", "Vtop", "-o", EXECUTABLE,
        "-CFLAGS", f"-I{work}", "-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC",
        "--timing", "--timescale", "1ns/1ps", str(work / MAIN_CPP.name),
        str(src / "public.vlt"), str(src / f"{model.design_top}.v"),
        str(src / f"{WRAPPER_TOP}.v"),
    ]  # fmt: skip
    env = verilator.environment()
    env["MAKEFLAGS"] = (
        f"CFG_CXXFLAGS_PCH_I=-include OPT_FAST={opt_fast} OPT_SLOW={opt_slow} "
        "CFG_CXXFLAGS_COROUTINES=-fcoroutines"
    )
    make = ["make", "-j", str(os.cpu_count() or 1), "-C", str(work), "-f", "Vtop.mk", "VM_TRACE=0"]
    out = {}
    with open(work / "build.log", "w") as log:
        for name, step in (("verilator", cmd), ("make", make)):
            t0 = time.perf_counter()
            if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT, env=env).returncode:
                raise RuntimeError(f"{name} failed; log {work / 'build.log'}")
            out[name] = time.perf_counter() - t0
        # the model's own objects again, the runtime library's kept: the difference is
        # what compiling the runtime library cost
        for f in work.glob("Vtop*.o"):
            f.unlink()
        (work / EXECUTABLE).unlink()
        t0 = time.perf_counter()
        subprocess.run(make, stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
        out["make_model_only"] = time.perf_counter() - t0
    out["runtime_library"] = out["make"] - out["make_model_only"]
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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="gradsync-buildopts-") as tmp_s:
        tmp = Path(tmp_s)
        model, raw, stim, res = record_stimulus(tmp)
        cycles = res["end_steps"] // res["period_steps"]
        rows = {}
        for fast, slow in VARIANTS:
            work = tmp / f"v{fast}{slow}"
            work.mkdir()
            rows[(fast, slow)] = compile_variant(model, work, fast, slow)
            rows[(fast, slow)]["exe"] = RawModel(work / EXECUTABLE, raw.ports, False, 0.0)
            print(f"built OPT_FAST={fast} OPT_SLOW={slow}: {rows[(fast, slow)]['make']:.1f} s",
                  flush=True)  # fmt: skip
        for _ in range(args.rounds):
            for row in rows.values():
                s = run_raw(row["exe"], stim, res["end_steps"])["seconds"]
                row["replay_s"] = min(row.get("replay_s", s), s)
    base = rows[VARIANTS[0]]
    print(f"\n{cycles} cycles of the idle exchange, 2-node cluster; {os.cpu_count()} cores")
    print("OPT_FAST OPT_SLOW  verilator  make  (runtime lib)  cycles/s   speed vs -O3  make vs -O3")
    table = []
    for (fast, slow), r in rows.items():
        speed = cycles / r["replay_s"]
        rel_speed = base["replay_s"] / r["replay_s"]
        rel_make = r["make"] / base["make"]
        print(f"{fast:8} {slow:8} {r['verilator']:9.1f} {r['make']:5.1f}  ({r['runtime_library']:5.1f})"
              f"  {speed:10,.0f}   {rel_speed:10.2f}  {rel_make:10.2f}")  # fmt: skip
        table.append({"opt_fast": fast, "opt_slow": slow, "cycles_per_s": speed,
                      **{k: v for k, v in r.items() if k != "exe"}})  # fmt: skip
    if args.json:
        print(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
