"""Forced photometry of the light curves' missing entries: flux where a source was not detected.

After matching, a source may lack a detection in some frames (a faint star below the threshold,
a blend, a cosmic ray). `forced_photometry` measures it there, at its median position
(`lcdask.lightcurves.missing_entries`) placed on each frame by the frame's solved WCS, with
exactly the photometry of the detections:

* one task per frame (`frame_forced_photometry`): the worker reads its own calibrated frame from
  the cube, prepares it as Level 2 does (`lcdask.stages.level2.prepared_frame`: the cosmic-ray
  pixels Level 3 found, from the frames table, cleaned; sky subtracted) and measures the flux
  Level 2 keeps (``[level2] flux``: the 1.5 FWHM aperture with its aperture correction, or the
  PSF flux) with the frame's own aperture correction and PSF scale from the frames table, at
  the forced positions and the detections together (the
  detections' fluxes measured again are compared with the stored ones: ``max_pull_redone``);
  every other aperture's flux too (``flux_ap<k>``, as the detections have them), each with the
  frame's correction of that aperture (the detections' stored flux over the one measured again);
* the fluxes are calibrated with the frame's zero point and slope (`frame_calibration`), with the
  calibration error the detections carry, so ``mag``, ``mag_err`` and ``flux_jy`` are on the same
  scale as the detections' (instrumental magnitudes + 25 when the run has no reference catalog).

Entries are not forced in frames without a plate solution (they are not in the light curves),
outside the image, for sources detected in fewer than ``min_detections`` frames (mostly noise and
cosmic-ray residuals), for movers (``skip_ids``), or when ``[level2] flux = "detection"`` (there
is no Level 3 photometry to repeat). Movers are left out although their motion fit predicts
them well (0.05" on the simulated fast mover): a mover goes undetected mostly while it crosses
another star, and a forced aperture there measures that star (on the simulated night 7 of the
fast mover's 14 missing entries came out 5 to 1,400 sigma off, only 3 of them flagged BLENDED).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS

from lcdask.lightcurves import LightCurveFlag, aperture_columns, missing_entries
from lcdask.photcal import ZeroPointFit, calibrate_fluxes, instrumental_mag, instrumental_mag_err
from lcdask.photometry import DEFAULT_APERTURES, PhotFlag, flux_method, photometer_frame
from lcdask.psf import PSFModel
from lcdask.stages._parallel import gather_results, share, submit_task
from lcdask.stages.level2 import (
    INSTRUMENTAL_ZERO_POINT,
    NO_CATALOG_MESSAGE,
    Level2Config,
    prepared_frame,
)

__all__ = [
    "FORCED_COLUMNS",
    "forced_photometry",
    "forced_positions",
    "frame_calibration",
    "frame_forced_photometry",
]

log = logging.getLogger("lcdask")

_DEFAULT_LEVEL2 = Level2Config()
_CORRECTIONS = ("fwhm_px", "aperture_correction", "psf_scale")

FORCED_COLUMNS = {
    "source_id": "int64",
    "frame": "int64",
    "time_mjd": "float64",
    "ra": "float64",
    "dec": "float64",
    "x": "float64",
    "y": "float64",
    "flux": "float64",
    "flux_err": "float64",
    "mag": "float64",
    "mag_err": "float64",
    "flux_jy": "float64",
    "flux_jy_err": "float64",
    **dict.fromkeys(aperture_columns(len(DEFAULT_APERTURES)), "float64"),
    "flags": "int32",
}
"""Columns of the forced measurements (`lcdask.lightcurves.insert_forced` takes them): the flux
Level 2 keeps (``flux``) and, as for the detections, every aperture's (``flux_ap<k>``)."""

_APERTURE_FLUXES = [c for c in aperture_columns(len(DEFAULT_APERTURES)) if not c.endswith("_err")]


_SUMMARY_ORDER = (
    "n_missing",
    "n_forced",
    "n_skipped",
    "n_few_detections",
    "n_no_wcs",
    "n_outside",
    "n_frames",
)


def _empty() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in FORCED_COLUMNS.items()})


def forced_positions(
    missing: pd.DataFrame, frames: pd.DataFrame, shape: tuple[int, int]
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Pixel positions of missing entries through each frame's solved WCS.

    Parameters
    ----------
    missing : pandas.DataFrame
        `lcdask.lightcurves.missing_entries` rows (``source_id``, ``frame``, ``ra``, ``dec``).
    frames : pandas.DataFrame
        ``frame`` and ``wcs_solved`` (a FITS header; empty when the solve failed).
    shape : tuple of int
        ``(ny, nx)`` of the frames.

    Returns
    -------
    positions : pandas.DataFrame
        The entries that fall on a solved frame, with ``x``, ``y`` (0-based pixels).
    dropped : dict
        Entries left out: ``n_no_wcs`` (the frame has no plate solution) and ``n_outside``
        (the position is off the image, or not finite).
    """
    wcs_of = frames.set_index("frame")["wcs_solved"]
    ny, nx = shape
    parts, n_outside, n_no_wcs = [], 0, 0
    for frame, rows in missing.groupby("frame", sort=True):
        header = wcs_of.get(frame, "")
        if not isinstance(header, str) or not header:
            n_no_wcs += len(rows)
            continue
        wcs = WCS(fits.Header.fromstring(header))
        x, y = wcs.all_world2pix(rows["ra"].to_numpy(float), rows["dec"].to_numpy(float), 0)
        inside = np.isfinite(x) & np.isfinite(y)
        inside &= (x >= -0.5) & (x <= nx - 0.5) & (y >= -0.5) & (y <= ny - 0.5)
        n_outside += int((~inside).sum())
        parts.append(rows.assign(x=x, y=y)[inside])
    columns = [*missing.columns, "x", "y"]
    positions = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    return positions, {"n_no_wcs": n_no_wcs, "n_outside": n_outside}


def frame_forced_photometry(
    cube_path: str | Path,
    index: int,
    x: np.ndarray,
    y: np.ndarray,
    detections: pd.DataFrame,
    frame: dict[str, float],
    psf: PSFModel | None,
    config: Level2Config,
) -> tuple[pd.DataFrame, float]:
    """Photometry of one frame at forced positions, exactly as of its detections (one task).

    The frame is prepared once (`lcdask.stages.level2.prepared_frame`: cosmic rays, sky) and the
    forced positions are measured together with the detections (for the blend flags and the
    joint PSF fits) with the frame's own aperture correction and PSF scale from Level 2
    (`lcdask.stages.level2.frame_photometry`), not new ones, which the forced positions themselves
    would perturb (a forced position on a bright star's wing changes which stars count as
    isolated). A frames table without them (a run of an earlier version) has them found again
    from the detections as Level 2 found them.

    Parameters
    ----------
    cube_path : str or Path
        The cube store (the worker reads the frame itself).
    index : int
        The frame.
    x, y : numpy.ndarray
        Forced positions (0-based pixels).
    detections : pandas.DataFrame
        The frame's detections: ``x``, ``y``, ``flux``, and ``flux_ap<k>`` when they have them
        (each aperture's correction is their stored flux over the one measured again).
    frame : dict
        The frame's ``fwhm_px``, ``aperture_correction``, ``psf_scale`` and ``cosmic_pixels``
        (frames table; cosmic rays are detected again when the last is None).
    psf : lcdask.psf.PSFModel or None
        The run's ePSF.
    config : Level2Config
        The run's Level 2 options (flux choice, cosmic rays).

    Returns
    -------
    table : pandas.DataFrame
        ``x``, ``y``, ``flux``, ``flux_err``, ``flux_ap<k>``, ``flux_ap<k>_err``, ``flags``
        (photometry bits) per forced position; an aperture's fluxes are NaN when the detections
        do not give its correction.
    max_pull_redone : float
        Largest ``|flux - stored flux| / flux_err`` of the detections measured again (about 0
        when this repeats Level 2's photometry; the PSF read back from ``psf.fits`` is float32).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    fwhm_px = float(frame["fwhm_px"])
    image, sky, mask, cosmic, gain, repaired = prepared_frame(
        cube_path, index, config, fwhm_px, psf, cosmic_pixels=frame.get("cosmic_pixels")
    )
    options = {
        "fwhm_px": fwhm_px,
        "gain": gain,
        "rms": sky.rms,
        "background": sky.background,
        "mask": mask,
        "cosmic_mask": cosmic,
        "repaired_mask": repaired,
    }
    # the flux Level 2 keeps (lcdask.stages.level2.frame_photometry)
    column = flux_method(config.flux).kept_column(psf)
    det_x, det_y = detections["x"].to_numpy(float), detections["y"].to_numpy(float)
    factor = float(frame.get("aperture_correction", np.nan))
    scale = float(frame.get("psf_scale", np.nan))
    if not np.isfinite(factor):  # not stored: measured again as Level 2 did
        _, info = photometer_frame(image, x=det_x, y=det_y, psf=psf, **options)
        factor = info["aperture_correction"].get(column, 1.0)  # 1 for the PSF flux
        scale = info["psf_scale"]
    model = None  # PSF fluxes only when they are the ones kept
    if column == "flux_psf" and np.isfinite(scale):
        model = replace(psf, scale=scale)
    table, _ = photometer_frame(
        image,
        x=np.concatenate([det_x, x]),
        y=np.concatenate([det_y, y]),
        psf=model,
        scale_psf=False,
        refine_psf_scale=False,
        aperture_correction=False,
        **options,
    )
    flux = table[column].to_numpy() * factor
    flux_err = table[f"{column}_err"].to_numpy() * factor
    flags = table["flags"].to_numpy().astype(np.int32)
    if model is None:  # no PSF fit was asked for
        flags &= ~np.int32(PhotFlag.PSF_FAILED)
    n = len(det_x)
    with np.errstate(invalid="ignore", divide="ignore"):
        pull = np.abs(flux[:n] - detections["flux"].to_numpy(float)) / flux_err[:n]
    max_pull = float(np.nanmax(pull)) if np.isfinite(pull).any() else 0.0
    out = {"x": x, "y": y, "flux": flux[n:], "flux_err": flux_err[n:]}
    for name in _APERTURE_FLUXES:
        ap_factor = _stored_over_measured(detections, table, name)
        out[name] = table[name].to_numpy()[n:] * ap_factor
        out[f"{name}_err"] = table[f"{name}_err"].to_numpy()[n:] * ap_factor
    return pd.DataFrame({**out, "flags": flags[n:]}), max_pull


def _stored_over_measured(detections: pd.DataFrame, table: pd.DataFrame, name: str) -> float:
    """An aperture's correction on the frame: the median over the detections of their stored
    (corrected) flux over the same flux measured again without correction (the first rows of
    ``table``); NaN when the detections lack the column (a run of an earlier version)."""
    if name not in detections.columns or not len(detections):
        return np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = detections[name].to_numpy(float) / table[name].to_numpy(float)[: len(detections)]
    ratio = ratio[np.isfinite(ratio) & (ratio > 0)]
    return float(np.median(ratio)) if ratio.size else np.nan


def frame_calibration(
    detections: pd.DataFrame, frame: pd.Series | dict[str, Any], exptime_s: float
) -> ZeroPointFit | None:
    """The frame's photometric calibration as applied to its detections, error model included.

    The zero point and slope come from the frames table; the covariance of the fit (not
    stored) is recovered from the detections' magnitude errors, which are the photometric error
    and the calibration error ``sqrt(C00 + 2 C01 m + C11 m^2)`` (``m`` the instrumental
    magnitude) in quadrature: a linear least-squares fit of the three terms (of ``C00`` alone
    when the slope was not fitted) reproduces `lcdask.photcal.calibrate_fluxes` exactly.

    Parameters
    ----------
    detections : pandas.DataFrame
        The frame's detections: ``flux``, ``flux_err``, ``mag_err``.
    frame : pandas.Series or dict
        Its row of the frames table: ``zero_point``, ``zp_slope``, ``zp_slope_err``.
    exptime_s : float
        Its exposure.

    Returns
    -------
    lcdask.photcal.ZeroPointFit or None
        None when the frame has no zero point.
    """
    zero_point, slope = float(frame["zero_point"]), float(frame["zp_slope"])
    if not (np.isfinite(zero_point) and np.isfinite(slope)):
        return None
    slope_err = float(frame.get("zp_slope_err", np.nan))
    fit_slope = bool(np.isfinite(slope_err) and slope_err > 0)
    flux = detections["flux"].to_numpy(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        m = instrumental_mag(flux, exptime_s)
        phot = slope * instrumental_mag_err(flux, detections["flux_err"].to_numpy(float))
        cal_var = detections["mag_err"].to_numpy(float) ** 2 - phot**2
    ok = np.isfinite(m) & np.isfinite(cal_var)
    pivot = float(np.median(m[ok])) if ok.any() else 0.0
    if fit_slope and ok.sum() >= 3:
        design = np.column_stack([np.ones(ok.sum()), 2 * m[ok], m[ok] ** 2])
        (c00, c01, c11), *_ = np.linalg.lstsq(design, cal_var[ok], rcond=None)
        covariance = np.array([[c00, c01], [c01, c11]])
    else:
        fit_slope = False
        c00 = float(np.median(cal_var[ok])) if ok.any() else 0.0
        covariance = np.array([[max(c00, 0.0)]])
    return ZeroPointFit(
        zero_point=zero_point,
        slope=slope,
        color_term=0.0,
        zero_point_err=float(frame.get("zero_point_err", np.nan)),
        slope_err=slope_err if fit_slope else 0.0,
        color_term_err=0.0,
        covariance=covariance,
        n_used=int(frame.get("zp_n_stars", 0)),
        n_matched=0,
        inliers=np.zeros(0, bool),
        rms=float(frame.get("zp_rms", np.nan)),
        chi2_reduced=np.nan,
        pivot_inst_mag=pivot,
        fit_slope=fit_slope,
        fit_color=False,
    )


def _calibrate(
    table: pd.DataFrame, detections: pd.DataFrame, frame: pd.Series, exptime_s: float
) -> pd.DataFrame:
    """``mag``, ``mag_err``, ``flux_jy``, ``flux_jy_err`` of one frame's forced fluxes."""
    flux, flux_err = table["flux"].to_numpy(float), table["flux_err"].to_numpy(float)
    nan = np.full(len(table), np.nan)
    fit = frame_calibration(detections, frame, exptime_s)
    if fit is not None:
        mag, mag_err, jy, jy_err = calibrate_fluxes(flux, flux_err, exptime_s, fit)
    elif frame.get("photcal_message", "") == NO_CATALOG_MESSAGE:  # as the detections
        with np.errstate(invalid="ignore", divide="ignore"):
            mag = instrumental_mag(flux, exptime_s) + INSTRUMENTAL_ZERO_POINT
            mag_err = 1.0857 * flux_err / np.abs(flux)
        jy, jy_err = nan, nan
    else:
        mag, mag_err, jy, jy_err = nan, nan, nan, nan
    return table.assign(mag=mag, mag_err=mag_err, flux_jy=jy, flux_jy_err=jy_err)


def _cosmic_pixels(row: pd.Series) -> np.ndarray | None:
    """Level 3's cosmic-ray pixels of a frame, or None (not recorded: a run of an earlier
    version, or no Level 3 photometry), when they must be detected again."""
    pixels = row.get("cosmic_pixels")
    if pixels is None or (np.ndim(pixels) == 0 and pd.isna(pixels)):
        return None
    return np.asarray(pixels, np.int64)


_CALIBRATION = (
    "zero_point",
    "zero_point_err",
    "zp_slope",
    "zp_slope_err",
    "zp_n_stars",
    "zp_rms",
    "photcal_message",
    "exptime_s",
)


def _forced_frame(cube_path, frame, rows, header, shape, detections, row, psf, config):
    """One frame's forced photometry in its task: positions, measurement, calibration."""
    positions, dropped = forced_positions(
        rows, pd.DataFrame({"frame": [frame], "wcs_solved": [header]}), shape
    )
    if not len(positions):
        return None, 0.0, dropped["n_outside"]
    corrections = {k: float(row.get(k, np.nan)) for k in _CORRECTIONS}
    table, pull = frame_forced_photometry(
        cube_path,
        frame,
        positions["x"].to_numpy(),
        positions["y"].to_numpy(),
        _measured_columns(detections),
        corrections | {"cosmic_pixels": row.get("cosmic_pixels")},
        psf,
        config,
    )
    values = table.drop(columns=["x", "y", "flags"]).reset_index(drop=True)
    measured = pd.concat([positions.reset_index(drop=True), values], axis=1)
    measured["flags"] = table["flags"].to_numpy()
    calibrated = _calibrate(measured, detections, row, float(row["exptime_s"]))
    return calibrated, pull, dropped["n_outside"]


def _measured_columns(detections: pd.DataFrame) -> pd.DataFrame:
    """The detections' columns a forced-photometry task needs: position and fluxes."""
    wanted = ["x", "y", "flux", *_APERTURE_FLUXES]
    return detections[[c for c in wanted if c in detections.columns]]


def forced_photometry(
    ds: xr.Dataset,
    detections: pd.DataFrame,
    frames: pd.DataFrame,
    cube_path: str | Path,
    *,
    shape: tuple[int, int],
    psf: PSFModel | None,
    skip_ids: np.ndarray | pd.Series | None = None,
    min_detections: int = 3,
    force_ids: np.ndarray | pd.Series | None = None,
    client=None,
    config: Level2Config = _DEFAULT_LEVEL2,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Forced photometry of every missing entry of the light curves (module docstring).

    Parameters
    ----------
    ds : xarray.Dataset
        The light curves (`lcdask.lightcurves.build_lightcurves`).
    detections : pandas.DataFrame
        The detections of the frames in ``ds`` (``frame``, ``x``, ``y``, ``flux``, ``flux_err``,
        ``mag_err``, ``flags``).
    frames : pandas.DataFrame
        The frames table (``frame``, ``wcs_solved``, ``fwhm_px``, ``aperture_correction``,
        ``psf_scale``, ``exptime_s``, ``zero_point``,
        ``zp_slope``, ``zp_slope_err``, ``photcal_message``).
    cube_path : str or Path
        The cube store the workers read their frames from.
    shape : tuple of int
        ``(ny, nx)`` of the frames.
    psf : lcdask.psf.PSFModel or None
        The run's ePSF (``psf.fits``).
    skip_ids : array_like, optional
        Sources not to force: the movers (their missing entries are mostly where they cross
        other stars, whose light a forced measurement would take for theirs).
    min_detections : int, optional
        Sources detected in fewer frames are not forced.
    force_ids : array_like, optional
        Sources forced however few their detections: the target, added at its given position
        when no source was detected there (`lcdask.targets.add_target_source`).
    client : distributed.Client, optional
        Cluster; serial in this process when None.
    config : Level2Config, optional
        The run's Level 2 options.

    Returns
    -------
    forced : pandas.DataFrame
        `FORCED_COLUMNS`, one row per entry measured.
    summary : dict
        Counts of entries: ``n_missing``, ``n_forced``, not forced because of the source
        (``n_skipped``: movers; ``n_few_detections``), of the frame (``n_no_wcs``) or off the
        image (``n_outside``); ``n_frames`` measured, and ``max_pull_redone`` (module
        docstring) or a ``note``.
    """
    missing = missing_entries(ds)
    summary: dict[str, Any] = {"n_missing": len(missing), "n_forced": 0}
    if not flux_method(config.flux).measured:
        summary["note"] = 'no forced photometry with [level2] flux = "detection"'
        return _empty(), summary
    skipped = missing["source_id"].isin(np.asarray(skip_ids if skip_ids is not None else []))
    present = (ds["flags"].to_numpy() & int(LightCurveFlag.MISSING)) == 0
    n_detected = pd.Series(present.sum(axis=1), index=ds["source_id"].to_numpy())
    few = n_detected.loc[missing["source_id"]].to_numpy() < min_detections
    few &= ~missing["source_id"].isin(np.asarray(force_ids if force_ids is not None else []))
    summary["n_skipped"] = int(skipped.sum())
    summary["n_few_detections"] = int((few & ~skipped).sum())
    cube_path = str(cube_path)
    # everything per frame is done in the frame's task (the driver's per-frame work was the
    # first limit of the scale model: WCS parsing and pandas, ~8 ms a frame)
    todo = missing[~skipped & ~few]
    by_frame = frames.set_index("frame")
    wcs_of = by_frame["wcs_solved"]
    groups = dict(tuple(todo.groupby("frame", sort=True)))
    solved = {
        f: rows
        for f, rows in groups.items()
        if isinstance(wcs_of.get(f, ""), str) and wcs_of.get(f, "")
    }
    summary["n_no_wcs"] = int(sum(len(rows) for f, rows in groups.items() if f not in solved))
    det_of = dict(tuple(detections.groupby("frame", sort=True)))
    empty_det = detections.iloc[:0]
    wanted = ["x", "y", "flux", "flux_err", "mag_err", *_APERTURE_FLUXES]
    columns = [c for c in wanted if c in detections.columns]
    shared_psf = share(client, psf)
    rows_of = by_frame.to_dict("index")
    futures = [
        submit_task(
            client,
            _forced_frame,
            cube_path,
            int(frame),
            rows,
            wcs_of[frame],
            shape,
            det_of.get(frame, empty_det)[columns],
            {k: rows_of[frame].get(k, np.nan) for k in (*_CORRECTIONS, *_CALIBRATION)}
            | {"cosmic_pixels": _cosmic_pixels(rows_of[frame])},
            shared_psf,
            config,
        )
        for frame, rows in solved.items()
    ]
    parts, max_pull, n_outside = [], 0.0, 0
    for table, pull, outside in gather_results(client, futures, "lightcurves: forced"):
        n_outside += outside
        if table is not None:
            parts.append(table)
            max_pull = max(max_pull, pull)
    summary["n_outside"] = n_outside
    if not parts:
        summary["n_frames"] = 0
        return _empty(), summary
    forced = pd.concat(parts, ignore_index=True)
    forced = forced[list(FORCED_COLUMNS)].astype(FORCED_COLUMNS)
    summary.update(n_forced=len(forced), n_frames=len(parts), max_pull_redone=max_pull)
    summary = {k: summary[k] for k in _SUMMARY_ORDER if k in summary} | summary
    return forced, summary
