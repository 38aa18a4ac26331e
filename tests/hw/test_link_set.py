# amaranth: UnusedElaboratable=no
"""LINK_SET: the link set at run time, in Amaranth's simulator (two communication-only nodes).

Registers: the build's link after reset, an accepted setting read back, every refusal
(``LINK_SET_LOCKED`` after a doorbell, ``LINK_SET_BAD`` by the first bad field of
``gradsync.spec.link.link_set_refusal``) latched like other errors and changing nothing.
Timing: a cluster built with :data:`gradsync.spec.hardware.BUILD_LINK` and set at run time
to another link behaves cycle for cycle like a cluster built with that link (its trace,
write-back, counters), fault-free and under link faults, and its ``PERF_TX_CYCLES`` and
descriptor time are ``gradsync.spec.timing``'s closed formulas for the link set.
"""

from __future__ import annotations

import dataclasses

import pytest

from gradsync.hw.cluster import Cluster
from gradsync.hw.link import LINK_COUNTERS
from gradsync.hw.node import NODE_COUNTERS
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.hardware import BUILD_LINK, constant_registers
from gradsync.spec.link import LinkConfig, link_set_refusal, link_set_value, packet_payloads
from tests.hw.comm_host import FMT, GB, HW, Host, run_sim

SET = rm.offset("LINK_SET")
LIMITS = constant_registers(HW, FMT)["LINK_LIMITS"]
#: The build every run-time setting starts from (the ``small`` preset's link).
BUILT = dataclasses.replace(HW, **BUILD_LINK)


def _hw(bpc: int, latency: int, payload: int):
    return dataclasses.replace(
        HW, link_bytes_per_cycle=bpc, link_latency_cycles=latency, max_payload_bytes=payload
    )


def _raw_set(bpc: int, payload_words: int, latency: int) -> int:
    """A LINK_SET value from raw field values (also out-of-range ones)."""
    return rm.reg("LINK_SET").pack(
        bytes_per_cycle=bpc, payload_words=payload_words, latency=latency
    )


async def _link_regs(h: Host, n: int) -> tuple[int, int, int]:
    return (
        await h.read(n, rm.offset("LINK_INFO")),
        await h.read(n, rm.offset("LINK_LATENCY")),
        await h.read(n, rm.offset("LINK_MAX_PAYLOAD")),
    )


def _expected_regs(hw) -> tuple[int, int, int]:
    c = constant_registers(hw, FMT)
    return c["LINK_INFO"], c["LINK_LATENCY"], c["LINK_MAX_PAYLOAD"]


# ------------------------------------------------------------------------------- registers


def test_reset_values_are_the_build_link_and_an_accepted_setting_reads_back():
    dut = Cluster(BUILT, FMT, 2, compute=False)
    seen = {}

    async def bench(ctx):
        h = Host(ctx, dut)
        seen["reset"] = await _link_regs(h, 0)
        seen["limits"] = await h.read(0, rm.offset("LINK_LIMITS"))
        await h.write(0, SET, link_set_value(LinkConfig(2, 1023, 512)))
        seen["set"] = await _link_regs(h, 0)
        seen["other node"] = await _link_regs(h, 1)
        seen["errors"] = await h.read(0, rm.offset("ERR_COUNT"))
        await h.write(0, SET, link_set_value(LinkConfig(4, 0, 4)))
        seen["set again"] = await _link_regs(h, 0)

    run_sim(dut, bench)
    # LINK_INFO = bytes_per_cycle | 12 << 8 | 4 << 16 (header and CRC bytes)
    assert seen["reset"] == (1 | 12 << 8 | 4 << 16, 100, 256) == _expected_regs(BUILT)
    assert seen["limits"] == 128 | 1023 << 8
    assert seen["set"] == (2 | 12 << 8 | 4 << 16, 1023, 512) == _expected_regs(_hw(2, 1023, 512))
    assert seen["other node"] == seen["reset"], "a node's LINK_SET changed its peer"
    assert seen["errors"] == 0
    assert seen["set again"] == (4 | 12 << 8 | 4 << 16, 0, 4)


REFUSALS = [
    # (value, code, index): hand-worked from the register's field order
    (_raw_set(3, 64, 10), rm.ErrorCode.LINK_SET_BAD, 0),
    (_raw_set(0, 64, 10), rm.ErrorCode.LINK_SET_BAD, 0),
    (_raw_set(8, 64, 10), rm.ErrorCode.LINK_SET_BAD, 0),
    (_raw_set(1, 0, 10), rm.ErrorCode.LINK_SET_BAD, 1),
    (_raw_set(1, 129, 10), rm.ErrorCode.LINK_SET_BAD, 1),
    (_raw_set(4, 128, 1024), rm.ErrorCode.LINK_SET_BAD, 2),
    (_raw_set(3, 0, 1024), rm.ErrorCode.LINK_SET_BAD, 0),  # three bad fields: the first
    (_raw_set(2, 200, 5000), rm.ErrorCode.LINK_SET_BAD, 1),  # two bad fields: the first
]


async def _refusal_checks(h: Host, value: int, *, doorbell: bool) -> dict:
    """Write ``value`` (after a refused doorbell if ``doorbell``); what the node reports."""
    out = {"before": await _link_regs(h, 0)}
    if doorbell:
        # RING_SIZE 0: a refused doorbell still locks the link setting
        await h.write(0, rm.dma_reg(0, "DOORBELL"), 1)
    c0 = await h.read(0, rm.offset("CYCLE_LO"))
    await h.write(0, SET, value)
    out["after"] = await _link_regs(h, 0)
    code = await h.read(0, rm.offset("ERR_CODE"))
    f = rm.reg("ERR_CODE")
    out["code"] = tuple(f.field(n).get(code) for n in ("code", "engine", "index"))
    out["info"] = await h.read(0, rm.offset("ERR_INFO"))
    out["count"] = await h.read(0, rm.offset("ERR_COUNT"))
    out["irq"] = await h.read(0, rm.offset("IRQ_STATUS")) & rm.Irq.ERROR
    errors = [r for r in await h.trace(0) if r.event == rm.TraceEvent.ERROR]
    out["record"] = (errors[-1].engine, errors[-1].tag, errors[-1].aux, errors[-1].cycle - c0)
    return out


@pytest.mark.parametrize("value,code,index", REFUSALS, ids=lambda v: f"{v:#x}")
def test_a_bad_setting_is_refused_with_the_first_bad_field_and_changes_nothing(value, code, index):
    assert link_set_refusal(value, LIMITS) == (code, index)  # the spec's order agrees
    dut = Cluster(BUILT, FMT, 2, compute=False)
    out = {}

    async def bench(ctx):
        h = Host(ctx, dut)
        await h.write(0, rm.offset("CONTROL"), 1)  # trace_enable
        out.update(await _refusal_checks(h, value, doorbell=False))

    run_sim(dut, bench)
    assert out["after"] == out["before"] == _expected_regs(BUILT)
    assert out["code"] == (code, rm.Engine.HOST, index)
    assert (out["info"], out["count"], out["irq"]) == (value, 1, rm.Irq.ERROR)
    assert out["record"][:3] == (rm.Engine.HOST, value, code)


def test_a_setting_after_a_doorbell_is_refused_as_locked_in_the_cycle_of_the_write():
    """Any doorbell (here a refused one) locks the setting; the refusal is latched in the
    write's cycle, as the doorbell's own refusal (``DmaEngine.error[1]``): both ERROR records
    lie the same number of cycles after a CYCLE_LO read that precedes the same write."""
    dut = Cluster(BUILT, FMT, 2, compute=False)
    good = link_set_value(LinkConfig(4, 7, 64))
    out = {}

    async def bench(ctx):
        h = Host(ctx, dut)
        await h.write(0, rm.offset("CONTROL"), 1)
        c0 = await h.read(0, rm.offset("CYCLE_LO"))
        await h.write(0, rm.dma_reg(0, "DOORBELL"), 1)
        bell = [r for r in await h.trace(0) if r.event == rm.TraceEvent.ERROR][-1]
        out["doorbell"] = (bell.aux, bell.cycle - c0)
        out.update(await _refusal_checks(h, good, doorbell=False))
        await h.write(1, rm.dma_reg(1, "DOORBELL"), 1)  # the peer's doorbell locks only it
        await h.write(0, rm.offset("IRQ_STATUS"), 0xFFFF_FFFF)

    run_sim(dut, bench)
    assert out["doorbell"][0] == rm.ErrorCode.RING_BAD_SIZE
    assert out["after"] == out["before"] == _expected_regs(BUILT)
    assert out["code"] == (rm.ErrorCode.LINK_SET_LOCKED, rm.Engine.HOST, 0)
    assert (out["info"], out["count"], out["irq"]) == (good, 2, rm.Irq.ERROR)
    assert out["record"] == (rm.Engine.HOST, good, rm.ErrorCode.LINK_SET_LOCKED, out["doorbell"][1])


def test_a_peer_doorbell_does_not_lock_this_node():
    dut = Cluster(BUILT, FMT, 2, compute=False)
    out = {}

    async def bench(ctx):
        h = Host(ctx, dut)
        await h.write(1, rm.dma_reg(1, "DOORBELL"), 1)
        await h.write(0, SET, link_set_value(LinkConfig(4, 7, 64)))
        out["regs"] = await _link_regs(h, 0)
        await h.write(1, SET, link_set_value(LinkConfig(4, 7, 64)))
        out["peer"] = await h.read(1, rm.offset("ERR_CODE")) & 0xFF

    run_sim(dut, bench)
    assert out["regs"] == _expected_regs(_hw(4, 7, 64))
    assert out["peer"] == rm.ErrorCode.LINK_SET_LOCKED


# ---------------------------------------------------------------------------------- timing

LENGTH = 1024  # bytes: 16 packets of 64 B, 2 of 512 B, 4 of 256 B


def _transfer(hw, setting: LinkConfig | None, faults: dict | None = None) -> dict:
    """Node 0 reduce-adds ``LENGTH`` bytes into node 1, both nodes having written LINK_SET
    = ``setting`` first (accepted; on a cluster built with that link it changes nothing);
    everything the host and the ports see of it."""
    dut = Cluster(hw, FMT, 2, compute=False)
    out = {}
    value = link_set_value(setting)

    async def bench(ctx):
        h = Host(ctx, dut)
        for n in (0, 1):
            await h.write(n, rm.offset("CONTROL"), 1)
            await h.write(n, SET, value)
        await h.load(0, GB, [(i * 0x0101_0101) & 0x7FFF_7FFF for i in range(LENGTH // 4)])
        await h.window(1, 1, GB + 0x400, GB + 0x400, LENGTH, 0x55)
        if faults:
            ctx.set(dut.l0_seed, 12345)
            ctx.set(dut.l0_seed_load, 1)
            await ctx.tick()
            ctx.set(dut.l0_seed_load, 0)
            for name, rate in faults.items():
                ctx.set(getattr(dut, f"l0_{name}"), rate)
        desc = rm.Descriptor(
            src_addr=GB,
            length=LENGTH,
            peer=1,
            remote_addr=GB + 0x400,
            window=1,
            tag=0x55,
            flags=rm.DescFlag.REDUCE_ADD,
        )
        await h.send(0, desc, queue=1)
        while await h.read(1, rm.rx_window_reg(1, "RECEIVED")) < LENGTH:
            for _ in range(50):
                await ctx.tick()
        while await h.read(0, rm.dma_reg(1, "DONE")) < 1:
            pass
        for _ in range(200):  # the last acknowledgements
            await ctx.tick()
        out["err"] = (
            await h.read(0, rm.offset("ERR_COUNT")),
            await h.read(1, rm.offset("ERR_COUNT")),
        )
        out["perf_tx_cycles"] = await h.read(0, rm.offset("PERF_TX_CYCLES"))
        out["trace0"] = await h.trace(0)
        out["trace1"] = await h.trace(1)
        out["ring"] = await h.dump(0, rm.RING_MEM_BASE + 0x100, 8)
        out["data"] = await h.dump(1, GB + 0x400, LENGTH // 4)
        names = [f"n{n}_{c}" for n in (0, 1) for c in NODE_COUNTERS]
        names += [f"l{n}_{c}" for n in (0, 1) for c in LINK_COUNTERS]
        out["counters"] = {name: ctx.get(getattr(dut, name)) for name in names}

    run_sim(dut, bench)
    return out


def _records(trace, engine, event):
    return [r for r in trace if r.engine == engine and r.event == event]


SETTINGS = [LinkConfig(4, 7, 64), LinkConfig(2, 0, 512)]


@pytest.mark.parametrize("link", SETTINGS, ids=str)
def test_a_link_set_at_run_time_times_like_a_link_built_in(link):
    built = _hw(link.bytes_per_cycle, link.latency_cycles, link.max_payload_bytes)
    run = _transfer(BUILT, link)
    ref = _transfer(built, link)
    assert run["err"] == (0, 0)
    for key in ("trace0", "trace1", "ring", "data", "perf_tx_cycles", "counters"):
        assert run[key] == ref[key], key
    # and against the closed formulas of gradsync.spec.timing for the link set
    assert run["perf_tx_cycles"] == tm.chunk_tx_cycles(LENGTH, link)
    (start,) = _records(run["trace0"], rm.Engine.DMA_LO, rm.TraceEvent.START)
    (end,) = _records(run["trace0"], rm.Engine.DMA_LO, rm.TraceEvent.END)
    assert end.cycle - start.cycle == tm.descriptor_cycles(LENGTH, built)
    (tx_end,) = _records(run["trace0"], rm.Engine.NIC_TX, rm.TraceEvent.END)
    last_rx = _records(run["trace1"], rm.Engine.NIC_RX, rm.TraceEvent.END)[-1]
    payloads = packet_payloads(LENGTH, link)
    rx_ends = _records(run["trace1"], rm.Engine.NIC_RX, rm.TraceEvent.END)
    assert [r.aux for r in rx_ends] == payloads
    assert last_rx.cycle - tx_end.cycle == tm.packet_arrival_offset(built, payloads[-1])


FAULTS = {"drop_rate": 0x3000, "corrupt_rate": 0x1800, "ack_drop_rate": 0x8000}


@pytest.mark.parametrize("link", [LinkConfig(4, 40, 64)], ids=str)
def test_under_link_faults_a_run_time_link_resends_like_a_built_one(link):
    """Drops and corruptions make the sender resend (NAK, timeout): the run-time timeout and
    NAK hold-off and the run-time latency of both link directions must be the built ones."""
    built = _hw(link.bytes_per_cycle, link.latency_cycles, link.max_payload_bytes)
    run = _transfer(BUILT, link, FAULTS)
    ref = _transfer(built, link, FAULTS)
    for key in ("trace0", "trace1", "ring", "data", "perf_tx_cycles", "counters"):
        assert run[key] == ref[key], key
    c = run["counters"]
    assert c["l0_dropped"] > 0 and c["l0_corrupted"] > 0 and c["l0_acks_dropped"] > 0
    assert c["n0_tx_timeouts"] > 0 and c["n0_tx_naks"] > 0, "both resend paths exercised"


# ------------------------------------------------------------------ the parts on their own


def _link_setting_outputs(values: list[int]) -> list[tuple]:
    """Write each of ``values`` to a lone LinkSetting (never locked); after each, its
    (bytes_per_cycle, payload_words, latency, timeout, holdoff, error valid)."""
    from amaranth.sim import Simulator

    from gradsync.hw.node import LinkSetting

    dut = LinkSetting(BUILT, LIMITS)
    out = []

    async def bench(ctx):
        for v in values:
            ctx.set(dut.set_we, 1)
            ctx.set(dut.set_data, v)
            err = ctx.get(dut.error.valid)
            await ctx.tick()
            ctx.set(dut.set_we, 0)
            names = ("bytes_per_cycle", "payload_words", "latency", "timeout", "holdoff")
            out.append((*(ctx.get(getattr(dut, n)) for n in names), err))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


def test_nic_timeouts_in_hardware_are_the_spec_formula_for_every_setting():
    """``timeout``/``holdoff`` (shifts and adds) against ``spec.link.nic_timeouts`` of the
    link set, over every width, the payload and latency extremes and random values."""
    import numpy as np

    from gradsync.spec.link import link_from_set_value, nic_timeouts

    rng = np.random.default_rng(3)
    links = [
        LinkConfig(b, lat, 4 * pw)
        for b in (1, 2, 4)
        for pw in (1, 64, 128, *rng.integers(1, 129, 3))
        for lat in (0, 1023, *rng.integers(0, 1024, 3))
    ]
    values = [link_set_value(k) for k in links]
    for v, got in zip(values, _link_setting_outputs(values), strict=True):
        link = link_from_set_value(v)
        want = (link.bytes_per_cycle, link.max_payload_bytes // 4, link.latency_cycles)
        assert got == (*want, *nic_timeouts(link), 0), link


def test_the_delay_line_follows_a_changing_latency_and_forgets_what_entered_before_a_reset():
    """output(t) = input(t - L(t)) for a latency changed at run time (data and acknowledge
    lanes alike), nothing from before a reset; hand-worked from a counter as the data."""
    from amaranth.hdl import ClockDomain, Elaboratable, Module
    from amaranth.sim import Simulator

    from gradsync.hw.link import Link

    class Top(Elaboratable):
        def __init__(self):
            self.cd = ClockDomain("sync")
            self.link = Link(5)

        def elaborate(self, platform):
            m = Module()
            m.domains.sync = self.cd
            m.submodules.link = self.link
            return m

    top = Top()
    link = top.link
    # (first cycle, latency): raised, lowered to 0, raised past the reset
    schedule = [(0, 5), (40, 12), (80, 3), (120, 0), (150, 1023), (1300, 9)]
    reset_at = 1200
    seen = []

    async def bench(ctx):
        ctx.set(link.tx.valid, 1)
        ctx.set(link.ack_tx.valid, 1)
        for t in range(1400):
            lat = [lat for first, lat in schedule if first <= t][-1]
            ctx.set(link.run_latency, lat)
            ctx.set(top.cd.rst, int(t == reset_at))
            ctx.set(link.tx.p.data, t)
            ctx.set(link.ack_tx.p.exp, t & 0xFFFF)
            rv, data, av, exp = (
                ctx.get(link.rx.valid),
                ctx.get(link.rx.p.data),
                ctx.get(link.ack_rx.valid),
                ctx.get(link.ack_rx.p.exp),
            )
            seen.append((t, lat, rv, data, av, exp))
            await ctx.tick()

    sim = Simulator(top)
    sim.add_clock(1e-8, domain="sync")
    sim.add_testbench(bench)
    sim.run()
    for t, lat, rv, data, av, exp in seen:
        src = t - lat
        # the reset cycle's own input is lost (the pointer restarts); nothing before it comes out
        ok = src >= 0 and not (src <= reset_at < t)
        assert (rv, av) == (ok, ok), (t, lat)
        if ok:
            assert (data, exp) == (src, src & 0xFFFF), (t, lat)
