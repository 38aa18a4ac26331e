"""Register map, memory map, DMA descriptor layout and trace record layout.

This is the single source of every fact the host and the device must agree
on (``DESIGN.md``: "the register map and descriptor layout have a single
source that all three use").  It is part of ``gradsync.spec``, which imports
none of ``hw/``, ``model/``, ``firmware/`` or ``sim/``: the firmware, the
golden model and the RTL (CSR block, DMA engine, NIC) all import it, and the
RTL's CSR block and the model's MMIO dispatch are generated from it.  :func:`render_markdown` produces
``docs/registers.md`` (a test checks the committed file is current)::

    python -m gradsync.spec.regmap > docs/registers.md

All registers are 32 bits wide at byte offsets on the CSR port.  Access types:
``RO`` read-only (writes ignored), ``RW`` read/write, ``W1C`` write one to clear,
``WO`` write-only strobe (reads return 0).  Unmapped offsets read 0 and ignore
writes.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

import numpy as np

#: Value of the ``ID`` register: ASCII "GSYN".
DEVICE_ID = 0x4753594E
#: Register map / descriptor layout version: major in [31:16], minor in [15:0].
REGMAP_VERSION = 0x0001_0001
#: Descriptor layout version carried in every descriptor.
DESCRIPTOR_VERSION = 1
#: Byte alignment of DMA lengths and addresses (the link's word).
DMA_ALIGN_BYTES = 4

# --- device memory map (byte addresses of the bulk/DMA address space) ----------

#: Scratchpad SRAM (weights, activations, output gradients), operand words.
SCRATCH_BASE = 0x1000_0000
#: Gradient SRAM (local dW and reduced gradients), operand words.
GRAD_BASE = 0x2000_0000
#: Descriptor ring memory, 32-bit words.
RING_MEM_BASE = 0x3000_0000
#: Trace RAM (read-only to the host), 32-bit words, 4 per record.
TRACE_MEM_BASE = 0x4000_0000
#: Size of each region's address window; a region's populated size is a
#: hardware parameter read from the ``*_WORDS`` registers.
REGION_SPAN = 0x1000_0000


class Access(enum.Enum):
    RO = "RO"
    RW = "RW"
    W1C = "W1C"
    WO = "WO"


@dataclass(frozen=True)
class Field:
    name: str
    lsb: int
    width: int
    doc: str = ""

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lsb

    def get(self, value: int) -> int:
        return (value >> self.lsb) & ((1 << self.width) - 1)

    def put(self, value: int) -> int:
        if not 0 <= value < (1 << self.width):
            raise ValueError(f"field {self.name} holds {self.width} bits, not {value!r}")
        return value << self.lsb


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    access: Access
    reset: int = 0
    doc: str = ""
    fields: tuple[Field, ...] = field(default_factory=tuple)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"register {self.name} has no field {name!r}")

    def pack(self, **values: int) -> int:
        word = 0
        for name, value in values.items():
            word |= self.field(name).put(int(value))
        return word


# --- enumerations ---------------------------------------------------------------


class Irq(enum.IntFlag):
    """Bits of ``IRQ_STATUS`` / ``IRQ_MASK``."""

    COMPUTE = 1 << 0  #: a compute command with its IRQ flag completed
    DMA_Q0 = 1 << 1  #: a queue-0 (high priority) descriptor with IRQ flag completed
    DMA_Q1 = 1 << 2  #: a queue-1 (low priority) descriptor with IRQ flag completed
    RX = 1 << 3  #: an RX window reached its expected byte count (see RX_DONE_*)
    ERROR = 1 << 4  #: an error was recorded in ERR_CODE
    TRACE = 1 << 5  #: the trace buffer is at least half full


class FormatFamily(enum.IntEnum):
    """Number format families (``HW_FORMAT.family``)."""

    FIXED = 0  #: signed fixed point (``FixedPointFormat``)
    BF16 = 1  #: bf16 operands, fp32 accumulator (``BFloat16Format``)


class Opcode(enum.IntEnum):
    """Compute command opcodes (``CMD_OPCODE.opcode``)."""

    NOP = 0
    GEMM = 1  #: C[M,N] = op(A) @ op(B), inner dim K, write-back shift frac+ARG
    RELU = 2  #: C = relu(A), M*N elements
    RELU_BWD = 3  #: C = A where B > 0 else 0, M*N elements
    SCALE = 4  #: C = sat(round(A * ARG)), ARG a value in the operand format
    SGD = 5  #: C = sat(A - round(ARG * B)), ARG the learning rate


VECTOR_OPCODES = {
    Opcode.RELU: "relu",
    Opcode.RELU_BWD: "relu_bwd",
    Opcode.SCALE: "scale",
    Opcode.SGD: "sgd",
}


class ErrorCode(enum.IntEnum):
    """Error codes of ``ERR_CODE`` and of a descriptor's status word."""

    OK = 0
    BAD_VERSION = 1  #: descriptor version field is not DESCRIPTOR_VERSION
    ZERO_LENGTH = 2  #: descriptor length is 0
    MISALIGNED = 3  #: length or address not a multiple of DMA_ALIGN_BYTES
    OUT_OF_WINDOW = 4  #: source range leaves the queue's window
    UNKNOWN_PEER = 5  #: destination is not the node's link peer
    RX_NO_WINDOW = 6  #: received packet for a disabled RX window
    RX_TAG_MISMATCH = 7  #: received packet's tag differs from the window's (not its next step)
    RX_OUT_OF_WINDOW = 8  #: received packet's range leaves the window or the SRAMs, or misaligned
    CMD_BAD_OPCODE = 9  #: unknown compute opcode
    CMD_ZERO_DIM = 10  #: a compute dimension is 0
    CMD_OUT_OF_BOUNDS = 11  #: an operand range leaves its SRAM or is misaligned
    CMD_FIFO_FULL = 12  #: CMD_LAUNCH while the command FIFO was full (dropped)
    CMD_K_TOO_LARGE = 13  #: K could wrap the accumulator
    RING_FULL = 14  #: doorbell more than RING_SIZE entries ahead of HEAD (beyond the ring)
    RING_BAD_SIZE = 15  #: doorbell while RING_SIZE is 0 or above HW_QUEUES.ring_entries
    RING_MISALIGNED = 16  #: doorbell while RING_BASE is not a multiple of DESCRIPTOR_BYTES
    RING_OUT_OF_MEMORY = 17  #: doorbell while the ring leaves ring memory
    DOORBELL_BACKWARDS = 18  #: doorbell behind TAIL: TAIL may only move forward
    TRACE_EMPTY = 19  #: TRACE_DATA read while the trace buffer was empty
    LINK_SET_LOCKED = 20  #: LINK_SET written after the node's first DOORBELL write
    LINK_SET_BAD = 21  #: LINK_SET value outside LINK_LIMITS or an unsupported width
    BAD_FLAGS = 22  #: descriptor flag the device cannot do (BF16 on a fixed-point device)


#: What each error means and what ``ERR_CODE.index``/``ERR_INFO`` hold (docs and the driver's
#: error sentences).  A refused doorbell changes nothing: TAIL keeps its value.
ERROR_MEANINGS = {
    ErrorCode.OK: "no error",
    ErrorCode.BAD_VERSION: "descriptor version is not DESCRIPTOR_VERSION; index = ring slot, "
    "info = source address",
    ErrorCode.ZERO_LENGTH: "descriptor length is 0; index = ring slot, info = source address",
    ErrorCode.MISALIGNED: "descriptor length, source or remote address not a multiple of "
    "DMA_ALIGN_BYTES, or a BF16 descriptor's length not a multiple of BF16_LENGTH_ALIGN_BYTES; "
    "index = ring slot, info = source address",
    ErrorCode.OUT_OF_WINDOW: "descriptor source range leaves the queue's window or its SRAM; "
    "index = ring slot, info = source address",
    ErrorCode.UNKNOWN_PEER: "descriptor destination is not TX_PEER; index = ring slot, "
    "info = source address",
    ErrorCode.RX_NO_WINDOW: "packet for an RX window that does not exist or is not enabled; "
    "index = window, info = tag",
    ErrorCode.RX_TAG_MISMATCH: "packet tag differs from the window's WINn_TAG and is not its "
    "next step (a next-step packet is held until WINn_TAG is written); index = window, "
    "info = tag",
    ErrorCode.RX_OUT_OF_WINDOW: "packet range leaves the window or the SRAMs, or is misaligned; "
    "index = window, info = tag",
    ErrorCode.CMD_BAD_OPCODE: "unknown compute opcode; index = command number",
    ErrorCode.CMD_ZERO_DIM: "a compute dimension is 0; index = command number",
    ErrorCode.CMD_OUT_OF_BOUNDS: "a compute operand leaves its SRAM or is misaligned; "
    "index = command number",
    ErrorCode.CMD_FIFO_FULL: "CMD_LAUNCH while the command FIFO was full (dropped)",
    ErrorCode.CMD_K_TOO_LARGE: "GEMM K could wrap the accumulator; index = command number",
    ErrorCode.RING_FULL: "DOORBELL more than RING_SIZE entries ahead of HEAD; index = queue, "
    "info = the doorbell value",
    ErrorCode.RING_BAD_SIZE: "DOORBELL while RING_SIZE is 0 or above HW_QUEUES.ring_entries; "
    "index = queue, info = RING_SIZE",
    ErrorCode.RING_MISALIGNED: "DOORBELL while RING_BASE is not a multiple of 32 bytes "
    "(DESCRIPTOR_BYTES); index = queue, info = RING_BASE",
    ErrorCode.RING_OUT_OF_MEMORY: "DOORBELL while [RING_BASE, RING_BASE + 32 RING_SIZE) "
    "leaves ring memory; index = queue, info = RING_BASE",
    ErrorCode.DOORBELL_BACKWARDS: "DOORBELL behind TAIL ((value - TAIL) mod 2**32 >= 2**31); "
    "index = queue, info = the doorbell value",
    ErrorCode.TRACE_EMPTY: "TRACE_DATA read while the trace buffer was empty (the read returns "
    "TRACE_EMPTY_WORD, no ERROR record is written); index = 0, info = TRACE_TAIL",
    ErrorCode.LINK_SET_LOCKED: "LINK_SET written after the node's first DOORBELL write (the "
    "link is set before any traffic); index = 0, info = the written value",
    ErrorCode.BAD_FLAGS: "descriptor flags the device cannot do: BF16 on a device whose "
    "format is fixed point (its gradients are not fp32); index = ring slot, info = source "
    "address",
    ErrorCode.LINK_SET_BAD: "LINK_SET outside LINK_LIMITS: index = the first bad field "
    "(0 bytes_per_cycle not 1, 2 or 4 -- or 8 on a build whose LINK_INFO width8 is 1; "
    "1 payload_words not in 1..max_payload_words; "
    "2 latency above max_latency), info = the written value",
}

#: Doorbell refusals, in the order the DMA engine checks them (the first that applies is
#: reported): the ring registers, then the new TAIL.
DOORBELL_CHECKS = (
    ErrorCode.RING_BAD_SIZE,
    ErrorCode.RING_MISALIGNED,
    ErrorCode.RING_OUT_OF_MEMORY,
    ErrorCode.DOORBELL_BACKWARDS,
    ErrorCode.RING_FULL,
)

#: Descriptor refusals, in the order the DMA engine checks them (the first that applies is
#: reported); nothing is sent for a refused descriptor.
DESCRIPTOR_CHECKS = (
    ErrorCode.BAD_VERSION,
    ErrorCode.BAD_FLAGS,
    ErrorCode.ZERO_LENGTH,
    ErrorCode.MISALIGNED,
    ErrorCode.OUT_OF_WINDOW,
    ErrorCode.UNKNOWN_PEER,
)

#: What a ``TRACE_DATA`` read of an empty trace buffer returns (it also latches TRACE_EMPTY).
#: Word 1 of a real record never equals it: engine code 15 does not exist.
TRACE_EMPTY_WORD = 0xFFFF_FFFF


class Engine(enum.IntEnum):
    """Trace engine codes; names as in the output contract (``tid``)."""

    COMPUTE = 0
    VECTOR = 1
    DMA_HI = 2
    DMA_LO = 3
    NIC_TX = 4
    NIC_RX = 5
    HOST = 6


ENGINE_NAMES = {
    Engine.COMPUTE: "compute",
    Engine.VECTOR: "vector",
    Engine.DMA_HI: "dma.hi",
    Engine.DMA_LO: "dma.lo",
    Engine.NIC_TX: "nic.tx",
    Engine.NIC_RX: "nic.rx",
    Engine.HOST: "host",
}


class TraceEvent(enum.IntEnum):
    START = 0
    END = 1
    ERROR = 2


class Kind(enum.IntEnum):
    """What an engine activity was (trace ``kind`` field; also ``CMD_OPCODE.kind``)."""

    OTHER = 0
    FWD = 1
    DW = 2
    DA = 3
    RELU = 4
    RELU_BWD = 5
    UPDATE = 6
    SEND = 7
    RECV = 8
    LOAD = 9
    DUMP = 10
    SCALE = 11
    RING = 12  #: host bulk write of ring memory (descriptors)
    TRACE = 13  #: host bulk read of trace memory


KIND_NAMES = {k: k.name.lower() for k in Kind}

#: Number of DMA descriptor queues; queue 0 has strict priority over queue 1.
DMA_QUEUES = 2
DMA_QUEUE_NAMES = ("hi", "lo")
#: Maximum RX windows the register map addresses.
MAX_RX_WINDOWS = 64

# --- tags --------------------------------------------------------------------------

TAG_FIELDS = (
    Field("layer", 0, 8, "layer, counted from 1 at the input"),
    Field("chunk", 8, 12, "chunk index within the layer"),
    Field("step", 20, 12, "training step modulo 4096"),
)


def encode_tag(layer: int, chunk: int, step: int) -> int:
    """Pack (layer, chunk, step) into a 32-bit tag; step is taken modulo 4096."""
    return TAG_FIELDS[0].put(layer) | TAG_FIELDS[1].put(chunk) | TAG_FIELDS[2].put(step % 4096)


def decode_tag(tag: int) -> tuple[int, int, int]:
    return tuple(f.get(tag) for f in TAG_FIELDS)  # type: ignore[return-value]


# --- registers -----------------------------------------------------------------------

_GLOBAL = [
    Register("ID", 0x000, Access.RO, DEVICE_ID, "Device identifier, ASCII 'GSYN'."),
    Register(
        "VERSION",
        0x004,
        Access.RO,
        REGMAP_VERSION,
        "Register map version.",
        (Field("minor", 0, 16), Field("major", 16, 16)),
    ),
    Register(
        "CONTROL",
        0x008,
        Access.RW,
        0x1,
        "Global control.",
        (Field("trace_enable", 0, 1, "record engine events in the trace buffer"),),
    ),
    Register("NODE_ID", 0x00C, Access.RO, 0, "This node's index in the fabric (build parameter)."),
    Register("NUM_NODES", 0x010, Access.RO, 1, "Nodes in the fabric (build parameter)."),
    Register("TX_PEER", 0x014, Access.RO, 0, "Node reached by this node's transmit link."),
    Register(
        "HW_ARRAY",
        0x018,
        Access.RO,
        0,
        "Compute geometry (build parameters).",
        (Field("rows", 0, 8), Field("cols", 8, 8), Field("lanes", 16, 8)),
    ),
    Register(
        "HW_FORMAT",
        0x01C,
        Access.RO,
        0,
        "Number format (build parameters). family 0: fixed point, the other fields as "
        "named. family 1: bf16 operands, fp32 accumulator (docs/numerics.md); the fields "
        "then read total_bits 16 (bf16 word), frac_bits 7 (bf16 fraction), acc_bits 32 "
        "(fp32), nearest_even 1, saturate 0.",
        (
            Field("total_bits", 0, 8, "operand word width"),
            Field("frac_bits", 8, 8),
            Field("acc_bits", 16, 8),
            Field("nearest_even", 24, 1, "1: round to nearest even, 0: truncate"),
            Field("saturate", 25, 1),
            Field("family", 28, 4, "FormatFamily: 0 fixed point, 1 bf16/fp32"),
        ),
    ),
    Register("SCRATCH_WORDS", 0x020, Access.RO, 0, "Scratchpad SRAM size in operand words."),
    Register("GRAD_WORDS", 0x024, Access.RO, 0, "Gradient SRAM size in operand words."),
    Register(
        "HW_QUEUES",
        0x028,
        Access.RO,
        0,
        "Queue geometry (build parameters).",
        (
            Field("ring_entries", 0, 16, "maximum RING_SIZE of each DMA queue"),
            Field("rx_windows", 16, 8),
            Field("cmd_fifo_depth", 24, 8),
        ),
    ),
    Register("TRACE_DEPTH", 0x02C, Access.RO, 0, "Trace buffer capacity in records."),
    Register(
        "LINK_INFO",
        0x038,
        Access.RO,
        0,
        "Transmit link parameters: bytes_per_cycle as set (reset: the build's; see LINK_SET), "
        "header and CRC bytes of the packet format, and whether the build's link datapath "
        "is 8 bytes wide (width8, a build constant).",
        (
            Field("bytes_per_cycle", 0, 8),
            Field("header_bytes", 8, 8),
            Field("crc_bytes", 16, 8),
            Field(
                "width8",
                24,
                1,
                "1: the link datapath is 8 bytes wide (link_width_bytes 8), so LINK_SET may "
                "set 8 bytes/cycle; 0: 4 bytes wide (1, 2 or 4)",
            ),
        ),
    ),
    Register("LINK_LATENCY", 0x03C, Access.RO, 0, "Link latency in cycles, as set (see LINK_SET)."),
    Register("LINK_MAX_PAYLOAD", 0x04C, Access.RO, 0, "Maximum packet payload in bytes, as set."),
    Register(
        "LINK_SET",
        0x094,
        Access.WO,
        0,
        "Set this node's transmit link and NIC at run time, in one write: bytes per cycle, "
        "maximum payload and latency. Refused (ERR_CODE LINK_SET_LOCKED) after the node's "
        "first DOORBELL write, or (LINK_SET_BAD) outside LINK_LIMITS; a refused write "
        "changes nothing. Takes effect in the cycle after the write.",
        (
            Field(
                "bytes_per_cycle",
                0,
                4,
                "1, 2 or 4, or 8 on a build whose LINK_INFO width8 is 1 (LINK_BYTES_PER_CYCLE)",
            ),
            Field("payload_words", 4, 8, "maximum payload in 32-bit words, 1..max_payload_words"),
            Field("latency", 12, 20, "latency in cycles, 0..max_latency"),
        ),
    ),
    Register(
        "LINK_LIMITS",
        0x098,
        Access.RO,
        0,
        "Bounds of LINK_SET fixed at elaboration (build constants).",
        (
            Field("max_payload_words", 0, 8, "largest payload_words"),
            Field("max_latency", 8, 24, "largest latency in cycles"),
        ),
    ),
    Register(
        "CYCLE_LO",
        0x030,
        Access.RO,
        0,
        "Free-running cycle counter, bits 31:0. Reading it latches bits 63:32 into CYCLE_HI.",
    ),
    Register("CYCLE_HI", 0x034, Access.RO, 0, "Cycle counter bits 63:32 latched by CYCLE_LO."),
    Register(
        "IRQ_STATUS",
        0x040,
        Access.W1C,
        0,
        "Interrupt causes (bits of Irq); the IRQ line is (IRQ_STATUS & IRQ_MASK) != 0.",
        tuple(Field(b.name.lower(), b.bit_length() - 1, 1) for b in Irq),
    ),
    Register("IRQ_MASK", 0x044, Access.RW, 0, "Interrupt enables, same bits as IRQ_STATUS."),
    Register("IRQ_PENDING", 0x048, Access.RO, 0, "IRQ_STATUS & IRQ_MASK."),
    Register(
        "ERR_CODE",
        0x050,
        Access.RO,
        0,
        "Most recent error (ErrorCode) and where it happened.",
        (
            Field("code", 0, 8, "ErrorCode"),
            Field("engine", 8, 4, "Engine code"),
            Field("index", 16, 16, "queue/ring slot, RX window or command number"),
        ),
    ),
    Register("ERR_INFO", 0x054, Access.RO, 0, "Offending address or tag of the latest error."),
    Register("ERR_COUNT", 0x058, Access.RO, 0, "Errors recorded since reset."),
]

_COMPUTE = [
    Register(
        "CMD_OPCODE",
        0x060,
        Access.RW,
        0,
        "Staged compute command: opcode and flags.",
        (
            Field("opcode", 0, 8, "Opcode"),
            Field("trans_a", 8, 1, "A is stored K x M (read transposed)"),
            Field("trans_b", 9, 1, "B is stored N x K (read transposed)"),
            Field("irq", 10, 1, "raise Irq.COMPUTE on completion"),
            Field("kind", 16, 8, "Kind recorded in the trace"),
        ),
    ),
    Register("CMD_A", 0x064, Access.RW, 0, "Byte address of operand A."),
    Register("CMD_B", 0x068, Access.RW, 0, "Byte address of operand B (unused by RELU/SCALE)."),
    Register("CMD_C", 0x06C, Access.RW, 0, "Byte address of the result."),
    Register("CMD_M", 0x070, Access.RW, 0, "Rows of the result."),
    Register("CMD_K", 0x074, Access.RW, 0, "GEMM inner dimension (ignored by vector ops)."),
    Register("CMD_N", 0x078, Access.RW, 0, "Columns of the result."),
    Register(
        "CMD_ARG",
        0x07C,
        Access.RW,
        0,
        "GEMM: extra write-back right shift; SCALE: factor; SGD: learning rate "
        "(raw operand-format value, sign-extended from total_bits).",
    ),
    Register("CMD_TAG", 0x080, Access.RW, 0, "Tag recorded in the trace (see tag layout)."),
    Register(
        "CMD_LAUNCH",
        0x084,
        Access.WO,
        0,
        "Doorbell: any write pushes the staged command into the command FIFO.",
    ),
    Register("CMD_FIFO_FREE", 0x088, Access.RO, 0, "Free command FIFO entries."),
    Register(
        "COMPUTE_DONE",
        0x08C,
        Access.RO,
        0,
        "Completion counter: commands retired (including refused ones) since reset.",
    ),
    Register(
        "HOST_TAG",
        0x090,
        Access.RW,
        0,
        "Tag recorded with host bulk-port transfers (kind LOAD or DUMP).",
    ),
]

DMA_QUEUE_STRIDE = 0x40
DMA_QUEUE_BASE = 0x100
_DMA_QUEUE_TEMPLATE = [
    ("RING_BASE", 0x00, Access.RW, "Byte address of the ring in ring memory (32-byte aligned)."),
    ("RING_SIZE", 0x04, Access.RW, "Ring entries (1 .. HW_QUEUES.ring_entries)."),
    (
        "HEAD",
        0x08,
        Access.RO,
        "Consumer index: descriptors taken by the DMA engine (free-running).",
    ),
    ("TAIL", 0x0C, Access.RO, "Producer index last written through DOORBELL (free-running)."),
    (
        "DOORBELL",
        0x10,
        Access.WO,
        "Write the new TAIL; the engine fetches slots HEAD..TAIL-1. A refused doorbell "
        "(DOORBELL_CHECKS, below) leaves TAIL unchanged and latches its ErrorCode.",
    ),
    ("WIN_BASE", 0x14, Access.RW, "Source window base: descriptors may read only inside it."),
    ("WIN_LEN", 0x18, Access.RW, "Source window length in bytes."),
    ("DONE", 0x1C, Access.RO, "Completion counter: descriptors finished (ok or refused)."),
    ("ERRORS", 0x20, Access.RO, "Descriptors refused since reset."),
]

RX_BASE = 0x200
_RX = [
    Register("RX_DONE_LO", 0x200, Access.W1C, 0, "Windows 0..31 that reached WIN_EXPECT."),
    Register("RX_DONE_HI", 0x204, Access.W1C, 0, "Windows 32..63 that reached WIN_EXPECT."),
    Register("RX_DROPS", 0x208, Access.RO, 0, "Packets dropped by the window checks."),
    Register("RX_BYTES", 0x20C, Access.RO, 0, "Payload bytes applied since reset."),
]

_TRACE = [
    Register("TRACE_COUNT", 0x300, Access.RO, 0, "Records waiting (TRACE_HEAD - TRACE_TAIL)."),
    Register(
        "TRACE_DATA",
        0x304,
        Access.RO,
        TRACE_EMPTY_WORD,
        "Pop port: successive reads return the oldest record's 4 words; "
        "the 4th read advances TRACE_TAIL. A read while TRACE_COUNT is 0 returns "
        "TRACE_EMPTY_WORD (0xFFFFFFFF), pops nothing and latches ErrorCode TRACE_EMPTY "
        "(ERR_CODE, ERR_COUNT, Irq.ERROR); read TRACE_COUNT first.",
    ),
    Register("TRACE_HEAD", 0x308, Access.RO, 0, "Records written since reset (free-running)."),
    Register(
        "TRACE_TAIL",
        0x30C,
        Access.RW,
        0,
        "Records consumed; the host may advance it after a bulk dump of trace memory.",
    ),
    Register("TRACE_DROPS", 0x310, Access.RO, 0, "Records lost because the buffer was full."),
]

_PERF = [
    Register("PERF_GEMM_CYCLES", 0x340, Access.RO, 0, "Cycles the systolic array was busy."),
    Register("PERF_VECTOR_CYCLES", 0x344, Access.RO, 0, "Cycles the vector unit was busy."),
    Register("PERF_TX_CYCLES", 0x348, Access.RO, 0, "Cycles the transmitter was busy."),
    Register("PERF_TX_BYTES", 0x34C, Access.RO, 0, "Payload bytes transmitted."),
    Register("PERF_TX_PACKETS", 0x350, Access.RO, 0, "Packets transmitted."),
    Register("PERF_RX_PACKETS", 0x354, Access.RO, 0, "Packets received and applied."),
]

RX_WINDOW_BASE = 0x1000
RX_WINDOW_STRIDE = 0x20
_RX_WINDOW_TEMPLATE = [
    (
        "CTRL",
        0x00,
        Access.RW,
        "bit0 enable; writing 1 to bit0 also clears RECEIVED and the window's RX_DONE bit.",
    ),
    ("DST", 0x04, Access.RW, "Byte address where received payload lands."),
    (
        "SRC",
        0x08,
        Access.RW,
        "Byte address of the local operand of a reduce-add: dst[i] = sat(src[i] + payload[i]).",
    ),
    ("LEN", 0x0C, Access.RW, "Window length in bytes; packets must fall in [DST, DST+LEN)."),
    (
        "TAG",
        0x10,
        Access.RW,
        "Tag a packet must carry (layer, chunk, step). A packet of the same layer and chunk "
        "whose step is TAG's step + 1 (mod 4096) is held, not refused, until TAG is written "
        "to its tag (receiver not ready).",
    ),
    (
        "EXPECT",
        0x14,
        Access.RW,
        "Byte threshold; writing arms it: RX_DONE bit and Irq.RX are set once RECEIVED >= EXPECT.",
    ),
    ("RECEIVED", 0x18, Access.RO, "Payload bytes applied to this window."),
]


def dma_reg_name(queue: int, name: str) -> str:
    return f"DMA{queue}_{name}"


def rx_window_reg_name(window: int, name: str) -> str:
    return f"WIN{window}_{name}"


def _build() -> list[Register]:
    regs = list(_GLOBAL) + list(_COMPUTE)
    for q in range(DMA_QUEUES):
        for name, off, acc, doc in _DMA_QUEUE_TEMPLATE:
            regs.append(
                Register(
                    dma_reg_name(q, name),
                    DMA_QUEUE_BASE + q * DMA_QUEUE_STRIDE + off,
                    acc,
                    0,
                    f"Queue {q} ({DMA_QUEUE_NAMES[q]}): {doc}",
                )
            )
    regs += _RX + _TRACE + _PERF
    for w in range(MAX_RX_WINDOWS):
        for name, off, acc, doc in _RX_WINDOW_TEMPLATE:
            regs.append(
                Register(
                    rx_window_reg_name(w, name),
                    RX_WINDOW_BASE + w * RX_WINDOW_STRIDE + off,
                    acc,
                    0,
                    f"RX window {w}: {doc}",
                )
            )
    offsets = [r.offset for r in regs]
    assert len(set(offsets)) == len(offsets), "register offsets overlap"
    return regs


REGISTERS: tuple[Register, ...] = tuple(_build())
BY_NAME: dict[str, Register] = {r.name: r for r in REGISTERS}
BY_OFFSET: dict[int, Register] = {r.offset: r for r in REGISTERS}


def reg(name: str) -> Register:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"no register named {name!r}") from None


def offset(name: str) -> int:
    return reg(name).offset


def dma_reg(queue: int, name: str) -> int:
    return offset(dma_reg_name(queue, name))


def rx_window_reg(window: int, name: str) -> int:
    return offset(rx_window_reg_name(window, name))


@dataclass(frozen=True)
class RegisterArray:
    """A block of registers repeated per DMA queue or per RX window.

    Register ``field`` of instance ``index`` sits at ``base + index * stride +``
    the field's offset in :attr:`fields` (``(name, offset, access)`` triples).
    """

    base: int
    stride: int
    count: int
    fields: tuple[tuple[str, int, Access], ...]

    def decode(self, offset: int) -> tuple[int, str] | None:
        """``(index, field name)`` of the register at ``offset``, or None outside the array."""
        index, rel = divmod(offset - self.base, self.stride)
        if not 0 <= index < self.count:
            return None
        for name, field_offset, _ in self.fields:
            if field_offset == rel:
                return index, name
        return None


DMA_QUEUE_ARRAY = RegisterArray(
    DMA_QUEUE_BASE, DMA_QUEUE_STRIDE, DMA_QUEUES, tuple(t[:3] for t in _DMA_QUEUE_TEMPLATE)
)
RX_WINDOW_ARRAY = RegisterArray(
    RX_WINDOW_BASE, RX_WINDOW_STRIDE, MAX_RX_WINDOWS, tuple(t[:3] for t in _RX_WINDOW_TEMPLATE)
)


@dataclass(frozen=True)
class DecodedRegister:
    """A register and, for a DMA-queue or RX-window register, which instance and field it is."""

    register: Register
    array: RegisterArray | None = None
    index: int | None = None  #: queue or window number
    field: str | None = None  #: name within the array, e.g. "HEAD" of DMA1_HEAD


def decode_register(offset: int) -> DecodedRegister | None:
    """What the CSR port finds at byte ``offset`` (None: unmapped), decoded by offset
    arithmetic for the per-queue and per-window registers."""
    r = BY_OFFSET.get(offset)
    if r is None:
        return None
    for array in (DMA_QUEUE_ARRAY, RX_WINDOW_ARRAY):
        hit = array.decode(offset)
        if hit is not None:
            return DecodedRegister(r, array, *hit)
    return DecodedRegister(r)


def command_registers(
    opcode: int,
    a: int,
    b: int,
    c: int,
    m: int,
    k: int,
    n: int,
    *,
    arg: int = 0,
    tag: int = 0,
    kind: int = 0,
    trans_a: bool = False,
    trans_b: bool = False,
    irq: bool = True,
) -> tuple[tuple[str, int], ...]:
    """The staged-command registers of one compute command and their values, in the order a
    host writes them before ``CMD_LAUNCH`` (``CMD_OPCODE`` first; ``CMD_ARG`` as 32 bits)."""
    word = reg("CMD_OPCODE").pack(
        opcode=int(opcode), trans_a=int(trans_a), trans_b=int(trans_b), irq=int(irq), kind=int(kind)
    )
    return (
        ("CMD_OPCODE", word),
        ("CMD_A", a),
        ("CMD_B", b),
        ("CMD_C", c),
        ("CMD_M", m),
        ("CMD_K", k),
        ("CMD_N", n),
        ("CMD_ARG", arg & 0xFFFF_FFFF),
        ("CMD_TAG", tag),
    )


# --- DMA descriptor ------------------------------------------------------------------

DESCRIPTOR_WORDS = 8
DESCRIPTOR_BYTES = DESCRIPTOR_WORDS * 4


class DescFlag(enum.IntFlag):
    REDUCE_ADD = 1 << 0  #: receiver computes dst = sat(window src + payload)
    IRQ = 1 << 1  #: raise the queue's Irq bit on completion
    FENCE = 1 << 2  #: wait until COMPUTE_DONE >= FENCE_COUNT before sending
    #: bf16 gradient exchange (``docs/numerics.md``): send the fp32 source elements as bf16
    #: (round to nearest even), two per payload word; LENGTH and the addresses still count
    #: fp32 bytes (LENGTH a multiple of BF16_LENGTH_ALIGN_BYTES). Only on a bf16 device.
    BF16 = 1 << 3


#: With ``DescFlag.BF16`` a descriptor's LENGTH is a whole number of payload words of two
#: bf16 elements: a multiple of two fp32 elements (``MISALIGNED`` otherwise).
BF16_LENGTH_ALIGN_BYTES = 8


DESCRIPTOR_LAYOUT = (
    # (word, name, fields or None, doc)
    (
        0,
        "CONTROL",
        (
            Field("version", 0, 8, "DESCRIPTOR_VERSION"),
            Field("flags", 8, 8, "DescFlag"),
            Field("peer", 16, 8, "destination node (must equal TX_PEER)"),
            Field("window", 24, 7, "receiver's RX window index"),
            Field("reserved", 31, 1, "0 (a packet's H0 bit 7 is its bf16 flag)"),
        ),
        "Version, flags, destination.",
    ),
    (1, "SRC_ADDR", None, "Byte address of the payload in this node's memory."),
    (2, "LENGTH", None, "Payload bytes (non-zero multiple of DMA_ALIGN_BYTES)."),
    (3, "REMOTE_ADDR", None, "Byte address of the payload in the peer's memory."),
    (4, "TAG", None, "Tag (layer, chunk, step) carried in every packet header."),
    (5, "FENCE_COUNT", None, "With FENCE: COMPUTE_DONE value to wait for."),
    (
        6,
        "STATUS",
        (Field("code", 0, 8, "ErrorCode"), Field("done", 31, 1, "set by the engine")),
        "Written back by the engine on completion.",
    ),
    (7, "DONE_CYCLE", None, "Written back: cycle counter bits 31:0 at completion."),
)


@dataclass(frozen=True)
class Descriptor:
    """One DMA descriptor (host view).  ``status``/``done_cycle`` are written by hardware."""

    src_addr: int
    length: int
    peer: int
    remote_addr: int
    window: int
    tag: int
    flags: int = 0
    fence_count: int = 0
    version: int = DESCRIPTOR_VERSION
    status: int = 0
    done_cycle: int = 0

    def encode(self) -> list[int]:
        ctrl = DESCRIPTOR_LAYOUT[0][2]
        w0 = (
            ctrl[0].put(self.version)
            | ctrl[1].put(int(self.flags))
            | ctrl[2].put(self.peer)
            | ctrl[3].put(self.window)
        )
        words = [
            w0,
            self.src_addr,
            self.length,
            self.remote_addr,
            self.tag,
            self.fence_count,
            self.status,
            self.done_cycle,
        ]
        for w in words:
            if not 0 <= w < (1 << 32):
                raise ValueError(f"descriptor word out of 32-bit range: {w!r}")
        return words

    def to_bytes(self) -> bytes:
        return struct.pack("<8I", *self.encode())

    @classmethod
    def decode(cls, words: list[int] | tuple[int, ...]) -> Descriptor:
        if len(words) != DESCRIPTOR_WORDS:
            raise ValueError(f"a descriptor is {DESCRIPTOR_WORDS} words, not {len(words)}")
        ctrl = DESCRIPTOR_LAYOUT[0][2]
        w = [int(x) & 0xFFFF_FFFF for x in words]
        return cls(
            version=ctrl[0].get(w[0]),
            flags=ctrl[1].get(w[0]),
            peer=ctrl[2].get(w[0]),
            window=ctrl[3].get(w[0]),
            src_addr=w[1],
            length=w[2],
            remote_addr=w[3],
            tag=w[4],
            fence_count=w[5],
            status=w[6],
            done_cycle=w[7],
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Descriptor:
        return cls.decode(struct.unpack("<8I", data))

    @property
    def error_code(self) -> ErrorCode:
        return ErrorCode(self.status & 0xFF)

    @property
    def done(self) -> bool:
        return bool(self.status >> 31)


def descriptor_status(code: ErrorCode) -> int:
    """Status word the engine writes back for a completed descriptor."""
    return (1 << 31) | int(code)


# --- trace record ------------------------------------------------------------------

TRACE_RECORD_WORDS = 4
TRACE_RECORD_LAYOUT = (
    (0, "CYCLE_LO", None, "cycle counter bits 31:0"),
    (
        1,
        "INFO",
        (
            Field("cycle_hi", 0, 16, "cycle counter bits 47:32"),
            Field("engine", 16, 4, "Engine"),
            Field("event", 20, 4, "TraceEvent"),
            Field("kind", 24, 8, "Kind"),
        ),
        "",
    ),
    (2, "TAG", None, "tag (layer, chunk, step)"),
    (3, "AUX", None, "bytes moved (DMA/NIC) or elements/MACs (compute), or an ErrorCode"),
)


@dataclass(frozen=True)
class TraceRecord:
    cycle: int
    engine: int
    event: int
    kind: int
    tag: int
    aux: int = 0

    def encode(self) -> list[int]:
        info = TRACE_RECORD_LAYOUT[1][2]
        return [
            self.cycle & 0xFFFF_FFFF,
            info[0].put((self.cycle >> 32) & 0xFFFF)
            | info[1].put(self.engine)
            | info[2].put(self.event)
            | info[3].put(self.kind),
            self.tag & 0xFFFF_FFFF,
            self.aux & 0xFFFF_FFFF,
        ]

    @classmethod
    def decode(cls, words: list[int] | tuple[int, ...]) -> TraceRecord:
        info = TRACE_RECORD_LAYOUT[1][2]
        w = [int(x) & 0xFFFF_FFFF for x in words]
        return cls(
            cycle=w[0] | (info[0].get(w[1]) << 32),
            engine=info[1].get(w[1]),
            event=info[2].get(w[1]),
            kind=info[3].get(w[1]),
            tag=w[2],
            aux=w[3],
        )


def encode_trace_records(records: list[TraceRecord]) -> np.ndarray:
    """The trace-RAM words of many records at once: an ``(n, 4)`` int64 array whose
    rows equal ``TraceRecord.encode`` (the golden model's vectorised trace buffer)."""
    info_fields = {f.name: f for f in TRACE_RECORD_LAYOUT[1][2]}
    cycle = np.array([r.cycle for r in records], dtype=np.int64)
    values = {
        "cycle_hi": cycle >> 32,
        "engine": np.array([r.engine for r in records], dtype=np.int64),
        "event": np.array([r.event for r in records], dtype=np.int64),
        "kind": np.array([r.kind for r in records], dtype=np.int64),
    }
    info = np.zeros_like(cycle)
    for name, f in info_fields.items():
        info |= (values[name] & ((1 << f.width) - 1)) << f.lsb
    return np.stack(
        [
            cycle & 0xFFFF_FFFF,
            info,
            np.array([r.tag for r in records], dtype=np.int64) & 0xFFFF_FFFF,
            np.array([r.aux for r in records], dtype=np.int64) & 0xFFFF_FFFF,
        ],
        axis=1,
    )


#: Which records each engine writes into the trace buffer, and when.
TRACE_SOURCES = (
    (
        "compute",
        "START in the cycle a GEMM command is taken, END in its completion cycle; "
        "kind/tag from CMD_OPCODE.kind/CMD_TAG, aux = M*K*N; a refused command writes "
        "only an ERROR record",
    ),
    ("vector", "as compute, for RELU/RELU_BWD/SCALE/SGD; aux = elements"),
    (
        "dma.hi / dma.lo",
        "START at the arbiter's grant, END at completion (status write-back); kind SEND, "
        "tag from the descriptor, aux = length (ErrorCode for a refused descriptor)",
    ),
    (
        "nic.tx",
        "START when the chunk's first packet starts serialising, END when the last "
        "packet's last byte left; aux = chunk bytes",
    ),
    (
        "nic.rx",
        "END only, one per packet, in the cycle its effects are visible; aux = payload "
        "bytes (0 if dropped)",
    ),
    (
        "host",
        "START/END of each bulk-port transfer; kind LOAD/DUMP (SRAMs), RING (descriptor "
        "memory) or TRACE (trace memory), tag = HOST_TAG, aux = bytes",
    ),
    (
        "any",
        "ERROR record when an error is latched: tag = ERR_INFO, aux = ErrorCode (except "
        "TRACE_EMPTY, which would fill the buffer it found empty)",
    ),
)


# --- documentation -------------------------------------------------------------------


def _fields_md(fields: tuple[Field, ...] | None) -> str:
    if not fields:
        return ""
    parts = []
    for f in fields:
        bits = f"{f.lsb}" if f.width == 1 else f"{f.lsb + f.width - 1}:{f.lsb}"
        parts.append(f"[{bits}] {f.name}" + (f" ({f.doc})" if f.doc else ""))
    return "; ".join(parts)


def render_markdown() -> str:
    """The register/descriptor reference, as committed in ``docs/registers.md``."""
    out = [
        "# gradsync register map and descriptor layout",
        "",
        "<!-- Generated by `python -m gradsync.spec.regmap > docs/registers.md`; do not edit. -->",
        "",
        f"Register map version 0x{REGMAP_VERSION:08X}, descriptor version "
        f"{DESCRIPTOR_VERSION}. All registers are 32 bits at byte offsets on the CSR "
        "port (AXI4-Lite). Access: RO read-only (writes ignored), RW read/write, W1C "
        "write one to clear, WO write strobe (reads return 0). Unmapped offsets read 0 "
        "and ignore writes. Everything is little-endian.",
        "",
        "## Device memory map (bulk port and DMA addresses)",
        "",
        "| Region | Base | Word | Contents |",
        "|---|---|---|---|",
        f"| scratchpad | 0x{SCRATCH_BASE:08X} | operand | weights, activations, output gradients |",
        f"| gradient | 0x{GRAD_BASE:08X} | operand | local dW, reduced gradients |",
        f"| ring memory | 0x{RING_MEM_BASE:08X} | 32 bit | DMA descriptor rings |",
        f"| trace memory | 0x{TRACE_MEM_BASE:08X} | 32 bit | trace records (read-only) |",
        "",
        "Addresses are byte addresses; operand words are `total_bits/8` bytes. "
        f"DMA lengths and addresses must be multiples of {DMA_ALIGN_BYTES} bytes. "
        "In the bf16 family (HW_FORMAT.family = 1) both SRAMs hold 16-bit words and the "
        "bank decides an element's format: a scratchpad element is one bf16 word (2 "
        "bytes), a gradient-SRAM element one fp32 value in two words, low half at the "
        "lower address (4 bytes, 4-byte aligned); see docs/numerics.md.",
        "",
        "## Registers",
        "",
        "| Offset | Name | Access | Reset | Fields | Description |",
        "|---|---|---|---|---|---|",
    ]
    for r in REGISTERS:
        if r.name.startswith("WIN") and not r.name.startswith("WIN0_"):
            continue
        name = r.name.replace("WIN0_", "WINn_")
        off = f"0x{r.offset:04X}"
        if r.name.startswith("WIN0_"):
            off = f"0x{r.offset:04X} + n*0x{RX_WINDOW_STRIDE:X}"
        out.append(
            f"| {off} | {name} | {r.access.value} | 0x{r.reset:X} | {_fields_md(r.fields)} "
            f"| {r.doc.replace('RX window 0: ', '')} |"
        )
    out += [
        "",
        f"RX windows n = 0 .. {MAX_RX_WINDOWS - 1} (populated: HW_QUEUES.rx_windows).",
        "",
        "## Enumerations",
        "",
    ]
    for enum_cls, title in (
        (Irq, "Irq (IRQ_STATUS bits)"),
        (FormatFamily, "FormatFamily (HW_FORMAT.family)"),
        (Opcode, "Opcode"),
        (ErrorCode, "ErrorCode"),
        (Engine, "Engine (trace)"),
        (TraceEvent, "TraceEvent"),
        (Kind, "Kind (trace)"),
        (DescFlag, "DescFlag (descriptor flags)"),
    ):
        out.append(f"**{title}**: " + ", ".join(f"{m.name}={int(m)}" for m in enum_cls))
        out.append("")
    out += ["| ErrorCode | Meaning |", "|---|---|"]
    for code, meaning in ERROR_MEANINGS.items():
        out.append(f"| {code.name}={int(code)} | {meaning} |")
    out += [
        "",
        "A DMAq_DOORBELL write is checked in this order, the first failing check "
        "reported: " + ", ".join(c.name for c in DOORBELL_CHECKS) + ". A refused "
        "doorbell leaves TAIL unchanged, latches ERR_CODE (engine dma.hi/dma.lo, index "
        "= queue) and raises Irq.ERROR.",
        "",
        f"Tag layout (32 bit): {_fields_md(TAG_FIELDS)}.",
        "",
        f"## DMA descriptor (version {DESCRIPTOR_VERSION}, {DESCRIPTOR_BYTES} bytes)",
        "",
        "| Word | Name | Fields | Description |",
        "|---|---|---|---|",
    ]
    for word, name, fields, doc in DESCRIPTOR_LAYOUT:
        out.append(f"| {word} | {name} | {_fields_md(fields)} | {doc} |")
    out += [
        "",
        "A descriptor is validated before any byte moves, in this order: version, "
        "zero length, alignment of length/source/remote address, source range inside "
        "the queue window, peer == TX_PEER. A refused descriptor is completed with its "
        "ErrorCode in STATUS, counts in DMAq_DONE and DMAq_ERRORS, latches ERR_CODE and "
        "raises Irq.ERROR; nothing is sent.",
        "",
        f"## Trace record ({TRACE_RECORD_WORDS} words)",
        "",
        "| Word | Name | Fields | Description |",
        "|---|---|---|---|",
    ]
    for word, name, fields, doc in TRACE_RECORD_LAYOUT:
        out.append(f"| {word} | {name} | {_fields_md(fields)} | {doc} |")
    out += ["", "| Engine | Records |", "|---|---|"]
    for engine, doc in TRACE_SOURCES:
        out.append(f"| {engine} | {doc} |")
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render_markdown(), end="")
