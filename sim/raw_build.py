"""The raw-speed ceiling: a cached cocotb model's Verilog rebuilt with a plain C++ main.

``gradsync bench`` compares the co-simulation with what Verilator alone can do
on the same design.  :func:`build_raw` takes a model built by
``sim/build.py`` (its ``src/`` folder: the design's Verilog, the clock
wrapper and the control file) and builds it again with the same Verilator
arguments and ``make`` flags, except that cocotb's VPI main and ``--vpi``
are replaced by ``sim/bench_main.cpp``, which replays a stimulus file of
port writes (and checks the port reads) recorded by a cocotb run.  The
binary is cached next to the model, in ``<cache>/raw/<model folder>-<key>``,
keyed by the C++ main and the Verilator version.

Only new files: ``sim/build.py``'s cache keys and entries are not touched.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gradsync.sim.build import (
    VERILATOR_BUILD_ARGS,
    WRAPPER_TOP,
    BuildError,
    BuiltModel,
    cache_root,
)
from gradsync.sim.toolchain import find_verilator, make_flags

MAIN_CPP = Path(__file__).with_name("bench_main.cpp")
EXECUTABLE = "bench_main"


@dataclass(frozen=True)
class RawModel:
    """A raw (no VPI, no cocotb) build of a cached model."""

    executable: Path
    ports: tuple[str, ...]  # index -> port name, as the stimulus file numbers them
    cached: bool
    build_seconds: float


def _ports_include(model: BuiltModel) -> tuple[str, tuple[str, ...]]:
    """C++ table of the wrapper's ports (<= 64 bits) and their names in table order."""
    rows, names = [], []
    for p in model.ports:
        if p.name == "clk" or p.width > 64:
            continue
        setter = (
            f"[](Top& t, uint64_t v) {{ t.{p.name} = v; }}"
            if p.direction == "input"
            else "[](Top&, uint64_t) {}"
        )
        rows.append(f'    {{"{p.name}", {setter}, [](Top& t) {{ return (uint64_t)t.{p.name}; }}}},')
        names.append(p.name)
    return "const Port PORTS[] = {\n" + "\n".join(rows) + "\n};\n", tuple(names)


def raw_key(model: BuiltModel) -> str:
    """Key of the raw build: the model's own key, the C++ main and the Verilator version."""
    h = hashlib.sha256()
    for part in (model.key, MAIN_CPP.read_text(), find_verilator().version, "1"):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def build_raw(model: BuiltModel) -> RawModel:
    """Build (or reuse) the raw C++ binary of ``model`` (a ``gradsync_tb``-wrapped build)."""
    if model.toplevel != WRAPPER_TOP:
        raise BuildError(f"the raw build needs a model with the {WRAPPER_TOP} clock wrapper")
    include, names = _ports_include(model)
    final = cache_root() / "raw" / f"{model.directory.name}-{raw_key(model)}"
    if (final / EXECUTABLE).is_file():
        return RawModel(final / EXECUTABLE, names, True, 0.0)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".raw-", dir=final.parent))
    try:
        started = time.monotonic()
        _compile(model, work, include)
        seconds = time.monotonic() - started
        if final.exists():  # a concurrent build finished first
            shutil.rmtree(work, ignore_errors=True)
        else:
            os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return RawModel(final / EXECUTABLE, names, False, seconds)


def _compile(model: BuiltModel, work: Path, include: str) -> None:
    verilator = find_verilator()
    src = model.directory / "src"
    (work / "bench_ports.inc").write_text(include)
    shutil.copy(MAIN_CPP, work / MAIN_CPP.name)
    opts = model.options
    args = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", *VERILATOR_BUILD_ARGS, "--timing",
            *opts.extra_args]  # fmt: skip
    cmd = [
        str(verilator.executable), "-cc", "--exe", "-Mdir", str(work),
        "--top-module", WRAPPER_TOP, "--prefix", "Vtop", "-o", EXECUTABLE,
        "-CFLAGS", f"-I{work}", *args, "--timescale", "1ns/1ps",
        str(work / MAIN_CPP.name), str(src / "public.vlt"),
        str(src / f"{model.design_top}.v"), str(src / f"{WRAPPER_TOP}.v"),
    ]  # fmt: skip
    env = verilator.environment()
    env["MAKEFLAGS"] = make_flags(opts.opt_fast, timing=True)
    log = work / "build.log"
    with open(log, "w") as out:
        for step in (cmd, ["make", "-j", str(os.cpu_count() or 1), "-C", str(work), "-f",
                           "Vtop.mk", "VM_TRACE=0"]):  # fmt: skip
            if subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, env=env).returncode:
                raise BuildError(f"raw Verilator build failed; log: {log}")
    if not (work / EXECUTABLE).is_file():
        raise BuildError(f"raw Verilator build produced no {EXECUTABLE}; log: {log}")


def run_raw(raw: RawModel, stimulus: Path, end_steps: int) -> dict:
    """Replay ``stimulus`` until time step ``end_steps``; the main's own timing of its loop.

    Returns ``{"events", "checks", "mismatches", "seconds", "end_steps"}``;
    raises :class:`BuildError` when a port read differs from the recording.
    """
    proc = subprocess.run(
        [str(raw.executable), str(stimulus), str(end_steps)], capture_output=True, text=True
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("cycles_ok")), None)
    if proc.returncode or line is None:
        raise BuildError(
            f"the raw model's replay failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
        )
    _, events, checks, mismatches, seconds, end = line.split()
    return {
        "events": int(events),
        "checks": int(checks),
        "mismatches": int(mismatches),
        "seconds": float(seconds),
        "end_steps": int(end),
    }
