"""The light-curve stage: matching, tracks, artefacts, the target, forced photometry, the star
flat and the ensemble; ``lightcurves.zarr`` and ``sources.parquet``."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS

from lcdask.classify import classify_sources, find_artefacts, flag_near_movers, link_tracks
from lcdask.gain import noise_model_check
from lcdask.io import cube as cube_io
from lcdask.io.atomic import atomic_path
from lcdask.lightcurves import (
    LightCurveFlag,
    apply_ensemble,
    build_lightcurves,
    ensemble_photometry,
    fit_star_flat,
    insert_forced,
)
from lcdask.match import match_detections
from lcdask.photometry import flux_method
from lcdask.psf import PSFModel
from lcdask.report import warm_workers
from lcdask.stages.context import RunContext
from lcdask.stages.forced import forced_photometry
from lcdask.target_photometry import (
    apply_target_photometry,
    choose_target_photometry,
    comparison_candidates,
)
from lcdask.targets import (
    TargetLocation,
    add_target_source,
    clear_unmeasured_positions,
    locate_target,
)

__all__ = ["run_lightcurves"]

log = logging.getLogger("lcdask")

FORCED = int(LightCurveFlag.FORCED)


def run_lightcurves(ctx: RunContext) -> dict:
    """Sources from every solved frame's detections, classified; the target found and marked."""
    config, out, client, target_radec = ctx.config, ctx.out, ctx.client, ctx.target
    if client is not None:
        # the workers wait while this process matches and classifies: they load matplotlib
        # now, for the report's figures (a second of each worker's first figure)
        warm_workers(client)
    detections = pd.read_parquet(out / "detections.parquet")
    frames = pd.read_parquet(out / "frames.parquet")
    frames = frames[frames["astrometry_status"] == "ok"].rename(
        columns={"astrometry_rms_arcsec": "rms_arcsec"}
    )
    detections = detections[detections["frame"].isin(frames["frame"])]
    # hot pixels and other detector-fixed sources: kept out of the matching and linking
    artefacts = find_artefacts(detections)
    real = detections[~artefacts.is_artefact]
    match = match_detections(real, frames)
    tracks = link_tracks(
        real,
        match.source_id,
        centre=match.centre,
        max_rate_arcsec_h=config.lightcurves.max_rate_arcsec_h,
    )
    detections, source_id, artefact_ids = artefacts.apply(detections, tracks.source_id)
    if artefacts.n_artefacts:
        log.info(
            "%d detector artefacts (hot pixels, columns: %d detections fixed on the detector "
            "while the field moved %.0f px)",
            artefacts.n_artefacts,
            int(artefacts.is_artefact.sum()),
            artefacts.field_shift_px,
        )
    ds = build_lightcurves(detections, source_id, frames)
    ds["is_artefact"] = ("source", np.isin(ds["source_id"].to_numpy(), artefact_ids))
    located, added = None, None
    if target_radec is not None:
        located = _locate_target(ctx, ds[["ra", "dec"]].where(~ds["is_artefact"]), frames)
        if located.how == "forced":
            ds, added = add_target_source(ds, *target_radec)
    target_id = located.source_id if located is not None and located.found else None
    first = classify_sources(ds)  # movers (not forced) and artefacts
    forced = {"forced": "off ([lightcurves] forced = false)"}
    if config.lightcurves.forced:
        ds, forced = _forced_photometry(ctx, ds, detections, frames, first, added)
    if added is not None:
        ds = clear_unmeasured_positions(ds, added)
        located = _forced_target(ctx, ds, located, added)
        target_id = located.source_id if located.found else None
    not_comparison = first.loc[first["kind"] == "moving", "source_id"].to_numpy()
    if target_id is not None:
        not_comparison = np.append(not_comparison, target_id)
    ds, star_flat = _star_flat(ctx, ds, not_comparison)
    ensemble = ensemble_photometry(ds, exclude_ids=not_comparison)
    if ensemble.note:
        ctx.note(f"ensemble: {ensemble.note}")
    ds = apply_ensemble(ds, ensemble)
    target_photometry = None
    if target_id is not None:
        ds, target_photometry = _target_photometry(
            ctx, ds, target_id, np.concatenate([not_comparison, ensemble.rejected_ids])
        )
    sources = classify_sources(ds)
    if target_id is not None:
        sources = _mark_target(sources, target_id, target_radec)
    ds = flag_near_movers(ds, sources)
    if located is not None:
        ctx.record["target"] = {
            **ctx.record["target"],
            **located.as_record(),
            "message": located.message(),
        }
        (log.info if located.found else log.warning)("%s", located.message())
    _write_dataset(out / "lightcurves.zarr", ds)
    with atomic_path(out / "sources.parquet") as tmp:
        sources.to_parquet(tmp, index=False)
    kinds = sources["kind"].value_counts().to_dict()
    return {
        "n_sources": len(sources),
        "kinds": kinds,
        "n_target": int(sources["is_target"].sum()),
        "n_artefacts": int(artefacts.n_artefacts),
        "n_artefact_detections": int(artefacts.is_artefact.sum()),
        "field_shift_px": round(float(artefacts.field_shift_px), 1),
        "n_comparison": int(ensemble.comparison_ids.size),
        "comparison_criteria": ensemble.criteria,
        "ensemble_note": ensemble.note,
        "star_flat": star_flat,
        "dip_search": sources.attrs.get("dip_search", {}),
        "noise_model": noise_model_check(ds, sources),
        **forced,
        **({} if target_photometry is None else {"target_photometry": target_photometry}),
    }


def _target_photometry(
    ctx: RunContext, ds: xr.Dataset, target_id: int, exclude: np.ndarray
) -> tuple[xr.Dataset, dict]:
    """[lightcurves] target_photometry: the target's aperture and comparison stars chosen on the
    data (`lcdask.target_photometry`), written into ``ds``; the record for run.json."""
    if not ctx.config.lightcurves.target_photometry:
        return ds, {"adopted": False, "why": "off ([lightcurves] target_photometry = false)"}
    candidates = comparison_candidates(ds, target_id, exclude_ids=exclude)
    try:
        result = choose_target_photometry(ds, target_id, candidates=candidates)
    except ValueError as exc:  # nothing could be scored: the run-wide relative flux stays
        log.info("target photometry: the run-wide relative flux kept (%s)", exc)
        return ds, {"adopted": False, "why": str(exc)}
    record = result.as_record()
    if result.adopted:
        log.info(
            "target photometry: aperture %d (%g %s), %d comparison stars %s; scatter %.3f%% "
            "(the run-wide %.3f%%), judged on the frames not chosen on %.3f%% (%.3f%%)",
            result.aperture,
            result.aperture_radius,
            result.aperture_unit,
            result.comparison_ids.size,
            result.comparison_ids.tolist(),
            100 * result.scatter_chosen,
            100 * result.scatter_default,
            record["cv"]["judged_chosen_pct"],
            record["cv"]["judged_default_pct"],
        )
    else:
        log.info("target photometry: %s", result.why)
    if result.outlier.any():
        log.info(
            "target photometry: %d outliers flagged OUTLIER (frames %s)",
            int(result.outlier.sum()),
            ds["frame"].to_numpy()[result.outlier].tolist(),
        )
    return apply_target_photometry(ds, result), record


def _star_flat(ctx: RunContext, ds: xr.Dataset, exclude) -> tuple[xr.Dataset, dict]:
    """[lightcurves] star_flat: an illumination correction from the stars (no master flat)."""
    mode = ctx.config.lightcurves.star_flat
    if mode == "off":
        return ds, {"applied": False, "why": 'off ([lightcurves] star_flat = "off")'}
    cube = cube_io.open_cube(ctx.cube_path)
    lights = cube["frame"].isin(ds["frame"].to_numpy())
    filters = {str(f) for f in cube["filter"].values[lights.to_numpy()]}
    flats = {str(f) for f in cube["flat_filter"].values} if "master_flat" in cube else set()
    if mode == "auto" and filters <= flats:
        return ds, {"applied": False, "why": "the lights were flat-fielded"}
    fit = fit_star_flat(ds, exclude_ids=exclude)
    info = {"applied": fit.usable, "flat_fielded": filters <= flats, **fit.as_record()}
    if not fit.usable:
        log.info("star flat not applied: %s", fit.reason)
        return ds, info
    log.info(
        "star flat (%s): degree %d from %d stars (%d points); throughput %.3f-%.3f; "
        "stable stars' rms %.4f -> %.4f mag",
        "lights flat-fielded" if filters <= flats else "no master flat",
        fit.order,
        fit.n_stars,
        fit.n_points,
        *fit.throughput_range,
        fit.rms_before_mag,
        fit.rms_after_mag,
    )
    return fit.apply(ds), info


def _locate_target(ctx: RunContext, ds: xr.Dataset, frames: pd.DataFrame) -> TargetLocation:
    with warnings.catch_warnings():  # artefacts' positions are NaN: "All-NaN slice"
        warnings.simplefilter("ignore", RuntimeWarning)
        median = pd.DataFrame(
            {
                "source_id": ds["source_id"].to_numpy(),
                "ra": np.nanmedian(ds["ra"].to_numpy(), axis=1),
                "dec": np.nanmedian(ds["dec"].to_numpy(), axis=1),
            }
        )
    absolute = ctx.stage_record("level2").get("sky_positions", "absolute") == "absolute"
    return locate_target(
        median,
        frames,
        *ctx.target,
        shape=_frame_shape(ctx.cube_path),
        radius_arcsec=_target_radius_arcsec(frames),
        absolute=absolute,
        absolute_why=(
            "the frames are aligned to each other by a nominal tangent plane, with no "
            "absolute plate solution (no catalog, no header WCS, no blind solve)"
        ),
    )


def _forced_target(
    ctx: RunContext, ds: xr.Dataset, located: TargetLocation, sid: int
) -> TargetLocation:
    index = int(np.flatnonzero(ds["source_id"].to_numpy() == sid)[0])
    n = int(((ds["flags"].to_numpy()[index] & FORCED) != 0).sum())
    if n:
        return dataclasses.replace(located, source_id=sid)
    config = ctx.config
    why = (
        "not detected, and forced photometry is off"
        if not config.lightcurves.forced or not flux_method(config.level2.flux).measured
        else "not detected, and forced photometry measured it in no frame"
    )
    return dataclasses.replace(located, found=False, how="", separation_arcsec=np.nan, why=why)


def _forced_photometry(
    ctx: RunContext, ds, detections, frames, first, added=None
) -> tuple[xr.Dataset, dict]:
    # movers and artefacts are not forced (lcdask.stages.forced): from a first classification
    config = ctx.config
    movers = first.query("kind == 'moving' or kind == 'artefact'")["source_id"]
    psf_path = ctx.out / "psf.fits"
    psf = None
    if psf_path.exists() and flux_method(config.level2.flux).measured:
        with fits.open(psf_path) as hdus:
            psf = PSFModel.from_hdu(hdus["EPSF"])
    cube = cube_io.open_cube(ctx.cube_path)
    forced, summary = forced_photometry(
        ds,
        detections,
        frames,
        ctx.cube_path,
        shape=(cube.sizes["y"], cube.sizes["x"]),
        psf=psf,
        skip_ids=movers,
        min_detections=config.lightcurves.forced_min_detections,
        force_ids=[] if added is None else [added],
        client=ctx.client,
        config=config.level2,
    )
    log.info(
        "forced photometry: %d of %d missing entries measured (%s)",
        summary["n_forced"],
        summary["n_missing"],
        ", ".join(f"{k} {v}" for k, v in summary.items() if k not in ("n_forced", "n_missing")),
    )
    return insert_forced(ds, forced), {"forced": summary}


def _mark_target(sources: pd.DataFrame, source_id: int, radec: tuple[float, float]) -> pd.DataFrame:
    """``is_target`` on the target's source; a forced one (no detected position) at the target."""
    sources = sources.copy()
    row = sources["source_id"].to_numpy() == source_id
    sources.loc[row, "is_target"] = True
    unplaced = row & ~np.isfinite(sources["ra"].to_numpy(float))
    sources.loc[unplaced, ["ra", "dec"]] = radec
    return sources


def _frame_shape(cube_path: Path) -> tuple[int, int]:
    cube = cube_io.open_cube(cube_path)
    return cube.sizes["y"], cube.sizes["x"]


def _target_radius_arcsec(frames: pd.DataFrame) -> float:
    """How far from its given position the target's source may lie: 3", or 0.6 FWHM.

    0.6 FWHM where that is larger (undersampled small telescopes: 0.6 x 2 px x 5"/px = 6"),
    well inside the distance at which two stars are told apart.
    """
    scales = []
    for text in frames["wcs_solved"].to_numpy()[:20]:
        if text:
            wcs = WCS(fits.Header.fromstring(str(text)))
            scales.append(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600)
    fwhm = float(np.nanmedian(frames["fwhm_px"].to_numpy(float))) if len(frames) else np.nan
    if not scales or not np.isfinite(fwhm):
        return 3.0
    return max(3.0, 0.6 * fwhm * float(np.median(scales)))


def _write_dataset(path: Path, ds: xr.Dataset) -> None:
    with atomic_path(path) as tmp:
        ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False)
        cube_io.consolidate(tmp)
