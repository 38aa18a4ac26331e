"""Workloads the user brings: ASTRA-sim's text format, or a CSV of the same columns.

ASTRA-sim text (``examples/text_converter/text_workloads/README.md`` of
ASTRA-sim): line 1 the parallelism (``DATA``; anything after it on the line is
ignored), line 2 the layer count, then one whitespace-separated line per layer
with the twelve :data:`COLUMNS`.  The CSV form has a header line naming those
columns (any order) and one row per layer.  Cycles and bytes are whole
numbers; compute times are device cycles.  ``docs/workloads.md`` has examples.

gradsync models data parallelism: the weight gradient's ``ALLREDUCE`` is the
exchange, forward and input-gradient communication must be ``NONE``, and
a layer's parameters are its all-reduce bytes over the element size.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from gradsync.spec.formats import DEFAULT_FORMAT
from gradsync.workloads.workload import Layer, Workload, WorkloadError

#: The per-layer columns, in ASTRA-sim's order (also the CSV header names).
COLUMNS = (
    "name",
    "reserved",
    "fwd_cycles",
    "fwd_comm_type",
    "fwd_comm_bytes",
    "ig_cycles",
    "ig_comm_type",
    "ig_comm_bytes",
    "wg_cycles",
    "wg_comm_type",
    "wg_comm_bytes",
    "update_cycles",
)
#: Parallelism keywords of ASTRA-sim's first line that gradsync does not model.
OTHER_PARALLELISM = (
    "MODEL",
    "HYBRID_DATA_MODEL",
    "HYBRID_MODEL_DATA",
    "HYBRID_TRANSFORMER",
    "HYBRID_DLRM",
    "HYBRID_CUSTOMIZED",
)


class _Where:
    """A file and line, to name in error messages."""

    def __init__(self, path: str, line: int) -> None:
        self.path, self.line = path, line

    def error(self, column: int, what: str) -> WorkloadError:
        return WorkloadError(f"{self.path}, line {self.line}, column {column}: {what}")


def _whole(text: str, at: _Where, column: int, what: str, minimum: int = 0) -> int:
    try:
        value = int(text)
    except ValueError:
        raise at.error(column, f"{what} must be a whole number, not {text!r}") from None
    if value < minimum:
        raise at.error(column, f"{what} must be >= {minimum}, not {value}")
    return value


def _layer(values: list[str], cols: list[int], at: _Where, element_bytes: int) -> Layer:
    """One layer from its twelve values (in :data:`COLUMNS` order) at columns ``cols``."""
    v = dict(zip(COLUMNS, values, strict=True))
    c = dict(zip(COLUMNS, cols, strict=True))
    if not v["name"]:
        raise at.error(c["name"], "the layer name is empty")
    _whole(v["reserved"], at, c["reserved"], "the reserved field", minimum=-(2**63))
    cycles, comm_bytes = {}, {}
    for p in ("fwd", "ig", "wg"):
        cycles[p] = _whole(v[f"{p}_cycles"], at, c[f"{p}_cycles"], f"{p} compute cycles")
        kind = v[f"{p}_comm_type"].upper()
        nbytes = _whole(v[f"{p}_comm_bytes"], at, c[f"{p}_comm_bytes"], f"{p} comm bytes")
        comm_bytes[p] = nbytes
        where = c[f"{p}_comm_type"]
        if kind not in ("NONE", "ALLREDUCE"):
            raise at.error(
                where, f"communication type {v[f'{p}_comm_type']!r} is not modelled "
                "(gradsync exchanges weight gradients by all-reduce: NONE or ALLREDUCE)",
            )  # fmt: skip
        if kind == "ALLREDUCE" and p != "wg":
            raise at.error(
                where, f"a {p} all-reduce is model parallelism, which gradsync does not model "
                "(only the weight gradient is all-reduced; use NONE)",
            )  # fmt: skip
        if kind == "NONE" and nbytes:
            raise at.error(c[f"{p}_comm_bytes"], f"communication NONE with {nbytes} bytes")
    grad_bytes = comm_bytes["wg"]
    if grad_bytes % element_bytes:
        raise at.error(
            c["wg_comm_bytes"],
            f"{grad_bytes} gradient bytes are not a whole number of {element_bytes}-byte elements",
        )
    update = _whole(v["update_cycles"], at, c["update_cycles"], "the update delay")
    return Layer(
        name=v["name"],
        kind="imported",
        params=grad_bytes // element_bytes,
        grad_bytes=grad_bytes,
        fwd=(cycles["fwd"],) if cycles["fwd"] else (),
        ig=(cycles["ig"],) if cycles["ig"] else (),
        wg=(cycles["wg"],) if cycles["wg"] else (),
        update=(update,) if update and grad_bytes else (),
    )


def _fields(line: str) -> tuple[list[str], list[int]]:
    """Whitespace-separated fields of a line and their 1-based field numbers."""
    fields = line.split()
    return fields, list(range(1, len(fields) + 1))


def parse_astra_text(
    text: str, path: str, element_bytes: int = DEFAULT_FORMAT.grad_bytes
) -> tuple[Layer, ...]:
    """Layers of an ASTRA-sim text workload; :class:`WorkloadError` names line and column."""
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    if not head or head[0].upper() != "DATA":
        at = _Where(path, 1)
        if head and head[0].upper() in OTHER_PARALLELISM:
            raise at.error(1, f"gradsync models data parallelism only (DATA), not {head[0]}")
        found = repr(head[0]) if head else "nothing"
        raise at.error(1, f"expected the parallelism keyword DATA, found {found}")
    at = _Where(path, 2)
    count_fields = lines[1].split() if len(lines) > 1 else []
    if not count_fields:
        raise at.error(1, "expected the number of layers, found nothing")
    count = _whole(count_fields[0], at, 1, "the layer count", minimum=1)
    if len(count_fields) > 1:
        raise at.error(2, f"unexpected {count_fields[1]!r} after the layer count")
    layers: list[Layer] = []
    for number, line in enumerate(lines[2:], start=3):
        values, cols = _fields(line)
        if not values:
            continue
        at = _Where(path, number)
        if len(layers) == count:
            raise at.error(1, f"more layer lines than the {count} the count on line 2 declares")
        if len(values) != len(COLUMNS):
            col = min(len(values), len(COLUMNS)) + 1
            raise at.error(
                col, f"a layer line has {len(COLUMNS)} fields ({', '.join(COLUMNS)}), "
                f"this one has {len(values)}",
            )  # fmt: skip
        layers.append(_layer(values, cols, at, element_bytes))
    if len(layers) < count:
        raise _Where(path, 2).error(
            1, f"the file declares {count} layers but has {len(layers)} layer lines"
        )
    return tuple(layers)


def parse_csv(
    text: str, path: str, element_bytes: int = DEFAULT_FORMAT.grad_bytes
) -> tuple[Layer, ...]:
    """Layers of a CSV workload whose header names :data:`COLUMNS` (any order)."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    at = _Where(path, 1)
    if not header:
        raise at.error(1, f"expected a header naming the columns {', '.join(COLUMNS)}")
    names = [h.strip() for h in header]
    for i, h in enumerate(names, start=1):
        if h not in COLUMNS:
            raise at.error(i, f"unknown column {h!r} (expected {', '.join(COLUMNS)})")
        if names.index(h) != i - 1:
            raise at.error(i, f"column {h!r} appears twice")
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise at.error(len(names) + 1, f"missing column {missing[0]!r}")
    order = [names.index(c) for c in COLUMNS]
    layers = []
    for row in reader:
        if not any(f.strip() for f in row):
            continue
        at = _Where(path, reader.line_num)
        if len(row) != len(names):
            col = min(len(row), len(names)) + 1
            raise at.error(col, f"the header has {len(names)} columns, this row {len(row)}")
        values = [row[i].strip() for i in order]
        layers.append(_layer(values, [i + 1 for i in order], at, element_bytes))
    if not layers:
        raise _Where(path, 2).error(1, "the file has a header but no layer rows")
    return tuple(layers)


def load(path: str | Path, *, element_bytes: int = DEFAULT_FORMAT.grad_bytes) -> Workload:
    """Read an ASTRA-sim text workload, or a CSV one (by the ``.csv`` suffix).

    ``element_bytes``: bytes of a gradient element on the link (default: the
    default fixed-point device's), which turns ``wg_comm_bytes`` into parameters.
    """
    if isinstance(element_bytes, bool) or not isinstance(element_bytes, int) or element_bytes < 1:
        raise WorkloadError(f"element_bytes must be a positive whole number, not {element_bytes!r}")
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise WorkloadError(f"cannot read workload file {str(path)!r}: {reason}") from None
    parse = parse_csv if p.suffix.lower() == ".csv" else parse_astra_text
    layers = parse(text, str(path), element_bytes)
    return Workload(
        name=p.stem,
        layers=layers,
        batch=0,
        element_bytes=element_bytes,
        input_bytes=0,
        output_bytes=0,
        source=str(path),
    )


def to_astra_text(workload: Workload) -> str:
    """``workload`` in ASTRA-sim's text format (each pass's cycles summed into one number)."""
    lines = ["DATA", str(len(workload.layers))]
    for x in workload.layers:
        wg = "ALLREDUCE" if x.grad_bytes else "NONE"
        fields = (x.name, -1, x.fwd_cycles, "NONE", 0, x.ig_cycles, "NONE", 0)
        fields += (x.wg_cycles, wg, x.grad_bytes, x.update_cycles)
        lines.append("\t".join(map(str, fields)))
    return "\n".join(lines) + "\n"


def to_csv(workload: Workload) -> str:
    """``workload`` as a CSV with the :data:`COLUMNS` header."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for x in workload.layers:
        wg = "ALLREDUCE" if x.grad_bytes else "NONE"
        w.writerow(
            (x.name, -1, x.fwd_cycles, "NONE", 0, x.ig_cycles, "NONE", 0)
            + (x.wg_cycles, wg, x.grad_bytes, x.update_cycles)
        )
    return out.getvalue()
