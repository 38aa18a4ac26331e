"""``gradsync faults`` on the model backend: the campaign's numbers against independent runs.

The end-to-end test runs a ``--quick`` campaign on 2 Dask workers and checks
its table against the per-run records, and every record against a run of
``run_model`` with the same faults made here (link and NIC counters, cycles,
weights compared with NumPy to the fault-free run's). It does not assume the
firmware's reduce-add race (docs/comm.md) is fixed or not: the exit status
must be 1 exactly when some run's weights differ or a run did not finish.
The other tests run in this process (``--workers 0``) with one step.
"""

from __future__ import annotations

import csv
import json
import re
import shlex

import numpy as np
import pytest

from gradsync import cli, faults_campaign
from gradsync.firmware import experiment
from gradsync.model_backend import run_model_cluster
from gradsync.spec.faults import parse_link_faults

#: A small network so that each run takes ~0.1 s.
TINY = ["--layers", "64,16,10", "--chunk-bytes", "256"]
#: The counter each kind must move (``gradsync.spec.faults`` counters).
MOVES = {"drop": "dropped", "corrupt": "corrupted", "burst": "corrupted", "frame": "framed",
         "stall": "stalls", "ack-drop": "acks_dropped", "ack-corrupt": "acks_corrupted",
         "down-rate": "downs", "down-at": "down_cycles", "mix": "dropped"}  # fmt: skip


#: Campaign column -> the model link layer's counter it sums.
PAIRS = [(col, name) for name, col in faults_campaign.NIC_MODEL.items()] + [
    (col, "packets" if col == "link_packets" else col) for col in faults_campaign.LINK_COLUMNS
]


def _direct(cfg, spec: str | None):
    """A run made here: (BackendResult, per-link counters summed by name)."""
    faults = parse_link_faults(spec, cfg.nodes) if spec else None
    res, cluster = run_model_cluster(cfg, experiment.prepare(cfg).jobs, link_faults=faults)
    sums: dict[str, int] = {}
    for c in cluster.link_counters():
        for k, v in c.items():
            sums[k] = sums.get(k, 0) + v
    return res, sums


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _campaign(tmp_path, *extra: str, name: str = "c") -> tuple[int, dict]:
    out = tmp_path / name
    rc = cli.main(["faults", *TINY, "--out", str(out), "--no-progress", *extra])
    record = json.loads((out / "results.json").read_text()) if out.exists() else {}
    return rc, record


def test_quick_campaign_numbers_equal_independent_runs(tmp_path, capsys):
    rc, rec = _campaign(tmp_path, "--quick", "--workers", "2")
    printed = capsys.readouterr().out
    cfg = experiment.TrainConfig(steps=2, layers=(64, 16, 10), chunk_bytes=256)
    ref, _ = _direct(cfg, None)
    assert rec["reference"]["cycles"] == ref.total_cycles
    runs = rec["runs"]
    assert {r["kind"] for r in runs} == set(faults_campaign.KINDS) and len(runs) == 20
    bad, moved = 0, dict.fromkeys(MOVES, 0)
    for r in runs:
        try:
            res, counters = _direct(cfg, r["link_faults"])
        except RuntimeError as exc:  # e.g. the race's RX_TAG_MISMATCH: the same stop
            assert not r["finished"] and r["reason"] == f"{type(exc).__name__}: {exc}", r
            bad += 1
            continue
        assert r["finished"] and r["cycles"] == res.total_cycles, r
        assert r["overhead"] == pytest.approx(res.total_cycles / ref.total_cycles - 1)
        for col, name in PAIRS:
            assert r[col] == counters[name], (r, col)
        moved[r["kind"]] += r[MOVES[r["kind"]]]
        assert r["link_packets"] == r["packets"] + r["resent"]  # every send crosses the link
        assert r["packets"] == rec["reference"]["packets"]
        equal = _same_weights(res.weights, ref.weights)
        assert r["weights_equal"] is equal and r["ok"] is equal, r
        bad += not equal
    # each kind's spec injects the fault it names (in the runs that report counters)
    assert all(moved[r["kind"]] > 0 for r in runs if r["finished"]), moved
    # the table sums the per-run records (read back from runs.csv, the text table and stdout)
    with open(tmp_path / "c" / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    text = (tmp_path / "c" / "table.txt").read_text().splitlines()
    for line in rec["table"]:
        group = [x for x in rows if (x["kind"], int(x["rate"])) == (line["kind"], line["rate"])]
        assert line["runs"] == len(group) == 2
        for col in ("packets", "faults", "resent", "naks", "timeouts", "duplicates"):
            assert line[col] == sum(int(x[col] or 0) for x in group), (line, col)
        assert line["weights_differ"] == sum(x["weights_equal"] == "False" for x in group)
        assert line["not_finished"] == sum(x["finished"] == "False" for x in group)
        cells = next(t.split() for t in text if t.split()[0] == line["kind"])
        assert cells[2:5] == [str(line["runs"]), str(line["packets"]), str(line["faults"])]
        assert " ".join(cells) in " ".join(printed.split())
    t = rec["totals"]
    assert t["weights_differ"] + t["not_finished"] == bad
    assert rc == (1 if bad else 0) and rec["ok"] is (bad == 0)


def test_the_printed_command_repeats_the_run(tmp_path):
    rc, rec = _campaign(tmp_path, "--workers", "0", "--steps", "1", "--kinds", "burst",
                        "--rates", "9000", "--seeds", "1")  # fmt: skip
    run = rec["runs"][0]
    argv = shlex.split(run["command"])
    assert argv[:2] == ["gradsync", "train"] and "--link-faults" in argv
    out = tmp_path / "train"
    assert cli.main([*argv[1:], "--quiet", "--no-baselines", "--out", str(out)]) == 0
    train = json.loads((out / "results.json").read_text())
    assert train["totals"]["cycles"] == run["cycles"] and run["corrupted"] > 0
    final = np.load(out / "weights" / "step_0001.npz")
    cfg = experiment.TrainConfig(steps=1, layers=(64, 16, 10), chunk_bytes=256)
    ref, _ = _direct(cfg, None)
    assert np.array_equal(final["layer2_raw"].ravel(), ref.weights[(0, 1, 2)].ravel())
    assert rc == 0 and run["weights_equal"]


def test_a_run_with_different_weights_is_reported_and_fails_the_campaign(
    tmp_path, monkeypatch, capsys
):
    args = ("--workers", "0", "--steps", "1", "--kinds", "drop,corrupt", "--rates", "3000")
    rc, rec = _campaign(tmp_path, *args, "--seeds", "2", name="clean")
    assert rc == 0 and rec["ok"] and rec["totals"]["weights_differ"] == 0
    real = run_model_cluster

    def perturbed(cfg, jobs, *a, link_faults=None, **kw):
        res, cluster = real(cfg, jobs, *a, link_faults=link_faults, **kw)
        if link_faults and link_faults[0].get("drop_rate") and link_faults[0]["seed"] == 2:
            for node in range(cfg.nodes):  # every node alike: the nodes agree, the run differs
                res.weights[(node, 1, 2)][3] += 1
        return res, cluster

    monkeypatch.setattr("gradsync.model_backend.run_model_cluster", perturbed)
    capsys.readouterr()
    rc, rec = _campaign(tmp_path, *args, "--seeds", "2", name="bad")
    out = capsys.readouterr().out
    assert rc == 1 and not rec["ok"]
    differ = [(r["kind"], r["fault_seed"]) for r in rec["runs"] if not r["weights_equal"]]
    assert differ == [("drop", 2)]
    bad = next(r for r in rec["runs"] if not r["weights_equal"])
    assert bad["first_differing_step"] == 1 and bad["nodes_agree"] and bad["finished"]
    assert [line["weights_differ"] for line in rec["table"]] == [1, 0]
    assert "FAILED drop rate 3000 seed 2: weights differ" in out
    assert "--link-faults drop=3000,seed=2" in out


def test_a_run_that_hangs_is_reported_as_not_finished_with_its_reason(tmp_path, capsys):
    forever = str(0xFFFF_FFFF)  # an outage from a cycle drawn from the seed to the end
    rc, rec = _campaign(tmp_path, "--workers", "0", "--steps", "1", "--kinds", "down-at",
                        "--rates", forever, "--seeds", "1", "--watchdog-cycles", "20000")  # fmt: skip
    out = capsys.readouterr().out
    run = rec["runs"][0]
    at = int(re.search(r"down-at=(\d+)", run["link_faults"]).group(1))
    assert 0 <= at < rec["reference"]["cycles"]
    assert rc == 1 and not run["finished"] and run["weights_equal"] is None
    assert run["reason"].startswith("WatchdogError: watchdog:"), run["reason"]
    assert "delivers nothing" in run["reason"] or "no progress" in run["reason"]
    assert rec["table"][0]["not_finished"] == 1 and rec["table"][0]["weights_differ"] == 0
    assert "FAILED down-at rate 4294967295 seed 1: WatchdogError" in out


def test_a_reference_that_does_not_finish_stops_the_campaign(tmp_path, capsys):
    rc, rec = _campaign(tmp_path, "--workers", "0", "--steps", "1", "--max-cycles", "1000",
                        "--kinds", "drop", "--rates", "600", "--seeds", "1")  # fmt: skip
    assert rc == 1 and rec["runs"] == [] and not rec["ok"]
    assert "cycle budget of 1000 exhausted" in rec["reference"]["reason"]
    assert "reference run did not finish" in capsys.readouterr().err


def test_resume_runs_only_the_new_runs(tmp_path):
    base = ("--workers", "0", "--steps", "1", "--kinds", "frame", "--rates", "6000")
    rc, first = _campaign(tmp_path, *base, "--seeds", "2")
    assert rc == 0 and first["totals"]["runs_run"] == 2
    rc, again = _campaign(tmp_path, *base, "--seeds", "3", "--resume")
    assert rc == 0 and again["totals"]["runs_resumed"] == 2 and again["totals"]["runs_run"] == 1
    assert again["runs"][:2] == first["runs"]
    rc, fresh = _campaign(tmp_path, *base, "--seeds", "1", "--overwrite")
    assert (
        fresh["totals"]["runs_run"] == 1 and len(list((tmp_path / "c" / "points").iterdir())) == 2
    )
