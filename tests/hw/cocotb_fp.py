"""cocotb driver of ``tests/hw/test_fp.py``'s lane harness under Verilator: vectors in, words out.

The harness is combinational (``lanes`` copies of the fp32 adder, the bf16
multiplier and the fp32 -> bf16 converter side by side). This test only
replays the input file ``FP_VECTORS`` (``.npz`` with ``a``, ``b`` (fp32) and
``x``, ``y`` (bf16), shaped ``(steps, lanes)``) one step per nanosecond and
writes what the harness answered to ``FP_RESULTS``; the pytest side compares
them with the golden model, so a mismatch is reported with the operands.
"""

from __future__ import annotations

import os

import cocotb
import numpy as np
from cocotb.triggers import Timer


def _pack(row: np.ndarray) -> int:
    """Lane 0 in the low bits, as ``data.ArrayLayout`` lays a port out."""
    return int.from_bytes(row.tobytes(), "little")


def _unpack(value, dtype, lanes: int) -> np.ndarray:
    width = np.dtype(dtype).itemsize
    return np.frombuffer(int(value).to_bytes(width * lanes, "little"), dtype=dtype)


@cocotb.test()
async def replay_vectors(dut):
    """Drive every step's operands, read every lane's three results."""
    vectors = np.load(os.environ["FP_VECTORS"])
    a, b, x, y = (vectors[k] for k in ("a", "b", "x", "y"))
    steps, lanes = a.shape
    out = {
        "total": np.zeros_like(a),
        "product": np.zeros_like(a),
        "converted": np.zeros_like(x),
    }
    for i in range(steps):
        dut.a.value = _pack(a[i])
        dut.b.value = _pack(b[i])
        dut.x.value = _pack(x[i])
        dut.y.value = _pack(y[i])
        await Timer(1, unit="ns")
        for name, words in out.items():
            words[i] = _unpack(getattr(dut, name).value, words.dtype, lanes)
    np.savez(os.environ["FP_RESULTS"], **out)
