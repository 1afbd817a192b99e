"""The scale benchmark's counters (benchmarks/bench_scale.py) count what a known graph does."""

from __future__ import annotations

import numpy as np
import pytest

bench_scale = pytest.importorskip("bench_scale")


def _inc(x: int) -> int:
    return x + 1


def _total(*xs: int) -> int:
    return sum(xs)


def _block(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.uint8)


@pytest.fixture(scope="module")
def client():
    from lcdask.cluster import dask_client

    with dask_client(n_workers=1, dashboard=False) as client:
        yield client


def test_task_counter_counts_a_known_graph(client):
    client.register_plugin(bench_scale.TaskCounter())
    before = client.run_on_scheduler(bench_scale._plugin_snapshot)
    incs = client.map(_inc, range(7), key="bench-inc", pure=False)
    total = client.submit(_total, *incs, key="bench-total-0", pure=False)
    assert total.result() == sum(range(1, 8))
    after = client.run_on_scheduler(bench_scale._plugin_snapshot)
    counts = bench_scale._diff(after, before)
    # 7 mapped tasks and one that sums them, each submitted once and computed once: exact
    assert counts["submitted"] == {"bench-inc": 7, "bench-total": 1}
    assert counts["memory"] == {"bench-inc": 7, "bench-total": 1}
    assert "erred" not in counts or not counts["erred"]


def test_comm_bytes_sees_a_gathered_result(client):
    n = 4_000_000
    counter = bench_scale.CommBytes(client.scheduler.address)
    with counter.counting():
        future = client.submit(_block, n, pure=False)
        assert client.gather(future).nbytes == n
    counts = counter.snapshot()
    # the 4 MB result passes the scheduler on its way to the driver (gathered through it): the
    # scheduler reads it from the worker (on a comm it opened) and writes it to the client,
    # which reads it; messages' headers and the cluster's other chatter add kB, not a megabyte
    for side in ("outgoing_read", "scheduler_written", "driver_read"):
        assert n <= counts.get(side, 0) < n + 1_000_000, (side, counts)
    assert 2 * n <= counts["through_scheduler"] < 2 * n + 1_000_000
    # the driver sent a small task, not the block
    assert counts.get("driver_written", 0) < 100_000


def test_thread_cpu_splits_the_driver_process(client):
    threads = bench_scale.ThreadCPU(client.run_on_scheduler(bench_scale._loop_thread_id))
    before = threads.snapshot()
    x = 0
    for i in range(3_000_000):  # ~0.2 s of this (the main) thread's CPU
        x += i
    after = threads.snapshot()
    main = after["main"] - before["main"]
    # the main thread did the loop; the scheduler's loop thread was idle meanwhile
    assert main > 0.05
    assert after["loop"] - before["loop"] < main
    assert after["process"] - before["process"] >= main - 0.02  # clock ticks of 10 ms
