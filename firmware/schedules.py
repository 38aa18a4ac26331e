"""Gradient-exchange schedules: the firmware's public extension point.

A schedule decides *when* a layer's gradient chunks may be sent, *in which
order* ready chunks leave the firmware's send buffer, on *which hardware
queue* they go, and whether each layer's SGD update (and so the next step's
forward pass of that layer) may run before the other layers are reduced.

Built-ins (``--schedule NAME``):

``sequential``
    All backward compute first, then every exchange in production order
    (top layer first); updates after everything is reduced.  No overlap.
``fifo``
    Each layer's chunks are sent as soon as its dW exists, in production
    order (PyTorch DDP buckets); updates after everything is reduced.
``priority``
    Chunks are sent as soon as they exist, but the buffer always hands out
    the lowest layer first, so a lower layer's chunks overtake an upper
    layer's remaining ones at chunk granularity (within a layer, ring phases
    breadth-first, which keeps a latency-bound ring busy); layer 1 uses the
    high-priority hardware queue; each layer is updated as soon as it is
    reduced, so the next step's forward for layer 1 starts while upper
    layers are still being exchanged.
``ddp``
    PyTorch DistributedDataParallel's buckets: layers are grouped in
    production order (top first) into buckets of ``bucket_cap_bytes``
    (25 MiB; the first bucket ``first_bucket_bytes``, 1 MiB); a bucket is
    sent, in production order, once every layer in it has its gradients;
    updates after everything is reduced.
``p3``
    Priority-based parameter propagation (Jayarajan et al., SysML 2019):
    gradients are cut into slices of ``slice_params`` parameters, sent
    lowest layer first, one slice after the other, all on the low-priority
    hardware queue (software priority only); each layer is updated as soon
    as it is reduced.

A user schedule is a class in a file of one's own, loaded with
``--schedule path/to/file.py:Name``; subclass :class:`Schedule` (see
``docs/schedules.md``).  The file is ordinary Python, imported once per
process under a module name derived from its resolved path
(:func:`module_name`), so every process of a run (the CLI, the RTL
simulator's) loads it the same way from :func:`schedule_spec`.  Every answer
a schedule gives passes through the ``call_*`` checks here: a wrong value or
an exception inside the user's method is one :class:`ScheduleError` sentence
naming the schedule, the method, the value and the user's file and line.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ScheduleError(ValueError):
    """A schedule gave an answer the firmware cannot use, or raised; the message says which."""


@dataclass(frozen=True)
class SendTask:
    """One descriptor's worth of exchange work, as a schedule sees it."""

    step: int
    layer: int  #: counted from 1 at the input
    chunk: int
    phase: int  #: position in the chunk's collective (0 for a plain exchange)
    length: int  #: bytes
    ready_seq: int  #: order in which tasks became ready on this node
    num_layers: int


class Schedule:
    """Base class; override the attributes and methods to make a schedule."""

    name = "custom"
    #: release a layer's sends as soon as its dW exists (False: after all backward compute)
    overlap_backward = True
    #: update each layer as soon as it is reduced (False: after all layers are reduced)
    early_update = False
    #: descriptors posted to each hardware queue at once; the rest wait in the buffer
    max_inflight = 4

    def queue(self, task: SendTask) -> int:
        """Hardware queue of a task: 0 (high priority) or 1 (low priority)."""
        return 1

    def priority(self, task: SendTask) -> tuple:
        """Sort key: the ready task with the smallest key is posted next."""
        return (task.ready_seq,)

    def describe(self) -> str:
        return self.name

    def buckets(self, grad_bytes: tuple[int, ...]) -> list[tuple[int, ...]] | None:
        """Groups of layers (1-based) released together once all have gradients; None: one
        group per layer if ``overlap_backward``, else all layers in one group."""
        return None

    def chunk_bytes(self, run_chunk_bytes: int, element_bytes: int) -> int:
        """The chunk size this schedule sends, given the run's (``--chunk-bytes``)."""
        return run_chunk_bytes


class Sequential(Schedule):
    name = "sequential"
    overlap_backward = False
    early_update = False

    def priority(self, task: SendTask) -> tuple:
        return (task.ready_seq,)


class Fifo(Schedule):
    name = "fifo"
    overlap_backward = True
    early_update = False

    def priority(self, task: SendTask) -> tuple:
        return (task.ready_seq,)


class Priority(Schedule):
    name = "priority"
    overlap_backward = True
    early_update = True

    def queue(self, task: SendTask) -> int:
        return 0 if task.layer == 1 else 1

    def priority(self, task: SendTask) -> tuple:
        return (task.layer, task.phase, task.chunk, task.ready_seq)


MIB = 1 << 20


class Ddp(Schedule):
    name = "ddp"
    overlap_backward = True
    early_update = False
    #: bucket size (PyTorch's ``bucket_cap_mb``, 25 MiB) and its first, smaller bucket
    bucket_cap_bytes = 25 * MIB
    first_bucket_bytes = 1 * MIB

    def buckets(self, grad_bytes: tuple[int, ...]) -> list[tuple[int, ...]]:
        out: list[tuple[int, ...]] = []
        cur: list[int] = []
        size = 0
        for layer in range(len(grad_bytes), 0, -1):  # production order: top layer first
            cur.append(layer)
            size += grad_bytes[layer - 1]
            cap = self.first_bucket_bytes if not out else self.bucket_cap_bytes
            if size >= cap:
                out.append(tuple(cur))
                cur, size = [], 0
        if cur:
            out.append(tuple(cur))
        return out


class P3(Schedule):
    name = "p3"
    overlap_backward = True
    early_update = True
    #: parameters per slice (P3's default is 50,000); None: the run's --chunk-bytes
    slice_params: int | None = 50_000

    def priority(self, task: SendTask) -> tuple:
        return (task.layer, task.chunk, task.phase, task.ready_seq)

    def chunk_bytes(self, run_chunk_bytes: int, element_bytes: int) -> int:
        if self.slice_params is None:
            return run_chunk_bytes
        return -(-self.slice_params * element_bytes // 4) * 4


BUILTIN = {cls.name: cls for cls in (Sequential, Fifo, Priority, Ddp, P3)}


#: attribute in which :func:`load_schedule` records where a schedule came from
SOURCE_ATTR = "_gradsync_source"


def label(sched: Schedule) -> str:
    """How messages name a schedule: a file schedule's class name, else its ``name``."""
    if getattr(sched, SOURCE_ATTR, None) and ":" in getattr(sched, SOURCE_ATTR):
        return type(sched).__name__
    return str(getattr(sched, "name", type(sched).__name__))


def _where(exc: BaseException, sched: Schedule) -> str:
    """``file:line`` of the innermost traceback frame in the schedule's own file (else the last)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "?"
    own = getattr(sys.modules.get(type(sched).__module__), "__file__", None)
    mine = [f for f in frames if own and os.path.abspath(f.filename) == os.path.abspath(own)]
    frame = (mine or frames)[-1]
    shown = os.path.relpath(frame.filename)
    if shown.startswith(".."):
        shown = frame.filename
    return f"{shown}:{frame.lineno}"


def _call(sched: Schedule, method: str, *args):
    """``sched.method(*args)``; an exception becomes one sentence with the user's file and line."""
    try:
        return getattr(sched, method)(*args)
    except Exception as exc:
        raise ScheduleError(
            f"schedule {label(sched)!r}: {method}() raised {type(exc).__name__} at "
            f"{_where(exc, sched)}: {exc}"
        ) from exc


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def call_queue(sched: Schedule, task: SendTask) -> int:
    """The hardware queue a schedule chooses for ``task``: 0 or 1, else :class:`ScheduleError`."""
    q = _call(sched, "queue", task)
    if not _is_int(q) or int(q) not in (0, 1):
        raise ScheduleError(
            f"schedule {label(sched)!r}: queue() returned {q!r} for layer {task.layer}; "
            "it must be 0 or 1"
        )
    return int(q)


def call_priority(sched: Schedule, task: SendTask) -> tuple:
    """The sort key of ``task`` as a tuple (a scalar key ``k`` becomes ``(k,)``)."""
    key = _call(sched, "priority", task)
    if isinstance(key, tuple):
        return key
    if isinstance(key, list):
        return tuple(key)
    if key is None:
        raise ScheduleError(
            f"schedule {label(sched)!r}: priority() returned None for layer {task.layer}; "
            "it must return a sort key such as (task.layer, task.chunk)"
        )
    return (key,)


def sort_by_priority(sched: Schedule, keyed: list) -> None:
    """Sort ``[(key, task, ...)]`` in place by key; keys that do not compare name both tasks."""
    try:
        keyed.sort(key=lambda e: e[0])
    except TypeError:
        for a in keyed:
            for b in keyed:
                try:
                    _ = a[0] < b[0]
                except TypeError as exc:
                    raise ScheduleError(
                        f"schedule {label(sched)!r}: priority() keys {a[0]!r} (layer "
                        f"{a[1].layer}) and {b[0]!r} (layer {b[1].layer}) cannot be compared: {exc}"
                    ) from None
        raise


def check_attributes(sched: Schedule) -> None:
    """The schedule's plain attributes have usable types and values."""
    for attr in ("overlap_backward", "early_update"):
        value = getattr(sched, attr)
        if not isinstance(value, bool | np.bool_):
            raise ScheduleError(
                f"schedule {label(sched)!r}: {attr} is {value!r}; it must be True or False"
            )
    n = sched.max_inflight
    if not _is_int(n) or n < 1:
        raise ScheduleError(
            f"schedule {label(sched)!r}: max_inflight is {n!r}; it must be a whole number >= 1 "
            "(descriptors posted per hardware queue at once)"
        )


def release_groups(sched: Schedule, grad_bytes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The layer groups a schedule releases together (see :meth:`Schedule.buckets`)."""
    groups = _call(sched, "buckets", tuple(grad_bytes)) if hasattr(sched, "buckets") else None
    n = len(grad_bytes)
    if groups is None:
        if sched.overlap_backward:
            return [(layer,) for layer in range(n, 0, -1)]
        return [tuple(range(n, 0, -1))]
    rule = f"it must be a list of tuples of layers that holds every layer 1..{n} exactly once"
    bad = ScheduleError(f"schedule {label(sched)!r}: buckets() returned {groups!r}; {rule}")
    try:
        out = [tuple(g) for g in groups]
    except TypeError:
        raise bad from None
    layers = [layer for g in out for layer in g]
    if not all(_is_int(layer) for layer in layers) or sorted(layers) != list(range(1, n + 1)):
        raise bad
    return [tuple(int(layer) for layer in g) for g in out]


def schedule_chunk_bytes(sched: Schedule, run_chunk_bytes: int, element_bytes: int) -> int:
    """The chunk size a schedule sends (``Schedule.chunk_bytes``; the run's by default)."""
    if not hasattr(sched, "chunk_bytes"):
        return run_chunk_bytes
    chunk = _call(sched, "chunk_bytes", run_chunk_bytes, element_bytes)
    if not _is_int(chunk) or chunk <= 0 or chunk % 4:
        raise ScheduleError(
            f"schedule {label(sched)!r}: chunk_bytes() returned {chunk!r}; it must be a "
            "positive multiple of 4 bytes"
        )
    return int(chunk)


def check_tasks(sched: Schedule, tasks: list[SendTask]) -> None:
    """Ask the schedule about every task of a run up front: queues, keys and their order."""
    keyed = [(call_priority(sched, t), t) for t in tasks]
    for t in tasks:
        call_queue(sched, t)
    sort_by_priority(sched, keyed)


def module_name(path: Path) -> str:
    """The module a schedule file is imported as: the same in every process for one file."""
    digest = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
    return f"gradsync_user_schedule_{digest}"


def _import_file(path: Path):
    """The module of a schedule file, executed once per process (again if the file changed)."""
    name = module_name(path)
    text = path.read_bytes()
    digest = hashlib.sha256(text).hexdigest()
    module = sys.modules.get(name)
    if module is not None and getattr(module, "_gradsync_digest", None) == digest:
        return module
    module_spec = importlib.util.spec_from_file_location(name, path.resolve())
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module._gradsync_digest = digest
    sys.modules[name] = module  # classes pickle by module name, and dataclasses need it
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        frames = [
            f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path.resolve())
        ]
        line = f":{frames[-1].lineno}" if frames else ""
        raise ScheduleError(
            f"schedule file {str(path)!r} raised {type(exc).__name__} at "
            f"{path.name}{line} while loading: {exc}"
        ) from exc
    return module


def load_schedule(spec: str | Schedule) -> Schedule:
    """A schedule from a built-in name or ``path/to/file.py:ClassName``.

    A file schedule is imported by :func:`_import_file` and remembers its
    absolute path (:func:`schedule_spec`), so another process can load it again.
    """
    if isinstance(spec, Schedule):
        return spec
    if spec in BUILTIN:
        return BUILTIN[spec]()
    if ":" not in spec:
        raise ValueError(
            f"unknown schedule {spec!r}: use one of {sorted(BUILTIN)} or path/to/file.py:ClassName"
        )
    path_text, _, cls_name = spec.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise ValueError(f"schedule file {path_text!r} does not exist")
    module = _import_file(path)
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise ValueError(f"schedule file {path_text!r} has no class {cls_name!r}")
    if not isinstance(cls, type):
        raise ValueError(f"schedule {spec!r}: {cls_name!r} is not a class")
    obj = cls()
    for attr in ("queue", "priority", "overlap_backward", "early_update", "max_inflight"):
        if not hasattr(obj, attr):
            raise ValueError(
                f"schedule {spec!r} lacks {attr!r}; subclass gradsync.firmware.schedules.Schedule"
            )
    if not hasattr(obj, "name"):
        obj.name = cls_name
    setattr(obj, SOURCE_ATTR, f"{path.resolve()}:{cls_name}")
    check_attributes(obj)
    return obj


def schedule_spec(sched: Schedule) -> str | None:
    """What :func:`load_schedule` needs to load ``sched`` again in another process.

    A built-in schedule's name or a file schedule's ``/absolute/path.py:Class``;
    None for a schedule object made some other way (it must then be pickled).
    """
    source = getattr(sched, SOURCE_ATTR, None)
    if source:
        return source
    name = getattr(sched, "name", None)
    if name in BUILTIN and type(sched) is BUILTIN[name] and not vars(sched):
        return name
    return None
