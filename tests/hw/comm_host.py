"""Host-bus helpers for Amaranth-simulator testbenches of the communication fabric."""

from __future__ import annotations

from amaranth.sim import Simulator

from gradsync.hw.fabric import Fabric
from gradsync.spec import regmap as rm

GB = rm.GRAD_BASE


def small_fabric():
    return Fabric(rm, num_nodes=2, link_latency_cycles=6, rx_windows=4, gradient_words=1024,
                  ring_entries=8)


class Host:
    """Host-bus helpers for Amaranth testbenches of the fabric."""

    def __init__(self, ctx, dut):
        self.ctx, self.dut = ctx, dut

    async def write(self, n, addr, data, csr):
        ctx, d = self.ctx, self.dut
        ctx.set(getattr(d, f"n{n}_host_addr"), addr)
        ctx.set(getattr(d, f"n{n}_host_wdata"), data)
        ctx.set(getattr(d, f"n{n}_host_csr"), csr)
        ctx.set(getattr(d, f"n{n}_host_we"), 1)
        await ctx.tick()
        ctx.set(getattr(d, f"n{n}_host_we"), 0)

    async def read(self, n, addr, csr):
        ctx, d = self.ctx, self.dut
        ctx.set(getattr(d, f"n{n}_host_addr"), addr)
        ctx.set(getattr(d, f"n{n}_host_csr"), csr)
        ctx.set(getattr(d, f"n{n}_host_re"), 1)
        await ctx.tick()
        ctx.set(getattr(d, f"n{n}_host_re"), 0)
        return ctx.get(getattr(d, f"n{n}_host_rdata"))

    async def send(self, n, desc, slot=0, queue=1):
        """Configure ``queue`` of node ``n`` over the whole memory and post ``desc``."""
        await self.write(n, rm.dma_reg(queue, "RING_BASE"), rm.RING_MEM_BASE + 0x100 * queue, 1)
        await self.write(n, rm.dma_reg(queue, "RING_SIZE"), 8, 1)
        await self.write(n, rm.dma_reg(queue, "WIN_BASE"), GB, 1)
        await self.write(n, rm.dma_reg(queue, "WIN_LEN"), 0x800, 1)
        for j, w in enumerate(desc.encode()):
            await self.write(n, rm.RING_MEM_BASE + 0x100 * queue + 32 * slot + 4 * j, w, 0)
        await self.write(n, rm.dma_reg(queue, "DOORBELL"), slot + 1, 1)

    async def window(self, n, w, dst, src, length, tag):
        for name, value in (("DST", dst), ("SRC", src), ("LEN", length), ("TAG", tag),
                            ("CTRL", 1)):
            await self.write(n, rm.rx_window_reg(w, name), value, 1)


def run_sim(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


