# amaranth: UnusedElaboratable=no
"""hw/sram.py in Amaranth's simulator against a Python dict: latency, banking, many ports at once."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from gradsync.hw.sram import DeviceMemory, device_addr_bits


@pytest.mark.parametrize(
    ("scratch", "grad", "bits"),
    [(1, 1, 2), (4, 4, 3), (5, 3, 4), (3, 17, 6), (4096, 2048, 13), (8192, 8192, 14)],
)
def test_device_addr_bits_is_bank_bit_plus_larger_bank_index(scratch, grad, bits):
    assert device_addr_bits(scratch, grad) == bits


def run(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def dev_addr(dut, bank: int, index: int) -> int:
    """Device word address: bank in the top bit, the bank's word index below it."""
    return bank << (dut.addr_bits - 1) | index


def test_read_latency_is_one_cycle_and_data_holds_while_en_is_low():
    dut = DeviceMemory(
        8, 8, 16, init_scratch=[100 + i for i in range(8)], init_grad=[200 + i for i in range(8)]
    )

    async def bench(ctx):
        rd = dut.rd[0]
        ctx.set(rd.addr, dev_addr(dut, 0, 3))
        ctx.set(rd.en, 1)
        assert ctx.get(rd.data) != 103  # not combinational: nothing read yet
        await ctx.tick()
        assert ctx.get(rd.data) == 103  # one cycle after en
        ctx.set(rd.en, 0)
        ctx.set(rd.addr, dev_addr(dut, 1, 5))
        for _ in range(3):
            await ctx.tick()
            assert ctx.get(rd.data) == 103  # held while en is low, whatever the address
        ctx.set(rd.en, 1)
        await ctx.tick()
        assert ctx.get(rd.data) == 205  # bank 1 = gradient SRAM

    run(dut, bench)


def test_read_before_write_of_the_same_word_in_one_cycle():
    dut = DeviceMemory(4, 4, 16, init_scratch=[7, 8, 9, 10])

    async def bench(ctx):
        ctx.set(dut.rd[0].addr, 2)
        ctx.set(dut.rd[0].en, 1)
        ctx.set(dut.wr[0].addr, 2)
        ctx.set(dut.wr[0].data, 0x1234)
        ctx.set(dut.wr[0].en, 1)
        await ctx.tick()
        ctx.set(dut.wr[0].en, 0)
        assert ctx.get(dut.rd[0].data) == 9  # the old word: reads are not write-through
        await ctx.tick()
        assert ctx.get(dut.rd[0].data) == 0x1234

    run(dut, bench)


@pytest.mark.parametrize(
    ("scratch", "grad", "debug_words"), [(12, 5, 1), (8, 8, 1), (3, 16, 1), (12, 5, 3), (3, 16, 8)]
)
def test_random_traffic_on_all_ports_matches_a_dict(scratch, grad, debug_words):
    """Three read and three write ports at random every cycle, addresses over the whole
    device space (out-of-bank words included); reads, the debug port (``debug_words``
    consecutive words of the address's bank, 0 past its end) and the final contents equal
    a dict model in which a higher-numbered write port wins."""
    width = 12
    n_rd, n_wr = 3, 3
    dut = DeviceMemory(scratch, grad, width, read_ports=n_rd, write_ports=n_wr, debug_port=True,
                       debug_words=debug_words)  # fmt: skip
    assert dut.addr_bits == device_addr_bits(scratch, grad)
    index_bits = dut.addr_bits - 1
    sizes = (scratch, grad)
    rng = np.random.default_rng(scratch * 100 + grad)
    model = {}  # device word address -> word (missing: 0, the reset contents)

    def in_bank(addr):
        return (addr & ((1 << index_bits) - 1)) < sizes[addr >> index_bits]

    def debug_view(addr):
        """The debug port's value by hand: word k of addr's bank at index + k, or 0."""
        bank, index = addr >> index_bits, addr & ((1 << index_bits) - 1)
        value = 0
        for k in range(debug_words):
            if index + k < sizes[bank]:
                value |= model.get(bank << index_bits | (index + k), 0) << (k * width)
        return value

    async def bench(ctx):
        held = [0] * n_rd
        hits = 0
        collisions = 0
        for _cycle in range(400):
            reads = []
            for p in range(n_rd):
                en = int(rng.random() < 0.7)
                addr = int(rng.integers(0, 1 << dut.addr_bits))
                ctx.set(dut.rd[p].en, en)
                ctx.set(dut.rd[p].addr, addr)
                reads.append((en, addr))
            writes = {}
            targets = [int(rng.integers(0, 1 << dut.addr_bits)) for _ in range(n_wr)]
            if rng.random() < 0.2:
                targets[2] = targets[0]  # same word from two ports in one cycle
            for p in range(n_wr):
                en = int(rng.random() < 0.5)
                value = int(rng.integers(0, 1 << width))
                ctx.set(dut.wr[p].en, en)
                ctx.set(dut.wr[p].addr, targets[p])
                ctx.set(dut.wr[p].data, value)
                if en and in_bank(targets[p]):
                    collisions += targets[p] in writes
                    writes[targets[p]] = value  # later (higher-numbered) port wins
            dbg = int(rng.integers(0, 1 << dut.addr_bits))
            ctx.set(dut.dbg_addr, dbg)
            assert ctx.get(dut.dbg_data) == debug_view(dbg)  # dbg_en unconnected: high
            if rng.random() < 0.3:  # a debug read disabled: zeros, whatever the address
                ctx.set(dut.dbg_en, 0)
                assert ctx.get(dut.dbg_data) == 0
                ctx.set(dut.dbg_en, 1)
                assert ctx.get(dut.dbg_data) == debug_view(dbg)
            expect = []
            for p, (en, addr) in enumerate(reads):
                if en:
                    held[p] = model.get(addr, 0) if in_bank(addr) else 0
                    hits += in_bank(addr)
                expect.append(held[p])
            await ctx.tick()
            model.update(writes)
            for p in range(n_rd):
                assert ctx.get(dut.rd[p].data) == expect[p], (p, reads[p])
        for p in range(n_wr):
            ctx.set(dut.wr[p].en, 0)
        for bank in (0, 1):
            for index in range(1 << index_bits):
                addr = dev_addr(dut, bank, index)
                ctx.set(dut.dbg_addr, addr)
                assert ctx.get(dut.dbg_data) == debug_view(addr), (bank, index)
        assert hits > 100 and collisions > 0 and len(model) > (scratch + grad) // 2

    run(dut, bench)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scratch_words": 0}, "scratch_words must be a positive integer, not 0"),
        ({"grad_words": -4}, "grad_words must be a positive integer, not -4"),
        ({"width": 0}, "width must be a positive integer, not 0"),
        ({"read_ports": 0}, "read_ports must be a positive integer, not 0"),
        ({"write_ports": 1.5}, "write_ports must be a positive integer, not 1.5"),
    ],
)
def test_device_memory_rejects_bad_parameters(kwargs, message):
    args = {"scratch_words": 8, "grad_words": 8, **kwargs}
    with pytest.raises(ValueError, match=f"^{message}$"):
        DeviceMemory(**args)
