"""Workloads: the layers of a network's training step, with their compute cycles and gradients.

``builtin(name)`` builds ResNet-50, VGG-19, BERT-base, GPT-2 small or the
digits MLP of ``gradsync train`` from their architecture, timing every device
command with :mod:`gradsync.spec.timing` on a configurable array in the
device's number format, its gradients sized by the exchange format
(:mod:`gradsync.workloads.formats`);
``load(path)`` reads an ASTRA-sim text workload or a CSV of the same columns;
``get(name_or_path)`` does either.  The collective-level simulator
(:mod:`gradsync.scale`) consumes the result.  See ``docs/workloads.md``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gradsync.spec.hardware import DEFAULT_HARDWARE, HardwareConfig
from gradsync.workloads import networks
from gradsync.workloads.formats import (
    GRAD_FORMATS,
    NumberFormat,
    device_formats,
    exchange_element_bytes,
    format_name,
)
from gradsync.workloads.importers import load
from gradsync.workloads.mlp import DEFAULT_LAYERS, DEFAULT_LOCAL_BATCH, mlp_layers
from gradsync.workloads.workload import JSON_VERSION, Gemm, Layer, Workload, WorkloadError

__all__ = [
    "BUILTIN_NAMES",
    "BIG_NETWORK_HARDWARE",
    "GRAD_FORMATS",
    "JSON_VERSION",
    "Gemm",
    "Layer",
    "Workload",
    "WorkloadError",
    "builtin",
    "exchange_element_bytes",
    "format_name",
    "get",
    "load",
]

#: The built-in workloads, in the order ``gradsync workloads list`` prints them.
BUILTIN_NAMES = ("resnet50", "vgg19", "bert-base", "gpt2", "mlp")
#: Default array of the four big networks (the MLP defaults to ``DEFAULT_HARDWARE``).
BIG_NETWORK_HARDWARE = HardwareConfig(array_rows=128, array_cols=128, vector_lanes=128)
#: Default local batch of each built-in (the MLP's: global 64 on 2 nodes).
DEFAULT_BATCH = {
    "resnet50": 32,
    "vgg19": 32,
    "bert-base": 32,
    "gpt2": 8,
    "mlp": DEFAULT_LOCAL_BATCH,
}
#: Default and largest sequence length of the transformers (their position tables).
DEFAULT_SEQ_LEN = {"bert-base": 128, "gpt2": 1024}
MAX_SEQ_LEN = {"bert-base": networks.BERT_MAX_POSITIONS, "gpt2": networks.GPT2_CONTEXT}


def builtin(
    name: str,
    *,
    batch: int | None = None,
    hardware: HardwareConfig | None = None,
    number_format: NumberFormat | None = None,
    grad_format: str | None = None,
    element_bytes: int | None = None,
    seq_len: int | None = None,
    layers: tuple[int, ...] | None = None,
) -> Workload:
    """The built-in workload ``name`` for a local ``batch`` on ``hardware``.

    ``number_format``: the device's (fixed point, default q5.10, or bf16): GEMM
    cycles and the update's commands.  ``grad_format``: bf16 only, ``fp32``
    (default) or ``bf16`` on the link.  A layer exchanges ``params`` times
    :func:`exchange_element_bytes` bytes.  ``element_bytes`` (deprecated): alone,
    2 means q5.10 and 4 bf16 with fp32 exchange; beside a format it must agree.
    ``seq_len``: BERT-base and GPT-2 only.  ``layers``: the MLP's widths, input
    first (default 64,32,32,10).
    """
    if name not in BUILTIN_NAMES:
        raise WorkloadError(
            f"unknown workload {name!r}; the built-in ones are {', '.join(BUILTIN_NAMES)}"
        )
    batch = DEFAULT_BATCH[name] if batch is None else batch
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise WorkloadError(f"batch must be a positive whole number, not {batch!r}")
    fmt, grad_format = device_formats(number_format, grad_format, element_bytes)
    element = exchange_element_bytes(fmt, grad_format)
    if seq_len is not None and name not in DEFAULT_SEQ_LEN:
        raise WorkloadError(f"seq_len applies to bert-base and gpt2, not {name}")
    if layers is not None and name != "mlp":
        raise WorkloadError(f"layers applies to the mlp, not {name}")
    if name == "mlp":
        hw = hardware or DEFAULT_HARDWARE
        widths = DEFAULT_LAYERS if layers is None else tuple(layers)
        result = mlp_layers(widths, batch, hw, fmt, grad_format)
        in_bytes = batch * widths[0] * fmt.word_bytes
        out_bytes = batch * widths[-1] * fmt.word_bytes
    else:
        hw = hardware or BIG_NETWORK_HARDWARE
        seq = _seq_len(name, seq_len)
        result, in_bytes, out_bytes = networks.build(name, hw, batch, fmt, element, seq)
    return Workload(
        name=name,
        layers=result,
        batch=batch,
        element_bytes=element,
        input_bytes=in_bytes,
        output_bytes=out_bytes,
        source="builtin",
        hardware=hw,
        format=format_name(fmt),
        grad_format=grad_format,
    )


def _seq_len(name: str, seq_len: int | None) -> int | None:
    if name not in DEFAULT_SEQ_LEN:
        return None
    if seq_len is None:
        return DEFAULT_SEQ_LEN[name]
    top = MAX_SEQ_LEN[name]
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 1 <= seq_len <= top:
        raise WorkloadError(f"seq_len of {name} must be between 1 and {top}, not {seq_len!r}")
    return seq_len


def get(name_or_path: str | Path, **kw) -> Workload:
    """A built-in by name, else a workload file (``**kw``: :func:`builtin` or :func:`load` options).

    Options a file cannot honour (``batch``, ``hardware``, ``seq_len``,
    ``layers``) raise :class:`WorkloadError`: an imported file's cycles are fixed;
    its formats only size its gradient elements (``wg_comm_bytes / element``).
    """
    if str(name_or_path) in BUILTIN_NAMES:
        return builtin(str(name_or_path), **kw)
    path = Path(name_or_path)
    if not path.exists() and path.suffix.lower() not in (".txt", ".csv") and "/" not in str(path):
        raise WorkloadError(
            f"unknown workload {str(name_or_path)!r}; the built-in ones are "
            f"{', '.join(BUILTIN_NAMES)} (or give an ASTRA-sim .txt or .csv file)"
        )
    formats = ("number_format", "grad_format", "element_bytes")
    fixed = [k for k, v in kw.items() if k not in formats and v is not None]
    if fixed:
        raise WorkloadError(
            f"{fixed[0]} cannot be changed for the imported workload {str(path)!r}: "
            "its cycles are given by the file"
        )
    fmt, grad = device_formats(*(kw.get(k) for k in formats))
    wl = load(path, element_bytes=exchange_element_bytes(fmt, grad))
    return replace(wl, format=format_name(fmt), grad_format=grad)
