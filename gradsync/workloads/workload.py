"""What a workload is: layers in forward order, each with the device commands of its passes.

A :class:`Workload` is what the collective-level simulator (:mod:`gradsync.scale`)
consumes: per layer, the cycles of every device command of its forward,
input-gradient (dA), weight-gradient (dW) and update passes, and the bytes of
gradient it exchanges.  Built-in workloads (:mod:`gradsync.workloads.networks`,
:mod:`gradsync.workloads.mlp`) compute those cycles from the project's own
formulas (:mod:`gradsync.spec.timing`); imported ones
(:mod:`gradsync.workloads.importers`) carry the user's numbers.
``docs/workloads.md`` documents the JSON form (:meth:`Workload.to_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass

from gradsync.spec.hardware import HardwareConfig

#: Version of the JSON document :meth:`Workload.to_dict` returns.
JSON_VERSION = 1


class WorkloadError(ValueError):
    """A workload that cannot be built or read; the message names the value, file, line, column."""


@dataclass(frozen=True)
class Gemm:
    """``C[m, n] = A[m, k] @ B[k, n]``, repeated ``count`` times (heads x batch, ...)."""

    m: int
    k: int
    n: int
    count: int = 1

    def to_dict(self) -> dict:
        return {"m": self.m, "k": self.k, "n": self.n, "count": self.count}

    def __str__(self) -> str:
        shape = f"{self.m}x{self.k}x{self.n}"
        return shape if self.count == 1 else f"{self.count}*{shape}"


@dataclass(frozen=True)
class Layer:
    """One layer: its parameters, gradient bytes and the cycles of each pass's commands.

    ``fwd``/``ig``/``wg``/``update`` hold the cycles of each device command of
    the pass, in issue order (a GEMM repeated ``count`` times is one entry of
    ``count * gemm_cycles``).  ``ig`` is empty where no input gradient is
    needed (the first layer, embeddings); ``wg`` and ``update`` are empty for
    layers without parameters (the tied GPT-2 LM head has a ``wg``: its dW is
    accumulated into the token embedding's gradient).
    """

    name: str
    kind: str
    params: int
    grad_bytes: int
    fwd: tuple[int, ...]
    ig: tuple[int, ...]
    wg: tuple[int, ...]
    update: tuple[int, ...]
    fwd_gemms: tuple[Gemm, ...] = ()
    ig_gemms: tuple[Gemm, ...] = ()
    wg_gemms: tuple[Gemm, ...] = ()

    @property
    def fwd_cycles(self) -> int:
        return sum(self.fwd)

    @property
    def ig_cycles(self) -> int:
        return sum(self.ig)

    @property
    def wg_cycles(self) -> int:
        return sum(self.wg)

    @property
    def update_cycles(self) -> int:
        return sum(self.update)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "params": self.params,
            "grad_bytes": self.grad_bytes,
            "fwd": list(self.fwd),
            "ig": list(self.ig),
            "wg": list(self.wg),
            "update": list(self.update),
            "fwd_cycles": self.fwd_cycles,
            "ig_cycles": self.ig_cycles,
            "wg_cycles": self.wg_cycles,
            "update_cycles": self.update_cycles,
            "fwd_gemms": [g.to_dict() for g in self.fwd_gemms],
            "ig_gemms": [g.to_dict() for g in self.ig_gemms],
            "wg_gemms": [g.to_dict() for g in self.wg_gemms],
        }


@dataclass(frozen=True)
class Workload:
    """A network's training step on one data-parallel node.

    ``batch`` is the per-node batch the cycles were computed for (0: unknown,
    an imported file); ``input_bytes`` the bytes the host loads per step,
    ``output_bytes`` the bytes it dumps (logits) and loads back (dZ);
    ``hardware`` the array the cycles were computed for (None: imported);
    ``element_bytes`` the bytes of one gradient element on the link;
    ``format`` the device's number format the cycles were computed for (``q5.10``,
    ``bf16``; None: imported) and ``grad_format`` a bf16 device's gradient exchange
    format (``fp32`` or ``bf16``; None for fixed point).
    """

    name: str
    layers: tuple[Layer, ...]
    batch: int
    element_bytes: int
    input_bytes: int
    output_bytes: int
    source: str
    hardware: HardwareConfig | None = None
    format: str | None = None
    grad_format: str | None = None

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def grad_bytes(self) -> int:
        return sum(layer.grad_bytes for layer in self.layers)

    @property
    def totals(self) -> dict[str, int]:
        """Layer count, parameters, gradient bytes and the cycles of each pass, summed."""
        return {
            "layers": len(self.layers),
            "params": self.params,
            "grad_bytes": self.grad_bytes,
            "fwd_cycles": sum(x.fwd_cycles for x in self.layers),
            "ig_cycles": sum(x.ig_cycles for x in self.layers),
            "wg_cycles": sum(x.wg_cycles for x in self.layers),
            "update_cycles": sum(x.update_cycles for x in self.layers),
        }

    def to_dict(self) -> dict:
        """The documented JSON document (``docs/workloads.md``, version :data:`JSON_VERSION`)."""
        hw = self.hardware
        return {
            "version": JSON_VERSION,
            "name": self.name,
            "source": self.source,
            "batch": self.batch,
            "element_bytes": self.element_bytes,
            "format": self.format,
            "grad_format": self.grad_format,
            "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes,
            "hardware": None
            if hw is None
            else {
                "array_rows": hw.array_rows,
                "array_cols": hw.array_cols,
                "vector_lanes": hw.vector_lanes,
            },
            "totals": self.totals,
            "layers": [layer.to_dict() for layer in self.layers],
        }
