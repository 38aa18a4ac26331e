"""A node's transmit link as firmware sets it at run time: ``LINK_SET``, ``LINK_LIMITS``, the lock.

The golden twin of the RTL node's link register (``DESIGN.md``, "NIC + links").
At reset a node's link is its build's (``HardwareConfig.link``); the host may
set bytes per cycle, maximum payload and latency in one ``LINK_SET`` write
(``gradsync.spec.link.link_from_set_value``) until the node's first
``DOORBELL`` write locks it.  A refused write changes nothing and latches
``LINK_SET_LOCKED`` or ``LINK_SET_BAD`` (``gradsync.spec.link.link_set_refusal``)
in the write's cycle, as ``CMD_LAUNCH``'s ``CMD_FIFO_FULL`` does; an accepted
write takes effect in the cycle after it.

Every timing of the node's transmitter and NIC follows the link in effect in
the cycle concerned (:meth:`LinkSetting.at`): the fault-free formulas of
:mod:`gradsync.model.nic` and, on faulted runs, the cycle-by-cycle
:class:`~gradsync.model.link.LinkLayer`, which may step cycles before the
event loop reaches them and so registers here (:meth:`LinkSetting.watch`) to
be told if a change comes too late for it.
"""

from __future__ import annotations

from dataclasses import replace

from gradsync.model.csr import CsrBlock
from gradsync.model.events import SimulationError, Simulator
from gradsync.spec import link as lk
from gradsync.spec import regmap as rm
from gradsync.spec.hardware import HardwareConfig

_LINK_INFO = rm.reg("LINK_INFO")


class LinkSetting:
    """The transmit link of one node, by cycle.

    Parameters
    ----------
    sim, hw, csr:
        The event kernel, the node's build configuration (its link is the reset
        value) and its CSR block (``LINK_SET`` and the ``LINK_*`` reads are bound here).

    Attributes
    ----------
    locked:
        A ``DOORBELL`` was written since reset (``LINK_SET`` is refused from then on).
    history:
        ``[(first cycle, hw, link), ...]``: the node's configuration with the link in
        effect from that cycle on (``hw`` for ``gradsync.spec.timing``'s formulas).
    """

    def __init__(self, sim: Simulator, hw: HardwareConfig, csr: CsrBlock) -> None:
        self.sim = sim
        self.csr = csr
        self.locked = False
        self.history: list[tuple[int, HardwareConfig, lk.LinkConfig]] = [(0, hw, hw.link)]
        self._limits = csr.values[rm.offset("LINK_LIMITS")]
        self._width_bytes = hw.link_width_bytes  # 8 bytes/cycle only on a width-8 build
        self._width8 = _LINK_INFO.pack(width8=int(hw.link_width_bytes == 8))
        self._watchers: list = []
        csr.bind("LINK_SET", write=self._write)
        csr.bind(
            "LINK_INFO",
            read=lambda: self._info(self.at(csr.read_cycle)) | self._width8,
        )
        csr.bind("LINK_LATENCY", read=lambda: self.at(csr.read_cycle).latency_cycles)
        csr.bind("LINK_MAX_PAYLOAD", read=lambda: self.at(csr.read_cycle).max_payload_bytes)

    @staticmethod
    def _info(link: lk.LinkConfig) -> int:
        return _LINK_INFO.pack(
            bytes_per_cycle=link.bytes_per_cycle,
            header_bytes=link.header_bytes,
            crc_bytes=link.crc_bytes,
        )

    def at(self, cycle: int) -> lk.LinkConfig:
        """The link in effect in ``cycle``."""
        return self._entry(cycle)[2]

    def hw_at(self, cycle: int) -> HardwareConfig:
        """The node's configuration with the link in effect in ``cycle``."""
        return self._entry(cycle)[1]

    @property
    def current(self) -> lk.LinkConfig:
        """The link in effect in the event loop's current cycle."""
        return self.at(self.sim.now)

    def _entry(self, cycle: int) -> tuple[int, HardwareConfig, lk.LinkConfig]:
        last = self.history[-1]
        if cycle >= last[0]:
            return last
        for entry in reversed(self.history):
            if entry[0] <= cycle:
                return entry
        raise AssertionError("history starts at cycle 0")

    def watch(self, layer) -> None:
        """``layer`` (a link layer reading this link, with its next cycle in ``layer.now``)
        must not have simulated a cycle a later change applies to."""
        self._watchers.append(layer)

    def lock(self) -> None:
        """A ``DOORBELL`` write (any queue, accepted or refused)."""
        self.locked = True

    def _write(self, value: int) -> None:
        if self.locked:
            self.csr.error(rm.ErrorCode.LINK_SET_LOCKED, rm.Engine.HOST, 0, value)
            return
        refusal = lk.link_set_refusal(value, self._limits, self._width_bytes)
        if refusal is not None:
            code, index = refusal
            self.csr.error(code, rm.Engine.HOST, index, value)
            return
        first = self.sim.now + 1
        for layer in self._watchers:
            if layer.now > first:
                raise SimulationError(
                    f"model: LINK_SET in cycle {self.sim.now} changes a link {layer.name} has "
                    f"already stepped to cycle {layer.now - 1}: set every node's link before "
                    f"any node's first DOORBELL"
                )
        link = lk.link_from_set_value(value)
        hw = replace(
            self.history[-1][1],
            link_bytes_per_cycle=link.bytes_per_cycle,
            link_latency_cycles=link.latency_cycles,
            max_payload_bytes=link.max_payload_bytes,
        )  # header and CRC stay the build's
        while self.history[-1][0] >= first:  # two writes in one cycle: the later one wins
            self.history.pop()
        self.history.append((first, hw, hw.link))
