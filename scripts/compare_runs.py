"""Compare the products of two runs, number by number (issue 16: a restructuring changes nothing).

Usage: ``python scripts/compare_runs.py RUN_A RUN_B [--rtol 1e-9]``

Every numeric variable and coordinate of ``lightcurves.zarr`` and every numeric column of
``sources.parquet``, ``frames.parquet``, ``detections.parquet`` and ``catalog.parquet`` (when
there): the same shape, the same NaN pattern, and values within ``rtol`` (relative to the larger
of the two magnitudes; exact for integers). Text columns must be equal except the run's own paths.
Prints one line per product with the largest relative difference, and exits 1 when one differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

TABLES = ("sources.parquet", "frames.parquet", "detections.parquet", "catalog.parquet")


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    """The largest relative difference of two arrays of the same shape and NaN pattern."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    if a.dtype.kind not in "fiub" or b.dtype.kind not in "fiub":
        return 0.0 if np.array_equal(a.astype(object), b.astype(object)) else np.inf
    a, b = a.astype(np.float64), b.astype(np.float64)
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return np.inf
    good = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(a[~good & ~np.isnan(a)], b[~good & ~np.isnan(b)]):
        return np.inf  # infinities differ
    if not good.any():
        return 0.0
    scale = np.maximum(np.abs(a[good]), np.abs(b[good]))
    diff = np.abs(a[good] - b[good])
    return float(np.max(np.where(scale > 0, diff / np.where(scale > 0, scale, 1), 0.0)))


def _as_text(values: np.ndarray) -> np.ndarray:
    """An object column (strings, lists or arrays per row) as text, row by row."""
    return np.array([str(np.asarray(v).tolist()) for v in values], dtype=str)


def compare_runs(a: Path, b: Path) -> dict[str, tuple[int, float, str]]:
    """Per product: the number of columns compared, the largest relative difference, the worst."""
    results: dict[str, tuple[int, float, str]] = {}
    for name in TABLES:
        if not (a / name).exists() and not (b / name).exists():
            continue
        ta, tb = pd.read_parquet(a / name), pd.read_parquet(b / name)
        if list(ta.columns) != list(tb.columns):
            results[name] = (0, np.inf, f"columns differ: {set(ta.columns) ^ set(tb.columns)}")
            continue
        worst, column = 0.0, ""
        for col in ta.columns:
            if col in (
                "path",
                "wcs_solved",
            ):  # the run's own paths; WCS text compared as numbers elsewhere
                continue
            values_a, values_b = ta[col].to_numpy(), tb[col].to_numpy()
            if values_a.dtype == object:
                values_a, values_b = _as_text(values_a), _as_text(values_b)
            rel = _relative(values_a, values_b)
            if rel > worst or not column:
                worst, column = rel, col
        results[name] = (len(ta.columns), worst, column)
    la = xr.open_zarr(a / "lightcurves.zarr")
    lb = xr.open_zarr(b / "lightcurves.zarr")
    worst, column, count = 0.0, "", 0
    for var in sorted(set(la.variables) | set(lb.variables)):
        if var not in la.variables or var not in lb.variables:
            worst, column = np.inf, f"{var} in one only"
            break
        rel = _relative(np.asarray(la[var].values), np.asarray(lb[var].values))
        count += 1
        if rel > worst or not column:
            worst, column = rel, var
    results["lightcurves.zarr"] = (count, worst, column)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--rtol", type=float, default=1e-9)
    args = parser.parse_args(argv)
    results = compare_runs(args.run_a, args.run_b)
    failed = False
    for name, (count, worst, column) in results.items():
        ok = worst <= args.rtol
        failed |= not ok
        verdict = "" if ok else "  DIFFERS"
        print(f"{name:20s} {count:4d} compared  max rel diff {worst:.3g}  ({column}){verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
