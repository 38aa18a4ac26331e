"""Issue 15 on the RTL: a node whose firmware spins on register reads while its peer waits for
an interrupt is stopped by the watchdog, which names the spinning node (as the model does,
``tests/system/test_watchdog.py::test_spinning_node_stops_after_the_bound``)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from gradsync.firmware import experiment
from gradsync.watchdog import config_watchdog_cycles

pytest.importorskip("gradsync.hw.cluster")

#: A schedule file whose import makes node 0's firmware poll RX_DONE_LO for ever at the
#: start of step 1 instead of waiting for its interrupts (test only; loaded in the RTL
#: backend's simulator process, it changes that process's firmware alone).
SPIN = """
from gradsync.firmware import training
from gradsync.firmware.schedules import Priority
from gradsync.spec import regmap as rm

_step = training.NodeFirmware._step


async def _spin_on_node_0(self, k):
    if self.node == 0 and k == 1:
        while True:
            await self.dev.read32(rm.offset("RX_DONE_LO"))
    await _step(self, k)


training.NodeFirmware._step = _spin_on_node_0


class Spin(Priority):
    name = "spin"
"""

CFG = experiment.TrainConfig(nodes=2, steps=2, global_batch=16, layers=(64, 16, 10))


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_spinning_node_is_stopped_and_named(tmp_path, monkeypatch):
    from gradsync.firmware import training
    from gradsync.sim.rtl_backend import RtlRunError, run_rtl

    # the schedule file is also imported here (the CLI side validates it) and patches this
    # process's firmware: restore it after the test, for the tests that follow in this worker
    monkeypatch.setattr(training.NodeFirmware, "_step", training.NodeFirmware._step)

    path = tmp_path / "spin.py"
    path.write_text(SPIN)
    cfg = dataclasses.replace(CFG, schedule=f"{path}:Spin")
    with pytest.raises(RtlRunError) as info:
        run_rtl(cfg, experiment.prepare(cfg).jobs, progress=False)
    msg = str(info.value)
    assert msg.startswith("WatchdogError: watchdog: no progress for "), msg
    reads = re.search(r"node 0 firmware spins: (\d+) register read\(s\) and 0 write\(s\)", msg)
    assert reads and int(reads[1]) > 100, msg
    assert "node 1 firmware spins" not in msg, msg
    # node 0 spins before it services its dW interrupts of step 0, so it never writes its
    # windows' step-0 tags: node 1's first packet to it is held, and the report says so
    assert re.search(r"nic.rx of node 0 holds a packet tagged L\dc\ds0 for window \d+", msg)
    bound = config_watchdog_cycles(cfg)
    stopped = int(re.search(r"no progress for (\d+) cycles", msg)[1])
    assert bound <= stopped <= 1.25 * bound + 100
