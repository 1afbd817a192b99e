"""The calibration stage: masters, bad-pixel maps and calibrated lights in the cube.

`calibrate_cube` builds the calibration's graph of numpy tasks (the kernels of
`lcdask.calibrate` on blocks of rows and on frames) and computes it through
`lcdask.stages._parallel`; the workers write the arrays into the cube. `run_calibrate` and
`append_calibrate` are the stage's entries in the run's table (`lcdask.run.STAGE_TABLE`).

Completeness of the calibration products in the cube
-----------------------------------------------------
`calibrate_cube` first removes the cube attribute ``"calibration"``, writes every array under a
temporary name (``tmp_<name>_<hex>``) and renames it into place only when it is whole, and writes
``attrs["calibration"]`` (a JSON string: the summary, configuration and versions) last, then
consolidates the metadata. So the calibration arrays of a cube are whole and belong together if and
only if ``attrs["calibration"]`` is present; a crash leaves at most ``tmp_*`` arrays (removed by the
next run) and no such attribute.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

from lcdask import __version__
from lcdask import calibrate as cal
from lcdask import gain as gain_kernels
from lcdask.calibrate import CalibrationConfig, PixelFlag
from lcdask.errors import LcdaskError
from lcdask.flags import FrameFlag
from lcdask.io import cube as cube_io
from lcdask.stages._parallel import compute, with_retries
from lcdask.stages.context import RunContext
from lcdask.stages.ingest import Skipped, reason_lines

__all__ = ["CALIBRATION_ARRAYS", "append_calibrate", "calibrate_cube", "run_calibrate"]

log = logging.getLogger("lcdask")

CALIBRATION_ARRAYS = (
    "master_bias",
    "master_dark",
    "master_dark_flat",
    "master_flat",
    "flat_filter",
    "bad_pixels",
    "calibrated",
    "pixel_flags",
    "variance",
)
"""Arrays `calibrate_cube` owns in the cube (removed and rewritten by each run)."""

DEFAULT_CONFIG = CalibrationConfig()

_CODEC = BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle")
_CODEC_BYTES = BloscCodec(cname="lz4", clevel=1, shuffle="noshuffle")
"""For 1-byte arrays (bit flags): bit-shuffling a 2048^2 uint8 frame of sparse flags took 4x the
time (~55 vs ~13 ms) for twice the size (0.11 vs 0.06 MB)."""


def _compressors(dtype) -> tuple | str:
    if dtype is str:
        return "auto"
    return (_CODEC_BYTES,) if np.dtype(dtype).itemsize == 1 else (_CODEC,)


def _cube_store(path: str | Path) -> Path:
    path = Path(path)
    return path / "cube.zarr" if (path / "cube.zarr").is_dir() else path


def _task(func):
    """``func`` as a delayed task of the calibration's graph, with the layer's retry policy."""
    return dask.delayed(with_retries(func), pure=False)


def _from_zarr(store: Path, name: str) -> da.Array:
    array = zarr.open_array(str(store / name), mode="r")
    return da.from_zarr(array, chunks=array.chunks)


def _stored(store: Path, name: str, dims: tuple[str, ...]) -> xr.DataArray:
    return xr.DataArray(_from_zarr(store, name), dims=dims)


def _group(ds: xr.Dataset, frame_type: str, usable: np.ndarray) -> np.ndarray:
    return ds["frame"].values[(ds["frame_type"].values == frame_type) & usable]


def _most_common(values) -> float:
    return float(Counter(np.round(np.asarray(values, float), 6)).most_common(1)[0][0])


class _Writer:
    """Writes arrays into the cube under temporary names and renames them when whole."""

    def __init__(self, store: Path) -> None:
        self.store = store
        self.pending: dict[str, str] = {}

    def create(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype,
        dims: tuple[str, ...],
        *,
        chunks: tuple[int, ...] | None = None,
        fill_value: Any = 0,
        attrs: dict | None = None,
        codecs: dict[str, Any] | None = None,
    ) -> zarr.Array:
        tmp = f"tmp_{name}_{uuid.uuid4().hex[:8]}"
        array = zarr.create_array(
            store=str(self.store),
            name=tmp,
            shape=shape,
            dtype=dtype,
            chunks=chunks or shape,
            **(codecs or {"compressors": _compressors(dtype)}),
            fill_value=fill_value,
            dimension_names=dims,
            attributes=attrs or {},
            config=cube_io.FRAME_WRITE_CONFIG,
        )
        self.pending[name] = tmp
        return array

    def write(self, name: str, data: np.ndarray, dims: tuple[str, ...], **kwargs) -> None:
        dtype = str if data.dtype.kind in "OUT" else data.dtype  # variable-length strings
        array = self.create(name, data.shape, dtype, dims, **kwargs)
        array[...] = data

    def commit(self) -> list[str]:
        """Rename every pending array into place."""
        for name, tmp in self.pending.items():
            final = self.store / name
            if final.exists():
                shutil.rmtree(final)
            os.replace(self.store / tmp, final)
        names, self.pending = list(self.pending), {}
        return names


def _start(store: Path, keep: Sequence[str] = ()) -> None:
    """Mark the calibration incomplete and remove stale temporaries and old products."""
    group = zarr.open_group(str(store), mode="r+")
    if "calibration" in group.attrs:
        del group.attrs["calibration"]
    for child in store.iterdir():
        stale = child.name in CALIBRATION_ARRAYS and child.name not in keep
        if child.name.startswith("tmp_") or stale:
            shutil.rmtree(child)
    cube_io.consolidate(store)


def calibrate_cube(
    cube_path: str | Path,
    *,
    client=None,
    config: CalibrationConfig = DEFAULT_CONFIG,
    persist_calibrated: bool = True,
    persist_variance: bool = False,
    frames: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Level 1 calibration of a cube: masters, bad-pixel map, calibrated and cleaned lights.

    Writes into the cube: ``master_bias`` (when bias frames exist), ``master_dark`` (what is
    subtracted from the lights), ``master_dark_flat`` (what is subtracted from the flats),
    ``master_flat`` (flat_filter, y, x; dark-subtracted, median 1) with the ``flat_filter``
    coordinate, ``bad_pixels`` (y, x) uint8 `PixelFlag` bits, and when ``persist_calibrated``
    ``calibrated`` (frame, y, x) float32 (stored as ``config.calibrated_storage`` says: by
    default quantised to 1/32 of each frame's noise, `lcdask.io.codecs.NoiseQuantize`) and
    ``pixel_flags`` (frame, y, x) uint8 -- full length
    along ``frame`` so they align with ``raw``, filled for lights and NaN / 0 for other frames
    (whose chunks are never written, so they cost no space); with ``persist_variance`` also
    ``variance`` (frame, y, x) float32 in ADU^2. Calibration frames left out of the masters as
    outliers are flagged ``FrameFlag.REJECTED`` with their reason (``flags``, ``flag_reason``;
    judged afresh, and the flag cleared, by each calibration). See the module docstring for how
    completeness is recorded.

    Parameters
    ----------
    cube_path : str or Path
        The cube store or the run directory holding ``cube.zarr``.
    client : distributed.Client, optional
        Cluster to compute on; the local threaded scheduler when None.
    config : CalibrationConfig, optional
    persist_calibrated : bool, optional
        Write ``calibrated`` and ``pixel_flags``.
    persist_variance : bool, optional
        Write ``variance`` as well.
    frames : sequence of int, optional
        Calibrate only these lights (frames appended to a calibrated cube, see
        `lcdask.stages.ingest.append`), into the existing ``calibrated`` and ``pixel_flags``; the
        masters are made again from the same calibration frames (identical) and the other
        lights are left as they are.

    Returns
    -------
    dict
        The summary also stored (as JSON) in ``attrs["calibration"]``: frames used and rejected
        (with reasons), dark strategies, counts of bad pixels, notes, arrays written, timings.

    Raises
    ------
    LcdaskError
        If the cube has no usable lights, or lights lack a flat and ``config.require_flat``.
    """
    start_all = time.perf_counter()
    run = _prepare(cube_path, client=client, config=config, frames=frames)
    rejected, used = _reject_calibration_frames(run)
    masters = _make_masters(run, used)
    noise = _gain_and_read_noise(run, masters, used)
    missing: list[str] = []
    n_calibrated = 0
    if persist_calibrated:
        missing = _calibrate_lights(run, masters, persist_variance=persist_variance)
        n_calibrated = len(run.todo)
    summary = _summary(run, masters, used, rejected, missing, n_calibrated)
    summary["noise"] = noise
    run.timings["total"] = time.perf_counter() - start_all
    _flag_rejected(run.store, run.ds, rejected)
    cube_io.set_attrs(run.store, calibration=json.dumps(summary, default=str))
    return summary


@dataclass
class _Calibration:
    """What the phases of a calibration share (`calibrate_cube`)."""

    store: Path
    ds: xr.Dataset
    raw: xr.DataArray
    raw_array: Any  # a dask.delayed zarr.Array: one graph key every task reads from
    config: CalibrationConfig
    client: Any
    lights: np.ndarray
    todo: np.ndarray
    in_place: tuple[str, ...]
    saturate: Any
    notes: list[str]
    timings: dict[str, float]
    writer: _Writer
    previous: dict[str, Any] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)


@dataclass
class _Masters:
    """The masters' choices, and whether a bias and a flat were made (`_make_masters`)."""

    choice: cal.DarkChoice
    flat_choices: dict[str, cal.DarkChoice]
    flat_filters: list[str]
    has_bias: bool
    has_flat: bool
    bad_counts: dict[str, Any]


def _prepare(cube_path, *, client, config: CalibrationConfig, frames) -> _Calibration:
    """The cube opened, its lights found, the calibration marked incomplete."""
    timings: dict[str, float] = {}
    store = _cube_store(cube_path)
    with dask.config.set(scheduler="threads"):  # small coordinates: not worth a round trip
        ds = cube_io.open_cube(store, dask_arrays=False)
    # the pixels straight from zarr: tasks then carry a light zarr.Array rather than xarray's
    # backend wrapper, which costs a store round trip per task on a distributed cluster
    raw = ds["raw"].copy(data=_from_zarr(store, "raw"))
    flags = ds["flags"].values.astype(np.int64)
    light_usable = (flags & ~int(FrameFlag.NONFINITE)) == 0
    lights = _group(ds, "light", light_usable)
    if lights.size == 0:
        raise LcdaskError(
            f"{store}: no usable light frames to calibrate (frame types: "
            f"{dict(Counter(ds['frame_type'].values))})"
        )
    notes: list[str] = []
    saturate = ds["saturate_adu"] if config.saturate_adu is None else config.saturate_adu
    if (
        raw.dtype.kind == "f"
        and config.saturate_adu is None
        and not np.isfinite(ds["saturate_adu"].values[lights]).all()
    ):
        notes.append("some lights have no saturation level (float data): not flagged as saturated")
    todo = lights if frames is None else np.intersect1d(lights, np.asarray(frames, int))
    in_place = ("calibrated", "pixel_flags", "variance") if frames is not None else ()
    previous = json.loads(ds.attrs.get("calibration", "{}")) if frames is not None else {}
    _start(store, keep=in_place)
    # one graph key for the raw zarr.Array that every task reads from (building a task that
    # holds the array itself walks its fields, ~1 ms each)
    raw_array = dask.delayed(
        zarr.open_array(str(store / "raw"), mode="r"), name=f"raw-{uuid.uuid4().hex}"
    )
    return _Calibration(
        store=store,
        ds=ds,
        raw=raw,
        raw_array=raw_array,
        config=config,
        client=client,
        lights=lights,
        todo=todo,
        in_place=in_place,
        saturate=saturate,
        notes=notes,
        timings=timings,
        writer=_Writer(store),
        previous=previous,
    )


def _reject_calibration_frames(
    run: _Calibration,
) -> tuple[dict[int, str], dict[str, np.ndarray]]:
    """Statistics of every calibration frame (one task each) and the outliers rejected.

    Returns the rejected frames with their reasons, and the frames used per kind.
    """
    ds, raw, config = run.ds, run.raw, run.config
    t0 = time.perf_counter()
    flags = ds["flags"].values.astype(np.int64)
    calib_usable = (flags & ~int(FrameFlag.REJECTED)) == 0  # judged afresh below
    candidates = {kind: _group(ds, kind, calib_usable) for kind in ("bias", "dark", "flat")}
    calib_frames = np.concatenate(list(candidates.values()))
    rejected: dict[int, str] = {}
    if calib_frames.size:
        saturate = run.saturate
        sat_calib = (
            saturate.sel(frame=calib_frames) if isinstance(saturate, xr.DataArray) else saturate
        )
        sat_calib = cal.saturation_level(raw, sat_calib)
        sat_calib = np.broadcast_to(
            np.asarray(getattr(sat_calib, "values", sat_calib), np.float64), calib_frames.shape
        )
        per_frame = compute(
            run.client,
            *[
                _task(_frame_statistics_task)(run.raw_array, int(f), float(s))
                for f, s in zip(calib_frames, sat_calib, strict=True)
            ],
            label="calibrate: statistics",
        )
        stats = xr.DataArray(
            np.stack(per_frame),
            dims=("frame", "statistic"),
            coords={"frame": calib_frames, "statistic": list(cal.FRAME_STATISTICS)},
        )
        groups = []
        for kind, frames in candidates.items():
            key = "exptime_s" if kind == "dark" else ("filter" if kind == "flat" else None)
            values = ds[key].values[frames] if key else np.zeros(len(frames))
            for value in np.unique(values):
                groups.append((kind, frames[values == value]))
        for kind, frames in groups:
            rejected.update(cal.reject_frames(stats.sel(frame=frames), kind=kind, config=config))
    run.timings["frame_statistics"] = time.perf_counter() - t0
    used = {k: np.array([f for f in v if f not in rejected], int) for k, v in candidates.items()}
    return rejected, used


def _make_masters(run: _Calibration, used: dict[str, np.ndarray]) -> _Masters:
    """Masters and bad-pixel map: numpy tasks on blocks of rows, one compute, written by the
    workers into the cube (no round trip of the arrays through this process)."""
    ds, raw, config, store, notes = run.ds, run.raw, run.config, run.store, run.notes
    lights, raw_array, task = run.lights, run.raw_array, _task
    t0 = time.perf_counter()
    shape = raw.shape[1:]
    exptimes = ds["exptime_s"].values.astype(np.float64)
    filters = ds["filter"].values

    def combine(frames, kind: str, extra: dict, *row_arrays) -> list:
        frames = [int(f) for f in frames]
        return [
            task(_combine_rows_task)(
                raw_array, frames, rows, config, kind, extra, *(a[i] for a in row_arrays)
            )
            for i, rows in enumerate(blocks)
        ]

    # the choices first (pure): the flats' chain of tasks (their dark, medians, combination,
    # normalisation, dead pixels) is the longest, so it and what it needs go first
    has_bias = bool(used["bias"].size)
    dark_exptimes = {int(f): float(exptimes[f]) for f in used["dark"]}
    light_exptime = _most_common(exptimes[lights])
    choice = cal.choose_dark(
        dark_exptimes, light_exptime, has_bias=has_bias, rtol=config.exptime_rtol
    )
    flat_filters = [str(f) for f in np.unique(filters[used["flat"]])]
    flat_plans = []
    for name in flat_filters:
        frames = used["flat"][filters[used["flat"]] == name]
        f_choice = cal.choose_dark(
            dark_exptimes,
            _most_common(exptimes[frames]),
            has_bias=has_bias,
            rtol=config.exptime_rtol,
            purpose=f"flats {name!r}",
        )
        same = (f_choice.strategy, f_choice.frames) == (choice.strategy, choice.frames)
        same = same and f_choice.exptime_s == choice.exptime_s
        # `calibrate.dark_for_frames`: the master itself, or scaled to each flat's exposure
        ratio = exptimes[frames] / f_choice.exptime_s
        unscaled = not has_bias or f_choice.strategy in ("bias_only", "none")
        scaled = None if unscaled or np.allclose(ratio, 1.0, rtol=1e-6) else (f_choice.exptime_s,)
        flat_plans.append((name, frames, f_choice, same, scaled))
    flats_need_bias = any(
        p[2].strategy in ("scaled", "bias_only") or p[4] is not None for p in flat_plans
    )
    flats_need_dark = any(p[3] for p in flat_plans)
    # one partition into rows for every master (a master's blocks feed the same blocks of the
    # next), sized for the largest combination
    n_stack = max(
        [len(used["bias"]), len(choice.frames), 1]
        + [max(len(p[1]), len(p[2].frames)) for p in flat_plans]
    )
    blocks = _row_blocks(shape, n_stack * shape[0] * shape[1] * 4)

    with dask.annotate(priority=int(flats_need_bias)):
        bias_parts = combine(used["bias"], "raw", {}) if has_bias else None
        m_bias = task(_stack_rows)(*bias_parts) if has_bias else None
    notes.append(choice.note)
    if choice.strategy == "none":
        log.warning("%s: %s", store, choice.note)

    def dark_parts(c: cal.DarkChoice) -> list:
        """The row blocks of `calibrate.master_dark` for ``c``."""
        if c.strategy in ("matching", "nearest"):
            return combine(c.frames, "raw", {})
        if c.strategy == "scaled":
            extra = {"exptimes": [float(exptimes[f]) for f in c.frames], "exptime_s": c.exptime_s}
            return combine(c.frames, "scaled", extra, bias_parts)
        if c.strategy == "bias_only":
            return bias_parts
        return [task(np.zeros)((r1 - r0, shape[1]), np.float32) for r0, r1 in blocks]

    with dask.annotate(priority=int(flats_need_dark)):
        m_dark_parts = dark_parts(choice)
        m_dark = task(_stack_rows)(*m_dark_parts)

    flat_masters, flat_choices, dark_flat = [], {}, None
    for name, frames, f_choice, same, scaled in flat_plans:
        flat_choices[name] = f_choice
        notes.append(f_choice.note)
        with dask.annotate(priority=1):
            if same:
                m_dark_f_parts, m_dark_f = m_dark_parts, m_dark
            else:
                m_dark_f_parts = dark_parts(f_choice)
                m_dark_f = task(_stack_rows)(*m_dark_f_parts)
            if dark_flat is None:
                dark_flat = m_dark_f
            bias_for_flat = m_bias if scaled else None
            medians = [
                task(_flat_median_task)(
                    raw_array, int(f), m_dark_f, bias_for_flat, float(exptimes[f]), scaled
                )
                for f in frames
            ]
            extra = {"exptimes": [float(exptimes[f]) for f in frames], "scaled": scaled}
            extra["medians"] = medians
            bias_rows = bias_parts if scaled else [None] * len(blocks)
            parts = combine(frames, "flat", extra, m_dark_f_parts, bias_rows)
            flat_masters.append(task(_normalise_flat)(*parts))
    m_flat = task(np.stack)(flat_masters) if flat_masters else None

    has_dark_signal = choice.strategy in ("matching", "scaled", "nearest")
    if not has_dark_signal:
        notes.append("no darks: hot pixels not mapped")
    if m_flat is None:
        notes.append("no flats: dead pixels not mapped, lights not flat-fielded")
    hot = task(_hot_pixels_task)(m_dark, m_bias, config) if has_dark_signal else None
    with dask.annotate(priority=1):
        dead = [task(_dead_pixels_task)(flat, config) for flat in flat_masters]
    # the workers write the masters (no round trip of the arrays through the driver)
    writer = run.writer
    yx = ("y", "x")
    writes = []
    for name, value in (
        ("master_bias", m_bias),
        ("master_dark", m_dark),
        ("master_dark_flat", dark_flat),
    ):
        if value is not None:
            target = writer.create(name, shape, np.float32, yx, fill_value=np.nan)
            writes.append(task(_write_task)(target, value))
    if m_flat is not None:
        target = writer.create(
            "master_flat",
            (len(flat_filters), *shape),
            np.float32,
            ("flat_filter", *yx),
            fill_value=np.nan,
            chunks=(1, *shape),
        )
        writes.append(task(_write_task)(target, m_flat))
        writer.write(
            "flat_filter", np.array(flat_filters, dtype=object), ("flat_filter",), fill_value=""
        )
    target = writer.create(
        "bad_pixels",
        shape,
        np.uint8,
        yx,
        fill_value=0,
        attrs={"flag_meanings": {f.name: int(f) for f in PixelFlag if f.value}},
    )
    bad = task(_bad_pixels_task)(hot, config, *dead) if hot is not None or dead else None
    bad_counts, *_ = compute(
        run.client,
        task(_write_bad_pixels_task)(target, bad, shape),
        *writes,
        label="calibrate: masters",
    )
    run.timings["masters"] = time.perf_counter() - t0
    run.written += writer.commit()
    cube_io.consolidate(store)
    return _Masters(
        choice=choice,
        flat_choices=flat_choices,
        flat_filters=flat_filters,
        has_bias=m_bias is not None,
        has_flat=m_flat is not None,
        bad_counts=bad_counts,
    )


def _calibrate_lights(run: _Calibration, masters: _Masters, *, persist_variance: bool) -> list[str]:
    """The lights calibrated, flagged and cleaned: one task per light, masters read back from
    the store by the workers. Returns the filters that had no flat."""
    raw, config, store, notes, todo = run.raw, run.config, run.store, run.notes, run.todo
    saturate, in_place, writer, task = run.saturate, run.in_place, run.writer, _task
    choice, flat_filters = masters.choice, masters.flat_filters
    yx = ("y", "x")
    missing: list[str] = []
    t0 = time.perf_counter()
    raw_l = raw.sel(frame=todo)
    m_bias_s = _stored(store, "master_bias", yx) if masters.has_bias else None
    dark_l = cal.dark_for_frames(
        raw_l["exptime_s"], _stored(store, "master_dark", yx), m_bias_s, choice
    )
    if masters.has_flat:
        stored_flat = _stored(store, "master_flat", ("flat_filter", *yx))
        stored_flat = stored_flat.assign_coords(flat_filter=flat_filters)
        flat_l, missing = cal.flat_for_frames(stored_flat, raw_l["filter"])
    else:
        flat_l, missing = None, sorted(set(raw_l["filter"].values))
    if missing:
        message = (
            f"{store}: no flat for the lights of filter(s) {missing} "
            f"(flats found for {flat_filters or 'none'})"
        )
        if config.require_flat:
            raise LcdaskError(message + "; add flats of these filters or set require_flat=false")
        notes.append(message + ": those lights are not flat-fielded")
    sat_l = saturate.sel(frame=todo) if isinstance(saturate, xr.DataArray) else saturate
    sat_l = cal.saturation_level(raw_l, sat_l)
    # per-frame levels as float64 scalars and a common level as a Python float: raw >= level
    # then compares in the same type as `pixel_flags` does
    sat_l = (
        list(sat_l.values.astype(np.float64))
        if isinstance(sat_l, xr.DataArray)
        else [sat_l] * len(todo)
    )
    names = ["calibrated", "pixel_flags"] + (["variance"] if persist_variance else [])
    if persist_variance:
        gain = raw_l["gain_e_adu"].values.astype(np.float64)
        rdnoise = raw_l["rdnoise_e"].values.astype(np.float64)
        if not np.isfinite(gain).all():
            notes.append("some lights have no gain: variance uses 1 e-/ADU for them")
    shape = raw.shape
    # raw stays lossless; the calibrated frames (and their variance, whose own noise sets its
    # step likewise) as the configuration says: quantised to a fraction of each frame's noise
    # by default
    float_codecs = cube_io.frame_codecs(config.calibrated_storage, level=config.quantise_level)
    codecs = {"calibrated": float_codecs, "variance": float_codecs}
    targets = {}
    for name in names:
        dtype = np.dtype(np.uint8 if name == "pixel_flags" else np.float32)
        fill = 0 if dtype.kind == "u" else np.nan
        if name in in_place and (store / name).exists():
            target = zarr.open_array(str(store / name), mode="r+")
            targets[name] = target.with_config(cube_io.FRAME_WRITE_CONFIG)
        else:
            targets[name] = writer.create(
                name,
                shape,
                dtype,
                ("frame", "y", "x"),
                chunks=(1, *shape[1:]),
                fill_value=fill,
                codecs=codecs.get(name),
            )
    # one task per light (read, calibrate, flag, clean, write); every input is a chunk of a
    # lazy array whose key all tasks share, so each master is read from the store once
    if "frame" in dark_l.dims:  # (y, x, frame) when scaled: frame first
        dark_l = dark_l.transpose("frame", *yx)
    dark_at = _frame_chunks(dark_l.data)
    flat_at = _frame_chunks(flat_l.data) if flat_l is not None else (lambda i: None)
    bad_at = _frame_chunks(_stored(store, "bad_pixels", yx).data)
    raw_at = _frame_chunks(raw.data)
    bias_at = _frame_chunks(m_bias_s.data) if m_bias_s is not None else (lambda i: None)
    tasks = []
    for i, frame in enumerate(todo):
        variance_args = (
            (bias_at(i), float(gain[i]), float(rdnoise[i])) if persist_variance else None
        )
        tasks.append(
            task(_calibrate_light)(
                raw_at(frame),
                dark_at(i),
                flat_at(i),
                bad_at(i),
                sat_l[i],
                config,
                targets,
                int(frame),
                variance_args,
            )
        )
    compute(run.client, *tasks, label="calibrate")
    run.written += writer.commit()
    run.timings["calibrate"] = time.perf_counter() - t0
    return missing


def _summary(run, masters, used, rejected, missing, n_calibrated) -> dict[str, Any]:
    """What the calibration did: stored in the cube's ``attrs["calibration"]``, returned."""
    ds, used, notes = run.ds, used, run.notes
    choice, flat_choices, flat_filters = masters.choice, masters.flat_choices, masters.flat_filters
    paths = ds["path"].values
    types = ds["frame_type"].values
    summary: dict[str, Any] = {
        "complete": True,
        "lcdask_version": __version__,
        "config": dataclasses.asdict(run.config),
        "n_lights": len(run.lights),
        "n_calibrated": n_calibrated,
        "dark_strategy": choice.strategy,
        "dark_exptime_s": choice.exptime_s,
        "dark_flat_strategy": {k: c.strategy for k, c in flat_choices.items()},
        "frames_used": {
            "bias": [str(paths[f]) for f in used["bias"]],
            "dark": [str(paths[f]) for f in choice.frames],
            "dark_flat": {k: [str(paths[f]) for f in c.frames] for k, c in flat_choices.items()},
            "flat": {
                k: [str(paths[f]) for f in used["flat"] if ds["filter"].values[f] == k]
                for k in flat_filters
            },
        },
        "rejected": [
            {"frame": int(f), "type": str(types[f]), "path": str(paths[f]), "reason": reason}
            for f, reason in sorted(rejected.items())
        ],
        "flat_filters": flat_filters,
        "missing_flat_filters": [str(m) for m in missing],
        **masters.bad_counts,
        "notes": notes,
        "arrays": run.written,
        "timings_s": run.timings,
    }
    return summary


def _frame_chunks(data: da.Array):
    """``at(i)``: the delayed ``(y, x)`` plane of frame ``i`` of a ``(frame, y, x)`` array (or the
    ``(y, x)`` array itself), as a chunk whose key every caller shares."""
    if data.ndim == 2:
        whole = data.rechunk(data.shape).to_delayed().ravel()[0]
        return lambda i: whole
    chunks = data.rechunk((1, *data.shape[1:])).to_delayed().ravel()
    return lambda i: chunks[i][0]


def _calibrate_light(
    raw: np.ndarray,
    dark: np.ndarray,
    flat: np.ndarray | None,
    bad_pixels: np.ndarray,
    saturate_adu: float,
    config: CalibrationConfig,
    targets: dict[str, zarr.Array],
    frame: int,
    variance_args: tuple[np.ndarray | None, float, float] | None,
) -> int:
    """Calibrate, flag and clean one light and write it (and its variance) at ``frame``."""
    calibrated, flags = cal.calibrate_frame(
        raw, dark, flat, bad_pixels, saturate_adu=saturate_adu, config=config
    )
    targets["calibrated"][frame] = calibrated
    targets["pixel_flags"][frame] = flags
    if variance_args is not None:
        bias, gain, rdnoise = variance_args
        dark_signal = None if bias is None else dark - bias
        targets["variance"][frame] = cal.variance_frame(
            calibrated, dark_signal, flat, gain, rdnoise
        )
    return frame


# ---------------------------------------------------------------------------------------------
# Gain and read noise: from the headers, checked against (or else taken from) the data
# ---------------------------------------------------------------------------------------------
# `lcdask.gain` measures them from pairs of frames; the calibration writes the values Level 3 is
# to use into the cube's per-frame ``gain_e_adu``/``rdnoise_e`` and where each came from into
# ``gain_source``/``rdnoise_source`` ("header", "flats", "lights", "bias", "darks", "config", or ""
# for none). An earlier calibration's estimates are recognised by those sources and set aside, so
# that a calibration run again judges the headers' own values.

_NOISE_PAIRS = {"read": 4, "flat": 4, "light": 8, "light_check": 3}
"""At most this many pairs of frames of each kind: bias (or dark) pairs for the read noise,
flats, lights when the headers lack a gain, lights when only the headers' value is checked (a
pair of 2048^2 lights costs ~2 s: the sky's gain to ~1% from 3 pairs)."""

_GAIN_FACTOR, _RDNOISE_FACTOR = 1.5, 2.0
"""A header's gain (read noise) is replaced only when the data's estimate differs by more than
this factor either way: grossly wrong (another camera's value, a gain setting), not the few
percent by which a camera's nominal gain can differ from its own."""

_ESTIMATED = ("flats", "lights", "bias", "darks", "config")


def _per_frame(ds: xr.Dataset, name: str, fill: Any) -> np.ndarray:
    """The per-frame values of ``name``, or ``fill`` for every frame when the cube has none."""
    if name in ds.variables:
        return ds[name].values
    return np.full(ds.sizes["frame"], fill, dtype=object if isinstance(fill, str) else float)


def _header_values(ds: xr.Dataset, name: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """The headers' per-frame values of ``name`` (an earlier calibration's estimates removed)
    and the sources recorded before (empty strings when none)."""
    values = _per_frame(ds, name, np.nan).astype(np.float64).copy()
    if source in ds.variables:
        sources = np.array([str(v) for v in ds[source].values], dtype=object)
        values[np.isin(sources, _ESTIMATED)] = np.nan
    else:
        sources = np.full(values.size, "", dtype=object)
    return values, sources


def _consecutive_pairs(
    frames: np.ndarray, times: np.ndarray, n_max: int, same: np.ndarray | None = None
) -> list[tuple[int, int]]:
    """Disjoint pairs of frames adjacent in time (that share ``same``), at most ``n_max``,
    spread over the sequence."""
    order = np.asarray(frames, int)[np.argsort(times[np.asarray(frames, int)], kind="stable")]
    pairs, i = [], 0
    while i + 1 < order.size:
        a, b = int(order[i]), int(order[i + 1])
        if same is None or same[a] == same[b]:
            pairs.append((a, b))
            i += 2
        else:
            i += 1
    if len(pairs) > n_max:
        pairs = [pairs[k] for k in np.linspace(0, len(pairs) - 1, n_max).round().astype(int)]
    return pairs


def _pair_statistics_task(
    raw: zarr.Array,
    pair: tuple[int, int],
    reference: np.ndarray | None,
    bad_pixels: np.ndarray | None,
    saturate_adu: float,
    scale: bool,
    mask_sources: bool,
) -> gain_kernels.PairStatistics:
    """`gain.pair_statistics` of two frames read here (every other box of frames over 2048 px:
    ~1000 boxes or more, a quarter of the work)."""
    a, b = raw[pair[0]], raw[pair[1]]
    return gain_kernels.pair_statistics(
        a,
        b,
        reference=reference,
        mask=None if bad_pixels is None else bad_pixels != 0,
        saturate_adu=saturate_adu,
        scale=scale,
        mask_sources=mask_sources,
        box_step=max(1, min(a.shape) // 1024),
    )


@dataclass
class _PairPlan:
    """Pairs of one kind of frame and how they are measured."""

    pairs: list[tuple[int, int]]
    reference: str | None  # the master subtracted, or None
    scale: bool
    mask_sources: bool


def _measure_pairs(run: _Calibration, plans: dict[str, _PairPlan]) -> dict:
    """Each plan's pairs measured (one task per pair), concatenated per plan."""
    yx = ("y", "x")
    store, task = run.store, _task
    bad = _frame_chunks(_stored(store, "bad_pixels", yx).data)(0)
    refs = {
        name: _frame_chunks(_stored(store, name, yx).data)(0)
        for name in {p.reference for p in plans.values()} - {None}
    }
    saturate = cal.saturation_level(run.raw, run.saturate)
    saturate = np.broadcast_to(
        np.asarray(getattr(saturate, "values", saturate), np.float64), (run.raw.shape[0],)
    )
    tasks, keys = [], []
    for key, plan in plans.items():
        for pair in plan.pairs:
            level = float(min(saturate[pair[0]], saturate[pair[1]]))
            tasks.append(
                task(_pair_statistics_task)(
                    run.raw_array,
                    pair,
                    refs.get(plan.reference),
                    bad,
                    level,
                    plan.scale,
                    plan.mask_sources,
                )
            )
            keys.append(key)
    results = compute(run.client, *tasks, label="calibrate: gain") if tasks else []
    return {
        key: gain_kernels.PairStatistics.concatenate(
            [r for r, k in zip(results, keys, strict=True) if k == key]
        )
        for key in plans
    }


def _measure_noise(
    run: _Calibration, masters: _Masters, used: dict[str, np.ndarray], *, need_gain: bool
) -> dict[str, Any]:
    """Gain (e-/ADU) and read noise (ADU) measured on the night's frames, and how.

    Read noise from pairs of bias frames (else of darks at the lights' exposure: with their
    dark current's noise in it); gain by photon transfer from pairs of flats of one filter, else
    from the sky of pairs of consecutive lights (`lcdask.gain`).
    """
    ds = run.ds
    times = _per_frame(ds, "time_mjd", np.nan).astype(np.float64)
    exptimes = ds["exptime_s"].values.astype(np.float64)
    filters = np.array([str(f) for f in ds["filter"].values], dtype=object)
    choice = masters.choice
    read_from, read_pairs = "bias", _consecutive_pairs(used["bias"], times, _NOISE_PAIRS["read"])
    if not read_pairs and choice.strategy == "matching":
        darks = np.asarray(choice.frames, int)
        read_from = "darks"
        read_pairs = _consecutive_pairs(darks, times, _NOISE_PAIRS["read"], same=exptimes)
    flat_pairs: list[tuple[int, int]] = []
    for name in masters.flat_filters:
        frames = used["flat"][filters[used["flat"]] == name]
        flat_pairs += _consecutive_pairs(frames, times, _NOISE_PAIRS["flat"])
    flat_pairs = flat_pairs[: _NOISE_PAIRS["flat"]]
    bias_ref = "master_bias" if masters.has_bias else None
    stats = _measure_pairs(
        run,
        {
            "read": _PairPlan(read_pairs, None, scale=False, mask_sources=False),
            "flat": _PairPlan(flat_pairs, bias_ref, scale=True, mask_sources=False),
        },
    )
    read_adu, read_err = gain_kernels.read_noise_adu(stats["read"])
    out: dict[str, Any] = {
        "read_noise_adu": _round(read_adu, 3),
        "read_noise_err_adu": _round(read_err, 3),
        "read_noise_from": f"{len(read_pairs)} pair(s) of {read_from}" if read_pairs else "",
        "assumed": [],
    }
    if read_from == "darks" and read_pairs:
        out["assumed"].append("no bias frames: read noise from darks (their dark current in it)")
    read_var = {read_from: read_adu**2} if np.isfinite(read_adu) else {}
    fit = None
    if flat_pairs:
        fit = gain_kernels.fit_gain(
            stats["flat"], read_variance_adu2=read_var.get("bias"), bias_known=masters.has_bias
        )
        out["gain_from"] = f"{len(flat_pairs)} pair(s) of flats"
        out["reference"] = "master bias" if masters.has_bias else "none (bias level unknown)"
    if fit is None or not fit.ok:
        if fit is not None:
            out["flats_fit"] = fit.as_record()
        fit, how = _measure_lights(run, masters, read_var, need_gain=need_gain, times=times)
        out |= how | {"assumed": out["assumed"] + how.pop("assumed", [])}
    if fit is not None:
        out["fit"] = fit.as_record()
        out["gain_e_adu"] = _round(fit.gain_e_adu if fit.ok else np.nan, 4)
        out["gain_err_e_adu"] = _round(fit.gain_err_e_adu if fit.ok else np.nan, 4)
        intercept = fit.read_variance_adu2
        if fit.ok and fit.method == "slope" and np.isfinite(intercept) and not read_var:
            if intercept > 0:
                out["read_noise_adu"] = _round(math.sqrt(intercept), 3)
                out["read_noise_from"] = "the intercept of the lights' photon transfer"
    return out


def _measure_lights(
    run: _Calibration,
    masters: _Masters,
    read_var: dict[str, float],
    *,
    need_gain: bool,
    times: np.ndarray,
) -> tuple[gain_kernels.GainFit | None, dict[str, Any]]:
    """The gain from the sky of pairs of consecutive lights (stars and cosmic rays masked), with
    the master bias (or the master dark of their exposure) subtracted when there is one."""
    ds = run.ds
    same = np.array(
        [f"{e:.3f}|{f}" for e, f in zip(ds["exptime_s"].values, ds["filter"].values, strict=True)],
        dtype=object,
    )
    n_max = _NOISE_PAIRS["light" if need_gain else "light_check"]
    pairs = _consecutive_pairs(run.lights, times, n_max, same=same)
    overscan = any(str(v) for v in _per_frame(ds, "biassec", "")[run.lights])
    if masters.has_bias:
        reference, name, bias_known, var = "master_bias", "master bias", True, read_var.get("bias")
    elif masters.choice.strategy == "matching":
        reference, name, bias_known = "master_dark", "master dark of their exposure", True
        var = read_var.get("darks")
    elif overscan:
        reference, name, bias_known, var = None, "overscan (removed at ingest)", True, None
    else:
        reference, name, bias_known, var = None, "none (bias level unknown)", False, None
    how: dict[str, Any] = {"gain_from": f"{len(pairs)} pair(s) of lights", "reference": name}
    if not pairs:
        how["why"] = "no two consecutive lights of one exposure and filter"
        return None, how
    plan = _PairPlan(pairs, reference, scale=True, mask_sources=True)
    fit = gain_kernels.fit_gain(
        _measure_pairs(run, {"light": plan})["light"], read_variance_adu2=var, bias_known=bias_known
    )
    if not bias_known:
        how["assumed"] = [
            "no bias, darks or overscan: the gain from the slope of the sky's variance against "
            "its level (the unknown bias cancels); the read noise is not measured"
        ]
    return fit, how


def _round(value: float, digits: int) -> float | None:
    return round(float(value), digits) if np.isfinite(value) else None


def _choose(
    header: np.ndarray, estimate: float, how: str, *, factor: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: the header's value, else the estimate; the estimate also where the header's
    is grossly inconsistent with it. Returns the values, their sources and the frames whose
    header value was replaced."""
    values = header.copy()
    sources = np.where(np.isfinite(header), "header", "").astype(object)
    replaced = np.zeros(header.size, bool)
    if np.isfinite(estimate):
        replaced = np.array(
            [
                np.isfinite(h) and not gain_kernels.gain_consistent(h, estimate, factor=factor)
                for h in header
            ],
            bool,
        )
        take = ~np.isfinite(header) | replaced
        values[take] = estimate
        sources[take] = how
    return values, sources, replaced


def _gain_and_read_noise(
    run: _Calibration, masters: _Masters, used: dict[str, np.ndarray]
) -> dict[str, Any]:
    """The gain and read noise Level 3 is to use for the lights, written into the cube.

    The headers' values are kept unless the data contradict them grossly (`_GAIN_FACTOR`,
    `_RDNOISE_FACTOR`; one warning says so); where the headers have none, the estimate
    (`_measure_noise`) is used; `CalibrationConfig.gain_e_adu`/``rdnoise_e`` override both.
    Frames appended to a calibrated cube get the earlier calibration's estimate.
    """
    ds, config, todo = run.ds, run.config, run.todo
    gain_h, gain_src = _header_values(ds, "gain_e_adu", "gain_source")
    rn_h, rn_src = _header_values(ds, "rdnoise_e", "rdnoise_source")
    record: dict[str, Any] = {
        "header_gain_e_adu": _round(np.nanmedian(gain_h[todo]), 4)
        if np.isfinite(gain_h[todo]).any()
        else None,
        "header_rdnoise_e": _round(np.nanmedian(rn_h[todo]), 3)
        if np.isfinite(rn_h[todo]).any()
        else None,
    }
    need_gain = not np.isfinite(gain_h[todo]).all()
    estimate: dict[str, Any] = {}
    if run.previous:  # frames appended: the earlier calibration's estimate
        estimate = dict(run.previous.get("noise", {}).get("estimate", {}))
    elif config.noise_estimate == "auto" and None in (config.gain_e_adu, config.rdnoise_e):
        t0 = time.perf_counter()
        estimate = _measure_noise(run, masters, used, need_gain=need_gain)
        run.timings["gain"] = time.perf_counter() - t0
    est_gain = _nan(estimate.get("gain_e_adu"))
    if estimate and "rdnoise_e" not in estimate:  # with the estimated gain
        estimate["rdnoise_e"] = _round(_nan(estimate.get("read_noise_adu")) * est_gain, 3)
    record["estimate"] = estimate
    how = "flats" if "flats" in str(estimate.get("gain_from", "")) else "lights"
    gain, g_src, g_replaced = _choose(gain_h[todo], est_gain, how, factor=_GAIN_FACTOR)
    if config.gain_e_adu is not None:
        gain[:], g_src[:] = config.gain_e_adu, "config"
    # the read noise in e-: the estimate in ADU times the gain each frame is given
    read_from = str(estimate.get("read_noise_from", ""))
    rn_how = "bias" if "bias" in read_from else ("darks" if "darks" in read_from else "lights")
    est_rn = _nan(estimate.get("read_noise_adu")) * np.where(np.isfinite(gain), gain, np.nan)
    rn = rn_h[todo].copy()
    rn_s = np.where(np.isfinite(rn), "header", "").astype(object)
    rn_replaced = np.zeros(rn.size, bool)
    for i, value in enumerate(est_rn):
        rn_i, src_i, rep_i = _choose(rn[i : i + 1], float(value), rn_how, factor=_RDNOISE_FACTOR)
        rn[i], rn_s[i], rn_replaced[i] = rn_i[0], src_i[0], rep_i[0]
    if config.rdnoise_e is not None:
        rn[:], rn_s[:] = config.rdnoise_e, "config"
    gain_from = str(estimate.get("gain_from", ""))
    _say_replaced(run, "gain", gain_h[todo], g_replaced, est_gain, "e-/ADU", gain_from)
    rn_median = float(np.nanmedian(est_rn)) if np.isfinite(est_rn).any() else np.nan
    _say_replaced(run, "read noise", rn_h[todo], rn_replaced, rn_median, "e-", read_from)
    if not np.isfinite(gain).all():
        run.notes.append(
            "some lights have no gain in their headers and none could be measured: Level 3 "
            "takes 1 e-/ADU for them (set [calibration] gain_e_adu)"
        )
    _write_noise(run, gain, g_src, rn, rn_s, gain_src, rn_src)
    record |= {
        "gain_e_adu": _round(np.nanmedian(gain), 4) if np.isfinite(gain).any() else None,
        "gain_source": _sources(g_src),
        "rdnoise_e": _round(np.nanmedian(rn), 3) if np.isfinite(rn).any() else None,
        "rdnoise_source": _sources(rn_s),
        "n_gain_replaced": int(g_replaced.sum()),
        "n_rdnoise_replaced": int(rn_replaced.sum()),
    }
    return record


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _sources(sources: np.ndarray) -> str:
    """The sources of the lights' values, as one word or a count of each."""
    counts = Counter(str(s) or "none" for s in sources)
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def _say_replaced(run, what, header, replaced, estimate, unit, how: str) -> None:
    """One warning for the header values the data contradict."""
    if not replaced.any():
        return
    values = sorted({round(float(v), 3) for v in header[replaced]})
    line = (
        f"{run.store}: the headers' {what} ({', '.join(f'{v:g}' for v in values)} {unit}) is "
        f"inconsistent with the data's ({estimate:.3g} {unit} from {how}): "
        f"the data's is used for {int(replaced.sum())} light(s)"
    )
    log.warning("%s", line)
    run.notes.append(line)


def _write_noise(run, gain, g_src, rn, rn_s, gain_src_all, rn_src_all) -> None:
    """The lights' values into ``gain_e_adu``/``rdnoise_e`` and their sources into
    ``gain_source``/``rdnoise_source`` (sources first: a crash between leaves estimates that the
    next calibration recognises)."""
    store, todo, ds = run.store, run.todo, run.ds
    for name, values, sources in (
        ("gain_source", g_src, gain_src_all),
        ("rdnoise_source", rn_s, rn_src_all),
    ):
        full = sources.copy()
        header_name = "gain_e_adu" if name == "gain_source" else "rdnoise_e"
        fresh = full == ""
        header = _per_frame(ds, header_name, np.nan).astype(np.float64)
        full[fresh] = np.where(np.isfinite(header[fresh]), "header", "")
        full[todo] = values
        run.writer.write(name, np.array(full, dtype=object), ("frame",), fill_value="")
    run.written += run.writer.commit()
    for name, values in (("gain_e_adu", gain), ("rdnoise_e", rn)):
        full = _per_frame(ds, name, np.nan).astype(np.float64).copy()
        changed = ~((full[todo] == values) | (np.isnan(full[todo]) & np.isnan(values)))
        full[todo] = values
        if name not in ds.variables:
            run.writer.write(name, full, ("frame",), fill_value=np.nan)
            run.written += run.writer.commit()
        elif changed.any():
            cube_io.set_frame_values(store, name, todo[changed], values[changed])
        run.raw = run.raw.assign_coords({name: ("frame", full)})
    cube_io.consolidate(store)


# ---------------------------------------------------------------------------------------------
# Masters: plain numpy tasks that read the raw rows straight from zarr
# ---------------------------------------------------------------------------------------------
# The same operations, in the same float types and order, as the lazy xarray functions of
# `lcdask.calibrate` (`frame_statistics`, `combine_frames`, `master_dark`, `dark_for_frames`,
# `master_flat`, `bad_pixel_map`), so the same bits, without a dask-array graph: one task per
# calibration frame for its statistics, one per block of rows of a master, one per flat for its
# median, a few whole-frame tasks for the flat's normalisation and the bad-pixel map.

_MASTER_STACK_BYTES = 256 * 2**20
"""Upper bound on the frames' rows one combining task holds (raw or float32 values)."""


def _row_blocks(shape: tuple[int, int], stack_bytes: int) -> list[tuple[int, int]]:
    """Row ranges of the combining tasks: at least two (one per worker of a small cluster),
    more when the frames' rows of one range would exceed `_MASTER_STACK_BYTES`."""
    n_rows = shape[0]
    n_blocks = min(n_rows, max(2, math.ceil(stack_bytes / _MASTER_STACK_BYTES)))
    step = math.ceil(n_rows / n_blocks)
    return [(r0, min(r0 + step, n_rows)) for r0 in range(0, n_rows, step)]


def _frame_statistics_task(raw: zarr.Array, frame: int, saturate_adu: float) -> np.ndarray:
    """`calibrate.frame_statistics` of one frame: ``(4,)`` float64."""
    return cal.frame_statistics_kernel(raw[frame : frame + 1], np.array([saturate_adu]))[0]


def _scaled_dark(
    m_dark: np.ndarray, m_bias: np.ndarray, exptime_s: float, dark_exptime_s: float
) -> np.ndarray:
    """One frame's plane of `calibrate.dark_for_frames` when it scales (the scale divided in
    float64 by the float32 exposure, as there)."""
    scale = np.float32(np.float64(exptime_s) / np.float64(np.float32(dark_exptime_s)))
    return (m_bias + (m_dark - m_bias) * scale).astype(np.float32)


def _flat_signal(raw_rows: np.ndarray, dark: np.ndarray) -> np.ndarray:
    """Dark-subtracted flat rows, as `calibrate.master_flat` makes them."""
    return (raw_rows.astype(np.float32) - dark).astype(np.float32)


def _flat_dark(
    m_dark: np.ndarray, m_bias: np.ndarray | None, exptime_s: float, scaled: tuple | None
) -> np.ndarray:
    """What is subtracted from a flat: ``m_dark`` or, when ``scaled`` is
    ``(dark_exptime_s,)``, the dark scaled to the flat's exposure."""
    if scaled is None:
        return m_dark.astype(np.float32, copy=False)
    return _scaled_dark(m_dark, m_bias, exptime_s, scaled[0])


def _flat_median_task(
    raw: zarr.Array,
    frame: int,
    m_dark: np.ndarray,
    m_bias: np.ndarray | None,
    exptime_s: float,
    scaled: tuple | None,
) -> np.float32:
    """`calibrate.frame_medians` of one dark-subtracted flat, as float32."""
    signal = _flat_signal(raw[frame], _flat_dark(m_dark, m_bias, exptime_s, scaled))
    return np.float32(np.nanmedian(signal.reshape(1, -1), axis=-1)[0])


def _combine_rows_task(
    raw: zarr.Array,
    frames: Sequence[int],
    rows: tuple[int, int],
    config: CalibrationConfig,
    kind: str,
    extra: dict[str, Any],
    *arrays: np.ndarray | None,
) -> np.ndarray:
    """Rows ``rows`` of a master, from the frames' rows read here.

    ``kind``: ``"raw"`` (bias, matching or nearest darks: the raw values), ``"scaled"`` (dark
    current of ``frames``, scaled to ``extra["exptime_s"]`` plus bias; ``arrays`` = bias rows),
    ``"flat"`` (dark-subtracted flats divided by their medians; ``arrays`` = dark rows and bias
    rows (or None), ``extra`` the medians, exposures and the scaling); the flat's rows are not
    yet normalised by the master's median.
    """
    r0, r1 = rows
    kwargs = {
        "method": config.combine,
        "clip_sigma": config.clip_sigma,
        "iterations": config.clip_iterations,
    }
    if kind == "raw":
        stack = np.stack([raw[f, r0:r1] for f in frames])
        return cal.combine_kernel(np.moveaxis(stack, 0, -1), **kwargs)
    if kind == "scaled":
        (bias,) = arrays
        stack = np.empty((len(frames), r1 - r0, raw.shape[2]), np.float32)
        for plane, frame, exptime in zip(stack, frames, extra["exptimes"], strict=True):
            np.divide(raw[frame, r0:r1].astype(np.float32) - bias, np.float32(exptime), out=plane)
        rate = cal.combine_kernel(np.moveaxis(stack, 0, -1), **kwargs)
        return (bias + rate * np.float32(extra["exptime_s"])).astype(np.float32)
    m_dark, m_bias = arrays
    stack = np.empty((len(frames), r1 - r0, raw.shape[2]), np.float32)
    for plane, frame, exptime, median in zip(
        stack, frames, extra["exptimes"], extra["medians"], strict=True
    ):
        dark = _flat_dark(m_dark, m_bias, exptime, extra["scaled"])
        np.divide(_flat_signal(raw[frame, r0:r1], dark), median, out=plane)
    return cal.combine_kernel(np.moveaxis(stack, 0, -1), **kwargs)


def _stack_rows(*blocks: np.ndarray) -> np.ndarray:
    """A master from its blocks of rows."""
    return np.concatenate(blocks, axis=0)


def _normalise_flat(*blocks: np.ndarray) -> np.ndarray:
    """The master flat from its combined rows: divided by its median (`calibrate.master_flat`)."""
    combined = np.concatenate(blocks, axis=0)
    return (combined / np.float32(np.nanmedian(combined))).astype(np.float32)


def _hot_pixels_task(
    m_dark: np.ndarray, m_bias: np.ndarray | None, config: CalibrationConfig
) -> np.ndarray:
    """The HOT bits of the bad-pixel map from the dark signal (``m_dark - m_bias``)."""
    dark_signal = m_dark if m_bias is None else m_dark - m_bias
    return cal.hot_pixel_bits(dark_signal, config=config)


def _dead_pixels_task(flat: np.ndarray, config: CalibrationConfig) -> np.ndarray:
    """The DEAD bits of the bad-pixel map from one master flat."""
    return cal.dead_pixel_bits(flat, config=config)


def _bad_pixels_task(
    hot: np.ndarray | None, config: CalibrationConfig, *dead: np.ndarray
) -> np.ndarray:
    """`calibrate.bad_pixel_map` of the dark with each flat (or none), OR-ed."""
    out = None
    for dead_i in dead or [None]:
        parts = [m for m in (hot, dead_i) if m is not None]
        mask = parts[0] | parts[1] if len(parts) == 2 else parts[0].copy()
        mask = cal.with_bad_column_bits(mask, config=config)
        out = mask if out is None else out | mask
    return out


def _write_task(target: zarr.Array, value: np.ndarray) -> None:
    """Write a whole array (a master) into its zarr array."""
    target[...] = value


def _write_bad_pixels_task(
    target: zarr.Array, bad_pixels: np.ndarray | None, shape: tuple[int, int]
) -> dict[str, int]:
    """Write the bad-pixel map (zeros when there is none) and count its kinds of bad pixels."""
    if bad_pixels is None:
        bad_pixels = np.zeros(shape, np.uint8)
    target[...] = bad_pixels
    return {
        "n_hot_pixels": int(np.count_nonzero(bad_pixels & PixelFlag.HOT)),
        "n_dead_pixels": int(np.count_nonzero(bad_pixels & PixelFlag.DEAD)),
        "n_bad_columns": int(np.count_nonzero((bad_pixels & PixelFlag.BAD_COLUMN).any(axis=0))),
    }


def _flag_rejected(store: Path, ds: xr.Dataset, rejected: dict[int, str]) -> None:
    """Flag the calibration frames left out REJECTED, with their reason, and say so (once each)."""
    flags = ds["flags"].values.astype(np.int64)
    reasons = np.array([str(r) for r in ds["flag_reason"].values], dtype=object)
    new_flags, new_reasons = flags.copy(), reasons.copy()
    was = (flags & FrameFlag.REJECTED) != 0  # from an earlier calibration of this cube
    new_flags[was] &= ~int(FrameFlag.REJECTED)
    new_reasons[was] = ""
    paths, types = ds["path"].values, ds["frame_type"].values
    for frame, reason in sorted(rejected.items()):
        new_flags[frame] |= FrameFlag.REJECTED
        new_reasons[frame] = (
            f"{paths[frame]}: {types[frame]} frame not used in the masters: {reason}"
        )
    said = [Skipped(str(paths[f]), new_reasons[f]) for f in sorted(rejected)]
    for line in reason_lines(said, what="calibration frames"):  # a count when many share one
        log.warning("%s", line)
    changed = np.flatnonzero((new_flags != flags) | (new_reasons != reasons))
    if len(changed):
        cube_io.set_frame_values(store, "flags", changed, new_flags[changed])
        cube_io.set_frame_values(store, "flag_reason", changed, new_reasons[changed])


_RECORDED = ("dark_strategy", "n_hot_pixels", "n_dead_pixels", "n_bad_columns", "notes", "noise")


def run_calibrate(ctx: RunContext) -> dict:
    """The whole cube calibrated; its summary's main lines for ``run.json``."""
    summary = calibrate_cube(ctx.cube_path, client=ctx.client, config=ctx.config.calibration)
    return {k: summary[k] for k in _RECORDED} | {"rejected": summary["rejected"]}


def append_calibrate(ctx: RunContext) -> dict:
    """The appended lights calibrated with the earlier masters."""
    frames = ctx.appending.frames
    log.info("calibrate: %d new frame(s)", len(frames))
    calibrate_cube(ctx.cube_path, client=ctx.client, config=ctx.config.calibration, frames=frames)
    return {}
