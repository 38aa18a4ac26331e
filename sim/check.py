"""The co-simulation checker: an RTL run against the golden model, every weight and every trace record.

``DESIGN.md`` (the three parts "must agree with each other, cycle for cycle
and bit for bit"): :func:`check_run` takes the :class:`BackendResult` of a run
on the RTL backend, runs the same configuration on the model backend and
compares

* every weight of every layer on every node at the start of every step and
  after the last one, bit for bit (raw fixed-point integers);
* the hardware trace each node's firmware read out, per engine: the same
  events (event, kind, tag, aux) in the same order, and the cycle of each;
  any cycle difference is reported (the target is zero);
* each node's per-step losses (they follow from the logits the host dumped).

A run with injected link faults is compared the same way: the model runs the
same fault process per link, cycle by cycle (``gradsync.model.link``).

The verdict is one line (:meth:`CheckReport.verdict`); :attr:`CheckReport.ok`
is true only for zero numeric mismatches, zero event mismatches and zero
cycle differences.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from gradsync.firmware.experiment import BackendResult, TrainConfig, build_jobs
from gradsync.spec import regmap as rm

#: How many individual differences a report lists.
SHOW = 5


@dataclass
class CheckReport:
    weight_arrays: int = 0
    weight_words: int = 0
    weight_mismatches: int = 0  #: words that differ
    records: int = 0  #: model trace records compared
    event_mismatches: int = 0  #: records whose event/kind/tag/aux or presence differs
    cycle_differences: int = 0  #: matched records whose cycle differs
    max_cycle_difference: int = 0
    loss_mismatches: int = 0
    details: list[str] = field(default_factory=list)
    #: cycle differences fail the check (False: counted and listed only)
    timing: bool = True

    @property
    def ok(self) -> bool:
        return not (
            self.weight_mismatches
            or self.event_mismatches
            or (self.timing and self.cycle_differences)
            or self.loss_mismatches
        )

    def note(self, text: str) -> None:
        if len(self.details) < 4 * SHOW:
            self.details.append(text)

    def verdict(self) -> str:
        head = "check OK" if self.ok else "check FAILED"
        parts = [
            f"{self.weight_arrays} weight arrays ({self.weight_words} words): "
            f"{self.weight_mismatches} mismatches",
            f"{self.records} trace records: {self.event_mismatches} event mismatches, "
            f"{self.cycle_differences} cycle differences"
            + (f" (max {self.max_cycle_difference})" if self.cycle_differences else ""),
        ]
        if not self.timing:
            parts[-1] += " (not checked)"
        if self.loss_mismatches:
            parts.append(f"{self.loss_mismatches} loss mismatches")
        return f"{head} against the golden model: " + "; ".join(parts)


def _tag(tag: int) -> str:
    layer, chunk, step = rm.decode_tag(tag)
    return f"L{layer}c{chunk}s{step}"


def _describe(r: rm.TraceRecord) -> str:
    engine = rm.ENGINE_NAMES.get(rm.Engine(r.engine), str(r.engine))
    event = rm.TraceEvent(r.event).name
    return f"{engine} {event} kind {r.kind} {_tag(r.tag)} aux {r.aux} @ {r.cycle}"


def per_engine(records: list[rm.TraceRecord]) -> dict[int, list[rm.TraceRecord]]:
    """Records grouped by engine, each group in the order the engine wrote them."""
    out: dict[int, list[rm.TraceRecord]] = defaultdict(list)
    for r in records:
        out[r.engine].append(r)
    return out


def compare(rtl: BackendResult, model: BackendResult) -> CheckReport:
    """Compare two backend results (RTL first, model second)."""
    rep = CheckReport()
    for key in sorted(model.weights):
        want = np.asarray(model.weights[key])
        rep.weight_arrays += 1
        rep.weight_words += want.size
        got = rtl.weights.get(key)
        node, step, layer = key
        if got is None:
            rep.weight_mismatches += want.size
            rep.note(f"node {node} step {step} layer {layer}: no RTL weights")
            continue
        got = np.asarray(got).reshape(want.shape)
        bad = np.flatnonzero(got != want)
        if len(bad):
            rep.weight_mismatches += len(bad)
            i = int(bad[0])
            rep.note(
                f"node {node} step {step} layer {layer}: {len(bad)} words differ, first "
                f"[{i}] RTL {int(got.flat[i])} model {int(want.flat[i])}"
            )
    extra = sorted(set(rtl.weights) - set(model.weights))
    if extra:
        rep.weight_mismatches += sum(np.asarray(rtl.weights[k]).size for k in extra)
        rep.note(f"RTL has weights the model does not: {extra[:SHOW]}")
    if len(rtl.nodes) != len(model.nodes):
        rep.event_mismatches += 1
        rep.note(f"{len(rtl.nodes)} RTL nodes, {len(model.nodes)} model nodes")
    for node, (r_res, m_res) in enumerate(zip(rtl.nodes, model.nodes, strict=False)):
        if list(r_res.losses) != list(m_res.losses):
            rep.loss_mismatches += 1
            rep.note(f"node {node}: losses {r_res.losses[:3]} ... != model {m_res.losses[:3]} ...")
        r_eng, m_eng = per_engine(r_res.records), per_engine(m_res.records)
        for engine in sorted(set(r_eng) | set(m_eng)):
            got, want = r_eng.get(engine, []), m_eng.get(engine, [])
            rep.records += len(want)
            name = rm.ENGINE_NAMES.get(rm.Engine(engine), str(engine))
            for i, (g, w) in enumerate(zip(got, want, strict=False)):
                if (g.event, g.kind, g.tag, g.aux) != (w.event, w.kind, w.tag, w.aux):
                    rep.event_mismatches += 1
                    rep.note(
                        f"node {node} {name} record {i}: RTL {_describe(g)} != model {_describe(w)}"
                    )
                elif g.cycle != w.cycle:
                    rep.cycle_differences += 1
                    rep.max_cycle_difference = max(rep.max_cycle_difference, abs(g.cycle - w.cycle))
                    rep.note(
                        f"node {node} {name} record {i} ({_describe(w)}): RTL cycle "
                        f"{g.cycle}, {g.cycle - w.cycle:+d}"
                    )
            if len(got) != len(want):
                rep.event_mismatches += abs(len(got) - len(want))
                rep.note(f"node {node} {name}: RTL wrote {len(got)} records, model {len(want)}")
    return rep


def check_run(
    cfg: TrainConfig,
    rtl: BackendResult,
    *,
    timing: bool = True,
    link_faults: list[dict] | None = None,
) -> CheckReport:
    """Run ``cfg`` on the model backend and compare ``rtl`` (a run of ``cfg`` on the RTL) with it.

    ``link_faults``: the per-link fault controls the RTL run had; the model
    injects the same faults in the same cycles.  ``timing=False``: cycle
    differences are counted and listed but do not fail the check.
    """
    from gradsync.firmware import data as digits
    from gradsync.model_backend import run_model

    jobs, _ = build_jobs(cfg, digits.load(cfg.seed))
    rep = compare(rtl, run_model(cfg, jobs, None, link_faults=link_faults))
    rep.timing = timing
    return rep
