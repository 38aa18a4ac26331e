"""The golden model at 8 link bytes per cycle (issue 14, item 3).

LINK_SET 8 refused on a 4-byte-wide build (as the RTL refuses it, ``tests/hw/test_link8.py``),
a 96-byte chunk timed as worked by hand, and a training run at 8 bytes/cycle.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from gradsync.cli import main
from gradsync.model.cluster import Cluster
from gradsync.spec import regmap as rm
from gradsync.spec.link import LinkConfig, link_set_value

from .conftest import FMT, HW, gaddr, intervals, open_window, post, setup_queues

HW8 = dataclasses.replace(HW, link_width_bytes=8)


def _link_set_outcome(hw, bpc: int) -> dict:
    out = {}

    async def prog(dev):
        await dev.write32(rm.offset("LINK_SET"), link_set_value(LinkConfig(bpc, 9, 64)))
        out["err"] = await dev.read32(rm.offset("ERR_CODE"))
        out["info"] = await dev.read32(rm.offset("LINK_INFO"))

    Cluster(1, hw, FMT).run([prog])
    return out


def test_link_set_8_is_refused_on_a_width_4_build_as_a_bad_bytes_per_cycle():
    out = _link_set_outcome(HW, 8)
    err = rm.reg("ERR_CODE")
    assert err.field("code").get(out["err"]) == rm.ErrorCode.LINK_SET_BAD
    assert err.field("index").get(out["err"]) == 0  # the bytes_per_cycle field
    assert rm.reg("LINK_INFO").field("bytes_per_cycle").get(out["info"]) == 4  # unchanged


@pytest.mark.parametrize("bpc", [8, 1])
def test_link_set_on_a_width_8_build_takes_8_and_1(bpc):
    out = _link_set_outcome(HW8, bpc)
    assert out["err"] == 0
    assert rm.reg("LINK_INFO").field("bytes_per_cycle").get(out["info"]) == bpc


def test_a_96_byte_chunk_at_8_takes_the_hand_worked_cycles():
    """96 bytes, latency 7, max payload 256 on a width-8 build at 8 bytes/cycle: one packet
    of 12 + 96 + 4 = 112 wire bytes = 14 beats; grant to done 1 + 8 + 1 (fetch) + 14 + 1
    = 25, NIC_TX from grant + 10 to grant + 24; the CRC beat leaves in cycle 23 after the
    grant and arrives 7 later (30), the applier takes it in 31 and needs 3 + 24 / 2 cycles
    (two words a cycle): visible at grant + 46.  The sum is NumPy's saturating sum."""
    link = LinkConfig(8, 7, 256)
    local = np.arange(48, dtype=np.int16) * 700
    remote = np.full(48, 20000, dtype=np.int16)
    tag = rm.encode_tag(1, 0, 0)
    desc = rm.Descriptor(
        src_addr=gaddr(0),
        length=96,
        peer=1,
        remote_addr=gaddr(1024),
        window=1,
        tag=tag,
        flags=int(rm.DescFlag.REDUCE_ADD),
    )

    async def sender(dev):
        await dev.write32(rm.offset("LINK_SET"), link_set_value(link))
        await setup_queues(dev)
        await dev.load(gaddr(0), remote)
        await dev.load(gaddr(2048), np.zeros(1024, np.int16))  # the receiver opens first
        await post(dev, 1, 0, desc)

    async def receiver(dev):
        await dev.write32(rm.offset("LINK_SET"), link_set_value(link))
        await setup_queues(dev)
        await dev.load(gaddr(0), local)
        await open_window(dev, 1, gaddr(1024), gaddr(0), 96, tag, 96)
        await dev.wait_irq(int(rm.Irq.RX))

    cl = Cluster(2, HW8, FMT)
    cl.run([sender, receiver])
    ((grant, done, _, _),) = intervals(cl.devices[0], rm.Engine.DMA_LO)
    ((tx_start, tx_end, _, _),) = intervals(cl.devices[0], rm.Engine.NIC_TX)
    ((_, visible, _, nbytes),) = intervals(cl.devices[1], rm.Engine.NIC_RX)
    assert (done - grant, tx_start - grant, tx_end - grant) == (25, 10, 24)
    assert (visible - grant, nbytes) == (46, 96)
    want = np.clip(local.astype(np.int32) + remote, -32768, 32767)
    np.testing.assert_array_equal(cl.devices[1].grad[1024 : 1024 + 48], want)


def test_training_runs_at_8_bytes_per_cycle_on_the_model(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--backend", "model", "--steps", "1", "--quiet", "--no-baselines"]
    assert main([*argv, "--link-bytes-per-cycle", "8", "--out", str(out)]) == 0
    import json

    hw = json.loads((out / "results.json").read_text())["config"]["hardware"]
    assert (hw["link_bytes_per_cycle"], hw["link_width_bytes"]) == (8, 8)


def _both_ways(hw, link: LinkConfig, link_faults) -> tuple[list, list]:
    """Both nodes send two 200-byte chunks (reduce-add, write) to each other at once; the
    trace records of both nodes and node 1's window memory."""
    tag = rm.encode_tag(3, 1, 0)

    async def prog(dev):
        n = dev.node_id
        await dev.write32(rm.offset("LINK_SET"), link_set_value(link))
        await setup_queues(dev)
        await dev.load(gaddr(0), np.arange(400, dtype=np.int16) * (n + 3))
        await dev.load(gaddr(512), np.arange(400, dtype=np.int16) * 5 - 900)
        await open_window(dev, 1, gaddr(1024), gaddr(0), 200, tag, 200)
        await open_window(dev, 2, gaddr(1536), gaddr(100), 200, tag + 1, 200)
        for i in range(2):
            flags = int(rm.DescFlag.REDUCE_ADD) if i == 0 else 0
            desc = rm.Descriptor(src_addr=gaddr(512 + 100 * i), length=200, peer=1 - n,
                                 remote_addr=gaddr(1024 + 512 * i), window=1 + i, tag=tag + i,
                                 flags=flags)  # fmt: skip
            await post(dev, 1, i, desc)
        while (await dev.read32(rm.offset("RX_DONE_LO"))) & 0b110 != 0b110:
            await dev.wait_irq(int(rm.Irq.RX))  # both windows complete

    cl = Cluster(2, hw, FMT, link_faults)
    cl.run([prog, prog])
    traces = [[(r.cycle, int(r.engine), int(r.event), r.aux) for r in d.trace] for d in cl.devices]
    if link_faults is not None:
        _both_ways.counters = [d.nic.layer.counters for d in cl.devices]
    return traces, cl.devices[1].grad[1024:2048].copy()


@pytest.mark.parametrize("bpc", [8, 1])
def test_the_faulted_link_layer_with_no_faults_times_8_bytes_per_cycle_as_the_formulas(bpc):
    """The cycle-by-cycle link layer (``model/link.py``: NicTx of two-word beats, the link,
    the receiver's front end and two-word applier), with every fault rate 0, gives every
    trace record in the cycle the closed formulas of the fault-free path give."""
    link = LinkConfig(bpc, 9, 44)
    fast = _both_ways(HW8, link, None)
    layered = _both_ways(HW8, link, [{"seed": 1}, {"seed": 2}])
    assert layered[0] == fast[0]
    np.testing.assert_array_equal(layered[1], fast[1])


def test_the_faulted_link_layer_at_8_delivers_every_packet_under_faults():
    """Drops, bit and burst errors, framing faults and lost acknowledgements at 8 bytes/cycle:
    the link layer resends (two-word beats) until the memory is the fault-free run's."""
    link = LinkConfig(8, 9, 44)
    _, clean = _both_ways(HW8, link, None)
    faults = {"drop_rate": 7000, "corrupt_rate": 7000, "burst_rate": 5000, "burst_len": 9,
              "frame_rate": 7000, "ack_drop_rate": 7000}  # fmt: skip
    controls = [dict(faults, seed=5), dict(faults, seed=6)]
    _, faulted = _both_ways(HW8, link, controls)
    np.testing.assert_array_equal(faulted, clean)
    counters = _both_ways.counters[0]
    for name in ("dropped", "corrupted", "framed", "acks_dropped", "retransmits"):
        assert counters[name] > 0, counters
