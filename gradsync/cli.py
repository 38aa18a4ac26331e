"""The ``gradsync`` command line: one sub-command per module.

Each module listed in ``COMMANDS`` exposes ``add_parser(subparsers)``, which
registers its sub-command and sets ``func`` (taking the parsed namespace and
returning an exit code) as the parser default.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules, in the order ``--help`` lists them.
COMMANDS = [
    "gradsync.cmd_doctor",
    "gradsync.cmd_train",
    "gradsync.cmd_compare",
    "gradsync.cmd_workloads",
    "gradsync.cmd_scale",
    "gradsync.cmd_sweep",
    "gradsync.cmd_faults",
    "gradsync.cmd_cache",
    "gradsync.cmd_bench",
]


def build_parser() -> argparse.ArgumentParser:
    from gradsync import __version__

    parser = argparse.ArgumentParser(
        prog="gradsync",
        description=(
            "Cycle-level model of a training accelerator that overlaps gradient "
            "exchange with backward propagation: Amaranth RTL under Verilator, "
            "Python firmware and a golden NumPy model."
        ),
    )
    parser.add_argument("--version", action="version", version=f"gradsync {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, but arguments a sub-command does not know are refused with
    that sub-command's usage (argparse would print the top-level one)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        owner = sub.choices.get(getattr(args, "command", None), parser)
        owner.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's 128 + SIGINT
        print(f"gradsync {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. piped into `head`): not an error of the run
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
