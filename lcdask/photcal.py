"""Photometric calibration: match detections to a reference catalog, fit the zero point, go to Jy.

Per frame the catalog magnitude of a star is modelled as::

    cat_mag = zero_point + slope * inst_mag [+ color_term * color]
    inst_mag = -2.5 log10(flux_adu / exptime_s)

``slope`` is 1 for a linear detector and a catalog in the instrument's own band; it absorbs small
band mismatches and non-linearities. The fit is robust: RANSAC (scikit-learn's `RANSACRegressor`
algorithm, random subsets and stopping rule, without its estimator overhead) finds the
stars that agree with one line (rejecting wrong or blended catalog entries, saturated stars and
contaminated apertures), then a weighted least-squares fit on those inliers, iterated until the
inlier set is stable, gives the parameters and their covariance.

Magnitudes are taken as AB (SDSS g, r, i are AB within 0.01 mag; u is 0.04 mag and z 0.02 mag
off), so ``flux_jy = 3631 Jy * 10 ** (-0.4 mag)``.

All functions are pure: arrays in, arrays (or a frozen `ZeroPointFit`) out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import linalg
from scipy.spatial import cKDTree

from lcdask._utils.robust import dynamic_max_trials, r2_score, sample_without_replacement
from lcdask._utils.skygeom import unit_vectors
from lcdask.errors import FrameError

__all__ = [
    "AB_ZERO_POINT_JY",
    "INSTRUMENTAL_ZERO_POINT",
    "CatalogMatch",
    "PhotometricCalibrationError",
    "ZeroPointFit",
    "calibrate_fluxes",
    "calibrate_image_jy",
    "fit_zero_point",
    "instrumental_mag",
    "instrumental_mag_err",
    "isolated",
    "match_to_catalog",
    "to_jansky",
    "to_jansky_err",
]

AB_ZERO_POINT_JY = 3631.0
"""Flux density of an AB magnitude 0 source (Jy)."""

INSTRUMENTAL_ZERO_POINT = 25.0
"""Zero point of the instrumental magnitudes given when no reference catalog is available."""

_MAG_PER_LN = 2.5 / np.log(10.0)  # 1.0857: d(mag) = _MAG_PER_LN * d(flux) / flux


class PhotometricCalibrationError(FrameError):
    """A frame cannot be calibrated photometrically (too few usable catalog stars)."""


class CatalogMatch(NamedTuple):
    """Pairs of detections and catalog stars from `match_to_catalog`.

    Attributes
    ----------
    det_index, cat_index : numpy.ndarray
        Indices into the detection and catalog arrays (int64, equal length, sorted by
        ``det_index``; every index appears at most once).
    sep_arcsec : numpy.ndarray
        Separation of each pair (arcsec).
    """

    det_index: NDArray[np.int64]
    cat_index: NDArray[np.int64]
    sep_arcsec: NDArray[np.float64]


def _chord(radius_arcsec: float) -> float:
    return 2.0 * np.sin(np.deg2rad(radius_arcsec / 3600.0) / 2.0)


def _chord_to_arcsec(chord: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.rad2deg(2.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))) * 3600.0


def match_to_catalog(
    det_ra: ArrayLike,
    det_dec: ArrayLike,
    cat_ra: ArrayLike,
    cat_dec: ArrayLike,
    *,
    radius_arcsec: float,
) -> CatalogMatch:
    """Match each detection to its nearest catalog star within a radius, one to one.

    Each detection takes its nearest catalog star; when several detections take the same star,
    only the closest keeps it. Non-finite positions never match.

    Parameters
    ----------
    det_ra, det_dec : array_like
        Detection positions (degrees).
    cat_ra, cat_dec : array_like
        Catalog positions (degrees).
    radius_arcsec : float
        Largest separation of a match (arcsec), e.g. 1-2 FWHM or 3x the astrometric RMS.

    Returns
    -------
    CatalogMatch
        ``det_index``, ``cat_index``, ``sep_arcsec``.
    """
    if not np.isfinite(radius_arcsec) or radius_arcsec <= 0:
        raise ValueError(f"radius_arcsec must be a positive number, got {radius_arcsec!r}")
    det_ra, det_dec = np.asarray(det_ra, dtype=float), np.asarray(det_dec, dtype=float)
    cat_ra, cat_dec = np.asarray(cat_ra, dtype=float), np.asarray(cat_dec, dtype=float)
    if det_ra.shape != det_dec.shape or cat_ra.shape != cat_dec.shape:
        raise ValueError("det_ra/det_dec and cat_ra/cat_dec must have matching shapes")
    empty = CatalogMatch(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, float))
    det_ok = np.flatnonzero(np.isfinite(det_ra) & np.isfinite(det_dec))
    cat_ok = np.flatnonzero(np.isfinite(cat_ra) & np.isfinite(cat_dec))
    if det_ok.size == 0 or cat_ok.size == 0:
        return empty
    # An unbalanced tree builds in half the time and finds the same nearest neighbours.
    tree = cKDTree(unit_vectors(cat_ra[cat_ok], cat_dec[cat_ok]), balanced_tree=False)
    dist, idx = tree.query(
        unit_vectors(det_ra[det_ok], det_dec[det_ok]),
        k=1,
        distance_upper_bound=_chord(radius_arcsec),
    )
    found = np.isfinite(dist)
    det_i, cat_i, dist = det_ok[found], cat_ok[idx[found]], dist[found]
    # one detection per catalog star: the closest one wins
    order = np.lexsort((det_i, dist))
    _, first = np.unique(cat_i[order], return_index=True)
    keep = order[first]
    keep = keep[np.argsort(det_i[keep], kind="stable")]
    return CatalogMatch(
        det_i[keep].astype(np.int64), cat_i[keep].astype(np.int64), _chord_to_arcsec(dist[keep])
    )


def isolated(
    ra: ArrayLike,
    dec: ArrayLike,
    mag: ArrayLike,
    *,
    radius_arcsec: float,
    max_delta_mag: float = 4.0,
) -> NDArray[np.bool_]:
    """Catalog stars with no neighbour that would contaminate their aperture.

    A star is isolated when no other catalog star within ``radius_arcsec`` is brighter than
    ``mag + max_delta_mag`` (a neighbour 4 mag fainter adds at most 2.5% of the flux). Stars
    without a finite magnitude count as neighbours of any brightness.

    Parameters
    ----------
    ra, dec : array_like
        Catalog positions (degrees).
    mag : array_like
        Catalog magnitudes.
    radius_arcsec : float
        Neighbour search radius (arcsec), e.g. the aperture radius plus 2 FWHM.
    max_delta_mag : float
        Neighbours fainter than this many magnitudes below the star are ignored.

    Returns
    -------
    numpy.ndarray
        Boolean mask, True for isolated stars.
    """
    mag = np.asarray(mag, dtype=float)
    xyz = unit_vectors(ra, dec)
    out = np.ones(mag.shape, dtype=bool)
    if mag.size < 2:
        return out
    tree = cKDTree(xyz)
    pairs = tree.query_pairs(_chord(radius_arcsec), output_type="ndarray")
    if pairs.size == 0:
        return out
    i, j = pairs[:, 0], pairs[:, 1]
    mag_nan = np.where(np.isfinite(mag), mag, -np.inf)
    # j contaminates i when j is brighter than mag_i + dmag, and vice versa
    out[i[~(mag_nan[j] > mag_nan[i] + max_delta_mag)]] = False
    out[j[~(mag_nan[i] > mag_nan[j] + max_delta_mag)]] = False
    return out


def instrumental_mag(flux_adu: ArrayLike, exptime_s: float | ArrayLike) -> NDArray[np.float64]:
    """Instrumental magnitude ``-2.5 log10(flux_adu / exptime_s)``; NaN where the flux is <= 0.

    Parameters
    ----------
    flux_adu : array_like
        Total flux of each source (ADU, calibrated frame).
    exptime_s : float or array_like
        Exposure time (s).

    Returns
    -------
    numpy.ndarray
        Instrumental magnitudes.
    """
    flux = np.asarray(flux_adu, dtype=float)
    exptime = np.asarray(exptime_s, dtype=float)
    if np.any(~(exptime > 0)):
        raise ValueError(f"exptime_s must be > 0, got {exptime_s!r}")
    rate = flux / exptime
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(rate > 0, -2.5 * np.log10(np.where(rate > 0, rate, 1.0)), np.nan)


def instrumental_mag_err(flux_adu: ArrayLike, flux_err_adu: ArrayLike) -> NDArray[np.float64]:
    """Error of the instrumental magnitude, ``1.0857 * flux_err / flux``; NaN where flux <= 0.

    Parameters
    ----------
    flux_adu, flux_err_adu : array_like
        Flux and its 1-sigma error (ADU).

    Returns
    -------
    numpy.ndarray
        1-sigma magnitude errors.
    """
    flux = np.asarray(flux_adu, dtype=float)
    err = np.asarray(flux_err_adu, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, _MAG_PER_LN * err / flux, np.nan)


def to_jansky(mag_ab: ArrayLike) -> NDArray[np.float64]:
    """Flux density of an AB magnitude: ``3631 Jy * 10 ** (-0.4 mag_ab)``.

    Parameters
    ----------
    mag_ab : array_like
        AB magnitudes.

    Returns
    -------
    numpy.ndarray
        Flux densities (Jy).
    """
    return AB_ZERO_POINT_JY * 10.0 ** (-0.4 * np.asarray(mag_ab, dtype=float))


def to_jansky_err(mag_ab: ArrayLike, mag_err: ArrayLike) -> NDArray[np.float64]:
    """1-sigma error of `to_jansky` for a magnitude error (first order: ``F * mag_err / 1.0857``).

    Parameters
    ----------
    mag_ab, mag_err : array_like
        AB magnitudes and their 1-sigma errors.

    Returns
    -------
    numpy.ndarray
        Flux density errors (Jy).
    """
    return to_jansky(mag_ab) * np.asarray(mag_err, dtype=float) / _MAG_PER_LN


@dataclass(frozen=True, eq=False)
class ZeroPointFit:
    """The photometric calibration of one frame: ``cat = zero_point + slope * inst + ct * color``.

    Attributes
    ----------
    zero_point, slope, color_term : float
        The model (``slope`` is 1 and ``color_term`` 0 when they were not fitted).
    zero_point_err, slope_err, color_term_err : float
        1-sigma errors (0 for parameters that were not fitted).
    covariance : numpy.ndarray
        Covariance of the fitted parameters, in the order (zero_point, slope, color_term) keeping
        only the fitted ones; scaled by the reduced chi-square when that exceeds 1.
    n_used : int
        Stars in the final fit (inliers).
    n_matched : int
        Matched stars given to the fit (before any cut).
    inliers : numpy.ndarray
        Boolean mask over the inputs, True for the stars used.
    rms : float
        RMS of the inliers' residuals (mag).
    chi2_reduced : float
        Reduced chi-square of the inliers with their combined errors.
    pivot_inst_mag : float
        Weighted mean instrumental magnitude of the inliers: where the calibration is best
        known, and where `calibrate_image_jy` makes its linear scale exact.
    fit_slope, fit_color : bool
        Which of slope and colour term were fitted.
    """

    zero_point: float
    slope: float
    color_term: float
    zero_point_err: float
    slope_err: float
    color_term_err: float
    covariance: NDArray[np.float64]
    n_used: int
    n_matched: int
    inliers: NDArray[np.bool_]
    rms: float
    chi2_reduced: float
    pivot_inst_mag: float
    fit_slope: bool
    fit_color: bool

    def predict(self, inst_mag: ArrayLike, color: ArrayLike | None = None) -> NDArray[np.float64]:
        """Calibrated magnitudes of instrumental magnitudes (colour 0 when not given).

        Parameters
        ----------
        inst_mag : array_like
            Instrumental magnitudes.
        color : array_like, optional
            Colours (same definition as in the fit).

        Returns
        -------
        numpy.ndarray
            Calibrated magnitudes.
        """
        m = np.asarray(inst_mag, dtype=float)
        c = 0.0 if color is None else np.asarray(color, dtype=float)
        return self.zero_point + self.slope * m + self.color_term * c

    def predict_err(
        self, inst_mag: ArrayLike, color: ArrayLike | None = None
    ) -> NDArray[np.float64]:
        """1-sigma error of `predict` from the fit's covariance alone (no photometric error).

        Parameters
        ----------
        inst_mag : array_like
            Instrumental magnitudes.
        color : array_like, optional
            Colours.

        Returns
        -------
        numpy.ndarray
            Calibration errors (mag).
        """
        m = np.asarray(inst_mag, dtype=float)
        c = np.zeros_like(m) if color is None else np.asarray(color, dtype=float) + 0 * m
        rows = [np.ones_like(m)]
        if self.fit_slope:
            rows.append(m)
        if self.fit_color:
            rows.append(c)
        design = np.stack(rows, axis=-1)
        var = np.einsum("...i,ij,...j->...", design, self.covariance, design)
        return np.sqrt(np.maximum(var, 0.0))

    def as_dict(self) -> dict[str, Any]:
        """The scalar results, for a frame's metadata (no arrays)."""
        return {
            "zero_point": self.zero_point,
            "zero_point_err": self.zero_point_err,
            "slope": self.slope,
            "slope_err": self.slope_err,
            "color_term": self.color_term,
            "color_term_err": self.color_term_err,
            "n_used": self.n_used,
            "n_matched": self.n_matched,
            "rms": self.rms,
            "chi2_reduced": self.chi2_reduced,
            "pivot_inst_mag": self.pivot_inst_mag,
        }


def _weighted_fit(
    design: NDArray[np.float64], y: NDArray[np.float64], sigma: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """Weighted least squares: parameters, unscaled covariance, chi-square."""
    w = 1.0 / sigma**2
    normal = design.T @ (design * w[:, None])
    cov = np.linalg.inv(normal)
    beta = cov @ (design.T @ (w * y))
    chi2 = float(np.sum(w * (y - design @ beta) ** 2))
    return beta, cov, chi2


def _ransac_inliers(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    *,
    residual_threshold: float,
    slope_index: int | None,
    slope_range: tuple[float, float],
    max_trials: int,
    random_state: int | None,
    stop_probability: float = 0.99,
) -> NDArray[np.bool_] | None:
    """Inlier mask of ``y ~ x @ coef`` by RANSAC, as scikit-learn's `RANSACRegressor` finds it.

    The same algorithm as ``RANSACRegressor(LinearRegression(fit_intercept=False),
    min_samples=x.shape[1], loss="absolute_error", stop_probability=0.99)`` with a model
    check on the slope, drawing the same random subsets (scikit-learn's
    ``sample_without_replacement`` on the same `numpy.random.RandomState`), solving them with
    the same ``scipy.linalg.lstsq`` and breaking ties of the inlier count by the same R^2
    score: the same inliers, without the estimator machinery (cloning, parameter validation,
    ``repr``: ~5 ms a frame) nor the import of scikit-learn (1-2 s in each new worker).

    Parameters
    ----------
    x : numpy.ndarray
        ``(n, n_par)`` design matrix.
    y : numpy.ndarray
        ``(n,)`` targets.
    residual_threshold : float
        Largest absolute residual of an inlier.
    slope_index : int or None
        Column of ``coef`` that must lie in ``slope_range`` (None: no check).
    slope_range : tuple of float
        Plausible values of ``coef[slope_index]``.
    max_trials : int
        Most random subsets drawn (fewer when the stopping rule is met).
    random_state : int or None
        Seed of the sampling.
    stop_probability : float, optional
        Confidence of having drawn one subset free of outliers (scikit-learn's rule).

    Returns
    -------
    numpy.ndarray or None
        Boolean inlier mask over the ``n`` rows; None where `RANSACRegressor` raises (no
        valid model in ``max_trials``, or fewer rows than parameters).
    """
    n_samples, min_samples = x.shape
    if min_samples > n_samples:
        return None
    rng = np.random.mtrand._rand if random_state is None else np.random.RandomState(random_state)
    n_best, score_best, best = 1, -np.inf, None
    n_trials, limit = 0, max_trials
    while n_trials < limit:
        n_trials += 1
        subset = sample_without_replacement(rng, n_samples, min_samples)
        coef = linalg.lstsq(x[subset], y[subset], cond=1e-6)[0]
        if slope_index is not None and not (slope_range[0] <= coef[slope_index] <= slope_range[1]):
            continue
        inliers = np.abs(y - x @ coef) <= residual_threshold
        n_inliers = int(np.sum(inliers))
        if n_inliers < n_best:
            continue
        score = r2_score(y[inliers], x[inliers] @ coef)
        if n_inliers == n_best and score < score_best:
            continue
        n_best, score_best, best = n_inliers, score, inliers
        limit = min(limit, dynamic_max_trials(n_inliers, n_samples, min_samples, stop_probability))
    return best


def fit_zero_point(
    inst_mag: ArrayLike,
    inst_mag_err: ArrayLike,
    cat_mag: ArrayLike,
    cat_mag_err: ArrayLike,
    *,
    color: ArrayLike | None = None,
    fit_slope: bool = True,
    residual_threshold: float = 3.0,
    systematic_err: float = 0.01,
    max_mag_err: float = 0.05,
    cat_mag_range: tuple[float, float] | None = None,
    good: ArrayLike | None = None,
    slope_range: tuple[float, float] = (0.5, 2.0),
    min_stars: int = 5,
    max_trials: int = 200,
    max_iter: int = 10,
    random_state: int | None = 0,
) -> ZeroPointFit:
    """Fit ``cat_mag = zero_point + slope * inst_mag [+ color_term * color]`` robustly.

    1. Stars are candidates when every input is finite, both magnitude errors are at most
       ``max_mag_err`` (drops the faint end, where errors and aperture contamination grow), the
       catalog magnitude is within ``cat_mag_range`` (use it to drop the saturated bright end
       when its limit is known) and ``good`` is True (e.g. not flagged saturated).
    2. Each star's combined error is
       ``sigma = hypot(cat_mag_err, slope * inst_mag_err, systematic_err)``.
    3. RANSAC (the algorithm, subsets and stopping rule of
       `sklearn.linear_model.RANSACRegressor`, same inliers) fits the line on the equations
       divided by ``sigma``, so that its residuals, and ``residual_threshold``, are in units of
       each star's own sigma: bright stars with 0.02 mag errors and faint ones with 0.05 mag are
       judged fairly. Models with a slope outside ``slope_range`` are rejected.
    4. A weighted least-squares fit on the inliers, repeated with the inliers re-selected from
       all candidates by the same threshold until they no longer change (``max_iter``), gives the
       parameters and their covariance (scaled by the reduced chi-square when above 1).

    Parameters
    ----------
    inst_mag, inst_mag_err : array_like
        Instrumental magnitudes (`instrumental_mag`) and their errors.
    cat_mag, cat_mag_err : array_like
        Matched catalog magnitudes in the calibration band and their errors.
    color : array_like, optional
        A catalog colour (e.g. ``g - r``); when given, a colour term is fitted too.
    fit_slope : bool
        Fit the slope; when False it is fixed at 1.
    residual_threshold : float
        Largest residual of an inlier, in units of the star's combined sigma.
    systematic_err : float
        Error floor added in quadrature to every star (mag): flat-field and aperture-correction
        errors that photon statistics do not capture.
    max_mag_err : float
        Largest catalog and instrumental magnitude error of a candidate.
    cat_mag_range : (float, float), optional
        Brightest and faintest catalog magnitude of a candidate.
    good : array_like of bool, optional
        False for stars that must not be used (saturated, flagged).
    slope_range : (float, float)
        Plausible slopes; RANSAC models outside are discarded.
    min_stars : int
        Fewest candidates (and inliers) accepted.
    max_trials : int
        RANSAC iterations.
    max_iter : int
        Largest number of re-selection rounds of the weighted refit.
    random_state : int or None
        Seed of RANSAC's sampling (the fit is deterministic for a fixed seed).

    Returns
    -------
    ZeroPointFit
        Parameters, errors, covariance, inlier mask and fit statistics.

    Raises
    ------
    PhotometricCalibrationError
        Fewer than ``min_stars`` usable stars, before or after the outlier rejection.
    """
    m = np.asarray(inst_mag, dtype=float)
    m_err = np.asarray(inst_mag_err, dtype=float)
    y = np.asarray(cat_mag, dtype=float)
    y_err = np.asarray(cat_mag_err, dtype=float)
    n = m.size
    if not (m.shape == m_err.shape == y.shape == y_err.shape) or m.ndim != 1:
        raise ValueError(
            "inst_mag, inst_mag_err, cat_mag and cat_mag_err must be 1-d arrays of equal length, "
            f"got shapes {m.shape}, {m_err.shape}, {y.shape}, {y_err.shape}"
        )
    if residual_threshold <= 0:
        raise ValueError(f"residual_threshold must be > 0 (in sigma), got {residual_threshold!r}")
    if systematic_err < 0:
        raise ValueError(f"systematic_err must be >= 0 (mag), got {systematic_err!r}")
    c = None if color is None else np.asarray(color, dtype=float)
    if c is not None and c.shape != m.shape:
        raise ValueError(f"color must have the shape of inst_mag {m.shape}, got {c.shape}")
    cand = _zero_point_candidates(
        m, m_err, y, y_err, c, max_mag_err=max_mag_err, cat_mag_range=cat_mag_range, good=good
    )

    columns = [np.ones(n)]
    if fit_slope:
        columns.append(m)
    if c is not None:
        columns.append(c)
    design = np.column_stack(columns)
    target = y if fit_slope else y - m
    n_par = design.shape[1]
    need = max(min_stars, n_par + 1)
    n_cand = int(cand.sum())
    if n_cand < need:
        raise PhotometricCalibrationError(
            f"only {n_cand} of {n} matched stars are usable for the zero point (need {need}): "
            f"finite values, errors <= max_mag_err={max_mag_err}, within cat_mag_range="
            f"{cat_mag_range}; check the catalog match radius, the WCS and the catalog depth"
        )
    model = _ZeroPointModel(
        m=m,
        m_err=m_err,
        y=y,
        y_err=y_err,
        design=design,
        target=target,
        cand=cand,
        fit_slope=fit_slope,
        systematic_err=systematic_err,
        max_mag_err=max_mag_err,
    )
    inl = _ransac_start(
        model,
        need,
        residual_threshold=residual_threshold,
        slope_range=slope_range,
        max_trials=max_trials,
        random_state=random_state,
    )
    beta, cov, inl, sig = _reselect_inliers(
        model, inl, need, residual_threshold=residual_threshold, max_iter=max_iter
    )
    n_used = int(inl.sum())
    if beta is None or cov is None or n_used < need:
        raise PhotometricCalibrationError(
            f"only {n_used} of {n_cand} usable stars agree on one zero point (need {need}); "
            "the catalog may not match the frame's band or WCS"
        )
    beta, cov, chi2 = _weighted_fit(design[inl], target[inl], sig[inl])
    return _zero_point_result(model, beta, cov, chi2, inl, sig, fit_color=c is not None)


def _zero_point_candidates(
    m: NDArray[np.float64],
    m_err: NDArray[np.float64],
    y: NDArray[np.float64],
    y_err: NDArray[np.float64],
    c: NDArray[np.float64] | None,
    *,
    max_mag_err: float,
    cat_mag_range: tuple[float, float] | None,
    good: ArrayLike | None,
) -> NDArray[np.bool_]:
    """The candidate stars of `fit_zero_point` (its step 1, with a loose faint-end cut)."""
    cand = np.isfinite(m) & np.isfinite(m_err) & np.isfinite(y) & np.isfinite(y_err)
    # the faint-end cut on the measured error is loose here and tightened on the error at the
    # model's predicted flux below: a cut on the measured one keeps upward fluctuations only
    cand &= (m_err >= 0) & (y_err >= 0) & (m_err <= 2.0 * max_mag_err) & (y_err <= max_mag_err)
    if c is not None:
        cand &= np.isfinite(c)
    if cat_mag_range is not None:
        lo, hi = cat_mag_range
        cand &= (y >= lo) & (y <= hi)
    if good is not None:
        good_arr = np.asarray(good, dtype=bool)
        if good_arr.shape != m.shape:
            raise ValueError(
                f"good must have the shape of inst_mag {m.shape}, got {good_arr.shape}"
            )
        cand &= good_arr
    return cand


@dataclass(frozen=True)
class _ZeroPointModel:
    """The zero-point fit's problem: the stars' magnitudes and errors, the design matrix and
    target (``cat_mag``, less ``inst_mag`` when the slope is fixed), and the candidates."""

    m: NDArray[np.float64]
    m_err: NDArray[np.float64]
    y: NDArray[np.float64]
    y_err: NDArray[np.float64]
    design: NDArray[np.float64]
    target: NDArray[np.float64]
    cand: NDArray[np.bool_]
    fit_slope: bool
    systematic_err: float
    max_mag_err: float

    def sigma_of(
        self, beta: NDArray[np.float64] | None
    ) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
        """Each star's combined sigma under the parameters ``beta`` (None: none yet), and the
        candidates whose instrumental error there is at most ``max_mag_err``."""
        m, m_err, y, y_err, fit_slope = self.m, self.m_err, self.y, self.y_err, self.fit_slope
        # instrumental errors scaled to the flux the model predicts from the catalog magnitude
        # (sky-limited: error in flux units constant), so that neither the weights nor the cut
        # favour stars whose measured flux fluctuated up (Eddington / Malmquist bias)
        slope = float(beta[1]) if (beta is not None and fit_slope) else 1.0
        err = m_err
        if beta is not None:
            m_pred = (y - (self.design @ beta - (slope * m if fit_slope else 0.0))) / slope
            with np.errstate(invalid="ignore", over="ignore"):
                ratio = np.clip(10.0 ** (-0.4 * (m - m_pred)), 0.5, 2.0)
            err = np.where(np.isfinite(ratio), m_err * ratio, m_err)
        sigma = np.sqrt(y_err**2 + (slope * err) ** 2 + self.systematic_err**2)
        return sigma, self.cand & (err <= self.max_mag_err)


def _ransac_start(
    model: _ZeroPointModel,
    need: int,
    *,
    residual_threshold: float,
    slope_range: tuple[float, float],
    max_trials: int,
    random_state: int | None,
) -> NDArray[np.bool_]:
    """RANSAC's inliers on the equations divided by sigma (all candidates when it finds no
    consensus), from the candidates within ``max_mag_err`` when there are ``need`` of them."""
    cand, design, target = model.cand, model.design, model.target
    idx = np.flatnonzero(cand & (model.m_err <= model.max_mag_err))
    if idx.size < need:
        idx = np.flatnonzero(cand)
    sig, _ = model.sigma_of(None)
    xs = design[idx] / sig[idx, None]
    ys = target[idx] / sig[idx]
    found = _ransac_inliers(
        xs,
        ys,
        residual_threshold=residual_threshold,
        slope_index=1 if model.fit_slope else None,
        slope_range=slope_range,
        max_trials=max_trials,
        random_state=random_state,
    )
    if found is None:
        # RANSAC found no consensus (e.g. every random model invalid); start from all candidates
        inl = cand.copy()
    else:
        inl = np.zeros(model.m.size, dtype=bool)
        inl[idx[found]] = True
    return inl


def _reselect_inliers(
    model: _ZeroPointModel,
    inl: NDArray[np.bool_],
    need: int,
    *,
    residual_threshold: float,
    max_iter: int,
) -> tuple[
    NDArray[np.float64] | None, NDArray[np.float64] | None, NDArray[np.bool_], NDArray[np.float64]
]:
    """The weighted fit on the inliers, repeated with the inliers re-selected from all
    candidates until they no longer change: the last parameters and covariance (None if no
    fit was made), the inliers and the sigmas under the last parameters."""
    design, target = model.design, model.target
    beta = cov = None
    sig = None
    for _ in range(max_iter):
        if inl.sum() < need:
            break
        sig, _ = model.sigma_of(beta)
        beta, cov, _chi2 = _weighted_fit(design[inl], target[inl], sig[inl])
        sig, usable = model.sigma_of(beta)
        resid = (target - design @ beta) / sig
        new = usable & (np.abs(resid) < residual_threshold)
        if np.array_equal(new, inl):
            break
        inl = new
    return beta, cov, inl, sig


def _zero_point_result(
    model: _ZeroPointModel,
    beta: NDArray[np.float64],
    cov: NDArray[np.float64],
    chi2: float,
    inl: NDArray[np.bool_],
    sig: NDArray[np.float64],
    *,
    fit_color: bool,
) -> ZeroPointFit:
    """The `ZeroPointFit` of the final weighted fit (covariance scaled by the reduced chi-square
    when above 1)."""
    design, target, m, fit_slope = model.design, model.target, model.m, model.fit_slope
    n_used = int(inl.sum())
    dof = n_used - design.shape[1]
    chi2_red = chi2 / dof if dof > 0 else float("nan")
    if dof > 0 and chi2_red > 1.0:
        cov = cov * chi2_red
    err = np.sqrt(np.diag(cov))
    resid_mag = target[inl] - design[inl] @ beta
    w = 1.0 / sig[inl] ** 2
    k = 1
    zero_point, zero_point_err = float(beta[0]), float(err[0])
    slope, slope_err = 1.0, 0.0
    if fit_slope:
        slope, slope_err = float(beta[k]), float(err[k])
        k += 1
    color_term, color_term_err = 0.0, 0.0
    if fit_color:
        color_term, color_term_err = float(beta[k]), float(err[k])
    return ZeroPointFit(
        zero_point=zero_point,
        slope=slope,
        color_term=color_term,
        zero_point_err=zero_point_err,
        slope_err=slope_err,
        color_term_err=color_term_err,
        covariance=cov,
        n_used=n_used,
        n_matched=m.size,
        inliers=inl,
        rms=float(np.sqrt(np.mean(resid_mag**2))),
        chi2_reduced=float(chi2_red),
        pivot_inst_mag=float(np.sum(w * m[inl]) / np.sum(w)),
        fit_slope=fit_slope,
        fit_color=fit_color,
    )


def calibrate_fluxes(
    flux: ArrayLike,
    flux_err: ArrayLike,
    exptime_s: float | ArrayLike,
    fit: ZeroPointFit,
    *,
    color: ArrayLike | None = None,
    include_fit_error: bool = True,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Calibrated magnitudes and flux densities of measured fluxes.

    ``mag = fit.predict(inst_mag, color)`` and ``flux_jy = 3631 * 10 ** (-0.4 mag)``, i.e.
    ``flux_jy = 3631 * 10 ** (-0.4 (zero_point + ct * color)) * (flux / exptime_s) ** slope``.
    Non-positive fluxes have NaN magnitudes but finite flux densities, from the same formula
    applied to ``|flux|`` with the sign kept (exactly linear when ``slope`` is 1), so that faint
    sources keep unbiased fluxes in light curves. The flux-density error is the derivative of
    that formula times ``flux_err`` (taken at a flux of at least ``flux_err`` when the slope is
    not 1).

    Parameters
    ----------
    flux, flux_err : array_like
        Fluxes and their 1-sigma errors (ADU in the calibrated frame, total flux).
    exptime_s : float or array_like
        Exposure time (s).
    fit : ZeroPointFit
        The frame's calibration.
    color : array_like, optional
        Colours of the sources when the fit has a colour term (0 otherwise).
    include_fit_error : bool
        Add the calibration's own error (from its covariance) in quadrature. Leave it on for
        absolute fluxes; turn it off for relative photometry within one frame, where it is common
        to all stars.

    Returns
    -------
    mag, mag_err, flux_jy, flux_jy_err : numpy.ndarray
        AB magnitudes, their errors, flux densities (Jy) and their errors.
    """
    f = np.asarray(flux, dtype=float)
    fe = np.asarray(flux_err, dtype=float)
    t = np.asarray(exptime_s, dtype=float)
    inst = instrumental_mag(f, t)
    inst_abs = instrumental_mag(np.abs(f), t)
    mag = fit.predict(inst, color)
    ct = 0.0 if color is None else fit.color_term * np.asarray(color, dtype=float)
    rate = np.abs(f) / t
    scale = to_jansky(fit.zero_point + ct)
    flux_jy = np.sign(f) * scale * rate**fit.slope
    # d(flux_jy)/d(flux), taken at no less than a 1-sigma flux so that it stays finite at 0
    with np.errstate(divide="ignore", invalid="ignore"):
        dflux = fit.slope * scale * np.maximum(rate, fe / t) ** (fit.slope - 1.0) / t * fe
    phot_mag_err = fit.slope * instrumental_mag_err(f, fe)
    if include_fit_error:
        cal = fit.predict_err(np.where(np.isfinite(inst_abs), inst_abs, fit.pivot_inst_mag), color)
        mag_err = np.hypot(phot_mag_err, cal)
        flux_jy_err = np.hypot(dflux, np.abs(flux_jy) * cal / _MAG_PER_LN)
    else:
        mag_err = phot_mag_err
        flux_jy_err = dflux
    return mag, mag_err, flux_jy, flux_jy_err


def calibrate_image_jy(
    image: ArrayLike, exptime_s: float, fit: ZeroPointFit, *, color: float = 0.0
) -> NDArray[np.float64]:
    """An image in Jy per pixel: the calibrated frame (ADU) times one Jy/ADU factor.

    The factor is exact for a source at the fit's pivot (its weighted mean instrumental
    magnitude): ``to_jansky(fit.predict(pivot)) / (exptime_s * 10 ** (-0.4 pivot))``.
    When ``slope`` is 1 this is exact at every brightness. When it is not, the true calibration
    ``flux_jy ~ flux ** slope`` is non-linear, cannot be applied pixel by pixel (a sum of pixels
    would not be the flux of their sum), and this linear image is off for a source of instrumental
    magnitude ``m`` by ``(slope - 1) * (m - pivot)`` mag; use `calibrate_fluxes` on measured
    fluxes for exact values.

    Parameters
    ----------
    image : array_like
        Calibrated, sky-subtracted frame (ADU).
    exptime_s : float
        Exposure time (s).
    fit : ZeroPointFit
        The frame's calibration.
    color : float
        Colour assumed for the colour term.

    Returns
    -------
    numpy.ndarray
        The image in Jy per pixel (float64).
    """
    if not exptime_s > 0:
        raise ValueError(f"exptime_s must be > 0, got {exptime_s!r}")
    pivot = fit.pivot_inst_mag
    jy_per_adu = float(to_jansky(fit.predict(pivot, color))) / (exptime_s * 10.0 ** (-0.4 * pivot))
    return np.asarray(image, dtype=float) * jy_per_adu
