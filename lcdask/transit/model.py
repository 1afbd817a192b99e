"""The limb-darkened transit model and the geometry a transit fit needs.

The model is Mandel & Agol (2002)'s quadratically limb-darkened transit through the ``batman``
package (Kreidberg 2015). `transit_model` evaluates it once; `TransitCurve` holds one batman model
for a fixed set of times and re-evaluates it for new parameters (what a sampler calls thousands
of times: about 30 microseconds for 200 points). The geometry (impact parameter, inclination,
the durations T14 and T23 of Winn 2010, eqs. 14-16) and Kipping (2013)'s ``q1, q2``
parameterisation of the limb darkening, in which a uniform prior on the unit square is an
uninformative prior on the physically allowed ``u1, u2``, are plain functions of arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from lcdask.lightcurves import BAD_FOR_FLUX, LightCurveFlag

TRANSIT_BAD = BAD_FOR_FLUX & ~LightCurveFlag.MASKED
"""Flags that keep a point out of a transit fit: those bad for flux (blended, saturated, at the
edge, a cosmic ray, an artefact), but not MASKED, which also marks a calibration-repaired pixel
(a hot pixel interpolated from its neighbours) in the aperture: on the real XO-1 night 16 of 80
points carried it, the frames of the end of ingress, and leaving them out moved the fitted time
by 25 minutes (the ingress is what times a transit seen without its egress)."""

__all__ = [
    "TRANSIT_BAD",
    "TransitCurve",
    "TransitShape",
    "full_duration_d",
    "impact_parameter",
    "inclination_deg",
    "q_to_u",
    "total_duration_d",
    "transit_model",
    "u_to_q",
]


@dataclass(frozen=True)
class TransitShape:
    """A transit's fixed shape.

    Attributes
    ----------
    period_d : float
        Orbital period (days).
    rp_rs : float
        Planet-to-star radius ratio.
    a_rs : float
        Semi-major axis in stellar radii.
    inc_deg : float
        Inclination (degrees).
    u : tuple of float
        Quadratic limb-darkening coefficients ``(u1, u2)`` in the band of the frames.
    ecc, w_deg : float
        Eccentricity and argument of periastron (circular by default).
    """

    period_d: float
    rp_rs: float
    a_rs: float
    inc_deg: float
    u: tuple[float, float]
    ecc: float = 0.0
    w_deg: float = 90.0


def _params(shape: TransitShape, t0: float = 0.0):
    import batman

    params = batman.TransitParams()
    params.t0 = t0
    params.per = shape.period_d
    params.rp = shape.rp_rs
    params.a = shape.a_rs
    params.inc = shape.inc_deg
    params.ecc = shape.ecc
    params.w = shape.w_deg
    params.limb_dark = "quadratic"
    params.u = list(shape.u)
    return params


def transit_model(time: ArrayLike, t0: float, shape: TransitShape) -> np.ndarray:
    """The relative flux of the star (1 out of transit) at ``time`` (same days as ``t0``).

    Parameters
    ----------
    time : array_like
        Times (e.g. BJD_TDB).
    t0 : float
        Mid-transit time, on the same scale.
    shape : TransitShape

    Returns
    -------
    numpy.ndarray
    """
    import batman

    params = _params(shape)  # times relative to t0: batman's arithmetic away from 2.46e6
    t = np.asarray(time, float) - t0
    return batman.TransitModel(params, t).light_curve(params)


class TransitCurve:
    """One batman model for fixed times, evaluated again and again for new parameters.

    Parameters
    ----------
    dt : array_like
        Times in days from a reference time near the mid-transit (keeps the parameters small).
    period_d : float
        Orbital period (days), fixed.
    ecc, w_deg : float, optional
        Eccentricity and argument of periastron, fixed.
    """

    def __init__(
        self, dt: ArrayLike, *, period_d: float, ecc: float = 0.0, w_deg: float = 90.0
    ) -> None:
        import batman

        self.dt = np.ascontiguousarray(dt, dtype=float)
        shape = TransitShape(period_d, 0.1, 10.0, 90.0, (0.3, 0.2), ecc, w_deg)
        self._params = _params(shape)
        self._model = batman.TransitModel(self._params, self.dt)

    def __call__(
        self, dt0: float, rp_rs: float, a_rs: float, inc_deg: float, u1: float, u2: float
    ) -> np.ndarray:
        """The relative flux for mid-time ``dt0`` (days from the reference) and this shape."""
        p = self._params
        p.t0, p.rp, p.a, p.inc, p.u = dt0, rp_rs, a_rs, inc_deg, [u1, u2]
        return self._model.light_curve(p)


def _orbit_factor(ecc: float, w_deg: float) -> float:
    """(1 - e^2) / (1 + e sin w): the star-planet distance at conjunction over a."""
    return (1.0 - ecc**2) / (1.0 + ecc * np.sin(np.radians(w_deg)))


def impact_parameter(
    a_rs: ArrayLike, inc_deg: ArrayLike, *, ecc: float = 0.0, w_deg: float = 90.0
) -> np.ndarray:
    """b = a cos(i) (1 - e^2) / (1 + e sin w) (Winn 2010, eq. 7)."""
    return np.asarray(a_rs) * np.cos(np.radians(inc_deg)) * _orbit_factor(ecc, w_deg)


def inclination_deg(
    a_rs: ArrayLike, b: ArrayLike, *, ecc: float = 0.0, w_deg: float = 90.0
) -> np.ndarray:
    """The inclination (degrees) of impact parameter ``b``: the inverse of `impact_parameter`."""
    cos_i = np.asarray(b) / (np.asarray(a_rs) * _orbit_factor(ecc, w_deg))
    return np.degrees(np.arccos(np.clip(cos_i, -1.0, 1.0)))


def _duration(period_d, rp_rs, a_rs, b, ecc, w_deg, sign):
    a = np.asarray(a_rs, float)
    b = np.asarray(b, float)
    inc = np.radians(inclination_deg(a, b, ecc=ecc, w_deg=w_deg))
    chord2 = (1.0 + sign * np.asarray(rp_rs, float)) ** 2 - b**2
    arg = np.sqrt(np.clip(chord2, 0.0, None)) / (a * np.sin(inc))
    ecc_factor = np.sqrt(1.0 - ecc**2) / (1.0 + ecc * np.sin(np.radians(w_deg)))
    out = period_d / np.pi * np.arcsin(np.clip(arg, 0.0, 1.0)) * ecc_factor
    return np.where(chord2 > 0, out, 0.0)


def total_duration_d(
    period_d: float,
    rp_rs: ArrayLike,
    a_rs: ArrayLike,
    b: ArrayLike,
    *,
    ecc: float = 0.0,
    w_deg: float = 90.0,
) -> np.ndarray:
    """T14, first to fourth contact (days; Winn 2010, eqs. 14 and 16); 0 when no transit."""
    return _duration(period_d, rp_rs, a_rs, b, ecc, w_deg, +1.0)


def full_duration_d(
    period_d: float,
    rp_rs: ArrayLike,
    a_rs: ArrayLike,
    b: ArrayLike,
    *,
    ecc: float = 0.0,
    w_deg: float = 90.0,
) -> np.ndarray:
    """T23, second to third contact (days; Winn 2010, eq. 15); 0 for a grazing transit."""
    return _duration(period_d, rp_rs, a_rs, b, ecc, w_deg, -1.0)


def q_to_u(q1: ArrayLike, q2: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Kipping (2013) eq. 15: u1 = 2 sqrt(q1) q2, u2 = sqrt(q1) (1 - 2 q2)."""
    root = np.sqrt(np.asarray(q1, float))
    q2 = np.asarray(q2, float)
    return 2.0 * root * q2, root * (1.0 - 2.0 * q2)


def u_to_q(u1: ArrayLike, u2: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Kipping (2013) eqs. 17-18: q1 = (u1 + u2)^2, q2 = u1 / (2 (u1 + u2))."""
    u1 = np.asarray(u1, float)
    total = u1 + np.asarray(u2, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        q2 = np.where(total != 0, u1 / (2.0 * total), 0.5)
    return total**2, q2
