"""Closed-form positional astronomy for the simulated site: sidereal time, altitude, airmass, Sun.

Closed forms (rather than astropy's AltAz) keep the simulator offline and fast: no IERS tables are
needed. Accuracy is far better than the simulation needs: the J2000 coordinates are used without
precession (about 0.35 deg in 2026, i.e. < 0.5% in airmass above 30 deg altitude), UT1 = UTC,
and the Sun comes from the Astronomical Almanac's low-precision formula (0.01 deg).
"""

from __future__ import annotations

import numpy as np

MJD_J2000 = 51544.5


def gmst_deg(mjd_utc: np.ndarray) -> np.ndarray:
    """Greenwich mean sidereal time (degrees, IAU 1982 expression, UT1 taken as UTC)."""
    d = np.asarray(mjd_utc, dtype=float) - MJD_J2000
    t = d / 36525.0
    gmst = 280.46061837 + 360.98564736629 * d + 0.000387933 * t**2 - t**3 / 38710000.0
    return np.mod(gmst, 360.0)


def altitude_deg(
    ra_deg: float | np.ndarray,
    dec_deg: float | np.ndarray,
    mjd_utc: np.ndarray,
    lat_deg: float,
    lon_deg: float,
) -> np.ndarray:
    """Altitude of a sky position above the horizon (degrees, no refraction).

    ``lon_deg`` is east positive.
    """
    ha = np.deg2rad(gmst_deg(mjd_utc) + lon_deg - np.asarray(ra_deg, dtype=float))
    lat = np.deg2rad(lat_deg)
    dec = np.deg2rad(np.asarray(dec_deg, dtype=float))
    sin_alt = np.sin(lat) * np.sin(dec) + np.cos(lat) * np.cos(dec) * np.cos(ha)
    return np.rad2deg(np.arcsin(np.clip(sin_alt, -1.0, 1.0)))


def hour_angle_deg(ra_deg: float, mjd_utc: np.ndarray, lon_deg: float) -> np.ndarray:
    """Hour angle wrapped to (-180, 180] degrees."""
    ha = gmst_deg(mjd_utc) + lon_deg - ra_deg
    return np.mod(ha + 180.0, 360.0) - 180.0


def airmass_from_altitude(alt_deg: np.ndarray) -> np.ndarray:
    """Kasten & Young (1989) relative air mass; 1.0 at the zenith, about 2.0 at 30 deg.

    Below 1 deg altitude the value is held at that of 1 deg (the simulator never observes there).
    """
    alt = np.maximum(np.asarray(alt_deg, dtype=float), 1.0)
    return 1.0 / (np.sin(np.deg2rad(alt)) + 0.50572 * (alt + 6.07995) ** -1.6364)


def sun_radec_deg(mjd_utc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apparent RA and Dec of the Sun (Astronomical Almanac low-precision formula, ~0.01 deg)."""
    n = np.asarray(mjd_utc, dtype=float) - MJD_J2000
    mean_lon = 280.460 + 0.9856474 * n
    g = np.deg2rad(357.528 + 0.9856003 * n)
    lam = np.deg2rad(mean_lon + 1.915 * np.sin(g) + 0.020 * np.sin(2 * g))
    eps = np.deg2rad(23.439 - 0.0000004 * n)
    ra = np.rad2deg(np.arctan2(np.cos(eps) * np.sin(lam), np.cos(lam)))
    dec = np.rad2deg(np.arcsin(np.sin(eps) * np.sin(lam)))
    return np.mod(ra, 360.0), dec


def sun_altitude_deg(mjd_utc: np.ndarray, lat_deg: float, lon_deg: float) -> np.ndarray:
    """Altitude of the Sun (degrees)."""
    ra, dec = sun_radec_deg(mjd_utc)
    return altitude_deg(ra, dec, mjd_utc, lat_deg, lon_deg)


def transit_mjd(ra_deg: float, near_mjd: float, lon_deg: float) -> float:
    """The meridian transit (hour angle 0) of a right ascension nearest to ``near_mjd``."""
    ha = float(hour_angle_deg(ra_deg, np.array([near_mjd]), lon_deg)[0])
    # sidereal rate: 360.98564736629 deg per day
    return near_mjd - ha / 360.98564736629


def twilight_sky_factor(sun_alt_deg: np.ndarray) -> np.ndarray:
    """Multiplicative brightening of the sky by twilight: 1 below -18 deg, ~10 at -12, ~100 at -6.

    The sky brightens by about 2.5 mag per 6 deg of solar altitude through astronomical and nautical
    twilight.
    """
    above = np.clip(np.asarray(sun_alt_deg, dtype=float) + 18.0, 0.0, None)
    return 10.0 ** (above / 6.0)
