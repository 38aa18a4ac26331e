"""The watchdog of a training run, shared by both backends: is the run still making progress?

A backend samples every node's :class:`NodeProgress` every
:attr:`Watchdog.period` cycles (a callback of the model's event loop; a
cocotb coroutine on the RTL, which reads the counters from ports and from
the host-call counts, so no simulated cycle and no per-cycle Python is
spent) and hands it to :meth:`Watchdog.sample`.  When nothing counted as
progress has changed for :func:`gradsync.spec.timing.watchdog_cycles`
cycles, :meth:`Watchdog.report` builds the one error of the run: which link or
node is stuck, each node's outstanding work (send and receive tags), and the
link and NIC counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gradsync.model.nic import held_sentence
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm

#: NIC entries that are a status, not a counter: the packet the receiver holds for its
#: window's next step (``hw/nic_rx.py``: window + 1 and tag, 0 when none).
HELD_KEYS = ("rx_held_window", "rx_held_tag")


def config_watchdog_cycles(cfg) -> int:
    """The watchdog bound of a ``TrainConfig`` (:func:`gradsync.spec.timing.watchdog_cycles`)."""
    return tm.watchdog_cycles(
        cfg.hardware, tuple(cfg.layers), cfg.global_batch // cfg.nodes, cfg.fixed_point.word_bytes
    )


class WatchdogError(RuntimeError):
    """A run made no progress for the watchdog's bound; the message names what is stuck."""


@dataclass(frozen=True)
class NodeProgress:
    """What the watchdog reads of one node (counts since reset).

    ``tx_packets``, ``rx_packets``, ``interrupts`` and ``bulk`` are progress:
    packets sent new / applied by the NIC, interrupts the firmware waited for
    (``wait_irq`` calls) and bulk transfers.  ``reads``/``writes`` (register
    accesses) and ``resends`` (NIC retransmits, timeouts and NAKs) are not:
    they tell a spinning firmware or a failing link apart in the report.
    """

    tx_packets: int
    rx_packets: int
    interrupts: int
    bulk: int
    reads: int = 0
    writes: int = 0
    resends: int = 0

    def progress(self) -> tuple[int, int, int, int]:
        return (self.tx_packets, self.rx_packets, self.interrupts, self.bulk)


@dataclass
class Watchdog:
    """Stops a run whose nodes' progress counters stay unchanged for ``bound`` cycles.

    ``checks`` samples per bound: a hang is noticed between ``bound`` and
    ``bound + bound / checks`` cycles after the last progress.
    """

    bound: int
    checks: int = 4
    last: list[NodeProgress] | None = None
    since: int = 0  #: cycle of the first sample showing the current counters
    first: list[NodeProgress] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.bound < 1:
            raise ValueError(f"watchdog bound must be >= 1 cycle, not {self.bound!r}")

    @property
    def period(self) -> int:
        """Cycles between samples."""
        return -(-self.bound // self.checks)

    def sample(self, cycle: int, nodes: list[NodeProgress]) -> bool:
        """Record the counters read in ``cycle``; true when nothing progressed for ``bound``."""
        if self.last is None or [n.progress() for n in nodes] != [n.progress() for n in self.last]:
            self.last, self.since, self.first = nodes, cycle, nodes
            return False
        self.last = nodes
        return cycle - self.since >= self.bound

    def report(
        self,
        cycle: int,
        outstanding: list[str],
        links: list[dict[str, int]],
        nics: list[dict[str, int]],
        deadlock: bool = False,
    ) -> str:
        """The error message: the stuck link or node first, then every node's work and counters.

        ``outstanding``: per node, what it still waits for or has to send;
        ``links``: per link ``i`` (node ``i`` to node ``i+1``) its counters;
        ``nics``: per node its NIC counters, and :data:`HELD_KEYS` if it holds a
        packet (named first: a packet held for good is the firmware's bug);
        ``deadlock``: nothing at all is left to happen (the model's event loop ran
        dry) rather than a bound spent.
        """
        n = len(outstanding)
        if deadlock:
            head = f"deadlock at cycle {cycle}: no event is left to happen"
        else:
            head = (
                f"no progress for {cycle - self.since} cycles (cycle {self.since} to {cycle}; "
                f"bound {self.bound}, gradsync.spec.timing.watchdog_cycles)"
            )
        work = "; ".join(f"node {i}: {text}" for i, text in enumerate(outstanding))
        held = [_held(i, c) for i, c in enumerate(nics)]
        culprits = "; ".join([h for h in held if h and h not in work] + [self._culprits()])
        nics = [{k: v for k, v in c.items() if k not in HELD_KEYS} for c in nics]
        link_text = "; ".join(f"link {i} {_counts(c)}" for i, c in enumerate(links) if c)
        nic_text = "; ".join(f"node {i} NIC {_counts(c)}" for i, c in enumerate(nics) if c)
        counters = "; ".join(t for t in (link_text, nic_text) if t)
        return (
            f"watchdog: {head} on {n} nodes: {culprits} [{work}] [counters: {counters or 'none'}]"
        )

    def _culprits(self) -> str:
        """Which link (packets sent and never applied) or node (a spinning firmware) is stuck."""
        first, last = self.first or self.last or [], self.last or []
        n = len(last)
        found = []
        for i in range(n):
            peer = (i + 1) % n
            missing = last[i].tx_packets - last[peer].rx_packets
            lost = last[i].resends - first[i].resends
            if missing > 0 or lost > 0:
                found.append(
                    f"link {i} (node {i} nic.tx -> node {peer} nic.rx) delivers nothing: node {i} "
                    f"sent {last[i].tx_packets} packet(s), node {peer} applied "
                    f"{last[peer].rx_packets}; node {i} resent {lost} time(s) while stuck"
                )
        for i in range(n):
            reads = last[i].reads - first[i].reads
            writes = last[i].writes - first[i].writes
            if reads or writes:
                found.append(
                    f"node {i} firmware spins: {reads} register read(s) and {writes} write(s) "
                    "while stuck, no interrupt taken"
                )
        if not found:
            found.append("every node's firmware waits for an interrupt that never comes")
        return "; ".join(found)


def _held(node: int, nic: dict[str, int]) -> str:
    """The sentence naming the packet node ``node``'s receiver holds ('' if none).  The
    window's tag is the packet's with the step before (the hold rule)."""
    window = nic.get("rx_held_window", 0)
    if not window:
        return ""
    tag = nic.get("rx_held_tag", 0)
    step = next(f for f in rm.TAG_FIELDS if f.name == "step")
    before = (step.get(tag) - 1) % (1 << step.width)
    return held_sentence(node, window - 1, tag, (tag & ~step.mask) | step.put(before))


def _counts(counters: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counters.items())


def pending_sends(fw) -> str:
    """The send tags a node's firmware (a ``NodeFirmware``) still has to post or has posted and not seen done."""
    tags = [f"L{t.layer}c{t.chunk}s{t.step}" for _k, t, _d in fw.buffer]
    posted = [f"L{t.layer}c{t.chunk}s{t.step}" for q in fw.inflight for t in q]
    parts = []
    if posted:
        parts.append("sends posted and not done " + " ".join(posted))
    if tags:
        parts.append("sends not yet posted " + " ".join(tags))
    return ", ".join(parts)
