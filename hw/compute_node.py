"""Compute half of one node: CSR block + sequencer + array + vector unit + SRAMs + bulk port.

``DESIGN.md`` ("One node") minus the DMA engine and NIC (``hw/dma.py``,
``hw/nic.py``), which attach through the ``dma_rd``/``dma_wr`` memory ports
and the CSR block's engine-facing registers (``DMA*``, ``WIN*``, ``RX_*``,
``PERF_TX*``; see ``hw/csr.py``). This is the top level of the compute block
tests and of the GEMM benchmark.
"""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from gradsync.spec import regmap as rm
from gradsync.spec.formats import DEFAULT_FORMAT, BFloat16Format, FixedPointFormat
from gradsync.spec.hardware import DEFAULT_HARDWARE, HardwareConfig, constant_registers

from .bulk import BulkPort
from .csr import CsrBlock, axil_signature
from .sequencer import ComputeSequencer
from .sram import DeviceMemory, device_addr_bits, read_port_signature, write_port_signature

_CMD_FIELDS = {"word": "CMD_OPCODE", "a": "CMD_A", "b": "CMD_B", "c": "CMD_C", "m": "CMD_M",
               "k": "CMD_K", "n": "CMD_N", "arg": "CMD_ARG", "tag": "CMD_TAG"}


def make_sequencer(hw: HardwareConfig, fmt: FixedPointFormat | BFloat16Format
                   ) -> ComputeSequencer:
    """The compute sequencer (array, vector unit, tiling) of a node built for ``hw``/``fmt``."""
    return ComputeSequencer(
        rows=hw.array_rows, cols=hw.array_cols, lanes=hw.vector_lanes, fmt=fmt,
        scratch_words=hw.scratchpad_words, grad_words=hw.gradient_words,
        fifo_depth=hw.cmd_fifo_depth)


def connect_compute_memory(m: Module, mem: DeviceMemory, seq: ComputeSequencer, bulk: BulkPort):
    """Give the sequencer, then the bulk port, the first memory ports (a later write port
    wins a collision); return iterators over the remaining (read, write) ports."""
    rd = iter(mem.rd)
    wr = iter(mem.wr)
    for port in list(seq.rd) + list(bulk.rd):
        wiring.connect(m, port, next(rd))
    for port in list(seq.wr) + list(bulk.wr):
        wiring.connect(m, port, next(wr))
    return rd, wr


def connect_sequencer(m: Module, csr: CsrBlock, seq: ComputeSequencer) -> None:
    """CSR <-> sequencer: the CMD_* launch registers in, the FIFO, done and perf counters out."""
    m.d.comb += [seq.launch.eq(csr.port("wo", "CMD_LAUNCH")), seq.now.eq(csr.now)]
    for field, name in _CMD_FIELDS.items():
        m.d.comb += getattr(seq.launch_cmd, field).eq(csr.port("rw", name))
    m.d.comb += [
        csr.port("ro", "CMD_FIFO_FREE").eq(seq.fifo_free),
        csr.port("ro", "COMPUTE_DONE").eq(seq.done_count),
        csr.port("ro", "PERF_GEMM_CYCLES").eq(seq.gemm_busy_cycles),
        csr.port("ro", "PERF_VECTOR_CYCLES").eq(seq.vector_busy_cycles),
    ]


class ComputeNode(wiring.Component):
    """The compute half of a node, with its host-facing ports.

    Parameters
    ----------
    hw:
        ``gradsync.spec.hardware.HardwareConfig`` (array, lanes, SRAM sizes, FIFO and
        trace depth are used here).
    fmt:
        ``gradsync.spec.formats.FixedPointFormat`` or ``BFloat16Format``: chosen at
        elaboration, reported in ``HW_FORMAT``. In bf16 both SRAMs hold 16-bit words;
        the compute engines read and write a gradient-SRAM element as an fp32 value in
        two of them (``docs/node.md``, "Number formats").
    dma_ports:
        Number of read and of write memory ports left for the DMA engine/NIC.

    Attributes
    ----------
    s_axil_* :
        AXI4-Lite CSR slave (:class:`hw.csr.CsrBlock`).
    s_axis_*, m_axis_* :
        Host bulk port (:class:`hw.bulk.BulkPort`).
    irq : Out(1)
        ``(IRQ_STATUS & IRQ_MASK) != 0``.
    cycle : Out(64)
        The cycle counter (``CYCLE_LO``/``HI``), for testbenches and trace export.
    dma_rd, dma_wr :
        Memory ports for the communication half; idle when tied to 0.
    """

    def __init__(self, hw: HardwareConfig = DEFAULT_HARDWARE,
                 fmt: FixedPointFormat | BFloat16Format = DEFAULT_FORMAT, *,
                 dma_ports: int = 1):
        if not isinstance(hw, HardwareConfig):
            raise TypeError(f"hw must be a gradsync.spec.hardware.HardwareConfig, not {hw!r}")
        if not isinstance(fmt, (FixedPointFormat, BFloat16Format)):
            raise TypeError("fmt must be a gradsync.spec.formats.FixedPointFormat or "
                            f"BFloat16Format, not {fmt!r}")
        self.hw, self.fmt = hw, fmt
        self.dma_ports = dma_ports
        addr_bits = device_addr_bits(hw.scratchpad_words, hw.gradient_words)
        ports = axil_signature(13)
        ports.update({
            "s_axis_tdata": In(64), "s_axis_tvalid": In(1), "s_axis_tready": Out(1),
            "s_axis_tlast": In(1),
            "m_axis_tdata": Out(64), "m_axis_tvalid": Out(1), "m_axis_tready": In(1),
            "m_axis_tlast": Out(1),
            "irq": Out(1),
            "cycle": Out(64),
            "dma_rd": In(read_port_signature(addr_bits, fmt.word_bits)).array(dma_ports),
            "dma_wr": In(write_port_signature(addr_bits, fmt.word_bits)).array(dma_ports),
        })
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        hw, fmt = self.hw, self.fmt
        seq = make_sequencer(hw, fmt)
        bulk = BulkPort(fmt.word_bits, hw.scratchpad_words, hw.gradient_words)
        mem = DeviceMemory(hw.scratchpad_words, hw.gradient_words, fmt.word_bits,
                           read_ports=seq.n_read + bulk.per_beat + self.dma_ports,
                           write_ports=seq.n_write + bulk.per_beat + self.dma_ports)
        csr = CsrBlock(constants=constant_registers(hw, fmt), trace_records=hw.trace_records,
                       trace_writers=1, error_sources=2)
        m.submodules.seq = seq
        m.submodules.bulk = bulk
        m.submodules.mem = mem
        m.submodules.csr = csr

        # Memory ports: sequencer, then bulk, then DMA (a later write port wins a collision).
        rd, wr = connect_compute_memory(m, mem, seq, bulk)
        for port in self.dma_rd:
            wiring.connect(m, wiring.flipped(port), next(rd))
        for port in self.dma_wr:
            wiring.connect(m, wiring.flipped(port), next(wr))

        # CSR <-> sequencer.
        connect_sequencer(m, csr, seq)
        m.d.comb += [
            csr.irq_set.eq(seq.irq << (rm.Irq.COMPUTE.bit_length() - 1)),
            csr.trace_in[0].eq(seq.trace),
            csr.err_in[0].eq(seq.cmd_err),
            csr.err_in[1].eq(seq.launch_err),
            self.irq.eq(csr.irq),
            self.cycle.eq(csr.now),
        ]
        # Host ports straight through.
        for name in axil_signature(13):
            a, b = getattr(self, name), getattr(csr, name)
            if name in ("s_axil_awready", "s_axil_wready", "s_axil_bresp", "s_axil_bvalid",
                        "s_axil_arready", "s_axil_rdata", "s_axil_rresp", "s_axil_rvalid"):
                m.d.comb += a.eq(b)
            else:
                m.d.comb += b.eq(a)
        for name in ("s_axis_tdata", "s_axis_tvalid", "s_axis_tlast", "m_axis_tready"):
            m.d.comb += getattr(bulk, name).eq(getattr(self, name))
        for name in ("s_axis_tready", "m_axis_tdata", "m_axis_tvalid", "m_axis_tlast"):
            m.d.comb += getattr(self, name).eq(getattr(bulk, name))
        return m
