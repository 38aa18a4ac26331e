"""The NIC's reduce-add on receive in bf16: fp32 lanes against NumPy float32 with flush-to-zero.

``gradsync.model.numerics.reduce_add`` takes gradient-SRAM words (two per fp32
element, low half first: a 32-bit packet word's layout). The reference here
shares no code with ``model/fp.py``: the words are joined by hand, both
operands are flushed (subnormal -> zero of its sign), added in NumPy float32
(round to nearest even), the sum flushed, every NaN made ``0x7FC00000``
(``docs/numerics.md``, "Rules" and "The NIC's reduce-add").
"""

from __future__ import annotations

import numpy as np
import pytest

from gradsync.model import numerics as nx
from gradsync.spec.formats import BFloat16Format, FixedPointFormat

BF16 = BFloat16Format()
NAN = 0x7FC0_0000


def words_of(fp32_words: np.ndarray) -> np.ndarray:
    """fp32 words -> SRAM words, low half first (by hand, not with split_fp32)."""
    w = np.asarray(fp32_words, dtype=np.uint64)
    out = np.empty(2 * w.size, dtype=np.int64)
    out[0::2] = (w & 0xFFFF).astype(np.int64)
    out[1::2] = (w >> 16).astype(np.int64)
    return out


def fp32_of(sram_words: np.ndarray) -> np.ndarray:
    w = np.asarray(sram_words, dtype=np.int64)
    return (w[0::2] | (w[1::2] << 16)).astype(np.uint32)


def reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """fp32 words: NumPy float32 addition with the inputs and the output flushed."""
    tiny = np.float32(2.0**-126)

    def ftz(x: np.ndarray) -> np.ndarray:
        return np.where(np.abs(x) < tiny, np.copysign(np.float32(0), x), x)

    x = ftz(np.asarray(a, dtype=np.uint32).view(np.float32))
    y = ftz(np.asarray(b, dtype=np.uint32).view(np.float32))
    with np.errstate(all="ignore"):
        s = ftz(x + y)
    return np.where(np.isnan(s), np.uint32(NAN), s.view(np.uint32)).astype(np.uint32)


def device(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """fp32 words of the model's reduce-add of local ``a`` and payload ``b``."""
    return fp32_of(nx.reduce_add(words_of(a), words_of(b), BF16))


def f(x: float) -> int:
    return int(np.float32(x).view(np.uint32))


# (local, payload, expected sum), fp32 words worked out by hand
HAND = [
    (f(1.0), f(2.0**-24), f(1.0)),  # tie between 1 and 1 + 2**-23: to even, down
    (f(1.0 + 2.0**-23), f(2.0**-24), f(1.0 + 2.0**-22)),  # tie, odd LSB: up
    (f(1.0), f(2.0**-24 + 2.0**-40), f(1.0 + 2.0**-23)),  # just above the tie: up
    (f(-1.0), f(-(2.0**-24)), f(-1.0)),  # negative tie: to even
    (f(1.5), f(-1.5), 0x0000_0000),  # exact cancellation: +0
    (f(-1.5), f(1.5), 0x0000_0000),  # either order: +0
    (0x0000_0000, 0x8000_0000, 0x0000_0000),  # +0 + -0 = +0
    (0x8000_0000, 0x8000_0000, 0x8000_0000),  # -0 + -0 = -0
    (0x8000_0000, f(3.0), f(3.0)),  # -0 + x = x
    (f(1.0 + 2.0**-23), f(-1.0), f(2.0**-23)),  # cancellation, exact
    (f(1.5 * 2.0**-126), f(-(2.0**-126)), 0x0000_0000),  # 2**-127 flushed, sign +
    (f(-1.5 * 2.0**-126), f(2.0**-126), 0x8000_0000),  # -2**-127 flushed, sign -
    (0x0000_0001, f(1.0), f(1.0)),  # subnormal input reads as +0
    (0x807F_FFFF, 0x0000_0000, 0x0000_0000),  # -subnormal + +0 = -0 + +0 = +0
    (0x807F_FFFF, 0x8000_0000, 0x8000_0000),  # -subnormal + -0 = -0
    (0x7F7F_FFFF, 0x7F7F_FFFF, 0x7F80_0000),  # overflow: +inf
    (0xFF7F_FFFF, 0xFF7F_FFFF, 0xFF80_0000),  # overflow: -inf
    (0x7F80_0000, f(-1e38), 0x7F80_0000),  # inf + finite
    (0x7F80_0000, 0xFF80_0000, NAN),  # inf - inf: canonical NaN
    (0xFFC1_2345, f(1.0), NAN),  # NaN with payload and sign: canonical
]


@pytest.mark.parametrize(("a", "b", "want"), HAND)
def test_reduce_add_by_hand(a, b, want):
    got = int(device(np.array([a], np.uint32), np.array([b], np.uint32))[0])
    assert got == want, f"0x{a:08x} + 0x{b:08x} = 0x{got:08x}, want 0x{want:08x}"
    assert int(reference(np.array([a]), np.array([b]))[0]) == want  # the reference agrees


def random_pairs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random words, half of them with nearby exponents (cancellation, ties), specials mixed in."""
    a = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    b = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    near = rng.random(n) < 0.5  # b within a few binades of -a or a: cancellation, rounding
    shift = rng.integers(-3, 4, n).astype(np.int64)
    sign = rng.integers(0, 2, n).astype(np.uint32) << np.uint32(31)
    exp = np.clip(((a >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int64) + shift, 0, 255)
    frac = (a & np.uint32(0x7FFFFF)) ^ rng.integers(0, 64, n).astype(np.uint32)
    b = np.where(near, sign | (exp.astype(np.uint32) << np.uint32(23)) | frac, b)
    specials = np.array(
        [0, 0x8000_0000, 1, 0x807F_FFFF, 0x0080_0000, 0x7F7F_FFFF, 0x7F80_0000, 0xFF80_0000]
        + [0x7FC0_0000, 0xFFFF_FFFF],
        dtype=np.uint32,
    )
    pick = rng.random(n) < 0.02
    a = np.where(pick, rng.choice(specials, n), a)
    return a, b


def test_reduce_add_matches_numpy_float32_with_flush_to_zero():
    rng = np.random.default_rng(18)
    a, b = random_pairs(rng, 1 << 18)
    got, want = device(a, b), reference(a, b)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, [f"0x{a[i]:08x}+0x{b[i]:08x}" for i in bad[:5]]
    # the sample exercises what the rules are about
    with np.errstate(all="ignore"):
        x, y = a.view(np.float32), b.view(np.float32)
        rounded = x.astype(np.float64) + y.astype(np.float64) != (x + y).astype(np.float64)
    assert np.count_nonzero(rounded) > 10_000  # sums that round
    assert np.count_nonzero((want & 0x7FFF_FFFF) == 0) > 100  # zeros (cancellation, flushes)
    assert np.count_nonzero(want == NAN) > 100


def test_reduce_add_keeps_fixed_point_saturating():
    fmt = FixedPointFormat()
    local = np.array([32000, -32000, 5, -7], dtype=np.int64)
    payload = np.array([1000, -1000, 6, 3], dtype=np.int64)
    np.testing.assert_array_equal(nx.reduce_add(local, payload, fmt), [32767, -32768, 11, -4])


def test_reduce_add_refuses_half_elements():
    with pytest.raises(ValueError, match="whole fp32 elements.*3 local and 3 payload"):
        nx.reduce_add(np.zeros(3, np.int64), np.zeros(3, np.int64), BF16)
