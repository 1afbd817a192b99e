"""Photometric calibration: matching, the RANSAC zero point and Jy fluxes, against truth.

The simulated part makes noisy frames from the simulator's noiseless truth images (Poisson and
read noise added here, saturation at the SATURATE level), detects stars with sep, matches them to
the simulated SDSS-like catalog through the true WCS, and measures aperture fluxes. Those are
turned into total fluxes with each star's exact aperture fraction (from the truth PSF), so that
what is tested is the calibration, not an aperture correction; the noise, the sky estimate, the
neighbours in the aperture, the saturated stars and the catalog's wrong and blended entries are all
real.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose

from lcdask._utils.robust import sample_without_replacement
from lcdask.errors import FrameError, LcdaskError
from lcdask.photcal import (
    PhotometricCalibrationError,
    ZeroPointFit,
    _ransac_inliers,
    calibrate_fluxes,
    calibrate_image_jy,
    fit_zero_point,
    instrumental_mag,
    instrumental_mag_err,
    isolated,
    match_to_catalog,
    to_jansky,
    to_jansky_err,
)

# --------------------------------------------------------------------------------------------
# small pure functions


def test_to_jansky_ab_definition():
    assert_allclose(to_jansky(0.0), 3631.0)
    assert_allclose(to_jansky(8.9), 1.0, rtol=2e-3)  # AB 8.90 is 1 Jy (3631 Jy rounded)
    assert_allclose(to_jansky([16.4, 23.9]), [1e-3, 1e-6], rtol=2e-3)  # 1 mJy, 1 uJy
    # 0.01 mag is 0.921% in flux
    assert_allclose(to_jansky_err(15.0, 0.01), to_jansky(15.0) * 0.01 * np.log(10) / 2.5)


def test_instrumental_mag_and_err():
    assert_allclose(instrumental_mag([100.0, 1000.0], 10.0), [-2.5, -5.0])
    assert np.isnan(instrumental_mag([0.0, -5.0], 1.0)).all()
    assert_allclose(instrumental_mag_err(1000.0, 10.0), 2.5 / np.log(10) * 0.01)
    assert np.isnan(instrumental_mag_err(-1.0, 1.0))
    with pytest.raises(ValueError, match="exptime_s"):
        instrumental_mag(1.0, 0.0)


def test_match_to_catalog_nearest_unique_within_radius():
    cat_ra = np.array([10.0, 10.001, 10.01, np.nan])
    cat_dec = np.array([20.0, 20.0, 20.0, 20.0])
    arcsec = 1.0 / 3600.0
    det_ra = np.array([10.0 + 0.3 * arcsec, 10.0 + 0.5 * arcsec, 10.001, 10.02, np.nan])
    det_dec = np.array([20.0, 20.0, 20.0 + 0.2 * arcsec, 20.0, 20.0])
    m = match_to_catalog(det_ra, det_dec, cat_ra, cat_dec, radius_arcsec=1.0)
    # detections 0 and 1 both want star 0: the closer (0) wins; 3 is too far; 4 is NaN
    assert m.det_index.tolist() == [0, 2]
    assert m.cat_index.tolist() == [0, 1]
    assert_allclose(m.sep_arcsec, [0.3 * np.cos(np.deg2rad(20.0)), 0.2], rtol=1e-4)
    empty = match_to_catalog([], [], cat_ra, cat_dec, radius_arcsec=1.0)
    assert empty.det_index.size == 0 and empty.det_index.dtype == np.int64
    with pytest.raises(ValueError, match="radius_arcsec"):
        match_to_catalog(det_ra, det_dec, cat_ra, cat_dec, radius_arcsec=0.0)


def test_isolated():
    arcsec = 1.0 / 3600.0
    ra = np.array([0.0, 5 * arcsec, 100 * arcsec, 103 * arcsec])
    dec = np.zeros(4)
    mag = np.array([15.0, 15.5, 14.0, 19.5])  # star 3 is 5.5 mag fainter than star 2
    assert isolated(ra, dec, mag, radius_arcsec=10.0).tolist() == [False, False, True, False]
    assert isolated(ra, dec, mag, radius_arcsec=1.0).all()


# --------------------------------------------------------------------------------------------
# the fit on synthetic lines


def synthetic_stars(
    n: int = 300,
    *,
    zero_point: float = 22.3,
    slope: float = 1.02,
    color_term: float = 0.0,
    bad_fraction: float = 0.05,
    seed: int = 0,
):
    """Catalog and instrumental magnitudes on a known line, with wrong entries and saturation."""
    rng = np.random.default_rng(seed)
    cat_true = rng.uniform(13.0, 20.0, n)
    color = rng.uniform(0.2, 1.4, n)
    cat_err = np.hypot(0.015, 10 ** (0.4 * (cat_true - 23.25)))
    inst_true = (cat_true - zero_point - color_term * color) / slope
    inst_err = np.hypot(0.003, 0.02 * 10 ** (0.4 * (cat_true - 18.0)))
    cat = cat_true + rng.normal(0, 1, n) * cat_err
    inst = inst_true + rng.normal(0, 1, n) * inst_err
    bad = rng.uniform(0, 1, n) < bad_fraction
    cat[bad] += rng.uniform(0.3, 2.0, bad.sum()) * rng.choice([-1, 1], bad.sum())
    saturated = cat_true < 13.5
    inst[saturated] += 0.5 * (13.5 - cat_true[saturated]) + 0.2  # flat-topped: too faint
    return inst, inst_err, cat, cat_err, color, bad, saturated


def test_fit_recovers_line_and_rejects_outliers():
    inst, inst_err, cat, cat_err, _, bad, sat = synthetic_stars(seed=1)
    fit = fit_zero_point(inst, inst_err, cat, cat_err)
    assert isinstance(fit, ZeroPointFit)
    # 4 sigma of the fit's own errors: the errors are the check of each other here
    assert abs(fit.zero_point - 22.3) < 4 * fit.zero_point_err
    assert abs(fit.slope - 1.02) < 4 * fit.slope_err
    assert fit.zero_point_err < 0.05 and fit.slope_err < 0.01
    assert not (fit.inliers & bad).any(), "a wrong catalog entry was used"
    assert not (fit.inliers & sat).any(), "a saturated star was used"
    assert fit.n_matched == inst.size and fit.n_used == fit.inliers.sum()
    assert 0.5 < fit.chi2_reduced < 1.5
    assert fit.covariance.shape == (2, 2)
    assert set(fit.as_dict()) >= {"zero_point", "slope", "zero_point_err", "slope_err", "n_used"}
    # deterministic for a fixed random_state
    again = fit_zero_point(inst, inst_err, cat, cat_err)
    assert again.zero_point == fit.zero_point and (again.inliers == fit.inliers).all()


def test_fit_errors_are_calibrated():
    """Over many independent fields the scatter of the fit equals its stated errors."""
    pulls_zp, pulls_slope = [], []
    for seed in range(40):
        inst, inst_err, cat, cat_err, *_ = synthetic_stars(n=150, seed=100 + seed)
        fit = fit_zero_point(inst, inst_err, cat, cat_err)
        pulls_zp.append((fit.zero_point - 22.3) / fit.zero_point_err)
        pulls_slope.append((fit.slope - 1.02) / fit.slope_err)
    # 40 samples: the standard deviation of a unit normal is within 0.75-1.3 at ~3 sigma
    assert 0.75 < np.std(pulls_zp) < 1.3
    assert 0.75 < np.std(pulls_slope) < 1.3
    assert abs(np.mean(pulls_zp)) < 0.5  # 3 sigma of a mean of 40 unit normals


def test_fit_color_term_and_fixed_slope():
    inst, inst_err, cat, cat_err, color, bad, _ = synthetic_stars(color_term=0.08, seed=2)
    fit = fit_zero_point(inst, inst_err, cat, cat_err, color=color)
    assert fit.fit_color and fit.covariance.shape == (3, 3)
    assert abs(fit.color_term - 0.08) < 4 * fit.color_term_err
    assert abs(fit.slope - 1.02) < 4 * fit.slope_err
    assert not (fit.inliers & bad).any()
    inst, inst_err, cat, cat_err, *_ = synthetic_stars(slope=1.0, seed=3)
    fixed = fit_zero_point(inst, inst_err, cat, cat_err, fit_slope=False)
    assert fixed.slope == 1.0 and fixed.slope_err == 0.0 and fixed.covariance.shape == (1, 1)
    assert abs(fixed.zero_point - 22.3) < 4 * fixed.zero_point_err
    assert fixed.zero_point_err < 0.005  # ~200 stars of 0.02-0.05 mag, no slope to extrapolate


def test_fit_cuts_good_mask_and_range():
    inst, inst_err, cat, cat_err, *_ = synthetic_stars(seed=4)
    good = np.ones(inst.size, bool)
    good[:20] = False
    fit = fit_zero_point(inst, inst_err, cat, cat_err, good=good, cat_mag_range=(14.0, 19.0))
    assert not fit.inliers[:20].any()
    assert (cat[fit.inliers] >= 14.0).all() and (cat[fit.inliers] <= 19.0).all()


def test_fit_too_few_stars_is_a_frame_error():
    inst, inst_err, cat, cat_err, *_ = synthetic_stars(n=4, bad_fraction=0.0, seed=5)
    with pytest.raises(PhotometricCalibrationError, match="usable") as info:
        fit_zero_point(inst, inst_err, cat, cat_err)
    assert isinstance(info.value, FrameError) and isinstance(info.value, LcdaskError)
    nan = np.full(10, np.nan)
    with pytest.raises(PhotometricCalibrationError):
        fit_zero_point(nan, nan, nan, nan)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"residual_threshold": 0.0}, "residual_threshold"),
        ({"systematic_err": -0.1}, "systematic_err"),
        ({"color": np.zeros(3)}, "color"),
        ({"good": np.ones(3, bool)}, "good"),
    ],
)
def test_fit_bad_inputs(kwargs, message):
    inst, inst_err, cat, cat_err, *_ = synthetic_stars(n=50, seed=6)
    with pytest.raises(ValueError, match=message):
        fit_zero_point(inst, inst_err, cat, cat_err, **kwargs)


def test_fit_shape_mismatch():
    with pytest.raises(ValueError, match="equal length"):
        fit_zero_point(np.zeros(5), np.zeros(5), np.zeros(4), np.zeros(5))


@pytest.mark.parametrize("seed", range(12))
def test_ransac_finds_the_inliers_of_sklearn_ransac(seed):
    """`_ransac_inliers` is scikit-learn's RANSACRegressor without its overhead: same inliers."""
    from sklearn.linear_model import LinearRegression, RANSACRegressor

    rng = np.random.default_rng(seed)
    n, n_par = int(rng.integers(5, 400)), 1 + seed % 3
    design = np.column_stack([np.ones(n)] + [rng.normal(-6, 2, n) for _ in range(n_par - 1)])
    sigma = rng.uniform(0.01, 0.05, n)
    target = design @ np.array([22.0, 1.0, 0.1][:n_par]) + rng.normal(0, 1, n) * sigma
    wrong = rng.random(n) < rng.uniform(0, 0.6)  # wrong catalog entries, blends
    target[wrong] += rng.normal(0, 0.5, wrong.sum())
    if seed % 4 == 0:
        target = np.round(target, 1)  # ties of the inlier count
    x, y = design / sigma[:, None], target / sigma
    slope_index = 1 if n_par > 1 else None
    slope_range = (0.5, 2.0) if seed % 5 else (0.999, 1.001)  # some models rejected

    def valid(estimator, _x, _y):
        coef = estimator.coef_
        return slope_index is None or bool(slope_range[0] <= coef[slope_index] <= slope_range[1])

    ransac = RANSACRegressor(
        LinearRegression(fit_intercept=False),
        min_samples=n_par,
        residual_threshold=3.0,
        is_model_valid=valid,
        max_trials=200,
        random_state=seed,
    )
    try:
        expected = ransac.fit(x, y).inlier_mask_
    except ValueError:  # no consensus
        expected = None
    found = _ransac_inliers(
        x,
        y,
        residual_threshold=3.0,
        slope_index=slope_index,
        slope_range=slope_range,
        max_trials=200,
        random_state=seed,
    )
    if expected is None:
        assert found is None
    else:
        np.testing.assert_array_equal(found, expected)


@pytest.mark.parametrize("n_population", [1, 3, 5, 50, 299, 300, 301, 1000])
def test_sampler_draws_sklearns_subsets(n_population):
    """The three methods scikit-learn's "auto" picks by the ratio, each draw for draw."""
    from sklearn.utils.random import sample_without_replacement as sklearn_sample

    for n_samples in range(min(n_population, 3) + 1):
        ours, theirs = np.random.RandomState(7), np.random.RandomState(7)
        for _ in range(20):
            np.testing.assert_array_equal(
                sample_without_replacement(ours, n_population, n_samples),
                sklearn_sample(n_population, n_samples, random_state=theirs),
            )


def _exact_fit(zero_point: float, slope: float) -> ZeroPointFit:
    inst = np.linspace(-9.0, -3.0, 40)
    cat = zero_point + slope * inst
    err = np.full(40, 0.02)
    return fit_zero_point(inst, err, cat, err, systematic_err=0.0)


def inst_of(flux: np.ndarray) -> np.ndarray:
    return instrumental_mag(flux, 60.0)


def test_calibrate_fluxes_follow_the_fit():
    fit = _exact_fit(22.0, 1.0)
    flux = np.array([6000.0, 600.0, 60.0, -30.0, 0.0])
    flux_err = np.array([80.0, 30.0, 25.0, 25.0, 25.0])
    mag, mag_err, jy, jy_err = calibrate_fluxes(flux, flux_err, 60.0, fit)
    assert_allclose(mag[:3], [22.0 - 2.5 * 2, 22.0 - 2.5, 22.0], atol=1e-9)
    assert np.isnan(mag[3:]).all()
    assert_allclose(jy[:3], to_jansky(mag[:3]))
    # slope 1: Jy is linear in ADU, negative and zero fluxes included
    per_adu = to_jansky(22.0) / 60.0
    assert_allclose(jy, flux * per_adu, rtol=1e-9)
    _, mag_err_phot, _, jy_err_phot = calibrate_fluxes(
        flux, flux_err, 60.0, fit, include_fit_error=False
    )
    assert_allclose(jy_err_phot, flux_err * per_adu, rtol=1e-6)
    assert_allclose(mag_err_phot[:3], 2.5 / np.log(10) * flux_err[:3] / flux[:3], rtol=1e-6)
    # the fit's own error (40 stars of 0.02 mag: ~0.003 mag at the pivot) adds in quadrature
    assert (mag_err[:3] > mag_err_phot[:3]).all() and (jy_err >= jy_err_phot).all()
    assert_allclose(mag_err[:3], np.hypot(mag_err_phot[:3], fit.predict_err(inst_of(flux[:3]))))


def test_calibrate_fluxes_with_slope_and_fit_error():
    inst, inst_err, cat, cat_err, *_ = synthetic_stars(seed=7)
    fit = fit_zero_point(inst, inst_err, cat, cat_err)
    flux = 10 ** (-0.4 * np.array([-8.0, -5.0])) * 30.0
    mag, mag_err, jy, jy_err = calibrate_fluxes(flux, flux * 1e-4, 30.0, fit)
    assert_allclose(mag, fit.predict([-8.0, -5.0]))
    assert_allclose(mag_err, fit.predict_err([-8.0, -5.0]), rtol=0.02)  # 1e-4 photometry
    assert_allclose(jy_err / jy, mag_err * np.log(10) / 2.5, rtol=1e-2)


def test_calibrate_image_jy_linear_and_exact_at_pivot():
    fit = _exact_fit(22.0, 1.0)
    image = np.zeros((21, 21))
    image[10, 10], image[10, 11] = 400.0, 200.0
    jy_image = calibrate_image_jy(image, 60.0, fit)
    _, _, jy, _ = calibrate_fluxes(np.array([600.0]), np.array([1.0]), 60.0, fit)
    assert_allclose(jy_image.sum(), jy[0], rtol=1e-9)  # slope 1: exact at every brightness
    steep = _exact_fit(22.0, 1.05)
    flux_pivot = 60.0 * 10 ** (-0.4 * steep.pivot_inst_mag)
    image = np.zeros((5, 5))
    image[2, 2] = flux_pivot
    _, _, jy, _ = calibrate_fluxes(np.array([flux_pivot]), np.array([1.0]), 60.0, steep)
    assert_allclose(calibrate_image_jy(image, 60.0, steep).sum(), jy[0], rtol=1e-9)
    with pytest.raises(ValueError, match="exptime_s"):
        calibrate_image_jy(image, 0.0, steep)


# --------------------------------------------------------------------------------------------
# against the simulator's truth

SIM_SLOPE = 1.03  # not 1, so that the slope is really measured
APERTURE_RADIUS_PX = 5.0  # ~2 FWHM: near the best S/N for a sky-limited star


@dataclass
class FramePhotometry:
    frame: pd.Series
    fit: ZeroPointFit
    fit_flagged: ZeroPointFit  # with the saturated stars flagged as not good
    cat_index: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    saturated: np.ndarray  # flagged as a pipeline would: peak above 80% of the limit
    clipped_deficit: np.ndarray  # mag lost by clipping, for stars with a clipped centre (else 0)
    isolated: np.ndarray


def _aperture_fraction(tx, ty, dx, dy, flux, psf, radius):
    """Exact fraction of each star's truth stamp inside the aperture (measured at dx, dy).

    Stars are rendered alone, on tiles of a scratch canvas, with the simulator's own renderer.
    """
    import sep

    from lcdask.simulate.psf import render_stars, stamp_radius

    stamp = stamp_radius(flux, psf)
    frac = np.empty(len(tx))
    for r in np.unique(stamp):
        sel = np.flatnonzero(stamp == r)
        tile = 2 * int(r) + 5
        n_col = int(np.ceil(np.sqrt(sel.size)))
        col, row = np.arange(sel.size) % n_col, np.arange(sel.size) // n_col
        ox = col * tile + tile // 2 + (tx[sel] - np.floor(tx[sel]))
        oy = row * tile + tile // 2 + (ty[sel] - np.floor(ty[sel]))
        canvas = render_stars(((row.max() + 1) * tile, n_col * tile), ox, oy, flux[sel], psf)
        inside, _, _ = sep.sum_circle(canvas, ox + dx[sel], oy + dy[sel], radius)
        frac[sel] = inside / flux[sel]
    return frac


@pytest.fixture(scope="module")
def sim_photometry(tmp_path_factory):
    import sep
    from astropy.wcs import WCS

    from lcdask.simulate import SimConfig, flux_factor, simulate_night, truth_light_image
    from lcdask.simulate.render import frame_psf
    from lcdask.simulate.tan import world_to_pixel

    out = tmp_path_factory.mktemp("photcal_sim")
    cfg = SimConfig(
        n_frames=3, size=2048, seed=11, slope=SIM_SLOPE,
        n_darks=1, n_darkflats=1, n_flats=1, n_bias=1,
    )  # fmt: skip
    night = simulate_night(out, cfg)
    truth = night.truth
    refcat = pd.read_parquet(night.refcat_path)
    stars = truth.stars.set_index("star_id")
    star_of_entry = truth.refcat_truth["star_id"].to_numpy()
    cat_isolated = isolated(
        refcat["ra"], refcat["dec"], refcat["r"], radius_arcsec=15.0, max_delta_mag=5.0
    )
    rng = np.random.default_rng(2024)
    gain = cfg.gain_e_adu
    saturation = cfg.saturate_adu - cfg.bias_adu  # the linearity limit above the bias
    results = []
    for i, frame in truth.frames.iterrows():
        image = truth_light_image(out, i)
        image = rng.poisson(image * gain) / gain + rng.normal(
            0, cfg.read_noise_e / gain, image.shape
        )
        image = np.minimum(image, saturation)
        background = sep.Background(image, bw=64, bh=64)
        data = image - background.back()
        objects = sep.extract(data, 2.0, err=background.globalrms, minarea=5)
        x, y, _ = sep.winpos(data, objects["x"], objects["y"], 0.5 * frame["fwhm_px"])
        flux, flux_err, _ = sep.sum_circle(
            data, x, y, APERTURE_RADIUS_PX, err=background.globalrms, gain=gain
        )
        crval = (frame["crval1"], frame["crval2"])
        crpix = (frame["crpix1"], frame["crpix2"])
        cd = np.array([[frame["cd1_1"], frame["cd1_2"]], [frame["cd2_1"], frame["cd2_2"]]])
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval, wcs.wcs.crpix, wcs.wcs.cd = crval, crpix, cd
        ra, dec = wcs.all_pix2world(x, y, 0)
        match = match_to_catalog(ra, dec, refcat["ra"], refcat["dec"], radius_arcsec=1.5)
        det, cat = match.det_index, match.cat_index
        # total flux = aperture flux / the star's own aperture fraction (truth PSF)
        star = stars.loc[star_of_entry[cat]]
        tx, ty = world_to_pixel(star["ra"], star["dec"], crval, crpix, cd)
        true_flux = (
            frame["exptime_s"]
            * 10 ** (-0.4 * (star["mag"].to_numpy() - frame["zero_point"]) / frame["slope"])
            * flux_factor(star.reset_index(), frame["time_mjd"])
        )
        frac = _aperture_fraction(
            tx, ty, x[det] - tx, y[det] - ty, true_flux, frame_psf(frame), APERTURE_RADIUS_PX
        )
        total, total_err = flux[det] / frac, flux_err[det] / frac
        saturated = objects["peak"][det] > 0.8 * saturation - frame["sky_adu"]
        clipped = image[np.rint(y[det]).astype(int), np.rint(x[det]).astype(int)] >= saturation
        deficit = np.where(clipped, -2.5 * np.log10(np.maximum(total, 1.0) / true_flux), 0.0)
        inst = instrumental_mag(total, frame["exptime_s"])
        inst_err = instrumental_mag_err(total, total_err)
        cat_r, cat_r_err = refcat["r"].to_numpy()[cat], refcat["r_err"].to_numpy()[cat]
        fit = fit_zero_point(inst, inst_err, cat_r, cat_r_err)
        fit_flagged = fit_zero_point(inst, inst_err, cat_r, cat_r_err, good=~saturated)
        results.append(
            FramePhotometry(
                frame,
                fit,
                fit_flagged,
                cat,
                total,
                total_err,
                saturated,
                deficit,
                cat_isolated[cat],
            )
        )
    return truth, refcat, results


def test_sim_zero_point_and_slope_against_truth(sim_photometry):
    _, _, results = sim_photometry
    for r in results:
        for fit in (r.fit, r.fit_flagged):
            d_zp = fit.zero_point - r.frame["zero_point"]
            d_slope = fit.slope - r.frame["slope"]
            assert fit.n_used > 300
            # slope: the fit's 1-sigma error is ~0.001 here, 0.01 is the requirement
            assert abs(d_slope) < 0.01 and abs(d_slope) < 3 * fit.slope_err
            # zero point: it is the calibration at inst mag 0, ~5 mag fainter than the stars
            # (r 13-20 at zero point 22.5), so the slope's error is multiplied by that lever
            # arm; the fit's 1-sigma error is ~0.008 for this field (~600 stars with catalog
            # errors 0.015-0.05 mag). The 0.01 is therefore held as: the fit is that
            # precise, and it agrees with the truth within 3 of its sigmas.
            assert fit.zero_point_err < 0.01
            assert abs(d_zp) < 3 * fit.zero_point_err, (d_zp, fit.zero_point_err)
            # where the stars are, the calibration is known far better than at inst mag 0
            truth_at_pivot = r.frame["zero_point"] + r.frame["slope"] * fit.pivot_inst_mag
            assert abs(fit.predict(fit.pivot_inst_mag) - truth_at_pivot) < 0.005


def test_sim_zero_point_with_known_slope_against_truth(sim_photometry):
    """With the slope known (fixed), the zero point itself is within 0.01 mag of the truth.

    The simulated slope is 1.03; scaling the instrumental magnitudes by it makes the truth
    relation ``cat = zero_point + inst'`` exactly, as for a detector with slope 1.
    """
    _, refcat, results = sim_photometry
    for r in results:
        slope = r.frame["slope"]
        inst = slope * instrumental_mag(r.flux, r.frame["exptime_s"])
        inst_err = slope * instrumental_mag_err(r.flux, r.flux_err)
        cat = refcat["r"].to_numpy()[r.cat_index]
        cat_err = refcat["r_err"].to_numpy()[r.cat_index]
        fit = fit_zero_point(inst, inst_err, cat, cat_err, fit_slope=False)
        # 1-sigma ~0.002 with ~600 stars: 0.01 is the requirement, met with margin
        assert abs(fit.zero_point - r.frame["zero_point"]) < 0.01
        assert abs(fit.zero_point - r.frame["zero_point"]) < 3 * fit.zero_point_err


def test_sim_wrong_catalog_entries_and_saturated_stars_rejected(sim_photometry):
    truth, refcat, results = sim_photometry
    rt = truth.refcat_truth
    stars = truth.stars.set_index("star_id")
    problem = rt["problem"].to_numpy()
    # a blend's catalog magnitude is the sum of its two stars: how far off it is from the star
    blend_offset = np.zeros(len(rt))
    is_blend = rt["star_id2"].to_numpy() >= 0
    m1 = stars.loc[rt["star_id"][is_blend], "mag"].to_numpy()
    m2 = stars.loc[rt["star_id2"][is_blend], "mag"].to_numpy()
    blend_offset[is_blend] = 2.5 * np.log10(1 + 10 ** (-0.4 * (m2 - m1)))
    blend_sep_px = np.full(len(rt), np.inf)
    s1 = stars.loc[rt["star_id"][is_blend]]
    s2 = stars.loc[rt["star_id2"][is_blend]]
    cos_dec = np.cos(np.deg2rad(s1["dec"].to_numpy()))
    blend_sep_px[is_blend] = (
        np.hypot(
            (s1["ra"].to_numpy() - s2["ra"].to_numpy()) * cos_dec,
            s1["dec"].to_numpy() - s2["dec"].to_numpy(),
        )
        * 3600.0
        / truth.config.pixel_scale_arcsec
    )
    for r in results:
        for fit in (r.fit, r.fit_flagged):
            used = np.zeros(len(refcat), bool)
            used[r.cat_index[fit.inliers]] = True
            considered = np.zeros(len(refcat), bool)
            considered[r.cat_index] = True
            wrong = problem == "wrong_mag"
            assert (wrong & considered).sum() >= 10  # the test has wrong entries to reject
            assert not (wrong & used).any(), "a catalog entry with a wrong magnitude was used"
            # a blend off by > 0.15 mag (> 3 sigma of a 0.05 mag star) may only be used when its
            # companion is also inside the aperture (then the measured flux is the blend's too)
            far = blend_sep_px > APERTURE_RADIUS_PX + 1.0
            assert not (used & (blend_offset > 0.15) & far).any()
        # saturated stars that lost > 0.15 mag to clipping are rejected even when not flagged
        assert (r.clipped_deficit > 0.15).sum() >= 3
        assert not (r.fit.inliers & (r.clipped_deficit > 0.15)).any()
        assert not (r.fit_flagged.inliers & r.saturated).any()


def _jansky_residuals(sim_photometry):
    """Relative Jy errors against the truth, and S/N, of the stars fit for the Jy check."""
    truth, _, results = sim_photometry
    stars = truth.stars.set_index("star_id")
    star_of_entry = truth.refcat_truth["star_id"].to_numpy()
    problem = truth.refcat_truth["problem"].to_numpy()
    rel, snr = [], []
    for r in results:
        star = stars.loc[star_of_entry[r.cat_index]]
        # stable, unsaturated stars whose catalog identity is right (a blend's 'truth' is two
        # stars) and with no catalog neighbour within 15" brighter than 5 mag below them:
        # contamination of the aperture is a photometry problem, not a calibration one
        sel = (
            (star["kind"].to_numpy() == "stable")
            & ~r.saturated
            & (problem[r.cat_index] == "")
            & r.isolated
        )
        _, _, jy, _ = calibrate_fluxes(r.flux, r.flux_err, r.frame["exptime_s"], r.fit)
        true_jy = to_jansky(star["mag"].to_numpy())
        rel.append((jy / true_jy - 1)[sel])
        snr.append((r.flux / r.flux_err)[sel])
    return np.concatenate(rel), np.concatenate(snr)


def test_sim_jansky_fluxes_against_truth(sim_photometry):
    rel, snr = _jansky_residuals(sim_photometry)
    bright = snr > 50
    assert bright.sum() > 150
    # the calibration adds no bias: the median of ~300 stars is known to ~0.1%, the zero point
    # at the stars' brightness to ~0.2%
    assert abs(np.median(rel[bright])) < 0.005
    # S/N 50 means 2% photon noise (1 sigma): 2% is the photon-noise limit there, not a 95%
    # bound. At S/N > 100 (<= 1% noise, plus <= 0.5% calibration) 95% are within 2%;
    # over all S/N > 50 at least 80% are (the S/N distribution expects ~90%).
    assert np.mean(np.abs(rel[snr > 100]) < 0.02) >= 0.95
    assert np.mean(np.abs(rel[bright]) < 0.02) >= 0.80
    # and the scatter is photon noise: normalised residuals have unit robust width
    pull = rel[bright] * snr[bright]
    assert 0.8 < 1.4826 * np.median(np.abs(pull - np.median(pull))) < 1.25


def test_sim_report(sim_photometry):
    """Not a check: prints the measured numbers (see them with ``pytest -s`` or ``-rP``)."""
    _, refcat, results = sim_photometry
    for r in results:
        f, i = r.fit, r.frame["frame_index"]
        slope = r.frame["slope"]
        fixed = fit_zero_point(
            slope * instrumental_mag(r.flux, r.frame["exptime_s"]),
            slope * instrumental_mag_err(r.flux, r.flux_err),
            refcat["r"].to_numpy()[r.cat_index],
            refcat["r_err"].to_numpy()[r.cat_index],
            fit_slope=False,
        )
        print(
            f"frame {i}: d_zp {f.zero_point - r.frame['zero_point']:+.4f}"
            f" +- {f.zero_point_err:.4f}, d_slope {f.slope - r.frame['slope']:+.4f}"
            f" +- {f.slope_err:.4f}, n_used {f.n_used}/{f.n_matched}, rms {f.rms:.3f};"
            f" known slope: d_zp {fixed.zero_point - r.frame['zero_point']:+.4f}"
            f" +- {fixed.zero_point_err:.4f}"
        )
    rel, snr = _jansky_residuals(sim_photometry)
    for low in (50, 100):
        sel = snr > low
        print(
            f"Jy, S/N > {low}: n {sel.sum()}, median {np.median(rel[sel]):+.4f}, "
            f"within 2%: {np.mean(np.abs(rel[sel]) < 0.02):.3f}, "
            f"95th pct |err| {np.percentile(np.abs(rel[sel]), 95):.4f}"
        )
