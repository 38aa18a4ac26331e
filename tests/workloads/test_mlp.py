"""The digits MLP workload against the firmware: its memory plan and the commands it issues."""

from __future__ import annotations

from collections import defaultdict

import pytest

from gradsync.firmware import experiment
from gradsync.firmware.training import plan_memory, plan_memory_for
from gradsync.model_backend import run_model
from gradsync.spec import regmap as rm
from gradsync.spec.formats import DEFAULT_FORMAT, BFloat16Format
from gradsync.spec.hardware import DEFAULT_HARDWARE, PRESETS
from gradsync.spec.timing import gemm_cycles, vector_cycles
from gradsync.workloads import builtin


@pytest.mark.parametrize("widths", [(64, 32, 10), (64, 32, 32, 10), (64, 10), (64, 33, 7, 10)])
def test_gradient_bytes_are_the_firmware_buffers(widths):
    w = builtin("mlp", layers=widths)
    plan = plan_memory(widths, 32, 2, 1 << 20, 1 << 20)
    assert [x.grad_bytes for x in w.layers] == plan.grad_bytes[1:]
    assert [x.params for x in w.layers] == [
        a * b for a, b in zip(widths[:-1], widths[1:], strict=True)
    ]


@pytest.mark.parametrize("widths", [(64, 32, 10), (64, 33, 7, 10)])
@pytest.mark.parametrize("grad_format, per_memory_byte", [("fp32", 1), ("bf16", 0.5)])
def test_bf16_gradient_bytes_are_the_buffers_on_the_link(widths, grad_format, per_memory_byte):
    """A bf16 device's buffers hold fp32 gradients; bf16 exchange puts half their bytes on
    the link (docs/numerics.md, "The bf16 gradient exchange")."""
    fmt = BFloat16Format()
    w = builtin("mlp", layers=widths, number_format=fmt, grad_format=grad_format)
    plan = plan_memory_for(fmt, widths, 32, 1 << 20, 1 << 20)
    assert [x.grad_bytes for x in w.layers] == [n * per_memory_byte for n in plan.grad_bytes[1:]]
    assert w.element_bytes == 4 * per_memory_byte
    assert (w.format, w.grad_format) == ("bf16", grad_format)


def test_default_mlp_commands_from_the_timing_formulas():
    """The default is gradsync train's: layers 64-32-32-10, global batch 16 on 2 nodes."""
    cfg = experiment.TrainConfig()
    assert (cfg.layers, cfg.global_batch, cfg.nodes) == ((64, 32, 32, 10), 16, 2)
    w = builtin("mlp")
    hw, b = DEFAULT_HARDWARE, 8
    assert w.hardware == hw and w.batch == b and w.element_bytes == 2
    fc1, fc2, fc3 = w.layers
    assert fc1.fwd == (gemm_cycles(b, 64, 32, hw), vector_cycles("relu", b * 32, hw))
    assert fc2.fwd == (gemm_cycles(b, 32, 32, hw), vector_cycles("relu", b * 32, hw))
    assert fc3.fwd == (gemm_cycles(b, 32, 10, hw),)  # no relu on the top layer
    assert fc1.ig == ()  # the first layer needs no input gradient
    assert fc3.ig == (gemm_cycles(b, 10, 32, hw), vector_cycles("relu_bwd", b * 32, hw))
    assert fc1.wg == (gemm_cycles(64, b, 32, hw),)
    assert fc3.update == (vector_cycles("sgd", 320, hw),)
    assert (w.input_bytes, w.output_bytes) == (b * 64 * 2, b * 10 * 2)


def _firmware_commands(nodes: int, layers: tuple[int, ...], hardware, fmt=DEFAULT_FORMAT) -> dict:
    """Durations of node 0's compute commands of step 0, by (trace kind, tag layer)."""
    cfg = experiment.TrainConfig(
        nodes=nodes,
        steps=1,
        layers=layers,
        global_batch=64,
        hardware=hardware,
        number_format=fmt,
    )
    res = experiment.run(cfg, run_model)
    out = defaultdict(list)
    for iv in res.intervals:
        if iv.node == 0 and iv.engine in (rm.Engine.COMPUTE, rm.Engine.VECTOR):
            out[(rm.Kind(iv.kind), iv.layer)].append(iv.end - iv.start)
    return out


@pytest.mark.parametrize(
    "nodes, layers, preset, fmt",
    [
        (2, (64, 32, 10), "small", DEFAULT_FORMAT),
        (4, (64, 32, 32, 10), "large", DEFAULT_FORMAT),
        (2, (64, 32, 10), "large", BFloat16Format()),
        (4, (64, 32, 32, 10), "large", BFloat16Format()),
    ],
    ids=["small-q5.10", "large-q5.10", "large-bf16", "large-bf16-4layers"],
)
def test_mlp_matches_the_golden_model_trace(nodes, layers, preset, fmt):
    """Every pass's command durations equal what the firmware ran on the golden model
    (bf16: GEMMs a cycle longer, the update SGD on the master weights then SCALE)."""
    hw = PRESETS[preset]
    got = _firmware_commands(nodes, layers, hw, fmt)
    w = builtin("mlp", layers=layers, batch=64 // nodes, hardware=hw, number_format=fmt)
    for i, x in enumerate(w.layers, start=1):
        relu = got[(rm.Kind.RELU, i)] if i < len(w.layers) else []
        assert x.fwd == tuple(got[(rm.Kind.FWD, i)] + relu)
        assert x.wg == tuple(got[(rm.Kind.DW, i)])
        # the firmware tags layer i's dA and relu mask with layer i - 1 (what they produce)
        ig = got[(rm.Kind.DA, i - 1)] + got[(rm.Kind.RELU_BWD, i - 1)] if i > 1 else []
        assert x.ig == tuple(ig)
        assert x.update == tuple(got[(rm.Kind.UPDATE, i)])
