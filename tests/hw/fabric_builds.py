"""The fabric models the communication tests share (one Verilator build per fabric variant)."""

from __future__ import annotations

import dataclasses
import functools

from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig

#: Test configuration: small memories and trace so builds stay quick; real link latency.
HW = HardwareConfig(gradient_words=4096, ring_entries=64, rx_windows=8, link_latency_cycles=30,
                    trace_records=2048)
FMT = FixedPointFormat()


def hardware(bytes_per_cycle: int = 4) -> HardwareConfig:
    return dataclasses.replace(HW, link_bytes_per_cycle=bytes_per_cycle)


@functools.cache
def fabric_model(nodes: int, bytes_per_cycle: int = 4):
    """Build (or reuse from the cache) the Verilator model of an N-node fabric."""
    from gradsync.hw.fabric import Fabric
    from gradsync.sim.build import build_component
    from gradsync.spec import regmap
    from tests.hw.cocotb_fabric import fabric_kwargs

    hw = hardware(bytes_per_cycle)
    suffix = "" if bytes_per_cycle == 4 else f"_b{bytes_per_cycle}"
    kwargs = fabric_kwargs(hw, FMT)
    return build_component(functools.partial(Fabric, regmap, num_nodes=nodes, **kwargs),
                           f"comm_fabric{nodes}{suffix}",
                           params={"regmap": regmap.__name__, "num_nodes": nodes, **kwargs})


def run(nodes: int, testcase: str, tmp_path, seed: int = 1, bytes_per_cycle: int = 4,
        **extra) -> None:
    """Run one scenario of ``tests/hw/cocotb_fabric.py`` on the N-node fabric."""
    from gradsync.sim.build import run_cocotb
    from tests.hw.cocotb_fabric import fabric_env

    run_cocotb(fabric_model(nodes, bytes_per_cycle), "tests.hw.cocotb_fabric", testcase=testcase,
               test_dir=tmp_path,
               extra_env=fabric_env(nodes, hardware(bytes_per_cycle), FMT, seed, **extra))
