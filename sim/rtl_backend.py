"""The RTL backend of a training run: the firmware on N RTL nodes under Verilator.

``run_rtl(cfg, jobs)`` is a :data:`gradsync.firmware.experiment.Backend`, the
twin of ``gradsync.model_backend.run_model``: it builds (or reuses from the
cache) the Verilator model of ``hw.cluster.Cluster`` for ``cfg``'s hardware,
format and node count, and runs ``sim/train_cocotb.py`` in it; every node's
firmware is the same ``NodeFirmware`` code the model backend runs, on an
:class:`~gradsync.sim.rtl_device.RtlDevice`.  The simulator runs in its own
process (cocotb's runner); the run goes in and the result comes back as
pickles, progress as a small JSON file that a thread here prints to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from gradsync.firmware.experiment import BackendResult, TrainConfig
from gradsync.firmware.schedules import schedule_spec
from gradsync.firmware.training import NodeJob
from gradsync.spec.hardware import build_config

#: Period of the generated clock (only sim time; no effect on speed).
CLOCK_PERIOD_NS = 10
#: Simulated cycles between progress reports.
PROGRESS_CYCLES = 20_000


class RtlRunError(RuntimeError):
    """The RTL run stopped with an error (the firmware's message, or a spent cycle budget)."""


@dataclasses.dataclass
class RtlRunInfo:
    """What the last :func:`run_rtl` measured (for the CLI and benchmarks)."""

    build_seconds: float = 0.0
    build_cached: bool = False
    sim_seconds: float = 0.0
    cycles: int = 0
    waves: Path | None = None
    latency: object = None
    #: ``{"links": [{LINK_COUNTERS: n}], "nodes": [{NODE_COUNTERS: n}]}`` at the end of the run
    counters: dict | None = None


LAST_RUN = RtlRunInfo()


def link_faults_from_spec(spec: str, links: int) -> list[dict]:
    """Per-link fault controls from a ``--link-faults`` spec (``gradsync.spec.faults``)."""
    from gradsync.spec.faults import parse_link_faults

    return parse_link_faults(spec, links)


def build_cluster(cfg: TrainConfig, waves: str | None = None):
    """The cached Verilator model of the cluster ``cfg`` runs on."""
    from gradsync.sim.build import BuildOptions, Deferred, build_component

    # the link is not part of a build: the firmware sets the run's (LINK_SET)
    hw, fmt = build_config(cfg.hardware), cfg.fixed_point
    if cfg.nodes < 2:
        raise ValueError(f"the RTL backend simulates 2 or more nodes, not {cfg.nodes}")
    options = BuildOptions(clock_period_ns=CLOCK_PERIOD_NS, waves=waves)
    # HOST trace stamps: RtlDevice sends the header beat host_bulk_setup_cycles - 1 cycles
    # after the call and the last beat completes one cycle before the call returns
    lead, lag = hw.host_bulk_setup_cycles - 1, 1
    # built (and Amaranth imported) only if the elaboration index misses
    cluster = Deferred(
        "gradsync.hw.cluster", "Cluster", (hw, fmt, cfg.nodes),
        (("host_lead_cycles", lead), ("host_lag_cycles", lag)),
    )  # fmt: skip
    params = {
        "hardware": hw.to_dict(),
        "format": fmt.to_dict(),
        "nodes": cfg.nodes,
        "host_lead_cycles": lead,
        "host_lag_cycles": lag,
    }
    return build_component(cluster, f"cluster{cfg.nodes}", options, params=params)


def default_waves() -> str:
    """FST where Verilator can build its FST writer (lz4 and zlib dev files), else VCD."""
    from gradsync.sim.toolchain import can_write_fst

    return "fst" if can_write_fst() else "vcd"


def waves_path(directory: Path, waves: str) -> Path:
    """Where a run writes its waveform: ``DIR/waves.vcd`` or ``DIR/waves.fst``."""
    return Path(directory) / f"waves.{waves}"


def _progress_printer(path: Path, stop: threading.Event, out) -> None:
    last = None
    while not stop.wait(1.0):
        try:
            p = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if p == last:
            continue
        last = p
        speed = p["cycle"] / max(p["wall"], 1e-9)
        step = max(p["step"], 0)
        print(
            f"\r[rtl] step {step + 1}/{p['steps']}  cycle {p['cycle']:,}  {speed:,.0f} cycles/s  ",
            end="",
            file=out,
            flush=True,
        )
    if last is not None:
        print(file=out, flush=True)


def run_rtl(
    cfg: TrainConfig, jobs: list[NodeJob], *, work_dir: Path | None = None, **kwargs
) -> BackendResult:
    """:func:`_run_rtl` (its parameters), in ``work_dir`` or a temporary ``gradsync-rtl-*``
    folder that is removed when the run ends, also on an error or Ctrl-C.

    The temporary folder is kept only when it holds the sole evidence: the
    simulator ended without a result (the error names its ``sim.log``), or a
    waveform was asked for without ``waves_dir``.
    """
    if work_dir is not None:
        return _run_rtl(cfg, jobs, work_dir=work_dir, **kwargs)
    work = Path(tempfile.mkdtemp(prefix="gradsync-rtl-"))
    keep = bool(kwargs.get("waves")) and kwargs.get("waves_dir") is None
    try:
        return _run_rtl(cfg, jobs, work_dir=work, **kwargs)
    except Exception:
        keep = keep or ((work / "sim.log").exists() and not (work / "result.pkl").exists())
        raise
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _run_rtl(
    cfg: TrainConfig,
    jobs: list[NodeJob],
    *,
    waves: str | None = None,
    waves_dir: Path | None = None,
    progress: bool | None = None,
    max_cycles: int | None = None,
    link_faults: list[dict] | None = None,
    work_dir: Path | None = None,
    on_info: Callable[[RtlRunInfo], None] | None = None,
) -> BackendResult:
    """Run ``jobs`` on the RTL cluster for ``cfg``; return what the model backend returns.

    Parameters
    ----------
    waves:
        ``None``, ``"vcd"`` or ``"fst"``: also write a waveform of the whole
        cluster, ``waves_dir/waves.<fmt>`` (default: the work directory); its
        path is in ``LAST_RUN.waves``. The file is complete also when the run
        fails. Tracing is a separate (cached) Verilator build and slows the
        simulation.
    progress:
        Print step, cycle and simulation speed to stderr (default: when
        stderr is a terminal).
    max_cycles:
        Cycle budget; when spent the run stops with :class:`RtlRunError`
        naming each node's outstanding work.
    link_faults:
        Per link, fault-injection control values (``hw.link.LINK_CONTROLS``
        names, e.g. ``{"drop_rate": 600, "seed": 7}``), set before reset.
    """
    from gradsync.sim.build import run_cocotb

    t0 = time.perf_counter()
    model = build_cluster(cfg, waves)
    info = RtlRunInfo(build_seconds=time.perf_counter() - t0, build_cached=model.cached)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="gradsync-rtl-"))
    work.mkdir(parents=True, exist_ok=True)
    run_file, result_file, progress_file = (
        work / "run.pkl",
        work / "result.pkl",
        work / "progress.json",
    )
    result_file.unlink(missing_ok=True)
    progress_file.unlink(missing_ok=True)
    opts = {
        "clock_period_ns": CLOCK_PERIOD_NS,
        "progress_cycles": PROGRESS_CYCLES,
        "max_cycles": max_cycles,
        "link_faults": link_faults or [],
    }
    # observers are the backend's own (set in the simulator process); they do not pickle.
    # Schedules go by name or file:Class, loaded there by the same load_schedule
    schedules = [schedule_spec(j.schedule) or j.schedule for j in jobs]
    plain = [dataclasses.replace(j, observer=None, schedule=None) for j in jobs]
    run = {"cfg": cfg, "jobs": plain, "schedules": schedules, "opts": opts}
    try:
        run_file.write_bytes(pickle.dumps(run))
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ValueError(
            f"schedule {jobs[0].schedule!r} cannot be sent to the simulator process ({exc}); "
            "load it with gradsync.firmware.schedules.load_schedule('file.py:Class')"
        ) from None
    if progress is None:
        progress = sys.stderr.isatty()
    stop = threading.Event()
    printer = None
    if progress:
        printer = threading.Thread(
            target=_progress_printer, args=(progress_file, stop, sys.stderr), daemon=True
        )
        printer.start()
    wave_file = waves_path(waves_dir or work, waves) if waves else None
    t1 = time.perf_counter()
    try:
        run_cocotb(
            model,
            "gradsync.sim.train_cocotb",
            test_dir=work,
            extra_env={
                "GRADSYNC_RTL_RUN": str(run_file),
                "GRADSYNC_RTL_RESULT": str(result_file),
                "GRADSYNC_RTL_PROGRESS": str(progress_file),
            },
            waves_file=wave_file,
        )
    finally:
        stop.set()
        if printer is not None:
            printer.join()
    if wave_file is not None and wave_file.is_file():
        info.waves = wave_file
    info.sim_seconds = time.perf_counter() - t1
    if not result_file.exists():
        raise RtlRunError(f"the RTL run wrote no result; log: {work / 'sim.log'}")
    with open(result_file, "rb") as f:
        payload = pickle.load(f)
    info.counters = payload.get("counters")
    LAST_RUN.__dict__.update(info.__dict__)
    if "error" in payload:
        kind, message = payload["error"]
        raise RtlRunError(f"{kind}: {message}")
    res: BackendResult = payload["result"]
    info.cycles = res.total_cycles
    info.latency = payload["latency"]
    LAST_RUN.__dict__.update(info.__dict__)
    if on_info is not None:
        on_info(info)
    return res
