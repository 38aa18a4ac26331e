"""The cocotb test module of an RTL training run (``sim/rtl_backend.py`` starts it).

Placeholder while the cluster lands; see :func:`reset_to_cycle_zero`.
"""

from __future__ import annotations


async def reset_to_cycle_zero(dut, cycles: int = 3) -> None:
    """Pulse ``dut.rst``; return right after the edge that begins cycle 0 (``cycle`` reads 0).

    Reset is released in the same time step as that edge, so the design sees
    it low at the next edge and counts from 0: a device call started on
    return starts in cycle 0, like the model's first call.
    """
    from cocotb.triggers import ClockCycles

    dut.rst.value = 1
    await ClockCycles(dut.clk, cycles)
    dut.rst.value = 0
