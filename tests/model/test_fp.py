"""model/fp.py against references that share none of its code: float64, ml_dtypes, spec's rounding.

* Products: float64 multiplies bf16 values exactly (16 significant bits), the
  range rules of ``docs/numerics.md`` are applied by hand.
* Sums: float64 adds two float32 values and rounds the sum to float32. Double
  rounding is harmless here because float64 has 53 >= 2 * 24 + 2 significand
  bits (Figueroa, "When is double rounding innocuous?", SIGNUM Newsl. 30(3),
  1995), so this is the correctly rounded fp32 sum.
* fp32 -> bf16: ``BFloat16Format.quantize``, which rounds with integer
  arithmetic on the float64 bits (the model uses ``ml_dtypes``).
"""

import ml_dtypes
import numpy as np
import pytest

from gradsync.model import fp
from gradsync.spec.formats import BFloat16Format
from tests.hw.fp_vectors import (
    ADD_BY_HAND,
    BF16_SPECIALS,
    FP32_SPECIALS,
    MUL_BY_HAND,
    adder_pairs,
    all_pairs,
    fp32_reference_add,
    fp32_reference_mul,
    mul_pairs,
)

FMT = BFloat16Format()
NAN32 = np.uint32(0x7FC00000)
TINY = 2.0**-126


def _f64_to_words(x: np.ndarray) -> np.ndarray:
    """float64 values already in fp32's range rules -> fp32 words (flush, canonical NaN)."""
    with np.errstate(all="ignore"):
        words = np.where(np.abs(x) < TINY, np.copysign(0.0, x), x).astype(np.float32)
    return np.where(np.isnan(x), NAN32, words.view(np.uint32))


def reference_mul(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    vx, vy = FMT.dequantize(x), FMT.dequantize(y)  # flushed float64 values
    with np.errstate(all="ignore"):
        p = vx * vy  # exact: 8 x 8 significant bits
    p = np.where(np.abs(p) >= 2.0**128, np.copysign(np.inf, p), p)
    finite = np.isfinite(p) & (np.abs(p) >= TINY)
    assert (p[finite].astype(np.float32).astype(np.float64) == p[finite]).all(), "fp32 not exact"
    return _f64_to_words(p)


def reference_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return _f64_to_words(FMT.dequantize_fp32(a) + FMT.dequantize_fp32(b))


def test_bf16_mul_fp32_equals_exact_float64_product():
    rng = np.random.default_rng(1)
    sx, sy = all_pairs(BF16_SPECIALS)
    x = np.concatenate([sx, rng.integers(0, 1 << 16, 1 << 20).astype(np.uint16)])
    y = np.concatenate([sy, rng.integers(0, 1 << 16, 1 << 20).astype(np.uint16)])
    np.testing.assert_array_equal(fp.bf16_mul_fp32(x, y), reference_mul(x, y))


def test_bf16_mul_fp32_special_results_by_hand():
    x = np.array([0x7F80, 0x8000, 0x5F80, 0xDF80, 0x1F80, 0x2000, 0x0001, 0xFFFF, 0x3FC0])
    y = np.array([0x0000, 0x3F80, 0x5F80, 0x5F80, 0x9F80, 0x2000, 0x3F80, 0x3F80, 0x3FC0])
    assert fp.bf16_mul_fp32(x, y).tolist() == [
        0x7FC00000,  # inf * 0 = canonical NaN
        0x80000000,  # -0 * 1 = -0
        0x7F800000,  # 2**64 * 2**64 = 2**128: overflow to inf
        0xFF800000,  # -2**64 * 2**64 = -inf
        0x80000000,  # 2**-64 * -2**-64 = -2**-128: flushed to -0
        0x00800000,  # 2**-63 * 2**-63 = 2**-126: smallest normal, kept
        0x00000000,  # subnormal reads as +0
        0x7FC00000,  # NaN with payload: canonical NaN
        0x40100000,  # 1.5 * 1.5 = 2.25
    ]


def test_fp32_add_equals_float64_sum_rounded_once():
    a, b = adder_pairs(np.random.default_rng(2), 1 << 20)
    sa, sb = all_pairs(FP32_SPECIALS)
    a, b = np.concatenate([sa, a]), np.concatenate([sb, b])
    want = reference_add(a, b)
    np.testing.assert_array_equal(fp.fp32_add(a, b), want)
    # the NumPy float32 reference that tests/hw/test_fp.py checks the RTL with, too
    np.testing.assert_array_equal(fp32_reference_add(a, b), want)


def test_fp32_add_by_hand():
    a, b, total = np.array(ADD_BY_HAND, dtype=np.uint32).T
    np.testing.assert_array_equal(fp.fp32_add(a, b), total)
    np.testing.assert_array_equal(reference_add(a, b), total)


def test_fp32_mul_equals_numpy_float32_with_the_flush_rule():
    a, b = mul_pairs(np.random.default_rng(4), 1 << 20)
    sa, sb = all_pairs(FP32_SPECIALS)
    a, b = np.concatenate([sa, a]), np.concatenate([sb, b])
    got = fp.fp32_mul(a, b)
    np.testing.assert_array_equal(got, fp32_reference_mul(a, b))
    v = got.view(np.float32)
    assert np.sum(np.isinf(v)) > 10_000 and np.sum(v == 0) > 10_000  # overflow and flush reached
    bottom = (np.abs(v) >= 2.0**-126) & (np.abs(v) < 2.0**-125)
    assert np.sum(bottom) > 1000  # products kept in the lowest normal binade


def test_fp32_mul_by_hand():
    a, b, product = np.array(MUL_BY_HAND, dtype=np.uint32).T
    np.testing.assert_array_equal(fp.fp32_mul(a, b), product)
    # NumPy's subnormal rounding reaches 2**-126 where the device flushes (the one difference)
    assert int(fp32_reference_mul(np.uint32(0x1FFFFFFF), np.uint32(0x20000000))) == 0
    with np.errstate(all="ignore"):
        numpy_product = np.float32(2.0**-126 - 2.0**-150) * np.float32(1)
    assert numpy_product == np.float32(2.0**-126 - 2.0**-150)  # not representable: rounded ...
    assert numpy_product == np.float32(2.0**-126)  # ... up to the smallest normal


def test_fp32_canonical():
    words = np.array([0x00000001, 0x807FFFFF, 0x7F800001, 0xFFC00000, 0x3F800000, 0xFF800000])
    assert fp.fp32_canonical(words).tolist() == [
        0,
        0x80000000,
        0x7FC00000,
        0x7FC00000,
        0x3F800000,
        0xFF800000,
    ]


def test_fp32_to_bf16_equals_integer_rounding_of_spec():
    rng = np.random.default_rng(3)
    words = np.concatenate([FP32_SPECIALS, rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64)])
    words = words.astype(np.uint32)
    want = FMT.quantize(FMT.dequantize_fp32(words))
    np.testing.assert_array_equal(fp.fp32_to_bf16(words), want)


def test_fp32_to_bf16_by_hand():
    words = [0x3F808000, 0x3F818000, 0x3F808001, 0x7F7FFFFF, 0x00400000, 0x80000001, 0xFF800001]
    assert fp.fp32_to_bf16(words).tolist() == [
        0x3F80,  # tie, to even (down)
        0x3F82,  # tie, to even (up)
        0x3F81,  # above the tie: up
        0x7F80,  # the largest fp32 rounds past the largest bf16: inf
        0x0000,  # subnormal: +0
        0x8000,  # negative subnormal: -0
        0x7FC0,  # negative NaN: canonical NaN
    ]


def test_bf16_to_fp32_is_exact_widening():
    words = np.arange(1 << 16, dtype=np.uint32)
    with np.errstate(invalid="ignore"):
        values = words.astype(np.uint16).view(ml_dtypes.bfloat16).astype(np.float64)
    np.testing.assert_array_equal(fp.bf16_to_fp32(words), _f64_to_words(values))


def _dot_reference(a, b, order):
    """Step by step in float64, each sum rounded to float32 (exact per Figueroa)."""
    products = FMT.dequantize_fp32(reference_mul(a, b))
    acc = products[..., order[0]]
    for k in order[1:]:
        acc = FMT.dequantize_fp32(_f64_to_words(acc + products[..., k]))
    return _f64_to_words(acc)


@pytest.mark.parametrize("k", [1, 2, 17])
def test_dot_fp32_equals_step_by_step_reference(k):
    rng = np.random.default_rng(k)
    signs = rng.integers(0, 2, (200, k)) << 15
    a = signs | rng.integers(0x3C00, 0x4300, (200, k))  # 2**-7 .. 2**7: sums cancel and round
    b = rng.integers(0x3C00, 0x4300, (200, k))
    for order in (np.arange(k), rng.permutation(k)):
        np.testing.assert_array_equal(fp.dot_fp32(a, b, order), _dot_reference(a, b, order))


def test_dot_fp32_order_matters_by_hand():
    """2**24 + 1 rounds back to 2**24 (a tie, to even): the order decides if the 1 survives."""
    a = np.array([0x4B80, 0x3F80, 0xCB80])  # 2**24, 1, -2**24
    b = np.array([0x3F80, 0x3F80, 0x3F80])  # ones
    assert int(fp.dot_fp32(a, b)) == 0x00000000
    assert int(fp.dot_fp32(a, b, [0, 2, 1])) == 0x3F800000


@pytest.mark.parametrize(
    ("order", "text"),
    [([], r"\[\]"), ([0, 3], r"\[0, 3\]"), ([-1], r"\[-1\]"), ([[0, 1]], r"\[\[0, 1\]\]")],
)
def test_dot_fp32_rejects_bad_order(order, text):
    a = np.array([0x3F80, 0x3F80, 0x3F80])
    with pytest.raises(ValueError, match=rf"order must list indices of .* 0\.\.2, not {text}$"):
        fp.dot_fp32(a, a, order)


# --- the bf16 format's compute commands ------------------------------------------------


def test_relu_fp32_and_relu_backward_by_hand():
    x = np.array([0x3F800000, 0xBF800000, 0x80000000, 0x00000001, 0xFFC00001, 0x7F800000])
    # 1 -> 1, -1 -> +0, -0 -> +0, subnormal (reads +0) -> +0, NaN -> NaN, inf -> inf
    assert fp.relu_fp32(x).tolist() == [0x3F800000, 0, 0, 0, 0x7FC00000, 0x7F800000]
    g = np.full(6, 0xC0400000)  # -3
    assert fp.relu_backward_fp32(g, x).tolist() == [0xC0400000, 0, 0, 0, 0xC0400000, 0xC0400000]


def test_sgd_fp32_equals_numpy_float32_steps():
    """w - lr * g in NumPy float32: the product rounded, then the difference (the device's order)."""
    rng = np.random.default_rng(8)
    w = (rng.standard_normal(100_000) * 0.1).astype(np.float32)
    g = (rng.standard_normal(100_000) * 2.0 ** rng.integers(-30, 0, 100_000)).astype(np.float32)
    lr = np.float32(0.01)
    want = w - lr * g  # float32 arithmetic, each operation rounded to nearest even
    assert np.all(np.abs(want[want != 0]) >= 2.0**-126)  # no subnormals: the flush is moot
    got = fp.sgd_fp32(w.view(np.uint32), g.view(np.uint32), int(lr.view(np.uint32)))
    np.testing.assert_array_equal(got, want.view(np.uint32))
    changed = np.sum(got != w.view(np.uint32))
    assert 50_000 < changed < 99_000  # most steps move w, the smallest are rounded away


def test_scale_fp32_equals_numpy_float32():
    rng = np.random.default_rng(9)
    x = (rng.standard_normal(10_000) * 100).astype(np.float32)
    got = fp.scale_fp32(x.view(np.uint32), int(np.float32(1 / 32).view(np.uint32)))
    np.testing.assert_array_equal(got, (x * np.float32(1 / 32)).view(np.uint32))


@pytest.mark.parametrize("shape", [(32, 64, 16), (64, 32, 10), (7, 300, 5)])
def test_gemm_bf16_against_float64_numpy(shape):
    """The independent reference: a float64 NumPy GEMM of the same bf16 inputs.

    Products are exact, so the only error is the K - 1 fp32 roundings of the
    sums: |C - C64| <= gamma(K - 1) * (|A| @ |B|), gamma(n) = n u / (1 - n u),
    u = 2**-24 (Higham, Accuracy and Stability of Numerical Algorithms, 3.1).
    """
    m, k, n = shape
    rng = np.random.default_rng(k)
    a = FMT.quantize(rng.standard_normal((m, k)))
    b = FMT.quantize(rng.standard_normal((k, n)) * 0.1)
    got = FMT.dequantize_fp32(fp.gemm_bf16(a, b))
    va, vb = FMT.dequantize(a), FMT.dequantize(b)
    exact = va @ vb  # float64: the sum of K exact products, K * 2**-53 from exact at most
    u = 2.0**-24
    gamma = (k - 1) * u / (1 - (k - 1) * u)
    bound = gamma * (np.abs(va) @ np.abs(vb))
    assert np.all(np.abs(got - exact) <= bound)
    assert np.max(np.abs(got - exact) / bound) > 0.001  # the sums do round
    # the transposed forms read the same matrices
    np.testing.assert_array_equal(fp.gemm_bf16(a.T, b, trans_a=True), fp.gemm_bf16(a, b))
    np.testing.assert_array_equal(fp.gemm_bf16(a, b.T.copy(), trans_b=True), fp.gemm_bf16(a, b))
