"""``gradsync faults`` refuses bad input with one sentence naming the option and the value,
exit 2, before anything runs or is written."""

from __future__ import annotations

import os

import pytest

from gradsync import cli

CASES = [
    (["--kinds", "drop,flood"], "--kinds takes drop, corrupt, burst, frame, stall, ack-drop, "
     "ack-corrupt, down-rate, down-at, mix, not 'flood'"),
    (["--kinds", "drop,drop"], "--kinds names a kind twice: 'drop,drop'"),
    (["--rates", "600,lots"], "--rates takes comma-separated integers, not 'lots'"),
    (["--rates", "70000"], "--rates 70000 is outside 1..65535, the drop rates"),
    (["--kinds", "down-at", "--rates", "0"], "--rates 0 is outside 1..4294967295, the down-at"),
    (["--rates", "600,600"], "--rates names a rate twice: '600,600'"),
    (["--seeds", "0"], "--seeds must be in 1.."),
    (["--workers", "-1"], "--workers must be 0 (this process) or more, not -1"),
    (["--workers", "2", "--scheduler", "tcp://h:8786"], "--workers sizes a cluster"),
    (["--watchdog-cycles", "0"], "--watchdog-cycles must be at least 1, not 0"),
    (["--backend", "rtl", "--watchdog-cycles", "9"], "--watchdog-cycles is a model-backend"),
    (["--overwrite", "--resume", "--out", "{tmp}/o"], "--overwrite and --resume exclude"),
    (["--resume"], "--overwrite and --resume need --out DIR"),
    (["--backend", "rtl", "--nodes", "1"], "--nodes must be at least 2 on --backend rtl, not 1"),
    (["--layers", "64,16,9"], "--layers must be 64 inputs first and 10 outputs last"),
    (["--schedule", "nosuch"], "unknown schedule 'nosuch'"),
    (["--chunk-bytes", "6"], "--chunk-bytes must be a positive multiple of"),
    (["--out", "{tmp}/file"], "--out '{tmp}/file' is a file, not a folder"),
    (["--out", "{tmp}/foreign"], "--out '{tmp}/foreign' holds files that are not a fault "
     "campaign's (notes.txt)"),
    (["--out", "{tmp}/previous"], "--out '{tmp}/previous' holds a previous campaign; add "
     "--resume"),
    (["--out", "{tmp}/linked", "--overwrite"], "--out '{tmp}/linked' holds a symbolic link"),
    (["--out", "{tmp}/empty", "--resume"], "--resume: --out '{tmp}/empty' holds no campaign"),
]  # fmt: skip


def _folders(tmp) -> None:
    (tmp / "file").write_text("x")
    (tmp / "foreign").mkdir()
    (tmp / "foreign" / "notes.txt").write_text("mine")
    (tmp / "previous" / "points").mkdir(parents=True)
    (tmp / "previous" / "results.json").write_text("{}")
    (tmp / "linked").mkdir()
    os.symlink("/tmp", tmp / "linked" / "points")
    (tmp / "empty").mkdir()


def _tree(tmp) -> list[str]:
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*"))


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, capsys, argv, message):
    _folders(tmp_path)
    before = _tree(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    rc = cli.main(["faults", "--steps", "1", "--no-progress", *argv])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("gradsync faults: ") and err.count("\n") == 1, err
    assert message.replace("{tmp}", str(tmp_path)) in err
    assert _tree(tmp_path) == before  # nothing written, no lock left


def test_a_malformed_number_is_refused_by_the_parser_naming_the_option(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["faults", "--seeds", "many"])
    assert exc.value.code == 2
    assert "argument --seeds: invalid int value: 'many'" in capsys.readouterr().err
