"""What ``gradsync scale`` prints and writes: table, results.csv/.json, Perfetto trace, plots.

Everything here reads :class:`~gradsync.scale.point.PointRun` objects and the
flat rows of :func:`gradsync.scale.point.columns`; the file formats are the
contract of ``docs/scale.md`` (and ``docs/outputs.md``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from gradsync import __version__
from gradsync.scale.point import DERIVED, OPTIONS, PointRun

FORMAT_VERSION = 1

#: Perfetto track order of the simulated node (others follow in order of appearance)
TRACK_ORDER = ("compute", "host", "dma.ring", "dma.inter", "dma.intra", "rx")


def _category(track: str) -> str:
    """Trace category of a track: ``compute``, ``host``, ``dma`` (sends) or ``link`` (rx)."""
    head = track.split(".")[0]
    return head if head in ("compute", "host", "dma") else "link"


def _other_options(point_dict: dict, drop: set[str]) -> str:
    """The options of a point except ``drop``, as a JSON key (for grouping points)."""
    return json.dumps({k: v for k, v in point_dict.items() if k not in drop}, sort_keys=True)


def add_speedups(runs: list[PointRun]) -> None:
    """Set ``speedup_vs_sequential`` in every row: step time of the ``sequential`` point with
    the same other options over this point's (None where the grid has no such point)."""
    sequential = {
        _other_options(r.point.to_dict(), {"schedule"}): r.row["step_seconds"]
        for r in runs
        if r.point.schedule == "sequential"
    }
    for r in runs:
        base = sequential.get(_other_options(r.point.to_dict(), {"schedule"}))
        r.row["speedup_vs_sequential"] = (
            base / r.row["step_seconds"] if base is not None and r.row["step_seconds"] > 0 else None
        )


def point_record(run: PointRun) -> dict:
    """One entry of ``results.json`` ``points``: the flat row, the options, per-layer and
    per-link detail."""
    hz = run.point.clock_hz
    layers = [
        {
            "layer": i + 1,
            "name": layer.name,
            "gradient_bytes": layer.grad_bytes,
            "exposed_comm_cycles": exposed,
            "exposed_comm_seconds": exposed / hz,
        }
        for i, (layer, exposed) in enumerate(
            zip(run.config.workload.layers, run.result.layer_exposed_cycles, strict=True)
        )
    ]
    return {
        **run.row,
        "config": run.point.to_dict(),
        "layers": layers,
        "link_utilisation": dict(run.result.link_utilisation),
    }


def results_object(runs: list[PointRun], command: list[str]) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "gradsync_version": __version__,
        "command": command,
        "points": [point_record(r) for r in runs],
    }


def write_csv(path: Path, rows: list[dict]) -> None:
    """``results.csv``: one line per point, the union of the rows' columns in first-seen order."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def varying_options(runs: list[PointRun], shown: set[str]) -> list[str]:
    """Options outside ``shown`` whose value differs between points (extra table columns)."""
    dicts = [r.point.to_dict() for r in runs]
    shown = set(shown) | set(DERIVED)
    return [k for k in OPTIONS if k not in shown and len({json.dumps(d[k]) for d in dicts}) > 1]


def _fixed_options(runs: list[PointRun], shown: set[str]) -> list[str]:
    """``--option value`` of every option outside ``shown`` set away from its default."""
    first = runs[0].point.to_dict()
    return [
        f"--{k.replace('_', '-')} {first[k]}"
        for k, opt in OPTIONS.items()
        if k not in shown and k not in DERIVED and first[k] != opt.default
    ]


def _chunk_text(row: dict) -> str:
    size = row["chunk_bytes"]
    text = f"{size // 1024}Ki" if size % 1024 == 0 else str(size)
    return text + ("*" if row["chunk_bytes_requested"] == "auto" else "")


_SHOWN = {"workload", "nodes", "link_gbps", "schedule", "chunk_bytes"}


def format_table(runs: list[PointRun]) -> str:
    """The table ``gradsync scale`` prints: times in ms (cycles / clock); ``*`` = auto chunk."""
    extra = varying_options(runs, _SHOWN)
    names = [Path(r.row["workload"]).name for r in runs]
    w = max(8, *(len(n) for n in names))
    head = (
        f"{'workload':<{w}} {'nodes':>6} {'Gb/s':>7} {'schedule':<12} {'chunk':>8} "
        f"{'step ms':>10} {'exposed ms':>10} {'L1-ready ms':>11} {'speed-up':>8}"
    )
    head += "".join(f" {k:>14}" for k in extra)
    lines = [head, "-" * len(head)]
    fixed = _fixed_options(runs, _SHOWN | set(extra))
    if fixed:
        lines.insert(0, "all points: " + ", ".join(fixed))
    for name, r in zip(names, runs, strict=True):
        row = r.row
        speedup = row.get("speedup_vs_sequential")
        line = (
            f"{name:<{w}} {row['nodes']:>6} {row['link_gbps']:>7g} "
            f"{row['schedule']:<12} {_chunk_text(row):>8} {row['step_seconds'] * 1e3:>10.3f} "
            f"{row['exposed_comm_seconds'] * 1e3:>10.3f} {row['layer1_ready_seconds'] * 1e3:>11.3f} "
            f"{'-' if speedup is None else f'{speedup:.2f}x':>8}"
        )
        line += "".join(f" {str(row[k]):>14}" for k in extra)
        lines.append(line)
    if any(r.row["chunk_bytes_requested"] == "auto" for r in runs):
        lines.append("* chunk chosen by --chunk-bytes auto")
    return "\n".join(lines)


def trace_object(run: PointRun) -> dict:
    """Chrome/Perfetto trace of the simulated node of ``run`` (a run with ``trace=True``).

    One track (integer ``tid``, named by a ``thread_name`` event) per ``Span.track``;
    ``ts``/``dur`` are microseconds of simulated time (cycles / clock) so that Perfetto
    shows true times; ``args.cycles`` keeps the start in cycles.
    """
    tracks = list(TRACK_ORDER) + sorted({s.track for s in run.result.spans} - set(TRACK_ORDER))
    used = [t for t in tracks if any(s.track == t for s in run.result.spans)]
    tid = {t: i + 1 for i, t in enumerate(used)}
    cycles_per_us = run.point.clock_ghz * 1e3
    events: list[dict] = [
        {"name": "process_name", "ph": "M", "pid": 0, "args": {"name": "node 0 and its links"}}
    ]
    for track, t in tid.items():
        events.append(
            {"name": "thread_name", "ph": "M", "pid": 0, "tid": t, "args": {"name": track}}
        )
        events.append(
            {"name": "thread_sort_index", "ph": "M", "pid": 0, "tid": t, "args": {"sort_index": t}}
        )
    for s in run.result.spans:
        events.append(
            {
                "name": s.name,
                "cat": _category(s.track),
                "ph": "X",
                "ts": s.start / cycles_per_us,
                "dur": (s.end - s.start) / cycles_per_us,
                "pid": 0,
                "tid": tid[s.track],
                "args": {"step": s.step, "layer": s.layer, "cycles": s.start},
            }
        )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {
            "time_unit": "us (simulated time: cycles / clock)",
            "clock_ghz": run.point.clock_ghz,
            "config": run.point.to_dict(),
            "chunk_bytes": run.result.chunk_bytes,
        },
    }


def _panels(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r["workload"] for r in rows))
    fig, axes = plt.subplots(
        1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False, layout="constrained"
    )
    return plt, fig, dict(zip(workloads, axes[0], strict=True))


_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P")


def _lines(runs: list[PointRun], along: str) -> dict[tuple[str, str, str], list[PointRun]]:
    """Points grouped into lines along option ``along``: (workload, schedule, label of the
    other options the grid varies) -> points."""
    varying = [k for k in varying_options(runs, {"workload", "schedule", along})]
    lines: dict[tuple[str, str, str], list[PointRun]] = {}
    for r in runs:
        d = r.point.to_dict()
        label = ", ".join(f"{k.replace('_', ' ')} {d[k]}" for k in varying)
        lines.setdefault((r.point.workload, r.point.schedule, label), []).append(r)
    return lines


def _draw(axes, lines, x, y) -> None:
    """One line per group: colour by schedule, line style and marker by the other options."""
    schedules = list(dict.fromkeys(key[1] for key in lines))
    others = list(dict.fromkeys(key[2] for key in lines))
    for (workload, schedule, other), line in lines.items():
        line.sort(key=x)
        i, j = schedules.index(schedule), others.index(other)
        axes[workload].plot(
            [x(r) for r in line],
            [y(r) for r in line],
            color=f"C{i % 10}",
            linestyle=_STYLES[j % len(_STYLES)],
            marker=_MARKERS[j % len(_MARKERS)],
            label=schedule + (f" ({other})" if other else ""),
        )


def _finish(fig, axes, path: Path) -> None:
    handles, labels = next(iter(axes.values())).get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    fig.savefig(path, dpi=120)


def plot_speedup(runs: list[PointRun], path: Path) -> bool:
    """Speed-up over ``sequential`` against link bandwidth, a line per schedule (and per value
    of any other option the grid varies), one panel per workload.  False: nothing to plot."""
    runs = [
        r
        for r in runs
        if r.row.get("speedup_vs_sequential") is not None and r.point.schedule != "sequential"
    ]
    if not runs:
        return False
    plt, fig, axes = _panels([r.row for r in runs])
    _draw(
        axes,
        _lines(runs, "link_gbps"),
        lambda r: r.point.link_gbps,
        lambda r: r.row["speedup_vs_sequential"],
    )
    bandwidths = sorted({r.point.link_gbps for r in runs})
    for workload, ax in axes.items():
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xscale("log")
        ax.set_xticks(bandwidths, [f"{b:g}" for b in bandwidths])
        ax.minorticks_off()
        ax.set_title(workload)
        ax.set_xlabel("link bandwidth (Gb/s)")
        ax.set_ylabel("speed-up over sequential (step time)")
    _finish(fig, axes, path)
    plt.close(fig)
    return True


def plot_chunk(runs: list[PointRun], path: Path) -> bool:
    """Step time against chunk size, one panel per workload, a line per schedule (and per
    value of any other option the grid varies); a star marks ``--chunk-bytes auto``.
    False: the grid asks for one chunk size (``p3`` slices sizing its own chunks do not count)."""
    if len({json.dumps(r.point.chunk_bytes) for r in runs}) < 2:
        return False
    plt, fig, axes = _panels([r.row for r in runs])
    _draw(
        axes,
        _lines(runs, "chunk_bytes"),
        lambda r: r.row["chunk_bytes"],
        lambda r: r.row["step_seconds"] * 1e3,
    )
    for r in runs:
        if r.point.chunk_bytes == "auto":
            axes[r.point.workload].plot(
                r.row["chunk_bytes"], r.row["step_seconds"] * 1e3, "k*", markersize=12
            )
    for workload, ax in axes.items():
        ax.set_xscale("log", base=2)
        ax.set_title(f"{workload} (star: --chunk-bytes auto)")
        ax.set_xlabel("chunk size (bytes)")
        ax.set_ylabel("step time (ms)")
    _finish(fig, axes, path)
    plt.close(fig)
    return True
