"""The parts of a modelled node that every engine is wired to, and the engines' common base.

:class:`model.device.ModelDevice` builds one :class:`NodeParts` per node and
hands it to each engine (:mod:`model.compute`, :mod:`model.dma`,
:mod:`model.nic`, :mod:`model.host`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gradsync.model.csr import CsrBlock
from gradsync.model.events import Simulator
from gradsync.model.sram import OperandSrams
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig


@dataclass(frozen=True)
class NodeParts:
    """The event kernel, configuration, CSR block and operand SRAMs of one node."""

    sim: Simulator
    hw: HardwareConfig
    fmt: FixedPointFormat
    csr: CsrBlock
    srams: OperandSrams


class Engine:
    """An engine of one node: the node's parts as attributes ``sim``, ``hw``, ``fmt``,
    ``csr`` (registers, interrupts, error latch), ``trace`` (the CSR block's trace
    buffer) and ``srams``."""

    def __init__(self, parts: NodeParts) -> None:
        self.sim = parts.sim
        self.hw = parts.hw
        self.fmt = parts.fmt
        self.csr = parts.csr
        self.trace = parts.csr.trace
        self.srams = parts.srams
