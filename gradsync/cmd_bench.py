"""``gradsync bench``: the project's speed figures, each a ratio measured side by side in one run.

Every figure prints its absolute numbers and the ratio computed from them,
with the machine (CPU model, cores, load) and the versions; ``--json`` prints
the same as one JSON document (the record), ``--quick`` a shorter version
(about a minute on a warm build cache; no cold build).  Nothing passes or
fails on time.  Figures (``--only`` picks some):

``sim``
    Simulation speed of the 2-node cluster of the main job (``gradsync train
    --nodes 2 --schedule priority``): (a) the main job's firmware under cocotb
    (``gradsync train --backend rtl``), (b) cocotb with Python idle
    (``sim/bench_cocotb.py``: a long compute + exchange sequence posted once
    per round, then only the interrupt awaited; checked against the golden
    model), (c) the same Verilog and build options driven by a plain C++ main
    (``sim/bench_main.cpp``) that replays (b)'s recorded port writes and
    checks its port reads -- the raw Verilator ceiling.  Ratios a/c and b/c;
    the share of (a)'s wall time spent in Python (cProfile over the whole
    cocotb test, shorter run); the main job's RTL wall time over the model
    backend's, same job, same process.
``array``
    Array utilisation ``useful MACs / (R * C * cycles)`` of the GEMMs
    32x64x16, 64x64x32, 64x32x10 and 256x256x256 (M x K x N) on 8x8 and 16x16
    arrays: RTL-measured (``PERF_GEMM_CYCLES`` of a compute node under
    cocotb) next to ``gradsync.spec.timing.gemm_cycles``.
``link``
    Link utilisation ``payload bytes / (bytes per cycle * cycles)`` of
    single transfers of 256 B .. 64 KiB between the two nodes of the main
    job's cluster, RTL-measured (doorbell to the last descriptor's
    ``done_cycle``), next to the model's ``descriptor_cycles``.
``model``
    Golden model speed: simulated cycles and events per wall second of the
    main job at 2 and 16 nodes.
``builds``
    Cold (empty temporary ``GRADSYNC_CACHE``) and warm build of the 2-node
    cluster, split into Verilog generation, Verilator and the C++ compiler
    (skipped with ``--quick``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import json
import os
import pickle
import platform
import pstats
import sys
import tempfile
import time
from pathlib import Path

FIGURES = ("sim", "array", "link", "model", "builds")
GEMM_SHAPES = ((32, 64, 16), (64, 64, 32), (64, 32, 10), (256, 256, 256))
ARRAYS = (8, 16)
LINK_SIZES = (256, 1024, 4096, 16384, 65536)
#: (main-job steps of (a), steps of the profiled run, rounds of (b), model steps at 2 and
#: at 16 nodes)
SIZES = {"full": (100, 20, 10, (100, 20)), "quick": (10, 3, 2, (20, 2))}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure simulation, model and build speed side by side (ratios + absolute numbers)",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    p.add_argument("--quick", action="store_true", help="short runs, no cold build (~1 min warm)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument(
        "--only",
        default=",".join(FIGURES),
        help=f"comma-separated figures to run, of {', '.join(FIGURES)} (default: all)",
    )
    p.set_defaults(func=run)


def parse_only(text: str) -> list[str]:
    """The figures named by ``--only``; ValueError names the unknown one."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    for n in names:
        if n not in FIGURES:
            raise ValueError(f"--only takes {', '.join(FIGURES)}, not {n!r}")
    if not names:
        raise ValueError("--only needs at least one figure")
    return names


def run(args: argparse.Namespace) -> int:
    try:
        only = parse_only(args.only)
    except ValueError as exc:
        print(f"gradsync bench: {exc}", file=sys.stderr)
        return 2
    size = SIZES["quick" if args.quick else "full"]
    out = report_header(args.quick)
    steps = {
        "sim": lambda: sim_figure(*size[:3]),
        "array": array_figure,
        "link": link_figure,
        "model": lambda: model_figure(size[3]),
        "builds": lambda: {"skipped": "--quick"} if args.quick else builds_figure(),
    }
    for name in only:
        if not args.json:
            print(f"gradsync bench: measuring {name} ...", file=sys.stderr, flush=True)
        out["figures"][name] = steps[name]()
    out["machine"]["load_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out, indent=1) if args.json else render(out))
    return 0


# ---------------------------------------------------------------------------- header
def cpu_model() -> str:
    """The CPU model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("gradsync", "cocotb", "cocotbext-axi", "verilator", "amaranth", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def report_header(quick: bool) -> dict:
    return {
        "format_version": 1,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "system": f"{platform.system()} {platform.release()}",
            "load_before": round(os.getloadavg()[0], 2),
        },
        "versions": versions(),
        "figures": {},
    }


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def speed(cycles: int, seconds: float) -> dict:
    """Simulated ``cycles`` in wall ``seconds`` and their quotient."""
    return {"cycles": cycles, "seconds": seconds, "cycles_per_second": ratio(cycles, seconds)}


# ------------------------------------------------------------------- simulation speed
def sim_figure(steps: int, profile_steps: int, rounds: int) -> dict:
    """(a), (b), (c), their ratios, the Python share of (a) and the main job's RTL/model time."""
    from gradsync.firmware.experiment import TrainConfig
    from gradsync.sim.raw_build import build_raw
    from gradsync.sim.rtl_backend import build_cluster

    cfg = TrainConfig(steps=steps)
    model = build_cluster(cfg)  # the main job's cached build (built here when missing)
    raw = build_raw(model)
    main = main_job(cfg)
    a = speed(main["rtl_cycles"], main["rtl_sim_seconds"])
    b, c = idle_and_raw(model, raw, cfg, rounds)
    share = python_share(TrainConfig(steps=profile_steps))
    return {
        "config": f"main job: {cfg.nodes} nodes, {cfg.schedule}, {steps} steps",
        "a_cocotb_main_job": a,
        "b_cocotb_python_idle": b,
        "c_raw_cpp": c,
        "a_over_c": ratio(a["cycles_per_second"], c["cycles_per_second"]),
        "b_over_c": ratio(b["cycles_per_second"], c["cycles_per_second"]),
        "python_share_of_a": share,
        "main_job": main,
        "raw_build_seconds": raw.build_seconds,
    }


def main_job(cfg) -> dict:
    """The main job on the RTL and on the model backend, back to back (after an untimed
    one-step model run that pays the process's imports); identical weights and cycles."""
    import numpy as np

    from gradsync.firmware import experiment
    from gradsync.model_backend import run_model
    from gradsync.sim.rtl_backend import LAST_RUN, run_rtl

    # untimed warm-up: the first run in a process pays imports and the data set load
    experiment.run(dataclasses.replace(cfg, steps=1), lambda c, j: run_model(c, j))
    t0 = time.perf_counter()
    m = experiment.run(cfg, lambda c, j: run_model(c, j))
    model_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = experiment.run(cfg, lambda c, j: run_rtl(c, j, progress=False))
    rtl_s = time.perf_counter() - t0
    same = r.total_cycles == m.total_cycles and all(
        np.array_equal(x, y)
        for wm, wr in zip(m.weights, r.weights, strict=True)
        for x, y in zip(wm, wr, strict=True)
    )
    return {
        "steps": cfg.steps,
        "model_seconds": model_s,
        "rtl_seconds": rtl_s,
        "rtl_over_model": ratio(rtl_s, model_s),
        "rtl_sim_seconds": LAST_RUN.sim_seconds,
        "rtl_cycles": r.total_cycles,
        "model_cycles": m.total_cycles,
        "identical": same,
    }


def record_idle(model, raw, cfg, plan: dict, tmp: Path) -> tuple[dict, Path]:
    """Run the idle exchange ``plan`` on the cocotb model, recording its port writes for the
    raw binary: (the test's result record, the stimulus file in ``tmp``)."""
    from gradsync.sim.build import run_cocotb

    hw, fmt = cfg.hardware, cfg.fixed_point
    out, stim = tmp / "idle.json", tmp / "stimulus.txt"
    env = {
        "GRADSYNC_BENCH_IDLE": json.dumps(
            {
                "hardware": hw.to_dict(),
                "format": fmt.to_dict(),
                "plan": plan,
                "nodes": cfg.nodes,
                "ports": list(raw.ports),
            }  # fmt: skip
        ),
        "GRADSYNC_BENCH_OUT": str(out),
        "GRADSYNC_BENCH_STIMULUS": str(stim),
    }
    run_cocotb(model, "gradsync.sim.bench_cocotb", testcase="idle_exchange",
               test_dir=tmp, extra_env=env)  # fmt: skip
    return json.loads(out.read_text()), stim


def idle_and_raw(model, raw, cfg, rounds: int) -> tuple[dict, dict]:
    """(b) on the cocotb model, recording its ports; (c) the raw binary replaying them."""
    from gradsync.sim.bench_cocotb import model_idle_logs
    from gradsync.sim.raw_build import run_raw

    hw, fmt = cfg.hardware, cfg.fixed_point
    plan = {"rounds": rounds, "count": 64, "chunk": 2048, "gemm": [64, 32, 64]}
    with tempfile.TemporaryDirectory(prefix="gradsync-bench-") as tmp:
        res, stim = record_idle(model, raw, cfg, plan, Path(tmp))
        replay = run_raw(raw, stim, res["end_steps"])
    want = model_idle_logs(hw, fmt, plan, cfg.nodes)
    if res["logs"] != want:
        raise RuntimeError(f"figure (b): the RTL's interrupt log {res['logs']} != model {want}")
    b = speed(res["cycles"], res["wall_seconds"])
    b["work"] = (
        f"{rounds} rounds x per node {plan['count']} x {plan['chunk']} B descriptors + "
        f"8 GEMMs {'x'.join(map(str, plan['gemm']))}; {sum(map(len, want))} interrupts, "
        "logs equal to the model's"
    )
    b["host_calls"] = res["calls"]
    total_cycles = replay["end_steps"] // res["period_steps"]
    c = speed(total_cycles, replay["seconds"])
    c["replayed_events"], c["checked_reads"] = replay["events"], replay["checks"]
    c["work"] = "replay of (b)'s port writes from time 0 (calibration, reset, all rounds)"
    return b, c


def python_share(cfg) -> dict:
    """cProfile over the whole cocotb test of a main-job run: seconds inside Python frames."""
    from gradsync.firmware import experiment

    with tempfile.TemporaryDirectory(prefix="gradsync-bench-") as tmp:
        work = Path(tmp)
        experiment.run(cfg, lambda c, j: _profiled_rtl(c, j, work))
        stats = pstats.Stats(str(work / "profile.pstat"))
        wall = json.loads((work / "bench.json").read_text())["wall_seconds"]
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:12]
    top = [
        {"function": f"{Path(f).name}:{line}({name})", "calls": nc, "tottime": tt, "cumtime": ct}
        for (f, line, name), (_cc, nc, tt, ct, _callers) in rows
    ]
    return {
        "steps": cfg.steps,
        "python_seconds": stats.total_tt,
        "wall_seconds": wall,
        "share": ratio(stats.total_tt, wall),
        "top_tottime": top,
    }


def _profiled_rtl(cfg, jobs, work: Path):
    """A ``Backend`` running ``sim/train_cocotb.py``'s test under cProfile
    (``sim/bench_cocotb.py:train_profiled``), with the run/result pickles of
    ``sim/rtl_backend.py``."""
    from gradsync.firmware.schedules import schedule_spec
    from gradsync.sim.build import run_cocotb
    from gradsync.sim.rtl_backend import CLOCK_PERIOD_NS, PROGRESS_CYCLES, build_cluster

    model = build_cluster(cfg)
    run = {
        "cfg": cfg,
        "jobs": [dataclasses.replace(j, observer=None, schedule=None) for j in jobs],
        "schedules": [schedule_spec(j.schedule) or j.schedule for j in jobs],
        "opts": {
            "clock_period_ns": CLOCK_PERIOD_NS,
            "progress_cycles": PROGRESS_CYCLES,
            "max_cycles": None,
            "link_faults": [],
        },  # fmt: skip
    }
    (work / "run.pkl").write_bytes(pickle.dumps(run))
    run_cocotb(
        model,
        "gradsync.sim.bench_cocotb",
        testcase="train_profiled",
        test_dir=work,
        extra_env={
            "GRADSYNC_RTL_RUN": str(work / "run.pkl"),
            "GRADSYNC_RTL_RESULT": str(work / "result.pkl"),
            "GRADSYNC_BENCH_PROFILE": str(work / "profile.pstat"),
            "GRADSYNC_BENCH_OUT": str(work / "bench.json"),
        },
    )
    payload = pickle.loads((work / "result.pkl").read_bytes())
    if "error" in payload:
        raise RuntimeError(f"profiled RTL run failed: {payload['error']}")
    return payload["result"]


# ------------------------------------------------------------------------ array, link
def _cocotb_rows(model, testcase: str, env_name: str, env: dict) -> list:
    from gradsync.sim.build import run_cocotb

    with tempfile.TemporaryDirectory(prefix="gradsync-bench-") as tmp:
        out = Path(tmp) / "rows.json"
        run_cocotb(model, "gradsync.sim.bench_cocotb", testcase=testcase, test_dir=Path(tmp),
                   extra_env={env_name: json.dumps(env), "GRADSYNC_BENCH_OUT": str(out)})  # fmt: skip
        return json.loads(out.read_text())


def array_figure() -> dict:
    """RTL GEMM cycles against the formula, per array size and shape."""
    import functools

    from gradsync.hw.compute_node import ComputeNode
    from gradsync.sim.build import BuildOptions, build_component
    from gradsync.spec.formats import FixedPointFormat
    from gradsync.spec.hardware import HardwareConfig
    from gradsync.spec.timing import gemm_cycles

    fmt, out = FixedPointFormat(), {}
    for r in ARRAYS:
        hw = HardwareConfig(array_rows=r, array_cols=r, vector_lanes=r,
                            scratchpad_words=1 << 16, gradient_words=1 << 15)  # fmt: skip
        model = build_component(
            functools.partial(ComputeNode, hw, fmt), f"bench_node_{r}x{r}", BuildOptions(),
            params={"hardware": hw.to_dict(), "format": fmt.to_dict()},
        )  # fmt: skip
        env = {"hardware": hw.to_dict(), "format": fmt.to_dict(), "shapes": GEMM_SHAPES}
        rows = _cocotb_rows(model, "gemm_utilisation", "GRADSYNC_BENCH_GEMM", env)
        for row in rows:
            macs = row["m"] * row["k"] * row["n"]
            row["formula_cycles"] = gemm_cycles(row["m"], row["k"], row["n"], hw)
            row["utilisation"] = ratio(macs, r * r * row["cycles"])
            row["formula_utilisation"] = ratio(macs, r * r * row["formula_cycles"])
            row["rtl_over_formula"] = ratio(row["cycles"], row["formula_cycles"])
        out[f"{r}x{r}"] = rows
    return out


def link_figure() -> dict:
    """RTL link utilisation of single transfers on the main job's cluster."""
    from gradsync.firmware.experiment import TrainConfig
    from gradsync.sim.rtl_backend import build_cluster
    from gradsync.spec.timing import descriptor_cycles

    cfg = TrainConfig()
    hw, fmt = cfg.hardware, cfg.fixed_point
    env = {"hardware": hw.to_dict(), "format": fmt.to_dict(), "nodes": cfg.nodes,
           "sizes": LINK_SIZES}  # fmt: skip
    rows = _cocotb_rows(build_cluster(cfg), "link_utilisation", "GRADSYNC_BENCH_LINK", env)
    bpc = hw.link_bytes_per_cycle
    for row in rows:
        row["utilisation"] = ratio(row["bytes"], bpc * row["cycles"])
        row["model_cycles"] = row["descriptors"] * descriptor_cycles(row["chunk"], hw)
        row["model_utilisation"] = ratio(row["bytes"], bpc * row["model_cycles"])
    return {
        "link": f"{bpc} B/cycle, latency {hw.link_latency_cycles} cycles, max payload "
        f"{hw.max_payload_bytes} B",
        "transfers": rows,
    }


# ------------------------------------------------------------------------ golden model
def model_figure(steps: tuple[int, int]) -> dict:
    """Cycles and events per wall second of the model backend, main job at 2 and 16 nodes."""
    from gradsync.firmware import experiment
    from gradsync.firmware.experiment import TrainConfig
    from gradsync.model_backend import run_model_cluster

    out = {}
    for nodes, n_steps in zip((2, 16), steps, strict=True):
        cfg = TrainConfig(nodes=nodes, steps=n_steps)
        holder = {}

        def backend(c, j, holder=holder):
            res, cluster = run_model_cluster(c, j)
            holder["events"] = cluster.sim._seq  # events scheduled; all ran by the end
            return res

        t0 = time.perf_counter()
        res = experiment.run(cfg, backend)
        wall = time.perf_counter() - t0
        row = speed(res.total_cycles, wall)
        row["events"] = holder["events"]
        row["events_per_second"] = ratio(holder["events"], wall)
        out[f"nodes_{nodes}"] = {"steps": n_steps, **row}
    out["ratio_2_over_16_cycles_per_second"] = ratio(
        out["nodes_2"]["cycles_per_second"], out["nodes_16"]["cycles_per_second"]
    )
    return out


# ------------------------------------------------------------------------------ builds
def builds_figure() -> dict:
    """Cold build of the main job's cluster into an empty cache, then the same build warm."""
    from gradsync.firmware.experiment import TrainConfig

    cfg = TrainConfig()
    saved = os.environ.get("GRADSYNC_CACHE")
    with tempfile.TemporaryDirectory(prefix="gradsync-bench-cache-") as tmp:
        os.environ["GRADSYNC_CACHE"] = tmp
        try:
            cold = _timed_build(cfg)
            warm = _timed_build(cfg)
        finally:
            if saved is None:
                os.environ.pop("GRADSYNC_CACHE", None)
            else:
                os.environ["GRADSYNC_CACHE"] = saved
    return {"cold": cold, "warm": warm, "cold_over_warm": ratio(cold["total"], warm["total"])}


def _timed_build(cfg) -> dict:
    """One ``build_cluster`` call; a fresh build split into Verilog generation (timed here)
    and the Verilator and C++ steps the build recorded in its entry (``gradsync_build.json``:
    the entry keeps no intermediate files to date them by)."""
    from gradsync.hw.cluster import Cluster
    from gradsync.sim.build import to_verilog
    from gradsync.sim.rtl_backend import build_cluster

    t0 = time.time()
    model = build_cluster(cfg)
    total = time.time() - t0
    if model.cached:
        return {"total": total, "cached": True}
    g0 = time.perf_counter()
    to_verilog(Cluster(cfg.hardware, cfg.fixed_point, cfg.nodes,
                       host_lead_cycles=cfg.hardware.host_bulk_setup_cycles - 1,
                       host_lag_cycles=1), f"cluster{cfg.nodes}")  # fmt: skip
    verilog = time.perf_counter() - g0
    d = model.directory
    steps = json.loads((d / "gradsync_build.json").read_text())
    return {
        "total": total,
        "cached": False,
        "verilog_generation": verilog,
        "verilator": steps["verilator_seconds"],
        "cxx_compile": steps["cxx_seconds"],
        "entry_mb": sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 1e6,
    }


# ------------------------------------------------------------------------------ text
def render(out: dict) -> str:
    m, v = out["machine"], out["versions"]
    lines = [
        f"gradsync bench{' --quick' if out['quick'] else ''}  {out['date']}",
        f"machine: {m['cpu']}, {m['cores']} cores, {m['system']}; load "
        f"{m['load_before']} before, {m.get('load_after')} after",
        "versions: " + ", ".join(f"{k} {x}" for k, x in v.items()),
    ]
    f = out["figures"]
    if "sim" in f:
        s = f["sim"]
        lines.append(f"\nsimulation speed ({s['config']})")
        for key, label in (
            ("a_cocotb_main_job", "(a) cocotb, main job firmware"),
            ("b_cocotb_python_idle", "(b) cocotb, Python idle"),
            ("c_raw_cpp", "(c) raw C++ main, no VPI"),
        ):
            r = s[key]
            lines.append(
                f"  {label:<32} {r['cycles']:>10,} cycles {r['seconds']:8.2f} s "
                f"{r['cycles_per_second']:>12,.0f} cycles/s"
            )
        lines.append(f"  a/c = {s['a_over_c']:.3f}   b/c = {s['b_over_c']:.3f}")
        p = s["python_share_of_a"]
        lines.append(
            f"  Python share of (a): {p['python_seconds']:.2f} s of {p['wall_seconds']:.2f} s "
            f"= {p['share']:.1%} (cProfile, {p['steps']} steps)"
        )
        j = s["main_job"]
        lines.append(
            f"  main job RTL/model wall: {j['rtl_seconds']:.2f} s / {j['model_seconds']:.2f} s "
            f"= {j['rtl_over_model']:.2f}x ({j['steps']} steps; identical: {j['identical']})"
        )
    if "array" in f:
        lines.append("\narray utilisation: useful MACs / (R*C*cycles), RTL vs formula")
        for name, rows in f["array"].items():
            for r in rows:
                lines.append(
                    f"  {name:>5} {r['m']:>3}x{r['k']:>3}x{r['n']:>3}: {r['cycles']:>7} cycles "
                    f"(formula {r['formula_cycles']:>7}, ratio {r['rtl_over_formula']:.3f})  "
                    f"utilisation {r['utilisation']:.3f} (formula {r['formula_utilisation']:.3f})"
                )
    if "link" in f:
        lines.append(f"\nlink utilisation ({f['link']['link']}): payload / (B/cycle * cycles)")
        for r in f["link"]["transfers"]:
            lines.append(
                f"  {r['bytes']:>6} B ({r['descriptors']} x {r['chunk']} B): {r['cycles']:>6} "
                f"cycles, utilisation {r['utilisation']:.3f} (model {r['model_utilisation']:.3f})"
            )
    if "model" in f:
        lines.append("\ngolden model speed (main job)")
        for n in (2, 16):
            r = f["model"][f"nodes_{n}"]
            lines.append(
                f"  {n:>2} nodes, {r['steps']:>3} steps: {r['cycles']:>10,} cycles {r['events']:>9,} events "
                f"{r['seconds']:7.2f} s  {r['cycles_per_second']:>11,.0f} cycles/s "
                f"{r['events_per_second']:>9,.0f} events/s"
            )
        lines.append(
            f"  cycles/s 2 nodes / 16 nodes = {f['model']['ratio_2_over_16_cycles_per_second']:.2f}"
        )
    if "builds" in f:
        b = f["builds"]
        lines.append("\nbuilds (2-node cluster)")
        if "skipped" in b:
            lines.append(f"  skipped ({b['skipped']})")
        else:
            c = b["cold"]
            lines.append(
                f"  cold {c['total']:.1f} s = Verilog {c['verilog_generation']:.1f} s + Verilator "
                f"{c['verilator']:.1f} s + C++ {c['cxx_compile']:.1f} s (+ rest); entry "
                f"{c['entry_mb']:.0f} MB"
            )
            lines.append(
                f"  warm {b['warm']['total']:.2f} s; cold/warm = {b['cold_over_warm']:.0f}x"
            )
    return "\n".join(lines)
