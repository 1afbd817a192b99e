"""The noise of a transit light curve: white noise scaled, plus correlated ("red") noise.

Ground-based relative photometry is not white: the atmosphere and the detector wander on time
scales of minutes to hours, and a fit that assumes white noise gives errors too small
(Pont et al. 2006). `NoiseModel` models it as an Ornstein-Uhlenbeck process (exponential-kernel
Gaussian process) on top of the given errors, scaled; `fit_noise_model` fits its three numbers
by restricted maximum likelihood. `binned_scatter` and `red_noise_beta` are the time-averaging
method's diagnostics (Winn et al. 2008): the residuals' scatter in bins against white noise's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.linalg import cho_factor, cho_solve
from scipy.optimize import minimize

__all__ = ["TAU_MIN_MIN", "NoiseModel", "binned_scatter", "fit_noise_model", "red_noise_beta"]


def binned_scatter(
    time: ArrayLike, residual: ArrayLike, *, bin_minutes: float
) -> tuple[float, float, int]:
    """The scatter of residuals averaged in bins of ``bin_minutes``, and white noise's.

    Parameters
    ----------
    time : array_like
        Times (days).
    residual : array_like
        Residuals (finite).
    bin_minutes : float
        Bin width.

    Returns
    -------
    measured : float
        Standard deviation of the bin means (bins of 2 points or more); NaN with fewer than 3.
    white : float
        What uncorrelated noise would give: ``std(residual) / sqrt(N) * sqrt(M / (M - 1))``
        (N the mean points per bin, M the bins; Winn et al. 2008, eq. 11).
    n_bins : int
        M.
    """
    t = np.asarray(time, float)
    r = np.asarray(residual, float)
    if t.size < 4:
        return math.nan, math.nan, 0
    index = np.floor((t - t.min()) * 1440.0 / bin_minutes).astype(int)
    counts = np.bincount(index)
    sums = np.bincount(index, weights=r)
    keep = counts >= 2
    n_bins = int(keep.sum())
    if n_bins < 3:
        return math.nan, math.nan, n_bins
    means = sums[keep] / counts[keep]
    n_mean = float(counts[keep].mean())
    white = float(np.std(r) / math.sqrt(n_mean) * math.sqrt(n_bins / (n_bins - 1)))
    return float(np.std(means)), white, n_bins


def red_noise_beta(
    time: ArrayLike,
    residual: ArrayLike,
    *,
    bin_minutes: tuple[float, ...] = (10, 15, 20, 30, 45, 60),
) -> float:
    """The red-noise factor beta of the time-averaging method (module docstring, step 4).

    The median, over the bin sizes with at least 4 bins, of the binned scatter over its
    white-noise expectation (`binned_scatter`); 1 when no size has enough bins, never below 1.
    """
    ratios = []
    for minutes in bin_minutes:
        measured, white, n_bins = binned_scatter(time, residual, bin_minutes=minutes)
        if n_bins >= 4 and white > 0:
            ratios.append(measured / white)
    return max(1.0, float(np.median(ratios))) if ratios else 1.0


@dataclass(frozen=True)
class NoiseModel:
    """The noise of the relative flux: the given errors scaled, plus correlated ("red") noise.

    The covariance of ln flux (relative flux for small changes) between points i and j is
    ``(white_scale * err_i / flux_i)^2 [i = j] + red_amplitude^2 exp(-|t_i - t_j| / tau)``: an
    Ornstein-Uhlenbeck (exponential kernel) Gaussian process, the simplest model of the
    atmosphere's and the detector's slow wander, whose three numbers are fitted by maximum
    (restricted) likelihood jointly with the transit (`fit_transit`, step 4).

    Attributes
    ----------
    white_scale : float
        Factor applied to the given errors.
    red_amplitude : float
        Standard deviation of the correlated noise (relative flux; 0 when none).
    red_tau_min : float
        Its correlation time (minutes).
    """

    white_scale: float
    red_amplitude: float
    red_tau_min: float

    def covariance(self, time: ArrayLike, sigma_ln: ArrayLike) -> np.ndarray:
        """The covariance matrix at ``time`` (days) for ln-flux errors ``sigma_ln``."""
        t = np.asarray(time, float)
        lag = np.abs(t[:, None] - t[None, :])
        cov = self.red_amplitude**2 * np.exp(-lag * (1440.0 / self.red_tau_min))
        cov[np.diag_indices_from(cov)] += (self.white_scale * np.asarray(sigma_ln, float)) ** 2
        return cov


TAU_MIN_MIN = 3.0
"""Shortest correlation time of the red noise (minutes, or 10 cadences if longer): shorter
correlations act as white noise at a cadence of 1-2 minutes, and a short fitted time left the
slow wander to the detrending terms, with depths 3-4 sigma off on simulated nights."""


def _noise_nll(params, lag, resid, design, sigma_ln) -> float:
    """Restricted negative log-likelihood of residuals under the noise model, the detrending
    coefficients marginalised: ``(r^T P r + log|K| + log|X^T K^-1 X|) / 2``."""
    scale, amp, tau = np.exp(params)
    cov = amp**2 * np.exp(-lag / tau)
    cov[np.diag_indices_from(cov)] += (scale * sigma_ln) ** 2
    try:
        factor = cho_factor(cov, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return 1e30
    k_r = cho_solve(factor, resid, check_finite=False)
    k_x = cho_solve(factor, design, check_finite=False)
    gram = design.T @ k_x
    rhs = design.T @ k_r
    sign, logdet_gram = np.linalg.slogdet(gram)
    if sign <= 0:
        return 1e30
    quad = float(resid @ k_r - rhs @ np.linalg.solve(gram, rhs))
    logdet = 2.0 * float(np.sum(np.log(np.diagonal(factor[0]))))
    return 0.5 * (quad + logdet + logdet_gram)


def fit_noise_model(
    residual: ArrayLike, design: ArrayLike, sigma_ln: ArrayLike, time: ArrayLike
) -> NoiseModel:
    """The `NoiseModel` of maximum restricted likelihood (REML) of residuals.

    Parameters
    ----------
    residual : array_like
        ln flux minus ln of the transit model.
    design : array_like
        The detrending design (points x terms, with the constant), marginalised.
    sigma_ln : array_like
        The given errors of ln flux (relative errors).
    time : array_like
        Days.

    Returns
    -------
    NoiseModel
        Three starts (correlation times of 5, 15 and 60 minutes), L-BFGS-B in log parameters;
        the red amplitude at its floor (1e-3 of the typical error) is reported as 0.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # small matrices: one thread (see `fit_transit`)
        return _fit_noise_model(residual, design, sigma_ln, time)


def _fit_noise_model(residual, design, sigma_ln, time) -> NoiseModel:
    resid = np.asarray(residual, float)
    design = np.asarray(design, float)
    sigma_ln = np.asarray(sigma_ln, float)
    time = np.asarray(time, float)
    lag = np.abs(time[:, None] - time[None, :])
    order = np.sort(time)
    cadence = float(np.median(np.diff(order))) if order.size > 1 else 1.0 / 1440
    span = float(order[-1] - order[0])
    typical = float(np.median(sigma_ln))
    bounds = [
        (math.log(0.2), math.log(5.0)),
        (math.log(1e-3 * typical), math.log(5.0 * typical)),
        (math.log(max(3 * cadence, TAU_MIN_MIN / 1440)), math.log(max(0.5 * span, 20 * cadence))),
    ]
    best = None
    for amp, tau in ((0.3, 15.0), (1.0, 60.0), (0.05, 5.0)):
        start = [0.0, math.log(amp * typical), math.log(tau / 1440.0)]
        start = [
            min(max(v, lo + 1e-6), hi - 1e-6) for v, (lo, hi) in zip(start, bounds, strict=True)
        ]
        result = minimize(
            _noise_nll, start, args=(lag, resid, design, sigma_ln), method="L-BFGS-B",
            bounds=bounds,
        )  # fmt: skip
        if best is None or result.fun < best.fun:
            best = result
    scale, amp, tau = np.exp(best.x)
    if amp <= 1.01e-3 * typical:  # at its floor: no correlated noise
        amp = 0.0
    return NoiseModel(white_scale=float(scale), red_amplitude=float(amp), red_tau_min=1440 * tau)
