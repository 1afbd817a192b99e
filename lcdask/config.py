"""Run configuration: TOML in, frozen dataclasses out, validated once with errors naming the field.

A configuration file has one table per stage; every field has a default that suits ordinary data,
so a file holds only what differs. ``lcdask config`` prints the defaults as a commented TOML file
to start from. Each stage owns its options dataclass (documented in its numpydoc "Attributes"
section, which also gives the comments of the printed file).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lcdask.astrometry import AstrometryConfig
from lcdask.calibrate import CalibrationConfig
from lcdask.lightcurves import LightCurvesConfig
from lcdask.stages.level2 import Level2Config

__all__ = [
    "CatalogConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "default_toml",
    "load_config",
]


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and what is allowed."""


@dataclass(frozen=True)
class ClusterConfig:
    """Where the work runs.

    Attributes
    ----------
    kind : {"local", "scheduler", "slurm", "pbs"}
        A LocalCluster on this machine, an existing scheduler, or a dask-jobqueue batch cluster.
    workers : int
        Worker processes (local) or jobs (slurm/pbs); 0 means one per core (local).
    memory_limit : str
        Memory limit per worker, e.g. "4GB", or "auto" to share the machine's memory.
    scheduler : str
        Address of the running scheduler when kind is "scheduler" (tcp://host:port).
    queue : str
        Batch queue or partition (slurm/pbs).
    account : str
        Batch account or project (slurm/pbs).
    cores : int
        Cores per batch job (slurm/pbs); each job runs one single-threaded worker per core.
    job_memory : str
        Memory per batch job (slurm/pbs).
    walltime : str
        Wall-time limit per batch job, HH:MM:SS (slurm/pbs).
    """

    kind: str = "local"
    workers: int = 0
    memory_limit: str = "auto"
    scheduler: str = ""
    queue: str = ""
    account: str = ""
    cores: int = 1
    job_memory: str = "4GB"
    walltime: str = "01:00:00"

    def __post_init__(self) -> None:
        _choice("cluster.kind", self.kind, ("local", "scheduler", "slurm", "pbs"))
        if self.workers < 0:
            raise ConfigError(f"cluster.workers must be 0 or more, not {self.workers}")
        if self.kind == "scheduler" and not self.scheduler:
            raise ConfigError('cluster.scheduler: give the address when cluster.kind = "scheduler"')
        if not re.fullmatch(r"\d+:\d\d:\d\d", self.walltime):
            raise ConfigError(f"cluster.walltime must be HH:MM:SS, not {self.walltime!r}")


@dataclass(frozen=True)
class CatalogConfig:
    """The reference catalog for plate solving and photometric calibration.

    Attributes
    ----------
    source : {"auto", "file", "sdss", "gaia", "none"}
        "auto" takes the file when one is given, else SDSS where it has stars in the field and
        the band, else Gaia DR3 with G/BP/RP transformed to g r i V R I (Riello et al. 2021);
        queries through astroquery, cached. "sdss" and "gaia" query only that catalog;
        "none" skips photometric calibration (relative fluxes only).
    path : str
        A local catalog (FITS, ECSV, CSV, Parquet) when source is "file" or "auto".
    columns : dict
        Mapping of lcdask names to the file's columns, e.g. {ra = "RAJ2000", r = "rmag"}.
    cache_dir : str
        Where queried catalogs are cached ("" for RUN/catalog-cache).
    offline : bool
        Never reach the network: use the cache or the file only.
    """

    source: str = "auto"
    path: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    cache_dir: str = ""
    offline: bool = False

    def __post_init__(self) -> None:
        _choice("catalog.source", self.source, ("auto", "file", "sdss", "gaia", "none"))
        if self.source == "file" and not self.path:
            raise ConfigError('catalog.path: give the file when catalog.source = "file"')


@dataclass(frozen=True)
class Config:
    """The whole run's configuration: one section per stage."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    level2: Level2Config = field(default_factory=Level2Config)
    astrometry: AstrometryConfig = field(default_factory=AstrometryConfig)
    lightcurves: LightCurvesConfig = field(default_factory=LightCurvesConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)

    def as_dict(self) -> dict[str, Any]:
        """The configuration as plain data (for run.json; an astrometry.net API key left out)."""
        data = dataclasses.asdict(self)
        if data["astrometry"]["api_key"]:
            data["astrometry"]["api_key"] = "(given)"
        return data


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {value!r}")


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Return value converted to the annotated type, or raise ConfigError naming the field."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(name, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{name} must be {_type_name(annotation)}, not {value!r}")
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a table (dict), not {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, str, bool) and type(value) is annotation:
        return value
    raise ConfigError(f"{name} must be {_type_name(annotation)}, not {value!r}")


def _type_name(annotation: Any) -> str:
    args = typing.get_args(annotation)
    if args:
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


REMOVED_OPTIONS = {
    ("calibration", "rows_per_chunk"): (
        "the calibration sizes its blocks of rows by memory "
        "(lcdask.stages.calibrate.calibrate_cube)"
    ),
}
"""Options of earlier versions that no longer do anything: a file that still sets one loads,
with a warning naming it and why."""


def _build_section(section: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name in [n for n in values if (section, n) in REMOVED_OPTIONS]:
        why = REMOVED_OPTIONS[(section, name)]
        warnings.warn(
            f"[{section}] {name} is no longer an option and is ignored: {why}",
            UserWarning,
            stacklevel=3,
        )
        values = {k: v for k, v in values.items() if k != name}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"[{section}] has no option {', '.join(map(repr, unknown))}; "
            f"the options are {', '.join(sorted(known))}"
        )
    kwargs = {k: _check_type(f"{section}.{k}", v, hints[k]) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        message = str(exc)
        raise ConfigError(message if section in message else f"[{section}] {message}") from exc


def load_config(path: str | Path | None = None, **overrides: dict[str, Any]) -> Config:
    """Read and validate a TOML configuration; missing fields take their defaults.

    Parameters
    ----------
    path : str or Path, optional
        The TOML file; defaults only when None.
    **overrides : dict
        Per section, values that take precedence over the file (the command line's options).

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        For an unknown section or option, a value of the wrong type, or a value out of range;
        the message names the field.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    for section, values in overrides.items():
        data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    sections = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(map(repr, unknown))}; "
            f"the sections are {', '.join(sections)}"
        )
    built = {}
    for name in sections:
        values = data.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table, not {values!r}")
        built[name] = _build_section(name, typing.get_type_hints(Config)[name], values)
    return Config(**built)


def _attribute_docs(cls: type) -> dict[str, str]:
    """The one-paragraph descriptions of a dataclass's numpydoc "Attributes" section."""
    doc = cls.__doc__ or ""
    match = re.search(r"Attributes\n\s*-+\n(.*?)(\n\s*\n\S|\Z)", doc, re.S)
    docs: dict[str, str] = {}
    if not match:
        return docs
    current = None
    for line in match.group(1).splitlines():
        head = re.match(r"\s{4}(\w+)\s*:", line)
        if head:
            current = head.group(1)
            docs[current] = ""
        elif current and line.strip():
            docs[current] = (docs[current] + " " + line.strip()).strip()
    return docs


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def default_toml() -> str:
    """The default configuration as a commented TOML file (what ``lcdask config`` prints).

    Returns
    -------
    str
        Every section and option with its default value and description; options whose
        default is "none" (None) are shown commented out.
    """
    lines = [
        "# lcdask configuration: every option below shows its default.",
        "# Keep only what you change; pass the file with `lcdask run ... --config FILE`.",
    ]
    defaults = Config()
    for section in dataclasses.fields(Config):
        value = getattr(defaults, section.name)
        lines += ["", f"[{section.name}]"]
        docs = _attribute_docs(type(value))
        for option in dataclasses.fields(value):
            text = docs.get(option.name, "")
            for chunk in _wrap(text, 96):
                lines.append(f"# {chunk}")
            current = getattr(value, option.name)
            prefix = "# " if current is None else ""
            shown = '""' if current is None else _toml_value(current)
            lines.append(f"{prefix}{option.name} = {shown}")
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines
