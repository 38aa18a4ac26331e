"""The modelled CSR block through its MMIO port, against the spec's register table.

Every register of ``gradsync.spec.regmap.REGISTERS`` must behave as its access
type says (RO, RW, W1C, WO) and reset to its spec value (or its build constant);
the per-queue and per-window registers must not alias one another, windows 10
and above included.
"""

from __future__ import annotations

import pytest

from gradsync.model.cluster import Cluster
from gradsync.model.csr import CsrBlock
from gradsync.model.events import Simulator
from gradsync.spec import regmap as rm
from gradsync.spec.hardware import constant_registers

from .conftest import FMT, HW

PATTERN = 0xA5C3_0F97  # bit 0 set: WINn_CTRL keeps only it
#: RW registers that keep only some of the written bits.
RW_KEPT_BITS = {"CTRL": 0x1}


def fresh_device():
    return Cluster(2, HW, FMT).devices[0]


def test_reset_values_are_the_spec_reset_values_or_the_build_constants():
    dev = fresh_device()
    want = {**constant_registers(HW, FMT, 0, 2), "CMD_FIFO_FREE": HW.cmd_fifo_depth}
    for r in rm.REGISTERS:
        expected = 0 if r.access is rm.Access.WO else want.get(r.name, r.reset)
        assert dev.mmio_read(r.offset) == expected, r.name


def test_every_register_behaves_by_its_access_type():
    """Write PATTERN to each register of a fresh node and read it back; the read must be what
    the spec's access type promises.  W1C registers start at 0, so they must stay 0."""
    wrong = []
    for r in rm.REGISTERS:
        if r.name == "TRACE_TAIL":  # RW with a guard, see its own test
            continue
        dev = fresh_device()
        before = dev.mmio_read(r.offset)
        dev.mmio_write(r.offset, PATTERN)
        got = dev.mmio_read(r.offset)
        if r.access is rm.Access.WO:
            want = 0
        elif r.access is rm.Access.RO:
            want = before
        elif r.access is rm.Access.W1C:
            want = before & ~PATTERN
        else:
            d = rm.decode_register(r.offset)
            want = PATTERN & RW_KEPT_BITS.get(d.field, 0xFFFF_FFFF)
        if got != want:
            wrong.append(f"{r.name} ({r.access.value}): read 0x{got:08x}, not 0x{want:08x}")
    assert not wrong, "\n".join(wrong)


def test_queue_and_window_registers_do_not_alias():
    """A distinct value in every RW register of every queue and window reads back from its own
    register only (a decoder reading the index from the name's 4th character would alias
    window 10 with window 1)."""
    dev = fresh_device()
    rw = [r for r in rm.REGISTERS if r.access is rm.Access.RW]
    rw = [r for r in rw if rm.decode_register(r.offset).array is not None]
    value = {r.offset: (0x1000 + 4 * i) | 1 for i, r in enumerate(rw)}
    for r in rw:
        dev.mmio_write(r.offset, value[r.offset])
    for r in rw:
        want = value[r.offset] & RW_KEPT_BITS.get(rm.decode_register(r.offset).field, 0xFFFF_FFFF)
        assert dev.mmio_read(r.offset) == want, r.name
    assert dev.queues[1].win_len == value[rm.dma_reg(1, "WIN_LEN")]
    assert dev.nic.windows[10].dst == value[rm.rx_window_reg(10, "DST")]
    assert dev.nic.windows[63].tag == value[rm.rx_window_reg(63, "TAG")]


def test_w1c_registers_clear_only_the_bits_written_as_ones():
    """RX_DONE bits of windows 3 and 40 (an EXPECT of 0 completes at once) and the ERROR of a
    doorbell on an unconfigured ring; W1C writes clear exactly the ones written."""
    dev = fresh_device()
    for w in (3, 40):
        dev.mmio_write(rm.rx_window_reg(w, "CTRL"), 1)
        dev.mmio_write(rm.rx_window_reg(w, "EXPECT"), 0)
    dev.mmio_write(rm.dma_reg(0, "DOORBELL"), 1)
    lo, hi, status = (rm.offset(n) for n in ("RX_DONE_LO", "RX_DONE_HI", "IRQ_STATUS"))
    assert (dev.mmio_read(lo), dev.mmio_read(hi)) == (1 << 3, 1 << 8)
    assert dev.mmio_read(status) == rm.Irq.RX | rm.Irq.ERROR
    dev.mmio_write(lo, ~(1 << 3) & 0xFFFF_FFFF)
    dev.mmio_write(hi, 0)
    assert (dev.mmio_read(lo), dev.mmio_read(hi)) == (1 << 3, 1 << 8)
    dev.mmio_write(hi, 1 << 8)
    assert (dev.mmio_read(lo), dev.mmio_read(hi)) == (1 << 3, 0)
    dev.mmio_write(lo, 1 << 3)
    assert dev.mmio_read(lo) == 0
    dev.mmio_write(status, int(rm.Irq.RX))
    assert dev.mmio_read(status) == rm.Irq.ERROR


def test_trace_tail_moves_only_between_tail_and_head():
    dev = fresh_device()
    dev.mmio_write(rm.dma_reg(0, "DOORBELL"), 1)  # RING_FULL: one ERROR record
    head, tail = rm.offset("TRACE_HEAD"), rm.offset("TRACE_TAIL")
    assert (dev.mmio_read(head), dev.mmio_read(tail)) == (1, 0)
    dev.mmio_write(tail, 2)
    assert dev.mmio_read(tail) == 0
    dev.mmio_write(tail, 1)
    assert (dev.mmio_read(tail), dev.mmio_read(rm.offset("TRACE_COUNT"))) == (1, 0)
    dev.mmio_write(tail, 0)
    assert dev.mmio_read(tail) == 1


@pytest.mark.parametrize(
    "offset",
    [
        0x05C,  # gap in the global block
        rm.DMA_QUEUE_BASE + 0x24,  # gap after queue 0's registers
        rm.DMA_QUEUE_BASE + rm.DMA_QUEUES * rm.DMA_QUEUE_STRIDE,  # a third queue
        rm.RX_WINDOW_BASE + 0x1C,  # gap after window 0's registers
        rm.RX_WINDOW_BASE + rm.MAX_RX_WINDOWS * rm.RX_WINDOW_STRIDE,  # window 64
    ],
)
def test_unmapped_offsets_read_zero_and_ignore_writes(offset):
    dev = fresh_device()
    dev.mmio_write(offset, PATTERN)
    assert dev.mmio_read(offset) == 0


def test_binding_against_the_access_type_is_refused():
    csr = CsrBlock(Simulator(), HW, {})
    with pytest.raises(ValueError, match="register CMD_LAUNCH is write-only"):
        csr.bind("CMD_LAUNCH", read=lambda: 0)
    with pytest.raises(ValueError, match="register COMPUTE_DONE is read-only"):
        csr.bind("COMPUTE_DONE", read=lambda: 0, write=lambda v: None)
    with pytest.raises(ValueError, match="W1C register RX_DONE_LO needs a read"):
        csr.bind("RX_DONE_LO", write=lambda v: None)
    with pytest.raises(ValueError, match="no engine takes writes to WO register CMD_LAUNCH"):
        csr.check_complete()
