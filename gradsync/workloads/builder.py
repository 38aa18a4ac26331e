"""Turns layer shapes into device commands and their cycles (the built-in networks use it).

Every command is timed with the project's own closed formulas,
:func:`gradsync.spec.timing.gemm_cycles` (in the device's number format) and
:func:`gradsync.spec.timing.vector_cycles` (the same in every format); a GEMM
repeated ``count`` times costs ``count * gemm_cycles``.  The update is
:func:`update_commands`: one ``sgd`` in fixed point, ``sgd`` then ``scale`` in bf16.  A pass is written as a list of commands, each
a :class:`~gradsync.workloads.workload.Gemm` or a ``(vector op, elements)``
pair.

Element-wise work follows the firmware's convention (``firmware/training.py``):
an activation runs at the end of the forward pass of the layer it follows,
and its backward (``relu_bwd``) at the end of the input-gradient pass of the
layer *above* it, which turns that layer's ``dZ`` into the ``dZ`` of the layer
below.  :class:`NetBuilder` carries that pending backward from one layer to
the next; an activation on the top layer has its backward at the start of
that layer's weight-gradient pass (the first command of its backward).
"""

from __future__ import annotations

from dataclasses import replace

from gradsync.spec.formats import DEFAULT_FORMAT
from gradsync.spec.hardware import HardwareConfig
from gradsync.spec.timing import gemm_cycles, vector_cycles
from gradsync.workloads.formats import NumberFormat, is_float
from gradsync.workloads.workload import Gemm, Layer

#: A device command: a GEMM, or a vector op over a number of elements.
Command = Gemm | tuple[str, int]


def command_cycles(cmd: Command, hw: HardwareConfig, fmt: NumberFormat = DEFAULT_FORMAT) -> int:
    """Cycles of one command on ``hw`` in ``fmt`` (``count * gemm_cycles`` for a repeated GEMM)."""
    if isinstance(cmd, Gemm):
        return cmd.count * gemm_cycles(cmd.m, cmd.k, cmd.n, hw, fmt)
    op, n = cmd
    return vector_cycles(op, n, hw)


def update_commands(params: int, fmt: NumberFormat) -> list[Command]:
    """The SGD update of ``params`` weights, as the firmware issues it (``_launch_update``):
    ``sgd``; in bf16 ``sgd`` on the fp32 master weights, then ``scale`` by 1.0 into the
    bf16 working copy the GEMMs read."""
    if not params:
        return []
    return [("sgd", params), ("scale", params)] if is_float(fmt) else [("sgd", params)]


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output height (or width) of a convolution or pooling window."""
    return (size + 2 * pad - kernel) // stride + 1


class NetBuilder:
    """Collects the layers of one network for a local ``batch`` on ``hw`` in format ``fmt``.

    ``element_bytes`` is the gradient element size on the link: a layer's
    ``grad_bytes`` is ``params * element_bytes``.
    """

    def __init__(
        self,
        hw: HardwareConfig,
        batch: int,
        element_bytes: int,
        fmt: NumberFormat = DEFAULT_FORMAT,
    ) -> None:
        self.hw = hw
        self.batch = batch
        self.element_bytes = element_bytes
        self.fmt = fmt
        self.layers: list[Layer] = []
        self.pending: list[Command] = []  # backward of the last activation, for the next ig

    # ------------------------------------------------------------ primitives
    def add(
        self,
        name: str,
        kind: str,
        params: int,
        fwd: list[Command],
        ig: list[Command] | None,
        wg: list[Command],
        act_bwd: list[Command] = (),
    ) -> None:
        """Append a layer; ``ig=None``: no input-gradient pass (first layer, embeddings).

        ``act_bwd``: backward of the activation ending ``fwd``, run by the next layer's ``ig``.
        """
        if ig is None:
            if self.pending:
                raise ValueError(f"layer {name} has no input-gradient pass to end the one below")
            ig_cmds: list[Command] = []
        else:
            ig_cmds = [*ig, *self.pending]
        self.pending = list(act_bwd)
        hw, fmt = self.hw, self.fmt
        self.layers.append(
            Layer(
                name=name,
                kind=kind,
                params=params,
                grad_bytes=params * self.element_bytes,
                fwd=tuple(command_cycles(c, hw, fmt) for c in fwd),
                ig=tuple(command_cycles(c, hw, fmt) for c in ig_cmds),
                wg=tuple(command_cycles(c, hw, fmt) for c in wg),
                update=tuple(command_cycles(c, hw, fmt) for c in update_commands(params, fmt)),
                fwd_gemms=tuple(c for c in fwd if isinstance(c, Gemm)),
                ig_gemms=tuple(c for c in ig_cmds if isinstance(c, Gemm)),
                wg_gemms=tuple(c for c in wg if isinstance(c, Gemm)),
            )
        )

    def finish(self) -> tuple[Layer, ...]:
        """The layers; a top-layer activation's backward opens that layer's weight-gradient pass."""
        if self.pending:
            top = self.layers[-1]
            cycles = tuple(command_cycles(c, self.hw, self.fmt) for c in self.pending)
            self.layers[-1] = replace(top, wg=cycles + top.wg)
            self.pending = []
        return tuple(self.layers)

    # ---------------------------------------------------------------- layers
    def linear(
        self,
        name: str,
        rows: int,
        n_in: int,
        n_out: int,
        *,
        bias: bool = True,
        act: str | None = None,
        first: bool = False,
        tied: bool = False,
        fwd_extra: list[Command] = (),
        ig_extra: list[Command] = (),
    ) -> None:
        """``Y[rows, n_out] = X[rows, n_in] @ W (+ b)``, then ``act`` (``"relu"``) if given.

        Forward ``gemm(rows, n_in, n_out)``, dW ``gemm(n_in, rows, n_out)``, dA
        ``gemm(rows, n_out, n_in)``.  A bias adds one ``sgd`` pass (two-operand
        add) to the forward and one ``scale`` pass (the column sum) to dW.
        ``tied``: the weight belongs to another layer (GPT-2's LM head), so the
        layer has no parameters of its own but still computes its dW.
        """
        m = rows * n_out
        fwd: list[Command] = [Gemm(rows, n_in, n_out)]
        wg: list[Command] = [Gemm(n_in, rows, n_out)]
        if bias:
            fwd.append(("sgd", m))
            wg.append(("scale", m))
        fwd += fwd_extra
        act_bwd: list[Command] = []
        if act:
            fwd.append((act, m))
            act_bwd = [("relu_bwd", m)]
        ig = None if first else [Gemm(rows, n_out, n_in), *ig_extra]
        params = 0 if tied else n_in * n_out + (n_out if bias else 0)
        self.add(name, "linear", params, fwd, ig, wg, act_bwd)

    def conv(
        self,
        name: str,
        c_in: int,
        c_out: int,
        kernel: int,
        stride: int,
        pad: int,
        size: int,
        *,
        bias: bool = False,
        act: str | None = None,
        first: bool = False,
        ig_extra: list[Command] = (),
    ) -> int:
        """A square convolution by im2col on a ``size x size`` input; returns the output size.

        ``M = batch * Ho * Wo``, ``K = c_in * kernel**2``, ``N = c_out``:
        forward ``gemm(M, K, N)``, dW ``gemm(K, M, N)``, dA ``gemm(M, N, K)``.
        """
        out = conv_out(size, kernel, stride, pad)
        m, k, n = self.batch * out * out, c_in * kernel * kernel, c_out
        fwd: list[Command] = [Gemm(m, k, n)]
        wg: list[Command] = [Gemm(k, m, n)]
        if bias:
            fwd.append(("sgd", m * n))
            wg.append(("scale", m * n))
        act_bwd: list[Command] = []
        if act:
            fwd.append((act, m * n))
            act_bwd = [("relu_bwd", m * n)]
        ig = None if first else [Gemm(m, n, k), *ig_extra]
        params = k * n + (n if bias else 0)
        self.add(name, "conv", params, fwd, ig, wg, act_bwd)
        return out

    def norm(
        self,
        name: str,
        kind: str,
        channels: int,
        elements: int,
        *,
        relu: bool = False,
        residual: bool = False,
        ig_extra: list[Command] = (),
    ) -> None:
        """BatchNorm or LayerNorm over ``elements`` values with ``2 * channels`` parameters.

        Forward: a statistics pass and a normalise-and-affine pass (``scale``),
        then the residual add (``sgd``) and ``relu`` if asked.  dA: two
        ``scale`` passes; dW (gamma, beta): one ``scale`` reduction pass.
        """
        fwd: list[Command] = [("scale", elements), ("scale", elements)]
        if residual:
            fwd.append(("sgd", elements))
        act_bwd: list[Command] = []
        if relu:
            fwd.append(("relu", elements))
            act_bwd = [("relu_bwd", elements)]
        ig = [("scale", elements), ("scale", elements), *ig_extra]
        self.add(name, kind, 2 * channels, fwd, ig, [("scale", elements)], act_bwd)

    def maxpool(
        self, name: str, channels: int, size: int, kernel: int, stride: int, pad: int
    ) -> int:
        """Max pooling: one ``relu`` (compare) pass over every window element; dA routes
        the gradient to the maxima with one ``relu_bwd`` pass over the input."""
        out = conv_out(size, kernel, stride, pad)
        windows = self.batch * channels * out * out * kernel * kernel
        n_in = self.batch * channels * size * size
        self.add(name, "pool", 0, [("relu", windows)], [("relu_bwd", n_in)], [])
        return out

    def avgpool(self, name: str, channels: int, size: int) -> None:
        """Global average pooling: one ``scale`` pass over the input each way."""
        n_in = self.batch * channels * size * size
        self.add(name, "pool", 0, [("scale", n_in)], [("scale", n_in)], [])

    def embedding(
        self, name: str, rows: int, dim: int, tokens: int, *, gather: str, grad: str
    ) -> None:
        """A ``rows x dim`` table read for ``tokens`` positions (no input gradient).

        ``gather``: the forward vector op over ``tokens * dim`` values (a copy is
        ``scale``, an add onto the running sum is ``sgd``); ``grad``: the
        weight-gradient op (``sgd``: scatter-add of rows; ``scale``: a reduction).
        """
        n = tokens * dim
        self.add(name, "embedding", rows * dim, [(gather, n)], None, [(grad, n)])

    def attention(self, name: str, batch: int, heads: int, seq: int, head_dim: int) -> None:
        """Score products of multi-head attention, no parameters.

        Forward: ``S = Q K^T`` (``gemm(seq, head_dim, seq)`` per head and
        sample), softmax (two ``scale`` passes over the scores), ``O = P V``
        (``gemm(seq, seq, head_dim)``).  dA: ``dV = P^T dO``, ``dP = dO V^T``,
        softmax backward (two ``scale`` passes), ``dQ = dS K``, ``dK = dS^T Q``.
        A causal mask is not exploited (the full score matrix is computed).
        """
        bh, scores = batch * heads, batch * heads * seq * seq
        softmax: list[Command] = [("scale", scores), ("scale", scores)]
        fwd = [Gemm(seq, head_dim, seq, bh), *softmax, Gemm(seq, seq, head_dim, bh)]
        ig = [
            Gemm(seq, seq, head_dim, bh),
            Gemm(seq, head_dim, seq, bh),
            *softmax,
            Gemm(seq, seq, head_dim, bh),
            Gemm(seq, seq, head_dim, bh),
        ]
        self.add(name, "attention", 0, fwd, ig, [])
