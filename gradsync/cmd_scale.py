"""``gradsync scale``: the collective-level simulator over a grid of configurations.

Every option takes a comma-separated list; the lists expand to their product
(the grid).  Every point is checked (:func:`gradsync.scale.point.validate`)
before the first one runs, so a bad value stops the command with exit 2 and
nothing written.  Prints a table; ``--out DIR`` writes ``results.csv``,
``results.json``, ``trace.json`` (one point, ``--trace-point``) and plots
(``docs/scale.md``).
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

#: grids with more points than this show a progress bar on stderr
PROGRESS_MIN_POINTS = 4


def add_parser(sub) -> None:
    from gradsync.scale.point import OPTIONS, REQUIRED

    p = sub.add_parser(
        "scale",
        help="simulate data-parallel training steps on 2-1024+ nodes (grid of configurations)",
        description="Simulate one data-parallel training step at chunk granularity for every "
        "point of a grid; every option takes a comma-separated list.",
    )
    for key, opt in OPTIONS.items():
        if key in REQUIRED:
            note = " (required)"
        elif opt.default is None:
            note = ""
        else:
            note = (
                f" (default {opt.default:g})"
                if isinstance(opt.default, float)
                else f" (default {opt.default})"
            )
        p.add_argument("--" + key.replace("_", "-"), dest=key, metavar="LIST", help=opt.help + note)
    p.add_argument("--out", type=Path, help="write results.csv, results.json, trace.json, plots")
    p.add_argument(
        "--trace-point",
        type=int,
        default=0,
        metavar="INDEX",
        help="grid point (0-based, in table order) whose node and links go to trace.json (default 0)",
    )
    p.add_argument("--json", action="store_true", help="print results.json on stdout, no table")
    p.set_defaults(func=run)


def grid(args) -> list[dict]:
    """The product of the options' comma lists, as dicts of option -> text (table order)."""
    from gradsync.scale.point import OPTIONS

    axes = {}
    for key in OPTIONS:
        text = getattr(args, key, None)
        if text is not None:
            axes[key] = list(dict.fromkeys(v.strip() for v in text.split(",")))
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def command(args) -> list[str]:
    """The command line that makes this grid (for the run record)."""
    from gradsync.scale.point import OPTIONS

    words = ["gradsync", "scale"]
    for key in OPTIONS:
        if getattr(args, key, None) is not None:
            words += ["--" + key.replace("_", "-"), getattr(args, key)]
    return words


def _check_out(args, points: int) -> None:
    from gradsync.scale.config import ScaleConfigError

    if args.out is not None:
        from gradsync.outputs import OutError, check_out_path

        try:
            check_out_path(args.out)
        except OutError as exc:
            raise ScaleConfigError(str(exc)) from None
    if not 0 <= args.trace_point < points:
        raise ScaleConfigError(
            f"--trace-point {args.trace_point} is not a point of this grid (0 to {points - 1})"
        )


def _simulate(points) -> list:
    from tqdm import tqdm

    from gradsync.scale.point import simulate_point

    bar = tqdm(
        points,
        desc="scale",
        unit="point",
        file=sys.stderr,
        disable=len(points) <= PROGRESS_MIN_POINTS,
    )
    return [simulate_point(p) for p in bar]


def write_outputs(out: Path, runs: list, trace_index: int, obj: dict) -> list[str]:
    """Write every output file into ``out``; the names written."""
    from gradsync.scale import report
    from gradsync.scale.point import simulate_point

    out.mkdir(parents=True, exist_ok=True)
    report.write_csv(out / "results.csv", [r.row for r in runs])
    (out / "results.json").write_text(json.dumps(obj, indent=1) + "\n")
    traced = simulate_point(runs[trace_index].point, trace=True)
    (out / "trace.json").write_text(json.dumps(report.trace_object(traced)) + "\n")
    written = ["results.csv", "results.json", "trace.json"]
    if report.plot_speedup(runs, out / "speedup_vs_bandwidth.png"):
        written.append("speedup_vs_bandwidth.png")
    if report.plot_chunk(runs, out / "step_vs_chunk.png"):
        written.append("step_vs_chunk.png")
    return written


def run(args) -> int:
    from gradsync.scale import report
    from gradsync.scale.config import ScaleConfigError
    from gradsync.scale.point import validate

    try:
        points = [validate(options) for options in grid(args)]
        _check_out(args, len(points))
        runs = _simulate(points)
    except ScaleConfigError as exc:
        print(f"gradsync scale: {exc}", file=sys.stderr)
        return 2
    report.add_speedups(runs)
    obj = report.results_object(runs, command(args))
    if args.json:
        print(json.dumps(obj, indent=1))
    else:
        print(report.format_table(runs))
    if args.out is not None:
        written = write_outputs(args.out, runs, args.trace_point, obj)
        print(
            f"wrote {', '.join(written)} in {args.out}",
            file=sys.stderr if args.json else sys.stdout,
        )
    return 0
