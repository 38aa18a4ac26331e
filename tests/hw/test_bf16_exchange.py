# amaranth: UnusedElaboratable=no
"""The bf16 gradient exchange (``DescFlag.BF16``) in Amaranth's simulator, two comm-only nodes.

``docs/numerics.md``, "The bf16 gradient exchange": node 0 sends fp32 gradients as bf16
(two per payload word) into node 1's RX window, a plain write or a reduce-add onto node 1's
own fp32 gradients.  Checked against an independent NumPy reference built from
``model/fp.py``'s word functions (and a hand-worked table of the specials): the memory
node 1 holds afterwards, the link words seen on node 0's transmit port (H0 bit 7, payload
packing, H2 stepping by twice the payload), the descriptor's time and DONE_CYCLE against
``gradsync.spec.timing.descriptor_cycles(..., bf16=True)``, ``PERF_TX_CYCLES`` and
``PERF_TX_BYTES`` (wire bytes), RECEIVED / RX_BYTES / the receive trace (fp32 bytes), at 4
and 1 link bytes per cycle (``LINK_SET``) and with packets cut mid-chunk.  Also the
refusals in ``rm.DESCRIPTOR_CHECKS`` order (``BAD_FLAGS`` on a fixed-point node,
``MISALIGNED`` for a BF16 LENGTH of 12) and that a bf16 node's fp32 send keeps the
fixed-point node's cycles.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gradsync.hw.cluster import Cluster
from gradsync.model.fp import bf16_to_fp32, fp32_add, fp32_to_bf16
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.formats import BFloat16Format
from gradsync.spec.link import (
    LinkConfig,
    link_set_value,
    memory_bytes,
    packet_payloads,
    wire_bytes,
)
from tests.hw.comm_host import FMT, GB, HW, Host, run_sim

BF = BFloat16Format()
DST = GB + 0x400  # node 1's window; its local gradients (SRC) sit at GB
TAG = rm.encode_tag(2, 1, 7)
WINDOW = 1
BF16_REDUCE = rm.DescFlag.BF16 | rm.DescFlag.REDUCE_ADD

#: Hand-worked (local g, sent p, plain-write result, reduce-add result), fp32 words:
#: w = bf16_to_fp32(fp32_to_bf16(p)), reduce-add r(r(g) + w), r = round to bf16 precision.
BY_HAND = [
    # ties to even on the send: 1 + 2**-8 -> 1.0, 1 + 3 * 2**-8 -> 1 + 2**-6 ...
    (0x0000_0000, 0x3F80_8000, 0x3F80_0000, 0x3F80_0000),
    (0x0000_0000, 0x3F81_8000, 0x3F82_0000, 0x3F82_0000),
    # ... just above a tie rounds up
    (0x0000_0000, 0x3F80_8001, 0x3F81_0000, 0x3F81_0000),
    # the local operand rounded first: r(1 + 2**-8) = 1, 1 + (1 + 2**-7) is a tie -> 2
    # (unrounded, 2 + 3 * 2**-8 would round up to 2 + 2**-6 = 0x40010000)
    (0x3F80_8000, 0x3F81_0000, 0x3F81_0000, 0x4000_0000),
    # the sum rounded: 1 + 2**-8 is a tie -> 1 (unrounded 0x3F808000)
    (0x3F80_0000, 0x3B80_0000, 0x3B80_0000, 0x3F80_0000),
    # cancellation to +0 in both orders
    (0x3F80_0000, 0xBF80_0000, 0xBF80_0000, 0x0000_0000),
    (0xBF80_0000, 0x3F80_0000, 0x3F80_0000, 0x0000_0000),
    # largest finite fp32 rounds to infinity on the send; the largest bf16 twice overflows
    (0x0000_0000, 0x7F7F_FFFF, 0x7F80_0000, 0x7F80_0000),
    (0x7F7F_0000, 0x7F7F_0000, 0x7F7F_0000, 0x7F80_0000),
    # subnormals flushed: a sent one becomes a signed zero, a local one reads as zero
    (0x3F80_0000, 0x8040_0000, 0x8000_0000, 0x3F80_0000),
    (0x0040_0000, 0x4040_0000, 0x4040_0000, 0x4040_0000),
    # NaN payloads and inf - inf give the canonical NaN
    (0x3F80_0000, 0x7F80_0001, 0x7FC0_0000, 0x7FC0_0000),
    (0xFFC1_2345, 0x3F80_0000, 0x3F80_0000, 0x7FC0_0000),
    (0x7F80_0000, 0xFF80_0000, 0xFF80_0000, 0x7FC0_0000),
    # negative zeros: -0 + -0 = -0
    (0x8000_0000, 0x8000_0000, 0x8000_0000, 0x8000_0000),
    # infinity plus a finite value; halves kept apart: a negative low, positive high
    (0x4000_0000, 0xFF80_0000, 0xFF80_0000, 0xFF80_0000),
]


def _r(x: np.ndarray) -> np.ndarray:
    """fp32 words rounded to bf16 precision and widened back (the doc's ``r``)."""
    return bf16_to_fp32(fp32_to_bf16(x))


def reference(local: np.ndarray, sent: np.ndarray, reduce: bool) -> np.ndarray:
    """What node 1 holds after the exchange: fp32 words (``docs/numerics.md``)."""
    w = bf16_to_fp32(fp32_to_bf16(sent))
    return _r(fp32_add(_r(local), w)) if reduce else w


def _vectors(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(local, sent) fp32 words: the hand table, then random values with close exponents
    and random low bits (every rounding case), signs mixed."""
    hand = np.array(BY_HAND, dtype=np.uint32)
    rng = np.random.default_rng(seed)
    k = max(n - len(hand), 0)
    exp = rng.integers(120, 136, size=(2, k))
    frac = rng.integers(0, 1 << 23, size=(2, k))
    sign = rng.integers(0, 2, size=(2, k))
    rand = (sign << 31 | exp << 23 | frac).astype(np.uint32)
    return np.concatenate([hand[:, 0], rand[0]])[:n], np.concatenate([hand[:, 1], rand[1]])[:n]


def test_the_reference_agrees_with_the_hand_table():
    hand = np.array(BY_HAND, dtype=np.uint32)
    np.testing.assert_array_equal(reference(hand[:, 0], hand[:, 1], False), hand[:, 2])
    np.testing.assert_array_equal(reference(hand[:, 0], hand[:, 1], True), hand[:, 3])


# ----------------------------------------------------------------------------- the bench


def _descriptor(length: int, flags: int, **kw) -> rm.Descriptor:
    fields = dict(
        src_addr=GB, length=length, peer=1, remote_addr=DST, window=WINDOW, tag=TAG, flags=flags
    )
    fields.update(kw)
    return rm.Descriptor(**fields)


def _exchange(sent, local, flags: int, link: LinkConfig, fmt=BF) -> dict:
    """Node 0 sends ``sent`` (fp32 words at GB) with ``flags`` into node 1's window at DST
    (its SRC, holding ``local``, at GB), both nodes on ``link`` (LINK_SET); what is seen."""
    dut = Cluster(HW, fmt, 2, compute=False)
    length = 4 * len(sent)
    out = {"beats": []}

    async def monitor(ctx):
        tx = dut.nodes[0].tx
        async for _, _, valid, ready, beat in ctx.tick().sample(tx.valid, tx.ready, tx.p):
            if valid and ready:
                out["beats"].append((int(beat.data), int(beat.last)))

    async def bench(ctx):
        h = Host(ctx, dut)
        for n in (0, 1):
            await h.write(n, rm.offset("CONTROL"), 1)  # trace_enable
            await h.write(n, rm.offset("LINK_SET"), link_set_value(link))
        await h.load(0, GB, [int(w) for w in sent])
        await h.load(1, GB, [int(w) for w in local])
        await h.window(1, WINDOW, DST, GB, length, TAG)
        await h.send(0, _descriptor(length, flags), queue=1)
        for _ in range(200):  # bounded: a lost packet fails the test, it does not hang
            if await h.read(1, rm.rx_window_reg(WINDOW, "RECEIVED")) >= length:
                break
            for _ in range(20):
                await ctx.tick()
        assert await h.read(0, rm.dma_reg(1, "DONE")) == 1
        for _ in range(100):  # the last acknowledgements
            await ctx.tick()
        out["received"] = await h.read(1, rm.rx_window_reg(WINDOW, "RECEIVED"))
        regs = ("ERR_COUNT", "RX_BYTES", "PERF_TX_BYTES", "PERF_TX_CYCLES", "PERF_TX_PACKETS")
        for n in (0, 1):
            for reg in regs:
                out[f"{n}.{reg}"] = await h.read(n, rm.offset(reg))
        out["trace0"], out["trace1"] = await h.trace(0), await h.trace(1)
        out["ring"] = await h.dump(0, rm.RING_MEM_BASE + 0x100, 8)
        out["data"] = np.array(await h.dump(1, DST, len(sent)), dtype=np.uint32)
        out["local_after"] = np.array(await h.dump(1, GB, len(sent)), dtype=np.uint32)

    from amaranth.sim import Simulator

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(monitor)
    sim.add_testbench(bench)
    sim.run()
    return out


def _records(trace, engine, event):
    return [r for r in trace if r.engine == engine and r.event == event]


def _packets(beats) -> list[list[int]]:
    """The beats cut into packets (H0, H1, H2, payload..., CRC), as ``last`` marks them."""
    packets, cur = [], []
    for data, last in beats:
        cur.append(data)
        if last:
            packets.append(cur)
            cur = []
    assert not cur
    return packets


def _hw(link: LinkConfig):
    return dataclasses.replace(
        HW,
        link_bytes_per_cycle=link.bytes_per_cycle,
        link_latency_cycles=link.latency_cycles,
        max_payload_bytes=link.max_payload_bytes,
    )


# ------------------------------------------------------------------------ the exchange

CASES = [
    # (elements, flags, link): 8 B (one word); an odd number of packets (5) with a packet
    # boundary in the middle of the chunk (5-word packets); one full 256 B packet (64
    # words, 512 B of fp32); at 1 B/cycle, 5 and 3 packets of up to 7 words
    (2, BF16_REDUCE, LinkConfig(4, 6, 256)),
    (46, BF16_REDUCE, LinkConfig(4, 6, 20)),
    (46, rm.DescFlag.BF16, LinkConfig(4, 6, 20)),
    (128, BF16_REDUCE, LinkConfig(4, 6, 256)),
    (62, BF16_REDUCE, LinkConfig(1, 9, 28)),
    (30, rm.DescFlag.BF16, LinkConfig(1, 9, 28)),
]


def _case_id(case) -> str:
    elements, flags, link = case
    kind = "reduce" if flags & rm.DescFlag.REDUCE_ADD else "write"
    return f"{elements}el-{kind}-{link.bytes_per_cycle}Bpc-{link.max_payload_bytes}B"


@pytest.mark.parametrize("elements,flags,link", CASES, ids=[_case_id(c) for c in CASES])
def test_a_bf16_send_lands_as_the_reference_in_the_cycles_of_its_wire_bytes(elements, flags, link):
    local, sent = _vectors(elements, seed=elements)
    reduce = bool(flags & rm.DescFlag.REDUCE_ADD)
    out = _exchange(sent, local, flags, link)
    length = 4 * elements
    wire = wire_bytes(length, bf16=True)
    payloads = packet_payloads(wire, link)

    # memory: the reference, element by element; the local operands untouched
    want = reference(local, sent, reduce)
    bad = np.flatnonzero(out["data"] != want)
    assert not len(bad), [
        f"[{i}] g {local[i]:08X} p {sent[i]:08X}: RTL {out['data'][i]:08X}, want {want[i]:08X}"
        for i in bad[:6]
    ]
    np.testing.assert_array_equal(out["local_after"], local)

    # the link: H0 bit 7, payload words of two bf16 (element 2k low), H2 in fp32 bytes
    bf = fp32_to_bf16(sent).astype(np.uint32)
    words = bf[0::2] | bf[1::2] << 16
    packets = _packets(out["beats"])
    assert [len(p) - 4 for p in packets] == [p // 4 for p in payloads]
    first = 0
    for seq, (pkt, pay) in enumerate(zip(packets, payloads, strict=True)):
        assert pkt[0] == (WINDOW | 1 << 7 | int(reduce) << 8 | (pay // 4 - 1) << 9 | seq << 16)
        assert pkt[0] >> 7 & 1 == 1
        assert pkt[1] == TAG and pkt[2] == DST + memory_bytes(first, bf16=True)
        assert pkt[3:-1] == [int(w) for w in words[first // 4 : (first + pay) // 4]]
        first += pay

    # time: the wire bytes' link time; DONE_CYCLE is the completion the trace shows
    hw = _hw(link)
    (start,) = _records(out["trace0"], rm.Engine.DMA_LO, rm.TraceEvent.START)
    (end,) = _records(out["trace0"], rm.Engine.DMA_LO, rm.TraceEvent.END)
    assert end.cycle - start.cycle == tm.descriptor_cycles(length, hw, bf16=True)
    assert end.cycle - start.cycle < tm.descriptor_cycles(length, hw)
    assert out["ring"][6] == 1 << 31 and out["ring"][7] == end.cycle
    assert out["0.PERF_TX_CYCLES"] == tm.chunk_tx_cycles(wire, link)

    # byte counts: wire bytes sent, fp32 bytes received; traces say LENGTH / fp32 bytes
    assert out["0.PERF_TX_BYTES"] == wire and out["0.PERF_TX_PACKETS"] == len(payloads)
    assert out["received"] == length and out["1.RX_BYTES"] == length
    assert (start.aux, end.aux) == (length, length)
    for event in (rm.TraceEvent.START, rm.TraceEvent.END):
        assert [r.aux for r in _records(out["trace0"], rm.Engine.NIC_TX, event)] == [length]
    rx_ends = _records(out["trace1"], rm.Engine.NIC_RX, rm.TraceEvent.END)
    assert [r.aux for r in rx_ends] == [memory_bytes(p, bf16=True) for p in payloads]
    assert (out["0.ERR_COUNT"], out["1.ERR_COUNT"]) == (0, 0)


def test_a_bf16_nodes_fp32_send_keeps_the_fixed_point_nodes_cycles_and_sums_in_fp32():
    """Without BF16 a bf16 node sends and applies as before: one fp32 element per payload
    word, the fixed-point node's trace cycle for cycle (same words, plain and reduce-add)."""
    link = LinkConfig(4, 6, 20)
    local, sent = _vectors(30, seed=5)
    got = _exchange(sent, local, rm.DescFlag.REDUCE_ADD, link)
    fixed = _exchange(sent, local, 0, link, fmt=FMT)
    np.testing.assert_array_equal(got["data"], fp32_add(local, sent))
    cycles = [(r.cycle, r.engine, r.event, r.aux) for r in got["trace0"] + got["trace1"]]
    assert cycles == [
        (r.cycle, r.engine, r.event, r.aux) for r in fixed["trace0"] + fixed["trace1"]
    ]
    (start,) = _records(got["trace0"], rm.Engine.DMA_LO, rm.TraceEvent.START)
    (end,) = _records(got["trace0"], rm.Engine.DMA_LO, rm.TraceEvent.END)
    assert end.cycle - start.cycle == tm.descriptor_cycles(4 * len(sent), _hw(link))
    assert all(p[0] >> 7 & 1 == 0 for p in _packets(got["beats"]))
    assert got["0.PERF_TX_BYTES"] == 4 * len(sent) == got["1.RX_BYTES"]


# ------------------------------------------------------------------------------ refusals


def _refusals(fmt, descriptors) -> dict:
    """Post ``descriptors`` in order on node 0's queue 1; each one's STATUS, the last
    ERR_CODE and what node 0 sent."""
    dut = Cluster(HW, fmt, 2, compute=False)
    out = {}

    async def bench(ctx):
        h = Host(ctx, dut)
        await h.load(0, GB, list(range(64)))
        base = rm.RING_MEM_BASE + 0x100
        for slot, desc in enumerate(descriptors):
            await h.load(0, base + 32 * slot, desc.encode())
        await h.send(0, descriptors[0], slot=0, queue=1)
        await h.write(0, rm.dma_reg(1, "DOORBELL"), len(descriptors))
        for _ in range(200):
            if await h.read(0, rm.dma_reg(1, "DONE")) == len(descriptors):
                break
        assert await h.read(0, rm.dma_reg(1, "DONE")) == len(descriptors)
        ring = await h.dump(0, base, 8 * len(descriptors))
        out["status"] = [ring[8 * s + 6] for s in range(len(descriptors))]
        out["errors"] = await h.read(0, rm.dma_reg(1, "ERRORS"))
        code = await h.read(0, rm.offset("ERR_CODE"))
        out["err_code"] = rm.reg("ERR_CODE").field("code").get(code)
        out["err_info"] = await h.read(0, rm.offset("ERR_INFO"))
        out["sent"] = ctx.get(dut.n0_tx_packets)

    run_sim(dut, bench)
    return out


BF16 = rm.DescFlag.BF16
E = rm.ErrorCode


def _status(code) -> int:
    return 1 << 31 | int(code)


def test_a_fixed_point_node_refuses_bf16_with_bad_flags_in_the_checks_order():
    cases = [
        (_descriptor(16, BF16), E.BAD_FLAGS),
        (_descriptor(16, BF16 | rm.DescFlag.REDUCE_ADD), E.BAD_FLAGS),
        (_descriptor(16, BF16, version=2), E.BAD_VERSION),  # version before flags
        (_descriptor(0, BF16), E.BAD_FLAGS),  # flags before zero length
        (_descriptor(12, BF16, src_addr=GB + 2), E.BAD_FLAGS),  # ... and alignment
        (_descriptor(16, BF16, peer=0), E.BAD_FLAGS),  # ... and the peer
        (_descriptor(12, 0), E.OK),  # without the flag nothing changed: 12 B is fine
    ]
    out = _refusals(FMT, [d for d, _ in cases])
    assert out["status"] == [_status(c) for _, c in cases]
    assert out["errors"] == len(cases) - 1
    assert out["err_code"] == E.BAD_FLAGS and out["err_info"] == GB
    assert out["sent"] == 1  # only the last descriptor's packet


def test_a_bf16_node_refuses_a_bf16_length_of_12_as_misaligned_in_the_checks_order():
    cases = [  # at most RING_SIZE (8) descriptors
        (_descriptor(12, BF16 | rm.DescFlag.REDUCE_ADD), E.MISALIGNED),
        (_descriptor(12, BF16, version=0), E.BAD_VERSION),  # version before alignment
        (_descriptor(0, BF16), E.ZERO_LENGTH),  # zero length before alignment
        (_descriptor(12, BF16, src_addr=GB + 0x7FC), E.MISALIGNED),  # before the window
        (_descriptor(16, BF16, src_addr=GB + 0x7F8), E.OUT_OF_WINDOW),
        (_descriptor(12, BF16, peer=0), E.MISALIGNED),  # alignment before the peer
        (_descriptor(16, BF16, peer=0), E.UNKNOWN_PEER),
        (_descriptor(12, 0), E.OK),  # fp32 sends keep 4-byte alignment
    ]
    out = _refusals(BF, [d for d, _ in cases])
    assert out["status"] == [_status(c) for _, c in cases]
    assert out["errors"] == len(cases) - 1
    assert out["err_code"] == E.UNKNOWN_PEER
    assert out["sent"] == 1
