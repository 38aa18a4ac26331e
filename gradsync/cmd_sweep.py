"""``gradsync sweep``: run every point of a sweep file on Dask; ``gradsync sweep plot``: a figure.

``gradsync sweep SWEEP.toml --out DIR`` validates every point, skips the ones
``DIR/points/`` already holds, runs the rest on a local cluster, an existing
scheduler or a batch farm, and rebuilds ``DIR/results.csv``. The format of
the file and of the outputs is in ``docs/sweeps.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from gradsync.sweep.cluster import JOBQUEUE_CLASSES

PROG = "gradsync sweep"


class UsageError(ValueError):
    """Bad arguments: reported in one sentence, exit 2."""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="run the points of a sweep file on Dask (resumable); `sweep plot DIR` draws them",
        description=(
            "gradsync sweep SWEEP.toml --out DIR [--workers N | --scheduler ADDR | --jobqueue KIND]"
            "\ngradsync sweep plot DIR --x COL --y COL [--hue COL] [--col COL] [--out FILE]"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="SWEEP.toml|plot", help="a sweep file, or plot")
    p.add_argument("folder", nargs="?", metavar="DIR", help="plot: the sweep's output folder")
    p.add_argument(
        "--out", type=Path, help="sweep: the output folder (required); plot: the figure file"
    )
    run = p.add_argument_group("running a sweep")
    run.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    run.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="use a running Dask scheduler")
    run.add_argument(
        "--jobqueue",
        choices=tuple(JOBQUEUE_CLASSES),
        help="start workers as batch jobs (dask-jobqueue) with the file's [jobqueue] table",
    )
    run.add_argument(
        "--build-cache",
        type=Path,
        metavar="DIR",
        help="RTL points: the Verilator build cache (sets GRADSYNC_CACHE on every worker; "
        "a folder all farm hosts share)",
    )
    run.add_argument("--retry-failed", action="store_true", help="rerun the points that failed")
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: on a terminal)",
    )
    fig = p.add_argument_group("plot")
    fig.add_argument("--x", help="column on the x axis (e.g. chunk_bytes)")
    fig.add_argument("--y", help="numeric column on the y axis (e.g. cycles_per_step)")
    fig.add_argument("--hue", help="one line per value of this column (e.g. schedule)")
    fig.add_argument("--col", help="one panel per value of this column")
    p.set_defaults(func=run_command)


def run_command(args) -> int:
    try:
        if args.target == "plot":
            return _plot(args)
        return _sweep(args)
    except (UsageError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; finished points are kept, rerun to resume", file=sys.stderr)
        return 130


def _plot(args) -> int:
    from gradsync.sweep.plot import plot

    if args.folder is None:
        raise UsageError(
            "plot takes the sweep's output folder: gradsync sweep plot DIR --x COL ..."
        )
    for flag in ("workers", "scheduler", "jobqueue", "build_cache"):
        if getattr(args, flag) is not None:
            raise UsageError(f"--{flag.replace('_', '-')} is an option of a sweep run, not of plot")
    if not args.x or not args.y:
        raise UsageError("plot needs --x COL and --y COL")
    folder = Path(args.folder)
    csv_path = folder / "results.csv"
    if not csv_path.is_file():
        raise UsageError(f"{folder} holds no results.csv (not a sweep output folder)")
    out = args.out or folder / f"{args.y}_vs_{args.x}.png"
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"--out must end in .png, .svg or .pdf, not {str(out)!r}")
    path, n = plot(csv_path, args.x, args.y, args.hue, args.col, out)
    print(f"wrote {path} ({n} points)")
    return 0


def _check_run_args(args) -> None:
    if args.folder is not None:
        raise UsageError(f"give one sweep file, not {args.target!r} and {args.folder!r}")
    for flag in ("x", "y", "hue", "col"):
        if getattr(args, flag) is not None:
            raise UsageError(f"--{flag} is an option of `gradsync sweep plot`, not of a sweep run")
    if args.out is None:
        raise UsageError("--out DIR is required: the folder that keeps the points and results")
    from gradsync.outputs import check_out_path

    check_out_path(args.out)  # an OutError (a ValueError): one sentence, exit 2
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1, not {args.workers}")
    if args.scheduler is not None and args.jobqueue is not None:
        raise UsageError("--scheduler and --jobqueue exclude each other: give one")
    if args.scheduler is not None and args.workers is not None:
        raise UsageError("--workers sizes a cluster gradsync starts; with --scheduler it has none")


def _sweep(args) -> int:
    from gradsync.sweep import runner, store, sweepfile
    from gradsync.sweep.cluster import open_session

    _check_run_args(args)
    sweep = sweepfile.read(args.target)
    command, points = runner.prepare(sweep)
    env = {}
    if args.build_cache is not None:
        env["GRADSYNC_CACHE"] = str(args.build_cache.resolve())
        os.environ.update(env)
    t0 = time.perf_counter()
    summary = runner.Summary(total=len(points))
    todo = runner.pending(points, args.out, args.retry_failed, summary)
    if todo:
        session = open_session(
            workers=args.workers,
            scheduler=args.scheduler,
            jobqueue=args.jobqueue,
            table=sweep.jobqueue,
        )
        try:
            print(f"sweep: {len(todo)} of {len(points)} points to run on {session.where}")
            print(f"dashboard: {session.dashboard}", flush=True)
            runner.run_points(
                session.client, command, todo, args.out, summary, env=env, progress=args.progress
            )
        finally:
            session.close()
    summary.wall_seconds = time.perf_counter() - t0
    written = store.write_results(args.out, [p.key for p in points])
    if summary.interrupted:
        print(
            f"{PROG}: interrupted; {summary.done + summary.skipped} finished points kept in "
            f"{store.points_dir(args.out)}, rerun the same command to run the "
            f"{summary.unfinished} left",
            file=sys.stderr,
        )
        return 130
    print(f"sweep: {summary.line()}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 1 if summary.failed or summary.failed_before else 0
