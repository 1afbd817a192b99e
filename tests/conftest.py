"""Shared fixtures: real data folders, small FITS factories, a local Dask cluster."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# the photutils baselines the tests check lcdask against live with the benchmarks
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


# `make test` runs the suite on two processes (pytest-xdist, --dist loadgroup): each test file is
# a group that one process runs whole (its module fixtures are made once), and files that share
# an expensive session fixture are one group, so that it too is made once.
_SHARED_GROUPS = {
    "test_api.py": "lowell_run",
    "test_real_runs.py": "lowell_run",
    "test_small_telescope.py": "smalltel_run",
    "test_star_flat.py": "smalltel_run",
    "test_target_photometry.py": "smalltel_run",
}


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(item.path)
        group = "reliability" if path.parent.name == "reliability" else path.name
        item.add_marker(pytest.mark.xdist_group(_SHARED_GROUPS.get(path.name, group)))


@pytest.fixture
def no_network(monkeypatch):
    """Fail on any real connection (the online code paths are tested on recorded answers)."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def shared_data(name: str) -> Path:
    """Path of a real data set in ../shared/data, or skip when the folder is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {name} not found at {path}")
    return path


@pytest.fixture(scope="session")
def c14_frames() -> Path:
    """asteroid2713_c14: 25 lights, 5 darks, 10 bias in one folder."""
    return shared_data("asteroid2713_c14") / "frames"


@pytest.fixture(scope="session")
def lowell_dir() -> Path:
    """asteroid5945_lowell42: bias/, flat/, science/ with overscan and string-valued WCS keys."""
    return shared_data("asteroid5945_lowell42")


def write_fits(
    path: Path,
    data: np.ndarray | None = None,
    *,
    shape: tuple[int, int] = (40, 50),
    imagetyp: str = "Light Frame",
    date_obs: str | None = "2024-05-01T03:00:00.000",
    exptime: float | None = 30.0,
    seed: int = 0,
    **keys,
) -> np.ndarray:
    """Write a small uint16 camera-like FITS frame and return its pixel values."""
    if data is None:
        data = np.random.default_rng(seed).integers(900, 1200, size=shape).astype(np.uint16)
    hdu = fits.PrimaryHDU(data)
    hdu.header["IMAGETYP"] = imagetyp
    if date_obs is not None:
        hdu.header["DATE-OBS"] = date_obs
    if exptime is not None:
        hdu.header["EXPTIME"] = exptime
    for key, value in keys.items():
        hdu.header[key.replace("_", "-") if key == "DATE_AVG" else key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    hdu.writeto(path, overwrite=True)
    return data


@pytest.fixture
def dask_local_client():
    """A real LocalCluster of two worker processes, one thread each."""
    from lcdask.cluster import dask_client

    with dask_client(n_workers=2, dashboard=False) as client:
        yield client


@pytest.fixture(scope="session")
def session_client():
    """A LocalCluster of two worker processes shared by the long end-to-end runs of the suite."""
    from lcdask.cluster import dask_client

    with dask_client(n_workers=2, dashboard=False) as client:
        yield client


def lowell_frame(path: Path):
    """A Lowell science frame trimmed and overscan-subtracted, its header WCS moved into the
    trimmed frame (the header's is in raw-frame pixels), and its detections:
    ``(header, image, wcs, detections)``."""
    from lcdask.detect import detect_frame
    from lcdask.io.fits import read_frame
    from lcdask.io.headers import header_wcs, parse_section

    header = fits.getheader(path)
    image = read_frame(path, trimsec=header["TRIMSEC"], biassec=header["BIASSEC"])
    wcs = header_wcs(header)
    ys, xs = parse_section(header["TRIMSEC"])
    wcs.wcs.crpix = np.asarray(wcs.wcs.crpix) - [xs.start, ys.start]
    wcs.wcs.set()
    detections, _ = detect_frame(image, saturation=55000.0)
    return header, image, wcs, detections


def catalog_of(detections, wcs):
    """A frame's detections on the sky through its WCS, as a catalog (``ra``, ``dec``, ``mag``)."""
    import pandas as pd

    ra, dec = wcs.pixel_to_world_values(detections["x"], detections["y"])
    mag = -2.5 * np.log10(np.clip(detections["flux"].to_numpy(), 1.0, None))
    return pd.DataFrame({"ra": ra, "dec": dec, "mag": mag})


@pytest.fixture(scope="session")
def lowell_run(lowell_dir, tmp_path_factory, session_client) -> Path:
    """A whole `lcdask.run.run` of the Lowell night, with no reference catalog."""
    from lcdask.run import run

    out = tmp_path_factory.mktemp("lowell") / "run"
    run(
        [lowell_dir / "bias", lowell_dir / "flat", lowell_dir / "science"],
        out,
        client=session_client,
    )
    return out


@pytest.fixture(scope="session")
def smalltel_run(tmp_path_factory, session_client) -> tuple[Path, dict]:
    """The small-telescope preset (seed 1, 30 frames of 512 px) and `lcdask.run.run` on its raw
    folder, offline, with the target's position only: ``(base, record)``, the night in
    ``base / "sim"`` (truth in ``sim/truth``) and the run in ``base / "run"``.

    Skipped, with the reason printed, where solve-field or its index files are missing (the
    preset's sky is the real Tycho-2 sky, solved blind)."""
    import shutil

    from lcdask.config import load_config
    from lcdask.io.anindex import find_index_files
    from lcdask.run import run
    from lcdask.simulate import simulate_night, small_telescope_config

    why = ""
    if shutil.which("solve-field") is None:
        why = "solve-field not installed (scripts/install-system-deps.sh)"
    elif not find_index_files():
        why = "no astrometry.net index files (scripts/install-system-deps.sh)"
    if why:
        print(f"skipped: {why}")
        pytest.skip(why)
    base = tmp_path_factory.mktemp("smalltel")
    simulate_night(base / "sim", small_telescope_config(n_frames=30, size=512, seed=1), n_workers=1)
    record = run(
        base / "sim" / "raw",
        base / "run",
        config=load_config(catalog={"offline": True}),
        target="19:07:14.035 +49:18:59.07",  # TrES-2, as an observer would type it
        client=session_client,
    )
    return base, record


@pytest.fixture(autouse=True)
def _lcdask_logger_restored():
    """Each test starts with the "lcdask" logger as the last left it untouched by the CLI.

    `lcdask.cli.main` gives the logger its stderr handler and stops it propagating (so that
    caplog, which listens at the root, hears nothing in the tests run after it in a process).
    """
    import logging

    logger = logging.getLogger("lcdask")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
