"""Built-in networks: published parameter totals, per-layer counts and GEMM cycles, worked by hand."""

from __future__ import annotations

import pytest

from gradsync.spec.hardware import HardwareConfig
from gradsync.workloads import BIG_NETWORK_HARDWARE, WorkloadError, builtin

# Published totals (torchvision, HuggingFace model cards).
PUBLISHED = {
    "resnet50": 25_557_032,
    "vgg19": 143_667_240,
    "bert-base": 109_482_240,
    "gpt2": 124_439_808,
}


@pytest.fixture(scope="module")
def nets():
    return {name: builtin(name) for name in PUBLISHED}


def by_name(w):
    return {layer.name: layer for layer in w.layers}


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_totals_equal_the_published_ones(nets, name):
    w = nets[name]
    assert w.params == PUBLISHED[name]
    assert w.grad_bytes == 2 * PUBLISHED[name]
    assert sum(x.grad_bytes for x in w.layers) == w.totals["grad_bytes"]


def test_four_byte_gradients_double_the_bytes_not_the_params():
    w = builtin("resnet50", element_bytes=4, batch=1)
    assert (w.params, w.grad_bytes) == (25_557_032, 4 * 25_557_032)


def test_resnet50_layers(nets):
    layers = by_name(nets["resnet50"])
    assert layers["conv1"].params == 64 * 3 * 7 * 7 == 9408
    assert layers["bn1"].params == 2 * 64
    assert layers["fc"].params == 2048 * 1000 + 1000 == 2_049_000
    assert layers["layer3.0.conv2"].params == 256 * 256 * 3 * 3 == 589_824
    assert layers["layer4.0.downsample.0"].params == 1024 * 2048 == 2_097_152
    assert layers["maxpool"].params == 0 and layers["maxpool"].wg == ()
    # 16 bottlenecks of 3 conv + 3 BN, 4 projections of conv + BN, stem 3, head 2
    assert len(nets["resnet50"].layers) == 16 * 6 + 4 * 2 + 3 + 2


def test_vgg19_layers(nets):
    layers = by_name(nets["vgg19"])
    assert layers["fc6"].params == 512 * 7 * 7 * 4096 + 4096 == 102_764_544
    assert layers["fc7"].params == 4096 * 4096 + 4096 == 16_781_312
    assert layers["conv1"].params == 3 * 9 * 64 + 64 == 1792
    assert layers["conv16"].params == 512 * 9 * 512 + 512 == 2_359_808
    assert sum(1 for x in nets["vgg19"].layers if x.kind == "conv") == 16


def test_bert_layers(nets):
    layers = by_name(nets["bert-base"])
    assert layers["embeddings.word_embeddings"].params == 30522 * 768 == 23_440_896
    assert layers["embeddings.position_embeddings"].params == 512 * 768
    assert layers["encoder.layer.0.attention.self.query"].params == 768 * 768 + 768
    assert layers["encoder.layer.11.intermediate.dense"].params == 768 * 3072 + 3072
    assert layers["pooler.dense"].params == 590_592
    scores = layers["encoder.layer.0.attention.self.scores"]
    assert (scores.params, scores.grad_bytes, scores.wg, scores.update) == (0, 0, (), ())
    assert scores.fwd_cycles > 0 and scores.ig_cycles > 0


def test_gpt2_layers(nets):
    layers = by_name(nets["gpt2"])
    assert layers["wte"].params == 50257 * 768 == 38_597_376
    assert layers["wpe"].params == 1024 * 768 == 786_432
    for block in range(12):
        # c_attn: 768 -> 3 * 768 with bias; c_fc: 768 -> 3072 with bias
        assert layers[f"h.{block}.attn.c_attn"].params == 768 * 2304 + 2304 == 1_771_776
        assert layers[f"h.{block}.mlp.c_fc"].params == 768 * 3072 + 3072 == 2_362_368
    head = layers["lm_head"]  # tied to wte: a GEMM and its dW, no parameters of its own
    assert (head.params, head.grad_bytes, head.update) == (0, 0, ())
    assert head.fwd_gemms[0].n == 50257 and head.wg_cycles > 0


@pytest.mark.parametrize("name", [*PUBLISHED, "mlp"])
def test_first_layer_has_no_input_gradient_pass(nets, name):
    w = nets.get(name) or builtin(name)
    assert w.layers[0].ig == () and w.layers[0].ig_gemms == ()
    assert all(
        x.ig
        for x in w.layers
        if x.kind in ("conv", "linear", "bn", "attention") and x is not w.layers[0]
    )


def test_im2col_shapes_of_a_convolution(nets):
    conv = by_name(nets["resnet50"])["layer2.0.conv2"]  # 128 -> 128, 3x3 stride 2, 56 -> 28
    m, k, n = 32 * 28 * 28, 128 * 9, 128
    assert [(g.m, g.k, g.n) for g in conv.fwd_gemms] == [(m, k, n)]
    assert [(g.m, g.k, g.n) for g in conv.wg_gemms] == [(k, m, n)]
    assert [(g.m, g.k, g.n) for g in conv.ig_gemms] == [(m, n, k)]


def test_resnet50_conv_cycles_on_128x128_worked_by_hand(nets):
    """gemm_cycles = 2 + 1 + (T - 1) * max(k, R) + k + (R + C - 2) + R + 1 with R = C = 128,
    T = ceil(m / 128) * ceil(n / 128); the formula is written out here, not called."""
    layers = by_name(nets["resnet50"])
    # conv1: M = 32*112*112 = 401408, K = 3*7*7 = 147, N = 64.
    # forward: T = 3136 * 1 = 3136; 3 + 3135*147 + 147 + 254 + 129 = 461378
    assert layers["conv1"].fwd == (461_378,)
    # dW = gemm(147, 401408, 64): T = 2 * 1 = 2; 3 + 1*401408 + 401408 + 254 + 129 = 803202
    assert layers["conv1"].wg == (803_202,)
    # layer1.0.conv2: M = 32*56*56 = 100352, K = 64*9 = 576, N = 64.
    # forward: T = 784; 3 + 783*576 + 576 + 254 + 129 = 451970
    assert layers["layer1.0.conv2"].fwd_gemms[0].m == 100_352
    assert layers["layer1.0.conv2"].fwd == (451_970,)
    # dA = gemm(100352, 64, 576): T = 784 * 5 = 3920; 3 + 3919*128 + 64 + 254 + 129 = 502082,
    # then relu_bwd of bn1's output, 100352*64 values on 128 lanes: 3 + 50176 + 3 + 1 = 50183
    assert layers["layer1.0.conv2"].ig == (502_082, 50_183)
    # fc: gemm(32, 2048, 1000): T = 1 * 8 = 8; 3 + 7*2048 + 2048 + 254 + 129 = 16770,
    # then the bias add (sgd over 32*1000 values): 3 + 250 + 3 + 1 = 257
    assert layers["fc"].fwd == (16_770, 257)


def test_bigger_array_takes_fewer_cycles():
    small = builtin("resnet50", batch=2, hardware=HardwareConfig(32, 32, 32))
    big = builtin("resnet50", batch=2, hardware=BIG_NETWORK_HARDWARE)
    for key in ("fwd_cycles", "ig_cycles", "wg_cycles"):
        assert big.totals[key] < small.totals[key]
    assert big.params == small.params


def test_batch_and_sequence_length_scale_the_shapes():
    w = builtin("gpt2", batch=2, seq_len=64)
    c_fc = by_name(w)["h.0.mlp.c_fc"]
    assert (c_fc.fwd_gemms[0].m, c_fc.fwd_gemms[0].k, c_fc.fwd_gemms[0].n) == (128, 768, 3072)
    scores = by_name(w)["h.0.attn.scores"].fwd_gemms[0]
    assert (scores.m, scores.k, scores.n, scores.count) == (64, 64, 64, 2 * 12)
    assert w.params == PUBLISHED["gpt2"]  # the position table does not shrink with seq_len
    assert w.input_bytes == 2 * 64 * 4 and w.output_bytes == 2 * 64 * 50257 * 2


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"name": "resnet"}, "unknown workload 'resnet'; the built-in ones are resnet50"),
        ({"name": "vgg19", "batch": 0}, "batch must be a positive whole number, not 0"),
        ({"name": "gpt2", "seq_len": 2048}, "seq_len of gpt2 must be between 1 and 1024, not 2048"),
        ({"name": "resnet50", "seq_len": 8}, "seq_len applies to bert-base and gpt2, not resnet50"),
        ({"name": "bert-base", "element_bytes": 3}, "element_bytes must be 2 or 4, not 3"),
        ({"name": "mlp", "layers": (64,)}, r"MLP layers must be two or more positive widths"),
    ],
)
def test_bad_builtin_options(kw, match):
    with pytest.raises(WorkloadError, match=match):
        builtin(kw.pop("name"), **kw)
