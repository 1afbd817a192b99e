"""Transit and eclipse search: a single-event box least squares over every light curve.

A night is short: a transit or an eclipse is seen once, often in part, and a MAD test cannot see a
dip that covers a minority of the frames. `dip_search` fits, to each light curve, a box (a dip of
constant depth) on a constant or a linear baseline, over a grid of boxes shared by every source,
and keeps the most significant one.

The boxes (`box_grid`)
----------------------
Durations ``D`` run geometrically (step ``duration_step``) from ``min_duration_h`` (15 min) to
``max_duration_frac`` (1/2) of the night's span; for each, the box's start steps by
``D / oversample`` from ``D`` before the first frame to the last frame, so that a box may hang
over either end of the night: an event seen in part (only its egress, or only its ingress) is a box
cut by the edge, and a period longer than the span is one event. Each box is the run of frames
inside it; the grid does not depend on the number of frames (~500 boxes for a night of 6 h).

The fit (`dip_search`)
----------------------
Per source, the points used are the finite ones without a `~lcdask.lightcurves.BAD_FOR_FLUX`,
``MISSING`` or ``NEAR_MOVER`` flag, normalised by their median. The point errors are
``rel_flux_err`` scaled so that the point-to-point scatter of the residuals from a straight line
is 1 (``sigma_point``: the white noise, blind to the dip and to slow trends). For every box the
model ``y = a + b t - depth * box(t)`` is fitted by weighted least squares; with the baseline
fitted first (``beta``, ``A`` its normal matrix) and ``u = (sum_box w, sum_box w t)``, the
depth is ``-sum_box w (y - beta(t)) / s`` with variance ``1 / s``, ``s = sum_box w - u A^-1 u``
(the box's column with the baseline projected out), so that the whole grid is a few cumulative
sums over the frames, for all sources at once; the constant baseline is the same with ``t``
left out. ``dip_snr = depth / sigma_depth`` is the box's significance; the source's is the
largest over the boxes holding at least ``min_points_in`` points (a box of one or two points is
an outlier, not an event) with as many outside, and over both baselines (``baseline="either"``):
the straight line keeps a slow trend (airmass, colour) from looking like an event cut by the
edge, the constant loses less of a long or edge-cut event to the line (on the injected nights of
tests/test_search.py, 96% of the transits at S/N >= 10 with the line alone, 100% with either, the
same stable stars flagged: none). The best box's ends are then refined frame by frame (9 x 9
shifts within a quarter of its length, then within a sixteenth). With a constant baseline and the
errors as given the statistic is `astropy.timeseries.BoxLeastSquares`'s ``depth_snr`` for a
period longer than the night (tests/test_search.py checks it).

The threshold (`dip_threshold`)
-------------------------------
The largest S/N over ~500 boxes of pure noise is not small: its distribution is close to a Gumbel
(the law of the maximum of many trials). `dip_threshold` fits one (location and scale from the
quartiles: robust to the few real events) to the ``dip_snr`` of the night's stable stars, and to
that of white noise at the night's sampling (`noise_snr`, a seeded simulation), and takes the
larger of the two quantiles at ``1 - false_alarm`` (1e-3): no fixed number, the night's own
stars (their red noise, their outliers) set it, and it never falls below what white noise alone
gives.

The kind of variability (`shape_statistics`, `guess_var_type`)
----------------------------------------------------------------
For each variable, three models against a constant, each scored by its chi-square gain less
``k ln n`` (the Bayesian information criterion, k its added parameters): a quadratic trend
(``trend``, k = 2), a sinusoid with its period from a grid between four points and twice the span
on a linear baseline (``pulsating``, k = 4) and the dip (k = 4 on a line: slope, depth, time,
duration; k = 3 on a constant).
The best one names ``var_type``; a dip is a ``transit`` when shallower than
``max_transit_depth`` (5%: a Jupiter in front of a 0.45 solar-radius star), else an ``eclipse``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr
from numpy.typing import ArrayLike, NDArray

from lcdask.lightcurves import BAD_FOR_FLUX, LightCurveFlag

__all__ = [
    "BASELINES",
    "DIP_COLUMNS",
    "VAR_TYPES",
    "BoxGrid",
    "DipThreshold",
    "box_grid",
    "dip_search",
    "dip_threshold",
    "guess_var_type",
    "gumbel_quantile",
    "noise_snr",
    "search_arrays",
    "shape_statistics",
]

VAR_TYPES = ("", "transit", "eclipse", "pulsating", "trend")
"""Values of ``var_type``: empty for sources that are not variable."""

DIP_COLUMNS = (
    "dip_snr",
    "dip_depth",
    "dip_depth_err",
    "dip_time_mjd",
    "dip_duration_h",
    "dip_n_in",
    "dip_partial",
    "sigma_point",
)
"""Columns `dip_search` adds to the sources table (besides ``source_id`` and ``n_dip_points``)."""

BASELINES = ("either", "linear", "constant")
"""The baselines a box is fitted on: a straight line in time, a constant, or the more significant
of the two (the default)."""

SKIP_FLAGS = int(LightCurveFlag.MISSING) | int(BAD_FOR_FLUX) | int(LightCurveFlag.NEAR_MOVER)
"""Points left out of the search."""

_HOUR = 1.0 / 24.0


# --------------------------------------------------------------------------------------------
# the boxes


@dataclass(frozen=True)
class BoxGrid:
    """The boxes searched, shared by every light curve of a night.

    Attributes
    ----------
    start, stop
        Per box: the first frame in it and one past the last (indices into the time-sorted
        frames).
    time_mid
        Per box: the middle of the box (time units of the input; may lie outside the night
        for a box hanging over its edge).
    duration
        Per box: its length (the event's, not only the part inside the night).
    """

    start: NDArray[np.int64]
    stop: NDArray[np.int64]
    time_mid: NDArray[np.float64]
    duration: NDArray[np.float64]

    @property
    def n_boxes(self) -> int:
        """How many boxes."""
        return int(self.start.size)


def box_grid(
    time: ArrayLike,
    *,
    min_duration: float,
    max_duration: float,
    duration_step: float = 1.25,
    oversample: int = 4,
) -> BoxGrid:
    """The boxes of a single-event search over sorted times (module docstring).

    Parameters
    ----------
    time
        Sorted frame times.
    min_duration, max_duration
        Shortest and longest box (same units as ``time``); when ``max_duration`` is below
        ``min_duration`` only ``min_duration`` is used.
    duration_step
        Ratio of consecutive durations (> 1).
    oversample
        Box starts per duration.

    Returns
    -------
    BoxGrid
        The distinct boxes (each a distinct run of frames, the first of each run kept).
    """
    t = np.asarray(time, dtype=float)
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)):
        raise ValueError("box_grid needs a 1-D array of finite times")
    if np.any(np.diff(t) < 0):
        raise ValueError("box_grid needs the times sorted")
    if duration_step <= 1.0 or oversample < 1 or not min_duration > 0:
        raise ValueError(
            "box_grid needs min_duration > 0, duration_step > 1 and oversample >= 1, got "
            f"{min_duration}, {duration_step}, {oversample}"
        )
    n_dur = max(1, int(np.floor(np.log(max_duration / min_duration) / np.log(duration_step))) + 1)
    durations = min_duration * duration_step ** np.arange(n_dur)
    starts, stops, mids, lengths = [], [], [], []
    for d in durations:
        step = d / oversample
        a = np.arange(t[0] - d + step, t[-1] + step, step)
        starts.append(np.searchsorted(t, a, side="left"))
        stops.append(np.searchsorted(t, a + d, side="left"))
        mids.append(a + 0.5 * d)
        lengths.append(np.full(a.size, d))
    start, stop = np.concatenate(starts), np.concatenate(stops)
    mid, length = np.concatenate(mids), np.concatenate(lengths)
    keep = stop > start
    key = start[keep] * (t.size + 1) + stop[keep]
    _, first = np.unique(key, return_index=True)
    pick = np.flatnonzero(keep)[np.sort(first)]
    return BoxGrid(
        start=start[pick].astype(np.int64),
        stop=stop[pick].astype(np.int64),
        time_mid=mid[pick],
        duration=length[pick],
    )


# --------------------------------------------------------------------------------------------
# the fit


def _point_to_point(values: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per row, 1.4826 MAD of the differences of consecutive finite values over sqrt(2)."""
    good = np.isfinite(values)
    order = np.argsort(~good, axis=1, kind="stable")  # finite values first, in time order
    packed = np.take_along_axis(values, order, axis=1)
    n_good = good.sum(axis=1)
    diff = np.diff(packed, axis=1)
    valid = np.arange(diff.shape[1])[None, :] < (n_good - 1)[:, None]
    diff = np.where(valid, diff, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(diff, axis=1, keepdims=True)
        return 1.4826 * np.nanmedian(np.abs(diff - med), axis=1) / np.sqrt(2.0)


def search_arrays(
    time: ArrayLike,
    flux: ArrayLike,
    flux_err: ArrayLike | None,
    grid: BoxGrid,
    *,
    baseline: str = "either",
    min_points_in: int = 3,
    scale_errors: bool = True,
    chunk: int = 1024,
) -> dict[str, NDArray]:
    """The best box of each light curve (rows of ``flux``) over ``grid``.

    Parameters
    ----------
    time
        Sorted frame times (n_frames,), the times ``grid`` was made on.
    flux, flux_err
        (n_sources, n_frames): normalised fluxes (NaN where not used) and their errors (None:
        equal errors).
    grid
        The boxes (`box_grid`).
    baseline
        One of `BASELINES`: ``"linear"`` (a straight line in time), ``"constant"``, or
        ``"either"`` (per source, the more significant of the two).
    min_points_in
        Fewest points in a box, and outside it.
    scale_errors
        Scale each source's errors so that the point-to-point scatter of its residuals from the
        baseline is 1 (else the errors are taken as they are).
    chunk
        Sources per block (memory: a few arrays of ``chunk x n_boxes``).

    Returns
    -------
    dict of numpy.ndarray
        Per source: ``snr``, ``depth``, ``depth_err``, ``box`` (index into the grid of the best
        box, -1 when no box has enough points), ``start``, ``stop`` (the frames of that box, its
        ends refined: 9 x 9 shifts within a quarter of its length, then a sixteenth), ``n_in``,
        ``n_points``, ``sigma_point`` (the white noise per
        point, in units of ``flux``: the median scaled error), ``error_scale``.
    """
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    t = np.asarray(time, dtype=float)
    y = np.atleast_2d(np.asarray(flux, dtype=float))
    e = np.ones_like(y) if flux_err is None else np.atleast_2d(np.asarray(flux_err, dtype=float))
    if y.shape[1] != t.size or e.shape != y.shape:
        raise ValueError(
            f"flux {y.shape} and flux_err {e.shape} must be (n_sources, {t.size} frames)"
        )
    out = {
        "snr": np.full(y.shape[0], np.nan),
        "depth": np.full(y.shape[0], np.nan),
        "depth_err": np.full(y.shape[0], np.nan),
        "box": np.full(y.shape[0], -1, dtype=np.int64),
        "start": np.full(y.shape[0], -1, dtype=np.int64),
        "stop": np.full(y.shape[0], -1, dtype=np.int64),
        "linear": np.zeros(y.shape[0], dtype=bool),
        "n_in": np.zeros(y.shape[0], dtype=np.int64),
        "n_points": np.zeros(y.shape[0], dtype=np.int64),
        "sigma_point": np.full(y.shape[0], np.nan),
        "error_scale": np.full(y.shape[0], np.nan),
    }
    tc = t - 0.5 * (t[0] + t[-1])  # centred: the baseline's normal matrix stays well conditioned
    for lo in range(0, y.shape[0], chunk):
        part = _search_block(tc, y[lo : lo + chunk], e[lo : lo + chunk], grid, baseline,
                             min_points_in, scale_errors)  # fmt: skip
        for key, values in part.items():
            out[key][lo : lo + chunk] = values
    return out


def _search_block(t, y, e, grid, baseline, min_points_in, scale_errors) -> dict[str, NDArray]:
    good = np.isfinite(y) & np.isfinite(e) & (e > 0)
    n = good.sum(axis=1)
    with np.errstate(all="ignore"):
        w = np.where(good, 1.0 / np.where(good, e, 1.0) ** 2, 0.0)
        yz = np.where(good, y, 0.0)
        scale = np.ones(y.shape[0])
        if scale_errors:  # the point-to-point scatter of the residuals from a line
            beta0, beta1, *_ = _baseline(t, w, yz, "linear")
            resid = yz - beta0[:, None] - beta1[:, None] * t[None, :]
            scale = _point_to_point(np.where(good, resid / np.where(good, e, 1.0), np.nan))
            scale = np.where(np.isfinite(scale) & (scale > 0), scale, np.nan)
        w = w / scale[:, None] ** 2
        best: dict[str, NDArray] | None = None
        for name in ("constant", "linear") if baseline == "either" else (baseline,):
            one = _best_box(t, w, yz, good, grid, name, min_points_in)
            if best is None:
                best = one
            else:  # the more significant of the two baselines
                take = one["snr"] > np.where(np.isfinite(best["snr"]), best["snr"], -np.inf)
                best = {key: np.where(take, one[key], best[key]) for key in best}
    with warnings.catch_warnings():  # sources without a used point: NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        med_err = np.nanmedian(np.where(good, e, np.nan), axis=1)
    found = np.isfinite(best["snr"])
    return {
        **{key: np.where(found, value, _MISSING[key]) for key, value in best.items()},
        "n_in": np.where(found, best["n_in"], 0).astype(np.int64),
        "n_points": n.astype(np.int64),
        "sigma_point": med_err * scale,
        "error_scale": scale,
    }


_MISSING = {"snr": np.nan, "depth": np.nan, "depth_err": np.nan, "box": -1, "start": -1,
            "stop": -1, "n_in": 0, "linear": False}  # fmt: skip


def _best_box(t, w, y, good, grid, baseline, min_points_in) -> dict[str, NDArray]:
    """The best box over the grid, its ends refined, for one baseline."""
    beta0, beta1, sw, swt, swtt = _baseline(t, w, y, baseline)
    resid = y - beta0[:, None] - beta1[:, None] * t[None, :]
    zero = np.zeros((y.shape[0], 1))
    sums = _BoxSums(
        w=np.concatenate([zero, np.cumsum(w, axis=1)], axis=1),
        wt=np.concatenate([zero, np.cumsum(w * t[None, :], axis=1)], axis=1),
        wr=np.concatenate([zero, np.cumsum(w * resid, axis=1)], axis=1),
        n=np.concatenate([zero, np.cumsum(good, axis=1)], axis=1),
        sw=sw,
        swt=swt,
        swtt=swtt,
        baseline=baseline,
        min_points_in=min_points_in,
    )
    snr, _, _, _ = sums.boxes(grid.start, grid.stop)
    box = np.argmax(snr, axis=1)
    rows = np.arange(y.shape[0])
    on_grid = np.isfinite(snr[rows, box])
    # refine the best box's ends: 9 x 9 shifts within a quarter of its length, then within a
    # sixteenth around the better one
    ii, jj = grid.start[box], grid.stop[box]
    for fraction in (0.25, 1.0 / 16.0):
        ii, jj, snr2, depth2, s2, bn2, k = _refine(sums, ii, jj, fraction, y.shape[1])
        ii, jj = ii[rows, k], jj[rows, k]
    best = snr2[rows, k]
    return {
        "snr": np.where(on_grid & np.isfinite(best), best, np.nan),
        "depth": depth2[rows, k],
        "depth_err": 1.0 / np.sqrt(s2[rows, k]),
        "box": box,
        "start": ii,
        "stop": jj,
        "n_in": bn2[rows, k],
        "linear": np.full(y.shape[0], baseline == "linear"),
    }


def _refine(sums, i0, j0, fraction, n_frames):
    """Every box with its ends shifted by up to ``fraction`` of its length (9 steps each)."""
    half = np.maximum(1.0, fraction * (j0 - i0))
    off = np.rint(np.linspace(-1.0, 1.0, 9)[None, :] * half[:, None]).astype(np.int64)
    ii = np.clip(i0[:, None, None] + off[:, :, None], 0, n_frames) + 0 * off[:, None, :]
    jj = np.clip(j0[:, None, None] + off[:, None, :], 0, n_frames) + 0 * off[:, :, None]
    ii, jj = ii.reshape(i0.size, -1), jj.reshape(i0.size, -1)
    snr, depth, s, bn = sums.boxes(ii, jj)
    return ii, jj, snr, depth, s, bn, np.argmax(snr, axis=1)


@dataclass(frozen=True)
class _BoxSums:
    """Cumulative sums over the frames (with a leading 0) and totals of a block of sources."""

    w: NDArray
    wt: NDArray
    wr: NDArray
    n: NDArray
    sw: NDArray
    swt: NDArray
    swtt: NDArray
    baseline: str
    min_points_in: int

    def _in(self, cum: NDArray, i: NDArray, j: NDArray) -> NDArray:
        if i.ndim == 1:  # the same boxes for every source
            return cum[:, j] - cum[:, i]
        return np.take_along_axis(cum, j, axis=1) - np.take_along_axis(cum, i, axis=1)

    def boxes(self, i: NDArray, j: NDArray) -> tuple[NDArray, NDArray, NDArray, NDArray]:
        """S/N (-inf where the box is not allowed), depth, 1 / variance, points in the box."""
        bw, bwr, bn = self._in(self.w, i, j), self._in(self.wr, i, j), self._in(self.n, i, j)
        sw = self.sw[:, None]
        if self.baseline == "linear":
            bwt = self._in(self.wt, i, j)
            swt, swtt = self.swt[:, None], self.swtt[:, None]
            proj = (swtt * bw**2 - 2 * swt * bw * bwt + sw * bwt**2) / (sw * swtt - swt**2)
        else:
            proj = bw**2 / sw
        s = bw - proj
        depth = -bwr / s
        snr = depth * np.sqrt(s)
        n = self.n[:, -1:]
        ok = (bn >= self.min_points_in) & ((n - bn) >= self.min_points_in) & (s > 0) & (j > i)
        ok &= np.isfinite(snr)
        return np.where(ok, snr, -np.inf), depth, s, bn


def _baseline(t, w, y, baseline):
    """Weighted straight-line (or constant) fit per row: (b0, b1, sum w, sum w t, sum w t^2)."""
    sw = w.sum(axis=1)
    swt = w @ t
    swtt = w @ (t * t)
    swy = (w * y).sum(axis=1)
    if baseline == "constant":
        return swy / sw, np.zeros_like(sw), sw, swt, swtt
    swty = (w * y) @ t
    det = sw * swtt - swt**2
    b1 = np.where(det > 0, (sw * swty - swt * swy) / np.where(det > 0, det, 1.0), 0.0)
    b0 = (swy - b1 * swt) / sw
    return b0, b1, sw, swt, swtt


def _prepare(ds: xr.Dataset, *, skip: NDArray[np.bool_] | None) -> tuple:
    """Sorted times (days), normalised fluxes (NaN where unused) and errors of a Dataset."""
    t = ds["time_mjd"].to_numpy().astype(float)
    order = np.argsort(t, kind="stable")
    rel = ds["rel_flux"].to_numpy().astype(float)
    err = ds["rel_flux_err"].to_numpy().astype(float)
    if not np.isfinite(rel).any():  # no ensemble: flux over its median (as classify does)
        rel = ds["flux"].to_numpy().astype(float)
        err = ds["flux_err"].to_numpy().astype(float)
    flags = ds["flags"].to_numpy()
    ok = np.isfinite(rel) & ((flags & SKIP_FLAGS) == 0) & np.isfinite(t)[None, :]
    if skip is not None:
        ok &= ~np.asarray(skip, dtype=bool)[:, None]
    rel = np.where(ok, rel, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(rel, axis=1, keepdims=True)
        y = rel / med
        e = np.where(ok, err, np.nan) / np.abs(med)
    return t[order], y[:, order], e[:, order]


def dip_search(
    ds: xr.Dataset,
    *,
    skip: ArrayLike | None = None,
    min_duration_h: float = 0.25,
    max_duration_frac: float = 0.5,
    duration_step: float = 1.25,
    oversample: int = 4,
    min_points_in: int = 3,
    min_points: int = 15,
    min_coverage: float = 0.5,
    baseline: str = "either",
) -> pd.DataFrame:
    """The most significant dip of every light curve (module docstring).

    Parameters
    ----------
    ds
        The light-curve Dataset: ``rel_flux``, ``rel_flux_err`` (else ``flux``, ``flux_err``),
        ``flags``, ``time_mjd`` on ``frame``, ``source_id``.
    skip
        Per source, True to leave it out (movers, artefacts): its row has NaN.
    min_duration_h, max_duration_frac, duration_step, oversample
        The boxes (`box_grid`): from ``min_duration_h`` hours to ``max_duration_frac`` of the
        span (never below ``min_duration_h``).
    min_points_in
        Fewest used points in a box, and outside it.
    min_points, min_coverage
        Sources with fewer used points, or used in a smaller fraction of the frames, are not
        searched (a faint star detected in 31 of 200 frames, when noise lifted it above the
        threshold, had a "dip" of 18% at S/N 8.9 that no stable star reached; forced
        photometry gives the target and the catalog's stars every frame).
    baseline
        One of `BASELINES` (`search_arrays`).

    Returns
    -------
    pandas.DataFrame
        Per source: ``source_id``, ``n_dip_points`` (points used), ``dip_snr`` (the
        significance: depth over its error; NaN when not searched), ``dip_depth`` (fractional),
        ``dip_depth_err``, ``dip_time_mjd`` (the box's middle: outside the night when only part
        of the event was seen), ``dip_duration_h``, ``dip_n_in`` (points in the box),
        ``dip_partial`` (the box hangs over the first or last frame), ``sigma_point`` (the white
        noise per point, fractional), ``dip_baseline`` (``"linear"`` or ``"constant"``: the
        baseline of the best box).
    """
    t, y, e = _prepare(ds, skip=None if skip is None else np.asarray(skip, dtype=bool))
    n_src = y.shape[0]
    n_used = np.isfinite(y).sum(axis=1)
    few = (n_used < max(min_points, 2 * min_points_in)) | (n_used < min_coverage * t.size)
    y = np.where(few[:, None], np.nan, y)
    table = pd.DataFrame({"source_id": ds["source_id"].to_numpy().astype(np.int64)})
    empty = {c: np.full(n_src, np.nan) for c in DIP_COLUMNS}
    empty["dip_n_in"] = np.zeros(n_src, dtype=np.int64)
    empty["dip_partial"] = np.zeros(n_src, dtype=bool)
    table["n_dip_points"] = np.isfinite(y).sum(axis=1).astype(np.int64)
    if t.size < 2 * min_points_in or not np.isfinite(y).any():
        return table.assign(**empty)
    grid = _grid_for(t, min_duration_h, max_duration_frac, duration_step, oversample)
    res = search_arrays(t, y, e, grid, baseline=baseline, min_points_in=min_points_in)
    box = res["box"]
    has = box >= 0
    b = np.where(has, box, 0)
    # the refined box's ends half-way between frames; an end cut by the night's first or last
    # frame stays where the grid's box put it, beyond the night
    edges = np.r_[t[0], 0.5 * (t[1:] + t[:-1]), t[-1]]
    lo = edges[np.clip(res["start"], 0, t.size)]
    hi = edges[np.clip(res["stop"], 0, t.size)]
    grid_lo = grid.time_mid[b] - 0.5 * grid.duration[b]
    grid_hi = grid.time_mid[b] + 0.5 * grid.duration[b]
    lo = np.where((res["start"] == 0) & (grid.start[b] == 0), np.minimum(lo, grid_lo), lo)
    hi = np.where((res["stop"] == t.size) & (grid.stop[b] == t.size), np.maximum(hi, grid_hi), hi)
    mid, dur = 0.5 * (lo + hi), hi - lo
    first = np.where(np.isfinite(y), t[None, :], np.inf).min(axis=1)
    last = np.where(np.isfinite(y), t[None, :], -np.inf).max(axis=1)
    partial = has & ((lo < first) | (hi > last))
    return table.assign(
        dip_snr=res["snr"],
        dip_depth=res["depth"],
        dip_depth_err=res["depth_err"],
        dip_time_mjd=np.where(has, mid, np.nan),
        dip_duration_h=np.where(has, dur / _HOUR, np.nan),
        dip_n_in=res["n_in"],
        dip_partial=partial,
        sigma_point=res["sigma_point"],
        dip_baseline=np.where(res["linear"], "linear", "constant"),
    )


def _grid_for(t, min_duration_h, max_duration_frac, duration_step, oversample) -> BoxGrid:
    span = float(t[-1] - t[0])
    d_min = min_duration_h * _HOUR
    return box_grid(
        t,
        min_duration=d_min,
        max_duration=max(max_duration_frac * span, d_min),
        duration_step=duration_step,
        oversample=oversample,
    )


# --------------------------------------------------------------------------------------------
# the threshold

# the reduced Gumbel variate -ln(-ln p) at p = 0.25, 0.5, 0.75
_GUMBEL_QUARTILES = (-np.log(-np.log(0.25)), -np.log(-np.log(0.5)), -np.log(-np.log(0.75)))


def gumbel_quantile(values: ArrayLike, q: float) -> tuple[float, float, float]:
    """The ``q`` quantile of a Gumbel law fitted to ``values`` by their quartiles.

    Parameters
    ----------
    values
        Samples (non-finite ones ignored).
    q
        Quantile, 0 < q < 1.

    Returns
    -------
    tuple of float
        (quantile, location, scale); NaN when fewer than 4 finite values.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 4:
        return np.nan, np.nan, np.nan
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    scale = (q75 - q25) / (_GUMBEL_QUARTILES[2] - _GUMBEL_QUARTILES[0])
    loc = q50 - scale * _GUMBEL_QUARTILES[1]
    return float(loc - scale * np.log(-np.log(q))), float(loc), float(scale)


def noise_snr(
    ds: xr.Dataset,
    *,
    n_curves: int = 400,
    seed: int = 0,
    **options,
) -> NDArray[np.float64]:
    """``dip_snr`` of white-noise light curves at the night's sampling.

    Parameters
    ----------
    ds
        The light-curve Dataset (only ``time_mjd`` is read).
    n_curves
        How many light curves.
    seed
        Random seed (the same threshold on every rerun).
    **options
        `dip_search`'s box options (``min_duration_h``, ``max_duration_frac``,
        ``duration_step``, ``oversample``, ``min_points_in``, ``baseline``).

    Returns
    -------
    numpy.ndarray
        The ``n_curves`` values.
    """
    t = np.sort(ds["time_mjd"].to_numpy().astype(float))
    rng = np.random.default_rng(seed)
    y = 1.0 + rng.normal(0.0, 1.0, (n_curves, t.size))
    min_points_in = options.pop("min_points_in", 3)
    baseline = options.pop("baseline", "either")
    if t.size < 2 * min_points_in:
        return np.full(n_curves, np.nan)
    defaults = {"min_duration_h": 0.25, "max_duration_frac": 0.5, "duration_step": 1.25,
                "oversample": 4}  # fmt: skip
    unknown = set(options) - set(defaults)
    if unknown:
        raise TypeError(f"noise_snr got unknown options {sorted(unknown)}")
    grid = _grid_for(t, **{**defaults, **options})
    return search_arrays(t, y, None, grid, baseline=baseline, min_points_in=min_points_in)["snr"]


@dataclass(frozen=True)
class DipThreshold:
    """The dip significance above which a light curve holds an event (`dip_threshold`).

    Attributes
    ----------
    threshold
        The larger of ``stable_threshold`` and ``noise_threshold``.
    stable_threshold, noise_threshold
        The Gumbel quantile at ``1 - false_alarm`` of the stable stars' ``dip_snr`` (NaN when
        fewer than ``min_stable``), and of white noise's.
    set_by
        ``"stable stars"`` or ``"white noise"``: which one is the threshold.
    n_stable
        Stable stars with a ``dip_snr``.
    false_alarm
        The designed fraction of noise-only light curves above the threshold.
    stable_fraction_above
        The fraction of the stable stars at or above the threshold (those the search makes
        variable).
    gumbel_loc, gumbel_scale
        The Gumbel law fitted to the stable stars' ``dip_snr`` (NaN when too few).
    """

    threshold: float
    stable_threshold: float
    noise_threshold: float
    set_by: str
    n_stable: int
    false_alarm: float
    stable_fraction_above: float
    gumbel_loc: float
    gumbel_scale: float

    def as_record(self) -> dict:
        """For run.json."""
        return {
            "threshold": round(self.threshold, 3),
            "set_by": self.set_by,
            "false_alarm": self.false_alarm,
            "stable_threshold": _round(self.stable_threshold),
            "noise_threshold": _round(self.noise_threshold),
            "n_stable": self.n_stable,
            "stable_fraction_above": _round(self.stable_fraction_above, 4),
            "stable_gumbel": {"loc": _round(self.gumbel_loc), "scale": _round(self.gumbel_scale)},
        }


def _round(value: float, digits: int = 3) -> float | None:
    return round(float(value), digits) if np.isfinite(value) else None


def dip_threshold(
    stable_snr: ArrayLike,
    noise: ArrayLike,
    *,
    false_alarm: float = 1e-3,
    min_stable: int = 20,
) -> DipThreshold:
    """The false-alarm threshold on ``dip_snr``, set on the night's stable stars (module docstring).

    Parameters
    ----------
    stable_snr
        ``dip_snr`` of the sources the scatter test calls stable.
    noise
        ``dip_snr`` of white noise at the night's sampling (`noise_snr`).
    false_alarm
        Designed fraction of noise-only light curves above the threshold.
    min_stable
        Fewer stable stars than this say nothing (the white-noise threshold alone is used).

    Returns
    -------
    DipThreshold
    """
    if not 0.0 < false_alarm < 1.0:
        raise ValueError(f"false_alarm must be within (0, 1), got {false_alarm}")
    snr = np.asarray(stable_snr, dtype=float)
    snr = snr[np.isfinite(snr)]
    q = 1.0 - false_alarm
    noise_t, _, _ = gumbel_quantile(noise, q)
    stable_t, loc, scale = (np.nan, np.nan, np.nan)
    if snr.size >= min_stable:
        stable_t, loc, scale = gumbel_quantile(snr, q)
    candidates = [v for v in (stable_t, noise_t) if np.isfinite(v)]
    threshold = max(candidates) if candidates else np.inf
    set_by = "stable stars" if np.isfinite(stable_t) and stable_t >= threshold else "white noise"
    above = float((snr >= threshold).mean()) if snr.size else np.nan
    return DipThreshold(
        threshold=float(threshold),
        stable_threshold=float(stable_t),
        noise_threshold=float(noise_t),
        set_by=set_by,
        n_stable=int(snr.size),
        false_alarm=float(false_alarm),
        stable_fraction_above=above,
        gumbel_loc=float(loc),
        gumbel_scale=float(scale),
    )


# --------------------------------------------------------------------------------------------
# the kind of variability


def shape_statistics(
    ds: xr.Dataset,
    *,
    rows: ArrayLike | None = None,
    n_periods: int = 200,
) -> pd.DataFrame:
    """Chi-square gains of a trend and of a sinusoid over a constant (module docstring).

    Parameters
    ----------
    ds
        The light-curve Dataset (as for `dip_search`).
    rows
        Per source, True to compute (default all); the others get NaN.
    n_periods
        Periods of the sinusoid's grid (geometric, four median cadences to twice the span).

    Returns
    -------
    pandas.DataFrame
        Per source: ``source_id``, ``n_dip_points``, ``chi2_linear`` (a straight line's gain),
        ``chi2_trend`` (a quadratic's), ``chi2_sine`` (the best sinusoid on a line),
        ``sine_period_h``; chi-squares with the errors scaled to the point-to-point scatter of
        the residuals from the line.
    """
    t, y, e = _prepare(ds, skip=None)
    use = np.ones(y.shape[0], dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    n_points = np.isfinite(y).sum(axis=1)
    out = pd.DataFrame(
        {"source_id": ds["source_id"].to_numpy().astype(np.int64), "n_dip_points": n_points}
    )
    for c in ("chi2_linear", "chi2_trend", "chi2_sine", "sine_period_h"):
        out[c] = np.nan
    idx = np.flatnonzero(use & (n_points >= 8))
    if idx.size == 0 or t.size < 8:
        return out
    span = float(t[-1] - t[0])
    tc = (t - 0.5 * (t[0] + t[-1])) / max(span, 1e-9)  # in spans, centred
    good = np.isfinite(y[idx]) & np.isfinite(e[idx]) & (e[idx] > 0)
    with np.errstate(all="ignore"):
        w = np.where(good, 1.0 / np.where(good, e[idx], 1.0) ** 2, 0.0)
        yy = np.where(good, y[idx], 0.0)
        b0, b1, *_ = _baseline(tc, w, yy, "linear")
        resid = np.where(good, (yy - b0[:, None] - b1[:, None] * tc) * np.sqrt(w), np.nan)
        w = w / _point_to_point(resid)[:, None] ** 2
    ones = np.ones_like(tc)
    chi0 = _chi2_stack(w, yy, ones[None, :])
    out.loc[idx, "chi2_linear"] = chi0 - _chi2_stack(w, yy, np.vstack([ones, tc]))
    out.loc[idx, "chi2_trend"] = chi0 - _chi2_stack(w, yy, np.vstack([ones, tc, tc * tc]))
    cadence = float(np.median(np.diff(t)))
    periods = np.geomspace(max(4 * cadence, 1e-6), 2 * span, n_periods)
    phase = 2 * np.pi * tc[None, :] * span / periods[:, None]  # (period, frame)
    design = np.stack(
        [np.broadcast_to(ones, phase.shape), np.broadcast_to(tc, phase.shape),
         np.sin(phase), np.cos(phase)], axis=1,
    )  # fmt: skip
    chis = np.stack([_chi2_stack(w, yy, d) for d in design], axis=1)  # (source, period)
    best = np.argmin(np.where(np.isfinite(chis), chis, np.inf), axis=1)
    out.loc[idx, "chi2_sine"] = chi0 - chis[np.arange(idx.size), best]
    out.loc[idx, "sine_period_h"] = periods[best] / _HOUR
    return out


def _chi2_stack(w: NDArray, y: NDArray, design: NDArray) -> NDArray[np.float64]:
    """Weighted least-squares chi-square of each row of ``y`` on the rows of ``design``."""
    with np.errstate(all="ignore"):
        normal = np.einsum("sn,in,jn->sij", w, design, design)
        rhs = np.einsum("sn,sn,in->si", w, y, design)
        coef = np.einsum("sij,sj->si", np.linalg.pinv(normal), rhs)
        return (w * y * y).sum(axis=1) - (coef * rhs).sum(axis=1)


def guess_var_type(
    dips: pd.DataFrame,
    shapes: pd.DataFrame,
    variable: ArrayLike,
    *,
    max_transit_depth: float = 0.05,
) -> NDArray[np.str_]:
    """``var_type`` of each variable: transit, eclipse, pulsating or trend (module docstring).

    Parameters
    ----------
    dips, shapes
        `dip_search` and `shape_statistics` of the same sources, in the same order.
    variable
        Per source, True for the variables (the others get "").
    max_transit_depth
        Deeper dips are eclipses.

    Returns
    -------
    numpy.ndarray of str
        One of `VAR_TYPES` per source.
    """
    n = np.maximum(shapes["n_dip_points"].to_numpy(float), 2.0)
    ln_n = np.log(n)
    chi_lin = np.nan_to_num(shapes["chi2_linear"].to_numpy(float))
    snr = np.nan_to_num(dips["dip_snr"].to_numpy(float))
    linear = (dips["dip_baseline"] == "linear").to_numpy() if "dip_baseline" in dips else True
    # the dip's gain over a constant: its own on a line (plus the line's), or on a constant
    dip = np.where(linear, chi_lin + snr**2 - 4 * ln_n, snr**2 - 3 * ln_n)
    scores = np.vstack(
        [
            np.nan_to_num(shapes["chi2_trend"].to_numpy(float), nan=-np.inf) - 2 * ln_n,
            np.nan_to_num(shapes["chi2_sine"].to_numpy(float), nan=-np.inf) - 4 * ln_n,
            np.where(snr > 0, dip, -np.inf),
        ]
    )
    best = np.argmax(scores, axis=0)
    depth = dips["dip_depth"].to_numpy(float)
    dip_kind = np.where(depth >= max_transit_depth, "eclipse", "transit")
    kind = np.where(best == 0, "trend", np.where(best == 1, "pulsating", dip_kind))
    return np.where(np.asarray(variable, dtype=bool), kind, "").astype(str)
