"""Truth light curves of the variable stars: transit, eclipsing binary, pulsator.

Every model is a multiplicative factor on the star's flux at its catalog magnitude ``mag``
(for the transit and the eclipsing binary ``mag`` is the out-of-eclipse magnitude, for the pulsator
the mean magnitude in flux):

- ``transit``: a trapezoid of depth ``depth``, total duration ``duration_d`` and ingress/egress
  ``ingress_d``, centred on ``t0_mjd + k * period_d``.
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
    return factor[0] if single else factor
