# amaranth: UnusedElaboratable=no
"""The vector units alone in Amaranth's simulator, every op against the golden model bit for bit
(model.numerics in fixed point, model.fp in bf16's fp32)."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from gradsync.hw.vector import Fp32VectorUnit, VectorOp, VectorUnit
from gradsync.model import fp as mfp
from gradsync.model import numerics as nx
from gradsync.spec.formats import BFloat16Format, FixedPointFormat
from tests.hw.fp_vectors import FP32_SPECIALS

OPS = {
    VectorOp.RELU: lambda x, y, arg, fmt: nx.relu(x),
    VectorOp.RELU_BWD: lambda x, y, arg, fmt: nx.relu_backward(x, y),
    VectorOp.SCALE: lambda x, y, arg, fmt: nx.scale(x, arg, fmt),
    VectorOp.SGD: lambda x, y, arg, fmt: nx.sgd_update(x, y, arg, fmt),
}


def corner_operands(rng, fmt, n):
    """Random words with a third drawn from the saturation and rounding corners."""
    corners = np.array(
        [
            fmt.qmin,
            fmt.qmin + 1,
            -1,
            0,
            1,
            fmt.qmax - 1,
            fmt.qmax,
            1 << (fmt.frac_bits - 1) if fmt.frac_bits else 1,
            -(1 << (fmt.frac_bits - 1)) if fmt.frac_bits else -1,
        ]
    )
    x = rng.integers(fmt.qmin, fmt.qmax + 1, size=n)
    pick = rng.random(n) < 0.35
    x[pick] = rng.choice(corners, size=int(pick.sum()))
    return x


FORMATS = [
    FixedPointFormat(16, 10, 40, "nearest-even", True),
    FixedPointFormat(16, 10, 40, "truncate", True),
    FixedPointFormat(8, 4, 24, "nearest-even", False),
]


@pytest.mark.parametrize(
    "fmt", FORMATS, ids=lambda f: f"{f.total_bits}.{f.frac_bits}-{f.rounding}-sat{int(f.saturate)}"
)
@pytest.mark.parametrize("op", list(VectorOp), ids=lambda o: o.name)
def test_vector_op_matches_golden_model(op, fmt):
    lanes = 4
    rng = np.random.default_rng(int(op) * 10 + fmt.total_bits + (fmt.rounding == "truncate"))
    beats = 120
    x = corner_operands(rng, fmt, beats * lanes)
    y = corner_operands(rng, fmt, beats * lanes)
    args = [
        fmt.qmax,
        fmt.qmin,
        1 << fmt.frac_bits,
        3,
        -(1 << fmt.frac_bits) + 1,
        int(rng.integers(fmt.qmin, fmt.qmax + 1)),
    ]
    dut = VectorUnit(lanes, fmt.total_bits, fmt.frac_bits, fmt.rounding, fmt.saturate)
    got = {}

    async def bench(ctx):
        ctx.set(dut.op, op)
        for arg in args:
            ctx.set(dut.arg, arg)
            for b in range(beats + 3):
                if b < beats:
                    ctx.set(dut.in_valid, 1)
                    ctx.set(dut.in_mask, (1 << lanes) - 1)
                    for lane in range(lanes):
                        ctx.set(dut.x[lane], int(x[b * lanes + lane]))
                        ctx.set(dut.y[lane], int(y[b * lanes + lane]))
                else:
                    ctx.set(dut.in_valid, 0)
                await ctx.tick()
                if b >= 2:  # output of beat b-2 after this edge: latency 3 from presentation
                    assert ctx.get(dut.out_valid) == int(b - 2 < beats)
                    if b - 2 < beats:
                        for lane in range(lanes):
                            got[(arg, (b - 2) * lanes + lane)] = ctx.get(dut.out[lane])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    for arg in args:
        want = OPS[op](x, y, arg, fmt)
        have = np.array([got[(arg, i)] for i in range(beats * lanes)])
        bad = np.nonzero(have != want)[0]
        assert not len(bad), (
            f"{op.name} arg={arg}: first mismatch at {bad[0]}: x={x[bad[0]]} y={y[bad[0]]} "
            f"got {have[bad[0]]} want {want[bad[0]]}"
        )
    if op in (VectorOp.SCALE, VectorOp.SGD) and fmt.saturate:
        # The stimulus must reach both rails, or saturation is untested.
        want = np.concatenate([OPS[op](x, y, a, fmt) for a in args])
        assert (want == fmt.qmax).any() and (want == fmt.qmin).any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lanes": 0}, "lanes must be an integer in 1..64, not 0"),
        ({"lanes": 65}, "lanes must be an integer in 1..64, not 65"),
        ({"total_bits": 1}, "total_bits must be an integer in 2..32, not 1"),
        ({"total_bits": 33}, "total_bits must be an integer in 2..32, not 33"),
        ({"total_bits": 16, "frac_bits": 16}, r"frac_bits must be in \[0, 16\), not 16"),
        ({"frac_bits": -1}, r"frac_bits must be in \[0, 16\), not -1"),
        (
            {"rounding": "nearest"},
            r"rounding must be one of \('nearest-even', 'truncate'\), not 'nearest'",
        ),
    ],
)
def test_vector_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        VectorUnit(**kwargs)


# --- the bf16 format's unit: fp32 lanes ---------------------------------------------------

FP32_OPS = {
    VectorOp.RELU: lambda x, y, arg: mfp.relu_fp32(x),
    VectorOp.RELU_BWD: lambda x, y, arg: mfp.relu_backward_fp32(x, y),
    VectorOp.SCALE: lambda x, y, arg: mfp.scale_fp32(x, arg),
    VectorOp.SGD: lambda x, y, arg: mfp.sgd_fp32(x, y, arg),
}


def fp32_operands(rng, n):
    """fp32 words around 1 (weights, gradients), a fifth from the special values."""
    values = rng.standard_normal(n) * 2.0 ** rng.integers(-20, 4, n)
    words = BFloat16Format().quantize_fp32(values)
    pick = rng.random(n) < 0.2
    words[pick] = rng.choice(FP32_SPECIALS, size=int(pick.sum()))
    return words


@pytest.mark.parametrize("op", list(VectorOp), ids=lambda o: o.name)
def test_fp32_vector_op_matches_golden_model(op):
    """Fp32VectorUnit against model.fp, latency 3; the arguments include a tiny, a huge,
    a NaN and a negative one. Results reference: model/fp.py (checked against NumPy
    float32 in tests/model/test_fp.py)."""
    lanes, beats = 4, 60
    rng = np.random.default_rng(40 + int(op))
    x, y = fp32_operands(rng, beats * lanes), fp32_operands(rng, beats * lanes)
    args = [0x3C23D70A, 0x3F800000, 0x00800000, 0x7F000000, 0xBDCCCCCD, 0x7FC00000]
    dut = Fp32VectorUnit(lanes)
    got = {}

    async def bench(ctx):
        ctx.set(dut.op, op)
        for arg in args:
            ctx.set(dut.arg, arg)
            for b in range(beats + 3):
                ctx.set(dut.in_valid, int(b < beats))
                ctx.set(dut.in_mask, (1 << lanes) - 1)
                if b < beats:
                    for lane in range(lanes):
                        ctx.set(dut.x[lane], int(x[b * lanes + lane]))
                        ctx.set(dut.y[lane], int(y[b * lanes + lane]))
                await ctx.tick()
                if b >= 2:
                    assert ctx.get(dut.out_valid) == int(b - 2 < beats)
                    if b - 2 < beats:
                        for lane in range(lanes):
                            got[(arg, (b - 2) * lanes + lane)] = ctx.get(dut.out[lane])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    for arg in args:
        want = FP32_OPS[op](x, y, arg)
        have = np.array([got[(arg, i)] for i in range(beats * lanes)], dtype=np.uint32)
        bad = np.nonzero(have != want)[0]
        assert not len(bad), (
            f"{op.name} arg={arg:#x}: {len(bad)} mismatches, first at {bad[0]}: "
            f"x={x[bad[0]]:#x} y={y[bad[0]]:#x} got {have[bad[0]]:#x} want {want[bad[0]]:#x}"
        )
