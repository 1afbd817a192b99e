"""A planet's ephemeris and shape: from the options, or by name from the NASA Exoplanet Archive.

`query_planet` asks the archive's Planetary Systems Composite Parameters table (``pscomppars``,
one row per planet) through astroquery's
`~astroquery.ipac.nexsci.nasa_exoplanet_archive.NasaExoplanetArchiveClass.query_criteria` (the
archive's TAP service) and caches the row as ``nasa_pscomppars_<name>.json`` in the catalog cache
folder (the run's ``catalog-cache`` for ``lcdask transit``), so a planet is asked once; later
fits, and fits offline, read the cache. `resolve_planet` merges the archive's values with the
options (``[transit]`` or the command line), which win one by one.

The archive's columns used (its documentation, "Planetary Systems Composite Data" column
definitions): ``pl_name``, ``hostname``, ``ra``, ``dec``, ``pl_orbper`` (days), ``pl_tranmid``
(BJD, days), ``pl_ratror`` (Rp/Rs), ``pl_ratdor`` (a/Rs), ``pl_orbincl`` (degrees),
``pl_imppar``, ``pl_trandep`` (%), ``pl_trandur`` (hours), ``pl_orbeccen``, ``pl_orblper``
(degrees), ``st_teff``, ``st_logg``, ``sy_vmag``, each value with ``...err1`` (upper) and
``...err2`` (lower, negative) errors.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lcdask._utils.net import query_versions, socket_timeout
from lcdask.config import TransitConfig
from lcdask.errors import LcdaskError
from lcdask.io.atomic import write_json_atomic
from lcdask.transit.model import TransitShape

__all__ = [
    "ARCHIVE_COLUMNS",
    "PlanetError",
    "PlanetParameters",
    "archive_name",
    "planet_from_row",
    "query_planet",
    "resolve_planet",
]

ARCHIVE_SERVICE = "NASA Exoplanet Archive TAP, pscomppars (astroquery NasaExoplanetArchive)"

ARCHIVE_COLUMNS = (
    "pl_name", "hostname", "ra", "dec",
    "pl_orbper", "pl_orbpererr1", "pl_orbpererr2",
    "pl_tranmid", "pl_tranmiderr1", "pl_tranmiderr2",
    "pl_ratror", "pl_ratrorerr1", "pl_ratrorerr2",
    "pl_ratdor", "pl_ratdorerr1", "pl_ratdorerr2",
    "pl_orbincl", "pl_orbinclerr1", "pl_orbinclerr2",
    "pl_imppar", "pl_trandep", "pl_trandur",
    "pl_orbeccen", "pl_orblper",
    "st_teff", "st_logg", "sy_vmag",
)  # fmt: skip
"""The pscomppars columns asked for (module docstring)."""

_GIVE_OPTIONS = (
    "give the planet's parameters instead: --t0 BJD --period D --rp-rs K --a-rs A --inc DEG "
    "(or a [transit] section with t0, period_d, rp_rs, a_rs, inc_deg)"
)


class PlanetError(LcdaskError):
    """A planet could not be looked up (unknown, service failed, offline without a cache), or
    its parameters are incomplete; the message says what to give."""


@dataclass(frozen=True)
class PlanetParameters:
    """What a transit fit needs to know of a planet beforehand.

    Attributes
    ----------
    name, host : str
        The planet's and its star's names (empty when not known).
    t0, t0_err : float or None
        A reference mid-transit time (BJD_TDB) and its error (days).
    period_d, period_err : float or None
        Orbital period and its error (days).
    rp_rs, rp_rs_err, a_rs, a_rs_err, inc_deg, inc_err : float or None
        The shape: radius ratio, scaled semi-major axis, inclination (degrees), with errors.
    u : tuple of float or None
        Quadratic limb darkening in the frames' band; None when it is to be fitted.
    ecc, w_deg : float
        Eccentricity and argument of periastron (degrees).
    source : str
        Where the values came from: "options", "archive", "cache", or "archive+options" /
        "cache+options" when options overrode some.
    cache_file : str
        The archive answer's cache file (empty when the archive was not used).
    """

    name: str = ""
    host: str = ""
    t0: float | None = None
    t0_err: float | None = None
    period_d: float | None = None
    period_err: float | None = None
    rp_rs: float | None = None
    rp_rs_err: float | None = None
    a_rs: float | None = None
    a_rs_err: float | None = None
    inc_deg: float | None = None
    inc_err: float | None = None
    u: tuple[float, float] | None = None
    ecc: float = 0.0
    w_deg: float = 90.0
    source: str = "options"
    cache_file: str = ""

    def missing(self) -> list[str]:
        """The values a fit needs that are not known."""
        needed = ("t0", "period_d", "rp_rs", "a_rs", "inc_deg")
        return [n for n in needed if getattr(self, n) is None]

    def shape(self) -> TransitShape:
        """The transit's shape (`PlanetError` when incomplete; limb darkening 0.3, 0.2 when
        it is to be fitted, a start only)."""
        self.check()
        return TransitShape(
            period_d=float(self.period_d),
            rp_rs=float(self.rp_rs),
            a_rs=float(self.a_rs),
            inc_deg=float(self.inc_deg),
            u=self.u if self.u is not None else (0.3, 0.2),
            ecc=self.ecc,
            w_deg=self.w_deg,
        )

    def check(self) -> None:
        """Raise `PlanetError` naming what is missing."""
        missing = self.missing()
        if missing:
            where = f" ({self.name}, from {self.source})" if self.name else ""
            raise PlanetError(
                f"the transit fit needs the planet's {', '.join(missing)}{where}; "
                f"{_GIVE_OPTIONS}, or --planet NAME for the NASA Exoplanet Archive"
            )

    def as_record(self) -> dict[str, Any]:
        """Plain data."""
        out = asdict(self)
        out["u"] = list(self.u) if self.u is not None else None
        return out


def archive_name(name: str) -> str:
    """The archive's spelling of a planet name: spaces collapsed, "XO-1b" as "XO-1 b"."""
    name = " ".join(name.split())
    match = re.fullmatch(r"(.*[\d)])([b-z])", name)
    return f"{match.group(1)} {match.group(2)}" if match else name


def _number(value: Any) -> float | None:
    """A finite float from a table cell (masked, Quantity, string or None -> None)."""
    value = getattr(value, "value", value)
    if value is None or getattr(value, "mask", False) is True:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _error(row: Mapping[str, Any], column: str) -> float | None:
    """The mean of the archive's upper (err1) and lower (err2, negative) errors."""
    errors = [_number(row.get(f"{column}err{k}")) for k in (1, 2)]
    known = [abs(e) for e in errors if e is not None]
    return sum(known) / len(known) if known else None


def planet_from_row(row: Mapping[str, Any], *, source: str = "archive") -> PlanetParameters:
    """`PlanetParameters` from a pscomppars row (a mapping of column to value).

    The inclination comes from ``pl_orbincl``, else from the impact parameter and a/Rs; the
    radius ratio from ``pl_ratror``, else the square root of the depth (``pl_trandep``, %).
    """
    rp = _number(row.get("pl_ratror"))
    rp_err = _error(row, "pl_ratror")
    depth = _number(row.get("pl_trandep"))
    if rp is None and depth is not None and depth > 0:
        rp, rp_err = math.sqrt(depth / 100.0), None
    a_rs = _number(row.get("pl_ratdor"))
    inc = _number(row.get("pl_orbincl"))
    inc_err = _error(row, "pl_orbincl")
    b = _number(row.get("pl_imppar"))
    if inc is None and b is not None and a_rs is not None and 0 <= b < a_rs:
        inc, inc_err = math.degrees(math.acos(b / a_rs)), None
    ecc = _number(row.get("pl_orbeccen")) or 0.0
    w = _number(row.get("pl_orblper"))
    return PlanetParameters(
        name=str(row.get("pl_name") or ""),
        host=str(row.get("hostname") or ""),
        t0=_number(row.get("pl_tranmid")),
        t0_err=_error(row, "pl_tranmid"),
        period_d=_number(row.get("pl_orbper")),
        period_err=_error(row, "pl_orbper"),
        rp_rs=rp,
        rp_rs_err=rp_err,
        a_rs=a_rs,
        a_rs_err=_error(row, "pl_ratdor"),
        inc_deg=inc,
        inc_err=inc_err,
        ecc=ecc if 0 <= ecc < 1 else 0.0,
        w_deg=w if (w is not None and ecc > 0) else 90.0,
        source=source,
    )


def _cache_path(cache_dir: Path, name: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "_", archive_name(name).lower()).strip("_")
    return cache_dir / f"nasa_pscomppars_{slug}.json"


def _archive_query(name: str, *, timeout_s: float) -> tuple[dict[str, Any], str]:
    """The pscomppars row of ``name`` (planet, or a host with one planet) and the ADQL sent."""
    from astroquery.ipac.nexsci.nasa_exoplanet_archive import NasaExoplanetArchive

    quoted = name.replace("'", "''")
    criteria = {
        "table": "pscomppars",
        "select": ",".join(ARCHIVE_COLUMNS),
        "where": f"pl_name = '{quoted}' or hostname = '{quoted}'",
    }
    with socket_timeout(timeout_s), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NoResultsWarning, unit warnings: handled below
        query = NasaExoplanetArchive.query_criteria(get_query_payload=True, **criteria)
        table = NasaExoplanetArchive.query_criteria(**criteria)
    rows = [{c: row[c] for c in table.colnames if c in ARCHIVE_COLUMNS} for row in table]
    exact = [r for r in rows if str(r.get("pl_name", "")).lower() == name.lower()]
    if exact:
        rows = exact
    if not rows:
        raise PlanetError(
            f"the NASA Exoplanet Archive (pscomppars) has no planet or host named {name!r}; "
            f"check the spelling (e.g. 'XO-1 b'), or {_GIVE_OPTIONS}"
        )
    if len(rows) > 1:
        names = ", ".join(str(r.get("pl_name")) for r in rows)
        raise PlanetError(f"{name!r} has several planets in the archive ({names}): name one")
    row = {
        k: (_number(v) if k not in ("pl_name", "hostname") else str(v)) for k, v in rows[0].items()
    }
    return row, str(query)


def query_planet(
    name: str,
    *,
    cache_dir: str | os.PathLike[str],
    offline: bool = False,
    timeout_s: float = 30.0,
) -> PlanetParameters:
    """A planet's parameters from the NASA Exoplanet Archive (pscomppars), cached on disk.

    Parameters
    ----------
    name : str
        The planet ("XO-1 b", "XO-1b"), or a host with a single planet.
    cache_dir : str or Path
        Where the answer is cached (``nasa_pscomppars_<name>.json``); a cached answer is used
        without a query.
    offline : bool, optional
        Never reach the network: the planet must be cached.
    timeout_s : float, optional
        Socket timeout of each request.

    Returns
    -------
    PlanetParameters
        ``source`` "archive" (asked now) or "cache".

    Raises
    ------
    PlanetError
        For a name the archive does not know, a failed query, or offline without a cached
        answer; the message says to give the parameters instead.
    """
    name = archive_name(name)
    if not name:
        raise ValueError(f"the planet name is empty; {_GIVE_OPTIONS}")
    cache = Path(cache_dir)
    path = _cache_path(cache, name)
    if path.is_file():
        entry = json.loads(path.read_text())
        planet = planet_from_row(entry["row"], source="cache")
        return replace(planet, cache_file=str(path))
    if offline:
        raise PlanetError(
            f"offline, and no cached NASA Exoplanet Archive answer for {name!r} in {cache}; "
            f"{_GIVE_OPTIONS}"
        )
    try:
        row, query = _archive_query(name, timeout_s=timeout_s)
    except PlanetError:
        raise
    except Exception as exc:  # network and service failures of every kind
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise PlanetError(
            f"cannot look up {name!r} in the NASA Exoplanet Archive ({type(exc).__name__}: "
            f"{detail}) and no answer is cached in {cache}; {_GIVE_OPTIONS}"
        ) from exc
    entry = {
        "name": name,
        "row": row,
        "query": query,
        "service": ARCHIVE_SERVICE,
        "query_time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": query_versions(),
    }
    write_json_atomic(path, entry)
    return replace(planet_from_row(row, source="archive"), cache_file=str(path))


_OPTION_FIELDS = ("t0", "t0_err", "period_d", "period_err", "rp_rs", "a_rs", "inc_deg")


def resolve_planet(
    options: TransitConfig,
    *,
    cache_dir: str | os.PathLike[str],
    timeout_s: float = 30.0,
) -> PlanetParameters:
    """The planet of a fit: the archive's values for ``options.planet`` overridden by options.

    Parameters
    ----------
    options : TransitConfig
        ``planet`` (a name, or empty), and values that override the archive's one by one.
    cache_dir : str or Path
        The archive answers' cache.
    timeout_s : float, optional
        Socket timeout of the archive's requests.

    Returns
    -------
    PlanetParameters
        Checked complete (`PlanetParameters.check`).

    Raises
    ------
    PlanetError
        When the lookup fails, or values are still missing.
    """
    given_all = all(getattr(options, n) is not None for n in _OPTION_FIELDS if "err" not in n)
    if options.planet:
        try:
            base = query_planet(
                options.planet, cache_dir=cache_dir, offline=options.offline, timeout_s=timeout_s
            )
        except PlanetError:
            if not given_all:
                raise
            # every value is given: the name is only a name
            base = PlanetParameters(name=archive_name(options.planet), source="options")
    else:
        base = PlanetParameters(source="options")
    given = {n: getattr(options, n) for n in _OPTION_FIELDS if getattr(options, n) is not None}
    if options.u1 is not None and options.u2 is not None:
        given["u"] = (float(options.u1), float(options.u2))
    if options.ecc or options.w_deg != 90.0:
        given.update(ecc=options.ecc, w_deg=options.w_deg)
    # an option's error replaces the archive's: a value given alone has no known error
    pairs = (
        ("t0", "t0_err"), ("period_d", "period_err"), ("rp_rs", "rp_rs_err"),
        ("a_rs", "a_rs_err"), ("inc_deg", "inc_err"),
    )  # fmt: skip
    for value, error in pairs:
        if value in given and error not in given:
            given[error] = None
    source = base.source
    if given and base.source in ("archive", "cache"):
        source = f"{base.source}+options"
    planet = replace(base, **given, source=source)
    planet.check()
    return planet
