"""``gradsync workloads list`` and ``show``: tables, the JSON document and every bad-input path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gradsync.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "workloads"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["workloads", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_prints_every_builtin_with_its_totals(capsys):
    code, out, err = run(capsys, "list")
    assert code == 0 and err == ""
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert list(rows) == ["resnet50", "vgg19", "bert-base", "gpt2", "mlp"]
    assert rows["resnet50"][2] == "25,557,032" and rows["resnet50"][3] == "51.11"
    # the MLP is gradsync train's default, 64-32-32-10: 64*32 + 32*32 + 32*10 weights
    assert rows["gpt2"][2] == "124,439,808" and rows["mlp"][2] == "3,392"


def test_show_table_lists_every_layer_and_the_total(capsys):
    code, out, _ = run(capsys, "show", "resnet50", "--batch", "4", "--array", "64x32")
    assert code == 0
    lines = out.splitlines()
    assert "batch 4" in lines[0] and "64x32 array" in lines[0]
    conv1 = next(line for line in lines if line.startswith("conv1 "))
    # M = 4 * 112 * 112 = 50176
    assert "50176x147x64" in conv1 and "9,408" in conv1 and "18,816" in conv1
    assert lines[-1].split()[:3] == ["total", "109", "25,557,032"]


def test_show_json_is_the_documented_document(capsys):
    code, out, _ = run(capsys, "show", "mlp", "--json", "--element-bytes", "4")
    assert code == 0
    doc = json.loads(out)
    assert doc["version"] == 1 and doc["name"] == "mlp" and doc["source"] == "builtin"
    # gradsync train's default: global batch 16 on 2 nodes, layers 64-32-32-10
    assert doc["element_bytes"] == 4 and doc["batch"] == 8
    assert doc["hardware"] == {"array_rows": 8, "array_cols": 8, "vector_lanes": 8}
    fc1, fc2, fc3 = doc["layers"]
    assert fc1["grad_bytes"] == 64 * 32 * 4 and fc1["ig"] == []
    assert fc2["fwd_gemms"] == [{"m": 8, "k": 32, "n": 32, "count": 1}]
    assert fc3["fwd_gemms"] == [{"m": 8, "k": 32, "n": 10, "count": 1}]
    assert doc["totals"]["params"] == 3392
    assert doc["totals"]["wg_cycles"] == fc1["wg_cycles"] + fc2["wg_cycles"] + fc3["wg_cycles"]


def test_show_file_and_seq_len(capsys):
    code, out, _ = run(capsys, "show", str(EXAMPLES / "tiny_convnet.txt"), "--json")
    assert code == 0 and json.loads(out)["totals"]["grad_bytes"] == 377_216
    code, out, _ = run(capsys, "show", "bert-base", "--seq-len", "64", "--json")
    scores = next(x for x in json.loads(out)["layers"] if x["kind"] == "attention")
    assert scores["fwd_gemms"][0] == {"m": 64, "k": 64, "n": 64, "count": 32 * 12}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["show", "resnet"], "unknown workload 'resnet'; the built-in ones are resnet50, vgg19"),
        (
            ["show", "vgg19", "--array", "128"],
            "--array must be ROWSxCOLS of positive whole numbers (128x128), not '128'",
        ),
        (["show", "vgg19", "--array", "0x8"], "--array must be ROWSxCOLS"),
        (["list", "--array", "axb"], "--array must be ROWSxCOLS"),
        (["show", "gpt2", "--batch", "0"], "--batch must be a positive whole number, not 0"),
        (["show", "gpt2", "--batch", "-3"], "--batch must be a positive whole number, not -3"),
        (
            ["show", "gpt2", "--seq-len", "4096"],
            "seq_len of gpt2 must be between 1 and 1024, not 4096",
        ),
        (["show", "vgg19", "--seq-len", "8"], "seq_len applies to bert-base and gpt2, not vgg19"),
        (
            ["show", "no/such/file.txt"],
            "cannot read workload file 'no/such/file.txt': No such file",
        ),
        (
            ["show", str(EXAMPLES / "tiny_convnet.txt"), "--batch", "2"],
            "--batch does not apply to the workload file",
        ),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("gradsync workloads: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_malformed_file_through_the_command(capsys, tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("DATA\n1\nconv -1 10 NONE 0 0 NONE 0 10 ALLREDUCE 6 x\n")
    code, out, err = run(capsys, "show", str(p))
    assert code == 2 and out == ""
    assert f"{p}, line 3, column 12: the update delay must be a whole number, not 'x'" in err


def test_element_bytes_outside_2_and_4_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["workloads", "show", "mlp", "--element-bytes", "3"])
    assert exc.value.code == 2
    assert "--element-bytes: invalid choice: 3" in capsys.readouterr().err
