"""Example (iii): your own firmware -- an all-reduce of one buffer between 2 nodes with ``Driver``
-- run unchanged on both backends: the golden model and the RTL.

Each node sends its buffer to its peer with REDUCE_ADD; the peer's RX window adds
it to its own copy (saturating), so both nodes end with the element-wise sum.
Run: ``pytest examples/test_custom_allreduce.py`` -- see docs/testbench.md.
"""

from pathlib import Path

import cocotb
import numpy as np
import pytest

from gradsync.firmware.driver import Driver
from gradsync.model import numerics as nx
from gradsync.model.cluster import Cluster
from gradsync.sim import testbench
from gradsync.spec import regmap as rm

WORDS = 1024
MINE, SUM = rm.GRAD_BASE, rm.GRAD_BASE + 0x1000


def gradient(node: int, fmt) -> np.ndarray:
    return np.random.default_rng(100 + node).integers(fmt.qmin, fmt.qmax + 1, size=WORDS)


async def allreduce(dev):
    """All-reduce firmware: returns (the summed buffer, the cycle count it took)."""
    drv = Driver(dev)
    info = await drv.init(grad_window_bytes=0x1000)
    nbytes = WORDS * info.fmt.word_bytes
    arrived, sent = set(), [0]
    drv.on_rx_done = arrived.add
    drv.on_dma_done = lambda queue, n: sent.__setitem__(0, sent[0] + n)
    start = await drv.read("CYCLE_LO")
    await dev.load(MINE, gradient(info.node_id, info.fmt))
    # window 0: DST = SUM, SRC = my own buffer; REDUCE_ADD packets write SRC + payload
    peer_tag = rm.encode_tag(1, 0, info.tx_peer)
    await drv.open_window(0, SUM, MINE, nbytes, peer_tag, expect=nbytes)
    flags = rm.DescFlag.REDUCE_ADD | rm.DescFlag.IRQ
    my_tag = rm.encode_tag(1, 0, info.node_id)
    await drv.post(1, rm.Descriptor(MINE, nbytes, info.tx_peer, SUM, 0, my_tag, flags))
    await drv.wait_until(lambda: 0 in arrived and sent[0] == 1)
    cycles = await drv.read("CYCLE_LO") - start
    return (await dev.dump(SUM, WORDS)).tolist(), cycles


@cocotb.test()
async def allreduce_on_both_backends(dut):
    tb = testbench.ClusterTB(dut)
    # golden model backend: N modelled nodes, the firmware as their host program
    model = Cluster(tb.nodes, tb.hw, tb.fmt).run([allreduce] * tb.nodes).results
    # RTL backend: the same firmware on every node's RtlDevice, concurrently
    devices = await tb.start()
    tasks = [cocotb.start_soon(allreduce(dev)) for dev in devices]
    rtl = [await task for task in tasks]
    want = nx.add_saturating(gradient(0, tb.fmt), gradient(1, tb.fmt), tb.fmt).tolist()
    for node in range(tb.nodes):
        assert rtl[node][0] == model[node][0] == want, f"node {node}: sums differ"
        assert rtl[node][1] == model[node][1], (
            f"node {node}: {rtl[node][1]} cycles, model {model[node][1]}"
        )


@pytest.mark.rtl
def test_custom_allreduce(tmp_path):
    testbench.run(testbench.build("cluster", nodes=2), Path(__file__), test_dir=tmp_path)
