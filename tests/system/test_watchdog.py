"""The run watchdog (issue 15, item 4): a run that makes no progress stops with one error.

Model backend (fast): a link whose far end swallows every packet, and a node
whose firmware spins on register reads while its peer waits for an
interrupt; through the CLI, the partial record is marked failed.  RTL (slow):
the held-down link of issue 15 (``drop_rate`` 0xFFFF on link 0, no
``max_cycles``), which ran forever before.  The bound is checked against a
hand computation of ``gradsync.spec.timing.watchdog_cycles``.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from gradsync.firmware import experiment
from gradsync.firmware.driver import Driver
from gradsync.firmware.training import NodeFirmware
from gradsync.model.cluster import Cluster
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.hardware import PRESETS
from gradsync.watchdog import NodeProgress, WatchdogError, config_watchdog_cycles

SHORT = experiment.TrainConfig(nodes=2, steps=2, layers=(64, 16, 10), global_batch=8)


class _Swallow:
    """The far end of a held-down link: every packet is lost on the way (``hw``: the real
    receiver's, whose applier width the sender's timing reads)."""

    rx_free_at = 0

    def __init__(self, hw) -> None:
        self.hw = hw

    def receive(self, _pkt) -> None:
        pass


def _held_down(cluster: Cluster) -> Cluster:
    nic = cluster.devices[0].nic
    nic.peer = _Swallow(nic.peer.hw)  # link 0: node 0 -> node 1
    return cluster


def _firmware_programs(cfg):
    jobs = experiment.prepare(cfg).jobs
    return [lambda d, j=j: NodeFirmware(d, j).run() for j in jobs]


def test_bound_is_the_documented_sum():
    """watchdog_cycles, computed by hand for the small preset and the SHORT configuration."""
    hw = PRESETS["small"]
    # nic_timeouts: 12 + 4 bytes framing + 256 payload = 68 words; rtt = 2*100 + 68*4/1 + 16
    rtt = 2 * 100 + 68 * 4 + 16
    timeout = 2 * rtt + 64
    # a resend round: the timeout, then 16 packets of 272 bytes at 1 byte per cycle
    round_ = timeout + 16 * 272
    # longest command, layer 64x16 with a local batch of 4 on the 8x8 array: the dA GEMM
    # (m, k, n) = (4, 16, 64), 1x8 tiles of 16 beats (dW (64, 4, 16): 8x2 tiles of 8 beats)
    gemm = 2 + 1 + (8 - 1) * max(16, 8) + 16 + (8 + 8 - 2) + 8 + 1
    assert gemm > 2 + 1 + (16 - 1) * max(4, 8) + 4 + (8 + 8 - 2) + 8 + 1
    sgd = 2 + 1 + 64 * 16 // 8 + 3 + 1
    bulk = 16 + max(8192 * 2, 2048 * 16) // 8
    want = 64 * round_ + max(gemm, sgd) + bulk + 1024
    assert tm.watchdog_cycles(hw, (64, 16, 10), 4, 2) == want
    assert config_watchdog_cycles(SHORT) == want


def test_held_down_link_stops_naming_link_0_and_the_counters():
    from gradsync.model_backend import run_watched

    cluster = _held_down(Cluster(2, SHORT.hardware, SHORT.fixed_point))
    with pytest.raises(WatchdogError) as info:
        run_watched(cluster, _firmware_programs(SHORT), None, config_watchdog_cycles(SHORT))
    msg = str(info.value)
    sent = cluster.devices[0].nic.perf["tx_pkts"]
    assert sent > 0 and cluster.devices[1].nic.perf["rx_pkts"] == 0
    assert f"link 0 (node 0 nic.tx -> node 1 nic.rx) delivers nothing: node 0 sent {sent}" in msg
    assert "node 1 applied 0" in msg
    assert "link 1 (" not in msg  # link 1 works
    # the receiver's awaited tags and both nodes' NIC counters
    assert re.search(r"node 1: nic.rx waits for tags L\dc\ds0", msg)
    assert f"node 0 NIC tx_packets {sent}, rx_packets " in msg
    assert msg.count("watchdog:") == 1


async def _spin(dev):
    """A firmware mistake: poll RX_DONE for ever instead of waiting for the interrupt."""
    await Driver(dev).init(0)
    while True:
        await dev.read32(rm.offset("RX_DONE_LO"))


async def _wait_for_interrupt(dev):
    drv = Driver(dev)
    await drv.init(0)
    await drv.service()


def test_spinning_node_stops_after_the_bound():
    from gradsync.model_backend import run_watched

    bound = 20_000
    cluster = Cluster(2, SHORT.hardware, SHORT.fixed_point)
    with pytest.raises(WatchdogError) as info:
        run_watched(cluster, [_spin, _wait_for_interrupt], None, bound)
    msg = str(info.value)
    assert re.search(r"node 0 firmware spins: \d+ register read\(s\) and 0 write\(s\)", msg)
    assert "node 1 firmware spins" not in msg and "link 0 (" not in msg
    # stopped between the bound and one sampling period (bound / 4) past it
    assert bound <= cluster.sim.now <= 1.25 * bound + 100
    assert bound <= int(re.search(r"no progress for (\d+) cycles", msg).group(1))


def test_healthy_run_is_not_stopped_and_keeps_its_cycles():
    """The watchdog only reads: the same cycles and weights as without it."""
    from gradsync.model_backend import run_model

    jobs = experiment.prepare(SHORT).jobs
    watched = run_model(SHORT, jobs)
    jobs = experiment.prepare(SHORT).jobs
    bare = run_model(SHORT, jobs, watchdog_cycles=None)
    assert watched.total_cycles == bare.total_cycles
    assert [n.records for n in watched.nodes] == [n.records for n in bare.nodes]


def test_cli_hang_is_one_sentence_exit_1_and_a_failed_record(tmp_path, capsys, monkeypatch):
    import gradsync.model_backend as mb
    from gradsync.cli import main

    monkeypatch.setattr(mb, "Cluster", lambda *a: _held_down(Cluster(*a)))
    out = tmp_path / "run"
    argv = ["train", "--backend", "model", "--steps", "2", "--layers", "64,16,10"]
    assert main([*argv, "--global-batch", "8", "--no-baselines", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gradsync train: watchdog: ") and "\n" not in err
    assert "Traceback" not in err and "link 0 (node 0 nic.tx -> node 1 nic.rx)" in err
    res = json.loads((out / "results.json").read_text())
    assert res["status"] == "failed" and res["error"].startswith("WatchdogError: watchdog: ")


def test_model_link_that_drops_everything_stops_instead_of_stepping_forever(tmp_path, capsys):
    """--link-faults on the model: the faulted link steps cycles inside one send, where the
    event loop's watchdog never runs; the send is bounded by the same watchdog bound."""
    from gradsync.cli import main

    out = tmp_path / "run"
    argv = ["train", "--backend", "model", "--steps", "1", "--link-faults", "drop=65535"]
    assert main([*argv, "--no-baselines", "--quiet", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gradsync train: watchdog: no progress for ") and "\n" not in err
    bound = int(re.search(r"bound (\d+)", err)[1])
    stuck = int(re.search(r"no progress for (\d+) cycles", err)[1])
    assert bound < stuck <= bound + 1
    assert "[link 0 (node 0 nic.tx -> next node's nic.rx): no progress for" in err
    assert "'dropped': " in err and "'retransmits': " in err
    assert json.loads((out / "results.json").read_text())["status"] == "failed"


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_held_down_link_stops_naming_link_0_and_the_counters():
    """Issue 15: drop every packet on link 0, no max_cycles: it ran with no end before."""
    from gradsync.sim.rtl_backend import LAST_RUN, RtlRunError, run_rtl

    cfg = experiment.TrainConfig(nodes=2, steps=1, layers=(64, 16, 10), global_batch=8)
    jobs = experiment.prepare(cfg).jobs
    with pytest.raises(RtlRunError) as info:
        run_rtl(cfg, jobs, progress=False, link_faults=[{"drop_rate": 0xFFFF}, {}])
    msg = str(info.value)
    assert msg.startswith("WatchdogError: watchdog: no progress for ")
    links = LAST_RUN.counters["links"]
    nodes = LAST_RUN.counters["nodes"]
    assert links[0]["dropped"] > 0 and links[1]["dropped"] == 0
    assert nodes[1]["rx_packets"] == 0 and nodes[0]["tx_retransmits"] > 0
    sent = nodes[0]["tx_packets"]
    assert f"link 0 (node 0 nic.tx -> node 1 nic.rx) delivers nothing: node 0 sent {sent}" in msg
    assert "link 1 (" not in msg
    # the counters as read at the stop (the record's are read a little later)
    assert re.search(r"link 0 packets \d+, corrupted 0, dropped \d+", msg)
    assert re.search(r"node 0 NIC tx_packets \d+, tx_retransmits \d+", msg)
    assert re.search(r"node 1: nic.rx waits for tags L\dc\ds0", msg)
    bound = config_watchdog_cycles(cfg)
    stopped = int(re.search(r"no progress for (\d+) cycles", msg).group(1))
    assert bound <= stopped <= 1.25 * bound + 100


# ------------------------------------------------- a packet the receiver holds for good

#: A schedule file whose import makes node 1's firmware never write its windows' TAGs
#: of step 1 (test only): loaded in the RTL backend's simulator process, it changes that
#: process's firmware alone.
NEVER_TAGS = """
from gradsync.firmware import training
from gradsync.firmware.schedules import Priority

_tag_windows = training.NodeFirmware._tag_windows


async def _never_on_node_1(self, layer):
    if self.node == 1 and self.exchange_step == 1:
        return
    await _tag_windows(self, layer)


training.NodeFirmware._tag_windows = _never_on_node_1


class NeverTags(Priority):
    name = "never-tags"
"""
HELD_CFG = experiment.TrainConfig(
    nodes=2, steps=2, global_batch=16, layers=(64, 16, 10), chunk_bytes=256
)


def test_report_names_the_held_packet_from_the_rtl_node_ports():
    """The RTL backend hands the report its NODE_COUNTERS: ``rx_held_window`` (window + 1)
    and ``rx_held_tag`` become the sentence, and are not listed as counters."""
    from gradsync.watchdog import Watchdog

    dog = Watchdog(100)
    idle = NodeProgress(1, 1, 1, 1)
    dog.sample(0, [idle, idle])
    dog.sample(200, [idle, idle])
    tag = rm.encode_tag(1, 2, 0)  # step 0: the window still has step -1's tag (4095)
    nics = [{"rx_packets": 3, "rx_held_window": 0, "rx_held_tag": 0},
            {"rx_packets": 4, "rx_held_window": 6, "rx_held_tag": tag}]  # fmt: skip
    msg = dog.report(200, ["idle", "idle"], [{}, {}], nics)
    assert (
        "nic.rx of node 1 holds a packet tagged L1c2s0 for window 5, whose tag is L1c2s4095: "
        "the firmware never reopened it" in msg
    )
    assert "rx_held" not in msg and "node 1 NIC rx_packets 4" in msg


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_packet_held_for_good_is_named_as_the_model_names_it(tmp_path, monkeypatch):
    from gradsync import model_backend
    from gradsync.firmware import training

    # the schedule file is also imported here (the CLI side validates it) and patches this
    # process's firmware: restore it after the test, for the tests that follow in this worker
    monkeypatch.setattr(training.NodeFirmware, "_tag_windows", training.NodeFirmware._tag_windows)
    from gradsync.model.nic import held_sentence
    from gradsync.sim.rtl_backend import LAST_RUN, RtlRunError, run_rtl

    path = tmp_path / "never_tags.py"
    path.write_text(NEVER_TAGS)
    cfg = dataclasses.replace(HELD_CFG, schedule=f"{path}:NeverTags")
    with pytest.raises(RtlRunError) as info:
        run_rtl(cfg, experiment.prepare(cfg).jobs, progress=False)
    node1 = LAST_RUN.counters["nodes"][1]
    window, tag = node1["rx_held_window"] - 1, node1["rx_held_tag"]
    assert window >= 0 and rm.decode_tag(tag)[2] == 1

    # the model, with the same firmware change made here by monkeypatching
    class Never(NodeFirmware):
        async def _tag_windows(self, layer):
            if not (self.node == 1 and self.exchange_step == 1):
                await super()._tag_windows(layer)

    monkeypatch.setattr(model_backend, "NodeFirmware", Never)
    with pytest.raises(WatchdogError) as model:
        model_backend.run_model(HELD_CFG, experiment.prepare(HELD_CFG).jobs)
    sentence = held_sentence(1, window, tag, rm.encode_tag(*rm.decode_tag(tag)[:2], 0))
    assert sentence in str(info.value) and sentence in str(model.value)
