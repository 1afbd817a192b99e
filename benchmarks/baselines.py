"""The photutils baselines lcdask is measured against (benchmarks) and checked against (tests).

`photutils_aperture_photometry` is `lcdask.photometry.photometer_frame`'s measurement done with
photutils; `photutils_psf_photometry` is `lcdask.psf.forced_psf_photometry`'s with photutils'
`PSFPhotometry` and the same model. They live here, not in the package: lcdask itself never
calls them (tests/conftest.py puts this folder on the path).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lcdask.psf import PSFModel

__all__ = ["photutils_aperture_photometry", "photutils_psf_photometry"]


def photutils_aperture_photometry(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    radii: Sequence[float],
    annulus: tuple[float, float],
    *,
    rms: np.ndarray | None = None,
    gain: float | None = None,
) -> pd.DataFrame:
    """The same measurement with photutils (`aperture_photometry` + `ApertureStats`), as reference.

    Parameters
    ----------
    image : numpy.ndarray
        2-D sky-subtracted image.
    x, y : numpy.ndarray
        Positions.
    radii : sequence of float
        Aperture radii (px).
    annulus : tuple of float
        Sky annulus radii (px).
    rms : numpy.ndarray, optional
        Background RMS map (the error of each pixel before the star's photon noise).
    gain : float, optional
        e-/ADU for the photon noise (`calc_total_error`).

    Returns
    -------
    pandas.DataFrame
        ``flux_ap<k>``, ``flux_ap<k>_err`` (local-sky subtracted, uncorrected) and ``sky``.
    """
    from astropy.stats import SigmaClip
    from photutils.aperture import (
        ApertureStats,
        CircularAnnulus,
        CircularAperture,
        aperture_photometry,
    )
    from photutils.utils import calc_total_error

    data = np.asarray(image, dtype=np.float64)
    pos = np.column_stack([x, y])
    aps = [CircularAperture(pos, r=r) for r in radii]
    ann = CircularAnnulus(pos, r_in=annulus[0], r_out=annulus[1])
    error = None
    if rms is not None:
        error = calc_total_error(data, rms, gain) if gain else np.asarray(rms, dtype=np.float64)
    stats = ApertureStats(data, ann, sigma_clip=SigmaClip(sigma=3.0, maxiters=3))
    sky = np.asarray(stats.mean, dtype=np.float64)
    tab = aperture_photometry(data, aps, error=error, method="exact")
    out: dict[str, np.ndarray] = {}
    for k, ap in enumerate(aps):
        s = np.asarray(tab[f"aperture_sum_{k}"], dtype=np.float64)
        out[f"flux_ap{k + 1}"] = s - sky * ap.area
        if error is not None:
            out[f"flux_ap{k + 1}_err"] = np.asarray(tab[f"aperture_sum_err_{k}"], dtype=np.float64)
    out["sky"] = sky
    return pd.DataFrame(out)


def photutils_psf_photometry(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    psf: PSFModel,
    *,
    error: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    fit_shape: int | None = None,
    fit_positions: bool = True,
    group_radius: float | None = None,
) -> pd.DataFrame:
    """PSF photometry with photutils' `PSFPhotometry` (the reference for `forced_psf_photometry`).

    Parameters
    ----------
    image : numpy.ndarray
        2-D sky-subtracted image.
    x, y : array_like
        Initial (or, with ``fit_positions=False``, fixed) positions.
    psf : PSFModel
        The PSF at this frame's scale.
    error : numpy.ndarray, optional
        Per-pixel 1-sigma errors (all noise sources).
    mask : numpy.ndarray of bool, optional
        True where a pixel is bad.
    fit_shape : int, optional
        Side of the fitted box (odd); default about 3 FWHM.
    fit_positions : bool, optional
        Fit x, y and flux (photutils' default) or only the flux.
    group_radius : float, optional
        `SourceGrouper` separation; default 2 FWHM (None groups nothing when 0).

    Returns
    -------
    pandas.DataFrame
        ``x``, ``y`` (fitted), ``flux``, ``flux_err``, ``flags`` in input order.
    """
    from astropy.table import Table
    from photutils.psf import PSFPhotometry, SourceGrouper

    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    fwhm = psf.effective_fwhm_px
    if fit_shape is None:
        fit_shape = max(3, int(np.ceil(3.0 * fwhm))) | 1  # odd
    model = psf.to_image_psf()
    if not fit_positions:
        model.x_0.fixed = True
        model.y_0.fixed = True
    gr = 2.0 * fwhm if group_radius is None else group_radius
    grouper = SourceGrouper(min_separation=gr) if gr > 0 else None
    phot = PSFPhotometry(model, fit_shape, grouper=grouper, aperture_radius=1.5 * fwhm)
    init = Table({"x": x, "y": y})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = phot(np.asarray(image, dtype=np.float64), mask=mask, error=error, init_params=init)

    def col(*names: str) -> np.ndarray:
        for name in names:
            if name in res.colnames:
                return np.asarray(res[name], dtype=np.float64)
        return np.full(len(res), np.nan)

    return pd.DataFrame(
        {
            "x": col("x_fit"),
            "y": col("y_fit"),
            "flux": col("flux_fit"),
            "flux_err": col("flux_err"),
            "flags": col("flags").astype(np.int64),
        }
    )
