"""A transit fitted with its detrending: least squares, then emcee for the errors.

The model of the target's relative flux is a quadratically limb-darkened transit
(`lcdask.transit.model.TransitCurve`) times a detrending model that is linear in its
coefficients::

    flux = transit(t; t0, Rp/Rs, a/Rs, b, q1, q2) * (c0 + sum_k c_k z_k)

where the ``z_k`` are standardised per-frame quantities (`lcdask.config.DETREND_TERMS`: airmass,
the target's x and y, FWHM, sky, time and its square). `fit_transit`:

1. **Epoch and coverage.** The night's predicted mid-time comes from the ephemeris
   (``t0 + n P``, n the nearest epoch). A coarse scan of the mid-time with the given shape places
   the transit; the points before first contact, in ingress, on the bottom, in egress and after
   fourth contact are counted (`Coverage`). What the data cannot constrain is fixed to the given
   value, and the result says why: a/Rs and b (hence the inclination) unless both ingress and egress
   hold at least 3 points (with one contact pair missing the duration trades against the
   mid-time); Rp/Rs unless there are at least 5 points out of transit (with no baseline the depth
   trades against the normalisation). The limb darkening is fixed when given, else fitted as
   Kipping (2013)'s q1, q2 with uniform priors on [0, 1]. The coverage is judged again at the
   mid-time the least squares of step 2 find, and when that changes what is free the fit is
   done again from there (a noisy night's scan can misplace the transit by part of T14: on a
   simulated night it put 3 points in ingress and egress that the transit never had, and a/Rs
   and b were freed on an egress seen alone).
2. **Least squares and outliers.** The free transit parameters are fitted by least squares
   (`scipy.optimize.least_squares`) with the detrending coefficients solved linearly inside
   (variable projection). Points flagged by the run never enter; points further than
   ``clip_sigma`` robust standard deviations (1.4826 MAD) from the model are clipped, and the fit
   repeats until no point changes (at most 5 times). Both stay in `TransitFit.points`, marked.
3. **Detrending terms** (``detrend = "auto"``): forward selection on the Bayesian information
   criterion, ``n ln(RSS/n) + k ln n`` with the weighted residual sum of squares at the fitted
   transit, adding the term that lowers it most while it falls by more than 2; the transit is
   refitted with the chosen terms and the selection repeated until it no longer changes.
4. **Errors.** The per-point errors are scaled to the residual scatter (the reduced chi-square of
   the fit) and by the red-noise factor beta of the time-averaging method (Pont et al. 2006, Winn
   et al. 2008: the scatter of the residuals binned over 10-30 minutes against the white-noise
   expectation, median over the bin sizes, at least 1). The posterior is sampled with emcee
   (Foreman-Mackey et al. 2013; differential-evolution moves, which suit the correlated a/Rs, b,
   Rp/Rs) over the free transit parameters with the detrending coefficients marginalised
   analytically (flat priors: the log-likelihood is ``-chi2_min / 2 - log det(A^T A) / 2``),
   and their posterior drawn afterwards from the Gaussian conditional of each sample. The chain
   runs until it is longer than ``autocorr_factor`` integrated autocorrelation times of every
   parameter and the estimate is stable to 5% (or ``max_steps``); the first two autocorrelation
   times are discarded as burn-in.

Results are posterior medians with the 16th and 84th percentiles (`ParameterEstimate`); derived
quantities (depth ``(Rp/Rs)^2``, inclination, T14, u1 and u2, O-C) are computed sample by sample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.linalg import solve_triangular
from scipy.optimize import least_squares

from lcdask.config import DETREND_TERMS, TransitConfig
from lcdask.transit.model import (
    TransitCurve,
    full_duration_d,
    impact_parameter,
    inclination_deg,
    q_to_u,
    total_duration_d,
    u_to_q,
)
from lcdask.transit.noise import NoiseModel, binned_scatter, fit_noise_model, red_noise_beta
from lcdask.transit.planet import PlanetParameters
from lcdask.transit.results import (
    MIN_BASELINE_POINTS,
    MIN_CONTACT_POINTS,
    UNITS,
    ChainSummary,
    Coverage,
    ParameterEstimate,
    TransitFit,
)

__all__ = ["LINEAR_TERMS", "fit_transit"]

SAMPLED = ("t0", "rp_rs", "a_rs", "b", "q1", "q2")
"""The transit parameters the sampler may vary (each free or fixed: `Coverage`)."""

LINEAR_TERMS = ("time", "airmass", "x", "y", "fwhm", "sky")
"""The terms ``detrend = "auto"`` always includes (when available and not collinear); the BIC
then decides on ``time2``. Selecting these by the BIC too (``detrend = "bic"``) left terms out
that were too small to select yet large enough to matter: on 15 simulated nights with drift,
extinction and seeing, 60% of the mid-times within 1 sigma and 93% within 3, against 67% and
100% with all of them (their uncertainty is then in the errors)."""

BIC_MIN_DROP = 2.0
"""A detrending term is added when it lowers the BIC by more than this ("positive" evidence,
Kass & Raftery 1995)."""

# ---------------------------------------------------------------------------------------------
# the model's pieces


@dataclass
class _Problem:
    """Everything the likelihood needs, for the fitted points."""

    curve: TransitCurve
    flux: np.ndarray
    sigma: np.ndarray
    design: np.ndarray  # (n, 1 + terms): 1, then the standardised terms
    free: list[str]
    fixed_values: dict[str, float]
    bounds: dict[str, tuple[float, float]]
    ecc: float
    w_deg: float
    fit_ld: bool
    u_fixed: tuple[float, float]
    cov: np.ndarray | None = None  # covariance of ln flux; None: diagonal (sigma / flux)^2

    def full(self, theta: np.ndarray) -> dict[str, float]:
        values = dict(self.fixed_values)
        values.update(zip(self.free, theta, strict=True))
        return values

    def transit(self, values: Mapping[str, float]) -> np.ndarray:
        inc = float(inclination_deg(values["a_rs"], values["b"], ecc=self.ecc, w_deg=self.w_deg))
        if self.fit_ld:
            u1, u2 = q_to_u(values["q1"], values["q2"])
        else:
            u1, u2 = self.u_fixed
        return self.curve(values["t0"], values["rp_rs"], values["a_rs"], inc, float(u1), float(u2))

    def in_bounds(self, values: Mapping[str, float]) -> bool:
        for name in self.free:
            low, high = self.bounds[name]
            if not low <= values[name] <= high:
                return False
        # a transit: the planet's disc crosses the star's
        return values["b"] < 1.0 + values["rp_rs"] and values["b"] < values["a_rs"]

    def __post_init__(self) -> None:
        self._orbit = (1.0 - self.ecc**2) / (1.0 + self.ecc * math.sin(math.radians(self.w_deg)))
        self._ln_flux = np.log(self.flux)
        if self.cov is None:
            self._w_diag = self.flux / self.sigma  # 1 / sigma of ln flux
            self._w = None
        else:  # whitening by the inverse Cholesky factor: K^-1 = W^T W
            chol = np.linalg.cholesky(self.cov)
            self._w = solve_triangular(chol, np.eye(chol.shape[0]), lower=True)
            self._w_diag = None
        self._q, self._r = np.linalg.qr(self.whiten(self.design))

    def whiten(self, values: np.ndarray) -> np.ndarray:
        """``W v`` for a vector or the columns of a matrix."""
        if self._w is not None:
            return self._w @ values
        return values * (self._w_diag[:, None] if values.ndim == 2 else self._w_diag)

    def linear(self, transit: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The detrending at this transit: (coefficients, whitened residuals of ln flux, R).

        The model is linear in the coefficients in ln flux, ``ln f = ln T + X c``, so they are
        a generalised least-squares solution, ``W X = Q R``; their covariance is
        ``R^-1 R^-T`` whatever the transit.
        """
        r = self.whiten(self._ln_flux - np.log(transit))
        proj = self._q.T @ r
        coef = np.linalg.solve(self._r, proj)
        return coef, r - self._q @ proj, self._r

    def log_prob(self, theta: np.ndarray) -> float:
        """log posterior with the detrending marginalised (flat priors): ``-chi2_min / 2`` (the
        determinant term is constant in the ln-flux model); the sampler's inner loop."""
        values = self.full(theta)
        if not self.in_bounds(values):
            return -np.inf
        inc = math.degrees(math.acos(values["b"] / (values["a_rs"] * self._orbit)))
        if self.fit_ld:
            root = math.sqrt(values["q1"])
            u1, u2 = 2.0 * root * values["q2"], root * (1.0 - 2.0 * values["q2"])
        else:
            u1, u2 = self.u_fixed
        transit = self.curve(values["t0"], values["rp_rs"], values["a_rs"], inc, u1, u2)
        r = self.whiten(self._ln_flux - np.log(transit))
        proj = self._q.T @ r
        return -0.5 * float(r @ r - proj @ proj)

    def residuals(self, theta: np.ndarray) -> np.ndarray:
        values = self.full(theta)
        if values["b"] >= 1.0 + values["rp_rs"]:  # least squares strays: no transit, flat model
            values["b"] = 1.0 + values["rp_rs"] - 1e-9
        return self.linear(self.transit(values))[1]


def _standardised(values: np.ndarray, used: np.ndarray) -> np.ndarray | None:
    """(v - mean) / std over the used points (NaN -> 0, the mean); None when constant."""
    v = np.asarray(values, float)
    good = used & np.isfinite(v)
    if good.sum() < 3:
        return None
    mean, std = float(v[good].mean()), float(v[good].std())
    if not std > 1e-12 * max(1.0, abs(mean)):
        return None
    return np.where(np.isfinite(v), (v - mean) / std, 0.0)


def _term_columns(
    dt: np.ndarray, regressors: Mapping[str, np.ndarray], used: np.ndarray
) -> tuple[dict[str, np.ndarray], list[str]]:
    """The standardised detrending terms available, and notes on those that are not."""
    columns: dict[str, np.ndarray] = {}
    notes = []
    for name in DETREND_TERMS:
        if name == "time":
            z = _standardised(dt, used)
        elif name == "time2":
            zt = _standardised(dt, used)
            z = None if zt is None else _standardised(zt**2, used)
        elif name in regressors:
            z = _standardised(regressors[name], used)
        else:
            continue
        if z is None:
            notes.append(f"detrending term {name!r} is constant or missing: not used")
        else:
            columns[name] = z
    return columns, notes


def _design(columns: Mapping[str, np.ndarray], terms: list[str], n: int) -> np.ndarray:
    return np.column_stack([np.ones(n), *[columns[t] for t in terms]])


def _bic_fit(problem: _Problem, start: Mapping[str, float]) -> tuple[float, np.ndarray]:
    """``n ln(RSS / n) + k ln n`` with the transit refitted (weighted RSS of ln flux)."""
    x, _ = _least_squares(problem, start)
    resid = problem.residuals(x)
    n = resid.size
    k = problem.design.shape[1] + len(problem.free)
    return float(n * math.log(max(resid @ resid, 1e-300) / n) + k * math.log(n)), x


def _select_terms(
    problem: _Problem,
    start: Mapping[str, float],
    columns: Mapping[str, np.ndarray],
    *,
    chosen: list[str],
    candidates: list[str],
) -> tuple[list[str], list[dict[str, Any]], np.ndarray]:
    """Forward selection of detrending terms on the BIC, the transit refitted for each trial
    (step 3): a term is judged after the transit has had its chance to absorb the trend.

    ``columns`` are the terms at the problem's points; ``chosen`` start in the model, the
    ``candidates`` are added one at a time. Returns the terms, the steps, and the transit
    parameters fitted with the chosen terms.
    """
    n_used = problem.flux.size
    chosen = [t for t in chosen if t in columns]
    current, x = _bic_fit(replace(problem, design=_design(columns, chosen, n_used)), start)
    steps = [{"terms": list(chosen), "bic": current}]
    while True:
        trials = {}
        for name in candidates:
            if name in columns and name not in chosen:
                design = _design(columns, [*chosen, name], n_used)
                trials[name] = _bic_fit(replace(problem, design=design), start)
        if not trials:
            break
        best = min(trials, key=lambda k: trials[k][0])
        if current - trials[best][0] <= BIC_MIN_DROP:
            break
        chosen.append(best)
        current, x = trials[best]
        steps.append({"terms": list(chosen), "bic": current})
    return chosen, steps, x


def _independent(columns: Mapping[str, np.ndarray], names: list[str]) -> tuple[list[str], list]:
    """``names`` without those (nearly) a linear combination of the ones before them (R^2 >
    0.999 against 1 and the earlier terms): the detrending stays well conditioned."""
    kept: list[str] = []
    notes = []
    for name in names:
        if name not in columns:
            continue
        z = columns[name]
        basis = np.column_stack([np.ones(z.size), *[columns[k] for k in kept]])
        fit = basis @ np.linalg.lstsq(basis, z, rcond=None)[0]
        r2 = 1.0 - float(np.sum((z - fit) ** 2)) / max(float(np.sum((z - z.mean()) ** 2)), 1e-300)
        if r2 > 0.999:
            notes.append(f"detrending term {name!r} follows {', '.join(kept)}: not used")
        else:
            kept.append(name)
    return kept, notes


# ---------------------------------------------------------------------------------------------
# the fit


def _coverage(dt: np.ndarray, t14: float, t23: float) -> Coverage:
    half14, half23 = 0.5 * t14, 0.5 * t23
    return Coverage(
        n_before=int(np.sum(dt < -half14)),
        n_ingress=int(np.sum((dt >= -half14) & (dt < -half23))),
        n_bottom=int(np.sum((dt >= -half23) & (dt <= half23))),
        n_egress=int(np.sum((dt > half23) & (dt <= half14))),
        n_after=int(np.sum(dt > half14)),
    )


def _free_parameters(coverage: Coverage, *, fit_ld: bool) -> tuple[list[str], dict[str, str]]:
    free = ["t0"]
    fixed: dict[str, str] = {}
    if coverage.has_baseline:
        free.append("rp_rs")
    else:
        fixed["rp_rs"] = (
            f"fewer than {MIN_BASELINE_POINTS} points out of transit: without a baseline the "
            "depth is degenerate with the normalisation; fixed to the given value"
        )
    if coverage.has_ingress and coverage.has_egress:
        free += ["a_rs", "b"]
    else:
        missing = [
            part
            for part, seen in (("ingress", coverage.has_ingress), ("egress", coverage.has_egress))
            if not seen
        ]
        why = (
            f"no {' and no '.join(missing)} observed (fewer than {MIN_CONTACT_POINTS} points): "
            "the duration and the impact parameter trade against the mid-time; fixed to the "
            "given values"
        )
        fixed["a_rs"] = fixed["b"] = fixed["inc_deg"] = why
    if fit_ld:
        free += ["q1", "q2"]
    else:
        fixed["q1"] = fixed["q2"] = fixed["u1"] = fixed["u2"] = "limb darkening given"
    return free, fixed


def _detrend_plan(
    detrend: str, coverage: Coverage, columns: Mapping[str, np.ndarray]
) -> tuple[list[str], list[str] | None]:
    """The detrending terms to start from, and those the BIC may add (None: no selection).

    "auto": every linear term, the BIC deciding on time2; without an out-of-transit baseline
    none, the BIC deciding on each (a trend there is the transit's ingress or egress). "bic":
    time, the BIC deciding on the rest. "none": the normalisation only. A list: those terms.
    """
    if detrend == "auto" and coverage.has_baseline:
        return list(LINEAR_TERMS), ["time2"]
    if detrend == "auto":
        return [], list(DETREND_TERMS)
    if detrend == "bic":
        return ["time"], list(DETREND_TERMS)
    if detrend == "none":
        return [], None
    asked = [s.strip() for s in detrend.split(",") if s.strip()]
    return [c for c in asked if c in columns], None


def _scan_t0(problem: _Problem, start: dict[str, float], window: float) -> float:
    """The mid-time of the best chi-square on a grid across the window, the shape as given."""
    best, best_dt0 = np.inf, 0.0
    for dt0 in np.linspace(-window, window, 61):
        values = {**start, "t0": float(dt0)}
        try:
            resid = problem.linear(problem.transit(values))[1]
        except np.linalg.LinAlgError:
            continue
        chi2 = float(resid @ resid)
        if chi2 < best:
            best, best_dt0 = chi2, float(dt0)
    return best_dt0


def _least_squares(problem: _Problem, start: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Best-fitting free parameters and their covariance (unscaled)."""
    x0 = np.array([start[n] for n in problem.free], float)
    lower = np.array([problem.bounds[n][0] for n in problem.free])
    upper = np.array([problem.bounds[n][1] for n in problem.free])
    x0 = np.clip(x0, lower + 1e-9 * (upper - lower), upper - 1e-9 * (upper - lower))
    scale = np.array([_STEP[n] for n in problem.free])
    result = least_squares(
        problem.residuals, x0, bounds=(lower, upper), x_scale=scale, method="trf"
    )
    jac = result.jac
    cov = np.linalg.pinv(jac.T @ jac)
    return result.x, cov


_STEP = {"t0": 1e-3, "rp_rs": 1e-3, "a_rs": 0.1, "b": 0.02, "q1": 0.05, "q2": 0.05}
"""Typical scales of the parameters (for least squares and the walkers' starting ball)."""


def _clip(flux, model, used, candidates, clip_sigma):
    """The candidates within ``clip_sigma`` robust standard deviations (of the used points'
    residuals) of the model: a point clipped by an earlier, worse model may come back."""
    resid = flux - model
    centre = np.median(resid[used])
    scatter = 1.4826 * np.median(np.abs(resid[used] - centre))
    if not scatter > 0:
        return used
    return candidates & (np.abs(resid - centre) <= clip_sigma * scatter)


def fit_transit(
    time: ArrayLike,
    flux: ArrayLike,
    flux_err: ArrayLike,
    *,
    planet: PlanetParameters,
    regressors: Mapping[str, ArrayLike] | None = None,
    flagged: ArrayLike | None = None,
    options: TransitConfig = TransitConfig(),
) -> TransitFit:
    """`fit_transit`, on the thread it was called on (see there)."""
    planet.check()
    t = np.asarray(time, float)
    f = np.asarray(flux, float)
    e = np.asarray(flux_err, float)
    n = t.size
    regressors = {k: np.asarray(v, float) for k, v in (regressors or {}).items()}
    for name, values in regressors.items():
        if name not in DETREND_TERMS or name in ("time", "time2"):
            raise ValueError(f"unknown detrending quantity {name!r}: give {DETREND_TERMS[:5]}")
        if values.shape != t.shape:
            raise ValueError(f"regressor {name!r} has {values.size} values for {n} points")
    missing = ~(np.isfinite(t) & np.isfinite(f) & np.isfinite(e) & (e > 0) & (f > 0))
    bad = np.zeros(n, bool) if flagged is None else np.asarray(flagged, bool) & ~missing
    used = ~missing & ~bad
    if used.sum() < 10:
        raise ValueError(f"fit_transit needs at least 10 usable points, got {int(used.sum())}")
    notes: list[str] = []

    shape = planet.shape()
    period = shape.period_d
    epoch = round((float(np.median(t[used])) - float(planet.t0)) / period)
    t_pred = float(planet.t0) + epoch * period
    t_pred_err = math.nan
    if planet.t0_err is not None:
        t_pred_err = math.hypot(planet.t0_err, epoch * (planet.period_err or 0.0))
    dt = np.where(np.isfinite(t), t - t_pred, 0.0)
    b_given = float(impact_parameter(shape.a_rs, shape.inc_deg, ecc=shape.ecc, w_deg=shape.w_deg))
    t14 = float(total_duration_d(period, shape.rp_rs, shape.a_rs, b_given))
    if not t14 > 0:
        raise ValueError(
            f"the given shape makes no transit (Rp/Rs {shape.rp_rs}, a/Rs {shape.a_rs}, "
            f"i {shape.inc_deg} deg: b = {b_given:.2f}); check the inclination"
        )
    t23 = float(full_duration_d(period, shape.rp_rs, shape.a_rs, b_given))
    window = max(0.5 * t14, 3.0 * (t_pred_err if np.isfinite(t_pred_err) else 0.0), 0.02)
    span = (dt[used].min(), dt[used].max())
    if span[1] < -0.5 * t14 - window or span[0] > 0.5 * t14 + window:
        raise ValueError(
            f"the points ({t[used].min():.5f}-{t[used].max():.5f} BJD_TDB) miss the transit "
            f"predicted at {t_pred:.5f} (T14 {24 * t14:.2f} h): check the ephemeris"
        )

    u_given = planet.u
    fit_ld = options.fit_limb_darkening or u_given is None
    if u_given is None:
        notes.append("no limb darkening given: fitted (Kipping 2013 q1, q2, uniform priors)")
    q_start = u_to_q(*(u_given or shape.u))
    start = {
        "t0": 0.0,
        "rp_rs": shape.rp_rs,
        "a_rs": shape.a_rs,
        "b": b_given,
        "q1": float(np.clip(q_start[0], 0.01, 0.99)),
        "q2": float(np.clip(q_start[1], 0.01, 0.99)),
    }
    bounds = {
        "t0": (-window, window),
        "rp_rs": (0.005, 0.5),
        "a_rs": (1.2, 200.0),
        "b": (0.0, 1.5),
        "q1": (0.0, 1.0),
        "q2": (0.0, 1.0),
    }
    columns, term_notes = _term_columns(dt, regressors, used)
    notes += term_notes

    def problem_for(mask: np.ndarray, terms: list[str], free: list[str], sigma: np.ndarray):
        fixed_values = {k: v for k, v in start.items() if k not in free}
        return _Problem(
            curve=TransitCurve(dt[mask], period_d=period, ecc=shape.ecc, w_deg=shape.w_deg),
            flux=f[mask],
            sigma=sigma[mask],
            design=_design({k: v[mask] for k, v in columns.items()}, terms, int(mask.sum())),
            free=free,
            fixed_values=fixed_values,
            bounds=bounds,
            ecc=shape.ecc,
            w_deg=shape.w_deg,
            fit_ld=fit_ld,
            u_fixed=tuple(u_given or shape.u),
        )

    # 1. place the transit (with a constant and a linear trend), then judge what is covered
    simple = [c for c in ("time",) if c in columns]
    start["t0"] = _scan_t0(problem_for(used, simple, ["t0"], e), start, window)
    coverage = _coverage(dt[used] - start["t0"], t14, t23)
    free, fixed = _free_parameters(coverage, fit_ld=fit_ld)
    base, others = _detrend_plan(options.detrend, coverage, columns)
    if options.detrend == "auto" and not coverage.has_baseline:
        notes.append(
            "no out-of-transit baseline: any detrending term trades against the transit, so "
            "terms enter only when they lower the BIC by more than 2"
        )
    terms, collinear = _independent({k: v[used] for k, v in columns.items()}, base)

    # 2-3. least squares, clipping and the detrending terms, until nothing changes
    candidates = ~missing & ~bad

    def fit_steps(free, base, others, terms, collinear, used):
        selection: list[dict[str, Any]] = []
        x = np.array([start[k] for k in free])
        for _ in range(5):
            problem = problem_for(used, terms, free, e)
            x, _ = _least_squares(problem, {**start, **dict(zip(free, x, strict=True))})
            values = problem.full(x)
            transit = problem.transit(values)
            coef = problem.linear(transit)[0]
            evaluate = problem_for(~missing, terms, free, np.where(missing, 1.0, e))
            model = np.full(n, np.nan)
            model[~missing] = evaluate.transit(values) * np.exp(evaluate.design @ coef)
            new_used = _clip(f, model, used, candidates, options.clip_sigma)
            new_terms = terms
            if others is not None:
                problem = problem_for(new_used, terms, free, e)
                at_used = {k: v[new_used] for k, v in columns.items()}
                chosen, collinear = _independent(at_used, base)
                new_terms, selection, x = _select_terms(
                    problem, values, at_used, chosen=chosen, candidates=others
                )
            if np.array_equal(new_used, used) and new_terms == terms:
                break
            used, terms = new_used, new_terms
        return x, used, terms, selection, collinear

    first_used = used
    x, used, terms, selection, collinear = fit_steps(free, base, others, terms, collinear, used)
    # the coverage judged again at the fitted mid-time: the scan's grid (step 1) may place the
    # transit wrongly by a part of T14 on a noisy night, and what is then freed or fixed is wrong
    t0_fitted = float(problem_for(used, terms, free, e).full(x)["t0"])
    again = _coverage(dt[first_used] - t0_fitted, t14, t23)
    again_free, again_fixed = _free_parameters(again, fit_ld=fit_ld)
    if again_free != free:
        notes.append(
            f"the coverage judged at the scanned mid-time ({coverage.describe()}) changed at the "
            f"fitted one ({again.describe()}): fitted again with {', '.join(again_free)} free"
        )
        coverage, free, fixed = again, again_free, again_fixed
        start["t0"] = t0_fitted
        base, others = _detrend_plan(options.detrend, coverage, columns)
        terms, collinear = _independent({k: v[first_used] for k, v in columns.items()}, base)
        x, used, terms, selection, collinear = fit_steps(
            free, base, others, terms, collinear, first_used
        )
    notes += collinear
    problem = problem_for(used, terms, free, e)
    _, wresid, _ = problem.linear(problem.transit(problem.full(x)))
    dof = max(int(used.sum()) - len(free) - problem.design.shape[1], 1)
    chi2_red = float(wresid @ wresid / dof)
    beta = red_noise_beta(t[used], wresid * e[used] / f[used])

    # 4. the noise model, jointly with the transit (alternately), then the posterior
    noise = NoiseModel(math.sqrt(chi2_red), 0.0, 10.0)
    for _ in range(2):
        simple = _design(
            {k: v[used] for k, v in columns.items()}, [c for c in ("time",) if c in columns],
            int(used.sum()),
        )  # fmt: skip
        resid_ln = np.log(f[used]) - np.log(problem.transit(problem.full(x)))
        noise = fit_noise_model(resid_ln, simple, e[used] / f[used], t[used])
        cov_ln = noise.covariance(t[used], e[used] / f[used])
        problem = replace(problem, cov=cov_ln)
        x, cov = _least_squares(problem, problem.full(x))
    samples, chain, chain_notes = _sample(problem, x, cov, options)
    notes += chain_notes
    sigma = np.full(n, np.nan)
    sigma[used] = np.sqrt(np.diagonal(cov_ln)) * f[used]
    return _summarise(
        problem=problem,
        samples=samples,
        chain=chain,
        planet=planet,
        shape_start=start,
        free=free,
        fixed=fixed,
        terms=terms,
        selection=selection,
        coverage=coverage,
        epoch=epoch,
        t_pred=t_pred,
        t_pred_err=t_pred_err,
        arrays={"t": t, "f": f, "e": e, "dt": dt, "sigma": sigma, "columns": columns},
        masks={"used": used, "missing": missing, "flagged": bad},
        regressors=regressors,
        noise=noise,
        beta=beta,
        chi2_red=chi2_red,
        notes=notes,
    )


def _sample(
    problem: _Problem, x: np.ndarray, cov: np.ndarray, options: TransitConfig
) -> tuple[np.ndarray, ChainSummary, list[str]]:
    """Run emcee from a ball around the least-squares solution until converged (step 4)."""
    import emcee

    ndim = len(problem.free)
    walkers = max(options.walkers, 2 * ndim + 2)
    rng = np.random.default_rng(options.seed)
    lower = np.array([problem.bounds[k][0] for k in problem.free])
    upper = np.array([problem.bounds[k][1] for k in problem.free])
    spread = np.sqrt(np.clip(np.diag(cov), 0, None))
    typical = np.array([_STEP[k] for k in problem.free])
    spread = np.where(np.isfinite(spread) & (spread > 0), np.minimum(spread, 10 * typical), typical)
    start = []
    while len(start) < walkers:
        trial = x + 0.5 * spread * rng.standard_normal(ndim)
        trial = np.clip(trial, lower + 1e-6 * (upper - lower), upper - 1e-6 * (upper - lower))
        if np.isfinite(problem.log_prob(trial)):
            start.append(trial)
        elif len(start) == 0 and rng.random() < 0.01:
            start.append(x)
    moves = [(emcee.moves.DEMove(), 0.8), (emcee.moves.DESnookerMove(), 0.2)]
    sampler = emcee.EnsembleSampler(walkers, ndim, problem.log_prob, moves=moves)
    sampler.random_state = np.random.RandomState(options.seed).get_state()
    check_every = max(100, min(1000, options.min_steps // 2))
    old_tau = np.full(ndim, np.inf)
    converged = False
    tau = np.full(ndim, np.nan)
    for _ in sampler.sample(np.array(start), iterations=options.max_steps):
        steps = sampler.iteration
        if steps % check_every:
            continue
        tau = sampler.get_autocorr_time(tol=0)
        stable = np.all(np.abs(old_tau - tau) < 0.05 * tau)
        long_enough = np.all(options.autocorr_factor * tau < steps)
        old_tau = tau
        if steps >= options.min_steps and long_enough and stable:
            converged = True
            break
    steps = sampler.iteration
    if not np.all(np.isfinite(tau)):
        tau = sampler.get_autocorr_time(tol=0)
    tau_max = float(np.nanmax(tau)) if np.any(np.isfinite(tau)) else steps / 10
    burn = int(min(2 * tau_max, steps // 2))
    thin = max(1, int(0.5 * np.nanmin(tau))) if np.any(np.isfinite(tau)) else 1
    samples = sampler.get_chain(discard=burn, thin=thin, flat=True)
    notes = []
    if not converged:
        notes.append(
            f"the chain did not converge in {steps} steps (autocorrelation time up to "
            f"{tau_max:.0f} steps, {options.autocorr_factor:g} needed): errors are rough; "
            "raise transit.max_steps"
        )
    summary = ChainSummary(
        walkers=walkers,
        steps=int(steps),
        burn=burn,
        thin=thin,
        n_samples=int(samples.shape[0]),
        tau={k: float(v) for k, v in zip(problem.free, tau, strict=True)},
        converged=converged,
        autocorr_factor=options.autocorr_factor,
        acceptance=float(np.mean(sampler.acceptance_fraction)),
    )
    return samples, summary, notes


def _estimate(name: str, draws: np.ndarray, status: str, note: str = "") -> ParameterEstimate:
    low, mid, high = np.percentile(draws, [15.865, 50.0, 84.135])
    return ParameterEstimate(
        name=name,
        value=float(mid),
        minus=float(mid - low),
        plus=float(high - mid),
        status=status,
        unit=UNITS.get(name, ""),
        note=note,
    )


def _summarise(
    *,
    problem,
    samples,
    chain,
    planet,
    shape_start,
    free,
    fixed,
    terms,
    selection,
    coverage,
    epoch,
    t_pred,
    t_pred_err,
    arrays,
    masks,
    regressors,
    noise,
    beta,
    chi2_red,
    notes,
) -> TransitFit:
    """Posterior estimates, derived quantities, the points' model and residuals."""
    draws = {k: np.full(samples.shape[0], float(v)) for k, v in shape_start.items()}
    for i, name in enumerate(free):
        draws[name] = samples[:, i]
    ecc, w = problem.ecc, problem.w_deg
    draws["inc_deg"] = inclination_deg(draws["a_rs"], draws["b"], ecc=ecc, w_deg=w)
    if problem.fit_ld:
        draws["u1"], draws["u2"] = q_to_u(draws["q1"], draws["q2"])
    else:
        draws["u1"] = np.full(samples.shape[0], problem.u_fixed[0])
        draws["u2"] = np.full(samples.shape[0], problem.u_fixed[1])
    draws["depth"] = draws["rp_rs"] ** 2
    period = planet.period_d
    draws["t14_h"] = 24.0 * total_duration_d(
        period, draws["rp_rs"], draws["a_rs"], draws["b"], ecc=ecc, w_deg=w
    )
    dt0 = draws["t0"].copy()
    draws["o_minus_c_min"] = 1440.0 * dt0
    draws["t0"] = t_pred + dt0

    derived_from = {
        "inc_deg": ("a_rs", "b"),
        "u1": ("q1", "q2"),
        "u2": ("q1", "q2"),
        "depth": ("rp_rs",),
        "t14_h": ("rp_rs", "a_rs", "b"),
        "o_minus_c_min": ("t0",),
    }
    priors = {
        "t0": "uniform within the window around the prediction",
        "rp_rs": "uniform [0.005, 0.5]",
        "a_rs": "uniform [1.2, 200]",
        "b": "uniform [0, 1 + Rp/Rs)",
        "q1": "uniform [0, 1] (Kipping 2013)",
        "q2": "uniform [0, 1] (Kipping 2013)",
    }
    parameters: dict[str, ParameterEstimate] = {}
    order = ("t0", "o_minus_c_min", "rp_rs", "depth", "a_rs", "b", "inc_deg", "t14_h")
    order += ("q1", "q2", "u1", "u2")
    for name in order:
        if name in free:
            parameters[name] = _estimate(name, draws[name], "free", priors[name])
        elif name in derived_from and any(p in free for p in derived_from[name]):
            note = "from " + ", ".join(derived_from[name])
            if name == "o_minus_c_min":
                note = f"against the ephemeris's {t_pred:.5f} BJD_TDB (epoch {epoch})"
            parameters[name] = _estimate(name, draws[name], "derived", note)
        else:
            value = float(np.median(draws[name]))
            parameters[name] = ParameterEstimate(
                name, value, status="fixed", unit=UNITS.get(name, ""), note=fixed.get(name, "")
            )
    if np.isfinite(t_pred_err):
        oc = parameters["o_minus_c_min"]
        parameters["o_minus_c_min"] = ParameterEstimate(
            oc.name, oc.value, oc.minus, oc.plus, oc.status, oc.unit,
            oc.note + f"; the prediction's own error {1440 * t_pred_err:.2f} min",
        )  # fmt: skip

    # detrending coefficients: Gaussian conditional draws at (up to) 2000 samples
    rng = np.random.default_rng(0)
    pick = rng.choice(samples.shape[0], size=min(2000, samples.shape[0]), replace=False)
    coef_draws = []
    for i in pick:
        values = problem.full(samples[i])
        coef, _, r = problem.linear(problem.transit(values))
        coef_draws.append(coef + np.linalg.solve(r, rng.standard_normal(coef.size)))
    coef_draws = np.array(coef_draws)
    detrend = {"norm": _estimate("norm", np.exp(coef_draws[:, 0]), "free", "exp(c0)")}
    for i, name in enumerate(terms, start=1):
        note = f"ln flux per standard deviation of {name} over the fitted points"
        detrend[name] = _estimate(name, coef_draws[:, i], "free", note)

    # the model at the posterior medians, for every point with data
    t, f, e, dt = arrays["t"], arrays["f"], arrays["e"], arrays["dt"]
    used, missing, flagged = masks["used"], masks["missing"], masks["flagged"]
    medians = {k: float(np.median(draws[k])) for k in SAMPLED if k != "t0"}
    medians["t0"] = float(np.median(dt0))
    coef, _, _ = problem.linear(problem.transit(medians))
    have = ~missing
    curve = TransitCurve(dt[have], period_d=period, ecc=ecc, w_deg=w)
    full = _Problem(
        curve, f[have], e[have],
        _design({k: v[have] for k, v in arrays["columns"].items()}, terms, int(have.sum())),
        free, problem.fixed_values, problem.bounds, ecc, w, problem.fit_ld, problem.u_fixed,
    )  # fmt: skip
    transit = np.full(t.size, np.nan)
    systematics = np.full(t.size, np.nan)
    transit[have] = full.transit(medians)
    systematics[have] = np.exp(full.design @ coef)
    model = transit * systematics
    status = np.where(missing, "missing", np.where(flagged, "flagged", "used"))
    status = np.where(~missing & ~flagged & ~used, "clipped", status)
    points = pd.DataFrame(
        {
            "time": t,
            "flux": f,
            "flux_err": e,
            "err_used": np.where(used, arrays["sigma"], np.nan),
            "status": status,
            "transit": transit,
            "systematics": systematics,
            "model": model,
            "detrended": f / systematics,
            "residual": f - model,
            **{name: values for name, values in regressors.items()},
        }
    )
    resid = (f - model)[used]
    rms = float(np.std(resid))
    rms_10, white_10, _ = binned_scatter(t[used], resid, bin_minutes=10.0)
    sample_table = pd.DataFrame({k: draws[k] for k in order})
    return TransitFit(
        planet=planet,
        parameters=parameters,
        detrend=detrend,
        detrend_terms=tuple(terms),
        detrend_selection=selection,
        fixed={k: v for k, v in fixed.items() if k in parameters},
        coverage=coverage,
        epoch=epoch,
        t_predicted=t_pred,
        t_predicted_err=t_pred_err,
        rms=rms,
        rms_10min=rms_10,
        rms_10min_white=white_10,
        noise=noise,
        beta=beta,
        chi2_red=chi2_red,
        n_points=int(used.sum()),
        n_flagged=int(flagged.sum()),
        n_clipped=int((~missing & ~flagged & ~used).sum()),
        n_missing=int(missing.sum()),
        chain=chain,
        points=points,
        samples=sample_table,
        notes=notes,
    )
