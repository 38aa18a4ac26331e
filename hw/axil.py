"""AXI4-Lite slave front end: the bus handshakes, turned into one register write and one read.

``DESIGN.md`` ("One node"): the host's register port of a node.  The CSR
block (``hw/csr.py``) decodes the register map behind :class:`AxiLiteTarget`;
this file knows the AXI4-Lite channels and nothing of the registers.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

AXI_OKAY = 0b00


def axil_signature(addr_bits: int) -> dict:
    """Flat AXI4-Lite slave ports named as cocotbext-axi's ``AxiLiteBus.from_prefix(dut, "s_axil")``."""
    p = "s_axil_"
    return {
        p + "awaddr": In(addr_bits), p + "awprot": In(3), p + "awvalid": In(1), p + "awready": Out(1),
        p + "wdata": In(32), p + "wstrb": In(4), p + "wvalid": In(1), p + "wready": Out(1),
        p + "bresp": Out(2), p + "bvalid": Out(1), p + "bready": In(1),
        p + "araddr": In(addr_bits), p + "arprot": In(3), p + "arvalid": In(1), p + "arready": Out(1),
        p + "rdata": Out(32), p + "rresp": Out(2), p + "rvalid": Out(1), p + "rready": In(1),
    }  # fmt: skip


def register_bus_signature(addr_bits: int) -> wiring.Signature:
    """The register accesses of :class:`AxiLiteTarget`, as it drives them.

    Members
    -------
    w_en : Out(1)
        A write is accepted this cycle: ``w_data`` to byte address ``w_addr``.
    w_addr, w_data : Out
        The AW and W channels' address and data (valid with ``w_en``).
    r_en : Out(1)
        A read of ``r_addr`` is accepted this cycle; ``r_data`` (combinational,
        from the register file) is its value and is registered into RDATA.
    r_addr : Out
        The AR channel's address (driven whether or not a read is accepted).
    r_data : In(32)
        Value of the register at ``r_addr``.
    r_stall : In(1)
        Hold the read at ``r_addr`` back this cycle (the register file cannot
        answer it now); combinational in ``w_en``/``w_addr``/``r_addr`` only.
    """
    return wiring.Signature(
        {
            "w_en": Out(1),
            "w_addr": Out(addr_bits),
            "w_data": Out(32),
            "r_en": Out(1),
            "r_addr": Out(addr_bits),
            "r_data": In(32),
            "r_stall": In(1),
        }
    )


class AxiLiteTarget(wiring.Component):
    """AXI4-Lite slave that turns the bus into :func:`register_bus_signature` accesses.

    Parameters
    ----------
    addr_bits:
        Width of the AXI4-Lite byte address.

    Attributes
    ----------
    s_axil_* :
        AXI4-Lite slave (:func:`axil_signature`). One write (AW and W together)
        and one read in flight; AWREADY/WREADY and ARREADY are high in the
        accepting cycle, BVALID/RVALID follow it by one cycle and stay until
        taken. Every response is OKAY; ``WSTRB`` and the ``PROT`` signals are
        ignored (registers are written whole).
    bus : Out(register_bus_signature)
        The accepted writes and reads.
    """

    def __init__(self, addr_bits: int):
        if not isinstance(addr_bits, int) or not 2 <= addr_bits <= 32:
            raise ValueError(f"addr_bits must be an integer in 2..32, not {addr_bits!r}")
        self.addr_bits = addr_bits
        ports = axil_signature(addr_bits)
        ports["bus"] = Out(register_bus_signature(addr_bits))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        ax = {k[len("s_axil_") :]: getattr(self, k) for k in axil_signature(self.addr_bits)}
        bus = self.bus
        m.d.comb += [ax["bresp"].eq(AXI_OKAY), ax["rresp"].eq(AXI_OKAY)]

        wr_go = Signal()
        m.d.comb += [
            wr_go.eq(ax["awvalid"] & ax["wvalid"] & ~ax["bvalid"]),
            ax["awready"].eq(wr_go),
            ax["wready"].eq(wr_go),
            bus.w_en.eq(wr_go),
            bus.w_addr.eq(ax["awaddr"]),
            bus.w_data.eq(ax["wdata"]),
        ]
        with m.If(ax["bvalid"] & ax["bready"]):
            m.d.sync += ax["bvalid"].eq(0)
        with m.If(wr_go):
            m.d.sync += ax["bvalid"].eq(1)

        rd_go = Signal()
        m.d.comb += [
            rd_go.eq(ax["arvalid"] & ~ax["rvalid"] & ~bus.r_stall),
            ax["arready"].eq(rd_go),
            bus.r_en.eq(rd_go),
            bus.r_addr.eq(ax["araddr"]),
        ]
        with m.If(ax["rvalid"] & ax["rready"]):
            m.d.sync += ax["rvalid"].eq(0)
        with m.If(rd_go):
            m.d.sync += [ax["rvalid"].eq(1), ax["rdata"].eq(bus.r_data)]
        return m
