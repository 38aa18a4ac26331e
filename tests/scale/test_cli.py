"""``gradsync scale``: grid expansion, outputs equal to simulate() called directly, bad input.

Expected numbers come from :func:`gradsync.scale.sim.simulate` on configurations
built here by hand from ``gradsync.scale.config``, never from the command's own
code path.
"""

from __future__ import annotations

import csv
import json
import os

import matplotlib.image
import pytest

from gradsync import workloads
from gradsync.cli import build_parser, main
from gradsync.cmd_scale import grid
from gradsync.firmware.schedules import load_schedule
from gradsync.scale import sim
from gradsync.scale.config import ScaleConfig, ScaleLink
from gradsync.spec.hardware import HardwareConfig

GRID = [
    "scale", "--workload", "resnet50", "--nodes", "4,8", "--link-gbps", "100,400",
    "--schedule", "sequential,priority", "--chunk-bytes", "1048576",
]  # fmt: skip
#: the grid above in table order: (nodes, Gb/s, schedule)
ORDER = [(n, g, s) for n in (4, 8) for g in (100, 400) for s in ("sequential", "priority")]


def direct(nodes: int, gbps: float, schedule: str, chunk: int = 1048576, trace: bool = False):
    """simulate() of a configuration written out from the documented defaults."""
    hw = HardwareConfig(array_rows=128, array_cols=128, vector_lanes=128, max_payload_bytes=4096)
    cfg = ScaleConfig(
        workload=workloads.get("resnet50", hardware=hw),
        nodes=nodes,
        schedule=load_schedule(schedule),
        chunk_bytes=chunk,
        link=ScaleLink(gbps / 8, 1000, 4096),  # Gb/s -> bytes per ns = per cycle at 1 GHz
        hardware=hw,
        trace=trace,
    )
    return cfg, sim.simulate(cfg)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "run"
    code = main([*GRID, "--out", str(out), "--trace-point", "3"])
    assert code == 0
    return out


def test_comma_lists_expand_to_the_product_in_table_order():
    args = build_parser().parse_args([*GRID, "--nodes", "4,8,4", "--steps", "3"])
    points = grid(args)
    assert [(p["nodes"], p["link_gbps"], p["schedule"]) for p in points] == [
        (str(n), str(g), s) for n, g, s in ORDER
    ]
    assert all(p["steps"] == "3" and p["chunk_bytes"] == "1048576" for p in points)
    assert "clock_ghz" not in points[0]  # defaults are filled in by validate, not here


def test_csv_and_json_equal_simulate_called_directly(grid_run):
    with (grid_run / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    obj = json.loads((grid_run / "results.json").read_text())
    assert obj["format_version"] == 1 and len(obj["points"]) == len(rows) == len(ORDER)
    sequential = {}
    for (nodes, gbps, schedule), row, pt in zip(ORDER, rows, obj["points"], strict=True):
        cfg, res = direct(nodes, gbps, schedule)
        assert (pt["workload"], pt["nodes"], pt["link_gbps"], pt["schedule"]) == (
            "resnet50",
            nodes,
            gbps,
            schedule,
        )
        assert pt["topology"] == "ring" and pt["chunk_bytes"] == 1048576
        assert pt["link_bytes_per_second"] == gbps * 1e9 / 8
        for name in ("step", "layer1_ready", "exposed_comm"):
            cycles = getattr(res, f"{name}_cycles")
            assert pt[f"{name}_cycles"] == pytest.approx(cycles, rel=1e-12)
            assert pt[f"{name}_seconds"] == pytest.approx(cycles / 1e9, rel=1e-12)
            assert float(row[f"{name}_seconds"]) == pytest.approx(cycles / 1e9, rel=1e-12)
        assert [layer["exposed_comm_cycles"] for layer in pt["layers"]] == pytest.approx(
            res.layer_exposed_cycles
        )
        assert [layer["name"] for layer in pt["layers"]] == [la.name for la in cfg.workload.layers]
        assert pt["link_utilisation"] == pytest.approx(res.link_utilisation)
        if schedule == "sequential":
            sequential[nodes, gbps] = res.step_cycles
        expected = sequential[nodes, gbps] / res.step_cycles
        assert pt["speedup_vs_sequential"] == pytest.approx(expected)
        assert float(row["speedup_vs_sequential"]) == pytest.approx(expected)
    assert set(rows[0]) == {
        k for k, v in obj["points"][0].items() if not isinstance(v, dict | list)
    }


def test_table_shows_milliseconds_and_speedups(capsys):
    assert main(GRID[:5] + ["--link-gbps", "100", "--schedule", "sequential,priority",
                            "--chunk-bytes", "1048576"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    seq_rows = [line for line in lines if " sequential " in line]
    pri_rows = [line for line in lines if " priority " in line]
    assert len(seq_rows) == len(pri_rows) == 2
    _, seq = direct(8, 100, "sequential")
    _, pri = direct(8, 100, "priority")
    assert f"{seq.step_cycles / 1e6:.3f}" in seq_rows[1] and "1.00x" in seq_rows[1]
    assert f"{pri.step_cycles / 1e6:.3f}" in pri_rows[1]
    assert f"{seq.step_cycles / pri.step_cycles:.2f}x" in pri_rows[1]


def test_no_sequential_in_the_grid_means_no_speedup(capsys):
    code = main(["scale", "--workload", "resnet50", "--nodes", "4", "--link-gbps", "100",
                 "--schedule", "priority", "--chunk-bytes", "1048576", "--json"])  # fmt: skip
    assert code == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["points"][0]["speedup_vs_sequential"] is None


def test_json_on_stdout_is_results_json(grid_run, capsys):
    code = main([*GRID, "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((grid_run / "results.json").read_text())
    for a, b in zip(printed["points"], written["points"], strict=True):
        a.pop("wall_seconds"), b.pop("wall_seconds")
        assert a == b


def test_trace_has_one_named_track_per_span_track(grid_run):
    trace = json.loads((grid_run / "trace.json").read_text())
    nodes, gbps, schedule = ORDER[3]
    _, res = direct(nodes, gbps, schedule, trace=True)
    events = trace["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert all(isinstance(t, int) for t in names)
    assert sorted(names.values()) == sorted({s.track for s in res.spans})
    spans = [e for e in events if e["ph"] == "X"]
    assert len(spans) == len(res.spans) > 0
    by_track: dict[str, list] = {}
    for e in spans:
        by_track.setdefault(names[e["tid"]], []).extend((e["ts"], e["dur"]))
    for track in names.values():
        # ts/dur in microseconds of simulated time: cycles / 1e3 at 1 GHz
        expected = sorted(
            (s.start / 1e3, (s.end - s.start) / 1e3) for s in res.spans if s.track == track
        )
        got = sorted(zip(by_track[track][::2], by_track[track][1::2], strict=True))
        assert [x for pair in got for x in pair] == pytest.approx(
            [x for pair in expected for x in pair]
        )
    assert trace["otherData"]["config"]["schedule"] == schedule


def test_speedup_plot_written_and_chunk_plot_only_when_chunk_varies(grid_run, tmp_path):
    image = matplotlib.image.imread(grid_run / "speedup_vs_bandwidth.png")
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert not (grid_run / "step_vs_chunk.png").exists()
    out = tmp_path / "chunks"
    code = main(["scale", "--workload", "resnet50", "--nodes", "8", "--link-gbps", "100",
                 "--schedule", "fifo", "--chunk-bytes", "1048576,2097152", "--out", str(out)])  # fmt: skip
    assert code == 0
    assert matplotlib.image.imread(out / "step_vs_chunk.png").shape[0] > 200
    assert not (out / "speedup_vs_bandwidth.png").exists()  # no sequential: no speed-up


def test_progress_bar_only_on_larger_grids(capsys):
    assert main([*GRID[:-4], "--schedule", "priority", "--chunk-bytes", "1048576"]) == 0
    assert "point" not in capsys.readouterr().err  # 4 points: no bar
    assert main([*GRID[:5], "--link-gbps", "100,200,400", "--schedule", "sequential,fifo",
                 "--chunk-bytes", "1048576"]) == 0  # fmt: skip
    assert "12/12" in capsys.readouterr().err


BASE = ["scale", "--workload", "resnet50", "--nodes", "8", "--link-gbps", "100"]
BAD = [
    (["--workload", "resnet5O"], "--workload resnet5O is neither a built-in"),
    (["--topology", "hierarchical", "--per-box", "3"], "--per-box 3 does not divide --nodes 8"),
    (["--link-gbps", "0"], "--link-gbps 0: must be > 0"),
    (["--link-gbps", "-400"], "--link-gbps -400: must be > 0"),
    (["--chunk-bytes", "1073741824"], "--chunk-bytes 1073741824: is larger than the largest"),
    (["--straggler", "2x3"], "--straggler 2x3: must be K:F"),
    (["--schedule", "priority,nope"], "--schedule nope"),
    # the bad value is in the LAST point of the grid: nothing may have run before it
    (["--nodes", "8,12", "--topology", "hierarchical"], "--per-box 8 does not divide --nodes 12"),
    (["--trace-point", "1"], "--trace-point 1 is not a point of this grid (0 to 0)"),
    (["--format", "bf16,fp16"], "--format fp16: must be bf16 or fixed point qI.F"),
    (["--grad-format", "bf16"], "--grad-format bf16: needs --format bf16, not q5.10"),
    (["--format", "bf16", "--grad-format", "int8"], "--grad-format int8: must be fp32 or bf16"),
    (["--format", "bf16", "--element-bytes", "2"], "--element-bytes 2: disagrees with bf16"),
]


def test_format_and_grad_format_in_rows_and_table(tmp_path, capsys):
    """One format per point; bf16 exchange halves the gradient bytes on the link."""
    out = tmp_path / "fmt"
    code = main(["scale", "--workload", "mlp", "--nodes", "4", "--link-gbps", "100",
                 "--format", "q5.10,bf16", "--chunk-bytes", "256", "--out", str(out)])  # fmt: skip
    assert code == 0
    head = capsys.readouterr().out.splitlines()[0]
    assert "format" in head and "element_bytes" not in head
    more = main(["scale", "--workload", "mlp", "--nodes", "4", "--link-gbps", "100", "--format",
                 "bf16", "--grad-format", "bf16", "--chunk-bytes", "256", "--json"])  # fmt: skip
    assert more == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    bf16 = json.loads(capsys.readouterr().out)["points"][0]
    got = [(r["format"], r["grad_format"], r["element_bytes"]) for r in rows]
    assert got == [("q5.10", "", "2"), ("bf16", "fp32", "4")]
    assert (bf16["format"], bf16["grad_format"], bf16["config"]["grad_format"]) == ("bf16",) * 3
    params = 64 * 32 + 32 * 32 + 32 * 10  # the MLP's weights
    assert [int(r["gradient_bytes"]) for r in rows] == [2 * params, 4 * params]
    assert bf16["gradient_bytes"] == 2 * params


@pytest.fixture
def no_simulation(monkeypatch):
    calls = []
    monkeypatch.setattr(sim, "simulate", lambda cfg: calls.append(cfg))
    return calls


@pytest.mark.parametrize("extra, message", BAD, ids=[m for _, m in BAD])
def test_bad_input_exit_2_one_sentence_nothing_written(
    extra, message, tmp_path, capsys, no_simulation
):
    out = tmp_path / "new"
    assert main([*BASE, *extra, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gradsync scale: ") and message in err[0]
    assert not out.exists()
    assert no_simulation == []


def test_bad_workload_file_and_existing_out_untouched(tmp_path, capsys, no_simulation):
    out = tmp_path / "old"
    out.mkdir()
    (out / "results.json").write_text("earlier run\n")
    os.utime(out / "results.json", (1_000_000, 1_000_000))
    bad = tmp_path / "net.txt"
    bad.write_text("DATA\nthree\n")
    assert main([*BASE, "--workload", f"resnet50,{bad}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--workload {bad}" in err and "line 2" in err
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    assert (out / "results.json").read_text() == "earlier run\n"
    assert (out / "results.json").stat().st_mtime == 1_000_000
    assert no_simulation == []


def test_out_that_is_a_file_is_refused(tmp_path, capsys, no_simulation):
    out = tmp_path / "file"
    out.write_text("keep\n")
    assert main([*BASE, "--out", str(out)]) == 2
    assert "--out" in capsys.readouterr().err and out.read_text() == "keep\n"
    assert no_simulation == []


def test_docs_list_every_option_with_its_default():
    from pathlib import Path

    from gradsync.scale.point import OPTIONS

    docs = (Path(__file__).resolve().parents[2] / "docs" / "scale.md").read_text()
    rows = {
        line.split("|")[1].strip(): line for line in docs.splitlines() if line.startswith("| `--")
    }
    for key, opt in OPTIONS.items():
        row = rows[f"`--{key.replace('_', '-')}`"]
        if opt.default is not None:
            assert (
                f"{opt.default:g}" in row
                if isinstance(opt.default, float)
                else str(opt.default) in row
            )


def test_no_chunk_plot_when_only_a_schedule_changes_the_chunk(tmp_path):
    out = tmp_path / "p3"
    code = main(["scale", "--workload", "resnet50", "--nodes", "8", "--link-gbps", "400",
                 "--schedule", "sequential,p3", "--chunk-bytes", "1048576", "--out", str(out)])  # fmt: skip
    assert code == 0
    rows = json.loads((out / "results.json").read_text())["points"]
    assert rows[0]["chunk_bytes"] != rows[1]["chunk_bytes"]  # p3 cuts slices of its own size
    assert not (out / "step_vs_chunk.png").exists()


def test_hierarchical_trace_has_a_track_per_link(tmp_path):
    out = tmp_path / "h"
    code = main(["scale", "--workload", "resnet50", "--nodes", "16", "--link-gbps", "100",
                 "--topology", "hierarchical", "--per-box", "4", "--schedule", "priority",
                 "--chunk-bytes", "1048576", "--out", str(out)])  # fmt: skip
    assert code == 0
    events = json.loads((out / "trace.json").read_text())["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    cats = {names[e["tid"]]: e["cat"] for e in events if e["ph"] == "X"}
    assert {"dma.inter", "dma.intra"} <= set(names.values())
    assert cats["dma.inter"] == cats["dma.intra"] == "dma" and cats["compute"] == "compute"
    point = json.loads((out / "results.json").read_text())["points"][0]
    assert set(point["link_utilisation"]) == {"inter", "intra"}
    assert point["link_utilisation_inter"] == point["link_utilisation"]["inter"]
