"""The parallel layer (`lcdask.stages._parallel`): one retry policy, serial and on a cluster."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from lcdask.stages import _parallel
from lcdask.stages._parallel import RETRIES, map_frames, share, submit_task


def _flaky(counter: str, fails: int, code: int, value: int) -> int:
    """Raises ``OSError(code)`` on its first ``fails`` calls (counted in a file), then doubles."""
    path = Path(counter)
    calls = int(path.read_text()) if path.exists() else 0
    path.write_text(str(calls + 1))
    if calls < fails:
        raise OSError(code, "simulated")
    return 2 * value


def _calls(path: Path) -> int:
    return int(path.read_text())


@pytest.fixture
def no_wait(monkeypatch):
    monkeypatch.setattr(_parallel, "_RETRY_WAIT_S", 0.0)


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False) as cluster:
        with Client(cluster) as c:
            yield c


@pytest.mark.parametrize("on_cluster", [False, True])
def test_a_passing_file_system_error_is_retried(tmp_path, no_wait, client, on_cluster):
    counter = tmp_path / "calls"
    result = map_frames(
        client if on_cluster else None,
        _flaky,
        [str(counter)],
        [RETRIES],
        [errno.EIO],
        [21],
        label="test",
    )
    assert result == [42]
    assert _calls(counter) == RETRIES + 1


@pytest.mark.parametrize("on_cluster", [False, True])
def test_retries_end(tmp_path, no_wait, client, on_cluster):
    counter = tmp_path / "calls"
    with pytest.raises(OSError, match="simulated"):
        task = submit_task(
            client if on_cluster else None, _flaky, str(counter), RETRIES + 1, errno.ESTALE, 1
        )
        if on_cluster:
            task.result()
    assert _calls(counter) == RETRIES + 1


@pytest.mark.parametrize("code", [errno.ENOENT, errno.ENOSPC])
def test_a_missing_file_or_a_full_disk_is_not_retried(tmp_path, no_wait, client, code):
    counter = tmp_path / "calls"
    with pytest.raises(OSError):
        submit_task(client, _flaky, str(counter), 5, code, 1).result()
    assert _calls(counter) == 1


def test_task_keys_name_the_step(client):
    future = submit_task(client, _flaky, "/nonexistent/never-written", 0, 0, 1, name="plot-x")
    assert future.key.startswith("lcdask-plot-x-")
    future.cancel()
    shared = share(client, [1, 2], broadcast=False)
    assert [f.result() for f in shared] == [1, 2]
    assert share(None, [1, 2]) == [1, 2]
