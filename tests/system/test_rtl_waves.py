"""``gradsync train --waves``: a waveform of the whole cluster lands in the run's ``--out``.

One short RTL run (2 nodes, one step of a small MLP) through the CLI. The
waveform is read back with readers independent of the writer: pyvcd's
tokenizer (an Amaranth dependency) for VCD; for FST the block layout of
GTKWave's format (header block, hierarchy, value changes). Both are checked
against ``results.json``: the trace must span every simulated cycle.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

pytest.importorskip("gradsync.hw.cluster")

from gradsync.cli import main  # noqa: E402
from gradsync.sim.rtl_backend import CLOCK_PERIOD_NS, default_waves  # noqa: E402

#: The run's arguments: the smallest sensible training run (the build is one per node count).
RUN = ["--nodes", "2", "--steps", "1", "--global-batch", "8", "--layers", "64,16,10"]

#: Signals of the top (the wrapper's ports): the generated clock and each node's interrupt.
TOP_SIGNALS = ("clk", "n0_irq", "n1_irq")

_UNIT_PS = {"s": 10**12, "ms": 10**9, "us": 10**6, "ns": 10**3, "ps": 1, "fs": 10**-3}


def read_vcd(path: Path, names: tuple[str, ...]) -> tuple[dict, float, int]:
    """Changes of the top-level signals ``names``, the timescale in ps, and the last time.

    A whitespace tokenizer over IEEE 1364's VCD grammar (pyvcd's reader rejects
    Verilator's ``$rootio`` scope name).
    """
    with open(path) as stream:
        header = []
        for line in stream:
            header.append(line)
            if "$enddefinitions" in line:
                break
        words = " ".join(header).split()
        timescale_ps, depth, top_depth, codes = 1.0, 0, None, {}
        for i, word in enumerate(words):
            if word == "$timescale":
                spec = "".join(words[i + 1 : words.index("$end", i)])
                number = spec.rstrip("munpfs")
                timescale_ps = int(number) * _UNIT_PS[spec[len(number) :]]
            elif word == "$scope":
                depth += 1
                if words[i + 2] == "gradsync_tb":
                    top_depth = depth
            elif word == "$upscope":
                depth -= 1
            elif word == "$var" and depth == top_depth and words[i + 4] in names:
                codes[words[i + 3]] = words[i + 4]  # $var type size id_code reference
        changes: dict[str, list] = {name: [] for name in codes.values()}
        now, pending_vector = 0, False
        for line in stream:
            for word in line.split():
                if pending_vector:  # the id code after a b.../r... value
                    pending_vector = False
                elif word[0] == "#":
                    now = int(word[1:])
                elif word[0] in "bBrR":
                    pending_vector = True
                elif word[0] in "01xXzZ" and word[1:] in codes:
                    changes[codes[word[1:]]].append((now, word[0]))
    return changes, timescale_ps, now


def read_fst_blocks(path: Path) -> tuple[dict, list[int]]:
    """The FST header block's fields and the type of every block (fstapi.c's layout)."""
    data = path.read_bytes()
    assert data[0] == 0, "an FST file starts with its header block (FST_BL_HDR = 0)"
    (hdr_len,) = struct.unpack(">Q", data[1:9])
    assert hdr_len == 329
    start, end = struct.unpack(">QQ", data[9:25])
    (endian_test,) = struct.unpack("=d", data[25:33])  # written in the writer's byte order
    _mem, scopes, variables, _maxidx, vc_sections = struct.unpack(">5Q", data[33:73])
    (timescale_exp,) = struct.unpack(">b", data[73:74])
    header = {
        "start": start,
        "end": end,
        "e": endian_test,
        "scopes": scopes,
        "vars": variables,
        "vc_sections": vc_sections,
        "timescale_ps": 10.0 ** (timescale_exp + 12),
    }
    types, pos = [], 0
    while pos < len(data):
        types.append(data[pos])
        (length,) = struct.unpack(">Q", data[pos + 1 : pos + 9])
        pos += 1 + length
    assert pos == len(data), "FST blocks do not tile the file"
    return header, types


@pytest.mark.rtl
@pytest.mark.slow
def test_train_waves_lands_in_out_dir_and_covers_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", *RUN, "--waves", "--out", str(out), "--quiet", "--no-progress"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err

    fmt = default_waves()
    wave = out / f"waves.{fmt}"
    lines = [line for line in printed.out.splitlines() if "waveform" in line]
    assert len(lines) == 1 and lines[0].startswith(f"wrote {fmt.upper()} waveform {wave} ")
    assert wave.is_file() and wave.stat().st_size > 0
    assert not list(out.glob("*.vcd" if fmt == "fst" else "*.fst"))

    cycles = json.loads((out / "results.json").read_text())["totals"]["cycles"]
    run_ps = cycles * CLOCK_PERIOD_NS * 1000

    if fmt == "vcd":
        head = wave.read_bytes()[: 16 << 20]  # the header lists every traced signal
        assert b"$enddefinitions" in head
        changes, timescale_ps, last_time = read_vcd(wave, TOP_SIGNALS)
        assert set(changes) == set(TOP_SIGNALS), f"top-level signals found: {sorted(changes)}"
        rising = sum(1 for _, v in changes["clk"] if v == "1")
        assert rising >= cycles, (rising, cycles)
        assert last_time * timescale_ps >= run_ps
        for irq in ("n0_irq", "n1_irq"):  # the firmware awaits every engine's interrupt
            values = [v for _, v in changes[irq]]
            assert "1" in values and "0" in values[1:], f"{irq} never toggled: {values[:5]}"
    else:
        header, types = read_fst_blocks(wave)
        assert math.isclose(header["e"], math.e)
        assert header["vars"] >= len(TOP_SIGNALS) and header["scopes"] >= 2
        assert header["end"] * header["timescale_ps"] >= run_ps
        assert {4, 6, 7} & set(types), f"no hierarchy block in {sorted(set(types))}"
        assert {1, 5, 8} & set(types), f"no value-change block in {sorted(set(types))}"


def test_waves_refuses_model_backend_and_missing_out(capsys):
    assert main(["train", *RUN, "--backend", "model", "--waves", "--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--backend rtl" in err
    assert main(["train", *RUN, "--waves"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--out DIR" in err


@pytest.mark.rtl
def test_waves_build_version_keys_only_waves_builds(monkeypatch):
    from gradsync.sim import build as simbuild
    from gradsync.sim.build import BuildOptions, build_key

    verilog = "module t(clk); input clk; endmodule\n"
    before = {w: build_key(verilog, "t", BuildOptions(waves=w)) for w in (None, "vcd")}
    monkeypatch.setattr(simbuild, "WAVES_BUILD_VERSION", simbuild.WAVES_BUILD_VERSION + 1)
    assert build_key(verilog, "t", BuildOptions()) == before[None]  # cached models stay valid
    assert build_key(verilog, "t", BuildOptions(waves="vcd")) != before["vcd"]
