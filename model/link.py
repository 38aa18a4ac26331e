"""A faulted link of the golden model, cycle by cycle: transmitter, link, receiver front end.

``DESIGN.md`` ("NIC + links"): with ``--link-faults`` the model does not time
packets with ``gradsync.spec.timing``'s formulas but steps, per link and per
cycle, a transcription of the RTL's link layer -- ``hw/nic.py``'s ``NicTx``
(sequence numbers, replay buffer, go-back-N on NAK or timeout, credits),
``gradsync.spec.faults.LinkReference`` (the link and its fault process, the
same generator and decisions as ``hw/link.py``), ``hw/nic_rx.py``'s
``RxFrontEnd`` (CRC and sequence check, ACK/NAK/credit, repeats) and the
timing of its ``RxApplier`` -- so a faulted run is cycle-exact with the RTL.
The model's :class:`~gradsync.model.nic.Nic` hands it a chunk's packets and
learns when the chunk has left; the receiving Nic's ``receive`` is called in
the cycle each packet's effects become visible.

The applier holds a packet for its window's next step until the firmware
writes the window's TAG (``hw/nic_rx.py``, receiver not ready).  Whether it
holds in cycle ``t`` is asked of the receiving Nic (``rx_check``), which
knows every TAG write up to the current cycle of the event loop but none
after it.  So the applier is stepped on its own: it may lag behind the
transmitter, link and front end, which run ahead inside a send (to learn when
the chunk has left) as far as nothing the applier could still decide changes
them -- the applier reaches the front end only through the packets it frees
(``applied``, hence the credits), and a packet checked in cycle ``a`` frees
its slot no earlier than at the end of cycle ``a + payload_words + 1``.  A
send that cannot finish without knowing a later TAG write is left pending
and finished by later :meth:`LinkLayer.advance`/:meth:`LinkLayer.resume` calls.

Cycle ``t`` here is the cycle counter's value: the process restarts at
cycle 0 (the RTL backend loads the seeds during reset).
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gradsync.model.events import SimulationError
from gradsync.spec import faults as fs
from gradsync.spec.link import NIC_CREDITS, NIC_WINDOW_PACKETS, nic_timeouts

M16 = 0xFFFF
HEADER_WORDS = 3
#: The NIC's flow control (``gradsync.spec.link``, as the RTL node's).
WINDOW_PACKETS = NIC_WINDOW_PACKETS
CREDITS = NIC_CREDITS


def crc32_words(words: list[int]) -> int:
    """The packet CRC (``hw/packet.py``: CRC-32 Ethernet over 32-bit words, LSB first)."""
    return zlib.crc32(np.asarray(words, dtype="<u4").tobytes())


@dataclass
class _TxPacket:
    words: list[int]  #: H0 (with sequence number) .. last payload word
    crc: int
    item: object  #: what the receiver's ``receive`` gets
    payload_words: int


class LinkStalled(SimulationError):
    """A send made no progress (no packet accepted, none acknowledged) for ``stall_limit``
    cycles: the link lost everything, or the receiver never frees a credit."""


class LinkLayer:
    """Link ``i``: node ``i``'s NicTx, the link, node ``i + 1``'s RxFrontEnd and applier timing.

    The link's width and latency (data and acknowledgement sideband) and NicTx's
    retransmission timeout follow node ``i``'s link in effect in each cycle, the
    front end's NAK hold-off and payload check node ``i + 1``'s
    (:class:`~gradsync.model.link_setting.LinkSetting`, ``LINK_SET``).

    Parameters
    ----------
    tx_link, rx_link:
        The sending and the receiving node's links by cycle (``at(cycle)`` gives a
        ``gradsync.spec.link.LinkConfig``).
    controls:
        The link's fault controls (``gradsync.spec.faults.CONTROLS``).
    deliver:
        ``deliver(cycle, item)`` -- a packet's effects become visible in ``cycle``.
    seq_start:
        First sequence number (``hw/nic.py``'s ``seq_start``).
    rx_check:
        ``rx_check(cycle, item)``: does the applier hold this packet in ``cycle`` (its
        window's next step)?  True, False, or None when that depends on writes the event
        loop has not made yet.  None: never hold.
    apply_words:
        Payload words the receiver applies per cycle: 1, or 2 on a ``link_width_bytes`` 8
        build (``gradsync.spec.timing.rx_apply_words``).
    """

    def __init__(
        self,
        tx_link,
        rx_link,
        controls: dict,
        deliver: Callable[[int, object, int], None],
        seq_start: int = 0,
        rx_check: Callable[[int, object], bool | None] | None = None,
        apply_words: int = 1,
    ):
        self.tx_link, self.rx_link = tx_link, rx_link
        #: payload words the receiver's applier writes per cycle (``timing.rx_apply_words``)
        self.apply_words = apply_words
        self.name = "link"  #: how errors name it (the NIC sets ``link I (...)``)
        first = tx_link.at(0)
        self._check_latency(first, 0)
        self.link = fs.LinkReference(first.latency_cycles, first.bytes_per_cycle, controls)
        self.deliver = deliver
        self._tx_in_use = self._rx_in_use = None  # the links the settings below were taken from
        self.timeout = self.holdoff = self.max_pw = 0
        self._follow_links(0)
        self.now = 0  #: next cycle to simulate
        #: the watchdog's bound: a send stuck this long raises :class:`LinkStalled` (None: never)
        self.stall_limit: int | None = None
        self.last_progress = 0  #: last cycle a new packet started or an ack freed one
        #: (last progress, cycle, message) of a stall, for the watchdog's report
        self.stalled: tuple[int, int, str] | None = None
        # ---- NicTx
        self.seq_next = self.una = seq_start
        self.limit = (seq_start + CREDITS) & M16
        self.resend_pending = False
        self.state = "IDLE"
        self.rs = 0
        self.ridx = 0
        self.widx = 0
        self.timer = 0
        self.replay: dict[int, _TxPacket] = {}
        self.resent_across_wrap = 0  #: resends of 0xFFFF that went on with 0 (tests)
        self.tx_counters = dict.fromkeys(("packets_sent", "retransmits", "timeouts", "naks"), 0)
        # ---- the DMA's offer: packets of the chunk being sent, word index in the first
        self.offer: deque[_TxPacket] = deque()
        self.offer_wi = 0
        self.first_fire: int | None = None
        self.crc_sent_last: int | None = None
        # ---- RxFrontEnd
        self.exp = self.applied = seq_start
        self.rx_widx = 0
        self.rx_h0 = 0
        self.rx_words: list[int] = []
        self.nak_sent = self.nak_pending = self.dirty = False
        self.nak_holdoff = 0
        self.quiet = 0
        #: committed packets not yet freed by the applier: (first cycle valid, packet)
        self.queue: deque[tuple[int, _TxPacket]] = deque()
        self.rx_counters = dict.fromkeys(("crc_errors", "seq_errors", "duplicates"), 0)
        # ---- RxApplier, stepped on its own (module docstring)
        self.rx_check = rx_check
        self.apply_now = 0  #: next cycle the applier simulates (<= self.now)
        self.apply_state = "IDLE"  #: IDLE, CHECK (the head packet) or RUN (until apply_last)
        self.apply_last = -1  #: the cycle of the LAST state of the packet being applied
        self.held = False  #: the head packet failed its check for its window's next step
        self.holds = 0  #: packets held at least one cycle

    def _check_latency(self, link, cycle: int) -> None:
        if link.latency_cycles < 1:
            raise SimulationError(
                f"{self.name}: a faulted model link needs a latency >= 1 cycle, not "
                f"{link.latency_cycles} (from cycle {cycle})"
            )

    def _follow_links(self, t: int) -> None:
        """Take the settings of the links in effect in cycle ``t``."""
        tx, rx = self.tx_link.at(t), self.rx_link.at(t)
        if tx is not self._tx_in_use:
            self._check_latency(tx, t)
            self._tx_in_use = tx
            self.link.set_link(tx.latency_cycles, tx.bytes_per_cycle)
            self.timeout = nic_timeouts(tx)[0]
        if rx is not self._rx_in_use:
            self._rx_in_use = rx
            self.holdoff = nic_timeouts(rx)[1]
            self.max_pw = rx.max_payload_bytes // 4

    # ------------------------------------------------------------------ interface
    def send(self, t0: int, packets: list[tuple[list[int], object]]) -> tuple[int, int]:
        """The DMA offers a chunk from cycle ``t0``: ``packets`` are (words H0..payload, item)
        with H0's sequence field 0.  Returns (cycle of the first word's transfer, cycle the
        last packet's CRC word was taken)."""
        if t0 < self.now:
            raise RuntimeError(f"link layer at cycle {self.now} asked to send from {t0}")
        self.advance(t0)
        for words, item in packets:
            self.offer.append(_TxPacket(list(words), 0, item, len(words) - HEADER_WORDS))
        self.offer_wi = 0
        self.first_fire = self.crc_sent_last = None
        self.last_progress = max(self.last_progress, t0)
        return self.resume()

    @property
    def sending(self) -> bool:
        """A chunk offered by :meth:`send` has not left yet."""
        return self.crc_sent_last is None and bool(self.offer)

    def resume(self) -> tuple[int, int] | None:
        """Step on until the chunk of the last :meth:`send` has left: (first word's transfer,
        last CRC word's), or None if that needs a TAG write the event loop has not made."""
        while self.crc_sent_last is None:
            if not self._step():
                return None
            if self.stall_limit is not None and self.now - self.last_progress > self.stall_limit:
                message = (
                    f"{self.name}: no progress for {self.now - self.last_progress} cycles at "
                    f"cycle {self.now}: {(self.seq_next - self.una) & M16} packet(s) "
                    f"unacknowledged, {len(self.offer)} waiting; counters {self.counters}"
                )
                self.stalled = (self.last_progress, self.now, message)
                raise LinkStalled(message)
        return self.first_fire, self.crc_sent_last

    def advance(self, t: int) -> None:
        """Simulate every part up to the cycles before ``t`` (all TAG writes before ``t`` known)."""
        while self.now < t or self.apply_now < t:
            if not self._step():
                raise RuntimeError(f"link layer: applier undecided in cycle {self.apply_now} < {t}")

    def _step(self) -> bool:
        """One cycle of the applier if it lags the front end, else of everything else.

        False: the applier cannot decide yet and the front end is as far as it may go."""
        if self.apply_now < self.now:
            if self._apply(self.apply_now):
                self.apply_now += 1
                return True
            # held in CHECK at apply_now: nothing it decides frees a slot before this
            if self.now > self.apply_now + self._run_cycles(self.queue[0][1]) + 1:
                return False
        self._cycle()
        return True

    def _apply(self, t: int) -> bool:
        """The applier in cycle ``t`` (``hw/nic_rx.py``'s ``RxApplier``); False: undecided."""
        if self.apply_state == "RUN":
            if t == self.apply_last:  # frees the slot at the end of t
                self.queue.popleft()
                self.applied = (self.applied + 1) & M16
                self.dirty = True
                self.apply_state = "IDLE"
            return True
        if self.apply_state == "CHECK":
            pkt = self.queue[0][1]
            hold = False if self.rx_check is None else self.rx_check(t, pkt.item)
            if hold is None:
                return False
            if hold:
                self.holds += not self.held
                self.held = True
                return True
            self.held = False
            self.apply_state = "RUN"
            self.apply_last = t + 1 + self._run_cycles(pkt)
            self.deliver(self.apply_last + 1, pkt.item, t)
            return True
        if self.queue and self.queue[0][0] <= t:  # IDLE: take the head packet, check it next
            self.apply_state = "CHECK"
        return True

    def _run_cycles(self, pkt: _TxPacket) -> int:
        """Cycles the applier's RUN state takes for ``pkt``: its payload words, ``apply_words``
        a cycle."""
        return -(-pkt.payload_words // self.apply_words)

    def quiet_now(self) -> bool:
        """Nothing in flight or pending that could change the link's state but the fault
        process itself (a repeated acknowledgement changes nothing)."""
        return (
            self.state == "IDLE"
            and not self.offer
            and self.una == self.seq_next
            and not self.resend_pending
            and not self.queue
            and self.apply_state == "IDLE"
            and self.apply_now == self.now
            and not (self.nak_sent or self.nak_pending)
            and self.rx_widx == 0
            and not self.link.in_flight()
            and self.limit == (self.applied + CREDITS) & M16
        )

    @property
    def counters(self) -> dict:
        return {**self.link.counters, **self.tx_counters, **self.rx_counters}

    # ------------------------------------------------------------------ one cycle
    @property
    def pair(self) -> bool:
        """The transmit link runs at 8 bytes/cycle: beats of two words (``hw/nic.py``,
        ``NicTx`` of width 8: the CRC in the second half of a last beat of one word)."""
        return self._tx_in_use.bytes_per_cycle == 8

    def _tx_outputs(self):
        """NicTx's link outputs in this cycle: (valid, data, last, kind, data1); ``data1`` is a
        beat's second word (None: a beat of one word)."""
        st = self.state
        if st == "IDLE":
            if self.resend_pending:
                return False, 0, False, "resend", None
            outstanding = (self.seq_next - self.una) & M16
            credit_ok = (self.seq_next - self.limit) & 0x8000
            if self.offer and outstanding < WINDOW_PACKETS and credit_ok:
                words = self.offer[0].words
                data1 = words[1] if self.pair else None
                return True, words[0] | self.seq_next << 16, False, "new0", data1
            return False, 0, False, None, None
        if st == "NEW":
            words, wi = self.offer[0].words, self.offer_wi
            if not self.pair:
                return True, words[wi], False, "new", None
            if wi + 1 < len(words):
                return True, words[wi], False, "new", words[wi + 1]
            return True, words[wi], True, "newmerge", crc32_words([*self.crc_words, words[wi]])
        if st == "NEW_CRC":
            return True, self.cur_crc, True, "newcrc", None
        pkt = self.replay[self.rs]
        if st == "RESEND":
            if not self.pair:
                return True, pkt.words[self.ridx], False, "resend_word", None
            if self.ridx + 1 < len(pkt.words):
                return True, pkt.words[self.ridx], False, "resend_word", pkt.words[self.ridx + 1]
            return True, pkt.words[self.ridx], True, "resendmerge", pkt.crc
        return True, pkt.crc, True, "resendcrc", None

    def _rx_ack(self):
        if self.dirty or self.nak_pending:
            return fs.ack_pack(self.exp, (self.applied + CREDITS) & M16, int(self.nak_pending))
        return None

    def _cycle(self) -> None:
        t = self.now
        self._follow_links(t)
        valid, data, last, kind, data1 = self._tx_outputs()
        ack = self._rx_ack()
        if data1 is None:
            fire, beat, ack_in = self.link.cycle(valid, data, last, ack)
        else:
            fire, beat, ack_in = self.link.cycle(valid, data, last, ack, data1=data1)
        resending = self.state in ("RESEND", "RESEND_CRC")
        outstanding = (self.seq_next - self.una) & M16
        # the timer sees the registers of this cycle, before the FSM and the ack update them
        nothing_out = outstanding == 0
        self._tx_fsm(t, kind, fire, data if data1 is None or last else (data, data1))
        advanced = self._tx_ack(ack_in, outstanding, resending)
        self._tx_timer(nothing_out or advanced or resending)
        self._rx(t, ack is not None, beat)
        self.now = t + 1

    def _tx_fsm(self, t: int, kind, fire: bool, data) -> None:
        """NicTx at the clock edge; ``data``: the beat's data word, or (word, word) for a beat
        of two data words (8 bytes/cycle)."""
        st = self.state
        words = list(data) if isinstance(data, tuple) else [data]
        if st == "IDLE":
            if kind == "resend":
                self.resend_pending = False
                if self.una != self.seq_next:
                    self.rs, self.ridx, self.state = self.una, 0, "RESEND"
            elif kind == "new0" and fire:
                self.last_progress = t
                pkt = self.offer[0]
                pkt.words[0] = words[0]
                self.crc_words = list(words)
                self.offer_wi = len(words)
                if self.first_fire is None:
                    self.first_fire = t
                self.state = "NEW"
        elif st == "NEW":
            if fire:
                self.crc_words += words
                self.offer_wi += len(words)
                if kind == "newmerge":  # the CRC went with the last word
                    self.cur_crc = crc32_words(self.crc_words)
                    self._new_sent(t)
                elif self.offer_wi == len(self.offer[0].words):
                    self.cur_crc = crc32_words(self.crc_words)
                    self.state = "NEW_CRC"
        elif st == "NEW_CRC":
            if fire:
                self._new_sent(t)
        elif st == "RESEND":
            if fire and kind == "resendmerge":
                self._resent()
            elif fire:
                self.ridx += len(words)
                if self.ridx == len(self.replay[self.rs].words):
                    self.state = "RESEND_CRC"
        elif fire:  # RESEND_CRC
            self._resent()

    def _new_sent(self, t: int) -> None:
        """A new packet's CRC word was taken: it joins the replay buffer."""
        pkt = self.offer.popleft()
        pkt.crc = self.cur_crc
        self.replay[self.seq_next] = pkt
        self.replay.pop((self.seq_next - WINDOW_PACKETS) & M16, None)
        self.seq_next = (self.seq_next + 1) & M16
        self.tx_counters["packets_sent"] += 1
        self.offer_wi = 0
        self.state = "IDLE"
        if not self.offer:
            self.crc_sent_last = t

    def _resent(self) -> None:
        """A resent packet's CRC word was taken: on to the next, or back to IDLE."""
        self.tx_counters["retransmits"] += 1
        self.resent_across_wrap += self.rs == M16 and self.seq_next != 0
        self.rs = (self.rs + 1) & M16
        self.ridx = 0
        self.state = "IDLE" if self.rs == self.seq_next else "RESEND"

    def _tx_ack(self, msg, outstanding: int, resending: bool) -> bool:
        if msg is None or not fs.ack_valid(msg):
            return False
        exp, limit, nak = msg & M16, msg >> 16 & M16, msg >> 32 & 1
        advanced = False
        d = (exp - self.una) & M16
        if d <= outstanding and d != 0:
            self.una = exp
            advanced = True
            self.last_progress = self.now
            if (self.exp - exp) & 0x8000:  # a scoreboard, not the RTL: never fires if correct
                raise RuntimeError(f"link: sender freed {exp:#x} the receiver never got")
        self.limit = limit
        if nak and not resending:
            self.resend_pending = True
            self.tx_counters["naks"] += 1
        return advanced

    def _tx_timer(self, restart: bool) -> None:
        if restart:
            self.timer = 0
        elif self.timer >= self.timeout - 1:
            self.timer = 0
            self.resend_pending = True
            self.tx_counters["timeouts"] += 1
        else:
            self.timer += 1

    def _rx(self, t: int, ack_sent: bool, beat) -> None:
        """RxFrontEnd at the clock edge ending cycle ``t`` (the applier: :meth:`_apply`)."""
        if ack_sent:
            self.nak_pending = False
        self.dirty = False
        if ack_sent:
            self.quiet = 0
        elif self.quiet >= self.holdoff:
            self.quiet, self.dirty = 0, True
        else:
            self.quiet += 1
        # the arrival's verdict reads the NAK flag of this cycle (the register before the
        # edge): a packet whose last beat lands as the hold-off ends is not NAKed
        nak_sent = self.nak_sent
        if nak_sent:
            if self.nak_holdoff >= self.holdoff:
                self.nak_sent = False
            else:
                self.nak_holdoff += 1
        if beat is not None:
            self._arrival(t, *beat, nak_sent=nak_sent)

    def _arrival(
        self, t: int, data: int, last: bool, data1: int | None = None, *, nak_sent: bool
    ) -> None:
        """A beat at the front end: one word, or two (``data1``, 8 bytes/cycle); on the
        ``last`` beat its final word is the CRC (``hw/nic_rx.py``, ``_arrival_wide``)."""
        h0 = self.rx_h0
        words = [data] if data1 is None else [data, data1]
        crc = words.pop() if last else None
        for w in words:  # the beat's data words
            if self.rx_widx == 0:
                self.rx_h0 = w
                self.rx_words = []
            self.rx_words.append(w)
            if not last:
                self.rx_widx = min(self.rx_widx + 1, 255)
        if not last:
            return
        count = self.rx_widx + len(words)  # data words of the packet
        pw_in = (h0 >> 9 & 0x7F) + 1  # H0 as registered before this beat
        good = (
            count == HEADER_WORDS + pw_in  # >= 4: rx_words are this packet's
            and pw_in <= self.max_pw
            and crc32_words(self.rx_words) == crc
        )
        self.rx_widx = 0
        seq = self.rx_h0 >> 16
        if good and seq == self.exp:
            if len(self.queue) >= CREDITS + 1:
                raise RuntimeError("link: receiver buffer overrun (credits broken)")
            self.queue.append((t + 1, self.replay[seq]))  # valid from the next cycle
            self.exp = (self.exp + 1) & M16
            self.dirty = True
            self.nak_sent = False
        elif good and (seq - self.exp) & 0x8000:
            self.rx_counters["duplicates"] += 1
            self.dirty = True
        else:
            self.rx_counters["seq_errors" if good else "crc_errors"] += 1
            if not nak_sent:
                self.nak_sent = self.nak_pending = True
                self.nak_holdoff = 0
