"""Benchmark: matching millions of detections, partitioned exact DBSCAN against scikit-learn's.

Simulated catalogs (`lcdask.testing.make_benchmark_detections`: 2000 sources over a 1 deg field,
per-axis position errors 0.05-0.4", 98% detected per frame, 2 spurious detections per frame),
``eps = 1"`` and ``min_samples = match_min_samples(n_frames)`` (10% of the frames).

Each measurement runs in its own subprocess: it loads the tangent-plane positions from a ``.npy``
file, notes its resident memory, runs one method and reports the wall time, the peak resident
memory (``ru_maxrss``) and the peak above the memory held before the call (the method's own
working memory). scikit-learn runs under an address-space limit (``--sklearn-limit-gb``) so that
a too-large call fails instead of exhausting the shared machine; sizes beyond what it can do
(its neighbourhood lists grow as n * n_frames) are reported as such with the neighbour count
that would have to be stored.

Usage::

    python benchmarks/bench_match.py [--frames 100 250 500 5000] [--sources 2000]
        [--sklearn-max-frames 500] [--tile-points 250000]

Writes ``benchmarks/results/match.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EPS = 1.0


def _rss_gb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def _worker(path: str, method: str, min_samples: int, tile_points: int, out: str) -> None:
    """Run one method on the positions in ``path``; print a JSON line of measurements."""
    from lcdask.match import dbscan, dbscan_partitioned

    xy = np.load(path)
    before = _rss_gb()
    t0 = time.perf_counter()
    if method == "sklearn":
        labels = dbscan(xy, EPS, min_samples, method="sklearn")
    elif method == "partitioned":
        labels = dbscan_partitioned(xy, EPS, min_samples, max_points_per_tile=tile_points)
    else:
        labels = dbscan(xy, EPS, min_samples, method="grid")
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB -> GB
    np.save(out, labels)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_gb": peak,
                "working_gb": peak - before,
                "n_clusters": int(labels.max()) + 1,
            }
        )
    )


def _measure(
    path: Path, method: str, min_samples: int, tile_points: int, limit_gb: float | None
) -> dict:
    out = path.with_name(f"labels_{method}.npy")
    cmd = [sys.executable, __file__, "--worker", str(path), method, str(min_samples)]
    cmd += [str(tile_points), str(out)]

    def limit() -> None:
        if limit_gb:
            lim = int(limit_gb * 1e9)
            resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"failed": tail[:200]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["labels"] = str(out)
    return result


def _neighbour_count(xy: np.ndarray, sample: int = 20000) -> float:
    """Estimated total size of the eps-neighbourhood lists scikit-learn would hold."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(0)
    idx = rng.choice(len(xy), size=min(sample, len(xy)), replace=False)
    counts = cKDTree(xy).query_ball_point(xy[idx], EPS, return_length=True)
    return float(np.mean(counts) * len(xy))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[100, 250, 500, 5000])
    parser.add_argument("--sources", type=int, default=2000)
    parser.add_argument("--sklearn-max-frames", type=int, default=500)
    parser.add_argument("--sklearn-limit-gb", type=float, default=10.0)
    parser.add_argument("--tile-points", type=int, default=250_000)
    args = parser.parse_args()

    from lcdask.match import match_min_samples, same_clusters, tangent_plane
    from lcdask.testing import make_benchmark_detections

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_frames in args.frames:
            t0 = time.perf_counter()
            det = make_benchmark_detections(n_frames, args.sources, seed=0)
            xi, eta = tangent_plane(det["ra"].to_numpy(), det["dec"].to_numpy(), 150.0, 20.0)
            truth = det["star_id"].to_numpy()
            del det
            xy = np.column_stack([xi, eta])
            del xi, eta
            path = Path(tmp) / f"xy_{n_frames}.npy"
            np.save(path, xy)
            gen_s = time.perf_counter() - t0
            min_samples = match_min_samples(n_frames)
            neighbours = _neighbour_count(xy)
            row = {
                "n_frames": n_frames,
                "n_sources": args.sources,
                "n_detections": len(xy),
                "eps_arcsec": EPS,
                "min_samples": min_samples,
                "generate_seconds": gen_s,
                "sklearn_neighbour_entries": neighbours,
                "sklearn_neighbour_gb_estimate": neighbours * 8 / 1e9,
            }
            print(f"{n_frames} frames: {len(xy):,} detections", flush=True)
            part = _measure(path, "partitioned", min_samples, args.tile_points, None)
            row["partitioned"] = part
            if n_frames <= args.sklearn_max_frames:
                sk = _measure(path, "sklearn", min_samples, 0, args.sklearn_limit_gb)
            else:
                sk = {"skipped": f"over --sklearn-max-frames ({args.sklearn_max_frames})"}
            row["sklearn"] = sk
            lab_p = np.load(part["labels"]) if "labels" in part else None
            if lab_p is not None:
                row["partitioned_vs_truth"] = same_clusters(lab_p, np.where(truth >= 0, truth, -1))
            if lab_p is not None and "labels" in sk:
                lab_s = np.load(sk["labels"])
                row["same_clusters"] = same_clusters(lab_p, lab_s)
                row["labels_identical"] = bool(np.array_equal(lab_p, lab_s))
                row["speedup"] = sk["seconds"] / part["seconds"]
                row["memory_ratio"] = part["working_gb"] / max(sk["working_gb"], 1e-9)
            for d in (part, sk):
                d.pop("labels", None)
            rows.append(row)
            print(json.dumps(row, indent=1), flush=True)
            path.unlink()

    result = {
        "benchmark": "match: partitioned exact grid DBSCAN vs sklearn.cluster.DBSCAN",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "eps_arcsec": EPS,
        "tile_points": args.tile_points,
        "runs": rows,
    }
    out = HERE / "results" / "match.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(
        f"{'frames':>6} {'detections':>11} | {'partitioned s':>13} {'GB':>6} | "
        f"{'sklearn s':>9} {'GB':>6} | {'speedup':>7} {'mem':>5} {'same':>6}"
    )
    for r in rows:
        p, s = r["partitioned"], r["sklearn"]
        ps = f"{p['seconds']:13.1f} {p['working_gb']:6.2f}" if "seconds" in p else f"{'failed':>20}"
        if "seconds" in s:
            ss = f"{s['seconds']:9.1f} {s['working_gb']:6.2f}"
        else:
            ss = f"{'n/a (' + str(round(r['sklearn_neighbour_gb_estimate'])) + ' GB)':>16}"
        sp = (
            f"{r['speedup']:7.1f} {r['memory_ratio']:5.2f} {r['same_clusters']:6.4f}"
            if ("speedup" in r)
            else ""
        )
        print(f"{r['n_frames']:6d} {r['n_detections']:11,d} | {ps} | {ss} | {sp}")
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        main()
