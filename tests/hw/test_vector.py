# amaranth: UnusedElaboratable=no
"""The vector unit alone in Amaranth's simulator, every op against model.numerics bit for bit."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from gradsync.hw.vector import VectorOp, VectorUnit
from gradsync.model import numerics as nx
from gradsync.spec.formats import FixedPointFormat

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
