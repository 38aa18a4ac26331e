"""Register-level driver of one node: commands, descriptors, windows, interrupts, trace.

Every method only awaits the device protocol (``firmware.device.Device``);
nothing here knows which backend it runs on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import numpy as np

from gradsync.firmware.device import Device
from gradsync.spec import regmap as rm
from gradsync.spec.formats import BFloat16Format, FixedPointFormat, format_from_register
from gradsync.spec.link import (
    LinkConfig,
    link_set_refusal,
    link_set_value,
    link_width_from_info,
)

IRQ_ENABLED = rm.Irq.COMPUTE | rm.Irq.DMA_Q0 | rm.Irq.DMA_Q1 | rm.Irq.RX | rm.Irq.ERROR


class DeviceError(RuntimeError):
    """The device reported an error (ERR_CODE) or is not a gradsync device."""


@dataclass(frozen=True)
class DeviceInfo:
    node_id: int
    num_nodes: int
    tx_peer: int
    fmt: FixedPointFormat | BFloat16Format  #: the number format the device reports (HW_FORMAT)
    scratch_words: int
    grad_words: int
    ring_entries: int
    rx_windows: int
    cmd_fifo_depth: int
    link: LinkConfig
    trace_depth: int
    #: the build's link datapath (LINK_INFO width8): 8 bytes/cycle needs 8
    link_width_bytes: int = 4


_E = rm.ErrorCode
#: Doorbell refusals: the queue registers their sentence quotes.
_DOORBELL_CODES = frozenset(rm.DOORBELL_CHECKS)
_RX_CODES = frozenset((_E.RX_NO_WINDOW, _E.RX_TAG_MISMATCH, _E.RX_OUT_OF_WINDOW))


def error_sentence(
    node: int | str,
    code_word: int,
    info: int,
    queue_regs: dict[str, int] | None = None,
    device: DeviceInfo | None = None,
) -> str:
    """One sentence for the error in ``ERR_CODE`` = ``code_word`` and ``ERR_INFO`` = ``info``.

    ``queue_regs``: for a doorbell refusal, the queue's ``HEAD``, ``TAIL`` and
    ``RING_SIZE`` (read after the error); ``device``: the sizes ``Driver.init`` read.
    """
    f = rm.reg("ERR_CODE")
    raw, index = f.field("code").get(code_word), f.field("index").get(code_word)
    engine_code = f.field("engine").get(code_word)
    engine = rm.ENGINE_NAMES.get(engine_code, f"engine {engine_code}")
    if raw not in rm.ErrorCode._value2member_map_:
        return (
            f"node {node}: {engine} reported unknown error code {raw} "
            f"(index {index}, info 0x{info:08x})"
        )
    code = rm.ErrorCode(raw)
    if code in _DOORBELL_CODES:
        return f"node {node}: " + _doorbell_sentence(code, index, info, queue_regs or {}, device)
    if code in _RX_CODES:
        layer, chunk, step = rm.decode_tag(info)
        where = f"RX window {index}"
        if code is _E.RX_NO_WINDOW:
            have = f"{device.rx_windows} windows" if device else "its windows"
            where += f", which is not open or does not exist (the device has {have})"
        else:
            where += f": {rm.ERROR_MEANINGS[code].split(';')[0]}"
        return (
            f"node {node}: nic.rx refused a packet ({code.name}) for {where}; its tag is "
            f"0x{info:08x} (layer {layer}, chunk {chunk}, step {step})"
        )
    if code is _E.TRACE_EMPTY:
        return (
            f"node {node}: TRACE_DATA was read while the trace buffer was empty (TRACE_EMPTY, "
            f"TRACE_TAIL = {info}): that read returned 0x{rm.TRACE_EMPTY_WORD:08X}, not a record "
            "word; read TRACE_COUNT first"
        )
    return (
        f"node {node}: {engine} reported {code.name} (index {index}, info 0x{info:08x}): "
        f"{rm.ERROR_MEANINGS[code].split(';')[0]}"
    )


def _doorbell_sentence(
    code: rm.ErrorCode, q: int, info: int, regs: dict[str, int], device: DeviceInfo | None
) -> str:
    """The doorbell refusal ``code`` of queue ``q``: the register, its value and the rule."""
    name = rm.DMA_QUEUE_NAMES[q] if q < rm.DMA_QUEUES else "?"
    prefix = f"DMA queue {q} ({name}) refused a doorbell ({code.name}): "
    reg = f"DMA{q}_"
    entries = device.ring_entries if device else None
    if code is _E.RING_BAD_SIZE:
        limit = f"1..{entries} (HW_QUEUES.ring_entries)" if entries else "1..HW_QUEUES.ring_entries"
        return prefix + f"{reg}RING_SIZE = {info} is not in {limit}"
    if code is _E.RING_MISALIGNED:
        return prefix + (
            f"{reg}RING_BASE = 0x{info:08x} is not a multiple of {rm.DESCRIPTOR_BYTES} bytes "
            "(one descriptor)"
        )
    if code is _E.RING_OUT_OF_MEMORY:
        size = regs.get("RING_SIZE", "?")
        mem = ""
        if entries:
            end = rm.RING_MEM_BASE + rm.DMA_QUEUES * entries * rm.DESCRIPTOR_BYTES - 1
            mem = f" 0x{rm.RING_MEM_BASE:08x}..0x{end:08x}"
        return prefix + (
            f"{reg}RING_BASE = 0x{info:08x} with {reg}RING_SIZE = {size} descriptors of "
            f"{rm.DESCRIPTOR_BYTES} bytes does not lie inside ring memory{mem}"
        )
    if code is _E.DOORBELL_BACKWARDS:
        return prefix + (
            f"{reg}DOORBELL = {info} is behind {reg}TAIL = {regs.get('TAIL', '?')}; "
            "TAIL only moves forward"
        )
    head, size = regs.get("HEAD"), regs.get("RING_SIZE", "?")
    if head is None:
        return prefix + f"{reg}DOORBELL = {info} is more than {reg}RING_SIZE entries ahead of HEAD"
    return prefix + (
        f"{reg}DOORBELL = {info} is {(info - head) & 0xFFFF_FFFF} entries ahead of "
        f"{reg}HEAD = {head}, more than {reg}RING_SIZE = {size}"
    )


class Driver:
    """Thin, stateful wrapper around one device's registers."""

    def __init__(self, dev: Device) -> None:
        self.dev = dev
        self.info: DeviceInfo | None = None
        self.issued = 0  # compute commands launched
        self.completed = 0  # COMPUTE_DONE last read
        self._on_compute: dict[int, list[Callable[[], None]]] = {}
        self.ring_tail = [0] * rm.DMA_QUEUES
        self.ring_done = [0] * rm.DMA_QUEUES
        self.ring_size = 0
        self.on_dma_done: Callable[[int, int], None] = lambda q, n: None
        self.on_rx_done: Callable[[int], None] = lambda w: None
        #: interrupt causes unmasked by :meth:`init` and serviced (add ``Irq.TRACE`` before
        #: ``init`` to have :attr:`on_trace` called when the trace buffer is half full)
        self.irq_enabled = int(IRQ_ENABLED)
        self.on_trace: Callable[[], None] = lambda: None
        #: ``TRACE_DROPS`` as of the last :meth:`drain_trace` after :meth:`init`
        self.trace_drops = 0
        self.after_service: Callable[[], Awaitable[None]] | None = None
        # staged command registers keep their value after a launch: skip rewriting them
        self._cmd_shadow: dict[str, int] = {}

    async def read(self, name: str) -> int:
        """Read the register ``name`` (``gradsync.spec.regmap``, e.g. ``"TRACE_COUNT"``)."""
        return await self.dev.read32(rm.offset(name))

    async def write(self, name: str, value: int) -> None:
        """Write ``value`` (taken modulo 2**32) to the register ``name``."""
        await self.dev.write32(rm.offset(name), value & 0xFFFF_FFFF)

    # ------------------------------------------------------------ bring-up
    async def init(self, grad_window_bytes: int) -> DeviceInfo:
        """Check the ID and version, read the sizes, set up both DMA rings and unmask the IRQs.

        ``grad_window_bytes``: bytes from ``GRAD_BASE`` the DMA queues may read
        (``WIN_LEN``; 0 until the firmware knows its layout).
        """
        ident = await self.read("ID")
        if ident != rm.DEVICE_ID:
            raise DeviceError(f"ID register reads 0x{ident:08x}, expected 0x{rm.DEVICE_ID:08x}")
        version = await self.read("VERSION")
        if version >> 16 != rm.REGMAP_VERSION >> 16:
            raise DeviceError(
                f"register map major version {version >> 16} is not {rm.REGMAP_VERSION >> 16}"
            )
        queues = await self.read("HW_QUEUES")
        q = rm.reg("HW_QUEUES")
        self.info = DeviceInfo(
            node_id=await self.read("NODE_ID"),
            num_nodes=await self.read("NUM_NODES"),
            tx_peer=await self.read("TX_PEER"),
            fmt=format_from_register(await self.read("HW_FORMAT")),
            scratch_words=await self.read("SCRATCH_WORDS"),
            grad_words=await self.read("GRAD_WORDS"),
            ring_entries=q.field("ring_entries").get(queues),
            rx_windows=q.field("rx_windows").get(queues),
            cmd_fifo_depth=q.field("cmd_fifo_depth").get(queues),
            link=LinkConfig.from_registers(
                await self._read_link_info(),
                await self.read("LINK_LATENCY"),
                await self.read("LINK_MAX_PAYLOAD"),
            ),
            trace_depth=await self.read("TRACE_DEPTH"),
            link_width_bytes=self._link_width_bytes,  # from the LINK_INFO read above
        )
        self.ring_size = self.info.ring_entries
        for qi in range(rm.DMA_QUEUES):
            await self.dev.write32(
                rm.dma_reg(qi, "RING_BASE"),
                rm.RING_MEM_BASE + qi * self.ring_size * rm.DESCRIPTOR_BYTES,
            )
            await self.dev.write32(rm.dma_reg(qi, "RING_SIZE"), self.ring_size)
            await self.dev.write32(rm.dma_reg(qi, "WIN_BASE"), rm.GRAD_BASE)
            await self.dev.write32(rm.dma_reg(qi, "WIN_LEN"), grad_window_bytes)
        await self.write("IRQ_MASK", self.irq_enabled)
        return self.info

    async def _read_link_info(self) -> int:
        """``LINK_INFO``, remembering the build's link width it reports (``width8``)."""
        value = await self.read("LINK_INFO")
        self._link_width_bytes = link_width_from_info(value)
        return value

    async def set_link(self, link: LinkConfig) -> DeviceInfo:
        """Set this node's transmit link and NIC to ``link`` (``LINK_SET``): bytes per cycle,
        latency and maximum payload, within ``LINK_LIMITS``.  Call it after :meth:`init`
        and before the node's first doorbell (the device refuses it later,
        ``LINK_SET_LOCKED``); returns the updated :attr:`info`."""
        value = link_set_value(link)
        width = self.info.link_width_bytes  # 8 bytes/cycle needs 8
        refusal = link_set_refusal(value, await self.read("LINK_LIMITS"), width)
        if refusal is not None:
            code, index = refusal
            field = rm.reg("LINK_SET").fields[index]
            raise DeviceError(
                f"node {self.info.node_id} cannot carry link {field.name} "
                f"{field.get(value)}: {rm.ERROR_MEANINGS[code].split(':')[0]}"
            )
        await self.write("LINK_SET", value)
        self.info = replace(self.info, link=link)
        return self.info

    # --------------------------------------------------------------- compute
    async def launch(
        self,
        opcode: rm.Opcode,
        a: int,
        b: int,
        c: int,
        m: int,
        k: int,
        n: int,
        *,
        arg: int = 0,
        kind: rm.Kind = rm.Kind.OTHER,
        tag: int = 0,
        trans_a: bool = False,
        trans_b: bool = False,
        on_done: Callable[[], None] | None = None,
    ) -> int:
        """Queue one compute command; returns the COMPUTE_DONE value that marks its end."""
        assert self.info is not None
        while self.issued - self.completed >= self.info.cmd_fifo_depth:
            await self.service()
        staged = rm.command_registers(
            opcode, a, b, c, m, k, n, arg=arg, tag=tag, kind=kind, trans_a=trans_a, trans_b=trans_b
        )
        for name, value in staged:
            if self._cmd_shadow.get(name) != value:
                await self.write(name, value)
                self._cmd_shadow[name] = value
        await self.write("CMD_LAUNCH", 1)
        self.issued += 1
        if on_done is not None:
            self._on_compute.setdefault(self.issued, []).append(on_done)
        return self.issued

    async def wait_compute(self, index: int) -> None:
        """Service interrupts until the command :meth:`launch` numbered ``index`` has completed."""
        while self.completed < index:
            await self.service()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Service interrupts until ``predicate()`` (usually set by a callback) is true."""
        while not predicate():
            await self.service()

    # ----------------------------------------------------------------- DMA
    def ring_free(self, queue: int) -> int:
        """Free slots in DMA queue ``queue``'s ring (as of the last serviced interrupt)."""
        return self.ring_size - (self.ring_tail[queue] - self.ring_done[queue])

    async def post(self, queue: int, desc: rm.Descriptor) -> None:
        """Write a descriptor into the next ring slot and ring the doorbell."""
        if self.ring_free(queue) <= 0:
            raise DeviceError(f"DMA queue {queue} ring is full")
        slot = self.ring_tail[queue] % self.ring_size
        addr = rm.RING_MEM_BASE + (queue * self.ring_size + slot) * rm.DESCRIPTOR_BYTES
        await self.dev.load(addr, np.array(desc.encode(), dtype=np.int64))
        self.ring_tail[queue] += 1
        await self.dev.write32(rm.dma_reg(queue, "DOORBELL"), self.ring_tail[queue] & 0xFFFF_FFFF)

    # --------------------------------------------------------------- RX windows
    def _check_window(self, window: int) -> None:
        count = self.info.rx_windows if self.info else rm.MAX_RX_WINDOWS
        if isinstance(window, bool) or not isinstance(window, int) or not 0 <= window < count:
            raise ValueError(
                f"RX window {window!r} does not exist: this device has windows 0..{count - 1}"
            )

    async def open_window(
        self, window: int, dst: int, src: int, length: int, tag: int, expect: int
    ) -> None:
        """Open RX window ``window`` for one chunk: packets tagged ``tag`` write ``length`` bytes
        at ``dst`` (reduce-add packets add the local ``src`` first); an RX interrupt fires
        once ``expect`` bytes have arrived."""
        self._check_window(window)
        for name, value in (("DST", dst), ("SRC", src), ("LEN", length), ("TAG", tag), ("CTRL", 1)):
            await self.dev.write32(rm.rx_window_reg(window, name), value)
        await self.dev.write32(rm.rx_window_reg(window, "EXPECT"), expect)

    async def reopen_window(
        self, window: int, dst: int, src: int, length: int, expect: int
    ) -> None:
        """Open RX window ``window`` again for its next transfer, keeping its TAG: as
        :meth:`open_window` without the TAG write (RECEIVED and the done bit cleared, the
        RX interrupt at ``expect`` bytes).  Packets tagged with the step after the TAG's wait
        in the receiver until :meth:`set_window_tag` names them (``docs/comm.md``)."""
        self._check_window(window)
        for name, value in (("DST", dst), ("SRC", src), ("LEN", length), ("CTRL", 1)):
            await self.dev.write32(rm.rx_window_reg(window, name), value)
        await self.dev.write32(rm.rx_window_reg(window, "EXPECT"), expect)

    async def set_window_tag(self, window: int, tag: int) -> None:
        """Write RX window ``window``'s TAG alone: from the next cycle packets tagged ``tag``
        are applied, a held one among them first.  Write it only once the window's local
        operand (``src``) is in place: a reduce-add reads it as the packet is applied."""
        self._check_window(window)
        await self.dev.write32(rm.rx_window_reg(window, "TAG"), tag)

    async def arm_window(self, window: int, expect: int) -> None:
        """Raise an open window's RX interrupt threshold to ``expect`` received bytes."""
        self._check_window(window)
        await self.dev.write32(rm.rx_window_reg(window, "EXPECT"), expect)

    # ------------------------------------------------------------ interrupts
    async def service(self) -> None:
        """Wait for one interrupt and dispatch every cause it reports."""
        status = await self.dev.wait_irq(self.irq_enabled)
        await self.write("IRQ_STATUS", status)
        if status & rm.Irq.ERROR:
            raise DeviceError(await self.error_report())
        if status & rm.Irq.COMPUTE:
            done = await self.read("COMPUTE_DONE")
            while self.completed < done:
                self.completed += 1
                for cb in self._on_compute.pop(self.completed, []):
                    cb()
        for qi, bit in enumerate((rm.Irq.DMA_Q0, rm.Irq.DMA_Q1)):
            if status & bit:
                done = await self.dev.read32(rm.dma_reg(qi, "DONE"))
                newly = done - self.ring_done[qi]
                self.ring_done[qi] = done
                if newly:
                    self.on_dma_done(qi, newly)
        if status & rm.Irq.RX:
            lo = await self.read("RX_DONE_LO")
            hi = await self.read("RX_DONE_HI") if self.info and self.info.rx_windows > 32 else 0
            if lo:
                await self.write("RX_DONE_LO", lo)
            if hi:
                await self.write("RX_DONE_HI", hi)
            bits = lo | (hi << 32)
            w = 0
            while bits:
                if bits & 1:
                    self.on_rx_done(w)
                bits >>= 1
                w += 1
        if status & rm.Irq.TRACE:
            self.on_trace()
        if self.after_service is not None:
            await self.after_service()

    # ---------------------------------------------------------------- errors
    async def error_report(self) -> str:
        """The latched error (ERR_CODE, ERR_INFO and, for a doorbell refusal, the queue's
        HEAD/TAIL/RING_SIZE) as one sentence naming the node, the code and the value."""
        code_word = await self.read("ERR_CODE")
        info = await self.read("ERR_INFO")
        f = rm.reg("ERR_CODE")
        regs = {}
        if f.field("code").get(code_word) in _DOORBELL_CODES:
            q = f.field("index").get(code_word)
            if q < rm.DMA_QUEUES:
                for name in ("HEAD", "TAIL", "RING_SIZE"):
                    regs[name] = await self.dev.read32(rm.dma_reg(q, name))
        node = self.info.node_id if self.info else "?"
        return error_sentence(node, code_word, info, regs, self.info)

    async def check_errors(self) -> None:
        """Raise :class:`DeviceError` if the device latched any error since reset (``ERR_COUNT``),
        e.g. one raised after the last interrupt the firmware waited for."""
        count = await self.read("ERR_COUNT")
        if count:
            report = await self.error_report()
            more = f" (the latest of {count} errors)" if count > 1 else ""
            raise DeviceError(f"{report}{more}")

    # ----------------------------------------------------------------- trace
    async def pop_trace(self, limit: int | None = None) -> list[rm.TraceRecord]:
        """Pop up to ``limit`` (default: all) waiting records through ``TRACE_DATA``.

        Only as many as ``TRACE_COUNT`` says are waiting: a read of an empty buffer would
        return ``TRACE_EMPTY_WORD`` and latch ``TRACE_EMPTY``."""
        count = await self.read("TRACE_COUNT")
        n = count if limit is None else min(count, limit)
        data = rm.offset("TRACE_DATA")
        records = []
        for _ in range(n):
            words = [await self.dev.read32(data) for _ in range(rm.TRACE_RECORD_WORDS)]
            records.append(rm.TraceRecord.decode(words))
        return records

    async def drain_trace(self, block: int | None = None) -> list[rm.TraceRecord]:
        """Read every waiting trace record (bulk dumps) and advance TRACE_TAIL.

        ``block``: read exactly the oldest ``block`` records if at least that
        many wait, else none.  Records being written while ``TRACE_HEAD`` is
        read may or may not be counted (the RTL and the model count a record
        from different cycles of its engine's work); a fixed block makes the
        dump, and so every later cycle, independent of them.

        After :meth:`init` (the depth known) it reads ``TRACE_DROPS`` into
        :attr:`trace_drops` where it would read ``TRACE_DEPTH``: the same cycles.
        """
        head = await self.read("TRACE_HEAD")
        tail = await self.read("TRACE_TAIL")
        if self.info is not None:
            depth = self.info.trace_depth
            self.trace_drops = await self.read("TRACE_DROPS")
        else:
            depth = await self.read("TRACE_DEPTH")
        if block is not None:
            head = tail + block if head - tail >= block else tail
        records = []
        while tail != head:
            slot = tail % depth
            n = min(head - tail, depth - slot)
            words = await self.dev.dump(
                rm.TRACE_MEM_BASE + slot * rm.TRACE_RECORD_WORDS * 4, n * rm.TRACE_RECORD_WORDS
            )
            for i in range(n):
                records.append(rm.TraceRecord.decode(words[i * 4 : i * 4 + 4].tolist()))
            tail += n
            await self.write("TRACE_TAIL", tail)
        return records
