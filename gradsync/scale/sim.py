"""The collective-level simulator: data-parallel training steps at chunk granularity.

One simulated node is the gradsync device of ``DESIGN.md`` seen at
transaction level, with its firmware's reactions: a compute engine running
one command at a time, per link a DMA engine with two descriptor queues
(queue 0 served first at every descriptor boundary), the link's packets with
the framing of :mod:`gradsync.spec.link`, an in-order receiver, and a host
that issues commands, posts descriptors and services interrupts at the costs
of :class:`~gradsync.spec.hardware.HardwareConfig` (``host_*``).  The
firmware's policy comes from the same :class:`~gradsync.firmware.schedules.Schedule`
objects ``gradsync train`` runs.  No data moves and no cycle is stepped: the
cost is a few events per descriptor.

Symmetry: data-parallel nodes do the same work at the same time, so one node
stands for all of them — what it receives from its ring predecessor arrives
exactly when its own send of the same phase arrives at its successor.  Only
stragglers break that; then every node is simulated (``nodes`` times the
work).

``docs/scale.md`` states what is modelled, what is not, and how it compares
with the golden model.
"""

from __future__ import annotations

import heapq
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from gradsync.firmware.collectives import chunk_plan, segments
from gradsync.firmware.schedules import SendTask, release_groups, schedule_chunk_bytes
from gradsync.firmware.training import split_chunks
from gradsync.scale.config import ScaleConfig, ScaleConfigError, ScaleLink, ScaleResult, Span
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.hardware import HardwareConfig

# interrupt causes (bits of the simulated IRQ_STATUS)
_COMPUTE, _RX = 1, 8


def _dma_bit(link: int, queue: int) -> int:
    """IRQ bit of a DMA queue: DMA_Q0/Q1 of the device for link 0; two more for an intra link."""
    return (2 << queue) if link == 0 else (32 << queue)


#: same-cycle order: a register read samples the state before that cycle's events; a write
#: takes effect among them in the order they were scheduled (as the golden model's kernel)
_HOST, _DEVICE = 0, 1


class _Loop:
    """A heap of (cycle, order, seq, callback); the host's resumptions sort first in a cycle."""

    def __init__(self) -> None:
        self.now = 0
        self.heap: list = []
        self.seq = 0
        self.events = 0

    def at(self, t: float, fn: Callable[[], None], order: int = _DEVICE) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, order, self.seq, fn))

    def run(self) -> None:
        heap = self.heap
        while heap:
            t, _o, _s, fn = heapq.heappop(heap)
            self.now = t
            self.events += 1
            fn()


# ---------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class _Phase:
    link: int  #: 0: the ring (or inter-box ring), 1: the intra-box ring
    length: int  #: bytes of each of the ``count`` sends
    count: int = 1  #: consecutive ring phases this one stands for (see :func:`_coarsen`)


#: A chunk's chain has at most this many simulated phases; longer rings are coarsened.
MAX_PHASES = 64
#: Simulated phases per step over all chunks; many small chunks coarsen their chains further
#: (down to two phases each) to stay near this budget.
PHASE_BUDGET = 16_384


def _coarsen(phases: list[_Phase], limit: int = MAX_PHASES) -> list[_Phase]:
    """Merge runs of equal consecutive phases so that at most about ``limit`` remain.

    A merged phase of ``count`` sends keeps each send's cost (descriptor, packets,
    host reaction) and the chain's latency: see ``_Node._dma_start``.  Exact (no
    merging) up to ``limit`` phases, i.e. rings of up to 33 nodes by default.
    """
    if len(phases) <= limit:
        return phases
    g = -(-len(phases) // limit)
    out: list[_Phase] = []
    for p in phases:
        last = out[-1] if out else None
        if last and last.link == p.link and last.length == p.length and last.count < g:
            out[-1] = _Phase(p.link, p.length, last.count + 1)
        else:
            out.append(p)
    return out


def chunk_phases(
    length: int, nodes: int, per_box: int = 1, limit: int = MAX_PHASES
) -> tuple[_Phase, ...]:
    """The chain of sends one node makes for a chunk's all-reduce; phase p waits for receipt p-1.

    N = 2: one exchange.  Ring: N-1 reduce-scatter and N-1 all-gather phases of one
    segment each (node 0's segments, as ``firmware.collectives.chunk_plan``).
    Hierarchical (``per_box`` = k > 1): reduce-scatter over the box's k nodes, an
    all-reduce of the node's 1/k share over the ring of boxes, all-gather in the box.
    """
    if nodes < 2:
        return ()
    if per_box <= 1 or per_box >= nodes:
        link = 1 if per_box >= nodes > 1 and per_box > 1 else 0
        return tuple(_coarsen([_Phase(link, n) for n in _ring_lengths(length, nodes)], limit))
    boxes = nodes // per_box
    intra = [n for _off, n in segments(length, per_box)]
    share = intra[0]
    rs = [_Phase(1, intra[(0 - s) % per_box]) for s in range(per_box - 1)]
    mid = [_Phase(0, n) for n in _ring_lengths(share, boxes)]
    ag = [_Phase(1, intra[(1 - s) % per_box]) for s in range(per_box - 1)]
    return tuple(_coarsen([p for p in rs + mid + ag if p.length > 0], limit))


def _ring_lengths(length: int, nodes: int) -> list[int]:
    """Node 0's sends of a chunk, in phase order: the firmware's own plan."""
    return [send.length for send in chunk_plan(0, nodes, length).sends]


_STAGED = len(rm.command_registers(0, 0, 0, 0, 1, 1, 1))


def _regs(layer, i: int, step: int, pas: str, j: int, batch: int) -> tuple:
    """The staged command registers of command ``j`` of a pass, as symbols.

    The firmware's buffers and operands (``firmware.training``): forward GEMM
    ``act[i-1] @ w[i] -> act[i]`` then its vector op in place; dW
    ``act[i-1]^T dz[i] -> g[i]`` (ARG: the loss-scale shift); dA
    ``dz[i] w[i]^T -> dz[i-1]`` then ``relu_bwd`` in place (tagged with layer i-1);
    SGD ``w[i] -= lr * r[i]`` (bf16: on the master weights ``w32[i]``, then SCALE into
    ``w[i]``, a two-command update).  Two symbols are equal where the firmware writes equal
    values, so the driver's skip of unchanged registers costs what it costs there.
    Shapes come from the workload's GEMMs (unknown shapes never repeat).
    """
    gemms = {"fwd": layer.fwd_gemms, "ig": layer.ig_gemms, "wg": layer.wg_gemms}.get(pas, ())
    g = gemms[0] if gemms else None
    shape = (g.m, g.k, g.n) if g is not None else (("m", i, pas), ("k", i, pas), ("n", i, pas))
    tag = ("tag", i - 1 if pas == "ig" else i, step)
    if pas == "update":
        if len(layer.update) == 1:  # fixed point: SGD on the weights
            return (("sgd",), ("w", i), ("r", i), ("w", i), 1, 0, layer.params, "lr", tag)
        # bf16 (two commands): SGD on the fp32 master weights, then SCALE by 1.0 into the
        # bf16 working copy the GEMMs read
        if j == 0:
            return (("sgd",), ("w32", i), ("r", i), ("w32", i), 1, 0, layer.params, "lr", tag)
        return (("scale",), ("w32", i), 0, ("w", i), 1, 0, layer.params, "one", tag)
    if j == 0 and g is not None or j == 0 and pas == "wg":
        a, b, c = {
            "fwd": (("act", i - 1), ("w", i), ("act", i)),
            "wg": (("act", i - 1), ("dz", i), ("g", i)),
            "ig": (("dz", i), ("w", i), ("dz", i - 1)),
        }[pas]
        return (("gemm", pas), a, b, c, *shape, "s" if pas == "wg" else 0, tag)
    # a vector op after the pass's GEMM, in place on its result
    if pas == "fwd":
        return (("vec", pas, j), ("act", i), 0, ("act", i), batch, 0, shape[2], 0, tag)
    return (
        ("vec", pas, j),
        ("dz", i - 1),
        ("act", i - 1),
        ("dz", i - 1),
        batch,
        0,
        shape[2],
        0,
        tag,
    )


def host_reaction_cycles(hw: HardwareConfig) -> int:
    """Host cycles from a receipt to the next phase's doorbell on an idle host: interrupt,
    IRQ_STATUS read and clear, RX_DONE read(s) and clear, EXPECT write, descriptor post."""
    reads = 2 + (hw.rx_windows > 32)
    return (
        hw.host_irq_latency_cycles
        + reads * hw.host_read_cycles
        + 3 * hw.host_write_cycles
        + tm.host_bulk_cycles(rm.DESCRIPTOR_BYTES, hw)
        + hw.host_write_cycles
    )


def send_cycles(length: int, link: ScaleLink, hw: HardwareConfig) -> int:
    """DMA occupancy of one send: descriptor fetch, its packets on ``link``, write-back."""
    return (
        tm.descriptor_fetch_cycles(hw)
        + _Wire(link).tx_cycles(length)
        + tm.DESCRIPTOR_WRITEBACK_CYCLES
    )


# ---------------------------------------------------------------------------- link


class _Wire:
    """Timing of one link direction: packets, CRC arrival, the receiver's applier."""

    def __init__(self, link: ScaleLink) -> None:
        self.link = link
        self.bpc = link.bytes_per_cycle
        self.frame = link.header_bytes + link.crc_bytes
        self.word_period = max(1, int(4 // link.bytes_per_cycle))
        self.rx_bpc = link.rx_bytes_per_cycle or max(4.0, link.bytes_per_cycle)
        self.full_cycles = self.packet_cycles(link.max_payload_bytes)

    def packet_cycles(self, payload: int) -> int:
        return math.ceil((self.frame + payload) / self.bpc)

    def apply_cycles(self, payload: int) -> int:
        return tm.RX_APPLY_LATENCY_CYCLES + math.ceil(payload / self.rx_bpc)

    def tx_cycles(self, length: int) -> int:
        full, rest = divmod(length, self.link.max_payload_bytes)
        return full * self.full_cycles + (self.packet_cycles(rest) if rest else 0)

    def send(self, t: float, length: int, rx_free: float) -> tuple[float, float, list]:
        """Transmit ``length`` bytes from cycle ``t`` into a receiver free from ``rx_free``.

        Returns (end of transmission, cycle the last packet is applied, receiver
        activity spans).  Per packet, as ``gradsync.spec.timing.rx_visible_cycle``:
        ``applied = max(crc_arrival + 1, applier_free) + apply_cycles``.
        """
        mp = self.link.max_payload_bytes
        full, rest = divmod(length, mp)
        lat = (
            self.link.latency_cycles - self.word_period + 1
        )  # end of packet -> applier may take it
        applied = rx_free
        spans = []
        if full:
            pc, ac = self.full_cycles, self.apply_cycles(mp)
            first = t + pc + lat  # arrival of the first packet
            # max-plus recursion applied_i = max(arrival_i, applied_{i-1}) + ac, closed form
            if ac > pc:
                applied = max(rx_free, first) + full * ac
            else:
                applied = max(rx_free + full * ac, first + (full - 1) * pc + ac)
            busy = full * math.ceil(mp / self.rx_bpc)
            if full <= 16:
                spans = [
                    (first + i * pc + ac - busy / full, first + i * pc + ac) for i in range(full)
                ]
                spans[-1] = (applied - busy / full, applied)
            else:
                spans = [(max(first, rx_free), applied)]
            t = t + full * pc
        if rest:
            t = t + self.packet_cycles(rest)
            applied = max(t + lat, applied) + self.apply_cycles(rest)
            spans.append((applied - math.ceil(rest / self.rx_bpc), applied))
        return t, applied, spans


# ---------------------------------------------------------------------------- node


@dataclass
class _Chunk:
    layer: int
    index: int
    length: int
    phases: tuple[_Phase, ...]
    received: int = 0  #: phases received (in order)
    armed: int = 0  #: receipts the RX window waits for (0: not armed)
    sent_next: int = 0  #: next phase to hand to the schedule
    released: bool = False
    step: int = 0
    level: int = 0  #: receipts the firmware knows of (the last threshold it saw reached)
    received_target: int = 1
    window: int = 0


@dataclass
class _Desc:
    task: SendTask
    chunk: _Chunk
    phase: int
    length: int
    link: int
    key: tuple = ()


@dataclass
class _Dma:
    wire: _Wire
    name: str
    queues: tuple = field(default_factory=lambda: (deque(), deque()))
    busy: bool = False
    inflight: tuple = field(default_factory=lambda: ([], []))  #: tasks per queue (firmware view)
    done: list = field(default_factory=lambda: [0, 0])
    seen: list = field(default_factory=lambda: [0, 0])
    busy_spans: list = field(default_factory=list)


class _Node:
    """One node: device engines and the host running the firmware's policy."""

    def __init__(self, sim: Simulation, index: int, slow: float) -> None:
        self.sim = sim
        self.loop = sim.loop
        self.index = index
        self.slow = slow
        cfg = sim.cfg
        self.hw = cfg.hardware
        self.sched = cfg.schedule
        self.nl = len(sim.layers)
        self.irq = 0
        self.irq_waiter: Callable[[], None] | None = None
        # compute engine
        self.cmdq: deque = deque()
        self.cbusy = False
        self.issued = 0
        self.completed = 0  # retired (device side)
        self.seen_done = 0  # COMPUTE_DONE as last read by the host
        self.on_done: dict[int, list[Callable[[], None]]] = {}
        self.shadow: tuple = (None,) * _STAGED
        # links
        self.dmas = [_Dma(w, n) for w, n in zip(sim.wires, sim.link_names, strict=True)]
        self.rx_free = [0.0] * len(sim.wires)
        self.peer: _Node = self
        # firmware state
        self.updated = [0] * (self.nl + 1)
        self.outstanding = [0] * (self.nl + 1)
        self.grad_ready: set[int] = set()
        self.reduced: set[int] = set()
        # the firmware's send buffer, one heap per (link, hardware queue): smallest key first
        self.heaps: dict[tuple[int, int], list] = {}
        self.ready_seq = 0
        self.chunks: dict[tuple[int, int], _Chunk] = {}
        self.chunks_left = [0] * (self.nl + 1)
        self.rx_done: list[_Chunk] = []
        self.rx_pending: list[_Chunk] = []  # RX_DONE bits set, not yet read
        self.to_arm: list[_Chunk] = []
        self.to_update: list[int] = []
        self.to_reopen: list[tuple[int, int]] = []
        self.exchange_step = 0
        self.early: dict[tuple[int, int, int], int] = {}
        # record
        self.step_start: list[float] = []
        self.l1_ready: dict[int, float] = {}
        self.compute_spans: list[tuple[float, float]] = []
        self.comm_spans: list[tuple[float, float]] = []
        self.wait_spans: list[tuple[float, float, int]] = []  # host blocked on a layer
        self.spans: list[Span] | None = [] if cfg.trace else None
        self.descriptors = 0
        self.host_debt = 0  # host cycles of coarsened phases' reactions, paid at the next service

    # ------------------------------------------------------------ host process
    def start(self) -> None:
        self._proc = self.firmware()
        self._resume()

    def _resume(self) -> None:
        try:
            d = next(self._proc)
        except StopIteration:
            return
        if d is None:  # wait for an interrupt
            self.irq_waiter = self._irq_wake
            if self.irq:
                self._irq_wake()
            return
        if d < 0:  # a register read: it samples the state at the start of its last cycle
            self.loop.at(self.loop.now - d, self._resume, _HOST)
        else:  # a write or bulk transfer takes effect among that cycle's events, in order
            self.loop.at(self.loop.now + d, self._resume, _DEVICE)

    def _irq_wake(self) -> None:
        self.irq_waiter = None
        delay = self.hw.host_irq_latency_cycles + self.hw.host_read_cycles
        self.loop.at(self.loop.now + delay, self._resume, _HOST)

    def raise_irq(self, bit: int) -> None:
        self.irq |= bit
        if self.irq_waiter is not None:
            self.irq_waiter()

    def firmware(self) -> Iterator[int | None]:
        """The training program of ``firmware.training.NodeFirmware``, as host time."""
        hw, layers = self.hw, self.sim.layers
        w, r = hw.host_write_cycles, hw.host_read_cycles
        wl = self.sim.cfg.workload
        for ly in range(1, self.nl + 1):
            self._open_windows(ly, 0)
        for k in range(self.sim.steps):
            yield from self.wait_until(lambda k=k: self.updated[1] >= k, 1)
            yield -r  # TRACE_COUNT
            yield w  # HOST_TAG
            self.step_start.append(self.loop.now)
            yield from self.bulk(wl.input_bytes, "load input")
            last = 0
            for i in range(1, self.nl + 1):
                yield from self.wait_until(lambda i=i, k=k: self.updated[i] >= k, i)
                for j, cyc in enumerate(layers[i - 1].fwd):
                    regs = _regs(layers[i - 1], i, k, "fwd", j, wl.batch)
                    last = yield from self.launch(cyc, f"fwd L{i}", i, k, regs=regs)
            yield from self.wait_until(lambda last=last: self.seen_done >= last, 0)
            yield w
            yield from self.bulk(wl.output_bytes, "dump logits")
            yield from self.bulk(wl.output_bytes, "load dZ")
            self.exchange_step = k
            self.grad_ready = set()
            self.reduced = set()
            for i in range(self.nl, 0, -1):
                yield from self.wait_until(lambda i=i: self.outstanding[i] == 0, i)
                ly = layers[i - 1]
                for j, cyc in enumerate(ly.wg):
                    done = (lambda i=i: self.gradient_ready(i)) if j == len(ly.wg) - 1 else None
                    regs = _regs(ly, i, k, "wg", j, wl.batch)
                    yield from self.launch(cyc, f"dW L{i}", i, k, done, regs=regs)
                if not ly.wg:
                    self.gradient_ready(i)
                if i > 1:
                    for j, cyc in enumerate(ly.ig):
                        regs = _regs(ly, i, k, "ig", j, wl.batch)
                        yield from self.launch(cyc, f"dA L{i}", i, k, regs=regs)
        steps = self.sim.steps
        yield from self.wait_until(
            lambda: all(self.updated[i] >= steps for i in range(1, self.nl + 1)), 0
        )
        yield from self.wait_until(lambda: not any(self.outstanding), 0)

    def bulk(self, n_bytes: int, what: str) -> Iterator[int]:
        t0 = self.loop.now
        d = tm.host_bulk_cycles(n_bytes, self.hw)
        yield d
        self._span("host", what, t0, t0 + d)

    def wait_until(self, pred: Callable[[], bool], layer: int) -> Iterator[int | None]:
        t0 = self.loop.now
        while not pred():
            yield from self.service()
        if layer and self.loop.now > t0:
            self.wait_spans.append((t0, self.loop.now, layer))

    def launch(
        self,
        cycles: int,
        name: str,
        layer: int,
        step: int,
        on_done=None,
        on_retire=None,
        regs: tuple = (),
    ) -> Iterator[int | None]:
        while self.issued - self.seen_done >= self.hw.cmd_fifo_depth:
            yield from self.service()
        # the driver rewrites only the staged registers whose value changed, then CMD_LAUNCH
        writes = 1 + sum(a != b for a, b in zip(regs, self.shadow, strict=True))
        self.shadow = regs
        yield writes * self.hw.host_write_cycles
        self.issued += 1
        if on_done is not None:
            self.on_done.setdefault(self.issued, []).append(on_done)
        self.cmdq.append((max(1, round(cycles * self.slow)), name, layer, step, on_retire))
        if not self.cbusy:
            self._compute_next()
        return self.issued

    def service(self) -> Iterator[int | None]:
        """``Driver.service``: one interrupt, every cause it reports, then the deferred work."""
        hw = self.hw
        w, r = hw.host_write_cycles, hw.host_read_cycles
        if self.irq:
            yield -r
        else:
            yield None  # resumes after the interrupt latency and the status read
        status = self.irq
        yield w  # IRQ_STATUS write-one-to-clear
        self.irq &= ~status
        if status & _COMPUTE:
            yield -r
            done = self.completed
            while self.seen_done < done:
                self.seen_done += 1
                for cb in self.on_done.pop(self.seen_done, []):
                    cb()
        for li, dma in enumerate(self.dmas):
            for q in (0, 1):
                if status & _dma_bit(li, q):
                    yield -r
                    newly = dma.done[q] - dma.seen[q]
                    dma.seen[q] = dma.done[q]
                    for _ in range(newly):
                        task = dma.inflight[q].pop(0)
                        self.outstanding[task.layer] -= 1
        if status & _RX:
            yield -r  # RX_DONE_LO, sampled when the read returns
            bits = self._take_rx(lambda ch: ch.window < 32)
            if hw.rx_windows > 32:
                yield -r  # RX_DONE_HI
                bits += self._take_rx(lambda ch: ch.window >= 32)
            yield w * (any(ch.window < 32 for ch in bits) + any(ch.window >= 32 for ch in bits))
            for ch in sorted(bits, key=lambda ch: ch.window):  # the firmware's bit order
                self._rx_done(ch)
        if self.host_debt:
            debt, self.host_debt = self.host_debt, 0
            yield debt
        yield from self.flush()

    def _take_rx(self, pick: Callable[[_Chunk], bool]) -> list[_Chunk]:
        taken = [ch for ch in self.rx_pending if pick(ch)]
        self.rx_pending = [ch for ch in self.rx_pending if not pick(ch)]
        return taken

    def flush(self) -> Iterator[int]:
        hw = self.hw
        w = hw.host_write_cycles
        while self.to_arm or self.to_update or self.to_reopen or self._postable():
            while self.to_arm:
                ch = self.to_arm.pop(0)
                yield w
                self._arm(ch, ch.received_target)
            while self.to_update:
                layer = self.to_update.pop(0)
                yield from self._launch_update(layer)
            while self.to_reopen:
                layer, step = self.to_reopen.pop(0)
                if self.sim.nodes > 1 and step < self.sim.steps:  # DST SRC LEN TAG CTRL EXPECT
                    yield 6 * w * len(self.sim.chunk_lengths[layer])
                self._open_windows(layer, step)
            yield from self._pump()

    def _launch_update(self, layer: int) -> Iterator[int | None]:
        step = self.updated[layer]
        ly = self.sim.layers[layer - 1]

        def done() -> None:
            self.updated[layer] += 1
            self.to_reopen.append((layer, self.updated[layer]))

        def retired() -> None:  # the update's last command leaves the vector unit
            if layer == 1:
                self.l1_ready[step] = self.loop.now

        if not ly.update:
            retired()
            done()
            return
        for j, cyc in enumerate(ly.update):
            last = j == len(ly.update) - 1
            yield from self.launch(
                cyc,
                f"update L{layer}",
                layer,
                step,
                done if last else None,
                retired if last else None,
                regs=_regs(ly, layer, step, "update", j, self.sim.cfg.workload.batch),
            )

    # -------------------------------------------------------------- exchange
    def _open_windows(self, layer: int, step: int) -> None:
        if self.sim.nodes < 2 or step >= self.sim.steps:
            return
        lengths = self.sim.chunk_lengths[layer]
        self.chunks_left[layer] = len(lengths)
        for c, n in enumerate(lengths):
            ch = _Chunk(layer, c, n, self.sim.phases_of(n), step=step)
            ch.window = self.sim.window_of[(layer, c)]
            self.chunks[(layer, c)] = ch
            ch.received = self.early.pop((layer, c, step), 0)
            self._arm(ch, 1)

    def gradient_ready(self, layer: int) -> None:
        self.grad_ready.add(layer)
        if self.sim.nodes < 2 or not self.sim.chunk_lengths[layer]:
            self._layer_reduced(layer)
            if self.sim.nodes < 2:
                return
        for group in self.sim.groups:
            if layer in group and all(g in self.grad_ready for g in group):
                for g in group:
                    self._release(g)

    def _release(self, layer: int) -> None:
        for c in range(len(self.sim.chunk_lengths[layer])):
            ch = self.chunks[(layer, c)]
            ch.released = True
            self._release_ready(ch)

    def _release_ready(self, ch: _Chunk) -> None:
        if not ch.released:
            return
        while ch.sent_next < len(ch.phases) and ch.sent_next <= ch.level:
            p = ch.sent_next
            ch.sent_next += 1
            ph = ch.phases[p]
            task = SendTask(
                self.exchange_step, ch.layer, ch.index, p, ph.length, self.ready_seq, self.nl
            )
            self.ready_seq += 1
            self.outstanding[ch.layer] += 1
            d = _Desc(task, ch, p, ph.length, ph.link, tuple(self.sched.priority(task)))
            q = self.sched.queue(task)
            if q not in (0, 1):
                raise ScaleConfigError(
                    f"schedule {self.sched.name!r} chose queue {q!r}; use 0 or 1"
                )
            heapq.heappush(self.heaps.setdefault((ph.link, q), []), (d.key, self.ready_seq, d))

    def _room(self) -> list[tuple[int, int]]:
        """(link, queue) pairs with buffered sends and a free in-flight slot."""
        cap = min(self.sched.max_inflight, self.hw.ring_entries)
        return [
            lq for lq, h in self.heaps.items() if h and len(self.dmas[lq[0]].inflight[lq[1]]) < cap
        ]

    def _postable(self) -> bool:
        return bool(self._room())

    def _pump(self) -> Iterator[int]:
        """``NodeFirmware._pump``: post the best buffered send whose queue has room, repeatedly."""
        hw = self.hw
        post = tm.host_bulk_cycles(rm.DESCRIPTOR_BYTES, hw) + hw.host_write_cycles
        while True:
            room = self._room()
            if not room:
                return
            link, q = min(room, key=lambda lq: self.heaps[lq][0][:2])
            d = heapq.heappop(self.heaps[(link, q)])[2]
            dma = self.dmas[link]
            dma.inflight[q].append(d.task)
            yield post
            dma.queues[q].append(d)
            self._dma_kick(dma)

    def _arm(self, ch: _Chunk, target: int) -> None:
        ch.armed = target
        if ch.received >= target:
            ch.armed = 0
            self.rx_pending.append(ch)
            self.raise_irq(_RX)

    def receipt(self, ch_key: tuple[int, int], step: int) -> None:
        ch = self.chunks.get(ch_key)
        if ch is None or ch.step != step:
            # a faster peer's next step (stragglers only): counted when the window opens
            key = (*ch_key, step)
            self.early[key] = self.early.get(key, 0) + 1
            return
        ch.received += 1
        if ch.armed and ch.received >= ch.armed:
            ch.armed = 0
            self.rx_pending.append(ch)
            self.raise_irq(_RX)

    def _rx_done(self, ch: _Chunk) -> None:
        ch.level = ch.received_target
        self._release_ready(ch)
        if ch.received < len(ch.phases):
            ch.received_target = ch.received + 1
            self.to_arm.append(ch)
            return
        self.chunks_left[ch.layer] -= 1
        if self.chunks_left[ch.layer] == 0:
            self._layer_reduced(ch.layer)

    def _layer_reduced(self, layer: int) -> None:
        self.reduced.add(layer)
        if self.sched.early_update:
            self.to_update.append(layer)
        elif len(self.reduced) == self.nl:
            self.to_update.extend(range(1, self.nl + 1))

    # --------------------------------------------------------------- engines
    def _compute_next(self) -> None:
        cycles, name, layer, step, on_retire = self.cmdq.popleft()
        self.cbusy = True
        t0 = self.loop.now
        t1 = t0 + cycles
        self.compute_spans.append((t0, t1))
        self._span("compute", name, t0, t1, layer, step)

        def retire() -> None:
            self.completed += 1
            if on_retire is not None:
                on_retire()
            self.raise_irq(_COMPUTE)
            if self.cmdq:
                self._compute_next()
            else:
                self.cbusy = False

        self.loop.at(t1, retire)

    def _dma_kick(self, dma: _Dma) -> None:
        if dma.busy:
            return
        for q in (0, 1):
            if dma.queues[q]:
                self._dma_start(dma, q, dma.queues[q].popleft())
                return

    def _dma_start(self, dma: _Dma, q: int, d: _Desc) -> None:
        dma.busy = True
        self.descriptors += 1
        t0 = self.loop.now
        t_tx = t0 + tm.descriptor_fetch_cycles(self.hw)
        peer = self.peer
        t_end, applied, rx_spans = dma.wire.send(t_tx, d.length, peer.rx_free[d.link])
        peer.rx_free[d.link] = applied  # the receiver's own occupancy (the chain's is latency)
        n = d.chunk.phases[d.phase].count
        if n > 1:  # a coarsened phase: n sends, each waiting for the previous one's receipt
            one = t_end + tm.DESCRIPTOR_WRITEBACK_CYCLES - t0
            idle = dma.wire.send(t_tx, d.length, 0)[1] - t0  # grant to receipt, idle receiver
            trip = max(one, idle + self.sim.react)
            t_end += (n - 1) * one
            applied += (n - 1) * trip
            self.host_debt += (n - 1) * self.sim.react
        t_done = t_end + tm.DESCRIPTOR_WRITEBACK_CYCLES
        dma.busy_spans.append((t_tx, t_end))
        self.comm_spans.append((t0, t_done))
        peer.comm_spans.extend(rx_spans)
        task = d.task
        self._span(dma.name, f"L{task.layer}c{task.chunk}p{d.phase}", t_tx, t_end, task.layer)
        peer._span("rx", f"L{task.layer}c{task.chunk}p{d.phase}", applied - 1, applied, task.layer)
        key, step = (d.chunk.layer, d.chunk.index), d.chunk.step
        self.loop.at(applied, lambda: peer.receipt(key, step))

        def finish() -> None:
            dma.done[q] += 1
            self.raise_irq(_dma_bit(self.dmas.index(dma), q))
            dma.busy = False
            self._dma_kick(dma)

        self.loop.at(t_done, finish)

    def _span(self, track: str, name: str, a: float, b: float, layer: int = 0, step: int = 0):
        if self.spans is not None:
            self.spans.append(Span(track, name, a, b, layer, step))


# ---------------------------------------------------------------------------- run


class Simulation:
    def __init__(self, cfg: ScaleConfig) -> None:
        if cfg.nodes < 1:
            raise ScaleConfigError(f"--nodes must be >= 1, not {cfg.nodes}")
        if cfg.steps < 2:
            raise ScaleConfigError(f"steps must be >= 2, not {cfg.steps}")
        cfg.topology.check(cfg.nodes)
        self.cfg = cfg
        self.loop = _Loop()
        self.layers = list(cfg.workload.layers)
        self.nodes = cfg.nodes
        self.steps = cfg.steps
        topo = cfg.topology
        self.per_box = topo.per_box if topo.kind == "hierarchical" else 1
        self.wires = [_Wire(cfg.link)]
        self.link_names = ["dma.ring" if self.per_box == 1 else "dma.inter"]
        if self.per_box > 1:
            self.wires.append(_Wire(topo.intra))
            self.link_names.append("dma.intra")
        chunk = schedule_chunk_bytes(cfg.schedule, cfg.chunk_bytes, cfg.workload.element_bytes)
        if chunk <= 0 or chunk % rm.DMA_ALIGN_BYTES:
            raise ScaleConfigError(
                f"--chunk-bytes must be a positive multiple of {rm.DMA_ALIGN_BYTES}, not {chunk}"
            )
        self.chunk = chunk
        self.chunk_lengths = [[]] + [
            [n for _off, n in split_chunks(ly.grad_bytes, chunk)] for ly in self.layers
        ]
        grads = tuple(ly.grad_bytes for ly in self.layers)
        self.groups = release_groups(cfg.schedule, grads)
        self._phase_cache: dict[int, tuple[_Phase, ...]] = {}
        n_chunks = sum(len(c) for c in self.chunk_lengths)
        self.phase_limit = max(2, min(MAX_PHASES, PHASE_BUDGET // max(1, n_chunks)))
        self.window_of = {
            (i, c): n
            for n, (i, c) in enumerate(
                (i, c)
                for i in range(1, len(self.layers) + 1)
                for c in range(len(self.chunk_lengths[i]))
            )
        }

    @property
    def react(self) -> int:
        return host_reaction_cycles(self.cfg.hardware)

    def phases_of(self, length: int) -> tuple[_Phase, ...]:
        ph = self._phase_cache.get(length)
        if ph is None:
            ph = self._phase_cache[length] = chunk_phases(
                length, self.nodes, self.per_box, self.phase_limit
            )
        return ph

    def run(self) -> ScaleResult:
        t0 = time.perf_counter()
        cfg = self.cfg
        slow = _slow_factors(cfg)
        n_sim = len(slow)
        nodes = [_Node(self, i, slow[i]) for i in range(n_sim)]
        for i, nd in enumerate(nodes):
            nd.peer = nodes[(i + 1) % n_sim]
        for nd in nodes:
            nd.start()
        self.loop.run()
        return self._result(nodes, time.perf_counter() - t0)

    def _result(self, nodes: list[_Node], wall: float) -> ScaleResult:
        k = self.steps - 2
        for nd in nodes:
            if len(nd.step_start) < self.steps or k not in nd.l1_ready:
                raise ScaleConfigError("internal: the simulation stopped before the step ended")
        lo = min(nd.step_start[k] for nd in nodes)
        hi = min(nd.step_start[k + 1] for nd in nodes)
        l1 = max(nd.l1_ready[k] for nd in nodes) - lo
        exposed, busy, layer_exp, util = 0.0, 0.0, [0.0] * len(self.layers), {}
        for nd in nodes:
            comp = _union(nd.compute_spans, lo, hi)
            e = _length(_subtract(_union(nd.comm_spans, lo, hi), comp))
            if e >= exposed:
                exposed, busy = e, _length(comp)
                layer_exp = [0.0] * len(self.layers)
                for a, b, layer in nd.wait_spans:
                    layer_exp[layer - 1] += _length(_subtract(_union([(a, b)], lo, hi), comp))
            for dma, name in zip(nd.dmas, self.link_names, strict=True):
                u = _length(_union(dma.busy_spans, lo, hi)) / (hi - lo)
                key = name.removeprefix("dma.")
                util[key] = max(util.get(key, 0.0), u)
        spans = nodes[0].spans or []
        return ScaleResult(
            step_cycles=hi - lo,
            layer1_ready_cycles=l1,
            exposed_comm_cycles=exposed,
            compute_cycles=busy,
            layer_exposed_cycles=layer_exp,
            link_utilisation=util,
            chunk_bytes=self.chunk,
            descriptors=nodes[0].descriptors // self.steps,
            events=self.loop.events,
            wall_seconds=wall,
            spans=spans,
        )


def _slow_factors(cfg: ScaleConfig) -> list[float]:
    """Compute slow-down per simulated node: one node for all, or every node with stragglers."""
    if not cfg.stragglers:
        return [1.0]
    slow = [1.0] * cfg.nodes
    i = 0
    for s in cfg.stragglers:
        if s.count < 0 or s.count > cfg.nodes or not s.factor > 0:
            raise ScaleConfigError(f"--straggler {s.count}:{s.factor} is not K:F with 0<=K<=N, F>0")
        for _ in range(s.count):
            if i >= cfg.nodes:
                raise ScaleConfigError("--straggler names more nodes than --nodes")
            slow[i] = s.factor
            i += 1
    return slow


def _union(spans, lo: float, hi: float) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in spans if b > lo and a < hi):
        if out and a <= out[-1][1]:
            if b > out[-1][1]:
                out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


def _subtract(a: list, b: list) -> list:
    """Parts of the merged spans ``a`` not covered by the merged spans ``b``."""
    out, j = [], 0
    for x, y in a:
        cur = x
        while j < len(b) and b[j][1] <= cur:
            j += 1
        k = j
        while k < len(b) and b[k][0] < y:
            if b[k][0] > cur:
                out.append((cur, b[k][0]))
            cur = max(cur, b[k][1])
            k += 1
        if cur < y:
            out.append((cur, y))
    return out


def _length(spans) -> float:
    return sum(b - a for a, b in spans)


def simulate(cfg: ScaleConfig) -> ScaleResult:
    """Run ``cfg``'s steps and report the last step that has a successor."""
    return Simulation(cfg).run()
