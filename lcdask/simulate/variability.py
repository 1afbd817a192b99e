"""Truth light curves of the variable stars: transit, eclipsing binary, pulsator.

Every model is a multiplicative factor on the star's flux at its catalog magnitude ``mag``
(for the transit and the eclipsing binary ``mag`` is the out-of-eclipse magnitude, for the pulsator
the mean magnitude in flux):

- ``transit``: a trapezoid of depth ``depth``, total duration ``duration_d`` and ingress/egress
  ``ingress_d``, centred on ``t0_mjd + k * period_d``; when the table has the columns
  ``rp_rs``, ``a_rs``, ``inc_deg``, ``u1``, ``u2`` (a limb-darkened night,
  ``SimConfig.transit_shape``) and they are finite, Mandel & Agol's quadratically limb-darkened
  transit of that shape instead (batman, `lcdask.transit.model.transit_model`).
- ``eclipsing``: primary eclipse as a trapezoid of depth ``depth`` at ``t0_mjd + k * period_d``,
  secondary of depth ``depth2`` half a period later, both with ``duration_d`` and ``ingress_d``.
- ``pulsator``: ``1 + amplitude * sin(2 pi (t - t0_mjd) / period_d)``.
- anything else (``var_type == ""``): 1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

VAR_TYPES = ("", "transit", "eclipsing", "pulsator")
VAR_COLUMNS = (
    "var_type",
    "period_d",
    "t0_mjd",
    "depth",
    "depth2",
    "duration_d",
    "ingress_d",
    "amplitude",
)


def trapezoid_dip(
    time_mjd: np.ndarray,
    t0_mjd: np.ndarray,
    period_d: np.ndarray,
    depth: np.ndarray,
    duration_d: np.ndarray,
    ingress_d: np.ndarray,
) -> np.ndarray:
    """Fractional flux lost in a periodic trapezoidal dip (0 outside, ``depth`` at the bottom).

    All arguments broadcast against each other.
    """
    dt = np.mod(time_mjd - t0_mjd + 0.5 * period_d, period_d) - 0.5 * period_d
    half = 0.5 * duration_d
    ingress = np.maximum(ingress_d, 1e-12)
    shape = np.clip((half - np.abs(dt)) / ingress, 0.0, 1.0)
    return depth * shape


def flux_factor(stars: pd.DataFrame | pd.Series, time_mjd: float | np.ndarray) -> np.ndarray:
    """Truth multiplicative flux factor of stars at given times (1 for stable stars).

    Parameters
    ----------
    stars
        Rows of ``truth/stars.parquet`` (a DataFrame, or one row as a Series) with the columns
        ``var_type``, ``period_d``, ``t0_mjd``, ``depth``, ``depth2``, ``duration_d``,
        ``ingress_d`` and ``amplitude``.
    time_mjd
        Mid-exposure time(s), UTC MJD: a scalar or a 1-D array.

    Returns
    -------
    numpy.ndarray
        For a DataFrame of n stars: shape (n,) for a scalar time, (n, m) for m times.
        For a Series: shape () for a scalar time, (m,) for m times.
    """
    single = isinstance(stars, pd.Series)
    table = stars.to_frame().T if single else stars
    t = np.asarray(time_mjd, dtype=float)
    if t.ndim > 1:
        raise ValueError(f"time_mjd must be a scalar or a 1-D array, got shape {t.shape}")

    def col(name: str) -> np.ndarray:
        values = np.asarray(table[name], dtype=float)
        return values[:, None] if t.ndim == 1 else values

    var_type = np.asarray(table["var_type"], dtype=object).astype(str)
    if t.ndim == 1:
        var_type = var_type[:, None]
    period = np.where(np.isfinite(col("period_d")) & (col("period_d") > 0), col("period_d"), 1.0)
    t0 = np.nan_to_num(col("t0_mjd"))
    depth = np.nan_to_num(col("depth"))
    depth2 = np.nan_to_num(col("depth2"))
    duration = np.nan_to_num(col("duration_d"))
    ingress = np.nan_to_num(col("ingress_d"))
    amplitude = np.nan_to_num(col("amplitude"))

    shape = np.broadcast_shapes(var_type.shape, t.shape)
    factor = np.ones(shape)
    transit = trapezoid_dip(t, t0, period, depth, duration, ingress)
    primary = transit
    secondary = trapezoid_dip(t, t0 + 0.5 * period, period, depth2, duration, ingress)
    pulse = amplitude * np.sin(2.0 * np.pi * (t - t0) / period)
    factor = np.where(var_type == "transit", 1.0 - transit, factor)
    factor = np.where(var_type == "eclipsing", 1.0 - primary - secondary, factor)
    factor = np.where(var_type == "pulsator", 1.0 + pulse, factor)
    factor = np.broadcast_to(factor, shape).astype(float)
    if "rp_rs" in table.columns:
        factor = factor.copy()
        for row in np.flatnonzero(_limb_darkened(table)):
            factor[row] = limb_darkened_transit(table.iloc[row], t)
    return factor[0] if single else factor


def _limb_darkened(table: pd.DataFrame) -> np.ndarray:
    """Rows of ``table`` whose transit is limb-darkened (finite shape columns)."""
    ok = np.asarray(table["var_type"], dtype=object).astype(str) == "transit"
    for name in ("rp_rs", "a_rs", "inc_deg", "u1", "u2", "period_d", "t0_mjd"):
        ok &= np.isfinite(np.asarray(table[name], dtype=float))
    return ok


def limb_darkened_transit(star: pd.Series, time_mjd: float | np.ndarray) -> np.ndarray:
    """The relative flux of a star's limb-darkened transit (its row of ``stars.parquet``).

    Parameters
    ----------
    star
        A row with ``t0_mjd``, ``period_d``, ``rp_rs``, ``a_rs``, ``inc_deg``, ``u1``, ``u2``.
    time_mjd
        Mid-exposure time(s), UTC MJD.

    Returns
    -------
    numpy.ndarray
        Of the shape of ``time_mjd``; 1 out of transit.
    """
    from lcdask.transit.model import TransitShape, transit_model

    shape = TransitShape(
        period_d=float(star["period_d"]),
        rp_rs=float(star["rp_rs"]),
        a_rs=float(star["a_rs"]),
        inc_deg=float(star["inc_deg"]),
        u=(float(star["u1"]), float(star["u2"])),
    )
    t = np.asarray(time_mjd, dtype=float)
    return transit_model(np.atleast_1d(t), float(star["t0_mjd"]), shape).reshape(t.shape)


def transit_truth(
    stars: pd.DataFrame,
    time_mjd: np.ndarray,
    *,
    site: tuple[float, float, float] | None = None,
) -> dict[str, object]:
    """The target's transit as ``truth/transit.json`` holds it.

    Parameters
    ----------
    stars
        ``stars.parquet`` (the target is its ``is_target`` row).
    time_mjd
        The light frames' mid-exposure times (UTC MJD): the coverage is counted on them.
    site
        ``(lat_deg, lon_deg east positive, height_m)``: the mid-time in BJD_TDB too (at the
        target's position, `lcdask.io.headers.bjd_tdb`); None: not given.

    Returns
    -------
    dict
        ``star_id``, ``shape`` (``limb-darkened`` or ``trapezoid``), ``t0_mjd`` (UTC),
        ``t0_bjd_tdb``, ``period_d``, ``depth`` ((Rp/Rs)^2, or the trapezoid's depth),
        ``rp_rs``, ``a_rs``, ``b``, ``inc_deg``, ``u1``, ``u2``, ``t14_d``, ``t23_d``,
        ``min_flux`` (the model at mid-transit), ``offset_h`` (mid-transit minus the middle of
        the frames), and ``coverage``: the frames before first contact, in ingress, on the
        bottom, in egress and after fourth contact, and ``kind`` (``full``, ``ingress``,
        ``egress``, ``bottom``, ``none``).
    """
    from lcdask.transit.model import impact_parameter

    target = stars[stars["is_target"].to_numpy(bool)]
    if target.empty:
        raise ValueError("the stars table has no target (is_target)")
    star = target.iloc[0]
    t = np.asarray(time_mjd, dtype=float)
    t0 = float(star["t0_mjd"])
    limb = "rp_rs" in stars.columns and bool(_limb_darkened(target)[0])
    t14, ingress = float(star["duration_d"]), float(star["ingress_d"])
    t23 = t14 - 2.0 * ingress
    out: dict[str, object] = {
        "star_id": int(star["star_id"]),
        "shape": "limb-darkened" if limb else "trapezoid",
        "t0_mjd": t0,
        "t0_bjd_tdb": None,
        "period_d": float(star["period_d"]),
        "depth": float(star["depth"]),
    }
    if limb:
        a_rs, inc = float(star["a_rs"]), float(star["inc_deg"])
        out.update(
            rp_rs=float(star["rp_rs"]),
            a_rs=a_rs,
            b=float(impact_parameter(a_rs, inc)),
            inc_deg=inc,
            u1=float(star["u1"]),
            u2=float(star["u2"]),
        )
    else:
        out.update(rp_rs=None, a_rs=None, b=None, inc_deg=None, u1=None, u2=None)
    out.update(
        t14_d=t14,
        t23_d=t23,
        min_flux=float(flux_factor(star, t0)),
        offset_h=24.0 * (t0 - 0.5 * (t.min() + t.max())),
    )
    if site is not None:
        from lcdask.io.headers import bjd_tdb

        out["t0_bjd_tdb"] = float(bjd_tdb(t0, float(star["ra"]), float(star["dec"]), *site))
    dt = t - t0
    counts = {
        "n_before": int(np.sum(dt < -0.5 * t14)),
        "n_ingress": int(np.sum((dt >= -0.5 * t14) & (dt < -0.5 * t23))),
        "n_bottom": int(np.sum(np.abs(dt) <= 0.5 * t23)),
        "n_egress": int(np.sum((dt > 0.5 * t23) & (dt <= 0.5 * t14))),
        "n_after": int(np.sum(dt > 0.5 * t14)),
    }
    seen_in, seen_out = counts["n_ingress"] > 0, counts["n_egress"] > 0
    if seen_in and seen_out:
        kind = "full"
    elif seen_in:
        kind = "ingress"
    elif seen_out:
        kind = "egress"
    else:
        kind = "bottom" if counts["n_bottom"] else "none"
    out["coverage"] = {**counts, "kind": kind}
    return out
