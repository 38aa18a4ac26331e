"""All-reduce of one gradient chunk as a list of descriptors per node.

Each node holds its local gradient chunk ``G`` and a receive buffer ``R``; the
NIC's RX window for the chunk writes ``R[i] = sat(G[i] + payload[i])`` for a
reduce-add packet and ``R[i] = payload[i]`` for a plain one.  After the
collective, ``R`` holds the same reduced chunk on every node.

* N = 2, exchange: each node sends its whole ``G`` chunk to the other with
  reduce-add; both end with ``sat(G0 + G1)``.
* N > 2, ring (node i transmits to node i+1): the chunk is cut into N
  segments.  Reduce-scatter: in phase s = 0 .. N-2 node i sends segment
  ``i - s`` (from ``G`` at s = 0, else from ``R`` after receiving it) with
  reduce-add; node i then holds segment ``i + 1`` fully reduced.  All-gather:
  in phase s = 0 .. N-2 node i forwards segment ``i + 1 - s`` as a plain
  write.  Segment j is therefore reduced in ring order starting at node j:
  ``sat(...sat(sat(G_j + G_{j+1}) + G_{j+2})... + G_{j-1})``.

A send may leave only after the node has received ``prereq`` bytes into this
chunk's window (arrivals on a ring link are in order), which the firmware
waits for with the window's EXPECT threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

from gradsync.spec.regmap import DMA_ALIGN_BYTES


@dataclass(frozen=True)
class PlannedSend:
    phase: int
    from_recv: bool  #: read from R (else from G)
    offset: int  #: byte offset in the chunk (same in G, R and the peer's R)
    length: int  #: bytes
    reduce: bool
    prereq: int  #: bytes received into the window before this send may go


@dataclass(frozen=True)
class ChunkPlan:
    sends: tuple[PlannedSend, ...]
    expected: int  #: bytes this node receives into the window

    @property
    def thresholds(self) -> tuple[int, ...]:
        """Distinct EXPECT values the firmware arms, in order."""
        return tuple(sorted({s.prereq for s in self.sends if s.prereq > 0} | {self.expected}))


def segments(length: int, nodes: int, align: int = DMA_ALIGN_BYTES) -> list[tuple[int, int]]:
    """(offset, length) of the N ring segments of a chunk, in units of ``align`` bytes
    (``DMA_ALIGN_BYTES``; ``BF16_LENGTH_ALIGN_BYTES`` for a bf16 exchange)."""
    units = length // align
    base, extra = divmod(units, nodes)
    out, off = [], 0
    for j in range(nodes):
        n = (base + (1 if j < extra else 0)) * align
        out.append((off, n))
        off += n
    return out


def chunk_plan(node: int, nodes: int, length: int, align: int = DMA_ALIGN_BYTES) -> ChunkPlan:
    """The sends of ``node`` for one chunk of ``length`` bytes; with ``length`` a multiple
    of ``align`` bytes, so is every send."""
    if nodes < 2:
        return ChunkPlan((), 0)
    if nodes == 2:
        return ChunkPlan((PlannedSend(0, False, 0, length, True, 0),), length)
    segs = segments(length, nodes, align)
    seg = lambda j: segs[j % nodes]  # noqa: E731
    received_after: list[int] = []  # cumulative bytes after each receive phase
    total = 0
    for s in range(nodes - 1):  # reduce-scatter receives segment i-1-s
        total += seg(node - 1 - s)[1]
        received_after.append(total)
    for s in range(nodes - 1):  # all-gather receives segment i-s
        total += seg(node - s)[1]
        received_after.append(total)
    sends = []
    for s in range(nodes - 1):
        off, n = seg(node - s)
        prereq = 0 if s == 0 else received_after[s - 1]
        sends.append(PlannedSend(s, s > 0, off, n, True, prereq))
    for s in range(nodes - 1):
        off, n = seg(node + 1 - s)
        prereq = received_after[nodes - 2 + s]
        sends.append(PlannedSend(nodes - 1 + s, True, off, n, False, prereq))
    return ChunkPlan(tuple(s for s in sends if s.length > 0), total)
