# amaranth: UnusedElaboratable=no
"""The systolic array alone in Amaranth's simulator: results against integer NumPy (fixed
point) and model.fp.dot_fp32 (bf16), timing exact."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from gradsync.hw.array import SystolicArray
from gradsync.model.fp import dot_fp32
from gradsync.spec.formats import BFloat16Format


def _run_tiles(rows, cols, tiles, gap, bits=16, acc_bits=40, dut=None):
    """Stream ``tiles`` (list of (A[R,k], B[k,C])) back to back; return (rows out, cycles)."""
    dut = dut or SystolicArray(rows, cols, bits, acc_bits)
    beats = []  # (cycle, a, b, first, last)
    cycle, last = 2, -gap
    for a, b in tiles:
        k = a.shape[1]
        cycle = max(cycle, last + gap - (k - 1))  # last beats >= gap apart (drain occupancy)
        for s in range(k):
            beats.append((cycle + s, a[:, s], b[s, :], s == 0, s == k - 1))
        last = cycle + k - 1
        cycle += k
    end = cycle + 2 * rows + cols + 4
    by_cycle = {c: (a, b, f, la) for c, a, b, f, la in beats}
    seen = []

    async def bench(ctx):
        for c in range(end):
            if c in by_cycle:
                a, b, f, la = by_cycle[c]
                for i in range(rows):
                    ctx.set(dut.a_in[i], int(a[i]))
                for j in range(cols):
                    ctx.set(dut.b_in[j], int(b[j]))
                ctx.set(dut.in_valid, 1)
                ctx.set(dut.in_first, int(f))
                ctx.set(dut.in_last, int(la))
            else:
                ctx.set(dut.in_valid, 0)
            if ctx.get(dut.out_valid):
                seen.append(
                    (c, ctx.get(dut.out_row), [ctx.get(dut.out_data[j]) for j in range(cols)])
                )
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return beats, seen


@pytest.mark.parametrize(("rows", "cols"), [(8, 8), (4, 8), (3, 5)])
def test_array_tiles_exact_and_on_time(rows, cols):
    rng = np.random.default_rng(rows * 100 + cols)
    lo, hi = -(1 << 15), (1 << 15) - 1
    tiles = []
    for k in [1, 2, rows, rows + 3, 17, 1]:
        a = rng.integers(lo, hi + 1, size=(rows, k))
        b = rng.integers(lo, hi + 1, size=(k, cols))
        if k == 17:
            a[:] = lo
            b[:] = lo
        tiles.append((a, b))
    beats, seen = _run_tiles(rows, cols, tiles, gap=rows)
    last_cycles = [c for c, _, _, _, la in beats if la]
    assert len(seen) == rows * len(tiles)
    for t, ((a, b), c_last) in enumerate(zip(tiles, last_cycles, strict=True)):
        want = a.astype(object) @ b.astype(object)
        for n, r in enumerate(range(rows - 1, -1, -1)):
            cyc, row, got = seen[t * rows + n]
            assert row == r
            assert cyc == c_last + rows + cols + (rows - 1 - r), (t, r, cyc, c_last)
            assert got == [int(x) for x in want[r]], (t, r)


def _bf16_words(rng, shape):
    """Random bf16 words of normal values in [2**-8, 2**8) of either sign, plus a few zeros."""
    mag = rng.uniform(-8, 8, size=shape)
    values = np.where(rng.random(shape) < 0.5, -1.0, 1.0) * 2.0**mag
    values[rng.random(shape) < 0.05] = 0.0
    return BFloat16Format().quantize(values)


@pytest.mark.parametrize(("rows", "cols"), [(4, 4), (3, 5)])
def test_bf16_array_tiles_bit_exact_and_one_cycle_later(rows, cols):
    """bf16 PEs: every result is dot_fp32 of its row and column (sums in beat order) and
    leaves the array exactly one cycle later than a fixed-point one's (PE latency 2)."""
    rng = np.random.default_rng(rows * 10 + cols)
    tiles = []
    for k in [1, 2, rows, rows + 3, 17, 1]:
        a, b = _bf16_words(rng, (rows, k)), _bf16_words(rng, (k, cols))
        if k == 17:  # cancellation and rounding: (x, 1, -x) sums to 0 in order, not 1
            a[0, :3], b[:3, 0] = [0x4B80, 0x3F80, 0xCB80], [0x3F80, 0x3F80, 0x3F80]
        tiles.append((a, b))
    dut = SystolicArray(rows, cols, fmt=BFloat16Format())
    assert dut.pe_latency == 2
    beats, seen = _run_tiles(rows, cols, tiles, gap=rows, dut=dut)
    last_cycles = [c for c, _, _, _, la in beats if la]
    assert len(seen) == rows * len(tiles)
    for t, ((a, b), c_last) in enumerate(zip(tiles, last_cycles, strict=True)):
        want = dot_fp32(a[:, None, :], b.T[None, :, :])  # [R, C] fp32 words
        for n, r in enumerate(range(rows - 1, -1, -1)):
            cyc, row, got = seen[t * rows + n]
            assert row == r
            assert cyc == c_last + rows + cols + 1 + (rows - 1 - r), (t, r, cyc, c_last)
            assert got == [int(x) for x in want[r]], (t, r)
    assert (
        int(dot_fp32(tiles[4][0][0], tiles[4][1][:, 0], order=[0, 2, 1] + list(range(3, 17))))
        != seen[4 * rows + rows - 1][2][0]
    )  # the order matters for that element


def test_array_elaborates_16x16():
    from amaranth.back import rtlil

    assert "pe_15_15" in rtlil.convert(SystolicArray(16, 16))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": 0}, "rows must be an integer in 1..64, not 0"),
        ({"rows": 65}, "rows must be an integer in 1..64, not 65"),
        ({"cols": 65}, "cols must be an integer in 1..64, not 65"),
        ({"cols": "8"}, "cols must be an integer in 1..64, not '8'"),
        ({"operand_bits": 1}, "operand_bits must be an integer in 2..32, not 1"),
        ({"operand_bits": 16, "acc_bits": 20}, "acc_bits must be an integer in 32..64, not 20"),
        ({"operand_bits": 8, "acc_bits": 65}, "acc_bits must be an integer in 16..64, not 65"),
    ],
)
def test_array_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        SystolicArray(**kwargs)
