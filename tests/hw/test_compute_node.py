"""The compute node under Verilator via cocotb against the golden model (tests/hw/cocotb_compute_node.py)."""

import functools

import pytest

from gradsync.spec.formats import BFloat16Format, FixedPointFormat
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


# --- the bf16 format: one build, three cocotb tests (tests/hw/cocotb_compute_node_bf16.py) ---

#: 8x8 like the default; SRAMs large enough for a training step of 64-32-10 at batch 32.
BF16_HW = HardwareConfig(
    array_rows=8, array_cols=8, vector_lanes=8, scratchpad_words=8192, gradient_words=8192,
    trace_records=256, cmd_fifo_depth=4,
)  # fmt: skip
BF16 = BFloat16Format()


def build_bf16():
    from gradsync.hw.compute_node import ComputeNode
    from gradsync.sim.build import build_component

    return build_component(
        functools.partial(ComputeNode, BF16_HW, BF16),
        "compute_node_bf16_8x8",
        params={"hardware": BF16_HW.to_dict(), "format": BF16.to_dict()},
    )


@pytest.mark.rtl
@pytest.mark.parametrize("pauses", [False, True], ids=["exact", "pauses"])
def test_compute_node_bf16_verilator(pauses, tmp_path):
    """Training GEMMs (incl. transposed), relu/relu', scale, SGD and conversions between the
    banks, refusals: bits and cycles equal the golden model's; with random host pauses the
    results and command cycles still do. The same build serves both runs."""
    from gradsync.sim.build import run_cocotb
    from tests.hw.cocotb_compute_node import node_env

    model = build_bf16()
    print(f"bf16 compute node: build {model.info.get('build_seconds')} s, "
          f"Verilog {model.info.get('verilog_seconds')} s")  # fmt: skip
    run_cocotb(
        model,
        "tests.hw.cocotb_compute_node_bf16",
        test_dir=tmp_path,
        extra_env=node_env(BF16_HW, BF16, seed=11 + pauses, gemms=12, pauses=pauses),
    )
