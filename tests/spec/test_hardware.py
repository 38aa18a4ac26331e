"""Hardware configuration and presets (gradsync.spec.hardware)."""

from __future__ import annotations

import pytest

from gradsync.spec import regmap as rm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import (
    DEFAULT_HARDWARE,
    DEFAULT_PRESET,
    PRESET_HELP,
    PRESETS,
    HardwareConfig,
    constant_registers,
    preset,
)


def test_default_is_the_small_preset_and_fits_the_default_run():
    # the small preset is the class defaults but for a slow link (issue 17: the main job is
    # communication-bound so that priority's overtaking shows)
    slow = HardwareConfig(link_bytes_per_cycle=1, link_latency_cycles=100)
    assert DEFAULT_PRESET == "small" and DEFAULT_HARDWARE == PRESETS["small"] == slow
    # the default run (64,32,10, global batch 64, 2 nodes) needs 7104 scratchpad and
    # 4736 gradient words at 16 bits (firmware.training.plan_memory)
    assert DEFAULT_HARDWARE.scratchpad_words >= 7104
    assert DEFAULT_HARDWARE.gradient_words >= 4736
    assert PRESETS["large"].scratchpad_words == 65536 and PRESETS["large"].trace_records == 16384
    assert set(PRESET_HELP) == set(PRESETS)


def test_preset_overrides_and_bad_name():
    hw = preset("large", link_latency_cycles=7)
    assert hw.link_latency_cycles == 7 and hw.gradient_words == 32768
    with pytest.raises(ValueError, match="hardware preset must be one of small, large, not 'huge'"):
        preset("huge")


@pytest.mark.parametrize(
    "kwargs, text",
    [
        ({"array_rows": 0}, "array_rows must be >= 1, not 0"),
        ({"max_payload_bytes": 6}, "max_payload_bytes must be a multiple of 4, not 6"),
        ({"rx_windows": 65}, "rx_windows must be <= 64, not 65"),
        ({"ring_entries": 2.0}, "ring_entries must be an int, not 2.0"),
    ],
)
def test_bad_hardware_names_the_parameter_and_value(kwargs, text):
    with pytest.raises((ValueError, TypeError), match=text):
        HardwareConfig(**kwargs)


def test_constant_registers_decode_to_the_configuration():
    hw = HardwareConfig(
        array_rows=4,
        array_cols=6,
        vector_lanes=2,
        ring_entries=8,
        rx_windows=3,
        cmd_fifo_depth=5,
        link_bytes_per_cycle=2,
    )
    fmt = FixedPointFormat(8, 3, 20, "truncate", False)
    regs = constant_registers(hw, fmt, node_id=2, num_nodes=3)
    assert (regs["NODE_ID"], regs["NUM_NODES"], regs["TX_PEER"]) == (2, 3, 0)
    arr = rm.reg("HW_ARRAY")
    assert [arr.field(n).get(regs["HW_ARRAY"]) for n in ("rows", "cols", "lanes")] == [4, 6, 2]
    q = rm.reg("HW_QUEUES")
    assert [
        q.field(n).get(regs["HW_QUEUES"]) for n in ("ring_entries", "rx_windows", "cmd_fifo_depth")
    ] == [8, 3, 5]
    assert FixedPointFormat.from_register(regs["HW_FORMAT"]) == fmt
    assert regs["SCRATCH_WORDS"] == hw.scratchpad_words and regs["TRACE_DEPTH"] == 2048
    # every name is a read-only register of the map
    assert all(rm.reg(name).access is rm.Access.RO for name in regs)
