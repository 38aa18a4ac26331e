"""cocotb side of ``gradsync bench``'s simulation-speed figures (started by ``gradsync/cmd_bench.py``).

Two tests, each writing a JSON result to ``$GRADSYNC_BENCH_OUT``:

* :func:`idle_exchange` -- figure (b), the cluster with Python idle: each node
  of the 2-node cluster gets, per round, one RX window, ``count`` DMA
  descriptors written into its ring with *one* bulk load and one doorbell,
  and ``gemms`` GEMMs queued in its command FIFO; the host then only awaits
  the interrupt line (RX and the last GEMM's COMPUTE cause).  The same
  program (:func:`idle_program`) runs on the golden model, and the RTL's
  interrupt log must equal the model's.  Every port write and read of the
  run is recorded (:class:`~gradsync.sim.rtl_device.Recorder`) to
  ``$GRADSYNC_BENCH_STIMULUS`` for the raw C++ replay, figure (c).
* :func:`train_profiled` -- the main job's training test
  (``sim/train_cocotb.py``) under ``cProfile`` for the whole test, so plain
  simulator callbacks count too; the profile goes to ``$GRADSYNC_BENCH_PROFILE``.
"""

from __future__ import annotations

import cProfile
import json
import os
import time

import cocotb
import numpy as np

from gradsync.spec import regmap as rm

IRQ_WAIT = rm.Irq.RX | rm.Irq.COMPUTE | rm.Irq.ERROR


async def idle_program(dev, node: int, nodes: int, hw, fmt, plan: dict, now) -> list:
    """Post a long compute + exchange sequence per round, then only await the interrupt.

    Returns ``[(cycle, IRQ_STATUS & IRQ_WAIT), ...]`` of every interrupt served.
    """
    from gradsync.firmware.driver import Driver

    drv = Driver(dev)
    wb = fmt.word_bytes
    await drv.init(hw.gradient_words * wb)
    await dev.write32(rm.offset("IRQ_MASK"), int(IRQ_WAIT))
    half = hw.gradient_words * wb // 2
    m, k, n = plan["gemm"]
    a, b, c = rm.SCRATCH_BASE, rm.SCRATCH_BASE + m * k * wb, rm.SCRATCH_BASE + (m + n) * k * wb
    count, chunk, q = plan["count"], plan["chunk"], 1
    peer = (node + 1) % nodes
    ring = rm.RING_MEM_BASE + q * hw.ring_entries * rm.DESCRIPTOR_BYTES
    log, tail = [], 0
    gemms = min(hw.cmd_fifo_depth, 8)
    for r in range(plan["rounds"]):
        tag = rm.encode_tag(1, r % 64, r)
        await drv.open_window(r % hw.rx_windows, rm.GRAD_BASE + half, rm.GRAD_BASE + half,
                              chunk, tag, count * chunk)  # fmt: skip
        words = []
        for i in range(count):
            d = rm.Descriptor(src_addr=rm.GRAD_BASE + (i * chunk) % half,
                              length=chunk, peer=peer, remote_addr=rm.GRAD_BASE + half,
                              window=r % hw.rx_windows, tag=tag)  # fmt: skip
            words += d.encode()
        first = tail % hw.ring_entries
        await dev.load(ring + first * rm.DESCRIPTOR_BYTES, np.array(words, dtype=np.int64))
        tail += count
        await dev.write32(rm.dma_reg(q, "DOORBELL"), tail)
        for g in range(gemms):
            regs = rm.command_registers(rm.Opcode.GEMM, a, b, c, m, k, n, irq=g == gemms - 1)
            for name, value in regs if g == 0 else regs[:1]:
                await dev.write32(rm.offset(name), value)
            await dev.write32(rm.offset("CMD_LAUNCH"), 1)
        seen = 0
        while seen != rm.Irq.RX | rm.Irq.COMPUTE:
            status = await dev.wait_irq(int(IRQ_WAIT))
            await dev.write32(rm.offset("IRQ_STATUS"), status)
            log.append((now(), status))
            if status & rm.Irq.ERROR:
                raise RuntimeError(f"node {node}: device error in round {r}: {status:#x}")
            if status & rm.Irq.RX:
                done = await dev.read32(rm.offset("RX_DONE_LO"))
                await dev.write32(rm.offset("RX_DONE_LO"), done)
            seen |= status & (rm.Irq.RX | rm.Irq.COMPUTE)
    return log


def model_idle_logs(hw, fmt, plan: dict, nodes: int = 2) -> list:
    """:func:`idle_program` on the golden model: each node's interrupt log and the last cycle."""
    from gradsync.model.cluster import Cluster

    cluster = Cluster(nodes, hw, fmt)
    now = lambda: cluster.sim.now  # noqa: E731
    progs = [(lambda d, i=i: idle_program(d, i, nodes, hw, fmt, plan, now)) for i in range(nodes)]
    run = cluster.run(progs)
    return [[list(e) for e in log] for log in run.results]


async def _reset(dut, rec_put, period_steps: int) -> None:
    from cocotb.triggers import Timer

    rec_put(dut.rst, 1)
    await Timer(3 * period_steps, "step")
    rec_put(dut.rst, 0)


@cocotb.test()
async def idle_exchange(dut):
    """Figure (b): the cluster works on its own while the Python host only awaits interrupts."""
    from cocotb.triggers import RisingEdge, Timer

    from gradsync.sim import rtl_device as rd
    from gradsync.spec.formats import FixedPointFormat
    from gradsync.spec.hardware import HardwareConfig

    env = json.loads(os.environ["GRADSYNC_BENCH_IDLE"])
    hw, fmt = HardwareConfig(**env["hardware"]), FixedPointFormat(**env["format"])
    plan, nodes = env["plan"], env["nodes"]
    rec = rd.Recorder()
    rd.RECORDER = rec
    await RisingEdge(dut.clk)
    await Timer(1, "step")  # act between edges from here on (the replay applies writes there too)
    devs = [rd.RtlDevice(dut, f"n{i}_", hw, fmt, dut.clk, rst=dut.rst) for i in range(nodes)]
    lat = await devs[0].calibrate()
    rec.clock(lat)
    for d in devs:
        d.latency = lat
    await Timer(1, "step")
    await _reset(dut, rd._put, lat.period_steps)
    t0, c0 = time.perf_counter(), devs[0].now()
    tasks = [
        cocotb.start_soon(idle_program(d, i, nodes, hw, fmt, plan, devs[0].now))
        for i, d in enumerate(devs)
    ]
    for t in tasks:
        await t
    wall = time.perf_counter() - t0
    cycles = devs[0].now() - c0
    from cocotb.utils import get_sim_time

    end = get_sim_time("step")
    rd.RECORDER = None
    rec.write(os.environ["GRADSYNC_BENCH_STIMULUS"], env["ports"])
    out = {
        "cycles": cycles,
        "wall_seconds": wall,
        "end_steps": end,
        "period_steps": lat.period_steps,
        "logs": [[list(e) for e in t.result()] for t in tasks],
        "calls": [d.calls for d in devs],
        "events": len(rec.events),
    }
    with open(os.environ["GRADSYNC_BENCH_OUT"], "w") as f:
        json.dump(out, f)


@cocotb.test()
async def train_profiled(dut):
    """The main job's training test under cProfile (every Python frame of the test)."""
    from gradsync.sim import train_cocotb

    body = train_cocotb.train.func  # the coroutine function under cocotb's test decorator
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    try:
        await body(dut)
    finally:
        prof.disable()
    wall = time.perf_counter() - t0
    prof.dump_stats(os.environ["GRADSYNC_BENCH_PROFILE"])
    with open(os.environ["GRADSYNC_BENCH_OUT"], "w") as f:
        json.dump({"wall_seconds": wall}, f)


def _env_config(name: str):
    from gradsync.spec.formats import FixedPointFormat
    from gradsync.spec.hardware import HardwareConfig

    env = json.loads(os.environ[name])
    return env, HardwareConfig(**env["hardware"]), FixedPointFormat(**env["format"])


async def _device(dut, prefix: str, hw, fmt, nodes: int = 1) -> list:
    """Calibrated devices, design reset to cycle 0 (as a training run starts)."""
    from gradsync.sim import rtl_device as rd
    from gradsync.sim.train_cocotb import reset_to_cycle_zero

    devs = [
        rd.RtlDevice(dut, prefix.format(i), hw, fmt, dut.clk, rst=dut.rst) for i in range(nodes)
    ]
    await reset_to_cycle_zero(dut)
    lat = await devs[0].calibrate()
    for d in devs:
        d.latency = lat
    await reset_to_cycle_zero(dut)
    return devs


@cocotb.test()
async def gemm_utilisation(dut):
    """Array figure: PERF_GEMM_CYCLES of each GEMM shape, one command at a time.

    The operands all start at ``SCRATCH_BASE`` (A, B and C may overlap: the
    array's timing does not depend on the data), so 256x256x256 fits a
    65536-word scratchpad.
    """
    env, hw, fmt = _env_config("GRADSYNC_BENCH_GEMM")
    (dev,) = await _device(dut, "", hw, fmt)
    wait = int(rm.Irq.COMPUTE | rm.Irq.ERROR)
    await dev.write32(rm.offset("IRQ_MASK"), wait)
    rows = []
    for m, k, n in env["shapes"]:
        before = await dev.read32(rm.offset("PERF_GEMM_CYCLES"))
        base = rm.SCRATCH_BASE
        for name, value in rm.command_registers(rm.Opcode.GEMM, base, base, base, m, k, n):
            await dev.write32(rm.offset(name), value)
        await dev.write32(rm.offset("CMD_LAUNCH"), 1)
        status = await dev.wait_irq(wait)
        await dev.write32(rm.offset("IRQ_STATUS"), status)
        if status & rm.Irq.ERROR:
            raise RuntimeError(f"GEMM {m}x{k}x{n} raised a device error")
        after = await dev.read32(rm.offset("PERF_GEMM_CYCLES"))
        rows.append({"m": m, "k": k, "n": n, "cycles": after - before})
    with open(os.environ["GRADSYNC_BENCH_OUT"], "w") as f:
        json.dump(rows, f)


@cocotb.test()
async def link_utilisation(dut):
    """Link figure: node 0 sends transfers of each size to node 1, one at a time.

    A transfer of ``S`` bytes is ``ceil(S / chunk)`` descriptors of
    ``chunk = min(S, half the gradient memory)`` bytes from the lower half of
    node 0's gradient memory into an RX window on the upper half of node 1's;
    its cycles run from the doorbell taking effect to the last descriptor's
    ``done_cycle`` (written back by the DMA engine).
    """
    from gradsync.firmware.driver import IRQ_ENABLED, Driver

    env, hw, fmt = _env_config("GRADSYNC_BENCH_LINK")
    devs = await _device(dut, "n{}_", hw, fmt, env["nodes"])
    drvs = [Driver(d) for d in devs]
    half = hw.gradient_words * fmt.word_bytes // 2
    for d in drvs:
        await d.init(hw.gradient_words * fmt.word_bytes)
    q, ring = 1, rm.RING_MEM_BASE + hw.ring_entries * rm.DESCRIPTOR_BYTES
    rows, tail = [], 0
    for w, size in enumerate(env["sizes"]):
        chunk = min(size, half)
        count = -(-size // chunk)
        tag = rm.encode_tag(1, w % 64, w)
        await drvs[1].open_window(w % hw.rx_windows, rm.GRAD_BASE + half, rm.GRAD_BASE + half,
                                  chunk, tag, size)  # fmt: skip
        words = []
        for i in range(count):
            d = rm.Descriptor(src_addr=rm.GRAD_BASE, length=chunk, peer=1,
                              remote_addr=rm.GRAD_BASE + half, window=w % hw.rx_windows,
                              tag=tag, flags=rm.DescFlag.IRQ if i == count - 1 else 0)  # fmt: skip
            words += d.encode()
        first = tail % hw.ring_entries
        await devs[0].load(ring + first * rm.DESCRIPTOR_BYTES, np.array(words, dtype=np.int64))
        tail += count
        await devs[0].write32(rm.dma_reg(q, "DOORBELL"), tail)
        start = devs[0].now()  # the doorbell is visible from this cycle
        status = await devs[0].wait_irq(int(IRQ_ENABLED))  # the last descriptor's DMA_Q1
        await devs[0].write32(rm.offset("IRQ_STATUS"), status)
        if status & rm.Irq.ERROR or not status & rm.Irq.DMA_Q1:
            raise RuntimeError(f"the {size}-byte transfer raised IRQ_STATUS {status:#x}")
        last = (tail - 1) % hw.ring_entries
        status, done = (
            int(x) for x in await devs[0].dump(ring + last * rm.DESCRIPTOR_BYTES + 24, 2)
        )
        if status & 0xFF != rm.ErrorCode.OK:
            raise RuntimeError(f"the {size}-byte transfer ended with status {status:#x}")
        rows.append({"bytes": size, "descriptors": count, "chunk": chunk, "cycles": done - start})
    with open(os.environ["GRADSYNC_BENCH_OUT"], "w") as f:
        json.dump(rows, f)
