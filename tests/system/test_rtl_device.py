"""sim/rtl_device.py against model/device.py: one host program, both backends, every value and cycle.

The program (:func:`host_program`) uses only the device protocol: MMIO,
interrupts and bulk transfers, with random numbers of register reads between
a command launch and the wait so that reads, writes and interrupt wake-ups
land in every phase of a running command. It runs on a golden-model node and
on the RTL compute node (``hw/compute_node.py``); every value it observes,
the cycle of every return and the hardware trace must be identical.
"""

from __future__ import annotations

import json
import os

import cocotb
import numpy as np
import pytest

from gradsync.spec import regmap as rm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig

SMALL = dict(scratchpad_words=4096, gradient_words=2048, trace_records=256, cmd_fifo_depth=4)
HW = HardwareConfig(array_rows=8, array_cols=8, vector_lanes=8, **SMALL)
FMT = FixedPointFormat()


async def host_program(dev, now, seed: int) -> list:
    """Exercise the protocol; return everything observed, with the cycle of each return."""
    rng = np.random.default_rng(seed)
    wb = FMT.word_bytes
    log = []

    def note(what, value=None):
        log.append((what, now(), value if not isinstance(value, np.ndarray) else value.tolist()))

    await dev.write32(rm.offset("IRQ_MASK"), int(rm.Irq.COMPUTE | rm.Irq.ERROR))
    note("mask")
    note("id", await dev.read32(rm.offset("ID")))
    note("cycle", await dev.read32(rm.offset("CYCLE_LO")))
    for i in range(12):
        m, k, n = (int(x) for x in rng.integers(1, 20, size=3))
        a = rng.integers(-300, 300, size=m * k)
        b = rng.integers(-300, 300, size=k * n)
        # the compute node's bulk port writes no HOST trace records (the full node's does)
        await dev.write32(rm.offset("CONTROL"), 0)
        await dev.load(rm.SCRATCH_BASE, a)
        await dev.load(rm.SCRATCH_BASE + 512 * wb, b)
        await dev.write32(rm.offset("CONTROL"), 1)
        note("loaded")
        launches = int(rng.integers(1, 4))
        for j in range(launches):
            op = rm.Opcode.GEMM if j % 2 == 0 else rm.Opcode.RELU
            word = rm.reg("CMD_OPCODE").pack(
                opcode=int(op), trans_a=0, trans_b=0, irq=1, kind=int(rm.Kind.FWD)
            )
            for name, value in (
                ("CMD_OPCODE", word),
                ("CMD_A", rm.SCRATCH_BASE),
                ("CMD_B", rm.SCRATCH_BASE + 512 * wb),
                ("CMD_C", rm.GRAD_BASE),
                ("CMD_M", m),
                ("CMD_K", k),
                ("CMD_N", n),
                ("CMD_TAG", rm.encode_tag(2, j, i)),
            ):
                await dev.write32(rm.offset(name), value)
            await dev.write32(rm.offset("CMD_LAUNCH"), 1)
            note("launched")
        for _ in range(int(rng.integers(0, 30))):
            note("done?", await dev.read32(rm.offset("COMPUTE_DONE")))
        seen = 0
        while seen < launches:
            status = await dev.wait_irq(int(rm.Irq.COMPUTE | rm.Irq.ERROR))
            note("irq", status)
            await dev.write32(rm.offset("IRQ_STATUS"), status)
            done = await dev.read32(rm.offset("COMPUTE_DONE"))
            note("done", done)
            seen = done - sum(1 for w, *_ in log if w == "launched") + launches
        await dev.write32(rm.offset("CONTROL"), 0)
        note("result", await dev.dump(rm.GRAD_BASE, m * n))
        await dev.write32(rm.offset("CONTROL"), 1)
        note("trace_count", await dev.read32(rm.offset("TRACE_COUNT")))
    count = await dev.read32(rm.offset("TRACE_COUNT"))
    for _ in range(count):
        words = [await dev.read32(rm.offset("TRACE_DATA")) for _ in range(4)]
        note("record", list(rm.TraceRecord.decode(words).__dict__.values()))
    return log


def model_log(seed: int) -> list:
    from gradsync.model.cluster import Cluster

    cluster = Cluster(1, HW, FMT)
    dev = cluster.devices[0]
    run = cluster.run([lambda d: host_program(d, lambda: cluster.sim.now, seed)])
    del dev
    return run.results[0]


async def read_the_cycle_at_rising_edges(dev) -> None:
    """What a progress reporter or a watchdog does: read the cycle from a timer that fires in
    a rising edge's time step, before that step's evaluation (a stale read there must not
    leak into the device's later calls)."""
    from cocotb.triggers import Timer

    while True:
        await Timer(7 * dev.latency.period_steps, "step")  # started on an edge: lands on one
        dev.now()


@cocotb.test()
async def protocol_matches_model(dut):
    """The host program observes the same values in the same cycles on the RTL as on the model."""
    from gradsync.sim.rtl_device import RtlDevice
    from gradsync.sim.train_cocotb import reset_to_cycle_zero

    seed = int(os.environ["PROTO_SEED"])
    bus = os.environ["PROTO_BUS"]
    dev = RtlDevice(dut, "", HW, FMT, dut.clk, rst=dut.rst, post_writes=bus == "posted")
    if bus == "cocotbext":
        assert dev.axil is not None  # switches the device to cocotbext-axi's bus models
    await reset_to_cycle_zero(dut)
    await dev.calibrate()
    await reset_to_cycle_zero(dut)
    if bus != "cocotbext":
        cocotb.start_soon(read_the_cycle_at_rising_edges(dev))
    # with posted writes the device's time runs ahead of the simulator's
    log = await host_program(dev, dev.device_now if bus == "posted" else dev.now, seed)
    await dev.settle()
    want = json.loads(os.environ["PROTO_WANT"])
    got = json.loads(json.dumps(log))
    for i, (g, w) in enumerate(zip(got, want, strict=False)):
        assert g == w, f"entry {i}: RTL {g} != model {w} (previous {got[max(0, i - 3) : i]})"
    assert len(got) == len(want), (len(got), len(want))
    assert sum(1 for e in got if e[0] == "record") >= 24


@pytest.mark.rtl
@pytest.mark.parametrize(
    ("seed", "bus"),
    [(1, "lean"), (2, "lean"), (1, "cocotbext"), (1, "posted")],
    ids=["1", "2", "1-cocotbext", "1-posted"],
)
def test_rtl_device_protocol_matches_model(seed, bus, tmp_path):
    """Both host buses of RtlDevice: the lean driver (default, and with posted writes, whose
    calls must still return, in the device's time, in the model's cycles) and cocotbext-axi's
    models; on the lean bus a timer reads the cycle counter in rising edges' time steps."""
    from gradsync.hw.compute_node import ComputeNode
    from gradsync.sim.build import build_component, run_cocotb

    want = model_log(seed)
    assert any(e[0] == "irq" for e in want)
    model = build_component(ComputeNode(HW, FMT), "compute_node_8x8")
    run_cocotb(
        model,
        "tests.system.test_rtl_device",
        test_dir=tmp_path,
        extra_env={"PROTO_SEED": str(seed), "PROTO_WANT": json.dumps(want), "PROTO_BUS": bus},
    )
