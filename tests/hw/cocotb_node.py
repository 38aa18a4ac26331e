"""One full node (hw/node.py, node 0 of the 2-node cluster build) under Verilator: host regions.

The bulk port's regions against the golden model's ``load``/``dump`` and the
zero-time debug port: what the bulk port wrote, the debug port reads without
a clock edge; ring memory loads and dumps round-trip; a dump of trace memory
returns the records ``TRACE_DATA`` pops, including the HOST records of the
transfers themselves.  The node's compute + DMA scenario against the model
is ``tests/hw/cocotb_cluster.py``'s ``node`` scenario.
"""

from __future__ import annotations

import json
import os

import cocotb
import numpy as np

from gradsync.sim.testbench import NodeTB
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.hardware import HardwareConfig
from tests.hw.cocotb_cluster import FMT, corner_words


@cocotb.test()
async def bulk_regions_and_debug_port(dut):
    """Loads land where the debug port and dumps see them; ring and trace memory round-trip."""
    hw = HardwareConfig(**json.loads(os.environ["CLUSTER_HW"]))
    tb = NodeTB(dut, nodes=2, hardware=hw, fmt=FMT)
    await tb.start()
    dev = tb.dev
    wb = FMT.word_bytes
    rng = np.random.default_rng(7)
    await dev.write32(rm.offset("HOST_TAG"), 0xABC)
    cases = [
        (rm.SCRATCH_BASE, 0, 37),
        (rm.SCRATCH_BASE, hw.scratchpad_words - 9, 9),
        (rm.GRAD_BASE, 0, 5),
        (rm.GRAD_BASE, 1001, 300),
        (rm.GRAD_BASE, hw.gradient_words - 4, 4),
    ]
    loaded = []
    for base, first, n in cases:
        words = corner_words(rng, n)
        await dev.load(base + first * wb, words)
        loaded.append(words)
    for (base, first, n), words in zip(cases, loaded, strict=True):
        peek = await dev.peek(base + first * wb, n)
        assert (peek == words).all(), f"debug port at 0x{base + first * wb:08x}: {peek} != {words}"
        dump = await dev.dump(base + first * wb, n)
        assert (dump == words).all(), f"dump at 0x{base + first * wb:08x}: {dump} != {words}"
    # neighbours of the loaded ranges were not written
    assert (await dev.peek(rm.SCRATCH_BASE + 37 * wb, 3) == 0).all()
    assert (await dev.peek(rm.GRAD_BASE + 1301 * wb, 3) == 0).all()
    # ring memory: 32-bit words, odd counts and offsets
    ring = rng.integers(0, 1 << 32, size=77)
    await dev.load(rm.RING_MEM_BASE + 12, ring)
    got = await dev.dump(rm.RING_MEM_BASE + 8, 80)
    assert got[0] == 0 and got[1:78].tolist() == ring.tolist() and (got[78:] == 0).all()
    # trace memory: the HOST records of the transfers above, as TRACE_DATA pops them
    head = await dev.read32(rm.offset("TRACE_HEAD"))
    assert head == 2 * (2 * len(cases) + 2), head  # START + END of the loads, dumps, ring
    words = await dev.dump(rm.TRACE_MEM_BASE, 4 * head)
    popped = [await dev.read32(rm.offset("TRACE_DATA")) for _ in range(4 * 6)]
    assert words[:24].tolist() == popped
    recs = [rm.TraceRecord.decode([int(w) for w in words[4 * i : 4 * i + 4]]) for i in range(head)]
    assert all(r.engine == rm.Engine.HOST and r.tag == 0xABC for r in recs)
    kinds = [r.kind for r in recs[::2]]
    assert kinds == ([rm.Kind.LOAD] * 5 + [rm.Kind.DUMP] * 5 + [rm.Kind.RING, rm.Kind.DUMP]), kinds
    first = recs[0], recs[1]
    assert (first[0].event, first[1].event) == (rm.TraceEvent.START, rm.TraceEvent.END)
    assert first[0].aux == 37 * wb
    assert first[1].cycle - first[0].cycle == tm.host_bulk_cycles(37 * wb, hw)
    ring_rec = recs[20], recs[21]
    assert ring_rec[0].aux == 77 * 4
    assert ring_rec[1].cycle - ring_rec[0].cycle == tm.host_bulk_cycles(77 * 4, hw)
