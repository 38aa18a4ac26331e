"""Host side of a modelled node: the device protocol's register, interrupt and bulk calls.

The golden twin of the AXI4-Lite CSR port and the bulk port (``hw/bulk.py``)
as the firmware sees them through ``firmware.device.Device``, whose docstring
states the rules; their costs are the ``host_*`` fields of
:class:`~gradsync.spec.hardware.HardwareConfig`:

* ``write32`` takes effect ``host_write_cycles`` after it is issued;
* ``read32`` returns after ``host_read_cycles`` with the state at the end of
  the cycle before (the RTL's read samples in its address cycle);
* ``wait_irq`` returns ``IRQ_STATUS & mask`` after the interrupt latency and a
  read, once a masked-in cause is pending;
* ``load``/``dump`` move whole arrays over the bulk port in
  ``timing.host_bulk_cycles`` and leave HOST trace records.
"""

from __future__ import annotations

import numpy as np

from gradsync.model.engine import Engine, NodeParts
from gradsync.model.events import Future
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm

M32 = 0xFFFF_FFFF
_HOST_TAG = rm.offset("HOST_TAG")


class HostPort(Engine):
    """The host's register port, interrupt line and bulk port of one node.

    Parameters
    ----------
    ring:
        Ring memory; with the operand SRAMs and trace memory, the bulk port's targets.
    """

    def __init__(self, parts: NodeParts, ring: np.ndarray) -> None:
        super().__init__(parts)
        self.ring = ring
        self._irq_waiters: list[tuple[int, Future]] = []

    # ------------------------------------------------------- registers, IRQ
    async def write32(self, addr: int, value: int) -> None:
        await self.sim.delay(self.hw.host_write_cycles)
        self.csr.write(addr, value & M32)

    async def read32(self, addr: int) -> int:
        return await self._read_at(self.sim.now + self.hw.host_read_cycles, addr)

    def _read_at(self, cycle: int, addr: int, mask: int | None = None) -> Future:
        """A read returning in ``cycle``: it samples the state at the end of ``cycle - 1``.

        That is the AXI4-Lite read of the RTL: the address handshake in
        ``cycle - 1`` captures that cycle's register values, which reach the
        host in ``cycle``.  ``mask``: return ``IRQ_STATUS & mask`` instead.
        """
        fut = Future()

        def sample() -> None:
            if mask is not None:
                fut.resolve(self.csr.irq_status & mask)
            else:
                fut.resolve(self.csr.read(addr, cycle - 1))

        self.sim.at_start(cycle, sample)
        return fut

    async def wait_irq(self, mask: int) -> int:
        csr = self.csr
        if csr.irq_status & mask & csr.irq_mask:
            return await self._read_at(self.sim.now + self.hw.host_read_cycles, 0, mask)
        if not mask & csr.irq_mask:
            raise ValueError(
                f"wait_irq(0x{mask:x}) can never return: IRQ_MASK is 0x{csr.irq_mask:x}"
            )
        fut = Future()
        self._irq_waiters.append((mask, fut))
        return await fut

    def check_irq_waiters(self) -> None:
        """Wake the ``wait_irq`` callers whose causes are now pending and enabled."""
        csr = self.csr
        if not csr.irq_status & csr.irq_mask or not self._irq_waiters:
            return
        still = []
        for mask, fut in self._irq_waiters:
            if csr.irq_status & mask & csr.irq_mask:
                # the host notices the line after its interrupt latency, then reads IRQ_STATUS
                delay = self.hw.host_irq_latency_cycles + self.hw.host_read_cycles
                self._read_at(self.sim.now + delay, 0, mask).add_callback(fut.resolve)
            else:
                still.append((mask, fut))
        self._irq_waiters = still

    # ------------------------------------------------------------ bulk port
    async def load(self, addr: int, array: np.ndarray) -> None:
        data = np.asarray(array, dtype=np.int64).reshape(-1)
        mem, idx, nbytes = self._bulk_target(addr, len(data))
        t0 = self.sim.now
        await self.sim.delay(tm.host_bulk_cycles(nbytes, self.hw))
        if mem is self.ring:
            data = data & M32
        else:  # clamp, or wrap when the format does not saturate
            data = self.fmt.saturate_raw(data)
        mem[idx : idx + len(data)] = data
        kind = rm.Kind.RING if mem is self.ring else rm.Kind.LOAD
        self._trace_transfer(kind, nbytes, t0)

    async def dump(self, addr: int, n: int) -> np.ndarray:
        mem, idx, nbytes = self._bulk_target(addr, n)
        t0 = self.sim.now
        await self.sim.delay(tm.host_bulk_cycles(nbytes, self.hw))
        if mem is self.trace.words:
            self.trace.flush()
        out = mem[idx : idx + n].copy()
        kind = rm.Kind.TRACE if mem is self.trace.words else rm.Kind.DUMP
        self._trace_transfer(kind, nbytes, t0)
        return out

    def _trace_transfer(self, kind: rm.Kind, nbytes: int, t0: int) -> None:
        tag = self.csr.values[_HOST_TAG]
        self.trace.record(rm.Engine.HOST, rm.TraceEvent.START, kind, tag, nbytes, cycle=t0)
        self.trace.record(rm.Engine.HOST, rm.TraceEvent.END, kind, tag, nbytes)

    def _bulk_target(self, addr: int, n: int) -> tuple[np.ndarray, int, int]:
        """(memory, first word, bytes) of a bulk transfer of ``n`` words at ``addr``."""
        if rm.RING_MEM_BASE <= addr < rm.RING_MEM_BASE + rm.REGION_SPAN:
            mem, off = self.ring, addr - rm.RING_MEM_BASE
        elif rm.TRACE_MEM_BASE <= addr < rm.TRACE_MEM_BASE + rm.REGION_SPAN:
            self.trace.flush()
            mem, off = self.trace.words, addr - rm.TRACE_MEM_BASE
        else:
            region = self.srams.region(addr, n)
            if region is not None:
                return region[0], region[1], n * self.srams.word_bytes
            mem, off = None, 0
        # ring and trace memory hold 32-bit words
        if mem is None or off % 4 or off // 4 + n > len(mem) or n < 0:
            raise ValueError(
                f"bulk access of {n} words at 0x{addr:08x} is outside device memory or misaligned"
            )
        return mem, off // 4, n * 4
