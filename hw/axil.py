"""AXI4-Lite slave front end: the bus handshakes, turned into one register write and one read.

``DESIGN.md`` ("One node"): the host's register port of a node.  The CSR
block (``hw/csr.py``) decodes the register map behind :class:`AxiLiteTarget`;
this file knows the AXI4-Lite channels and nothing of the registers.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from gradsync.spec.timing import CSR_RESPONSE_CYCLES

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


#: Cycles from an AW/W (AR) handshake to BVALID (RVALID): the accepted request is
#: registered, performed in the next cycle and answered in the one after.
RESPONSE_LATENCY_CYCLES = CSR_RESPONSE_CYCLES


def register_bus_signature(addr_bits: int) -> wiring.Signature:
    """The register accesses of :class:`AxiLiteTarget`, as it drives them (all registered).

    Members
    -------
    w_en : Out(1)
        A write accepted in the previous cycle is performed this cycle: ``w_data`` to
        byte address ``w_addr``.
    w_addr, w_data : Out
        The accepted AW and W channels' address and data (valid with ``w_en``).
    r_en : Out(1)
        A read of ``r_addr`` is performed this cycle; ``r_data`` (combinational,
        from the register file) is its value and is registered into RDATA.
    r_addr : Out
        The address of the accepted read, held until it is performed.
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
        accepting cycle. The accepted request is registered (the bus inputs
        drive nothing but these registers and the READY signals), performed on
        ``bus`` in the next cycle and answered by BVALID/RVALID in the one after
        (:data:`RESPONSE_LATENCY_CYCLES`, ``gradsync.spec.timing.CSR_RESPONSE_CYCLES``), which stay until taken. Every response
        is OKAY; ``WSTRB`` and the ``PROT`` signals are ignored (registers are
        written whole).

        The input register keeps the whole register file, and every engine its
        writes reach, out of the simulator's input-combinational logic: Verilator
        re-evaluates logic that depends on a top-level input on every ``eval()``,
        logic behind a register once per clock edge (docs/performance.md).
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

        # write: accepted (wr_go) -> performed (w_en, the next cycle) -> BVALID
        wr_go = Signal()
        m.d.comb += [
            wr_go.eq(ax["awvalid"] & ax["wvalid"] & ~bus.w_en & ~ax["bvalid"]),
            ax["awready"].eq(wr_go),
            ax["wready"].eq(wr_go),
        ]
        m.d.sync += bus.w_en.eq(wr_go)
        with m.If(wr_go):
            m.d.sync += [bus.w_addr.eq(ax["awaddr"]), bus.w_data.eq(ax["wdata"])]
        with m.If(ax["bvalid"] & ax["bready"]):
            m.d.sync += ax["bvalid"].eq(0)
        with m.If(bus.w_en):
            m.d.sync += ax["bvalid"].eq(1)

        # read: accepted (rd_go) -> pending until performed (r_en, not stalled) -> RVALID
        rd_go, pending = Signal(), Signal()
        m.d.comb += [
            rd_go.eq(ax["arvalid"] & ~pending & ~ax["rvalid"]),
            ax["arready"].eq(rd_go),
            bus.r_en.eq(pending & ~bus.r_stall),
        ]
        with m.If(rd_go):
            m.d.sync += [pending.eq(1), bus.r_addr.eq(ax["araddr"])]
        with m.If(bus.r_en):
            m.d.sync += [pending.eq(0), ax["rvalid"].eq(1), ax["rdata"].eq(bus.r_data)]
        with m.If(ax["rvalid"] & ax["rready"]):
            m.d.sync += ax["rvalid"].eq(0)
        return m
