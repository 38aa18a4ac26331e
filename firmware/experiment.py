"""A training run as an experiment: configuration, per-node jobs, metrics from the trace.

Backend-independent: a backend is a callable that runs one
:class:`~gradsync.firmware.training.NodeFirmware` per node on its devices and
returns a :class:`BackendResult` (the model backend lives in
``gradsync.model_backend``; the RTL backend in ``gradsync.sim``).  Everything
reported — cycles per step, layer-1-ready cycle, exposed communication — is
computed from the hardware trace records the firmware read from the devices.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from gradsync.firmware import data as digits
from gradsync.firmware.schedules import load_schedule, schedule_chunk_bytes
from gradsync.firmware.training import (
    NodeJob,
    NodeResult,
    check_chunk_bytes,
    check_schedule,
    exchange_align,
    is_float,
    plan_memory_for,
)
from gradsync.spec import regmap as rm
from gradsync.spec.formats import DEFAULT_FORMAT, BFloat16Format, FixedPointFormat
from gradsync.spec.hardware import DEFAULT_HARDWARE, HardwareConfig
from gradsync.spec.limits import LimitError, check_layers, check_learning_rate, check_nodes
from gradsync.spec.link import EXCHANGE_ELEMENT_BYTES, auto_chunk_bytes

MAX_STEPS = 4096  # trace tags carry the step modulo 4096
#: Exchange formats of the gradients in bf16 (``--grad-format``): fp32 (the gradient SRAM's
#: elements) or bf16 (``DescFlag.BF16``: half the link bytes; ``docs/numerics.md``).
GRAD_FORMATS = tuple(EXCHANGE_ELEMENT_BYTES)

NumberFormat = FixedPointFormat | BFloat16Format


@dataclass(frozen=True)
class TrainConfig:
    nodes: int = 2
    schedule: str = "priority"
    chunk_bytes: int | None = 512  #: None: automatic
    steps: int = 100
    #: three weight layers on the default preset's slow link: communication-bound, so
    #: priority's lower layers overtake the upper layers' remaining chunks (README.md);
    #: 91.9 % held-out accuracy after 100 steps
    layers: tuple[int, ...] = (64, 32, 32, 10)
    global_batch: int = 16
    learning_rate: float = 0.25
    seed: int = 0
    #: the device's number format: fixed point (``q5.10`` by default) or bf16
    number_format: NumberFormat = DEFAULT_FORMAT
    hardware: HardwareConfig = DEFAULT_HARDWARE
    #: bf16 only: the gradients' format on the link (:data:`GRAD_FORMATS`); None: fp32
    grad_format: str | None = None

    @property
    def fixed_point(self) -> NumberFormat:
        """:attr:`number_format` under its name from before bf16 (fixed point's readers)."""
        return self.number_format

    def validate(self) -> None:
        """Raise :class:`~gradsync.spec.limits.LimitError` (a ``ConfigError`` for the memory
        plan) naming the field and value of the first thing the device cannot run."""
        check_nodes(self.nodes)
        if not 1 <= self.steps <= MAX_STEPS:
            raise LimitError("steps", self.steps, f"in 1..{MAX_STEPS} (tags count steps mod 4096)")
        check_layers(tuple(self.layers))
        if self.global_batch < 1 or self.global_batch % self.nodes:
            raise LimitError(
                "global_batch", self.global_batch, f"a positive multiple of the {self.nodes} nodes"
            )
        if self.chunk_bytes is not None and (
            self.chunk_bytes <= 0 or self.chunk_bytes % rm.DMA_ALIGN_BYTES
        ):
            raise LimitError(
                "chunk_bytes",
                self.chunk_bytes,
                f"a positive multiple of {rm.DMA_ALIGN_BYTES} bytes",
                label="chunk size",
            )
        if not isinstance(self.schedule, str) or not self.schedule.strip():
            raise LimitError("schedule", self.schedule, "a schedule name or path/file.py:Class")
        fmt = self.number_format
        self._check_format()
        align = exchange_align(self.exchange_format)
        if self.chunk_bytes is not None and self.chunk_bytes % align:
            raise LimitError(
                "chunk_bytes",
                self.chunk_bytes,
                f"a multiple of {align} bytes (two fp32 elements) with --grad-format bf16",
                label="chunk size",
            )
        self.hardware.check_carriable()
        # the firmware plans the same layout from the device's size registers at start;
        # checking here refuses an impossible configuration before a backend is built
        lay = plan_memory_for(
            fmt,
            tuple(self.layers),
            self.global_batch // self.nodes,
            self.hardware.scratchpad_words,
            self.hardware.gradient_words,
            self.exchange_format,
        )
        # and asks the schedule about every send of the run the firmware will ask it about
        sched, element = load_schedule(self.schedule), fmt.grad_bytes
        bf16 = self.exchange_format == "bf16"
        chunk = self.chunk_bytes or auto_chunk_bytes(self.hardware.link, element, bf16=bf16)
        chunk = schedule_chunk_bytes(sched, chunk, element)
        check_chunk_bytes(chunk, self.hardware.gradient_words * fmt.word_bytes, align)
        check_schedule(sched, tuple(lay.grad_bytes[1:]), chunk, self.nodes, self.steps, align)

    @property
    def exchange_format(self) -> str:
        """The gradients' format on the link: :attr:`grad_format`, fp32 when left out."""
        return self.grad_format or "fp32"

    def _check_format(self) -> None:
        """The learning rate in the device format, and the exchange format (bf16 only)."""
        fmt, lr = self.number_format, self.learning_rate
        if not is_float(fmt):
            check_learning_rate(lr, fmt)
            if self.grad_format is not None:
                raise LimitError(
                    "grad_format", self.grad_format, "left out with a fixed-point format"
                )
            return
        if not (math.isfinite(lr) and lr > 0 and fmt.dequantize_fp32(fmt.quantize_fp32(lr)) > 0):
            raise LimitError(
                "learning_rate",
                lr,
                f"a positive fp32 value ({fmt.accumulator.min_normal:g} or more)",
            )
        if self.grad_format not in (None, *GRAD_FORMATS):
            raise LimitError("grad_format", self.grad_format, " or ".join(GRAD_FORMATS))

    def to_dict(self) -> dict:
        """``results.json["config"]``'s run parameters (``docs/outputs.md``).

        A fixed-point run's dict is what it was before bf16 (its format in ``fixed_point``;
        sweeps hash it). A bf16 run's has ``fixed_point`` None, ``format`` (``name``
        ``bf16`` and its fields) and ``grad_format``.
        """
        d = asdict(self)
        fmt = d.pop("number_format")
        d.pop("grad_format")
        d["layers"] = list(self.layers)
        d["chunk_bytes"] = "auto" if self.chunk_bytes is None else self.chunk_bytes
        if not is_float(self.number_format):
            d["fixed_point"] = fmt
            return d
        d["fixed_point"] = None
        d["format"] = self.number_format.to_dict()
        d["grad_format"] = self.grad_format or "fp32"
        return d


@dataclass
class BackendResult:
    nodes: list[NodeResult]
    #: (node, step, layer) -> raw weights at the start of ``step`` (step == steps: final)
    weights: dict[tuple[int, int, int], np.ndarray]
    total_cycles: int


Backend = Callable[[TrainConfig, list[NodeJob]], BackendResult]


@dataclass
class StepMetrics:
    step: int
    loss: float
    accuracy: float
    start_cycle: int
    cycles: int
    layer1_ready_cycle: int
    exposed_comm_cycles: int
    batch_indices: list[list[int]]


@dataclass
class RunResult:
    config: TrainConfig
    data: digits.Digits
    steps: list[StepMetrics]
    weights: list[list[np.ndarray]]  #: [step][layer-1] raw, step 0..steps
    records: list[list[rm.TraceRecord]]
    total_cycles: int
    wall_seconds: float
    chunk_bytes: int
    intervals: list[Interval] = field(default_factory=list)  #: paired trace records, all nodes


def init_weights(layers: tuple[int, ...], seed: int) -> list[np.ndarray]:
    """Glorot-uniform float weights (quantised by the firmware with the device format)."""
    rng = np.random.default_rng(seed)
    out = []
    for n_in, n_out in zip(layers[:-1], layers[1:], strict=True):
        limit = np.sqrt(6.0 / (n_in + n_out))
        out.append(rng.uniform(-limit, limit, size=(n_in, n_out)))
    return out


def build_jobs(
    cfg: TrainConfig, data: digits.Digits
) -> tuple[list[NodeJob], list[list[np.ndarray]]]:
    cfg.validate()
    if cfg.layers[0] != data.features or cfg.layers[-1] != data.classes:
        rule = f"{data.features} inputs first and {data.classes} outputs last for digits"
        raise LimitError("layers", ",".join(map(str, cfg.layers)), rule)
    batches = digits.batch_indices(data, cfg.seed, cfg.steps, cfg.global_batch, cfg.nodes)
    weights = init_weights(cfg.layers, cfg.seed)
    jobs = []
    for node in range(cfg.nodes):
        jobs.append(
            NodeJob(
                layers=tuple(cfg.layers),
                steps=cfg.steps,
                global_batch=cfg.global_batch,
                learning_rate=cfg.learning_rate,
                schedule=load_schedule(cfg.schedule),
                chunk_bytes=cfg.chunk_bytes,
                init_weights=weights,
                inputs=[data.x[b[node]] * digits.INPUT_SCALE for b in batches],
                labels=[data.y[b[node]] for b in batches],
                link=cfg.hardware.link,
                grad_format=cfg.exchange_format,
            )
        )
    return jobs, batches


@dataclass(frozen=True)
class Interval:
    node: int
    engine: int
    kind: int
    tag: int
    start: int
    end: int
    aux: int

    @property
    def layer(self) -> int:
        return rm.decode_tag(self.tag)[0]

    @property
    def chunk(self) -> int:
        return rm.decode_tag(self.tag)[1]

    @property
    def step(self) -> int:
        return rm.decode_tag(self.tag)[2]


def intervals(records: list[rm.TraceRecord], node: int) -> list[Interval]:
    """Pair START/END records per engine (each engine's activities end in start order).

    The receiver writes one END record per packet, in the cycle the packet is
    applied; its interval is the payload streaming into memory, one 32-bit
    word per cycle, ending there.
    """
    open_: dict[int, list[rm.TraceRecord]] = {}
    out = []
    for r in sorted(records, key=lambda r: r.cycle):
        if r.engine == rm.Engine.NIC_RX and r.event == rm.TraceEvent.END:
            words = max(1, -(-r.aux // rm.DMA_ALIGN_BYTES))
            out.append(Interval(node, r.engine, r.kind, r.tag, r.cycle - words, r.cycle, r.aux))
        elif r.event == rm.TraceEvent.START:
            open_.setdefault(r.engine, []).append(r)
        elif r.event == rm.TraceEvent.END:
            starts = open_.get(r.engine)
            if starts:
                s = starts.pop(0)
                out.append(Interval(node, r.engine, s.kind, s.tag, s.cycle, r.cycle, r.aux))
    return out


def _union_length(spans: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    clipped = sorted((max(a, lo), min(b, hi)) for a, b in spans if b > lo and a < hi)
    merged: list[tuple[int, int]] = []
    for a, b in clipped:
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def exposed(comm: list[tuple[int, int]], compute: list[tuple[int, int]], lo: int, hi: int) -> int:
    """Cycles in [lo, hi) with communication active and compute idle."""
    c = _union_length(comm, lo, hi)
    busy = _union_length(compute, lo, hi)
    total = 0
    for a, b in c:
        length = b - a
        for x, y in busy:
            length -= max(0, min(b, y) - max(a, x))
        total += length
    return total


COMM_ENGINES = (rm.Engine.DMA_HI, rm.Engine.DMA_LO, rm.Engine.NIC_TX, rm.Engine.NIC_RX)
COMPUTE_ENGINES = (rm.Engine.COMPUTE, rm.Engine.VECTOR)


def step_timing(
    all_intervals: list[Interval], steps: int, nodes: int
) -> list[tuple[int, int, int, int]]:
    """(start, cycles, layer1_ready, exposed_comm) per step from the trace intervals."""
    loads: dict[int, list[int]] = {}
    #: step -> node -> end of the node's last layer-1 update command (bf16: SGD, then SCALE)
    ready: dict[int, dict[int, int]] = {}
    comm: dict[int, list[tuple[int, int]]] = {n: [] for n in range(nodes)}
    comp: dict[int, list[tuple[int, int]]] = {n: [] for n in range(nodes)}
    input_tags = {rm.encode_tag(0, 0, k): k for k in range(steps)}
    for iv in all_intervals:
        if iv.engine == rm.Engine.HOST and iv.kind == rm.Kind.LOAD and iv.tag in input_tags:
            loads.setdefault(input_tags[iv.tag], []).append(iv.start)
        elif iv.kind == rm.Kind.UPDATE and iv.layer == 1 and iv.engine == rm.Engine.VECTOR:
            per_node = ready.setdefault(iv.step, {})
            per_node[iv.node] = max(per_node.get(iv.node, iv.end), iv.end)
        if iv.engine in COMM_ENGINES:
            comm[iv.node].append((iv.start, iv.end))
        elif iv.engine in COMPUTE_ENGINES:
            comp[iv.node].append((iv.start, iv.end))
    starts = []
    for k in range(steps):
        if len(loads.get(k, [])) != nodes:
            raise IncompleteTraceError(f"trace lacks the input load of step {k} on some node")
        starts.append(min(loads[k]))
    end_all = max(iv.end for iv in all_intervals)
    longest = 0
    for n in range(nodes):
        for spans in (comm[n], comp[n]):
            spans.sort()
            longest = max([longest] + [b - a for a, b in spans])
    out = []
    for k in range(steps):
        lo = starts[k]
        hi = starts[k + 1] if k + 1 < steps else end_all
        r = ready.get(k % MAX_STEPS, {})
        if len(r) != nodes:
            raise IncompleteTraceError(
                f"trace lacks the layer-1 update of step {k} on {nodes - len(r)} node(s)"
            )
        l1 = max(r.values()) - lo
        worst = 0
        for n in range(nodes):
            worst = max(
                worst,
                exposed(
                    _window(comm[n], lo, hi, longest), _window(comp[n], lo, hi, longest), lo, hi
                ),
            )
        out.append((lo, hi - lo, l1, worst))
    return out


def _window(spans: list[tuple[int, int]], lo: int, hi: int, longest: int) -> list[tuple[int, int]]:
    """Sorted spans that may touch [lo, hi); none is longer than ``longest``."""
    import bisect

    i = bisect.bisect_left(spans, (lo - longest, 0))
    j = bisect.bisect_left(spans, (hi, 0))
    return spans[i:j]


class IncompleteTraceError(RuntimeError):
    """A trace lost records or lacks an event every step has: no metric is computed from it."""


def check_trace_complete(res: BackendResult) -> None:
    """Raise :class:`IncompleteTraceError` if a node's trace buffer dropped records."""
    lost = [(node, nr.trace_drops) for node, nr in enumerate(res.nodes) if nr.trace_drops]
    if lost:
        where = ", ".join(f"node {node} lost {n} record(s)" for node, n in lost)
        raise IncompleteTraceError(
            f"the hardware trace is incomplete ({where}: TRACE_DROPS); "
            "no metric is computed from it"
        )


def weight_values(raw: np.ndarray, fmt: NumberFormat) -> np.ndarray:
    """Weights as the device holds them (scratchpad words) -> float64 values (exact).

    Fixed point: ``raw * 2**-frac_bits``; bf16: the working copy's bf16 words.
    """
    if is_float(fmt):
        return fmt.dequantize(raw)
    return raw.astype(np.float64) * 2.0**-fmt.frac_bits


def forward_accuracy(weights: list[np.ndarray], fmt: NumberFormat, data: digits.Digits) -> float:
    """Held-out accuracy: float64 forward of the dequantised weights on the test split."""
    x = data.x[data.test_indices] * digits.INPUT_SCALE
    h = x
    for i, w in enumerate(weights):
        h = h @ weight_values(w, fmt)
        if i < len(weights) - 1:
            h = np.maximum(h, 0.0)
    return float((h.argmax(axis=1) == data.y[data.test_indices]).mean())


@dataclass
class Prepared:
    """A validated configuration's data split, per-node jobs and batches (:func:`prepare`)."""

    data: digits.Digits
    jobs: list[NodeJob]
    batches: list[list[np.ndarray]]


def prepare(cfg: TrainConfig) -> Prepared:
    """Validate ``cfg`` (limits, data shape, schedule) and build its jobs: nothing runs yet.

    Raises ``ValueError`` (:class:`~gradsync.spec.limits.LimitError`, ``ConfigError``
    or the schedule loader's) for a configuration that cannot run.
    """
    cfg.validate()
    data = digits.load(cfg.seed)
    jobs, batches = build_jobs(cfg, data)
    return Prepared(data, jobs, batches)


def run(
    cfg: TrainConfig,
    backend: Backend,
    on_step: Callable[[StepMetrics], None] | None = None,
    prepared: Prepared | None = None,
) -> RunResult:
    """Train ``cfg`` on ``backend``; raise if the nodes' weights ever differ.

    ``prepared``: what :func:`prepare` returned for ``cfg`` (default: prepared here).
    """
    p = prepared or prepare(cfg)
    data, jobs, batches = p.data, p.jobs, p.batches
    t0 = time.perf_counter()
    res = backend(cfg, jobs)
    wall = time.perf_counter() - t0
    nl = len(cfg.layers) - 1
    weights: list[list[np.ndarray]] = []
    for k in range(cfg.steps + 1):
        per_layer = []
        for layer in range(1, nl + 1):
            ref = res.weights[(0, k, layer)]
            for node in range(1, cfg.nodes):
                if not np.array_equal(res.weights[(node, k, layer)], ref):
                    raise RuntimeError(
                        f"node {node} holds different layer-{layer} weights than node 0 at step {k}"
                    )
            per_layer.append(ref.reshape(cfg.layers[layer - 1], cfg.layers[layer]))
        weights.append(per_layer)
    check_trace_complete(res)
    ivs = [iv for node, nr in enumerate(res.nodes) for iv in intervals(nr.records, node)]
    timing = step_timing(ivs, cfg.steps, cfg.nodes)
    metrics = []
    for k in range(cfg.steps):
        loss = sum(nr.losses[k] for nr in res.nodes) / cfg.global_batch
        start, cycles, l1, exp = timing[k]
        m = StepMetrics(
            step=k,
            loss=loss,
            accuracy=forward_accuracy(weights[k + 1], cfg.number_format, data),
            start_cycle=start,
            cycles=cycles,
            layer1_ready_cycle=l1,
            exposed_comm_cycles=exp,
            batch_indices=[b.tolist() for b in batches[k]],
        )
        metrics.append(m)
        if on_step is not None:
            on_step(m)
    return RunResult(
        cfg,
        data,
        metrics,
        weights,
        [nr.records for nr in res.nodes],
        res.total_cycles,
        wall,
        res.nodes[0].chunk_bytes,
        ivs,
    )
