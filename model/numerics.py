"""Bit-exact fixed-point numerics of the gradsync device: the single source of truth.

Every arithmetic result the device produces (systolic-array GEMM, vector-unit
ops, the NIC's reduce-add on receive) is defined here with integer NumPy, so the
golden model, the firmware's expectations and the RTL block tests all compare
against the same functions.  See ``DESIGN.md`` ("Numerics").

Conventions
-----------
* Operands are two's-complement integers of ``total_bits`` bits holding the
  real value ``raw * 2**-frac_bits``.  Arrays of raw values are ``int64``.
* A GEMM multiplies operands exactly (``2 * total_bits`` bit products with
  ``2 * frac_bits`` fractional bits) and accumulates them in an
  ``acc_bits``-wide two's-complement accumulator that *wraps* (plain adder);
  :func:`max_exact_k` gives the largest K for which wrap cannot occur and the
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

from dataclasses import asdict, dataclass

import numpy as np

ROUNDING_MODES = ("nearest-even", "truncate")


@dataclass(frozen=True)
class FixedPointFormat:
    """A signed fixed-point operand format and its accumulator.

    Parameters
    ----------
    total_bits:
        Operand width in bits (8, 16 or 32; memory words hold one operand).
    frac_bits:
        Fractional bits of an operand.
    acc_bits:
        Accumulator width of a processing element, at least ``2 * total_bits``.
    rounding:
        ``"nearest-even"`` or ``"truncate"``, used by every right shift.
    saturate:
        Clamp results to the operand range on write-back, reduce-add and
        update; if false, results wrap modulo ``2**total_bits``.
    """

    total_bits: int = 16
    frac_bits: int = 10
    acc_bits: int = 40
    rounding: str = "nearest-even"
    saturate: bool = True

    def __post_init__(self) -> None:
        if self.total_bits not in (8, 16, 32):
            raise ValueError(f"total_bits must be 8, 16 or 32, not {self.total_bits!r}")
        if not 0 <= self.frac_bits < self.total_bits:
            raise ValueError(f"frac_bits must be in [0, {self.total_bits}), not {self.frac_bits!r}")
        if not 2 * self.total_bits <= self.acc_bits <= 62:
            raise ValueError(
                f"acc_bits must be in [{2 * self.total_bits}, 62], not {self.acc_bits!r}"
            )
        if self.rounding not in ROUNDING_MODES:
            raise ValueError(f"rounding must be one of {ROUNDING_MODES}, not {self.rounding!r}")

    @property
    def word_bytes(self) -> int:
        """Bytes per operand word in device memory and on the link."""
        return self.total_bits // 8

    @property
    def qmin(self) -> int:
        return -(1 << (self.total_bits - 1))

    @property
    def qmax(self) -> int:
        return (1 << (self.total_bits - 1)) - 1

    @property
    def lsb(self) -> float:
        """Real value of one least-significant bit."""
        return 2.0**-self.frac_bits

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_FORMAT = FixedPointFormat()


def _as_int(x: np.ndarray | int) -> np.ndarray:
    return np.asarray(x, dtype=np.int64)


def wrap(x: np.ndarray | int, bits: int) -> np.ndarray:
    """Two's-complement wrap of integers to ``bits`` bits."""
    x = _as_int(x)
    half = np.int64(1) << (bits - 1)
    return ((x + half) & ((np.int64(1) << bits) - 1)) - half


def saturate(x: np.ndarray | int, fmt: FixedPointFormat) -> np.ndarray:
    """Clamp (or wrap, if ``fmt.saturate`` is false) to the operand range."""
    x = _as_int(x)
    if fmt.saturate:
        return np.clip(x, fmt.qmin, fmt.qmax)
    return wrap(x, fmt.total_bits)


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


def quantize(values: np.ndarray | float, fmt: FixedPointFormat) -> np.ndarray:
    """Real values -> raw operand integers (round to nearest even, then saturate)."""
    scaled = np.asarray(values, dtype=np.float64) * float(1 << fmt.frac_bits)
    if fmt.rounding == "truncate":
        raw = np.floor(scaled)
    else:
        raw = np.rint(scaled)  # IEEE round-half-to-even
    raw = np.clip(raw, -(2.0**62), 2.0**62).astype(np.int64)
    return saturate(raw, fmt)


def dequantize(raw: np.ndarray | int, fmt: FixedPointFormat) -> np.ndarray:
    """Raw operand integers -> float64 real values (exact)."""
    return _as_int(raw).astype(np.float64) * fmt.lsb


def max_exact_k(fmt: FixedPointFormat) -> int:
    """Largest inner dimension K whose accumulation can never wrap the accumulator."""
    max_product = 1 << (2 * (fmt.total_bits - 1))  # |qmin * qmin|
    return ((1 << (fmt.acc_bits - 1)) - 1) // max_product


def gemm_accumulate(a: np.ndarray, b: np.ndarray, fmt: FixedPointFormat) -> np.ndarray:
    """Exact accumulator contents of ``a @ b`` (raw operands), wrapped to ``acc_bits``."""
    a = _as_int(a)
    b = _as_int(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"GEMM shapes do not chain: {a.shape} @ {b.shape}")
    # Products fit 2*total_bits <= 64 bits; split the sum so int64 never overflows.
    k = a.shape[1]
    step = max(1, (1 << (62 - 2 * fmt.total_bits)))
    acc = np.zeros((a.shape[0], b.shape[1]), dtype=np.int64)
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


def to_unsigned(raw: np.ndarray, fmt: FixedPointFormat) -> np.ndarray:
    """Raw signed values -> unsigned memory words (as stored in device SRAM)."""
    return _as_int(raw) & ((np.int64(1) << fmt.total_bits) - 1)


def from_unsigned(words: np.ndarray, fmt: FixedPointFormat) -> np.ndarray:
    """Unsigned memory words -> raw signed values."""
    return wrap(_as_int(words), fmt.total_bits)
