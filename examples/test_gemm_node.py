"""Example (i): a GEMM on one node, checked against the golden model with the Scoreboard.

Run: ``pytest examples/test_gemm_node.py`` (cocotb's runner) -- see docs/testbench.md.
"""

from pathlib import Path

import cocotb
import numpy as np
import pytest

from gradsync.firmware.driver import Driver
from gradsync.model import numerics as nx
from gradsync.sim import testbench
from gradsync.sim.scoreboard import Scoreboard
from gradsync.spec import regmap as rm

M, K, N = 8, 24, 6
A_ADDR = rm.SCRATCH_BASE
B_ADDR = rm.SCRATCH_BASE + 0x400
C_ADDR = rm.GRAD_BASE


def operands(fmt):
    """A (M x K) and B (K x N): raw operand words, small enough to sum without saturating."""
    rng = np.random.default_rng(7)
    a = rng.integers(fmt.qmin // 8, fmt.qmax // 8, size=(M, K))
    b = rng.integers(fmt.qmin // 8, fmt.qmax // 8, size=(K, N))
    return a, b


async def gemm_program(dev):
    """Host program: load A and B, launch one GEMM with Driver, return C."""
    drv = Driver(dev)
    info = await drv.init(grad_window_bytes=0x1000)
    a, b = operands(info.fmt)
    await dev.load(A_ADDR, a.reshape(-1))
    await dev.load(B_ADDR, b.reshape(-1))
    done = await drv.launch(rm.Opcode.GEMM, A_ADDR, B_ADDR, C_ADDR, M, K, N)
    await drv.wait_compute(done)
    return await dev.dump(C_ADDR, M * N)


@cocotb.test()
async def gemm_matches_model(dut):
    tb = testbench.NodeTB(dut)
    await tb.start()
    sb = Scoreboard.for_tb(tb, memories=[(C_ADDR, M * N)])
    logs = await sb.check(tb, [gemm_program])  # node 0 runs it, node 1 idles
    a, b = operands(tb.fmt)
    assert logs[0]["result"] == nx.gemm(a, b, tb.fmt).reshape(-1).tolist()


@pytest.mark.rtl
def test_gemm_node(tmp_path):
    testbench.run(testbench.build("node"), Path(__file__), test_dir=tmp_path)
