"""The full node (hw/node.py): port contract, simulation config, and Verilator runs against the model.

The Verilator tests run on node 0 of the shared 2-node cluster build
(``tests/hw/test_cluster.py``), so the node costs no build of its own.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from amaranth.lib.wiring import In, Out

from gradsync.firmware.training import plan_memory
from gradsync.hw.cluster import Cluster
from gradsync.hw.compute_node import ComputeNode
from gradsync.hw.link import LINK_CONTROLS, LINK_COUNTERS
from gradsync.hw.node import DEBUG_WORDS, HOST_PORTS, NODE_COUNTERS, Node
from gradsync.spec import regmap as rm
from gradsync.spec.hardware import DEFAULT_HARDWARE
from tests.hw.cocotb_cluster import (
    FMT,
    GUARD,
    RX_MEM_BYTES,
    model_logs,
    rx_memory_guards,
    rx_memory_windows,
)
from tests.hw.test_cluster import run


def test_cluster_ports_are_the_compute_node_ports_prefixed():
    """n{i}_ + ComputeNode's host ports (+ debug port) and NIC counters; l{i}_ + each link's
    fault controls and counters, as wide as the link's own ports."""
    compute = set(ComputeNode(DEFAULT_HARDWARE, FMT).signature.members) - {"dma_rd", "dma_wr"}
    assert set(HOST_PORTS) == compute | {"dbg_en", "dbg_addr", "dbg_data"}
    cluster = Cluster(DEFAULT_HARDWARE, FMT, 3).signature.members
    for i in range(3):
        assert {f"n{i}_{p}" for p in (*HOST_PORTS, *NODE_COUNTERS)} <= set(cluster)
        for c, width in LINK_CONTROLS.items():
            assert cluster[f"l{i}_{c}"].flow is In and cluster[f"l{i}_{c}"].shape == width
        for c in LINK_COUNTERS:
            assert cluster[f"l{i}_{c}"].flow is Out and cluster[f"l{i}_{c}"].shape == 32
    node = Node(DEFAULT_HARDWARE, FMT, 0, 2)
    assert node.signature.members["dbg_data"].shape == FMT.total_bits * DEBUG_WORDS


def test_sim_hardware_fits_the_default_training_run():
    """DEFAULT_HARDWARE holds --layers 64,32,10 --global-batch 64 on 2 and 4 nodes, and is not much larger."""
    for nodes in (2, 4):
        lay = plan_memory(
            (64, 32, 10),
            64 // nodes,
            FMT.word_bytes,
            DEFAULT_HARDWARE.scratchpad_words,
            DEFAULT_HARDWARE.gradient_words,
        )
        assert lay.grad_window_bytes // FMT.word_bytes <= DEFAULT_HARDWARE.gradient_words
    with pytest.raises(Exception, match="scratchpad"):
        plan_memory(
            (64, 32, 10),
            64 // 2,
            FMT.word_bytes,
            DEFAULT_HARDWARE.scratchpad_words // 2,
            DEFAULT_HARDWARE.gradient_words,
        )


@pytest.mark.parametrize(
    "args,kwargs,error,match",
    [
        ((DEFAULT_HARDWARE, FMT, 2, 2), {}, ValueError, "node_id must be in 0..1, not 2"),
        (({}, FMT), {}, TypeError, "hw must be a HardwareConfig, not {}"),
        (
            (DEFAULT_HARDWARE, 16),
            {},
            TypeError,
            "fmt must be a FixedPointFormat or a BFloat16Format, not 16",
        ),
        (
            (dataclasses.replace(DEFAULT_HARDWARE, trace_records=1000), FMT),
            {},
            ValueError,
            "trace_records must be a power of two, not 1000",
        ),
        (
            (dataclasses.replace(DEFAULT_HARDWARE, packet_header_bytes=16), FMT),
            {},
            ValueError,
            "packet_header_bytes/packet_crc_bytes must be 12/4 (the NIC's framing), not 16/4",
        ),
    ],
)
def test_node_rejects_bad_parameters(args, kwargs, error, match):
    with pytest.raises(error, match=re.escape(match)):
        Node(*args, **kwargs)


@pytest.mark.rtl
@pytest.mark.slow
def test_node_compute_and_descriptors_match_model(tmp_path):
    """Node 0 runs a GEMM, an SGD update and six descriptors concurrently; node 1 receives.
    Every value, return cycle and per-engine trace record equals the golden model's."""
    run(2, "tests.hw.cocotb_cluster", tmp_path, "node", seed=3)


@pytest.mark.rtl
@pytest.mark.slow
def test_node_bulk_regions_and_debug_port(tmp_path):
    run(2, "tests.hw.cocotb_node", tmp_path, "node", seed=1)


def test_rx_memory_scenario_refuses_on_the_model():
    """The scenario is meaningful: on the model every packet outside the SRAMs is refused with
    RX_OUT_OF_WINDOW (ERR_INFO = its tag, aux-0 NIC_RX END + ERROR record), nothing but the one
    good packet is written, and that one lands on the scratchpad's last words."""
    wins = rx_memory_windows(DEFAULT_HARDWARE)
    full = model_logs("rx_memory", 2, 1, DEFAULT_HARDWARE)[1]
    log = {what: value for what, _, value in full if what not in ("guard", "irq", "state")}
    bad = len(wins) - 1
    regs = log["regs"]
    assert rm.reg("ERR_CODE").field("code").get(regs["ERR_CODE"]) == rm.ErrorCode.RX_OUT_OF_WINDOW
    assert (regs["RX_DROPS"], regs["RX_BYTES"], regs["PERF_RX_PACKETS"]) == (bad, RX_MEM_BYTES, 1)
    assert log["received"] == [0] * bad + [RX_MEM_BYTES]
    irqs = [e[2] for e in full if e[0] == "irq"]
    assert irqs and all(
        rm.reg("ERR_CODE").field("code").get(code) in (0, rm.ErrorCode.RX_OUT_OF_WINDOW)
        for _, code, _ in irqs
    )
    nic_rx = log["trace"][str(int(rm.Engine.NIC_RX))]
    ends = [r for r in nic_rx if r[1] == rm.TraceEvent.END]
    errors = [r for r in nic_rx if r[1] == rm.TraceEvent.ERROR]
    assert [r[3] for r in ends] == [rm.encode_tag(3, w, 1) for w in range(len(wins))]
    assert [r[4] for r in ends] == [0] * bad + [RX_MEM_BYTES]
    assert [(r[3], r[4]) for r in errors] == [
        (rm.encode_tag(3, w, 1), rm.ErrorCode.RX_OUT_OF_WINDOW) for w in range(bad)
    ]
    assert [r[0] for r in errors] == [r[0] for r in ends[:bad]]
    guards = [g for what, _, g in full if what == "guard"]
    assert len(guards) == len(rx_memory_guards(DEFAULT_HARDWARE))
    written = RX_MEM_BYTES // FMT.word_bytes  # the good packet: the scratchpad's last words
    assert all(w == GUARD for w in guards[0][:-written])
    assert any(w != GUARD for w in guards[0][-written:])
    assert all(w == GUARD for g in guards[1:] for w in g)


@pytest.mark.rtl
@pytest.mark.slow
def test_node_refuses_packets_outside_its_srams_as_the_model(tmp_path):
    """Windows whose packets leave both SRAMs, straddle an SRAM's end or reduce from outside
    them: the RTL refuses each as the model does (error code, ERR_INFO, trace, IRQ cycle) and
    writes no guard word."""
    run(2, "tests.hw.cocotb_cluster", tmp_path, "rx_memory", seed=1)
