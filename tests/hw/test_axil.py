# amaranth: UnusedElaboratable=no
"""hw/axil.py's AXI4-Lite front end in Amaranth's simulator: handshakes against the AXI4-Lite rules.

Cycle by cycle against the rules its docstring states (and the AXI4-Lite
specification requires): a write needs AW and W together, one transfer of a
kind in flight, responses one cycle after acceptance and held until taken,
reads held back by ``r_stall``.
"""

import pytest
from amaranth.sim import Simulator

from gradsync.hw.axil import AxiLiteTarget


def _run(body):
    dut = AxiLiteTarget(8)

    async def bench(ctx):
        await body(ctx, dut)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_write_needs_address_and_data_and_waits_for_the_response_to_be_taken():
    async def body(ctx, d):
        ctx.set(d.s_axil_awaddr, 0x24)
        ctx.set(d.s_axil_awvalid, 1)
        assert (ctx.get(d.s_axil_awready), ctx.get(d.bus.w_en)) == (0, 0), "AW alone is not a write"
        ctx.set(d.s_axil_wdata, 0xCAFE_F00D)
        ctx.set(d.s_axil_wvalid, 1)
        assert ctx.get(d.s_axil_awready) == ctx.get(d.s_axil_wready) == ctx.get(d.bus.w_en) == 1
        assert (ctx.get(d.bus.w_addr), ctx.get(d.bus.w_data)) == (0x24, 0xCAFE_F00D)
        assert ctx.get(d.s_axil_bvalid) == 0
        await ctx.tick()
        # B is pending and not taken: the next write waits.
        assert ctx.get(d.s_axil_bvalid) == 1 and ctx.get(d.s_axil_bresp) == 0
        assert ctx.get(d.bus.w_en) == 0 and ctx.get(d.s_axil_awready) == 0
        await ctx.tick()
        assert ctx.get(d.s_axil_bvalid) == 1, "BVALID stays until BREADY"
        ctx.set(d.s_axil_bready, 1)
        await ctx.tick()
        # Taken; the write still offered is accepted now: one write every other cycle.
        assert ctx.get(d.s_axil_bvalid) == 0 and ctx.get(d.bus.w_en) == 1
        ctx.set(d.s_axil_bready, 0)
        await ctx.tick()
        ctx.set(d.s_axil_awvalid, 0)
        ctx.set(d.s_axil_wvalid, 0)
        assert ctx.get(d.s_axil_bvalid) == 1 and ctx.get(d.bus.w_en) == 0

    _run(body)


def test_read_registers_the_register_value_and_honours_the_stall():
    async def body(ctx, d):
        ctx.set(d.s_axil_araddr, 0x40)
        ctx.set(d.s_axil_arvalid, 1)
        ctx.set(d.bus.r_stall, 1)
        ctx.set(d.bus.r_data, 0x1111)
        assert ctx.get(d.bus.r_addr) == 0x40, "the address is shown while the read is held back"
        assert (ctx.get(d.s_axil_arready), ctx.get(d.bus.r_en)) == (0, 0)
        await ctx.tick()
        assert ctx.get(d.s_axil_rvalid) == 0
        ctx.set(d.bus.r_stall, 0)
        ctx.set(d.bus.r_data, 0x2222)
        assert (ctx.get(d.s_axil_arready), ctx.get(d.bus.r_en)) == (1, 1)
        await ctx.tick()
        ctx.set(d.bus.r_data, 0x3333)  # later values do not reach RDATA
        assert ctx.get(d.s_axil_rvalid) == 1 and ctx.get(d.s_axil_rdata) == 0x2222
        assert ctx.get(d.bus.r_en) == 0, "one read in flight"
        ctx.set(d.s_axil_rready, 1)
        await ctx.tick()
        # Taken; the next read is accepted no earlier than this cycle: one read every other cycle.
        assert ctx.get(d.s_axil_rvalid) == 0
        assert ctx.get(d.bus.r_en) == 1
        await ctx.tick()
        assert ctx.get(d.s_axil_rvalid) == 1 and ctx.get(d.s_axil_rdata) == 0x3333

    _run(body)


def test_axil_target_rejects_bad_address_width():
    with pytest.raises(ValueError, match="addr_bits must be an integer in 2..32, not 1"):
        AxiLiteTarget(1)
