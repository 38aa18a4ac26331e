"""``gradsync compare``: the same training configuration under every schedule, side by side.

Prints mean cycles per step, mean layer-1-ready cycle and mean exposed
communication per schedule (and the final loss, which must not depend on the
schedule because the reductions are bit-identical).
"""

from __future__ import annotations

import sys

from gradsync.cmd_train import add_config_arguments, backend_for, config_from_args

DEFAULT_SCHEDULES = "sequential,fifo,priority"


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="run every schedule on one configuration and print a table")
    add_config_arguments(p, schedule=False, steps=5, backend="model")
    p.add_argument(
        "--schedules",
        default=DEFAULT_SCHEDULES,
        help=f"comma-separated schedules, names or file.py:Class (default {DEFAULT_SCHEDULES})",
    )
    p.set_defaults(func=run)


def compare(args) -> list[dict]:
    from gradsync.firmware import experiment

    rows = []
    backend = backend_for(args.backend, args)
    for name in args.schedules.split(","):
        cfg = config_from_args(args, schedule=name)
        try:
            res = experiment.run(cfg, backend)
        except RuntimeError as exc:
            raise ValueError(f"schedule {name}: {exc}") from None
        n = len(res.steps)
        rows.append(
            {
                "schedule": name,
                "chunk_bytes": res.chunk_bytes,
                "cycles_per_step": sum(m.cycles for m in res.steps) / n,
                "layer1_ready_cycle": sum(m.layer1_ready_cycle for m in res.steps) / n,
                "exposed_comm_cycles": sum(m.exposed_comm_cycles for m in res.steps) / n,
                "final_loss": res.steps[-1].loss,
            }
        )
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'schedule':<12} {'cycles/step':>12} {'layer1-ready':>13} {'exposed comm':>13} {'final loss':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['schedule']:<12} {r['cycles_per_step']:>12.0f} {r['layer1_ready_cycle']:>13.0f} "
            f"{r['exposed_comm_cycles']:>13.0f} {r['final_loss']:>11.4f}"
        )
    return "\n".join(lines)


def run(args) -> int:
    try:
        rows = compare(args)
    except ValueError as exc:
        print(f"gradsync compare: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.nodes} nodes, chunk {rows[0]['chunk_bytes']} B, {args.steps} steps, backend {args.backend}"
    )
    print(format_table(rows))
    return 0
