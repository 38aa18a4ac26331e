"""Functional coverage of gradsync's fuzz, fault and training runs, with cocotb-coverage.

The cover points and crosses live in cocotb-coverage's one database
(``cocotb_coverage.coverage.coverage_db``), under four sections:

``gradsync.descriptor``
    every completed DMA descriptor: queue, length class (:func:`length_class`),
    flag combination, error class (each descriptor error code, or ``ok``), and
    the crosses queue x error, queue x length and queue x flags.
``gradsync.packet``
    link and NIC events: CRC errors, drops, NAKs, timeouts, resends, duplicates
    discarded, sequence errors, stalls, and the receiver's window refusals
    (``rx_no_window``, ``rx_tag_mismatch``, ``rx_out_of_window``).
``gradsync.command``
    compute commands: opcode, GEMM transposes, error class.
``gradsync.schedule``
    a schedule's decisions in a training run: hardware queue per layer
    position (top, middle, bottom), chunk overtakes (a lower layer's chunk
    started before an upper layer's last chunk of the same step) and early
    updates (a layer's SGD update started before the step's last gradient
    packet arrived), each crossed with the schedule.

The ``sample_*`` functions take plain values -- a decoded
:class:`~gradsync.spec.regmap.Descriptor`, counter deltas, trace records -- so
cocotb tests and model-backend runs call them alike; each returns the bins it
hit.  :func:`write` exports the database to YAML and XML
(cocotb-coverage's exporters) and logs :func:`summary`; :func:`report` merges
exported files (cocotb-coverage's merger) and prints the table.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from cocotb_coverage.coverage import (
    CoverCross,
    CoverPoint,
    coverage_db,
    coverage_section,
    merge_coverage,
)

from gradsync.spec import regmap as rm

ROOT = "gradsync"
E = rm.ErrorCode

# ------------------------------------------------------------------ descriptors

#: Length classes, in the order :func:`length_class` tests them (see there).
LENGTH_CLASSES = (
    "zero",
    "one_word",
    "below_payload",
    "max_payload",
    "multi_packet",
    "window_max",
    "over_window",
)
#: The codes a descriptor's STATUS word can carry (the DMA engine's checks, in their order).
DESCRIPTOR_ERRORS = (E.OK, *rm.DESCRIPTOR_CHECKS)
ERROR_CLASSES = tuple(e.name.lower() for e in DESCRIPTOR_ERRORS)
_FLAG_BITS = tuple(rm.DescFlag)


def flags_name(flags: int) -> str:
    """``"none"`` or the set DescFlag names joined by ``+`` (unknown bits 4..7 ignored)."""
    names = [f.name.lower() for f in _FLAG_BITS if flags & f]
    return "+".join(names) or "none"


FLAG_CLASSES = tuple(flags_name(v) for v in range(1 << len(_FLAG_BITS)))


def length_class(length: int, max_payload_bytes: int, window_bytes: int) -> str:
    """The class of a descriptor length in bytes.

    ``zero``; ``over_window`` (longer than the queue's source window, ``WIN_LEN``
    bytes); ``window_max`` (exactly the window); ``one_word`` (1..4 bytes);
    ``below_payload`` (less than one packet's maximum payload); ``max_payload``
    (exactly one full packet); ``multi_packet`` (more than one packet).
    """
    if length == 0:
        return "zero"
    if length > window_bytes:
        return "over_window"
    if length == window_bytes:
        return "window_max"
    if length <= rm.DMA_ALIGN_BYTES:
        return "one_word"
    if length < max_payload_bytes:
        return "below_payload"
    if length == max_payload_bytes:
        return "max_payload"
    return "multi_packet"


def error_class(desc: rm.Descriptor) -> str:
    """``ok`` or the lower-case ErrorCode name in a completed descriptor's STATUS."""
    if not desc.done:
        raise ValueError(f"descriptor status {desc.status:#x} is not completed (bit 31 clear)")
    code = desc.status & 0xFF
    if code not in {int(e) for e in DESCRIPTOR_ERRORS}:
        raise ValueError(f"descriptor status code {code} is not a descriptor error code")
    return E(code).name.lower()


_D = f"{ROOT}.descriptor"
_descriptor_cover = coverage_section(
    CoverPoint(f"{_D}.queue", xf=lambda q, ln, fl, er: q, bins=list(range(rm.DMA_QUEUES))),
    CoverPoint(f"{_D}.length", xf=lambda q, ln, fl, er: ln, bins=list(LENGTH_CLASSES)),
    CoverPoint(f"{_D}.flags", xf=lambda q, ln, fl, er: fl, bins=list(FLAG_CLASSES)),
    CoverPoint(f"{_D}.error", xf=lambda q, ln, fl, er: er, bins=list(ERROR_CLASSES)),
    CoverCross(f"{_D}.queue_x_error", items=[f"{_D}.queue", f"{_D}.error"]),
    CoverCross(f"{_D}.queue_x_length", items=[f"{_D}.queue", f"{_D}.length"]),
    CoverCross(f"{_D}.queue_x_flags", items=[f"{_D}.queue", f"{_D}.flags"]),
)


@_descriptor_cover
def _descriptor(queue: int, length: str, flags: str, error: str) -> None:
    pass


@dataclass(frozen=True)
class DescriptorBins:
    queue: int
    length: str
    flags: str
    error: str


def sample_descriptor(
    desc: rm.Descriptor, queue: int, max_payload_bytes: int, window_bytes: int
) -> DescriptorBins:
    """Sample one completed descriptor (STATUS as the engine wrote it back) of ``queue``.

    ``max_payload_bytes``: the link's packet payload; ``window_bytes``: the
    queue's source window length (``DMAq_WIN_LEN``).
    """
    if queue not in range(rm.DMA_QUEUES):
        raise ValueError(f"queue must be 0..{rm.DMA_QUEUES - 1}, not {queue!r}")
    bins = DescriptorBins(
        queue,
        length_class(desc.length, max_payload_bytes, window_bytes),
        flags_name(desc.flags),
        error_class(desc),
    )
    _descriptor(bins.queue, bins.length, bins.flags, bins.error)
    return bins


# ------------------------------------------------------------------ packet events

#: Packet event -> the node counter (``gradsync.hw.node.NODE_COUNTERS``) or link
#: counter (``gradsync.hw.link.LINK_COUNTERS``, prefixed ``link_``) that counts it.
COUNTER_EVENTS = {
    "crc_error": "rx_crc_errors",
    "drop": "link_dropped",
    "nak": "tx_naks",
    "timeout": "tx_timeouts",
    "resend": "tx_retransmits",
    "duplicate": "rx_duplicates",
    "seq_error": "rx_seq_errors",
    "stall": "link_stalls",
}
#: Receiver refusals, seen as NIC_RX ERROR trace records (aux = ErrorCode).
WINDOW_EVENTS = {
    E.RX_NO_WINDOW: "rx_no_window",
    E.RX_TAG_MISMATCH: "rx_tag_mismatch",
    E.RX_OUT_OF_WINDOW: "rx_out_of_window",
}
PACKET_EVENTS = (*COUNTER_EVENTS, *WINDOW_EVENTS.values())


@CoverPoint(f"{ROOT}.packet.event", bins=list(PACKET_EVENTS))
def _packet(event: str) -> None:
    pass


def sample_counters(deltas: Mapping[str, int]) -> dict[str, int]:
    """Sample packet events from counter increments over a run: one hit per event counted.

    ``deltas`` maps node counter names (``rx_crc_errors``, ...) and link counter
    names prefixed ``link_`` (``link_dropped``, ...) to increments, summed over
    nodes or not; counters not named in :data:`COUNTER_EVENTS` are ignored.
    Returns event -> hits.
    """
    hits = {}
    for event, counter in COUNTER_EVENTS.items():
        n = int(deltas.get(counter, 0))
        if n < 0:
            raise ValueError(f"counter {counter} went backwards: delta {n}")
        for _ in range(n):
            _packet(event)
        if n:
            hits[event] = n
    return hits


def sample_rx_errors(records: Iterable[rm.TraceRecord]) -> dict[str, int]:
    """Sample the receiver's window refusals from a node's trace records; returns event -> hits."""
    hits: dict[str, int] = {}
    for r in records:
        if r.engine == rm.Engine.NIC_RX and r.event == rm.TraceEvent.ERROR:
            event = WINDOW_EVENTS.get(r.aux)
            if event is not None:
                _packet(event)
                hits[event] = hits.get(event, 0) + 1
    return hits


# ------------------------------------------------------------------ compute commands

OPCODE_CLASSES = (*(o.name.lower() for o in rm.Opcode), "unknown")
COMMAND_ERRORS = (
    E.OK,
    E.CMD_BAD_OPCODE,
    E.CMD_ZERO_DIM,
    E.CMD_OUT_OF_BOUNDS,
    E.CMD_FIFO_FULL,
    E.CMD_K_TOO_LARGE,
)
COMMAND_ERROR_CLASSES = tuple(e.name.lower() for e in COMMAND_ERRORS)
TRANSPOSES = ("nn", "tn", "nt", "tt", "n/a")
_C = f"{ROOT}.command"
#: (opcode, error) pairs the command decoder cannot produce: an unknown opcode is refused as
#: such and nothing else; only a GEMM has a K to be too large.
_IMPOSSIBLE = [
    (op, er)
    for op in OPCODE_CLASSES
    for er in COMMAND_ERROR_CLASSES
    if (op == "unknown") != (er == "cmd_bad_opcode") or (er == "cmd_k_too_large" and op != "gemm")
]


@coverage_section(
    CoverPoint(f"{_C}.opcode", xf=lambda op, tr, er: op, bins=list(OPCODE_CLASSES)),
    CoverPoint(f"{_C}.gemm_transpose", xf=lambda op, tr, er: tr, bins=list(TRANSPOSES[:4])),
    CoverPoint(f"{_C}.error", xf=lambda op, tr, er: er, bins=list(COMMAND_ERROR_CLASSES)),
    CoverCross(f"{_C}.opcode_x_error", items=[f"{_C}.opcode", f"{_C}.error"], ign_bins=_IMPOSSIBLE),
)
def _command(opcode: str, transpose: str, error: str) -> None:
    pass


def sample_command(
    opcode: int, trans_a: bool, trans_b: bool, error: int = 0
) -> tuple[str, str, str]:
    """Sample one retired compute command: its opcode, transposes and ErrorCode (0: ok)."""
    op = rm.Opcode(opcode).name.lower() if opcode in set(rm.Opcode) else "unknown"
    tr = TRANSPOSES[int(bool(trans_a)) + 2 * int(bool(trans_b))] if op == "gemm" else "n/a"
    if error not in {int(e) for e in COMMAND_ERRORS}:
        raise ValueError(f"error {error!r} is not a compute command ErrorCode")
    er = E(error).name.lower()
    _command(op, tr, er)
    return op, tr, er


# ------------------------------------------------------------------ schedule decisions

BUILTIN_SCHEDULES = ("sequential", "fifo", "priority", "ddp", "p3")
POSITIONS = ("bottom", "middle", "top")
_S = f"{ROOT}.schedule"


def layer_position(layer: int, num_layers: int) -> str:
    """``bottom`` (layer 1, the input side), ``top`` (the last layer) or ``middle``."""
    if not 1 <= layer <= num_layers:
        raise ValueError(f"layer must be in 1..{num_layers}, not {layer!r}")
    return "bottom" if layer == 1 else "top" if layer == num_layers else "middle"


@coverage_section(
    CoverPoint(f"{_S}.send.schedule", xf=lambda s, p, q: s, bins=list(BUILTIN_SCHEDULES)),
    CoverPoint(f"{_S}.send.position", xf=lambda s, p, q: p, bins=list(POSITIONS)),
    CoverPoint(f"{_S}.send.queue", xf=lambda s, p, q: q, bins=list(range(rm.DMA_QUEUES))),
    CoverCross(
        f"{_S}.send.schedule_x_position_x_queue",
        items=[f"{_S}.send.schedule", f"{_S}.send.position", f"{_S}.send.queue"],
    ),
)
def _send(schedule: str, position: str, queue: int) -> None:
    pass


@coverage_section(
    CoverPoint(f"{_S}.step.schedule", xf=lambda s, o, e: s, bins=list(BUILTIN_SCHEDULES)),
    CoverPoint(f"{_S}.step.overtake", xf=lambda s, o, e: o, bins=[True, False]),
    CoverPoint(f"{_S}.step.early_update", xf=lambda s, o, e: e, bins=[True, False]),
    CoverCross(
        f"{_S}.step.schedule_x_overtake", items=[f"{_S}.step.schedule", f"{_S}.step.overtake"]
    ),
    CoverCross(
        f"{_S}.step.schedule_x_early_update",
        items=[f"{_S}.step.schedule", f"{_S}.step.early_update"],
    ),
)
def _step(schedule: str, overtake: bool, early: bool) -> None:
    pass


_DMA_QUEUE_OF = {rm.Engine.DMA_HI: 0, rm.Engine.DMA_LO: 1}


@dataclass(frozen=True)
class StepDecisions:
    step: int
    sends: tuple[tuple[str, int], ...]  #: (layer position, queue) per DMA start, in cycle order
    overtake: bool
    early_update: bool


def step_decisions(records: Iterable[rm.TraceRecord], num_layers: int) -> list[StepDecisions]:
    """A node's schedule decisions per training step, from its trace records.

    Sends are the DMA START records (kind SEND; tag = layer, chunk, step).
    ``overtake``: for some layers L < U, L's first send started before U's last
    one.  ``early_update``: the step's first UPDATE (SGD) record started before
    its last received packet (NIC_RX END) -- a layer was updated while another
    layer's gradients were still arriving.
    """
    by_step: dict[int, list[rm.TraceRecord]] = {}
    for r in records:
        by_step.setdefault(rm.decode_tag(r.tag)[2], []).append(r)
    out = []
    for step in sorted(by_step):
        recs = sorted(by_step[step], key=lambda r: r.cycle)
        sends = [
            r
            for r in recs
            if r.engine in _DMA_QUEUE_OF
            and r.event == rm.TraceEvent.START
            and r.kind == rm.Kind.SEND
        ]
        if not sends:
            continue
        first, last = {}, {}
        for r in sends:
            layer = rm.decode_tag(r.tag)[0]
            first.setdefault(layer, r.cycle)
            last[layer] = r.cycle
        overtake = any(first[lo] < last[up] for lo in first for up in last if lo < up)
        updates = [
            r.cycle for r in recs if r.kind == rm.Kind.UPDATE and r.event == rm.TraceEvent.START
        ]
        rx = [
            r.cycle for r in recs if r.engine == rm.Engine.NIC_RX and r.event == rm.TraceEvent.END
        ]
        early = bool(updates and rx) and min(updates) < max(rx)
        positions = tuple(
            (layer_position(rm.decode_tag(r.tag)[0], num_layers), _DMA_QUEUE_OF[r.engine])
            for r in sends
        )
        out.append(StepDecisions(step, positions, overtake, early))
    return out


def sample_schedule(
    schedule: str, records: Iterable[rm.TraceRecord], num_layers: int
) -> list[StepDecisions]:
    """Sample one node's schedule decisions (see :func:`step_decisions`) under ``schedule``'s name."""
    if schedule not in BUILTIN_SCHEDULES:
        raise ValueError(
            f"schedule must be one of {', '.join(BUILTIN_SCHEDULES)}, not {schedule!r}"
        )
    steps = step_decisions(records, num_layers)
    for st in steps:
        for position, queue in st.sends:
            _send(schedule, position, queue)
        _step(schedule, st.overtake, st.early_update)
    return steps


# ------------------------------------------------------------------ export and report


@dataclass(frozen=True)
class ItemSummary:
    name: str
    hit: int  #: bins hit at least ``at_least`` times
    total: int
    empty: tuple[str, ...]

    @property
    def percent(self) -> float:
        return 100.0 * self.hit / self.total if self.total else 0.0


def hits(name: str) -> dict:
    """Bin -> hit count of a cover point or cross in the live database."""
    return dict(coverage_db[name].detailed_coverage)


def _summarise(name: str, bins: Mapping, at_least: int) -> ItemSummary:
    empty = tuple(str(b) for b, n in bins.items() if n < at_least)
    return ItemSummary(name, len(bins) - len(empty), len(bins), empty)


def summary(prefix: str | tuple[str, ...] = ROOT) -> list[ItemSummary]:
    """Per cover point and cross under ``prefix`` (one or a tuple) in the live database: bins hit,
    total, empty."""
    out = []
    for name in sorted(coverage_db):
        item = coverage_db[name]
        if name.startswith(prefix) and hasattr(item, "detailed_coverage") and item.weight:
            out.append(_summarise(name, item.detailed_coverage, item.at_least))
    return out


def format_table(items: Iterable[ItemSummary]) -> str:
    """The summary as a text table: name, hit/total, %, empty bins."""
    lines = [f"{'cover item':58} {'bins':>9} {'%':>6}  empty bins"]
    for it in items:
        empty = ", ".join(it.empty) if it.empty else "-"
        lines.append(f"{it.name:58} {it.hit:>4}/{it.total:<4} {it.percent:6.1f}  {empty}")
    return "\n".join(lines)


def write(
    directory: str | Path,
    name: str,
    log: Callable[[str], None] | None = None,
    prefix: str | tuple[str, ...] = ROOT,
) -> Path:
    """Export the database to ``directory/coverage_<name>.yml`` and ``.xml``; log the table of
    the items under ``prefix``.

    The database is the process's: a file holds everything sampled in its
    simulator process up to the call.  Returns the YAML path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    yml = directory / f"coverage_{name}.yml"
    coverage_db.export_to_yaml(str(yml))
    coverage_db.export_to_xml(str(directory / f"coverage_{name}.xml"))
    if log is not None:
        log(f"functional coverage ({yml}):\n" + format_table(summary(prefix)))
    return yml


def load(paths: Iterable[str | Path]) -> dict:
    """Merge exported YAML coverage files (cocotb-coverage's merger); returns the merged data."""
    files = [str(p) for p in paths]
    if not files:
        raise ValueError("no coverage files to merge (coverage_*.yml)")
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "merged.yml"
        merge_coverage(lambda _msg: None, str(merged), *files)
        return yaml.safe_load(merged.read_text())


def report(path: str | Path, prefix: str = ROOT) -> str:
    """The merged coverage table of ``path``: one YAML file, or every ``coverage_*.yml`` below a
    directory.  Prints it and returns it."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"coverage path {str(path)!r} does not exist")
    files = sorted(path.rglob("coverage_*.yml")) if path.is_dir() else [path]
    data = load(files)
    items = [
        _summarise(name, d["bins:_hits"], d.get("at_least", 1))
        for name, d in sorted(data.items())
        if name.startswith(prefix) and "bins:_hits" in d
    ]
    table = f"{len(files)} file(s) merged\n" + format_table(items)
    print(table)
    return table
