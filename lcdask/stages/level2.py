"""The Level 2 stage: per-frame detection, plate solution, co-add and ePSF, Level 3 photometry and
zero points (`lcdask.level2.run_level2`); ``frames.parquet``, ``detections.parquet``,
``catalog.parquet``, ``coadd.fits``, ``psf.fits`` and the per-frame results in the cube."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS

from lcdask.astrometry import header_pixel_scale
from lcdask.catalogs import frames_query_circle, reference_catalog, resolve_band
from lcdask.config import Config
from lcdask.flags import LEVEL2_FLAGS, FrameFlag
from lcdask.ingest import NotAppendable
from lcdask.io import cube as cube_io
from lcdask.io.atomic import atomic_path
from lcdask.io.headers import header_wcs
from lcdask.level2 import NO_CATALOG_MESSAGE, Level2Start, run_level2
from lcdask.psf import PSFModel
from lcdask.stages.context import RunContext, catalog_cache

__all__ = ["append_level2", "run_level2_stage"]

log = logging.getLogger("lcdask")


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
    lcdask.ingest.NotAppendable
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
