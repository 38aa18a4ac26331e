"""Trace completeness (issue 15, item 5): no metric from a trace that lost records.

The configuration of the issue (4 nodes, layers 64,48,10, 128-byte chunks on
the small preset's 2048-record trace buffer) writes about 2,400 records per
step and node: the firmware used to drain only at the start of a step, lost
about 330 records a step without noticing, and reported a layer-1-ready of -1
and a wrong exposed communication.  Now it also drains on the trace buffer's
half-full interrupt and stops when ``TRACE_DROPS`` is not 0.
"""

from __future__ import annotations

import dataclasses

import pytest

from gradsync.firmware import experiment
from gradsync.firmware.training import ConfigError, TraceOverflowError
from gradsync.spec import regmap as rm

ISSUE = experiment.TrainConfig(nodes=4, layers=(64, 48, 10), chunk_bytes=128, steps=2)


def _jobs(cfg, **changes):
    return [dataclasses.replace(j, **changes) for j in experiment.prepare(cfg).jobs]


def test_issue_configuration_reads_every_record_the_model_wrote():
    """The reference is the model's own list of every record each node wrote (drops included)."""
    from gradsync.model_backend import run_model_cluster

    res, cluster = run_model_cluster(ISSUE, _jobs(ISSUE))
    for node, (nr, dev) in enumerate(zip(res.nodes, cluster.devices, strict=True)):
        assert dev.trace_drops == 0 and nr.trace_drops == 0, node
        written = dev.trace
        assert len(written) > ISSUE.hardware.trace_records  # more than the buffer holds
        # all of it, in order, but the two HOST records of the final drain itself
        assert nr.records == written[:-2]
        assert [r.kind for r in written[-2:]] == [rm.Kind.TRACE, rm.Kind.TRACE]


def test_issue_configuration_metrics_are_those_of_the_complete_trace():
    from gradsync.model_backend import run_model

    captured = {}

    def backend(cfg, jobs):
        captured["res"] = run_model(cfg, jobs)
        return captured["res"]

    run = experiment.run(ISSUE, backend)
    for m in run.steps:
        assert 0 < m.layer1_ready_cycle <= m.cycles
        assert 0 < m.exposed_comm_cycles <= m.cycles
    # layer-1-ready by hand: the last node's END of its layer-1 SGD in step k, from the
    # step's first input load (HOST LOAD START tagged L0c0s<k>)
    recs = [r for nr in captured["res"].nodes for r in nr.records]
    for k, m in enumerate(run.steps):
        start = min(
            r.cycle
            for r in recs
            if r.engine == rm.Engine.HOST
            and r.event == rm.TraceEvent.START
            and r.kind == rm.Kind.LOAD
            and r.tag == rm.encode_tag(0, 0, k)
        )
        ends = [
            r.cycle
            for r in recs
            if r.engine == rm.Engine.VECTOR
            and r.event == rm.TraceEvent.END
            and r.kind == rm.Kind.UPDATE
            and r.tag == rm.encode_tag(1, 0, k)
        ]
        assert len(ends) == ISSUE.nodes
        assert m.layer1_ready_cycle == max(ends) - start


def test_drops_are_reported_and_no_metric_is_computed():
    """Draining only at step starts (the old firmware) loses records: the run refuses metrics."""
    from gradsync.model_backend import run_model

    p = experiment.prepare(ISSUE)
    p.jobs[:] = _jobs(ISSUE, trace_drain="step")
    with pytest.raises(experiment.IncompleteTraceError, match=r"node 0 lost \d+ record"):
        experiment.run(ISSUE, run_model, prepared=p)


def test_firmware_stops_when_the_buffer_still_overflows():
    """A buffer too small to drain in time: TraceOverflowError names the node and the depth."""
    from gradsync.model_backend import run_model

    hw = dataclasses.replace(ISSUE.hardware, trace_records=8)
    cfg = dataclasses.replace(ISSUE, hardware=hw)
    with pytest.raises(
        TraceOverflowError, match=r"node \d: the trace buffer \(8 records\) dropped \d+ record"
    ):
        run_model(cfg, _jobs(cfg))


def test_trace_drain_value_is_checked():
    from gradsync.model_backend import run_model

    with pytest.raises(ConfigError, match=r"trace_drain must be 'interrupt' or 'step', not 'x'"):
        run_model(ISSUE, _jobs(ISSUE, trace_drain="x"))


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_issue_configuration_checks_against_the_model():
    """gradsync train --nodes 4 --layers 64,48,10 --chunk-bytes 128 --check, on the RTL."""
    from gradsync.sim.check import check_run
    from gradsync.sim.rtl_backend import run_rtl

    res = run_rtl(ISSUE, _jobs(ISSUE), progress=False)
    assert all(nr.trace_drops == 0 for nr in res.nodes)
    report = check_run(ISSUE, res)
    assert report.ok, report.details[:5]
    assert report.records > ISSUE.nodes * ISSUE.hardware.trace_records


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_and_model_drop_the_same_records():
    """With the old draining (drops on every node) both backends lose exactly the same records."""
    from gradsync.model_backend import run_model
    from gradsync.sim.check import compare
    from gradsync.sim.rtl_backend import run_rtl

    model = run_model(ISSUE, _jobs(ISSUE, trace_drain="step"))
    rtl = run_rtl(ISSUE, _jobs(ISSUE, trace_drain="step"), progress=False)
    drops = [nr.trace_drops for nr in model.nodes]
    assert min(drops) > 0
    assert [nr.trace_drops for nr in rtl.nodes] == drops
    report = compare(rtl, model)
    assert report.ok, report.details[:5]


def test_a_step_without_its_layer_1_update_is_an_error_not_minus_1():
    """The old metric reported layer1-ready -1 when the trace lacked a node's update record."""
    from gradsync.model_backend import run_model

    res = run_model(ISSUE, _jobs(ISSUE))
    ivs = [iv for n, nr in enumerate(res.nodes) for iv in experiment.intervals(nr.records, n)]
    assert len(experiment.step_timing(ivs, ISSUE.steps, ISSUE.nodes)) == ISSUE.steps
    update = rm.encode_tag(1, 0, 1)
    lost = [
        iv for iv in ivs if not (iv.node == 2 and iv.kind == rm.Kind.UPDATE and iv.tag == update)
    ]
    with pytest.raises(
        experiment.IncompleteTraceError, match=r"layer-1 update of step 1 on 1 node"
    ):
        experiment.step_timing(lost, ISSUE.steps, ISSUE.nodes)
