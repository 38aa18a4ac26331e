"""Communication node (DMA + NIC + memories) and the N-node fabric joined by links.

``DESIGN.md`` ("N nodes"): node ``i`` transmits to node ``(i + 1) mod N`` over
link ``i`` and receives from node ``(i - 1) mod N``; with N = 2 that is a
full exchange pair, with N > 2 a unidirectional ring (enough for ring
reduce-scatter + all-gather).

:class:`CommNode` is the communication half of a node.  Its seam towards the
compute half and the CSR block of ``hw/compute_node.py``/``hw/csr.py`` is:

* a host bus (``host_*``) carrying both register accesses (``host_csr = 1``,
  byte offsets of ``gradsync.spec.regmap``) and device-memory accesses (byte
  addresses of the regmap memory map) -- the CSR block forwards the
  communication registers here, the bulk port the memory accesses;
* ``compute_done`` in (for FENCE descriptors) and ``irq`` out;
* the gradient memory, which this node owns for now; when the compute half
  joins, its ports (DMA source read, RX read + write, host) move to
  ``hw/sram.py``'s gradient SRAM.

The register map is passed in as ``regmap`` (the ``gradsync.spec.regmap`` module
or anything with the same names, so a test can try a variant); only its
offsets and enumerations are used, at elaboration.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from gradsync.hw.dma import DmaEngine
from gradsync.hw.events import TraceWrite
from gradsync.hw.link import AckMessage, Link, LinkBeat
from gradsync.hw.nic import NicRx, NicTx

#: Counters every node exposes as ports (beside the registers).
NODE_COUNTERS = (
    "tx_packets", "tx_retransmits", "tx_timeouts", "tx_naks",
    "rx_packets", "rx_crc_errors", "rx_seq_errors", "rx_duplicates", "rx_drops",
)
LINK_CONTROLS = {"corrupt_rate": 16, "drop_rate": 16, "stall_rate": 16, "stall_max": 8,
                 "seed": 32, "seed_load": 1}
LINK_COUNTERS = ("packets", "corrupted", "dropped", "stalls")


#: Node counter port -> (NIC side, NicTx/NicRx attribute) that drives it.
NIC_COUNTER_SOURCES = {
    "tx_packets": ("tx", "packets_sent"), "tx_retransmits": ("tx", "retransmits"),
    "tx_timeouts": ("tx", "timeouts"), "tx_naks": ("tx", "naks"),
    "rx_packets": ("rx", "packets_applied"), "rx_crc_errors": ("rx", "crc_errors"),
    "rx_seq_errors": ("rx", "seq_errors"), "rx_duplicates": ("rx", "duplicates"),
    "rx_drops": ("rx", "drops"),
}


def drive_nic_counters(m: Module, top, tx: NicTx, rx: NicRx) -> None:
    """Drive ``top``'s ``NODE_COUNTERS`` ports from the NIC's counters (CommNode and Node)."""
    sides = {"tx": tx, "rx": rx}
    m.d.comb += [
        getattr(top, name).eq(getattr(sides[side], attr))
        for name, (side, attr) in NIC_COUNTER_SOURCES.items()
    ]


def connect_nic(m: Module, top, dma, tx: NicTx, rx: NicRx) -> None:
    """DMA packets into the transmitter (CRC back to the DMA for its write-back), and the
    transmitter and receiver on ``top``'s link ports ``tx``/``tx_ack``/``rx``/``rx_ack``."""
    wiring.connect(m, dma.pkt, tx.pkt)
    m.d.comb += dma.crc_sent.eq(tx.crc_sent)
    wiring.connect(m, wiring.flipped(top.tx), tx.link)
    wiring.connect(m, wiring.flipped(top.tx_ack), tx.ack)
    wiring.connect(m, wiring.flipped(top.rx), rx.link)
    wiring.connect(m, wiring.flipped(top.rx_ack), rx.ack)


def join_ring(m: Module, top, nodes, links) -> None:
    """Node ``i`` transmits over ``links[i]`` to node ``(i + 1) mod N``; ``l{i}_*`` ports of ``top``.

    Shared by :class:`Fabric` and ``hw.cluster.Cluster``: the link wiring,
    the fault-injection controls (``LINK_CONTROLS``) and counters (``LINK_COUNTERS``).
    """
    n = len(nodes)
    for i, link in enumerate(links):
        m.submodules[f"link{i}"] = link
        src, dst = nodes[i], nodes[(i + 1) % n]
        wiring.connect(m, src.tx, link.tx)
        wiring.connect(m, link.rx, dst.rx)
        wiring.connect(m, dst.rx_ack, link.ack_tx)
        wiring.connect(m, link.ack_rx, src.tx_ack)
        for c in LINK_CONTROLS:
            m.d.comb += getattr(link, c).eq(getattr(top, f"l{i}_{c}"))
        for c in LINK_COUNTERS:
            m.d.comb += getattr(top, f"l{i}_{c}").eq(getattr(link, c))


def _pow2(n: int) -> int:
    return 1 << ceil_log2(max(1, n))


def nic_timeouts(link_latency_cycles: int, link_bytes_per_cycle: int,
                 max_payload_bytes: int) -> tuple[int, int]:
    """(retransmission timeout, NAK hold-off) in cycles for a link, as every node uses them.

    The hold-off is one round trip of the longest packet, its acknowledgement
    and some slack; the timeout two of them plus margin.
    """
    max_packet = 4 + max_payload_bytes // 4
    rtt = 2 * link_latency_cycles + max_packet * 4 // link_bytes_per_cycle + 16
    return 2 * rtt + 64, rtt


def link_ports() -> dict:
    """A node's link side: beats out and in, acks both ways, and its NIC/link counters."""
    ports = {
        "tx": Out(stream.Signature(LinkBeat)),
        "tx_ack": In(stream.Signature(AckMessage, always_ready=True)),
        "rx": In(stream.Signature(LinkBeat, always_ready=True)),
        "rx_ack": Out(stream.Signature(AckMessage, always_ready=True)),
    }
    ports.update({name: Out(32) for name in NODE_COUNTERS})
    return ports


class CommNode(wiring.Component):
    """DMA engine + NIC transmitter/receiver + ring, gradient and trace memories.

    Parameters
    ----------
    regmap:
        The register map module (``gradsync.spec.regmap``).
    node_id, num_nodes:
        This node's index and the fabric size; the transmit link reaches
        ``(node_id + 1) % num_nodes``.
    gradient_words:
        Gradient memory size in operand words.
    operand_bits, saturate:
        Operand format of the receiver's reduce-add.
    ring_entries, rx_windows, max_payload_bytes:
        As ``model.HardwareConfig``.
    credits, window_packets, timeout_cycles:
        NIC flow control and retransmission (see :class:`NicTx`); the
        timeout defaults to two round trips of a maximum-size packet.
    trace_records:
        Capacity of the trace memory (records of 4 words).
    link_bytes_per_cycle, link_latency_cycles:
        Reported in ``LINK_INFO``/``LINK_LATENCY`` (the fabric builds the links).

    Attributes
    ----------
    host_addr, host_wdata, host_we, host_re, host_csr, host_rdata
        Host bus; a read's data is on ``host_rdata`` in the following cycle.
        Writes to read-only registers and unmapped addresses are ignored.
    irq : Out(1)
        ``IRQ_STATUS & IRQ_MASK != 0``.
    compute_done : In(32)
        Completion counter of the compute half (FENCE descriptors wait on it).
    tx, tx_ack, rx, rx_ack
        Link ports.
    tx_packets ... rx_drops : Out(32)
        NIC counters (``NODE_COUNTERS``).
    """

    def __init__(self, regmap, *, node_id: int = 0, num_nodes: int = 2,
                 gradient_words: int = 4096, operand_bits: int = 16, saturate: bool = True,
                 ring_entries: int = 64, rx_windows: int = 8, max_payload_bytes: int = 256,
                 credits: int = 16, window_packets: int = 16, timeout_cycles: int | None = None,
                 trace_records: int = 512, link_bytes_per_cycle: int = 4,
                 link_latency_cycles: int = 50):
        if num_nodes < 1 or not 0 <= node_id < num_nodes:
            raise ValueError(f"node_id must be in 0..{num_nodes - 1}, not {node_id!r}")
        if operand_bits not in (8, 16, 32):
            raise ValueError(f"operand_bits must be 8, 16 or 32, not {operand_bits!r}")
        grad_bytes = gradient_words * operand_bits // 8
        if grad_bytes % 4 or grad_bytes & (grad_bytes - 1):
            raise ValueError(
                f"gradient memory must be a power-of-2 number of bytes, not {grad_bytes!r}")
        self.rm = regmap
        self.link_bytes_per_cycle = link_bytes_per_cycle
        self.link_latency_cycles = link_latency_cycles
        self.node_id = node_id
        self.num_nodes = num_nodes
        self.tx_peer = (node_id + 1) % num_nodes
        self.grad_words32 = grad_bytes // 4
        self.grad_aw = ceil_log2(self.grad_words32)
        self.operand_bits = operand_bits
        self.saturate = saturate
        self.ring_entries = ring_entries
        self.rx_windows = rx_windows
        self.max_payload_bytes = max_payload_bytes
        self.credits = credits
        self.window_packets = window_packets
        timeout, self.nak_holdoff_cycles = nic_timeouts(
            link_latency_cycles, link_bytes_per_cycle, max_payload_bytes)
        self.timeout_cycles = timeout_cycles if timeout_cycles is not None else timeout
        self.trace_records = _pow2(trace_records)
        self.ring_words = _pow2(regmap.DMA_QUEUES * ring_entries * regmap.DESCRIPTOR_WORDS)
        ports = {
            "host_addr": In(32), "host_wdata": In(32), "host_we": In(1), "host_re": In(1),
            "host_csr": In(1), "host_rdata": Out(32),
            "irq": Out(1),
            "compute_done": In(32),
        }
        ports.update(link_ports())
        super().__init__(ports)

    def elaborate(self, platform):
        rm = self.rm
        m = Module()
        Q = rm.DMA_QUEUES
        max_pw = self.max_payload_bytes // 4

        cycle = Signal(64)
        m.d.sync += cycle.eq(cycle + 1)

        m.submodules.dma = dma = self.dma = DmaEngine(
            queues=Q, ring_words=self.ring_words, ring_entries=self.ring_entries,
            ring_base_addr=rm.RING_MEM_BASE,
            ring_valid_words=Q * self.ring_entries * rm.DESCRIPTOR_WORDS,
            max_payload_bytes=self.max_payload_bytes,
            link_bytes_per_cycle=self.link_bytes_per_cycle,
            src_regions=((rm.GRAD_BASE, self.grad_words32 * 4),))
        m.submodules.tx = tx = self.nic_tx = NicTx(max_payload_words=max_pw, window_packets=self.window_packets,
                                     credits=self.credits, timeout_cycles=self.timeout_cycles)
        m.submodules.rxu = rx = self.nic_rx = NicRx(max_payload_words=max_pw, credits=self.credits,
                                      windows=self.rx_windows,
                                      regions=((rm.GRAD_BASE, self.grad_words32 * 4),),
                                      operand_bits=self.operand_bits, saturate=self.saturate,
                                      nak_holdoff_cycles=self.nak_holdoff_cycles)
        connect_nic(m, self, dma, tx, rx)
        m.d.comb += [
            dma.tx_peer.eq(self.tx_peer),
            dma.peers_ok.eq(self.num_nodes >= 2),
            dma.compute_done.eq(self.compute_done),
        ]

        # Gradient memory: DMA source read, RX read + write, host read + write.
        m.submodules.grad = grad = Memory(shape=32, depth=self.grad_words32, init=[])
        g_dma = grad.read_port()
        g_rx_r = grad.read_port()
        g_host_r = grad.read_port()
        g_rx_w = grad.write_port()
        g_host_w = grad.write_port()
        m.d.comb += [
            g_dma.addr.eq(dma.src_addr), dma.src_data.eq(g_dma.data),
            g_rx_r.addr.eq(rx.mem_rd_addr), rx.mem_rd_data.eq(g_rx_r.data),
            g_rx_w.addr.eq(rx.mem_wr_addr), g_rx_w.data.eq(rx.mem_wr_data),
            g_rx_w.en.eq(rx.mem_wr_en),
        ]

        # Trace memory: one 4-word record per row.  Like hw/csr.py's buffer, all
        # records of a cycle are stored in port order, engine records first,
        # then an ERROR record per error event (stamped with the next cycle).
        R = self.trace_records
        m.submodules.trace = trace = Memory(shape=128, depth=R, init=[])
        t_r = trace.read_port()
        trace_head = Signal(32)
        trace_on = Signal(init=1)
        m.d.comb += [dma.cycle.eq(cycle[:48]), rx.now.eq(cycle[:48])]
        #: Error sources in CSR order: the highest-numbered valid one is latched.
        errors = [dma.error[0], dma.error[1], rx.error]
        writes = [dma.trace[0], dma.trace[1], rx.trace]
        for e in errors:
            rec = Signal(TraceWrite)
            m.d.comb += [
                rec.valid.eq(e.valid), rec.cycle.eq(cycle + 1), rec.engine.eq(e.engine),
                rec.event.eq(int(rm.TraceEvent.ERROR)), rec.kind.eq(int(rm.Kind.OTHER)),
                rec.tag.eq(e.info), rec.aux.eq(e.code),
            ]
            writes.append(rec)
        stored = Const(0, 4)
        for w in writes:
            wp = trace.write_port()
            go = w.valid & trace_on
            m.d.comb += [
                wp.en.eq(go),
                wp.addr.eq(trace_head + stored),
                wp.data.eq(Cat(w.cycle[:32], w.cycle[32:48], w.engine, w.event, w.kind,
                               w.tag, w.aux)),
            ]
            nxt = Signal(4)
            m.d.comb += nxt.eq(stored + go)
            stored = nxt
        m.d.sync += trace_head.eq(trace_head + stored)

        # ------------------------------------------------------------- registers
        regs_rw = {}

        def rw(name, width=32, init=0):
            s = Signal(width, name=name.lower(), init=init)
            regs_rw[rm.offset(name)] = s
            return s

        for q in range(Q):
            for field in ("RING_BASE", "RING_SIZE", "WIN_BASE", "WIN_LEN"):
                s = rw(rm.dma_reg_name(q, field))
                m.d.comb += getattr(dma, f"q{q}_{field.lower()}").eq(s)
        irq_mask = rw("IRQ_MASK")
        control = rw("CONTROL", init=1)
        m.d.comb += trace_on.eq(control[0])
        irq_status = Signal(32)
        err_code = Signal(32)
        err_info = Signal(32)
        err_count = Signal(32)
        ro = {
            "NODE_ID": Const(self.node_id, 32),
            "NUM_NODES": Const(self.num_nodes, 32),
            "TX_PEER": Const(self.tx_peer, 32),
            "GRAD_WORDS": Const(self.grad_words32 * 32 // self.operand_bits, 32),
            "CYCLE_LO": cycle[:32],
            "CYCLE_HI": cycle[32:],
            "IRQ_STATUS": irq_status,
            "IRQ_PENDING": irq_status & irq_mask,
            "ERR_CODE": err_code,
            "ERR_INFO": err_info,
            "ERR_COUNT": err_count,
            "RX_DONE_LO": rx.done_bits[:32],
            "RX_DONE_HI": rx.done_bits[32:],
            "RX_DROPS": rx.drops,
            "RX_BYTES": rx.bytes_applied,
            "TRACE_HEAD": trace_head,
            "TRACE_DEPTH": Const(R, 32),
            "LINK_INFO": Const(rm.reg("LINK_INFO").pack(
                bytes_per_cycle=self.link_bytes_per_cycle, header_bytes=12, crc_bytes=4), 32),
            "LINK_LATENCY": Const(self.link_latency_cycles, 32),
            "LINK_MAX_PAYLOAD": Const(self.max_payload_bytes, 32),
            "PERF_TX_CYCLES": dma.tx_cycles,
            "PERF_TX_BYTES": tx.bytes_sent,
            "PERF_TX_PACKETS": tx.packets_sent,
            "PERF_RX_PACKETS": rx.packets_applied,
        }
        for q in range(Q):
            for field in ("HEAD", "TAIL", "DONE", "ERRORS"):
                ro[rm.dma_reg_name(q, field)] = getattr(dma, f"q{q}_{field.lower()}")
        reads = {rm.offset(name): sig for name, sig in ro.items()}
        reads.update(regs_rw)

        a = self.host_addr
        csr_w = self.host_we & self.host_csr
        with m.If(csr_w), m.Switch(a[:16]):
            for off, s in regs_rw.items():
                with m.Case(off):
                    m.d.sync += s.eq(self.host_wdata)
        for q in range(Q):
            m.d.comb += [
                getattr(dma, f"q{q}_doorbell").eq(
                    csr_w & (a[:16] == rm.dma_reg(q, "DOORBELL"))),
                getattr(dma, f"q{q}_doorbell_tail").eq(self.host_wdata),
            ]
        # RX window registers.
        wbase, wstride = rm.RX_WINDOW_BASE, rm.RX_WINDOW_STRIDE
        in_win = (a[:16] >= wbase) & (a[:16] < wbase + wstride * 64)
        woff = Signal(16)
        m.d.comb += [
            woff.eq(a[:16] - wbase),
            rx.cfg_window.eq(woff[ceil_log2(wstride):ceil_log2(wstride) + 6]),
            rx.cfg_reg.eq(woff[2:ceil_log2(wstride)]),
            rx.cfg_wdata.eq(self.host_wdata),
            rx.cfg_we.eq(csr_w & in_win & (woff[2:ceil_log2(wstride)] != 6)),
        ]
        # W1C registers.
        done_clear = Signal(64)
        with m.If(csr_w & (a[:16] == rm.offset("RX_DONE_LO"))):
            m.d.comb += done_clear[:32].eq(self.host_wdata)
        with m.If(csr_w & (a[:16] == rm.offset("RX_DONE_HI"))):
            m.d.comb += done_clear[32:].eq(self.host_wdata)
        m.d.comb += rx.done_clear.eq(done_clear)

        # Interrupts and errors.
        irq_set = Signal(32)
        Irq = rm.Irq
        m.d.comb += [
            irq_set[ceil_log2(int(Irq.DMA_Q0))].eq(dma.irq_done[0]),
            irq_set[ceil_log2(int(Irq.DMA_Q1))].eq(dma.irq_done[1]),
            irq_set[ceil_log2(int(Irq.RX))].eq(rx.rx_irq),
            irq_set[ceil_log2(int(Irq.ERROR))].eq(Cat(e.valid for e in errors).any()),
        ]
        w1c = Mux(csr_w & (a[:16] == rm.offset("IRQ_STATUS")), self.host_wdata, 0)
        m.d.sync += irq_status.eq((irq_status & ~w1c) | irq_set)
        m.d.comb += self.irq.eq((irq_status & irq_mask) != 0)
        for e in errors:
            with m.If(e.valid):
                m.d.sync += [
                    err_code.eq(Cat(e.code, e.engine, Const(0, 4), e.index)),
                    err_info.eq(e.info),
                ]
        m.d.sync += err_count.eq(err_count + sum(e.valid for e in errors))

        # Host memory accesses.
        region = a[28:32]
        mem_w = self.host_we & ~self.host_csr
        grad_region = rm.GRAD_BASE >> 28
        ring_region = rm.RING_MEM_BASE >> 28
        trace_region = rm.TRACE_MEM_BASE >> 28
        m.d.comb += [
            g_host_r.addr.eq(a[2:2 + self.grad_aw]),
            g_host_w.addr.eq(a[2:2 + self.grad_aw]),
            g_host_w.data.eq(self.host_wdata),
            g_host_w.en.eq(mem_w & (region == grad_region)),
            dma.ring_addr.eq(a[2:2 + ceil_log2(self.ring_words)]),
            dma.ring_wdata.eq(self.host_wdata),
            dma.ring_we.eq(mem_w & (region == ring_region)),
            t_r.addr.eq(a[4:4 + ceil_log2(R)]),
        ]

        # Read data, one cycle after host_re.
        sel = Signal(3)
        csr_data = Signal(32)
        word_sel = Signal(2)
        m.d.sync += [sel.eq(0), word_sel.eq(a[2:4])]
        with m.If(self.host_re):
            with m.If(self.host_csr):
                m.d.sync += [sel.eq(1), csr_data.eq(0)]
                with m.Switch(a[:16]):
                    for off, s in reads.items():
                        with m.Case(off):
                            m.d.sync += csr_data.eq(s)
                with m.If(in_win):
                    m.d.sync += csr_data.eq(rx.cfg_rdata)
            with m.Elif(region == grad_region):
                m.d.sync += sel.eq(2)
            with m.Elif(region == ring_region):
                m.d.sync += sel.eq(3)
            with m.Elif(region == trace_region):
                m.d.sync += sel.eq(4)
        with m.Switch(sel):
            with m.Case(1):
                m.d.comb += self.host_rdata.eq(csr_data)
            with m.Case(2):
                m.d.comb += self.host_rdata.eq(g_host_r.data)
            with m.Case(3):
                m.d.comb += self.host_rdata.eq(dma.ring_rdata)
            with m.Case(4):
                m.d.comb += self.host_rdata.eq(t_r.data.word_select(word_sel, 32))

        drive_nic_counters(m, self, tx, rx)
        return m


class Fabric(wiring.Component):
    """N :class:`CommNode` s in a ring of :class:`~gradsync.hw.link.Link` s, with flat ports.

    Parameters
    ----------
    regmap:
        The register map module.
    num_nodes:
        Nodes (>= 2).
    link_latency_cycles, link_bytes_per_cycle:
        Every link's latency and bandwidth.
    **node_kwargs:
        Passed to every :class:`CommNode`.

    Attributes
    ----------
    n{i}_host_*, n{i}_irq, n{i}_compute_done, n{i}_<counter>
        Node ``i``'s ports (see :class:`CommNode`).
    l{i}_<control>, l{i}_<counter>
        Link ``i`` (node ``i`` to node ``i+1``) fault controls and counters.
    """

    def __init__(self, regmap, *, num_nodes: int = 2, link_latency_cycles: int = 50,
                 link_bytes_per_cycle: int = 4, **node_kwargs):
        if num_nodes < 2:
            raise ValueError(f"num_nodes must be >= 2, not {num_nodes!r}")
        self.rm = regmap
        self.num_nodes = num_nodes
        self.link_latency_cycles = link_latency_cycles
        self.link_bytes_per_cycle = link_bytes_per_cycle
        self.node_kwargs = node_kwargs
        #: The nodes and links (also reachable from Amaranth testbenches).
        self.nodes = [CommNode(regmap, node_id=i, num_nodes=num_nodes,
                               link_bytes_per_cycle=link_bytes_per_cycle,
                               link_latency_cycles=link_latency_cycles, **node_kwargs)
                      for i in range(num_nodes)]
        self.links = [Link(link_latency_cycles, link_bytes_per_cycle) for _ in range(num_nodes)]
        ports = {}
        for i in range(num_nodes):
            ports.update({
                f"n{i}_host_addr": In(32), f"n{i}_host_wdata": In(32), f"n{i}_host_we": In(1),
                f"n{i}_host_re": In(1), f"n{i}_host_csr": In(1), f"n{i}_host_rdata": Out(32),
                f"n{i}_irq": Out(1), f"n{i}_compute_done": In(32),
            })
            ports.update({f"n{i}_{c}": Out(32) for c in NODE_COUNTERS})
            ports.update({f"l{i}_{c}": In(w) for c, w in LINK_CONTROLS.items()})
            ports.update({f"l{i}_{c}": Out(32) for c in LINK_COUNTERS})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        N = self.num_nodes
        nodes = self.nodes
        for i in range(N):
            node = nodes[i]
            m.submodules[f"node{i}"] = node
            for p in ("host_addr", "host_wdata", "host_we", "host_re", "host_csr",
                      "compute_done"):
                m.d.comb += getattr(node, p).eq(getattr(self, f"n{i}_{p}"))
            for p in ("host_rdata", "irq", *NODE_COUNTERS):
                m.d.comb += getattr(self, f"n{i}_{p}").eq(getattr(node, p))
        join_ring(m, self, nodes, self.links)
        return m
