"""The noiseless truth of a light frame: sky plus every star and mover at its flux in that frame.

Units are ADU at the truth-image level, i.e. what a perfect calibration leaves (electrons / gain,
before the flat-field response). For a star of catalog magnitude ``mag`` in a frame with
``zero_point``, ``slope`` and ``exptime_s``::

    flux_adu = exptime_s * 10 ** (-0.4 * (mag - zero_point) / slope) * flux_factor(star, time_mjd)

which is the inverse of ``mag = zero_point + slope * m_inst`` with
``m_inst = -2.5 log10(flux_adu / exptime_s)``. The sky is
``sky_adu * (1 + sky_grad_x * (x - c) / size + sky_grad_y * (y - c) / size)``
with ``c = (size - 1) / 2``: its mean over the frame is ``sky_adu``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lcdask.simulate.psf import Moffat, render_stars
from lcdask.simulate.tan import world_to_pixel
from lcdask.simulate.variability import flux_factor


def catalog_flux_adu(
    mag: np.ndarray, zero_point: float, slope: float, exptime_s: float
) -> np.ndarray:
    """Flux in ADU of a source of catalog magnitude ``mag`` (before any variability factor)."""
    return exptime_s * 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - zero_point) / slope)


def frame_wcs(frame: pd.Series) -> tuple[tuple[float, float], tuple[float, float], np.ndarray]:
    """The true (crval, crpix, cd) of a frame from its row of ``frames.parquet``."""
    crval = (float(frame["crval1"]), float(frame["crval2"]))
    crpix = (float(frame["crpix1"]), float(frame["crpix2"]))
    cd = np.array(
        [
            [float(frame["cd1_1"]), float(frame["cd1_2"])],
            [float(frame["cd2_1"]), float(frame["cd2_2"])],
        ]
    )
    return crval, crpix, cd


def mover_radec(movers: pd.DataFrame, time_mjd: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions of movers at a time: linear in RA and Dec from (ra0, dec0) at t0_mjd.

    ``ra = ra0 + rate_ra_arcsec_h * dt_h / 3600 / cos(dec0)``,
    ``dec = dec0 + rate_dec_arcsec_h * dt_h / 3600``.
    """
    dt_h = (time_mjd - movers["t0_mjd"].to_numpy(float)) * 24.0
    dec0 = movers["dec0"].to_numpy(float)
    ra = movers["ra0"].to_numpy(float) + (
        movers["rate_ra_arcsec_h"].to_numpy(float) * dt_h / 3600.0 / np.cos(np.deg2rad(dec0))
    )
    dec = dec0 + movers["rate_dec_arcsec_h"].to_numpy(float) * dt_h / 3600.0
    return ra, dec


def frame_psf(frame: pd.Series) -> Moffat:
    """The PSF of a frame from its row of ``frames.parquet``."""
    return Moffat(
        fwhm_px=float(frame["fwhm_px"]),
        beta=float(frame["psf_beta"]),
        ellipticity=float(frame["psf_ellipticity"]),
        theta_deg=float(frame["psf_theta_deg"]),
    )


def source_positions_fluxes(
    frame: pd.Series, stars: pd.DataFrame, movers: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixel positions (0-based) and ADU fluxes of every source in one frame.

    Returns
    -------
    star_id, x, y, flux_adu : numpy.ndarray
        Fixed (non-moving) stars first, then movers at the frame's mid-exposure time.
    """
    crval, crpix, cd = frame_wcs(frame)
    t = float(frame["time_mjd"])
    zp, slope, exptime = (
        float(frame["zero_point"]),
        float(frame["slope"]),
        float(frame["exptime_s"]),
    )
    fixed = stars[stars["kind"] != "moving"]
    xs, ys = world_to_pixel(
        fixed["ra"].to_numpy(float), fixed["dec"].to_numpy(float), crval, crpix, cd
    )
    fs = catalog_flux_adu(fixed["mag"].to_numpy(float), zp, slope, exptime) * flux_factor(fixed, t)
    ra_m, dec_m = mover_radec(movers, t)
    xm, ym = world_to_pixel(ra_m, dec_m, crval, crpix, cd)
    fm = catalog_flux_adu(movers["mag"].to_numpy(float), zp, slope, exptime)
    ids = np.concatenate(
        [fixed["star_id"].to_numpy(np.int64), movers["star_id"].to_numpy(np.int64)]
    )
    return ids, np.concatenate([xs, xm]), np.concatenate([ys, ym]), np.concatenate([fs, fm])


def sky_image(frame: pd.Series, size: int) -> np.ndarray:
    """The sky of a frame (ADU/px at the truth-image level): mean ``sky_adu``, linear gradient."""
    c = (size - 1) / 2.0
    coord = (np.arange(size) - c) / size
    sky = float(frame["sky_adu"])
    gx = float(frame["sky_grad_x"])
    gy = float(frame["sky_grad_y"])
    return sky * (1.0 + gx * coord[None, :] + gy * coord[:, None])


def truth_image(
    frame: pd.Series, stars: pd.DataFrame, movers: pd.DataFrame, size: int
) -> np.ndarray:
    """Noiseless calibrated image of one light frame in ADU (sky + stars + movers).

    Parameters
    ----------
    frame
        The frame's row of ``frames.parquet``.
    stars, movers
        ``stars.parquet`` and ``movers.parquet``.
    size
        Side of the frame (pixels).

    Returns
    -------
    numpy.ndarray
        float64 (size, size) image.
    """
    _, x, y, flux = source_positions_fluxes(frame, stars, movers)
    image = render_stars((size, size), x, y, flux, frame_psf(frame))
    image += sky_image(frame, size)
    return image
