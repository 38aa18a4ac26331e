"""Network interface: reliable packet transmission and windowed reduce-add on receive.

The NIC of ``DESIGN.md`` ("NIC + links"), in two components joined by a
:class:`~gradsync.hw.link.Link` per direction:

* :class:`NicTx` takes the DMA engine's packets (header + payload words),
  stamps a sequence number, appends a CRC-32, keeps a copy in a replay buffer
  and resends everything from the oldest unacknowledged packet (go-back-N) on
  a NAK or a timeout.  New packets also need a credit from the receiver.
* :class:`NicRx` (``hw/nic_rx.py``, imported here) stores each arriving
  packet, checks its CRC and sequence number, commits good in-order packets
  (acknowledging them), and applies them one at a time to the gradient memory
  after checking them against the RX window the firmware opened and against
  the device memory it may touch: a plain write or a saturating reduce-add
  ``dst[i] = sat(src[i] + payload[i])``.  Every packet is applied exactly once.

The packet format (header words, CRC) is ``hw/packet.py``'s, its byte counts
``gradsync.spec.link``'s.

Link-level acknowledgement and credits travel on the link's sideband as
:data:`~gradsync.hw.link.AckMessage`: ``exp`` is the next sequence number the
receiver expects (cumulative ACK of everything before it), ``limit`` the first
sequence number it has no buffer credit for (applied packets + credits), both
cumulative so a lost message is repaired by the next one; ``nak`` asks for a
resend from ``exp``.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import crc, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from .link import AckMessage, ack_check, link_beat
from .nic_rx import NicRx
from .packet import (
    CRC_INIT,
    HEADER_WORDS,
    TxWord,
    crc32,
    crc32_step,
    crc32_value,
    header0,
    tx_beat,
)

__all__ = ["HEADER_WORDS", "NicRx", "NicTx", "TxWord", "header0"]


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
        outstanding, after which everything unacknowledged is resent: the
        reset value of ``run_timeout``.
    seq_start:
        The first sequence number (the receiver's ``seq_start`` must match);
        tests start near 65535 to exercise the 16-bit wrap.
    width_bytes:
        The link datapath (``HardwareConfig.link_width_bytes``): 4, a word per
        beat, or 8, ``pkt`` and ``link`` carry beats of two words
        (``packet.TxBeat``, ``link.LinkBeat2``).  At 8 bytes/cycle (``run_pair``)
        the packet's words go two per beat, the CRC word in the second half of
        the last payload beat if that holds one word, else in a beat of its own
        (``gradsync.spec.link.packet_cycles`` beats per packet, back to back); at
        1, 2 or 4 a word per beat as at width 4.  Resends go the same way.

    Attributes
    ----------
    run_pair : In(1) (width 8 only)
        The link runs at 8 bytes/cycle (two words per beat).
    run_timeout : In(16)
        The current retransmission timeout in cycles (``nic_timeouts`` of the
        node's link as set, ``LINK_SET``); the counter fires once it reaches
        ``run_timeout - 1``, at once if a lowered timeout is already behind it.
        Undriven: ``timeout_cycles``.
    pkt : In(stream of TxWord)
        Packets from the DMA engine; H0's sequence field must be 0.  A new
        packet starts in the same cycle it is offered if the link is ready, a
        replay slot and a credit are free and no resend is pending; its words
        then pass straight through (``ready`` follows the link's ``ready``),
        and after its last word ``ready`` is low for the one cycle in which
        the CRC word is sent.  So packets offered back to back leave
        ``header + payload + 1`` cycles apart, the timing of ``gradsync.spec.timing``.
    link : Out(stream of LinkBeat)
        To the link.
    ack : In(stream of AckMessage)
        From the link's sideband; a message whose ``chk`` is wrong (corrupted
        on the way) is ignored like a lost one.
    crc_sent : Out(1)
        Pulses in the cycle the CRC word of a *new* packet is accepted.
    packets_sent, bytes_sent, busy_cycles, retransmits, timeouts, naks : Out(32)
        New packets / payload bytes sent, cycles the link was driven, packets
        resent, timeouts and NAKs acted on, since reset.
    """

    def __init__(
        self,
        *,
        max_payload_words: int = 64,
        window_packets: int = 16,
        credits: int = 16,
        timeout_cycles: int = 1024,
        seq_start: int = 0,
        width_bytes: int = 4,
    ):
        if width_bytes not in (4, 8):
            raise ValueError(f"width_bytes must be 4 or 8, not {width_bytes!r}")
        self.width_bytes = width_bytes
        if not 1 <= max_payload_words <= 128:
            raise ValueError(f"max_payload_words must be in 1..128, not {max_payload_words!r}")
        if window_packets < 1 or window_packets & (window_packets - 1) or window_packets > 1 << 14:
            raise ValueError(
                f"window_packets must be a power of 2 in 1..16384, not {window_packets!r}"
            )
        if not 1 <= credits < 1 << 15:
            raise ValueError(f"credits must be in 1..32767, not {credits!r}")
        if timeout_cycles < 1:
            raise ValueError(f"timeout_cycles must be >= 1, not {timeout_cycles!r}")
        if timeout_cycles >= 1 << 16:
            raise ValueError(f"timeout_cycles must be below 65536, not {timeout_cycles!r}")
        if not 0 <= seq_start < 1 << 16:
            raise ValueError(f"seq_start must be in 0..65535, not {seq_start!r}")
        self.seq_start = seq_start
        self.max_payload_words = max_payload_words
        self.window_packets = window_packets
        self.credits = credits
        self.timeout_cycles = timeout_cycles
        self.stride = HEADER_WORDS + max_payload_words
        super().__init__(
            {
                **({"run_pair": In(1)} if width_bytes == 8 else {}),
                "run_timeout": In(16, init=timeout_cycles),
                "pkt": In(stream.Signature(tx_beat(width_bytes))),
                "link": Out(stream.Signature(link_beat(width_bytes))),
                "ack": In(stream.Signature(AckMessage, always_ready=True)),
                "crc_sent": Out(1),
                "packets_sent": Out(32),
                "bytes_sent": Out(32),
                "busy_cycles": Out(32),
                "retransmits": Out(32),
                "timeouts": Out(32),
                "naks": Out(32),
            }
        )

    def elaborate(self, platform):
        if self.width_bytes == 8:
            return self._elaborate_wide()
        m = Module()
        W = self.window_packets
        m.submodules.replay = replay = Memory(shape=32, depth=W * self.stride, init=[])
        wr = replay.write_port()
        rd = replay.read_port()
        m.submodules.crc = crcp = crc.Processor(crc32())

        (seq_next, una, limit, resend_pending, rs, ridx, rtotal, widx, pw, timer, outstanding,
         can_new, slot_new, slot_rs) = self._sender_state(m, self.stride + 1)  # fmt: skip

        with m.If(self.link.valid):
            m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)

        fire = self.link.valid & self.link.ready
        resending = Signal()

        with m.FSM(name="tx"):
            with m.State("IDLE"):
                with m.If(resend_pending):
                    m.d.sync += resend_pending.eq(0)
                    with m.If(una != seq_next):
                        m.d.comb += rd.addr.eq(una[: exact_log2(W)] * self.stride if W > 1 else 0)
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
                # 16 bits: rs + 1 alone is 17 bits wide and never equals seq_next after
                # 0xFFFF (a resend across the wrap went on through all 65536 numbers)
                nxt = Signal(16)
                m.d.comb += nxt.eq(rs + 1)
                nslot = nxt[: exact_log2(W)] if W > 1 else Const(0, 1)
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

        self._acks(m, una, seq_next, limit, outstanding, resending, resend_pending, timer)
        return m

    def _sender_state(self, m, index_end: int) -> tuple:
        """The go-back-N state of both widths: (seq_next, una, limit, resend_pending, rs,
        ridx, rtotal, widx, pw, timer, outstanding, can_new, slot_new, slot_rs); word
        indices run to ``index_end`` (exclusive)."""
        W = self.window_packets
        seq_next = Signal(16, init=self.seq_start)
        una = Signal(16, init=self.seq_start)
        limit = Signal(16, init=(self.seq_start + self.credits) & 0xFFFF)
        resend_pending = Signal()
        rs = Signal(16)  # sequence number being resent
        ridx = Signal(range(index_end))  # word index on the replay read port
        rtotal = Signal(range(index_end))
        widx = Signal(range(index_end))
        pw = Signal(8)  # payload words of the new packet in flight
        timer = Signal(16)
        outstanding = Signal(16)
        credit_ok = Signal()
        can_new = Signal()
        m.d.comb += [
            outstanding.eq(seq_next - una),
            credit_ok.eq((seq_next - limit)[15]),
            can_new.eq((outstanding < W) & credit_ok & ~resend_pending),
        ]
        slot_new = seq_next[: exact_log2(W)] if W > 1 else Const(0, 1)
        slot_rs = rs[: exact_log2(W)] if W > 1 else Const(0, 1)
        return (seq_next, una, limit, resend_pending, rs, ridx, rtotal, widx, pw, timer,
                outstanding, can_new, slot_new, slot_rs)  # fmt: skip

    def _acks(self, m, una, seq_next, limit, outstanding, resending, resend_pending, timer):
        """Acknowledgements (cumulative), NAKs and the retransmission timeout."""
        # Acknowledgements (cumulative) and NAKs.
        advanced = Signal()
        with m.If(self.ack.valid & (self.ack.p.chk == ack_check(self.ack.p))):
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
        with m.Elif(timer + 1 >= self.run_timeout):
            m.d.sync += [timer.eq(0), resend_pending.eq(1), self.timeouts.eq(self.timeouts + 1)]
        with m.Else():
            m.d.sync += timer.eq(timer + 1)

    def _elaborate_wide(self):
        """The 64-bit transmitter (``width_bytes`` 8; class docstring): the FSM of
        :meth:`elaborate` on beats of up to two words, the CRC folded combinationally."""
        m = Module()
        W = self.window_packets
        stride = self.stride
        m.submodules.replay = replay = Memory(shape=32, depth=W * stride, init=[])
        wr, wr1 = replay.write_port(), replay.write_port()
        rd, rd1 = replay.read_port(), replay.read_port()
        pair = self.run_pair
        creg = Signal(32, init=CRC_INIT)  # CRC register of the words sent so far

        (seq_next, una, limit, resend_pending, rs, ridx, rtotal, widx, pw, timer, outstanding,
         can_new, slot_new, slot_rs) = self._sender_state(m, stride + 2)  # fmt: skip
        m.d.comb += rd1.addr.eq(rd.addr + 1)
        with m.If(self.link.valid):
            m.d.sync += self.busy_cycles.eq(self.busy_cycles + 1)
        fire = self.link.valid & self.link.ready
        resending = Signal()
        link = self.link.p
        lo, hi, two = Signal(32), Signal(32), Signal()
        m.d.comb += [link.data.eq(lo), link.data1.eq(hi), link.two.eq(two)]

        def store(base, index):
            """Keep the beat's words in the replay slot at ``base + index`` (and the next)."""
            m.d.comb += [
                wr.addr.eq(base + index),
                wr.data.eq(lo),
                wr.en.eq(fire),
                wr1.addr.eq(base + index + 1),
                wr1.data.eq(hi),
                wr1.en.eq(fire & two & ~link.last),
            ]

        def fold(base):
            """The CRC register after this beat's data words (``hi`` only if it is data)."""
            one = crc32_step(m, base, lo, "crc_lo")
            return Mux(two & ~link.last, crc32_step(m, one, hi, "crc_hi"), one)

        def new_done():
            m.d.sync += [
                seq_next.eq(seq_next + 1),
                self.packets_sent.eq(self.packets_sent + 1),
                self.bytes_sent.eq(self.bytes_sent + (pw << 2)),
            ]

        with m.FSM(name="tx"):
            with m.State("IDLE"):
                with m.If(resend_pending):
                    m.d.sync += resend_pending.eq(0)
                    with m.If(una != seq_next):
                        m.d.comb += rd.addr.eq(una[: exact_log2(W)] * stride if W > 1 else 0)
                        m.d.sync += [rs.eq(una), ridx.eq(0)]
                        m.next = "RESEND"
                with m.Elif(self.pkt.valid & can_new):
                    m.d.comb += [
                        self.link.valid.eq(1),
                        lo.eq(self.pkt.p.data | (seq_next << 16)),
                        hi.eq(self.pkt.p.data1),
                        two.eq(self.pkt.p.two),
                        self.pkt.ready.eq(self.link.ready),
                    ]
                    store(slot_new * stride, 0)
                    with m.If(fire):
                        m.d.sync += [
                            creg.eq(fold(CRC_INIT)),
                            widx.eq(1 + two),
                            pw.eq(self.pkt.p.data[9:16] + 1),
                        ]
                        m.next = "NEW"
            with m.State("NEW"):
                # 8 bytes/cycle: a last beat of one word takes the CRC in its second half
                merge = pair & self.pkt.p.last & ~self.pkt.p.two
                m.d.comb += [
                    self.link.valid.eq(self.pkt.valid),
                    lo.eq(self.pkt.p.data),
                    hi.eq(
                        Mux(
                            merge, crc32_value(crc32_step(m, creg, lo, "crc_new")), self.pkt.p.data1
                        )
                    ),
                    two.eq(self.pkt.p.two | merge),
                    link.last.eq(merge),
                    self.pkt.ready.eq(self.link.ready),
                    self.crc_sent.eq(fire & merge),
                ]
                store(slot_new * stride, widx)
                with m.If(fire):
                    m.d.sync += [creg.eq(fold(creg)), widx.eq(widx + 1 + two)]
                    with m.If(merge):
                        new_done()
                        m.next = "IDLE"
                    with m.Elif(self.pkt.p.last):
                        m.next = "NEW_CRC"
            with m.State("NEW_CRC"):
                m.d.comb += [
                    self.link.valid.eq(1),
                    lo.eq(crc32_value(creg)),
                    link.last.eq(1),
                    self.crc_sent.eq(self.link.ready),
                ]
                with m.If(self.link.ready):
                    new_done()
                    m.next = "IDLE"
            nxt = Signal(16)  # 16 bits: see elaborate (the wrap)
            m.d.comb += nxt.eq(rs + 1)
            nslot = nxt[: exact_log2(W)] if W > 1 else Const(0, 1)

            def resend_done():
                m.d.comb += rd.addr.eq(nslot * stride)
                m.d.sync += [self.retransmits.eq(self.retransmits + 1), rs.eq(nxt), ridx.eq(0)]
                with m.If(nxt == seq_next):
                    m.next = "IDLE"
                with m.Else():
                    m.next = "RESEND"

            with m.State("RESEND"):
                # rd/rd1 hold words ridx and ridx + 1 of packet rs (addresses of last cycle)
                total = Mux(ridx == 0, HEADER_WORDS + 1 + rd.data[9:16], rtotal)
                base = Mux(ridx == 0, CRC_INIT, creg)
                merge = pair & (ridx + 1 == total)
                step = Mux(pair, 2, 1)
                m.d.comb += [
                    resending.eq(1),
                    self.link.valid.eq(1),
                    lo.eq(rd.data),
                    hi.eq(Mux(merge, crc32_value(crc32_step(m, base, lo, "crc_re")), rd1.data)),
                    two.eq(pair),
                    link.last.eq(merge),
                    rd.addr.eq(slot_rs * stride + ridx),
                ]
                with m.If(ridx == 0):
                    m.d.sync += rtotal.eq(total)
                with m.If(fire & merge):
                    resend_done()
                with m.Elif(fire):
                    m.d.comb += rd.addr.eq(slot_rs * stride + ridx + step)
                    m.d.sync += [creg.eq(fold(base)), ridx.eq(ridx + step)]
                    with m.If(ridx + step == total):
                        m.next = "RESEND_CRC"
            with m.State("RESEND_CRC"):
                m.d.comb += [
                    resending.eq(1),
                    self.link.valid.eq(1),
                    lo.eq(crc32_value(creg)),
                    link.last.eq(1),
                ]
                m.d.comb += rd.addr.eq(nslot * stride)
                with m.If(self.link.ready):
                    resend_done()
        self._acks(m, una, seq_next, limit, outstanding, resending, resend_pending, timer)
        return m
