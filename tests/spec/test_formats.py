"""Number formats (gradsync.spec.formats): host conversions and the HW_FORMAT encoding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gradsync.spec import regmap as rm
from gradsync.spec.formats import FixedPointFormat


def test_quantize_follows_the_rounding_rules():
    f = FixedPointFormat(16, 10)
    # 2**-11 is half an LSB: ties go to even (0 and 2); out of range saturates
    assert f.quantize([2**-11, 3 * 2**-11, -(2**-11), 40.0, -40.0]).tolist() == [
        0,
        2,
        0,
        32767,
        -32768,
    ]
    t = FixedPointFormat(16, 10, rounding="truncate", saturate=False)
    # truncate rounds towards minus infinity; 32.0 = 32768 LSB wraps to -32768
    assert t.quantize([-(2**-11), 32.0]).tolist() == [-1, -32768]


def test_dequantize_and_memory_words_round_trip():
    f = FixedPointFormat(16, 10)
    raw = np.array([-32768, -1, 0, 1, 1024, 32767])
    assert f.dequantize(raw).tolist() == [-32.0, -(2**-10), 0.0, 2**-10, 1.0, 32767 / 1024]
    words = f.to_unsigned(raw)
    assert words.tolist() == [0x8000, 0xFFFF, 0, 1, 1024, 0x7FFF]
    assert f.from_unsigned(words).tolist() == raw.tolist()


def test_max_exact_k_by_hand():
    # |(-2**15)**2| = 2**30 per product; a 40-bit accumulator holds 2**39 - 1
    assert FixedPointFormat(16, 10, 40).max_exact_k == (2**39 - 1) // 2**30 == 511
    assert FixedPointFormat(8, 4, 16).max_exact_k == (2**15 - 1) // 2**14 == 1


@pytest.mark.parametrize(
    "total, frac, acc, rounding, sat",
    list(itertools.product((8, 16), (0, 7), (None,), ("nearest-even", "truncate"), (True, False))),
)
def test_hw_format_register_round_trip(total, frac, acc, rounding, sat):
    f = FixedPointFormat(total, frac, 2 * total + 6, rounding, sat)
    word = f.to_register()
    r = rm.reg("HW_FORMAT")
    assert r.field("total_bits").get(word) == total
    assert r.field("nearest_even").get(word) == (rounding == "nearest-even")
    assert FixedPointFormat.from_register(word) == f


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"total_bits": 12}, "total_bits must be 8, 16 or 32, not 12"),
        ({"frac_bits": 16}, r"frac_bits must be in \[0, 16\), not 16"),
        ({"acc_bits": 30}, r"acc_bits must be in \[32, 62\], not 30"),
        ({"rounding": "up"}, "rounding must be one of .*, not 'up'"),
    ],
)
def test_bad_format_names_the_parameter_and_value(kwargs, text):
    with pytest.raises(ValueError, match=text):
        FixedPointFormat(**kwargs)
