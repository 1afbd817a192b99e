"""Sky geometry: the tangent plane, angular separations, unit vectors and mean positions.

One implementation of each for the whole package. Positions are (RA, Dec) in degrees.
Separations use Vincenty's formula, accurate at every distance (no small-angle approximation).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "mean_radec",
    "separation_arcsec",
    "separation_deg",
    "tangent_plane",
    "unit_vectors",
    "untangent_plane",
]

_UNITS = ("arcsec", "deg")


def _check_unit(unit: str) -> None:
    if unit not in _UNITS:
        raise ValueError(f"unit must be 'arcsec' or 'deg', not {unit!r}")


def tangent_plane(
    ra_deg: ArrayLike,
    dec_deg: ArrayLike,
    ra0_deg: float,
    dec0_deg: float,
    *,
    unit: Literal["arcsec", "deg"] = "arcsec",
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Gnomonic projection about the tangent point ``(ra0, dec0)``: standard coordinates.

    Exact (no small-field approximation). Points 90 deg or more from the tangent point (behind
    the tangent plane, where the projection does not exist) are NaN.

    Parameters
    ----------
    ra_deg, dec_deg : array_like
        Sky positions (degrees).
    ra0_deg, dec0_deg : float
        Tangent point (degrees).
    unit : {"arcsec", "deg"}, optional
        Unit of the standard coordinates.

    Returns
    -------
    xi, eta : numpy.ndarray
        Offsets towards the east (along RA cos Dec) and the north, in ``unit``.

    Raises
    ------
    ValueError
        For another ``unit``.
    """
    _check_unit(unit)
    ra = np.deg2rad(np.asarray(ra_deg, dtype=float))
    dec = np.deg2rad(np.asarray(dec_deg, dtype=float))
    a0, d0 = math.radians(ra0_deg), math.radians(dec0_deg)
    dra = ra - a0
    cos_c = math.sin(d0) * np.sin(dec) + math.cos(d0) * np.cos(dec) * np.cos(dra)
    cos_c = np.where(cos_c > 1e-6, cos_c, np.nan)  # behind the tangent plane
    xi = np.cos(dec) * np.sin(dra) / cos_c
    eta = (math.cos(d0) * np.sin(dec) - math.sin(d0) * np.cos(dec) * np.cos(dra)) / cos_c
    if unit == "deg":
        return np.rad2deg(xi), np.rad2deg(eta)
    scale = np.rad2deg(1.0) * 3600.0
    return xi * scale, eta * scale


def untangent_plane(
    xi: ArrayLike,
    eta: ArrayLike,
    ra0_deg: float,
    dec0_deg: float,
    *,
    unit: Literal["arcsec", "deg"] = "arcsec",
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Inverse of `tangent_plane`: the sky positions of standard coordinates.

    Parameters
    ----------
    xi, eta : array_like
        Standard coordinates (east, north) in ``unit``.
    ra0_deg, dec0_deg : float
        Tangent point (degrees).
    unit : {"arcsec", "deg"}, optional
        Unit of ``xi`` and ``eta``.

    Returns
    -------
    ra, dec : numpy.ndarray
        Degrees, RA in [0, 360).

    Raises
    ------
    ValueError
        For another ``unit``.
    """
    _check_unit(unit)
    if unit == "deg":
        xi = np.deg2rad(np.asarray(xi, dtype=float))
        eta = np.deg2rad(np.asarray(eta, dtype=float))
    else:
        scale = np.deg2rad(1.0 / 3600.0)
        xi = np.asarray(xi, dtype=float) * scale
        eta = np.asarray(eta, dtype=float) * scale
    a0, d0 = math.radians(ra0_deg), math.radians(dec0_deg)
    denom = math.cos(d0) - eta * math.sin(d0)
    ra = a0 + np.arctan2(xi, denom)
    dec = np.arctan2(math.sin(d0) + eta * math.cos(d0), np.hypot(xi, denom))
    return np.mod(np.rad2deg(ra), 360.0), np.rad2deg(dec)


def separation_deg(
    ra1_deg: ArrayLike, dec1_deg: ArrayLike, ra2_deg: ArrayLike, dec2_deg: ArrayLike
) -> NDArray[np.float64]:
    """Angular separation (degrees) of two positions, accurate at all distances (Vincenty).

    Parameters
    ----------
    ra1_deg, dec1_deg, ra2_deg, dec2_deg : array_like
        The two positions (degrees); broadcast against each other.

    Returns
    -------
    numpy.ndarray
        The separations, 0-180 degrees.
    """
    r1, d1, r2, d2 = (
        np.deg2rad(np.asarray(v, dtype=float)) for v in (ra1_deg, dec1_deg, ra2_deg, dec2_deg)
    )
    sdr, cdr = np.sin(r2 - r1), np.cos(r2 - r1)
    num = np.hypot(np.cos(d2) * sdr, np.cos(d1) * np.sin(d2) - np.sin(d1) * np.cos(d2) * cdr)
    den = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * cdr
    return np.rad2deg(np.arctan2(num, den))


def separation_arcsec(
    ra1_deg: ArrayLike, dec1_deg: ArrayLike, ra2_deg: ArrayLike, dec2_deg: ArrayLike
) -> NDArray[np.float64]:
    """`separation_deg` in arcsec.

    Parameters
    ----------
    ra1_deg, dec1_deg, ra2_deg, dec2_deg : array_like
        The two positions (degrees); broadcast against each other.

    Returns
    -------
    numpy.ndarray
        The separations (arcsec).
    """
    return separation_deg(ra1_deg, dec1_deg, ra2_deg, dec2_deg) * 3600.0


def unit_vectors(ra_deg: ArrayLike, dec_deg: ArrayLike) -> NDArray[np.float64]:
    """Unit vectors (x towards RA 0, z towards the north pole) of sky positions.

    Parameters
    ----------
    ra_deg, dec_deg : array_like
        Sky positions (degrees).

    Returns
    -------
    numpy.ndarray
        Shape ``(..., 3)``: one vector per position (``(3,)`` for one position).
    """
    ra = np.deg2rad(np.asarray(ra_deg, dtype=float))
    dec = np.deg2rad(np.asarray(dec_deg, dtype=float))
    cos_dec = np.cos(dec)
    return np.stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)], axis=-1)


def mean_radec(ra_deg: ArrayLike, dec_deg: ArrayLike) -> tuple[float, float]:
    """The mean direction of sky positions: that of their mean unit vector (RA wrap-safe).

    Parameters
    ----------
    ra_deg, dec_deg : array_like
        Sky positions (degrees); a NaN gives a NaN mean.

    Returns
    -------
    tuple of float
        (RA, Dec) in degrees, RA in [0, 360).
    """
    r = np.deg2rad(np.asarray(ra_deg, dtype=float))
    d = np.deg2rad(np.asarray(dec_deg, dtype=float))
    vec = np.array([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)]).mean(axis=1)
    return (
        float(np.mod(np.rad2deg(np.arctan2(vec[1], vec[0])), 360.0)),
        float(np.rad2deg(np.arctan2(vec[2], np.hypot(vec[0], vec[1])))),
    )
