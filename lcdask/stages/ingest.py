"""Ingest: raw FITS frames into the frame cube ``RUN/cube.zarr``.

Three steps. *Scan* reads every header (in parallel, a batch of files per task), classifies the
frame and normalises its metadata; frames whose header cannot be used are skipped with a reason.
A frame with no type at all (no ``IMAGETYP``, ``OBSTYPE``, ``IMAGTYP``, ``FRAMETYP``,
``EXPTYPE``, ``IMGTYPE`` or ``PICTTYPE``, and no ``bias``, ``dark``, ``flat`` or ``light`` in its
file or folder names; see `lcdask.io.headers.classify_frame`), as small robotic telescopes write
them, is taken as a light when it looks like one (`untyped_frame_type`): stars in the central
block of its pixels, or an exposure time above 0 and an ``OBJECT``; never when its exposure is 0
s (a bias), its level is high with no stars (a flat), or it has no stars and a level near the
night's exposure-0 frames (a dark that kept the last OBJECT; `settle_untyped`). The run says how
many in one line; the reason for each frame is in the cube's ``typed`` attribute and
``run.json``; frames not taken are skipped, one line per reason with a count (`reason_lines`).
*Plan* fixes the cube's frame shape (the most common among lights, after trimming) and pixel type,
and skips frames of another shape. *Fill* creates the store (metadata only) and maps one task per
frame over the cluster: each worker reads its file and writes its own chunk, so no pixels travel
through the scheduler; frames with NaN or infinite pixels, mostly saturated frames and repeats of
an earlier frame (same type, time and pixels) are flagged with a reason (`lcdask.flags`). The store
is built under a temporary name and renamed when whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lcdask import __version__
from lcdask.errors import FrameError, LcdaskError
from lcdask.flags import SATURATED_FRACTION, FrameFlag
from lcdask.io import cube as cube_io
from lcdask.io.atomic import atomic_path
from lcdask.io.discover import discover_frames
from lcdask.io.fits import native_dtype, read_frame, read_frame_header, read_frame_sample
from lcdask.io.headers import UntypedFrameError, bjd_tdb, normalize_header, parse_section
from lcdask.stages._parallel import map_frames
from lcdask.stages.context import RunContext

__all__ = [
    "IngestResult",
    "NotAppendable",
    "Skipped",
    "append",
    "append_ingest",
    "ingest",
    "plan_cube",
    "reason_lines",
    "run_ingest",
    "scan_frame",
    "settle_untyped",
    "untyped_frame_type",
]

log = logging.getLogger("lcdask")


@dataclass(frozen=True)
class Skipped:
    """A frame left out of the cube, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class IngestResult:
    """What `ingest` made.

    Attributes
    ----------
    cube_path : Path
        The cube store.
    n_frames : int
        Frames in the cube (of every type).
    counts : dict
        Frames per type.
    skipped : list of Skipped
        Frames left out, with reasons.
    flagged : list of Skipped
        Frames in the cube with a quality flag, with reasons.
    timings_s : dict
        Wall time per step.
    """

    cube_path: Path
    n_frames: int
    counts: dict[str, int]
    skipped: list[Skipped] = field(default_factory=list)
    flagged: list[Skipped] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


# An untyped frame with at least this many star-like sources in its central block is a light:
# a 512x512 block of a small telescope's field (tens of arcmin) holds hundreds of stars; a dark's
# cosmic rays that pass the shape test are a few per block even in 300 s.
MIN_STARS = 10
# An untyped frame with no stars whose level is above this fraction of the saturation level is
# flat-like (twilight and dome flats are exposed to 30-60% of the full scale; a light's sky so
# high would hold few stars above its noise).
FLAT_LEVEL_FRACTION = 0.25
# A source whose brightest pixel holds more than this fraction of its flux above the threshold
# is a cosmic ray or a hot-pixel cluster, not a star: a Gaussian star of FWHM 1.5 px puts 0.33 of
# its flux in its peak pixel, the real stars measured here 0.06-0.25; the darks' cosmic rays
# 0.3-0.6.
SHARPEST_STAR = 0.35
# An untyped starless frame less than this many times its noise above the night's exposure-0
# frames is a dark (the 180 s darks of asteroid2713_c14: 3.5-4.7 sigma; its lights 48-52).
DARK_SIGMA = 5.0


def count_stars(sample: np.ndarray) -> int:
    """Count the compact sources well above the sky in an image block.

    Sources 5 sigma above a local background (``sep``), of at least 5 connected pixels with no
    smoothing (so that a hot pixel, even a cluster of two or three, is not one), round enough
    (minor/major axis above 0.4: not a column or a cosmic-ray track) and not wider than a
    defocused star (major axis below 8 px).

    Parameters
    ----------
    sample : numpy.ndarray
        A 2-D block of a frame (`lcdask.io.fits.read_frame_sample`).

    Returns
    -------
    int
        The number of such sources (0 when the block is too small or blank).
    """
    import sep

    data = np.ascontiguousarray(sample, dtype=np.float32)
    if min(data.shape) < 32 or not np.isfinite(data).any():
        return 0
    bad = ~np.isfinite(data)
    data = np.where(bad, np.float32(np.nanmedian(data)), data)
    box = max(16, min(data.shape) // 8)
    try:
        bkg = sep.Background(data, mask=bad, bw=box, bh=box)
        rms = float(bkg.globalrms)
        if not np.isfinite(rms) or rms <= 0:
            return 0
        objs = sep.extract(data - bkg.back(), 5.0, err=rms, mask=bad, minarea=5, filter_kernel=None)
    except Exception:  # sep's overflow errors (a blank or pathological block): no stars seen
        return 0
    a, b = objs["a"], objs["b"]
    sharp = objs["peak"] / np.where(objs["flux"] > 0, objs["flux"], np.inf)
    star = (a > 0) & (a < 8.0) & (b / np.where(a > 0, a, 1.0) > 0.4) & (sharp < SHARPEST_STAR)
    return int(np.count_nonzero(star))


def untyped_frame_type(
    sample: np.ndarray,
    *,
    exptime_s: float,
    object_name: str = "",
    saturate_adu: float = np.nan,
) -> tuple[str | None, str]:
    """Tell whether a frame with no type keyword is a light, from its exposure, OBJECT and pixels.

    In this order: an exposure of 0 s is a bias, not a light; a block with at least `MIN_STARS`
    compact sources (`count_stars`) is a light; a block with fewer whose median level is above
    `FLAT_LEVEL_FRACTION` of the saturation level is flat-like, not a light; an exposure above
    0 with an ``OBJECT`` is a light (a cloudy or sparse field); anything else is not typed.

    Parameters
    ----------
    sample : numpy.ndarray
        The central block of the frame (`lcdask.io.fits.read_frame_sample`).
    exptime_s : float
        Exposure time in seconds (NaN when unknown).
    object_name : str, optional
        The frame's ``OBJECT`` (or ``OBJNAME``...), ``""`` when none.
    saturate_adu : float, optional
        The saturation level of the sample's pixels; NaN skips the flat-like test.

    Returns
    -------
    frame_type : str or None
        ``"light"``, or None when the frame is not taken as a light.
    why : str
        One short phrase: why it is, or what it looks like instead.
    """
    if exptime_s == 0:
        return None, "exposure 0 s, a bias?"
    n_stars = count_stars(sample)
    if n_stars >= MIN_STARS:
        return "light", f"{n_stars} stars in its central {sample.shape[0]}x{sample.shape[1]} px"
    level, _ = level_and_noise(sample)
    high = FLAT_LEVEL_FRACTION * saturate_adu
    if np.isfinite(saturate_adu) and saturate_adu > 0 and level > high:
        percent = 100 * level / saturate_adu
        return None, f"level {level:.0f} ADU ({percent:.0f}% of saturation) and no stars, a flat?"
    if object_name and exptime_s > 0:
        return "light", f"exposure {exptime_s:g} s and OBJECT={object_name!r}"
    if not exptime_s > 0:
        return None, "no exposure time, no OBJECT and no stars"
    return None, "no OBJECT and no stars, a dark?"


def scan_frame(path: str | Path, *, utc_offset_h: float | None = None) -> dict[str, Any]:
    """Read and normalise one frame's header.

    A frame with no type keyword (`lcdask.io.headers.UntypedFrameError`) is judged by
    `untyped_frame_type` on the central block of its pixels. A colour frame is described as
    `lcdask.io.fits.read_frame` reads it: luminance, at half the resolution for a Bayer matrix
    (whose saturation level is then 4 times a pixel's).

    Parameters
    ----------
    path : str or Path
        The FITS file.
    utc_offset_h : float, optional
        Hours to subtract from header times that are local time (see `normalize_header`).

    Returns
    -------
    dict
        The normalised metadata (`FrameMeta.as_row`) plus ``path``, ``hdu_index``, ``ny``, ``nx``
        (after trimming), ``dtype`` and ``colour``, and ``typed`` (why an untyped frame was taken
        as a light; ``""`` for the others); or ``{"path": ..., "error": reason}`` for an unusable
        frame, with ``untyped: True`` when the reason is that it could not be typed.
    """
    typed = ""
    try:
        head = read_frame_header(path)
        try:
            meta = normalize_header(head.header, path=path, utc_offset_h=utc_offset_h)
        except UntypedFrameError:
            meta = normalize_header(
                head.header, path=path, utc_offset_h=utc_offset_h, frame_type="light"
            )
            saturate = meta.saturate_adu * (4 if head.colour == "bayer" else 1)
            sample = read_frame_sample(path, hdu_index=head.hdu_index)
            kind, why = untyped_frame_type(
                sample, exptime_s=meta.exptime_s, object_name=meta.object, saturate_adu=saturate
            )
            level, noise = level_and_noise(sample)
            if kind is None:
                reason = f"{path}: no frame type and not taken as a light ({why})"
                bias_level = level if meta.exptime_s == 0 else np.nan
                return {"path": str(path), "error": reason, "untyped": True, "level": bias_level}
            typed = why
            note = f"no frame type in the header or path: taken as a light ({why})"
            meta = dataclasses.replace(meta, notes=(*meta.notes, note))
        ny, nx = head.shape
        if meta.trimsec:
            ys, xs = parse_section(meta.trimsec)
            ny = len(range(*ys.indices(ny)))
            nx = len(range(*xs.indices(nx)))
        dtype = "float32" if meta.biassec else native_dtype(head.header).str
    except FrameError as exc:
        return {"path": str(path), "error": str(exc)}
    except ValueError as exc:  # a malformed section string
        return {"path": str(path), "error": f"{path}: {exc}"}
    row = meta.as_row()
    if head.colour:
        dtype = "float32"
        if head.colour == "bayer":
            ny, nx = ny // 2, nx // 2
            row["saturate_adu"] = 4 * meta.saturate_adu
        how = COLOUR_READ[head.colour]
        row["notes"] = "; ".join(n for n in (row["notes"], how) if n)
    row.update(
        path=str(path),
        hdu_index=head.hdu_index,
        ny=ny,
        nx=nx,
        dtype=dtype,
        colour=head.colour,
        typed=typed,
    )
    if typed:
        row.update(level=level, noise=noise)
    return row


def level_and_noise(sample: np.ndarray) -> tuple[float, float]:
    """The median and the robust standard deviation (1.4826 MAD) of an image block's pixels.

    Parameters
    ----------
    sample : numpy.ndarray

    Returns
    -------
    level, noise : float
        NaN when no pixel is finite.
    """
    finite = sample[np.isfinite(sample)]
    if not finite.size:
        return np.nan, np.nan
    level = float(np.median(finite))
    return level, float(1.4826 * np.median(np.abs(finite - level)))


def settle_untyped(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Look again at the untyped frames taken as lights by their OBJECT alone, against the night.

    A dark keeps the OBJECT of the last target in some programs, and has no stars: an untyped
    frame taken as a light by its exposure and OBJECT (no stars seen) whose level is within
    `DARK_SIGMA` times its noise of the untyped exposure-0 frames' median level (the bias
    pedestal) is a dark, not a light. Without exposure-0 frames in the night the frame stays a
    light. The scan's ``level`` and ``noise`` keys are removed from every row.

    Parameters
    ----------
    rows : sequence of dict
        Results of `scan_frame`.

    Returns
    -------
    list of dict
        The rows, each a new dict; a frame found dark-like is an ``error`` row.
    """
    rows = [dict(r) for r in rows]
    pedestals = [
        r["level"] for r in rows if r.get("untyped") and np.isfinite(r.get("level", np.nan))
    ]
    pedestal = float(np.median(pedestals)) if pedestals else np.nan
    for i, r in enumerate(rows):
        level, noise = r.pop("level", np.nan), r.pop("noise", np.nan)
        if "error" in r or not r.get("typed") or "OBJECT=" not in r["typed"]:
            continue
        if np.isfinite(pedestal) and noise > 0 and (level - pedestal) < DARK_SIGMA * noise:
            why = (
                f"level {level:.0f} ADU, {(level - pedestal) / noise:.1f} sigma above the "
                f"exposure-0 frames' {pedestal:.0f}, and no stars: a dark?"
            )
            reason = f"{r['path']}: no frame type and not taken as a light ({why})"
            rows[i] = {"path": r["path"], "error": reason, "untyped": True}
    return rows


COLOUR_READ = {
    "rgb": "colour frame(s) of 3 planes (RGB): read as luminance, the mean of the planes",
    "bayer": "Bayer-matrix colour frame(s): read as luminance, 2x2 pixel sums (half resolution)",
}
"""How a colour frame is read, by `lcdask.io.fits.frame_colour` kind (one line in the log)."""


def reason_lines(
    items: Sequence[Skipped], *, what: str = "frames", at_most: int = 3, listed_in: str = "run.json"
) -> list[str]:
    """The log lines for frames left out or flagged: one per problem, grouped when many share it.

    Reasons are ``"<file>: <why>"``. Frames whose *why* is the same (numbers aside) are one
    group; a group of up to ``at_most`` frames gets a line per frame, a larger one a single line
    with the count, the first frame's reason and its file name.

    Parameters
    ----------
    items : sequence of Skipped
        The frames and their reasons.
    what : str, optional
        What the frames are, in a group's line ("frames skipped", "frames flagged").
    at_most : int, optional
        The largest group said frame by frame.
    listed_in : str, optional
        Where every file's reason is kept, named in a group's line; ``""`` when nowhere.

    Returns
    -------
    list of str
        The lines, in the order each problem was first met.
    """
    groups: dict[str, list[Skipped]] = {}
    for item in items:
        why = _why(item)
        groups.setdefault(re.sub(r"\d+(\.\d+)?", "#", why), []).append(item)
    lines = []
    for group in groups.values():
        if len(group) <= at_most:
            lines.extend(item.reason for item in group)
        else:
            first = group[0]
            where = f"; each file in {listed_in}" if listed_in else ""
            example = f"e.g. {Path(first.path).name}{where}"
            lines.append(f"{len(group)} {what}: {_why(first)} ({example})")
    return lines


def _why(item: Skipped) -> str:
    """The reason without the file name it starts with."""
    prefix = f"{item.path}: "
    return item.reason[len(prefix) :] if item.reason.startswith(prefix) else item.reason


def _scan_batch(paths: Sequence[str], utc_offset_h: float | None) -> list[dict[str, Any]]:
    return [scan_frame(p, utc_offset_h=utc_offset_h) for p in paths]


def plan_cube(
    rows: Sequence[dict[str, Any]], *, shape: tuple[int, int] | None = None
) -> tuple[pd.DataFrame, tuple[int, int], str, list[Skipped]]:
    """Choose the cube's frames, shape and pixel type from scanned headers.

    The shape is the most common among lights (among all frames when there are no lights);
    frames of another shape are skipped. Frames are ordered by mid-exposure time.

    Parameters
    ----------
    rows : sequence of dict
        Results of `scan_frame`.
    shape : (int, int), optional
        The shape to keep (an existing cube's), instead of the most common one.

    Returns
    -------
    frames : pandas.DataFrame
        The accepted frames' metadata, one row per frame, in cube order.
    shape : tuple of int
        ``(ny, nx)``.
    dtype : str
        The pixel type of ``raw``: the frames' common type, or float32 when they differ.
    skipped : list of Skipped
        Frames left out, with reasons.
    """
    skipped = [Skipped(r["path"], r["error"]) for r in rows if "error" in r]
    good = [r for r in rows if "error" not in r]
    if not good:
        lines = reason_lines(skipped, what="files", at_most=1, listed_in="")
        more = f" (and {len(lines) - 2} other problems)" if len(lines) > 2 else ""
        raise LcdaskError(f"no usable frames among {len(rows)} files: {'; '.join(lines[:2])}{more}")
    lights = [r for r in good if r["frame_type"] == "light"] or good
    if shape is None:
        shape = Counter((r["ny"], r["nx"]) for r in lights).most_common(1)[0][0]
    accepted = []
    for r in good:
        if (r["ny"], r["nx"]) == shape:
            accepted.append(r)
        else:
            reason = (
                f"{r['path']}: frame shape {(r['ny'], r['nx'])} differs from the cube's {shape}"
            )
            skipped.append(Skipped(r["path"], reason))
    frames = pd.DataFrame(accepted).sort_values(["time_mjd", "path"], kind="stable")
    dtypes = set(frames["dtype"])
    dtype = dtypes.pop() if len(dtypes) == 1 else "float32"
    frames = frames.drop(columns=["ny", "nx", "dtype", "colour", "typed"], errors="ignore")
    frames = frames.reset_index(drop=True)
    return frames, shape, np.dtype(dtype).name, skipped


def _fill_frame(
    store: str,
    index: int,
    path: str,
    hdu_index: int,
    trimsec: str,
    biassec: str,
    saturate_adu: float = np.nan,
) -> tuple[int, int, str, str]:
    """Read one frame and write it into the cube; return (index, flags, reason, pixel digest)."""
    try:
        image = read_frame(path, hdu_index=hdu_index, trimsec=trimsec, biassec=biassec, dtype=None)
    except FrameError as exc:
        return index, int(FrameFlag.UNREADABLE), str(exc), ""
    flags, reason = FrameFlag.OK, ""
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        n_bad = int(np.count_nonzero(~np.isfinite(image)))
        flags, reason = FrameFlag.NONFINITE, f"{path}: {n_bad} NaN or infinite pixels"
    # Saturation is judged on raw ADU; after an overscan subtraction the level is not known.
    if not biassec and np.isfinite(saturate_adu):
        fraction = np.count_nonzero(image >= saturate_adu) / image.size
        if fraction > SATURATED_FRACTION:
            flags |= FrameFlag.SATURATED
            reason = (
                f"{path}: saturated frame, {100 * fraction:.0f}% of the pixels at or above "
                f"{saturate_adu:g} ADU (limit {100 * SATURATED_FRACTION:.0f}%); not used"
            )
    # SHA-256 of the pixel buffer itself (no copy): hardware-accelerated here, 11 ms for a
    # 2048^2 uint16 frame against 29 ms for blake2b of a bytes copy
    digest = hashlib.sha256(memoryview(np.ascontiguousarray(image)).cast("B")).hexdigest()
    cube_io.write_frame(store, index, image)
    return index, int(flags), reason, digest


def _fill(client, store: Path, frames: pd.DataFrame) -> list[tuple[int, int, str, str]]:
    """`_fill_frame` for every row of ``frames`` (its index is the position in the cube)."""
    return map_frames(
        client,
        _fill_frame,
        [str(store)] * len(frames),
        frames.index.tolist(),
        frames["path"].tolist(),
        frames["hdu_index"].tolist(),
        frames["trimsec"].tolist(),
        frames["biassec"].tolist(),
        frames["saturate_adu"].astype(float).tolist(),
        label="ingest: fill frame",
    )


def _duplicates(frames: pd.DataFrame, digests: dict[int, str]) -> dict[int, str]:
    """Frames repeating an earlier one (same type, time and pixels): ``{index: reason}``."""
    first: dict[tuple, int] = {}
    found = {}
    for index in frames.index:
        if not digests.get(index):
            continue
        time_mjd = float(frames.at[index, "time_mjd"])
        when = time_mjd if np.isfinite(time_mjd) else "no time"  # NaN would never equal itself
        key = (frames.at[index, "frame_type"], when, digests[index])
        if key in first:
            original = frames.at[first[key], "path"]
            found[index] = (
                f"{frames.at[index, 'path']}: duplicate of {original} "
                "(same frame type, time and pixels); not used"
            )
        else:
            first[key] = index
    return found


def _flag(store: Path, frames: pd.DataFrame, results: list) -> list[Skipped]:
    """Write the flags and reasons of the filled frames (theirs, and duplicates among them)."""
    duplicates = _duplicates(frames, {index: digest for index, _, _, digest in results})
    flagged = []
    for index, flags, reason, _ in results:
        if index in duplicates:
            flags, reason = flags | FrameFlag.DUPLICATE, duplicates[index]
        if flags:
            frames.loc[index, ["flags", "flag_reason"]] = [flags, reason]
            flagged.append(Skipped(frames.loc[index, "path"], reason))
    if flagged:
        cube_io.set_frame_values(store, "flags", frames.index, frames["flags"].to_numpy())
        cube_io.set_frame_values(store, "flag_reason", frames.index, frames["flag_reason"])
    return flagged


def _batches(items: Sequence[str], size: int) -> list[list[str]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def ingest(
    inputs: str | Path | Iterable[str | Path],
    out: str | Path,
    *,
    client=None,
    utc_offset_h: float | None = None,
    overwrite: bool = False,
) -> IngestResult:
    """Ingest raw frames into ``out/cube.zarr``.

    Parameters
    ----------
    inputs : str, Path or iterable of them
        Folders, globs, files or list files (see `discover_frames`).
    out : str or Path
        The run directory.
    client : distributed.Client, optional
        Cluster to spread the work over; serial in this process when None.
    utc_offset_h : float, optional
        For headers whose times are local: hours local time is ahead of UTC.
    overwrite : bool, optional
        Replace an existing cube (atomically, once the new one is whole).

    Returns
    -------
    IngestResult

    Raises
    ------
    LcdaskError
        If no frame is usable, or the cube exists and ``overwrite`` is False.
    """
    out = Path(out)
    final = out / "cube.zarr"
    if final.exists() and not overwrite:
        raise LcdaskError(f"{final} exists; pass overwrite=True (--overwrite) to replace it")
    timings: dict[str, float] = {}

    start = time.perf_counter()
    paths = [str(p) for p in discover_frames(inputs)]
    if not paths:
        raise LcdaskError(f"no FITS files found in {inputs}")
    batches = _batches(paths, 32)
    rows = [
        r
        for batch in map_frames(
            client, _scan_batch, batches, utc_offset_h=utc_offset_h, label="ingest: scan batch"
        )
        for r in batch
    ]
    rows = settle_untyped(rows)
    typed = _typed(rows)
    frames, shape, dtype, skipped = plan_cube(rows)
    frames["bjd_tdb"] = _bjd(frames)
    frames["flags"] = np.zeros(len(frames), np.int32)
    frames["flag_reason"] = ""
    timings["scan"] = time.perf_counter() - start

    start = time.perf_counter()
    attrs = {
        "lcdask_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": [str(i) for i in ([inputs] if isinstance(inputs, (str, Path)) else inputs)],
        "skipped": [s.__dict__ for s in skipped],
        "typed": typed,
    }
    with atomic_path(final) as tmp:
        cube_io.create_cube(tmp, frames, shape, dtype=dtype, attrs=attrs)
        flagged = _flag(tmp, frames, _fill(client, tmp, frames))
        cube_io.consolidate(tmp)
    timings["fill"] = time.perf_counter() - start

    _log_scan(rows, typed, skipped, flagged)
    counts = dict(Counter(frames["frame_type"]))
    return IngestResult(final, len(frames), counts, skipped, flagged, timings)


class NotAppendable(LcdaskError):
    """New frames that cannot simply be appended to a cube (the whole cube must be remade)."""


def append(
    paths: Sequence[str | Path],
    out: str | Path,
    *,
    client=None,
    utc_offset_h: float | None = None,
) -> IngestResult:
    """Append new light frames, taken after the cube's last light, to ``out/cube.zarr``.

    The night goes on: frames written since the last run are scanned, checked and filled like
    `ingest` does, into new positions along ``frame`` (`lcdask.io.cube.append_frames`). The cube
    grows in place: the caller records the step as incomplete until this returns, so that an
    interrupted append is redone from scratch.

    Parameters
    ----------
    paths : sequence of str or Path
        The new files (not yet in the cube).
    out : str or Path
        The run directory.
    client : distributed.Client, optional
    utc_offset_h : float, optional
        See `ingest`.

    Returns
    -------
    IngestResult
        For the new frames (``n_frames`` is the cube's new total).

    Raises
    ------
    NotAppendable
        When a new frame is not a light, is not later than every light of the cube, or has a
        pixel type or trim/overscan sections the cube cannot hold; nothing is changed then.
    """
    final = Path(out) / "cube.zarr"
    cube = cube_io.open_cube(final)
    start = time.perf_counter()
    rows = [
        r
        for batch in map_frames(
            client,
            _scan_batch,
            _batches([str(p) for p in paths], 32),
            utc_offset_h=utc_offset_h,
            label="ingest: scan batch",
        )
        for r in batch
    ]
    rows = settle_untyped(rows)
    typed = _typed(rows)
    frames, _, dtype, skipped = plan_cube(rows, shape=(cube.sizes["y"], cube.sizes["x"]))
    kinds = sorted(set(frames["frame_type"]) - {"light"})
    if kinds:
        raise NotAppendable(f"new {', '.join(kinds)} frames change the calibration")
    is_light = cube["frame_type"].values == "light"
    if frames["time_mjd"].min() <= np.nanmax(cube["time_mjd"].values[is_light], initial=-np.inf):
        raise NotAppendable("a new light is earlier than the cube's last light")
    if not np.can_cast(dtype, cube["raw"].dtype):
        raise NotAppendable(f"new frames of type {dtype} in a cube of {cube['raw'].dtype}")

    def sections(trimsec, biassec) -> set[tuple[str, str]]:
        return {(str(t), str(b)) for t, b in zip(trimsec, biassec, strict=True)}

    if not sections(frames["trimsec"], frames["biassec"]) <= sections(
        cube["trimsec"].values, cube["biassec"].values
    ):
        raise NotAppendable("the new frames' trim or overscan sections differ from the cube's")
    frames["bjd_tdb"] = _bjd(frames)
    frames["flags"] = np.zeros(len(frames), np.int32)
    frames["flag_reason"] = ""
    timings = {"scan": time.perf_counter() - start}

    start = time.perf_counter()
    index = cube_io.append_frames(final, frames)
    frames.index = list(index)
    flagged = _flag(final, frames, _fill(client, final, frames))
    before = json.loads(cube.attrs.get("skipped", "[]"))
    cube_io.set_attrs(
        final,
        skipped=json.dumps(before + [s.__dict__ for s in skipped]),
        typed=json.dumps(json.loads(cube.attrs.get("typed", "[]")) + typed),
    )
    timings["fill"] = time.perf_counter() - start
    _log_scan(rows, typed, skipped, flagged)
    counts = dict(Counter(frames["frame_type"]))
    return IngestResult(final, index.stop, counts, skipped, flagged, timings)


def _typed(rows: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The untyped frames taken as lights, and why (for the cube's attrs and run.json)."""
    return [
        {"path": r["path"], "frame_type": r["frame_type"], "why": r["typed"]}
        for r in rows
        if r.get("typed")
    ]


def _log_scan(
    rows: Sequence[dict[str, Any]],
    typed: list[dict[str, str]],
    skipped: Sequence[Skipped],
    flagged: Sequence[Skipped],
) -> None:
    """Say what the scan assumed and what it left out: a line per problem, a count for many."""
    if typed:
        by_stars = sum(1 for t in typed if " stars in " in t["why"])
        how = []
        if by_stars:
            how.append(f"{by_stars} by the stars in them")
        if len(typed) - by_stars:
            how.append(f"{len(typed) - by_stars} by an exposure > 0 and an OBJECT")
        log.warning(
            "%d frames had no IMAGETYP: taken as lights (%s; each in run.json 'typed')",
            len(typed),
            ", ".join(how),
        )
    colours = Counter(r["colour"] for r in rows if r.get("colour"))
    for kind, n in colours.items():
        log.info("%d %s", n, COLOUR_READ[kind])
    for line in reason_lines(skipped, what="frames skipped"):
        log.warning("%s", line)
    for line in reason_lines(flagged, what="frames flagged"):
        log.warning("%s", line)


def _bjd(frames: pd.DataFrame) -> np.ndarray:
    """Barycentric Julian Date (TDB) of each frame where pointing and site are known, else NaN."""
    return np.asarray(
        bjd_tdb(
            frames["time_mjd"].to_numpy(float),
            frames["ra_deg"].to_numpy(float),
            frames["dec_deg"].to_numpy(float),
            frames["site_lat_deg"].to_numpy(float),
            frames["site_lon_deg"].to_numpy(float),
            frames["site_height_m"].to_numpy(float),
        ),
        dtype=float,
    )


def run_ingest(ctx: RunContext) -> dict:
    """Every input into a new cube (`lcdask.stages.ingest.ingest`)."""
    result = ingest(ctx.inputs, ctx.out, client=ctx.client, overwrite=True)
    return {"counts": result.counts, "n_frames": result.n_frames}


def append_ingest(ctx: RunContext) -> dict:
    """The new inputs appended to the cube (`lcdask.stages.ingest.append`); the counts merged."""
    appending = ctx.appending
    log.info("ingest: appending %d new file(s) to the run", len(appending.files))
    result = append(appending.files, ctx.out, client=ctx.client)
    n_new = sum(result.counts.values())
    appending.frames = list(range(result.n_frames - n_new, result.n_frames))
    counts = dict(appending.before("ingest").get("counts", {}))
    for kind, n in result.counts.items():
        counts[kind] = counts.get(kind, 0) + n
    return {"counts": counts, "n_frames": result.n_frames}
