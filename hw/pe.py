"""Multiply-accumulate processing element of the output-stationary systolic array.

One PE of ``hw/array.py``'s R x C grid: operand A arrives from the left with
its control (valid / first / last), operand B from above; both are registered
and passed on to the right and downward neighbours one cycle later, so a
skewed operand wavefront crosses the array one PE per cycle.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from gradsync.spec.formats import BFloat16Format, FixedPointFormat

from .arith import saturate
from .fp import Bf16ProcessingElement


class ProcessingElement(wiring.Component):
    """Signed multiply-accumulate with a saturating accumulator.

    Parameters
    ----------
    operand_bits:
        Width of the signed A and B operands (e.g. 16).
    acc_bits:
        Width of the signed accumulator, at least ``2 * operand_bits``.
    saturate:
        Clamp the accumulator to its signed range on overflow (else wrap).

    Attributes
    ----------
    a_in, b_in:
        Operands from the left and upper neighbour (or the array edge).
    valid_in, first_in, last_in:
        Control travelling with A: ``valid_in`` marks a product to
        accumulate; ``first_in`` starts a new accumulation (the accumulator
        loads the product instead of adding it); ``last_in`` ends one.
    a_out, b_out, valid_out, first_out, last_out:
        The inputs, registered: the neighbours' inputs one cycle later.
    acc:
        The running accumulator (registered).
    result, result_valid:
        When a ``last_in`` product is accumulated, ``result`` takes the
        final sum (a shadow register the array drains while the next
        accumulation already runs) and ``result_valid`` pulses for one cycle.

    Behaviour
    ---------
    Latency one cycle: products presented in cycle t are in ``acc`` and, for
    ``last_in``, in ``result`` in cycle t+1. With ``saturate`` the
    accumulator after each step is ``clamp(acc + a*b)`` to ``acc_bits``,
    so saturation is sticky only as far as later products allow, exactly
    as the golden model's step-by-step reference computes it.
    """

    #: Cycles from a pair at the inputs to its sum in ``acc``.
    LATENCY = FixedPointFormat.mac_latency_cycles

    def __init__(self, operand_bits: int = 16, acc_bits: int = 40, saturate: bool = True):
        if not isinstance(operand_bits, int) or not 2 <= operand_bits <= 32:
            raise ValueError(f"operand_bits must be an integer in 2..32, not {operand_bits!r}")
        if not isinstance(acc_bits, int) or not 2 * operand_bits <= acc_bits <= 64:
            raise ValueError(
                f"acc_bits must be an integer in {2 * operand_bits}..64 "
                f"(at least twice operand_bits={operand_bits}), not {acc_bits!r}"
            )
        self.operand_bits = operand_bits
        self.acc_bits = acc_bits
        self.saturate = bool(saturate)
        op = signed(operand_bits)
        acc = signed(acc_bits)
        super().__init__(
            {
                "a_in": In(op),
                "b_in": In(op),
                "valid_in": In(1),
                "first_in": In(1),
                "last_in": In(1),
                "a_out": Out(op),
                "b_out": Out(op),
                "valid_out": Out(1),
                "first_out": Out(1),
                "last_out": Out(1),
                "acc": Out(acc),
                "result": Out(acc),
                "result_valid": Out(1),
            }
        )

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

        product = Signal(signed(2 * self.operand_bits))
        base = Signal(signed(self.acc_bits))
        wide = Signal(signed(self.acc_bits + 1))
        m.d.comb += [
            product.eq(self.a_in * self.b_in),
            base.eq(Mux(self.first_in, 0, self.acc)),
            wide.eq(base + product),
        ]
        new = saturate(m, wide, self.acc_bits, self.saturate, "new")

        with m.If(self.valid_in):
            m.d.sync += self.acc.eq(new)
            with m.If(self.last_in):
                m.d.sync += [self.result.eq(new), self.result_valid.eq(1)]
        return m


def pe_for_format(fmt: FixedPointFormat | BFloat16Format) -> tuple[Callable, object, object]:
    """The PE of a number format: ``(make_pe, operand_shape, acc_shape)``.

    Fixed point: :class:`ProcessingElement` with signed ``total_bits`` operands and a
    wrapping ``acc_bits`` accumulator (the sequencer bounds K so it never wraps).
    bf16: :class:`hw.fp.Bf16ProcessingElement`, bf16 operand words and an fp32
    accumulator word (unsigned bit patterns), one cycle more latency. Both take
    one operand pair per cycle; ``make_pe`` is a :func:`functools.partial` of the PE
    class, whose ``LATENCY`` is the format's ``mac_latency_cycles``.
    """
    if isinstance(fmt, BFloat16Format):
        make = functools.partial(Bf16ProcessingElement)
        return make, unsigned(fmt.operand.width), unsigned(fmt.accumulator.width)
    if isinstance(fmt, FixedPointFormat):
        return (
            functools.partial(ProcessingElement, fmt.total_bits, fmt.acc_bits, saturate=False),
            signed(fmt.total_bits),
            signed(fmt.acc_bits),
        )
    raise TypeError(f"fmt must be a FixedPointFormat or a BFloat16Format, not {fmt!r}")
