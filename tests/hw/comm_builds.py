"""The communication-only clusters the DMA/NIC block tests share (one Verilator build each).

``Cluster(..., compute=False)``: every node is ``hw/node.py``'s :class:`Node`
without the compute half -- the one CSR block, bulk port, SRAMs, DMA engine
and NIC of the full node -- so it builds several times faster than the full
cluster of ``tests/hw/test_cluster.py``.
"""

from __future__ import annotations

import dataclasses
import functools

from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig

#: Test configuration: small memories and trace so builds stay quick; real link latency.
HW = HardwareConfig(
    scratchpad_words=1024,
    gradient_words=4096,
    ring_entries=64,
    rx_windows=8,
    link_latency_cycles=30,
    trace_records=2048,
)
FMT = FixedPointFormat()


def hardware(bytes_per_cycle: int = 4) -> HardwareConfig:
    return dataclasses.replace(HW, link_bytes_per_cycle=bytes_per_cycle)


@functools.cache
def comm_model(nodes: int, bytes_per_cycle: int = 4):
    """Build (or reuse from the cache) the Verilator model of an N-node communication cluster."""
    from gradsync.hw.cluster import Cluster
    from gradsync.sim.build import build_component

    hw = hardware(bytes_per_cycle)
    suffix = "" if bytes_per_cycle == 4 else f"_b{bytes_per_cycle}"
    return build_component(
        functools.partial(Cluster, hw, FMT, nodes, compute=False),
        f"comm{nodes}{suffix}",
        params={
            "hardware": hw.to_dict(),
            "format": FMT.to_dict(),
            "nodes": nodes,
            "compute": False,
        },
    )


def run(
    nodes: int, testcase: str, tmp_path, seed: int = 1, bytes_per_cycle: int = 4, **extra
) -> None:
    """Run one scenario of ``tests/hw/cocotb_comm.py`` on the N-node communication cluster."""
    from gradsync.sim.build import run_cocotb
    from tests.hw.cocotb_comm import comm_env

    run_cocotb(
        comm_model(nodes, bytes_per_cycle),
        "tests.hw.cocotb_comm",
        testcase=testcase,
        test_dir=tmp_path,
        extra_env=comm_env(nodes, hardware(bytes_per_cycle), FMT, seed, **extra),
    )
