"""The firmware's trace read-out (bulk dumps of trace RAM, wrapping) loses and changes nothing."""

from __future__ import annotations

from gradsync.firmware import data as digits
from gradsync.firmware.experiment import TrainConfig, build_jobs
from gradsync.model_backend import run_model_cluster
from gradsync.spec.hardware import HardwareConfig


def test_firmware_reads_every_record_bit_exactly_across_wraps():
    hw = HardwareConfig(trace_records=512)
    cfg = TrainConfig(nodes=2, steps=20, hardware=hw)
    jobs, _ = build_jobs(cfg, digits.load(0))
    res, cluster = run_model_cluster(cfg, jobs)
    for node, dev in zip(res.nodes, cluster.devices, strict=True):
        assert dev.trace_drops == 0
        assert dev.trace_head > 2 * 512  # the ring wrapped at least twice
        # every record the device wrote, up to the final drain (whose own dumps come after it)
        assert node.records == dev.trace[: len(node.records)]
        assert len(dev.trace) - len(node.records) <= 4  # the final drain: at most two dumps
