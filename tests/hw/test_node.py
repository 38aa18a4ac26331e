"""The full node (hw/node.py): port contract, simulation config, and Verilator runs against the model.

The Verilator tests run on node 0 of the shared 2-node cluster build
(``tests/hw/test_cluster.py``), so the node costs no build of its own.
"""

from __future__ import annotations

import pytest

from gradsync.firmware.training import plan_memory
from gradsync.hw.cluster import SIM_HARDWARE, Cluster
from gradsync.hw.compute_node import ComputeNode
from gradsync.hw.fabric import LINK_CONTROLS, LINK_COUNTERS, Fabric
from gradsync.hw.node import HOST_PORTS, Node
from tests.hw.cocotb_cluster import FMT
from tests.hw.test_cluster import run


def test_cluster_ports_are_the_compute_node_ports_prefixed():
    """n{i}_ + ComputeNode's host ports (+ debug port), l{i}_ as Fabric names them."""
    from gradsync import regmap

    compute = set(ComputeNode(SIM_HARDWARE, FMT).signature.members) - {"dma_rd", "dma_wr"}
    assert set(HOST_PORTS) == compute | {"dbg_addr", "dbg_data"}
    cluster = set(Cluster(SIM_HARDWARE, FMT, 3).signature.members)
    fabric = set(Fabric(regmap, num_nodes=3).signature.members)
    for i in range(3):
        assert {f"n{i}_{p}" for p in HOST_PORTS} <= cluster
        links = {f"l{i}_{c}" for c in (*LINK_CONTROLS, *LINK_COUNTERS)}
        assert links <= cluster and links <= fabric
    node = Node(SIM_HARDWARE, FMT, 0, 2)
    assert node.signature.members["dbg_data"].shape == FMT.total_bits


def test_sim_hardware_fits_the_default_training_run():
    """SIM_HARDWARE holds --layers 64,32,10 --global-batch 64 on 2 and 4 nodes, and is not much larger."""
    for nodes in (2, 4):
        lay = plan_memory((64, 32, 10), 64 // nodes, FMT.word_bytes,
                          SIM_HARDWARE.scratchpad_words, SIM_HARDWARE.gradient_words)
        assert lay.grad_window_bytes // FMT.word_bytes <= SIM_HARDWARE.gradient_words
    with pytest.raises(Exception, match="scratchpad"):
        plan_memory((64, 32, 10), 64 // 2, FMT.word_bytes, SIM_HARDWARE.scratchpad_words // 2,
                    SIM_HARDWARE.gradient_words)


def test_node_rejects_bad_parameters():
    with pytest.raises(ValueError, match="node_id"):
        Node(SIM_HARDWARE, FMT, 2, 2)
    with pytest.raises(TypeError, match="HardwareConfig"):
        Node({}, FMT)


@pytest.mark.rtl
@pytest.mark.slow
def test_node_compute_and_descriptors_match_model(tmp_path):
    """Node 0 runs a GEMM, an SGD update and six descriptors concurrently; node 1 receives.
    Every value, return cycle and per-engine trace record equals the golden model's."""
    run(2, "tests.hw.cocotb_cluster", tmp_path, "node", seed=3)


@pytest.mark.rtl
@pytest.mark.slow
def test_node_bulk_regions_and_debug_port(tmp_path):
    run(2, "tests.hw.cocotb_node", tmp_path, "node", seed=1)
