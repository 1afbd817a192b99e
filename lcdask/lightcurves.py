"""The (source, frame) light-curve cube and ensemble differential photometry.

`build_lightcurves` turns matched detections into the Dataset of DESIGN.md's stable interface
(``lightcurves.zarr``): dims ``source`` and ``frame``, coordinates ``source_id`` (source) and
``time_mjd`` (frame), variables ``flux``, ``flux_err``, ``mag``, ``mag_err``, ``flux_jy``,
``rel_flux``, ``rel_flux_err``, ``ra``, ``dec``, ``x``, ``y`` and ``flags``. A source not detected
in a frame has NaN values and the `LightCurveFlag.MISSING` bit; `missing_entries` lists those
entries with the position predicted for them, for the pipeline's forced photometry, and
`insert_forced` puts the forced measurements back (bit `LightCurveFlag.FORCED`).

Ensemble differential photometry (`ensemble_photometry`)
---------------------------------------------------------
1. Comparison stars (`select_comparison_stars`, unless given): present and unflagged in at least
   ``min_coverage`` of the frames, never saturated, median S/N at least ``min_snr``, not excluded
   (movers, the target) and not a detector artefact (``is_artefact``); the ``n_max`` brightest.
   Their points at the frame edge, on masked or repaired pixels or on an artefact are left out of
   the ensemble; such a point used to exclude the star: on a real night (XO-1, ARCSAT, 3948 hot
   pixels repaired) every star's largest aperture touched a repaired pixel in 6-55% of the
   frames and no star was left.
   When fewer than ``min_comparison`` stars pass, the criteria are relaxed step by step
   (`RELAX_STEPS`: coverage, then S/N) and the first step with enough stars is taken; failing that
   the most relaxed step's stars, even one (the transparency is then that star's normalised flux),
   else no ensemble: ``rel_flux`` is each source's flux over its median. `EnsembleResult.note`
   says which (empty for the normal choice), for the run's record.
2. Each comparison star's flux is divided by its median; the per-frame transparency ``T`` is the
   weighted mean of these normalised fluxes, with weights ``1 / s_i**2`` where ``s_i`` is the
   star's robust scatter (1.4826 MAD) about the ensemble. ``T`` is scaled to median 1.
3. Every comparison star is compared with the ensemble without itself (leave-one-out). A star
   whose scatter exceeds ``reject_ratio`` times its expected noise (the median of its
   ``flux_err / flux``) *and* ``clip`` robust standard deviations above the ensemble's typical
   ratio is dropped as variable, and steps 2-3 repeat (at most ``max_iter`` times). So is a star
   with ``min_outliers`` or more points (and more than ``outlier_fraction`` of them) off the
   ensemble's median by more than 5 times its noise: an eclipsing binary or a flare star, whose MAD
   ignores an eclipse of a tenth of the night but whose eclipse would print on every other
   star's relative flux (and on the target's) as a bump.
4. ``rel_flux = flux / T`` normalised to the source's median (comparison stars against the
   leave-one-out ensemble), ``rel_flux_err`` from ``flux_err`` and the ensemble's error.

The choice is returned (`EnsembleResult.comparison_ids`, weights, scatters, the stars dropped)
and can be imposed with ``comparison_ids=``. `detrend` optionally removes a linear dependence of
``log(rel_flux)`` on airmass, FWHM, sky and position.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntFlag

import numpy as np
import pandas as pd
import xarray as xr
from numpy.typing import ArrayLike, NDArray

from lcdask.config import STAR_FLAT_MODES, LightCurvesConfig
from lcdask.flags import ARTEFACT as ARTEFACT_BIT
from lcdask.photometry import DEFAULT_APERTURES, aperture_radii

__all__ = [
    "APERTURE_VARIABLES",
    "BAD_FOR_COMPARISON",
    "BAD_FOR_FLUX",
    "BAD_FOR_POSITION",
    "LIGHTCURVE_VARIABLES",
    "RELAX_STEPS",
    "STAR_FLAT_MODES",
    "EnsembleResult",
    "LightCurveFlag",
    "LightCurvesConfig",
    "StarFlat",
    "aperture_columns",
    "apply_ensemble",
    "build_lightcurves",
    "common_scale",
    "detrend",
    "ensemble_photometry",
    "fit_star_flat",
    "insert_forced",
    "missing_entries",
    "robust_std",
    "select_comparison_stars",
]

LIGHTCURVE_VARIABLES = (
    "flux",
    "flux_err",
    "mag",
    "mag_err",
    "flux_jy",
    "rel_flux",
    "rel_flux_err",
    "ra",
    "dec",
    "x",
    "y",
    "flags",
)
"""Data variables of the light-curve Dataset (all on dims ``(source, frame)``)."""

APERTURE_VARIABLES = ("flux_ap", "flux_ap_err")
"""Data variables on dims ``(source, frame, aperture)``: the flux (aperture-corrected to the
total flux, in ADU, float32) at every aperture the Level 3 photometry measured, and its error;
``flux_ap.sel(aperture=2)`` is the run's ``flux`` with ``[level2] flux = "aperture"``."""

_DETECTION_VALUES = ("flux", "flux_err", "mag", "mag_err", "flux_jy", "ra", "dec", "x", "y")
_FRAME_COORDS = ("bjd_tdb", "zero_point", "airmass", "fwhm_px", "sky", "rms_arcsec")
MAD_TO_STD = 1.4826
log = logging.getLogger("lcdask")


class LightCurveFlag(IntFlag):
    """Bits of the light curves' ``flags``: the detection's flags (bits 0-7) plus these.

    The detection bits are those of `lcdask.detect.DetectionFlag` and
    `lcdask.photometry.PhotFlag` (which share their values); the ones named here are the ones
    the light-curve statistics act on (`BAD_FOR_FLUX`, `BAD_FOR_POSITION`).
    """

    OK = 0
    BLENDED = 1
    """(Detection bit) deblended from a neighbour, or another source within 2 FWHM."""
    EDGE = 2
    """(Detection bit) the largest aperture leaves the image."""
    SATURATED = 4
    """(Detection bit) the star's peak reached saturation."""
    MASKED = 8
    """(Detection bit) bad pixels (masked, or replaced by cleaning) in the aperture."""
    COSMIC = 16
    """(Detection bit) a cosmic-ray pixel in the aperture, or the centroid failed (same bit)."""
    MISSING = 256
    """The source has no detection in this frame (values NaN unless forced)."""
    FORCED = 512
    """The values come from forced photometry at the predicted position."""
    NEAR_MOVER = 1024
    """A moving source passes within 3 FWHM (`lcdask.classify.flag_near_movers`): its light may
    be in the aperture; left out of the variability statistics."""
    ARTEFACT = ARTEFACT_BIT
    """(Detection bit, `lcdask.flags.ARTEFACT`) a detector artefact: a hot pixel, a warm column or
    another source fixed on the detector (`lcdask.classify.find_artefacts`)."""
    OUTLIER = 4096
    """The target's point is off its light curve's local trend by more than the robust clip of
    `lcdask.target_photometry` (a cloud, a satellite, a failed measurement): kept, and out of a
    transit fit."""


BAD_FOR_COMPARISON = (
    LightCurveFlag.EDGE | LightCurveFlag.SATURATED | LightCurveFlag.MASKED | LightCurveFlag.ARTEFACT
)
"""Points of a comparison star left out of the ensemble (a star saturated once is not used at all:
near saturation its other points are not linear either)."""

RELAX_STEPS = ((0.75, 1.0), (0.5, 1.0), (0.5, 1 / 3), (0.25, 1 / 6))
"""Relaxed comparison-star criteria, tried in turn when too few stars pass: (coverage, factor on
``min_snr``); a step is never stricter than the criteria given."""

BAD_FOR_FLUX = (
    LightCurveFlag.BLENDED
    | LightCurveFlag.EDGE
    | LightCurveFlag.SATURATED
    | LightCurveFlag.MASKED
    | LightCurveFlag.COSMIC
    | LightCurveFlag.ARTEFACT
    | LightCurveFlag.OUTLIER
)
"""Points whose flux is not trusted by the variability statistics (`lcdask.classify`) and the
transit fit (`lcdask.transit.TRANSIT_BAD`): a neighbour's light, a truncated aperture, a saturated
or non-linear peak, bad or repaired pixels, a cosmic-ray residual, an outlier of the target's
curve. Their values stay in the light curve."""

BAD_FOR_POSITION = (
    LightCurveFlag.BLENDED | LightCurveFlag.EDGE | LightCurveFlag.COSMIC | LightCurveFlag.ARTEFACT
)
"""Points whose position is not trusted by the motion statistics: the centroid of a blend, of a
star cut by the frame edge or hit by a cosmic ray is pulled, and the pull changes as the field
drifts. MASKED is not among them: it marks repaired (interpolated) pixels in the aperture too,
which leave the centroid in place, and on a night with many hot pixels (the C14 camera: 1.7%) it
took away most of an asteroid's track (rate 12.6"/h instead of 11.4)."""


def robust_std(values: ArrayLike, axis: int | None = None) -> NDArray[np.float64]:
    """1.4826 times the median absolute deviation from the median, ignoring NaN."""
    arr = np.asarray(values, dtype=float)
    with warnings.catch_warnings():  # all-NaN rows give NaN, quietly
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(arr, axis=axis, keepdims=True)
        out = MAD_TO_STD * np.nanmedian(np.abs(arr - med), axis=axis)
    return np.asarray(out)


def build_lightcurves(
    detections: pd.DataFrame,
    source_id: ArrayLike,
    frames: pd.DataFrame,
    *,
    apertures: Sequence[tuple[float, str]] = DEFAULT_APERTURES,
) -> xr.Dataset:
    """The (source, frame) light-curve Dataset from matched detections.

    Parameters
    ----------
    detections
        The detections table (``frame``, ``flux``, ``flux_err``, ``mag``, ``mag_err``,
        ``flux_jy``, ``ra``, ``dec``, ``x``, ``y``, ``flags``; missing value columns are NaN).
    source_id
        Source of each detection (`lcdask.match.match_detections`), -1 for none; at most one
        detection per (source, frame).
    frames
        The per-frame table: ``frame`` and ``time_mjd``; ``bjd_tdb`` (the mid-exposure's
        barycentric Julian date, TDB), ``zero_point``, ``airmass``, ``fwhm_px``, ``sky`` and
        ``rms_arcsec`` become frame coordinates when present. Frames without any detection
        still get a column.
    apertures
        The apertures of the detections' ``flux_ap<k>`` columns (`lcdask.photometry`), ``k``
        from 1: the Level 3 photometry's `lcdask.photometry.DEFAULT_APERTURES`.

    Returns
    -------
    xarray.Dataset
        Dims ``source`` (sorted ``source_id``) and ``frame`` (the frames' order); variables
        `LIGHTCURVE_VARIABLES` (float64, ``flags`` int32); ``rel_flux`` and ``rel_flux_err`` are
        NaN until `apply_ensemble`. When the detections have ``flux_ap<k>`` columns, also
        `APERTURE_VARIABLES` on dims ``(source, frame, aperture)`` (float32, ADU, each
        aperture-corrected to the total flux; NaN where not measured) with the coordinates
        ``aperture`` (``k``, as in ``flux_ap<k>``), ``aperture_radius`` and ``aperture_unit``
        (the radius as given: in FWHM for ``"fwhm"``, in pixels for ``"px"``) and
        ``aperture_radius_px`` (frame, aperture): the radius in pixels on each frame.
    """
    sid = np.asarray(source_id, dtype=np.int64)
    if sid.shape != (len(detections),):
        raise ValueError(
            f"source_id has {sid.size} entries for {len(detections)} detections; pass one per row"
        )
    for col in ("frame", "time_mjd"):
        if col not in frames.columns:
            raise ValueError(f"the frames table needs a {col!r} column")
    frame_ids = frames["frame"].to_numpy(np.int64)
    keep = sid >= 0
    sources = np.unique(sid[keep])
    det_frame = detections["frame"].to_numpy(np.int64)[keep]
    f_order = np.argsort(frame_ids, kind="stable")
    pos = np.searchsorted(frame_ids[f_order], det_frame)
    pos = np.minimum(pos, frame_ids.size - 1)
    known = frame_ids[f_order][pos] == det_frame
    if not known.all():
        bad = np.unique(det_frame[~known])[:5]
        raise ValueError(f"detections of frames {bad.tolist()} are not in the frames table")
    fi = f_order[pos]
    si = np.searchsorted(sources, sid[keep])
    if pd.DataFrame({"s": si, "f": fi}).duplicated().any():
        raise ValueError(
            "two detections of one frame share a source; run lcdask.match.resolve_duplicates"
        )
    shape = (sources.size, frame_ids.size)
    data = {}
    for name in _DETECTION_VALUES:
        arr = np.full(shape, np.nan)
        if name in detections.columns:
            arr[si, fi] = detections[name].to_numpy(dtype=float)[keep]
        data[name] = (("source", "frame"), arr)
    flags = np.full(shape, int(LightCurveFlag.MISSING), dtype=np.int32)
    det_flags = (
        detections["flags"].to_numpy(np.int32)[keep]
        if "flags" in detections.columns
        else np.zeros(si.size, np.int32)
    )
    flags[si, fi] = det_flags
    data["flags"] = (("source", "frame"), flags)
    data["rel_flux"] = (("source", "frame"), np.full(shape, np.nan))
    data["rel_flux_err"] = (("source", "frame"), np.full(shape, np.nan))
    coords = {
        "source_id": ("source", sources),
        "frame": ("frame", frame_ids),
        "time_mjd": ("frame", frames["time_mjd"].to_numpy(float)),
    }
    for name in _FRAME_COORDS:
        if name in frames.columns:
            coords[name] = ("frame", frames[name].to_numpy(float))
    ds = xr.Dataset({k: data[k] for k in LIGHTCURVE_VARIABLES}, coords=coords)
    ds = _with_apertures(ds, detections, keep, si, fi, frames, apertures)
    ds["flux"].attrs["units"] = "adu"
    ds["flux_jy"].attrs["units"] = "Jy"
    ds["ra"].attrs["units"] = "deg"
    ds["dec"].attrs["units"] = "deg"
    ds["rel_flux"].attrs["long_name"] = "ensemble differential flux (median 1)"
    ds["flags"].attrs["flag_masks"] = [int(f) for f in LightCurveFlag if f]
    ds["flags"].attrs["flag_meanings"] = " ".join(f.name for f in LightCurveFlag if f)
    return ds


def aperture_columns(n_apertures: int) -> list[str]:
    """The detection (and forced) table's columns of ``n_apertures`` apertures, in order:
    ``flux_ap1``, ``flux_ap1_err``, ``flux_ap2``, ... (`lcdask.photometry.photometry_schema`)."""
    return [f"flux_ap{k}{e}" for k in range(1, n_apertures + 1) for e in ("", "_err")]


def _with_apertures(
    ds: xr.Dataset,
    detections: pd.DataFrame,
    keep: NDArray[np.bool_],
    si: NDArray,
    fi: NDArray,
    frames: pd.DataFrame,
    apertures: Sequence[tuple[float, str]],
) -> xr.Dataset:
    """`APERTURE_VARIABLES` from the detections' ``flux_ap<k>`` columns (none: ``ds`` as is)."""
    n_ap = len(apertures)
    if not any(f"flux_ap{k}" in detections.columns for k in range(1, n_ap + 1)):
        return ds
    shape = (ds.sizes["source"], ds.sizes["frame"], n_ap)
    flux = np.full(shape, np.nan, np.float32)
    err = np.full(shape, np.nan, np.float32)
    for k in range(n_ap):
        name = f"flux_ap{k + 1}"
        if name in detections.columns:
            flux[si, fi, k] = detections[name].to_numpy(float)[keep]
        if f"{name}_err" in detections.columns:
            err[si, fi, k] = detections[f"{name}_err"].to_numpy(float)[keep]
    fwhm = (
        frames["fwhm_px"].to_numpy(float)
        if "fwhm_px" in frames.columns
        else np.full(len(frames), np.nan)
    )
    radius_px = np.array([aperture_radii(apertures, f) for f in fwhm]).reshape(-1, n_ap)
    out = ds.assign(
        flux_ap=(("source", "frame", "aperture"), flux),
        flux_ap_err=(("source", "frame", "aperture"), err),
    )
    out = out.assign_coords(
        aperture=("aperture", np.arange(1, n_ap + 1)),
        aperture_radius=("aperture", np.array([float(r) for r, _ in apertures])),
        aperture_unit=("aperture", np.array([str(u) for _, u in apertures], dtype=object)),
        aperture_radius_px=(("frame", "aperture"), radius_px.astype(np.float32)),
    )
    out["flux_ap"].attrs.update(
        units="adu",
        long_name="flux in each aperture, aperture-corrected to the total flux",
    )
    out["aperture_radius"].attrs["long_name"] = "radius, in the unit of aperture_unit"
    out["aperture_radius_px"].attrs["long_name"] = "radius on the frame (pixels)"
    return out


def missing_entries(ds: xr.Dataset, sources: pd.DataFrame | None = None) -> pd.DataFrame:
    """The (source, frame) entries without a detection, with the position predicted for them.

    Parameters
    ----------
    ds
        The light-curve Dataset.
    sources
        The sources table (`lcdask.classify.classify_sources`): a moving source is predicted
        along its fitted motion (``ra``, ``dec`` at ``epoch_mjd`` plus ``rate_ra_arcsec_h``,
        ``rate_dec_arcsec_h``). Without it, or for the other sources, the median position.

    Returns
    -------
    pandas.DataFrame
        ``source_id``, ``frame``, ``time_mjd``, ``ra``, ``dec`` (degrees): one row per missing
        entry, for the pipeline's forced photometry.
    """
    missing = (ds["flags"].to_numpy() & int(LightCurveFlag.MISSING)) != 0
    si, fi = np.nonzero(missing)
    sid = ds["source_id"].to_numpy()
    t = ds["time_mjd"].to_numpy().astype(float)
    with np.errstate(all="ignore"):
        ra0 = np.nanmedian(ds["ra"].to_numpy(), axis=1) if ds.sizes["frame"] else np.zeros(0)
        dec0 = np.nanmedian(ds["dec"].to_numpy(), axis=1) if ds.sizes["frame"] else np.zeros(0)
    ra = ra0[si]
    dec = dec0[si]
    if sources is not None and len(sources) and "rate_ra_arcsec_h" in sources.columns:
        table = sources.set_index("source_id")
        moving = table[(table["kind"] == "moving") & table["rate_ra_arcsec_h"].notna()]
        is_mov = np.isin(sid[si], moving.index.to_numpy())
        if is_mov.any():
            row = moving.loc[sid[si][is_mov]]
            dt_h = (t[fi][is_mov] - row["epoch_mjd"].to_numpy(float)) * 24.0
            d0 = row["dec"].to_numpy(float)
            dec[is_mov] = d0 + row["rate_dec_arcsec_h"].to_numpy(float) * dt_h / 3600.0
            ra[is_mov] = row["ra"].to_numpy(float) + row["rate_ra_arcsec_h"].to_numpy(
                float
            ) * dt_h / 3600.0 / np.cos(np.deg2rad(d0))
    return pd.DataFrame(
        {
            "source_id": sid[si].astype(np.int64),
            "frame": ds["frame"].to_numpy()[fi].astype(np.int64),
            "time_mjd": t[fi],
            "ra": ra,
            "dec": dec,
        }
    )


def insert_forced(ds: xr.Dataset, forced: pd.DataFrame) -> xr.Dataset:
    """Put forced-photometry measurements into the missing entries of a light-curve Dataset.

    Parameters
    ----------
    ds
        The light-curve Dataset.
    forced
        ``source_id``, ``frame`` and any of ``flux``, ``flux_err``, ``mag``, ``mag_err``,
        ``flux_jy``, ``ra``, ``dec``, ``x``, ``y`` (e.g. `missing_entries` plus the measured
        columns), ``flux_ap<k>`` and ``flux_ap<k>_err`` (into ``flux_ap``, ``flux_ap_err``),
        and optionally ``flags`` (the measurement's photometry bits, e.g. BLENDED).

    Returns
    -------
    xarray.Dataset
        A copy; the entries get the values, their ``flags`` bits and `LightCurveFlag.FORCED`
        set and `LightCurveFlag.MISSING` cleared. Entries that hold a detection are left
        alone.
    """
    out = ds.copy(deep=True)
    sid = out["source_id"].to_numpy()
    fid = out["frame"].to_numpy()
    s_order, f_order = np.argsort(sid), np.argsort(fid)
    si = s_order[np.searchsorted(sid[s_order], forced["source_id"].to_numpy())]
    fi = f_order[np.searchsorted(fid[f_order], forced["frame"].to_numpy())]
    flags = out["flags"].to_numpy()
    ok = (sid[si] == forced["source_id"].to_numpy()) & (fid[fi] == forced["frame"].to_numpy())
    ok &= (flags[si, fi] & int(LightCurveFlag.MISSING)) != 0
    si, fi = si[ok], fi[ok]
    for name in _DETECTION_VALUES:
        if name in forced.columns:
            out[name].values[si, fi] = forced[name].to_numpy(dtype=float)[ok]
    if "flux_ap" in out:
        for k in range(out.sizes["aperture"]):
            for var, col in (
                ("flux_ap", f"flux_ap{k + 1}"),
                ("flux_ap_err", f"flux_ap{k + 1}_err"),
            ):
                if col in forced.columns:
                    out[var].values[si, fi, k] = forced[col].to_numpy(dtype=float)[ok]
    flags[si, fi] = (flags[si, fi] & ~int(LightCurveFlag.MISSING)) | int(LightCurveFlag.FORCED)
    if "flags" in forced.columns:
        flags[si, fi] |= forced["flags"].to_numpy(np.int32)[ok]
    out["flags"].values[...] = flags
    return out


@dataclass(frozen=True)
class EnsembleResult:
    """The outcome of `ensemble_photometry`.

    Attributes
    ----------
    rel_flux, rel_flux_err
        (source, frame) differential flux normalised to each source's median, and its error.
    transparency, transparency_err
        Per-frame ensemble flux relative to its median (the transparency correction) and error.
    comparison_ids
        ``source_id`` of the comparison stars kept.
    weights, scatter
        Their normalised weights and robust fractional scatter against the ensemble.
    rejected_ids
        Candidates dropped because they turned out variable.
    n_iterations
        Iterations run.
    note
        Empty when the comparison stars passed the criteria asked for; else what was done
        instead (relaxed criteria, a single star, or no ensemble: raw fluxes over their median),
        one line for the run's record.
    criteria
        The criteria the comparison stars passed (``min_coverage``, ``min_snr``).
    """

    rel_flux: NDArray[np.float64]
    rel_flux_err: NDArray[np.float64]
    transparency: NDArray[np.float64]
    transparency_err: NDArray[np.float64]
    comparison_ids: NDArray[np.int64]
    weights: NDArray[np.float64]
    scatter: NDArray[np.float64]
    rejected_ids: NDArray[np.int64]
    n_iterations: int
    note: str = ""
    criteria: dict[str, float] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """The comparison stars as a table: ``source_id``, ``weight``, ``scatter``."""
        return pd.DataFrame(
            {"source_id": self.comparison_ids, "weight": self.weights, "scatter": self.scatter}
        )


def _usable(ds: xr.Dataset) -> NDArray[np.bool_]:
    flux = ds["flux"].to_numpy()
    err = ds["flux_err"].to_numpy()
    flags = ds["flags"].to_numpy()
    return (
        np.isfinite(flux)
        & np.isfinite(err)
        & (flux > 0)
        & (err > 0)
        & ((flags & int(LightCurveFlag.MISSING)) == 0)
    )


def select_comparison_stars(
    ds: xr.Dataset,
    *,
    n_max: int = 30,
    min_coverage: float = 0.9,
    min_snr: float = 30.0,
    exclude_ids: ArrayLike | None = None,
) -> NDArray[np.int64]:
    """Candidate comparison stars: well covered, never saturated, bright enough, not excluded.

    Parameters
    ----------
    ds
        The light-curve Dataset; sources with ``is_artefact`` (when present) are never chosen.
    n_max
        At most this many (the brightest by median flux).
    min_coverage
        Fraction of the frames with a usable measurement free of `BAD_FOR_COMPARISON` bits.
    min_snr
        Median ``flux / flux_err`` over those measurements.
    exclude_ids
        ``source_id`` values never to use (movers, the target, known variables).

    Returns
    -------
    numpy.ndarray
        ``source_id`` of the candidates, brightest first.
    """
    usable = _usable(ds)
    flags = ds["flags"].to_numpy()
    good = usable & ((flags & int(BAD_FOR_COMPARISON)) == 0)
    n_frames = max(ds.sizes["frame"], 1)
    coverage = good.sum(axis=1) / n_frames
    saturated = (usable & ((flags & int(LightCurveFlag.SATURATED)) != 0)).any(axis=1)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # sources without a good point
        flux = np.where(good, ds["flux"].to_numpy(), np.nan)
        med_flux = np.nanmedian(flux, axis=1) if ds.sizes["frame"] else np.zeros(0)
        snr = np.nanmedian(flux / ds["flux_err"].to_numpy(), axis=1)
    ok = (coverage >= min_coverage) & ~saturated & (snr >= min_snr)
    if "is_artefact" in ds:
        ok &= ~ds["is_artefact"].to_numpy().astype(bool)
    sid = ds["source_id"].to_numpy()
    if exclude_ids is not None:
        ok &= ~np.isin(sid, np.asarray(exclude_ids, dtype=np.int64))
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(-med_flux[idx], kind="stable")][:n_max]
    return sid[idx].astype(np.int64)


def _choose_comparison(
    ds: xr.Dataset,
    *,
    n_max: int,
    min_coverage: float,
    min_snr: float,
    exclude_ids: ArrayLike | None,
    min_comparison: int,
) -> tuple[NDArray[np.int64], str, dict[str, float]]:
    """The comparison stars, relaxing the criteria (`RELAX_STEPS`) until enough pass."""
    steps = [(min_coverage, min_snr)]
    steps += [
        (min(min_coverage, cov), min_snr * f)
        for cov, f in RELAX_STEPS
        if cov < min_coverage or f < 1.0
    ]
    found = np.zeros(0, dtype=np.int64)
    for cov, snr in steps:
        found = select_comparison_stars(
            ds, n_max=n_max, min_coverage=cov, min_snr=snr, exclude_ids=exclude_ids
        )
        if found.size >= min_comparison:
            break
    criteria = {"min_coverage": float(cov), "min_snr": float(snr)}
    wanted = f"coverage >= {min_coverage:g} and S/N >= {min_snr:g}"
    if (cov, snr) == steps[0] and found.size >= min_comparison:
        return found, "", criteria
    if found.size >= min_comparison:
        note = (
            f"{found.size} candidate comparison stars with coverage >= {cov:g}, S/N >= {snr:g} "
            f"(fewer than {min_comparison} had {wanted})"
        )
    elif found.size:
        note = (
            f"only {found.size} comparison star (coverage >= {cov:g}, S/N >= {snr:g}): the "
            "transparency is its normalised flux, and its own rel_flux is its flux over its median"
        )
    else:
        note = (
            f"no comparison star (none with coverage >= {cov:g} and S/N >= {snr:g}): no ensemble, "
            "rel_flux is each source's flux over its median"
        )
    return found, note, criteria


def ensemble_photometry(
    ds: xr.Dataset,
    *,
    comparison_ids: ArrayLike | None = None,
    n_max: int = 30,
    min_coverage: float = 0.9,
    min_snr: float = 30.0,
    exclude_ids: ArrayLike | None = None,
    reject_ratio: float = 1.5,
    clip: float = 4.0,
    noise_floor: float = 0.005,
    max_iter: int = 10,
    min_comparison: int = 2,
    min_outliers: int = 3,
    outlier_fraction: float = 0.02,
) -> EnsembleResult:
    """Ensemble differential photometry (module docstring): transparency and relative fluxes.

    Never fails for want of comparison stars: it relaxes the criteria, uses a single star, or
    falls back to each source's flux over its median, and says so in `EnsembleResult.note`.

    Parameters
    ----------
    ds
        The light-curve Dataset (``is_artefact``, when present, keeps artefacts out).
    comparison_ids
        Impose the comparison stars (no automatic choice, no rejection); at least one.
    n_max, min_coverage, min_snr, exclude_ids
        Automatic choice (`select_comparison_stars`).
    reject_ratio, clip
        A comparison star is dropped when its scatter / expected noise exceeds both
        ``reject_ratio`` and the ensemble's median ratio plus ``clip`` robust deviations.
    noise_floor
        Fractional noise per point added in quadrature to a star's photon noise in that
        test: what no bright star of a small telescope beats (flat-field errors as the field
        drifts, scintillation of 0.3-1 m apertures). Without it the brightest stars are the
        first rejected: on the real XO-1 night the three stars nearest the target's brightness
        (scatter 0.6-1.3%, photon noise 0.2-0.3%) were dropped for three 2.5 mag fainter, and
        the target's scatter went from 0.65% to 2.9%.
    max_iter
        Largest number of rejection rounds.
    min_comparison
        Fewest comparison stars wanted: with fewer, the criteria are relaxed (`RELAX_STEPS`);
        the rejection never goes below it.
    min_outliers, outlier_fraction
        A comparison star with at least ``min_outliers`` points, and more than
        ``outlier_fraction`` of its points, off the ensemble by more than 5 times its noise is
        dropped (Gaussian noise puts 6e-7 of the points there).

    Returns
    -------
    EnsembleResult
        Relative fluxes of every source, transparency, the comparison stars and their weights,
        the criteria used and a note when the choice was degraded.
    """
    sid = ds["source_id"].to_numpy()
    usable = _usable(ds)
    flux = np.where(usable, ds["flux"].to_numpy(), np.nan)
    err = np.where(usable, ds["flux_err"].to_numpy(), np.nan)
    # the comparison stars' points that do not enter the ensemble (edge, masked, artefact)
    off = (ds["flags"].to_numpy() & int(BAD_FOR_COMPARISON)) != 0
    imposed = comparison_ids is not None
    note = ""
    criteria = {"min_coverage": float(min_coverage), "min_snr": float(min_snr)}
    if imposed:
        comp = np.asarray(comparison_ids, dtype=np.int64).ravel()
        unknown = comp[~np.isin(comp, sid)]
        if unknown.size:
            raise ValueError(f"comparison_ids {unknown[:5].tolist()} are not sources of the cube")
        if comp.size == 0:
            raise ValueError("comparison_ids is empty: pass at least one source_id, or None")
    else:
        comp, note, criteria = _choose_comparison(
            ds,
            n_max=n_max,
            min_coverage=min_coverage,
            min_snr=min_snr,
            exclude_ids=exclude_ids,
            min_comparison=min_comparison,
        )
    if note:
        log.warning("ensemble: %s", note)
    if comp.size == 0:
        return _raw_result(flux, err, note, criteria)
    if comp.size == 1:
        return _single_result(sid, comp, flux, err, off, note, criteria)
    rejected: list[int] = []
    n_iter = 0
    while True:
        n_iter += 1
        fit = _fit_ensemble(_index_of(sid, comp), flux, err, off, noise_floor=noise_floor)
        ratio = fit.scatter / np.hypot(fit.expected, noise_floor)
        if imposed or n_iter >= max_iter:
            break
        worst = _worst_comparison(
            fit,
            ratio,
            reject_ratio=reject_ratio,
            clip=clip,
            min_outliers=min_outliers,
            outlier_fraction=outlier_fraction,
            min_comparison=min_comparison,
        )
        if worst is None:
            break
        rejected.append(int(comp[worst]))
        comp = np.delete(comp, worst)
    rel, rel_err, transparency, transparency_err = _ensemble_relative_fluxes(fit, flux, err)
    weights = fit.w / fit.w.sum()
    return EnsembleResult(
        rel_flux=rel,
        rel_flux_err=rel_err,
        transparency=transparency,
        transparency_err=transparency_err,
        comparison_ids=comp.astype(np.int64),
        weights=weights,
        scatter=fit.scatter,
        rejected_ids=np.asarray(rejected, dtype=np.int64),
        n_iterations=n_iter,
        note=note,
        criteria=criteria,
    )


@dataclass(frozen=True)
class _EnsembleFit:
    """One round of the ensemble on the comparison stars at rows ``ci`` of the cube.

    ``x_all``: their fluxes over a common scale; ``x``: the same without wild points; ``e``:
    fractional errors; ``expected``: each star's median fractional error; ``scatter``: its
    robust scatter about the ensemble without itself; ``w``: the weights of the last pass (from
    the scatter before it); ``wx``, ``ww``, ``s_wx``, ``s_w``: weighted fluxes and weights per
    point and their sums per frame; ``loo``: the ensemble without each star.
    """

    ci: NDArray
    x_all: NDArray
    x: NDArray
    e: NDArray
    expected: NDArray
    scatter: NDArray
    w: NDArray
    wx: NDArray
    ww: NDArray
    s_wx: NDArray
    s_w: NDArray
    loo: NDArray


def _fit_ensemble(
    ci: NDArray, flux: NDArray, err: NDArray, off: NDArray, *, noise_floor: float
) -> _EnsembleFit:
    """Weight the comparison stars at rows ``ci``: from the expected noise, then three times from
    the measured scatter about the ensemble without each star."""
    cf, ce = np.where(off[ci], np.nan, flux[ci]), err[ci]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # frames without a good point
        norm = common_scale(cf)
        x_all = cf / norm[:, None]
        e = ce / cf  # fractional error
        expected = np.nanmedian(e, axis=1)
        # a single wild point (a failed centroid, a cosmic ray in a blend: 20% of the flux
        # on a simulated night) stays out of the transparency: with a weight of 1/10 it
        # moved a frame's transparency by 9%
        x = np.where(_wild_points(x_all, expected, noise_floor), np.nan, x_all)
        # first pass: weights from the expected noise; then from the measured scatter
        scatter = expected.copy()
        for _ in range(3):
            w = 1.0 / scatter**2
            wx = np.where(np.isfinite(x), w[:, None] * x, 0.0)
            ww = np.where(np.isfinite(x), w[:, None], 0.0)
            s_wx, s_w = wx.sum(axis=0), ww.sum(axis=0)
            loo = (s_wx[None, :] - wx) / (s_w[None, :] - ww)  # ensemble without the star
            resid = x / loo
            resid = resid / np.nanmedian(resid, axis=1, keepdims=True)
            scatter = np.maximum(robust_std(resid, axis=1), 1e-6)
    return _EnsembleFit(ci, x_all, x, e, expected, scatter, w, wx, ww, s_wx, s_w, loo)


def _worst_comparison(
    fit: _EnsembleFit,
    ratio: NDArray,
    *,
    reject_ratio: float,
    clip: float,
    min_outliers: int,
    outlier_fraction: float,
    min_comparison: int,
) -> int | None:
    """Position of the comparison star to drop next (the worst offender: its signal pollutes
    the others' residuals), or None when none is bad or dropping one leaves too few."""
    scatter, expected, x_all = fit.scatter, fit.expected, fit.x_all
    typical = np.nanmedian(ratio)
    spread = max(float(robust_std(ratio)), 0.05 * typical)
    bad = (ratio > reject_ratio) & (ratio > typical + clip * spread) | ~np.isfinite(ratio)
    # against the ensemble's median, which one eclipsing star does not move (it prints on
    # the weighted mean, hence on every other star's leave-one-out residuals)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN frames
        to_median = x_all / np.nanmedian(x_all, axis=0)
        to_median /= np.nanmedian(to_median, axis=1, keepdims=True)
        far = np.abs(to_median - 1.0) > 5.0 * np.fmax(scatter, expected)[:, None]
    n_off, n_points = far.sum(axis=1), np.isfinite(to_median).sum(axis=1)
    eclipsing = (n_off >= min_outliers) & (n_off > outlier_fraction * n_points)
    bad |= eclipsing
    if not bad.any() or fit.ci.size - bad.sum() < min_comparison:
        return None
    # drop the worst offender first (its signal pollutes the others' residuals)
    score = np.where(np.isfinite(ratio), ratio, np.inf) + np.where(eclipsing, 1e6 * n_off, 0)
    return int(np.nanargmax(np.where(bad, score, -np.inf)))


def _ensemble_relative_fluxes(
    fit: _EnsembleFit, flux: NDArray, err: NDArray
) -> tuple[NDArray, NDArray, NDArray, NDArray]:
    """Every source's flux relative to the ensemble (each comparison star's relative to the
    ensemble without itself), normalised to its median, with errors; and the transparency."""
    ci, x, e, w, ww, s_wx, s_w, loo = (
        fit.ci,
        fit.x,
        fit.e,
        fit.w,
        fit.ww,
        fit.s_wx,
        fit.s_w,
        fit.loo,
    )
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # frames without any comparison point
        transparency = s_wx / s_w
        scale = np.nanmedian(transparency)
        transparency = transparency / scale
        w_e = np.where(np.isfinite(x), (w[:, None] * e) ** 2, 0.0)
        transparency_err = np.sqrt(w_e.sum(axis=0)) / s_w * transparency
        rel = flux / transparency[None, :]
        rel_frac_err2 = (err / flux) ** 2 + (transparency_err / transparency)[None, :] ** 2
        # comparison stars against the ensemble without themselves
        loo_t = loo / scale
        rel[ci] = flux[ci] / loo_t
        loo_err2 = np.where(
            np.isfinite(loo),
            (np.sqrt(np.maximum(w_e.sum(axis=0)[None, :] - w_e, 0.0)) / (s_w[None, :] - ww)) ** 2,
            np.nan,
        )
        rel_frac_err2[ci] = (err[ci] / flux[ci]) ** 2 + loo_err2
        med = np.nanmedian(rel, axis=1, keepdims=True)
        rel = rel / med
        rel_err = np.abs(rel) * np.sqrt(rel_frac_err2)
    return rel, rel_err, transparency, transparency_err


def _wild_points(x: NDArray, expected: NDArray, noise_floor: float) -> NDArray[np.bool_]:
    """Comparison-star points off the ensemble's median by more than 8 times their scatter.

    ``x`` is (star, frame) normalised flux; a point is wild when it departs from the frame's
    median over the stars (normalised per star) by more than 8 times the largest of the star's
    robust scatter, its expected noise and ``noise_floor``, and the star has at most 2 such
    points: a failed measurement, not the star's own behaviour (an eclipsing star's points are
    left in, and the star dropped by the eclipse test of `ensemble_photometry`).
    """
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        dev = x / np.nanmedian(x, axis=0)
        dev = dev / np.nanmedian(dev, axis=1, keepdims=True)
        spread = np.fmax(np.fmax(robust_std(dev, axis=1), expected), noise_floor)
        wild = np.abs(dev - 1.0) > 8.0 * spread[:, None]
    return wild & (wild.sum(axis=1) <= 2)[:, None]


def common_scale(cf: NDArray) -> NDArray:
    """Each comparison star's flux scale, on one footing when their good frames differ.

    ``cf`` is (star, frame) flux, NaN where a point is not used; returns one scale per star.

    A star's median over its own good points is biased when those points are not a fair
    sample of the night (on the real XO-1 night a star's repaired-pixel points were its clear
    frames: its median came from the cloudy ones, and every frame it missed moved the target's
    relative flux by 5%). The scale is the median of the star's flux over the ensemble's
    per-frame transparency (the median across the stars of their scaled fluxes), iterated.
    """
    norm = np.nanmedian(cf, axis=1)
    for _ in range(3):
        transparency = np.nanmedian(cf / norm[:, None], axis=0)
        norm = np.nanmedian(cf / transparency[None, :], axis=1)
    return norm


def _raw_result(
    flux: NDArray, err: NDArray, note: str, criteria: dict[str, float]
) -> EnsembleResult:
    """No comparison star: each source's flux over its median, transparency 1."""
    n_frames = flux.shape[1]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # sources without a point
        med = np.nanmedian(flux, axis=1, keepdims=True)
        rel, rel_err = flux / med, err / med
    return EnsembleResult(
        rel_flux=rel,
        rel_flux_err=rel_err,
        transparency=np.ones(n_frames),
        transparency_err=np.zeros(n_frames),
        comparison_ids=np.zeros(0, dtype=np.int64),
        weights=np.zeros(0),
        scatter=np.zeros(0),
        rejected_ids=np.zeros(0, dtype=np.int64),
        n_iterations=0,
        note=note,
        criteria=criteria,
    )


def _single_result(
    sid: NDArray,
    comp: NDArray[np.int64],
    flux: NDArray,
    err: NDArray,
    off: NDArray[np.bool_],
    note: str,
    criteria: dict[str, float],
) -> EnsembleResult:
    """One comparison star: the transparency is its normalised flux (where its point is good)."""
    c = int(_index_of(sid, comp)[0])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cf = np.where(off[c], np.nan, flux[c])
        transparency = cf / np.nanmedian(cf)
        frac = err[c] / cf
        transparency_err = transparency * frac
        rel = flux / transparency[None, :]
        rel_frac_err2 = (err / flux) ** 2 + frac[None, :] ** 2
        rel[c] = flux[c]  # nothing to compare it with
        rel_frac_err2[c] = (err[c] / flux[c]) ** 2
        med = np.nanmedian(rel, axis=1, keepdims=True)
        rel = rel / med
        rel_err = np.abs(rel) * np.sqrt(rel_frac_err2)
        expected = float(np.nanmedian(frac))
    return EnsembleResult(
        rel_flux=rel,
        rel_flux_err=rel_err,
        transparency=transparency,
        transparency_err=transparency_err,
        comparison_ids=comp.astype(np.int64),
        weights=np.ones(1),
        scatter=np.array([expected]),
        rejected_ids=np.zeros(0, dtype=np.int64),
        n_iterations=0,
        note=note,
        criteria=criteria,
    )


def _index_of(values: NDArray, wanted: NDArray) -> NDArray[np.int64]:
    order = np.argsort(values, kind="stable")
    return order[np.searchsorted(values[order], wanted)]


def apply_ensemble(ds: xr.Dataset, result: EnsembleResult) -> xr.Dataset:
    """Store an ensemble result in the light-curve Dataset.

    Parameters
    ----------
    ds
        The light-curve Dataset.
    result
        From `ensemble_photometry` on the same Dataset.

    Returns
    -------
    xarray.Dataset
        A copy with ``rel_flux``, ``rel_flux_err``, the frame coordinates ``transparency`` and
        ``transparency_err``, and the source variables ``is_comparison`` and
        ``comparison_weight`` (0 for the others).
    """
    out = ds.copy()
    out["rel_flux"] = (("source", "frame"), result.rel_flux)
    out["rel_flux_err"] = (("source", "frame"), result.rel_flux_err)
    out["rel_flux"].attrs["long_name"] = "ensemble differential flux (median 1)"
    out = out.assign_coords(
        transparency=("frame", result.transparency),
        transparency_err=("frame", result.transparency_err),
    )
    sid = out["source_id"].to_numpy()
    is_comp = np.isin(sid, result.comparison_ids)
    weight = np.zeros(sid.size)
    weight[_index_of(sid, result.comparison_ids)] = result.weights
    out["is_comparison"] = ("source", is_comp)
    out["comparison_weight"] = ("source", weight)
    return out


def detrend(
    ds: xr.Dataset,
    *,
    regressors: Sequence[str] = ("airmass", "fwhm_px", "sky", "x", "y"),
    fit_frames: ArrayLike | None = None,
    min_points: int = 10,
) -> xr.Dataset:
    """Remove a linear dependence of ``log(rel_flux)`` on airmass, FWHM, sky and position.

    Each source's ``log(rel_flux)`` is regressed (weighted least squares, weights from
    ``rel_flux_err``) on the standardised regressors; the fitted trend (without its mean) is
    divided out of ``rel_flux`` and ``rel_flux_err``.

    Parameters
    ----------
    ds
        The light-curve Dataset after `apply_ensemble`.
    regressors
        Frame coordinates (``airmass``, ``fwhm_px``, ``sky``, ``zero_point``...) or (source,
        frame) variables (``x``, ``y``) to regress on; the ones the Dataset lacks are an error.
    fit_frames
        Boolean mask over frames used in the fit (e.g. False during a transit so that the
        signal is not fitted away); default all.
    min_points
        Sources with fewer usable points than this (or than the regressors + 2) are left as
        they are.

    Returns
    -------
    xarray.Dataset
        A copy with detrended ``rel_flux`` and ``rel_flux_err`` and the coefficients in
        ``detrend_coef`` (source, regressor).
    """
    missing = [r for r in regressors if r not in ds.variables]
    if missing:
        raise ValueError(f"detrend regressors {missing} are not in the light-curve Dataset")
    n_src, n_frm = ds.sizes["source"], ds.sizes["frame"]
    cols = []
    for name in regressors:
        v = ds[name]
        arr = (
            np.broadcast_to(v.to_numpy(), (n_src, n_frm)) if v.dims == ("frame",) else v.to_numpy()
        )
        cols.append(np.asarray(arr, dtype=float))
    reg = np.stack(cols, axis=-1)  # (source, frame, k)
    rel = ds["rel_flux"].to_numpy()
    rel_err = ds["rel_flux_err"].to_numpy()
    use = np.ones(n_frm, bool) if fit_frames is None else np.asarray(fit_frames, dtype=bool)
    if use.shape != (n_frm,):
        raise ValueError(f"fit_frames must have one entry per frame ({n_frm}), got {use.shape}")
    k = len(regressors)
    coef = np.full((n_src, k), np.nan)
    out_rel = rel.copy()
    out_err = rel_err.copy()
    with np.errstate(all="ignore"):
        y_all = np.log(rel)
        w_all = (rel / rel_err) ** 2
    for s in range(n_src):
        ok_all = np.isfinite(y_all[s]) & np.isfinite(reg[s]).all(axis=1) & np.isfinite(w_all[s])
        ok = ok_all & use
        if ok.sum() < max(min_points, k + 2):
            continue
        r = reg[s]
        mu, sd = r[ok].mean(axis=0), r[ok].std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        z = (r - mu) / sd
        a = np.column_stack([np.ones(ok.sum()), z[ok]])
        sw = np.sqrt(w_all[s, ok])
        beta, *_ = np.linalg.lstsq(a * sw[:, None], y_all[s, ok] * sw, rcond=None)
        trend = np.exp(z[ok_all] @ beta[1:])
        out_rel[s, ok_all] = rel[s, ok_all] / trend
        out_err[s, ok_all] = rel_err[s, ok_all] / trend
        coef[s] = beta[1:] / sd
    out = ds.copy()
    out["rel_flux"] = (("source", "frame"), out_rel)
    out["rel_flux_err"] = (("source", "frame"), out_err)
    out["detrend_coef"] = (("source", "regressor"), coef)
    out = out.assign_coords(regressor=("regressor", list(regressors)))
    return out


@dataclass(frozen=True)
class StarFlat:
    """A smooth illumination correction fitted to the stars themselves (`fit_star_flat`).

    The correction is ``P(x, y)``, a polynomial in detector coordinates in magnitudes
    (``P > 0``: the detector is less sensitive there), 0 at the stars' median position; the
    relative throughput is ``10 ** (-0.4 P)``. Outside the box the stars sampled the polynomial
    is evaluated on the box's edge (no extrapolation).

    Attributes
    ----------
    order
        Degree of ``P``; 0 when no correction was found (see ``reason``).
    exponents
        ``(i, j)`` of each term ``u**i v**j`` (``u``, ``v``: detector coordinates centred on
        ``centre`` and divided by ``half_size``).
    coefficients
        One per term, in magnitudes; terms the data cannot constrain (a linear gradient when
        the field only translates: it is one more per-frame zero point) are 0.
    centre, half_size
        The normalisation of ``x`` and ``y`` (pixels): the stars' median position and half the
        extent of the positions used.
    box
        ``(x_min, x_max, y_min, y_max)`` of the positions used.
    shift_px
        Median over the stars used of how far each strays from its median position (90th
        percentile of the distance): how much the field moved on the detector.
    usable
        Whether the correction may be applied: enough drift, and a polynomial of degree 1 or
        more chosen by the data.
    reason
        Why not usable (empty when usable).
    n_stars, n_frames, n_points
        Stars, frames and points of the final fit (after the clipping).
    n_stars_clipped, n_points_clipped
        Stars dropped as variable and points dropped as outliers.
    rms_before_mag, rms_after_mag
        Median over the bright stars used (median error below 0.01 mag; all the stars used
        when fewer than 5) of the rms of their magnitudes about ``m_s + z_f``, without and
        with ``P``.
    throughput_range
        Smallest and largest relative throughput ``10 ** (-0.4 P)`` at the points used.
    criterion
        Order -> BIC of each order tried (when the order was chosen by the data).
    """

    order: int
    exponents: tuple[tuple[int, int], ...]
    coefficients: NDArray[np.float64]
    centre: tuple[float, float]
    half_size: tuple[float, float]
    box: tuple[float, float, float, float]
    shift_px: float
    usable: bool
    reason: str = ""
    n_stars: int = 0
    n_frames: int = 0
    n_points: int = 0
    n_stars_clipped: int = 0
    n_points_clipped: int = 0
    rms_before_mag: float = float("nan")
    rms_after_mag: float = float("nan")
    throughput_range: tuple[float, float] = (1.0, 1.0)
    criterion: dict[int, float] = field(default_factory=dict)

    def correction_mag(self, x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """``P(x, y)`` in magnitudes (NaN where ``x`` or ``y`` is NaN)."""
        xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if not self.exponents:
            return np.where(np.isfinite(xa) & np.isfinite(ya), 0.0, np.nan)
        x0, x1, y0, y1 = self.box
        u = (np.clip(xa, x0, x1) - self.centre[0]) / self.half_size[0]
        v = (np.clip(ya, y0, y1) - self.centre[1]) / self.half_size[1]
        out = np.zeros(np.broadcast_shapes(u.shape, v.shape))
        for (i, j), c in zip(self.exponents, self.coefficients, strict=True):
            out = out + c * u**i * v**j
        return out

    def throughput(self, x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
        """Relative throughput ``10 ** (-0.4 P)`` (1 at the stars' median position)."""
        return 10.0 ** (-0.4 * self.correction_mag(x, y))

    def apply(self, ds: xr.Dataset) -> xr.Dataset:
        """Divide the light curves' fluxes by the throughput at each point's position.

        Parameters
        ----------
        ds
            The light-curve Dataset (``x``, ``y``, ``flux``, ``flux_err``; ``flux_jy`` and
            ``mag`` when present).

        Returns
        -------
        xarray.Dataset
            A copy with ``flux``, ``flux_err``, ``flux_jy`` (and ``flux_ap``,
            ``flux_ap_err``) divided by the throughput and
            ``P`` subtracted from ``mag`` (``mag_err`` unchanged: the relative error is); the
            variable ``star_flat`` (source, frame) holds the throughput applied (1 where a
            point has no position).

        Raises
        ------
        ValueError
            When the correction is not usable (``reason`` says why).
        """
        if not self.usable:
            raise ValueError(f"the star flat cannot be applied: {self.reason}")
        p = self.correction_mag(ds["x"].to_numpy(), ds["y"].to_numpy())
        p = np.where(np.isfinite(p), p, 0.0)
        factor = 10.0 ** (-0.4 * p)
        out = ds.copy()
        for name in ("flux", "flux_err", "flux_jy"):
            if name in out:
                out[name] = out[name].copy(data=out[name].to_numpy() / factor)
        for name in APERTURE_VARIABLES:  # the throughput is the same in every aperture
            if name in out:
                scaled = out[name].to_numpy() / factor[:, :, None]
                out[name] = out[name].copy(data=scaled.astype(out[name].dtype))
        if "mag" in out:
            out["mag"] = out["mag"].copy(data=out["mag"].to_numpy() - p)
        out["star_flat"] = (("source", "frame"), factor)
        out["star_flat"].attrs["long_name"] = (
            f"relative throughput divided out of the fluxes (star flat, order {self.order})"
        )
        return out

    def as_record(self) -> dict:
        """A JSON-ready summary for run.json (None for what was not measured)."""

        def num(value: float, digits: int) -> float | None:
            return round(float(value), digits) if np.isfinite(value) else None

        return {
            "order": int(self.order),
            "usable": bool(self.usable),
            "reason": self.reason,
            "n_stars": int(self.n_stars),
            "n_frames": int(self.n_frames),
            "n_points": int(self.n_points),
            "n_stars_clipped": int(self.n_stars_clipped),
            "n_points_clipped": int(self.n_points_clipped),
            "shift_px": num(self.shift_px, 1),
            "throughput_min": num(self.throughput_range[0], 4),
            "throughput_max": num(self.throughput_range[1], 4),
            "rms_before_mag": num(self.rms_before_mag, 5),
            "rms_after_mag": num(self.rms_after_mag, 5),
            "bic": {str(k): round(float(v), 1) for k, v in self.criterion.items()},
        }


def _poly_exponents(order: int) -> tuple[tuple[int, int], ...]:
    return tuple((i, d - i) for d in range(1, order + 1) for i in range(d, -1, -1))


def _two_way_fit(
    si: NDArray[np.int64],
    fi: NDArray[np.int64],
    sw: NDArray[np.float64],
    y: NDArray[np.float64],
    terms: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Weighted least squares ``y = m_s + z_f + terms @ c`` (sparse, lsqr): ``c`` and residuals.

    ``sw`` is the square root of the weights. The gauge (a constant between ``m_s`` and
    ``z_f``) and any term the star and frame offsets absorb are left to lsqr's minimum norm.
    """
    from scipy import sparse
    from scipy.sparse.linalg import lsqr

    n = y.size
    n_s, n_f = int(si.max()) + 1, int(fi.max()) + 1
    k = terms.shape[1]
    rows = np.arange(n)
    star = sparse.csr_matrix((sw, (rows, si)), shape=(n, n_s))
    frame = sparse.csr_matrix((sw, (rows, fi)), shape=(n, n_f))
    blocks = [star, frame]
    if k:
        blocks.append(sparse.csr_matrix(terms * sw[:, None]))
    a = sparse.hstack(blocks).tocsr()
    sol = lsqr(a, y * sw, atol=1e-12, btol=1e-12, iter_lim=20 * (n_s + n_f + k) + 200)[0]
    model = sol[:n_s][si] + sol[n_s : n_s + n_f][fi]
    c = sol[n_s + n_f :]
    if k:
        model = model + terms @ c
    return c, y - model


def fit_star_flat(
    ds: xr.Dataset,
    *,
    order: int | None = None,
    max_order: int = 4,
    exclude_ids: ArrayLike | None = None,
    min_snr: float = 20.0,
    min_points: int = 5,
    noise_floor: float = 0.002,
    clip: float = 4.0,
    star_clip: float = 2.0,
    min_shift: float = 0.05,
    max_iter: int = 6,
) -> StarFlat:
    """An illumination correction ("star flat") from the stars' magnitudes over the night.

    Fits ``m[s, f] = m_s + z_f + P(x[s, f], y[s, f])`` to the stable stars' instrumental
    magnitudes by weighted sparse least squares (`scipy.sparse.linalg.lsqr`): ``m_s`` one per
    star, ``z_f`` one per frame (transparency, airmass), ``P`` a polynomial of degree ``order``
    in detector coordinates, 0 at the stars' median position (self-calibration, as in ubercal
    photometry). Robust: points more than ``clip`` robust deviations off the model are dropped,
    and stars whose scatter about it exceeds ``star_clip`` times the typical one (variables),
    until nothing changes. The degree, unless given, is the one of 0..``max_order`` with the
    smallest Bayesian information criterion on the clipped points.

    Assumes: the response varies smoothly across the detector (vignetting, a large-scale
    illumination gradient) and is the same in every frame; most of the stars are constant; the
    stars sample different detector positions over the night (drift, re-pointing) -- the
    correction is measured only from the differences a star shows at different positions.
    When the field barely moves (``shift_px`` below ``min_shift`` of the extent of the
    positions) ``P`` is not constrained and the result is not usable. Terms the star and frame
    offsets absorb are set to 0: under a pure translation of the field a linear gradient is
    one more per-frame zero point (it changes every star of a frame alike), harmless to
    differential photometry and not measurable. Likewise, when the field drifts along a straight
    line only, any function of the coordinate across the drift is one more per-star constant:
    lsqr's minimum-norm solution leaves it arbitrary, which changes no light curve's shape (only
    the stars' mean magnitudes). Structure smaller than the polynomial
    resolves (dust donuts, pixel-to-pixel response) is not corrected.

    Parameters
    ----------
    ds
        The light-curve Dataset (``flux``, ``flux_err``, ``x``, ``y``, ``flags``; sources with
        ``is_artefact`` are left out).
    order
        Degree of ``P``; None: chosen by the data.
    max_order
        Highest degree tried when ``order`` is None.
    exclude_ids
        ``source_id`` values left out (movers, the target, known variables).
    min_snr
        Points with ``flux / flux_err`` below this are left out.
    min_points
        Stars with fewer good points are left out.
    noise_floor
        Magnitudes added in quadrature to each point's error in the weights.
    clip, star_clip
        Outlier rejection of points (robust deviations) and of stars (times the median
        star's scatter).
    min_shift
        Least drift for a usable correction, as a fraction of the extent of the positions.
    max_iter
        Largest number of clipping rounds.

    Returns
    -------
    StarFlat
        The correction, its fit statistics, and whether it is usable (``apply`` it).
    """
    if order is not None and order < 0:
        raise ValueError(f"order must be 0 or more (or None: chosen by the data), not {order!r}")
    if max_order < 0:
        raise ValueError(f"max_order must be 0 or more, not {max_order!r}")
    flux, err, x, y, good = _star_flat_points(
        ds, exclude_ids=exclude_ids, min_snr=min_snr, min_points=min_points
    )
    empty = StarFlat(
        order=0,
        exponents=(),
        coefficients=np.zeros(0),
        centre=(np.nan, np.nan),
        half_size=(np.nan, np.nan),
        box=(np.nan,) * 4,
        shift_px=np.nan,
        usable=False,
    )
    n_stars0 = int(good.any(axis=1).sum())
    if n_stars0 < 10:
        why = f"{n_stars0} stars with {min_points}+ good points of S/N >= {min_snr:g} (10 needed)"
        return dataclasses.replace(empty, reason=why, n_stars=n_stars0)
    si, fi = np.nonzero(good)
    px, py = x[si, fi], y[si, fi]
    mag = -2.5 * np.log10(flux[si, fi])
    sig = np.hypot(2.5 / np.log(10) * err[si, fi] / flux[si, fi], noise_floor)
    shift = _field_shift(good, x, y, si, px, py)
    box = (float(px.min()), float(px.max()), float(py.min()), float(py.max()))
    half = (max((box[1] - box[0]) / 2, 1.0), max((box[3] - box[2]) / 2, 1.0))
    centre = (float(np.median(px)), float(np.median(py)))
    extent = max(box[1] - box[0], box[3] - box[2])
    base = dataclasses.replace(empty, centre=centre, half_size=half, box=box, shift_px=shift)
    if shift < min_shift * extent:
        why = (
            f"the field moved {shift:.1f} px on the detector (less than {min_shift:g} of the "
            f"{extent:.0f} px the stars span): the stars do not sample the illumination"
        )
        return dataclasses.replace(base, reason=why, n_stars=n_stars0)
    u = (px - centre[0]) / half[0]
    v = (py - centre[1]) / half[1]
    top = max_order if order is None else order
    design = _star_flat_design(si, fi, mag, sig, u, v, top)
    use, n_dropped_stars = _clip_star_flat(
        design,
        n_sources=flux.shape[0],
        min_points=min_points,
        clip=clip,
        star_clip=star_clip,
        max_iter=max_iter,
    )
    n = int(use.sum())
    chosen, bic, coef, r_after, r_before = _star_flat_order(design, use, order=order, top=top)
    s_use = si[use]
    rms_before, rms_after = _bright_star_rms(sig[use], s_use, r_before, r_after)
    n_terms = len(_poly_exponents(chosen))
    exps = design.exponents[:n_terms]
    coef = coef[:n_terms]
    p = design.cols[use][:, :n_terms] @ coef if n_terms else np.zeros(n)
    thr = 10.0 ** (-0.4 * p)
    usable = chosen > 0 and bool(design.free[:n_terms].any())
    reason = "" if usable else "the data prefer no correction (degree 0 has the smallest BIC)"
    return StarFlat(
        order=int(chosen),
        exponents=exps,
        coefficients=coef,
        centre=centre,
        half_size=half,
        box=box,
        shift_px=shift,
        usable=usable,
        reason=reason,
        n_stars=int(np.unique(s_use).size),
        n_frames=int(np.unique(fi[use]).size),
        n_points=n,
        n_stars_clipped=n_dropped_stars,
        n_points_clipped=int(si.size - n),
        rms_before_mag=rms_before,
        rms_after_mag=rms_after,
        throughput_range=(float(thr.min()), float(thr.max())),
        criterion=bic if order is None else {},
    )


def _star_flat_points(
    ds: xr.Dataset, *, exclude_ids: ArrayLike | None, min_snr: float, min_points: int
) -> tuple[NDArray, NDArray, NDArray, NDArray, NDArray[np.bool_]]:
    """``flux``, ``flux_err``, ``x``, ``y`` (source x frame) and the points the star flat may
    use: usable, unflagged, at ``min_snr`` or more, of stars kept with ``min_points`` or more."""
    flux = ds["flux"].to_numpy().astype(float)
    err = ds["flux_err"].to_numpy().astype(float)
    x = ds["x"].to_numpy().astype(float)
    y = ds["y"].to_numpy().astype(float)
    flags = ds["flags"].to_numpy()
    good = _usable(ds) & np.isfinite(x) & np.isfinite(y)
    good &= (flags & int(BAD_FOR_FLUX | LightCurveFlag.NEAR_MOVER)) == 0
    with np.errstate(all="ignore"):
        good &= flux / err >= min_snr
    keep_star = np.ones(flux.shape[0], bool)
    if "is_artefact" in ds:
        keep_star &= ~ds["is_artefact"].to_numpy().astype(bool)
    if exclude_ids is not None:
        keep_star &= ~np.isin(ds["source_id"].to_numpy(), np.asarray(exclude_ids, np.int64))
    good &= keep_star[:, None]
    good &= (good.sum(axis=1) >= min_points)[:, None]
    return flux, err, x, y, good


def _field_shift(
    good: NDArray[np.bool_], x: NDArray, y: NDArray, si: NDArray, px: NDArray, py: NDArray
) -> float:
    """How far the field moved on the detector: the median over the stars of the 90th
    percentile of a star's distance from its median position."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mx = np.nanmedian(np.where(good, x, np.nan), axis=1)
        my = np.nanmedian(np.where(good, y, np.nan), axis=1)
    dist = np.hypot(px - mx[si], py - my[si])
    per_star = pd.Series(dist).groupby(si).quantile(0.9)
    return float(np.median(per_star.to_numpy()))


@dataclass(frozen=True)
class _StarFlatDesign:
    """The star flat's least-squares problem: each point's star and frame (``si``, ``fi``),
    magnitude, error ``sig`` and weight ``w0``; the polynomial terms' columns and exponents
    (degree ``top``); which terms the star and frame offsets do not absorb (``free``)."""

    si: NDArray
    fi: NDArray
    mag: NDArray
    sig: NDArray
    w0: NDArray
    cols: NDArray
    exponents: tuple[tuple[int, int], ...]
    free: NDArray[np.bool_]

    def fit(self, sel: NDArray[np.bool_], n_terms: int) -> tuple[NDArray, NDArray]:
        """Coefficients of all terms (0 for the first ``n_terms`` not free and the rest) and the
        residuals of the points ``sel``."""
        si, fi = self.si, self.fi
        # the points' own star/frame numbering, so that dropped stars leave no empty column
        s_idx = np.unique(si[sel], return_inverse=True)[1]
        f_idx = np.unique(fi[sel], return_inverse=True)[1]
        t_sel = self.free.copy()
        t_sel[n_terms:] = False
        coef = np.zeros(len(self.exponents))
        c, r = _two_way_fit(s_idx, f_idx, self.w0[sel], self.mag[sel], self.cols[sel][:, t_sel])
        coef[t_sel] = c
        return coef, r


def _star_flat_design(
    si: NDArray, fi: NDArray, mag: NDArray, sig: NDArray, u: NDArray, v: NDArray, top: int
) -> _StarFlatDesign:
    """The polynomial's columns up to degree ``top`` at the scaled positions ``u``, ``v``, and
    the terms the star and frame offsets absorb (a gradient under a pure translation)."""
    exps_all = _poly_exponents(top)
    cols = np.zeros((u.size, len(exps_all)))
    for t, (i, j) in enumerate(exps_all):
        cols[:, t] = u**i * v**j
    # terms the star and frame offsets absorb (a gradient under a pure translation)
    w0 = 1.0 / sig
    free = np.ones(len(exps_all), bool)
    for t in range(len(exps_all)):
        c = cols[:, t]
        _, resid = _two_way_fit(si, fi, w0, c, np.zeros((c.size, 0)))
        spread = np.average((c - np.average(c, weights=w0**2)) ** 2, weights=w0**2)
        free[t] = np.average(resid**2, weights=w0**2) > 1e-3 * spread
    return _StarFlatDesign(si, fi, mag, sig, w0, cols, exps_all, free)


def _clip_star_flat(
    design: _StarFlatDesign,
    *,
    n_sources: int,
    min_points: int,
    clip: float,
    star_clip: float,
    max_iter: int,
) -> tuple[NDArray[np.bool_], int]:
    """The points kept after clipping outlying points and scattered stars (with all the terms)
    until nothing changes, and the number of stars dropped for their scatter."""
    si, sig = design.si, design.sig
    use = np.ones(si.size, bool)
    n_dropped_stars = 0
    n_top = len(design.exponents)
    for _ in range(max_iter):
        _, r = design.fit(use, n_top)
        z = r / sig[use]
        scale = max(float(robust_std(z)), 1e-6)
        bad_point = np.zeros(si.size, bool)
        bad_point[np.flatnonzero(use)[np.abs(z) > clip * scale]] = True
        star_scatter = pd.Series(z).groupby(si[use]).agg(lambda a: float(robust_std(a)))
        typical = float(np.median(star_scatter.to_numpy()))
        bad_star = star_scatter.index[star_scatter.to_numpy() > star_clip * typical].to_numpy()
        new = use & ~bad_point & ~np.isin(si, bad_star)
        counts = np.bincount(si[new], minlength=n_sources)
        new &= counts[si] >= min_points
        if np.array_equal(new, use):
            break
        n_dropped_stars += int(np.unique(si[use & ~new & np.isin(si, bad_star)]).size)
        use = new
    return use, n_dropped_stars


def _star_flat_order(
    design: _StarFlatDesign, use: NDArray[np.bool_], *, order: int | None, top: int
) -> tuple[int, dict[int, float], NDArray, NDArray, NDArray]:
    """The degree (``order``, or the one of 0..``top`` with the smallest BIC), the BIC of each
    degree tried, the chosen fit's coefficients and residuals, and degree 0's residuals."""
    si, fi, sig, free = design.si, design.fi, design.sig, design.free
    fit = design.fit
    n = int(use.sum())
    orders = [top] if order is not None else list(range(0, top + 1))
    bic: dict[int, float] = {}
    fits: dict[int, tuple[NDArray, NDArray]] = {}
    for o in orders:
        n_terms = len(_poly_exponents(o))
        coef, r = fit(use, n_terms)
        chi2 = float(np.sum((r / sig[use]) ** 2))
        k = np.unique(si[use]).size + np.unique(fi[use]).size + int(free[:n_terms].sum())
        bic[o] = n * np.log(chi2 / n) + k * np.log(n)
        fits[o] = (coef, r)
    chosen = order if order is not None else min(bic, key=bic.get)
    coef, r_after = fits[chosen] if chosen in fits else fit(use, len(_poly_exponents(chosen)))
    _, r_before = fits[0] if 0 in fits else fit(use, 0)
    return chosen, bic, coef, r_after, r_before


def _bright_star_rms(
    sig_use: NDArray, s_use: NDArray, r_before: NDArray, r_after: NDArray
) -> tuple[float, float]:
    """Median over the bright stars (median error below 1%, where the flat shows above the
    noise; all stars when fewer than 5) of each star's RMS residual before and after."""
    n = s_use.size
    # the bright stars (median error below 1%), where the flat shows above the noise
    star_err = pd.Series(sig_use).groupby(s_use).median()
    bright = star_err.index[star_err.to_numpy() < 0.01].to_numpy()
    judged = np.isin(s_use, bright) if bright.size >= 5 else np.ones(n, bool)
    rms_before = float(
        np.median(pd.Series(r_before[judged] ** 2).groupby(s_use[judged]).mean() ** 0.5)
    )
    rms_after = float(
        np.median(pd.Series(r_after[judged] ** 2).groupby(s_use[judged]).mean() ** 0.5)
    )
    return rms_before, rms_after
