"""cocotb driver of ``tests/hw/test_fp.py``'s lane harness under Verilator: bytes in, bytes out.

The harness is combinational (lanes of the fp32 adder, the bf16 multiplier
and the fp32 -> bf16 converter side by side) with one input port
``operands`` and one output port ``results``. This test only replays the
rows of ``FP_VECTORS`` (a ``uint8`` ``.npy`` array, one row of port bytes per
step, little-endian: lane 0 in the low bits) one step per nanosecond, and
writes the ``FP_RESULT_BYTES`` bytes of ``results`` of every step to
``FP_RESULTS``; the pytest side compares them with the references, so that
a mismatch is reported with its operands.
"""

from __future__ import annotations

import os

import cocotb
import numpy as np
from cocotb.triggers import Timer


@cocotb.test()
async def replay_vectors(dut):
    """Drive every step's operand bytes, read the result bytes."""
    rows = np.load(os.environ["FP_VECTORS"])
    width = int(os.environ["FP_RESULT_BYTES"])
    out = np.zeros((len(rows), width), dtype=np.uint8)
    for i, row in enumerate(rows):
        dut.operands.value = int.from_bytes(row.tobytes(), "little")
        await Timer(1, unit="ns")
        out[i] = np.frombuffer(int(dut.results.value).to_bytes(width, "little"), np.uint8)
    np.save(os.environ["FP_RESULTS"], out)
