"""``gradsync sweep plot``: one figure from a sweep's ``results.csv`` (matplotlib, Agg).

A line per ``hue`` value of ``y`` against ``x``, one panel per ``col`` value.
Points that share ``x``, ``hue`` and ``col`` (another option varied too) are
averaged; the axis label says so. Failed points are left out.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_done(csv_path: Path) -> list[dict]:
    """The rows of the points that finished."""
    with open(csv_path, newline="") as f:
        return [row for row in csv.DictReader(f) if row.get("status") == "done"]


def _check_columns(rows: list[dict], csv_path: Path, **cols: str | None) -> None:
    have = list(rows[0]) if rows else []
    for option, name in cols.items():
        if name is not None and name not in have:
            raise ValueError(
                f"--{option} {name!r} is not a column of {csv_path} (columns: {', '.join(have)})"
            )


def _sort_key(value: str):
    n = _number(value)
    return (0, n, "") if n is not None else (1, 0.0, value)


def plot(
    csv_path: Path, x: str, y: str, hue: str | None, col: str | None, out: Path
) -> tuple[Path, int]:
    """Draw the figure into ``out`` (PNG, SVG or PDF by suffix); the file and the rows drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_done(csv_path)
    if not rows:
        raise ValueError(f"{csv_path} holds no finished point to plot")
    _check_columns(rows, csv_path, x=x, y=y, hue=hue, col=col)
    bad = [r[y] for r in rows if _number(r[y]) is None]
    if bad:
        raise ValueError(f"--y {y!r} must be a numeric column, but it holds {bad[0]!r}")
    numeric_x = all(_number(r[x]) is not None for r in rows)
    panels = sorted({r[col] for r in rows} if col else {""}, key=_sort_key)
    hues = sorted({r[hue] for r in rows} if hue else {""}, key=_sort_key)
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        groups[(r[col] if col else "", r[hue] if hue else "", r[x])].append(float(r[y]))
    averaged = any(len(v) > 1 for v in groups.values())
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels) + 1.0, 3.6), sharey=True, squeeze=False
    )
    for ax, panel in zip(axes[0], panels, strict=True):
        for h in hues:
            xs = sorted({k[2] for k in groups if k[0] == panel and k[1] == h}, key=_sort_key)
            if not xs:
                continue
            ys = [sum(groups[(panel, h, v)]) / len(groups[(panel, h, v)]) for v in xs]
            xv = [float(v) for v in xs] if numeric_x else xs
            ax.plot(xv, ys, marker="o", label=h if hue else None)
        if numeric_x:
            values = [float(r[x]) for r in rows]
            if min(values) > 0 and max(values) / min(values) >= 8:  # e.g. chunk sizes
                ax.set_xscale("log", base=2)
                ticks = sorted(set(values))
                if len(ticks) <= 12:
                    ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
                    ax.minorticks_off()
        ax.set_xlabel(x)
        if col:
            ax.set_title(f"{col} = {panel}")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel(f"{y} (mean)" if averaged else y)
    if hue:
        axes[0][-1].legend(title=hue, fontsize="small")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out, len(rows)
