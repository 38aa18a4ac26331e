"""Trace buffer of a modelled node: records, trace memory, drops, the TRACE_DATA pop port.

Part of the CSR block (:mod:`model.csr`), as in ``hw/csr.py``.  Engines call
:meth:`TraceBuffer.record` with the events ``gradsync.spec.regmap.TRACE_SOURCES``
lists; while ``CONTROL.trace_enable`` is set a record goes into the ring of
``hw.trace_records`` slots, or counts in ``TRACE_DROPS`` when the host has not
consumed enough.  Irq.TRACE is raised, as in ``hw/trace_buffer.py``, in the
cycle after the RTL stores a record that leaves the buffer at least half full:
an engine stores a record up to a few cycles from its stamp
(:func:`store_offset`), so the interrupt is not always visible in the cycle the
model writes the record.  The host reads records through the ``TRACE_DATA`` pop
port or bulk-dumps trace memory and advances ``TRACE_TAIL``; a pop of an empty
buffer returns ``TRACE_EMPTY_WORD`` and latches ``ErrorCode.TRACE_EMPTY``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gradsync.model.events import Simulator
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.hardware import HardwareConfig

if TYPE_CHECKING:
    from gradsync.model.csr import CsrBlock

M32 = 0xFFFF_FFFF

_COMPUTE = (rm.Engine.COMPUTE, rm.Engine.VECTOR)
_DMA = (rm.Engine.DMA_HI, rm.Engine.DMA_LO)
_HOST_LOADS = (rm.Kind.LOAD, rm.Kind.RING)


def store_offset(engine: int, event: int, kind: int, hw: HardwareConfig) -> int:
    """Cycle the RTL stores a record in its trace buffer, minus the cycle the model writes it.

    The model writes a record in the cycle of its stamp (a HOST START: with
    its END, at the end of the transfer); the RTL's engines hand it to the
    buffer in the cycle below (``hw/`` module in brackets), and the buffer's
    ``half`` pulse of that cycle sets Irq.TRACE in the next one:

    * compute/vector START: +1, the decode cycle after the command was taken
      [``sequencer.py``]; END: -1 (stamped with its visible cycle);
    * dma START: +``descriptor_fetch_cycles - 1``, the validation cycle after
      the grant it is stamped with [``dma.py``]; END: -1 (the write-back cycle);
    * nic.tx START/END: 0 [``dma.py``]; nic.rx END: -1 [``nic_rx.py``];
    * host: -1 for a load (END stamped last beat + 1), 0 for a dump (last
      beat + 0) [``bulk.py``, the defaults of ``hw/node.py``];
    * ERROR: -1 (stamped ``now + 1``) [``csr.py``].
    """
    if event == rm.TraceEvent.ERROR:
        return -1
    start = event == rm.TraceEvent.START
    if engine in _COMPUTE:
        return 1 if start else -1
    if engine in _DMA:
        return tm.descriptor_fetch_cycles(hw) - 1 if start else -1
    if engine == rm.Engine.NIC_RX:
        return -1
    if engine == rm.Engine.HOST:
        return -1 if kind in _HOST_LOADS else 0
    return 0


class TraceBuffer:
    """Trace ring of one node, with its ``TRACE_*`` registers bound on ``csr``.

    Attributes
    ----------
    records:
        Every record ever written, dropped ones included (for the model's own use).
    words:
        Trace memory: ``hw.trace_records`` slots of ``TRACE_RECORD_WORDS`` words.
    head, tail, drops:
        Records written and consumed (free-running), records lost to a full buffer.
    stored:
        Records the RTL has stored by now (:func:`store_offset`), for Irq.TRACE.
    """

    def __init__(self, sim: Simulator, hw: HardwareConfig, csr: CsrBlock) -> None:
        self.sim = sim
        self.hw = hw
        self.csr = csr
        self.depth = hw.trace_records
        self.records: list[rm.TraceRecord] = []
        self.words = np.zeros(self.depth * rm.TRACE_RECORD_WORDS, dtype=np.int64)
        self._pending: list[tuple[int, rm.TraceRecord]] = []
        self.head = 0
        self.tail = 0
        self.drops = 0
        self.stored = 0
        self._pop_word = 0
        csr.bind("TRACE_COUNT", read=lambda: self.head - self.tail)
        csr.bind("TRACE_HEAD", read=lambda: self.head)
        csr.bind("TRACE_TAIL", read=lambda: self.tail, write=self._store_tail)
        csr.bind("TRACE_DROPS", read=lambda: self.drops)
        csr.bind("TRACE_DATA", read=self._pop)

    def record(
        self, engine: int, event: int, kind: int, tag: int, aux: int = 0, cycle: int | None = None
    ) -> None:
        """Write one record stamped ``cycle`` (default: now), if tracing is enabled."""
        if not self.csr.trace_enabled:
            return
        rec = rm.TraceRecord(
            self.sim.now if cycle is None else cycle, engine, event, kind, tag & M32, aux & M32
        )
        self.records.append(rec)
        if self.head - self.tail >= self.depth:
            self.drops += 1
            return
        # trace memory words are materialised when the host reads them (see flush)
        self._pending.append((self.head % self.depth, rec))
        self.head += 1
        store = self.sim.now + store_offset(engine, event, kind, self.hw)
        if store > self.sim.now:
            self.sim.at(store, lambda: self._store(store))
        else:
            self._store(store)

    def _store(self, cycle: int) -> None:
        """The RTL stores a record in ``cycle``: Irq.TRACE in ``cycle + 1`` if half full."""
        self.stored += 1
        if self.stored - self.tail < self.depth // 2:
            return
        if cycle + 1 > self.sim.now:
            self.sim.at(cycle + 1, lambda: self.csr.raise_irq(rm.Irq.TRACE))
        else:
            self.csr.raise_irq(rm.Irq.TRACE)

    def flush(self) -> None:
        """Encode pending records into trace memory (vectorised; same words as TraceRecord.encode)."""
        if not self._pending:
            return
        slots = np.array([s for s, _ in self._pending], dtype=np.int64)
        words = rm.encode_trace_records([r for _, r in self._pending])
        self.words.reshape(-1, rm.TRACE_RECORD_WORDS)[slots] = words
        self._pending = []

    def _pop(self) -> int:
        """``TRACE_DATA``: the oldest record's next word; its last word advances the tail.

        Empty: ``rm.TRACE_EMPTY_WORD``, and the error ``TRACE_EMPTY`` (not traced)."""
        if self.head == self.tail:
            self.csr.error(rm.ErrorCode.TRACE_EMPTY, rm.Engine.HOST, 0, self.tail, traced=False)
            return rm.TRACE_EMPTY_WORD
        self.flush()
        slot = self.tail % self.depth
        word = int(self.words[slot * rm.TRACE_RECORD_WORDS + self._pop_word])
        self._pop_word += 1
        if self._pop_word == rm.TRACE_RECORD_WORDS:
            self._pop_word = 0
            self.tail += 1
        return word

    def _store_tail(self, value: int) -> None:
        if self.tail <= value <= self.head:
            self.tail = value
            self._pop_word = 0
