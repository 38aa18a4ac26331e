"""Random valid and invalid descriptors against an independently written validation rule."""

from __future__ import annotations

import numpy as np

from gradsync.spec import link as lk
from gradsync.spec import regmap as rm

from .conftest import FMT, HW, gaddr, open_window, run_programs, setup_queues

WIN_BASE_WORD, WIN_WORDS = 0, 1024  # the queues' source window (gradient SRAM words 0..1023)
RX_WORD, RX_WORDS = 2048, 1024  # the receiver's window
COUNT = 300


def expected_code(d: rm.Descriptor) -> rm.ErrorCode:
    """The documented order: version, zero length, alignment, source window, peer."""
    if d.version != 1:
        return rm.ErrorCode.BAD_VERSION
    if d.length == 0:
        return rm.ErrorCode.ZERO_LENGTH
    if d.length % 4 or d.src_addr % 4 or d.remote_addr % 4:
        return rm.ErrorCode.MISALIGNED
    lo, hi = gaddr(WIN_BASE_WORD), gaddr(WIN_BASE_WORD + WIN_WORDS)
    if d.src_addr < lo or d.src_addr + d.length > hi:
        return rm.ErrorCode.OUT_OF_WINDOW
    if d.peer != 1:
        return rm.ErrorCode.UNKNOWN_PEER
    return rm.ErrorCode.OK


def random_descriptor(rng: np.random.Generator) -> rm.Descriptor:
    length = int(rng.choice([0, 2, 4, 64, 200, 256, 260, 600, 1024, 2100]))
    src = gaddr(2 * int(rng.integers(-4, WIN_WORDS // 2 + 4)))
    if rng.random() < 0.1:
        src = int(rng.integers(0, 2**32)) & ~3
    src = src & 0xFFFFFFFF
    remote = gaddr(RX_WORD + 2 * int(rng.integers(0, max(1, (RX_WORDS - length // 2) // 2 + 1))))
    if rng.random() < 0.1:
        remote += 2
    if rng.random() < 0.1:
        remote = gaddr(RX_WORD + RX_WORDS)  # outside the receiver's window: dropped there
    return rm.Descriptor(
        src_addr=src,
        length=length,
        peer=1 if rng.random() < 0.9 else int(rng.choice([0, 2, 9])),
        remote_addr=remote,
        window=0,
        tag=rm.encode_tag(1, 0, 0),
        flags=int(rm.DescFlag.IRQ),
        version=1 if rng.random() < 0.95 else 3,
    )


def test_descriptor_fuzz_codes_memory_and_drops():
    rng = np.random.default_rng(2024)
    descs = [random_descriptor(rng) for _ in range(COUNT)]
    source = rng.integers(FMT.qmin, FMT.qmax + 1, HW.gradient_words)
    guard = 0x5A5A
    statuses = []

    async def sender(dev):
        await setup_queues(dev, win_len=WIN_WORDS * FMT.word_bytes)
        await dev.load(gaddr(0), source)
        await dev.load(rm.SCRATCH_BASE, np.zeros(2048))  # the receiver opens its window first
        for i, d in enumerate(descs):
            q = i % 2
            slot = (i // 2) % HW.ring_entries
            await dev.load(
                rm.RING_MEM_BASE + (q * HW.ring_entries + slot) * 32, np.array(d.encode())
            )
            await dev.write32(rm.dma_reg(q, "DOORBELL"), i // 2 + 1)
            status = await dev.wait_irq(int(rm.Irq.ERROR | rm.Irq.DMA_Q0 | rm.Irq.DMA_Q1))
            await dev.write32(rm.offset("IRQ_STATUS"), status)
            words = await dev.dump(rm.RING_MEM_BASE + (q * HW.ring_entries + slot) * 32, 8)
            statuses.append(rm.Descriptor.decode(words.tolist()).status)

    async def receiver(dev):
        await setup_queues(dev)
        await dev.load(gaddr(0), np.full(HW.gradient_words, guard))
        await open_window(
            dev,
            0,
            gaddr(RX_WORD),
            gaddr(0),
            RX_WORDS * FMT.word_bytes,
            rm.encode_tag(1, 0, 0),
            1 << 30,
        )

    cl = run_programs([sender, receiver])
    want_mem = np.full(HW.gradient_words, guard)
    drops = 0
    codes = []
    for d, status in zip(descs, statuses, strict=True):
        code = expected_code(d)
        codes.append(code)
        assert status == rm.descriptor_status(code), d
        if code is rm.ErrorCode.OK:
            lo = (d.remote_addr - rm.GRAD_BASE) // 2
            n = d.length // 2
            if lo < RX_WORD or lo + n > RX_WORD + RX_WORDS:
                drops += lk.ceil_div(d.length, HW.max_payload_bytes)
                continue
            s = (d.src_addr - rm.GRAD_BASE) // 2
            want_mem[lo : lo + n] = source[s : s + n]
    assert np.array_equal(cl.devices[1].grad, want_mem)
    assert cl.devices[1].rx_drops == drops > 0
    # every error kind was exercised
    assert set(codes) >= {
        rm.ErrorCode.OK,
        rm.ErrorCode.BAD_VERSION,
        rm.ErrorCode.ZERO_LENGTH,
        rm.ErrorCode.MISALIGNED,
        rm.ErrorCode.OUT_OF_WINDOW,
        rm.ErrorCode.UNKNOWN_PEER,
    }
    q_errors = [cl.devices[0].queues[q].errors for q in range(2)]
    assert sum(q_errors) == sum(c is not rm.ErrorCode.OK for c in codes)
