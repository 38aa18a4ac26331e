# amaranth: UnusedElaboratable=no
"""N-node fabric: exchange and ring all-reduce under Verilator against NumPy and the golden model."""

import pytest

from gradsync.hw.fabric import CommNode, Fabric
from gradsync.spec import regmap


@pytest.mark.parametrize("bad", [{"num_nodes": 1}])
def test_fabric_rejects_bad_parameters(bad):
    with pytest.raises(ValueError, match="not"):
        Fabric(regmap, **bad)


@pytest.mark.parametrize("bad", [{"node_id": 2, "num_nodes": 2}, {"gradient_words": 3000},
                                 {"operand_bits": 12}])
def test_node_rejects_bad_parameters(bad):
    with pytest.raises(ValueError, match="not"):
        CommNode(regmap, **bad)


@pytest.mark.rtl
def test_two_node_exchange_bit_and_cycle_exact(tmp_path):
    from tests.hw.fabric_builds import run

    run(2, "allreduce", tmp_path, seed=4, words=2048)


@pytest.mark.rtl
@pytest.mark.slow
def test_four_node_ring_allreduce_bit_and_cycle_exact(tmp_path):
    from tests.hw.fabric_builds import run

    run(4, "allreduce", tmp_path, seed=6, words=1024)


@pytest.mark.rtl
@pytest.mark.slow
def test_four_node_random_descriptors(tmp_path):
    from tests.hw.fabric_builds import run

    run(4, "dma_random_descriptors", tmp_path, seed=8, descriptors=8)


@pytest.mark.rtl
@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["dma_random_descriptors", "allreduce"])
def test_two_bytes_per_cycle_link_matches_model(scenario, tmp_path):
    """A half-rate link: every chunk, packet and trace cycle still equals the model's formulas."""
    from tests.hw.fabric_builds import run

    run(2, scenario, tmp_path, seed=12, bytes_per_cycle=2)
