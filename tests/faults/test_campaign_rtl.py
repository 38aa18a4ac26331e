"""``gradsync faults --backend rtl``: each run is compared with the golden model, cycle for cycle.

The cluster is ``tests/system/test_rtl_faults.py``'s (2 nodes, the default
hardware and format), so its Verilator model comes from the build cache. One
step: the firmware's reduce-add race (docs/comm.md) needs two.
"""

from __future__ import annotations

import json

import pytest

from gradsync import cli
from gradsync.firmware import experiment
from gradsync.spec.faults import parse_link_faults

pytest.importorskip("gradsync.hw.cluster")

SPEC = ["--steps", "1", "--layers", "64,16,10", "--chunk-bytes", "256"]
ARGS = ["--backend", "rtl", "--kinds", "mix", "--rates", "4000", "--seeds", "1", "--workers", "0"]


def _campaign(tmp_path, name: str) -> tuple[int, dict]:
    out = tmp_path / name
    rc = cli.main(["faults", *SPEC, *ARGS, "--out", str(out), "--no-progress"])
    return rc, json.loads((out / "results.json").read_text())


@pytest.mark.rtl
@pytest.mark.slow
def test_an_rtl_run_is_cycle_exact_and_a_model_that_differs_is_caught(tmp_path, monkeypatch):
    from gradsync.model_backend import run_model_cluster

    rc, rec = _campaign(tmp_path, "exact")
    run = rec["runs"][0]
    assert rc == 0 and rec["ok"] and rec["reference"]["cycle_exact"], rec["reference"]
    assert run["cycle_exact"] and run["weights_equal"] and run["resent"] > 0, run
    assert "0 cycle differences" in run["check"]
    cfg = experiment.TrainConfig(steps=1, layers=(64, 16, 10), chunk_bytes=256)
    faults = parse_link_faults(run["link_faults"], 2)
    model, cluster = run_model_cluster(cfg, experiment.prepare(cfg).jobs, link_faults=faults)
    assert run["cycles"] == model.total_cycles  # the RTL's cycles, against a model run made here
    assert run["resent"] == sum(c["retransmits"] for c in cluster.link_counters())
    assert run["dropped"] == sum(c["dropped"] for c in cluster.link_counters())

    def late(cfg, jobs, *a, link_faults=None, **kw):
        res, cl = run_model_cluster(cfg, jobs, *a, link_faults=link_faults, **kw)
        if link_faults:
            res.total_cycles += 1
        return res, cl

    monkeypatch.setattr("gradsync.model_backend.run_model_cluster", late)
    rc, rec = _campaign(tmp_path, "late")
    run = rec["runs"][0]
    assert rc == 1 and rec["reference"]["cycle_exact"] and run["weights_equal"]
    assert run["cycle_exact"] is False and rec["table"][0]["not_cycle_exact"] == 1
    assert f"cycles RTL {model.total_cycles} model {model.total_cycles + 1}" in run["check"]
