"""hw/cluster.py under Verilator against model/ : the same host programs on both, every value and cycle.

Each node runs :func:`node_program` (compute commands, DMA descriptors on both
queues, RX windows, error paths) through the device protocol: on the golden
model (``model.cluster.Cluster``) and on the RTL cluster through
``sim/rtl_device.py``'s :class:`RtlDevice` (cocotbext-axi AXI4-Lite master and
AXI4-Stream source/sink).  Everything a program observes -- register values,
the cycle each call returns in, dumped memory, the trace records per engine
-- must be identical.  ``tests/hw/test_cluster.py`` and
``tests/hw/test_node.py`` run the modules; ``CLUSTER_WANT`` carries the
model's logs (JSON) and ``CLUSTER_SCENARIO`` the scenario name.  The TB set-up, the log
format and its comparison are the public ``gradsync.sim.testbench`` / ``sim.scoreboard``.
"""

from __future__ import annotations

import json
import os

import cocotb
import numpy as np
from cocotb.triggers import with_timeout

from gradsync.sim.rtl_device import RtlDevice
from gradsync.sim.scoreboard import Recorder, compare_logs, records_by_engine
from gradsync.sim.testbench import ClusterTB
from gradsync.spec import regmap as rm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig

FMT = FixedPointFormat()

#: Gradient SRAM layout of the exchange (byte offsets from GRAD_BASE).
G_OFF, R_OFF, C_OFF = 0, 4096, 12288
BUF_WORDS = 1024
#: (offset, length) in bytes of the chunks of the buffer, their queue and flags.
CHUNKS = [
    (0, 512, 1, "reduce"),
    (512, 256, 1, "reduce"),
    (768, 768, 0, "fence"),
    (1536, 512, 0, "plain"),
]
RING_SIZE = 8
IRQ_ALL = int(rm.Irq.COMPUTE | rm.Irq.DMA_Q0 | rm.Irq.DMA_Q1 | rm.Irq.RX | rm.Irq.ERROR)
BAD_TAG_WINDOW = 4


def corner_words(rng, n: int, fmt: FixedPointFormat = FMT) -> np.ndarray:
    """Random operand words, a third of them at or next to the saturation rails."""
    x = rng.integers(fmt.qmin, fmt.qmax + 1, size=n)
    corners = rng.choice([fmt.qmin, fmt.qmin + 1, -1, 0, 1, fmt.qmax - 1, fmt.qmax], size=n)
    return np.where(rng.random(n) < 0.33, corners, x)


async def launch(dev, op, a, b, c, m, k, n, *, arg=0, tag=0, kind=rm.Kind.FWD, irq=1):
    for name, value in rm.command_registers(
        op, a, b, c, m, k, n, arg=arg, tag=tag, kind=kind, irq=irq
    ):
        await dev.write32(rm.offset(name), value)
    await dev.write32(rm.offset("CMD_LAUNCH"), 1)


async def post(dev, queue: int, slot: int, desc: rm.Descriptor) -> None:
    addr = rm.RING_MEM_BASE + (queue * RING_SIZE + slot) * rm.DESCRIPTOR_BYTES
    await dev.load(addr, np.array(desc.encode(), dtype=np.int64))
    await dev.write32(rm.dma_reg(queue, "DOORBELL"), slot + 1)


async def read_trace(dev, rec: Recorder) -> None:
    """Drain the trace buffer with one bulk dump (as firmware.driver does); note it per engine."""
    head = await dev.read32(rm.offset("TRACE_HEAD"))
    tail = await dev.read32(rm.offset("TRACE_TAIL"))
    n = head - tail
    rec.note("trace_count", n)
    words = await dev.dump(
        rm.TRACE_MEM_BASE + tail * rm.TRACE_RECORD_WORDS * 4, n * rm.TRACE_RECORD_WORDS
    )
    await dev.write32(rm.offset("TRACE_TAIL"), head)
    records = [rm.TraceRecord.decode([int(w) for w in words[4 * i : 4 * i + 4]]) for i in range(n)]
    per_engine = records_by_engine(records)
    rec.note("trace", per_engine)


async def node_program(dev, now, node: int, nodes: int, seed: int, role: str = "both") -> list:
    """One node's host program.

    ``role``: ``"both"`` -- the node computes, sends its buffer in chunks and
    receives the peer's (the exchange-reduce); ``"send"`` -- computes and
    sends only; ``"recv"`` -- only opens its windows and waits for them.
    """
    rec = Recorder(now)
    rng = np.random.default_rng(seed * 100 + node)
    wb = FMT.word_bytes
    sends, recvs = role in ("both", "send"), role in ("both", "recv")
    g = corner_words(rng, BUF_WORDS)
    await dev.write32(rm.offset("IRQ_MASK"), IRQ_ALL)
    await dev.write32(rm.offset("HOST_TAG"), 0x100 + node)
    rec.note("id", [await dev.read32(rm.offset(n)) for n in ("NODE_ID", "NUM_NODES", "TX_PEER")])
    await dev.load(rm.GRAD_BASE + G_OFF, g)
    await dev.load(rm.GRAD_BASE + R_OFF, np.full(BUF_WORDS + 8, 0x1234))  # guard around R
    for q in range(rm.DMA_QUEUES):
        await dev.write32(rm.dma_reg(q, "RING_BASE"), rm.RING_MEM_BASE + q * RING_SIZE * 32)
        await dev.write32(rm.dma_reg(q, "RING_SIZE"), RING_SIZE)
        await dev.write32(rm.dma_reg(q, "WIN_BASE"), rm.GRAD_BASE)
        await dev.write32(rm.dma_reg(q, "WIN_LEN"), R_OFF)
    step = 3 + node
    tags = [rm.encode_tag(2, c, step) for c in range(len(CHUNKS))]
    if recvs:
        peer_step = 3 + (node - 1) % nodes
        for w, (off, length, _, _) in enumerate(CHUNKS + [(0, 64, 1, "bad")]):
            base = rm.RX_WINDOW_BASE + w * rm.RX_WINDOW_STRIDE
            await dev.write32(base + 0x00, 1)  # CTRL: enable, clear RECEIVED
            await dev.write32(base + 0x04, rm.GRAD_BASE + R_OFF + off)  # DST
            await dev.write32(base + 0x08, rm.GRAD_BASE + G_OFF + off)  # SRC
            await dev.write32(base + 0x0C, length)  # LEN
            await dev.write32(base + 0x10, rm.encode_tag(2, w, peer_step))  # TAG
            await dev.write32(base + 0x14, length)  # EXPECT: arms
        rec.note(
            "win", [await dev.read32(rm.RX_WINDOW_BASE + 0x20 * 2 + o) for o in range(0, 0x20, 4)]
        )
    n_cmds = 0
    if sends:
        # Compute operands, then two commands that run while the descriptors go out.
        m_, k_, n_ = 20, 37, 12
        a = corner_words(rng, m_ * k_) // 64
        b = corner_words(rng, k_ * n_) // 64
        await dev.load(rm.SCRATCH_BASE, a)
        await dev.load(rm.SCRATCH_BASE + 1024 * wb, b)
        await launch(
            dev,
            rm.Opcode.GEMM,
            rm.SCRATCH_BASE,
            rm.SCRATCH_BASE + 1024 * wb,
            rm.GRAD_BASE + C_OFF,
            m_,
            k_,
            n_,
            tag=rm.encode_tag(1, 0, step),
        )
        await launch(
            dev,
            rm.Opcode.SGD,
            rm.SCRATCH_BASE,
            rm.GRAD_BASE + G_OFF,
            rm.SCRATCH_BASE + 2048 * wb,
            4,
            0,
            40,
            arg=3,
            kind=rm.Kind.UPDATE,
            tag=rm.encode_tag(1, 1, step),
        )
        n_cmds = 2
        slots = [0, 0]
        peer = (node + 1) % nodes
        for c, (off, length, q, how) in enumerate(CHUNKS):
            flags = rm.DescFlag.IRQ
            if how != "plain":
                flags |= rm.DescFlag.REDUCE_ADD
            if how == "fence":
                flags |= rm.DescFlag.FENCE
            d = rm.Descriptor(
                rm.GRAD_BASE + G_OFF + off,
                length,
                peer,
                rm.GRAD_BASE + R_OFF + off,
                c,
                tags[c],
                int(flags),
                fence_count=n_cmds if how == "fence" else 0,
            )
            await post(dev, q, slots[q], d)
            slots[q] += 1
            for _ in range(int(rng.integers(0, 6))):
                rec.note(
                    "poll",
                    [
                        await dev.read32(rm.offset(n))
                        for n in ("DMA0_HEAD", "DMA1_HEAD", "COMPUTE_DONE")
                    ],
                )
        # A misaligned descriptor (refused locally) and one whose tag the peer's window refuses.
        bad = rm.Descriptor(
            rm.GRAD_BASE + 2, 64, peer, rm.GRAD_BASE + R_OFF, 0, 0, int(rm.DescFlag.IRQ)
        )
        await post(dev, 1, slots[1], bad)
        slots[1] += 1
        wrong = rm.Descriptor(
            rm.GRAD_BASE,
            64,
            peer,
            rm.GRAD_BASE + R_OFF,
            BAD_TAG_WINDOW,
            rm.encode_tag(9, 9, 9),
            int(rm.DescFlag.IRQ),
        )
        await post(dev, 1, slots[1], wrong)
        slots[1] += 1
    want_rx = (1 << len(CHUNKS)) - 1 if recvs else 0
    want_errors = (1 if sends else 0) + (1 if recvs else 0)
    while True:
        state = {
            n: await dev.read32(rm.offset(n))
            for n in ("DMA0_DONE", "DMA1_DONE", "RX_DONE_LO", "COMPUTE_DONE", "ERR_COUNT")
        }
        rec.note("state", state)
        if (
            state["COMPUTE_DONE"] == n_cmds
            and state["RX_DONE_LO"] == want_rx
            and state["ERR_COUNT"] == want_errors
            and (not sends or (state["DMA0_DONE"], state["DMA1_DONE"]) == (2, 4))
        ):
            break
        status = await dev.wait_irq(IRQ_ALL)
        rec.note("irq", status)
        await dev.write32(rm.offset("IRQ_STATUS"), status)
    regs = [
        "ERR_CODE",
        "ERR_INFO",
        "RX_DROPS",
        "RX_BYTES",
        "PERF_GEMM_CYCLES",
        "PERF_VECTOR_CYCLES",
        "PERF_TX_CYCLES",
        "PERF_TX_BYTES",
        "PERF_TX_PACKETS",
        "PERF_RX_PACKETS",
        "DMA0_ERRORS",
        "DMA1_ERRORS",
        "DMA0_TAIL",
        "DMA1_TAIL",
    ]
    rec.note("regs", {n: await dev.read32(rm.offset(n)) for n in regs})
    rec.note(
        "received",
        [
            await dev.read32(rm.offset(rm.rx_window_reg_name(w, "RECEIVED")))
            for w in range(len(CHUNKS) + 1)
        ],
    )
    rec.note("R", await dev.dump(rm.GRAD_BASE + R_OFF, BUF_WORDS + 8))
    rec.note("ring", await dev.dump(rm.RING_MEM_BASE, 2 * RING_SIZE * rm.DESCRIPTOR_WORDS))
    if sends:
        rec.note("C", await dev.dump(rm.GRAD_BASE + C_OFF, 20 * 12))
        rec.note("W", await dev.dump(rm.SCRATCH_BASE + 2048 * wb, 160))
    await read_trace(dev, rec)
    return rec.log


#: Guard word written around every RX target of the ``rx_memory`` scenario.
GUARD = 0x1234
#: Bytes of each packet (one descriptor, one packet) of the ``rx_memory`` scenario.
RX_MEM_BYTES = 64


def rx_memory_windows(hw: HardwareConfig) -> list[tuple[str, int, int, bool]]:
    """The ``rx_memory`` scenario's RX windows: (name, DST, SRC, reduce-add), window = index.

    Each window is LEN = RX_MEM_BYTES long, so every packet lies inside its window; all but
    the last lie (or read) outside the SRAMs and must be refused with RX_OUT_OF_WINDOW.
    """
    wb = FMT.word_bytes
    s_end = rm.SCRATCH_BASE + hw.scratchpad_words * wb
    g_end = rm.GRAD_BASE + hw.gradient_words * wb
    half = RX_MEM_BYTES // 2
    return [
        ("dst_past_grad_end", g_end, rm.GRAD_BASE, False),
        ("dst_below_scratch", rm.SCRATCH_BASE - 0x1000, rm.GRAD_BASE, False),
        ("dst_straddles_scratch_end", s_end - half, rm.GRAD_BASE, False),
        ("dst_straddles_grad_end", g_end - half, rm.GRAD_BASE, True),
        ("src_in_ring_memory", rm.GRAD_BASE + 0x100, rm.RING_MEM_BASE, True),
        ("src_straddles_grad_end", rm.GRAD_BASE + 0x200, g_end - half, True),
        ("src_misaligned", rm.GRAD_BASE + 0x300, rm.GRAD_BASE + 2, True),
        # accepted: the last bytes of the scratchpad from the last bytes of the gradient SRAM
        ("ok_at_the_ends", s_end - RX_MEM_BYTES, g_end - RX_MEM_BYTES, True),
    ]


def rx_memory_guards(hw: HardwareConfig) -> list[tuple[int, int]]:
    """(address, words) of the guard blocks: the ends of both SRAMs and the in-SRAM targets."""
    wb, n = FMT.word_bytes, 64
    return [
        (rm.SCRATCH_BASE + (hw.scratchpad_words - n) * wb, n),
        (rm.GRAD_BASE + (hw.gradient_words - n) * wb, n),
        (rm.GRAD_BASE, 0x400 // wb),
    ]


async def rx_memory_program(dev, now, node: int, hw: HardwareConfig) -> list:
    """Node 1 opens windows whose packets leave the SRAMs; node 0 sends one packet into each.

    The receiver must refuse every such packet exactly as the model does (RX_OUT_OF_WINDOW,
    ERR_INFO = tag, NIC_RX END with aux 0 and an ERROR record, IRQ, RX_DROPS) and write
    nothing: guard words fill both SRAMs' ends and the in-SRAM targets.
    """
    rec = Recorder(now)
    wb = FMT.word_bytes
    wins = rx_memory_windows(hw)
    await dev.write32(rm.offset("IRQ_MASK"), IRQ_ALL)
    await dev.write32(rm.offset("HOST_TAG"), 0x200 + node)
    if node == 1:
        for addr, n in rx_memory_guards(hw):
            await dev.load(addr, np.full(n, GUARD))
        for w, (_, dst, src, _) in enumerate(wins):
            for name, value in (
                ("CTRL", 1),
                ("DST", dst),
                ("SRC", src),
                ("LEN", RX_MEM_BYTES),
                ("TAG", rm.encode_tag(3, w, 1)),
                ("EXPECT", RX_MEM_BYTES),
            ):
                await dev.write32(rm.rx_window_reg(w, name), value)
        while True:
            state = {n: await dev.read32(rm.offset(n)) for n in ("RX_DONE_LO", "ERR_COUNT")}
            rec.note("state", state)
            if state["RX_DONE_LO"] >> (len(wins) - 1) & 1:  # applied in order: the last one
                break
            status = await dev.wait_irq(IRQ_ALL)
            rec.note(
                "irq",
                [
                    status,
                    await dev.read32(rm.offset("ERR_CODE")),
                    await dev.read32(rm.offset("ERR_INFO")),
                ],
            )
            await dev.write32(rm.offset("IRQ_STATUS"), status)
        rec.note(
            "regs",
            {
                n: await dev.read32(rm.offset(n))
                for n in ("ERR_CODE", "ERR_INFO", "RX_DROPS", "RX_BYTES", "PERF_RX_PACKETS")
            },
        )
        rec.note(
            "received",
            [await dev.read32(rm.rx_window_reg(w, "RECEIVED")) for w in range(len(wins))],
        )
        for addr, n in rx_memory_guards(hw):
            rec.note("guard", await dev.dump(addr, n))
    else:
        for q in range(rm.DMA_QUEUES):
            await dev.write32(rm.dma_reg(q, "RING_BASE"), rm.RING_MEM_BASE + q * RING_SIZE * 32)
            await dev.write32(rm.dma_reg(q, "RING_SIZE"), RING_SIZE)
            await dev.write32(rm.dma_reg(q, "WIN_BASE"), rm.GRAD_BASE)
            await dev.write32(rm.dma_reg(q, "WIN_LEN"), hw.gradient_words * wb)
        await dev.load(rm.GRAD_BASE, corner_words(np.random.default_rng(5), 0x400 // wb))
        # let the receiver fill its guards and open its windows first
        await dev.load(rm.SCRATCH_BASE, np.zeros(hw.scratchpad_words))
        for w, (_, dst, _, reduce) in enumerate(wins):
            flags = rm.DescFlag.REDUCE_ADD if reduce else 0
            if w == len(wins) - 1:
                flags |= rm.DescFlag.IRQ
            await post(
                dev,
                w // RING_SIZE,
                w % RING_SIZE,
                rm.Descriptor(
                    rm.GRAD_BASE + 0x40 * w,
                    RX_MEM_BYTES,
                    1,
                    dst,
                    w,
                    rm.encode_tag(3, w, 1),
                    int(flags),
                ),
            )
        status = await dev.wait_irq(IRQ_ALL)
        rec.note("irq", status)
        rec.note("done", [await dev.read32(rm.dma_reg(q, "DONE")) for q in range(rm.DMA_QUEUES)])
    await read_trace(dev, rec)
    return rec.log


#: RX window the ``host_errors`` scenario sends to: beyond every node's windows.
STRAY_WINDOW = 99


async def host_errors_program(dev, now, node: int, hw: HardwareConfig) -> list:
    """Host mistakes and a late receiver error, every register the host reads noted.

    Node 0 reads TRACE_DATA of its empty trace buffer, makes every doorbell mistake of
    ``tests/model/test_device_errors.py`` (queues alternating), then sends one packet to
    RX window 99 of node 1.  Node 1 never waits for an interrupt: it polls ERR_COUNT as
    the firmware's end-of-run check does, then reads what the receiver latched.
    """
    from tests.model.test_device_errors import doorbell_mistakes

    rec = Recorder(now)
    errs = ("ERR_CODE", "ERR_INFO", "ERR_COUNT")
    await dev.write32(rm.offset("IRQ_MASK"), IRQ_ALL)
    if node == 1:
        polls = 0
        while await dev.read32(rm.offset("ERR_COUNT")) == 0 and polls < 20_000:
            polls += 1
        rec.note("polls", polls)
        names = (*errs, "RX_DROPS", "RX_BYTES", "IRQ_STATUS", "TRACE_COUNT")
        rec.note("regs", {n: await dev.read32(rm.offset(n)) for n in names})
        await read_trace(dev, rec)
        return rec.log
    rec.note("empty_trace_data", await dev.read32(rm.offset("TRACE_DATA")))
    rec.note("regs", {n: await dev.read32(rm.offset(n)) for n in (*errs, "TRACE_COUNT")})
    for i, (_, base, size, value, _, _) in enumerate(doorbell_mistakes(hw.ring_entries)):
        q = i % 2
        for name, v in (("RING_BASE", base), ("RING_SIZE", size), ("DOORBELL", value)):
            await dev.write32(rm.dma_reg(q, name), v)
        regs = [await dev.read32(rm.offset(n)) for n in errs]
        rec.note("doorbell", regs + [await dev.read32(rm.dma_reg(q, "TAIL"))])
    await dev.write32(rm.offset("IRQ_STATUS"), await dev.read32(rm.offset("IRQ_STATUS")))
    for name, v in (("RING_BASE", rm.RING_MEM_BASE + RING_SIZE * 32), ("RING_SIZE", RING_SIZE)):
        await dev.write32(rm.dma_reg(1, name), v)
    await dev.write32(rm.dma_reg(1, "WIN_BASE"), rm.GRAD_BASE)
    await dev.write32(rm.dma_reg(1, "WIN_LEN"), 0x800)
    await dev.load(rm.GRAD_BASE, corner_words(np.random.default_rng(9), 64 // FMT.word_bytes))
    stray = rm.Descriptor(
        rm.GRAD_BASE, 64, 1, rm.GRAD_BASE + 0x400, STRAY_WINDOW, rm.encode_tag(1, 0, 1),
        int(rm.DescFlag.IRQ),
    )  # fmt: skip
    await post(dev, 1, 0, stray)
    rec.note("irq", await dev.wait_irq(IRQ_ALL))  # DMA_Q1: errors were cleared above
    rec.note("done", [await dev.read32(rm.dma_reg(1, n)) for n in ("DONE", "ERRORS", "TAIL")])
    await read_trace(dev, rec)
    return rec.log


def programs(scenario: str, nodes: int, seed: int):
    roles = {
        "exchange": ["both"] * nodes,
        "node": ["send"] + ["recv"] * (nodes - 1),
        "rx_memory": ["rx_memory"] * nodes,
        "host_errors": ["host_errors"] * nodes,
    }[scenario]
    return [(i, role) for i, role in enumerate(roles)]


def program(dev, now, node: int, nodes: int, seed: int, role: str, hw: HardwareConfig):
    """The host program of ``node`` in ``role`` (a coroutine)."""
    if role == "rx_memory":
        if nodes != 2:
            raise ValueError(f"the rx_memory scenario runs on 2 nodes, not {nodes!r}")
        return rx_memory_program(dev, now, node, hw)
    if role == "host_errors":
        if nodes != 2:
            raise ValueError(f"the host_errors scenario runs on 2 nodes, not {nodes!r}")
        return host_errors_program(dev, now, node, hw)
    return node_program(dev, now, node, nodes, seed, role)


def model_logs(scenario: str, nodes: int, seed: int, hw: HardwareConfig) -> list[list]:
    """Run the scenario on the golden model; return each node's log."""
    from gradsync.model.cluster import Cluster

    cluster = Cluster(nodes, hw, FMT)

    def factory(i: int, role: str):
        return lambda d: program(d, lambda: cluster.sim.now, i, nodes, seed, role, hw)

    run = cluster.run(
        [factory(i, role) for i, role in programs(scenario, nodes, seed)], max_cycles=200_000
    )
    return json.loads(json.dumps(run.results))


def cluster_env(scenario: str, nodes: int, seed: int, hw: HardwareConfig) -> dict:
    return {
        "CLUSTER_SCENARIO": scenario,
        "CLUSTER_NODES": str(nodes),
        "CLUSTER_SEED": str(seed),
        "CLUSTER_HW": json.dumps(hw.to_dict()),
        "CLUSTER_WANT": json.dumps(model_logs(scenario, nodes, seed, hw)),
    }


async def start_devices(dut, nodes: int, hw: HardwareConfig, device=RtlDevice) -> list:
    """``device``s (:class:`RtlDevice` or a subclass) of every node, bus latency calibrated on
    node 0, link faults off, design reset to cycle 0 (``sim.testbench.ClusterTB.start``)."""
    return await ClusterTB(dut, nodes=nodes, hardware=hw, fmt=FMT, device=device).start()


@cocotb.test()
async def programs_match_model(dut):
    """Every node's host program sees on the RTL exactly what it sees on the golden model."""

    scenario = os.environ["CLUSTER_SCENARIO"]
    nodes, seed = int(os.environ["CLUSTER_NODES"]), int(os.environ["CLUSTER_SEED"])
    hw = HardwareConfig(**json.loads(os.environ["CLUSTER_HW"]))
    want = json.loads(os.environ["CLUSTER_WANT"])
    devs = await start_devices(dut, nodes, hw)
    tasks = [
        cocotb.start_soon(program(devs[i], devs[i].now, i, nodes, seed, role, hw))
        for i, role in programs(scenario, nodes, seed)
    ]
    logs = []
    for t in tasks:
        logs.append(await with_timeout(t, 2_000_000, "ns"))
    for i, (got, w) in enumerate(zip(logs, want, strict=True)):
        compare_logs(json.loads(json.dumps(got)), w, f"node {i}")
    # The debug port reads the SRAM the bulk port dumped, without a clock edge.
    for i, dev in enumerate(devs):
        if scenario == "host_errors":
            continue  # dumps nothing
        if scenario == "rx_memory":
            dumps = [e[2] for e in want[i] if e[0] == "guard"]
            blocks = rx_memory_guards(hw) if dumps else []
        else:
            dumps = [next(e[2] for e in want[i] if e[0] == "R")]
            blocks = [(rm.GRAD_BASE + R_OFF, len(dumps[0]))]
        for (addr, n), dumped in zip(blocks, dumps, strict=True):
            got = await dev.peek(addr, n)
            assert got.tolist() == dumped, (
                f"node {i}: debug port differs from the dump at 0x{addr:08x}"
            )
