"""The parallel layer: tasks on the cluster, or the same calls in this process without one.

Every function takes the ``client`` (a `distributed.Client`, or None for the serial path) and
gives futures or results alike, so that a stage reads the same whether it runs on a cluster or
not. Level 2 and forced photometry use it; the other stages are moved onto it in turn (issue 16).
"""

from __future__ import annotations

import functools
from typing import Any

from lcdask import progress

__all__ = ["gather_results", "map_tasks", "share", "submit_task"]


def map_tasks(client, func, *iterables, **kwargs) -> list:
    """``func`` over the iterables: one task each on the cluster, or the calls themselves."""
    if client is None:
        return [func(*args, **kwargs) for args in zip(*iterables, strict=True)]
    # keywords bound in a partial: distributed would make a task of a list keyword under the
    # keyword's own name, which the next run on the same client collides with
    return client.map(functools.partial(func, **kwargs), *iterables, pure=False)


def submit_task(client, func, *args) -> Any:
    """One task on the cluster (a future), or the call itself when there is no cluster."""
    return func(*args) if client is None else client.submit(func, *args, pure=False)


def share(client, data):
    """``data`` sent once to every worker (a future its tasks take), or itself without a cluster.

    A table passed to each task as it is is pickled and sent with every one of them (the
    reference catalog: ~0.3 MB, ~4 ms of the run's process a task).
    """
    if client is None or data is None:
        return data
    return client.scatter(data, broadcast=True, hash=False)


def gather_results(client, futures: list, label: str = "level2") -> list:
    """The results of a step's futures (a progress bar meanwhile), or the serial results."""
    if client is None:
        return futures
    progress.show(futures, label)
    return client.gather(futures)
