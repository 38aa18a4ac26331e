"""Workloads in the device's number format and the gradient exchange format."""

from __future__ import annotations

from pathlib import Path

import pytest

from gradsync.spec.formats import BFloat16Format, FixedPointFormat
from gradsync.spec.hardware import HardwareConfig
from gradsync.workloads import WorkloadError, builtin, get
from gradsync.workloads.formats import exchange_element_bytes, format_name

EXAMPLES = Path(__file__).parents[2] / "examples" / "workloads"
BF16 = BFloat16Format()
Q510 = FixedPointFormat()
Q34 = FixedPointFormat(total_bits=8, frac_bits=4)
RESNET50_PARAMS = 25_557_032  # torchvision's published count


@pytest.mark.parametrize(
    "fmt, grad_format, name, element",
    [
        (Q510, None, "q5.10", 2),  # a 16-bit fixed-point word
        (Q34, None, "q3.4", 1),  # an 8-bit one
        (BF16, None, "bf16", 4),  # fp32 exchange by default
        (BF16, "fp32", "bf16", 4),
        (BF16, "bf16", "bf16", 2),
    ],
)
def test_exchange_element_and_gradient_bytes(fmt, grad_format, name, element):
    assert format_name(fmt) == name
    assert exchange_element_bytes(fmt, grad_format) == element
    w = builtin("resnet50", batch=1, number_format=fmt, grad_format=grad_format)
    assert w.params == RESNET50_PARAMS
    assert w.grad_bytes == RESNET50_PARAMS * element
    assert (w.format, w.element_bytes) == (name, element)
    assert w.grad_format == (None if fmt is not BF16 else grad_format or "fp32")


def test_bf16_gemms_take_one_more_cycle_each():
    """bf16's PE registers the product before the fp32 add (mac latency 2): every GEMM
    command (a repeated GEMM: every repetition) is one cycle longer; vector ops equal."""
    hw = HardwareConfig(array_rows=16, array_cols=16, vector_lanes=16)
    fixed = builtin("bert-base", batch=1, seq_len=16, hardware=hw)
    bf16 = builtin("bert-base", batch=1, seq_len=16, hardware=hw, number_format=BF16)
    for a, b in zip(fixed.layers, bf16.layers, strict=True):
        for pas in ("fwd", "ig", "wg"):
            gemms = sum(g.count for g in getattr(a, f"{pas}_gemms"))
            assert sum(getattr(b, pas)) - sum(getattr(a, pas)) == gemms, (a.name, pas)
        # bf16's update: SGD on the master weights, then SCALE of as many elements
        assert b.update == (a.update + a.update if a.params else ())
    assert bf16.input_bytes == fixed.input_bytes  # token ids
    assert bf16.output_bytes == fixed.output_bytes  # bf16 and q5.10 words are both 2 bytes


def test_element_bytes_alone_is_the_device_with_that_exchange():
    assert builtin("mlp", element_bytes=2).format == "q5.10"
    four = builtin("mlp", element_bytes=4)
    assert (four.format, four.grad_format, four.element_bytes) == ("bf16", "fp32", 4)
    assert builtin("mlp", element_bytes=2, number_format=BF16, grad_format="bf16").format == "bf16"


def test_imported_file_takes_the_exchange_element_size():
    path = EXAMPLES / "tiny_transformer.csv"
    two = get(str(path), number_format=BF16, grad_format="bf16")
    four = get(str(path), number_format=BF16)
    assert [x.params for x in two.layers] == [2 * x.params for x in four.layers]
    assert (four.format, four.grad_format, four.element_bytes) == ("bf16", "fp32", 4)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"grad_format": "bf16"}, r"grad_format 'bf16' applies only to the bf16 format"),
        (
            {"number_format": BF16, "grad_format": "fp16"},
            r"grad_format must be fp32 or bf16, not 'fp16'",
        ),
        ({"element_bytes": 3}, r"element_bytes must be 2 or 4, not 3"),
        (
            {"number_format": BF16, "element_bytes": 2},
            r"element_bytes 2 disagrees with bf16 with fp32 exchange \(4-byte",
        ),
    ],
)
def test_bad_format_options_are_refused(kw, message):
    with pytest.raises(WorkloadError, match=message):
        builtin("mlp", **kw)
