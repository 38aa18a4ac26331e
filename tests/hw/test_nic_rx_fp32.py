# amaranth: UnusedElaboratable=no
"""The receiver's fp32 reduce-add (a bf16 node, ``NicRx(fp32=True)``) in Amaranth's simulator.

Packets of 32-bit words are reduce-added into a word memory behind the
receiver's ports; every written word must be the fp32 sum of the local word
and the payload word under ``docs/numerics.md``'s rule, computed two
independent ways: NumPy ``float32`` with the flush and NaN rules
(``tests/hw/fp_vectors.fp32_reference_add``) and the golden model's
``model.numerics.reduce_add`` on the SRAM words (two per element, low half
first).  The vectors are the hand-worked additions (ties to even both ways,
exact cancellation to +0 in both orders, signed zeros, subnormal inputs and
results, overflow, inf - inf, NaN payloads), every ordered pair of the fp32
specials, and random pairs with close exponents.  The same packets take the
same cycles as in the fixed-point receiver (the adder is combinational).
"""

from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from gradsync.hw.nic_rx import WIN_CTRL, WIN_DST, WIN_LEN, WIN_SRC, WIN_TAG, NicRx
from gradsync.model.numerics import reduce_add
from gradsync.spec import regmap as rm
from gradsync.spec.formats import BFloat16Format

from .fp_vectors import ADD_BY_HAND, FP32_SPECIALS, adder_pairs, all_pairs, fp32_reference_add
from .test_nic_rx import RxBench, _beats

BASE = 0x1000
PAYLOAD_WORDS = 16
DST_WORD = 1024  # the sums go to word DST_WORD + i, the local words sit at word i
TAG = rm.encode_tag(1, 0, 3)


def _vectors() -> tuple[np.ndarray, np.ndarray]:
    """(local, payload) fp32 words: by hand, the specials' pairs, random close exponents."""
    hand = np.array(ADD_BY_HAND, dtype=np.uint32)
    sa, sb = all_pairs(FP32_SPECIALS)
    ra, rb = adder_pairs(np.random.default_rng(18), 400)
    local = np.concatenate([hand[:, 0], sa, ra])
    payload = np.concatenate([hand[:, 1], sb, rb])
    pad = -len(local) % PAYLOAD_WORDS
    return np.pad(local, (0, pad)), np.pad(payload, (0, pad))


def _run(fp32: bool, local: np.ndarray, payload: np.ndarray):
    """Send ``payload`` in reduce-add packets onto ``local``; return (memory, trace events)."""
    n = len(local)
    dut = NicRx(
        max_payload_words=PAYLOAD_WORDS,
        credits=4,
        windows=1,
        regions=((BASE, 4 * (DST_WORD + n)),),
        operand_bits=16,
        saturate=True,
        fp32=fp32,
        nak_holdoff_cycles=256,
    )
    out = {}

    async def bench(ctx):
        b = RxBench(ctx, dut)
        b.mem = {i: int(w) for i, w in enumerate(local)}
        for reg, value in (
            (WIN_DST, BASE + 4 * DST_WORD),
            (WIN_SRC, BASE),
            (WIN_LEN, 4 * n),
            (WIN_TAG, TAG),
            (WIN_CTRL, 1),
        ):
            await b.write(0, reg, value)
        for seq, first in enumerate(range(0, n, PAYLOAD_WORDS)):
            words = [int(w) for w in payload[first : first + PAYLOAD_WORDS]]
            b.beats += _beats(0, TAG, BASE + 4 * (DST_WORD + first), words, seq)
        packets = n // PAYLOAD_WORDS
        while ctx.get(dut.packets_applied) < packets and b.cycle < 40 * packets + 200:
            await b.tick()
        assert ctx.get(dut.packets_applied) == packets and ctx.get(dut.drops) == 0
        out["mem"] = np.array([b.mem.get(DST_WORD + i, -1) for i in range(n)], dtype=np.int64)
        out["events"] = b.events

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out["mem"], out["events"]


def test_fp32_reduce_add_matches_numpy_and_the_model_in_the_cycles_of_fixed_point():
    local, payload = _vectors()
    got, events = _run(True, local, payload)
    want = fp32_reference_add(local, payload).astype(np.int64)
    bad = np.flatnonzero(got != want)
    assert not len(bad), [
        f"{local[i]:08X} + {payload[i]:08X}: RTL {got[i]:08X}, NumPy {want[i]:08X}" for i in bad[:5]
    ]
    fmt = BFloat16Format()
    model = fmt.join_fp32(reduce_add(fmt.split_fp32(local), fmt.split_fp32(payload), fmt))
    np.testing.assert_array_equal(got, model.astype(np.int64))
    # the hand table's sums, as written there
    hand = np.array(ADD_BY_HAND, dtype=np.int64)
    np.testing.assert_array_equal(got[: len(hand)], hand[:, 2])
    # the fixed-point receiver, given the same packets, traces each one in the same cycle
    _, fixed_events = _run(False, local, payload)
    assert events == fixed_events and len(events) == len(local) // PAYLOAD_WORDS
