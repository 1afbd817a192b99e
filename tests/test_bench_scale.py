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


def _measurement(n: int, *, worker_pf: float, main_pf: float, wall_pf: float, tasks_pf: float):
    """A run's rows for one stage: costs linear in N, the IO loop 2 ms/task + 10 ms/s of wall."""
    wall, tasks = 1.0 + wall_pf * n, 2.0 + tasks_pf * n
    row = {
        "wall_s": wall,
        "driver_main_s": main_pf * n,
        "driver_loop_s": 0.002 * tasks + 0.01 * wall,
        "driver_process_s": main_pf * n + 0.002 * tasks + 0.01 * wall,
        "worker_cpu_s": 5.0 + worker_pf * n,
        "tasks": tasks,
        "bytes_scheduler": 1000.0 * n,
    }
    return {"rows": {"level2": row}, "frames": n}


def test_projection_of_known_costs():
    small = {
        n: _measurement(n, worker_pf=0.1, main_pf=0.001, wall_pf=0.05, tasks_pf=3)
        for n in (50, 200, 1000)
    }
    big = {
        n: _measurement(n, worker_pf=2.0, main_pf=0.01, wall_pf=1.0 + 0.01 * n, tasks_pf=3)
        for n in (10, 30)
    }
    model = bench_scale.project(small, big, n_frames=10_000, workers=(16, 256))
    sched = model["scheduler"]
    # the IO loop was made exactly 2 ms per task + 10 ms per second of wall: the fit finds it
    assert sched["per_task_s"] == pytest.approx(0.002, rel=1e-6)
    assert sched["per_wall_s"] == pytest.approx(0.01, rel=1e-6)
    stage = model["per_stage"]["level2"]
    assert stage["worker_cpu_per_frame_s"] == pytest.approx(2.0)
    # the main thread's cost per frame does not grow with N on the small frames: 10 ms
    assert stage["driver_main_per_frame_s"] == pytest.approx(0.01)
    driver = (0.01 + 3 * 0.002) / (1 - 0.01)  # main + scheduler, over the loop's free share
    assert stage["driver_process_per_frame_s"] == pytest.approx(driver)
    # 16 workers: 2 s / 16 = 125 ms a frame binds; 256 workers: 7.8 ms, the driver's 16.2 binds
    # (the big runs' wall grows as 1 + (1 + 0.01 N) N: their intercept, the fixed cost, is 1 s
    # minus the curvature's share, 0.01 * 10 * 30 = 3 s: clipped to 0)
    fixed = stage["fixed_s"]
    assert fixed == 0.0
    assert model["projection"][16]["frames_per_s"] == pytest.approx(10_000 / (10_000 * 2 / 16))
    assert model["projection"][16]["stages"]["level2"]["limit"] == "workers"
    assert model["projection"][256]["frames_per_s"] == pytest.approx(1 / driver)
    assert model["projection"][256]["stages"]["level2"]["limit"].startswith("driver process")
    assert model["first_limit"]["workers"] == pytest.approx(2.0 / driver)
