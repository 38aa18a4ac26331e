# amaranth: UnusedElaboratable=no
"""hw/arith.py's saturation and packed reduce-add, exhaustively, against the number format.

The references are ``gradsync.spec.formats`` (``FixedPointFormat.saturate_raw``,
``wrap``) and ``gradsync.model.numerics.add_saturating``; the logic runs in
Amaranth's simulator, many lanes side by side so each case is one settle.
"""

import itertools

import numpy as np
import pytest
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from gradsync.hw.arith import add_lanes, saturate, saturate_bounds
from gradsync.model import numerics as nx
from gradsync.spec.formats import FixedPointFormat, wrap


class _Saturators(wiring.Component):
    """``lanes`` copies of :func:`saturate` from ``in_bits`` to ``bits``."""

    def __init__(self, in_bits, bits, clamp, lanes):
        self.bits, self.clamp = bits, clamp
        super().__init__(
            {
                "x": In(data.ArrayLayout(signed(in_bits), lanes)),
                "y": Out(data.ArrayLayout(signed(bits), lanes)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        for i in range(len(self.x)):
            m.d.comb += self.y[i].eq(saturate(m, self.x[i], self.bits, self.clamp, f"s{i}"))
        return m


class _LaneAdders(wiring.Component):
    """``words`` copies of :func:`add_lanes` on 32-bit words."""

    def __init__(self, lane_bits, clamp, words):
        self.lane_bits, self.clamp = lane_bits, clamp
        super().__init__(
            {
                "a": In(data.ArrayLayout(32, words)),
                "b": In(data.ArrayLayout(32, words)),
                "y": Out(data.ArrayLayout(32, words)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        for i in range(len(self.a)):
            total = add_lanes(m, self.a[i], self.b[i], self.lane_bits, self.clamp, f"w{i}_")
            m.d.comb += self.y[i].eq(total)
        return m


def _run(dut, cases):
    """Settle ``dut`` on each ``{port: values}`` of ``cases``; the ``y`` lanes of each."""
    results = []

    async def bench(ctx):
        for case in cases:
            for port, values in case.items():
                ctx.set(getattr(dut, port), [int(v) for v in values])
            got = ctx.get(dut.y)
            results.append(np.array([got[i] for i in range(len(dut.y))], dtype=np.int64))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return results


@pytest.mark.parametrize("clamp", [True, False])
@pytest.mark.parametrize("in_bits", [9, 12])
def test_saturate_8_bit_equals_format_saturate_raw(in_bits, clamp):
    """Every ``in_bits`` value narrowed to the 8-bit operand format, saturating or wrapping."""
    fmt = FixedPointFormat(total_bits=8, frac_bits=0, acc_bits=16, saturate=clamp)
    values = np.arange(-(1 << (in_bits - 1)), 1 << (in_bits - 1), dtype=np.int64)
    lanes = 512
    dut = _Saturators(in_bits, 8, clamp, lanes)
    got = np.concatenate(_run(dut, [{"x": chunk} for chunk in values.reshape(-1, lanes)]))
    np.testing.assert_array_equal(got, fmt.saturate_raw(values))


@pytest.mark.parametrize(
    ("bits", "in_bits", "clamp"),
    [
        (b, b + extra, clamp)
        for b, extra, clamp in itertools.product((1, 2, 3, 5), (0, 1, 3), (True, False))
    ],
)
def test_saturate_small_widths_exhaustive(bits, in_bits, clamp):
    """Widths the operand format does not offer: against a clip / ``spec.formats.wrap``."""
    values = np.arange(-(1 << (in_bits - 1)), 1 << (in_bits - 1), dtype=np.int64)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    want = np.clip(values, lo, hi) if clamp else wrap(values, bits)
    (got,) = _run(_Saturators(in_bits, bits, clamp, len(values)), [{"x": values}])
    np.testing.assert_array_equal(got, want)
    if in_bits > bits:
        assert (want != values).any(), "the range must reach past the rails or this proves little"


@pytest.mark.parametrize("clamp", [True, False])
def test_add_lanes_8_bit_equals_model_reduce_add(clamp):
    """All 65536 pairs of 8-bit operands, four to a 32-bit word: ``numerics.add_saturating``."""
    fmt = FixedPointFormat(total_bits=8, frac_bits=0, acc_bits=16, saturate=clamp)
    ops = np.arange(-128, 128, dtype=np.int64)
    x, y = (v.ravel() for v in np.meshgrid(ops, ops, indexing="ij"))

    def pack(v):  # four lanes per word, lane 0 in the low bits
        u = fmt.to_unsigned(v).reshape(-1, 4)
        return u[:, 0] | u[:, 1] << 8 | u[:, 2] << 16 | u[:, 3] << 24

    words = 128
    a, b = pack(x).reshape(-1, words), pack(y).reshape(-1, words)
    dut = _LaneAdders(8, clamp, words)
    got = np.concatenate(_run(dut, [{"a": wa, "b": wb} for wa, wb in zip(a, b, strict=True)]))
    lanes = np.stack([(got >> (8 * i)) & 0xFF for i in range(4)], axis=1).ravel()
    np.testing.assert_array_equal(wrap(lanes, 8), nx.add_saturating(x, y, fmt))


@pytest.mark.parametrize("clamp", [True, False])
def test_add_lanes_16_bit_corners_equal_model_reduce_add(clamp):
    """The 16-bit format (the default) on every pair of corner operands around both rails."""
    fmt = FixedPointFormat(total_bits=16, frac_bits=10, saturate=clamp)
    corners = np.array([-32768, -32767, -16384, -1, 0, 1, 16383, 16384, 32766, 32767])
    x, y = (v.ravel() for v in np.meshgrid(corners, corners, indexing="ij"))
    a = fmt.to_unsigned(x[0::2]) | fmt.to_unsigned(x[1::2]) << 16
    b = fmt.to_unsigned(y[0::2]) | fmt.to_unsigned(y[1::2]) << 16
    (got,) = _run(_LaneAdders(16, clamp, len(a)), [{"a": a, "b": b}])
    lanes = np.stack([got & 0xFFFF, got >> 16], axis=1).ravel()
    np.testing.assert_array_equal(wrap(lanes, 16), nx.add_saturating(x, y, fmt))


def test_saturate_bounds_rejects_zero_bits():
    with pytest.raises(ValueError, match="bits must be a positive integer, not 0"):
        saturate_bounds(0)


def test_add_lanes_rejects_words_that_do_not_split_into_lanes():
    with pytest.raises(ValueError, match="multiple of lane_bits=8, not 20 and 20 bits"):
        add_lanes(Module(), Signal(20), Signal(20), 8, True, "x")
