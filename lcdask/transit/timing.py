"""A transit's mid-time with its shape fixed: a limb-darkened model times a baseline, fitted.

(The first transit fit of lcdask, kept for its prayer-bead errors; `lcdask.transit.fit` fits
the shape and the detrending too, with a sampler.)

The night of a small telescope often covers only part of a transit (the XO-1 b night in
``../shared/data`` starts after ingress and ends before egress): its depth and shape cannot be
measured from it, but its time can, against the shape the literature gives. `fit_transit_time`
fits the mid-transit time of a quadratically limb-darkened transit (Mandel & Agol 2002, through
the ``batman`` package of Kreidberg 2015) whose radius ratio, scaled semi-major axis,
inclination, period and limb darkening are fixed, times a low-order polynomial baseline in time
(and optionally airmass) that absorbs the comparison stars' colour and the sky's drift.

Errors: the least-squares covariance scaled by the reduced chi-square (white noise), and the
"prayer bead" residual-permutation spread (correlated noise: the residuals cyclically shifted
and added back to the model, refitted for every shift); the larger of the two is given, as
EXOTIC and AstroImageJ users expect.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import least_squares

from lcdask.transit.model import TRANSIT_BAD, TransitShape, transit_model

__all__ = ["TransitTimeFit", "fit_run_transit", "fit_transit_time"]


@dataclass(frozen=True)
class TransitTimeFit:
    """The fitted mid-transit time.

    Attributes
    ----------
    t0 : float
        Mid-transit time (the input times' scale, e.g. BJD_TDB).
    t0_err : float
        Its error (days): the larger of ``t0_err_white`` and ``t0_err_red``.
    t0_err_white : float
        From the least-squares covariance scaled by the reduced chi-square.
    t0_err_red : float
        The prayer-bead spread (standard deviation of the refitted times).
    baseline : tuple of float
        The baseline's coefficients (polynomial in days from the series' middle, then airmass).
    rms : float
        Residual scatter per point (relative flux).
    chi2_red : float
        Reduced chi-square with the given errors.
    n_points : int
        Points fitted (after the clip).
    n_clipped : int
        Points left out by the 5-sigma clip of the residuals.
    """

    t0: float
    t0_err: float
    t0_err_white: float
    t0_err_red: float
    baseline: tuple[float, ...]
    rms: float
    chi2_red: float
    n_points: int
    n_clipped: int

    def as_record(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


def _design(time: np.ndarray, airmass: np.ndarray | None, order: int, t_mid: float) -> np.ndarray:
    """The baseline's columns: powers of the days from ``t_mid``, then airmass - 1."""
    dt = time - t_mid
    columns = [dt**k for k in range(order + 1)]
    if airmass is not None:
        columns.append(airmass - 1.0)
    return np.column_stack(columns)


def _fit(time, flux, err, design, t0_guess, shape, window_d):
    """Least squares of (mid-time offset from ``t0_guess``, baseline); the offset's ``x[0]``.

    The offset, not the time itself, is the parameter: finite-difference steps are relative to
    a parameter's value, and a relative step at 2.46e6 days is most of an hour.
    """

    def residuals(p):
        model = transit_model(time, t0_guess + p[0], shape) * (design @ p[1:])
        return (flux - model) / err

    baseline0 = np.zeros(design.shape[1])
    baseline0[0] = np.median(flux) / np.median(transit_model(time, t0_guess, shape))
    p0 = np.concatenate([[0.0], baseline0])
    lower = np.concatenate([[-window_d], np.full(baseline0.size, -np.inf)])
    upper = np.concatenate([[window_d], np.full(baseline0.size, np.inf)])
    scale = np.concatenate([[1e-3], np.full(baseline0.size, 1e-2)])
    result = least_squares(
        residuals, p0, bounds=(lower, upper), x_scale=scale, diff_step=1e-6, method="trf"
    )
    return result, t0_guess + result.x[0]


def fit_transit_time(
    time: ArrayLike,
    flux: ArrayLike,
    flux_err: ArrayLike,
    *,
    t0_guess: float,
    shape: TransitShape,
    airmass: ArrayLike | None = None,
    baseline_order: int = 1,
    window_d: float = 0.1,
    clip_sigma: float = 5.0,
) -> TransitTimeFit:
    """Fit a transit's mid-time with its shape fixed, and its error (module docstring).

    Parameters
    ----------
    time, flux, flux_err : array_like
        The light curve: times (e.g. BJD_TDB, days), relative flux and its error. Non-finite
        points are left out.
    t0_guess : float
        The predicted mid-time (an ephemeris).
    shape : TransitShape
        The fixed transit shape.
    airmass : array_like, optional
        Airmass per point, a baseline term when given.
    baseline_order : int, optional
        Order of the baseline's polynomial in time (0: a constant).
    window_d : float, optional
        The mid-time is searched within ``t0_guess +- window_d``.
    clip_sigma : float, optional
        Points whose residual exceeds this many robust standard deviations are left out of a
        second fit.

    Returns
    -------
    TransitTimeFit
    """
    time = np.asarray(time, float)
    flux = np.asarray(flux, float)
    err = np.asarray(flux_err, float)
    am = None if airmass is None else np.asarray(airmass, float)
    good = np.isfinite(time) & np.isfinite(flux) & np.isfinite(err) & (err > 0)
    if am is not None:
        good &= np.isfinite(am)
    n_params = baseline_order + 2 + (am is not None)
    if good.sum() <= n_params + 2:
        raise ValueError(
            f"fit_transit_time needs more than {n_params + 2} finite points, got {good.sum()}"
        )
    n_finite = int(good.sum())
    t_mid = 0.5 * (time[good].min() + time[good].max())
    full = _design(time, None if am is None else np.where(good, am, 1.0), baseline_order, t_mid)
    for _ in range(3):  # fit, clip the residuals' outliers, fit again
        result, t0 = _fit(time[good], flux[good], err[good], full[good], t0_guess, shape, window_d)
        resid = flux - transit_model(time, t0, shape) * (full @ result.x[1:])
        centre = np.median(resid[good])
        scatter = 1.4826 * np.median(np.abs(resid[good] - centre))
        keep = good & (np.abs(resid - centre) <= clip_sigma * scatter)
        if np.array_equal(keep, good):
            break
        good = keep
    t, f, e, design = time[good], flux[good], err[good], full[good]
    model = transit_model(t, t0, shape) * (design @ result.x[1:])
    resid = f - model
    dof = max(len(t) - len(result.x), 1)
    chi2_red = float(np.sum((resid / e) ** 2) / dof)
    jac = result.jac
    cov = np.linalg.pinv(jac.T @ jac) * chi2_red
    white = float(np.sqrt(cov[0, 0]))
    beads = []
    for shift in range(1, len(t)):  # prayer bead: every cyclic shift of the residuals
        fake = model + np.roll(resid, shift)
        beads.append(_fit(t, fake, e, design, t0, shape, window_d)[1])
    red = float(np.std(beads)) if beads else 0.0
    return TransitTimeFit(
        t0=float(t0),
        t0_err=max(white, red),
        t0_err_white=white,
        t0_err_red=red,
        baseline=tuple(float(v) for v in result.x[1:]),
        rms=float(np.std(resid)),
        chi2_red=chi2_red,
        n_points=len(t),
        n_clipped=n_finite - len(t),
    )


def fit_run_transit(
    run_dir: str | Path,
    *,
    t0_guess: float,
    shape: TransitShape,
    baseline_order: int = 1,
    use_airmass: bool = False,
    window_d: float = 0.1,
) -> tuple[TransitTimeFit, dict[str, Any]]:
    """Fit the mid-transit time of a run's target and write ``RUN/transit.json``.

    The target's ensemble relative flux (``rel_flux``, ``rel_flux_err``) against BJD_TDB; the
    points the run flagged bad for a transit (`TRANSIT_BAD`) are left out of the fit, then the
    residuals' outliers are clipped (`fit_transit_time`).

    Parameters
    ----------
    run_dir : str or Path
        A run directory whose target was found (``sources.parquet`` ``is_target``).
    t0_guess : float
        The predicted mid-time (BJD_TDB).
    shape : TransitShape
        The transit's fixed shape (e.g. the literature's).
    baseline_order, use_airmass, window_d
        As for `fit_transit_time`.

    Returns
    -------
    fit : TransitTimeFit
    record : dict
        What ``transit.json`` holds: the fit, the shape, the prediction, O-C (minutes), the
        points used.

    Raises
    ------
    LcdaskError
        When the run has no target, or its frames have no BJD_TDB.
    """
    from lcdask.errors import LcdaskError
    from lcdask.export import read_run
    from lcdask.io.atomic import write_json_atomic

    run = read_run(run_dir)
    target = run.sources[run.sources["is_target"].to_numpy(bool)]
    if target.empty:
        raise LcdaskError(f'{run_dir}: the run has no target (lcdask run --target "RA DEC")')
    sid = int(target["source_id"].iloc[0])
    ds = run.lightcurves
    index = int(np.flatnonzero(ds["source_id"].to_numpy() == sid)[0])
    one = ds.isel(source=index).load()
    frames = run.frames.set_index("frame")
    frame_ids = one["frame"].to_numpy()
    if "bjd_tdb" not in frames or not np.isfinite(frames["bjd_tdb"].to_numpy(float)).any():
        raise LcdaskError(
            f"{run_dir}: the frames have no BJD_TDB (the site or the target's position is "
            "missing from the headers)"
        )
    bjd = frames["bjd_tdb"].reindex(frame_ids).to_numpy(float)
    airmass = frames["airmass"].reindex(frame_ids).to_numpy(float) if use_airmass else None
    flux = np.asarray(one["rel_flux"], float)
    err = np.asarray(one["rel_flux_err"], float)
    flagged = (one["flags"].to_numpy() & int(TRANSIT_BAD)) != 0
    flux = np.where(flagged, np.nan, flux)
    fit = fit_transit_time(
        bjd,
        flux,
        err,
        t0_guess=t0_guess,
        shape=shape,
        airmass=airmass,
        baseline_order=baseline_order,
        window_d=window_d,
    )
    record = {
        "source_id": sid,
        "fit": fit.as_record(),
        "shape": asdict(shape),
        "t0_predicted": t0_guess,
        "o_minus_c_min": (fit.t0 - t0_guess) * 1440.0,
        "o_minus_c_sigma": (fit.t0 - t0_guess) / fit.t0_err,
        "n_flagged": int(flagged.sum()),
        "time_scale": "BJD_TDB",
    }
    write_json_atomic(Path(run_dir) / "transit.json", record)
    return fit, record
