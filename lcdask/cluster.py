"""Starting or joining the Dask cluster that a run spreads its work over."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["dask_client"]

log = logging.getLogger("lcdask")


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
