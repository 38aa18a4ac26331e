"""One point of a scale study: scalar options in, a :class:`ScaleConfig` and flat columns out.

This is the ONE path from what a user types (``gradsync scale --link-gbps
400``, or a line of a ``gradsync sweep`` TOML file) to the simulator's
:class:`~gradsync.scale.config.ScaleConfig`:

* :func:`validate` checks a dict of options, loads the workload, builds the
  whole configuration once (so every bad value is caught before anything
  runs) and returns a :class:`PointConfig` -- a frozen, picklable record of
  the options with their defaults filled in (``to_dict()`` is plain JSON);
* :func:`run` builds the configuration again, resolves ``chunk_bytes
  auto``, simulates it and returns flat result columns (scalars only, the
  same for ``results.csv`` and ``results.json``).

Units: Gb/s are 10**9 bits per second, ns and GHz are SI; ``bucket_cap_mb``
is in MiB as in PyTorch DDP (25 means 25 * 2**20 bytes).  Times in the
result are given both in device cycles and in seconds (cycles / clock).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gradsync.firmware.schedules import Schedule, load_schedule
from gradsync.scale.config import (
    ScaleConfig,
    ScaleConfigError,
    ScaleLink,
    ScaleResult,
    Straggler,
    Topology,
)
from gradsync.spec.formats import BFloat16Format, FixedPointFormat
from gradsync.spec.hardware import HardwareConfig
from gradsync.spec.limits import LimitError
from gradsync.spec.regmap import DMA_ALIGN_BYTES
from gradsync.workloads.formats import (
    ELEMENT_BYTES_DEVICES,
    GRAD_FORMATS,
    NumberFormat,
    device_for_element_bytes,
    exchange_element_bytes,
    format_name,
    is_float,
    resolve_grad_format,
)
from gradsync.workloads.workload import WorkloadError

#: MiB, as PyTorch's ``bucket_cap_mb`` means it
MIB = 1 << 20


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def _bad(key: str, value, why: str) -> ScaleConfigError:
    return ScaleConfigError(f"{_flag(key)} {value}: {why}")


def _int(key: str, value, minimum: int) -> int:
    if isinstance(value, bool):
        raise _bad(key, value, "must be a whole number")
    try:
        number = float(value) if isinstance(value, str) else value
        if not float(number).is_integer():
            raise ValueError
        number = int(number)
    except (TypeError, ValueError, OverflowError):
        raise _bad(key, value, "must be a whole number") from None
    if number < minimum:
        raise _bad(key, value, f"must be >= {minimum}")
    return number


def _float(key: str, value, minimum: float, strict: bool) -> float:
    if isinstance(value, bool):
        raise _bad(key, value, "must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _bad(key, value, "must be a number") from None
    if not math.isfinite(number) or number < minimum or (strict and number == minimum):
        raise _bad(key, value, f"must be {'>' if strict else '>='} {minimum:g}")
    return number


def _optional(parse: Callable) -> Callable:
    def parse_optional(key: str, value):
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            return None
        return parse(key, value)

    return parse_optional


def _text(key: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(key, value, "must be a non-empty string")
    return value


def _chunk(key: str, value) -> int | str:
    if isinstance(value, str) and value.lower() == "auto":
        return "auto"
    chunk = _int(key, value, 1)
    if chunk % DMA_ALIGN_BYTES:
        raise _bad(key, value, f"must be 'auto' or a multiple of {DMA_ALIGN_BYTES} bytes")
    return chunk


def _format(key: str, value) -> str:
    """``--format``: fixed point ``qI.F`` or ``bf16`` (``gradsync train --format``'s parser)."""
    from argparse import ArgumentTypeError

    from gradsync.cmd_train import _number_format

    try:
        chosen = _number_format(str(value))
    except ArgumentTypeError:
        raise _bad(key, value, "must be bf16 or fixed point qI.F such as q5.10") from None
    name = chosen if isinstance(chosen, str) else f"q{chosen[0]}.{chosen[1]}"
    try:
        _number_format_of(name)
    except LimitError:
        bits = sum(chosen) + 1
        raise _bad(
            key, value, f"is a {bits}-bit fixed-point format; the device has 8 or 16"
        ) from None
    return name


def _grad_format(key: str, value) -> str:
    if value not in GRAD_FORMATS:
        raise _bad(key, value, f"must be {' or '.join(GRAD_FORMATS)}")
    return value


def _element_bytes(key: str, value) -> int:
    return _int(key, value, 1)  # checked against the formats in :func:`_resolve_formats`


def _array(key: str, value) -> str:
    rows, sep, cols = str(value).lower().partition("x")
    if not sep:
        raise _bad(key, value, "must be ROWSxCOLS, e.g. 128x128")
    _int(key, rows, 1)
    _int(key, cols, 1)
    return f"{int(rows)}x{int(cols)}"


def _straggler(key: str, value) -> str:
    count, sep, factor = str(value).partition(":")
    if not sep:
        raise _bad(key, value, "must be K:F (K nodes whose compute is F times slower)")
    try:
        k = int(count)
        f = float(factor)
    except ValueError:
        raise _bad(key, value, "must be K:F with K a whole number and F a number") from None
    if k < 1 or not (math.isfinite(f) and f >= 1):
        raise _bad(key, value, "needs K >= 1 nodes and a slow-down factor F >= 1")
    return f"{k}:{f:g}"


def _topology(key: str, value) -> str:
    if value not in ("ring", "hierarchical"):
        raise _bad(key, value, "must be ring or hierarchical")
    return value


@dataclass(frozen=True)
class Option:
    """One scalar option: its parser, default and help (units in the text)."""

    parse: Callable
    default: object
    help: str


OPTIONS: dict[str, Option] = {
    "workload": Option(
        _text, None, "built-in workload (gradsync workloads list) or a file (ASTRA-sim .txt, .csv)"
    ),
    "nodes": Option(lambda k, v: _int(k, v, 2), None, "data-parallel nodes (>= 2)"),
    "link_gbps": Option(
        lambda k, v: _float(k, v, 0.0, True), None, "bandwidth of each link direction, Gb/s"
    ),
    "link_latency_ns": Option(
        lambda k, v: _float(k, v, 0.0, False), 1000.0, "latency of a link (between boxes), ns"
    ),
    "clock_ghz": Option(lambda k, v: _float(k, v, 0.0, True), 1.0, "device clock, GHz"),
    "schedule": Option(_text, "priority", "schedule name or path/to/file.py:Class"),
    "chunk_bytes": Option(_chunk, "auto", "chunk (descriptor) size in bytes, or auto"),
    "topology": Option(_topology, "ring", "ring or hierarchical (boxes of --per-box nodes)"),
    "per_box": Option(lambda k, v: _int(k, v, 1), 8, "hierarchical: nodes per box"),
    "intra_gbps": Option(
        lambda k, v: _float(k, v, 0.0, True), 2400.0, "hierarchical: intra-box link, Gb/s"
    ),
    "intra_latency_ns": Option(
        lambda k, v: _float(k, v, 0.0, False), 250.0, "hierarchical: intra-box latency, ns"
    ),
    "max_payload_bytes": Option(lambda k, v: _int(k, v, 4), 4096, "largest packet payload, bytes"),
    "array": Option(_array, "128x128", "systolic array ROWSxCOLS (compute cycles of the workload)"),
    "vector_lanes": Option(lambda k, v: _int(k, v, 1), 128, "vector unit lanes"),
    "batch": Option(
        _optional(lambda k, v: _int(k, v, 1)), None, "per-node batch (default: the workload's)"
    ),
    "format": Option(_format, "q5.10", "device number format: fixed point qI.F or bf16"),
    "grad_format": Option(
        _optional(_grad_format), None, "with --format bf16: gradients on the link, fp32 or bf16"
    ),
    "element_bytes": Option(
        _optional(_element_bytes),
        None,
        "deprecated: gradient bytes on the link, 2 (q5.10) or 4 (bf16, fp32 exchange)",
    ),
    "seq_len": Option(_optional(lambda k, v: _int(k, v, 1)), None, "sequence length of BERT/GPT-2"),
    "straggler": Option(_optional(_straggler), None, "K:F -- K nodes' compute F times slower"),
    "bucket_cap_mb": Option(
        _optional(lambda k, v: _float(k, v, 0.0, True)), None, "ddp: bucket cap, MiB (default 25)"
    ),
    "slice_params": Option(_optional(lambda k, v: _int(k, v, 1)), None, "p3: parameters per slice"),
    "steps": Option(lambda k, v: _int(k, v, 2), 3, "simulated steps (>= 2)"),
}


#: options without a default
REQUIRED = ("workload", "nodes", "link_gbps")
#: options whose value follows from others (``element_bytes``: from the two formats)
DERIVED = ("element_bytes",)


@dataclass(frozen=True)
class PointConfig:
    """The options of one point, checked and with defaults filled in (plain JSON values)."""

    workload: str
    nodes: int
    link_gbps: float
    link_latency_ns: float
    clock_ghz: float
    schedule: str
    chunk_bytes: int | str
    topology: str
    per_box: int
    intra_gbps: float
    intra_latency_ns: float
    max_payload_bytes: int
    array: str
    vector_lanes: int
    batch: int | None
    format: str
    grad_format: str | None
    element_bytes: int
    seq_len: int | None
    straggler: str | None
    bucket_cap_mb: float | None
    slice_params: int | None
    steps: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def clock_hz(self) -> float:
        return self.clock_ghz * 1e9


def validate(options: dict) -> PointConfig:
    """Check ``options`` (values may be strings as typed) and build the configuration once.

    Raises :class:`ScaleConfigError` with one sentence naming the option and its value.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ScaleConfigError(f"unknown option {unknown[0]!r}: use one of {sorted(OPTIONS)}")
    values = {}
    for key, opt in OPTIONS.items():
        raw = options.get(key, opt.default)
        if raw is None and key in REQUIRED:
            raise ScaleConfigError(f"{_flag(key)} is required")
        values[key] = opt.parse(key, raw) if raw is not None else None
    _resolve_formats(values, given=set(options))
    point = PointConfig(**values)
    build(point)
    return point


def _resolve_formats(values: dict, given: set[str]) -> None:
    """Fill in ``grad_format`` (bf16: fp32 by default) and ``element_bytes`` (the link's
    gradient element); a bare ``element_bytes`` picks the device with that exchange."""
    fmt = _number_format_of(values["format"])
    grad, size = values["grad_format"], values["element_bytes"]
    if grad is not None and not is_float(fmt):
        raise _bad("grad_format", grad, f"needs --format bf16, not {values['format']}")
    if size is not None and not {"format", "grad_format"} & given:
        try:
            fmt, grad = device_for_element_bytes(size)
        except WorkloadError:
            choices = " or ".join(
                f"{exchange_element_bytes(f, g)} ({format_name(f)}{f', {g} exchange' if g else ''})"
                for f, g in ELEMENT_BYTES_DEVICES
            )
            raise _bad("element_bytes", size, f"must be {choices}") from None
    grad = resolve_grad_format(fmt, grad)
    element = exchange_element_bytes(fmt, grad)
    if size is not None and size != element:
        on_link = format_name(fmt) + (f" with {grad} exchange" if grad else "")
        raise _bad(
            "element_bytes",
            size,
            f"disagrees with {on_link} ({element}-byte gradients); leave it out",
        )
    values.update(format=format_name(fmt), grad_format=grad, element_bytes=element)


def _number_format_of(name: str) -> NumberFormat:
    """The format object of a canonical ``--format`` name (``q5.10``, ``bf16``)."""
    if name == BFloat16Format.name:
        return BFloat16Format()
    integer, frac = (int(x) for x in name[1:].split("."))
    return FixedPointFormat(total_bits=integer + frac + 1, frac_bits=frac)


def _hardware(point: PointConfig) -> HardwareConfig:
    rows, cols = (int(n) for n in point.array.split("x"))
    try:
        return HardwareConfig(
            array_rows=rows,
            array_cols=cols,
            vector_lanes=point.vector_lanes,
            max_payload_bytes=point.max_payload_bytes,
        )
    except (TypeError, ValueError) as exc:
        raise ScaleConfigError(f"--array/--vector-lanes/--max-payload-bytes: {exc}") from None


@functools.lru_cache(maxsize=64)
def _workload(name: str, batch, hardware: HardwareConfig, fmt: str, grad_format, seq_len):
    from gradsync import workloads

    if name not in workloads.BUILTIN_NAMES and not Path(name).is_file():
        raise ScaleConfigError(
            f"--workload {name} is neither a built-in workload "
            f"({', '.join(workloads.BUILTIN_NAMES)}) nor an existing file"
        )
    # an imported file's cycles are fixed: only a built-in takes the array
    kw = {"hardware": hardware} if name in workloads.BUILTIN_NAMES else {}
    try:
        return workloads.get(
            name,
            batch=batch,
            number_format=_number_format_of(fmt),
            grad_format=grad_format,
            seq_len=seq_len,
            **kw,
        )
    except workloads.WorkloadError as exc:
        text = str(exc)  # a file's errors start with its path: name it once
        sep = "" if text.startswith(f"{name}, ") else ": "
        raise ScaleConfigError(f"--workload {name}{sep}{text.removeprefix(name)}") from None


def _schedule(point: PointConfig) -> Schedule:
    try:
        schedule = load_schedule(point.schedule)
    except ValueError as exc:
        raise ScaleConfigError(f"--schedule {point.schedule}: {exc}") from None
    if point.bucket_cap_mb is not None and hasattr(schedule, "bucket_cap_bytes"):
        schedule.bucket_cap_bytes = round(point.bucket_cap_mb * MIB)
    if point.slice_params is not None and hasattr(schedule, "slice_params"):
        schedule.slice_params = point.slice_params
    return schedule


def _link(point: PointConfig, gbps: float, latency_ns: float, flag: str) -> ScaleLink:
    try:
        return ScaleLink.from_gbps(gbps, latency_ns, point.clock_ghz, point.max_payload_bytes)
    except ScaleConfigError as exc:
        raise ScaleConfigError(f"{flag}: {exc}") from None


def _topology_of(point: PointConfig) -> Topology:
    if point.topology == "ring":
        return Topology()
    intra = _link(point, point.intra_gbps, point.intra_latency_ns, "--intra-gbps")
    topology = Topology("hierarchical", point.per_box, intra)
    topology.check(point.nodes)
    return topology


def _stragglers(point: PointConfig) -> tuple[Straggler, ...]:
    if point.straggler is None:
        return ()
    count, factor = point.straggler.split(":")
    if int(count) > point.nodes:
        raise _bad("straggler", point.straggler, f"names more nodes than --nodes {point.nodes}")
    return (Straggler(int(count), float(factor)),)


def build(point: PointConfig) -> ScaleConfig:
    """The simulator's configuration of ``point``; ``chunk_bytes`` is 0 while it is ``auto``."""
    hardware = _hardware(point)
    workload = _workload(
        point.workload, point.batch, hardware, point.format, point.grad_format, point.seq_len
    )
    largest = max(layer.grad_bytes for layer in workload.layers)
    if point.chunk_bytes != "auto" and point.chunk_bytes > largest:
        raise _bad(
            "chunk_bytes",
            point.chunk_bytes,
            f"is larger than the largest layer's gradients of {workload.name} ({largest} bytes)",
        )
    return ScaleConfig(
        workload=workload,
        nodes=point.nodes,
        schedule=_schedule(point),
        chunk_bytes=0 if point.chunk_bytes == "auto" else point.chunk_bytes,
        link=_link(point, point.link_gbps, point.link_latency_ns, "--link-gbps"),
        hardware=hardware,
        topology=_topology_of(point),
        stragglers=_stragglers(point),
        steps=point.steps,
    )


def resolved(point: PointConfig) -> ScaleConfig:
    """:func:`build` with ``chunk_bytes auto`` replaced by the chunking rule's size."""
    cfg = build(point)
    if point.chunk_bytes == "auto":
        from gradsync.scale.chunking import auto_chunk_bytes

        cfg = dataclasses.replace(cfg, chunk_bytes=auto_chunk_bytes(cfg))
    return cfg


def columns(point: PointConfig, cfg: ScaleConfig, res: ScaleResult) -> dict:
    """Flat result columns: the point's options, then the results in cycles and seconds."""
    hz = point.clock_hz
    row = point.to_dict()
    row["chunk_bytes_requested"] = row.pop("chunk_bytes")
    row["chunk_bytes"] = res.chunk_bytes
    row["parameters"] = cfg.workload.params
    row["gradient_bytes"] = cfg.workload.grad_bytes
    row["link_bytes_per_second"] = point.link_gbps * 1e9 / 8
    row["link_latency_seconds"] = point.link_latency_ns / 1e9
    for name in ("step", "layer1_ready", "exposed_comm", "compute"):
        cycles = getattr(res, f"{name}_cycles")
        row[f"{name}_cycles"] = cycles
        row[f"{name}_seconds"] = cycles / hz
    for link, busy in sorted(res.link_utilisation.items()):
        row[f"link_utilisation_{link}"] = busy
    row["descriptors"] = res.descriptors
    row["events"] = res.events
    row["wall_seconds"] = res.wall_seconds
    return row


@dataclass
class PointRun:
    """Everything one simulated point gives: its flat row, the configuration and the result."""

    point: PointConfig
    config: ScaleConfig
    result: ScaleResult
    row: dict


def simulate_point(point: PointConfig, trace: bool = False) -> PointRun:
    from gradsync.scale.sim import simulate

    cfg = resolved(point)
    if trace:
        cfg = dataclasses.replace(cfg, trace=True)
    res = simulate(cfg)
    return PointRun(point, cfg, res, columns(point, cfg, res))


def run(point: PointConfig) -> dict:
    """Simulate ``point``; its flat result columns (see :func:`columns`)."""
    return simulate_point(point).row


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def hash_input(point: PointConfig) -> dict:
    """Everything that decides ``run(point)``: the options, and the SHA-256 of a workload file
    or a ``file.py:Class`` schedule's file, so that editing the file makes a new point."""
    key = point.to_dict()
    if Path(point.workload).is_file():
        key["workload_sha256"] = _digest(point.workload)
    schedule_file = point.schedule.rpartition(":")[0]
    if schedule_file and Path(schedule_file).is_file():
        key["schedule_sha256"] = _digest(schedule_file)
    return key
