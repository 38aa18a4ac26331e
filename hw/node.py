"""One full gradsync node: the compute half and the communication half behind one host interface.

``DESIGN.md`` ("One node"): :class:`Node` joins the parts of
``hw/compute_node.py`` (CSR block, compute sequencer with array and vector
unit, scratchpad and gradient SRAMs, bulk port) with the DMA engine and NIC
of ``hw/dma.py``/``hw/nic.py``, so that the host sees exactly what
``model/device.py`` models:

* ONE AXI4-Lite CSR port: the :class:`~gradsync.hw.csr.CsrBlock` generated
  from ``gradsync.spec.regmap``; the communication registers are its engine ports
  (``rw_dma*``, ``wo_dma*_doorbell``, ``ro_rx_*``, ``ro_perf_tx_*``) and the
  RX window registers are forwarded to the receiver's window table
  (``rx_windows``); no second decoder.
* ONE bulk port (:class:`~gradsync.hw.bulk.BulkPort`): scratchpad and
  gradient SRAM in operand words, ring memory (load/dump) and trace memory
  (dump) in 32-bit words -- the regions ``ModelDevice.load``/``dump`` accept.
* ONE interrupt line and ONE trace buffer, written by the compute sequencer
  (COMPUTE, VECTOR), the DMA engine (DMA_HI/DMA_LO, NIC_TX), the receiver
  (NIC_RX), the bulk port (HOST) and the error reports (ERROR).
* ONE scratchpad + gradient SRAM (:class:`~gradsync.hw.sram.DeviceMemory`):
  the array and vector unit read and write it, the DMA engine reads its
  packet sources from it (either bank, as the model allows), the receiver
  reduce-adds into it.  The DMA and the receiver work in 32-bit words; each
  of their 32-bit ports is ``32 / operand_bits`` operand-word ports, the
  lowest address in the low bits (the packet format of ``docs/comm.md``).

The link ports (``tx``, ``tx_ack``, ``rx``, ``rx_ack``) are joined to the
peers' by :class:`~gradsync.hw.cluster.Cluster`.

``Node(..., compute=False)`` is the same node without the compute half (no
sequencer, array or vector unit): the communication block tests build it,
since it compiles several times faster; its ``compute_done`` input stands in
for the sequencer's completion count (``COMPUTE_DONE``, FENCE descriptors).
The CSR block, bulk port, SRAMs, DMA engine and NIC are the very same.

A received packet whose range (or reduce-add source) is not inside one SRAM
is refused with ``RX_OUT_OF_WINDOW`` and writes nothing, as in the model
(``NicRx``'s ``regions``).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from gradsync.spec import regmap as rm
from gradsync.spec.formats import DEFAULT_FORMAT, BFloat16Format, FixedPointFormat
from gradsync.spec.hardware import DEFAULT_HARDWARE, HardwareConfig, constant_registers
from gradsync.spec.host import DEBUG_WORDS, NODE_COUNTERS
from gradsync.spec.link import (
    NIC_CREDITS,
    NIC_WINDOW_PACKETS,
    PACKET_CRC_BYTES,
    PACKET_HEADER_BYTES,
    link_bytes_allowed,
    nic_timeouts,
)

from .bulk import WIDE_PER_BEAT, BulkPort
from .compute_node import (
    connect_compute_memory,
    connect_sequencer,
    make_sequencer,
)
from .csr import LINK_CURRENT, CsrBlock, axil_signature
from .dma import DmaEngine
from .events import ErrorEvent
from .link import LATENCY_BITS, AckMessage, bandwidth_bits, link_beat, word_period_log2
from .nic import NicRx, NicTx
from .sram import DeviceMemory, device_addr_bits

#: Host ports of a node, shared with ``hw/compute_node.py`` (the cluster prefixes them).
HOST_PORTS = (
    *axil_signature(13),
    "s_axis_tdata",
    "s_axis_tvalid",
    "s_axis_tready",
    "s_axis_tlast",
    "m_axis_tdata",
    "m_axis_tvalid",
    "m_axis_tready",
    "m_axis_tlast",
    "irq",
    "cycle",
    "dbg_en",
    "dbg_addr",
    "dbg_data",
)

#: (:data:`DEBUG_WORDS`, the debug port's words per address, and :data:`NODE_COUNTERS`, the
#: counter ports every node exposes beside the registers: ``gradsync.spec.host``.)

#: Node counter port -> (NIC side, NicTx/NicRx attribute) that drives it.
NIC_COUNTER_SOURCES = {
    "tx_packets": ("tx", "packets_sent"),
    "tx_retransmits": ("tx", "retransmits"),
    "tx_timeouts": ("tx", "timeouts"),
    "tx_naks": ("tx", "naks"),
    "rx_packets": ("rx", "packets_applied"),
    "rx_crc_errors": ("rx", "crc_errors"),
    "rx_seq_errors": ("rx", "seq_errors"),
    "rx_duplicates": ("rx", "duplicates"),
    "rx_drops": ("rx", "drops"),
    # the receiver-not-ready hold (hw/nic_rx.py): packets held, and the one held now
    # (window + 1 and tag; 0 when none) -- a status, not a counter, for the watchdog's report
    "rx_holds": ("rx", "holds"),
    "rx_held_window": ("rx", "held_window"),
    "rx_held_tag": ("rx", "held_tag"),
}


def link_ports(width_bytes: int = 4) -> dict:
    """A node's link side: beats out and in (``hw.link.link_beat(width_bytes)``), acks both
    ways, the transmit link's current bandwidth and latency (``LINK_SET``), and its NIC
    counters."""
    beat = link_beat(width_bytes)
    ports = {
        "link_bytes_per_cycle": Out(bandwidth_bits(width_bytes)),
        "link_latency": Out(LATENCY_BITS),
        "tx": Out(stream.Signature(beat)),
        "tx_ack": In(stream.Signature(AckMessage, always_ready=True)),
        "rx": In(stream.Signature(beat, always_ready=True)),
        "rx_ack": Out(stream.Signature(AckMessage, always_ready=True)),
    }
    ports.update({name: Out(32) for name in NODE_COUNTERS})
    return ports


def drive_nic_counters(m: Module, top, tx: NicTx, rx: NicRx) -> None:
    """Drive ``top``'s ``NODE_COUNTERS`` ports from the NIC's counters."""
    sides = {"tx": tx, "rx": rx}
    m.d.comb += [
        getattr(top, name).eq(getattr(sides[side], attr))
        for name, (side, attr) in NIC_COUNTER_SOURCES.items()
    ]


def connect_nic(m: Module, top, dma: DmaEngine, tx: NicTx, rx: NicRx) -> None:
    """DMA packets into the transmitter (CRC back to the DMA for its write-back), and the
    transmitter and receiver on ``top``'s link ports ``tx``/``tx_ack``/``rx``/``rx_ack``."""
    wiring.connect(m, dma.pkt, tx.pkt)
    m.d.comb += dma.crc_sent.eq(tx.crc_sent)
    wiring.connect(m, wiring.flipped(top.tx), tx.link)
    wiring.connect(m, wiring.flipped(top.tx_ack), tx.ack)
    wiring.connect(m, wiring.flipped(top.rx), rx.link)
    wiring.connect(m, wiring.flipped(top.rx_ack), rx.ack)


class LinkSetting(wiring.Component):
    """The node's current transmit link (``LINK_SET``) and the NIC timeouts derived from it.

    Parameters
    ----------
    hw:
        The build's link (``link_bytes_per_cycle``, ``link_latency_cycles``,
        ``max_payload_bytes``): the values after reset.
    limits:
        ``LINK_LIMITS`` (``max_payload_words``, ``max_latency``), the bounds of a setting.

    Attributes
    ----------
    set_we : In(1), set_data : In(32)
        A ``LINK_SET`` write.  Refused, changing nothing, if a doorbell was written
        since reset (``LINK_SET_LOCKED``, index 0) or by the first bad field in
        ``gradsync.spec.link.link_set_refusal``'s order (``LINK_SET_BAD``, index 0
        width, 1 payload words, 2 latency); ``error`` (engine HOST, info = the
        value) in the cycle of the write, as ``CMD_FIFO_FULL``.  Accepted: the
        outputs take the new values at the end of the write's cycle.
    doorbell : In(1)
        Any ``DMAn_DOORBELL`` write (accepted or refused): locks the setting until reset.
    bytes_per_cycle : Out(3), payload_words : Out(8), latency : Out(10)
        The current link.
    timeout, holdoff : Out(16)
        ``gradsync.spec.link.nic_timeouts`` of the current link, in cycles.
    error : Out(ErrorEvent)
    """

    def __init__(self, hw: HardwareConfig, limits: int):
        lim = rm.reg("LINK_LIMITS")
        self.max_payload_words = lim.field("max_payload_words").get(limits)
        self.max_latency = lim.field("max_latency").get(limits)
        self.framing_words = (PACKET_HEADER_BYTES + PACKET_CRC_BYTES) // 4
        self.width_bytes = hw.link_width_bytes
        super().__init__(
            {
                "set_we": In(1),
                "set_data": In(32),
                "doorbell": In(1),
                "bytes_per_cycle": Out(
                    bandwidth_bits(hw.link_width_bytes), init=hw.link_bytes_per_cycle
                ),
                "payload_words": Out(8, init=hw.max_payload_bytes // 4),
                "latency": Out(LATENCY_BITS, init=hw.link_latency_cycles),
                "timeout": Out(16),
                "holdoff": Out(16),
                "error": Out(ErrorEvent),
            }
        )

    def elaborate(self, platform):
        m = Module()
        r = rm.reg("LINK_SET")
        v = self.set_data
        bpc, pw, lat = (
            v[f.lsb : f.lsb + f.width]
            for f in map(r.field, ("bytes_per_cycle", "payload_words", "latency"))
        )
        locked = Signal()
        with m.If(self.doorbell):
            m.d.sync += locked.eq(1)
        bad = Signal(3)  # per field, in link_set_refusal's order
        m.d.comb += [
            bad[0].eq(~sum(bpc == w for w in link_bytes_allowed(self.width_bytes)).bool()),
            bad[1].eq((pw == 0) | (pw > self.max_payload_words)),
            bad[2].eq(lat > self.max_latency),
        ]
        e = self.error
        with m.If(self.set_we):
            with m.If(locked):
                m.d.comb += [e.valid.eq(1), e.code.eq(rm.ErrorCode.LINK_SET_LOCKED)]
            with m.Elif(bad != 0):
                m.d.comb += [
                    e.valid.eq(1),
                    e.code.eq(rm.ErrorCode.LINK_SET_BAD),
                    e.index.eq(Mux(bad[0], 0, Mux(bad[1], 1, 2))),
                ]
            with m.Else():
                m.d.sync += [
                    self.bytes_per_cycle.eq(bpc),
                    self.payload_words.eq(pw),
                    self.latency.eq(lat),
                ]
        m.d.comb += [e.engine.eq(rm.Engine.HOST), e.info.eq(v)]

        # nic_timeouts: rtt = 2 latency + (framing + payload words) * 4 // width + 16
        shift = word_period_log2(self.bytes_per_cycle)
        rtt = Signal(16)
        words = Signal(9)
        serial = words << shift
        if self.width_bytes == 8:  # at 8 bytes/cycle: half the words, rounded down
            serial = Mux(self.bytes_per_cycle == 8, words >> 1, serial)
        m.d.comb += [
            words.eq(self.framing_words + self.payload_words),
            rtt.eq((self.latency << 1) + serial + 16),
            self.holdoff.eq(rtt),
            self.timeout.eq((rtt << 1) + 64),
        ]
        return m


class Node(wiring.Component):
    """A full node: compute + DMA + NIC, one CSR port, one bulk port, one IRQ, one trace buffer.

    Parameters
    ----------
    hw:
        ``HardwareConfig`` (array, SRAM sizes, queues, windows, trace depth,
        link bandwidth/latency, payload size).
    fmt:
        ``FixedPointFormat`` or ``BFloat16Format``: chosen at elaboration, reported in
        ``HW_FORMAT``.  In bf16 both SRAMs hold 16-bit words (two per 32-bit DMA/NIC
        word, as 16-bit fixed point) and the receiver's reduce-add sums fp32 elements,
        one per 32-bit packet word; ``DescFlag.BF16`` sends are two bf16 elements per
        packet word, the DMA source and the receiver reading (and writing) two 32-bit
        words per cycle (``docs/numerics.md``, "The bf16 gradient exchange").
    node_id, num_nodes:
        This node's index and the cluster size (``NODE_ID``, ``NUM_NODES``,
        ``TX_PEER = (node_id + 1) % num_nodes``).
    host_lead_cycles, host_lag_cycles, host_dump_lag_cycles:
        Stamps of the HOST trace records (see :class:`~gradsync.hw.bulk.BulkPort`):
        END = last beat + lag (loads; ``host_dump_lag_cycles`` for dumps:
        cocotbext-axi's sink returns a frame a cycle sooner than its source
        reports a frame sent), START = END - ``host_bulk_cycles(bytes)``
        (``hw.host_bulk_*``: the host bus cost ``model/device.py`` charges;
        ``sim/rtl_device.py`` pads before the header so the call takes
        exactly that), or, with an int ``host_lead_cycles``, the header
        handshake - lead.  The defaults (None, 1, 0) match
        ``sim/rtl_device.py``.
    compute:
        ``False`` leaves out the compute half (module docstring): no
        sequencer, ``COMPUTE_DONE`` reads the ``compute_done`` input and the
        other compute registers read 0.
    credits:
        NIC flow-control credits (receive buffers a sender may fill ahead;
        :class:`~gradsync.hw.nic.NicTx`).

    Attributes
    ----------
    s_axil_* :
        AXI4-Lite CSR slave (:class:`hw.csr.CsrBlock`).
    s_axis_*, m_axis_* :
        Host bulk port (:class:`hw.bulk.BulkPort`).
    irq : Out(1)
        ``(IRQ_STATUS & IRQ_MASK) != 0``.
    cycle : Out(64)
        The cycle counter (``CYCLE_LO``/``HI``).
    dbg_en : In(1), dbg_addr : In, dbg_data : Out
        Combinational read of :data:`DEBUG_WORDS` consecutive SRAM words from a
        device word address (``hw/sram.py``: scratchpad words, then the gradient
        bank at bit ``addr_bits - 1``; word ``k`` in bits ``[k*w, (k+1)*w)``), for
        testbenches; no clock edge needed. ``dbg_data`` is 0 while ``dbg_en`` is
        low: keep it low outside a read (the read's multiplexers then cost a
        Verilated model nothing per evaluation).
    tx, tx_ack, rx, rx_ack :
        Link ports (``hw/link.py``): packets out, their acknowledgements in;
        packets in, acknowledgements out.
    link_bytes_per_cycle : Out(3), link_latency : Out(10)
        The transmit link's current bandwidth and latency (:class:`LinkSetting`),
        for the :class:`~gradsync.hw.link.Link` the cluster joins to ``tx``.
    tx_packets ... rx_drops : Out(32)
        NIC counters (:data:`NODE_COUNTERS`).
    compute_done : In(32)
        Only with ``compute=False``: the completion count FENCE descriptors wait on.
    """

    def __init__(
        self,
        hw: HardwareConfig = DEFAULT_HARDWARE,
        fmt: FixedPointFormat | BFloat16Format = DEFAULT_FORMAT,
        node_id: int = 0,
        num_nodes: int = 2,
        *,
        host_lead_cycles: int | None = None,
        host_lag_cycles: int = 1,
        host_dump_lag_cycles: int = 0,
        compute: bool = True,
        credits: int = NIC_CREDITS,
        seq_start: int = 0,
    ):
        if not isinstance(hw, HardwareConfig):
            raise TypeError(f"hw must be a HardwareConfig, not {hw!r}")
        if not isinstance(fmt, (FixedPointFormat, BFloat16Format)):
            raise TypeError(f"fmt must be a FixedPointFormat or a BFloat16Format, not {fmt!r}")
        if num_nodes < 1 or not 0 <= node_id < num_nodes:
            raise ValueError(f"node_id must be in 0..{num_nodes - 1}, not {node_id!r}")
        if hw.trace_records & (hw.trace_records - 1):
            raise ValueError(f"trace_records must be a power of two, not {hw.trace_records!r}")
        framing = (hw.packet_header_bytes, hw.packet_crc_bytes)
        if framing != (PACKET_HEADER_BYTES, PACKET_CRC_BYTES):
            raise ValueError(
                f"packet_header_bytes/packet_crc_bytes must be {PACKET_HEADER_BYTES}/"
                f"{PACKET_CRC_BYTES} (the NIC's framing), not {framing[0]!r}/{framing[1]!r}"
            )
        self.hw, self.fmt = hw, fmt
        self.node_id, self.num_nodes = node_id, num_nodes
        self.host_lead_cycles, self.host_lag_cycles = host_lead_cycles, host_lag_cycles
        self.host_dump_lag_cycles = host_dump_lag_cycles
        self.compute, self.credits = compute, credits
        self.seq_start = seq_start  # NicTx/NicRx's first sequence number (wrap tests)
        self.addr_bits = device_addr_bits(hw.scratchpad_words, hw.gradient_words)
        ports = axil_signature(13)
        ports.update(
            {
                "s_axis_tdata": In(64),
                "s_axis_tvalid": In(1),
                "s_axis_tready": Out(1),
                "s_axis_tlast": In(1),
                "m_axis_tdata": Out(64),
                "m_axis_tvalid": Out(1),
                "m_axis_tready": In(1),
                "m_axis_tlast": Out(1),
                "irq": Out(1),
                "cycle": Out(64),
                "dbg_en": In(1),
                "dbg_addr": In(self.addr_bits),
                "dbg_data": Out(fmt.total_bits * DEBUG_WORDS),
            }
        )
        ports.update(link_ports(hw.link_width_bytes))
        if not compute:
            ports["compute_done"] = In(32)
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        hw, fmt = self.hw, self.fmt
        Q = rm.DMA_QUEUES
        wb = fmt.word_bytes
        lanes32 = 32 // fmt.total_bits  # operand words per 32-bit DMA/NIC word
        bf16 = isinstance(fmt, BFloat16Format)
        # bf16 builds: a second 32-bit port each for the DMA source, the receiver's read
        # and its write (two fp32 elements per payload word, docs/numerics.md)
        # and width-8 links: two payload words per cycle from the source and into memory
        wide = hw.link_width_bytes == 8
        if bf16 and wide:
            raise ValueError(
                "link_width_bytes must be 4 on a bf16 device (its second ports carry bf16 "
                "elements), not 8"
            )
        comm_ports32 = 2 if bf16 or wide else 1
        ring_words = 1 << ceil_log2(Q * hw.ring_entries * rm.DESCRIPTOR_WORDS)
        ring_valid = Q * hw.ring_entries * rm.DESCRIPTOR_WORDS
        consts = constant_registers(hw, fmt, self.node_id, self.num_nodes)
        # Buffers and packet fields are sized for LINK_LIMITS; LINK_SET picks within them.
        link = LinkSetting(hw, consts["LINK_LIMITS"])
        max_pw = link.max_payload_words
        timeout, holdoff = nic_timeouts(hw.link)  # reset values; LinkSetting drives them

        # ---- parts ---------------------------------------------------------------------------
        seq = make_sequencer(hw, fmt) if self.compute else None
        bulk = BulkPort(
            fmt.total_bits,
            hw.scratchpad_words,
            hw.gradient_words,
            wide_regions=True,
            wide_words=max(ring_words, hw.trace_records * rm.TRACE_RECORD_WORDS),
            host_trace=True,
            host_lead_cycles=self.host_lead_cycles,
            host_lag_cycles=self.host_lag_cycles,
            host_dump_lag_cycles=self.host_dump_lag_cycles,
            host_setup_cycles=hw.host_bulk_setup_cycles,
            host_bytes_per_cycle=hw.host_bulk_bytes_per_cycle,
        )
        seq_read, seq_write = (seq.n_read, seq.n_write) if seq else (0, 0)
        mem = DeviceMemory(
            hw.scratchpad_words,
            hw.gradient_words,
            fmt.total_bits,
            read_ports=seq_read + bulk.per_beat + 2 * comm_ports32 * lanes32,
            write_ports=seq_write + bulk.per_beat + comm_ports32 * lanes32,
            debug_port=True,
            debug_words=DEBUG_WORDS,
        )
        regions = (
            (rm.SCRATCH_BASE, hw.scratchpad_words * wb),
            (rm.GRAD_BASE, hw.gradient_words * wb),
        )
        dma = DmaEngine(
            queues=Q,
            ring_words=ring_words,
            ring_entries=hw.ring_entries,
            ring_base_addr=rm.RING_MEM_BASE,
            ring_valid_words=ring_valid,
            max_payload_bytes=4 * max_pw,
            link_bytes_per_cycle=hw.link_bytes_per_cycle,
            src_regions=regions,
            host_lanes=WIDE_PER_BEAT,
            bf16=bf16,
            **({"link_width_bytes": 8} if wide else {}),
        )
        tx = NicTx(
            max_payload_words=max_pw,
            window_packets=NIC_WINDOW_PACKETS,
            credits=self.credits,
            timeout_cycles=timeout,
            seq_start=self.seq_start,
            **({"width_bytes": 8} if wide else {}),
        )
        rx = NicRx(
            max_payload_words=max_pw,
            credits=self.credits,
            windows=hw.rx_windows,
            regions=regions,
            operand_bits=fmt.total_bits,
            saturate=getattr(fmt, "saturate", False),
            fp32=bf16,
            nak_holdoff_cycles=holdoff,
            seq_start=self.seq_start,
            **({"width_bytes": 8} if wide else {}),
        )
        trace_writes = [dma.trace[0], dma.trace[1], rx.trace, bulk.trace[0], bulk.trace[1]]
        errors = [dma.error[0], dma.error[1], rx.error, link.error]
        if seq:
            trace_writes.insert(0, seq.trace)
            errors[:0] = [seq.cmd_err, seq.launch_err]
        csr = CsrBlock(
            constants=consts,
            live=LINK_CURRENT,
            trace_records=hw.trace_records,
            trace_writers=len(trace_writes),
            error_sources=len(errors),
            rx_windows=hw.rx_windows,
            trace_read_ports=WIDE_PER_BEAT,
        )
        if seq:
            m.submodules.seq = seq
        m.submodules.bulk = bulk
        m.submodules.mem = mem
        m.submodules.dma = dma
        m.submodules.nic_tx = tx
        m.submodules.nic_rx = rx
        m.submodules.csr = csr
        m.submodules.link_setting = link

        # ---- device memory: sequencer, bulk, DMA source, receiver (later writers win) --------
        if seq:
            rd, wr = connect_compute_memory(m, mem, seq, bulk)
        else:
            rd, wr = iter(mem.rd), iter(mem.wr)
            for port in bulk.rd:
                wiring.connect(m, port, next(rd))
            for port in bulk.wr:
                wiring.connect(m, port, next(wr))
        self._connect_comm_memory(m, mem, dma, rx, rd, wr)

        # ---- ring and trace memory for the bulk port ---------------------------------------------
        self._connect_wide_regions(m, bulk, dma, csr, ring_words, ring_valid)

        # ---- CSR <-> sequencer -----------------------------------------------------------------
        if seq:
            connect_sequencer(m, csr, seq)
            compute_done = seq.done_count
        else:
            compute_done = self.compute_done
            m.d.comb += csr.port("ro", "COMPUTE_DONE").eq(compute_done)

        # ---- CSR <-> DMA engine and NIC (the seam of docs/comm.md) -------------------------------
        connect_nic(m, self, dma, tx, rx)
        m.d.comb += [
            dma.tx_peer.eq((self.node_id + 1) % self.num_nodes),
            dma.peers_ok.eq(self.num_nodes >= 2),
            dma.compute_done.eq(compute_done),
            dma.cycle.eq(csr.now[:48]),
            rx.now.eq(csr.now[:48]),
        ]
        self._connect_comm_registers(m, csr, dma, tx, rx)
        self._connect_link_setting(m, csr, link, dma, tx, rx)

        # ---- interrupts, trace, errors ------------------------------------------------------------
        def irq_bit(irq):
            return ceil_log2(int(irq))

        irq_set = Signal(8)
        if seq:
            m.d.comb += irq_set[irq_bit(rm.Irq.COMPUTE)].eq(seq.irq)
        m.d.comb += [
            irq_set[irq_bit(rm.Irq.DMA_Q0)].eq(dma.irq_done[0]),
            irq_set[irq_bit(rm.Irq.DMA_Q1)].eq(dma.irq_done[1]),
            irq_set[irq_bit(rm.Irq.RX)].eq(rx.rx_irq),
            csr.irq_set.eq(irq_set),
        ]
        for port, rec in zip(csr.trace_in, trace_writes, strict=True):
            m.d.comb += port.eq(rec)
        for port, err in zip(csr.err_in, errors, strict=True):
            m.d.comb += port.eq(err)

        # ---- host ports straight through --------------------------------------------------------
        self._connect_host_ports(m, csr, bulk)
        drive_nic_counters(m, self, tx, rx)
        return m

    def _connect_comm_memory(self, m, mem, dma, rx, rd, wr):
        """The DMA source and the receiver on the remaining SRAM ports, and the debug port.

        The DMA and the receiver work in 32-bit words; each of their 32-bit
        ports is ``32 / operand_bits`` operand-word ports, lowest address in
        the low bits.
        """
        fmt = self.fmt
        lanes32 = 32 // fmt.total_bits
        index_bits = self.addr_bits - 1

        def lane_addr(bank, word32, lane):
            """Device word address of operand ``lane`` of 32-bit word ``word32`` in ``bank``."""
            index = Signal(len(word32) + ceil_log2(lanes32) + 1)
            m.d.comb += index.eq(word32 * lanes32 + lane)
            return index, Cat(index[:index_bits], bank)

        def read32(region, word32, data):
            """A 32-bit read port: ``lanes32`` operand-word ports at 32-bit word ``word32``."""
            lanes = []
            for lane in range(lanes32):
                port = next(rd)
                _, addr = lane_addr(region, word32, lane)
                m.d.comb += [port.addr.eq(addr), port.en.eq(1)]
                lanes.append(port.data)
            m.d.comb += data.eq(Cat(*lanes))

        def write32(region, word32, data, en):
            """A 32-bit write port: ``lanes32`` operand-word ports at 32-bit word ``word32``."""
            for lane in range(lanes32):
                port = next(wr)
                _, addr = lane_addr(region, word32, lane)
                m.d.comb += [
                    port.addr.eq(addr),
                    port.data.eq(data[lane * fmt.total_bits : (lane + 1) * fmt.total_bits]),
                    port.en.eq(en),
                ]

        # DMA source: always reading, the address held while back-pressured (as its SRAM
        # port); a bf16 build reads the next word too (BF16 descriptors).
        read32(dma.src_region[0], dma.src_addr, dma.src_data)
        if rx.two_ports:  # (and a width-8 link's second payload word)
            read32(dma.src_region[0], dma.src1_addr, dma.src1_data)

        # Receiver: 32-bit words of its regions, region 0 the scratchpad (bank 0), 1 the
        # gradient SRAM (bank 1); it writes only ranges it checked to lie inside one.  A
        # bf16 build's second ports carry a bf16 packet's odd elements (the word after).
        read32(rx.mem_rd_region, rx.mem_rd_addr, rx.mem_rd_data)
        if rx.two_ports:
            read32(rx.mem_rd_region, rx.mem_rd1_addr, rx.mem_rd1_data)
        write32(rx.mem_wr_region, rx.mem_wr_addr, rx.mem_wr_data, rx.mem_wr_en)
        if rx.two_ports:
            write32(rx.mem_wr_region, rx.mem_wr1_addr, rx.mem_wr1_data, rx.mem_wr1_en)
        m.d.comb += [
            mem.dbg_en.eq(self.dbg_en),
            mem.dbg_addr.eq(self.dbg_addr),
            self.dbg_data.eq(mem.dbg_data),
        ]

    @staticmethod
    def _connect_wide_regions(m, bulk, dma, csr, ring_words, ring_valid):
        """The bulk port's ring memory (the DMA engine's) and trace memory (the CSR block's)."""
        for lane in range(WIDE_PER_BEAT):
            sfx = "" if lane == 0 else str(lane)
            w, r = bulk.ring_wr[lane], bulk.ring_rd[lane]
            held = Signal(ceil_log2(ring_words), name=f"ring_rd{lane}_held")
            with m.If(r.en):
                m.d.sync += held.eq(r.addr)
            m.d.comb += [
                getattr(dma, f"ring{sfx}_addr").eq(Mux(w.en, w.addr, Mux(r.en, r.addr, held))),
                getattr(dma, f"ring{sfx}_wdata").eq(w.data),
                getattr(dma, f"ring{sfx}_we").eq(w.en & (w.addr < ring_valid)),
                r.data.eq(getattr(dma, f"ring{sfx}_rdata")),
            ]
            t_bulk, t_csr = bulk.trace_rd[lane], csr.trace_rd[lane]
            m.d.comb += [
                t_csr.addr.eq(t_bulk.addr),
                t_csr.en.eq(t_bulk.en),
                t_bulk.data.eq(t_csr.data),
            ]
        m.d.comb += [bulk.now.eq(csr.now), bulk.tag.eq(csr.port("rw", "HOST_TAG"))]

    @staticmethod
    def _connect_comm_registers(m, csr, dma, tx, rx):
        """The CSR block's DMA, RX and PERF_TX registers and the forwarded RX window registers."""
        for q in range(rm.DMA_QUEUES):
            for field in ("RING_BASE", "RING_SIZE", "WIN_BASE", "WIN_LEN"):
                m.d.comb += getattr(dma, f"q{q}_{field.lower()}").eq(
                    csr.port("rw", rm.dma_reg_name(q, field))
                )
            m.d.comb += [
                getattr(dma, f"q{q}_doorbell").eq(csr.port("wo", rm.dma_reg_name(q, "DOORBELL"))),
                getattr(dma, f"q{q}_doorbell_tail").eq(csr.wo_data),
            ]
            for field in ("HEAD", "TAIL", "DONE", "ERRORS"):
                m.d.comb += csr.port("ro", rm.dma_reg_name(q, field)).eq(
                    getattr(dma, f"q{q}_{field.lower()}")
                )
        m.d.comb += [
            csr.port("ro", "RX_DROPS").eq(rx.drops),
            csr.port("ro", "RX_BYTES").eq(rx.bytes_applied),
            csr.port("ro", "RX_DONE_LO").eq(rx.done_bits[:32]),
            csr.port("ro", "RX_DONE_HI").eq(rx.done_bits[32:]),
            rx.done_clear.eq(Cat(csr.port("w1c", "RX_DONE_LO"), csr.port("w1c", "RX_DONE_HI"))),
            csr.port("ro", "PERF_TX_CYCLES").eq(dma.tx_cycles),
            csr.port("ro", "PERF_TX_BYTES").eq(tx.bytes_sent),
            csr.port("ro", "PERF_TX_PACKETS").eq(tx.packets_sent),
            csr.port("ro", "PERF_RX_PACKETS").eq(rx.packets_applied),
            rx.cfg_window.eq(csr.win_index),
            rx.cfg_reg.eq(csr.win_reg),
            rx.cfg_wdata.eq(csr.win_wdata),
            rx.cfg_we.eq(csr.win_we),
            csr.win_rdata.eq(rx.cfg_rdata),
        ]

    def _connect_link_setting(self, m, csr, link, dma, tx, rx):
        """LINK_SET and the doorbells in; the current link to the engines, the transmit
        link's ports and the LINK_INFO/LINK_LATENCY/LINK_MAX_PAYLOAD registers."""
        doorbells = [csr.port("wo", rm.dma_reg_name(q, "DOORBELL")) for q in range(rm.DMA_QUEUES)]
        info = rm.reg("LINK_INFO")
        m.d.comb += [
            link.set_we.eq(csr.port("wo", "LINK_SET")),
            link.set_data.eq(csr.wo_data),
            link.doorbell.eq(Cat(*doorbells).any()),
            dma.run_payload_words.eq(link.payload_words),
            dma.run_bytes_per_cycle.eq(link.bytes_per_cycle),
            *([tx.run_pair.eq(link.bytes_per_cycle == 8)] if tx.width_bytes == 8 else []),
            tx.run_timeout.eq(link.timeout),
            rx.run_nak_holdoff.eq(link.holdoff),
            rx.run_payload_words.eq(link.payload_words),
            self.link_bytes_per_cycle.eq(link.bytes_per_cycle),
            self.link_latency.eq(link.latency),
            csr.port("ro", "LINK_INFO").eq(
                link.bytes_per_cycle << info.field("bytes_per_cycle").lsb
                | PACKET_HEADER_BYTES << info.field("header_bytes").lsb
                | (PACKET_CRC_BYTES << info.field("crc_bytes").lsb | self._width8_info(info))
            ),
            csr.port("ro", "LINK_LATENCY").eq(link.latency),
            csr.port("ro", "LINK_MAX_PAYLOAD").eq(link.payload_words << 2),
        ]

    def _width8_info(self, info):
        """``LINK_INFO.width8`` of a width-8 build (a constant 0 adds nothing to the
        Verilog of a default build)."""
        return (1 << info.field("width8").lsb) if self.hw.link_width_bytes == 8 else 0

    def _connect_host_ports(self, m, csr, bulk):
        """IRQ, cycle counter, AXI4-Lite (CSR block) and AXI4-Stream (bulk port) straight through."""
        m.d.comb += [self.irq.eq(csr.irq), self.cycle.eq(csr.now)]
        for name, member in axil_signature(13).items():
            a, b = getattr(self, name), getattr(csr, name)
            m.d.comb += a.eq(b) if member.flow is wiring.Out else b.eq(a)
        for name in ("s_axis_tdata", "s_axis_tvalid", "s_axis_tlast", "m_axis_tready"):
            m.d.comb += getattr(bulk, name).eq(getattr(self, name))
        for name in ("s_axis_tready", "m_axis_tdata", "m_axis_tvalid", "m_axis_tlast"):
            m.d.comb += getattr(self, name).eq(getattr(bulk, name))
