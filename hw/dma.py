"""DMA engine: descriptor rings, strict-priority queues, validation, packetisation.

The DMA engine of ``DESIGN.md`` ("One node"): firmware writes 8-word
descriptors (layout in ``gradsync.spec.regmap``) into rings in the engine's ring
memory and rings a queue's doorbell with the new tail.  Whenever the engine
is idle it takes the next descriptor of the lowest-numbered non-empty queue
(queue 0 has strict priority), so arbitration happens at descriptor (chunk)
granularity: a high-priority chunk posted during a long low-priority transfer
waits for at most the running descriptor.  A descriptor is validated before
any byte moves; a refused one is completed with its error code and nothing is
sent.  A valid one is cut into packets of at most ``max_payload_bytes`` that
are streamed to the NIC transmitter back to back.  On a bf16 build a
``DescFlag.BF16`` descriptor is sent as bf16, two source elements read and
packed per payload word, so its packets carry half its LENGTH
(``docs/numerics.md``, "The bf16 gradient exchange").

Cycle timing (``t`` = grant cycle; see ``gradsync.spec.timing``)::

    t .. t+8        fetch the 8 descriptor words (one per cycle, 1-cycle SRAM)
    t+9             validate
    t+10 ..         packets on the link, back to back (valid descriptor)
    t+10+tx         write back STATUS and DONE_CYCLE      (t+10 if refused)
    t+11+tx         completion visible: DONE, IRQ, trace END; next grant possible

which is ``descriptor_cycles`` (``refused_descriptor_cycles``) of the model.
A doorbell written in cycle ``d`` makes the queue non-empty in ``d+1``.

:class:`DmaEngine` is the ring memory and the structure; each idea is its own part::

    doorbells -> DmaQueues -grant-> DescriptorFetcher -job-> PacketStreamer -pkt-> NIC
                 (rings, arbiter) <------------- retire ------ (FENCE, write-back)
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib import stream as _stream
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from gradsync.hw.events import ErrorEvent, TraceWrite
from gradsync.hw.fp import fp32_to_bf16
from gradsync.hw.link import word_period_log2
from gradsync.hw.packet import tx_beat
from gradsync.spec import regmap as rm

#: ``gradsync.spec.regmap`` facts the engine is built from.
DESCRIPTOR_VERSION = rm.DESCRIPTOR_VERSION
DESCRIPTOR_WORDS = rm.DESCRIPTOR_WORDS
FLAG_REDUCE_ADD = int(rm.DescFlag.REDUCE_ADD)
FLAG_IRQ = int(rm.DescFlag.IRQ)
FLAG_FENCE = int(rm.DescFlag.FENCE)
FLAG_BF16 = int(rm.DescFlag.BF16)
ERR_OK = int(rm.ErrorCode.OK)
ERR_BAD_VERSION = int(rm.ErrorCode.BAD_VERSION)
ERR_BAD_FLAGS = int(rm.ErrorCode.BAD_FLAGS)
ERR_ZERO_LENGTH = int(rm.ErrorCode.ZERO_LENGTH)
ERR_MISALIGNED = int(rm.ErrorCode.MISALIGNED)
ERR_OUT_OF_WINDOW = int(rm.ErrorCode.OUT_OF_WINDOW)
ERR_UNKNOWN_PEER = int(rm.ErrorCode.UNKNOWN_PEER)
ERR_RING_FULL = int(rm.ErrorCode.RING_FULL)
ERR_RING_BAD_SIZE = int(rm.ErrorCode.RING_BAD_SIZE)
ERR_RING_MISALIGNED = int(rm.ErrorCode.RING_MISALIGNED)
ERR_RING_OUT_OF_MEMORY = int(rm.ErrorCode.RING_OUT_OF_MEMORY)
ERR_DOORBELL_BACKWARDS = int(rm.ErrorCode.DOORBELL_BACKWARDS)

#: ``gradsync.spec.regmap`` trace codes (Engine, TraceEvent, Kind).
ENGINE_DMA_HI = int(rm.Engine.DMA_HI)
ENGINE_NIC_TX = int(rm.Engine.NIC_TX)
ENGINE_NIC_RX = int(rm.Engine.NIC_RX)
EVENT_START = int(rm.TraceEvent.START)
EVENT_END = int(rm.TraceEvent.END)
KIND_SEND = int(rm.Kind.SEND)
KIND_RECV = int(rm.Kind.RECV)


#: The eight descriptor words as the engine holds them (``regmap.DESCRIPTOR_LAYOUT``):
#: word 0 split into its fields (32 bits wide, its reserved bits included), the others whole.
DescriptorLayout = data.StructLayout(
    {
        name.lower(): data.FlexibleLayout(
            32, {f.name: data.Field(unsigned(f.width), f.lsb) for f in fields}
        )
        if word == 0
        else 32
        for word, name, fields, _ in rm.DESCRIPTOR_LAYOUT
    }
)


def _flag(flags, flag: int):
    """The bit of ``DescFlag`` ``flag`` in a descriptor's flags field."""
    return flags[ceil_log2(flag)]


def _record(port, **fields) -> list:
    """Assignments that emit one trace or error record on ``port``."""
    return [port.valid.eq(1)] + [getattr(port, name).eq(value) for name, value in fields.items()]


def queue_ports(queues: int, *, windows: bool) -> dict:
    """The per-queue register ports ``q{n}_*`` (``DMAn_*``), with or without the window."""
    ports = {}
    for q in range(queues):
        ports.update({f"q{q}_ring_base": In(32), f"q{q}_ring_size": In(32)})
        if windows:
            ports.update({f"q{q}_win_base": In(32), f"q{q}_win_len": In(32)})
        ports.update(
            {
                f"q{q}_doorbell": In(1),
                f"q{q}_doorbell_tail": In(32),
                f"q{q}_head": Out(32),
                f"q{q}_tail": Out(32),
                f"q{q}_done": Out(32),
                f"q{q}_errors": Out(32),
            }
        )
    return ports


def bf16_source_ports(src_addr_width: int) -> dict:
    """The second source read port of a bf16 build: the word after ``src_addr`` (``BF16``)."""
    return {"src1_addr": Out(src_addr_width), "src1_data": In(32)}


def _send_record(port, cycle, engine, event, tag, aux) -> list:
    """Assignments that emit one trace record of a send (``Kind.SEND``) on ``port``."""
    return _record(port, cycle=cycle, engine=engine, event=event, kind=KIND_SEND, tag=tag, aux=aux)


def grant_signature(queues: int, ring_addr_bits: int) -> wiring.Signature:
    """The strict-priority arbiter's choice, as :class:`DescriptorFetcher` sees it.

    Members (from the arbiter's side)
    ---------------------------------
    valid : Out(1)
        Some queue is non-empty.
    queue : Out(range(queues))
        The lowest-numbered non-empty queue.
    addr : Out(ring_addr_bits)
        Ring-memory word address of its HEAD slot (driven even when not ``valid``).
    index : Out(16)
        Its HEAD (the descriptor's index in error reports).
    take : In(1)
        The fetcher takes the descriptor: HEAD advances.

    Not a stream: a doorbell of a higher-priority queue changes the choice until it is taken.
    """
    return wiring.Signature(
        {
            "valid": Out(1),
            "queue": Out(range(queues)),
            "addr": Out(ring_addr_bits),
            "index": Out(16),
            "take": In(1),
        }
    )


def retire_layout(queues: int) -> data.StructLayout:
    """A completed descriptor, as the write-back reports it to its queue."""
    return data.StructLayout({"queue": range(queues), "failed": 1, "irq": 1})


def descriptor_job_signature(queues: int, ring_addr_bits: int, regions: int) -> wiring.Signature:
    """A fetched descriptor, as :class:`DescriptorFetcher` hands it to :class:`PacketStreamer`.

    Members (from the fetcher's side)
    ---------------------------------
    start : Out(1)
        Pulse: the descriptor is fetched and validated (``t+9``).
    code : Out(8), region : Out(range(regions))
        Valid with ``start``: its ``ErrorCode`` (0 if valid) and source region.
    desc : Out(DescriptorLayout)
        The descriptor words; held until ``done``.
    queue, slot, index, grant_cycle : Out
        Its queue, the ring word address of its slot, its HEAD index and the grant
        cycle; held until ``done``.
    done : In(1)
        The write-back cycle: the fetcher may take the next grant in the next cycle.
    """
    return wiring.Signature(
        {
            "start": Out(1),
            "code": Out(8),
            "region": Out(range(regions)),
            "desc": Out(DescriptorLayout),
            "queue": Out(range(queues)),
            "slot": Out(ring_addr_bits),
            "index": Out(16),
            "grant_cycle": Out(48),
            "done": In(1),
        }
    )


class DmaQueues(wiring.Component):
    """The per-queue ring state: doorbells, HEAD/TAIL/DONE/ERRORS, strict-priority arbiter.

    Parameters
    ----------
    queues, ring_entries, ring_base_addr, ring_valid_words, ring_addr_bits:
        As for :class:`DmaEngine` (``ring_addr_bits``: ring-memory word address width).

    Attributes
    ----------
    q{n}_ring_base, q{n}_ring_size, q{n}_doorbell, q{n}_doorbell_tail : In
    q{n}_head, q{n}_tail, q{n}_done, q{n}_errors : Out(32)
        As on :class:`DmaEngine`.
    refused : Out(ErrorEvent)
        A refused doorbell (``DmaEngine.error[1]``).
    grant : Out(grant_signature)
    retire : In(stream.Signature(retire_layout, always_ready=True))
        A completed descriptor: DONE (and ERRORS if it failed) count up in the next
        cycle; ``irq_done`` of its queue pulses now if ``irq``.
    irq_done : Out(queues)
    """

    def __init__(
        self,
        queues: int,
        ring_entries: int,
        ring_base_addr: int,
        ring_valid_words: int,
        ring_addr_bits: int,
    ):
        self.queues, self.ring_entries = queues, ring_entries
        self.ring_base_addr, self.ring_valid_words = ring_base_addr, ring_valid_words
        self.ring_addr_bits = ring_addr_bits
        ports = {
            "refused": Out(ErrorEvent),
            "grant": Out(grant_signature(queues, ring_addr_bits)),
            "retire": In(_stream.Signature(retire_layout(queues), always_ready=True)),
            "irq_done": Out(queues),
        }
        ports.update(queue_ports(queues, windows=False))
        super().__init__(ports)

    def q(self, n: int, name: str):
        return getattr(self, f"q{n}_{name}")

    def elaborate(self, platform):
        m = Module()
        Q = self.queues
        heads = [self.q(n, "head") for n in range(Q)]
        tails = [self.q(n, "tail") for n in range(Q)]
        slot_idx = [Signal(16, name=f"q{n}_slot") for n in range(Q)]

        # Doorbells: the first failing check of rm.DOORBELL_CHECKS refuses it.
        for n in range(Q):
            size, base = self.q(n, "ring_size"), self.q(n, "ring_base")
            value = self.q(n, "doorbell_tail")
            ring_end = Signal(33, name=f"q{n}_ring_end")
            m.d.comb += ring_end.eq(((base - self.ring_base_addr)[:32] >> 2) + (size[:16] << 3))
            code = Signal(8, name=f"q{n}_doorbell_code")
            info = Signal(32, name=f"q{n}_doorbell_info")
            with m.If((size == 0) | (size > self.ring_entries)):
                m.d.comb += [code.eq(ERR_RING_BAD_SIZE), info.eq(size)]
            with m.Elif(base[: ceil_log2(DESCRIPTOR_WORDS * 4)] != 0):
                m.d.comb += [code.eq(ERR_RING_MISALIGNED), info.eq(base)]
            with m.Elif((base < self.ring_base_addr) | (ring_end > self.ring_valid_words)):
                m.d.comb += [code.eq(ERR_RING_OUT_OF_MEMORY), info.eq(base)]
            with m.Elif((value - tails[n])[31]):
                m.d.comb += [code.eq(ERR_DOORBELL_BACKWARDS), info.eq(value)]
            with m.Elif((value - heads[n])[:32] > size):
                m.d.comb += [code.eq(ERR_RING_FULL), info.eq(value)]
            with m.If(self.q(n, "doorbell")):
                with m.If(code != ERR_OK):
                    m.d.comb += _record(
                        self.refused, code=code, engine=ENGINE_DMA_HI + n, index=n, info=info
                    )
                with m.Else():
                    m.d.sync += tails[n].eq(value)

        # Strict priority: the lowest-numbered non-empty queue wins.
        grant = self.grant
        for n in reversed(range(Q)):
            with m.If(heads[n] != tails[n]):
                m.d.comb += [grant.valid.eq(1), grant.queue.eq(n)]
        m.d.comb += [
            grant.addr.eq(
                (
                    Array(self.q(n, "ring_base") for n in range(Q))[grant.queue][2:]
                    + (Array(slot_idx)[grant.queue] << 3)
                )[: self.ring_addr_bits]
            ),
            grant.index.eq(Array(heads)[grant.queue]),
        ]
        for n in range(Q):
            with m.If(grant.take & (grant.queue == n)):
                m.d.sync += [
                    heads[n].eq(heads[n] + 1),
                    slot_idx[n].eq(
                        Mux(slot_idx[n] + 1 >= self.q(n, "ring_size"), 0, slot_idx[n] + 1)
                    ),
                ]

        # Completion.
        done = self.retire.payload
        for n in range(Q):
            with m.If(self.retire.valid & (done.queue == n)):
                m.d.sync += self.q(n, "done").eq(self.q(n, "done") + 1)
                with m.If(done.failed):
                    m.d.sync += self.q(n, "errors").eq(self.q(n, "errors") + 1)
                with m.If(done.irq):
                    m.d.comb += self.irq_done[n].eq(1)
        return m


class DescriptorFetcher(wiring.Component):
    """Takes the granted descriptor, fetches its eight words and validates them.

    Validation, in ``rm.DESCRIPTOR_CHECKS`` order, before any byte moves: version,
    flags (``BF16`` on a fixed-point build: ``BAD_FLAGS``), zero length, alignment of
    length/source/remote address (a ``BF16`` length: of 8 bytes), source range inside
    the queue's window and inside a source region, destination peer.

    Parameters
    ----------
    queues, ring_addr_bits, src_regions, bf16:
        As for :class:`DmaEngine`.

    Attributes
    ----------
    grant : In(grant_signature)
        Taken in ``IDLE`` (grant cycle ``t``).
    ring : In(ReadPort.Signature)
        The fetcher's read port of the ring memory: words at ``t+1 .. t+8``.
    win_base, win_len : In(32)
        ``DMAn_WIN_BASE``/``DMAn_WIN_LEN`` of ``job.queue``.
    tx_peer : In(8), peers_ok : In(1), cycle : In(48)
        As on :class:`DmaEngine`.
    job : Out(descriptor_job_signature)
        ``start`` at ``t+9``; the fetcher waits for ``done`` before the next grant.
    busy : Out(1)
        Not waiting for a grant.
    """

    def __init__(self, queues: int, ring_addr_bits: int, src_regions, bf16: bool = False):
        self.queues, self.ring_addr_bits = queues, ring_addr_bits
        self.bf16 = bf16
        self.src_regions = tuple(src_regions)
        super().__init__(
            {
                "grant": In(grant_signature(queues, ring_addr_bits)),
                "ring": In(ReadPort.Signature(addr_width=ring_addr_bits, shape=32)),
                "win_base": In(32),
                "win_len": In(32),
                "tx_peer": In(8),
                "peers_ok": In(1),
                "cycle": In(48),
                "job": Out(descriptor_job_signature(queues, ring_addr_bits, len(src_regions))),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        job = self.job
        desc = job.desc
        fc = Signal(3)

        # Validation (combinational on the fetched words, taken at CHECK).
        check = job.code
        src_end = Signal(33)
        win_end = Signal(33)
        m.d.comb += [
            src_end.eq(desc.src_addr + desc.length),
            win_end.eq(self.win_base + self.win_len),
        ]
        in_region = Signal()
        for i, (base, size) in enumerate(self.src_regions):
            with m.If((desc.src_addr >= base) & (src_end <= base + size)):
                m.d.comb += [in_region.eq(1), job.region.eq(i)]
        # rm.DESCRIPTOR_CHECKS order: version, flags, zero length, alignment, window, peer.
        bf16 = _flag(desc.control.flags, FLAG_BF16)
        misaligned = (
            (desc.length[0:2] != 0) | (desc.src_addr[0:2] != 0) | (desc.remote_addr[0:2] != 0)
        )
        if self.bf16:  # a BF16 length is whole payload words of two bf16 elements
            misaligned = misaligned | (bf16 & (desc.length[0:3] != 0))
        with m.If(desc.control.version != DESCRIPTOR_VERSION):
            m.d.comb += check.eq(ERR_BAD_VERSION)
        if not self.bf16:  # a fixed-point device's gradients are not fp32
            with m.Elif(bf16):
                m.d.comb += check.eq(ERR_BAD_FLAGS)
        with m.Elif(desc.length == 0):
            m.d.comb += check.eq(ERR_ZERO_LENGTH)
        with m.Elif(misaligned):
            m.d.comb += check.eq(ERR_MISALIGNED)
        with m.Elif((desc.src_addr < self.win_base) | (src_end > win_end) | ~in_region):
            m.d.comb += check.eq(ERR_OUT_OF_WINDOW)
        with m.Elif((desc.control.peer != self.tx_peer) | ~self.peers_ok):
            m.d.comb += check.eq(ERR_UNKNOWN_PEER)

        with m.FSM(name="fetch") as fsm:
            with m.State("IDLE"):
                m.d.comb += self.ring.addr.eq(self.grant.addr)
                with m.If(self.grant.valid):
                    m.d.comb += self.grant.take.eq(1)
                    m.d.sync += [
                        job.queue.eq(self.grant.queue),
                        job.index.eq(self.grant.index),
                        job.grant_cycle.eq(self.cycle),
                        job.slot.eq(self.grant.addr),
                        fc.eq(0),
                    ]
                    m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += self.ring.addr.eq(job.slot + fc + 1)
                m.d.sync += [desc.as_value().word_select(fc, 32).eq(self.ring.data), fc.eq(fc + 1)]
                with m.If(fc == DESCRIPTOR_WORDS - 1):
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += job.start.eq(1)
                m.next = "WAIT"
            with m.State("WAIT"), m.If(job.done):
                m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))
        return m


class PacketStreamer(wiring.Component):
    """Runs a validated descriptor: FENCE, packets to the NIC, status write-back, completion.

    A valid descriptor's payload is cut into packets of at most ``max_payload_bytes``
    (header words H0 = window | REDUCE_ADD << 8 | (words - 1) << 9, H1 = tag, H2 =
    remote address, then the payload read from ``src_*``), streamed back to back; a
    refused one goes straight to the write-back.  With ``BF16`` (bf16 builds) the
    packets cut the wire bytes (LENGTH / 2), H0 bit 7 is set, payload word ``k`` is
    elements ``2k`` and ``2k + 1`` rounded to bf16 (bits 15:0 and 31:16), read in one
    cycle from ``src_data`` and ``src1_data``, and H2 advances by twice the payload. The write-back cycle writes STATUS
    and DONE_CYCLE into the descriptor's slot, reports ``retire`` to its queue,
    the trace END records and, if refused, the error.

    Parameters
    ----------
    queues, ring_addr_bits, src_regions, src_addr_width, max_payload_bytes, bf16:
        As for :class:`DmaEngine`.
    word_period:
        Cycles the link needs per 32-bit word (``4 / link_bytes_per_cycle``): the
        reset value of ``run_word_period``.
    width_bytes:
        The link datapath (4, or 8: ``pkt`` carries ``packet.TxBeat``).  With
        ``run_pair`` (the link at 8 bytes/cycle) a beat holds the packet's words
        ``wi`` and ``wi + 1`` -- (H0, H1), (H2, p0), (p1, p2), ... -- the payload words
        from ``src_data`` and ``src1_data`` (the word after), the last beat one word
        if the packet's ``3 + pw`` are odd; a chunk whose CRC leaves beside its last
        word (``crc_sent`` in that beat's cycle) is written back in the next cycle.

    Attributes
    ----------
    run_pair : In(1) (width 8 only)
        The link runs at 8 bytes/cycle: two words a beat.
    run_payload_words : In(8), run_word_period : In(3)
        The current maximum payload (words, 1 .. ``max_payload_bytes / 4``) and word
        period (1, 2 or 4); undriven: the parameters.
    job : In(descriptor_job_signature)
    compute_done : In(32), cycle : In(48)
    src_addr, src_region : Out, src_data : In(32)
    src1_addr : Out, src1_data : In(32)
    pkt : Out(stream of TxWord, or TxBeat at width 8), crc_sent : In(1)
        As on :class:`DmaEngine` (``src1_*`` only with ``bf16`` or width 8).
    status, done_cycle : In(WritePort.Signature)
        Write ports of the ring memory for the STATUS and DONE_CYCLE words.
    retire : Out(stream.Signature(retire_layout, always_ready=True))
    trace : Out(TraceWrite).array(2), error : Out(ErrorEvent), tx_cycles : Out(32)
        ``DmaEngine.trace``, ``DmaEngine.error[0]``, ``DmaEngine.tx_cycles``.
    """

    def __init__(
        self,
        *,
        queues: int,
        ring_addr_bits: int,
        src_regions,
        src_addr_width: int,
        max_payload_bytes: int,
        word_period: int,
        bf16: bool = False,
        width_bytes: int = 4,
    ):
        self.src_regions = tuple(src_regions)
        self.max_payload_bytes = max_payload_bytes
        self.word_period = word_period
        self.bf16 = bf16
        self.width_bytes = width_bytes
        write_port = WritePort.Signature(addr_width=ring_addr_bits, shape=32)
        wide = {"run_pair": In(1)} if width_bytes == 8 else {}
        super().__init__(
            {
                **wide,
                "run_payload_words": In(8, init=max_payload_bytes // 4),
                "run_word_period": In(3, init=word_period),
                "job": In(descriptor_job_signature(queues, ring_addr_bits, len(src_regions))),
                "compute_done": In(32),
                "cycle": In(48),
                "src_addr": Out(src_addr_width),
                "src_region": Out(range(len(src_regions))),
                "src_data": In(32),
                "pkt": Out(_stream.Signature(tx_beat(width_bytes))),
                "crc_sent": In(1),
                "status": In(write_port),
                "done_cycle": In(write_port),
                "retire": Out(_stream.Signature(retire_layout(queues), always_ready=True)),
                "trace": Out(TraceWrite).array(2),
                "error": Out(ErrorEvent),
                "tx_cycles": Out(32),
                **(bf16_source_ports(src_addr_width) if bf16 or width_bytes == 8 else {}),
            }
        )

    def _payload_word(self, m: Module, is_bf16):
        """The payload word on ``src_data`` (with ``BF16``: two elements as bf16, low first)."""
        if not self.bf16:
            return self.src_data
        lo = fp32_to_bf16(m, self.src_data, "tx_bf16_lo")
        hi = fp32_to_bf16(m, self.src1_data, "tx_bf16_hi")
        return Mux(is_bf16, Cat(lo, hi), self.src_data)

    def elaborate(self, platform):
        m = Module()
        job, pkt = self.job, self.pkt
        d = job.desc
        flags = d.control.flags
        d_len, d_tag = d.length, d.tag
        code = Signal(8)
        rem = Signal(32)  # bytes not yet packetised (incl. current packet)
        wi = Signal(8)  # word index within the current packet
        pw = Signal(8)  # payload words of the current packet
        ptr = Signal(len(self.src_addr))  # word whose data is on src_data
        raddr = Signal(32)
        region = Signal.like(self.src_region)
        hold = Signal(2)
        fence_wait = Signal()
        maxw = self.run_payload_words
        m.d.comb += [self.src_addr.eq(ptr), self.src_region.eq(region)]
        m.d.comb += pw.eq(Mux(rem[2:] > maxw, maxw, rem[2:]))
        dma_trace, tx_trace = self.trace
        # BF16 (bf16 builds): the link carries half of LENGTH, two source words per payload
        # word, a packet covers twice its payload of the peer's memory.
        if self.bf16:
            is_bf16 = _flag(flags, FLAG_BF16)
            wire_len = Mux(is_bf16, d_len >> 1, d_len)
            src_step = Mux(is_bf16, 2, 1)
            mem_bytes = Mux(is_bf16, pw << 3, pw << 2)
            m.d.comb += self.src1_addr.eq(self.src_addr + 1)
        else:
            is_bf16, wire_len, src_step, mem_bytes = Const(0), d_len, 1, pw << 2
        payload_word = self._payload_word(m, is_bf16)
        h0 = d.control.window | (_flag(flags, FLAG_REDUCE_ADD) << 8) | ((pw - 1)[:7] << 9)
        if self.bf16:
            h0 = h0 | (is_bf16 << 7)
        queue_engine = ENGINE_DMA_HI + job.queue

        with m.FSM(name="send") as fsm:
            with m.State("IDLE"), m.If(job.start):
                m.d.comb += _send_record(
                    dma_trace, job.grant_cycle, queue_engine, EVENT_START, d_tag, d_len
                )
                m.d.sync += [
                    code.eq(job.code),
                    rem.eq(wire_len),
                    wi.eq(0),
                    raddr.eq(d.remote_addr),
                    region.eq(job.region),
                    ptr.eq((d.src_addr - Array(b for b, _ in self.src_regions)[job.region])[2:]),
                ]
                with m.If(job.code != 0):
                    m.next = "WRITEBACK"
                with m.Else():
                    m.d.sync += fence_wait.eq(_flag(flags, FLAG_FENCE))
                    m.next = "SEND"
            with m.State("SEND"):
                # FENCE: hold the first word until COMPUTE_DONE - FENCE_COUNT >= 0;
                # it leaves in the cycle the counter shows the value (as in the model).
                go = ~fence_wait | ~(self.compute_done - d.fence_count)[31]
                with m.If(go):
                    m.d.sync += fence_wait.eq(0)
                last = wi == 2 + pw
                with m.Switch(wi):
                    with m.Case(0):
                        m.d.comb += pkt.p.data.eq(h0)
                    with m.Case(1):
                        m.d.comb += pkt.p.data.eq(d_tag)
                    with m.Case(2):
                        m.d.comb += pkt.p.data.eq(raddr)
                    with m.Default():
                        m.d.comb += pkt.p.data.eq(payload_word)
                if self.width_bytes == 8:
                    last = self._pair_beat(m, wi, pw, h0, d_tag, raddr, last)
                fire = go & pkt.ready
                m.d.comb += [
                    pkt.valid.eq(go),
                    pkt.p.last.eq(last),
                    pkt.p.chunk_end.eq(last & (rem[2:] == pw)),
                ]
                if self.width_bytes == 8:
                    # words of the payload this beat takes: p0 with H2, then two (one last)
                    taken = Mux(wi == 2, 1, Mux(pkt.p.two, 2, 1))
                    src_step = Mux(self.run_pair, taken, 1)
                    step_ok = Mux(self.run_pair, wi >= 2, wi >= 3)
                else:
                    step_ok = wi >= 3
                with m.If(fire & step_ok):
                    m.d.comb += self.src_addr.eq(ptr + src_step)
                    m.d.sync += ptr.eq(ptr + src_step)
                with m.If(fire & (wi == 0) & (rem == wire_len)):
                    m.d.comb += _send_record(
                        tx_trace, self.cycle, ENGINE_NIC_TX, EVENT_START, d_tag, d_len
                    )
                with m.If(fire):
                    if self.width_bytes == 8:
                        m.d.sync += wi.eq(wi + 1 + (self.run_pair & pkt.p.two))
                    else:
                        m.d.sync += wi.eq(wi + 1)
                    with m.If(last):
                        m.d.sync += [
                            wi.eq(0),
                            rem.eq(rem - (pw << 2)),
                            raddr.eq(raddr + mem_bytes),
                        ]
                        with m.If(rem[2:] == pw):
                            if self.width_bytes == 8:
                                # 8 bytes/cycle: the CRC may leave beside this last word
                                with m.If(self.crc_sent):
                                    m.next = "WRITEBACK"
                                with m.Else():
                                    m.next = "WAIT_CRC"
                            else:
                                m.next = "WAIT_CRC"
            with m.State("WAIT_CRC"), m.If(self.crc_sent):
                with m.If(self.run_word_period > 1):
                    m.d.sync += hold.eq(self.run_word_period - 2)
                    m.next = "LINK_TAIL"
                with m.Else():
                    m.next = "WRITEBACK"
            with m.State("LINK_TAIL"):
                # A slow link is busy for word_period cycles per word: the chunk's
                # transmission ends word_period - 1 cycles after its last word was taken.
                with m.If(hold == 0):
                    m.next = "WRITEBACK"
                with m.Else():
                    m.d.sync += hold.eq(hold - 1)
            with m.State("WRITEBACK"):
                m.d.comb += [
                    self.status.addr.eq(job.slot + 6),
                    self.status.data.eq((1 << 31) | code),
                    self.status.en.eq(1),
                    self.done_cycle.addr.eq(job.slot + 7),
                    self.done_cycle.data.eq(self.cycle + 1),
                    self.done_cycle.en.eq(1),
                    job.done.eq(1),
                    self.retire.valid.eq(1),
                    self.retire.payload.queue.eq(job.queue),
                    self.retire.payload.failed.eq(code != 0),
                    self.retire.payload.irq.eq(_flag(flags, FLAG_IRQ)),
                ]
                m.d.comb += _send_record(
                    dma_trace,
                    self.cycle + 1,
                    queue_engine,
                    EVENT_END,
                    d_tag,
                    Mux(code != 0, code, d_len),
                )
                with m.If(code == 0):
                    m.d.comb += _send_record(
                        tx_trace, self.cycle, ENGINE_NIC_TX, EVENT_END, d_tag, d_len
                    )
                with m.Else():
                    m.d.comb += _record(
                        self.error, code=code, engine=queue_engine, index=job.index, info=d.src_addr
                    )
                m.next = "IDLE"

        self._count_tx_cycles(
            m,
            fsm.ongoing("SEND") & pkt.valid & pkt.ready,
            (wi == 0) & (rem == wire_len),
            fsm.ongoing("WRITEBACK"),
        )
        return m

    def _pair_beat(self, m: Module, wi, pw, h0, tag, raddr, last_single):
        """8 bytes/cycle (``run_pair``): the beat of words ``wi`` and ``wi + 1`` -- (H0, H1),
        (H2, p0), (p1, p2), ..., the last holding one word if the packet's ``3 + pw`` are odd
        (the transmitter adds the CRC beside it).  Payload words ``p(k)`` and ``p(k+1)`` come
        from ``src_data`` and ``src1_data`` (the word after).  Returns the beat's ``last``."""
        pkt = self.pkt
        with m.If(self.run_pair):
            with m.Switch(wi):
                with m.Case(0):
                    m.d.comb += pkt.p.data1.eq(tag)
                with m.Case(2):
                    m.d.comb += pkt.p.data1.eq(self.src_data)
                with m.Default():
                    m.d.comb += pkt.p.data1.eq(self.src1_data)
            m.d.comb += pkt.p.two.eq(wi + 1 <= 2 + pw)
        m.d.comb += self.src1_addr.eq(self.src_addr + 1)
        return Mux(self.run_pair, wi + 1 >= 2 + pw, last_single)

    def _count_tx_cycles(self, m: Module, word_taken, first_of_chunk, writeback) -> None:
        """``PERF_TX_CYCLES``: from the chunk's first word on the link to its write-back."""
        sending = Signal()
        with m.If(word_taken & first_of_chunk):
            m.d.sync += sending.eq(1)
        with m.If(writeback):
            m.d.sync += sending.eq(0)
        with m.If((sending | word_taken) & ~writeback):
            m.d.sync += self.tx_cycles.eq(self.tx_cycles + 1)


class DmaEngine(wiring.Component):
    """Descriptor-ring DMA engine with ``queues`` strict-priority queues.

    Parameters
    ----------
    queues:
        Number of descriptor queues (>= 2); queue 0 has the highest priority.
    ring_words:
        Size of the ring memory in 32-bit words (power of 2).
    ring_entries:
        Largest ``RING_SIZE`` a queue accepts.
    ring_base_addr, ring_valid_words:
        Device address of ring memory (``RING_MEM_BASE``) and its populated
        size in words; a ring must lie inside it (``RING_BASE`` is a device
        byte address, 32-byte aligned).
    max_payload_bytes:
        Largest packet payload (multiple of 4, at most 512): the reset value of
        ``run_payload_words`` (times 4).
    link_bytes_per_cycle:
        Bandwidth of the transmit link (1, 2 or 4): a chunk's transmission
        ends ``4 / link_bytes_per_cycle - 1`` cycles after its last word was
        taken, and only then is it written back.  The reset value of
        ``run_bytes_per_cycle``.
    src_regions:
        ``(base, bytes)`` of the device-memory regions a descriptor may read;
        a source range not inside one of them is refused as out of window.
        The read port addresses 32-bit words ``(addr - base) >> 2`` of the
        region, with ``src_region`` its index.
    link_width_bytes:
        The link datapath (``HardwareConfig.link_width_bytes``): 4, or 8 (not with
        ``bf16``): ``pkt`` carries beats of two words at 8 bytes/cycle
        (``PacketStreamer``'s ``width_bytes``), the payload read through ``src_*``
        and ``src1_*``; ``run_bytes_per_cycle`` is then 4 bits wide.
    bf16:
        A bf16 build (``BFloat16Format``): a descriptor may carry ``DescFlag.BF16``
        (its LENGTH a multiple of ``BF16_LENGTH_ALIGN_BYTES``, ``MISALIGNED``
        otherwise) and is sent as bf16, two elements per payload word
        (``docs/numerics.md``), reading two source words per cycle
        (``src1_*``).  Without it a ``BF16`` descriptor is refused with
        ``BAD_FLAGS``.

    Attributes
    ----------
    run_payload_words : In(8), run_bytes_per_cycle : In(3)
        The current link (``LINK_SET``): packets carry at most ``run_payload_words``
        words; the link takes a word every ``4 / run_bytes_per_cycle`` cycles.
        Undriven: the parameters.
    ring_addr, ring_wdata, ring_we, ring_rdata
        Host port of the ring memory (word address; read data one cycle later).
    ring1_addr, ring1_wdata, ring1_we, ring1_rdata
        A second host port (``host_lanes=2``), so a 64-bit host bus writes
        two ring words per cycle; if both write one word, this one wins.
    q{n}_ring_base, q{n}_ring_size, q{n}_win_base, q{n}_win_len : In
        Queue configuration registers (``DMAn_RING_BASE`` ...).
    q{n}_doorbell, q{n}_doorbell_tail : In
        ``DMAn_DOORBELL`` write strobe and value.  A doorbell is refused and
        changes nothing when, checked in this order: RING_SIZE is 0 or above
        ``ring_entries`` (RING_BAD_SIZE), RING_BASE is not descriptor-aligned
        (RING_MISALIGNED), the ring leaves ring memory (RING_OUT_OF_MEMORY), the
        value is behind TAIL (DOORBELL_BACKWARDS) or more than RING_SIZE ahead
        of HEAD (RING_FULL).
    q{n}_head, q{n}_tail, q{n}_done, q{n}_errors : Out(32)
        HEAD advances at the grant; DONE/ERRORS when a descriptor completes.
    tx_peer : In(8), peers_ok : In(1)
        The node reached by this node's transmit link, and whether there is
        one (``NUM_NODES >= 2``); a descriptor to another peer is refused.
    compute_done : In(32)
        ``COMPUTE_DONE``; a FENCE descriptor waits after validation until
        ``compute_done - fence_count`` is non-negative (32-bit signed).
    cycle : In(32)
        Free-running cycle counter, written back as DONE_CYCLE.
    src_addr, src_region, src_data
        Source read port: word address and region index out, data in one
        cycle later.  Held while back-pressured, so data stays valid.
    src1_addr, src1_data
        Only with ``bf16`` or ``link_width_bytes`` 8: a second source read port at
        ``src_addr + 1`` (same region), the element after, for ``BF16`` descriptors or
        the second payload word of a beat.
    pkt : Out(stream of TxWord, TxBeat at width 8)
        Packets to the NIC transmitter (H0 carries sequence 0).
    crc_sent : In(1)
        From the transmitter: a new packet's CRC word left; ends the chunk.
    irq_done : Out(queues)
        Pulse in the write-back cycle of a descriptor with the IRQ flag, also
        of a refused one (which raises an error as well), so firmware waiting
        on the queue is woken either way; a status register taking it is
        visible in the completion cycle.
    trace : Out(TraceWrite).array(2)
        ``hw/events.py`` records for the CSR block's trace buffer.  Port 0,
        engine DMA_HI + queue: START (emitted after the fetch, stamped with
        the grant cycle, aux = length) and END (emitted in the write-back
        cycle, stamped with the completion cycle, aux = length or the error
        code).  Port 1, engine NIC_TX: START when the chunk's first word goes
        on the link, END in the cycle after its last word (aux = length, the
        descriptor's LENGTH also with ``BF16``).
    error : Out(ErrorEvent).array(2)
        Port 0: a refused descriptor (in its write-back cycle; index = its
        HEAD slot, info = source address).  Port 1: a refused doorbell (in
        the cycle of the write; the first failing ``rm.DOORBELL_CHECKS`` code,
        index = queue, info as ``rm.ERROR_MEANINGS`` says).
    busy : Out(1)
        A descriptor is being processed.
    tx_cycles : Out(32)
        ``PERF_TX_CYCLES``: cycles from each chunk's first word on the link to
        the end of its transmission (``chunk_tx_cycles`` per fault-free chunk).
    """

    def __init__(
        self,
        *,
        queues: int = 2,
        ring_words: int = 4096,
        ring_entries: int = 64,
        ring_base_addr: int = 0x3000_0000,
        ring_valid_words: int | None = None,
        max_payload_bytes: int = 256,
        link_bytes_per_cycle: int = 4,
        src_regions: tuple[tuple[int, int], ...] = ((0x2000_0000, 1 << 16),),
        host_lanes: int = 1,
        bf16: bool = False,
        link_width_bytes: int = 4,
    ):
        self.bf16 = bf16
        if link_width_bytes not in (4, 8) or (bf16 and link_width_bytes == 8):
            raise ValueError(
                f"link_width_bytes must be 4, or 8 on a build that is not bf16, "
                f"not {link_width_bytes!r}"
            )
        self.width_bytes = link_width_bytes
        if queues < 2:
            raise ValueError(f"queues must be >= 2, not {queues!r}")
        if ring_words & (ring_words - 1) or ring_words < DESCRIPTOR_WORDS:
            raise ValueError(f"ring_words must be a power of 2 >= 8, not {ring_words!r}")
        if max_payload_bytes % 4 or not 4 <= max_payload_bytes <= 512:
            raise ValueError(
                f"max_payload_bytes must be a multiple of 4 in 4..512, not {max_payload_bytes!r}"
            )
        if host_lanes not in (1, 2):
            raise ValueError(f"host_lanes must be 1 or 2, not {host_lanes!r}")
        self.host_lanes = host_lanes
        if not src_regions:
            raise ValueError(f"src_regions must name at least one region, not {src_regions!r}")
        self.queues = queues
        self.ring_words = ring_words
        self.ring_base_addr = ring_base_addr
        self.ring_valid_words = ring_words if ring_valid_words is None else ring_valid_words
        if ring_base_addr % (4 * ring_words) or self.ring_valid_words > ring_words:
            raise ValueError(
                f"ring_base_addr {ring_base_addr:#x} must be aligned to the ring memory size and "
                f"ring_valid_words <= {ring_words}, not {ring_valid_words!r}"
            )
        self.ring_entries = ring_entries
        self.max_payload_bytes = max_payload_bytes
        if link_bytes_per_cycle not in (1, 2, 4, 8)[: 3 if link_width_bytes == 4 else 4]:
            allowed = "1, 2 or 4" if link_width_bytes == 4 else "1, 2, 4 or 8"
            raise ValueError(
                f"link_bytes_per_cycle must be {allowed}, not {link_bytes_per_cycle!r}"
            )
        self.word_period = max(1, 4 // link_bytes_per_cycle)
        self.src_regions = tuple(src_regions)
        self.src_addr_width = max(1, ceil_log2(max(size for _, size in src_regions) // 4))
        ports = {
            "run_payload_words": In(8, init=max_payload_bytes // 4),
            "run_bytes_per_cycle": In(3 if link_width_bytes == 4 else 4, init=link_bytes_per_cycle),
            "ring_addr": In(ceil_log2(ring_words)),
            "ring_wdata": In(32),
            "ring_we": In(1),
            "ring_rdata": Out(32),
            "tx_peer": In(8),
            "peers_ok": In(1),
            "compute_done": In(32),
            "cycle": In(48),
            "src_addr": Out(self.src_addr_width),
            "src_region": Out(range(len(src_regions))),
            "src_data": In(32),
            "pkt": Out(_stream.Signature(tx_beat(link_width_bytes))),
            "crc_sent": In(1),
            "irq_done": Out(queues),
            "trace": Out(TraceWrite).array(2),
            "error": Out(ErrorEvent).array(2),
            "busy": Out(1),
            "tx_cycles": Out(32),
        }
        if bf16 or link_width_bytes == 8:  # BF16, or two payload words a beat
            ports.update(bf16_source_ports(self.src_addr_width))
        if host_lanes == 2:
            ports.update(
                {
                    "ring1_addr": In(ceil_log2(ring_words)),
                    "ring1_wdata": In(32),
                    "ring1_we": In(1),
                    "ring1_rdata": Out(32),
                }
            )
        ports.update(queue_ports(queues, windows=True))
        super().__init__(ports)

    def q(self, n: int, name: str):
        return getattr(self, f"q{n}_{name}")

    def _host_port(self, m: Module, ring: Memory, lane: int) -> None:
        """Host lane ``lane``: a read and a write port of the ring memory at its address."""
        prefix = "ring" if lane == 0 else f"ring{lane}"
        addr, wdata, we, rdata = (
            getattr(self, f"{prefix}_{name}") for name in ("addr", "wdata", "we", "rdata")
        )
        read, write = ring.read_port(), ring.write_port()
        m.d.comb += [
            read.addr.eq(addr),
            rdata.eq(read.data),
            write.addr.eq(addr),
            write.data.eq(wdata),
            write.en.eq(we),
        ]

    def elaborate(self, platform):
        m = Module()
        Q = self.queues
        aw = ceil_log2(self.ring_words)
        m.submodules.queues = queues = DmaQueues(
            Q, self.ring_entries, self.ring_base_addr, self.ring_valid_words, aw
        )
        m.submodules.fetcher = fetcher = DescriptorFetcher(Q, aw, self.src_regions, self.bf16)
        m.submodules.streamer = streamer = PacketStreamer(
            queues=Q,
            ring_addr_bits=aw,
            src_regions=self.src_regions,
            src_addr_width=self.src_addr_width,
            max_payload_bytes=self.max_payload_bytes,
            word_period=self.word_period,
            bf16=self.bf16,
            width_bytes=self.width_bytes,
        )
        if self.width_bytes == 8:
            m.d.comb += streamer.run_pair.eq(self.run_bytes_per_cycle == 8)
        if self.bf16 or self.width_bytes == 8:
            m.d.comb += [
                self.src1_addr.eq(streamer.src1_addr),
                streamer.src1_data.eq(self.src1_data),
            ]

        # Ring memory; port order fixes write priority (a later port wins a collision).
        m.submodules.ring = ring = Memory(shape=32, depth=self.ring_words, init=[])
        self._host_port(m, ring, 0)
        wiring.connect(m, fetcher.ring, ring.read_port())
        wiring.connect(m, streamer.status, ring.write_port())
        wiring.connect(m, streamer.done_cycle, ring.write_port())
        if self.host_lanes == 2:
            self._host_port(m, ring, 1)

        wiring.connect(m, queues.grant, fetcher.grant)
        wiring.connect(m, fetcher.job, streamer.job)
        wiring.connect(m, streamer.retire, queues.retire)
        wiring.connect(m, streamer.pkt, wiring.flipped(self.pkt))

        for n in range(Q):
            for name in ("ring_base", "ring_size", "doorbell", "doorbell_tail"):
                m.d.comb += queues.q(n, name).eq(self.q(n, name))
            for name in ("head", "tail", "done", "errors"):
                m.d.comb += self.q(n, name).eq(queues.q(n, name))
        window = fetcher.job.queue
        m.d.comb += [
            fetcher.win_base.eq(Array(self.q(n, "win_base") for n in range(Q))[window]),
            fetcher.win_len.eq(Array(self.q(n, "win_len") for n in range(Q))[window]),
            fetcher.tx_peer.eq(self.tx_peer),
            fetcher.peers_ok.eq(self.peers_ok),
            fetcher.cycle.eq(self.cycle),
            streamer.run_payload_words.eq(self.run_payload_words),
            streamer.run_word_period.eq(Const(1, 3) << word_period_log2(self.run_bytes_per_cycle)),
            streamer.compute_done.eq(self.compute_done),
            streamer.cycle.eq(self.cycle),
            streamer.src_data.eq(self.src_data),
            streamer.crc_sent.eq(self.crc_sent),
            self.src_addr.eq(streamer.src_addr),
            self.src_region.eq(streamer.src_region),
            self.irq_done.eq(queues.irq_done),
            self.trace[0].eq(streamer.trace[0]),
            self.trace[1].eq(streamer.trace[1]),
            self.error[0].eq(streamer.error),
            self.error[1].eq(queues.refused),
            self.busy.eq(fetcher.busy),
            self.tx_cycles.eq(streamer.tx_cycles),
        ]
        return m
