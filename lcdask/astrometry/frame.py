"""A frame's sky before (or without) a plate solution: a nominal WCS, an internal catalog.

`nominal_wcs` is a tangent plane at the header pointing with the header's pixel scale
(`lcdask.astrometry.header_pixel_scale`), to align frames when nothing solves;
`internal_catalog` places the reference frame's own stars on the sky (through its solution, its
header WCS, or a nominal WCS) when there is no reference catalog; `raw_header` reads a frame's
raw header from the cube's file.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS

from lcdask.astrometry.inputs import sharper_than_stars
from lcdask.astrometry.solution import AstrometrySolution, header_pixel_scale
from lcdask.errors import LcdaskError
from lcdask.io.fits import read_frame_header
from lcdask.io.headers import header_wcs
from lcdask.photcal import INSTRUMENTAL_ZERO_POINT

__all__ = ["internal_catalog", "nominal_wcs", "raw_header"]


def raw_header(cube, index: int) -> fits.Header | None:
    """A frame's raw header (its image HDU), or None when the file cannot be read now.

    Parameters
    ----------
    cube : xarray.Dataset
        The cube (``path`` of every frame).
    index : int
        The frame.

    Returns
    -------
    astropy.io.fits.Header or None
    """
    try:
        return read_frame_header(str(cube["path"].values[index])).header
    except (LcdaskError, OSError, KeyError):
        return None


def nominal_wcs(
    header: fits.Header | None, shape: tuple[int, int], ra_deg: float, dec_deg: float
) -> tuple[WCS, str]:
    """A tangent plane at the header pointing with the header's pixel scale, to align frames.

    For aligning frames with each other when nothing solves, and measuring relative motions in
    pixel space: its orientation is unknown and taken as north up, east left, which the frame
    need not be (a field turned 180 deg, a camera at any angle), so its sky positions and
    directions are not to be trusted. The scale comes from `lcdask.astrometry.header_pixel_scale`
    (PIXSCALE, SECPIX, CDELT, XPIXSZ / FOCALLEN, ...), else 1"/px; a pointing missing from the
    header gives (0, 0).

    Parameters
    ----------
    header : astropy.io.fits.Header or None
        The frame's raw header (None when it cannot be read).
    shape : tuple of int
        ``(ny, nx)``.
    ra_deg, dec_deg : float
        The normalised header pointing (NaN when unknown).

    Returns
    -------
    wcs : astropy.wcs.WCS
    description : str
        What it is made of, for the log (the scale and its keywords, what is assumed).
    """
    found = header_pixel_scale(header) if header is not None else None
    scale_arcsec, scale_source = found if found is not None else (1.0, "")
    known = np.isfinite(ra_deg) and np.isfinite(dec_deg)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra_deg if known else 0.0, dec_deg if known else 0.0]
    wcs.wcs.crpix = [(shape[1] + 1) / 2, (shape[0] + 1) / 2]
    wcs.wcs.cd = np.array([[-scale_arcsec, 0.0], [0.0, scale_arcsec]]) / 3600
    scale = (
        f'{scale_arcsec:.2f}"/px from {scale_source}'
        if found is not None
        else '1"/px (no pixel scale in the header)'
    )
    where = "the header pointing" if known else "RA 0 Dec 0 (no pointing in the header)"
    description = (
        f"a nominal tangent plane at {where}, {scale}, orientation unknown (taken as north up): "
        "for aligning the frames only, sky positions approximate"
    )
    return wcs, description


def internal_catalog(
    detections: pd.DataFrame,
    cube,
    reference: int,
    *,
    band: str,
    wcs: WCS | None = None,
    source: str = "",
) -> tuple[pd.DataFrame, AstrometrySolution]:
    """A catalog of the reference frame's own stars on the sky, for aligning the other frames.

    Parameters
    ----------
    detections : pandas.DataFrame
        The reference frame's detections.
    cube : xarray.Dataset
        The cube (header WCS, pointing and file of the reference frame).
    reference : int
        The reference frame.
    band : str
        Name of the magnitude column to give (instrumental magnitudes, for ranking).
    wcs : astropy.wcs.WCS, optional
        The reference frame's plate solution (e.g. a blind ``solve-field``): the stars are then
        at their absolute positions. Without it, the header WCS, else `nominal_wcs`.
    source : str, optional
        What ``wcs`` is, for the message.

    Returns
    -------
    catalog : pandas.DataFrame
        ``ra``, ``dec``, ``band``, ``band_err`` of the clean detections.
    solution : AstrometrySolution
        The reference frame's WCS (solved, header, or nominal).
    """
    shape = (cube.sizes["y"], cube.sizes["x"])
    if wcs is None:
        header_text = str(cube["wcs_header"].values[reference])
        wcs = header_wcs(fits.Header.fromstring(header_text)) if header_text else None
        source = "its header WCS"
    if wcs is None:
        wcs, source = nominal_wcs(
            raw_header(cube, reference),
            shape,
            float(cube["ra_deg"].values[reference]),
            float(cube["dec_deg"].values[reference]),
        )
    good = detections[(detections["flags"] == 0) & (detections["flux"] > 0)]
    if "fwhm_px" in good:  # hot pixels of frames with no dark are no stars to align to
        good = good[~sharper_than_stars(good["fwhm_px"].to_numpy(float))]
    ra, dec = wcs.all_pix2world(good["x"].to_numpy(), good["y"].to_numpy(), 0)
    mag = -2.5 * np.log10(good["flux"].to_numpy()) + INSTRUMENTAL_ZERO_POINT
    catalog = pd.DataFrame(
        {"ra": ra, "dec": dec, band: mag, f"{band}_err": 1.0857 / good["snr"].to_numpy()}
    )
    solution = AstrometrySolution(
        wcs=wcs,
        n_matches=len(catalog),
        rms_arcsec=0.0,
        rms_px=0.0,
        status="ok",
        message=f"an internal catalog of {len(catalog)} stars of frame {reference} via {source}",
        solver="internal",
    )
    return catalog, solution
