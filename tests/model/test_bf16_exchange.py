"""The golden model's bf16 gradient exchange (``DescFlag.BF16``, ``docs/numerics.md``).

References independent of ``model/``: the refusal order of ``regmap.DESCRIPTOR_CHECKS``,
cycle counts worked by hand from the link's framing and the fixed latencies of
``gradsync.spec.timing`` (and checked against its formulas), and the exchange's
arithmetic in NumPy float32 and ``ml_dtypes.bfloat16`` with the device's flush rule
written out here (none of ``model/fp.py``).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from gradsync.model import fp
from gradsync.model import numerics as nx
from gradsync.model.cluster import Cluster
from gradsync.model.link import LinkLayer
from gradsync.spec import link as lk
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.faults import parse_link_faults
from gradsync.spec.formats import BFloat16Format, FixedPointFormat
from gradsync.spec.hardware import HardwareConfig

from .conftest import GUARD, intervals, open_window, post, setup_queues

BF16 = BFloat16Format()
#: 1 byte/cycle, 32-byte payloads, 20 cycles of latency: small numbers to work by hand
HW = HardwareConfig(
    scratchpad_words=4096,
    gradient_words=4096,
    ring_entries=8,
    link_bytes_per_cycle=1,
    link_latency_cycles=20,
    max_payload_bytes=32,
)
NAN32, NAN16 = 0x7FC0_0000, 0x7FC0
TAG = rm.encode_tag(1, 0, 0)


def gaddr(word: int) -> int:
    """Byte address of gradient-SRAM word ``word`` of a bf16 device (2-byte words)."""
    return rm.GRAD_BASE + 2 * word


def sram_words(fp32_words: np.ndarray) -> np.ndarray:
    """fp32 words -> the gradient SRAM's 16-bit words, low half first (by hand)."""
    w = np.asarray(fp32_words, dtype=np.uint64)
    out = np.empty(2 * w.size, dtype=np.int64)
    out[0::2], out[1::2] = (w & 0xFFFF).astype(np.int64), (w >> 16).astype(np.int64)
    return out


def fp32_of(words: np.ndarray) -> np.ndarray:
    w = np.asarray(words, dtype=np.int64)
    return (w[0::2] | (w[1::2] << 16)).astype(np.uint32)


# ----------------------------------------------------------------- the reference
def _ftz(x: np.ndarray) -> np.ndarray:
    tiny = np.float32(2.0**-126)
    return np.where(np.abs(x) < tiny, np.copysign(np.float32(0), x), x).astype(np.float32)


def ref_send(g: np.ndarray) -> np.ndarray:
    """bf16 words the sender puts on the link: flush, round to nearest even, canonical NaN."""
    x = _ftz(np.asarray(g, dtype=np.uint32).view(np.float32))
    with np.errstate(invalid="ignore"):
        b = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    return np.where(np.isnan(x), np.uint16(NAN16), b).astype(np.uint16)


def _widen(p: np.ndarray) -> np.ndarray:
    return (np.asarray(p, dtype=np.uint32) << np.uint32(16)).view(np.float32)


def _word(x: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(x), np.uint32(NAN32), x.view(np.uint32)).astype(np.uint32)


def ref_reduce(local: np.ndarray, payload: np.ndarray) -> np.ndarray:
    """fp32 words of ``r(fp32_add(r(g), w))``, r = round to bf16 and widen back."""
    rg = _widen(ref_send(local))
    with np.errstate(all="ignore"):
        s = _ftz(rg + _widen(payload))
    return _word(_widen(ref_send(_word(s))))


def f(x: float) -> int:
    return int(np.float32(x).view(np.uint32))


#: (local g, the sender's element, reduced result): fp32 words worked out by hand
HAND = [
    (f(1.0), f(2.0**-8), f(1.0)),  # 1 + 2**-8: a bf16 tie, to even (down)
    (f(1 + 2.0**-7), f(2.0**-8), f(1 + 2.0**-6)),  # tie with an odd last bit: up
    (f(1 + 3 * 2.0**-9), f(2.0**-8), f(1 + 2.0**-6)),  # r(g) = 1 + 2**-7 first: then a tie, up
    (0, f(1 + 2.0**-8 + 2.0**-20), f(1 + 2.0**-7)),  # the sender rounds (just above a tie)
    (f(1.5), f(-1.5), 0),  # cancellation: +0
    (0x8000_0000, 0x8000_0000, 0x8000_0000),  # -0 + -0 = -0
    (0x0000_0001, f(1.0), f(1.0)),  # a subnormal local reads as +0
    (f(1.0), 0x807F_FFFF, f(1.0)),  # a subnormal sent is a -0
    (f(1.5 * 2.0**-126), f(-(2.0**-126)), 0),  # 2**-127 flushed to +0
    (0x7F7F_FFFF, f(1.0), 0x7F80_0000),  # the largest fp32 rounds to bf16 infinity
    (f(3e38), f(3e38), 0x7F80_0000),  # overflow of the sum: +inf
    (0x7F80_0000, 0xFF80_0000, NAN32),  # inf - inf: the canonical NaN
    (f(2.0), 0xFFC1_2345, NAN32),  # a NaN sent (sign, payload) is the canonical one
]


def test_reference_agrees_with_the_hand_table():
    local, sent, want = (np.array(c, dtype=np.uint32) for c in zip(*HAND, strict=True))
    np.testing.assert_array_equal(ref_reduce(local, ref_send(sent)), want)


@pytest.mark.parametrize(("g", "s", "want"), HAND)
def test_reduce_rule_by_hand(g, s, want):
    got = fp.bf16_exchange_apply(np.array([g], np.uint32), fp.fp32_to_bf16(np.array([s])))
    assert int(got[0]) == want, f"0x{g:08x} + r(0x{s:08x}) = 0x{int(got[0]):08x}, want 0x{want:08x}"


def _random_fp32(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random words: a quarter near 1 (ties, cancellation between pairs), specials mixed in."""
    a = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    near = (rng.integers(0x3F00, 0x3FFF, n).astype(np.uint32) << np.uint32(16)) | rng.choice(
        np.array([0, 0x8000, 0x7FFF, 0x8001], np.uint32), n
    )
    a = np.where(rng.random(n) < 0.25, near, a)
    specials = np.array(
        [0, 0x8000_0000, 1, 0x807F_FFFF, 0x0080_0000, 0x7F7F_FFFF, 0x7F80_0000, 0xFF80_0000]
        + [NAN32, 0xFFFF_FFFF],
        dtype=np.uint32,
    )
    return np.where(rng.random(n) < 0.03, rng.choice(specials, n), a).astype(np.uint32)


def test_sender_and_receiver_match_numpy_ml_dtypes_on_random_words():
    rng = np.random.default_rng(18)
    g0, g1 = _random_fp32(rng, 1 << 16), _random_fp32(rng, 1 << 16)
    g1[: 1 << 14] = g0[: 1 << 14] ^ np.uint32(0x8000_0000)  # exact cancellations
    sent = nx.bf16_send_words(sram_words(g1))
    np.testing.assert_array_equal(sent, ref_send(g1))
    got = fp32_of(nx.bf16_receive_words(sram_words(g0), sent))
    want = ref_reduce(g0, ref_send(g1))
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, [f"0x{g0[i]:08x}+0x{g1[i]:08x}" for i in bad[:5]]
    np.testing.assert_array_equal(fp32_of(nx.bf16_receive_words(None, sent)), _word(_widen(sent)))
    # the sample exercises what the rules are about
    assert np.count_nonzero(want == NAN32) > 100 and np.count_nonzero(want == 0) > 1000
    assert np.count_nonzero(np.abs(want.view(np.float32)) == np.inf) > 100
    assert np.count_nonzero((g1 & 0xFFFF) == 0x8000) > 1000  # exact ties at the sender


def test_both_replicas_reduce_to_the_same_bits():
    """Node 0 computes r(r(g0) + r(g1)), node 1 r(r(g1) + r(g0)): the same words."""
    rng = np.random.default_rng(7)
    g0, g1 = _random_fp32(rng, 1 << 15), _random_fp32(rng, 1 << 15)
    at0 = fp.bf16_exchange_apply(g0, fp.fp32_to_bf16(g1))
    at1 = fp.bf16_exchange_apply(g1, fp.fp32_to_bf16(g0))
    np.testing.assert_array_equal(at0, at1)
    np.testing.assert_array_equal(fp.bf16_round_fp32(at0), at0)  # already bf16-representable


def test_reduce_rule_refuses_unequal_lengths():
    with pytest.raises(ValueError, match="as many local as payload elements, not 3 and 2"):
        fp.bf16_exchange_apply(np.zeros(3, np.uint32), np.zeros(2, np.uint16))


# ----------------------------------------------------------- descriptor checks
def _good(**change) -> rm.Descriptor:
    d = dict(
        src_addr=rm.GRAD_BASE,
        length=64,
        peer=1,
        remote_addr=rm.GRAD_BASE + 1024,
        window=0,
        tag=TAG,
        flags=int(rm.DescFlag.IRQ | rm.DescFlag.BF16),
    )
    d.update(change)
    return rm.Descriptor(**d)


BF, IRQ = int(rm.DescFlag.BF16), int(rm.DescFlag.IRQ)
OUTSIDE = rm.GRAD_BASE + 2 * HW.gradient_words - 8  # leaves the window (and the SRAM)


@pytest.mark.parametrize(
    ("fmt", "change", "code"),
    [
        (FixedPointFormat(), {"version": 2}, rm.ErrorCode.BAD_VERSION),  # version first
        (FixedPointFormat(), {}, rm.ErrorCode.BAD_FLAGS),
        (FixedPointFormat(), {"length": 0}, rm.ErrorCode.BAD_FLAGS),  # flags before length
        (FixedPointFormat(), {"length": 12, "peer": 7}, rm.ErrorCode.BAD_FLAGS),
        (BF16, {"length": 0, "src_addr": OUTSIDE}, rm.ErrorCode.ZERO_LENGTH),
        (BF16, {"length": 12}, rm.ErrorCode.MISALIGNED),  # 3 fp32 elements: half a word
        (BF16, {"length": 12, "src_addr": OUTSIDE, "peer": 7}, rm.ErrorCode.MISALIGNED),
        (BF16, {"remote_addr": rm.GRAD_BASE + 2}, rm.ErrorCode.MISALIGNED),
        (BF16, {"src_addr": OUTSIDE, "peer": 7}, rm.ErrorCode.OUT_OF_WINDOW),
        (BF16, {"peer": 7}, rm.ErrorCode.UNKNOWN_PEER),
    ],
)
def test_bad_bf16_descriptor_is_refused_in_descriptor_checks_order(fmt, change, code):
    desc = _good(**change)
    out = {}

    async def sender(dev):
        await setup_queues(dev, win_len=HW.gradient_words * 2 - 64)
        await post(dev, 1, 0, desc)
        out["status"] = await dev.wait_irq(int(rm.Irq.ERROR))
        out["err"] = await dev.read32(rm.offset("ERR_CODE"))
        out["ring"] = await dev.dump(rm.RING_MEM_BASE + HW.ring_entries * 32, 8)

    async def receiver(dev):
        await setup_queues(dev)

    cl = Cluster(2, HW, fmt)
    cl.run([sender, receiver])
    assert rm.reg("ERR_CODE").field("code").get(out["err"]) == code
    assert rm.Descriptor.decode(out["ring"].tolist()).status == rm.descriptor_status(code)
    assert not intervals(cl.devices[0], rm.Engine.NIC_TX)
    assert cl.devices[0].perf["tx_bytes"] == 0
    ((start, end, _, aux),) = intervals(cl.devices[0], rm.Engine.DMA_LO)
    assert end - start == tm.refused_descriptor_cycles(HW) and aux == code


def test_the_check_order_is_the_specs():
    """The parametrised cases above walk ``DESCRIPTOR_CHECKS`` pairwise in this order."""
    E = rm.ErrorCode
    assert rm.DESCRIPTOR_CHECKS == (
        E.BAD_VERSION, E.BAD_FLAGS, E.ZERO_LENGTH, E.MISALIGNED, E.OUT_OF_WINDOW, E.UNKNOWN_PEER
    )  # fmt: skip


# -------------------------------------------------------------- one bf16 chunk
#: 24 fp32 elements (96 bytes): 48 wire bytes, packets of 32 + 16 wire bytes covering
#: 64 + 32 bytes of fp32 memory at the receiver.
N_ELEM, LENGTH = 24, 96
SRC_WORD, DST_WORD = 0, 512  # gradient SRAM words (2 per element)


def _values(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(0, 1, N_ELEM).astype(np.float32).view(np.uint32).copy()
    v[:4] = [f(1 + 2.0**-8), f(1 + 3 * 2.0**-8), 0x7F80_0000, 0x0000_0001]  # ties, inf, subn.
    return v


def run_chunk(reduce: bool = True, link_faults: list[dict] | None = None, capture=None):
    """Node 0 sends one BF16 descriptor of ``LENGTH`` bytes to node 1's window; returns
    the cluster, the sender's dumped ring slot and both nodes' counters."""
    g0, g1 = _values(1), _values(2)
    flags = rm.DescFlag.IRQ | rm.DescFlag.BF16 | (rm.DescFlag.REDUCE_ADD if reduce else 0)
    desc = rm.Descriptor(gaddr(SRC_WORD), LENGTH, 1, gaddr(DST_WORD), 0, TAG, flags=int(flags))
    out = {}

    async def sender(dev):
        await setup_queues(dev)
        await dev.load(gaddr(SRC_WORD), sram_words(g0))
        await dev.load(rm.SCRATCH_BASE, np.zeros(512))  # the receiver opens its window first
        await post(dev, 1, 0, desc)
        await dev.wait_irq(int(rm.Irq.DMA_Q1))
        out["ring"] = await dev.dump(rm.RING_MEM_BASE + HW.ring_entries * 32, 8)
        out["tx"] = [await dev.read32(rm.offset(r)) for r in ("PERF_TX_BYTES", "PERF_TX_PACKETS")]

    async def receiver(dev):
        await setup_queues(dev)
        await dev.load(gaddr(SRC_WORD), sram_words(g1))
        await dev.load(gaddr(DST_WORD - 8), np.full(2 * N_ELEM + 16, GUARD))
        await open_window(dev, 0, gaddr(DST_WORD), gaddr(SRC_WORD), LENGTH, TAG, LENGTH)
        await dev.wait_irq(int(rm.Irq.RX))
        out["rx"] = [await dev.read32(rm.offset(r)) for r in ("RX_BYTES", "PERF_RX_PACKETS")]
        out["received"] = await dev.read32(rm.rx_window_reg(0, "RECEIVED"))

    cl = Cluster(2, HW, BF16, link_faults=link_faults)
    cl.run([sender, receiver])
    return cl, out, g0, g1


def test_bf16_chunk_reduces_into_fp32_memory_with_wire_bytes_on_the_link():
    cl, out, g0, g1 = run_chunk()
    got = cl.devices[1].grad
    np.testing.assert_array_equal(
        fp32_of(got[DST_WORD : DST_WORD + 2 * N_ELEM]), ref_reduce(g1, ref_send(g0))
    )
    assert (got[DST_WORD - 8 : DST_WORD] == GUARD).all()  # guards around the target
    assert (got[DST_WORD + 2 * N_ELEM : DST_WORD + 2 * N_ELEM + 8] == GUARD).all()
    assert out["tx"] == [48, 2]  # PERF_TX_BYTES: wire bytes, half of LENGTH
    assert out["rx"] == [96, 2] and out["received"] == 96  # fp32 bytes of the window
    assert [aux for *_, aux in intervals(cl.devices[1], rm.Engine.NIC_RX)] == [64, 32]


def test_bf16_plain_write_is_the_widened_bf16_payload():
    cl, _, g0, _ = run_chunk(reduce=False)
    got = fp32_of(cl.devices[1].grad[DST_WORD : DST_WORD + 2 * N_ELEM])
    np.testing.assert_array_equal(got, _word(_widen(ref_send(g0))))


def test_bf16_chunk_cycles_by_hand():
    """Framing 12 + 4 bytes at 1 byte/cycle: packets of 32 and 16 wire bytes take 48 and 32
    cycles. The descriptor: fetch 1 + 8 + 1, 80 on the link, write-back 1 = 91 cycles
    (fp32 exchange: three 48-cycle packets, 155). Packet 1 leaves at tx + 48, its CRC
    arrives 20 - 4 cycles later, it is visible 1 + 3 + 8 cycles after that: tx + 76;
    packet 2 at tx + 80 + 16 + 1 + 3 + 4 = tx + 104."""
    cl, out, *_ = run_chunk()
    ((grant, done, _, aux),) = intervals(cl.devices[0], rm.Engine.DMA_LO)
    ((tx, tx_end, _, _),) = intervals(cl.devices[0], rm.Engine.NIC_TX)
    assert done - grant == 91 == tm.descriptor_cycles(LENGTH, HW, bf16=True)
    assert tm.descriptor_cycles(LENGTH, HW) == 155  # fp32 exchange, for contrast
    assert out["ring"][7] == done and aux == LENGTH  # DONE_CYCLE
    assert (tx - grant, tx_end - tx) == (10, 80)
    rx = [cycle for _, cycle, _, _ in intervals(cl.devices[1], rm.Engine.NIC_RX)]
    assert rx == [tx + 76, tx + 104]
    crc1 = tx + 48 + tm.crc_arrival_offset(HW)
    first = tm.rx_visible_cycle(crc1, 0, 32)
    crc2 = tx + 80 + tm.crc_arrival_offset(HW)
    assert rx == [first, tm.rx_visible_cycle(crc2, first, 16)]
    assert lk.packet_payloads(lk.wire_bytes(LENGTH, True), HW.link) == [32, 16]


def _capture_link_words(monkeypatch) -> list:
    sent = []
    original = LinkLayer.send

    def send(self, t0, packets):
        sent.extend(words for words, _ in packets)
        return original(self, t0, packets)

    monkeypatch.setattr(LinkLayer, "send", send)
    return sent


def test_faulted_link_layer_carries_bf16_words_and_matches_the_fast_path(monkeypatch):
    fast, fast_out, g0, _ = run_chunk()
    sent = _capture_link_words(monkeypatch)
    clean, clean_out, *_ = run_chunk(link_faults=[{"seed": 1}, {"seed": 2}])
    faults = parse_link_faults("corrupt=20000,drop=8000,seed=3", 2)
    bad, bad_out, *_ = run_chunk(link_faults=faults)
    # the link words: H0 with the bf16 bit, payload word k = elements 2k | 2k + 1 << 16
    p = ref_send(g0).astype(np.uint32)
    words = (p[0::2] | (p[1::2] << np.uint32(16))).tolist()
    h0 = [0 | 1 << 7 | 1 << 8 | (n - 1) << 9 for n in (8, 4)]
    assert sent[:2] == [[h0[0], TAG, gaddr(DST_WORD), *words[:8]],
                        [h0[1], TAG, gaddr(DST_WORD) + 64, *words[8:]]]  # fmt: skip
    window = slice(DST_WORD - 8, DST_WORD + 2 * N_ELEM + 8)
    for cl, out in ((clean, clean_out), (bad, bad_out)):
        np.testing.assert_array_equal(cl.devices[1].grad[window], fast.devices[1].grad[window])
        assert out["rx"] == fast_out["rx"] and out["received"] == 96
    assert [r[1:] for r in intervals(clean.devices[1], rm.Engine.NIC_RX)] == [
        r[1:] for r in intervals(fast.devices[1], rm.Engine.NIC_RX)
    ]  # zero rates: the fast path's cycles
    counters = bad.link_counters()[0]
    assert counters["crc_errors"] > 0 and counters["retransmits"] > 0  # the CRC caught them
