"""NIC of a modelled node: packetising onto the transmit link, RX windows, the in-order applier.

The golden twin of ``hw/nic.py`` (``DESIGN.md``, "One node", "Links").  The
DMA engine hands :meth:`Nic.send` a validated chunk; it leaves back to back in
packets of at most ``max_payload_bytes`` (:mod:`gradsync.spec.link`) on the
single link to ``TX_PEER``.  The receiver's store-and-forward applier takes
packets in order, one at a time (``timing.rx_visible_cycle``), checks each
against the RX window the firmware opened (``WINn_*`` registers) and applies
it: a plain write, or a saturating reduce-add with the window's local source.
A window whose ``RECEIVED`` reaches its armed ``EXPECT`` sets its
``RX_DONE`` bit and raises Irq.RX.

With link faults (:meth:`Nic.attach_link_layer`) the packets go instead
through :class:`~gradsync.model.link.LinkLayer`, the cycle-by-cycle
transcription of the RTL's reliable transport and its faulted link, which
decides when the chunk has left and when each packet is applied.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gradsync.model import numerics as nx
from gradsync.model.csr import register_state
from gradsync.model.engine import Engine, NodeParts
from gradsync.model.link import LinkLayer
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


#: One RX window: ``ctrl``, ``dst``, ``src``, ``len``, ``tag``, ``expect``, ``received`` (its
#: ``WINn_*`` registers) and ``armed`` (EXPECT written and not yet reached).
RxWindow = register_state("RxWindow", rm.RX_WINDOW_ARRAY, ("armed", bool, False))


@dataclass(frozen=True)
class Packet:
    src_node: int
    window: int
    tag: int
    addr: int
    payload: np.ndarray
    reduce: bool


class Nic(Engine):
    """Transmitter and receiver of one node.

    Attributes
    ----------
    peer:
        The NIC at the other end of the transmit link (set when the cluster links nodes).
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
        self.windows = [RxWindow() for _ in range(self.hw.rx_windows)]
        self.rx_done = 0
        self.rx_drops = 0
        self.rx_free_at = 0
        self.perf = dict.fromkeys(("tx", "tx_bytes", "tx_pkts", "rx_pkts", "rx_bytes"), 0)
        #: The faulted transmit link (None: the fault-free formulas of ``spec.timing``).
        self.layer: LinkLayer | None = None
        self._ticking = False
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

        def deliver(cycle: int, pkt: Packet) -> None:
            self.sim.at(cycle, lambda: peer.receive(pkt))

        self.layer = LinkLayer(self.hw, controls, deliver, seq_start)
        self.layer.name = f"link {self.node_id} (node {self.node_id} nic.tx -> next node's nic.rx)"

    def _tick(self) -> None:
        """Keep the link layer stepping while it has work in flight (every 3 cycles, so a
        packet it starts applying is scheduled before its visible cycle)."""
        layer = self.layer
        layer.advance(self.sim.now)
        self._ticking = not layer.quiet_now()
        if self._ticking:
            self.sim.at(self.sim.now + 3, self._tick)

    def _words(self, pkt: Packet, payload_bytes: int) -> list[int]:
        """The packet's link words before the CRC (H0 with sequence 0, tag, address, payload)."""
        h0 = pkt.window | pkt.reduce << 8 | (payload_bytes // 4 - 1) << 9
        # operands of word_bytes each, lowest address in the low bits (hw/packet.py)
        payload = np.asarray(pkt.payload).astype(f"<i{self.wb}")
        return [h0, pkt.tag & M32, pkt.addr & M32, *payload.view("<u4").tolist()]

    def _send_faulted(self, d: rm.Descriptor, data: np.ndarray) -> int:
        layer = self.layer
        packets, offset_bytes = [], 0
        for payload in lk.packet_payloads(d.length, self.hw.link):
            words = data[offset_bytes // self.wb : (offset_bytes + payload) // self.wb]
            pkt = Packet(self.node_id, d.window, d.tag, d.remote_addr + offset_bytes, words,
                         bool(d.flags & rm.DescFlag.REDUCE_ADD))  # fmt: skip
            packets.append((self._words(pkt, payload), pkt))
            self.perf["tx_pkts"] += 1
            self.perf["tx_bytes"] += payload
            offset_bytes += payload
        first, crc_sent = layer.send(self.sim.now, packets)
        t = crc_sent + max(1, 4 // self.hw.link_bytes_per_cycle)
        start = (rm.Engine.NIC_TX, rm.TraceEvent.START, rm.Kind.SEND, d.tag, d.length)
        if first == self.sim.now:
            self.trace.record(*start)
        else:
            self.sim.at(first, lambda: self.trace.record(*start))
        self.perf["tx"] += t - first
        self.sim.at(t, lambda: self.trace.record(start[0], rm.TraceEvent.END, *start[2:]))
        if not self._ticking:
            self._ticking = True
            self.sim.at(layer.now + 3, self._tick)
        return t

    def send(self, d: rm.Descriptor, data: np.ndarray) -> int:
        """Packetise chunk ``data`` of descriptor ``d`` from now; return the cycle it has left."""
        if self.layer is not None:
            return self._send_faulted(d, data)
        t = self.sim.now
        self.trace.record(rm.Engine.NIC_TX, rm.TraceEvent.START, rm.Kind.SEND, d.tag, d.length)
        offset_bytes = 0
        peer = self.peer
        for payload in lk.packet_payloads(d.length, self.hw.link):
            t_end = t + lk.packet_cycles(payload, self.hw.link)
            words = data[offset_bytes // self.wb : (offset_bytes + payload) // self.wb]
            pkt = Packet(
                self.node_id,
                d.window,
                d.tag,
                d.remote_addr + offset_bytes,
                words,
                bool(d.flags & rm.DescFlag.REDUCE_ADD),
            )
            assert peer is not None
            applied = tm.rx_visible_cycle(
                t_end + tm.crc_arrival_offset(self.hw), peer.rx_free_at, payload
            )
            peer.rx_free_at = applied
            self.sim.at(applied, lambda p=peer, pk=pkt: p.receive(pk))
            self.perf["tx_pkts"] += 1
            self.perf["tx_bytes"] += payload
            offset_bytes += payload
            t = t_end
        self.perf["tx"] += t - self.sim.now
        self.sim.at(
            t,
            lambda: self.trace.record(
                rm.Engine.NIC_TX, rm.TraceEvent.END, rm.Kind.SEND, d.tag, d.length
            ),
        )
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
        if field == "CTRL":
            w.ctrl = value & 1
            if value & 1:
                w.received = 0
                w.armed = False
                self.rx_done &= ~(1 << w_idx)
        elif field == "EXPECT":
            w.armed = True
            self._check_window(w_idx)

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
            "L{}c{}s{}".format(*rm.decode_tag(w.tag))
            for w in self.windows
            if w.ctrl & 1 and w.armed and w.received < w.expect
        ]
        return ["nic.rx waits for tags " + ", ".join(waiting)] if waiting else []

    def receive(self, pkt: Packet) -> None:
        """Apply one packet arriving from the link (called at its apply cycle)."""
        nbytes = len(pkt.payload) * self.wb
        code = rm.ErrorCode.OK
        if pkt.window >= len(self.windows) or not self.windows[pkt.window].ctrl & 1:
            code = rm.ErrorCode.RX_NO_WINDOW
        else:
            w = self.windows[pkt.window]
            if w.tag != pkt.tag:
                code = rm.ErrorCode.RX_TAG_MISMATCH
            elif not (w.dst <= pkt.addr and pkt.addr + nbytes <= w.dst + w.len):
                code = rm.ErrorCode.RX_OUT_OF_WINDOW
            else:
                # The packet must lie inside one SRAM, and so must a reduce-add's source; both
                # 32-bit aligned, since the receiver moves the packet's 32-bit payload words
                # (``region`` alone would accept operand alignment, which the RTL cannot do).
                src_addr = w.src + (pkt.addr - w.dst)
                dst = self.srams.region(pkt.addr, len(pkt.payload))
                src = self.srams.region(src_addr, len(pkt.payload))
                a = rm.DMA_ALIGN_BYTES
                if dst is None or pkt.addr % a or (pkt.reduce and (src is None or src_addr % a)):
                    code = rm.ErrorCode.RX_OUT_OF_WINDOW
        if code is not rm.ErrorCode.OK:
            self.rx_drops += 1
            self.trace.record(rm.Engine.NIC_RX, rm.TraceEvent.END, rm.Kind.RECV, pkt.tag, 0)
            self.csr.error(code, rm.Engine.NIC_RX, pkt.window, pkt.tag)
            return
        mem, idx = dst
        if pkt.reduce:
            smem, sidx = src
            local = smem[sidx : sidx + len(pkt.payload)]
            mem[idx : idx + len(pkt.payload)] = nx.add_saturating(local, pkt.payload, self.fmt)
        else:
            mem[idx : idx + len(pkt.payload)] = pkt.payload
        w.received += nbytes
        self.perf["rx_pkts"] += 1
        self.perf["rx_bytes"] += nbytes
        self.trace.record(rm.Engine.NIC_RX, rm.TraceEvent.END, rm.Kind.RECV, pkt.tag, nbytes)
        self._check_window(pkt.window)
