"""ASTRA-sim text and CSV workloads: reading, writing back, and every malformed-file message."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradsync.workloads import WorkloadError, builtin, get, load
from gradsync.workloads.importers import COLUMNS, to_astra_text, to_csv

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "workloads"
HEADER = ",".join(COLUMNS)
GOOD = "conv\t-1\t100\tNONE\t0\t0\tNONE\t0\t120\tALLREDUCE\t64\t7"


def write(tmp_path, text: str, name: str = "w.txt") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_example_text_file():
    w = load(EXAMPLES / "tiny_convnet.txt")
    assert [x.name for x in w.layers][:2] == ["stem_conv", "block1_conv"]
    stem, pool = w.layers[0], w.layers[3]
    assert (stem.fwd, stem.ig, stem.wg, stem.update) == ((52000,), (), (61000,), (40,))
    assert (stem.grad_bytes, stem.params) == (3456, 1728)
    assert (pool.grad_bytes, pool.params, pool.wg, pool.update) == (0, 0, (), ())
    assert w.source.endswith("tiny_convnet.txt") and w.batch == 0 and w.hardware is None


def test_example_csv_file_with_four_byte_elements():
    w = load(EXAMPLES / "tiny_transformer.csv", element_bytes=4)
    emb = w.layers[0]
    assert (emb.name, emb.grad_bytes, emb.params, emb.ig) == (
        "token_embedding",
        1048576,
        262144,
        (),
    )
    assert w.params == (1048576 + 393216 + 131072 + 524288 + 524288) // 4


def test_astra_sim_layout_tabs_trailing_fields_and_no_final_newline(tmp_path):
    """What ASTRA-sim's own files contain: tab-padded header lines, no newline at the end."""
    text = "DATA\t\t\t\t\n2\t\t\t\t\n" + GOOD + "\n" + GOOD.replace("conv", "fc")
    w = load(write(tmp_path, text))
    assert [x.name for x in w.layers] == ["conv", "fc"]
    assert w.layers[1].wg == (120,) and w.grad_bytes == 128


@pytest.mark.parametrize("name", ["mlp", "resnet50"])
def test_round_trip_through_text_and_csv(tmp_path, name):
    w = builtin(name, batch=2) if name != "mlp" else builtin("mlp")
    for text, fname in ((to_astra_text(w), "w.txt"), (to_csv(w), "w.csv")):
        back = load(write(tmp_path, text, fname))
        assert [x.name for x in back.layers] == [x.name for x in w.layers]
        for a, b in zip(back.layers, w.layers, strict=True):
            assert (a.fwd_cycles, a.ig_cycles, a.wg_cycles) == (
                b.fwd_cycles,
                b.ig_cycles,
                b.wg_cycles,
            )
            assert (a.grad_bytes, a.params) == (b.grad_bytes, b.params)
            assert a.update_cycles == (b.update_cycles if b.grad_bytes else 0)
        assert back.totals["fwd_cycles"] == w.totals["fwd_cycles"]


def test_csv_columns_in_any_order(tmp_path):
    cols = list(COLUMNS)
    values = dict(zip(COLUMNS, GOOD.split("\t"), strict=True))
    cols.reverse()
    text = ",".join(cols) + "\n" + ",".join(values[c] for c in cols) + "\n"
    w = load(write(tmp_path, text, "r.csv"))
    assert (w.layers[0].fwd, w.layers[0].wg, w.layers[0].grad_bytes) == ((100,), (120,), 64)


TEXT_ERRORS = [
    ("", 1, 1, "expected the parallelism keyword DATA, found nothing"),
    (
        "HYBRID_TRANSFORMER\tmodel_parallel_NPU_group: 4\n1\n" + GOOD,
        1,
        1,
        "gradsync models data parallelism only (DATA), not HYBRID_TRANSFORMER",
    ),
    ("DATA\nfive\n" + GOOD, 2, 1, "the layer count must be a whole number, not 'five'"),
    ("DATA\n0\n", 2, 1, "the layer count must be >= 1, not 0"),
    ("DATA\n1 2\n" + GOOD, 2, 2, "unexpected '2' after the layer count"),
    ("DATA\n2\n" + GOOD, 2, 1, "the file declares 2 layers but has 1 layer lines"),
    ("DATA\n1\n" + GOOD + "\n" + GOOD, 4, 1, "more layer lines than the 1 the count"),
    ("DATA\n1\nconv -1 100 NONE 0", 3, 6, "a layer line has 12 fields"),
    ("DATA\n1\n" + GOOD + "\t9", 3, 13, "this one has 13"),
    (
        "DATA\n1\n" + GOOD.replace("\t100\t", "\t1.5\t"),
        3,
        3,
        "fwd compute cycles must be a whole number, not '1.5'",
    ),
    (
        "DATA\n1\n" + GOOD.replace("\t120\t", "\t-4\t"),
        3,
        9,
        "wg compute cycles must be >= 0, not -4",
    ),
    (
        "DATA\n1\n" + GOOD.replace("ALLREDUCE", "ALLGATHER"),
        3,
        10,
        "communication type 'ALLGATHER' is not modelled",
    ),
    (
        "DATA\n1\n" + GOOD.replace("\t100\tNONE", "\t100\tALLREDUCE"),
        3,
        4,
        "a fwd all-reduce is model parallelism",
    ),
    ("DATA\n1\n" + GOOD.replace("\t0\t120", "\t8\t120"), 3, 8, "communication NONE with 8 bytes"),
    (
        "DATA\n1\n" + GOOD.replace("\t64\t", "\t63\t"),
        3,
        11,
        "63 gradient bytes are not a whole number of 2-byte elements",
    ),
    ("DATA\n1\n" + GOOD.replace("\t7", "\tsoon"), 3, 12, "the update delay must be a whole number"),
]


@pytest.mark.parametrize("text, line, column, what", TEXT_ERRORS)
def test_malformed_text_names_line_and_column(tmp_path, text, line, column, what):
    p = write(tmp_path, text)
    with pytest.raises(WorkloadError) as exc:
        load(p)
    assert str(exc.value).startswith(f"{p}, line {line}, column {column}: ")
    assert what in str(exc.value)


CSV_ERRORS = [
    ("", 1, 1, "expected a header naming the columns"),
    (HEADER.replace("wg_cycles", "wg") + "\n", 1, 9, "unknown column 'wg'"),
    (HEADER + ",name\n", 1, 13, "column 'name' appears twice"),
    (HEADER.replace(",update_cycles", "") + "\n", 1, 12, "missing column 'update_cycles'"),
    (HEADER + "\n", 2, 1, "the file has a header but no layer rows"),
    (HEADER + "\na,-1,1,NONE,0\n", 2, 6, "the header has 12 columns, this row 5"),
    (
        HEADER
        + "\n"
        + GOOD.replace("\t", ",")
        + "\n"
        + GOOD.replace("\t", ",").replace("NONE", "ALLTOALL", 1),
        3,
        4,
        "communication type 'ALLTOALL' is not modelled",
    ),
    (HEADER + "\n,-1,1,NONE,0,0,NONE,0,0,NONE,0,0\n", 2, 1, "the layer name is empty"),
]


@pytest.mark.parametrize("text, line, column, what", CSV_ERRORS)
def test_malformed_csv_names_line_and_column(tmp_path, text, line, column, what):
    p = write(tmp_path, text, "w.csv")
    with pytest.raises(WorkloadError) as exc:
        load(p)
    assert str(exc.value).startswith(f"{p}, line {line}, column {column}: ")
    assert what in str(exc.value)


def test_unreadable_file_and_fixed_options(tmp_path):
    with pytest.raises(WorkloadError, match=r"cannot read workload file '.*missing.txt': No such"):
        load(tmp_path / "missing.txt")
    with pytest.raises(WorkloadError, match=r"cannot read workload file '.*': Is a directory"):
        load(tmp_path)
    p = write(tmp_path, "DATA\n1\n" + GOOD)
    with pytest.raises(WorkloadError, match="batch cannot be changed for the imported workload"):
        get(str(p), batch=4)
    assert get(str(p)).layers[0].name == "conv"
