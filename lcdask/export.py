"""Export light curves as CSV, ECSV or FITS tables.

A run is read through `lcdask.io.products` (the one reader of a run; `read_run`, `RunProducts`
and `frames_table` are still importable from here). `export_lightcurves` writes long-format
tables, one row per (source, frame) measurement::

    source_id, frame, time_mjd[, bjd_tdb], flux, flux_err, mag, mag_err, flux_jy,
    rel_flux, rel_flux_err, flags, ra, dec, x, y

``bjd_tdb`` is there when the light curves carry it. Entries without a measurement (flag
`~lcdask.lightcurves.LightCurveFlag.MISSING`) are left out unless ``include_missing``. ECSV and
FITS carry units and metadata: the run, the time scale, and each source's position, magnitude
and class (ECSV: ``meta["sources"]``; FITS: a ``SOURCES`` table extension, and the source's
keywords in the header of a single-source file). CSV is plain: a header line, no units,
floats written in their shortest round-trip form, empty fields for NaN. CSV is written in blocks
of sources; ECSV and FITS tables are built whole in memory (select sources for large runs).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from lcdask.io.atomic import atomic_path
from lcdask.io.products import RunProducts, frames_table, read_run
from lcdask.lightcurves import LightCurveFlag

__all__ = [
    "EXPORT_COLUMNS",
    "EXPORT_UNITS",
    "RunProducts",
    "export_lightcurves",
    "frames_table",
    "lightcurve_table",
    "read_run",
    "select_sources",
]

EXPORT_COLUMNS = (
    "source_id",
    "frame",
    "time_mjd",
    "bjd_tdb",
    "flux",
    "flux_err",
    "mag",
    "mag_err",
    "flux_jy",
    "rel_flux",
    "rel_flux_err",
    "flags",
    "ra",
    "dec",
    "x",
    "y",
)
"""Columns of an exported light-curve table, in order (``bjd_tdb`` only when present)."""

EXPORT_UNITS = {
    "time_mjd": "d",
    "bjd_tdb": "d",
    "flux": "adu",
    "flux_err": "adu",
    "mag": "mag",
    "mag_err": "mag",
    "flux_jy": "Jy",
    "rel_flux": "",
    "rel_flux_err": "",
    "ra": "deg",
    "dec": "deg",
    "x": "pix",
    "y": "pix",
}
"""Units of the exported columns (astropy unit strings; ``""`` is dimensionless)."""

_DESCRIPTIONS = {
    "source_id": "source identifier (sources.parquet)",
    "frame": "frame index",
    "time_mjd": "mid-exposure time, MJD (UTC)",
    "bjd_tdb": "mid-exposure time, BJD (TDB)",
    "flux": "instrumental flux",
    "flux_err": "1-sigma error of flux",
    "mag": "calibrated magnitude",
    "mag_err": "1-sigma error of mag",
    "flux_jy": "calibrated flux density",
    "rel_flux": "ensemble differential flux, normalised to the source's median",
    "rel_flux_err": "1-sigma error of rel_flux",
    "flags": "bit flags (detection bits 0-7, 256 missing, 512 forced photometry)",
    "ra": "right ascension (ICRS) of the detection",
    "dec": "declination (ICRS) of the detection",
    "x": "x pixel position (0-based)",
    "y": "y pixel position (0-based)",
}

_SOURCE_META = ("source_id", "ra", "dec", "mag", "kind", "is_target", "is_comparison")
_MOVER_META = ("epoch_mjd", "rate_ra_arcsec_h", "rate_dec_arcsec_h", "pa_deg")
_SUFFIX = {"csv": ".csv", "ecsv": ".ecsv", "fits": ".fits"}
_MISSING = int(LightCurveFlag.MISSING)
_FORCED = int(LightCurveFlag.FORCED)
_KINDS = ("stable", "variable", "moving")
_CSV_BLOCK = 2_000_000
Selection = str | int | Iterable[int] | None


def select_sources(sources: pd.DataFrame, which: Selection = "all") -> np.ndarray:
    """The ``source_id`` values of a selection.

    Parameters
    ----------
    sources
        The sources table.
    which
        ``"all"`` (or None), ``"target"``, ``"comparison"``, a class (``"stable"``,
        ``"variable"``, ``"moving"``), one id or an iterable of ids.

    Returns
    -------
    numpy.ndarray
        The ids (int64), in the order of the sources table (or as given).

    Raises
    ------
    ValueError
        For an unknown name, ids that are not in the table, or no target in the run.
    """
    ids = sources["source_id"].to_numpy(np.int64)
    if which is None or (isinstance(which, str) and which == "all"):
        return ids
    if isinstance(which, str):
        if which == "target":
            sel = ids[sources["is_target"].to_numpy(bool)]
            if sel.size == 0:
                raise ValueError(
                    "this run has no target (no source with is_target); pass --target to "
                    "`lcdask run`, or select sources by id"
                )
            return sel
        if which == "comparison":
            return ids[sources["is_comparison"].to_numpy(bool)]
        if which in _KINDS:
            return ids[(sources["kind"] == which).to_numpy()]
        raise ValueError(
            f"sources={which!r} is not a selection; use 'all', 'target', 'comparison', "
            f"{', '.join(repr(k) for k in _KINDS)}, or source ids"
        )
    wanted = np.atleast_1d(np.asarray(which if np.ndim(which) else [which])).astype(np.int64)
    unknown = np.setdiff1d(wanted, ids)
    if unknown.size:
        raise ValueError(f"source ids {unknown[:10].tolist()} are not in the sources table")
    return wanted


def _source_index(ds: xr.Dataset, ids: np.ndarray) -> np.ndarray:
    sid = ds["source_id"].to_numpy()
    order = np.argsort(sid, kind="stable")
    pos = np.minimum(np.searchsorted(sid[order], ids), max(sid.size - 1, 0))
    found = sid.size > 0 and np.array_equal(sid[order][pos], ids)
    if not found:
        bad = np.setdiff1d(ids, sid)[:10].tolist()
        raise ValueError(f"source ids {bad} are not in the light curves")
    return order[pos]


def lightcurve_table(
    ds: xr.Dataset, source_ids: Sequence[int] | np.ndarray, *, include_missing: bool = False
) -> pd.DataFrame:
    """Long-format light curves of some sources: one row per (source, frame).

    Parameters
    ----------
    ds
        The light-curve Dataset (lazy or loaded; only the selected sources are read).
    source_ids
        The sources, in the order wanted.
    include_missing
        Keep the entries without a measurement (flag MISSING set and not FORCED; their values
        are NaN).

    Returns
    -------
    pandas.DataFrame
        `EXPORT_COLUMNS` (``bjd_tdb`` only when ``ds`` has it), rows by source then frame.
    """
    ids = np.asarray(source_ids, dtype=np.int64)
    sub = ds.isel(source=_source_index(ds, ids)).load() if ids.size else ds.isel(source=[])
    n_src, n_frm = sub.sizes["source"], sub.sizes["frame"]
    cols: dict[str, np.ndarray] = {
        "source_id": np.repeat(sub["source_id"].to_numpy().astype(np.int64), n_frm),
        "frame": np.tile(sub["frame"].to_numpy().astype(np.int64), n_src),
    }
    for name in EXPORT_COLUMNS[2:]:
        if name not in sub.variables:
            continue
        var = sub[name]
        if var.dims == ("frame",):
            cols[name] = np.tile(var.to_numpy(), n_src)
        else:
            cols[name] = var.transpose("source", "frame").to_numpy().reshape(-1)
    table = pd.DataFrame(cols)
    if not include_missing and "flags" in table:
        flags = table["flags"].to_numpy()
        absent = ((flags & _MISSING) != 0) & ((flags & _FORCED) == 0)
        table = table[~absent].reset_index(drop=True)
    return table


def _source_meta(sources: pd.DataFrame, ids: np.ndarray) -> pd.DataFrame:
    table = sources.set_index("source_id").loc[ids].reset_index()
    cols = [c for c in (*_SOURCE_META, *_MOVER_META) if c in table.columns]
    return table[cols]


def _astropy_table(table: pd.DataFrame, run_meta: dict):
    from astropy.table import Table

    out = Table.from_pandas(table)
    for name in out.colnames:
        if EXPORT_UNITS.get(name):
            out[name].unit = EXPORT_UNITS[name]
        out[name].description = _DESCRIPTIONS.get(name, "")
    out.meta.update(run_meta)
    return out


def _sources_records(meta_sources: pd.DataFrame) -> list[dict]:
    records = []
    for row in meta_sources.to_dict("records"):
        rec = {}
        for k, v in row.items():
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, float) and not np.isfinite(v):
                continue
            rec[k] = v
        records.append(rec)
    return records


def _write_csv(ds: xr.Dataset, ids: np.ndarray, path: Path, *, include_missing: bool) -> None:
    """Plain CSV (shortest round-trip floats, empty fields for NaN), in blocks of sources."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    step = max(1, _CSV_BLOCK // max(ds.sizes["frame"], 1))
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        for start in range(0, max(ids.size, 1), step):
            table = lightcurve_table(ds, ids[start : start + step], include_missing=include_missing)
            if start == 0:
                fh.write((",".join(table.columns) + "\n").encode())
            pacsv.write_csv(pa.Table.from_pandas(table, preserve_index=False), fh, options)


def _write_ecsv(table: pd.DataFrame, meta_sources: pd.DataFrame, run_meta: dict, path: Path):
    out = _astropy_table(table, run_meta)
    records = _sources_records(meta_sources)
    if len(records) == 1:
        out.meta["source"] = dict(records[0])
    out.meta["sources"] = records
    with atomic_path(path) as tmp:
        out.write(tmp, format="ascii.ecsv")


def _write_fits(table: pd.DataFrame, meta_sources: pd.DataFrame, run_meta: dict, path: Path):
    from astropy.io import fits
    from astropy.table import Table

    out = _astropy_table(table, {})
    lc = fits.table_to_hdu(out)
    lc.name = "LIGHTCURVES"
    hdr = lc.header
    hdr["TIMESYS"] = ("UTC", "time_mjd is MJD in UTC")
    hdr["MJDREF"] = (0.0, "time_mjd is the MJD itself")
    hdr["ORIGIN"] = (str(run_meta.get("software", "lcdask")), "software")
    hdr["RUNDIR"] = str(run_meta.get("run_dir", ""))[:68]
    hdr["NSOURCES"] = (len(meta_sources), "sources in this table")
    if len(meta_sources) == 1:
        row = meta_sources.iloc[0]
        hdr["SRC_ID"] = (int(row["source_id"]), "source_id")
        hdr["RA"] = (float(row["ra"]), "[deg] source right ascension")
        hdr["DEC"] = (float(row["dec"]), "[deg] source declination")
        if "mag" in row and np.isfinite(row["mag"]):
            hdr["MAG"] = (float(row["mag"]), "[mag] median calibrated magnitude")
        hdr["KIND"] = (str(row["kind"]), "class: stable, variable or moving")
        hdr["TARGET"] = (bool(row.get("is_target", False)), "the run's target")
    src = Table.from_pandas(meta_sources.reset_index(drop=True))
    for name, unit in (("ra", "deg"), ("dec", "deg"), ("mag", "mag"), ("epoch_mjd", "d")):
        if name in src.colnames:
            src[name].unit = unit
    for name in ("rate_ra_arcsec_h", "rate_dec_arcsec_h"):
        if name in src.colnames:
            src[name].unit = "arcsec / h"
    if "pa_deg" in src.colnames:
        src["pa_deg"].unit = "deg"
    src_hdu = fits.table_to_hdu(src)
    src_hdu.name = "SOURCES"
    hdul = fits.HDUList([fits.PrimaryHDU(), lc, src_hdu])
    with atomic_path(path) as tmp:
        hdul.writeto(tmp)


def export_lightcurves(
    run_dir: str | Path,
    out: str | Path,
    *,
    fmt: Literal["csv", "ecsv", "fits"] = "csv",
    sources: Selection = None,
    per_source: bool = False,
    include_missing: bool = False,
) -> list[Path]:
    """Export light curves of a run as long-format tables (module docstring).

    Parameters
    ----------
    run_dir
        The run directory (``sources.parquet``, ``lightcurves.zarr``).
    out
        The file to write; a directory (existing, or a path without a suffix) gets
        ``lightcurves.<fmt>`` inside it, or with ``per_source`` one ``source_<id>.<fmt>`` per
        source.
    fmt
        ``"csv"`` (plain), ``"ecsv"`` or ``"fits"`` (units and metadata).
    sources
        Which sources: None or ``"all"``, ``"target"``, ``"comparison"``, ``"stable"``,
        ``"variable"``, ``"moving"``, one id or a list of ids (`select_sources`).
    per_source
        One file per source instead of one table for all.
    include_missing
        Keep the (source, frame) entries without a measurement (NaN values).

    Returns
    -------
    list of Path
        The files written (each written atomically).

    Raises
    ------
    ValueError
        For an unknown format or selection.
    FileNotFoundError
        When the run lacks its light curves or sources table.
    """
    if fmt not in _SUFFIX:
        raise ValueError(f"fmt={fmt!r} is not an export format; use 'csv', 'ecsv' or 'fits'")
    run = read_run(run_dir)
    ids = select_sources(run.sources, sources)
    out = Path(out)
    as_dir = per_source or out.is_dir() or not out.suffix
    run_meta = {
        "software": _software(),
        "run_dir": str(run.run_dir.resolve()),
        "time_scale": "utc",
        "time_format": "mjd",
        "time_reference": "mid-exposure",
        "columns": "one row per (source, frame) measurement",
    }
    if "bjd_tdb" in run.lightcurves.variables:
        run_meta["bjd_scale"] = "tdb"
    jobs: list[tuple[Path, np.ndarray]]
    if per_source:
        jobs = [(out / f"source_{int(i)}{_SUFFIX[fmt]}", np.array([i])) for i in ids]
    else:
        jobs = [(out / f"lightcurves{_SUFFIX[fmt]}" if as_dir else out, ids)]
    written = []
    for path, chunk in jobs:
        if fmt == "csv":
            _write_csv(run.lightcurves, chunk, path, include_missing=include_missing)
            written.append(path)
            continue
        table = lightcurve_table(run.lightcurves, chunk, include_missing=include_missing)
        meta_sources = _source_meta(run.sources, chunk)
        if fmt == "ecsv":
            _write_ecsv(table, meta_sources, run_meta, path)
        else:
            _write_fits(table, meta_sources, run_meta, path)
        written.append(path)
    return written


def _software() -> str:
    from lcdask import __version__

    return f"lcdask {__version__}"
