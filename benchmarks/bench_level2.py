"""Level 2 per-frame cost: detect + WCS refinement (+ zero point) against blind ``solve-field``.

On N simulated 2048x2048 frames (noisy truth images, i.e. perfectly calibrated frames) this
times, per frame:

- ``detect``: `lcdask.detect.detect_frame` (sep backend);
- ``refine``: `lcdask.astrometry.refine_wcs` from the previous frame's solution (the first frame
  is solved once with `AsterismSolver` from the erroneous header WCS, not counted per frame);
- ``zero point``: `lcdask.photcal` match + RANSAC fit (when lcdask.photcal is importable);
- ``solve-field``: astrometry.net's ``solve-field`` on the same detections with no position and
  no scale hint (blind), against an index built from the simulated reference catalog with
  ``build-astrometry-index`` (the build time is reported apart).

Goal: refinement under 50 ms per frame and 20x faster than blind solving.

    python benchmarks/bench_level2.py [--frames 6] [--size 2048] [--out DIR]

Writes ``benchmarks/results/level2.json`` and prints a table.
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
from astropy.wcs import WCS

from lcdask.astrometry import (
    AsterismSolver,
    SolveFieldSolver,
    build_index,
    refine_wcs,
    wcs_grid_error_px,
)
from lcdask.detect import detect_frame
from lcdask.simulate import SimConfig, simulate_night, truth_light_image


def _wcs(crval, crpix, cd) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval, wcs.wcs.crpix, wcs.wcs.cd = list(crval), list(crpix), np.asarray(cd)
    wcs.wcs.set()
    return wcs


def _zero_point(detections, wcs, refcat, exptime_s):
    """Match to the catalog and fit zero point and slope (lcdask.photcal)."""
    from lcdask import photcal

    ra, dec = wcs.pixel_to_world_values(detections["x"], detections["y"])
    match = photcal.match_to_catalog(ra, dec, refcat["ra"], refcat["dec"], radius_arcsec=2.0)
    det = detections.iloc[match.det_index]
    cat = refcat.iloc[match.cat_index]
    inst = photcal.instrumental_mag(det["flux"].to_numpy(), exptime_s)
    inst_err = photcal.instrumental_mag_err(det["flux"].to_numpy(), det["flux_err"].to_numpy())
    good = (det["flags"].to_numpy() & 4) == 0  # not saturated
    return photcal.fit_zero_point(
        inst, inst_err, cat["r"].to_numpy(), cat["r_err"].to_numpy(), good=good
    )


def _time(func, *args, **kwargs):
    start = time.perf_counter()
    result = func(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=None, help="scratch directory (kept)")
    parser.add_argument("--solve-timeout", type=float, default=300.0)
    args = parser.parse_args()

    scratch = args.out or Path(tempfile.mkdtemp(prefix="lcdask-bench-l2-"))
    cfg = SimConfig(
        n_frames=args.frames, size=args.size, seed=3, n_darks=1, n_darkflats=1, n_flats=1, n_bias=1
    )
    night, t_sim = _time(simulate_night, scratch / "night", cfg, n_workers=2)
    refcat = night.refcat.rename(columns={"r": "mag"}).assign(r=night.refcat["r"])
    frames = night.truth.frames
    rng = np.random.default_rng(0)

    try:
        from lcdask import photcal  # noqa: F401

        have_photcal = True
    except ImportError:
        have_photcal = False
    have_solve_field = bool(shutil.which("solve-field") and shutil.which("build-astrometry-index"))

    width_arcmin = args.size * cfg.pixel_scale_arcsec / 60.0
    t_index = float("nan")
    index_dir = scratch / "index"
    if have_solve_field:
        _, t_index = _time(build_index, refcat, index_dir, field_width_arcmin=width_arcmin)

    rows = []
    previous = None
    for i, row in frames.iterrows():
        image = truth_light_image(scratch / "night", i)
        image = rng.poisson(image * cfg.gain_e_adu) / cfg.gain_e_adu
        image += rng.normal(0, cfg.read_noise_e / cfg.gain_e_adu, image.shape)
        truth = _wcs(
            (row.crval1, row.crval2),
            (row.crpix1, row.crpix2),
            [[row.cd1_1, row.cd1_2], [row.cd2_1, row.cd2_2]],
        )
        (detections, _), t_detect = _time(detect_frame, image, saturation=cfg.saturate_adu)
        entry = {"frame": int(i), "n_detections": len(detections), "detect_ms": 1e3 * t_detect}
        if previous is None:
            header = _wcs(
                (row.header_crval1, row.header_crval2),
                (row.crpix1, row.crpix2),
                [[row.header_cd1_1, row.header_cd1_2], [row.header_cd2_1, row.header_cd2_2]],
            )
            first, t_first = _time(
                AsterismSolver().solve,
                detections,
                image.shape,
                wcs_guess=header,
                catalog=refcat,
            )
            entry["asterism_ms"] = 1e3 * t_first
            entry["asterism_error_px"] = wcs_grid_error_px(first.wcs, truth, image.shape)
            previous = first.wcs
        solution, t_refine = _time(
            refine_wcs, detections, previous, refcat, image_shape=image.shape
        )
        entry.update(
            refine_ms=1e3 * t_refine,
            refine_status=solution.status,
            refine_n_matches=solution.n_matches,
            refine_error_px=wcs_grid_error_px(solution.wcs, truth, image.shape)
            if solution.ok
            else float("nan"),
        )
        if solution.ok:
            previous = solution.wcs
        if have_photcal and solution.ok:
            zp, t_zp = _time(_zero_point, detections, solution.wcs, refcat, cfg.exptime_s)
            entry.update(
                zero_point_ms=1e3 * t_zp,
                zero_point_error_mag=float(zp.zero_point - row.zero_point),
                slope_error=float(zp.slope - row.slope),
            )
        if have_solve_field:
            blind, t_blind = _time(
                SolveFieldSolver(index_dir=index_dir, timeout_s=args.solve_timeout).solve,
                detections,
                image.shape,
            )
            entry.update(
                solve_field_ms=1e3 * t_blind,
                solve_field_status=blind.status,
                solve_field_error_px=wcs_grid_error_px(blind.wcs, truth, image.shape)
                if blind.ok
                else float("nan"),
            )
        rows.append(entry)
        print(
            f"frame {i}: detect {entry['detect_ms']:.0f} ms, refine {entry['refine_ms']:.1f} ms "
            f"({entry['refine_error_px']:.3f} px), solve-field "
            f"{entry.get('solve_field_ms', float('nan')):.0f} ms",
            flush=True,
        )

    table = pd.DataFrame(rows)
    summary = {
        "frames": args.frames,
        "size": args.size,
        "simulate_s": t_sim,
        "index_build_s": t_index,
        "detect_ms_median": float(table["detect_ms"].median()),
        "refine_ms_median": float(table["refine_ms"].median()),
        "refine_error_px_max": float(table["refine_error_px"].max()),
        "first_frame_asterism_ms": float(table["asterism_ms"].iloc[0]),
    }
    per_frame = table["detect_ms"] + table["refine_ms"]
    if have_photcal:
        summary["zero_point_ms_median"] = float(table["zero_point_ms"].median())
        per_frame = per_frame + table["zero_point_ms"]
    else:
        summary["zero_point_note"] = "lcdask.photcal not importable: zero point not timed"
    summary["level2_per_frame_ms_median"] = float(per_frame.median())
    if have_solve_field:
        summary["solve_field_blind_ms_median"] = float(table["solve_field_ms"].median())
        summary["solve_field_solved"] = int((table["solve_field_status"] == "ok").sum())
        summary["blind_over_refine"] = (
            summary["solve_field_blind_ms_median"] / summary["refine_ms_median"]
        )
        summary["blind_over_detect_refine_zp"] = (
            summary["solve_field_blind_ms_median"] / summary["level2_per_frame_ms_median"]
        )
    else:
        summary["solve_field_note"] = "solve-field not installed: scripts/install-system-deps.sh"
    summary["goal_refine_under_50ms"] = summary["refine_ms_median"] < 50.0
    summary["goal_20x_faster_than_blind"] = summary.get("blind_over_refine", 0.0) >= 20.0
    result = {
        "benchmark": "level2",
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "summary": summary,
        "frames_detail": rows,
    }
    out = Path(__file__).parent / "results" / "level2.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")

    print()
    print(f"{'step':<34}{'ms/frame (median)':>20}")
    print(f"{'detect (sep)':<34}{summary['detect_ms_median']:>20.1f}")
    print(f"{'refine_wcs':<34}{summary['refine_ms_median']:>20.1f}")
    if have_photcal:
        print(f"{'zero point (photcal RANSAC)':<34}{summary['zero_point_ms_median']:>20.1f}")
    print(f"{'detect + refine (+ zero point)':<34}{summary['level2_per_frame_ms_median']:>20.1f}")
    if have_solve_field:
        print(f"{'solve-field, blind':<34}{summary['solve_field_blind_ms_median']:>20.1f}")
        print(
            f"blind / refine: {summary['blind_over_refine']:.0f}x; blind / whole Level 2 step: "
            f"{summary['blind_over_detect_refine_zp']:.1f}x; index build {t_index:.1f} s"
        )
    print(f"refinement error vs truth: max {summary['refine_error_px_max']:.3f} px")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
