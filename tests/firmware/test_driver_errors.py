"""The driver turns every device error into one sentence, and the training firmware reports an
error the device latched after the firmware's last wait (issue 15, item 7).

The doorbell cases are those of ``tests/model/test_device_errors.py``: each is rung on a
modelled node and the driver's sentence must name the node, the queue, the register, the
value and the error code's name.  The late receiver error is a packet to window 99 of 64
delivered through the model device right after the firmware's last interrupt.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from gradsync.firmware import data as digits
from gradsync.firmware.driver import DeviceError, Driver, error_sentence
from gradsync.firmware.experiment import TrainConfig, build_jobs
from gradsync.firmware.training import NodeFirmware
from gradsync.model.cluster import Cluster
from gradsync.model.nic import Packet
from gradsync.spec import regmap as rm
from gradsync.spec.formats import DEFAULT_FORMAT
from gradsync.spec.hardware import DEFAULT_HARDWARE
from tests.model.test_device_errors import doorbell_mistakes

HW = dataclasses.replace(DEFAULT_HARDWARE, ring_entries=8)
E = rm.ErrorCode

#: What each doorbell sentence must say, besides the node, queue and code name:
#: (register the sentence names, how the value is written).
REGISTER_NAMED = {
    E.RING_BAD_SIZE: ("RING_SIZE", "{info}"),
    E.RING_MISALIGNED: ("RING_BASE", "0x{info:08x}"),
    E.RING_OUT_OF_MEMORY: ("RING_BASE", "0x{info:08x}"),
    E.DOORBELL_BACKWARDS: ("DOORBELL", "{info}"),
    E.RING_FULL: ("DOORBELL", "{info}"),
}


def _ring_doorbell(queue: int, base: int, size: int, value: int) -> str:
    """Init a driver on a modelled node, make one doorbell mistake, return the DeviceError."""

    async def program(dev):
        drv = Driver(dev)
        await drv.init(0)
        await drv.write(rm.dma_reg_name(queue, "RING_BASE"), base)
        await drv.write(rm.dma_reg_name(queue, "RING_SIZE"), size)
        await drv.write(rm.dma_reg_name(queue, "DOORBELL"), value)
        with pytest.raises(DeviceError) as exc:
            await drv.service()
        return str(exc.value)

    return Cluster(2, HW, DEFAULT_FORMAT).run([program, lambda d: _idle()]).results[0]


async def _idle() -> None:
    return None


@pytest.mark.parametrize("queue", [0, 1])
@pytest.mark.parametrize(
    ("name", "base", "size", "value", "code", "info"), doorbell_mistakes(HW.ring_entries)
)
def test_doorbell_mistake_is_one_sentence_naming_queue_register_and_value(
    queue, name, base, size, value, code, info
):
    text = _ring_doorbell(queue, base, size, value)
    register, fmt = REGISTER_NAMED[code]
    qname = rm.DMA_QUEUE_NAMES[queue]
    assert text.startswith(
        f"node 0: DMA queue {queue} ({qname}) refused a doorbell ({code.name}): "
    )
    assert f"DMA{queue}_{register} = {fmt.format(info=info)} " in text, text
    assert "\n" not in text and text.count(". ") == 0, text


def test_doorbell_sentences_state_the_rule_with_the_numbers():
    assert _ring_doorbell(0, rm.RING_MEM_BASE, 1000, 1).endswith(
        "DMA0_RING_SIZE = 1000 is not in 1..8 (HW_QUEUES.ring_entries)"
    )
    assert _ring_doorbell(1, rm.RING_MEM_BASE, 8, 9).endswith(
        "DMA1_DOORBELL = 9 is 9 entries ahead of DMA1_HEAD = 0, more than DMA1_RING_SIZE = 8"
    )
    assert _ring_doorbell(0, rm.RING_MEM_BASE, 8, 0xFFFF_FFFF).endswith(
        "DMA0_DOORBELL = 4294967295 is behind DMA0_TAIL = 0; TAIL only moves forward"
    )
    end = rm.RING_MEM_BASE + 2 * 8 * 32 - 1
    assert _ring_doorbell(0, rm.RING_MEM_BASE + 0x1E0, 2, 1).endswith(
        f"DMA0_RING_BASE = 0x300001e0 with DMA0_RING_SIZE = 2 descriptors of 32 bytes does not "
        f"lie inside ring memory 0x30000000..0x{end:08x}"
    )


def test_empty_trace_data_read_is_reported_by_the_driver():
    async def program(dev):
        drv = Driver(dev)
        await drv.init(0)
        word = await drv.read("TRACE_DATA")
        with pytest.raises(DeviceError) as exc:
            await drv.service()
        return word, str(exc.value)

    (word, text), _ = Cluster(2, HW, DEFAULT_FORMAT).run([program, lambda d: _idle()]).results
    assert word == rm.TRACE_EMPTY_WORD
    assert text.startswith("node 0: TRACE_DATA was read while the trace buffer was empty")
    assert "TRACE_EMPTY" in text and "0xFFFFFFFF" in text


def test_pop_trace_reads_only_the_waiting_records_and_never_an_empty_buffer():
    async def program(dev):
        drv = Driver(dev)
        await drv.init(0)
        await drv.write("HOST_TAG", 0x77)
        await dev.load(rm.GRAD_BASE, np.arange(8))  # two HOST records
        first = await drv.pop_trace(limit=1)
        rest = await drv.pop_trace()
        none = await drv.pop_trace()
        return first, rest, none, await drv.read("ERR_COUNT")

    cl = Cluster(2, HW, DEFAULT_FORMAT)
    (first, rest, none, errors), _ = cl.run([program, lambda d: _idle()]).results
    host = [r for r in cl.devices[0].trace if r.engine == rm.Engine.HOST]
    assert first + rest == host and len(host) == 2 and host[0].tag == 0x77
    assert none == [] and errors == 0


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (E.RX_TAG_MISMATCH, ["RX_TAG_MISMATCH", "RX window 3", "0x00500302"]),
        (E.CMD_ZERO_DIM, ["compute reported CMD_ZERO_DIM", "index 3", "a compute dimension is 0"]),
    ],
)
def test_other_errors_name_the_engine_code_and_meaning(code, words):
    engine = rm.Engine.NIC_RX if code is E.RX_TAG_MISMATCH else rm.Engine.COMPUTE
    word = rm.reg("ERR_CODE").pack(code=code, engine=engine, index=3)
    text = error_sentence(2, word, rm.encode_tag(2, 3, 5))
    assert text.startswith("node 2: ")
    for w in words:
        assert w in text, text


# --------------------------------------------- an error after the last wait (item 3)


class _Timed:
    """A device that notes the cycle every ``wait_irq`` returns in."""

    def __init__(self, dev, waits: list[int]):
        self.dev, self.waits = dev, waits

    async def read32(self, addr):
        return await self.dev.read32(addr)

    async def write32(self, addr, value):
        await self.dev.write32(addr, value)

    async def wait_irq(self, mask):
        status = await self.dev.wait_irq(mask)
        self.waits.append(self.dev.sim.now)
        return status

    async def load(self, addr, array):
        await self.dev.load(addr, array)

    async def dump(self, addr, n):
        return await self.dev.dump(addr, n)


def _train(stray_at: int | None = None) -> tuple[list[int], Cluster]:
    """A 2-node, 2-step training run on the model; with ``stray_at``, a packet for RX window 99
    reaches node 1 in that cycle.  Returns node 1's wait_irq return cycles and the cluster."""
    cfg = TrainConfig(nodes=2, steps=2, layers=(64, 16, 10), hardware=DEFAULT_HARDWARE)
    jobs, _ = build_jobs(cfg, digits.load(0))
    cluster = Cluster(2, cfg.hardware, cfg.fixed_point)
    waits: list[int] = []
    if stray_at is not None:
        stray = Packet(0, 99, rm.encode_tag(1, 0, 1), rm.GRAD_BASE, np.zeros(4, np.int64), False)
        cluster.sim.at(stray_at, lambda: cluster.devices[1].receive(stray))
    programs = [
        lambda d: NodeFirmware(d, jobs[0]).run(),
        lambda d: NodeFirmware(_Timed(d, waits), jobs[1]).run(),
    ]
    cluster.run(programs)
    return waits, cluster


def test_receiver_error_after_the_last_wait_fails_the_run_with_one_sentence():
    waits, clean = _train()
    assert clean.devices[1].err_count == 0
    last = waits[-1]
    with pytest.raises(DeviceError) as exc:
        _train(stray_at=last + 1)
    want = (
        "node 1: nic.rx refused a packet (RX_NO_WINDOW) for RX window 99, which is not open or "
        f"does not exist (the device has {DEFAULT_HARDWARE.rx_windows} windows); its tag is "
        "0x00100001 (layer 1, chunk 0, step 1)"
    )
    assert str(exc.value) == want
    assert re.fullmatch(r"[^\n]+", str(exc.value))
