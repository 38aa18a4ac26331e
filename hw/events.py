"""Event records that engines hand to the CSR block: trace writes and error reports.

Every engine of a node (compute sequencer here; DMA and NIC in ``hw/dma.py``,
``hw/nic.py``) reports through these two layouts, so the CSR block
(``hw/csr.py``) can keep one trace buffer and one error register for all of
them. Field meanings are those of ``gradsync.spec.regmap``'s trace record and
``ERR_CODE``/``ERR_INFO`` registers.
"""

from __future__ import annotations

from amaranth.lib import data

#: One trace record to append. ``cycle`` is the cycle the event *happened*
#: (``gradsync.spec.timing``'s convention: the cycle its effect is visible), which may
#: be the current cycle or the next one; the buffer stores it verbatim.
TraceWrite = data.StructLayout({
    "valid": 1,
    "cycle": 48,
    "engine": 4,
    "event": 4,
    "kind": 8,
    "tag": 32,
    "aux": 32,
})

#: One error report: latched into ERR_CODE/ERR_INFO, counted in ERR_COUNT,
#: traced as an ERROR record and raising ``Irq.ERROR``, all visible in the
#: next cycle.
ErrorEvent = data.StructLayout({
    "valid": 1,
    "code": 8,
    "engine": 4,
    "index": 16,
    "info": 32,
})
