"""The frame cube: an xarray Dataset in a zarr (v3) store, one frame per chunk.

``raw`` holds the pixels (frame, y, x); per-frame metadata are coordinates on ``frame``. The
orchestrating layer creates the store with `create_cube` (metadata only), workers fill frames with
`write_frame`, and `set_frame_values` records per-frame results. `frame_codecs` gives the codecs
of a float frame array: lossless, or quantised to a fraction of each frame's noise
(`lcdask.io.codecs`, registered with zarr when this module is imported).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from lcdask.io.codecs import NoiseQuantize  # importing it registers the codec with zarr

__all__ = [
    "FRAME_STORAGES",
    "FRAME_WRITE_CONFIG",
    "QUANTISED_COMPRESSOR",
    "add_variables",
    "append_frames",
    "consolidate",
    "create_cube",
    "frame_codecs",
    "open_cube",
    "set_attrs",
    "set_frame_values",
    "write_frame",
]

RAW_COMPRESSOR = BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle")
"""Fast lossless compression: about 0.65x the bytes of camera frames, as fast as a plain write."""

QUANTISED_COMPRESSOR = BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle", typesize=4)
"""After `NoiseQuantize`. Measured on simulated 2048^2 calibrated frames at level 32 (load ~13 on
2 cores): lz4 with bit shuffle 1.03 bytes a pixel, 16 ms to compress and 13 ms to decompress a
frame; zstd-1 with byte shuffle 0.92 bytes, 40 and 33 ms. A frame is read back 3-4 times and
more by the co-add's tiles (a window decodes its whole frame), so the faster one: both keep a
run directory within 1.2x its raw input."""

FRAME_STORAGES = ("quantised", "float32")
"""The ways `frame_codecs` stores a float frame array."""

FRAME_WRITE_CONFIG = {"write_empty_chunks": True}
"""zarr's runtime configuration for writing whole frames: every chunk is stored as it is.

By default zarr compares each chunk with the fill value before writing it, to skip empty ones;
a frame is never empty, and that comparison cost 55 ms per 2048^2 chunk, 4x the lz4 compression
and the file write together (zarr 3.1).
"""


def frame_codecs(storage: str = "float32", *, level: float = 32.0) -> dict[str, Any]:
    """zarr's ``serializer`` and ``compressors`` for a float array of frames (one per chunk).

    Parameters
    ----------
    storage : {"float32", "quantised"}, optional
        "float32": every bit kept (`RAW_COMPRESSOR`); "quantised": each frame quantised to
        ``sigma / level`` of its own noise with dithering (`NoiseQuantize`), then
        `QUANTISED_COMPRESSOR`.
    level : float, optional
        Steps per noise sigma when quantised.

    Returns
    -------
    dict
        Keyword arguments of ``zarr.create_array``: ``serializer`` and ``compressors``.
    """
    if storage == "quantised":
        return {"serializer": NoiseQuantize(level=level), "compressors": (QUANTISED_COMPRESSOR,)}
    if storage == "float32":
        return {"serializer": "auto", "compressors": (RAW_COMPRESSOR,)}
    raise ValueError(f"frame storage must be one of {FRAME_STORAGES}, got {storage!r}")


def create_cube(
    path: str | Path,
    frames: pd.DataFrame,
    shape: tuple[int, int],
    *,
    dtype: np.dtype | str = "float32",
    attrs: Mapping[str, Any] | None = None,
    frames_per_chunk: int = 1,
) -> None:
    """Create a cube store holding the frame metadata and an empty ``raw`` array.

    Parameters
    ----------
    path : str or Path
        The zarr store to create (it must not exist).
    frames : pandas.DataFrame
        One row per frame; every column becomes a coordinate on ``frame``.
    shape : tuple of int
        ``(ny, nx)`` of every frame.
    dtype : numpy dtype or str, optional
        Type of ``raw``.
    attrs : mapping, optional
        Dataset attributes (values that are not JSON scalars are stored as JSON strings).
    frames_per_chunk : int, optional
        Frames per chunk of ``raw``.
    """
    n_frames = len(frames)
    ny, nx = shape
    dtype = np.dtype(dtype)
    fill = np.nan if dtype.kind == "f" else 0
    raw = da.full((n_frames, ny, nx), fill, dtype=dtype, chunks=(frames_per_chunk, ny, nx))
    coords: dict[str, Any] = {"frame": np.arange(n_frames)}
    for name in frames.columns:
        values = frames[name].to_numpy()
        if values.dtype == object or pd.api.types.is_string_dtype(frames[name]):
            values = np.array([str(v) for v in values], dtype=object)
        coords[name] = ("frame", values)
    ds = xr.Dataset({"raw": (("frame", "y", "x"), raw)}, coords=coords)
    ds.attrs.update(_jsonable(attrs or {}))
    encoding = {"raw": {"compressors": (RAW_COMPRESSOR,), "fill_value": fill}}
    ds.to_zarr(path, mode="w-", compute=False, zarr_format=3, encoding=encoding, consolidated=False)


def _jsonable(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in attrs.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[key] = value
        else:
            out[key] = json.dumps(value, default=str)
    return out


def write_frame(path: str | Path, index: int, image: np.ndarray, *, name: str = "raw") -> None:
    """Write one frame's pixels into the cube.

    Parameters
    ----------
    path : str or Path
        The cube store.
    index : int
        Position along ``frame``.
    image : numpy.ndarray
        ``(ny, nx)`` pixels, cast to the array's type.
    name : str, optional
        The array to write.
    """
    array = zarr.open_array(str(Path(path) / name), mode="r+").with_config(FRAME_WRITE_CONFIG)
    if image.shape != array.shape[1:]:
        raise ValueError(
            f"frame {index}: image shape {image.shape} != cube frame {array.shape[1:]}"
        )
    array[index] = image.astype(array.dtype, copy=False)


def read_item(path: str | Path, name: str, index: int) -> Any:
    """Frame ``index`` of the cube's array ``name`` (pixels or a value), None when there is none.

    Opens that array alone: opening the cube's group reads every array's metadata (~8 ms a
    call, paid by every per-frame task that did it).

    Parameters
    ----------
    path : str or Path
        The cube store.
    name : str
        The array (``calibrated``, ``pixel_flags``, ``gain_e_adu``...).
    index : int
        Position along ``frame``.

    Returns
    -------
    numpy.ndarray or scalar or None
    """
    array_path = Path(path) / name
    if not (array_path / "zarr.json").exists():
        return None
    return zarr.open_array(str(array_path), mode="r")[index]


def set_frame_values(path: str | Path, name: str, indices: Sequence[int], values: Sequence) -> None:
    """Overwrite entries of a per-frame coordinate.

    Parameters
    ----------
    path : str or Path
        The cube store.
    name : str
        The coordinate (1-D along ``frame``).
    indices : sequence of int
        Frames to set.
    values : sequence
        New values, one per index.
    """
    array = zarr.open_array(str(Path(path) / name), mode="r+")
    for index, value in zip(indices, values, strict=True):
        array[int(index)] = value


def consolidate(path: str | Path) -> None:
    """Consolidate the store's metadata so that opening it reads one document."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not part of the v3 specification"
        zarr.consolidate_metadata(str(path))


def _group_attrs(path: str | Path) -> dict[str, Any]:
    """The store's group attributes as written (not the consolidated copy)."""
    return dict(zarr.open_group(str(path), mode="r", use_consolidated=False).attrs)


def add_variables(path: str | Path, ds: xr.Dataset) -> None:
    """Write ``ds``'s variables into the cube (new ones, or whole ones replaced), then consolidate.

    xarray's ``to_zarr(mode="a")`` replaces the group's attributes with ``ds.attrs``; the cube's
    own (``calibration``, ``skipped``, ``typed``) are kept here.
    """
    ds.assign_attrs(_group_attrs(path)).to_zarr(path, mode="a", zarr_format=3, consolidated=False)
    consolidate(path)


def set_attrs(path: str | Path, **attrs: str) -> None:
    """Set attributes of the store's group, with its metadata consolidated before and after.

    Writing a group attribute rewrites the group's metadata document together with the
    consolidated metadata it was opened with; consolidating first makes that copy list every
    array already in the store (a process killed between the attribute and the last
    consolidation then leaves a store whose attributes and arrays agree).
    """
    consolidate(path)
    group = zarr.open_group(str(path), mode="r+")
    group.attrs.update(attrs)
    consolidate(path)


def open_cube(path: str | Path, *, dask_arrays: bool = True) -> xr.Dataset:
    """Open a cube lazily.

    Parameters
    ----------
    path : str or Path
        The cube store (``RUN/cube.zarr``) or the run directory holding it.
    dask_arrays : bool, optional
        Back the data variables with dask arrays; when False they stay xarray's lazily indexed
        arrays (no graphs built: ~0.3 s less for a cube of 128 frames), for callers that read
        the pixels themselves.

    Returns
    -------
    xarray.Dataset
        Dask-backed (unless ``dask_arrays`` is False); the per-frame coordinates are loaded.
    """
    path = Path(path)
    if (path / "cube.zarr").is_dir():
        path = path / "cube.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # Small arrays: read them here straight from the store (no dask: not through whatever
        # cluster happens to be the default, and no graph per coordinate, which cost ~60 ms each).
        plain = xr.open_zarr(path, consolidated=None, chunks=None)
        ds = xr.open_zarr(path, consolidated=None) if dask_arrays else plain
    frame_coords = [name for name, c in plain.coords.items() if c.dims == ("frame",)]
    loaded = {name: plain[name].load() for name in frame_coords}
    return ds.assign_coords(loaded)


def append_frames(path: str | Path, frames: pd.DataFrame) -> range:
    """Grow every per-frame array of a cube by the rows of ``frames``.

    Coordinates on ``frame`` take their values from the columns of ``frames`` (missing ones get
    NaN, 0 or ""); pixel arrays (``raw``, ``calibrated``, ...) and per-frame results get their
    fill value, their new chunks unwritten until workers fill them (`write_frame`).

    Parameters
    ----------
    path : str or Path
        The cube store.
    frames : pandas.DataFrame
        One row per new frame.

    Returns
    -------
    range
        The new frames' indices.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = xr.open_zarr(path, consolidated=None)
    n_old, n_new = ds.sizes["frame"], len(frames)
    coords: dict[str, Any] = {"frame": np.arange(n_old, n_old + n_new)}
    data_vars: dict[str, Any] = {}
    for name, var in ds.variables.items():
        if name == "frame" or var.dims[:1] != ("frame",):
            continue
        dtype = var.dtype
        if var.ndim == 1:
            if name in frames.columns:
                values = frames[name].to_numpy()
            else:
                values = [_fill(dtype)] * n_new
            if dtype.kind in "OUT":
                values = np.array([str(v) for v in values], dtype=object)
            else:
                values = np.asarray(values).astype(dtype)
        else:
            chunks = (1, *var.shape[1:])
            values = da.full((n_new, *var.shape[1:]), _fill(dtype), dtype=dtype, chunks=chunks)
        target = coords if name in ds.coords else data_vars
        target[name] = (var.dims, values)
    # xarray writes the dataset's attributes over the group's: the cube's own kept
    new = xr.Dataset(data_vars, coords=coords, attrs=_group_attrs(path))
    new.to_zarr(path, append_dim="frame", compute=False, consolidated=False)
    consolidate(path)
    return range(n_old, n_old + n_new)


def _fill(dtype: np.dtype):
    if dtype.kind in "OUT":  # strings (object in memory)
        return ""
    return np.nan if dtype.kind == "f" else 0
