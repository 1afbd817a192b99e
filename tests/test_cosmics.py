"""Cosmic rays against the simulator's truth: recall, stars wrongly touched, cleaning."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from lcdask.cosmics import (
    _BOX_3,
    CROSS_2,
    _dilated,
    _median_of_good,
    _ring,
    clean_cosmics,
    detect_cosmics,
    psf_sharpness_limits,
    remove_cosmics,
)
from lcdask.psf import build_epsf
from lcdask.simulate import SimConfig, load_truth, simulate_night, truth_light_image
from lcdask.simulate.detector import cosmic_rays
from lcdask.simulate.render import source_positions_fluxes

SIM = SimConfig(
    n_frames=4, size=1024, seed=3, n_close_pairs=20, n_darks=0, n_darkflats=0, n_flats=0, n_bias=0
)
# 40x the default rate: ~100 events per 1024 px frame, so that recall is measured on thousands
# of pixels; the simulator's own generator gives the tracks and blobs their realistic shapes
CR_RATE = 2.0


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    out = tmp_path_factory.getbasetemp() / "level3_night_1024"
    if not (out / "truth" / "cosmic_rays.parquet").exists():
        simulate_night(out, SIM, n_workers=1)
    return out


def frame_with_cosmics(out, i: int):
    """Truth + Poisson + read noise + cosmic rays (in electrons, capped at the full well)."""
    cfg = load_truth(out).config
    truth = truth_light_image(out, i)
    rng = np.random.default_rng(77 + i)
    cx, cy, ce = cosmic_rays(dataclasses.replace(cfg, cosmic_rate_cm2_s=CR_RATE), 60.0, rng)
    e = rng.poisson(truth * cfg.gain_e_adu).astype(np.float64)
    e[cy, cx] += ce
    e = np.minimum(e, cfg.full_well_e) + rng.normal(0.0, cfg.read_noise_e, truth.shape)
    return e / cfg.gain_e_adu, truth, (cx, cy, ce)


@pytest.fixture(scope="module")
def frames(night):
    return [frame_with_cosmics(night, i) for i in range(2)]


def _stars(out, i, size):
    tr = load_truth(out)
    frame = tr.frames.iloc[i]
    _, x, y, flux = source_positions_fluxes(frame, tr.stars, tr.movers)
    keep = (x > 3) & (x < size - 4) & (y > 3) & (y < size - 4) & (flux > 100)
    return x[keep], y[keep], float(frame["fwhm_px"])


def _scored(crs, truth, cx, cy, ce, cfg):
    """Cosmic-ray pixels found among those whose deposit is above 5x their noise (fainter ones
    are invisible), how many of those there are, and the flagged pixels that are no cosmic ray."""
    sig = ce > 5.0 * np.sqrt(truth[cy, cx] * cfg.gain_e_adu + cfg.read_noise_e**2)
    true_mask = np.zeros_like(crs)
    true_mask[cy, cx] = True
    return int(crs[cy, cx][sig].sum()), int(sig.sum()), np.nonzero(crs & ~true_mask)


def test_fast_recall_and_stars_touched(night, frames):
    cfg = load_truth(night).config
    hits = touched = n_sig = n_stars = 0
    for i, (image, truth, (cx, cy, ce)) in enumerate(frames):
        crs = detect_cosmics(
            image, gain=cfg.gain_e_adu, read_noise_e=cfg.read_noise_e, saturation=cfg.saturate_adu
        )
        found, n_visible, (fy, fx) = _scored(crs, truth, cx, cy, ce, cfg)
        hits += found
        n_sig += n_visible
        x, y, fwhm = _stars(night, i, cfg.size)
        n_stars += x.size
        if fx.size:
            d, _ = cKDTree(np.column_stack([fx, fy])).query(np.column_stack([x, y]))
            touched += int((d < 1.5 * fwhm).sum())
    assert n_sig > 500
    assert hits / n_sig >= 0.95, hits / n_sig
    assert touched / n_stars < 0.01, (touched, n_stars)


def test_astroscrappy_reference_and_tiles_agree(night, frames):
    cfg = load_truth(night).config
    image, _, (cx, cy, _) = frames[0]
    sub = np.ascontiguousarray(image[:256, :256])
    inside = (cx < 256) & (cy < 256)
    kw = {"gain": cfg.gain_e_adu, "read_noise_e": cfg.read_noise_e, "saturation": 6e4}
    ref = detect_cosmics(sub, method="astroscrappy", **kw)
    tiles = detect_cosmics(sub, method="tiles", **kw)
    fast = detect_cosmics(sub, **kw)
    truth = np.zeros(sub.shape, bool)
    truth[cy[inside], cx[inside]] = True
    for mask in (ref, tiles, fast):
        assert mask[truth].mean() > 0.9
    # the tiled run reproduces astroscrappy where it looks
    assert (tiles & ~ref).sum() <= 2


def test_clean_interpolates_and_masks(frames):
    image, truth, (cx, cy, _) = frames[0]
    mask = np.zeros(image.shape, bool)
    mask[cy, cx] = True
    cleaned = clean_cosmics(image, mask)
    resid = cleaned[cy, cx] - truth[cy, cx]
    # a Gaussian mean of ~20 good neighbours: the sky noise of ~20 ADU, not the hits (100s-1000s)
    assert np.median(np.abs(resid)) < 30.0
    assert np.all(cleaned[~mask] == image[~mask].astype(np.float32))
    masked = clean_cosmics(image, mask, method="mask")
    assert np.all(np.isnan(masked[cy, cx]))


def test_remove_cosmics_returns_mask(night, frames):
    cfg = load_truth(night).config
    image, _, (_cx, _cy, _) = frames[1]
    cleaned, crs = remove_cosmics(image, gain=cfg.gain_e_adu, read_noise_e=cfg.read_noise_e)
    assert crs.dtype == bool and crs.shape == image.shape
    # the hits (median ~1000 e- = 670 ADU) are gone; grown faint pixels move by the noise only
    assert np.median(image[crs] - cleaned[crs]) > 100.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "nope"}, "method"),
        ({"gain": 0.0}, "gain"),
        ({"mask": np.zeros((2, 2), bool)}, "mask shape"),
        ({"method": "psf"}, "needs psf"),
    ],
)
def test_bad_inputs(kwargs, match):
    args = {"gain": 1.5, "read_noise_e": 8.0} | kwargs
    with pytest.raises(ValueError, match=match):
        detect_cosmics(np.zeros((16, 16)), **args)


# --- undersampled frames: the PSF test ---------------------------------------------------------
# FWHM 1.6-1.7 px (2.2" seeing on 1.5" pixels), crowded (~3,800 stars per 512 px frame), 8 movers
UNDERSAMPLED = SimConfig(
    n_frames=2,
    size=512,
    seed=5,
    pixel_scale_arcsec=1.5,
    seeing_fwhm_arcsec=2.2,
    stars_per_deg2_r20=30000.0,
    n_close_pairs=20,
    n_slow_movers=4,
    n_fast_movers=4,
    n_darks=0,
    n_darkflats=0,
    n_flats=0,
    n_bias=0,
)


@pytest.fixture(scope="module")
def undersampled(tmp_path_factory):
    """Frames with cosmic rays (~480 events each) and the ePSF built from the noiseless truth."""
    out = tmp_path_factory.getbasetemp() / "undersampled_night_512"
    if not (out / "truth" / "cosmic_rays.parquet").exists():
        simulate_night(out, UNDERSAMPLED, n_workers=1)
    cfg = load_truth(out).config
    frames = []
    for i in range(cfg.n_frames):
        truth = truth_light_image(out, i)
        rng = np.random.default_rng(77 + i)
        cx, cy, ce = cosmic_rays(dataclasses.replace(cfg, cosmic_rate_cm2_s=8.0), 60.0, rng)
        e = rng.poisson(truth * cfg.gain_e_adu).astype(np.float64)
        e[cy, cx] += ce
        e = np.minimum(e, cfg.full_well_e) + rng.normal(0.0, cfg.read_noise_e, truth.shape)
        frames.append((e / cfg.gain_e_adu, truth, (cx, cy, ce)))
    # the run's ePSF comes from the co-add; the noiseless truth stands in for it
    truth0 = frames[0][1]
    fwhm0 = float(load_truth(out).frames.iloc[0]["fwhm_px"])
    psf, _ = build_epsf(truth0 - np.median(truth0), fwhm_px=fwhm0, oversampling=3)
    return out, frames, psf


def test_psf_limits_hold_for_any_phase(undersampled):
    _, _, psf = undersampled
    limits = psf_sharpness_limits(psf, 1.5)
    model = psf.scaled_to(1.5)
    rng = np.random.default_rng(0)
    dx, dy = rng.uniform(-0.5, 0.5, (2, 500))
    oy, ox = np.mgrid[-1:2, -1:2]
    frac = model.evaluate(ox.ravel() - dx[:, None], oy.ravel() - dy[:, None]).clip(0.0)
    # a star at any sub-pixel phase keeps within every limit (the grid is 0.05 px: rounding)
    assert np.all(frac[:, 4] <= 1.001 * limits[1] * (frac[:, 3] + frac[:, 5]))
    assert np.all(frac[:, 4] <= 1.001 * limits[0] * (frac.sum(axis=1) - frac[:, 4]))
    # a one-pixel and a two-pixel cosmic ray break them
    assert limits[0] < 1.0 and limits[1] < 2.0


def test_psf_recall_stars_and_movers_undersampled(undersampled):
    out, frames, psf = undersampled
    tr = load_truth(out)
    cfg = tr.config
    hits = touched = n_sig = n_stars = movers_touched = 0
    for i, (image, truth, (cx, cy, ce)) in enumerate(frames):
        frame = tr.frames.iloc[i]
        fwhm = float(frame["fwhm_px"])
        assert fwhm < 1.8
        crs = detect_cosmics(
            image,
            gain=cfg.gain_e_adu,
            read_noise_e=cfg.read_noise_e,
            saturation=cfg.saturate_adu,
            method="psf",
            psf=psf,
            fwhm_px=fwhm,
        )
        found, n_visible, (fy, fx) = _scored(crs, truth, cx, cy, ce, cfg)
        hits += found
        n_sig += n_visible
        _, x, y, flux = source_positions_fluxes(frame, tr.stars, tr.movers)
        is_mover = np.arange(x.size) >= x.size - len(tr.movers)
        keep = (x > 3) & (x < cfg.size - 4) & (y > 3) & (y < cfg.size - 4) & (flux > 100)
        n_stars += (keep & ~is_mover).sum()
        if fx.size:
            d, _ = cKDTree(np.column_stack([fx, fy])).query(np.column_stack([x, y]))
            touched += int((d < 1.5 * fwhm)[keep & ~is_mover].sum())
            movers_touched += int((d < 1.5 * fwhm)[is_mover].sum())
    # measured: recall 96.6% of ~1,000 pixels, 0.25% of ~7,500 stars touched, no mover
    assert n_sig > 700
    assert hits / n_sig >= 0.95, hits / n_sig
    assert touched / n_stars < 0.01, (touched, n_stars)
    assert movers_touched == 0


def test_psf_method_keeps_undersampled_star_cores(undersampled):
    """The fast test takes undersampled star cores for cosmic rays; the PSF test does not."""
    out, frames, psf = undersampled
    cfg = load_truth(out).config
    image, _, (cx, cy, _) = frames[0]
    kw = {"gain": cfg.gain_e_adu, "read_noise_e": cfg.read_noise_e, "saturation": 6e4}
    true_mask = np.zeros(image.shape, bool)
    true_mask[cy, cx] = True
    fwhm = float(load_truth(out).frames.iloc[0]["fwhm_px"])
    wrong_fast = (detect_cosmics(image, **kw) & ~true_mask).sum()
    wrong_psf = (
        detect_cosmics(image, method="psf", psf=psf, fwhm_px=fwhm, **kw) & ~true_mask
    ).sum()
    # measured: 105 pixels wrongly flagged by the fast test, 12 by the PSF test
    assert wrong_psf < 20 and wrong_fast > 4 * wrong_psf, (wrong_fast, wrong_psf)


def test_sparse_dilation_equals_scipy():
    """The dilations of saturated cores and cosmic rays, from their pixels only, are scipy's."""
    rng = np.random.default_rng(2)
    for fraction in (0.001, 0.02, 0.3, 0.001, 0.02, 0.3):
        mask = rng.random((50, 70)) < fraction
        cross = ndimage.binary_dilation(mask, iterations=2)
        box = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool))
        assert np.array_equal(_dilated(mask, CROSS_2), cross)
        assert np.array_equal(_dilated(mask, _BOX_3), box)


def test_ring_equals_the_whole_frame_masks():
    """The growth's ring from the set pixels alone is the dilation less the set and excluded
    pixels, in np.nonzero's order (the whole-frame expression it replaced)."""
    rng = np.random.default_rng(4)
    for fraction in (0.0005, 0.01, 0.2):
        crs = rng.random((60, 45)) < fraction
        exclude = rng.random(crs.shape) < 0.1
        expected = np.nonzero(_dilated(crs, _BOX_3) & ~crs & ~exclude)
        got = _ring(crs, np.flatnonzero(crs), exclude)
        assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


def test_median_of_good_is_numpys_median():
    """The bracketed median (the value bad pixels get before the tests) is np.median's, bit for
    bit: even and odd counts, ties, flat frames, NaN among the bad pixels, the fallbacks."""
    rng = np.random.default_rng(5)
    draws = (
        lambda n: rng.normal(600.0, 20.0, n),
        lambda n: rng.integers(0, 5, n),  # ties across the bracket
        lambda n: rng.exponential(10.0, n),
        lambda n: np.full(n, 3.0),
    )
    for trial in range(40):
        n = int(rng.integers(200, 120_000))
        data = draws[trial % 4](n).astype(np.float32)
        data[rng.integers(0, n, 3)] = np.nan
        bad = ~np.isfinite(data) | (rng.random(n) < (0.0, 0.001, 0.4)[trial % 3])
        expected = np.median(data[~bad])
        got = _median_of_good(data.reshape(1, -1), bad.reshape(1, -1))
        assert got == expected and np.asarray(got).dtype == expected.dtype, (trial, got, expected)


def test_growth_never_eats_a_bright_star_beside_a_cosmic_ray():
    """A cosmic ray 3 px from a bright star's peak: the star's core is not grown into.

    On a real 60 s frame (XO-1, FWHM 2.9 px) the growth took 16 pixels of a bright star's core
    next to a cosmic ray, and the cleaning moved the star's flux by 4%.
    """
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:64, 0:64]
    sigma = 2.9 / 2.3548
    star = 15000.0 * np.exp(-((xx - 32) ** 2 + (yy - 32) ** 2) / (2 * sigma**2))
    image = (120.0 + star + rng.normal(0, 11.0, star.shape)).astype(np.float32)
    image[32, 35:37] += 6000.0  # a two-pixel cosmic ray on the star's wing, 3-4 px from its peak
    image[20, 10] += 3000.0  # and one alone in the sky
    crs = detect_cosmics(image, gain=1.0, read_noise_e=10.0)
    # both found (the track's pixel 3 px from the peak lies where growth may not reach: a
    # pixel of cosmic ray left on a star's wing costs less than a star's core cleaned away)
    assert crs[20, 10] and crs[32, 36]
    near_core = np.hypot(xx - 32, yy - 32) <= 2.5
    assert not crs[near_core].any()  # the core (within 2.5 px of the peak) untouched
