"""Fixed-point arithmetic shared by the data paths: saturating narrowing and rounding shift.

``DESIGN.md`` ("One node", "NIC + links"): the PE accumulator (``hw/pe.py``),
the vector unit and the GEMM write-back (``hw/vector.py``,
``hw/sequencer.py``) and the NIC's reduce-add (``hw/nic_rx.py``) all narrow a
wider signed sum to an operand or accumulator width the same way, which is
``gradsync.spec.formats.FixedPointFormat.saturate_raw``: clamp to the signed
range with ``saturate``, else keep the low bits (two's-complement wrap).
:func:`round_shift` is ``gradsync.model.numerics.round_shift`` in logic (the
vector unit and the GEMM write-back). :func:`add_lanes` is the NIC's reduce-add of packed operands on top of it,
``gradsync.model.numerics.add_saturating`` lane by lane.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned

from gradsync.spec.formats import ROUNDING_MODES


def saturate_bounds(bits: int) -> tuple[int, int]:
    """The signed range ``(lo, hi)`` of a ``bits``-wide two's-complement word."""
    if not isinstance(bits, int) or bits < 1:
        raise ValueError(f"bits must be a positive integer, not {bits!r}")
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def saturate(m: Module, value, bits: int, clamp: bool, name: str) -> Signal:
    """Narrow the signed ``value`` to ``bits`` bits: clamp if ``clamp``, else wrap.

    Parameters
    ----------
    m:
        The module the logic is added to (combinational, in the current
        ``If``/``Switch`` context of ``m``, like any ``m.d.comb`` statement).
    value:
        A signed value, at least as wide as ``bits``.
    bits:
        Width of the result.
    clamp:
        ``True``: values above/below the signed range become its maximum/minimum;
        ``False``: the low ``bits`` bits are kept.
    name:
        Name of the returned signal.

    Returns
    -------
    Signal
        ``signed(bits)``, combinational: no cycle of latency.
    """
    lo, hi = saturate_bounds(bits)
    out = Signal(signed(bits), name=name)
    if clamp:
        with m.If(value > hi):
            m.d.comb += out.eq(hi)
        with m.Elif(value < lo):
            m.d.comb += out.eq(lo)
        with m.Else():
            m.d.comb += out.eq(value)
    else:
        m.d.comb += out.eq(value)  # truncation is two's-complement wrap
    return out


def add_lanes(m: Module, a, b, lane_bits: int, clamp: bool, name: str):
    """Lane-wise ``saturate(a[i] + b[i])`` of two words packing signed ``lane_bits`` operands.

    Parameters
    ----------
    m:
        The module the logic is added to (combinational, in ``m``'s current context).
    a, b:
        Words of equal width, a multiple of ``lane_bits``; lane ``i`` is bits
        ``[i * lane_bits, (i + 1) * lane_bits)`` (the lowest address in the low bits).
    lane_bits:
        Operand width.
    clamp:
        Saturate (``True``) or wrap (``False``) each sum, as :func:`saturate`.
    name:
        Prefix of the lanes' signals (``<name><i>_sum``, ``<name><i>_sat``).

    Returns
    -------
    Value
        The packed sums, as wide as ``a``; combinational.
    """
    if len(a) != len(b) or len(a) % lane_bits:
        raise ValueError(
            f"a and b must be words of one width, a multiple of lane_bits={lane_bits}, "
            f"not {len(a)} and {len(b)} bits"
        )
    lanes = []
    for i in range(len(a) // lane_bits):
        x = a[i * lane_bits : (i + 1) * lane_bits].as_signed()
        y = b[i * lane_bits : (i + 1) * lane_bits].as_signed()
        total = Signal(signed(lane_bits + 1), name=f"{name}{i}_sum")
        m.d.comb += total.eq(x + y)
        lanes.append(saturate(m, total, lane_bits, clamp, f"{name}{i}_sat"))
    return Cat(*lanes)


def round_shift(m: Module, value, shift, max_shift: int, rounding: str, name: str):
    """``model.numerics.round_shift`` in logic: arithmetic right shift with rounding.

    ``value`` is signed; ``shift`` a constant or an unsigned signal whose value
    must not exceed ``max_shift``. Returns a signed signal as wide as ``value``
    (the shifted result always fits). Combinational.
    """
    if rounding not in ROUNDING_MODES:
        raise ValueError(f"rounding must be one of {ROUNDING_MODES}, not {rounding!r}")
    width = len(value)
    floor = Signal(signed(width), name=f"{name}_floor")
    m.d.comb += floor.eq(value >> shift)
    if rounding == "truncate":
        return floor
    # rem = value - floor * 2**shift, in [0, 2**shift); compare 2*rem against 2**shift.
    rem2 = Signal(unsigned(max_shift + 2), name=f"{name}_rem2")
    unit = Signal(unsigned(max_shift + 2), name=f"{name}_unit")
    m.d.comb += [
        rem2.eq((value - (floor << shift)) << 1),
        unit.eq(Const(1, unsigned(max_shift + 2)) << shift),
    ]
    up = (rem2 > unit) | ((rem2 == unit) & floor[0])
    if isinstance(shift, int) and shift == 0:
        return floor
    out = Signal(signed(width), name=f"{name}_rounded")
    m.d.comb += out.eq(floor + Mux((shift != 0) & up, 1, 0))
    return out
