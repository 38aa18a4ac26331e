"""A user schedule's bad answers are one sentence and exit 2, before anything is simulated.

Each case runs ``gradsync train --backend model`` through ``gradsync.cli.main``
with a schedule file written here, and asserts the exit code and the whole
sentence on stderr (schedule, method, value; the user's file and line when the
user's code raised).  The last cases are caught during the run (a bad answer
only in a step the up-front check does not ask about).
"""

from __future__ import annotations

import re

import pytest

from gradsync.cli import main
from gradsync.firmware import schedules as sc

HEAD = "from gradsync.firmware.schedules import Schedule\n\n\nclass S(Schedule):\n"
RUN = ["train", "--backend", "model", "--steps", "3", "--layers", "64,16,16,10",
       "--global-batch", "8", "--quiet", "--no-baselines"]  # fmt: skip

CASES = {
    "queue 5": (
        "    def queue(self, task):\n        return 5 if task.layer == 2 else 1\n",
        "schedule 'S': queue() returned 5 for layer 2; it must be 0 or 1",
    ),
    "queue '0'": (
        "    def queue(self, task):\n        return '0'\n",
        "schedule 'S': queue() returned '0' for layer 3; it must be 0 or 1",
    ),
    "queue True": (
        "    def queue(self, task):\n        return True\n",
        "schedule 'S': queue() returned True for layer 3; it must be 0 or 1",
    ),
    "priority raises": (
        "    def priority(self, task):\n        return (1 / (task.layer - 2),)\n",
        "schedule 'S': priority() raised ZeroDivisionError at s.py:6: division by zero",
    ),
    "priority None": (
        "    def priority(self, task):\n        pass\n",
        "schedule 'S': priority() returned None for layer 3; it must return a sort key "
        "such as (task.layer, task.chunk)",
    ),
    "priority keys that do not compare": (
        "    def priority(self, task):\n        return ('a',) if task.layer == 1 else (task.layer,)\n",
        "schedule 'S': priority() keys ",
    ),
    "max_inflight 0": (
        "    max_inflight = 0\n",
        "schedule 'S': max_inflight is 0; it must be a whole number >= 1 "
        "(descriptors posted per hardware queue at once)",
    ),
    "early_update not a bool": (
        "    early_update = 'yes'\n",
        "schedule 'S': early_update is 'yes'; it must be True or False",
    ),
    "buckets miss a layer": (
        "    def buckets(self, grad_bytes):\n        return [(3, 2)]\n",
        "schedule 'S': buckets() returned [(3, 2)]; it must be a list of tuples of layers "
        "that holds every layer 1..3 exactly once",
    ),
    "buckets not a list": (
        "    def buckets(self, grad_bytes):\n        return 5\n",
        "schedule 'S': buckets() returned 5; it must be a list of tuples of layers "
        "that holds every layer 1..3 exactly once",
    ),
    "buckets raises": (
        "    def buckets(self, grad_bytes):\n        return [(grad_bytes[7],)]\n",
        "schedule 'S': buckets() raised IndexError at s.py:6: tuple index out of range",
    ),
    "chunk_bytes 10": (
        "    def chunk_bytes(self, run_chunk_bytes, element_bytes):\n        return 10\n",
        "schedule 'S': chunk_bytes() returned 10; it must be a positive multiple of 4 bytes",
    ),
}


def _train(tmp_path, monkeypatch, capsys, body: str, *extra: str) -> tuple[int, str]:
    (tmp_path / "s.py").write_text(HEAD + body)
    monkeypatch.chdir(tmp_path)
    code = main([*RUN, "--schedule", "s.py:S", *extra])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES)
def test_bad_answer_is_one_sentence_and_exit_2_before_the_run(case, tmp_path, monkeypatch, capsys):
    body, sentence = CASES[case]
    code, err = _train(tmp_path, monkeypatch, capsys, body)
    assert code == 2
    assert err.startswith(f"gradsync train: {sentence}"), err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_no_step_is_simulated_for_an_up_front_error(tmp_path, monkeypatch, capsys):
    """Up-front: the backend is never called (no step line, no run)."""
    called = []
    monkeypatch.setattr("gradsync.model_backend.run_model", lambda *a, **k: called.append(1))
    code, err = _train(tmp_path, monkeypatch, capsys, CASES["queue 5"][0], "--out", "out")
    assert (code, called) == (2, []) and "queue() returned 5" in err
    assert not (tmp_path / "out").exists()


def test_a_bad_answer_in_a_later_step_stops_the_run_with_the_same_sentence(
    tmp_path, monkeypatch, capsys
):
    # the up-front check asks about the first and last step; step 1 is found by the firmware
    body = "    def queue(self, task):\n        return 7 if task.step == 1 else 1\n"
    code, err = _train(tmp_path, monkeypatch, capsys, body)
    assert code == 2
    assert (
        err == "gradsync train: schedule 'S': queue() returned 7 for layer 3; it must be 0 or 1\n"
    )
    body = "    def priority(self, task):\n        assert task.step != 1, 'no step 1'\n        return (0,)\n"
    code, err = _train(tmp_path, monkeypatch, capsys, body)
    assert code == 2
    assert err == (
        "gradsync train: schedule 'S': priority() raised AssertionError at s.py:6: no step 1\n"
    )


def test_an_error_while_loading_the_file_names_file_and_line(tmp_path, monkeypatch, capsys):
    code, err = _train(tmp_path, monkeypatch, capsys, "    x = 1\n\n\nundefined_name\n")
    assert code == 2
    assert err == (
        "gradsync train: schedule file 's.py' raised NameError at s.py:8 while loading: "
        "name 'undefined_name' is not defined\n"
    )


def test_keys_that_do_not_compare_name_both_layers(tmp_path, monkeypatch, capsys):
    code, err = _train(tmp_path, monkeypatch, capsys, CASES["priority keys that do not compare"][0])
    assert code == 2
    assert re.search(r"priority\(\) keys \(\d,\) \(layer \d\) and \('a',\) \(layer 1\)", err)


def test_a_good_user_schedule_runs_and_numpy_answers_are_accepted(tmp_path, monkeypatch, capsys):
    body = (
        "    def queue(self, task):\n        import numpy\n        return numpy.int64(task.layer != 1)\n"
        "    def priority(self, task):\n        return task.layer\n"
    )
    code, err = _train(tmp_path, monkeypatch, capsys, body)
    assert (code, err) == (0, "")
    s = sc.load_schedule(f"{tmp_path / 's.py'}:S")
    t = sc.SendTask(0, 1, 0, 0, 64, 0, 3)
    assert sc.call_queue(s, t) == 0 and sc.call_priority(s, t) == (1,)
