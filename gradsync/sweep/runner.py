"""Fan a sweep's points out on Dask and record each one as soon as it finishes.

The client writes every point's file itself, as its future completes, so
points never depend on a file system shared with the workers, and whatever
stops the client (Ctrl-C, ``kill -9``) loses only the points still running.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gradsync.sweep import commands, store
from gradsync.sweep.sweepfile import SweepFile, SweepFileError


@dataclass(frozen=True)
class Point:
    """One validated point of a sweep."""

    index: int  #: 1-based position in the expanded sweep
    options: dict  #: the options the sweep file gives it
    config: Any  #: the command's validated configuration
    key: str  #: hash of the full configuration: the point file's name
    hash_input: dict
    build_key: str | None


def _label(options: dict, varying: set[str]) -> str:
    shown = {k: v for k, v in options.items() if k in varying} or options
    return ", ".join(f"{k}={v!r}" for k, v in shown.items())


def prepare(sweep: SweepFile) -> tuple[commands.Command, list[Point]]:
    """Expand and validate every point before anything runs (duplicates kept once).

    Raises :class:`SweepFileError` naming the first bad point, its options and the key.
    """
    try:
        command = commands.get(sweep.command)
    except ValueError as exc:
        raise SweepFileError(f"{sweep.path}: {exc}") from None
    expanded = sweep.points()
    if not expanded:
        raise SweepFileError(f"{sweep.path}: the sweep has no points (where = {sweep.where!r})")
    varying = set(sweep.grid) | set(sweep.zip)
    points: dict[str, Point] = {}
    for i, options in enumerate(expanded, 1):
        try:
            config = command.validate(options)
        except ValueError as exc:
            raise SweepFileError(
                f"{sweep.path}: point {i} of {len(expanded)} ({_label(options, varying)}): {exc}"
            ) from None
        hin = command.hash_input(config)
        key = store.point_hash(command.name, hin)
        if key not in points:
            points[key] = Point(i, options, config, key, hin, command.build_key(config))
    return command, list(points.values())


@contextlib.contextmanager
def _sigint_sets(stop: threading.Event):
    """Ctrl-C sets ``stop`` as well as raising ``KeyboardInterrupt``: should a library catch
    the exception in the middle of a call, the loop still stops at the next finished point."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        stop.set()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def execute(run: Callable[[Any], dict], config, env: dict[str, str], *after) -> dict:
    """Worker side: run one point; an exception becomes a ``failed`` record with its traceback.

    ``after``: futures of the builds this point needs (Dask runs the point once they are done).
    """
    os.environ.update(env)
    t0 = time.perf_counter()
    record: dict = {"worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        record.update(status="done", result=run(config))
    except Exception as exc:
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        record["traceback"] = traceback.format_exc()
    record["wall_seconds"] = time.perf_counter() - t0
    return record


def execute_build(build: Callable[[Any], Any], config, env: dict[str, str]):
    """Worker side: build the model ``config`` needs (once per distinct build key)."""
    os.environ.update(env)
    return build(config)


@dataclass
class Summary:
    total: int
    skipped: int = 0  #: finished before this run
    done: int = 0
    failed: int = 0  #: failed in this run
    failed_before: int = 0  #: recorded failed earlier and not retried
    unfinished: int = 0
    wall_seconds: float = 0.0
    interrupted: bool = False
    results: list[Path] = field(default_factory=list)

    def line(self) -> str:
        rate = 60.0 * (self.done + self.failed) / self.wall_seconds if self.wall_seconds else 0.0
        parts = [f"{self.done} done", f"{self.skipped} skipped (finished before)"]
        parts.append(f"{self.failed} failed")
        if self.failed_before:
            parts.append(f"{self.failed_before} failed before (rerun with --retry-failed)")
        if self.unfinished:
            parts.append(f"{self.unfinished} unfinished")
        return (
            f"{self.total} points: {', '.join(parts)}; "
            f"{self.wall_seconds:.1f} s, {rate:.1f} points/min"
        )


def _failure(fut) -> dict:
    from distributed import KilledWorker

    exc = fut.exception()
    if isinstance(exc, KilledWorker):
        error = f"the worker running this point was lost twice ({exc})"
    else:
        error = f"{type(exc).__name__}: {exc}"
    tb = "".join(traceback.format_exception(type(exc), exc, fut.traceback()))
    return {"status": "failed", "error": error, "traceback": tb}


def _record(command: str, point: Point, outcome: dict) -> dict:
    return {
        "command": command,
        "options": point.options,
        "config": point.hash_input,
        **outcome,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def pending(points: list[Point], out: Path, retry_failed: bool, summary: Summary) -> list[Point]:
    """The points still to run; counts the finished ones into ``summary``."""
    todo = []
    for p in points:
        rec = store.read_point(out, p.key)
        if rec is None or (rec.get("status") != "done" and retry_failed):
            todo.append(p)
        elif rec.get("status") == "done":
            summary.skipped += 1
        else:
            summary.failed_before += 1
    return todo


def _submit(client, command: commands.Command, todo: list[Point], env: dict) -> dict:
    builds = {}
    for p in todo:
        if p.build_key is not None and p.build_key not in builds:
            tag = hashlib.sha256(p.build_key.encode()).hexdigest()[:12]
            builds[p.build_key] = client.submit(
                execute_build, command.build, p.config, env, key=f"build-{tag}", pure=False
            )
    futures = {}
    for p in todo:
        after = [builds[p.build_key]] if p.build_key is not None else []
        fut = client.submit(
            execute, command.run, p.config, env, *after, key=f"point-{p.key}", pure=False
        )
        futures[fut] = p
    return futures


def run_points(
    client,
    command: commands.Command,
    todo: list[Point],
    out: Path,
    summary: Summary,
    *,
    env: dict | None = None,
    progress: bool | None = None,
) -> None:
    """Run ``todo`` on ``client``, writing each point's file as it finishes.

    Ctrl-C (``KeyboardInterrupt``) cancels the rest and returns with
    ``summary.interrupted`` set; the points already written stay.
    """
    from distributed import as_completed
    from tqdm import tqdm

    futures = _submit(client, command, todo, env or {})
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(total=len(todo), unit="point", file=sys.stderr, disable=not show, dynamic_ncols=True)
    stop = threading.Event()
    try:
        with _sigint_sets(stop):
            for fut in as_completed(futures):
                p = futures.pop(fut)
                if fut.status == "cancelled":
                    continue
                outcome = fut.result() if fut.status == "finished" else _failure(fut)
                store.write_point(out, p.key, _record(command.name, p, outcome))
                if outcome["status"] == "done":
                    summary.done += 1
                else:
                    summary.failed += 1
                    bar.write(f"point {p.index} failed: {outcome['error'].splitlines()[0]}")
                bar.update(1)
                if stop.is_set():  # a library swallowed the KeyboardInterrupt: stop anyway
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        summary.interrupted = True
        client.cancel(list(futures))
    finally:
        bar.close()
        summary.unfinished = len(futures)
