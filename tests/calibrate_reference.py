"""lcdask's calibration as lazy xarray expressions over a whole cube: the reference of the tests.

These were the first implementation of the masters, maps and calibrated frames (reductions along
``frame`` with `xarray.apply_ufunc`); the pipeline now computes the same with numpy tasks
that read rows of the cube (`lcdask.stages.calibrate.calibrate_cube`), and
tests/test_calibrate.py checks it against these. They live with the tests (issue 16: one
implementation per algorithm in the package).
"""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import xarray as xr

from lcdask.calibrate import (
    _STATIC_BAD,
    FRAME_STATISTICS,
    CalibrationConfig,
    DarkChoice,
    PixelFlag,
    _clean_in_place,
    bad_pixel_kernel,
    combine_kernel,
    frame_statistics_kernel,
    saturation_level,
)

DEFAULT_CONFIG = CalibrationConfig()
ROWS_PER_CHUNK = 256
"""Rows reduced together by `combine_frames` (was ``CalibrationConfig.rows_per_chunk``)."""


def frame_statistics(frames: xr.DataArray, saturate_adu: xr.DataArray | float) -> xr.DataArray:
    """Per-frame robust statistics, lazily (one task per frame).

    Parameters
    ----------
    frames : xarray.DataArray
        ``(frame, y, x)`` raw pixels.
    saturate_adu : xarray.DataArray or float
        Saturation level per frame (along ``frame``) or for all.

    Returns
    -------
    xarray.DataArray
        ``(frame, statistic)`` float64 with ``statistic`` = `FRAME_STATISTICS`.
    """
    frames = frames.chunk({"y": -1, "x": -1}) if frames.chunks else frames
    result = xr.apply_ufunc(
        frame_statistics_kernel,
        frames,
        saturate_adu,
        input_core_dims=[["y", "x"], []],
        output_core_dims=[["statistic"]],
        dask="parallelized",
        output_dtypes=[np.float64],
        dask_gufunc_kwargs={"output_sizes": {"statistic": len(FRAME_STATISTICS)}},
    )
    return result.assign_coords(statistic=list(FRAME_STATISTICS))


def combine_frames(
    frames: xr.DataArray,
    *,
    config: CalibrationConfig = DEFAULT_CONFIG,
    rows_per_chunk: int = ROWS_PER_CHUNK,
) -> xr.DataArray:
    """Combine frames into a master (y, x), lazily.

    The frames are rechunked so that ``frame`` is whole and ``y`` is cut into
    ``rows_per_chunk`` rows; each chunk is reduced by `combine_kernel`.

    Parameters
    ----------
    frames : xarray.DataArray
        ``(frame, y, x)``.
    config : CalibrationConfig, optional
        ``combine``, ``clip_sigma``, ``clip_iterations``.
    rows_per_chunk : int, optional
        Rows of each chunk (``frame`` whole in it).

    Returns
    -------
    xarray.DataArray
        ``(y, x)`` float32.
    """
    if frames.sizes["frame"] == 0:
        raise ValueError("combine_frames needs at least one frame; got an empty selection")
    if frames.chunks:
        frames = frames.chunk({"frame": -1, "y": rows_per_chunk, "x": -1})
    return xr.apply_ufunc(
        combine_kernel,
        frames,
        input_core_dims=[["frame"]],
        dask="parallelized",
        output_dtypes=[np.float32],
        kwargs={
            "method": config.combine,
            "clip_sigma": config.clip_sigma,
            "iterations": config.clip_iterations,
        },
    )


def frame_medians(frames: xr.DataArray) -> xr.DataArray:
    """Median of each frame (finite pixels), lazily: ``(frame,)`` float64."""
    frames = frames.chunk({"y": -1, "x": -1}) if frames.chunks else frames
    return xr.apply_ufunc(
        lambda a: np.nanmedian(a.reshape(*a.shape[:-2], -1), axis=-1),
        frames,
        input_core_dims=[["y", "x"]],
        dask="parallelized",
        output_dtypes=[np.float64],
    )


def master_dark(
    raw: xr.DataArray,
    choice: DarkChoice,
    master_bias: xr.DataArray | None,
    *,
    config: CalibrationConfig = DEFAULT_CONFIG,
) -> xr.DataArray:
    """The master dark for `choice`, lazily: what to subtract from a frame of its exposure.

    Parameters
    ----------
    raw : xarray.DataArray
        ``(frame, y, x)`` the cube's raw pixels (with ``exptime_s`` on ``frame``).
    choice : DarkChoice
        From `choose_dark`.
    master_bias : xarray.DataArray or None
        ``(y, x)``.
    config : CalibrationConfig, optional

    Returns
    -------
    xarray.DataArray
        ``(y, x)`` float32 (zeros for strategy "none").
    """
    if choice.strategy in ("matching", "nearest"):
        return combine_frames(raw.sel(frame=list(choice.frames)), config=config)
    if choice.strategy == "scaled":
        darks = raw.sel(frame=list(choice.frames))
        rate = (darks.astype(np.float32) - master_bias) / darks["exptime_s"].astype(np.float32)
        return (
            master_bias + combine_frames(rate, config=config) * np.float32(choice.exptime_s)
        ).astype(np.float32)
    if choice.strategy == "bias_only":
        return master_bias
    return xr.zeros_like(raw.isel(frame=0, drop=True), dtype=np.float32)


def master_flat(
    flats: xr.DataArray, dark: xr.DataArray, *, config: CalibrationConfig = DEFAULT_CONFIG
) -> xr.DataArray:
    """One master flat from flats of one filter, lazily: dark-subtracted, normalised to median 1.

    Each flat is dark-subtracted and divided by its median before the combination (so that
    twilight flats of different levels agree), and the master is divided by its median again.

    Parameters
    ----------
    flats : xarray.DataArray
        ``(frame, y, x)`` raw flats of one filter.
    dark : xarray.DataArray
        ``(frame, y, x)`` or ``(y, x)``: what to subtract (`dark_for_frames`).
    config : CalibrationConfig, optional

    Returns
    -------
    xarray.DataArray
        ``(y, x)`` float32, median 1.
    """
    signal = (flats.astype(np.float32) - dark).astype(np.float32)
    normalised = signal / frame_medians(signal).reset_coords(drop=True).astype(np.float32)
    combined = combine_frames(normalised, config=config)
    median = xr.apply_ufunc(
        lambda a: np.float32(np.nanmedian(a)),
        combined.chunk({"y": -1, "x": -1}) if combined.chunks else combined,
        input_core_dims=[["y", "x"]],
        dask="parallelized",
        output_dtypes=[np.float32],
    )
    return (combined / median).astype(np.float32)


def bad_pixel_map(
    dark_signal: xr.DataArray | None,
    flat: xr.DataArray | None,
    *,
    config: CalibrationConfig = DEFAULT_CONFIG,
) -> xr.DataArray:
    """The static bad-pixel bitmask (y, x) uint8, lazily (see `bad_pixel_kernel`).

    Parameters
    ----------
    dark_signal : xarray.DataArray or None
        ``(y, x)`` master dark minus bias.
    flat : xarray.DataArray or None
        ``(y, x)`` one normalised master flat (several filters: combine their masks with ``|``).
    config : CalibrationConfig, optional

    Returns
    -------
    xarray.DataArray
        ``(y, x)`` uint8 `PixelFlag` bits.
    """
    inputs = [a for a in (dark_signal, flat) if a is not None]
    if not inputs:
        raise ValueError("bad_pixel_map needs a dark signal or a flat; both are None")
    whole = [a.chunk({"y": -1, "x": -1}) if a.chunks else a for a in inputs]
    has_dark, has_flat = dark_signal is not None, flat is not None

    def kernel(*arrays: np.ndarray) -> np.ndarray:
        arrays = list(arrays)
        dark = arrays.pop(0) if has_dark else None
        flt = arrays.pop(0) if has_flat else None
        return bad_pixel_kernel(dark, flt, config=config)

    return xr.apply_ufunc(
        kernel,
        *whole,
        input_core_dims=[["y", "x"]] * len(whole),
        output_core_dims=[["y", "x"]],
        dask="parallelized",
        output_dtypes=[np.uint8],
    )


def calibrate_frames(raw: xr.DataArray, dark: xr.DataArray, flat: xr.DataArray) -> xr.DataArray:
    """``(raw - dark) / flat`` as a lazy, blockwise float32 expression.

    Pixels where the flat is not positive become NaN.

    Parameters
    ----------
    raw : xarray.DataArray
        ``(frame, y, x)`` raw lights.
    dark : xarray.DataArray
        ``(frame, y, x)`` or ``(y, x)`` from `dark_for_frames`.
    flat : xarray.DataArray
        ``(frame, y, x)`` or ``(y, x)``, normalised (`flat_for_frames`).

    Returns
    -------
    xarray.DataArray
        ``(frame, y, x)`` float32, named ``calibrated``.
    """
    safe_flat = flat.where(flat > 0)
    out = (raw.astype(np.float32) - dark) / safe_flat
    return out.astype(np.float32).rename("calibrated")


def pixel_flags(
    raw: xr.DataArray, bad_pixels: xr.DataArray, saturate_adu: xr.DataArray | float | None = None
) -> xr.DataArray:
    """Per-frame pixel flags before cleaning: static bad pixels, saturated, non-finite (lazy).

    Parameters
    ----------
    raw : xarray.DataArray
        ``(frame, y, x)`` raw lights.
    bad_pixels : xarray.DataArray
        ``(y, x)`` uint8 from `bad_pixel_map`.
    saturate_adu : xarray.DataArray, float or None, optional
        Per-frame (``frame``) or common saturation level; missing values fall back to the
        integer type's maximum (no saturation flag for float data without a level).

    Returns
    -------
    xarray.DataArray
        ``(frame, y, x)`` uint8 `PixelFlag` bits, named ``pixel_flags``.
    """
    saturate = saturation_level(raw, saturate_adu)
    saturated = (raw >= saturate).astype(np.uint8) * np.uint8(PixelFlag.SATURATED)
    flags = saturated | bad_pixels.astype(np.uint8)
    if raw.dtype.kind == "f":
        nonfinite = (~np.isfinite(raw)).astype(np.uint8) * np.uint8(PixelFlag.NONFINITE)
        flags = flags | nonfinite
    return flags.astype(np.uint8).transpose("frame", "y", "x").rename("pixel_flags")


def variance(
    calibrated: xr.DataArray,
    dark: xr.DataArray,
    master_bias: xr.DataArray | None,
    flat: xr.DataArray,
    gain_e_adu: xr.DataArray | float,
    rdnoise_e: xr.DataArray | float,
) -> xr.DataArray:
    """Variance (ADU^2) of each calibrated pixel from photon and read noise, lazily.

    ``var = (max(s * flat + dark - bias, 0) / g + (rn / g)^2) / flat^2``: the electrons collected
    (sky, stars and dark current) are Poisson, the read noise adds; the noise of the masters is
    neglected. Without a bias the dark's level (bias included) is not counted as signal, so the
    dark shot noise is left out. A missing gain counts as 1 e-/ADU and a missing read noise as 0.

    Parameters
    ----------
    calibrated : xarray.DataArray
        ``(frame, y, x)`` from `calibrate_frames`.
    dark : xarray.DataArray
        What was subtracted (`dark_for_frames`).
    master_bias : xarray.DataArray or None
    flat : xarray.DataArray
        The flat used.
    gain_e_adu, rdnoise_e : xarray.DataArray or float
        Per frame (``frame``) or common.

    Returns
    -------
    xarray.DataArray
        ``(frame, y, x)`` float32, named ``variance``.
    """
    gain = gain_e_adu.fillna(1.0) if isinstance(gain_e_adu, xr.DataArray) else gain_e_adu
    rdnoise = rdnoise_e.fillna(0.0) if isinstance(rdnoise_e, xr.DataArray) else rdnoise_e
    dark_signal = dark if master_bias is None else dark - master_bias
    if master_bias is None:
        dark_signal = xr.zeros_like(dark)
    electrons = (calibrated * flat + dark_signal).clip(min=0) / gain
    var = (electrons + (rdnoise / gain) ** 2) / flat**2
    return var.astype(np.float32).transpose("frame", "y", "x").rename("variance")


def clean_frame(
    image: np.ndarray,
    bad: np.ndarray,
    *,
    method: str = "interpolate",
    sigma_px: float = 1.0,
    size_px: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Replace bad pixels of one frame (numpy).

    ``interpolate``: normalised convolution -- the Gaussian-weighted mean of the good neighbours
    within 3 sigma (weights renormalised over the good ones; at least 10% of the window's weight
    must be good). ``median``: median of the good neighbours in a ``size_px`` square. ``mask``:
    NaN. Non-finite pixels are always treated as bad.

    Parameters
    ----------
    image : numpy.ndarray
        ``(y, x)`` calibrated values.
    bad : numpy.ndarray
        ``(y, x)`` bool, pixels to replace.
    method : {"interpolate", "median", "mask", "none"}, optional
    sigma_px : float, optional
        Interpolation kernel width.
    size_px : int, optional
        Local-median window side (odd).

    Returns
    -------
    cleaned : numpy.ndarray
        ``(y, x)`` float32.
    flags : numpy.ndarray
        ``(y, x)`` uint8: INTERPOLATED where replaced, MASKED where left NaN.
    """
    image = np.asarray(image, dtype=np.float32)
    bad = np.asarray(bad, dtype=bool) | ~np.isfinite(image)
    flags = np.zeros(image.shape, np.uint8)
    if method == "none" or not bad.any():
        flags[~np.isfinite(image)] = PixelFlag.MASKED
        return image, flags
    out = image.copy()
    _clean_in_place(out, bad, flags, method=method, sigma_px=sigma_px, size_px=size_px)
    return out, flags


def _clean_depth(config: CalibrationConfig) -> int:
    if config.clean == "interpolate":
        return max(1, math.ceil(3 * config.clean_sigma_px))
    if config.clean == "median":
        return config.clean_size_px // 2
    return 0


def clean_bad_pixels(
    calibrated: xr.DataArray,
    flags: xr.DataArray,
    *,
    config: CalibrationConfig = DEFAULT_CONFIG,
) -> tuple[xr.DataArray, xr.DataArray]:
    """Clean the static bad pixels and non-finite values of calibrated frames, lazily.

    One `dask.array.map_overlap` call; the overlap depth is the kernel's reach (3 sigma of the
    interpolation kernel, or half the median window), so the result does not depend on chunking.
    Saturated pixels are flagged but not replaced.

    Parameters
    ----------
    calibrated : xarray.DataArray
        ``(frame, y, x)`` from `calibrate_frames`.
    flags : xarray.DataArray
        ``(frame, y, x)`` uint8 from `pixel_flags`.
    config : CalibrationConfig, optional
        ``clean``, ``clean_sigma_px``, ``clean_size_px``.

    Returns
    -------
    cleaned : xarray.DataArray
        ``(frame, y, x)`` float32, named ``calibrated``.
    flags : xarray.DataArray
        ``(frame, y, x)`` uint8, the input flags plus INTERPOLATED / MASKED.
    """
    calibrated = calibrated.transpose("frame", "y", "x")
    flags = flags.transpose("frame", "y", "x")
    depth = _clean_depth(config)
    static = np.uint8(_STATIC_BAD)

    def kernel(image: np.ndarray, flag: np.ndarray) -> np.ndarray:
        out = np.empty(image.shape, np.float32)
        for i in range(image.shape[0]):
            out[i] = clean_frame(
                image[i],
                (flag[i] & static) != 0,
                method=config.clean,
                sigma_px=config.clean_sigma_px,
                size_px=config.clean_size_px,
            )[0]
        return out

    data = calibrated.data
    if not isinstance(data, da.Array):
        data = da.from_array(data, chunks=(1, -1, -1))
    flag_data = da.asarray(flags.data).rechunk(data.chunks)
    cleaned_data = da.map_overlap(
        kernel,
        data,
        flag_data,
        depth={0: 0, 1: depth, 2: depth},
        boundary="none",
        dtype=np.float32,
    )
    cleaned = calibrated.copy(data=cleaned_data).rename("calibrated")
    finite = np.isfinite(cleaned)
    replaced = ((flags & static) != 0) | ~np.isfinite(calibrated)
    interpolated = (replaced & finite).astype(np.uint8) * np.uint8(PixelFlag.INTERPOLATED)
    if config.clean not in ("interpolate", "median"):
        interpolated = xr.zeros_like(flags)
    masked = (~finite).astype(np.uint8) * np.uint8(PixelFlag.MASKED)
    new_flags = (flags | interpolated | masked).astype(np.uint8).rename("pixel_flags")
    return cleaned, new_flags
