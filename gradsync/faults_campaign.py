"""A fault campaign's runs: the fault kinds, one run as a sweep point, the table of a campaign.

``gradsync faults`` (:mod:`gradsync.cmd_faults`) runs one training
configuration many times with link faults (``gradsync.spec.faults``), through
the sweep engine (:mod:`gradsync.sweep`): one ``faults`` point per (kind,
rate, seed), plus the fault-free reference run of the configuration. A point
never raises for what the faults do to the run: a run that stops (watchdog,
cycle budget, a device error) is a result with ``finished`` false and its
``reason``. Each run's weights are kept as one SHA-256 per step (all nodes, all
layers, raw integers), so the client compares them with the reference's
without shipping arrays; on the RTL the point also runs the golden model with
the same faults and records whether the two are cycle-exact
(:func:`gradsync.sim.check.compare`, what ``gradsync train --check`` does).

Point options are ``gradsync train``'s (:mod:`gradsync.sweep.train_point`)
plus ``kind``, ``rate``, ``fault_seed``, ``link_faults`` (the ``--link-faults``
spec, absent for the reference) and ``watchdog_cycles``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np

from gradsync.spec.faults import parse_link_faults
from gradsync.sweep import train_point

#: Link counters summed over the links (``gradsync.spec.faults.COUNTERS``).
LINK_COLUMNS = ("link_packets", "corrupted", "dropped", "framed", "stalls", "downs",
                "down_cycles", "acks_dropped", "acks_corrupted")  # fmt: skip
#: NIC counters summed over the nodes: model link-layer name -> column, RTL node port -> column.
NIC_MODEL = {"packets_sent": "packets", "retransmits": "resent", "timeouts": "timeouts",
             "naks": "naks", "crc_errors": "crc_errors", "seq_errors": "seq_errors",
             "duplicates": "duplicates"}  # fmt: skip
NIC_RTL = {"tx_packets": "packets", "tx_retransmits": "resent", "tx_timeouts": "timeouts",
           "tx_naks": "naks", "rx_crc_errors": "crc_errors", "rx_seq_errors": "seq_errors",
           "rx_duplicates": "duplicates"}  # fmt: skip
COUNTER_COLUMNS = (*NIC_MODEL.values(), *LINK_COLUMNS, "outages", "faults")
#: Counters that are fault events (``faults`` is their sum).
FAULT_EVENTS = ("corrupted", "dropped", "framed", "stalls", "outages", "acks_dropped",
                "acks_corrupted")  # fmt: skip
#: Point options that are the campaign's, not ``gradsync train``'s.
OWN_OPTIONS = ("kind", "rate", "fault_seed", "link_faults", "watchdog_cycles")


@dataclass(frozen=True)
class Kind:
    """A fault kind of the campaign: the ``--link-faults`` spec a rate gives and its unit."""

    name: str
    template: str  #: spec with ``{rate}`` (and ``{at}``: a cycle drawn from the seed)
    unit: str  #: what the rate counts
    rates: tuple[int, ...]  #: default rates
    max_rate: int = 0xFFFF

    def spec(self, rate: int, seed: int, reference_cycles: int) -> str:
        """The ``--link-faults`` spec of one run (``seed`` also places a ``down-at`` outage)."""
        at = int(np.random.default_rng(seed).integers(0, max(1, reference_cycles)))
        return f"{self.template.format(rate=rate, at=at)},seed={seed}"


_PACKETS = "per 65536 packets"
_ACKS = "per 65536 acknowledge messages"
#: The campaign's kinds, in table order (``gradsync.spec.faults`` defines each fault).
KINDS = {
    k.name: k
    for k in (
        Kind("drop", "drop={rate}", _PACKETS, (600, 2000, 6000, 12000)),
        Kind("corrupt", "corrupt={rate}", _PACKETS, (600, 2000, 6000, 12000)),
        Kind("burst", "burst={rate},burst-len=12", _PACKETS, (600, 2000, 6000, 12000)),
        Kind("frame", "frame={rate}", _PACKETS, (600, 2000, 6000, 12000)),
        Kind("stall", "stall={rate},stall-max=30", "per 65536 cycles", (100, 500, 2000, 6000)),
        Kind("ack-drop", "ack-drop={rate}", _ACKS, (2000, 8000, 20000, 40000)),
        Kind("ack-corrupt", "ack-corrupt={rate}", _ACKS, (2000, 8000, 20000, 40000)),
        Kind("down-rate", "down-rate={rate},down-mean=300",
             "outage starts per 65536 cycles, 300 cycles long on average", (5, 20, 40, 80)),
        Kind("down-at", "down-at={at},down-len={rate}",
             "cycles of one outage per link, starting at a cycle drawn from the seed",
             (300, 1000, 3000, 10000), 0xFFFF_FFFF),
        Kind("mix", "corrupt={rate},drop={rate},burst={rate},frame={rate},ack-drop={rate},"
             "ack-corrupt={rate}", f"{_PACKETS} (acknowledges) of each", (600, 2000, 4000, 6000)),
    )
}  # fmt: skip


@dataclass(frozen=True)
class FaultPoint:
    """A validated campaign run: the train point, its faults and its label."""

    train: train_point.TrainPoint
    kind: str  #: a :data:`KINDS` name, or ``"none"`` for the reference
    rate: int
    fault_seed: int
    spec: str | None  #: the ``--link-faults`` spec (None: fault-free)
    faults: list | None  #: per link, the parsed controls
    watchdog_cycles: int | None  #: None: the configuration's bound


def validate(options: dict) -> FaultPoint:
    """The run ``options`` stand for; ``ValueError`` names the option and the value."""
    own = {k: options[k] for k in OWN_OPTIONS if k in options}
    train = train_point.validate({k: v for k, v in options.items() if k not in OWN_OPTIONS})
    spec = own.get("link_faults")
    faults = parse_link_faults(spec, train.config.nodes) if spec else None
    watchdog = own.get("watchdog_cycles")
    if watchdog is not None and (not isinstance(watchdog, int) or watchdog < 1):
        raise ValueError(f"watchdog_cycles must be a positive number of cycles, not {watchdog!r}")
    if watchdog is not None and train.backend == "rtl":
        raise ValueError("watchdog_cycles is a model-backend option (the RTL's bound is fixed)")
    kind = own.get("kind", "none" if spec is None else "custom")
    return FaultPoint(
        train, kind, int(own.get("rate", 0)), int(own.get("fault_seed", 0)), spec, faults, watchdog
    )


def hash_input(point: FaultPoint) -> dict:
    """Everything that decides the run (and its label)."""
    return {
        **train_point.hash_input(point.train),
        "kind": point.kind,
        "rate": point.rate,
        "fault_seed": point.fault_seed,
        "link_faults": point.faults,
        "watchdog_cycles": point.watchdog_cycles,
    }


def build_key(point: FaultPoint) -> str | None:
    return train_point.build_key(point.train)


def build(point: FaultPoint) -> str:
    return train_point.build(point.train)


def weights_digest(weights: dict, steps: int) -> list[str]:
    """Per step 0..steps: 16 hex digits of the SHA-256 of every node's raw weights as int64,
    in node and layer order (``BackendResult.weights``)."""
    out = []
    for k in range(steps + 1):
        h = hashlib.sha256()
        for key in sorted(w for w in weights if w[1] == k):
            a = np.ascontiguousarray(np.asarray(weights[key], dtype=np.int64).ravel())
            h.update(repr((key, a.size)).encode())
            h.update(a.tobytes())
        out.append(h.hexdigest()[:16])
    return out


def nodes_agree(weights: dict) -> bool:
    """Whether every node holds node 0's weights at every step (``gradsync train`` fails a
    run in which they do not)."""
    return all(np.array_equal(w, weights[(0, *key[1:])]) for key, w in weights.items())


def _model(point: FaultPoint, faults):
    """(BackendResult or None, counters or None, reason) of the run on the golden model."""
    from gradsync.firmware import experiment
    from gradsync.model_backend import DEFAULT, run_model_cluster

    cfg = point.train.config
    jobs = experiment.prepare(cfg).jobs
    bound = DEFAULT if point.watchdog_cycles is None else point.watchdog_cycles
    try:
        res, cluster = run_model_cluster(
            cfg, jobs, point.train.max_cycles, watchdog_cycles=bound, link_faults=faults
        )
    except RuntimeError as exc:  # WatchdogError, SimulationError (budget), a device error
        return None, None, f"{type(exc).__name__}: {exc}"
    return res, model_counters(cluster), ""


def model_counters(cluster) -> dict:
    """The run's counters (:data:`COUNTER_COLUMNS` but ``outages``/``faults``) summed over
    links and nodes; a fault-free cluster has no link layer: its NICs' packets only."""
    out = dict.fromkeys((*NIC_MODEL.values(), *LINK_COLUMNS), 0)
    layers = cluster.link_counters()
    if not layers:
        sent = sum(d.nic.perf["tx_pkts"] for d in cluster.devices)
        return {**out, "packets": sent, "link_packets": sent}
    for c in layers:
        for name, col in NIC_MODEL.items():
            out[col] += c[name]
        for col in LINK_COLUMNS:
            out[col] += c["packets" if col == "link_packets" else col]
    return out


def rtl_counters(counters: dict | None) -> dict | None:
    """``rtl_backend.LAST_RUN.counters`` summed as :func:`model_counters` sums the model's."""
    if not counters:
        return None
    out = dict.fromkeys((*NIC_MODEL.values(), *LINK_COLUMNS), 0)
    for c in counters["nodes"]:
        for name, col in NIC_RTL.items():
            out[col] += c[name]
    for c in counters["links"]:
        for col in LINK_COLUMNS:
            out[col] += c["packets" if col == "link_packets" else col]
    return out


def _rtl(point: FaultPoint):
    """(BackendResult or None, counters or None, reason) of the run on the RTL."""
    from gradsync.firmware import experiment
    from gradsync.sim import rtl_backend as rb

    cfg = point.train.config
    info: list = []  # this run's RtlRunInfo (LAST_RUN is shared by a worker's threads)
    rb.LAST_RUN.counters = None
    try:
        res = rb.run_rtl(
            cfg,
            experiment.prepare(cfg).jobs,
            progress=False,
            max_cycles=point.train.max_cycles,
            link_faults=point.faults,
            on_info=info.append,
        )
    except RuntimeError as exc:  # no on_info: the counters of the failed run are LAST_RUN's
        return None, rtl_counters(rb.LAST_RUN.counters), f"{type(exc).__name__}: {exc}"
    return res, rtl_counters(info[0].counters), ""


def _exact(rtl, rtl_counts, rtl_reason, point: FaultPoint) -> tuple[bool, str]:
    """Whether the RTL run and the golden model with the same faults agree: weights, trace
    events and their cycles, losses, total cycles and counters; or both stop with the same
    error. Returns (exact, the check's verdict or the differing errors)."""
    from gradsync.sim.check import compare

    model, model_counts, model_reason = _model(point, point.faults)
    if rtl is None or model is None:
        same = rtl is None and model is None and rtl_reason.endswith(model_reason)
        return same, f"RTL: {rtl_reason or 'finished'}; model: {model_reason or 'finished'}"
    rep = compare(rtl, model)
    same = rep.ok and rtl.total_cycles == model.total_cycles and rtl_counts == model_counts
    verdict = rep.verdict()
    if rtl.total_cycles != model.total_cycles:
        verdict += f"; cycles RTL {rtl.total_cycles} model {model.total_cycles}"
    if rtl_counts != model_counts:
        diff = {k: (v, model_counts[k]) for k, v in rtl_counts.items() if model_counts[k] != v}
        verdict += f"; counters (RTL, model) {diff}"
    return same, verdict


def outages(point: FaultPoint, counters: dict, cycles: int | None) -> int:
    """Outages: random ones started (``downs``) plus each link's ``down-at`` outage that the
    run reached (its start before the run's last cycle)."""
    fixed = sum(
        1
        for c in point.faults or []
        if c.get("down_len") and (cycles is None or c.get("down_at", 0) < cycles)
    )
    return counters["downs"] + fixed


def run(point: FaultPoint) -> dict:
    """One campaign run: its label, whether it finished (and why not), its cycles, per-step
    weight digests and counters; on the RTL also whether it is cycle-exact to the model."""
    t0 = time.perf_counter()
    rtl = point.train.backend == "rtl"
    res, counts, reason = _rtl(point) if rtl else _model(point, point.faults)
    row: dict = {"kind": point.kind, "rate": point.rate, "fault_seed": point.fault_seed,
                 "link_faults": point.spec or "", "finished": res is not None,
                 "reason": reason, "cycles": None if res is None else res.total_cycles,
                 "weights_sha256": "", "nodes_agree": None}  # fmt: skip
    if res is not None:
        row["weights_sha256"] = " ".join(weights_digest(res.weights, point.train.config.steps))
        row["nodes_agree"] = nodes_agree(res.weights)
    if rtl:
        row["cycle_exact"], row["check"] = _exact(res, counts, reason, point)
    if counts is not None:
        counts["outages"] = outages(point, counts, row["cycles"])
        counts["faults"] = sum(counts[k] for k in FAULT_EVENTS)
        row.update(counts)
    row["wall_seconds"] = time.perf_counter() - t0
    return row


def judge(row: dict, reference: dict) -> dict:
    """``row`` with its verdict against the fault-free ``reference`` row: ``overhead`` (cycles
    over the reference's, minus 1), ``weights_equal`` (every step's weights, bit for bit),
    ``first_differing_step`` and ``ok`` (finished, equal weights, cycle-exact on the RTL)."""
    out = dict(row)
    finished = bool(row.get("finished"))
    out["overhead"] = row["cycles"] / reference["cycles"] - 1 if finished else None
    mine, ref = row.get("weights_sha256", "").split(), reference["weights_sha256"].split()
    differing = [k for k, (a, b) in enumerate(zip(mine, ref, strict=False)) if a != b]
    out["weights_equal"] = (mine == ref) if finished else None
    out["first_differing_step"] = differing[0] if differing else None
    out["ok"] = finished and mine == ref and row.get("cycle_exact", True) is not False
    return out


def table(rows: list[dict]) -> list[dict]:
    """One line per (kind, rate), in the order the rows come: runs, the counters summed over
    the runs that report them, cycle overhead over the finished runs (mean, max), runs whose
    weights differ, runs that did not finish, and (RTL rows) runs not cycle-exact."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["rate"]), []).append(r)
    return [_line(kind, rate, group) for (kind, rate), group in groups.items()]


def _line(kind: str, rate: int, group: list[dict]) -> dict:
    over = [r["overhead"] for r in group if r.get("overhead") is not None]
    line = {"kind": kind, "rate": rate, "runs": len(group)}
    for col in COUNTER_COLUMNS:
        line[col] = sum(int(r[col]) for r in group if r.get(col) is not None)
    line["overhead_mean"] = sum(over) / len(over) if over else None
    line["overhead_max"] = max(over) if over else None
    line["weights_differ"] = sum(r.get("weights_equal") is False for r in group)
    line["not_finished"] = sum(not r.get("finished") for r in group)
    if any("cycle_exact" in r for r in group):
        line["not_cycle_exact"] = sum(r.get("cycle_exact") is False for r in group)
    return line
