"""The digits MLP of ``gradsync train``, command for command as the firmware issues it.

Mirrors ``firmware/training.py`` (``NodeFirmware._step`` and
``_launch_update``) for layer ``i`` of ``L`` with widths ``(n_in, n_out)`` and
local batch ``b``:

- forward: ``GEMM(b, n_in, n_out)``, then ``RELU`` over ``b * n_out`` values
  unless ``i`` is the top layer;
- weight gradient: ``GEMM(n_in, b, n_out)`` (``dW = A^T dZ``);
- input gradient, for ``i > 1`` only: ``GEMM(b, n_out, n_in)`` (``dA = dZ W^T``),
  then ``RELU_BWD`` over ``b * n_in`` values (the mask of layer ``i - 1``);
- update: ``SGD`` over ``n_in * n_out`` weights.

The gradient buffer is ``n_in * n_out`` words rounded up to the DMA alignment
(``firmware.training.plan_memory``); the host loads ``b x 64`` inputs and
dumps ``b x 10`` logits (then loads ``dZ`` of the same size).
"""

from __future__ import annotations

from gradsync.firmware.experiment import TrainConfig
from gradsync.spec import regmap as rm
from gradsync.spec.hardware import HardwareConfig
from gradsync.spec.timing import gemm_cycles, vector_cycles
from gradsync.workloads.workload import Gemm, Layer, WorkloadError

_TRAIN = TrainConfig()
#: ``gradsync train``'s default ``--layers``.
DEFAULT_LAYERS = tuple(_TRAIN.layers)
#: ``gradsync train``'s default local batch (its global batch over its default node count).
DEFAULT_LOCAL_BATCH = _TRAIN.global_batch // _TRAIN.nodes


def _aligned(n_bytes: int) -> int:
    return -(-n_bytes // rm.DMA_ALIGN_BYTES) * rm.DMA_ALIGN_BYTES


def mlp_layers(
    widths: tuple[int, ...], batch: int, hw: HardwareConfig, word_bytes: int
) -> tuple[Layer, ...]:
    """One :class:`Layer` per weight matrix of the MLP ``widths`` (input width first)."""
    widths = tuple(widths)
    if len(widths) < 2 or any(not isinstance(w, int) or w < 1 for w in widths):
        raise WorkloadError(f"MLP layers must be two or more positive widths, not {widths!r}")
    top = len(widths) - 1
    out = []
    for i in range(1, top + 1):
        n_in, n_out = widths[i - 1], widths[i]
        fwd = [gemm_cycles(batch, n_in, n_out, hw)]
        if i < top:
            fwd.append(vector_cycles("relu", batch * n_out, hw))
        ig: tuple[int, ...] = ()
        ig_gemms: tuple[Gemm, ...] = ()
        if i > 1:
            ig = (
                gemm_cycles(batch, n_out, n_in, hw),
                vector_cycles("relu_bwd", batch * n_in, hw),
            )
            ig_gemms = (Gemm(batch, n_out, n_in),)
        out.append(
            Layer(
                name=f"fc{i}",
                kind="linear",
                params=n_in * n_out,
                grad_bytes=_aligned(n_in * n_out * word_bytes),
                fwd=tuple(fwd),
                ig=ig,
                wg=(gemm_cycles(n_in, batch, n_out, hw),),
                update=(vector_cycles("sgd", n_in * n_out, hw),),
                fwd_gemms=(Gemm(batch, n_in, n_out),),
                ig_gemms=ig_gemms,
                wg_gemms=(Gemm(n_in, batch, n_out),),
            )
        )
    return tuple(out)
