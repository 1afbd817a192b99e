"""Moving, variable and stable sources and the target, against the truth of simulated nights."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lcdask.classify import (
    SOURCE_COLUMNS,
    classify_sources,
    expected_trend,
    link_tracks,
    match_target,
    parse_target,
)
from lcdask.lightcurves import apply_ensemble, build_lightcurves, ensemble_photometry
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
