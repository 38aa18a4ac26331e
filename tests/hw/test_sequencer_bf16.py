# amaranth: UnusedElaboratable=no
"""hw/sequencer.py in the bf16 format on a 2 x 3 array in Amaranth's simulator.

The harness of ``tests/hw/test_sequencer.py`` with a ``BFloat16Format``
sequencer. Scratchpad elements are bf16 words, gradient-SRAM elements fp32
values in two words (low half first). Results are compared bit for bit with
``gradsync.model.fp`` (its GEMM checked against float64 NumPy in
``tests/model/test_fp.py``), durations with ``gradsync.spec.timing`` in bf16.
"""

from dataclasses import replace

import numpy as np
import pytest

from gradsync.model import fp as mfp
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.formats import BFloat16Format
from tests.hw.fp_vectors import BF16_SPECIALS, FP32_SPECIALS
from tests.hw.test_sequencer import GEMM_SHAPES, HW, Harness, L, SequencerTB, addr

BF = BFloat16Format()
GUARD = 0x5A5A


def split(words32) -> np.ndarray:
    """fp32 words -> SRAM words, low half first."""
    w = np.asarray(words32, dtype=np.uint64)
    return np.stack([w & 0xFFFF, w >> 16], axis=-1).reshape(-1)


def join(words16) -> np.ndarray:
    """SRAM words (low half first) -> fp32 words."""
    w = np.asarray(words16, dtype=np.uint64).reshape(-1, 2)
    return (w[:, 0] | (w[:, 1] << 16)).astype(np.uint32)


def bf16_operands(rng, shape, specials=0.0):
    words = BF.quantize(rng.standard_normal(shape) * 2.0 ** rng.integers(-4, 4, shape))
    pick = rng.random(shape) < specials
    words[pick] = rng.choice(BF16_SPECIALS, size=int(pick.sum()))
    return words


def fp32_operands(rng, n, specials=0.1):
    words = BF.quantize_fp32(rng.standard_normal(n) * 2.0 ** rng.integers(-12, 4, n))
    pick = rng.random(n) < specials
    words[pick] = rng.choice(FP32_SPECIALS, size=int(pick.sum()))
    return words


def peek16(tb, ctx, region, word, n):
    return tb.peek(ctx, region, word, n) & 0xFFFF


@pytest.mark.parametrize(("trans_a", "trans_b"), [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_bf16_gemm_bits_and_cycles_to_either_bank(trans_a, trans_b):
    """GEMMs to the gradient SRAM (fp32, dW) and to the scratchpad (bf16, activations / dA)."""
    dut = Harness(fmt=BF)
    tb = SequencerTB(dut)
    rng = np.random.default_rng(20 + 10 * trans_a + trans_b)

    async def bench(ctx, tb):
        for i, (m, k, n) in enumerate(GEMM_SHAPES):
            to_grad = i % 2 == 0
            a = bf16_operands(rng, (k, m) if trans_a else (m, k), specials=0.05 * (i == 5))
            b = bf16_operands(rng, (n, k) if trans_b else (k, n))
            a_w, b_w = 3, 3 + a.size + 1
            per = 2 if to_grad else 1
            region, c_w = ("grad", 6) if to_grad else ("scratch", 120)
            await tb.load(ctx, "scratch", a_w, a)
            await tb.load(ctx, "scratch", b_w, b)
            await tb.load(ctx, region, c_w - 4, np.full(m * n * per + 8, GUARD))
            t_launch, _ = await tb.launch(
                ctx, rm.Opcode.GEMM, addr("scratch", a_w), addr("scratch", b_w),
                addr(region, c_w), m, k, n, arg=7, tag=i, trans_a=trans_a, trans_b=trans_b,
            )  # fmt: skip
            t_done, got = await tb.wait_done(ctx, i + 1, (region, c_w - 4, m * n * per + 8))
            got = got & 0xFFFF
            assert (got[:4] == GUARD).all() and (got[4 + m * n * per :] == GUARD).all(), got
            want = mfp.gemm_bf16(a, b, trans_a=bool(trans_a), trans_b=bool(trans_b)).reshape(-1)
            res = join(got[4:-4]) if to_grad else got[4:-4]
            want = want if to_grad else mfp.fp32_to_bf16(want)
            bad = np.flatnonzero(res != want)
            assert not len(bad), f"GEMM {m}x{k}x{n} grad={to_grad}: {len(bad)} mismatches {bad}"
            assert t_done == t_launch + 1 + tm.gemm_cycles(m, k, n, HW, BF), (m, k, n)
            assert t_done == t_launch + 1 + tm.gemm_cycles(m, k, n, HW) + 1  # the PE's extra

    tb.run(bench)


#: (x bank, y bank, c bank) per vector op run: bf16 activations, fp32 master weights and
#: gradients, and the conversions between them.
BANKS = [
    ("scratch", "scratch", "scratch"),  # relu / relu' on bf16 activations
    ("grad", "grad", "grad"),  # SGD on fp32 master weights and gradients
    ("grad", "scratch", "scratch"),  # fp32 -> bf16: the weights' working copy (scale by 1)
    ("scratch", "grad", "grad"),  # bf16 -> fp32
]


@pytest.mark.parametrize("opcode", list(rm.VECTOR_OPCODES), ids=lambda o: o.name)
def test_bf16_vector_ops_bits_and_cycles(opcode):
    dut = Harness(fmt=BF)
    tb = SequencerTB(dut)
    rng = np.random.default_rng(30 + int(opcode))
    name = rm.VECTOR_OPCODES[opcode]
    ops = {
        "relu": lambda x, y, arg: mfp.relu_fp32(x),
        "relu_bwd": lambda x, y, arg: mfp.relu_backward_fp32(x, y),
        "scale": lambda x, y, arg: mfp.scale_fp32(x, arg),
        "sgd": lambda x, y, arg: mfp.sgd_fp32(x, y, arg),
    }
    args = [0x3F800000, 0x3C23D70A, 0xBF000000, 0x3DCCCCCD]
    sizes = [(1, 1), (1, L), (2, L + 1), (2, 5)]  # fits the 128-word gradient SRAM as fp32

    async def bench(ctx, tb):
        for i, ((m, n), arg, banks) in enumerate(zip(sizes, args, BANKS, strict=True)):
            size = m * n
            words = {}
            for role, bank, word in zip("xyc", banks, (4, 30, 60), strict=True):
                per = 2 if bank == "grad" else 1
                if role == "c":
                    await tb.load(ctx, bank, word - 4, np.full(size * per + 8, GUARD))
                    continue
                if bank == "grad":
                    words[role] = fp32_operands(rng, size)
                    await tb.load(ctx, bank, word, split(words[role]))
                else:
                    bf = bf16_operands(rng, size, specials=0.15)
                    words[role] = mfp.bf16_to_fp32(bf)
                    await tb.load(ctx, bank, word, bf)
            t_launch, _ = await tb.launch(
                ctx, opcode, addr(banks[0], 4), addr(banks[1], 30), addr(banks[2], 60),
                m, 0, n, arg=arg, tag=i,
            )  # fmt: skip
            per = 2 if banks[2] == "grad" else 1
            t_done, got = await tb.wait_done(ctx, i + 1, (banks[2], 56, size * per + 8))
            got = got & 0xFFFF
            assert (got[:4] == GUARD).all() and (got[4 + size * per :] == GUARD).all(), (
                i,
                banks,
                got.tolist(),
            )
            want = ops[name](words["x"], words["y"], arg)
            res = join(got[4:-4]) if per == 2 else got[4:-4]
            want = want if per == 2 else mfp.fp32_to_bf16(want)
            bad = np.flatnonzero(res != want)
            assert not len(bad), f"{name} banks {banks}: {len(bad)} mismatches at {bad}"
            assert t_done == t_launch + 1 + tm.vector_cycles(name, size, HW)

    tb.run(bench)


def test_bf16_refusals_follow_the_element_sizes():
    """GEMM operands outside the scratchpad, fp32 elements not 4-byte aligned or past the
    gradient SRAM's end are refused; K above fixed point's max_exact_k is not."""
    dut = Harness(replace(HW, scratchpad_words=2048), fmt=BF)
    tb = SequencerTB(dut)
    E = rm.ErrorCode
    a, b = addr("scratch", 0), addr("scratch", 64)
    grad_end = HW.gradient_words  # SRAM words
    cases = [
        (rm.Opcode.GEMM, addr("grad", 0), b, addr("grad", 8), 2, 2, 2, E.CMD_OUT_OF_BOUNDS),
        (rm.Opcode.GEMM, a, addr("grad", 0), addr("grad", 8), 2, 2, 2, E.CMD_OUT_OF_BOUNDS),
        (rm.Opcode.GEMM, a, b, addr("grad", 9), 2, 2, 2, E.CMD_OUT_OF_BOUNDS),  # 2-byte aligned
        (rm.Opcode.GEMM, a, b, addr("grad", grad_end - 6), 2, 2, 2, E.CMD_OUT_OF_BOUNDS),
        (
            rm.Opcode.SGD,
            addr("grad", 1),
            addr("grad", 8),
            addr("grad", 8),
            1,
            0,
            1,
            E.CMD_OUT_OF_BOUNDS,
        ),  # fmt: skip
        (rm.Opcode.RELU, a, b, addr("grad", grad_end - 2), 1, 0, 2, E.CMD_OUT_OF_BOUNDS),
        (rm.Opcode.GEMM, a, b, addr("grad", grad_end - 8), 2, 2, 2, E.OK),  # fits exactly
        (rm.Opcode.RELU, a, b, addr("grad", grad_end - 2), 1, 0, 1, E.OK),
        (rm.Opcode.GEMM, a, a, addr("grad", 0), 1, 600, 1, E.OK),  # K > 511: no wrap in fp32
    ]

    async def bench(ctx, tb):
        for i, (op, pa, pb, pc, m, k, n, code) in enumerate(cases):
            t_launch, index = await tb.launch(ctx, op, pa, pb, pc, m, k, n, tag=0x40 + i)
            t_done, _ = await tb.wait_done(ctx, i + 1)
            errors = [e for e in tb.take(t_launch) if e[1] == "cmd_err"]
            if code == E.OK:
                assert errors == [], (i, errors)
            else:
                assert errors == [(t_done - 1, "cmd_err", (code, rm.Engine.COMPUTE, index,
                                                            0x40 + i))], (i, errors)  # fmt: skip
                assert t_done == t_launch + 1 + tm.refused_command_cycles()

    tb.run(bench)
