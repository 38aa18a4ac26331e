"""Output-stationary R x C systolic array with operand skew, result drain and de-skew.

The GEMM engine of one node (``DESIGN.md``, "One node"): the compute
sequencer (``hw/sequencer.py``) streams one *beat* per cycle — a column of
``R`` A operands and a row of ``C`` B operands — and the array returns each
finished ``R x C`` tile one row of ``C`` accumulators per cycle. Timing is the
one ``gradsync.spec.timing.gemm_cycles`` documents.
"""

from __future__ import annotations

import functools

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from gradsync.spec.formats import BFloat16Format, FixedPointFormat

from .gating import gated_core
from .pe import ProcessingElement, pe_for_format


class SystolicArray(wiring.Component):
    """R x C grid of processing elements computing one output tile at a time.

    PE ``(i, j)`` accumulates ``C[i, j]`` of the current tile. The array skews
    its inputs itself: row ``i`` of A (with the valid/first/last control) is
    delayed by ``i`` cycles, column ``j`` of B by ``j`` cycles, so PE
    ``(i, j)`` multiplies the operands of a beat ``i + j`` cycles after the
    beat was presented.

    Drain (double buffering): when PE ``(R-1, j)`` finishes a tile, column
    ``j``'s ``R`` shadow results are loaded in parallel into a drain chain
    that shifts them out bottom row first, one per cycle, while the PEs
    already accumulate the next tile. Column ``j``'s chain output is delayed
    by ``C-1-j`` cycles (de-skew), so a whole row of ``C`` results leaves the
    array in one cycle, rows in the order ``R-1, R-2, ..., 0``.

    Parameters
    ----------
    rows, cols:
        Array size ``R x C`` (each 1..64).
    operand_bits, acc_bits:
        Signed operand and accumulator widths of the fixed-point PE
        (:class:`hw.pe.ProcessingElement`). The accumulator wraps, as
        ``model.numerics.gemm_accumulate`` does; the sequencer refuses a K for
        which wrapping could occur.
    fmt:
        Optional number format; it overrides ``operand_bits``/``acc_bits`` and
        picks the PE (:func:`hw.pe.pe_for_format`). With
        :class:`~gradsync.spec.formats.BFloat16Format` operands are bf16 words,
        results fp32 words (``model.fp.dot_fp32``, sums in beat order).

    Attributes
    ----------
    a_in : In(ArrayLayout(operand, R))
        A operands of the beat, element ``i`` for array row ``i``.
    b_in : In(ArrayLayout(operand, C))
        B operands of the beat, element ``j`` for array column ``j``.
    in_valid, in_first, in_last : In(1)
        Beat present; first beat of a tile (accumulators restart); last beat
        of a tile (results go to the shadow registers).
    out_data : Out(ArrayLayout(accumulator, C))
        One row of the finished tile.
    out_valid : Out(1)
        ``out_data`` holds a row this cycle.
    out_row : Out(range(R))
        Which row of the tile ``out_data`` is (``R-1`` first, ``0`` last).

    Behaviour
    ---------
    Latency: with a PE of latency ``P`` (``fmt.mac_latency_cycles``: 1 fixed
    point, 2 bf16), if the last beat of a tile is presented in cycle ``c``, tile
    row ``r`` is on ``out_data`` in cycle ``c + R + C + (P - 1) + (R - 1 - r)``;
    the final row (``r = 0``) leaves ``2R + C + P - 2`` cycles after the last beat.
    No back-pressure: the producer must keep beats of consecutive tiles
    apart so that last beats are at least ``R`` cycles apart (the drain
    chain's occupancy) and tiles do not interleave; the sequencer issues
    tiles every ``max(K, R)`` cycles.

    In the Verilog a simulator builds, the array's registers run on a gated clock
    (``hw/gating.py``) from a beat's cycle until ``drain_cycles`` after the last one;
    the values they would take while it is stopped lie beside low valid bits.
    """

    def __init__(
        self,
        rows: int = 8,
        cols: int = 8,
        operand_bits: int = 16,
        acc_bits: int = 40,
        *,
        fmt: FixedPointFormat | BFloat16Format | None = None,
    ):
        for name, value in (("rows", rows), ("cols", cols)):
            if not isinstance(value, int) or not 1 <= value <= 64:
                raise ValueError(f"{name} must be an integer in 1..64, not {value!r}")
        if fmt is None:
            if not isinstance(operand_bits, int) or not 2 <= operand_bits <= 32:
                raise ValueError(
                    f"operand_bits must be an integer in 2..32, not {operand_bits!r}")
            if not isinstance(acc_bits, int) or not 2 * operand_bits <= acc_bits <= 64:
                raise ValueError(
                    f"acc_bits must be an integer in {2 * operand_bits}..64, not {acc_bits!r}")
            # any widths, not only a FixedPointFormat's (the array's own tests use 2..32 bits)
            operand, acc = signed(operand_bits), signed(acc_bits)
            self._make_pe = functools.partial(
                ProcessingElement, operand_bits, acc_bits, saturate=False)
        else:
            self._make_pe, operand, acc = pe_for_format(fmt)
        self.rows = rows
        self.cols = cols
        self.operand_shape, self.acc_shape = operand, acc
        self.pe_latency = self._make_pe.func.LATENCY
        #: Cycles after the last beat until every register is settled (the last row has
        #: left and the skew, drain and de-skew registers hold no valid data); a bound,
        #: above the ``2R + C + P - 2`` of the final row.
        self.drain_cycles = 2 * rows + 2 * cols + self.pe_latency + 2
        super().__init__({
            "a_in": In(data.ArrayLayout(operand, rows)),
            "b_in": In(data.ArrayLayout(operand, cols)),
            "in_valid": In(1),
            "in_first": In(1),
            "in_last": In(1),
            "out_data": Out(data.ArrayLayout(acc, cols)),
            "out_valid": Out(1),
            "out_row": Out(range(rows)),
        })

    @staticmethod
    def _delay(m: Module, sig, cycles: int, name: str):
        """``sig`` through ``cycles`` registers (returns ``sig`` itself for 0)."""
        for stage in range(cycles):
            reg = Signal.like(sig, name=f"{name}_d{stage + 1}")
            m.d.sync += reg.eq(sig)
            sig = reg
        return sig

    def elaborate(self, platform):
        # In a simulator's Verilog the clock runs only while a beat is in flight.
        top, m = gated_core(self.in_valid, self.drain_cycles)
        R, C = self.rows, self.cols
        pes = [[self._make_pe() for _ in range(C)] for _ in range(R)]
        for i in range(R):
            for j in range(C):
                m.submodules[f"pe_{i}_{j}"] = pes[i][j]

        # Input skew: row i (A and its control) by i cycles, column j of B by j cycles.
        for i in range(R):
            pe = pes[i][0]
            m.d.comb += [
                pe.a_in.eq(self._delay(m, self.a_in[i], i, f"a_skew{i}")),
                pe.valid_in.eq(self._delay(m, self.in_valid, i, f"valid_skew{i}")),
                pe.first_in.eq(self._delay(m, self.in_first, i, f"first_skew{i}")),
                pe.last_in.eq(self._delay(m, self.in_last, i, f"last_skew{i}")),
            ]
        for j in range(C):
            m.d.comb += pes[0][j].b_in.eq(self._delay(m, self.b_in[j], j, f"b_skew{j}"))

        # Systolic links: A and control to the right, B downwards.
        for i in range(R):
            for j in range(C):
                pe = pes[i][j]
                if j + 1 < C:
                    right = pes[i][j + 1]
                    m.d.comb += [
                        right.a_in.eq(pe.a_out),
                        right.valid_in.eq(pe.valid_out),
                        right.first_in.eq(pe.first_out),
                        right.last_in.eq(pe.last_out),
                    ]
                if i + 1 < R:
                    m.d.comb += pes[i + 1][j].b_in.eq(pe.b_out)

        # Drain chains: parallel load of a column when its bottom PE finishes, then shift down.
        for j in range(C):
            chain = [Signal(self.acc_shape, name=f"drain{j}_{i}") for i in range(R)]
            with m.If(pes[R - 1][j].result_valid):
                m.d.sync += [chain[i].eq(pes[i][j].result) for i in range(R)]
            with m.Else():
                m.d.sync += [chain[i].eq(chain[i - 1]) for i in range(1, R)]
            m.d.comb += self.out_data[j].eq(self._delay(m, chain[R - 1], C - 1 - j, f"deskew{j}"))

        # Row tracking follows the last column, which needs no de-skew.
        remaining = Signal(range(R + 1))
        with m.If(pes[R - 1][C - 1].result_valid):
            m.d.sync += remaining.eq(R)
        with m.Elif(remaining != 0):
            m.d.sync += remaining.eq(remaining - 1)
        m.d.comb += [
            self.out_valid.eq(remaining != 0),
            self.out_row.eq(remaining - 1),
        ]
        return top
