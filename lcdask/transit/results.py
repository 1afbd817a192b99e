"""What a transit fit gives: parameters with errors, the coverage, the chain, the points."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from lcdask.transit.noise import NoiseModel
from lcdask.transit.planet import PlanetParameters

__all__ = [
    "MIN_BASELINE_POINTS",
    "MIN_CONTACT_POINTS",
    "UNITS",
    "ChainSummary",
    "Coverage",
    "ParameterEstimate",
    "TransitFit",
]

MIN_CONTACT_POINTS = 3
"""Points needed in ingress and in egress for a/Rs and b to be fitted."""

MIN_BASELINE_POINTS = 5
"""Points needed out of transit for Rp/Rs to be fitted."""

UNITS = {
    "t0": "BJD_TDB", "rp_rs": "", "a_rs": "", "b": "", "q1": "", "q2": "", "inc_deg": "deg",
    "depth": "", "t14_h": "h", "u1": "", "u2": "", "o_minus_c_min": "min",
}  # fmt: skip
"""Units of the parameters."""


@dataclass(frozen=True)
class ParameterEstimate:
    """One parameter: the posterior median and its 1-sigma interval, or a fixed value.

    Attributes
    ----------
    name : str
    value : float
        Posterior median (or the fixed value).
    minus, plus : float
        Median minus the 16th percentile, 84th percentile minus the median (0 when fixed).
    status : {"free", "fixed", "derived"}
        Sampled, fixed, or computed from the sampled ones.
    unit : str
    note : str
        Why it is fixed, or its prior.
    """

    name: str
    value: float
    minus: float = 0.0
    plus: float = 0.0
    status: str = "free"
    unit: str = ""
    note: str = ""

    @property
    def error(self) -> float:
        """The mean of the two sides."""
        return 0.5 * (self.minus + self.plus)


@dataclass(frozen=True)
class Coverage:
    """Which parts of the transit the night's points cover (counts of fitted points).

    Attributes
    ----------
    n_before, n_ingress, n_bottom, n_egress, n_after : int
        Points before first contact, between first and second, between second and third,
        between third and fourth, after fourth.
    """

    n_before: int
    n_ingress: int
    n_bottom: int
    n_egress: int
    n_after: int

    @property
    def has_ingress(self) -> bool:
        return self.n_ingress >= MIN_CONTACT_POINTS

    @property
    def has_egress(self) -> bool:
        return self.n_egress >= MIN_CONTACT_POINTS

    @property
    def has_baseline(self) -> bool:
        return self.n_before + self.n_after >= MIN_BASELINE_POINTS

    @property
    def full(self) -> bool:
        """Both contacts pairs and a baseline: every shape parameter can be fitted."""
        return self.has_ingress and self.has_egress and self.has_baseline

    def describe(self) -> str:
        """One line: what was observed."""
        parts = [
            f"{self.n_before} points before ingress",
            f"{self.n_ingress} in ingress",
            f"{self.n_bottom} on the bottom",
            f"{self.n_egress} in egress",
            f"{self.n_after} after egress",
        ]
        return ("full transit: " if self.full else "partial transit: ") + ", ".join(parts)


@dataclass(frozen=True)
class ChainSummary:
    """How the posterior was sampled.

    Attributes
    ----------
    walkers, steps, burn, thin, n_samples : int
        Walkers, steps run, steps discarded, thinning, samples kept (all walkers).
    tau : dict
        Integrated autocorrelation time of each sampled parameter (steps).
    converged : bool
        Steps above ``autocorr_factor`` times every tau, the estimate stable to 1%.
    autocorr_factor : float
        The factor required.
    acceptance : float
        Mean acceptance fraction.
    """

    walkers: int
    steps: int
    burn: int
    thin: int
    n_samples: int
    tau: dict[str, float]
    converged: bool
    autocorr_factor: float
    acceptance: float


@dataclass(frozen=True)
class TransitFit:
    """A fitted transit: parameters with errors, the detrending, the points and the chain.

    Attributes
    ----------
    planet : PlanetParameters
        What was known beforehand.
    parameters : dict of str to ParameterEstimate
        t0 (BJD_TDB), rp_rs, a_rs, b, inc_deg, q1, q2, u1, u2, depth ((Rp/Rs)^2), t14_h and,
        with an ephemeris, o_minus_c_min.
    detrend : dict of str to ParameterEstimate
        ``c0`` (the normalisation) and one coefficient per chosen term (relative flux per
        standard deviation of the term over the fitted points).
    detrend_terms : tuple of str
        The chosen terms.
    detrend_selection : list of dict
        The BIC of each step of the selection (``terms``, ``bic``).
    fixed : dict of str to str
        Fixed parameters and why.
    coverage : Coverage
    epoch : int
        Transits since the ephemeris's t0.
    t_predicted, t_predicted_err : float
        The ephemeris's mid-time for this epoch (BJD_TDB) and its error (days, NaN if unknown).
    rms : float
        Residual scatter per point (relative flux, fitted points).
    rms_10min : float
        Scatter of the residuals binned in 10-minute bins (NaN with fewer than 3 bins).
    rms_10min_white : float
        What white noise of scatter ``rms`` would give in those bins.
    noise : NoiseModel
        The fitted noise: the given errors' scale and the correlated noise.
    beta : float
        The red-noise factor of the time-averaging method on the white-noise fit's residuals
        (Winn et al. 2008; a diagnostic: the correlated noise is modelled by ``noise``).
    chi2_red : float
        Reduced chi-square of the white-noise least-squares fit with the given errors.
    n_points, n_flagged, n_clipped, n_missing : int
        Points fitted, left out for the run's flags, clipped as outliers, not finite.
    chain : ChainSummary
    points : pandas.DataFrame
        One row per input point: ``time``, ``flux``, ``flux_err``, ``err_used``, ``status``
        ("used", "flagged", "clipped", "missing"), ``transit``, ``systematics``, ``model``,
        ``detrended`` (flux / systematics), ``residual`` (flux - model), and the detrending
        quantities given.
    samples : pandas.DataFrame
        The posterior samples of every parameter (sampled and derived).
    notes : list of str
        Anything the user should know (terms not available, the chain not converged...).
    """

    planet: PlanetParameters
    parameters: dict[str, ParameterEstimate]
    detrend: dict[str, ParameterEstimate]
    detrend_terms: tuple[str, ...]
    detrend_selection: list[dict[str, Any]]
    fixed: dict[str, str]
    coverage: Coverage
    epoch: int
    t_predicted: float
    t_predicted_err: float
    rms: float
    rms_10min: float
    rms_10min_white: float
    noise: NoiseModel
    beta: float
    chi2_red: float
    n_points: int
    n_flagged: int
    n_clipped: int
    n_missing: int
    chain: ChainSummary
    points: pd.DataFrame = field(repr=False)
    samples: pd.DataFrame = field(repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def t0(self) -> float:
        """The fitted mid-time (BJD_TDB)."""
        return self.parameters["t0"].value

    @property
    def t0_err(self) -> float:
        """Its 1-sigma error (days; the mean of the two sides)."""
        return self.parameters["t0"].error

    def as_record(self) -> dict[str, Any]:
        """Plain data for JSON (without the points and samples)."""
        return {
            "planet": self.planet.as_record(),
            "parameters": {k: asdict(v) for k, v in self.parameters.items()},
            "detrend": {k: asdict(v) for k, v in self.detrend.items()},
            "detrend_terms": list(self.detrend_terms),
            "detrend_selection": self.detrend_selection,
            "fixed": self.fixed,
            "coverage": {**asdict(self.coverage), "summary": self.coverage.describe()},
            "epoch": self.epoch,
            "t_predicted": self.t_predicted,
            "t_predicted_err": _finite_or_none(self.t_predicted_err),
            "rms": self.rms,
            "rms_10min": _finite_or_none(self.rms_10min),
            "rms_10min_white": _finite_or_none(self.rms_10min_white),
            "noise": asdict(self.noise),
            "beta": self.beta,
            "chi2_red": self.chi2_red,
            "n_points": self.n_points,
            "n_flagged": self.n_flagged,
            "n_clipped": self.n_clipped,
            "n_missing": self.n_missing,
            "chain": asdict(self.chain),
            "notes": list(self.notes),
            "time_scale": "BJD_TDB",
        }


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
