"""The whole run: products against truth, resuming, and a real distributed cluster."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from lcdask.astrometry import wcs_grid_error_px
from lcdask.coadd import Coadd
from lcdask.io.cube import open_cube
from lcdask.run import run
from lcdask.simulate import SimConfig, load_truth, simulate_night

LCDASK = [sys.executable, "-m", "lcdask"]


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "night"
    cfg = SimConfig(n_frames=24, size=448, seed=3, n_fast_movers=1, n_slow_movers=1)
    simulate_night(out, cfg, n_workers=1)
    return out


def _target(night: Path) -> str:
    stars = load_truth(night).stars
    target = stars[stars["is_target"]].iloc[0]
    return f"{target['ra']:.6f} {target['dec']:.6f}"


@pytest.fixture(scope="module")
def local_run(night, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "run"
    run(night / "raw", out, catalog=night / "refcat.parquet", target=_target(night))
    return out


def _matched_truth(sources: pd.DataFrame, stars: pd.DataFrame) -> pd.DataFrame:
    found = SkyCoord(sources["ra"].to_numpy(), sources["dec"].to_numpy(), unit="deg")
    true = SkyCoord(stars["ra"].to_numpy(), stars["dec"].to_numpy(), unit="deg")
    index, sep, _ = found.match_to_catalog_sky(true)
    near = sep.arcsec < 3
    return sources.assign(
        star_id=np.where(near, stars["star_id"].to_numpy()[index], -1),
        true_kind=np.where(near, stars["kind"].to_numpy()[index], "none"),
    )


def test_products_and_record(local_run):
    for product in (
        "cube.zarr",
        "frames.parquet",
        "detections.parquet",
        "lightcurves.zarr",
        "sources.parquet",
        "coadd.fits",
        "psf.fits",
        "run.json",
    ):
        assert (local_run / product).exists(), product
    record = json.loads((local_run / "run.json").read_text())
    # the co-add holds every solved frame (24 < coadd_frames) and its WCS
    with fits.open(local_run / "coadd.fits") as hdul:
        coadd = Coadd.from_hdulist(hdul)
    assert coadd.frames == tuple(record["stages"]["level2"]["coadd_frames"])
    assert len(coadd.frames) == 24 and coadd.n_used.max() == 24
    # north up: the rotated, drifting frames leave empty corners; every covered pixel has data
    assert coadd.wcs.has_celestial and (coadd.n_used == 24).mean() > 0.5
    assert np.isfinite(coadd.image[coadd.n_used > 0]).all()
    assert {"ingest", "calibrate", "level2", "lightcurves"} <= set(record["stages"])
    assert all(s["status"] == "complete" for s in record["stages"].values())
    assert record["versions"]["lcdask"] and record["config"]["calibration"]["clean"]
    frames = pd.read_parquet(local_run / "frames.parquet")
    assert len(frames) == 24 and (frames["astrometry_status"] == "ok").all()
    cube = open_cube(local_run)
    lights = cube["frame_type"].values == "light"
    assert np.isfinite(cube["zero_point"].values[lights]).all()  # per-frame results in the cube


def test_movers_and_target_against_truth(local_run, night):
    truth = load_truth(night)
    sources = _matched_truth(pd.read_parquet(local_run / "sources.parquet"), truth.stars)
    movers = truth.movers.set_index("star_id")
    found = sources[sources["kind"] == "moving"].set_index("star_id")
    assert set(movers.index) <= set(found.index)  # every injected mover found...
    for star_id, mover in movers.iterrows():
        true_rate = np.hypot(mover["rate_ra_arcsec_h"], mover["rate_dec_arcsec_h"])
        error = np.hypot(
            found.loc[star_id, "rate_ra_arcsec_h"] - mover["rate_ra_arcsec_h"],
            found.loc[star_id, "rate_dec_arcsec_h"] - mover["rate_dec_arcsec_h"],
        )
        assert error / true_rate < 0.02  # ...with its rate within 2%
    assert not ((sources["kind"] == "moving") & (sources["true_kind"] == "stable")).any()
    target = sources[sources["is_target"]]
    assert len(target) == 1
    assert truth.stars.set_index("star_id").loc[target["star_id"].iloc[0], "is_target"]


def test_rerun_reuses_every_stage(local_run, night):
    before = pd.read_parquet(local_run / "sources.parquet")
    record = run(night / "raw", local_run, catalog=night / "refcat.parquet", target=_target(night))
    assert all(stage.get("reused") for stage in record["stages"].values())
    pd.testing.assert_frame_equal(pd.read_parquet(local_run / "sources.parquet"), before)


def _wait_for(path: Path, key: str, process: subprocess.Popen, timeout_s: float = 600) -> None:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            if key in json.loads(path.read_text()).get("stages", {}):
                return
        except (OSError, ValueError):
            pass
        if process.poll() is not None:
            pytest.fail(f"the run ended (status {process.returncode}) before stage {key}")
        time.sleep(0.2)
    pytest.fail(f"stage {key} not reached in {timeout_s} s")


def test_resume_after_sigkill_equals_uninterrupted(local_run, night, tmp_path):
    out = tmp_path / "killed"
    args = [
        *LCDASK,
        "run",
        str(night / "raw"),
        "--out",
        str(out),
        "--workers",
        "1",
        "--catalog",
        str(night / "refcat.parquet"),
        "--target",
        _target(night),
    ]
    process = subprocess.Popen(args, start_new_session=True, stderr=subprocess.DEVNULL)
    _wait_for(out / "run.json", "calibrate", process)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and its workers, mid-level2
    process.wait()
    assert not (out / "sources.parquet").exists()
    resumed = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["stages"]["ingest"].get("reused") and record["stages"]["calibrate"].get("reused")
    detections = pd.read_parquet(out / "detections.parquet")
    assert not detections.duplicated(["frame", "x", "y"]).any()  # no frame twice
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "sources.parquet"), pd.read_parquet(local_run / "sources.parquet")
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_scheduler_and_workers_equal_local(local_run, night, tmp_path):
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    bin_dir = Path(sys.executable).parent
    scheduler = subprocess.Popen(
        [
            str(bin_dir / "dask"),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dashboard-address",
            ":0",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers = [
        subprocess.Popen(
            [
                str(bin_dir / "dask"),
                "worker",
                f"tcp://127.0.0.1:{port}",
                "--nthreads",
                "1",
                "--nworkers",
                "1",
                "--no-dashboard",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        out = tmp_path / "distributed"
        result = subprocess.run(
            [
                *LCDASK,
                "run",
                str(night / "raw"),
                "--out",
                str(out),
                "--scheduler",
                f"tcp://127.0.0.1:{port}",
                "--catalog",
                str(night / "refcat.parquet"),
                "--target",
                _target(night),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, result.stderr
        pd.testing.assert_frame_equal(
            pd.read_parquet(out / "sources.parquet"),
            pd.read_parquet(local_run / "sources.parquet"),
        )
        a, b = open_cube(out), open_cube(local_run)
        np.testing.assert_array_equal(a["calibrated"].values, b["calibrated"].values)
    finally:
        for process in [*workers, scheduler]:
            process.terminate()
        for process in [*workers, scheduler]:
            process.wait(timeout=30)


def test_frames_added_later_are_appended_alone(night, local_run, tmp_path):
    """The night goes on: a rerun with new lights in the folder processes them alone."""
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(night / "raw", raw)
    lights = sorted(raw.glob("light_*.fits"))
    late = tmp_path / "late"
    late.mkdir()
    for path in lights[18:]:
        shutil.move(path, late / path.name)
    out = tmp_path / "run"
    run(raw, out, catalog=night / "refcat.parquet", target=_target(night))
    first = pd.read_parquet(out / "frames.parquet")
    first_detections = pd.read_parquet(out / "detections.parquet")
    for path in late.iterdir():
        shutil.move(path, raw / path.name)
    record = run(raw, out, catalog=night / "refcat.parquet", target=_target(night))

    # appended: the new frames went through ingest, calibration and Level 2 alone
    for stage in ("ingest", "calibrate", "level2"):
        assert record["stages"][stage]["appended"] == 6, record["stages"][stage]
    assert not any(s.get("reused") for s in record["stages"].values())
    cube = open_cube(out)
    names = [Path(p).name for p in cube["path"].values]
    assert len(names) == len(set(names)) == len(open_cube(local_run)["path"])  # none twice
    assert np.all(np.diff(cube["time_mjd"].values[cube["frame_type"].values == "light"]) > 0)
    frames = pd.read_parquet(out / "frames.parquet")
    assert len(frames) == 24 and (frames["astrometry_status"] == "ok").all()
    # the earlier frames are untouched...
    pd.testing.assert_frame_equal(frames.iloc[:18].reset_index(drop=True), first)
    detections = pd.read_parquet(out / "detections.parquet")
    old = detections[detections["frame"].isin(first["frame"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(old, first_detections, check_like=True)
    # ...and the new ones are measured as in a run of the whole night: the same pixels calibrated,
    # the same plate solutions and zero points (the reference frame may differ)
    whole = open_cube(local_run)
    full_detections = pd.read_parquet(local_run / "detections.parquet")
    for index in frames["frame"].iloc[18:]:
        name = names[index]
        twin = [Path(p).name for p in whole["path"].values].index(name)
        np.testing.assert_allclose(
            cube["calibrated"][index].values, whole["calibrated"][twin].values, rtol=1e-6, atol=1e-3
        )
        wcs = WCS(fits.Header.fromstring(str(cube["wcs_solved"].values[index])))
        wcs_full = WCS(fits.Header.fromstring(str(whole["wcs_solved"].values[twin])))
        assert wcs_grid_error_px(wcs, wcs_full, (448, 448)) < 0.05
        # the calibrated magnitudes of the frame's stars (the zero point itself absorbs the
        # aperture correction of each run's own co-add ePSF)
        mine = detections[detections["frame"] == index].set_index(["x", "y"])["mag"]
        theirs = full_detections[full_detections["frame"] == twin].set_index(["x", "y"])["mag"]
        both = mine.to_frame("a").join(theirs.to_frame("b"), how="inner")
        bright = both[both["b"] < 17]
        assert len(bright) >= 10 and abs(np.median(bright["a"] - bright["b"])) < 0.005
    # and the light curves span the whole night: every mover found over all 24 frames
    truth = load_truth(night)
    sources = _matched_truth(pd.read_parquet(out / "sources.parquet"), truth.stars)
    assert set(truth.movers["star_id"]) <= set(sources.loc[sources["kind"] == "moving", "star_id"])
    assert xr.open_zarr(out / "lightcurves.zarr").sizes["frame"] == 24
