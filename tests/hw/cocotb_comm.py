"""cocotb testbench of the communication half (DMA engine, NIC, links) against the golden model.

The design is ``hw/cluster.py``'s :class:`Cluster` of communication-only
nodes (``Node(compute=False)``, ``tests/hw/comm_builds.py``): the one CSR block
behind AXI4-Lite, the bulk AXI4-Stream port for memory, driven through
``sim/rtl_device.py``'s :class:`RtlDevice` (cocotbext-axi ``AxiLiteMaster``,
``AxiStreamSource``/``AxiStreamSink``).

The testbench logs every register write with the cycle it took effect in
(the cycle after its AW/W handshake, seen on the rising edge of ``BVALID``)
and every memory load with the cycle it returned in, and afterwards replays
the log on the golden model (:class:`gradsync.model.cluster.Cluster`).
Memories, registers, descriptor status words and the DMA/NIC trace records
(cycles included) are then compared with the model.  The replay uses the
RTL's own write cycles, so the comparison holds whatever the bus did: with
``COMM_PAUSES=1`` the host-driven AXI4-Lite channels and the bulk load stream
get random idle cycles (:meth:`CommTB.set_idle_generators`): the host calls
take longer than the model's host timing and registers are written in other
cycles, and results, counters, per-engine event order -- and, since the model
replays the cycles the RTL saw, every cycle -- must still equal the model's.

Parameters come from the environment (see :func:`comm_env`):
``COMM_NODES``, ``COMM_HW`` (JSON of ``HardwareConfig``), ``COMM_FMT``
(JSON of ``FixedPointFormat``), ``COMM_SEED``, ``COMM_PAUSES`` and per-test counts.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import cocotb
import numpy as np
from cocotb.queue import Queue
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from gradsync.hw.link import LINK_COUNTERS
from gradsync.hw.node import NODE_COUNTERS
from gradsync.model import numerics as nx
from gradsync.sim import coverage as cov
from gradsync.sim.rtl_device import HostTimingError, RtlDevice
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig
from gradsync.spec.link import nic_timeouts
from tests.hw.cocotb_cluster import start_devices

M32 = 0xFFFF_FFFF


def comm_env(
    nodes: int, hw: HardwareConfig, fmt: FixedPointFormat, seed: int, **extra
) -> dict[str, str]:
    env = {
        "COMM_NODES": str(nodes),
        "COMM_HW": json.dumps(hw.to_dict()),
        "COMM_FMT": json.dumps(fmt.to_dict()),
        "COMM_SEED": str(seed),
    }
    env.update(
        {f"COMM_{k.upper()}": str(int(v) if isinstance(v, bool) else v) for k, v in extra.items()}
    )
    return env


@dataclass(frozen=True)
class HostWrite:
    """A host write as the model replays it: in model cycle ``cycle + 1``."""

    node: int
    cycle: int
    kind: str  # "csr", "grad" (operands) or "ring" (32-bit words)
    addr: int
    value: object  # int for "csr", a list for memory loads


def words_to_operands(words, fmt: FixedPointFormat) -> np.ndarray:
    """32-bit memory words -> signed operands, lowest address in the low bits."""
    bits = fmt.total_bits
    lanes = 32 // bits
    out = np.zeros(len(words) * lanes, dtype=np.int64)
    for i, w in enumerate(words):
        for j in range(lanes):
            out[i * lanes + j] = (int(w) >> (j * bits)) & ((1 << bits) - 1)
    return nx.wrap(out, bits)


def random_operands(rng: np.random.Generator, n: int, fmt: FixedPointFormat) -> np.ndarray:
    """Random operands, a quarter of them at or next to the saturation rails."""
    x = rng.integers(fmt.qmin, fmt.qmax + 1, size=n)
    rails = rng.choice([fmt.qmin, fmt.qmin + 1, fmt.qmax - 1, fmt.qmax], size=n)
    return np.where(rng.random(n) < 0.25, rails, x)


class PausedDevice(RtlDevice):
    """An :class:`RtlDevice` whose calls may return later than the model's host timing.

    With random pauses on the bus a call takes longer than calibrated; it
    must still never return *sooner* than the model charges.
    """

    def _arrived(self, what: str, target: int) -> None:
        if self.now() < target:
            raise HostTimingError(f"{what} returned in cycle {self.now()}, before {target}")


def random_pauses(rng: random.Random, idle: float):
    """A cocotbext-axi pause generator: pause a cycle with probability ``idle``."""
    while True:
        yield rng.random() < idle


class CommTB:
    """Host side of an N-node communication cluster: one device per node, links, write log."""

    def __init__(self, dut):
        self.dut = dut
        self.nodes = int(os.environ["COMM_NODES"])
        self.hw = HardwareConfig(**json.loads(os.environ["COMM_HW"]))
        self.fmt = FixedPointFormat(**json.loads(os.environ["COMM_FMT"]))
        self.seed = int(os.environ.get("COMM_SEED", "1"))
        self.pauses = bool(self.env_int("pauses", 0))
        self.wb = self.fmt.word_bytes
        self.devs: list[RtlDevice] = []
        self.log: list[HostWrite] = []
        self._acks = [Queue() for _ in range(self.nodes)]

    def env_int(self, name: str, default: int) -> int:
        return int(os.environ.get(f"COMM_{name.upper()}", default))

    def sig(self, node: int, name: str):
        return getattr(self.dut, f"n{node}_{name}")

    def link(self, i: int, name: str):
        return getattr(self.dut, f"l{i}_{name}")

    @property
    def now(self) -> int:
        """The current cycle (right after a rising clock edge)."""
        return self.devs[0].now()

    async def cycle_reset(self):
        """Calibrate the bus and reset to cycle 0; start the write monitors (and pauses)."""
        for n in range(self.nodes):
            self.sig(n, "compute_done").value = 0
        device = PausedDevice if self.pauses else RtlDevice
        self.devs = await start_devices(self.dut, self.nodes, self.hw, device)
        for n in range(self.nodes):
            cocotb.start_soon(self._watch_writes(n))
        if self.pauses:
            self.set_idle_generators(random.Random(self.seed * 31 + 7))

    def set_idle_generators(self, rng: random.Random, idle: float = 0.3) -> None:
        """Random idle cycles on every channel the host drives: AXI4-Lite AW, W and AR
        (independently, so AW and W arrive apart) and the bulk load stream (gaps inside a frame).

        Not on the channels the host receives (B, R, the dump stream): cocotbext-axi's
        sinks sample VALID after the clock edge under Verilator, so they take a beat one
        edge before the design's handshake; a pause that drops READY in between leaves the
        design holding a beat the sink already counted (the bus locks up).
        """
        for dev in self.devs:
            channels = (
                dev.axil.write_if.aw_channel,
                dev.axil.write_if.w_channel,
                dev.axil.read_if.ar_channel,
                dev.src,
            )
            for ch in channels:
                ch.set_pause_generator(random_pauses(random.Random(rng.random()), idle))

    async def _watch_writes(self, node: int):
        """The cycle each CSR write took effect in: BVALID rises in it (one per write)."""
        bvalid, cycle = self.sig(node, "s_axil_bvalid"), self.sig(node, "cycle")
        while True:
            await RisingEdge(bvalid)
            await ReadOnly()
            self._acks[node].put_nowait(int(cycle.value))

    # ------------------------------------------------------------- host access
    async def write_csr(self, node: int, off: int | str, value: int):
        """A register write, logged with the cycle it took effect in; returns a cycle later."""
        off = rm.offset(off) if isinstance(off, str) else off
        await self.devs[node].write32(off, value & M32)
        returned = self.now
        # BVALID rises in the very time step write32 returns in (pause-free): let the
        # monitor see the step settle, then leave the read-only phase at the next edge.
        await ReadOnly()
        effect = await self._acks[node].get()
        await RisingEdge(self.dut.clk)
        assert self._acks[node].empty(), f"node {node}: a write was acknowledged twice"
        if not self.pauses:
            assert effect == returned, f"write took effect in {effect}, returned in {returned}"
        self.log.append(HostWrite(node, effect - 1, "csr", off, value & M32))

    async def read_csr(self, node: int, off: int | str) -> int:
        off = rm.offset(off) if isinstance(off, str) else off
        return await self.devs[node].read32(off)

    async def load_ring(self, node: int, addr: int, words):
        """32-bit words into ring memory (a descriptor: ``Descriptor.encode()``)."""
        words = [int(w) & M32 for w in words]
        await self.devs[node].load(addr, np.array(words, dtype=np.int64))
        self.log.append(HostWrite(node, self.now - 1, "ring", addr, words))

    async def read_ring(self, node: int, addr: int, n: int) -> list[int]:
        return [int(w) for w in await self.devs[node].dump(addr, n)]

    async def load_grad(self, node: int, byte_off: int, ops):
        ops = [int(x) for x in ops]
        await self.devs[node].load(rm.GRAD_BASE + byte_off, np.array(ops, dtype=np.int64))
        self.log.append(HostWrite(node, self.now - 1, "grad", byte_off, ops))

    async def dump_grad(self, node: int) -> np.ndarray:
        return await self.devs[node].dump(rm.GRAD_BASE, self.hw.gradient_words)

    async def wait(self, cycles: int):
        await ClockCycles(self.dut.clk, cycles)

    async def wait_until(self, predicate, step: int = 64, budget: int = 2_000_000):
        """Poll ``await predicate()`` every ``step`` cycles (never per cycle)."""
        start = self.now
        while not await predicate():
            if self.now - start > budget:
                raise AssertionError(
                    f"condition not met within {budget} cycles; {await self.status()}"
                )
            await self.wait(step)

    async def status(self) -> str:
        """Counters of every node and link, for failure messages."""
        parts = []
        for n in range(self.nodes):
            regs = {
                name: await self.read_csr(n, name)
                for name in (
                    "DMA0_TAIL",
                    "DMA0_DONE",
                    "DMA1_TAIL",
                    "DMA1_DONE",
                    "RX_DONE_LO",
                    "ERR_CODE",
                    "ERR_COUNT",
                )
            }
            ctr = {c: int(self.sig(n, c).value) for c in NODE_COUNTERS}
            lnk = {c: int(self.link(n, c).value) for c in ("packets", "corrupted", "dropped")}
            parts.append(f"node {n}: {regs} {ctr} link {lnk}")
        return "; ".join(parts)

    async def dma_idle(self, node: int) -> bool:
        for q in range(rm.DMA_QUEUES):
            if await self.read_csr(node, rm.dma_reg(q, "DONE")) != await self.read_csr(
                node, rm.dma_reg(q, "TAIL")
            ):
                return False
        return True

    async def all_idle(self) -> bool:
        for n in range(self.nodes):
            if not await self.dma_idle(n):
                return False
            # every sent packet applied or dropped at the receiver
            sent = int(self.sig(n, "tx_packets").value)
            peer = (n + 1) % self.nodes
            seen = int(self.sig(peer, "rx_packets").value) + int(self.sig(peer, "rx_drops").value)
            if seen != sent:
                return False
        return True

    async def trace(self, node: int) -> list[rm.TraceRecord]:
        """Every record of the node's trace buffer (one bulk dump of trace memory)."""
        head = await self.read_csr(node, "TRACE_HEAD")
        drops = await self.read_csr(node, "TRACE_DROPS")
        assert drops == 0 and head <= self.hw.trace_records, (
            f"trace of node {node} overflowed ({head} records, {drops} dropped)"
        )
        words = await self.devs[node].dump(rm.TRACE_MEM_BASE, head * rm.TRACE_RECORD_WORDS)
        return [
            rm.TraceRecord.decode([int(w) for w in words[4 * r : 4 * r + 4]]) for r in range(head)
        ]

    # --------------------------------------------------------- configuration
    async def setup_queue(
        self, node: int, q: int, ring_base: int, ring_size: int, win_base: int, win_len: int
    ):
        await self.write_csr(node, rm.dma_reg(q, "RING_BASE"), rm.RING_MEM_BASE + ring_base)
        await self.write_csr(node, rm.dma_reg(q, "RING_SIZE"), ring_size)
        await self.write_csr(node, rm.dma_reg(q, "WIN_BASE"), win_base)
        await self.write_csr(node, rm.dma_reg(q, "WIN_LEN"), win_len)

    async def open_window(
        self, node: int, w: int, dst: int, src: int, length: int, tag: int, expect: int = 0
    ):
        await self.write_csr(node, rm.rx_window_reg(w, "DST"), dst)
        await self.write_csr(node, rm.rx_window_reg(w, "SRC"), src)
        await self.write_csr(node, rm.rx_window_reg(w, "LEN"), length)
        await self.write_csr(node, rm.rx_window_reg(w, "TAG"), tag)
        await self.write_csr(node, rm.rx_window_reg(w, "CTRL"), 1)
        if expect:
            await self.write_csr(node, rm.rx_window_reg(w, "EXPECT"), expect)

    # ------------------------------------------------------------ golden model
    def run_model(self):
        """Replay the write log on the golden model; returns the cluster."""
        from gradsync.model.cluster import Cluster

        cl = Cluster(self.nodes, self.hw, self.fmt)

        def apply(dev, op: HostWrite):
            if op.kind == "csr":
                dev.mmio_write(op.addr, op.value)
            elif op.kind == "grad":
                first = op.addr // self.wb
                dev.grad[first : first + len(op.value)] = op.value
            else:
                first = (op.addr - rm.RING_MEM_BASE) // 4
                dev.ring[first : first + len(op.value)] = op.value

        for op in self.log:
            dev = cl.devices[op.node]
            cl.sim.at(op.cycle + 1, lambda d=dev, o=op: apply(d, o))
        cl.sim.run()
        return cl

    async def compare_with_model(
        self, cl, *, timing: bool = True, check_trace: bool = True, ordered: bool = True
    ):
        """Memories, registers, descriptor status words (and the trace) equal the model.

        ``timing`` also compares every cycle: DONE_CYCLE words, ``PERF_TX_CYCLES``
        and trace record cycles -- with bus pauses too, since the model replays the
        RTL's own write cycles; ``ordered``: see :meth:`compare_trace`.
        """
        for n in range(self.nodes):
            dev = cl.devices[n]
            ring = await self.read_ring(n, rm.RING_MEM_BASE, len(dev.ring))
            for i in range(0, len(ring), rm.DESCRIPTOR_WORDS):
                st_rtl, st_model = ring[i + 6], int(dev.ring[i + 6]) & M32
                assert st_rtl == st_model, (
                    f"node {n} ring slot word {i}: STATUS rtl {st_rtl:#x} model {st_model:#x}"
                )
                if timing:
                    assert ring[i + 7] == int(dev.ring[i + 7]) & M32, (
                        f"node {n} ring word {i}: DONE_CYCLE rtl {ring[i + 7]} "
                        f"model {int(dev.ring[i + 7])}"
                    )
            regs = [
                "ERR_CODE",
                "ERR_INFO",
                "ERR_COUNT",
                "RX_DROPS",
                "RX_BYTES",
                "PERF_TX_BYTES",
                "PERF_TX_PACKETS",
                "PERF_RX_PACKETS",
                "RX_DONE_LO",
            ]
            if timing:
                regs.append("PERF_TX_CYCLES")
            for q in range(rm.DMA_QUEUES):
                regs += [rm.dma_reg_name(q, f) for f in ("HEAD", "TAIL", "DONE", "ERRORS")]
            regs += [rm.rx_window_reg_name(w, "RECEIVED") for w in range(self.hw.rx_windows)]
            for name in regs:
                got = await self.read_csr(n, name)
                want = dev.mmio_read(rm.offset(name))
                assert got == want, f"node {n} {name}: rtl {got:#x} model {want:#x}"
            grad = await self.dump_grad(n)
            diff = np.flatnonzero(grad != dev.grad)
            assert not len(diff), (
                f"node {n}: {len(diff)} gradient words differ from the model, first at operand "
                f"{diff[0]}: rtl {grad[diff[0]]} model {dev.grad[diff[0]]}"
            )
            mask = int(rm.Irq.DMA_Q0 | rm.Irq.DMA_Q1 | rm.Irq.RX | rm.Irq.ERROR)
            got = await self.read_csr(n, "IRQ_STATUS") & mask
            assert got == dev.irq_status & mask, (
                f"node {n} IRQ_STATUS rtl {got:#x} model {dev.irq_status & mask:#x}"
            )
            if check_trace:
                await self.compare_trace(n, dev, timing, ordered)

    async def compare_trace(self, n: int, dev, timing: bool, ordered: bool = True):
        """Per engine, the RTL's trace records equal the model's, in the same order.

        Engines DMA_HI, DMA_LO, NIC_TX, NIC_RX; events START, END and ERROR
        (the HOST records of the bulk port are the testbench's own traffic).
        Without ``timing`` cycles are ignored; without ``ordered`` (fault
        injection: retransmissions reorder the receiver's events) so is the order.
        """
        engines = (rm.Engine.DMA_HI, rm.Engine.DMA_LO, rm.Engine.NIC_TX, rm.Engine.NIC_RX)
        got_all = await self.trace(n)
        for engine in engines:

            def key(r):
                return (
                    int(r.cycle) if timing else 0,
                    int(r.event),
                    int(r.kind),
                    int(r.tag),
                    int(r.aux),
                )

            def keep(r, engine=engine):
                return int(r.engine) == engine

            want = [key(r) for r in dev.trace if keep(r)]
            got = [key(r) for r in got_all if keep(r)]
            if not ordered:
                want.sort()
                got.sort()
            for i, (g, w) in enumerate(zip(got, want, strict=False)):
                assert g == w, (
                    f"node {n} {rm.ENGINE_NAMES[engine]} record {i} "
                    f"(cycle, event, kind, tag, aux): rtl {g} model {w}"
                )
            assert len(got) == len(want), (
                f"node {n} {rm.ENGINE_NAMES[engine]}: rtl has {len(got)} records, model {len(want)}"
            )


# ------------------------------------------------------------------ scenarios


@dataclass
class Placement:
    """Where a random transfer's source, destination and guard words live."""

    src_off: int
    dst_off: int
    length: int


def _layout(
    rng: random.Random,
    count: int,
    max_len: int,
    region_off: int,
    region_len: int,
    align: int = 4,
    guard: int = 8,
) -> list[tuple[int, int]]:
    """``count`` non-overlapping (offset, length) ranges with >= ``guard`` bytes between them."""
    out = []
    off = region_off + guard
    for _ in range(count):
        length = rng.randrange(1, max_len // align + 1) * align
        if off + length + guard > region_off + region_len:
            break
        out.append((off, length))
        off += length + guard + rng.randrange(0, 4) * align
    return out


@cocotb.test()
async def dma_random_descriptors(dut):
    """Random descriptors on both queues of every node, doorbells at random times.

    Every destination window is surrounded by guard words; the gradient
    memories, status words, DONE_CYCLEs, registers and every DMA START/END
    and RX END trace cycle must equal the golden model.
    """
    tb = CommTB(dut)
    await tb.cycle_reset()
    rng = random.Random(tb.seed)
    nrng = np.random.default_rng(tb.seed)
    per_node = tb.env_int("descriptors", 12)
    grad_bytes = tb.hw.gradient_words * tb.wb
    half = grad_bytes // 2
    init = {}
    for n in range(tb.nodes):
        init[n] = random_operands(nrng, tb.hw.gradient_words, tb.fmt)
        await tb.load_grad(n, 0, init[n])
    posts = {}
    for n in range(tb.nodes):
        peer = (n + 1) % tb.nodes
        for q in range(rm.DMA_QUEUES):
            await tb.setup_queue(n, q, 0x400 * q, 32, rm.GRAD_BASE, half)
        # the peer receives in the upper half: window w <- descriptor w of node n
        ranges = _layout(rng, per_node, 3 * tb.hw.max_payload_bytes, half, half)
        posts[n] = []
        for w, (dst_off, length) in enumerate(ranges):
            src_off = rng.randrange(0, (half - length) // 4) * 4
            win = w % tb.hw.rx_windows
            tag = rm.encode_tag(layer=1 + w, chunk=w, step=n)
            flags = rm.DescFlag.REDUCE_ADD if rng.random() < 0.6 else 0
            if rng.random() < 0.5:
                flags |= rm.DescFlag.IRQ
            posts[n].append(
                (
                    win,
                    rm.Descriptor(
                        src_addr=rm.GRAD_BASE + src_off,
                        length=length,
                        peer=peer,
                        remote_addr=rm.GRAD_BASE + dst_off,
                        window=win,
                        tag=tag,
                        flags=flags,
                    ),
                    dst_off,
                    length,
                )
            )
    # open windows on each receiver: one window per descriptor, reused in rounds
    rounds = 1 + (per_node - 1) // tb.hw.rx_windows
    for r in range(rounds):
        for n in range(tb.nodes):
            peer = (n + 1) % tb.nodes
            for i, (win, d, _dst_off, length) in enumerate(posts[n]):
                if i // tb.hw.rx_windows != r:
                    continue
                src = rm.GRAD_BASE + rng.randrange(0, (half - length) // 4) * 4
                await tb.open_window(peer, win, d.remote_addr, src, length, d.tag, expect=length)
        # post this round's descriptors on random queues with random gaps
        heads = {
            (n, q): await tb.read_csr(n, rm.dma_reg(q, "TAIL"))
            for n in range(tb.nodes)
            for q in range(rm.DMA_QUEUES)
        }
        for n in range(tb.nodes):
            for i, (_win, d, _dst, _len) in enumerate(posts[n]):
                if i // tb.hw.rx_windows != r:
                    continue
                q = rng.randrange(rm.DMA_QUEUES)
                slot = heads[(n, q)] % 32
                await tb.load_ring(n, rm.RING_MEM_BASE + 0x400 * q + 32 * slot, d.encode())
                heads[(n, q)] += 1
                if rng.random() < 0.6:
                    await tb.write_csr(n, rm.dma_reg(q, "DOORBELL"), heads[(n, q)])
                if rng.random() < 0.3:
                    await tb.wait(rng.randrange(1, 200))
            for q in range(rm.DMA_QUEUES):
                await tb.write_csr(n, rm.dma_reg(q, "DOORBELL"), heads[(n, q)])
        await tb.wait_until(tb.all_idle)
        await tb.wait(2 * tb.hw.link_latency_cycles + 100)
    cl = tb.run_model()
    await tb.compare_with_model(cl)
    for n in range(tb.nodes):  # coverage of every posted descriptor (no ring slot was reused)
        ring = await tb.read_ring(n, rm.RING_MEM_BASE, 2 * 0x400 // 4)
        for q in range(rm.DMA_QUEUES):
            tail = await tb.read_csr(n, rm.dma_reg(q, "TAIL"))
            assert tail <= 32, f"node {n} queue {q}: {tail} descriptors overran the 32-slot ring"
            for first in range(0x100 * q, 0x100 * q + 8 * tail, rm.DESCRIPTOR_WORDS):
                desc = rm.Descriptor.decode(ring[first : first + rm.DESCRIPTOR_WORDS])
                cov.sample_descriptor(desc, q, tb.hw.max_payload_bytes, half)
    await sample_node_counters(tb)
    cov.write(Path.cwd(), "dma_random_descriptors", dut._log.info, FUZZ_COVERAGE)
    # independent of the model: every byte outside the destinations is untouched
    for n in range(tb.nodes):
        peer = (n + 1) % tb.nodes
        grad = await tb.dump_grad(peer)
        touched = np.zeros(tb.hw.gradient_words, dtype=bool)
        for _win, _d, dst_off, length in posts[n]:
            touched[dst_off // tb.wb : (dst_off + length) // tb.wb] = True
        assert np.array_equal(grad[~touched], init[peer][~touched]), "guard words changed"


@cocotb.test()
async def priority_overtake(dut):
    """A high-priority chunk posted during a long low-priority one starts right after it.

    Node 0 posts two long low-priority descriptors, then a high-priority one
    while the first is running: the high-priority one must start when the
    running one completes (before the second low one), i.e. within the
    bound ``descriptor_cycles(running length)`` the model states, and all
    cycles must equal the model's.
    """
    tb = CommTB(dut)
    await tb.cycle_reset()
    nrng = np.random.default_rng(tb.seed)
    grad_bytes = tb.hw.gradient_words * tb.wb
    half = grad_bytes // 2
    for n in range(tb.nodes):
        await tb.load_grad(n, 0, random_operands(nrng, tb.hw.gradient_words, tb.fmt))
    lo_len = min(half // 4, 8 * tb.hw.max_payload_bytes) // 4 * 4
    hi_len = tb.hw.max_payload_bytes
    for q in range(rm.DMA_QUEUES):
        await tb.setup_queue(0, q, 0x400 * q, 8, rm.GRAD_BASE, half)
    tags = [rm.encode_tag(3, 0, 0), rm.encode_tag(3, 1, 0), rm.encode_tag(1, 0, 0)]
    dsts = [half, half + lo_len, half + 2 * lo_len]
    lens = [lo_len, lo_len, hi_len]
    for w in range(3):
        await tb.open_window(
            1, w, rm.GRAD_BASE + dsts[w], rm.GRAD_BASE + dsts[w], lens[w], tags[w], expect=lens[w]
        )
    descs = [
        rm.Descriptor(
            src_addr=rm.GRAD_BASE + 4 * w,
            length=lens[w],
            peer=1,
            remote_addr=rm.GRAD_BASE + dsts[w],
            window=w,
            tag=tags[w],
            flags=rm.DescFlag.REDUCE_ADD,
        )
        for w in range(3)
    ]
    await tb.load_ring(0, rm.RING_MEM_BASE + 0x400, descs[0].encode())
    await tb.load_ring(0, rm.RING_MEM_BASE + 0x400 + 32, descs[1].encode())
    await tb.load_ring(0, rm.RING_MEM_BASE, descs[2].encode())
    await tb.write_csr(0, rm.dma_reg(1, "DOORBELL"), 2)
    lo_start = tb.log[-1].cycle  # the doorbell's AW/W handshake
    await tb.wait(tm.descriptor_cycles(lo_len, tb.hw) // 3)
    await tb.write_csr(0, rm.dma_reg(0, "DOORBELL"), 1)
    posted = tb.log[-1].cycle
    await tb.wait_until(tb.all_idle)
    await tb.wait(2 * tb.hw.link_latency_cycles + 100)
    recs = [r for r in await tb.trace(0) if r.engine in (rm.Engine.DMA_HI, rm.Engine.DMA_LO)]
    starts = {r.tag: r.cycle for r in recs if r.event == rm.TraceEvent.START}
    ends = {r.tag: r.cycle for r in recs if r.event == rm.TraceEvent.END}
    assert starts[tags[0]] == lo_start + 1
    assert starts[tags[2]] == ends[tags[0]], "high priority did not start at the chunk boundary"
    assert starts[tags[1]] == ends[tags[2]], "second low chunk did not wait for the high one"
    bound = tm.descriptor_cycles(lo_len, tb.hw)
    assert starts[tags[2]] - (posted + 1) <= bound, (
        f"high priority waited {starts[tags[2]] - posted - 1} > bound {bound}"
    )
    cl = tb.run_model()
    await tb.compare_with_model(cl)


#: The coverage the descriptor fuzz reports and asserts.
FUZZ_COVERAGE = ("gradsync.descriptor", "gradsync.packet")
#: Bins the fuzz leaves empty on purpose: no link faults are injected here (that is
#: ``allreduce_with_faults``), so no packet is corrupted, dropped, NAKed, timed out,
#: resent, duplicated or stalled.
FUZZ_EMPTY_BY_DESIGN = {
    "gradsync.packet.event": tuple(cov.COUNTER_EVENTS),
}
#: The fuzz kinds refused by the DMA engine before a byte moves (any length will do).
DMA_REFUSED = ("version", "flags", "misaligned", "window", "peer")
#: The other descriptor flags, cycled through by the fuzz's BF16 descriptors (refused on a
#: fixed-point node with BAD_FLAGS) so that every flag combination is covered.
OTHER_FLAGS = tuple(f for f in rm.DescFlag if f != rm.DescFlag.BF16)


@dataclass(frozen=True)
class FuzzLengths:
    """Descriptor lengths of the fuzz by class (``gradsync.sim.coverage.length_class``).

    A descriptor that reaches the receiver must fit one receive slice; those the
    receiver refuses stay single-packet (``RX_DROPS`` counts one per descriptor).
    """

    max_payload: int
    slice_bytes: int
    window_bytes: int

    def classes(self, kind: str) -> tuple[str, ...]:
        if kind == "zero":
            return ("zero",)  # the length is replaced by 0
        if kind == "window_long":
            return ("over_window",)
        if kind.startswith("rx_"):
            return ("one_word", "below_payload")
        ok = ("one_word", "below_payload", "max_payload", "multi_packet")
        return ok + ("window_max",) if kind in DMA_REFUSED else ok

    def draw(self, rng: random.Random, kind: str, cls: str | None = None) -> int:
        """A length of class ``cls`` (None: a random class ``kind`` allows), in bytes."""
        classes = self.classes(kind)
        if cls is None:  # mostly short ones, as the fuzz always had
            cls = rng.choices(classes, weights=[1, 6, 1, 2, 1][: len(classes)])[0]
        words = {
            "zero": lambda: 1,
            "one_word": lambda: 1,
            "below_payload": lambda: rng.randrange(2, self.max_payload // 4),
            "max_payload": lambda: self.max_payload // 4,
            "multi_packet": lambda: rng.randrange(self.max_payload // 4 + 1, self.slice_bytes // 4),
            "window_max": lambda: self.window_bytes // 4,
            "over_window": lambda: self.window_bytes // 4 + rng.randrange(1, 16),
        }[cls]()
        return 4 * words


def _fuzz_prologue(kinds: list[str]) -> list[tuple[str, int, str]]:
    """(kind, queue, length class) for every kind, queue and length class the kind allows."""
    lengths = FuzzLengths(0, 0, 0)
    out = []
    for kind in dict.fromkeys(kinds):
        for q in range(rm.DMA_QUEUES):
            classes = lengths.classes(kind)
            if kind == "flags":  # each queue: every subset of the other flags beside BF16
                n = 1 << len(OTHER_FLAGS)
                classes = tuple(classes[i % len(classes)] for i in range(n))
            out += [(kind, q, cls) for cls in classes]
    return out


async def sample_node_counters(tb: CommTB) -> dict[str, int]:
    """Sample the packet events counted by every node's and link's counters since reset."""
    totals: dict[str, int] = {}
    for n in range(tb.nodes):
        for c in NODE_COUNTERS:
            totals[c] = totals.get(c, 0) + int(tb.sig(n, c).value)
        for c in LINK_COUNTERS:
            totals[f"link_{c}"] = totals.get(f"link_{c}", 0) + int(tb.link(n, c).value)
    return cov.sample_counters(totals)


@cocotb.test()
async def descriptor_fuzz(dut):
    """Hundreds of random valid and invalid descriptors; codes and memory equal the model.

    Invalid at the DMA: bad version, zero length, misalignment, source
    outside the queue window or memory (or longer than it), unknown peer.
    Invalid at the receiver: disabled window, wrong tag, destination outside
    the window.  A directed prologue (:func:`_fuzz_prologue`) posts every kind
    on both queues in every length class it allows, so the coverage bins the
    fuzz is designed to reach are reached whatever the seed; the functional
    coverage (``gradsync.sim.coverage``) is sampled from the RTL's status
    words and the receiver's trace, exported into the test directory and
    asserted (:data:`FUZZ_EMPTY_BY_DESIGN`).
    """
    tb = CommTB(dut)
    await tb.cycle_reset()
    rng = random.Random(tb.seed)
    nrng = np.random.default_rng(tb.seed)
    total = tb.env_int("descriptors", 500)
    grad_bytes = tb.hw.gradient_words * tb.wb
    half = grad_bytes // 2
    for n in range(tb.nodes):
        await tb.load_grad(n, 0, random_operands(nrng, tb.hw.gradient_words, tb.fmt))
    win_base = rm.GRAD_BASE + 64
    win_len = half - 128
    for q in range(rm.DMA_QUEUES):
        await tb.setup_queue(0, q, 0x400 * q, tb.hw.ring_entries // 2, win_base, win_len)
    # receiver windows: w covers [half + w*slice, +slice) in node 1
    nwin = tb.hw.rx_windows
    slice_ = (half // nwin) // 64 * 64
    for w in range(nwin - 1):  # the last window stays closed
        dst = rm.GRAD_BASE + half + w * slice_
        await tb.open_window(1, w, dst, dst - half, slice_, rm.encode_tag(w + 1, 0, 7))
    kinds = ["ok"] * 6 + [
        "version",
        "flags",
        "zero",
        "misaligned",
        "window",
        "window_long",
        "peer",
        "rx_closed",
        "rx_tag",
        "rx_range",
    ]
    # the refusal each kind must produce, from the regmap's validation order
    E = rm.ErrorCode
    expected_code = {
        "version": E.BAD_VERSION,
        "flags": E.BAD_FLAGS,
        "zero": E.ZERO_LENGTH,
        "misaligned": E.MISALIGNED,
        "window": E.OUT_OF_WINDOW,
        "window_long": E.OUT_OF_WINDOW,
        "peer": E.UNKNOWN_PEER,
    }
    prologue = _fuzz_prologue(kinds)
    lengths = FuzzLengths(tb.hw.max_payload_bytes, slice_, win_len)
    done = 0
    counts: dict[str, int] = {}
    slot = {0: 0, 1: 0}
    bf16_posts = {0: 0, 1: 0}  # BF16 descriptors per queue (kind "flags")
    rx_refused = 0
    ring_full = 0
    while done < total:
        batch = min(total - done, tb.hw.ring_entries // 2)
        issued = []
        for q in range(2):
            if rng.random() < 0.3:
                # (engine idle) a doorbell more than RING_SIZE ahead is refused, changes nothing
                bad = slot[q] + tb.hw.ring_entries // 2 + rng.randrange(1, 5)
                await tb.write_csr(0, rm.dma_reg(q, "DOORBELL"), bad)
                err = await tb.read_csr(0, "ERR_CODE")
                assert err & 0xFF == rm.ErrorCode.RING_FULL and (err >> 16) == q, hex(err)
                assert await tb.read_csr(0, "ERR_INFO") == bad
                assert await tb.read_csr(0, rm.dma_reg(q, "TAIL")) == slot[q]
                ring_full += 1
        for _ in range(batch):
            directed = (
                prologue[sum(counts.values())] if sum(counts.values()) < len(prologue) else None
            )
            kind = directed[0] if directed else rng.choice(kinds)
            counts[kind] = counts.get(kind, 0) + 1
            q = directed[1] if directed else rng.randrange(2)
            w = rng.randrange(nwin - 1)
            length = lengths.draw(rng, kind, directed[2] if directed else None)
            src = win_base + rng.randrange(0, max(1, (win_len - length) // 4)) * 4
            dst_room = max(1, (slice_ - length) // 4)  # DMA-refused kinds may exceed the slice
            dst = rm.GRAD_BASE + half + w * slice_ + rng.randrange(0, dst_room) * 4
            # FENCE on COMPUTE_DONE >= 0 must pass at once (no compute half here)
            d = dict(
                src_addr=src,
                length=length,
                peer=1,
                remote_addr=dst,
                window=w,
                tag=rm.encode_tag(w + 1, 0, 7),
                flags=rng.choice([0, rm.DescFlag.REDUCE_ADD])
                | rng.choice([0, 0, rm.DescFlag.FENCE])
                | rng.choice([0, rm.DescFlag.IRQ]),
            )
            if kind == "version":
                d["version"] = rng.choice([0, 2, 255])
            elif kind == "flags":  # BF16 on a fixed-point node, with the n-th other-flag subset
                assert isinstance(tb.fmt, FixedPointFormat), "the fuzz needs a fixed-point build"
                n = bf16_posts[q]
                bf16_posts[q] += 1
                d["flags"] = rm.DescFlag.BF16 | sum(
                    f for i, f in enumerate(OTHER_FLAGS) if n >> i & 1
                )
            elif kind == "zero":
                d["length"] = 0
            elif kind == "misaligned":
                field = rng.choice(["length", "src_addr", "remote_addr"])
                d[field] += rng.randrange(1, 4)
            elif kind == "window":
                d["src_addr"] = rng.choice(
                    [
                        win_base - 4 * rng.randrange(1, 16),
                        win_base + win_len - length + 4 * rng.randrange(1, 16),
                    ]
                )
            elif kind == "window_long":
                d["src_addr"] = win_base
            elif kind == "peer":
                d["peer"] = rng.choice([0, 2, 7, 255])
            elif kind == "rx_closed":
                d["window"] = nwin - 1
            elif kind == "rx_tag":
                d["tag"] = rm.encode_tag(w + 1, 1 + rng.randrange(0, 8), 7)
            elif kind == "rx_range":
                d["remote_addr"] = rng.choice(
                    [
                        rm.GRAD_BASE + half + w * slice_ - 4 * rng.randrange(1, 8),
                        rm.GRAD_BASE + half + (w + 1) * slice_ - length + 4 * rng.randrange(1, 8),
                    ]
                )
            s = slot[q] % (tb.hw.ring_entries // 2)
            await tb.load_ring(
                0, rm.RING_MEM_BASE + 0x400 * q + 32 * s, rm.Descriptor(**d).encode()
            )
            issued.append((q, s, int(expected_code.get(kind, E.OK)), kind))
            rx_refused += kind.startswith("rx_")
            slot[q] += 1
            if rng.random() < 0.25:
                await tb.write_csr(0, rm.dma_reg(q, "DOORBELL"), slot[q])
        for q in range(2):
            await tb.write_csr(0, rm.dma_reg(q, "DOORBELL"), slot[q])
        await tb.wait_until(tb.all_idle)
        ring = await tb.read_ring(0, rm.RING_MEM_BASE, 2 * 0x400 // 4)
        for q, s, code, kind in issued:
            status = ring[(0x400 * q + 32 * s + 24) // 4]
            assert status == rm.descriptor_status(code), (
                f"descriptor {kind!r} in queue {q} slot {s}: status {status:#x}, "
                f"want {rm.descriptor_status(code):#x}"
            )
            first = (0x400 * q + 32 * s) // 4
            desc = rm.Descriptor.decode(ring[first : first + rm.DESCRIPTOR_WORDS])
            cov.sample_descriptor(desc, q, tb.hw.max_payload_bytes, win_len)
        done += batch
    await tb.wait(2 * tb.hw.link_latency_cycles + 100)
    dut._log.info(f"descriptor kinds: {counts}")
    assert all(counts.get(k, 0) > 0 for k in kinds), counts
    assert await tb.read_csr(1, "RX_DROPS") == rx_refused
    assert ring_full > 0
    assert await tb.read_csr(0, "ERR_COUNT") == ring_full + sum(
        counts.get(k, 0) for k in expected_code
    )
    cl = tb.run_model()
    await tb.compare_with_model(cl, check_trace=False)
    assert cl.devices[1].rx_drops == rx_refused
    # the receiver's refusals, from its trace (one NIC_RX record per packet: it never overflows)
    rx_events = cov.sample_rx_errors(await tb.trace(1))
    assert sum(rx_events.values()) == rx_refused, rx_events
    await sample_node_counters(tb)
    cov.write(Path.cwd(), "descriptor_fuzz", dut._log.info, FUZZ_COVERAGE)
    for item in cov.summary(FUZZ_COVERAGE):
        assert set(item.empty) == set(FUZZ_EMPTY_BY_DESIGN.get(item.name, ())), (
            f"{item.name}: empty bins {item.empty}, by design only "
            f"{FUZZ_EMPTY_BY_DESIGN.get(item.name, ())}"
        )


async def _ring_allreduce(tb: CommTB, words_per_node: int, step_tag: int, faults: bool):
    """Exchange (N = 2) or ring reduce-scatter + all-gather (N > 2) of one gradient buffer.

    Node i's buffer lives at GRAD offset 0 and is reduced in place; each
    step waits (polling RX_DONE, as firmware would with the IRQ) for the
    data it forwards.  Returns the NumPy reference of the result.
    """
    N = tb.nodes
    nrng = np.random.default_rng(tb.seed)
    chunk_ops = words_per_node // N
    chunk = chunk_ops * tb.wb
    assert chunk % 4 == 0
    bufs = [random_operands(nrng, N * chunk_ops, tb.fmt) for _ in range(N)]
    for n in range(N):
        await tb.load_grad(n, 0, bufs[n])
        for q in range(rm.DMA_QUEUES):
            await tb.setup_queue(n, q, 0x400 * q, 16, rm.GRAD_BASE, N * chunk)
    # NumPy reference in the same order of additions as the ring
    ref = [b.copy() for b in bufs]
    steps = []  # (step, sender, chunk index, reduce)
    for s in range(N - 1):
        for i in range(N):
            steps.append((s, i, (i - s) % N, True))
    for s in range(N - 1):
        for i in range(N):
            steps.append((N - 1 + s, i, (i + 1 - s) % N, False))
    for s in range(2 * (N - 1)):
        snap = [r.copy() for r in ref]
        for st, i, c, red in steps:
            if st != s:
                continue
            peer = (i + 1) % N
            sl = slice(c * chunk_ops, (c + 1) * chunk_ops)
            ref[peer][sl] = (
                nx.add_saturating(snap[peer][sl], snap[i][sl], tb.fmt) if red else snap[i][sl]
            )
    # drive the steps
    tails = {
        (n, q): await tb.read_csr(n, rm.dma_reg(q, "TAIL"))
        for n in range(N)
        for q in range(rm.DMA_QUEUES)
    }
    for s in range(2 * (N - 1)):
        for st, i, c, _red in steps:
            if st != s:
                continue
            peer = (i + 1) % N
            w = s % tb.hw.rx_windows
            off = c * chunk
            tag = rm.encode_tag(1, c, step_tag + s)
            await tb.open_window(
                peer, w, rm.GRAD_BASE + off, rm.GRAD_BASE + off, chunk, tag, expect=chunk
            )
        for st, i, c, red in steps:
            if st != s:
                continue
            w = s % tb.hw.rx_windows
            d = rm.Descriptor(
                src_addr=rm.GRAD_BASE + c * chunk,
                length=chunk,
                peer=(i + 1) % N,
                remote_addr=rm.GRAD_BASE + c * chunk,
                window=w,
                tag=rm.encode_tag(1, c, step_tag + s),
                flags=(rm.DescFlag.REDUCE_ADD if red else 0) | rm.DescFlag.IRQ,
            )
            q = s % 2
            await tb.load_ring(
                i, rm.RING_MEM_BASE + 0x400 * q + 32 * (tails[(i, q)] % 16), d.encode()
            )
            tails[(i, q)] += 1
            await tb.write_csr(i, rm.dma_reg(q, "DOORBELL"), tails[(i, q)])
        w = s % tb.hw.rx_windows

        async def arrived(w=w):
            for n in range(N):
                if not (await tb.read_csr(n, "RX_DONE_LO") >> w) & 1:
                    return False
            return True

        await tb.wait_until(arrived, step=32)
        for n in range(N):
            await tb.write_csr(n, "RX_DONE_LO", 1 << w)
    return ref


@cocotb.test()
async def allreduce(dut):
    """2-node exchange or 4-node ring all-reduce, bit-exact incl. saturation, cycle-exact."""
    tb = CommTB(dut)
    await tb.cycle_reset()
    ref = await _ring_allreduce(tb, tb.env_int("words", 1024), 0, faults=False)
    await tb.wait_until(tb.all_idle)
    await tb.wait(2 * tb.hw.link_latency_cycles + 100)
    for n in range(tb.nodes):
        grad = await tb.dump_grad(n)
        assert np.array_equal(grad[: len(ref[n])], ref[n]), f"node {n} differs from NumPy"
        assert np.array_equal(grad[: len(ref[0])], ref[0]), f"node {n} differs from node 0"
        sat = np.sum((ref[n] == tb.fmt.qmax) | (ref[n] == tb.fmt.qmin))
        assert sat > 0, "the stimulus never saturated"
    cl = tb.run_model()
    await tb.compare_with_model(cl)


@cocotb.test()
async def allreduce_with_faults(dut):
    """The all-reduce with bit errors, drops and stalls on every link; data still exact."""
    tb = CommTB(dut)
    await tb.cycle_reset()
    rate = tb.env_int("fault_rate", 3277)  # per 65536 packets: 5 %
    for i in range(tb.nodes):
        tb.link(i, "seed").value = tb.seed * 7919 + i
        tb.link(i, "seed_load").value = 1
    await tb.wait(1)
    for i in range(tb.nodes):
        tb.link(i, "seed_load").value = 0
        tb.link(i, "corrupt_rate").value = rate
        tb.link(i, "drop_rate").value = rate
        tb.link(i, "stall_rate").value = tb.env_int("stall_rate", 200)
        tb.link(i, "stall_max").value = 40
        # one outage per link, longer than two resend timeouts, while the first all-reduce
        # is on the links: whatever the random faults do, the timeout path is exercised
        tb.link(i, "down_at").value = 1500 + 2500 * i
        tb.link(i, "down_len").value = 2 * nic_timeouts(tb.hw.link)[0] + 100
    total_ref = None
    for rep in range(tb.env_int("repeats", 8)):
        total_ref = await _ring_allreduce(tb, tb.env_int("words", 1024), 16 * rep, faults=True)
        await tb.wait_until(tb.all_idle)
    await tb.wait(4 * tb.hw.link_latency_cycles + 400)
    for n in range(tb.nodes):
        grad = await tb.dump_grad(n)
        assert np.array_equal(grad[: len(total_ref[n])], total_ref[n]), f"node {n} wrong"
    cl = tb.run_model()
    await tb.compare_with_model(cl, timing=False, ordered=False)
    corrupted = sum(int(tb.link(i, "corrupted").value) for i in range(tb.nodes))
    dropped = sum(int(tb.link(i, "dropped").value) for i in range(tb.nodes))
    stalls = sum(int(tb.link(i, "stalls").value) for i in range(tb.nodes))
    resent = sum(int(tb.sig(n, "tx_retransmits").value) for n in range(tb.nodes))
    crc = sum(int(tb.sig(n, "rx_crc_errors").value) for n in range(tb.nodes))
    applied = sum(int(tb.sig(n, "rx_packets").value) for n in range(tb.nodes))
    sent = sum(int(tb.sig(n, "tx_packets").value) for n in range(tb.nodes))
    packets = sum(int(tb.link(i, "packets").value) for i in range(tb.nodes))
    dut._log.info(
        f"packets on links {packets}, new packets {sent}, corrupted {corrupted}, "
        f"dropped {dropped}, stalls {stalls}, resent {resent}, crc errors {crc}"
    )
    naks = sum(int(tb.sig(n, "tx_naks").value) for n in range(tb.nodes))
    timeouts = sum(int(tb.sig(n, "tx_timeouts").value) for n in range(tb.nodes))
    dut._log.info(f"NAKs acted on {naks}, timeouts {timeouts}")
    for i in range(tb.nodes):
        per = {c: int(tb.link(i, c).value) for c in ("packets", "corrupted", "dropped", "stalls")}
        dut._log.info(f"link {i}: {per}")
        assert per["corrupted"] > 0 and per["dropped"] > 0 and per["stalls"] > 0, (
            f"link {i} saw no fault of some kind: {per}"
        )
        assert (per["corrupted"] + per["dropped"]) * 100 >= per["packets"], (
            f"link {i}: fewer than 1 in 100 packets faulted: {per}"
        )
    assert naks > 0 and timeouts > 0, "both recovery paths (NAK, timeout) must be exercised"
    events = await sample_node_counters(tb)
    for n in range(tb.nodes):
        events.update(cov.sample_rx_errors(await tb.trace(n)))
    cov.write(Path.cwd(), "allreduce_with_faults", dut._log.info, "gradsync.packet")
    # every fault event but the receiver's window refusals (every window is open and tagged);
    # duplicates and sequence errors need a lost ACK or a drop followed by a packet
    missing = set(cov.COUNTER_EVENTS) - {"duplicate", "seq_error"} - set(events)
    assert not missing, f"packet events never seen: {sorted(missing)}"
    assert not set(events) & set(cov.WINDOW_EVENTS.values()), events
    assert resent > 0 and crc > 0, "faults were not detected and resent"
    assert applied == sent == sum(d.perf["rx_pkts"] for d in cl.devices), (
        f"applied {applied} sent {sent}: a packet was lost or applied twice"
    )
    assert packets == sent + resent
