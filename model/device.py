"""Transaction-level golden model of one gradsync node (the model backend's device).

It implements the firmware's device protocol (``firmware.device.Device``) on
the discrete-event kernel of :mod:`model.events`: the same registers
(``gradsync.spec.regmap``), the same descriptors in ring memory, the same
interrupts, with every engine's occupancy taken from
:mod:`gradsync.spec.timing` and every result computed by :mod:`model.numerics`.

This module is the node: it owns the memories and wires the engines, one
file each, as ``hw/`` does (``DESIGN.md``, "One node"):

* :mod:`model.csr`: register dispatch by access type, cycle counter,
  interrupts, error latch, with the trace buffer (:mod:`model.trace`);
* :mod:`model.compute`: in-order command FIFO, GEMM and vector commands;
* :mod:`model.dma`: descriptor rings, strict-priority arbiter, validation, fences;
* :mod:`model.nic`: packetising, RX windows, the in-order applier;
* :mod:`model.link_setting`: the transmit link as ``LINK_SET`` sets it (the NIC's);
* :mod:`model.host`: the host's register, interrupt and bulk-port calls and their costs.
"""

from __future__ import annotations

from operator import attrgetter

import numpy as np

from gradsync.model.compute import ComputeEngine
from gradsync.model.csr import CsrBlock
from gradsync.model.dma import DmaEngine
from gradsync.model.engine import NodeParts
from gradsync.model.events import Simulator
from gradsync.model.host import HostPort
from gradsync.model.nic import Nic, Packet
from gradsync.model.sram import OperandSrams
from gradsync.spec import regmap as rm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig, constant_registers

__all__ = ["ModelDevice", "Packet"]


class ModelDevice:
    """One node.  ``link_to`` is set by the cluster to the peer's device.

    Attributes
    ----------
    scratch, grad:
        Scratchpad and gradient SRAM contents (operand words; backdoor access).
    ring:
        Descriptor ring memory (32-bit words).
    csr, compute, dma, nic, host:
        The engines (see the module docstring).
    trace:
        Every trace record ever written, dropped ones included.
    trace_head, trace_tail, trace_drops, irq_status, irq_mask, err_count, compute_done,
    queues, windows, rx_done, rx_drops, perf:
        Read-only views of the engines' state (see each engine).
    """

    def __init__(
        self,
        sim: Simulator,
        node_id: int,
        num_nodes: int,
        hw: HardwareConfig,
        fmt: FixedPointFormat,
    ) -> None:
        self.sim = sim
        self.node_id = node_id
        self.num_nodes = num_nodes
        self.tx_peer = (node_id + 1) % num_nodes
        self.hw = hw
        self.fmt = fmt
        self.srams = OperandSrams(hw, fmt)
        self.scratch = self.srams.scratch
        self.grad = self.srams.grad
        self.ring = np.zeros(hw.ring_entries * rm.DMA_QUEUES * rm.DESCRIPTOR_WORDS, dtype=np.int64)
        self.csr = CsrBlock(sim, hw, constant_registers(hw, fmt, node_id, num_nodes))
        parts = NodeParts(sim, hw, fmt, self.csr, self.srams)
        self.compute = ComputeEngine(parts)
        self.nic = Nic(parts, node_id)
        self.dma = DmaEngine(parts, self.ring, self.nic, self.compute, self.tx_peer, num_nodes)
        self.host = HostPort(parts, self.ring)
        self.compute.on_retire = self.dma.check_fence
        self.csr.on_irq_change = self.host.check_irq_waiters
        self.csr.check_complete()
        self._link_to: ModelDevice | None = None

    @property
    def link_to(self) -> ModelDevice | None:
        return self._link_to

    @link_to.setter
    def link_to(self, peer: ModelDevice | None) -> None:
        self._link_to = peer
        self.nic.peer = None if peer is None else peer.nic

    # ------------------------------------------------------- device protocol
    async def write32(self, addr: int, value: int) -> None:
        await self.host.write32(addr, value)

    async def read32(self, addr: int) -> int:
        return await self.host.read32(addr)

    async def wait_irq(self, mask: int) -> int:
        return await self.host.wait_irq(mask)

    async def load(self, addr: int, array: np.ndarray) -> None:
        await self.host.load(addr, array)

    async def dump(self, addr: int, n: int) -> np.ndarray:
        return await self.host.dump(addr, n)

    # ---------------------------------------------- backdoor (tests, reports)
    def mmio_read(self, addr: int) -> int:
        """Register read at the current cycle, with no host cost."""
        return self.csr.read(addr)

    def mmio_write(self, addr: int, value: int) -> None:
        """Register write at the current cycle, with no host cost."""
        self.csr.write(addr, value)

    def receive(self, pkt: Packet) -> None:
        self.nic.receive(pkt)

    # read-only views of engine state, under the names tests and reports use
    trace = property(attrgetter("csr.trace.records"))
    trace_head = property(attrgetter("csr.trace.head"))
    trace_tail = property(attrgetter("csr.trace.tail"))
    trace_drops = property(attrgetter("csr.trace.drops"))
    irq_status = property(attrgetter("csr.irq_status"))
    irq_mask = property(attrgetter("csr.irq_mask"))
    err_count = property(attrgetter("csr.err_count"))
    compute_done = property(attrgetter("compute.done"))
    queues = property(attrgetter("dma.queues"))
    windows = property(attrgetter("nic.windows"))
    rx_done = property(attrgetter("nic.rx_done"))
    rx_drops = property(attrgetter("nic.rx_drops"))

    @property
    def perf(self) -> dict[str, int]:
        """Busy cycles and traffic counters of all engines (``PERF_*`` registers, untruncated)."""
        return {**self.compute.perf, **self.nic.perf}

    def outstanding(self) -> str:
        """What this node still waits for (used in deadlock reports)."""
        parts = self.compute.outstanding() + self.dma.outstanding() + self.nic.outstanding()
        return "; ".join(parts) or "idle"
