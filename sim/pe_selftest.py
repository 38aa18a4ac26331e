"""Self-test of the toolchain: the processing element against a plain-integer reference.

Used by ``gradsync doctor`` (one Verilator build + run proves the whole path
works) and by ``tests/hw/test_pe.py`` under both simulators. The reference is
written with Python integers only, independent of the RTL and of the golden
model, so it can catch an error in either.

The cocotb test in this module reads its parameters from the environment:
``PE_OPERAND_BITS``, ``PE_ACC_BITS``, ``PE_SATURATE``, ``PE_CYCLES``,
``PE_SEED``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import cocotb
from cocotb.triggers import FallingEdge, Timer


@dataclass(frozen=True)
class PEInputs:
    a: int
    b: int
    valid: int
    first: int
    last: int


@dataclass(frozen=True)
class PEState:
    """Registered outputs of the PE after a clock edge."""

    a_out: int
    b_out: int
    valid_out: int
    first_out: int
    last_out: int
    acc: int
    result: int
    result_valid: int


#: The PE outputs the self-test compares every cycle, in the reference's field order.
PE_OUTPUTS = (
    "a_out",
    "b_out",
    "valid_out",
    "first_out",
    "last_out",
    "acc",
    "result",
    "result_valid",
)


def _corner_values(bits: int) -> list[int]:
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return [lo, lo + 1, -1, 0, 1, hi - 1, hi]


def stimulus(operand_bits: int, cycles: int, seed: int) -> list[PEInputs]:
    """Random accumulations of random length with idle gaps, rich in corner operands.

    Runs of same-sign extreme products are included on purpose so that a
    32-bit accumulator of 16-bit operands saturates both ways.
    """
    rng = random.Random(seed)
    lo, hi = -(1 << (operand_bits - 1)), (1 << (operand_bits - 1)) - 1
    corners = _corner_values(operand_bits)
    out: list[PEInputs] = []
    while len(out) < cycles:
        if rng.random() < 0.2:
            out.append(
                PEInputs(
                    rng.randint(lo, hi),
                    rng.randint(lo, hi),
                    0,
                    rng.randint(0, 1),
                    rng.randint(0, 1),
                )
            )
            continue
        length = rng.randint(1, 12)
        mode = rng.choice(["random", "corners", "sat_pos", "sat_neg"])
        for i in range(length):
            if mode == "random":
                a, b = rng.randint(lo, hi), rng.randint(lo, hi)
            elif mode == "corners":
                a, b = rng.choice(corners), rng.choice(corners)
            elif mode == "sat_pos":
                a = rng.choice([lo, hi])
                b = a
            else:
                a = rng.choice([lo, hi])
                b = hi if a == lo else lo
            out.append(PEInputs(a, b, 1, int(i == 0), int(i == length - 1)))
    return out[:cycles]


def reference(inputs: list[PEInputs], acc_bits: int, saturate: bool) -> list[PEState]:
    """The PE's registered state after each cycle, from reset."""
    lo, hi = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1
    span = 1 << acc_bits
    acc = result = 0
    states = []
    for x in inputs:
        result_valid = 0
        if x.valid:
            total = (0 if x.first else acc) + x.a * x.b
            if saturate:
                total = min(max(total, lo), hi)
            else:
                total = (total - lo) % span + lo
            acc = total
            if x.last:
                result, result_valid = total, 1
        states.append(PEState(x.a, x.b, x.valid, x.first, x.last, acc, result, result_valid))
    return states


def params_from_env() -> dict:
    return {
        "operand_bits": int(os.environ.get("PE_OPERAND_BITS", "16")),
        "acc_bits": int(os.environ.get("PE_ACC_BITS", "32")),
        "saturate": os.environ.get("PE_SATURATE", "1") == "1",
        "cycles": int(os.environ.get("PE_CYCLES", "2000")),
        "seed": int(os.environ.get("PE_SEED", "1")),
    }


def pe_env(
    operand_bits: int, acc_bits: int, saturate: bool, cycles: int, seed: int
) -> dict[str, str]:
    return {
        "PE_OPERAND_BITS": str(operand_bits),
        "PE_ACC_BITS": str(acc_bits),
        "PE_SATURATE": "1" if saturate else "0",
        "PE_CYCLES": str(cycles),
        "PE_SEED": str(seed),
    }


@cocotb.test()
async def pe_matches_reference(dut):
    """Drive random and corner operands; every registered output matches the reference."""
    p = params_from_env()
    inputs = stimulus(p["operand_bits"], p["cycles"], p["seed"])
    expected = reference(inputs, p["acc_bits"], p["saturate"])
    if os.environ.get("GRADSYNC_TOPLEVEL_IS_WRAPPER") != "1":
        from cocotb.clock import Clock

        Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for name in ("a_in", "b_in", "valid_in", "first_in", "last_in"):
        getattr(dut, name).value = 0
    await Timer(1, unit="ns")
    for _ in range(3):
        await FallingEdge(dut.clk)
    dut.rst.value = 0
    fields = PE_OUTPUTS
    signed_fields = {"a_out", "b_out", "acc", "result"}
    for cycle, (x, want) in enumerate(zip(inputs, expected, strict=True)):
        dut.a_in.value = x.a
        dut.b_in.value = x.b
        dut.valid_in.value = x.valid
        dut.first_in.value = x.first
        dut.last_in.value = x.last
        await FallingEdge(dut.clk)
        for name in fields:
            raw = getattr(dut, name).value
            got = raw.to_signed() if name in signed_fields else int(raw)
            assert got == getattr(want, name), (
                f"cycle {cycle}: {name} = {got}, reference {getattr(want, name)} after {x}"
            )
