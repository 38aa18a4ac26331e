"""The digits MLP of ``gradsync train``, command for command as the firmware issues it.

Mirrors ``firmware/training.py`` (``NodeFirmware._step`` and
``_launch_update``) for layer ``i`` of ``L`` with widths ``(n_in, n_out)`` and
local batch ``b``:

- forward: ``GEMM(b, n_in, n_out)``, then ``RELU`` over ``b * n_out`` values
  unless ``i`` is the top layer;
- weight gradient: ``GEMM(n_in, b, n_out)`` (``dW = A^T dZ``);
- input gradient, for ``i > 1`` only: ``GEMM(b, n_out, n_in)`` (``dA = dZ W^T``),
  then ``RELU_BWD`` over ``b * n_in`` values (the mask of layer ``i - 1``);
- update: ``SGD`` over ``n_in * n_out`` weights (bf16: ``SGD`` on the fp32 master
  weights, then ``SCALE`` into the bf16 working copy).

The gradient buffer is ``n_in * n_out`` gradient elements rounded up to the DMA
alignment (``firmware.training.plan_memory``), sent as its link bytes; the host
loads ``b x 64`` inputs and dumps ``b x 10`` logits (then loads ``dZ`` of the same
size), scratchpad words each.
"""

from __future__ import annotations

from gradsync.firmware.experiment import TrainConfig
from gradsync.spec import regmap as rm
from gradsync.spec.formats import DEFAULT_FORMAT
from gradsync.spec.hardware import HardwareConfig
from gradsync.spec.link import wire_bytes
from gradsync.workloads.builder import Command, command_cycles, update_commands
from gradsync.workloads.formats import NumberFormat
from gradsync.workloads.workload import Gemm, Layer, WorkloadError

_TRAIN = TrainConfig()
#: ``gradsync train``'s default ``--layers``.
DEFAULT_LAYERS = tuple(_TRAIN.layers)
#: ``gradsync train``'s default local batch (its global batch over its default node count).
DEFAULT_LOCAL_BATCH = _TRAIN.global_batch // _TRAIN.nodes


def _aligned(n_bytes: int) -> int:
    return -(-n_bytes // rm.DMA_ALIGN_BYTES) * rm.DMA_ALIGN_BYTES


def mlp_layers(
    widths: tuple[int, ...],
    batch: int,
    hw: HardwareConfig,
    fmt: NumberFormat = DEFAULT_FORMAT,
    grad_format: str | None = None,
) -> tuple[Layer, ...]:
    """One :class:`Layer` per weight matrix of the MLP ``widths`` (input width first).

    On a ``fmt`` device whose gradients go on the link as ``grad_format`` (bf16 only):
    ``grad_bytes`` is the firmware's gradient buffer (``fmt.grad_bytes`` per weight,
    aligned) as link bytes (``spec.link.wire_bytes``: half of it with bf16 exchange).
    """
    widths = tuple(widths)
    if len(widths) < 2 or any(not isinstance(w, int) or w < 1 for w in widths):
        raise WorkloadError(f"MLP layers must be two or more positive widths, not {widths!r}")
    top = len(widths) - 1
    out = []
    for i in range(1, top + 1):
        n_in, n_out = widths[i - 1], widths[i]
        fwd: list[Command] = [Gemm(batch, n_in, n_out)]
        if i < top:
            fwd.append(("relu", batch * n_out))
        ig: list[Command] = []
        if i > 1:
            ig = [Gemm(batch, n_out, n_in), ("relu_bwd", batch * n_in)]
        wg = [Gemm(n_in, batch, n_out)]
        memory = _aligned(n_in * n_out * fmt.grad_bytes)
        out.append(
            Layer(
                name=f"fc{i}",
                kind="linear",
                params=n_in * n_out,
                grad_bytes=wire_bytes(memory, bf16=grad_format == "bf16"),
                fwd=tuple(command_cycles(c, hw, fmt) for c in fwd),
                ig=tuple(command_cycles(c, hw, fmt) for c in ig),
                wg=tuple(command_cycles(c, hw, fmt) for c in wg),
                update=tuple(
                    command_cycles(c, hw, fmt) for c in update_commands(n_in * n_out, fmt)
                ),
                fwd_gemms=tuple(c for c in fwd if isinstance(c, Gemm)),
                ig_gemms=tuple(c for c in ig if isinstance(c, Gemm)),
                wg_gemms=tuple(wg),
            )
        )
    return tuple(out)
