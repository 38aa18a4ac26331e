"""All-reduce over descriptors: exchange (N = 2) and ring (N > 2) against a NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest

from gradsync.firmware.collectives import chunk_plan
from gradsync.firmware.driver import Driver
from gradsync.firmware.training import split_chunks
from gradsync.spec import regmap as rm

from .conftest import FMT, HW, gaddr, run_programs

WORDS = 700  # 1400 bytes per node: chunks of 512, 512, 376
CHUNK = 512
G_WORD, R_WORD = 0, 1024


def reference(grads: list[np.ndarray], chunk: int) -> np.ndarray:
    """Saturating ring reduction, written from the documented order, per chunk and segment."""
    nodes = len(grads)
    out = np.empty_like(grads[0])
    for c0 in range(0, WORDS * 2, chunk):
        n_bytes = min(chunk, WORDS * 2 - c0)
        units = n_bytes // 4
        base, extra = divmod(units, nodes)
        off = c0
        for j in range(nodes):
            seg = (base + (j < extra)) * 4 if nodes > 2 else n_bytes
            if nodes <= 2 and j:
                break
            lo, hi = off // 2, (off + seg) // 2
            acc = grads[j][lo:hi].copy()
            for t in range(1, nodes):
                acc = np.clip(grads[(j + t) % nodes][lo:hi] + acc, FMT.qmin, FMT.qmax)
            out[lo:hi] = acc
            off += seg
    return out


def exchange_program(grad: np.ndarray, results: dict):
    async def prog(dev):
        drv = Driver(dev)
        info = await drv.init(HW.gradient_words * 2)
        node, nodes = info.node_id, info.num_nodes
        await dev.load(gaddr(G_WORD), grad)
        chunks = split_chunks(WORDS * 2, CHUNK)
        state = {}
        to_post: list = []
        for c, (off, n) in enumerate(chunks):
            plan = chunk_plan(node, nodes, n)
            state[c] = {"plan": plan, "level": 0, "t": 0, "pending": list(plan.sends), "off": off}
            await drv.open_window(
                c,
                gaddr(R_WORD) + off,
                gaddr(G_WORD) + off,
                n,
                rm.encode_tag(1, c, 0),
                plan.thresholds[0],
            )
        # make sure every node has opened its windows before anything is sent
        await dev.load(rm.SCRATCH_BASE, np.zeros(1024))
        done = set()
        arm: list = []

        def release(c):
            st = state[c]
            keep = []
            for ps in st["pending"]:
                (to_post if ps.prereq <= st["level"] else keep).append(
                    (c, ps) if ps.prereq <= st["level"] else ps
                )
            st["pending"] = keep

        def on_rx(w):
            st = state[w]
            th = st["plan"].thresholds
            st["level"] = th[st["t"]]
            st["t"] += 1
            release(w)
            if st["t"] < len(th):
                arm.append((w, th[st["t"]]))
            else:
                done.add(w)

        drv.on_rx_done = on_rx
        for c in state:
            release(c)
        while len(done) < len(chunks):
            while arm:
                await drv.arm_window(*arm.pop(0))
            while to_post and drv.ring_free(1) > 0:
                c, ps = to_post.pop(0)
                base = gaddr(R_WORD) if ps.from_recv else gaddr(G_WORD)
                off = state[c]["off"] + ps.offset
                await drv.post(
                    1,
                    rm.Descriptor(
                        base + off,
                        ps.length,
                        (node + 1) % nodes,
                        gaddr(R_WORD) + off,
                        c,
                        rm.encode_tag(1, c, 0),
                        flags=int(rm.DescFlag.IRQ | (rm.DescFlag.REDUCE_ADD if ps.reduce else 0)),
                    ),
                )
            await drv.service()
        results[node] = await dev.dump(gaddr(R_WORD), WORDS)

    return prog


@pytest.mark.parametrize("nodes", [2, 3, 4, 5])
def test_allreduce_equals_saturating_ring_reference(nodes):
    rng = np.random.default_rng(nodes)
    grads = [rng.integers(FMT.qmin // 2, FMT.qmax // 2, WORDS) for _ in range(nodes)]
    for g in grads:  # saturation corners: sums that clip high and low whatever the order
        g[:50] = FMT.qmax - 3
        g[50:100] = FMT.qmin // 2 - 1
    grads[0][100:400] = FMT.qmax  # order-sensitive: clips part-way, then comes back down
    grads[1][100:400] = FMT.qmax
    for g in grads[2:]:
        g[100:400] = -5000
    results: dict = {}
    cl = run_programs([exchange_program(g, results) for g in grads])
    want = reference(grads, CHUNK)
    assert (want[:50] == FMT.qmax).all() and (want[50:100] == FMT.qmin).all()
    if nodes > 2:  # the reference really follows the ring order, not one clip of the sum
        assert not np.array_equal(want, np.clip(sum(grads), FMT.qmin, FMT.qmax))
    for node in range(nodes):
        assert np.array_equal(results[node], want), f"node {node}"
        assert cl.devices[node].rx_drops == 0 and cl.devices[node].err_count == 0


@pytest.mark.parametrize("nodes", [3, 4, 7])
@pytest.mark.parametrize("length", [4, 12, 376, 512])
def test_ring_plan_receives_every_segment_and_sends_balance(nodes, length):
    plans = [chunk_plan(i, nodes, length) for i in range(nodes)]
    sent = sum(s.length for p in plans for s in p.sends)
    received = sum(p.expected for p in plans)
    assert sent == received == 2 * (nodes - 1) * length
    for p in plans:
        assert p.thresholds[-1] == p.expected
        assert all(s.prereq <= p.expected for s in p.sends)
