"""``gradsync train``: data-parallel training of an MLP on digits across N simulated nodes.

The model backend runs the firmware on the golden model; the RTL backend
(``gradsync.sim``) runs the same firmware on Verilator.  Prints one line per
step and writes the experiment record (``docs/outputs.md``) with ``--out``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from gradsync.spec.formats import BFloat16Format, FixedPointFormat
from gradsync.spec.hardware import DEFAULT_PRESET, PRESET_HELP, PRESETS, preset
from gradsync.spec.limits import LimitError

BASELINES = ("fifo", "sequential")  #: what the summary compares the run's schedule with


def plural(n: int, word: str) -> str:
    """``1 node``, ``2 nodes``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


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


def _number_format(text: str) -> str | tuple[int, int]:
    """``--format``: ``bf16``, or fixed point ``qI.F`` (I integer, F fractional bits)."""
    if text.lower() == "bf16":
        return "bf16"
    m = re.fullmatch(r"[qQ](\d+)\.(\d+)", text)
    if m is None:
        raise argparse.ArgumentTypeError(
            f"format must be bf16 or fixed point qI.F such as q5.10, not {text!r}"
        )
    return int(m[1]), int(m[2])


def add_config_arguments(
    p: argparse.ArgumentParser,
    *,
    schedule: bool = True,
    steps: int | None = None,
    backend: str = "rtl",
) -> None:
    """Arguments shared by ``train`` and ``compare``; defaults are ``TrainConfig``'s and the preset's."""
    from gradsync.firmware.experiment import TrainConfig

    d = TrainConfig()
    steps = d.steps if steps is None else steps
    small = PRESETS[DEFAULT_PRESET]
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
        help="cycle budget of a run; when spent the run stops naming what each node waits "
        "for (default: no budget)",
    )
    p.add_argument(
        "--nodes", type=int, default=d.nodes, help=f"simulated nodes (default {d.nodes})"
    )
    if schedule:
        p.add_argument(
            "--schedule",
            default=d.schedule,
            help=f"sequential, fifo, priority, or path/to/file.py:ClassName (default {d.schedule})",
        )
    p.add_argument(
        "--chunk-bytes",
        type=_chunk,
        default=d.chunk_bytes,
        help=f"gradient chunk in bytes, or 'auto' (default {d.chunk_bytes})",
    )
    p.add_argument("--steps", type=int, default=steps, help=f"training steps (default {steps})")
    widths = ",".join(str(w) for w in d.layers)
    p.add_argument(
        "--layers",
        type=_layers,
        default=d.layers,
        help=f"MLP widths, input first (default {widths})",
    )
    p.add_argument(
        "--global-batch",
        type=int,
        default=d.global_batch,
        help=f"samples per step over all nodes (default {d.global_batch})",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=d.learning_rate,
        help=f"SGD learning rate (default {d.learning_rate})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=d.seed,
        help=f"data split, batches and initial weights (default {d.seed})",
    )
    hw = p.add_argument_group("hardware (the same on both backends)")
    hw.add_argument(
        "--hardware",
        choices=tuple(PRESETS),
        default=None,
        metavar="NAME",
        help="hardware preset: "
        + "; ".join(f"{name}: {text}" for name, text in PRESET_HELP.items())
        + f"; the flags below override its fields. Not given: {DEFAULT_PRESET}, with the "
        "SRAMs of the first larger preset if the run does not fit its own (said before the run)",
    )
    hw.add_argument(
        "--array",
        default=None,
        metavar="RxC",
        help="systolic array rows x columns "
        f"(default: the preset's, {small.array_rows}x{small.array_cols} on {DEFAULT_PRESET})",
    )
    for flag, field, what in (
        (
            "--link-bytes-per-cycle",
            "link_bytes_per_cycle",
            "link bytes per cycle (1, 2, 4 or 8; set at run time, no new build; 8 needs a "
            "build of link width 8 bytes, which it then gets: --link-width-bytes)",
        ),
        (
            "--link-latency-cycles",
            "link_latency_cycles",
            "link latency in cycles (0..1023; set at run time)",
        ),
        (
            "--max-payload-bytes",
            "max_payload_bytes",
            "largest packet payload in bytes (4..512; set at run time)",
        ),
    ):
        hw.add_argument(
            flag,
            type=int,
            default=None,
            metavar="N",
            help=f"{what} (default: the preset's, {getattr(small, field)} on {DEFAULT_PRESET})",
        )
    hw.add_argument(
        "--link-width-bytes",
        type=int,
        default=None,
        metavar="N",
        help="the build's link datapath in bytes, 4 or 8 (a 64-bit link that runs at any of "
        "1, 2, 4, 8 bytes/cycle, so a sweep over them reuses one build; not with --format "
        f"bf16) (default: 8 with --link-bytes-per-cycle 8, else {small.link_width_bytes})",
    )
    fmt = d.number_format
    hw.add_argument(
        "--format",
        type=_number_format,
        default=None,
        metavar="FMT",
        help="number format: fixed point qI.F (sign, I integer and F fractional bits; "
        f"q{fmt.total_bits - fmt.frac_bits - 1}.{fmt.frac_bits} by default, as --total-bits "
        "and --frac-bits say) or bf16 (bf16 operands, fp32 accumulation, gradients and "
        "master weights; the default network then needs the large preset's SRAMs)",
    )
    hw.add_argument(
        "--grad-format",
        default=None,
        metavar="FMT",
        help="with --format bf16: the gradients' format on the link, fp32 or bf16 (half the "
        "link bytes: sent rounded to bf16, reduce-added in fp32; chunks a multiple of 8 "
        "bytes) (default fp32)",
    )
    hw.add_argument(
        "--total-bits",
        type=int,
        default=fmt.total_bits,
        help=f"fixed-point operand width in bits (default {fmt.total_bits})",
    )
    hw.add_argument(
        "--frac-bits",
        type=int,
        default=fmt.frac_bits,
        help=f"fixed-point fractional bits (default {fmt.frac_bits})",
    )


def _with_srams(cfg, preset_name: str):
    """``cfg`` with the scratchpad and gradient SRAM sizes of the preset ``preset_name``."""
    import dataclasses

    sizes = PRESETS[preset_name]
    hw = dataclasses.replace(
        cfg.hardware, scratchpad_words=sizes.scratchpad_words, gradient_words=sizes.gradient_words
    )
    return dataclasses.replace(cfg, hardware=hw)


def _fits(cfg, preset_name: str) -> bool:
    """Whether ``cfg``'s layers and batch fit the SRAMs of the preset ``preset_name``."""
    from gradsync.firmware.training import MemoryPlanError

    try:
        _with_srams(cfg, preset_name).validate()
    except MemoryPlanError:
        return False
    return True


#: Configuration fields (``TrainConfig``, ``HardwareConfig``, ``FixedPointFormat``) and the
#: options that set them: a :class:`~gradsync.spec.limits.LimitError` is reported by option.
OPTIONS = {
    "nodes": "--nodes",
    "schedule": "--schedule",
    "chunk_bytes": "--chunk-bytes",
    "steps": "--steps",
    "layers": "--layers",
    "global_batch": "--global-batch",
    "learning_rate": "--lr",
    "seed": "--seed",
    "array_rows": "--array",
    "array_cols": "--array",
    "link_bytes_per_cycle": "--link-bytes-per-cycle",
    "link_width_bytes": "--link-width-bytes",
    "link_latency_cycles": "--link-latency-cycles",
    "max_payload_bytes": "--max-payload-bytes",
    "total_bits": "--total-bits",
    "frac_bits": "--frac-bits",
    "grad_format": "--grad-format",
}


def option_error(exc: LimitError, options: dict[str, str] = OPTIONS) -> ValueError:
    """``exc`` as one sentence naming the option that set the field, its value and the rule."""
    option = options.get(exc.field)
    if option is None:
        return ValueError(str(exc))
    value = exc.value if isinstance(exc.value, str) and exc.value else repr(exc.value)
    # a rule naming another field as ``field=value`` names its option instead
    rule = re.sub(
        r"\b([a-z_]+)=(\w+)",
        lambda m: f"{options[m[1]]} {m[2]}" if m[1] in options else m[0],
        exc.rule,
    )
    return ValueError(f"{option} must be {rule}, not {value}")


def config_from_args(args, schedule: str | None = None):
    """The :class:`TrainConfig` of the options, validated; ``ValueError`` names the option."""
    try:
        return _config_from_args(args, schedule)
    except LimitError as exc:
        raise option_error(exc) from None


def prepare_from_args(args, schedule: str | None = None, options: dict[str, str] = OPTIONS):
    """(config, :class:`~gradsync.firmware.experiment.Prepared`): every check a run makes
    before its backend starts (limits, memory plan, data shape, schedule), nothing run."""
    from gradsync.firmware import experiment

    try:
        cfg = _config_from_args(args, schedule)
        return cfg, experiment.prepare(cfg)
    except LimitError as exc:
        raise option_error(exc, options) from None


def _config_from_args(args, schedule: str | None = None):
    from gradsync.firmware.experiment import TrainConfig
    from gradsync.firmware.training import MemoryPlanError

    overrides = {
        name: getattr(args, name)
        for name in ("link_bytes_per_cycle", "link_latency_cycles", "max_payload_bytes")
        if getattr(args, name) is not None
    }
    width = getattr(args, "link_width_bytes", None)
    if width is None and overrides.get("link_bytes_per_cycle") == 8:
        width = 8  # 8 bytes/cycle needs the 64-bit link datapath: the build gets it
    if width is not None:
        overrides["link_width_bytes"] = width
    if args.array is not None:
        try:
            overrides["array_rows"], overrides["array_cols"] = (
                int(x) for x in str(args.array).lower().split("x")
            )
        except ValueError:
            raise ValueError(f"--array must look like 8x8, not {args.array!r}") from None
    name = args.hardware or DEFAULT_PRESET
    hw = preset(name, **overrides)
    fmt = _format_from_args(args)
    if hw.link_width_bytes == 8 and isinstance(fmt, BFloat16Format):
        raise LimitError(
            "link_width_bytes",
            8,
            "4 with --format bf16 (the 64-bit link carries fixed-point gradients; "
            "--link-bytes-per-cycle at most 4)",
        )
    cfg = TrainConfig(
        nodes=args.nodes,
        schedule=args.schedule if schedule is None else schedule,
        chunk_bytes=args.chunk_bytes,
        steps=args.steps,
        layers=tuple(args.layers),
        global_batch=args.global_batch,
        learning_rate=args.lr,
        seed=args.seed,
        number_format=fmt,
        hardware=hw,
        grad_format=getattr(args, "grad_format", None),
    )
    args.hardware_note = None
    try:
        cfg.validate()
    except MemoryPlanError as exc:
        fits = [other for other in PRESETS if other != name and _fits(cfg, other)]
        if args.hardware is not None or not fits:
            hint = f" (--hardware {name}); try --hardware {fits[0]}" if fits else ""
            raise MemoryPlanError(f"{exc}{hint}") from None
        cfg = _with_srams(cfg, fits[0])
        args.hardware_note = (
            f"hardware: {name} with the {fits[0]} preset's SRAMs "
            f"({cfg.hardware.scratchpad_words:,} scratchpad + {cfg.hardware.gradient_words:,} "
            f"gradient words), since {exc}"
        )
    return cfg


def _format_from_args(args) -> FixedPointFormat | BFloat16Format:
    """The number format of ``--format`` (or of ``--total-bits``/``--frac-bits``)."""
    chosen = getattr(args, "format", None)
    if chosen is None:
        return FixedPointFormat(total_bits=args.total_bits, frac_bits=args.frac_bits)
    default = FixedPointFormat()
    if (args.total_bits, args.frac_bits) != (default.total_bits, default.frac_bits):
        raise ValueError(
            f"--format {_format_name(chosen)} and --total-bits/--frac-bits both set the "
            "number format; give one of them"
        )
    if chosen == "bf16":
        return BFloat16Format()
    integer, frac = chosen
    try:
        return FixedPointFormat(total_bits=integer + frac + 1, frac_bits=frac)
    except LimitError:
        raise ValueError(
            f"--format must be bf16 or a fixed-point format of 8, 16 or 32 bits "
            f"(q{integer}.{frac} has {integer + frac + 1}), not q{integer}.{frac}"
        ) from None


def _format_name(chosen: str | tuple[int, int]) -> str:
    return chosen if isinstance(chosen, str) else f"q{chosen[0]}.{chosen[1]}"


def backend_for(name: str, args=None, capture: dict | None = None):
    """The backend callable for ``--backend``; ``capture['result']`` receives its BackendResult."""
    max_cycles = getattr(args, "max_cycles", None)
    if name == "model":
        from gradsync.model_backend import run_model

        def model_backend(cfg, jobs):
            res = run_model(
                cfg, jobs, max_cycles, link_faults=getattr(args, "link_faults_parsed", None)
            )
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
            waves_dir=getattr(args, "waves_dir", None),  # the record's temporary folder
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


def _print_baselines(cfg, res, backend: str) -> None:
    """The run's means beside those of :data:`BASELINES` on the golden model, and the gains."""
    from gradsync.cmd_compare import format_table, gain_line, schedule_rows, summary_row

    others = [name for name in BASELINES if name != cfg.schedule]
    if not others:
        return
    own = summary_row(f"{cfg.schedule}", res, cfg.grad_format)
    rows = [own] + schedule_rows(cfg, backend_for("model"), others)
    print(
        f"the same configuration under {' and '.join(others)} on the golden model "
        f"({plural(cfg.steps, 'step')} each; the first row is this run, on {backend}):"
    )
    print(format_table(rows))
    for other in rows[1:]:
        print(gain_line(own, other))


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train an MLP on digits across N simulated nodes")
    add_config_arguments(p)
    p.add_argument(
        "--out",
        type=Path,
        help="write results.json, weights/, trace.json, timeline.png here (default: write nothing)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the previous run record in --out (without it a non-empty --out is refused)",
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
        help="inject faults on the links, the same on both backends (cycle-exact), e.g. "
        "corrupt=600,drop=600 on every link or 'burst=900;1:ack-drop=500,down-at=2000,"
        "down-len=300' per link (rates per 65536 packets, cycles or acks: corrupt, drop, "
        "burst, burst-len, frame, stall, stall-max, ack-drop, ack-corrupt, down-rate, "
        "down-mean, down-at, down-len, seed; see docs/comm.md); the NICs must recover them "
        "and the weights stay those of a fault-free run (default: no faults)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="after the run, run the golden model on the same config and compare every "
        "weight and trace record; exit 1 on any difference",
    )
    p.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"after the run, run the same configuration under {' and '.join(BASELINES)} on "
        "the golden model (seconds) and print what the run's schedule gains (default: on)",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="RTL: show step, cycle and simulation speed on stderr (default: on a terminal)",
    )
    p.set_defaults(func=run)


def _check_arguments(args):
    """Every check before a run but --out's (``RunRecord.open``): options, --waves,
    --link-faults. Returns (config, prepared); ``ValueError`` names the option and the value."""
    if args.waves:
        problem = _waves_problem(args)
        if problem:
            raise ValueError(problem)
    cfg, prepared = prepare_from_args(args)
    if args.backend == "rtl" and cfg.nodes < 2:
        raise ValueError(f"--nodes must be at least 2 on --backend rtl, not {cfg.nodes}")
    if args.link_faults is not None:
        from gradsync.spec.faults import parse_link_faults

        args.link_faults_parsed = parse_link_faults(args.link_faults, cfg.nodes)
    return cfg, prepared


def run(args) -> int:
    from gradsync.firmware import experiment
    from gradsync.outputs import RunRecord

    captured: dict = {}
    try:
        cfg, prepared = _check_arguments(args)
        if args.waves:
            from gradsync.sim.rtl_backend import default_waves

            args.waves = default_waves()
        backend = backend_for(args.backend, args, captured)
        record = RunRecord(args.out, args.overwrite, args.backend)
        record.open()  # the lock and the temporary folder: refused like bad input
    except ValueError as exc:
        print(f"gradsync train: {exc}", file=sys.stderr)
        return 2
    args.waves_dir = record.work
    if args.hardware_note and not args.quiet:
        print(args.hardware_note, flush=True)
    done: list[int] = []

    def show(m) -> None:
        record.step(m)
        done.append(m.step)
        if not args.quiet:
            print(
                f"step {m.step:4d}  loss {m.loss:7.4f}  acc {m.accuracy:6.2%}  cycles {m.cycles:7d}  "
                f"layer1-ready {m.layer1_ready_cycle:7d}  exposed-comm {m.exposed_comm_cycles:6d}",
                flush=True,
            )

    kept = f"; partial record in {args.out}" if args.out else ""
    try:
        with record:
            record.begin(cfg, prepared.data)
            res = experiment.run(cfg, backend, on_step=show, prepared=prepared)
            extra = {"rtl": _rtl_record(args)} if args.backend == "rtl" else None
            record.complete(res, extra)
    except KeyboardInterrupt:
        print(
            f"gradsync train: interrupted after {plural(len(done), 'step')}{kept}"
            + (" (status interrupted)" if args.out else ""),
            file=sys.stderr,
        )
        return 130
    except (ValueError, RuntimeError) as exc:  # a device error, a spent budget, a failed sim
        print(f"gradsync train: {exc}{kept}", file=sys.stderr)
        if args.waves:
            _report_waves(args)  # the waveform of a failed run is the one to look at
        return 2 if isinstance(exc, ValueError) else 1
    return _summary(args, cfg, res, captured)


def _summary(args, cfg, res, captured: dict) -> int:
    """Print what the run measured (and baselines, --check); the record is already written."""
    last = res.steps[-1]
    mean_cycles = sum(m.cycles for m in res.steps) / len(res.steps)
    print(
        f"{plural(cfg.nodes, 'node')}, {cfg.schedule}, chunk {res.chunk_bytes} B: "
        f"final loss {last.loss:.4f}, "
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
    if args.baselines:
        _print_baselines(cfg, res, args.backend)
    if args.out:
        print(f"wrote {args.out}/results.json, weights/, trace.json, timeline.png")
    if args.check:
        from gradsync.sim.check import check_run

        report = check_run(
            cfg, captured["result"], link_faults=getattr(args, "link_faults_parsed", None)
        )
        print(report.verdict())
        if not report.ok:
            for line in report.details[:10]:
                print(f"  {line}")
            return 1
    return 0
