"""Gain and read noise from the frames themselves, and the noise model checked on the light curves.

Photon transfer
---------------
The difference of two exposures of the same light on the same pixels holds no flat-field pattern,
no dust and no bias structure, only noise. In a box of pixels with mean signal ``S`` (ADU, bias
removed) in each frame, the difference ``D = A - r B`` (``r`` the ratio of the two frames' levels
in the box, so that the pattern cancels when the levels differ) has the variance::

    var(D) = (S_A + r^2 S_B) / g + (1 + r^2) * sigma_r^2

(``g`` the gain in e-/ADU, ``sigma_r`` the read noise in ADU). `pair_statistics` gives, per box,
``level = (S_A + r^2 S_B) / (1 + r^2)`` and ``variance = var(D) / (1 + r^2)``, so that::

    variance = level / g + sigma_r^2

over every box of every pair. `fit_gain` solves it for ``g``:

- ``"ratio"``: the bias is known (a master bias, or a master dark of the same exposure, was
  subtracted) and so is ``sigma_r^2`` (from pairs of bias frames: the same statistics with no
  light): ``g = level / (variance - sigma_r^2)`` per box, the median over boxes;
- ``"slope"``: the bias is not known (no bias frames, no darks, no overscan): the levels then
  carry an unknown offset ``b``, ``variance = (level - b) / g + sigma_r^2``, and ``g`` is the
  inverse slope of a straight-line fit (clipped least squares) of variance against level across
  boxes and pairs; it needs levels that differ (vignetting, sky gradients, the sky changing
  through the night, twilight flats). The intercept mixes ``sigma_r^2`` and ``b / g``: the read
  noise is then not measured.

Pairs of flats of one filter give the gain to about 1%; pairs of lights (consecutive frames, stars
and cosmic rays masked in both: ``mask_sources``) give it from the sky. Read noise in electrons is
``g * sigma_r`` with ``sigma_r`` from pairs of bias frames (`read_noise_adu`).

`noise_model_check` compares the light curves' measured scatter with their noise model
(``rel_flux_err``) for the stars whose own photon noise dominates their error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "GainFit",
    "PairStatistics",
    "fit_gain",
    "gain_consistent",
    "noise_model_check",
    "pair_statistics",
    "photon_fraction",
    "read_noise_adu",
    "source_mask",
]

_MAD_SIGMA = 1.482602218505602
"""1 / Phi^-1(3/4): the standard deviation of a normal distribution over its MAD."""


def _clipped_variance_fraction(k: float) -> float:
    """The fraction of a normal distribution's variance within +-k sigma of its mean."""
    phi = math.exp(-0.5 * k * k) / math.sqrt(2.0 * math.pi)
    inside = math.erf(k / math.sqrt(2.0))
    return 1.0 - 2.0 * k * phi / inside


@dataclass(frozen=True)
class PairStatistics:
    """Per-box statistics of pairs of frames (`pair_statistics`), concatenated over pairs.

    Attributes
    ----------
    level : numpy.ndarray
        ``(S_A + r^2 S_B) / (1 + r^2)``: the boxes' signal (ADU; with the bias in it when no
        reference was subtracted).
    variance : numpy.ndarray
        ``var(A - r B) / (1 + r^2)`` (ADU^2): one frame's noise variance at that level.
    pair : numpy.ndarray
        Which pair each box comes from (0 for a single pair; `PairStatistics.concatenate`
        numbers them).
    n_pixels : numpy.ndarray
        Pixels used in each box (after masking and clipping).
    """

    level: NDArray[np.float64]
    variance: NDArray[np.float64]
    pair: NDArray[np.int64]
    n_pixels: NDArray[np.int64]

    @property
    def n_boxes(self) -> int:
        """The number of boxes."""
        return int(self.level.size)

    @property
    def n_pairs(self) -> int:
        """The number of pairs with at least one box."""
        return int(np.unique(self.pair).size)

    @classmethod
    def concatenate(cls, parts: Sequence[PairStatistics]) -> PairStatistics:
        """The boxes of several pairs, numbered 0, 1, ... in the order given.

        Parameters
        ----------
        parts : sequence of PairStatistics
            One per pair (each from `pair_statistics`).

        Returns
        -------
        PairStatistics
        """
        if not parts:
            empty = np.zeros(0)
            return cls(empty, empty.copy(), np.zeros(0, np.int64), np.zeros(0, np.int64))
        return cls(
            level=np.concatenate([p.level for p in parts]),
            variance=np.concatenate([p.variance for p in parts]),
            pair=np.concatenate([np.full(p.n_boxes, i, np.int64) for i, p in enumerate(parts)]),
            n_pixels=np.concatenate([p.n_pixels for p in parts]),
        )


def _row_nanmedian(values: NDArray) -> NDArray:
    """The median of each row, NaNs left out (NaN for a row of NaNs).

    The same as `numpy.nanmedian` along axis 1, from one sort of the rows (NaNs sort last):
    ``nanmedian`` goes row by row in Python (1.7 s for 4096 rows of 1024; this, 0.15 s).
    """
    ordered = np.sort(values, axis=1)
    n = np.count_nonzero(~np.isnan(values), axis=1)
    rows = np.arange(values.shape[0])
    lo = np.clip((n - 1) // 2, 0, None)
    hi = np.clip(n // 2, 0, values.shape[1] - 1)
    median = 0.5 * (ordered[rows, lo] + ordered[rows, hi])
    return np.where(n > 0, median, np.nan)


def _boxes(image: NDArray, box_px: int) -> NDArray:
    """``(n_boxes, box_px**2)``: the whole boxes of ``image`` (the ragged edge left out)."""
    my, mx = image.shape[0] // box_px, image.shape[1] // box_px
    cropped = image[: my * box_px, : mx * box_px]
    return cropped.reshape(my, box_px, mx, box_px).swapaxes(1, 2).reshape(my * mx, -1)


def _every_other_box(
    shape: tuple[int, ...], box_px: int, step: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """An `numpy.ix_` index of every ``step``-th row and column of whole boxes."""
    axes = []
    for n in shape:
        starts = np.arange(0, (n // box_px) * box_px, box_px * step)
        axes.append((starts[:, None] + np.arange(box_px)[None, :]).ravel())
    return np.ix_(*axes)


def _box_sum3(image: NDArray) -> NDArray:
    """The 3x3 sum around every pixel (edges padded with the edge values)."""
    padded = np.pad(image, 1, mode="edge")
    rows = padded[:-2] + padded[1:-1] + padded[2:]
    return rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]


def _dilate(mask: NDArray[np.bool_], grow_px: int) -> NDArray[np.bool_]:
    """``mask`` grown by ``grow_px`` pixels (a square), separably."""
    if grow_px <= 0 or not mask.any():
        return mask
    out = mask.copy()
    for axis in (0, 1):
        grown = out.copy()
        n = out.shape[axis]
        for step in range(1, grow_px + 1):
            if step >= n:
                break
            lo = [slice(None)] * 2
            hi = [slice(None)] * 2
            lo[axis], hi[axis] = slice(0, n - step), slice(step, n)
            grown[tuple(lo)] |= out[tuple(hi)]
            grown[tuple(hi)] |= out[tuple(lo)]
        out = grown
    return out


def source_mask(
    image: NDArray, *, box_px: int = 32, sigma: float = 4.0, grow_px: int = 3
) -> NDArray[np.bool_]:
    """Pixels of stars, cosmic rays and hot pixels: well above their box's sky, grown.

    The image less its boxes' medians is smoothed by a 3x3 mean (faint stars stand out of the
    noise by 3x more) and thresholded at ``sigma`` times its robust (MAD) spread in each box;
    the pixels found are grown by ``grow_px`` to take in the stars' wings. Pure noise crosses
    4 sigma in 3e-5 of the pixels: the sky's own upward excursions are not taken for stars (which
    would make its variance look smaller).

    Parameters
    ----------
    image : numpy.ndarray
        ``(y, x)`` frame.
    box_px : int, optional
        Side of the boxes (as `pair_statistics`' boxes; the edge beyond whole boxes is masked).
    sigma : float, optional
        Threshold in robust standard deviations of the smoothed image.
    grow_px : int, optional
        Pixels added around every pixel found.

    Returns
    -------
    numpy.ndarray of bool
        ``(y, x)``: True for the masked pixels.
    """
    image = np.asarray(image, np.float64)
    ny, nx = image.shape
    my, mx = ny // box_px, nx // box_px
    mask = np.ones((ny, nx), bool)
    if my == 0 or mx == 0:
        return mask
    boxes = _boxes(image, box_px)
    median = _row_nanmedian(boxes)
    sky = np.repeat(np.repeat(median.reshape(my, mx), box_px, 0), box_px, 1)
    core = image[: my * box_px, : mx * box_px] - sky
    smooth = _box_sum3(np.nan_to_num(core)) / 9.0
    s_boxes = _boxes(smooth, box_px)
    s_med = np.median(s_boxes, axis=1)
    s_sig = _MAD_SIGMA * np.median(np.abs(s_boxes - s_med[:, None]), axis=1)
    limit = np.repeat(np.repeat((s_med + sigma * s_sig).reshape(my, mx), box_px, 0), box_px, 1)
    found = _dilate(smooth > limit, grow_px)
    mask[: my * box_px, : mx * box_px] = found | ~np.isfinite(core)
    return mask


def pair_statistics(
    a: ArrayLike,
    b: ArrayLike,
    *,
    reference: ArrayLike | float | None = None,
    mask: ArrayLike | None = None,
    saturate_adu: float = np.inf,
    box_px: int = 32,
    scale: bool = True,
    mask_sources: bool = False,
    clip_sigma: float = 4.0,
    min_good_fraction: float = 0.5,
    box_step: int = 1,
) -> PairStatistics:
    """Per-box level and noise variance of a pair of frames of the same light (module docstring).

    Parameters
    ----------
    a, b : array_like
        ``(y, x)`` raw frames (ADU) of the same detector: two flats of one filter, two lights,
        two bias frames.
    reference : array_like or float, optional
        Subtracted from both (the master bias, or a master dark of their exposure): the levels
        are then the signal; without it they keep the bias.
    mask : array_like of bool, optional
        ``(y, x)`` pixels to leave out (the bad-pixel map).
    saturate_adu : float, optional
        Pixels at or above this raw level in either frame are left out.
    box_px : int, optional
        Side of the square boxes (32: 1024 pixels, the variance of one box to 4.4%).
    scale : bool, optional
        Scale ``b`` to ``a``'s level in each box before differencing (flats, lights); False for
        frames without light (bias, darks: ``r = 1``).
    mask_sources : bool, optional
        Mask stars, cosmic rays and hot pixels in either frame (`source_mask`): for lights.
    clip_sigma : float, optional
        Pixels of the difference further than this many robust sigma from its median are left
        out (cosmic rays); the variance is corrected for the normal distribution's tails cut.
    min_good_fraction : float, optional
        A box with fewer good pixels than this fraction is left out.
    box_step : int, optional
        Use every ``box_step``-th row and column of boxes only (large frames: 2 does a quarter
        of the work over the whole frame, keeping its range of levels).

    Returns
    -------
    PairStatistics
        The usable boxes (``pair`` all 0).

    Raises
    ------
    ValueError
        If the frames are not 2-D and of one shape, or ``box_px`` is below 4.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(
            f"pair_statistics needs two 2-D frames of one shape, got {a.shape} and {b.shape}"
        )
    if box_px < 4:
        raise ValueError(f"pair_statistics: box_px must be at least 4, got {box_px}")
    if box_step > 1:
        take = _every_other_box(a.shape, box_px, box_step)
        a, b = a[take], b[take]
        if reference is not None and np.ndim(reference) == 2:
            reference = np.asarray(reference)[take]
        if mask is not None:
            mask = np.asarray(mask)[take]
    bad = (a >= saturate_adu) | (b >= saturate_adu)
    if reference is not None:
        ref = np.asarray(reference, np.float64)
        a, b = a - ref, b - ref
    bad |= ~(np.isfinite(a) & np.isfinite(b))
    if mask is not None:
        bad |= np.asarray(mask, bool)
    if mask_sources:
        bad |= source_mask(a, box_px=box_px) | source_mask(b, box_px=box_px)
    box_a, box_b, box_bad = _boxes(a, box_px), _boxes(b, box_px), _boxes(bad, box_px)
    box_a = np.where(box_bad, np.nan, box_a)
    box_b = np.where(box_bad, np.nan, box_b)
    n_pix = box_px * box_px
    enough = (~box_bad).sum(axis=1) >= min_good_fraction * n_pix
    box_a, box_b = box_a[enough], box_b[enough]
    if scale:
        ratio = _row_nanmedian(box_a) / _row_nanmedian(box_b)
    else:
        ratio = np.ones(box_a.shape[0])
    diff = box_a - ratio[:, None] * box_b
    centre = _row_nanmedian(diff)
    spread = _MAD_SIGMA * _row_nanmedian(np.abs(diff - centre[:, None]))
    keep = np.abs(diff - centre[:, None]) <= clip_sigma * spread[:, None]
    n_keep = keep.sum(axis=1)
    kept = np.where(keep, diff, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = np.nanvar(kept, axis=1, ddof=1) / _clipped_variance_fraction(clip_sigma)
        mean_a = np.nanmean(np.where(keep, box_a, np.nan), axis=1)
        mean_b = np.nanmean(np.where(keep, box_b, np.nan), axis=1)
    r2 = ratio**2
    level = (mean_a + r2 * mean_b) / (1.0 + r2)
    variance = variance / (1.0 + r2)
    good = (
        (n_keep >= min_good_fraction * n_pix)
        & np.isfinite(level)
        & np.isfinite(variance)
        & (spread > 0)
    )
    return PairStatistics(
        level=level[good],
        variance=variance[good],
        pair=np.zeros(int(good.sum()), np.int64),
        n_pixels=n_keep[good].astype(np.int64),
    )


def read_noise_adu(stats: PairStatistics) -> tuple[float, float]:
    """Read noise (ADU) from pairs of frames with no light (`pair_statistics` of bias frames,
    ``scale=False``): the square root of the median per-box variance, and its error.

    Parameters
    ----------
    stats : PairStatistics

    Returns
    -------
    tuple of float
        ``(sigma_adu, sigma_err_adu)``; NaN when there is no box.
    """
    if stats.n_boxes == 0:
        return float("nan"), float("nan")
    var = float(np.median(stats.variance))
    per_pair = [np.median(stats.variance[stats.pair == p]) for p in np.unique(stats.pair)]
    box_err = 1.2533 * _MAD_SIGMA * float(np.median(np.abs(stats.variance - var)))
    var_err = box_err / math.sqrt(stats.n_boxes)
    if len(per_pair) >= 3:
        var_err = max(var_err, float(np.std(per_pair, ddof=1)) / math.sqrt(len(per_pair)))
    sigma = math.sqrt(max(var, 0.0))
    return sigma, (0.5 * var_err / sigma if sigma > 0 else float("nan"))


@dataclass(frozen=True)
class GainFit:
    """A gain from photon transfer (`fit_gain`).

    Attributes
    ----------
    gain_e_adu : float
        e-/ADU; NaN when it could not be fitted (``reason`` says why).
    gain_err_e_adu : float
        Its standard error: the spread between pairs (or boxes) over the root of their number.
    read_variance_adu2 : float
        ``sigma_r^2`` used (``"ratio"``) or the intercept fitted (``"slope"``: with the bias
        known, the read noise; without, a mix of read noise and bias: NaN).
    method : str
        ``"ratio"`` or ``"slope"`` (module docstring).
    n_pairs, n_boxes : int
        Pairs and boxes used.
    level_adu : tuple of float
        The 5th, 50th and 95th percentiles of the boxes' levels.
    reason : str
        Why there is no gain (empty when there is one).
    """

    gain_e_adu: float
    gain_err_e_adu: float
    read_variance_adu2: float
    method: str
    n_pairs: int
    n_boxes: int
    level_adu: tuple[float, float, float]
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether a gain was fitted and is to be used (no ``reason`` against it)."""
        return bool(np.isfinite(self.gain_e_adu)) and not self.reason

    def as_record(self) -> dict:
        """The fit as plain numbers, for ``run.json`` (rounded)."""
        return {
            "gain_e_adu": _rounded(self.gain_e_adu, 4),
            "gain_err_e_adu": _rounded(self.gain_err_e_adu, 4),
            "read_variance_adu2": _rounded(self.read_variance_adu2, 3),
            "method": self.method,
            "n_pairs": self.n_pairs,
            "n_boxes": self.n_boxes,
            "level_adu": [_rounded(v, 1) for v in self.level_adu],
            "reason": self.reason,
        }


def _rounded(value: float, digits: int) -> float | None:
    return round(float(value), digits) if np.isfinite(value) else None


def _failed(method: str, stats: PairStatistics, reason: str) -> GainFit:
    nan = float("nan")
    return GainFit(nan, nan, nan, method, stats.n_pairs, stats.n_boxes, (nan, nan, nan), reason)


def fit_gain(
    stats: PairStatistics,
    *,
    read_variance_adu2: float | None = None,
    bias_known: bool = True,
    max_relative_error: float = 0.1,
) -> GainFit:
    """The gain from per-box levels and variances of pairs of frames (module docstring).

    Parameters
    ----------
    stats : PairStatistics
        From `pair_statistics` (one pair, or several concatenated).
    read_variance_adu2 : float, optional
        ``sigma_r^2`` (ADU^2) from pairs of bias frames (or darks of the same exposure as the
        reference subtracted). With ``bias_known`` it makes the fit a per-box ratio
        (``"ratio"``); otherwise the intercept is fitted (``"slope"``).
    bias_known : bool, optional
        Whether the levels are bias-free (a reference was subtracted, or the overscan).
    max_relative_error : float, optional
        A ``"slope"`` fit whose gain is less certain than this (levels that span too little) is
        refused.

    Returns
    -------
    GainFit
    """
    method = "ratio" if bias_known and read_variance_adu2 is not None else "slope"
    if stats.n_boxes < 10:
        return _failed(method, stats, f"{stats.n_boxes} usable boxes (at least 10 needed)")
    level, var, pair = stats.level, stats.variance, stats.pair
    span = tuple(float(v) for v in np.percentile(level, [5, 50, 95]))
    if method == "ratio":
        excess = var - float(read_variance_adu2)
        use = (level > 0) & (excess > 0)
        if use.sum() < 10:
            return _failed(method, stats, "no box has a signal above the read noise")
        per_box = level[use] / excess[use]
        gain = float(np.median(per_box))
        err = 1.2533 * _MAD_SIGMA * float(np.median(np.abs(per_box - gain))) / math.sqrt(use.sum())
        pairs = np.unique(pair[use])
        if pairs.size >= 3:
            per_pair = [np.median(per_box[pair[use] == p]) for p in pairs]
            err = max(err, float(np.std(per_pair, ddof=1)) / math.sqrt(pairs.size))
        return GainFit(
            gain, err, float(read_variance_adu2), method, int(pairs.size), int(use.sum()), span
        )
    keep = np.isfinite(level) & np.isfinite(var)
    slope = intercept = slope_err = float("nan")
    for _ in range(5):
        if keep.sum() < 10:
            return _failed(method, stats, "too few boxes left after clipping")
        x, y = level[keep], var[keep]
        design = np.column_stack([np.ones_like(x), x - x.mean()])
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        resid_all = var - (coef[0] + coef[1] * (level - x.mean()))
        sigma = _MAD_SIGMA * float(np.median(np.abs(resid_all[keep])))
        new_keep = keep & (np.abs(resid_all) <= 4.0 * sigma)
        sxx = float(np.sum((x - x.mean()) ** 2))
        resid = y - design @ coef
        s2 = float(np.sum(resid**2)) / max(x.size - 2, 1)
        slope = float(coef[1])
        slope_err = math.sqrt(s2 / sxx) if sxx > 0 else float("inf")
        intercept = float(coef[0] - coef[1] * x.mean())
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    if not (slope > 0):
        why = f"the variance does not grow with the level (slope {slope:g})"
        return _failed(method, stats, why)
    gain = 1.0 / slope
    # boxes of one pair share its systematics: the error scaled by the pairs' own spread
    err = slope_err / slope**2
    pairs = np.unique(pair[keep])
    if pairs.size >= 4:
        per_pair = []
        for p in pairs:
            sel = keep & (pair == p)
            if sel.sum() >= 10 and np.ptp(level[sel]) > 0:
                s = np.polyfit(level[sel], var[sel], 1)[0]
                if s > 0:
                    per_pair.append(1.0 / s)
        if len(per_pair) >= 4:
            err = max(err, 1.2533 * float(np.std(per_pair, ddof=1)) / math.sqrt(len(per_pair)))
    fit = GainFit(
        gain,
        err,
        intercept if bias_known else float("nan"),
        method,
        int(pairs.size),
        int(keep.sum()),
        span,
    )
    if not err < max_relative_error * gain:
        return GainFit(
            fit.gain_e_adu,
            fit.gain_err_e_adu,
            fit.read_variance_adu2,
            method,
            fit.n_pairs,
            fit.n_boxes,
            span,
            reason=(
                f"the levels span too little ({span[0]:.0f}-{span[2]:.0f} ADU) for the slope: "
                f"gain {gain:.3g} +- {err:.2g} e-/ADU is not used"
            ),
        )
    return fit


def gain_consistent(header: float, estimate: float, *, factor: float = 1.5) -> bool:
    """Whether a header's value agrees with the data's estimate within a factor.

    Parameters
    ----------
    header, estimate : float
        The two values (gain in e-/ADU, or read noise in e-).
    factor : float, optional
        The largest ratio either way still taken as agreement: a header is replaced only when it
        is grossly wrong (another camera's value, a gain setting rather than e-/ADU).

    Returns
    -------
    bool
        True also when either value is missing (nothing to judge).
    """
    if not (np.isfinite(header) and np.isfinite(estimate)) or header <= 0 or estimate <= 0:
        return True
    return 1.0 / factor <= estimate / header <= factor


def photon_fraction(flux: ArrayLike, flux_err: ArrayLike) -> NDArray[np.float64]:
    """The share of each point's model variance that is the star's own photon noise.

    Level 3's variance is ``c^2 * (sky and read noise in the aperture) + c * flux / gain`` (``c``
    the frame's aperture correction): over the stars of one frame, ``flux_err^2`` is a straight
    line in ``flux`` whose slope is the photon term per unit flux. It is fitted per frame
    (least squares, one pass of 4-sigma clipping) on the points given, so the share needs
    neither the gain nor the aperture.

    Parameters
    ----------
    flux, flux_err : array_like
        ``(source, frame)``; NaN where a point is not to be used.

    Returns
    -------
    numpy.ndarray
        ``(source, frame)``: ``slope * flux / flux_err^2`` (NaN where not fitted).
    """
    flux = np.asarray(flux, np.float64)
    var = np.asarray(flux_err, np.float64) ** 2
    out = np.full(flux.shape, np.nan)
    for f in range(flux.shape[1]):
        x, y = flux[:, f], var[:, f]
        use = np.isfinite(x) & np.isfinite(y) & (x > 0)
        for _ in range(2):
            if use.sum() < 5:
                break
            slope, intercept = np.polyfit(x[use], y[use], 1)
            resid = y - (intercept + slope * x)
            spread = _MAD_SIGMA * np.median(np.abs(resid[use]))
            use &= np.abs(resid) <= 4.0 * spread + 1e-300
        if use.sum() >= 5 and slope > 0:
            out[:, f] = slope * x / y
    return out


def noise_model_check(
    lightcurves, sources, *, min_photon_fraction: float = 0.5, min_points: int = 10
) -> dict:
    """The light curves' measured scatter against their noise model, for stars whose own photon
    noise dominates their error.

    Stable stars (not the target, not artefacts) whose median `photon_fraction` is at least
    ``min_photon_fraction``, on their points with no flag. The differences of consecutive
    points of ``rel_flux`` (over its median; blind to slow trends and to a transit) divided by
    their model error (``rel_flux_err`` of the two points in quadrature) are pooled over the
    stars: their standard deviation (4-sigma clipped, corrected for the tails cut) is the ratio
    of measured scatter to model, 1 when the model is right. ``ratio_flux_err`` does the same
    with ``flux_err`` (the star's own error, without the ensemble's).

    Parameters
    ----------
    lightcurves : xarray.Dataset
        ``(source, frame)`` with ``flux``, ``flux_err``, ``rel_flux``, ``rel_flux_err``,
        ``flags`` and ``source_id`` (`lcdask.lightcurves`).
    sources : pandas.DataFrame
        ``source_id``, ``kind``, and ``is_target``/``is_artefact`` when there.
    min_photon_fraction : float, optional
        The share of the variance the star's photon noise must have.
    min_points : int, optional
        Points a star needs.

    Returns
    -------
    dict
        ``n_stars``, ``n_points``, ``ratio`` (measured / ``rel_flux_err`` model, pooled),
        ``ratio_flux_err``, ``ratio_per_star_median`` and its quartiles (each star's MAD
        scatter over its median model), ``median_scatter`` (fractional, per point) and the
        selection rule (``selection``); ``ratio`` None with no star.
    """
    ds = lightcurves
    ids = ds["source_id"].to_numpy()
    table = sources.set_index("source_id").reindex(ids)
    stable = (table["kind"] == "stable").to_numpy().copy()
    for column in ("is_target", "is_artefact"):
        if column in table:
            stable &= ~table[column].fillna(False).to_numpy(bool)
    good = (ds["flags"].to_numpy() == 0) & stable[:, None]
    flux = np.where(good, ds["flux"].to_numpy(), np.nan)
    flux_err = np.where(good, ds["flux_err"].to_numpy(), np.nan)
    rel = np.where(good, ds["rel_flux"].to_numpy(), np.nan)
    rel_err = np.where(good, ds["rel_flux_err"].to_numpy(), np.nan)
    fraction = photon_fraction(flux, flux_err)
    z_rel, z_flux, per_star, scatter = [], [], [], []
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in np.flatnonzero(stable):
            ok = np.isfinite(rel[i]) & np.isfinite(rel_err[i]) & np.isfinite(fraction[i])
            if ok.sum() < min_points or np.median(fraction[i, ok]) < min_photon_fraction:
                continue
            scale = np.median(rel[i, ok])
            steps = np.diff(rel[i, ok] / scale)
            e_rel = rel_err[i, ok] / scale
            e_flux = flux_err[i, ok] / np.abs(flux[i, ok]) * rel[i, ok] / scale
            z_rel.append(steps / np.hypot(e_rel[1:], e_rel[:-1]))
            z_flux.append(steps / np.hypot(e_flux[1:], e_flux[:-1]))
            measured = _MAD_SIGMA * np.median(np.abs(steps - np.median(steps))) / math.sqrt(2.0)
            scatter.append(measured)
            per_star.append(measured / float(np.median(e_rel)))
    selection = (
        f"stable stars, unflagged points, photon noise >= {min_photon_fraction:.0%} of the "
        f"model variance, >= {min_points} points; scatter point-to-point"
    )
    if not per_star:
        return {"n_stars": 0, "ratio": None, "selection": selection}
    return {
        "n_stars": len(per_star),
        "n_points": int(sum(z.size for z in z_rel)),
        "ratio": round(_clipped_std(np.concatenate(z_rel)), 3),
        "ratio_flux_err": round(_clipped_std(np.concatenate(z_flux)), 3),
        "ratio_per_star_median": round(float(np.median(per_star)), 3),
        "ratio_per_star_q25_q75": [round(float(q), 3) for q in np.percentile(per_star, [25, 75])],
        "median_scatter": round(float(np.median(scatter)), 5),
        "selection": selection,
    }


def _clipped_std(values: NDArray, clip_sigma: float = 4.0) -> float:
    """The standard deviation of ``values`` within ``clip_sigma`` robust sigma of their median,
    corrected for the normal tails cut (so 1 for unit normal values)."""
    values = values[np.isfinite(values)]
    centre = np.median(values)
    spread = _MAD_SIGMA * np.median(np.abs(values - centre))
    kept = values[np.abs(values - centre) <= clip_sigma * spread]
    return float(np.sqrt(np.var(kept, ddof=1) / _clipped_variance_fraction(clip_sigma)))
