"""What one point of the collective-level simulator is: links, topology, configuration, result.

The simulator (:mod:`gradsync.scale.sim`) runs one data-parallel training
configuration; these dataclasses are its whole interface, used by the CLI
(``gradsync scale``), the sweep runner and the tests.  Times are in device
cycles; the CLI converts Gb/s and ns with the clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gradsync.firmware.schedules import Schedule
from gradsync.spec.hardware import HardwareConfig
from gradsync.spec.link import PACKET_CRC_BYTES, PACKET_HEADER_BYTES


class ScaleConfigError(ValueError):
    """A configuration the simulator cannot run; the message names the option and the value."""


@dataclass(frozen=True)
class ScaleLink:
    """One direction of a link: bandwidth, latency and the packet framing of ``gradsync.spec``."""

    bytes_per_cycle: float
    latency_cycles: int
    max_payload_bytes: int = 4096
    header_bytes: int = PACKET_HEADER_BYTES
    crc_bytes: int = PACKET_CRC_BYTES
    #: receiver apply rate; None: as fast as the link (a gradsync device applies one
    #: 32-bit word per cycle, 4 bytes: :meth:`from_hardware`)
    rx_bytes_per_cycle: float | None = None

    def __post_init__(self) -> None:
        if not self.bytes_per_cycle > 0 or not math.isfinite(self.bytes_per_cycle):
            raise ScaleConfigError(f"link bandwidth must be > 0, not {self.bytes_per_cycle!r}")
        if self.latency_cycles < 0:
            raise ScaleConfigError(f"link latency must be >= 0, not {self.latency_cycles!r}")
        if self.max_payload_bytes <= 0 or self.max_payload_bytes % 4:
            raise ScaleConfigError(
                f"max payload must be a positive multiple of 4 bytes, not {self.max_payload_bytes!r}"
            )

    @classmethod
    def from_gbps(
        cls, gbps: float, latency_ns: float, clock_ghz: float, max_payload_bytes: int = 4096
    ) -> ScaleLink:
        """A link of ``gbps`` Gb/s and ``latency_ns`` on a device clocked at ``clock_ghz``."""
        if not gbps > 0:
            raise ScaleConfigError(f"--link-gbps must be > 0, not {gbps!r}")
        if latency_ns < 0:
            raise ScaleConfigError(f"--link-latency-ns must be >= 0, not {latency_ns!r}")
        if not clock_ghz > 0:
            raise ScaleConfigError(f"--clock-ghz must be > 0, not {clock_ghz!r}")
        return cls(gbps / 8.0 / clock_ghz, round(latency_ns * clock_ghz), max_payload_bytes)

    @classmethod
    def from_hardware(cls, hw: HardwareConfig) -> ScaleLink:
        """The link of a gradsync device (what the golden model and the RTL simulate)."""
        return cls(
            hw.link_bytes_per_cycle,
            hw.link_latency_cycles,
            hw.max_payload_bytes,
            hw.packet_header_bytes,
            hw.packet_crc_bytes,
            rx_bytes_per_cycle=4,
        )


@dataclass(frozen=True)
class Topology:
    """``ring``: every node on one ring of ``link``.  ``hierarchical``: boxes of ``per_box``
    nodes joined by ``intra`` links; each node also sits on a ring of the boxes (``link``),
    over which it reduces its 1/``per_box`` share (reduce-scatter in the box, all-reduce
    across boxes, all-gather in the box)."""

    kind: str = "ring"
    per_box: int = 1
    intra: ScaleLink | None = None

    def check(self, nodes: int) -> None:
        if self.kind not in ("ring", "hierarchical"):
            raise ScaleConfigError(f"--topology must be ring or hierarchical, not {self.kind!r}")
        if self.kind == "hierarchical":
            if self.per_box < 1 or nodes % self.per_box:
                raise ScaleConfigError(f"--per-box {self.per_box} does not divide --nodes {nodes}")
            if self.intra is None:
                raise ScaleConfigError("a hierarchical topology needs an intra-box link")


@dataclass(frozen=True)
class Straggler:
    """``count`` nodes whose compute takes ``factor`` times as long."""

    count: int
    factor: float


@dataclass(frozen=True)
class ScaleConfig:
    workload: object  #: gradsync.workloads.Workload (layers in forward order)
    nodes: int
    schedule: Schedule
    chunk_bytes: int  #: resolved (the CLI resolves ``auto`` with gradsync.scale.chunking)
    link: ScaleLink
    hardware: HardwareConfig = field(default_factory=HardwareConfig)  #: host and DMA costs
    topology: Topology = field(default_factory=Topology)
    stragglers: tuple[Straggler, ...] = ()
    steps: int = 3  #: simulated steps; the reported step is the last one with a successor
    trace: bool = False  #: keep every span for a Perfetto trace (costs memory)


@dataclass
class Span:
    """One interval of the simulated node's timeline (for the Perfetto trace)."""

    track: str  #: "compute", "host", "dma.ring" (or "dma.inter"/"dma.intra"), "rx"
    name: str
    start: float
    end: float
    layer: int = 0
    step: int = 0


@dataclass
class ScaleResult:
    step_cycles: float  #: cycles of the reported step (input load to next input load)
    layer1_ready_cycles: float  #: from the step's start to layer 1's update on every node
    exposed_comm_cycles: float  #: communication active and compute idle, within the step
    compute_cycles: float  #: compute engine busy within the step
    #: per layer (index 0 = layer 1): cycles the next step's forward waited for that layer
    layer_exposed_cycles: list[float]
    #: link name -> busy fraction within the step ("ring", or "intra"/"inter")
    link_utilisation: dict[str, float]
    chunk_bytes: int
    descriptors: int  #: descriptors simulated per node and step
    events: int  #: events the simulator processed
    wall_seconds: float
    spans: list[Span] = field(default_factory=list)
