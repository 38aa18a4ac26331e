"""Host side of Amaranth-simulator testbenches of a small communication cluster.

The design is ``hw/cluster.py``'s :class:`Cluster` of two communication-only
nodes (``Node(compute=False)``): registers through each node's AXI4-Lite
port (``n{i}_s_axil_*``, the one CSR block), memory through its bulk
AXI4-Stream port (``n{i}_s_axis_*``/``n{i}_m_axis_*``), as the host does it.
The Verilator scenarios against the golden model are ``tests/hw/cocotb_comm.py``.
"""

from __future__ import annotations

from amaranth.sim import Simulator

from gradsync.hw.bulk import BEAT_BITS, bulk_header
from gradsync.hw.cluster import Cluster
from gradsync.spec import regmap as rm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig
from gradsync.spec.timing import CSR_RESPONSE_CYCLES

GB = rm.GRAD_BASE
#: Small memories (2 KiB each SRAM) and a short link, so the Python simulator is quick.
HW = HardwareConfig(
    scratchpad_words=1024,
    gradient_words=1024,
    ring_entries=8,
    rx_windows=4,
    link_latency_cycles=6,
    trace_records=256,
)
FMT = FixedPointFormat()
M32 = 0xFFFF_FFFF


def small_cluster(**node_kwargs) -> Cluster:
    """Two communication-only nodes of :data:`HW` (``node_kwargs``: e.g. ``credits=1``)."""
    return Cluster(HW, FMT, 2, compute=False, **node_kwargs)


class Host:
    """The host of every node of ``dut`` in an Amaranth testbench (``ctx``).

    ``write``/``read``: one AXI4-Lite register access (AW and W together; B and R
    accepted at once). ``load``/``dump``: one bulk transfer of 32-bit words
    (SRAM regions: each word two 16-bit operands, lowest address low).
    """

    def __init__(self, ctx, dut):
        self.ctx, self.dut = ctx, dut

    def _p(self, n: int, name: str):
        return getattr(self.dut, f"n{n}_{name}")

    async def _until(self, n: int, ready: str):
        """Tick until the cycle in which ``ready`` is high has ended (the handshake)."""
        while True:
            go = self.ctx.get(self._p(n, ready))
            await self.ctx.tick()
            if go:
                return

    async def _response(self, n: int, valid: str):
        """Tick until ``valid`` is high: ``CSR_RESPONSE_CYCLES`` after the handshake."""
        for _ in range(CSR_RESPONSE_CYCLES - 1):
            assert not self.ctx.get(self._p(n, valid)), f"{valid} before its cycle"
            await self.ctx.tick()
        assert self.ctx.get(self._p(n, valid)), f"no {valid} {CSR_RESPONSE_CYCLES} cycles after"

    async def write(self, n: int, addr: int, data: int):
        ctx, p = self.ctx, self._p
        ctx.set(p(n, "s_axil_awaddr"), addr)
        ctx.set(p(n, "s_axil_wdata"), data & M32)
        ctx.set(p(n, "s_axil_wstrb"), 0xF)
        ctx.set(p(n, "s_axil_bready"), 1)
        ctx.set(p(n, "s_axil_awvalid"), 1)
        ctx.set(p(n, "s_axil_wvalid"), 1)
        await self._until(n, "s_axil_awready")
        ctx.set(p(n, "s_axil_awvalid"), 0)
        ctx.set(p(n, "s_axil_wvalid"), 0)
        await self._response(n, "s_axil_bvalid")
        assert ctx.get(p(n, "s_axil_bresp")) == 0
        await ctx.tick()

    async def read(self, n: int, addr: int) -> int:
        ctx, p = self.ctx, self._p
        ctx.set(p(n, "s_axil_araddr"), addr)
        ctx.set(p(n, "s_axil_rready"), 1)
        ctx.set(p(n, "s_axil_arvalid"), 1)
        await self._until(n, "s_axil_arready")
        ctx.set(p(n, "s_axil_arvalid"), 0)
        await self._response(n, "s_axil_rvalid")
        assert ctx.get(p(n, "s_axil_rresp")) == 0
        value = ctx.get(p(n, "s_axil_rdata"))
        await ctx.tick()
        return value

    @staticmethod
    def _count(addr: int, words32: int) -> int:
        """The bulk header's word count: operands in the SRAMs, 32-bit words elsewhere."""
        in_sram = any(base <= addr < base + rm.REGION_SPAN for base in (rm.SCRATCH_BASE, GB))
        return words32 * (32 // FMT.total_bits if in_sram else 1)

    async def _send_beat(self, n: int, beat: int):
        self.ctx.set(self._p(n, "s_axis_tdata"), beat)
        self.ctx.set(self._p(n, "s_axis_tvalid"), 1)
        await self._until(n, "s_axis_tready")
        self.ctx.set(self._p(n, "s_axis_tvalid"), 0)

    async def load(self, n: int, addr: int, words):
        """32-bit ``words`` to device memory at byte address ``addr``."""
        words = [int(w) & M32 for w in words] + [0] * (len(words) % 2)
        await self._send_beat(n, bulk_header(addr, self._count(addr, len(words)), False))
        for i in range(0, len(words), 2):
            await self._send_beat(n, words[i] | words[i + 1] << 32)

    async def dump(self, n: int, addr: int, count: int) -> list[int]:
        """``count`` 32-bit words of device memory at byte address ``addr``."""
        ctx, p = self.ctx, self._p
        await self._send_beat(n, bulk_header(addr, self._count(addr, count), True))
        ctx.set(p(n, "m_axis_tready"), 1)
        out = []
        while len(out) < count:
            valid, beat = ctx.get(p(n, "m_axis_tvalid")), ctx.get(p(n, "m_axis_tdata"))
            await ctx.tick()
            if valid:
                out += [beat & M32, beat >> 32]
        ctx.set(p(n, "m_axis_tready"), 0)
        return out[:count]

    async def send(self, n, desc, slot=0, queue=1):
        """Configure ``queue`` of node ``n`` over the gradient SRAM and post ``desc``."""
        await self.write(n, rm.dma_reg(queue, "RING_BASE"), rm.RING_MEM_BASE + 0x100 * queue)
        await self.write(n, rm.dma_reg(queue, "RING_SIZE"), 8)
        await self.write(n, rm.dma_reg(queue, "WIN_BASE"), GB)
        await self.write(n, rm.dma_reg(queue, "WIN_LEN"), 0x800)
        await self.load(n, rm.RING_MEM_BASE + 0x100 * queue + 32 * slot, desc.encode())
        await self.write(n, rm.dma_reg(queue, "DOORBELL"), slot + 1)

    async def window(self, n, w, dst, src, length, tag):
        for name, value in (("DST", dst), ("SRC", src), ("LEN", length), ("TAG", tag), ("CTRL", 1)):
            await self.write(n, rm.rx_window_reg(w, name), value)

    async def trace(self, n: int) -> list[rm.TraceRecord]:
        """Every record in node ``n``'s trace buffer (the bulk port's own HOST records too)."""
        head = await self.read(n, rm.offset("TRACE_HEAD"))
        words = await self.dump(n, rm.TRACE_MEM_BASE, head * rm.TRACE_RECORD_WORDS)
        return [rm.TraceRecord.decode(words[4 * r : 4 * r + 4]) for r in range(head)]


def run_sim(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


assert BEAT_BITS == 64  # two 32-bit words per beat (Host.load/dump)
