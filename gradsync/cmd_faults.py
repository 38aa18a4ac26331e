"""``gradsync faults``: a fault campaign -- N seeds x rates x kinds of link faults on one
training configuration, each run against the fault-free run of the same configuration.

The runs are points of the sweep engine (:mod:`gradsync.sweep`, command
``faults``: :mod:`gradsync.faults_campaign`), so they run on Dask (a local
cluster, or ``--scheduler``), are kept one file each under ``OUT/points/`` and
a campaign stopped half way resumes (``--resume``). The fault-free reference
runs first (once); then every faulted run. Prints a table per kind and rate,
writes ``results.json``, ``runs.csv``, ``table.txt`` and ``table.md``
(``docs/faults.md``) and exits 1 if any run's weights differ from the
reference's, a run did not finish, or (``--backend rtl``) a run is not
cycle-exact to the golden model.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gradsync import faults_campaign as fc

PROG = "gradsync faults"
#: What a campaign's --out may hold.
OUT_ENTRIES = {"results.json", "runs.csv", "table.txt", "table.md", "points"}
QUICK_SEEDS = 2  #: --quick: seeds, and each kind's middle default rate
SHOW_FAILING = 10  #: failing runs listed on stdout (all are in the record)


def add_parser(sub) -> None:
    from gradsync.cmd_train import add_config_arguments

    p = sub.add_parser(
        "faults",
        help="fault campaign: seeds x rates x kinds of link faults, each run against the "
        "fault-free run (weights bit for bit, cycles, counters)",
        description="Run one training configuration under many link-fault settings and "
        "compare every run with the fault-free run (docs/faults.md).",
    )
    add_config_arguments(p, steps=2, backend="model")
    c = p.add_argument_group("campaign")
    kinds = ", ".join(f"{k.name} ({k.unit})" for k in fc.KINDS.values())
    c.add_argument("--kinds", help=f"comma-separated fault kinds (default all: {kinds})")
    c.add_argument(
        "--rates",
        help="comma-separated rates for every kind, in each kind's unit (default: each "
        "kind's own, e.g. drop 600,2000,6000,12000; down-at: outage lengths in cycles)",
    )
    c.add_argument("--seeds", type=int, help="fault seeds 1..N per kind and rate (default 50)")
    c.add_argument(
        "--quick",
        action="store_true",
        help=f"a small campaign for CI: {QUICK_SEEDS} seeds and one rate per kind "
        "(--seeds/--rates still override)",
    )
    c.add_argument(
        "--watchdog-cycles",
        type=int,
        help="model backend: stop a run making no progress after N cycles (default: the "
        "configuration's bound, as gradsync train)",
    )
    c.add_argument(
        "--workers",
        type=int,
        help="local Dask worker processes (default: one per core; 0: in this process)",
    )
    c.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="use a running Dask scheduler")
    c.add_argument(
        "--out",
        type=Path,
        help="write results.json, runs.csv, table.txt, table.md and the runs' points/ here "
        "(default: a temporary folder, removed at the end)",
    )
    c.add_argument("--overwrite", action="store_true", help="replace a previous campaign in --out")
    c.add_argument(
        "--resume",
        action="store_true",
        help="continue the campaign in --out: runs already finished there are not rerun",
    )
    c.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: on a terminal)",
    )
    p.set_defaults(func=run)


# ---------------------------------------------------------------- arguments


def _kinds(text: str | None) -> list[fc.Kind]:
    if text is None:
        return list(fc.KINDS.values())
    names = [t.strip() for t in text.split(",")]
    for name in names:
        if name not in fc.KINDS:
            raise ValueError(f"--kinds takes {', '.join(fc.KINDS)}, not {name!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"--kinds names a kind twice: {text!r}")
    return [fc.KINDS[n] for n in names]


def _rates(text: str | None, kinds: list[fc.Kind], quick: bool) -> dict[str, tuple[int, ...]]:
    if text is None:
        return {k.name: k.rates[len(k.rates) // 2 : len(k.rates) // 2 + 1] if quick else k.rates
                for k in kinds}  # fmt: skip
    rates = []
    for item in text.split(","):
        try:
            rates.append(int(item))
        except ValueError:
            raise ValueError(f"--rates takes comma-separated integers, not {item!r}") from None
    for r in rates:
        for k in kinds:
            if not 1 <= r <= k.max_rate:
                raise ValueError(
                    f"--rates {r} is outside 1..{k.max_rate}, the {k.name} rates ({k.unit})"
                )
    if len(set(rates)) != len(rates):
        raise ValueError(f"--rates names a rate twice: {text!r}")
    return {k.name: tuple(rates) for k in kinds}


def _seeds(args) -> list[int]:
    n = args.seeds if args.seeds is not None else (QUICK_SEEDS if args.quick else 50)
    top = 0xFFFF_FFFF - args.nodes - 1  # a link's seed is seed + link (gradsync.spec.faults)
    if not 1 <= n <= top:
        raise ValueError(f"--seeds must be in 1..{top}, not {n}")
    return list(range(1, n + 1))


def _check_runner(args) -> None:
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers must be 0 (this process) or more, not {args.workers}")
    if args.scheduler is not None and args.workers is not None:
        raise ValueError("--workers sizes a cluster gradsync starts; with --scheduler it has none")
    if args.watchdog_cycles is not None:
        if args.watchdog_cycles < 1:
            raise ValueError(f"--watchdog-cycles must be at least 1, not {args.watchdog_cycles}")
        if args.backend == "rtl":
            raise ValueError("--watchdog-cycles is a model-backend option, not for --backend rtl")
    if args.overwrite and args.resume:
        raise ValueError("--overwrite and --resume exclude each other: give one")
    if args.out is None and (args.overwrite or args.resume):
        raise ValueError("--overwrite and --resume need --out DIR")


def train_options(args) -> dict:
    """The ``gradsync train`` options of the campaign (sweep point options): those that
    differ from train's defaults, and always ``backend`` and ``steps``."""
    from gradsync.cmd_train import add_config_arguments
    from gradsync.sweep import train_point

    parser = argparse.ArgumentParser(add_help=False)
    add_config_arguments(parser)  # train's own defaults
    out = {}
    for dest in train_point.option_names():
        value = getattr(args, dest)
        if dest in ("backend", "steps") or value != parser.get_default(dest):
            if isinstance(value, tuple):
                value = list(value)
            out[dest] = "auto" if dest == "chunk_bytes" and value is None else value
    return out


def train_command(options: dict, spec: str | None, rtl: bool) -> str:
    """The ``gradsync train`` line that repeats one run (``--check`` on the RTL)."""
    from gradsync.sweep import train_point

    flags = train_point.option_names()
    words = ["gradsync", "train"]
    for dest, value in options.items():
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        words += [flags[dest], text]
    if spec:
        words += ["--link-faults", spec]
    if rtl:
        words.append("--check")
    return " ".join(shlex.quote(w) for w in words)


def check_arguments(args) -> tuple[dict, dict]:
    """Every check before anything runs; ``ValueError`` names the option and the value.
    Returns (train options, campaign plan)."""
    from gradsync.cmd_train import prepare_from_args

    kinds = _kinds(args.kinds)
    rates = _rates(args.rates, kinds, args.quick)
    seeds = _seeds(args)
    _check_runner(args)
    cfg, _ = prepare_from_args(args)  # the train checks: limits, memory plan, data, schedule
    if args.backend == "rtl" and cfg.nodes < 2:
        raise ValueError(f"--nodes must be at least 2 on --backend rtl, not {cfg.nodes}")
    options = train_options(args)
    fc.validate(_reference_options(options, args))
    if args.out is not None:
        check_out(args.out, args.overwrite, args.resume)
    plan = {"kinds": [k.name for k in kinds], "rates": rates, "seeds": seeds}
    return options, plan


# ---------------------------------------------------------------- the output folder


def check_out(out: Path, overwrite: bool, resume: bool) -> None:
    """A campaign's ``--out``: new, empty, or a previous campaign (``--overwrite`` replaces
    it, ``--resume`` continues it); anything else refused, naming ``--out`` and the value."""
    from gradsync.outputs import check_out_path

    check_out_path(out, replaced=True)
    if not os.path.isdir(out) or not os.listdir(out):
        if resume:
            raise ValueError(f"--resume: --out {str(out)!r} holds no campaign to continue")
        return
    for d, dirs, files in os.walk(out):
        for n in dirs + files:
            if os.path.islink(os.path.join(d, n)):
                rel = os.path.relpath(os.path.join(d, n), out)
                raise ValueError(f"--out {str(out)!r} holds a symbolic link ({rel}); remove it")
    foreign = sorted(set(os.listdir(out)) - OUT_ENTRIES)
    if foreign:
        raise ValueError(
            f"--out {str(out)!r} holds files that are not a fault campaign's "
            f"({', '.join(foreign[:3])}); choose an empty or new folder"
        )
    if not (overwrite or resume):
        raise ValueError(
            f"--out {str(out)!r} holds a previous campaign; add --resume to continue it or "
            "--overwrite to replace it"
        )


def _clear(out: Path) -> None:
    for name in OUT_ENTRIES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------- running


def _reference_options(options: dict, args) -> dict:
    out = dict(options)
    if args.watchdog_cycles is not None:
        out["watchdog_cycles"] = args.watchdog_cycles
    return out


def _faulted_options(options: dict, args, plan: dict, reference_cycles: int) -> list[dict]:
    base = _reference_options(options, args)
    out = []
    for name in plan["kinds"]:
        kind = fc.KINDS[name]
        for rate in plan["rates"][name]:
            for seed in plan["seeds"]:
                spec = kind.spec(rate, seed, reference_cycles)
                out.append({**base, "kind": name, "rate": rate, "fault_seed": seed,
                            "link_faults": spec})  # fmt: skip
    return out


def _points(command, options_list: list[dict]):
    from gradsync.sweep import store
    from gradsync.sweep.runner import Point

    points = []
    for i, options in enumerate(options_list, 1):
        config = command.validate(options)
        hin = command.hash_input(config)
        key = store.point_hash(command.name, hin)
        points.append(Point(i, options, config, key, hin, command.build_key(config)))
    return points


def _session(args):
    from gradsync.sweep.cluster import Session, open_session

    if args.workers == 0:
        from distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        return Session(Client(cluster), cluster, "this process")
    return open_session(workers=args.workers, scheduler=args.scheduler)


def _run(session, command, points, out: Path, args, summary) -> list[dict]:
    """Run the points not yet finished in ``out``; the rows of all that finished."""
    from gradsync.sweep import runner, store

    todo = runner.pending(points, out, retry_failed=True, summary=summary)
    if todo and not summary.interrupted:
        runner.run_points(session.client, command, todo, out, summary, progress=args.progress)
    rows = []
    for p in points:
        rec = store.read_point(out, p.key)
        if rec is None:
            continue
        if rec["status"] == "done":
            rows.append(rec["result"])
        else:  # the point itself raised (a bug, a lost worker): a run that did not finish
            o = p.options
            rows.append({"kind": o.get("kind", "none"), "rate": o.get("rate", 0),
                         "fault_seed": o.get("fault_seed", 0), "link_faults": o.get("link_faults", ""),
                         "finished": False, "reason": f"point failed: {rec.get('error')}"})  # fmt: skip
    return rows


def campaign(args, options: dict, plan: dict, out: Path) -> tuple[dict, list[dict], object]:
    """Run the reference, then the faulted runs; (reference row, judged rows, summary)."""
    from gradsync.sweep import commands, runner

    command = commands.get("faults")
    summary = runner.Summary(total=1)  # the reference's, then the faulted runs'
    session = _session(args)
    try:
        print(f"{PROG}: on {session.where}", file=sys.stderr, flush=True)
        ref_points = _points(command, [_reference_options(options, args)])
        ref = _run(session, command, ref_points, out, args, summary)
        if not ref or not ref[0].get("finished"):
            return (ref[0] if ref else {}), [], summary
        faulted = _points(command, _faulted_options(options, args, plan, ref[0]["cycles"]))
        summary = runner.Summary(total=len(faulted), interrupted=summary.interrupted)
        print(
            f"{PROG}: {len(faulted)} runs ({len(plan['kinds'])} kinds, "
            f"{len(plan['seeds'])} seeds per rate) against the fault-free run of "
            f"{ref[0]['cycles']} cycles",
            file=sys.stderr,
            flush=True,
        )
        rows = _run(session, command, faulted, out, args, summary)
    finally:
        session.close()
    rtl = options["backend"] == "rtl"
    judged = []
    for r in rows:
        row = fc.judge(r, ref[0])
        row["command"] = train_command(options, r.get("link_faults"), rtl)
        judged.append(row)
    return ref[0], judged, summary


# ---------------------------------------------------------------- the report

COLUMNS = [("kind", "kind"), ("rate", "rate"), ("runs", "runs"), ("packets", "packets"),
           ("faults", "faults"), ("resent", "resent"), ("naks", "NAKs"),
           ("timeouts", "timeouts"), ("duplicates", "dups"), ("crc_errors", "CRC err"),
           ("seq_errors", "seq err"), ("overhead_mean", "overhead mean"),
           ("overhead_max", "overhead max"), ("weights_differ", "weights differ"),
           ("not_finished", "not finished"), ("not_cycle_exact", "not exact")]  # fmt: skip


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key.startswith("overhead"):
        return f"{100 * value:+.1f}%"
    return str(value)


def _grid(lines: list[dict]) -> tuple[list[str], list[list[str]]]:
    cols = [(k, h) for k, h in COLUMNS if any(k in line for line in lines)]
    return [h for _, h in cols], [[_cell(k, line.get(k)) for k, _ in cols] for line in lines]


def format_text(lines: list[dict]) -> str:
    head, body = _grid(lines)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < 1 else c.rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths, strict=True)))  # fmt: skip
    return "\n".join(fmt(r).rstrip() for r in [head, *body]) + "\n"


def format_markdown(lines: list[dict]) -> str:
    head, body = _grid(lines)
    rule = ["---"] + ["---:"] * (len(head) - 1)
    return "\n".join("| " + " | ".join(r) + " |" for r in [head, rule, *body]) + "\n"


def _csv(rows: list[dict]) -> str:
    columns: dict[str, None] = {}
    for r in rows:
        columns.update(dict.fromkeys(r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _totals(lines: list[dict], rows: list[dict]) -> dict:
    total = {k: sum(line[k] for line in lines) for k in lines[0] if k not in ("kind", "rate")
             and not k.startswith("overhead")} if lines else {"runs": 0}  # fmt: skip
    over = [r["overhead"] for r in rows if r.get("overhead") is not None]
    total.update(kind="all", rate=None, overhead_mean=sum(over) / len(over) if over else None,
                 overhead_max=max(over) if over else None)  # fmt: skip
    return total


def write_record(out: Path, record: dict, rows: list[dict], text: str, md: str) -> None:
    _write(out / "results.json", json.dumps(record, indent=1, default=str) + "\n")
    _write(out / "runs.csv", _csv(rows))
    _write(out / "table.txt", text)
    _write(out / "table.md", md)


def _record(args, options, plan, ref, rows, lines, summary, status) -> dict:
    from gradsync import __version__

    cfg = fc.validate(options).train.config
    return {
        "format_version": 1,
        "gradsync_version": __version__,
        "command": "faults",
        "status": status,
        "backend": options["backend"],
        "config": {
            **cfg.to_dict(),
            "max_cycles": args.max_cycles,
            "watchdog_cycles": args.watchdog_cycles,
        },
        "campaign": {
            **plan,
            "units": {k: fc.KINDS[k].unit for k in plan["kinds"]},
            "templates": {k: fc.KINDS[k].template for k in plan["kinds"]},
        },
        "reference": {**ref, "command": train_command(options, None, options["backend"] == "rtl")},
        "table": lines,
        "totals": {
            **(_totals(lines, rows) if lines else {"runs": 0}),
            "wall_seconds": round(summary.wall_seconds, 3),
            "runs_run": summary.done + summary.failed,
            "runs_resumed": summary.skipped,
            "runs_planned": sum(len(plan["rates"][k]) for k in plan["kinds"]) * len(plan["seeds"]),
        },
        "ok": bool(ref.get("finished"))
        and ref.get("cycle_exact") is not False
        and all(r["ok"] for r in rows)
        and status == "complete",
        "runs": rows,
    }


def _report(record: dict, rows: list[dict], text: str) -> None:
    ref = record["reference"]
    print(f"fault-free reference: {ref.get('cycles')} cycles; {ref['command']}")
    if ref.get("cycle_exact") is False:
        print(f"FAILED the fault-free reference is not cycle-exact: {ref.get('check')}")
    print(text, end="")
    bad = [r for r in rows if not r["ok"]]
    for r in bad[:SHOW_FAILING]:
        why = r.get("reason") or (
            f"weights differ from the fault-free run's from step {r['first_differing_step']}"
            + ("" if r.get("nodes_agree") else " (and the nodes' weights differ)")
            if r.get("weights_equal") is False
            else f"not cycle-exact: {r.get('check')}"
        )
        print(f"FAILED {r['kind']} rate {r['rate']} seed {r['fault_seed']}: {why[:300]}")
        print(f"  {r['command']}")
    if len(bad) > SHOW_FAILING:
        print(f"... {len(bad) - SHOW_FAILING} more failing runs in the record")
    t = record["totals"]
    print(
        f"{PROG}: {len(rows)} of {t['runs_planned']} runs, {len(bad)} failing "
        f"({t.get('weights_differ', 0)} weights "
        f"differ, {t.get('not_finished', 0)} not finished"
        + (f", {t.get('not_cycle_exact', 0)} not cycle-exact" if "not_cycle_exact" in t else "")
        + f"); {t['wall_seconds']:.1f} s"
    )


def run(args) -> int:
    from gradsync.outputs import OutLock

    try:
        options, plan = check_arguments(args)
        lock = OutLock(args.out) if args.out is not None else None
        if lock is not None:
            lock.acquire()
    except ValueError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="gradsync-faults-"))
    try:
        if args.overwrite:
            _clear(out)
        out.mkdir(parents=True, exist_ok=True)
        return _campaign_and_report(args, options, plan, out)
    finally:
        if lock is not None:
            lock.release()
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


def _campaign_and_report(args, options, plan, out: Path) -> int:
    t0 = time.perf_counter()
    ref, rows, summary = campaign(args, options, plan, out)
    summary.wall_seconds = time.perf_counter() - t0
    status = "interrupted" if summary.interrupted else "complete"
    lines = fc.table(rows)
    shown = lines + [_totals(lines, rows)] if lines else []
    text, md = format_text(shown) if shown else "", format_markdown(shown) if shown else ""
    record = _record(args, options, plan, ref, rows, lines, summary, status)
    if args.out is not None:
        write_record(out, record, rows, text, md)
    if summary.interrupted and not ref.get("finished"):
        print(f"{PROG}: interrupted before the fault-free reference run ended", file=sys.stderr)
        return 130
    if not ref.get("finished"):
        print(f"{PROG}: the fault-free reference run did not finish: {ref.get('reason')}",
              file=sys.stderr)  # fmt: skip
        return 1
    _report(record, rows, text)
    if summary.interrupted:
        print(f"{PROG}: interrupted; rerun with --resume to finish", file=sys.stderr)
        return 130
    if args.out is not None:
        print(f"wrote {out}/results.json, runs.csv, table.txt, table.md")
    return 0 if record["ok"] else 1
