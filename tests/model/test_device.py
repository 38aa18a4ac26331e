"""The modelled node through its registers: results, cycle counts, errors, priority."""

from __future__ import annotations

import numpy as np
import pytest

from gradsync.firmware.driver import IRQ_ENABLED
from gradsync.model import numerics as nx
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm

from .conftest import FMT, HW, gaddr, run_programs, saddr

OPW = rm.reg("CMD_OPCODE")


async def launch(dev, opcode, a, b, c, m, k, n, *, arg=0, trans_a=0, trans_b=0, kind=0, tag=0):
    word = OPW.pack(opcode=int(opcode), trans_a=trans_a, trans_b=trans_b, irq=1, kind=int(kind))
    for name, v in (
        ("CMD_OPCODE", word),
        ("CMD_A", a),
        ("CMD_B", b),
        ("CMD_C", c),
        ("CMD_M", m),
        ("CMD_K", k),
        ("CMD_N", n),
        ("CMD_ARG", arg & 0xFFFFFFFF),
        ("CMD_TAG", tag),
    ):
        await dev.write32(rm.offset(name), v)
    await dev.write32(rm.offset("CMD_LAUNCH"), 1)


async def setup_queues(dev, win_len=HW.gradient_words * 2):
    for q in range(2):
        await dev.write32(rm.dma_reg(q, "RING_BASE"), rm.RING_MEM_BASE + q * HW.ring_entries * 32)
        await dev.write32(rm.dma_reg(q, "RING_SIZE"), HW.ring_entries)
        await dev.write32(rm.dma_reg(q, "WIN_BASE"), rm.GRAD_BASE)
        await dev.write32(rm.dma_reg(q, "WIN_LEN"), win_len)
    await dev.write32(rm.offset("IRQ_MASK"), int(IRQ_ENABLED))


async def post(dev, q, slot, desc):
    await dev.load(rm.RING_MEM_BASE + (q * HW.ring_entries + slot) * 32, np.array(desc.encode()))
    await dev.write32(rm.dma_reg(q, "DOORBELL"), slot + 1)


async def open_window(dev, w, dst, src, length, tag, expect):
    for name, v in (
        ("DST", dst),
        ("SRC", src),
        ("LEN", length),
        ("TAG", tag),
        ("CTRL", 1),
        ("EXPECT", expect),
    ):
        await dev.write32(rm.rx_window_reg(w, name), v)


def idle(dev):
    async def prog():
        return None

    return prog()


def intervals(dev, engine):
    out, open_ = [], []
    for r in dev.trace:
        if r.engine != engine:
            continue
        if engine == rm.Engine.NIC_RX:  # one END record per packet, when it is applied
            assert r.event == rm.TraceEvent.END
            out.append((None, r.cycle, r.tag, r.aux))
        elif r.event == rm.TraceEvent.START:
            open_.append(r)
        elif r.event == rm.TraceEvent.END:
            s = open_.pop(0)
            out.append((s.cycle, r.cycle, s.tag, r.aux))
    return out


@pytest.mark.parametrize("shape", [(8, 8, 8), (13, 5, 19), (1, 40, 3), (33, 17, 9)])
@pytest.mark.parametrize("trans", [(0, 0), (1, 0), (0, 1)])
def test_gemm_command_bits_and_cycles(shape, trans, rng):
    m, k, n = shape
    a = rng.integers(FMT.qmin, FMT.qmax + 1, (k, m) if trans[0] else (m, k))
    b = rng.integers(FMT.qmin, FMT.qmax + 1, (n, k) if trans[1] else (k, n))
    a.reshape(-1)[:2] = [FMT.qmin, FMT.qmax]
    out = {}

    async def prog(dev):
        await setup_queues(dev)
        await dev.load(saddr(0), a.reshape(-1))
        await dev.load(saddr(1024), b.reshape(-1))
        await launch(
            dev,
            rm.Opcode.GEMM,
            saddr(0),
            saddr(1024),
            saddr(2048),
            m,
            k,
            n,
            arg=1,
            trans_a=trans[0],
            trans_b=trans[1],
        )
        out["launched"] = dev.sim.now
        status = await dev.wait_irq(int(rm.Irq.COMPUTE))
        out["status"] = status
        out["c"] = await dev.dump(saddr(2048), m * n)
        out["done"] = await dev.read32(rm.offset("COMPUTE_DONE"))

    cl = run_programs([prog])
    want = nx.gemm(a, b, FMT, trans_a=bool(trans[0]), trans_b=bool(trans[1]), extra_shift=1)
    assert np.array_equal(out["c"].reshape(m, n), want)
    ((start, end, _, macs),) = intervals(cl.devices[0], rm.Engine.COMPUTE)
    assert start == out["launched"]
    assert end - start == tm.gemm_cycles(m, k, n, HW)
    assert macs == m * k * n and out["done"] == 1 and out["status"] == int(rm.Irq.COMPUTE)


@pytest.mark.parametrize("op", [rm.Opcode.RELU, rm.Opcode.RELU_BWD, rm.Opcode.SCALE, rm.Opcode.SGD])
def test_vector_commands(op, rng):
    n = 77
    x = rng.integers(FMT.qmin, FMT.qmax + 1, n)
    y = rng.integers(FMT.qmin, FMT.qmax + 1, n)
    x[:3] = [FMT.qmin, FMT.qmax, 0]
    arg = -700 if op is rm.Opcode.SCALE else 300
    out = {}

    async def prog(dev):
        await setup_queues(dev)
        await dev.load(saddr(0), x)
        await dev.load(saddr(100), y)
        await launch(dev, op, saddr(0), saddr(100), saddr(200), 7, 0, 11, arg=arg)
        await dev.wait_irq(int(rm.Irq.COMPUTE))
        out["c"] = await dev.dump(saddr(200), n)

    cl = run_programs([prog])
    ref = {
        rm.Opcode.RELU: lambda: np.maximum(x, 0),
        rm.Opcode.RELU_BWD: lambda: np.where(y > 0, x, 0),
        rm.Opcode.SCALE: lambda: nx.scale(x, arg, FMT),
        rm.Opcode.SGD: lambda: nx.sgd_update(x, y, arg, FMT),
    }[op]()
    assert np.array_equal(out["c"], ref)
    ((start, end, _, _),) = intervals(cl.devices[0], rm.Engine.VECTOR)
    assert end - start == tm.vector_cycles(rm.VECTOR_OPCODES[op], n, HW)


@pytest.mark.parametrize(
    "m, k, n, a_word, code",
    [
        (0, 4, 4, 0, rm.ErrorCode.CMD_ZERO_DIM),
        (4, 4, 0, 0, rm.ErrorCode.CMD_ZERO_DIM),
        (64, 64, 4, HW.scratchpad_words - 100, rm.ErrorCode.CMD_OUT_OF_BOUNDS),
    ],
)
def test_malformed_compute_command_is_refused_without_writes(m, k, n, a_word, code):
    out = {}

    async def prog(dev):
        await setup_queues(dev)
        await dev.load(saddr(3000), np.full(64, 77))
        await launch(dev, rm.Opcode.GEMM, saddr(a_word), saddr(0), saddr(3000), m, k, n)
        out["status"] = await dev.wait_irq(int(rm.Irq.ERROR))
        out["err"] = await dev.read32(rm.offset("ERR_CODE"))
        out["done"] = await dev.read32(rm.offset("COMPUTE_DONE"))
        out["c"] = await dev.dump(saddr(3000), 64)

    run_programs([prog])
    assert out["status"] & rm.Irq.ERROR
    assert rm.reg("ERR_CODE").field("code").get(out["err"]) == code
    assert out["done"] == 1
    assert (out["c"] == 77).all()


GUARD = 0x1234


@pytest.mark.parametrize(
    "change, code",
    [
        ({"src_addr": gaddr(HW.gradient_words - 8)}, rm.ErrorCode.OUT_OF_WINDOW),
        ({"length": 0}, rm.ErrorCode.ZERO_LENGTH),
        ({"length": 6}, rm.ErrorCode.MISALIGNED),
        ({"remote_addr": gaddr(1)}, rm.ErrorCode.MISALIGNED),
        ({"peer": 7}, rm.ErrorCode.UNKNOWN_PEER),
        ({"peer": 0}, rm.ErrorCode.UNKNOWN_PEER),
        ({"version": 2}, rm.ErrorCode.BAD_VERSION),
    ],
)
def test_bad_descriptor_is_refused_with_code_and_irq_and_moves_nothing(change, code):
    good = dict(
        src_addr=gaddr(0),
        length=64,
        peer=1,
        remote_addr=gaddr(512),
        window=0,
        tag=rm.encode_tag(1, 0, 0),
        flags=int(rm.DescFlag.IRQ),
    )
    good.update(change)
    desc = rm.Descriptor(**good)
    out = {}

    async def sender(dev):
        await setup_queues(dev, win_len=HW.gradient_words * 2 - 64)
        await dev.load(gaddr(0), np.arange(32))
        await dev.load(saddr(0), np.zeros(2048))  # let the receiver open its window first
        await post(dev, 1, 0, desc)
        out["status"] = await dev.wait_irq(int(rm.Irq.ERROR))
        out["err"] = await dev.read32(rm.offset("ERR_CODE"))
        out["ring"] = await dev.dump(rm.RING_MEM_BASE + HW.ring_entries * 32, 8)
        out["done"] = await dev.read32(rm.dma_reg(1, "DONE"))
        out["errors"] = await dev.read32(rm.dma_reg(1, "ERRORS"))

    async def receiver(dev):
        await setup_queues(dev)
        await dev.load(gaddr(0), np.full(1024, GUARD))
        await open_window(dev, 0, gaddr(512), gaddr(0), 256, rm.encode_tag(1, 0, 0), 64)

    cl = run_programs([sender, receiver])
    assert out["status"] & rm.Irq.ERROR
    assert rm.reg("ERR_CODE").field("code").get(out["err"]) == code
    assert rm.Descriptor.decode(out["ring"].tolist()).status == rm.descriptor_status(code)
    assert (out["done"], out["errors"]) == (1, 1)
    assert (cl.devices[1].grad[:1024] == GUARD).all()
    assert not intervals(cl.devices[0], rm.Engine.NIC_TX)
    ((start, end, _, aux),) = intervals(cl.devices[0], rm.Engine.DMA_LO)
    assert end - start == tm.refused_descriptor_cycles(HW) and aux == code


@pytest.mark.parametrize(
    "window_change, code",
    [
        ({"ctrl": 0}, rm.ErrorCode.RX_NO_WINDOW),
        ({"tag": rm.encode_tag(2, 0, 0)}, rm.ErrorCode.RX_TAG_MISMATCH),
        ({"length": 32}, rm.ErrorCode.RX_OUT_OF_WINDOW),
    ],
)
def test_packet_outside_open_window_is_dropped_and_writes_nothing(window_change, code):
    desc = rm.Descriptor(
        src_addr=gaddr(0),
        length=64,
        peer=1,
        remote_addr=gaddr(512),
        window=3,
        tag=rm.encode_tag(1, 0, 0),
        flags=int(rm.DescFlag.REDUCE_ADD),
    )
    out = {}
    win = dict(ctrl=1, tag=rm.encode_tag(1, 0, 0), length=256)
    win.update(window_change)

    async def sender(dev):
        await setup_queues(dev)
        await dev.load(gaddr(0), np.arange(32))
        await dev.load(saddr(0), np.zeros(2048))  # let the receiver open its window first
        await post(dev, 0, 0, desc)

    async def receiver(dev):
        await setup_queues(dev)
        await dev.load(gaddr(0), np.full(1024, GUARD))
        for name, v in (
            ("DST", gaddr(512)),
            ("SRC", gaddr(0)),
            ("LEN", win["length"]),
            ("TAG", win["tag"]),
            ("CTRL", win["ctrl"]),
            ("EXPECT", 64),
        ):
            await dev.write32(rm.rx_window_reg(3, name), v)
        out["status"] = await dev.wait_irq(int(rm.Irq.ERROR | rm.Irq.RX))
        out["err"] = await dev.read32(rm.offset("ERR_CODE"))
        out["drops"] = await dev.read32(rm.offset("RX_DROPS"))

    cl = run_programs([sender, receiver])
    assert out["status"] == int(rm.Irq.ERROR)
    assert rm.reg("ERR_CODE").field("code").get(out["err"]) == code
    assert out["drops"] == 1
    assert (cl.devices[1].grad[:1024] == GUARD).all()


@pytest.mark.parametrize(
    "dst, src",
    [
        # the window (and the packet) lies outside both SRAMs
        (0x0800_0000, gaddr(0)),
        # the window straddles the gradient SRAM's end: the packet's last 32 bytes leave it
        (gaddr(HW.gradient_words - 16), gaddr(0)),
        # the reduce-add source lies outside both SRAMs
        (gaddr(512), rm.RING_MEM_BASE),
        # operand-aligned but not 32-bit aligned source: the receiver moves 32-bit words
        (gaddr(512), gaddr(1)),
    ],
    ids=["dst_outside_srams", "dst_straddles_grad_end", "src_outside_srams", "src_misaligned"],
)
def test_packet_outside_device_memory_is_refused_and_writes_nothing(dst, src):
    """Inside its window but not inside one SRAM (or not 32-bit aligned): RX_OUT_OF_WINDOW,
    ERR_INFO = tag, an ERROR record at the refusal, nothing written, nothing counted received."""
    tag = rm.encode_tag(1, 0, 0)
    desc = rm.Descriptor(
        src_addr=gaddr(0),
        length=64,
        peer=1,
        remote_addr=dst,
        window=3,
        tag=tag,
        flags=int(rm.DescFlag.REDUCE_ADD),
    )
    out = {}

    async def sender(dev):
        await setup_queues(dev)
        await dev.load(gaddr(0), np.arange(32))
        for _ in range(3):  # let the receiver fill its guards and open its window first
            await dev.load(saddr(0), np.zeros(HW.scratchpad_words))
        await post(dev, 0, 0, desc)

    async def receiver(dev):
        await setup_queues(dev)
        await dev.load(gaddr(0), np.full(HW.gradient_words, GUARD))
        await dev.load(saddr(0), np.full(HW.scratchpad_words, GUARD))
        await open_window(dev, 3, dst, src, 256, tag, 64)
        out["status"] = await dev.wait_irq(int(rm.Irq.ERROR | rm.Irq.RX))
        out["err"] = await dev.read32(rm.offset("ERR_CODE"))
        out["info"] = await dev.read32(rm.offset("ERR_INFO"))
        out["drops"] = await dev.read32(rm.offset("RX_DROPS"))
        out["received"] = await dev.read32(rm.rx_window_reg(3, "RECEIVED"))

    cl = run_programs([sender, receiver])
    err = rm.reg("ERR_CODE")
    assert out["status"] == int(rm.Irq.ERROR)
    assert err.field("code").get(out["err"]) == rm.ErrorCode.RX_OUT_OF_WINDOW
    assert err.field("engine").get(out["err"]) == rm.Engine.NIC_RX
    assert err.field("index").get(out["err"]) == 3
    assert (out["info"], out["drops"], out["received"]) == (tag, 1, 0)
    rx = cl.devices[1]
    assert (rx.grad == GUARD).all() and (rx.scratch == GUARD).all()
    end, error = [r for r in rx.trace if r.engine == rm.Engine.NIC_RX]
    assert (end.event, end.tag, end.aux) == (rm.TraceEvent.END, tag, 0)
    assert (error.event, error.cycle, error.tag, error.aux) == (
        rm.TraceEvent.ERROR, end.cycle, tag, rm.ErrorCode.RX_OUT_OF_WINDOW)


def test_reduce_add_transfer_timing_and_saturation():
    n_words = 300  # 600 bytes: packets of 256, 256, 88
    local = np.full(n_words, 30000)
    local[::2] = -5
    remote = np.full(n_words, 10000)
    out = {}

    async def sender(dev):
        await setup_queues(dev)
        await dev.load(gaddr(0), remote)
        await dev.load(saddr(0), np.zeros(2048))  # let the receiver open its window first
        await post(
            dev,
            1,
            0,
            rm.Descriptor(
                gaddr(0),
                600,
                1,
                gaddr(1024),
                5,
                rm.encode_tag(2, 1, 0),
                flags=int(rm.DescFlag.REDUCE_ADD | rm.DescFlag.IRQ),
            ),
        )
        out["posted"] = dev.sim.now
        await dev.wait_irq(int(rm.Irq.DMA_Q1))

    async def receiver(dev):
        await setup_queues(dev)
        await dev.load(gaddr(0), local)
        await open_window(dev, 5, gaddr(1024), gaddr(0), 600, rm.encode_tag(2, 1, 0), 600)
        await dev.wait_irq(int(rm.Irq.RX))
        out["rx_done"] = await dev.read32(rm.offset("RX_DONE_LO"))
        out["received"] = await dev.read32(rm.rx_window_reg(5, "RECEIVED"))

    cl = run_programs([sender, receiver])
    want = np.clip(local + remote, FMT.qmin, FMT.qmax)
    assert np.array_equal(cl.devices[1].grad[1024 : 1024 + n_words], want)
    assert out["rx_done"] == 1 << 5 and out["received"] == 600
    ((d_start, d_end, _, _),) = intervals(cl.devices[0], rm.Engine.DMA_LO)
    assert d_start == out["posted"]
    assert d_end - d_start == tm.descriptor_cycles(600, HW)
    ((t_start, t_end, _, _),) = intervals(cl.devices[0], rm.Engine.NIC_TX)
    assert t_start == d_start + tm.descriptor_fetch_cycles(HW)
    assert t_end - t_start == (12 + 256 + 4) // 4 * 2 + -(-(12 + 88 + 4) // 4)
    rx = intervals(cl.devices[1], rm.Engine.NIC_RX)
    assert [r[3] for r in rx] == [256, 256, 88]
    # store-and-forward applier, in order: a packet is visible max(CRC arrival + 1, previous
    # packet visible) + 3 + payload words after; the first one when the receiver is idle
    t1 = t_start + 68
    assert rx[0][1] == t1 + tm.packet_arrival_offset(HW, 256) == t1 + 50 - 1 + 1 + 3 + 64
    crc = [t_start + 68 * 2 + 49, t_end + 49]
    assert rx[1][1] == max(crc[0] + 1, rx[0][1]) + 3 + 64
    assert rx[2][1] == max(crc[1] + 1, rx[1][1]) + 3 + 22


def test_high_priority_descriptor_overtakes_at_chunk_boundary():
    out = {}
    tag = rm.encode_tag(1, 0, 0)

    async def sender(dev):
        await setup_queues(dev)
        for slot in range(3):
            await dev.load(
                rm.RING_MEM_BASE + (HW.ring_entries + slot) * 32,
                np.array(
                    rm.Descriptor(
                        gaddr(slot * 512), 1024, 1, gaddr(4096 - 1024 + 0), 0, tag
                    ).encode()
                ),
            )
        await dev.write32(rm.dma_reg(1, "DOORBELL"), 3)
        # post the high-priority chunk while the first low-priority one is on the link
        await dev.load(gaddr(1024 * 3), np.zeros(8))
        out["hi_posted"] = dev.sim.now
        await post(dev, 0, 0, rm.Descriptor(gaddr(2048), 64, 1, gaddr(4096 - 1024), 0, tag))

    async def receiver(dev):
        await setup_queues(dev)
        await open_window(dev, 0, gaddr(4096 - 1024), gaddr(0), 1024, tag, 3 * 1024 + 64)

    cl = run_programs([sender, receiver])
    lo = intervals(cl.devices[0], rm.Engine.DMA_LO)
    (hi,) = intervals(cl.devices[0], rm.Engine.DMA_HI)
    assert lo[0][0] < out["hi_posted"] < lo[0][1]
    # the hi chunk starts exactly when the running lo chunk completes, ahead of lo chunks 2 and 3
    assert hi[0] == lo[0][1]
    assert lo[1][0] == hi[1]
    assert hi[0] - out["hi_posted"] <= tm.priority_wait_bound(1024, HW)


def test_fence_waits_for_compute_completion():
    async def prog(dev):
        await setup_queues(dev)
        await launch(dev, rm.Opcode.GEMM, saddr(0), saddr(0), saddr(2000), 16, 40, 16)
        await post(
            dev,
            1,
            0,
            rm.Descriptor(
                gaddr(0), 64, 1, gaddr(0), 0, 0, flags=int(rm.DescFlag.FENCE), fence_count=1
            ),
        )

    async def receiver(dev):
        await setup_queues(dev)
        await open_window(dev, 0, gaddr(0), gaddr(0), 64, 0, 64)

    cl = run_programs([prog, receiver])
    ((_, gemm_end, _, _),) = intervals(cl.devices[0], rm.Engine.COMPUTE)
    ((tx_start, _, _, _),) = intervals(cl.devices[0], rm.Engine.NIC_TX)
    ((d_start, _, _, _),) = intervals(cl.devices[0], rm.Engine.DMA_LO)
    assert d_start + tm.descriptor_fetch_cycles(HW) < gemm_end == tx_start


def test_registers_access_types_and_trace_pop_port():
    out = {}

    async def prog(dev):
        await dev.write32(rm.offset("ID"), 0)  # RO: ignored
        out["id"] = await dev.read32(rm.offset("ID"))
        out["unmapped"] = await dev.read32(0xFFC)
        out["launch"] = await dev.read32(rm.offset("CMD_LAUNCH"))  # WO reads 0
        await dev.write32(rm.offset("IRQ_MASK"), int(rm.Irq.COMPUTE))
        await launch(
            dev, rm.Opcode.RELU, saddr(0), 0, saddr(0), 1, 0, 8, tag=rm.encode_tag(3, 2, 1)
        )
        await dev.wait_irq(int(rm.Irq.COMPUTE))
        await dev.write32(rm.offset("IRQ_STATUS"), 0)  # W1C with 0: nothing cleared
        out["status_kept"] = await dev.read32(rm.offset("IRQ_STATUS"))
        await dev.write32(rm.offset("IRQ_STATUS"), int(rm.Irq.COMPUTE))
        out["status_cleared"] = await dev.read32(rm.offset("IRQ_STATUS"))
        out["count"] = await dev.read32(rm.offset("TRACE_COUNT"))
        out["words"] = [await dev.read32(rm.offset("TRACE_DATA")) for _ in range(8)]
        out["count_after"] = await dev.read32(rm.offset("TRACE_COUNT"))
        lo = await dev.read32(rm.offset("CYCLE_LO"))
        hi = await dev.read32(rm.offset("CYCLE_HI"))
        out["cycle"] = (hi << 32) | lo
        out["cycle_now"] = dev.sim.now

    run_programs([prog], nodes=1)
    assert out["id"] == rm.DEVICE_ID and out["unmapped"] == 0 and out["launch"] == 0
    assert out["status_kept"] == int(rm.Irq.COMPUTE) and out["status_cleared"] == 0
    assert out["count"] == 2 and out["count_after"] == 0
    start = rm.TraceRecord.decode(out["words"][:4])
    end = rm.TraceRecord.decode(out["words"][4:])
    assert (start.engine, start.event, end.event) == (
        rm.Engine.VECTOR,
        rm.TraceEvent.START,
        rm.TraceEvent.END,
    )
    assert rm.decode_tag(start.tag) == (3, 2, 1)
    assert end.cycle - start.cycle == tm.vector_cycles("relu", 8, HW)
    assert (
        out["cycle"] == out["cycle_now"] - HW.host_read_cycles * 1
        or out["cycle"] < out["cycle_now"]
    )


def test_refused_command_timing_and_driver_error_names_node_engine_code():
    from gradsync.firmware.driver import DeviceError, Driver

    out = {}

    async def prog(dev):
        drv = Driver(dev)
        await drv.init(1024)
        t0 = dev.sim.now
        await drv.launch(rm.Opcode.GEMM, saddr(0), saddr(0), saddr(0), 0, 1, 1)
        out["launched"] = dev.sim.now
        try:
            await drv.wait_compute(1)
        except DeviceError as exc:
            out["error"] = str(exc)
        out["t0"] = t0

    cl = run_programs([prog], nodes=1)
    (err,) = [r for r in cl.devices[0].trace if r.event == rm.TraceEvent.ERROR]
    assert err.cycle == out["launched"] + tm.refused_command_cycles()
    assert err.aux == rm.ErrorCode.CMD_ZERO_DIM
    assert out["error"].startswith("node 0: compute reported CMD_ZERO_DIM")


def test_stuck_firmware_is_reported_not_hung():
    from gradsync.model.events import SimulationError

    async def waits_forever(dev):
        await dev.write32(rm.offset("IRQ_MASK"), int(rm.Irq.RX))
        await open_window(dev, 2, gaddr(0), gaddr(0), 64, rm.encode_tag(3, 1, 7), 64)
        await dev.wait_irq(int(rm.Irq.RX))

    with pytest.raises(
        SimulationError,
        match=r"deadlock at cycle \d+: tasks \['node0'\].*node 0: nic.rx waits for tags L3c1s7",
    ):
        run_programs([waits_forever], nodes=1)

    async def spins(dev):
        while True:
            await dev.read32(rm.offset("ID"))

    with pytest.raises(SimulationError, match="cycle budget of 1000 exhausted"):
        from gradsync.model.cluster import Cluster

        Cluster(1, HW, FMT).run([spins], max_cycles=1000)
