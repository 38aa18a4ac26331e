"""Point-to-point link between two nodes: bandwidth, latency and injectable faults.

The link of ``DESIGN.md`` ("NIC + links"): one direction of a node-to-node
connection.  It carries the transmitting NIC's packets (32-bit words framed by
a ``last`` flag, i.e. the physical layer's end-of-packet symbol) forward, and
the receiving NIC's acknowledge/credit messages backward on a sideband lane.
Both directions take ``latency_cycles``.  Faults -- drops, bit and burst
errors anywhere in a packet, framing errors, stalls, outages and faults on
the acknowledge sideband -- come from the per-link pseudo-random process that
``gradsync.spec.faults`` defines (its ``LinkReference`` is this component's
Python twin, which the golden model runs), at rates the testbench sets
through ports, so a long fault campaign costs no Python per packet.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Cat, Const, Module, Mux, ResetSignal, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from gradsync.spec import faults as fs
from gradsync.spec.link import LINK_MAX_LATENCY_CYCLES, LINK_WIDTHS_BYTES

#: One link word: 32 bits of packet data and the end-of-packet flag.
LinkBeat = data.StructLayout({"data": 32, "last": 1})
#: A beat of a 64-bit link (``link_width_bytes`` 8): a packet's word ``data`` and, if
#: ``two``, the word after it, ``data1``; ``last`` ends the packet (its final word is the CRC).
LinkBeat2 = data.StructLayout({"data": 32, "last": 1, "data1": 32, "two": 1})


def link_beat(width_bytes: int) -> data.StructLayout:
    """The beat of a link datapath ``width_bytes`` wide (4: :data:`LinkBeat`, 8: :data:`LinkBeat2`)."""
    if width_bytes not in LINK_WIDTHS_BYTES:
        raise ValueError(f"width_bytes must be one of {LINK_WIDTHS_BYTES}, not {width_bytes!r}")
    return LinkBeat if width_bytes == 4 else LinkBeat2


def bandwidth_bits(width_bytes: int) -> int:
    """Bits of a run-time bytes-per-cycle value on a link ``width_bytes`` wide (3, or 4 for 8)."""
    return 3 if width_bytes == 4 else 4


#: Width of a link latency (0 .. LINK_MAX_LATENCY_CYCLES).
LATENCY_BITS = ceil_log2(LINK_MAX_LATENCY_CYCLES + 1)

#: The receiver's acknowledge/credit message (see ``hw/nic.py``); ``chk`` is
#: ``gradsync.spec.faults.ack_check`` of the rest, so a corrupted message is ignored.
AckMessage = data.StructLayout({"exp": 16, "limit": 16, "nak": 1, "chk": 8})

#: Fault-injection control ports of a link and their widths (a cluster exposes them
#: per link as ``l{i}_<name>``; ``--link-faults`` drives them).
LINK_CONTROLS = fs.CONTROLS
#: Counter ports of a link (32 bits each; ``l{i}_<name>`` of a cluster).
LINK_COUNTERS = fs.COUNTERS


def link_fault_ports() -> dict:
    """The fault controls (in) and counters (out) of one link, as a signature dict."""
    ports = {name: In(width) for name, width in LINK_CONTROLS.items()}
    ports.update({name: Out(32) for name in LINK_COUNTERS})
    return ports


def ack_check(msg) -> Value:
    """``gradsync.spec.faults.ack_check`` of an AckMessage view (8 bits)."""
    return (msg.exp[:8] ^ msg.exp[8:] ^ msg.limit[:8] ^ msg.limit[8:] ^ msg.nak)[:8]


def _xorshift32(x):
    """One step of Marsaglia's xorshift32 on an Amaranth value (never reaches 0 from non-zero)."""
    x = x ^ (x << 13)[:32]
    x = x ^ (x >> 17)
    x = x ^ (x << 5)[:32]
    return x


def word_period_log2(bytes_per_cycle: Value) -> Value:
    """log2 of the cycles per beat of a link of ``bytes_per_cycle`` (1, 2, 4 or 8): a word
    every ``4 / bytes_per_cycle`` cycles, at 8 a beat of two words every cycle
    (``gradsync.spec.link.word_period``).  The link's serialiser, the DMA engine's word
    period and the NIC timeouts use it."""
    return Mux(bytes_per_cycle == 1, 2, Mux(bytes_per_cycle == 2, 1, 0))


class Link(wiring.Component):
    """One direction of a node-to-node link with fault injection.

    Parameters
    ----------
    latency_cycles:
        Cycles from a word being accepted on ``tx`` to it appearing on ``rx``
        (and from ``ack_tx`` to ``ack_rx``), 0 .. ``LINK_MAX_LATENCY_CYCLES``;
        0 makes the link combinational.  The reset value of ``run_latency``.
    bytes_per_cycle:
        Link bandwidth: 4 accepts one 32-bit word per cycle; 1 or 2 accept one
        word every ``4 / bytes_per_cycle`` cycles; 8 (``width_bytes`` 8) a beat of
        two words every cycle.  The reset value of ``run_bytes_per_cycle``.
    width_bytes:
        The datapath (``HardwareConfig.link_width_bytes``): 4, beats of
        :data:`LinkBeat`, or 8, beats of :data:`LinkBeat2` (two words at 8
        bytes/cycle, one word with ``two`` low at 1, 2 or 4).  Default: 8 if
        ``bytes_per_cycle`` is 8, else 4.

    Attributes
    ----------
    run_bytes_per_cycle : In(3) (In(4) at width 8), run_latency : In(10)
        The link's current bandwidth (1, 2, 4, or 8 at width 8) and latency in cycles (a run-time
        setting, ``LINK_SET`` of the transmitting node; undriven: the parameters).
        Both directions are delay lines of ``LINK_MAX_LATENCY_CYCLES + 1`` entries
        written every cycle: what leaves in cycle ``t`` entered in cycle
        ``t - run_latency(t)`` (nothing if that was before the last reset), so a
        constant latency ``L`` is exactly ``L`` register stages.  A new bandwidth
        applies from the next word accepted.
    tx : In(stream of link_beat(width_bytes))
        Transmitter side (a beat per cycle at most).  ``ready`` is low while the link is throttled to its
        bandwidth or stalled by fault injection; words are never lost because
        of back-pressure.
    rx : Out(stream of LinkBeat, always ready)
        Receiver side: every accepted word arrives ``latency_cycles`` later,
        unless its packet was dropped or the link was down when it was taken;
        data and framing as the fault process left them.
    ack_tx, ack_rx : sideband AckMessage stream, receiver to transmitter.
        Delayed like the data; dropped or corrupted by the ``ack_*`` faults
        and lost while the link is down.
    corrupt_rate ... down_len : In
        The fault process's controls (``gradsync.spec.faults``: which draw
        of which generator decides what, in which cycle); all 0: no faults.
        Registered: a value acts from the cycle after it is set (set them before
        a run, by the cycle ``seed_load`` or the reset loads the seed).
    seed : In(32), seed_load : In(1)
        The process restarts from ``seed`` in the cycle after reset or
        ``seed_load`` is high (the generators are loaded, not reset).
    packets ... acks_corrupted : Out(32)
        ``gradsync.spec.faults.COUNTERS`` since reset.
    """

    def __init__(self, latency_cycles: int, bytes_per_cycle: int = 4, width_bytes=None):
        if not isinstance(latency_cycles, int) or latency_cycles < 0:
            raise ValueError(f"latency_cycles must be an int >= 0, not {latency_cycles!r}")
        if latency_cycles > LINK_MAX_LATENCY_CYCLES:
            raise ValueError(
                f"latency_cycles must be at most {LINK_MAX_LATENCY_CYCLES} (the delay line), "
                f"not {latency_cycles!r}"
            )
        if width_bytes is None:
            width_bytes = 8 if bytes_per_cycle == 8 else 4
        beat = link_beat(width_bytes)
        allowed = tuple(b for b in (1, 2, 4, 8) if b <= width_bytes)
        if bytes_per_cycle not in allowed:
            words = ", ".join(map(str, allowed[:-1])) + f" or {allowed[-1]}"
            raise ValueError(
                f"bytes_per_cycle must be {words} (a link {width_bytes} bytes wide), "
                f"not {bytes_per_cycle!r}"
            )
        self.latency_cycles = latency_cycles
        self.bytes_per_cycle = bytes_per_cycle
        self.width_bytes = width_bytes
        super().__init__(
            {
                "tx": In(stream.Signature(beat)),
                "rx": Out(stream.Signature(beat, always_ready=True)),
                "ack_tx": In(stream.Signature(AckMessage, always_ready=True)),
                "ack_rx": Out(stream.Signature(AckMessage, always_ready=True)),
                "run_bytes_per_cycle": In(bandwidth_bits(width_bytes), init=bytes_per_cycle),
                "run_latency": In(LATENCY_BITS, init=latency_cycles),
                **link_fault_ports(),
            }
        )

    def _delay(self, m: Module, valid, payload, width: int, age):
        """A delay line of ``run_latency`` cycles; returns (valid, payload) at the far end.

        Entry ``ptr`` is written every cycle; the output reads the entry written
        ``run_latency`` cycles ago (combinationally the input when it is 0), valid only if
        at least that many cycles have passed since reset (``age``, saturating).
        """
        depth = LINK_MAX_LATENCY_CYCLES + 1
        line = Memory(shape=width + 1, depth=depth, init=[])
        m.submodules[f"delay{width}"] = line
        wr, rd = line.write_port(), line.read_port(domain="comb")
        ptr = Signal(ceil_log2(depth), name=f"dly_ptr{width}")
        m.d.sync += ptr.eq(ptr + 1)
        lat = self.run_latency
        m.d.comb += [
            wr.addr.eq(ptr),
            wr.data.eq(Cat(valid, payload)),
            wr.en.eq(1),
            rd.addr.eq(ptr - lat),
        ]
        v, p = Signal(name=f"dly_v{width}"), Signal(width, name=f"dly_p{width}")
        with m.If(lat == 0):
            m.d.comb += [v.eq(valid), p.eq(payload)]
        with m.Else():
            m.d.comb += [v.eq(rd.data[0] & (age >= lat)), p.eq(rd.data[1:])]
        return v, p

    def _age(self, m: Module):
        """Cycles since reset, saturating at ``LINK_MAX_LATENCY_CYCLES``."""
        age = Signal(LATENCY_BITS)
        with m.If(age != LINK_MAX_LATENCY_CYCLES):
            m.d.sync += age.eq(age + 1)
        return age

    def _generators(self, m: Module) -> tuple:
        """The fault generators and the fault cycle counter, as seen in each cycle.

        A restart in cycle ``t`` (reset or ``seed_load``) shows cycle ``t + 1`` the
        generators at ``(seed(t) ^ salt) | bit`` and the counter at 0, as loading them on
        the clock edge would.  The restart and the seed are registered instead
        (``restart_q``, ``seed_q``) and a multiplexer on register outputs shows the loaded
        values: no next-state logic reads the top-level inputs, which a Verilated cluster
        would evaluate again on every ``eval()`` (docs/performance.md).  Every value seen
        in every cycle is the same.  Not reset but loaded: a reset replays the seed's
        sequence."""
        restart = Signal(name="restart_q", reset_less=True)
        seed = Signal(32, name="seed_q", reset_less=True)
        m.d.sync += [restart.eq(ResetSignal() | self.seed_load), seed.eq(self.seed)]
        gens = []
        for name, salt, bit in zip(fs.GENERATORS, fs.SALT, fs.BIT, strict=True):
            g = Signal(32, name=f"rng_{name}")
            # the draw after this cycle's (the generator's state unless a restart shows the seed)
            after = Signal(32, name=f"rng_{name}_next", init=(salt | bit), reset_less=True)
            m.d.comb += g.eq(Mux(restart, (seed ^ salt) | bit, after))
            m.d.sync += after.eq(_xorshift32(g))
            gens.append(g)
        fcyc, after = Signal(32), Signal(32, name="fcyc_next", reset_less=True)
        m.d.comb += fcyc.eq(Mux(restart, 0, after))
        m.d.sync += after.eq(fcyc + 1)
        return fcyc, gens

    def _timers(self, m: Module, fcyc, cyc, dn, accepted):
        """Bandwidth throttle, stalls and outages; returns (tx ready, link down).

        ``seed_load`` in cycle ``t`` clears a stall or outage for cycle ``t + 1``: registered
        (``load_q``) and applied by a multiplexer on the counters' registers, like the
        restart of :meth:`_generators`."""
        period_m1 = (Const(1, 3) << word_period_log2(self.run_bytes_per_cycle)) - 1
        gap = Signal(2)
        load = Signal(name="load_q", reset_less=True)
        stall_r, down_r = Signal(9, name="stall_next"), Signal(17, name="down_next")
        stall, down = Signal(9), Signal(17)  # as seen in this cycle
        ready = Signal()
        is_down = Signal()
        m.d.sync += load.eq(self.seed_load)
        m.d.comb += [
            stall.eq(Mux(load, 0, stall_r)),
            down.eq(Mux(load, 0, down_r)),
            ready.eq((gap == 0) & (stall == 0)),
            is_down.eq((down != 0) | ((fcyc - self._ctl.down_at)[:32] < self._ctl.down_len)),
        ]
        with m.If(accepted):
            m.d.sync += gap.eq(period_m1)
        with m.Elif(gap != 0):
            m.d.sync += gap.eq(gap - 1)
        m.d.sync += [stall_r.eq(stall), down_r.eq(down)]  # held as seen (a load's 0 too)
        with m.If(stall != 0):
            m.d.sync += stall_r.eq(stall - 1)
        with m.Elif((cyc[8:24] < self._ctl.stall_rate) & (self._ctl.stall_max != 0)):
            m.d.sync += [
                stall_r.eq(1 + ((cyc[24:32] * self._ctl.stall_max) >> 8)),
                self.stalls.eq(self.stalls + 1),
            ]
        with m.If(down != 0):
            m.d.sync += down_r.eq(down - 1)
        with m.Elif((dn[0:16] < self._ctl.down_rate) & (self._ctl.down_mean != 0)):
            m.d.sync += [
                down_r.eq(1 + ((dn[16:32] * self._ctl.down_mean) >> 15)),
                self.downs.eq(self.downs + 1),
            ]
        with m.If(is_down):
            m.d.sync += self.down_cycles.eq(self.down_cycles + 1)
        return ready, is_down

    def _packet_faults(self, m: Module, gens, accepted, is_down):
        """Per-packet decisions at the first word, held for the packet; returns the rx beat."""
        pkt, cyc, aux, pos = gens[:4]
        in_packet = Signal()
        word = Signal(8)
        first = ~in_packet
        n = Signal(8)
        m.d.comb += n.eq(self.tx.p.data[9:16] + 5)
        now = {
            "drop": pkt[0:16] < self._ctl.drop_rate,
            "corrupt": pkt[16:32] < self._ctl.corrupt_rate,
            "cword": cyc[0:2],
            "cbit": cyc[2:7],
            "burst": aux[0:16] < self._ctl.burst_rate,
            "bword": (pos[0:8] * n)[8:16],
            "bmask": ((Const(1, 33) << self._ctl.burst_len) - 1)[:32] << pos[8:13],
            "frame": aux[16:32] < self._ctl.frame_rate,
            "fword": (pos[16:24] * n)[8:16],
        }
        held = {k: Signal(len(Value.cast(v)) if k != "bmask" else 32, name=f"h_{k}")
                for k, v in now.items()}  # fmt: skip
        cur = {}
        for k, v in now.items():
            cur[k] = Signal.like(held[k], name=f"c_{k}")
            m.d.comb += cur[k].eq(Mux(first, v, held[k]))
        drop = cur["drop"]
        corrupt = ~drop & cur["corrupt"]
        burst = ~drop & cur["burst"]
        frame = ~drop & cur["frame"]
        two = self.tx.p.two if self.width_bytes == 8 else Const(0)
        with m.If(accepted):
            m.d.sync += in_packet.eq(~self.tx.p.last)
            with m.If(first):
                m.d.sync += [held[k].eq(cur[k]) for k in now]
                m.d.sync += [
                    self.packets.eq(self.packets + 1),
                    self.dropped.eq(self.dropped + drop),
                    self.corrupted.eq(self.corrupted + (corrupt | burst)),
                    self.framed.eq(self.framed + frame),
                ]
            with m.If(self.tx.p.last):
                m.d.sync += word.eq(0)
            if self.width_bytes == 8:
                with m.Elif(two):
                    m.d.sync += word.eq(Mux(word >= 254, 255, word + 2))
            with m.Elif(word != 255):
                m.d.sync += word.eq(word + 1)
        # the beat's word w = word (and w = word + 1 in its second half)
        flip = Signal(32)
        bflip = Signal(32)
        with m.If(corrupt & (word == cur["cword"])):
            m.d.comb += flip.eq(Const(1, 32) << cur["cbit"])
        with m.If(burst & (word == cur["bword"])):
            m.d.comb += bflip.eq(cur["bmask"])
        beat = Signal(link_beat(self.width_bytes))
        m.d.comb += [
            beat.data.eq(self.tx.p.data ^ flip ^ bflip),
            beat.last.eq(self.tx.p.last ^ (frame & (word == cur["fword"]))),
        ]
        if self.width_bytes == 8:
            # the second half carries word ``word + 1`` (spec.faults: "Beats of two words")
            hit = {k: two & (word + 1 == cur[k]) for k in ("cword", "bword", "fword")}
            flip1 = Signal(32)
            bflip1 = Signal(32)
            with m.If(corrupt & hit["cword"]):
                m.d.comb += flip1.eq(Const(1, 32) << cur["cbit"])
            with m.If(burst & hit["bword"]):
                m.d.comb += bflip1.eq(cur["bmask"])
            m.d.comb += [
                beat.data1.eq(self.tx.p.data1 ^ flip1 ^ bflip1),
                beat.two.eq(two),
                beat.last.eq(self.tx.p.last ^ (frame & ((word == cur["fword"]) | hit["fword"]))),
            ]
        return accepted & ~drop & ~is_down, beat

    def _ack_faults(self, m: Module, gens, is_down):
        """The sideband: drop or corrupt an acknowledge message entering the link."""
        pos, ack = gens[3], gens[4]
        drop = Signal()
        corrupt = Signal()
        m.d.comb += [
            drop.eq(is_down | (ack[0:16] < self._ctl.ack_drop_rate)),
            corrupt.eq(~drop & (ack[16:32] < self._ctl.ack_corrupt_rate)),
        ]
        msg = Signal(len(self.ack_tx.p.as_value()))
        bit = Signal(6)
        m.d.comb += bit.eq((pos[24:30] * fs.ACK_BITS) >> 6)
        m.d.comb += msg.eq(self.ack_tx.p.as_value() ^ Mux(corrupt, Const(1, len(msg)) << bit, 0))
        with m.If(self.ack_tx.valid & drop):
            m.d.sync += self.acks_dropped.eq(self.acks_dropped + 1)
        with m.If(self.ack_tx.valid & corrupt):
            m.d.sync += self.acks_corrupted.eq(self.acks_corrupted + 1)
        return self.ack_tx.valid & ~drop, msg

    def _registered_controls(self, m: Module) -> SimpleNamespace:
        """The fault rates, lengths and outage window, registered (not reset): what decides a
        fault in cycle ``t`` is the control set by cycle ``t - 1``.  The controls are set
        before a run and held, so this changes no fault; it keeps the top-level inputs out
        of the link's and the receivers' combinational logic, which a Verilated cluster
        would otherwise evaluate again on every ``eval()`` (docs/performance.md).  ``seed``
        and ``seed_load`` are registered too, but act as if loaded on the clock edge
        (:meth:`_generators`, :meth:`_timers`)."""
        ctl = SimpleNamespace()
        for name, width in LINK_CONTROLS.items():
            if name not in ("seed", "seed_load"):
                reg = Signal(width, name=f"ctl_{name}", reset_less=True)
                m.d.sync += reg.eq(getattr(self, name))
                setattr(ctl, name, reg)
        return ctl

    def elaborate(self, platform):
        m = Module()
        self._ctl = self._registered_controls(m)
        fcyc, gens = self._generators(m)
        accepted = Signal()
        ready, is_down = self._timers(m, fcyc, gens[1], gens[5], accepted)
        m.d.comb += [self.tx.ready.eq(ready), accepted.eq(self.tx.valid & ready)]
        valid, beat = self._packet_faults(m, gens, accepted, is_down)
        age = self._age(m)
        v, p = self._delay(m, valid, beat.as_value(), len(beat.as_value()), age)
        m.d.comb += [self.rx.valid.eq(v), self.rx.p.eq(p)]
        avalid, amsg = self._ack_faults(m, gens, is_down)
        av, ap = self._delay(m, avalid, amsg, len(amsg), age)
        m.d.comb += [self.ack_rx.valid.eq(av), self.ack_rx.p.eq(ap)]
        return m
