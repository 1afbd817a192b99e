"""The parallel layer: the one module that gives work to the cluster.

Every function takes the ``client`` (a `distributed.Client`, or None for the serial path) and
gives futures or results alike, so that a stage reads the same whether it runs on a cluster or
not. The stages (ingest, calibration, Level 2 and 3, forced photometry, the report) map their
kernels over frames here; `lcdask.cluster` only starts, warms and stops clusters.

One retry policy for every task:

- A task whose worker is lost (killed, out of memory) is run again by the scheduler on another
  worker, up to ``distributed.scheduler.allowed-failures`` times (3 by default);
- an `OSError` of a passing kind raised in a task (a file system's hiccup: an I/O error, a stale
  NFS handle, a busy file, a timeout) is retried in the task, `RETRIES` times, a second apart; the
  serial path does the same (a missing file or a full disk is not retried);
- any other error is the stage's: its kernels return handled failures as results, or raise an
  `lcdask.errors.LcdaskError` the stage catches (said in one line, no traceback: see
  `lcdask.cluster`).

Each task's key names its step (``lcdask-<name>-<hex>``), so the dashboard's task stream reads
as the run does.
"""

from __future__ import annotations

import errno
import functools
import time
import uuid
from typing import Any

import dask

from lcdask import progress

__all__ = [
    "RETRIES",
    "compute",
    "gather_results",
    "map_frames",
    "map_tasks",
    "on_each_worker",
    "share",
    "submit_task",
    "with_retries",
]

RETRIES = 2
"""Times an `OSError` raised in a task is retried, in the task (see the module's docstring)."""

_RETRY_WAIT_S = 1.0
_TRANSIENT = frozenset(
    {errno.EIO, errno.ESTALE, errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ETIMEDOUT}
)
"""The errors of a file system that may pass; a missing file or a full disk does not."""


class _Retrying:
    """``func`` called again on an `OSError`, `RETRIES` times (picklable, unlike a closure)."""

    def __init__(self, func) -> None:
        self.func = func
        functools.update_wrapper(self, func)

    def __call__(self, *args, **kwargs):
        for attempt in range(RETRIES + 1):
            try:
                return self.func(*args, **kwargs)
            except OSError as exc:
                if attempt == RETRIES or exc.errno not in _TRANSIENT:
                    raise
                time.sleep(_RETRY_WAIT_S)
        raise AssertionError("unreachable")  # pragma: no cover


def with_retries(func):
    """``func`` with the layer's retry policy, for a task built outside it (a delayed graph)."""
    return _Retrying(func)


def _prefix(name: str | None, func) -> str:
    """``lcdask-<step>``: the step, else the function's name, in the tasks' keys."""
    return "lcdask-" + (name or getattr(func, "__name__", "task").strip("_").replace("_", "-"))


def _key(name: str | None, func) -> str:
    return f"{_prefix(name, func)}-{uuid.uuid4().hex}"


def map_tasks(client, func, *iterables, name: str | None = None, **kwargs) -> list:
    """``func`` over the iterables: one task each on the cluster (futures), or the calls' results.

    Parameters
    ----------
    client : distributed.Client or None
        The cluster; None calls ``func`` here, in turn.
    func : callable
        The kernel (a module-level function: the tasks pickle it).
    *iterables
        One argument of ``func`` each, zipped.
    name : str, optional
        The step in the tasks' keys (default: the function's name).
    **kwargs
        Keywords every call shares.

    Returns
    -------
    list
        Futures (`gather_results` waits for them), or the results.
    """
    task = _Retrying(functools.partial(func, **kwargs))
    if client is None:
        return [task(*args) for args in zip(*iterables, strict=True)]
    # keywords bound in a partial: distributed would make a task of a list keyword under the
    # keyword's own name, which the next run on the same client collides with
    return client.map(task, *iterables, key=_prefix(name, func), pure=False)


def map_frames(client, func, *iterables, label: str, name: str | None = None, **kwargs) -> list:
    """`map_tasks`, then `gather_results` under ``label``: the results, in order."""
    return gather_results(client, map_tasks(client, func, *iterables, name=name, **kwargs), label)


def submit_task(
    client,
    func,
    *args,
    name: str | None = None,
    priority: int = 0,
    worker: str | None = None,
    **kwargs,
) -> Any:
    """One task on the cluster (a future), or the call itself when there is no cluster.

    Parameters
    ----------
    client : distributed.Client or None
        The cluster; None calls ``func`` here.
    func : callable
        The function (module-level).
    *args, **kwargs
        Its arguments.
    name : str, optional
        The step in the task's key.
    priority : int, optional
        The scheduler's priority (higher first).
    worker : str, optional
        Run on this worker only (its address).
    """
    task = _Retrying(func)
    if client is None:
        return task(*args, **kwargs)
    where = {"workers": [worker], "allow_other_workers": False} if worker else {}
    return client.submit(
        task, *args, key=_key(name, func), pure=False, priority=priority, **where, **kwargs
    )


def on_each_worker(client, func, *, name: str | None = None, priority: int = -100) -> None:
    """``func()`` once on each worker, in a task not waited for (low priority by default)."""
    from distributed import fire_and_forget

    for address in client.scheduler_info(n_workers=-1)["workers"]:
        fire_and_forget(submit_task(client, func, name=name, priority=priority, worker=address))


def share(client, data, *, broadcast: bool = True):
    """``data`` sent once to the workers (a future its tasks take), or itself without a cluster.

    A table passed to each task as it is is pickled and sent with every one of them (the
    reference catalog: ~0.3 MB, ~4 ms of the run's process a task). ``broadcast`` sends it to
    every worker at once (data every task reads); otherwise to one, which the scheduler then
    chooses for the task that takes it (a large array one task reads: the co-add).
    """
    if client is None or data is None:
        return data
    return client.scatter(data, broadcast=broadcast, hash=False)


def gather_results(client, futures: list, label: str) -> list:
    """The results of a step's futures (a progress bar meanwhile), or the serial results."""
    if client is None:
        return futures
    progress.show(futures, label)
    return client.gather(futures)


def compute(client, *objects, label: str) -> tuple:
    """Dask collections or delayed objects computed on the cluster, or on local threads."""
    if client is None:
        return dask.compute(*objects, scheduler="threads")
    return tuple(gather_results(client, client.compute(list(objects)), label))
