"""Schedule selection, user schedule loading, ordering rules and the auto chunk rule."""

from __future__ import annotations

import pytest

from gradsync.firmware import schedules as sc
from gradsync.firmware.data import batch_indices, load


def task(layer, chunk=0, phase=0, seq=0):
    return sc.SendTask(
        step=0, layer=layer, chunk=chunk, phase=phase, length=64, ready_seq=seq, num_layers=3
    )


def test_builtin_orders():
    ready = [
        task(3, 0, seq=0),
        task(3, 1, seq=1),
        task(2, 0, seq=2),
        task(1, 0, seq=3),
        task(3, 2, seq=4),
    ]
    prio = sc.load_schedule("priority")
    fifo = sc.load_schedule("fifo")
    assert [t.layer for t in sorted(ready, key=prio.priority)] == [1, 2, 3, 3, 3]
    assert [t.ready_seq for t in sorted(ready, key=fifo.priority)] == [0, 1, 2, 3, 4]
    assert prio.queue(task(1)) == 0 and prio.queue(task(2)) == 1
    assert (
        prio.early_update,
        fifo.early_update,
        sc.load_schedule("sequential").overlap_backward,
    ) == (
        True,
        False,
        False,
    )


def test_user_schedule_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        sc.load_schedule(str(tmp_path / "none.py") + ":X")
    f = tmp_path / "s.py"
    f.write_text("class Other: pass\n")
    with pytest.raises(ValueError, match="no class 'X'"):
        sc.load_schedule(f"{f}:X")
    with pytest.raises(ValueError, match="lacks 'queue'"):
        sc.load_schedule(f"{f}:Other")
    f.write_text(
        "from gradsync.firmware.schedules import Priority\nclass Mine(Priority):\n    max_inflight = 4\n"
    )
    mine = sc.load_schedule(f"{f}:Mine")
    assert mine.max_inflight == 4 and mine.priority(task(1)) < mine.priority(task(2))


def test_batches_shard_the_global_batch_without_overlap():
    d = load(3)
    steps = batch_indices(d, 3, 30, 64, 4)
    assert not set(d.train_indices) & set(d.test_indices)
    for shards in steps:
        flat = [i for s in shards for i in s]
        assert len(flat) == len(set(flat)) == 64
        assert all(len(s) == 16 for s in shards)
        assert set(flat) <= set(d.train_indices.tolist())
