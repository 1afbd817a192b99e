"""Moving, variable and stable sources and the target, against the truth of simulated nights."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from lcdask.classify import (
    SOURCE_COLUMNS,
    _line_at,
    _ransac_track,
    classify_sources,
    detection_coverage,
    expected_trend,
    join_moving_pieces,
    link_tracks,
    match_target,
    parse_target,
)
from lcdask.lightcurves import (
    LightCurveFlag,
    apply_ensemble,
    build_lightcurves,
    ensemble_photometry,
)
from lcdask.match import match_detections
from lcdask.simulate import SimConfig
from lcdask.testing import frame_table, inject_variables, make_detections, simulate_truth


def _run(truth, seed):
    """Match, link, build, ensemble, classify; return the sources with their truth star."""
    det = make_detections(truth, seed=seed)
    frames = frame_table(truth, det)
    match = match_detections(det, frames)
    tracks = link_tracks(det, match.source_id, centre=match.centre)
    ds = build_lightcurves(det, tracks.source_id, frames)
    ds = apply_ensemble(ds, ensemble_photometry(ds))
    target = truth.stars[truth.stars["is_target"]].iloc[0]
    sources = classify_sources(ds, target=(target["ra"], target["dec"]))
    d = det.assign(source_id=tracks.source_id)
    d = d[(d["source_id"] >= 0) & (d["star_id"] >= 0)]
    star_of = d.groupby("source_id")["star_id"].agg(lambda s: s.value_counts().index[0])
    stars = truth.stars.set_index("star_id")
    sources["star_id"] = sources["source_id"].map(star_of)
    sources["true_kind"] = sources["star_id"].map(stars["kind"])
    return sources, tracks, frames


@pytest.fixture(scope="module")
def night():
    """200 frames, 3 slow + 3 fast movers, 180 injected variables (3-10 sigma)."""
    cfg = SimConfig(n_frames=200, seed=11, n_slow_movers=3, n_fast_movers=3)
    truth = inject_variables(simulate_truth(cfg), 180, seed=4)  # ~60% fall on the detector
    sources, tracks, frames = _run(truth, seed=4)
    return truth, sources, tracks, frames


def test_sources_table_schema(night):
    _, sources, _, _ = night
    assert list(sources.columns[: len(SOURCE_COLUMNS)]) == list(SOURCE_COLUMNS)
    assert set(sources["kind"]) <= {"stable", "variable", "moving"}
    assert sources["source_id"].is_unique
    assert sources["is_comparison"].sum() >= 10


def test_movers_found_with_their_rates(night):
    truth, sources, tracks, frames = night
    movers = truth.movers
    span_h = (frames["time_mjd"].max() - frames["time_mjd"].min()) * 24
    fwhm_arcsec = frames["fwhm_px"].median() * truth.config.pixel_scale_arcsec
    rate = np.hypot(movers["rate_ra_arcsec_h"], movers["rate_dec_arcsec_h"])
    assert (rate * span_h > fwhm_arcsec).all()  # all of them move more than 1 FWHM
    found = sources[sources["kind"] == "moving"].set_index("star_id")
    assert set(movers["star_id"]) <= set(found.index)
    m = movers.set_index("star_id")
    err = np.hypot(
        found.loc[m.index, "rate_ra_arcsec_h"] - m["rate_ra_arcsec_h"],
        found.loc[m.index, "rate_dec_arcsec_h"] - m["rate_dec_arcsec_h"],
    ) / np.hypot(m["rate_ra_arcsec_h"], m["rate_dec_arcsec_h"])
    assert (err < 0.02).all(), err
    # the fast ones do not cluster: RANSAC tracks found them
    fast = m.index[m["speed"] == "fast"]
    assert set(fast) <= set(found.loc[found["source_id"].isin(tracks.tracks["source_id"])].index)
    # no fixed star is classed moving
    assert (found["true_kind"] == "moving").all()


def test_variables_recall_and_false_positives(night):
    truth, sources, _, _ = night
    amp = sources["star_id"].map(truth.stars.set_index("star_id")["amplitude_sigma"])
    injected = sources[(amp >= 3).to_numpy()]
    assert len(injected) >= 100
    recall = (injected["kind"] == "variable").mean()
    assert recall >= 0.95, recall
    # the simulator's own variables (transit, eclipsing binary, pulsator)
    own = sources[(sources["true_kind"] == "variable") & amp.isna().to_numpy()]
    assert (own["kind"] == "variable").all()
    # their kind guessed (lcdask.search): the simulator's transit, eclipsing binary and pulsator,
    # and the injected sinusoids (periods of 1/3 to 2 nights: the longest look like a trend)
    true_type = own["star_id"].map(truth.stars.set_index("star_id")["var_type"])
    named = {"transit": "transit", "eclipsing": "eclipse", "pulsator": "pulsating"}
    assert (own["var_type"] == true_type.map(named)).all(), own[["var_type"]].assign(t=true_type)
    found = injected[injected["kind"] == "variable"]
    assert (found["var_type"] == "pulsating").mean() >= 0.9  # measured: 104 of 108
    stable = sources[sources["true_kind"] == "stable"]
    false_positive = (stable["kind"] != "stable").mean()
    assert false_positive <= 0.01, false_positive


def test_target_flagged(night):
    truth, sources, _, _ = night
    target = truth.stars[truth.stars["is_target"]].iloc[0]
    flagged = sources[sources["is_target"]]
    assert len(flagged) == 1
    assert flagged["star_id"].iloc[0] == target["star_id"]


@pytest.mark.parametrize(
    ("text", "ra", "dec"),
    [
        ("150.1 20.3", 150.1, 20.3),
        ("150.1, -20.3", 150.1, -20.3),
        ("10:00:24.0 +20:18:00", 150.1, 20.3),
        ("10h00m24s -20d18m00s", 150.1, -20.3),
        ((150.1, 20.3), 150.1, 20.3),
    ],
)
def test_parse_target(text, ra, dec):
    assert parse_target(text) == pytest.approx((ra, dec), abs=1e-6)


@pytest.mark.parametrize("text", ["somewhere", "150.1", "10:00:00 +95:00:00"])
def test_parse_target_rejects(text):
    with pytest.raises(ValueError):
        parse_target(text)


def test_match_target_radius():
    sources = pd.DataFrame({"source_id": [7, 8], "ra": [150.0, 150.01], "dec": [20.0, 20.0]})
    assert match_target(sources, (150.0002, 20.0)) == 7  # 0.7"
    assert match_target(sources, (150.005, 20.0), radius_arcsec=3.0) is None  # 17" away


def test_link_tracks_leaves_fixed_sources_alone():
    rng = np.random.default_rng(0)
    n = 60
    t = 60000 + np.arange(n) * 70 / 86400
    # a mover at 100"/h (2"/frame) and a faint fixed star seen in a third of the frames
    mover = pd.DataFrame(
        {
            "frame": np.arange(n),
            "time_mjd": t,
            "ra": 150 + (np.arange(n) * 70 / 3600 * 100 / 3600) / np.cos(np.deg2rad(20)),
            "dec": 20 + rng.normal(0, 0.2, n) / 3600,
        }
    )
    seen = np.arange(0, n, 3)
    fixed = pd.DataFrame(
        {
            "frame": seen,
            "time_mjd": t[seen],
            "ra": 150.02 + rng.normal(0, 0.3, seen.size) / 3600,
            "dec": 20.01 + rng.normal(0, 0.3, seen.size) / 3600,
        }
    )
    det = pd.concat([mover, fixed], ignore_index=True)
    result = link_tracks(det, np.full(len(det), -1))
    assert len(result.tracks) == 1
    assert result.tracks["rate_ra_arcsec_h"].iloc[0] == pytest.approx(100, rel=0.01)
    assert (result.source_id[:n] == result.tracks["source_id"].iloc[0]).mean() > 0.95
    assert (result.source_id[n:] == -1).all()


def test_expected_trend_is_a_running_median():
    mag = np.linspace(10, 20, 200)
    value = 2 * mag
    np.testing.assert_allclose(expected_trend(mag, value, at=[15.0]), [30.0], rtol=0.02)


# --------------------------------------------------------------------------------------------
# the goals on an image-based run (issue 6): frames simulated, calibrated, measured, classified

IMAGE_NIGHT = SimConfig(
    n_frames=100,
    size=640,
    seed=5,
    stars_per_deg2_r20=15000.0,  # ~2.5x the default density: ~250 stars on 640 px
    n_slow_movers=2,
    n_fast_movers=1,
)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, session_client):
    """A whole `lcdask.run.run` of a simulated 100-frame night; its sources matched to truth."""
    from astropy.coordinates import SkyCoord

    from lcdask.run import run
    from lcdask.simulate import load_truth, simulate_night

    root = tmp_path_factory.mktemp("classify_images")
    simulate_night(root / "night", IMAGE_NIGHT, n_workers=2)
    run(
        root / "night" / "raw",
        root / "run",
        catalog=root / "night" / "refcat.parquet",
        client=session_client,
    )
    truth = load_truth(root / "night")
    sources = pd.read_parquet(root / "run" / "sources.parquet")
    stars = truth.stars[truth.stars["kind"] != "moving"]
    found = SkyCoord(sources["ra"].to_numpy(), sources["dec"].to_numpy(), unit="deg")
    true = SkyCoord(stars["ra"].to_numpy(), stars["dec"].to_numpy(), unit="deg")
    index, sep, _ = found.match_to_catalog_sky(true)
    near = sep.arcsec < 1.0  # centroids of detected stars are good to ~0.1"
    sources["star_id"] = np.where(near, stars["star_id"].to_numpy()[index], -1)
    sources["true_kind"] = np.where(near, stars["kind"].to_numpy()[index], "none")
    # a mover is where its truth line puts it at the source's epoch
    for _, mover in truth.movers.iterrows():
        dt_h = (sources["epoch_mjd"].to_numpy() - mover["t0_mjd"]) * 24.0
        cosd = np.cos(np.deg2rad(mover["dec0"]))
        ra = mover["ra0"] + mover["rate_ra_arcsec_h"] * dt_h / 3600.0 / cosd
        dec = mover["dec0"] + mover["rate_dec_arcsec_h"] * dt_h / 3600.0
        d = np.hypot((sources["ra"] - ra) * cosd, sources["dec"] - dec) * 3600.0
        sources.loc[(d < 2.0).to_numpy(), ["star_id", "true_kind"]] = [mover["star_id"], "moving"]
    return truth, sources, root / "run"


def test_image_run_variables_found(image_run):
    truth, sources, _ = image_run
    stars = truth.stars.set_index("star_id")
    variables = sources[sources["true_kind"] == "variable"]
    amplitude = variables["star_id"].map(stars[["depth", "amplitude"]].max(axis=1))
    big = variables[(amplitude >= 3 * variables["noise_model"]).to_numpy()]
    assert len(big) >= 2  # of the target's transit, the eclipsing binary, the pulsator
    assert (big["kind"] == "variable").mean() >= 0.95


def test_image_run_stable_stars_not_variable(image_run):
    _, sources, _ = image_run
    stable = sources[sources["true_kind"] == "stable"]
    assert len(stable) >= 200  # so that 1% is 2 stars
    false_positive = (stable["kind"] == "variable").mean()
    assert false_positive <= 0.01, stable[stable["kind"] == "variable"]


def test_image_run_movers_against_truth(image_run):
    truth, sources, run_dir = image_run
    frames = pd.read_parquet(run_dir / "frames.parquet")
    span_h = (frames["time_mjd"].max() - frames["time_mjd"].min()) * 24.0
    fwhm_arcsec = frames["fwhm_px"].median() * truth.config.pixel_scale_arcsec
    movers = truth.movers.set_index("star_id")
    rate = np.hypot(movers["rate_ra_arcsec_h"], movers["rate_dec_arcsec_h"])
    assert (rate * span_h > fwhm_arcsec).all()  # each moves more than 1 FWHM
    found = sources[sources["kind"] == "moving"].set_index("star_id")
    assert set(movers.index) <= set(found.index)
    found = found.loc[movers.index]
    error = np.hypot(
        found["rate_ra_arcsec_h"] - movers["rate_ra_arcsec_h"],
        found["rate_dec_arcsec_h"] - movers["rate_dec_arcsec_h"],
    )
    # 2%, or 3 sigma of the fitted rate where centroid noise allows no better: the 18.7 mag
    # slow mover crosses 1.1 FWHM in the night and its 1-sigma rate error is 1.4%
    rate_err = np.hypot(found["rate_ra_arcsec_h"], found["rate_dec_arcsec_h"]) / found["rate_snr"]
    assert (error < np.maximum(0.02 * rate, 3 * rate_err)).all(), error / rate
    assert not ((sources["kind"] == "moving") & (sources["true_kind"] == "stable")).any()
    assert not ((sources["kind"] == "moving") & (sources["true_kind"] == "none")).any()


def test_image_run_bright_stars_rms_within_the_noise_model(image_run):
    import xarray as xr

    from lcdask.lightcurves import BAD_FOR_FLUX, LightCurveFlag

    _, sources, run_dir = image_run
    ds = xr.open_zarr(run_dir / "lightcurves.zarr")
    table = sources.set_index("source_id").loc[ds["source_id"].to_numpy()]
    skip = int(BAD_FOR_FLUX) | int(LightCurveFlag.MISSING)
    rel = np.where((ds["flags"].to_numpy() & skip) == 0, ds["rel_flux"].to_numpy(), np.nan)
    with warnings.catch_warnings():  # saturated stars have no usable point
        warnings.simplefilter("ignore", RuntimeWarning)
        rel = rel / np.nanmedian(rel, axis=1, keepdims=True)
        # beyond 5 sigma: a cosmic ray on the star's core that cleaning missed (one of the 100
        # points of a 15.4 mag star here), which a plain rms cannot absorb but the
        # variability statistics (MAD, bins) do
        noise = table["noise_model"].to_numpy()[:, None]
        rms = np.nanstd(np.where(np.abs(rel - 1.0) <= 5.0 * noise, rel, np.nan), axis=1)
    ratio = pd.Series(rms / table["noise_model"].to_numpy(), index=table.index)
    # bright: noise model below 1% (S/N > 100)
    bright = (table["true_kind"] == "stable") & (table["noise_model"] < 0.01) & ratio.notna()
    assert bright.sum() >= 20
    assert (ratio[bright] <= 1.3).all(), ratio[bright & (ratio > 1.3)]


def _synthetic_cube(edge_flag: int):
    """40 stars x 80 frames of white noise; star 0 drifts over the frame edge in the last 50
    frames (flux -30%, centroid pulled up to 3" north), those points flagged ``edge_flag``."""
    rng = np.random.default_rng(1)
    n_star, n_frame = 40, 80
    t = 60000 + np.arange(n_frame) * 70 / 86400
    s, f = np.meshgrid(np.arange(n_star), np.arange(n_frame), indexing="ij")
    flux0 = np.geomspace(1e6, 1e4, n_star)[:, None] * np.ones((1, n_frame))
    err = np.sqrt(flux0 / 1.5 + 300.0**2)
    flux = flux0 + rng.normal(0, 1, flux0.shape) * err
    ra = 150 + 0.01 * s + rng.normal(0, 0.05, s.shape) / 3600
    dec = 20 + 0.001 * s + rng.normal(0, 0.05, s.shape) / 3600
    cut = (s == 0) & (f >= 30)
    flux = np.where(cut, 0.7 * flux, flux)
    dec = np.where(cut, dec + 3.0 * (f - 29) / 50 / 3600, dec)
    det = pd.DataFrame(
        {
            "frame": f.ravel(),
            "time_mjd": t[f.ravel()],
            "flux": flux.ravel(),
            "flux_err": err.ravel(),
            "ra": ra.ravel(),
            "dec": dec.ravel(),
            "flags": np.where(cut, edge_flag, 0).ravel().astype(np.int32),
        }
    )
    frames = pd.DataFrame({"frame": np.arange(n_frame), "time_mjd": t})
    ds = build_lightcurves(det, s.ravel(), frames)
    return apply_ensemble(ds, ensemble_photometry(ds))


def test_edge_points_are_left_out_of_motion_and_variability():
    from lcdask.lightcurves import LightCurveFlag

    unflagged = classify_sources(_synthetic_cube(0)).set_index("source_id")
    assert unflagged.loc[0, "kind"] == "moving"  # a growing pull looks like motion...
    flagged = classify_sources(_synthetic_cube(int(LightCurveFlag.EDGE))).set_index("source_id")
    assert flagged.loc[0, "kind"] == "stable"  # ...and a dip, unless the edge points are skipped
    assert flagged.loc[0, "scatter_ratio"] < 1.6
    assert (flagged["kind"] == "stable").all()


def test_link_tracks_finds_a_fast_mover_up_to_its_max_rate():
    """A near-Earth object at 2000"/h (39"/frame) is linked only when the rate limit allows it."""
    n = 30
    t = 60000 + np.arange(n) * 70 / 86400
    rng = np.random.default_rng(3)
    det = pd.DataFrame(
        {
            "frame": np.arange(n),
            "time_mjd": t,
            "ra": 150 + (np.arange(n) * 70 / 3600 * 2000 / 3600) / np.cos(np.deg2rad(20)),
            "dec": 20 + rng.normal(0, 0.2, n) / 3600,
        }
    )
    assert len(link_tracks(det, np.full(n, -1)).tracks) == 0  # default 600"/h
    result = link_tracks(det, np.full(n, -1), max_rate_arcsec_h=3000.0)
    assert len(result.tracks) == 1 and (result.source_id >= 0).mean() > 0.95
    assert result.tracks["rate_ra_arcsec_h"].iloc[0] == pytest.approx(2000, rel=0.01)


def test_points_a_mover_passes_are_flagged_near_mover():
    from lcdask.classify import flag_near_movers
    from lcdask.lightcurves import LightCurveFlag

    n = 40
    t = 60000 + np.arange(n) * 70 / 86400
    stars = {0: (150.0, 20.0), 1: (150.0, 20.01)}  # star 1 is 36" north of star 0
    det = pd.DataFrame(
        [
            {"frame": f, "time_mjd": t[f], "ra": ra, "dec": dec, "flux": 1e4, "flux_err": 100.0}
            for f in range(n)
            for ra, dec in stars.values()
        ]
    )
    ids = np.tile([0, 1], n)
    ds = build_lightcurves(det, ids, pd.DataFrame({"frame": np.arange(n), "time_mjd": t}))
    # a mover at 100"/h due east crosses star 0 at frame 20 (1.94"/frame)
    rate = 100.0
    mover = pd.DataFrame(
        {
            "source_id": [2],
            "kind": ["moving"],
            "ra": [150.0],
            "dec": [20.0],
            "epoch_mjd": [t[20]],
            "rate_ra_arcsec_h": [rate],
            "rate_dec_arcsec_h": [0.0],
        }
    )
    flagged = flag_near_movers(ds, mover)
    near = (flagged["flags"].values & LightCurveFlag.NEAR_MOVER) != 0
    # within 3 FWHM (3" when the frames give none) = 9": |frame - 20| * 1.944" <= 9
    distance = np.abs(np.arange(n) - 20) * rate * 70 / 3600
    assert np.array_equal(near[0], distance <= 9.0)
    assert not near[1].any()  # 36" away or more the whole time
    assert np.array_equal(flagged["flags"].values & ~LightCurveFlag.NEAR_MOVER, ds["flags"].values)


def test_ransac_track_is_scikit_learns_ransac_step_for_step():
    """Same inliers and the same final line, to the bit, as RANSACRegressor on 150 problems:
    lines with noise, up to 70% outliers, repeated times, 3-260 points (both of scikit-learn's
    sampling methods), several thresholds and seeds."""
    from sklearn.linear_model import LinearRegression, RANSACRegressor

    def distance(a, b):
        return np.sqrt(((a - b) ** 2).sum(axis=1))

    rng = np.random.default_rng(3)
    for _ in range(150):
        n = int(rng.integers(3, 260))
        t = np.round(rng.uniform(0, 5, n), int(rng.integers(0, 3)))
        xy = np.column_stack([3 * t, -2 * t]) + rng.normal(0, 0.3, (n, 2))
        outliers = rng.random(n) < rng.uniform(0, 0.7)
        xy[outliers] += rng.uniform(-20, 20, (outliers.sum(), 2))
        threshold, seed = float(rng.uniform(0.2, 2)), int(rng.integers(0, 5))
        reference = RANSACRegressor(
            LinearRegression(),
            min_samples=2,
            residual_threshold=threshold,
            loss=distance,
            max_trials=100,
            random_state=seed,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # R^2 of a single inlier
            reference.fit(t[:, None], xy)
        inliers, line = _ransac_track(
            t, xy, residual_threshold=threshold, max_trials=100, random_state=seed
        )
        np.testing.assert_array_equal(inliers, reference.inlier_mask_)
        np.testing.assert_array_equal(_line_at(t, line), reference.predict(t[:, None]))


def _slow_night(n: int = 40, seed: int = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A slow mover (6"/h, 0.2" noise), a star on its path and a star elsewhere, n frames."""
    rng = np.random.default_rng(seed)
    t = 60000 + np.arange(n) * 600 / 86400  # 10 min cadence: 1" per frame
    hours = (t - t[0]) * 24
    cosd = np.cos(np.deg2rad(20))
    rows = {
        # along RA: 0" -> 39" over the night
        "mover": (150 + 6 * hours / 3600 / cosd, 20 + np.zeros(n)),
        # on the mover's path at 20": the mover passes it around frame 20
        "star_on_path": (150 + np.full(n, 20.0) / 3600 / cosd, 20 + np.zeros(n)),
        "star": (150 + np.full(n, 30.0) / 3600 / cosd, 20 + np.full(n, 15.0) / 3600),
    }
    parts, index = [], {}
    start = 0
    for name, (ra, dec) in rows.items():
        noise = rng.normal(0, 0.2, (2, n)) / 3600
        parts.append(
            pd.DataFrame(
                {
                    "frame": np.arange(n),
                    "time_mjd": t,
                    "ra": ra + noise[0] / cosd,
                    "dec": dec + noise[1],
                }
            )
        )
        index[name] = np.arange(start, start + n)
        start += n
    return pd.concat(parts, ignore_index=True), index


def test_join_moving_pieces_joins_a_mover_cut_apart():
    det, idx = _slow_night()
    sid = np.full(len(det), -1, dtype=np.int64)
    mover = idx["mover"]
    sid[mover[:15]] = 0  # the matching cut it at frame 15 ...
    sid[mover[15:18]] = -1  # ... left three detections unassigned ...
    sid[mover[18:]] = 1  # ... and made the rest another source
    # the star on its path: the mover's line passes through it around frame 20
    on_path = idx["star_on_path"]
    sid[on_path] = 2
    sid[idx["star"]] = 3
    out = join_moving_pieces(det, sid)
    assert np.unique(out[mover]).size == 1  # one source, all 40 detections
    assert out[mover[0]] in (0, 1)
    assert (out[on_path] == 2).all()  # the star it passes is left alone
    assert (out[idx["star"]] == 3).all()
    # without the join, link_tracks would see pieces; with it (the default) one source
    assert np.unique(link_tracks(det, sid).source_id[mover]).size == 1
    assert np.unique(link_tracks(det, sid, join_pieces=False).source_id[mover]).size == 3


def test_join_moving_pieces_leaves_fixed_sources_and_far_pieces_alone():
    det, idx = _slow_night()
    sid = np.full(len(det), -1, dtype=np.int64)
    sid[idx["mover"]] = 0
    sid[idx["star_on_path"]] = 1
    sid[idx["star"]] = 2
    assert (join_moving_pieces(det, sid) == sid).all()  # nothing to join
    # another mover's piece, 10" off the line, is not joined
    other = det.iloc[idx["mover"][20:]].assign(dec=lambda d: d["dec"] + 10 / 3600)
    both = pd.concat([det.iloc[idx["mover"][:20]], other], ignore_index=True)
    cut = np.r_[np.zeros(20, np.int64), np.ones(20, np.int64)]
    assert (join_moving_pieces(both, cut) == cut).all()


def test_detection_coverage_and_sporadic_faint_sources_are_not_moving():
    import xarray as xr

    n = 30
    t = 60000 + np.arange(n) / 96.0
    flags = np.zeros((2, n), dtype=np.int32)
    # source 1: detected in frames 6, 8, 11, 14, 18 only (5 of the 13 of its span)
    flags[1] = int(LightCurveFlag.MISSING)
    flags[1, [6, 8, 11, 14, 18]] = 0
    ds = xr.Dataset(
        {"flags": (("source", "frame"), flags), "ra": (("source", "frame"), np.ones((2, n)))},
        coords={"time_mjd": ("frame", t)},
    )
    assert detection_coverage(ds) == pytest.approx([1.0, 5 / 13])
