"""gradsync.spec.limits: the limits both backends obey, against the packet format and the
RTL's own checks and against hand-worked fixed-point values."""

from __future__ import annotations

import pytest

from gradsync.spec import limits
from gradsync.spec import link as lk
from gradsync.spec.formats import DEFAULT_FORMAT, FixedPointFormat
from gradsync.spec.hardware import HardwareConfig


def test_payload_limit_is_the_packet_headers_length_field():
    from hw.packet import Header0, header0

    width = Header0.size - 8 - 1 - 16  # H0: window 8, reduce 1, words-1 ?, sequence 16
    assert width == lk.PAYLOAD_WORDS_BITS == 7
    assert lk.MAX_PAYLOAD_BYTES == 512  # 128 words of 4 bytes
    # the largest payload round-trips through the header word, one more does not fit
    assert (header0(0, 0, 128) >> 9) & 0x7F == 127
    assert (header0(0, 0, 129) >> 9) & 0x7F != 128


def test_link_widths_are_the_ones_the_rtl_link_builds():
    from hw.link import Link

    for width in range(1, 9):
        try:
            Link(10, width)
            built = True
        except ValueError:
            built = False
        assert built == (width in lk.LINK_BYTES_PER_CYCLE), width


@pytest.mark.parametrize(
    "fields, message",
    [
        (
            {"link_bytes_per_cycle": 3},
            r"link_bytes_per_cycle must be one of 1, 2, 4 \(8 with link_width_bytes=8\), not 3",
        ),
        ({"link_bytes_per_cycle": 8}, "not 8"),
        ({"max_payload_bytes": 516}, "max_payload_bytes must be a multiple of 4 from 4 to 512"),
        ({"packet_header_bytes": 16}, "packet_header_bytes must be 12, not 16"),
        ({"packet_crc_bytes": 0}, "packet_crc_bytes must be 4, not 0"),
    ],
)
def test_hardware_the_rtl_cannot_carry_is_refused(fields, message):
    hw = HardwareConfig(**fields)  # the scale simulator may model it ...
    with pytest.raises(limits.LimitError, match=message):
        hw.check_carriable()  # ... a training run on either backend may not
    HardwareConfig(max_payload_bytes=512).check_carriable()


def test_nodes_limit_is_the_descriptor_peer_field():
    assert limits.MAX_NODES == 256  # the peer field is bits 23:16 of CONTROL
    limits.check_nodes(256)
    with pytest.raises(limits.LimitError, match="nodes must be at most 256 .*8 bits.*not 257"):
        limits.check_nodes(257)
    with pytest.raises(limits.LimitError, match="nodes must be >= 1, not 0"):
        limits.check_nodes(0)


@pytest.mark.parametrize(
    "lr, ok",
    [
        (float("nan"), False),
        (float("inf"), False),
        (float("-inf"), False),
        (-0.25, False),
        (0.0, False),
        (2.0**-11, False),  # 0.5 LSB at 10 fractional bits: rounds (to even) to 0
        (0.00049, True),  # 0.50176 LSB: rounds to 1
        (0.25, True),
        (32767 / 1024, True),  # the largest 16-bit operand
        (32.0, False),  # would saturate
    ],
)
def test_learning_rate_by_hand(lr, ok):
    if ok:
        limits.check_learning_rate(lr, DEFAULT_FORMAT)
    else:
        with pytest.raises(limits.LimitError, match="learning_rate must be a finite number"):
            limits.check_learning_rate(lr, DEFAULT_FORMAT)


def test_learning_rate_range_follows_the_format():
    narrow = FixedPointFormat(total_bits=8, frac_bits=4, acc_bits=16)  # 1/16 .. 127/16
    for lr in (10.0, 1 / 32):  # above 7.9375; half an LSB, rounds to 0
        limits.check_learning_rate(lr, DEFAULT_FORMAT)
        with pytest.raises(limits.LimitError, match=f"not {lr}"):
            limits.check_learning_rate(lr, narrow)
    limits.check_learning_rate(127 / 16, narrow)


def test_format_and_hardware_errors_carry_their_field():
    with pytest.raises(limits.LimitError) as exc:
        FixedPointFormat(total_bits=12)
    assert (exc.value.field, exc.value.value) == ("total_bits", 12)
    with pytest.raises(limits.LimitError) as exc:
        HardwareConfig(max_payload_bytes=6)
    assert (exc.value.field, exc.value.value) == ("max_payload_bytes", 6)
