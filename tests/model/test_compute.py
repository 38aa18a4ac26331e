"""The modelled compute engine through its registers: GEMM and vector results and cycles, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from gradsync.model import fp
from gradsync.model import numerics as nx
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.formats import BFloat16Format

from .conftest import (
    FMT,
    HW,
    gaddr,
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


# --- the bf16 format ----------------------------------------------------------------------

BF = BFloat16Format()


def _bf16(rng, shape, scale=1.0):
    return BF.quantize(rng.standard_normal(shape) * scale).astype(np.int64)


@pytest.mark.parametrize(
    ("shape", "trans", "to_grad"),
    [
        ((16, 64, 32), (0, 0), False),  # forward: act[b, in] @ W[in, out] -> bf16 activations
        ((64, 16, 32), (1, 0), True),  # dW = act^T @ dZ -> fp32 in the gradient SRAM
        ((16, 32, 64), (0, 1), False),  # dA = dZ @ W^T -> bf16
        ((13, 5, 19), (1, 1), True),
    ],
)
def test_bf16_gemm_command_bits_cycles_and_float64_bound(shape, trans, to_grad, rng):
    m, k, n = shape
    a = _bf16(rng, (k, m) if trans[0] else (m, k))
    b = _bf16(rng, (n, k) if trans[1] else (k, n), 0.1)
    c_addr = gaddr(0, BF) if to_grad else saddr(3000, BF)
    out = {}

    async def prog(dev):
        await setup_queues(dev)
        await dev.load(saddr(0, BF), a.reshape(-1))
        await dev.load(saddr(1500, BF), b.reshape(-1))
        await launch(dev, rm.Opcode.GEMM, saddr(0, BF), saddr(1500, BF), c_addr, m, k, n,
                     trans_a=trans[0], trans_b=trans[1])  # fmt: skip
        out["launched"] = dev.sim.now
        await dev.wait_irq(int(rm.Irq.COMPUTE))
        out["c"] = await dev.dump(c_addr, m * n * (2 if to_grad else 1))

    cl = run_programs([prog], fmt=BF)
    got = BF.join_fp32(out["c"]) if to_grad else out["c"]
    want32 = fp.gemm_bf16(a, b, trans_a=bool(trans[0]), trans_b=bool(trans[1])).reshape(-1)
    np.testing.assert_array_equal(got, want32 if to_grad else fp.fp32_to_bf16(want32))
    # against float64 NumPy: gamma(K-1) for the fp32 sums, half a bf16 ulp more when rounded
    va = BF.dequantize(a).T if trans[0] else BF.dequantize(a)
    vb = BF.dequantize(b).T if trans[1] else BF.dequantize(b)
    exact = (va @ vb).reshape(-1)
    scale = (np.abs(va) @ np.abs(vb)).reshape(-1)
    value = BF.dequantize_fp32(got) if to_grad else BF.dequantize(got)
    bound = (k - 1) * 2.0**-24 * scale * 1.0001 + (0 if to_grad else 2.0**-8 * np.abs(exact))
    assert np.all(np.abs(value - exact) <= bound * 1.0001)
    ((start, end, _, _),) = intervals(cl.devices[0], rm.Engine.COMPUTE)
    assert start == out["launched"]
    assert end - start == tm.gemm_cycles(m, k, n, HW, BF) == tm.gemm_cycles(m, k, n, HW) + 1


def test_bf16_sgd_on_fp32_master_weights_then_bf16_working_copy(rng):
    """W32 -= lr * G32 in the gradient SRAM, then SCALE by 1.0 writes the bf16 working copy
    to the scratchpad (fp32 -> bf16, nearest even); both against NumPy float32."""
    n = 77
    w = (rng.standard_normal(n) * 0.1).astype(np.float32)
    g = (rng.standard_normal(n) * 0.01).astype(np.float32)
    lr = np.float32(0.05)
    one = int(np.float32(1.0).view(np.uint32))
    out = {}

    async def prog(dev):
        await setup_queues(dev)
        await dev.load(gaddr(0, BF), BF.split_fp32(w.view(np.uint32)))
        await dev.load(gaddr(400, BF), BF.split_fp32(g.view(np.uint32)))
        await launch(dev, rm.Opcode.SGD, gaddr(0, BF), gaddr(400, BF), gaddr(0, BF), 7, 0, 11,
                     arg=int(lr.view(np.uint32)))  # fmt: skip
        await dev.wait_irq(int(rm.Irq.COMPUTE))
        await dev.write32(rm.offset("IRQ_STATUS"), int(rm.Irq.COMPUTE))
        await launch(dev, rm.Opcode.SCALE, gaddr(0, BF), 0, saddr(100, BF), 7, 0, 11, arg=one)
        await dev.wait_irq(int(rm.Irq.COMPUTE))
        out["w32"] = BF.join_fp32(await dev.dump(gaddr(0, BF), 2 * n))
        out["w16"] = await dev.dump(saddr(100, BF), n)

    cl = run_programs([prog], fmt=BF)
    want = w - lr * g  # NumPy float32: the product rounded, then the difference
    np.testing.assert_array_equal(out["w32"], want.view(np.uint32))
    np.testing.assert_array_equal(out["w16"], BF.quantize(want.astype(np.float64)))
    spans = [end - start for start, end, _, _ in intervals(cl.devices[0], rm.Engine.VECTOR)]
    assert spans == [tm.vector_cycles("sgd", n, HW), tm.vector_cycles("scale", n, HW)]


def test_bf16_relu_and_relu_backward_on_bf16_activations(rng):
    n = 40
    x = _bf16(rng, n)
    x[:4] = [0x8000, 0x0001, 0x7FC1, 0xFF80]  # -0, subnormal, NaN, -inf
    dz = _bf16(rng, n)
    out = {}

    async def prog(dev):
        await setup_queues(dev)
        await dev.load(saddr(0, BF), x)
        await dev.load(saddr(100, BF), dz)
        await launch(dev, rm.Opcode.RELU, saddr(0, BF), 0, saddr(200, BF), 4, 0, 10)
        await dev.wait_irq(int(rm.Irq.COMPUTE))
        await dev.write32(rm.offset("IRQ_STATUS"), int(rm.Irq.COMPUTE))
        await launch(dev, rm.Opcode.RELU_BWD, saddr(100, BF), saddr(0, BF), saddr(300, BF),
                     4, 0, 10)  # fmt: skip
        await dev.wait_irq(int(rm.Irq.COMPUTE))
        out["relu"] = await dev.dump(saddr(200, BF), n)
        out["bwd"] = await dev.dump(saddr(300, BF), n)

    run_programs([prog], fmt=BF)
    v = BF.dequantize(x)
    positive = (v > 0) | np.isnan(v)  # the device's rule: sign clear and not zero
    want_relu = np.where(positive, np.where(np.isnan(v), 0x7FC0, x), 0)
    assert out["relu"].tolist() == want_relu.tolist()
    assert out["bwd"].tolist() == np.where(positive, dz, 0).tolist()  # exact: a bf16 passes


@pytest.mark.parametrize(
    ("a", "b", "c", "k"),
    [
        (gaddr(0, BF), saddr(0, BF), saddr(500, BF), 4),  # GEMM operand in the gradient SRAM
        (saddr(0, BF), saddr(0, BF), gaddr(1, BF), 4),  # fp32 element not 4-byte aligned
        (
            saddr(0, BF),
            saddr(0, BF),
            gaddr(HW.gradient_words - 30, BF),
            4,
        ),  # 32 words from 30 before the end
    ],
)
def test_bf16_gemm_refusals(a, b, c, k):
    out = {}

    async def prog(dev):
        await setup_queues(dev)
        await launch(dev, rm.Opcode.GEMM, a, b, c, 4, k, 4)
        await dev.wait_irq(int(rm.Irq.ERROR))
        out["err"] = await dev.read32(rm.offset("ERR_CODE"))

    run_programs([prog], fmt=BF)
    assert rm.reg("ERR_CODE").field("code").get(out["err"]) == rm.ErrorCode.CMD_OUT_OF_BOUNDS
