"""Fixed-point numerics against independent references (Python integers and Fractions)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from gradsync.model import numerics as nx
from gradsync.spec.formats import FixedPointFormat

FMT = FixedPointFormat()


def ref_round(value: Fraction, rounding: str) -> int:
    if rounding == "truncate":
        return value.numerator // value.denominator
    return round(value)  # Python rounds Fractions half to even


def ref_sat(v: int, fmt: FixedPointFormat) -> int:
    return max(fmt.qmin, min(fmt.qmax, v))


def corner_operands(rng: np.random.Generator, shape, fmt) -> np.ndarray:
    x = rng.integers(fmt.qmin, fmt.qmax + 1, size=shape)
    flat = x.reshape(-1)
    corners = [fmt.qmin, fmt.qmax, 0, 1, -1]
    flat[: min(len(flat), len(corners))] = corners[: min(len(flat), len(corners))]
    return x


@pytest.mark.parametrize("rounding", ["nearest-even", "truncate"])
def test_round_shift_matches_fraction_rounding(rounding):
    rng = np.random.default_rng(1)
    xs = np.concatenate([rng.integers(-(1 << 40), 1 << 40, 2000), np.arange(-40, 41)])
    for shift in (1, 2, 5, 10, 20):
        got = nx.round_shift(xs, shift, rounding)
        want = [ref_round(Fraction(int(x), 1 << shift), rounding) for x in xs]
        assert got.tolist() == want


def test_round_shift_ties_go_to_even():
    # 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> 0, -1.5 -> -2
    got = nx.round_shift(np.array([1, 3, 5, -1, -3]), 1, "nearest-even")
    assert got.tolist() == [0, 2, 2, 0, -2]


@pytest.mark.parametrize(
    "fmt",
    [FMT, FixedPointFormat(8, 4, 20), FixedPointFormat(16, 12, 40, "truncate")],
    ids=["q6.10", "q3.4", "q3.12-trunc"],
)
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 7, 3), (9, 17, 13)])
def test_gemm_matches_python_integer_reference(fmt, shape):
    m, k, n = shape
    rng = np.random.default_rng(m * 100 + k * 10 + n)
    a = corner_operands(rng, (m, k), fmt)
    b = corner_operands(rng, (k, n), fmt)
    got = nx.gemm(a, b, fmt)
    for i in range(m):
        for j in range(n):
            acc = sum(int(a[i, t]) * int(b[t, j]) for t in range(k))
            want = ref_sat(ref_round(Fraction(acc, 1 << fmt.frac_bits), fmt.rounding), fmt)
            assert got[i, j] == want


def test_gemm_transpose_flags_and_extra_shift():
    rng = np.random.default_rng(7)
    a = rng.integers(-3000, 3000, (6, 4))  # stored K x M
    b = rng.integers(-3000, 3000, (5, 6))  # stored N x K
    got = nx.gemm(a, b, FMT, trans_a=True, trans_b=True, extra_shift=3)
    for i in range(4):
        for j in range(5):
            acc = sum(int(a[t, i]) * int(b[j, t]) for t in range(6))
            assert got[i, j] == ref_sat(round(Fraction(acc, 1 << 13)), FMT)


def test_accumulator_wraps_at_acc_bits_beyond_max_exact_k():
    fmt = FixedPointFormat(8, 0, 16)
    k = fmt.max_exact_k
    assert k * 128 * 128 <= (1 << 15) - 1 < (k + 1) * 128 * 128
    a = np.full((1, k + 1), -128)
    b = np.full((k + 1, 1), -128)
    acc = nx.gemm_accumulate(a, b, fmt)[0, 0]
    exact = (k + 1) * 128 * 128
    assert acc == ((exact + (1 << 15)) % (1 << 16)) - (1 << 15)


def test_saturating_add_and_vector_ops():
    rng = np.random.default_rng(3)
    x = corner_operands(rng, 500, FMT)
    y = corner_operands(rng, 500, FMT)[::-1].copy()
    assert nx.add_saturating(x, y, FMT).tolist() == [
        ref_sat(int(p) + int(q), FMT) for p, q in zip(x, y, strict=True)
    ]
    assert nx.relu(x).tolist() == [max(int(v), 0) for v in x]
    assert nx.relu_backward(x, y).tolist() == [
        int(p) if q > 0 else 0 for p, q in zip(x, y, strict=True)
    ]
    factor = 1500
    assert nx.scale(x, factor, FMT).tolist() == [
        ref_sat(round(Fraction(int(v) * factor, 1 << 10)), FMT) for v in x
    ]


def test_sgd_update_matches_fraction_reference():
    rng = np.random.default_rng(5)
    w = corner_operands(rng, 400, FMT)
    g = corner_operands(rng, 400, FMT)
    lr = 256  # 0.25
    got = nx.sgd_update(w, g, lr, FMT)
    want = [
        ref_sat(int(wi) - round(Fraction(lr * int(gi), 1 << 10)), FMT)
        for wi, gi in zip(w, g, strict=True)
    ]
    assert got.tolist() == want


def test_quantize_dequantize_and_wrap_mode():
    assert FMT.quantize([0.5, -0.5, 100.0, -100.0, 2**-11, 3 * 2**-11]).tolist() == [
        512,
        -512,
        FMT.qmax,
        FMT.qmin,
        0,
        2,
    ]
    assert FMT.dequantize(np.array([1024, -1])).tolist() == [1.0, -(2**-10)]
    wrapping = FixedPointFormat(saturate=False)
    assert nx.add_saturating(np.array([32767]), np.array([1]), wrapping).tolist() == [-32768]
    assert FMT.from_unsigned(FMT.to_unsigned(np.array([-1, 5, -32768]))).tolist() == [
        -1,
        5,
        -32768,
    ]


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"total_bits": 12}, "total_bits must be 8, 16 or 32, not 12"),
        ({"frac_bits": 16}, "not 16"),
        ({"acc_bits": 20}, "not 20"),
        ({"rounding": "up"}, "not 'up'"),
    ],
)
def test_bad_formats_name_the_value(kwargs, text):
    with pytest.raises(ValueError, match=text):
        FixedPointFormat(**kwargs)
