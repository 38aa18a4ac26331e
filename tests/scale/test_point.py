"""gradsync.scale.point: scalar options -> ScaleConfig, defaults, bad values, flat results.

The expected configurations are written out by hand from ``gradsync.scale.config``
(Gb/s -> bytes per cycle, ns -> cycles), not through :mod:`gradsync.scale.point`.
"""

from __future__ import annotations

import json
import pickle

import pytest

from gradsync import workloads
from gradsync.firmware.schedules import load_schedule
from gradsync.scale import point
from gradsync.scale.config import ScaleConfig, ScaleConfigError, ScaleLink, Straggler
from gradsync.scale.sim import simulate
from gradsync.spec.hardware import HardwareConfig

BASE = {"workload": "resnet50", "nodes": 8, "link_gbps": 100}


def hardware_128() -> HardwareConfig:
    return HardwareConfig(array_rows=128, array_cols=128, vector_lanes=128, max_payload_bytes=4096)


def largest_gradient(name: str = "resnet50") -> int:
    wl = workloads.get(name, hardware=hardware_128())
    return max(layer.grad_bytes for layer in wl.layers)


def test_defaults_are_the_documented_ones():
    p = point.validate(BASE)
    assert (p.clock_ghz, p.link_latency_ns, p.intra_latency_ns) == (1.0, 1000.0, 250.0)
    assert (p.max_payload_bytes, p.array, p.vector_lanes, p.element_bytes) == (
        4096,
        "128x128",
        128,
        2,
    )
    assert (p.chunk_bytes, p.topology, p.schedule, p.steps) == ("auto", "ring", "priority", 3)
    cfg = point.build(p)
    # 100 Gb/s at 1 GHz: 100e9 / 8 bytes per second / 1e9 cycles per second
    assert cfg.link == ScaleLink(12.5, 1000, 4096)
    assert cfg.hardware == hardware_128()
    # host costs are HardwareConfig's own defaults
    assert cfg.hardware.host_write_cycles == HardwareConfig().host_write_cycles
    assert cfg.hardware.host_bulk_bytes_per_cycle == HardwareConfig().host_bulk_bytes_per_cycle
    assert cfg.schedule.name == "priority" and cfg.nodes == 8 and cfg.topology.kind == "ring"
    assert cfg.stragglers == () and cfg.steps == 3


@pytest.mark.parametrize(
    "options, fmt, grad_format, element",
    [
        ({}, "q5.10", None, 2),
        ({"format": "Q7.8"}, "q7.8", None, 2),
        ({"format": "bf16"}, "bf16", "fp32", 4),  # fp32 exchange by default
        ({"format": "bf16", "grad_format": "bf16"}, "bf16", "bf16", 2),
        ({"element_bytes": 2}, "q5.10", None, 2),  # the deprecated option alone
        ({"element_bytes": "4"}, "bf16", "fp32", 4),
        ({"format": "bf16", "grad_format": "bf16", "element_bytes": 2}, "bf16", "bf16", 2),
    ],
)
def test_formats_fill_in_the_exchange_and_its_element(options, fmt, grad_format, element):
    """Gradient bytes on the link: parameters x 2 (q5.10 words), 4 (fp32) or 2 (bf16)."""
    p = point.validate({**BASE, **options})
    assert (p.format, p.grad_format, p.element_bytes) == (fmt, grad_format, element)
    wl = point.build(p).workload
    assert wl.grad_bytes == 25_557_032 * element  # ResNet-50's published parameter count
    assert (wl.format, wl.grad_format) == (fmt, grad_format)


def test_clock_and_latency_convert_to_cycles():
    p = point.validate({**BASE, "link_gbps": 400, "clock_ghz": 2, "link_latency_ns": 700})
    # 400 Gb/s = 50 GB/s; at 2 GHz that is 25 bytes per cycle; 700 ns = 1400 cycles
    assert point.build(p).link == ScaleLink(25.0, 1400, 4096)


def test_strings_and_numbers_give_the_same_point():
    typed = point.validate({**BASE, "chunk_bytes": 1048576, "batch": 16, "straggler": "2:1.5"})
    text = point.validate(
        {"workload": "resnet50", "nodes": "8", "link_gbps": "100", "chunk_bytes": "1048576",
         "batch": "16", "straggler": "2:1.5"}
    )  # fmt: skip
    assert typed == text


def test_point_is_picklable_and_json_round_trips():
    p = point.validate({**BASE, "schedule": "fifo", "chunk_bytes": 8192})
    assert pickle.loads(pickle.dumps(p)) == p
    again = point.validate(json.loads(json.dumps(p.to_dict(), sort_keys=True)))
    assert again == p and hash(again) == hash(p)


def test_hierarchical_topology_and_straggler():
    p = point.validate(
        {**BASE, "nodes": 16, "topology": "hierarchical", "per_box": 4, "intra_gbps": 800,
         "straggler": "3:2"}
    )  # fmt: skip
    cfg = point.build(p)
    assert (cfg.topology.kind, cfg.topology.per_box) == ("hierarchical", 4)
    assert cfg.topology.intra == ScaleLink(100.0, 250, 4096)  # 800 Gb/s, 250 ns at 1 GHz
    assert cfg.stragglers == (Straggler(3, 2.0),)


def test_ddp_bucket_cap_and_p3_slice_reach_the_schedule():
    ddp = point.build(point.validate({**BASE, "schedule": "ddp", "bucket_cap_mb": 10})).schedule
    assert ddp.bucket_cap_bytes == 10 * 1024 * 1024
    p3 = point.build(point.validate({**BASE, "schedule": "p3", "slice_params": 12345})).schedule
    assert p3.slice_params == 12345
    # without the option the schedule keeps its own default (25 MiB for DDP)
    plain = point.build(point.validate({**BASE, "schedule": "ddp"})).schedule
    assert plain.bucket_cap_bytes == 25 * 1024 * 1024


def test_run_equals_simulate_of_the_hand_built_config():
    p = point.validate({**BASE, "link_gbps": 400, "schedule": "fifo", "chunk_bytes": 1048576})
    row = point.run(p)
    hw = hardware_128()
    cfg = ScaleConfig(
        workload=workloads.get("resnet50", hardware=hw),
        nodes=8,
        schedule=load_schedule("fifo"),
        chunk_bytes=1048576,
        link=ScaleLink.from_gbps(400, 1000, 1.0, 4096),
        hardware=hw,
    )
    res = simulate(cfg)
    assert row["chunk_bytes"] == 1048576 and row["chunk_bytes_requested"] == 1048576
    for name in ("step", "layer1_ready", "exposed_comm", "compute"):
        cycles = getattr(res, f"{name}_cycles")
        assert row[f"{name}_cycles"] == pytest.approx(cycles, rel=1e-12)
        assert row[f"{name}_seconds"] == pytest.approx(cycles / 1e9, rel=1e-12)
    assert row["link_bytes_per_second"] == 50e9 and row["link_latency_seconds"] == 1e-6
    for link, busy in res.link_utilisation.items():
        assert row[f"link_utilisation_{link}"] == pytest.approx(busy)
    assert row["parameters"] == cfg.workload.params
    assert all(not isinstance(v, list | dict) for v in row.values())


def test_auto_chunk_is_the_chunking_rule():
    from gradsync.scale.chunking import auto_chunk_bytes

    p = point.validate(BASE)
    cfg = point.build(p)
    assert point.resolved(p).chunk_bytes == auto_chunk_bytes(cfg)
    assert point.run(p)["chunk_bytes_requested"] == "auto"


BAD = [
    ({"nodes": 8, "link_gbps": 100}, r"--workload is required"),
    ({**BASE, "workload": "resnet5O"}, r"--workload resnet5O is neither a built-in.*resnet50"),
    ({**BASE, "topology": "hierarchical", "per_box": 3}, r"--per-box 3 does not divide --nodes 8"),
    ({**BASE, "topology": "torus"}, r"--topology torus"),
    ({**BASE, "link_gbps": 0}, r"--link-gbps 0: must be > 0"),
    ({**BASE, "link_gbps": -100}, r"--link-gbps -100: must be > 0"),
    ({**BASE, "link_gbps": "fast"}, r"--link-gbps fast: must be a number"),
    ({**BASE, "topology": "hierarchical", "intra_gbps": 0}, r"--intra-gbps 0: must be > 0"),
    ({**BASE, "link_latency_ns": -1}, r"--link-latency-ns -1: must be >= 0"),
    ({**BASE, "clock_ghz": 0}, r"--clock-ghz 0: must be > 0"),
    ({**BASE, "nodes": 1}, r"--nodes 1: must be >= 2"),
    ({**BASE, "nodes": 2.5}, r"--nodes 2.5: must be a whole number"),
    ({**BASE, "chunk_bytes": 1022}, r"--chunk-bytes 1022: must be 'auto' or a multiple of 4"),
    ({**BASE, "chunk_bytes": "big"}, r"--chunk-bytes big: must be a whole number"),
    ({**BASE, "straggler": "3"}, r"--straggler 3: must be K:F"),
    ({**BASE, "straggler": "a:2"}, r"--straggler a:2: must be K:F with K a whole number"),
    ({**BASE, "straggler": "0:2"}, r"--straggler 0:2: needs K >= 1"),
    ({**BASE, "straggler": "2:0.5"}, r"--straggler 2:0.5: needs K >= 1 nodes and .* F >= 1"),
    ({**BASE, "straggler": "9:2"}, r"--straggler 9:2: names more nodes than --nodes 8"),
    ({**BASE, "schedule": "fastest"}, r"--schedule fastest: unknown schedule 'fastest'"),
    ({**BASE, "array": "128"}, r"--array 128: must be ROWSxCOLS"),
    ({**BASE, "steps": 1}, r"--steps 1: must be >= 2"),
    ({**BASE, "element_bytes": 3}, r"--element-bytes 3: must be 2 \(q5.10\) or 4 \(bf16, fp32"),
    ({**BASE, "format": "fp8"}, r"--format fp8: must be bf16 or fixed point qI.F such as q5.10"),
    ({**BASE, "format": "q15.16"}, r"--format q15.16: is a 32-bit fixed-point format"),
    ({**BASE, "grad_format": "bf16"}, r"--grad-format bf16: needs --format bf16, not q5.10"),
    ({**BASE, "format": "q7.8", "grad_format": "fp32"}, r"--grad-format fp32: needs --format bf16"),
    (
        {**BASE, "format": "bf16", "grad_format": "fp16"},
        r"--grad-format fp16: must be fp32 or bf16",
    ),
    (
        {**BASE, "format": "bf16", "element_bytes": 2},
        r"--element-bytes 2: disagrees with bf16 with fp32 exchange \(4-byte gradients\)",
    ),
    ({**BASE, "colour": "red"}, r"unknown option 'colour'"),
]


@pytest.mark.parametrize("options, message", BAD, ids=[m for _, m in BAD])
def test_bad_values_name_the_option_and_value(options, message):
    with pytest.raises(ScaleConfigError, match=message):
        point.validate(options)


def test_chunk_larger_than_the_largest_layer_is_refused():
    largest = largest_gradient()
    point.validate({**BASE, "chunk_bytes": largest - largest % 4})
    too_big = largest + 4 - largest % 4
    with pytest.raises(
        ScaleConfigError,
        match=rf"--chunk-bytes {too_big}: is larger than the largest layer's gradients "
        rf"of resnet50 \({largest} bytes\)",
    ):
        point.validate({**BASE, "chunk_bytes": too_big})


def test_unknown_workload_lists_every_builtin():
    with pytest.raises(ScaleConfigError) as info:
        point.validate({**BASE, "workload": "alexnet"})
    for name in workloads.BUILTIN_NAMES:
        assert name in str(info.value)


def test_malformed_workload_file_says_line_and_column(tmp_path):
    bad = tmp_path / "bad.txt"
    # ASTRA-sim text format: DATA, then the layer count (here not a number)
    bad.write_text("DATA\ntwo\n")
    with pytest.raises(ScaleConfigError, match=r"--workload .*bad\.txt\b.*line 2, column \d"):
        point.validate({**BASE, "workload": str(bad)})


def test_array_and_lanes_time_the_builtin_workload():
    p = point.validate({**BASE, "array": "64x32", "vector_lanes": 16})
    small = HardwareConfig(array_rows=64, array_cols=32, vector_lanes=16, max_payload_bytes=4096)
    expected = workloads.get("resnet50", hardware=small)
    got = point.build(p).workload
    assert [(la.fwd, la.ig, la.wg) for la in got.layers] == [
        (la.fwd, la.ig, la.wg) for la in expected.layers
    ]
    # and a smaller array really is slower than the default one
    default = point.build(point.validate(BASE)).workload
    assert sum(map(sum, (la.fwd for la in got.layers))) > sum(
        map(sum, (la.fwd for la in default.layers))
    )


def test_hash_input_follows_the_contents_of_a_schedule_file(tmp_path):
    import hashlib

    plain = point.validate(BASE)
    assert point.hash_input(plain) == plain.to_dict()
    sched = tmp_path / "mine.py"
    text = "from gradsync.firmware.schedules import Fifo\n\nclass Mine(Fifo):\n    name = 'mine'\n"
    sched.write_text(text)
    p = point.validate({**BASE, "schedule": f"{sched}:Mine"})
    assert point.hash_input(p)["schedule_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    sched.write_text(text + "# edited\n")
    assert point.hash_input(p)["schedule_sha256"] != hashlib.sha256(text.encode()).hexdigest()
