"""Ingest rate of N 2048x2048 FITS frames into the cube on 2 workers, against a copy floor.

All sides read the same files in the same run. The floor (issue 18) is a copy of the files
(`shutil.copyfile` into another folder: the same bytes read and written, as ingest must); the
ratio asked is ingest MB/s over copy MB/s (goal: 0.8 or better). The plain astropy read loop
(``fits.getdata``, reading only) is kept beside it for the earlier ratio.

    python benchmarks/bench_ingest.py [--frames 100] [--size 2048] [--workers 2] [--out DIR]

Writes ``benchmarks/results/ingest.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from astropy.io import fits

from lcdask.cluster import dask_client
from lcdask.stages.ingest import ingest


def make_frames(folder: Path, n_frames: int, size: int) -> list[Path]:
    """Camera-like uint16 frames (BITPIX 16, BZERO 32768) with a full set of header keys."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.poisson(1200, (size, size)).astype(np.uint16)
    paths = []
    for i in range(n_frames):
        data = base + rng.integers(0, 50, size=(size, size), dtype=np.uint16)
        header = fits.Header()
        header["IMAGETYP"] = "Light Frame"
        header["DATE-OBS"] = f"2026-03-15T02:{i // 60 % 60:02d}:{i % 60:02d}.000"
        header["EXPTIME"] = 60.0
        header["FILTER"] = "r"
        header["RA"], header["DEC"] = 150.0, 20.0
        path = folder / f"light_{i:05d}.fits"
        fits.PrimaryHDU(data, header=header).writeto(path, overwrite=True)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=None, help="scratch folder (default: a temp dir)"
    )
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "ingest.json"
    )
    args = parser.parse_args()

    scratch = Path(args.out or tempfile.mkdtemp(prefix="bench-ingest-"))
    paths = make_frames(scratch / "raw", args.frames, args.size)
    megabytes = sum(p.stat().st_size for p in paths) / 1e6

    # warm the page cache for both sides alike
    for p in paths:
        p.read_bytes()

    copies = scratch / "copy"
    copies.mkdir()
    start = time.perf_counter()
    for p in paths:
        shutil.copyfile(p, copies / p.name)
    copy_s = time.perf_counter() - start
    shutil.rmtree(copies)

    start = time.perf_counter()
    for p in paths:
        data = fits.getdata(p, memmap=False)  # every pixel read and scaled, as ingest does
        assert data.shape == (args.size, args.size)
    plain_s = time.perf_counter() - start

    with dask_client(n_workers=args.workers, dashboard=False) as client:
        client.run(lambda: None)  # workers up before timing
        start = time.perf_counter()
        result = ingest(scratch / "raw", scratch / "run", client=client, overwrite=True)
        ingest_s = time.perf_counter() - start
    assert result.n_frames == args.frames

    rows = {
        "copy of the files (1 process)": copy_s,
        "plain astropy read loop (1 process)": plain_s,
        f"lcdask ingest ({args.workers} workers)": ingest_s,
    }
    results = {
        "benchmark": "ingest",
        "frames": args.frames,
        "size": args.size,
        "workers": args.workers,
        "megabytes": megabytes,
        "copy_s": copy_s,
        "plain_read_s": plain_s,
        "ingest_s": ingest_s,
        "ingest_scan_s": result.timings_s["scan"],
        "ingest_fill_s": result.timings_s["fill"],
        "load_average_1min": os.getloadavg()[0],
        "plain_read_mb_s": megabytes / plain_s,
        "ingest_mb_s": megabytes / ingest_s,
        "ratio_ingest_over_copy": copy_s / ingest_s,
        "ratio_ingest_over_plain": plain_s / ingest_s,
        "goal_ratio": 0.8,
        "machine": platform.platform(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{args.frames} frames of {args.size}x{args.size}, {megabytes:.0f} MB")
    print(f"{'method':40s} {'s':>8s} {'MB/s':>8s}")
    for name, seconds in rows.items():
        print(f"{name:40s} {seconds:8.2f} {megabytes / seconds:8.1f}")
    scan, fill = result.timings_s["scan"], result.timings_s["fill"]
    print(f"ingest steps: scan {scan:.2f} s, fill {fill:.2f} s")
    print(f"ratio ingest/copy: {results['ratio_ingest_over_copy']:.2f} (goal 0.8)")
    print(f"ratio ingest/plain read: {results['ratio_ingest_over_plain']:.2f}")
    if args.out is None:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
