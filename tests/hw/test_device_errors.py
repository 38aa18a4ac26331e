"""Host mistakes and a receiver error after the host's last wait, on the RTL cluster against the
golden model (``tests/hw/cocotb_cluster.py``'s ``host_errors`` scenario; issue 15, item 7)."""

from __future__ import annotations

import pytest

from gradsync.firmware.driver import error_sentence
from gradsync.spec import regmap as rm
from gradsync.spec.hardware import DEFAULT_HARDWARE
from tests.hw.cocotb_cluster import STRAY_WINDOW, model_logs
from tests.model.test_device_errors import doorbell_mistakes


def test_host_errors_scenario_makes_each_mistake_on_the_model():
    """The scenario is meaningful: on the model every doorbell mistake latches its own code
    (the hand-written table) and leaves TAIL at 0, the empty TRACE_DATA read returns the
    pattern, and node 1 finds RX_NO_WINDOW for window 99 without waiting for an interrupt."""
    n0, n1 = model_logs("host_errors", 2, 1, DEFAULT_HARDWARE)
    f = rm.reg("ERR_CODE")
    assert next(e[2] for e in n0 if e[0] == "empty_trace_data") == rm.TRACE_EMPTY_WORD
    first = next(e[2] for e in n0 if e[0] == "regs")
    assert f.field("code").get(first["ERR_CODE"]) == rm.ErrorCode.TRACE_EMPTY
    assert first["ERR_COUNT"] == 1 and first["TRACE_COUNT"] == 0
    seen = [e[2] for e in n0 if e[0] == "doorbell"]
    cases = doorbell_mistakes(DEFAULT_HARDWARE.ring_entries)
    assert len(seen) == len(cases)
    for i, ((name, _, _, _, code, info), (word, got_info, count, tail)) in enumerate(
        zip(cases, seen, strict=True)
    ):
        assert (f.field("code").get(word), f.field("index").get(word)) == (code, i % 2), name
        assert (got_info, count, tail) == (info, i + 2, 0), name
    assert next(e[2] for e in n0 if e[0] == "done") == [1, 0, 1]  # sent: the sender sees no error
    regs = next(e[2] for e in n1 if e[0] == "regs")
    assert next(e[2] for e in n1 if e[0] == "polls") > 0
    assert (regs["ERR_COUNT"], regs["RX_DROPS"], regs["RX_BYTES"]) == (1, 1, 0)
    sentence = error_sentence(1, regs["ERR_CODE"], regs["ERR_INFO"])
    assert sentence.startswith(
        f"node 1: nic.rx refused a packet (RX_NO_WINDOW) for RX window {STRAY_WINDOW}, "
    )
    assert regs["IRQ_STATUS"] & rm.Irq.ERROR


@pytest.mark.rtl
def test_host_errors_match_the_model_on_rtl(tmp_path):
    """Every register read of both hosts, and every trace record, cycle-exact to the model."""
    from tests.hw.test_cluster import run

    run(2, "tests.hw.cocotb_cluster", tmp_path, "host_errors", seed=1)
