"""The N-node cluster (hw/cluster.py) under Verilator against the golden model.

Full nodes run host programs on both (``tests/hw/cocotb_cluster.py``); the
exchange and ring all-reduce of the communication half run on clusters of
communication-only nodes (``tests/hw/cocotb_comm.py``, ``tests/hw/comm_builds.py``).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from gradsync.model import numerics as nx
from gradsync.spec.hardware import DEFAULT_HARDWARE
from tests.hw.cocotb_cluster import BUF_WORDS, CHUNKS, FMT, corner_words, model_logs


def cluster_model(nodes: int):
    """The (cached) Verilator model of an N-node cluster of DEFAULT_HARDWARE, as the public
    ``gradsync.sim.testbench.build`` makes it for users' testbenches."""
    from gradsync.sim.testbench import build

    return build("cluster", nodes=nodes, hardware=DEFAULT_HARDWARE, fmt=FMT).built


def run(nodes: int, module: str, tmp_path, scenario: str = "exchange", seed: int = 1) -> None:
    from gradsync.sim.build import run_cocotb
    from tests.hw.cocotb_cluster import cluster_env

    run_cocotb(
        cluster_model(nodes),
        module,
        test_dir=tmp_path,
        extra_env=cluster_env(scenario, nodes, seed, DEFAULT_HARDWARE),
    )


def test_exchange_scenario_reduces_on_the_model():
    """The scenario is meaningful: the model's R is sat(local + peer) (plain chunk: peer), rails hit."""
    logs = model_logs("exchange", 2, 1, DEFAULT_HARDWARE)
    g = [corner_words(np.random.default_rng(100 + i), BUF_WORDS) for i in range(2)]
    for i in range(2):
        r = np.array(next(e[2] for e in logs[i] if e[0] == "R"))
        peer = g[(i - 1) % 2]
        for off, length, _, how in CHUNKS:
            s = slice(off // FMT.word_bytes, (off + length) // FMT.word_bytes)
            want = peer[s] if how == "plain" else nx.add_saturating(g[i][s], peer[s], FMT)
            assert (r[s] == want).all(), (i, off)
        assert (r[BUF_WORDS:] == 0x1234).all(), "guard words after R were written"
        assert ((r == FMT.qmax) | (r == FMT.qmin)).sum() > 50
        regs = next(e[2] for e in logs[i] if e[0] == "regs")
        assert regs["RX_DROPS"] == 1 and regs["DMA1_ERRORS"] == 1
        trace = next(e[2] for e in logs[i] if e[0] == "trace")
        assert {"0", "1", "2", "3", "4", "5", "6"} <= set(trace), sorted(trace)


@pytest.mark.rtl
@pytest.mark.slow
def test_cluster2_exchange_matches_model(tmp_path):
    """2 nodes exchange and reduce a buffer (with compute running, FENCE, errors): all values, cycles, traces."""
    run(2, "tests.hw.cocotb_cluster", tmp_path, "exchange", seed=1)


@pytest.mark.rtl
@pytest.mark.slow
def test_cluster4_ring_matches_model(tmp_path):
    """A 4-node ring: every node sends its buffer to the next and reduces its predecessor's."""
    run(4, "tests.hw.cocotb_cluster", tmp_path, "exchange", seed=2)


@pytest.mark.parametrize("nodes", [1, 2.0])
def test_cluster_rejects_bad_parameters(nodes):
    from gradsync.hw.cluster import Cluster

    with pytest.raises(
        ValueError, match=re.escape(f"num_nodes must be an int >= 2, not {nodes!r}")
    ):
        Cluster(DEFAULT_HARDWARE, FMT, nodes)


def test_communication_only_cluster_has_the_full_node_ports_and_compute_done():
    """Cluster(compute=False): the same n{i}_/l{i}_ ports, plus the stand-in n{i}_compute_done."""
    from gradsync.hw.cluster import Cluster

    full = Cluster(DEFAULT_HARDWARE, FMT, 2).signature.members
    comm = Cluster(DEFAULT_HARDWARE, FMT, 2, compute=False).signature.members
    assert set(comm) - set(full) == {"n0_compute_done", "n1_compute_done"}
    assert set(full) <= set(comm)


@pytest.mark.rtl
def test_two_node_exchange_bit_and_cycle_exact(tmp_path):
    """2 nodes exchange and reduce-add 2048 words: bit-exact to NumPy (with saturation),
    memories, registers and every DMA/NIC trace record cycle-exact to the model."""
    from tests.hw.comm_builds import run

    run(2, "allreduce", tmp_path, seed=4, words=2048)


@pytest.mark.rtl
def test_two_node_exchange_with_bus_pauses_matches_model(tmp_path):
    """Random idle cycles on the host's AXI4-Lite and bulk load channels: the same results."""
    from tests.hw.comm_builds import run

    run(2, "allreduce", tmp_path, seed=5, words=2048, pauses=True)


@pytest.mark.rtl
@pytest.mark.slow
def test_four_node_ring_allreduce_bit_and_cycle_exact(tmp_path):
    from tests.hw.comm_builds import run

    run(4, "allreduce", tmp_path, seed=6, words=1024)


@pytest.mark.rtl
@pytest.mark.slow
def test_four_node_random_descriptors(tmp_path):
    from tests.hw.comm_builds import run

    run(4, "dma_random_descriptors", tmp_path, seed=8, descriptors=8)


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["dma_random_descriptors", "allreduce"])
def test_two_bytes_per_cycle_link_matches_model(scenario, tmp_path):
    """A half-rate link: every chunk, packet and trace cycle still equals the model's formulas."""
    from tests.hw.comm_builds import run

    run(2, scenario, tmp_path, seed=12, bytes_per_cycle=2)
