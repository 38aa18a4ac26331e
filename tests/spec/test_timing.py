"""Compute cycle formulas (gradsync.spec.timing) in both number formats, worked by hand."""

from gradsync.spec import timing as tm
from gradsync.spec.formats import BFloat16Format, FixedPointFormat
from gradsync.spec.hardware import HardwareConfig

HW = HardwareConfig(array_rows=8, array_cols=8, vector_lanes=8)


def test_gemm_cycles_by_hand_in_both_formats():
    """32x64x16 on 8x8: 8 tiles, K = 64 >= R, so decode 2 + read 1 + 7 * 64 + 64 + skew 14
    + drain 8 + write 1 = 538 in fixed point; bf16's PE pipeline adds 1 (539)."""
    assert tm.gemm_cycles(32, 64, 16, HW) == 538
    assert tm.gemm_cycles(32, 64, 16, HW, FixedPointFormat()) == 538
    assert tm.gemm_cycles(32, 64, 16, HW, BFloat16Format()) == 539
    # K < R: tiles every R cycles; 2 x 3 tiles of a 9x3x17 result: 2+1+5*8+3+14+8+1 (+1)
    assert tm.gemm_cycles(9, 3, 17, HW) == 69
    assert tm.gemm_cycles(9, 3, 17, HW, BFloat16Format()) == 70


def test_array_utilisation_32x64x16():
    """MACs over PE-cycles: 32768 / (64 * 538) = 0.9517 fixed, 32768 / (64 * 539) = 0.9499 bf16."""
    macs = 32 * 64 * 16
    fixed = macs / (64 * tm.gemm_cycles(32, 64, 16, HW))
    bf16 = macs / (64 * tm.gemm_cycles(32, 64, 16, HW, BFloat16Format()))
    assert round(fixed, 4) == 0.9517 and round(bf16, 4) == 0.9499


def test_longest_command_and_watchdog_follow_the_format():
    """64-32-10 at batch 32: the longest commands are the forward GEMM 32x64x32 (16 tiles:
    2 + 1 + 15 * 64 + 64 + 14 + 8 + 1) and the dW GEMM 64x32x32 (32 tiles: 2 + 1 + 31 * 32
    + 32 + 14 + 8 + 1), both 1050 cycles, 1051 in bf16; the watchdog one more."""
    layers, bf = (64, 32, 10), BFloat16Format()
    assert tm.longest_command_cycles(layers, 32, HW) == 1050
    assert tm.longest_command_cycles(layers, 32, HW, bf) == 1051
    assert tm.watchdog_cycles(HW, layers, 32, 2, bf) == tm.watchdog_cycles(HW, layers, 32, 2) + 1
