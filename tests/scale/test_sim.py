"""The collective-level simulator's own rules: symmetry, stragglers, topologies, coarsening,
the chunk-size rules.  (Agreement with the golden model: test_agreement.py.)"""

from __future__ import annotations

import dataclasses

import pytest

from gradsync.firmware.schedules import load_schedule
from gradsync.scale import chunking
from gradsync.scale import sim as S
from gradsync.scale.config import ScaleConfig, ScaleConfigError, ScaleLink, Straggler, Topology
from gradsync.spec.hardware import preset
from gradsync.workloads import builtin

HW = preset("large")


def _mlp(nodes: int, schedule: str = "priority", chunk: int = 512, **kw) -> ScaleConfig:
    wl = builtin("mlp", layers=(64, 32, 10), batch=64 // nodes, hardware=HW)
    link = ScaleLink.from_hardware(HW)
    return ScaleConfig(wl, nodes, load_schedule(schedule), chunk, link, hardware=HW, **kw)


@pytest.mark.parametrize("nodes", [2, 4, 8])
def test_one_node_for_all_equals_every_node_simulated(nodes):
    """Symmetry: a straggler factor of 1 forces every node to be simulated; nothing changes."""
    one = S.simulate(_mlp(nodes))
    every = S.simulate(_mlp(nodes, stragglers=(Straggler(1, 1.0),)))
    assert (every.step_cycles, every.layer1_ready_cycles) == (
        one.step_cycles,
        one.layer1_ready_cycles,
    )
    assert every.events > one.events * (nodes - 0.5)  # it did simulate N nodes


def test_a_straggler_slows_every_node_by_its_extra_compute():
    """A ring all-reduce waits for the slowest node: one node at 2x compute slows the step by
    about its extra compute (within the exchange's slack), never by less than half of it."""
    base = S.simulate(_mlp(4))
    slow = S.simulate(_mlp(4, stragglers=(Straggler(1, 2.0),)))
    extra = base.compute_cycles  # the straggler's compute doubles
    assert slow.step_cycles >= base.step_cycles + 0.5 * extra
    assert slow.step_cycles <= base.step_cycles + 1.1 * extra


def test_chunk_phases_by_hand():
    # N = 2: one exchange of the whole chunk
    assert S.chunk_phases(512, 2) == (S._Phase(0, 512),)
    # ring of 4: 3 reduce-scatter + 3 all-gather sends of 512/4 bytes
    assert S.chunk_phases(512, 4) == tuple(S._Phase(0, 128) for _ in range(6))
    # hierarchical 8 = 2 boxes x 4: RS in the box (3 x 128 B, intra link 1), all-reduce of the
    # 128-byte share between the 2 boxes (one exchange on link 0), AG in the box (3 x 128 B)
    ph = S.chunk_phases(512, 8, per_box=4)
    assert [(p.link, p.length) for p in ph] == [(1, 128)] * 3 + [(0, 128)] + [(1, 128)] * 3


def test_long_rings_are_coarsened_keeping_every_send():
    exact = [S._Phase(0, 64)] * 2046  # 1024-node ring
    merged = S._coarsen(exact, 64)
    assert len(merged) <= 64
    assert sum(p.count for p in merged) == 2046
    assert S._coarsen(exact[:30], 64) == exact[:30]  # short chains stay exact


def test_hierarchical_needs_a_dividing_box():
    cfg = _mlp(8, topology=Topology("hierarchical", 3, ScaleLink(32.0, 10)))
    with pytest.raises(ScaleConfigError, match="--per-box 3 does not divide --nodes 8"):
        S.simulate(cfg)


def test_a_faster_intra_box_link_shortens_a_communication_bound_step():
    slow_link = ScaleLink(1.0, 100, 256)
    wl = builtin("mlp", layers=(64, 32, 10), batch=8, hardware=HW)
    base = ScaleConfig(wl, 8, load_schedule("fifo"), 512, slow_link, hardware=HW)
    ring = S.simulate(base)
    hier = S.simulate(
        dataclasses.replace(base, topology=Topology("hierarchical", 4, ScaleLink(16.0, 20, 256)))
    )
    assert hier.step_cycles < ring.step_cycles
    assert set(hier.link_utilisation) == {"inter", "intra"}


def test_priority_lets_layer_one_start_earlier_on_a_slow_link():
    link = ScaleLink(1.0, 100, 256)
    wl = builtin("mlp", layers=(64, 32, 32, 10), batch=8, hardware=HW)
    res = {
        name: S.simulate(ScaleConfig(wl, 2, load_schedule(name), 64, link, hardware=HW))
        for name in ("sequential", "fifo", "priority")
    }
    assert (
        res["priority"].layer1_ready_cycles
        < res["fifo"].layer1_ready_cycles
        < res["sequential"].layer1_ready_cycles
    )


def test_efficiency_rule_by_hand():
    """100 Gb/s at 1 GHz = 12.5 B/cycle, 1000 cycles latency, 4096-byte payloads, 16 B framing.
    A send of p full packets occupies 10 (fetch) + 329 p (ceil(4112 / 12.5) per packet) + 1
    (write-back) cycles; its efficiency 4096 p / (12.5 (11 + 329 p + 1000)) is 0.492 at p = 3
    and 0.563 at p = 4, so the 0.5 rule sends 4 packets (16 KiB); a ring of 8 cuts a chunk into
    8 sends (128 KiB), an exchange (N = 2) sends the chunk whole (16 KiB)."""
    cfg = dataclasses.replace(_mlp(8), link=ScaleLink.from_gbps(100, 1000, 1.0), nodes=8)
    assert chunking.rule_chunk_bytes(cfg, "efficiency", 0.5) == 8 * 4 * 4096
    assert (
        chunking.rule_chunk_bytes(dataclasses.replace(cfg, nodes=2), "efficiency", 0.5) == 4 * 4096
    )


def test_best_chunk_is_the_fastest_of_the_grid():
    cfg = _mlp(4, schedule="fifo")
    search = chunking.best_chunk(cfg, (256, 512, 1024, 2048, 4096))
    assert search.best_step_cycles == min(search.steps.values())
    for chunk, step in search.steps.items():
        assert step == S.simulate(dataclasses.replace(cfg, chunk_bytes=chunk)).step_cycles
