"""End-to-end frames/s of `lcdask run` on 2 workers against two serial loops, in one run.

The same simulated night (N lights of SIZE x SIZE plus its calibration frames) goes through
(a) a plain serial loop with numpy and sep: masters, calibration, sep background, detection and
    aperture photometry per frame;
(b) a serial loop in the style of prose/EXOTIC built on photutils: the same masters, then
    Background2D, DAOStarFinder and aperture_photometry per frame;
(c) `lcdask run` with its defaults (ingest, calibration, detection, plate solving, co-add and
    ePSF, cosmic rays, sky, aperture and PSF photometry, zero points, forced photometry, matching,
    classification, report) on a LocalCluster of WORKERS processes;
(d) `lcdask run` doing the loops' steps only in Level 2 (``[level2] flux = "detection"``,
    ``cosmics = "none"``, ``coadd_frames = 0``: the detection's own aperture flux), still writing
    the cube, plate-solving, calibrating zero points, matching and reporting.
Even (d) does more than either loop, so its ratio is conservative. Peak memory per worker is the
largest ru_maxrss of the worker processes; per-stage seconds come from run.json.

    python benchmarks/bench_pipeline.py [--frames 200] [--size 2048] [--workers 2] [--out DIR]

Writes ``benchmarks/results/pipeline.json`` and prints a table. Goal: 1.6x the sep loop, 6x the
photutils loop, peak worker memory under 1.5 GB at any N.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from lcdask.cluster import dask_client
from lcdask.config import Config
from lcdask.run import run
from lcdask.simulate import SimConfig, simulate_night
from lcdask.stages.level2 import Level2Config


def _masters(raw: Path) -> tuple[np.ndarray, np.ndarray]:
    """Master dark (lights' exposure) and normalised flat, by medians (what both loops share)."""

    def stack(pattern: str) -> np.ndarray:
        return np.stack([fits.getdata(p).astype(np.float32) for p in sorted(raw.glob(pattern))])

    dark = np.median(stack("dark_*.fits"), axis=0)
    flat = np.median(stack("flat_*.fits"), axis=0) - np.median(stack("darkflat_*.fits"), axis=0)
    return dark, flat / np.median(flat)


def sep_loop(raw: Path) -> int:
    """Calibrate, background, detect and measure every light with numpy and sep, serially."""
    import sep

    dark, flat = _masters(raw)
    n_sources = 0
    for path in sorted(raw.glob("light_*.fits")):
        image = ((fits.getdata(path).astype(np.float32) - dark) / flat).astype(np.float32)
        background = sep.Background(image)
        data = image - background.back()
        objects = sep.extract(data, 3.0, err=background.globalrms, minarea=5)
        flux, _, _ = sep.sum_circle(data, objects["x"], objects["y"], 5.0, err=background.globalrms)
        n_sources += len(flux)
    return n_sources


def photutils_loop(raw: Path) -> int:
    """The same steps with photutils, as prose- or EXOTIC-style pipelines do, serially."""
    from astropy.stats import sigma_clipped_stats
    from photutils.aperture import CircularAperture, aperture_photometry
    from photutils.background import Background2D, MedianBackground
    from photutils.detection import DAOStarFinder

    dark, flat = _masters(raw)
    n_sources = 0
    for path in sorted(raw.glob("light_*.fits")):
        image = (fits.getdata(path).astype(np.float32) - dark) / flat
        background = Background2D(image, 64, filter_size=3, bkg_estimator=MedianBackground())
        data = image - background.background
        _, _, std = sigma_clipped_stats(data, sigma=3.0)
        sources = DAOStarFinder(fwhm=3.0, threshold=3.0 * std)(data)
        if sources is None:
            continue
        positions = np.column_stack([sources["x_centroid"], sources["y_centroid"]])
        table = aperture_photometry(data, CircularAperture(positions, r=5.0))
        n_sources += len(table)
    return n_sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="scratch folder (default: temp)")
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "pipeline.json"
    )
    args = parser.parse_args()

    scratch = Path(args.out or tempfile.mkdtemp(prefix="bench-pipeline-"))
    night = scratch / "night"
    if not (night / "truth" / "frames.parquet").exists():
        simulate_night(night, SimConfig(n_frames=args.frames, size=args.size, seed=5), n_workers=2)
    raw = night / "raw"

    start = time.perf_counter()
    sep_loop(raw)
    sep_s = time.perf_counter() - start
    start = time.perf_counter()
    photutils_loop(raw)
    photutils_s = time.perf_counter() - start

    same_steps = Config(level2=Level2Config(flux="detection", cosmics="none", coadd_frames=0))
    lcdask_s, stages, peak_gb = {}, {}, {}
    for name, config in (("full", Config()), ("same_steps", same_steps)):
        run_dir = scratch / f"run-{name}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a run left there would be resumed, not timed
        with dask_client(n_workers=args.workers, dashboard=False) as client:
            client.run(lambda: None)
            start = time.perf_counter()
            record = run(
                raw,
                run_dir,
                catalog=night / "refcat.parquet",
                client=client,
                config=config,
            )
            lcdask_s[name] = time.perf_counter() - start
            rss_kb = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        stages[name] = {k: v["seconds"] for k, v in record["stages"].items()}
        peak_gb[name] = max(rss_kb.values()) / 1e6

    n = args.frames
    results = {
        "benchmark": "pipeline",
        "frames": n,
        "size": args.size,
        "workers": args.workers,
        "sep_loop_s": sep_s,
        "photutils_loop_s": photutils_s,
        "lcdask_s": lcdask_s,
        "lcdask_stage_s": stages,
        "frames_per_s": {
            "sep_loop": n / sep_s,
            "photutils_loop": n / photutils_s,
            **{f"lcdask_{k}": n / v for k, v in lcdask_s.items()},
        },
        "ratio_over_sep_loop": {k: sep_s / v for k, v in lcdask_s.items()},
        "ratio_over_photutils_loop": {k: photutils_s / v for k, v in lcdask_s.items()},
        "peak_worker_memory_gb": peak_gb,
        "goals": {"over_sep_loop": 1.6, "over_photutils_loop": 6.0, "peak_worker_memory_gb": 1.5},
        "machine": platform.platform(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{n} lights of {args.size}x{args.size}, lcdask on {args.workers} workers")
    print(f"{'pipeline':34s} {'s':>8s} {'frames/s':>9s}")
    for name, seconds in (
        ("serial loop, numpy + sep", sep_s),
        ("serial loop, photutils", photutils_s),
        (f"lcdask run, defaults ({args.workers} w)", lcdask_s["full"]),
        (f"lcdask run, same steps ({args.workers} w)", lcdask_s["same_steps"]),
    ):
        print(f"{name:34s} {seconds:8.1f} {n / seconds:9.2f}")
    for name, seconds in lcdask_s.items():
        print(
            f"lcdask {name}: / sep loop {sep_s / seconds:.2f}x (goal 1.6), / photutils loop "
            f"{photutils_s / seconds:.2f}x (goal 6), peak worker memory {peak_gb[name]:.2f} GB "
            f"(goal 1.5); stages {stages[name]}"
        )
    if args.out is None:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
