"""A Dask LocalCluster of 2 worker processes, shared by the tests of a module."""

from __future__ import annotations

import logging

import pytest

#: The tiny train point every sweep test varies (the golden model, two steps).
TINY = {"backend": "model", "steps": 2, "layers": [64, 16, 10], "nodes": 2}


@pytest.fixture(scope="module")
def client():
    import dask
    from distributed import Client, LocalCluster

    from gradsync.sweep.cluster import DASK_CONFIG

    with dask.config.set(DASK_CONFIG):
        cluster = LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()
