"""Simulate a whole night to disk: the truth first, then every frame streamed by worker processes.

Random streams: night-level draws come from ``SeedSequence([seed, 0, stream])`` (one stream each for
the geometry, the observing conditions, the star field, the detector maps, the bias, the catalog and
the calibration schedule); frame ``i`` of a kind from ``SeedSequence([seed, kind_code, i])``.
Frame ``i`` is therefore identical whether it is made serially or in parallel.

Workers never receive image data: each loads the night's truth (tables and maps) from
``OUT/truth/`` once, then renders, digitises and writes its frames one at a time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

from lcdask.io.anindex import find_index_files, index_stars
from lcdask.simulate.conditions import (
    calibration_schedule,
    frame_conditions,
    night_geometry,
)
from lcdask.simulate.config import SimConfig
from lcdask.simulate.detector import (
    COSMIC_COLUMNS,
    bias_map,
    cosmic_rays,
    dark_and_flat_maps,
    expose,
)
from lcdask.simulate.field import field_margin_px, make_stars
from lcdask.simulate.refcat import make_refcat
from lcdask.simulate.render import truth_image
from lcdask.simulate.variability import transit_truth
from lcdask.simulate.writer import (
    IMAGETYP,
    calib_header,
    light_header,
    truth_map_header,
    write_fits_atomic,
    write_parquet_atomic,
    write_text_atomic,
)

NIGHT_STREAMS = {
    "geometry": 1,
    "conditions": 2,
    "stars": 3,
    "detector": 4,
    "bias": 5,
    "refcat": 6,
    "calibration": 7,
}
FRAME_KINDS = {"light": 1, "dark": 2, "darkflat": 3, "flat": 4, "bias": 5}
log = logging.getLogger("lcdask.simulate")


def night_rng(seed: int, stream: str) -> np.random.Generator:
    """The generator of one night-level random stream."""
    return np.random.default_rng(np.random.SeedSequence([seed, 0, NIGHT_STREAMS[stream]]))


def frame_rng(seed: int, kind: str, index: int) -> np.random.Generator:
    """The generator of frame ``index`` of a kind (light, dark, darkflat, flat, bias)."""
    return np.random.default_rng(np.random.SeedSequence([seed, FRAME_KINDS[kind], index]))


@dataclass(frozen=True)
class SimTruth:
    """The truth of a simulated night, as read back by `load_truth`.

    Attributes
    ----------
    out_dir
        The night's directory.
    config
        The `SimConfig` that made it.
    stars, movers, frames, bad_pixels, cosmic_rays
        The truth tables (see the package docstring).
    calib_frames
        Times, exposures and flat levels of the calibration frames.
    refcat_truth
        Per reference-catalog entry: the truth star(s) and the problem ("", wrong_mag, blend).
    """

    out_dir: Path
    config: SimConfig
    stars: pd.DataFrame
    movers: pd.DataFrame
    frames: pd.DataFrame
    bad_pixels: pd.DataFrame
    cosmic_rays: pd.DataFrame
    calib_frames: pd.DataFrame
    refcat_truth: pd.DataFrame

    def flat(self) -> np.ndarray:
        """True flat-field response (mean exactly 1)."""
        return fits.getdata(self.out_dir / "truth" / "flat.fits")

    def dark_current(self) -> np.ndarray:
        """True dark current (e-/s/px)."""
        return fits.getdata(self.out_dir / "truth" / "dark_current.fits")

    def bias(self) -> np.ndarray:
        """True bias (ADU)."""
        return fits.getdata(self.out_dir / "truth" / "bias.fits")

    def transit(self) -> dict | None:
        """The target's transit (``truth/transit.json``, written by
        `lcdask.simulate.variability.transit_truth`), or None for a night without it (the
        default trapezoid)."""
        path = self.out_dir / "truth" / "transit.json"
        return json.loads(path.read_text()) if path.exists() else None


@dataclass(frozen=True)
class SimulatedNight:
    """What `simulate_night` wrote: paths of the raw frames and products, and the truth tables."""

    out_dir: Path
    config: SimConfig
    light_paths: list[Path]
    dark_paths: list[Path]
    darkflat_paths: list[Path]
    flat_paths: list[Path]
    bias_paths: list[Path]
    refcat_path: Path
    truth_dir: Path
    truth: SimTruth
    refcat: pd.DataFrame

    @property
    def stars(self) -> pd.DataFrame:
        """``truth/stars.parquet``."""
        return self.truth.stars

    @property
    def movers(self) -> pd.DataFrame:
        """``truth/movers.parquet``."""
        return self.truth.movers

    @property
    def frames(self) -> pd.DataFrame:
        """``truth/frames.parquet``."""
        return self.truth.frames

    @property
    def bad_pixels(self) -> pd.DataFrame:
        """``truth/bad_pixels.parquet``."""
        return self.truth.bad_pixels

    @property
    def cosmic_rays(self) -> pd.DataFrame:
        """``truth/cosmic_rays.parquet``."""
        return self.truth.cosmic_rays


@dataclass(frozen=True)
class _NightModel:
    """Everything a worker needs to make any frame (loaded from ``OUT/truth``)."""

    out_dir: Path
    config: SimConfig
    frames: pd.DataFrame
    stars: pd.DataFrame
    movers: pd.DataFrame
    calib: pd.DataFrame
    bias: np.ndarray
    dark_e_s: np.ndarray
    flat: np.ndarray

    @classmethod
    def load(cls, out_dir: Path) -> _NightModel:
        truth = out_dir / "truth"
        return cls(
            out_dir=out_dir,
            config=_load_config(out_dir),
            frames=pd.read_parquet(truth / "frames.parquet"),
            stars=pd.read_parquet(truth / "stars.parquet"),
            movers=pd.read_parquet(truth / "movers.parquet"),
            calib=pd.read_parquet(truth / "calib_frames.parquet"),
            bias=fits.getdata(truth / "bias.fits").astype(np.float64),
            dark_e_s=fits.getdata(truth / "dark_current.fits").astype(np.float64),
            flat=fits.getdata(truth / "flat.fits").astype(np.float64),
        )


def _load_config(out_dir: Path) -> SimConfig:
    path = Path(out_dir) / "truth" / "config.json"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {out_dir} is not a night written by lcdask.simulate.simulate_night"
        )
    return SimConfig.from_json(path.read_text())


def _cosmic_table(kind: str, index: int, filename: str, cosmic) -> pd.DataFrame:
    x, y, e = cosmic
    return pd.DataFrame(
        {
            "frame_index": np.full(x.size, index, dtype=np.int64),
            "filename": filename,
            "imagetyp": IMAGETYP[kind],
            "x": x.astype(np.int64),
            "y": y.astype(np.int64),
            "electrons": e.astype(np.float64),
        },
        columns=list(COSMIC_COLUMNS),
    )


def make_frame(model: _NightModel, kind: str, index: int) -> pd.DataFrame:
    """Render, digitise and write one raw frame; return its cosmic-ray table."""
    cfg = model.config
    rng = frame_rng(cfg.seed, kind, index)
    if kind == "light":
        frame = model.frames.iloc[index]
        exptime = float(frame["exptime_s"])
        truth = truth_image(frame, model.stars, model.movers, cfg.size)
        mean_e = truth * (cfg.gain_e_adu * model.flat) + model.dark_e_s * exptime
        header = light_header(cfg, frame)
        filename = str(frame["filename"])
    else:
        row = model.calib[(model.calib["kind"] == kind) & (model.calib["index"] == index)].iloc[0]
        exptime = float(row["exptime_s"])
        if kind == "flat":
            level_e = float(row["level_adu"]) * cfg.gain_e_adu
            mean_e = level_e * model.flat + model.dark_e_s * exptime
        else:
            mean_e = model.dark_e_s * exptime
        header = calib_header(cfg, row)
        filename = str(row["filename"])
    cosmic = cosmic_rays(cfg, exptime, rng)
    raw = expose(cfg, mean_e, model.bias, rng, cosmic)
    write_fits_atomic(model.out_dir / "raw" / filename, raw, header)
    return _cosmic_table(kind, index, filename, cosmic)


_WORKER_MODEL: _NightModel | None = None


def _init_worker(out_dir: str) -> None:
    global _WORKER_MODEL
    _WORKER_MODEL = _NightModel.load(Path(out_dir))


def _worker_make_frame(kind: str, index: int) -> pd.DataFrame:
    if _WORKER_MODEL is None:
        raise RuntimeError("worker not initialised with the night's truth")
    return make_frame(_WORKER_MODEL, kind, index)


def _write_truth(out_dir: Path, cfg: SimConfig) -> tuple[pd.DataFrame, ...]:
    """Draw the night and write ``OUT/truth`` and ``OUT/refcat.parquet``."""
    truth = out_dir / "truth"
    geom = night_geometry(cfg, night_rng(cfg.seed, "geometry"))
    frames = frame_conditions(cfg, geom, night_rng(cfg.seed, "conditions"))
    catalog = None
    if cfg.sky_catalog == "tycho2":
        half_side_px = 0.5 * cfg.size + field_margin_px(cfg)
        radius_deg = np.sqrt(2.0) * half_side_px * cfg.pixel_scale_arcsec / 3600.0
        catalog = index_stars(*geom.crval_true, radius_deg, index_dir=cfg.index_dir or None)
    stars, movers = make_stars(
        cfg, geom, frames["time_mjd"].to_numpy(), night_rng(cfg.seed, "stars"), catalog=catalog
    )
    dark_e_s, flat, bad_pixels = dark_and_flat_maps(cfg, night_rng(cfg.seed, "detector"))
    bias = bias_map(cfg, night_rng(cfg.seed, "bias"))
    refcat, refcat_truth = make_refcat(
        stars, cfg.refcat_bad_fraction, night_rng(cfg.seed, "refcat")
    )
    calib = calibration_schedule(cfg, frames, night_rng(cfg.seed, "calibration"))

    write_text_atomic(truth / "config.json", cfg.to_json() + "\n")
    write_parquet_atomic(truth / "stars.parquet", stars)
    write_parquet_atomic(truth / "movers.parquet", movers)
    write_parquet_atomic(truth / "frames.parquet", frames)
    write_parquet_atomic(truth / "bad_pixels.parquet", bad_pixels)
    write_parquet_atomic(truth / "calib_frames.parquet", calib)
    write_parquet_atomic(truth / "refcat_truth.parquet", refcat_truth)
    write_fits_atomic(truth / "flat.fits", flat, truth_map_header("flat-field response", ""))
    write_fits_atomic(
        truth / "dark_current.fits", dark_e_s, truth_map_header("dark current", "electron/s")
    )
    write_fits_atomic(truth / "bias.fits", bias, truth_map_header("bias level", "adu"))
    write_parquet_atomic(out_dir / "refcat.parquet", refcat)
    if cfg.transit_shape == "limb-darkened":
        site = (cfg.site_lat_deg, cfg.site_lon_deg, cfg.site_elev_m)
        truth_transit = transit_truth(stars, frames["time_mjd"].to_numpy(float), site=site)
        write_text_atomic(truth / "transit.json", json.dumps(truth_transit, indent=2) + "\n")
    return frames, calib, refcat


def _remove_stale_frames(raw_dir: Path, keep: set[str], light_stem: str = "light") -> None:
    """Delete frames of an earlier simulation in ``raw_dir`` that this one does not write."""
    for kind in (*FRAME_KINDS, light_stem):
        for path in raw_dir.glob(f"{kind}_[0-9][0-9][0-9][0-9].fits"):
            if path.name not in keep:
                path.unlink()


def simulate_night(
    out_dir: Path | str,
    config: SimConfig | None = None,
    n_workers: int = 1,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> SimulatedNight:
    """Simulate a night of raw CCD frames with its truth, and write it under ``out_dir``.

    Parameters
    ----------
    out_dir
        Directory to write (created). Files of a previous simulation there are overwritten, and
        its raw frames that this night does not have are removed.
    config
        The configuration (default ``SimConfig()``).
    n_workers
        Worker processes making frames in parallel; <= 1 makes them serially in this process.
        The files are identical either way. Workers are started with the "spawn" method (safe
        in processes that run threads, e.g. a Dask client), so a script calling this with
        ``n_workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.
    progress
        Called as ``progress(n_done, n_total)`` after each frame.

    Returns
    -------
    SimulatedNight
        Paths of the raw frames and the reference catalog, and the truth tables.

    Notes
    -----
    Writes ``raw/{light,dark,darkflat,flat,bias}_NNNN.fits``, ``refcat.parquet`` and ``truth/``
    (``config.json``, ``stars``, ``movers``, ``frames``, ``bad_pixels``, ``cosmic_rays``,
    ``calib_frames``, ``refcat_truth`` Parquet tables, ``flat.fits``, ``dark_current.fits``,
    ``bias.fits``).
    """
    cfg = SimConfig() if config is None else config
    if not isinstance(cfg, SimConfig):
        raise TypeError(f"config must be a SimConfig, got {type(cfg).__name__}")
    if cfg.sky_catalog == "tycho2" and not find_index_files(cfg.index_dir or None):
        where = cfg.index_dir or "/usr/share/astrometry"
        log.warning(
            "no astrometry.net index files in %s: simulating a synthetic sky instead of the "
            "Tycho-2 stars, on which blind plate solving will not work",
            where,
        )
        cfg = dataclasses.replace(cfg, sky_catalog="synthetic")
    out_dir = Path(out_dir)
    (out_dir / "raw").mkdir(parents=True, exist_ok=True)
    (out_dir / "truth").mkdir(parents=True, exist_ok=True)
    frames, calib, refcat = _write_truth(out_dir, cfg)
    _remove_stale_frames(
        out_dir / "raw", set(frames["filename"]) | set(calib["filename"]), cfg.file_stem
    )

    tasks = [("light", i) for i in range(cfg.n_frames)]
    tasks += [(str(k), int(i)) for k, i in zip(calib["kind"], calib["index"], strict=True)]
    results: dict[tuple[str, int], pd.DataFrame] = {}
    if n_workers <= 1:
        model = _NightModel.load(out_dir)
        for n_done, task in enumerate(tasks, start=1):
            results[task] = make_frame(model, *task)
            if progress is not None:
                progress(n_done, len(tasks))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=n_workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(str(out_dir),),
        ) as pool:
            futures = {pool.submit(_worker_make_frame, *task): task for task in tasks}
            for n_done, future in enumerate(as_completed(futures), start=1):
                results[futures[future]] = future.result()
                if progress is not None:
                    progress(n_done, len(tasks))
    parts = [results[t] for t in tasks if len(results[t])]
    cosmic = (
        pd.concat(parts, ignore_index=True)
        if parts
        else _cosmic_table("light", 0, "", (np.zeros(0), np.zeros(0), np.zeros(0)))
    )
    write_parquet_atomic(out_dir / "truth" / "cosmic_rays.parquet", cosmic)

    raw = out_dir / "raw"

    def paths(kind: str) -> list[Path]:
        names = calib.loc[calib["kind"] == kind, "filename"]
        return [raw / str(n) for n in names]

    return SimulatedNight(
        out_dir=out_dir,
        config=cfg,
        light_paths=[raw / str(n) for n in frames["filename"]],
        dark_paths=paths("dark"),
        darkflat_paths=paths("darkflat"),
        flat_paths=paths("flat"),
        bias_paths=paths("bias"),
        refcat_path=out_dir / "refcat.parquet",
        truth_dir=out_dir / "truth",
        truth=load_truth(out_dir),
        refcat=refcat,
    )


def load_truth(out_dir: Path | str) -> SimTruth:
    """Read the truth tables of a simulated night back.

    Parameters
    ----------
    out_dir
        The directory given to `simulate_night`.

    Returns
    -------
    SimTruth
        ``config``, ``stars``, ``movers``, ``frames``, ``bad_pixels``, ``cosmic_rays``,
        ``calib_frames``, ``refcat_truth``; the maps through ``flat()``, ``dark_current()``,
        ``bias()``.
    """
    out_dir = Path(out_dir)
    truth = out_dir / "truth"
    cfg = _load_config(out_dir)
    cosmic_path = truth / "cosmic_rays.parquet"
    cosmic = (
        pd.read_parquet(cosmic_path)
        if cosmic_path.exists()
        else pd.DataFrame(columns=list(COSMIC_COLUMNS))
    )
    return SimTruth(
        out_dir=out_dir,
        config=cfg,
        stars=pd.read_parquet(truth / "stars.parquet"),
        movers=pd.read_parquet(truth / "movers.parquet"),
        frames=pd.read_parquet(truth / "frames.parquet"),
        bad_pixels=pd.read_parquet(truth / "bad_pixels.parquet"),
        cosmic_rays=cosmic,
        calib_frames=pd.read_parquet(truth / "calib_frames.parquet"),
        refcat_truth=pd.read_parquet(truth / "refcat_truth.parquet"),
    )


def truth_light_image(out_dir: Path | str, frame_index: int) -> np.ndarray:
    """Noiseless calibrated truth of light frame ``frame_index`` (ADU, float64).

    Sky plus every star (variables at their flux in that frame) and mover, divided by the gain: what
    ``(raw - dark) / flat`` would give without noise, cosmic rays or bad pixels (the truth flat has
    mean exactly 1). Not multiplied by the flat; no bias or dark current.

    Parameters
    ----------
    out_dir
        The directory given to `simulate_night`.
    frame_index
        Index of the light frame (0-based).

    Returns
    -------
    numpy.ndarray
        (size, size) float64 image in ADU.
    """
    out_dir = Path(out_dir)
    cfg = _load_config(out_dir)
    frames = pd.read_parquet(out_dir / "truth" / "frames.parquet")
    if not 0 <= frame_index < len(frames):
        raise ValueError(
            f"frame_index must be within [0, {len(frames) - 1}] for {out_dir}, got {frame_index}"
        )
    stars = pd.read_parquet(out_dir / "truth" / "stars.parquet")
    movers = pd.read_parquet(out_dir / "truth" / "movers.parquet")
    return truth_image(frames.iloc[frame_index], stars, movers, cfg.size)
