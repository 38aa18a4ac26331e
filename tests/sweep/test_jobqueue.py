"""The [jobqueue] table reaches the batch job script (dask-jobqueue's ``job_script()``; no farm)."""

from __future__ import annotations

import math

import pytest

from gradsync.sweep.cluster import jobqueue_cluster

TABLE = {
    "queue": "hw-long",
    "cores": 4,
    "memory": "8GiB",
    "walltime": "02:30",
    "adapt": {"minimum": 0, "maximum": 20},  # read by gradsync, not passed to the class
}


def _script(kind: str, table: dict) -> str:
    cluster = jobqueue_cluster(kind, table)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


def test_slurm_job_script_holds_queue_cores_memory_walltime():
    lines = _script("slurm", TABLE).splitlines()
    assert "#SBATCH -p hw-long" in lines
    assert "#SBATCH --cpus-per-task=4" in lines
    assert "#SBATCH --mem=8G" in lines  # 8 GiB in Slurm's G (GiB)
    assert "#SBATCH -t 02:30" in lines


def test_lsf_job_script_holds_queue_cores_memory_walltime():
    lines = _script("lsf", TABLE).splitlines()
    assert "#BSUB -q hw-long" in lines
    assert "#BSUB -n 4" in lines
    assert f"#BSUB -M {math.ceil(8 * 2**30 / 1000)}" in lines  # LSF's default unit: kB
    assert "#BSUB -W 02:30" in lines


def test_pbs_and_sge_take_the_same_table():
    assert "#PBS -q hw-long" in _script("pbs", TABLE).splitlines()
    assert "#$ -l h_rt=02:30" in _script("sge", TABLE).splitlines()


def test_a_key_the_cluster_class_does_not_take_is_named():
    with pytest.raises(ValueError, match=r"does not suit SLURMCluster: .*argument 'queu'"):
        jobqueue_cluster("slurm", {"queu": "x", "cores": 1, "memory": "1GB"})
    with pytest.raises(ValueError, match="--jobqueue must be one of .* not 'condor'"):
        jobqueue_cluster("condor", TABLE)


def test_ctrl_c_stays_a_keyboard_interrupt_after_dask_jobqueue_is_imported(monkeypatch):
    """dask_jobqueue's runner module installs ``lambda *_: sys.exit()`` for SIGINT when it is
    imported: a sweep's Ctrl-C would become a SystemExit, not the clean interrupted stop."""
    import signal
    import sys

    for name in [m for m in sys.modules if m.split(".")[0] == "dask_jobqueue"]:
        monkeypatch.delitem(sys.modules, name)  # imported afresh here, as in a new process
    mine = signal.getsignal(signal.SIGINT)  # default_int_handler, or what a test put there
    _script("slurm", TABLE)
    assert signal.getsignal(signal.SIGINT) is mine
