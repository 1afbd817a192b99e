"""Cluster choice: local processes, and the batch job a Slurm/PBS configuration submits."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import dask
import pytest

from lcdask.cluster import _connected, _HandledFailureFilter, batch_cluster, dask_client
from lcdask.config import ClusterConfig
from lcdask.errors import LcdaskError, SchedulerLostError


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


class _Client:
    """A stand-in for a distributed.Client: its connection status, and whether it was closed."""

    def __init__(self, status: str = "running") -> None:
        self.status = status
        self.closed = False

    def close(self) -> None:
        self.closed = True


def _lost_future():
    from distributed.client import FutureCancelledError

    return FutureCancelledError("task-0", "scheduler-connection-lost", "Client lost the connection")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("running", _lost_future()),  # the futures are cancelled: lost, whatever the status
        ("connecting", asyncio.CancelledError()),
        ("closed", OSError("Timed out trying to connect to tcp://127.0.0.1:8786 after 5 s")),
    ],
)
def test_losing_the_scheduler_is_one_error(status, error):
    client = _Client(status)
    with pytest.raises(SchedulerLostError, match=r"^lost the Dask scheduler \(tcp://h:1: ") as lost:
        with _connected(client, "tcp://h:1"):
            raise error
    assert "\n" not in str(lost.value) and "run the same command" in str(lost.value)
    assert client.closed


@pytest.mark.parametrize(
    "error",
    [
        OSError(28, "No space left on device"),  # the work's own error, the client connected
        KeyboardInterrupt(),  # never turned into anything else
        RuntimeError("a bug in a task"),
    ],
)
def test_other_errors_pass_unchanged(error):
    client = _Client("running")
    with pytest.raises(type(error)) as raised:
        with _connected(client, "tcp://h:1"):
            raise error
    assert raised.value is error and client.closed


def test_no_scheduler_to_connect_to_is_one_error():
    with socket.socket() as free:  # a port with nothing listening
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(LcdaskError, match="cannot connect to the Dask scheduler"):
            with dask_client(scheduler=f"tcp://127.0.0.1:{port}"):
                pass


def _compute_failed(exception_text: str) -> logging.LogRecord:
    """A worker's record of a failed task, as distributed words it."""
    return logging.LogRecord(
        "distributed.worker",
        logging.ERROR,
        "worker.py",
        1,
        "Compute Failed\nKey:       %s\nState:     %s\nTask:  %s\nException: %r\nTraceback: %r\n",
        ("store-map-1", "executing", "<Task store-map-1>", exception_text, "  File ...\n"),
        None,
    )


@pytest.mark.parametrize(
    ("exception_text", "logged"),
    [
        ("OSError(28, 'No space left on device')", False),  # the driver's error line says it
        ("OSError(27, 'File too large')", False),
        ("OSError(30, 'Read-only file system')", False),
        ("FileNotFoundError(2, 'No such file or directory')", True),  # not a write without room
        ("ValueError(28, 'a bug that looks like one')", True),  # not an OSError
        ("ValueError('a bug in a task')", True),
        # handled by the driver, which says it in one line and keeps the reason in run.json
        ("FrameError('/n/a.fits: not a readable FITS file')", False),
        ("LcdaskError('ensemble photometry needs at least 2 comparison stars, found 0')", False),
        ("HeaderError('/n/a.fits: no exposure time')", False),
        ("KeyError('frame_type')", True),  # a bug
    ],
)
def test_worker_logs_every_failed_task_but_handled_ones(exception_text, logged):
    assert _HandledFailureFilter().filter(_compute_failed(exception_text)) is logged


def test_worker_logs_its_other_records():
    record = logging.LogRecord("distributed.worker", logging.ERROR, "w.py", 1, "%s", ("x",), None)
    assert _HandledFailureFilter().filter(record)


def _slow_square(x: int) -> int:
    import time

    time.sleep(0.2)
    return x * x


def test_progress_bar_on_stderr_only_when_asked(dask_local_client, monkeypatch, capsys):
    from lcdask import progress

    monkeypatch.setenv("LCDASK_PROGRESS", "1")
    futures = dask_local_client.map(_slow_square, range(6), pure=False)
    progress.show(futures, "level2: detection")
    assert dask_local_client.gather(futures) == [x * x for x in range(6)]
    out, err = capsys.readouterr()
    assert out == ""  # stdout keeps the command's result
    assert "level2: detection" in err and "100%" in err and "#" * 40 in err
    monkeypatch.setenv("LCDASK_PROGRESS", "0")  # a batch job: no bars
    futures = dask_local_client.map(_slow_square, range(2), pure=False)
    progress.show(futures, "level2: detection")
    dask_local_client.gather(futures)
    assert capsys.readouterr() == ("", "")
