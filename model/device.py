"""Transaction-level golden model of one gradsync node (the model backend's device).

It implements the firmware's device protocol (``firmware.device.Device``) on
the discrete-event kernel of :mod:`model.events`: the same registers
(``gradsync.spec.regmap``), the same descriptors in ring memory, the same
interrupts, with every engine's occupancy taken from :mod:`model.timing` and
every result computed by :mod:`model.numerics`.

Engines (see ``DESIGN.md``, "One node"):

* compute sequencer: in-order command FIFO; GEMM on the systolic array, or a
  vector op; results written at completion, ``COMPUTE_DONE`` incremented.
* DMA: one engine, two descriptor rings; at every descriptor boundary the
  arbiter grants queue 0 if it has work, else queue 1 (chunk-granular strict
  priority).  A descriptor is validated before anything moves.
* NIC: packetises a chunk back to back onto the single transmit link to
  ``TX_PEER``; the receiver's store-and-forward applier takes packets in
  order, checks each against the RX window the firmware opened and applies
  it (plain write or saturating reduce-add), see ``timing.rx_visible_cycle``.

Host protocol costs (MMIO, interrupt latency, bulk transfers) come from the
``host_*`` fields of :class:`~gradsync.model.HardwareConfig`; the
``firmware.device.Device`` docstring states the rules.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from gradsync.model import numerics as nx
from gradsync.model.events import Future, Simulator
from gradsync.spec import link as lk
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig, constant_registers

M32 = 0xFFFF_FFFF
_CONTROL = rm.offset("CONTROL")


@dataclass
class _Command:
    word: int
    a: int
    b: int
    c: int
    m: int
    k: int
    n: int
    arg: int
    tag: int
    index: int

    @property
    def opcode(self) -> int:
        return rm.reg("CMD_OPCODE").field("opcode").get(self.word)

    def flag(self, name: str) -> int:
        return rm.reg("CMD_OPCODE").field(name).get(self.word)


@dataclass
class _Window:
    ctrl: int = 0
    dst: int = 0
    src: int = 0
    length: int = 0
    tag: int = 0
    expect: int = 0
    received: int = 0
    armed: bool = False


@dataclass
class _Queue:
    ring_base: int = 0
    ring_size: int = 0
    head: int = 0
    tail: int = 0
    win_base: int = 0
    win_len: int = 0
    done: int = 0
    errors: int = 0


@dataclass(frozen=True)
class Packet:
    src_node: int
    window: int
    tag: int
    addr: int
    payload: np.ndarray
    reduce: bool


class ModelDevice:
    """One node.  ``link_to`` is set by the cluster to the peer's device."""

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
        self.wb = fmt.word_bytes
        self.link_to: ModelDevice | None = None
        self.scratch = np.zeros(hw.scratchpad_words, dtype=np.int64)
        self.grad = np.zeros(hw.gradient_words, dtype=np.int64)
        self.ring = np.zeros(hw.ring_entries * rm.DMA_QUEUES * rm.DESCRIPTOR_WORDS, dtype=np.int64)
        self.trace: list[rm.TraceRecord] = []  # every record ever written (for the model's own use)
        self._trace_words = np.zeros(hw.trace_records * rm.TRACE_RECORD_WORDS, dtype=np.int64)
        self._trace_pending: list[tuple[int, rm.TraceRecord]] = []
        self.trace_head = 0
        self.trace_tail = 0
        self.trace_drops = 0
        self._pop_word = 0
        self.regs: dict[int, int] = {r.offset: r.reset for r in rm.REGISTERS}
        self._init_ro_registers()
        self.irq_status = 0
        self.irq_mask = 0
        self.err_count = 0
        self.cmd_fifo: deque[_Command] = deque()
        self.cmd_busy = False
        self.cmd_count = 0
        self.compute_done = 0
        self.queues = [_Queue() for _ in range(rm.DMA_QUEUES)]
        self.dma_busy = False
        self._fence_waiting: tuple[int, rm.Descriptor, int, int] | None = None
        self.windows = [_Window() for _ in range(hw.rx_windows)]
        self.rx_done = 0
        self.rx_drops = 0
        self.rx_free_at = 0  # cycle the in-order packet applier is free again
        self.perf = {
            name: 0
            for name in ("gemm", "vector", "tx", "tx_bytes", "tx_pkts", "rx_pkts", "rx_bytes")
        }
        self._irq_waiters: list[tuple[int, Future]] = []
        self._cycle_hi_latch = 0
        self._sample_cycle: int | None = None  # set while a host read samples (see _read_at)

    # ---------------------------------------------------------------- helpers
    def _init_ro_registers(self) -> None:
        consts = constant_registers(self.hw, self.fmt, self.node_id, self.num_nodes)
        for name, value in consts.items():
            self.regs[rm.offset(name)] = value & M32

    def _region(self, addr: int, n_words: int) -> tuple[np.ndarray, int] | None:
        """(array, first index) of an operand range, or None if it is not inside one SRAM."""
        for base, mem in ((rm.SCRATCH_BASE, self.scratch), (rm.GRAD_BASE, self.grad)):
            if base <= addr < base + rm.REGION_SPAN:
                off = addr - base
                if off % self.wb:
                    return None
                idx = off // self.wb
                if n_words < 0 or idx + n_words > len(mem):
                    return None
                return mem, idx
        return None

    def _trace(
        self, engine: int, event: int, kind: int, tag: int, aux: int = 0, cycle: int | None = None
    ) -> None:
        if not self.regs[_CONTROL] & 1:
            return
        rec = rm.TraceRecord(
            self.sim.now if cycle is None else cycle, engine, event, kind, tag & M32, aux & M32
        )
        self.trace.append(rec)
        if self.trace_head - self.trace_tail >= self.hw.trace_records:
            self.trace_drops += 1
            return
        # trace RAM words are materialised when the host reads them (see _flush_trace)
        self._trace_pending.append((self.trace_head % self.hw.trace_records, rec))
        self.trace_head += 1
        if self.trace_head - self.trace_tail >= self.hw.trace_records // 2:
            self._raise_irq(rm.Irq.TRACE)

    def _flush_trace(self) -> None:
        """Encode pending records into trace RAM (vectorised; same words as TraceRecord.encode)."""
        if not self._trace_pending:
            return
        slots = np.array([s for s, _ in self._trace_pending], dtype=np.int64)
        words = rm.encode_trace_records([r for _, r in self._trace_pending])
        self._trace_words.reshape(-1, rm.TRACE_RECORD_WORDS)[slots] = words
        self._trace_pending = []

    def _raise_irq(self, bits: int) -> None:
        self.irq_status |= int(bits)
        self._check_irq_waiters()

    def _check_irq_waiters(self) -> None:
        line = self.irq_status & self.irq_mask
        if not line or not self._irq_waiters:
            return
        still = []
        for mask, fut in self._irq_waiters:
            if self.irq_status & mask & self.irq_mask:
                # the host notices the line after its interrupt latency, then reads IRQ_STATUS
                delay = self.hw.host_irq_latency_cycles + self.hw.host_read_cycles
                self._read_at(self.sim.now + delay, 0, mask).add_callback(fut.resolve)
            else:
                still.append((mask, fut))
        self._irq_waiters = still

    def _error(self, code: rm.ErrorCode, engine: int, index: int, info: int) -> None:
        self.regs[rm.offset("ERR_CODE")] = rm.reg("ERR_CODE").pack(
            code=int(code), engine=engine, index=index & 0xFFFF
        )
        self.regs[rm.offset("ERR_INFO")] = info & M32
        self.err_count += 1
        self._trace(engine, rm.TraceEvent.ERROR, rm.Kind.OTHER, info, int(code))
        self._raise_irq(rm.Irq.ERROR)

    # ------------------------------------------------------------ device protocol
    async def write32(self, addr: int, value: int) -> None:
        await self.sim.delay(self.hw.host_write_cycles)
        self.mmio_write(addr, value & M32)

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
            self._sample_cycle = cycle - 1
            try:
                value = self.irq_status & mask if mask is not None else self.mmio_read(addr)
            finally:
                self._sample_cycle = None
            fut.resolve(value)

        self.sim.at_start(cycle, sample)
        return fut

    async def wait_irq(self, mask: int) -> int:
        if self.irq_status & mask & self.irq_mask:
            return await self._read_at(self.sim.now + self.hw.host_read_cycles, 0, mask)
        if not mask & self.irq_mask:
            raise ValueError(
                f"wait_irq(0x{mask:x}) can never return: IRQ_MASK is 0x{self.irq_mask:x}"
            )
        fut = Future()
        self._irq_waiters.append((mask, fut))
        return await fut

    async def load(self, addr: int, array: np.ndarray) -> None:
        data = np.asarray(array, dtype=np.int64).reshape(-1)
        mem, idx, nbytes = self._bulk_target(addr, len(data))
        t0 = self.sim.now
        await self.sim.delay(tm.host_bulk_cycles(nbytes, self.hw))
        if mem is self.ring:
            data = data & M32
        else:
            data = (
                self.fmt.saturate_raw(data)
                if self.fmt.saturate
                else nx.wrap(data, self.fmt.total_bits)
            )
        mem[idx : idx + len(data)] = data
        tag = self.regs[rm.offset("HOST_TAG")]
        kind = rm.Kind.RING if mem is self.ring else rm.Kind.LOAD
        self._trace(rm.Engine.HOST, rm.TraceEvent.START, kind, tag, nbytes, cycle=t0)
        self._trace(rm.Engine.HOST, rm.TraceEvent.END, kind, tag, nbytes)

    async def dump(self, addr: int, n: int) -> np.ndarray:
        mem, idx, nbytes = self._bulk_target(addr, n)
        t0 = self.sim.now
        await self.sim.delay(tm.host_bulk_cycles(nbytes, self.hw))
        if mem is self._trace_words:
            self._flush_trace()
        out = mem[idx : idx + n].copy()
        tag = self.regs[rm.offset("HOST_TAG")]
        kind = rm.Kind.TRACE if mem is self._trace_words else rm.Kind.DUMP
        self._trace(rm.Engine.HOST, rm.TraceEvent.START, kind, tag, nbytes, cycle=t0)
        self._trace(rm.Engine.HOST, rm.TraceEvent.END, kind, tag, nbytes)
        return out

    def _bulk_target(self, addr: int, n: int) -> tuple[np.ndarray, int, int]:
        if rm.RING_MEM_BASE <= addr < rm.RING_MEM_BASE + rm.REGION_SPAN:
            mem, wbytes, off = self.ring, 4, addr - rm.RING_MEM_BASE
        elif rm.TRACE_MEM_BASE <= addr < rm.TRACE_MEM_BASE + rm.REGION_SPAN:
            self._flush_trace()
            mem, wbytes, off = self._trace_words, 4, addr - rm.TRACE_MEM_BASE
        else:
            region = self._region(addr, n)
            if region is None:
                raise ValueError(
                    f"bulk access of {n} words at 0x{addr:08x} is outside device memory or misaligned"
                )
            return region[0], region[1], n * self.wb
        if off % wbytes or off // wbytes + n > len(mem) or n < 0:
            raise ValueError(
                f"bulk access of {n} words at 0x{addr:08x} is outside device memory or misaligned"
            )
        return mem, off // wbytes, n * wbytes

    # ---------------------------------------------------------------- MMIO
    def mmio_read(self, addr: int) -> int:
        r = rm.BY_OFFSET.get(addr)
        if r is None or r.access is rm.Access.WO:
            return 0
        name = r.name
        if name == "CYCLE_LO":
            now = self.sim.now if self._sample_cycle is None else self._sample_cycle
            self._cycle_hi_latch = (now >> 32) & M32
            return now & M32
        if name == "CYCLE_HI":
            return self._cycle_hi_latch
        if name == "IRQ_STATUS":
            return self.irq_status
        if name == "IRQ_MASK":
            return self.irq_mask
        if name == "IRQ_PENDING":
            return self.irq_status & self.irq_mask
        if name == "ERR_COUNT":
            return self.err_count & M32
        if name == "CMD_FIFO_FREE":
            return self.hw.cmd_fifo_depth - len(self.cmd_fifo)
        if name == "COMPUTE_DONE":
            return self.compute_done & M32
        if name.startswith("DMA"):
            q = self.queues[int(name[3])]
            field = name[5:]
            return {
                "RING_BASE": q.ring_base,
                "RING_SIZE": q.ring_size,
                "HEAD": q.head,
                "TAIL": q.tail,
                "WIN_BASE": q.win_base,
                "WIN_LEN": q.win_len,
                "DONE": q.done,
                "ERRORS": q.errors,
            }[field] & M32
        if name == "RX_DONE_LO":
            return self.rx_done & M32
        if name == "RX_DONE_HI":
            return (self.rx_done >> 32) & M32
        if name == "RX_DROPS":
            return self.rx_drops & M32
        if name == "RX_BYTES":
            return self.perf["rx_bytes"] & M32
        if name == "TRACE_COUNT":
            return self.trace_head - self.trace_tail
        if name == "TRACE_HEAD":
            return self.trace_head & M32
        if name == "TRACE_TAIL":
            return self.trace_tail & M32
        if name == "TRACE_DROPS":
            return self.trace_drops & M32
        if name == "TRACE_DATA":
            if self.trace_head == self.trace_tail:
                return 0
            self._flush_trace()
            slot = self.trace_tail % self.hw.trace_records
            word = int(self._trace_words[slot * 4 + self._pop_word])
            self._pop_word += 1
            if self._pop_word == rm.TRACE_RECORD_WORDS:
                self._pop_word = 0
                self.trace_tail += 1
            return word
        if name.startswith("PERF_"):
            key = {
                "PERF_GEMM_CYCLES": "gemm",
                "PERF_VECTOR_CYCLES": "vector",
                "PERF_TX_CYCLES": "tx",
                "PERF_TX_BYTES": "tx_bytes",
                "PERF_TX_PACKETS": "tx_pkts",
                "PERF_RX_PACKETS": "rx_pkts",
            }[name]
            return self.perf[key] & M32
        if name.startswith("WIN"):
            w_idx, field = name[3:].split("_", 1)
            w_num = int(w_idx)
            if w_num >= len(self.windows):
                return 0
            w = self.windows[w_num]
            return {
                "CTRL": w.ctrl,
                "DST": w.dst,
                "SRC": w.src,
                "LEN": w.length,
                "TAG": w.tag,
                "EXPECT": w.expect,
                "RECEIVED": w.received,
            }[field] & M32
        return self.regs.get(addr, 0)

    def mmio_write(self, addr: int, value: int) -> None:
        r = rm.BY_OFFSET.get(addr)
        if r is None or r.access is rm.Access.RO:
            return
        name = r.name
        if name == "IRQ_STATUS":
            self.irq_status &= ~value
            return
        if name == "IRQ_MASK":
            self.irq_mask = value
            self._check_irq_waiters()
            return
        if name == "CMD_LAUNCH":
            self._launch()
            return
        if name.startswith("DMA"):
            self._dma_write(int(name[3]), name[5:], value)
            return
        if name == "RX_DONE_LO":
            self.rx_done &= ~value
            return
        if name == "RX_DONE_HI":
            self.rx_done &= ~(value << 32)
            return
        if name == "TRACE_TAIL":
            if self.trace_tail <= value <= self.trace_head:
                self.trace_tail = value
                self._pop_word = 0
            return
        if name.startswith("WIN"):
            w_idx, field = name[3:].split("_", 1)
            if int(w_idx) < len(self.windows):
                self._window_write(int(w_idx), field, value)
            return
        self.regs[addr] = value

    # -------------------------------------------------------------- compute
    def _launch(self) -> None:
        g = self.regs
        cmd = _Command(
            word=g[rm.offset("CMD_OPCODE")],
            a=g[rm.offset("CMD_A")],
            b=g[rm.offset("CMD_B")],
            c=g[rm.offset("CMD_C")],
            m=g[rm.offset("CMD_M")],
            k=g[rm.offset("CMD_K")],
            n=g[rm.offset("CMD_N")],
            arg=g[rm.offset("CMD_ARG")],
            tag=g[rm.offset("CMD_TAG")],
            index=self.cmd_count,
        )
        self.cmd_count += 1
        if len(self.cmd_fifo) >= self.hw.cmd_fifo_depth:
            self._error(rm.ErrorCode.CMD_FIFO_FULL, rm.Engine.COMPUTE, cmd.index, cmd.word)
            return
        self.cmd_fifo.append(cmd)
        if not self.cmd_busy:
            self._start_command()

    def _validate(self, cmd: _Command) -> tuple[rm.ErrorCode, tuple]:
        try:
            op = rm.Opcode(cmd.opcode)
        except ValueError:
            return rm.ErrorCode.CMD_BAD_OPCODE, ()
        if op is rm.Opcode.NOP:
            return rm.ErrorCode.OK, ()
        if op is rm.Opcode.GEMM:
            if min(cmd.m, cmd.k, cmd.n) < 1:
                return rm.ErrorCode.CMD_ZERO_DIM, ()
            if cmd.k > self.fmt.max_exact_k:
                return rm.ErrorCode.CMD_K_TOO_LARGE, ()
            sizes = (cmd.m * cmd.k, cmd.k * cmd.n, cmd.m * cmd.n)
        else:
            if min(cmd.m, cmd.n) < 1:
                return rm.ErrorCode.CMD_ZERO_DIM, ()
            n = cmd.m * cmd.n
            sizes = (n, n if op in (rm.Opcode.RELU_BWD, rm.Opcode.SGD) else 0, n)
        regions = []
        for addr, size in zip((cmd.a, cmd.b, cmd.c), sizes, strict=True):
            if size == 0:
                regions.append(None)
                continue
            reg = self._region(addr, size)
            if reg is None:
                return rm.ErrorCode.CMD_OUT_OF_BOUNDS, ()
            regions.append((reg[0], reg[1], size))
        return rm.ErrorCode.OK, tuple(regions)

    def _start_command(self) -> None:
        cmd = self.cmd_fifo.popleft()
        self.cmd_busy = True
        code, regions = self._validate(cmd)
        kind = rm.reg("CMD_OPCODE").field("kind").get(cmd.word)
        if code is not rm.ErrorCode.OK:
            self.sim.after(
                tm.refused_command_cycles(), lambda: self._finish_command(cmd, None, code)
            )
            return
        op = rm.Opcode(cmd.opcode)
        if op is rm.Opcode.NOP:
            self.sim.after(
                tm.refused_command_cycles(), lambda: self._finish_command(cmd, None, code)
            )
            return

        def read(i: int) -> np.ndarray:
            mem, idx, size = regions[i]
            return mem[idx : idx + size].copy()

        # operands are read at launch; the result lands at completion
        if op is rm.Opcode.GEMM:
            a = read(0).reshape((cmd.k, cmd.m) if cmd.flag("trans_a") else (cmd.m, cmd.k))
            b = read(1).reshape((cmd.n, cmd.k) if cmd.flag("trans_b") else (cmd.k, cmd.n))
            shift = int(nx.wrap(cmd.arg, 32))
            result = nx.gemm(
                a,
                b,
                self.fmt,
                trans_a=bool(cmd.flag("trans_a")),
                trans_b=bool(cmd.flag("trans_b")),
                extra_shift=max(shift, 0),
            ).reshape(-1)
            cycles = tm.gemm_cycles(cmd.m, cmd.k, cmd.n, self.hw)
            engine, aux = rm.Engine.COMPUTE, cmd.m * cmd.k * cmd.n
            self.perf["gemm"] += cycles
        else:
            arg = int(nx.wrap(cmd.arg, self.fmt.total_bits))
            x = read(0)
            if op is rm.Opcode.RELU:
                result = nx.relu(x)
            elif op is rm.Opcode.RELU_BWD:
                result = nx.relu_backward(x, read(1))
            elif op is rm.Opcode.SCALE:
                result = nx.scale(x, arg, self.fmt)
            else:
                result = nx.sgd_update(x, read(1), arg, self.fmt)
            n = cmd.m * cmd.n
            cycles = tm.vector_cycles(rm.VECTOR_OPCODES[op], n, self.hw)
            engine, aux = rm.Engine.VECTOR, n
            self.perf["vector"] += cycles
        self._trace(engine, rm.TraceEvent.START, kind, cmd.tag, aux)

        def done() -> None:
            mem, idx, size = regions[2]
            mem[idx : idx + size] = result
            self._trace(engine, rm.TraceEvent.END, kind, cmd.tag, aux)
            self._finish_command(cmd, result, code)

        self.sim.after(cycles, done)

    def _finish_command(self, cmd: _Command, result, code: rm.ErrorCode) -> None:
        self.compute_done += 1
        if code is not rm.ErrorCode.OK:
            self._error(code, rm.Engine.COMPUTE, cmd.index, cmd.tag)
        if cmd.flag("irq"):
            self._raise_irq(rm.Irq.COMPUTE)
        self.cmd_busy = False
        self._check_fence()
        if self.cmd_fifo:
            self._start_command()

    # -------------------------------------------------------------------- DMA
    def _dma_write(self, q_idx: int, field: str, value: int) -> None:
        q = self.queues[q_idx]
        if field == "RING_BASE":
            q.ring_base = value
        elif field == "RING_SIZE":
            q.ring_size = value
        elif field == "WIN_BASE":
            q.win_base = value
        elif field == "WIN_LEN":
            q.win_len = value
        elif field == "DOORBELL":
            ring_ok = (
                1 <= q.ring_size <= self.hw.ring_entries
                and q.ring_base % rm.DESCRIPTOR_BYTES == 0
                and q.ring_base >= rm.RING_MEM_BASE
                and (q.ring_base - rm.RING_MEM_BASE) // 4 + q.ring_size * rm.DESCRIPTOR_WORDS
                <= len(self.ring)
            )
            if not ring_ok or (value - q.head) & M32 > q.ring_size:
                self._error(rm.ErrorCode.RING_FULL, rm.Engine.DMA_HI + q_idx, q_idx, value)
                return
            q.tail = value
            self._dma_kick()

    def _dma_kick(self) -> None:
        if self.dma_busy:
            return
        for q_idx, q in enumerate(self.queues):
            if q.head != q.tail:
                self._dma_start(q_idx)
                return

    def _ring_words(self, q: _Queue, slot: int) -> tuple[int, list[int]]:
        word_index = (q.ring_base - rm.RING_MEM_BASE) // 4 + (
            slot % q.ring_size
        ) * rm.DESCRIPTOR_WORDS
        return word_index, [
            int(w) for w in self.ring[word_index : word_index + rm.DESCRIPTOR_WORDS]
        ]

    def _check_descriptor(self, q: _Queue, d: rm.Descriptor) -> rm.ErrorCode:
        a = rm.DMA_ALIGN_BYTES
        if d.version != rm.DESCRIPTOR_VERSION:
            return rm.ErrorCode.BAD_VERSION
        if d.length == 0:
            return rm.ErrorCode.ZERO_LENGTH
        if d.length % a or d.src_addr % a or d.remote_addr % a:
            return rm.ErrorCode.MISALIGNED
        if not (q.win_base <= d.src_addr and d.src_addr + d.length <= q.win_base + q.win_len):
            return rm.ErrorCode.OUT_OF_WINDOW
        if self._region(d.src_addr, d.length // self.wb) is None:
            return rm.ErrorCode.OUT_OF_WINDOW
        if d.peer != self.tx_peer or self.num_nodes < 2:
            return rm.ErrorCode.UNKNOWN_PEER
        return rm.ErrorCode.OK

    def _dma_start(self, q_idx: int) -> None:
        q = self.queues[q_idx]
        self.dma_busy = True
        slot = q.head
        q.head = (q.head + 1) & M32
        word_index, words = self._ring_words(q, slot)
        d = rm.Descriptor.decode(words)
        engine = rm.Engine.DMA_HI + q_idx
        code = self._check_descriptor(q, d)
        self._trace(engine, rm.TraceEvent.START, rm.Kind.SEND, d.tag, d.length)
        if code is not rm.ErrorCode.OK:
            self.sim.after(
                tm.refused_descriptor_cycles(self.hw),
                lambda: self._dma_finish(q_idx, word_index, d, code, slot),
            )
            return
        fetched = self.sim.now + tm.descriptor_fetch_cycles(self.hw)
        self.sim.at(fetched, lambda: self._dma_fenced(q_idx, word_index, d, slot))

    def _dma_fenced(self, q_idx: int, word_index: int, d: rm.Descriptor, slot: int) -> None:
        if d.flags & rm.DescFlag.FENCE and ((self.compute_done - d.fence_count) & M32) >= 1 << 31:
            self._fence_waiting = (q_idx, d, word_index, slot)
            return
        self._dma_transmit(q_idx, word_index, d, slot)

    def _check_fence(self) -> None:
        if self._fence_waiting is None:
            return
        q_idx, d, word_index, slot = self._fence_waiting
        if ((self.compute_done - d.fence_count) & M32) < 1 << 31:
            self._fence_waiting = None
            self._dma_transmit(q_idx, word_index, d, slot)

    def _dma_transmit(self, q_idx: int, word_index: int, d: rm.Descriptor, slot: int) -> None:
        mem, idx = self._region(d.src_addr, d.length // self.wb)
        data = mem[idx : idx + d.length // self.wb].copy()
        t = self.sim.now
        self._trace(rm.Engine.NIC_TX, rm.TraceEvent.START, rm.Kind.SEND, d.tag, d.length)
        offset_bytes = 0
        peer = self.link_to
        for payload in lk.packet_payloads(d.length, self.hw.link):
            t_end = t + lk.packet_cycles(payload, self.hw.link)
            words = data[offset_bytes // self.wb : (offset_bytes + payload) // self.wb]
            pkt = Packet(
                self.node_id,
                d.window,
                d.tag,
                d.remote_addr + offset_bytes,
                words,
                bool(d.flags & rm.DescFlag.REDUCE_ADD),
            )
            assert peer is not None
            applied = tm.rx_visible_cycle(
                t_end + tm.crc_arrival_offset(self.hw), peer.rx_free_at, payload
            )
            peer.rx_free_at = applied
            self.sim.at(applied, lambda p=peer, pk=pkt: p.receive(pk))
            self.perf["tx_pkts"] += 1
            self.perf["tx_bytes"] += payload
            offset_bytes += payload
            t = t_end
        tx_cycles = t - self.sim.now
        self.perf["tx"] += tx_cycles
        self.sim.at(
            t,
            lambda: self._trace(rm.Engine.NIC_TX, rm.TraceEvent.END, rm.Kind.SEND, d.tag, d.length),
        )
        self.sim.at(
            t + tm.DESCRIPTOR_WRITEBACK_CYCLES,
            lambda: self._dma_finish(q_idx, word_index, d, rm.ErrorCode.OK, slot),
        )

    def _dma_finish(
        self, q_idx: int, word_index: int, d: rm.Descriptor, code: rm.ErrorCode, slot: int
    ) -> None:
        q = self.queues[q_idx]
        engine = rm.Engine.DMA_HI + q_idx
        self.ring[word_index + 6] = rm.descriptor_status(code)
        self.ring[word_index + 7] = self.sim.now & M32
        q.done = (q.done + 1) & M32
        self._trace(
            engine, rm.TraceEvent.END, rm.Kind.SEND, d.tag, d.length if code == 0 else int(code)
        )
        if code is not rm.ErrorCode.OK:
            q.errors += 1
            self._error(code, engine, slot, d.src_addr)
        if d.flags & rm.DescFlag.IRQ:
            self._raise_irq(rm.Irq.DMA_Q0 if q_idx == 0 else rm.Irq.DMA_Q1)
        self.dma_busy = False
        self._dma_kick()

    def outstanding(self) -> str:
        """What this node still waits for (used in deadlock reports)."""
        parts = []
        if self.cmd_busy or self.cmd_fifo:
            parts.append(f"compute busy with {len(self.cmd_fifo) + 1} command(s)")
        for q_idx, q in enumerate(self.queues):
            if q.head != q.tail:
                parts.append(f"dma.{rm.DMA_QUEUE_NAMES[q_idx]} has {q.tail - q.head} descriptor(s)")
        waiting = [
            "L{}c{}s{}".format(*rm.decode_tag(w.tag))
            for w in self.windows
            if w.ctrl & 1 and w.armed and w.received < w.expect
        ]
        if waiting:
            parts.append("nic.rx waits for tags " + ", ".join(waiting))
        return "; ".join(parts) or "idle"

    # --------------------------------------------------------------------- RX
    def _window_write(self, w_idx: int, field: str, value: int) -> None:
        w = self.windows[w_idx]
        if field == "CTRL":
            w.ctrl = value & 1
            if value & 1:
                w.received = 0
                w.armed = False
                self.rx_done &= ~(1 << w_idx)
        elif field == "DST":
            w.dst = value
        elif field == "SRC":
            w.src = value
        elif field == "LEN":
            w.length = value
        elif field == "TAG":
            w.tag = value
        elif field == "EXPECT":
            w.expect = value
            w.armed = True
            self._check_window(w_idx)

    def _check_window(self, w_idx: int) -> None:
        w = self.windows[w_idx]
        if w.armed and w.received >= w.expect:
            w.armed = False
            self.rx_done |= 1 << w_idx
            self._raise_irq(rm.Irq.RX)

    def receive(self, pkt: Packet) -> None:
        """Apply one packet arriving from the link (called at its apply cycle)."""
        nbytes = len(pkt.payload) * self.wb
        code = rm.ErrorCode.OK
        if pkt.window >= len(self.windows) or not self.windows[pkt.window].ctrl & 1:
            code = rm.ErrorCode.RX_NO_WINDOW
        else:
            w = self.windows[pkt.window]
            if w.tag != pkt.tag:
                code = rm.ErrorCode.RX_TAG_MISMATCH
            elif not (w.dst <= pkt.addr and pkt.addr + nbytes <= w.dst + w.length):
                code = rm.ErrorCode.RX_OUT_OF_WINDOW
            else:
                # The packet must lie inside one SRAM, and so must a reduce-add's source; both
                # 32-bit aligned, since the receiver moves the packet's 32-bit payload words
                # (``_region`` alone would accept operand alignment, which the RTL cannot do).
                src_addr = w.src + (pkt.addr - w.dst)
                dst = self._region(pkt.addr, len(pkt.payload))
                src = self._region(src_addr, len(pkt.payload))
                a = rm.DMA_ALIGN_BYTES
                if dst is None or pkt.addr % a or (pkt.reduce and (src is None or src_addr % a)):
                    code = rm.ErrorCode.RX_OUT_OF_WINDOW
        if code is not rm.ErrorCode.OK:
            self.rx_drops += 1
            self._trace(rm.Engine.NIC_RX, rm.TraceEvent.END, rm.Kind.RECV, pkt.tag, 0)
            self._error(code, rm.Engine.NIC_RX, pkt.window, pkt.tag)
            return
        mem, idx = dst
        if pkt.reduce:
            smem, sidx = src
            local = smem[sidx : sidx + len(pkt.payload)]
            mem[idx : idx + len(pkt.payload)] = nx.add_saturating(local, pkt.payload, self.fmt)
        else:
            mem[idx : idx + len(pkt.payload)] = pkt.payload
        w.received += nbytes
        self.perf["rx_pkts"] += 1
        self.perf["rx_bytes"] += nbytes
        self._trace(rm.Engine.NIC_RX, rm.TraceEvent.END, rm.Kind.RECV, pkt.tag, nbytes)
        self._check_window(pkt.window)
