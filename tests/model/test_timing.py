"""Cycle formulas against hand-derived values and an element-level reference schedule."""

from __future__ import annotations

import pytest

from gradsync.spec import link as lk
from gradsync.spec import timing as tm
from gradsync.spec.hardware import HardwareConfig

HW = HardwareConfig()


def reference_gemm_cycles(m: int, k: int, n: int, rows: int, cols: int) -> int:
    """Per-PE walk of the output-stationary schedule, written independently.

    A tile's stream may start when PE(0,0) has finished the previous tile and
    when its results will find the shadow registers free; its drain then takes
    one cycle per array row.
    """
    tiles = [(ti, tj) for ti in range(-(-m // rows)) for tj in range(-(-n // cols))]
    t0 = tm.CMD_DECODE_CYCLES + tm.SRAM_READ_LATENCY_CYCLES
    start = t0
    shadow_free = t0
    done = t0
    for idx, _tile in enumerate(tiles):
        if idx:
            start = max(start + k, shadow_free - (k + rows + cols - 2))
        last_mac = max(start + (k - 1) + i + j for i in range(rows) for j in range(cols))
        ready = last_mac + 1
        drain_start = max(ready, shadow_free)
        assert drain_start == ready  # the schedule never stalls a finished tile
        shadow_free = drain_start + rows
        done = shadow_free
    return done + tm.WRITEBACK_LATENCY_CYCLES


@pytest.mark.parametrize("rows, cols", [(8, 8), (4, 6), (16, 16)])
@pytest.mark.parametrize(
    "m, k, n", [(1, 1, 1), (8, 8, 8), (9, 3, 17), (32, 64, 32), (64, 2, 10), (5, 100, 7)]
)
def test_gemm_cycles_match_element_level_schedule(rows, cols, m, k, n):
    hw = HardwareConfig(array_rows=rows, array_cols=cols)
    assert tm.gemm_cycles(m, k, n, hw) == reference_gemm_cycles(m, k, n, rows, cols)


def test_gemm_cycles_hand_values():
    # 8x8 array, one tile, K=8: decode 2 + read 1 + K 8 + skew 14 + drain 8 + wb 1
    assert tm.gemm_cycles(8, 8, 8, HW) == 34
    # 4 tiles with K=3 < R=8: interval is the drain (8): 3*8 + 3 + 14 + 8 + 4
    assert tm.gemm_cycles(16, 3, 16, HW) == 53


def test_vector_and_descriptor_and_packet_cycles():
    assert tm.vector_cycles("relu", 1, HW) == 2 + 1 + 1 + 3 + 1
    assert tm.vector_cycles("sgd", 65, HW) == 2 + 1 + 9 + 3 + 1
    assert tm.descriptor_fetch_cycles(HW) == 1 + 8 + 1
    # 12 header + 256 payload + 4 CRC = 272 bytes at 4 B/cycle
    assert lk.packet_cycles(256, HW.link) == 68
    assert lk.packet_payloads(600, HW.link) == [256, 256, 88]
    assert lk.chunk_tx_cycles(600, HW.link) == 68 + 68 + 26
    assert tm.descriptor_cycles(600, HW) == 10 + 162 + 1
    assert tm.host_bulk_cycles(100, HW) == 16 + 13


@pytest.mark.parametrize(
    "call, text",
    [
        (lambda: tm.gemm_cycles(0, 4, 4, HW), r"\(0, 4, 4\)"),
        (lambda: tm.vector_cycles("tanh", 4, HW), "not 'tanh'"),
        (lambda: HardwareConfig(array_rows=0), "array_rows must be >= 1, not 0"),
        (lambda: HardwareConfig(max_payload_bytes=6), "not 6"),
    ],
)
def test_bad_arguments_name_the_value(call, text):
    with pytest.raises((ValueError, TypeError), match=text):
        call()
