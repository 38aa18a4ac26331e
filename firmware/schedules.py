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
``docs/schedules.md``).
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path


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


def release_groups(sched: Schedule, grad_bytes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The layer groups a schedule releases together (see :meth:`Schedule.buckets`)."""
    groups = sched.buckets(grad_bytes) if hasattr(sched, "buckets") else None
    n = len(grad_bytes)
    if groups is None:
        if sched.overlap_backward:
            return [(layer,) for layer in range(n, 0, -1)]
        return [tuple(range(n, 0, -1))]
    seen = sorted(layer for g in groups for layer in g)
    if seen != list(range(1, n + 1)):
        raise ValueError(
            f"schedule {sched.name!r}: buckets {groups} must hold every layer 1..{n} exactly once"
        )
    return [tuple(g) for g in groups]


def schedule_chunk_bytes(sched: Schedule, run_chunk_bytes: int, element_bytes: int) -> int:
    """The chunk size a schedule sends (``Schedule.chunk_bytes``; the run's by default)."""
    if hasattr(sched, "chunk_bytes"):
        return int(sched.chunk_bytes(run_chunk_bytes, element_bytes))
    return run_chunk_bytes


def load_schedule(spec: str | Schedule) -> Schedule:
    """A schedule from a built-in name or ``path/to/file.py:ClassName``."""
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
    mod_name = f"gradsync_user_schedule_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    module_spec.loader.exec_module(module)
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise ValueError(f"schedule file {path_text!r} has no class {cls_name!r}")
    obj = cls()
    for attr in ("queue", "priority", "overlap_backward", "early_update", "max_inflight"):
        if not hasattr(obj, attr):
            raise ValueError(
                f"schedule {spec!r} lacks {attr!r}; subclass gradsync.firmware.schedules.Schedule"
            )
    if not hasattr(obj, "name"):
        obj.name = cls_name
    return obj
