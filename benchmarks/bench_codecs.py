"""Storage of the calibrated frames: bytes a pixel and write/read time per frame, float32 against
noise-quantised (`lcdask.io.codecs.NoiseQuantize`) with several compressors and levels.

The frames are a simulated night's calibrated lights (simulated, ingested and calibrated as
float32 here, unless ``--cube`` names a cube with ``calibrated``). Each storage writes every
frame into its own zarr array (one frame a chunk, as the cube does) and reads it back; times are
the best of ``--repeat`` passes, per frame, scaled to 2048^2 pixels when the frames are smaller.

    python benchmarks/bench_codecs.py [--size 2048] [--frames 3] [--repeat 3] [--cube RUN]

Writes ``benchmarks/results/codecs.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from lcdask.config import CalibrationConfig
from lcdask.io import cube as cube_io
from lcdask.io.codecs import NoiseQuantize


def calibrated_frames(args: argparse.Namespace, work: Path) -> np.ndarray:
    """The calibrated lights (frame, y, x) float32."""
    if args.cube is None:
        from lcdask.simulate import SimConfig, simulate_night
        from lcdask.stages.calibrate import calibrate_cube
        from lcdask.stages.ingest import ingest

        simulate_night(work / "night", SimConfig(n_frames=args.frames, size=args.size, seed=3))
        ingest(work / "night" / "raw", work / "run")
        calibrate_cube(work / "run", config=CalibrationConfig(calibrated_storage="float32"))
        args.cube = work / "run"
    store = Path(args.cube)
    store = store / "cube.zarr" if (store / "cube.zarr").is_dir() else store
    types = zarr.open_array(str(store / "frame_type"), mode="r")[:]
    array = zarr.open_array(str(store / "calibrated"), mode="r")
    lights = np.nonzero(types == "light")[0][: args.frames]
    return np.stack([array[int(i)] for i in lights]).astype(np.float32)


def storages() -> dict[str, dict]:
    lz4_bit = BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle", typesize=4)
    out = {"float32 lz4 bitshuffle (before)": cube_io.frame_codecs("float32")}
    for level in (16.0, 32.0, 64.0):
        for label, compressor in (
            ("lz4 bitshuffle", lz4_bit),
            ("zstd-1 shuffle", BloscCodec(cname="zstd", clevel=1, shuffle="shuffle", typesize=4)),
            ("zstd-3 shuffle", BloscCodec(cname="zstd", clevel=3, shuffle="shuffle", typesize=4)),
        ):
            codecs = {"serializer": NoiseQuantize(level=level), "compressors": (compressor,)}
            out[f"q{level:g} {label}"] = codecs
    return out


def measure(frames: np.ndarray, codecs: dict, path: Path, repeat: int) -> dict[str, float]:
    array = zarr.create_array(
        store=str(path),
        shape=frames.shape,
        chunks=(1, *frames.shape[1:]),
        dtype="float32",
        fill_value=np.nan,
        config=cube_io.FRAME_WRITE_CONFIG,
        **codecs,
    )
    write = read = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for i, frame in enumerate(frames):
            array[i] = frame
        write = min(write, (time.perf_counter() - t0) / len(frames))
        t0 = time.perf_counter()
        back = [array[i] for i in range(len(frames))]
        read = min(read, (time.perf_counter() - t0) / len(frames))
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and p.name != "zarr.json")
    err = np.abs(np.stack(back).astype(np.float64) - frames)
    scale = 2048**2 / frames[0].size
    return {
        "bytes_per_pixel": size / frames.size,
        "write_ms_per_2048sq": 1e3 * write * scale,
        "read_ms_per_2048sq": 1e3 * read * scale,
        "max_abs_error_adu": float(err.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cube", type=Path, default=None)
    parser.add_argument(
        "--json", type=Path, default=Path(__file__).parent / "results" / "codecs.json"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        frames = calibrated_frames(args, work)
        rows = {
            name: measure(frames, codecs, work / f"s{k}.zarr", args.repeat)
            for k, (name, codecs) in enumerate(storages().items())
        }
    results = {
        "frames": len(frames),
        "shape": list(frames.shape[1:]),
        "machine": platform.platform(),
        "load_average": os.getloadavg(),
        "storages": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    shape = f"{frames.shape[1]}x{frames.shape[2]}"
    print(f"{len(frames)} calibrated frames of {shape}, load {os.getloadavg()[0]:.1f}")
    print(f"{'storage':34s} {'bytes/px':>8s} {'write ms':>9s} {'read ms':>8s} {'max err':>8s}")
    for name, row in rows.items():
        print(
            f"{name:34s} {row['bytes_per_pixel']:8.3f} {row['write_ms_per_2048sq']:9.1f}"
            f" {row['read_ms_per_2048sq']:8.1f} {row['max_abs_error_adu']:8.3f}"
        )


if __name__ == "__main__":
    main()
