"""The whole run: every stage in order, each product written atomically, resumable.

`run` goes through the stage table `STAGE_TABLE` (`lcdask.stages.context.Stage`: a name, its
products, a function of the run's context, and one for frames appended to a finished run); the
stages live in `lcdask.stages` and give their work to the cluster through
`lcdask.stages._parallel`. Stages and their products:

=============  =================================================================================
ingest         ``cube.zarr`` (raw frames and their metadata)
calibrate      masters, bad-pixel maps, ``calibrated`` and ``pixel_flags`` in the cube
level2         per-frame detection, plate solution, co-add (``coadd.fits``) and its ePSF
               (``psf.fits``), Level 3 photometry, zero point: ``frames.parquet``,
               ``detections.parquet``, per-frame results as variables on ``frame`` in the cube
lightcurves    DBSCAN matching, tracks of fast movers, forced photometry of the missing entries
               (`lcdask.stages.forced`, one task per frame), ``lightcurves.zarr`` with ensemble
               relative fluxes, ``sources.parquet`` (classes, motions, target)
report         ``report.html`` (bokeh) and ``plots/`` (PNG)
=============  =================================================================================

``run.json`` records the configuration, package versions, the inputs' fingerprint, and per stage
its status, timing and counts, plus every skipped or flagged frame with its reason. A rerun skips
each stage recorded complete whose products exist and whose inputs are unchanged; a stage that
must run again invalidates those after it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from lcdask import __version__
from lcdask.config import Config
from lcdask.io import cube as cube_io
from lcdask.io.atomic import write_json_atomic
from lcdask.io.discover import discover_frames
from lcdask.stages.calibrate import append_calibrate, run_calibrate
from lcdask.stages.context import Appending, RunContext, Stage, catalog_cache
from lcdask.stages.ingest import NotAppendable, append_ingest, run_ingest
from lcdask.stages.level2 import append_level2, run_level2_stage
from lcdask.stages.lightcurves import run_lightcurves
from lcdask.stages.report import run_report
from lcdask.targets import resolve_target

__all__ = ["STAGES", "STAGE_TABLE", "read_run_record", "run"]

log = logging.getLogger("lcdask")

STAGE_TABLE = (
    Stage("ingest", ("cube.zarr",), run_ingest, append_ingest),
    Stage("calibrate", ("cube.zarr",), run_calibrate, append_calibrate),
    Stage("level2", ("frames.parquet", "detections.parquet"), run_level2_stage, append_level2),
    Stage("lightcurves", ("lightcurves.zarr", "sources.parquet"), run_lightcurves),
    Stage("report", ("report.html", "plots"), run_report),
)
"""The run's stages in order. A new stage is one function of the `RunContext` and one entry."""

STAGES = tuple(stage.name for stage in STAGE_TABLE)

_VERSIONED = ("numpy", "dask", "distributed", "xarray", "zarr", "astropy", "photutils", "sep")


def read_run_record(out: str | Path) -> dict[str, Any]:
    """The run's ``run.json``, or an empty record when there is none (or it is unreadable)."""
    path = Path(out) / "run.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _fingerprint(paths: Iterable[Path]) -> str:
    """Hash of the input files' names, sizes and modification times."""
    digest = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    versions = {"lcdask": __version__}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A configuration as compared between runs: where the work ran ([cluster]) does not count."""
    settings = json.loads(json.dumps(config, default=str))
    settings.pop("cluster", None)
    return settings


class _Record:
    """run.json, kept in memory and written atomically after every stage."""

    def __init__(self, out: Path, config: Config, fingerprint: str, inputs: list[str]) -> None:
        self.out = out
        previous = read_run_record(out)
        settings = _comparable(config.as_dict())
        same = (
            previous.get("fingerprint") == fingerprint
            and _comparable(previous.get("config", {})) == settings
        )
        self.previous_stages = previous.get("stages", {}) if same else {}
        self.data: dict[str, Any] = {
            "lcdask_version": __version__,
            "started": datetime.now(UTC).isoformat(timespec="seconds"),
            "config": config.as_dict(),
            "versions": _versions(),
            "inputs": inputs,
            "fingerprint": fingerprint,
            "stages": {},
            "skipped": [],
            "flagged": [],
            "notes": [],
        }
        self.invalidated = False

    def done(self, stage: str, products: list[str]) -> bool:
        """Whether a stage can be skipped: complete before, products there, nothing redone above."""
        entry = self.previous_stages.get(stage, {})
        ok = (
            not self.invalidated
            and entry.get("status") == "complete"
            and all((self.out / p).exists() for p in products)
        )
        if ok:
            self.data["stages"][stage] = {**entry, "reused": True}
        else:
            self.invalidated = True
        return ok

    def complete(self, stage: str, seconds: float, **info: Any) -> None:
        self.data["stages"][stage] = {"status": "complete", "seconds": round(seconds, 3), **info}
        self.write()

    def write(self) -> None:
        write_json_atomic(self.out / "run.json", self.data)


def _stage(record: _Record, stage: Stage, ctx: RunContext) -> None:
    """Do ``stage`` unless an earlier run did it (and nothing before it was done again)."""
    if record.done(stage.name, list(stage.products)):
        log.info("%s: complete from an earlier run, reused", stage.name)
        return
    log.info("%s ...", stage.name)
    start = time.perf_counter()
    info = stage.run(ctx) or {}
    record.complete(stage.name, time.perf_counter() - start, **info)


def run(
    inputs: str | Path | Iterable[str | Path],
    out: str | Path,
    *,
    config: Config | None = None,
    catalog: str | Path | None = None,
    target: str | tuple[float, float] | None = None,
    client=None,
) -> dict[str, Any]:
    """Run every stage on raw frames and write every product into ``out``.

    Parameters
    ----------
    inputs : str, Path or iterable of them
        Folders, globs, FITS files or list files.
    out : str or Path
        The run directory.
    config : lcdask.config.Config, optional
        Defaults when None.
    catalog : str or Path, optional
        A reference catalog file (overrides ``config.catalog.path``).
    target : str or (ra, dec), optional
        The target: its position, degrees or sexagesimal ("RA DEC"), or a name that SIMBAD
        resolves (`lcdask.targets.resolve_target`: once, before the run starts, cached in the
        catalog cache; offline from the cache only). ``run.json`` records the position used
        and where it came from (``given``, ``simbad`` or ``cache``).
    client : distributed.Client, optional
        Cluster to spread the work over; serial in this process when None.

    Returns
    -------
    dict
        The run record written to ``run.json``.
    """
    config = config or Config()
    out = Path(out)
    resolved = None
    if target is not None:  # a name goes to SIMBAD here, once, before any work
        resolved = resolve_target(
            target, cache_dir=catalog_cache(config, out), offline=config.catalog.offline
        )
        log.info("target at %.6f %+.6f (%s)", resolved.ra, resolved.dec, resolved.source)
    out.mkdir(parents=True, exist_ok=True)
    paths = discover_frames(inputs)
    previous = read_run_record(out)
    record = _Record(out, config, _fingerprint(paths), [str(p) for p in paths])
    record.data["files"] = _file_stats(paths)
    record.data["target"] = resolved.as_record() if resolved is not None else None
    if _target_key(previous.get("target")) != _target_key(record.data["target"]):
        for stage in ("lightcurves", "report"):  # the target is found, and shown, again
            record.previous_stages.pop(stage, None)
    ctx = RunContext(
        out=out,
        config=config,
        client=client,
        inputs=list(paths),
        catalog=None if catalog is None else Path(catalog),
        target=(resolved.ra, resolved.dec) if resolved is not None else None,
        record=record.data,
    )
    appended = ()
    new = _new_inputs(previous, record)
    if new:
        try:
            appended = _append(record, ctx, Appending(files=new, previous=previous))
        except NotAppendable as exc:
            log.warning("%d new file(s): %s; every stage is done again", len(new), exc)
            record.data["stages"] = {}
    for stage in STAGE_TABLE:
        if stage.name not in appended:
            _stage(record, stage, ctx)
        if stage.name == "ingest":
            cube = cube_io.open_cube(ctx.cube_path)
            record.data["skipped"] = json.loads(cube.attrs.get("skipped", "[]"))
            record.data["typed"] = json.loads(cube.attrs.get("typed", "[]"))

    cube = cube_io.open_cube(ctx.cube_path)
    paths, reasons = cube["path"].values, cube["flag_reason"].values
    record.data["flagged"] = [
        {"frame": int(i), "path": str(paths[i]), "reason": str(reasons[i])}
        for i in np.flatnonzero(cube["flags"].values)
    ]
    record.data["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    record.write()
    return record.data


def _target_key(target: dict[str, Any] | None) -> tuple[float, float] | None:
    if not target:
        return None
    return round(float(target["ra"]), 9), round(float(target["dec"]), 9)


def _file_stats(paths: Iterable[Path]) -> dict[str, list[int]]:
    """Each input's size and modification time (ns), to tell new inputs from changed ones."""
    stats = {}
    for path in paths:
        stat = path.stat()
        stats[str(path)] = [stat.st_size, stat.st_mtime_ns]
    return stats


def _new_inputs(previous: dict[str, Any], record: _Record) -> list[Path]:
    """Inputs added since a complete earlier run whose inputs are all unchanged, else [].

    Only then can the new frames be appended (`_append`); anything else (a changed or removed
    file, another configuration, an unfinished run) is a run made again, stage by stage.
    """
    before, now = previous.get("files") or {}, record.data["files"]
    stages = previous.get("stages", {})
    complete = all(stages.get(s, {}).get("status") == "complete" for s in STAGES)
    same_config = _comparable(previous.get("config", {})) == _comparable(record.data["config"])
    if not (before and complete and same_config):
        return []
    if any(now.get(path) != stat for path, stat in before.items()):
        return []
    return [Path(p) for p in now if p not in before]


def _append(record: _Record, ctx: RunContext, appending: Appending) -> tuple[str, ...]:
    """The stages that can append (ingest, calibrate, level2), on the new frames alone.

    The cube grows in place (`lcdask.stages.ingest.append`), so the record says ``appending`` until
    they are done: a run interrupted here is made again from scratch next time. The earlier
    masters, catalog, ePSF and co-add are kept; the stages after them (light curves, report)
    are then done again over every frame. Each appended stage's record is the earlier one,
    updated by what the stage returns, its time added, and ``appended``: the new frames.

    Returns
    -------
    tuple of str
        The stages done so.

    Raises
    ------
    lcdask.stages.ingest.NotAppendable
        When the new frames cannot simply be appended.
    """
    ctx.appending = appending
    record.data["notes"] = list(appending.previous.get("notes", []))
    new_files = [str(p) for p in appending.files]
    record.data["stages"]["ingest"] = {"status": "appending", "new_files": new_files}
    record.write()
    done, seconds, info = [], {}, {}
    try:
        for stage in STAGE_TABLE:
            if stage.append is None:
                break
            start = time.perf_counter()
            info[stage.name] = appending.before(stage.name) | stage.append(ctx)
            seconds[stage.name] = time.perf_counter() - start
            done.append(stage.name)
    finally:
        ctx.appending = None
    before = appending.previous["stages"]
    for name in done:
        record.data["stages"][name] = {
            "status": "complete",
            "seconds": round(before[name].get("seconds", 0) + seconds[name], 3),
            **info[name],
            "appended": len(appending.frames),
        }
    record.write()
    return tuple(done)
