"""NIC receiver: a front end, a window table and an applier, composed as :class:`NicRx`.

The receive half of ``DESIGN.md``'s "NIC + links" (``hw/nic.py`` has the
transmitter, ``hw/packet.py`` the packet format).  Three sub-components,
joined with ``wiring.connect``:

* :class:`RxFrontEnd` stores each arriving packet in a slot of its buffer,
  checks the CRC and sequence number, commits good in-order packets and
  acknowledges them; NAKs a gap; returns a credit when a slot is freed.  The
  committed packets leave it, oldest first, as a stream of
  :data:`~gradsync.hw.packet.PacketHeader` whose transfer frees the slot,
  their payload words readable through a read port.
* :class:`RxWindowTable` holds the RX window registers the firmware opens
  (``WINn_*``), answers the applier's lookup (may this packet be applied, and
  to which words of which memory region) and counts RECEIVED bytes up to the
  window's done bit and interrupt.
* :class:`RxApplier` takes one packet at a time: looks it up, then writes its
  payload, or the reduce-add ``dst[i] = src[i] + payload[i]``, to device
  memory, traces it and counts it; a refused packet is an error event and a
  drop.  Every packet is applied exactly once.  The sum is per operand lane,
  saturating (fixed point), or per 32-bit word, one fp32 element rounded to
  nearest even with subnormals flushed (``fp32=True``, a bf16 node:
  ``docs/numerics.md``, "The NIC's reduce-add on receive").  On a bf16 node a
  packet with H0's ``bf16`` bit carries two bf16 elements per word: it covers
  twice its payload bytes of fp32 memory, both elements of a word are applied in
  the same cycle (second read and write port), ``dst = w`` or ``dst = r(r(g) + w)``
  (``docs/numerics.md``, "The bf16 gradient exchange").

Receiver not ready: a packet whose tag has the layer and chunk of its enabled
window's ``TAG`` and whose step is that step + 1 (modulo 4096) is not an
error.  The applier holds it, checking again every cycle, until the firmware
writes the window's ``TAG`` to the packet's tag, then applies it; meanwhile
it takes no other packet, so the queue fills and the link's credits stop the
sender (no resend, no timeout).  The firmware writes a window's ``TAG`` for
step k only once its own gradient of step k is in place (``docs/comm.md``).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import crc, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from gradsync.spec import regmap as rm

from .arith import add_lanes
from .events import ErrorEvent, TraceWrite
from .fp import bf16_to_fp32, fp32_add, fp32_to_bf16
from .link import AckMessage, ack_check, link_beat
from .packet import CRC_INIT, HEADER_WORDS, Header0, PacketHeader, crc32, crc32_step, crc32_value
from .sram import read_port_signature

#: Error codes the receiver reports (``gradsync.spec.regmap.ErrorCode``).
RX_NO_WINDOW = int(rm.ErrorCode.RX_NO_WINDOW)
RX_TAG_MISMATCH = int(rm.ErrorCode.RX_TAG_MISMATCH)
RX_OUT_OF_WINDOW = int(rm.ErrorCode.RX_OUT_OF_WINDOW)

#: ``gradsync.spec.regmap`` trace codes used by the receiver.
ENGINE_NIC_RX = int(rm.Engine.NIC_RX)
EVENT_END = int(rm.TraceEvent.END)
KIND_RECV = int(rm.Kind.RECV)

#: RX window register indices (byte offset / 4 inside a window's block), the regmap's order.
WIN_CTRL, WIN_DST, WIN_SRC, WIN_LEN, WIN_TAG, WIN_EXPECT, WIN_RECEIVED = (
    (rm.rx_window_reg(0, name) - rm.RX_WINDOW_BASE) // 4
    for name in ("CTRL", "DST", "SRC", "LEN", "TAG", "EXPECT", "RECEIVED")
)


def payload_port_signature(max_payload_words: int, width_bytes: int = 4) -> wiring.Signature:
    """The applier's read port into the packet at the head of the front end's queue.

    ``addr`` is a payload word index (0 = the word after H2); data one cycle after ``en``;
    at width 8 ``data1`` is the word after ``addr`` too.
    """
    port = read_port_signature(max(1, ceil_log2(max_payload_words)), 32)
    if width_bytes == 4:
        return port
    return wiring.Signature({**port.members, "data1": In(32)})


def window_lookup_signature(
    mem_addr_width: int, regions: int, bytes_bits: int = 10
) -> wiring.Signature:
    """The applier's question to the window table and its answer, as the applier sees it.

    Members (all combinational)
    ---------------------------
    window, tag, addr, bytes, reduce : Out
        The packet: its RX window, tag, destination byte address, bytes of memory
        it covers (its payload bytes, twice them for a bf16 packet; ``bytes_bits``
        wide) and whether it is a reduce-add.
    commit : Out(1)
        The packet is being applied: add ``bytes`` to the window's RECEIVED.
    code : In(8)
        0 if the packet may be applied, else the ``ErrorCode`` refusing it.
    hold : In(1)
        The packet is for the window's next step (:func:`next_step_hold`): wait, check again
        next cycle (``code`` is then meaningless).
    dst, dst_region, src, src_region : In
        Word address and region of the destination and of the reduce-add's source.
    """
    return wiring.Signature(
        {
            "window": Out(8),
            "tag": Out(32),
            "addr": Out(32),
            "bytes": Out(bytes_bits),
            "reduce": Out(1),
            "commit": Out(1),
            "code": In(8),
            "hold": In(1),
            "dst": In(mem_addr_width),
            "dst_region": In(range(regions)),
            "src": In(mem_addr_width),
            "src_region": In(range(regions)),
        }
    )


def _link_ports(width_bytes: int = 4) -> dict:
    """The link side of the receiver (NicRx's and RxFrontEnd's)."""
    return {
        "link": In(stream.Signature(link_beat(width_bytes), always_ready=True)),
        "ack": Out(stream.Signature(AckMessage, always_ready=True)),
    }


def _memory_ports(mem_addr_width: int, regions: int, fp32: bool = False) -> dict:
    """The device-memory ports (NicRx's and RxApplier's); with ``fp32`` (or a width-8 link's
    applier) the second read and write port at the word after (``mem_rd1_*``, ``mem_wr1_*``):
    a bf16 packet's odd elements, or a width-8 applier's second payload word."""
    ports = {
        "mem_rd_addr": Out(mem_addr_width),
        "mem_rd_region": Out(range(regions)),
        "mem_rd_data": In(32),
        "mem_wr_addr": Out(mem_addr_width),
        "mem_wr_region": Out(range(regions)),
        "mem_wr_data": Out(32),
        "mem_wr_en": Out(1),
    }
    if fp32:
        ports.update(
            {
                "mem_rd1_addr": Out(mem_addr_width),
                "mem_rd1_data": In(32),
                "mem_wr1_addr": Out(mem_addr_width),
                "mem_wr1_data": Out(32),
                "mem_wr1_en": Out(1),
            }
        )
    return ports


def _lookup_bytes_bits(fp32: bool) -> int:
    """Width of a packet's memory bytes: 128 words of 4 bytes, of 8 with bf16 (fp32 builds)."""
    return 11 if fp32 else 10


def round_to_bf16(m: Module, a, name: str) -> Signal:
    """``r(a) = bf16_to_fp32(fp32_to_bf16(a))``: fp32 word ``a`` rounded to bf16 precision
    (nearest even, subnormals flushed, canonical NaN), kept as fp32 (combinational)."""
    return bf16_to_fp32(m, fp32_to_bf16(m, a, f"{name}_bf16"), name)


def _window_register_ports() -> dict:
    """The RX window registers and done bits (NicRx's and RxWindowTable's)."""
    return {
        "cfg_window": In(6),
        "cfg_reg": In(3),
        "cfg_wdata": In(32),
        "cfg_we": In(1),
        "cfg_rdata": Out(32),
        "done_bits": Out(64),
        "done_clear": In(64),
        "rx_irq": Out(1),
    }


def _report_ports() -> dict:
    """Trace, error, apply and hold counters, the held packet (NicRx's and RxApplier's)."""
    return {
        "now": In(48),
        "trace": Out(TraceWrite),
        "error": Out(ErrorEvent),
        "packets_applied": Out(32),
        "bytes_applied": Out(32),
        "drops": Out(32),
        "holds": Out(32),
        "held_window": Out(8),
        "held_tag": Out(32),
    }


#: The tag's step field (``gradsync.spec.regmap.TAG_FIELDS``).
_STEP = next(f for f in rm.TAG_FIELDS if f.name == "step")


def next_step_hold(m: Module, packet_tag, window_tag) -> Signal:
    """1 if ``packet_tag`` has the layer and chunk of ``window_tag`` and its step is the
    window's step + 1 (modulo 2**width of the step field): the receiver-not-ready rule."""
    lo, hi = _STEP.lsb, _STEP.lsb + _STEP.width
    other = Const(0xFFFF_FFFF & ~_STEP.mask, 32)
    hold = Signal(name="next_step")
    m.d.comb += hold.eq(
        ((packet_tag & other) == (window_tag & other))
        & (packet_tag[lo:hi] == (window_tag[lo:hi] + 1)[: _STEP.width])
    )
    return hold


def _arrival_counter_ports() -> dict:
    """The front end's error counters (NicRx's and RxFrontEnd's)."""
    return {"crc_errors": Out(32), "seq_errors": Out(32), "duplicates": Out(32)}


class RxFrontEnd(wiring.Component):
    """Receiver front end: packet buffer, CRC and sequence check, ACK/NAK and credits.

    Parameters
    ----------
    max_payload_words, credits, nak_holdoff_cycles, seq_start, width_bytes:
        As :class:`NicRx`'s; the buffer has ``credits + 1`` packet slots.

    Attributes
    ----------
    link : In(stream of link_beat(width_bytes))
        From the link; always ready (one beat per cycle: a word, or two at width 8,
        stored through a second write port, the CRC folded over both in the cycle).
    ack : Out(stream of AckMessage)
        Cumulative ACK (``exp``), credit limit (packets freed + ``credits``),
        NAK and check byte, sent in the cycle after anything of them changed,
        and repeated after ``run_nak_holdoff`` cycles without a message (a lost
        message, e.g. the last credit, is repaired without a sender timeout).
    run_nak_holdoff : In(16)
        The current NAK hold-off (reset: ``nak_holdoff_cycles``); its counters
        compare with ``>=``, so a lowered hold-off fires at once.
    run_payload_words : In(8)
        The current maximum payload (reset: ``max_payload_words``, the buffers'
        size): a longer packet is dropped as a bad length.
    packets : Out(stream of PacketHeader)
        The oldest committed packet; valid from the cycle after its CRC word
        arrived.  Its payload is readable through ``payload`` while it is
        valid; the transfer frees its slot and returns its credit.
    payload : In(payload_port_signature)
        Payload word ``addr`` of the packet at the head of ``packets``.
    crc_errors, seq_errors, duplicates : Out(32)
        Packets dropped for a bad CRC or length, out of sequence (NAKed), or
        already received (ACKed again), since reset.
    """

    def __init__(
        self,
        *,
        max_payload_words: int,
        credits: int,
        nak_holdoff_cycles: int,
        seq_start: int = 0,
        width_bytes: int = 4,
    ):
        self.width_bytes = width_bytes
        self.seq_start = seq_start
        self.max_payload_words = max_payload_words
        self.credits = credits
        self.nak_holdoff_cycles = nak_holdoff_cycles
        self.stride = HEADER_WORDS + max_payload_words
        self.slots = credits + 1
        super().__init__(
            {
                **_link_ports(width_bytes),
                "run_nak_holdoff": In(16, init=nak_holdoff_cycles),
                "run_payload_words": In(8, init=max_payload_words),
                "packets": Out(stream.Signature(PacketHeader)),
                "payload": In(payload_port_signature(max_payload_words, width_bytes)),
                **_arrival_counter_ports(),
            }
        )

    def elaborate(self, platform):
        m = Module()
        S = self.slots
        m.submodules.buf = buf = Memory(shape=32, depth=S * self.stride, init=[])
        bw = buf.write_port()
        br = buf.read_port()
        if self.width_bytes == 4:
            m.submodules.crc = extra = crc.Processor(crc32())
        else:  # the CRC register is folded two words a cycle (_arrival_wide)
            extra = buf.write_port()  # for a beat's second word

        wr_slot = Signal(range(S))  # slot of the packet arriving
        rd_slot = Signal(range(S))  # oldest committed packet (the head of ``packets``)
        exp = Signal(16, init=self.seq_start)
        applied = Signal(16, init=self.seq_start)
        widx = Signal(8)
        h0 = Signal(Header0)
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
                self.ack.p.chk.eq(ack_check(self.ack.p)),
            ]
            m.d.sync += nak_pending.eq(0)
        # One-cycle flags; later assignments in this function set them again.
        m.d.sync += dirty.eq(0)
        quiet = Signal(16)
        with m.If(self.ack.valid):
            m.d.sync += quiet.eq(0)
        with m.Elif(quiet >= self.run_nak_holdoff):
            m.d.sync += [quiet.eq(0), dirty.eq(1)]
        with m.Else():
            m.d.sync += quiet.eq(quiet + 1)

        holdoff = Signal(16)
        with m.If(nak_sent):
            with m.If(holdoff >= self.run_nak_holdoff):
                m.d.sync += nak_sent.eq(0)
            with m.Else():
                m.d.sync += holdoff.eq(holdoff + 1)

        # ---------------------------------------------------------------- arrival
        arrival = self._arrival_wide if self.width_bytes == 8 else self._arrival
        # width 4: the CRC processor; width 8: the second write port (the CRC is folded)
        arrival(m, buf, bw, extra, wr_slot, exp, widx, h0, hdr0, hdr1, hdr2, nak_sent,
                nak_pending, dirty, holdoff)  # fmt: skip

        # ------------------------------------------------- committed packets out
        m.d.comb += [
            self.packets.valid.eq(rd_slot != wr_slot),
            self.packets.payload.eq(Cat(hdr0[rd_slot], hdr1[rd_slot], hdr2[rd_slot])),
            br.addr.eq(rd_slot * self.stride + HEADER_WORDS + self.payload.addr),
            br.en.eq(self.payload.en),
            self.payload.data.eq(br.data),
        ]
        if self.width_bytes == 8:
            br1 = buf.read_port()
            m.d.comb += [
                br1.addr.eq(br.addr + 1),
                br1.en.eq(self.payload.en),
                self.payload.data1.eq(br1.data),
            ]
        with m.If(self.packets.valid & self.packets.ready):
            m.d.sync += [
                rd_slot.eq(Mux(rd_slot == S - 1, 0, rd_slot + 1)),
                applied.eq(applied + 1),
                dirty.eq(1),
            ]
        return m

    def _arrival(self, m, buf, bw, crcp, wr_slot, exp, widx, h0, hdr0, hdr1, hdr2, nak_sent,
                 nak_pending, dirty, holdoff):  # fmt: skip
        """Store, check and commit the packet arriving a word per beat."""
        beat = self.link.p
        pw_in = h0.words_minus_1 + 1
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
            seq = h0.seq
            m.d.comb += good.eq(
                (crcp.crc == beat.data)
                & (widx == HEADER_WORDS + pw_in)
                & (pw_in <= self.run_payload_words)
            )
            self._verdict(m, good, seq, exp, wr_slot, dirty, nak_sent, nak_pending, holdoff)

    def _verdict(self, m, good, seq, exp, wr_slot, dirty, nak_sent, nak_pending, holdoff):
        """A packet's last beat arrived, ``good`` (CRC and length): commit, repeat or NAK."""
        S = self.slots
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

    def _arrival_wide(self, m, buf, bw, bw1, wr_slot, exp, widx, h0, hdr0, hdr1, hdr2,
                      nak_sent, nak_pending, dirty, holdoff):  # fmt: skip
        """Store, check and commit the packet arriving in beats of one or two words (width
        8): a beat's words are ``widx`` and ``widx + 1``; on the ``last`` beat its final word
        is the CRC, checked against the register folded over every word before it."""
        beat = self.link.p
        pw_in = h0.words_minus_1 + 1
        creg = Signal(32, init=CRC_INIT)
        base = Mux(widx == 0, CRC_INIT, creg)
        data_hi = beat.two & ~beat.last  # the second half is a data word (not the CRC)
        one = crc32_step(m, base, beat.data, "crc_lo")
        slot = wr_slot * self.stride
        with m.If(self.link.valid & (~beat.last | beat.two)):  # beat.data is a data word
            with m.If(widx < self.stride):
                m.d.comb += [bw.addr.eq(slot + widx), bw.data.eq(beat.data), bw.en.eq(1)]
            with m.If(data_hi & (widx + 1 < self.stride)):
                m.d.comb += [bw1.addr.eq(slot + widx + 1), bw1.data.eq(beat.data1), bw1.en.eq(1)]
            with m.Switch(widx):
                with m.Case(0):
                    m.d.sync += [h0.eq(beat.data), hdr0[wr_slot].eq(beat.data)]
                    with m.If(data_hi):
                        m.d.sync += hdr1[wr_slot].eq(beat.data1)
                with m.Case(1):
                    m.d.sync += hdr1[wr_slot].eq(beat.data)
                    with m.If(data_hi):
                        m.d.sync += hdr2[wr_slot].eq(beat.data1)
                with m.Case(2):
                    m.d.sync += hdr2[wr_slot].eq(beat.data)
        with m.If(self.link.valid & ~beat.last):
            m.d.sync += creg.eq(Mux(data_hi, crc32_step(m, one, beat.data1, "crc_hi"), one))
            m.d.sync += widx.eq(Mux(widx >= 254, 255, widx + 1 + data_hi))
        with m.If(self.link.valid & beat.last):
            m.d.sync += widx.eq(0)
            good = Signal()
            seq = h0.seq
            crc_word = Mux(beat.two, beat.data1, beat.data)
            words = Mux(beat.two, widx + 1, widx)  # data words of the packet
            m.d.comb += good.eq(
                (crc32_value(Mux(beat.two, one, base)) == crc_word)
                & (words == HEADER_WORDS + pw_in)
                & (pw_in <= self.run_payload_words)
            )
            self._verdict(m, good, seq, exp, wr_slot, dirty, nak_sent, nak_pending, holdoff)


class RxWindowTable(wiring.Component):
    """RX window registers, the packet checks against them, RECEIVED and the done bits.

    Parameters
    ----------
    windows, regions:
        As :class:`NicRx`'s.
    mem_addr_width, bytes_bits:
        Widths of a word address in a region and of ``lookup.bytes``.

    Attributes
    ----------
    cfg_window, cfg_reg, cfg_wdata, cfg_we, cfg_rdata, done_bits, done_clear, rx_irq
        As :class:`NicRx`'s.
    lookup : In(window_lookup_signature)
        The applier's packet: ``hold`` holds it (a tag of the window's next
        step, :func:`next_step_hold`); ``code`` refuses it with ``RX_NO_WINDOW``
        (window not enabled or not populated), ``RX_TAG_MISMATCH`` (any other
        tag) or
        ``RX_OUT_OF_WINDOW`` (outside ``[DST, DST + LEN)``, or its destination
        or reduce-add source range not inside one region or not 32-bit aligned);
        ``commit`` adds its bytes to RECEIVED (a CTRL clear of the same window
        in the same cycle wins) and, if the window is armed and RECEIVED
        reaches EXPECT, sets its done bit and pulses ``rx_irq``.  Everything is
        combinational; register updates are visible the next cycle.
    """

    def __init__(
        self,
        *,
        windows: int,
        regions: tuple[tuple[int, int], ...],
        mem_addr_width: int,
        bytes_bits: int = 10,
    ):
        self.windows = windows
        self.regions = regions
        super().__init__(
            {
                "lookup": In(window_lookup_signature(mem_addr_width, len(regions), bytes_bits)),
                **_window_register_ports(),
            }
        )

    def elaborate(self, platform):
        m = Module()
        nw = self.windows
        lk = self.lookup
        w_en = Signal(nw)
        w_armed = Signal(nw)
        # Window tables: one memory per register, written by the CSR side; read
        # asynchronously by the CSR side (cfg_window) and the applier (packet's
        # window), so a table costs no cycle and no register mux.
        aw = max(1, ceil_log2(nw))
        cw = self.cfg_window
        cw_ok = cw < nw
        widx = Signal(aw)
        m.d.comb += widx.eq(lk.window[:aw])
        tables = {}
        for reg, name in (
            (WIN_DST, "dst"),
            (WIN_SRC, "src"),
            (WIN_LEN, "len"),
            (WIN_TAG, "tag"),
            (WIN_EXPECT, "expect"),
            (WIN_RECEIVED, "received"),
        ):
            mem = Memory(shape=32, depth=nw, init=[])
            m.submodules[f"win_{name}"] = mem
            apply_w = mem.write_port() if reg == WIN_RECEIVED else None
            cfg_w = mem.write_port()
            apply_r = mem.read_port(domain="comb")
            cfg_r = mem.read_port(domain="comb")
            m.d.comb += [apply_r.addr.eq(widx), cfg_r.addr.eq(cw[:aw]), cfg_w.addr.eq(cw[:aw])]
            tables[reg] = (apply_r.data, cfg_r.data, cfg_w, apply_w)
            if reg != WIN_RECEIVED:
                m.d.comb += [
                    cfg_w.data.eq(self.cfg_wdata),
                    cfg_w.en.eq(self.cfg_we & cw_ok & (self.cfg_reg == reg)),
                ]
        w_dst, w_src, w_len, w_tag, w_exp, w_rcv = (
            tables[r][0] for r in (WIN_DST, WIN_SRC, WIN_LEN, WIN_TAG, WIN_EXPECT, WIN_RECEIVED)
        )

        with m.If(cw_ok), m.Switch(self.cfg_reg):
            with m.Case(WIN_CTRL):
                m.d.comb += self.cfg_rdata.eq(w_en.bit_select(cw, 1))
            for reg, (_, cfg_data, _, _) in tables.items():
                with m.Case(reg):
                    m.d.comb += self.cfg_rdata.eq(cfg_data)

        # ----------------------------------------------------------------- checks
        end = Signal(33)
        wend = Signal(33)
        # Source of a reduce-add: the window's SRC plus the packet's offset in the window
        # (meaningful once the packet is inside the window); 33 bits, as the model's
        # unbounded sum may pass 2**32 and must then fall outside every region, not wrap.
        off = Signal(32)
        src = Signal(33)
        src_end = Signal(34)
        m.d.comb += [
            end.eq(lk.addr + lk.bytes),
            wend.eq(w_dst + w_len),
            off.eq(lk.addr - w_dst),
            src.eq(w_src + off),
            src_end.eq(src + lk.bytes),
        ]
        dst_in, src_in = Signal(), Signal()
        for i, (base, size) in enumerate(self.regions):
            with m.If((lk.addr >= base) & (end <= base + size)):
                m.d.comb += [dst_in.eq(1), lk.dst_region.eq(i)]
            with m.If((src >= base) & (src_end <= base + size)):
                m.d.comb += [src_in.eq(1), lk.src_region.eq(i)]
        bases = Array(Const(base, 32) for base, _ in self.regions)
        m.d.comb += [
            lk.dst.eq((lk.addr - bases[lk.dst_region])[2:]),
            lk.src.eq((src[:32] - bases[lk.src_region])[2:]),
        ]
        # The data path moves 32-bit words: a range must start on one (DMA_ALIGN_BYTES).
        mem_ok = dst_in & (lk.addr[:2] == 0) & (~lk.reduce | (src_in & (src[:2] == 0)))
        next_step = next_step_hold(m, lk.tag, w_tag)
        with m.If((lk.window >= nw) | ~w_en.bit_select(widx, 1)):
            m.d.comb += lk.code.eq(RX_NO_WINDOW)
        with m.Elif(w_tag != lk.tag):
            # the window's next step: not an error, the firmware has not yet written its TAG
            m.d.comb += lk.code.eq(RX_TAG_MISMATCH)
            m.d.comb += lk.hold.eq(next_step)
        with m.Elif((lk.addr < w_dst) | (end > wend) | ~mem_ok):
            m.d.comb += lk.code.eq(RX_OUT_OF_WINDOW)

        # ------------------------------ RECEIVED, done bits: applier and CSR side
        new_rcv = Signal(32)
        m.d.comb += new_rcv.eq(w_rcv + lk.bytes)
        set_done = Signal(64)
        set_done_cfg = Signal(64)
        rcv_cfg_w, rcv_apply_w = tables[WIN_RECEIVED][2], tables[WIN_RECEIVED][3]
        rcv_clear = self.cfg_we & cw_ok & (self.cfg_reg == WIN_CTRL) & self.cfg_wdata[0]
        m.d.comb += [
            rcv_cfg_w.data.eq(0),
            rcv_cfg_w.en.eq(rcv_clear),
            rcv_apply_w.addr.eq(widx),
            rcv_apply_w.data.eq(new_rcv),
            # a clear of the same window in the same cycle wins
            rcv_apply_w.en.eq(lk.commit & ~(rcv_clear & (cw[:aw] == widx))),
        ]
        with m.If(lk.commit & w_armed.bit_select(widx, 1) & (new_rcv >= w_exp)):
            m.d.comb += [set_done.eq(Const(1, 64) << widx), self.rx_irq.eq(1)]
        done = Signal(64)
        m.d.comb += self.done_bits.eq(done)
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
                    m.d.comb += [
                        clear_done.eq(self.done_clear | (Const(1, 64) << cw)),
                        armed_next.eq(w_armed & ~set_done[:nw] & ~bit),
                    ]
            with m.Case(WIN_EXPECT):
                # Arming a window that already received enough completes it at once
                # and leaves it disarmed (as the model: done once per EXPECT).
                with m.If(tables[WIN_RECEIVED][1] >= self.cfg_wdata):
                    m.d.comb += [
                        set_done_cfg.eq(Const(1, 64) << cw),
                        self.rx_irq.eq(1),
                        armed_next.eq(w_armed & ~set_done[:nw] & ~(Const(1, nw) << cw)),
                    ]
                with m.Else():
                    m.d.comb += armed_next.eq(w_armed & ~set_done[:nw] | (Const(1, nw) << cw))
        m.d.sync += [
            w_en.eq(en_next),
            w_armed.eq(armed_next),
            done.eq((done | set_done | set_done_cfg) & ~clear_done),
        ]
        return m


class RxApplier(wiring.Component):
    """Applies committed packets in order: lookup, write or reduce-add, trace, count.

    Parameters
    ----------
    regions, operand_bits, saturate, fp32, max_payload_words:
        As :class:`NicRx`'s.
    mem_addr_width:
        Width of a word address in a region.

    Attributes
    ----------
    packets : In(stream of PacketHeader)
        The next packet; taken (``ready``) in the last cycle of its application.
    payload : Out(payload_port_signature)
        Its payload words (at ``width_bytes`` 8 two a cycle, ``data`` and ``data1``:
        RUN takes ``ceil(payload_words / 2)`` cycles, the timing below with that count).
    lookup : Out(window_lookup_signature)
        Its window check and memory addresses (``RxWindowTable``).
    mem_rd_*, mem_wr_*, now, trace, error, packets_applied, bytes_applied, drops
        As :class:`NicRx`'s.

    Timing
    ------
    A packet valid in cycle ``c`` (applier idle) is latched in ``c``, checked
    in ``c + 1``, its payload word ``k`` read in ``c + 2 + k`` and written one
    cycle later; the cycle after the last read (``c + 2 + payload_words``)
    commits it, traces it and frees it: ``payload_words + 3`` cycles per packet.
    A held packet (``lookup.hold``) stays in its check cycle until the check
    passes in some cycle ``h``; everything after it is then ``h - c - 1`` later.
    ``holds`` counts packets held at least one cycle; while one is held
    (from the cycle after its first check) ``held_window`` is its window + 1
    and ``held_tag`` its tag, else both are 0.
    """

    def __init__(
        self,
        *,
        regions: tuple[tuple[int, int], ...],
        mem_addr_width: int,
        operand_bits: int,
        saturate: bool,
        max_payload_words: int,
        fp32: bool = False,
        width_bytes: int = 4,
    ):
        if fp32 and width_bytes == 8:
            raise ValueError("width_bytes must be 4 on an fp32 (bf16) node, not 8")
        self.operand_bits = operand_bits
        self.saturate = saturate
        self.fp32 = fp32
        self.width_bytes = width_bytes
        super().__init__(
            {
                "packets": In(stream.Signature(PacketHeader)),
                "payload": Out(payload_port_signature(max_payload_words, width_bytes)),
                "lookup": Out(
                    window_lookup_signature(mem_addr_width, len(regions), _lookup_bytes_bits(fp32))
                ),
                **_memory_ports(mem_addr_width, len(regions), fp32 or width_bytes == 8),
                **_report_ports(),
            }
        )

    def elaborate(self, platform):
        m = Module()
        aw = len(self.mem_rd_addr)
        region_bits = len(self.lookup.dst_region)
        a_win = Signal(8)
        a_reduce = Signal()
        a_pw = Signal(8)
        a_bf16 = Signal()  # a bf16 packet (fp32 builds): a word is two elements
        a_tag = Signal(32)
        a_addr = Signal(32)
        a_code = Signal(8)
        k = Signal(8)
        dst_w = Signal(aw)
        src_w = Signal(aw)
        dst_r = Signal(region_bits)
        src_r = Signal(region_bits)
        bytes_ = Signal(len(self.lookup.bytes))
        lk = self.lookup
        m.d.comb += [
            bytes_.eq(Mux(a_bf16, a_pw << 3, a_pw << 2) if self.fp32 else a_pw << 2),
            lk.window.eq(a_win),
            lk.tag.eq(a_tag),
            lk.addr.eq(a_addr),
            lk.bytes.eq(bytes_),
            lk.reduce.eq(a_reduce),
        ]

        held = Signal()  # the packet in CHECK was found for the window's next step
        m.d.comb += [
            self.held_window.eq(Mux(held, a_win + 1, 0)),
            self.held_tag.eq(Mux(held, a_tag, 0)),
        ]

        # Pipeline stage 2: write the word read in the previous cycle.
        p_valid = Signal()
        p_addr = Signal(aw)
        p_region = Signal(region_bits)
        p_reduce = Signal()
        p_bf16 = Signal()
        m.d.sync += p_valid.eq(0)
        payload = self.payload.data
        if self.fp32:
            word0 = self._fp32_words(m, p_reduce, p_bf16)
        else:
            summed = add_lanes(
                m, self.mem_rd_data, payload, self.operand_bits, self.saturate, "lane"
            )
            word0 = Mux(p_reduce, summed, payload)
        if self.width_bytes == 8:  # the second payload word of the cycle, the word after
            p_two = Signal()
            summed1 = add_lanes(
                m, self.mem_rd1_data, self.payload.data1, self.operand_bits, self.saturate, "lane1"
            )
            m.d.comb += [
                self.mem_rd1_addr.eq(self.mem_rd_addr + 1),
                self.mem_wr1_addr.eq(self.mem_wr_addr + 1),
                self.mem_wr1_data.eq(Mux(p_reduce, summed1, self.payload.data1)),
                self.mem_wr1_en.eq(self.mem_wr_en & p_two),
            ]
        with m.If(p_valid):
            m.d.comb += [
                self.mem_wr_addr.eq(p_addr),
                self.mem_wr_region.eq(p_region),
                self.mem_wr_data.eq(word0),
                self.mem_wr_en.eq(1),
            ]
        # a bf16 packet's word k covers elements 2k and 2k + 1 (fp32 builds)
        step = Mux(a_bf16, k << 1, k) if self.fp32 else k

        with m.FSM(name="apply"):
            with m.State("IDLE"), m.If(self.packets.valid):
                h = self.packets.p
                m.d.sync += [
                    a_win.eq(h.h0.window),
                    a_reduce.eq(h.h0.reduce),
                    *([a_bf16.eq(h.h0.bf16)] if self.fp32 else []),
                    a_pw.eq(h.h0.words_minus_1 + 1),
                    a_tag.eq(h.tag),
                    a_addr.eq(h.addr),
                ]
                m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(lk.hold):
                    # Receiver not ready: the packet is for the window's next step.  Check
                    # again next cycle, take nothing else meanwhile (the queue fills and the
                    # credits stop the sender).
                    m.d.sync += held.eq(1)
                    with m.If(~held):
                        m.d.sync += self.holds.eq(self.holds + 1)
                with m.Else():
                    # A refused packet takes the same time as an applied one but writes nothing.
                    m.d.sync += [
                        held.eq(0),
                        a_code.eq(lk.code),
                        dst_w.eq(lk.dst),
                        dst_r.eq(lk.dst_region),
                        src_w.eq(lk.src),
                        src_r.eq(lk.src_region),
                        k.eq(0),
                    ]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += [
                    self.payload.addr.eq(k),
                    self.payload.en.eq(1),
                    self.mem_rd_addr.eq(src_w + step),
                    self.mem_rd_region.eq(src_r),
                ]
                m.d.sync += [
                    p_valid.eq(a_code == 0),
                    p_addr.eq(dst_w + step),
                    p_region.eq(dst_r),
                    p_reduce.eq(a_reduce),
                    *([p_bf16.eq(a_bf16)] if self.fp32 else []),
                ]
                if self.width_bytes == 8:  # two payload words a cycle (one last if odd)
                    m.d.sync += [p_two.eq(k + 1 < a_pw), k.eq(k + 2)]
                    with m.If(k + 2 >= a_pw):
                        m.next = "LAST"
                else:
                    m.d.sync += k.eq(k + 1)
                    with m.If(k + 1 == a_pw):
                        m.next = "LAST"
            with m.State("LAST"):
                t = self.trace
                m.d.comb += [
                    self.packets.ready.eq(1),
                    t.valid.eq(1),
                    t.cycle.eq(self.now + 1),
                    t.engine.eq(ENGINE_NIC_RX),
                    t.event.eq(EVENT_END),
                    t.kind.eq(KIND_RECV),
                    t.tag.eq(a_tag),
                    t.aux.eq(Mux(a_code == 0, bytes_, 0)),
                ]
                with m.If(a_code == 0):
                    m.d.comb += lk.commit.eq(1)
                    m.d.sync += [
                        self.packets_applied.eq(self.packets_applied + 1),
                        self.bytes_applied.eq(self.bytes_applied + bytes_),
                    ]
                with m.Else():
                    e = self.error
                    m.d.comb += [
                        e.valid.eq(1),
                        e.code.eq(a_code),
                        e.engine.eq(ENGINE_NIC_RX),
                        e.index.eq(a_win),
                        e.info.eq(a_tag),
                    ]
                    m.d.sync += self.drops.eq(self.drops + 1)
                m.next = "IDLE"
        return m

    def _fp32_words(self, m: Module, p_reduce, p_bf16):
        """The fp32 write stage (``docs/numerics.md``): the word for ``mem_wr_data``; drives
        the second write port (a bf16 packet's odd element, the word after).

        fp32 packet: ``dst = g + p`` or ``p``.  bf16 packet, for each half ``p`` and its
        local element ``g``, ``w = bf16_to_fp32(p)``: ``dst = r(fp32_add(r(g), w))`` or
        ``w``.  Element 0 shares the fp32 packet's adder.  Combinational.
        """
        payload = self.payload.data
        w0 = bf16_to_fp32(m, payload[:16], "rx_w0")
        w1 = bf16_to_fp32(m, payload[16:], "rx_w1")
        g0 = round_to_bf16(m, self.mem_rd_data, "rx_g0")
        g1 = round_to_bf16(m, self.mem_rd1_data, "rx_g1")
        sum0 = fp32_add(
            m, Mux(p_bf16, g0, self.mem_rd_data), Mux(p_bf16, w0, payload), "reduce_fp32"
        )
        sum1 = fp32_add(m, g1, w1, "reduce_bf16_hi")
        sum0_r = round_to_bf16(m, sum0, "rx_sum0")
        sum1_r = round_to_bf16(m, sum1, "rx_sum1")
        word0 = Mux(p_reduce, Mux(p_bf16, sum0_r, sum0), Mux(p_bf16, w0, payload))
        m.d.comb += [
            self.mem_rd1_addr.eq(self.mem_rd_addr + 1),
            self.mem_wr1_addr.eq(self.mem_wr_addr + 1),
            self.mem_wr1_data.eq(Mux(p_reduce, sum1_r, w1)),
            self.mem_wr1_en.eq(self.mem_wr_en & p_bf16),
        ]
        return word0


class NicRx(wiring.Component):
    """Receiver: CRC and sequence check, commit, window check, reduce-add into memory.

    :class:`RxFrontEnd`, :class:`RxWindowTable` and :class:`RxApplier` (module docstring)
    joined with ``wiring.connect``.

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
        (the node's SRAMs: scratchpad and gradient).  A packet is
        applied only if its destination range -- and, for a reduce-add, its
        source range -- lies inside one region and is 32-bit aligned; else
        it is refused with ``RX_OUT_OF_WINDOW`` like a packet outside its
        window.  The memory ports address 32-bit words
        ``(addr - base) >> 2`` of a region, with the region's index beside.
    operand_bits, saturate:
        Operand format of the fixed-point reduce-add (8, 16 or 32 bits per lane).
    fp32:
        Reduce-add fp32 elements instead (a bf16 node's gradient SRAM): each 32-bit
        payload word and the local 32-bit word it meets (two SRAM words, low half
        first) are one fp32 value each, summed by :func:`hw.fp.fp32_add` (flush to
        zero, round to nearest even, canonical NaN); ``operand_bits`` and
        ``saturate`` are then unused.  Combinational, so the timing below holds in
        both formats.  A packet with H0's ``bf16`` bit then covers ``2 * payload``
        bytes at H2 (window and region checks, RECEIVED, RX trace aux, ``bytes_applied``):
        payload word ``k`` is elements ``2k`` (bits 15:0) and ``2k + 1``, read through
        ``mem_rd_*`` and ``mem_rd1_*`` and written through ``mem_wr_*`` and
        ``mem_wr1_*`` (the word after) in the same cycle: ``dst = w`` or ``dst =
        r(fp32_add(r(g), w))``, ``w`` the widened half, ``r`` :func:`round_to_bf16`.
        Without the bit (and in fixed-point builds) a packet is applied as before.
    nak_holdoff_cycles:
        After a NAK the receiver NAKs again only when the expected packet
        arrived or this many cycles passed (about one round trip), so a lost
        resend is NAKed again instead of waiting for the sender's timeout;
        also the longest gap between acknowledge messages (a repeat).  The
        reset value of ``run_nak_holdoff``.
    seq_start:
        The first sequence number expected (the sender's ``seq_start``).
    width_bytes:
        The link datapath (``HardwareConfig.link_width_bytes``, not with ``fp32``): 8
        takes beats of up to two words (at any link bandwidth) and applies two payload
        words per cycle through the second memory ports (``mem_rd1_*``/``mem_wr1_*``, the
        word after), a packet occupying the applier ``ceil(payload_words / 2) + 3``
        cycles (``gradsync.spec.timing.rx_apply_cycles``), so it keeps up with 8
        bytes/cycle.

    Attributes
    ----------
    run_nak_holdoff : In(16), run_payload_words : In(8)
        The current NAK hold-off in cycles (``nic_timeouts`` of the node's link as
        set, ``LINK_SET``) and maximum payload in words (a longer packet is dropped
        like a bad CRC); undriven: ``nak_holdoff_cycles``, ``max_payload_words``.
    link : In(stream of link_beat(width_bytes))
        From the link; always ready (the receiver absorbs a beat per cycle: one word,
        or two on a ``width_bytes`` 8 link).
    ack : Out(stream of AckMessage)
        Acknowledgements/credits/NAKs back to the transmitter.
    mem_rd_addr, mem_rd_region, mem_rd_data, mem_wr_addr, mem_wr_region, mem_wr_data, mem_wr_en
        Device memory ports (word address in the region, region index):
        synchronous read (data one cycle after the address), write.
    mem_rd1_addr, mem_rd1_data, mem_wr1_addr, mem_wr1_data, mem_wr1_en
        Only with ``fp32``: a second read and write port in the same regions
        (``mem_rd_region``, ``mem_wr_region``) at the word after, for a bf16
        packet's odd elements.
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
    holds, held_window, held_tag : Out
        Packets held for their window's next step; the one held now (window + 1, tag;
        0 when none), see :class:`RxApplier`.

    Timing
    ------
    A packet whose CRC word arrives in cycle ``c`` has its last payload word
    written, its window's RECEIVED updated and its done bit/IRQ raised so that
    they are visible in cycle ``c + 4 + payload_words`` (if the receiver was
    idle and the packet is not held); a packet refused by the window checks
    takes the same time, writes nothing and counts a drop instead.  A packet
    for its window's next step is held until the window's TAG is written
    (module docstring).  Packets are applied in order, one at a
    time, each occupying the applier ``payload_words + 3`` cycles, so at 4
    link bytes per cycle the receiver never queues a fault-free stream.
    """

    def __init__(
        self,
        *,
        max_payload_words: int = 64,
        credits: int = 16,
        windows: int = 64,
        regions: tuple[tuple[int, int], ...] = ((rm.GRAD_BASE, 1 << 16),),
        operand_bits: int = 16,
        saturate: bool = True,
        fp32: bool = False,
        nak_holdoff_cycles: int = 256,
        seq_start: int = 0,
        width_bytes: int = 4,
    ):
        if width_bytes not in (4, 8) or (fp32 and width_bytes == 8):
            raise ValueError(
                f"width_bytes must be 4, or 8 on a node that is not fp32, not {width_bytes!r}"
            )
        self.width_bytes = width_bytes
        if not 1 <= windows <= 64:
            raise ValueError(f"windows must be in 1..64, not {windows!r}")
        if operand_bits not in (8, 16, 32):
            raise ValueError(f"operand_bits must be 8, 16 or 32, not {operand_bits!r}")
        if not 1 <= max_payload_words <= 128:
            raise ValueError(f"max_payload_words must be in 1..128, not {max_payload_words!r}")
        regions = tuple(tuple(r) for r in regions)
        if not regions or any(
            len(r) != 2 or r[0] % 4 or r[1] < 4 or r[0] + r[1] > 1 << 32 for r in regions
        ):
            raise ValueError(
                "regions must be (base, bytes) pairs with 4-byte aligned bases, "
                f"at least 4 bytes, inside the 32-bit address space, not {regions!r}"
            )
        self.max_payload_words = max_payload_words
        self.credits = credits
        self.nak_holdoff_cycles = nak_holdoff_cycles
        self.seq_start = seq_start
        self.windows = windows
        self.regions = regions
        self.mem_addr_width = max(1, ceil_log2(max(size for _, size in regions) // 4))
        self.operand_bits = operand_bits
        self.saturate = saturate
        self.fp32 = fp32
        #: second memory ports (``mem_rd1_*``, ``mem_wr1_*``): fp32, or width 8
        self.two_ports = fp32 or width_bytes == 8
        self.stride = HEADER_WORDS + max_payload_words
        self.slots = credits + 1
        super().__init__(
            {
                "run_nak_holdoff": In(16, init=nak_holdoff_cycles),
                "run_payload_words": In(8, init=max_payload_words),
                **_link_ports(width_bytes),
                **_memory_ports(self.mem_addr_width, len(regions), self.two_ports),
                **_window_register_ports(),
                **_report_ports(),
                **_arrival_counter_ports(),
            }
        )

    def elaborate(self, platform):
        m = Module()
        m.submodules.front = front = RxFrontEnd(
            max_payload_words=self.max_payload_words,
            credits=self.credits,
            nak_holdoff_cycles=self.nak_holdoff_cycles,
            seq_start=self.seq_start,
            width_bytes=self.width_bytes,
        )
        m.submodules.windows = windows = RxWindowTable(
            windows=self.windows,
            regions=self.regions,
            mem_addr_width=self.mem_addr_width,
            bytes_bits=_lookup_bytes_bits(self.fp32),
        )
        m.submodules.applier = applier = RxApplier(
            regions=self.regions,
            mem_addr_width=self.mem_addr_width,
            operand_bits=self.operand_bits,
            saturate=self.saturate,
            max_payload_words=self.max_payload_words,
            fp32=self.fp32,
            width_bytes=self.width_bytes,
        )
        m.d.comb += [
            front.run_nak_holdoff.eq(self.run_nak_holdoff),
            front.run_payload_words.eq(self.run_payload_words),
        ]
        wiring.connect(m, wiring.flipped(self.link), front.link)
        wiring.connect(m, wiring.flipped(self.ack), front.ack)
        wiring.connect(m, front.packets, applier.packets)
        wiring.connect(m, applier.payload, front.payload)
        wiring.connect(m, applier.lookup, windows.lookup)
        # The flat ports of NicRx (Node's and the tests' view), each owned by one part.
        for part, ports in (
            (front, _arrival_counter_ports()),
            (windows, _window_register_ports()),
            (
                applier,
                {
                    **_memory_ports(self.mem_addr_width, len(self.regions), self.two_ports),
                    **_report_ports(),
                },
            ),
        ):
            for name, member in ports.items():
                outer, inner = getattr(self, name), getattr(part, name)
                m.d.comb += inner.eq(outer) if member.flow is In else outer.eq(inner)
        return m
