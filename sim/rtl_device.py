"""The RTL backend of the device protocol: one gradsync node under cocotb + Verilator.

``DESIGN.md`` ("Firmware and its two backends"): :class:`RtlDevice` implements
``firmware.device.Device`` on the ports of one node of the Verilator model
(``hw/node.py`` inside ``hw/cluster.py``, or a bare ``hw/compute_node.py``),
so the very firmware objects that run on the golden model drive the RTL.

Ports used, all under one name prefix (``"n0_"`` ... for a cluster, ``""`` for
a single node): ``s_axil_*`` (CSR, driven by cocotbext-axi's
``AxiLiteMaster``), ``s_axis_*``/``m_axis_*`` (bulk port, ``AxiStreamSource``/
``AxiStreamSink``, header beat from ``hw.bulk.bulk_header``), ``irq``,
``cycle``, and -- when present -- ``dbg_addr``/``dbg_data`` (zero-time
combinational read of the SRAMs, used by :meth:`RtlDevice.peek`).

Host timing: every call consumes exactly the cycles ``model/device.py``
charges and takes effect in the same cycle.  ``RtlDevice`` measures the
bus's own latency once (:meth:`RtlDevice.calibrate`, before the run's reset)
and pads the difference with clock cycles *before* the real transaction, so
the transaction completes in the model's cycle.  Each call then checks that
it returned exactly there and raises :class:`HostTimingError` otherwise
(the bus got slower than calibrated); nothing drifts silently.

=====================  =====================================================
call at cycle ``t``    RTL (model cycle in brackets)
=====================  =====================================================
``write32``            AW/W handshake in ``t+W-1``, register visible and call
                       returns in ``t+W`` [``W = host_write_cycles``]
``read32``             AR handshake in ``t+R-1`` (the value is the state of
                       that cycle), returns in ``t+R`` [``R = host_read_cycles``]
``wait_irq``           line already high: a read of ``IRQ_STATUS``; else wake
                       on the line's rising edge (no polling) in cycle ``e``
                       and read ``IRQ_STATUS`` so that the read returns in
                       ``e+L+R`` [``L = host_irq_latency_cycles``]; ``e`` is
                       the cycle counter at the end of the edge's time step
``load``/``dump``      header beat, data beats at one per cycle; the last
                       beat completes in ``t + host_bulk_cycles(bytes)``
=====================  =====================================================

The ``cycle`` port is the node's cycle counter; after a rising clock edge it
reads the number of the cycle that edge began, which is what every method
uses as "now" (all nodes of a cluster share one clock and reset).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradsync.hw.bulk import BEAT_BITS, bulk_header
from gradsync.hw.sram import device_addr_bits
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig

M32 = 0xFFFF_FFFF
BEAT_BYTES = BEAT_BITS // 8
_IRQ_STATUS = rm.offset("IRQ_STATUS")
_IRQ_MASK = rm.offset("IRQ_MASK")


class HostTimingError(RuntimeError):
    """A bus transaction did not finish in the cycle the golden model charges for it."""


@dataclass(frozen=True)
class BusLatency:
    """Measured cycles from starting a transaction (right after a clock edge) to its return.

    ``write`` and ``read`` are AXI4-Lite round trips; a bulk transfer of ``b``
    beats after its header takes ``bulk_load + b`` / ``bulk_dump + b`` cycles.
    """

    write: int
    read: int
    bulk_load: int
    bulk_dump: int

    def check(self, hw: HardwareConfig) -> None:
        """Raise if the model charges fewer cycles than the bus needs (no padding can fix it)."""
        problems = []
        if self.write > hw.host_write_cycles:
            problems.append(
                f"a CSR write takes {self.write} cycles > host_write_cycles {hw.host_write_cycles}"
            )
        if self.read > hw.host_read_cycles:
            problems.append(
                f"a CSR read takes {self.read} cycles > host_read_cycles {hw.host_read_cycles}"
            )
        # one beat: host_bulk_cycles(8) = setup + 1
        for name, fixed in (("load", self.bulk_load), ("dump", self.bulk_dump)):
            if fixed + 1 > tm.host_bulk_cycles(BEAT_BYTES, hw):
                problems.append(
                    f"a one-beat bulk {name} takes {fixed + 1} cycles > "
                    f"host_bulk_cycles {tm.host_bulk_cycles(BEAT_BYTES, hw)}"
                )
        if hw.host_bulk_bytes_per_cycle > BEAT_BYTES:
            problems.append(
                f"host_bulk_bytes_per_cycle {hw.host_bulk_bytes_per_cycle} exceeds "
                f"the bulk port's {BEAT_BYTES} bytes per cycle"
            )
        if problems:
            raise HostTimingError(
                "the RTL host bus cannot meet the model's host timing: " + "; ".join(problems)
            )


class RtlDevice:
    """``firmware.device.Device`` on one RTL node.

    Parameters
    ----------
    dut:
        The cocotb handle of the Verilator top level.
    prefix:
        Name prefix of this node's ports (``"n1_"``), ``""`` for a lone node.
    hw, fmt:
        The configuration the model was built from (host timing, word format,
        SRAM sizes for the debug port's word address).
    clk:
        The clock handle (``dut.clk`` of the build's clock wrapper).
    latency:
        Bus latency from :meth:`calibrate` (shared by all nodes of a cluster).
    """

    def __init__(
        self,
        dut,
        prefix: str,
        hw: HardwareConfig,
        fmt: FixedPointFormat,
        clk,
        latency: BusLatency | None = None,
        *,
        rst=None,
    ) -> None:
        from cocotbext.axi import (
            AxiLiteBus,
            AxiLiteMaster,
            AxiStreamBus,
            AxiStreamSink,
            AxiStreamSource,
        )

        self.dut, self.prefix, self.hw, self.fmt, self.clk = dut, prefix, hw, fmt, clk
        self.wb = fmt.word_bytes
        self.latency = latency
        if latency is not None:
            latency.check(hw)
        self.axil = AxiLiteMaster(AxiLiteBus.from_prefix(dut, prefix + "s_axil"), clk, rst)
        self.src = AxiStreamSource(AxiStreamBus.from_prefix(dut, prefix + "s_axis"), clk, rst)
        self.sink = AxiStreamSink(AxiStreamBus.from_prefix(dut, prefix + "m_axis"), clk, rst)
        import logging

        for bus in (self.axil.write_if, self.axil.read_if, self.src, self.sink):
            bus.log.setLevel(logging.WARNING)  # they log every frame at INFO
        self._cycle = getattr(dut, prefix + "cycle")
        self._irq = getattr(dut, prefix + "irq")
        self._dbg_addr = getattr(dut, prefix + "dbg_addr", None)
        self._dbg_data = getattr(dut, prefix + "dbg_data", None)
        self._dbg_bits = device_addr_bits(hw.scratchpad_words, hw.gradient_words)
        self.irq_mask = 0  # shadow of IRQ_MASK (wait_irq needs IRQ_STATUS & mask == line)
        self.calls = {"read32": 0, "write32": 0, "wait_irq": 0, "load": 0, "dump": 0}

    # ------------------------------------------------------------------ time
    def now(self) -> int:
        """The current cycle (valid right after a rising clock edge)."""
        return int(self._cycle.value)

    async def _until(self, cycle: int) -> None:
        from cocotb.triggers import ClockCycles

        n = cycle - self.now()
        if n < 0:
            raise HostTimingError(
                f"node {self.prefix or '0'}: cannot wait for cycle {cycle} in cycle {self.now()}"
            )
        if n:
            await ClockCycles(self.clk, n)

    def _arrived(self, what: str, target: int) -> None:
        got = self.now()
        if got != target:
            raise HostTimingError(
                f"node {self.prefix or '0'}: {what} returned in cycle {got}, the model's host "
                f"timing says {target}; the bus latency differs from its calibration "
                f"({self.latency})"
            )

    # ------------------------------------------------------------- raw bus
    async def _axil_write(self, addr: int, value: int) -> None:
        resp = await self.axil.write(addr, int(value & M32).to_bytes(4, "little"))
        if resp.resp != 0:
            raise HostTimingError(f"CSR write of 0x{addr:x} answered {resp.resp}")

    async def _axil_read(self, addr: int) -> int:
        resp = await self.axil.read(addr, 4)
        if resp.resp != 0:
            raise HostTimingError(f"CSR read of 0x{addr:x} answered {resp.resp}")
        return int.from_bytes(resp.data, "little")

    async def _bulk(self, header: int, payload: bytes, dump: bool) -> bytes:
        from cocotbext.axi import AxiStreamFrame

        await self.src.send(AxiStreamFrame(header.to_bytes(8, "little") + payload))
        if dump:
            frame = await self.sink.recv()
            return bytes(frame.tdata)
        await self.src.wait()
        return b""

    async def calibrate(self) -> BusLatency:
        """Measure the bus's round trips on this node (changes no state the run depends on).

        Writes go to the read-only ``ID`` register (ignored by the CSR block);
        the bulk transfers load and dump one and two beats at the start of
        the scratchpad (the run resets the design afterwards).
        """
        from cocotb.triggers import RisingEdge

        async def timed(coro) -> int:
            await RisingEdge(self.clk)
            t = self.now()
            await coro
            return self.now() - t

        write = await timed(self._axil_write(rm.offset("ID"), 0))
        read = await timed(self._axil_read(rm.offset("ID")))
        per = BEAT_BITS // self.fmt.total_bits
        one = self.fmt.to_unsigned(np.zeros(per, dtype=np.int64)).astype(f"<u{self.wb}")
        loads, dumps = [], []
        for beats in (1, 2):
            words = per * beats
            data = np.tile(one, beats).tobytes()
            loads.append(
                await timed(self._bulk(bulk_header(rm.SCRATCH_BASE, words, False), data, False))
                - beats
            )
            dumps.append(
                await timed(self._bulk(bulk_header(rm.SCRATCH_BASE, words, True), b"", True))
                - beats
            )
        if loads[0] != loads[1] or dumps[0] != dumps[1]:
            raise HostTimingError(
                f"bulk transfer time is not linear in the beats: loads "
                f"{loads}, dumps {dumps} cycles beyond the data beats"
            )
        self.latency = BusLatency(write, read, loads[0], dumps[0])
        self.latency.check(self.hw)
        return self.latency

    # -------------------------------------------------------- device protocol
    async def write32(self, addr: int, value: int) -> None:
        lat = self._lat()
        target = self.now() + self.hw.host_write_cycles
        await self._until(target - lat.write)
        await self._axil_write(addr, value)
        self._arrived(f"write of 0x{addr:03x}", target)
        if addr == _IRQ_MASK:
            self.irq_mask = value & M32
        self.calls["write32"] += 1

    async def read32(self, addr: int) -> int:
        return await self._read_returning_in(self.now() + self.hw.host_read_cycles, addr)

    async def _read_returning_in(self, target: int, addr: int) -> int:
        lat = self._lat()
        await self._until(target - lat.read)
        value = await self._axil_read(addr)
        self._arrived(f"read of 0x{addr:03x}", target)
        self.calls["read32"] += 1
        return value

    async def wait_irq(self, mask: int) -> int:
        from cocotb.triggers import ReadOnly, RisingEdge

        if self.irq_mask & ~mask:
            # the line would also rise for causes the caller does not wait for
            raise ValueError(
                f"wait_irq(0x{mask:x}) on the RTL needs a mask covering IRQ_MASK "
                f"0x{self.irq_mask:x}"
            )
        if not mask & self.irq_mask:
            raise ValueError(
                f"wait_irq(0x{mask:x}) can never return: IRQ_MASK is 0x{self.irq_mask:x}"
            )
        self.calls["wait_irq"] += 1
        if int(self._irq.value):
            return await self.read32(_IRQ_STATUS) & mask
        # The line is a register output: it rises in the time step of the clock edge that
        # begins its cycle, and the simulator reports both edges of that step in an order
        # of its own.  cocotb 2 resumes a task inside the value-change callback that woke
        # it, and RisingEdge(clk) is one shared trigger that the bus models keep primed:
        # if irq's edge is reported first, clock edges counted from here (ClockCycles)
        # include the clock edge of this very step and the host wakes a cycle early.  So
        # wait for the end of the step (ReadOnly: every edge of it delivered), take the
        # line's cycle from the counter there and time the read from it.
        await RisingEdge(self._irq)
        await ReadOnly()
        rise = self.now()
        # Leave the read-only phase (the host may drive the bus again) in cycle rise + 1;
        # HardwareConfig keeps host_irq_latency_cycles >= 1, so the read can still start in time.
        await RisingEdge(self.clk)
        target = rise + self.hw.host_irq_latency_cycles + self.hw.host_read_cycles
        return await self._read_returning_in(target, _IRQ_STATUS) & mask

    async def load(self, addr: int, array: np.ndarray) -> None:
        data = np.asarray(array, dtype=np.int64).reshape(-1)
        word_bytes = self._bulk_word_bytes(addr, len(data))
        if word_bytes == 4:
            payload = (data & M32).astype("<u4").tobytes()
        else:
            # clamp, or wrap when the format does not saturate
            payload = self.fmt.to_unsigned(self.fmt.saturate_raw(data)).astype(f"<u{self.wb}").tobytes()
        payload += bytes(-len(payload) % BEAT_BYTES)
        await self._timed_bulk("load", addr, len(data), word_bytes, payload, False)

    async def dump(self, addr: int, n: int) -> np.ndarray:
        word_bytes = self._bulk_word_bytes(addr, n)
        raw = await self._timed_bulk("dump", addr, n, word_bytes, b"", True)
        if word_bytes == 4:
            return np.frombuffer(raw, dtype="<u4")[:n].astype(np.int64)
        words = np.frombuffer(raw, dtype=f"<u{self.wb}")[:n].astype(np.int64)
        return self.fmt.from_unsigned(words)

    async def _timed_bulk(self, what, addr, n, word_bytes, payload, dump) -> bytes:
        lat = self._lat()
        nbytes = n * word_bytes
        beats = -(-nbytes // BEAT_BYTES)
        target = self.now() + tm.host_bulk_cycles(nbytes, self.hw)
        fixed = lat.bulk_dump if dump else lat.bulk_load
        await self._until(target - fixed - beats)
        raw = await self._bulk(bulk_header(addr, n, dump), payload, dump)
        self._arrived(f"bulk {what} of {n} words at 0x{addr:08x}", target)
        if dump and len(raw) < nbytes:
            raise HostTimingError(
                f"bulk dump of {n} words at 0x{addr:08x} returned only {len(raw)} bytes"
            )
        self.calls[what] += 1
        return raw

    def _bulk_word_bytes(self, addr: int, n: int) -> int:
        for base, span, wbytes in (
            (rm.RING_MEM_BASE, rm.REGION_SPAN, 4),
            (rm.TRACE_MEM_BASE, rm.REGION_SPAN, 4),
            (rm.SCRATCH_BASE, self.hw.scratchpad_words * self.wb, self.wb),
            (rm.GRAD_BASE, self.hw.gradient_words * self.wb, self.wb),
        ):
            if base <= addr and addr + n * wbytes <= base + span and not (addr - base) % wbytes:
                if n < 1:
                    break
                return wbytes
        raise ValueError(
            f"bulk access of {n} words at 0x{addr:08x} is outside device memory or misaligned"
        )

    def _lat(self) -> BusLatency:
        if self.latency is None:
            raise HostTimingError("RtlDevice used before its bus latency was calibrated")
        return self.latency

    # ----------------------------------------------------------- debug port
    async def peek(self, addr: int, n: int) -> np.ndarray:
        """Read ``n`` SRAM words at byte address ``addr`` through the debug port, in zero cycles.

        Each word costs a 1 ps simulator step (the port is combinational);
        the whole read must fit before the next clock edge.
        """
        from cocotb.triggers import Timer
        from cocotb.utils import get_sim_time

        if self._dbg_addr is None:
            raise RuntimeError(f"the node has no {self.prefix}dbg_addr/dbg_data debug port")
        index_bits = self._dbg_bits - 1
        for bank, base in enumerate((rm.SCRATCH_BASE, rm.GRAD_BASE)):
            if base <= addr < base + rm.REGION_SPAN:
                first = (addr - base) // self.wb | bank << index_bits
                break
        else:
            raise ValueError(f"debug read at 0x{addr:08x} is outside the SRAMs")
        t0, c0 = get_sim_time("ps"), self.now()
        out = np.empty(n, dtype=np.int64)
        for i in range(n):
            self._dbg_addr.value = first + i
            await Timer(1, "ps")
            out[i] = int(self._dbg_data.value)
        if self.now() != c0 or get_sim_time("ps") - t0 != n:
            raise HostTimingError("debug read crossed a clock edge")
        return self.fmt.from_unsigned(out)
