"""User schedule files: a stable module name in every process, and passing to another process.

The RTL backend runs the firmware in the simulator's process; it sends each
schedule by name or ``/abs/file.py:Class`` and that process imports the file
again with ``load_schedule``.  These tests run that second process for real
(a ``python`` subprocess with another working directory and hash seed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest

from gradsync.firmware import data as digits
from gradsync.firmware import schedules as sc
from gradsync.firmware.experiment import TrainConfig, build_jobs
from tests.readme import readme_schedule

TOP_FIRST = readme_schedule() + '''


class BottomUp(TopFirst):
    def queue(self, task):
        return 1

    def priority(self, task):
        return (task.layer, -task.chunk)
'''

PROBE = """
import json, sys
from pathlib import Path
from gradsync.firmware import schedules as sc
from gradsync.firmware.training import schedule_tasks
spec = sys.argv[1]
s = sc.load_schedule(spec)
tasks = schedule_tasks((64, 256, 32), 64, 0, 2, 0)
order = [t.ready_seq for t in sorted(tasks, key=lambda t: sc.call_priority(s, t))]
print(json.dumps([type(s).__module__, type(s).__name__, order, sc.call_queue(s, tasks[0])]))
"""


def _python(code: str, *args: str, cwd: Path, seed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    out = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture
def top_first(tmp_path) -> Path:
    f = tmp_path / "my_schedule.py"
    f.write_text(TOP_FIRST)
    return f


def test_module_name_is_the_same_in_every_process(top_first, tmp_path):
    expected = (
        "gradsync_user_schedule_"
        + hashlib.sha256(str(top_first.resolve()).encode()).hexdigest()[:16]
    )
    code = "import sys; from pathlib import Path; from gradsync.firmware import schedules as sc; "
    code += "print(type(sc.load_schedule(sys.argv[1])).__module__)"
    other = tmp_path / "elsewhere"
    other.mkdir()
    names = {
        _python(code, "my_schedule.py:TopFirst", cwd=tmp_path, seed="1"),
        _python(code, f"{top_first}:TopFirst", cwd=other, seed="2"),
        _python(code, f"../{top_first.name}:TopFirst", cwd=other, seed="3"),
        type(sc.load_schedule(f"{top_first}:TopFirst")).__module__,
    }
    assert names == {expected}


def test_schedule_spec_loads_the_same_schedule_in_another_process(top_first, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = sc.load_schedule("my_schedule.py:BottomUp")  # relative: the spec must be absolute
    spec = sc.schedule_spec(s)
    assert spec == f"{top_first.resolve()}:BottomUp"
    other = tmp_path / "sub"
    other.mkdir()
    module, cls, order, queue = json.loads(_python(PROBE, spec, cwd=other, seed="7"))
    assert (module, cls, queue) == (type(s).__module__, "BottomUp", 1)
    # by hand: 64-byte chunks of (64, 256, 32) bytes are produced as L3c0, L2c0..c3, L1c0
    # (ready_seq 0..5); lowest layer first, last chunk first: L1c0, L2c3, L2c2, L2c1, L2c0, L3c0
    assert order == [5, 4, 3, 2, 1, 0]
    assert sc.schedule_spec(sc.load_schedule("p3")) == "p3"
    mine = sc.load_schedule("p3")
    mine.slice_params = 10  # changed in this process: cannot be named, must be pickled
    assert sc.schedule_spec(mine) is None


def test_rtl_backend_sends_the_schedule_by_file(top_first, tmp_path, monkeypatch):
    """run_rtl's run file holds no schedule object; the simulator side loads it by file."""
    from gradsync.sim import build, rtl_backend

    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(
        steps=1, layers=(64, 16, 10), global_batch=8, schedule="my_schedule.py:TopFirst"
    )
    jobs, _ = build_jobs(cfg, digits.load(0))
    monkeypatch.setattr(
        rtl_backend, "build_cluster", lambda cfg, waves: types.SimpleNamespace(cached=True)
    )
    monkeypatch.setattr(build, "run_cocotb", lambda *a, **k: None)  # the simulator: not run here
    with pytest.raises(rtl_backend.RtlRunError, match="wrote no result"):
        rtl_backend.run_rtl(cfg, jobs, work_dir=tmp_path / "work", progress=False)
    run = pickle.loads((tmp_path / "work" / "run.pkl").read_bytes())
    assert all(j.schedule is None for j in run["jobs"])
    assert run["schedules"] == [f"{top_first.resolve()}:TopFirst"] * 2
    code = (
        "import pickle, sys; from gradsync.firmware import schedules as sc; "
        "run = pickle.load(open(sys.argv[1], 'rb')); "
        "print(*[type(sc.load_schedule(s)).__name__ for s in run['schedules']])"
    )
    other = tmp_path / "sim"
    other.mkdir()
    assert (
        _python(code, str(tmp_path / "work" / "run.pkl"), cwd=other, seed="5")
        == "TopFirst TopFirst"
    )


def test_a_changed_file_is_imported_again_an_unchanged_one_is_not(top_first):
    a = sc.load_schedule(f"{top_first}:TopFirst")
    b = sc.load_schedule(f"{top_first}:TopFirst")
    assert type(a) is type(b)  # executed once per process
    top_first.write_text(TOP_FIRST.replace("max_inflight = 1", "max_inflight = 3"))
    c = sc.load_schedule(f"{top_first}:TopFirst")
    assert type(c) is not type(a) and c.max_inflight == 3


def test_builtin_schedules_are_passed_by_name():
    for name in sc.BUILTIN:
        assert sc.schedule_spec(sc.load_schedule(name)) == name
    assert dataclasses.is_dataclass(sc.SendTask)
