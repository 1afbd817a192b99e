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

import hashlib
import importlib.metadata
import json
import logging
import time
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
from lcdask.catalogs import load_catalog, query_sdss
from lcdask.classify import classify_sources, flag_near_movers, link_tracks
from lcdask.config import Config
from lcdask.errors import LcdaskError
from lcdask.flags import LEVEL2_FLAGS, FrameFlag
from lcdask.forced import forced_photometry
from lcdask.ingest import NotAppendable, ingest
from lcdask.ingest import append as ingest_append
from lcdask.io import cube as cube_io
from lcdask.io.atomic import atomic_path, write_json_atomic
from lcdask.io.discover import discover_frames
from lcdask.level2 import NO_CATALOG_MESSAGE, Level2Start, run_level2
from lcdask.lightcurves import (
    apply_ensemble,
    build_lightcurves,
    ensemble_photometry,
    insert_forced,
)
from lcdask.match import match_detections
from lcdask.pipeline import calibrate_cube
from lcdask.psf import PSFModel
from lcdask.report import warm_workers, write_run_report
from lcdask.targets import resolve_target

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


def _reference_catalog(config: Config, catalog_path: str | Path | None, cube, out: Path):
    """The reference catalog as the configuration asks, or None with a reason."""
    cat = config.catalog
    path = catalog_path or cat.path
    if cat.source == "none":
        return None, "photometric calibration off (catalog.source = 'none')"
    if path and cat.source in ("auto", "file"):
        return load_catalog(path, columns=cat.columns or None), f"catalog file {path}"
    lights = cube["frame_type"].values == "light"
    ra = np.nanmedian(cube["ra_deg"].values[lights]) if lights.any() else np.nan
    dec = np.nanmedian(cube["dec_deg"].values[lights]) if lights.any() else np.nan
    if not np.isfinite(ra + dec):
        return None, "no catalog file and no header pointing to query a catalog around"
    cache = _catalog_cache(config, out)
    try:
        # A radius covering the frames and their pointing errors: half the diagonal + 10'.
        scale = 1.0 / 3600  # deg/px assumed where the header has no WCS; the cache keeps it
        radius = 0.5 * np.hypot(cube.sizes["x"], cube.sizes["y"]) * scale + 10 / 60
        table = query_sdss(ra, dec, radius, cache_dir=cache, offline=cat.offline)
    except LcdaskError as exc:
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "unavailable"
        log.debug("catalog query failed: %s", exc)
        return None, f"no reference catalog (SDSS query failed: {cause}; give --catalog FILE)"
    return table, f"SDSS around ({ra:.4f}, {dec:.4f})"


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
        table, source = _reference_catalog(config, catalog, cube, out)
        if table is None:
            log.warning("%s: frames are aligned to each other, fluxes stay relative", source)
            record.data["notes"].append(f"{source}: no photometric calibration")
        result = run_level2(cube, cube_path, table, client=client, config=config.level2)
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
        match = match_detections(detections, frames)
        tracks = link_tracks(
            detections,
            match.source_id,
            centre=match.centre,
            max_rate_arcsec_h=config.lightcurves.max_rate_arcsec_h,
        )
        ds = build_lightcurves(detections, tracks.source_id, frames)
        forced = {"forced": "off ([lightcurves] forced = false)"}
        if config.lightcurves.forced:
            ds, forced = _forced_photometry(ds, detections, frames)
        ds = apply_ensemble(ds, ensemble_photometry(ds))
        sources = classify_sources(ds, target=target_radec)
        ds = flag_near_movers(ds, sources)
        _write_dataset(out / "lightcurves.zarr", ds)
        with atomic_path(out / "sources.parquet") as tmp:
            sources.to_parquet(tmp, index=False)
        kinds = sources["kind"].value_counts().to_dict()
        return {
            "n_sources": len(sources),
            "kinds": kinds,
            "n_target": int(sources["is_target"].sum()),
            **forced,
        }

    def _forced_photometry(ds, detections, frames) -> tuple[xr.Dataset, dict]:
        # movers are not forced (lcdask.forced): which move, from a first classification
        movers = classify_sources(ds).query("kind == 'moving'")["source_id"]
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
        config=config.level2,
        frames=indices,
        previous=start_from,
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
