"""CSR block of a modelled node: register dispatch, cycle counter, interrupts, error latch.

The golden twin of ``hw/csr.py`` (``DESIGN.md``, "One node", "Observability").
Offsets, access types and reset values come from
``gradsync.spec.regmap.REGISTERS``; nothing is listed by hand.  Every register
behaves by its access type:

* ``RO``: reads its value, writes are ignored;
* ``RW``: reads back what was written;
* ``W1C``: writing ones clears those bits;
* ``WO``: a write is a strobe to an engine, reads return 0;
* unmapped offsets read 0 and ignore writes.

A register's value is stored here (build constants, reset values, staged
``RW`` values such as ``CMD_*``), unless the engine whose state it is binds it
(:meth:`CsrBlock.bind`); the per-queue ``DMAq_*`` and per-window ``WINn_*``
registers are bound as arrays (:meth:`CsrBlock.bind_array`), decoded by offset
with :func:`gradsync.spec.regmap.decode_register`.  The trace buffer
(:mod:`model.trace`) lives inside this block, as in the RTL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import make_dataclass
from functools import partial

from gradsync.model.events import Simulator
from gradsync.model.trace import TraceBuffer
from gradsync.spec import regmap as rm
from gradsync.spec.hardware import HardwareConfig

M32 = 0xFFFF_FFFF
_CONTROL = rm.offset("CONTROL")
_ERR_CODE = rm.reg("ERR_CODE")


def register_state(name: str, array: rm.RegisterArray, *extra: tuple) -> type:
    """A dataclass holding one queue's or window's registers: an ``int`` attribute (reset 0)
    per readable register of ``array``, named as the register in lower case (``ring_base``
    for ``DMAq_RING_BASE``), then the ``extra`` fields (``make_dataclass`` triples)."""
    fields = [(f.lower(), int, 0) for f, _, access in array.fields if access is not rm.Access.WO]
    return make_dataclass(name, fields + list(extra))


class CsrBlock:
    """Register file of one node, generated from ``gradsync.spec.regmap.REGISTERS``.

    Parameters
    ----------
    sim:
        The event kernel (the cycle counter is its clock).
    hw:
        Hardware configuration (trace buffer depth).
    constants:
        Values of the read-only build-constant registers by name
        (``gradsync.spec.hardware.constant_registers``).

    Attributes
    ----------
    values:
        Stored register values by offset (those no engine binds).
    irq_status, irq_mask, err_count:
        Interrupt causes, enables and the number of errors latched.
    trace:
        The trace buffer (``TRACE_*`` registers, trace memory).
    on_irq_change:
        Called after an interrupt cause is raised or ``IRQ_MASK`` is written
        (the host port wakes its ``wait_irq`` callers).
    """

    def __init__(self, sim: Simulator, hw: HardwareConfig, constants: dict[str, int]) -> None:
        self.sim = sim
        self.values: dict[int, int] = {r.offset: r.reset for r in rm.REGISTERS}
        for name, value in constants.items():
            self.values[rm.offset(name)] = value & M32
        self._readers: dict[int, Callable[[], int]] = {}
        self._writers: dict[int, Callable[[int], None]] = {}
        self.irq_status = 0
        self.irq_mask = 0
        self.err_count = 0
        self.on_irq_change: Callable[[], None] = lambda: None
        self._cycle_hi_latch = 0
        self._read_cycle = 0  # the cycle whose state the current read samples
        self.bind("CYCLE_LO", read=self._read_cycle_lo)
        self.bind("CYCLE_HI", read=lambda: self._cycle_hi_latch)
        self.bind("IRQ_STATUS", read=lambda: self.irq_status, write=self._store_irq_status)
        self.bind("IRQ_MASK", read=lambda: self.irq_mask, write=self._store_irq_mask)
        self.bind("IRQ_PENDING", read=lambda: self.irq_status & self.irq_mask)
        self.bind("ERR_COUNT", read=lambda: self.err_count)
        self.trace = TraceBuffer(sim, hw, self)

    # ------------------------------------------------------------ binding
    def bind(
        self,
        register: str | int,
        read: Callable[[], int] | None = None,
        write: Callable[[int], None] | None = None,
    ) -> None:
        """Make ``register`` (name or offset) a view of an engine's state.

        ``read()`` returns its value (truncated to 32 bits here).  ``write(value)``
        receives the written value of an ``RW`` register or ``WO`` strobe; for a
        ``W1C`` register it receives the value left after clearing the bits
        written as ones (``read() & ~written``).
        """
        r = rm.BY_OFFSET[register] if isinstance(register, int) else rm.reg(register)
        if read is not None:
            if r.access is rm.Access.WO:
                raise ValueError(f"register {r.name} is write-only: it has no value to read")
            self._readers[r.offset] = read
        if write is None:
            return
        if r.access is rm.Access.RO:
            raise ValueError(f"register {r.name} is read-only: it takes no writes")
        if r.access is rm.Access.W1C:
            if read is None:
                raise ValueError(f"W1C register {r.name} needs a read to clear bits of")
            self._writers[r.offset] = lambda bits: write(read() & ~bits)
        else:
            self._writers[r.offset] = write

    def bind_array(
        self,
        array: rm.RegisterArray,
        read: Callable[[int, str], int],
        write: Callable[[int, str, int], None],
    ) -> None:
        """Bind every register of a per-queue or per-window ``array`` to
        ``read(index, field)`` and ``write(index, field, value)``."""
        for r in rm.REGISTERS:
            d = rm.decode_register(r.offset)
            if d.array is not array:
                continue
            self.bind(
                r.offset,
                read=None if r.access is rm.Access.WO else partial(read, d.index, d.field),
                write=None if r.access is rm.Access.RO else partial(write, d.index, d.field),
            )

    def check_complete(self) -> None:
        """Every ``W1C`` and ``WO`` register must have an engine behind it."""
        for r in sorted(rm.REGISTERS, key=lambda r: r.offset):  # the lowest offset is named
            if r.access in (rm.Access.W1C, rm.Access.WO) and r.offset not in self._writers:
                raise ValueError(f"no engine takes writes to {r.access.value} register {r.name}")

    # ------------------------------------------------------------ the port
    def read(self, addr: int, cycle: int | None = None) -> int:
        """Value at ``addr`` as a read sampling the end of ``cycle`` sees it (default: now)."""
        r = rm.BY_OFFSET.get(addr)
        if r is None or r.access is rm.Access.WO:
            return 0
        reader = self._readers.get(addr)
        if reader is None:
            return self.values[addr]
        self._read_cycle = self.sim.now if cycle is None else cycle
        return reader() & M32

    def write(self, addr: int, value: int) -> None:
        r = rm.BY_OFFSET.get(addr)
        if r is None or r.access is rm.Access.RO:
            return
        writer = self._writers.get(addr)
        if writer is None:
            self.values[addr] = value
        else:
            writer(value)

    @property
    def read_cycle(self) -> int:
        """The cycle whose state the register read in progress samples (for bound readers)."""
        return self._read_cycle

    @property
    def trace_enabled(self) -> bool:
        return bool(self.values[_CONTROL] & 1)

    # ------------------------------------------------- counter, IRQ, errors
    def _read_cycle_lo(self) -> int:
        self._cycle_hi_latch = (self._read_cycle >> 32) & M32
        return self._read_cycle

    def _store_irq_status(self, value: int) -> None:
        self.irq_status = value

    def _store_irq_mask(self, value: int) -> None:
        self.irq_mask = value
        self.on_irq_change()

    def raise_irq(self, bits: int) -> None:
        self.irq_status |= int(bits)
        self.on_irq_change()

    def error(
        self, code: rm.ErrorCode, engine: int, index: int, info: int, *, traced: bool = True
    ) -> None:
        """Latch an error: ``ERR_CODE``/``ERR_INFO``/``ERR_COUNT``, an ERROR trace record
        (unless not ``traced``: TRACE_EMPTY), Irq.ERROR."""
        self.values[_ERR_CODE.offset] = _ERR_CODE.pack(
            code=int(code), engine=engine, index=index & 0xFFFF
        )
        self.values[rm.offset("ERR_INFO")] = info & M32
        self.err_count += 1
        if traced:
            self.trace.record(engine, rm.TraceEvent.ERROR, rm.Kind.OTHER, info, int(code))
        self.raise_irq(rm.Irq.ERROR)
