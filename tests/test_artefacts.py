"""Detector artefacts (hot pixels fixed on the detector): synthetic tables, a simulated night.

Synthetic detection tables: stars on a drifting field (pixel = sky + drift), a hot pixel fixed on
the detector (its sky position, through each frame's WCS, traces the drift), a slow real mover.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lcdask.classify import find_artefacts
from lcdask.flags import ARTEFACT

SCALE = 2.0  # arcsec per pixel of the synthetic tables
N_FRAMES = 30


def _table(drift_px: float, *, sharp_hot: bool = False, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """40 stars, 2 hot pixels, 1 slow mover over N_FRAMES frames drifting ``drift_px`` in x.

    Sky positions in a small patch at (150, 20): xi = (x - drift) * SCALE. Centroid noise 0.05 px.
    """
    rng = np.random.default_rng(seed)
    drift = np.linspace(0.0, drift_px, N_FRAMES)
    stars = rng.uniform(60, 440, size=(40, 2))
    hot = np.array([[100.3, 200.7], [350.1, 90.4]])
    rows = []
    t0 = 60000.0
    for f in range(N_FRAMES):
        t = t0 + f * 3.0 / 1440  # 3 min cadence
        for k, (sx, sy) in enumerate(stars):  # stars: fixed on the sky, drift on the detector
            rows.append(("star", k, f, t, sx + drift[f], sy, 3.0))
        for k, (hx, hy) in enumerate(hot):  # hot pixels: fixed on the detector
            rows.append(("hot", k, f, t, hx, hy, 0.8 if sharp_hot else 3.0))
        # a slow mover: 0.4 px per frame on the sky (24"/h at 2"/px), against the drift too
        rows.append(("mover", 0, f, t, 250.0 + 0.4 * f + drift[f], 300.0 + 0.3 * f, 3.0))
    table = pd.DataFrame(rows, columns=["what", "k", "frame", "time_mjd", "x", "y", "fwhm_px"])
    table[["x", "y"]] += rng.normal(0, 0.05, size=(len(table), 2))
    xi = (table["x"] - drift[table["frame"]]) * SCALE
    eta = table["y"] * SCALE
    dec0 = 20.0
    table["ra"] = 150.0 + xi / 3600.0 / np.cos(np.deg2rad(dec0))
    table["dec"] = dec0 + eta / 3600.0
    table["flags"] = np.int32(0)
    return table, {"drift": drift}


def test_hot_pixels_of_a_drifting_night_are_artefacts_a_slow_mover_is_not():
    table, _ = _table(60.0)  # 2 px per frame
    result = find_artefacts(table)
    hot = (table["what"] == "hot").to_numpy()
    assert result.is_artefact[hot].all()
    # stars and the mover: never (no other star comes within 1 px of the same pixel here)
    assert not result.is_artefact[~hot].any()
    assert result.n_artefacts == 2
    # each hot pixel one source, one detection per frame
    groups = pd.Series(result.group[hot]).value_counts()
    assert sorted(groups.tolist()) == [N_FRAMES, N_FRAMES]
    assert result.field_shift_px == pytest.approx(60.0, abs=0.5)  # centroid noise 0.05 px
    assert result.pixel_scale_arcsec == pytest.approx(SCALE, rel=1e-3)


def test_a_slow_drift_still_finds_them():
    """0.2 px per frame: only frames 15 or more apart have moved 3 px; still most of the night."""
    table, _ = _table(6.0)
    result = find_artefacts(table)
    hot = (table["what"] == "hot").to_numpy()
    # a hot pixel is flagged where at least 3 reference frames are >3 px of drift away: all
    assert result.is_artefact[hot].all()
    assert not result.is_artefact[~hot].any()


def test_without_drift_sharp_recurring_detections_are_artefacts():
    table, _ = _table(0.0, sharp_hot=True)
    result = find_artefacts(table)
    hot = (table["what"] == "hot").to_numpy()
    assert result.by_drift == 0  # no drift: the drift test cannot see them
    assert result.is_artefact[hot].all()
    assert not result.is_artefact[~hot].any()  # stars recur too, but are not sharp


def test_without_drift_a_star_like_hot_spot_is_not_called_an_artefact():
    """Nothing tells a fixed star-like spot from a star on a night that does not drift."""
    table, _ = _table(0.0, sharp_hot=False)
    result = find_artefacts(table)
    assert not result.is_artefact.any()
    assert result.n_artefacts == 0


def test_apply_numbers_artefact_sources_after_the_others_and_sets_the_bit():
    table, _ = _table(60.0)
    result = find_artefacts(table)
    real = table[~result.is_artefact]
    given = np.where(real["what"] == "star", real["k"], -1).astype(np.int64)  # stars 0..39
    flagged, sid, ids = result.apply(table, given)
    assert ids.tolist() == [40, 41]
    hot = (table["what"] == "hot").to_numpy()
    assert set(np.unique(sid[hot])) == {40, 41}
    assert ((flagged["flags"].to_numpy() & ARTEFACT) != 0).tolist() == hot.tolist()
    with pytest.raises(ValueError, match="not artefacts"):
        result.apply(table, np.zeros(len(table), dtype=np.int64))


@pytest.fixture(scope="module")
def hot_night(tmp_path_factory, session_client):
    """30 frames of 512 x 512 drifting 150 px, 0.2% hot pixels, run on the lights only."""
    import shutil

    from lcdask.run import run
    from lcdask.simulate import SimConfig, load_truth, simulate_night

    base = tmp_path_factory.mktemp("hot")
    cfg = SimConfig(
        n_frames=30,
        size=512,
        seed=7,
        drift_px_total=150.0,
        hot_pixel_fraction=0.002,
        n_slow_movers=1,
        n_fast_movers=1,
        exptime_s=120.0,
        n_darks=1,
        n_darkflats=1,
        n_flats=1,
        n_bias=1,
    )
    simulate_night(base / "night", cfg, n_workers=1)
    lights = base / "lights"
    lights.mkdir()
    for path in sorted((base / "night" / "raw").glob("light_*.fits")):
        shutil.copy(path, lights / path.name)  # no darks, no flats: nothing maps the hot pixels
    run(lights, base / "run", catalog=base / "night" / "refcat.parquet", client=session_client)
    return load_truth(base / "night"), base / "run"


def test_hot_pixels_of_a_night_without_darks_are_artefacts(hot_night):
    import json

    import xarray as xr
    from scipy.spatial import cKDTree

    truth, out = hot_night
    sources = pd.read_parquet(out / "sources.parquet")
    record = json.loads((out / "run.json").read_text())
    stage = record["stages"]["lightcurves"]
    art = sources["kind"] == "artefact"
    assert (art == sources["is_artefact"]).all()
    assert stage["n_artefacts"] == int(art.sum())
    # no artefact is a mover, a variable or a comparison star
    assert not sources.loc[art, "is_comparison"].any()
    # the injected movers: found as moving, at their truth position (epoch t0 = the first frame)
    movers = sources[sources["kind"] == "moving"]
    for m in truth.movers.itertuples():
        dt_h = (movers["epoch_mjd"] - m.t0_mjd) * 24.0
        ra = m.ra0 + m.rate_ra_arcsec_h * dt_h / 3600.0 / np.cos(np.deg2rad(m.dec0))
        dec = m.dec0 + m.rate_dec_arcsec_h * dt_h / 3600.0
        sep = np.hypot((movers["ra"] - ra) * np.cos(np.deg2rad(m.dec0)), movers["dec"] - dec)
        assert (sep * 3600 < 2.0).sum() == 1, m  # 2": a few times the centroid error
    # and no other mover: the hot pixels (about 0.2% of 512^2 = 524) drifted 150 px
    assert len(movers) == len(truth.movers)
    # every source that stands still on the detector (x, y rms < 0.5 px while the field
    # moved 150 px) is an artefact
    ds = xr.open_zarr(out / "lightcurves.zarr")
    with np.errstate(all="ignore"):
        x_rms = np.nanstd(ds["x"].to_numpy(), axis=1)
        y_rms = np.nanstd(ds["y"].to_numpy(), axis=1)
        x, y = np.nanmedian(ds["x"].to_numpy(), axis=1), np.nanmedian(ds["y"].to_numpy(), axis=1)
    still = np.hypot(x_rms, y_rms) < 0.5
    assert art.to_numpy()[still].all()
    # the truth's hot pixels detected in at least 5 frames come out as artefacts
    hot = truth.bad_pixels.query("kind == 'hot' and origin == 'pixel'")[["x", "y"]].to_numpy()
    det = pd.read_parquet(out / "detections.parquet")
    d, which = cKDTree(hot).query(det[["x", "y"]].to_numpy(), distance_upper_bound=1.0)
    counts = pd.Series(which[np.isfinite(d)]).value_counts()
    detected = hot[counts[counts >= 5].index.to_numpy()]
    assert len(detected) > 100  # there was something to find
    d_art, _ = cKDTree(np.column_stack([x, y])[art.to_numpy()]).query(detected)
    # within 1 px of an artefact source: all but a few (a hot pixel under a star's light)
    assert (d_art < 1.0).mean() > 0.95, (d_art >= 1.0).sum()
