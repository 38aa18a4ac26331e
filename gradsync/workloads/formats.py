"""A workload's number formats: the device's (fixed point or bf16) and the gradient exchange's.

The device format decides the compute cycles (:func:`gradsync.spec.timing.gemm_cycles`
takes it: bf16's PE adds a pipeline cycle) and the update's commands (bf16: SGD on
the fp32 master weights, then SCALE into the bf16 working copy, as
``firmware/training.py``).  The exchange format decides the gradient bytes on
the link: a fixed-point device sends its own gradient words
(``fmt.grad_bytes``); a bf16 device holds fp32 gradients and sends them as
``fp32`` or ``bf16`` (:data:`gradsync.spec.link.EXCHANGE_ELEMENT_BYTES`).
Names are spelled as ``gradsync train --format`` / ``--grad-format`` spell them.
"""

from __future__ import annotations

from gradsync.spec.formats import (
    DEFAULT_FORMAT,
    BFloat16Format,
    FixedPointFormat,
    format_name,
    is_float,
)
from gradsync.spec.link import EXCHANGE_ELEMENT_BYTES
from gradsync.workloads.workload import WorkloadError

NumberFormat = FixedPointFormat | BFloat16Format
#: Exchange formats of a bf16 device, the first the default.
GRAD_FORMATS = tuple(EXCHANGE_ELEMENT_BYTES)
#: What a bare ``element_bytes`` (the option before formats existed) stands for: the first
#: of these devices whose exchange element has that size.
ELEMENT_BYTES_DEVICES: tuple[tuple[NumberFormat, str | None], ...] = (
    (DEFAULT_FORMAT, None),
    (BFloat16Format(), GRAD_FORMATS[0]),
)


def resolve_grad_format(fmt: NumberFormat, grad_format: str | None) -> str | None:
    """The exchange format of ``fmt``: None for fixed point, ``fp32`` (default) or ``bf16``."""
    if not is_float(fmt):
        if grad_format is not None:
            raise WorkloadError(
                f"grad_format {grad_format!r} applies only to the bf16 format; a fixed-point "
                f"device ({format_name(fmt)}) exchanges its own gradient words"
            )
        return None
    if grad_format is None:
        return GRAD_FORMATS[0]
    if grad_format not in GRAD_FORMATS:
        raise WorkloadError(f"grad_format must be {' or '.join(GRAD_FORMATS)}, not {grad_format!r}")
    return grad_format


def exchange_element_bytes(fmt: NumberFormat, grad_format: str | None) -> int:
    """Bytes of one gradient element on the link (a layer sends ``params`` of them)."""
    grad_format = resolve_grad_format(fmt, grad_format)
    return fmt.grad_bytes if grad_format is None else EXCHANGE_ELEMENT_BYTES[grad_format]


def device_for_element_bytes(element_bytes: int) -> tuple[NumberFormat, str | None]:
    """(format, grad_format) a bare ``element_bytes`` means (:data:`ELEMENT_BYTES_DEVICES`)."""
    sizes = []
    for fmt, grad in ELEMENT_BYTES_DEVICES:
        size = exchange_element_bytes(fmt, grad)
        if size == element_bytes and not isinstance(element_bytes, bool):
            return fmt, grad
        sizes.append(str(size))
    raise WorkloadError(f"element_bytes must be {' or '.join(sizes)}, not {element_bytes!r}")


def device_formats(
    number_format: NumberFormat | None,
    grad_format: str | None,
    element_bytes: int | None,
) -> tuple[NumberFormat, str | None]:
    """The device's (format, exchange format) from the options given; ``element_bytes``
    alone stands for :func:`device_for_element_bytes`, beside a format it must agree."""
    if number_format is None and grad_format is None and element_bytes is not None:
        return device_for_element_bytes(element_bytes)
    fmt = DEFAULT_FORMAT if number_format is None else number_format
    grad = resolve_grad_format(fmt, grad_format)
    if element_bytes is not None and element_bytes != exchange_element_bytes(fmt, grad):
        on_link = format_name(fmt) + (f" with {grad} exchange" if grad else "")
        raise WorkloadError(
            f"element_bytes {element_bytes!r} disagrees with {on_link} "
            f"({exchange_element_bytes(fmt, grad)}-byte gradients on the link); leave it out"
        )
    return fmt, grad
