"""Links of 8 bytes/cycle in the spec (issue 14, item 3): the width bound, LINK_SET, formulas, CLI.

Every number below is worked by hand from the packet format (12-byte header, 4-byte CRC)
and the link width; none is read back from the code under test.
"""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from gradsync.cli import main
from gradsync.cmd_train import add_config_arguments, config_from_args
from gradsync.spec import limits
from gradsync.spec import link as lk
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.formats import DEFAULT_FORMAT
from gradsync.spec.hardware import HardwareConfig, build_config, constant_registers


def test_bandwidths_and_widths():
    assert lk.LINK_BYTES_PER_CYCLE == (1, 2, 4, 8)
    assert lk.LINK_WIDTHS_BYTES == (4, 8)
    assert lk.link_bytes_allowed(4) == (1, 2, 4)
    assert lk.link_bytes_allowed(8) == (1, 2, 4, 8)
    assert [lk.word_period(b) for b in (1, 2, 4, 8)] == [4, 2, 1, 1]
    assert [lk.beat_words(b) for b in (1, 2, 4, 8)] == [1, 1, 1, 2]


@pytest.mark.parametrize(
    "payload, cycles",
    [
        (96, 14),  # 12 + 96 + 4 = 112 wire bytes: 28 words, 14 beats of two
        (40, 7),  # 56 bytes: 14 words; the last beat is (p9, CRC)
        (44, 8),  # 60 bytes: 15 words; the CRC alone in the 8th beat
        (4, 3),  # 20 bytes: (H0, H1), (H2, p0), (CRC)
        (256, 34),  # 272 bytes
    ],
)
def test_packet_cycles_at_8_are_its_beats(payload, cycles):
    link = lk.LinkConfig(8, 10, 256)
    assert lk.packet_cycles(payload, link) == cycles


def test_a_96_byte_chunk_at_8_worked_by_hand():
    """96 bytes, max payload 256, latency 7, width 8: one packet of 112 wire bytes = 14
    cycles; grant to done = fetch (1 + 8 + 1) + 14 + write-back 1 = 25; its CRC beat is the
    14th, put on the link 1 cycle before the end and arriving 7 later; the applier (two words
    a cycle) then takes 3 + 24 / 2 = 15 cycles: visible 7 - 1 + 1 + 15 = 22 after the end."""
    hw = HardwareConfig(
        link_width_bytes=8, link_bytes_per_cycle=8, link_latency_cycles=7, max_payload_bytes=256
    )
    assert lk.chunk_tx_cycles(96, hw.link) == 14
    assert tm.descriptor_cycles(96, hw) == 25
    assert tm.crc_arrival_offset(hw) == 6
    assert tm.rx_apply_words(hw) == 2
    assert tm.rx_apply_cycles(96, tm.rx_apply_words(hw)) == 15
    assert tm.packet_arrival_offset(hw, 96) == 22
    # the same chunk at 4 bytes/cycle on a width-4 build: 28 cycles, one word a cycle
    hw4 = dataclasses.replace(hw, link_width_bytes=4, link_bytes_per_cycle=4)
    assert tm.descriptor_cycles(96, hw4) == 10 + 28 + 1
    assert tm.packet_arrival_offset(hw4, 96) == 7 - 1 + 1 + 3 + 24


def test_nic_timeouts_at_8():
    """rtt = 2 * latency + (68 words of a 256-byte packet) * 4 // 8 + 16 = 2 * 20 + 34 + 16."""
    link = lk.LinkConfig(8, 20, 256)
    assert lk.nic_timeouts(link) == (2 * 90 + 64, 90)


def _set(bpc: int) -> int:
    return lk.link_set_value(lk.LinkConfig(bpc, 10, 64))


def test_link_set_8_is_refused_on_a_width_4_build_and_accepted_on_width_8():
    limits_reg = constant_registers(HardwareConfig(), DEFAULT_FORMAT)["LINK_LIMITS"]
    assert lk.link_set_refusal(_set(8), limits_reg) == (rm.ErrorCode.LINK_SET_BAD, 0)
    assert lk.link_set_refusal(_set(8), limits_reg, width_bytes=4) == (
        rm.ErrorCode.LINK_SET_BAD,
        0,
    )
    assert lk.link_set_refusal(_set(8), limits_reg, width_bytes=8) is None
    for bpc in (1, 2, 4):
        assert lk.link_set_refusal(_set(bpc), limits_reg, width_bytes=4) is None
        assert lk.link_set_refusal(_set(bpc), limits_reg, width_bytes=8) is None
    assert lk.link_from_set_value(_set(8)).bytes_per_cycle == 8


def test_hardware_width_limits():
    with pytest.raises(limits.LimitError, match=r"link_width_bytes must be 4 or 8, not 6"):
        HardwareConfig(link_width_bytes=6)
    with pytest.raises(
        limits.LimitError,
        match=r"link_bytes_per_cycle must be one of 1, 2, 4 on a build of link width 4 bytes "
        r"\(8 bytes/cycle needs link_width_bytes=8\), not 8",
    ):
        HardwareConfig(link_bytes_per_cycle=8).check_carriable()
    HardwareConfig(link_bytes_per_cycle=8, link_width_bytes=8).check_carriable()
    HardwareConfig(link_bytes_per_cycle=1, link_width_bytes=8).check_carriable()
    # the width is part of a build; the run's link is not
    built = build_config(HardwareConfig(link_bytes_per_cycle=8, link_width_bytes=8))
    assert (built.link_width_bytes, built.link_bytes_per_cycle) == (8, 1)
    assert "link_width_bytes" in built.to_dict()  # so in every build cache key of it


def _cfg(argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    p.add_argument("--check", action="store_true")
    return config_from_args(p.parse_args(argv))


def test_cli_8_bytes_per_cycle_gets_a_width_8_build():
    hw = _cfg(["--backend", "model", "--link-bytes-per-cycle", "8"]).hardware
    assert (hw.link_bytes_per_cycle, hw.link_width_bytes) == (8, 8)
    hw = _cfg(["--backend", "model", "--link-width-bytes", "8", "--link-bytes-per-cycle", "1"])
    assert (hw.hardware.link_bytes_per_cycle, hw.hardware.link_width_bytes) == (1, 8)
    assert _cfg(["--backend", "model"]).hardware.link_width_bytes == 4


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--link-width-bytes", "4", "--link-bytes-per-cycle", "8"],
            "--link-bytes-per-cycle must be one of 1, 2, 4 on a build of link width 4 bytes",
        ),
        (["--link-width-bytes", "6"], "--link-width-bytes must be 4 or 8, not 6"),
        (
            ["--link-bytes-per-cycle", "3"],
            "--link-bytes-per-cycle must be one of 1, 2, 4 (8 with --link-width-bytes 8), not 3",
        ),
        (
            ["--link-bytes-per-cycle", "16"],
            "--link-bytes-per-cycle must be one of 1, 2, 4 (8 with --link-width-bytes 8), not 16",
        ),
        (
            ["--format", "bf16", "--link-bytes-per-cycle", "8"],
            "--link-width-bytes must be 4 with --format bf16",
        ),
    ],
)
def test_cli_refuses_bad_link_widths_with_one_sentence(argv, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _cfg(["--backend", "model", *argv])


def test_cli_exits_2_before_running(capsys, tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--backend", "model", "--link-width-bytes", "6", "--out", str(out)]
    assert main(argv) == 2
    assert "--link-width-bytes must be 4 or 8, not 6" in capsys.readouterr().err
    assert not out.exists()
