"""The two operand SRAMs of a modelled node (scratchpad and gradient), as the engines address them.

Compute operands, DMA sources, received packets and host bulk transfers all
name byte addresses in the device memory map (``gradsync.spec.regmap``:
``SCRATCH_BASE``, ``GRAD_BASE``); :meth:`OperandSrams.region` turns one into
an array slice or refuses it.
"""

from __future__ import annotations

import numpy as np

from gradsync.spec import regmap as rm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig


class OperandSrams:
    """Scratchpad and gradient SRAM contents, one int64 element per operand word.

    Parameters
    ----------
    hw:
        Sizes (``scratchpad_words``, ``gradient_words``).
    fmt:
        Operand format; its ``word_bytes`` is the address step of one word.
    """

    def __init__(self, hw: HardwareConfig, fmt: FixedPointFormat) -> None:
        self.word_bytes = fmt.word_bytes
        self.scratch = np.zeros(hw.scratchpad_words, dtype=np.int64)
        self.grad = np.zeros(hw.gradient_words, dtype=np.int64)

    def region(self, addr: int, n_words: int) -> tuple[np.ndarray, int] | None:
        """(array, first index) of an operand range, or None if it is not inside one SRAM."""
        for base, mem in ((rm.SCRATCH_BASE, self.scratch), (rm.GRAD_BASE, self.grad)):
            if base <= addr < base + rm.REGION_SPAN:
                off = addr - base
                if off % self.word_bytes:
                    return None
                idx = off // self.word_bytes
                if n_words < 0 or idx + n_words > len(mem):
                    return None
                return mem, idx
        return None
