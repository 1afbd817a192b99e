"""The light-curve cube and ensemble photometry, against the truth of a simulated night."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lcdask.lightcurves import (
    LIGHTCURVE_VARIABLES,
    LightCurveFlag,
    apply_ensemble,
    build_lightcurves,
    detrend,
    ensemble_photometry,
    insert_forced,
    missing_entries,
    select_comparison_stars,
)
from lcdask.match import match_detections
from lcdask.simulate import SimConfig, flux_factor
from lcdask.testing import frame_table, inject_variables, make_detections, simulate_truth


@pytest.fixture(scope="module")
def night():
    """150 frames, 40 injected variables; matched and assembled into light curves."""
    truth = inject_variables(simulate_truth(SimConfig(n_frames=150, seed=5)), 40, seed=2)
    det = make_detections(truth, seed=2)
    frames = frame_table(truth, det)
    match = match_detections(det, frames)
    ds = build_lightcurves(det, match.source_id, frames)
    d = det.assign(source_id=match.source_id)
    star_of = (
        d[(d["source_id"] >= 0) & (d["star_id"] >= 0)]
        .groupby("source_id")["star_id"]
        .agg(lambda s: s.value_counts().index[0])
    )
    star_id = pd.Series(ds["source_id"].to_numpy()).map(star_of).to_numpy()
    return truth, det, frames, match, ds, star_id


@pytest.fixture(scope="module")
def ensemble(night):
    truth, _, _, _, ds, star_id = night
    target = truth.stars.loc[truth.stars["is_target"], "star_id"].to_numpy()
    exclude = ds["source_id"].to_numpy()[np.isin(star_id, target)]
    result = ensemble_photometry(ds, exclude_ids=exclude)
    return result, apply_ensemble(ds, result)


def test_cube_follows_the_stable_interface(night):
    _, det, frames, match, ds, _ = night
    assert ds["flux"].dims == ("source", "frame")
    assert set(LIGHTCURVE_VARIABLES) <= set(ds.data_vars)
    assert ds["time_mjd"].dims == ("frame",)
    assert ds["source_id"].dims == ("source",)
    assert ds.sizes["frame"] == len(frames)
    assert ds.sizes["source"] == match.n_sources
    n_assigned = int((match.source_id >= 0).sum())
    present = (ds["flags"].to_numpy() & LightCurveFlag.MISSING) == 0
    assert present.sum() == n_assigned
    assert np.isfinite(ds["flux"].to_numpy()[present]).all()
    assert np.isnan(ds["flux"].to_numpy()[~present]).all()
    # one detection goes where it belongs
    row = det[match.source_id >= 0].iloc[123]
    sid = match.source_id[det.index.get_loc(row.name)]
    value = ds["flux"].sel(source=int(np.flatnonzero(ds["source_id"].to_numpy() == sid)[0]))
    assert (
        value.sel(frame=int(np.flatnonzero(ds["frame"].to_numpy() == row["frame"])[0]))
        == (row["flux"])
    )


def test_duplicate_detections_are_refused(night):
    _, det, frames, _, _, _ = night
    two = det.iloc[:2].assign(frame=det["frame"].iloc[0])
    with pytest.raises(ValueError, match="resolve_duplicates"):
        build_lightcurves(two, np.array([0, 0]), frames)


def test_missing_entries_and_forced_photometry(night):
    truth, _, _, _, ds, star_id = night
    miss = missing_entries(ds)
    flags = ds["flags"].to_numpy()
    assert len(miss) == int(((flags & LightCurveFlag.MISSING) != 0).sum())
    # predicted positions of fixed stars are their true positions within the astrometric noise
    stars = truth.stars.set_index("star_id")
    sid_to_star = pd.Series(star_id, index=ds["source_id"].to_numpy())
    fixed = miss[miss["source_id"].map(sid_to_star).map(stars["kind"]).eq("stable")]
    true = fixed["source_id"].map(sid_to_star)
    d_dec = (fixed["dec"] - true.map(stars["dec"]).to_numpy()) * 3600
    assert np.nanmedian(np.abs(d_dec)) < 0.3  # median of ~100 detections of 0.1-0.4"
    forced = miss.iloc[:10].assign(flux=1.0, flux_err=0.1, flags=[1] + [0] * 9)
    out = insert_forced(ds, forced)
    f = out["flags"].to_numpy()
    assert int(((f & LightCurveFlag.FORCED) != 0).sum()) == 10
    assert int(((f & LightCurveFlag.MISSING) != 0).sum()) == len(miss) - 10
    assert int((f == LightCurveFlag.FORCED | 1).sum()) == 1  # the measurement's bits kept


def test_comparison_stars_exclude_variables(night, ensemble):
    truth, _, _, _, ds, star_id = night
    result, _ = ensemble
    kinds = truth.stars.set_index("star_id")["kind"]
    sid_to_star = pd.Series(star_id, index=ds["source_id"].to_numpy())
    comp_kinds = sid_to_star.loc[result.comparison_ids].map(kinds)
    assert (comp_kinds == "stable").all()
    assert result.comparison_ids.size >= 10
    np.testing.assert_allclose(result.weights.sum(), 1.0)


def test_transparency_follows_the_zero_point(night, ensemble):
    truth, _, _, _, _, _ = night
    result, _ = ensemble
    zp = truth.frames["zero_point"].to_numpy()
    expected = 10 ** (0.4 * (zp - np.median(zp)))
    # ensemble of ~25 stars of S/N 200-600: a few 1e-4 per frame
    assert np.std(result.transparency / expected) < 1e-3
    assert np.ptp(expected) > 0.01  # there was something to correct


def test_transit_depth_recovered(night, ensemble):
    truth, _, _, _, ds, star_id = night
    _, cube = ensemble
    stars = truth.stars
    target = stars[stars["is_target"]].iloc[0]
    i = int(np.flatnonzero(star_id == target["star_id"])[0])
    snr = np.nanmedian(ds["flux"][i] / ds["flux_err"][i])
    assert 150 < snr < 350  # the S/N ~200 case of the issue
    factor = flux_factor(target, ds["time_mjd"].to_numpy())
    rel = cube["rel_flux"].to_numpy()[i]
    bottom = factor <= 1 - 0.99 * target["depth"]
    out = factor == 1
    assert bottom.sum() > 20 and out.sum() > 20
    depth = 1 - np.nanmedian(rel[bottom]) / np.nanmedian(rel[out])
    assert depth == pytest.approx(target["depth"], rel=0.10)


def test_bright_stable_rms_matches_noise_model(night, ensemble):
    truth, _, _, _, ds, star_id = night
    _, cube = ensemble
    kinds = pd.Series(star_id).map(truth.stars.set_index("star_id")["kind"]).to_numpy()
    mag = np.nanmedian(ds["mag"].to_numpy(), axis=1)
    saturated = ((ds["flags"].to_numpy() & LightCurveFlag.SATURATED) != 0).any(axis=1)
    bright = (kinds == "stable") & (mag < 16) & ~saturated
    rel = cube["rel_flux"].to_numpy()[bright]
    err = cube["rel_flux_err"].to_numpy()[bright]
    rms = np.nanstd(rel, axis=1)
    model = np.sqrt(np.nanmean(err**2, axis=1))
    ratio = rms / model
    assert bright.sum() >= 15
    assert np.median(ratio) < 1.1
    # 150 points: the rms of a noise-only curve is within +-6% (1 sigma) of the model
    assert (ratio < 1.3).all(), ratio.max()


def test_comparison_override(night):
    _, _, _, _, ds, _ = night
    chosen = ds["source_id"].to_numpy()[[5, 6, 7]]
    result = ensemble_photometry(ds, comparison_ids=chosen)
    assert np.array_equal(result.comparison_ids, chosen)
    with pytest.raises(ValueError, match="not sources"):
        ensemble_photometry(ds, comparison_ids=[10**9])
    with pytest.raises(ValueError, match="empty"):
        ensemble_photometry(ds, comparison_ids=[])


def test_too_few_comparison_stars_relax_the_criteria(night):
    """Coverage asked above what any star has: the next step (0.75) is taken, and said."""
    _, _, _, _, ds, _ = night
    normal = ensemble_photometry(ds)
    assert normal.note == ""
    assert normal.criteria == {"min_coverage": 0.9, "min_snr": 30.0}
    relaxed = ensemble_photometry(ds, min_coverage=1.01)
    assert relaxed.criteria["min_coverage"] == 0.75
    assert "candidate comparison stars with coverage >= 0.75" in relaxed.note
    # the same well-covered stars pass the relaxed step: the same choice
    assert set(relaxed.comparison_ids) >= set(normal.comparison_ids)


def test_a_single_comparison_star_is_used(night):
    """S/N asked so that one star passes only at the last step: it is the ensemble alone."""
    _, _, _, _, ds, _ = night
    eligible = select_comparison_stars(ds, n_max=10**6, min_coverage=0.25, min_snr=0.0)
    rows = np.isin(ds["source_id"].to_numpy(), eligible)  # unsaturated, covered
    snr = np.nanmedian(ds["flux"].to_numpy() / ds["flux_err"].to_numpy(), axis=1)[rows]
    best = np.sort(snr)[-2:]  # the two highest S/N of them
    # between them at the last step (S/N factor 1/6): only the brightest passes anywhere
    min_snr = 6 * float(best.mean())
    result = ensemble_photometry(ds, min_snr=min_snr)
    assert result.comparison_ids.size == 1
    assert "only 1 comparison star" in result.note
    c = int(np.flatnonzero(ds["source_id"].to_numpy() == result.comparison_ids[0])[0])
    flux = ds["flux"].to_numpy()
    # the transparency is that star's flux over its median; others are divided by it
    np.testing.assert_allclose(
        result.transparency, flux[c] / np.nanmedian(flux[c]), rtol=1e-12, equal_nan=True
    )
    other = (c + 1) % ds.sizes["source"]
    expected = flux[other] / result.transparency
    np.testing.assert_allclose(
        result.rel_flux[other], expected / np.nanmedian(expected), rtol=1e-12, equal_nan=True
    )
    assert np.isfinite(result.rel_flux_err[other]).sum() > 0


def test_no_comparison_star_falls_back_to_raw_fluxes(night):
    _, _, _, _, ds, _ = night
    result = ensemble_photometry(ds, min_snr=1e9)
    assert result.comparison_ids.size == 0
    assert result.note.startswith("no comparison star")
    flux = ds["flux"].to_numpy()
    with np.errstate(all="ignore"):
        expected = flux / np.nanmedian(flux, axis=1, keepdims=True)
    np.testing.assert_allclose(result.rel_flux, expected, equal_nan=True)
    assert (result.transparency == 1).all()
    cube = apply_ensemble(ds, result)  # storable as any result
    assert not cube["is_comparison"].any()


def test_artefacts_and_flagged_points_never_make_comparison_stars(night, ensemble):
    _, _, _, _, ds, _ = night
    result, _ = ensemble
    chosen = result.comparison_ids
    is_art = np.isin(ds["source_id"].to_numpy(), chosen[:3])
    again = ensemble_photometry(ds.assign(is_artefact=("source", is_art)))
    assert not np.isin(chosen[:3], again.comparison_ids).any()
    # an edge point of a comparison star no longer excludes it (it used to: one point of 150)
    flags = ds["flags"].to_numpy().copy()
    c = int(np.flatnonzero(ds["source_id"].to_numpy() == chosen[0])[0])
    flags[c, 0] |= int(LightCurveFlag.EDGE)
    edged = ensemble_photometry(ds.assign(flags=(("source", "frame"), flags)))
    assert chosen[0] in edged.comparison_ids


def test_detrend_removes_an_airmass_trend(night, ensemble):
    _, _, _, _, _, _ = night
    _, cube = ensemble
    airmass = cube["airmass"].to_numpy()
    i = int(np.flatnonzero(cube["is_comparison"].to_numpy())[0])  # a clean, bright star
    rel = cube["rel_flux"].to_numpy().copy()
    rel[i] *= np.exp(0.5 * (airmass - airmass.mean()))  # a few % over the night
    tilted = cube.copy()
    tilted["rel_flux"] = (("source", "frame"), rel)
    before = np.nanstd(rel[i])
    out = detrend(tilted, regressors=("airmass", "fwhm_px", "sky", "x", "y"))
    after = np.nanstd(out["rel_flux"].to_numpy()[i])
    assert after < 0.7 * before
    assert after < 1.05 * np.nanstd(cube["rel_flux"].to_numpy()[i])  # back to the noise
    # alone (FWHM follows airmass**0.6, so together they share the trend) the slope is found
    alone = detrend(tilted, regressors=("airmass",))
    assert float(alone["detrend_coef"].sel(regressor="airmass")[i]) == pytest.approx(0.5, rel=0.2)
    with pytest.raises(ValueError, match="regressors"):
        detrend(cube, regressors=("humidity",))


def test_an_eclipsing_comparison_star_is_dropped(night, ensemble):
    """A comparison star eclipsed in 15 of 150 frames: its MAD hardly moves, the rule drops it."""
    truth, _, _, _, ds, star_id = night
    result, _ = ensemble
    target = truth.stars.loc[truth.stars["is_target"], "star_id"].to_numpy()
    exclude = ds["source_id"].to_numpy()[np.isin(star_id, target)]
    eclipsed = int(result.comparison_ids[0])
    row = int(np.flatnonzero(ds["source_id"].to_numpy() == eclipsed)[0])
    flux = ds["flux"].to_numpy().copy()
    flux[row, 60:75] *= 0.8  # a 20% eclipse, a tenth of the night
    changed = ds.assign(flux=(ds["flux"].dims, flux))
    zp = truth.frames["zero_point"].to_numpy()
    expected = 10 ** (0.4 * (zp - np.median(zp)))

    dropped = ensemble_photometry(changed, exclude_ids=exclude)
    assert eclipsed in dropped.rejected_ids and eclipsed not in dropped.comparison_ids
    assert np.std(dropped.transparency / expected) < 1e-3
    # without the rule the star stays and its eclipse prints on the transparency
    kept = ensemble_photometry(changed, exclude_ids=exclude, min_outliers=10**6)
    assert eclipsed in kept.comparison_ids
    assert np.std(kept.transparency / expected) > 2e-3


def test_comparison_points_left_out_in_the_clear_frames_bias_nothing(night, ensemble):
    """A comparison star whose good points are only the cloudy frames keeps its true scale.

    Its median over its own good points would be the cloudy frames' (30% low); every frame
    it misses would then move the others' relative flux by its share of the ensemble (on the
    real XO-1 night, 5%).
    """
    _, _, _, _, ds, _ = night
    result, _ = ensemble
    chosen = result.comparison_ids[:4]
    sid = ds["source_id"].to_numpy()
    flux = ds["flux"].to_numpy().copy()
    flags = ds["flags"].to_numpy().copy()
    cloudy = np.arange(flux.shape[1]) % 3 == 0  # a third of the frames, 30% of the light lost
    flux[:, cloudy] *= 0.7
    ds_err = ds["flux_err"].to_numpy().copy()
    ds_err[:, cloudy] *= 0.7
    c = int(np.flatnonzero(sid == chosen[0])[0])
    flags[c, ~cloudy] |= int(LightCurveFlag.MASKED)  # its good points: the cloudy frames only
    clouded = ds.assign(
        flux=(("source", "frame"), flux),
        flux_err=(("source", "frame"), ds_err),
        flags=(("source", "frame"), flags),
    )
    again = ensemble_photometry(clouded, comparison_ids=chosen)
    base = ensemble_photometry(ds, comparison_ids=chosen)
    others = ~np.isin(sid, chosen)
    ratio = again.rel_flux[others] / base.rel_flux[others]
    # the clouds divide out, and the masked star's frames do not shift anyone: 1 within 0.2%
    # (without the common scale the clear frames came out 0.7 / 4 + ... = 7% off)
    assert np.nanmax(np.abs(np.nanmedian(ratio, axis=0) - 1)) < 0.002


def test_bright_comparison_stars_with_a_systematic_floor_are_kept(night):
    """Bright stars whose scatter is 0.5% of systematics, not photon noise, stay in."""
    _, _, _, _, ds, _ = night
    base = ensemble_photometry(ds)
    chosen = base.comparison_ids[:6]
    sid = ds["source_id"].to_numpy()
    rng = np.random.default_rng(4)
    flux = ds["flux"].to_numpy().copy()
    err = ds["flux_err"].to_numpy().copy()
    rows = np.flatnonzero(np.isin(sid, chosen))
    flux[rows] *= 1 + rng.normal(0, 0.004, (rows.size, flux.shape[1]))  # flat-field errors
    err[rows] = np.abs(flux[rows]) * 0.001  # photon noise of 0.1%
    noisy = ds.assign(flux=(("source", "frame"), flux), flux_err=(("source", "frame"), err))
    result = ensemble_photometry(noisy, comparison_ids=None)
    # 0.4% of systematics over 0.1% of photon noise is a ratio of 4: without the floor the
    # six would be dropped as too noisy; with 0.5% added in quadrature the ratio is ~0.8
    assert set(chosen) <= set(result.comparison_ids)
    assert not np.isin(result.rejected_ids, chosen).any()


def test_every_aperture_kept_forced_and_flattened(night):
    """``flux_ap`` (source, frame, aperture): from the detections' ``flux_ap<k>`` columns,
    filled by forced photometry, divided by a star flat's throughput like ``flux``."""
    from lcdask.lightcurves import APERTURE_VARIABLES, StarFlat, aperture_columns

    _, det, frames, match, _, _ = night
    scale = np.array([0.8, 1.0, 1.1])  # three apertures' fluxes, a known multiple of ``flux``
    columns = {}
    for k, name in enumerate(aperture_columns(3)):
        base = det["flux_err"] if name.endswith("_err") else det["flux"]
        columns[name] = base.to_numpy() * scale[k // 2]
    det3 = det.assign(**columns)
    apertures = ((1.0, "fwhm"), (1.5, "fwhm"), (6.0, "px"))
    ds = build_lightcurves(det3, match.source_id, frames.assign(fwhm_px=2.5), apertures=apertures)
    assert set(APERTURE_VARIABLES) <= set(ds.data_vars)
    assert ds["flux_ap"].dims == ("source", "frame", "aperture")
    assert ds["flux_ap"].dtype == np.float32
    assert ds["aperture"].to_numpy().tolist() == [1, 2, 3]
    assert ds["aperture_unit"].to_numpy().tolist() == ["fwhm", "fwhm", "px"]
    np.testing.assert_allclose(ds["aperture_radius_px"].to_numpy()[0], [2.5, 3.75, 6.0])
    flux = ds["flux"].to_numpy()
    for k in range(3):  # to float32's precision
        np.testing.assert_allclose(
            ds["flux_ap"].to_numpy()[:, :, k], scale[k] * flux, rtol=1e-6, equal_nan=True
        )
    # a float32 cube: half the bytes of float64 (6 apertures x 2 variables x 4 bytes a point)
    assert ds["flux_ap"].nbytes == ds["flux"].nbytes * 3 // 2
    # forced points get every aperture; a detection without one stays NaN there
    miss = missing_entries(ds).iloc[:5]
    forced = miss.assign(flux=2.0, flux_err=0.2, flux_ap1=1.6, flux_ap1_err=0.16, flux_ap2=2.0)
    out = insert_forced(ds, forced)
    sid, fid = out["source_id"].to_numpy(), out["frame"].to_numpy()
    for row in forced.itertuples():
        s = int(np.flatnonzero(sid == row.source_id)[0])
        f = int(np.flatnonzero(fid == row.frame)[0])
        np.testing.assert_allclose(out["flux_ap"].to_numpy()[s, f, :2], [1.6, 2.0])
        assert np.isnan(out["flux_ap"].to_numpy()[s, f, 2])
        assert out["flux_ap_err"].to_numpy()[s, f, 0] == pytest.approx(0.16)
    # a star flat divides every aperture by the same throughput
    flat = StarFlat(
        order=1,
        exponents=((1, 0),),
        coefficients=np.array([0.1]),
        centre=(500.0, 500.0),
        half_size=(500.0, 500.0),
        box=(0.0, 1000.0, 0.0, 1000.0),
        shift_px=50.0,
        usable=True,
    )
    flat_ds = flat.apply(ds)
    ratio = flat_ds["flux_ap"].to_numpy() / ds["flux_ap"].to_numpy()
    expected = np.broadcast_to(1 / flat_ds["star_flat"].to_numpy()[:, :, None], ratio.shape)
    finite = np.isfinite(ratio)
    assert finite.sum() > 10_000
    np.testing.assert_allclose(ratio[finite], expected[finite], rtol=1e-6)  # float32
    assert flat_ds["flux_ap"].dtype == np.float32
