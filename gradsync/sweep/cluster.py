"""Where the points run: a Dask ``LocalCluster``, an existing scheduler or a batch farm.

``--jobqueue slurm|lsf|pbs|sge`` passes the sweep file's ``[jobqueue]`` table to
dask-jobqueue's cluster class (``SLURMCluster``, ...) as keyword arguments,
except ``adapt = {minimum = M, maximum = N}`` (jobs started and stopped with
the load) and ``jobs = N`` (a fixed number of jobs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import warnings
from dataclasses import dataclass

import dask

#: --jobqueue name -> dask_jobqueue class.
JOBQUEUE_CLASSES = {
    "slurm": "SLURMCluster",
    "lsf": "LSFCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
}

#: [jobqueue] keys that gradsync reads itself instead of passing to the cluster class.
SCALING_KEYS = ("adapt", "jobs")

#: Scheduler settings of the clusters gradsync starts. A point whose worker dies is
#: rerun once and the second loss records it as failed (``allowed-failures``); a
#: worker holds only the point it runs (``worker-saturation`` 1.0 with one thread),
#: so a dying point never counts against a point queued behind it on that worker.
DASK_CONFIG = {
    "distributed.scheduler.allowed-failures": 1,
    "distributed.scheduler.worker-saturation": 1.0,
}


@dataclass
class Session:
    """An open Dask client and the cluster gradsync started for it (None: an existing one)."""

    client: object
    cluster: object | None
    where: str  #: what runs the points, for the user

    @property
    def dashboard(self) -> str | None:
        return getattr(self.client, "dashboard_link", None)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close(timeout=10)
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.close(timeout=10)


def jobqueue_cluster(kind: str, table: dict):
    """The dask-jobqueue cluster of ``kind`` for a ``[jobqueue]`` table (no job submitted yet)."""
    # importing dask_jobqueue (its runner module) replaces the process's SIGINT handler with
    # one that calls sys.exit(): Ctrl-C would no longer be a KeyboardInterrupt that stops the
    # sweep cleanly; keep ours
    previous = signal.getsignal(signal.SIGINT)
    try:
        import dask_jobqueue
    finally:
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)

    if kind not in JOBQUEUE_CLASSES:
        raise ValueError(f"--jobqueue must be one of {', '.join(JOBQUEUE_CLASSES)}, not {kind!r}")
    cls = getattr(dask_jobqueue, JOBQUEUE_CLASSES[kind])
    kwargs = {k.replace("-", "_"): v for k, v in table.items() if k not in SCALING_KEYS}
    with dask.config.set(DASK_CONFIG):
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:  # an unknown or missing key
            first = str(exc).splitlines()[0]
            raise ValueError(f"[jobqueue] does not suit {cls.__name__}: {first}") from None


def _scale(cluster, table: dict, workers: int | None) -> str:
    adapt = table.get("adapt")
    if adapt is not None:
        if not isinstance(adapt, dict) or set(adapt) - {"minimum", "maximum"}:
            raise ValueError(
                f"[jobqueue] adapt must be {{minimum = M, maximum = N}}, not {adapt!r}"
            )
        cluster.adapt(**adapt)
        return f"adaptive, {adapt.get('minimum', 0)} to {adapt.get('maximum', 'any')} jobs"
    jobs = table.get("jobs", workers or 1)
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"[jobqueue] jobs must be a positive integer, not {jobs!r}")
    cluster.scale(jobs=jobs)
    return f"{jobs} job{'s' * (jobs != 1)}"


@contextlib.contextmanager
def _workers_ignore_sigint():
    """Workers spawned inside inherit an ignored SIGINT: Ctrl-C reaches only the client,
    which then stops them in order (no traceback from every worker)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def open_session(
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    jobqueue: str | None = None,
    table: dict | None = None,
) -> Session:
    """Connect to (or start) the cluster the options name."""
    from distributed import Client, LocalCluster

    if scheduler is not None:
        return Session(Client(scheduler, timeout=30), None, f"the scheduler at {scheduler}")
    if jobqueue is not None:
        cluster = jobqueue_cluster(jobqueue, table or {})
        try:
            how = _scale(cluster, table or {}, workers)
        except ValueError:
            cluster.close()
            raise
        return Session(Client(cluster), cluster, f"{JOBQUEUE_CLASSES[jobqueue]} ({how})")
    n = workers or os.cpu_count() or 1
    with (
        dask.config.set(DASK_CONFIG),
        _workers_ignore_sigint(),
        warnings.catch_warnings(),
    ):
        # another cluster holds 8787: Dask picks a free port, which the dashboard line prints
        warnings.filterwarnings("ignore", message="Port .* is already in use", category=UserWarning)
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=True, silence_logs=logging.ERROR
        )
    return Session(Client(cluster), cluster, f"a local cluster of {n} worker processes")
