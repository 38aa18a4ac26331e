"""Register map and descriptor layout: consistency, encodings, committed docs."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gradsync.spec import regmap as rm

ROOT = Path(__file__).resolve().parents[2]


def test_offsets_unique_aligned_and_fields_disjoint():
    offsets = [r.offset for r in rm.REGISTERS]
    assert len(offsets) == len(set(offsets))
    assert all(o % 4 == 0 for o in offsets)
    for r in rm.REGISTERS:
        used = 0
        for f in r.fields:
            assert f.lsb + f.width <= 32, r.name
            assert used & f.mask == 0, (r.name, f.name)
            used |= f.mask
        assert 0 <= r.reset < (1 << 32)


def test_required_registers_exist():
    names = set(rm.BY_NAME)
    for required in (
        "ID",
        "VERSION",
        "CONTROL",
        "CYCLE_LO",
        "CYCLE_HI",
        "IRQ_STATUS",
        "IRQ_MASK",
        "ERR_CODE",
        "CMD_OPCODE",
        "CMD_LAUNCH",
        "COMPUTE_DONE",
        "TRACE_COUNT",
        "TRACE_DATA",
        "PERF_GEMM_CYCLES",
    ):
        assert required in names
    for q in range(rm.DMA_QUEUES):
        for name in ("RING_BASE", "RING_SIZE", "HEAD", "TAIL", "DOORBELL", "DONE"):
            assert rm.dma_reg_name(q, name) in names
    assert rm.rx_window_reg(63, "RECEIVED") == 0x1000 + 63 * 0x20 + 0x18


@given(
    src=st.integers(0, 2**32 - 1),
    length=st.integers(0, 2**32 - 1),
    peer=st.integers(0, 255),
    window=st.integers(0, 127),
    remote=st.integers(0, 2**32 - 1),
    layer=st.integers(0, 255),
    chunk=st.integers(0, 4095),
    step=st.integers(0, 4095),
    flags=st.integers(0, 255),
)
def test_descriptor_roundtrip_and_little_endian_layout(
    src, length, peer, window, remote, layer, chunk, step, flags
):
    tag = rm.encode_tag(layer, chunk, step)
    d = rm.Descriptor(src, length, peer, remote, window, tag, flags=flags, fence_count=7)
    raw = d.to_bytes()
    assert len(raw) == rm.DESCRIPTOR_BYTES
    w = struct.unpack("<8I", raw)
    # independent reading of the documented layout
    assert w[0] == 1 | (flags << 8) | (peer << 16) | (window << 24)
    assert (w[1], w[2], w[3], w[5]) == (src, length, remote, 7)
    assert w[4] == layer | (chunk << 8) | (step << 20)
    assert rm.Descriptor.from_bytes(raw) == d
    assert rm.decode_tag(tag) == (layer, chunk, step)


def test_descriptor_window_is_seven_bits_and_bit_31_is_reserved():
    """H0 carries the window in bits 6:0 (bit 7 is the bf16 flag), so a descriptor's window
    field is 7 bits: 128 cannot be encoded, and a set bit 31 is not read as part of it."""
    with pytest.raises(ValueError, match="window holds 7 bits"):
        rm.Descriptor(0, 4, 1, 0, 128, 0).encode()
    words = rm.Descriptor(0, 4, 1, 0, 5, 0).encode()
    words[0] |= 1 << 31
    assert rm.Descriptor.decode(words).window == 5


def test_trace_record_roundtrip():
    rec = rm.TraceRecord(
        cycle=(5 << 32) | 123, engine=rm.Engine.NIC_TX, event=1, kind=7, tag=99, aux=512
    )
    words = rec.encode()
    assert words[0] == 123 and (words[1] & 0xFFFF) == 5 and (words[1] >> 16) & 0xF == 4
    assert rm.TraceRecord.decode(words) == rec


def test_register_pack_and_status_word():
    word = rm.reg("CMD_OPCODE").pack(opcode=rm.Opcode.GEMM, trans_a=1, irq=1, kind=rm.Kind.DW)
    assert word == 1 | (1 << 8) | (1 << 10) | (2 << 16)
    assert rm.descriptor_status(rm.ErrorCode.UNKNOWN_PEER) == 0x8000_0005


def test_committed_register_doc_is_current():
    assert (ROOT / "docs" / "registers.md").read_text() == rm.render_markdown()


def test_decode_register_finds_every_queue_and_window_register_by_offset():
    """Against the names the map was built with: every DMA-queue and RX-window register
    (window 10 and above included) decodes to its instance and field, the rest to no array."""
    arrays = {rm.DMA_QUEUE_ARRAY: rm.dma_reg_name, rm.RX_WINDOW_ARRAY: rm.rx_window_reg_name}
    seen = {rm.DMA_QUEUE_ARRAY: set(), rm.RX_WINDOW_ARRAY: set()}
    for r in rm.REGISTERS:
        d = rm.decode_register(r.offset)
        assert d.register is r
        if d.array is None:
            assert (d.index, d.field) == (None, None)
            assert not r.name.startswith(("DMA", "WIN")), r.name
            continue
        assert arrays[d.array](d.index, d.field) == r.name
        seen[d.array].add(d.index)
    assert seen[rm.DMA_QUEUE_ARRAY] == set(range(rm.DMA_QUEUES))
    assert seen[rm.RX_WINDOW_ARRAY] == set(range(rm.MAX_RX_WINDOWS))
    d = rm.decode_register(rm.rx_window_reg(37, "EXPECT"))
    assert (d.array, d.index, d.field) == (rm.RX_WINDOW_ARRAY, 37, "EXPECT")


def test_decode_register_of_unmapped_offsets_is_none():
    last_queue_reg = max(o for _, o, _ in rm.DMA_QUEUE_ARRAY.fields)
    for off in (
        0x05C,  # gap in the global block
        rm.DMA_QUEUE_BASE + last_queue_reg + 4,  # gap after queue 0's registers
        rm.DMA_QUEUE_BASE + rm.DMA_QUEUES * rm.DMA_QUEUE_STRIDE,  # a third queue's RING_BASE
        rm.RX_WINDOW_BASE + rm.MAX_RX_WINDOWS * rm.RX_WINDOW_STRIDE,  # window 64
        rm.RX_WINDOW_BASE + 0x1C,  # gap after window 0's registers
    ):
        assert rm.decode_register(off) is None, hex(off)
        assert all(a.decode(off) is None for a in (rm.DMA_QUEUE_ARRAY, rm.RX_WINDOW_ARRAY))


def test_command_registers_stage_every_field_in_host_order():
    staged = rm.command_registers(
        rm.Opcode.GEMM,
        0x1000_0000,
        0x1000_0040,
        0x2000_0000,
        3,
        5,
        7,
        arg=-2,
        tag=rm.encode_tag(2, 1, 9),
        kind=rm.Kind.DW,
        trans_a=True,
        irq=False,
    )
    names = [name for name, _ in staged]
    assert names == [
        "CMD_OPCODE",
        "CMD_A",
        "CMD_B",
        "CMD_C",
        "CMD_M",
        "CMD_K",
        "CMD_N",
        "CMD_ARG",
        "CMD_TAG",
    ]
    values = dict(staged)
    op = rm.reg("CMD_OPCODE")
    assert op.field("opcode").get(values["CMD_OPCODE"]) == rm.Opcode.GEMM
    assert op.field("trans_a").get(values["CMD_OPCODE"]) == 1
    assert op.field("trans_b").get(values["CMD_OPCODE"]) == 0
    assert op.field("irq").get(values["CMD_OPCODE"]) == 0
    assert op.field("kind").get(values["CMD_OPCODE"]) == rm.Kind.DW
    assert values["CMD_ARG"] == 0xFFFF_FFFE  # two's complement in 32 bits
    assert (values["CMD_M"], values["CMD_K"], values["CMD_N"]) == (3, 5, 7)
    assert rm.decode_tag(values["CMD_TAG"]) == (2, 1, 9)
    assert all(rm.reg(name).access is rm.Access.RW for name in names)
