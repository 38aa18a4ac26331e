"""``gradsync train``: data-parallel training of an MLP on digits across N simulated nodes.

The model backend runs the firmware on the golden model; the RTL backend
(``gradsync.sim``) runs the same firmware on Verilator.  Prints one line per
step and writes the experiment record (``docs/outputs.md``) with ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import DEFAULT_PRESET, PRESET_HELP, PRESETS, preset


def _layers(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"layers must be comma-separated integers, not {text!r}"
        ) from None
    return widths


def _chunk(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"chunk size must be bytes or 'auto', not {text!r}"
        ) from None


def add_config_arguments(
    p: argparse.ArgumentParser,
    *,
    schedule: bool = True,
    steps: int = 100,
    backend: str = "rtl",
) -> None:
    """Arguments shared by ``train`` and ``compare``."""
    p.add_argument(
        "--backend",
        choices=("model", "rtl"),
        default=backend,
        help=f"device backend: rtl (Verilator) or model (golden model) (default {backend})",
    )
    p.add_argument(
        "--max-cycles",
        type=int,
        default=None,
        help="cycle budget of a run; when spent the run stops naming what each node waits for",
    )
    p.add_argument("--nodes", type=int, default=2, help="simulated nodes (default 2)")
    if schedule:
        p.add_argument(
            "--schedule",
            default="priority",
            help="sequential, fifo, priority, or path/to/file.py:ClassName (default priority)",
        )
    p.add_argument(
        "--chunk-bytes",
        type=_chunk,
        default=512,
        help="gradient chunk in bytes, or 'auto' (default 512)",
    )
    p.add_argument("--steps", type=int, default=steps, help=f"training steps (default {steps})")
    p.add_argument(
        "--layers", type=_layers, default=(64, 32, 10), help="MLP widths (default 64,32,10)"
    )
    p.add_argument(
        "--global-batch", type=int, default=64, help="samples per step over all nodes (default 64)"
    )
    p.add_argument("--lr", type=float, default=0.25, help="SGD learning rate (default 0.25)")
    p.add_argument(
        "--seed", type=int, default=0, help="data split, batches and initial weights (default 0)"
    )
    hw = p.add_argument_group("hardware")
    hw.add_argument(
        "--hardware",
        choices=tuple(PRESETS),
        default=DEFAULT_PRESET,
        metavar="NAME",
        help="hardware preset, the same on both backends: "
        + "; ".join(f"{name}: {text}" for name, text in PRESET_HELP.items()),
    )
    hw.add_argument("--array", default="8x8", help="systolic array RxC (default 8x8)")
    hw.add_argument("--link-bytes-per-cycle", type=int, default=4)
    hw.add_argument("--link-latency-cycles", type=int, default=50)
    hw.add_argument("--max-payload-bytes", type=int, default=256)
    hw.add_argument("--total-bits", type=int, default=16, help="fixed-point operand width")
    hw.add_argument("--frac-bits", type=int, default=10, help="fixed-point fractional bits")


def _fits(cfg, preset_name: str) -> bool:
    """Whether ``cfg``'s layers and batch fit the SRAMs of the preset ``preset_name``."""
    import dataclasses

    from gradsync.firmware.training import MemoryPlanError

    sizes = PRESETS[preset_name]
    hw = dataclasses.replace(
        cfg.hardware, scratchpad_words=sizes.scratchpad_words, gradient_words=sizes.gradient_words
    )
    try:
        dataclasses.replace(cfg, hardware=hw).validate()
    except MemoryPlanError:
        return False
    return True


def config_from_args(args, schedule: str | None = None):
    from gradsync.firmware.experiment import TrainConfig
    from gradsync.firmware.training import MemoryPlanError

    try:
        rows, cols = (int(x) for x in args.array.lower().split("x"))
    except ValueError:
        raise ValueError(f"--array must look like 8x8, not {args.array!r}") from None
    hw = preset(
        args.hardware,
        array_rows=rows,
        array_cols=cols,
        link_bytes_per_cycle=args.link_bytes_per_cycle,
        link_latency_cycles=args.link_latency_cycles,
        max_payload_bytes=args.max_payload_bytes,
    )
    fmt = FixedPointFormat(total_bits=args.total_bits, frac_bits=args.frac_bits)
    cfg = TrainConfig(
        nodes=args.nodes,
        schedule=schedule or args.schedule,
        chunk_bytes=args.chunk_bytes,
        steps=args.steps,
        layers=tuple(args.layers),
        global_batch=args.global_batch,
        learning_rate=args.lr,
        seed=args.seed,
        fixed_point=fmt,
        hardware=hw,
    )
    try:
        cfg.validate()
    except MemoryPlanError as exc:
        fits = [name for name in PRESETS if name != args.hardware and _fits(cfg, name)]
        hint = f" (--hardware {args.hardware}); try --hardware {fits[0]}" if fits else ""
        raise MemoryPlanError(f"{exc}{hint}") from None
    return cfg


def backend_for(name: str, args=None, capture: dict | None = None):
    """The backend callable for ``--backend``; ``capture['result']`` receives its BackendResult."""
    max_cycles = getattr(args, "max_cycles", None)
    if name == "model":
        from gradsync.model_backend import run_model

        def model_backend(cfg, jobs):
            res = run_model(cfg, jobs, max_cycles)
            if capture is not None:
                capture["result"] = res
            return res

        return model_backend
    from gradsync.sim.rtl_backend import run_rtl

    waves = getattr(args, "waves", None) or None  # "vcd"/"fst" (set by run()) or off

    def rtl_backend(cfg, jobs):
        res = run_rtl(
            cfg,
            jobs,
            waves=waves,
            waves_dir=getattr(args, "out", None),
            progress=getattr(args, "progress", None),
            max_cycles=max_cycles,
            link_faults=getattr(args, "link_faults_parsed", None),
        )
        if capture is not None:
            capture["result"] = res
        return res

    return rtl_backend


def _waves_problem(args) -> str | None:
    """Why ``--waves`` cannot be honoured for these arguments (before a long run)."""
    if args.backend != "rtl":
        return "--waves needs --backend rtl: the golden model has no signals to dump."
    if args.out is None:
        return "--waves writes the waveform into the run's output directory; add --out DIR."
    return None


def _report_waves(args) -> None:
    from gradsync.sim.rtl_backend import waves_path

    path = waves_path(args.out, args.waves)
    if path.is_file():
        size = path.stat().st_size / 1e6
        print(f"wrote {args.waves.upper()} waveform {path} ({size:.1f} MB)")
    else:
        print(f"no waveform written: the simulator did not create {path}", file=sys.stderr)


def _counter_line(counters: dict) -> str:
    links = {k: sum(c[k] for c in counters["links"]) for k in counters["links"][0]}
    nodes = {k: sum(c[k] for c in counters["nodes"]) for k in counters["nodes"][0]}
    return (
        f"links: {links['packets']} packets, {links['corrupted']} corrupted, "
        f"{links['dropped']} dropped, {links['stalls']} stalls; NICs: "
        f"{nodes['tx_retransmits']} retransmitted, {nodes['tx_timeouts']} timeouts, "
        f"{nodes['tx_naks']} NAKs, {nodes['rx_crc_errors']} CRC errors, "
        f"{nodes['rx_duplicates']} duplicates discarded"
    )


def _rtl_record(args) -> dict:
    """results.json["rtl"]: the build, the simulation and the link/NIC counters of the run."""
    from gradsync.sim.rtl_backend import LAST_RUN

    return {
        "build_cached": LAST_RUN.build_cached,
        "build_seconds": round(LAST_RUN.build_seconds, 3),
        "sim_seconds": round(LAST_RUN.sim_seconds, 3),
        "link_faults": getattr(args, "link_faults_parsed", None) or [],
        "counters": LAST_RUN.counters,
    }


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train an MLP on digits across N simulated nodes")
    add_config_arguments(p)
    p.add_argument(
        "--out", type=Path, help="write results.json, weights/, trace.json, timeline.png here"
    )
    p.add_argument("--quiet", action="store_true", help="no per-step lines")
    p.add_argument(
        "--waves",
        action="store_true",
        help="RTL: also write a waveform of the whole cluster to OUT/waves.fst (when the "
        "lz4 and zlib development files are installed) or else OUT/waves.vcd",
    )
    p.add_argument(
        "--link-faults",
        metavar="SPEC",
        help="RTL: inject faults on every link, e.g. corrupt=600,drop=600 (rates per 65536 "
        "packets; also stall=R per cycle, stall-max=N cycles, seed=S); the NICs must "
        "recover them and the weights stay those of a fault-free run",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="after the run, run the golden model on the same config and compare every "
        "weight and trace record; exit 1 on any difference",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="RTL: show step, cycle and simulation speed on stderr (default: on a terminal)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from gradsync.firmware import experiment
    from gradsync.outputs import write_all

    captured: dict = {}
    if args.waves:
        problem = _waves_problem(args)
        if problem:
            print(f"gradsync train: {problem}", file=sys.stderr)
            return 2
        from gradsync.sim.rtl_backend import default_waves, waves_path

        args.waves = default_waves()
        waves_path(args.out, args.waves).unlink(missing_ok=True)  # never report a stale one
    try:
        cfg = config_from_args(args)
        if args.link_faults is not None:
            if args.backend != "rtl":
                raise ValueError("--link-faults needs --backend rtl: the golden model's links are ideal")
            from gradsync.sim.rtl_backend import link_faults_from_spec

            args.link_faults_parsed = link_faults_from_spec(args.link_faults, cfg.nodes)
        backend = backend_for(args.backend, args, captured)
    except ValueError as exc:
        print(f"gradsync train: {exc}", file=sys.stderr)
        return 2

    def show(m) -> None:
        if not args.quiet:
            print(
                f"step {m.step:4d}  loss {m.loss:7.4f}  acc {m.accuracy:6.2%}  cycles {m.cycles:7d}  "
                f"layer1-ready {m.layer1_ready_cycle:7d}  exposed-comm {m.exposed_comm_cycles:6d}"
            )

    try:
        res = experiment.run(cfg, backend, on_step=show)
    except ValueError as exc:
        print(f"gradsync train: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # a device error, a spent cycle budget, a failed simulation
        print(f"gradsync train: {exc}", file=sys.stderr)
        if args.waves:
            _report_waves(args)  # the waveform of a failed run is the one to look at
        return 1
    last = res.steps[-1]
    mean_cycles = sum(m.cycles for m in res.steps) / len(res.steps)
    print(
        f"{cfg.nodes} nodes, {cfg.schedule}, chunk {res.chunk_bytes} B: final loss {last.loss:.4f}, "
        f"held-out accuracy {last.accuracy:.2%}, {mean_cycles:.0f} cycles/step, "
        f"{res.total_cycles} cycles in {res.wall_seconds:.1f} s "
        f"({res.total_cycles / max(res.wall_seconds, 1e-9):,.0f} cycles/s)"
    )
    if args.backend == "rtl":
        from gradsync.sim.rtl_backend import LAST_RUN

        print(
            f"RTL: Verilator model {'reused from cache' if LAST_RUN.build_cached else 'built'} "
            f"in {LAST_RUN.build_seconds:.1f} s, simulation {LAST_RUN.sim_seconds:.1f} s "
            f"({res.total_cycles / max(LAST_RUN.sim_seconds, 1e-9):,.0f} cycles/s)"
        )
        if args.waves:
            _report_waves(args)
        if LAST_RUN.counters:
            print(_counter_line(LAST_RUN.counters))
    if args.out:
        extra = {"rtl": _rtl_record(args)} if args.backend == "rtl" else None
        write_all(res, args.out, args.backend, extra)
        print(f"wrote {args.out}/results.json, weights/, trace.json, timeline.png")
    if args.check:
        from gradsync.sim.check import check_run

        report = check_run(cfg, captured["result"], timing=args.link_faults is None)
        print(report.verdict())
        if not report.ok:
            for line in report.details[:10]:
                print(f"  {line}")
            return 1
    return 0
