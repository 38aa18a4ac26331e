"""gradsync.sim.coverage: sampling functions against hand-worked bins, export, merge and report.

The coverage database is cocotb-coverage's process-wide singleton, so every
test compares hit counts before and after its own samples.
"""

from __future__ import annotations

import pytest

from gradsync.sim import coverage as cov
from gradsync.spec import regmap as rm

E = rm.ErrorCode
F = rm.DescFlag
MP, WIN = 256, 4096  # max payload and queue window of the hand-worked cases, bytes


def desc(length, flags=0, code=E.OK, done=True):
    status = rm.descriptor_status(code) if done else int(code)
    return rm.Descriptor(
        src_addr=rm.GRAD_BASE, length=length, peer=1, remote_addr=rm.GRAD_BASE,
        window=0, tag=0, flags=flags, status=status,
    )  # fmt: skip


def snapshot(*names):
    return {n: cov.hits(n) for n in names}


def delta(before, name):
    after = cov.hits(name)
    return {b: after[b] - before[name][b] for b in after if after[b] != before[name][b]}


# (length, flags, code, queue) -> (queue, length class, flags, error), worked by hand
CASES = [
    ((4, 0, E.OK, 0), (0, "one_word", "none", "ok")),
    ((3, F.IRQ, E.MISALIGNED, 1), (1, "one_word", "irq", "misaligned")),
    ((8, F.REDUCE_ADD, E.OK, 1), (1, "below_payload", "reduce_add", "ok")),
    ((252, F.FENCE, E.UNKNOWN_PEER, 0), (0, "below_payload", "fence", "unknown_peer")),
    ((256, F.REDUCE_ADD | F.IRQ, E.OK, 0), (0, "max_payload", "reduce_add+irq", "ok")),
    ((260, 7, E.OK, 1), (1, "multi_packet", "reduce_add+irq+fence", "ok")),
    ((4092, F.IRQ | F.FENCE, E.BAD_VERSION, 1), (1, "multi_packet", "irq+fence", "bad_version")),
    ((4096, F.REDUCE_ADD | F.FENCE, E.OK, 0), (0, "window_max", "reduce_add+fence", "ok")),
    ((4100, 0, E.OUT_OF_WINDOW, 1), (1, "over_window", "none", "out_of_window")),
    ((0, 0xF0, E.ZERO_LENGTH, 0), (0, "zero", "none", "zero_length")),  # bits 4..7 not flags
    ((8, F.BF16 | F.IRQ, E.BAD_FLAGS, 1), (1, "below_payload", "irq+bf16", "bad_flags")),
]


@pytest.mark.parametrize(("args", "want"), CASES, ids=[str(c[0][:2]) for c in CASES])
def test_descriptor_bins_worked_by_hand(args, want):
    length, flags, code, queue = args
    points = ["queue", "length", "flags", "error"]
    names = [f"gradsync.descriptor.{p}" for p in points] + [
        "gradsync.descriptor.queue_x_error",
        "gradsync.descriptor.queue_x_length",
    ]
    before = snapshot(*names)
    bins = cov.sample_descriptor(desc(length, flags, code), queue, MP, WIN)
    assert (bins.queue, bins.length, bins.flags, bins.error) == want
    for point, value in zip(points, want, strict=True):
        assert delta(before, f"gradsync.descriptor.{point}") == {value: 1}
    assert delta(before, "gradsync.descriptor.queue_x_error") == {(want[0], want[3]): 1}
    assert delta(before, "gradsync.descriptor.queue_x_length") == {(want[0], want[1]): 1}


def test_bins_cover_every_descriptor_error_code_and_flag_combination():
    codes = {
        "ok",
        "bad_version",
        "bad_flags",
        "zero_length",
        "misaligned",
        "out_of_window",
        "unknown_peer",
    }  # fmt: skip  (docs/registers.md: the DMA engine's refusals)
    assert set(cov.ERROR_CLASSES) == codes
    # REDUCE_ADD, IRQ, FENCE, BF16: every combination
    assert len(set(cov.FLAG_CLASSES)) == 16 and cov.FLAG_CLASSES[0] == "none"


def test_descriptor_sampling_refuses_bad_input():
    with pytest.raises(ValueError, match="not completed"):
        cov.sample_descriptor(desc(4, done=False), 0, MP, WIN)
    with pytest.raises(ValueError, match="code 6 is not a descriptor error code"):
        cov.sample_descriptor(desc(4, code=E.RX_NO_WINDOW), 0, MP, WIN)
    with pytest.raises(ValueError, match="queue must be 0..1, not 2"):
        cov.sample_descriptor(desc(4), 2, MP, WIN)


def test_packet_events_from_counter_deltas_and_trace_records():
    name = "gradsync.packet.event"
    before = snapshot(name)
    got = cov.sample_counters(
        {"rx_crc_errors": 3, "link_dropped": 2, "tx_naks": 1, "tx_packets": 50, "link_stalls": 0}
    )
    assert got == {"crc_error": 3, "drop": 2, "nak": 1}
    rec = rm.TraceRecord
    records = [
        rec(10, rm.Engine.NIC_RX, rm.TraceEvent.ERROR, 0, 0, int(E.RX_NO_WINDOW)),
        rec(11, rm.Engine.NIC_RX, rm.TraceEvent.ERROR, 0, 0, int(E.RX_TAG_MISMATCH)),
        rec(12, rm.Engine.NIC_RX, rm.TraceEvent.ERROR, 0, 0, int(E.RX_NO_WINDOW)),
        rec(13, rm.Engine.NIC_RX, rm.TraceEvent.END, rm.Kind.RECV, 0, int(E.RX_NO_WINDOW)),  # bytes
        rec(14, rm.Engine.DMA_HI, rm.TraceEvent.ERROR, 0, 0, int(E.OUT_OF_WINDOW)),
    ]
    assert cov.sample_rx_errors(records) == {"rx_no_window": 2, "rx_tag_mismatch": 1}
    assert delta(before, name) == {
        "crc_error": 3,
        "drop": 2,
        "nak": 1,
        "rx_no_window": 2,
        "rx_tag_mismatch": 1,
    }
    with pytest.raises(ValueError, match="counter tx_naks went backwards"):
        cov.sample_counters({"tx_naks": -1})


def test_counter_events_name_real_counters():
    from gradsync.hw.link import LINK_COUNTERS
    from gradsync.hw.node import NODE_COUNTERS

    known = set(NODE_COUNTERS) | {f"link_{c}" for c in LINK_COUNTERS}
    assert set(cov.COUNTER_EVENTS.values()) <= known


def test_command_bins():
    before = snapshot("gradsync.command.opcode", "gradsync.command.opcode_x_error")
    assert cov.sample_command(rm.Opcode.GEMM, True, False) == ("gemm", "tn", "ok")
    assert cov.sample_command(0x3F, False, False, int(E.CMD_BAD_OPCODE)) == (
        "unknown",
        "n/a",
        "cmd_bad_opcode",
    )
    assert delta(before, "gradsync.command.opcode") == {"gemm": 1, "unknown": 1}
    assert delta(before, "gradsync.command.opcode_x_error") == {
        ("gemm", "ok"): 1,
        ("unknown", "cmd_bad_opcode"): 1,
    }
    # structurally impossible pairs are no bins: 7 opcodes x 6 errors - 6 - 5 - 5 = 26
    assert len(before["gradsync.command.opcode_x_error"]) == 26
    assert ("relu", "cmd_bad_opcode") not in before["gradsync.command.opcode_x_error"]
    with pytest.raises(ValueError, match="error 3 is not a compute command ErrorCode"):
        cov.sample_command(rm.Opcode.RELU, False, False, int(E.MISALIGNED))


def _send(cycle, layer, chunk, step, queue):
    engine = rm.Engine.DMA_HI if queue == 0 else rm.Engine.DMA_LO
    tag = rm.encode_tag(layer, chunk, step)
    return rm.TraceRecord(cycle, engine, rm.TraceEvent.START, rm.Kind.SEND, tag, 64)


def _rx(cycle, layer, step):
    tag = rm.encode_tag(layer, 0, step)
    return rm.TraceRecord(cycle, rm.Engine.NIC_RX, rm.TraceEvent.END, rm.Kind.RECV, tag, 64)


def _update(cycle, layer, step):
    tag = rm.encode_tag(layer, 0, step)
    return rm.TraceRecord(cycle, rm.Engine.VECTOR, rm.TraceEvent.START, rm.Kind.UPDATE, tag, 9)


def test_schedule_decisions_worked_by_hand():
    # step 0: layer 3 (top) chunks 0, 1, then layer 1 (bottom) on queue 0 overtakes
    # layer 3's chunk 2; layer 1 is updated (cycle 60) before layer 3's last packet (70)
    # step 1: production order 3, 2, 1, updates after the last packet
    recs = [
        _send(10, 3, 0, 0, 1),
        _send(20, 3, 1, 0, 1),
        _send(30, 1, 0, 0, 0),
        _send(40, 3, 2, 0, 1),
        _rx(50, 1, 0),
        _update(60, 1, 0),
        _rx(70, 3, 0),
        _send(110, 3, 0, 1, 1),
        _send(120, 2, 0, 1, 1),
        _send(130, 1, 0, 1, 1),
        _rx(150, 1, 1),
        _update(160, 3, 1),
    ]
    steps = cov.step_decisions(recs, num_layers=3)
    assert [(s.step, s.overtake, s.early_update) for s in steps] == [
        (0, True, True),
        (1, False, False),
    ]
    assert steps[0].sends == (("top", 1), ("top", 1), ("bottom", 0), ("top", 1))
    assert steps[1].sends == (("top", 1), ("middle", 1), ("bottom", 1))
    names = ["gradsync.schedule.step.schedule_x_overtake", "gradsync.schedule.send.queue"]
    before = snapshot(*names)
    cov.sample_schedule("priority", recs, 3)
    assert delta(before, names[0]) == {("priority", True): 1, ("priority", False): 1}
    assert delta(before, names[1]) == {0: 1, 1: 6}
    with pytest.raises(ValueError, match="schedule must be one of .*, not 'mine'"):
        cov.sample_schedule("mine", recs, 3)
    with pytest.raises(ValueError, match="layer must be in 1..2, not 3"):
        cov.step_decisions(recs, num_layers=2)


def test_export_merge_and_report(tmp_path, capsys):
    name = "gradsync.descriptor.length"
    cov.sample_descriptor(desc(256), 0, MP, WIN)
    first = cov.write(tmp_path / "a", "one")
    assert first.exists() and (tmp_path / "a" / "coverage_one.xml").exists()
    cov.write(tmp_path / "b", "two")
    data = cov.load([first, tmp_path / "b" / "coverage_two.yml"])
    # the two files hold the same database: merged hits are twice the live ones
    assert data[name]["bins:_hits"]["max_payload"] == 2 * cov.hits(name)["max_payload"]
    table = cov.report(tmp_path, prefix="gradsync.descriptor")
    assert "2 file(s) merged" in table and capsys.readouterr().out.strip() == table.strip()
    row = next(line for line in table.splitlines() if line.startswith(name + " "))
    live = cov.hits(name)
    hit = sum(1 for n in live.values() if n)
    assert f"{hit:>4}/{len(live):<4}" in row
    empty = [b for b, n in live.items() if not n]
    assert all(b in row for b in empty)
    with pytest.raises(ValueError, match="coverage path '.*nowhere' does not exist"):
        cov.report(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no coverage files"):
        cov.report(tmp_path / "empty")
