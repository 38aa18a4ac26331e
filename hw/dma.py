"""DMA engine: descriptor rings, strict-priority queues, validation, packetisation.

The DMA engine of ``DESIGN.md`` ("One node"): firmware writes 8-word
descriptors (layout in ``gradsync.spec.regmap``) into rings in the engine's ring
memory and rings a queue's doorbell with the new tail.  Whenever the engine
is idle it takes the next descriptor of the lowest-numbered non-empty queue
(queue 0 has strict priority), so arbitration happens at descriptor (chunk)
granularity: a high-priority chunk posted during a long low-priority transfer
waits for at most the running descriptor.  A descriptor is validated before
any byte moves; a refused one is completed with its error code and nothing is
sent.  A valid one is cut into packets of at most ``max_payload_bytes`` that
are streamed to the NIC transmitter back to back.

Cycle timing (``t`` = grant cycle; see ``model/timing.py``)::

    t .. t+8        fetch the 8 descriptor words (one per cycle, 1-cycle SRAM)
    t+9             validate
    t+10 ..         packets on the link, back to back (valid descriptor)
    t+10+tx         write back STATUS and DONE_CYCLE      (t+10 if refused)
    t+11+tx         completion visible: DONE, IRQ, trace END; next grant possible

which is ``descriptor_cycles`` (``refused_descriptor_cycles``) of the model.
A doorbell written in cycle ``d`` makes the queue non-empty in ``d+1``.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal
from amaranth.lib import stream as _stream
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from gradsync.hw.events import ErrorEvent, TraceWrite
from gradsync.hw.nic import TxWord
from gradsync.spec import regmap as rm

#: ``gradsync.spec.regmap`` facts the engine is built from.
DESCRIPTOR_VERSION = rm.DESCRIPTOR_VERSION
DESCRIPTOR_WORDS = rm.DESCRIPTOR_WORDS
FLAG_REDUCE_ADD = int(rm.DescFlag.REDUCE_ADD)
FLAG_IRQ = int(rm.DescFlag.IRQ)
FLAG_FENCE = int(rm.DescFlag.FENCE)
ERR_OK = int(rm.ErrorCode.OK)
ERR_BAD_VERSION = int(rm.ErrorCode.BAD_VERSION)
ERR_ZERO_LENGTH = int(rm.ErrorCode.ZERO_LENGTH)
ERR_MISALIGNED = int(rm.ErrorCode.MISALIGNED)
ERR_OUT_OF_WINDOW = int(rm.ErrorCode.OUT_OF_WINDOW)
ERR_UNKNOWN_PEER = int(rm.ErrorCode.UNKNOWN_PEER)
ERR_RING_FULL = int(rm.ErrorCode.RING_FULL)

#: ``gradsync.spec.regmap`` trace codes (Engine, TraceEvent, Kind).
ENGINE_DMA_HI = int(rm.Engine.DMA_HI)
ENGINE_NIC_TX = int(rm.Engine.NIC_TX)
ENGINE_NIC_RX = int(rm.Engine.NIC_RX)
EVENT_START = int(rm.TraceEvent.START)
EVENT_END = int(rm.TraceEvent.END)
KIND_SEND = int(rm.Kind.SEND)
KIND_RECV = int(rm.Kind.RECV)


class DmaEngine(wiring.Component):
    """Descriptor-ring DMA engine with ``queues`` strict-priority queues.

    Parameters
    ----------
    queues:
        Number of descriptor queues (>= 2); queue 0 has the highest priority.
    ring_words:
        Size of the ring memory in 32-bit words (power of 2).
    ring_entries:
        Largest ``RING_SIZE`` a queue accepts.
    ring_base_addr, ring_valid_words:
        Device address of ring memory (``RING_MEM_BASE``) and its populated
        size in words; a ring must lie inside it (``RING_BASE`` is a device
        byte address, 32-byte aligned).
    max_payload_bytes:
        Largest packet payload (multiple of 4, at most 512).
    link_bytes_per_cycle:
        Bandwidth of the transmit link (1, 2 or 4): a chunk's transmission
        ends ``4 / link_bytes_per_cycle - 1`` cycles after its last word was
        taken, and only then is it written back.
    src_regions:
        ``(base, bytes)`` of the device-memory regions a descriptor may read;
        a source range not inside one of them is refused as out of window.
        The read port addresses 32-bit words ``(addr - base) >> 2`` of the
        region, with ``src_region`` its index.

    Attributes
    ----------
    ring_addr, ring_wdata, ring_we, ring_rdata
        Host port of the ring memory (word address; read data one cycle later).
    ring1_addr, ring1_wdata, ring1_we, ring1_rdata
        A second host port (``host_lanes=2``), so a 64-bit host bus writes
        two ring words per cycle; if both write one word, this one wins.
    q{n}_ring_base, q{n}_ring_size, q{n}_win_base, q{n}_win_len : In
        Queue configuration registers (``DMAn_RING_BASE`` ...).
    q{n}_doorbell, q{n}_doorbell_tail : In
        ``DMAn_DOORBELL`` write strobe and value.  A tail more than
        ``RING_SIZE`` ahead of HEAD, or a ring that is not inside ring memory
        (RING_SIZE 0 or above ``ring_entries``, RING_BASE misaligned or out of
        range), is refused with ``ring_full`` and changes nothing.
    q{n}_head, q{n}_tail, q{n}_done, q{n}_errors : Out(32)
        HEAD advances at the grant; DONE/ERRORS when a descriptor completes.
    tx_peer : In(8), peers_ok : In(1)
        The node reached by this node's transmit link, and whether there is
        one (``NUM_NODES >= 2``); a descriptor to another peer is refused.
    compute_done : In(32)
        ``COMPUTE_DONE``; a FENCE descriptor waits after validation until
        ``compute_done - fence_count`` is non-negative (32-bit signed).
    cycle : In(32)
        Free-running cycle counter, written back as DONE_CYCLE.
    src_addr, src_region, src_data
        Source read port: word address and region index out, data in one
        cycle later.  Held while back-pressured, so data stays valid.
    pkt : Out(stream of TxWord)
        Packets to the NIC transmitter (H0 carries sequence 0).
    crc_sent : In(1)
        From the transmitter: a new packet's CRC word left; ends the chunk.
    irq_done : Out(queues)
        Pulse in the write-back cycle of a descriptor with the IRQ flag, also
        of a refused one (which raises an error as well), so firmware waiting
        on the queue is woken either way; a status register taking it is
        visible in the completion cycle.
    trace : Out(TraceWrite).array(2)
        ``hw/events.py`` records for the CSR block's trace buffer.  Port 0,
        engine DMA_HI + queue: START (emitted after the fetch, stamped with
        the grant cycle, aux = length) and END (emitted in the write-back
        cycle, stamped with the completion cycle, aux = length or the error
        code).  Port 1, engine NIC_TX: START when the chunk's first word goes
        on the link, END in the cycle after its last word (aux = length).
    error : Out(ErrorEvent).array(2)
        Port 0: a refused descriptor (in its write-back cycle; index = its
        HEAD slot, info = source address).  Port 1: a refused doorbell (in
        the cycle of the write; code RING_FULL, index = queue, info = tail).
    busy : Out(1)
        A descriptor is being processed.
    tx_cycles : Out(32)
        ``PERF_TX_CYCLES``: cycles from each chunk's first word on the link to
        the end of its transmission (``chunk_tx_cycles`` per fault-free chunk).
    """

    def __init__(self, *, queues: int = 2, ring_words: int = 4096, ring_entries: int = 64,
                 ring_base_addr: int = 0x3000_0000, ring_valid_words: int | None = None,
                 max_payload_bytes: int = 256, link_bytes_per_cycle: int = 4,
                 src_regions: tuple[tuple[int, int], ...] = ((0x2000_0000, 1 << 16),),
                 host_lanes: int = 1):
        if queues < 2:
            raise ValueError(f"queues must be >= 2, not {queues!r}")
        if ring_words & (ring_words - 1) or ring_words < DESCRIPTOR_WORDS:
            raise ValueError(f"ring_words must be a power of 2 >= 8, not {ring_words!r}")
        if max_payload_bytes % 4 or not 4 <= max_payload_bytes <= 512:
            raise ValueError(
                f"max_payload_bytes must be a multiple of 4 in 4..512, not {max_payload_bytes!r}")
        if host_lanes not in (1, 2):
            raise ValueError(f"host_lanes must be 1 or 2, not {host_lanes!r}")
        self.host_lanes = host_lanes
        if not src_regions:
            raise ValueError(f"src_regions must name at least one region, not {src_regions!r}")
        self.queues = queues
        self.ring_words = ring_words
        self.ring_base_addr = ring_base_addr
        self.ring_valid_words = ring_words if ring_valid_words is None else ring_valid_words
        if ring_base_addr % (4 * ring_words) or self.ring_valid_words > ring_words:
            raise ValueError(
                f"ring_base_addr {ring_base_addr:#x} must be aligned to the ring memory size and "
                f"ring_valid_words <= {ring_words}, not {ring_valid_words!r}")
        self.ring_entries = ring_entries
        self.max_payload_bytes = max_payload_bytes
        if link_bytes_per_cycle not in (1, 2, 4):
            raise ValueError(
                f"link_bytes_per_cycle must be 1, 2 or 4, not {link_bytes_per_cycle!r}")
        self.word_period = 4 // link_bytes_per_cycle
        self.src_regions = tuple(src_regions)
        self.src_addr_width = max(1, ceil_log2(max(size for _, size in src_regions) // 4))
        ports = {
            "ring_addr": In(ceil_log2(ring_words)),
            "ring_wdata": In(32),
            "ring_we": In(1),
            "ring_rdata": Out(32),
            "tx_peer": In(8),
            "peers_ok": In(1),
            "compute_done": In(32),
            "cycle": In(48),
            "src_addr": Out(self.src_addr_width),
            "src_region": Out(range(len(src_regions))),
            "src_data": In(32),
            "pkt": Out(_stream.Signature(TxWord)),
            "crc_sent": In(1),
            "irq_done": Out(queues),
            "trace": Out(TraceWrite).array(2),
            "error": Out(ErrorEvent).array(2),
            "busy": Out(1),
            "tx_cycles": Out(32),
        }
        if host_lanes == 2:
            ports.update({"ring1_addr": In(ceil_log2(ring_words)), "ring1_wdata": In(32),
                          "ring1_we": In(1), "ring1_rdata": Out(32)})
        for q in range(queues):
            ports.update({
                f"q{q}_ring_base": In(32),
                f"q{q}_ring_size": In(32),
                f"q{q}_win_base": In(32),
                f"q{q}_win_len": In(32),
                f"q{q}_doorbell": In(1),
                f"q{q}_doorbell_tail": In(32),
                f"q{q}_head": Out(32),
                f"q{q}_tail": Out(32),
                f"q{q}_done": Out(32),
                f"q{q}_errors": Out(32),
            })
        super().__init__(ports)

    def q(self, n: int, name: str):
        return getattr(self, f"q{n}_{name}")

    def elaborate(self, platform):
        m = Module()
        Q = self.queues
        aw = ceil_log2(self.ring_words)
        m.submodules.ring = ring = Memory(shape=32, depth=self.ring_words, init=[])
        host_r = ring.read_port()
        host_w = ring.write_port()
        dma_r = ring.read_port()
        wb_status = ring.write_port()
        wb_cycle = ring.write_port()
        m.d.comb += [
            host_r.addr.eq(self.ring_addr),
            self.ring_rdata.eq(host_r.data),
            host_w.addr.eq(self.ring_addr),
            host_w.data.eq(self.ring_wdata),
            host_w.en.eq(self.ring_we),
        ]
        if self.host_lanes == 2:
            host_r1 = ring.read_port()
            host_w1 = ring.write_port()
            m.d.comb += [
                host_r1.addr.eq(self.ring1_addr),
                self.ring1_rdata.eq(host_r1.data),
                host_w1.addr.eq(self.ring1_addr),
                host_w1.data.eq(self.ring1_wdata),
                host_w1.en.eq(self.ring1_we),
            ]

        heads = [self.q(n, "head") for n in range(Q)]
        tails = [self.q(n, "tail") for n in range(Q)]
        slot_idx = [Signal(16, name=f"q{n}_slot") for n in range(Q)]

        # Doorbells.
        for n in range(Q):
            size = self.q(n, "ring_size")
            with m.If(self.q(n, "doorbell")):
                ahead = (self.q(n, "doorbell_tail") - heads[n])[:32]
                base = self.q(n, "ring_base")
                ring_end = Signal(33, name=f"q{n}_ring_end")
                m.d.comb += ring_end.eq(((base - self.ring_base_addr)[:32] >> 2)
                                        + (size[:16] << 3))
                ring_bad = ((size == 0) | (size > self.ring_entries) | (base[0:5] != 0)
                            | (base < self.ring_base_addr) | (ring_end > self.ring_valid_words))
                with m.If(ring_bad | (ahead > size)):
                    e = self.error[1]
                    m.d.comb += [
                        e.valid.eq(1),
                        e.code.eq(ERR_RING_FULL),
                        e.engine.eq(ENGINE_DMA_HI + n),
                        e.index.eq(n),
                        e.info.eq(self.q(n, "doorbell_tail")),
                    ]
                with m.Else():
                    m.d.sync += tails[n].eq(self.q(n, "doorbell_tail"))

        # Current descriptor.
        cur_q = Signal(range(Q))
        slot_base = Signal(aw)
        desc = Array(Signal(32, name=f"desc_w{i}") for i in range(DESCRIPTOR_WORDS))
        fc = Signal(3)
        code = Signal(8)
        d_ctrl, d_src, d_len, d_remote, d_tag, d_fence = (desc[i] for i in range(6))
        version = d_ctrl[0:8]
        flags = d_ctrl[8:16]
        peer = d_ctrl[16:24]
        window = d_ctrl[24:32]

        win_base = Array(self.q(n, "win_base") for n in range(Q))[cur_q]
        win_len = Array(self.q(n, "win_len") for n in range(Q))[cur_q]

        # Validation (combinational on the fetched words, registered at CHECK).
        check = Signal(8)
        src_end = Signal(33)
        win_end = Signal(33)
        m.d.comb += [src_end.eq(d_src + d_len), win_end.eq(win_base + win_len)]
        in_region = Signal()
        region_idx = Signal(range(len(self.src_regions)))
        for i, (base, size) in enumerate(self.src_regions):
            with m.If((d_src >= base) & (src_end <= base + size)):
                m.d.comb += [in_region.eq(1), region_idx.eq(i)]
        with m.If(version != DESCRIPTOR_VERSION):
            m.d.comb += check.eq(ERR_BAD_VERSION)
        with m.Elif(d_len == 0):
            m.d.comb += check.eq(ERR_ZERO_LENGTH)
        with m.Elif((d_len[0:2] != 0) | (d_src[0:2] != 0) | (d_remote[0:2] != 0)):
            m.d.comb += check.eq(ERR_MISALIGNED)
        with m.Elif((d_src < win_base) | (src_end > win_end) | ~in_region):
            m.d.comb += check.eq(ERR_OUT_OF_WINDOW)
        with m.Elif((peer != self.tx_peer) | ~self.peers_ok):
            m.d.comb += check.eq(ERR_UNKNOWN_PEER)

        # Packetiser state.
        rem = Signal(32)           # bytes not yet packetised (incl. current packet)
        wi = Signal(8)             # word index within the current packet
        pw = Signal(8)             # payload words of the current packet
        ptr = Signal(self.src_addr_width)   # word whose data is on src_data
        raddr = Signal(32)
        region = Signal(range(len(self.src_regions)))
        maxw = self.max_payload_bytes // 4
        m.d.comb += [self.src_addr.eq(ptr), self.src_region.eq(region)]
        m.d.comb += pw.eq(Mux(rem[2:] > maxw, maxw, rem[2:]))


        hold = Signal(2)
        fence_wait = Signal()
        any_ready = Signal()
        grant = Signal(range(Q))
        grant_cycle = Signal(48)
        for n in reversed(range(Q)):
            with m.If(heads[n] != tails[n]):
                m.d.comb += [any_ready.eq(1), grant.eq(n)]

        with m.FSM(name="dma") as fsm:
            with m.State("IDLE"):
                # Strict priority: the lowest-numbered non-empty queue wins.
                m.d.comb += dma_r.addr.eq(
                    (Array(self.q(n, "ring_base") for n in range(Q))[grant][2:]
                     + (Array(slot_idx)[grant] << 3))[:aw])
                with m.If(any_ready):
                    m.d.sync += [
                        cur_q.eq(grant),
                        grant_cycle.eq(self.cycle),
                        slot_base.eq(dma_r.addr),
                        fc.eq(0),
                    ]
                    for n in range(Q):
                        with m.If(grant == n):
                            m.d.sync += [
                                heads[n].eq(heads[n] + 1),
                                slot_idx[n].eq(Mux(slot_idx[n] + 1 >= self.q(n, "ring_size"),
                                                   0, slot_idx[n] + 1)),
                            ]
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += dma_r.addr.eq(slot_base + fc + 1)
                m.d.sync += [desc[fc].eq(dma_r.data), fc.eq(fc + 1)]
                with m.If(fc == DESCRIPTOR_WORDS - 1):
                    m.next = "CHECK"
            with m.State("CHECK"):
                t = self.trace[0]
                m.d.comb += [
                    t.valid.eq(1), t.cycle.eq(grant_cycle), t.engine.eq(ENGINE_DMA_HI + cur_q),
                    t.event.eq(EVENT_START), t.kind.eq(KIND_SEND), t.tag.eq(d_tag),
                    t.aux.eq(d_len),
                ]
                m.d.sync += [
                    code.eq(check),
                    rem.eq(d_len),
                    wi.eq(0),
                    raddr.eq(d_remote),
                    region.eq(region_idx),
                    ptr.eq((d_src - Array(b for b, _ in self.src_regions)[region_idx])[2:]),
                ]
                with m.If(check != 0):
                    m.next = "WRITEBACK"
                with m.Else():
                    m.d.sync += fence_wait.eq(flags[2])
                    m.next = "SEND"
            with m.State("SEND"):
                # FENCE: hold the first word until COMPUTE_DONE - FENCE_COUNT >= 0;
                # it leaves in the cycle the counter shows the value (as in the model).
                go = ~fence_wait | ~(self.compute_done - d_fence)[31]
                with m.If(go):
                    m.d.sync += fence_wait.eq(0)
                last = wi == 2 + pw
                with m.Switch(wi):
                    with m.Case(0):
                        m.d.comb += self.pkt.p.data.eq(
                            window | (flags[0] << 8) | ((pw - 1)[:7] << 9))
                    with m.Case(1):
                        m.d.comb += self.pkt.p.data.eq(d_tag)
                    with m.Case(2):
                        m.d.comb += self.pkt.p.data.eq(raddr)
                    with m.Default():
                        m.d.comb += self.pkt.p.data.eq(self.src_data)
                fire = go & self.pkt.ready
                m.d.comb += [
                    self.pkt.valid.eq(go),
                    self.pkt.p.last.eq(last),
                    self.pkt.p.chunk_end.eq(last & (rem[2:] == pw)),
                ]
                with m.If(fire & (wi >= 3)):
                    m.d.comb += self.src_addr.eq(ptr + 1)
                    m.d.sync += ptr.eq(ptr + 1)
                with m.If(fire & (wi == 0) & (rem == d_len)):
                    t = self.trace[1]
                    m.d.comb += [
                        t.valid.eq(1), t.cycle.eq(self.cycle), t.engine.eq(ENGINE_NIC_TX),
                        t.event.eq(EVENT_START), t.kind.eq(KIND_SEND), t.tag.eq(d_tag),
                        t.aux.eq(d_len),
                    ]
                with m.If(fire):
                    m.d.sync += wi.eq(wi + 1)
                    with m.If(last):
                        m.d.sync += [
                            wi.eq(0),
                            rem.eq(rem - (pw << 2)),
                            raddr.eq(raddr + (pw << 2)),
                        ]
                        with m.If(rem[2:] == pw):
                            m.next = "WAIT_CRC"
            with m.State("WAIT_CRC"), m.If(self.crc_sent):
                if self.word_period > 1:
                    m.d.sync += hold.eq(self.word_period - 2)
                    m.next = "LINK_TAIL"
                else:
                    m.next = "WRITEBACK"
            with m.State("LINK_TAIL"):
                # A slow link is busy for word_period cycles per word: the chunk's
                # transmission ends word_period - 1 cycles after its last word was taken.
                with m.If(hold == 0):
                    m.next = "WRITEBACK"
                with m.Else():
                    m.d.sync += hold.eq(hold - 1)
            with m.State("WRITEBACK"):
                m.d.comb += [
                    wb_status.addr.eq(slot_base + 6),
                    wb_status.data.eq((1 << 31) | code),
                    wb_status.en.eq(1),
                    wb_cycle.addr.eq(slot_base + 7),
                    wb_cycle.data.eq(self.cycle + 1),
                    wb_cycle.en.eq(1),
                ]
                for n in range(Q):
                    with m.If(cur_q == n):
                        m.d.sync += self.q(n, "done").eq(self.q(n, "done") + 1)
                        with m.If(code != 0):
                            m.d.sync += self.q(n, "errors").eq(self.q(n, "errors") + 1)
                        with m.If(flags[1]):
                            m.d.comb += self.irq_done[n].eq(1)
                t = self.trace[0]
                m.d.comb += [
                    t.valid.eq(1), t.cycle.eq(self.cycle + 1),
                    t.engine.eq(ENGINE_DMA_HI + cur_q), t.event.eq(EVENT_END),
                    t.kind.eq(KIND_SEND), t.tag.eq(d_tag), t.aux.eq(Mux(code != 0, code, d_len)),
                ]
                with m.If(code == 0):
                    t = self.trace[1]
                    m.d.comb += [
                        t.valid.eq(1), t.cycle.eq(self.cycle), t.engine.eq(ENGINE_NIC_TX),
                        t.event.eq(EVENT_END), t.kind.eq(KIND_SEND), t.tag.eq(d_tag),
                        t.aux.eq(d_len),
                    ]
                with m.Else():
                    e = self.error[0]
                    m.d.comb += [
                        e.valid.eq(1), e.code.eq(code), e.engine.eq(ENGINE_DMA_HI + cur_q),
                        e.index.eq(Array(heads)[cur_q] - 1), e.info.eq(d_src),
                    ]
                m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        sending = Signal()
        with m.If(fsm.ongoing("SEND") & self.pkt.valid & self.pkt.ready & (wi == 0)
                  & (rem == d_len)):
            m.d.sync += sending.eq(1)
        with m.If(fsm.ongoing("WRITEBACK")):
            m.d.sync += sending.eq(0)
        with m.If((sending | (fsm.ongoing("SEND") & self.pkt.valid & self.pkt.ready))
                  & ~fsm.ongoing("WRITEBACK")):
            m.d.sync += self.tx_cycles.eq(self.tx_cycles + 1)
        return m
