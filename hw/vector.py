"""Vector unit: relu, relu-backward mask, requantise (scale) and SGD update, L lanes per cycle.

:class:`VectorUnit` is the fixed-point unit, :class:`Fp32VectorUnit` the bf16
format's (fp32 arithmetic, ``hw/fp.py``); both have the same ports, widths aside,
and the same pipeline depth.

``DESIGN.md`` ("One node"): the element-wise half of the compute engine. The
arithmetic is ``model.numerics`` (``relu``, ``relu_backward``, ``scale``,
``sgd_update``) bit for bit; the pipeline depth is
``gradsync.spec.timing.VECTOR_PIPELINE_CYCLES``; rounding and saturation
come from ``hw/arith.py``, shared with the GEMM write-back and the NIC.
"""

from __future__ import annotations

import enum

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from gradsync.spec.formats import ROUNDING_MODES

from .arith import round_shift, saturate
from .fp import fp32_add, fp32_canonical, fp32_mul


class VectorOp(enum.IntEnum):
    """Operation select of :class:`VectorUnit` (the sequencer maps opcodes onto it)."""

    RELU = 0  #: out = x > 0 ? x : 0
    RELU_BWD = 1  #: out = y > 0 ? x : 0   (x: gradient, y: forward activation)
    SCALE = 2  #: out = sat(round_shift(x * arg, frac_bits))
    SGD = 3  #: out = sat(x - round_shift(arg * y, frac_bits))


def _ports(word, arg_shape, lanes: int) -> dict:
    """The vector unit's ports (both number formats): an operation on ``lanes`` lanes of
    ``word`` operands with an argument of ``arg_shape``, a result three cycles later."""
    return {
        "op": In(VectorOp),
        "arg": In(arg_shape),
        "in_valid": In(1),
        "in_mask": In(lanes),
        "x": In(word),
        "y": In(word),
        "out_valid": Out(1),
        "out_mask": Out(lanes),
        "out": Out(word),
    }


class VectorUnit(wiring.Component):
    """``lanes`` element-wise lanes, fully pipelined, three register stages.

    Parameters
    ----------
    lanes:
        Elements per cycle (1..64).
    total_bits, frac_bits, rounding, saturate:
        The fixed-point format (``gradsync.spec.formats.FixedPointFormat``).

    Attributes
    ----------
    op : In(VectorOp)
        Operation; with ``arg``, must be stable while a command streams.
    arg : In(signed(total_bits))
        Scale factor (SCALE) or learning rate (SGD), a raw operand value.
    in_valid : In(1), in_mask : In(lanes)
        A beat of up to ``lanes`` elements; ``in_mask`` marks the real ones.
    x, y : In(ArrayLayout(signed(total_bits), lanes))
        First and second operand (``y`` only for RELU_BWD and SGD).
    out_valid : Out(1), out_mask : Out(lanes), out : Out(ArrayLayout(...))
        The results of the beat presented three cycles earlier.

    Behaviour
    ---------
    Latency exactly ``gradsync.spec.timing.VECTOR_PIPELINE_CYCLES`` (3): stage 1
    multiplies, stage 2 rounds, stage 3 adds/selects and saturates. A new beat
    is accepted every cycle; there is no back-pressure and no error case.
    """

    def __init__(
        self,
        lanes: int = 8,
        total_bits: int = 16,
        frac_bits: int = 10,
        rounding: str = "nearest-even",
        saturate: bool = True,
    ):
        if not isinstance(lanes, int) or not 1 <= lanes <= 64:
            raise ValueError(f"lanes must be an integer in 1..64, not {lanes!r}")
        if not isinstance(total_bits, int) or not 2 <= total_bits <= 32:
            raise ValueError(f"total_bits must be an integer in 2..32, not {total_bits!r}")
        if not isinstance(frac_bits, int) or not 0 <= frac_bits < total_bits:
            raise ValueError(f"frac_bits must be in [0, {total_bits}), not {frac_bits!r}")
        if rounding not in ROUNDING_MODES:
            raise ValueError(f"rounding must be one of {ROUNDING_MODES}, not {rounding!r}")
        self.lanes = lanes
        self.total_bits = total_bits
        self.frac_bits = frac_bits
        self.rounding = rounding
        self.saturate = bool(saturate)
        word = data.ArrayLayout(signed(total_bits), lanes)
        super().__init__(_ports(word, signed(total_bits), lanes))

    def elaborate(self, platform):
        m = Module()
        tb = self.total_bits
        prod_w = 2 * tb
        # Control pipeline.
        v = [Signal(name=f"valid_s{i}") for i in (1, 2, 3)]
        k = [Signal(self.lanes, name=f"mask_s{i}") for i in (1, 2, 3)]
        m.d.sync += [
            v[0].eq(self.in_valid),
            k[0].eq(self.in_mask),
            v[1].eq(v[0]),
            k[1].eq(k[0]),
            v[2].eq(v[1]),
            k[2].eq(k[1]),
        ]
        m.d.comb += [self.out_valid.eq(v[2]), self.out_mask.eq(k[2])]
        op1 = Signal(VectorOp, name="op_s1")
        op2 = Signal(VectorOp, name="op_s2")
        m.d.sync += [op1.eq(self.op), op2.eq(op1)]

        for lane in range(self.lanes):
            x, y = self.x[lane], self.y[lane]
            # Stage 1: the product (x*arg for SCALE, y*arg for SGD) and the select operands.
            prod = Signal(signed(prod_w), name=f"prod{lane}")
            x1 = Signal(signed(tb), name=f"x{lane}_s1")
            pos1 = Signal(name=f"pos{lane}_s1")
            m.d.sync += [
                prod.eq(Mux(self.op == VectorOp.SCALE, x, y) * self.arg),
                x1.eq(x),
                pos1.eq(Mux(self.op == VectorOp.RELU_BWD, y, x) > 0),
            ]
            # Stage 2: round the product back to frac_bits.
            rounded = round_shift(
                m, prod, self.frac_bits, self.frac_bits, self.rounding, f"rs{lane}"
            )
            r2 = Signal(signed(prod_w), name=f"r{lane}_s2")
            x2 = Signal(signed(tb), name=f"x{lane}_s2")
            pos2 = Signal(name=f"pos{lane}_s2")
            m.d.sync += [r2.eq(rounded), x2.eq(x1), pos2.eq(pos1)]
            # Stage 3: combine and saturate.
            pre = Signal(signed(prod_w + 1), name=f"pre{lane}")
            with m.Switch(op2):
                with m.Case(VectorOp.RELU, VectorOp.RELU_BWD):
                    m.d.comb += pre.eq(Mux(pos2, x2, 0))
                with m.Case(VectorOp.SCALE):
                    m.d.comb += pre.eq(r2)
                with m.Case(VectorOp.SGD):
                    m.d.comb += pre.eq(x2 - r2)
            sat = saturate(m, pre, tb, self.saturate, f"sat{lane}")
            m.d.sync += self.out[lane].eq(sat)
        return m


class Fp32VectorUnit(wiring.Component):
    """The vector unit of the bf16 format: ``lanes`` fp32 lanes, three register stages.

    The arithmetic is ``model.fp`` (``relu_fp32``, ``relu_backward_fp32``,
    ``scale_fp32``, ``sgd_fp32``) bit for bit, with the rules of
    ``docs/numerics.md``: operands are read through :func:`hw.fp.fp32_canonical`
    (subnormals as signed zeros, one NaN); "positive" means sign bit clear and
    not zero, so a NaN is positive and +0, -0 are not.

    ============  ================================================
    RELU          ``positive(x) ? x : +0``
    RELU_BWD      ``positive(y) ? x : +0``  (y: forward activation)
    SCALE         ``fp32_mul(x, arg)``
    SGD           ``fp32_add(x, -fp32_mul(arg, y))``  (two roundings)
    ============  ================================================

    Parameters
    ----------
    lanes:
        Elements per cycle (1..64).

    Attributes
    ----------
    op : In(VectorOp)
    arg : In(32)
        An fp32 word: the factor (SCALE) or the learning rate (SGD).
    in_valid : In(1), in_mask : In(lanes)
    x, y : In(ArrayLayout(32, lanes))
        fp32 words (the streamer widens bf16 operands exactly).
    out_valid : Out(1), out_mask : Out(lanes), out : Out(ArrayLayout(32, lanes))
        fp32 results of the beat presented three cycles earlier (the streamer
        rounds them to bf16 for a scratchpad destination).

    Behaviour
    ---------
    Latency ``gradsync.spec.timing.VECTOR_PIPELINE_CYCLES`` (3), as the
    fixed-point unit: stage 1 multiplies, stage 2 adds, stage 3 selects.
    """

    total_bits = 32

    def __init__(self, lanes: int = 8):
        if not isinstance(lanes, int) or not 1 <= lanes <= 64:
            raise ValueError(f"lanes must be an integer in 1..64, not {lanes!r}")
        self.lanes = lanes
        word = data.ArrayLayout(32, lanes)
        super().__init__(_ports(word, 32, lanes))

    def elaborate(self, platform):
        m = Module()
        v = [Signal(name=f"valid_s{i}") for i in (1, 2, 3)]
        k = [Signal(self.lanes, name=f"mask_s{i}") for i in (1, 2, 3)]
        m.d.sync += [v[0].eq(self.in_valid), k[0].eq(self.in_mask)]
        m.d.sync += [v[i].eq(v[i - 1]) for i in (1, 2)] + [k[i].eq(k[i - 1]) for i in (1, 2)]
        m.d.comb += [self.out_valid.eq(v[2]), self.out_mask.eq(k[2])]
        op1 = Signal(VectorOp, name="op_s1")
        op2 = Signal(VectorOp, name="op_s2")
        m.d.sync += [op1.eq(self.op), op2.eq(op1)]
        arg = fp32_canonical(m, self.arg, "arg")

        for lane in range(self.lanes):
            x = fp32_canonical(m, self.x[lane], f"x{lane}")
            y = fp32_canonical(m, self.y[lane], f"y{lane}")
            # Stage 1: the product (x*arg for SCALE, arg*y for SGD), the select operands.
            prod = Signal(32, name=f"prod{lane}")
            x1 = Signal(32, name=f"x{lane}_s1")
            pos1 = Signal(name=f"pos{lane}_s1")
            sel = Mux(self.op == VectorOp.RELU_BWD, y, x)
            factor = Mux(self.op == VectorOp.SCALE, x, y)  # the product commutes exactly
            m.d.sync += [
                prod.eq(fp32_mul(m, factor, arg, f"mul{lane}")),
                x1.eq(x),
                pos1.eq(~sel[31] & (sel[23:31] != 0)),
            ]
            # Stage 2: x - product for SGD (the product's sign flipped), else the product.
            r2 = Signal(32, name=f"r{lane}_s2")
            x2 = Signal(32, name=f"x{lane}_s2")
            pos2 = Signal(name=f"pos{lane}_s2")
            diff = fp32_add(m, x1, prod ^ 0x8000_0000, f"sub{lane}")
            m.d.sync += [r2.eq(Mux(op1 == VectorOp.SGD, diff, prod)), x2.eq(x1), pos2.eq(pos1)]
            # Stage 3: select.
            with m.Switch(op2):
                with m.Case(VectorOp.RELU, VectorOp.RELU_BWD):
                    m.d.sync += self.out[lane].eq(Mux(pos2, x2, 0))
                with m.Default():
                    m.d.sync += self.out[lane].eq(r2)
        return m
