"""``gradsync sweep``: many points of one command on Dask, resumable, nothing finished lost.

- :mod:`~gradsync.sweep.sweepfile` reads a sweep file (TOML) and expands it into points;
- :mod:`~gradsync.sweep.commands` is the registry of the commands a point may run
  (``train`` now, ``scale`` next), each with ``validate``, ``run`` and a hash input;
- :mod:`~gradsync.sweep.store` keeps one JSON file per finished point under
  ``DIR/points/`` (written atomically) and rebuilds ``DIR/results.csv`` from them;
- :mod:`~gradsync.sweep.cluster` opens the Dask client: a ``LocalCluster``, an
  existing scheduler or a dask-jobqueue batch farm;
- :mod:`~gradsync.sweep.runner` fans the points out and records each as it finishes;
- :mod:`~gradsync.sweep.plot` draws a figure from ``results.csv``.

The file format and the outputs are documented in ``docs/sweeps.md``.
"""
