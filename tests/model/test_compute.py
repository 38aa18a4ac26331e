"""The modelled compute engine through its registers: GEMM and vector results and cycles, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from gradsync.model import numerics as nx
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm

from .conftest import (
    FMT,
    HW,
    intervals,
    launch,
    run_programs,
    saddr,
    setup_queues,
)


@pytest.mark.parametrize("shape", [(8, 8, 8), (13, 5, 19), (1, 40, 3), (33, 17, 9)])
@pytest.mark.parametrize("trans", [(0, 0), (1, 0), (0, 1)])
def test_gemm_command_bits_and_cycles(shape, trans, rng):
    m, k, n = shape
    a = rng.integers(FMT.qmin, FMT.qmax + 1, (k, m) if trans[0] else (m, k))
    b = rng.integers(FMT.qmin, FMT.qmax + 1, (n, k) if trans[1] else (k, n))
    a.reshape(-1)[:2] = [FMT.qmin, FMT.qmax]
    out = {}

    async def prog(dev):
        await setup_queues(dev)
        await dev.load(saddr(0), a.reshape(-1))
        await dev.load(saddr(1024), b.reshape(-1))
        await launch(
            dev,
            rm.Opcode.GEMM,
            saddr(0),
            saddr(1024),
            saddr(2048),
            m,
            k,
            n,
            arg=1,
            trans_a=trans[0],
            trans_b=trans[1],
        )
        out["launched"] = dev.sim.now
        status = await dev.wait_irq(int(rm.Irq.COMPUTE))
        out["status"] = status
        out["c"] = await dev.dump(saddr(2048), m * n)
        out["done"] = await dev.read32(rm.offset("COMPUTE_DONE"))

    cl = run_programs([prog])
    want = nx.gemm(a, b, FMT, trans_a=bool(trans[0]), trans_b=bool(trans[1]), extra_shift=1)
    assert np.array_equal(out["c"].reshape(m, n), want)
    ((start, end, _, macs),) = intervals(cl.devices[0], rm.Engine.COMPUTE)
    assert start == out["launched"]
    assert end - start == tm.gemm_cycles(m, k, n, HW)
    assert macs == m * k * n and out["done"] == 1 and out["status"] == int(rm.Irq.COMPUTE)


@pytest.mark.parametrize("op", [rm.Opcode.RELU, rm.Opcode.RELU_BWD, rm.Opcode.SCALE, rm.Opcode.SGD])
def test_vector_commands(op, rng):
    n = 77
    x = rng.integers(FMT.qmin, FMT.qmax + 1, n)
    y = rng.integers(FMT.qmin, FMT.qmax + 1, n)
    x[:3] = [FMT.qmin, FMT.qmax, 0]
    arg = -700 if op is rm.Opcode.SCALE else 300
    out = {}

    async def prog(dev):
        await setup_queues(dev)
        await dev.load(saddr(0), x)
        await dev.load(saddr(100), y)
        await launch(dev, op, saddr(0), saddr(100), saddr(200), 7, 0, 11, arg=arg)
        await dev.wait_irq(int(rm.Irq.COMPUTE))
        out["c"] = await dev.dump(saddr(200), n)

    cl = run_programs([prog])
    ref = {
        rm.Opcode.RELU: lambda: np.maximum(x, 0),
        rm.Opcode.RELU_BWD: lambda: np.where(y > 0, x, 0),
        rm.Opcode.SCALE: lambda: nx.scale(x, arg, FMT),
        rm.Opcode.SGD: lambda: nx.sgd_update(x, y, arg, FMT),
    }[op]()
    assert np.array_equal(out["c"], ref)
    ((start, end, _, _),) = intervals(cl.devices[0], rm.Engine.VECTOR)
    assert end - start == tm.vector_cycles(rm.VECTOR_OPCODES[op], n, HW)


@pytest.mark.parametrize(
    "m, k, n, a_word, code",
    [
        (0, 4, 4, 0, rm.ErrorCode.CMD_ZERO_DIM),
        (4, 4, 0, 0, rm.ErrorCode.CMD_ZERO_DIM),
        (64, 64, 4, HW.scratchpad_words - 100, rm.ErrorCode.CMD_OUT_OF_BOUNDS),
    ],
)
def test_malformed_compute_command_is_refused_without_writes(m, k, n, a_word, code):
    out = {}

    async def prog(dev):
        await setup_queues(dev)
        await dev.load(saddr(3000), np.full(64, 77))
        await launch(dev, rm.Opcode.GEMM, saddr(a_word), saddr(0), saddr(3000), m, k, n)
        out["status"] = await dev.wait_irq(int(rm.Irq.ERROR))
        out["err"] = await dev.read32(rm.offset("ERR_CODE"))
        out["done"] = await dev.read32(rm.offset("COMPUTE_DONE"))
        out["c"] = await dev.dump(saddr(3000), 64)

    run_programs([prog])
    assert out["status"] & rm.Irq.ERROR
    assert rm.reg("ERR_CODE").field("code").get(out["err"]) == code
    assert out["done"] == 1
    assert (out["c"] == 77).all()


def test_refused_command_timing_and_driver_error_names_node_engine_code():
    from gradsync.firmware.driver import DeviceError, Driver

    out = {}

    async def prog(dev):
        drv = Driver(dev)
        await drv.init(1024)
        t0 = dev.sim.now
        await drv.launch(rm.Opcode.GEMM, saddr(0), saddr(0), saddr(0), 0, 1, 1)
        out["launched"] = dev.sim.now
        try:
            await drv.wait_compute(1)
        except DeviceError as exc:
            out["error"] = str(exc)
        out["t0"] = t0

    cl = run_programs([prog], nodes=1)
    (err,) = [r for r in cl.devices[0].trace if r.event == rm.TraceEvent.ERROR]
    assert err.cycle == out["launched"] + tm.refused_command_cycles()
    assert err.aux == rm.ErrorCode.CMD_ZERO_DIM
    assert out["error"].startswith("node 0: compute reported CMD_ZERO_DIM")
