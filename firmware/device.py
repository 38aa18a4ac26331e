"""The device protocol: the host's whole view of one gradsync node.

Firmware code awaits only these methods, so one firmware program runs on
both backends: the golden model (``gradsync.model.device.ModelDevice``, in
virtual cycles) and the RTL under cocotb (``gradsync.sim``).  Nothing here
may depend on asyncio: backends drive the firmware coroutine themselves.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Device(Protocol):
    """Asynchronous access to one node.

    ``read32``/``write32``
        32-bit MMIO on the CSR port at byte offsets of ``gradsync.spec.regmap``.
    ``wait_irq(mask)``
        Return once the node's interrupt line is asserted
        (``IRQ_STATUS & IRQ_MASK``) with a cause in ``mask``; returns
        ``IRQ_STATUS & mask`` as read after the interrupt.  Causes stay set
        until the firmware clears them (W1C).
    ``load(addr, array)`` / ``dump(addr, n)``
        Bulk transfer through the host port.  ``addr`` is a device byte
        address (``regmap.SCRATCH_BASE`` ...); elements are the region's
        words: signed raw operand integers for the SRAMs, unsigned 32-bit
        words for ring and trace memory.

    Time passes only inside these calls; host arithmetic between them takes no
    device cycles.  The model backend charges ``HardwareConfig``'s
    ``host_write_cycles`` / ``host_read_cycles`` per MMIO access (a write takes
    effect, a read samples, at the end), ``host_irq_latency_cycles`` from the
    interrupt line rising to the host reading ``IRQ_STATUS``, and
    ``host_bulk_cycles`` per bulk transfer (data lands at the end); the RTL
    backend's bus timing must be configured to match these for cycle-exact
    comparison.
    """

    async def read32(self, addr: int) -> int: ...

    async def write32(self, addr: int, value: int) -> None: ...

    async def wait_irq(self, mask: int) -> int: ...

    async def load(self, addr: int, array: np.ndarray) -> None: ...

    async def dump(self, addr: int, n: int) -> np.ndarray: ...
