"""Classify sources: moving, variable, stable or artefact; link fast movers; find the target.

Moving sources (`motion_statistics`, `classify_sources`)
-------------------------------------------------------
For each source, its positions are projected on the tangent plane at its median position.
Only the detections without a `~lcdask.lightcurves.BAD_FOR_POSITION` flag are used from here on
(``n_position_points`` of them): near the frame edge, in a blend or under a cosmic ray the
centroid is pulled, and as the field drifts across the detector the pull changes, which
looks like motion (on a simulated 200-frame night, two stars and one spurious source that touch
the edge were classed moving before).
``motion_mad_arcsec = 1.4826 * hypot(MAD(xi), MAD(eta))`` is compared with the same statistic
expected at the source's magnitude (a running median over all sources, see `expected_trend`);
sources above ``motion_mad_ratio`` (2) times that are candidates. Their RA and Dec are then
regressed on time (least squares, one 4-sigma clipping pass): the rates ``rate_ra_arcsec_h``
(along RA cos Dec) and ``rate_dec_arcsec_h``, the position angle of the motion ``pa_deg`` (east of
north), the residual rms ``motion_rms_arcsec``, and the rate's significance. A candidate is
``moving`` when the rate is significant (``rate_snr >= 5``) and the displacement over its
detections reaches ``min_motion_arcsec`` (1"): a blend or a bimodal cluster has a large MAD but
no linear motion; and when it is detected in at least half of the frames between its first and
last detection (`detection_coverage`): a few sporadic detections of a faint star, their centroids
pulled by noise and bad pixels, can line up. Pieces of one mover that the matching cut apart
(a wider step between frames, a bad column) are joined first (`join_moving_pieces`). Tracks
from `link_tracks` go through the same test.

Movers too fast to make a dense cloud are left unassigned by the matching; `link_tracks` links
the unassigned detections into straight tracks in (time, RA, Dec): seed lines from pairs of
detections a few frames apart (speed at most ``max_rate_arcsec_h``), ranked by the number of
detections they pass within ``tolerance_arcsec``, each refined by RANSAC (position against
time, Euclidean residuals; scikit-learn's `~sklearn.linear_model.RANSACRegressor`, step for
step, in `_ransac_track`) and accepted
when it holds ``min_points`` detections (one per frame) and moves more than
``min_motion_arcsec``. Each track becomes a new source.

Variable sources
----------------
``mad_scatter`` is the robust fractional scatter (1.4826 MAD) of ``rel_flux``; ``noise_model``
the median fractional error from ``rel_flux_err``; ``expected_scatter = k(mag) * noise_model``
where ``k(mag)`` is the running median of ``mad_scatter / noise_model`` over the non-moving
sources (`expected_trend`: the real scatter at that brightness, which includes what the error
model misses), refitted without the sources found variable until the choice settles (so that
a field rich in variables does not raise its own threshold).
``scatter_ratio = mad_scatter / expected_scatter``. Because the MAD ignores a dip that lasts
less than half the night (transits, eclipses), the light curve is also averaged in ``n_bins``
bins of consecutive frames: ``binned_ratio`` is the rms of the binned values over the rms
expected from ``expected_scatter`` (``/ sqrt(points per bin)``). A source is ``variable`` when
``scatter_ratio >= max(variable_ratio, 1 + 5 x 1.17 / sqrt(n_points))`` (1.6: the MAD
scatter of a pure-noise light curve of 100 points is within +-12% (1 sigma) of its
expectation, so 1.6 is 5 sigma, and the second term keeps 5 sigma for fewer points; a sinusoid of
semi-amplitude 3 sigma gives ~2.3) or ``binned_ratio >= binned_ratio_threshold`` (3.5: 20 bins
of pure noise exceed 3 with a probability below 1e-3).

Only points without a `~lcdask.lightcurves.BAD_FOR_FLUX` flag enter these statistics: saturated,
at the frame edge, blended, on bad or repaired pixels, under a cosmic ray. Such points are few and
depend on where the star falls on the detector as the field drifts, so they make dips and steps
that the binned ratio sees (on a simulated 200-frame night, 15 of 276 stable stars were classed
variable because of them: 8 at the edge, 4 crossing repaired bad pixels and columns, 2 blends, 1
passed by a mover). A source flagged in every frame has no usable point and is never called
variable. The points where a moving source passes within ``mover_radius_fwhm`` (3) FWHM of a
fixed one are left out too (`near_movers`, each mover placed on its fitted line in every frame):
closer than the deblending limit the two are one unflagged detection, and a Moffat wing at 3
FWHM still puts ~0.5% of the mover's light in the 1.5 FWHM aperture. The thresholds above are
those of pure noise and were left as they are: on image runs the false variables came from such
points, not from the tails of the noise.

Detector artefacts (`find_artefacts`)
-------------------------------------
Without darks nothing maps the hot pixels; on a drifting night each one stands still on the
detector while the stars move, so on the sky it traces the drift: a "mover" at the drift rate,
or a "variable". Before the matching, a detection is an artefact when, in several other frames,
a detection sits within 1 px of its *pixel* position but more than 3 px away on the *sky* (the
field moved and it did not); or, when the field does not drift, when it recurs at its pixel in
most frames and is much sharper than the stars (`lcdask.astrometry.sharper_than_stars`).
Artefact detections are kept out of the matching and the track linking, grouped by pixel
position into sources of ``kind = "artefact"`` (``is_artefact``; detection bit
`lcdask.flags.ARTEFACT`): never moving, never variable, never comparison stars.

Target
------
`parse_target` reads "RA Dec" in degrees or sexagesimal; `match_target` takes the nearest source
within ``radius_arcsec``.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr
from numpy.typing import ArrayLike, NDArray
from scipy import linalg

from lcdask._utils.robust import dynamic_max_trials, r2_score, sample_without_replacement
from lcdask.astrometry import sharper_than_stars
from lcdask.flags import ARTEFACT
from lcdask.lightcurves import BAD_FOR_FLUX, BAD_FOR_POSITION, LightCurveFlag, robust_std
from lcdask.match import dbscan_grid, field_centre, resolve_duplicates, tangent_plane
from lcdask.search import dip_search, dip_threshold, guess_var_type, noise_snr, shape_statistics

__all__ = [
    "SOURCE_COLUMNS",
    "ArtefactResult",
    "TrackResult",
    "classify_sources",
    "detection_coverage",
    "expected_trend",
    "find_artefacts",
    "flag_near_movers",
    "join_moving_pieces",
    "link_tracks",
    "match_target",
    "motion_statistics",
    "near_movers",
    "parse_target",
    "variability_statistics",
]

SOURCE_COLUMNS = (
    "source_id",
    "ra",
    "dec",
    "epoch_mjd",
    "n_frames",
    "mag",
    "kind",
    "rate_ra_arcsec_h",
    "rate_dec_arcsec_h",
    "pa_deg",
    "motion_rms_arcsec",
    "motion_mad_arcsec",
    "motion_mad_ratio",
    "rate_snr",
    "mad_scatter",
    "noise_model",
    "expected_scatter",
    "scatter_ratio",
    "binned_ratio",
    "is_target",
    "is_comparison",
    "is_artefact",
    "var_type",
    "dip_snr",
    "dip_depth",
    "dip_depth_err",
    "dip_time_mjd",
    "dip_duration_h",
    "dip_n_in",
    "dip_partial",
)
"""Columns of ``sources.parquet``, in order."""


# --------------------------------------------------------------------------------------------
# trends over magnitude


def expected_trend(
    mag: ArrayLike,
    value: ArrayLike,
    *,
    at: ArrayLike | None = None,
    n_bins: int = 12,
    min_per_bin: int = 8,
) -> NDArray[np.float64]:
    """Running median of ``value`` against ``mag``, evaluated at each ``mag`` (or at ``at``).

    Sources are sorted by magnitude into ``n_bins`` bins of equal counts (at least
    ``min_per_bin`` each); the bin medians are interpolated linearly in magnitude (constant
    beyond the end bins).

    Parameters
    ----------
    mag, value
        Per source; non-finite entries are ignored in the fit.
    at
        Magnitudes at which to evaluate the trend (default ``mag``); NaN gives NaN.
    n_bins, min_per_bin
        Number of bins, and fewest sources per bin (fewer bins when there are few sources).

    Returns
    -------
    numpy.ndarray
        The trend at each magnitude.
    """
    m = np.asarray(mag, dtype=float)
    v = np.asarray(value, dtype=float)
    ok = np.isfinite(m) & np.isfinite(v)
    where = m if at is None else np.asarray(at, dtype=float)
    out = np.full(where.shape, np.nan)
    if ok.sum() == 0:
        return out
    order = np.argsort(m[ok])
    ms, vs = m[ok][order], v[ok][order]
    k = int(max(1, min(n_bins, ms.size // max(min_per_bin, 1))))
    edges = np.linspace(0, ms.size, k + 1).astype(int)
    bm = np.array([np.median(ms[a:b]) for a, b in itertools.pairwise(edges)])
    bv = np.array([np.median(vs[a:b]) for a, b in itertools.pairwise(edges)])
    fin = np.isfinite(where)
    out[fin] = np.interp(where[fin], bm, bv)
    return out


# --------------------------------------------------------------------------------------------
# motion


def motion_statistics(ds: xr.Dataset, *, clip: float = 4.0) -> pd.DataFrame:
    """Positional scatter and linear motion of every source of a light-curve Dataset.

    Parameters
    ----------
    ds
        The light-curve Dataset (``ra``, ``dec``, ``time_mjd``, ``flags``); forced entries are
        ignored, and so are flagged ones (`lcdask.lightcurves.BAD_FOR_POSITION`: blends, the
        frame edge, cosmic rays) except for the median position.
    clip
        Residuals beyond ``clip`` times their rms are dropped once before the final fit.

    Returns
    -------
    pandas.DataFrame
        Per source: ``source_id``, ``ra``, ``dec`` (median of all detections), ``n_frames``
        (detections), ``n_position_points`` (detections without a `BAD_FOR_POSITION` flag: the
        ones every following statistic uses), ``epoch_mjd`` (mean time of all the
        detections), ``ra_fit``, ``dec_fit`` (line at ``epoch_mjd``),
        ``motion_mad_arcsec``, ``rate_ra_arcsec_h``, ``rate_dec_arcsec_h``, ``rate_err_arcsec_h``,
        ``rate_snr``, ``pa_deg``, ``motion_rms_arcsec``, ``displacement_arcsec`` (rate times the
        time span of the detections).
    """
    ra = ds["ra"].to_numpy()
    dec = ds["dec"].to_numpy()
    flags = ds["flags"].to_numpy()
    detected = (flags & (int(LightCurveFlag.MISSING) | int(LightCurveFlag.FORCED))) == 0
    found = np.isfinite(ra) & np.isfinite(dec) & detected
    ok = found & ((flags & int(BAD_FOR_POSITION)) == 0)  # the points the motion is fitted on
    n = found.sum(axis=1)
    t_h = (ds["time_mjd"].to_numpy().astype(float) - float(ds["time_mjd"].min())) * 24.0
    with np.errstate(all="ignore"):
        ra_med = np.nanmedian(np.where(found, ra, np.nan), axis=1)
        dec_med = np.nanmedian(np.where(found, dec, np.nan), axis=1)
        t_found = np.nanmean(np.where(found, t_h[None, :], np.nan), axis=1)
    has = np.isfinite(ra_med)
    # per-source tangent plane at its median position (small offsets: a local cos(dec))
    cosd = np.cos(np.deg2rad(np.where(has, dec_med, 0.0)))
    d_ra = np.mod(ra - np.where(has, ra_med, 0.0)[:, None] + 180.0, 360.0) - 180.0
    xi = np.where(ok, d_ra * cosd[:, None] * 3600.0, np.nan)
    eta = np.where(ok, (dec - np.where(has, dec_med, 0.0)[:, None]) * 3600.0, np.nan)
    with np.errstate(all="ignore"):
        mad = np.hypot(robust_std(xi, axis=1), robust_std(eta, axis=1))
    tt = np.where(ok, t_h[None, :], np.nan)
    use = ok.copy()
    for _ in range(2):
        with np.errstate(all="ignore"):
            w = use.astype(float)
            nw = w.sum(axis=1)
            t_mean = np.nansum(np.where(use, tt, 0.0), axis=1) / nw
            dt = np.where(use, tt - t_mean[:, None], 0.0)
            stt = (dt * dt).sum(axis=1)
            coef = {}
            for name, v in (("xi", xi), ("eta", eta)):
                vm = np.nansum(np.where(use, v, 0.0), axis=1) / nw
                slope = (dt * np.where(use, v - vm[:, None], 0.0)).sum(axis=1) / stt
                coef[name] = (vm, slope)
            res_xi = xi - (coef["xi"][0][:, None] + coef["xi"][1][:, None] * (tt - t_mean[:, None]))
            res_eta = eta - (
                coef["eta"][0][:, None] + coef["eta"][1][:, None] * (tt - t_mean[:, None])
            )
            r2 = res_xi**2 + res_eta**2
            rms = np.sqrt(np.nansum(np.where(use, r2, 0.0), axis=1) / np.maximum(nw - 2, 1))
        use = ok & (r2 <= (clip * rms[:, None]) ** 2)
    with np.errstate(all="ignore"):
        rate_ra, rate_dec = coef["xi"][1], coef["eta"][1]
        rate = np.hypot(rate_ra, rate_dec)
        # per-axis residual sigma is rms / sqrt(2); error of the rate modulus
        rate_err = rms / np.sqrt(2.0) / np.sqrt(stt)
        span = np.where(use, tt, -np.inf).max(axis=1) - np.where(use, tt, np.inf).min(axis=1)
        span = np.where(use.any(axis=1), span, np.nan)  # no usable point: no span
        pa = np.mod(np.rad2deg(np.arctan2(rate_ra, rate_dec)), 360.0)
        # two points lie exactly on their line: no error, no significance (their rms is
        # rounding noise, which made rate_snr 1e16 one run and 2e16 the next)
        rate_err = np.where(nw >= 3, rate_err, np.nan)
        rate_snr = rate / rate_err
    # the line at the mean time of all the detections (the epoch does not move with the flags)
    shift = np.where(np.isfinite(t_mean), t_found - t_mean, 0.0)
    ra_fit = ra_med + (coef["xi"][0] + coef["xi"][1] * shift) / 3600.0 / cosd
    dec_fit = dec_med + (coef["eta"][0] + coef["eta"][1] * shift) / 3600.0
    t0 = float(ds["time_mjd"].min())
    return pd.DataFrame(
        {
            "source_id": ds["source_id"].to_numpy().astype(np.int64),
            "ra": ra_med,
            "dec": dec_med,
            "n_frames": n.astype(np.int64),
            "n_position_points": ok.sum(axis=1).astype(np.int64),
            "epoch_mjd": t0 + t_found / 24.0,
            "ra_fit": ra_fit,
            "dec_fit": dec_fit,
            "motion_mad_arcsec": mad,
            "rate_ra_arcsec_h": rate_ra,
            "rate_dec_arcsec_h": rate_dec,
            "rate_err_arcsec_h": rate_err,
            "rate_snr": rate_snr,
            "pa_deg": pa,
            "motion_rms_arcsec": rms,
            "displacement_arcsec": rate * span,
        }
    )


@dataclass(frozen=True)
class TrackResult:
    """The outcome of `link_tracks`.

    Attributes
    ----------
    source_id
        Per detection: the input ids, with the linked detections given their track's new id.
    tracks
        One row per track: ``source_id``, ``n_points``, ``rate_ra_arcsec_h``,
        ``rate_dec_arcsec_h``, ``rms_arcsec``, ``t_start_mjd``, ``t_end_mjd``.
    """

    source_id: NDArray[np.int64]
    tracks: pd.DataFrame


def _line_fit(t: NDArray[np.float64], xy: NDArray[np.float64]) -> tuple[NDArray, NDArray]:
    """``LinearRegression().fit(t[:, None], xy)`` as scikit-learn computes it: rate, intercept.

    The data centred on their means, then ``scipy.linalg.lstsq`` with ``cond=1e-6`` (its
    ``tol``): the same floating-point operations, so the same values to the last bit.
    """
    t_mean, xy_mean = np.mean(t[:, None], axis=0), np.mean(xy, axis=0)
    rate = linalg.lstsq(t[:, None] - t_mean, xy - xy_mean, cond=1e-6)[0].T  # (2, 1)
    return rate, xy_mean - t_mean @ rate.T


def _line_at(t: NDArray[np.float64], line: tuple[NDArray, NDArray]) -> NDArray[np.float64]:
    """A `_line_fit` line's positions at times ``t`` (scikit-learn's ``predict``)."""
    rate, intercept = line
    return t[:, None] @ rate.T + intercept


def _ransac_track(
    t: NDArray[np.float64],
    xy: NDArray[np.float64],
    *,
    residual_threshold: float,
    max_trials: int,
    random_state: int,
) -> tuple[NDArray[np.bool_], tuple[NDArray, NDArray]] | None:
    """Inliers of a straight track ``xy(t)`` and the line fitted to them, by RANSAC.

    What ``RANSACRegressor(LinearRegression(), min_samples=2, loss=<Euclidean distance>,
    residual_threshold=..., max_trials=..., random_state=...)`` finds, step for step: the same
    random pairs (`lcdask._utils.robust.sample_without_replacement`), line fits (`_line_fit`),
    R^2 tie-breaks and stopping rule (as `lcdask.photcal` does), and the final fit
    on the inliers; without importing scikit-learn (~2 s in the run's process).

    Returns
    -------
    tuple or None
        ``(inlier mask, line)``; None where scikit-learn raises (no consensus set).
    """
    n_samples = t.size
    if n_samples < 2:
        return None
    rng = np.random.RandomState(random_state)
    n_best, score_best, best = 1, -np.inf, None
    n_trials, limit = 0, max_trials
    while n_trials < limit:
        n_trials += 1
        subset = sample_without_replacement(rng, n_samples, 2)
        line = _line_fit(t[subset], xy[subset])
        predicted = _line_at(t, line)
        inliers = np.sqrt(((xy - predicted) ** 2).sum(axis=1)) <= residual_threshold
        n_inliers = int(np.sum(inliers))
        if n_inliers < n_best:
            continue
        score = r2_score(xy[inliers], predicted[inliers])
        if n_inliers == n_best and score < score_best:
            continue
        n_best, score_best, best = n_inliers, score, inliers
        limit = min(limit, dynamic_max_trials(n_inliers, n_samples, 2, 0.99))
    if best is None:
        return None
    return best, _line_fit(t[best], xy[best])


def join_moving_pieces(
    detections: pd.DataFrame,
    source_id: ArrayLike,
    *,
    centre: tuple[float, float] | None = None,
    min_rate_snr: float = 5.0,
    min_motion_arcsec: float = 1.0,
    tolerance_arcsec: float = 1.0,
    min_fraction: float = 0.8,
    max_moving: int = 1000,
) -> NDArray[np.int64]:
    """Join the pieces of one moving source that the matching cut apart.

    A slow mover makes a chain of detections that DBSCAN links only while consecutive ones lie
    within ``eps``: a wider step (a longer gap between frames, a frame where its centroid is
    pulled by a bad column or a passing star) cuts the chain, and each piece becomes a source
    (a simulated small-telescope night, 4.9"/px: a mover at 3.2"/h cut in two at the
    re-pointing, both halves classed moving; another cut where it crossed a dead column).

    Every source with at least 3 detections is fitted by a straight line in time (least
    squares on the tangent plane); it is a moving piece when its rate is significant (``rate /
    error >= min_rate_snr``) and its displacement exceeds ``min_motion_arcsec`` and 3 times its
    residual rms. From the piece with most detections down, another source is joined to it
    when at least ``min_fraction`` of its detections lie within the piece's tolerance of the
    piece's line at their times and none shares a frame with the piece; an unassigned detection
    (-1) is joined when it is the nearest within the tolerance in a frame the piece lacks. The
    tolerance is ``max(tolerance_arcsec, 3 * rms)`` plus 3 times the line's position error at
    that time (the extrapolation). The line is refitted after each join.

    Parameters
    ----------
    detections
        ``frame``, ``time_mjd``, ``ra``, ``dec`` per detection.
    source_id
        Per detection, from the matching (-1: unassigned).
    centre
        Tangent point (degrees); default the centre of the detections.
    min_rate_snr, min_motion_arcsec
        What makes a piece moving (as `classify_sources`' moving rule).
    tolerance_arcsec
        Smallest distance from the line accepted.
    min_fraction
        Fraction of a source's detections that must lie on the line for it to be joined.
    max_moving
        At most this many moving pieces are tried (the ones with most detections).

    Returns
    -------
    numpy.ndarray
        The source ids with each joined source (and detection) given its piece's id.
    """
    from scipy.spatial import cKDTree

    sid = np.asarray(source_id, dtype=np.int64).copy()
    ra = detections["ra"].to_numpy(float)
    dec = detections["dec"].to_numpy(float)
    ok = np.isfinite(ra) & np.isfinite(dec)
    if ok.sum() < 6:
        return sid
    if centre is None:
        centre = field_centre(ra[ok], dec[ok])
    xi = np.full(ra.size, np.nan)
    eta = np.full(ra.size, np.nan)
    xi[ok], eta[ok] = tangent_plane(ra[ok], dec[ok], *centre)
    t_mjd = detections["time_mjd"].to_numpy(float)
    t = (t_mjd - np.nanmin(t_mjd[ok])) * 24.0
    frame = detections["frame"].to_numpy(np.int64)

    def fit(idx: NDArray[np.int64]) -> tuple[float, NDArray, NDArray, float, float, float]:
        """Line of a set of detections: t_mean, position at t_mean, rate, rms, stt, span."""
        tt = t[idx]
        t_mean = float(tt.mean())
        dt = tt - t_mean
        stt = float((dt * dt).sum())
        pos = np.array([xi[idx].mean(), eta[idx].mean()])
        rate = (
            np.array([(dt * (xi[idx] - pos[0])).sum(), (dt * (eta[idx] - pos[1])).sum()]) / stt
            if stt > 0
            else np.zeros(2)
        )
        res = np.column_stack([xi[idx], eta[idx]]) - (pos + dt[:, None] * rate)
        rms = float(np.sqrt((res**2).sum() / max(idx.size - 2, 1)))
        return t_mean, pos, rate, rms, stt, float(tt.max() - tt.min())

    def moving(idx: NDArray[np.int64]) -> bool:
        if idx.size < 3:
            return False
        _, _, rate, rms, stt, span = fit(idx)
        if stt <= 0:
            return False
        speed = float(np.hypot(*rate))
        err = max(rms, 1e-3) / np.sqrt(2.0) / np.sqrt(stt)
        shift = speed * span
        return speed >= min_rate_snr * err and shift >= max(min_motion_arcsec, 3.0 * rms)

    valid = ok & (sid >= 0)
    members = pd.Series(np.flatnonzero(valid)).groupby(sid[valid]).indices
    members = {k: np.flatnonzero(valid)[v] for k, v in members.items()}
    pieces = sorted((k for k, v in members.items() if moving(v)), key=lambda k: -members[k].size)
    pieces = pieces[:max_moving]
    if not pieces:
        return sid
    tree = cKDTree(np.column_stack([xi[ok], eta[ok]]))
    ok_idx = np.flatnonzero(ok)
    times = np.unique(t[ok])
    joined: set[int] = set()
    for piece in pieces:
        if piece in joined:
            continue
        changed = True
        while changed:
            changed = False
            idx = members[piece]
            t_mean, pos, rate, rms, stt, _ = fit(idx)
            sigma = max(rms, 1e-3) / np.sqrt(2.0)
            own = set(frame[idx].tolist())
            # the line at every time; detections within the tolerance of it
            dt = times - t_mean
            pred = pos + dt[:, None] * rate
            tol = max(tolerance_arcsec, 3.0 * rms) + 3.0 * sigma * np.sqrt(
                1.0 / idx.size + dt**2 / stt
            )
            hits = tree.query_ball_point(pred, tol)
            near = np.zeros(ra.size, dtype=bool)
            for k, h in enumerate(hits):
                if h:
                    cand = ok_idx[np.asarray(h, dtype=np.int64)]
                    near[cand[t[cand] == times[k]]] = True
            for other in np.unique(sid[near]):
                if other < 0 or other == piece or other in joined:
                    continue
                mem = members[other]
                if own & set(frame[mem].tolist()):
                    continue
                if near[mem].mean() >= min_fraction:
                    sid[mem] = piece
                    members[piece] = np.concatenate([members[piece], mem])
                    own |= set(frame[mem].tolist())
                    joined.add(int(other))
                    changed = True
            # unassigned detections in the piece's missing frames: the nearest to the line
            loose = np.flatnonzero(near & (sid < 0) & ~np.isin(frame, list(own)))
            if loose.size:
                dt_l = t[loose] - t_mean
                d = np.hypot(
                    xi[loose] - (pos[0] + dt_l * rate[0]), eta[loose] - (pos[1] + dt_l * rate[1])
                )
                table = pd.DataFrame({"f": frame[loose], "d": d, "j": loose}).sort_values("d")
                take = table.drop_duplicates("f")["j"].to_numpy()
                sid[take] = piece
                members[piece] = np.concatenate([members[piece], take])
                changed = True
    return sid


def link_tracks(
    detections: pd.DataFrame,
    source_id: ArrayLike,
    *,
    centre: tuple[float, float] | None = None,
    max_rate_arcsec_h: float = 600.0,
    tolerance_arcsec: float = 1.0,
    min_points: int = 5,
    min_motion_arcsec: float = 3.0,
    max_frame_gap: int = 3,
    max_tracks: int = 1000,
    seed: int = 0,
    join_pieces: bool = True,
) -> TrackResult:
    """Link unassigned detections into straight tracks in (time, RA, Dec) (module docstring).

    Parameters
    ----------
    detections
        ``frame``, ``time_mjd``, ``ra``, ``dec`` per detection.
    source_id
        Per detection, from the matching; only the -1 entries are linked.
    centre
        Tangent point (degrees); default the centre of the detections.
    max_rate_arcsec_h
        Fastest motion looked for.
    tolerance_arcsec
        Largest distance of a detection from its track (RANSAC ``residual_threshold``).
    min_points
        Fewest detections (distinct frames) of a track.
    min_motion_arcsec
        Least displacement over the track (slower "tracks" are sporadic detections of a faint
        fixed source and are left unassigned).
    max_frame_gap
        Seed pairs are taken between detections at most this many frames apart.
    max_tracks
        Stop after this many tracks.
    seed
        Random state of RANSAC.
    join_pieces
        First join the pieces of a moving source cut apart by the matching, and the unassigned
        detections on their lines (`join_moving_pieces`, with ``tolerance_arcsec``).

    Returns
    -------
    TrackResult
        The updated ids (new sources numbered after the largest input id) and the tracks.
    """
    from scipy.spatial import cKDTree

    sid = np.asarray(source_id, dtype=np.int64).copy()
    if join_pieces:
        sid = join_moving_pieces(detections, sid, centre=centre, tolerance_arcsec=tolerance_arcsec)
    empty = pd.DataFrame(
        {
            c: pd.Series([], dtype=d)
            for c, d in (
                ("source_id", "int64"),
                ("n_points", "int64"),
                ("rate_ra_arcsec_h", "float64"),
                ("rate_dec_arcsec_h", "float64"),
                ("rms_arcsec", "float64"),
                ("t_start_mjd", "float64"),
                ("t_end_mjd", "float64"),
            )
        }
    )
    ra = detections["ra"].to_numpy(float)
    dec = detections["dec"].to_numpy(float)
    pool = np.flatnonzero((sid < 0) & np.isfinite(ra) & np.isfinite(dec))
    if pool.size < min_points:
        return TrackResult(sid, empty)
    if centre is None:
        centre = field_centre(ra[np.isfinite(ra)], dec[np.isfinite(dec)])
    xi, eta = tangent_plane(ra[pool], dec[pool], *centre)
    t_mjd = detections["time_mjd"].to_numpy(float)[pool]
    t0 = float(t_mjd.min())
    t = (t_mjd - t0) * 24.0
    frame = detections["frame"].to_numpy(np.int64)[pool]
    uf, frank = np.unique(frame, return_inverse=True)
    xy = np.column_stack([xi, eta])
    # seed pairs: detections 1..max_frame_gap frames apart, within the fastest motion
    dt_frame = np.median(np.diff(np.unique(t))) if uf.size > 1 else 1.0
    radius = max_rate_arcsec_h * dt_frame * max_frame_gap * 1.5 + tolerance_arcsec
    pairs = cKDTree(xy).query_pairs(radius, output_type="ndarray")
    if pairs.size == 0:
        return TrackResult(sid, empty)
    i, k = pairs[:, 0], pairs[:, 1]
    swap = t[i] > t[k]
    i, k = np.where(swap, k, i), np.where(swap, i, k)
    gap = frank[k] - frank[i]
    dtp = t[k] - t[i]
    dist = np.hypot(*(xy[k] - xy[i]).T)
    good = (gap >= 1) & (gap <= max_frame_gap) & (dtp > 0)
    good &= dist <= max_rate_arcsec_h * np.where(dtp > 0, dtp, 1.0) + tolerance_arcsec
    i, k = i[good], k[good]
    if i.size == 0:
        return TrackResult(sid, empty)
    vel = (xy[k] - xy[i]) / (t[k] - t[i])[:, None]
    # support of each seed line: detections within 2 tolerances of it (chunks of seeds)
    # (one KD-tree query per frame for all seeds at once: seeds x frames x log n, not
    # seeds x detections, which took minutes on sparse cadences where every pair is a seed)
    support = np.zeros(i.size, dtype=np.int64)
    for f in range(uf.size):
        members = np.flatnonzero(frank == f)
        for t_f in np.unique(t[members]):
            at = members[t[members] == t_f]
            pred = xy[i] + vel * (t_f - t[i])[:, None]
            tree = cKDTree(xy[at])
            support += tree.query_ball_point(pred, 2 * tolerance_arcsec, return_length=True)
    order = np.argsort(-support, kind="stable")
    order = order[support[order] >= min_points]
    alive = np.ones(t.size, dtype=bool)
    next_id = int(sid.max()) + 1 if sid.size and sid.max() >= 0 else 0
    rows = []
    for s in order:
        if len(rows) >= max_tracks:
            break
        if not (alive[i[s]] and alive[k[s]]):
            continue
        idx = np.flatnonzero(alive)
        pred = xy[i[s]] + vel[s] * (t[idx] - t[i[s]])[:, None]
        near = idx[np.hypot(*(xy[idx] - pred).T) <= 2 * tolerance_arcsec]
        if np.unique(frank[near]).size < min_points:
            continue
        found = _ransac_track(
            t[near],
            xy[near],
            residual_threshold=tolerance_arcsec,
            max_trials=100,
            random_state=seed,
        )
        if found is None:
            continue
        inl = near[found[0]]
        resid = np.hypot(*(xy[inl] - _line_at(t[inl], found[1])).T)
        # one detection per frame: the closest to the line
        keep = pd.DataFrame({"f": frank[inl], "r": resid, "j": inl}).sort_values(["f", "r"])
        inl = keep.drop_duplicates("f")["j"].to_numpy()
        if inl.size < min_points:
            continue
        line = _line_fit(t[inl], xy[inl])
        rate = line[0][:, 0]
        span = t[inl].max() - t[inl].min()
        alive[inl] = False  # used, whether a track or a fixed faint source
        if np.hypot(*rate) * span < min_motion_arcsec:
            continue
        rms = float(np.sqrt(np.mean(np.sum((xy[inl] - _line_at(t[inl], line)) ** 2, axis=1))))
        sid[pool[inl]] = next_id
        rows.append(
            {
                "source_id": next_id,
                "n_points": int(inl.size),
                "rate_ra_arcsec_h": float(rate[0]),
                "rate_dec_arcsec_h": float(rate[1]),
                "rms_arcsec": rms,
                "t_start_mjd": t0 + float(t[inl].min()) / 24.0,
                "t_end_mjd": t0 + float(t[inl].max()) / 24.0,
            }
        )
        next_id += 1
    tracks = pd.DataFrame(rows).astype(empty.dtypes.to_dict()) if rows else empty
    return TrackResult(sid, tracks)


def _near_fixed(ds: xr.Dataset, movers: pd.DataFrame, radius_fwhm: float) -> NDArray[np.bool_]:
    """`near_movers` for the sources that are not movers themselves."""
    near = near_movers(ds, movers, radius_fwhm=radius_fwhm)
    near[np.isin(ds["source_id"].to_numpy(), movers["source_id"].to_numpy())] = False
    return near


def flag_near_movers(
    ds: xr.Dataset, sources: pd.DataFrame, *, radius_fwhm: float = 3.0
) -> xr.Dataset:
    """Set `LightCurveFlag.NEAR_MOVER` where a moving source passes a fixed one.

    These are the points `classify_sources` leaves out of the variability statistics; the flag
    shows them in ``lightcurves.zarr``.

    Parameters
    ----------
    ds : xarray.Dataset
        The light curves.
    sources : pandas.DataFrame
        `classify_sources`' table (movers at ``ra``, ``dec`` on ``epoch_mjd`` with their rates).
    radius_fwhm : float, optional
        As ``mover_radius_fwhm`` of `classify_sources`.

    Returns
    -------
    xarray.Dataset
        ``ds`` with the bit set in ``flags``.
    """
    near = _near_fixed(ds, sources[sources["kind"] == "moving"], radius_fwhm)
    bit = np.where(near, int(LightCurveFlag.NEAR_MOVER), 0).astype(ds["flags"].dtype)
    return ds.assign(flags=ds["flags"] | bit)


def near_movers(
    ds: xr.Dataset,
    movers: pd.DataFrame,
    *,
    radius_fwhm: float = 3.0,
    default_fwhm_arcsec: float = 3.0,
) -> NDArray[np.bool_]:
    """Which (source, frame) points have a moving source passing within ``radius_fwhm`` FWHM.

    A mover close to a star adds its light to the star's aperture (a Moffat wing at 3 FWHM
    still puts ~0.5% of the mover's flux in a 1.5 FWHM aperture, at 2 FWHM ~3%), and when
    the two are closer than the deblending limit they are one detection that no flag marks.

    Parameters
    ----------
    ds
        The light-curve Dataset: sources' median positions; ``fwhm_px`` (frame) and ``x``,
        ``y`` give each frame's FWHM in arcsec.
    movers
        The moving sources: ``ra``, ``dec`` at ``epoch_mjd``, ``rate_ra_arcsec_h`` (along RA
        cos Dec), ``rate_dec_arcsec_h``; each is placed on its line in every frame, detected
        there or not.
    radius_fwhm
        The radius, in FWHM of each frame.
    default_fwhm_arcsec
        FWHM used when the Dataset does not give it.

    Returns
    -------
    numpy.ndarray
        Boolean (source, frame); a mover is near itself.
    """
    from scipy.spatial import cKDTree

    n_src, n_frm = ds.sizes["source"], ds.sizes["frame"]
    near = np.zeros((n_src, n_frm), dtype=bool)
    if len(movers) == 0 or n_src == 0 or n_frm == 0:
        return near
    with warnings.catch_warnings():  # sources without a position give NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        ra = np.nanmedian(ds["ra"].to_numpy(), axis=1)
        dec = np.nanmedian(ds["dec"].to_numpy(), axis=1)
    has = np.isfinite(ra) & np.isfinite(dec)
    if not has.any():
        return near
    centre = field_centre(ra[has], dec[has])
    xi, eta = tangent_plane(ra[has], dec[has], *centre)
    fwhm = np.full(n_frm, default_fwhm_arcsec)
    scale = _pixel_scale_arcsec(ds, xi, eta, has)
    if "fwhm_px" in ds.coords and np.isfinite(scale):
        fwhm_px = ds["fwhm_px"].to_numpy().astype(float)
        fwhm = np.where(np.isfinite(fwhm_px) & (fwhm_px > 0), fwhm_px * scale, fwhm)
    t = ds["time_mjd"].to_numpy().astype(float)
    dt_h = (t[None, :] - movers["epoch_mjd"].to_numpy(float)[:, None]) * 24.0
    m_xi, m_eta = tangent_plane(
        movers["ra"].to_numpy(float), movers["dec"].to_numpy(float), *centre
    )
    p_xi = m_xi[:, None] + movers["rate_ra_arcsec_h"].to_numpy(float)[:, None] * dt_h
    p_eta = m_eta[:, None] + movers["rate_dec_arcsec_h"].to_numpy(float)[:, None] * dt_h
    frame = np.broadcast_to(np.arange(n_frm), p_xi.shape).ravel()
    radius = np.broadcast_to(radius_fwhm * fwhm, p_xi.shape).ravel()
    points = np.column_stack([p_xi.ravel(), p_eta.ravel()])
    fine = np.isfinite(points).all(axis=1)
    hits = cKDTree(np.column_stack([xi, eta])).query_ball_point(points[fine], radius[fine])
    rows = np.flatnonzero(has)
    for f, found in zip(frame[fine], hits, strict=True):
        near[rows[found], f] = True
    return near


def _pixel_scale_arcsec(ds: xr.Dataset, xi: NDArray, eta: NDArray, has: NDArray[np.bool_]) -> float:
    """Arcsec per pixel from the sources' median pixel and sky positions (NaN without x, y)."""
    if "x" not in ds or "y" not in ds or xi.size < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        x = np.nanmedian(ds["x"].to_numpy(), axis=1)[has]
        y = np.nanmedian(ds["y"].to_numpy(), axis=1)[has]
    d_pix = np.hypot(np.diff(x), np.diff(y))
    d_sky = np.hypot(np.diff(xi), np.diff(eta))
    ok = np.isfinite(d_pix) & np.isfinite(d_sky) & (d_pix > 20.0)  # pairs far apart
    return float(np.median(d_sky[ok] / d_pix[ok])) if ok.any() else float("nan")


# --------------------------------------------------------------------------------------------
# detector artefacts


@dataclass(frozen=True)
class ArtefactResult:
    """The outcome of `find_artefacts`.

    Attributes
    ----------
    is_artefact
        Per detection: it stands still on the detector (a hot pixel, a warm column...).
    group
        Per detection: its artefact source, numbered 0.. (one detection per frame each), -1 for
        the others (and for artefact detections too few to make a source, or a frame's extra
        detections of one).
    n_artefacts
        Artefact sources (groups).
    by_drift, by_sharpness
        Artefact detections found by each test (the two may overlap).
    field_shift_px
        How far the field moved on the detector over the night (the largest extent of the
        field centre's pixel position, from the detections' pixel and sky positions).
    pixel_scale_arcsec
        The pixel scale measured (arcsec per pixel).
    """

    is_artefact: NDArray[np.bool_]
    group: NDArray[np.int64]
    n_artefacts: int
    by_drift: int
    by_sharpness: int
    field_shift_px: float
    pixel_scale_arcsec: float

    def apply(
        self, detections: pd.DataFrame, source_id: ArrayLike
    ) -> tuple[pd.DataFrame, NDArray[np.int64], NDArray[np.int64]]:
        """Put the artefact sources back beside the sources matched without them.

        Parameters
        ----------
        detections
            The table `find_artefacts` was given.
        source_id
            Per detection that is not an artefact (in order): its source (e.g.
            `link_tracks` on ``detections[~is_artefact]``), -1 for none.

        Returns
        -------
        tuple
            The detections with the `lcdask.flags.ARTEFACT` bit set on the artefacts' ``flags``;
            ``source_id`` per detection (the artefact groups numbered after the largest given);
            the ``source_id`` of the artefact sources.
        """
        given = np.asarray(source_id, dtype=np.int64)
        real = ~self.is_artefact
        if given.shape != (int(real.sum()),):
            raise ValueError(
                f"source_id has {given.size} entries for {int(real.sum())} detections that are "
                "not artefacts; pass the ids of detections[~result.is_artefact]"
            )
        sid = np.full(len(detections), -1, dtype=np.int64)
        sid[real] = given
        first = int(given.max()) + 1 if given.size and given.max() >= 0 else 0
        has = self.group >= 0
        sid[has] = first + self.group[has]
        flags = (
            detections["flags"].to_numpy(np.int32)
            if "flags" in detections.columns
            else np.zeros(len(detections), np.int32)
        )
        flags = np.where(self.is_artefact, flags | np.int32(ARTEFACT), flags).astype(np.int32)
        ids = first + np.arange(self.n_artefacts, dtype=np.int64)
        return detections.assign(flags=flags), sid, ids


def _frame_geometry(
    frame: NDArray, x: NDArray, y: NDArray, xi: NDArray, eta: NDArray
) -> tuple[float, float]:
    """Pixel scale (arcsec/px) and the extent of the field centre's pixel track (px).

    Per frame, an affine fit of the pixel position on the tangent-plane position (the sky
    positions come from the frame's WCS, so the fit is its linear part): the scale is the square
    root of the determinant, the field centre's pixel position the fit at (0, 0).
    """
    ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(xi) & np.isfinite(eta)
    scales, cx, cy = [], [], []
    order = np.argsort(frame[ok], kind="stable")
    f, px, py, sx, sy = (v[ok][order] for v in (frame, x, y, xi, eta))
    bounds = np.flatnonzero(np.diff(f)) + 1
    for lo, hi in itertools.pairwise(np.r_[0, bounds, f.size]):
        if hi - lo < 4:
            continue
        a = np.column_stack([sx[lo:hi], sy[lo:hi], np.ones(hi - lo)])
        coef, *_ = np.linalg.lstsq(a, np.column_stack([px[lo:hi], py[lo:hi]]), rcond=None)
        det = abs(np.linalg.det(coef[:2]))  # px per arcsec, squared
        if det > 0:
            scales.append(1.0 / np.sqrt(det))
            cx.append(coef[2, 0])
            cy.append(coef[2, 1])
    if not scales:
        return float("nan"), 0.0
    shift = float(np.hypot(np.ptp(cx), np.ptp(cy)))
    return float(np.median(scales)), shift


def _pixel_neighbours(
    frame: NDArray, x: NDArray, y: NDArray, ref: NDArray, radius: float, chunk: int
) -> Iterator[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """Pairs (i, j): j one of the ``ref`` detections within ``radius`` px of i, in another frame."""
    from scipy.spatial import cKDTree

    if ref.size == 0:
        return
    tree = cKDTree(np.column_stack([x[ref], y[ref]]))
    todo = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    for lo in range(0, todo.size, chunk):
        idx = todo[lo : lo + chunk]
        hits = tree.query_ball_point(np.column_stack([x[idx], y[idx]]), radius)
        lengths = np.fromiter((len(h) for h in hits), dtype=np.int64, count=idx.size)
        if lengths.sum() == 0:
            continue
        i = np.repeat(idx, lengths)
        j = ref[np.concatenate([np.asarray(h, dtype=np.int64) for h in hits])]
        other = frame[j] != frame[i]
        yield i[other], j[other]


def find_artefacts(
    detections: pd.DataFrame,
    *,
    radius_px: float = 1.0,
    min_shift_px: float = 3.0,
    min_frames: int = 3,
    min_fraction: float = 0.1,
    recurrence: float = 0.5,
    max_reference_frames: int = 50,
    chunk: int = 200_000,
) -> ArtefactResult:
    """Detections that stand still on the detector: hot pixels, warm columns, other artefacts.

    Without darks nothing maps the hot pixels, and on a drifting night each one, fixed on the
    detector while the stars move, traces the drift on the sky: a "mover" at the drift rate (a
    real 142-frame night: 156 of them at 47"/h). Two tests, on the detections of up to
    ``max_reference_frames`` reference frames spread over the night:

    - drift: a detection is detector-fixed when, in at least ``max(min_frames, min_fraction *
      n_reference)`` other frames, a detection lies within ``radius_px`` of its pixel position
      but more than ``min_shift_px`` (in pixels) from its sky position: the same pixel, another
      place on the sky. A star sits at its pixel again only where the field has not moved, and
      another star reaches the same pixel within 1 px by chance in a frame or two (a star's
      detections in 30 frames of 200 stars on 512 x 512: 0.07 such frames expected). Where the
      field drifts slowly, the detections of the night's middle have few frames that far: they
      are fixed too when most of the detections at their pixel are.
    - sharpness, for a field that does not drift: a detection recurring at its pixel in at
      least ``recurrence`` of the reference frames, where most of those detections (and itself)
      are much sharper than the stars of their frame (`lcdask.astrometry.sharper_than_stars`).

    The detector-fixed detections are grouped by pixel position (DBSCAN, ``eps = radius_px``,
    ``min_samples = min_frames``; one detection per frame, the nearest to the group's position):
    each group is an artefact source.

    Parameters
    ----------
    detections
        ``frame``, ``x``, ``y``, ``ra``, ``dec`` (degrees); ``fwhm_px`` for the sharpness
        test; ``time_mjd`` (else the frame number orders the frames). Rows without a sky
        position take part in the sharpness test only.
    radius_px, min_shift_px, min_frames, min_fraction, recurrence
        The tests above.
    max_reference_frames
        Frames compared with (evenly spread): bounds the work on long nights.
    chunk
        Detections per block of neighbour queries (bounds the memory).

    Returns
    -------
    ArtefactResult
        Per detection: artefact or not, and its artefact source.
    """
    n = len(detections)
    frame = detections["frame"].to_numpy(np.int64)
    x = detections["x"].to_numpy(float)
    y = detections["y"].to_numpy(float)
    ra = detections["ra"].to_numpy(float) if "ra" in detections else np.full(n, np.nan)
    dec = detections["dec"].to_numpy(float) if "dec" in detections else np.full(n, np.nan)
    has_sky = np.isfinite(ra) & np.isfinite(dec)
    xi = np.full(n, np.nan)
    eta = np.full(n, np.nan)
    if has_sky.any():
        xi[has_sky], eta[has_sky] = tangent_plane(
            ra[has_sky], dec[has_sky], *field_centre(ra[has_sky], dec[has_sky])
        )
    scale, shift = _frame_geometry(frame, x, y, xi, eta)
    sharp = np.zeros(n, dtype=bool)
    if "fwhm_px" in detections:
        fwhm = detections["fwhm_px"].to_numpy(float)
        for idx in pd.Series(np.arange(n)).groupby(frame).indices.values():
            sharp[idx] = sharper_than_stars(fwhm[idx])
    on_pixel = np.isfinite(x) & np.isfinite(y)
    frames = np.unique(frame[on_pixel])
    pick = np.unique(np.linspace(0, frames.size - 1, min(max_reference_frames, frames.size)))
    reference = frames[pick.astype(int)] if frames.size else frames
    ref = np.flatnonzero(on_pixel & np.isin(frame, reference))
    n_ref = reference.size
    moved = np.zeros(n, dtype=np.int64)
    recur = np.zeros(n, dtype=np.int64)
    n_sharp = np.zeros(n, dtype=np.int64)
    shift_arcsec = min_shift_px * scale if np.isfinite(scale) else np.inf
    for i, j in _pixel_neighbours(frame, x, y, ref, radius_px, chunk):
        far = np.hypot(xi[j] - xi[i], eta[j] - eta[i]) > shift_arcsec  # NaN: not counted
        np.add.at(moved, i[far], 1)
        np.add.at(recur, i, 1)
        np.add.at(n_sharp, i[sharp[j]], 1)
    by_drift = has_sky & (moved >= max(min_frames, min_fraction * n_ref))
    if by_drift.any():
        # the frames of a slow drift's middle (the field within min_shift_px of them in most
        # other frames): fixed where most of the detections at their pixel are
        fixed_near = np.zeros(n, dtype=np.int64)
        for i, j in _pixel_neighbours(frame, x, y, ref, radius_px, chunk):
            np.add.at(fixed_near, i[by_drift[j]], 1)
        by_drift |= (fixed_near >= min_frames) & (2 * fixed_near > recur)
    by_sharp = (
        sharp & (recur >= max(min_frames, recurrence * n_ref)) & (n_sharp + 1 > 0.5 * (recur + 1))
    )
    is_art = by_drift | by_sharp
    group = np.full(n, -1, dtype=np.int64)
    art = np.flatnonzero(is_art)
    n_groups = 0
    if art.size >= min_frames:
        labels = dbscan_grid(np.column_stack([x[art], y[art]]), radius_px, min_frames)
        t = (
            detections["time_mjd"].to_numpy(float)[art]
            if "time_mjd" in detections
            else frame[art].astype(float)
        )
        labels = resolve_duplicates(frame[art], x[art], y[art], t, labels)
        kept = labels >= 0
        if kept.any():
            uniq, inv = np.unique(labels[kept], return_inverse=True)
            group[art[kept]] = inv
            n_groups = int(uniq.size)
    return ArtefactResult(
        is_artefact=is_art,
        group=group,
        n_artefacts=n_groups,
        by_drift=int(by_drift.sum()),
        by_sharpness=int(by_sharp.sum()),
        field_shift_px=shift,
        pixel_scale_arcsec=scale,
    )


# --------------------------------------------------------------------------------------------
# variability


def variability_statistics(ds: xr.Dataset, *, n_bins: int = 20) -> pd.DataFrame:
    """Scatter measures of every light curve (``rel_flux``, or flux over its median).

    Parameters
    ----------
    ds
        The light-curve Dataset (after `lcdask.lightcurves.apply_ensemble` for ``rel_flux``).
    n_bins
        Bins of consecutive frames for ``binned_rms``.

    Returns
    -------
    pandas.DataFrame
        Per source: ``source_id``, ``mag`` (median calibrated magnitude, else instrumental),
        ``n_points`` (detections without a `lcdask.lightcurves.BAD_FOR_FLUX` flag: blended,
        edge, saturated, masked and cosmic-ray points are not used; a star flagged in every
        frame has NaN scatter and is never called variable), ``mad_scatter``,
        ``noise_model``, ``binned_rms``, ``points_per_bin``.
    """
    with warnings.catch_warnings():  # sources without usable points give NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        return _variability_statistics(ds, n_bins=n_bins)


def _variability_statistics(ds: xr.Dataset, *, n_bins: int) -> pd.DataFrame:
    rel = ds["rel_flux"].to_numpy()
    err = ds["rel_flux_err"].to_numpy()
    if not np.isfinite(rel).any():  # no ensemble: flux over its median
        with np.errstate(all="ignore"):
            med = np.nanmedian(ds["flux"].to_numpy(), axis=1, keepdims=True)
            rel = ds["flux"].to_numpy() / med
            err = ds["flux_err"].to_numpy() / med
    flags = ds["flags"].to_numpy()
    skip = int(LightCurveFlag.MISSING) | int(BAD_FOR_FLUX)
    ok = np.isfinite(rel) & np.isfinite(err) & ((flags & skip) == 0)
    rel = np.where(ok, rel, np.nan)
    with np.errstate(all="ignore"):
        med = np.nanmedian(rel, axis=1)
        frac = rel / med[:, None]
        mad = robust_std(frac, axis=1)
        noise = np.nanmedian(np.where(ok, err, np.nan) / med[:, None], axis=1)
        mag = np.nanmedian(ds["mag"].to_numpy(), axis=1)
        inst = -2.5 * np.log10(np.nanmedian(ds["flux"].to_numpy(), axis=1))
    mag = np.where(np.isfinite(mag), mag, inst)
    n_frm = ds.sizes["frame"]
    bins = np.minimum((np.arange(n_frm) * n_bins) // max(n_frm, 1), n_bins - 1)
    sums = np.zeros((rel.shape[0], n_bins))
    counts = np.zeros((rel.shape[0], n_bins))
    np.add.at(sums.T, bins, np.nan_to_num(frac).T)
    np.add.at(counts.T, bins, ok.T.astype(float))
    with np.errstate(all="ignore"):
        means = sums / counts
        full = counts >= 3
        n_full = full.sum(axis=1)
        centre = np.zeros(rel.shape[0])
        ppb = np.full(rel.shape[0], np.nan)
        has = n_full > 0
        centre[has] = np.nanmedian(np.where(full, means, np.nan)[has], axis=1)
        ppb[has] = np.nanmedian(np.where(full, counts, np.nan)[has], axis=1)
        dev = np.where(full, means - centre[:, None], 0.0)
        binned_rms = np.sqrt((dev**2).sum(axis=1) / np.maximum(n_full - 1, 1))
    binned_rms = np.where(n_full >= 3, binned_rms, np.nan)
    return pd.DataFrame(
        {
            "source_id": ds["source_id"].to_numpy().astype(np.int64),
            "mag": mag,
            "n_points": ok.sum(axis=1).astype(np.int64),
            "mad_scatter": mad,
            "noise_model": noise,
            "binned_rms": binned_rms,
            "points_per_bin": ppb,
        }
    )


# --------------------------------------------------------------------------------------------
# target


def parse_target(target: str | Sequence[float]) -> tuple[float, float]:
    """RA and Dec (degrees) of a target given in degrees or sexagesimal.

    Parameters
    ----------
    target
        ``(ra_deg, dec_deg)``, ``"150.1 20.3"`` (degrees), ``"10:00:24.5 +20:18:00"`` or
        ``"10h00m24.5s +20d18m00s"`` (RA in hours when sexagesimal), commas allowed.

    Returns
    -------
    tuple of float
        (RA, Dec) in degrees.
    """
    if not isinstance(target, str):
        vals = [float(v) for v in target]
        if len(vals) != 2:
            raise ValueError(f"target must be (ra_deg, dec_deg), got {target!r}")
        ra, dec = vals
    else:
        parts = target.replace(",", " ").split()
        try:
            if len(parts) != 2:
                raise ValueError
            ra, dec = float(parts[0]), float(parts[1])
        except ValueError:
            from astropy import units as u
            from astropy.coordinates import SkyCoord

            try:
                if len(parts) == 2:
                    coord = SkyCoord(parts[0], parts[1], unit=(u.hourangle, u.deg))
                else:
                    coord = SkyCoord(target, unit=(u.hourangle, u.deg))
            except ValueError as err:
                raise ValueError(
                    f"cannot read the target {target!r}: give 'RA Dec' in degrees "
                    "('150.1 20.3') or sexagesimal ('10:00:24.5 +20:18:00')"
                ) from err
            ra, dec = float(coord.ra.deg), float(coord.dec.deg)
    if not (-90.0 <= dec <= 90.0) or not np.isfinite(ra):
        raise ValueError(f"target Dec must be within [-90, 90] degrees, got {dec}")
    return float(np.mod(ra, 360.0)), float(dec)


def match_target(
    sources: pd.DataFrame, target: str | Sequence[float], *, radius_arcsec: float = 3.0
) -> int | None:
    """The ``source_id`` of the source nearest to the target within ``radius_arcsec``.

    Parameters
    ----------
    sources
        A table with ``source_id``, ``ra``, ``dec``.
    target
        As for `parse_target`.
    radius_arcsec
        Largest separation.

    Returns
    -------
    int or None
        The source, or None when no source is that close.
    """
    ra_t, dec_t = parse_target(target)
    if len(sources) == 0:
        return None
    xi, eta = tangent_plane(
        sources["ra"].to_numpy(float), sources["dec"].to_numpy(float), ra_t, dec_t
    )
    sep = np.hypot(xi, eta)
    sep = np.where(np.isfinite(sep), sep, np.inf)
    best = int(np.argmin(sep))
    if sep[best] > radius_arcsec:
        return None
    return int(sources["source_id"].iloc[best])


def detection_coverage(ds: xr.Dataset) -> NDArray[np.float64]:
    """Per source: its detections over the frames between its first and last detection.

    Forced and missing entries are not detections; a source without any has coverage 0.

    Parameters
    ----------
    ds
        The light-curve Dataset (``flags``, ``time_mjd``).

    Returns
    -------
    numpy.ndarray
        The fraction, 0-1.
    """
    flags = ds["flags"].to_numpy()
    found = (flags & (int(LightCurveFlag.MISSING) | int(LightCurveFlag.FORCED))) == 0
    if "ra" in ds:
        found &= np.isfinite(ds["ra"].to_numpy())
    t = ds["time_mjd"].to_numpy().astype(float)
    first = np.where(found, t[None, :], np.inf).min(axis=1)
    last = np.where(found, t[None, :], -np.inf).max(axis=1)
    in_span = ((t[None, :] >= first[:, None]) & (t[None, :] <= last[:, None])).sum(axis=1)
    return found.sum(axis=1) / np.maximum(in_span, 1)


# --------------------------------------------------------------------------------------------
# the sources table


def classify_sources(
    ds: xr.Dataset,
    *,
    target: str | Sequence[float] | None = None,
    target_radius_arcsec: float = 3.0,
    motion_mad_ratio: float = 2.0,
    min_rate_snr: float = 5.0,
    min_motion_arcsec: float = 1.0,
    variable_ratio: float = 1.6,
    binned_ratio_threshold: float = 3.5,
    n_bins: int = 20,
    min_frames: int = 5,
    min_coverage: float = 0.5,
    sure_rate_snr: float = 30.0,
    mover_radius_fwhm: float = 3.0,
    dip_false_alarm: float = 1e-3,
) -> pd.DataFrame:
    """The sources table (``sources.parquet``): positions, motion, scatter and class.

    Parameters
    ----------
    ds
        The light-curve Dataset (after the ensemble photometry, so that ``rel_flux`` is set;
        ``is_comparison`` and ``is_artefact`` are read when present).
    target
        The target's position (`parse_target`); its nearest source within
        ``target_radius_arcsec`` gets ``is_target``.
    motion_mad_ratio, min_rate_snr, min_motion_arcsec
        Moving-source rule (module docstring).
    variable_ratio, binned_ratio_threshold, n_bins
        Variable-source rule (module docstring).
    min_frames
        Sources detected in fewer frames are classed from what there is but never moving
        unless linked as a track.
    min_coverage
        A moving source is detected in at least this fraction of the frames between its first
        and last detection: sporadic detections of a faint star have positions pulled by noise,
        neighbours and bad pixels, which a line through a few of them can take for motion (a
        simulated small-telescope night: a star of r 16.1 seen in 5 of the 13 frames of its
        span, "moving" at 1.8"/h with a rate S/N of 8.6), while a mover bright enough to be
        found is seen in nearly every frame (the same nights: 90-100%).
    sure_rate_snr
        A motion measured at this S/N or more needs no coverage: a faint fast mover near the
        detection limit is seen in fewer frames than its span (the simulated night of
        tests/test_run.py: r 18.8 at 62"/h, 10 of 24 frames, rate S/N 480).
    mover_radius_fwhm
        Points of a fixed source with a moving source within this many FWHM (`near_movers`)
        are left out of its variability statistics.
    dip_false_alarm
        The transit and eclipse search (`lcdask.search`): the designed fraction of noise-only
        light curves whose most significant dip passes the threshold set on the stable stars.

    Returns
    -------
    pandas.DataFrame
        `SOURCE_COLUMNS`: one row per source; ``kind`` in {stable, variable, moving,
        artefact} (``is_artefact`` from the Dataset: never moving nor variable); for movers
        ``ra``/``dec`` are the fitted position at ``epoch_mjd``. ``var_type`` guesses the
        kind of each variable (`lcdask.search.VAR_TYPES`), the ``dip_*`` columns are the most
        significant dip of each fixed source (`lcdask.search.dip_search`). ``attrs["dip_search"]``
        holds the search's threshold (`lcdask.search.DipThreshold.as_record`) and how many
        stable sources it made variable.
    """
    mot = motion_statistics(ds)
    var = variability_statistics(ds, n_bins=n_bins)
    table = mot.merge(var, on="source_id")
    expected_mad = expected_trend(table["mag"], table["motion_mad_arcsec"])
    table["motion_mad_ratio"] = table["motion_mad_arcsec"] / expected_mad
    artefact = (
        ds["is_artefact"].to_numpy().astype(bool)
        if "is_artefact" in ds
        else np.zeros(len(table), dtype=bool)
    )
    moving = (
        (table["motion_mad_ratio"] >= motion_mad_ratio)
        & (table["rate_snr"] >= min_rate_snr)
        & (table["displacement_arcsec"] >= min_motion_arcsec)
        & (table["n_position_points"] >= min(min_frames, 3))
    ).to_numpy() & ~artefact
    covered = detection_coverage(ds) >= min_coverage
    moving &= covered | (table["rate_snr"] >= sure_rate_snr).to_numpy()
    fixed = ~moving & ~artefact
    movers = table[moving].assign(ra=table["ra_fit"], dec=table["dec_fit"])  # at epoch_mjd
    near = _near_fixed(ds, movers, mover_radius_fwhm)
    measured = ds  # the light curves the variability is measured on
    if near.any():  # the variability without the points a mover passes by
        blended = np.where(near, int(LightCurveFlag.BLENDED), 0).astype(ds["flags"].dtype)
        measured = ds.assign(flags=ds["flags"] | blended)
        var = variability_statistics(measured, n_bins=n_bins)
        var = var.set_index("source_id").loc[table["source_id"].to_numpy()]
        for column in var.columns.drop("mag"):
            table[column] = var[column].to_numpy()
    mag = table["mag"].to_numpy(float)
    ratio = (table["mad_scatter"] / table["noise_model"]).to_numpy(float)
    noise = table["noise_model"].to_numpy(float)
    binned_rms = table["binned_rms"].to_numpy(float)
    ppb = table["points_per_bin"].to_numpy(float)
    # The MAD scatter of n pure-noise points is within 1.17/sqrt(n) (1 sigma) of its expectation:
    # variable_ratio (1.6) is 5 sigma at 100 points; with fewer points the threshold rises to
    # stay at 5 sigma (an 11-frame night: 2.76), so that short nights are not full of variables.
    n_points = np.maximum(table["n_points"].to_numpy(float), 1.0)
    ratio_threshold = np.maximum(variable_ratio, 1.0 + 5 * 1.17 / np.sqrt(n_points))
    fit = fixed.copy()  # the sources that define the expected scatter
    for _ in range(5):
        k = expected_trend(mag[fit], ratio[fit], at=mag) if fit.any() else np.ones(mag.size)
        k = np.maximum(k, 0.5)
        expected = k * noise
        scatter_ratio = table["mad_scatter"].to_numpy(float) / expected
        binned_ratio = binned_rms / (expected / np.sqrt(ppb))
        variable = (scatter_ratio >= ratio_threshold) | (binned_ratio >= binned_ratio_threshold)
        variable &= ~artefact
        new_fit = fixed & ~variable
        if np.array_equal(new_fit, fit):
            break
        fit = new_fit
    table["expected_scatter"] = expected
    table["scatter_ratio"] = scatter_ratio
    table["binned_ratio"] = binned_ratio
    variable, search = _search_dips(table, measured, fixed, variable, dip_false_alarm)
    kind = np.where(moving, "moving", np.where(variable, "variable", "stable"))
    table["kind"] = np.where(artefact, "artefact", kind)
    table["is_artefact"] = artefact
    for c in ("rate_ra_arcsec_h", "rate_dec_arcsec_h", "pa_deg"):
        table.loc[~moving, c] = np.nan
    table.loc[moving, "ra"] = table.loc[moving, "ra_fit"]
    table.loc[moving, "dec"] = table.loc[moving, "dec_fit"]
    if "is_comparison" in ds:
        table["is_comparison"] = ds["is_comparison"].to_numpy().astype(bool)
    else:
        table["is_comparison"] = False
    table["is_target"] = False
    if target is not None:
        sid = match_target(table, target, radius_arcsec=target_radius_arcsec)
        if sid is not None:
            table.loc[table["source_id"] == sid, "is_target"] = True
    table = table[list(SOURCE_COLUMNS)].reset_index(drop=True)
    table.attrs["dip_search"] = search
    return table


def _search_dips(
    table: pd.DataFrame,
    ds: xr.Dataset,
    fixed: NDArray[np.bool_],
    variable: NDArray[np.bool_],
    false_alarm: float,
) -> tuple[NDArray[np.bool_], dict]:
    """The transit and eclipse search on the fixed sources; ``var_type`` of every variable.

    Adds the ``dip_*`` columns and ``var_type`` to ``table``; returns the variables (the stable
    sources with a significant dip added) and the search's record.
    """
    stable = fixed & ~variable
    dips = dip_search(ds, skip=~fixed)
    snr = dips["dip_snr"].to_numpy(float)
    cut = dip_threshold(snr[stable], noise_snr(ds), false_alarm=false_alarm)
    dipped = stable & (snr >= cut.threshold)
    variable = variable | dipped
    for column in ("dip_snr", "dip_depth", "dip_depth_err", "dip_time_mjd", "dip_duration_h",
                   "dip_n_in", "dip_partial"):  # fmt: skip
        table[column] = dips[column].to_numpy()
    shapes = shape_statistics(ds, rows=variable & fixed)
    table["var_type"] = guess_var_type(dips, shapes, variable & fixed)
    return variable, {**cut.as_record(), "n_variable": int(dipped.sum())}
