"""NIC of a modelled node: packetising onto the transmit link, RX windows, the in-order applier.

The golden twin of ``hw/nic.py`` (``DESIGN.md``, "One node", "Links").  The
DMA engine hands :meth:`Nic.send` a validated chunk; it leaves back to back in
packets of at most ``max_payload_bytes`` (:mod:`gradsync.spec.link`) on the
single link to ``TX_PEER``, timed with the link in effect when it is sent
(:class:`~gradsync.model.link_setting.LinkSetting`: the build's, or ``LINK_SET``'s).
The receiver's store-and-forward applier takes packets in order, one at a time (``timing.rx_visible_cycle``), checks each
against the RX window the firmware opened (``WINn_*`` registers) and applies
it: a plain write, or a saturating reduce-add with the window's local source.
A window whose ``RECEIVED`` reaches its armed ``EXPECT`` sets its
``RX_DONE`` bit and raises Irq.RX.

With link faults (:meth:`Nic.attach_link_layer`) the packets go instead
through :class:`~gradsync.model.link.LinkLayer`, the cycle-by-cycle
transcription of the RTL's reliable transport and its faulted link, which
decides when the chunk has left and when each packet is applied.

Receiver not ready (``docs/comm.md``): a packet for its window's next step is
held until the firmware writes the window's TAG.  The link layer models the
hold cycle for cycle (it asks :meth:`Nic.hold_verdict`, which keeps the
recent CTRL/TAG writes with their cycles).  The fault-free fast path computes
apply cycles when a chunk is sent and cannot: a packet it would have held
raises :class:`ReceiverHold`, and the model backend reruns the whole run with
zero-rate link layers on every link.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradsync.model import numerics as nx
from gradsync.model.csr import register_state
from gradsync.model.engine import Engine, NodeParts
from gradsync.model.events import SimulationError
from gradsync.model.link import LinkLayer
from gradsync.model.link_setting import LinkSetting
from gradsync.spec import link as lk
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm

M32 = 0xFFFF_FFFF

#: Counter registers the NIC drives, with their key in :attr:`Nic.perf`.
_COUNTER_REGISTERS = {
    "PERF_TX_CYCLES": "tx",
    "PERF_TX_BYTES": "tx_bytes",
    "PERF_TX_PACKETS": "tx_pkts",
    "PERF_RX_PACKETS": "rx_pkts",
    "RX_BYTES": "rx_bytes",
}


#: Cycles of CTRL/TAG writes a Nic remembers (the fast path looks back one packet's apply
#: time, the link layer's applier a few cycles).
HISTORY_CYCLES = 4096
_STEP = next(f for f in rm.TAG_FIELDS if f.name == "step")


def next_step_hold(packet_tag: int, window_tag: int) -> bool:
    """The receiver-not-ready rule (``hw/nic_rx.py``): ``packet_tag`` has the layer and chunk
    of ``window_tag`` and the step after its step (modulo 4096)."""
    same = (packet_tag ^ window_tag) & ~_STEP.mask & M32 == 0
    return same and _STEP.get(packet_tag) == (_STEP.get(window_tag) + 1) % (1 << _STEP.width)


def tag_name(tag: int) -> str:
    return "L{}c{}s{}".format(*rm.decode_tag(tag))


def held_sentence(node: int, window: int, packet_tag: int, window_tag: int) -> str:
    """How a run's error names a packet held for good (both backends' watchdog reports)."""
    return (
        f"nic.rx of node {node} holds a packet tagged {tag_name(packet_tag)} for window "
        f"{window}, whose tag is {tag_name(window_tag)}: the firmware never reopened it "
        f"(WIN{window}_TAG was never written for step {_STEP.get(packet_tag)})"
    )


class ReceiverHold(SimulationError):
    """The fault-free fast path met a packet the receiver holds: it cannot time it exactly
    (the model backend reruns the run with link layers, which can)."""


#: One RX window: ``ctrl``, ``dst``, ``src``, ``len``, ``tag``, ``expect``, ``received`` (its
#: ``WINn_*`` registers) and ``armed`` (EXPECT written and not yet reached).
RxWindow = register_state("RxWindow", rm.RX_WINDOW_ARRAY, ("armed", bool, False))


@dataclass(frozen=True)
class Packet:
    src_node: int
    window: int
    tag: int
    addr: int
    payload: np.ndarray  #: operand words; with ``bf16``, one bf16 word per fp32 element
    reduce: bool
    bf16: bool = False  #: H0's bf16 bit: the payload is the bf16 rounding of fp32 elements


class Nic(Engine):
    """Transmitter and receiver of one node.

    Attributes
    ----------
    peer:
        The NIC at the other end of the transmit link (set when the cluster links nodes).
    link:
        The transmit link as set at run time (``LINK_SET``; every timing here follows it).
    windows:
        The ``hw.rx_windows`` RX windows.
    rx_done, rx_drops:
        Windows complete (bit n: window n; ``RX_DONE_LO/HI``), packets refused.
    rx_free_at:
        Cycle the in-order applier is free again (the sender schedules against it).
    perf:
        Transmit busy cycles, bytes and packets; packets and bytes applied.
    """

    def __init__(self, parts: NodeParts, node_id: int) -> None:
        super().__init__(parts)
        csr = self.csr
        self.wb = self.fmt.word_bytes
        self.node_id = node_id
        self.peer: Nic | None = None
        self.link = LinkSetting(self.sim, self.hw, csr)
        self.windows = [RxWindow() for _ in range(self.hw.rx_windows)]
        self.rx_done = 0
        self.rx_drops = 0
        self.rx_free_at = 0
        self.perf = dict.fromkeys(("tx", "tx_bytes", "tx_pkts", "rx_pkts", "rx_bytes"), 0)
        #: The faulted transmit link (None: the fault-free formulas of ``spec.timing``).
        self.layer: LinkLayer | None = None
        #: the link layer delivering to this receiver (the previous node's), for reports
        self.rx_layer: LinkLayer | None = None
        self._ticking = False
        #: the send waiting for its chunk to leave a held-up link layer: (descriptor, done)
        self._pending = None
        #: per window, its (enable, tag) from a cycle on: [(cycle, enabled, tag), ...]
        self._history = [[(-1, 0, 0)] for _ in self.windows]
        csr.bind_array(rm.RX_WINDOW_ARRAY, read=self._read_window, write=self._write_window)
        csr.bind("RX_DONE_LO", read=lambda: self.rx_done & M32, write=self._store_rx_done_lo)
        csr.bind("RX_DONE_HI", read=lambda: self.rx_done >> 32, write=self._store_rx_done_hi)
        csr.bind("RX_DROPS", read=lambda: self.rx_drops)
        for name, key in _COUNTER_REGISTERS.items():
            csr.bind(name, read=lambda key=key: self.perf[key])

    # ------------------------------------------------------------------ TX
    def attach_link_layer(self, controls: dict, seq_start: int = 0) -> None:
        """Send through a faulted :class:`LinkLayer` with these fault controls (to ``peer``)."""
        peer = self.peer
        assert peer is not None

        def deliver(cycle: int, pkt: Packet, checked: int) -> None:
            self.sim.at(cycle, lambda: peer.receive(pkt, checked))

        self.layer = LinkLayer(
            self.link,
            peer.link,
            controls,
            deliver,
            seq_start,
            rx_check=peer.hold_verdict,
            apply_words=tm.rx_apply_words(peer.hw),
        )
        self.link.watch(self.layer)
        peer.link.watch(self.layer)
        self.layer.name = f"link {self.node_id} (node {self.node_id} nic.tx -> next node's nic.rx)"
        peer.rx_layer = self.layer

    def _tick(self) -> None:
        """Keep the link layer stepping while it has work in flight (every 3 cycles, so a
        packet it starts applying is scheduled before its visible cycle).

        A send left pending by a held packet goes on here as far as the TAG writes made so
        far allow: the front end then runs at least ``payload_words + 1 >= 2`` cycles ahead
        of the applier, so its transfers are known before their cycles come."""
        layer = self.layer
        layer.advance(self.sim.now)
        if self._pending is not None:
            self._progress(layer.resume())
        self._ticking = not layer.quiet_now()
        if self._ticking:
            self.sim.at(self.sim.now + 3, self._tick)

    def _words(self, pkt: Packet, payload_bytes: int) -> list[int]:
        """The packet's link words before the CRC (H0 with sequence 0, tag, address, payload)."""
        h0 = pkt.window | pkt.bf16 << 7 | pkt.reduce << 8 | (payload_bytes // 4 - 1) << 9
        # operands of word_bytes each (bf16: 2), lowest address in the low bits (hw/packet.py)
        payload = np.asarray(pkt.payload).astype("<i2" if pkt.bf16 else f"<i{self.wb}")
        return [h0, pkt.tag & M32, pkt.addr & M32, *payload.view("<u4").tolist()]

    def _packets(self, d: rm.Descriptor, data: np.ndarray, link: lk.LinkConfig):
        """(wire payload bytes, :class:`Packet`) of each packet chunk ``data`` (SRAM words of
        descriptor ``d``) is cut into.  With ``DescFlag.BF16`` the packets are cut from the
        wire bytes (``lk.wire_bytes``), each payload word two bf16 elements, and a packet
        covers ``lk.memory_bytes`` of fp32 memory from its address (``docs/numerics.md``)."""
        bf16 = bool(d.flags & rm.DescFlag.BF16)
        words = nx.bf16_send_words(data) if bf16 else data
        unit = 2 if bf16 else self.wb  # wire bytes of one element of ``words``
        reduce = bool(d.flags & rm.DescFlag.REDUCE_ADD)
        wire = 0
        for payload in lk.packet_payloads(lk.wire_bytes(d.length, bf16), link):
            part = words[wire // unit : (wire + payload) // unit]
            addr = d.remote_addr + lk.memory_bytes(wire, bf16)
            yield payload, Packet(self.node_id, d.window, d.tag, addr, part, reduce, bf16)
            wire += payload

    def _send_faulted(self, d: rm.Descriptor, data: np.ndarray, done) -> int | None:
        layer = self.layer
        packets = []
        for payload, pkt in self._packets(d, data, self.link.current):
            packets.append((self._words(pkt, payload), pkt))
            self.perf["tx_pkts"] += 1
            self.perf["tx_bytes"] += payload
        self._pending = [d, done, False]
        sent = layer.send(self.sim.now, packets)
        t = self._progress(sent)
        if not self._ticking:
            self._ticking = True
            # pending: the front end stopped at layer.now (> now), the first cycle it does
            # not know yet -- go on from there in time
            self.sim.at(layer.now + (3 if t is not None else 0), self._tick)
        return t

    def _progress(self, sent: tuple[int, int] | None) -> int | None:
        """Record what the link layer learnt of the pending send: its first word's transfer
        (the START record), and once the chunk left (``sent``) its END, busy cycles and
        ``done``.  The layer learns a transfer no later than in its cycle (see ``_tick``)."""
        d, done, started = self._pending
        first = self.layer.first_fire
        if first is not None and not started:
            self._pending[2] = True
            start = (rm.Engine.NIC_TX, rm.TraceEvent.START, rm.Kind.SEND, d.tag, d.length)
            if first == self.sim.now:
                self.trace.record(*start)
            else:
                self.sim.at(first, lambda: self.trace.record(*start))
        if sent is None:
            return None
        self._pending = None
        first, crc_sent = sent
        t = crc_sent + lk.word_period(self.link.at(crc_sent).bytes_per_cycle)
        self.perf["tx"] += t - first
        end = (rm.Engine.NIC_TX, rm.TraceEvent.END, rm.Kind.SEND, d.tag, d.length)
        self.sim.at(t, lambda: self.trace.record(*end))
        if done is not None:
            done(t)
        return t

    def send(self, d: rm.Descriptor, data: np.ndarray, done=None) -> int | None:
        """Packetise chunk ``data`` of descriptor ``d`` from now; return the cycle it has left.

        ``done(cycle)`` is called with that cycle too -- later, and the return value is None,
        if a faulted link's receiver holds a packet whose release is not known yet."""
        if self.layer is not None:
            return self._send_faulted(d, data, done)
        t = self.sim.now
        self.trace.record(rm.Engine.NIC_TX, rm.TraceEvent.START, rm.Kind.SEND, d.tag, d.length)
        peer = self.peer
        hw = self.link.hw_at(t)  # locked (a doorbell came first): one link for the chunk
        for payload, pkt in self._packets(d, data, hw.link):
            t_end = t + lk.packet_cycles(payload, hw.link)
            assert peer is not None
            applied = tm.rx_visible_cycle(
                t_end + tm.crc_arrival_offset(hw),
                peer.rx_free_at,
                payload,
                tm.rx_apply_words(peer.hw),
            )
            peer.rx_free_at = applied
            self.sim.at(applied, lambda p=peer, pk=pkt: p.receive(pk))
            self.perf["tx_pkts"] += 1
            self.perf["tx_bytes"] += payload
            t = t_end
        self.perf["tx"] += t - self.sim.now
        self.sim.at(
            t,
            lambda: self.trace.record(
                rm.Engine.NIC_TX, rm.TraceEvent.END, rm.Kind.SEND, d.tag, d.length
            ),
        )
        if done is not None:
            done(t)
        return t

    # ------------------------------------------------------------------ RX
    def _read_window(self, w_idx: int, field: str) -> int:
        if w_idx >= len(self.windows):
            return 0
        return getattr(self.windows[w_idx], field.lower())

    def _write_window(self, w_idx: int, field: str, value: int) -> None:
        if w_idx >= len(self.windows):
            return
        w = self.windows[w_idx]
        setattr(w, field.lower(), value)
        if field in ("CTRL", "TAG"):
            self._remember(w_idx, (value & 1) if field == "CTRL" else w.ctrl & 1, w.tag)
        if field == "CTRL":
            w.ctrl = value & 1
            if value & 1:
                w.received = 0
                w.armed = False
                self.rx_done &= ~(1 << w_idx)
        elif field == "EXPECT":
            w.armed = True
            self._check_window(w_idx)

    def _remember(self, w_idx: int, enabled: int, tag: int) -> None:
        """A CTRL or TAG write in this cycle: the receiver checks with it from this cycle on."""
        hist = self._history[w_idx]
        hist.append((self.sim.now, enabled, tag))
        while len(hist) > 2 and hist[1][0] < self.sim.now - HISTORY_CYCLES:
            hist.pop(0)

    def _state_at(self, w_idx: int, cycle: int) -> tuple[int, int]:
        """(enabled, TAG) of window ``w_idx`` as its check in ``cycle`` sees them."""
        for when, enabled, tag in reversed(self._history[w_idx]):
            if when <= cycle:
                return enabled, tag
        raise SimulationError(f"window {w_idx}'s state in cycle {cycle} is forgotten")

    def hold_verdict(self, cycle: int, pkt: Packet) -> bool | None:
        """Does the applier hold ``pkt`` in its check in ``cycle``?  None: not known yet (the
        current TAG would hold it, and a TAG write may still come in or before ``cycle``)."""
        if pkt.window >= len(self.windows):
            return False
        if cycle < self.sim.now:
            enabled, tag = self._state_at(pkt.window, cycle)
            return bool(enabled) and next_step_hold(pkt.tag, tag)
        w = self.windows[pkt.window]
        if w.ctrl & 1 and next_step_hold(pkt.tag, w.tag):
            return None
        return False  # unless a later write makes it one: receive() checks

    def held(self) -> tuple[int, int, int] | None:
        """(window, packet tag, window tag) of the packet this receiver holds now, if any."""
        layer = self.rx_layer
        if layer is None or not layer.held or not layer.queue:
            return None
        pkt = layer.queue[0][1].item
        return pkt.window, pkt.tag, self.windows[pkt.window].tag

    def _store_rx_done_lo(self, value: int) -> None:
        self.rx_done = (self.rx_done & ~M32) | value

    def _store_rx_done_hi(self, value: int) -> None:
        self.rx_done = (self.rx_done & M32) | (value << 32)

    def _check_window(self, w_idx: int) -> None:
        w = self.windows[w_idx]
        if w.armed and w.received >= w.expect:
            w.armed = False
            self.rx_done |= 1 << w_idx
            self.csr.raise_irq(rm.Irq.RX)

    def outstanding(self) -> list[str]:
        waiting = [
            tag_name(w.tag)
            for w in self.windows
            if w.ctrl & 1 and w.armed and w.received < w.expect
        ]
        out = ["nic.rx waits for tags " + ", ".join(waiting)] if waiting else []
        held = self.held()
        if held is not None:
            out.append(held_sentence(self.node_id, *held))
        return out

    def receive(self, pkt: Packet, checked: int | None = None) -> None:
        """Apply one packet arriving from the link (called at its apply cycle).

        ``checked``: the cycle the link layer's applier checked it in (it held it until
        then); None on the fast path, where the check was ``payload words + 2`` cycles ago
        (``ceil(payload words / 2) + 2`` on a width-8 build, two words a cycle)
        (``RxApplier``'s timing) and a packet it would have held raises :class:`ReceiverHold`.
        """
        wire = len(pkt.payload) * (2 if pkt.bf16 else self.wb)
        nbytes = lk.memory_bytes(wire, pkt.bf16)  # of the window's memory (fp32 with bf16)
        n_words = nbytes // self.wb
        code = rm.ErrorCode.OK
        apply_cycles = lk.ceil_div(wire, 4 * tm.rx_apply_words(self.hw))  # RUN cycles
        check = self.sim.now - apply_cycles - 2 if checked is None else checked
        enabled, tag = (
            (0, 0) if pkt.window >= len(self.windows) else self._state_at(pkt.window, check)
        )
        if enabled and next_step_hold(pkt.tag, tag):
            where = f"node {self.node_id} window {pkt.window}, packet {tag_name(pkt.tag)}"
            if checked is None:
                raise ReceiverHold(
                    f"the receiver holds a packet in cycle {check} ({where}, window tag "
                    f"{tag_name(tag)}), which the fault-free fast path cannot time"
                )
            raise SimulationError(f"model: the link layer applied a held packet ({where})")
        if not enabled:
            code = rm.ErrorCode.RX_NO_WINDOW
        else:
            w = self.windows[pkt.window]
            if tag != pkt.tag:
                code = rm.ErrorCode.RX_TAG_MISMATCH
            elif not (w.dst <= pkt.addr and pkt.addr + nbytes <= w.dst + w.len):
                code = rm.ErrorCode.RX_OUT_OF_WINDOW
            else:
                # The packet must lie inside one SRAM, and so must a reduce-add's source; both
                # 32-bit aligned, since the receiver moves the packet's 32-bit payload words
                # (``region`` alone would accept operand alignment, which the RTL cannot do).
                src_addr = w.src + (pkt.addr - w.dst)
                dst = self.srams.region(pkt.addr, n_words)
                src = self.srams.region(src_addr, n_words)
                a = rm.DMA_ALIGN_BYTES
                if dst is None or pkt.addr % a or (pkt.reduce and (src is None or src_addr % a)):
                    code = rm.ErrorCode.RX_OUT_OF_WINDOW
        if code is not rm.ErrorCode.OK:
            self.rx_drops += 1
            self.trace.record(rm.Engine.NIC_RX, rm.TraceEvent.END, rm.Kind.RECV, pkt.tag, 0)
            self.csr.error(code, rm.Engine.NIC_RX, pkt.window, pkt.tag)
            return
        mem, idx = dst
        local = None
        if pkt.reduce:
            smem, sidx = src
            local = smem[sidx : sidx + n_words]
        if pkt.bf16:
            mem[idx : idx + n_words] = nx.bf16_receive_words(local, pkt.payload)
        elif pkt.reduce:
            mem[idx : idx + n_words] = nx.reduce_add(local, pkt.payload, self.fmt)
        else:
            mem[idx : idx + n_words] = pkt.payload
        w.received += nbytes
        self.perf["rx_pkts"] += 1
        self.perf["rx_bytes"] += nbytes
        self.trace.record(rm.Engine.NIC_RX, rm.TraceEvent.END, rm.Kind.RECV, pkt.tag, nbytes)
        self._check_window(pkt.window)
