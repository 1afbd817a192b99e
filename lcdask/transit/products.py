"""A run's transit fit and its products (``RUN/transit/``), and what the report shows of it.

`fit_run_transit_full` fits the run's target (`lcdask.transit.fit.fit_transit`) with the per-frame
quantities of the run as detrending (airmass, FWHM and sky of each frame, the target's x and y),
the points flagged by the run (`TRANSIT_BAD`) left out, and the planet from the options or the
NASA Exoplanet Archive (`resolve_planet`, cached in the run's catalog cache). It writes:

==============================  ==============================================================
file                            content
==============================  ==============================================================
``posterior.ecsv``, ``.csv``    one row per parameter: posterior median, -1 sigma, +1 sigma,
                                free / fixed / derived, unit, why fixed or the prior
``points.ecsv``                 one row per frame: time, flux, errors, status (used, flagged,
                                clipped, missing), the run's flags, the model, the detrended
                                flux, the residual, the detrending quantities
``transit.png``                 the data with 10-minute bins and the model; the residuals
``AAVSO_<planet>_<date>.txt``   the AAVSO Exoplanet Database report, in the format EXOTIC
                                writes (`aavso_report`)
``transit.json``                the fit as plain data (`TransitFit.as_record`) with what was
                                fitted and the files
==============================  ==============================================================

`transit_figure` draws the figure from ``points.ecsv`` and ``transit.json``; `transit_section`
returns the numbers a report shows (None when the run has no fit), `plot_run_transit` draws the
figure of a run into a file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from lcdask.config import TransitConfig
from lcdask.transit.fit import fit_transit
from lcdask.transit.model import TRANSIT_BAD
from lcdask.transit.planet import resolve_planet
from lcdask.transit.results import TransitFit

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "TRANSIT_DIR",
    "aavso_filter",
    "aavso_report",
    "fit_run_transit_full",
    "plot_run_transit",
    "plot_transit",
    "posterior_table",
    "read_transit",
    "round_to_error",
    "transit_figure",
    "transit_section",
    "write_transit_products",
]

TRANSIT_DIR = "transit"
"""The folder of the products in the run directory."""

_AAVSO_FILTERS = {
    "u": "SU", "g": "SG", "r": "SR", "i": "SI", "z": "SZ",
    "B": "B", "V": "V", "R": "R", "I": "I",
}  # fmt: skip
"""Band names of lcdask to AAVSO filter codes (Sloan u' g' r' i' z', Johnson-Cousins B V R I);
anything else is reported as CV (clear, V-band zero point), as EXOTIC does."""


def aavso_filter(band: str) -> str:
    """The AAVSO filter code of a band ("z", "r (from the frames' filter 'r')" -> "SZ", "SR")."""
    head = band.split()[0] if band and band.split() else ""
    return _AAVSO_FILTERS.get(head, _AAVSO_FILTERS.get(head.lower(), "CV"))


def round_to_error(value: float, error: float | None = None) -> str:
    """``value`` as the AAVSO reports quote it: to the decimal of the second significant figure
    of ``error`` when that is below 1, else to two decimals; without an error, the value's own
    size decides the same way."""
    ref = value if error is None else error
    if ref is None or not math.isfinite(ref):
        return f"{value:.6g}"
    if ref == 0 or abs(ref) >= 1:
        return f"{value:.2f}"
    decimals = 1 - math.floor(math.log10(abs(ref)))
    return f"{value:.{decimals}f}"


def posterior_table(fit: TransitFit) -> pd.DataFrame:
    """One row per parameter, then the detrending coefficients (``detrend_`` + name)."""
    rows = []
    for source, prefix in ((fit.parameters, ""), (fit.detrend, "detrend_")):
        for est in source.values():
            rows.append(
                {
                    "parameter": prefix + est.name,
                    "value": est.value,
                    "minus": est.minus,
                    "plus": est.plus,
                    "status": est.status,
                    "unit": est.unit,
                    "note": est.note,
                }
            )
    return pd.DataFrame(rows)


def _pm(fit: TransitFit, name: str) -> str:
    est = fit.parameters[name]
    return f"{round_to_error(est.value, est.error)} +/- {round_to_error(est.error)}"


def aavso_report(
    fit: TransitFit,
    *,
    star_name: str,
    planet_name: str,
    filter_code: str,
    exposure_s: float,
    obscode: str = "",
    obstype: str = "CCD",
    binning: str = "na",
    obs_date: str = "",
    notes: str = "",
    comparison: Mapping[str, Any] | None = None,
    software: str = "",
) -> str:
    """The AAVSO Exoplanet Database report of a fit, in the format EXOTIC writes.

    The header keys of EXOTIC's AAVSO file (``#TYPE=EXOPLANET`` ... ``#RESULTS-XC``), then
    ``#DATE,DIFF,ERR,DETREND_1,DETREND_2`` and one row per fitted point: BJD_TDB (8 decimals),
    the relative flux, its error (7 decimals), the airmass and the fitted detrending function
    (``DIFF / DETREND_2`` is the detrended flux); missing values are ``na``. Quadratic limb
    darkening is quoted as u1, u2 (EXOTIC fits the four-coefficient law, u0-u3).

    Parameters
    ----------
    fit : TransitFit
    star_name, planet_name : str
    filter_code : str
        AAVSO filter code (`aavso_filter`).
    exposure_s : float
    obscode, obstype, binning, obs_date, notes : str, optional
        Header values (``obs_date`` YYYY-MM-DD).
    comparison : mapping, optional
        What ``#COMP_STAR-XC`` holds (JSON).
    software : str, optional
        ``#SOFTWARE`` (default "lcdask v<version>").

    Returns
    -------
    str
    """
    from lcdask.transit.model import q_to_u

    if not software:
        from importlib.metadata import PackageNotFoundError, version

        try:
            software = f"lcdask v{version('lcdask')}"
        except PackageNotFoundError:
            software = "lcdask"
    planet = fit.planet
    p = fit.parameters

    def prior(value, error):
        if value is None:
            return "na"
        if error is None:
            return f"{round_to_error(value)} +/- na"
        return f"{round_to_error(value, error)} +/- {round_to_error(error)}"

    u1, u2 = (p["u1"].value, p["u2"].value)
    if planet.u is not None:
        u1, u2 = planet.u
    elif p["q1"].status == "free":
        u1, u2 = (float(v) for v in q_to_u(0.5, 0.5))  # the uniform prior's centre
    ld_err = 0.0 if planet.u is not None and p["u1"].status == "fixed" else None
    priors = (
        f"Period={prior(planet.period_d, planet.period_err)}"
        f",Rp/R*={prior(planet.rp_rs, planet.rp_rs_err)}"
        f",a/R*={prior(planet.a_rs, planet.a_rs_err)}"
        f",inc={prior(planet.inc_deg, planet.inc_err)}"
        f",ecc={round_to_error(planet.ecc)}"
        f",u1={prior(u1, ld_err)},u2={prior(u2, ld_err)}"
    )
    priors_xc = {
        "Period": {"value": planet.period_d, "uncertainty": planet.period_err, "units": "days"},
        "Tc": {"value": planet.t0, "uncertainty": planet.t0_err, "units": "BJD_TDB"},
        "Rp/R*": {"value": planet.rp_rs, "uncertainty": planet.rp_rs_err},
        "a/R*": {"value": planet.a_rs, "uncertainty": planet.a_rs_err},
        "inc": {"value": planet.inc_deg, "uncertainty": planet.inc_err, "units": "degrees"},
        "ecc": {"value": planet.ecc, "uncertainty": None},
        "limb_darkening": {"law": "quadratic", "u1": u1, "u2": u2, "fitted": p["q1"].status},
        "source": planet.source,
    }
    labels = {"t0": "Tc", "rp_rs": "Rp/R*", "a_rs": "a/R*", "inc_deg": "inc", "depth": "Depth"}
    labels.update(b="b", t14_h="Duration_h", u1="u1", u2="u2")
    results = [f"{labels[k]}={_pm(fit, k)}" for k in labels if p[k].status != "fixed"]
    for name, est in fit.detrend.items():
        label = "Am1" if name == "norm" else f"DT_{name.upper()}"
        results.append(
            f"{label}={round_to_error(est.value, est.error)} +/- {round_to_error(est.error)}"
        )
    results_xc = {
        name: {
            "value": est.value,
            "uncertainty": est.error,
            "minus": est.minus,
            "plus": est.plus,
            "status": est.status,
            **({"units": est.unit} if est.unit else {}),
        }
        for name, est in p.items()
    }
    results_xc["Duration"] = {
        "value": p["t14_h"].value / 24.0, "uncertainty": p["t14_h"].error / 24.0, "units": "days",
    }  # fmt: skip
    coefficients = {n: {"value": e.value, "uncertainty": e.error} for n, e in fit.detrend.items()}
    results_xc["detrend"] = {
        "model": "flux = transit * exp(sum c_k z_k), z_k standardised over the fitted points",
        "terms": list(fit.detrend_terms),
        "coefficients": coefficients,
    }
    terms = ", ".join(fit.detrend_terms) or "none"
    fixed = ", ".join(k for k in ("rp_rs", "a_rs", "inc_deg", "u1") if p[k].status == "fixed")
    note = (
        f"{notes + ' ' if notes else ''}lcdask transit fit: quadratic limb darkening (batman) "
        f"times exp(linear detrending in: {terms}); correlated noise modelled; "
        f"{fit.coverage.describe()}; fixed to the priors: {fixed or 'none'}; "
        f"DETREND_2 is the fitted detrending function"
    )
    lines = [
        "#TYPE=EXOPLANET",
        f"#OBSCODE={obscode}",
        "#SECONDARY_OBSCODES=",
        f"#SOFTWARE={software}",
        "#DELIM=,",
        "#DATE_TYPE=BJD_TDB",
        f"#OBSDATE={obs_date}",
        f"#OBSTYPE={obstype}",
        f"#STAR_NAME={star_name}",
        f"#EXOPLANET_NAME={planet_name}",
        f"#BINNING={binning}",
        f"#EXPOSURE_TIME={exposure_s:g}",
        f"#COMP_STAR-XC={json.dumps(dict(comparison or {}))}",
        f"#NOTES={note}",
        "#DETREND_PARAMETERS=AIRMASS, DETREND FUNCTION",
        "#MEASUREMENT_TYPE=Rnflux",
        f"#FILTER={filter_code}",
        f"#PRIORS={priors}",
        f"#PRIORS-XC={json.dumps(priors_xc)}",
        f"#RESULTS={','.join(results)}",
        f"#RESULTS-XC={json.dumps(results_xc)}",
        "#DATE,DIFF,ERR,DETREND_1,DETREND_2",
    ]
    pts = fit.points[fit.points["status"] == "used"]
    airmass = pts["airmass"] if "airmass" in pts else pd.Series(np.nan, index=pts.index)

    def cell(value: float, decimals: int) -> str:
        return f"{value:.{decimals}f}" if np.isfinite(value) else "na"

    for t, f, e, am, det in zip(
        pts["time"], pts["flux"], pts["flux_err"], airmass, pts["systematics"], strict=True
    ):
        lines.append(f"{cell(t, 8)},{cell(f, 7)},{cell(e, 7)},{cell(am, 7)},{cell(det, 7)}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# the run


def _run_catalog_cache(run_dir: Path, record: Mapping[str, Any]) -> Path:
    configured = record.get("config", {}).get("catalog", {}).get("cache_dir", "")
    return Path(configured) if configured else run_dir / "catalog-cache"


def _host_of(planet_name: str) -> str:
    """ "XO-1 b" -> "XO-1" (a planet's name is its star's and a letter)."""
    head, _, letter = planet_name.rpartition(" ")
    return head if head and len(letter) == 1 and letter.isalpha() else ""


def _safe(name: str) -> str:
    return (
        "".join(c if c.isalnum() or c in "-_." else "" for c in name.replace(" ", "")) or "planet"
    )


def fit_run_transit_full(
    run_dir: str | Path,
    *,
    options: TransitConfig = TransitConfig(),
    timeout_s: float = 30.0,
) -> tuple[TransitFit, dict[str, Any]]:
    """Fit the transit of a run's target and write ``RUN/transit/`` (module docstring).

    Parameters
    ----------
    run_dir : str or Path
        A run directory whose target was found (``lcdask run --target``).
    options : TransitConfig, optional
        The planet (name and/or values), the detrending, the chain (``[transit]``).
    timeout_s : float, optional
        Socket timeout of the archive's requests.

    Returns
    -------
    fit : TransitFit
    record : dict
        What ``transit.json`` holds.

    Raises
    ------
    LcdaskError
        When the run has no target or no BJD_TDB, or the planet is unknown or incomplete
        (`PlanetError`).
    """
    from lcdask.errors import LcdaskError
    from lcdask.export import read_run

    run_dir = Path(run_dir)
    run = read_run(run_dir)
    run_record = json.loads((run_dir / "run.json").read_text())
    target = run.sources[run.sources["is_target"].to_numpy(bool)]
    if target.empty:
        raise LcdaskError(f'{run_dir}: the run has no target (lcdask run --target "RA DEC")')
    sid = int(target["source_id"].iloc[0])
    ds = run.lightcurves
    one = ds.isel(source=int(np.flatnonzero(ds["source_id"].to_numpy() == sid)[0])).load()
    frames = run.frames.set_index("frame")
    frame_ids = one["frame"].to_numpy()
    bjd = frames["bjd_tdb"].reindex(frame_ids).to_numpy(float) if "bjd_tdb" in frames else None
    if bjd is None or not np.isfinite(bjd).any():
        raise LcdaskError(
            f"{run_dir}: the frames have no BJD_TDB (the site or the target's position is "
            "missing from the headers)"
        )
    regressors = {
        "airmass": frames["airmass"].reindex(frame_ids).to_numpy(float),
        "fwhm": frames["fwhm_px"].reindex(frame_ids).to_numpy(float),
        "sky": frames["sky"].reindex(frame_ids).to_numpy(float),
        "x": np.asarray(one["x"], float),
        "y": np.asarray(one["y"], float),
    }
    regressors = {k: v for k, v in regressors.items() if np.isfinite(v).any()}
    flags = one["flags"].to_numpy().astype(np.int64)
    flagged = (flags & int(TRANSIT_BAD)) != 0
    planet = resolve_planet(
        options, cache_dir=_run_catalog_cache(run_dir, run_record), timeout_s=timeout_s
    )
    fit = fit_transit(
        bjd,
        np.asarray(one["rel_flux"], float),
        np.asarray(one["rel_flux_err"], float),
        planet=planet,
        regressors=regressors,
        flagged=flagged,
        options=options,
    )

    planet_name = planet.name or options.planet or "planet"
    given_target = run_record.get("target", {}).get("given", "")
    exptime = frames["exptime_s"].reindex(frame_ids) if "exptime_s" in frames else None
    is_comparison = run.sources["is_comparison"].to_numpy(bool)
    record = write_transit_products(
        fit,
        run_dir / TRANSIT_DIR,
        planet_name=planet_name,
        star_name=planet.host or _host_of(planet.name) or given_target,
        band=str(run_record.get("stages", {}).get("level2", {}).get("band", "")),
        exposure_s=float(np.nanmedian(exptime)) if exptime is not None else float("nan"),
        extra_columns={"frame": frame_ids, "flags": flags},
        comparison={
            "comparison_ids": [int(i) for i in run.sources.loc[is_comparison, "source_id"]],
            "target_source_id": sid,
        },
        options=options,
    )
    return fit, record


def write_transit_products(
    fit: TransitFit,
    out: str | Path,
    *,
    planet_name: str,
    star_name: str,
    band: str = "",
    exposure_s: float = float("nan"),
    extra_columns: Mapping[str, Any] | None = None,
    comparison: Mapping[str, Any] | None = None,
    options: TransitConfig = TransitConfig(),
) -> dict[str, Any]:
    """Write a fit's products into the folder ``out`` (module docstring's table).

    Parameters
    ----------
    fit : TransitFit
    out : str or Path
        The folder (``RUN/transit``), made if needed.
    planet_name, star_name : str
    band : str, optional
        The frames' band (its first word gives the AAVSO filter code).
    exposure_s : float, optional
    extra_columns : mapping, optional
        Per-point columns added to ``points.ecsv`` (the run's frame numbers and flags).
    comparison : mapping, optional
        The AAVSO report's ``#COMP_STAR-XC``.
    options : TransitConfig, optional
        Recorded in ``transit.json``; ``obscode`` goes into the AAVSO report.

    Returns
    -------
    dict
        What ``transit.json`` holds.
    """
    from dataclasses import asdict

    from lcdask.io.atomic import atomic_path, write_json_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    finite = fit.points["time"].to_numpy(float)
    obs_date = _bjd_date(float(np.nanmin(finite)))
    files = {
        "posterior_ecsv": "posterior.ecsv",
        "posterior_csv": "posterior.csv",
        "points": "points.ecsv",
        "figure": "transit.png",
        "aavso": f"AAVSO_{_safe(planet_name)}_{obs_date}.txt",
    }
    table = posterior_table(fit)
    _write_ecsv(table, out / files["posterior_ecsv"])
    with atomic_path(out / files["posterior_csv"]) as tmp:
        table.to_csv(tmp, index=False)
    points = fit.points.copy()
    for position, (name, values) in enumerate((extra_columns or {}).items()):
        points.insert(position, name, np.asarray(values))
    _write_ecsv(points, out / files["points"])
    text = aavso_report(
        fit,
        star_name=star_name,
        planet_name=planet_name,
        filter_code=aavso_filter(band),
        exposure_s=exposure_s,
        obscode=options.obscode,
        obs_date=obs_date,
        comparison=comparison,
    )
    with atomic_path(out / files["aavso"]) as tmp:
        tmp.write_text(text)
    record = {
        **fit.as_record(),
        "star_name": star_name,
        "planet_name": planet_name,
        "band": band,
        "exposure_s": exposure_s if np.isfinite(exposure_s) else None,
        "obs_date": obs_date,
        "comparison": dict(comparison or {}),
        "options": asdict(options),
        "files": files,
        "fitted_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json_atomic(out / "transit.json", record)
    plot_transit(points, record, out / files["figure"])
    return record


def _bjd_date(bjd: float) -> str:
    """The UTC calendar date (YYYY-MM-DD) of a BJD (to the minute: the barycentric correction
    is at most 8 minutes)."""
    from astropy.time import Time

    return Time(bjd, format="jd", scale="tdb").utc.strftime("%Y-%m-%d")


def _write_ecsv(table: pd.DataFrame, path: Path) -> None:
    from astropy.table import Table

    from lcdask.io.atomic import atomic_path

    converted = table.copy()
    for column in converted.columns:
        if converted[column].dtype == object:
            converted[column] = converted[column].astype(str)
    with atomic_path(path) as tmp:
        Table.from_pandas(converted).write(tmp, format="ascii.ecsv", overwrite=True)


# --------------------------------------------------------------------------------------------
# what the report shows


def read_transit(run_dir: str | Path) -> tuple[pd.DataFrame, dict[str, Any]] | None:
    """The points table and the record of a run's transit fit; None when there is none."""
    out = Path(run_dir) / TRANSIT_DIR
    if not (out / "transit.json").is_file():
        return None
    record = json.loads((out / "transit.json").read_text())
    from astropy.table import Table

    points = Table.read(out / record["files"]["points"], format="ascii.ecsv").to_pandas()
    return points, record


def transit_section(run_dir: str | Path) -> dict[str, Any] | None:
    """The numbers a report's transit section shows; None when the run has no fit.

    Returns
    -------
    dict or None
        ``planet``, ``parameters`` (name -> value, minus, plus, status, unit, note), the
        detrending terms and coefficients, O-C, the coverage, the fixed parameters and why,
        the residual scatter per frame and per 10 minutes (with white noise's), the noise
        model, the points (used, flagged, clipped), the chain, notes, and the files.
    """
    found = read_transit(run_dir)
    if found is None:
        return None
    _, record = found
    keys = (
        "planet_name", "star_name", "band", "obs_date", "parameters", "detrend",
        "detrend_terms", "fixed", "coverage", "epoch", "t_predicted", "t_predicted_err",
        "rms", "rms_10min", "rms_10min_white", "noise", "beta", "n_points", "n_flagged",
        "n_clipped", "n_missing", "chain", "notes", "files",
    )  # fmt: skip
    section = {k: record.get(k) for k in keys}
    section["files"] = {k: f"{TRANSIT_DIR}/{v}" for k, v in record.get("files", {}).items()}
    return section


def transit_figure(points: pd.DataFrame, record: Mapping[str, Any]) -> Figure:
    """The data detrended with 10-minute bins and the transit model; the residuals below.

    Points left out are drawn as crosses: flagged by the run (orange) or clipped (red).
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    t0 = float(record["parameters"]["t0"]["value"])
    hours = 24.0 * (points["time"].to_numpy(float) - t0)
    detrended = points["detrended"].to_numpy(float)
    residual = points["residual"].to_numpy(float) / points["systematics"].to_numpy(float)
    status = points["status"].astype(str).to_numpy()
    used = status == "used"
    err = points["flux_err"].to_numpy(float) / points["systematics"].to_numpy(float)
    top.errorbar(
        hours[used], detrended[used], err[used], fmt=".", color="0.6", ms=3, lw=0.5,
        label="data (detrended)",
    )  # fmt: skip
    bottom.plot(hours[used], residual[used], ".", color="0.6", ms=3)
    for kind, colour in (("flagged", "tab:orange"), ("clipped", "tab:red")):
        sel = status == kind
        if sel.any():
            top.plot(hours[sel], detrended[sel], "x", color=colour, label=f"{kind} ({sel.sum()})")
            bottom.plot(hours[sel], residual[sel], "x", color=colour)
    t_days = points["time"].to_numpy(float)
    for values, axis in ((detrended, top), (residual, bottom)):
        centres, means, errors = _bins(t_days[used], values[used], minutes=10.0)
        axis.errorbar(
            24.0 * (centres - t0), means, errors, fmt="o", color="tab:blue", ms=4,
            label="10-minute bins" if axis is top else None,
        )  # fmt: skip
    order = np.argsort(hours)
    transit = points["transit"].to_numpy(float)
    top.plot(hours[order], transit[order], "-", color="k", lw=1.2, label="transit model")
    bottom.axhline(0.0, color="k", lw=1)
    p = record["parameters"]
    title = (
        f"{record.get('planet_name', '')}  Tc = {p['t0']['value']:.5f} "
        f"+/- {0.5 * (p['t0']['minus'] + p['t0']['plus']):.5f} BJD_TDB, "
        f"Rp/Rs = {p['rp_rs']['value']:.4f}"
        + (" (fixed)" if p["rp_rs"]["status"] == "fixed" else "")
    )
    top.set_title(title, fontsize=10)
    top.set_ylabel("relative flux / detrending")
    bottom.set_ylabel("residual")
    bottom.set_xlabel("hours from mid-transit")
    rms = record.get("rms")
    if rms:
        bottom.text(
            0.01, 0.95, f"rms {100 * rms:.2f}% per point", transform=bottom.transAxes,
            va="top", fontsize=8,
        )  # fmt: skip
    top.legend(fontsize=8, loc="lower left")
    return fig


def _bins(t: np.ndarray, values: np.ndarray, *, minutes: float):
    if t.size == 0:
        return np.array([]), np.array([]), np.array([])
    index = np.floor((t - t.min()) * 1440.0 / minutes).astype(int)
    centres, means, errors = [], [], []
    for k in np.unique(index):
        sel = index == k
        if sel.sum() >= 2:
            centres.append(t[sel].mean())
            means.append(values[sel].mean())
            errors.append(values[sel].std(ddof=1) / math.sqrt(sel.sum()))
    return np.array(centres), np.array(means), np.array(errors)


def plot_transit(points: pd.DataFrame, record: Mapping[str, Any], path: str | Path) -> Path:
    """Write `transit_figure` as a PNG; returns the path."""
    from lcdask.io.atomic import atomic_path

    path = Path(path)
    fig = transit_figure(points, record)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def plot_run_transit(run_dir: str | Path, path: str | Path) -> Path | None:
    """Draw a run's transit figure into ``path`` (None when the run has no fit)."""
    found = read_transit(run_dir)
    if found is None:
        return None
    return plot_transit(*found, path)
