"""One JSON file per finished point under ``DIR/points/``; ``results.csv`` rebuilt from them.

A point file is named by the hash of the point's full configuration (command,
hash input, gradsync version), so a rerun of the same sweep finds every
finished point and an edited point is a new one. Files are written to a
temporary name and renamed into place (``os.replace``), so a killed client
leaves either the whole file or none.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path

from gradsync import __version__

FORMAT_VERSION = 1


def point_hash(command: str, hash_input: dict) -> str:
    """16 hex digits of the SHA-256 of the point's configuration and gradsync's version."""
    blob = json.dumps(
        {"command": command, "gradsync_version": __version__, "input": hash_input},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def points_dir(out: Path) -> Path:
    return Path(out) / "points"


def point_path(out: Path, key: str) -> Path:
    return points_dir(out) / f"{key}.json"


def read_point(out: Path, key: str) -> dict | None:
    """The record of point ``key``, or None if it has not finished."""
    try:
        return json.loads(point_path(out, key).read_text())
    except (OSError, ValueError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_point(out: Path, key: str, record: dict) -> Path:
    """Write a point's record (``status``, ``config``, ``result`` or ``error``) atomically."""
    path = point_path(out, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps({"format_version": FORMAT_VERSION, **record}, indent=1))
    return path


def _cell(value):
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return value


def rows(out: Path, keys: list[str]) -> list[dict]:
    """One flat row per finished point of ``keys`` (in that order): options, result, error."""
    table = []
    for key in keys:
        rec = read_point(out, key)
        if rec is None:
            continue
        row = {"point": key, "status": rec["status"]}
        row.update((k, _cell(v)) for k, v in rec.get("options", {}).items())
        row.update((k, _cell(v)) for k, v in rec.get("result", {}).items())
        if rec["status"] != "done":
            row["error"] = rec.get("error", "")
        table.append(row)
    return table


def write_results(out: Path, keys: list[str]) -> list[Path]:
    """Rebuild ``results.csv`` (and ``results.parquet`` when pyarrow is importable)."""
    table = rows(out, keys)
    columns: dict[str, None] = {}
    for row in table:
        columns.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "results.csv", buf.getvalue())
    written = [out / "results.csv"]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    # mixed columns (a failed point's empty cells) become strings rather than failing
    data = {c: [row.get(c) for row in table] for c in columns}
    arrays = {}
    for c, values in data.items():
        try:
            arrays[c] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays[c] = pa.array([None if v is None else str(v) for v in values])
    pq.write_table(pa.table(arrays), out / "results.parquet")
    written.append(out / "results.parquet")
    return written
