"""The data of the figures (`lcdask.products.views`) against the simulated night's truth."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from test_report import transit_depth, write_simulated_run

from lcdask.products import views


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    truth, ds, sources = write_simulated_run(run_dir)
    return run_dir, truth, ds, sources


def test_views_import_no_plotting_library():
    # plain data: neither matplotlib nor bokeh is needed to prepare a figure
    import subprocess

    code = (
        "import sys, lcdask.products.views; "
        "print('matplotlib' in sys.modules, 'bokeh' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_target_view_for_the_pngs_and_the_report(run):
    _, truth, ds, sources = run
    png = views.target_view(ds, sources)
    page = views.target_view(ds, sources, comparison_order="mag", offset_time=False)
    t = ds["time_mjd"].to_numpy()
    assert png.source_id == int(sources.loc[sources["is_target"], "source_id"].iloc[0])
    # the PNG's times are days after the whole MJD before the night; the report's the MJD
    assert png.t0 == np.floor(t.min()) and page.t0 == 0.0
    np.testing.assert_array_equal(png.time + png.t0, t)  # t - floor(t) is exact
    np.testing.assert_array_equal(page.time, t)
    depth = transit_depth(truth, png.time_mjd, png.rel_flux)
    assert depth == pytest.approx(truth.config.transit_depth, rel=0.2)  # S/N ~250 per frame
    # the same bins on either time axis (the bin edges do not depend on the origin)
    measured = np.isfinite(png.rel_flux) & np.isfinite(png.rel_flux_err)
    assert len(png.binned) == len(page.binned) and png.binned["n"].sum() == measured.sum()
    np.testing.assert_allclose(png.binned["time"] + png.t0, page.binned["time"], atol=1e-9)
    np.testing.assert_array_equal(png.binned["value"], page.binned["value"])
    # comparison stars: the report's are the brightest, the PNG's the heaviest weights first
    comp = sources[sources["is_comparison"]]
    assert page.n_comparison_stars == png.n_comparison_stars == len(comp)
    assert page.comparison_ids.tolist() == comp.sort_values("mag")["source_id"].tolist()[:8]
    weight = ds["comparison_weight"].to_series().set_axis(ds["source_id"].to_numpy())
    assert np.all(np.diff(weight.loc[png.comparison_ids].to_numpy()) <= 0)
    # the offset keeps the stars' curves apart: each 2-98% range above the next one's
    shown = png.comparison_rel_flux - png.comparison_offset[:, None]
    low, high = np.nanpercentile(shown, [2, 98], axis=1)
    assert np.all(low[:-1] > high[1:])
    assert png.transparency is not None and png.transparency.shape == t.shape


def test_target_view_without_target_or_comparison_measurements(run):
    _, _, ds, sources = run
    assert views.target_view(ds, sources.assign(is_target=False)) is None
    # comparison stars without a measurement: the offsets fall back to their least, 0.01
    blank = ds.assign(rel_flux=ds["rel_flux"].where(~ds["is_comparison"]))
    view = views.target_view(blank, sources)
    assert view.comparison_step == 0.01
    np.testing.assert_array_equal(view.comparison_offset, 0.01 * np.arange(8))


def test_variables_view_ranks_and_bins_the_variables(run):
    _, truth, ds, sources = run
    view = views.variables_view(ds, sources, max_shown=2)
    var = sources[(sources["kind"] == "variable") & ~sources["is_target"]]
    assert len(view.ranked) == len(var) and len(view.shown) == min(2, len(var))
    score = np.fmax(view.ranked["scatter_ratio"], view.ranked["binned_ratio"]).to_numpy()
    assert np.all(np.diff(score) <= 0)  # the most significant first
    # the most significant are simulated variables (the nearest truth star within 2")
    stars = truth.stars
    for _, row in view.shown.iterrows():
        cosd = np.cos(np.deg2rad(row["dec"]))
        sep = np.hypot((stars["ra"] - row["ra"]) * cosd, stars["dec"] - row["dec"]) * 3600
        assert sep.min() < 2.0 and stars["kind"].iloc[int(np.argmin(sep))] == "variable"
    # the shown light curves are those of the Dataset, in the order of `shown`
    ids = ds["source_id"].to_numpy()
    for k, sid in enumerate(view.shown["source_id"]):
        row = int(np.flatnonzero(ids == sid)[0])
        np.testing.assert_array_equal(view.rel_flux[k], ds["rel_flux"].to_numpy()[row])
        # 25 bins over the night; each bin's time inside the night
        b = view.binned[k]
        assert 20 <= len(b) <= 26 and b["n"].sum() == np.isfinite(view.rel_flux[k]).sum()
        assert view.time.min() <= b["time"].min() and b["time"].max() <= view.time.max()
    np.testing.assert_array_equal(view.time + view.t0, ds["time_mjd"].to_numpy())
    page = views.variables_view(ds, sources, max_shown=2, offset_time=False)
    assert page.t0 == 0.0
    np.testing.assert_array_equal(page.time, ds["time_mjd"].to_numpy())
    none = views.variables_view(ds, sources.assign(kind="stable"))
    assert none.ranked.empty and none.rel_flux.shape == (0, 0) and none.binned == []


def test_movers_view_tracks_against_the_simulated_motion(run):
    _, truth, ds, sources = run
    view = views.movers_view(ds, sources, max_movers=2)
    every = views.movers_view(ds, sources)
    moving = sources[sources["kind"] == "moving"]
    assert every.movers["source_id"].tolist() == moving["source_id"].tolist()  # table order
    assert len(view.movers) == min(2, len(moving))
    assert np.all(
        np.diff(view.tracks.groupby("source_id", sort=False)["rate_arcsec_h"].first()) <= 0
    )
    assert view.tracks["source_id"].unique().tolist() == view.movers["source_id"].tolist()
    truth_rate = np.hypot(truth.movers["rate_ra_arcsec_h"], truth.movers["rate_dec_arcsec_h"])
    for sid, g in every.tracks.groupby("source_id", sort=False):
        # each mover's rate is a simulated mover's (matched by rate: 3 movers of distinct rates)
        rate = g["rate_arcsec_h"].iloc[0]
        assert np.min(np.abs(truth_rate - rate) / truth_rate) < 0.05, (sid, rate)
        # the measured positions follow the fitted motion to within the astrometric noise
        assert np.median(np.hypot(g["ra_residual"], g["dec_residual"])) < 0.5  # arcsec
        # the offsets from the epoch position grow with the rate over the track
        span_h = (g["time_mjd"].max() - g["time_mjd"].min()) * 24.0
        travel = np.hypot(np.ptp(g["east_fit"]), np.ptp(g["north_fit"]))
        assert travel == pytest.approx(rate * span_h, rel=1e-6)
    np.testing.assert_array_equal(every.tracks["time"] + every.t0, every.tracks["time_mjd"])


def test_coadd_view_puts_the_tracks_on_their_pixels(run):
    from test_report import coadd_wcs

    _, truth, ds, sources = run
    size = truth.config.size
    image = np.arange(size * size, dtype=np.float32).reshape(size, size)
    movers = views.movers_view(ds, sources)
    view = views.coadd_view((image, coadd_wcs(truth)), movers, sources, max_pixels=300)
    assert view.step == int(np.ceil(size / 300)) and view.shape == (size, size)
    np.testing.assert_array_equal(view.image, image[:: view.step, :: view.step])
    # the detections' pixel positions in the first frame's WCS: within the frame, and on the
    # light curves' own x, y (frame 0 has that WCS; later frames drift by a few pixels)
    tracks = view.tracks
    assert tracks["x"].between(-0.5, size).all() and tracks["y"].between(-0.5, size).all()
    first = tracks[tracks["frame"] == 0]
    assert len(first) == len(movers.movers)
    ids = ds["source_id"].to_numpy()
    for _, row in first.iterrows():
        k = int(np.flatnonzero(ids == row["source_id"])[0])
        # the simulated detections' position noise: ~0.03 px on these bright movers
        dx, dy = row["x"] - float(ds["x"][k, 0]), row["y"] - float(ds["y"][k, 0])
        assert abs(dx) < 0.1 and abs(dy) < 0.1
    assert view.labels["source_id"].tolist() == movers.movers["source_id"].tolist()
    grey = view.grey()
    assert grey.dtype == np.uint8 and grey.min() == 0 and grey.max() == 255
    assert view.target_x.shape == (1,) and 0 <= view.target_x[0] < size


def test_scatter_view_curves_follow_the_non_moving_sources(run):
    _, _, _, sources = run
    view = views.scatter_view(sources)
    np.testing.assert_array_equal(view.mag, sources["mag"])
    assert set(view.curves) == {"expected_scatter", "noise_model"}
    fixed = sources[sources["kind"] != "moving"]
    for col, curve in view.curves.items():
        assert np.all(np.diff(curve["mag"]) >= 0) and len(curve) == 20
        at = np.interp(fixed["mag"], curve["mag"], curve["value"])
        # a median curve through the values: within 10% of them in the median
        assert np.nanmedian(np.abs(np.log(fixed[col] / at))) < 0.1, col
    # the movers do not bend the curves
    wild = sources.assign(
        expected_scatter=sources["expected_scatter"].where(sources["kind"] != "moving", 100.0)
    )
    curve = views.scatter_view(wild).curves["expected_scatter"]
    pd.testing.assert_frame_equal(curve, view.curves["expected_scatter"])
    zero = views.scatter_view(sources.assign(mad_scatter=0.0))
    assert np.isnan(zero.positive_scatter).all() and (zero.mad_scatter == 0).all()


def test_frames_view_completes_the_table_from_the_light_curves(run):
    run_dir, truth, ds, _ = run
    frames = pd.read_parquet(run_dir / "frames.parquet")
    view = views.frames_view(frames, ds)
    assert "transparency" not in frames and "transparency" in view.table
    assert [c for c, _ in view.panels] == [
        "zero_point",
        "fwhm_px",
        "sky",
        "airmass",
        "transparency",
        "n_sources",
        "astrometry_rms_arcsec",
    ]
    np.testing.assert_array_equal(view.time_mjd, truth.frames["time_mjd"])
    assert view.t0 == np.floor(truth.frames["time_mjd"].min())
    np.testing.assert_array_equal(view.time + view.t0, view.time_mjd)
    alone = views.frames_view(frames)  # the table as given
    assert "transparency" not in alone.table and len(alone.panels) == 6
    assert views.frames_view(frames.drop(columns="time_mjd")).time_mjd is None
