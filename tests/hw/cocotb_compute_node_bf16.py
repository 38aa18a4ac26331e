"""cocotb tests of the bf16 compute node (hw/compute_node.py with ``BFloat16Format``) under
Verilator, against the golden model bit for bit and cycle for cycle.

The testbench is :class:`tests.hw.cocotb_compute_node.TB` (environment from
``node_env``). Scratchpad elements are bf16 words; gradient-SRAM elements are
fp32 values in two 16-bit words, low half first. Results are compared with
``gradsync.model.fp`` (whose GEMM is checked against float64 NumPy) and, for the
training GEMMs, with a float64 NumPy GEMM of the same bf16 inputs directly;
command durations (trace END - START) with ``gradsync.spec.timing`` in bf16.
"""

from __future__ import annotations

import json
import os
import time

import cocotb
import numpy as np

from gradsync.model import fp as mfp
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.formats import BFloat16Format, format_from_register
from tests.hw.cocotb_compute_node import GUARD, TB

BF = BFloat16Format()


def bf16_words(rng, shape, scale=1.0):
    return BF.quantize(rng.standard_normal(shape) * scale).astype(np.int64)


async def run(tb: TB, op, a, b, c, m, k, n, **kw) -> int:
    """Launch one command, wait for its IRQ; return its trace duration (END - START)."""
    await tb.launch(op, a, b, c, m, k, n, **kw)
    irq_cycle = await tb.wait_irq()
    await tb.write("IRQ_STATUS", 0xFFFF_FFFF)
    recs = await tb.trace_records()
    assert [r.event for r in recs] == [rm.TraceEvent.START, rm.TraceEvent.END], recs
    if not tb.pauses:
        assert irq_cycle == recs[1].cycle
    return recs[1].cycle - recs[0].cycle


async def check_region(tb: TB, region: str, word: int, n_words: int) -> np.ndarray:
    """Dump ``n_words`` at ``word`` with 8 guard words either side; return the inside."""
    got = await tb.dump(tb.addr(region, word - 8), n_words + 16)
    assert (got[:8] == GUARD).all() and (got[8 + n_words :] == GUARD).all(), "guard clobbered"
    return got[8 : 8 + n_words]


def training_gemms(batch: int, layers: tuple[int, ...]):
    """(name, m, k, n, trans_a, trans_b, to_grad) of one training step of ``layers``."""
    out = []
    for n_in, n_out in zip(layers[:-1], layers[1:], strict=True):
        out.append(("fwd", batch, n_in, n_out, 0, 0, False))  # act @ W -> bf16 activations
        out.append(("dW", n_in, batch, n_out, 1, 0, True))  # act^T @ dZ -> fp32 gradient
        out.append(("dA", batch, n_out, n_in, 0, 1, False))  # dZ @ W^T -> bf16
    return out


@cocotb.test()
async def bf16_training_gemms(dut):
    """The GEMMs of a training step of 64-32-10 at local batch 32 (2 nodes of the default run)
    and random shapes: bits equal model.fp, cycles equal gemm_cycles in bf16 (fixed + 1), and
    the fp32 results within gamma(K-1) of a float64 NumPy GEMM of the same inputs."""
    tb = TB(dut)
    await tb.cycle_reset()
    hw = tb.hw
    assert isinstance(tb.fmt, BFloat16Format)
    assert format_from_register(await tb.read("HW_FORMAT")) == BF
    await tb.write("IRQ_MASK", rm.Irq.COMPUTE | rm.Irq.ERROR)
    rng = np.random.default_rng(tb.seed)
    shapes = training_gemms(32, (64, 32, 10)) + [("util", 32, 64, 16, 0, 0, True)]
    R, C = hw.array_rows, hw.array_cols
    for i in range(tb.gemms):
        m, k, n = (int(x) for x in rng.integers(1, 3 * max(R, C), size=3))
        ta, tb_ = (int(x) for x in rng.integers(0, 2, size=2))
        shapes.append(("random", m, k, n, ta, tb_, i % 2 == 0))
    worst = 0.0
    for name, m, k, n, ta, tb_, to_grad in shapes:
        a = bf16_words(rng, (k, m) if ta else (m, k))
        b = bf16_words(rng, (n, k) if tb_ else (k, n), 0.1)
        b[0, 0] = 0x7F80 if name == "random" and m * n > 40 else b[0, 0]  # an inf now and then
        a_w, b_w = 16, 16 + a.size + 8
        per = 2 if to_grad else 1
        region, c_w = ("grad", 16) if to_grad else ("scratch", b_w + b.size + 16)
        await tb.load(tb.addr("scratch", a_w), a.reshape(-1))
        await tb.load(tb.addr("scratch", b_w), b.reshape(-1))
        await tb.load(tb.addr(region, c_w - 8), np.full(m * n * per + 16, GUARD))
        cycles = await run(tb, rm.Opcode.GEMM, tb.addr("scratch", a_w), tb.addr("scratch", b_w),
                           tb.addr(region, c_w), m, k, n, trans_a=ta, trans_b=tb_)  # fmt: skip
        assert cycles == tm.gemm_cycles(m, k, n, hw, BF) == tm.gemm_cycles(m, k, n, hw) + 1, (
            name, m, k, n, cycles)  # fmt: skip
        if name == "util":  # the figure: 32x64x16 on the array, from the RTL trace
            use = m * k * n / (hw.array_rows * hw.array_cols * cycles)
            dut._log.info(f"32x64x16 on {R}x{C}: {cycles} cycles, utilisation {use:.4f}")
            assert (R, C) != (8, 8) or (cycles, round(use, 4)) == (539, 0.9499)
        got = await check_region(tb, region, c_w, m * n * per)
        want = mfp.gemm_bf16(a, b, trans_a=bool(ta), trans_b=bool(tb_)).reshape(-1)
        res = BF.join_fp32(got) if to_grad else got
        want = want if to_grad else mfp.fp32_to_bf16(want)
        bad = np.flatnonzero(res != want)
        assert not len(bad), f"{name} GEMM {m}x{k}x{n} ta={ta} tb={tb_}: {len(bad)} differ"
        if to_grad and name != "random":  # the independent reference: float64 NumPy
            va = BF.dequantize(a).T if ta else BF.dequantize(a)
            vb = BF.dequantize(b).T if tb_ else BF.dequantize(b)
            err = np.abs(BF.dequantize_fp32(res) - (va @ vb).reshape(-1))
            bound = (k - 1) * 2.0**-24 * (np.abs(va) @ np.abs(vb)).reshape(-1)
            assert np.all(err <= bound * (1 + 2.0**-20)), name
            worst = max(worst, float(np.max(err / np.where(bound > 0, bound, 1))))
    dut._log.info(f"fp32 GEMM error vs float64, worst fraction of gamma(K-1): {worst:.3f}")
    assert await tb.read("ERR_COUNT") == 0


def vector_reference(name: str, x, y, arg: int) -> np.ndarray:
    """fp32 words of a vector op, from model.fp."""
    if name == "relu":
        return mfp.relu_fp32(x)
    if name == "relu_bwd":
        return mfp.relu_backward_fp32(x, y)
    if name == "scale":
        return mfp.scale_fp32(x, arg)
    return mfp.sgd_fp32(x, y, arg)


#: (x bank, y bank, c bank): bf16 activations, fp32 master weights and gradients, conversions.
VECTOR_RUNS = [
    (rm.Opcode.RELU, ("scratch", None, "scratch"), 0),
    (rm.Opcode.RELU_BWD, ("scratch", "scratch", "scratch"), 0),
    (rm.Opcode.SCALE, ("grad", None, "grad"), 0x3D000000),  # gradient scaling by 1/32, fp32
    (rm.Opcode.SGD, ("grad", "grad", "grad"), 0x3CA3D70A),  # W32 -= lr * G32, lr = 0.02
    (rm.Opcode.SCALE, ("grad", None, "scratch"), 0x3F800000),  # fp32 -> bf16 working copy
    (rm.Opcode.SCALE, ("scratch", None, "grad"), 0x3F800000),  # bf16 -> fp32
    (rm.Opcode.RELU, ("grad", None, "grad"), 0),
]


@cocotb.test()
async def bf16_vector_ops(dut):
    """relu, relu', scale, SGD and the conversions, between the banks, on lengths that leave
    partial beats: bits equal model.fp, cycles equal vector_cycles."""
    tb = TB(dut)
    await tb.cycle_reset()
    hw = tb.hw
    await tb.write("IRQ_MASK", rm.Irq.COMPUTE | rm.Irq.ERROR)
    rng = np.random.default_rng(tb.seed + 1)
    specials32 = np.array([0, 0x80000000, 0x00000001, 0x7F800000, 0xFF800000, 0x7FC00001,
                           0x7F7FFFFF, 0x00800000], dtype=np.uint32)  # fmt: skip
    for rep in range(2):
        for op, banks, arg in VECTOR_RUNS:
            m, n = int(rng.integers(1, 9)), int(rng.integers(1, 3 * hw.vector_lanes + 2))
            size = m * n
            words32 = {}
            for role, bank, word in zip("xy", banks[:2], (64, 1024), strict=True):
                if bank is None:
                    continue
                values = rng.standard_normal(size) * 2.0 ** rng.integers(-6, 3, size)
                if op is rm.Opcode.SGD and role == "y":  # lr * g ~ w: the product's rounding shows
                    values = values * 50.0
                w32 = BF.quantize_fp32(values)
                w32[rng.random(size) < 0.1] = rng.choice(specials32)
                if bank == "grad":
                    words32[role] = w32
                    await tb.load(tb.addr(bank, word), BF.split_fp32(w32))
                else:
                    w16 = mfp.fp32_to_bf16(w32).astype(np.int64)
                    words32[role] = mfp.bf16_to_fp32(w16)
                    await tb.load(tb.addr(bank, word), w16)
            per = 2 if banks[2] == "grad" else 1
            c_w = 2048
            await tb.load(tb.addr(banks[2], c_w - 8), np.full(size * per + 16, GUARD))
            b_addr = tb.addr(banks[1], 1024) if banks[1] else 0
            cycles = await run(tb, op, tb.addr(banks[0], 64), b_addr, tb.addr(banks[2], c_w),
                               m, 0, n, arg=arg, kind=rm.Kind.UPDATE)  # fmt: skip
            name = rm.VECTOR_OPCODES[op]
            assert cycles == tm.vector_cycles(name, size, hw), (name, size, cycles)
            got = await check_region(tb, banks[2], c_w, size * per)
            want = vector_reference(name, words32["x"], words32.get("y"), arg)
            res = BF.join_fp32(got) if per == 2 else got
            want = want if per == 2 else mfp.fp32_to_bf16(want)
            bad = np.flatnonzero(res != want)
            assert not len(bad), f"{name} {banks} rep {rep}: {len(bad)} of {size} differ"
    assert await tb.read("ERR_COUNT") == 0


@cocotb.test()
async def bf16_refusals(dut):
    """GEMM operands outside the scratchpad and misaligned or overlong fp32 ranges are refused
    with CMD_OUT_OF_BOUNDS, nothing written; K = 600 (> fixed point's 511) runs."""
    tb = TB(dut)
    await tb.cycle_reset()
    hw = tb.hw
    await tb.write("IRQ_MASK", rm.Irq.ERROR)
    a, b = tb.addr("scratch", 0), tb.addr("scratch", 1024)
    guard_at = tb.addr("grad", 64)
    cases = [
        (tb.addr("grad", 0), b, tb.addr("grad", 72), 4, 4, 4),
        (a, tb.addr("grad", 0), tb.addr("grad", 72), 4, 4, 4),
        (a, b, tb.addr("grad", 73), 4, 4, 4),
        (a, b, tb.addr("grad", hw.gradient_words - 30), 4, 4, 4),
    ]
    await tb.load(guard_at, np.full(64, GUARD))
    for i, (pa, pb, pc, m, k, n) in enumerate(cases):
        await tb.launch(rm.Opcode.GEMM, pa, pb, pc, m, k, n, tag=0x500 + i, irq=0)
        await tb.wait_irq()
        err = await tb.read("ERR_CODE")
        assert rm.reg("ERR_CODE").field("code").get(err) == rm.ErrorCode.CMD_OUT_OF_BOUNDS, i
        await tb.write("IRQ_STATUS", 0xFFFF_FFFF)
        assert (await tb.dump(guard_at, 64) == GUARD).all(), f"case {i} wrote memory"
    await tb.trace_records()  # drain the ERROR records
    await tb.write("IRQ_MASK", rm.Irq.COMPUTE)
    x = bf16_words(np.random.default_rng(5), 600)
    await tb.load(a, x)
    cycles = await run(tb, rm.Opcode.GEMM, a, a, tb.addr("grad", 0), 1, 600, 1)
    assert cycles == tm.gemm_cycles(1, 600, 1, hw, BF)
    got = BF.join_fp32(await tb.dump(tb.addr("grad", 0), 2))
    assert got.tolist() == mfp.gemm_bf16(x[None, :], x[:, None]).reshape(-1).tolist()


@cocotb.test(skip=os.environ.get("NODE_BENCH") is None)
async def bf16_gemm_throughput(dut):
    """Benchmark (as ``cocotb_compute_node.gemm_throughput``): back-to-back bf16 GEMMs of
    ``NODE_BENCH = m,k,n,reps`` into the gradient SRAM, timed on the wall clock; writes
    ``bench_gemm.json``."""
    tb = TB(dut)
    await tb.cycle_reset()
    hw = tb.hw
    m, k, n, reps = (int(x) for x in os.environ["NODE_BENCH"].split(","))
    rng = np.random.default_rng(0)
    a, b = bf16_words(rng, (m, k)), bf16_words(rng, (k, n))
    pa, pb, pc = tb.addr("scratch", 0), tb.addr("scratch", m * k), tb.addr("grad", 0)
    await tb.load(pa, a.reshape(-1))
    await tb.load(pb, b.reshape(-1))
    await tb.write("IRQ_MASK", rm.Irq.COMPUTE)
    wall0, c0 = time.perf_counter(), int(dut.cycle.value)
    for _ in range(reps):
        await tb.launch(rm.Opcode.GEMM, pa, pb, pc, m, k, n)
        await tb.wait_irq()
        await tb.write("IRQ_STATUS", rm.Irq.COMPUTE)
    wall, cycles = time.perf_counter() - wall0, int(dut.cycle.value) - c0
    got = BF.join_fp32(await tb.dump(pc, 2 * m * n))
    assert (got == mfp.gemm_bf16(a, b).reshape(-1)).all()
    busy = await tb.read("PERF_GEMM_CYCLES")
    assert busy == reps * tm.gemm_cycles(m, k, n, hw, BF)
    out = {"m": m, "k": k, "n": n, "reps": reps, "cycles": cycles, "gemm_cycles": busy,
           "wall_seconds": wall, "cycles_per_second": cycles / wall,
           "utilisation": reps * m * k * n / (hw.array_rows * hw.array_cols * busy)}  # fmt: skip
    with open("bench_gemm.json", "w") as f:
        json.dump(out, f)
