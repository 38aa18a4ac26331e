"""Link benchmark: utilisation of long transfers and simulation speed of a 2-node exchange.

Runs a 2-node cluster of communication-only nodes (``hw/cluster.py``,
``Node(compute=False)``) under Verilator:

* for two chunk sizes, node 0 streams ``rounds x 64`` descriptors (plain
  writes) to node 1; link utilisation = payload bytes / (link bytes per
  cycle x cycles from the first grant to the last completion), next to the
  model's prediction ``chunk / (bytes_per_cycle x descriptor_cycles(chunk))``;
* both nodes then stream to each other at once (an exchange) and the
  simulated cycles per wall-clock second are measured while the hardware
  runs on its own (the testbench only waits).

Usage: ``python bench/bench_link.py [--latency 50] [--rounds 4]``.  Prints
numbers; passes or fails on nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import cocotb  # noqa: E402

from gradsync.spec import regmap as rm  # noqa: E402
from gradsync.spec import timing as tm  # noqa: E402
from gradsync.spec.formats import FixedPointFormat  # noqa: E402
from gradsync.spec.hardware import HardwareConfig  # noqa: E402

RING_ENTRIES = 64


async def _stream(tb, senders, chunk: int, count: int) -> dict:
    """``count`` descriptors of ``chunk`` bytes from every sender; returns cycles and timing."""
    half = tb.hw.gradient_words * tb.wb // 2
    heads = {}
    for n in senders:
        peer = (n + 1) % tb.nodes
        await tb.open_window(peer, 0, rm.GRAD_BASE + half, rm.GRAD_BASE + half, chunk, 0x1234)
        heads[n] = await tb.read_csr(n, rm.dma_reg(1, "TAIL"))
        for i in range(count):
            d = rm.Descriptor(
                src_addr=rm.GRAD_BASE + (i * 4) % (half - chunk),
                length=chunk,
                peer=peer,
                remote_addr=rm.GRAD_BASE + half,
                window=0,
                tag=0x1234,
            )
            slot = (heads[n] + i) % RING_ENTRIES
            await tb.load_ring(n, rm.RING_MEM_BASE + 32 * slot, d.encode())
    for n in senders:
        await tb.write_csr(n, rm.dma_reg(1, "DOORBELL"), heads[n] + count)
    start = tb.log[-len(senders)].cycle  # the first doorbell's AW/W handshake
    t0 = time.perf_counter()
    sim_start = tb.now
    await tb.wait_until(tb.all_idle, step=256)
    wall = time.perf_counter() - t0
    sim_cycles = tb.now - sim_start
    last = 0
    for n in senders:
        slot = (heads[n] + count - 1) % RING_ENTRIES
        status, done_cycle = await tb.read_ring(n, rm.RING_MEM_BASE + 32 * slot + 24, 2)
        last = max(last, done_cycle)
        assert status == rm.descriptor_status(rm.ErrorCode.OK), hex(status)
    first_grant = start + 1  # the doorbell written in `start` is visible one cycle later
    return {"cycles": last - first_grant, "wall_seconds": wall, "sim_cycles": sim_cycles}


@cocotb.test()
async def link_benchmark(dut):
    from tests.hw.cocotb_comm import CommTB

    tb = CommTB(dut)
    await tb.cycle_reset()
    for n in range(tb.nodes):
        await tb.setup_queue(n, 1, 0, RING_ENTRIES, rm.GRAD_BASE, tb.hw.gradient_words * tb.wb)
    chunks = [int(c) for c in os.environ["BENCH_CHUNKS"].split(",")]
    rounds = int(os.environ["BENCH_ROUNDS"])
    out = {"utilisation": [], "exchange": None}
    for chunk in chunks:
        cycles = 0
        for _ in range(rounds):
            cycles += (await _stream(tb, [0], chunk, RING_ENTRIES))["cycles"]
        payload = chunk * RING_ENTRIES * rounds
        out["utilisation"].append(
            {
                "chunk_bytes": chunk,
                "payload_bytes": payload,
                "cycles": cycles,
                "utilisation": payload / (tb.hw.link_bytes_per_cycle * cycles),
                "model": chunk / (tb.hw.link_bytes_per_cycle * tm.descriptor_cycles(chunk, tb.hw)),
            }
        )
    ex = {"sim_cycles": 0, "wall_seconds": 0.0}
    for _ in range(rounds):
        r = await _stream(tb, list(range(tb.nodes)), chunks[-1], RING_ENTRIES)
        ex["sim_cycles"] += r["sim_cycles"]
        ex["wall_seconds"] += r["wall_seconds"]
    ex["cycles_per_second"] = ex["sim_cycles"] / ex["wall_seconds"]
    ex["bytes"] = tb.nodes * rounds * RING_ENTRIES * chunks[-1]
    out["exchange"] = ex
    Path(os.environ["BENCH_OUT"]).write_text(json.dumps(out))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=int, default=50, help="link latency in cycles")
    ap.add_argument("--bytes-per-cycle", type=int, default=4, choices=(1, 2, 4))
    ap.add_argument("--rounds", type=int, default=4, help="rounds of 64 descriptors per size")
    ap.add_argument("--chunks", default="256,2048", help="chunk sizes in bytes")
    args = ap.parse_args(argv)

    from gradsync.hw.cluster import Cluster
    from gradsync.sim.build import build_component, run_cocotb
    from tests.hw.cocotb_comm import comm_env

    hw = HardwareConfig(
        gradient_words=4096,
        ring_entries=RING_ENTRIES,
        rx_windows=8,
        link_latency_cycles=args.latency,
        link_bytes_per_cycle=args.bytes_per_cycle,
        trace_records=2048,
    )
    fmt = FixedPointFormat()
    t0 = time.perf_counter()
    model = build_component(
        Cluster(hw, fmt, 2, compute=False), f"comm2_bench_l{args.latency}_b{args.bytes_per_cycle}"
    )
    print(
        f"Verilator model: {'cached' if model.cached else 'built'} "
        f"(build {model.build_seconds:.1f} s, this step {time.perf_counter() - t0:.1f} s)"
    )
    with tempfile.TemporaryDirectory(prefix="gradsync-bench-") as tmp:
        out = Path(tmp) / "bench.json"
        env = comm_env(2, hw, fmt, 1)
        env.update(
            {"BENCH_CHUNKS": args.chunks, "BENCH_ROUNDS": str(args.rounds), "BENCH_OUT": str(out)}
        )
        run_cocotb(model, "bench_link", test_dir=Path(tmp), extra_env=env)
        res = json.loads(out.read_text())
    print(
        f"link: {hw.link_bytes_per_cycle} B/cycle, latency {hw.link_latency_cycles} cycles, "
        f"header {hw.packet_header_bytes} B + CRC {hw.packet_crc_bytes} B, "
        f"max payload {hw.max_payload_bytes} B"
    )
    print(f"{'chunk B':>8} {'payload B':>10} {'cycles':>8} {'utilisation':>12} {'model':>8}")
    for u in res["utilisation"]:
        print(
            f"{u['chunk_bytes']:>8} {u['payload_bytes']:>10} {u['cycles']:>8} "
            f"{u['utilisation']:>12.4f} {u['model']:>8.4f}"
        )
    ex = res["exchange"]
    print(
        f"2-node exchange: {ex['bytes']} B in {ex['sim_cycles']} simulated cycles, "
        f"{ex['wall_seconds']:.2f} s wall: {ex['cycles_per_second']:,.0f} simulated cycles/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
