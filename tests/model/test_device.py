"""The modelled node through its registers: access types, trace pop port, deadlock reports.

Engine by engine: ``test_compute.py``, ``test_dma.py``, ``test_nic.py``, ``test_csr.py``."""

from __future__ import annotations

import pytest

from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm

from .conftest import (
    FMT,
    HW,
    gaddr,
    launch,
    open_window,
    run_programs,
    saddr,
)


def test_registers_access_types_and_trace_pop_port():
    out = {}

    async def prog(dev):
        await dev.write32(rm.offset("ID"), 0)  # RO: ignored
        out["id"] = await dev.read32(rm.offset("ID"))
        out["unmapped"] = await dev.read32(0xFFC)
        out["launch"] = await dev.read32(rm.offset("CMD_LAUNCH"))  # WO reads 0
        await dev.write32(rm.offset("IRQ_MASK"), int(rm.Irq.COMPUTE))
        await launch(
            dev, rm.Opcode.RELU, saddr(0), 0, saddr(0), 1, 0, 8, tag=rm.encode_tag(3, 2, 1)
        )
        await dev.wait_irq(int(rm.Irq.COMPUTE))
        await dev.write32(rm.offset("IRQ_STATUS"), 0)  # W1C with 0: nothing cleared
        out["status_kept"] = await dev.read32(rm.offset("IRQ_STATUS"))
        await dev.write32(rm.offset("IRQ_STATUS"), int(rm.Irq.COMPUTE))
        out["status_cleared"] = await dev.read32(rm.offset("IRQ_STATUS"))
        out["count"] = await dev.read32(rm.offset("TRACE_COUNT"))
        out["words"] = [await dev.read32(rm.offset("TRACE_DATA")) for _ in range(8)]
        out["count_after"] = await dev.read32(rm.offset("TRACE_COUNT"))
        lo = await dev.read32(rm.offset("CYCLE_LO"))
        hi = await dev.read32(rm.offset("CYCLE_HI"))
        out["cycle"] = (hi << 32) | lo
        out["cycle_now"] = dev.sim.now

    run_programs([prog], nodes=1)
    assert out["id"] == rm.DEVICE_ID and out["unmapped"] == 0 and out["launch"] == 0
    assert out["status_kept"] == int(rm.Irq.COMPUTE) and out["status_cleared"] == 0
    assert out["count"] == 2 and out["count_after"] == 0
    start = rm.TraceRecord.decode(out["words"][:4])
    end = rm.TraceRecord.decode(out["words"][4:])
    assert (start.engine, start.event, end.event) == (
        rm.Engine.VECTOR,
        rm.TraceEvent.START,
        rm.TraceEvent.END,
    )
    assert rm.decode_tag(start.tag) == (3, 2, 1)
    assert end.cycle - start.cycle == tm.vector_cycles("relu", 8, HW)
    assert (
        out["cycle"] == out["cycle_now"] - HW.host_read_cycles * 1
        or out["cycle"] < out["cycle_now"]
    )


def test_stuck_firmware_is_reported_not_hung():
    from gradsync.model.events import SimulationError

    async def waits_forever(dev):
        await dev.write32(rm.offset("IRQ_MASK"), int(rm.Irq.RX))
        await open_window(dev, 2, gaddr(0), gaddr(0), 64, rm.encode_tag(3, 1, 7), 64)
        await dev.wait_irq(int(rm.Irq.RX))

    with pytest.raises(
        SimulationError,
        match=r"deadlock at cycle \d+: tasks \['node0'\].*node 0: nic.rx waits for tags L3c1s7",
    ):
        run_programs([waits_forever], nodes=1)

    async def spins(dev):
        while True:
            await dev.read32(rm.offset("ID"))

    with pytest.raises(SimulationError, match="cycle budget of 1000 exhausted"):
        from gradsync.model.cluster import Cluster

        Cluster(1, HW, FMT).run([spins], max_cycles=1000)
