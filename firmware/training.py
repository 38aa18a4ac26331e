"""The training program one node's firmware runs: forward, loss, backward, exchange, update.

Per step and node (``DESIGN.md``, "The idea being modelled"):

1. load the node's shard of the global batch; forward GEMM + relu per layer
   (layer l waits only for its own update of the previous step);
2. dump the logits, compute softmax cross-entropy and its gradient on the host
   (the only host arithmetic), load the quantised, loss-scaled dZ;
3. backward from the top: ``dW_l = A_{l-1}^T dZ_l`` into gradient SRAM, then
   ``dA_{l-1} = dZ_l W_l^T`` and the relu mask;
4. exchange each layer's gradient chunks with the peers as the schedule
   decides (descriptors, RX windows), and apply SGD on the device once a
   layer is reduced.

RX windows and steps (``docs/comm.md``, "Receiver not ready").  A chunk's
window is opened once, with the tag of step -1; after each SGD update of a
layer (step k-1) its windows are reopened for step k but keep their TAG of
step k-1, and only once this node's own dW of step k has written the local
gradient G (the reduce-add's source) is WINn_TAG set to step k.  A peer's
step-k packet that comes earlier is held by the receiver, not applied to the
stale G nor refused.  The hold cannot deadlock because of the send-side step
barrier: no send of step k is posted while a send of step k-1 is outstanding
(:meth:`NodeFirmware._pump`), so on every link all step k-1 packets precede
all step k packets.  Take the lowest step s any receiver holds a packet of,
at node X: (a) every step s-1 packet X needs came before it on the same link
and is applied, so X completes its step s-1 updates, forward and backward;
(b) X's own step s-1 sends, which X's dW of step s waits for, go to X+1,
whose receiver holds nothing of X's (X posts no step-s send before they are
done, and X+1 holds nothing older than s), so they complete; hence X's dW of
step s ends, X writes the TAG and the packet is applied.  This holds whatever
order a schedule gives the sends within a step (e.g. top layers first).

Loss scaling (fixed point): the host loads ``dZ * 2**s`` with ``s =
floor(log2(global batch))`` so the 1/batch factor does not eat the operand's
fractional bits; the dA GEMMs keep the scale and the dW GEMMs shift it out
(CMD_ARG = s).  bf16 needs no loss scaling (``s = 0``): a power of two changes
no significant bit of a floating-point number.

Number formats (``docs/numerics.md``, "Where each format lives").  In fixed
point every element is one operand word.  In bf16 the scratchpad holds bf16
words (inputs, activations, dZ/dA and the weights' bf16 working copy, which
the GEMMs read) and the gradient SRAM fp32 elements of two words each (dW, the
reduced gradients and the fp32 master weights).  A layer's update is then two
commands: ``SGD`` on the master weights (A = C = W32, B = the reduced G), and
``SCALE`` by 1.0 from W32 into the working copy (fp32 -> bf16, round to
nearest even).  Gradient buffers, chunks, descriptors and RX windows count
bytes of gradient elements (``fmt.grad_bytes``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gradsync.firmware.collectives import ChunkPlan, chunk_plan
from gradsync.firmware.device import Device
from gradsync.firmware.driver import Driver
from gradsync.firmware.schedules import (
    Schedule,
    SendTask,
    call_priority,
    call_queue,
    check_attributes,
    check_tasks,
    release_groups,
    schedule_chunk_bytes,
    sort_by_priority,
)
from gradsync.spec import regmap as rm
from gradsync.spec.formats import BFloat16Format, FixedPointFormat, is_float
from gradsync.spec.link import LinkConfig, auto_chunk_bytes

#: ``SCALE``'s argument in bf16: the fp32 word of 1.0 (a pure fp32 -> bf16 conversion).
FP32_ONE = 0x3F80_0000


class ConfigError(ValueError):
    """A training configuration the device cannot run; the message names the value."""


class TraceOverflowError(RuntimeError):
    """The trace buffer dropped records (``TRACE_DROPS``): the run's metrics would be wrong."""


class MemoryPlanError(ConfigError):
    """The layers and batch do not fit the device's SRAMs (a larger hardware preset may)."""


@dataclass
class NodeResult:
    losses: list[float]  #: summed cross-entropy of the node's shard, per step
    records: list[rm.TraceRecord]  #: the hardware trace as read by the firmware
    chunk_bytes: int
    trace_drops: int = 0  #: TRACE_DROPS at the last drain (the firmware stops if not 0)


@dataclass
class Observer:
    """Host-side hooks a backend may provide (zero-cost backdoor reads for the record).

    ``weights`` may return an awaitable (the RTL backend's debug-port read),
    which the firmware awaits; it must take no device cycles.
    """

    weights: Callable[[int, int, int, int], None] = lambda step, layer, addr, n: None
    loss: Callable[[int, int, float], None] = lambda step, node, loss_sum: None


@dataclass
class NodeJob:
    """Everything one node's firmware needs for a run."""

    layers: tuple[int, ...]
    steps: int
    global_batch: int
    learning_rate: float
    schedule: Schedule
    chunk_bytes: int | None  #: None: automatic (see gradsync.spec.link.auto_chunk_bytes)
    init_weights: list[np.ndarray]  #: float64 (in_l, out_l) per layer
    inputs: list[np.ndarray]  #: per step, float64 (local batch, features)
    labels: list[np.ndarray]  #: per step, int (local batch,)
    observer: Observer = field(default_factory=Observer)
    #: ``"interrupt"``: drain the trace also when it is half full (``Irq.TRACE``) and stop
    #: with :class:`TraceOverflowError` if records were dropped; ``"step"``: drain only at
    #: the start of a step and report drops in ``NodeResult.trace_drops`` (to study the
    #: trace buffer's drops; ``experiment.run`` computes no metric from such a trace)
    trace_drain: str = "interrupt"
    #: the link to run on, set at start-up (``LINK_SET``) unless the device's already is it;
    #: ``None``: the device's link as built
    link: LinkConfig | None = None
    #: the gradients' format on the link (``--grad-format``): ``"fp32"``, or ``"bf16"`` (a bf16
    #: device only): every gradient send carries ``DescFlag.BF16`` (``docs/numerics.md``)
    grad_format: str = "fp32"


def exchange_align(grad_format: str) -> int:
    """Bytes every chunk and send is a multiple of: ``BF16_LENGTH_ALIGN_BYTES`` (two fp32
    elements, one payload word) with a bf16 exchange, else ``DMA_ALIGN_BYTES``."""
    return rm.BF16_LENGTH_ALIGN_BYTES if grad_format == "bf16" else rm.DMA_ALIGN_BYTES


def _align(n_bytes: int, a: int = rm.DMA_ALIGN_BYTES) -> int:
    return -(-n_bytes // a) * a


@dataclass
class MemoryLayout:
    """Byte addresses of every buffer, indexed by layer (index 0 unused where noted)."""

    w: list[int]
    act: list[int]  # act[0] = input X, act[l] = A_l
    dz: list[int]  # dz[l] gradient wrt layer l's output (l = 1..L)
    g: list[int]
    r: list[int]
    grad_bytes: list[int]  # padded bytes of each layer's gradient buffer
    grad_window_bytes: int
    #: master[l]: layer l's fp32 master weights in the gradient SRAM (bf16; empty in fixed
    #: point), after the gradient buffers, outside the DMA window
    master: list[int] = field(default_factory=list)


def plan_memory(
    layers: tuple[int, ...],
    local_batch: int,
    word_bytes: int,
    scratch_words: int,
    grad_words: int,
    grad_bytes: int | None = None,
    master_weights: bool = False,
    grad_align: int = rm.DMA_ALIGN_BYTES,
) -> MemoryLayout:
    """Place weights, activations and gradients; raise ConfigError if they do not fit.

    ``word_bytes``: bytes of a scratchpad element and of an SRAM word (both banks);
    ``grad_bytes``: bytes of a gradient-SRAM element (default ``word_bytes``; 4 in
    bf16); ``master_weights``: also place each layer's master weights (``grad_bytes``
    per element) in the gradient SRAM.  ``scratch_words``/``grad_words`` count SRAM words.
    Each layer's gradient buffers are padded to a multiple of ``grad_align`` bytes (8 for
    a bf16 exchange, :func:`exchange_align`); the pad is never written, so stays zero
    (a bf16 exchange of zeros reduces to zeros).
    """
    elem = word_bytes if grad_bytes is None else grad_bytes
    nl = len(layers) - 1
    sp = 0

    def take(words: int) -> int:
        nonlocal sp
        addr = rm.SCRATCH_BASE + sp * word_bytes
        sp += -(-words * word_bytes // rm.DMA_ALIGN_BYTES) * rm.DMA_ALIGN_BYTES // word_bytes
        return addr

    w = [0] + [take(layers[i] * layers[i + 1]) for i in range(nl)]
    act = [take(local_batch * layers[i]) for i in range(nl + 1)]
    dz = [0] + [take(local_batch * layers[i + 1]) for i in range(nl)]
    if sp > scratch_words:
        widest = max(layers)
        raise MemoryPlanError(
            f"layers {','.join(map(str, layers))} (widest {widest}) with a local batch of "
            f"{local_batch} need {sp} scratchpad words but the device has {scratch_words}"
        )
    gp = 0
    g, r, grad_bytes = [0], [0], [0]
    for i in range(nl):
        nb = _align(layers[i] * layers[i + 1] * elem, grad_align)
        grad_bytes.append(nb)
        g.append(rm.GRAD_BASE + gp)
        r.append(rm.GRAD_BASE + gp + nb)
        gp += 2 * nb
    window, master = gp, []
    if master_weights:
        master = [0]
        for i in range(nl):
            master.append(rm.GRAD_BASE + gp)
            gp += grad_bytes[i + 1]
    if gp > grad_words * word_bytes:
        what = " (gradients and fp32 master weights)" if master_weights else ""
        raise MemoryPlanError(
            f"layers {','.join(map(str, layers))} need {gp // word_bytes} gradient SRAM "
            f"words{what} but the device has {grad_words}"
        )
    return MemoryLayout(w, act, dz, g, r, grad_bytes, window, master)


def plan_memory_for(
    fmt: FixedPointFormat | BFloat16Format,
    layers: tuple[int, ...],
    local_batch: int,
    scratch_words: int,
    grad_words: int,
    grad_format: str = "fp32",
) -> MemoryLayout:
    """:func:`plan_memory` for a device of format ``fmt`` (bf16: fp32 gradients and masters)
    exchanging its gradients in ``grad_format`` (bf16: buffers padded to 8 bytes)."""
    return plan_memory(
        layers,
        local_batch,
        fmt.word_bytes,
        scratch_words,
        grad_words,
        fmt.grad_bytes,
        master_weights=is_float(fmt),
        grad_align=exchange_align(grad_format),
    )


def split_chunks(n_bytes: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """(offset, length) chunks of a layer's gradient buffer."""
    out, off = [], 0
    while off < n_bytes:
        n = min(chunk_bytes, n_bytes - off)
        out.append((off, n))
        off += n
    return out


@dataclass
class _ChunkState:
    layer: int
    chunk: int
    window: int
    offset: int
    length: int
    plan: ChunkPlan
    level: int = 0  # bytes known to be received
    threshold_index: int = 0
    released: bool = False
    pending: list = field(default_factory=list)  # planned sends not yet handed to the schedule


class NodeFirmware:
    """One node's training program.  ``await run()`` performs the whole job.

    Interrupt callbacks only record work; :meth:`_flush` performs it (MMIO,
    descriptors, update commands) after every serviced interrupt.
    """

    def __init__(self, dev: Device, job: NodeJob) -> None:
        self.dev = dev
        self.job = job
        self.drv = Driver(dev)
        self.drv.after_service = self._flush
        self.sched = job.schedule
        self.nl = len(job.layers) - 1
        self.updated = [0] * (self.nl + 1)  # completed updates per layer
        self.sends_outstanding = [0] * (self.nl + 1)
        self.reduced_layers: set[int] = set()
        self.grad_ready: set[int] = set()
        self.tagged: set[int] = set()  # layers whose windows carry this step's tag
        self._tag_due: list[int] = []  # layers whose dW is done: write their windows' TAGs
        self.step_sends: dict[int, int] = {}  # sends enqueued and not done, per step
        self.buffer: list[tuple[tuple, SendTask, rm.Descriptor]] = []
        self.inflight: list[list[SendTask]] = [[] for _ in range(rm.DMA_QUEUES)]
        self.ready_seq = 0
        self.step_chunks: dict[int, _ChunkState] = {}
        self.chunks_left = [0] * (self.nl + 1)
        self.exchange_step = 0
        self.records: list[rm.TraceRecord] = []
        self.losses: list[float] = []
        self._arm: list[tuple[int, int]] = []
        self._to_update: list[int] = []
        self._reopen: list[tuple[int, int]] = []
        self._flushing = False
        self._drain_due = False
        if job.trace_drain not in ("interrupt", "step"):
            raise ConfigError(f"trace_drain must be 'interrupt' or 'step', not {job.trace_drain!r}")
        if job.trace_drain == "interrupt":
            self.drv.irq_enabled |= int(rm.Irq.TRACE)
            self.drv.on_trace = self._trace_half_full

    # ----------------------------------------------------------------- setup
    async def run(self) -> NodeResult:
        job, drv = self.job, self.drv
        if job.steps < 0:
            raise ConfigError(f"steps must be >= 0, not {job.steps}")
        local_batch = len(job.labels[0]) if job.labels else 1
        info = await drv.init(0)
        if job.link is not None and job.link != info.link:
            info = await drv.set_link(job.link)
        self.fmt = info.fmt
        self.trace_depth = info.trace_depth
        self.node, self.nodes = info.node_id, info.num_nodes
        self.float = is_float(info.fmt)
        self.bf16_exchange = check_grad_format(job.grad_format, info.fmt)
        self.align = exchange_align(job.grad_format)
        self.lay = plan_memory_for(
            info.fmt, job.layers, local_batch, info.scratch_words, info.grad_words, job.grad_format
        )
        k_limit = getattr(info.fmt, "max_exact_k", None)  # fp32 accumulation never wraps
        widths = [(w, "layer width") for w in job.layers] + [(local_batch, "local batch")]
        for k_dim, what in widths:
            if k_limit is not None and k_dim > k_limit:
                raise ConfigError(
                    f"{what} {k_dim} exceeds the {k_limit}-term sums the {info.fmt.acc_bits}-bit "
                    "accumulator holds exactly"
                )
        for qi in range(rm.DMA_QUEUES):
            await self.dev.write32(rm.dma_reg(qi, "WIN_LEN"), self.lay.grad_window_bytes)
        check_attributes(self.sched)
        chunk = job.chunk_bytes
        if chunk is None:
            chunk = auto_chunk_bytes(info.link, info.fmt.grad_bytes, bf16=self.bf16_exchange)
        chunk = schedule_chunk_bytes(self.sched, chunk, info.fmt.grad_bytes)
        check_chunk_bytes(chunk, info.grad_words * info.fmt.word_bytes, self.align)
        self.chunk_bytes = chunk
        self.chunks = [[]] + [
            split_chunks(self.lay.grad_bytes[i], chunk) for i in range(1, self.nl + 1)
        ]
        total_chunks = sum(len(c) for c in self.chunks)
        if self.nodes > 1 and total_chunks > info.rx_windows:
            raise ConfigError(
                f"chunk size {chunk} bytes cuts the gradients into {total_chunks} chunks but the "
                f"device has {info.rx_windows} RX windows; use larger chunks"
            )
        self.groups = release_groups(self.sched, tuple(self.lay.grad_bytes[1:]))
        check_schedule(
            self.sched, tuple(self.lay.grad_bytes[1:]), chunk, self.nodes, job.steps, self.align
        )
        self.window_of = {}
        for i in range(1, self.nl + 1):
            for c in range(len(self.chunks[i])):
                self.window_of[(i, c)] = len(self.window_of)
        self.s = 0 if self.float else int(math.floor(math.log2(job.global_batch)))
        lr = np.array([job.learning_rate])
        self.lr_raw = int((self.fmt.quantize_fp32 if self.float else self.fmt.quantize)(lr)[0])
        if self.lr_raw == 0:
            raise ConfigError(f"learning rate {job.learning_rate} rounds to 0 in the device format")
        drv.on_dma_done = self._dma_done
        drv.on_rx_done = self._rx_done
        for i in range(1, self.nl + 1):
            await drv.write("HOST_TAG", self._tag(i, 0, 0))
            await self._load_weights(i, job.init_weights[i - 1])
        for i in range(1, self.nl + 1):
            await self._open_windows(i, 0, first=True)
        for step in range(job.steps):
            await self._step(step)
        await drv.wait_until(
            lambda: all(self.updated[i] >= job.steps for i in range(1, self.nl + 1))
        )
        await drv.wait_until(lambda: not any(self.sends_outstanding))
        for i in range(1, self.nl + 1):
            await _observe(
                job.observer.weights(job.steps, i, self.lay.w[i], job.layers[i - 1] * job.layers[i])
            )
        await self._drain()
        # an error raised after the last interrupt waited for (e.g. a stray packet refused by
        # the receiver) would otherwise go unreported: the earlier ones stopped the run at once
        await drv.check_errors()
        return NodeResult(self.losses, self.records, self.chunk_bytes, drv.trace_drops)

    async def _load_weights(self, layer: int, values: np.ndarray) -> None:
        """Load ``layer``'s initial weights (float64): fixed point, quantised, into the
        scratchpad; bf16, the fp32 master weights into the gradient SRAM and their bf16
        rounding (what ``SCALE`` by 1.0 makes of them) as the working copy."""
        fmt = self.fmt
        if not self.float:
            await self.dev.load(self.lay.w[layer], fmt.quantize(values).reshape(-1))
            return
        master = fmt.quantize_fp32(values).reshape(-1)
        await self.dev.load(self.lay.master[layer], fmt.split_fp32(master))
        await self.dev.load(self.lay.w[layer], fmt.quantize(fmt.dequantize_fp32(master)))

    # ------------------------------------------------------------------ step
    def _tag(self, layer: int, chunk: int, step: int) -> int:
        return rm.encode_tag(layer, chunk, step)

    async def _step(self, k: int) -> None:
        job, drv, lay, top = self.job, self.drv, self.lay, self.nl
        await drv.wait_until(lambda: self.updated[1] >= k)
        if await drv.read("TRACE_COUNT") >= self.trace_depth // 4:
            await self._drain()
        x = self.fmt.quantize(job.inputs[k])
        b = x.shape[0]
        await drv.write("HOST_TAG", self._tag(0, 0, k))
        await self.dev.load(lay.act[0], x.reshape(-1))
        last = 0
        for i in range(1, top + 1):
            await drv.wait_until(lambda i=i: self.updated[i] >= k)
            await _observe(job.observer.weights(k, i, lay.w[i], job.layers[i - 1] * job.layers[i]))
            n_in, n_out = job.layers[i - 1], job.layers[i]
            last = await drv.launch(
                rm.Opcode.GEMM,
                lay.act[i - 1],
                lay.w[i],
                lay.act[i],
                b,
                n_in,
                n_out,
                kind=rm.Kind.FWD,
                tag=self._tag(i, 0, k),
            )
            if i < top:
                last = await drv.launch(
                    rm.Opcode.RELU,
                    lay.act[i],
                    0,
                    lay.act[i],
                    b,
                    0,
                    n_out,
                    kind=rm.Kind.RELU,
                    tag=self._tag(i, 0, k),
                )
        await drv.wait_compute(last)
        n_cls = job.layers[-1]
        await drv.write("HOST_TAG", self._tag(top, 0, k))
        logits = self.fmt.dequantize(await self.dev.dump(lay.act[top], b * n_cls)).reshape(b, n_cls)
        loss_sum, dz = softmax_xent(logits, job.labels[k])
        self.losses.append(loss_sum)
        job.observer.loss(k, self.node, loss_sum)
        dz_scaled = dz / job.global_batch * float(1 << self.s)
        await self.dev.load(lay.dz[top], self.fmt.quantize(dz_scaled).reshape(-1))
        self.exchange_step = k
        self.grad_ready = set()
        self.tagged = set()
        self.reduced_layers = set()
        for i in range(top, 0, -1):
            # G_i is overwritten by this dW: the previous step's sends from it must be done
            await drv.wait_until(lambda i=i: self.sends_outstanding[i] == 0)
            n_in, n_out = job.layers[i - 1], job.layers[i]
            await drv.launch(
                rm.Opcode.GEMM,
                lay.act[i - 1],
                lay.dz[i],
                lay.g[i],
                n_in,
                b,
                n_out,
                arg=self.s,
                kind=rm.Kind.DW,
                tag=self._tag(i, 0, k),
                trans_a=True,
                on_done=lambda i=i: self._gradient_ready(i),
            )
            if i > 1:
                await drv.launch(
                    rm.Opcode.GEMM,
                    lay.dz[i],
                    lay.w[i],
                    lay.dz[i - 1],
                    b,
                    n_out,
                    n_in,
                    kind=rm.Kind.DA,
                    tag=self._tag(i - 1, 0, k),
                    trans_b=True,
                )
                await drv.launch(
                    rm.Opcode.RELU_BWD,
                    lay.dz[i - 1],
                    lay.act[i - 1],
                    lay.dz[i - 1],
                    b,
                    0,
                    n_in,
                    kind=rm.Kind.RELU_BWD,
                    tag=self._tag(i - 1, 0, k),
                )

    # ----------------------------------------------------------------- trace
    def _trace_half_full(self) -> None:
        self._drain_due = True

    async def _drain(self, block: int | None = None) -> None:
        """Read the waiting trace records (``block``: exactly that many, if they wait); stop
        with :class:`TraceOverflowError` if any was lost.

        Besides at the start of a step, the firmware drains when the trace
        buffer reports itself half full (``Irq.TRACE``), after the interrupt
        that said so, the oldest half of the buffer (a fixed block, so that
        both backends dump the same records whatever is being written): a
        buffer of ``TRACE_DEPTH`` records then loses none unless the engines
        write half of it while one interrupt is serviced.
        """
        self._drain_due = False
        self.records += await self.drv.drain_trace(block)
        drops = self.drv.trace_drops
        if drops and self.job.trace_drain == "interrupt":
            raise TraceOverflowError(
                f"node {self.node}: the trace buffer ({self.trace_depth} records) dropped "
                f"{drops} record(s) before the firmware read them (TRACE_DROPS); metrics "
                "computed from that trace would be wrong"
            )

    # -------------------------------------------------------- deferred work
    async def _flush(self) -> None:
        if self._flushing:
            return
        self._flushing = True
        try:
            while (
                self._drain_due
                or self._arm
                or self._to_update
                or self._reopen
                or self._tag_due
                or self._postable()
            ):
                if self._drain_due:
                    await self._drain(self.trace_depth // 2)
                while self._arm:
                    w, expect = self._arm.pop(0)
                    await self.drv.arm_window(w, expect)
                while self._to_update:
                    await self._launch_update(self._to_update.pop(0))
                while self._reopen:
                    await self._open_windows(*self._reopen.pop(0))
                while self._tag_due:  # after the reopen of the same step, before any post
                    await self._tag_windows(self._tag_due.pop(0))
                await self._pump()
        finally:
            self._flushing = False

    async def _launch_update(self, layer: int) -> None:
        job, lay = self.job, self.lay
        step = self.updated[layer]
        grads = lay.r[layer] if self.nodes > 1 else lay.g[layer]
        n = job.layers[layer - 1] * job.layers[layer]

        def done() -> None:
            self.updated[layer] += 1
            self._reopen.append((layer, self.updated[layer]))

        weights = lay.master[layer] if self.float else lay.w[layer]
        tag = self._tag(layer, 0, step)
        await self.drv.launch(
            rm.Opcode.SGD,
            weights,
            grads,
            weights,
            1,
            0,
            n,
            arg=self.lr_raw,
            kind=rm.Kind.UPDATE,
            tag=tag,
            on_done=None if self.float else done,
        )
        if self.float:  # the fp32 master weights -> the bf16 working copy the GEMMs read
            await self.drv.launch(
                rm.Opcode.SCALE,
                weights,
                0,
                lay.w[layer],
                1,
                0,
                n,
                arg=FP32_ONE,
                kind=rm.Kind.UPDATE,
                tag=tag,
                on_done=done,
            )

    # -------------------------------------------------------------- exchange
    async def _open_windows(self, layer: int, step: int, first: bool = False) -> None:
        """Open (``first``: with the tag of step -1) or reopen ``layer``'s windows for
        ``step``, their TAG left at step - 1 until the step's dW is done (module docstring)."""
        if self.nodes < 2 or step >= self.job.steps:
            return
        for c, (off, n) in enumerate(self.chunks[layer]):
            w = self.window_of[(layer, c)]
            plan = chunk_plan(self.node, self.nodes, n, self.align)
            self.step_chunks[w] = _ChunkState(layer, c, w, off, n, plan, pending=list(plan.sends))
            dst, src, expect = self.lay.r[layer] + off, self.lay.g[layer] + off, plan.thresholds[0]
            if first:
                tag = self._tag(layer, c, step - 1)
                await self.drv.open_window(w, dst, src, n, tag, expect)
            else:
                await self.drv.reopen_window(w, dst, src, n, expect)
        self.chunks_left[layer] = len(self.chunks[layer])

    def _gradient_ready(self, layer: int) -> None:
        self.grad_ready.add(layer)
        if self.nodes < 2:
            self._layer_reduced(layer)
            return
        self._tag_due.append(layer)

    async def _tag_windows(self, layer: int) -> None:
        """G of ``layer`` holds this step's gradient: let its windows take this step's packets
        (one TAG write per chunk), then release the layer's sends."""
        k = self.exchange_step
        for c in range(len(self.chunks[layer])):
            await self.drv.set_window_tag(self.window_of[(layer, c)], self._tag(layer, c, k))
        self.tagged.add(layer)
        for group in self.groups:  # a group's layers go together, in the group's order
            if layer in group and all(g in self.tagged for g in group):
                for g in group:
                    self._release(g)

    def _release(self, layer: int) -> None:
        for c in range(len(self.chunks[layer])):
            st = self.step_chunks[self.window_of[(layer, c)]]
            st.released = True
            self._release_ready(st)

    def _release_ready(self, st: _ChunkState) -> None:
        if not st.released:
            return
        keep = []
        for ps in st.pending:
            if ps.prereq <= st.level:
                self._enqueue(st, ps)
            else:
                keep.append(ps)
        st.pending = keep

    def _enqueue(self, st: _ChunkState, ps) -> None:
        k = self.exchange_step
        task = SendTask(k, st.layer, st.chunk, ps.phase, ps.length, self.ready_seq, self.nl)
        self.ready_seq += 1
        base = self.lay.r[st.layer] if ps.from_recv else self.lay.g[st.layer]
        flags = rm.DescFlag.IRQ | (rm.DescFlag.REDUCE_ADD if ps.reduce else 0)
        if self.bf16_exchange:
            flags |= rm.DescFlag.BF16
        desc = rm.Descriptor(
            src_addr=base + st.offset + ps.offset,
            length=ps.length,
            peer=(self.node + 1) % self.nodes,
            remote_addr=self.lay.r[st.layer] + st.offset + ps.offset,
            window=st.window,
            tag=self._tag(st.layer, st.chunk, k),
            flags=int(flags),
        )
        self.sends_outstanding[st.layer] += 1
        self.step_sends[k] = self.step_sends.get(k, 0) + 1
        self.buffer.append((call_priority(self.sched, task), task, desc))

    def _may_post(self, task: SendTask) -> bool:
        """The step barrier: a send waits while a send of an earlier step is outstanding."""
        return task.step == min(self.step_sends)

    def _postable(self) -> bool:
        return any(
            len(self.inflight[call_queue(self.sched, t)]) < self.sched.max_inflight
            and self._may_post(t)
            for _k, t, _d in self.buffer
        )

    async def _pump(self) -> None:
        """Post buffered sends to the hardware queues, best first, within the in-flight limit,
        never one of step k while one of step k-1 is outstanding (module docstring)."""
        while self.buffer:
            sort_by_priority(self.sched, self.buffer)
            for i, (_key, task, desc) in enumerate(self.buffer):
                q = call_queue(self.sched, task)
                if (
                    len(self.inflight[q]) < self.sched.max_inflight
                    and self.drv.ring_free(q) > 0
                    and self._may_post(task)
                ):
                    del self.buffer[i]
                    self.inflight[q].append(task)
                    await self.drv.post(q, desc)
                    break
            else:
                return

    def _dma_done(self, queue: int, count: int) -> None:
        for _ in range(count):
            task = self.inflight[queue].pop(0)
            self.sends_outstanding[task.layer] -= 1
            self.step_sends[task.step] -= 1
            if not self.step_sends[task.step]:
                del self.step_sends[task.step]

    def _rx_done(self, window: int) -> None:
        st = self.step_chunks[window]
        thresholds = st.plan.thresholds
        st.level = thresholds[st.threshold_index]
        st.threshold_index += 1
        self._release_ready(st)
        if st.threshold_index < len(thresholds):
            self._arm.append((window, thresholds[st.threshold_index]))
            return
        self.chunks_left[st.layer] -= 1
        if self.chunks_left[st.layer] == 0:
            self._layer_reduced(st.layer)

    def _layer_reduced(self, layer: int) -> None:
        self.reduced_layers.add(layer)
        if self.sched.early_update:
            self._to_update.append(layer)
        elif len(self.reduced_layers) == self.nl:
            self._to_update.extend(range(1, self.nl + 1))


async def _observe(result) -> None:
    if inspect.isawaitable(result):
        await result


def schedule_tasks(
    grad_bytes: tuple[int, ...],
    chunk_bytes: int,
    node: int,
    nodes: int,
    step: int,
    align: int = rm.DMA_ALIGN_BYTES,
) -> list[SendTask]:
    """Every send of one node in one step, as the schedule sees it (``ready_seq`` in plan order).

    ``grad_bytes``: padded bytes of each layer's gradient buffer, layer 1 first; ``align``:
    the ring segments' unit (:func:`exchange_align`).
    """
    tasks: list[SendTask] = []
    for layer in range(len(grad_bytes), 0, -1):
        for c, (_off, n) in enumerate(split_chunks(grad_bytes[layer - 1], chunk_bytes)):
            for ps in chunk_plan(node, nodes, n, align).sends:
                tasks.append(
                    SendTask(step, layer, c, ps.phase, ps.length, len(tasks), len(grad_bytes))
                )
    return tasks


def check_schedule(
    sched: Schedule,
    grad_bytes: tuple[int, ...],
    chunk_bytes: int,
    nodes: int,
    steps: int,
    align: int = rm.DMA_ALIGN_BYTES,
) -> None:
    """Ask ``sched`` up front about the sends of a run (first and last node, first and last
    step); a bad answer is a :class:`~gradsync.firmware.schedules.ScheduleError` sentence."""
    check_attributes(sched)
    release_groups(sched, grad_bytes)
    if nodes < 2:
        return
    for node in sorted({0, nodes - 1}):
        for step in sorted({0, steps - 1}):
            check_tasks(sched, schedule_tasks(grad_bytes, chunk_bytes, node, nodes, step, align))


def check_grad_format(grad_format: str, fmt: FixedPointFormat | BFloat16Format) -> bool:
    """Whether the gradients go as bf16 (``DescFlag.BF16``); ConfigError if ``fmt`` cannot."""
    if grad_format not in ("fp32", "bf16"):
        raise ConfigError(f"grad_format must be fp32 or bf16, not {grad_format!r}")
    if grad_format == "bf16" and not is_float(fmt):
        raise ConfigError(
            "grad_format bf16 needs a bf16 device; this device's format is fixed point "
            "(its gradients are not fp32)"
        )
    return grad_format == "bf16"


def check_chunk_bytes(chunk: int, grad_sram_bytes: int, align: int = rm.DMA_ALIGN_BYTES) -> None:
    """A chunk is a positive multiple of ``align`` bytes (:func:`exchange_align`) that fits."""
    if chunk <= 0 or chunk % align:
        what = " with a bf16 gradient exchange" if align != rm.DMA_ALIGN_BYTES else ""
        raise ConfigError(
            f"chunk size must be a positive multiple of {align} bytes{what}, not {chunk}"
        )
    if chunk > grad_sram_bytes:
        raise ConfigError(
            f"chunk size {chunk} bytes is larger than the gradient SRAM ({grad_sram_bytes} bytes)"
        )


def softmax_xent(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Summed softmax cross-entropy and its gradient wrt the logits (host arithmetic)."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    idx = np.arange(len(labels))
    loss = float(-np.log(np.maximum(p[idx, labels], 1e-300)).sum())
    grad = p.copy()
    grad[idx, labels] -= 1.0
    return loss, grad
