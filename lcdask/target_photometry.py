"""The target's relative flux chosen on the data: its aperture, comparison stars and weights.

The run-wide ensemble (`lcdask.lightcurves.ensemble_photometry`) serves every source with one
aperture (the run's ``flux``) and comparison stars chosen without regard to the target. For the
target this module chooses, on the night's own data, the aperture (one of the light curves'
``flux_ap``) and the comparison stars with their weights that make its relative flux the least
scattered, and guards the choice against over-fitting by cross-validation.

Method (`choose_target_photometry`)
-----------------------------------
1. Candidates (`comparison_candidates`): sources that are not the target, not movers, not
   detector artefacts, not dropped as variable by the run-wide ensemble, never saturated, not
   blended in most frames, of similar brightness (median flux within ``flux_ratio`` of the
   target's) and colour (when colours are given), with a good point (measured; no EDGE,
   SATURATED, MASKED or ARTEFACT bit: `CANDIDATE_BAD`) in at least ``min_coverage`` of the
   target's frames. When fewer than ``min_candidates`` pass, the stars nearest the target's
   brightness are taken.
2. The score (`detrended_scatter`): the weighted RMS of a curve's log-flux about a quadratic in
   time and, when the run-wide curve shows one (`find_dip`), a trapezoidal dip of free depth
   (the transit); points beyond 5 robust deviations left out. The weights are those of the
   run-wide curve's errors (the same for every curve compared: cloudy frames count less). The
   quadratic follows the airmass and slow drifts; what a comparison star adds on the time
   scale of clouds and seeing changes stays in the residuals.
3. Each star's own noise at each aperture (an N-cornered hat): the detrended variance of the
   log-ratio of every pair of stars among the target and the candidates is the sum of the two
   stars' variances; the variances follow by non-negative least squares (each pair's equation
   divided by its variance), at least each star's photon noise. A star whose flux follows the
   clouds, or with a neighbour in its aperture, is noisy against every other star.
4. Configurations, at each aperture whose photon noise for the target is within
   ``max_noise_ratio`` (1.25) of the least: the candidates in order of their noise, the first
   ``n`` (``n`` = 1 .. ``max_comparisons``) weighted by inverse variance; and the run-wide
   comparison stars with their weights. Of the configurations whose score exceeds the least by
   no more than the standard error of the difference (paired over the frames: the target's own
   noise cancels), the one with the most stars; then a star is dropped while dropping it
   lowers the score by more than that standard error.
5. Cross-validation: the target's frames alternate between two halves (even and odd in time).
   Steps 2-4 are done on one half alone, the transit dip found on that half too, and the choice
   is judged on the other half (its points never seen by the choice), both ways round; the
   run-wide curve is judged on the same points. The choice made on all the frames is adopted
   only when the choices' judged scatter is below the run-wide curve's; otherwise the run-wide
   relative flux stays, and the record says so with the numbers.
6. Outliers (`flag_outliers`): points of the kept curve off the running median of their ten
   neighbours by more than ``outlier_clip`` (5) times the robust scatter, in units of each
   point's error, get `lcdask.lightcurves.LightCurveFlag.OUTLIER` (kept in the products; in
   `lcdask.lightcurves.BAD_FOR_FLUX`, hence out of the transit fit).
7. The error (`_with_excess`): the target's ``rel_flux_err`` is its photon noise and the
   comparison stars' through their weighted mean, and, in quadrature, the white noise that the
   photon noise does not explain, of the target and of the comparison stars (weighted): each
   star's white noise is an N-cornered hat of the pairs' point-to-point scatter (blind to slow
   trends and to the transit), its excess ``sqrt(white^2 - photon^2)``. Without a master flat
   the pixels' response (1% rms on the simulated small telescope) under the stars' jitter and
   drift adds 0.2-0.5% per point to a star of 0.3% photon noise: on simulated transit nights
   (benchmarks/validate_transit_nights.py, 60 frames of 512 px) the target's residual scatter
   about the transit fit was a median 1.34 times the photon-only error (27 nights), and 1.00
   times this one (the same nights and more); on one night with a perfect flat (``prnu = 0``)
   0.93 times the photon-only error. Both excesses are in the record (``excess_noise_pct``,
   ``excess_noise_comparison_pct``); the run-wide error is kept as
   ``target_rel_flux_default_err``. When the choice is not adopted the run-wide curve's error
   gets the same excess (its aperture's, its comparison stars').

Measured (`tests/test_target_photometry.py`): on simulated nights with a better aperture than
the run's the chosen curve's out-of-transit scatter is 0.24-0.26% against 0.36-0.42% for the
run-wide one (true noise 0.23%); on the small-telescope preset's 90-frame night 0.449% against
0.480%; on its 30-frame night no choice beat the run-wide curve on the frames it was not chosen
on, and that curve was kept.

`apply_target_photometry` writes the choice into the light-curve Dataset (module docstring of
`lcdask.lightcurves` for the others): the target's ``rel_flux`` and ``rel_flux_err`` become the
chosen ones, the run-wide ones are kept as ``target_rel_flux_default`` (frame), the weights as
``target_comparison_weight`` (source), and the choice in the Dataset's attributes (``target_*``).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import nnls

from lcdask.lightcurves import BAD_FOR_COMPARISON, LightCurveFlag, common_scale, robust_std

__all__ = [
    "CANDIDATE_BAD",
    "TargetPhotometry",
    "apply_target_photometry",
    "choose_target_photometry",
    "comparison_candidates",
    "detrended_scatter",
    "dip_shape",
    "find_dip",
    "flag_outliers",
]

CANDIDATE_BAD = LightCurveFlag.MISSING | BAD_FOR_COMPARISON
"""A comparison star's point with any of these bits is left out of the target's transparency
(as of the run-wide ensemble): not measured, truncated by the frame's edge, saturated, on bad or
repaired pixels, on an artefact. Its BLENDED points are kept (they are a tenth of a drifting
star's points on an undersampled night, and leaving them out made the transparency jump as the
stars dropped in and out: 0.45% out of transit instead of 0.40% on the simulated small-telescope
night); a star BLENDED in more than ``max_blended`` of the frames is not a candidate."""

RUN_WIDE = "the run-wide comparison stars and weights"
BY_NOISE = "the candidates in order of their noise, weighted by inverse variance"
_TARGET_BAD = LightCurveFlag.MISSING
"""The target's points that are not scored (its other flagged points are, robustly)."""


# --------------------------------------------------------------------------------------------
# candidates


def comparison_candidates(
    ds: xr.Dataset,
    target_id: int,
    *,
    exclude_ids: ArrayLike | None = None,
    min_coverage: float = 0.75,
    max_blended: float = 0.5,
    flux_ratio: tuple[float, float] = (0.25, 4.0),
    min_candidates: int = 5,
    max_candidates: int = 20,
    colour: pd.Series | None = None,
    max_colour_diff: float = 0.5,
) -> pd.DataFrame:
    """The target's candidate comparison stars (module docstring, step 1).

    Parameters
    ----------
    ds
        The light-curve Dataset (``flux``, ``flux_err``, ``flags``; ``is_artefact`` read when
        present).
    target_id
        The target's ``source_id``.
    exclude_ids
        Sources never to use: movers, known variables, the stars the run-wide ensemble
        dropped as variable.
    min_coverage
        Fraction of the target's measured frames in which a candidate has a good point (no
        `CANDIDATE_BAD` bit).
    max_blended
        Largest fraction of a candidate's measured points with the BLENDED bit (a neighbour's
        light in the aperture).
    flux_ratio
        Smallest and largest median flux relative to the target's.
    min_candidates
        When fewer pass, the stars of the right coverage nearest the target's brightness (in
        magnitudes) are taken instead, up to this many.
    max_candidates
        At most this many, nearest the target's brightness first.
    colour
        A colour per ``source_id`` (e.g. ``g - r``), NaN where unknown; with the target's
        known, candidates of known colour more than ``max_colour_diff`` away are left out.
    max_colour_diff
        See ``colour``.
    Returns
    -------
    pandas.DataFrame
        One row per candidate, nearest the target's brightness first: ``source_id``,
        ``flux_ratio``, ``coverage``, ``colour_diff`` (NaN without colours); ``attrs["counts"]``
        says how many sources each criterion left out and ``attrs["note"]`` when the window
        was widened.
    """
    sid = ds["source_id"].to_numpy()
    index = np.flatnonzero(sid == int(target_id))
    if index.size != 1:
        raise ValueError(f"target_id {target_id!r} is not a source_id of the light curves")
    ti = int(index[0])
    flux = ds["flux"].to_numpy().astype(float)
    flags = ds["flags"].to_numpy()
    measured = np.isfinite(flux) & (flux > 0) & ((flags & int(LightCurveFlag.MISSING)) == 0)
    good = measured & ((flags & int(CANDIDATE_BAD)) == 0)
    target_frames = measured[ti]
    n_target = max(int(target_frames.sum()), 1)
    coverage = (good & target_frames[None, :]).sum(axis=1) / n_target
    saturated = (measured & ((flags & int(LightCurveFlag.SATURATED)) != 0)).any(axis=1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(np.where(good, flux, np.nan), axis=1)
        target_flux = np.nanmedian(np.where(measured[ti], flux[ti], np.nan))
        ratio = med / target_flux
    counts: dict[str, int] = {}
    keep = np.ones(sid.size, bool)
    keep[ti] = False

    def drop(mask: NDArray[np.bool_], why: str) -> None:
        counts[why] = int((keep & mask).sum())
        keep[mask] = False

    if "is_artefact" in ds:
        drop(ds["is_artefact"].to_numpy().astype(bool), "artefact")
    if exclude_ids is not None:
        drop(np.isin(sid, np.asarray(exclude_ids, np.int64)), "excluded (mover or variable)")
    drop(saturated, "saturated")
    n_measured = np.maximum(measured.sum(axis=1), 1)
    blended = (measured & ((flags & int(LightCurveFlag.BLENDED)) != 0)).sum(axis=1) / n_measured
    drop(blended > max_blended, f"blended in more than {max_blended:g} of its frames")
    drop(~(coverage >= min_coverage), f"coverage below {min_coverage:g}")
    colour_diff = np.full(sid.size, np.nan)
    if colour is not None:
        values = pd.Series(colour).reindex(sid).to_numpy(float)
        colour_diff = np.abs(values - values[ti])
        drop(colour_diff > max_colour_diff, f"colour more than {max_colour_diff:g} off")
    lo, hi = flux_ratio
    in_window = (ratio >= lo) & (ratio <= hi)
    note = ""
    if int((keep & in_window).sum()) < min_candidates:
        note = (
            f"{int((keep & in_window).sum())} stars within {lo:g}-{hi:g} of the target's flux: "
            f"the {min_candidates} nearest in brightness taken"
        )
    else:
        drop(~in_window, f"flux ratio outside {lo:g}-{hi:g}")
    idx = np.flatnonzero(keep & np.isfinite(ratio) & (ratio > 0))
    idx = idx[np.argsort(np.abs(np.log(ratio[idx])), kind="stable")]
    idx = idx[: min_candidates if note else max_candidates]
    table = pd.DataFrame(
        {
            "source_id": sid[idx].astype(np.int64),
            "flux_ratio": ratio[idx],
            "coverage": coverage[idx],
            "colour_diff": colour_diff[idx],
        }
    )
    table.attrs["counts"] = counts
    table.attrs["note"] = note
    return table


# --------------------------------------------------------------------------------------------
# the score


def _time_basis(time: NDArray, use: NDArray[np.bool_], degree: int) -> NDArray:
    """Legendre-like columns ``1, u, u**2, ...`` of the time scaled to -1..1 over ``use``."""
    t = np.asarray(time, float)
    tu = t[use & np.isfinite(t)]
    mid = 0.5 * (tu.max() + tu.min()) if tu.size else 0.0
    half = max(0.5 * (tu.max() - tu.min()), 1e-9) if tu.size else 1.0
    u = (t - mid) / half
    return np.column_stack([u**d for d in range(degree + 1)])


def dip_shape(time: ArrayLike, start: float, end: float, *, ingress: float = 0.15) -> NDArray:
    """A trapezoidal dip of depth 1 from ``start`` to ``end`` (0 outside), whose ingress and
    egress each last ``ingress`` of its duration: the shape of a transit for the score's
    detrending (`detrended_scatter`), not a physical model."""
    t = np.asarray(time, float)
    ramp = max(ingress * (end - start), 1e-12)
    down = np.clip((t - start) / ramp, 0.0, 1.0)
    up = np.clip((end - t) / ramp, 0.0, 1.0)
    return np.minimum(down, up)


def find_dip(
    y: ArrayLike,
    use: ArrayLike,
    time: ArrayLike,
    *,
    degree: int = 2,
    weights: ArrayLike | None = None,
    min_delta_chi2: float = 25.0,
    durations: ArrayLike | None = None,
) -> tuple[float, float] | None:
    """The trapezoidal dip (`dip_shape`) that best explains a light curve with a polynomial.

    Parameters
    ----------
    y
        Log relative flux of the target, one per frame (NaN where not measured).
    use
        Frames to fit.
    time
        The frames' times (days).
    degree
        Degree of the polynomial in time fitted with it.
    weights
        Weight of each frame (e.g. ``1 / rel_flux_err**2``); default equal.
    min_delta_chi2
        Least improvement of the chi-square (residuals in units of their robust scatter) for a
        dip to be kept.
    durations
        Durations tried (days); default 0.5 to 6 hours.

    Returns
    -------
    tuple of float or None
        ``(start, end)`` of the dip (which may lie partly outside the frames: a partial
        transit), or None when none improves the fit enough.
    """
    values = np.asarray(y, float)
    t = np.asarray(time, float)
    w = _frame_weights(weights, t.size)
    ok = np.asarray(use, bool) & np.isfinite(values) & np.isfinite(t) & (w > 0)
    if ok.sum() < degree + 6:
        return None
    # outliers (a cloud's wild point) out first: a dip is many points, not one
    resid, _ = _detrended_residuals(
        values[None], ok, t, degree=degree, dip=None, weights=w, clip=5.0
    )
    ok &= np.isfinite(resid[0])
    order = np.argsort(t[ok], kind="stable")
    tt, yy, sw = t[ok][order], values[ok][order], np.sqrt(w[ok][order])
    basis = _time_basis(t, ok, degree)[ok][order]
    coef, *_ = np.linalg.lstsq(basis * sw[:, None], yy * sw, rcond=None)
    rss0 = float(np.sum(((yy - basis @ coef) * sw) ** 2))
    scale = max(float(robust_std(np.diff(yy * sw)) / np.sqrt(2)), 1e-12)
    hours = np.asarray(durations, float) if durations is not None else None
    if hours is None:
        hours = np.array([0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0]) / 24.0
    cadence = float(np.median(np.diff(tt))) if tt.size > 1 else 1.0
    best, best_rss = None, rss0
    for duration in hours:
        step = max(cadence, duration / 16)
        for centre in np.arange(tt.min() - 0.45 * duration, tt.max() + 0.45 * duration, step):
            shape = dip_shape(tt, centre - duration / 2, centre + duration / 2)
            # a dip is seen in at least 3 points, and its edge (or the frames' end) in others
            if np.count_nonzero(shape > 0.5) < 3 or np.count_nonzero(shape < 0.5) < 3:
                continue
            design = np.column_stack([basis, -shape])
            c, *_ = np.linalg.lstsq(design * sw[:, None], yy * sw, rcond=None)
            if c[-1] <= 0:  # a dip, not a bump
                continue
            rss = float(np.sum(((yy - design @ c) * sw) ** 2))
            if rss < best_rss:
                best, best_rss = (centre - duration / 2, centre + duration / 2), rss
    if best is None or (rss0 - best_rss) / scale**2 < min_delta_chi2:
        return None
    return best


def _frame_weights(weights: ArrayLike | None, n: int) -> NDArray:
    """Frame weights (1 when None), 0 where not finite or not positive."""
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, float)
    if w.shape != (n,):
        raise ValueError(f"weights must have one value per frame ({n}), not shape {w.shape}")
    return np.where(np.isfinite(w) & (w > 0), w, 0.0)


def detrended_scatter(
    y: ArrayLike,
    use: ArrayLike,
    time: ArrayLike,
    *,
    degree: int = 2,
    dip: tuple[float, float] | None = None,
    weights: ArrayLike | None = None,
    clip: float = 5.0,
) -> NDArray[np.float64]:
    """The scatter of each row of ``y`` about a polynomial in time (and a dip) fitted to it.

    Each row is fitted by least squares, on its points ``use``, with a polynomial of degree
    ``degree`` in time and, when ``dip`` is given, the dip `dip_shape` with a free depth (the
    transit, found once by `find_dip`); points beyond ``clip`` robust deviations (1.4826 MAD)
    are left out and the fit repeated once. The scatter is the RMS of the residuals kept times
    ``sqrt(n / (n - p))`` (``p`` fitted parameters). The polynomial follows the airmass and the
    slow drifts; a comparison star that follows the clouds, a neighbour that wanders into an
    aperture with the seeing, or the photon noise are left in the residuals.

    Parameters
    ----------
    y
        (row, frame) values, e.g. the log of relative fluxes (NaN where not measured).
    use
        (row, frame) or (frame,) mask of the points to score.
    time
        The frames' times.
    degree
        Degree of the polynomial.
    dip
        ``(start, end)`` of a dip fitted with it (`find_dip`), or None.
    weights
        Weight of each frame (e.g. ``1 / rel_flux_err**2`` of the run-wide curve, the same for
        every row compared); default equal.
    clip
        Outlier rejection threshold.

    Returns
    -------
    numpy.ndarray
        One scatter per row; NaN for a row with too few points (fewer than ``p + 3``).
    """
    resid, n_params = _detrended_residuals(
        y, use, time, degree=degree, dip=dip, weights=weights, clip=clip
    )
    n = np.isfinite(resid).sum(axis=1)
    with np.errstate(all="ignore"):
        out = np.sqrt(np.nansum(resid**2, axis=1) / (n - n_params))
    return np.where(n >= n_params + 3, out, np.nan)


def _detrended_residuals(
    y: ArrayLike,
    use: ArrayLike,
    time: ArrayLike,
    *,
    degree: int,
    dip: tuple[float, float] | None,
    weights: ArrayLike | None,
    clip: float,
) -> tuple[NDArray, int]:
    """`detrended_scatter`'s weighted residuals, (row, frame), NaN where not kept, and the
    number of parameters fitted."""
    arr = np.atleast_2d(np.asarray(y, float))
    mask = np.broadcast_to(np.asarray(use, bool), arr.shape)
    t = np.asarray(time, float)
    every = mask.any(axis=0) & np.isfinite(t)
    columns = [_time_basis(t, every, degree)]
    if dip is not None:
        columns.append(-dip_shape(t, *dip)[:, None])
    design = np.column_stack(columns)
    p = design.shape[1]
    w = _frame_weights(weights, t.size)
    out = np.full(arr.shape, np.nan)
    for row in range(arr.shape[0]):
        ok = mask[row] & np.isfinite(arr[row]) & every & (w > 0)
        for _ in range(2):
            if ok.sum() < p + 3:
                break
            sw = np.sqrt(w[ok] / w[ok].mean())
            coef, *_ = np.linalg.lstsq(design[ok] * sw[:, None], arr[row, ok] * sw, rcond=None)
            resid = np.zeros(t.size)
            resid[ok] = (arr[row, ok] - design[ok] @ coef) * sw
            scale = 1.4826 * float(np.median(np.abs(resid[ok])))
            kept = ok & (np.abs(resid) <= clip * scale) if scale > 0 else ok
            if np.array_equal(kept, ok):
                break
            ok = kept
        if ok.sum() < p + 3:
            continue
        sw = np.sqrt(w[ok] / w[ok].mean())
        coef, *_ = np.linalg.lstsq(design[ok] * sw[:, None], arr[row, ok] * sw, rcond=None)
        out[row, ok] = (arr[row, ok] - design[ok] @ coef) * sw
    return out, p


def _paired_excess(resid: NDArray, reference: NDArray) -> tuple[float, float]:
    """Mean excess of the squared residuals of ``resid`` over ``reference`` on the points both
    kept, and its standard error (a paired comparison: the target's own noise, common to both,
    cancels from the difference)."""
    both = np.isfinite(resid) & np.isfinite(reference)
    if both.sum() < 3:
        return np.nan, np.nan
    d = resid[both] ** 2 - reference[both] ** 2
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(d.size))


# --------------------------------------------------------------------------------------------
# the choice


@dataclass(frozen=True)
class _Stars:
    """The target (row 0), the candidates (rows 1 .. ``n_candidates``) and the run-wide
    comparison stars not among them, at every aperture: ``flux`` (aperture, star, frame),
    fractional errors ``frac_err``, good points ``good`` (star, frame), the target's scored
    frames ``target_ok``, ids, the apertures' numbers, the frames' times and score weights, and
    the run-wide comparison stars' rows and weights."""

    flux: NDArray
    frac_err: NDArray
    good: NDArray[np.bool_]
    target_ok: NDArray[np.bool_]
    ids: NDArray[np.int64]
    apertures: NDArray[np.int64]
    time: NDArray
    weights: NDArray
    n_candidates: int = 0
    run_rows: NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    run_weights: NDArray = field(default_factory=lambda: np.zeros(0))


@dataclass(frozen=True)
class _Choice:
    """One configuration: aperture position ``k``, rows of the comparison stars (in ``_Stars``,
    1-based among the candidates), their weights, and the target's relative flux and error."""

    k: int
    rows: NDArray[np.int64]
    weights: NDArray
    rel_flux: NDArray
    rel_flux_err: NDArray
    score: float
    noise: NDArray = field(default_factory=lambda: np.zeros(0))
    label: str = ""


def _photon_noise(stars: _Stars, k: int, frames: NDArray[np.bool_]) -> NDArray:
    """Each star's median photon noise (fractional) at aperture ``k`` on its good ``frames``."""
    m = stars.flux.shape[1]
    ok = np.where(np.arange(m)[:, None] == 0, stars.target_ok[None, :], stars.good)
    ok &= frames[None, :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        photon = np.nanmedian(np.where(ok, stars.frac_err[k], np.nan), axis=1)
    return np.where(np.isfinite(photon), photon, np.nanmax(photon))


def _star_noise(stars: _Stars, k: int, frames: NDArray[np.bool_]) -> NDArray:
    """Each star's own noise (fractional) at aperture ``k`` on ``frames``: an N-cornered hat of
    the detrended pair scatters, at least its median photon noise (module docstring, step 3)."""
    logf = np.log(stars.flux[k])
    m = logf.shape[0]
    ok = np.where(np.arange(m)[:, None] == 0, stars.target_ok[None, :], stars.good)
    ok &= frames[None, :]
    i, j = np.triu_indices(m, 1)
    diff = logf[i] - logf[j]
    scatter = detrended_scatter(diff, ok[i] & ok[j], stars.time, weights=stars.weights)
    return _hat(scatter, i, j, _photon_noise(stars, k, frames))


def _white_noise(stars: _Stars, k: int, frames: NDArray[np.bool_]) -> NDArray:
    """Each star's own white noise (fractional) at aperture ``k`` on ``frames``: the N-cornered
    hat of the pairs' point-to-point scatter (1.4826 MAD of the differences of consecutive
    points of their log ratio, over sqrt 2: blind to slow trends and to the transit), at least
    its median photon noise (module docstring, step 7)."""
    logf = np.log(stars.flux[k])
    m = logf.shape[0]
    ok = np.where(np.arange(m)[:, None] == 0, stars.target_ok[None, :], stars.good)
    ok &= frames[None, :] & np.isfinite(stars.time)[None, :]
    order = np.argsort(stars.time, kind="stable")
    i, j = np.triu_indices(m, 1)
    scatter = np.full(i.size, np.nan)
    for n, (a, b) in enumerate(zip(i, j, strict=True)):
        both = order[(ok[a] & ok[b])[order]]
        if both.size < 8:
            continue
        steps = np.diff(logf[a, both] - logf[b, both])
        scatter[n] = 1.4826 * np.median(np.abs(steps - np.median(steps))) / np.sqrt(2.0)
    return _hat(scatter, i, j, _photon_noise(stars, k, frames))


def _hat(scatter: NDArray, i: NDArray, j: NDArray, photon: NDArray) -> NDArray:
    """The N-cornered hat: each star's noise from its pairs' scatters (``i``, ``j``), by
    non-negative least squares, at least its ``photon`` noise (its photon noise alone when a
    pair is missing or there are fewer than 3 stars)."""
    m = photon.size
    fine = np.isfinite(scatter)
    if m < 3 or fine.sum() < m:
        return photon
    design = np.zeros((int(fine.sum()), m))
    rows = np.arange(design.shape[0])
    design[rows, i[fine]] = 1.0
    design[rows, j[fine]] = 1.0
    # each pair's variance is known to a fraction of itself: relative residuals, so that the
    # pairs of faint stars do not outweigh the others
    v = scatter[fine] ** 2
    var, _ = nnls(design / v[:, None], np.ones(v.size))
    return np.sqrt(np.maximum(var, photon**2))


def _relative_flux(
    stars: _Stars,
    k: int,
    rows: NDArray[np.int64],
    noise: NDArray,
    *,
    weights: NDArray | None = None,
    wild: float = 6.0,
) -> tuple[NDArray, NDArray]:
    """The target's flux over the transparency of the stars ``rows`` at aperture ``k`` (their
    normalised fluxes weighted by ``weights``, default ``1 / noise**2``; ``noise`` their
    fractional noise), normalised to its median, and its error from the photon noise of all of
    them.

    With three stars or more, a star's point more than ``wild`` times its noise (with the
    others') off the others' weighted mean is left out of that frame's transparency (a
    cosmic-ray residual, a satellite, a bad pixel not flagged).
    """
    flux = stars.flux[k]
    weights = 1.0 / noise**2 if weights is None else np.asarray(weights, float)
    cf = np.where(stars.good[rows], flux[rows], np.nan)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        x = cf / common_scale(cf)[:, None]
        if rows.size >= 3:
            wx = np.where(np.isfinite(x), weights[:, None] * x, 0.0)
            ww = np.where(np.isfinite(x), weights[:, None], 0.0)
            others = (wx.sum(axis=0) - wx) / (ww.sum(axis=0) - ww)
            # variance of the others' weighted mean from their noise
            wn = np.where(np.isfinite(x), (weights * noise)[:, None] ** 2, 0.0)
            others_var = (wn.sum(axis=0) - wn) / (ww.sum(axis=0) - ww) ** 2
            dev = x / others
            dev = dev / np.nanmedian(dev, axis=1, keepdims=True) - 1.0
            x = np.where(np.abs(dev) > wild * np.sqrt(noise[:, None] ** 2 + others_var), np.nan, x)
        ww = np.where(np.isfinite(x), weights[:, None], 0.0)
        s_w = ww.sum(axis=0)
        transparency = np.where(np.isfinite(x), x, 0.0).T @ weights / s_w
        transparency = np.where(s_w > 0, transparency, np.nan)
        # variance of the weighted mean from each star's photon noise
        e = stars.frac_err[k][rows]
        t_var = (
            np.nansum((ww * np.where(np.isfinite(x), x, 0.0) * e) ** 2, axis=0)
            / (s_w * transparency) ** 2
        )
        rel = np.where(stars.target_ok, flux[0], np.nan) / transparency
        med = np.nanmedian(rel)
        rel = rel / med
        rel_err = np.abs(rel) * np.sqrt(stars.frac_err[k][0] ** 2 + t_var)
    return rel, rel_err


def _with_excess(
    stars: _Stars,
    k: int,
    noise: NDArray,
    rows: NDArray[np.int64],
    weights: NDArray,
    rel: NDArray,
    rel_err: NDArray,
    frames: NDArray[np.bool_],
) -> tuple[NDArray, float, float]:
    """The target's relative-flux error with the noise the photon noise does not explain
    (module docstring, step 7): ``rel_err`` and, in quadrature, ``rel`` times the target's
    excess and the comparison stars' (``rows``, ``weights``) excess through their weighted mean.

    ``noise`` is each star's own noise at aperture ``k`` (`_star_noise` on ``frames``); a
    star's excess is ``sqrt(noise^2 - photon^2)`` (0 when the N-cornered hat could not be
    solved: then ``noise`` is the photon noise). Returns the error and the two excesses.
    """
    photon = _photon_noise(stars, k, frames)
    excess = np.sqrt(np.maximum(noise**2 - photon**2, 0.0))
    w = np.asarray(weights, float)
    w = w / w.sum() if w.size and w.sum() > 0 else w
    target_excess = float(excess[0])
    comparison_excess = float(np.sqrt(np.sum((w * excess[rows]) ** 2))) if rows.size else 0.0
    extra = target_excess**2 + comparison_excess**2
    return np.sqrt(rel_err**2 + (rel**2) * extra), target_excess, comparison_excess


def _run_aperture(stars: _Stars, ds: xr.Dataset) -> int | None:
    """The position ``k`` of the aperture whose flux is the run's ``flux`` for the target (None
    when no aperture matches it to 0.1%)."""
    sid = ds["source_id"].to_numpy()
    flux = ds["flux"].to_numpy()[int(np.flatnonzero(sid == stars.ids[0])[0])].astype(float)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        off = np.nanmedian(np.abs(np.log(stars.flux[:, 0, :] / flux[None, :])), axis=1)
    if not np.any(np.isfinite(off)):
        return None
    k = int(np.nanargmin(off))
    return k if off[k] < 1e-3 else None


def _select(
    stars: _Stars,
    frames: NDArray[np.bool_],
    max_comparisons: int,
    dip: tuple[float, float] | None,
    *,
    max_noise_ratio: float = 1.25,
) -> _Choice:
    """The configuration with the least detrended scatter of the target on ``frames`` (with
    ``dip`` in the detrending).

    The apertures tried are those whose photon noise for the target (median of its
    ``flux_ap_err / flux_ap`` on ``frames``) is within ``max_noise_ratio`` of the least: a
    wider or narrower one is not chosen on a few frames' luck (on the simulated small-telescope
    night a 10 px aperture, 2.3 times the noise, won on 15 frames with one comparison star and
    scattered 6% on the others). At each aperture the stars in order of their noise, the first
    ``n`` weighted by inverse variance. Of the configurations whose scatter is within one
    standard error of the least (the one-standard-error rule), the one with the most stars:
    more stars average down what the few scored frames cannot tell apart.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        photon = np.nanmedian(np.where(frames, stars.frac_err[:, 0, :], np.nan), axis=1)
    allowed = photon <= max_noise_ratio * np.nanmin(photon)
    configs: list[_Config] = []
    for k in np.flatnonzero(allowed):
        noise = _star_noise(stars, int(k), frames)
        order = 1 + np.argsort(noise[1 : 1 + stars.n_candidates], kind="stable")
        sets = [(order[:n], 1.0 / noise[order[:n]] ** 2) for n in range(1, order.size + 1)]
        configs += _score_configs(stars, int(k), sets[:max_comparisons], noise, frames, dip)
        if stars.run_rows.size:  # the run-wide comparison stars and weights, at this aperture
            run_wide = [(stars.run_rows, stars.run_weights)]
            configs += _score_configs(stars, int(k), run_wide, noise, frames, dip, RUN_WIDE)
    if not configs:
        raise ValueError("no configuration could be scored: too few frames or comparison stars")
    best = min(configs, key=lambda c: c.score)

    def close(config: _Config) -> bool:
        excess, error = _paired_excess(config.resid, best.resid)
        return config is best or (np.isfinite(excess) and excess <= error)

    chosen = max((c for c in configs if close(c)), key=lambda c: (c.rows.size, -c.score))
    # then drop, one at a time, a star whose removal lowers the scatter by more than its
    # standard error: a star whose noise is not white (it follows the clouds) hurts the
    # target more than its scatter says
    while chosen.rows.size > 1:
        sets = [
            (np.delete(chosen.rows, i), np.delete(chosen.weights, i))
            for i in range(chosen.rows.size)
        ]
        trials = _score_configs(stars, chosen.k, sets, chosen.noise, frames, dip, chosen.label)
        better = []
        for trial in trials:
            excess, error = _paired_excess(trial.resid, chosen.resid)
            if np.isfinite(excess) and excess < -error:
                better.append((excess, trial))
        if not better:
            break
        chosen = min(better, key=lambda e: e[0])[1]
    return _Choice(
        chosen.k,
        chosen.rows,
        chosen.weights / chosen.weights.sum(),
        chosen.rel_flux,
        chosen.rel_flux_err,
        chosen.score,
        chosen.noise,
        chosen.label,
    )


@dataclass(frozen=True)
class _Config:
    """A configuration tried: aperture position ``k``, star rows and weights, the stars' noise,
    the target's curve, its error and its detrended residuals and scatter."""

    k: int
    rows: NDArray[np.int64]
    weights: NDArray
    noise: NDArray
    rel_flux: NDArray
    rel_flux_err: NDArray
    resid: NDArray
    score: float
    label: str


def _score_configs(
    stars: _Stars,
    k: int,
    sets: list[tuple[NDArray[np.int64], NDArray]],
    noise: NDArray,
    frames: NDArray[np.bool_],
    dip: tuple[float, float] | None,
    label: str = BY_NOISE,
) -> list[_Config]:
    """The target's curve at aperture ``k`` with each (rows, weights) of ``sets``, and its
    detrended scatter on ``frames`` (configurations with too few points left out)."""
    if not sets:
        return []
    curves = [_relative_flux(stars, k, rows, noise[rows], weights=w) for rows, w in sets]
    with np.errstate(all="ignore"):
        resid, n_params = _detrended_residuals(
            np.log(np.array([c[0] for c in curves])),
            frames[None, :],
            stars.time,
            degree=2,
            dip=dip,
            weights=stars.weights,
            clip=5.0,
        )
    n_kept = np.isfinite(resid).sum(axis=1)
    out = []
    for i, (rows, w) in enumerate(sets):
        if n_kept[i] >= n_params + 3:
            score = float(np.sqrt(np.nansum(resid[i] ** 2) / (n_kept[i] - n_params)))
            out.append(_Config(k, rows, w, noise, *curves[i], resid[i], score, label))
    return out


@dataclass(frozen=True)
class TargetPhotometry:
    """The target's photometry chosen by `choose_target_photometry`.

    Attributes
    ----------
    source_id
        The target.
    adopted
        Whether the choice replaces the run-wide relative flux (it passed the
        cross-validation); ``why`` says why not.
    aperture, aperture_radius, aperture_unit
        The aperture chosen: its number ``k`` of ``flux_ap<k>`` (the light curves'
        ``aperture`` coordinate), its radius and unit (``"fwhm"`` or ``"px"``).
    comparison_ids, weights
        The comparison stars chosen and their normalised weights (inverse variance).
    noise
        Each comparison star's own fractional noise (the N-cornered hat), same order.
    excess_noise, excess_noise_comparison
        The target's white noise beyond its photon noise, and the comparison stars' through
        their weighted mean (fractional; NaN when not measured): in ``rel_flux_err``.
    rel_flux, rel_flux_err
        The target's relative flux (median 1) and its error (photon noise and the excess white
        noise, module docstring step 7), one per frame (NaN where the target or every
        comparison star is not measured).
    outlier
        Frames whose point is an outlier (`flag_outliers`) of the curve kept (the chosen one
        when adopted, else the run-wide one).
    scatter_default, scatter_chosen
        Detrended scatter (`detrended_scatter`) on all the frames of the run-wide relative flux
        and of the chosen one (the latter chosen on these points: see ``cv``).
    cv
        The cross-validation: ``folds``, each half's choice (aperture, comparison ids, its
        scatter on that half) and both curves' scatter judged on the other half;
        ``judged_chosen_pct`` and ``judged_default_pct`` over both halves; ``gain_sigma``, the
        judged gain (the run-wide curve's squared residuals less the choices', paired) in
        standard errors; ``dip``, the transit's start and end found in the run-wide curve.
    candidates
        The candidate table (`comparison_candidates`).
    why
        Why the choice was not adopted (empty when it was).
    comparison_set
        Where the comparison stars come from: the run-wide ensemble's (with its weights, less
        any dropped), or the candidates in order of their noise.
    """

    source_id: int
    adopted: bool
    aperture: int
    aperture_radius: float
    aperture_unit: str
    comparison_ids: NDArray[np.int64]
    weights: NDArray[np.float64]
    noise: NDArray[np.float64]
    rel_flux: NDArray[np.float64]
    rel_flux_err: NDArray[np.float64]
    outlier: NDArray[np.bool_]
    scatter_default: float
    scatter_chosen: float
    cv: dict[str, Any]
    candidates: pd.DataFrame
    why: str = ""
    comparison_set: str = ""
    excess_noise: float = np.nan
    excess_noise_comparison: float = np.nan

    def as_record(self) -> dict[str, Any]:
        """A JSON-ready summary for run.json."""

        def pct(value: float) -> float | None:
            return round(100 * float(value), 4) if np.isfinite(value) else None

        return {
            "source_id": int(self.source_id),
            "adopted": bool(self.adopted),
            "why": self.why,
            "aperture": int(self.aperture),
            "aperture_radius": float(self.aperture_radius)
            if np.isfinite(self.aperture_radius)
            else None,
            "aperture_unit": self.aperture_unit,
            "comparison_set": self.comparison_set,
            "n_comparison": int(self.comparison_ids.size),
            "comparison_ids": [int(v) for v in self.comparison_ids],
            "weights": [round(float(v), 4) for v in self.weights],
            "noise_pct": [pct(v) for v in self.noise],
            "scatter_default_pct": pct(self.scatter_default),
            "scatter_chosen_pct": pct(self.scatter_chosen),
            "cv": self.cv,
            "n_candidates": len(self.candidates),
            "candidate_ids": [int(v) for v in self.candidates["source_id"]],
            "candidates_left_out": dict(self.candidates.attrs.get("counts", {})),
            "candidates_note": self.candidates.attrs.get("note", ""),
            "n_outliers": int(self.outlier.sum()),
            "excess_noise_pct": pct(self.excess_noise),
            "excess_noise_comparison_pct": pct(self.excess_noise_comparison),
        }


def _stars(
    ds: xr.Dataset,
    target_id: int,
    candidate_ids: NDArray[np.int64],
    weights: NDArray,
    run_ids: NDArray[np.int64] | None = None,
    run_weights: NDArray | None = None,
) -> _Stars:
    """The target, the candidates and the run-wide comparison stars (``run_ids``, weights
    ``run_weights``): fluxes at every aperture (``flux`` alone without ``flux_ap``) and their
    good points."""
    sid = ds["source_id"].to_numpy()
    order = np.argsort(sid, kind="stable")
    candidate_ids = np.asarray(candidate_ids, np.int64)
    run_ids = np.zeros(0, np.int64) if run_ids is None else np.asarray(run_ids, np.int64)
    extra = run_ids[~np.isin(run_ids, candidate_ids)]
    ids = np.concatenate([[int(target_id)], candidate_ids, extra])
    rows = order[np.searchsorted(sid[order], ids)]
    flags = ds["flags"].to_numpy()[rows]
    if "flux_ap" in ds:
        flux = np.moveaxis(ds["flux_ap"].to_numpy()[rows].astype(float), 2, 0)
        err = np.moveaxis(ds["flux_ap_err"].to_numpy()[rows].astype(float), 2, 0)
        apertures = ds["aperture"].to_numpy().astype(np.int64)
    else:
        flux = ds["flux"].to_numpy()[rows].astype(float)[None]
        err = ds["flux_err"].to_numpy()[rows].astype(float)[None]
        apertures = np.zeros(1, np.int64)
    measured = np.isfinite(flux) & np.isfinite(err) & (flux > 0) & (err > 0)
    measured &= ((flags & int(_TARGET_BAD)) == 0)[None]
    with np.errstate(all="ignore"):
        frac = err / flux
    good = measured.all(axis=0) & ((flags & int(CANDIDATE_BAD)) == 0)
    time = ds["time_mjd"].to_numpy().astype(float)
    return _Stars(
        flux=np.where(measured, flux, np.nan),
        frac_err=np.where(measured, frac, np.nan),
        good=good,
        target_ok=measured[:, 0].all(axis=0),
        ids=ids,
        apertures=apertures,
        time=time,
        weights=_frame_weights(weights, time.size),
        n_candidates=int(candidate_ids.size),
        run_rows=np.array([int(np.flatnonzero(ids == v)[0]) for v in run_ids], np.int64),
        run_weights=np.zeros(0) if run_weights is None else np.asarray(run_weights, float),
    )


def choose_target_photometry(
    ds: xr.Dataset,
    target_id: int,
    *,
    candidates: pd.DataFrame,
    default_rel_flux: ArrayLike | None = None,
    max_comparisons: int = 10,
    min_frames: int = 8,
    outlier_clip: float = 5.0,
) -> TargetPhotometry:
    """Choose the target's aperture, comparison stars and weights (module docstring).

    Parameters
    ----------
    ds
        The light-curve Dataset (``flux_ap``, ``flux_ap_err`` when present, else ``flux``,
        ``flux_err``; ``flags``, ``time_mjd``; ``rel_flux`` and ``rel_flux_err`` after
        `lcdask.lightcurves.apply_ensemble`).
    target_id
        The target's ``source_id``.
    candidates
        `comparison_candidates` (at least one).
    default_rel_flux
        The run-wide relative flux of the target, judged beside the choice; default the
        Dataset's ``rel_flux`` of the target.
    max_comparisons
        Most comparison stars tried.
    min_frames
        Fewest frames in each half of the cross-validation; with fewer the run-wide relative
        flux is kept.
    outlier_clip
        Outlier threshold (`flag_outliers`).

    Returns
    -------
    TargetPhotometry
        The choice, whether it was adopted, the scatters and the cross-validation.
    """
    sid = ds["source_id"].to_numpy()
    index = np.flatnonzero(sid == int(target_id))
    if index.size != 1:
        raise ValueError(f"target_id {target_id!r} is not a source_id of the light curves")
    n_frames = ds.sizes["frame"]
    default = np.asarray(
        ds["rel_flux"].to_numpy()[int(index[0])] if default_rel_flux is None else default_rel_flux,
        float,
    )
    default_err = ds["rel_flux_err"].to_numpy()[int(index[0])].astype(float)
    with np.errstate(all="ignore"):
        weights = 1.0 / default_err**2
    run_ids, run_weights = None, None
    if "is_comparison" in ds and "comparison_weight" in ds:
        is_comp = ds["is_comparison"].to_numpy().astype(bool)
        run_ids = sid[is_comp].astype(np.int64)
        run_weights = ds["comparison_weight"].to_numpy()[is_comp].astype(float)
        keep = run_weights > 0
        run_ids, run_weights = run_ids[keep], run_weights[keep]
    stars = _stars(
        ds,
        target_id,
        candidates["source_id"].to_numpy(np.int64),
        weights,
        run_ids=run_ids,
        run_weights=run_weights,
    )
    cv: dict[str, Any] = {"folds": []}

    def kept(why: str) -> TargetPhotometry:
        outlier = flag_outliers(default, default_err, stars.time, clip=outlier_clip)
        return _result(stars, ds, None, default, default, outlier, np.nan, cv, candidates, why)

    if not len(candidates) and not stars.run_rows.size:
        return kept("no candidate comparison star")
    scored = np.flatnonzero(stars.target_ok & np.isfinite(stars.time))
    if scored.size < 2 * min_frames:
        return kept(f"{scored.size} frames with the target: too few to cross-validate")
    # the target's measured frames in time order, alternately in one half and the other
    half = np.zeros(n_frames, bool)
    half[scored[np.argsort(stars.time[scored], kind="stable")][::2]] = True
    log_default = np.log(np.where(default > 0, default, np.nan))
    judged: dict[str, list] = {"chosen": [], "default": [], "n": []}
    gains: list[NDArray] = []  # default's squared residual minus the choice's, judged points
    for name, fit_on in (("even frames", half), ("odd frames", ~half & stars.target_ok)):
        choice = _select(stars, fit_on, max_comparisons, _dip(log_default, fit_on, stars))
        on = ~fit_on & stars.target_ok
        with np.errstate(all="ignore"):
            resid, n_params = _detrended_residuals(
                np.log(np.array([choice.rel_flux, default])),
                on,
                stars.time,
                degree=2,
                dip=_dip(log_default, on, stars),
                weights=stars.weights,
                clip=5.0,
            )
        n_kept = np.isfinite(resid).sum(axis=1)
        scores = np.sqrt(np.nansum(resid**2, axis=1) / np.maximum(n_kept - n_params, 1))
        both = np.isfinite(resid).all(axis=0)
        gains.append(resid[1, both] ** 2 - resid[0, both] ** 2)
        judged["chosen"].append(float(scores[0]))
        judged["default"].append(float(scores[1]))
        judged["n"].append(int(on.sum()))
        cv["folds"].append(
            {
                "chosen_on": name,
                "aperture": int(stars.apertures[choice.k]),
                "comparison_ids": [int(v) for v in stars.ids[choice.rows]],
                "scatter_chosen_on_pct": _pct(choice.score),
                "judged_chosen_pct": _pct(scores[0]),
                "judged_default_pct": _pct(scores[1]),
            }
        )
    n = np.asarray(judged["n"], float)
    chosen_cv = float(np.sqrt(np.sum(n * np.square(judged["chosen"])) / n.sum()))
    default_cv = float(np.sqrt(np.sum(n * np.square(judged["default"])) / n.sum()))
    gain = np.concatenate(gains)
    gain_z = float(gain.mean() / (gain.std(ddof=1) / np.sqrt(gain.size))) if gain.size > 2 else 0.0
    cv.update(
        judged_chosen_pct=_pct(chosen_cv),
        judged_default_pct=_pct(default_cv),
        gain_sigma=round(gain_z, 2),
    )
    every = stars.target_ok
    dip = _dip(log_default, every, stars)
    cv["dip"] = None if dip is None else [round(float(v), 5) for v in dip]
    choice = _select(stars, every, max_comparisons, dip)
    with np.errstate(all="ignore"):
        scatter_default = float(
            detrended_scatter(log_default[None], every, stars.time, dip=dip, weights=stars.weights)[
                0
            ]
        )
    if not chosen_cv < default_cv:
        why = (
            f"the choices judged on the frames they were not chosen on scatter "
            f"{100 * chosen_cv:.3f}%, the run-wide relative flux {100 * default_cv:.3f}%: "
            "the run-wide one is kept"
        )
        out = kept(why)
        out = dataclasses.replace(out, scatter_default=scatter_default, scatter_chosen=choice.score)
        k_run = _run_aperture(stars, ds)
        if k_run is None or not stars.run_rows.size:
            return out
        err, target_excess, comparison_excess = _with_excess(
            stars, k_run, _white_noise(stars, k_run, every), stars.run_rows,
            stars.run_weights, default, default_err, every,
        )  # fmt: skip
        return dataclasses.replace(
            out,
            rel_flux_err=err,
            excess_noise=target_excess,
            excess_noise_comparison=comparison_excess,
        )
    outlier = flag_outliers(choice.rel_flux, choice.rel_flux_err, stars.time, clip=outlier_clip)
    err, target_excess, comparison_excess = _with_excess(
        stars, choice.k, _white_noise(stars, choice.k, every), choice.rows,
        choice.weights, choice.rel_flux, choice.rel_flux_err, every,
    )  # fmt: skip
    choice = dataclasses.replace(choice, rel_flux_err=err)
    out = _result(
        stars, ds, choice, choice.rel_flux, default, outlier, scatter_default, cv, candidates, ""
    )
    return dataclasses.replace(
        out, excess_noise=target_excess, excess_noise_comparison=comparison_excess
    )


def _dip(log_default: NDArray, frames: NDArray[np.bool_], stars: _Stars):
    """The transit (`find_dip`) in the run-wide curve on ``frames``."""
    return find_dip(log_default, frames, stars.time, weights=stars.weights)


def _pct(value: float) -> float | None:
    return round(100 * float(value), 4) if np.isfinite(value) else None


def _result(
    stars: _Stars,
    ds: xr.Dataset,
    choice: _Choice | None,
    rel: NDArray,
    default: NDArray,
    outlier: NDArray[np.bool_],
    scatter_default: float,
    cv: dict[str, Any],
    candidates: pd.DataFrame,
    why: str,
) -> TargetPhotometry:
    if choice is None:
        return TargetPhotometry(
            source_id=int(stars.ids[0]),
            adopted=False,
            aperture=0,
            aperture_radius=np.nan,
            aperture_unit="",
            comparison_ids=np.zeros(0, np.int64),
            weights=np.zeros(0),
            noise=np.zeros(0),
            rel_flux=np.asarray(default, float),
            rel_flux_err=ds["rel_flux_err"]
            .to_numpy()[int(np.flatnonzero(ds["source_id"].to_numpy() == stars.ids[0])[0])]
            .astype(float),
            outlier=outlier,
            scatter_default=scatter_default,
            scatter_chosen=np.nan,
            cv=cv,
            candidates=candidates,
            why=why,
        )
    k = choice.k
    aperture = int(stars.apertures[k])
    radius, unit = np.nan, ""
    if "aperture_radius" in ds.coords:
        radius = float(ds["aperture_radius"].to_numpy()[k])
        unit = str(ds["aperture_unit"].to_numpy()[k])
    return TargetPhotometry(
        source_id=int(stars.ids[0]),
        adopted=True,
        aperture=aperture,
        aperture_radius=radius,
        aperture_unit=unit,
        comparison_ids=stars.ids[choice.rows],
        weights=choice.weights,
        noise=choice.noise[choice.rows],
        rel_flux=choice.rel_flux,
        rel_flux_err=choice.rel_flux_err,
        outlier=outlier,
        scatter_default=scatter_default,
        scatter_chosen=choice.score,
        cv=cv,
        candidates=candidates,
        why=why,
        comparison_set=choice.label,
    )


# --------------------------------------------------------------------------------------------
# outliers and the products


def flag_outliers(
    rel_flux: ArrayLike,
    rel_flux_err: ArrayLike,
    time: ArrayLike,
    *,
    clip: float = 5.0,
    half_window: int = 5,
) -> NDArray[np.bool_]:
    """Points off their neighbours' running median by more than ``clip`` robust deviations.

    Each point's residual from the median of the ``half_window`` measured points on either side
    (itself left out) is divided by its error (``rel_flux_err``, or 1 where that is missing);
    a point is an outlier when that exceeds ``clip`` times the robust scatter (1.4826 MAD) of
    all the normalised residuals.

    Parameters
    ----------
    rel_flux, rel_flux_err
        One light curve and its errors.
    time
        The frames' times (the order of the neighbours).
    clip, half_window
        Threshold and neighbourhood.

    Returns
    -------
    numpy.ndarray
        True for the outliers (False where the flux is NaN).
    """
    rel = np.asarray(rel_flux, float)
    err = np.asarray(rel_flux_err, float)
    t = np.asarray(time, float)
    out = np.zeros(rel.size, bool)
    ok = np.flatnonzero(np.isfinite(rel) & np.isfinite(t))
    if ok.size < 2 * half_window + 1:
        return out
    ok = ok[np.argsort(t[ok], kind="stable")]
    values = rel[ok]
    e = err[ok]
    e = np.where(np.isfinite(e) & (e > 0), e, np.nanmedian(e[np.isfinite(e) & (e > 0)]))
    e = np.where(np.isfinite(e), e, 1.0)
    n = values.size
    local = np.empty(n)
    for i in range(n):
        lo, hi = max(0, i - half_window), min(n, i + half_window + 1)
        around = np.concatenate([values[lo:i], values[i + 1 : hi]])
        local[i] = np.median(around)
    z = (values - local) / e
    scale = float(robust_std(z))
    if not np.isfinite(scale) or scale <= 0:
        return out
    out[ok] = np.abs(z) > clip * scale
    return out


def apply_target_photometry(ds: xr.Dataset, result: TargetPhotometry) -> xr.Dataset:
    """Write the target's chosen photometry into the light-curve Dataset.

    Parameters
    ----------
    ds
        The light-curve Dataset after `lcdask.lightcurves.apply_ensemble`.
    result
        `choose_target_photometry` on it.

    Returns
    -------
    xarray.Dataset
        A copy. When the choice was adopted the target's ``rel_flux`` and ``rel_flux_err``
        are the chosen ones; always: ``target_rel_flux_default`` and
        ``target_rel_flux_default_err`` (frame) the run-wide ones, ``target_comparison_weight``
        (source) the weights of the target's comparison stars (0 for the others), the
        `lcdask.lightcurves.LightCurveFlag.OUTLIER` bit on the target's outlying points, and
        the attributes ``target_source_id``, ``target_adopted``, ``target_aperture`` (``k`` of
        the ``aperture`` coordinate; 0: the run's ``flux``), ``target_aperture_radius``,
        ``target_aperture_unit`` and ``target_comparison_ids``.
    """
    out = ds.copy()
    sid = out["source_id"].to_numpy()
    ti = int(np.flatnonzero(sid == result.source_id)[0])
    rel = out["rel_flux"].to_numpy().copy()
    rel_err = out["rel_flux_err"].to_numpy().copy()
    out["target_rel_flux_default"] = ("frame", rel[ti].copy())
    out["target_rel_flux_default_err"] = ("frame", rel_err[ti].copy())
    if result.adopted:
        rel[ti] = result.rel_flux
    rel_err[ti] = result.rel_flux_err  # the run-wide error too, with its excess noise
    out["rel_flux"] = out["rel_flux"].copy(data=rel)
    out["rel_flux_err"] = out["rel_flux_err"].copy(data=rel_err)
    flags = out["flags"].to_numpy().copy()
    flags[ti] = np.where(result.outlier, flags[ti] | int(LightCurveFlag.OUTLIER), flags[ti]).astype(
        flags.dtype
    )
    out["flags"] = out["flags"].copy(data=flags)
    weight = np.zeros(sid.size)
    if result.adopted:
        order = np.argsort(sid, kind="stable")
        weight[order[np.searchsorted(sid[order], result.comparison_ids)]] = result.weights
    out["target_comparison_weight"] = ("source", weight)
    out["target_rel_flux_default"].attrs["long_name"] = (
        "the target's run-wide ensemble relative flux (before its own choice)"
    )
    out["target_comparison_weight"].attrs["long_name"] = (
        "weight of the star in the target's own transparency (0: not one of its comparisons)"
    )
    out.attrs.update(
        target_source_id=int(result.source_id),
        target_adopted=int(result.adopted),
        target_aperture=int(result.aperture),
        target_aperture_radius=float(result.aperture_radius)
        if np.isfinite(result.aperture_radius)
        else 0.0,
        target_aperture_unit=result.aperture_unit,
        target_comparison_ids=[int(v) for v in result.comparison_ids],
    )
    return out
