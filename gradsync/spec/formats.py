"""Number formats of the device: what an operand word means, defined once.

The RTL (``hw/``) takes its widths and rounding from these objects at
elaboration, the golden model (``model/numerics.py``) computes every device
result with them, and the firmware (``firmware/``) converts host values to and
from device words with :meth:`FixedPointFormat.quantize` /
:meth:`FixedPointFormat.dequantize` after reading the format back from the
``HW_FORMAT`` register (:meth:`FixedPointFormat.from_register`).

A format is a frozen dataclass with a ``name``, ``word_bytes``, ``to_dict``,
``quantize``/``dequantize`` and its ``HW_FORMAT`` encoding; a floating-point
format joins by providing the same (nothing here assumes integers beyond
:class:`FixedPointFormat` itself). :class:`BFloat16Format` (bf16 operands,
fp32 accumulator, gradients and master weights; ``docs/numerics.md``) is the
floating-point one, its bit layouts :data:`BF16` and :data:`FP32`; its
arithmetic is ``model/fp.py`` and ``hw/fp.py``. ``HW_FORMAT.family``
(:class:`~gradsync.spec.regmap.FormatFamily`) tells the two apart;
:func:`format_from_register` decodes either.

Both families expose the element sizes a memory plan needs: ``word_bytes``
(a scratchpad element: GEMM operands, activations, the weights' working copy)
and ``grad_bytes`` (a gradient-SRAM element: dW, reduced gradients and, in
bf16, the fp32 master weights). The SRAMs hold ``word_bits``-bit words in both
banks; an fp32 element is two of them, low half at the lower address.

Conventions of the fixed-point format
-------------------------------------
* Operands are two's-complement integers of ``total_bits`` bits holding the
  real value ``raw * 2**-frac_bits``; arrays of raw values are ``int64``.
* A GEMM accumulates exact products in an ``acc_bits``-wide accumulator that
  wraps; :meth:`FixedPointFormat.max_exact_k` is the longest inner dimension
  that cannot wrap, and the device refuses longer ones.
* Rounding ``"nearest-even"``: add half, and on an exact tie round to the even
  result. ``"truncate"``: arithmetic shift (round towards minus infinity).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from gradsync.spec import regmap as rm
from gradsync.spec.limits import LimitError

ROUNDING_MODES = ("nearest-even", "truncate")


def wrap(x: np.ndarray | int, bits: int) -> np.ndarray:
    """Two's-complement wrap of integers to ``bits`` bits."""
    x = np.asarray(x, dtype=np.int64)
    half = np.int64(1) << (bits - 1)
    return ((x + half) & ((np.int64(1) << bits) - 1)) - half


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

    #: Format family, as recorded in ``results.json`` and ``docs/outputs.md``.
    name = "fixed"
    family = rm.FormatFamily.FIXED
    #: Cycles from an operand pair at a PE's inputs to its sum in the accumulator.
    mac_latency_cycles = 1

    def __post_init__(self) -> None:
        if self.total_bits not in (8, 16, 32):
            raise LimitError("total_bits", self.total_bits, "8, 16 or 32")
        if not 0 <= self.frac_bits < self.total_bits:
            raise LimitError("frac_bits", self.frac_bits, f"in [0, {self.total_bits})")
        if not 2 * self.total_bits <= self.acc_bits <= 62:
            raise LimitError("acc_bits", self.acc_bits, f"in [{2 * self.total_bits}, 62]")
        if self.rounding not in ROUNDING_MODES:
            raise LimitError("rounding", self.rounding, f"one of {ROUNDING_MODES}")

    @property
    def word_bytes(self) -> int:
        """Bytes per operand word in device memory and on the link."""
        return self.total_bits // 8

    @property
    def word_bits(self) -> int:
        """Width of an SRAM word in bits (both banks)."""
        return self.total_bits

    @property
    def grad_bytes(self) -> int:
        """Bytes per gradient-SRAM element: an operand word, as in the scratchpad."""
        return self.word_bytes

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

    @property
    def max_exact_k(self) -> int:
        """Largest GEMM inner dimension K whose accumulation can never wrap the accumulator."""
        max_product = 1 << (2 * (self.total_bits - 1))  # |qmin * qmin|
        return ((1 << (self.acc_bits - 1)) - 1) // max_product

    def to_dict(self) -> dict:
        return asdict(self)

    # --- raw integers ------------------------------------------------------------

    def saturate_raw(self, x: np.ndarray | int) -> np.ndarray:
        """Clamp (or wrap, if ``saturate`` is false) integers to the operand range."""
        x = np.asarray(x, dtype=np.int64)
        if self.saturate:
            return np.clip(x, self.qmin, self.qmax)
        return wrap(x, self.total_bits)

    def quantize(self, values: np.ndarray | float) -> np.ndarray:
        """Real values -> raw operand integers (format rounding, then saturate)."""
        scaled = np.asarray(values, dtype=np.float64) * float(1 << self.frac_bits)
        raw = np.floor(scaled) if self.rounding == "truncate" else np.rint(scaled)
        raw = np.clip(raw, -(2.0**62), 2.0**62).astype(np.int64)
        return self.saturate_raw(raw)

    def dequantize(self, raw: np.ndarray | int) -> np.ndarray:
        """Raw operand integers -> float64 real values (exact)."""
        return np.asarray(raw, dtype=np.int64).astype(np.float64) * self.lsb

    def to_unsigned(self, raw: np.ndarray | int) -> np.ndarray:
        """Raw signed values -> unsigned memory words (as stored in device SRAM)."""
        return np.asarray(raw, dtype=np.int64) & ((np.int64(1) << self.total_bits) - 1)

    def from_unsigned(self, words: np.ndarray | int) -> np.ndarray:
        """Unsigned memory words -> raw signed values."""
        return wrap(words, self.total_bits)

    # --- the HW_FORMAT register ---------------------------------------------------

    def to_register(self) -> int:
        """The value of the read-only ``HW_FORMAT`` register of a device in this format."""
        return rm.reg("HW_FORMAT").pack(
            total_bits=self.total_bits,
            frac_bits=self.frac_bits,
            acc_bits=self.acc_bits,
            nearest_even=int(self.rounding == "nearest-even"),
            saturate=int(self.saturate),
        )

    @classmethod
    def from_register(cls, word: int) -> FixedPointFormat:
        """The format a device reports in ``HW_FORMAT`` (the firmware's view of the device)."""
        f = rm.reg("HW_FORMAT")
        family = f.field("family").get(word)
        if family != rm.FormatFamily.FIXED:
            raise ValueError(
                f"HW_FORMAT 0x{word:08X} is format family {family}, not fixed point "
                "(decode it with gradsync.spec.formats.format_from_register)"
            )
        return cls(
            total_bits=f.field("total_bits").get(word),
            frac_bits=f.field("frac_bits").get(word),
            acc_bits=f.field("acc_bits").get(word),
            rounding="nearest-even" if f.field("nearest_even").get(word) else "truncate",
            saturate=bool(f.field("saturate").get(word)),
        )


DEFAULT_FORMAT = FixedPointFormat()


# --- floating point: bf16 operands, fp32 accumulation -----------------------------------


@dataclass(frozen=True)
class FloatLayout:
    """Bit layout of an IEEE-754-style binary format: sign, ``exp_bits``, ``frac_bits``.

    The RTL (``hw/fp.py``) takes its field widths from these, the golden model
    (``model/fp.py``) its canonical NaN and smallest normal.
    """

    exp_bits: int
    frac_bits: int

    @property
    def width(self) -> int:
        """Bits of a word: sign + exponent + fraction."""
        return 1 + self.exp_bits + self.frac_bits

    @property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def exp_max(self) -> int:
        """The all-ones biased exponent of infinities and NaNs."""
        return (1 << self.exp_bits) - 1

    @property
    def inf(self) -> int:
        """Bits of +infinity (set the top bit for -infinity)."""
        return self.exp_max << self.frac_bits

    @property
    def canonical_nan(self) -> int:
        """The one NaN the device writes: positive, quiet bit set, payload zero."""
        return self.inf | (1 << (self.frac_bits - 1))

    @property
    def min_normal(self) -> float:
        """Smallest positive normal value; anything smaller is flushed to zero."""
        return 2.0 ** (1 - self.bias)


BF16 = FloatLayout(exp_bits=8, frac_bits=7)
FP32 = FloatLayout(exp_bits=8, frac_bits=23)


def _round_to_layout(values: np.ndarray | float, layout: FloatLayout) -> np.ndarray:
    """float64 -> words of ``layout``: one round-to-nearest-even, flush-to-zero, canonical NaN.

    The significand is rounded to ``frac_bits + 1`` bits with the exponent
    unbounded (integer arithmetic on the float64 bits, so there is no double
    rounding); a result of magnitude ``>= 2**(bias + 1)`` becomes infinity,
    one below ``min_normal`` a zero of the same sign.
    """
    x = np.array(values, dtype=np.float64, ndmin=1)
    bits = x.view(np.uint64)
    drop = np.uint64(52 - layout.frac_bits)
    lsb = (bits >> drop) & np.uint64(1)
    half = np.uint64(1) << (drop - np.uint64(1))
    mask = ~((np.uint64(1) << drop) - np.uint64(1))
    finite = np.isfinite(x)
    rounded = np.where(finite, (bits + half - np.uint64(1) + lsb) & mask, bits).view(np.float64)
    magnitude = np.abs(rounded)
    out_of_range = magnitude >= 2.0 ** (layout.bias + 1)
    rounded = np.where(out_of_range, np.copysign(np.inf, x), rounded)
    rounded = np.where(magnitude < layout.min_normal, np.copysign(0.0, x), rounded)
    words = rounded.astype(np.float32).view(np.uint32) >> np.uint32(32 - layout.width)
    words = np.where(np.isnan(x), layout.canonical_nan, words)
    return words.astype(np.uint16 if layout.width == 16 else np.uint32).reshape(np.shape(values))


def _words_to_float64(words: np.ndarray | int, layout: FloatLayout) -> np.ndarray:
    """Words of ``layout`` -> float64 (exact); subnormal words read as signed zeros."""
    w = np.asarray(words, dtype=np.int64).astype(np.uint32) << np.uint32(32 - layout.width)
    with np.errstate(invalid="ignore"):  # signalling NaNs stay NaNs
        x = w.view(np.float32).astype(np.float64)
    return np.where(np.abs(x) < layout.min_normal, np.copysign(0.0, x), x)


@dataclass(frozen=True)
class BFloat16Format:
    """bf16 operands with fp32 accumulation, fp32 gradients and fp32 master weights.

    The semantics (``docs/numerics.md``): bf16 x bf16 products exact in fp32,
    fp32 sums rounded to nearest even, subnormal inputs and outputs flushed to
    a zero of the same sign, overflow to infinity, one canonical NaN
    (:attr:`FloatLayout.canonical_nan`), fp32 -> bf16 rounded to nearest even.
    Device words are the IEEE bit patterns: ``uint16`` for bf16, ``uint32``
    for fp32.
    """

    #: Format family, as recorded in ``results.json``.
    name = "bf16"
    family = rm.FormatFamily.BF16
    #: SRAM word width in bits: one bf16 element; an fp32 element takes two words.
    total_bits = word_bits = 16
    #: Cycles from an operand pair at a PE's inputs to its sum (multiply, then add).
    mac_latency_cycles = 2
    operand = BF16
    accumulator = FP32
    #: Format of weight gradients in the gradient SRAM and of the SGD master weights.
    gradient = FP32
    master_weight = FP32
    rounding = "nearest-even"
    subnormals = "flush-to-zero"

    @property
    def word_bytes(self) -> int:
        """Bytes per operand (bf16) word in device memory."""
        return self.operand.width // 8

    @property
    def acc_bytes(self) -> int:
        """Bytes per accumulator / gradient / master-weight (fp32) word."""
        return self.accumulator.width // 8

    @property
    def grad_bytes(self) -> int:
        """Bytes per gradient-SRAM element: one fp32 value (two SRAM words)."""
        return self.gradient.width // 8

    def to_register(self) -> int:
        """The value of the read-only ``HW_FORMAT`` register of a bf16 device."""
        return rm.reg("HW_FORMAT").pack(
            total_bits=self.operand.width,
            frac_bits=self.operand.frac_bits,
            acc_bits=self.accumulator.width,
            nearest_even=1,
            saturate=0,
            family=self.family,
        )

    @classmethod
    def from_register(cls, word: int) -> BFloat16Format:
        """The format of a device whose ``HW_FORMAT`` reads ``word`` (must be bf16's value)."""
        fmt = cls()
        if word != fmt.to_register():
            raise ValueError(
                f"HW_FORMAT 0x{word:08X} is not the bf16 format's 0x{fmt.to_register():08X}"
            )
        return fmt

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "operand": "bf16",
            "accumulator": "fp32",
            "gradient": "fp32",
            "master_weight": "fp32",
            "rounding": self.rounding,
            "subnormals": self.subnormals,
        }

    # --- SRAM words, as the bulk port moves them ----------------------------------------

    def saturate_raw(self, words: np.ndarray | int) -> np.ndarray:
        """Host values -> SRAM words as the bulk port stores them: the low 16 bits.

        The SRAMs hold bit patterns (a bf16 word, or half of an fp32 value), so
        nothing saturates; the name is the fixed-point format's, for the bulk port.
        """
        return np.asarray(words, dtype=np.int64) & 0xFFFF

    def to_unsigned(self, words: np.ndarray | int) -> np.ndarray:
        """SRAM words as stored (``uint16`` bit patterns, held in ``int64``)."""
        return self.saturate_raw(words)

    def from_unsigned(self, words: np.ndarray | int) -> np.ndarray:
        """Stored SRAM words -> the values the host sees: the same bit patterns."""
        return self.saturate_raw(words)

    @staticmethod
    def split_fp32(words: np.ndarray) -> np.ndarray:
        """fp32 words -> the two SRAM words of each, low half first (gradient-SRAM layout)."""
        w = np.asarray(words, dtype=np.int64) & 0xFFFF_FFFF
        return np.stack([w & 0xFFFF, w >> 16], axis=-1).reshape(-1)

    @staticmethod
    def join_fp32(words: np.ndarray) -> np.ndarray:
        """SRAM words, low half first -> fp32 words (``uint32``)."""
        w = np.asarray(words, dtype=np.int64).reshape(-1, 2) & 0xFFFF
        return (w[:, 0] | (w[:, 1] << 16)).astype(np.uint32)

    def quantize(self, values: np.ndarray | float) -> np.ndarray:
        """Real values -> bf16 words (``uint16``), one round-to-nearest-even."""
        return _round_to_layout(values, self.operand)

    def dequantize(self, words: np.ndarray | int) -> np.ndarray:
        """bf16 words -> float64 values (exact)."""
        return _words_to_float64(words, self.operand)

    def quantize_fp32(self, values: np.ndarray | float) -> np.ndarray:
        """Real values -> fp32 words (``uint32``), one round-to-nearest-even."""
        return _round_to_layout(values, self.accumulator)

    def dequantize_fp32(self, words: np.ndarray | int) -> np.ndarray:
        """fp32 words -> float64 values (exact)."""
        return _words_to_float64(words, self.accumulator)


def format_from_register(word: int) -> FixedPointFormat | BFloat16Format:
    """The number format a device reports in ``HW_FORMAT``, whichever its family."""
    family = rm.reg("HW_FORMAT").field("family").get(word)
    if family == rm.FormatFamily.FIXED:
        return FixedPointFormat.from_register(word)
    if family == rm.FormatFamily.BF16:
        return BFloat16Format.from_register(word)
    raise ValueError(f"HW_FORMAT 0x{word:08X} has unknown format family {family}")


def is_float(fmt: FixedPointFormat | BFloat16Format) -> bool:
    """Whether ``fmt`` is the bf16 family: bf16 scratchpad words, fp32 gradients and masters."""
    return isinstance(fmt, BFloat16Format)


def format_name(fmt: FixedPointFormat | BFloat16Format) -> str:
    """``bf16``, or fixed point ``qI.F`` (I integer, F fractional bits), as ``--format`` spells it."""
    if is_float(fmt):
        return fmt.name
    return f"q{fmt.total_bits - fmt.frac_bits - 1}.{fmt.frac_bits}"
