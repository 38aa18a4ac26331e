"""A train point is `gradsync train`'s configuration; its hash covers all that decides its result."""

from __future__ import annotations

import pytest

from gradsync.firmware.experiment import TrainConfig
from gradsync.sweep import commands, store, train_point
from gradsync.sweep.runner import prepare
from gradsync.sweep.sweepfile import SweepFile, SweepFileError


def test_options_are_the_cli_options_with_its_defaults():
    p = train_point.validate(
        {
            "chunk_bytes": 128,
            "layers": [64, 16, 10],
            "schedule": "fifo",
            "lr": 0.5,
            "link-bytes-per-cycle": 2,
            "array": "4x4",
        }
    )
    cfg, ref = p.config, TrainConfig()
    assert (cfg.chunk_bytes, cfg.layers, cfg.schedule, cfg.learning_rate) == (
        128,
        (64, 16, 10),
        "fifo",
        0.5,
    )
    assert cfg.hardware.link_bytes_per_cycle == 2
    assert (cfg.hardware.array_rows, cfg.hardware.array_cols) == (4, 4)
    # unspecified: the CLI's defaults, which are TrainConfig's
    assert (cfg.nodes, cfg.steps, cfg.global_batch, cfg.seed) == (
        ref.nodes,
        ref.steps,
        ref.global_batch,
        ref.seed,
    )
    assert p.backend == "rtl"  # `gradsync train`'s default backend
    assert train_point.validate({"chunk_bytes": "auto"}).config.chunk_bytes is None


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"chunk_byts": 64}, "unknown option 'chunk_byts' for train"),
        ({"nodes": "x"}, r"--nodes: invalid int value: 'x'"),
        ({"backend": "fpga"}, r"--backend: invalid choice: 'fpga'"),
        ({"schedule": "bogus"}, "unknown schedule 'bogus'"),
        ({"chunk_bytes": 6}, "--chunk-bytes must be a positive multiple of .* not 6"),
        ({"array": 8}, "--array must look like 8x8, not '8'"),
        ({"steps": True}, "option 'steps': True is not a value"),
    ],
)
def test_bad_options_name_the_key_and_value(options, match):
    with pytest.raises(ValueError, match=match):
        train_point.validate(options)


def _key(options: dict) -> str:
    cmd = commands.get("train")
    return store.point_hash("train", cmd.hash_input(cmd.validate(options)))


def test_hash_is_of_the_full_configuration(monkeypatch):
    base = _key({"backend": "model", "chunk_bytes": 128})
    # the same configuration spelled differently is the same point
    assert _key({"backend": "model", "chunk-bytes": 128, "lr": 0.25}) == base
    assert _key({"backend": "model", "chunk_bytes": 256}) != base
    assert _key({"backend": "model", "chunk_bytes": 128, "max_cycles": 10**6}) != base
    monkeypatch.setattr(store, "__version__", "9.9.9")
    assert _key({"backend": "model", "chunk_bytes": 128}) != base


def test_rtl_points_hash_the_design_sources(monkeypatch):
    keys = {}
    for digest in ("a", "b"):
        monkeypatch.setattr(train_point, "_design_digest", lambda d=digest: d)
        keys[digest] = (_key({"backend": "rtl"}), _key({"backend": "model"}))
    assert keys["a"][0] != keys["b"][0]  # an edited design reruns RTL points
    assert keys["a"][1] == keys["b"][1]  # and not model points


def test_one_model_build_per_distinct_rtl_hardware():
    cmd = commands.get("train")
    keys = {
        cmd.build_key(cmd.validate(o))
        for o in (
            {"schedule": "fifo"},
            {"schedule": "priority", "chunk_bytes": 64},  # same hardware: same build
            # the link is set at run time (LINK_SET): same build
            {"link_latency_cycles": 20},
            {"link_bytes_per_cycle": 4, "max_payload_bytes": 64},
            {"nodes": 3, "global_batch": 63},
            {"array": "4x4"},
        )
    }
    assert len(keys) == 3
    assert cmd.build_key(cmd.validate({"backend": "model"})) is None


def test_a_bad_point_stops_the_sweep_naming_point_and_key(tmp_path):
    sweep = SweepFile(
        tmp_path / "s.toml", "train", {"backend": "model"}, {"nodes": [2, 0], "steps": [1, 2]}
    )
    with pytest.raises(
        SweepFileError, match=r"point 3 of 4 \(nodes=0, steps=1\): --nodes must be >= 1"
    ):
        prepare(sweep)
    with pytest.raises(SweepFileError, match="command 'scal' cannot be swept"):
        prepare(SweepFile(tmp_path / "s.toml", "scal", {}, {"x": [1]}))


def test_a_bf16_point_names_its_format_and_leaves_the_fixed_point_widths_empty():
    bf16 = train_point.validate({"format": "bf16", "hardware": "large", "backend": "model"})
    fixed = train_point.validate({"backend": "model"})
    assert (bf16.columns["format"], bf16.columns["total_bits"], bf16.columns["frac_bits"]) == (
        "bf16",
        None,
        None,
    )
    assert (fixed.columns["format"], fixed.columns["total_bits"]) == ("q5.10", 16)
    assert train_point.hash_input(bf16)["config"] != train_point.hash_input(fixed)["config"]
