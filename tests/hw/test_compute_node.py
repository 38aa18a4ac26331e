"""The compute node under Verilator via cocotb against the golden model (tests/hw/cocotb_compute_node.py)."""

import functools

import pytest

from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig

#: Small SRAMs and trace keep the builds quick; timing formulas do not depend on them.
SMALL = dict(scratchpad_words=4096, gradient_words=2048, trace_records=256, cmd_fifo_depth=4)
CONFIGS = {
    "8x8": HardwareConfig(array_rows=8, array_cols=8, vector_lanes=8, **SMALL),
    "4x8": HardwareConfig(array_rows=4, array_cols=8, vector_lanes=4, **SMALL),
}
FMT = FixedPointFormat()


def build(hw):
    from gradsync.hw.compute_node import ComputeNode
    from gradsync.sim.build import build_component

    return build_component(
        functools.partial(ComputeNode, hw, FMT),
        f"compute_node_{hw.array_rows}x{hw.array_cols}",
        params={"hardware": hw.to_dict(), "format": FMT.to_dict()},
    )


#: (config, pauses): both geometries pause-free (cycle-exact), the 8x8 node once more with
#: random idle cycles on every host source (results and command cycles still exact).
RUNS = [("8x8", False), ("4x8", False), ("8x8", True)]


@pytest.mark.rtl
@pytest.mark.parametrize(
    ("config", "pauses"), RUNS, ids=[f"{c}{'-pauses' if p else ''}" for c, p in RUNS]
)
def test_compute_node_verilator(config, pauses, tmp_path):
    from gradsync.sim.build import run_cocotb
    from tests.hw.cocotb_compute_node import node_env

    hw = CONFIGS[config]
    seed = 3 if config == "8x8" else 4
    run_cocotb(
        build(hw),
        "tests.hw.cocotb_compute_node",
        test_dir=tmp_path,
        extra_env=node_env(hw, FMT, seed=seed + 2 * pauses, gemms=24, pauses=pauses),
    )
