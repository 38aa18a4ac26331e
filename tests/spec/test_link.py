"""Link framing and chunk timing (gradsync.spec.link) against values worked by hand."""

from __future__ import annotations

import pytest

from gradsync.spec import link as lk
from gradsync.spec.formats import DEFAULT_FORMAT
from gradsync.spec.hardware import HardwareConfig, constant_registers

LINK = lk.LinkConfig(bytes_per_cycle=4, latency_cycles=50, max_payload_bytes=256)


def test_packet_and_chunk_cycles_by_hand():
    # 12 header + 256 payload + 4 CRC = 272 bytes at 4 B/cycle
    assert lk.packet_cycles(256, LINK) == 68
    assert lk.packet_payloads(600, LINK) == [256, 256, 88]
    assert lk.chunk_tx_cycles(600, LINK) == 68 + 68 + 26
    # 1 B/cycle: every byte a cycle
    slow = lk.LinkConfig(bytes_per_cycle=1, latency_cycles=0, max_payload_bytes=64)
    assert lk.chunk_tx_cycles(100, slow) == (16 + 64) + (16 + 36)


def test_auto_chunk_meets_target_and_is_smallest():
    chunk = lk.auto_chunk_bytes(LINK, word_bytes=2)
    # by hand: 1024 B = 4 packets of 272 wire bytes = 272 cycles; +50 latency; 1024/(4*322) = 0.795
    assert lk.link_efficiency(1024, LINK) == pytest.approx(1024 / (4 * 322))
    # 1280 B = 5 packets = 340 cycles; +50; 1280 / (4 * 390) = 0.8205
    assert lk.link_efficiency(1280, LINK) == pytest.approx(1280 / (4 * 390))
    assert chunk == 1280


def test_auto_chunk_is_smallest_candidate_meeting_efficiency():
    link = HardwareConfig(link_latency_cycles=200).link
    chunk = lk.auto_chunk_bytes(link, 2, 0.8)
    assert lk.link_efficiency(chunk, link) >= 0.8
    assert chunk == link.max_payload_bytes or lk.link_efficiency(chunk - 256, link) < 0.8


def test_auto_chunk_caps_at_64_packets_and_rejects_bad_target():
    hopeless = lk.LinkConfig(bytes_per_cycle=4, latency_cycles=10**6, max_payload_bytes=256)
    assert lk.auto_chunk_bytes(hopeless, 2) == 64 * 256
    with pytest.raises(ValueError, match=r"target_efficiency must be in \(0, 1\), not 1\.5"):
        lk.auto_chunk_bytes(LINK, 2, 1.5)


@pytest.mark.parametrize(
    "bpc, latency, payload", [(4, 50, 256), (1, 200, 128), (8, 20, 512), (2, 0, 64)]
)
def test_firmware_reads_the_link_the_hardware_was_built_with(bpc, latency, payload):
    """The firmware's view (decoded from LINK_* registers) equals the configured link."""
    hw = HardwareConfig(
        link_bytes_per_cycle=bpc, link_latency_cycles=latency, max_payload_bytes=payload
    )
    regs = constant_registers(hw, DEFAULT_FORMAT)
    seen = lk.LinkConfig.from_registers(
        regs["LINK_INFO"], regs["LINK_LATENCY"], regs["LINK_MAX_PAYLOAD"]
    )
    assert seen == hw.link
    assert lk.auto_chunk_bytes(seen, 2) == lk.auto_chunk_bytes(hw.link, 2)


def test_nic_timeouts_by_hand():
    # longest packet 16 + 256 bytes = 68 words = 272 bytes at 4 B/cycle = 68 cycles
    rtt = 2 * 50 + 68 + 16
    assert lk.nic_timeouts(LINK) == (2 * rtt + 64, rtt)
