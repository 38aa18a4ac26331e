# amaranth: UnusedElaboratable=no
"""hw/axil.py's AXI4-Lite front end in Amaranth's simulator: handshakes against the AXI4-Lite rules.

Cycle by cycle against the rules its docstring states (and the AXI4-Lite
specification requires): a write needs AW and W together, one transfer of a
kind in flight, the accepted request registered and performed in the next
cycle, responses two cycles after acceptance and held until taken, reads
held back by ``r_stall``.
"""

import pytest
from amaranth.sim import Simulator

from gradsync.hw.axil import RESPONSE_LATENCY_CYCLES, AxiLiteTarget
from gradsync.spec.timing import CSR_RESPONSE_CYCLES


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
        # cycle h: accepted; nothing reaches the register bus combinationally
        assert ctx.get(d.s_axil_awready) == ctx.get(d.s_axil_wready) == 1
        assert ctx.get(d.bus.w_en) == 0 and ctx.get(d.s_axil_bvalid) == 0
        await ctx.tick()
        ctx.set(d.s_axil_awaddr, 0x99)  # the accepted request was registered
        ctx.set(d.s_axil_wdata, 0x1234)
        # h + 1: performed; the write still offered waits for the response
        assert ctx.get(d.bus.w_en) == 1
        assert (ctx.get(d.bus.w_addr), ctx.get(d.bus.w_data)) == (0x24, 0xCAFE_F00D)
        assert ctx.get(d.s_axil_awready) == 0 and ctx.get(d.s_axil_bvalid) == 0
        await ctx.tick()
        # h + 2 = h + RESPONSE_LATENCY_CYCLES: answered; B not taken, so the next write waits
        assert ctx.get(d.s_axil_bvalid) == 1 and ctx.get(d.s_axil_bresp) == 0
        assert ctx.get(d.bus.w_en) == 0 and ctx.get(d.s_axil_awready) == 0
        await ctx.tick()
        assert ctx.get(d.s_axil_bvalid) == 1, "BVALID stays until BREADY"
        ctx.set(d.s_axil_bready, 1)
        await ctx.tick()
        # taken; the write still offered is accepted now: one write every third cycle
        assert ctx.get(d.s_axil_bvalid) == 0 and ctx.get(d.s_axil_awready) == 1
        ctx.set(d.s_axil_bready, 0)
        await ctx.tick()
        ctx.set(d.s_axil_awvalid, 0)
        ctx.set(d.s_axil_wvalid, 0)
        assert ctx.get(d.bus.w_en) == 1 and ctx.get(d.bus.w_addr) == 0x99
        assert ctx.get(d.bus.w_data) == 0x1234 and ctx.get(d.s_axil_bvalid) == 0
        await ctx.tick()
        assert ctx.get(d.s_axil_bvalid) == 1 and ctx.get(d.bus.w_en) == 0

    _run(body)


def test_response_latency_is_the_spec_constant():
    assert RESPONSE_LATENCY_CYCLES == CSR_RESPONSE_CYCLES == 2


def test_read_registers_the_register_value_and_honours_the_stall():
    async def body(ctx, d):
        ctx.set(d.s_axil_araddr, 0x40)
        ctx.set(d.s_axil_arvalid, 1)
        ctx.set(d.bus.r_stall, 1)
        ctx.set(d.bus.r_data, 0x1111)
        # cycle h: accepted and registered; no read is performed in the accepting cycle
        assert (ctx.get(d.s_axil_arready), ctx.get(d.bus.r_en)) == (1, 0)
        await ctx.tick()
        ctx.set(d.s_axil_araddr, 0x44)
        assert ctx.get(d.bus.r_addr) == 0x40, "the accepted address is held"
        assert (ctx.get(d.s_axil_arready), ctx.get(d.bus.r_en)) == (0, 0), "stalled"
        await ctx.tick()
        assert ctx.get(d.s_axil_rvalid) == 0 and ctx.get(d.bus.r_addr) == 0x40
        ctx.set(d.bus.r_stall, 0)
        ctx.set(d.bus.r_data, 0x2222)
        assert (ctx.get(d.s_axil_arready), ctx.get(d.bus.r_en)) == (0, 1)
        await ctx.tick()
        ctx.set(d.bus.r_data, 0x3333)  # later values do not reach RDATA
        assert ctx.get(d.s_axil_rvalid) == 1 and ctx.get(d.s_axil_rdata) == 0x2222
        assert ctx.get(d.bus.r_en) == 0 and ctx.get(d.s_axil_arready) == 0, "one read in flight"
        ctx.set(d.s_axil_rready, 1)
        await ctx.tick()
        # taken; the read still offered (0x44) is accepted in this cycle
        assert ctx.get(d.s_axil_rvalid) == 0 and ctx.get(d.s_axil_arready) == 1
        await ctx.tick()
        ctx.set(d.s_axil_arvalid, 0)
        assert ctx.get(d.bus.r_en) == 1 and ctx.get(d.bus.r_addr) == 0x44
        await ctx.tick()
        assert ctx.get(d.s_axil_rvalid) == 1 and ctx.get(d.s_axil_rdata) == 0x3333

    _run(body)


def test_axil_target_rejects_bad_address_width():
    with pytest.raises(ValueError, match="addr_bits must be an integer in 2..32, not 1"):
        AxiLiteTarget(1)
