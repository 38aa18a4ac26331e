"""The record a training run leaves in ``--out DIR`` (contract: ``docs/outputs.md``).

``results.json`` (config, per-step metrics, totals), ``weights/step_KKKK.npz``
(weights at the start of every step and the final ones), ``trace.json``
(Chrome/Perfetto trace events, ts/dur in cycles) and ``timeline.png``
(matplotlib Gantt chart).  Backend-independent: it reads a
:class:`~gradsync.firmware.experiment.RunResult`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import numpy as np

from gradsync import __version__
from gradsync.firmware import data as digits
from gradsync.firmware.experiment import (
    Interval,
    RunResult,
    StepMetrics,
    TrainConfig,
    intervals,
    weight_values,
)
from gradsync.spec import regmap as rm

FORMAT_VERSION = 1

_CAT = {
    rm.Engine.COMPUTE: "compute",
    rm.Engine.VECTOR: "vector",
    rm.Engine.DMA_HI: "dma",
    rm.Engine.DMA_LO: "dma",
    rm.Engine.NIC_TX: "link",
    rm.Engine.NIC_RX: "link",
    rm.Engine.HOST: "host",
}


def config_dict(cfg: TrainConfig, data: digits.Digits, chunk_bytes: int | None) -> dict:
    """``results.json["config"]``: the run's parameters and its data split."""
    out = cfg.to_dict()
    out["chunk_bytes_resolved"] = chunk_bytes
    out["data"] = {
        "name": "digits",
        "input_scale": digits.INPUT_SCALE,
        "train_indices": data.train_indices.tolist(),
        "test_indices": data.test_indices.tolist(),
    }
    return out


def step_dict(m: StepMetrics) -> dict:
    """One entry of ``results.json["steps"]``."""
    return {
        "step": m.step,
        "loss": m.loss,
        "accuracy": m.accuracy,
        "cycles": m.cycles,
        "start_cycle": m.start_cycle,
        "layer1_ready_cycle": m.layer1_ready_cycle,
        "exposed_comm_cycles": m.exposed_comm_cycles,
        "batch_indices": m.batch_indices,
    }


def results_dict(res: RunResult, backend: str, status: str = "complete") -> dict:
    total = res.total_cycles
    return {
        "format_version": FORMAT_VERSION,
        "gradsync_version": __version__,
        "backend": backend,
        "status": status,
        "config": config_dict(res.config, res.data, res.chunk_bytes),
        "steps": [step_dict(m) for m in res.steps],
        "totals": {
            "cycles": total,
            "wall_seconds": res.wall_seconds,
            "simulated_cycles_per_second": total / res.wall_seconds
            if res.wall_seconds > 0
            else None,
        },
    }


def event_name(iv: Interval) -> str:
    kind = rm.KIND_NAMES.get(iv.kind, "other")
    if iv.engine in (rm.Engine.DMA_HI, rm.Engine.DMA_LO, rm.Engine.NIC_TX):
        return f"send L{iv.layer} c{iv.chunk}"
    if iv.engine == rm.Engine.NIC_RX:
        return f"recv L{iv.layer} c{iv.chunk}"
    if iv.engine == rm.Engine.HOST:
        return kind
    return f"{kind} L{iv.layer}"


def trace_events(records: list[list[rm.TraceRecord]], ivs: list[Interval] | None = None) -> dict:
    """Chrome trace events of every node's records (``ivs``: their intervals, if already paired)."""
    if ivs is None:
        ivs = [iv for node, recs in enumerate(records) for iv in intervals(recs, node)]
    by_node: dict[int, list[Interval]] = {}
    for iv in ivs:
        by_node.setdefault(iv.node, []).append(iv)
    events: list[dict] = []
    for node, recs in enumerate(records):
        events.append(
            {"name": "process_name", "ph": "M", "pid": node, "args": {"name": f"node {node}"}}
        )
        for eng, name in rm.ENGINE_NAMES.items():
            events.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": node,
                    "tid": int(eng),
                    "args": {"name": name},
                }
            )
            events.append(
                {
                    "name": "thread_sort_index",
                    "ph": "M",
                    "pid": node,
                    "tid": int(eng),
                    "args": {"sort_index": int(eng)},
                }
            )
        for iv in by_node.get(node, []):
            eng = rm.Engine(iv.engine)
            args = {
                "step": iv.step,
                "layer": iv.layer,
                "chunk": iv.chunk,
                "kind": rm.KIND_NAMES.get(iv.kind, "other"),
            }
            if eng in (
                rm.Engine.DMA_HI,
                rm.Engine.DMA_LO,
                rm.Engine.NIC_TX,
                rm.Engine.NIC_RX,
                rm.Engine.HOST,
            ):
                args["bytes"] = iv.aux
            if eng in (rm.Engine.DMA_HI, rm.Engine.DMA_LO):
                args["queue"] = "hi" if eng == rm.Engine.DMA_HI else "lo"
            events.append(
                {
                    "name": event_name(iv),
                    "cat": _CAT[eng],
                    "ph": "X",
                    "ts": iv.start,
                    "dur": iv.end - iv.start,
                    "pid": node,
                    "tid": int(eng),
                    "args": args,
                }
            )
        for r in recs:
            if r.event == rm.TraceEvent.ERROR:
                events.append(
                    {
                        "name": f"error {rm.ErrorCode(r.aux).name}",
                        "cat": _CAT[rm.Engine(r.engine)],
                        "ph": "i",
                        "s": "t",
                        "ts": r.cycle,
                        "pid": node,
                        "tid": int(r.engine),
                    }
                )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {"time_unit": "cycles", "note": "ts and dur are device clock cycles"},
    }


def overtakes(ivs: list[Interval]) -> list[Interval]:
    """NIC_TX intervals of chunks sent ahead of an upper layer's remaining chunks.

    A chunk of layer L on node n in step k overtakes when it is sent (its
    NIC_TX interval ends) before the last chunk of some layer above L of the
    same node and step is sent: the order ``priority`` chooses and ``fifo``
    never does.
    """
    tx: dict[tuple[int, int], list[Interval]] = {}
    for iv in ivs:
        if iv.engine == rm.Engine.NIC_TX:
            tx.setdefault((iv.node, iv.step), []).append(iv)
    out = []
    for sends in tx.values():
        last = {}
        for iv in sends:
            last[iv.layer] = max(last.get(iv.layer, iv.end), iv.end)
        for iv in sends:
            if any(end > iv.end for layer, end in last.items() if layer > iv.layer):
                out.append(iv)
    return sorted(out, key=lambda iv: (iv.node, iv.start))


#: Timeline rows of one node, top to bottom: the host that feeds it, then its engines.
TIMELINE_ENGINES = (
    rm.Engine.HOST,
    rm.Engine.COMPUTE,
    rm.Engine.VECTOR,
    rm.Engine.DMA_HI,
    rm.Engine.DMA_LO,
    rm.Engine.NIC_TX,
    rm.Engine.NIC_RX,
)
HOST_COLOR = "0.6"


def write_timeline(res: RunResult, path: Path, max_steps: int = 3) -> None:
    """Gantt chart of the first ``max_steps`` steps: each node's rows together (host first).

    Bars are coloured by layer (host transfers grey); black lines start the
    steps, numbered on top; a red dashed line per step marks layer 1 ready
    (its reduced gradients applied on every node); a triangle above ``nic.tx``
    marks each chunk that overtakes an upper layer's remaining ones
    (:func:`overtakes`).  The legend sits right of the chart.  x is in cycles.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    nodes = len(res.records)
    steps = res.steps[:max_steps]
    hi = steps[-1].start_cycle + steps[-1].cycles if steps else res.total_cycles
    lo = steps[0].start_cycle if steps else 0
    rows = [(n, e) for n in range(nodes) for e in TIMELINE_ENGINES]
    index = {r: i for i, r in enumerate(rows)}
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(15, 0.32 * len(rows) + 2.2), layout="constrained")
    shown = [iv for iv in res.intervals if iv.end >= lo and iv.start <= hi]
    bars: dict[int, tuple[list, list]] = {}
    for iv in shown:
        y = index[(iv.node, rm.Engine(iv.engine))]
        color = HOST_COLOR if iv.engine == rm.Engine.HOST else cmap((iv.layer - 1) % 10)
        spans, colors = bars.setdefault(y, ([], []))
        spans.append((iv.start, max(iv.end - iv.start, 1)))
        colors.append(color)
    for y, (spans, colors) in bars.items():
        ax.broken_barh(spans, (y - 0.4, 0.8), facecolors=colors)
    ahead = overtakes(shown)
    if ahead:
        ax.plot(
            [(iv.start + iv.end) / 2 for iv in ahead],
            [index[(iv.node, rm.Engine.NIC_TX)] - 0.62 for iv in ahead],
            "v",
            color="k",
            ms=5,
            clip_on=False,
        )
    top = ax.get_xaxis_transform()  # x in cycles, y in axes fraction
    for m in steps:
        ax.axvline(m.start_cycle, color="k", lw=1)
        ax.text(
            m.start_cycle + m.cycles / 2,
            1.01,
            f"step {m.step}",
            transform=top,
            ha="center",
            va="bottom",
            fontsize=10,
            weight="bold",
        )
        if m.layer1_ready_cycle >= 0:
            ax.axvline(m.start_cycle + m.layer1_ready_cycle, color="r", ls="--", lw=1.2)
    for n in range(1, nodes):
        ax.axhline(n * len(TIMELINE_ENGINES) - 0.5, color="0.3", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"node {n}  {rm.ENGINE_NAMES[e]}" for n, e in rows], fontsize=9)
    ax.set_ylim(len(rows) - 0.5, -0.9)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("cycle (from the start of the run)")
    layers = len(res.config.layers) - 1
    handles = [Patch(color=cmap(i % 10), label=f"layer {i + 1}") for i in range(layers)]
    handles += [
        Patch(color=HOST_COLOR, label="host transfer"),
        Line2D([0], [0], color="k", lw=1, label="step start"),
        Line2D([0], [0], color="r", ls="--", lw=1.2, label="layer 1 ready"),
        Line2D(
            [0],
            [0],
            marker="v",
            color="k",
            ls="",
            ms=6,
            label="chunk sent ahead of an\nupper layer's remaining ones",
        ),
    ]
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.005, 1.0),
        fontsize=9,
        title="layer = colour of its\ncompute and chunks",
        title_fontsize=8,
    )
    cfg = res.config
    ax.set_title(
        f"{cfg.schedule}: {nodes} node{'s' if nodes != 1 else ''}, layers "
        f"{','.join(map(str, cfg.layers))}, chunk {res.chunk_bytes} B, link "
        f"{cfg.hardware.link_bytes_per_cycle} B/cycle (first {len(steps)} "
        f"step{'s' if len(steps) != 1 else ''})",
        pad=22,
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(res: RunResult, out: Path, backend: str, extra: dict | None = None) -> None:
    """Write the run's complete record into the folder ``out`` (made if missing);
    ``extra`` adds backend-specific top-level keys to results.json (the RTL
    backend's ``rtl`` record).  :class:`RunRecord` calls it on a fresh folder."""
    out.mkdir(parents=True, exist_ok=True)
    results = results_dict(res, backend)
    results.update(extra or {})
    wdir = out / "weights"
    wdir.mkdir(exist_ok=True)
    for k, layers in enumerate(res.weights):
        arrays = {}
        for i, w in enumerate(layers, start=1):
            arrays[f"layer{i}"] = weight_values(w, res.config.number_format)
            arrays[f"layer{i}_raw"] = w.astype(np.int64)
        np.savez(wdir / f"step_{k:04d}.npz", **arrays)
    (out / "trace.json").write_text(json.dumps(trace_events(res.records, res.intervals)))
    write_timeline(res, out / "timeline.png")
    (out / "results.json").write_text(json.dumps(results, indent=1))  # last: marks it complete


# --- the record's folder: validated first, written aside, renamed into place, locked ------

#: ``results.json["status"]``: while written, after success, after an error, after Ctrl-C.
STATUSES = ("running", "complete", "failed", "interrupted")
#: What a record folder may hold (``--overwrite`` replaces nothing else).
RECORD_ENTRIES = frozenset(
    {"results.json", "weights", "trace.json", "timeline.png", "waves.vcd", "waves.fst"}
)
#: Longest folder name accepted (the temporary sibling adds about 30 bytes to NAME_MAX 255).
MAX_NAME_BYTES = 200


class OutError(ValueError):
    """``--out`` cannot take a run record; the message is one sentence naming it and its value."""


def _siblings(out: Path) -> tuple[Path, str]:
    """The absolute parent of ``out`` and the prefix of its lock and temporary folders."""
    out = Path(os.path.abspath(out))
    return out.parent, f".{out.name}.gradsync-"


def is_record(folder: Path) -> bool:
    """Whether ``folder`` holds a gradsync run record (its results.json says so)."""
    path = folder / "results.json"
    if path.is_symlink() or not path.is_file():
        return False
    try:
        head = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(head, dict) and {"format_version", "gradsync_version"} <= head.keys()


def _check_name(out: Path, option: str) -> None:
    name = Path(out).name
    if name in ("", ".", ".."):
        raise OutError(
            f"{option} {str(out)!r} does not end in a folder name; give one, e.g. runs/a"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in str(out)):
        raise OutError(f"{option} {str(out)!r} contains control characters; use a plain path")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise OutError(f"{option} {str(out)!r} ends in a name longer than {MAX_NAME_BYTES} bytes")


def _check_parent(out: Path, option: str) -> None:
    """The nearest existing ancestor of ``out`` is a folder this process may write in."""
    anc = Path(os.path.abspath(out)).parent
    while not os.path.lexists(anc):
        anc = anc.parent
    if not anc.is_dir():
        raise OutError(f"{option} {str(out)!r} cannot be made: {anc} is not a folder")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise OutError(f"{option} {str(out)!r} cannot be written: {anc} is not writable")


def _check_contents(out: Path, option: str, overwrite: bool) -> None:
    """An existing ``out``: empty, or a previous record (replaced only with ``overwrite``)."""
    entries = sorted(os.listdir(out))
    if not entries:
        return
    links = [
        os.path.relpath(os.path.join(d, n), out)
        for d, dirs, files in os.walk(out)
        for n in dirs + files
        if os.path.islink(os.path.join(d, n))
    ]
    if links:
        raise OutError(
            f"{option} {str(out)!r} holds a symbolic link ({links[0]}), which a run record "
            "never has; remove it or choose another folder"
        )
    foreign = [e for e in entries if e not in RECORD_ENTRIES]
    if foreign or not is_record(out):
        shown = ", ".join((foreign or entries)[:3])
        raise OutError(
            f"{option} {str(out)!r} holds files that are not a gradsync run record ({shown}); "
            "choose an empty or new folder"
        )
    if not overwrite:
        raise OutError(
            f"{option} {str(out)!r} holds a previous run record; add --overwrite to replace it "
            "or choose another folder"
        )


def check_out_path(out: Path, option: str = "--out", replaced: bool = False) -> None:
    """Refuse, with :class:`OutError`, a path no output folder can be: a file, or under a
    file or an unwritable folder (``gradsync scale`` and ``sweep``, which write into their
    ``--out``, check it with this).  ``replaced``: the folder will be replaced whole (a
    run record), so also refuse a path without a folder name, the current folder or one
    holding it, and a symbolic link.
    """
    if replaced:
        _check_name(out, option)
        here, target = Path(os.getcwd()), Path(os.path.abspath(out))
        if here == target or target in here.parents:
            raise OutError(
                f"{option} {str(out)!r} is or holds the current folder, which a record "
                "replaces; give another folder"
            )
        if os.path.islink(out):
            raise OutError(
                f"{option} {str(out)!r} is a symbolic link; give the folder itself or a new one"
            )
    if os.path.lexists(out) and not os.path.isdir(out):
        raise OutError(f"{option} {str(out)!r} is a file, not a folder")
    _check_parent(out, option)


def check_out(out: Path, overwrite: bool = False, option: str = "--out") -> None:
    """Refuse, with :class:`OutError`, an ``out`` a run record cannot be written to.

    Checked before anything runs: :func:`check_out_path`, then an existing
    folder must be empty or hold a previous record (only replaced with
    ``overwrite``) with no symbolic link inside.
    """
    check_out_path(out, option, replaced=True)
    if os.path.isdir(out):
        _check_contents(out, option, overwrite)


class OutLock:
    """An exclusive ``flock`` on ``PARENT/.NAME.gradsync-lock`` while one run writes ``out``.

    The kernel drops the lock when the process dies, so a killed run never
    leaves ``out`` locked; the file is removed on release.
    """

    def __init__(self, out: Path, option: str = "--out"):
        parent, prefix = _siblings(out)
        self.out, self.option, self.path = out, option, parent / f"{prefix}lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise OutError(
                    f"{self.option} {str(self.out)!r} is being written by another gradsync run "
                    f"(process {holder}); wait for it to end or choose another folder"
                ) from None
            try:
                same = os.stat(self.path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:  # else the holder removed it as we opened it: take the new one
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> OutLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replaceable(target: Path) -> None:
    """Last guard before ``target`` is moved away: a real, empty or record folder, not
    holding the current folder (``check_out`` refuses all else earlier)."""
    here = Path(os.getcwd())
    real = target.is_dir() and not target.is_symlink()
    if (
        not real
        or not (is_record(target) or not any(target.iterdir()))
        or (target == here or target in here.parents)
    ):
        raise OutError(f"--out {str(target)!r} is no longer an empty folder or a run record")


class RunRecord:
    """The ``--out`` record of one training run, written aside and renamed into place.

    ``with RunRecord(out, overwrite, backend) as rec:`` (or :meth:`open` first, to
    refuse ``out`` apart from the run's errors) checks ``out``
    (:func:`check_out`), locks it (:class:`OutLock`) and makes a temporary
    folder beside it whose results.json says ``"status": "running"``; call
    :meth:`begin` once the configuration is known, :meth:`step` per finished
    step and :meth:`complete` with the result.  On leaving, the folder
    replaces ``out`` whole (no file of an older run remains): complete, or
    with results.json marked ``failed`` (an exception) or ``interrupted``
    (Ctrl-C) and holding the steps finished so far and the error.  A second
    Ctrl-C while the record is being written is ignored.  ``out=None``: no
    record, every call does nothing.
    """

    def __init__(self, out: Path | None, overwrite: bool, backend: str):
        self.out, self.overwrite, self.backend = out, overwrite, backend
        self.work: Path | None = None
        self.status = "running"
        self._head: dict = {}
        self._steps: list[dict] = []
        self._lock = OutLock(out) if out is not None else None

    def open(self) -> RunRecord:
        """Check and lock ``out``, make the temporary folder (:class:`OutError` if refused)."""
        if self.out is None or self.work is not None:
            return self
        check_out(self.out, self.overwrite)
        self._lock.acquire()
        try:
            check_out(self.out, self.overwrite)  # again under the lock: a run may just have ended
            parent, prefix = _siblings(self.out)
            self.work = Path(tempfile.mkdtemp(prefix=f"{prefix}tmp-", dir=parent))
            os.chmod(self.work, 0o777 & ~_umask())
            self._write()
        except BaseException:
            self._discard()
            raise
        return self

    def __enter__(self) -> RunRecord:
        return self.open()

    def _write(self, **extra) -> None:
        head = {
            "format_version": FORMAT_VERSION,
            "gradsync_version": __version__,
            "backend": self.backend,
            "status": self.status,
        }
        body = dict(head, **self._head, steps=self._steps, **extra)
        (self.work / "results.json").write_text(json.dumps(body, indent=1))

    def begin(self, cfg: TrainConfig, data: digits.Digits) -> None:
        """Record the configuration (``chunk_bytes_resolved`` is null until the run ends)."""
        if self.work is not None:
            self._head = {"config": config_dict(cfg, data, None)}
            self._write()

    def step(self, m: StepMetrics) -> None:
        if self.work is not None:
            self._steps.append(step_dict(m))

    def complete(self, res: RunResult, extra: dict | None = None) -> None:
        """Write the full record (results.json last, ``"status": "complete"``) and publish it."""
        if self.work is None:
            return
        self.status = "complete"
        with _no_interrupt():
            write_all(res, self.work, self.backend, extra)
            self._publish()

    def __exit__(self, kind, exc, tb) -> None:
        if self.work is None or self.status == "complete":
            self._discard()
            return
        self.status = "interrupted" if kind is KeyboardInterrupt else "failed"
        with _no_interrupt():
            self._write(error=None if exc is None else f"{type(exc).__name__}: {exc}")
            self._publish()

    def _publish(self) -> None:
        """Rename the temporary folder onto ``out``; remove the replaced one (never following
        a link), release the lock."""
        parent, prefix = _siblings(self.out)
        target = parent / Path(os.path.abspath(self.out)).name
        old = None
        try:
            if os.path.lexists(target):
                _replaceable(target)
                old = Path(tempfile.mkdtemp(prefix=f"{prefix}old-", dir=parent))
                old.rmdir()  # a free name beside ``out`` to move the replaced record to
                os.rename(target, old)
            os.rename(self.work, target)
            self.work = None
        finally:
            if old is not None and os.path.lexists(old):
                if old.is_symlink() or not old.is_dir():
                    old.unlink()
                else:
                    shutil.rmtree(old)
            self._discard()

    def _discard(self) -> None:
        """Remove an unpublished temporary folder; release the lock."""
        if self.work is not None:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work = None
        if self._lock is not None:
            self._lock.release()


class _no_interrupt:
    """Ignore SIGINT (in the main thread) while a record is written and renamed."""

    def __enter__(self):
        self.old = None
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, signal.SIG_IGN)

    def __exit__(self, *exc) -> None:
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
