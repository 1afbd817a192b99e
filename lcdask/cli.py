"""The ``lcdask`` command line: it parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from lcdask.errors import LcdaskError

log = logging.getLogger("lcdask")


class _StderrHandler(logging.StreamHandler):
    """Writes each record to the current ``sys.stderr`` (which tests and notebooks replace)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(quiet: bool) -> None:
    """One line per message, ``lcdask: ...``, on stderr; quiet leaves warnings and errors."""
    for handler in [h for h in log.handlers if isinstance(h, _StderrHandler)]:
        log.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("lcdask: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    for noisy in ("distributed", "bokeh", "tornado"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _cluster_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--scheduler", help="address of a running Dask scheduler (tcp://host:port)")
    group.add_argument("--workers", type=int, help="worker processes of the local cluster")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcdask", description="Raw CCD frames to calibrated light curves, on Dask."
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="simulate a night of raw frames with its truth")
    p.add_argument("out", type=Path, help="folder to write raw/, refcat.parquet and truth/ to")
    p.add_argument("--frames", type=int, default=50, help="number of light frames")
    p.add_argument("--size", type=int, default=1024, help="frame size in pixels (square)")
    p.add_argument("--seed", type=int, default=1, help="random seed")
    p.add_argument("--jobs", type=int, default=None, help="processes (default: all cores)")
    p.add_argument(
        "--preset",
        choices=("standard", "small-telescope"),
        default="standard",
        help="standard: a calibrated-night set with a header WCS; small-telescope: no "
        'calibration frames, no IMAGETYP, no WCS, ~5"/px, the real Tycho-2 sky (blind-solvable)',
    )

    p = sub.add_parser("ingest", help="read raw FITS frames into RUN/cube.zarr")
    p.add_argument("frames", nargs="+", help="folders, globs, FITS files or list files")
    p.add_argument("--out", type=Path, required=True, help="the run directory")
    p.add_argument(
        "--utc-offset", type=float, default=None, help="hours local time is ahead of UTC"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing cube")
    _cluster_args(p)

    p = sub.add_parser("run", help="run every stage on raw frames and write every product")
    p.add_argument("frames", nargs="+", help="folders, globs, FITS files or list files")
    p.add_argument("--out", type=Path, required=True, help="the run directory")
    p.add_argument("--config", type=Path, default=None, help="a TOML configuration file")
    p.add_argument("--catalog", type=Path, default=None, help="a reference catalog file")
    p.add_argument(
        "--target",
        default=None,
        help='the target: "RA DEC" in degrees or sexagesimal, or a name SIMBAD knows (cached)',
    )
    p.add_argument("--cluster", choices=("local", "slurm", "pbs"), default=None)
    _cluster_args(p)

    p = sub.add_parser("report", help="write RUN/report.html and RUN/plots/ from a run's products")
    p.add_argument("run", type=Path)
    # without either, in this process (a cluster takes longer to start than the report)
    _cluster_args(p)

    p = sub.add_parser("export", help="export light curves as CSV, ECSV or FITS")
    p.add_argument("run", type=Path)
    p.add_argument("--out", type=Path, required=True, help="a file, or a folder")
    p.add_argument("--format", choices=("csv", "ecsv", "fits"), default="csv")
    p.add_argument(
        "--sources",
        default="all",
        help="all, target, comparison, stable, variable, moving, or source ids (comma-separated)",
    )
    p.add_argument("--per-source", action="store_true", help="one file per source")

    p = sub.add_parser(
        "transit",
        help="fit the target's transit with its detrending and errors (RUN/transit/)",
        description=(
            "Fit the target's transit: a limb-darkened model times a detrending, least squares "
            "then emcee; writes RUN/transit/ (posterior table, points, figure, AAVSO report, "
            "JSON). The planet comes from --planet (NASA Exoplanet Archive, cached), the "
            "[transit] section of --config, or the options below, which win one by one."
        ),
    )
    p.add_argument("run", type=Path)
    p.add_argument("--planet", help="planet name in the NASA Exoplanet Archive, e.g. 'XO-1 b'")
    p.add_argument("--config", type=Path, help="a TOML file with a [transit] section")
    p.add_argument("--t0", type=float, help="a reference mid-transit time, BJD_TDB")
    p.add_argument("--t0-err", type=float, help="its error, days")
    p.add_argument("--period", type=float, help="orbital period, days")
    p.add_argument("--period-err", type=float, help="its error, days")
    p.add_argument("--rp-rs", type=float, help="radius ratio Rp/Rs")
    p.add_argument("--a-rs", type=float, help="semi-major axis a/Rs")
    p.add_argument("--inc", type=float, help="inclination, degrees")
    p.add_argument(
        "--u", type=float, nargs=2, metavar=("U1", "U2"),
        help="quadratic limb darkening in the frames' band (else fitted)",
    )  # fmt: skip
    p.add_argument("--fit-ld", action="store_true", help="fit the limb darkening even if given")
    p.add_argument("--detrend", help="auto, bic, none, or terms: airmass,x,y,fwhm,sky,time,time2")
    p.add_argument("--clip-sigma", type=float, help="robust clip of the residuals (sigma)")
    p.add_argument("--walkers", type=int, help="emcee walkers")
    p.add_argument("--max-steps", type=int, help="longest chain")
    p.add_argument("--min-steps", type=int, help="shortest chain")
    p.add_argument("--seed", type=int, help="the sampler's seed")
    p.add_argument("--obscode", help="AAVSO observer code for the report")
    p.add_argument("--offline", action="store_true", help="never reach the archive")
    p.add_argument(
        "--time-only", action="store_true",
        help="the earlier fit: mid-time only, shape fixed, prayer-bead errors (RUN/transit.json)",
    )  # fmt: skip
    p.add_argument("--baseline-order", type=int, default=1, help="--time-only: polynomial order")
    p.add_argument("--airmass", action="store_true", help="--time-only: an airmass term")

    sub.add_parser("config", help="print the default configuration as a commented TOML file")

    p = sub.add_parser("info", help="summarise a run directory or a cube")
    p.add_argument("run", type=Path)

    p = sub.add_parser("demo", help="simulate a night and run lcdask on it")
    p.add_argument("--out", type=Path, default=Path("demo-run"), help="where to put it all")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--seed", type=int, default=1)
    _cluster_args(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _build_parser().parse_args(argv)
    _setup_logging(args.quiet)
    try:
        return _COMMANDS[args.command](args)
    except (LcdaskError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"lcdask {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # read-only output, no space left, file too large...
        print(
            f"lcdask {args.command}: error: cannot write the products: {exc}; what is complete "
            "is kept, and the same command resumes once the cause is fixed",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"lcdask {args.command}: interrupted", file=sys.stderr)
        return 130


def _simulate(args: argparse.Namespace) -> int:
    from lcdask.simulate import preset_config, simulate_night

    cfg = preset_config(args.preset, n_frames=args.frames, size=args.size, seed=args.seed)
    night = simulate_night(args.out, cfg, n_workers=args.jobs or os.cpu_count() or 1)
    what = "" if args.preset == "standard" else f" ({args.preset}, {night.config.sky_catalog} sky)"
    print(f"simulated {args.frames} frames of {args.size}x{args.size}{what} in {args.out}")
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from lcdask.cluster import dask_client
    from lcdask.stages.ingest import ingest

    with dask_client(scheduler=args.scheduler, n_workers=args.workers) as client:
        result = ingest(
            args.frames,
            args.out,
            client=client,
            utc_offset_h=args.utc_offset,
            overwrite=args.overwrite,
        )
    print(_summary(result.cube_path))
    return 0


def _run_config(args: argparse.Namespace):
    from lcdask.config import load_config

    cluster = {"workers": args.workers}
    if args.scheduler:
        cluster |= {"kind": "scheduler", "scheduler": args.scheduler}
    elif getattr(args, "cluster", None):
        cluster["kind"] = args.cluster
    return load_config(getattr(args, "config", None), cluster=cluster)


def _run(args: argparse.Namespace) -> int:
    from lcdask.cluster import client_from_config
    from lcdask.run import run

    config = _run_config(args)
    with client_from_config(config.cluster) as client:
        record = run(
            args.frames,
            args.out,
            config=config,
            catalog=args.catalog,
            target=args.target,
            client=client,
        )
    print(_run_summary(args.out, record))
    return 0


def _run_summary(out: Path, record: dict) -> str:
    stages = record["stages"]
    lines = [f"run {out}: " + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in stages.items())]
    if "lightcurves" in stages:
        kinds = stages["lightcurves"]["kinds"]
        lines.append(
            f"  {stages['lightcurves']['n_sources']} sources: "
            + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        )
    lines.append(
        f"  {len(record['skipped'])} files skipped, {len(record['flagged'])} frames flagged"
    )
    report = Path(out) / "report.html"
    lines.append(f"report: {report}" if report.exists() else f"products in {out}")
    return "\n".join(lines)


def _report(args: argparse.Namespace) -> int:
    from lcdask.report import write_run_report

    if args.scheduler is None and args.workers is None:
        page, _ = write_run_report(args.run)
    else:
        from lcdask.cluster import dask_client

        with dask_client(scheduler=args.scheduler, n_workers=args.workers) as client:
            page, _ = write_run_report(args.run, client=client)
    print(f"report: {page}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from lcdask.export import export_lightcurves

    which = args.sources
    if which.replace(",", "").isdigit():
        which = [int(v) for v in which.split(",")]
    paths = export_lightcurves(
        args.run, args.out, fmt=args.format, sources=which, per_source=args.per_source
    )
    print(f"wrote {len(paths)} file(s): {paths[0] if len(paths) == 1 else args.out}")
    return 0


def _transit_options(args: argparse.Namespace):
    from lcdask.config import load_config

    given = {
        "planet": args.planet,
        "t0": args.t0,
        "t0_err": args.t0_err,
        "period_d": args.period,
        "period_err": args.period_err,
        "rp_rs": args.rp_rs,
        "a_rs": args.a_rs,
        "inc_deg": args.inc,
        "u1": args.u[0] if args.u else None,
        "u2": args.u[1] if args.u else None,
        "fit_limb_darkening": True if args.fit_ld else None,
        "detrend": args.detrend,
        "clip_sigma": args.clip_sigma,
        "walkers": args.walkers,
        "max_steps": args.max_steps,
        "min_steps": args.min_steps,
        "seed": args.seed,
        "obscode": args.obscode,
        "offline": True if args.offline else None,
    }
    return load_config(args.config, transit=given).transit


def _transit(args: argparse.Namespace) -> int:
    if args.time_only:
        return _transit_time_only(args)
    from lcdask.transit import fit_run_transit_full

    fit, record = fit_run_transit_full(args.run, options=_transit_options(args))
    p = fit.parameters
    t0, oc = p["t0"], p["o_minus_c_min"]
    print(
        f"{record['planet_name']}: mid-transit {t0.value:.5f} -{t0.minus:.5f} +{t0.plus:.5f} "
        f"BJD_TDB (O-C {oc.value:+.2f} +- {oc.error:.2f} min); "
        f"Rp/Rs {p['rp_rs'].value:.4f}"
        + (" (fixed)" if p["rp_rs"].status == "fixed" else f" +- {p['rp_rs'].error:.4f}")
        + f", depth {100 * p['depth'].value:.3f}%"
    )
    print(
        f"{fit.coverage.describe()}; detrending: {', '.join(fit.detrend_terms) or 'none'}; "
        f"{fit.n_points} points, {fit.n_flagged} flagged, {fit.n_clipped} clipped; "
        f"rms {100 * fit.rms:.2f}% per point"
    )
    for name, why in fit.fixed.items():
        if name in ("a_rs", "rp_rs", "q1"):
            print(f"fixed {name}: {why}")
    for note in fit.notes:
        print(f"note: {note}")
    print(f"written: {args.run / 'transit'}/ ({', '.join(record['files'].values())})")
    return 0


def _transit_time_only(args: argparse.Namespace) -> int:
    from lcdask.transit import TransitShape, fit_run_transit

    missing = [
        flag
        for flag, value in (
            ("--t0", args.t0), ("--period", args.period), ("--rp-rs", args.rp_rs),
            ("--a-rs", args.a_rs), ("--inc", args.inc), ("--u", args.u),
        )
        if value is None
    ]  # fmt: skip
    if missing:
        raise LcdaskError(f"lcdask transit --time-only needs {' '.join(missing)}")
    shape = TransitShape(
        period_d=args.period,
        rp_rs=args.rp_rs,
        a_rs=args.a_rs,
        inc_deg=args.inc,
        u=(args.u[0], args.u[1]),
    )
    fit, record = fit_run_transit(
        args.run,
        t0_guess=args.t0,
        shape=shape,
        baseline_order=args.baseline_order,
        use_airmass=args.airmass,
    )
    print(
        f"mid-transit {fit.t0:.5f} +- {fit.t0_err:.5f} BJD_TDB "
        f"(O-C {record['o_minus_c_min']:+.2f} min, {record['o_minus_c_sigma']:+.1f} sigma); "
        f"{fit.n_points} points, {fit.n_clipped} clipped, {record['n_flagged']} flagged, "
        f"rms {100 * fit.rms:.2f}% per point"
    )
    print(f"written: {args.run / 'transit.json'}")
    return 0


def _config(args: argparse.Namespace) -> int:
    from lcdask.config import default_toml

    print(default_toml(), end="")
    return 0


def _info(args: argparse.Namespace) -> int:
    print(_summary(args.run))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from lcdask.cluster import client_from_config
    from lcdask.run import run
    from lcdask.simulate import SimConfig, load_truth, simulate_night

    night = args.out / "night"
    if not (night / "truth" / "frames.parquet").exists():
        log.info("simulating %d frames of %dx%d in %s", args.frames, args.size, args.size, night)
        cfg = SimConfig(n_frames=args.frames, size=args.size, seed=args.seed)
        simulate_night(night, cfg, n_workers=os.cpu_count() or 1)
    stars = load_truth(night).stars
    target = stars[stars["is_target"]].iloc[0]
    config = _run_config(args)
    with client_from_config(config.cluster) as client:
        record = run(
            night / "raw",
            args.out / "run",
            config=config,
            catalog=night / "refcat.parquet",
            target=f"{target['ra']:.6f} {target['dec']:.6f}",
            client=client,
        )
    print(_run_summary(args.out / "run", record))
    return 0


def _summary(path: Path) -> str:
    """A few lines describing a cube: frames per type, shape, times, filters, flags."""
    import numpy as np

    from lcdask.io.cube import open_cube

    cube = open_cube(path)
    kinds = cube["frame_type"].to_series().value_counts()
    lights = cube.where(cube["frame_type"] == "light", drop=True) if "light" in kinds else cube
    t = lights["time_mjd"].to_numpy()
    lines = [
        f"cube {Path(path)}: {cube.sizes['frame']} frames of {cube.sizes['y']}x{cube.sizes['x']}"
        f" ({cube['raw'].dtype})",
        "  " + ", ".join(f"{n} {k}" for k, n in kinds.items()),
        f"  lights from MJD {np.nanmin(t):.5f} to {np.nanmax(t):.5f}"
        f" ({(np.nanmax(t) - np.nanmin(t)) * 24:.2f} h),"
        f" filters {sorted(set(lights['filter'].to_numpy().tolist()))},"
        f" exposures {sorted(set(np.round(lights['exptime_s'].to_numpy(), 3).tolist()))} s",
    ]
    n_flagged = int((cube["flags"] != 0).sum())
    n_skipped = len(json.loads(cube.attrs.get("skipped", "[]")))
    lines.append(f"  {n_flagged} frames flagged, {n_skipped} files skipped")
    return "\n".join(lines)


_COMMANDS = {
    "simulate": _simulate,
    "ingest": _ingest,
    "run": _run,
    "report": _report,
    "export": _export,
    "transit": _transit,
    "config": _config,
    "info": _info,
    "demo": _demo,
}

if __name__ == "__main__":
    sys.exit(main())
