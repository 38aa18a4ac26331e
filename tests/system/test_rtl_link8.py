"""8 bytes/cycle links on the RTL (issue 14, item 3): one width-8 build, 8 and 1 B/cycle, exact.

A cluster of ``link_width_bytes`` 8 (a 64-bit link datapath) runs a 2-step training
run at 8 and at 1 link bytes per cycle on the same Verilator build (the bandwidth is
``LINK_SET``, written at start-up); each equals the golden model (weights, events,
cycles, losses) and each chunk takes the spec's link time.  Then the run at 8 bytes/cycle
under every packet fault kind equals the model's faulted link layer cycle for cycle.
"""

from __future__ import annotations

import dataclasses

import pytest

from gradsync.firmware import data as digits
from gradsync.firmware.experiment import TrainConfig, build_jobs
from gradsync.spec.faults import parse_link_faults
from gradsync.spec.hardware import DEFAULT_HARDWARE, build_config

pytest.importorskip("gradsync.hw.cluster")

from gradsync.sim.check import check_run  # noqa: E402
from gradsync.sim.rtl_backend import build_cluster, run_rtl  # noqa: E402
from tests.system.test_rtl_link_set import SMALL, assert_link_in_trace  # noqa: E402

#: (bytes per cycle, latency, max payload) on the one width-8 build
SETTINGS = [(8, 7, 64), (1, 100, 256)]


def _cfg(bpc: int, latency: int, payload: int) -> TrainConfig:
    hw = dataclasses.replace(
        DEFAULT_HARDWARE,
        link_width_bytes=8,
        link_bytes_per_cycle=bpc,
        link_latency_cycles=latency,
        max_payload_bytes=payload,
    )
    return dataclasses.replace(SMALL, hardware=hw)


def test_both_settings_have_one_width_8_build():
    builds = {build_config(_cfg(*s).hardware) for s in SETTINGS}
    assert len(builds) == 1 and next(iter(builds)).link_width_bytes == 8


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.xdist_group("cluster2_width8")  # one worker builds the width-8 cluster
def test_one_width_8_build_runs_8_and_1_bytes_per_cycle_exactly(tmp_path):
    built = [build_cluster(_cfg(*s)) for s in SETTINGS]
    assert len({b.directory for b in built}) == 1 and built[1].cached
    for i, setting in enumerate(SETTINGS):
        cfg = _cfg(*setting)
        jobs, _ = build_jobs(cfg, digits.load(cfg.seed))
        res = run_rtl(cfg, jobs, work_dir=tmp_path / str(i), progress=False, max_cycles=3_000_000)
        rep = check_run(cfg, res)
        assert rep.weight_mismatches == 0 and rep.event_mismatches == 0, rep.details
        assert rep.loss_mismatches == 0, rep.details
        assert rep.max_cycle_difference == 0, "\n".join(rep.details)
        assert_link_in_trace(res.nodes[0].records, cfg)
    # faulted at 8 bytes/cycle: go-back-N resends of two-word beats, as the model's LinkLayer
    cfg = _cfg(*SETTINGS[0])
    spec = "corrupt=6000,drop=6000,burst=4000,frame=6000,ack-drop=6000,seed=13"
    faults = parse_link_faults(spec, cfg.nodes)
    jobs, _ = build_jobs(cfg, digits.load(cfg.seed))
    res = run_rtl(cfg, jobs, work_dir=tmp_path / "faulted", progress=False,
                  max_cycles=3_000_000, link_faults=faults)  # fmt: skip
    rep = check_run(cfg, res, link_faults=faults)
    assert rep.weight_mismatches == 0 and rep.event_mismatches == 0, rep.details
    assert rep.records > 100 and rep.cycle_differences == 0, "\n".join(rep.details)
