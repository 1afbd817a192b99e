"""Level 2 and 3 over a calibrated cube: detection, plate solving, co-add, photometry, zero points.

The orchestration follows DESIGN.md (`run_level2`):

1. one task per light frame reads its own calibrated frame from the store and detects sources
   (`frame_detections`);
2. the driver plate-solves one reference frame (of the three with most detections pointing at
   the night's field, the first that solves) with the configured solvers
   (`lcdask.astrometry.AstrometryConfig`; "auto": the header WCS checked against the catalog,
   the asterism solver against the catalog, a blind ``solve-field``, the web API); with no
   catalog, the frames are aligned to an internal catalog of its stars placed on the sky by
   that solution (or, unsolved, by its header WCS or a nominal tangent plane);
3. every frame is refined from the reference solution, with a first zero point on its detection
   fluxes (`frame_astrometry_photometry`), one task per frame (drifts of any size that leave
   stars in common with the reference); a frame whose refinement fails is retried from its
   solved neighbours in time, and, with no reference catalog, also against the neighbour's own
   stars (a frame that has drifted off the reference's field); then once on its own by the
   configured solvers (a re-pointed frame); a frame whose header points far from the night's
   field, or that solves elsewhere, is flagged "another field". Each frame's header pointing
   is compared with its solution (`FrameFlag.POINTING` when far off);
4. up to ``coadd_frames`` solved frames, spread over the night, are co-added
   (`lcdask.coadd.coadd_tile`, one task per output tile, each reading only the windows of the
   frames it needs, scaled to a common transparency) and the ePSF is built from the co-add;
5. one task per solved frame: cosmic rays, sky, aperture and PSF photometry at the detections
   (`frame_photometry`), then the zero point and slope fitted again on those fluxes
   (`frame_photcal`, RANSAC).

Failed frames are flagged with their reason, never fatal.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from astropy.coordinates import angular_separation
from astropy.io import fits
from astropy.wcs import WCS

from lcdask.astrometry import (
    AstrometryConfig,
    AstrometrySolution,
    SolveHints,
    header_pixel_scale,
    plate_solvers,
    refine_wcs,
    sharper_than_stars,
    solve_hints,
    solve_in_turn,
    wcs_rotation_deg,
)
from lcdask.astrometry.frame import internal_catalog, raw_header
from lcdask.calibrate import PixelFlag
from lcdask.catalogs import frames_query_circle, reference_catalog, resolve_band
from lcdask.coadd import Coadd, coadd_tile, optimal_wcs, tile_size_for, tile_slices
from lcdask.config import Level2Config
from lcdask.cosmics import CROSS_2, clean_cosmics, remove_cosmics
from lcdask.detect import DetectionFlag, detect_frame
from lcdask.errors import FrameError, LcdaskError
from lcdask.flags import LEVEL2_FLAGS, UNUSABLE, FrameFlag
from lcdask.io import cube as cube_io
from lcdask.io.atomic import atomic_path
from lcdask.io.headers import header_wcs
from lcdask.photcal import (
    INSTRUMENTAL_ZERO_POINT,
    calibrate_fluxes,
    fit_zero_point,
    instrumental_mag,
    match_to_catalog,
)
from lcdask.photometry import flux_method, photometer_frame
from lcdask.psf import PSFModel, build_epsf
from lcdask.sky import subtract_sky
from lcdask.stages._parallel import gather_results, map_tasks, share, submit_task
from lcdask.stages.context import RunContext, catalog_cache
from lcdask.stages.ingest import NotAppendable

if TYPE_CHECKING:  # lcdask.config imports the stages' options
    from lcdask.config import Config

__all__ = [
    "Level2Config",
    "Level2Result",
    "Level2Start",
    "append_level2",
    "frame_astrometry_photometry",
    "frame_detections",
    "frame_photcal",
    "frame_photometry",
    "run_level2",
    "run_level2_stage",
]

log = logging.getLogger("lcdask")

NO_CATALOG_MESSAGE = "no reference catalog: instrumental magnitudes (zero point 25)"

FRAME_COLUMNS = {
    "frame": "int64",
    "n_sources": "int64",
    "sky": "float64",
    "sky_rms": "float64",
    "fwhm_px": "float64",
    "astrometry_status": "str",
    "astrometry_message": "str",
    "astrometry_n_matches": "int64",
    "astrometry_rms_arcsec": "float64",
    "wcs_solved": "str",
    "zero_point": "float64",
    "zero_point_err": "float64",
    "zp_slope": "float64",
    "zp_slope_err": "float64",
    "zp_n_stars": "int64",
    "zp_rms": "float64",
    "photcal_message": "str",
    "pointing_offset_arcmin": "float64",
    "pointing_message": "str",
    "aperture_correction": "float64",
    "psf_scale": "float64",
    "cosmic_pixels": "object",
}
"""Per-frame results of Level 2 (``frames.parquet``; the scalars also as coordinates on ``frame``
in the cube). ``cosmic_pixels`` holds the flat indices (``y * nx + x``, int32) of the pixels
Level 3 took for cosmic rays, which forced photometry reuses (`lcdask.stages.forced`)."""


@dataclass(frozen=True)
class Level2Result:
    """What `run_level2` gives the orchestrator to write.

    Attributes
    ----------
    detections : pandas.DataFrame
        All detections with ``frame``, sky positions, Level 3 fluxes and calibrated magnitudes.
    frames : pandas.DataFrame
        One row per light frame (`FRAME_COLUMNS`), with failures explained.
    coadd : lcdask.coadd.Coadd or None
        The co-add (None with ``coadd_frames = 0`` or when no frame was solved).
    psf : lcdask.psf.PSFModel or None
        The ePSF (of the co-add, else of the reference frame; None with ``flux = "detection"``
        or when it could not be built).
    catalog : pandas.DataFrame or None
        The catalog the frames were aligned against: the reference catalog, or the internal
        catalog of the reference frame's stars.
    photometric : bool
        Whether ``catalog`` has photometric magnitudes.
    timings : dict
        Seconds of each step: ``detection``, ``reference``, ``astrometry``, ``coadd``,
        ``epsf``, ``photometry`` (those that ran).
    absolute : bool
        Whether the frames' sky positions are absolute (a plate solution, or a header WCS),
        rather than a nominal tangent plane that only aligns the frames to each other.
    """

    detections: pd.DataFrame
    frames: pd.DataFrame
    coadd: Coadd | None
    psf: PSFModel | None
    catalog: pd.DataFrame | None = None
    photometric: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    absolute: bool = True


@dataclass(frozen=True)
class Level2Start:
    """Where an earlier Level 2 left off, to process appended frames alike.

    Attributes
    ----------
    catalog : pandas.DataFrame
        The catalog the frames were aligned against (``Level2Result.catalog``).
    photometric : bool
        Whether its magnitudes are photometric (else instrumental, from an internal catalog).
    wcs : astropy.wcs.WCS
        A solved WCS to refine the new frames from (the last solved frame's).
    psf : lcdask.psf.PSFModel or None
        The run's ePSF.
    """

    catalog: pd.DataFrame
    photometric: bool
    wcs: WCS
    psf: PSFModel | None


def frame_detections(
    cube_path: str | Path, index: int, config: Level2Config
) -> tuple[int, pd.DataFrame, dict[str, Any]]:
    """Detect the sources of one calibrated frame, read from the cube by the worker itself.

    Parameters
    ----------
    cube_path : str or Path
        The cube store holding ``calibrated`` and ``pixel_flags``.
    index : int
        The frame.
    config : Level2Config

    Returns
    -------
    tuple
        ``(index, detections, stats)`` as `lcdask.detect.detect_frame` gives them.
    """
    image = cube_io.read_item(cube_path, "calibrated", index)
    # a sparse sample first: a whole-frame isfinite pass (4 ms) only for a frame mostly NaN
    if not (np.isfinite(image[::61, ::59]).any() or np.isfinite(image).any()):
        raise FrameError(f"frame {index}: no finite pixels")
    pixel_flags = cube_io.read_item(cube_path, "pixel_flags", index)
    detections, stats = detect_frame(
        image,  # its non-finite pixels are masked (and zeroed) by detect_frame
        threshold_sigma=config.threshold_sigma,
        min_area=config.min_area,
        backend=config.backend,
    )
    if pixel_flags is not None and len(detections):
        # A detection whose core touches a saturated raw pixel is flagged saturated.
        hit = _near_flagged(
            (pixel_flags & _SATURATED) != 0,
            detections["x"].to_numpy(),
            detections["y"].to_numpy(),
        )
        detections["flags"] = detections["flags"].to_numpy() | np.where(
            hit, int(DetectionFlag.SATURATED), 0
        ).astype(np.int32)
    return index, detections, stats


def _near_flagged(flagged: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether a flagged pixel lies within 2 steps (up/down/left/right) of each position's pixel.

    The same as looking ``flagged`` dilated twice by the 4-connected cross up at the positions,
    without dilating the whole frame (45 ms on 2048^2): only the 13 pixels around each position.
    """
    ny, nx = flagged.shape
    ix = np.clip(np.round(x).astype(int), 0, nx - 1)
    iy = np.clip(np.round(y).astype(int), 0, ny - 1)
    hit = np.zeros(len(ix), bool)
    if not flagged.any():
        return hit
    for dy, dx in CROSS_2:  # clipped at the edges: a pixel nearer the position, same answer
        hit |= flagged[np.clip(iy + dy, 0, ny - 1), np.clip(ix + dx, 0, nx - 1)]
    return hit


# The pixel flags' bits as uint8: an IntFlag operand makes numpy promote a whole frame of flags
# to int64 (15-18 ms per operation on 2048^2, against 0.5 ms)
_STATIC_BAD = np.uint8(PixelFlag.HOT | PixelFlag.DEAD | PixelFlag.BAD_COLUMN)
_INTERPOLATED = np.uint8(PixelFlag.INTERPOLATED)
_SATURATED = np.uint8(PixelFlag.SATURATED)


def _writable_float32(image: np.ndarray) -> np.ndarray:
    """``image`` as a float32 array this task may change in place (a copy only when needed)."""
    image = np.asarray(image, dtype=np.float32)
    return image if image.flags.writeable and image.flags.c_contiguous else image.copy()


def prepared_frame(
    cube_path: str | Path,
    index: int,
    config: Level2Config,
    fwhm_px: float,
    psf=None,
    cosmic_pixels: np.ndarray | None = None,
):
    """A calibrated frame with cosmic rays cleaned and the sky subtracted, and its masks.

    Returns ``(image, sky, mask, cosmic, gain, repaired)``: ``mask`` the bad pixels left as they
    are, ``repaired`` those the calibration's cleaning replaced by interpolation. Given
    ``cosmic_pixels`` (flat indices that an earlier call found), those are cleaned instead of
    detecting cosmic rays again: the same frame comes out, without the detection's cost.
    """
    image = _writable_float32(cube_io.read_item(cube_path, "calibrated", index))
    mask = ~np.isfinite(image)
    repaired = np.zeros(image.shape, bool)
    saturation = None  # the lowest calibrated value of a saturated pixel: no cosmic ray above
    flags = cube_io.read_item(cube_path, "pixel_flags", index)
    if flags is not None:  # bad pixels that cleaning did not replace
        mask |= ((flags & _STATIC_BAD) != 0) & ((flags & _INTERPOLATED) == 0)
        repaired = (flags & _INTERPOLATED) != 0  # values guessed by the cleaning
        saturated = image.ravel()[np.flatnonzero((flags & _SATURATED) != 0)]
        saturated = saturated[np.isfinite(saturated)]
        if saturated.size:
            saturation = float(saturated.min())
    gain, read_noise = (cube_io.read_item(cube_path, k, index) for k in ("gain_e_adu", "rdnoise_e"))
    gain = np.nan if gain is None else float(gain)
    read_noise = np.nan if read_noise is None else float(read_noise)
    gain = gain if np.isfinite(gain) and gain > 0 else 1.0
    read_noise = read_noise if np.isfinite(read_noise) and read_noise > 0 else 10.0
    if mask.any():
        image[mask] = 0.0
    cosmic = np.zeros(image.shape, bool)
    method = config.cosmics
    sharp = np.isfinite(fwhm_px) and fwhm_px >= 2.0
    if method == "auto":
        method = "fast" if sharp else "psf"
    if method == "psf" and (psf is None or not np.isfinite(fwhm_px)):
        method = "none"  # no ePSF yet (reference_psf): no test for an undersampled frame
    if cosmic_pixels is not None:
        cosmic.flat[np.asarray(cosmic_pixels, np.int64)] = True
        if cosmic.any():  # as remove_cosmics cleans what it detects
            image = clean_cosmics(image, cosmic, bad_mask=mask)
    elif method != "none":
        extra = {"psf": psf, "fwhm_px": fwhm_px} if method == "psf" else {}
        image, cosmic = remove_cosmics(
            image,
            gain=gain,
            read_noise_e=read_noise,
            method=method,
            mask=mask,
            saturation=saturation,
            **extra,
        )
    subtracted, sky = subtract_sky(image, mask=mask | cosmic)
    return subtracted, sky, mask, cosmic, gain, repaired


def reference_psf(
    cube_path: str | Path, index: int, fwhm_px: float, config: Level2Config
) -> PSFModel | None:
    """The ePSF of a frame (the reference frame of a run), or None when it cannot be built.

    Parameters
    ----------
    cube_path : str or Path
        The cube store.
    index : int
        The frame.
    fwhm_px : float
        Its FWHM from detection.
    config : Level2Config

    Returns
    -------
    lcdask.psf.PSFModel or None
    """
    image, _, mask, cosmic, _, _ = prepared_frame(cube_path, index, config, fwhm_px)
    try:
        psf, _ = build_epsf(image, mask=mask | cosmic, fwhm_px=fwhm_px, oversampling=3)
    except (LcdaskError, ValueError, RuntimeError) as exc:
        log.warning("frame %d: no ePSF (%s); PSF fluxes are not measured", index, exc)
        return None
    return psf


def frame_photometry(
    cube_path: str | Path,
    index: int,
    detections: pd.DataFrame,
    fwhm_px: float,
    psf: PSFModel | None,
    config: Level2Config,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Level 3 photometry of one frame at its detections: cosmic rays, sky, apertures, PSF.

    Parameters
    ----------
    cube_path : str or Path
        The cube store (the worker reads the frame itself).
    index : int
        The frame.
    detections : pandas.DataFrame
        Its detections (positions to measure).
    fwhm_px : float
        Its FWHM.
    psf : lcdask.psf.PSFModel or None
        The ePSF (scaled to this frame's FWHM inside `lcdask.photometry.photometer_frame`).
    config : Level2Config

    Returns
    -------
    table : pandas.DataFrame
        The detections with ``flux``/``flux_err`` replaced by the flux `Level2Config.flux`
        chooses, the detection's own kept as ``flux_det``/``flux_det_err``, and every aperture
        and PSF column of the photometry; flags merged.
    corrections : dict
        ``aperture_correction`` (the factor applied to that flux; 1 for the PSF flux),
        ``psf_scale`` (the ePSF's scale on this frame, NaN without one) and ``cosmic_pixels``
        (flat indices of the cosmic-ray pixels; None without photometry): the frame's own
        photometry, which `lcdask.stages.forced` repeats at forced positions.
    """
    nan = {"aperture_correction": np.nan, "psf_scale": np.nan, "cosmic_pixels": None}
    method = flux_method(config.flux)
    if not method.measured or detections is None or not len(detections):
        return detections, nan
    image, sky, mask, cosmic, gain, repaired = prepared_frame(
        cube_path, index, config, fwhm_px, psf
    )
    table, info = photometer_frame(
        image,
        fwhm_px=fwhm_px,
        gain=gain,
        rms=sky.rms,
        x=detections["x"].to_numpy(),
        y=detections["y"].to_numpy(),
        background=sky.background,
        psf=psf,
        mask=mask,
        cosmic_mask=cosmic,
        repaired_mask=repaired,
    )
    out = detections.rename(columns={"flux": "flux_det", "flux_err": "flux_det_err"})
    column = method.kept_column(psf)
    extra = table.drop(columns=["x", "y", "flags"]).reset_index(drop=True)
    out = pd.concat([out.reset_index(drop=True), extra], axis=1)
    out["flux"], out["flux_err"] = table[column].to_numpy(), table[f"{column}_err"].to_numpy()
    out["flags"] = out["flags"].to_numpy() | table["flags"].to_numpy().astype(np.int32)
    corrections = {
        "aperture_correction": float(info["aperture_correction"].get(column, 1.0)),
        "psf_scale": float(info["psf_scale"]),
        "cosmic_pixels": np.flatnonzero(cosmic).astype(np.int32),
    }
    return out, corrections


def frame_astrometry_photometry(
    detections: pd.DataFrame,
    wcs_guess: WCS,
    catalog: pd.DataFrame,
    *,
    image_shape: tuple[int, int],
    exptime_s: float,
    config: Level2Config,
    photometric: bool = True,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Refine a frame's WCS from a guess, then fit its zero point and calibrate its fluxes.

    Parameters
    ----------
    detections : pandas.DataFrame
        The frame's detections (`lcdask.detect.DETECTION_SCHEMA`).
    wcs_guess : astropy.wcs.WCS
        A close WCS (the reference frame's solution, or a neighbour's).
    catalog : pandas.DataFrame
        Reference stars: ``ra``, ``dec``, the band's magnitude and ``<band>_err``.
    image_shape : tuple of int
        ``(ny, nx)``.
    exptime_s : float
        Exposure, for instrumental magnitudes per second.
    config : Level2Config
    photometric : bool, optional
        Whether the catalog's magnitudes are photometric. When False (an internal catalog made
        from a frame's own detections) no zero point is fitted and ``mag`` is the instrumental
        magnitude plus `INSTRUMENTAL_ZERO_POINT`.

    Returns
    -------
    detections : pandas.DataFrame
        With ``ra``, ``dec``, ``mag``, ``mag_err``, ``flux_jy``, ``flux_jy_err`` (NaN where the
        solve or the zero point failed).
    row : dict
        The frame's astrometry and zero point (keys of `FRAME_COLUMNS`).
    """
    solution = refine_wcs(
        detections,
        wcs_guess,
        catalog,
        image_shape=image_shape,
        max_shift_px=config.max_shift_px,
        mag_column=config.band,
    )
    row = _solution_row(solution)
    ra, dec = np.full(len(detections), np.nan), np.full(len(detections), np.nan)
    if solution.ok:
        ra, dec = solution.wcs.all_pix2world(
            detections["x"].to_numpy(), detections["y"].to_numpy(), 0
        )
    out = _with_columns(detections, {"ra": ra, "dec": dec})
    return frame_photcal(
        out, row, catalog if photometric else None, exptime_s=exptime_s, config=config
    )


def frame_photcal(
    detections: pd.DataFrame,
    row: dict[str, Any],
    catalog: pd.DataFrame | None,
    *,
    exptime_s: float,
    config: Level2Config,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Fit a solved frame's zero point and slope (RANSAC) and calibrate its fluxes.

    Parameters
    ----------
    detections : pandas.DataFrame
        The frame's detections with ``flux``, ``flux_err``, ``flags`` and sky ``ra``, ``dec``.
    row : dict
        The frame's astrometry (`_solution_row`); not changed.
    catalog : pandas.DataFrame or None
        Reference stars (``ra``, ``dec``, ``<band>``, ``<band>_err``). None when there is no
        photometric catalog: ``mag`` is then the instrumental magnitude plus
        `INSTRUMENTAL_ZERO_POINT` and no zero point is fitted.
    exptime_s : float
        Exposure, for instrumental magnitudes per second.
    config : Level2Config

    Returns
    -------
    detections : pandas.DataFrame
        With ``mag``, ``mag_err``, ``flux_jy``, ``flux_jy_err`` (NaN where the solve or the zero
        point failed).
    row : dict
        ``row`` with the zero point's keys of `FRAME_COLUMNS` set.
    """
    band = _resolved_band(config)
    names = ("mag", "mag_err", "flux_jy", "flux_jy_err")
    uncalibrated = {name: np.full(len(detections), np.nan) for name in names}
    row = row | _PHOTCAL_DEFAULTS
    if not row.get("wcs_solved"):
        row["photcal_message"] = "no WCS: photometric calibration skipped"
        return _with_columns(detections, uncalibrated), row
    flux, flux_err = detections["flux"].to_numpy(), detections["flux_err"].to_numpy()
    if catalog is None:
        with np.errstate(invalid="ignore", divide="ignore"):
            uncalibrated["mag"] = instrumental_mag(flux, exptime_s) + INSTRUMENTAL_ZERO_POINT
            uncalibrated["mag_err"] = 1.0857 * flux_err / np.abs(flux)
        row["photcal_message"] = NO_CATALOG_MESSAGE
        return _with_columns(detections, uncalibrated), row
    ra, dec = detections["ra"].to_numpy(), detections["dec"].to_numpy()
    match = match_to_catalog(
        ra, dec, catalog["ra"], catalog["dec"], radius_arcsec=config.match_radius_arcsec
    )
    det, cat = match.det_index, match.cat_index
    good = (detections["flags"].to_numpy()[det] == 0) & (flux[det] > 0)
    try:
        fit = fit_zero_point(
            instrumental_mag(flux[det], exptime_s),
            1.0857 * flux_err[det] / np.abs(flux[det]),
            catalog[band].to_numpy()[cat],
            catalog[f"{band}_err"].to_numpy()[cat],
            fit_slope=config.fit_slope,
            good=good,
        )
    except FrameError as exc:
        row["photcal_message"] = str(exc)
        return _with_columns(detections, uncalibrated), row
    calibrated = calibrate_fluxes(flux, flux_err, exptime_s, fit)
    out = _with_columns(detections, dict(zip(names, calibrated, strict=True)))
    row.update(
        zero_point=fit.zero_point,
        zero_point_err=fit.zero_point_err,
        zp_slope=fit.slope,
        zp_slope_err=fit.slope_err,
        zp_n_stars=fit.n_used,
        zp_rms=fit.rms,
    )
    return out, row


def _resolved_band(config: Level2Config) -> str:
    """``config.band``, which a per-frame function cannot resolve from "auto" alone."""
    if config.band == "auto":
        raise ValueError(
            'band = "auto" names no catalog column: resolve it from the frames\' filters first '
            "(lcdask.catalogs.resolve_band, as run_level2 does), or give the band"
        )
    return config.band


def _with_columns(table: pd.DataFrame, columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """A copy of ``table`` with ``columns`` set: existing ones replaced, new ones appended.

    New columns are appended in one concatenation (inserting them one by one costs ~0.3 ms
    each with pandas' string column index).
    """
    if not table.index.is_unique or any(name in table.columns for name in columns):
        out = table.copy()
        for name, values in columns.items():
            out[name] = values
        return out
    return pd.concat([table, pd.DataFrame(columns, index=table.index)], axis=1)


_PHOTCAL_DEFAULTS: dict[str, Any] = {
    "zero_point": np.nan,
    "zero_point_err": np.nan,
    "zp_slope": np.nan,
    "zp_slope_err": np.nan,
    "zp_n_stars": 0,
    "zp_rms": np.nan,
    "photcal_message": "",
}


def _solution_row(solution: AstrometrySolution) -> dict[str, Any]:
    return {
        "astrometry_status": solution.status,
        "astrometry_message": solution.message,
        "astrometry_n_matches": int(solution.n_matches),
        "astrometry_rms_arcsec": float(solution.rms_arcsec),
        "wcs_solved": solution.wcs.to_header_string(relax=True) if solution.ok else "",
        **_PHOTCAL_DEFAULTS,
    }


def run_level2(
    cube,
    cube_path: str | Path,
    catalog: pd.DataFrame | None,
    *,
    client=None,
    config: Level2Config = Level2Config(),
    frames: Sequence[int] | None = None,
    previous: Level2Start | None = None,
    astrometry: AstrometryConfig | None = None,
) -> Level2Result:
    """Detect, plate-solve, co-add, measure and calibrate every usable light frame of a cube.

    Parameters
    ----------
    cube : xarray.Dataset
        The opened cube (for its per-frame metadata).
    cube_path : str or Path
        Its store, which workers read their frames from.
    catalog : pandas.DataFrame or None
        Reference catalog (``ra``, ``dec``, ``<band>``, ``<band>_err``). When None, or when no
        reference frame can be solved against it, the frames are aligned to an internal
        catalog: the reference frame's own detections placed on the sky by its header WCS (or,
        without one, by a tangent plane at the header pointing with the pixel scale of the
        optics); fluxes then stay relative (see `frame_photcal`).
    client : distributed.Client, optional
        Cluster; serial in this process when None.
    config : Level2Config, optional
    frames : sequence of int, optional
        Only these frames (with ``previous``: frames appended to a run).
    previous : Level2Start, optional
        Where an earlier run left off: its catalog, a solved WCS to refine from and its ePSF.
        The reference solve and the co-add are then not done again.
    astrometry : lcdask.astrometry.AstrometryConfig, optional
        The plate solvers of the reference frame and of frames that fail to follow it (default
        ``AstrometryConfig()``: "auto").

    Returns
    -------
    Level2Result
        Detections, per-frame results, the co-add, the ePSF and the catalog the frames were
        aligned (and calibrated) against.
    """
    cube_path = str(cube_path)
    if config.band == "auto":  # as `lcdask.run` resolves it, for callers of this function
        lights_filter = cube["filter"].values[cube["frame_type"].values == "light"]
        config = replace(config, band=resolve_band("auto", [str(f) for f in lights_filter])[0])
    astrometry = AstrometryConfig() if astrometry is None else astrometry
    is_light = (cube["frame_type"].values == "light") & ((cube["flags"].values & UNUSABLE) == 0)
    lights = np.flatnonzero(is_light)
    if frames is not None:
        lights = np.intersect1d(lights, np.asarray(frames, int))
    shape = (cube.sizes["y"], cube.sizes["x"])
    band = config.band
    if catalog is not None:
        missing = [c for c in ("ra", "dec", band, f"{band}_err") if c not in catalog]
        if missing:
            raise ValueError(f"the reference catalog lacks the column(s) {missing}")

    timings: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(step: str) -> None:
        now = time.perf_counter()
        timings[step] = round(now - clock[0], 3)
        clock[0] = now

    # 1. detection, one task per frame
    detected = map_tasks(client, _safe_detections, [cube_path] * len(lights), lights, config=config)
    results = gather_results(client, detected, "level2: detection")
    lap("detection")
    stats = {i: s for i, _, s in results}
    found = {i: d for i, d, _ in results}
    counts = {i: (len(d) if d is not None else 0) for i, d, _ in results}

    # 2. the reference frame's plate solution (driver), or an internal catalog
    if previous is not None:
        catalog, photometric, psf = previous.catalog, previous.photometric, previous.psf
        start_wcs, reference, unsolved, absolute = previous.wcs, None, set(), True
    else:
        reference, start_wcs, catalog, photometric, unsolved, absolute = _reference(
            cube, found, counts, catalog, config, astrometry
        )
        lap("reference")
        if start_wcs is None:
            rows = {i: _failed_row("no reference frame could be plate-solved") for i in lights}
            return _result(
                lights, stats, counts, rows, {}, None, None, catalog, photometric, timings, False
            )

    # 3. every frame refined from the reference (one task each), failures from a neighbour
    exptime = cube["exptime_s"].values
    guess = start_wcs if client is None else _wcs_message(start_wcs)
    pointing = _header_pointing(cube, lights)
    shared_catalog = share(client, catalog)
    refined = [
        submit_task(
            client,
            _refine_task,
            detected[p] if client is not None else results[p],
            guess,
            shared_catalog,
            shape,
            float(exptime[i]),
            config,
            photometric,
            pointing[i],
        )
        for p, i in enumerate(lights)
    ]
    tables, rows = {}, {}
    for i, (table, row) in zip(
        lights, gather_results(client, refined, "level2: astrometry"), strict=True
    ):
        tables[i], rows[i] = table, row
    if any(not rows[i].get("wcs_solved") for i in lights):
        _retry_from_neighbours(
            lights, tables, rows, found, catalog, shape, exptime, config, photometric
        )
    if any(not rows[i].get("wcs_solved") for i in lights):
        _retry_on_own(
            cube,
            lights,
            tables,
            rows,
            found,
            catalog,
            start_wcs,
            (shape, exptime, config, photometric),
            astrometry=astrometry,
            skip=unsolved,
        )
    _check_pointing(cube, lights, rows, shape)
    lap("astrometry")

    # 4. the co-add of the solved frames (tiles as tasks) and its ePSF
    coadd = None
    if previous is None:
        coadd = _coadd_run(cube, cube_path, lights, rows, stats, client=client, config=config)
        lap("coadd")
        psf = None
        if flux_method(config.flux).measured:
            psf = _run_psf(cube_path, coadd, reference, stats, client=client, config=config)
            lap("epsf")

    # 5. Level 3 photometry and the zero point of every solved frame, one task each; with
    # flux = "detection" the refine tasks' zero points stand (the same fit of the same fluxes)
    measured = flux_method(config.flux).measured
    solved = [i for i in lights if rows[i].get("wcs_solved") and measured]
    fwhm = {i: float(stats[i].get("fwhm_px", np.nan)) for i in lights}
    shared_psf = share(client, psf) if solved else psf
    measured = [
        submit_task(
            client,
            _measure_task,
            cube_path,
            int(i),
            tables[i],
            rows[i],
            fwhm[i],
            shared_psf,
            shared_catalog if photometric else None,
            float(exptime[i]),
            config,
        )
        for i in solved
    ]
    for i, (table, row) in zip(
        solved, gather_results(client, measured, "level2: photometry"), strict=True
    ):
        tables[i], rows[i] = table, row
    lap("photometry")
    return _result(
        lights, stats, counts, rows, tables, coadd, psf, catalog, photometric, timings, absolute
    )


def _reference(cube, found, counts, catalog, config, astrometry):
    """The reference frame and its plate solution, or else an internal catalog.

    The three frames with most detections (those whose header points far from the night's field
    last) are tried in turn with the configured solvers (`lcdask.astrometry.plate_solvers`); a
    costly one (``solve-field``, the web API) only on the first, whose failure says the field
    cannot be solved that way. With no reference catalog, the frames are aligned to the
    reference frame's stars placed on the sky by its solution, else by its header WCS, else by
    a nominal tangent plane (`nominal_wcs`); then, since only the costly solvers work
    without a catalog, the other candidates are not tried once those have failed.

    Returns ``(reference, wcs, catalog, photometric, unsolved, absolute)``: ``wcs`` is None when
    no frame could be solved nor has enough stars for an internal catalog; ``unsolved`` names
    the costly solvers that failed (not tried again on single frames); ``absolute`` says whether
    the sky positions are (a plate solution, a header WCS) or only align the frames (a nominal
    tangent plane).
    """
    shape = (cube.sizes["y"], cube.sizes["x"])
    band = config.band
    night = _night_pointing(cube, list(found))
    order = sorted(found, key=lambda i: (_far_from(cube, i, night, shape), -counts[i]))
    unsolved: set[str] = set()
    for candidate in order[:3] if order and counts[order[0]] >= 3 else []:
        hints, guess = _frame_hints(cube, candidate, shape)
        solvers = [
            s
            for s in plate_solvers(astrometry, hints=hints, mag_column=band)
            if not (getattr(s, "costly", False) and s.name in unsolved)
        ]
        if not solvers:
            break
        solution = solve_in_turn(solvers, found[candidate], shape, wcs_guess=guess, catalog=catalog)
        if solution.ok:
            log.info("reference frame %d %s", candidate, _how_solved(solution))
            if catalog is not None:
                return candidate, solution.wcs, catalog, True, unsolved, True
            stars, internal = internal_catalog(
                found[candidate],
                cube,
                candidate,
                band=band,
                wcs=solution.wcs,
                source=f"{solution.solver}'s plate solution",
            )
            log.warning(
                "no reference catalog: frames aligned to %s (absolute positions); fluxes are "
                "relative, magnitudes instrumental",
                internal.message,
            )
            return candidate, solution.wcs, stars, False, unsolved, True
        log.info("frame %d not solved as the reference: %s", candidate, solution.message)
        unsolved |= {s.name for s in solvers if getattr(s, "costly", False)}
        if catalog is None:
            break  # no catalog: only the costly solvers could solve a frame, and they did not
    if not order or counts[order[0]] < 3:
        return None, None, catalog, catalog is not None, unsolved, False
    reference = order[0]
    catalog, solution = internal_catalog(found[reference], cube, reference, band=band)
    log.warning(
        "no plate solution: frames aligned to %s; fluxes are relative, magnitudes instrumental",
        solution.message,
    )
    absolute = bool(str(cube["wcs_header"].values[reference]))  # else a nominal tangent plane
    return reference, solution.wcs, catalog, False, unsolved, absolute


def _how_solved(solution: AstrometrySolution) -> str:
    """``solved by ...`` for the log: the solver's own words when they say it, else its name."""
    if solution.message.startswith("solved"):
        return solution.message
    scale = np.sqrt(abs(np.linalg.det(solution.wcs.pixel_scale_matrix))) * 3600
    return (
        f'solved by the {solution.solver} solver ({scale:.2f}"/px, rotation '
        f"{wcs_rotation_deg(solution.wcs):.1f} deg): {solution.message}"
    )


def _frame_hints(cube, index: int, shape) -> tuple[SolveHints, WCS | None]:
    """A frame's `lcdask.astrometry.SolveHints` and its header WCS (None without one)."""
    text = str(cube["wcs_header"].values[index])
    wcs = header_wcs(fits.Header.fromstring(text)) if text else None
    hints = solve_hints(
        raw_header(cube, index),
        image_shape=shape,
        wcs=wcs,
        ra_deg=float(cube["ra_deg"].values[index]),
        dec_deg=float(cube["dec_deg"].values[index]),
    )
    return hints, wcs


def _frame_center(cube, index: int, shape) -> tuple[float, float] | None:
    """A frame's field centre by its header: its WCS, else its RA/Dec; None when unknown."""
    text = str(cube["wcs_header"].values[index])
    wcs = header_wcs(fits.Header.fromstring(text)) if text else None
    if wcs is not None:
        ny, nx = shape
        ra, dec = (float(v[0]) for v in wcs.all_pix2world([(nx - 1) / 2], [(ny - 1) / 2], 0))
    else:
        ra, dec = float(cube["ra_deg"].values[index]), float(cube["dec_deg"].values[index])
    return (ra, dec) if np.isfinite(ra) and np.isfinite(dec) else None


def _night_pointing(cube, frames) -> tuple[float, float] | None:
    """The night's field by the headers: the median pointing (RA about the first one's)."""
    centers = [c for c in (_header_radec(cube, i) for i in frames) if c is not None]
    if not centers:
        return None
    ra, dec = np.array(centers).T
    ra = ra[0] + (ra - ra[0] + 180) % 360 - 180
    return float(np.median(ra) % 360), float(np.median(dec))


def _header_radec(cube, index: int) -> tuple[float, float] | None:
    ra, dec = float(cube["ra_deg"].values[index]), float(cube["dec_deg"].values[index])
    return (ra, dec) if np.isfinite(ra) and np.isfinite(dec) else None


def _separation_deg(a: tuple[float, float], b: tuple[float, float]) -> float:
    return float(np.rad2deg(angular_separation(*np.deg2rad([a[0], a[1], b[0], b[1]]))))


def _other_field_limit_deg(shape, scale_deg: float) -> float:
    """How far a pointing may be from the night's field and still be on it: two field
    diagonals, at least 30' (mounts point to a few arcmin; re-pointing moves a field by less
    than its size)."""
    return max(2 * np.hypot(*shape) * scale_deg, 0.5)


def _far_from(cube, index: int, night, shape) -> bool:
    """Whether a frame's header pointing is far from the night's (an RA/Dec-only guess of the
    scale: 1"/px, so that small fields count as far only beyond 30')."""
    here = _header_radec(cube, index)
    if night is None or here is None:
        return False
    return _separation_deg(here, night) > _other_field_limit_deg(shape, 1 / 3600)


def _another_field(cube, index: int, field: tuple[float, float], shape, scale_deg: float) -> str:
    """Why a frame is of another field (its header pointing far from the night's), or ""."""
    here = _frame_center(cube, index, shape)
    if here is None:
        return ""
    offset = _separation_deg(here, field)
    limit = _other_field_limit_deg(shape, scale_deg)
    if offset <= limit:
        return ""
    return (
        f"another field: the header points {_angle(offset)} from the night's field "
        f"(RA {here[0]:.4f} Dec {here[1]:+.4f}; more than {_angle(limit)})"
    )


def _angle(deg: float) -> str:
    return f"{deg:.1f} deg" if deg >= 1 else f"{deg * 60:.1f}'"


def _retry_on_own(
    cube, lights, tables, rows, found, catalog, start_wcs, common, *, astrometry, skip
) -> None:
    """The frames still unsolved: another field, or solved once more on their own.

    A frame whose header points far from the night's field (the reference solution's centre)
    is flagged "another field" at once. Every other one is tried by the configured solvers on
    its own (a re-pointed frame; costly ones that failed on the reference, ``skip``, are not
    tried again); a solution whose centre is far from the night's field flags the frame
    "another field"; else the frame is refined from it against the run's catalog (kept as it
    is when that fails).
    """
    shape, exptime, config, photometric = common
    ny, nx = shape
    field = tuple(float(v[0]) for v in start_wcs.all_pix2world([(nx - 1) / 2], [(ny - 1) / 2], 0))
    scale_deg = float(np.sqrt(abs(np.linalg.det(start_wcs.pixel_scale_matrix))))
    for i in lights:
        if rows[i].get("wcs_solved"):
            continue
        why = _another_field(cube, i, field, shape, scale_deg)
        if why:
            rows[i] = _failed_row(why)
            continue
        if found.get(i) is None or len(found[i]) < 3:
            continue
        hints, guess = _frame_hints(cube, i, shape)
        solvers = [
            s
            for s in plate_solvers(astrometry, hints=hints, mag_column=config.band)
            if not (getattr(s, "costly", False) and s.name in skip)
        ]
        if not solvers:
            continue
        solution = solve_in_turn(solvers, found[i], shape, wcs_guess=guess, catalog=catalog)
        if not solution.ok:
            message = rows[i].get("astrometry_message", "")
            rows[i]["astrometry_message"] = f"{message}; alone: {solution.message}"
            continue
        centre = tuple(
            float(v[0]) for v in solution.wcs.all_pix2world([(nx - 1) / 2], [(ny - 1) / 2], 0)
        )
        offset = _separation_deg(centre, field)
        if offset > _other_field_limit_deg(shape, scale_deg):
            rows[i] = _failed_row(
                f"another field: solved by {solution.solver} at RA {centre[0]:.4f} "
                f"Dec {centre[1]:+.4f}, {_angle(offset)} from the night's field"
            )
            continue
        table, row = _refine_task(
            found[i], solution.wcs, catalog, shape, exptime[i], config, photometric
        )
        if not row.get("wcs_solved"):  # the solution as it is, calibrated
            table, row = _calibrated_solution(
                found[i], solution, catalog, exptime[i], config, photometric
            )
        message = f"solved on its own ({_how_solved(solution)}); {row['astrometry_message']}"
        tables[i], rows[i] = table, row | {"astrometry_message": message}
        log.info("frame %d %s", i, _how_solved(solution))


def _calibrated_solution(detections, solution, catalog, exptime_s, config, photometric):
    """A frame's detections on the sky by a solution, with its zero point (`frame_photcal`)."""
    row = _solution_row(solution)
    ra, dec = solution.wcs.all_pix2world(detections["x"].to_numpy(), detections["y"].to_numpy(), 0)
    out = _with_columns(detections, {"ra": ra, "dec": dec})
    return frame_photcal(
        out, row, catalog if photometric else None, exptime_s=float(exptime_s), config=config
    )


def _default(dtype: str):
    if dtype == "object":
        return None  # not measured (no Level 3 photometry of the frame)
    return "" if dtype == "str" else (0 if dtype == "int64" else np.nan)


def _failed_row(message: str) -> dict[str, Any]:
    return {"astrometry_status": "failed", "astrometry_message": message}


def _result(
    lights, stats, counts, rows, tables, coadd, psf, catalog, photometric, timings, absolute
) -> Level2Result:
    """The per-frame rows and the detections of every frame, as `run_level2` returns them."""
    frames = []
    for i in lights:
        row = {"frame": int(i), **stats.get(i, {}), **rows[i], "n_sources": counts[i]}
        frames.append({k: row.get(k, _default(t)) for k, t in FRAME_COLUMNS.items()})
    frames = pd.DataFrame(frames, columns=list(FRAME_COLUMNS)).astype(
        {k: v for k, v in FRAME_COLUMNS.items() if v not in ("str", "object")}
    )
    parts = [t.assign(frame=int(i)) for i, t in tables.items() if t is not None and len(t)]
    detections = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return Level2Result(detections, frames, coadd, psf, catalog, photometric, timings, absolute)


def _safe_detections(cube_path: str, index: int, *, config: Level2Config):
    try:
        return frame_detections(cube_path, index, config)
    except FrameError as exc:
        return index, None, {"detect_message": str(exc)}


def _refine_task(
    detections, wcs_guess, catalog, shape, exptime_s, config, photometric, pointing=None
):
    """Astrometry of one frame, and a first zero point from its detection fluxes.

    ``wcs_guess`` is a WCS or, sent to a worker, its `_wcs_message`. With ``pointing`` (the
    frame's `_header_pointing`) a solved frame's row also gets its `pointing_offset`.
    """
    if isinstance(detections, tuple):  # a detection task's (index, table, stats)
        detections = detections[1]
    if isinstance(wcs_guess, tuple):
        wcs_guess = _wcs_from_message(wcs_guess)
    if detections is None or len(detections) < 3:
        return None, _failed_row("too few detections to plate-solve")
    table, row = frame_astrometry_photometry(
        detections,
        wcs_guess,
        catalog,
        image_shape=shape,
        exptime_s=float(exptime_s),
        config=config,
        photometric=photometric,
    )
    if pointing is not None and row.get("wcs_solved"):
        row.update(pointing_offset(row["wcs_solved"], *pointing, shape))
    return table, row


def _wcs_message(wcs: WCS) -> tuple[str, tuple[int, int] | None] | WCS:
    """A WCS as its header and pixel shape, to send to the tasks that refine from it.

    A pickled WCS travels as a FITS file written with the same header: the driver took ~5 ms
    to pickle it for every task, and a worker ~7 ms to unpickle it; a worker parses the
    header once (`_wcs_from_message`) to the same values. A WCS with distortion lookup tables
    (not in a header string) is returned as it is.
    """
    if any(getattr(wcs, name, None) is not None for name in _LOOKUP_TABLES):
        return wcs
    return wcs.to_header_string(relax=True), wcs.pixel_shape


_LOOKUP_TABLES = ("cpdis1", "cpdis2", "det2im1", "det2im2")


@functools.lru_cache(maxsize=4)
def _parsed_wcs(header: str, pixel_shape: tuple[int, int] | None) -> WCS:
    wcs = WCS(header)
    wcs.pixel_shape = pixel_shape
    return wcs


def _wcs_from_message(message: tuple[str, tuple[int, int] | None]) -> WCS:
    """The WCS of a `_wcs_message`: a copy (for this task alone) of the one parsed once."""
    return _parsed_wcs(*message).deepcopy()


def _measure_task(cube_path, index, table, row, fwhm_px, psf, catalog, exptime_s, config):
    """Level 3 photometry of one solved frame, then its zero point from those fluxes."""
    if flux_method(config.flux).measured:
        table, corrections = frame_photometry(cube_path, index, table, fwhm_px, psf, config)
        row = row | corrections
    return frame_photcal(table, row, catalog, exptime_s=exptime_s, config=config)


def _retry_from_neighbours(
    lights, tables, rows, found, catalog, shape, exptime, config, photometric
):
    """Refine failed frames from their nearest solved neighbour in time, both ways, in order.

    Passes forward (from the nearest earlier solved frame) then backward (from the nearest
    later one), again while a pass solves something, so that a chain of solutions walks from
    the reference to both ends of the night. Each retry starts from the neighbour's WCS with
    the run's catalog; with an internal catalog (the reference frame's own stars) a frame that
    has drifted off the reference's field has few of them, so it is also matched to the
    neighbour's own detections on the sky (`_neighbour_catalog`), and the solution with more
    stars in common is kept: frame to frame, as far as the drift goes.
    """
    solved = {i for i in lights if rows[i].get("wcs_solved")}
    tried: set[tuple[int, int]] = set()
    solved_more = True
    while solved_more and len(solved) < len(lights):
        solved_more = False
        for order in (list(lights), list(lights)[::-1]):
            last = None  # the nearest solved frame passed in this direction
            for i in order:
                if i in solved:
                    last = i
                    continue
                if last is None or (i, last) in tried:
                    continue
                tried.add((i, last))
                guess = WCS(fits.Header.fromstring(rows[last]["wcs_solved"]))
                best = _refine_task(
                    found[i], guess, catalog, shape, exptime[i], config, photometric
                )
                if not photometric:  # the one of the two with more stars in common
                    stars = _neighbour_catalog(tables[last], config.band)
                    table, row = _refine_task(
                        found[i], guess, stars, shape, exptime[i], config, False
                    )
                    if row.get("astrometry_n_matches", 0) > best[1].get("astrometry_n_matches", 0):
                        message = f"aligned to frame {last}'s stars: {row['astrometry_message']}"
                        best = table, row | {"astrometry_message": message}
                if best[1].get("wcs_solved"):
                    tables[i], rows[i] = best
                    solved.add(i)
                    last, solved_more = i, True


def _neighbour_catalog(table: pd.DataFrame | None, band: str) -> pd.DataFrame:
    """A solved frame's clean detections on the sky, as a catalog to align its neighbours to.

    ``band`` holds instrumental magnitudes (to rank the stars); an empty table when the frame
    has none.
    """
    columns = ["ra", "dec", band, f"{band}_err"]
    if table is None or not len(table) or "ra" not in table:
        return pd.DataFrame({c: np.zeros(0) for c in columns})
    good = table[(table["flags"] == 0) & (table["flux"] > 0) & np.isfinite(table["ra"])]
    if "fwhm_px" in good:
        good = good[~sharper_than_stars(good["fwhm_px"].to_numpy(float))]
    flux = good["flux"].to_numpy(float)
    return pd.DataFrame(
        {
            "ra": good["ra"].to_numpy(float),
            "dec": good["dec"].to_numpy(float),
            band: -2.5 * np.log10(flux) + INSTRUMENTAL_ZERO_POINT,
            f"{band}_err": 1.0857 / good["snr"].to_numpy(float),
        }
    )


def _check_pointing(cube, lights, rows, shape) -> None:
    """`pointing_offset` of every solved frame whose row does not have it yet, into its row.

    The refine tasks measure it on the workers (`_refine_task`); this covers the frames solved
    afterwards in this process (`_retry_from_neighbours`).
    """
    todo = [
        i for i in lights if rows[i].get("wcs_solved") and "pointing_offset_arcmin" not in rows[i]
    ]
    for i, pointing in _header_pointing(cube, todo).items():
        rows[i].update(pointing_offset(rows[i]["wcs_solved"], *pointing, shape))


def _header_pointing(cube, lights) -> dict[int, tuple[str, float, float]]:
    """Each frame's header pointing as `pointing_offset` takes it: WCS header text, RA, Dec."""
    text, ra, dec = (cube[k].values for k in ("wcs_header", "ra_deg", "dec_deg"))
    return {int(i): (str(text[i]), float(ra[i]), float(dec[i])) for i in lights}


def pointing_offset(
    wcs_solved: str, wcs_header: str, ra_deg: float, dec_deg: float, shape: tuple[int, int]
) -> dict[str, Any]:
    """A solved frame's header pointing offset; a note when it is far off.

    The offset is the distance between the field centre by the header (its WCS, else its
    RA/Dec) and by the plate solution. It is noted in ``pointing_message`` when larger than half
    the field's short side or 5 arcmin (mounts point to a few arcmin): a wrong header (a
    pointing model error, a stale RA/Dec typed by hand) that later users of the header would
    trust.

    Parameters
    ----------
    wcs_solved : str
        The plate solution's header (``wcs_solved`` of the frame's row).
    wcs_header : str
        The frame's header WCS keywords (the cube's ``wcs_header``; empty when none).
    ra_deg, dec_deg : float
        The header pointing, used when the header has no WCS.
    shape : tuple of int
        ``(ny, nx)``.

    Returns
    -------
    dict
        ``pointing_offset_arcmin`` and, when far off, ``pointing_message``; empty when the
        header gives no finite pointing.
    """
    ny, nx = shape
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    header = header_wcs(fits.Header.fromstring(wcs_header)) if wcs_header else None
    if header is not None:
        ra, dec = (float(v[0]) for v in header.all_pix2world([cx], [cy], 0))
    else:
        ra, dec = float(ra_deg), float(dec_deg)
    if not (np.isfinite(ra) and np.isfinite(dec)):
        return {}
    solved = WCS(fits.Header.fromstring(wcs_solved))
    ra_c, dec_c = (float(v[0]) for v in solved.all_pix2world([cx], [cy], 0))
    offset = float(np.rad2deg(angular_separation(*np.deg2rad([ra_c, dec_c, ra, dec])))) * 60
    scale = np.sqrt(abs(np.linalg.det(solved.pixel_scale_matrix))) * 60  # arcmin/px
    row: dict[str, Any] = {"pointing_offset_arcmin": offset}
    limit = max(0.5 * min(nx, ny) * scale, 5.0)
    if offset > limit:
        row["pointing_message"] = (
            f"header pointing {offset:.1f}' from the plate solution (more than {limit:.1f}'): "
            f"header RA {ra:.4f} Dec {dec:+.4f}, solved RA {ra_c:.4f} Dec {dec_c:+.4f}"
        )
    return row


def _coadd_run(cube, cube_path, lights, rows, stats, *, client, config) -> Coadd | None:
    """The co-add of up to ``config.coadd_frames`` solved frames, one task per output tile."""
    solved = [i for i in lights if rows[i].get("wcs_solved")]
    if config.coadd_frames == 0 or not solved:
        return None
    n = min(config.coadd_frames, len(solved))
    picks = np.unique(np.round(np.linspace(0, len(solved) - 1, n)).astype(int))
    chosen = [solved[k] for k in picks]
    headers = [rows[i]["wcs_solved"] for i in chosen]
    shape = (cube.sizes["y"], cube.sizes["x"])
    wcs, out_shape = optimal_wcs([WCS(fits.Header.fromstring(h)) for h in headers], [shape] * n)
    skies = [float(stats[i].get("sky", 0.0)) for i in chosen]
    scales = _transparency_scales(cube, chosen, rows)
    tiles = tile_slices(out_shape, tile_size_for(len(chosen), 256e6))
    task = functools.partial(
        _coadd_tile_task,
        cube_path=cube_path,
        frames=[int(i) for i in chosen],
        headers=headers,
        shape=shape,
        target=wcs.to_header_string(relax=True),
        skies=skies,
        scales=scales,
        method=config.coadd_method,
    )
    futures = map_tasks(client, task, tiles)
    image = np.full(out_shape, np.nan, np.float32)
    n_used = np.zeros(out_shape, np.int16)
    for tile, (data, used) in zip(
        tiles, gather_results(client, futures, "level2: co-add"), strict=True
    ):
        image[tile], n_used[tile] = data, used
    fwhm = float(np.nanmedian([stats[i].get("fwhm_px", np.nan) for i in chosen]))
    return Coadd(image, n_used, wcs, tuple(int(i) for i in chosen), fwhm)


def _transparency_scales(cube, chosen, rows) -> list[float]:
    """Factors that give a star one count in every co-added frame (exposure and transparency).

    From each frame's zero point and slope, the counts of a star of instrumental magnitude -8
    (1600 ADU/s) on the median frame; exposure alone where a frame has no zero point.
    """
    exptime = cube["exptime_s"].values[chosen].astype(float)
    zp = np.array([rows[i].get("zero_point", np.nan) for i in chosen], float)
    slope = np.array([rows[i].get("zp_slope", np.nan) for i in chosen], float)
    log_counts = np.log10(exptime)
    known = np.isfinite(zp) & np.isfinite(slope) & (slope > 0)
    if known.any():
        mag = np.median(zp[known] + slope[known] * -8.0)
        log_counts[known] += -0.4 * (mag - zp[known]) / slope[known]
        log_counts[~known] += np.median(log_counts[known] - np.log10(exptime[known]))
    return list(10.0 ** (np.median(log_counts) - log_counts))


def _coadd_tile_task(
    tile, *, cube_path, frames, headers, shape, target, skies, scales, method
) -> tuple[np.ndarray, np.ndarray]:
    """One tile of the co-add; the worker reads only the windows it needs from the cube."""
    calibrated = zarr.open_array(str(Path(cube_path) / "calibrated"), mode="r")

    def reader(index: int, sky: float):
        return lambda rows, cols: calibrated[index, rows, cols] - np.float32(sky)

    return coadd_tile(
        [reader(i, s) for i, s in zip(frames, skies, strict=True)],
        [WCS(fits.Header.fromstring(h)) for h in headers],
        [shape] * len(frames),
        WCS(fits.Header.fromstring(target)),
        tile,
        scales=scales,
        method=method,
    )


def _coadd_psf(image: np.ndarray, n_used: np.ndarray, fwhm_px: float) -> PSFModel:
    """The ePSF of the co-add, from the pixels that most of its frames cover."""
    mask = ~np.isfinite(image) | (n_used < max(1, 0.5 * n_used.max()))
    try:
        psf, _ = build_epsf(np.where(mask, 0.0, image), mask=mask, fwhm_px=fwhm_px, oversampling=3)
    except (ValueError, RuntimeError) as exc:  # handled by the caller: no worker traceback
        raise LcdaskError(str(exc)) from exc
    return psf


def _run_psf(cube_path, coadd, reference, stats, *, client, config) -> PSFModel | None:
    """The ePSF of the co-add, else of the reference frame; None when neither can be built."""
    if coadd is not None:
        # tens of MB: sent as data to one worker, not inside the task
        image, n_used = share(client, [coadd.image, coadd.n_used], broadcast=False)
        try:
            task = submit_task(client, _coadd_psf, image, n_used, coadd.fwhm_px)
            return gather_results(client, [task], "level2: ePSF")[0]
        except LcdaskError as exc:
            log.warning("no ePSF from the co-add (%s): the reference frame's is used", exc)
    fwhm = float(stats[reference].get("fwhm_px", np.nan))
    task = submit_task(client, reference_psf, cube_path, int(reference), fwhm, config)
    return gather_results(client, [task], "level2: ePSF")[0]


def run_level2_stage(ctx: RunContext) -> dict:
    """Level 2 and 3 of every light, and their products; what ``run.json`` records."""
    config, out, cube_path = ctx.config, ctx.out, ctx.cube_path
    cube = cube_io.open_cube(cube_path)
    level2, band_why = _level2_config(config, cube, None)
    table, source = _reference_catalog(config, ctx.catalog, cube, out, level2.band)
    if table is None:  # (the reason is logged once)
        ctx.note(f"{source}: no photometric calibration")
    level2, band_why = _level2_config(config, cube, table)
    log.info("zero points in %s", band_why)
    result = run_level2(
        cube,
        cube_path,
        table,
        client=ctx.client,
        config=level2,
        astrometry=ctx.astrometry(),
    )
    detections = result.detections
    if result.catalog is not None:
        with atomic_path(out / "catalog.parquet") as tmp:
            result.catalog.to_parquet(tmp, index=False)
    for name, product in (("psf.fits", result.psf), ("coadd.fits", result.coadd)):
        (out / name).unlink(missing_ok=True)  # never one from an earlier run
        if product is not None:
            hdul = product.to_hdulist() if name == "coadd.fits" else product.to_hdu()
            with atomic_path(out / name) as tmp:
                hdul.writeto(tmp)
    frames = _add_frame_metadata(result.frames, cube)
    _store_frame_results(cube_path, cube, frames)
    with atomic_path(out / "frames.parquet") as tmp:
        frames.to_parquet(tmp, index=False)
    _write_detections(out / "detections.parquet", detections, frames)
    failed = frames[frames["astrometry_status"] != "ok"]
    return {
        "catalog": source,
        "n_frames": len(frames),
        "n_detections": len(detections),
        "n_astrometry_failed": len(failed),
        "coadd_frames": [] if result.coadd is None else list(result.coadd.frames),
        "photometric": result.photometric,
        "band": band_why,
        "sky_positions": "absolute" if result.absolute else "relative",
        "step_seconds": result.timings,
    }


def append_level2(ctx: RunContext) -> dict:
    """Level 2 of the appended lights, from the earlier catalog, plate solution and ePSF.

    Raises
    ------
    lcdask.stages.ingest.NotAppendable
        When the earlier run has no solved frame or no catalog to start from.
    """
    out, cube_path, indices = ctx.out, ctx.cube_path, ctx.appending.frames
    log.info("level2: %d new frame(s)", len(indices))
    cube = cube_io.open_cube(cube_path)
    old = pd.read_parquet(out / "frames.parquet")
    solved = old[old["astrometry_status"] == "ok"]
    if solved.empty or not (out / "catalog.parquet").exists():
        raise NotAppendable("the earlier run has no solved frame or no catalog to start from")
    psf = None
    if (out / "psf.fits").exists():
        with fits.open(out / "psf.fits") as hdul:
            psf = PSFModel.from_hdu(hdul["EPSF"])
    start_from = Level2Start(
        catalog=pd.read_parquet(out / "catalog.parquet"),
        photometric=bool(ctx.appending.before("level2").get("photometric", False)),
        wcs=WCS(fits.Header.fromstring(solved["wcs_solved"].iloc[-1])),
        psf=psf,
    )
    level2 = run_level2(
        cube,
        cube_path,
        None,
        client=ctx.client,
        config=_level2_config(ctx.config, cube, start_from.catalog)[0],
        frames=indices,
        previous=start_from,
        astrometry=ctx.astrometry(),
    )
    frames = pd.concat([old, _add_frame_metadata(level2.frames, cube)], ignore_index=True)
    _store_frame_results(cube_path, cube, frames)
    detections = pd.concat(
        [pd.read_parquet(out / "detections.parquet"), level2.detections], ignore_index=True
    )
    with atomic_path(out / "frames.parquet") as tmp:
        frames.to_parquet(tmp, index=False)
    _write_detections(out / "detections.parquet", detections.drop(columns="time_mjd"), frames)
    return {
        "n_frames": len(frames),
        "n_detections": len(detections),
        "n_astrometry_failed": int((frames["astrometry_status"] != "ok").sum()),
    }


def _reference_catalog(config: Config, catalog_path: str | Path | None, cube, out: Path, band: str):
    """The reference catalog as the configuration asks (`reference_catalog`), or None and why.

    The query circle comes from the lights' header WCS, else their pixel-scale keywords, else a
    generous 1 deg (`frames_query_circle`).
    """
    lights = cube["frame_type"].values == "light"
    ra = np.nanmedian(cube["ra_deg"].values[lights]) if lights.any() else np.nan
    dec = np.nanmedian(cube["dec_deg"].values[lights]) if lights.any() else np.nan
    shape = (cube.sizes["y"], cube.sizes["x"])
    texts = dict.fromkeys(str(t) for t in cube["wcs_header"].values[lights] if str(t))
    wcs_list = [w for w in (header_wcs(fits.Header.fromstring(t)) for t in texts) if w is not None]
    first = np.flatnonzero(lights)[:1]
    hdu = cube["hdu_index"].values[first] if "hdu_index" in cube else [0] * len(first)
    scale = None if wcs_list else _header_pixel_scale(cube["path"].values[first], hdu)
    circle, how = frames_query_circle(
        ra, dec, shape=shape, wcs_list=wcs_list, pixel_scale_arcsec=scale
    )
    table, source = reference_catalog(
        config.catalog,
        path=catalog_path,
        ra=np.nan if circle is None else circle.ra,
        dec=np.nan if circle is None else circle.dec,
        radius_deg=np.nan if circle is None else circle.radius_deg,
        cache_dir=catalog_cache(config, out),
        band=band,
    )
    return table, source if table is None or circle is None else f"{source} ({how})"


def _level2_config(config: Config, cube, catalog: pd.DataFrame | None):
    """Level 2's options with the band resolved (`resolve_band`), and how it was chosen.

    With ``band = "auto"`` and a catalog that lacks the frames' band, the first band the catalog
    has is used, and said.
    """
    lights = cube["frame_type"].values == "light"
    band, why = resolve_band(config.level2.band, [str(f) for f in cube["filter"].values[lights]])
    if config.level2.band == "auto" and catalog is not None and band not in catalog:
        have = [b for b in _CATALOG_BANDS if b in catalog and f"{b}_err" in catalog]
        if have:
            why += f"; the catalog has no {band}: {have[0]} used"
            band = have[0]
    return dataclasses.replace(config.level2, band=band), why


_CATALOG_BANDS = ("r", "g", "i", "z", "V", "R", "I", "B", "u", "G")


def _header_pixel_scale(paths, hdus) -> float | None:
    """The pixel scale ("/px) from the first light's header keywords (`header_pixel_scale`)."""
    for path, hdu in zip(paths, hdus, strict=True):
        try:
            found = header_pixel_scale(fits.getheader(str(path), int(hdu)))
        except OSError:
            return None
        return None if found is None else float(found[0])
    return None


def _add_frame_metadata(frames: pd.DataFrame, cube) -> pd.DataFrame:
    """Join each frame's time, airmass, exposure and file to the Level 2 results."""
    index = frames["frame"].to_numpy()
    extra = {
        "time_mjd": cube["time_mjd"].values[index],
        "bjd_tdb": cube["bjd_tdb"].values[index],
        "airmass": cube["airmass"].values[index],
        "exptime_s": cube["exptime_s"].values[index],
        "path": [str(p) for p in cube["path"].values[index]],
    }
    return frames.assign(**extra)


def _store_frame_results(cube_path: Path, cube, frames: pd.DataFrame) -> None:
    """Write the per-frame results into the cube (variables on ``frame``) and flag failures.

    A frame whose plate solve or photometric calibration failed is flagged with the reason,
    ``<file>: <why>`` as ingest and calibration word theirs, and the reason is logged once.
    """
    n = cube.sizes["frame"]
    index = frames["frame"].to_numpy()
    variables = {}
    names = ("fwhm_px", "sky", "sky_rms", "n_sources", "zero_point", "zero_point_err", "zp_slope")
    for name in (*names, "astrometry_rms_arcsec"):
        full = np.full(n, np.nan)
        full[index] = frames[name].to_numpy(float)
        variables[name] = ("frame", full)
    wcs = np.full(n, "", dtype=object)
    wcs[index] = frames["wcs_solved"].to_numpy()
    variables["wcs_solved"] = ("frame", wcs)
    cube_io.add_variables(cube_path, xr.Dataset(variables))
    flags = cube["flags"].values.copy()
    reasons = np.array([str(r) for r in cube["flag_reason"].values], dtype=object)
    redone = (flags[index] & LEVEL2_FLAGS) != 0
    flags[index[redone]] &= ~LEVEL2_FLAGS
    reasons[index[redone]] = ""
    paths = cube["path"].values
    for row in frames.itertuples():
        if row.astrometry_status != "ok":
            flag, why = FrameFlag.ASTROMETRY_FAILED, f"plate solve failed: {row.astrometry_message}"
        elif not np.isfinite(row.zero_point) and row.photcal_message != NO_CATALOG_MESSAGE:
            flag = FrameFlag.PHOTCAL_FAILED
            why = f"photometric calibration failed: {row.photcal_message}"
        elif row.pointing_message:
            flag, why = FrameFlag.POINTING, row.pointing_message
        else:
            continue
        flags[row.frame] |= flag
        reasons[row.frame] = f"{paths[row.frame]}: {why}"
        # One line per frame this Level 2 flags, as ingest and calibration say theirs; a frame
        # flagged so before (frames appended to a run, a resumed stage) is not said again.
        if not cube["flags"].values[row.frame] & flag:
            log.warning("%s", reasons[row.frame])
    changed = np.flatnonzero(flags != cube["flags"].values)
    if len(changed):
        cube_io.set_frame_values(cube_path, "flags", changed, flags[changed])
        cube_io.set_frame_values(cube_path, "flag_reason", changed, reasons[changed])
    cube_io.consolidate(cube_path)


def _write_detections(path: Path, detections: pd.DataFrame, frames: pd.DataFrame) -> None:
    """``detections.parquet``: a folder of Parquet parts, a block of frames each."""
    times = frames.set_index("frame")["time_mjd"]
    detections = detections.assign(time_mjd=detections["frame"].map(times).to_numpy(float))
    with atomic_path(path) as tmp:
        tmp.mkdir()
        frame_ids = np.sort(frames["frame"].unique())
        for part, start in enumerate(range(0, max(len(frame_ids), 1), 100)):
            block = frame_ids[start : start + 100]
            rows = detections[detections["frame"].isin(block)]
            rows.to_parquet(tmp / f"part-{part:05d}.parquet", index=False)
