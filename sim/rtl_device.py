"""The RTL backend of the device protocol: one gradsync node under cocotb + Verilator.

``DESIGN.md`` ("Firmware and its two backends"): :class:`RtlDevice` implements
``firmware.device.Device`` on the ports of one node of the Verilator model
(``hw/node.py`` inside ``hw/cluster.py``, or a bare ``hw/compute_node.py``),
so the very firmware objects that run on the golden model drive the RTL.

Ports used, all under one name prefix (``"n0_"`` ... for a cluster, ``""`` for
a single node): ``s_axil_*`` (CSR), ``s_axis_*``/``m_axis_*`` (bulk port,
header beat from ``hw.bulk.bulk_header``), ``irq``, ``cycle``, and -- when
present -- ``dbg_en``/``dbg_addr``/``dbg_data`` (zero-time combinational read
of the SRAMs, used by :meth:`RtlDevice.peek`, which raises ``dbg_en`` only for
the read's own time step).

Host timing: every call consumes exactly the cycles ``model/device.py``
charges and takes effect in the same cycle.  The host bus is a *lean
driver* that knows that timing in advance: a call computes the cycle in
which its handshake must happen, has a plain simulator callback (no cocotb
task) put the transaction on the ports in that cycle, and wakes the calling
task once, when the transaction has taken effect (a ``Timer`` to 1 time step
after the rising edge of the return cycle).  Data beats of a bulk transfer
and the words of a debug read are driven/sampled by the same chain of plain
callbacks.  So a run costs one task wake-up per device call and no Python
per idle clock: the firmware's ``wait_irq`` sleeps on the interrupt line's
rising edge.  Each call checks that the design answered in that cycle
(``BVALID``/``RVALID``/dump ``TVALID``) and raises :class:`HostTimingError`
otherwise; nothing drifts silently.

Touching :attr:`RtlDevice.axil`, :attr:`~RtlDevice.src` or
:attr:`~RtlDevice.sink` switches the device to cocotbext-axi's bus models
(``AxiLiteMaster``, ``AxiStreamSource``/``AxiStreamSink``), e.g. to give them
random pause generators; calls then pad with clock cycles before the real
transaction and check the return cycle as above (:meth:`RtlDevice.calibrate`
measures either bus).

=====================  =====================================================
call at cycle ``t``    RTL (model cycle in brackets)
=====================  =====================================================
``write32``            AW/W handshake in ``t+W-2``, register written in ``t+W-1``,
                       visible and call returns in ``t+W`` [``W = host_write_cycles``]
``read32``             AR handshake in ``t+R-2``, the register read in ``t+R-1``
                       (the value is the state of that cycle), returns in ``t+R``
                       [``R = host_read_cycles``]
``wait_irq``           line already high: a read of ``IRQ_STATUS``; else wake
                       on the line's rising edge (no polling) in cycle ``e``
                       and read ``IRQ_STATUS`` so that the read returns in
                       ``e+L+R`` [``L = host_irq_latency_cycles``]; ``e`` is
                       the cycle counter at the end of the edge's time step
``load``/``dump``      header beat in ``t+S-1``, data beats at one per cycle;
                       the call returns in ``t + host_bulk_cycles(bytes)``
                       [``S = host_bulk_setup_cycles``]
=====================  =====================================================

Posted writes (``post_writes=True``, what the training runner uses): ``write32``
schedules its transaction and returns at once, the device's time running ahead of the
simulator's by the write's cycles; the next call starts from that time, so every
transaction still happens in the cycle the model charges.  A read, an interrupt wait,
a bulk transfer, a debug read or :meth:`RtlDevice.settle` first lets the simulator catch
up; a write the design did not accept in its cycle raises :class:`HostTimingError`
there.  A firmware that writes several registers and then waits wakes once, not once
per write.  Off by default: a testbench that looks at the design's ports right after
``await dev.write32(...)`` sees the write done.

The ``cycle`` port is the node's cycle counter; after a rising clock edge it
reads the number of the cycle that edge began, which is what every method
uses as "now" (all nodes of a cluster share one clock and reset).  Calls
must start right after a rising edge or between edges, never in a time step
that holds a rising edge not yet evaluated.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np

from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.formats import BFloat16Format, FixedPointFormat
from gradsync.spec.hardware import HardwareConfig
from gradsync.spec.host import BEAT_BITS, bulk_header, device_addr_bits

M32 = 0xFFFF_FFFF
BEAT_BYTES = BEAT_BITS // 8
_IRQ_STATUS = rm.offset("IRQ_STATUS")
_IRQ_MASK = rm.offset("IRQ_MASK")
#: Cycles from a CSR handshake to its response: the lean driver hands a request over
#: this long before the cycle the call returns in.
_CSR = tm.CSR_RESPONSE_CYCLES
#: Time steps after a rising edge at which the lean driver acts (inside the cycle,
#: clear of the edge's own time step, so no ordering question with the clock arises).
HOST_OFFSET_STEPS = 1


class HostTimingError(RuntimeError):
    """A bus transaction did not finish in the cycle the golden model charges for it."""


@dataclass(frozen=True)
class BusLatency:
    """Measured cycles from starting a transaction (right after a clock edge) to its return.

    ``write`` and ``read`` are AXI4-Lite round trips; a bulk transfer of ``b``
    beats after its header takes ``bulk_load + b`` / ``bulk_dump + b`` cycles.
    ``period_steps`` and ``rise_steps`` are the clock's period and the time of
    one rising edge modulo it, in simulator time steps (0: not measured).
    """

    write: int
    read: int
    bulk_load: int
    bulk_dump: int
    period_steps: int = 0
    rise_steps: int = 0

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


class Recorder:
    """Every port write and read of the lean drivers, with its time, for a replay without cocotb.

    Set :data:`RECORDER` to one to record (``sim/bench_cocotb.py``); :meth:`write` saves the
    events as ``sim/bench_main.cpp`` reads them.  Reads in a rising edge's own time step are
    left out (cocotb sees them after the step's evaluation, the replay before it).
    """

    def __init__(self) -> None:
        self.events: list[tuple[int, str, int, int]] = []  # (time step, port, 0 put/1 get, value)
        self.period = self.rise = 0

    def clock(self, latency: BusLatency) -> None:
        """Learn the clock (from a calibration) so that edge-step reads can be left out."""
        self.period, self.rise = latency.period_steps, latency.rise_steps

    def add(self, handle, kind: int, value: int) -> None:
        from cocotb.utils import get_sim_time

        t = get_sim_time("step")
        if kind and (not self.period or (t - self.rise) % self.period == 0):
            return
        self.events.append((t, handle._name, kind, value))

    def write(self, path, ports: list[str]) -> int:
        """Write the events of ``ports`` (their index in that list) to ``path``; returns the count."""
        index = {name: i for i, name in enumerate(ports)}
        lines = [f"{t} {index[n]} {k} {v:x}" for t, n, k, v in self.events if n in index]
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return len(lines)


#: The recorder the lean drivers report to, or None (the normal case: no cost but a test).
RECORDER: Recorder | None = None


class _Port:
    """A port's simulator object, width and name, looked up once (a cocotb handle's
    ``len()`` and hashing are Python calls; these run for every beat and device call)."""

    __slots__ = ("_name", "raw", "width")

    def __init__(self, handle) -> None:
        self.raw, self.width, self._name = handle._handle, len(handle), handle._name


def _get(port) -> int:
    """A port's value as an unsigned int (the raw simulator read; ``.value`` builds a
    ``LogicArray`` first, several times slower, and this runs once per device call).
    ``port``: a :class:`_Port` or a cocotb handle."""
    if port.__class__ is not _Port:
        port = _Port(port)
    raw, width = port.raw, port.width
    if width <= 32:
        value = raw.get_signal_val_long() & ((1 << width) - 1)  # (a C long: signed)
    else:
        value = int(raw.get_signal_val_binstr(), 2)
    if RECORDER is not None:
        RECORDER.add(port, 1, value)
    return value


#: GPI action of a write without delay (``cocotb.handle.Immediate``'s): seen by the next evaluation.
_NO_DELAY = 3


def _put(port, value: int) -> None:
    """Deposit ``value`` on an input port now, as ``handle.value = Immediate(value)`` does
    but straight through the simulator object (this runs for every beat and debug word).
    ``port``: a :class:`_Port` or a cocotb handle."""
    if port.__class__ is not _Port:
        port = _Port(port)
    if port.width <= 32:
        port.raw.set_signal_val_int(_NO_DELAY, value)
    else:
        port.raw.set_signal_val_binstr(_NO_DELAY, format(value, f"0{port.width}b"))
    if RECORDER is not None:
        RECORDER.add(port, 0, value)


def _at(delay_steps: int, func, *args) -> None:
    """Call ``func(*args)`` ``delay_steps`` simulator time steps from now, outside any cocotb
    task (a plain GPI timed callback: no scheduler round trip); ``0``: call it now."""
    if delay_steps <= 0:
        func(*args)
        return
    _timed_callback()(delay_steps, func, *args)


def _steps() -> int:
    """The simulator's time in steps (``cocotb.utils.get_sim_time("step")`` without its
    argument handling: this runs several times per device call)."""
    high, low = _simulator().get_sim_time()
    return high << 32 | low


@functools.cache
def _simulator():
    from cocotb import simulator  # only inside a simulator process

    return simulator


@functools.cache
def _timer():
    # (``from cocotb.triggers import Timer`` inside a method that runs once per device call
    # costs a failed module ``__getattr__("__path__")`` lookup every time)
    from cocotb.triggers import Timer

    return Timer


@functools.cache
def _timed_callback():
    from cocotb import simulator  # only inside a simulator process

    return simulator.register_timed_callback


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
        SRAM sizes for the debug port's word address).  In bf16 the SRAM words are
        bit patterns (``uint16``; an fp32 gradient-SRAM element is two of them, low
        half first), moved and returned as they are.
    clk:
        The clock handle (``dut.clk`` of the build's clock wrapper).
    latency:
        Bus latency from :meth:`calibrate` (shared by all nodes of a cluster).
    rst:
        The reset handle (for cocotbext-axi's bus models, when used).
    post_writes:
        Return from ``write32`` without waiting for the simulator (module docstring,
        "Posted writes"); lean driver only.
    """

    def __init__(
        self,
        dut,
        prefix: str,
        hw: HardwareConfig,
        fmt: FixedPointFormat | BFloat16Format,
        clk,
        latency: BusLatency | None = None,
        *,
        rst=None,
        post_writes: bool = False,
    ) -> None:
        self.dut, self.prefix, self.hw, self.fmt, self.clk, self.rst = (
            dut,
            prefix,
            hw,
            fmt,
            clk,
            rst,
        )
        self.wb = fmt.word_bytes
        self.post_writes = post_writes
        self._posted_until = 0  # cycle in which the last posted write returns
        self._posted_error: str | None = None
        self._now_rise, self._now_cycle = -1, 0  # now()'s cache: a rising edge's time, its cycle
        self.latency = latency
        if latency is not None:
            latency.check(hw)
        self._ext = None  # cocotbext-axi bus models, once asked for (see the module docstring)
        self._cycle = _Port(getattr(dut, prefix + "cycle"))
        self._irq = getattr(dut, prefix + "irq")
        self._irq_port = _Port(self._irq)
        self._dbg_en = getattr(dut, prefix + "dbg_en", None)
        self._dbg_addr = getattr(dut, prefix + "dbg_addr", None)
        self._dbg_data = getattr(dut, prefix + "dbg_data", None)
        self._dbg_bits = device_addr_bits(hw.scratchpad_words, hw.gradient_words)
        self._p = {
            name: _Port(getattr(dut, f"{prefix}{name}"))
            for name in (
                "s_axil_awaddr", "s_axil_awvalid", "s_axil_wdata", "s_axil_wstrb",
                "s_axil_wvalid", "s_axil_bvalid", "s_axil_bready", "s_axil_araddr",
                "s_axil_arvalid", "s_axil_rdata", "s_axil_rvalid", "s_axil_rready",
                "s_axis_tdata", "s_axis_tvalid", "s_axis_tlast", "s_axis_tready",
                "m_axis_tdata", "m_axis_tvalid", "m_axis_tlast", "m_axis_tready",
            )
        }  # fmt: skip
        self.quiesce()
        self.irq_mask = 0  # shadow of IRQ_MASK (wait_irq needs IRQ_STATUS & mask == line)
        self.calls = {"read32": 0, "write32": 0, "wait_irq": 0, "load": 0, "dump": 0}

    def quiesce(self) -> None:
        """Put the host's side of the bus at rest: no request valid, every response taken.

        A firmware task cancelled in the middle of a call (a watchdog stop, a spent cycle
        budget) leaves its request valid for ever, since the lean driver lowers it when the
        call returns; call this once that transaction has had time to complete, before
        anything else uses the bus.
        """
        for name in ("s_axil_awvalid", "s_axil_wvalid", "s_axil_arvalid", "s_axis_tvalid",
                     "s_axis_tlast", "s_axil_awaddr", "s_axil_araddr", "s_axil_wdata",
                     "s_axis_tdata"):  # fmt: skip
            _put(self._p[name], 0)
        for name in ("s_axil_bready", "s_axil_rready", "m_axis_tready"):
            _put(self._p[name], 1)  # the host always takes responses and dump beats
        _put(self._p["s_axil_wstrb"], 0xF)
        self._posted_until, self._posted_error = 0, None

    # ------------------------------------------------ cocotbext-axi bus models
    def _models(self) -> dict:
        if self._ext is None:
            from cocotbext.axi import (
                AxiLiteBus,
                AxiLiteMaster,
                AxiStreamBus,
                AxiStreamSink,
                AxiStreamSource,
            )

            d, p, clk, rst = self.dut, self.prefix, self.clk, self.rst
            self._ext = {
                "axil": AxiLiteMaster(AxiLiteBus.from_prefix(d, p + "s_axil"), clk, rst),
                "src": AxiStreamSource(AxiStreamBus.from_prefix(d, p + "s_axis"), clk, rst),
                "sink": AxiStreamSink(AxiStreamBus.from_prefix(d, p + "m_axis"), clk, rst),
            }
            axil = self._ext["axil"]
            for bus in (axil.write_if, axil.read_if, self._ext["src"], self._ext["sink"]):
                bus.log.setLevel(logging.WARNING)  # they log every frame at INFO
        return self._ext

    @property
    def axil(self):
        """cocotbext-axi ``AxiLiteMaster`` on the CSR port (switches the device to it)."""
        return self._models()["axil"]

    @property
    def src(self):
        """cocotbext-axi ``AxiStreamSource`` on the bulk port (switches the device to it)."""
        return self._models()["src"]

    @property
    def sink(self):
        """cocotbext-axi ``AxiStreamSink`` on the dump stream (switches the device to it)."""
        return self._models()["sink"]

    # ------------------------------------------------------------------ time
    def now(self) -> int:
        """The simulator's current cycle (valid right after a rising clock edge, or between
        edges); with posted writes in flight the device's own time is :meth:`device_now`."""
        lat = self.latency
        if lat is None or not lat.period_steps:
            return _get(self._cycle)
        return self._cycle_at(_steps(), lat)

    def _cycle_at(self, t: int, lat: BusLatency) -> int:
        """The cycle at simulator time ``t`` (now): the counter is read once per clock period,
        keyed by the time of the period's rising edge.  A read in the edge's own time step
        is not kept: a timer of some other task (a progress report, a watchdog) may run
        there before the step's evaluation and see the previous cycle."""
        rise = t - (t - lat.rise_steps) % lat.period_steps
        if rise == t:
            return _get(self._cycle)
        if rise != self._now_rise:
            self._now_rise, self._now_cycle = rise, _get(self._cycle)
        return self._now_cycle

    def device_now(self) -> int:
        """The cycle in which the device's next call starts: the simulator's, or the return
        cycle of the last posted write if that is later."""
        return max(self.now(), self._posted_until)

    async def settle(self) -> None:
        """Let the simulator reach the device's time (every posted write done); raise
        :class:`HostTimingError` if one of them was not accepted in its cycle."""
        if self._posted_until > self.now():
            await self._sleep_until(self._posted_until)
        if self._posted_error is not None:
            error, self._posted_error = self._posted_error, None
            raise HostTimingError(error)

    def _delay_to(self, cycle: int) -> int:
        """Time steps from now to ``HOST_OFFSET_STEPS`` after the rising edge beginning ``cycle``."""
        lat = self._lat()
        now_steps = _steps()
        rise = now_steps - (now_steps - lat.rise_steps) % lat.period_steps
        at = rise + (cycle - self._cycle_at(now_steps, lat)) * lat.period_steps + HOST_OFFSET_STEPS
        if at < now_steps:
            raise HostTimingError(
                f"node {self.prefix or '0'}: cannot act in cycle {cycle} in cycle {self.now()}"
            )
        return at - now_steps

    async def _sleep_until(self, cycle: int) -> None:
        """Return ``HOST_OFFSET_STEPS`` after the rising edge beginning ``cycle`` (one wake)."""
        delay = self._delay_to(cycle)
        if delay:
            await _timer()(delay, "step")

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

    # ----------------------------------------------------- lean bus driver
    def _drive_write(self, addr: int, value: int) -> None:
        p = self._p
        _put(p["s_axil_awaddr"], addr)
        _put(p["s_axil_wdata"], value & M32)
        _put(p["s_axil_awvalid"], 1)
        _put(p["s_axil_wvalid"], 1)

    def _drive_read(self, addr: int) -> None:
        _put(self._p["s_axil_araddr"], addr)
        _put(self._p["s_axil_arvalid"], 1)

    def _post_write(self, target: int, addr: int, value: int) -> None:
        """AW/W handshake in ``target - 2``, checked and lowered in ``target`` by callbacks."""
        handshake = self._delay_to(target - _CSR)
        _at(handshake, self._drive_write, addr, value)
        _at(handshake + _CSR * self.latency.period_steps, self._end_posted_write, addr, target)
        self._posted_until = target

    def _end_posted_write(self, addr: int, target: int) -> None:
        p = self._p
        _put(p["s_axil_awvalid"], 0)
        _put(p["s_axil_wvalid"], 0)
        if not _get(p["s_axil_bvalid"]) and self._posted_error is None:
            self._posted_error = (
                f"node {self.prefix or '0'}: CSR write of 0x{addr:x} not accepted in cycle "
                f"{target - _CSR}"
            )

    async def _lean_write(self, target: int, addr: int, value: int) -> None:
        """AW/W handshake in ``target - 2`` (the CSR port answers ``CSR_RESPONSE_CYCLES`` later);
        return in ``target``."""
        _at(self._delay_to(target - _CSR), self._drive_write, addr, value)
        await self._sleep_until(target)
        p = self._p
        _put(p["s_axil_awvalid"], 0)
        _put(p["s_axil_wvalid"], 0)
        if not _get(p["s_axil_bvalid"]):
            raise HostTimingError(
                f"node {self.prefix or '0'}: CSR write of 0x{addr:x} not accepted in cycle "
                f"{target - _CSR}"
            )

    async def _lean_read(self, target: int, addr: int) -> int:
        """AR handshake in ``target - 2``; RDATA taken in ``target``."""
        _at(self._delay_to(target - _CSR), self._drive_read, addr)
        await self._sleep_until(target)
        p = self._p
        _put(p["s_axil_arvalid"], 0)
        if not _get(p["s_axil_rvalid"]):
            raise HostTimingError(
                f"node {self.prefix or '0'}: CSR read of 0x{addr:x} not accepted in cycle "
                f"{target - _CSR}"
            )
        return _get(p["s_axil_rdata"])

    def _beat(self, data: int, last: int) -> None:
        _put(self._p["s_axis_tdata"], data)
        _put(self._p["s_axis_tlast"], last)

    def _header(self, header: int) -> None:
        if not _get(self._p["s_axis_tready"]):
            self._bulk_error = "the bulk port was busy at the header"
        self._beat(header, 0)
        _put(self._p["s_axis_tvalid"], 1)

    async def _lean_bulk(
        self, start: int, header: int, payload: bytes, beats: int, dump: bool
    ) -> bytes:
        """Header handshake in ``start``, then one beat a cycle; return in the cycle after the
        last load beat, or in the last dump beat's cycle (its handshake ends that cycle)."""
        lat = self._lat()
        self._bulk_error = None
        first = self._delay_to(start)
        _at(first, self._header, header)
        period = lat.period_steps
        if not dump:
            words = np.frombuffer(payload, dtype="<u8")
            for k, w in enumerate(words.tolist()):
                _at(first + (k + 1) * period, self._beat, w, int(k == len(words) - 1))
            await self._sleep_until(start + beats + 1)
            _put(self._p["s_axis_tvalid"], 0)
            _put(self._p["s_axis_tlast"], 0)
            if self._bulk_error:
                raise HostTimingError(f"node {self.prefix or '0'}: {self._bulk_error}")
            return b""
        got: list[int] = []
        _at(first + period, self._end_header)
        for k in range(beats - 1):
            _at(first + (k + 2) * period, self._take, got, 0)
        await self._sleep_until(start + beats + 1)
        self._take(got, 1)
        if self._bulk_error:
            raise HostTimingError(f"node {self.prefix or '0'}: {self._bulk_error}")
        return np.array(got, dtype="<u8").tobytes()

    def _end_header(self) -> None:
        _put(self._p["s_axis_tvalid"], 0)

    def _take(self, got: list, last: int) -> None:
        p = self._p
        if not _get(p["m_axis_tvalid"]) or _get(p["m_axis_tlast"]) != last:
            self._bulk_error = f"dump beat {len(got)} not on the port in its cycle"
        got.append(_get(p["m_axis_tdata"]))

    # ------------------------------------------------- cocotbext-axi driver
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

    # ------------------------------------------------------------- calibration
    async def calibrate(self) -> BusLatency:
        """Measure the clock and the bus's round trips on this node (changes no state the run
        depends on).

        Writes go to the read-only ``ID`` register (ignored by the CSR block);
        the bulk transfers load and dump one and two beats at the start of
        the scratchpad (the run resets the design afterwards).
        """
        from cocotb.triggers import RisingEdge
        from cocotb.utils import get_sim_time

        await RisingEdge(self.clk)
        t1 = get_sim_time("step")
        await RisingEdge(self.clk)
        period = get_sim_time("step") - t1
        self.latency = BusLatency(0, 0, 0, 0, period, t1 % period)

        async def timed(kind, *args) -> int:
            await RisingEdge(self.clk)
            t = self.now()
            if self._ext is not None:
                await {"w": self._axil_write, "r": self._axil_read, "b": self._bulk}[kind](*args)
                return self.now() - t
            if kind == "w":
                await self._lean_write(t + _CSR, *args)
            elif kind == "r":
                await self._lean_read(t + _CSR, *args)
            else:
                await self._lean_bulk(t, *args)
            return self.now() - t

        async def bulk(header: int, data: bytes, beats: int, dump: bool) -> int:
            if self._ext is not None:
                return await timed("b", header, data, dump)
            return await timed("x", header, data, beats, dump)

        write = await timed("w", rm.offset("ID"), 0)
        read = await timed("r", rm.offset("ID"))
        per = BEAT_BITS // self.fmt.total_bits
        one = self.fmt.to_unsigned(np.zeros(per, dtype=np.int64)).astype(f"<u{self.wb}")
        loads, dumps = [], []
        for beats in (1, 2):
            words = per * beats
            data = np.tile(one, beats).tobytes()
            loads.append(
                await bulk(bulk_header(rm.SCRATCH_BASE, words, False), data, beats, False) - beats
            )
            dumps.append(
                await bulk(bulk_header(rm.SCRATCH_BASE, words, True), b"", beats, True) - beats
            )
        if loads[0] != loads[1] or dumps[0] != dumps[1]:
            raise HostTimingError(
                f"bulk transfer time is not linear in the beats: loads "
                f"{loads}, dumps {dumps} cycles beyond the data beats"
            )
        self.latency = BusLatency(write, read, loads[0], dumps[0], period, t1 % period)
        self.latency.check(self.hw)
        return self.latency

    # -------------------------------------------------------- device protocol
    async def write32(self, addr: int, value: int) -> None:
        lat = self._lat()
        if self.post_writes and self._ext is None and self.hw.host_write_cycles > _CSR:
            # (else one write's request would be lowered in the cycle the next raises it)
            self._post_write(self.device_now() + self.hw.host_write_cycles, addr, value)
            if addr == _IRQ_MASK:
                self.irq_mask = value & M32
            self.calls["write32"] += 1
            return
        await self.settle()
        target = self.now() + self.hw.host_write_cycles
        if self._ext is None:
            await self._lean_write(target, addr, value)
        else:
            await self._until(target - lat.write)
            await self._axil_write(addr, value)
        self._arrived(f"write of 0x{addr:03x}", target)
        if addr == _IRQ_MASK:
            self.irq_mask = value & M32
        self.calls["write32"] += 1

    async def read32(self, addr: int) -> int:
        return await self._read_returning_in(
            self.device_now() + self.hw.host_read_cycles, addr
        )

    async def _read_returning_in(self, target: int, addr: int) -> int:
        lat = self._lat()
        if self._ext is None:
            value = await self._lean_read(target, addr)
        else:
            await self.settle()
            await self._until(target - lat.read)
            value = await self._axil_read(addr)
        self._arrived(f"read of 0x{addr:03x}", target)
        await self.settle()  # the writes posted before it are done: raise if one failed
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
        await self.settle()
        if _get(self._irq_port):
            return await self.read32(_IRQ_STATUS) & mask
        await RisingEdge(self._irq)
        if self._ext is None:
            # The line is a register output: it rises in the time step of a rising clock edge,
            # and value-change callbacks run after that step's evaluation, so the counter
            # already reads the line's cycle; the read is timed in simulator time from here.
            rise = self.now()
        else:
            # cocotbext-axi keeps RisingEdge(clk) primed and cocotb resumes a task inside the
            # value-change callback that woke it: if irq's edge is reported first, clock edges
            # counted from here include this step's.  Wait for the end of the step, take the
            # line's cycle there and leave the read-only phase in cycle rise + 1
            # (HardwareConfig keeps host_irq_latency_cycles >= 1).
            await ReadOnly()
            rise = self.now()
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
            payload = (
                self.fmt.to_unsigned(self.fmt.saturate_raw(data)).astype(f"<u{self.wb}").tobytes()
            )
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
        await self.settle()
        nbytes = n * word_bytes
        beats = -(-nbytes // BEAT_BYTES)
        target = self.now() + tm.host_bulk_cycles(nbytes, self.hw)
        fixed = lat.bulk_dump if dump else lat.bulk_load
        header = bulk_header(addr, n, dump)
        if self._ext is None:
            raw = await self._lean_bulk(target - fixed - beats, header, payload, beats, dump)
        else:
            await self._until(target - fixed - beats)
            raw = await self._bulk(header, payload, dump)
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

        The port is combinational and returns several consecutive words per address
        (``hw.node.DEBUG_WORDS``): a chain of plain read-write-phase callbacks sets each
        address and samples the previous one after the simulator has evaluated it, all
        within the current time step; the caller resumes one time step later (never across
        a clock edge).  Debug reads are not recorded for a replay (:class:`Recorder`).
        """
        from cocotb.triggers import Timer
        from cocotb.utils import get_sim_time

        if self._dbg_addr is None:
            raise RuntimeError(f"the node has no {self.prefix}dbg_addr/dbg_data debug port")
        await self.settle()
        index_bits = self._dbg_bits - 1
        for bank, base in enumerate((rm.SCRATCH_BASE, rm.GRAD_BASE)):
            if base <= addr < base + rm.REGION_SPAN:
                first = (addr - base) // self.wb | bank << index_bits
                break
        else:
            raise ValueError(f"debug read at 0x{addr:08x} is outside the SRAMs")
        lat = self._lat()
        t0, c0 = get_sim_time("step"), self.now()
        if lat.period_steps - (t0 - lat.rise_steps) % lat.period_steps <= 1:
            raise HostTimingError("debug read requested in the time step before a clock edge")
        bits = self.fmt.total_bits
        per = len(self._dbg_data) // bits  # words per address
        groups = -(-n // per)
        raw = bytearray(groups * per * bits // 8)
        chunk = per * bits // 8
        addr_h, data_h = self._dbg_addr._handle, self._dbg_data._handle
        en_h = self._dbg_en._handle if self._dbg_en is not None else None
        from cocotb import simulator  # only inside a simulator process

        def sample(g: int) -> None:  # after the evaluation of address first + g * per
            raw[g * chunk : (g + 1) * chunk] = int(data_h.get_signal_val_binstr(), 2).to_bytes(
                chunk, "little"
            )
            if g + 1 < groups:
                addr_h.set_signal_val_int(_NO_DELAY, first + (g + 1) * per)
                simulator.register_rwsynch_callback(sample, g + 1)
            elif en_h is not None:  # the read's logic idle again until the next read
                en_h.set_signal_val_int(_NO_DELAY, 0)

        if n:
            if en_h is not None:
                en_h.set_signal_val_int(_NO_DELAY, 1)
            addr_h.set_signal_val_int(_NO_DELAY, first)
            simulator.register_rwsynch_callback(sample, 0)
        await Timer(1, "step")
        if self.now() != c0:
            raise HostTimingError("debug read crossed a clock edge")
        words = np.frombuffer(bytes(raw), dtype=f"<u{bits // 8}")[:n].astype(np.int64)
        return self.fmt.from_unsigned(words)
