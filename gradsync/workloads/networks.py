"""The built-in networks, written from their architecture definitions (no download, no torch).

ResNet-50 (torchvision v1.5: stride on the 3x3 convolution), VGG-19
(torchvision, no BatchNorm), BERT-base (uncased, with pooler) and GPT-2 small
(tied token embedding).  Parameter totals equal the published ones exactly
(25,557,032 / 143,667,240 / 109,482,240 / 124,439,808); the tests check them
and a few layers each.  Dropout and masks take no device commands.
Layer names follow the reference implementations' parameter names.
"""

from __future__ import annotations

from gradsync.spec.hardware import HardwareConfig
from gradsync.workloads.builder import NetBuilder
from gradsync.workloads.formats import NumberFormat
from gradsync.workloads.workload import Layer

IMAGE_SIZE = 224
IMAGENET_CLASSES = 1000


def resnet50(b: NetBuilder) -> None:
    """ResNet-50 on ``224 x 224`` images: bottleneck stages of 3, 4, 6, 3 blocks.

    A block's shortcut projection (``downsample``) is listed before its main
    path so that ``bn3``'s forward can add it; the sum of the two branches'
    input gradients (one ``sgd`` pass) ends the input-gradient pass of the
    block's last layer in backward order (``downsample.0``, else ``conv1``).
    """
    n = b.batch
    size = b.conv("conv1", 3, 64, 7, 2, 3, IMAGE_SIZE, first=True)
    b.norm("bn1", "bn", 64, n * 64 * size * size, relu=True)
    size = b.maxpool("maxpool", 64, size, 3, 2, 1)
    c_in = 64
    for stage, (width, blocks, stride) in enumerate(
        zip((64, 128, 256, 512), (3, 4, 6, 3), (1, 2, 2, 2), strict=True), start=1
    ):
        c_out = 4 * width
        for i in range(blocks):
            s, pre = (stride if i == 0 else 1), f"layer{stage}.{i}"
            fork = [("sgd", n * c_in * size * size)]
            out = (size - 1) // s + 1
            if i == 0:
                b.conv(f"{pre}.downsample.0", c_in, c_out, 1, s, 0, size, ig_extra=fork)
                b.norm(f"{pre}.downsample.1", "bn", c_out, n * c_out * out * out)
                fork = []
            b.conv(f"{pre}.conv1", c_in, width, 1, 1, 0, size, ig_extra=fork)
            b.norm(f"{pre}.bn1", "bn", width, n * width * size * size, relu=True)
            out = b.conv(f"{pre}.conv2", width, width, 3, s, 1, size)
            b.norm(f"{pre}.bn2", "bn", width, n * width * out * out, relu=True)
            b.conv(f"{pre}.conv3", width, c_out, 1, 1, 0, out)
            b.norm(f"{pre}.bn3", "bn", c_out, n * c_out * out * out, relu=True, residual=True)
            size, c_in = out, c_out
    b.avgpool("avgpool", c_in, size)
    b.linear("fc", n, c_in, IMAGENET_CLASSES)


VGG19_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M")
VGG19_CONFIG += (512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def vgg19(b: NetBuilder) -> None:
    """VGG-19: sixteen 3x3 convolutions with bias and ReLU, five 2x2 max pools, three FC."""
    size, c_in, conv_i, pool_i = IMAGE_SIZE, 3, 0, 0
    for item in VGG19_CONFIG:
        if item == "M":
            pool_i += 1
            size = b.maxpool(f"pool{pool_i}", c_in, size, 2, 2, 0)
            continue
        conv_i += 1
        first = conv_i == 1
        b.conv(f"conv{conv_i}", c_in, item, 3, 1, 1, size, bias=True, act="relu", first=first)
        c_in = item
    flat = c_in * size * size  # 512 * 7 * 7 = 25088
    b.linear("fc6", b.batch, flat, 4096, act="relu")
    b.linear("fc7", b.batch, 4096, 4096, act="relu")
    b.linear("fc8", b.batch, 4096, IMAGENET_CLASSES)


BERT_VOCAB, BERT_MAX_POSITIONS, BERT_TYPES = 30522, 512, 2
GPT2_VOCAB, GPT2_CONTEXT = 50257, 1024
HIDDEN, HEADS, BLOCKS, FFN = 768, 12, 12, 3072


def bert_base(b: NetBuilder, seq: int) -> None:
    """BERT-base: embeddings, 12 encoder layers (12 heads, 768 wide, FFN 3072), pooler.

    The block input feeds Q, K, V and the residual: the three extra gradient
    sums end ``query``'s input-gradient pass; the FFN's fork sum ends
    ``intermediate.dense``'s.  Residual adds are in the LayerNorms' forward.
    """
    n, d = b.batch, HIDDEN
    tokens = n * seq
    b.embedding("embeddings.word_embeddings", BERT_VOCAB, d, tokens, gather="scale", grad="sgd")
    b.embedding(
        "embeddings.position_embeddings", BERT_MAX_POSITIONS, d, tokens, gather="sgd", grad="scale"
    )
    b.embedding("embeddings.token_type_embeddings", BERT_TYPES, d, tokens, gather="sgd", grad="sgd")
    b.add(
        "embeddings.LayerNorm", "layernorm", 2 * d,
        [("scale", tokens * d), ("scale", tokens * d)], None, [("scale", tokens * d)],
    )  # fmt: skip
    for layer in range(BLOCKS):
        pre = f"encoder.layer.{layer}"
        fork3 = [("sgd", tokens * d)] * 3
        b.linear(f"{pre}.attention.self.query", tokens, d, d, ig_extra=fork3)
        b.linear(f"{pre}.attention.self.key", tokens, d, d)
        b.linear(f"{pre}.attention.self.value", tokens, d, d)
        b.attention(f"{pre}.attention.self.scores", n, HEADS, seq, d // HEADS)
        b.linear(f"{pre}.attention.output.dense", tokens, d, d)
        b.norm(f"{pre}.attention.output.LayerNorm", "layernorm", d, tokens * d, residual=True)
        fork = [("sgd", tokens * d)]
        b.linear(f"{pre}.intermediate.dense", tokens, d, FFN, act="relu", ig_extra=fork)
        b.linear(f"{pre}.output.dense", tokens, FFN, d)
        b.norm(f"{pre}.output.LayerNorm", "layernorm", d, tokens * d, residual=True)
    b.linear("pooler.dense", n, d, d, act="relu")  # tanh on the [CLS] token


def gpt2_small(b: NetBuilder, seq: int) -> None:
    """GPT-2 small: token and position embeddings, 12 pre-LN blocks, final LayerNorm, LM head.

    The LM head is tied to ``wte``: a GEMM with no parameters of its own whose
    dW is added into ``wte``'s gradient (one ``sgd`` pass over the table, in
    ``wte``'s weight-gradient pass).  Residual adds end the ``c_proj``
    forwards; each fork's gradient sum ends the LayerNorm's input gradient.
    """
    n, d = b.batch, HIDDEN
    tokens = n * seq
    b.add(
        "wte", "embedding", GPT2_VOCAB * d,
        [("scale", tokens * d)], None, [("sgd", tokens * d), ("sgd", GPT2_VOCAB * d)],
    )  # fmt: skip
    b.embedding("wpe", GPT2_CONTEXT, d, tokens, gather="sgd", grad="scale")
    residual = [("sgd", tokens * d)]
    for layer in range(BLOCKS):
        pre = f"h.{layer}"
        b.norm(f"{pre}.ln_1", "layernorm", d, tokens * d, ig_extra=residual)
        b.linear(f"{pre}.attn.c_attn", tokens, d, 3 * d)
        b.attention(f"{pre}.attn.scores", n, HEADS, seq, d // HEADS)
        b.linear(f"{pre}.attn.c_proj", tokens, d, d, fwd_extra=residual)
        b.norm(f"{pre}.ln_2", "layernorm", d, tokens * d, ig_extra=residual)
        b.linear(f"{pre}.mlp.c_fc", tokens, d, FFN, act="relu")  # GELU
        b.linear(f"{pre}.mlp.c_proj", tokens, FFN, d, fwd_extra=residual)
    b.norm("ln_f", "layernorm", d, tokens * d)
    b.linear("lm_head", tokens, d, GPT2_VOCAB, bias=False, tied=True)


def build(
    name: str,
    hw: HardwareConfig,
    batch: int,
    fmt: NumberFormat,
    element_bytes: int,
    seq: int | None,
) -> tuple[tuple[Layer, ...], int, int]:
    """Layers, input bytes and output bytes of the big network ``name`` on a ``fmt`` device.

    ``element_bytes``: gradient bytes per parameter on the link.  Images and the
    output are scratchpad words (``fmt.word_bytes`` per value), token ids 4 bytes;
    the output is the logits (BERT: the pooled ``[CLS]`` vector).
    """
    b = NetBuilder(hw, batch, element_bytes, fmt)
    if name == "resnet50":
        resnet50(b)
    elif name == "vgg19":
        vgg19(b)
    elif name == "bert-base":
        bert_base(b, seq)
    else:
        gpt2_small(b, seq)
    layers = b.finish()
    word = fmt.word_bytes
    if name in ("resnet50", "vgg19"):
        in_bytes = batch * 3 * IMAGE_SIZE * IMAGE_SIZE * word
        out_bytes = batch * IMAGENET_CLASSES * word
    elif name == "bert-base":
        in_bytes, out_bytes = batch * seq * 4, batch * HIDDEN * word
    else:
        in_bytes, out_bytes = batch * seq * 4, batch * seq * GPT2_VOCAB * word
    return layers, in_bytes, out_bytes
