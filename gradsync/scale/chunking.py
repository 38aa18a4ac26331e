"""The chunk-size answer: rules that pick a chunk size from the link, and the best over a grid.

A chunk is cut by the collective into sends (one per ring phase): N segments
on a ring, the whole chunk for N = 2.  Each send pays a descriptor, per-packet
framing and, on a ring, the chain's latency; small chunks let lower layers
overtake sooner.  Two rules of the seed:

``efficiency``
    the smallest send (whole packets) whose link efficiency
    ``send / (bytes_per_cycle * (descriptor cycles + latency))`` reaches a
    target (0.8 by default, as ``gradsync train --chunk-bytes auto``), times
    the sends per chunk;
``time``
    the chunk whose all-reduce alone on an idle ring takes a target time
    (``target`` cycles), from the same per-send costs.

:data:`DEFAULT_RULE` is the one ``--chunk-bytes auto`` uses; it was chosen with
:func:`study` (``bench/bench_chunk_rule.py``), whose numbers are in
``docs/scale_model.md``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gradsync.scale.config import ScaleConfig, ScaleConfigError
from gradsync.scale.sim import chunk_phases, host_reaction_cycles, send_cycles, simulate
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm

#: rule name -> default target
RULES = {"efficiency": 0.8, "time": 50_000}
DEFAULT_RULE = ("efficiency", 0.5)
#: chunk sizes :func:`best_chunk` tries by default: 16 KiB .. 64 MiB, powers of two
GRID = tuple(1 << k for k in range(14, 27))


def sends_per_chunk(cfg: ScaleConfig) -> int:
    """How many parts the collective cuts a chunk into (the send size is chunk / parts)."""
    if cfg.nodes < 2:
        return 1
    return 1 if cfg.nodes == 2 else cfg.nodes


def _align(n: float) -> int:
    a = rm.DMA_ALIGN_BYTES
    return max(a, int(math.ceil(n / a)) * a)


def rule_chunk_bytes(
    cfg: ScaleConfig, rule: str = "efficiency", target: float | None = None
) -> int:
    """The chunk size ``rule`` picks for ``cfg``'s link and node count (its chunk is ignored)."""
    if rule not in RULES:
        raise ScaleConfigError(f"chunk rule must be one of {sorted(RULES)}, not {rule!r}")
    target = RULES[rule] if target is None else target
    link = cfg.link
    parts = sends_per_chunk(cfg)
    if rule == "efficiency":
        if not 0 < target < 1:
            raise ScaleConfigError(f"efficiency target must be in (0, 1), not {target!r}")
        mp = link.max_payload_bytes
        send = mp
        for packets in range(1, 1 << 16):
            send = packets * mp
            busy = send_cycles(send, link, cfg.hardware) + link.latency_cycles
            if send / (link.bytes_per_cycle * busy) >= target:
                break
        return _align(send * parts)
    if not target > 0:
        raise ScaleConfigError(f"time target must be > 0 cycles, not {target!r}")
    # all-reduce of one chunk alone: every phase is a send, its flight and the host's reaction
    phases = max(1, len(chunk_phases(parts * 4096, cfg.nodes)))
    hw = cfg.hardware
    per_phase_fixed = (
        tm.descriptor_fetch_cycles(hw) + link.latency_cycles + host_reaction_cycles(hw)
    )
    budget = target / phases - per_phase_fixed
    send = max(link.max_payload_bytes, budget * link.bytes_per_cycle)
    return _align(send * parts)


def auto_chunk_bytes(cfg: ScaleConfig, rule: tuple[str, float] | None = None) -> int:
    """``--chunk-bytes auto``: the default rule's chunk, capped at the largest layer's gradients."""
    name, target = rule or DEFAULT_RULE
    chunk = rule_chunk_bytes(cfg, name, target)
    largest = max((ly.grad_bytes for ly in cfg.workload.layers), default=rm.DMA_ALIGN_BYTES)
    return min(chunk, _align(largest))


@dataclass(frozen=True)
class ChunkSearch:
    best_chunk: int
    best_step_cycles: float
    #: chunk bytes -> step cycles, for every chunk tried
    steps: dict[int, float]


def best_chunk(cfg: ScaleConfig, grid: tuple[int, ...] = GRID) -> ChunkSearch:
    """Simulate ``cfg`` at every chunk size of ``grid`` (those no larger than the largest
    layer's gradients) and return the fastest."""
    largest = max(ly.grad_bytes for ly in cfg.workload.layers)
    steps = {}
    for chunk in grid:
        if chunk > _align(largest):
            continue
        steps[chunk] = simulate(dataclasses.replace(cfg, chunk_bytes=chunk)).step_cycles
    if not steps:
        raise ScaleConfigError(f"no chunk of the grid fits the largest layer ({largest} bytes)")
    best = min(steps, key=lambda c: (steps[c], c))
    return ChunkSearch(best, steps[best], steps)


def study(cfg: ScaleConfig, rules: list[tuple[str, float]], grid: tuple[int, ...] = GRID) -> dict:
    """For one configuration: the best chunk, and each rule's chunk and its gap to the best."""
    search = best_chunk(cfg, grid)
    out = {
        "best_chunk": search.best_chunk,
        "best_step_cycles": search.best_step_cycles,
        "rules": {},
    }
    for name, target in rules:
        chunk = auto_chunk_bytes(cfg, (name, target))
        step = simulate(dataclasses.replace(cfg, chunk_bytes=chunk)).step_cycles
        out["rules"][f"{name}={target:g}"] = {
            "chunk": chunk,
            "step_cycles": step,
            "gap": step / search.best_step_cycles - 1,
        }
    return out
