"""``gradsync cache``: list, prune or clear the Verilator build cache.

``list`` prints one line per cached model (design, size, last use, build
time) and the total against the size limit; ``prune`` removes the least
recently used models beyond the limit (``--max-mb``, else
``$GRADSYNC_CACHE_MAX_MB``, else 2048 MB); ``clear`` removes everything.  The
cache is ``$GRADSYNC_CACHE/verilator`` (default ``~/.cache/gradsync/verilator``).
"""

from __future__ import annotations

import sys
import time


def add_parser(sub) -> None:
    p = sub.add_parser("cache", help="list, prune or clear the Verilator build cache")
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    lp = csub.add_parser("list", help="one line per cached model, most recently used first")
    lp.set_defaults(func=run_list)
    pp = csub.add_parser("prune", help="remove the least recently used models beyond the limit")
    pp.add_argument(
        "--max-mb",
        type=float,
        help="size limit in MB (default: $GRADSYNC_CACHE_MAX_MB, else 2048)",
    )
    pp.set_defaults(func=run_prune)
    cp = csub.add_parser("clear", help="remove every cached model (they are rebuilt when needed)")
    cp.set_defaults(func=run_clear)
    p.set_defaults(func=lambda args: _usage(p))


def _usage(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _ago(seconds: float) -> str:
    for unit, scale in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale:
            return f"{seconds / scale:.0f} {unit} ago"
    return "just now"


def _limit(args) -> int | None:
    from gradsync.sim import cache

    try:
        if getattr(args, "max_mb", None) is not None:
            if not args.max_mb > 0:
                raise ValueError(f"--max-mb must be a positive number of MB, not {args.max_mb:g}")
            return int(args.max_mb * 1024 * 1024)
        return cache.max_bytes()
    except ValueError as exc:
        print(f"gradsync cache: {exc}", file=sys.stderr)
        return None


def run_list(args) -> int:
    from gradsync.sim import cache
    from gradsync.sim.build import cache_root

    limit = _limit(args)
    if limit is None:
        return 2
    root = cache_root()
    found = cache.entries(root)
    now = time.time()
    print(f"{root}: {len(found)} model(s)")
    if found:
        width = max(len(e.path.name) for e in found)
        print(f"{'model':<{width}}  {'size':>9}  {'last used':>12}  build")
        for e in found:
            built = f"{e.build_seconds:.0f} s" if isinstance(e.build_seconds, int | float) else "?"
            print(
                f"{e.path.name:<{width}}  {cache.human(e.bytes):>9}  "
                f"{_ago(now - e.last_used):>12}  {built}"
            )
    total = sum(e.bytes for e in found)
    print(f"total {cache.human(total)} of a {cache.human(limit)} limit")
    return 0


def run_prune(args) -> int:
    from gradsync.sim import cache
    from gradsync.sim.build import cache_root

    limit = _limit(args)
    if limit is None:
        return 2
    evicted = cache.prune(cache_root(), limit)
    freed = sum(e.bytes for e in evicted)
    print(f"removed {len(evicted)} model(s), {cache.human(freed)}; limit {cache.human(limit)}")
    for e in evicted:
        print(f"  {e.path.name}")
    return 0


def run_clear(args) -> int:
    from gradsync.sim import cache
    from gradsync.sim.build import cache_root

    root = cache_root()
    freed = cache.clear(root)
    print(f"cleared {root} ({cache.human(freed)})")
    return 0
