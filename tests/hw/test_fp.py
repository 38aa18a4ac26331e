# amaranth: UnusedElaboratable=no
"""hw/fp.py's blocks alone, bit for bit: Amaranth's simulator on special values, Verilator on 2**20 pairs.

References: the adder against NumPy ``float32`` with flush-to-zero applied
(``fp_vectors.fp32_reference_add``) and the by-hand table; the multiplier and
the converter against the golden model (``model/fp.py``, itself checked
against float64 and ``ml_dtypes`` in ``tests/model/test_fp.py``); the MAC PE
against ``model.fp.dot_fp32`` cycle by cycle.
"""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from gradsync.hw import fp as hfp
from gradsync.model import fp as mfp
from tests.hw.fp_vectors import (
    ADD_BY_HAND,
    BF16_SPECIALS,
    FP32_SPECIALS,
    MUL_BY_HAND,
    adder_pairs,
    all_pairs,
    fp32_reference_add,
    fp32_reference_mul,
    mul_pairs,
)

OPERANDS = data.StructLayout({"a": 32, "b": 32, "x": 16, "y": 16})
RESULTS = data.StructLayout({"total": 32, "product": 32, "converted": 16})


class FpLanes(wiring.Component):
    """``lanes`` copies of the adder (a + b), multiplier (x * y) and converter (a -> bf16).

    One port in and one out (lane 0 in the low bits), so that a testbench
    step costs one write and one read whatever the number of lanes.
    """

    def __init__(self, lanes: int):
        super().__init__({
            "operands": In(data.ArrayLayout(OPERANDS, lanes)),
            "results": Out(data.ArrayLayout(RESULTS, lanes)),
        })  # fmt: skip

    def elaborate(self, platform):
        m = Module()
        for i in range(len(self.operands)):
            op, res = self.operands[i], self.results[i]
            m.d.comb += [
                res.total.eq(hfp.fp32_add(m, op.a, op.b, f"add{i}")),
                res.product.eq(hfp.bf16_mul(m, op.x, op.y, f"mul{i}")),
                res.converted.eq(hfp.fp32_to_bf16(m, op.a, f"cvt{i}")),
            ]
        return m


def _settle(dut, inputs: dict, output: str) -> np.ndarray:
    """Each vector of ``inputs`` ({port: words}) on ``dut``'s ports, ``output`` after each."""
    got = []

    async def bench(ctx):
        for values in zip(*inputs.values(), strict=True):
            for port, value in zip(inputs, values, strict=True):
                ctx.set(getattr(dut, port), int(value))
            got.append(ctx.get(getattr(dut, output)))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return np.array(got, dtype=np.uint32)


def _assert_words(got, want, *operands):
    bad = np.flatnonzero(np.asarray(got) != np.asarray(want))
    shown = [
        " ".join(f"{int(op[i]):#x}" for op in operands)
        + f" -> {int(got[i]):#x}, want {int(want[i]):#x}"
        for i in bad[:8]
    ]
    assert not bad.size, f"{bad.size} of {len(want)} differ:\n" + "\n".join(shown)


# --- Amaranth's simulator: special values and hand-worked cases --------------------------


def test_multiplier_all_special_pairs():
    x, y = all_pairs(BF16_SPECIALS)
    got = _settle(hfp.Bf16Multiplier(), {"a": x, "b": y}, "product")
    _assert_words(got, mfp.bf16_mul_fp32(x, y), x, y)
    assert {0x7F800000, 0xFF800000, 0x7FC00000, 0x80000000, 0x00800000} <= set(got.tolist())


def test_adder_by_hand_and_all_special_pairs():
    hand_a, hand_b, hand_sum = np.array(ADD_BY_HAND, dtype=np.uint32).T
    got = _settle(hfp.Fp32Adder(), {"a": hand_a, "b": hand_b}, "total")
    _assert_words(got, hand_sum, hand_a, hand_b)
    a, b = all_pairs(FP32_SPECIALS)
    got = _settle(hfp.Fp32Adder(), {"a": a, "b": b}, "total")
    _assert_words(got, fp32_reference_add(a, b), a, b)


def test_fp32_multiplier_by_hand_specials_and_random_pairs():
    """fp32 x fp32 (the vector unit's scale and SGD) against NumPy float32 with the flush rule."""
    hand_a, hand_b, hand_product = np.array(MUL_BY_HAND, dtype=np.uint32).T
    sa, sb = all_pairs(FP32_SPECIALS)
    ra, rb = mul_pairs(np.random.default_rng(7), 3000)
    a, b = np.concatenate([hand_a, sa, ra]), np.concatenate([hand_b, sb, rb])
    got = _settle(hfp.Fp32Multiplier(), {"a": a, "b": b}, "product")
    _assert_words(got[: len(hand_a)], hand_product, hand_a, hand_b)
    _assert_words(got, fp32_reference_mul(a, b), a, b)


def test_fp32_canonical_reads():
    a = np.concatenate([FP32_SPECIALS, np.array([0x3F800001, 0xC0000000], dtype=np.uint32)])
    got = _settle(_Comb(32, 32, lambda m, x: hfp.fp32_canonical(m, x, "c")), {"a": a}, "y")
    _assert_words(got, mfp.fp32_canonical(a), a)


class _Comb(wiring.Component):
    """One combinational function of one word, for the small blocks without a component."""

    def __init__(self, width_in, width_out, fn):
        self.fn = fn
        super().__init__({"a": In(width_in), "y": Out(width_out)})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.y.eq(self.fn(m, self.a))
        return m


def test_converter_specials_and_ties():
    ties = np.array(
        [0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x7F7F8000, 0x7F7F7FFF, 0xFF7FFFFF],
        dtype=np.uint32,
    )  # tie to even down, tie up, just above, just below, carry to inf, stays, -inf
    a = np.concatenate([FP32_SPECIALS, ties])
    got = _settle(hfp.Fp32ToBf16(), {"a": a}, "y")
    _assert_words(got, mfp.fp32_to_bf16(a), a)
    assert got[-7:].tolist() == [0x3F80, 0x3F82, 0x3F81, 0x3F80, 0x7F80, 0x7F7F, 0xFF80]


class _Wideners(wiring.Component):
    """``lanes`` copies of :func:`hfp.bf16_to_fp32`."""

    def __init__(self, lanes):
        super().__init__({
            "x": In(data.ArrayLayout(16, lanes)),
            "y": Out(data.ArrayLayout(32, lanes)),
        })  # fmt: skip

    def elaborate(self, platform):
        m = Module()
        for i in range(len(self.x)):
            m.d.comb += self.y[i].eq(hfp.bf16_to_fp32(m, self.x[i], f"w{i}"))
        return m


def test_bf16_to_fp32_every_word():
    """All 65536 bf16 words, 128 lanes per settle, against the model's exact widening."""
    lanes = 128
    words = np.arange(1 << 16, dtype=np.uint16).reshape(-1, lanes)
    dut = _Wideners(lanes)
    got = []

    async def bench(ctx):
        for row in words:
            ctx.set(dut.x, [int(v) for v in row])
            value = ctx.get(dut.y)
            got.extend(value[i] for i in range(lanes))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    _assert_words(np.array(got, dtype=np.uint32), mfp.bf16_to_fp32(words.ravel()), words.ravel())


def _pe_stimulus(rng, cycles):
    """Accumulations of 1..12 pairs, back to back or after idle cycles; bf16 of mixed sizes."""
    rows = []
    while len(rows) < cycles:
        for _ in range(int(rng.integers(0, 3))):  # idle cycles carry junk operands
            rows.append((*map(int, rng.integers(0, 1 << 16, 2)), 0, int(rng.integers(0, 2)), 0))
        n = int(rng.integers(1, 13))
        signs = rng.integers(0, 2, (n, 2)) << 15
        exps = rng.integers(120, 135, (n, 2)) << 7
        words = signs | exps | rng.integers(0, 128, (n, 2))
        if rng.random() < 0.2:  # a special operand now and then
            words[rng.integers(n), 0] = rng.choice(BF16_SPECIALS)
        rows += [
            (int(a), int(b), 1, int(k == 0), int(k == n - 1)) for k, (a, b) in enumerate(words)
        ]
    return rows


def test_mac_pe_one_pair_per_cycle_equals_dot_fp32():
    """Every accumulation's result arrives LATENCY cycles after its last pair, as dot_fp32 says.

    Within an accumulation a pair comes every cycle, and many accumulations
    start the cycle after the previous one's last pair, so the PE takes a
    pair every cycle; the running ``acc`` is checked every cycle too.
    """
    rows = _pe_stimulus(np.random.default_rng(3), 400)
    dut = hfp.Bf16ProcessingElement()
    lat = dut.LATENCY
    want_acc, want_results, run, acc = {}, {}, [], 0
    for t, (a, b, valid, first, last) in enumerate(rows):
        if not valid:
            continue
        run = [(a, b)] if first else [*run, (a, b)]
        acc = int(mfp.dot_fp32(np.array([p[0] for p in run]), np.array([p[1] for p in run])))
        want_acc[t + lat] = acc
        if last:
            want_results[t + lat] = acc
    seen = {}

    async def bench(ctx):
        acc_now = 0
        for t in range(len(rows) + lat):
            if t >= lat:
                acc_now = want_acc.get(t, acc_now)
                assert ctx.get(dut.acc) == acc_now, f"cycle {t}: acc"
                if ctx.get(dut.result_valid):
                    seen[t] = ctx.get(dut.result)
            a, b, valid, first, last = rows[t] if t < len(rows) else (0, 0, 0, 0, 0)
            for port, value in zip(("a_in", "b_in", "valid_in", "first_in", "last_in"),
                                   (a, b, valid, first, last), strict=True):  # fmt: skip
                ctx.set(getattr(dut, port), value)
            await ctx.tick()
            assert ctx.get(dut.a_out) == a and ctx.get(dut.last_out) == last

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == want_results
    back_to_back = sum(r[4] and n[2] and n[3] for r, n in zip(rows[:-1], rows[1:], strict=True))
    assert len(want_results) > 30 and back_to_back > 10


# --- Verilator: 2**20 random pairs per block, plus every special pair --------------------

LANES = 16  # C++ build time grows with the lanes, the testbench's time with the steps
PAIRS = 1 << 20
OPERAND_DTYPE = np.dtype([("a", "<u4"), ("b", "<u4"), ("x", "<u2"), ("y", "<u2")])
RESULT_DTYPE = np.dtype([("total", "<u4"), ("product", "<u4"), ("converted", "<u2")])


def _vectors(rng) -> np.ndarray:
    """Every special pair and the by-hand adds first, then 2**20 random pairs per block."""
    special_a, special_b = all_pairs(FP32_SPECIALS)
    hand_a, hand_b, _ = np.array(ADD_BY_HAND, dtype=np.uint32).T
    rand_a, rand_b = adder_pairs(rng, PAIRS)
    a = np.concatenate([special_a, hand_a, rand_a])
    sx, sy = all_pairs(BF16_SPECIALS)
    vectors = np.zeros(len(a) + (-len(a) % LANES), OPERAND_DTYPE)
    vectors["a"][: len(a)] = a
    vectors["b"][: len(a)] = np.concatenate([special_b, hand_b, rand_b])
    vectors["x"] = rng.integers(0, 1 << 16, len(vectors))
    vectors["y"] = rng.integers(0, 1 << 16, len(vectors))
    vectors["x"][: len(sx)], vectors["y"][: len(sy)] = sx, sy
    return vectors


@pytest.fixture(scope="module")
def verilated(tmp_path_factory):
    """The operand words and the harness's answers, from one Verilator build and run."""
    from gradsync.sim.build import BuildOptions, build_component, run_cocotb

    assert OPERANDS.size == 8 * OPERAND_DTYPE.itemsize and RESULTS.size == 8 * RESULT_DTYPE.itemsize
    vectors = _vectors(np.random.default_rng(2026))
    folder = tmp_path_factory.mktemp("fp_lanes")
    np.save(
        folder / "vectors.npy", vectors.view(np.uint8).reshape(-1, LANES * OPERAND_DTYPE.itemsize)
    )
    model = build_component(  # combinational: no clock; -O0: the testbench, not the model, is slow
        FpLanes(LANES), f"fp_lanes{LANES}", BuildOptions(internal_clock=False, opt_fast="-O0"),
        params={"lanes": LANES},
    )  # fmt: skip
    run_cocotb(
        model,
        "tests.hw.cocotb_fp",
        extra_env={"FP_VECTORS": str(folder / "vectors.npy"),
                   "FP_RESULTS": str(folder / "results.npy"),
                   "FP_RESULT_BYTES": str(LANES * RESULT_DTYPE.itemsize)},
        test_dir=folder,
    )  # fmt: skip
    results = np.load(folder / "results.npy").reshape(-1).view(RESULT_DTYPE)
    return {**{k: vectors[k] for k in OPERAND_DTYPE.names},
            **{k: results[k] for k in RESULT_DTYPE.names}}  # fmt: skip


@pytest.mark.rtl
def test_adder_verilator_million_pairs(verilated):
    v = verilated
    assert len(v["a"]) >= 1_000_000
    _assert_words(v["total"], fp32_reference_add(v["a"], v["b"]), v["a"], v["b"])


@pytest.mark.rtl
def test_multiplier_verilator_random_and_specials(verilated):
    v = verilated
    _assert_words(v["product"], mfp.bf16_mul_fp32(v["x"], v["y"]), v["x"], v["y"])


@pytest.mark.rtl
def test_converter_verilator(verilated):
    v = verilated
    _assert_words(v["converted"], mfp.fp32_to_bf16(v["a"]), v["a"])


def test_random_pairs_reach_the_corners():
    """The random adder set must cancel, tie, flush and overflow, or the Verilator test proves little."""
    a, b = adder_pairs(np.random.default_rng(2026), PAIRS)
    with np.errstate(all="ignore"):
        x, y = a.view(np.float32).astype(np.float64), b.view(np.float32).astype(np.float64)
        exact = x + y  # float64: exact where the exponents are close
        total = fp32_reference_add(a, b).view(np.float32)
        assert np.sum((exact == 0) & (x != 0)) > 1000  # exact cancellation
        assert np.sum((exact != 0) & (total == 0)) > 1000  # flushed to zero
        assert np.sum(np.isinf(total) & np.isfinite(x) & np.isfinite(y)) > 1000  # overflow
        ulp_half = np.abs(exact - total.astype(np.float64)) == np.spacing(total) / 2
        assert np.sum(ulp_half & np.isfinite(total)) > 1000  # exact ties
