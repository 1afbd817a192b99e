"""Sky background: a known smooth background recovered, and masked pixels left out whatever they
hold (subtract_sky hands them to sep as its mask without zeroing a copy of the frame)."""

from __future__ import annotations

import numpy as np

from lcdask.sky import subtract_sky


def _frame(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A 512^2 frame: a tilted plane of 600-700 ADU, Gaussian noise of 20 ADU, a few stars."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:512, 0:512]
    truth = 600.0 + 0.1 * xx + 0.1 * yy
    image = truth + rng.normal(0.0, 20.0, truth.shape)
    for x, y in rng.uniform(20, 490, (30, 2)):
        image += 5000.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
    return image.astype(np.float32), truth


def test_background_follows_a_tilted_plane():
    image, truth = _frame()
    subtracted, sky = subtract_sky(image)
    # 64 px meshes of 4096 pixels of 20 ADU noise: each mesh's level to ~0.5 ADU (its mode
    # estimate ~1 ADU, stars' residual light included), the spline between mesh centres follows
    # a plane: measured 1.5-1.9 ADU at most inside the outer mesh centres (seeds 1-3), 2.5-5.3
    # ADU beyond them, where the spline extrapolates 32 px to the edge
    error = np.abs(sky.background - truth)
    assert error[32:-32, 32:-32].max() < 3.0 and error.max() < 8.0
    assert abs(np.median(sky.rms) - 20.0) < 1.0  # the noise's own sigma, to 5%
    assert np.array_equal(subtracted, image - sky.background)


def test_masked_pixels_are_left_out_whatever_they_hold():
    """NaN, huge values and zeros under the mask give the same background, rms and levels."""
    image, _ = _frame(2)
    rng = np.random.default_rng(3)
    mask = rng.random(image.shape) < 0.02
    mask[100:104, :] = True  # a few bad rows
    zeroed = np.where(mask, np.float32(0.0), image)
    garbage = image.copy()
    garbage[mask] = rng.normal(0.0, 1e5, int(mask.sum())).astype(np.float32)
    garbage[100:104, :] = np.nan
    _, a = subtract_sky(zeroed, mask=mask)
    _, b = subtract_sky(garbage, mask=mask)
    assert np.array_equal(a.background, b.background) and np.array_equal(a.rms, b.rms)
    assert (a.level, a.level_rms) == (b.level, b.level_rms)
    # and the mask matters: unmasked garbage moves the background
    _, c = subtract_sky(np.nan_to_num(garbage), mask=None)
    assert not np.array_equal(a.background, c.background)
