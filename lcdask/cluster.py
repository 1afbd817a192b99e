"""Starting or joining the Dask cluster that a run spreads its work over."""

from __future__ import annotations

import asyncio
import builtins
import errno
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from distributed.diagnostics.plugin import WorkerPlugin

from lcdask.errors import LcdaskError, SchedulerLostError

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


_OUT_OF_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
"""The errors of a write that found no room (full disk, quota, file-size limit, read-only)."""

_FAILED_WITH = re.compile(r"^Exception:\s+['\"](\w+)\((\d+)?", re.MULTILINE)
"""The exception of distributed's "Compute Failed" record: ``Exception: "OSError(28, '...')"``."""


def _handled_error_names() -> set[str]:
    """The class names of `LcdaskError` and of every subclass imported so far."""
    names, todo = set(), [LcdaskError]
    while todo:
        kind = todo.pop()
        names.add(kind.__name__)
        todo.extend(kind.__subclasses__())
    return names


class _HandledFailureFilter(logging.Filter):
    """Drops a worker's "Compute Failed" record of a failure the pipeline handles.

    Two kinds: a task that raised an `LcdaskError` (a frame that cannot be used, too few
    comparison stars...), which the driver catches to degrade, skip or end the run with one line
    that names the input and the fix, the reason kept in ``run.json``; and a write that found no
    room (the command line's one error line says "cannot write the products: [Errno 28] No space
    left on device ..."). The worker's record repeats these with a traceback on the user's
    terminal; it is logged at debug level on the ``lcdask`` logger instead (the exception's
    first line). Every other failure of a task - a bug - is logged as distributed logs it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Compute Failed"):
            return True
        message = record.getMessage()
        found = _FAILED_WITH.search(message)
        if found is None:
            return True
        name, errno_text = found.group(1), found.group(2)
        kind = getattr(builtins, name, None)
        is_os_error = isinstance(kind, type) and issubclass(kind, OSError)
        out_of_room = is_os_error and errno_text is not None and int(errno_text) in _OUT_OF_ROOM
        if not out_of_room and name not in _handled_error_names():
            return True
        exception = message[found.start() :].splitlines()[0]
        log.debug("a task failed, handled by the run: %s", exception[:500])
        return False


class _QuietHandledFailures(WorkerPlugin):
    """Installs `_HandledFailureFilter` on each worker's ``distributed.worker`` logger."""

    name = "lcdask-quiet-handled-failures"
    idempotent = True

    def setup(self, worker) -> None:
        logger = logging.getLogger("distributed.worker")
        if not any(isinstance(f, _HandledFailureFilter) for f in logger.filters):
            logger.addFilter(_HandledFailureFilter())

    def teardown(self, worker) -> None:
        logger = logging.getLogger("distributed.worker")
        for found in [f for f in logger.filters if isinstance(f, _HandledFailureFilter)]:
            logger.removeFilter(found)


def _lost_scheduler(client, exc: BaseException) -> bool:
    """Whether ``exc`` ended a computation because ``client`` lost its scheduler.

    Distributed cancels every future of a client whose connection to the scheduler breaks
    (`distributed.client.FutureCancelledError`, reason "scheduler-connection-lost", an
    `asyncio.CancelledError`) and then tries to reconnect; a call made meanwhile fails with a
    ``CommClosedError`` or an ``OSError`` (connection timeout). Such an error counts as the
    scheduler lost only when the client is no longer connected, so that a genuine ``OSError``
    of the work itself (a full disk) is not mistaken for it.

    Parameters
    ----------
    client : distributed.Client
    exc : BaseException

    Returns
    -------
    bool
    """
    from distributed.client import FutureCancelledError

    if isinstance(exc, FutureCancelledError) and exc.reason == "scheduler-connection-lost":
        return True
    connection = isinstance(exc, (OSError, asyncio.CancelledError, asyncio.TimeoutError))
    return connection and client.status != "running"


class _AfterSchedulerLost(logging.Filter):
    """Drops distributed's client log records once its client has lost the scheduler.

    Distributed's client logs its failed reconnection, and the cancellations of its own
    shutdown with their tracebacks, on the ``distributed.client`` logger. Once the scheduler is
    gone the run ends with one error line that says so (`SchedulerLostError`), and these records
    repeat it as noise; while the client is connected every record passes.
    """

    def __init__(self, client) -> None:
        super().__init__()
        self.client = client

    def filter(self, record: logging.LogRecord) -> bool:
        return self.client.status == "running"


def _first_line(exc: BaseException) -> str:
    """The exception's kind and the first line of its message (its reason if it has one)."""
    text = str(getattr(exc, "reason", None) or exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@contextmanager
def _connected(client, address: str) -> Iterator:
    """Yield ``client``, close it after; losing the scheduler is one `SchedulerLostError`."""
    logger = logging.getLogger("distributed.client")
    quiet = _AfterSchedulerLost(client)
    logger.addFilter(quiet)
    try:
        yield client
    except (Exception, asyncio.CancelledError) as exc:  # not KeyboardInterrupt, not SystemExit
        if _lost_scheduler(client, exc):
            raise SchedulerLostError(
                f"lost the Dask scheduler ({address}: {_first_line(exc)}); finished stages are "
                "kept: run the same command to resume"
            ) from exc
        raise
    finally:
        try:
            client.close()
        finally:
            logger.removeFilter(quiet)


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
        try:
            client = Client(scheduler)
        except OSError as exc:  # refused, or timed out
            raise LcdaskError(
                f"cannot connect to the Dask scheduler at {scheduler} ({exc}); is it running? "
                "give its address as tcp://host:port, or leave out --scheduler for a local cluster"
            ) from exc
        with _connected(client, scheduler):
            log.info("connected to %s; dashboard %s", scheduler, client.dashboard_link)
            yield client
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
        with _connected(client, cluster.scheduler_address):
            # The local workers write to the user's terminal: a failure the run handles (a full
            # disk, a frame it skips, a step it degrades) is said once, by the run's own line,
            # not again with a traceback by each worker that hit it.
            client.register_plugin(_QuietHandledFailures())
            log.info(
                "local cluster of %d workers; dashboard %s",
                len(cluster.workers),
                client.dashboard_link,
            )
            yield client
    finally:
        try:  # a worker's heartbeat racing the scheduler's shutdown logs a traceback otherwise
            client.run(_quiet_shutdown)
        except Exception:  # a worker already gone has nothing to say either
            pass
        client.close()
        cluster.close()


def _quiet_shutdown() -> None:
    """In a worker: nothing more from distributed, which is about to be shut down."""
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


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
        with _connected(client, cluster.scheduler_address):
            log.info("%s cluster; dashboard %s", config.kind, client.dashboard_link)
            yield client
    finally:
        cluster.close()
