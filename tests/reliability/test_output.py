"""Where the products go fails: a read-only output directory, a disk that fills up.

The run stops with one clear error line (no traceback), leaves no half-written product, and, once
the disk has room again, a rerun resumes and completes with the clean products.

Both need a filesystem of their own: a tmpfs mounted here when this process may mount (root in a
container), else a directory made read-only by its mode (which binds only users other than root)
and a file-size limit (RLIMIT_FSIZE) standing in for the full disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
from pathlib import Path

import pytest
from _night import assert_products_whole, assert_same_products, run_cli, run_here

pytest_plugins = ["_fixtures"]  # the suite's fixtures: night, clean, other_night


def _mount(target: Path, *options: str) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(target)],
        capture_output=True,
    )
    return result.returncode == 0


def _umount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@contextlib.contextmanager
def read_only_dir(path: Path):
    """A read-only directory at ``path``: a read-only tmpfs, or mode 0555 for other users."""
    if os.geteuid() == 0:
        if not _mount(path, "ro", "size=1m"):
            pytest.skip("root without the right to mount: cannot make a read-only directory")
        try:
            yield path
        finally:
            _umount(path)
    else:
        path.mkdir(parents=True)
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)


def _error_lines(stderr: str, command: str = "run") -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"lcdask {command}: error:")]


@pytest.fixture(scope="module")
def read_only_run(night, tmp_path_factory):
    with read_only_dir(tmp_path_factory.mktemp("ro") / "run") as out:
        process = run_cli(night / "raw", out, night)
        yield process, out, sorted(out.iterdir())


def test_read_only_output_fails_and_writes_nothing(read_only_run):
    process, _, entries = read_only_run
    assert process.returncode != 0
    assert entries == []  # not a byte written


def test_read_only_output_is_one_clear_line(read_only_run):
    process, out, _ = read_only_run
    assert "Traceback" not in process.stderr, process.stderr
    errors = _error_lines(process.stderr)
    assert len(errors) == 1 and str(out) in errors[0], process.stderr
    assert "read-only" in errors[0].lower() or "permission" in errors[0].lower()


# --- the disk fills ------------------------------------------------------------------------------

SMALL_DISK = "2500k"
"""Room for the cube of raw frames (about 1.6 MB) but not for the calibrated frames as well."""


@pytest.fixture(scope="module")
def full_disk_run(night, tmp_path_factory):
    """A run whose disk fills during the calibration; then the disk grows and it is rerun."""
    out = tmp_path_factory.mktemp("full") / "run"
    mounted = os.geteuid() == 0 and _mount(out, f"size={SMALL_DISK}")
    try:
        if mounted:
            process = run_cli(night / "raw", out, night)
        else:  # a per-file size limit: the same failure (EFBIG rather than ENOSPC) for the code

            def limit() -> None:
                signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
                resource.setrlimit(resource.RLIMIT_FSIZE, (150_000, 150_000))

            process = run_cli(night / "raw", out, night, preexec_fn=limit)
        yield process, out, mounted
    finally:
        if mounted:
            _umount(out)


def test_full_disk_stops_the_run(full_disk_run, clean):
    process, out, _ = full_disk_run
    assert process.returncode != 0
    found = assert_products_whole(out, clean.out)  # what is there is whole
    record = json.loads((out / "run.json").read_text())
    assert "lightcurves" not in record["stages"] and "sources.parquet" not in found


def test_full_disk_is_one_clear_line(full_disk_run):
    process, _, _ = full_disk_run
    assert "Traceback" not in process.stderr, process.stderr
    errors = _error_lines(process.stderr)
    assert len(errors) == 1, process.stderr
    assert "no space left" in errors[0].lower() or "too large" in errors[0].lower()


def test_full_disk_rerun_with_room_completes(full_disk_run, night, clean):
    _, out, mounted = full_disk_run
    if mounted:
        grown = subprocess.run(
            ["mount", "-o", "remount,size=64m", str(out)], capture_output=True, text=True
        )
        assert grown.returncode == 0, grown.stderr
    # rerun here (serially, with the configuration of the CLI's `--workers 1`), to save the
    # start of a cluster and the report: the stages and the products are the same
    record = run_here(night / "raw", out, night, workers=1).record
    assert record["stages"]["ingest"].get("reused")  # what was whole was kept
    assert_same_products(out, clean.out)
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
