"""Cosmic rays on one frame: detect (fast L.A.Cosmic-like test, or astroscrappy), clean or mask.

Methods of `detect_cosmics`
---------------------------
``"fast"`` (default): the two tests of L.A.Cosmic (van Dokkum 2001) evaluated only where they can
pass, which makes the step cheap (tens of ms on a 2048 x 2048 frame instead of seconds):

1. *Significance*: every pixel's excess over the mean of its 8 neighbours,
   ``lap = I - mean8``, against the CCD noise of the neighbourhood,
   ``sigma = sqrt(max(mean8, 0) / gain + (read_noise / gain)^2)``. One 3x3 box filter over the
   frame; pixels with ``lap > sigclip * sigma * sqrt(9/8)`` are candidates (a few per thousand:
   star cores and cosmic rays).
2. *Sharpness against the PSF*, on the candidates only: L.A.Cosmic's fine-structure image
   ``F = med3(I) - med7(med3(I))`` is large at a star's core (a 3x3 median keeps a resolved peak)
   and near zero at a cosmic ray (a 1-2 px wide track or blob fills at most 4 of 9 pixels of a
   3x3 window and vanishes from the median). A candidate is a cosmic ray when
   ``lap / max(F, 0.1 sigma) > objlim``. The medians are taken on 9x9 cutouts gathered
   around the candidates as one array.
3. *Growth*: neighbours of detected pixels whose excess is above ``sigfrac * sigclip`` join
   them (twice), which recovers the fainter ends of tracks.

Saturated pixels (``>= saturation``) and their neighbours are never cosmic rays (flat-topped
stars have sharp edges).

``"psf"``: for undersampled frames (FWHM < 2 px), where a star's core is as sharp as the fine
structure test expects of a cosmic ray. A real source, whatever its sub-pixel phase, puts at most
a known fraction of its light in a pixel compared with its neighbours; `psf_sharpness_limits`
takes, from the run's PSF scaled to the frame's FWHM, the largest ratio of a pixel to the sum of
each of nine neighbour sets over a grid of source positions (all 8 neighbours; the 4 pairs of
opposite neighbours; the 6 pixels off each of the 4 lines through the pixel, i.e. the dark sides
of a track). Each ``I <= L * sum(I_set)`` (sky subtracted) is linear, so it holds for any
non-negative sum of point sources: blends, variables, movers (a trailed mover is a sum of PSFs).

1. Candidates: the significance test of "fast".
2. At each candidate, with the local sky the median of its 7x7 box, the excess
   ``(I - sky) - L * sum_set(I_n - sky)`` over its noise (CCD variances of the pixels, times the
   ratio of the measured to the modelled sky noise in 64 x 64 boxes, plus 20% of the predicted
   light for the PSF model's own error), largest over the sets; a cosmic ray above ``sigclip``.
3. Growth (twice): neighbours ``sigfrac * sigclip`` above the sky that also break a limit by
   2 sigma, using only the sets free of flagged pixels (a pixel with 3 or more flagged
   neighbours, or no free set, needs only the sky threshold).

Measured, simulated frames (512 px, 3 frames, ~3,800 stars each, 8 movers, ~480 cosmic rays per
frame, counted as in tests/test_cosmics.py): recall of the pixels above 5 sigma 95.5% at FWHM
1.42 px, 96.6% at 1.65 px, 97.7% at 1.95 px; stars touched 0.24-0.32%; movers touched 0, except
at 1.95 px one whose core a cosmic-ray track crossed (2 of its pixels next to the track grown).
Real Lowell frames (FWHM 1.5 and 1.8 px, calibrated by `lcdask.stages.calibrate.calibrate_cube`, the
frame's own ePSF): 820 and 1,770 pixels flagged per 300 s frame (fast: 8,960 and 9,290, most of
them noise the CCD model underestimates, 15-20% inside and 2-4x in the vignetted borders), by eye
cosmic rays in the interior; 56 and 186 of them within 2 px of a detection of FWHM >= 1 px, by eye
nearly all two-pixel cosmic rays the detection took for sources; most of the others in the
vignetted right and bottom borders, whose noise and structure the model does not describe.

``"astroscrappy"``: `astroscrappy.detect_cosmics` on the whole frame with the same gain, read noise
and thresholds (the reference; 4-7 s per 2048 x 2048 frame here).

``"tiles"``: astroscrappy run only on 64 x 64 tiles (plus a margin) around the fast method's
candidates found with a permissive ``objlim``: astroscrappy's decision at a fraction of its
cost, for frames where the fast test's assumptions (a resolved PSF, FWHM >= ~2 px) fail.

Cleaning (`clean_cosmics`): each flagged pixel is replaced by the Gaussian-weighted mean of the
good pixels within ``radius`` (weights ``exp(-d^2 / 2 sigma^2)``), all pixels at once as one
array operation; or set to NaN (``method="mask"``) so later steps ignore it.

Neighbouring frames of a time series would give a second, independent test (a pixel far above
the median of its aligned neighbours); it is not needed to reach the recall target here and would
tie one frame's task to others', so the per-frame test is the default.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "COSMIC_METHODS",
    "clean_cosmics",
    "detect_cosmics",
    "psf_sharpness_limits",
    "remove_cosmics",
]

COSMIC_METHODS = ("fast", "psf", "astroscrappy", "tiles")
_EIGHT = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float64) / 8.0
_EIGHT32 = _EIGHT.astype(np.float32)


def _check_image(image: np.ndarray) -> np.ndarray:
    data = np.asarray(image)
    if data.ndim != 2:
        raise ValueError(f"cosmic-ray detection needs a 2-D image, got shape {data.shape}")
    return np.ascontiguousarray(data, dtype=np.float32)


def _excess(data: np.ndarray, gain: float, read_noise_e: float) -> tuple[np.ndarray, np.ndarray]:
    """``I - mean8`` and its noise (image units).

    The noise is computed in place in the buffer of ``mean8`` (each whole-frame temporary of a
    2048^2 frame costs its allocation and page faults): the same float32 operations, in the
    same order, as ``sqrt(max(mean8, 0) / gain + (rn / gain)^2) * sqrt(9/8)``.
    """
    mean8 = ndimage.convolve(data, _EIGHT32, mode="nearest")
    lap = data - mean8
    sigma = np.maximum(mean8, 0.0, out=mean8)
    sigma /= gain
    sigma += (read_noise_e / gain) ** 2
    np.sqrt(sigma, out=sigma)
    sigma *= np.float32(np.sqrt(9.0 / 8.0))
    return lap, sigma


def _fine_structure(data: np.ndarray, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
    """``med3(I) - med7(med3(I))`` at the given pixels, from 9x9 cutouts."""
    ny, nx = data.shape
    o = np.arange(-4, 5)
    yy = np.clip(iy[:, None, None] + o[None, :, None], 0, ny - 1)
    xx = np.clip(ix[:, None, None] + o[None, None, :], 0, nx - 1)
    cut = data[yy, xx]  # (n, 9, 9)
    win = np.lib.stride_tricks.sliding_window_view(cut, (3, 3), axis=(1, 2))  # (n, 7, 7, 3, 3)
    med3 = np.median(win.reshape(cut.shape[0], 7, 7, 9), axis=-1)  # (n, 7, 7)
    med7 = np.median(med3.reshape(cut.shape[0], 49), axis=-1)
    return med3[:, 3, 3] - med7


def detect_cosmics(
    image: np.ndarray,
    *,
    gain: float,
    read_noise_e: float,
    method: str = "fast",
    sigclip: float = 5.0,
    sigfrac: float = 0.5,
    objlim: float = 5.0,
    saturation: float | None = None,
    mask: np.ndarray | None = None,
    tile_size: int = 64,
    psf=None,
    fwhm_px: float | None = None,
) -> np.ndarray:
    """Find the cosmic-ray pixels of one frame.

    Parameters
    ----------
    image : numpy.ndarray
        2-D calibrated frame in ADU, sky included (the noise model needs the sky level).
    gain : float
        e- per ADU.
    read_noise_e : float
        Read noise (e-).
    method : {"fast", "psf", "astroscrappy", "tiles"}, optional
        See the module docstring; "psf" needs ``psf``.
    sigclip : float, optional
        Significance threshold of a cosmic-ray pixel (in noise sigmas).
    sigfrac : float, optional
        Fraction of ``sigclip`` for the pixels grown around detections.
    objlim : float, optional
        Contrast between the excess and the fine structure above which a candidate is a cosmic
        ray rather than a star's core.
    saturation : float, optional
        Level (ADU) of saturated pixels, which are never cosmic rays.
    mask : numpy.ndarray of bool, optional
        Known bad pixels (never flagged; ignored by astroscrappy's statistics).
    tile_size : int, optional
        Tile side for ``method="tiles"``.
    psf : lcdask.psf.PSFModel or numpy.ndarray, optional
        For ``method="psf"``: the PSF, or its limits precomputed by `psf_sharpness_limits`.
    fwhm_px : float, optional
        For ``method="psf"`` with a `PSFModel`: the frame's FWHM, to which the model is scaled.

    Returns
    -------
    numpy.ndarray of bool
        True at cosmic-ray pixels.

    Raises
    ------
    ValueError
        For an unknown method, a non-2-D image, a mask of another shape, a bad gain, or
        ``method="psf"`` without a PSF.
    """
    if method not in COSMIC_METHODS:
        raise ValueError(f"detect_cosmics: method must be one of {COSMIC_METHODS}, got {method!r}")
    if method == "psf" and psf is None:
        raise ValueError(
            "detect_cosmics: method='psf' needs psf= (a PSFModel, e.g. the run's ePSF, or the "
            "limits of psf_sharpness_limits); use method='fast' without one"
        )
    if not (gain and gain > 0) or read_noise_e < 0:
        raise ValueError(
            f"detect_cosmics needs gain > 0 and read_noise_e >= 0, got {gain!r}, {read_noise_e!r}"
        )
    data = _check_image(image)
    bad = ~np.isfinite(data)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != data.shape:
            raise ValueError(f"detect_cosmics: mask shape {mask.shape} differs from {data.shape}")
        bad |= mask
    if bad.any():
        data = data.copy()
        data[bad] = _median_of_good(data, bad) if not bad.all() else 0.0
    if method == "psf":
        limits = psf if isinstance(psf, np.ndarray) else psf_sharpness_limits(psf, fwhm_px)
        return _psf(data, bad, limits, gain, read_noise_e, sigclip, sigfrac, saturation)
    if method == "astroscrappy":
        return _astroscrappy(data, bad, gain, read_noise_e, sigclip, sigfrac, objlim, saturation)
    cand_objlim = objlim if method == "fast" else 0.5 * objlim
    crs = _fast(data, bad, gain, read_noise_e, sigclip, sigfrac, cand_objlim, saturation)
    if method == "fast":
        return crs
    return _tiles(
        data, bad, crs, gain, read_noise_e, sigclip, sigfrac, objlim, saturation, tile_size
    )


def _median_of_good(data: np.ndarray, bad: np.ndarray, *, step: int = 97) -> float:
    """``np.median(data[~bad])`` (the same value; non-finite pixels among the bad ones), without
    sorting a whole frame.

    A sample of every ``step``-th good pixel brackets the median; only the pixels within the
    bracket are partitioned (``np.median`` of a 2048^2 frame takes ~50 ms, this ~8 ms). Falls
    back to ``np.median`` when the bracket misses.
    """
    n = data.size - int(np.count_nonzero(bad))
    flat, bad_flat = data.ravel(), bad.ravel()
    sample = flat[::step][~bad_flat[::step]]
    if n < 1000 or sample.size < 100:
        return np.median(flat[~bad_flat])
    sample = np.sort(sample)
    half = 4.0 * np.sqrt(sample.size)  # 4 sigma of the sample's rank of the median
    lo = sample[max(int(sample.size / 2 - half), 0)]
    hi = sample[min(int(sample.size / 2 + half), sample.size - 1)]
    k = [(n - 1) // 2, n // 2]  # ranks of the middle value(s), as np.median takes them
    bad_values = flat[bad_flat]
    below = int(np.count_nonzero(flat < lo)) - int(np.count_nonzero(bad_values < lo))
    inside = (flat >= lo) & (flat <= hi)
    inside &= ~bad_flat
    middle = flat[inside]
    if not (below <= k[0] and k[1] < below + middle.size):
        return np.median(flat[~bad_flat])
    middle.partition([k[0] - below, k[1] - below])
    return np.mean(middle[[k[0] - below, k[1] - below]] if k[0] != k[1] else middle[[k[0] - below]])


# pixel offsets of a twice-dilated 4-connected cross (within 2 steps) and of the 3x3 box
CROSS_2 = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if abs(dy) + abs(dx) <= 2]
_BOX_3 = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
_BOX_7 = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)]


def _nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a 2-D mask, the same indices in the same order: from the flat indices
    (``np.nonzero`` of a sparse 2048^2 mask takes 7-8 ms, ``np.flatnonzero`` 0.2 ms)."""
    return np.divmod(np.flatnonzero(mask), mask.shape[1])


def _mark(target: np.ndarray, iy: np.ndarray, ix: np.ndarray, offsets) -> None:
    """Set ``target`` (in place) at the pixels ``offsets`` away from each ``(iy, ix)``.

    An offset that leaves the frame is clipped onto it, to a pixel nearer the set one and so in
    the dilation anyway: marked from a mask's set pixels, this is the mask dilated by the
    structuring element of ``offsets`` (`scipy.ndimage.binary_dilation` sweeps the whole frame,
    45-220 ms per 2048^2 frame, for the sparse masks here: saturated cores, cosmic rays).
    """
    ny, nx = target.shape
    for dy, dx in offsets:
        target[np.clip(iy + dy, 0, ny - 1), np.clip(ix + dx, 0, nx - 1)] = True


def _dilated(mask: np.ndarray, offsets: list[tuple[int, int]]) -> np.ndarray:
    """``mask`` dilated by the structuring element of ``offsets``, from its set pixels only
    (`_mark`)."""
    out = mask.copy()
    _mark(out, *_nonzero(mask), offsets)
    return out


def _ring(crs: np.ndarray, index: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, ...]:
    """The pixels next to the set ones (``index``, flat indices of ``crs``' set pixels), neither
    set nor ``exclude``: ``np.nonzero(_dilated(crs, _BOX_3) & ~crs & ~exclude)``, from the set
    pixels alone instead of three passes over the frame."""
    ny, nx = crs.shape
    iy, ix = np.divmod(index, nx)
    near = np.unique(
        np.concatenate(
            [np.clip(iy + dy, 0, ny - 1) * nx + np.clip(ix + dx, 0, nx - 1) for dy, dx in _BOX_3]
        )
    )
    near = near[~(crs.ravel()[near] | exclude.ravel()[near])]
    return np.divmod(near, nx)


def _protected(data: np.ndarray, bad: np.ndarray, saturation: float | None) -> np.ndarray:
    """Pixels never taken for cosmic rays: bad ones, and saturated ones with two around them."""
    protect = bad.copy()
    if saturation is not None:
        _mark(protect, *_nonzero(data >= saturation), CROSS_2)
    return protect


def _fast(
    data: np.ndarray,
    bad: np.ndarray,
    gain: float,
    read_noise_e: float,
    sigclip: float,
    sigfrac: float,
    objlim: float,
    saturation: float | None,
    n_grow: int = 2,
) -> np.ndarray:
    lap, sigma = _excess(data, gain, read_noise_e)
    protect = _protected(data, bad, saturation)
    ny, nx = data.shape
    cand = np.flatnonzero(np.divide(lap, sigma) > sigclip)
    iy, ix = np.divmod(cand[~protect.ravel()[cand]], nx)
    crs = np.zeros(data.shape, dtype=bool)
    if iy.size == 0:
        return crs
    fine = _fine_structure(data, iy, ix)
    ratio = lap[iy, ix] / np.maximum(fine, 0.1 * sigma[iy, ix])
    keep = ratio > objlim
    crs[iy[keep], ix[keep]] = True
    # growth (L.A.Cosmic's): neighbours whose excess over the local sky, the median of the
    # 7x7 box without the cosmic-ray pixels, is above sigfrac * sigclip (the excess over the
    # 8 neighbours fails next to a bright track pixel); never within 3 px of a star's peak (a
    # candidate the sharpness test kept, the brightest of its 5x5 box, half its excess in the
    # fine structure): on a real 60 s frame (XO-1 in ../shared/data) a cosmic ray beside a
    # bright star grew over 16 pixels of its core, and the star's flux moved by 4%
    peak = np.flatnonzero(~keep & (fine > 0.5 * lap[iy, ix]))
    top = _gather(data, iy[peak], ix[peak], 2).reshape(peak.size, -1).max(axis=1)
    peak = peak[data[iy[peak], ix[peak]] >= top]
    no_growth = protect  # protect is not used again: marked in place
    _mark(no_growth, iy[peak], ix[peak], _BOX_7)
    o = np.arange(-3, 4)
    index = iy[keep] * nx + ix[keep]  # the set pixels of crs, as the growth adds them
    for _ in range(n_grow):
        ry, rx = _ring(crs, index, no_growth)
        if ry.size == 0:
            break
        yy = np.clip(ry[:, None, None] + o[None, :, None], 0, ny - 1)
        xx = np.clip(rx[:, None, None] + o[None, None, :], 0, nx - 1)
        cut = np.where(crs[yy, xx], np.nan, data[yy, xx]).reshape(ry.size, -1)
        bkg = np.nanmedian(cut, axis=1)
        noise = np.sqrt(np.maximum(bkg, 0.0) / gain + (read_noise_e / gain) ** 2)
        add = (data[ry, rx] - bkg) > sigfrac * sigclip * noise
        if not add.any():
            break
        crs[ry[add], rx[add]] = True
        index = np.concatenate([index, ry[add] * nx + rx[add]])
    return crs


# Fractional error of the PSF's prediction (model and field variation of the PSF): it adds
# (_PSF_MODEL_ERROR * limit * sum(I_set))^2 to the test's variance, so that a bright star is
# flagged only when its peak is 1 + 5 x 0.2 = 2 times what the PSF allows
_PSF_MODEL_ERROR = 0.2
# side of the boxes of `_noise_factor`; threshold (sigma) of the PSF test in the growth step
_NOISE_BLOCK = 64
_GROW_PSF_SIGMA = 2.0

# The neighbour sets of the PSF test, as indices into a flattened 3x3 cutout (centre 4): all 8;
# the four pairs of opposite neighbours (along x, y and the two diagonals); the six pixels off
# each of the four lines through the centre (the dark sides of a track along that line).
_PSF_SETS = (
    np.array([0, 1, 2, 3, 5, 6, 7, 8]),
    np.array([3, 5]),
    np.array([1, 7]),
    np.array([0, 8]),
    np.array([2, 6]),
    np.array([0, 1, 2, 6, 7, 8]),
    np.array([0, 3, 6, 2, 5, 8]),
    np.array([1, 2, 5, 3, 6, 7]),
    np.array([0, 1, 3, 5, 7, 8]),
)


def psf_sharpness_limits(
    psf, fwhm_px: float | None = None, *, reach_px: float = 1.5, step_px: float = 0.05
) -> np.ndarray:
    """The sharpest a real source can be: the PSF's largest ratios of a pixel to its neighbours.

    For every position of a point source within ``reach_px`` of a pixel (a grid of sub-pixel
    phases, ``step_px`` apart), the fraction of the flux the PSF puts in the pixel is divided by
    the fractions in its neighbour sets: all 8 neighbours, and each of the four pairs of
    opposite neighbours (along x, along y, along each diagonal). The limit of a set is the
    largest ratio over the positions. Each inequality ``I_pixel <= limit * sum(I_set)`` is
    linear in the image, so it holds for any non-negative sum of point sources: stars, blends,
    movers (a trailed mover is a sum of PSFs along its trail), whatever their phases.

    Parameters
    ----------
    psf : lcdask.psf.PSFModel
        The PSF (the run's ePSF).
    fwhm_px : float, optional
        The frame's FWHM: the model is scaled to it first (`PSFModel.scaled_to`).
    reach_px, step_px : float, optional
        Half-width and step of the grid of source positions (pixels).

    Returns
    -------
    numpy.ndarray
        Five limits: all 8 neighbours, the x pair, the y pair, the two diagonal pairs.
    """
    if fwhm_px is not None:
        psf = psf.scaled_to(fwhm_px)
    grid = np.arange(-reach_px, reach_px + step_px / 2, step_px)
    sy, sx = np.meshgrid(grid, grid, indexing="ij")
    oy, ox = np.mgrid[-1:2, -1:2]
    frac = psf.evaluate(
        ox.ravel()[None, :] - sx.ravel()[:, None], oy.ravel()[None, :] - sy.ravel()[:, None]
    )
    frac = np.clip(frac, 0.0, None)  # (positions, 9)
    peak = frac[:, 4]
    lit = peak > 1e-3 * peak.max()  # positions whose light reaches the pixel
    limits = []
    for members in _PSF_SETS:
        total = frac[:, members].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(lit & (total > 0), peak / total, 0.0)
        limits.append(ratio.max())
    return np.array(limits)


def _gather(data: np.ndarray, iy: np.ndarray, ix: np.ndarray, half: int) -> np.ndarray:
    """``(n, 2 half + 1, 2 half + 1)`` cutouts around pixels (edges repeated)."""
    ny, nx = data.shape
    o = np.arange(-half, half + 1)
    yy = np.clip(iy[:, None, None] + o[None, :, None], 0, ny - 1)
    xx = np.clip(ix[:, None, None] + o[None, None, :], 0, nx - 1)
    return data[yy, xx]


def _noise_factor(data: np.ndarray, gain: float, read_noise_e: float, block: int) -> np.ndarray:
    """Measured sky noise over the CCD model's, per ``block`` x ``block`` box (at least 1).

    The rms from the lower tail of the pixel values (of every other pixel), the distance from
    the 6.68th to the 30.85th percentile (1 sigma of a Gaussian), against the model
    ``sqrt(sky / gain + (rn / gain)^2)`` at the box's median: the noise the model misses (a
    gain off, the flat's own noise, the amplified noise of vignetted edges).
    """
    ny, nx = data.shape
    nby, nbx = -(-ny // block), -(-nx // block)
    pad = np.pad(data, ((0, nby * block - ny), (0, nbx * block - nx)), mode="reflect")
    cells = pad[::2, ::2].reshape(nby, block // 2, nbx, block // 2).transpose(0, 2, 1, 3)
    cells = cells.reshape(nby, nbx, -1)
    low, mid, med = np.percentile(cells, [6.68, 30.85, 50.0], axis=-1)
    rms = mid - low  # -1.5 to -0.5 sigma: stars and cosmic rays only add to the upper tail
    model = np.sqrt(np.maximum(med, 0.0) / gain + (read_noise_e / gain) ** 2)
    return np.maximum(rms / model, 1.0)


def _psf_excess(
    data: np.ndarray,
    iy: np.ndarray,
    ix: np.ndarray,
    limits: np.ndarray,
    gain: float,
    read_noise_e: float,
    exclude: np.ndarray | None = None,
    noise_factor: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Significance of each pixel's excess over what the PSF allows, and its excess over the sky.

    The sky is the median of the 7x7 box (without the ``exclude`` pixels); for each neighbour
    set ``S`` with limit ``L`` the excess ``(I - sky) - L * sum_S(I_n - sky)`` is divided by its
    noise ``sqrt(v + L^2 sum_S v_n)`` (``v`` the pixel variances); the largest over the sets is
    returned.
    """
    box = _gather(data, iy, ix, 3).reshape(iy.size, 49).astype(np.float64)
    if exclude is not None:
        box = np.where(_gather(exclude, iy, ix, 3).reshape(iy.size, 49), np.nan, box)
        sky = np.nanmedian(box, axis=1)
    else:
        sky = np.median(box, axis=1)
    near = _gather(data, iy, ix, 1).reshape(iy.size, 9).astype(np.float64)
    # photon noise of the larger of pixel and sky, none below zero (the vignetted borders of a
    # calibrated Lowell frame go negative: NaN variances there, and a RuntimeWarning per frame)
    var = np.maximum(np.maximum(near, sky[:, None]), 0.0) / gain + (read_noise_e / gain) ** 2
    if noise_factor is not None:
        var = var * noise_factor[:, None] ** 2
    above = near - sky[:, None]
    # neighbours off the frame: the sets holding them are not tested
    ny, nx = data.shape
    oy, ox = np.divmod(np.arange(9), 3)
    yy, xx = iy[:, None] + oy - 1, ix[:, None] + ox - 1
    skip = (yy < 0) | (yy >= ny) | (xx < 0) | (xx >= nx)
    if exclude is not None:
        exclude_near = _gather(exclude, iy, ix, 1).reshape(iy.size, 9)
        skip = skip | exclude_near
    best = np.full(iy.size, -np.inf)
    n_used = np.zeros(iy.size, int)
    for members, limit in zip(_PSF_SETS, limits, strict=True):
        excess = above[:, 4] - limit * above[:, members].sum(axis=1)
        noise = np.sqrt(
            var[:, 4]
            + limit**2 * var[:, members].sum(axis=1)
            + (_PSF_MODEL_ERROR * limit * np.clip(above[:, members].sum(axis=1), 0, None)) ** 2
        )
        use = ~skip[:, members].any(axis=1)
        best = np.where(use, np.maximum(best, excess / noise), best)
        n_used += use
    if exclude is not None:
        # no set free of cosmic-ray pixels, or a pixel in a cluster of them (3 or more of its
        # neighbours: a blob's corner, whose only free set is a weak diagonal pair): no PSF
        # test, the growth's sky threshold decides
        n_cr = exclude_near[:, _PSF_SETS[0]].sum(axis=1)
        best = np.where((n_used == 0) | (n_cr >= 3), np.inf, best)
    noise_c = np.sqrt(var[:, 4])
    return best, above[:, 4] / noise_c


def _psf(
    data: np.ndarray,
    bad: np.ndarray,
    limits: np.ndarray,
    gain: float,
    read_noise_e: float,
    sigclip: float,
    sigfrac: float,
    saturation: float | None,
    n_grow: int = 2,
) -> np.ndarray:
    lap, sigma = _excess(data, gain, read_noise_e)
    protect = _protected(data, bad, saturation)
    sigma *= sigclip  # in place: sigma is not used again
    cand = np.flatnonzero(lap > sigma)
    iy, ix = np.divmod(cand[~protect.ravel()[cand]], data.shape[1])
    crs = np.zeros(data.shape, dtype=bool)
    if iy.size == 0:
        return crs
    factor = _noise_factor(data, gain, read_noise_e, _NOISE_BLOCK)
    signif, _ = _psf_excess(
        data,
        iy,
        ix,
        limits,
        gain,
        read_noise_e,
        noise_factor=factor[iy // _NOISE_BLOCK, ix // _NOISE_BLOCK],
    )
    keep = signif > sigclip
    crs[iy[keep], ix[keep]] = True
    # growth: neighbours above the sky by sigfrac * sigclip that also break the PSF's limits
    # by as much (a track's faint end; a star's pixels next to a cosmic ray keep within them)
    low = sigfrac * sigclip
    index = iy[keep] * data.shape[1] + ix[keep]
    for _ in range(n_grow):
        ry, rx = _ring(crs, index, protect)
        if ry.size == 0:
            break
        signif, above = _psf_excess(
            data,
            ry,
            rx,
            limits,
            gain,
            read_noise_e,
            exclude=crs,
            noise_factor=factor[ry // _NOISE_BLOCK, rx // _NOISE_BLOCK],
        )
        add = (signif > _GROW_PSF_SIGMA) & (above > low)
        if not add.any():
            break
        crs[ry[add], rx[add]] = True
        index = np.concatenate([index, ry[add] * data.shape[1] + rx[add]])
    return crs


def _astroscrappy(
    data: np.ndarray,
    bad: np.ndarray,
    gain: float,
    read_noise_e: float,
    sigclip: float,
    sigfrac: float,
    objlim: float,
    saturation: float | None,
) -> np.ndarray:
    import astroscrappy

    crs, _ = astroscrappy.detect_cosmics(
        data,
        inmask=bad,
        gain=gain,
        readnoise=read_noise_e,
        sigclip=sigclip,
        sigfrac=sigfrac,
        objlim=objlim,
        satlevel=saturation if saturation is not None else np.inf,
        cleantype="meanmask",
    )
    return np.asarray(crs, dtype=bool)


def _tiles(
    data: np.ndarray,
    bad: np.ndarray,
    candidates: np.ndarray,
    gain: float,
    read_noise_e: float,
    sigclip: float,
    sigfrac: float,
    objlim: float,
    saturation: float | None,
    tile_size: int,
) -> np.ndarray:
    ny, nx = data.shape
    crs = np.zeros(data.shape, dtype=bool)
    ty, tx = _nonzero(candidates)
    tiles = set(zip((ty // tile_size).tolist(), (tx // tile_size).tolist(), strict=True))
    margin = 16
    for j, i in tiles:
        y0, x0 = j * tile_size, i * tile_size
        ys = slice(max(0, y0 - margin), min(ny, y0 + tile_size + margin))
        xs = slice(max(0, x0 - margin), min(nx, x0 + tile_size + margin))
        sub = _astroscrappy(
            np.ascontiguousarray(data[ys, xs]),
            np.ascontiguousarray(bad[ys, xs]),
            gain,
            read_noise_e,
            sigclip,
            sigfrac,
            objlim,
            saturation,
        )
        core_y = slice(y0 - ys.start, y0 - ys.start + min(tile_size, ny - y0))
        core_x = slice(x0 - xs.start, x0 - xs.start + min(tile_size, nx - x0))
        crs[y0 : y0 + tile_size, x0 : x0 + tile_size] = sub[core_y, core_x]
    return crs


def clean_cosmics(
    image: np.ndarray,
    cosmic_mask: np.ndarray,
    *,
    method: str = "interpolate",
    sigma_px: float = 1.0,
    radius: int = 3,
    bad_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Replace cosmic-ray pixels by a local Gaussian interpolation of good neighbours, or mask them.

    Parameters
    ----------
    image : numpy.ndarray
        2-D frame.
    cosmic_mask : numpy.ndarray of bool
        True at cosmic-ray pixels.
    method : {"interpolate", "mask"}, optional
        Interpolate, or set the pixels to NaN.
    sigma_px : float, optional
        Width of the Gaussian weights (px).
    radius : int, optional
        Half-size of the neighbourhood used (px); a pixel with no good neighbour becomes NaN.
    bad_mask : numpy.ndarray of bool, optional
        Other bad pixels, not used as neighbours.

    Returns
    -------
    numpy.ndarray
        A cleaned float32 copy of the image.
    """
    if method not in ("interpolate", "mask"):
        raise ValueError(f"clean_cosmics: method must be 'interpolate' or 'mask', got {method!r}")
    out = np.array(image, dtype=np.float32, copy=True)
    cr = np.asarray(cosmic_mask, dtype=bool)
    if cr.shape != out.shape:
        raise ValueError(f"clean_cosmics: mask shape {cr.shape} differs from {out.shape}")
    iy, ix = _nonzero(cr)
    if iy.size == 0:
        return out
    if method == "mask":
        out[iy, ix] = np.nan
        return out
    ny, nx = out.shape
    o = np.arange(-radius, radius + 1)
    oy, ox = np.meshgrid(o, o, indexing="ij")
    w0 = np.exp(-(ox**2 + oy**2) / (2.0 * sigma_px**2)).ravel()
    yy = iy[:, None] + oy.ravel()[None, :]
    xx = ix[:, None] + ox.ravel()[None, :]
    inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
    yy, xx = np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)
    # the bad neighbours (cosmic rays, non-finite, ``bad_mask``) looked up at the neighbours
    # only, not as a whole-frame mask
    vals = out[yy, xx]
    bad = cr[yy, xx] | ~np.isfinite(vals)
    if bad_mask is not None:
        bad |= np.asarray(bad_mask, dtype=bool)[yy, xx]
    good = inside & ~bad
    w = np.where(good, w0[None, :], 0.0)
    vals = np.where(good, vals, 0.0)
    wsum = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[iy, ix] = np.where(wsum > 0, (w * vals).sum(axis=1) / wsum, np.nan)
    return out


def remove_cosmics(
    image: np.ndarray,
    *,
    gain: float,
    read_noise_e: float,
    method: str = "fast",
    clean: str = "interpolate",
    saturation: float | None = None,
    mask: np.ndarray | None = None,
    **kwargs,
) -> tuple[np.ndarray, np.ndarray]:
    """Detect and clean (or mask) the cosmic rays of one frame.

    Parameters
    ----------
    image : numpy.ndarray
        2-D calibrated frame in ADU, sky included.
    gain, read_noise_e, method, saturation, mask
        As in `detect_cosmics`.
    clean : {"interpolate", "mask"}, optional
        As ``method`` of `clean_cosmics`.
    **kwargs
        ``sigclip``, ``sigfrac``, ``objlim``, ``psf``, ``fwhm_px`` for `detect_cosmics`.

    Returns
    -------
    cleaned : numpy.ndarray
        float32 frame with cosmic rays interpolated (or NaN).
    cosmic_mask : numpy.ndarray of bool
        The cosmic-ray pixels.
    """
    crs = detect_cosmics(
        image,
        gain=gain,
        read_noise_e=read_noise_e,
        method=method,
        saturation=saturation,
        mask=mask,
        **kwargs,
    )
    return clean_cosmics(image, crs, method=clean, bad_mask=mask), crs
