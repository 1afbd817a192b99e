"""Starting or joining the Dask cluster that a run spreads its work over."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import dask

__all__ = ["batch_cluster", "client_from_config", "dask_client", "worker_environ"]

log = logging.getLogger("lcdask")


def worker_environ() -> dict[str, object]:
    """Environment of worker processes: distributed's, without its glibc trim threshold.

    Distributed sets ``MALLOC_TRIM_THRESHOLD_=65536`` so that workers hand memory back to the
    system. Setting it turns off glibc's adaptive mmap threshold: every frame-sized temporary is
    then a fresh ``mmap`` whose pages fault in on first touch, which made the numpy kernels of
    calibration and the reads and writes of ingest about 3x slower in workers than in the
    driver (measured here on 2048x2048 frames: calibration of 200 frames 210 s -> 137 s). The
    one-thread settings for OpenMP/BLAS stay.

    Returns
    -------
    dict
        The ``distributed.nanny.pre-spawn-environ`` mapping to use.
    """
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ | {"OMP_NUM_THREADS": 1, "MKL_NUM_THREADS": 1, "OPENBLAS_NUM_THREADS": 1}


@contextmanager
def dask_client(
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    memory_limit: str | float = "auto",
    dashboard: bool = True,
) -> Iterator:
    """Start a local cluster, or connect to a running scheduler, for the duration of a block.

    The local cluster uses worker processes with one thread each: the per-frame stages hold the
    GIL in parts (sep) or use OpenMP (astroscrappy), and processes scaled best on the measured
    chains (see DESIGN.md). Distributed's worker environment already pins ``OMP_NUM_THREADS=1``.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler (``tcp://host:port``); a LocalCluster is started otherwise.
    n_workers : int, optional
        Worker processes of the local cluster (default: one per core).
    memory_limit : str or float, optional
        Memory limit per local worker ("auto" shares the machine's memory).
    dashboard : bool, optional
        Serve the dashboard of the local cluster (on a free port).

    Yields
    ------
    distributed.Client
    """
    from distributed import Client, LocalCluster

    # Worker start-up and shut-down chatter is not the user's business; problems still show.
    logging.getLogger("distributed").setLevel(logging.ERROR)

    if scheduler:
        client = Client(scheduler)
        try:
            log.info("connected to %s; dashboard %s", scheduler, client.dashboard_link)
            yield client
        finally:
            client.close()
        return
    with dask.config.set({"distributed.nanny.pre-spawn-environ": worker_environ()}):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=memory_limit,
            dashboard_address=":0" if dashboard else None,
        )
    client = Client(cluster)
    try:
        log.info(
            "local cluster of %d workers; dashboard %s", len(cluster.workers), client.dashboard_link
        )
        yield client
    finally:
        client.close()
        cluster.close()


def batch_cluster(config):
    """A dask-jobqueue cluster (Slurm or PBS) described by a `lcdask.config.ClusterConfig`.

    Each batch job runs ``config.cores`` single-threaded worker processes; ``config.workers``
    jobs are requested.

    Parameters
    ----------
    config : lcdask.config.ClusterConfig
        With ``kind`` "slurm" or "pbs".

    Returns
    -------
    dask_jobqueue.JobQueueCluster
        Not yet scaled; ``job_script()`` shows what will be submitted.
    """
    import dask_jobqueue

    classes = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}
    if config.kind not in classes:
        raise ValueError(f"batch_cluster needs cluster.kind 'slurm' or 'pbs', not {config.kind!r}")
    kwargs = {
        "cores": config.cores,
        "processes": config.cores,
        "memory": config.job_memory,
        "walltime": config.walltime,
        "job_script_prologue": ["export OMP_NUM_THREADS=1"],
    }
    if config.queue:
        kwargs["queue"] = config.queue
    if config.account:
        kwargs["account"] = config.account
    return classes[config.kind](**kwargs)


@contextmanager
def client_from_config(config) -> Iterator:
    """A client for the cluster a `lcdask.config.ClusterConfig` describes, for a block.

    Parameters
    ----------
    config : lcdask.config.ClusterConfig

    Yields
    ------
    distributed.Client
    """
    if config.kind in ("local", "scheduler"):
        with dask_client(
            scheduler=config.scheduler if config.kind == "scheduler" else None,
            n_workers=config.workers or None,
            memory_limit=config.memory_limit,
        ) as client:
            yield client
        return
    from distributed import Client

    cluster = batch_cluster(config)
    cluster.scale(jobs=max(config.workers, 1))
    client = Client(cluster)
    try:
        log.info("%s cluster; dashboard %s", config.kind, client.dashboard_link)
        yield client
    finally:
        client.close()
        cluster.close()
