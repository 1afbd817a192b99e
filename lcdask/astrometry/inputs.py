"""A frame's detections and a reference catalog as the arrays every solver starts from.

Conventions: detections are a table with ``x``, ``y`` (0-based pixels, numpy convention) and
``flux`` (and optionally ``snr``, ``flags``, ``fwhm_px``), as `lcdask.detect.detect_frame` makes;
catalogs have ``ra``, ``dec`` (degrees) and a magnitude column (``mag`` by default).
Detections sharper than the stars (`sharper_than_stars`: hot pixels of frames with no dark) are
left out of every match.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["catalog_arrays", "detection_arrays", "sharper_than_stars"]


def detection_arrays(
    detections: pd.DataFrame, *, drop_flags: int = 2 | 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, y, flux, centroid weight of usable detections, brightest first.

    Detections flagged in ``drop_flags``, sharper than the stars (`sharper_than_stars`), with
    non-finite positions or without a positive flux are left out.

    Parameters
    ----------
    detections : pandas.DataFrame
        ``x``, ``y``, ``flux``; ``snr``, ``flags`` and ``fwhm_px`` when present.
    drop_flags : int, optional
        Flag bits that leave a detection out.

    Returns
    -------
    x, y, flux, weight : numpy.ndarray
        The weight is 1 / centroid variance (px^-2).

    Raises
    ------
    TypeError
        When ``detections`` is not a DataFrame.
    ValueError
        When it lacks ``x``, ``y`` or ``flux``.
    """
    if not isinstance(detections, pd.DataFrame):
        raise TypeError(f"detections must be a pandas DataFrame, got {type(detections).__name__}")
    missing = {"x", "y", "flux"} - set(detections.columns)
    if missing:
        raise ValueError(f"detections lack the columns {sorted(missing)} (need x, y, flux)")
    columns = detections.columns
    keep = np.ones(len(detections), dtype=bool)
    if "flags" in columns and drop_flags:
        keep = (detections["flags"].to_numpy() & drop_flags) == 0
    if "fwhm_px" in columns:
        keep[keep] = ~sharper_than_stars(detections["fwhm_px"].to_numpy(dtype=float)[keep])
    x = detections["x"].to_numpy(dtype=float)[keep]
    y = detections["y"].to_numpy(dtype=float)[keep]
    flux = detections["flux"].to_numpy(dtype=float)[keep]
    good = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux) & (flux > 0)
    if "snr" in columns:
        snr = detections["snr"].to_numpy(dtype=float)[keep]
        snr = np.where(np.isfinite(snr) & (snr > 0), snr, 1.0)
    else:
        snr = np.sqrt(np.clip(flux, 1.0, None))
    # Centroid error ~ 2 px / (S/N) for seeing-limited stars, in quadrature with a floor of
    # 0.1 px for the catalog's own errors and the systematics of bright stars.
    weight = 1.0 / ((2.0 / snr) ** 2 + 0.1**2)
    order = np.argsort(-flux[good], kind="stable")
    return x[good][order], y[good][order], flux[good][order], weight[good][order]


def sharper_than_stars(fwhm_px: np.ndarray) -> np.ndarray:
    """Which detections are much sharper than the stars of their frame: hot pixels, cosmic rays.

    In frames with no dark (nothing maps the hot pixels) they are found at the same pixels in
    every frame, and would pin the alignment of drifting frames at no drift. A detection is
    sharp when its ``fwhm_px`` (`lcdask.detect`: single pixels give 0.8) is under 1 px, or
    under half the upper quartile of the frame's (the stars', even when the hot pixels are
    nearly half the detections).

    Parameters
    ----------
    fwhm_px : numpy.ndarray
        The ``fwhm_px`` column of one frame's detections.

    Returns
    -------
    numpy.ndarray
        Boolean, True for the sharp ones (NaN widths are not sharp).
    """
    fwhm = np.asarray(fwhm_px, dtype=float)
    finite = np.isfinite(fwhm)
    if not finite.any():
        return np.zeros(fwhm.shape, dtype=bool)
    limit = max(1.0, 0.5 * float(np.percentile(fwhm[finite], 75)))
    return finite & (fwhm < limit)


def catalog_arrays(
    catalog: pd.DataFrame, mag_column: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ra, dec, mag of the catalog, brightest first (rows without a magnitude last).

    Parameters
    ----------
    catalog : pandas.DataFrame
        ``ra``, ``dec`` (degrees) and, when present, ``mag_column``.
    mag_column : str
        The magnitude column (all zeros when the catalog lacks it).

    Returns
    -------
    ra, dec, mag : numpy.ndarray
        Rows with finite positions.

    Raises
    ------
    TypeError
        When ``catalog`` is not a DataFrame.
    ValueError
        When it lacks ``ra`` or ``dec``.
    """
    if not isinstance(catalog, pd.DataFrame):
        raise TypeError(f"catalog must be a pandas DataFrame, got {type(catalog).__name__}")
    missing = {"ra", "dec"} - set(catalog.columns)
    if missing:
        raise ValueError(f"catalog lacks the columns {sorted(missing)} (need ra, dec)")
    ra = catalog["ra"].to_numpy(dtype=float)
    dec = catalog["dec"].to_numpy(dtype=float)
    if mag_column in catalog.columns:
        mag = catalog[mag_column].to_numpy(dtype=float)
    else:
        mag = np.zeros(len(ra))
    good = np.isfinite(ra) & np.isfinite(dec)
    ra, dec, mag = ra[good], dec[good], mag[good]
    order = np.argsort(np.where(np.isfinite(mag), mag, np.inf), kind="stable")
    return ra[order], dec[order], mag[order]
