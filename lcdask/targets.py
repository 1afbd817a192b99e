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

from lcdask.catalogs import _socket_timeout, _versions, default_cache_dir
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
    with _socket_timeout(timeout_s), warnings.catch_warnings():
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
        "versions": _versions(),
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
