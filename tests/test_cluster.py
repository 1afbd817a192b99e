"""Cluster choice: local processes, and the batch job a Slurm/PBS configuration submits."""

from __future__ import annotations

import os

import pytest

from lcdask.cluster import batch_cluster, dask_client
from lcdask.config import ClusterConfig


def test_local_cluster_uses_single_threaded_worker_processes():
    with dask_client(n_workers=2, dashboard=False) as client:
        info = client.scheduler_info()["workers"]
        assert len(info) == 2
        assert all(w["nthreads"] == 1 for w in info.values())
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        assert set(client.run(lambda: os.environ["OMP_NUM_THREADS"]).values()) == {"1"}


@pytest.mark.parametrize(("kind", "directive"), [("slurm", "#SBATCH"), ("pbs", "#PBS")])
def test_batch_job_script(kind, directive):
    config = ClusterConfig(
        kind=kind, workers=4, queue="short", account="astro", cores=8, walltime="02:00:00"
    )
    cluster = batch_cluster(config)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert f"{directive}" in script and "short" in script and "astro" in script
    assert "02:00:00" in script
    assert "--nworkers 8" in script and "--nthreads 1" in script
    assert "export OMP_NUM_THREADS=1" in script
