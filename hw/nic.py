"""Network interface: reliable packet transmission and windowed reduce-add on receive.

The NIC of ``DESIGN.md`` ("NIC + links"), in two components joined by a
:class:`~gradsync.hw.link.Link` per direction:

* :class:`NicTx` takes the DMA engine's packets (header + payload words),
  stamps a sequence number, appends a CRC-32, keeps a copy in a replay buffer
  and resends everything from the oldest unacknowledged packet (go-back-N) on
  a NAK or a timeout.  New packets also need a credit from the receiver.
* :class:`NicRx` stores each arriving packet, checks its CRC and sequence
  number, commits good in-order packets (acknowledging them), and applies
  them one at a time to the gradient memory after checking them against the
  RX window the firmware opened and against the device memory it may touch:
  a plain write or a saturating reduce-add ``dst[i] = sat(src[i] + payload[i])``.
  Every packet is applied exactly once.

Packet format (32-bit words, little-endian fields)::

    H0  [7:0] RX window  [8] reduce-add  [15:9] payload words - 1  [31:16] sequence
    H1  tag (layer, chunk, step)
    H2  destination byte address in the receiver's memory
    payload words (each holds 32 / operand_bits operands, lowest address in the low bits)
    CRC-32 (Ethernet polynomial) over H0..payload

Link-level acknowledgement and credits travel on the link's sideband as
:data:`~gradsync.hw.link.AckMessage`: ``exp`` is the next sequence number the
receiver expects (cumulative ACK of everything before it), ``limit`` the first
sequence number it has no buffer credit for (applied packets + credits), both
cumulative so a lost message is repaired by the next one; ``nak`` asks for a
resend from ``exp``.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import crc, data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from gradsync.hw.events import ErrorEvent, TraceWrite
from gradsync.hw.link import AckMessage, LinkBeat
from gradsync.spec import regmap as rm
from gradsync.spec.link import PACKET_CRC_BYTES, PACKET_HEADER_BYTES

#: A word from the DMA engine to the transmitter: ``last`` ends a packet,
#: ``chunk_end`` marks the last packet of a descriptor.
TxWord = data.StructLayout({"data": 32, "last": 1, "chunk_end": 1})

#: Link words of a packet's header, from ``gradsync.spec.link``'s framing.
HEADER_WORDS = PACKET_HEADER_BYTES // 4
# The NIC parses exactly H0..H2 (module docstring) and trails one CRC-32 link word (_crc32):
# a different framing in the spec must change this file too, not pass silently.
if (HEADER_WORDS, PACKET_HEADER_BYTES % 4, PACKET_CRC_BYTES) != (3, 0, 4):
    raise ValueError(
        "hw/nic.py frames packets as three 32-bit header words and a CRC-32 word, so "
        "gradsync.spec.link must give PACKET_HEADER_BYTES 12 and PACKET_CRC_BYTES 4, not "
        f"{PACKET_HEADER_BYTES!r} and {PACKET_CRC_BYTES!r}"
    )

#: Error codes the receiver reports (``gradsync.spec.regmap.ErrorCode``).
RX_NO_WINDOW = int(rm.ErrorCode.RX_NO_WINDOW)
RX_TAG_MISMATCH = int(rm.ErrorCode.RX_TAG_MISMATCH)
RX_OUT_OF_WINDOW = int(rm.ErrorCode.RX_OUT_OF_WINDOW)

#: ``gradsync.spec.regmap`` trace codes used by the receiver.
ENGINE_NIC_RX = int(rm.Engine.NIC_RX)
EVENT_END = int(rm.TraceEvent.END)
KIND_RECV = int(rm.Kind.RECV)

#: RX window register indices (byte offset / 4 inside a window's block).
WIN_CTRL, WIN_DST, WIN_SRC, WIN_LEN, WIN_TAG, WIN_EXPECT, WIN_RECEIVED = range(7)


def _crc32():
    return crc.catalog.CRC32_ETHERNET(32)


def header0(window, reduce, payload_words, seq=0):
    """Python helper: the H0 word (tests and models build packets with it)."""
    return (window & 0xFF) | (int(reduce) << 8) | ((payload_words - 1) << 9) | (seq << 16)


class NicTx(wiring.Component):
    """Transmitter: sequence numbers, CRC, replay buffer, go-back-N resend, credits.

    Parameters
    ----------
    max_payload_words:
        Largest payload of one packet in 32-bit words (1..128).
    window_packets:
        Replay-buffer slots: packets sent but not yet acknowledged (power of 2).
    credits:
        Receive-buffer credits the receiver starts with (its ``credits``).
    timeout_cycles:
        Cycles without acknowledgement progress, while packets are
        outstanding, after which everything unacknowledged is resent.

    Attributes
    ----------
    pkt : In(stream of TxWord)
        Packets from the DMA engine; H0's sequence field must be 0.  A new
        packet starts in the same cycle it is offered if the link is ready, a
        replay slot and a credit are free and no resend is pending; its words
        then pass straight through (``ready`` follows the link's ``ready``),
        and after its last word ``ready`` is low for the one cycle in which
        the CRC word is sent.  So packets offered back to back leave
        ``header + payload + 1`` cycles apart, the timing of ``model.timing``.
    link : Out(stream of LinkBeat)
        To the link.
    ack : In(stream of AckMessage)
        From the link's sideband.
    crc_sent : Out(1)
        Pulses in the cycle the CRC word of a *new* packet is accepted.
    packets_sent, bytes_sent, busy_cycles, retransmits, timeouts, naks : Out(32)
        New packets / payload bytes sent, cycles the link was driven, packets
        resent, timeouts and NAKs acted on, since reset.
    """

    def __init__(self, *, max_payload_words: int = 64, window_packets: int = 16,
                 credits: int = 16, timeout_cycles: int = 1024):
        if not 1 <= max_payload_words <= 128:
            raise ValueError(f"max_payload_words must be in 1..128, not {max_payload_words!r}")
        if window_packets < 1 or window_packets & (window_packets - 1) or window_packets > 1 << 14:
            raise ValueError(
                f"window_packets must be a power of 2 in 1..16384, not {window_packets!r}")
        if not 1 <= credits < 1 << 15:
            raise ValueError(f"credits must be in 1..32767, not {credits!r}")
        if timeout_cycles < 1:
            raise ValueError(f"timeout_cycles must be >= 1, not {timeout_cycles!r}")
        self.max_payload_words = max_payload_words
        self.window_packets = window_packets
        self.credits = credits
        self.timeout_cycles = timeout_cycles
        self.stride = HEADER_WORDS + max_payload_words
        super().__init__({
            "pkt": In(stream.Signature(TxWord)),
            "link": Out(stream.Signature(LinkBeat)),
            "ack": In(stream.Signature(AckMessage, always_ready=True)),
            "crc_sent": Out(1),
            "packets_sent": Out(32),
            "bytes_sent": Out(32),
            "busy_cycles": Out(32),
            "retransmits": Out(32),
            "timeouts": Out(32),
            "naks": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        W = self.window_packets
        m.submodules.replay = replay = Memory(shape=32, depth=W * self.stride, init=[])
        wr = replay.write_port()
        rd = replay.read_port()
        m.submodules.crc = crcp = crc.Processor(_crc32())

        seq_next = Signal(16)
        una = Signal(16)
        limit = Signal(16, init=self.credits)
        resend_pending = Signal()
        rs = Signal(16)            # sequence number being resent
        ridx = Signal(range(self.stride + 1))   # word index on the replay read port
        rtotal = Signal(range(self.stride + 1))
        widx = Signal(range(self.stride + 1))
        pw = Signal(8)             # payload words of the new packet in flight
        timer = Signal(range(self.timeout_cycles + 1))

        outstanding = Signal(16)
        credit_ok = Signal()
        can_new = Signal()
        m.d.comb += [
            outstanding.eq(seq_next - una),
            credit_ok.eq((seq_next - limit)[15]),
            can_new.eq((outstanding < W) & credit_ok & ~resend_pending),
        ]
        slot_new = seq_next[:exact_log2(W)] if W > 1 else Const(0, 1)
        slot_rs = rs[:exact_log2(W)] if W > 1 else Const(0, 1)

        with m.If(self.link.valid):
            m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)

        fire = self.link.valid & self.link.ready
        resending = Signal()

        with m.FSM(name="tx"):
            with m.State("IDLE"):
                with m.If(resend_pending):
                    m.d.sync += resend_pending.eq(0)
                    with m.If(una != seq_next):
                        m.d.comb += rd.addr.eq(una[:exact_log2(W)] * self.stride if W > 1 else 0)
                        m.d.sync += [rs.eq(una), ridx.eq(0)]
                        m.next = "RESEND"
                with m.Elif(self.pkt.valid & can_new):
                    m.d.comb += [
                        self.link.valid.eq(1),
                        self.link.p.data.eq(self.pkt.p.data | (seq_next << 16)),
                        self.pkt.ready.eq(self.link.ready),
                        wr.addr.eq(slot_new * self.stride),
                        wr.data.eq(self.link.p.data),
                        wr.en.eq(fire),
                        crcp.start.eq(fire),
                        crcp.valid.eq(fire),
                        crcp.data.eq(self.link.p.data),
                    ]
                    with m.If(fire):
                        m.d.sync += [widx.eq(1), pw.eq(self.pkt.p.data[9:16] + 1)]
                        m.next = "NEW"
            with m.State("NEW"):
                m.d.comb += [
                    self.link.valid.eq(self.pkt.valid),
                    self.link.p.data.eq(self.pkt.p.data),
                    self.pkt.ready.eq(self.link.ready),
                    wr.addr.eq(slot_new * self.stride + widx),
                    wr.data.eq(self.pkt.p.data),
                    wr.en.eq(fire),
                    crcp.valid.eq(fire),
                    crcp.data.eq(self.pkt.p.data),
                ]
                with m.If(fire):
                    m.d.sync += widx.eq(widx + 1)
                    with m.If(self.pkt.p.last):
                        m.next = "NEW_CRC"
            with m.State("NEW_CRC"):
                m.d.comb += [
                    self.link.valid.eq(1),
                    self.link.p.data.eq(crcp.crc),
                    self.link.p.last.eq(1),
                    self.crc_sent.eq(self.link.ready),
                ]
                with m.If(self.link.ready):
                    m.d.sync += [
                        seq_next.eq(seq_next + 1),
                        self.packets_sent.eq(self.packets_sent + 1),
                        self.bytes_sent.eq(self.bytes_sent + (pw << 2)),
                    ]
                    m.next = "IDLE"
            with m.State("RESEND"):
                # rd.data holds word ridx of packet rs (address presented last cycle).
                m.d.comb += resending.eq(1)
                total = Mux(ridx == 0, HEADER_WORDS + 1 + rd.data[9:16], rtotal)
                m.d.comb += [
                    self.link.valid.eq(1),
                    self.link.p.data.eq(rd.data),
                    crcp.start.eq(fire & (ridx == 0)),
                    crcp.valid.eq(fire),
                    crcp.data.eq(rd.data),
                    rd.addr.eq(slot_rs * self.stride + Mux(fire, ridx + 1, ridx)),
                ]
                with m.If(ridx == 0):
                    m.d.sync += rtotal.eq(total)
                with m.If(fire):
                    m.d.sync += ridx.eq(ridx + 1)
                    with m.If(ridx + 1 == total):
                        m.next = "RESEND_CRC"
            with m.State("RESEND_CRC"):
                m.d.comb += [
                    resending.eq(1),
                    self.link.valid.eq(1),
                    self.link.p.data.eq(crcp.crc),
                    self.link.p.last.eq(1),
                ]
                nxt = rs + 1
                nslot = nxt[:exact_log2(W)] if W > 1 else Const(0, 1)
                m.d.comb += rd.addr.eq(nslot * self.stride)
                with m.If(self.link.ready):
                    m.d.sync += [
                        self.retransmits.eq(self.retransmits + 1),
                        rs.eq(nxt),
                        ridx.eq(0),
                    ]
                    with m.If(nxt == seq_next):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "RESEND"

        # Acknowledgements (cumulative) and NAKs.
        advanced = Signal()
        with m.If(self.ack.valid):
            d = Signal(16)
            m.d.comb += d.eq(self.ack.p.exp - una)
            with m.If((d <= outstanding) & (d != 0)):
                m.d.sync += una.eq(self.ack.p.exp)
                m.d.comb += advanced.eq(1)
            m.d.sync += limit.eq(self.ack.p.limit)
            with m.If(self.ack.p.nak & ~resending):
                m.d.sync += [resend_pending.eq(1), self.naks.eq(self.naks + 1)]

        # Timeout: no acknowledgement progress while packets are outstanding.
        with m.If((una == seq_next) | advanced | resending):
            m.d.sync += timer.eq(0)
        with m.Elif(timer == self.timeout_cycles - 1):
            m.d.sync += [timer.eq(0), resend_pending.eq(1), self.timeouts.eq(self.timeouts + 1)]
        with m.Else():
            m.d.sync += timer.eq(timer + 1)
        return m


class NicRx(wiring.Component):
    """Receiver: CRC and sequence check, commit, window check, reduce-add into memory.

    Parameters
    ----------
    max_payload_words:
        Largest payload of one packet in 32-bit words.
    credits:
        Packets the receiver may hold committed but not yet applied; it has
        ``credits + 1`` packet buffers (one more for the packet arriving).
    windows:
        RX windows (1..64).
    regions:
        ``(base, bytes)`` of the device-memory regions a packet may touch
        (``model/device.py``'s SRAMs: scratchpad and gradient, or only the
        gradient SRAM in ``hw/fabric.py``'s ``CommNode``).  A packet is
        applied only if its destination range -- and, for a reduce-add, its
        source range -- lies inside one region and is 32-bit aligned; else
        it is refused with ``RX_OUT_OF_WINDOW`` like a packet outside its
        window.  The memory ports address 32-bit words
        ``(addr - base) >> 2`` of a region, with the region's index beside.
    operand_bits, saturate:
        Operand format of the reduce-add (8, 16 or 32 bits per lane).
    nak_holdoff_cycles:
        After a NAK the receiver NAKs again only when the expected packet
        arrived or this many cycles passed (about one round trip), so a lost
        resend is NAKed again instead of waiting for the sender's timeout.

    Attributes
    ----------
    link : In(stream of LinkBeat)
        From the link; always ready (the receiver absorbs one word per cycle).
    ack : Out(stream of AckMessage)
        Acknowledgements/credits/NAKs back to the transmitter.
    mem_rd_addr, mem_rd_region, mem_rd_data, mem_wr_addr, mem_wr_region, mem_wr_data, mem_wr_en
        Device memory ports (word address in the region, region index):
        synchronous read (data one cycle after the address), write.
    cfg_window, cfg_reg, cfg_wdata, cfg_we, cfg_rdata
        RX window registers (``WIN_*`` indices); ``cfg_rdata`` is
        combinational.  Writing CTRL with bit 0 set clears RECEIVED and the
        window's done bit; writing EXPECT arms the window.
    done_bits : Out(64)
        Windows whose RECEIVED reached EXPECT (``RX_DONE``); ``done_clear``
        (W1C mask) clears bits.
    rx_irq : Out(1)
        Pulses in the cycle a window's done bit is being set.
    now : In(48)
        The cycle counter, for trace stamps.
    trace : Out(TraceWrite)
        ``hw/events.py`` record, engine NIC_RX: END per packet applied
        (aux = bytes) or refused (aux = 0), emitted one cycle before and
        stamped with the cycle it is visible (the model traces no RX START).
    error : Out(ErrorEvent)
        A packet refused by the window checks (index = window, info = tag,
        code ``RX_NO_WINDOW``, ``RX_TAG_MISMATCH`` or ``RX_OUT_OF_WINDOW``:
        outside the window or outside ``regions``), emitted one cycle before
        the refusal is visible.
    packets_applied, bytes_applied, drops, crc_errors, seq_errors, duplicates : Out(32)

    Timing
    ------
    A packet whose CRC word arrives in cycle ``c`` has its last payload word
    written, its window's RECEIVED updated and its done bit/IRQ raised so that
    they are visible in cycle ``c + 4 + payload_words`` (if the receiver was
    idle); a packet refused by the window checks takes the same time, writes
    nothing and counts a drop instead.  Packets are applied in order, one at a
    time, each occupying the applier ``payload_words + 3`` cycles, so at 4
    link bytes per cycle the receiver never queues a fault-free stream.
    """

    def __init__(self, *, max_payload_words: int = 64, credits: int = 16, windows: int = 64,
                 regions: tuple[tuple[int, int], ...] = ((rm.GRAD_BASE, 1 << 16),),
                 operand_bits: int = 16, saturate: bool = True, nak_holdoff_cycles: int = 256):
        if not 1 <= windows <= 64:
            raise ValueError(f"windows must be in 1..64, not {windows!r}")
        if operand_bits not in (8, 16, 32):
            raise ValueError(f"operand_bits must be 8, 16 or 32, not {operand_bits!r}")
        if not 1 <= max_payload_words <= 128:
            raise ValueError(f"max_payload_words must be in 1..128, not {max_payload_words!r}")
        regions = tuple(tuple(r) for r in regions)
        if not regions or any(len(r) != 2 or r[0] % 4 or r[1] < 4 or r[0] + r[1] > 1 << 32
                              for r in regions):
            raise ValueError("regions must be (base, bytes) pairs with 4-byte aligned bases, "
                             f"at least 4 bytes, inside the 32-bit address space, not {regions!r}")
        self.max_payload_words = max_payload_words
        self.credits = credits
        self.nak_holdoff_cycles = nak_holdoff_cycles
        self.windows = windows
        self.regions = regions
        self.mem_addr_width = max(1, ceil_log2(max(size for _, size in regions) // 4))
        self.operand_bits = operand_bits
        self.saturate = saturate
        self.stride = HEADER_WORDS + max_payload_words
        self.slots = credits + 1
        super().__init__({
            "link": In(stream.Signature(LinkBeat, always_ready=True)),
            "ack": Out(stream.Signature(AckMessage, always_ready=True)),
            "mem_rd_addr": Out(self.mem_addr_width),
            "mem_rd_region": Out(range(len(regions))),
            "mem_rd_data": In(32),
            "mem_wr_addr": Out(self.mem_addr_width),
            "mem_wr_region": Out(range(len(regions))),
            "mem_wr_data": Out(32),
            "mem_wr_en": Out(1),
            "cfg_window": In(6),
            "cfg_reg": In(3),
            "cfg_wdata": In(32),
            "cfg_we": In(1),
            "cfg_rdata": Out(32),
            "done_bits": Out(64),
            "done_clear": In(64),
            "rx_irq": Out(1),
            "now": In(48),
            "trace": Out(TraceWrite),
            "error": Out(ErrorEvent),
            "packets_applied": Out(32),
            "bytes_applied": Out(32),
            "drops": Out(32),
            "crc_errors": Out(32),
            "seq_errors": Out(32),
            "duplicates": Out(32),
        })

    def _reduce(self, local, payload):
        bits = self.operand_bits
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        lanes = []
        for i in range(32 // bits):
            a = local[i * bits:(i + 1) * bits].as_signed()
            b = payload[i * bits:(i + 1) * bits].as_signed()
            s = Signal(signed(bits + 1), name=f"lane{i}_sum")
            r = Signal(bits, name=f"lane{i}_sat")
            s_expr = a + b
            self._m.d.comb += s.eq(s_expr)
            if self.saturate:
                self._m.d.comb += r.eq(Mux(s > hi, hi, Mux(s < lo, lo, s)))
            else:
                self._m.d.comb += r.eq(s)
            lanes.append(r)
        return Cat(*lanes)

    def elaborate(self, platform):
        m = Module()
        self._m = m
        S = self.slots
        m.submodules.buf = buf = Memory(shape=32, depth=S * self.stride, init=[])
        bw = buf.write_port()
        br = buf.read_port()
        m.submodules.crc = crcp = crc.Processor(_crc32())

        # ---------------------------------------------------------------- arrival
        wr_slot = Signal(range(S))
        rd_slot = Signal(range(S))
        exp = Signal(16)
        applied = Signal(16)
        widx = Signal(8)
        h0 = Signal(32)
        nak_sent = Signal()
        nak_pending = Signal()
        dirty = Signal()
        hdr0 = Array(Signal(32, name=f"slot{i}_h0") for i in range(S))
        hdr1 = Array(Signal(32, name=f"slot{i}_h1") for i in range(S))
        hdr2 = Array(Signal(32, name=f"slot{i}_h2") for i in range(S))

        # ------------------------------------------------------------- ack/credit
        with m.If(dirty | nak_pending):
            m.d.comb += [
                self.ack.valid.eq(1),
                self.ack.p.exp.eq(exp),
                self.ack.p.limit.eq(applied + self.credits),
                self.ack.p.nak.eq(nak_pending),
            ]
            m.d.sync += nak_pending.eq(0)
        # One-cycle flags; later assignments in this function set them again.
        m.d.sync += dirty.eq(0)

        holdoff = Signal(range(self.nak_holdoff_cycles + 1))
        with m.If(nak_sent):
            with m.If(holdoff == self.nak_holdoff_cycles):
                m.d.sync += nak_sent.eq(0)
            with m.Else():
                m.d.sync += holdoff.eq(holdoff + 1)
        beat = self.link.p
        pw_in = h0[9:16] + 1
        with m.If(self.link.valid & ~beat.last):
            with m.If(widx < self.stride):
                m.d.comb += [
                    bw.addr.eq(wr_slot * self.stride + widx),
                    bw.data.eq(beat.data),
                    bw.en.eq(1),
                ]
            m.d.comb += [crcp.valid.eq(1), crcp.start.eq(widx == 0), crcp.data.eq(beat.data)]
            with m.If(widx != 255):
                m.d.sync += widx.eq(widx + 1)
            with m.Switch(widx):
                with m.Case(0):
                    m.d.sync += [h0.eq(beat.data), hdr0[wr_slot].eq(beat.data)]
                with m.Case(1):
                    m.d.sync += hdr1[wr_slot].eq(beat.data)
                with m.Case(2):
                    m.d.sync += hdr2[wr_slot].eq(beat.data)
        with m.If(self.link.valid & beat.last):
            m.d.sync += widx.eq(0)
            good = Signal()
            seq = h0[16:32]
            m.d.comb += good.eq((crcp.crc == beat.data) & (widx == HEADER_WORDS + pw_in)
                                & (pw_in <= self.max_payload_words))
            with m.If(good & (seq == exp)):
                m.d.sync += [
                    wr_slot.eq(Mux(wr_slot == S - 1, 0, wr_slot + 1)),
                    exp.eq(exp + 1),
                    dirty.eq(1),
                    nak_sent.eq(0),
                ]
            with m.Elif(good & (seq - exp)[15]):
                m.d.sync += [self.duplicates.eq(self.duplicates + 1), dirty.eq(1)]
            with m.Else():
                with m.If(good):
                    m.d.sync += self.seq_errors.eq(self.seq_errors + 1)
                with m.Else():
                    m.d.sync += self.crc_errors.eq(self.crc_errors + 1)
                with m.If(~nak_sent):
                    m.d.sync += [nak_sent.eq(1), nak_pending.eq(1), holdoff.eq(0)]

        # ------------------------------------------------------------ windows
        nw = self.windows
        w_en = Signal(nw)
        w_armed = Signal(nw)
        # Window tables: one memory per register, written by the CSR side; read
        # asynchronously by the CSR side (cfg_window) and the applier (packet's
        # window), so a table costs no cycle and no register mux.
        aw = max(1, ceil_log2(nw))
        cw = self.cfg_window
        cw_ok = cw < nw
        widx_ = Signal(aw)
        tables = {}
        for reg, name in ((WIN_DST, "dst"), (WIN_SRC, "src"), (WIN_LEN, "len"),
                          (WIN_TAG, "tag"), (WIN_EXPECT, "expect"), (WIN_RECEIVED, "received")):
            mem = Memory(shape=32, depth=nw, init=[])
            m.submodules[f"win_{name}"] = mem
            apply_w = mem.write_port() if reg == WIN_RECEIVED else None
            cfg_w = mem.write_port()
            apply_r = mem.read_port(domain="comb")
            cfg_r = mem.read_port(domain="comb")
            m.d.comb += [apply_r.addr.eq(widx_), cfg_r.addr.eq(cw[:aw]),
                         cfg_w.addr.eq(cw[:aw])]
            tables[reg] = (apply_r.data, cfg_r.data, cfg_w, apply_w)
            if reg != WIN_RECEIVED:
                m.d.comb += [cfg_w.data.eq(self.cfg_wdata),
                             cfg_w.en.eq(self.cfg_we & cw_ok & (self.cfg_reg == reg))]
        w_dst, w_src, w_len, w_tag, w_exp, w_rcv = (tables[r][0] for r in (
            WIN_DST, WIN_SRC, WIN_LEN, WIN_TAG, WIN_EXPECT, WIN_RECEIVED))
        done = Signal(64)
        m.d.comb += self.done_bits.eq(done)

        with m.If(cw_ok), m.Switch(self.cfg_reg):
            with m.Case(WIN_CTRL):
                m.d.comb += self.cfg_rdata.eq(w_en.bit_select(cw, 1))
            with m.Case(WIN_DST):
                m.d.comb += self.cfg_rdata.eq(tables[WIN_DST][1])
            with m.Case(WIN_SRC):
                m.d.comb += self.cfg_rdata.eq(tables[WIN_SRC][1])
            with m.Case(WIN_LEN):
                m.d.comb += self.cfg_rdata.eq(tables[WIN_LEN][1])
            with m.Case(WIN_TAG):
                m.d.comb += self.cfg_rdata.eq(tables[WIN_TAG][1])
            with m.Case(WIN_EXPECT):
                m.d.comb += self.cfg_rdata.eq(tables[WIN_EXPECT][1])
            with m.Case(WIN_RECEIVED):
                m.d.comb += self.cfg_rdata.eq(tables[WIN_RECEIVED][1])

        # ---------------------------------------------------------------- apply
        a_win = Signal(8)
        a_reduce = Signal()
        a_pw = Signal(8)
        a_tag = Signal(32)
        a_addr = Signal(32)
        k = Signal(8)
        dst_w = Signal(self.mem_addr_width)
        src_w = Signal(self.mem_addr_width)
        nreg = len(self.regions)
        dst_r = Signal(range(nreg))
        src_r = Signal(range(nreg))
        p_valid = Signal()
        p_addr = Signal(self.mem_addr_width)
        p_region = Signal(range(nreg))
        p_reduce = Signal()
        free = Signal()
        a_code = Signal(8)
        count_apply = Signal()
        bytes_ = Signal(10)
        m.d.comb += bytes_.eq(a_pw << 2)

        # Pipeline stage 2: write the word read in the previous cycle.
        m.d.sync += p_valid.eq(0)
        with m.If(p_valid):
            m.d.comb += [
                self.mem_wr_addr.eq(p_addr),
                self.mem_wr_region.eq(p_region),
                self.mem_wr_data.eq(Mux(p_reduce, self._reduce(self.mem_rd_data, br.data),
                                        br.data)),
                self.mem_wr_en.eq(1),
            ]

        win_ok = a_win < nw
        m.d.comb += widx_.eq(a_win[:aw])
        check_code = Signal(8)
        end = Signal(33)
        wend = Signal(33)
        # Source of a reduce-add: the window's SRC plus the packet's offset in the window
        # (meaningful once the packet is inside the window); 33 bits, as the model's
        # unbounded sum may pass 2**32 and must then fall outside every region, not wrap.
        off = Signal(32)
        src = Signal(33)
        src_end = Signal(34)
        m.d.comb += [end.eq(a_addr + bytes_), wend.eq(w_dst + w_len), off.eq(a_addr - w_dst),
                     src.eq(w_src + off), src_end.eq(src + bytes_)]
        dst_in, src_in = Signal(), Signal()
        dst_region, src_region = Signal(range(nreg)), Signal(range(nreg))
        for i, (base, size) in enumerate(self.regions):
            with m.If((a_addr >= base) & (end <= base + size)):
                m.d.comb += [dst_in.eq(1), dst_region.eq(i)]
            with m.If((src >= base) & (src_end <= base + size)):
                m.d.comb += [src_in.eq(1), src_region.eq(i)]
        # The data path moves 32-bit words: a range must start on one (DMA_ALIGN_BYTES).
        mem_ok = (dst_in & (a_addr[:2] == 0)
                  & (~a_reduce | (src_in & (src[:2] == 0))))
        with m.If(~win_ok | ~w_en.bit_select(widx_, 1)):
            m.d.comb += check_code.eq(RX_NO_WINDOW)
        with m.Elif(w_tag != a_tag):
            m.d.comb += check_code.eq(RX_TAG_MISMATCH)
        with m.Elif((a_addr < w_dst) | (end > wend) | ~mem_ok):
            m.d.comb += check_code.eq(RX_OUT_OF_WINDOW)
        bases = Array(Const(base, 32) for base, _ in self.regions)

        with m.FSM(name="apply"):
            with m.State("IDLE"), m.If(rd_slot != wr_slot):
                h = hdr0[rd_slot]
                m.d.sync += [
                    a_win.eq(h[0:8]),
                    a_reduce.eq(h[8]),
                    a_pw.eq(h[9:16] + 1),
                    a_tag.eq(hdr1[rd_slot]),
                    a_addr.eq(hdr2[rd_slot]),
                ]
                m.next = "CHECK"
            with m.State("CHECK"):
                # A refused packet takes the same time as an applied one but writes nothing.
                m.d.sync += [
                    a_code.eq(check_code),
                    dst_w.eq((a_addr - bases[dst_region])[2:]),
                    dst_r.eq(dst_region),
                    src_w.eq((src[:32] - bases[src_region])[2:]),
                    src_r.eq(src_region),
                    k.eq(0),
                ]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [
                    br.addr.eq(rd_slot * self.stride + HEADER_WORDS + k),
                    self.mem_rd_addr.eq(src_w + k),
                    self.mem_rd_region.eq(src_r),
                ]
                m.d.sync += [p_valid.eq(a_code == 0), p_addr.eq(dst_w + k), p_region.eq(dst_r),
                             p_reduce.eq(a_reduce), k.eq(k + 1)]
                with m.If(k + 1 == a_pw):
                    m.next = "LAST"
            with m.State("LAST"):
                t = self.trace
                m.d.comb += [
                    free.eq(1),
                    t.valid.eq(1), t.cycle.eq(self.now + 1), t.engine.eq(ENGINE_NIC_RX),
                    t.event.eq(EVENT_END), t.kind.eq(KIND_RECV), t.tag.eq(a_tag),
                    t.aux.eq(Mux(a_code == 0, bytes_, 0)),
                ]
                with m.If(a_code == 0):
                    m.d.comb += count_apply.eq(1)
                with m.Else():
                    e = self.error
                    m.d.comb += [
                        e.valid.eq(1), e.code.eq(a_code), e.engine.eq(ENGINE_NIC_RX),
                        e.index.eq(a_win), e.info.eq(a_tag),
                    ]
                    m.d.sync += self.drops.eq(self.drops + 1)
                m.next = "IDLE"

        with m.If(free):
            m.d.sync += [
                rd_slot.eq(Mux(rd_slot == S - 1, 0, rd_slot + 1)),
                applied.eq(applied + 1),
                dirty.eq(1),
            ]

        # Window register writes from the CSR side and RECEIVED updates from apply.
        new_rcv = Signal(32)
        m.d.comb += new_rcv.eq(w_rcv + bytes_)
        set_done = Signal(64)
        set_done_cfg = Signal(64)
        rcv_cfg_w, rcv_apply_w = tables[WIN_RECEIVED][2], tables[WIN_RECEIVED][3]
        rcv_clear = (self.cfg_we & cw_ok & (self.cfg_reg == WIN_CTRL) & self.cfg_wdata[0])
        m.d.comb += [
            rcv_cfg_w.data.eq(0), rcv_cfg_w.en.eq(rcv_clear),
            rcv_apply_w.addr.eq(widx_), rcv_apply_w.data.eq(new_rcv),
            # a clear of the same window in the same cycle wins
            rcv_apply_w.en.eq(count_apply & ~(rcv_clear & (cw[:aw] == widx_))),
        ]
        with m.If(count_apply):
            m.d.sync += [
                self.packets_applied.eq(self.packets_applied + 1),
                self.bytes_applied.eq(self.bytes_applied + bytes_),
            ]
            with m.If(w_armed.bit_select(widx_, 1) & (new_rcv >= w_exp)):
                m.d.comb += [set_done.eq(Const(1, 64) << widx_), self.rx_irq.eq(1)]
        clear_done = Signal(64)
        m.d.comb += clear_done.eq(self.done_clear)
        en_next = Signal(nw)
        armed_next = Signal(nw)
        m.d.comb += [en_next.eq(w_en), armed_next.eq(w_armed & ~set_done[:nw])]
        with m.If(self.cfg_we & cw_ok), m.Switch(self.cfg_reg):
            with m.Case(WIN_CTRL):
                bit = Const(1, nw) << cw
                m.d.comb += en_next.eq(Mux(self.cfg_wdata[0], w_en | bit, w_en & ~bit))
                with m.If(self.cfg_wdata[0]):
                    m.d.comb += [clear_done.eq(self.done_clear | (Const(1, 64) << cw)),
                                 armed_next.eq(w_armed & ~set_done[:nw] & ~bit)]
            with m.Case(WIN_EXPECT):
                # Arming a window that already received enough completes it at once.
                with m.If(tables[WIN_RECEIVED][1] >= self.cfg_wdata):
                    m.d.comb += [set_done_cfg.eq(Const(1, 64) << cw), self.rx_irq.eq(1)]
                with m.Else():
                    m.d.comb += armed_next.eq(w_armed & ~set_done[:nw] | (Const(1, nw) << cw))
        m.d.sync += [w_en.eq(en_next), w_armed.eq(armed_next),
                     done.eq((done | set_done | set_done_cfg) & ~clear_done)]
        return m
