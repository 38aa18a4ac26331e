"""The record a training run leaves in ``--out DIR`` (contract: ``docs/outputs.md``).

``results.json`` (config, per-step metrics, totals), ``weights/step_KKKK.npz``
(weights at the start of every step and the final ones), ``trace.json``
(Chrome/Perfetto trace events, ts/dur in cycles) and ``timeline.png``
(matplotlib Gantt chart).  Backend-independent: it reads a
:class:`~gradsync.firmware.experiment.RunResult`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gradsync import __version__
from gradsync.firmware import data as digits
from gradsync.firmware.experiment import Interval, RunResult, intervals
from gradsync.spec import regmap as rm

FORMAT_VERSION = 1

_CAT = {
    rm.Engine.COMPUTE: "compute",
    rm.Engine.VECTOR: "vector",
    rm.Engine.DMA_HI: "dma",
    rm.Engine.DMA_LO: "dma",
    rm.Engine.NIC_TX: "link",
    rm.Engine.NIC_RX: "link",
    rm.Engine.HOST: "host",
}


def results_dict(res: RunResult, backend: str) -> dict:
    cfg = res.config.to_dict()
    cfg["chunk_bytes_resolved"] = res.chunk_bytes
    cfg["data"] = {
        "name": "digits",
        "input_scale": digits.INPUT_SCALE,
        "train_indices": res.data.train_indices.tolist(),
        "test_indices": res.data.test_indices.tolist(),
    }
    total = res.total_cycles
    return {
        "format_version": FORMAT_VERSION,
        "gradsync_version": __version__,
        "backend": backend,
        "config": cfg,
        "steps": [
            {
                "step": m.step,
                "loss": m.loss,
                "accuracy": m.accuracy,
                "cycles": m.cycles,
                "start_cycle": m.start_cycle,
                "layer1_ready_cycle": m.layer1_ready_cycle,
                "exposed_comm_cycles": m.exposed_comm_cycles,
                "batch_indices": m.batch_indices,
            }
            for m in res.steps
        ],
        "totals": {
            "cycles": total,
            "wall_seconds": res.wall_seconds,
            "simulated_cycles_per_second": total / res.wall_seconds
            if res.wall_seconds > 0
            else None,
        },
    }


def event_name(iv: Interval) -> str:
    kind = rm.KIND_NAMES.get(iv.kind, "other")
    if iv.engine in (rm.Engine.DMA_HI, rm.Engine.DMA_LO, rm.Engine.NIC_TX):
        return f"send L{iv.layer} c{iv.chunk}"
    if iv.engine == rm.Engine.NIC_RX:
        return f"recv L{iv.layer} c{iv.chunk}"
    if iv.engine == rm.Engine.HOST:
        return kind
    return f"{kind} L{iv.layer}"


def trace_events(records: list[list[rm.TraceRecord]], ivs: list[Interval] | None = None) -> dict:
    """Chrome trace events of every node's records (``ivs``: their intervals, if already paired)."""
    if ivs is None:
        ivs = [iv for node, recs in enumerate(records) for iv in intervals(recs, node)]
    by_node: dict[int, list[Interval]] = {}
    for iv in ivs:
        by_node.setdefault(iv.node, []).append(iv)
    events: list[dict] = []
    for node, recs in enumerate(records):
        events.append(
            {"name": "process_name", "ph": "M", "pid": node, "args": {"name": f"node {node}"}}
        )
        for eng, name in rm.ENGINE_NAMES.items():
            events.append(
                {
                    "name": "thread_name",
                    "ph": "M",
                    "pid": node,
                    "tid": int(eng),
                    "args": {"name": name},
                }
            )
            events.append(
                {
                    "name": "thread_sort_index",
                    "ph": "M",
                    "pid": node,
                    "tid": int(eng),
                    "args": {"sort_index": int(eng)},
                }
            )
        for iv in by_node.get(node, []):
            eng = rm.Engine(iv.engine)
            args = {
                "step": iv.step,
                "layer": iv.layer,
                "chunk": iv.chunk,
                "kind": rm.KIND_NAMES.get(iv.kind, "other"),
            }
            if eng in (
                rm.Engine.DMA_HI,
                rm.Engine.DMA_LO,
                rm.Engine.NIC_TX,
                rm.Engine.NIC_RX,
                rm.Engine.HOST,
            ):
                args["bytes"] = iv.aux
            if eng in (rm.Engine.DMA_HI, rm.Engine.DMA_LO):
                args["queue"] = "hi" if eng == rm.Engine.DMA_HI else "lo"
            events.append(
                {
                    "name": event_name(iv),
                    "cat": _CAT[eng],
                    "ph": "X",
                    "ts": iv.start,
                    "dur": iv.end - iv.start,
                    "pid": node,
                    "tid": int(eng),
                    "args": args,
                }
            )
        for r in recs:
            if r.event == rm.TraceEvent.ERROR:
                events.append(
                    {
                        "name": f"error {rm.ErrorCode(r.aux).name}",
                        "cat": _CAT[rm.Engine(r.engine)],
                        "ph": "i",
                        "s": "t",
                        "ts": r.cycle,
                        "pid": node,
                        "tid": int(r.engine),
                    }
                )
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {"time_unit": "cycles", "note": "ts and dur are device clock cycles"},
    }


def overtakes(ivs: list[Interval]) -> list[Interval]:
    """NIC_TX intervals of chunks sent ahead of an upper layer's remaining chunks.

    A chunk of layer L on node n in step k overtakes when it is sent (its
    NIC_TX interval ends) before the last chunk of some layer above L of the
    same node and step is sent: the order ``priority`` chooses and ``fifo``
    never does.
    """
    tx: dict[tuple[int, int], list[Interval]] = {}
    for iv in ivs:
        if iv.engine == rm.Engine.NIC_TX:
            tx.setdefault((iv.node, iv.step), []).append(iv)
    out = []
    for sends in tx.values():
        last = {}
        for iv in sends:
            last[iv.layer] = max(last.get(iv.layer, iv.end), iv.end)
        for iv in sends:
            if any(end > iv.end for layer, end in last.items() if layer > iv.layer):
                out.append(iv)
    return sorted(out, key=lambda iv: (iv.node, iv.start))


#: Timeline rows of one node, top to bottom: the host that feeds it, then its engines.
TIMELINE_ENGINES = (
    rm.Engine.HOST,
    rm.Engine.COMPUTE,
    rm.Engine.VECTOR,
    rm.Engine.DMA_HI,
    rm.Engine.DMA_LO,
    rm.Engine.NIC_TX,
    rm.Engine.NIC_RX,
)
HOST_COLOR = "0.6"


def write_timeline(res: RunResult, path: Path, max_steps: int = 3) -> None:
    """Gantt chart of the first ``max_steps`` steps: each node's rows together (host first).

    Bars are coloured by layer (host transfers grey); black lines start the
    steps, numbered on top; a red dashed line per step marks layer 1 ready
    (its reduced gradients applied on every node); a triangle above ``nic.tx``
    marks each chunk that overtakes an upper layer's remaining ones
    (:func:`overtakes`).  The legend sits right of the chart.  x is in cycles.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    nodes = len(res.records)
    steps = res.steps[:max_steps]
    hi = steps[-1].start_cycle + steps[-1].cycles if steps else res.total_cycles
    lo = steps[0].start_cycle if steps else 0
    rows = [(n, e) for n in range(nodes) for e in TIMELINE_ENGINES]
    index = {r: i for i, r in enumerate(rows)}
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(15, 0.32 * len(rows) + 2.2), layout="constrained")
    shown = [iv for iv in res.intervals if iv.end >= lo and iv.start <= hi]
    bars: dict[int, tuple[list, list]] = {}
    for iv in shown:
        y = index[(iv.node, rm.Engine(iv.engine))]
        color = HOST_COLOR if iv.engine == rm.Engine.HOST else cmap((iv.layer - 1) % 10)
        spans, colors = bars.setdefault(y, ([], []))
        spans.append((iv.start, max(iv.end - iv.start, 1)))
        colors.append(color)
    for y, (spans, colors) in bars.items():
        ax.broken_barh(spans, (y - 0.4, 0.8), facecolors=colors)
    ahead = overtakes(shown)
    if ahead:
        ax.plot(
            [(iv.start + iv.end) / 2 for iv in ahead],
            [index[(iv.node, rm.Engine.NIC_TX)] - 0.62 for iv in ahead],
            "v",
            color="k",
            ms=5,
            clip_on=False,
        )
    top = ax.get_xaxis_transform()  # x in cycles, y in axes fraction
    for m in steps:
        ax.axvline(m.start_cycle, color="k", lw=1)
        ax.text(
            m.start_cycle + m.cycles / 2,
            1.01,
            f"step {m.step}",
            transform=top,
            ha="center",
            va="bottom",
            fontsize=10,
            weight="bold",
        )
        if m.layer1_ready_cycle >= 0:
            ax.axvline(m.start_cycle + m.layer1_ready_cycle, color="r", ls="--", lw=1.2)
    for n in range(1, nodes):
        ax.axhline(n * len(TIMELINE_ENGINES) - 0.5, color="0.3", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"node {n}  {rm.ENGINE_NAMES[e]}" for n, e in rows], fontsize=9)
    ax.set_ylim(len(rows) - 0.5, -0.9)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("cycle (from the start of the run)")
    layers = len(res.config.layers) - 1
    handles = [Patch(color=cmap(i % 10), label=f"layer {i + 1}") for i in range(layers)]
    handles += [
        Patch(color=HOST_COLOR, label="host transfer"),
        Line2D([0], [0], color="k", lw=1, label="step start"),
        Line2D([0], [0], color="r", ls="--", lw=1.2, label="layer 1 ready"),
        Line2D(
            [0],
            [0],
            marker="v",
            color="k",
            ls="",
            ms=6,
            label="chunk sent ahead of an\nupper layer's remaining ones",
        ),
    ]
    ax.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.005, 1.0),
        fontsize=9,
        title="layer = colour of its\ncompute and chunks",
        title_fontsize=8,
    )
    cfg = res.config
    ax.set_title(
        f"{cfg.schedule}: {nodes} node{'s' if nodes != 1 else ''}, layers "
        f"{','.join(map(str, cfg.layers))}, chunk {res.chunk_bytes} B, link "
        f"{cfg.hardware.link_bytes_per_cycle} B/cycle (first {len(steps)} "
        f"step{'s' if len(steps) != 1 else ''})",
        pad=22,
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(res: RunResult, out: Path, backend: str, extra: dict | None = None) -> None:
    """Write the run's record into ``out``; ``extra`` adds backend-specific top-level
    keys to results.json (the RTL backend's ``rtl`` record)."""
    out.mkdir(parents=True, exist_ok=True)
    results = results_dict(res, backend)
    results.update(extra or {})
    (out / "results.json").write_text(json.dumps(results, indent=1))
    wdir = out / "weights"
    wdir.mkdir(exist_ok=True)
    frac = res.config.fixed_point.frac_bits
    for k, layers in enumerate(res.weights):
        arrays = {}
        for i, w in enumerate(layers, start=1):
            arrays[f"layer{i}"] = w.astype(np.float64) * 2.0**-frac
            arrays[f"layer{i}_raw"] = w.astype(np.int64)
        np.savez(wdir / f"step_{k:04d}.npz", **arrays)
    (out / "trace.json").write_text(json.dumps(trace_events(res.records, res.intervals)))
    write_timeline(res, out / "timeline.png")
