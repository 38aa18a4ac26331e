"""Link sweeps without rebuilds: one Verilator build runs every link setting, each exact.

The link's bytes per cycle, latency and maximum payload are run-time settings
(``LINK_SET``, written by the firmware at start-up); both backends build the
device with ``spec.hardware.BUILD_LINK`` and set the run's link. Each setting
is checked against the golden model (weights, events, cycles, losses) and
against the closed formula of a packet's time on the link.
"""

from __future__ import annotations

import dataclasses

import pytest

from gradsync.firmware import data as digits
from gradsync.firmware.experiment import TrainConfig, build_jobs, intervals
from gradsync.spec import regmap as rm
from gradsync.spec.hardware import BUILD_LINK, DEFAULT_HARDWARE, build_config
from gradsync.spec.link import chunk_tx_cycles

pytest.importorskip("gradsync.hw.cluster")

from gradsync.sim.check import check_run  # noqa: E402
from gradsync.sim.rtl_backend import build_cluster, run_rtl  # noqa: E402

SMALL = TrainConfig(nodes=2, steps=2, global_batch=16, layers=(64, 16, 10), chunk_bytes=256)

#: (bytes per cycle, latency, max payload): the build's link and two others
SETTINGS = [
    (
        BUILD_LINK["link_bytes_per_cycle"],
        BUILD_LINK["link_latency_cycles"],
        BUILD_LINK["max_payload_bytes"],
    ),
    (4, 7, 64),
    (2, 0, 512),
]


def _cfg(bpc: int, latency: int, payload: int) -> TrainConfig:
    hw = dataclasses.replace(
        DEFAULT_HARDWARE,
        link_bytes_per_cycle=bpc,
        link_latency_cycles=latency,
        max_payload_bytes=payload,
    )
    return dataclasses.replace(SMALL, hardware=hw)


def test_every_link_setting_has_the_same_build():
    keys = {build_config(_cfg(*s).hardware) for s in SETTINGS}
    assert len(keys) == 1
    assert DEFAULT_HARDWARE.link != _cfg(*SETTINGS[1]).hardware.link


@pytest.mark.rtl
@pytest.mark.slow
def test_one_build_runs_every_link_setting_exactly(tmp_path):
    built = [build_cluster(_cfg(*s)) for s in SETTINGS]
    assert len({b.directory for b in built}) == 1
    assert all(b.cached for b in built[1:])  # the second and third setting built nothing
    for i, setting in enumerate(SETTINGS):
        cfg = _cfg(*setting)
        jobs, _ = build_jobs(cfg, digits.load(cfg.seed))
        res = run_rtl(cfg, jobs, work_dir=tmp_path / str(i), progress=False, max_cycles=3_000_000)
        rep = check_run(cfg, res)
        assert rep.weight_mismatches == 0 and rep.event_mismatches == 0, rep.details
        assert rep.loss_mismatches == 0, rep.details
        assert rep.max_cycle_difference == 0, "\n".join(rep.details)
        assert_link_in_trace(res.nodes[0].records, cfg)


def assert_link_in_trace(records, cfg: TrainConfig) -> None:
    """Node 0 transmitted on the run's link: each chunk took the sum over its packets of
    ceil((16 + payload) / bytes per cycle) cycles, payloads cut at the run's maximum."""
    tx = [iv for iv in intervals(records, 0) if iv.engine == rm.Engine.NIC_TX]
    assert tx
    for iv in tx:
        assert iv.end - iv.start == chunk_tx_cycles(iv.aux, cfg.hardware.link), iv
