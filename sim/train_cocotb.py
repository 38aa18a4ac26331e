"""The cocotb test module of an RTL training run (started by ``sim/rtl_backend.py``).

One test, :func:`train`: it reads the run (``TrainConfig`` + per-node
``NodeJob``, each job's schedule as a built-in name or ``/path/file.py:Class``
that :func:`~gradsync.firmware.schedules.load_schedule` imports here) from the
pickle named by ``$GRADSYNC_RTL_RUN``, calibrates the
host bus, resets the cluster so that the firmware's first call starts in
cycle 0 (as on the model backend), starts one unchanged
:class:`~gradsync.firmware.training.NodeFirmware` per node as a cocotb task
on an :class:`~gradsync.sim.rtl_device.RtlDevice`, and pickles a
:class:`~gradsync.firmware.experiment.BackendResult` (or the error that
stopped the run) to ``$GRADSYNC_RTL_RESULT``.  Weight snapshots are zero-time
reads through each node's debug port, taken when the firmware's
:class:`~gradsync.firmware.training.Observer` asks for them.

A watchdog (:mod:`gradsync.watchdog`, bound ``watchdog_cycles``) stops a run
that makes no progress: a coroutine wakes every ``Watchdog.period`` cycles and
compares the NIC counter ports and host-call counts; the error names the stuck
link or node, every node's outstanding tags and the link/NIC counters.
A cycle budget (``max_cycles``) bounds the run: when it is exhausted the
firmware tasks are stopped and the error names, per node, the engines that
still have work and the RX tags still awaited, in the model backend's words.
Progress (step, cycle, wall time) goes to ``$GRADSYNC_RTL_PROGRESS`` every
``progress_cycles`` simulated cycles.
"""

from __future__ import annotations

import json
import os
import pickle
import time

import cocotb


async def reset_to_cycle_zero(dut, cycles: int = 3) -> None:
    """Pulse ``dut.rst``; return right after the edge that begins cycle 0 (``cycle`` reads 0).

    Reset is released in the same time step as that edge, so the design sees
    it low at the next edge and counts from 0: a device call started on
    return starts in cycle 0, like the model's first call.
    """
    from cocotb.triggers import ClockCycles

    dut.rst.value = 1
    await ClockCycles(dut.clk, cycles)
    dut.rst.value = 0


async def outstanding(dev, fw) -> str:
    """What a stuck node still waits for, read from its registers (model/device.py's wording)."""
    from gradsync.spec import regmap as rm

    parts = []
    done = await dev.read32(rm.offset("COMPUTE_DONE"))
    busy = fw.drv.issued - done
    if busy > 0:
        parts.append(f"compute busy with {busy} command(s)")
    for q in range(rm.DMA_QUEUES):
        head = await dev.read32(rm.dma_reg(q, "HEAD"))
        tail = await dev.read32(rm.dma_reg(q, "TAIL"))
        if head != tail:
            parts.append(
                f"dma.{rm.DMA_QUEUE_NAMES[q]} has {(tail - head) & 0xFFFFFFFF} descriptor(s)"
            )
    waiting = []
    for w in sorted(getattr(fw, "step_chunks", {})):
        if not await dev.read32(rm.rx_window_reg(w, "CTRL")) & 1:
            continue
        expect = await dev.read32(rm.rx_window_reg(w, "EXPECT"))
        received = await dev.read32(rm.rx_window_reg(w, "RECEIVED"))
        if received < expect:
            tag = await dev.read32(rm.rx_window_reg(w, "TAG"))
            waiting.append("L{}c{}s{}".format(*rm.decode_tag(tag)))
    if waiting:
        parts.append("nic.rx waits for tags " + ", ".join(waiting))
    return "; ".join(parts) or "idle"


def node_progress(dut, node: int, dev):
    """A node's :class:`~gradsync.watchdog.NodeProgress`: NIC counter ports, host-call counts."""
    from gradsync.watchdog import NodeProgress

    def port(name: str) -> int:
        return int(getattr(dut, f"n{node}_{name}").value)

    calls = dev.calls
    return NodeProgress(
        tx_packets=port("tx_packets"),
        rx_packets=port("rx_packets"),
        interrupts=calls["wait_irq"],
        bulk=calls["load"] + calls["dump"],
        reads=calls["read32"],
        writes=calls["write32"],
        resends=port("tx_retransmits") + port("tx_timeouts") + port("tx_naks"),
    )


async def watch(dog, dut, devs, tasks, stalled, period_ps: int) -> None:
    """Every ``dog.period`` cycles compare the nodes' progress; set ``stalled`` on a hang.

    One wake-up per period and zero-time port reads: no bus cycle, no per-cycle Python.
    """
    from cocotb.triggers import Timer

    while not all(t.done() for t in tasks):
        await Timer(dog.period * period_ps, "ps")
        nodes = [node_progress(dut, i, d) for i, d in enumerate(devs)]
        if dog.sample(devs[0].now(), nodes):
            stalled.set()
            return


async def watchdog_report(dog, dut, devs, fws) -> str:
    """The watchdog's error: the stuck link or node, each node's work, link and NIC counters."""
    from gradsync.spec.faults import COUNTERS as LINK_COUNTERS
    from gradsync.spec.host import NODE_COUNTERS
    from gradsync.watchdog import pending_sends

    cycle = devs[0].now()
    work = []
    for d, fw in zip(devs, fws, strict=True):
        parts = [await outstanding(d, fw), pending_sends(fw)]
        parts.append(f"{d.calls['wait_irq']} interrupt wait(s) so far")
        work.append(", ".join(p for p in parts if p))
    links = [
        {c: int(getattr(dut, f"l{i}_{c}").value) for c in LINK_COUNTERS} for i in range(len(devs))
    ]
    nics = [
        {c: int(getattr(dut, f"n{i}_{c}").value) for c in NODE_COUNTERS} for i in range(len(devs))
    ]
    return dog.report(cycle, work, links, nics)


@cocotb.test()
async def train(dut):
    """Train on the RTL cluster; the result (or the error) goes to a pickle."""
    from cocotb.triggers import Combine, Event, First, Timer
    from cocotb.utils import get_sim_time

    from gradsync.firmware.schedules import load_schedule
    from gradsync.firmware.training import NodeFirmware, Observer
    from gradsync.sim.rtl_device import RtlDevice
    from gradsync.watchdog import Watchdog, config_watchdog_cycles

    with open(os.environ["GRADSYNC_RTL_RUN"], "rb") as f:
        run = pickle.load(f)
    cfg, jobs, opts = run["cfg"], run["jobs"], run["opts"]
    for job, schedule in zip(jobs, run["schedules"], strict=True):
        job.schedule = load_schedule(schedule)  # a name or file:Class, imported here too
    out_path = os.environ["GRADSYNC_RTL_RESULT"]
    progress_path = os.environ.get("GRADSYNC_RTL_PROGRESS")
    period_ps = int(opts["clock_period_ns"]) * 1000
    hw, fmt = cfg.hardware, cfg.fixed_point
    for i, faults in enumerate(opts.get("link_faults", [])):
        for name, value in faults.items():
            getattr(dut, f"l{i}_{name}").value = value
    devs = [
        RtlDevice(dut, f"n{i}_", hw, fmt, dut.clk, rst=dut.rst, post_writes=True)
        for i in range(cfg.nodes)
    ]
    await reset_to_cycle_zero(dut)
    latency = await devs[0].calibrate()
    for d in devs:
        d.latency = latency
    for i, faults in enumerate(opts.get("link_faults", [])):
        if "seed" in faults:  # latch the fault generator's seed during the reset
            getattr(dut, f"l{i}_seed_load").value = 1
    await reset_to_cycle_zero(dut)
    for i, faults in enumerate(opts.get("link_faults", [])):
        if "seed" in faults:
            getattr(dut, f"l{i}_seed_load").value = 0

    weights = {}
    state = {"step": -1}
    t_wall = time.perf_counter()

    def observer(node: int, dev: RtlDevice) -> Observer:
        async def snap(step: int, layer: int, addr: int, n: int) -> None:
            weights[(node, step, layer)] = await dev.peek(addr, n)

        def loss(step: int, _node: int, _loss: float) -> None:
            if node == 0:
                state["step"] = step

        return Observer(weights=snap, loss=loss)

    fws = []
    for i, (dev, job) in enumerate(zip(devs, jobs, strict=True)):
        job.observer = observer(i, dev)
        fws.append(NodeFirmware(dev, job))
    failed = Event()
    errors: list[tuple[str, str]] = []

    async def guarded(fw: NodeFirmware, dev: RtlDevice):
        try:
            result = await fw.run()
            await dev.settle()  # the run ends when its last (posted) write has returned
            return result
        except Exception as exc:  # the firmware's own errors (DeviceError, ConfigError ...)
            errors.append((type(exc).__name__, str(exc)))
            failed.set()
            return None

    tasks = [cocotb.start_soon(guarded(fw, dev)) for fw, dev in zip(fws, devs, strict=True)]

    def write_progress() -> None:
        if progress_path:
            cycle = devs[0].now()
            wall = time.perf_counter() - t_wall
            with open(progress_path + ".tmp", "w") as f:
                json.dump(
                    {"step": state["step"], "steps": cfg.steps, "cycle": cycle, "wall": wall}, f
                )
            os.replace(progress_path + ".tmp", progress_path)

    async def progress() -> None:
        while True:
            await Timer(int(opts["progress_cycles"]) * period_ps, "ps")
            write_progress()

    reporter = cocotb.start_soon(progress())
    max_cycles = opts.get("max_cycles")
    stalled = Event()
    dog = None
    bound = opts.get("watchdog_cycles", "default")  # a number, or None: off (tests)
    if bound is not None:
        dog = Watchdog(config_watchdog_cycles(cfg) if bound == "default" else int(bound))
        watcher = cocotb.start_soon(watch(dog, dut, devs, tasks, stalled, period_ps))
    waits = [Combine(*tasks), failed.wait(), stalled.wait()]
    if max_cycles is not None:
        t0 = get_sim_time("ps")
        budget = Timer(max_cycles * period_ps - (t0 % period_ps) + 1, "ps")
        waits.append(budget)
    fired = await First(*waits)
    for t in tasks:
        if not t.done():
            t.cancel()
    if dog is not None:
        watcher.cancel()
    if not errors and (stalled.is_set() or (max_cycles is not None and fired is budget)):
        # a cancelled firmware task may have left a bus transaction in flight (the host
        # driver drives it from timed callbacks): let the longest one finish before the
        # report reads registers over the same bus
        from cocotb.triggers import ClockCycles

        from gradsync.spec import timing as tm

        longest = max(hw.scratchpad_words, hw.gradient_words) * fmt.word_bytes
        await ClockCycles(dut.clk, tm.host_bulk_cycles(longest, hw) + 16)
        for d in devs:  # the cancelled call never lowered its request
            d.quiesce()
        await ClockCycles(dut.clk, 4)
    error = None
    if errors:
        error = errors[0]
    elif stalled.is_set():
        error = ("WatchdogError", await watchdog_report(dog, dut, devs, fws))
    elif max_cycles is not None and fired is budget:
        report = "; ".join(
            [
                f"node {i}: {await outstanding(d, fw)}"
                for i, (d, fw) in enumerate(zip(devs, fws, strict=True))
            ]
        )
        error = ("SimulationError", f"cycle budget of {max_cycles} exhausted ({report})")
    results = [t.result() for t in tasks] if error is None else []
    reporter.cancel()
    write_progress()
    total = devs[0].now()
    from gradsync.spec.faults import COUNTERS as LINK_COUNTERS
    from gradsync.spec.host import NODE_COUNTERS

    counters = {
        "links": [
            {c: int(getattr(dut, f"l{i}_{c}").value) for c in LINK_COUNTERS}
            for i in range(cfg.nodes)
        ],
        "nodes": [
            {c: int(getattr(dut, f"n{i}_{c}").value) for c in NODE_COUNTERS}
            for i in range(cfg.nodes)
        ],
    }
    if error is None:
        from gradsync.firmware.experiment import BackendResult

        payload = {
            "result": BackendResult(results, weights, total),
            "latency": latency,
            "calls": [d.calls for d in devs],
        }
    else:
        payload = {"error": error, "cycle": total}
    payload["counters"] = counters
    with open(out_path, "wb") as f:
        pickle.dump(payload, f)
