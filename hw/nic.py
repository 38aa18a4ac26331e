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

from .link import AckMessage, LinkBeat, ack_check
from .nic_rx import NicRx
from .packet import HEADER_WORDS, TxWord, crc32, header0

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

    Attributes
    ----------
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
    ):
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
                "run_timeout": In(16, init=timeout_cycles),
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
            }
        )

    def elaborate(self, platform):
        m = Module()
        W = self.window_packets
        m.submodules.replay = replay = Memory(shape=32, depth=W * self.stride, init=[])
        wr = replay.write_port()
        rd = replay.read_port()
        m.submodules.crc = crcp = crc.Processor(crc32())

        seq_next = Signal(16, init=self.seq_start)
        una = Signal(16, init=self.seq_start)
        limit = Signal(16, init=(self.seq_start + self.credits) & 0xFFFF)
        resend_pending = Signal()
        rs = Signal(16)  # sequence number being resent
        ridx = Signal(range(self.stride + 1))  # word index on the replay read port
        rtotal = Signal(range(self.stride + 1))
        widx = Signal(range(self.stride + 1))
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
        return m
