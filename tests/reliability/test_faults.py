"""Faults of the machinery: a worker killed, the scheduler lost, the driver killed while writing.

A lost worker costs nothing (Dask reruns its tasks elsewhere, the products are the same); a lost
scheduler ends the run with one clear error and a state a rerun on a new cluster completes; a run
killed at any moment leaves every product either whole or absent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from _night import (
    assert_products_whole,
    assert_same_products,
    cli_args,
    run_cli,
    run_here,
    slow_detections,
)

pytest_plugins = ["_fixtures"]  # the suite's fixtures: night, clean, other_night

PER_FRAME_TASK = "lcdask-safe-detections"  # Level 2's per-frame tasks' key prefix (_parallel)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _per_frame_worker(client) -> str | None:
    """A worker now running a per-frame task, or None."""
    for address, keys in client.processing().items():
        if any(str(key).startswith(PER_FRAME_TASK) for key in keys):
            return address
    return None


def test_worker_killed_during_per_frame_stage(night, clean, tmp_path):
    from lcdask.cluster import dask_client

    killed: list[int] = []
    done = threading.Event()

    with dask_client(n_workers=2, dashboard=False) as client:
        client.run(slow_detections(0.5))  # 8 frames of >= 0.5 s: the kill lands inside the stage

        def kill_one() -> None:
            while not done.is_set():
                address = _per_frame_worker(client)
                if address:
                    pid = client.run(os.getpid, workers=[address])[address]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
                time.sleep(0.02)

        killer = threading.Thread(target=kill_one, daemon=True)
        killer.start()
        try:
            result = run_here(night / "raw", tmp_path / "run", night, client=client)
        finally:
            done.set()
            killer.join(timeout=30)
    assert killed, "no worker was running a per-frame task"
    assert all(s["status"] == "complete" for s in result.record["stages"].values())
    assert_same_products(result.out, clean.out)  # Dask reran the lost tasks: nothing lost, no twin


# --- the scheduler lost ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "dask"), *args],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def scheduler_lost(night, tmp_path_factory):
    """A CLI run on a scheduler that is killed in Level 2: (the process' result, the run dir)."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = _dask(
        "scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"
    )
    worker = _dask("worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard")
    out = tmp_path_factory.mktemp("scheduler-lost") / "run"
    try:
        client = Client(address, timeout=60)
        client.wait_for_workers(1, timeout=60)
        client.run(slow_detections(1.0))
        env = {**ENV, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s"}
        process = subprocess.Popen(
            cli_args(night / "raw", out, night, "--scheduler", address),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 300
        while _per_frame_worker(client) is None:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "Level 2 never started"
            time.sleep(0.05)
        scheduler.send_signal(signal.SIGKILL)
        scheduler.wait()
        client.close(timeout=5)
        try:
            _, stderr = process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
            pytest.fail(f"the run hung after losing its scheduler:\n{stderr}")
        yield process.returncode, stderr, out
    finally:
        for p in (worker, scheduler):
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=30)


def test_scheduler_lost_is_one_clear_error(scheduler_lost):
    status, stderr, _ = scheduler_lost
    assert status != 0
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("lcdask run: error:")]
    assert len(errors) == 1 and "scheduler" in errors[0], stderr


def test_scheduler_lost_leaves_a_resumable_state(scheduler_lost, clean):
    status, _, out = scheduler_lost
    assert status != 0
    record = json.loads((out / "run.json").read_text())
    assert {"ingest", "calibrate"} <= set(record["stages"]) and "level2" not in record["stages"]
    assert_products_whole(out, clean.out)


@pytest.fixture(scope="module")
def rerun_on_new_cluster(scheduler_lost, night):
    """The lost run, run again on a new (local) cluster."""
    _, _, out = scheduler_lost
    return run_cli(night / "raw", out, night), out


def test_rerun_on_a_new_cluster_completes(rerun_on_new_cluster, clean):
    rerun, out = rerun_on_new_cluster
    assert rerun.returncode == 0, rerun.stderr
    assert_same_products(out, clean.out)


def test_rerun_on_a_new_cluster_reuses_finished_stages(rerun_on_new_cluster):
    _, out = rerun_on_new_cluster
    record = json.loads((out / "run.json").read_text())
    assert record["stages"]["ingest"].get("reused") and record["stages"]["calibrate"].get("reused")


# --- killed at random moments --------------------------------------------------------------------


def _started(out: Path) -> str | None:
    try:
        return json.loads((out / "run.json").read_text()).get("started")
    except (OSError, ValueError):
        return None


def _wait(process: subprocess.Popen, ready, timeout_s: float = 300) -> bool:
    """Wait until ``ready()``; False when the process ended first."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process.poll() is not None:
            return False
        assert time.monotonic() < deadline, "the run made no progress"
        time.sleep(0.02)
    return True


def _stage_done(out: Path, stage: str, before: str | None):
    """True once this run (not an earlier one) has recorded ``stage`` complete in run.json."""

    def ready() -> bool:
        try:
            record = json.loads((out / "run.json").read_text())
        except (OSError, ValueError):
            return False
        return record.get("started") != before and stage in record.get("stages", {})

    return ready


def test_sigkill_at_random_moments_leaves_products_whole_or_absent(night, clean, tmp_path):
    """Kill ``lcdask run`` (driver and workers) at random moments of each stage, resuming.

    Kill 1 lands while the cube is being written, kill 2 a random moment into the calibration,
    kill 3 into Level 2, kill 4 into the light curves and the report; each rerun resumes from
    what the last one finished. After each kill every product there must be whole (equal to the
    clean run's); the last, uninterrupted rerun must give the clean products.
    """
    out = tmp_path / "run"
    rng = np.random.default_rng(20)
    args = cli_args(night / "raw", out, night, "--workers", "1")
    moments = [
        ("writing cube.zarr", lambda before: lambda: any(out.glob(".cube.zarr.tmp-*")), 0.5),
        ("calibrate", lambda before: _stage_done(out, "ingest", before), 1.5),
        ("level2", lambda before: _stage_done(out, "calibrate", before), 2.0),
        ("lightcurves and report", lambda before: _stage_done(out, "level2", before), 1.5),
    ]
    seen = {}
    for label, condition, spread_s in moments:
        before = _started(out)
        process = subprocess.Popen(
            args, env=ENV, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if _wait(process, condition(before)):
            time.sleep(rng.uniform(0, spread_s))
            os.killpg(process.pid, signal.SIGKILL)  # the driver and its workers
        _, stderr = process.communicate()
        assert process.returncode in (0, -signal.SIGKILL), stderr
        seen[label] = assert_products_whole(out, clean.out)
    final = run_cli(night / "raw", out, night)
    assert final.returncode == 0, final.stderr
    assert_products_whole(out, clean.out)
    assert_same_products(out, clean.out)
    print("products after each kill:", seen)
