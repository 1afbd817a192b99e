"""Injected transits on simulated nights, through the whole pipeline, against their truth.

Issue 17's must-show: on at least 50 simulated nights with injected transits (depths 0.5-3%,
full and partial coverage, with extinction, drift over an imperfect flat and seeing changes) the
fitted mid-time is within 1 sigma of the truth in >= 60% of the nights and within 3 sigma in
>= 97%, the depth within 2 sigma in >= 90%, and the target's residual scatter <= 1.1 times its
noise model where photon-limited.

Each night is the ``small-telescope`` preset (`lcdask.simulate.small_telescope_config`: TrES-2's
field on the real Tycho-2 sky, no calibration frames so that the flat's vignetting, dust and
pixel response stay in the frames, a tracking drift of 220-320 px over the night and a
re-pointing jump of 20-60 px at the middle frame, extinction k = 0.12 mag/airmass with thin
clouds, seeing wandering by +-20%, no WCS in the headers: solved blind) in ``--frames`` frames
of ``--size`` px over about 4.5 h (the drift and the jump scaled to the frame: 110-160 px and 10-30
px on 512 px frames), with the target's transit rendered as a limb-darkened Mandel
& Agol transit (``transit_shape = "limb-darkened"``): (Rp/Rs)^2 log-uniform in 0.5-3%, impact
parameter 0-0.7, quadratic limb darkening u1 0.3-0.5, u2 0.1-0.3, period 2-5 d, a/Rs set so that
T14 is 1.5-2.5 h. A third of the nights (seed % 3 == 0) see the whole transit with at least
0.75 h of baseline on each side; the others the ingress only (seed % 3 == 1: the night ends
0-25% of T14 after mid-transit) or the egress only (seed % 3 == 2).

Each night goes through `lcdask.run.run` with the target's RA/Dec (one LocalCluster of 2 workers
for all nights; catalogs offline), then `lcdask.transit.fit_run_transit_full` (what
``lcdask transit RUN`` calls) with the injected period, the shape (a/Rs, inclination) and limb
darkening given, the ephemeris's mid-time 0-5 min off the truth with a stated error of 14 min,
and Rp/Rs 10% off (a start; fitted whenever there is a baseline). The fit fixes what the
coverage cannot constrain (a/Rs and b on a partial night).

Per night: the mid-time fitted vs the truth (BJD_TDB) in units of its error (the posterior's
side toward the truth), the depth ((Rp/Rs)^2) likewise, the residual scatter of the fitted points
against the light curve's own errors (``rel_flux_err``, the run's noise model), the coverage.
A night whose pipeline or fit fails is recorded with the reason and counts as a miss.

Usage::

    python benchmarks/validate_transit_nights.py [--nights 50] [--first 0] [--frames 60]
        [--size 512] [--work DIR] [--refit] [--out benchmarks/results/transit_nights.json]

``--merge A.json B.json`` combines result files by seed (e.g. nights run by two processes).
``--refit`` reuses the runs already in ``--work`` (only the fit is done again); with
``--replay-target`` the target's photometry is chosen again first (`replay_target_photometry`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
COVERAGE_OF = {0: "full", 1: "ingress", 2: "egress"}
NIGHT_HOURS = 4.5
MIN_BASELINE_H = 0.75


def night_plan(seed: int, *, n_frames: int, size: int, night_hours: float = NIGHT_HOURS) -> dict:
    """The injected transit and the night of ``seed`` (module docstring); the night lasts
    ``night_hours``."""
    from lcdask.transit.model import inclination_deg

    rng = np.random.default_rng(np.random.SeedSequence([seed, 17]))
    coverage = COVERAGE_OF[seed % 3]
    depth = float(np.exp(rng.uniform(np.log(0.005), np.log(0.03))))
    rp = math.sqrt(depth)
    period = float(rng.uniform(2.0, 5.0))
    b = float(rng.uniform(0.0, 0.7))
    t14_h = float(rng.uniform(1.5, 2.5))
    # T14 = P / pi * asin(sqrt((1 + k)^2 - b^2) / (a sin i)); solved for a with sin i ~ 1
    chord = math.sqrt((1 + rp) ** 2 - b**2)
    a_rs = float(chord / math.sin(math.pi * t14_h / 24.0 / period))
    a_rs = math.sqrt(a_rs**2 + b**2)  # a sin i = sqrt(a^2 - b^2) exactly
    u1, u2 = float(rng.uniform(0.3, 0.5)), float(rng.uniform(0.1, 0.3))
    frac = float(rng.uniform(0.0, 0.25))
    half = 0.5 * night_hours
    if coverage == "full":
        room = max(0.0, half - 0.5 * t14_h - MIN_BASELINE_H)
        offset_h = float(rng.uniform(-room, room))
    elif coverage == "ingress":
        offset_h = half - frac * t14_h
    else:
        offset_h = -(half - frac * t14_h)
    ephemeris_off_min = float(rng.uniform(-5.0, 5.0))
    cadence_s = night_hours * 3600.0 / n_frames
    return {
        "seed": seed,
        "coverage_planned": coverage,
        "depth": depth,
        "rp_rs": rp,
        "period_d": period,
        "a_rs": a_rs,
        "b": b,
        "inc_deg": float(inclination_deg(a_rs, b)),
        "u1": u1,
        "u2": u2,
        "t14_h_planned": t14_h,
        "offset_h": offset_h,
        "ephemeris_off_min": ephemeris_off_min,
        "n_frames": n_frames,
        "size": size,
        "readout_s": max(10.0, cadence_s - 60.0 - 0.5),
    }


def night_config(plan: dict):
    """The `SimConfig` of a plan: the small-telescope preset with the limb-darkened transit."""
    from lcdask.simulate import small_telescope_config

    cfg = small_telescope_config(
        n_frames=plan["n_frames"],
        size=plan["size"],
        seed=plan["seed"],
        readout_s=plan["readout_s"],
        transit_shape="limb-darkened",
        transit_rp_rs=plan["rp_rs"],
        transit_a_rs=plan["a_rs"],
        transit_b=plan["b"],
        transit_u1=plan["u1"],
        transit_u2=plan["u2"],
        transit_period_d=plan["period_d"],
        transit_offset_h=plan["offset_h"],
    )
    # the preset's drift (220-320 px) and re-pointing (20-60 px) are for 1024 px frames: the
    # same fraction of a smaller frame (on 384 px frames the stars crossed most of the field)
    scale = plan["size"] / 1024.0
    return dataclasses.replace(
        cfg, drift_px_total=scale * cfg.drift_px_total, repoint_px=scale * cfg.repoint_px
    )


def transit_options(plan: dict, truth: dict):
    """What the observer gives the fit: the ephemeris off by ``ephemeris_off_min`` (error 14
    min), the period, the shape and limb darkening; Rp/Rs 10% off."""
    from lcdask.config import TransitConfig

    return TransitConfig(
        t0=truth["t0_bjd_tdb"] + plan["ephemeris_off_min"] / 1440.0,
        t0_err=0.01,
        period_d=truth["period_d"],
        period_err=0.0,
        rp_rs=1.1 * truth["rp_rs"],
        a_rs=truth["a_rs"],
        inc_deg=truth["inc_deg"],
        u1=truth["u1"],
        u2=truth["u2"],
        walkers=24,
        min_steps=600,
        max_steps=4000,
        autocorr_factor=30.0,
        offline=True,
    )


def _toward(est, truth: float) -> float:
    """The posterior's error on the side of the truth."""
    return est.minus if est.value > truth else est.plus


def photon_share(ds, used: np.ndarray) -> float:
    """The median share of the target's relative-flux error variance that is its own photon
    noise (`lcdask.gain.photon_fraction` at the aperture of its curve), on the fitted points."""
    from lcdask.gain import photon_fraction

    k = int(ds.attrs.get("target_aperture", 0))
    if k and "flux_ap" in ds:
        flux = ds["flux_ap"].sel(aperture=k).to_numpy().astype(float)
        err = ds["flux_ap_err"].sel(aperture=k).to_numpy().astype(float)
    else:
        flux = ds["flux"].to_numpy().astype(float)
        err = ds["flux_err"].to_numpy().astype(float)
    ti = int(np.flatnonzero(ds["source_id"].to_numpy() == int(ds.attrs["target_source_id"]))[0])
    frac = photon_fraction(flux, err)[ti]
    photon_var = frac * (err[ti] / flux[ti]) ** 2
    rel = ds["rel_flux"].to_numpy()[ti].astype(float)
    rel_err = ds["rel_flux_err"].to_numpy()[ti].astype(float)
    with np.errstate(all="ignore"):
        share = photon_var / (rel_err / rel) ** 2
    share = share[used & np.isfinite(share)]
    return float(np.median(share)) if share.size else math.nan


def shot_share(record: dict, relative_err: float) -> float:
    """The share of the target's relative-flux error variance that is shot noise (the target's
    and the comparison stars' photon, sky and read noise): 1 less the excess white noise's
    share (`lcdask.target_photometry`, step 7); NaN when the run did not measure it (before
    step 7, or when the run-wide curve was kept without it)."""
    keys = ("excess_noise_pct", "excess_noise_comparison_pct")
    if all(record.get(k) is None for k in keys):
        return math.nan
    excess = [record.get(k) or 0.0 for k in keys]
    return float(1.0 - sum((v / 100.0) ** 2 for v in excess) / relative_err**2)


def measure(fit, truth: dict, run_dir: Path) -> dict:
    """The numbers of one night from its fit (module docstring)."""
    import xarray as xr

    p = fit.parameters
    t0, depth = p["t0"], p["depth"]
    t0_sigma = _toward(t0, truth["t0_bjd_tdb"])
    depth_sigma = _toward(depth, truth["depth"]) if depth.status != "fixed" else math.nan
    pts = fit.points
    used = (pts["status"] == "used").to_numpy()
    resid = pts["residual"].to_numpy(float)[used]
    err = pts["flux_err"].to_numpy(float)[used]
    flux = pts["flux"].to_numpy(float)[used]
    ds = xr.open_zarr(run_dir / "lightcurves.zarr")
    attrs = {k: v for k, v in ds.attrs.items() if k.startswith("target_")}
    share = photon_share(ds, used)
    tp_record = json.loads((run_dir / "run.json").read_text())["stages"]["lightcurves"]
    tp_record = tp_record.get("target_photometry", {})
    return {
        "t0_fit": t0.value,
        "t0_minus": t0.minus,
        "t0_plus": t0.plus,
        "t0_true": truth["t0_bjd_tdb"],
        "t0_diff_min": 1440.0 * (t0.value - truth["t0_bjd_tdb"]),
        "t0_sigma_min": 1440.0 * t0_sigma,
        "t0_z": (t0.value - truth["t0_bjd_tdb"]) / t0_sigma if t0_sigma > 0 else math.inf,
        "depth_fit": depth.value,
        "depth_minus": depth.minus,
        "depth_plus": depth.plus,
        "depth_status": depth.status,
        "depth_true": truth["depth"],
        "depth_z": (depth.value - truth["depth"]) / depth_sigma if depth_sigma > 0 else math.nan,
        "free": [k for k, v in p.items() if v.status == "free"],
        "detrend_terms": list(fit.detrend_terms),
        "fit_coverage": fit.coverage.describe(),
        "n_used": int(used.sum()),
        "n_flagged": fit.n_flagged,
        "n_clipped": fit.n_clipped,
        "n_missing": fit.n_missing,
        "rms": fit.rms,
        "noise_model_median": float(np.median(err)),
        "scatter_ratio": fit.rms / float(np.median(err)),
        "chi_ratio": float(np.sqrt(np.mean((resid / err) ** 2))),
        "relative_err_median": float(np.median(err / flux)),
        "chi2_red": fit.chi2_red,
        "beta": fit.beta,
        "noise": fit.noise.__dict__ if hasattr(fit.noise, "__dict__") else str(fit.noise),
        "chain_converged": fit.chain.converged,
        "chain_steps": fit.chain.steps,
        "own_photon_share": share,
        "shot_share": shot_share(tp_record, float(np.median(err / flux))),
        "excess_noise_pct": tp_record.get("excess_noise_pct"),
        "excess_noise_comparison_pct": tp_record.get("excess_noise_comparison_pct"),
        "target_photometry": {
            k: (v.item() if hasattr(v, "item") else v)
            for k, v in attrs.items()
            if isinstance(v, (int, float, str, np.integer, np.floating))
        },
    }


def replay_target_photometry(run_dir: Path) -> None:
    """Choose the target's photometry again on a finished run (the light-curve stage's last
    steps: the run-wide ensemble's rejected stars, `choose_target_photometry`,
    `apply_target_photometry`) with the code as it is now, after restoring the target's run-wide
    relative flux; ``lightcurves.zarr`` and ``run.json`` rewritten. For ``--refit
    --replay-target``: a change to `lcdask.target_photometry` judged without running the
    pipeline again."""
    import shutil

    import pandas as pd
    import xarray as xr

    from lcdask.io import cube as cube_io
    from lcdask.lightcurves import LightCurveFlag, ensemble_photometry
    from lcdask.target_photometry import (
        apply_target_photometry,
        choose_target_photometry,
        comparison_candidates,
    )

    path = run_dir / "lightcurves.zarr"
    ds = xr.open_zarr(path).load()
    record = json.loads((run_dir / "run.json").read_text())
    target_id = int(ds.attrs["target_source_id"])
    sid = ds["source_id"].to_numpy()
    ti = int(np.flatnonzero(sid == target_id)[0])
    rel, rel_err = ds["rel_flux"].to_numpy().copy(), ds["rel_flux_err"].to_numpy().copy()
    rel[ti] = ds["target_rel_flux_default"].to_numpy()
    rel_err[ti] = ds["target_rel_flux_default_err"].to_numpy()
    flags = ds["flags"].to_numpy().copy()
    flags[ti] &= ~np.asarray(int(LightCurveFlag.OUTLIER), flags.dtype)
    ds["rel_flux"] = ds["rel_flux"].copy(data=rel)
    ds["rel_flux_err"] = ds["rel_flux_err"].copy(data=rel_err)
    ds["flags"] = ds["flags"].copy(data=flags)
    ds = ds.drop_vars(
        ["target_rel_flux_default", "target_rel_flux_default_err", "target_comparison_weight"]
    )
    sources = pd.read_parquet(run_dir / "sources.parquet")
    not_comparison = np.append(
        sources.loc[sources["kind"] == "moving", "source_id"].to_numpy(), target_id
    )
    ensemble = ensemble_photometry(ds, exclude_ids=not_comparison)
    exclude = np.concatenate([not_comparison, ensemble.rejected_ids])
    candidates = comparison_candidates(ds, target_id, exclude_ids=exclude)
    result = choose_target_photometry(ds, target_id, candidates=candidates)
    out = apply_target_photometry(ds, result)
    tmp = run_dir / "lightcurves.replay.zarr"
    shutil.rmtree(tmp, ignore_errors=True)
    out.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False)
    cube_io.consolidate(tmp)
    shutil.rmtree(path)
    tmp.rename(path)
    record["stages"]["lightcurves"]["target_photometry"] = result.as_record()
    (run_dir / "run.json").write_text(json.dumps(record, indent=2, default=_plain))


def do_night(plan: dict, work: Path, client, *, refit: bool, replay_target: bool = False) -> dict:
    """Simulate, run and fit one night; the row of the table (the error when a step fails)."""
    from lcdask.config import load_config
    from lcdask.run import run
    from lcdask.simulate import load_truth, simulate_night
    from lcdask.transit import fit_run_transit_full

    base = work / f"night{plan['seed']:03d}"
    row: dict = {"seed": plan["seed"], "plan": plan, "ok": False, "error": ""}
    step = "simulate"
    try:
        t_start = time.perf_counter()
        if not (refit and (base / "sim" / "truth" / "transit.json").exists()):
            simulate_night(base / "sim", night_config(plan), n_workers=1)
        truth = load_truth(base / "sim").transit()
        row["truth"] = truth
        row["seconds_simulate"] = time.perf_counter() - t_start
        step = "run"
        t_start = time.perf_counter()
        if not (refit and (base / "run" / "lightcurves.zarr").exists()):
            cfg = night_config(plan)
            run(
                base / "sim" / "raw",
                base / "run",
                config=load_config(catalog={"offline": True}),
                target=(cfg.target_ra_deg, cfg.target_dec_deg),
                client=client,
            )
        if replay_target:
            step = "replay target photometry"
            replay_target_photometry(base / "run")
        row["seconds_run"] = time.perf_counter() - t_start
        step = "fit"
        t_start = time.perf_counter()
        fit, _ = fit_run_transit_full(base / "run", options=transit_options(plan, truth))
        row["seconds_fit"] = time.perf_counter() - t_start
        row.update(measure(fit, truth, base / "run"))
        row["ok"] = True
    except Exception as exc:  # every failure is a recorded miss
        row["error"] = f"{step}: {type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=6)
    return row


def summarise(rows: list[dict]) -> dict:
    """The fractions the must-show asks for (a failed night is a miss)."""
    n = len(rows)
    ok = [r for r in rows if r["ok"]]
    z_t0 = np.array([abs(r["t0_z"]) for r in ok])
    depth_rows = [r for r in ok if r["depth_status"] != "fixed"]
    z_depth = np.array([abs(r["depth_z"]) for r in depth_rows])
    ratio = np.array([r["scatter_ratio"] for r in ok])
    chi = np.array([r["chi_ratio"] for r in ok])

    def frac(values: np.ndarray, limit: float, total: int) -> float:
        return float(np.sum(values <= limit) / total) if total else math.nan

    by_cov = {}
    for kind in ("full", "ingress", "egress"):
        sub = [r for r in ok if r["truth"]["coverage"]["kind"] == kind]
        total = sum(
            1 for r in rows if (r.get("truth") or {}).get("coverage", {}).get("kind", "") == kind
        )
        zt = np.array([abs(r["t0_z"]) for r in sub])
        by_cov[kind] = {
            "n": total,
            "t0_within_1sigma": frac(zt, 1.0, total),
            "t0_within_3sigma": frac(zt, 3.0, total),
        }
    return {
        "n_nights": n,
        "n_failed": n - len(ok),
        "failed": {r["seed"]: r["error"] for r in rows if not r["ok"]},
        "t0_within_1sigma": frac(z_t0, 1.0, n),
        "t0_within_3sigma": frac(z_t0, 3.0, n),
        "depth_n_free": len(depth_rows),
        "depth_within_2sigma": frac(z_depth, 2.0, n - (len(ok) - len(depth_rows))),
        "scatter_ratio_median": float(np.median(ratio)) if ratio.size else math.nan,
        "scatter_ratio_p90": float(np.percentile(ratio, 90)) if ratio.size else math.nan,
        "scatter_within_1p1": frac(ratio, 1.1, n),
        "chi_ratio_median": float(np.median(chi)) if chi.size else math.nan,
        "t0_sigma_min_median": float(np.median([r["t0_sigma_min"] for r in ok])) if ok else None,
        "t0_z_median": float(np.median([r["t0_z"] for r in ok])) if ok else None,
        "t0_z_rms": float(np.sqrt(np.mean(z_t0**2))) if ok else None,
        "depth_ratio_median": float(np.median([r["depth_fit"] / r["depth_true"] for r in ok]))
        if ok
        else None,
        "depth_z_median": float(np.median([r["depth_z"] for r in depth_rows]))
        if depth_rows
        else None,
        "photon_limited": _photon_limited_summary(ok),
        "by_coverage": by_cov,
        "goals": {
            "t0_within_1sigma": 0.60,
            "t0_within_3sigma": 0.97,
            "depth_within_2sigma": 0.90,
            "scatter_ratio": 1.1,
        },
    }


def _photon_limited_summary(ok: list[dict]) -> dict:
    """The scatter ratio on the photon-limited nights: shot noise (photon, sky, read) at least
    half the target's error variance (`shot_share`; as `lcdask.gain.noise_model_check` selects
    stars by their photon noise's share)."""
    sub = [r for r in ok if (r.get("shot_share") or 0.0) >= 0.5]
    ratio = np.array([r["scatter_ratio"] for r in sub])
    return {
        "n": len(sub),
        "scatter_ratio_median": float(np.median(ratio)) if ratio.size else None,
        "scatter_within_1p1": float(np.mean(ratio <= 1.1)) if ratio.size else None,
    }


def print_table(rows: list[dict], summary: dict) -> None:
    head = (
        f"{'seed':>4} {'cov':>7} {'depth%':>6} {'fit%':>6} {'zD':>6} {'dt0min':>7} "
        f"{'sig':>5} {'zt0':>6} {'rms%':>5} {'err%':>5} {'ratio':>5} {'terms'}"
    )
    print(head)
    for r in rows:
        if not r["ok"]:
            print(f"{r['seed']:>4} FAILED {r['error'][:100]}")
            continue
        print(
            f"{r['seed']:>4} {r['truth']['coverage']['kind']:>7} {100 * r['depth_true']:6.3f} "
            f"{100 * r['depth_fit']:6.3f} {r['depth_z']:6.2f} {r['t0_diff_min']:7.2f} "
            f"{r['t0_sigma_min']:5.2f} {r['t0_z']:6.2f} {100 * r['rms']:5.3f} "
            f"{100 * r['noise_model_median']:5.3f} {r['scatter_ratio']:5.2f} "
            f"{','.join(r['detrend_terms'])}"
        )
    s = summary
    print(
        f"\n{s['n_nights']} nights ({s['n_failed']} failed): mid-time within 1 sigma "
        f"{s['t0_within_1sigma']:.0%} (goal 60%), within 3 sigma {s['t0_within_3sigma']:.0%} "
        f"(goal 97%); depth within 2 sigma {s['depth_within_2sigma']:.0%} (goal 90%, "
        f"{s['depth_n_free']} free); scatter / noise model median {s['scatter_ratio_median']:.2f}, "
        f"90th percentile {s['scatter_ratio_p90']:.2f}, <= 1.1 in {s['scatter_within_1p1']:.0%}"
    )
    for kind, v in s["by_coverage"].items():
        print(
            f"  {kind:>7}: {v['n']} nights, t0 within 1 sigma {v['t0_within_1sigma']:.0%}, "
            f"3 sigma {v['t0_within_3sigma']:.0%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=50)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lcdask_transit_nights"))
    parser.add_argument("--refit", action="store_true")
    parser.add_argument("--replay-target", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "transit_nights.json")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="combine the nights of these result files (a later file's night replaces an "
        "earlier one's) into --out, and print the table; nothing is run",
    )
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return

    from lcdask.cluster import dask_client

    args.work.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    started = time.perf_counter()
    seeds = range(args.first, args.first + args.nights)
    with dask_client(n_workers=2, dashboard=False) as client:
        for seed in seeds:
            plan = night_plan(seed, n_frames=args.frames, size=args.size)
            row = do_night(
                plan, args.work, client, refit=args.refit, replay_target=args.replay_target
            )
            rows.append(row)
            status = (
                f"t0 {row['t0_diff_min']:+.2f} min ({row['t0_z']:+.2f} sigma), depth "
                f"{100 * row['depth_fit']:.3f}% vs {100 * row['depth_true']:.3f}% "
                f"({row['depth_z']:+.2f} sigma), scatter/noise {row['scatter_ratio']:.2f}"
                if row["ok"]
                else row["error"]
            )
            print(f"night {seed}: {status}", flush=True)
            summary = summarise(rows)
            result = {
                "description": __doc__.split("\n\n")[0],
                "settings": {
                    "frames": args.frames,
                    "size": args.size,
                    "night_hours": NIGHT_HOURS,
                    "seeds": [args.first, args.first + args.nights - 1],
                    "preset": "small-telescope, transit_shape limb-darkened",
                },
                "machine": {"python": platform.python_version(), "cpus": 2},
                "seconds": time.perf_counter() - started,
                "summary": summary,
                "nights": rows,
            }
            args.out.write_text(json.dumps(result, indent=1, default=_plain) + "\n")
    print_table(rows, summarise(rows))


def merge(paths: list[Path], out: Path) -> None:
    """One result file from several runs of this script (module docstring), by seed."""
    by_seed: dict[int, dict] = {}
    parts = []
    for path in paths:
        data = json.loads(path.read_text())
        parts.append({"file": path.name, "settings": data["settings"], "seconds": data["seconds"]})
        for row in data["nights"]:
            by_seed[int(row["seed"])] = {**row, "result_file": path.name}
    rows = [by_seed[k] for k in sorted(by_seed)]
    summary = summarise(rows)
    result = {
        "description": __doc__.split("\n\n")[0],
        "settings": {**parts[-1]["settings"], "seeds": [min(by_seed), max(by_seed)]},
        "merged_from": parts,
        "machine": {"python": platform.python_version(), "cpus": 2},
        "seconds": sum(p["seconds"] for p in parts),
        "summary": summary,
        "nights": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=_plain) + "\n")
    print_table(rows, summary)


def _plain(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    main()
