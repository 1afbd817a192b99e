"""ePSF and PSF photometry against truth: FWHM, scaling, forced fits, blends, real data."""

from __future__ import annotations

import glob

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from baselines import photutils_psf_photometry

from lcdask.coadd import coadd
from lcdask.photometry import photometer_frame
from lcdask.psf import (
    PSFModel,
    build_epsf,
    forced_psf_photometry,
    measure_fwhm,
    refine_scale,
)
from lcdask.simulate import SimConfig, load_truth, simulate_night, truth_light_image
from lcdask.simulate.psf import Moffat
from lcdask.simulate.render import source_positions_fluxes
from lcdask.sky import subtract_sky

SIM = SimConfig(
    n_frames=4, size=1024, seed=3, n_close_pairs=20, n_darks=0, n_darkflats=0, n_flats=0, n_bias=0
)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "level3_night_1024"
    if not (out / "truth" / "cosmic_rays.parquet").exists():
        simulate_night(out, SIM, n_workers=1)
    return out


def noisy_frame(out, i: int, seed: int = 0) -> np.ndarray:
    cfg = load_truth(out).config
    truth = truth_light_image(out, i)
    rng = np.random.default_rng(5000 + 100 * seed + i)
    e = rng.poisson(truth * cfg.gain_e_adu).astype(np.float64)
    e = np.minimum(e, cfg.full_well_e) + rng.normal(0.0, cfg.read_noise_e, truth.shape)
    return e / cfg.gain_e_adu


def frame_wcs(row) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [row["crval1"], row["crval2"]]
    w.wcs.crpix = [row["crpix1"], row["crpix2"]]
    w.wcs.cd = [[row["cd1_1"], row["cd1_2"]], [row["cd2_1"], row["cd2_2"]]]
    return w


@pytest.fixture(scope="module")
def coadd_epsf(night):
    """The ePSF of the median co-add of the 4 sky-subtracted frames (truth WCS)."""
    tr = load_truth(night)
    subs, wcss = [], []
    for i in range(tr.config.n_frames):
        sub, _ = subtract_sky(noisy_frame(night, i))
        subs.append(sub)
        wcss.append(frame_wcs(tr.frames.iloc[i]))
    image, _, _ = coadd(subs, wcss)
    psf, stars = build_epsf(np.nan_to_num(image), mask=~np.isfinite(image), oversampling=3)
    return psf, stars


def moffat_model(fwhm: float, beta: float = 3.0, oversampling: int = 4, half: int = 15) -> PSFModel:
    """A pixel-integrated Moffat as an oversampled model (exact reference)."""
    n = 2 * half * oversampling + 1
    c = n // 2
    yy, xx = np.mgrid[:n, :n]
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    prof = Moffat(fwhm, beta)
    data = sum(
        prof.profile((xx - c) / oversampling + a, (yy - c) / oversampling + b)
        for a in sub
        for b in sub
    )
    data *= oversampling**2 / data.sum()
    return PSFModel(data, oversampling, fwhm)


def test_measure_fwhm_of_a_moffat():
    for fwhm in (2.0, 3.0, 4.5):
        assert abs(measure_fwhm(moffat_model(fwhm)) / fwhm - 1.0) < 0.01


def test_model_normalised_and_scaled():
    model = moffat_model(3.0)
    assert abs(model.render(15).sum() - 1.0) < 2e-3  # the Moffat wing beyond 15 px
    wide = model.scaled_to(4.5)
    assert wide.scale == pytest.approx(1.5)
    assert abs(wide.render(22).sum() - 1.0) < 3e-3
    assert abs(measure_fwhm(wide) / 4.5 - 1.0) < 0.01
    hdu = model.to_hdu()
    back = PSFModel.from_hdu(hdu)
    assert back.fwhm_px == pytest.approx(model.fwhm_px)
    assert np.allclose(back.data, model.data, rtol=1e-6, atol=1e-9)


def test_epsf_fwhm_matches_injected_mean(night, coadd_epsf):
    psf, stars = coadd_epsf
    mean_fwhm = load_truth(night).frames["fwhm_px"].mean()
    assert len(stars) >= 20
    assert abs(psf.fwhm_px / mean_fwhm - 1.0) < 0.03, (psf.fwhm_px, mean_fwhm)


def test_forced_fit_exact_on_noiseless_blend():
    model = moffat_model(3.0)
    image = np.zeros((64, 64))
    x = np.array([30.3, 33.1, 12.7])
    y = np.array([31.6, 32.4, 40.2])  # a pair 2.9 px (< 1 FWHM) apart and a lone star
    flux = np.array([1e4, 5e3, 2e3])
    for xi, yi, fi in zip(x, y, flux, strict=True):
        oy, ox = np.mgrid[:64, :64]
        image += fi * model.evaluate(ox - xi, oy - yi)
    res = forced_psf_photometry(image, x, y, model, rms=1.0)
    np.testing.assert_allclose(res["flux"], flux, rtol=1e-3)
    assert list(res["group_size"]) == [2, 2, 1]


def test_refine_scale_recovers_fwhm():
    truth_model = moffat_model(3.3)
    start = moffat_model(3.0)
    rng = np.random.default_rng(3)
    image = rng.normal(0.0, 2.0, (128, 128))
    xs = rng.uniform(15, 113, 12)
    ys = rng.uniform(15, 113, 12)
    oy, ox = np.mgrid[:128, :128]
    for xi, yi in zip(xs, ys, strict=True):
        image += 3e4 * truth_model.evaluate(ox - xi, oy - yi)
    best = refine_scale(image, xs, ys, start, rms=2.0)
    assert abs(best.effective_fwhm_px / 3.3 - 1.0) < 0.01


def _pairs(night, i):
    tr = load_truth(night)
    frame = tr.frames.iloc[i]
    ids, x, y, flux = source_positions_fluxes(frame, tr.stars, tr.movers)
    stars = tr.stars.set_index("star_id").loc[ids]
    keep = (x > 20) & (x < tr.config.size - 20) & (y > 20) & (y < tr.config.size - 20)
    return ids, x, y, flux, stars["pair_id"].to_numpy(), keep, frame


def test_blended_pairs_psf_beats_aperture(night, coadd_epsf):
    psf, _ = coadd_epsf
    cfg = load_truth(night).config
    err_psf, err_ap = [], []
    for i in range(2):
        image = noisy_frame(night, i, seed=1)
        sub, sky = subtract_sky(image)
        _, x, y, flux, pair, keep, frame = _pairs(night, i)
        fwhm = float(frame["fwhm_px"])
        table, _ = photometer_frame(
            sub, fwhm_px=fwhm, gain=cfg.gain_e_adu, rms=sky.rms, x=x, y=y, psf=psf
        )
        for p in np.unique(pair[(pair >= 0) & keep]):
            (a, b) = np.flatnonzero(pair == p)[:2]
            if np.hypot(x[a] - x[b], y[a] - y[b]) >= 2.0 * fwhm:
                continue
            for k in (a, b):
                err_psf.append(abs(table["flux_psf"][k] / flux[k] - 1.0))
                err_ap.append(abs(table["flux_ap2"][k] / flux[k] - 1.0))
    assert len(err_psf) >= 10
    # an aperture of 1.5 FWHM around one star of a pair closer than 2 FWHM takes much of its
    # neighbour's light; the simultaneous PSF fit separates them
    assert np.median(err_psf) < 0.5 * np.median(err_ap), (np.median(err_psf), np.median(err_ap))
    assert np.median(err_psf) < 0.05


def test_photutils_reference_agrees(night, coadd_epsf):
    psf, _ = coadd_epsf
    cfg = load_truth(night).config
    image = noisy_frame(night, 0, seed=2)
    sub, sky = subtract_sky(image)
    _ids, x, y, flux, _pair, keep, frame = _pairs(night, 0)
    # isolated (no neighbour above 1% within 6 FWHM): photutils fits these stars alone
    from scipy.spatial import cKDTree

    tree = cKDTree(np.column_stack([x, y]))
    lone = np.array(
        [
            all(j == k or flux[j] < 0.01 * flux[k] for j in nb)
            for k, nb in enumerate(tree.query_ball_point(np.column_stack([x, y]), 16.0))
        ]
    )
    bright = np.flatnonzero(keep & lone & (flux > 2e4) & (flux < 1e6))[:15]
    assert bright.size >= 5
    # the co-add's ePSF stretched to the frame's FWHM, then its scale fitted on the frame
    model = refine_scale(sub, x[bright], y[bright], psf.scaled_to(float(frame["fwhm_px"])))
    error = np.sqrt(sky.rms**2 + np.clip(sub, 0, None) / cfg.gain_e_adu)
    ref = photutils_psf_photometry(sub, x[bright], y[bright], model, error=error)
    ours = forced_psf_photometry(
        sub, x, y, model, rms=sky.rms, gain=cfg.gain_e_adu, mask=image >= cfg.saturate_adu
    )
    # ours within 1% of truth for these S/N > 150 stars; photutils' fit (free positions,
    # spline-interpolated model, data-based weights) comes out ~1% high
    assert np.median(np.abs(ours["flux"].to_numpy()[bright] / flux[bright] - 1.0)) < 0.01
    assert np.median(np.abs(ref["flux"] / flux[bright] - 1.0)) < 0.02


def _read(path):
    from lcdask.io.fits import read_frame

    h = fits.getheader(path)
    return read_frame(path, trimsec=h["TRIMSEC"], biassec=h["BIASSEC"], dtype="float64")


def test_real_lowell_epsf_psf_vs_aperture(lowell_dir):
    bias = np.median([_read(p) for p in sorted(glob.glob(str(lowell_dir / "bias" / "*")))], axis=0)
    flats = [_read(p) - bias for p in sorted(glob.glob(str(lowell_dir / "flat" / "*")))]
    flat = np.median([f / np.median(f) for f in flats], axis=0)
    science = sorted(glob.glob(str(lowell_dir / "science" / "*")))[3]
    image = (_read(science) - bias) / flat
    gain = 4.95  # e-/ADU and read noise 9.3 e- (PROVENANCE.md)
    sub, sky = subtract_sky(image)
    psf, stars = build_epsf(sub, oversampling=3)
    assert len(stars) >= 30
    assert 1.2 < psf.fwhm_px < 4.0
    table, _ = photometer_frame(
        sub,
        fwhm_px=psf.fwhm_px,
        gain=gain,
        rms=sky.rms,
        background=sky.background,
        psf=psf,
        saturation=60000.0,
    )
    snr = table["flux_ap3"] / table["flux_ap3_err"]
    clean = (table["flags"].to_numpy() & 0b111) == 0  # not blended, at the edge or saturated
    bright = clean & (snr > 100)
    assert bright.sum() > 50
    for col in ("flux_ap2", "flux_ap3", "flux_ap4"):
        ratio = table[col][bright] / table["flux_psf"][bright]
        assert abs(np.median(ratio) - 1.0) < 0.02, (col, np.median(ratio))


def test_few_undersampled_stars_give_a_fitted_moffat():
    """8 stars of FWHM 1.45 px (too few to fill a x3 ePSF): a Moffat fitted to them, true width."""
    rng = np.random.default_rng(3)
    truth = moffat_model(1.45, beta=2.5, oversampling=4, half=8)
    image = np.zeros((200, 200))
    positions = rng.uniform(20, 180, size=(8, 2))
    positions[:, 0] = 20 + np.arange(8) * 21 + rng.uniform(0, 3, 8)  # isolated
    for x, y in positions:
        ix, iy = int(x), int(y)
        fx, fy = x - ix, y - iy
        yy, xx = np.mgrid[-8:9, -8:9]
        image[iy - 8 : iy + 9, ix - 8 : ix + 9] += 5e4 * truth.evaluate(xx - fx, yy - fy)
    image = rng.poisson(image + 100.0).astype(np.float64) - 100.0
    psf, stars = build_epsf(image, fwhm_px=2.0, oversampling=3)
    assert len(stars) == 8
    assert abs(psf.fwhm_px / 1.45 - 1.0) < 0.03, psf.fwhm_px
    assert psf.oversampling == 3 and abs(psf.data.sum() - 9.0) < 1e-6
    assert abs(measure_fwhm(psf) / 1.45 - 1.0) < 0.03  # the rendered model has that width
