"""Floating-point arithmetic blocks: bf16 x bf16 -> fp32 multiplier, fp32 adder, bf16 MAC PE.

The RTL half of ``docs/numerics.md``; ``model/fp.py`` computes the same words
and ``tests/hw/test_fp.py`` checks them bit for bit. Words are IEEE bit
patterns (unsigned 16-bit bf16, unsigned 32-bit fp32); field widths and the
canonical NaN come from :data:`gradsync.spec.formats.BF16` and
:data:`~gradsync.spec.formats.FP32`. Subnormal inputs read as zeros of their
sign, results below the smallest normal are written as zeros of their sign,
every NaN result is the canonical NaN.

The arithmetic is written as functions that add combinational logic to a
module (``bf16_mul``, ``fp32_mul``, ``fp32_add``, ``fp32_to_bf16``, ``bf16_to_fp32``,
``fp32_canonical``), so the vector unit and
the NIC's reduce-add can use them in their own data paths; the components
below wrap them for the array and for the block tests.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from gradsync.spec.formats import BF16, FP32, BFloat16Format, FloatLayout


class _Fields:
    """Sign, biased exponent and fraction of a word, and its class under flush-to-zero."""

    def __init__(self, word, layout: FloatLayout):
        f = layout.frac_bits
        self.sign = word[layout.width - 1]
        self.exp = word[f : f + layout.exp_bits]
        self.frac = word[:f]
        self.magnitude = word[: layout.width - 1]
        top = self.exp == layout.exp_max
        self.nan = top & (self.frac != 0)
        self.inf = top & (self.frac == 0)
        self.zero = self.exp == 0  # zeros and (flushed) subnormals


def _signed(exp):
    """A biased exponent as a signed value, so that subtracting below zero stays negative."""
    return Cat(exp, Const(0, 2)).as_signed()


def _pack(sign, exp, frac, *, zero, inf, nan) -> Mux:
    """An fp32 word from fields, overridden by the special results (``nan`` first)."""
    return Mux(
        nan,
        Const(FP32.canonical_nan, 32),
        Mux(inf, Cat(Const(0, 23), Const(FP32.exp_max, 8), sign),
            Mux(zero, Cat(Const(0, 31), sign), Cat(frac, exp[:8], sign))),
    )  # fmt: skip


def bf16_mul(m: Module, a, b, name: str) -> Signal:
    """fp32 word of the exact product of bf16 words ``a`` and ``b`` (combinational).

    An 8 x 8 bit significand multiply; the product is shifted into place, never
    rounded. Exponent ``>= 255`` gives an infinity, ``<= 0`` a zero of the
    product's sign.
    """
    x, y = _Fields(a, BF16), _Fields(b, BF16)
    sign = x.sign ^ y.sign
    product = Signal(16, name=f"{name}_sig")
    exp = Signal(signed(11), name=f"{name}_exp")
    out = Signal(32, name=name)
    m.d.comb += product.eq(Cat(x.frac, 1) * Cat(y.frac, 1))  # in [2**14, 2**16)
    top = product[15]
    frac = Mux(top, Cat(Const(0, 8), product[:15]), Cat(Const(0, 9), product[:14]))
    m.d.comb += [
        exp.eq(_signed(x.exp) + _signed(y.exp) + (FP32.bias - 2 * BF16.bias) + top),
        out.eq(_pack(sign, exp, frac,
                     nan=x.nan | y.nan | (x.inf & y.zero) | (x.zero & y.inf),
                     inf=x.inf | y.inf | (exp >= FP32.exp_max),
                     zero=x.zero | y.zero | (exp <= 0))),
    ]  # fmt: skip
    return out


def fp32_mul(m: Module, a, b, name: str) -> Signal:
    """fp32 word of ``a * b`` rounded to nearest even (combinational): scale and SGD.

    A 24 x 24 bit significand multiply, normalised by one bit and rounded once
    with guard and sticky bits. Range checks follow the rounding (tininess after
    rounding, as on x86): a rounded exponent ``>= 255`` gives an infinity,
    ``<= 0`` a zero of the product's sign. ``inf x 0`` and NaN operands give
    the canonical NaN.
    """
    x, y = _Fields(a, FP32), _Fields(b, FP32)
    sign = x.sign ^ y.sign
    product = Signal(48, name=f"{name}_sig")
    m.d.comb += product.eq(Cat(x.frac, 1) * Cat(y.frac, 1))  # in [2**46, 2**48)
    top = product[47]
    norm = Mux(top, product, product << 1)  # leading one at bit 47
    up = norm[23] & (norm[:23].any() | norm[24])  # guard & (sticky | lsb)
    rounded = Signal(25, name=f"{name}_rounded")
    exp = Signal(signed(11), name=f"{name}_exp")
    m.d.comb += [
        rounded.eq(norm[24:48] + up),
        exp.eq(_signed(x.exp) + _signed(y.exp) - FP32.bias + top + rounded[24]),
    ]
    out = Signal(32, name=name)
    m.d.comb += out.eq(_pack(sign, exp, rounded[:23],
                             nan=x.nan | y.nan | (x.inf & y.zero) | (x.zero & y.inf),
                             inf=x.inf | y.inf | (exp >= FP32.exp_max),
                             zero=x.zero | y.zero | (exp <= 0)))  # fmt: skip
    return out


def fp32_canonical(m: Module, a, name: str) -> Signal:
    """fp32 word ``a`` as the arithmetic reads it: a subnormal becomes a zero of its sign,
    a NaN the canonical NaN (combinational)."""
    x = _Fields(a, FP32)
    out = Signal(32, name=name)
    m.d.comb += out.eq(Mux(x.nan, FP32.canonical_nan, Mux(x.zero, a & 0x8000_0000, a)))
    return out


def leading_zeros(m: Module, value, name: str) -> Signal:
    """Count of leading zeros of ``value`` (a balanced tree; ``len(value)`` when zero)."""
    width = 1 << max(1, (len(value) - 1).bit_length())
    padded = Cat(Const(0, width - len(value)), value)  # zeros below keep the count

    def tree(bits):  # -> (all zero, count of leading zeros when not all zero)
        if len(bits) == 2:
            return ~(bits[0] | bits[1]), ~bits[1]
        half = len(bits) // 2
        lo_zero, lo_count = tree(bits[:half])
        hi_zero, hi_count = tree(bits[half:])
        return lo_zero & hi_zero, Mux(hi_zero, Cat(lo_count, 1), Cat(hi_count, 0))

    zero, count = tree(padded)
    out = Signal(range(len(value) + 1), name=name)
    m.d.comb += out.eq(Mux(zero, len(value), count))
    return out


def fp32_add(m: Module, a, b, name: str) -> Signal:
    """fp32 word of ``a + b`` rounded to nearest even (combinational).

    The larger magnitude ``L`` and the smaller ``S`` are found by one compare;
    S's significand is aligned with guard, round and sticky bits, added or
    subtracted, normalised by a leading-zero count and rounded. A cancellation
    to zero gives ``+0``; a result below the smallest normal is a zero of L's
    sign (with normal inputs such a result is exact: no rounding precedes the
    flush).
    """
    swap = a[:31] < b[:31]
    big, small = _Fields(Mux(swap, b, a), FP32), _Fields(Mux(swap, a, b), FP32)
    x, y = _Fields(a, FP32), _Fields(b, FP32)
    g = 3  # guard, round, sticky
    n = 24 + g
    sig_big = Cat(Const(0, g), big.frac, 1)
    shift = Signal(range(n + 1), name=f"{name}_align")
    diff = big.exp - small.exp
    m.d.comb += shift.eq(Mux(diff > n, n, diff))
    wide = Signal(2 * n, name=f"{name}_wide")  # aligned S above, the bits shifted out below
    m.d.comb += wide.eq(Cat(Const(0, n), Const(0, g), small.frac, 1) >> shift)
    sig_small = wide[n:] | (wide[:n] != 0)  # the sticky bit joins the lowest bit

    total = Signal(n + 1, name=f"{name}_total")
    m.d.comb += total.eq(Mux(big.sign ^ small.sign, sig_big - sig_small, sig_big + sig_small))
    zeros = leading_zeros(m, total[:n], f"{name}_lz")
    norm = Signal(n, name=f"{name}_norm")  # leading one at the top bit
    exp = Signal(signed(10), name=f"{name}_exp")
    carry = total[n]
    m.d.comb += [
        norm.eq(Mux(carry, Cat(total[0] | total[1], total[2:]), (total[:n] << zeros)[:n])),
        exp.eq(Mux(carry, _signed(big.exp) + 1, _signed(big.exp) - zeros)),
    ]
    up = norm[g - 1] & (norm[: g - 1].any() | norm[g])  # round to nearest, ties to even
    rounded = Signal(25, name=f"{name}_rounded")
    final_exp = Signal(signed(10), name=f"{name}_final_exp")
    m.d.comb += [rounded.eq(norm[g:] + up), final_exp.eq(exp + rounded[24])]

    out = Signal(32, name=name)
    with m.If(x.nan | y.nan | (x.inf & y.inf & (x.sign != y.sign))):
        m.d.comb += out.eq(FP32.canonical_nan)
    with m.Elif(x.inf | y.inf):
        m.d.comb += out.eq(Cat(Const(0, 23), Const(FP32.exp_max, 8), big.sign))
    with m.Elif(x.zero & y.zero):
        m.d.comb += out.eq(Cat(Const(0, 31), x.sign & y.sign))
    with m.Elif(y.zero):
        m.d.comb += out.eq(a)
    with m.Elif(x.zero):
        m.d.comb += out.eq(b)
    with m.Elif(total == 0):  # x + (-x) = +0
        m.d.comb += out.eq(0)
    with m.Else():
        m.d.comb += out.eq(_pack(big.sign, final_exp, rounded[:23], nan=Const(0),
                                 inf=final_exp >= FP32.exp_max, zero=exp <= 0))  # fmt: skip
    return out


def fp32_to_bf16(m: Module, a, name: str) -> Signal:
    """bf16 word of fp32 word ``a`` rounded to nearest even (combinational).

    Rounding adds to the top 16 bits, so a carry out of the fraction raises
    the exponent and one out of the largest finite value gives infinity.
    """
    x = _Fields(a, FP32)
    drop = FP32.frac_bits - BF16.frac_bits
    half = 1 << (drop - 1)
    low = a[:drop]
    up = (low > half) | ((low == half) & a[drop])
    out = Signal(16, name=name)
    with m.If(x.nan):
        m.d.comb += out.eq(BF16.canonical_nan)
    with m.Elif(x.zero):
        m.d.comb += out.eq(Cat(Const(0, 15), x.sign))
    with m.Else():  # infinities stay: their low bits are zero
        m.d.comb += out.eq(a[drop:] + up)
    return out


def bf16_to_fp32(m: Module, a, name: str) -> Signal:
    """fp32 word of bf16 word ``a`` (combinational): exact, the word shifted up 16 bits.

    A subnormal reads as a zero of its sign; a NaN gives the canonical NaN.
    """
    x = _Fields(a, BF16)
    widened = Cat(Const(0, 16), Mux(x.zero, a & 0x8000, a))
    out = Signal(32, name=name)
    m.d.comb += out.eq(Mux(x.nan, FP32.canonical_nan, widened))
    return out


class Bf16Multiplier(wiring.Component):
    """Combinational bf16 x bf16 -> fp32 multiplier (:func:`bf16_mul`).

    Attributes
    ----------
    a, b : In(16)
        bf16 words.
    product : Out(32)
        fp32 word of the exact product (``model.fp.bf16_mul_fp32``).
    """

    a: In(16)
    b: In(16)
    product: Out(32)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.product.eq(bf16_mul(m, self.a, self.b, "p"))
        return m


class Fp32Adder(wiring.Component):
    """Combinational fp32 adder, round to nearest even (:func:`fp32_add`).

    Attributes
    ----------
    a, b : In(32)
        fp32 words.
    total : Out(32)
        fp32 word of the sum (``model.fp.fp32_add``).
    """

    a: In(32)
    b: In(32)
    total: Out(32)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.total.eq(fp32_add(m, self.a, self.b, "s"))
        return m


class Fp32Multiplier(wiring.Component):
    """Combinational fp32 multiplier, round to nearest even (:func:`fp32_mul`).

    Attributes
    ----------
    a, b : In(32)
        fp32 words.
    product : Out(32)
        fp32 word of the product (``model.fp.fp32_mul``).
    """

    a: In(32)
    b: In(32)
    product: Out(32)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.product.eq(fp32_mul(m, self.a, self.b, "p"))
        return m


class Fp32ToBf16(wiring.Component):
    """Combinational fp32 -> bf16 converter, round to nearest even (:func:`fp32_to_bf16`).

    Attributes
    ----------
    a : In(32)
        fp32 word.
    y : Out(16)
        bf16 word (``model.fp.fp32_to_bf16``).
    """

    a: In(32)
    y: Out(16)

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.y.eq(fp32_to_bf16(m, self.a, "c"))
        return m


class Bf16ProcessingElement(wiring.Component):
    """bf16 multiply, fp32 accumulate: the systolic array's PE in the bf16 format.

    The ports are those of :class:`gradsync.hw.pe.ProcessingElement` with
    16-bit bf16 operands and a 32-bit fp32 accumulator (words, unsigned).

    Attributes
    ----------
    a_in, b_in : In(16)
        bf16 operands from the left and upper neighbour.
    valid_in, first_in, last_in : In(1)
        Control travelling with A: a product to accumulate; the first of an
        accumulation (the accumulator loads the product instead of adding
        it); the last (the sum goes to ``result``).
    a_out, b_out, valid_out, first_out, last_out : Out
        The inputs, registered (the neighbours' inputs one cycle later).
    acc : Out(32)
        The running fp32 accumulator.
    result, result_valid : Out(32), Out(1)
        The finished sum (a shadow register) and a one-cycle pulse.

    Behaviour
    ---------
    Two stages, one operand pair accepted every cycle: the product of a pair
    presented in cycle t is registered at the end of t (stage 1) and added to
    the accumulator at the end of t+1 (stage 2), so ``acc`` and, for a last
    pair, ``result``/``result_valid`` show it in cycle t+2 — one cycle later
    than the fixed-point PE. The add is a single-cycle loop, so products
    are summed one at a time in arrival order: ``model.fp.dot_fp32``.
    """

    #: Cycles from a pair at the inputs to its sum in ``acc``.
    LATENCY = BFloat16Format.mac_latency_cycles

    a_in: In(16)
    b_in: In(16)
    valid_in: In(1)
    first_in: In(1)
    last_in: In(1)
    a_out: Out(16)
    b_out: Out(16)
    valid_out: Out(1)
    first_out: Out(1)
    last_out: Out(1)
    acc: Out(32)
    result: Out(32)
    result_valid: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += [
            self.a_out.eq(self.a_in),
            self.b_out.eq(self.b_in),
            self.valid_out.eq(self.valid_in),
            self.first_out.eq(self.first_in),
            self.last_out.eq(self.last_in),
            self.result_valid.eq(0),
        ]
        # Stage 1: the product, with its control.
        product = Signal(32)
        valid, first, last = Signal(), Signal(), Signal()
        m.d.sync += [
            product.eq(bf16_mul(m, self.a_in, self.b_in, "mul")),
            valid.eq(self.valid_in),
            first.eq(self.first_in),
            last.eq(self.last_in),
        ]
        # Stage 2: accumulate.
        total = fp32_add(m, self.acc, product, "add")
        new = Mux(first, product, total)
        with m.If(valid):
            m.d.sync += self.acc.eq(new)
            with m.If(last):
                m.d.sync += [self.result.eq(new), self.result_valid.eq(1)]
        return m
