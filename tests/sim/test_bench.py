"""``gradsync bench``: option errors, and the quick run's record (structure, ratios from its numbers).

No speed is asserted; the slow test checks that every ratio in ``--json``
is the quotient of the absolute numbers printed beside it (recomputed here),
and the correctness facts the figures rest on: the main job's RTL and model
results are identical, the RTL's GEMM cycles equal ``gemm_cycles``, the
link's measured transfers equal the model's descriptor timing, and the raw
C++ replay read back every port value the cocotb run read.
"""

from __future__ import annotations

import json
import math

import pytest

from gradsync.cli import main
from gradsync.cmd_bench import FIGURES, parse_only, render
from gradsync.spec.hardware import HardwareConfig
from gradsync.spec.timing import descriptor_cycles, gemm_cycles


@pytest.mark.parametrize("text", ["sim,bogus", "", "arr"])
def test_only_names_the_bad_figure(text):
    with pytest.raises(ValueError, match="--only"):
        parse_only(text)


def test_unknown_figure_exits_2_before_running(capsys, monkeypatch):
    import gradsync.cmd_bench as cb

    monkeypatch.setattr(cb, "sim_figure", lambda *a: pytest.fail("ran a figure"))
    assert main(["bench", "--only", "sim,bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"gradsync bench: --only takes {', '.join(FIGURES)}, not 'bogus'"


def test_only_keeps_the_order_given():
    assert parse_only(" model , sim") == ["model", "sim"]


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)


def _speed_ok(row: dict) -> bool:
    return _close(row["cycles_per_second"], row["cycles"] / row["seconds"])


@pytest.mark.slow
@pytest.mark.rtl
def test_quick_json_record(capsys):
    assert main(["bench", "--quick", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["quick"] is True and out["format_version"] == 1
    assert out["machine"]["cpu"] and out["machine"]["cores"] >= 1
    assert {"python", "cocotb", "verilator", "gradsync"} <= set(out["versions"])
    f = out["figures"]
    assert set(f) == set(FIGURES)

    s = f["sim"]
    a, b, c = s["a_cocotb_main_job"], s["b_cocotb_python_idle"], s["c_raw_cpp"]
    assert all(_speed_ok(r) for r in (a, b, c))
    assert _close(s["a_over_c"], a["cycles_per_second"] / c["cycles_per_second"])
    assert _close(s["b_over_c"], b["cycles_per_second"] / c["cycles_per_second"])
    # (c) replays (b): the same span of cycles (plus calibration and reset), every read matched
    assert c["cycles"] >= b["cycles"] and c["checked_reads"] > 0
    p = s["python_share_of_a"]
    assert _close(p["share"], p["python_seconds"] / p["wall_seconds"]) and 0 < p["share"] < 1
    j = s["main_job"]
    assert j["identical"] and j["rtl_cycles"] == j["model_cycles"] == a["cycles"]
    assert _close(j["rtl_over_model"], j["rtl_seconds"] / j["model_seconds"])

    for name, rows in f["array"].items():
        r = int(name.split("x")[0])
        hw = HardwareConfig(array_rows=r, array_cols=r)
        assert [(x["m"], x["k"], x["n"]) for x in rows] == [
            (32, 64, 16), (64, 64, 32), (64, 32, 10), (256, 256, 256)
        ]  # fmt: skip
        for x in rows:
            assert x["cycles"] == gemm_cycles(x["m"], x["k"], x["n"], hw)  # RTL = formula
            assert _close(x["utilisation"], x["m"] * x["k"] * x["n"] / (r * r * x["cycles"]))

    from gradsync.firmware.experiment import TrainConfig

    hw = TrainConfig().hardware
    sizes = [x["bytes"] for x in f["link"]["transfers"]]
    assert sizes[0] == 256 and sizes[-1] == 64 * 1024
    for x in f["link"]["transfers"]:
        assert _close(x["utilisation"], x["bytes"] / (hw.link_bytes_per_cycle * x["cycles"]))
        assert x["cycles"] == x["descriptors"] * descriptor_cycles(x["chunk"], hw)

    m = f["model"]
    for key in ("nodes_2", "nodes_16"):
        assert _speed_ok(m[key])
        assert _close(m[key]["events_per_second"], m[key]["events"] / m[key]["seconds"])
    assert _close(
        m["ratio_2_over_16_cycles_per_second"],
        m["nodes_2"]["cycles_per_second"] / m["nodes_16"]["cycles_per_second"],
    )
    assert f["builds"] == {"skipped": "--quick"}
    text = render(out)  # the text form prints the same numbers
    assert f"a/c = {s['a_over_c']:.3f}" in text and f"{a['cycles']:,} cycles" in text


def test_cold_build_split_comes_from_the_entrys_own_record(tmp_path, monkeypatch):
    """The cache keeps no intermediate files of a build (``sim.cache.trim_entry``), so the
    builds figure reads the Verilator and C++ seconds the build recorded in its entry (the
    full ``gradsync bench`` crashed on a missing ``Vtop.mk`` before)."""
    from types import SimpleNamespace

    import gradsync.cmd_bench as cb
    import gradsync.sim.build as sb
    import gradsync.sim.rtl_backend as rb
    from gradsync.firmware.experiment import TrainConfig
    from gradsync.sim.cache import trim_entry

    entry = tmp_path / "cluster2-0123"
    (entry / "src").mkdir(parents=True)
    for name in ("gradsync_tb", "Vtop.mk", "Vtop__ALL.a", "build.log"):
        (entry / name).write_bytes(b"x" * 1000)
    (entry / "gradsync_build.json").write_text(
        json.dumps({"build_seconds": 40.0, "verilator_seconds": 9.5, "cxx_seconds": 29.25})
    )
    trim_entry(entry, "gradsync_tb")
    assert not (entry / "Vtop.mk").exists()
    model = SimpleNamespace(
        directory=entry, toplevel="gradsync_tb", build_seconds=40.0, cached=False
    )
    monkeypatch.setattr(rb, "build_cluster", lambda cfg: model)
    monkeypatch.setattr(sb, "to_verilog", lambda component, name: "")
    got = cb._timed_build(TrainConfig())
    assert (got["verilator"], got["cxx_compile"], got["cached"]) == (9.5, 29.25, False)
    assert got["entry_mb"] == pytest.approx(sum(
        f.stat().st_size for f in entry.rglob("*") if f.is_file()) / 1e6)  # fmt: skip
