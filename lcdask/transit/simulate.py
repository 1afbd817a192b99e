"""Simulated transit nights with their truth, for the tests and the benchmark.

`simulated_transit_night` draws one night of a small telescope's relative photometry of a star
with a transiting planet: a batman transit (depth 0.5-3%), an airmass curve with a residual
extinction trend (the comparison stars' colour), a drift across the detector over an imperfect
flat (a gradient in x and y), seeing changes that move flux out of the aperture, white noise
and red noise (an Ornstein-Uhlenbeck process). The transit is seen whole or in part: the night
may start after ingress or end before egress.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lcdask.transit.model import TransitShape, inclination_deg, total_duration_d, transit_model
from lcdask.transit.planet import PlanetParameters

__all__ = ["SimulatedNight", "simulated_transit_night"]

COVERAGES = ("full", "ingress", "egress")
"""The parts of a transit a simulated night covers: all of it with baseline on both sides; from
before ingress to past mid-transit (no egress); from before mid-transit to after egress."""


@dataclass(frozen=True)
class SimulatedNight:
    """A simulated night and its truth.

    Attributes
    ----------
    time, flux, flux_err : numpy.ndarray
        BJD_TDB, relative flux, and the error a pipeline would give (the white noise's).
    regressors : dict
        ``airmass``, ``x``, ``y``, ``fwhm`` per point.
    truth : PlanetParameters
        The injected planet (t0 is this night's mid-time).
    coverage : str
        One of `COVERAGES`.
    white, red : float
        Standard deviation of the white noise and of the red noise (relative flux).
    """

    time: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    regressors: dict[str, np.ndarray]
    truth: PlanetParameters
    coverage: str
    white: float
    red: float

    @property
    def depth(self) -> float:
        """The true (Rp/Rs)^2."""
        return float(self.truth.rp_rs) ** 2


def simulated_transit_night(
    seed: int,
    *,
    coverage: str | None = None,
    depth: float | None = None,
    n_points: int | None = None,
    cadence_s: float | None = None,
    red_fraction: float | None = None,
    systematics: bool = True,
) -> SimulatedNight:
    """Draw a night (module docstring); parameters not given are drawn from the seed.

    Parameters
    ----------
    seed : int
    coverage : {"full", "ingress", "egress"}, optional
    depth : float, optional
        (Rp/Rs)^2; drawn in [0.005, 0.03].
    n_points : int, optional
        Points of the night (with ``cadence_s`` it sets the night's length).
    cadence_s : float, optional
        Time between points (s); drawn in [60, 120].
    red_fraction : float, optional
        Red noise's standard deviation over the white noise's; drawn in [0, 0.4].
    systematics : bool, optional
        False: no extinction, flat-field or seeing effects (the draws are made all the same,
        so that the rest of the night is unchanged).

    Returns
    -------
    SimulatedNight
    """
    rng = np.random.default_rng(seed)
    coverage = coverage or COVERAGES[seed % 3]
    if coverage not in COVERAGES:
        raise ValueError(f"coverage must be one of {COVERAGES}, not {coverage!r}")
    depth = depth if depth is not None else rng.uniform(0.005, 0.03)
    rp = float(np.sqrt(depth))
    period = rng.uniform(1.5, 5.0)
    a_rs = rng.uniform(6.0, 14.0)
    b = rng.uniform(0.0, 0.7)
    inc = float(inclination_deg(a_rs, b))
    u = (rng.uniform(0.2, 0.5), rng.uniform(0.1, 0.3))
    shape = TransitShape(period, rp, a_rs, inc, u)
    t14 = float(total_duration_d(period, rp, a_rs, b))
    cadence = (cadence_s or rng.uniform(60.0, 120.0)) / 86400.0
    t_mid = 2460000.5 + rng.uniform(0.0, 300.0)
    if coverage == "full":
        start, end = (
            t_mid - 0.5 * t14 - rng.uniform(0.04, 0.08),
            t_mid + 0.5 * t14 + rng.uniform(0.04, 0.08),
        )
    elif coverage == "ingress":
        start, end = (
            t_mid - 0.5 * t14 - rng.uniform(0.04, 0.08),
            t_mid + rng.uniform(0.0, 0.2) * t14,
        )
    else:
        start, end = (
            t_mid - rng.uniform(0.0, 0.2) * t14,
            t_mid + 0.5 * t14 + rng.uniform(0.04, 0.08),
        )
    if n_points is not None:
        length = (n_points - 1) * cadence
        centre = 0.5 * (start + end)
        start, end = centre - 0.5 * length, centre + 0.5 * length
    time = np.arange(start, end + 0.5 * cadence, cadence)
    time = time + rng.normal(0, 0.05 * cadence, time.size)  # readout jitter
    n = time.size
    phase = (time - time.mean()) / max(np.ptp(time), 1e-9)

    # airmass: the star crossing the meridian within 1.5 h of the night's middle (above
    # airmass ~2.4, as an observer would plan it)
    hours = 24 * (time - time.mean())
    hour_angle = hours + rng.uniform(-1.5, 1.5)
    dec, lat = np.radians(rng.uniform(0, 60)), np.radians(32.0)
    sin_alt = np.sin(lat) * np.sin(dec) + np.cos(lat) * np.cos(dec) * np.cos(
        np.radians(15 * hour_angle)
    )
    airmass = 1.0 / np.clip(sin_alt, 0.2, 1.0)
    k_colour = rng.uniform(-0.02, 0.02)  # mag per airmass left by the comparison stars
    extinction = 10 ** (-0.4 * k_colour * (airmass - airmass.mean()))
    # drift over an imperfect flat, and seeing
    x = 500 + rng.uniform(-30, 30) * phase + rng.normal(0, 0.3, n)
    y = 500 + rng.uniform(-30, 30) * phase + rng.normal(0, 0.3, n)
    flat = 1 + rng.uniform(-2e-4, 2e-4) * (x - 500) + rng.uniform(-2e-4, 2e-4) * (y - 500)
    fwhm = 3.0 + np.cumsum(rng.normal(0, 0.05, n))
    fwhm = np.clip(fwhm - fwhm.mean() + rng.uniform(2.5, 4.0), 1.5, None)
    aperture_loss = 1 - rng.uniform(0.0, 2e-3) * (fwhm - fwhm.mean())
    white = rng.uniform(0.001, 0.004)
    red = rng.uniform(0.0, 0.4) * white
    if red_fraction is not None:
        red = red_fraction * white
    tau_red = rng.uniform(10.0, 30.0) / 1440.0
    noise_red = np.zeros(n)
    for i in range(1, n):
        rho = np.exp(-(time[i] - time[i - 1]) / tau_red)
        noise_red[i] = rho * noise_red[i - 1] + np.sqrt(1 - rho**2) * rng.normal(0, red)
    noise_red[0] = rng.normal(0, red) if n else 0.0
    transit = transit_model(time, t_mid, shape)
    norm = rng.uniform(0.98, 1.02)
    flux = norm * transit * (extinction * flat * aperture_loss if systematics else 1.0)
    flux = flux + rng.normal(0, white, n) + noise_red
    flux_err = np.full(n, white) * rng.uniform(0.8, 1.2)  # the pipeline's estimate, off by 20%
    truth = PlanetParameters(
        name="simulated b",
        t0=t_mid,
        t0_err=0.0,
        period_d=period,
        period_err=0.0,
        rp_rs=rp,
        a_rs=a_rs,
        inc_deg=inc,
        u=u,
        source="simulation",
    )
    regressors = {"airmass": airmass, "x": x, "y": y, "fwhm": fwhm}
    return SimulatedNight(time, flux, flux_err, regressors, truth, coverage, white, red)
