"""The link fault process, defined once: generators, decisions, fault kinds, the CLI spec.

``DESIGN.md`` ("NIC + links"): every link (``hw/link.py``) injects faults
from its own pseudo-random process so a fault campaign costs no Python per
packet on the RTL; the golden model (``model/link.py``) runs the same process
cycle by cycle, so a faulted run is cycle-exact between the two.  This module
is that process's single definition:

* the control values of a link (:data:`CONTROLS`, the ``l{i}_<name>`` ports
  of a cluster) and :func:`parse_link_faults`, the ``--link-faults`` parser;
* :class:`LinkReference`: one direction of a link, cycle by cycle, in plain
  Python -- the generators, which draw decides what in which cycle, the
  bandwidth throttle, the latency line and every fault kind.  The Amaranth
  ``Link`` is tested against it word for word.

The process (all rates are per 65536)
------------------------------------
Six xorshift32 generators (:data:`GENERATORS`) advance every cycle.  The
process restarts -- generators seeded from ``seed``, the fault cycle counter,
stall and down timers at 0 -- in the cycle after reset or ``seed_load`` is
high; in the first cycle after the restart generator ``g`` holds
``(seed ^ SALT[g]) | BIT[g]`` and the fault cycle is 0.

``stall``
    A cycle with no stall running starts one if ``cyc[8:24] < stall_rate``
    (and ``stall_max`` > 0): ``tx`` is not ready for ``1 + (cyc[24:32] *
    stall_max >> 8)`` cycles from the next one.
``drop``, ``corrupt``
    Decided at a packet's first word: dropped if ``pkt[0:16] < drop_rate``
    (no word of it arrives); else one bit, ``cyc[2:7]``, of word
    ``cyc[0:2]`` flipped if ``pkt[16:32] < corrupt_rate``.
``burst``
    At the first word, if not dropped and ``aux[0:16] < burst_rate``:
    ``burst_len`` consecutive bits from bit ``pos[8:13]`` (cut at bit 31) of
    word ``pos[0:8] * n >> 8`` are flipped, ``n`` the packet's words (header,
    payload and CRC, from H0's length field): any word, the CRC word too.
``frame``
    At the first word, if not dropped and ``aux[16:32] < frame_rate``: the
    ``last`` flag of word ``pos[16:24] * n >> 8`` is inverted -- an early
    ``last`` truncates the packet, a cleared one on the CRC word merges it
    with the next.
``ack-drop``, ``ack-corrupt``
    Per acknowledge message entering the sideband: dropped if ``ack[0:16] <
    ack_drop_rate``; else bit ``pos[24:30] * 41 >> 6`` of its 41 bits
    (exp, limit, nak, chk) flipped if ``ack[16:32] < ack_corrupt_rate``.
``down``
    The link is down while the fault cycle is in ``[down_at, down_at +
    down_len)`` or a random outage runs: a cycle with none running starts one
    if ``dn[0:16] < down_rate`` (and ``down_mean`` > 0), lasting ``1 +
    (dn[16:32] * down_mean >> 15)`` cycles from the next one (mean about
    ``down_mean``).  Words accepted while down are lost (a packet cut by an
    outage arrives truncated or merged) and so are acknowledge messages.

Beats of two words (8 bytes/cycle)
    At 8 bytes/cycle a link beat carries two words of a packet, ``2k`` and
    ``2k + 1`` of it in beat ``k`` (the last beat may hold one: the CRC word, or
    the last payload word and the CRC word); the timers, stalls and outages are
    per cycle as ever, the per-packet decisions are drawn in the cycle of the
    packet's first beat, and the word indices above count words, not beats: a
    bit or burst fault hits the half of the beat that carries its word, and a
    framing fault on word ``w`` inverts the ``last`` flag of the beat carrying
    ``w`` (packets begin and end on beat boundaries, so a framing fault
    truncates or merges packets by whole beats).  A beat lost to an outage loses
    both its words.

The counters count packets (first words accepted), packets dropped, packets
with data corrupted (bit or burst), packets with framing faults, stalls and
outages started, cycles down, acknowledge messages dropped and corrupted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gradsync.spec.link import LINK_BYTES_PER_CYCLE, LINK_MAX_LATENCY_CYCLES, word_period

M32 = 0xFFFF_FFFF

#: Fault-injection control ports of a link and their widths (``hw.link``; a cluster
#: exposes them per link as ``l{i}_<name>``).
CONTROLS = {
    "corrupt_rate": 16,
    "drop_rate": 16,
    "stall_rate": 16,
    "stall_max": 8,
    "burst_rate": 16,
    "burst_len": 6,
    "frame_rate": 16,
    "ack_drop_rate": 16,
    "ack_corrupt_rate": 16,
    "down_rate": 16,
    "down_mean": 16,
    "down_at": 32,
    "down_len": 32,
    "seed": 32,
    "seed_load": 1,
}
#: Counters of a link (32 bits each).
COUNTERS = (
    "packets",
    "corrupted",
    "dropped",
    "stalls",
    "framed",
    "downs",
    "down_cycles",
    "acks_dropped",
    "acks_corrupted",
)
#: The generators, in order, and their seeding: ``(seed ^ salt) | bit``.
GENERATORS = ("pkt", "cyc", "aux", "pos", "ack", "dn")
SALT = (0, 0x9E37_79B9, 0x85EB_CA6B, 0xC2B2_AE35, 0x27D4_EB2F, 0x1656_67B1)
BIT = (1, 2, 4, 8, 16, 32)
#: Bits of an acknowledge message: exp (16), limit (16), nak (1), chk (8), LSB first.
ACK_BITS = 41

#: ``--link-faults`` keys -> control names, and the defaults a key brings along.
KEYS = {
    "corrupt": "corrupt_rate",
    "drop": "drop_rate",
    "stall": "stall_rate",
    "stall-max": "stall_max",
    "burst": "burst_rate",
    "burst-len": "burst_len",
    "frame": "frame_rate",
    "ack-drop": "ack_drop_rate",
    "ack-corrupt": "ack_corrupt_rate",
    "down-rate": "down_rate",
    "down-mean": "down_mean",
    "down-at": "down_at",
    "down-len": "down_len",
    "seed": "seed",
}
_DEFAULTS = {"stall_rate": ("stall_max", 16), "burst_rate": ("burst_len", 8),
             "down_rate": ("down_mean", 1000)}  # fmt: skip
_FAULTS = ("corrupt_rate", "drop_rate", "stall_rate", "burst_rate", "frame_rate",
           "ack_drop_rate", "ack_corrupt_rate", "down_rate", "down_len")  # fmt: skip


def xorshift32(x: int) -> int:
    """One step of Marsaglia's xorshift32 (13, 17, 5) on a 32-bit integer."""
    x ^= (x << 13) & M32
    x ^= x >> 17
    x ^= (x << 5) & M32
    return x


def seeded(seed: int) -> list[int]:
    """The generators' values in the first cycle after a restart with ``seed``."""
    return [((seed ^ s) | b) & M32 for s, b in zip(SALT, BIT, strict=True)]


def ack_check(exp: int, limit: int, nak: int) -> int:
    """The 8-bit check of an acknowledge message: XOR of its bytes and the nak bit.

    Every bit of the message enters it exactly once, so any single flipped bit
    (the sideband's ``ack-corrupt`` fault) is detected and the message ignored.
    """
    return (exp ^ exp >> 8 ^ limit ^ limit >> 8 ^ nak) & 0xFF


def ack_pack(exp: int, limit: int, nak: int) -> int:
    """An acknowledge message as the 41-bit integer the link carries."""
    return exp | limit << 16 | nak << 32 | ack_check(exp, limit, nak) << 33


def ack_valid(msg: int) -> bool:
    """Whether a (possibly corrupted) 41-bit message passes its check."""
    exp, limit, nak = msg & 0xFFFF, msg >> 16 & 0xFFFF, msg >> 32 & 1
    return msg >> 33 == ack_check(exp, limit, nak)


def packet_words(h0: int) -> int:
    """Link words of a packet (header, payload, CRC) from its H0 word's length field."""
    return (h0 >> 9 & 0x7F) + 5


class LinkReference:
    """One direction of a link with its fault process, cycle by cycle (``hw/link.py``'s twin).

    Each cycle: read :meth:`ready` (the transmitter may depend on it), then call
    :meth:`cycle` with what the transmitter and the receiver's acknowledge side
    offer; it returns what arrives at the far ends in this cycle.

    Latency and width are run-time settings (``LINK_SET``, :meth:`set_link`); at 8
    bytes/cycle a beat carries two words (``data1``, module docstring).  Both
    directions are a delay line written every cycle and read ``L`` cycles back,
    ``L`` the latency in effect in the reading cycle: what arrives in cycle ``t``
    is what entered in cycle ``t - L(t)`` (``L = 0``: the same cycle), so a latency
    raised by ``k`` repeats ``k`` cycles' words and one lowered by ``k`` skips ``k``.

    Parameters
    ----------
    latency_cycles, bytes_per_cycle:
        As ``hw.link.Link``'s, until :meth:`set_link` changes them (latency at
        most ``LINK_MAX_LATENCY_CYCLES``).
    controls:
        Control values by name (:data:`CONTROLS`; missing ones are 0); the
        process starts restarted with ``controls["seed"]``.
    """

    def __init__(self, latency_cycles: int, bytes_per_cycle: int, controls: dict) -> None:
        unknown = set(controls) - set(CONTROLS)
        if unknown:
            raise ValueError(f"unknown link controls {sorted(unknown)}")
        self.set_link(latency_cycles, bytes_per_cycle)
        c = {name: int(controls.get(name, 0)) for name in CONTROLS}
        self.c = c
        self.gen = seeded(c["seed"])
        self.fcyc = 0
        self.t = 0  # cycles since reset: the delay lines' write position (never restarted)
        self.last_beat_in = -LINK_MAX_LATENCY_CYCLES - 2  #: cycle a word last entered the line
        self.gap = 0
        self.stall = 0
        self.down = 0
        self.in_packet = False
        self.word = 0
        self.hold = (False, None, None, None)  # drop, corrupt (w, mask), burst, frame word
        #: what entered in cycle s, at s % (LINK_MAX_LATENCY_CYCLES + 1): word, ack message
        self.line: list = [None] * (LINK_MAX_LATENCY_CYCLES + 1)
        self.ack_line: list = [None] * (LINK_MAX_LATENCY_CYCLES + 1)
        self.counters = dict.fromkeys(COUNTERS, 0)

    def set_link(self, latency_cycles: int, bytes_per_cycle: int) -> None:
        """Latency (cycles) and width (bytes per cycle) from the next :meth:`cycle` on."""
        if not 0 <= latency_cycles <= LINK_MAX_LATENCY_CYCLES:
            raise ValueError(
                f"latency_cycles must be in 0..{LINK_MAX_LATENCY_CYCLES}, not {latency_cycles!r}"
            )
        if bytes_per_cycle not in LINK_BYTES_PER_CYCLE:
            raise ValueError(
                f"bytes_per_cycle must be one of {LINK_BYTES_PER_CYCLE}, not {bytes_per_cycle!r}"
            )
        self.latency = latency_cycles
        self.period = word_period(bytes_per_cycle)

    def in_flight(self) -> bool:
        """A word on the line still arrives at the present latency."""
        return self.last_beat_in >= self.t - self.latency

    def ready(self) -> bool:
        """Whether ``tx`` accepts a word in this cycle."""
        return self.gap == 0 and self.stall == 0

    def is_down(self) -> bool:
        """Whether the link is down in this cycle."""
        c = self.c
        return self.down != 0 or ((self.fcyc - c["down_at"]) & M32) < c["down_len"]

    def _first_word(self, h0: int) -> tuple:
        """The packet's fault decisions, drawn in the cycle of its first word."""
        pkt, cyc, aux, pos = self.gen[0], self.gen[1], self.gen[2], self.gen[3]
        c = self.c
        drop = (pkt & 0xFFFF) < c["drop_rate"]
        corrupt = burst = frame = None
        if not drop:
            if (pkt >> 16) < c["corrupt_rate"]:
                corrupt = (cyc & 3, 1 << (cyc >> 2 & 31))
            n = packet_words(h0)
            if (aux & 0xFFFF) < c["burst_rate"]:
                mask = ((1 << c["burst_len"]) - 1) << (pos >> 8 & 31) & M32
                burst = ((pos & 0xFF) * n >> 8, mask)
            if (aux >> 16) < c["frame_rate"]:
                frame = (pos >> 16 & 0xFF) * n >> 8
        return drop, corrupt, burst, frame

    def load(self, seed: int) -> None:
        """``seed_load`` high in the cycle just run: the next cycle sees the generators
        restarted with ``seed``, the fault cycle counter at 0 and no stall or outage
        (the packet in progress, the bandwidth gap, the delay lines and the counters go on)."""
        self.gen = seeded(seed)
        self.fcyc = self.stall = self.down = 0

    def cycle(self, valid: bool, data: int, last: bool, ack: int | None, data1: int | None = None):
        """One cycle: ``tx`` offers (valid, data, last), the receiver sends ``ack`` (or None).

        ``data1``: a beat's second word (8 bytes/cycle; None: a beat of one word).
        Returns ``(accepted, beat, ack_out)``: whether the beat was taken, the
        ``(data, last)`` -- ``(data, last, data1)`` for a beat of two words --
        arriving at ``rx`` in this cycle (or None) and the acknowledge message
        arriving at ``ack_rx`` (or None).
        """
        c, cnt, gen = self.c, self.counters, self.gen
        accepted = valid and self.gap == 0 and self.stall == 0
        down = self.is_down()
        out = None
        if accepted:
            if not self.in_packet:
                self.hold = self._first_word(data)
                cnt["packets"] += 1
                cnt["dropped"] += self.hold[0]
                cnt["corrupted"] += self.hold[1] is not None or self.hold[2] is not None
                cnt["framed"] += self.hold[3] is not None
            drop, corrupt, burst, frame = self.hold
            w = self.word
            words = [data] if data1 is None else [data, data1]
            for fault in (corrupt, burst):
                if fault is not None and 0 <= fault[0] - w < len(words):
                    words[fault[0] - w] ^= fault[1]
            out_last = last ^ (frame is not None and 0 <= frame - w < len(words))
            if not drop and not down:
                out = (words[0], bool(out_last), *words[1:])
            self.in_packet = not last
            self.word = 0 if last else min(w + len(words), 255)
        ack_in = None
        if ack is not None:
            a = gen[4]
            if down or (a & 0xFFFF) < c["ack_drop_rate"]:
                cnt["acks_dropped"] += 1
            else:
                if (a >> 16) < c["ack_corrupt_rate"]:
                    cnt["acks_corrupted"] += 1
                    ack ^= 1 << ((gen[3] >> 24 & 63) * ACK_BITS >> 6)
                ack_in = ack
        beat, ack_out = self._delay(out, ack_in)
        self._advance(accepted, down)
        return accepted, beat, ack_out

    def _delay(self, beat, ack):
        """Put this cycle's inputs into the delay lines; return what entered ``latency``
        cycles ago (nothing before reset)."""
        n = LINK_MAX_LATENCY_CYCLES + 1
        i_in, i_out = self.t % n, (self.t - self.latency) % n
        self.line[i_in], self.ack_line[i_in] = beat, ack
        if beat is not None:
            self.last_beat_in = self.t
        return self.line[i_out], self.ack_line[i_out]

    def _advance(self, accepted: bool, down: bool) -> None:
        """The clock edge at the end of the cycle: timers and generators."""
        c, cnt, gen = self.c, self.counters, self.gen
        if self.period > 1:
            if accepted:
                self.gap = self.period - 1
            elif self.gap:
                self.gap -= 1
        cyc = gen[1]
        if self.stall:
            self.stall -= 1
        elif (cyc >> 8 & 0xFFFF) < c["stall_rate"] and c["stall_max"]:
            self.stall = 1 + ((cyc >> 24) * c["stall_max"] >> 8)
            cnt["stalls"] += 1
        dn = gen[5]
        if self.down:
            self.down -= 1
        elif (dn & 0xFFFF) < c["down_rate"] and c["down_mean"]:
            self.down = 1 + ((dn >> 16) * c["down_mean"] >> 15)
            cnt["downs"] += 1
        cnt["down_cycles"] += down
        self.fcyc = (self.fcyc + 1) & M32
        self.t += 1
        self.gen = [xorshift32(g) for g in gen]

    def idle(self, cycles: int) -> None:
        """``cycles`` cycles with nothing offered and nothing in flight (fast path)."""
        for _ in range(cycles):
            self._delay(None, None)
            self._advance(False, self.is_down())


@dataclass(frozen=True)
class _Group:
    link: int | None
    values: dict


def _parse_group(text: str, links: int) -> _Group:
    link = None
    head, sep, rest = text.partition(":")
    if sep:
        if not re.fullmatch(r"\s*\d+\s*", head):
            raise ValueError(f"--link-faults link must be a link number, not {head.strip()!r}")
        link = int(head)
        if link >= links:
            raise ValueError(f"--link-faults link {link} does not exist: links are 0..{links - 1}")
        text = rest
    values: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value_text = item.partition("=")
        key = key.strip()
        if not sep or key not in KEYS:
            raise ValueError(
                f"--link-faults takes {', '.join(k + '=N' for k in KEYS)}, not {item!r}"
            )
        try:
            value = int(value_text, 0)
        except ValueError:
            raise ValueError(
                f"--link-faults {key} must be an integer, not {value_text.strip()!r}"
            ) from None
        name = KEYS[key]
        low = 1 if name in ("seed", "burst_len") else 0
        high = (1 << CONTROLS[name]) - 1
        if name == "seed":
            high -= links
        elif name == "burst_len":
            high = 32
        if not low <= value <= high:
            raise ValueError(f"--link-faults {key} must be in {low}..{high}, not {value}")
        values[name] = value
    return _Group(link, values)


def parse_link_faults(spec: str, links: int) -> list[dict]:
    """Per-link control values from a ``--link-faults`` spec.

    ``KEY=N,...`` sets every link; ``;``-separated groups ``I:KEY=N,...`` set
    link ``I`` (they override the all-links group), e.g.
    ``corrupt=600;1:drop=2000,ack-drop=500``.  Rates are per 65536 (packets,
    cycles or acknowledge messages, see the module docstring).  Link ``i``'s
    seed is ``seed + i`` (default seed 1) unless its own group sets ``seed``.
    Returns, per link, the controls that are set (with ``seed``).
    """
    groups = [_parse_group(g, links) for g in spec.split(";") if g.strip()]
    common: dict[str, int] = {}
    own: list[dict[str, int]] = [{} for _ in range(links)]
    for g in groups:
        (common if g.link is None else own[g.link]).update(g.values)
    if any("down_at" in d and not d.get("down_len") for d in (common, *own)):
        raise ValueError("--link-faults down-at needs down-len (cycles the link is down)")
    if not any(k in _FAULTS for d in (common, *own) for k in d):
        raise ValueError("--link-faults needs at least one of corrupt=, drop=, stall=, burst=, "
                         "frame=, ack-drop=, ack-corrupt=, down-rate=, down-len=")  # fmt: skip
    base_seed = common.pop("seed", 1)
    out = []
    for i in range(links):
        values = {**common, **own[i]}
        for rate, (name, default) in _DEFAULTS.items():
            if values.get(rate) and not values.get(name):
                values[name] = default
        values.setdefault("seed", base_seed + i)
        out.append({k: v for k, v in values.items() if v or k == "seed"})
    return out
