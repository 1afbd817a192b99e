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
from lcdask.classify import link_tracks
from lcdask.coadd import Coadd
from lcdask.io.cube import open_cube
from lcdask.lightcurves import LightCurveFlag, build_lightcurves, insert_forced
from lcdask.match import match_detections
from lcdask.psf import PSFModel
from lcdask.run import run
from lcdask.simulate import SimConfig, catalog_flux_adu, flux_factor, load_truth, simulate_night
from lcdask.stages.forced import forced_photometry, frame_forced_photometry
from lcdask.stages.level2 import Level2Config

LCDASK = [sys.executable, "-m", "lcdask"]
MAD_TO_STD = 1.4826


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
def local_run(night, tmp_path_factory, session_client) -> Path:
    out = tmp_path_factory.mktemp("local") / "run"
    run(
        night / "raw",
        out,
        catalog=night / "refcat.parquet",
        target=_target(night),
        client=session_client,
    )
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


def _mover_at(sources: pd.DataFrame, mover: pd.Series) -> pd.Series:
    """The moving source within 3" of a truth mover, both at the truth's epoch t0.

    A mover's ra/dec are at its own epoch (its frames' mean time, ``epoch_mjd``): the fast one
    crosses ~2' in the night, and which of its faint detections pass the threshold moves that
    mean position by arcseconds, so it is moved to t0 with its rates first.
    """
    moving = sources[sources["kind"] == "moving"]
    dt_h = (mover["t0_mjd"] - moving["epoch_mjd"].to_numpy()) * 24
    cos_dec = np.cos(np.radians(mover["dec0"]))
    ra = moving["ra"].to_numpy() + moving["rate_ra_arcsec_h"].to_numpy() * dt_h / 3600 / cos_dec
    dec = moving["dec"].to_numpy() + moving["rate_dec_arcsec_h"].to_numpy() * dt_h / 3600
    sep = np.hypot((ra - mover["ra0"]) * cos_dec, dec - mover["dec0"]) * 3600
    assert len(sep) and sep.min() < 3, (mover["star_id"], sep)
    return moving.iloc[int(np.argmin(sep))]


def test_products_and_record(local_run, night):
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
    # the co-add holds 20 solved frames (coadd_frames) spread over the 24, and its WCS
    with fits.open(local_run / "coadd.fits") as hdul:
        coadd = Coadd.from_hdulist(hdul)
    assert coadd.frames == tuple(record["stages"]["level2"]["coadd_frames"])
    steps = record["stages"]["level2"]["step_seconds"]  # each step of Level 2 timed, in order
    assert list(steps) == ["detection", "reference", "astrometry", "coadd", "epsf", "photometry"]
    assert 0 < sum(steps.values()) <= record["stages"]["level2"]["seconds"]
    frames = pd.read_parquet(local_run / "frames.parquet")["frame"].to_numpy()
    assert coadd.frames[0] == frames[0] and coadd.frames[-1] == frames[-1]
    assert len(coadd.frames) == 20 and coadd.n_used.max() == 20
    # north up: the rotated, drifting frames leave empty corners; every covered pixel has data
    assert coadd.wcs.has_celestial and (coadd.n_used == 20).mean() > 0.5
    assert np.isfinite(coadd.image[coadd.n_used > 0]).all()
    assert (local_run / "plots" / "movers_coadd.png").stat().st_size > 10_000  # tracks on it
    assert {"ingest", "calibrate", "level2", "lightcurves"} <= set(record["stages"])
    assert all(s["status"] == "complete" for s in record["stages"].values())
    assert record["versions"]["lcdask"] and record["config"]["calibration"]["clean"]
    ra, dec = (float(v) for v in _target(night).split())
    assert record["target"]["source"] == "given"  # coordinates: no SIMBAD
    assert (record["target"]["ra"], record["target"]["dec"]) == pytest.approx((ra, dec))
    frames = pd.read_parquet(local_run / "frames.parquet")
    assert len(frames) == 24 and (frames["astrometry_status"] == "ok").all()
    cube = open_cube(local_run)
    lights = cube["frame_type"].values == "light"
    assert np.isfinite(cube["zero_point"].values[lights]).all()  # per-frame results in the cube


def test_the_cube_keeps_its_attributes_through_the_run(local_run):
    """The calibration's marker and summary and ingest's skipped and typed files survive the
    later stages' writes into the cube (xarray's ``to_zarr(mode="a")`` of the per-frame Level 2
    results replaced the group's attributes with none: every run lost them)."""
    cube = open_cube(local_run)
    summary = json.loads(cube.attrs["calibration"])
    assert summary["complete"] and summary["n_lights"] == 24
    assert json.loads(cube.attrs["skipped"]) == [] and json.loads(cube.attrs["typed"]) == []
    assert "fwhm_px" in cube  # Level 2's per-frame results were written


def test_movers_and_target_against_truth(local_run, night):
    truth = load_truth(night)
    sources = _matched_truth(pd.read_parquet(local_run / "sources.parquet"), truth.stars)
    for _, mover in truth.movers.iterrows():
        found = _mover_at(sources, mover)  # every injected mover found...
        true_rate = np.hypot(mover["rate_ra_arcsec_h"], mover["rate_dec_arcsec_h"])
        error = np.hypot(
            found["rate_ra_arcsec_h"] - mover["rate_ra_arcsec_h"],
            found["rate_dec_arcsec_h"] - mover["rate_dec_arcsec_h"],
        )
        assert error / true_rate < 0.02  # ...with its rate within 2%
    assert not ((sources["kind"] == "moving") & (sources["true_kind"] == "stable")).any()
    target = sources[sources["is_target"]]
    assert len(target) == 1
    assert truth.stars.set_index("star_id").loc[target["star_id"].iloc[0], "is_target"]


def _truth_flux(truth, ra, dec, time_mjd) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth total flux (ADU) of the star nearest each (ra, dec) at each time, its separation
    (arcsec) and kind."""
    stars = truth.stars
    found = SkyCoord(np.asarray(ra), np.asarray(dec), unit="deg")
    index, sep, _ = found.match_to_catalog_sky(SkyCoord(stars["ra"], stars["dec"], unit="deg"))
    frames = truth.frames
    fi = np.abs(frames["time_mjd"].to_numpy()[None, :] - np.asarray(time_mjd)[:, None]).argmin(1)
    star = stars.iloc[index]
    flux = catalog_flux_adu(
        star["mag"].to_numpy(),
        frames["zero_point"].to_numpy()[fi],
        frames["slope"].to_numpy()[fi],
        frames["exptime_s"].to_numpy()[fi],
    )
    factor = np.array([flux_factor(star.iloc[k], t) for k, t in enumerate(time_mjd)], float)
    return flux * factor, sep.arcsec, star["kind"].to_numpy()


def _pulls(truth, cells: pd.DataFrame) -> np.ndarray:
    """(flux - truth) / flux_err of the cells of fixed stars (moving ones and blends left out)."""
    true, sep, kind = _truth_flux(truth, cells["ra"], cells["dec"], cells["time_mjd"])
    fixed = (sep < 1.0) & (kind != "moving")
    return ((cells["flux"] - true) / cells["flux_err"]).to_numpy()[fixed]


def _cells(ds: xr.Dataset, which: np.ndarray) -> pd.DataFrame:
    si, fi = np.nonzero(which)
    return pd.DataFrame(
        {
            "ra": ds["ra"].values[si, fi],
            "dec": ds["dec"].values[si, fi],
            "time_mjd": ds["time_mjd"].values[fi],
            "flux": ds["flux"].values[si, fi],
            "flux_err": ds["flux_err"].values[si, fi],
            "mag": ds["mag"].values[si, fi],
        }
    )


def test_forced_photometry_of_missing_entries_against_truth(local_run, night):
    ds = xr.open_zarr(local_run / "lightcurves.zarr").load()
    record = json.loads((local_run / "run.json").read_text())
    summary = record["stages"]["lightcurves"]["forced"]
    flags = ds["flags"].values
    forced = (flags & LightCurveFlag.FORCED) != 0
    assert forced.sum() == summary["n_forced"] > 100
    assert not (forced & ((flags & LightCurveFlag.MISSING) != 0)).any()
    # the counts add up: every missing entry is forced, or left out with a reason
    left = ("n_skipped", "n_few_detections", "n_no_wcs", "n_outside")
    assert summary["n_missing"] == summary["n_forced"] + sum(summary[k] for k in left)
    assert summary["max_pull_redone"] < 0.01  # Level 2's photometry repeated (float32 ePSF)
    sources = pd.read_parquet(local_run / "sources.parquet")
    movers = np.isin(ds["source_id"].values, sources.loc[sources["kind"] == "moving", "source_id"])
    assert not forced[movers].any()  # movers are not forced
    cells = _cells(ds, forced & ((flags & 0xFF) == 0))  # no blend, edge, cosmic ray...
    assert np.isfinite(cells[["flux", "flux_err", "mag"]].to_numpy()).all()
    pull = _pulls(load_truth(night), cells)
    assert len(pull) > 100
    # Forced fluxes scatter about the truth as their errors say (147 cells: robust spread 1.06).
    # Their median is 0.66 sigma low: these are the frames where a faint star went undetected,
    # its low fluctuations (the lower half of a normal averages -0.8 sigma), on top of the
    # pipeline's own -0.4 sigma at these fluxes (fluxes 1.5% below the truth); randomly dropped
    # detections come back unbiased (next test).
    assert 0.8 < MAD_TO_STD * np.median(np.abs(pull - np.median(pull))) < 1.3
    assert -1.2 < np.median(pull) < 0.0
    assert np.mean(np.abs(pull) > 4) < 0.03


def test_forced_photometry_reuses_level3_cosmic_rays(local_run):
    """Forced photometry cleans the cosmic-ray pixels Level 3 recorded (frames.parquet) instead
    of detecting them again: the same measurements as detecting them again."""
    frames = pd.read_parquet(local_run / "frames.parquet").set_index("frame")
    detections = pd.read_parquet(local_run / "detections.parquet")
    with fits.open(local_run / "psf.fits") as hdus:
        psf = PSFModel.from_hdu(hdus["EPSF"])
    frame = int(frames["cosmic_pixels"].map(len).idxmax())  # the most hit frame (13 px)
    row = frames.loc[frame]
    pixels = np.asarray(row["cosmic_pixels"])
    assert pixels.dtype == np.int32 and 5 < len(pixels) < 0.001 * 448 * 448
    rng = np.random.default_rng(0)
    x, y = rng.uniform(20, 428, 50), rng.uniform(20, 428, 50)
    det = detections[detections["frame"] == frame][["x", "y", "flux"]]
    common = {k: float(row[k]) for k in ("fwhm_px", "aperture_correction", "psf_scale")}
    cube, config = local_run / "cube.zarr", Level2Config()
    tables = [
        frame_forced_photometry(cube, frame, x, y, det, common | {"cosmic_pixels": cr}, psf, config)
        for cr in (pixels, None)
    ]
    pd.testing.assert_frame_equal(tables[0][0], tables[1][0])
    assert tables[0][1] == tables[1][1] < 0.01


def test_forced_fills_dropped_detections_but_not_unsolved_frames(local_run, night):
    detections = pd.read_parquet(local_run / "detections.parquet")
    frames = pd.read_parquet(local_run / "frames.parquet")
    frames = frames.rename(columns={"astrometry_rms_arcsec": "rms_arcsec"})
    d = detections
    true, sep, kind = _truth_flux(load_truth(night), d["ra"], d["dec"], d["time_mjd"])
    detections = detections.assign(true_flux=true, sep=sep, kind=kind)
    # the pipeline's flux scale in each frame (detections over truth, 0.97-1.01 here), so that
    # the pulls test the forced photometry rather than the pipeline's calibration
    bright = (d["flags"] == 0) & (sep < 0.5) & (kind == "stable") & (d["flux"] / d["flux_err"] > 50)
    scale = (d["flux"] / true)[bright].groupby(d["frame"][bright]).median()
    # every clean stable star of r 16-19.5 detected in all frames loses its detections in
    # four random frames, and one more frame loses its plate solution
    detections["source"] = match_detections(detections, frames).source_id
    full = (
        detections[detections["source"] >= 0]
        .groupby("source")
        .filter(
            lambda g: (
                len(g) == len(frames)
                and (g["sep"] < 0.5).all()
                and (g["kind"] == "stable").all()
                and (g["flags"] == 0).all()
                and 16.0 < g["mag"].median() < 19.5
            )
        )
    )
    frame_ids = frames["frame"].to_numpy()
    unsolved = frame_ids[12]
    rng = np.random.default_rng(1)
    gone = np.zeros(len(detections), bool)
    for source in np.unique(full["source"]):
        lost = rng.choice(np.delete(frame_ids, 12), 4, replace=False)
        gone |= (detections["source"] == source).to_numpy() & detections["frame"].isin(lost)
    kept, gone = detections[~gone], detections[gone]
    assert gone["source"].nunique() >= 15  # 19: the photometry's flags leave few stars clean
    frames.loc[frames["frame"] == unsolved, ["astrometry_status", "wcs_solved"]] = ("failed", "")
    match = match_detections(kept, frames)
    tracks = link_tracks(kept, match.source_id, centre=match.centre)
    ds = build_lightcurves(kept, tracks.source_id, frames)
    with fits.open(local_run / "psf.fits") as hdus:
        psf = PSFModel.from_hdu(hdus["EPSF"])
    forced, summary = forced_photometry(
        ds, kept, frames, local_run / "cube.zarr", shape=(448, 448), psf=psf
    )
    # no WCS, no forced point
    assert not (forced["frame"] == unsolved).any()
    missing = (ds["flags"].values & LightCurveFlag.MISSING) != 0
    u = int(np.searchsorted(ds["frame"].values, unsolved))
    assert summary["n_no_wcs"] == missing[:, u].sum() > 0
    # every dropped detection comes back forced, unflagged
    new_id = (
        pd.Series(tracks.source_id, index=kept.index)
        .groupby(kept["source"])
        .agg(lambda s: s.mode().iloc[0])
    )
    cells = gone[["frame", "flux", "flux_err", "mag", "mag_err", "true_flux"]].assign(
        source_id=new_id.loc[gone["source"]].to_numpy()
    )
    cells = cells.merge(forced, on=["source_id", "frame"], suffixes=("_det", ""), how="left")
    assert cells["flux"].notna().all() and (cells["flags"] == 0).all()
    # the same flux as the detection's, but for the aperture's place (the mean position, not
    # the frame's noisy centroid): a small fraction of the error
    diff = (cells["flux"] - cells["flux_det"]) / cells["flux_err_det"]
    assert np.abs(diff).max() < 1.0 and diff.std() < 0.2
    assert (np.abs(cells["mag"] - cells["mag_det"]) < cells["mag_err_det"]).all()
    # and against the truth, the pulls of pure noise (120 cells: median within 0.3, spread
    # within 25%)
    true = cells["frame"].map(scale) * cells["true_flux"]
    pull = ((cells["flux"] - true) / cells["flux_err"]).to_numpy()
    assert abs(np.median(pull)) < 0.3
    assert 0.75 < MAD_TO_STD * np.median(np.abs(pull - np.median(pull))) < 1.25
    assert np.abs(pull).max() < 4.5
    out = insert_forced(ds, forced)
    si = np.searchsorted(out["source_id"].values, cells["source_id"])
    fi = np.searchsorted(out["frame"].values, cells["frame"])
    assert (out["flags"].values[si, fi] == LightCurveFlag.FORCED).all()
    assert (out["flags"].values[:, u] & LightCurveFlag.FORCED == 0).all()


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


@pytest.fixture(scope="module")
def slurm() -> str:
    """A one-node Slurm on this machine (`scripts/slurm-up.sh`: munge, slurmctld, slurmd)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "slurm-up.sh"
    started = subprocess.run([str(script)], capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        pytest.skip(f"no Slurm here: {(started.stderr or started.stdout).strip()[-300:]}")
    return started.stdout.strip()


def test_slurm_cluster_run_equals_local(slurm, local_run, night, tmp_path):
    """``lcdask run --cluster slurm``: dask-jobqueue submits the workers as Slurm jobs (two
    jobs of one worker each) on a real slurmctld/slurmd; the products equal a local run's."""
    out = tmp_path / "slurm"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    config = tmp_path / "slurm.toml"  # jobs small enough for any test machine's one node
    config.write_text('[cluster]\nkind = "slurm"\njob_memory = "1GB"\nwalltime = "00:30:00"\n')
    job_log = Path("/tmp/lcdask-slurm/log/jobs.txt")
    n_before = len(job_log.read_text().splitlines()) if job_log.exists() else 0
    result = subprocess.run(
        [
            *LCDASK,
            "run",
            str(night / "raw"),
            "--out",
            str(out),
            "--config",
            str(config),
            "--cluster",
            "slurm",
            "--workers",
            "2",
            "--catalog",
            str(night / "refcat.parquet"),
            "--target",
            _target(night),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=tmp_path,  # the batch jobs' output files (slurm-<job>.out) land here
    )
    assert result.returncode == 0, result.stderr
    assert "slurm cluster" in result.stderr  # the run said where it ran
    # the jobs Slurm ran (its job completion log, scripts/slurm-up.sh): this run's workers
    deadline, workers = time.monotonic() + 60, []
    while len(workers) < 2 and time.monotonic() < deadline:  # written as the jobs end
        jobs = job_log.read_text().splitlines() if job_log.exists() else []
        workers = [j for j in jobs[n_before:] if "Name=dask-worker" in j]
        time.sleep(0.5)
    assert len(workers) >= 2, workers
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "sources.parquet"),
        pd.read_parquet(local_run / "sources.parquet"),
    )
    a, b = open_cube(out), open_cube(local_run)
    np.testing.assert_array_equal(a["calibrated"].values, b["calibrated"].values)
    la, lb = xr.open_zarr(out / "lightcurves.zarr"), xr.open_zarr(local_run / "lightcurves.zarr")
    np.testing.assert_array_equal(la["flux"].values, lb["flux"].values)
    np.testing.assert_array_equal(la["rel_flux"].values, lb["rel_flux"].values)


def test_frames_added_later_are_appended_alone(night, local_run, tmp_path, session_client):
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
    options = {"catalog": night / "refcat.parquet", "target": _target(night)}
    run(raw, out, client=session_client, **options)
    first = pd.read_parquet(out / "frames.parquet")
    first_detections = pd.read_parquet(out / "detections.parquet")
    for path in late.iterdir():
        shutil.move(path, raw / path.name)
    record = run(raw, out, client=session_client, **options)

    # appended: the new frames went through ingest, calibration and Level 2 alone
    for stage in ("ingest", "calibrate", "level2"):
        assert record["stages"][stage]["appended"] == 6, record["stages"][stage]
    assert not any(s.get("reused") for s in record["stages"].values())
    cube = open_cube(out)
    assert json.loads(cube.attrs["calibration"])["complete"]  # kept through the append
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
    sources = pd.read_parquet(out / "sources.parquet")
    for _, mover in truth.movers.iterrows():
        _mover_at(sources, mover)
    assert xr.open_zarr(out / "lightcurves.zarr").sizes["frame"] == 24
