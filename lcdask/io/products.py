"""A run directory's products, opened lazily: the one reader of a run.

`RunProducts` knows where each product of a run directory lives (see the table of DESIGN.md:
``run.json``, ``cube.zarr``, ``frames.parquet``, ``sources.parquet``, ``detections.parquet``,
``lightcurves.zarr``, ``coadd.fits``, ``psf.fits``) and opens each one when it is first asked
for, once. The notebook API (`lcdask.api.Run` adds queries to it), the exporter
(`lcdask.export`), the HTML report and the PNG plots all read a run through it.
`read_run` opens a run for its outputs (it needs the sources and the light curves);
`lcdask.open_run` opens one for a notebook (it needs ``run.json``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import xarray as xr

from lcdask.io.cube import open_cube

__all__ = ["RunProducts", "frames_table", "read_run"]


class _Unread:
    """The default of a product not given when a `RunProducts` is made: read when asked for."""

    def __repr__(self) -> str:
        return "<read when asked for>"


_UNREAD = _Unread()


class _Product:
    """A product of the run directory as a dataclass field: given when the `RunProducts` is made
    (``dataclasses.replace(products, sources=...)``), or read by ``read`` when first asked for,
    then kept."""

    def __init__(self, read) -> None:
        self._read = read

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name
        self.__doc__ = self._read.__doc__

    def __get__(self, obj, owner=None):
        if obj is None:
            return _UNREAD  # the field's default (dataclasses ask the class)
        try:
            return obj.__dict__[self._name]
        except KeyError:
            value = obj.__dict__[self._name] = self._read(obj)
            return value

    def __set__(self, obj, value) -> None:
        if value is not _UNREAD:
            obj.__dict__[self._name] = value


def _read_record(run: RunProducts) -> dict[str, Any]:
    """``run.json``: configuration, versions, stages, notes, skipped and flagged frames, the
    target as given and where it was found (``record["target"]``); empty when the run has none
    or it cannot be read."""
    try:
        return json.loads((run.path / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def _read_lightcurves(run: RunProducts) -> xr.Dataset:
    """``lightcurves.zarr``, the (source, frame) light-curve cube, opened lazily: nothing is read
    until a selection is loaded."""
    with warnings.catch_warnings():  # a store without consolidated metadata opens all the same
        warnings.simplefilter("ignore", RuntimeWarning)
        return xr.open_zarr(run.path / "lightcurves.zarr", consolidated=None)


def _read_sources(run: RunProducts) -> pd.DataFrame:
    """``sources.parquet``: one row per source: position, class, motion, scatter, target."""
    return pd.read_parquet(run.path / "sources.parquet")


def _read_frames(run: RunProducts) -> pd.DataFrame:
    """The per-frame table: ``frames.parquet`` (time, FWHM, sky, zero point, astrometry) when
    the run has one, else built from the light curves' frame coordinates (`frames_table`)."""
    path = run.path / "frames.parquet"
    return pd.read_parquet(path) if path.exists() else frames_table(run.lightcurves)


def _find_coadd(run: RunProducts) -> Path | None:
    """``coadd.fits`` when it exists, else None."""
    path = run.path / "coadd.fits"
    return path if path.exists() else None


@dataclass(frozen=True)
class RunProducts:
    """A run directory's products, each opened when first asked for (then kept).

    The products that are fields (``lightcurves``, ``sources``, ``frames``, ``coadd_path``,
    ``record``) can also be given, e.g. ``dataclasses.replace(products, sources=...)``; the
    others (``cube``, ``detections``, ``psf_path``) are always read from the directory.

    Attributes
    ----------
    path : Path
        The run directory (``lcdask run --out RUN``).
    lightcurves : xarray.Dataset
        ``lightcurves.zarr``, opened lazily.
    sources : pandas.DataFrame
        ``sources.parquet``.
    frames : pandas.DataFrame
        ``frames.parquet``, or the light curves' frame coordinates without it.
    coadd_path : Path or None
        ``coadd.fits`` when it exists.
    record : dict
        ``run.json`` (empty without it).
    """

    path: Path
    lightcurves: xr.Dataset = _Product(_read_lightcurves)
    sources: pd.DataFrame = _Product(_read_sources)
    frames: pd.DataFrame = _Product(_read_frames)
    coadd_path: Path | None = _Product(_find_coadd)
    record: dict[str, Any] = _Product(_read_record)

    def __repr__(self) -> str:  # not the fields': that would read every product
        return f"{type(self).__name__}(path={self.path!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.path == self.path

    def __hash__(self) -> int:
        return hash((type(self), self.path))

    @property
    def run_dir(self) -> Path:
        """The run directory (the same as `path`)."""
        return self.path

    @cached_property
    def cube(self) -> xr.Dataset:
        """The frame cube (lazy): raw and calibrated frames, masters, per-frame metadata."""
        return open_cube(self.path)

    @cached_property
    def detections(self) -> pd.DataFrame:
        """``detections.parquet``: one row per detection per frame (read whole when asked)."""
        return pd.read_parquet(self.path / "detections.parquet")

    @property
    def psf_path(self) -> Path | None:
        """``psf.fits`` (the ePSF model) when it exists, else None."""
        path = self.path / "psf.fits"
        return path if path.exists() else None


def read_run(run_dir: str | Path) -> RunProducts:
    """Open a run directory for its outputs: light curves, sources, per-frame table, co-add.

    Parameters
    ----------
    run_dir
        The run directory (``lcdask run --out RUN``).

    Returns
    -------
    RunProducts
        Every product is opened when first asked for; the light curves lazily: nothing is read
        until a selection is loaded.

    Raises
    ------
    FileNotFoundError
        When ``sources.parquet`` or ``lightcurves.zarr`` is missing.
    """
    run = Path(run_dir)
    missing = [n for n in ("sources.parquet", "lightcurves.zarr") if not (run / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"{run} has no {' and no '.join(missing)}; run `lcdask run FRAMES --out {run}` first"
        )
    return RunProducts(run)


def frames_table(ds: xr.Dataset) -> pd.DataFrame:
    """The per-frame table from a light-curve Dataset's frame coordinates.

    Parameters
    ----------
    ds
        The light-curve Dataset.

    Returns
    -------
    pandas.DataFrame
        ``frame`` and every 1-d coordinate on ``frame`` (``time_mjd``, ``zero_point``,
        ``fwhm_px``, ``sky``, ``airmass``...).
    """
    cols = {"frame": ds["frame"].to_numpy()}
    for name, coord in ds.coords.items():
        if coord.dims == ("frame",) and name != "frame":
            cols[str(name)] = coord.to_numpy()
    return pd.DataFrame(cols)
