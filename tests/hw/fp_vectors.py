"""Operand words for the floating-point block tests: special values, hand-worked cases, random sets.

Shared by ``tests/hw/test_fp.py`` and ``tests/model/test_fp.py``. Words are
IEEE bit patterns (``uint32`` fp32, ``uint16`` bf16).
"""

from __future__ import annotations

import itertools

import numpy as np

#: fp32 words of every class: zeros, subnormals, the normal extremes, infinities, NaNs.
FP32_SPECIALS = np.array(
    [
        0x00000000, 0x80000000,  # +-0
        0x00000001, 0x807FFFFF,  # smallest and largest subnormal
        0x00800000, 0x80800000, 0x00800001,  # smallest normal (and its neighbour)
        0x01000000, 0x01000001,  # 2**-125: cancels into the subnormal range
        0x3F800000, 0xBF800000, 0x3F800001, 0x33800000, 0x33000000,  # 1, 1+ulp, 2**-24, 2**-25
        0x7F7FFFFF, 0xFF7FFFFF, 0x7F000000, 0x73000000,  # largest normal, 2**127, 2**103
        0x7F800000, 0xFF800000,  # +-inf
        0x7FC00000, 0xFFC00001, 0x7F800001,  # quiet NaN, negative NaN, signalling NaN
    ],
    dtype=np.uint32,
)  # fmt: skip

#: bf16 words of every class, and exponents whose products reach overflow and underflow.
BF16_SPECIALS = np.array(
    [
        0x0000, 0x8000, 0x0001, 0x807F,  # +-0, subnormals
        0x0080, 0x8080, 0x00FF,  # smallest normals
        0x3F80, 0xBF80, 0x3FFF, 0x4040,  # 1, -1, 1.9921875, 3
        0x7F7F, 0xFF7F,  # largest normal
        0x5F80, 0x5F00, 0x5FFF,  # 2**64 (its square overflows), 2**63, just below 2**65
        0x2000, 0x1F80, 0x20FF,  # 2**-63 (square: smallest normal), 2**-64 (square flushed)
        0x7F80, 0xFF80, 0x7FC0, 0xFFFF, 0x7F81,  # +-inf, NaNs (quiet, negative, signalling)
    ],
    dtype=np.uint16,
)  # fmt: skip

#: fp32 additions worked out by hand: (a, b, a + b) under round-to-nearest-even and flush-to-zero.
ADD_BY_HAND = [
    (0x3F800000, 0xBF800000, 0x00000000),  # 1 - 1 = +0
    (0xBF800000, 0x3F800000, 0x00000000),  # -1 + 1 = +0
    (0x80000000, 0x80000000, 0x80000000),  # -0 + -0 = -0
    (0x00000000, 0x80000000, 0x00000000),  # +0 + -0 = +0
    (0x80000001, 0x80000000, 0x80000000),  # -subnormal reads as -0: -0 + -0
    (0x00000001, 0x80000000, 0x00000000),  # +subnormal reads as +0
    (0x80000000, 0x3F800000, 0x3F800000),  # -0 + 1 = 1
    (0x00800001, 0x80800000, 0x00000000),  # cancels to 2**-149 (subnormal): +0
    (0x80800001, 0x00800000, 0x80000000),  # ... of the larger operand's sign: -0
    (0x01000001, 0x80800000, 0x00800002),  # 2**-125(1+2**-23) - 2**-126: normal, exact
    (0x01000000, 0x80800001, 0x00000000),  # 2**-126 - 2**-149: subnormal, flushed
    (0x3F800001, 0xBF800000, 0x34000000),  # (1 + 2**-23) - 1 = 2**-23
    (0x3F800000, 0x33800000, 0x3F800000),  # 1 + 2**-24: tie, to even (down)
    (0x3F800001, 0x33800000, 0x3F800002),  # (1 + ulp) + 2**-24: tie, to even (up)
    (0x3F800000, 0x33800001, 0x3F800001),  # just above the tie: up
    (0x3F800000, 0xB3000000, 0x3F800000),  # 1 - 2**-25: tie below 1 (ulp 2**-24), to even (1)
    (0x3F800000, 0xB3400000, 0x3F7FFFFF),  # 1 - 3 * 2**-26: nearer 1 - 2**-24
    (0x3F800000, 0xB2800000, 0x3F800000),  # 1 - 2**-26: less than half an ulp, stays 1
    (0x4B000000, 0x3F000000, 0x4B000000),  # 2**23 + 0.5: tie, to even (down)
    (0x4B000001, 0x3F000000, 0x4B000002),  # (2**23 + 1) + 0.5: tie, to even (up)
    (0x7F7FFFFF, 0x7F7FFFFF, 0x7F800000),  # max + max = inf
    (0x7F7FFFFF, 0x73000000, 0x7F800000),  # max + half an ulp: tie, to even = 2**128 = inf
    (0x7F7FFFFF, 0x72800000, 0x7F7FFFFF),  # max + a quarter ulp: max
    (0xFF7FFFFF, 0xFF7FFFFF, 0xFF800000),  # -max - max = -inf
    (0x7F800000, 0xFF800000, 0x7FC00000),  # inf - inf = canonical NaN
    (0x7F800000, 0x7F800000, 0x7F800000),  # inf + inf = inf
    (0xFF800000, 0x7F7FFFFF, 0xFF800000),  # -inf + max = -inf
    (0xFFC00001, 0x3F800000, 0x7FC00000),  # a negative NaN with payload: canonical NaN
    (0x7F800001, 0x7F800000, 0x7FC00000),  # signalling NaN + inf: canonical NaN
]


def adder_pairs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` fp32 pairs: a quarter uniform bits, the rest with exponents close together.

    Close exponents (difference 0..30) exercise alignment, cancellation and
    the rounding bits; a share sits at the bottom and top of the exponent range
    (flush and overflow). Signs are random, so half of them subtract.
    """
    a = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    close = np.arange(n) >= n // 4
    exp_a = (a >> 23) & 0xFF
    edge = rng.random(n)
    exp_a = np.where(edge < 0.15, rng.integers(1, 28, n), exp_a)  # near the smallest normal
    exp_a = np.where(edge > 0.85, rng.integers(224, 255, n), exp_a)  # near overflow
    exp_b = np.clip(exp_a.astype(np.int64) + rng.integers(-30, 31, n), 0, 254)
    exp_b = np.where(rng.random(n) < 0.3, exp_a, exp_b)  # same exponent: deep cancellation
    frac_b = np.where(rng.random(n) < 0.2, a & 0x7FFFFF ^ rng.integers(0, 4, n), b & 0x7FFFFF)
    a = np.where(close, (a & 0x807FFFFF) | (exp_a << 23), a).astype(np.uint32)
    b = np.where(close, (b & 0x80000000) | (exp_b << 23) | frac_b, b).astype(np.uint32)
    return a, b


def all_pairs(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered pair of ``words``."""
    pairs = np.array(list(itertools.product(words.tolist(), repeat=2)), dtype=words.dtype)
    return pairs[:, 0], pairs[:, 1]


def fp32_reference_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The adder's words from NumPy ``float32`` with the subnormal rule, independent of the model.

    Inputs below the smallest normal become zeros of their sign, NumPy adds
    in ``float32`` (round to nearest even), a result below the smallest
    normal becomes a zero of its sign, NaNs become the canonical NaN.
    """
    tiny = np.float32(2.0**-126)

    def flush(v):
        return np.where(np.abs(v) < tiny, np.copysign(np.float32(0), v), v)

    x = flush(np.asarray(a, dtype=np.uint32).view(np.float32))
    y = flush(np.asarray(b, dtype=np.uint32).view(np.float32))
    with np.errstate(all="ignore"):
        total = flush(x + y)
    return np.where(np.isnan(total), np.uint32(0x7FC00000), total.view(np.uint32))


#: fp32 products worked out by hand: (a, b, a * b), round to nearest even, tininess after rounding.
MUL_BY_HAND = [
    (0x3F800000, 0x40000000, 0x40000000),  # 1 * 2 = 2
    (0x3F800001, 0x3FC00000, 0x3FC00002),  # (1 + 2**-23) * 1.5 = 1.5 + 2**-23 + 2**-24: tie, up
    (0x3F800001, 0x3F800001, 0x3F800002),  # (1 + 2**-23)**2 = 1 + 2**-22 + 2**-46: down
    (0x3FFFFFFF, 0x3FFFFFFF, 0x407FFFFE),  # (2 - 2**-23)**2 = 4 - 2**-21 + 2**-46: normalise
    (0x7F000000, 0x40000000, 0x7F800000),  # 2**127 * 2 = 2**128: overflow to inf
    (0x7F7FFFFF, 0x3F800001, 0x7F800000),  # max * (1 + ulp): rounds past max, inf
    (0x7F7FFFFF, 0xBF800000, 0xFF7FFFFF),  # max * -1 = -max
    (0x00800000, 0x3F000000, 0x00000000),  # 2**-126 * 0.5: subnormal, flushed
    (0x80800000, 0x3F000000, 0x80000000),  # ... of the product's sign
    (0x1FFFFFFF, 0x20000000, 0x00000000),  # 2**-126 - 2**-150: exact, tiny, flushed
    (0x1FFFFFFF, 0x20000001, 0x00800000),  # (2**-126 - 2**-150)(1 + 2**-23): rounds to 2**-126
    (0x00000001, 0x7F000000, 0x00000000),  # a subnormal operand reads as +0
    (0x7F800000, 0x00000000, 0x7FC00000),  # inf * 0 = canonical NaN
    (0xFF800000, 0x3F800000, 0xFF800000),  # -inf * 1 = -inf
    (0x7FC00001, 0x3F800000, 0x7FC00000),  # NaN with payload: canonical NaN
    (0x80000000, 0x3F800000, 0x80000000),  # -0 * 1 = -0
]


def mul_pairs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` fp32 pairs with random signs and fractions: 30 % whose product lands near
    overflow, 30 % near the smallest normal (flushed or kept), the rest anywhere; 30 %
    with 12-bit significands (exact products, no rounding)."""
    a = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    # the product's biased exponent is exp_a + exp_b - 127 (+1): a share near 254, a share near 1
    pick = rng.random(n)
    high, low = pick < 0.3, pick > 0.7
    exp_a = np.where(high, rng.integers(130, 255, n), rng.integers(1, 255, n))
    exp_a = np.where(low, rng.integers(1, 126, n), exp_a)
    exp_b = np.where(high, 381 - exp_a, np.where(low, 128 - exp_a, rng.integers(1, 255, n)))
    exp_b = np.clip(exp_b + np.where(high | low, rng.integers(-2, 2, n), 0), 1, 254)
    short = rng.random(n) < 0.3  # 12-bit significands: a 24-bit product, rounding ties
    a = (a & 0x807FFFFF) | (exp_a.astype(np.uint32) << 23)
    b = (b & 0x807FFFFF) | (exp_b.astype(np.uint32) << 23)
    a = np.where(short, a & 0xFFFFF800, a).astype(np.uint32)
    b = np.where(short, b & 0xFFFFF800, b).astype(np.uint32)
    return a, b


def fp32_reference_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The multiplier's words from NumPy ``float32`` with the subnormal rule, independent of the model.

    NumPy rounds a tiny product on the subnormal grid; the device rounds it with
    an unbounded exponent, then flushes. They differ only for exact products in
    ``[2**-126 - 2**-150, 2**-126 - 2**-151)`` (NumPy reaches 2**-126, the device
    does not), found in float64 (exact for 24 x 24 bits) and set to zero.
    """
    tiny = np.float32(2.0**-126)

    def flush(v):
        return np.where(np.abs(v) < tiny, np.copysign(np.float32(0), v), v)

    x = flush(np.asarray(a, dtype=np.uint32).view(np.float32))
    y = flush(np.asarray(b, dtype=np.uint32).view(np.float32))
    with np.errstate(all="ignore"):
        product = flush(x * y)
        exact = np.abs(x.astype(np.float64) * y.astype(np.float64))
    window = (exact >= 2.0**-126 - 2.0**-150) & (exact < 2.0**-126 - 2.0**-151)
    product = np.where(window, np.copysign(np.float32(0), product), product)
    return np.where(np.isnan(product), np.uint32(0x7FC00000), product.view(np.uint32))
