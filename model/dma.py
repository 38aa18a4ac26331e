"""DMA engine of a modelled node: descriptor rings, the queue arbiter, validation, fences.

The golden twin of ``hw/dma.py`` (``DESIGN.md``, "One node").  One engine
serves ``DMA_QUEUES`` descriptor rings in ring memory; the host posts
descriptors and writes the queue's ``DOORBELL``.  At every descriptor
boundary the arbiter grants queue 0 if it has work, else queue 1
(chunk-granular strict priority).  A descriptor is validated before anything
moves; a valid one waits for its fence (``COMPUTE_DONE`` reaching
``FENCE_COUNT``), then its chunk goes to the NIC (:meth:`model.nic.Nic.send`),
and the status and completion cycle are written back into the ring.
"""

from __future__ import annotations

import numpy as np

from gradsync.model.compute import ComputeEngine
from gradsync.model.csr import register_state
from gradsync.model.engine import Engine, NodeParts
from gradsync.model.nic import Nic
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.formats import BFloat16Format

M32 = 0xFFFF_FFFF


#: One descriptor queue: ``ring_base``, ``ring_size``, ``head``, ``tail``, ``win_base``,
#: ``win_len``, ``done``, ``errors`` (its ``DMAq_*`` registers).
DmaQueue = register_state("DmaQueue", rm.DMA_QUEUE_ARRAY)


class DmaEngine(Engine):
    """Descriptor rings and the one DMA engine that drains them.

    Parameters
    ----------
    ring:
        Ring memory (32-bit words), shared with the host's bulk port.
    nic:
        The transmitter that serialises each chunk.
    compute:
        The compute engine whose ``done`` count descriptor fences wait on.
    tx_peer, num_nodes:
        The only node a descriptor may address, and the fabric size.
    """

    def __init__(
        self,
        parts: NodeParts,
        ring: np.ndarray,
        nic: Nic,
        compute: ComputeEngine,
        tx_peer: int,
        num_nodes: int,
    ) -> None:
        super().__init__(parts)
        self.ring = ring
        self.nic = nic
        self.compute = compute
        self.tx_peer = tx_peer
        self.num_nodes = num_nodes
        self.queues = [DmaQueue() for _ in range(rm.DMA_QUEUES)]
        self.busy = False
        self._fence_waiting: tuple[int, rm.Descriptor, int, int] | None = None
        self.csr.bind_array(rm.DMA_QUEUE_ARRAY, read=self._read_queue, write=self._write_queue)

    def _read_queue(self, q_idx: int, field: str) -> int:
        return getattr(self.queues[q_idx], field.lower())

    def _write_queue(self, q_idx: int, field: str, value: int) -> None:
        if field == "DOORBELL":
            self._doorbell(q_idx, value)
        else:
            setattr(self.queues[q_idx], field.lower(), value)

    def _doorbell(self, q_idx: int, value: int) -> None:
        q = self.queues[q_idx]
        self.nic.link.lock()  # the link is set before any traffic (LINK_SET_LOCKED)
        code, info = self._doorbell_check(q, value)
        if code is not rm.ErrorCode.OK:
            self.csr.error(code, rm.Engine.DMA_HI + q_idx, q_idx, info)
            return
        q.tail = value
        self._kick()

    def _doorbell_check(self, q: DmaQueue, value: int) -> tuple[rm.ErrorCode, int]:
        """The first of ``rm.DOORBELL_CHECKS`` a doorbell of ``value`` fails, and its ERR_INFO."""
        E = rm.ErrorCode
        if not 1 <= q.ring_size <= self.hw.ring_entries:
            return E.RING_BAD_SIZE, q.ring_size
        if q.ring_base % rm.DESCRIPTOR_BYTES:
            return E.RING_MISALIGNED, q.ring_base
        ring_end = (q.ring_base - rm.RING_MEM_BASE) // 4 + q.ring_size * rm.DESCRIPTOR_WORDS
        if q.ring_base < rm.RING_MEM_BASE or ring_end > len(self.ring):
            return E.RING_OUT_OF_MEMORY, q.ring_base
        if (value - q.tail) & M32 >= 1 << 31:
            return E.DOORBELL_BACKWARDS, value
        if (value - q.head) & M32 > q.ring_size:
            return E.RING_FULL, value
        return E.OK, 0

    def outstanding(self) -> list[str]:
        return [
            f"dma.{rm.DMA_QUEUE_NAMES[q_idx]} has {q.tail - q.head} descriptor(s)"
            for q_idx, q in enumerate(self.queues)
            if q.head != q.tail
        ]

    def _kick(self) -> None:
        """The arbiter: at a descriptor boundary, the first queue with work wins."""
        if self.busy:
            return
        for q_idx, q in enumerate(self.queues):
            if q.head != q.tail:
                self._start(q_idx)
                return

    def _ring_words(self, q: DmaQueue, slot: int) -> tuple[int, list[int]]:
        word_index = (q.ring_base - rm.RING_MEM_BASE) // 4 + (
            slot % q.ring_size
        ) * rm.DESCRIPTOR_WORDS
        return word_index, [
            int(w) for w in self.ring[word_index : word_index + rm.DESCRIPTOR_WORDS]
        ]

    def _check(self, q: DmaQueue, d: rm.Descriptor) -> rm.ErrorCode:
        """The first of ``rm.DESCRIPTOR_CHECKS`` descriptor ``d`` fails (OK if none)."""
        a = rm.DMA_ALIGN_BYTES
        bf16 = bool(d.flags & rm.DescFlag.BF16)
        if d.version != rm.DESCRIPTOR_VERSION:
            return rm.ErrorCode.BAD_VERSION
        if bf16 and not isinstance(self.fmt, BFloat16Format):  # fixed-point gradients
            return rm.ErrorCode.BAD_FLAGS
        if d.length == 0:
            return rm.ErrorCode.ZERO_LENGTH
        if d.length % a or d.src_addr % a or d.remote_addr % a:
            return rm.ErrorCode.MISALIGNED
        if bf16 and d.length % rm.BF16_LENGTH_ALIGN_BYTES:  # whole payload words of 2 elements
            return rm.ErrorCode.MISALIGNED
        if not (q.win_base <= d.src_addr and d.src_addr + d.length <= q.win_base + q.win_len):
            return rm.ErrorCode.OUT_OF_WINDOW
        if self.srams.region(d.src_addr, d.length // self.srams.word_bytes) is None:
            return rm.ErrorCode.OUT_OF_WINDOW
        if d.peer != self.tx_peer or self.num_nodes < 2:
            return rm.ErrorCode.UNKNOWN_PEER
        return rm.ErrorCode.OK

    def _start(self, q_idx: int) -> None:
        q = self.queues[q_idx]
        self.busy = True
        slot = q.head
        q.head = (q.head + 1) & M32
        word_index, words = self._ring_words(q, slot)
        d = rm.Descriptor.decode(words)
        engine = rm.Engine.DMA_HI + q_idx
        code = self._check(q, d)
        self.trace.record(engine, rm.TraceEvent.START, rm.Kind.SEND, d.tag, d.length)
        if code is not rm.ErrorCode.OK:
            self.sim.after(
                tm.refused_descriptor_cycles(self.hw),
                lambda: self._finish(q_idx, word_index, d, code, slot),
            )
            return
        fetched = self.sim.now + tm.descriptor_fetch_cycles(self.hw)
        self.sim.at(fetched, lambda: self._fenced(q_idx, word_index, d, slot))

    @staticmethod
    def _fence_open(done: int, d: rm.Descriptor) -> bool:
        """COMPUTE_DONE has reached FENCE_COUNT (compared modulo 2**32)."""
        return ((done - d.fence_count) & M32) < 1 << 31

    def _fenced(self, q_idx: int, word_index: int, d: rm.Descriptor, slot: int) -> None:
        if d.flags & rm.DescFlag.FENCE and not self._fence_open(self.compute.done, d):
            self._fence_waiting = (q_idx, d, word_index, slot)
            return
        self._transmit(q_idx, word_index, d, slot)

    def check_fence(self) -> None:
        """Release the descriptor waiting on its fence if compute has caught up."""
        if self._fence_waiting is None:
            return
        q_idx, d, word_index, slot = self._fence_waiting
        if self._fence_open(self.compute.done, d):
            self._fence_waiting = None
            self._transmit(q_idx, word_index, d, slot)

    def _transmit(self, q_idx: int, word_index: int, d: rm.Descriptor, slot: int) -> None:
        n_words = d.length // self.srams.word_bytes
        mem, idx = self.srams.region(d.src_addr, n_words)
        # the chunk's last word leaves at `sent` (known later if a held receiver stops it)
        self.nic.send(
            d,
            mem[idx : idx + n_words].copy(),
            lambda sent: self.sim.at(
                sent + tm.DESCRIPTOR_WRITEBACK_CYCLES,
                lambda: self._finish(q_idx, word_index, d, rm.ErrorCode.OK, slot),
            ),
        )

    def _finish(
        self, q_idx: int, word_index: int, d: rm.Descriptor, code: rm.ErrorCode, slot: int
    ) -> None:
        q = self.queues[q_idx]
        engine = rm.Engine.DMA_HI + q_idx
        self.ring[word_index + 6] = rm.descriptor_status(code)
        self.ring[word_index + 7] = self.sim.now & M32
        q.done = (q.done + 1) & M32
        self.trace.record(
            engine, rm.TraceEvent.END, rm.Kind.SEND, d.tag, d.length if code == 0 else int(code)
        )
        if code is not rm.ErrorCode.OK:
            q.errors += 1
            self.csr.error(code, engine, slot, d.src_addr)
        if d.flags & rm.DescFlag.IRQ:
            self.csr.raise_irq(rm.Irq.DMA_Q0 if q_idx == 0 else rm.Irq.DMA_Q1)
        self.busy = False
        self._kick()
