"""The sweep file: a command, fixed options, a grid, an optional zip group and ``where`` filter.

.. code-block:: toml

    command = "train"
    where = "not (schedule == 'sequential' and chunk_bytes < 256)"

    [options]              # the same for every point
    backend = "model"

    [grid]                 # every combination (a product, in the file's order)
    schedule = ["fifo", "priority"]
    chunk_bytes = [128, 512]

    [zip]                  # lists of one length that vary together (one more grid axis)
    link_bytes_per_cycle = [2, 4]
    link_latency_cycles = [100, 50]

    [jobqueue]             # dask-jobqueue cluster options, used with --jobqueue
    queue = "normal"

Reading checks the structure only; each point's options are validated by its
command (:mod:`gradsync.sweep.commands`) before anything runs.
"""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from simpleeval import EvalWithCompoundTypes, InvalidExpression

#: Top-level keys a sweep file may hold.
TOP_KEYS = ("command", "where", "options", "grid", "zip", "jobqueue")

#: Functions a ``where`` expression may call (nothing that reaches files, imports or time).
WHERE_FUNCTIONS = {
    "abs": abs,
    "min": min,
    "max": max,
    "len": len,
    "int": int,
    "float": float,
    "str": str,
}


class SweepFileError(ValueError):
    """The sweep file cannot be used; the message names the file, the key and the value."""


@dataclass(frozen=True)
class SweepFile:
    """A parsed sweep file (``options``, ``grid`` and ``zip`` keep the file's key order)."""

    path: Path
    command: str
    options: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    zip: dict = field(default_factory=dict)
    where: str | None = None
    jobqueue: dict = field(default_factory=dict)

    def points(self) -> list[dict]:
        """Every point's options (fixed, then grid, then zip values), the ``where`` filter applied."""
        grid_keys = list(self.grid)
        combos = itertools.product(*(self.grid[k] for k in grid_keys))
        zipped = list(zip(*self.zip.values(), strict=True)) if self.zip else [()]
        points = []
        for combo, zvals in itertools.product(combos, zipped):
            point = {**self.options, **dict(zip(grid_keys, combo, strict=True))}
            point.update(zip(self.zip, zvals, strict=True))
            if self.where is None or where_holds(self.where, point, self.path):
                points.append(point)
        return points


def where_holds(expression: str, point: dict, path: Path | str = "sweep file") -> bool:
    """Whether ``expression`` is true for ``point`` (its options are the names it may use).

    Evaluated by ``simpleeval``: comparisons, arithmetic, ``and``/``or``/``not``,
    ``in`` and the functions of :data:`WHERE_FUNCTIONS`; no attribute access
    to private names, no imports, no calls of anything else.
    """
    evaluator = EvalWithCompoundTypes(names=dict(point), functions=dict(WHERE_FUNCTIONS))
    try:
        return bool(evaluator.eval(expression))
    except (InvalidExpression, SyntaxError, TypeError, ValueError, ZeroDivisionError) as exc:
        detail = getattr(exc, "message", None) or str(exc)
        raise SweepFileError(
            f"{path}: where = {expression!r} cannot be evaluated for the point {point}: {detail}"
        ) from None


def _table(data: dict, key: str, path: Path) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise SweepFileError(f"{path}: {key} must be a table ([{key}]), not {value!r}")
    return value


def _check_lists(table: dict, name: str, path: Path) -> None:
    for key, values in table.items():
        if not isinstance(values, list) or not values:
            raise SweepFileError(
                f"{path}: [{name}] {key} must be a non-empty list of values, not {values!r}"
            )


def read(path: Path | str) -> SweepFile:
    """Read and check a sweep file; :class:`SweepFileError` names what is wrong."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise SweepFileError(f"cannot read the sweep file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepFileError(f"{path} is not valid TOML: {exc}") from None
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise SweepFileError(
            f"{path}: unknown key {unknown[0]!r} (a sweep file holds {', '.join(TOP_KEYS)})"
        )
    command = data.get("command")
    if not isinstance(command, str):
        raise SweepFileError(f"{path}: command must name a gradsync command, not {command!r}")
    tables = {name: _table(data, name, path) for name in ("options", "grid", "zip", "jobqueue")}
    _check_lists(tables["grid"], "grid", path)
    _check_lists(tables["zip"], "zip", path)
    lengths = {k: len(v) for k, v in tables["zip"].items()}
    if len(set(lengths.values())) > 1:
        raise SweepFileError(f"{path}: the [zip] lists must have one length, not {lengths}")
    seen: dict[str, str] = {}
    for name in ("options", "grid", "zip"):
        for key in tables[name]:
            if key in seen:
                raise SweepFileError(f"{path}: {key!r} is set in both [{seen[key]}] and [{name}]")
            seen[key] = name
    where = data.get("where")
    if where is not None and not isinstance(where, str):
        raise SweepFileError(f"{path}: where must be an expression in a string, not {where!r}")
    return SweepFile(
        path,
        command,
        tables["options"],
        tables["grid"],
        tables["zip"],
        where,
        tables["jobqueue"],
    )
