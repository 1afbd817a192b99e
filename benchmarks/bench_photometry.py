"""Level 3 speed against the reference libraries, on the same simulated 2048 x 2048 frames.

- aperture photometry, ms/frame: `lcdask.photometry.photometer_frame` (sep sums + vectorised
  clipped annuli) against photutils `aperture_photometry` + `ApertureStats` (sigma-clipped annulus)
  at the same positions, radii and annulus;
- PSF photometry, ms/star: `lcdask.psf.forced_psf_photometry` (all stars of the frame at once)
  against photutils `PSFPhotometry` (its default fit of x, y and flux, on a subset of stars), with
  the accuracy of both against the truth fluxes;
- cosmic rays, s/frame: `lcdask.cosmics.detect_cosmics` (method "fast") against astroscrappy's
  default call, with the recall of both (pixels whose deposit is above 5x their noise) on frames
  with 10x the default cosmic-ray rate.

Run: ``python benchmarks/bench_photometry.py [--frames N] [--psf-stars M]``; writes
``benchmarks/results/photometry.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np


def _frame(out: Path, i: int, cr_rate: float):
    from lcdask.simulate import load_truth, truth_light_image
    from lcdask.simulate.detector import cosmic_rays

    cfg = load_truth(out).config
    truth = truth_light_image(out, i)
    rng = np.random.default_rng(900 + i)
    cx, cy, ce = cosmic_rays(dataclasses.replace(cfg, cosmic_rate_cm2_s=cr_rate), 60.0, rng)
    e = rng.poisson(truth * cfg.gain_e_adu).astype(np.float64)
    e[cy, cx] += ce
    e = np.minimum(e, cfg.full_well_e) + rng.normal(0.0, cfg.read_noise_e, truth.shape)
    return e / cfg.gain_e_adu, truth, (cx, cy, ce)


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _isolated(x, y, flux, radius, fraction=0.01):
    from scipy.spatial import cKDTree

    tree = cKDTree(np.column_stack([x, y]))
    return np.array(
        [
            all(j == k or flux[j] < fraction * flux[k] for j in nb)
            for k, nb in enumerate(tree.query_ball_point(np.column_stack([x, y]), radius))
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--psf-stars", type=int, default=150)
    parser.add_argument("--out", default="/tmp/lcdask_bench_photometry")
    args = parser.parse_args()

    import astroscrappy
    from baselines import photutils_aperture_photometry, photutils_psf_photometry

    from lcdask.cosmics import detect_cosmics
    from lcdask.photometry import aperture_radii, photometer_frame
    from lcdask.psf import (
        build_epsf,
        forced_psf_photometry,
        refine_scale,
    )
    from lcdask.simulate import SimConfig, load_truth, simulate_night
    from lcdask.simulate.render import source_positions_fluxes
    from lcdask.sky import subtract_sky

    out = Path(args.out)
    cfg = SimConfig(
        n_frames=args.frames, size=2048, seed=11, n_darks=0, n_darkflats=0, n_flats=0, n_bias=0
    )
    if not (out / "truth" / "cosmic_rays.parquet").exists():
        simulate_night(out, cfg, n_workers=2)
    tr = load_truth(out)
    cfg = tr.config
    gain, rn = cfg.gain_e_adu, cfg.read_noise_e
    res: dict[str, list[float]] = {k: [] for k in ("ap_ours", "ap_pu", "psf_ours", "psf_pu")}
    res.update({k: [] for k in ("cr_ours", "cr_ref", "rec_ours", "rec_ref", "fp_ours", "fp_ref")})
    acc: dict[str, list[float]] = {"ours": [], "photutils": [], "ours_all": []}
    n_stars = n_psf = 0
    psf = None
    for i in range(cfg.n_frames):
        image, truth, (cx, cy, ce) = _frame(out, i, cr_rate=0.5)
        # cosmic rays
        ours_cr, t = _timed(
            detect_cosmics, image, gain=gain, read_noise_e=rn, saturation=cfg.saturate_adu
        )
        res["cr_ours"].append(t)
        (ref_cr, _), t = _timed(
            astroscrappy.detect_cosmics, image.astype(np.float32), gain=gain, readnoise=rn
        )
        res["cr_ref"].append(t)
        sig = ce > 5.0 * np.sqrt(truth[cy, cx] * gain + rn**2)
        truth_mask = np.zeros(image.shape, bool)
        truth_mask[cy, cx] = True
        for name, m in (("ours", ours_cr), ("ref", np.asarray(ref_cr, bool))):
            res[f"rec_{name}"].append(float(m[cy, cx][sig].mean()))
            res[f"fp_{name}"].append(float((m & ~truth_mask).sum()))
        # photometry on the cleaned frame, at the truth positions of stars brighter than r = 20
        frame = tr.frames.iloc[i]
        fwhm = float(frame["fwhm_px"])
        clean = np.where(truth_mask, truth, image)  # photometry is timed apart from cleaning
        sub, sky = subtract_sky(clean)
        ids, x, y, flux = source_positions_fluxes(frame, tr.stars, tr.movers)
        mags = tr.stars.set_index("star_id").loc[ids, "mag"].to_numpy()
        keep = (x > 20) & (x < cfg.size - 20) & (y > 20) & (y < cfg.size - 20) & (mags < 20)
        x, y, flux = x[keep], y[keep], flux[keep]
        n_stars += x.size
        if psf is None:
            psf, _ = build_epsf(sub, oversampling=3)
        radii = aperture_radii(((1.0, "fwhm"), (1.5, "fwhm"), (2.0, "fwhm"), (3.0, "fwhm")), fwhm)
        aps = [(r, "px") for r in radii]
        kw = {"fwhm_px": fwhm, "gain": gain, "rms": sky.rms, "x": x, "y": y}
        (_tab, info), t = _timed(
            photometer_frame, sub, apertures=aps, aperture_correction=False, **kw
        )
        res["ap_ours"].append(t)
        _, t = _timed(
            photutils_aperture_photometry,
            sub,
            x,
            y,
            radii,
            info["annulus_px"],
            rms=sky.rms,
            gain=gain,
        )
        res["ap_pu"].append(t)
        # PSF: ours on every star, photutils on a subset of isolated ones
        bright = (flux > 2e4) & (flux < 3e5)
        model = refine_scale(sub, x[bright][:30], y[bright][:30], psf.scaled_to(fwhm), rms=sky.rms)
        sat = image >= cfg.saturate_adu
        ours, t = _timed(forced_psf_photometry, sub, x, y, model, rms=sky.rms, gain=gain, mask=sat)
        res["psf_ours"].append(t / x.size)
        lone = np.flatnonzero(_isolated(x, y, flux, 6.0 * fwhm) & (flux > 3000) & (flux < 3e5))
        sel = lone[: args.psf_stars]
        error = np.sqrt(sky.rms**2 + np.clip(sub, 0, None) / gain)
        ref, t = _timed(photutils_psf_photometry, sub, x[sel], y[sel], model, error=error)
        res["psf_pu"].append(t / sel.size)
        n_psf += sel.size
        acc["ours"] += list(ours["flux"].to_numpy()[sel] / flux[sel] - 1.0)
        acc["photutils"] += list(ref["flux"].to_numpy() / flux[sel] - 1.0)
        snr = ours["flux"] / ours["flux_err"]
        good = (snr > 50).to_numpy() & (ours["group_size"] == 1).to_numpy()
        acc["ours_all"] += list(ours["flux"].to_numpy()[good] / flux[good] - 1.0)

    def med(v):
        return float(np.median(v))

    result = {
        "frames": cfg.n_frames,
        "size": cfg.size,
        "stars_per_frame": n_stars / cfg.n_frames,
        "machine": platform.processor() or platform.machine(),
        "aperture_ms_per_frame": {
            "lcdask": 1e3 * med(res["ap_ours"]),
            "photutils": 1e3 * med(res["ap_pu"]),
        },
        "psf_ms_per_star": {
            "lcdask": 1e3 * med(res["psf_ours"]),
            "photutils": 1e3 * med(res["psf_pu"]),
        },
        "psf_accuracy_same_stars": {
            "n_stars": n_psf,
            "lcdask_median_abs_rel_error": float(np.median(np.abs(acc["ours"]))),
            "photutils_median_abs_rel_error": float(np.median(np.abs(acc["photutils"]))),
            "lcdask_median_rel_error": float(np.median(acc["ours"])),
            "photutils_median_rel_error": float(np.median(acc["photutils"])),
        },
        "psf_accuracy_all_isolated_snr50": {
            "n": len(acc["ours_all"]),
            "median_rel_error": float(np.median(acc["ours_all"])),
            "median_abs_rel_error": float(np.median(np.abs(acc["ours_all"]))),
        },
        "cosmics_s_per_frame": {
            "lcdask_fast": med(res["cr_ours"]),
            "astroscrappy": med(res["cr_ref"]),
        },
        "cosmics_recall": {
            "lcdask_fast": med(res["rec_ours"]),
            "astroscrappy": med(res["rec_ref"]),
        },
        "cosmics_false_pixels_per_frame": {
            "lcdask_fast": med(res["fp_ours"]),
            "astroscrappy": med(res["fp_ref"]),
        },
    }
    result["speedup"] = {
        "aperture": result["aperture_ms_per_frame"]["photutils"]
        / result["aperture_ms_per_frame"]["lcdask"],
        "psf": result["psf_ms_per_star"]["photutils"] / result["psf_ms_per_star"]["lcdask"],
        "cosmics": result["cosmics_s_per_frame"]["astroscrappy"]
        / result["cosmics_s_per_frame"]["lcdask_fast"],
    }
    path = Path(__file__).parent / "results" / "photometry.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    a, p, c = (
        result["aperture_ms_per_frame"],
        result["psf_ms_per_star"],
        result["cosmics_s_per_frame"],
    )
    s = result["speedup"]
    pa = result["psf_accuracy_same_stars"]
    print(f"{cfg.n_frames} frames of {cfg.size} px, {result['stars_per_frame']:.0f} stars/frame")
    rows = [
        ("aperture ms/frame", a["lcdask"], a["photutils"], s["aperture"]),
        ("PSF ms/star", p["lcdask"], p["photutils"], s["psf"]),
        ("cosmic rays s/frame", c["lcdask_fast"], c["astroscrappy"], s["cosmics"]),
    ]
    print(f"{'step':<22}{'lcdask':>12}{'reference':>12}{'speed-up':>10}")
    for name, ours_v, ref_v, ratio in rows:
        print(f"{name:<22}{ours_v:>12.3f}{ref_v:>12.3f}{ratio:>9.1f}x")
    print(
        f"PSF |flux/truth - 1| median on {pa['n_stars']} isolated stars: lcdask "
        f"{pa['lcdask_median_abs_rel_error']:.4f}, "
        f"photutils {pa['photutils_median_abs_rel_error']:.4f}"
    )
    r = result["cosmics_recall"]
    fp = result["cosmics_false_pixels_per_frame"]
    print(
        f"cosmic-ray recall: lcdask {r['lcdask_fast']:.4f} ({fp['lcdask_fast']:.0f} false px), "
        f"astroscrappy {r['astroscrappy']:.4f} ({fp['astroscrappy']:.0f} false px)"
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
