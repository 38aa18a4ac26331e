from __future__ import annotations

import pytest

from gradsync.model.cluster import Cluster
from gradsync.spec import regmap as rm
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import HardwareConfig

FMT = FixedPointFormat()
HW = HardwareConfig(scratchpad_words=4096, gradient_words=4096, ring_entries=8)


def run_programs(programs, nodes=None, hw=HW, fmt=FMT):
    """Run one coroutine factory per node on a fresh cluster; return the cluster."""
    cluster = Cluster(nodes or len(programs), hw, fmt)
    cluster.run(programs)
    return cluster


def saddr(word: int, fmt=FMT) -> int:
    return rm.SCRATCH_BASE + word * fmt.word_bytes


def gaddr(word: int, fmt=FMT) -> int:
    return rm.GRAD_BASE + word * fmt.word_bytes


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(1234)
