"""``gradsync compare``: the same training configuration under every schedule, side by side.

Prints mean cycles per step, mean layer-1-ready cycle and mean exposed
communication per schedule (and the final loss, which must not depend on the
schedule because the reductions are bit-identical).  With ``--format bf16``,
``--grad-format fp32,bf16`` runs every schedule with each gradient exchange
format and adds what the bf16 exchange saves per schedule.  ``gradsync train`` prints
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


def summary_row(name: str, res, grad_format: str | None) -> dict:
    """The table row of one run (a ``RunResult``): means over its steps, in cycles."""
    n = len(res.steps)
    return {
        "schedule": name,
        "grad_format": grad_format,
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
        rows.append(summary_row(name, res, cfg.grad_format))
    return rows


def _split(text: str | None) -> list:
    return [None] if text is None else [part.strip() for part in text.split(",")]


def compare(args) -> list[dict]:
    names = _split(args.schedules)
    formats = _split(args.grad_format)
    options = dict(OPTIONS, schedule=f"--schedules {args.schedules!r}: each schedule")
    if len(formats) > 1:
        options["grad_format"] = f"--grad-format {args.grad_format!r}: each format"
    configs = []
    for grad_format in formats:  # every pair is checked (and loaded) before the first is run
        args.grad_format = grad_format
        for name in names:
            prepare_from_args(args, schedule=name, options=options)
        configs.append(config_from_args(args, schedule=names[0]))
    backend = backend_for(args.backend, args)
    return [row for cfg in configs for row in schedule_rows(cfg, backend, names)]


def format_table(rows: list[dict]) -> str:
    """The table; an ``exchange`` column when the rows have more than one gradient format."""
    several = len({r.get("grad_format") for r in rows}) > 1
    exchange = f"{'exchange':<9} " if several else ""
    head = (
        f"{'schedule':<12} {exchange}{'cycles/step':>12} {'layer1-ready':>13} "
        f"{'exposed comm':>13} {'final loss':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        exchange = f"{r['grad_format'] or 'fp32':<9} " if several else ""
        lines.append(
            f"{r['schedule']:<12} {exchange}{r['cycles_per_step']:>12.0f} "
            f"{r['layer1_ready_cycle']:>13.0f} {r['exposed_comm_cycles']:>13.0f} "
            f"{r['final_loss']:>11.4f}"
        )
    return "\n".join(lines)


def exchange_lines(rows: list[dict]) -> list[str]:
    """Per schedule, what each later gradient format saves over the first one given."""
    first = {}
    lines = []
    for r in rows:
        base = first.setdefault(r["schedule"], r)
        if base is not r:
            own = dict(r, schedule=f"{r['schedule']} {r['grad_format']} exchange")
            other = dict(base, schedule=f"{base['grad_format'] or 'fp32'}")
            lines.append(gain_line(own, other))
    return lines


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
    chunks = {r["grad_format"]: r["chunk_bytes"] for r in rows}
    several = len(set(chunks.values())) > 1
    chunk = ", ".join(
        f"{size} B" + (f" ({fmt} exchange)" if several else "")
        for fmt, size in (chunks.items() if several else list(chunks.items())[:1])
    )
    print(
        f"{plural(args.nodes, 'node')}, chunk {chunk}, "
        f"{plural(args.steps, 'step')}, backend {args.backend}"
    )
    print(format_table(rows))
    for line in exchange_lines(rows):
        print(line)
    return 0
