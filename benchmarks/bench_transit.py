"""Benchmark: a transit fit with errors of 200 points on one core (goal: under 60 s).

Simulated nights (`lcdask.transit.simulate.simulated_transit_night`, 200 points of 60-120 s:
a batman transit with extinction, drift over a flat, seeing and red noise) fitted by
`lcdask.transit.fit_transit` with the default options (32 walkers, the chain run until it is 50
autocorrelation times long and the estimate stable to 5%, at most 20000 steps): the detrending
selection, least squares, the noise model and emcee, all of it timed. The process is pinned
to one core and BLAS to one thread.

Usage::

    python benchmarks/bench_transit.py [--seeds 0 1 2] [--points 200]

Writes ``benchmarks/results/transit.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--points", type=int, default=200)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    from lcdask.config import TransitConfig
    from lcdask.transit import fit_transit
    from lcdask.transit.simulate import simulated_transit_night

    options = TransitConfig()
    rows = []
    for seed in args.seeds:
        night = simulated_transit_night(seed, n_points=args.points)
        truth = night.truth
        given = replace(truth, t0=truth.t0 + 0.004, t0_err=0.01, rp_rs=truth.rp_rs * 1.1)
        start = time.perf_counter()
        fit = fit_transit(
            night.time, night.flux, night.flux_err, planet=given,
            regressors=night.regressors, options=options,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        p = fit.parameters
        row = {
            "seed": seed,
            "coverage": night.coverage,
            "n_points": int(night.time.size),
            "seconds": seconds,
            "free": [k for k, v in p.items() if v.status == "free"],
            "detrend_terms": list(fit.detrend_terms),
            "walkers": fit.chain.walkers,
            "steps": fit.chain.steps,
            "tau_max": max(fit.chain.tau.values()),
            "converged": fit.chain.converged,
            "t0_err_min": 1440 * fit.t0_err,
            "t0_pull": (fit.t0 - truth.t0) / fit.t0_err,
            "depth": p["depth"].value,
            "depth_err": p["depth"].error,
            "depth_true": night.depth,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {"machine": platform.machine(), "cores": 1, "options": "defaults", "fits": rows}
    out = HERE / "results" / "transit.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print("seed coverage  points  free                       steps  tau  conv  t0 err   seconds")
    for r in rows:
        free = ",".join(r["free"])
        print(
            f"{r['seed']:4d} {r['coverage']:8s} {r['n_points']:6d}  {free:26s} {r['steps']:6d} "
            f"{r['tau_max']:4.0f}  {'yes' if r['converged'] else 'no':4s} "
            f"{r['t0_err_min']:5.2f} min {r['seconds']:7.1f}"
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
