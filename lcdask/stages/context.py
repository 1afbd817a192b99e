"""What a stage is given (`RunContext`), and what the run's table says of it (`Stage`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # lcdask.config imports the stages' options
    from lcdask.config import Config


__all__ = ["Appending", "RunContext", "Stage", "catalog_cache"]


@dataclass
class Appending:
    """Frames added to a finished run, measured alone and merged into its products.

    Attributes
    ----------
    files : list of Path
        The new input files.
    previous : dict
        The earlier run's ``run.json``.
    frames : list of int
        The new frames' indices in the cube (set by the ingest stage).
    """

    files: list[Path]
    previous: dict[str, Any]
    frames: list[int] = field(default_factory=list)

    def before(self, stage: str) -> dict[str, Any]:
        """The earlier run's record of ``stage`` (without its status and timing)."""
        entry = self.previous.get("stages", {}).get(stage, {})
        return {k: v for k, v in entry.items() if k not in ("seconds", "status")}


@dataclass
class RunContext:
    """Everything a stage reads besides the products: the run's place, options and cluster.

    Attributes
    ----------
    out : Path
        The run directory.
    config : lcdask.config.Config
        The run's configuration.
    client : distributed.Client or None
        The cluster (`lcdask.stages._parallel` gives it the work), or None: serial.
    inputs : list of Path
        The input files.
    catalog : Path or None
        A reference catalog file given on the command line.
    target : tuple of float or None
        The target's RA and Dec (degrees), resolved before the run.
    record : dict
        ``run.json`` as it is being written: stages add notes (``record["notes"]``) and the
        target's location (``record["target"]``).
    appending : Appending or None
        Set when new frames are appended to a finished run.
    """

    out: Path
    config: Config
    client: Any
    inputs: list[Path]
    catalog: Path | None
    target: tuple[float, float] | None
    record: dict[str, Any]
    appending: Appending | None = None

    @property
    def cube_path(self) -> Path:
        """The cube store, ``RUN/cube.zarr``."""
        return self.out / "cube.zarr"

    def note(self, text: str) -> None:
        """A note of the run (``run.json`` ``notes``; the report lists them)."""
        self.record["notes"].append(text)

    def stage_record(self, stage: str) -> dict[str, Any]:
        """What ``run.json`` says of an earlier stage of this run."""
        return self.record["stages"].get(stage, {})

    def astrometry(self):
        """``[astrometry]``, offline also when the catalog is (``catalog.offline``)."""
        offline = self.config.astrometry.offline or self.config.catalog.offline
        return dataclasses.replace(self.config.astrometry, offline=offline)


@dataclass(frozen=True)
class Stage:
    """One entry of the run's stage table (`lcdask.run.STAGE_TABLE`).

    Attributes
    ----------
    name : str
        The stage's name in ``run.json`` and the log.
    products : tuple of str
        What it writes in the run directory: a rerun reuses the stage when they are there.
    run : callable
        ``run(context) -> dict``: does the stage and returns what ``run.json`` records of it.
    append : callable or None
        ``append(context) -> dict`` for frames appended to a finished run (the new frames
        alone, merged into the products); None when the stage is simply done again.
    """

    name: str
    products: tuple[str, ...]
    run: Callable[[RunContext], dict]
    append: Callable[[RunContext], dict] | None = None


def catalog_cache(config: Config, out: Path) -> Path:
    """Where a run caches online answers (catalog queries, SIMBAD names)."""
    return Path(config.catalog.cache_dir) if config.catalog.cache_dir else out / "catalog-cache"
