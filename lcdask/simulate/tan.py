"""The gnomonic (TAN) projection in plain numpy, with the FITS CD/CRPIX/CRVAL conventions.

Pixel coordinates here are 0-based (numpy: the centre of pixel ``image[y, x]`` is at ``(x, y)``);
the FITS ``CRPIX`` stored in the tables and headers is 1-based, as in the FITS standard, so that
``astropy.wcs.WCS(header).world_to_pixel`` agrees with `world_to_pixel` here.
"""

from __future__ import annotations

import numpy as np


def cd_matrix(scale_arcsec: float, rotation_deg: float, *, flip: bool = False) -> np.ndarray:
    """CD matrix (degrees per pixel) for a pixel scale, a rotation and a parity.

    Parameters
    ----------
    scale_arcsec
        Pixel scale.
    rotation_deg
        Position angle of the +y axis, measured from north through east.
    flip
        ``False`` gives the usual sky parity (north up, east left at rotation 0, det(CD) < 0);
        ``True`` mirrors the x axis.

    Returns
    -------
    numpy.ndarray
        The 2x2 CD matrix.
    """
    s = scale_arcsec / 3600.0
    th = np.deg2rad(rotation_deg)
    c, sn = np.cos(th), np.sin(th)
    cd = s * np.array([[-c, sn], [sn, c]])
    if flip:
        cd[:, 0] *= -1.0
    return cd


def world_to_pixel(
    ra_deg: np.ndarray,
    dec_deg: np.ndarray,
    crval: tuple[float, float],
    crpix: tuple[float, float],
    cd: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Sky to 0-based pixel coordinates through a TAN projection (no distortion).

    Parameters
    ----------
    ra_deg, dec_deg
        Sky coordinates (degrees).
    crval
        Tangent point (RA, Dec) in degrees.
    crpix
        FITS (1-based) reference pixel.
    cd
        CD matrix in degrees per pixel.

    Returns
    -------
    x, y : numpy.ndarray
        0-based pixel coordinates.
    """
    ra = np.deg2rad(np.asarray(ra_deg, dtype=float))
    dec = np.deg2rad(np.asarray(dec_deg, dtype=float))
    ra0, dec0 = np.deg2rad(crval[0]), np.deg2rad(crval[1])
    dra = ra - ra0
    cos_c = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(dra)
    xi = np.cos(dec) * np.sin(dra) / cos_c
    eta = (np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(dra)) / cos_c
    inv = np.linalg.inv(cd)
    u = np.rad2deg(xi)
    v = np.rad2deg(eta)
    dx = inv[0, 0] * u + inv[0, 1] * v
    dy = inv[1, 0] * u + inv[1, 1] * v
    return dx + crpix[0] - 1.0, dy + crpix[1] - 1.0


def pixel_to_world(
    x: np.ndarray,
    y: np.ndarray,
    crval: tuple[float, float],
    crpix: tuple[float, float],
    cd: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel to sky coordinates through a TAN projection (inverse of `world_to_pixel`).

    Returns
    -------
    ra_deg, dec_deg : numpy.ndarray
        Sky coordinates in degrees, RA in [0, 360).
    """
    dx = np.asarray(x, dtype=float) - (crpix[0] - 1.0)
    dy = np.asarray(y, dtype=float) - (crpix[1] - 1.0)
    xi = np.deg2rad(cd[0, 0] * dx + cd[0, 1] * dy)
    eta = np.deg2rad(cd[1, 0] * dx + cd[1, 1] * dy)
    ra0, dec0 = np.deg2rad(crval[0]), np.deg2rad(crval[1])
    denom = np.cos(dec0) - eta * np.sin(dec0)
    ra = ra0 + np.arctan2(xi, denom)
    dec = np.arctan2(np.sin(dec0) + eta * np.cos(dec0), np.hypot(xi, denom))
    return np.mod(np.rad2deg(ra), 360.0), np.rad2deg(dec)


def offset_radec(
    ra_deg: float, dec_deg: float, east_arcsec: float, north_arcsec: float
) -> tuple[float, float]:
    """Move a sky position by a small offset east and north (tangent-plane, exact TAN inverse)."""
    cd = np.array([[1.0 / 3600.0, 0.0], [0.0, 1.0 / 3600.0]])
    ra, dec = pixel_to_world(
        np.array([east_arcsec]), np.array([north_arcsec]), (ra_deg, dec_deg), (1.0, 1.0), cd
    )
    return float(ra[0]), float(dec[0])


def angular_separation_arcsec(
    ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray
) -> np.ndarray:
    """Great-circle separation (Vincenty formula), arcsec."""
    r1, d1, r2, d2 = (np.deg2rad(np.asarray(a, dtype=float)) for a in (ra1, dec1, ra2, dec2))
    dra = r2 - r1
    num = np.hypot(
        np.cos(d2) * np.sin(dra), np.cos(d1) * np.sin(d2) - np.sin(d1) * np.cos(d2) * np.cos(dra)
    )
    den = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(dra)
    return np.rad2deg(np.arctan2(num, den)) * 3600.0
