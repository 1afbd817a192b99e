"""Per-frame photometry: fine detection, aperture fluxes at several radii, PSF fluxes, flags.

`photometer_frame` is the per-frame kernel (pure numpy on one frame, no dask): it takes a
calibrated, cosmic-ray-cleaned, sky-subtracted frame (see `lcdask.sky.subtract_sky`) and returns
ONE table with the fixed schema `photometry_schema(apertures)` (`PHOTOMETRY_SCHEMA` for the
default apertures), empty and never None when there is nothing to measure, plus a small dict
describing the apertures and the corrections applied.

Apertures
---------
Each aperture is ``(radius, unit)`` with unit ``"fwhm"`` (scaled with the frame's FWHM) or
``"px"`` (fixed). Column ``flux_ap<k>`` (k = 1, 2, ...) is aperture k; the sidecar dict gives
each column's radius in pixels. The default set `DEFAULT_APERTURES` is 1, 1.5, 2 and 3 FWHM and
5 and 10 px.

Sky and errors
--------------
The local sky is a sigma-clipped mean (3 sigma about the median, 3 passes) in an annulus from
``annulus_fwhm[0]`` to ``annulus_fwhm[1]`` FWHM (at least 2 px beyond the largest aperture),
gathered for all stars at once as an (n_stars, n_annulus_pixels) array. Aperture sums use sep's
exact circular overlap (`sep.sum_circle` with ``subpix=0``). The variance of a flux ``F`` in an
aperture of area ``A`` is the CCD equation::

    var = sum_aperture(rms^2) + F / gain + A^2 * sigma_sky^2 / n_sky

(sky and read noise from the RMS map, the star's photon noise, the error of the sky estimate).

Aperture correction
-------------------
With ``aperture_correction=True`` (default) every aperture flux is scaled to the total flux by
the median, over bright clean stars of the frame, of ``flux_psf / flux_ap<k>`` (the ePSF is
normalised to the whole star, and its small fit region makes it far less sensitive to the faint
neighbours that bias wide apertures and curves of growth in crowded fields). Without a PSF the
curve of growth scales every aperture to the largest FWHM-scaled one. The factors are in the
sidecar (``aperture_correction``, ``aperture_correction_method``).

PSF fluxes
----------
When a `lcdask.psf.PSFModel` is given, ``flux_psf`` comes from
`lcdask.psf.forced_psf_photometry` at the same positions (the model scaled to the frame's FWHM),
with the annulus sky of each star removed in its fit region.

Flags (`PhotFlag`, bit values shared with `lcdask.detect.DetectionFlag` where they mean the same)
--------------------------------------------------------------------------------------------------
BLENDED (another source within ``blend_fwhm`` FWHM), EDGE (the largest aperture leaves the
image), SATURATED (a pixel within 1 FWHM reaches ``saturation``), MASKED (masked pixels within
the largest FWHM aperture, or repaired ones within the flux aperture ``flux_fwhm``), COSMIC (a
cosmic-ray pixel within the largest FWHM aperture), PSF_FAILED (no PSF flux). BLENDED is also set
where the wings of brighter stars (a Moffat of ``wing_beta``) put more light into the flux
aperture, or leave more in the sky annulus after clipping, than the flux error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntFlag
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

__all__ = [
    "DEFAULT_APERTURES",
    "FLUX_METHODS",
    "PHOTOMETRY_SCHEMA",
    "FluxMethod",
    "PhotFlag",
    "annulus_sky",
    "aperture_radii",
    "detect_sources",
    "empty_photometry",
    "flux_method",
    "photometer_frame",
    "photometry_schema",
]


@dataclass(frozen=True)
class FluxMethod:
    """A flux the light curves and zero points use: ``[level2] flux`` names one of `FLUX_METHODS`.

    Attributes
    ----------
    name : str
        Its name in the configuration.
    column : str or None
        The `photometer_frame` column it keeps (its ``_err`` beside it); None for the
        detection's own flux, which needs no photometry after detection.
    """

    name: str
    column: str | None

    @property
    def measured(self) -> bool:
        """Whether Level 3 photometry measures it (else the detections' fluxes stand)."""
        return self.column is not None

    def kept_column(self, psf: Any) -> str:
        """The column kept on a frame: the PSF flux needs an ePSF (the aperture's without)."""
        if self.column == "flux_psf" and psf is None:
            return "flux_ap2"
        return self.column or "flux"


FLUX_METHODS: dict[str, FluxMethod] = {
    m.name: m
    for m in (
        FluxMethod("aperture", "flux_ap2"),
        FluxMethod("psf", "flux_psf"),
        FluxMethod("detection", None),
    )
}
"""The aperture-corrected 1.5 FWHM aperture, the ePSF fit, and the detection's own flux."""


def flux_method(name: str) -> FluxMethod:
    """The `FluxMethod` of ``[level2] flux`` (validated by `lcdask.config.Level2Config`)."""
    return FLUX_METHODS[name]


DEFAULT_APERTURES: tuple[tuple[float, str], ...] = (
    (1.0, "fwhm"),
    (1.5, "fwhm"),
    (2.0, "fwhm"),
    (3.0, "fwhm"),
    (5.0, "px"),
    (10.0, "px"),
)
"""Default apertures as ``(radius, unit)``, unit ``"fwhm"`` or ``"px"``."""


class PhotFlag(IntFlag):
    """Bits of the ``flags`` column of a photometry table."""

    OK = 0
    BLENDED = 1
    """Another source lies within ``blend_fwhm`` FWHM, or brighter stars' wings change the
    flux by more than its error."""
    EDGE = 2
    """The largest aperture extends beyond the image."""
    SATURATED = 4
    """A pixel within 1 FWHM reaches the saturation level."""
    MASKED = 8
    """Masked (bad) pixels lie in the largest FWHM-scaled aperture, or pixels repaired by
    calibration (interpolated bad pixels and columns) in the flux aperture."""
    COSMIC = 16
    """A cosmic-ray pixel lies in the largest FWHM-scaled aperture (it was cleaned or masked)."""
    PSF_FAILED = 32
    """No PSF flux (no PSF given, or no valid pixel in the fit region)."""


def photometry_schema(apertures: Sequence[tuple[float, str]] = DEFAULT_APERTURES) -> dict[str, str]:
    """Columns and dtypes of the photometry table for a set of apertures, in order.

    Parameters
    ----------
    apertures : sequence of (float, str)
        ``(radius, unit)`` pairs.

    Returns
    -------
    dict
        ``x``, ``y``, ``flux_ap<k>``, ``flux_ap<k>_err`` for each aperture, ``flux_psf``,
        ``flux_psf_err``, ``sky``, ``sky_err``, ``flags``.
    """
    schema = {"x": "float64", "y": "float64"}
    for k in range(1, len(apertures) + 1):
        schema[f"flux_ap{k}"] = "float64"
        schema[f"flux_ap{k}_err"] = "float64"
    schema.update(
        {
            "flux_psf": "float64",
            "flux_psf_err": "float64",
            "sky": "float32",
            "sky_err": "float32",
            "flags": "int32",
        }
    )
    return schema


PHOTOMETRY_SCHEMA: Mapping[str, str] = photometry_schema(DEFAULT_APERTURES)
"""Columns and dtypes of the photometry table for `DEFAULT_APERTURES`.

x, y : 0-based position (px); flux_ap<k>, flux_ap<k>_err : aperture k flux (total flux when
aperture-corrected) and its 1-sigma error; flux_psf, flux_psf_err : PSF flux and error;
sky : local sky per pixel (the 2-D background at the star plus the annulus residual);
sky_err : error of the annulus sky estimate per pixel; flags : `PhotFlag` bits.
"""


def empty_photometry(apertures: Sequence[tuple[float, str]] = DEFAULT_APERTURES) -> pd.DataFrame:
    """An empty photometry table with the schema of ``apertures``."""
    return pd.DataFrame({k: pd.Series(dtype=v) for k, v in photometry_schema(apertures).items()})


def aperture_radii(apertures: Sequence[tuple[float, str]], fwhm_px: float) -> np.ndarray:
    """Radii in pixels of a set of apertures at a frame's FWHM.

    Raises
    ------
    ValueError
        For a unit other than "fwhm" or "px", or a non-positive radius.
    """
    radii = []
    for radius, unit in apertures:
        if unit not in ("fwhm", "px"):
            raise ValueError(f"aperture unit must be 'fwhm' or 'px', got {unit!r}")
        if not radius > 0:
            raise ValueError(f"aperture radius must be > 0, got {radius!r}")
        radii.append(radius * fwhm_px if unit == "fwhm" else radius)
    return np.asarray(radii, dtype=np.float64)


def _native(image: np.ndarray) -> np.ndarray:
    """C-contiguous native float32/float64 (sep's types), copied only when needed."""
    image = np.asarray(image)
    dtype = image.dtype if image.dtype in (np.float32, np.float64) else np.float64
    return np.ascontiguousarray(image, dtype=np.dtype(dtype).newbyteorder("="))


def detect_sources(
    image: np.ndarray,
    rms: np.ndarray | float,
    fwhm_px: float,
    *,
    mask: np.ndarray | None = None,
    threshold_sigma: float = 3.0,
    min_area: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Fine detection on a sky-subtracted frame: sep extraction and windowed centroids.

    Parameters
    ----------
    image : numpy.ndarray
        2-D sky-subtracted, cosmic-ray-cleaned frame.
    rms : numpy.ndarray or float
        Background RMS.
    fwhm_px : float
        Frame FWHM (sets the centroid window).
    mask : numpy.ndarray of bool, optional
        True where a pixel is bad.
    threshold_sigma, min_area : optional
        Detection threshold (in rms) and minimum area (px).

    Returns
    -------
    x, y : numpy.ndarray
        0-based windowed centroids.
    """
    import sep

    data = _native(image)
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    data = np.where(bad, 0.0, data)
    err = np.ascontiguousarray(rms, dtype=np.float64) if np.ndim(rms) else float(rms)
    sep.set_extract_pixstack(max(300000, data.size // 4))
    objs = sep.extract(
        data, threshold_sigma, err=err, mask=bad if bad.any() else None, minarea=min_area
    )
    if len(objs) == 0:
        return np.zeros(0), np.zeros(0)
    x, y, flag = sep.winpos(data, objs["x"], objs["y"], fwhm_px / 2.3548)
    x = np.where(flag == 0, x, objs["x"])
    y = np.where(flag == 0, y, objs["y"])
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def annulus_sky(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    r_in: float,
    r_out: float,
    *,
    mask: np.ndarray | None = None,
    sigma: float = 3.0,
    n_iter: int = 3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigma-clipped mean sky in an annulus around each position, for all positions at once.

    Parameters
    ----------
    image : numpy.ndarray
        2-D image.
    x, y : numpy.ndarray
        0-based positions.
    r_in, r_out : float
        Annulus radii (px), measured from the rounded position.
    mask : numpy.ndarray of bool, optional
        True where a pixel is bad.
    sigma : float, optional
        Clipping threshold about the median, in units of the clipped standard deviation.
    n_iter : int, optional
        Clipping passes.

    Returns
    -------
    sky, std, n_pix : numpy.ndarray
        Per-position clipped mean, clipped standard deviation of one pixel and number of pixels
        kept (NaN, NaN, 0 where no pixel is valid).
    """
    data = np.asarray(image)
    ny, nx = data.shape
    r = int(np.ceil(r_out))
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
    rr = ox**2 + oy**2
    sel = (rr >= r_in**2) & (rr <= r_out**2)
    ox, oy = ox[sel], oy[sel]
    xi = np.rint(x).astype(np.int64)[:, None] + ox[None, :]
    yi = np.rint(y).astype(np.int64)[:, None] + oy[None, :]
    inside = (xi >= 0) & (xi < nx) & (yi >= 0) & (yi < ny)
    # 1-D takes (2-3x faster than 2-D indexing); pixels off the image read any valid pixel
    # (mode="clip") and are then left out as not inside
    flat = yi * nx + xi
    vals = np.ravel(data).take(flat, mode="clip").astype(np.float32, copy=False)
    good = inside & np.isfinite(vals)
    if mask is not None:
        good &= ~np.ravel(np.asarray(mask, dtype=bool)).take(flat, mode="clip")
    # clipping on rows sorted once: the kept pixels are always a contiguous run [lo, hi) of the
    # sorted row, so every pass is a median look-up and a window sum from cumulative sums
    vals[~good] = np.inf
    vals.sort(axis=1)
    vals = vals.astype(np.float64)
    n_good = good.sum(axis=1)
    finite = np.where(np.isfinite(vals), vals, 0.0)
    # cumulative sums with a leading 0 per row, written in place (no concatenated copies)
    csum = np.zeros((len(vals), vals.shape[1] + 1))
    np.cumsum(finite, axis=1, out=csum[:, 1:])
    csq = np.zeros_like(csum)
    np.cumsum(np.square(finite, out=finite), axis=1, out=csq[:, 1:])
    rows = np.arange(len(vals))
    lo = np.zeros(len(vals), dtype=np.int64)
    hi = n_good.astype(np.int64)
    for _ in range(n_iter):
        n = hi - lo
        ok = n > 0
        mid = np.clip((lo + hi - 1) // 2, 0, vals.shape[1] - 1)
        mid2 = np.clip((lo + hi) // 2, 0, vals.shape[1] - 1)
        med = 0.5 * (vals[rows, mid] + vals[rows, mid2])
        n_safe = np.maximum(n, 1)
        mean = (csum[rows, hi] - csum[rows, lo]) / n_safe
        var = (csq[rows, hi] - csq[rows, lo]) / n_safe - mean**2
        std = np.sqrt(np.clip(var, 0.0, None))
        new_lo = np.where(ok, (vals < (med - sigma * std)[:, None]).sum(axis=1), lo)
        new_hi = np.where(ok, (vals <= (med + sigma * std)[:, None]).sum(axis=1), hi)
        new_hi = np.minimum(new_hi, n_good)
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break
        lo, hi = new_lo, new_hi
    n = hi - lo
    n_safe = np.maximum(n, 1)
    mean = (csum[rows, hi] - csum[rows, lo]) / n_safe
    var = (csq[rows, hi] - csq[rows, lo]) / n_safe - mean**2
    sky = np.where(n > 0, mean, np.nan)
    std = np.where(n > 0, np.sqrt(np.clip(var, 0.0, None)), np.nan)
    return sky, std, n


def _check(image: np.ndarray, name: str, arr: Any) -> np.ndarray | None:
    if arr is None:
        return None
    arr = np.asarray(arr)
    if arr.shape != image.shape:
        raise ValueError(f"photometer_frame: {name} shape {arr.shape} differs from {image.shape}")
    return arr


def photometer_frame(
    image: np.ndarray,
    *,
    fwhm_px: float,
    gain: float,
    rms: np.ndarray | float | None = None,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    background: np.ndarray | None = None,
    psf: Any = None,
    scale_psf: bool = True,
    mask: np.ndarray | None = None,
    cosmic_mask: np.ndarray | None = None,
    repaired_mask: np.ndarray | None = None,
    saturation: float | None = None,
    apertures: Sequence[tuple[float, str]] = DEFAULT_APERTURES,
    annulus_fwhm: tuple[float, float] = (4.0, 7.0),
    aperture_correction: bool = True,
    blend_fwhm: float = 2.0,
    flux_fwhm: float = 1.5,
    wing_beta: float = 2.5,
    threshold_sigma: float = 3.0,
    refine_psf_scale: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Aperture and PSF photometry of one frame.

    Parameters
    ----------
    image : numpy.ndarray
        2-D calibrated, cosmic-ray-cleaned, sky-subtracted frame (image units, e.g. ADU).
    fwhm_px : float
        The frame's FWHM (px).
    gain : float
        e- per image unit (for the photon noise of the stars).
    rms : numpy.ndarray or float, optional
        Background RMS map (from `lcdask.sky.subtract_sky`); estimated from the annuli when not
        given.
    x, y : numpy.ndarray, optional
        Positions to measure (forced photometry, e.g. the co-add catalog through this frame's
        WCS); detected with `detect_sources` when not given. Rows come out in this order.
    background : numpy.ndarray, optional
        The 2-D background that was subtracted (for the ``sky`` column and saturation).
    psf : lcdask.psf.PSFModel, optional
        The ePSF; without it ``flux_psf`` is NaN and flagged PSF_FAILED.
    scale_psf : bool, optional
        Stretch the PSF to ``fwhm_px`` (False when it is already this frame's PSF).
    mask : numpy.ndarray of bool, optional
        True where a pixel is bad (excluded from the sky and the PSF fit, flagged MASKED).
    cosmic_mask : numpy.ndarray of bool, optional
        True where a cosmic ray was found (flagged COSMIC).
    repaired_mask : numpy.ndarray of bool, optional
        True where calibration replaced a pixel's value (bad pixels and columns interpolated
        from their neighbours); one within ``flux_fwhm`` FWHM of a star flags it MASKED.
    saturation : float, optional
        Saturation level of the frame before sky subtraction (image units).
    apertures : sequence of (float, str), optional
        ``(radius, unit)`` pairs, unit "fwhm" or "px".
    annulus_fwhm : tuple of float, optional
        Inner and outer sky-annulus radii in FWHM (the inner one at least 2 px beyond the
        largest aperture).
    aperture_correction : bool, optional
        Scale aperture fluxes to total fluxes (see the module docstring).
    blend_fwhm : float, optional
        Distance (FWHM) within which a neighbour flags a star BLENDED.
    flux_fwhm : float, optional
        Radius (FWHM) of the aperture the pipeline takes its flux from (1.5, ``flux_ap2``).
        A repaired pixel within it flags a star MASKED: interpolation across a column or pixel
        that the star's core covers misses part of the peak (a simulated star crossing a dead
        column dips by 10%), while a repaired pixel outside it changes the flux by far less
        than its noise. The neighbour-light flag (BLENDED) is reckoned for this aperture.
    wing_beta : float, optional
        Moffat beta of the PSF wings assumed by the neighbour-light flag (seeing-limited stars
        have 2.5-4; the lowest gives the widest wings).
    threshold_sigma : float, optional
        Detection threshold when positions are not given.
    refine_psf_scale : bool, optional
        Fit the PSF's scale on up to 30 bright isolated stars of the frame
        (`lcdask.psf.refine_scale`) instead of trusting ``fwhm_px`` alone; the co-add's ePSF
        and a frame's FWHM estimate rarely agree to the 1% that 1% fluxes need.

    Returns
    -------
    table : pandas.DataFrame
        Columns `photometry_schema(apertures)`; empty (never None) when there is no source.
    info : dict
        ``radii_px`` (column -> radius), ``aperture_correction`` (column -> factor applied),
        ``annulus_px``, ``fwhm_px``, ``n_sources``, ``psf_scale``.

    Raises
    ------
    ValueError
        For a non-2-D image, arrays of another shape, or bad apertures or FWHM.
    """
    data = _native(image)
    if data.ndim != 2:
        raise ValueError(f"photometer_frame needs a 2-D image, got shape {data.shape}")
    if not (np.isfinite(fwhm_px) and fwhm_px > 0):
        raise ValueError(f"photometer_frame needs a positive fwhm_px, got {fwhm_px!r}")
    if not (gain and gain > 0):
        raise ValueError(f"photometer_frame needs a positive gain (e-/ADU), got {gain!r}")
    mask = _check(data, "mask", mask)
    cosmic_mask = _check(data, "cosmic_mask", cosmic_mask)
    repaired_mask = _check(data, "repaired_mask", repaired_mask)
    background = _check(data, "background", background)
    radii = aperture_radii(apertures, fwhm_px)
    names = [f"flux_ap{k}" for k in range(1, len(radii) + 1)]
    r_in = max(annulus_fwhm[0] * fwhm_px, radii.max() + 2.0)
    r_out = max(annulus_fwhm[1] * fwhm_px, r_in + 5.0)
    info: dict[str, Any] = {
        "radii_px": dict(zip(names, radii.tolist(), strict=True)),
        "apertures": [tuple(a) for a in apertures],
        "annulus_px": (float(r_in), float(r_out)),
        "fwhm_px": float(fwhm_px),
        "aperture_correction": dict.fromkeys(names, 1.0),
        "psf_scale": float("nan"),
    }
    bad, clean, rms_map = _usable_pixels(data, mask, rms)
    if x is None or y is None:
        x, y = detect_sources(clean, rms_map, fwhm_px, mask=bad, threshold_sigma=threshold_sigma)
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    info["n_sources"] = int(x.size)
    if x.size == 0:
        return empty_photometry(apertures), info

    # local sky
    sky, sky_std, n_sky = annulus_sky(data, x, y, r_in, r_out, mask=bad)
    sky = np.nan_to_num(sky)
    sky_err = np.where(n_sky > 0, sky_std / np.sqrt(np.maximum(n_sky, 1)), np.nan)

    fluxes, errors = _aperture_fluxes(
        clean, x, y, radii, sky=sky, sky_err=sky_err, rms_map=rms_map, bad=bad, gain=gain
    )

    # flags
    fwhm_ap = [r for r, (_, u) in zip(radii, apertures, strict=True) if u == "fwhm"]
    r_flag = max(fwhm_ap) if fwhm_ap else 2.0 * fwhm_px
    flags = _pixel_flags(
        data,
        x,
        y,
        r_edge=radii.max(),
        r_flag=r_flag,
        bad=bad,
        cosmic_mask=cosmic_mask,
        repaired_mask=repaired_mask,
        background=background,
        saturation=saturation,
        fwhm_px=fwhm_px,
        flux_fwhm=flux_fwhm,
    )
    k_flux = int(np.argmin(np.abs(radii - flux_fwhm * fwhm_px)))
    if x.size > 1:
        _flag_crowding(
            flags,
            x,
            y,
            fluxes,
            errors[k_flux],
            r_aperture=float(radii[k_flux]),
            fwhm_px=fwhm_px,
            blend_fwhm=blend_fwhm,
            annulus=(r_in, r_out),
            sky_std=sky_std,
            wing_beta=wing_beta,
        )

    # PSF fluxes
    flux_psf = np.full(x.size, np.nan)
    flux_psf_err = np.full(x.size, np.nan)
    if psf is not None:
        flux_psf, flux_psf_err, info["psf_scale"] = _psf_fluxes(
            clean,
            data,
            x,
            y,
            psf.scaled_to(fwhm_px) if scale_psf else psf,
            fluxes=fluxes,
            errors=errors,
            radii=radii,
            flags=flags,
            bad=bad,
            background=background,
            saturation=saturation,
            refine_psf_scale=refine_psf_scale,
            rms_map=rms_map,
            fwhm_px=fwhm_px,
            gain=gain,
            sky=sky,
        )
    flags[~np.isfinite(flux_psf)] |= PhotFlag.PSF_FAILED

    # aperture corrections to total flux
    if aperture_correction:
        corr, how = _aperture_corrections(
            fluxes, errors, radii, apertures, flags, flux_psf, x, y, fwhm_px
        )
        fluxes *= corr[:, None]
        errors *= corr[:, None]
        info["aperture_correction"] = dict(zip(names, corr.tolist(), strict=True))
        info["aperture_correction_method"] = how
    k_wide = int(np.argmin(np.abs(radii - r_flag)))
    if k_wide != k_flux:
        extended = _unlike_a_star(
            fluxes[k_flux], errors[k_flux], fluxes[k_wide], errors[k_wide], flags
        )
        flags[extended] |= PhotFlag.BLENDED
    out = _photometry_table(
        apertures,
        x,
        y,
        fluxes,
        errors,
        flux_psf=flux_psf,
        flux_psf_err=flux_psf_err,
        sky=sky,
        sky_err=sky_err,
        flags=flags,
        background=background,
        shape=data.shape,
    )
    return out, info


def _usable_pixels(
    data: np.ndarray, mask: np.ndarray | None, rms: np.ndarray | float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | float]:
    """The bad pixels (not finite or masked), the image with them set to 0, and the RMS (a map,
    a value, or the MAD standard deviation of the good pixels when ``rms`` is None)."""
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= mask.astype(bool)
    clean = np.where(bad, data.dtype.type(0), data) if bad.any() else data
    if rms is None:
        from astropy.stats import mad_std

        rms_map: np.ndarray | float = float(mad_std(clean[~bad]))
    else:
        rms_map = np.ascontiguousarray(rms, dtype=np.float32) if np.ndim(rms) else float(rms)
        if np.ndim(rms_map) and np.shape(rms_map) != data.shape:
            raise ValueError(f"photometer_frame: rms shape {np.shape(rms)} differs")
    return bad, clean, rms_map


def _aperture_fluxes(
    clean: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    radii: np.ndarray,
    *,
    sky: np.ndarray,
    sky_err: np.ndarray,
    rms_map: np.ndarray | float,
    bad: np.ndarray,
    gain: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Sky-subtracted aperture sums (exact overlap) and their CCD-equation errors, one row per
    radius."""
    import sep

    var_map = np.ascontiguousarray(rms_map**2) if np.ndim(rms_map) else float(rms_map) ** 2
    sep_mask = bad if bad.any() else None
    fluxes = np.empty((radii.size, x.size))
    errors = np.empty_like(fluxes)
    for k, r in enumerate(radii):
        s, _, _ = sep.sum_circle(clean, x, y, r, mask=sep_mask, subpix=0)
        area = np.pi * r * r
        if np.ndim(var_map):
            vsum, _, _ = sep.sum_circle(var_map, x, y, r, subpix=0)
        else:
            vsum = var_map * area
        f = s - area * sky
        var = vsum + np.clip(f, 0.0, None) / gain + area**2 * np.nan_to_num(sky_err) ** 2
        fluxes[k] = f
        errors[k] = np.sqrt(var)
    return fluxes, errors


def _pixel_flags(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    *,
    r_edge: float,
    r_flag: float,
    bad: np.ndarray,
    cosmic_mask: np.ndarray | None,
    repaired_mask: np.ndarray | None,
    background: np.ndarray | None,
    saturation: float | None,
    fwhm_px: float,
    flux_fwhm: float,
) -> np.ndarray:
    """EDGE, MASKED, COSMIC and SATURATED: what the pixels around each star say about it."""
    import sep

    ny, nx = data.shape
    flags = np.zeros(x.size, dtype=np.int32)
    edge = (x - r_edge < -0.5) | (x + r_edge > nx - 0.5)
    edge |= (y - r_edge < -0.5) | (y + r_edge > ny - 0.5)
    flags[edge] |= PhotFlag.EDGE
    # the masks summed as they are: sep reads bool pixels as 0 and 1 (a float32 copy of each
    # 2048^2 mask cost 3-4 ms)
    if bad.any():
        nb, _, _ = sep.sum_circle(_as_bool(bad), x, y, r_flag, subpix=1)
        flags[nb > 0] |= PhotFlag.MASKED
    if cosmic_mask is not None and cosmic_mask.any():
        nc, _, _ = sep.sum_circle(_as_bool(cosmic_mask), x, y, r_flag, subpix=1)
        flags[nc > 0] |= PhotFlag.COSMIC
    if repaired_mask is not None and repaired_mask.any():
        r_rep = flux_fwhm * fwhm_px
        nr, _, _ = sep.sum_circle(_as_bool(repaired_mask), x, y, r_rep, subpix=1)
        flags[nr > 0] |= PhotFlag.MASKED
    if saturation is not None:
        level = data if background is None else data + background
        peak = _max_within(level, x, y, max(fwhm_px, 1.0))
        flags[peak >= saturation] |= PhotFlag.SATURATED
    return flags


def _as_bool(mask: np.ndarray) -> np.ndarray:
    """A mask as a C-contiguous bool array for sep (no copy when it is one)."""
    return np.ascontiguousarray(mask, dtype=bool)


def _flag_crowding(
    flags: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    fluxes: np.ndarray,
    flux_err: np.ndarray,
    *,
    r_aperture: float,
    fwhm_px: float,
    blend_fwhm: float,
    annulus: tuple[float, float],
    sky_std: np.ndarray,
    wing_beta: float,
) -> None:
    """Set BLENDED in ``flags`` (in place) for a neighbour within ``blend_fwhm`` FWHM and for the
    wings of brighter stars in the flux aperture of radius ``r_aperture`` (error ``flux_err``)."""
    tree = cKDTree(np.column_stack([x, y]))
    pairs = tree.query_pairs(blend_fwhm * fwhm_px, output_type="ndarray")
    if len(pairs):
        flags[np.unique(pairs.ravel())] |= PhotFlag.BLENDED
    lit = _neighbour_light(
        x,
        y,
        np.nanmax(fluxes, axis=0),
        flux_err,
        fwhm_px=fwhm_px,
        r_aperture=r_aperture,
        annulus=annulus,
        sky_std=float(np.nanmedian(sky_std)) if np.isfinite(sky_std).any() else np.nan,
        beta=wing_beta,
    )
    flags[lit] |= PhotFlag.BLENDED


def _psf_fluxes(
    clean: np.ndarray,
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    model: Any,
    *,
    fluxes: np.ndarray,
    errors: np.ndarray,
    radii: np.ndarray,
    flags: np.ndarray,
    bad: np.ndarray,
    background: np.ndarray | None,
    saturation: float | None,
    refine_psf_scale: bool,
    rms_map: np.ndarray | float,
    fwhm_px: float,
    gain: float,
    sky: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Forced PSF fluxes, their errors and the PSF scale used (saturated pixels left out of the
    fit; the scale refined on bright isolated stars with ``refine_psf_scale``)."""
    from lcdask.psf import forced_psf_photometry

    fit_mask = bad
    if saturation is not None:
        level = data if background is None else data + background
        fit_mask = bad | (level >= saturation)
    if refine_psf_scale:
        model = _refine(
            clean, x, y, fluxes, errors, radii, flags, model, rms_map, fwhm_px, fit_mask
        )
    psf_scale = float(model.scale)
    res = forced_psf_photometry(clean, x, y, model, rms=rms_map, gain=gain, mask=fit_mask, sky=sky)
    return res["flux"].to_numpy(), res["flux_err"].to_numpy(), psf_scale


def _photometry_table(
    apertures: Sequence[tuple[float, str]],
    x: np.ndarray,
    y: np.ndarray,
    fluxes: np.ndarray,
    errors: np.ndarray,
    *,
    flux_psf: np.ndarray,
    flux_psf_err: np.ndarray,
    sky: np.ndarray,
    sky_err: np.ndarray,
    flags: np.ndarray,
    background: np.ndarray | None,
    shape: tuple[int, int],
) -> pd.DataFrame:
    """The `photometry_schema(apertures)` table (``sky`` with the subtracted background added)."""
    ny, nx = shape
    table: dict[str, np.ndarray] = {"x": x, "y": y}
    for k in range(len(fluxes)):
        name = f"flux_ap{k + 1}"
        table[name] = fluxes[k]
        table[f"{name}_err"] = errors[k]
    table["flux_psf"] = flux_psf
    table["flux_psf_err"] = flux_psf_err
    bkg_here = (
        background[
            np.clip(np.rint(y).astype(int), 0, ny - 1), np.clip(np.rint(x).astype(int), 0, nx - 1)
        ]
        if background is not None
        else 0.0
    )
    table["sky"] = sky + bkg_here
    table["sky_err"] = sky_err
    table["flags"] = flags
    schema = photometry_schema(apertures)
    return pd.DataFrame({k: np.asarray(table[k], dtype=t) for k, t in schema.items()}, copy=False)


def _refine(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    fluxes: np.ndarray,
    errors: np.ndarray,
    radii: np.ndarray,
    flags: np.ndarray,
    model: Any,
    rms: np.ndarray | float,
    fwhm_px: float,
    mask: np.ndarray,
) -> Any:
    from lcdask.psf import refine_scale

    k = int(np.argmin(np.abs(radii - 2.0 * fwhm_px)))
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = fluxes[k] / errors[k]
    good = (flags == 0) & (snr > 50) & _isolated(x, y, fluxes[k], 5.0 * fwhm_px, 0.01)
    # without a saturation level, keep away from the frame's brightest (maybe flat-topped) stars
    peak = _max_within(image, x, y, max(fwhm_px, 1.0))
    good &= peak < 0.5 * np.nanmax(peak) if x.size > 10 else good
    idx = np.flatnonzero(good)
    idx = idx[np.argsort(-snr[idx])][:30]
    if idx.size < 5:
        return model
    return refine_scale(image, x[idx], y[idx], model, rms=rms, mask=mask)


def _max_within(level: np.ndarray, x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    ny, nx = level.shape
    r = int(np.ceil(radius))
    oy, ox = np.mgrid[-r : r + 1, -r : r + 1]
    keep = ox**2 + oy**2 <= radius**2
    xi = np.clip(np.rint(x).astype(int)[:, None] + ox[keep][None, :], 0, nx - 1)
    yi = np.clip(np.rint(y).astype(int)[:, None] + oy[keep][None, :], 0, ny - 1)
    return np.nanmax(level[yi, xi], axis=1)


def _moffat_sb(r: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """Surface brightness of a Moffat profile of unit flux at radius ``r``."""
    return (beta - 1.0) / (np.pi * alpha**2) * (1.0 + (r / alpha) ** 2) ** (-beta)


def _neighbour_light(
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    flux_err: np.ndarray,
    *,
    fwhm_px: float,
    r_aperture: float,
    annulus: tuple[float, float],
    sky_std: float,
    beta: float = 2.5,
) -> np.ndarray:
    """True where the wings of brighter stars change a star's aperture flux by more than its
    error: their light in its aperture plus its area times their light left in its sky annulus
    after the 3-sigma clipping (pixels brighter than 3 ``sky_std`` are clipped away).

    A faint star 20 px from a saturated one has its annulus sky raised by the bright star's
    wings, by an amount that follows the seeing: its light curve swings by tens of percent.
    Stars within 2 FWHM are BLENDED anyway; this reaches as far as the wings matter.
    """
    lit = np.zeros(x.size, dtype=bool)
    f = np.nan_to_num(np.abs(flux))
    err = np.where(np.isfinite(flux_err) & (flux_err > 0), flux_err, np.inf)
    if x.size < 2 or not np.isfinite(sky_std) or sky_std <= 0:
        return lit
    alpha = fwhm_px / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    area = np.pi * r_aperture**2
    r_in, r_out = annulus
    # how far each star's wings matter: surface brightness above the faintest error's share
    level = sky_std / np.sqrt(area)  # per pixel, over the aperture: the sky-limited error
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (np.pi * alpha**2 * level / ((beta - 1.0) * f)) ** (-1.0 / beta) - 1.0
        reach = alpha * np.sqrt(np.clip(u, 0.0, None))
    far = np.flatnonzero(reach > 2.0 * fwhm_px)  # stars whose wings reach beyond a blend
    if far.size == 0:
        return lit
    tree = cKDTree(np.column_stack([x, y]))
    found = tree.query_ball_point(np.column_stack([x[far], y[far]]), reach[far] + r_out)
    j = np.repeat(far, [len(v) for v in found])
    i = np.concatenate([np.asarray(v, dtype=np.int64) for v in found])
    keep = (i != j) & (f[j] > f[i])
    i, j = i[keep], j[keep]
    if i.size == 0:
        return lit
    # sample points: the aperture (area-weighted) and the annulus ring, around star i
    ang = np.linspace(0.0, 2.0 * np.pi, 32, endpoint=False)
    r_ap = r_aperture * np.sqrt((np.arange(4) + 0.5) / 4.0)  # equal-area rings
    r_an = np.linspace(r_in, r_out, 4)
    ap = np.stack([np.outer(r_ap, np.cos(ang)).ravel(), np.outer(r_ap, np.sin(ang)).ravel()])
    an = np.stack([np.outer(r_an, np.cos(ang)).ravel(), np.outer(r_an, np.sin(ang)).ravel()])
    dx, dy = (x[i] - x[j])[:, None], (y[i] - y[j])[:, None]
    in_ap = f[j][:, None] * _moffat_sb(np.hypot(dx + ap[0], dy + ap[1]), alpha, beta)
    in_an = f[j][:, None] * _moffat_sb(np.hypot(dx + an[0], dy + an[1]), alpha, beta)
    kept = in_an < 3.0 * sky_std
    sky_bias = np.where(kept, in_an, 0.0).sum(axis=1) / np.maximum(kept.sum(axis=1), 1)
    change = in_ap.mean(axis=1) * area + sky_bias * area
    total = np.zeros(x.size)
    np.add.at(total, i, change)
    lit[total > err] = True
    return lit


def _unlike_a_star(
    flux: np.ndarray,
    flux_err: np.ndarray,
    flux_wide: np.ndarray,
    flux_wide_err: np.ndarray,
    flags: np.ndarray,
    *,
    n_sigma: float = 5.0,
    min_stars: int = 10,
) -> np.ndarray:
    """True where the flux aperture holds another fraction of the light than a point source's.

    ``flux / flux_wide`` (the flux aperture over the widest FWHM-scaled one) is the same for
    every point source of a frame, to within its noise (the light of the ring between the
    two, ``sqrt(flux_wide_err**2 - flux_err**2)``) and the frame's PSF variations (the robust
    scatter of the ratio over unflagged stars at S/N > 100). A source off that by more than
    ``n_sigma`` is extended: an unresolved pair (whose 1.5 FWHM fraction follows the seeing:
    a simulated pair 0.8 FWHM apart swings by 8%), a neighbour's light in the ring, a galaxy.
    Without ``min_stars`` bright clean stars to learn the ratio from, nothing is flagged.
    """
    out = np.zeros(flux.size, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = flux / flux_wide
        snr = flux / flux_err
        ring = np.sqrt(np.clip(flux_wide_err**2 - flux_err**2, 0.0, None)) / np.abs(flux_wide)
    clean = (flags & ~int(PhotFlag.PSF_FAILED)) == 0
    ref = clean & (snr > 100) & np.isfinite(ratio)
    if ref.sum() < min_stars:
        return out
    typical = np.median(ratio[ref])
    spread = 1.4826 * np.median(np.abs(ratio[ref] - typical))
    sigma = np.hypot(ring * np.abs(ratio), spread)
    with np.errstate(invalid="ignore"):
        out = np.abs(ratio - typical) > n_sigma * sigma
    return out & np.isfinite(ratio)


def _isolated(
    x: np.ndarray, y: np.ndarray, flux: np.ndarray, radius: float, fraction: float
) -> np.ndarray:
    """True where no other source brighter than ``fraction`` of the star lies within radius."""
    ok = np.ones(x.size, dtype=bool)
    if x.size < 2:
        return ok
    pairs = cKDTree(np.column_stack([x, y])).query_pairs(radius, output_type="ndarray")
    if len(pairs):
        f = np.nan_to_num(np.abs(flux))
        i, j = pairs[:, 0], pairs[:, 1]
        ok[i[f[j] > fraction * f[i]]] = False
        ok[j[f[i] > fraction * f[j]]] = False
    return ok


def _aperture_corrections(
    fluxes: np.ndarray,
    errors: np.ndarray,
    radii: np.ndarray,
    apertures: Sequence[tuple[float, str]],
    flags: np.ndarray,
    flux_psf: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    fwhm_px: float,
    n_min: int = 5,
) -> tuple[np.ndarray, str]:
    """Factors that turn each aperture flux into a total flux, and how they were found.

    With PSF fluxes: the median over bright, clean stars of ``flux_psf / flux_ap`` (the PSF
    flux is a total flux: the ePSF is normalised to the whole star, and its fit region is small
    enough that faint neighbours, which bias large apertures and curves of growth in crowded
    fields, hardly matter). Without: the curve of growth up to the largest FWHM-scaled aperture
    (no correction beyond it).
    """
    fwhm_idx = [k for k, (_, u) in enumerate(apertures) if u == "fwhm"]
    ref = max(fwhm_idx, key=lambda k: radii[k]) if fwhm_idx else int(np.argmax(radii))
    clean = flags == 0
    corr = np.ones(radii.size)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = fluxes / errors
        if np.isfinite(flux_psf).sum() >= n_min:
            method = "psf"
            for k in range(radii.size):
                good = clean & (snr[k] > 50) & np.isfinite(flux_psf)
                good &= _isolated(x, y, flux_psf, radii[k] + 3.0 * fwhm_px, 0.005)
                good = np.flatnonzero(good)
                good = good[np.argsort(-snr[k][good])][:200]
                if len(good) >= n_min:
                    corr[k] = np.median(flux_psf[good] / fluxes[k, good])
            return corr, method
        method = "curve_of_growth"
        good = np.flatnonzero(clean & (snr[ref] > 100))
        good = good[np.argsort(-snr[ref][good])][:100]
        if len(good) < n_min:
            return corr, "none"
        for k in range(radii.size):
            corr[k] = np.median(fluxes[ref, good] / fluxes[k, good])
    return corr, method
