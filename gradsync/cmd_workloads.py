"""``gradsync workloads``: list the built-in workloads, or show one (or a file) layer by layer.

``list`` prints each built-in's layers, parameters, gradient megabytes and the
compute cycles of one step's forward, input-gradient and weight-gradient
passes; ``show NAME|FILE`` prints every layer (``--json``: the document of
``docs/workloads.md``).  Bad input is one sentence on stderr and exit 2.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import replace

from gradsync.spec.hardware import DEFAULT_HARDWARE, HardwareConfig


def add_parser(sub) -> None:
    p = sub.add_parser("workloads", help="list the built-in workloads or show one layer by layer")
    wsub = p.add_subparsers(dest="workloads_command", metavar="ACTION")
    lp = wsub.add_parser("list", help="one line per built-in workload, with its totals")
    _add_options(lp)
    lp.set_defaults(func=run_list)
    sp = wsub.add_parser("show", help="every layer of a built-in workload or a workload file")
    sp.add_argument("workload", metavar="NAME|FILE", help="a built-in name, or a .txt/.csv file")
    sp.add_argument("--json", action="store_true", help="print the JSON document instead")
    sp.add_argument("--batch", type=int, help="per-node batch (default: the workload's)")
    sp.add_argument("--seq-len", type=int, help="sequence length (bert-base, gpt2)")
    _add_options(sp)
    sp.set_defaults(func=run_show)
    p.set_defaults(func=lambda args: _usage(p))


def _add_options(p) -> None:
    p.add_argument(
        "--array",
        metavar="RxC",
        help="systolic array rows x columns (vector lanes = columns); default 128x128, "
        "the MLP's the default hardware preset",
    )
    p.add_argument(
        "--element-bytes", type=int, choices=(2, 4), default=2, help="gradient element bytes"
    )


def _usage(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def parse_array(text: str | None, name: str) -> HardwareConfig | None:
    """The hardware of ``--array RxC`` for workload ``name`` (None: the workload's default)."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m or min(int(m[1]), int(m[2])) < 1:
        raise ValueError(
            f"--array must be ROWSxCOLS of positive whole numbers (128x128), not {text!r}"
        )
    rows, cols = int(m[1]), int(m[2])
    base = DEFAULT_HARDWARE if name == "mlp" else HardwareConfig()
    return replace(base, array_rows=rows, array_cols=cols, vector_lanes=cols)


def load_workload(args):
    """The workload the options name; ValueError with one sentence for bad input."""
    from gradsync import workloads as wl

    name = args.workload
    batch, seq_len = getattr(args, "batch", None), getattr(args, "seq_len", None)
    if batch is not None and batch < 1:
        raise ValueError(f"--batch must be a positive whole number, not {batch}")
    if name not in wl.BUILTIN_NAMES:
        given = [
            opt
            for opt, v in (("--batch", batch), ("--seq-len", seq_len), ("--array", args.array))
            if v is not None
        ]
        if given:
            raise ValueError(
                f"{given[0]} does not apply to the workload file {name!r}: its cycles are given"
            )
        return wl.get(name, element_bytes=args.element_bytes)
    hw = parse_array(args.array, name)
    return wl.builtin(
        name, batch=batch, hardware=hw, element_bytes=args.element_bytes, seq_len=seq_len
    )


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.2f}"


def format_list(loads) -> str:
    head = (
        f"{'workload':<10} {'layers':>6} {'params':>12} {'grad MB':>9} "
        f"{'fwd cycles':>12} {'ig cycles':>12} {'wg cycles':>12}  array, batch"
    )
    lines = [head, "-" * len(head)]
    for w in loads:
        t, hw = w.totals, w.hardware
        lines.append(
            f"{w.name:<10} {t['layers']:>6} {t['params']:>12,} {_mb(t['grad_bytes']):>9} "
            f"{t['fwd_cycles']:>12,} {t['ig_cycles']:>12,} {t['wg_cycles']:>12,}  "
            f"{hw.array_rows}x{hw.array_cols}, {w.batch}"
        )
    return "\n".join(lines)


def _gemms(layer) -> str:
    if not layer.fwd_gemms:
        return "-"
    text = str(layer.fwd_gemms[0])
    return text if len(layer.fwd_gemms) == 1 else f"{text} +{len(layer.fwd_gemms) - 1}"


def format_show(w) -> str:
    hw = w.hardware
    where = "cycles as given" if hw is None else f"{hw.array_rows}x{hw.array_cols} array"
    lines = [
        f"{w.name} ({w.source}): batch {w.batch or 'not given'}, {w.element_bytes}-byte gradients, {where}; "
        f"host loads {w.input_bytes:,} B, dumps {w.output_bytes:,} B per step",
    ]
    width = max(len("layer"), *(len(x.name) for x in w.layers))
    head = (
        f"{'layer':<{width}} {'kind':<9} {'fwd GEMM MxKxN':<22} {'params':>11} {'grad B':>11} "
        f"{'fwd':>11} {'ig':>11} {'wg':>11} {'update':>8}"
    )
    lines += [head, "-" * len(head)]
    for x in w.layers:
        lines.append(
            f"{x.name:<{width}} {x.kind:<9} {_gemms(x):<22} {x.params:>11,} {x.grad_bytes:>11,} "
            f"{x.fwd_cycles:>11,} {x.ig_cycles:>11,} {x.wg_cycles:>11,} {x.update_cycles:>8,}"
        )
    t = w.totals
    lines += [
        "-" * len(head),
        f"{'total':<{width}} {t['layers']:<9} {'':<22} {t['params']:>11,} {t['grad_bytes']:>11,} "
        f"{t['fwd_cycles']:>11,} {t['ig_cycles']:>11,} {t['wg_cycles']:>11,} "
        f"{t['update_cycles']:>8,}",
    ]
    return "\n".join(lines)


def run_list(args) -> int:
    from gradsync import workloads as wl

    try:
        loads = []
        for name in wl.BUILTIN_NAMES:
            hw = parse_array(args.array, name)
            loads.append(wl.builtin(name, hardware=hw, element_bytes=args.element_bytes))
    except ValueError as exc:
        print(f"gradsync workloads: {exc}", file=sys.stderr)
        return 2
    print(format_list(loads))
    return 0


def run_show(args) -> int:
    try:
        w = load_workload(args)
    except ValueError as exc:  # WorkloadError is a ValueError
        print(f"gradsync workloads: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(w.to_dict(), indent=1) if args.json else format_show(w))
    return 0
