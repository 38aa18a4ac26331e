"""Bit-exact fixed-point arithmetic of the gradsync device, as the golden model computes it.

Every arithmetic result the device produces (systolic-array GEMM, vector-unit
ops, the NIC's reduce-add on receive) is defined here with integer NumPy, so the
golden model, the firmware's expectations and the RTL block tests all compare
against the same functions.  See ``DESIGN.md`` ("Numerics").

Conventions
-----------
* The format (widths, rounding, saturation, host conversions) is
  :class:`gradsync.spec.formats.FixedPointFormat`; this module holds the
  operations.
* Operands are two's-complement integers of ``total_bits`` bits holding the
  real value ``raw * 2**-frac_bits``.  Arrays of raw values are ``int64``.
* A GEMM multiplies operands exactly (``2 * total_bits`` bit products with
  ``2 * frac_bits`` fractional bits) and accumulates them in an
  ``acc_bits``-wide two's-complement accumulator that *wraps* (plain adder);
  :attr:`~gradsync.spec.formats.FixedPointFormat.max_exact_k` gives the largest K for which wrap cannot occur and the
  device refuses larger K.  Because wrapping addition is associative, the
  accumulation order (which differs between a tiled array and NumPy) does not
  change a single bit.
* Write-back converts an accumulator to the operand format by an arithmetic
  right shift (``frac_bits`` plus an optional extra shift) with the format's
  rounding, then saturates to ``total_bits``.
* Rounding ``"nearest-even"``: add half, and on an exact tie round to the even
  result.  ``"truncate"``: arithmetic shift (round towards minus infinity).
"""

from __future__ import annotations

import numpy as np

from gradsync.model import fp
from gradsync.spec.formats import ROUNDING_MODES, BFloat16Format, FixedPointFormat, wrap


def _as_int(x: np.ndarray | int) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def saturate(x: np.ndarray | int, fmt: FixedPointFormat) -> np.ndarray:
    """Clamp (or wrap) to the operand range: ``FixedPointFormat.saturate_raw``."""
    return fmt.saturate_raw(x)


def round_shift(x: np.ndarray | int, shift: int, rounding: str) -> np.ndarray:
    """Arithmetic right shift by ``shift`` bits with the given rounding.

    ``nearest-even``: ``floor(x / 2**s + 1/2)`` except that exact ties go to the
    even neighbour.  Implemented with shifts and masks only, as the RTL does.
    """
    x = _as_int(x)
    if shift < 0:
        raise ValueError(f"shift must be >= 0, not {shift!r}")
    if shift == 0:
        return x.copy()
    floor = x >> shift
    if rounding == "truncate":
        return floor
    if rounding != "nearest-even":
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, not {rounding!r}")
    rem = x & ((np.int64(1) << shift) - 1)
    half = np.int64(1) << (shift - 1)
    up = (rem > half) | ((rem == half) & ((floor & 1) == 1))
    return floor + up.astype(np.int64)


def gemm_accumulate(a: np.ndarray, b: np.ndarray, fmt: FixedPointFormat) -> np.ndarray:
    """Exact accumulator contents of ``a @ b`` (raw operands), wrapped to ``acc_bits``."""
    a = _as_int(a)
    b = _as_int(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"GEMM shapes do not chain: {a.shape} @ {b.shape}")
    # Products fit 2*total_bits <= 64 bits; split the sum so int64 never overflows.
    k = a.shape[1]
    step = max(1, (1 << (62 - 2 * fmt.total_bits)))
    acc = np.zeros((a.shape[0], b.shape[1]))
    for k0 in range(0, k, step):
        acc = wrap(acc + a[:, k0 : k0 + step] @ b[k0 : k0 + step, :], fmt.acc_bits)
    return wrap(acc, fmt.acc_bits)


def write_back(acc: np.ndarray, fmt: FixedPointFormat, extra_shift: int = 0) -> np.ndarray:
    """Accumulator -> operand format: round-shift by ``frac_bits + extra_shift``, saturate."""
    return saturate(round_shift(acc, fmt.frac_bits + extra_shift, fmt.rounding), fmt)


def gemm(
    a: np.ndarray,
    b: np.ndarray,
    fmt: FixedPointFormat,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    extra_shift: int = 0,
) -> np.ndarray:
    """The device's GEMM command: ``op(a) @ op(b)`` with write-back rounding."""
    a = _as_int(a).T if trans_a else _as_int(a)
    b = _as_int(b).T if trans_b else _as_int(b)
    return write_back(gemm_accumulate(a, b, fmt), fmt, extra_shift)


def add_saturating(x: np.ndarray, y: np.ndarray, fmt: FixedPointFormat) -> np.ndarray:
    """Saturating element-wise add: the NIC's reduce-add on receive."""
    return saturate(_as_int(x) + _as_int(y), fmt)


def reduce_add(
    local: np.ndarray, payload: np.ndarray, fmt: FixedPointFormat | BFloat16Format
) -> np.ndarray:
    """The NIC's reduce-add on receive, in the format's gradient elements (SRAM words in/out).

    Fixed point: :func:`add_saturating` per word.  bf16: fp32 addition per pair of
    words (:func:`gradsync.model.fp.reduce_add_fp32`, ``docs/numerics.md``).
    """
    if isinstance(fmt, BFloat16Format):
        return fp.reduce_add_fp32(local, payload)
    return add_saturating(local, payload, fmt)


_BF16 = BFloat16Format()


def bf16_send_words(sram_words: np.ndarray) -> np.ndarray:
    """A ``DescFlag.BF16`` sender: gradient-SRAM words (two per fp32 element, low half
    first) -> the bf16 word of each element (``fp32_to_bf16``), ``int64``, in order.

    Packet word ``k`` then holds elements ``2k`` (bits 15:0) and ``2k + 1`` (bits 31:16).
    """
    return fp.fp32_to_bf16(_BF16.join_fp32(sram_words)).astype(np.int64)


def bf16_receive_words(local: np.ndarray | None, payload: np.ndarray) -> np.ndarray:
    """A ``DescFlag.BF16`` packet's receiver: gradient-SRAM words written (two per element).

    ``payload``: bf16 words; ``local``: the window source's SRAM words for a reduce-add,
    None for a plain write (:func:`gradsync.model.fp.bf16_exchange_apply` is the rule).
    """
    g = None if local is None else _BF16.join_fp32(local)
    return _BF16.split_fp32(fp.bf16_exchange_apply(g, np.asarray(payload).astype(np.uint16)))


def relu(x: np.ndarray) -> np.ndarray:
    """Vector op ``relu``: max(x, 0) on raw integers (exact in any format)."""
    x = _as_int(x)
    return np.where(x > 0, x, 0)


def relu_backward(grad: np.ndarray, activation: np.ndarray) -> np.ndarray:
    """Vector op ``relu_bwd``: pass ``grad`` where the forward activation was > 0."""
    return np.where(_as_int(activation) > 0, _as_int(grad), 0)


def scale(x: np.ndarray, factor_raw: int, fmt: FixedPointFormat) -> np.ndarray:
    """Vector op ``scale`` (requantise): ``sat(round_shift(x * factor, frac_bits))``.

    ``factor_raw`` is itself a value in the operand format.
    """
    return saturate(round_shift(_as_int(x) * int(factor_raw), fmt.frac_bits, fmt.rounding), fmt)


def requantize(x: np.ndarray, src: FixedPointFormat, dst: FixedPointFormat) -> np.ndarray:
    """Convert raw values from one format to another (shift with rounding, saturate)."""
    x = _as_int(x)
    d = src.frac_bits - dst.frac_bits
    shifted = round_shift(x, d, dst.rounding) if d >= 0 else x << (-d)
    return saturate(shifted, dst)


def sgd_update(
    weights: np.ndarray, grads: np.ndarray, lr_raw: int, fmt: FixedPointFormat
) -> np.ndarray:
    """Vector op ``sgd``: ``w - lr * g`` in exact integer steps.

    1. ``p = lr_raw * g``                      (exact, ``2 * frac_bits`` fraction bits)
    2. ``step = round_shift(p, frac_bits)``    (format rounding)
    3. ``w' = saturate(w - step)``
    """
    step = round_shift(_as_int(grads) * int(lr_raw), fmt.frac_bits, fmt.rounding)
    return saturate(_as_int(weights) - step, fmt)
