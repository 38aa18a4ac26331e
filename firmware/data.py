"""The digits data set as the host sees it: fixed split, global batches, per-node shards.

scikit-learn ships the data (``sklearn.datasets.load_digits``); nothing is
downloaded.  Pixel values 0..16 are scaled by ``INPUT_SCALE`` to [0, 1], which
is exact in any fixed-point format with at least 4 fractional bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INPUT_SCALE = 0.0625
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Digits:
    x: np.ndarray  # (n, 64) raw pixel values 0..16
    y: np.ndarray  # (n,) labels 0..9
    train_indices: np.ndarray
    test_indices: np.ndarray

    @property
    def features(self) -> int:
        return self.x.shape[1]

    @property
    def classes(self) -> int:
        return int(self.y.max()) + 1


def load(seed: int) -> Digits:
    """Digits with a train/test split fixed by ``seed``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(TEST_FRACTION * len(y)))
    return Digits(x, y, np.sort(order[n_test:]), np.sort(order[:n_test]))


def batch_indices(
    data: Digits, seed: int, steps: int, global_batch: int, nodes: int
) -> list[list[np.ndarray]]:
    """Per step, per node, the data-set indices of that node's shard of the global batch.

    Global batches walk through seeded shuffles of the training indices,
    epoch after epoch; an epoch's last partial batch is dropped, so no sample
    appears twice in one batch.  Node ``i`` takes rows ``i::nodes`` of each batch.
    """
    if global_batch % nodes:
        raise ValueError(f"global batch {global_batch} is not divisible by {nodes} nodes")
    if global_batch > len(data.train_indices):
        raise ValueError(
            f"global batch {global_batch} exceeds the {len(data.train_indices)} training samples"
        )
    rng = np.random.default_rng(seed + 1)
    out: list[list[np.ndarray]] = []
    pool: list[int] = []
    for _ in range(steps):
        if len(pool) < global_batch:
            pool = rng.permutation(data.train_indices).tolist()
        batch, pool = np.array(pool[:global_batch]), pool[global_batch:]
        out.append([batch[i::nodes] for i in range(nodes)])
    return out
