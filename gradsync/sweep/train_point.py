"""A ``train`` point: one ``gradsync train`` configuration, run on a Dask worker.

Options are ``gradsync train``'s own: the point's options are turned into the
command line they stand for (``chunk_bytes = 128`` -> ``--chunk-bytes 128``,
``layers = [64, 16, 10]`` -> ``--layers 64,16,10``) and parsed by the train
parser (:func:`gradsync.cmd_train.add_config_arguments`), then turned into a
:class:`~gradsync.firmware.experiment.TrainConfig` by
:func:`gradsync.cmd_train.config_from_args`, so every name, default and check
is the CLI's. The functions here are module-level so that workers import them.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from gradsync.cmd_train import add_config_arguments, backend_for, config_from_args
from gradsync.firmware.experiment import TrainConfig
from gradsync.spec.formats import format_name
from gradsync.spec.hardware import DEFAULT_PRESET, build_config


class _RaisingParser(argparse.ArgumentParser):
    """The train parser, raising ``ValueError`` where the CLI would print and exit."""

    def error(self, message: str):
        raise ValueError(message)


@functools.cache
def _parser() -> _RaisingParser:
    p = _RaisingParser(prog="gradsync train", add_help=False)
    add_config_arguments(p)
    return p


def option_names() -> dict[str, str]:
    """The point option names (``chunk_bytes``) and their flags (``--chunk-bytes``)."""
    return {a.dest: a.option_strings[-1] for a in _parser()._actions if a.option_strings}


@dataclass(frozen=True)
class TrainPoint:
    """A validated train point: what the worker runs and the columns that describe it."""

    backend: str  #: "model" or "rtl"
    max_cycles: int | None
    config: TrainConfig
    columns: dict  #: configuration columns of the result row (CLI spellings)
    schedule_digest: str | None = None  #: SHA-256 of a schedule file (path:Class schedules)


def _argv(options: dict) -> list[str]:
    names = option_names()
    argv = []
    for key, value in options.items():
        dest = key.replace("-", "_")
        if dest not in names:
            raise ValueError(
                f"unknown option {key!r} for train (options: {', '.join(sorted(names))})"
            )
        if isinstance(value, bool | dict):
            raise ValueError(f"option {key!r}: {value!r} is not a value `gradsync train` takes")
        text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
        argv.append(f"{names[dest]}={text}")
    return argv


def _schedule(spec: str) -> tuple[str, str | None]:
    """The schedule spelled for a worker (a file path made absolute) and the file's digest."""
    from gradsync.firmware.schedules import BUILTIN, load_schedule

    load_schedule(spec)  # an unknown name or a broken file is refused before the sweep starts
    if spec in BUILTIN:
        return spec, None
    path_text, _, cls = spec.rpartition(":")
    path = Path(path_text).resolve()
    return f"{path}:{cls}", hashlib.sha256(path.read_bytes()).hexdigest()


def validate(options: dict) -> TrainPoint:
    """The train point ``options`` stand for; ``ValueError`` names the option and the value."""
    args = _parser().parse_args(_argv(options))
    schedule, digest = _schedule(args.schedule)
    cfg = config_from_args(args, schedule=schedule)
    fixed = hasattr(cfg.number_format, "frac_bits")
    columns = {
        "backend": args.backend,
        "schedule": args.schedule,
        "nodes": cfg.nodes,
        "chunk_bytes": "auto" if cfg.chunk_bytes is None else cfg.chunk_bytes,
        "steps": cfg.steps,
        "layers": ",".join(str(w) for w in cfg.layers),
        "global_batch": cfg.global_batch,
        "lr": cfg.learning_rate,
        "seed": cfg.seed,
        "hardware": args.hardware or DEFAULT_PRESET,
        "array": f"{cfg.hardware.array_rows}x{cfg.hardware.array_cols}",
        "link_bytes_per_cycle": cfg.hardware.link_bytes_per_cycle,
        "link_latency_cycles": cfg.hardware.link_latency_cycles,
        "max_payload_bytes": cfg.hardware.max_payload_bytes,
        # fixed point's widths; empty for bf16 (its columns: format, grad_format)
        "total_bits": cfg.number_format.total_bits if fixed else None,
        "frac_bits": cfg.number_format.frac_bits if fixed else None,
        "format": format_name(cfg.number_format),
        "grad_format": cfg.grad_format,
    }
    return TrainPoint(args.backend, args.max_cycles, cfg, columns, digest)


@functools.cache
def _design_digest() -> str:
    from gradsync.sim.build import source_digest

    return source_digest()


def hash_input(point: TrainPoint) -> dict:
    """Everything that decides the point's result (RTL points: also the design sources)."""
    fields = {
        "backend": point.backend,
        "max_cycles": point.max_cycles,
        "config": point.config.to_dict(),
        "schedule_file_sha256": point.schedule_digest,
    }
    if point.backend == "rtl":
        fields["design_sources"] = _design_digest()
    return fields


def build_key(point: TrainPoint) -> str | None:
    """The hardware an RTL point's Verilator model is built for (None: nothing to build)."""
    if point.backend != "rtl":
        return None
    cfg = point.config
    hw = {
        "nodes": cfg.nodes,
        # the link is not part of a build (the firmware sets it: LINK_SET)
        "hardware": build_config(cfg.hardware).to_dict(),
        "format": cfg.number_format.to_dict(),
    }
    return json.dumps(hw, sort_keys=True)


def build(point: TrainPoint) -> str:
    """Build (or find in the cache) the Verilator model of the point's cluster; its folder."""
    from gradsync.sim.rtl_backend import build_cluster

    return str(build_cluster(point.config).directory)


def run(point: TrainPoint) -> dict:
    """Train the point; its columns plus means over the steps (cycles) and the final metrics."""
    from gradsync.firmware import experiment

    t0 = time.perf_counter()
    backend = backend_for(
        point.backend, SimpleNamespace(max_cycles=point.max_cycles, progress=False)
    )
    res = experiment.run(point.config, backend)
    steps = res.steps
    return {
        **point.columns,
        "chunk_bytes": res.chunk_bytes,
        "cycles_per_step": sum(m.cycles for m in steps) / len(steps),
        "layer1_ready_cycle": sum(m.layer1_ready_cycle for m in steps) / len(steps),
        "exposed_comm_cycles": sum(m.exposed_comm_cycles for m in steps) / len(steps),
        "total_cycles": res.total_cycles,
        "final_loss": steps[-1].loss,
        "accuracy": steps[-1].accuracy,
        "wall_seconds": time.perf_counter() - t0,
    }
