"""The transit and eclipse search (`lcdask.search`): injected events and a simulated night."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from astropy.timeseries import BoxLeastSquares

from lcdask.classify import classify_sources
from lcdask.lightcurves import LightCurveFlag
from lcdask.search import (
    VAR_TYPES,
    box_grid,
    dip_search,
    dip_threshold,
    guess_var_type,
    gumbel_quantile,
    noise_snr,
    search_arrays,
    shape_statistics,
)
from lcdask.simulate.variability import trapezoid_dip

# --------------------------------------------------------------------------------------------
# light-curve nights with injected transits


def _dataset(t, flux, err, flags, mag, rng) -> xr.Dataset:
    """A light-curve Dataset as the light-curve stage writes it (fixed stars, rel_flux set)."""
    n, m = flux.shape
    scale = 10 ** (-0.4 * (mag - 25.0))[:, None]
    ra = 150.0 + rng.uniform(0.0, 0.3, n)[:, None] + rng.normal(0, 0.05 / 3600, (n, m))
    dec = 20.0 + rng.uniform(0.0, 0.3, n)[:, None] + rng.normal(0, 0.05 / 3600, (n, m))
    dims = ("source", "frame")
    return xr.Dataset(
        {
            "flux": (dims, flux * scale),
            "flux_err": (dims, err * scale),
            "rel_flux": (dims, flux),
            "rel_flux_err": (dims, err),
            "mag": (dims, mag[:, None] - 2.5 * np.log10(np.clip(flux, 1e-3, None))),
            "ra": (dims, ra),
            "dec": (dims, dec),
            "flags": (dims, flags),
        },
        coords={
            "source_id": ("source", np.arange(n)),
            "frame": np.arange(m),
            "time_mjd": ("frame", t),
        },
    )


def injected_night(seed: int, *, n_stable: int = 1000, n_injected: int = 75):
    """250 frames over 5 h; white noise of 0.1-2% per point with the errors mis-stated by
    0.8-1.25, plus red noise (AR(1), 15-40 min, up to 0.15 of the white: a time-averaging
    beta of up to ~1.2 at 20-point bins, as ground-based differential photometry of bright
    stars gives); 2% of the points flagged cosmic (their flux 20% low) and 2% missing. The last
    ``n_injected`` stars get a trapezoidal transit: depth 0.5-3%, duration 0.5-2.5 h (up to
    half the night), ingress 10-25% of it, centred anywhere from 0.3 of a duration before the
    first frame to 0.3 after the last (a third of them seen in part). Returns the Dataset and
    the truth: ``injected``, ``depth``, ``t0``, ``duration_h``, ``n_in`` (used points inside
    the event), ``snr = depth / (sigma_point / sqrt(n_in))``, ``partial``."""
    rng = np.random.default_rng(seed)
    n, m = n_stable + n_injected, 250
    t = np.sort(60000.0 + np.linspace(0.0, 5.0 / 24, m) + rng.normal(0, 2 / 86400, m))
    sigma = np.exp(rng.uniform(np.log(0.001), np.log(0.02), n))
    tau = rng.uniform(15.0, 40.0, n) / 1440.0
    phi = np.exp(-np.median(np.diff(t)) / tau)
    eps = rng.normal(0.0, 1.0, (n, m))
    red = np.empty((n, m))
    red[:, 0] = eps[:, 0]
    for j in range(1, m):
        red[:, j] = phi * red[:, j - 1] + np.sqrt(1 - phi**2) * eps[:, j]
    flux = 1.0 + sigma[:, None] * (
        rng.normal(0.0, 1.0, (n, m)) + rng.uniform(0, 0.15, n)[:, None] * red
    )
    injected = np.arange(n) >= n_stable
    depth = np.where(injected, rng.uniform(0.005, 0.03, n), 0.0)
    duration = rng.uniform(0.5, 2.5, n) / 24.0
    t0 = rng.uniform(t[0] - 0.3 * duration, t[-1] + 0.3 * duration)
    ingress = rng.uniform(0.1, 0.25, n) * duration
    flux *= 1.0 - trapezoid_dip(
        t[None, :], t0[:, None], 100.0, depth[:, None], duration[:, None], ingress[:, None]
    )
    err = sigma[:, None] * rng.uniform(0.8, 1.25, n)[:, None] * np.ones((1, m))
    flags = np.zeros((n, m), dtype=np.int32)
    cosmic = rng.random((n, m)) < 0.02
    flags[cosmic] = int(LightCurveFlag.COSMIC)
    flux[cosmic] *= 0.8
    missing = rng.random((n, m)) < 0.02
    flags[missing] = int(LightCurveFlag.MISSING)
    flux[missing] = np.nan
    mag = 12.0 + 3.0 * np.log10(sigma / 0.001)
    ds = _dataset(t, flux, err, flags, mag, rng)
    inside = (np.abs(t[None, :] - t0[:, None]) < duration[:, None] / 2) & ~cosmic & ~missing
    n_in = inside.sum(axis=1)
    truth = pd.DataFrame(
        {
            "injected": injected & (n_in > 0),
            "depth": depth,
            "t0": t0,
            "duration_h": duration * 24.0,
            "n_in": n_in,
            "snr": depth / (sigma / np.sqrt(np.maximum(n_in, 1))),
            "partial": (t0 - duration / 2 < t[0]) | (t0 + duration / 2 > t[-1]),
            "stable": ~injected,
        }
    )
    return ds, truth


@pytest.fixture(scope="module")
def injections():
    """Four such nights through `classify_sources`: 300 injections, 4000 stable stars."""
    parts = []
    for seed in range(4):
        ds, truth = injected_night(seed)
        sources = classify_sources(ds)
        record = sources.attrs["dip_search"]
        found = (sources["dip_snr"] >= record["threshold"]) & (
            np.abs(sources["dip_time_mjd"] - truth["t0"])
            < (truth["duration_h"] + sources["dip_duration_h"]) / 48.0
        )
        parts.append(
            pd.concat([truth, sources], axis=1).assign(
                found=found, night=seed, threshold=record["threshold"], set_by=record["set_by"]
            )
        )
    return pd.concat(parts, ignore_index=True)


def test_injected_transits_found(injections):
    table = injections
    injected = table[table["injected"]]
    assert len(injected) >= 200
    strong = injected[injected["snr"] >= 10]
    assert len(strong) >= 150
    # measured: 97-99% per night (the misses are long or edge-cut events that the linear
    # baseline partly absorbs, and slow-ingress trapezoids a box fits at ~0.6 of their S/N)
    assert strong["found"].mean() >= 0.95, strong.loc[~strong["found"], ["snr", "duration_h"]]
    assert (strong["kind"] == "variable").mean() >= 0.95
    # events seen in part (only the ingress or the egress inside the night) too
    partial = strong[strong["partial"]]
    assert len(partial) >= 50
    assert partial["found"].mean() >= 0.90
    # the box's depth: a box fitted to a trapezoid averages its slopes in, so between the
    # trapezoid's mean over its duration (1 - ingress/duration: >= 0.75) and its full depth,
    # within 4 sigma (red noise makes the error ~10% optimistic)
    full = strong[strong["found"] & ~strong["partial"]]
    ratio = full["dip_depth"] / full["depth"]
    k = 4 * full["dip_depth_err"] / full["depth"]
    assert ((ratio > 0.75 - k) & (ratio < 1.0 + k)).mean() >= 0.9
    # most are named transits (a half-night dip with slow slopes is nearly a sinusoid's trough)
    assert (strong.loc[strong["found"], "var_type"] == "transit").mean() >= 0.85


def test_stable_curves_not_flagged(injections):
    stable = injections[injections["stable"]]
    assert len(stable) >= 4000
    flagged = (stable["dip_snr"] >= stable["threshold"]).mean()
    assert flagged <= 0.01, flagged  # measured: 0 of 4000
    assert (stable["kind"] == "variable").mean() <= 0.01
    assert ((injections["var_type"] == "") == (injections["kind"] != "variable")).all()
    # the threshold came from the night's stable stars (their red noise is above white noise's)
    assert (injections.groupby("night")["set_by"].first() == "stable stars").all()


# --------------------------------------------------------------------------------------------
# the pieces


def test_box_grid_holds_partial_boxes_and_does_not_grow_with_the_frames():
    t = np.linspace(0.0, 0.25, 300)  # 6 h
    grid = box_grid(t, min_duration=0.25 / 24, max_duration=0.125)
    assert (grid.stop > grid.start).all()
    assert grid.duration.min() == pytest.approx(0.25 / 24)
    assert grid.duration.max() <= 0.125
    # boxes cut by the first frame (only an egress seen) and by the last (only an ingress)
    assert ((grid.start == 0) & (grid.time_mid - grid.duration / 2 < 0)).sum() >= 10
    assert ((grid.stop == t.size) & (grid.time_mid + grid.duration / 2 > 0.25)).sum() >= 10
    # about 20 x span / shortest box (oversample 4, step 1.25), whatever the cadence
    dense = box_grid(np.linspace(0.0, 0.25, 3000), min_duration=0.25 / 24, max_duration=0.125)
    assert 300 < grid.n_boxes < 700
    assert dense.n_boxes < 1.2 * grid.n_boxes
    with pytest.raises(ValueError, match="sorted"):
        box_grid(t[::-1], min_duration=0.01, max_duration=0.1)


def test_constant_baseline_is_astropys_box_least_squares():
    """With a constant baseline and the errors as given, the best box's depth, its error and
    S/N are `astropy.timeseries.BoxLeastSquares.compute_stats`' for the same box (a period
    longer than the night: one event), on 20 light curves with dips anywhere, edges included."""
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0.0, 0.25, 200))
    grid = box_grid(t, min_duration=0.25 / 24, max_duration=0.125)
    mids = np.r_[-1e9, 0.5 * (t[1:] + t[:-1]), 1e9]  # box ends half-way between points
    for k in range(20):
        err = rng.uniform(0.002, 0.004, t.size)
        y = 1.0 + rng.normal(0.0, 1.0, t.size) * err
        a = int(rng.integers(0, 180))
        y[a : a + int(rng.integers(5, 60))] -= 0.004
        ours = search_arrays(t, y[None, :], err[None, :], grid, baseline="constant",
                             scale_errors=False, min_points_in=1)  # fmt: skip
        lo, hi = mids[ours["start"][0]], mids[ours["stop"][0]]
        lo, hi = max(lo, t[0] - 0.01), min(hi, t[-1] + 0.01)
        stats = BoxLeastSquares(t, y, err).compute_stats(
            period=10.0, duration=hi - lo, transit_time=0.5 * (lo + hi)
        )
        depth, depth_err = stats["depth"]
        assert ours["depth"][0] == pytest.approx(depth, rel=1e-9), k
        assert ours["depth_err"][0] == pytest.approx(depth_err, rel=1e-9), k
        assert ours["snr"][0] == pytest.approx(depth / depth_err, rel=1e-9), k
        # and it is the injected dip: 4 mmag at ~3 mmag per point, within 5 sigma
        assert abs(depth - 0.004) < 5 * depth_err, k


def test_flagged_points_movers_and_short_curves_are_left_out():
    rng = np.random.default_rng(5)
    m = 120
    t = 60000.0 + np.linspace(0.0, 0.2, m)
    flux = 1.0 + rng.normal(0.0, 0.002, (4, m))
    err = np.full((4, m), 0.002)
    flags = np.zeros((4, m), dtype=np.int32)
    flux[:, 40:60] *= 0.9  # a 10% dip ...
    flags[0, 40:60] = int(LightCurveFlag.EDGE)  # ... of flagged points (edge of the frame)
    flags[1, 40:60] = int(LightCurveFlag.NEAR_MOVER)  # ... where a mover passes
    flags[2, 14:] = int(LightCurveFlag.MISSING)  # 14 points: fewer than min_points (15)
    ds = _dataset(t, flux, err, flags, np.full(4, 14.0), rng)
    dips = dip_search(ds, skip=np.array([False, False, False, True]))  # 3: a mover
    assert dips.loc[0, "dip_snr"] < 5 and dips.loc[1, "dip_snr"] < 5  # pure noise left
    assert dips.loc[0, "n_dip_points"] == m - 20
    assert np.isnan(dips.loc[2, "dip_snr"]) and np.isnan(dips.loc[3, "dip_snr"])
    # unflagged, the same dip is found: 20 points at 50 sigma
    clean = dip_search(ds.assign(flags=ds["flags"] * 0))
    assert (clean["dip_snr"].iloc[:2] > 100).all()
    assert clean["dip_depth"].iloc[:2].to_numpy() == pytest.approx(0.1, abs=0.003)


def test_threshold_from_stable_stars_or_white_noise():
    rng = np.random.default_rng(0)
    loc, scale = 2.0, 0.5
    sample = rng.gumbel(loc, scale, 20000)
    q, fit_loc, fit_scale = gumbel_quantile(sample, 0.999)
    assert fit_loc == pytest.approx(loc, abs=0.02)  # quartiles of 20000: ~0.01
    assert fit_scale == pytest.approx(scale, abs=0.02)
    assert q == pytest.approx(loc - scale * np.log(-np.log(0.999)), abs=0.1)
    # a few real events among the stable stars barely move it (quartiles)
    with_events = np.r_[sample[:1000], np.full(30, 40.0)]
    cut = dip_threshold(with_events, rng.gumbel(1.5, 0.4, 400))
    assert cut.set_by == "stable stars"
    assert cut.threshold == pytest.approx(q, abs=0.4)
    assert cut.stable_fraction_above == pytest.approx(30 / 1030, abs=0.005)
    # too few stable stars: white noise alone
    few = dip_threshold(sample[:10], rng.gumbel(1.5, 0.4, 400), min_stable=20)
    assert few.set_by == "white noise" and np.isnan(few.stable_threshold)
    assert few.threshold == pytest.approx(1.5 - 0.4 * np.log(-np.log(0.999)), abs=0.3)
    # never below white noise's
    low = dip_threshold(rng.gumbel(0.5, 0.2, 500), rng.gumbel(1.5, 0.4, 400))
    assert low.set_by == "white noise"
    assert json.dumps(low.as_record())
    with pytest.raises(ValueError, match="false_alarm"):
        dip_threshold(sample, sample, false_alarm=0.0)


def test_white_noise_threshold_is_the_maximum_of_many_boxes():
    t = 60000.0 + np.linspace(0.0, 0.25, 250)
    ds = xr.Dataset(coords={"time_mjd": ("frame", t)})
    snr = noise_snr(ds, n_curves=4000, seed=1)
    # the best of ~500 boxes: its median near 2.6 sigma; 0.1% of white-noise curves reach ~4.7
    assert 2.2 < np.median(snr) < 3.0
    assert 4.2 < np.percentile(snr, 99.9) < 5.3
    # the Gumbel quantile fitted on the quartiles is above the empirical one (conservative)
    assert gumbel_quantile(snr, 0.999)[0] > np.percentile(snr, 99.9)
    # seeded: the same threshold on every rerun
    np.testing.assert_array_equal(
        noise_snr(ds, n_curves=50, seed=1), noise_snr(ds, n_curves=50, seed=1)
    )


def test_var_type_guesses():
    rng = np.random.default_rng(2)
    m = 200
    t = 60000.0 + np.linspace(0.0, 0.25, m)
    x = (t - t.mean()) / 0.25
    sigma = 0.003
    shapes = [
        1.0 - trapezoid_dip(t, t[120], 100.0, 0.015, 0.06, 0.008),  # transit, 1.5%
        1.0 - trapezoid_dip(t, t[30], 100.0, 0.25, 0.05, 0.02),  # eclipse, 25%
        1.0 + 0.02 * np.sin(2 * np.pi * (t - t[0]) / 0.1),  # pulsating, 2.4 h
        1.0 + 0.03 * x + 0.02 * x**2,  # trend
        np.ones(m),  # stable
    ]
    flux = np.array(shapes) + rng.normal(0.0, sigma, (len(shapes), m))
    ds = _dataset(t, flux, np.full(flux.shape, sigma), np.zeros(flux.shape, np.int32),
                  np.full(len(shapes), 14.0), rng)  # fmt: skip
    variable = np.array([True, True, True, True, False])
    dips = dip_search(ds)
    kinds = guess_var_type(dips, shape_statistics(ds, rows=variable), variable)
    assert list(kinds) == ["transit", "eclipse", "pulsating", "trend", ""]
    assert set(kinds) <= set(VAR_TYPES)
    # the pulsator's period within a grid step (200 steps over a factor 50: 2%)
    period = shape_statistics(ds, rows=variable)["sine_period_h"].iloc[2]
    assert period == pytest.approx(2.4, rel=0.04)


# --------------------------------------------------------------------------------------------
# a whole simulated night: the 1% transit the scatter test called stable


@pytest.fixture(scope="module")
def seed7_night(tmp_path_factory, session_client):
    """`lcdask simulate OUT --frames 60 --size 1024 --seed 7` and `lcdask.run.run` on it with
    the target's position (its 1% transit lasts half the 1.2 h night: the MAD test missed it)."""
    from lcdask.run import run
    from lcdask.simulate import SimConfig, load_truth, simulate_night

    root = tmp_path_factory.mktemp("seed7")
    simulate_night(root / "night", SimConfig(n_frames=60, size=1024, seed=7), n_workers=2)
    truth = load_truth(root / "night")
    target = truth.stars[truth.stars["is_target"]].iloc[0]
    record = run(
        root / "night" / "raw",
        root / "run",
        catalog=root / "night" / "refcat.parquet",
        target=f"{target['ra']} {target['dec']}",
        client=session_client,
    )
    return truth, pd.read_parquet(root / "run" / "sources.parquet"), record


def test_seed7_transit_classed_variable(seed7_night):
    truth, sources, record = seed7_night
    star = truth.stars[truth.stars["is_target"]].iloc[0]
    target = sources[sources["is_target"]].iloc[0]
    assert star["depth"] == 0.01
    search = record["stages"]["lightcurves"]["dip_search"]
    assert target["dip_snr"] >= search["threshold"], (target["dip_snr"], search)
    assert target["kind"] == "variable" and target["var_type"] == "transit"
    # the scatter test alone did not see it (the reason for the search)
    assert target["scatter_ratio"] < 1.6 and target["binned_ratio"] < 3.5
    # in the event, and as deep as a box on a trapezoid can be (module test above), 4 sigma
    assert abs(target["dip_time_mjd"] - star["t0_mjd"]) < star["duration_d"] / 2
    k = 4 * target["dip_depth_err"]
    assert 0.75 * star["depth"] - k < target["dip_depth"] < star["depth"] + k
    # the eclipsing binary and the pulsator named
    stars = truth.stars.set_index("star_id")
    for var_type, name in (("eclipsing", "eclipse"), ("pulsator", "pulsating")):
        s = stars[stars["var_type"] == var_type].iloc[0]
        d = np.hypot(
            (sources["ra"] - s["ra"]) * np.cos(np.deg2rad(s["dec"])), sources["dec"] - s["dec"]
        )
        row = sources.iloc[int(np.argmin(d))]
        assert row["kind"] == "variable" and row["var_type"] == name, row
    # the threshold came from the night's stable stars; no stable star was flagged by it
    assert search["set_by"] == "stable stars" and search["n_stable"] >= 200
    assert search["threshold"] >= search["noise_threshold"]
    kinds = record["stages"]["lightcurves"]["kinds"]
    assert kinds.get("variable", 0) == 3  # the transit, the eclipsing binary, the pulsator
