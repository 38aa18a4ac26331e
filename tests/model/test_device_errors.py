"""Device-level mistakes on the golden model: each doorbell mistake has its own ErrorCode,
an empty ``TRACE_DATA`` read is told apart from data.

The expected codes and ``ERR_INFO`` values are written out by hand from the
rules in ``docs/registers.md`` (ring memory holds ``ring_entries`` descriptors
per queue; a doorbell is checked ring size, alignment, range, direction, room).
``tests/hw/test_dma.py`` and ``tests/hw/test_csr.py`` run the same cases on the
RTL against this model.
"""

from __future__ import annotations

import pytest

from gradsync.model.cluster import Cluster
from gradsync.spec import regmap as rm

from .conftest import FMT, HW

E = rm.ErrorCode
RB = rm.RING_MEM_BASE


def doorbell_mistakes(ring_entries: int) -> list[tuple[str, int, int, int, rm.ErrorCode, int]]:
    """(name, RING_BASE, RING_SIZE, DOORBELL value, code, ERR_INFO) with HEAD = TAIL = 0 and
    ring memory of 2 * ring_entries descriptors (32 bytes each) at RING_MEM_BASE."""
    mem_bytes = 2 * ring_entries * 32
    n = ring_entries
    return [
        ("size_1000", RB, 1000, 1, E.RING_BAD_SIZE, 1000),
        ("size_0", RB, 0, 1, E.RING_BAD_SIZE, 0),
        ("size_above_entries", RB, n + 1, 1, E.RING_BAD_SIZE, n + 1),
        ("size_before_base", RB + 4, 1000, 1, E.RING_BAD_SIZE, 1000),  # first check wins
        ("base_misaligned", RB + 0x10, n, 1, E.RING_MISALIGNED, RB + 0x10),
        ("base_misaligned_and_below", RB - 4, n, 1, E.RING_MISALIGNED, RB - 4),
        ("base_below_ring_memory", RB - 0x100, n, 1, E.RING_OUT_OF_MEMORY, RB - 0x100),
        ("ring_past_ring_memory", RB + mem_bytes - 32, 2, 1, E.RING_OUT_OF_MEMORY, RB + mem_bytes - 32),
        ("base_past_ring_memory", RB + mem_bytes, 1, 1, E.RING_OUT_OF_MEMORY, RB + mem_bytes),
        ("backwards_by_one", RB, n, 0xFFFF_FFFF, E.DOORBELL_BACKWARDS, 0xFFFF_FFFF),
        ("backwards_half_range", RB, n, 0x8000_0000, E.DOORBELL_BACKWARDS, 0x8000_0000),
        ("beyond_ring_by_one", RB, n, n + 1, E.RING_FULL, n + 1),
        ("beyond_ring_far", RB, n, 0x7FFF_FFFF, E.RING_FULL, 0x7FFF_FFFF),
        ("backwards_ring_fits_last_slot", RB + mem_bytes - 32, 1, 0xFFFF_FFF0, E.DOORBELL_BACKWARDS, 0xFFFF_FFF0),
    ]  # fmt: skip


MISTAKES = doorbell_mistakes(HW.ring_entries)


def fresh_device():
    return Cluster(2, HW, FMT).devices[0]


def err_fields(dev) -> tuple[int, int, int]:
    f = rm.reg("ERR_CODE")
    word = dev.mmio_read(rm.offset("ERR_CODE"))
    return f.field("code").get(word), f.field("engine").get(word), f.field("index").get(word)


@pytest.mark.parametrize("queue", [0, 1])
@pytest.mark.parametrize(("name", "base", "size", "value", "code", "info"), MISTAKES)
def test_each_doorbell_mistake_has_its_own_code_and_changes_nothing(
    queue, name, base, size, value, code, info
):
    dev = fresh_device()
    dev.mmio_write(rm.dma_reg(queue, "RING_BASE"), base)
    dev.mmio_write(rm.dma_reg(queue, "RING_SIZE"), size)
    dev.mmio_write(rm.dma_reg(queue, "DOORBELL"), value)
    assert err_fields(dev) == (code, rm.Engine.DMA_HI + queue, queue), name
    assert dev.mmio_read(rm.offset("ERR_INFO")) == info
    assert dev.mmio_read(rm.offset("ERR_COUNT")) == 1
    assert dev.mmio_read(rm.dma_reg(queue, "TAIL")) == 0
    assert dev.irq_status & rm.Irq.ERROR
    (rec,) = dev.trace
    assert (rec.event, rec.engine, rec.tag, rec.aux) == (
        rm.TraceEvent.ERROR,
        rm.Engine.DMA_HI + queue,
        info,
        code,
    )


def test_doorbell_behind_a_moved_tail_is_backwards_and_a_full_ring_is_accepted():
    """After TAIL moved to 3 (the refused descriptors retired: HEAD = 3), 2 and 1 are
    backwards; 3 again changes nothing and is no error; 3 + RING_SIZE fills the ring
    exactly and is accepted, one more is RING_FULL."""
    dev = fresh_device()
    n = HW.ring_entries
    dev.mmio_write(rm.dma_reg(0, "RING_BASE"), RB)
    dev.mmio_write(rm.dma_reg(0, "RING_SIZE"), n)
    dev.mmio_write(rm.dma_reg(0, "DOORBELL"), 3)  # three empty descriptors: BAD_VERSION
    dev.sim.run()
    assert dev.mmio_read(rm.dma_reg(0, "HEAD")) == dev.mmio_read(rm.dma_reg(0, "TAIL")) == 3
    errors = dev.mmio_read(rm.offset("ERR_COUNT"))
    assert errors == 3 and err_fields(dev)[0] == E.BAD_VERSION
    for value in (2, 1):
        dev.mmio_write(rm.dma_reg(0, "DOORBELL"), value)
        assert err_fields(dev) == (E.DOORBELL_BACKWARDS, rm.Engine.DMA_HI, 0)
        assert dev.mmio_read(rm.offset("ERR_INFO")) == value
    dev.mmio_write(rm.dma_reg(0, "DOORBELL"), 3)
    assert dev.mmio_read(rm.offset("ERR_COUNT")) == errors + 2
    dev.mmio_write(rm.dma_reg(0, "DOORBELL"), 3 + n + 1)
    assert err_fields(dev)[0] == E.RING_FULL
    dev.mmio_write(rm.dma_reg(0, "DOORBELL"), 3 + n)
    assert dev.mmio_read(rm.dma_reg(0, "TAIL")) == 3 + n
    assert dev.mmio_read(rm.offset("ERR_COUNT")) == errors + 3


def test_empty_trace_data_read_returns_the_pattern_and_latches_trace_empty_untraced():
    dev = fresh_device()
    data, count = rm.offset("TRACE_DATA"), rm.offset("TRACE_COUNT")
    assert dev.mmio_read(count) == 0
    assert dev.mmio_read(data) == rm.TRACE_EMPTY_WORD
    assert err_fields(dev) == (E.TRACE_EMPTY, rm.Engine.HOST, 0)
    assert dev.mmio_read(rm.offset("ERR_INFO")) == 0  # TRACE_TAIL
    assert dev.mmio_read(rm.offset("ERR_COUNT")) == 1
    assert dev.irq_status & rm.Irq.ERROR
    assert dev.mmio_read(count) == 0 and dev.trace == [], "no ERROR record for TRACE_EMPTY"
    # one real record (a refused doorbell's ERROR record) pops as its four words, then empty
    dev.mmio_write(rm.dma_reg(1, "DOORBELL"), 1)
    (rec,) = dev.trace
    words = [dev.mmio_read(data) for _ in range(rm.TRACE_RECORD_WORDS)]
    assert words == rec.encode()
    assert dev.mmio_read(rm.offset("ERR_COUNT")) == 2
    assert dev.mmio_read(data) == rm.TRACE_EMPTY_WORD
    assert dev.mmio_read(rm.offset("ERR_INFO")) == 1  # TRACE_TAIL after the pop
    assert dev.mmio_read(rm.offset("ERR_COUNT")) == 3
