"""cocotb side of bench/bench_sim_speed.py: run the design for a number of cycles, Python idle."""

import json
import os
import time

import cocotb
from cocotb.triggers import FallingEdge, Timer


@cocotb.test()
async def run_idle(dut):
    cycles = int(os.environ["BENCH_CYCLES"])
    if os.environ.get("GRADSYNC_TOPLEVEL_IS_WRAPPER") != "1":
        from cocotb.clock import Clock

        Clock(dut.clk, 10, unit="ns").start()
    await Timer(1, unit="ns")
    dut.rst.value = 0
    # keep the PE busy: every cycle is a valid saturating accumulation
    dut.a_in.value = 12345
    dut.b_in.value = -321
    dut.valid_in.value = 1
    dut.first_in.value = 0
    dut.last_in.value = 0
    await FallingEdge(dut.clk)
    started = time.perf_counter()
    await Timer(cycles * 10, unit="ns")
    seconds = time.perf_counter() - started
    with open(os.environ["BENCH_OUT"], "w") as f:
        json.dump({"cycles": cycles, "seconds": seconds}, f)
