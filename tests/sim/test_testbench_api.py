"""The public testbench API (sim/testbench.py, sim/scoreboard.py), as a user's test file uses it.

The ``@cocotb.test()``s below run in the simulator; the pytest functions start
them through cocotb's runner (``testbench.run``) and through cocotb-test
(``cocotb_test.simulator.run``), on the cached 2-node cluster build that
tests/hw/test_cluster.py uses.  The rest checks argument errors and the
scoreboard's comparison on the golden model alone (no simulator).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace

import cocotb
import numpy as np
import pytest

from gradsync.firmware.driver import IRQ_ENABLED, Driver
from gradsync.hw.link import LINK_COUNTERS
from gradsync.sim import testbench
from gradsync.sim.scoreboard import Scoreboard, ScoreboardMismatch, plain
from gradsync.spec import regmap as rm
from gradsync.spec.hardware import DEFAULT_HARDWARE

WORDS = 64
BUF = rm.SCRATCH_BASE + 0x100


def filler(node: int):
    async def program(dev):
        """Load a ramp, read the node's identity, return both and the interrupt-free cycle."""
        await dev.load(BUF, np.arange(WORDS) * (node + 1) - 7)
        ident = [await dev.read32(rm.offset(n)) for n in ("NODE_ID", "NUM_NODES", "TX_PEER")]
        return {"ident": ident, "ramp": await dev.dump(BUF, WORDS)}

    return program


# ------------------------------------------------------------------ in the simulator


@cocotb.test()
async def cluster_tb_and_scoreboard(dut):
    """ClusterTB: devices per node, Driver, wait_irq; Scoreboard: equal logs pass, a changed
    memory word or cycle fails naming it."""
    tb = testbench.ClusterTB(dut)
    assert (tb.nodes, tb.hw) == (2, DEFAULT_HARDWARE)
    devices = await tb.start()
    assert tb.now() == 0 and len(devices) == 2
    info = await tb.driver(1).init(grad_window_bytes=0x100)
    assert (info.node_id, info.num_nodes, info.tx_peer) == (1, 2, 0)
    # an interrupt: COMPUTE from a tiny GEMM on node 1, through the TB's wait_irq
    drv = Driver(tb.device(1))
    drv.info = info
    await drv.launch(rm.Opcode.GEMM, rm.SCRATCH_BASE, rm.SCRATCH_BASE, rm.GRAD_BASE, 1, 1, 1)
    assert await tb.wait_irq(1, int(IRQ_ENABLED)) & rm.Irq.COMPUTE
    await tb.reset()
    assert tb.now() == 0

    sb = Scoreboard.for_tb(tb, memories=[(BUF, WORDS)])
    programs = [filler(0), filler(1)]
    want = sb.expect(programs)
    got = await sb.observe(tb.devices, programs)
    sb.compare(got, want)
    assert got[1]["result"]["ident"] == [1, 2, 0]
    assert got[0]["result"]["ramp"] == (np.arange(WORDS) - 7).tolist()
    assert got[0]["trace"], "the drained trace holds the HOST records of the bulk transfers"
    bad = plain(want)
    bad[1]["memories"][f"0x{BUF:08x}"][5] += 1
    try:
        sb.compare(got, bad)
    except ScoreboardMismatch as exc:
        assert "node 1: memory at" in str(exc) and "first word 5" in str(exc), exc
    else:
        raise AssertionError("a changed memory word passed the scoreboard")
    late = plain(want)
    late[0]["calls"][2][1] += 1
    try:
        sb.compare(got, late)
    except ScoreboardMismatch as exc:
        assert "node 0: entry 2" in str(exc), exc
    else:
        raise AssertionError("a call returning a cycle late passed the scoreboard")


@cocotb.test()
async def node_tb_link_controls(dut):
    """NodeTB on node 1; link fault controls reach the ports; counters read back."""
    tb = testbench.NodeTB(dut, node=1)
    tb.set_link_faults(0, drop=65535, seed=5)
    await tb.start()
    assert int(dut.l0_drop_rate.value) == 65535 and int(dut.l0_seed.value) == 5
    await tb.cycles(2)
    assert int(dut.l0_seed_load.value) == 0, "seed_load is released after cycle 0"
    assert await tb.dev.read32(rm.offset("NODE_ID")) == 1
    assert tb.link_counters(0) == dict.fromkeys(LINK_COUNTERS, 0)
    assert tb.nic_counters(1)["tx_packets"] == 0


async def send_to_peer(dev):
    """Each node sends 2 KiB (8 packets) to its peer's window 0; returns when both are done."""
    drv = Driver(dev)
    info = await drv.init(grad_window_bytes=0x800)
    arrived, sent = set(), [0]
    drv.on_rx_done = arrived.add
    drv.on_dma_done = lambda queue, n: sent.__setitem__(0, sent[0] + n)
    tag, peer_tag = rm.encode_tag(0, 0, info.node_id), rm.encode_tag(0, 0, info.tx_peer)
    await drv.open_window(0, rm.GRAD_BASE + 0x800, rm.GRAD_BASE, 0x800, peer_tag, 0x800)
    dst = rm.GRAD_BASE + 0x800
    await drv.post(
        0, rm.Descriptor(rm.GRAD_BASE, 0x800, info.tx_peer, dst, 0, tag, rm.DescFlag.IRQ)
    )
    await drv.wait_until(lambda: 0 in arrived and sent[0] == 1)


@cocotb.test()
async def link_seed_decides_the_faults(dut):
    """The same seed drops the same packets after every reset; another seed others."""
    tb = testbench.ClusterTB(dut)
    seen = []
    for i, seed in enumerate((3, 999, 3)):
        tb.set_link_faults(0, drop=13107, seed=seed)
        await (tb.start() if i == 0 else tb.reset())
        tasks = [cocotb.start_soon(send_to_peer(dev)) for dev in tb.devices]
        for task in tasks:
            await task
        seen.append((tb.link_counters(0), tb.nic_counters(0)["tx_retransmits"]))
    assert seen[0] == seen[2] and seen[0] != seen[1], seen
    assert seen[0][0]["dropped"] > 0 or seen[1][0]["dropped"] > 0, seen


# ------------------------------------------------------------------ pytest side


@pytest.mark.rtl
def test_user_test_file_runs_with_the_cocotb_runner(tmp_path):
    model = testbench.build("cluster", nodes=2)
    assert (model.build_dir / model.toplevel).is_file()
    results = testbench.run(model, __name__, test_dir=tmp_path)
    assert results.read_text().count("<testcase") == 3


@pytest.mark.rtl
@pytest.mark.slow
def test_user_test_file_runs_with_cocotb_test():
    """cocotb-test builds the project's generated Verilog itself (first time: minutes; later
    runs skip Verilator and make) and runs this file's cocotb tests."""
    from cocotb_test import simulator

    model = testbench.build("node")
    args = testbench.cocotb_test_args(model, Path(__file__))
    assert all(Path(s).is_file() for s in args["verilog_sources"])
    t0 = time.monotonic()
    results = simulator.run(**args)
    print(f"cocotb-test run: {time.monotonic() - t0:.1f} s")
    assert Path(results).read_text().count("<testcase") == 3


def test_cocotb_test_builds_in_a_folder_per_installation(tmp_path, monkeypatch):
    """cocotb-test's makefile names cocotb's ``verilator.cpp`` and Verilator by absolute
    path, so two venvs sharing one build cache must not share its build folder (a deleted
    venv's folder failed with "No rule to make target .../verilator.cpp")."""
    from gradsync.sim import toolchain

    src = tmp_path / "entry" / "src"
    src.mkdir(parents=True)
    (src / "design.v").write_text("module design; endmodule\n")
    built = SimpleNamespace(
        directory=tmp_path / "entry", toplevel="design",
        options=SimpleNamespace(internal_clock=False),
    )  # fmt: skip
    model = SimpleNamespace(built=built, env=dict)
    folders = []
    for exe in ("/venv-a/bin/verilator", "/venv-b/bin/verilator", "/venv-a/bin/verilator"):
        fake = SimpleNamespace(executable=Path(exe), environment=lambda env: env)
        monkeypatch.setattr(toolchain, "find_verilator", lambda fake=fake: fake)
        folders.append(testbench.cocotb_test_args(model, Path(__file__))["sim_build"])
    assert folders[0] != folders[1] and folders[0] == folders[2]
    assert all(Path(f).name.startswith("entry-ports-") for f in folders)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"top": "chip"}, ValueError, "top must be one of node, cluster, not 'chip'"),
        ({"top": "cluster", "nodes": 1}, ValueError, "nodes must be an int >= 2, not 1"),
        ({"top": "node", "nodes": 4}, ValueError, "nodes must be 2, not 4"),
        ({"hardware": {}}, TypeError, "hardware must be a HardwareConfig, not {}"),
        ({"fmt": 16}, TypeError, "fmt must be a FixedPointFormat, not 16"),
    ],
)
def test_build_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=re.escape(match)):
        testbench.build(**kwargs)


class _Port:
    def __init__(self):
        self.value = 0


def _fake_dut(nodes: int = 2):
    """Just the ports ClusterTB's constructor and fault controls touch."""
    from gradsync.hw.link import LINK_CONTROLS, LINK_COUNTERS

    names = [f"n{i}_{p}" for i in range(nodes) for p in ("dbg_en", "dbg_addr")]
    names += [f"l{i}_{c}" for i in range(nodes) for c in (*LINK_CONTROLS, *LINK_COUNTERS)]
    return SimpleNamespace(**{n: _Port() for n in names})


@pytest.mark.parametrize(
    "link,kwargs,match",
    [
        (2, {"drop": 1}, "link must be in 0..1, not 2"),
        (0, {"drop": 65536}, "drop must be an int in 0..65535, not 65536"),
        (0, {"corrupt": -1}, "corrupt must be an int in 0..65535, not -1"),
        (0, {"stall_max": 256}, "stall_max must be an int in 0..255, not 256"),
        (1, {"seed": 0}, "seed must be an int in 1..4294967295, not 0"),
    ],
)
def test_link_faults_reject_bad_values(link, kwargs, match):
    tb = testbench.ClusterTB(_fake_dut(), nodes=2)
    with pytest.raises(ValueError, match=re.escape(match)):
        tb.set_link_faults(link, **kwargs)


def test_link_faults_set_the_ports():
    dut = _fake_dut()
    tb = testbench.ClusterTB(dut, nodes=2)
    tb.set_link_faults(1, corrupt=300, stall=20, stall_max=9, seed=77)
    assert (dut.l1_corrupt_rate.value, dut.l1_drop_rate.value) == (300, 0)
    assert (dut.l1_stall_rate.value, dut.l1_stall_max.value) == (20, 9)
    assert dut.l1_seed.value == 0, "the seed waits for the next reset"
    assert dut.l0_corrupt_rate.value == 0


def test_node_tb_rejects_a_node_outside_the_cluster():
    with pytest.raises(ValueError, match=re.escape("node must be in 0..1, not 2")):
        testbench.NodeTB(_fake_dut(), node=2, nodes=2)


def test_scoreboard_on_the_model_sees_what_the_programs_did():
    """expect() runs the programs on the golden model: results, dumped memories, call log
    with cycles, and the HOST trace records of the bulk transfers."""
    sb = Scoreboard(2, DEFAULT_HARDWARE, memories=[(BUF, WORDS)])
    logs = sb.expect([filler(0), filler(1)])
    for node in range(2):
        ramp = (np.arange(WORDS) * (node + 1) - 7).tolist()
        assert logs[node]["result"] == {"ident": [node, 2, 1 - node], "ramp": ramp}
        assert logs[node]["memories"] == {f"0x{BUF:08x}": ramp}
        cycles = [c for _, c, _ in logs[node]["calls"]]
        assert cycles == sorted(cycles) and cycles[0] > 0
        host = logs[node]["trace"][str(int(rm.Engine.HOST))]
        assert len(host) >= 4  # START + END of the load and of the dump
    other = sb.expect([filler(0), filler(0)])
    with pytest.raises(ScoreboardMismatch, match=re.escape("node 1: program returned")):
        sb.compare(other, logs)
    with pytest.raises(ValueError, match=re.escape("3 programs for 2 nodes")):
        sb.expect([filler(0)] * 3)


def test_docs_code_blocks_are_tested_code():
    """Every code block of docs/testbench.md is a verbatim excerpt of a file CI runs."""
    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "testbench.md").read_text()
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", doc, re.M | re.S)
    assert len(blocks) >= 5, "docs/testbench.md lost its examples"
    sources = [p.read_text() for p in sorted((root / "examples").glob("*.py"))]
    sources.append(Path(__file__).read_text())
    for lang, code in blocks:
        assert lang == "python", f"untested {lang or 'untagged'} block in docs/testbench.md"
        assert any(code.rstrip("\n") in text for text in sources), (
            f"docs/testbench.md block is in no example or tested file:\n{code}"
        )
