"""The run's target: coordinates as given, or a name resolved by SIMBAD and cached on disk.

`resolve_target` turns what a user passes to ``lcdask run --target`` into ICRS degrees once, in
the driver, before the run starts (the stages then only see numbers):

* ``(ra, dec)`` or a string made of numbers and sexagesimal separators ("150.1 20.3",
  "10:00:24.5 +20:18:00", "10h00m24.5s +20d18m00s") is read by `lcdask.classify.parse_target`
  (source ``"given"``);
* anything else is an object name, looked up with astroquery's
  `~astroquery.simbad.SimbadClass.query_object` (SIMBAD's TAP service; source ``"simbad"``) and
  the answer cached as ``simbad_<name>.json`` in the catalog cache folder
  (`lcdask.catalogs.default_cache_dir`, or the run's ``catalog.cache_dir``), so a name is asked
  once; later runs, and runs offline, read the cache (source ``"cache"``).

Offline without a cached answer, an unknown name, or a failed service give one `TargetError`
saying to pass the coordinates instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lcdask._utils.net import query_versions, socket_timeout
from lcdask._utils.skygeom import tangent_plane
from lcdask.catalogs import default_cache_dir
from lcdask.classify import parse_target
from lcdask.errors import LcdaskError
from lcdask.io.atomic import write_json_atomic

__all__ = ["ResolvedTarget", "TargetError", "looks_like_coordinates", "resolve_target"]

SIMBAD_SERVICE = "SIMBAD TAP (astroquery.simbad.Simbad.query_object)"

_UNIT_AFTER_NUMBER = re.compile(r"(?<=[\d.])[hmsd°'\"]")
_COORDINATE_CHARS = re.compile(r"[\d\s.,:+\-]+")

_GIVE_COORDINATES = (
    "give the target's position instead, --target \"RA DEC\" in degrees ('279.2347 38.7837') "
    "or sexagesimal ('18:36:56.34 +38:47:01.3')"
)


class TargetError(LcdaskError):
    """A target name could not be resolved (unknown, service failed, offline without a cache)."""


@dataclass(frozen=True)
class ResolvedTarget:
    """A target's position and where it came from.

    Attributes
    ----------
    ra, dec : float
        ICRS degrees.
    source : {"given", "simbad", "cache"}
        Coordinates given by the user, answered by SIMBAD now, or read from the cache.
    given : str
        What the user passed (a name or the coordinates as text).
    name : str
        SIMBAD's main identifier (names only, else "").
    cache_file : str
        The cache file read or written (names only, else "").
    """

    ra: float
    dec: float
    source: str
    given: str
    name: str = ""
    cache_file: str = ""

    def as_record(self) -> dict[str, Any]:
        """The target as plain data (for ``run.json``)."""
        return asdict(self)


def looks_like_coordinates(text: str) -> bool:
    """Whether ``text`` is made only of numbers and sexagesimal separators (not a name)."""
    return bool(_COORDINATE_CHARS.fullmatch(_UNIT_AFTER_NUMBER.sub("", text.strip())))


def _normalised(name: str) -> str:
    return " ".join(name.split()).lower()


def _cache_path(cache_dir: Path, name: str) -> Path:
    key = _normalised(name)
    slug = re.sub(r"[^a-z0-9+\-]+", "_", key).strip("_")[:40] or "name"
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return cache_dir / f"simbad_{slug}_{digest}.json"


def _read_cache(path: Path, name: str) -> dict[str, Any] | None:
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if entry.get("normalised_name") != _normalised(name):
        return None
    if not (np.isfinite(entry.get("ra", np.nan)) and np.isfinite(entry.get("dec", np.nan))):
        return None
    return entry


def query_simbad(name: str, *, timeout_s: float = 30.0) -> dict[str, Any]:
    """Ask SIMBAD for an object's ICRS position (astroquery's `query_object`, one TAP query).

    Parameters
    ----------
    name : str
        Any identifier SIMBAD knows ("Vega", "WASP-12", "HD 172167", "M 101").
    timeout_s : float, optional
        Socket timeout of each request.

    Returns
    -------
    dict
        ``ra``, ``dec`` (degrees), ``main_id``, ``coo_bibcode`` and the ADQL ``query``.

    Raises
    ------
    TargetError
        When SIMBAD knows no such object or gives it no position.
    Exception
        Whatever the network or the service raises (see `resolve_target`).
    """
    from astroquery.simbad import SimbadClass

    simbad = SimbadClass()
    with socket_timeout(timeout_s), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NoResultsWarning: handled below
        query = simbad.query_object(name, get_query_payload=True).get("QUERY", "")
        table = simbad.query_object(name)
    if table is None or len(table) == 0:
        raise TargetError(f"SIMBAD knows no object named {name!r}; {_GIVE_COORDINATES}")
    row = table[0]
    columns = {c.lower(): c for c in table.colnames}
    if "ra" in columns and "dec" in columns and table[columns["ra"]].unit is not None:
        ra, dec = float(row[columns["ra"]]), float(row[columns["dec"]])
    else:  # astroquery < 0.4.8 (the old sim-script service): sexagesimal RA/DEC columns
        from astropy import units as u
        from astropy.coordinates import SkyCoord

        text = str(row[columns["ra"]]), str(row[columns["dec"]])
        coord = SkyCoord(*text, unit=(u.hourangle, u.deg))
        ra, dec = float(coord.ra.deg), float(coord.dec.deg)
    if not (np.isfinite(ra) and np.isfinite(dec)):
        raise TargetError(f"SIMBAD has no position for {name!r}; {_GIVE_COORDINATES}")
    main_id = columns.get("main_id")
    bibcode = columns.get("coo_bibcode")
    return {
        "ra": ra,
        "dec": dec,
        "main_id": " ".join(str(row[main_id]).split()) if main_id else name,
        "coo_bibcode": str(row[bibcode]) if bibcode else "",
        "query": query,
    }


def resolve_target(
    target: str | Sequence[float],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    offline: bool = False,
    timeout_s: float = 30.0,
) -> ResolvedTarget:
    """The target's ICRS position: coordinates as given, or a name through SIMBAD (cached).

    Parameters
    ----------
    target : str or (float, float)
        ``(ra_deg, dec_deg)``, "RA Dec" in degrees or sexagesimal, or an object name.
    cache_dir : str or Path, optional
        Where answers are cached (default `lcdask.catalogs.default_cache_dir`).
    offline : bool, optional
        Never reach the network: a name must be in the cache.
    timeout_s : float, optional
        Socket timeout of the SIMBAD requests.

    Returns
    -------
    ResolvedTarget

    Raises
    ------
    ValueError
        For coordinates that cannot be read (`lcdask.classify.parse_target`).
    TargetError
        For a name SIMBAD does not know, a failed query, or offline without a cached answer;
        the message says to give RA and Dec instead.
    """
    if not isinstance(target, str) or looks_like_coordinates(target):
        ra, dec = parse_target(target)
        given = target if isinstance(target, str) else f"{ra} {dec}"
        return ResolvedTarget(ra=ra, dec=dec, source="given", given=given)
    name = " ".join(target.split())
    if not name:
        raise ValueError(f"the target is empty; {_GIVE_COORDINATES}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = _cache_path(cache, name)
    entry = _read_cache(path, name)
    if entry is not None:
        return ResolvedTarget(
            ra=float(entry["ra"]),
            dec=float(entry["dec"]),
            source="cache",
            given=name,
            name=str(entry.get("main_id", "")),
            cache_file=str(path),
        )
    if offline:
        raise TargetError(
            f"offline, and no cached SIMBAD answer for the target {name!r} in {cache}; "
            f"{_GIVE_COORDINATES}"
        )
    try:
        answer = query_simbad(name, timeout_s=timeout_s)
    except TargetError:
        raise
    except Exception as exc:  # network and service failures of every kind
        detail = " ".join(str(exc).split())  # one line (pyvo's messages span several)
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise TargetError(
            f"cannot resolve the target name {name!r} with SIMBAD ({type(exc).__name__}: "
            f"{detail}) and no answer is cached in {cache}; {_GIVE_COORDINATES}"
        ) from exc
    entry = {
        "name": name,
        "normalised_name": _normalised(name),
        **answer,
        "service": SIMBAD_SERVICE,
        "query_time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": query_versions(),
    }
    write_json_atomic(path, entry)
    return ResolvedTarget(
        ra=answer["ra"],
        dec=answer["dec"],
        source="simbad",
        given=name,
        name=answer["main_id"],
        cache_file=str(path),
    )


# --------------------------------------------------------------------------------------------
# the target among the run's sources


@dataclass(frozen=True)
class TargetLocation:
    """Where the run found the target, or why it could not.

    Attributes
    ----------
    ra, dec : float
        The target's position as given (degrees).
    found : bool
        Whether a source of the light curves is the target.
    source_id : int or None
        That source.
    how : str
        ``"detected"`` (a matched source within the radius) or ``"forced"`` (a source added at
        the target's position and measured by forced photometry in every frame that holds it);
        empty when not found.
    separation_arcsec : float
        Distance from the given position to the source (NaN when not found).
    radius_arcsec : float
        The match radius used.
    n_frames_on_image : int
        Solved frames whose image holds the target's position.
    why : str
        Why the target is not in the light curves (empty when found).
    nearest_source_id : int or None
        The nearest source to the given position, whatever its distance.
    nearest_arcsec : float
        Its distance (NaN when there are no sources).
    """

    ra: float
    dec: float
    found: bool
    source_id: int | None
    how: str
    separation_arcsec: float
    radius_arcsec: float
    n_frames_on_image: int
    why: str = ""
    nearest_source_id: int | None = None
    nearest_arcsec: float = float("nan")

    def as_record(self) -> dict[str, Any]:
        """Plain data for run.json (NaN as None)."""
        return {
            k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in asdict(self).items()
        }

    def message(self) -> str:
        """One line for the log and the report."""
        where = f"RA {self.ra:.5f} Dec {self.dec:+.5f}"
        if self.found:
            return (
                f"target at {where}: source {self.source_id} ({self.how}, "
                f'{self.separation_arcsec:.1f}" away, on {self.n_frames_on_image} frames)'
            )
        nearest = (
            f"; nearest source {self.nearest_source_id} at {_angle_text(self.nearest_arcsec)}"
            if self.nearest_source_id is not None
            else ""
        )
        return f"target given at {where}, not found: {self.why}{nearest}"


def _angle_text(arcsec: float) -> str:
    if arcsec < 120:
        return f'{arcsec:.1f}"'
    if arcsec < 7200:
        return f"{arcsec / 60:.1f}'"
    return f"{arcsec / 3600:.2f} deg"


def target_on_image(
    frames: Any, ra: float, dec: float, shape: tuple[int, int], *, margin_px: float = 5.0
) -> np.ndarray:
    """Which solved frames hold a sky position on their image.

    Parameters
    ----------
    frames : pandas.DataFrame
        The frames table (``wcs_solved``: the plate solution's header, empty when none).
    ra, dec : float
        The position (degrees).
    shape : tuple of int
        ``(ny, nx)`` of the frames.
    margin_px : float, optional
        Distance from the image's edge a position must keep.

    Returns
    -------
    numpy.ndarray of bool
        One per row of ``frames``.
    """
    from astropy.io import fits
    from astropy.wcs import WCS

    ny, nx = shape
    inside = np.zeros(len(frames), bool)
    for k, text in enumerate(frames["wcs_solved"].to_numpy()):
        if not text:
            continue
        x, y = WCS(fits.Header.fromstring(str(text))).all_world2pix([ra], [dec], 0)
        x, y = float(x[0]), float(y[0])
        inside[k] = margin_px <= x <= nx - 1 - margin_px and margin_px <= y <= ny - 1 - margin_px
    return inside


def locate_target(
    sources: Any,
    frames: Any,
    ra: float,
    dec: float,
    *,
    shape: tuple[int, int],
    radius_arcsec: float,
    absolute: bool = True,
    absolute_why: str = "",
) -> TargetLocation:
    """Find the target among the run's sources, or say why it is not there.

    The nearest source within ``radius_arcsec`` of the given position is the target
    (``how="detected"``). Else, when the frames' positions are absolute and the position falls
    on the image of some solved frames, the caller should add a source there and measure it by
    forced photometry: the returned location has ``how="forced"`` and no ``source_id`` yet.
    Else the target is not found, with the reason.

    Parameters
    ----------
    sources : pandas.DataFrame
        ``source_id``, ``ra``, ``dec`` (e.g. the light curves' median positions).
    frames : pandas.DataFrame
        The solved frames (``wcs_solved``).
    ra, dec : float
        The target (degrees).
    shape : tuple of int
        ``(ny, nx)``.
    radius_arcsec : float
        Largest distance of a detected source from the given position.
    absolute : bool, optional
        Whether the frames' sky positions are absolute (a plate solution or a header WCS),
        rather than a nominal tangent plane that only aligns the frames to each other.
    absolute_why : str, optional
        Why they are not, for the message.

    Returns
    -------
    TargetLocation
    """
    nearest_id, nearest = None, float("nan")
    if len(sources):
        xi, eta = tangent_plane(
            sources["ra"].to_numpy(float), sources["dec"].to_numpy(float), ra, dec
        )
        sep = np.hypot(xi, eta)
        sep = np.where(np.isfinite(sep), sep, np.inf)
        best = int(np.argmin(sep))
        if np.isfinite(sep[best]):
            nearest_id, nearest = int(sources["source_id"].iloc[best]), float(sep[best])
    n_on = int(target_on_image(frames, ra, dec, shape).sum()) if len(frames) else 0
    common = dict(
        ra=float(ra),
        dec=float(dec),
        radius_arcsec=float(radius_arcsec),
        n_frames_on_image=n_on,
        nearest_source_id=nearest_id,
        nearest_arcsec=nearest,
    )
    if not absolute:
        why = absolute_why or "the frames have no absolute plate solution"
        return TargetLocation(
            found=False, source_id=None, how="", separation_arcsec=np.nan, why=why, **common
        )
    if not len(frames):
        return TargetLocation(
            found=False,
            source_id=None,
            how="",
            separation_arcsec=np.nan,
            why="no frame has a plate solution",
            **common,
        )
    if nearest_id is not None and nearest <= radius_arcsec:
        return TargetLocation(
            found=True, source_id=nearest_id, how="detected", separation_arcsec=nearest, **common
        )
    if n_on == 0:
        why = f"outside the field of all {len(frames)} solved frames"
        return TargetLocation(
            found=False, source_id=None, how="", separation_arcsec=np.nan, why=why, **common
        )
    return TargetLocation(found=True, source_id=None, how="forced", separation_arcsec=0.0, **common)


def add_target_source(ds: Any, ra: float, dec: float) -> tuple[Any, int]:
    """The light curves with one more source, at the target's position, all entries missing.

    Forced photometry (`lcdask.stages.forced.forced_photometry` with ``force_ids``) then measures it
    in every solved frame that holds it. Its ``ra``/``dec`` are set in every entry (so that
    `lcdask.lightcurves.missing_entries` places it); entries forced photometry cannot measure
    get theirs back to NaN (`clear_unmeasured_positions`).

    Parameters
    ----------
    ds : xarray.Dataset
        The light curves (`lcdask.lightcurves.build_lightcurves`).
    ra, dec : float
        The target (degrees).

    Returns
    -------
    ds : xarray.Dataset
        With the new source last.
    source_id : int
        Its id: one more than the largest.
    """
    import xarray as xr

    from lcdask.lightcurves import LightCurveFlag

    sid = int(ds["source_id"].max()) + 1 if ds.sizes["source"] else 0
    extra = ds.isel(source=[0]) if ds.sizes["source"] else None
    if extra is None:
        raise ValueError("add_target_source needs light curves with at least one source")
    extra = extra.copy(deep=True)
    for name, var in extra.data_vars.items():
        if "source" not in var.dims:
            continue
        if name == "flags":
            var.values[...] = int(LightCurveFlag.MISSING)
        elif np.issubdtype(var.dtype, np.floating):
            var.values[...] = np.nan
        elif var.dtype == bool:
            var.values[...] = False
    extra["ra"].values[...] = ra
    extra["dec"].values[...] = dec
    extra = extra.assign_coords(source_id=("source", [sid]))
    return xr.concat([ds, extra], dim="source", data_vars="all"), sid


def clear_unmeasured_positions(ds: Any, source_id: int) -> Any:
    """NaN positions in the entries of ``source_id`` that are still missing."""
    from lcdask.lightcurves import LightCurveFlag

    out = ds.copy()
    k = int(np.flatnonzero(out["source_id"].to_numpy() == source_id)[0])
    missing = (out["flags"].values[k] & int(LightCurveFlag.MISSING)) != 0
    for name in ("ra", "dec", "x", "y"):
        values = out[name].values.copy()
        values[k, missing] = np.nan
        out[name] = (out[name].dims, values, out[name].attrs)
    return out
