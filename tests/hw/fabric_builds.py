"""The fabric models the communication tests share (one Verilator build per fabric size)."""

from __future__ import annotations

import functools

from gradsync.model.numerics import FixedPointFormat
from gradsync.model.timing import HardwareConfig

#: Test configuration: small memories and trace so builds stay quick; real link latency.
HW = HardwareConfig(gradient_words=4096, ring_entries=64, rx_windows=8, link_latency_cycles=30,
                    trace_records=2048)
FMT = FixedPointFormat()


@functools.cache
def fabric_model(nodes: int):
    """Build (or reuse from the cache) the Verilator model of an N-node fabric."""
    from gradsync.firmware import regmap
    from gradsync.hw.fabric import Fabric
    from gradsync.sim.build import build_component
    from tests.hw.cocotb_fabric import fabric_kwargs

    return build_component(Fabric(regmap, num_nodes=nodes, **fabric_kwargs(HW, FMT)),
                           f"comm_fabric{nodes}")


def run(nodes: int, testcase: str, tmp_path, seed: int = 1, **extra) -> None:
    from gradsync.sim.build import run_cocotb
    from tests.hw.cocotb_fabric import fabric_env

    run_cocotb(fabric_model(nodes), "tests.hw.cocotb_fabric", testcase=testcase,
               test_dir=tmp_path, extra_env=fabric_env(nodes, HW, FMT, seed, **extra))
