# amaranth: UnusedElaboratable=no
"""DMA engine: regmap agreement, parameter checks, and under Verilator against the golden model."""

import pytest

from gradsync.firmware import regmap as rm
from gradsync.hw import dma, nic
from gradsync.model import timing as tm
from tests.hw.fabric_builds import HW


def test_engine_constants_match_the_register_map():
    """hw may not import the firmware, so the copies of its facts are checked here."""
    assert dma.DESCRIPTOR_VERSION == rm.DESCRIPTOR_VERSION
    assert dma.DESCRIPTOR_WORDS == rm.DESCRIPTOR_WORDS == tm.DESCRIPTOR_WORDS
    assert (dma.FLAG_REDUCE_ADD, dma.FLAG_IRQ, dma.FLAG_FENCE) == (
        rm.DescFlag.REDUCE_ADD, rm.DescFlag.IRQ, rm.DescFlag.FENCE)
    E = rm.ErrorCode
    assert (dma.ERR_BAD_VERSION, dma.ERR_ZERO_LENGTH, dma.ERR_MISALIGNED, dma.ERR_OUT_OF_WINDOW,
            dma.ERR_UNKNOWN_PEER, dma.ERR_RING_FULL) == (
        E.BAD_VERSION, E.ZERO_LENGTH, E.MISALIGNED, E.OUT_OF_WINDOW, E.UNKNOWN_PEER, E.RING_FULL)
    assert (nic.RX_NO_WINDOW, nic.RX_TAG_MISMATCH, nic.RX_OUT_OF_WINDOW) == (
        E.RX_NO_WINDOW, E.RX_TAG_MISMATCH, E.RX_OUT_OF_WINDOW)
    assert rm.DMA_ALIGN_BYTES == 4
    # RX window register order of nic.WIN_* is the regmap's
    names = ["CTRL", "DST", "SRC", "LEN", "TAG", "EXPECT", "RECEIVED"]
    for idx, name in enumerate(names):
        assert rm.rx_window_reg(0, name) - rm.RX_WINDOW_BASE == 4 * idx
    # packet framing is the model's header + CRC
    assert HW.packet_header_bytes == nic.HEADER_WORDS * 4 and HW.packet_crc_bytes == 4


@pytest.mark.parametrize("bad", [
    {"queues": 1}, {"ring_words": 1000}, {"max_payload_bytes": 6}, {"src_regions": ()},
    {"ring_base_addr": 0x3000_0004},
])
def test_engine_rejects_bad_parameters(bad):
    with pytest.raises(ValueError, match="not"):
        dma.DmaEngine(**bad)


@pytest.mark.rtl
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_dma_random_descriptors_match_model(seed, tmp_path):
    """Both queues of both nodes, random doorbell times: bytes, guards, statuses and cycles."""
    from tests.hw.fabric_builds import run

    run(2, "dma_random_descriptors", tmp_path, seed=seed, descriptors=16)


@pytest.mark.rtl
@pytest.mark.parametrize("seed", [1, 5])
def test_dma_high_priority_overtakes_within_model_bound(seed, tmp_path):
    from tests.hw.fabric_builds import run

    run(2, "priority_overtake", tmp_path, seed=seed)


@pytest.mark.rtl
def test_dma_descriptor_fuzz_500(tmp_path):
    """500 random valid/invalid descriptors, error code and memory checked for each."""
    from tests.hw.fabric_builds import run

    run(2, "descriptor_fuzz", tmp_path, seed=11, descriptors=500)
