"""The whole run: every stage in order, each product written atomically, resumable.

`run` is the orchestrating layer of DESIGN.md: it computes and writes, the stage modules stay
pure. Stages and their products:

=============  =================================================================================
ingest         ``cube.zarr`` (raw frames and their metadata)
calibrate      masters, bad-pixel maps, ``calibrated`` and ``pixel_flags`` in the cube
level2         per-frame detection, plate solution, co-add (``coadd.fits``) and its ePSF
               (``psf.fits``), Level 3 photometry, zero point: ``frames.parquet``,
               ``detections.parquet``, per-frame results as variables on ``frame`` in the cube
lightcurves    DBSCAN matching, tracks of fast movers, forced photometry of the missing entries
               (`lcdask.forced`, one task per frame), ``lightcurves.zarr`` with ensemble
               relative fluxes, ``sources.parquet`` (classes, motions, target)
report         ``report.html`` (bokeh) and ``plots/`` (PNG)
=============  =================================================================================

``run.json`` records the configuration, package versions, the inputs' fingerprint, and per stage
its status, timing and counts, plus every skipped or flagged frame with its reason. A rerun skips
each stage recorded complete whose products exist and whose inputs are unchanged; a stage that
must run again invalidates those after it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS

from lcdask import __version__
from lcdask.astrometry import AstrometryConfig, header_pixel_scale
from lcdask.catalogs import frames_query_circle, reference_catalog, resolve_band
from lcdask.classify import classify_sources, find_artefacts, flag_near_movers, link_tracks
from lcdask.config import Config
from lcdask.flags import LEVEL2_FLAGS, FrameFlag
from lcdask.forced import forced_photometry
from lcdask.ingest import NotAppendable, ingest
from lcdask.ingest import append as ingest_append
from lcdask.io import cube as cube_io
from lcdask.io.atomic import atomic_path, write_json_atomic
from lcdask.io.discover import discover_frames
from lcdask.io.headers import header_wcs
from lcdask.level2 import NO_CATALOG_MESSAGE, Level2Start, run_level2
from lcdask.lightcurves import (
    LightCurveFlag,
    apply_ensemble,
    build_lightcurves,
    ensemble_photometry,
    fit_star_flat,
    insert_forced,
)
from lcdask.match import match_detections
from lcdask.pipeline import calibrate_cube
from lcdask.psf import PSFModel
from lcdask.report import warm_workers, write_run_report
from lcdask.targets import (
    TargetLocation,
    add_target_source,
    clear_unmeasured_positions,
    locate_target,
    resolve_target,
)

__all__ = ["STAGES", "read_run_record", "run"]

log = logging.getLogger("lcdask")

STAGES = ("ingest", "calibrate", "level2", "lightcurves", "report")

_VERSIONED = ("numpy", "dask", "distributed", "xarray", "zarr", "astropy", "photutils", "sep")


def read_run_record(out: str | Path) -> dict[str, Any]:
    """The run's ``run.json``, or an empty record when there is none (or it is unreadable)."""
    path = Path(out) / "run.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _fingerprint(paths: Iterable[Path]) -> str:
    """Hash of the input files' names, sizes and modification times."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    versions = {"lcdask": __version__}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


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
        cache_dir=_catalog_cache(config, out),
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


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration as compared between runs: where the work ran ([cluster]) does not count."""
    settings = json.loads(json.dumps(config, default=str))
    settings.pop("cluster", None)
    return settings


def _catalog_cache(config: Config, out: Path) -> Path:
    """Where this run caches online answers (catalog queries, SIMBAD names)."""
    return Path(config.catalog.cache_dir) if config.catalog.cache_dir else out / "catalog-cache"


class _Record:
    """run.json, kept in memory and written atomically after every stage."""

    def __init__(self, out: Path, config: Config, fingerprint: str, inputs: list[str]) -> None:
        self.out = out
        previous = read_run_record(out)
        settings = _comparable(config.as_dict())
        same = (
            previous.get("fingerprint") == fingerprint
            and _comparable(previous.get("config", {})) == settings
        )
        self.previous_stages = previous.get("stages", {}) if same else {}
        self.data: dict[str, Any] = {
            "lcdask_version": __version__,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": config.as_dict(),
            "versions": _versions(),
            "inputs": inputs,
            "fingerprint": fingerprint,
            "stages": {},
            "skipped": [],
            "flagged": [],
            "notes": [],
        }
        self.invalidated = False

    def done(self, stage: str, products: list[str]) -> bool:
        """Whether a stage can be skipped: complete before, products there, nothing redone above."""
        entry = self.previous_stages.get(stage, {})
        ok = (
            not self.invalidated
            and entry.get("status") == "complete"
            and all((self.out / p).exists() for p in products)
        )
        if ok:
            self.data["stages"][stage] = {**entry, "reused": True}
        else:
            self.invalidated = True
        return ok

    def complete(self, stage: str, seconds: float, **info: Any) -> None:
        self.data["stages"][stage] = {"status": "complete", "seconds": round(seconds, 3), **info}
        self.write()

    def write(self) -> None:
        write_json_atomic(self.out / "run.json", self.data)


def _stage(record: _Record, name: str, products: list[str], body: Callable[[], dict]) -> None:
    if record.done(name, products):
        log.info("%s: complete from an earlier run, reused", name)
        return
    log.info("%s ...", name)
    start = time.perf_counter()
    info = body() or {}
    record.complete(name, time.perf_counter() - start, **info)


def run(
    inputs: str | Path | Iterable[str | Path],
    out: str | Path,
    *,
    config: Config | None = None,
    catalog: str | Path | None = None,
    target: str | tuple[float, float] | None = None,
    client=None,
) -> dict[str, Any]:
    """Run every stage on raw frames and write every product into ``out``.

    Parameters
    ----------
    inputs : str, Path or iterable of them
        Folders, globs, FITS files or list files.
    out : str or Path
        The run directory.
    config : lcdask.config.Config, optional
        Defaults when None.
    catalog : str or Path, optional
        A reference catalog file (overrides ``config.catalog.path``).
    target : str or (ra, dec), optional
        The target: its position, degrees or sexagesimal ("RA DEC"), or a name that SIMBAD
        resolves (`lcdask.targets.resolve_target`: once, before the run starts, cached in the
        catalog cache; offline from the cache only). ``run.json`` records the position used
        and where it came from (``given``, ``simbad`` or ``cache``).
    client : distributed.Client, optional
        Cluster to spread the work over; serial in this process when None.

    Returns
    -------
    dict
        The run record written to ``run.json``.
    """
    config = config or Config()
    out = Path(out)
    resolved = None
    if target is not None:  # a name goes to SIMBAD here, once, before any work
        resolved = resolve_target(
            target, cache_dir=_catalog_cache(config, out), offline=config.catalog.offline
        )
        log.info("target at %.6f %+.6f (%s)", resolved.ra, resolved.dec, resolved.source)
    out.mkdir(parents=True, exist_ok=True)
    paths = discover_frames(inputs)
    previous = read_run_record(out)
    record = _Record(out, config, _fingerprint(paths), [str(p) for p in paths])
    record.data["files"] = _file_stats(paths)
    record.data["target"] = resolved.as_record() if resolved is not None else None
    if _target_key(previous.get("target")) != _target_key(record.data["target"]):
        for stage in ("lightcurves", "report"):  # the target is found, and shown, again
            record.previous_stages.pop(stage, None)
    target_radec = (resolved.ra, resolved.dec) if resolved is not None else None
    cube_path = out / "cube.zarr"
    appended = False
    new = _new_inputs(previous, record)
    if new:
        try:
            _append(record, previous, new, client=client, config=config)
            appended = True
        except NotAppendable as exc:
            log.warning("%d new file(s): %s; every stage is done again", len(new), exc)
            record.data["stages"] = {}

    def do_ingest() -> dict:
        result = ingest(paths, out, client=client, overwrite=True)
        return {"counts": result.counts, "n_frames": result.n_frames}

    if not appended:
        _stage(record, "ingest", ["cube.zarr"], do_ingest)
    cube = cube_io.open_cube(cube_path)
    record.data["skipped"] = json.loads(cube.attrs.get("skipped", "[]"))
    record.data["typed"] = json.loads(cube.attrs.get("typed", "[]"))

    def do_calibrate() -> dict:
        summary = calibrate_cube(cube_path, client=client, config=config.calibration)
        keys = ("dark_strategy", "n_hot_pixels", "n_dead_pixels", "n_bad_columns", "notes")
        return {k: summary[k] for k in keys} | {"rejected": summary["rejected"]}

    if not appended:
        _stage(record, "calibrate", ["cube.zarr"], do_calibrate)

    def do_level2() -> dict:
        cube = cube_io.open_cube(cube_path)
        level2, band_why = _level2_config(config, cube, None)
        table, source = _reference_catalog(config, catalog, cube, out, level2.band)
        if table is None:  # (the reason is logged once)
            record.data["notes"].append(f"{source}: no photometric calibration")
        level2, band_why = _level2_config(config, cube, table)
        log.info("zero points in %s", band_why)
        result = run_level2(
            cube,
            cube_path,
            table,
            client=client,
            config=level2,
            astrometry=_astrometry(config),
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

    if not appended:
        _stage(record, "level2", ["frames.parquet", "detections.parquet"], do_level2)

    def do_lightcurves() -> dict:
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
            located = _locate_target(ds[["ra", "dec"]].where(~ds["is_artefact"]), frames)
            if located.how == "forced":
                ds, added = add_target_source(ds, *target_radec)
        target_id = located.source_id if located is not None and located.found else None
        first = classify_sources(ds)  # movers (not forced) and artefacts
        forced = {"forced": "off ([lightcurves] forced = false)"}
        if config.lightcurves.forced:
            ds, forced = _forced_photometry(ds, detections, frames, first, added)
        if added is not None:
            ds = clear_unmeasured_positions(ds, added)
            located = _forced_target(ds, located, added)
            target_id = located.source_id if located.found else None
        not_comparison = first.loc[first["kind"] == "moving", "source_id"].to_numpy()
        if target_id is not None:
            not_comparison = np.append(not_comparison, target_id)
        ds, star_flat = _star_flat(ds, not_comparison)
        ensemble = ensemble_photometry(ds, exclude_ids=not_comparison)
        if ensemble.note:
            record.data["notes"].append(f"ensemble: {ensemble.note}")
        ds = apply_ensemble(ds, ensemble)
        sources = classify_sources(ds)
        if target_id is not None:
            sources = _mark_target(sources, target_id, target_radec)
        ds = flag_near_movers(ds, sources)
        if located is not None:
            record.data["target"] = {
                **record.data["target"],
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
            **forced,
        }

    def _star_flat(ds: xr.Dataset, exclude) -> tuple[xr.Dataset, dict]:
        # [lightcurves] star_flat: an illumination correction from the stars (no master flat)
        mode = config.lightcurves.star_flat
        if mode == "off":
            return ds, {"applied": False, "why": 'off ([lightcurves] star_flat = "off")'}
        cube = cube_io.open_cube(cube_path)
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

    def _locate_target(ds, frames) -> TargetLocation:
        with warnings.catch_warnings():  # artefacts' positions are NaN: "All-NaN slice"
            warnings.simplefilter("ignore", RuntimeWarning)
            median = pd.DataFrame(
                {
                    "source_id": ds["source_id"].to_numpy(),
                    "ra": np.nanmedian(ds["ra"].to_numpy(), axis=1),
                    "dec": np.nanmedian(ds["dec"].to_numpy(), axis=1),
                }
            )
        level2 = record.data["stages"].get("level2", {})
        absolute = level2.get("sky_positions", "absolute") == "absolute"
        return locate_target(
            median,
            frames,
            *target_radec,
            shape=_frame_shape(cube_path),
            radius_arcsec=_target_radius_arcsec(frames),
            absolute=absolute,
            absolute_why=(
                "the frames are aligned to each other by a nominal tangent plane, with no "
                "absolute plate solution (no catalog, no header WCS, no blind solve)"
            ),
        )

    def _forced_target(ds, located: TargetLocation, sid: int) -> TargetLocation:
        index = int(np.flatnonzero(ds["source_id"].to_numpy() == sid)[0])
        n = int(((ds["flags"].to_numpy()[index] & FORCED) != 0).sum())
        if n:
            return dataclasses.replace(located, source_id=sid)
        why = (
            "not detected, and forced photometry is off"
            if not config.lightcurves.forced or config.level2.flux == "detection"
            else "not detected, and forced photometry measured it in no frame"
        )
        return dataclasses.replace(located, found=False, how="", separation_arcsec=np.nan, why=why)

    def _forced_photometry(ds, detections, frames, first, added=None) -> tuple[xr.Dataset, dict]:
        # movers and artefacts are not forced (lcdask.forced): from a first classification
        movers = first.query("kind == 'moving' or kind == 'artefact'")["source_id"]
        psf_path = out / "psf.fits"
        psf = None
        if psf_path.exists() and config.level2.flux != "detection":
            with fits.open(psf_path) as hdus:
                psf = PSFModel.from_hdu(hdus["EPSF"])
        cube = cube_io.open_cube(cube_path)
        forced, summary = forced_photometry(
            ds,
            detections,
            frames,
            cube_path,
            shape=(cube.sizes["y"], cube.sizes["x"]),
            psf=psf,
            skip_ids=movers,
            min_detections=config.lightcurves.forced_min_detections,
            force_ids=[] if added is None else [added],
            client=client,
            config=config.level2,
        )
        log.info(
            "forced photometry: %d of %d missing entries measured (%s)",
            summary["n_forced"],
            summary["n_missing"],
            ", ".join(f"{k} {v}" for k, v in summary.items() if k not in ("n_forced", "n_missing")),
        )
        return insert_forced(ds, forced), {"forced": summary}

    _stage(record, "lightcurves", ["lightcurves.zarr", "sources.parquet"], do_lightcurves)

    def do_report() -> dict:
        page, plots = write_run_report(out, client=client)
        return {"report": str(page), "plots": [str(p) for p in plots]}

    _stage(record, "report", ["report.html", "plots"], do_report)

    cube = cube_io.open_cube(cube_path)
    paths, reasons = cube["path"].values, cube["flag_reason"].values
    record.data["flagged"] = [
        {"frame": int(i), "path": str(paths[i]), "reason": str(reasons[i])}
        for i in np.flatnonzero(cube["flags"].values)
    ]
    record.data["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    record.write()
    return record.data


FORCED = int(LightCurveFlag.FORCED)


def _mark_target(sources: pd.DataFrame, source_id: int, radec: tuple[float, float]) -> pd.DataFrame:
    """``is_target`` on the target's source; a forced one (no detected position) at the target."""
    sources = sources.copy()
    row = sources["source_id"].to_numpy() == source_id
    sources.loc[row, "is_target"] = True
    unplaced = row & ~np.isfinite(sources["ra"].to_numpy(float))
    sources.loc[unplaced, ["ra", "dec"]] = radec
    return sources


def _target_key(target: dict[str, Any] | None) -> tuple[float, float] | None:
    if not target:
        return None
    return round(float(target["ra"]), 9), round(float(target["dec"]), 9)


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


def _file_stats(paths: Iterable[Path]) -> dict[str, list[int]]:
    """Each input's size and modification time (ns), to tell new inputs from changed ones."""
    stats = {}
    for path in paths:
        stat = path.stat()
        stats[str(path)] = [stat.st_size, stat.st_mtime_ns]
    return stats


def _new_inputs(previous: dict[str, Any], record: _Record) -> list[Path]:
    """Inputs added since a complete earlier run whose inputs are all unchanged, else [].

    Only then can the new frames be appended (`_append`); anything else (a changed or removed
    file, another configuration, an unfinished run) is a run made again, stage by stage.
    """
    before, now = previous.get("files") or {}, record.data["files"]
    stages = previous.get("stages", {})
    complete = all(stages.get(s, {}).get("status") == "complete" for s in STAGES)
    same_config = _comparable(previous.get("config", {})) == _comparable(record.data["config"])
    if not (before and complete and same_config):
        return []
    if any(now.get(path) != stat for path, stat in before.items()):
        return []
    return [Path(p) for p in now if p not in before]


def _astrometry(config: Config) -> AstrometryConfig:
    """``[astrometry]``, offline also when the catalog is (``catalog.offline``)."""
    offline = config.astrometry.offline or config.catalog.offline
    return dataclasses.replace(config.astrometry, offline=offline)


def _append(
    record: _Record, previous: dict[str, Any], new: list[Path], *, client, config: Config
) -> None:
    """Ingest, calibrate and measure frames added to a finished run, alone, and merge them.

    The cube grows in place (`lcdask.ingest.append`), so the record says ``appending`` until
    the three stages are done: a run interrupted here is made again from scratch next time.
    The earlier masters, catalog, ePSF and co-add are kept; light curves and report are then
    made again over every frame.

    Raises
    ------
    lcdask.ingest.NotAppendable
        Before anything changes, when the new frames cannot simply be appended.
    """
    out = record.out
    cube_path = out / "cube.zarr"
    record.data["notes"] = list(previous.get("notes", []))
    record.data["stages"]["ingest"] = {"status": "appending", "new_files": [str(p) for p in new]}
    record.write()
    log.info("ingest: appending %d new file(s) to the run", len(new))
    start = time.perf_counter()
    result = ingest_append(new, out, client=client)
    n_new = sum(result.counts.values())
    indices = list(range(result.n_frames - n_new, result.n_frames))
    before = previous["stages"]
    counts = dict(before["ingest"].get("counts", {}))
    for kind, n in result.counts.items():
        counts[kind] = counts.get(kind, 0) + n
    stamp = {"appended": n_new}
    seconds = {"ingest": time.perf_counter() - start}

    log.info("calibrate: %d new frame(s)", n_new)
    start = time.perf_counter()
    calibrate_cube(cube_path, client=client, config=config.calibration, frames=indices)
    seconds["calibrate"] = time.perf_counter() - start

    log.info("level2: %d new frame(s)", n_new)
    start = time.perf_counter()
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
        photometric=bool(before["level2"].get("photometric", False)),
        wcs=WCS(fits.Header.fromstring(solved["wcs_solved"].iloc[-1])),
        psf=psf,
    )
    level2 = run_level2(
        cube,
        cube_path,
        None,
        client=client,
        config=_level2_config(config, cube, start_from.catalog)[0],
        frames=indices,
        previous=start_from,
        astrometry=_astrometry(config),
    )
    frames = pd.concat([old, _add_frame_metadata(level2.frames, cube)], ignore_index=True)
    _store_frame_results(cube_path, cube, frames)
    detections = pd.concat(
        [pd.read_parquet(out / "detections.parquet"), level2.detections], ignore_index=True
    )
    with atomic_path(out / "frames.parquet") as tmp:
        frames.to_parquet(tmp, index=False)
    _write_detections(out / "detections.parquet", detections.drop(columns="time_mjd"), frames)
    seconds["level2"] = time.perf_counter() - start

    info = {
        "ingest": {"counts": counts, "n_frames": result.n_frames},
        "calibrate": {
            k: v for k, v in before["calibrate"].items() if k not in ("seconds", "status")
        },
        "level2": {k: v for k, v in before["level2"].items() if k not in ("seconds", "status")}
        | {
            "n_frames": len(frames),
            "n_detections": len(detections),
            "n_astrometry_failed": int((frames["astrometry_status"] != "ok").sum()),
        },
    }
    for stage in ("ingest", "calibrate", "level2"):
        record.data["stages"][stage] = {
            "status": "complete",
            "seconds": round(before[stage].get("seconds", 0) + seconds[stage], 3),
            **info[stage],
            **stamp,
        }
    record.write()


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
    xr.Dataset(variables).to_zarr(cube_path, mode="a", zarr_format=3, consolidated=False)
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


def _write_dataset(path: Path, ds: xr.Dataset) -> None:
    with atomic_path(path) as tmp:
        ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False)
        cube_io.consolidate(tmp)
