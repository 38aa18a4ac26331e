"""Compute sequencer of a modelled node: command FIFO, GEMM on the systolic array, vector ops.

The golden twin of ``hw/sequencer.py`` with ``hw/array.py`` and ``hw/vector.py``
(``DESIGN.md``, "One node").  The host stages a command in the ``CMD_*``
registers and writes ``CMD_LAUNCH``; commands run in order, one at a time.
Operands are read when a command starts, the result lands in its completion
cycle (:mod:`gradsync.spec.timing`), computed by :mod:`model.numerics` (fixed
point) or :mod:`model.fp` (bf16: a scratchpad element is a bf16 word, a
gradient-SRAM element an fp32 value in two words, low half first); then
``COMPUTE_DONE`` counts it (refused commands too) and the DMA engine re-checks
a descriptor waiting on its fence (:attr:`ComputeEngine.on_retire`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gradsync.model import fp
from gradsync.model import numerics as nx
from gradsync.model.engine import Engine, NodeParts
from gradsync.spec import regmap as rm
from gradsync.spec import timing as tm
from gradsync.spec.formats import BFloat16Format

_OPCODE = rm.reg("CMD_OPCODE")
#: The staged command registers, in the order of :class:`_Command`'s fields.
_STAGED = tuple(
    rm.offset(f"CMD_{n}") for n in ("OPCODE", "A", "B", "C", "M", "K", "N", "ARG", "TAG")
)


@dataclass
class _Command:
    word: int
    a: int
    b: int
    c: int
    m: int
    k: int
    n: int
    arg: int
    tag: int
    index: int

    @property
    def opcode(self) -> int:
        return _OPCODE.field("opcode").get(self.word)

    def flag(self, name: str) -> int:
        return _OPCODE.field(name).get(self.word)


class ComputeEngine(Engine):
    """In-order command FIFO feeding the systolic array and the vector unit.

    Attributes
    ----------
    fifo, busy:
        Commands waiting, and whether one is running.
    launched, done:
        Commands launched (``CMD_LAUNCH`` writes) and retired (``COMPUTE_DONE``).
    perf:
        Busy cycles of the array (``gemm``) and the vector unit (``vector``).
    on_retire:
        Called after every retired command (the DMA engine's fence check).
    """

    def __init__(self, parts: NodeParts) -> None:
        super().__init__(parts)
        csr = self.csr
        self.fifo: deque[_Command] = deque()
        self.busy = False
        self.launched = 0
        self.done = 0
        self.perf = {"gemm": 0, "vector": 0}
        self.on_retire: Callable[[], None] = lambda: None
        csr.bind("CMD_LAUNCH", write=lambda _value: self._launch())
        csr.bind("CMD_FIFO_FREE", read=lambda: self.hw.cmd_fifo_depth - len(self.fifo))
        csr.bind("COMPUTE_DONE", read=lambda: self.done)
        csr.bind("PERF_GEMM_CYCLES", read=lambda: self.perf["gemm"])
        csr.bind("PERF_VECTOR_CYCLES", read=lambda: self.perf["vector"])

    def outstanding(self) -> list[str]:
        if self.busy or self.fifo:
            return [f"compute busy with {len(self.fifo) + 1} command(s)"]
        return []

    def _launch(self) -> None:
        cmd = _Command(*(self.csr.values[off] for off in _STAGED), index=self.launched)
        self.launched += 1
        if len(self.fifo) >= self.hw.cmd_fifo_depth:
            self.csr.error(rm.ErrorCode.CMD_FIFO_FULL, rm.Engine.COMPUTE, cmd.index, cmd.word)
            return
        self.fifo.append(cmd)
        if not self.busy:
            self._start()

    @property
    def _float(self) -> bool:
        return isinstance(self.fmt, BFloat16Format)

    def _element_words(self, addr: int) -> int:
        """SRAM words per element at byte ``addr``: 2 for bf16's fp32 gradient SRAM, else 1."""
        in_grad = rm.GRAD_BASE <= addr < rm.GRAD_BASE + rm.REGION_SPAN
        return 2 if self._float and in_grad else 1

    def _validate(self, cmd: _Command) -> tuple[rm.ErrorCode, tuple]:
        try:
            op = rm.Opcode(cmd.opcode)
        except ValueError:
            return rm.ErrorCode.CMD_BAD_OPCODE, ()
        if op is rm.Opcode.NOP:
            return rm.ErrorCode.OK, ()
        if op is rm.Opcode.GEMM:
            if min(cmd.m, cmd.k, cmd.n) < 1:
                return rm.ErrorCode.CMD_ZERO_DIM, ()
            if not self._float and cmd.k > self.fmt.max_exact_k:
                return rm.ErrorCode.CMD_K_TOO_LARGE, ()
            sizes = (cmd.m * cmd.k, cmd.k * cmd.n, cmd.m * cmd.n)
        else:
            if min(cmd.m, cmd.n) < 1:
                return rm.ErrorCode.CMD_ZERO_DIM, ()
            n = cmd.m * cmd.n
            sizes = (n, n if op in (rm.Opcode.RELU_BWD, rm.Opcode.SGD) else 0, n)
        regions = []
        for i, (addr, size) in enumerate(zip((cmd.a, cmd.b, cmd.c), sizes, strict=True)):
            if size == 0:
                regions.append(None)
                continue
            per = self._element_words(addr)
            # bf16: fp32 elements are 4-byte aligned; GEMM operands must be bf16 (scratchpad)
            misplaced = self._float and per == 2 and op is rm.Opcode.GEMM and i < 2
            reg = self.srams.region(addr, size * per)
            if reg is None or addr % (self.fmt.word_bytes * per) or misplaced:
                return rm.ErrorCode.CMD_OUT_OF_BOUNDS, ()
            regions.append((reg[0], reg[1], size * per))
        return rm.ErrorCode.OK, tuple(regions)

    def _start(self) -> None:
        cmd = self.fifo.popleft()
        self.busy = True
        code, regions = self._validate(cmd)
        kind = _OPCODE.field("kind").get(cmd.word)
        if code is not rm.ErrorCode.OK or rm.Opcode(cmd.opcode) is rm.Opcode.NOP:
            self.sim.after(tm.refused_command_cycles(), lambda: self._retire(cmd, code))
            return
        op = rm.Opcode(cmd.opcode)

        def read(i: int) -> np.ndarray:
            mem, idx, size = regions[i]
            return mem[idx : idx + size].copy()

        # operands are read at launch; the result lands at completion
        if self._float:
            result, cycles, engine, aux = self._run_float(cmd, op, read)
        elif op is rm.Opcode.GEMM:
            a = read(0).reshape((cmd.k, cmd.m) if cmd.flag("trans_a") else (cmd.m, cmd.k))
            b = read(1).reshape((cmd.n, cmd.k) if cmd.flag("trans_b") else (cmd.k, cmd.n))
            shift = int(nx.wrap(cmd.arg, 32))
            result = nx.gemm(
                a,
                b,
                self.fmt,
                trans_a=bool(cmd.flag("trans_a")),
                trans_b=bool(cmd.flag("trans_b")),
                extra_shift=max(shift, 0),
            ).reshape(-1)
            cycles = tm.gemm_cycles(cmd.m, cmd.k, cmd.n, self.hw)
            engine, aux = rm.Engine.COMPUTE, cmd.m * cmd.k * cmd.n
        else:
            arg = int(nx.wrap(cmd.arg, self.fmt.total_bits))
            x = read(0)
            if op is rm.Opcode.RELU:
                result = nx.relu(x)
            elif op is rm.Opcode.RELU_BWD:
                result = nx.relu_backward(x, read(1))
            elif op is rm.Opcode.SCALE:
                result = nx.scale(x, arg, self.fmt)
            else:
                result = nx.sgd_update(x, read(1), arg, self.fmt)
            n = cmd.m * cmd.n
            cycles = tm.vector_cycles(rm.VECTOR_OPCODES[op], n, self.hw)
            engine, aux = rm.Engine.VECTOR, n
        self.perf["gemm" if engine is rm.Engine.COMPUTE else "vector"] += cycles
        self.trace.record(engine, rm.TraceEvent.START, kind, cmd.tag, aux)

        def done() -> None:
            mem, idx, size = regions[2]
            mem[idx : idx + size] = result
            self.trace.record(engine, rm.TraceEvent.END, kind, cmd.tag, aux)
            self._retire(cmd, code)

        self.sim.after(cycles, done)

    def _run_float(self, cmd: _Command, op: rm.Opcode, read: Callable[[int], np.ndarray]):
        """bf16 format: (SRAM words of the result, cycles, trace engine, trace aux).

        GEMM operands are bf16 words; vector operands are widened to fp32 (a bf16
        element exactly, an fp32 element as its two words); the fp32 result is
        rounded to bf16 for a scratchpad destination, split in two words for the
        gradient SRAM.
        """

        def fp32(i: int, addr: int) -> np.ndarray:
            words = read(i)
            if self._element_words(addr) == 2:
                return BFloat16Format.join_fp32(words)
            return fp.bf16_to_fp32(words)

        if op is rm.Opcode.GEMM:
            a = read(0).reshape((cmd.k, cmd.m) if cmd.flag("trans_a") else (cmd.m, cmd.k))
            b = read(1).reshape((cmd.n, cmd.k) if cmd.flag("trans_b") else (cmd.k, cmd.n))
            out = fp.gemm_bf16(
                a, b, trans_a=bool(cmd.flag("trans_a")), trans_b=bool(cmd.flag("trans_b"))
            ).reshape(-1)
            cycles = tm.gemm_cycles(cmd.m, cmd.k, cmd.n, self.hw, self.fmt)
            engine, aux = rm.Engine.COMPUTE, cmd.m * cmd.k * cmd.n
        else:
            x = fp32(0, cmd.a)
            if op is rm.Opcode.RELU:
                out = fp.relu_fp32(x)
            elif op is rm.Opcode.RELU_BWD:
                out = fp.relu_backward_fp32(x, fp32(1, cmd.b))
            elif op is rm.Opcode.SCALE:
                out = fp.scale_fp32(x, cmd.arg)
            else:
                out = fp.sgd_fp32(x, fp32(1, cmd.b), cmd.arg)
            n = cmd.m * cmd.n
            cycles = tm.vector_cycles(rm.VECTOR_OPCODES[op], n, self.hw)
            engine, aux = rm.Engine.VECTOR, n
        if self._element_words(cmd.c) == 2:
            words = BFloat16Format.split_fp32(out)
        else:
            words = fp.fp32_to_bf16(out).astype(np.int64)
        return words, cycles, engine, aux

    def _retire(self, cmd: _Command, code: rm.ErrorCode) -> None:
        self.done += 1
        if code is not rm.ErrorCode.OK:
            self.csr.error(code, rm.Engine.COMPUTE, cmd.index, cmd.tag)
        if cmd.flag("irq"):
            self.csr.raise_irq(rm.Irq.COMPUTE)
        self.busy = False
        self.on_retire()
        if self.fifo:
            self._start()
