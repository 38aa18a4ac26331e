"""Bit-exact floating-point arithmetic of the device: bf16 products, fp32 sums, bf16 conversion.

The golden model's half of ``docs/numerics.md``; ``hw/fp.py`` is the same in
logic and ``tests/hw/test_fp.py`` checks that the two agree bit for bit. The
layouts and the canonical NaN are :data:`gradsync.spec.formats.BF16` and
:data:`~gradsync.spec.formats.FP32`.

Conventions
-----------
* Arguments and results are device words: IEEE bit patterns as integer
  arrays (``uint16`` for bf16, ``uint32`` for fp32), any shape, broadcast.
* Flush-to-zero: a subnormal input reads as a zero of its sign, a result
  below the smallest normal is written as a zero of its sign.
* Every NaN result is the canonical NaN; NumPy's own NaN bits are not kept.
* With both inputs normal, NumPy's ``float32`` operations round to nearest
  even exactly as the device does: a sum or a bf16 x bf16 product that lands
  below the smallest normal is exact there (both are multiples of
  ``2**-149``, or have 16 significant bits), so no rounding happens before
  the flush, and flushing NumPy's result is the device's result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gradsync.spec.formats import BF16, FP32, BFloat16Format

_MIN_NORMAL = np.float32(FP32.min_normal)
_FORMAT = BFloat16Format()


def _flush(x: np.ndarray) -> np.ndarray:
    """float32 values below the smallest normal -> zeros of the same sign."""
    return np.where(np.abs(x) < _MIN_NORMAL, np.copysign(np.float32(0), x), x)


def _fp32_values(words: np.ndarray | int) -> np.ndarray:
    return _flush(np.asarray(words, dtype=np.int64).astype(np.uint32).view(np.float32))


def _fp32_words(x: np.ndarray) -> np.ndarray:
    """float32 values -> fp32 words, flushed, NaNs canonical."""
    words = _flush(x).view(np.uint32)
    return np.where(np.isnan(x), np.uint32(FP32.canonical_nan), words).astype(np.uint32)


def bf16_to_fp32(a: np.ndarray | int) -> np.ndarray:
    """bf16 words -> fp32 words: exact widening; subnormals flushed, NaNs canonical."""
    wide = np.asarray(a, dtype=np.int64).astype(np.uint32) << np.uint32(16)
    return _fp32_words(wide.view(np.float32))


def bf16_mul_fp32(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """The PE's multiplier: bf16 words x bf16 words -> fp32 words of the exact product.

    Exact (8 x 8 significant bits fit fp32's 24) unless the product reaches
    ``2**128`` (infinity) or falls below ``2**-126`` (a zero of its sign).
    ``inf x 0`` and any NaN operand give the canonical NaN.
    """
    x = bf16_to_fp32(a).view(np.float32)
    y = bf16_to_fp32(b).view(np.float32)
    with np.errstate(all="ignore"):
        return _fp32_words(x * y)


def fp32_add(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """The accumulator's adder: fp32 words + fp32 words -> fp32 words, nearest-even.

    ``x + (-x)`` is ``+0``, ``-0 + -0`` is ``-0``, ``inf - inf`` and any NaN
    operand give the canonical NaN, overflow gives an infinity.
    """
    with np.errstate(all="ignore"):
        return _fp32_words(_fp32_values(a) + _fp32_values(b))


def reduce_add_fp32(local: np.ndarray, payload: np.ndarray) -> np.ndarray:
    """The NIC's reduce-add on receive in bf16: gradient-SRAM words + payload words.

    Both arguments hold 16-bit SRAM words, two per fp32 element, low half at the
    lower address (the gradient SRAM's layout, and a 32-bit packet word's: its
    bytes 0-1 are the low half).  Each element is ``fp32_add(local, payload)``
    (round to nearest even, flush-to-zero, canonical NaN); the result is SRAM
    words in the same layout, ``int64``.  The lanes are independent, so the
    order the receiver applies them in changes no bit.
    """
    local, payload = np.asarray(local), np.asarray(payload)
    if local.shape != payload.shape or local.size % 2:
        raise ValueError(
            f"reduce-add needs whole fp32 elements of equal length, not {local.size} local "
            f"and {payload.size} payload words"
        )
    total = fp32_add(_FORMAT.join_fp32(local), _FORMAT.join_fp32(payload))
    return _FORMAT.split_fp32(total)


def bf16_round_fp32(a: np.ndarray | int) -> np.ndarray:
    """``r(x)``: fp32 words rounded to bf16 precision (nearest even) and kept as fp32 words."""
    return bf16_to_fp32(fp32_to_bf16(a))


def bf16_exchange_apply(local: np.ndarray | None, payload: np.ndarray) -> np.ndarray:
    """The receiver of a bf16 gradient exchange (``docs/numerics.md``): fp32 words written.

    ``payload`` holds the packet's bf16 words (one per element), ``local`` the fp32 words
    of the window's source for a reduce-add, or None for a plain write.  With ``w =
    bf16_to_fp32(p)``: a plain write gives ``w``; a reduce-add ``r(fp32_add(r(g), w))``,
    ``r`` = :func:`bf16_round_fp32` (rounding the local operand and the sum keeps every
    replica's reduced gradient identical, whatever node adds first).
    """
    w = bf16_to_fp32(payload)
    if local is None:
        return w
    if np.shape(local) != np.shape(payload):
        raise ValueError(
            f"a bf16 reduce-add needs as many local as payload elements, not "
            f"{np.size(local)} and {np.size(payload)}"
        )
    return bf16_round_fp32(fp32_add(bf16_round_fp32(local), w))


def fp32_canonical(a: np.ndarray | int) -> np.ndarray:
    """fp32 words as the arithmetic reads them: subnormals -> signed zeros, NaNs canonical."""
    return _fp32_words(_fp32_values(a))


def fp32_mul(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """The vector unit's multiplier: fp32 words x fp32 words -> fp32 words, nearest-even.

    The float64 product of two fp32 values is exact (48 significant bits), so
    one rounding to 24 bits with the exponent unbounded is the device's
    (:meth:`BFloat16Format.quantize_fp32`): ``>= 2**128`` after rounding is an
    infinity, ``< 2**-126`` after rounding a zero of the product's sign
    (tininess after rounding). ``inf x 0`` and NaN operands give the canonical NaN.
    """
    with np.errstate(all="ignore"):  # NaN operands: the product is NaN, made canonical
        x = _fp32_values(a).astype(np.float64)
        y = _fp32_values(b).astype(np.float64)
        return _FORMAT.quantize_fp32(x * y).astype(np.uint32)


def fp32_to_bf16(a: np.ndarray | int) -> np.ndarray:
    """fp32 words -> bf16 words, round to nearest even (``ml_dtypes``); overflow to infinity.

    A subnormal input is flushed first; a normal fp32 never rounds to a bf16
    subnormal (the exponent range is the same). NaNs give the canonical bf16 NaN.
    """
    # imported here: ml_dtypes 0.7 takes about a second to import (its extension
    # registers its casts and ufunc loops), which every fixed-point run and every
    # simulator start would pay
    import ml_dtypes

    x = _fp32_values(a)
    with np.errstate(invalid="ignore"):  # NaNs: replaced below
        words = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    return np.where(np.isnan(x), np.uint16(BF16.canonical_nan), words).astype(np.uint16)


def dot_fp32(
    a: np.ndarray, b: np.ndarray, order: Sequence[int] | np.ndarray | None = None
) -> np.ndarray:
    """The PE's accumulation: fp32 word of ``sum_k a[..., k] * b[..., k]`` in the PE's order.

    ``a`` and ``b`` hold bf16 words with the inner dimension ``K`` last (other
    dimensions broadcast). The accumulator loads the product of ``order[0]``
    (it is not added to a zero), then adds the others one at a time in
    ``order`` (default ``0, 1, ..., K-1``, the order the array feeds a PE),
    each sum rounded as :func:`fp32_add` rounds it.
    """
    products = bf16_mul_fp32(a, b)
    k = products.shape[-1] if products.ndim else 0
    order = np.arange(k) if order is None else np.asarray(order, dtype=np.int64)
    if k == 0 or order.ndim != 1 or len(order) == 0 or not np.all((order >= 0) & (order < k)):
        raise ValueError(
            f"order must list indices of the inner dimension 0..{k - 1}, not {order.tolist()!r}"
        )
    acc = products[..., order[0]]
    for index in order[1:]:
        acc = fp32_add(acc, products[..., index])
    return acc


# --- the compute commands of the bf16 format ----------------------------------------------

_SIGN = np.uint32(0x8000_0000)


def _positive(words: np.ndarray) -> np.ndarray:
    """Canonical fp32 words: sign bit clear and not zero (a NaN is positive, -0 is not)."""
    return ((words & _SIGN) == 0) & (((words >> np.uint32(23)) & np.uint32(0xFF)) != 0)


def relu_fp32(x: np.ndarray) -> np.ndarray:
    """Vector op ``relu`` on fp32 words: ``x`` if positive, else ``+0`` (NaN stays NaN)."""
    c = fp32_canonical(x)
    return np.where(_positive(c), c, np.uint32(0)).astype(np.uint32)


def relu_backward_fp32(grad: np.ndarray, activation: np.ndarray) -> np.ndarray:
    """Vector op ``relu_bwd`` on fp32 words: ``grad`` where the activation is positive, else ``+0``."""
    positive = _positive(fp32_canonical(activation))
    return np.where(positive, fp32_canonical(grad), np.uint32(0)).astype(np.uint32)


def scale_fp32(x: np.ndarray, factor: int) -> np.ndarray:
    """Vector op ``scale``: ``x * factor`` (``factor`` an fp32 word), rounded once."""
    return fp32_mul(x, np.uint32(factor))


def sgd_fp32(weights: np.ndarray, grads: np.ndarray, lr: int) -> np.ndarray:
    """Vector op ``sgd`` on fp32 master weights: ``w + (-(lr * g))``, each step rounded.

    Not fused: the product is rounded to fp32, then the difference (the RTL's
    stage 1 and stage 2).
    """
    step = fp32_mul(grads, np.uint32(lr))
    return fp32_add(weights, step ^ _SIGN)


def gemm_bf16(
    a: np.ndarray, b: np.ndarray, *, trans_a: bool = False, trans_b: bool = False
) -> np.ndarray:
    """The GEMM command in bf16: fp32 words of ``op(a) @ op(b)`` for bf16 words ``a``, ``b``.

    Output-stationary: each result is one PE's accumulation over ``k = 0 .. K-1`` in
    order (:func:`dot_fp32`); the tiling never splits ``K``.
    """
    a = np.asarray(a).T if trans_a else np.asarray(a)
    b = np.asarray(b).T if trans_b else np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"GEMM shapes do not chain: {a.shape} @ {b.shape}")
    return dot_fp32(a[:, None, :], b.T[None, :, :])
