"""Example (ii): two nodes exchange one buffer over links that drop and corrupt packets.

The NICs resend what the links lose; the received buffers must equal the golden
model's (fault-free) result, and the counters must show the resends.
Run: ``pytest examples/test_exchange_faults.py`` -- see docs/testbench.md.
"""

from pathlib import Path

import cocotb
import numpy as np
import pytest

from gradsync.firmware.driver import Driver
from gradsync.sim import testbench
from gradsync.sim.scoreboard import Scoreboard
from gradsync.spec import regmap as rm

WORDS = 2048  # 4 KiB of 16-bit words: 16 packets of 256 bytes each way
SEND, RECV = rm.GRAD_BASE, rm.GRAD_BASE + 0x2000


def buffer(node: int, fmt) -> np.ndarray:
    return np.random.default_rng(node).integers(fmt.qmin, fmt.qmax + 1, size=WORDS)


async def exchange(dev):
    """Host program: send my buffer to my peer, receive the peer's; return what arrived."""
    drv = Driver(dev)
    info = await drv.init(grad_window_bytes=0x2000)
    nbytes = WORDS * info.fmt.word_bytes
    arrived, sent = set(), [0]
    drv.on_rx_done = arrived.add
    drv.on_dma_done = lambda queue, n: sent.__setitem__(0, sent[0] + n)
    peer_tag = rm.encode_tag(0, 0, info.tx_peer)  # the tag the peer sends with
    await drv.open_window(0, RECV, SEND, nbytes, peer_tag, expect=nbytes)
    await dev.load(SEND, buffer(info.node_id, info.fmt))
    my_tag = rm.encode_tag(0, 0, info.node_id)
    await drv.post(0, rm.Descriptor(SEND, nbytes, info.tx_peer, RECV, 0, my_tag, rm.DescFlag.IRQ))
    await drv.wait_until(lambda: 0 in arrived and sent[0] == 1)
    return await dev.dump(RECV, WORDS)


@cocotb.test()
async def exchange_survives_link_faults(dut):
    tb = testbench.ClusterTB(dut)
    tb.set_link_faults(0, drop=13107, seed=3)  # 20 % of node 0's packets lost
    tb.set_link_faults(1, corrupt=13107, seed=999)  # 20 % of node 1's packets corrupted
    await tb.start()
    sb = Scoreboard.for_tb(tb, exact=False)  # resends change cycles, not data
    logs = await sb.check(tb, [exchange, exchange])
    dut._log.info(f"links {tb.link_counters(0)} {tb.link_counters(1)}")
    for node in range(2):
        assert logs[node]["result"] == buffer(1 - node, tb.fmt).tolist()
    assert tb.link_counters(0)["dropped"] > 0 and tb.link_counters(1)["corrupted"] > 0
    assert tb.nic_counters(0)["tx_retransmits"] > 0 and tb.nic_counters(1)["tx_retransmits"] > 0
    assert tb.nic_counters(1)["rx_crc_errors"] == 0 and tb.nic_counters(0)["rx_crc_errors"] > 0


@pytest.mark.rtl
def test_exchange_with_link_faults(tmp_path):
    testbench.run(testbench.build("cluster", nodes=2), Path(__file__), test_dir=tmp_path)
