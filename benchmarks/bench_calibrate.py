"""Level 1 calibration rate: masters + calibration of N 2048x2048 lights, cube to cube.

Three ways over the same frames in the same run:

- *copy floor*: the raw chunks of every frame read and written to another array of the same store
  with the same codec, on the same cluster (the physical floor of reading and writing the bytes);
- *lcdask*: `calibrate_cube` on a LocalCluster (masters, bad-pixel map, calibrated + cleaned lights
  and their pixel flags written into the cube);
- *ccdproc*: ``ccdproc.combine`` for the masters (sigma-clipped mean, MAD sigma, as lcdask) and a
  ``ccd_process`` loop over the lights in one process, each frame read from the cube and its result
  written to a zarr array of the same store and codec.

Rates are frames (lights + calibration frames) per second; goal: lcdask >= 3x ccdproc and within
3x of the copy floor.

    python benchmarks/bench_calibrate.py [--frames 200] [--darks 10] [--flats 10] [--bias 10]
                                         [--size 2048] [--workers 2] [--out DIR]

Writes ``benchmarks/results/calibrate.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

from lcdask.cluster import dask_client
from lcdask.io import cube as cube_io
from lcdask.stages.calibrate import calibrate_cube


def make_cube(path: Path, n_lights: int, n_darks: int, n_flats: int, n_bias: int, size: int) -> int:
    """A camera-like uint16 cube: bias, darks (60 s), dark flats and flats (5 s), lights (60 s)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    flat = (1 - 0.3 * (xx**2 + yy**2)) * (1 + 0.01 * rng.standard_normal((size, size)))
    bias = 1000 + rng.normal(0, 2, size)[None, :]
    dark_rate = 0.05 * rng.uniform(0.9, 1.1, (size, size))
    hot = rng.random((size, size)) < 5e-4
    dark_rate[hot] = rng.uniform(1, 100, hot.sum())
    noise = [rng.normal(0, 1, (size, size)).astype(np.float32) for _ in range(4)]

    kinds = (
        [("bias", 0.0, 0.0)] * n_bias
        + [("dark", 60.0, 0.0)] * n_darks
        + [("dark", 5.0, 0.0)] * n_darks
        + [("flat", 5.0, 20000.0)] * n_flats
        + [("light", 60.0, 500.0)] * n_lights
    )
    rows = [
        {
            "frame_type": kind,
            "exptime_s": exptime,
            "filter": "r",
            "saturate_adu": 60000.0,
            "gain_e_adu": 1.5,
            "rdnoise_e": 8.0,
            "flags": 0,
            "flag_reason": "",
            "path": f"{kind}_{i:05d}",
            "time_mjd": 60000.0 + i / 1440,
        }
        for i, (kind, exptime, _) in enumerate(kinds)
    ]
    cube_io.create_cube(path, pd.DataFrame(rows), (size, size), dtype="uint16")
    for i, (_, exptime, level) in enumerate(kinds):
        mean = bias + dark_rate * exptime + level * flat
        sigma = np.sqrt(mean - 1000 + 25)  # photon + read noise, roughly
        image = mean + sigma * np.roll(noise[i % 4], 17 * i, axis=1)
        cube_io.write_frame(path, i, np.clip(image, 0, 65535).astype(np.uint16))
    cube_io.consolidate(path)
    return len(kinds)


def copy_floor(store: Path, client) -> float:
    """Seconds to read every raw chunk and write it to another array of the store (same codec)."""
    import dask.array as da

    raw = zarr.open_array(str(store / "raw"), mode="r")
    target = zarr.create_array(
        store=str(store),
        name="bench_copy",
        shape=raw.shape,
        dtype=raw.dtype,
        chunks=raw.chunks,
        compressors=(cube_io.RAW_COMPRESSOR,),
        fill_value=0,
        overwrite=True,
    )
    start = time.perf_counter()
    source = da.from_zarr(str(store / "raw"))
    client.compute(da.store(source, target, lock=False, compute=False)).result()
    seconds = time.perf_counter() - start
    shutil.rmtree(store / "bench_copy")
    return seconds


def run_ccdproc(store: Path) -> float:
    """Seconds for ccdproc masters (combine) and a ccd_process loop over the lights."""
    import astropy.units as u
    import ccdproc
    from astropy.nddata import CCDData
    from astropy.stats import mad_std

    raw = zarr.open_array(str(store / "raw"), mode="r")
    types = zarr.open_array(str(store / "frame_type"), mode="r")[:]
    exptimes = zarr.open_array(str(store / "exptime_s"), mode="r")[:]
    target = zarr.create_array(
        store=str(store),
        name="bench_ccdproc",
        shape=raw.shape,
        dtype="float32",
        chunks=raw.chunks,
        compressors=(cube_io.RAW_COMPRESSOR,),
        fill_value=np.nan,
        overwrite=True,
    )
    clip = {
        "method": "average",
        "sigma_clip": True,
        "sigma_clip_low_thresh": 3,
        "sigma_clip_high_thresh": 3,
        "sigma_clip_func": np.ma.median,
        "sigma_clip_dev_func": mad_std,
        "mem_limit": 4e9,
    }

    def frames(mask):
        return [CCDData(raw[i].astype(np.float32), unit="adu") for i in np.nonzero(mask)[0]]

    start = time.perf_counter()
    ccdproc.combine(frames(types == "bias"), **clip)  # built as ccdproc users do, unused below
    dark = ccdproc.combine(frames((types == "dark") & (exptimes == 60)), **clip)
    dark_flat = ccdproc.combine(frames((types == "dark") & (exptimes == 5)), **clip)
    flats = [
        ccdproc.subtract_dark(
            f, dark_flat, dark_exposure=5 * u.s, data_exposure=5 * u.s, exposure_unit=u.s
        )
        for f in frames(types == "flat")
    ]
    master_flat = ccdproc.combine(flats, scale=lambda a: 1 / np.ma.median(a), **clip)
    for i in np.nonzero(types == "light")[0]:
        ccd = CCDData(raw[i].astype(np.float32), unit="adu")
        out = ccdproc.ccd_process(
            ccd,
            dark_frame=dark,
            master_flat=master_flat,
            dark_exposure=60 * u.s,
            data_exposure=60 * u.s,
            exposure_unit=u.s,
        )
        target[i] = np.asarray(out.data, np.float32)
    seconds = time.perf_counter() - start
    shutil.rmtree(store / "bench_ccdproc")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200, help="lights")
    parser.add_argument("--darks", type=int, default=10, help="darks (and as many dark flats)")
    parser.add_argument("--flats", type=int, default=10)
    parser.add_argument("--bias", type=int, default=10)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-ccdproc", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=None, help="scratch folder (default: a temp dir)"
    )
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "calibrate.json"
    )
    args = parser.parse_args()

    scratch = Path(args.out or tempfile.mkdtemp(prefix="bench-calibrate-"))
    store = scratch / "run" / "cube.zarr"
    if store.exists():
        shutil.rmtree(store)
    store.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    n_total = make_cube(store, args.frames, args.darks, args.flats, args.bias, args.size)
    print(f"cube of {n_total} frames made in {time.perf_counter() - t0:.0f} s")

    with dask_client(n_workers=args.workers, dashboard=False) as client:
        client.run(lambda: None)  # workers up before timing
        copy_s = copy_floor(store, client)
        start = time.perf_counter()
        summary = calibrate_cube(store, client=client)
        lcdask_s = time.perf_counter() - start
    ccdproc_s = float("nan") if args.skip_ccdproc else run_ccdproc(store)

    rows = {
        f"copy floor, read+write raw ({args.workers} workers)": copy_s,
        f"lcdask calibrate_cube ({args.workers} workers)": lcdask_s,
        "ccdproc combine + ccd_process loop (1 process)": ccdproc_s,
    }
    results = {
        "benchmark": "calibrate",
        "lights": args.frames,
        "frames_total": n_total,
        "size": args.size,
        "workers": args.workers,
        "copy_s": copy_s,
        "lcdask_s": lcdask_s,
        "lcdask_timings_s": summary["timings_s"],
        "ccdproc_s": ccdproc_s,
        "copy_frames_per_s": n_total / copy_s,
        "lcdask_frames_per_s": n_total / lcdask_s,
        "ccdproc_frames_per_s": n_total / ccdproc_s,
        "speedup_over_ccdproc": ccdproc_s / lcdask_s,
        "slowdown_vs_copy_floor": lcdask_s / copy_s,
        "goals": {"speedup_over_ccdproc": ">= 3", "slowdown_vs_copy_floor": "<= 3"},
        "machine": platform.platform(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"{args.frames} lights + {n_total - args.frames} calibration frames "
        f"of {args.size}x{args.size}"
    )
    print(f"{'method':52s} {'s':>8s} {'frames/s':>9s}")
    for name, seconds in rows.items():
        print(f"{name:52s} {seconds:8.1f} {n_total / seconds:9.2f}")
    print(f"lcdask / ccdproc speed-up: {results['speedup_over_ccdproc']:.2f}x (goal >= 3)")
    print(f"lcdask time / copy floor: {results['slowdown_vs_copy_floor']:.2f}x (goal <= 3)")
    if args.out is None:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
