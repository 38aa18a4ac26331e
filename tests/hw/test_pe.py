# amaranth: UnusedElaboratable=no
"""The processing element against a plain-integer reference, in Amaranth's simulator and under Verilator."""

import pytest
from amaranth.sim import Simulator

from gradsync.hw.pe import ProcessingElement
from gradsync.sim.pe_selftest import PE_OUTPUTS, reference, stimulus

# (operand_bits, acc_bits, saturate): acc_bits == 2 * operand_bits saturates within two products.
CONFIGS = [(16, 32, True), (16, 40, True), (8, 16, True), (8, 16, False)]


@pytest.mark.parametrize(("operand_bits", "acc_bits", "saturate"), CONFIGS)
def test_pe_amaranth_sim(operand_bits, acc_bits, saturate):
    dut = ProcessingElement(operand_bits, acc_bits, saturate)
    inputs = stimulus(operand_bits, cycles=1500, seed=operand_bits * 7 + acc_bits)
    expected = reference(inputs, acc_bits, saturate)
    fields = PE_OUTPUTS

    async def bench(ctx):
        for cycle, (x, want) in enumerate(zip(inputs, expected, strict=True)):
            ctx.set(dut.a_in, x.a)
            ctx.set(dut.b_in, x.b)
            ctx.set(dut.valid_in, x.valid)
            ctx.set(dut.first_in, x.first)
            ctx.set(dut.last_in, x.last)
            await ctx.tick()
            for name in fields:
                got = ctx.get(getattr(dut, name))
                assert got == getattr(want, name), (
                    f"cycle {cycle}: {name} = {got}, want {getattr(want, name)} after {x}"
                )

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def test_reference_hits_saturation_corners():
    """The stimulus must really drive the accumulator into both rails, or the tests above prove little."""
    inputs = stimulus(16, cycles=1500, seed=16 * 7 + 32)
    accs = {s.acc for s in reference(inputs, 32, True)}
    assert (1 << 31) - 1 in accs and -(1 << 31) in accs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"operand_bits": 1}, "operand_bits must be an integer in 2..32, not 1"),
        ({"operand_bits": 33}, "operand_bits must be an integer in 2..32, not 33"),
        ({"operand_bits": 8.0}, "operand_bits must be an integer in 2..32, not 8.0"),
        (
            {"operand_bits": 16, "acc_bits": 31},
            r"acc_bits must be an integer in 32..64 \(at least twice operand_bits=16\), not 31",
        ),
        (
            {"operand_bits": 16, "acc_bits": 65},
            r"acc_bits must be an integer in 32..64 \(at least twice operand_bits=16\), not 65",
        ),
    ],
)
def test_pe_rejects_bad_parameters(kwargs, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        ProcessingElement(**kwargs)


@pytest.mark.rtl
@pytest.mark.parametrize(("operand_bits", "acc_bits", "saturate"), [(16, 32, True), (8, 16, False)])
def test_pe_verilator(operand_bits, acc_bits, saturate, tmp_path):
    from gradsync.sim.build import build_component, run_cocotb
    from gradsync.sim.pe_selftest import pe_env

    model = build_component(
        ProcessingElement(operand_bits, acc_bits, saturate), f"pe_{operand_bits}_{acc_bits}"
    )
    run_cocotb(
        model,
        "gradsync.sim.pe_selftest",
        extra_env=pe_env(operand_bits, acc_bits, saturate, cycles=5000, seed=11),
        test_dir=tmp_path,
    )


def test_pe_for_format_picks_the_pe_its_shapes_and_latency():
    from amaranth.hdl import signed, unsigned

    from gradsync.hw.fp import Bf16ProcessingElement
    from gradsync.hw.pe import pe_for_format
    from gradsync.spec.formats import BFloat16Format, FixedPointFormat

    make, operand, acc = pe_for_format(FixedPointFormat(8, 4, 24))
    assert (make.func, make.args, operand, acc) == (
        ProcessingElement,
        (8, 24),
        signed(8),
        signed(24),
    )
    assert make.func.LATENCY == 1
    make, operand, acc = pe_for_format(BFloat16Format())
    assert (make.func, operand, acc) == (Bf16ProcessingElement, unsigned(16), unsigned(32))
    assert make.func.LATENCY == BFloat16Format.mac_latency_cycles == 2
    with pytest.raises(
        TypeError, match="fmt must be a FixedPointFormat or a BFloat16Format, not 3"
    ):
        pe_for_format(3)
