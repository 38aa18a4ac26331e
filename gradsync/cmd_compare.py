"""``gradsync compare``: the same training configuration under every schedule, side by side.

Prints mean cycles per step, mean layer-1-ready cycle and mean exposed
communication per schedule (and the final loss, which must not depend on the
schedule because the reductions are bit-identical).  ``gradsync train`` prints
the same rows, computed on the golden model, beside its own run
(:func:`schedule_rows`, :func:`gain_line`).
"""

from __future__ import annotations

import dataclasses
import sys

from gradsync.cmd_train import (
    OPTIONS,
    add_config_arguments,
    backend_for,
    config_from_args,
    plural,
    prepare_from_args,
)

DEFAULT_SCHEDULES = "sequential,fifo,priority"
DEFAULT_BACKEND = "model"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="run every schedule on one configuration and print a table "
        f"(default backend {DEFAULT_BACKEND}, unlike train)",
    )
    add_config_arguments(p, schedule=False, steps=5, backend=DEFAULT_BACKEND)
    p.add_argument(
        "--schedules",
        default=DEFAULT_SCHEDULES,
        help=f"comma-separated schedules, names or file.py:Class (default {DEFAULT_SCHEDULES})",
    )
    p.set_defaults(func=run)


def summary_row(name: str, res) -> dict:
    """The table row of one run (a ``RunResult``): means over its steps, in cycles."""
    n = len(res.steps)
    return {
        "schedule": name,
        "chunk_bytes": res.chunk_bytes,
        "cycles_per_step": sum(m.cycles for m in res.steps) / n,
        "layer1_ready_cycle": sum(m.layer1_ready_cycle for m in res.steps) / n,
        "exposed_comm_cycles": sum(m.exposed_comm_cycles for m in res.steps) / n,
        "final_loss": res.steps[-1].loss,
    }


def schedule_rows(cfg, backend, names: list[str]) -> list[dict]:
    """``cfg`` run under each schedule of ``names`` on ``backend``: one row each."""
    from gradsync.firmware import experiment

    rows = []
    for name in names:
        try:
            res = experiment.run(dataclasses.replace(cfg, schedule=name), backend)
        except RuntimeError as exc:
            raise ValueError(f"schedule {name}: {exc}") from None
        rows.append(summary_row(name, res))
    return rows


def compare(args) -> list[dict]:
    names = [name.strip() for name in args.schedules.split(",")]
    options = dict(OPTIONS, schedule=f"--schedules {args.schedules!r}: each schedule")
    for name in names:  # every schedule is checked (and loaded) before the first is run
        prepare_from_args(args, schedule=name, options=options)
    return schedule_rows(
        config_from_args(args, schedule=names[0]), backend_for(args.backend, args), names
    )


def format_table(rows: list[dict]) -> str:
    head = f"{'schedule':<12} {'cycles/step':>12} {'layer1-ready':>13} {'exposed comm':>13} {'final loss':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['schedule']:<12} {r['cycles_per_step']:>12.0f} {r['layer1_ready_cycle']:>13.0f} "
            f"{r['exposed_comm_cycles']:>13.0f} {r['final_loss']:>11.4f}"
        )
    return "\n".join(lines)


def gain_line(own: dict, other: dict) -> str:
    """What ``own``'s schedule saves over ``other``'s: cycles per step and layer-1-ready."""

    def saved(key: str) -> str:
        diff = other[key] - own[key]
        pct = 100.0 * diff / other[key] if other[key] else 0.0
        word = "fewer" if key == "cycles_per_step" else "earlier"
        if diff < 0:
            word = "more" if key == "cycles_per_step" else "later"
        return f"{abs(diff):.0f} ({abs(pct):.1f} %) {word}"

    return (
        f"{own['schedule']} vs {other['schedule']}: {saved('cycles_per_step')} cycles per step, "
        f"layer 1 ready {saved('layer1_ready_cycle')}"
    )


def run(args) -> int:
    try:
        rows = compare(args)
    except ValueError as exc:
        print(f"gradsync compare: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "hardware_note", None):
        print(args.hardware_note)
    print(
        f"{plural(args.nodes, 'node')}, chunk {rows[0]['chunk_bytes']} B, "
        f"{plural(args.steps, 'step')}, backend {args.backend}"
    )
    print(format_table(rows))
    return 0
