"""The target given to a run is always found, or the run says why (issue 15, item 4).

A simulated night is run with a target below the detection threshold: no source is detected
there, so the run adds one at the target's position and measures it by forced photometry in
every frame; its magnitude is checked against the truth. The same run directory is then run
with a target outside the field: the stages before the light curves are reused, the target is
not found, and run.json, the log and the report say why, with the nearest source.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from astropy.coordinates import SkyCoord

from lcdask.export import read_run
from lcdask.lightcurves import LightCurveFlag
from lcdask.report import build_report
from lcdask.run import run
from lcdask.simulate import SimConfig, load_truth, simulate_night
from lcdask.targets import locate_target


@pytest.fixture(scope="module")
def night(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("target") / "night"
    simulate_night(out, SimConfig(n_frames=16, size=384, seed=11), n_workers=1)
    return out


def _faint_star(night: Path, sources: pd.DataFrame | None = None) -> pd.Series:
    """A true star well inside every frame, fainter than what detection finds, alone."""
    stars = load_truth(night).stars
    stars = stars[(stars["kind"] == "stable") & ~stars["is_target"]]
    coords = SkyCoord(stars["ra"].to_numpy(), stars["dec"].to_numpy(), unit="deg")
    _, sep, _ = coords.match_to_catalog_sky(coords, nthneighbor=2)
    centre = SkyCoord(stars["ra"].median(), stars["dec"].median(), unit="deg")
    alone = (sep.arcsec > 20) & (coords.separation(centre).arcsec < 120)
    candidates = stars[alone].sort_values("mag")
    return candidates.iloc[int(0.97 * (len(candidates) - 1))]  # among the faintest


@pytest.fixture(scope="module")
def faint_run(night, tmp_path_factory, session_client) -> tuple[Path, pd.Series, Path]:
    out = tmp_path_factory.mktemp("target-run") / "run"
    star = _faint_star(night)
    run(
        night / "raw",
        out,
        catalog=night / "refcat.parquet",
        target=(float(star["ra"]), float(star["dec"])),
        client=session_client,
    )
    return out, star, night


def test_undetected_target_is_forced_at_its_position(faint_run):
    out, star, _ = faint_run
    record = json.loads((out / "run.json").read_text())["target"]
    assert record["found"] and record["how"] == "forced", record
    sources = pd.read_parquet(out / "sources.parquet")
    target = sources[sources["is_target"]]
    assert len(target) == 1 and int(target["source_id"].iloc[0]) == record["source_id"]
    assert not target["is_comparison"].iloc[0]
    lightcurves = read_run(out).lightcurves
    index = int(np.flatnonzero(lightcurves["source_id"].to_numpy() == record["source_id"])[0])
    ds = lightcurves.isel(source=[index]).load()
    flags = ds["flags"].to_numpy()[0]
    forced = (flags & int(LightCurveFlag.FORCED)) != 0
    assert forced.mean() > 0.9  # every solved frame holds it (15 of 16 at least)
    # calibrated like the detections: the mean flux in Jy of the forced points against the
    # truth's, within 3 sigma of the points' own errors plus 5% of calibration (a star at
    # S/N ~2 per frame: its magnitudes are biased, its fluxes are not)
    jy = ds["flux_jy"].to_numpy()[0][forced]
    jy_err = jy * ds["flux_err"].to_numpy()[0][forced] / ds["flux"].to_numpy()[0][forced]
    ok = np.isfinite(jy) & np.isfinite(jy_err)
    true_jy = 3631.0 * 10 ** (-0.4 * float(star["mag"]))
    sigma = np.sqrt(np.sum(jy_err[ok] ** 2)) / ok.sum()
    assert abs(jy[ok].mean() - true_jy) < 3 * sigma + 0.05 * true_jy
    positive = forced & (ds["flux"].to_numpy()[0] > 0)  # (rel_flux is left NaN where flux <= 0)
    assert np.isfinite(ds["rel_flux"].to_numpy()[0][positive]).all()


def test_target_outside_the_field_says_why(faint_run, session_client, caplog, tmp_path):
    run_dir, star, night = faint_run
    out = tmp_path / "run"  # a copy: the other tests keep the first target's run
    shutil.copytree(run_dir, out)
    far = (float(star["ra"]), float(star["dec"]) + 3.0)
    with caplog.at_level(logging.INFO, logger="lcdask"):
        record = run(
            night / "raw",
            out,
            catalog=night / "refcat.parquet",
            target=far,
            client=session_client,
        )
    stages = record["stages"]
    assert all(stages[s].get("reused") for s in ("ingest", "calibrate", "level2"))
    assert not stages["lightcurves"].get("reused")  # the new target is looked for again
    target = record["target"]
    assert not target["found"] and "outside the field" in target["why"]
    # the nearest source lies ~3 deg away: the one line says so, in degrees
    assert target["nearest_arcsec"] == pytest.approx(10800, abs=400)
    lines = [r.getMessage() for r in caplog.records if "not found" in r.getMessage()]
    assert len(lines) == 1 and "nearest source" in lines[0] and "deg" in lines[0]
    sources = pd.read_parquet(out / "sources.parquet")
    assert not sources["is_target"].any()
    page = (out / "report.html").read_text()
    assert "not found: outside the field" in page
    assert "No target given" not in page


def test_locate_target_relative_positions_say_so(faint_run):
    out, star, _ = faint_run
    products = read_run(out)
    sources = products.sources[["source_id", "ra", "dec"]]
    frames = products.frames[products.frames["astrometry_status"] == "ok"]
    found = locate_target(
        sources,
        frames,
        float(star["ra"]),
        float(star["dec"]),
        shape=(384, 384),
        radius_arcsec=3.0,
        absolute=False,
        absolute_why="aligned by a nominal tangent plane",
    )
    assert not found.found and found.why == "aligned by a nominal tangent plane"
    assert "not found: aligned by a nominal tangent plane; nearest source" in found.message()
    # and the report shows the run's reason where the target's section would be
    record = {**products.record, "target": found.as_record() | {"message": found.message()}}
    without = dataclasses.replace(
        products, sources=products.sources.assign(is_target=False), record=record
    )
    note = build_report(without).select_one({"name": "target_none"})
    assert note is not None and "not found: aligned by a nominal tangent plane" in note.text
