"""Point-to-point link between two nodes: bandwidth, latency and injectable faults.

The link of ``DESIGN.md`` ("NIC + links"): one direction of a node-to-node
connection.  It carries the transmitting NIC's packets (32-bit words framed by
a ``last`` flag, i.e. the physical layer's end-of-packet symbol) forward, and
the receiving NIC's acknowledge/credit messages backward on a sideband lane.
Both directions take ``latency_cycles``.  Faults are injected per packet
(drop it, flip one bit of one of its first four words) and per cycle (stall
the transmitter for a random number of cycles) at rates the testbench sets
through ports, so a long fault campaign costs no Python per packet.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

#: One link word: 32 bits of packet data and the end-of-packet flag.
LinkBeat = data.StructLayout({"data": 32, "last": 1})

#: The receiver's acknowledge/credit message (see ``hw/nic.py``).
AckMessage = data.StructLayout({"exp": 16, "limit": 16, "nak": 1})

#: Fault-injection control ports of a link and their widths (a cluster exposes them
#: per link as ``l{i}_<name>``; ``sim/rtl_backend.py``'s ``--link-faults`` drives them).
LINK_CONTROLS = {
    "corrupt_rate": 16,
    "drop_rate": 16,
    "stall_rate": 16,
    "stall_max": 8,
    "seed": 32,
    "seed_load": 1,
}
#: Counter ports of a link (32 bits each; ``l{i}_<name>`` of a cluster).
LINK_COUNTERS = ("packets", "corrupted", "dropped", "stalls")


def link_fault_ports() -> dict:
    """The fault controls (in) and counters (out) of one link, as a signature dict."""
    ports = {name: In(width) for name, width in LINK_CONTROLS.items()}
    ports.update({name: Out(32) for name in LINK_COUNTERS})
    return ports


def _xorshift32(x):
    """One step of Marsaglia's xorshift32 on an Amaranth value (never reaches 0 from non-zero)."""
    x = x ^ (x << 13)[:32]
    x = x ^ (x >> 17)
    x = x ^ (x << 5)[:32]
    return x


class Link(wiring.Component):
    """One direction of a node-to-node link with fault injection.

    Parameters
    ----------
    latency_cycles:
        Cycles from a word being accepted on ``tx`` to it appearing on ``rx``
        (and from ``ack_tx`` to ``ack_rx``).  0 makes the link combinational.
    bytes_per_cycle:
        Link bandwidth: 4 accepts one 32-bit word per cycle; 1 or 2 accept one
        word every ``4 / bytes_per_cycle`` cycles.

    Attributes
    ----------
    tx : In(stream of LinkBeat)
        Transmitter side.  ``ready`` is low while the link is throttled to its
        bandwidth or stalled by fault injection; words are never lost because
        of back-pressure.
    rx : Out(stream of LinkBeat, always ready)
        Receiver side: every accepted word arrives ``latency_cycles`` later,
        unless its packet was dropped (then no word of it arrives) or
        corrupted (then one data bit of one of its first four words is
        flipped; framing is never corrupted).
    ack_tx, ack_rx : sideband AckMessage stream, receiver to transmitter.
        Modelled as a protected control lane: delayed, never faulted.
    corrupt_rate, drop_rate : In(16)
        Per-packet probability ``rate / 65536`` of corrupting / dropping it,
        decided at its first word (a packet is dropped or corrupted, not both).
    stall_rate : In(16), stall_max : In(8)
        Per-cycle probability ``rate / 65536`` of stalling ``tx`` for
        ``1 + (r * stall_max >> 8)`` cycles, ``r`` random in 0..255.
    seed : In(32), seed_load : In(1)
        Reseeds the fault generators (``seed`` must be non-zero), also while
        reset is held: the generators themselves are never reset.
    packets, corrupted, dropped, stalls : Out(32)
        Packets carried and faults injected since reset.
    """

    def __init__(self, latency_cycles: int, bytes_per_cycle: int = 4):
        if not isinstance(latency_cycles, int) or latency_cycles < 0:
            raise ValueError(f"latency_cycles must be an int >= 0, not {latency_cycles!r}")
        if bytes_per_cycle not in (1, 2, 4):
            raise ValueError(f"bytes_per_cycle must be 1, 2 or 4, not {bytes_per_cycle!r}")
        self.latency_cycles = latency_cycles
        self.bytes_per_cycle = bytes_per_cycle
        super().__init__(
            {
                "tx": In(stream.Signature(LinkBeat)),
                "rx": Out(stream.Signature(LinkBeat, always_ready=True)),
                "ack_tx": In(stream.Signature(AckMessage, always_ready=True)),
                "ack_rx": Out(stream.Signature(AckMessage, always_ready=True)),
                **link_fault_ports(),
            }
        )

    def _delay(self, m: Module, valid, payload, width: int):
        """``latency_cycles`` register stages; returns (valid, payload) at the far end."""
        v, p = valid, payload
        for i in range(self.latency_cycles):
            nv = Signal(name=f"dly_v{width}_{i}")
            np_ = Signal(width, name=f"dly_p{width}_{i}")
            m.d.sync += [nv.eq(v), np_.eq(p)]
            v, p = nv, np_
        return v, p

    def elaborate(self, platform):
        m = Module()

        # The generators are not reset: a seed loaded while reset is held (as
        # the RTL backend does) takes effect, and reset alone does not replay
        # the previous sequence.
        rng_pkt = Signal(32, init=0x1234_5678, reset_less=True)
        rng_cyc = Signal(32, init=0x9E37_79B9, reset_less=True)
        with m.If(self.seed_load):
            m.d.sync += [rng_pkt.eq(self.seed | 1), rng_cyc.eq(self.seed ^ 0x9E37_79B9 | 2)]
        with m.Else():
            m.d.sync += [rng_pkt.eq(_xorshift32(rng_pkt)), rng_cyc.eq(_xorshift32(rng_cyc))]

        # Bandwidth throttle and stall injection both hold tx.ready low.
        period = 4 // self.bytes_per_cycle
        gap = Signal(range(period))
        stall = Signal(9)
        m.d.comb += self.tx.ready.eq((gap == 0) & (stall == 0))
        accepted = self.tx.valid & self.tx.ready
        if period > 1:
            with m.If(accepted):
                m.d.sync += gap.eq(period - 1)
            with m.Elif(gap != 0):
                m.d.sync += gap.eq(gap - 1)
        with m.If(stall != 0):
            m.d.sync += stall.eq(stall - 1)
        with m.Elif((rng_cyc[8:24] < self.stall_rate) & (self.stall_max != 0)):
            m.d.sync += [
                stall.eq(1 + ((rng_cyc[24:32] * self.stall_max) >> 8)),
                self.stalls.eq(self.stalls + 1),
            ]

        # Per-packet fault decision at the first word, held for the packet.
        in_packet = Signal()
        word = Signal(3)
        drop_pkt = Signal()
        corrupt_pkt = Signal()
        corrupt_word = Signal(2)
        corrupt_bit = Signal(5)
        first = ~in_packet
        drop_now = Signal()
        corrupt_now = Signal()
        cword_now = Signal(2)
        cbit_now = Signal(5)
        m.d.comb += [
            drop_now.eq(Mux(first, rng_pkt[0:16] < self.drop_rate, drop_pkt)),
            corrupt_now.eq(
                Mux(
                    first,
                    ~(rng_pkt[0:16] < self.drop_rate) & (rng_pkt[16:32] < self.corrupt_rate),
                    corrupt_pkt,
                )
            ),
            cword_now.eq(Mux(first, rng_cyc[0:2], corrupt_word)),
            cbit_now.eq(Mux(first, rng_cyc[2:7], corrupt_bit)),
        ]
        with m.If(accepted):
            m.d.sync += in_packet.eq(~self.tx.p.last)
            with m.If(first):
                m.d.sync += [
                    drop_pkt.eq(drop_now),
                    corrupt_pkt.eq(corrupt_now),
                    corrupt_word.eq(cword_now),
                    corrupt_bit.eq(cbit_now),
                    self.packets.eq(self.packets + 1),
                    self.dropped.eq(self.dropped + drop_now),
                    self.corrupted.eq(self.corrupted + corrupt_now),
                ]
            with m.If(self.tx.p.last):
                m.d.sync += word.eq(0)
            with m.Elif(word != 7):
                m.d.sync += word.eq(word + 1)

        flip = Signal(32)
        with m.If(corrupt_now & (word == cword_now)):
            m.d.comb += flip.eq(Const(1, 32) << cbit_now)
        beat = Signal(LinkBeat)
        m.d.comb += [
            beat.data.eq(self.tx.p.data ^ flip),
            beat.last.eq(self.tx.p.last),
        ]
        v, p = self._delay(m, accepted & ~drop_now, beat.as_value(), len(beat.as_value()))
        m.d.comb += [self.rx.valid.eq(v), self.rx.p.eq(p)]

        av, ap = self._delay(
            m, self.ack_tx.valid, self.ack_tx.p.as_value(), len(self.ack_tx.p.as_value())
        )
        m.d.comb += [self.ack_rx.valid.eq(av), self.ack_rx.p.eq(ap)]
        return m
