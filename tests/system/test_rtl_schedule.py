"""The gradient-exchange schedules on 2 RTL nodes: priority's chunk order and its earlier layer 1.

One communication-bound configuration, run once per schedule on the RTL
cluster (module fixture), serves every assertion.  Why this configuration:
at 1 byte/cycle a 64-byte chunk (one packet) holds the link for 80 cycles,
longer than the backward GEMMs between two layers' dW, so when layer L-1's
dW ends, layer L still has 9 (L = 3) or 16 (L = 2) chunks unsent.  That is
more than the ``max_inflight`` (4) descriptors a hardware queue holds, so at
least one of them still waits in the firmware's send buffer, and which layer
goes next is the schedule's choice: ``priority`` hands out the lowest layer
first, ``fifo`` production order.  (With layers (64, 16, 10) and 256-byte
chunks layer 2's two chunks are all posted before layer 1 is ready, and the
order is not the buffer's to decide.)  32 + 16 + 10 chunks fit the 64 RX
windows; the gradients fit the default preset's 8192-word SRAM.

"Sent" is the NIC_TX END record of the chunk's descriptor: the cycle after
the last word of its last packet left on the link (with 2 nodes a chunk is
one descriptor).  The DMA END of the same descriptor follows one cycle
later (the write-back), in the same order, since one DMA engine sends them
in turn.
"""

from __future__ import annotations

import dataclasses

import pytest

from gradsync.firmware import experiment
from gradsync.firmware.experiment import TrainConfig, intervals
from gradsync.firmware.schedules import load_schedule
from gradsync.firmware.training import split_chunks
from gradsync.model_backend import run_model
from gradsync.spec import regmap as rm
from gradsync.spec.hardware import HardwareConfig

pytest.importorskip("gradsync.hw.cluster")

from gradsync.sim.check import check_run  # noqa: E402
from gradsync.sim.rtl_backend import run_rtl  # noqa: E402
from tests.system.test_rtl_train import assert_exact  # noqa: E402

COMM_BOUND = TrainConfig(
    nodes=2,
    steps=2,
    global_batch=16,
    layers=(64, 16, 32, 10),
    chunk_bytes=64,
    hardware=HardwareConfig(link_bytes_per_cycle=1, link_latency_cycles=100),
)
SCHEDULES = ("fifo", "priority")


@dataclasses.dataclass
class ScheduleRun:
    cfg: TrainConfig
    rtl: experiment.BackendResult  #: what the RTL cluster returned
    metrics: list[experiment.StepMetrics]  #: from the RTL trace, as ``gradsync compare``
    model_metrics: list[experiment.StepMetrics]  #: the same from the golden model


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``runs(schedule)``: the RTL run of ``COMM_BOUND`` under ``schedule`` (made once)."""
    made: dict[str, ScheduleRun] = {}

    def get(schedule: str) -> ScheduleRun:
        if schedule not in made:
            cfg = dataclasses.replace(COMM_BOUND, schedule=schedule)
            work = tmp_path_factory.mktemp(schedule)
            got = {}

            def rtl_backend(cfg, jobs):
                got["rtl"] = run_rtl(cfg, jobs, work_dir=work, progress=False, max_cycles=3_000_000)
                return got["rtl"]

            # experiment.run is what `gradsync train/compare` run: its StepMetrics are the table
            res = experiment.run(cfg, rtl_backend)
            model = experiment.run(cfg, run_model)
            made[schedule] = ScheduleRun(cfg, got["rtl"], res.steps, model.steps)
        return made[schedule]

    return get


def sends(run: ScheduleRun, node: int, step: int) -> dict[int, list[experiment.Interval]]:
    """NIC_TX intervals of ``node`` per layer for the exchange of ``step``."""
    out: dict[int, list[experiment.Interval]] = {}
    for iv in intervals(run.rtl.nodes[node].records, node):
        if iv.engine == rm.Engine.NIC_TX and iv.step == step:
            out.setdefault(iv.layer, []).append(iv)
    return out


def gradient_ready(run: ScheduleRun, node: int, step: int, layer: int) -> int:
    """The cycle ``layer``'s dW of ``step`` ended on ``node`` (its chunks may be sent from then)."""
    (dw,) = [
        iv
        for iv in intervals(run.rtl.nodes[node].records, node)
        if iv.engine == rm.Engine.COMPUTE
        and iv.kind == rm.Kind.DW
        and iv.layer == layer
        and iv.step == step
    ]
    return dw.end


def pairs(run: ScheduleRun):
    """(node, step, lower layer L-1, its TX intervals, upper layer L, its TX intervals), all of them.

    Asserts on the way that every chunk of every layer was sent once, and that
    the order between L-1 and L is the schedule's to choose: at the cycle
    L-1's gradients are ready, more of L's chunks are unsent than a hardware
    queue holds in flight.
    """
    cfg = run.cfg
    word_bytes = cfg.fixed_point.word_bytes
    max_inflight = load_schedule(cfg.schedule).max_inflight
    top = len(cfg.layers) - 1
    for node in range(cfg.nodes):
        for step in range(cfg.steps):
            tx = sends(run, node, step)
            for layer in range(1, top + 1):
                n_bytes = cfg.layers[layer - 1] * cfg.layers[layer] * word_bytes
                chunks = split_chunks(n_bytes, cfg.chunk_bytes)
                assert sorted(iv.chunk for iv in tx[layer]) == list(range(len(chunks)))
                assert sum(iv.aux for iv in tx[layer]) == n_bytes
            for upper in range(2, top + 1):
                lower = upper - 1
                ready = gradient_ready(run, node, step, lower)
                unsent = sum(1 for iv in tx[upper] if iv.start >= ready)
                assert unsent > max_inflight, (node, step, upper, unsent)
                yield node, step, lower, tx[lower], upper, tx[upper]


def last_sent(ivs: list[experiment.Interval]) -> int:
    return max(iv.end for iv in ivs)


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_rtl_matches_the_model_and_its_step_metrics(runs, schedule):
    run = runs(schedule)
    assert_exact(check_run(run.cfg, run.rtl))
    got = [(m.cycles, m.layer1_ready_cycle, m.exposed_comm_cycles) for m in run.metrics]
    want = [(m.cycles, m.layer1_ready_cycle, m.exposed_comm_cycles) for m in run.model_metrics]
    assert got == want
    assert all(m.layer1_ready_cycle > 0 for m in run.metrics)


@pytest.mark.rtl
@pytest.mark.slow
def test_priority_sends_all_of_the_lower_layer_before_the_upper_layers_last_chunk(runs):
    checked = 0
    for node, step, lower, tx_lower, upper, tx_upper in pairs(runs("priority")):
        assert last_sent(tx_lower) < last_sent(tx_upper), (node, step, lower, upper)
        checked += 1
    assert checked == 2 * 2 * 2  # nodes x steps x layer pairs


@pytest.mark.rtl
@pytest.mark.slow
def test_fifo_sends_the_upper_layer_first_so_the_order_differs(runs):
    checked = 0
    for node, step, lower, tx_lower, upper, tx_upper in pairs(runs("fifo")):
        # production order: all of the upper layer, then the lower one ...
        assert last_sent(tx_upper) <= min(iv.start for iv in tx_lower), (node, step, upper)
        # ... so the priority statement is false here
        assert not last_sent(tx_lower) < last_sent(tx_upper), (node, step, lower, upper)
        checked += 1
    assert checked == 2 * 2 * 2


@pytest.mark.rtl
@pytest.mark.slow
def test_priority_makes_layer_1_ready_earlier_than_fifo(runs):
    """layer1-ready as ``gradsync compare`` prints it: the mean over steps of StepMetrics."""

    def mean_ready(metrics: list[experiment.StepMetrics]) -> float:
        return sum(m.layer1_ready_cycle for m in metrics) / len(metrics)

    fifo, prio = runs("fifo").metrics, runs("priority").metrics
    assert mean_ready(prio) < mean_ready(fifo)
    for p, f in zip(prio, fifo, strict=True):
        assert p.layer1_ready_cycle < f.layer1_ready_cycle, p.step
