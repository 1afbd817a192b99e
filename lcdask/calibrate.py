"""Level 1 calibration on the frame cube: masters, bad-pixel maps, calibrated frames, cleaning.

Every function here is pure and lazy: it takes xarray objects backed by dask (or numpy) and returns
xarray objects whose dask graph does the work; nothing is computed, read or written here. The
calibration stage (`lcdask.stages.calibrate.calibrate_cube`) computes the frame statistics,
chooses the frames and writes the products.

The numpy kernels (``*_kernel`` and `clean_frame`) work on plain arrays and are wrapped once with
`xarray.apply_ufunc` (reductions along ``frame``) or `dask.array.map_overlap` (cleaning).

Calibration follows ``s = (raw - m_d) / flat`` with ``flat = (m_f - m_d^f) / median``: the master
flat is stored already dark-subtracted and normalised to a median of 1.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntFlag

import numpy as np
import xarray as xr

from lcdask.config import CalibrationConfig

__all__ = [
    "FRAME_STATISTICS",
    "CalibrationConfig",
    "DarkChoice",
    "PixelFlag",
    "choose_dark",
    "combine_kernel",
    "dark_current",
    "dark_for_frames",
    "flat_for_frames",
    "nanmedian_first_axis",
    "reject_frames",
]

FRAME_STATISTICS = ("median", "std", "saturated_fraction", "bright_fraction")
"""Per-frame statistics from `frame_statistics`: robust level and spread (1.4826 MAD), the
fraction of pixels at or above saturation, and the fraction more than 5 robust sigma above the
median (stars, light leaks, cosmic-ray showers)."""

_BRIGHT_SIGMA = 5.0


class PixelFlag(IntFlag):
    """Per-pixel quality bits (uint8): ``bad_pixels`` (y, x) holds the first three, the per-frame
    ``pixel_flags`` (frame, y, x) all of them."""

    OK = 0
    HOT = 1
    """Dark current far above the detector's (robust MAD threshold on the master dark)."""
    DEAD = 2
    """Low response: master flat far below the smoothed flat (dead or cold pixel)."""
    BAD_COLUMN = 4
    """Part of a column whose pixels are hot or dead as a whole."""
    SATURATED = 8
    """The raw value is at or above the frame's saturation level."""
    NONFINITE = 16
    """The raw value is NaN or infinite."""
    INTERPOLATED = 32
    """The calibrated value was replaced by cleaning (interpolation or local median)."""
    MASKED = 64
    """The calibrated value is NaN (masked by configuration, or no good neighbour to clean from)."""


_STATIC_BAD = PixelFlag.HOT | PixelFlag.DEAD | PixelFlag.BAD_COLUMN


# ---------------------------------------------------------------------------------------------
# Frame statistics and rejection of outlier calibration frames
# ---------------------------------------------------------------------------------------------
def frame_statistics_kernel(image: np.ndarray, saturate_adu: float = np.inf) -> np.ndarray:
    """Robust statistics of one frame (see `FRAME_STATISTICS`).

    Parameters
    ----------
    image : numpy.ndarray
        ``(..., y, x)`` pixels; leading axes are frames.
    saturate_adu : float or numpy.ndarray
        Saturation level (one per leading index, or one for all).

    Returns
    -------
    numpy.ndarray
        ``(..., 4)`` float64: median, std, saturated_fraction, bright_fraction.
    """
    lead = image.shape[:-2]
    # 8- and 16-bit integers are exact in float32 and always finite: used as they are (no
    # float32 copy, no finite test), with the bright limit rounded to float32 as the float32
    # comparison would, the results are the same
    exact = image.dtype.kind in "ui" and image.dtype.itemsize <= 2
    flat = image.reshape(*lead, -1)
    if not exact:
        flat = flat.astype(np.float32, copy=False)
    saturate = np.broadcast_to(np.asarray(saturate_adu, dtype=np.float64), lead)
    out = np.empty((*lead, len(FRAME_STATISTICS)))
    for index in np.ndindex(*lead):
        values = flat[index]
        if not exact:
            finite = np.isfinite(values)
            values = values if finite.all() else values[finite]
        if values.size == 0:
            out[index] = np.nan
            continue
        if exact:
            out[index] = _integer_statistics(values, saturate[index])
            continue
        # median and MAD from at most ~1M pixels (a regular subsample): the level to 0.1% of
        # sigma, 4x faster on a 2048^2 frame; the fractions below count every pixel
        sample = values[:: max(1, values.size // 1_000_000)]
        median = float(np.median(sample))
        std = 1.4826 * float(np.median(np.abs(sample - median)))
        out[index] = (
            median,
            std,
            np.count_nonzero(values >= saturate[index]) / values.size,
            np.count_nonzero(values > np.float32(median + _BRIGHT_SIGMA * max(std, 1e-12)))
            / values.size,
        )
    return out


def _integer_statistics(values: np.ndarray, saturate_adu: float) -> tuple[float, ...]:
    """`frame_statistics_kernel` of one frame of 8- or 16-bit integers, the same numbers.

    The medians of the subsample and of its absolute deviations come from its histogram (the
    same order statistics as ``np.median``'s partition, averaged the same way, ~5x faster), and
    the two counts compare the integers with the integer limit that the float comparisons
    amount to (no float copy of the frame).
    """
    sample = values[:: max(1, values.size // 1_000_000)]
    offset = int(sample.min())
    counts = np.bincount(sample.astype(np.intp) - offset)
    n = sample.size
    ranks = ((n - 1) // 2, n // 2)
    low, high = (offset + int(np.searchsorted(np.cumsum(counts), k, side="right")) for k in ranks)
    median = (low + high) / 2
    present = np.flatnonzero(counts)
    deviation = np.abs((present + offset) - median)
    order = np.argsort(deviation, kind="stable")
    cumulative = np.cumsum(counts[present][order])
    d_low, d_high = (deviation[order][np.searchsorted(cumulative, k, side="right")] for k in ranks)
    std = 1.4826 * float((d_low + d_high) / 2)
    bright = np.float32(median + _BRIGHT_SIGMA * max(std, 1e-12))
    return (
        median,
        std,
        _count_at_least(values, saturate_adu) / values.size,
        _count_above(values, bright) / values.size,
    )


def _count_at_least(values: np.ndarray, limit: float) -> int:
    """``np.count_nonzero(values >= limit)`` of integers, compared as integers."""
    info = np.iinfo(values.dtype)
    if np.isnan(limit) or limit > info.max:
        return 0
    if limit <= info.min:
        return values.size
    return int(np.count_nonzero(values >= values.dtype.type(math.ceil(limit))))


def _count_above(values: np.ndarray, limit: float) -> int:
    """``np.count_nonzero(values > limit)`` of integers, compared as integers."""
    info = np.iinfo(values.dtype)
    if np.isnan(limit) or limit >= info.max:
        return 0
    if limit < info.min:
        return values.size
    return int(np.count_nonzero(values > values.dtype.type(math.floor(limit))))


def reject_frames(
    stats: xr.DataArray, *, kind: str, config: CalibrationConfig = CalibrationConfig()
) -> dict[int, str]:
    """Choose the outlier frames of one group of calibration frames (computed statistics).

    Rules, in order (the first that applies gives the reason):

    1. more than ``max_saturated_fraction`` of the pixels saturated (any kind);
    2. for bias and darks (groups of 3 or more), a level off the group's median by more than
       ``reject_sigma`` x max(1.4826 MAD of the medians, 0.5 x median pixel sigma, 0.5 ADU) --
       a light leak,
       a wrong exposure; flats are exempt (twilight levels change from flat to flat);
    3. (groups of 3 or more) a pixel spread, relative to the level for flats, more than 1.5 times
       the group's median -- a gradient or glow;
    4. (groups of 3 or more) a fraction of pixels more than 5 sigma above the median larger than
       3 times the group's median plus 1e-3 -- stars in a flat, a leak spot in a dark.

    Parameters
    ----------
    stats : xarray.DataArray
        ``(frame, statistic)`` computed values from `frame_statistics`, for one group.
    kind : {"bias", "dark", "flat"}
        The frame type of the group.
    config : CalibrationConfig, optional

    Returns
    -------
    dict
        ``{frame coordinate value: reason}`` of the frames not to use.
    """
    values = {
        name: np.asarray(stats.sel(statistic=name).values, float) for name in FRAME_STATISTICS
    }
    frame_ids = [int(f) for f in stats["frame"].values]
    n = len(frame_ids)
    spread = values["std"] / np.abs(values["median"]) if kind == "flat" else values["std"]
    level_med = np.nanmedian(values["median"]) if n else np.nan
    level_scale = max(
        1.4826 * float(np.nanmedian(np.abs(values["median"] - level_med))) if n else 0.0,
        0.5 * float(np.nanmedian(values["std"])) if n else 0.0,
        0.5,  # ADU: medians of integer data move in steps of 0.5-1 ADU
    )
    spread_med = float(np.nanmedian(spread)) if n else np.nan
    bright_med = float(np.nanmedian(values["bright_fraction"])) if n else np.nan
    rejected: dict[int, str] = {}
    for i, frame in enumerate(frame_ids):
        sat = values["saturated_fraction"][i]
        if not np.isfinite(values["median"][i]):
            rejected[frame] = f"{kind} frame has no finite pixels"
        elif sat > config.max_saturated_fraction:
            rejected[frame] = (
                f"saturated {kind}: {100 * sat:.2f}% of pixels at or above saturation "
                f"(limit {100 * config.max_saturated_fraction:.2f}%)"
            )
        elif n < 3:
            continue
        elif (
            kind != "flat"
            and abs(values["median"][i] - level_med) > config.reject_sigma * level_scale
        ):
            rejected[frame] = (
                f"{kind} level {values['median'][i]:.1f} ADU is off the group's median "
                f"{level_med:.1f} "
                f"by {abs(values['median'][i] - level_med) / level_scale:.0f} sigma "
                f"(limit {config.reject_sigma:g}): light leak or wrong exposure?"
            )
        elif spread[i] > 1.5 * spread_med:
            rejected[frame] = (
                f"{kind} pixel spread {spread[i]:.4g} is {spread[i] / spread_med:.1f}x the group's "
                f"median {spread_med:.4g} (limit 1.5x): gradient, glow or light leak?"
            )
        elif values["bright_fraction"][i] > 3 * bright_med + 1e-3:
            rejected[frame] = (
                f"{kind} has {100 * values['bright_fraction'][i]:.2f}% of pixels more than "
                f"{_BRIGHT_SIGMA:g} sigma above its median (group median "
                f"{100 * bright_med:.2f}%): stars or a light leak?"
            )
    return rejected


# ---------------------------------------------------------------------------------------------
# Combination along frame
# ---------------------------------------------------------------------------------------------
def nanmedian_first_axis(
    stack: np.ndarray, finite: np.ndarray | None = None, has_nan: bool | None = None
) -> np.ndarray:
    """Median along the first (short) axis, NaN ignored: by one sort.

    ``np.median`` over a short first axis partitions pixel by pixel (2-3x slower than sorting
    the whole stack along that axis, which numpy vectorises), and ``np.nanmedian`` goes through
    masked arrays (10x slower); NaN sort last, so the median of the ``n`` finite values of a
    pixel sits at ``(n - 1) // 2`` and ``n // 2``.

    Parameters
    ----------
    stack : numpy.ndarray
        ``(n, ...)`` values, NaN where missing.
    finite, has_nan : optional
        ``np.isfinite(stack)`` and whether any is False, when the caller has them.

    Returns
    -------
    numpy.ndarray
        The median of each pixel's finite values; NaN where it has none.
    """
    if finite is None:
        finite = np.isfinite(stack)
    if has_nan is None:
        has_nan = not bool(finite.all())
    ordered = np.sort(stack, axis=0)
    if not has_nan:
        n = stack.shape[0]
        return 0.5 * (ordered[(n - 1) // 2] + ordered[n // 2])
    n = finite.sum(axis=0)
    low = np.take_along_axis(ordered, np.maximum((n - 1) // 2, 0)[None], axis=0)[0]
    high = np.take_along_axis(ordered, (n // 2)[None], axis=0)[0]
    return np.where(n > 0, 0.5 * (low + high), np.nan)


_BLOCK_PIXELS = 32768
"""Pixels per block of the frame-wise kernels: ``n`` float32 planes of a block and their
temporaries stay in a core's L2 cache."""


@functools.lru_cache(maxsize=64)
def _selection_network(n: int, ranks: tuple[int, ...]) -> tuple[tuple[int, int, bool, bool], ...]:
    """The compare-exchange steps that put the values of ``ranks`` (0 = smallest) of ``n`` in place.

    Batcher's odd-even merge sort for the next power of two, less the comparators that touch the
    padding (padded with +inf, they never move anything) and, walking back from the outputs
    wanted, less those whose results are never read.

    Parameters
    ----------
    n : int
        Number of values.
    ranks : tuple of int
        Sorted positions wanted.

    Returns
    -------
    tuple
        ``(a, b, need_min, need_max)`` steps with ``a < b``: the minimum goes to ``a`` (when
        ``need_min``) and the maximum to ``b`` (when ``need_max``).
    """
    size = 1 << max(0, (n - 1).bit_length())
    steps = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        steps.append((a, b))
            k //= 2
        p *= 2
    needed, kept = set(ranks), []
    for a, b in reversed(steps):
        need_min, need_max = a in needed, b in needed
        if need_min or need_max:
            kept.append((a, b, need_min, need_max))
            needed |= {a, b}
    return tuple(reversed(kept))


def _select_planes(planes: Sequence[np.ndarray], ranks: tuple[int, ...]) -> list[np.ndarray]:
    """The values of ``ranks`` among same-shape arrays, element by element (NaN-free input).

    A selection network of `numpy.minimum` / `numpy.maximum` over whole planes: exact (each
    output is one of the inputs) and, for the few frames of a master, several times faster than
    sorting along the frame axis, which numpy does pixel by pixel.
    """
    work = list(planes)
    for a, b, need_min, need_max in _selection_network(len(work), ranks):
        low, high = work[a], work[b]
        if need_min:
            work[a] = np.minimum(low, high)
        if need_max:
            work[b] = np.maximum(low, high)
    return [work[r] for r in ranks]


def _median_planes(planes: Sequence[np.ndarray]) -> np.ndarray:
    """Element-wise median of NaN-free planes: ``0.5 * (low + high)`` of the middle ranks."""
    n = len(planes)
    low, high = _select_planes(planes, ((n - 1) // 2, n // 2))
    return 0.5 * (low + high)


def _kept(keep: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """uint32 masks (all bits set where kept) and the int64 count of kept values."""
    count = np.zeros(keep[0].shape, np.uint8 if len(keep) < 256 else np.int64)
    masks = []
    for k in keep:
        count += k
        mask = k.astype(np.uint32)
        np.negative(mask, out=mask)
        masks.append(mask)
    return masks, count.astype(np.int64)


def _kept_sum(planes: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> np.ndarray:
    """Float32 sum of the kept values in frame order, bit for bit
    ``np.where(keep, stack, 0).sum(axis=0)`` (a bitwise AND zeroes the others: no branches)."""
    total = np.bitwise_and(planes[0].view(np.uint32), masks[0]).view(np.float32)
    for plane, mask in zip(planes[1:], masks[1:], strict=True):
        total += np.bitwise_and(plane.view(np.uint32), mask).view(np.float32)
    return total


def _combine_finite(
    block: np.ndarray, method: str, clip_sigma: float, iterations: int
) -> np.ndarray:
    """`combine_kernel` of a ``(n, pixels)`` float32 block without NaN, a plane at a time.

    The same operations in the same float types and order as `_combine_any` (so the same bits),
    on cache-sized planes, with selection networks for the medians.
    """
    planes = list(block)
    median = _median_planes(planes)
    if method == "median":
        return median
    deviation = [np.abs(plane - median) for plane in planes]
    sigma = np.float32(1.4826) * _median_planes(deviation)
    threshold = np.float32(clip_sigma) * sigma
    masks, count = _kept([d <= threshold for d in deviation])
    del deviation
    for _ in range(iterations - 1):
        count = np.maximum(count, 1)
        mean = (_kept_sum(planes, masks) / count).astype(np.float32)
        offsets = [plane - mean for plane in planes]
        var = _kept_sum([o * o for o in offsets], masks) / np.maximum(count - 1, 1)
        sigma = np.maximum(np.sqrt(var), sigma)  # never tighter than the robust first pass
        limit = clip_sigma * sigma
        masks, count = _kept([np.abs(o) <= limit for o in offsets])
    mean = _kept_sum(planes, masks) / np.maximum(count, 1)
    return np.where(count > 0, mean, median)


def _combine_any(stack: np.ndarray, method: str, clip_sigma: float, iterations: int) -> np.ndarray:
    """`combine_kernel` of ``(n, ...)`` float32 values, NaN and infinities ignored."""
    finite = np.isfinite(stack)
    has_nan = not finite.all()
    median = nanmedian_first_axis(stack, finite, has_nan)
    if method == "median":
        return median
    deviation = np.abs(stack - median)
    mad = nanmedian_first_axis(deviation, finite, has_nan)
    sigma = np.float32(1.4826) * mad
    keep = deviation <= np.float32(clip_sigma) * sigma  # False for NaN
    del deviation
    zero = np.float32(0.0)  # float32 throughout: a float64 0.0 would upcast every stack copy
    filled = np.where(finite, stack, zero) if has_nan else stack
    for _ in range(iterations - 1):
        n = np.maximum(keep.sum(axis=0), 1)
        mean = np.where(keep, filled, zero).sum(axis=0) / n
        offset = filled - mean.astype(np.float32)
        np.multiply(offset, offset, out=offset)
        var = np.where(keep, offset, zero).sum(axis=0) / np.maximum(n - 1, 1)
        sigma = np.maximum(np.sqrt(var), sigma)  # never tighter than the robust first pass
        keep = finite & (np.abs(filled - mean.astype(np.float32)) <= clip_sigma * sigma)
    n = keep.sum(axis=0)
    mean = np.where(keep, filled, zero).sum(axis=0) / np.maximum(n, 1)
    return np.where(n > 0, mean, median)


def combine_kernel(
    stack: np.ndarray, *, method: str = "sigma_clip", clip_sigma: float = 3.0, iterations: int = 2
) -> np.ndarray:
    """Combine frames along the last axis.

    Works through blocks of `_BLOCK_PIXELS` pixels: a block without NaN or infinities goes
    plane by plane through selection networks (`_combine_finite`), any other block through the
    NaN-aware array code (`_combine_any`); both give the same bits for the same values.

    Parameters
    ----------
    stack : numpy.ndarray
        ``(..., frame)`` values; NaN are ignored.
    method : {"sigma_clip", "median"}
        Median, or mean of the values within ``clip_sigma`` robust sigma of the centre. The first
        pass clips about the median with sigma = 1.4826 MAD (so one outlier among 3-5 frames is
        caught); later passes about the clipped mean with the clipped standard deviation.
    clip_sigma : float, optional
    iterations : int, optional

    Returns
    -------
    numpy.ndarray
        ``(...)`` float32.
    """
    stack = np.moveaxis(np.asarray(stack), -1, 0)  # a view: frame-first chunks stay contiguous
    shape = stack.shape[1:]
    pixels = stack.reshape(stack.shape[0], -1)
    out = np.empty(pixels.shape[1], np.float32)
    for start in range(0, pixels.shape[1], _BLOCK_PIXELS):
        part = slice(start, start + _BLOCK_PIXELS)
        block = pixels[:, part].astype(np.float32)
        finite = bool(np.isfinite(block).all())
        combine = _combine_finite if finite else _combine_any
        out[part] = combine(block, method, clip_sigma, iterations)
    return out.reshape(shape)


# ---------------------------------------------------------------------------------------------
# Darks
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DarkChoice:
    """Which dark model serves frames of a given exposure.

    Attributes
    ----------
    strategy : {"matching", "scaled", "nearest", "bias_only", "none"}
        ``matching``: darks of the same exposure, combined. ``scaled``: (dark - bias) of all
        darks, scaled to the exposure, plus bias. ``nearest``: no bias to scale with, the darks of
        the nearest exposure unscaled. ``bias_only``: no darks, the master bias. ``none``: neither.
    exptime_s : float
        The exposure the master is for.
    frames : tuple of int
        Frame coordinates of the darks used.
    note : str
        The choice in words.
    """

    strategy: str
    exptime_s: float
    frames: tuple[int, ...]
    note: str


def choose_dark(
    dark_exptimes: Mapping[int, float],
    exptime_s: float,
    *,
    has_bias: bool,
    rtol: float = 0.01,
    purpose: str = "lights",
) -> DarkChoice:
    """Choose the dark model for frames of one exposure.

    Parameters
    ----------
    dark_exptimes : mapping
        ``{frame coordinate: exposure in s}`` of the usable darks.
    exptime_s : float
        The exposure to serve.
    has_bias : bool
        Whether a master bias exists.
    rtol : float, optional
        Relative tolerance of a matching exposure.
    purpose : str, optional
        Named in the note ("lights", "flats").

    Returns
    -------
    DarkChoice
    """
    matching = tuple(f for f, t in dark_exptimes.items() if abs(t - exptime_s) <= rtol * exptime_s)
    if matching:
        note = f"{purpose} ({exptime_s:g} s): master of {len(matching)} darks of matching exposure"
        return DarkChoice("matching", exptime_s, matching, note)
    if dark_exptimes and has_bias:
        note = (
            f"{purpose} ({exptime_s:g} s): no dark of that exposure; (dark - bias) of "
            f"{len(dark_exptimes)} darks of {sorted(set(dark_exptimes.values()))} s scaled to it, "
            "plus bias"
        )
        return DarkChoice("scaled", exptime_s, tuple(dark_exptimes), note)
    if dark_exptimes:
        nearest = min(dark_exptimes.values(), key=lambda t: abs(t - exptime_s))
        frames = tuple(f for f, t in dark_exptimes.items() if t == nearest)
        note = (
            f"{purpose} ({exptime_s:g} s): no dark of that exposure and no bias to scale with; "
            f"darks of {nearest:g} s used unscaled"
        )
        return DarkChoice("nearest", exptime_s, frames, note)
    if has_bias:
        note = f"{purpose} ({exptime_s:g} s): no darks; master bias only (dark current not removed)"
        return DarkChoice("bias_only", exptime_s, (), note)
    return DarkChoice("none", exptime_s, (), f"{purpose}: no darks and no bias; nothing subtracted")


def dark_for_frames(
    exptime_s: xr.DataArray,
    m_dark: xr.DataArray,
    master_bias: xr.DataArray | None,
    choice: DarkChoice,
) -> xr.DataArray:
    """The dark to subtract from each frame: ``bias + (m_dark - bias) * t / t_dark``.

    Frames of the master's exposure get ``m_dark`` itself; with a bias (and darks), frames of
    other exposures get the dark current scaled; without a bias they get ``m_dark`` unscaled.

    Parameters
    ----------
    exptime_s : xarray.DataArray
        ``(frame,)`` exposures.
    m_dark : xarray.DataArray
        ``(y, x)`` from `master_dark`.
    master_bias : xarray.DataArray or None
    choice : DarkChoice

    Returns
    -------
    xarray.DataArray
        ``(frame, y, x)`` float32, lazy; ``(y, x)`` (``m_dark`` itself) when every frame has the
        master's exposure or nothing can be scaled.
    """
    ratio = np.asarray(exptime_s.values, float) / choice.exptime_s
    unscaled = master_bias is None or choice.strategy in ("bias_only", "none")
    if unscaled or np.allclose(ratio, 1.0, rtol=1e-6):
        return m_dark.astype(np.float32)  # (y, x): broadcast against the frames, one copy
    # one frame per chunk: a single chunk along frame would materialise every frame's dark at once
    scale = exptime_s.reset_coords(drop=True) / np.float32(choice.exptime_s)
    scale = scale.astype(np.float32).chunk({"frame": 1})
    return (master_bias + (m_dark - master_bias) * scale).astype(np.float32)


def dark_current(m_dark: xr.DataArray, master_bias: xr.DataArray | None) -> xr.DataArray:
    """Dark signal of the master dark in ADU (``m_dark - bias``, or ``m_dark`` without bias)."""
    return m_dark if master_bias is None else m_dark - master_bias


# ---------------------------------------------------------------------------------------------
# Flats
# ---------------------------------------------------------------------------------------------


def flat_for_frames(
    flats: xr.DataArray | None, filters: xr.DataArray
) -> tuple[xr.DataArray, list[str]]:
    """The flat for each frame from the master flats by filter; ones where a filter has none.

    Parameters
    ----------
    flats : xarray.DataArray or None
        ``(flat_filter, y, x)`` master flats with a ``flat_filter`` coordinate of filter names.
    filters : xarray.DataArray
        ``(frame,)`` filter of each frame.

    Returns
    -------
    flat : xarray.DataArray
        ``(frame, y, x)`` float32, lazy; ``(y, x)`` when all frames share one filter that has a
        flat.
    missing : list of str
        Filters of frames that got no flat (flat of ones).
    """
    if flats is None:
        raise ValueError("flat_for_frames needs master flats; use a flat of ones instead")
    names = [str(f) for f in flats["flat_filter"].values]
    wanted = [str(f) for f in filters.values]
    missing = sorted({f for f in wanted if f not in names})
    # one-hot weights (frame, flat_filter): a blockwise weighted sum picks each frame's flat
    # without gathering frames into one chunk (as fancy indexing along flat_filter would)
    if len(set(wanted)) == 1 and wanted[0] in names:  # one filter: the (y, x) flat itself
        return flats.sel(flat_filter=wanted[0], drop=True).astype(np.float32), missing
    weights = np.array([[float(w == n) for n in names] for w in wanted], np.float32)
    onehot = xr.DataArray(
        weights, dims=("frame", "flat_filter"), coords={"frame": filters["frame"]}
    )
    stack = flats.drop_vars("flat_filter").astype(np.float32)
    onehot = onehot.chunk({"frame": 1})  # one frame per chunk, never all frames' flats at once
    picked = (stack * onehot).sum("flat_filter") + (1 - onehot.sum("flat_filter"))
    return picked.astype(np.float32).transpose("frame", "y", "x"), missing


# ---------------------------------------------------------------------------------------------
# Bad-pixel maps
# ---------------------------------------------------------------------------------------------
def _robust_center_sigma(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    center = float(np.median(values))
    return center, 1.4826 * float(np.median(np.abs(values - center)))


def _median_filter_line(image: np.ndarray, size: int, *, axis: int) -> np.ndarray:
    """``scipy.ndimage.median_filter`` of a 2-D NaN-free image over ``size`` pixels along one
    axis, ``mode="nearest"``: the same values, ~10x faster.

    The median of the ``size`` shifted views of the edge-padded image by a selection network,
    a block of rows at a time (cache-sized planes).
    """
    half = size // 2
    pad = [(0, 0), (0, 0)]
    pad[axis] = (half, half)
    padded = np.pad(image, pad, mode="edge")
    out = np.empty_like(image)
    n_rows, n_cols = image.shape
    step = max(1, _BLOCK_PIXELS // max(n_cols, 1))
    for r0 in range(0, n_rows, step):
        r1 = min(r0 + step, n_rows)
        if axis == 1:
            views = [padded[r0:r1, k : k + n_cols] for k in range(size)]
        else:
            views = [padded[r0 + k : r1 + k] for k in range(size)]
        (out[r0:r1],) = _select_planes(views, (half,))
    return out


def _column_nanmedian(values: np.ndarray) -> np.ndarray:
    """``np.nanmedian(values, axis=0)``: the plain median for columns without NaN (2.5x faster)."""
    median = np.median(values, axis=0)
    has_nan = np.isnan(median)
    if has_nan.any():
        median[has_nan] = np.nanmedian(values[:, has_nan], axis=0)
    return median


def bad_pixel_kernel(
    dark_signal: np.ndarray | None,
    flat: np.ndarray | None,
    *,
    config: CalibrationConfig = CalibrationConfig(),
) -> np.ndarray:
    """The static bad-pixel bitmask from a dark signal and a master flat (numpy).

    Hot: dark signal above its median by more than ``hot_sigma`` x 1.4826 MAD. Dead/cold: flat
    below ``dead_response`` x the flat median-filtered over ``flat_smooth_px`` along rows then
    columns (the row pass ignores 1-px wide columns); a column whose median response is below
    ``dead_response`` is dead as a whole. Bad column: the hot or dead pixels of a column with at
    least ``bad_column_fraction`` of its pixels hot or dead also get BAD_COLUMN (a partly hot
    column, a charge trap from some row on, is flagged where it is hot, not whole).

    Parameters
    ----------
    dark_signal : numpy.ndarray or None
        ``(y, x)`` master dark minus bias (ADU); None when there is no dark.
    flat : numpy.ndarray or None
        ``(y, x)`` normalised master flat; None when there is none.
    config : CalibrationConfig, optional

    Returns
    -------
    numpy.ndarray
        ``(y, x)`` uint8 of `PixelFlag` bits.
    """
    shape = (dark_signal if dark_signal is not None else flat).shape
    mask = np.zeros(shape, np.uint8)
    if dark_signal is not None:
        mask |= hot_pixel_bits(dark_signal, config=config)
    if flat is not None:
        mask |= dead_pixel_bits(flat, config=config)
    return with_bad_column_bits(mask, config=config)


def hot_pixel_bits(dark_signal: np.ndarray, *, config: CalibrationConfig) -> np.ndarray:
    """The HOT bits of `bad_pixel_kernel` (uint8)."""
    mask = np.zeros(dark_signal.shape, np.uint8)
    center, sigma = _robust_center_sigma(dark_signal)
    mask[dark_signal - center > config.hot_sigma * max(sigma, 1e-6)] |= np.uint8(PixelFlag.HOT)
    return mask


def dead_pixel_bits(flat: np.ndarray, *, config: CalibrationConfig) -> np.ndarray:
    """The DEAD bits of `bad_pixel_kernel` (uint8)."""
    mask = np.zeros(flat.shape, np.uint8)
    # separable median (rows, then columns): a fast stand-in for the square median filter
    # that still ignores single bad pixels and 1-px wide bad columns
    filled = np.nan_to_num(flat, nan=0.0).astype(np.float32)
    size = config.flat_smooth_px
    smooth = _median_filter_line(filled, size, axis=1)
    smooth = _median_filter_line(smooth, size, axis=0)
    response = flat / np.where(smooth > 0, smooth, np.nan)
    mask[~(response >= config.dead_response)] |= np.uint8(PixelFlag.DEAD)
    dead_columns = _column_nanmedian(response) < config.dead_response
    mask[:, dead_columns] |= np.uint8(PixelFlag.DEAD)
    return mask


def with_bad_column_bits(mask: np.ndarray, *, config: CalibrationConfig) -> np.ndarray:
    """``mask`` (HOT and DEAD bits, changed in place) plus the BAD_COLUMN bits of
    `bad_pixel_kernel`."""
    bad = (mask & (PixelFlag.HOT | PixelFlag.DEAD)) != 0
    bad_columns = bad.mean(axis=0) >= config.bad_column_fraction
    mask[:, bad_columns] |= np.where(bad[:, bad_columns], np.uint8(PixelFlag.BAD_COLUMN), 0).astype(
        np.uint8
    )
    return mask


# ---------------------------------------------------------------------------------------------
# Calibration of lights
# ---------------------------------------------------------------------------------------------


def saturation_level(
    raw: xr.DataArray, saturate_adu: xr.DataArray | float | None
) -> xr.DataArray | float:
    """The saturation level per frame: given, else the integer type's maximum, else infinity."""
    default = float(np.iinfo(raw.dtype).max) if raw.dtype.kind in "ui" else np.inf
    if saturate_adu is None:
        return default
    if isinstance(saturate_adu, xr.DataArray):
        return saturate_adu.fillna(default)
    return default if not np.isfinite(saturate_adu) else float(saturate_adu)


# ---------------------------------------------------------------------------------------------
# Cleaning
# ---------------------------------------------------------------------------------------------
def _gaussian_window(sigma_px: float) -> np.ndarray:
    half = max(1, math.ceil(3 * sigma_px))
    r = np.arange(-half, half + 1)
    window = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma_px**2))
    window[half, half] = 0.0  # the pixel itself never votes
    return window


def _clean_in_place(
    image: np.ndarray,
    bad: np.ndarray,
    flags: np.ndarray,
    *,
    method: str,
    sigma_px: float,
    size_px: int,
) -> None:
    """`clean_frame` into ``image`` itself, its flags OR-ed into ``flags``.

    ``bad`` must include every non-finite pixel; only bad pixels change, so only they are
    visited (the windows are read before any value is written back).
    """
    if method == "none":
        flags[~np.isfinite(image)] |= np.uint8(PixelFlag.MASKED)
        return
    ys, xs = _nonzero(bad)
    if not len(ys):
        return
    if method == "mask":
        image[ys, xs] = np.nan
    else:
        if method == "interpolate":
            window = _gaussian_window(sigma_px).astype(np.float32)
        else:
            window = np.ones((size_px, size_px), np.float32)
            window[size_px // 2, size_px // 2] = 0.0
        values = np.empty(len(ys), np.float32)
        for start in range(0, len(ys), 65536):  # bounded memory for very bad frames
            sl = slice(start, start + 65536)
            patches = _bad_free_patches(image, bad, ys[sl], xs[sl], window.shape[0] // 2)
            good = np.isfinite(patches) & (window > 0)
            if method == "interpolate":
                weight = (good * window).sum(axis=(1, 2))
                total = (np.where(good, patches, 0.0) * window).sum(axis=(1, 2))
                ok = weight >= 0.1 * window.sum()
                values[sl] = np.where(ok, total / np.where(ok, weight, 1.0), np.nan)
            else:
                masked = np.where(good, patches, np.nan).reshape(len(patches), -1)
                with np.errstate(all="ignore"):
                    values[sl] = np.nanmedian(masked, axis=1) if masked.size else values[sl]
        image[ys, xs] = values
    flags[ys, xs] |= np.where(
        np.isfinite(image[ys, xs]), np.uint8(PixelFlag.INTERPOLATED), np.uint8(PixelFlag.MASKED)
    )


def _bad_free_patches(
    image: np.ndarray, bad: np.ndarray, ys: np.ndarray, xs: np.ndarray, half: int
) -> np.ndarray:
    """``(n, w, w)`` windows of ``image`` about ``(ys, xs)``, NaN at bad pixels and outside.

    The same values as windows of the whole image NaN-ed at bad pixels and NaN-padded, without
    building that image: cleaning then costs in proportion to the bad pixels, not the frame.
    """
    n_rows, n_cols = image.shape
    width = 2 * half + 1
    offsets = np.arange(-half, half + 1)
    index = (ys * n_cols + xs)[:, None] + (offsets[:, None] * n_cols + offsets).ravel()
    edge = np.flatnonzero((ys < half) | (ys >= n_rows - half) | (xs < half) | (xs >= n_cols - half))
    if len(edge):  # windows that cross the frame's border: clipped indices, NaN outside
        rows = ys[edge, None, None] + offsets[None, :, None]
        cols = xs[edge, None, None] + offsets[None, None, :]
        outside = ((rows < 0) | (rows >= n_rows) | (cols < 0) | (cols >= n_cols)).reshape(
            len(edge), -1
        )
        clipped = np.clip(rows, 0, n_rows - 1) * n_cols + np.clip(cols, 0, n_cols - 1)
        index[edge] = clipped.reshape(len(edge), -1)
    patches = image.ravel()[index]
    invalid = bad.ravel()[index]
    if len(edge):
        invalid[edge] |= outside
    patches[invalid] = np.nan
    return patches.reshape(len(ys), width, width)


def _nonzero(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.nonzero`` of a sparse 2-D bool mask (the same indices in the same order), ~8x faster:
    the nonzero 8-byte words first, then the pixels within them."""
    flat = np.ascontiguousarray(mask).reshape(-1)
    n_whole = flat.size // 8 * 8
    words = np.flatnonzero(flat[:n_whole].view(np.uint64))
    if len(words) > n_whole // 64:  # not sparse: no gain
        return np.nonzero(mask)
    candidates = (words[:, None] * 8 + np.arange(8)).reshape(-1)
    index = candidates[flat[candidates]]
    if n_whole < flat.size:
        index = np.concatenate([index, n_whole + np.flatnonzero(flat[n_whole:])])
    return np.divmod(index, mask.shape[1])


# ---------------------------------------------------------------------------------------------
# One light in one pass
# ---------------------------------------------------------------------------------------------
def calibrate_frame(
    raw: np.ndarray,
    dark: np.ndarray,
    flat: np.ndarray | None,
    bad_pixels: np.ndarray,
    *,
    saturate_adu: float = np.inf,
    config: CalibrationConfig = CalibrationConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """Calibrate, flag and clean one light (numpy), in one task: the same values and flags as
    the lazy whole-cube reference (tests/calibrate_reference.py: ``calibrate_frames``,
    ``pixel_flags``, ``clean_bad_pixels``) gives for that frame.

    Parameters
    ----------
    raw : numpy.ndarray
        ``(y, x)`` raw pixels.
    dark : numpy.ndarray
        ``(y, x)`` float32: what to subtract (this frame's plane of `dark_for_frames`).
    flat : numpy.ndarray or None
        ``(y, x)`` float32 normalised flat (this frame's plane of `flat_for_frames`); None for
        no flat-fielding.
    bad_pixels : numpy.ndarray
        ``(y, x)`` uint8 (`bad_pixel_kernel`).
    saturate_adu : float, optional
        The frame's saturation level (`saturation_level`; infinity for none).
    config : CalibrationConfig, optional
        ``clean``, ``clean_sigma_px``, ``clean_size_px``.

    Returns
    -------
    calibrated : numpy.ndarray
        ``(y, x)`` float32, cleaned.
    flags : numpy.ndarray
        ``(y, x)`` uint8 `PixelFlag` bits.
    """
    raw = np.asarray(raw)
    shape = raw.shape
    calibrated = np.empty(shape, np.float32)
    flags = np.empty(shape, np.uint8)
    bad = np.empty(shape, bool)  # to clean: static bad or not finite
    dark = np.broadcast_to(np.asarray(dark, np.float32), shape)
    static = np.uint8(_STATIC_BAD)
    nan = np.float32(np.nan)
    # a cache-sized block of rows at a time: the same operations as the reference's
    # calibrate_frames, pixel_flags and clean_bad_pixels without frame-sized temporaries
    step = max(1, _BLOCK_PIXELS // max(shape[1], 1))
    for r0 in range(0, shape[0], step):
        rows = slice(r0, r0 + step)
        out, raw_rows = calibrated[rows], raw[rows]
        np.subtract(raw_rows.astype(np.float32), dark[rows], out=out)
        if flat is not None:
            flat_rows = flat[rows]
            np.divide(out, np.where(flat_rows > 0, flat_rows, nan), out=out)
        flag_rows = flags[rows]
        np.copyto(flag_rows, bad_pixels[rows], casting="unsafe")
        np.bitwise_or(
            flag_rows, np.uint8(PixelFlag.SATURATED), out=flag_rows, where=raw_rows >= saturate_adu
        )
        if raw.dtype.kind == "f":
            nonfinite = ~np.isfinite(raw_rows)
            np.bitwise_or(flag_rows, np.uint8(PixelFlag.NONFINITE), out=flag_rows, where=nonfinite)
        np.not_equal(flag_rows & static, 0, out=bad[rows])
        bad[rows] |= ~np.isfinite(out)
    if config.clean == "none" or bad.any():
        _clean_in_place(
            calibrated,
            bad,
            flags,
            method=config.clean,
            sigma_px=config.clean_sigma_px,
            size_px=config.clean_size_px,
        )
    return calibrated, flags


def variance_frame(
    calibrated: np.ndarray,
    dark_signal: np.ndarray | None,
    flat: np.ndarray | None,
    gain_e_adu: float,
    rdnoise_e: float,
) -> np.ndarray:
    """The variance of one frame (numpy), as the reference's ``variance`` computes it.

    Parameters
    ----------
    calibrated : numpy.ndarray
        ``(y, x)`` float32 from `calibrate_frame`.
    dark_signal : numpy.ndarray or None
        ``(y, x)`` float32 dark minus bias as subtracted; None without a bias (no dark signal).
    flat : numpy.ndarray or None
        ``(y, x)`` float32 flat used; None for none.
    gain_e_adu, rdnoise_e : float
        NaN counts as 1 e-/ADU and 0 e-.

    Returns
    -------
    numpy.ndarray
        ``(y, x)`` float32 ADU^2.
    """
    gain = np.float64(1.0 if np.isnan(gain_e_adu) else gain_e_adu)
    rdnoise = np.float64(0.0 if np.isnan(rdnoise_e) else rdnoise_e)
    one = np.float32(1.0)
    signal = calibrated * (one if flat is None else flat)
    signal = signal + (np.float32(0.0) if dark_signal is None else dark_signal)
    electrons = np.clip(signal, 0, None) / gain
    return ((electrons + (rdnoise / gain) ** 2) / (one if flat is None else flat) ** 2).astype(
        np.float32
    )
