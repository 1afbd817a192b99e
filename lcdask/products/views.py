"""The data of the run's figures, prepared once for the PNG plots and the HTML report.

`lcdask.plots` (matplotlib) and `lcdask.report` (bokeh) draw the same views of a run; what they
draw is made here: plain arrays, tables and small dataclasses, with no plotting library imported.

======================  ==========================================================================
view                    data
======================  ==========================================================================
`target_view`           the target's light curve, binned, and its comparison stars, offset
`variables_view`        the most significant variables' light curves, binned
`movers_view`           the movers' measured positions, fitted motion, offsets and residuals
`coadd_view`            the co-add (decimated, z-scaled) and the movers' tracks in its pixels
`scatter_view`          robust scatter against magnitude, with the expected-scatter curves
`frames_view`           per-frame conditions against time
======================  ==========================================================================

Where the PNGs and the report differ, a keyword says how (``offset_time``: days after the whole
MJD, or the MJD; ``comparison_order``; ``max_movers``); the helpers (`bin_lightcurve`,
`select_lightcurves`, `mover_tracks`, `scatter_curve`...) are public for notebooks.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import xarray as xr

from lcdask.lightcurves import LightCurveFlag

__all__ = [
    "FRAME_PANELS",
    "KIND_COLOURS",
    "CoaddView",
    "FramesView",
    "MoversView",
    "ScatterView",
    "TargetView",
    "VariablesView",
    "bin_lightcurve",
    "coadd_view",
    "frames_view",
    "mover_tracks",
    "movers_view",
    "ranked_variables",
    "read_coadd",
    "scatter_curve",
    "scatter_view",
    "select_lightcurves",
    "target_view",
    "time_offset",
    "variables_view",
    "with_frame_coords",
]

KIND_COLOURS = {
    "stable": "#7f7f7f",
    "variable": "#d62728",
    "moving": "#1f77b4",
    "artefact": "#bcbd22",
}
"""Colour of each source class, shared by the PNG plots and the HTML report."""

FRAME_PANELS = (
    ("zero_point", "zero point (mag)"),
    ("fwhm_px", "FWHM (px)"),
    ("sky", "sky (ADU/px)"),
    ("airmass", "airmass"),
    ("transparency", "transparency"),
    ("n_sources", "sources"),
    ("astrometry_rms_arcsec", "astrometric rms (arcsec)"),
)
"""Per-frame quantities plotted against time (those present), with their axis labels."""

_MISSING = int(LightCurveFlag.MISSING)
_FORCED = int(LightCurveFlag.FORCED)


def time_offset(time_mjd: np.ndarray) -> float:
    """The whole MJD before the first time: plots show ``time_mjd - offset`` in days."""
    t = np.asarray(time_mjd, dtype=float)
    t = t[np.isfinite(t)]
    return float(np.floor(t.min())) if t.size else 0.0


def bin_lightcurve(
    time: np.ndarray,
    value: np.ndarray,
    error: np.ndarray | None = None,
    *,
    bin_width: float | None = None,
    n_bins: int = 25,
) -> pd.DataFrame:
    """Bin a light curve in time: weighted means of the points in each bin.

    Parameters
    ----------
    time, value
        The light curve (non-finite points are ignored).
    error
        1-sigma errors (weights ``1 / error**2``); without them all points weigh the same and
        the error of a bin is its standard deviation over ``sqrt(n)``.
    bin_width
        Width of the bins in the unit of ``time``; default the span over ``n_bins``.
    n_bins
        Number of bins over the span when ``bin_width`` is not given.

    Returns
    -------
    pandas.DataFrame
        ``time`` (mean time of the points), ``value``, ``error``, ``n`` for each non-empty bin.
    """
    t = np.asarray(time, dtype=float)
    y = np.asarray(value, dtype=float)
    e = np.ones_like(y) if error is None else np.asarray(error, dtype=float)
    ok = np.isfinite(t) & np.isfinite(y) & np.isfinite(e) & (e > 0)
    t, y, e = t[ok], y[ok], e[ok]
    if t.size == 0:
        return pd.DataFrame({"time": [], "value": [], "error": [], "n": []})
    span = float(t.max() - t.min())
    width = bin_width if bin_width is not None else (span / max(n_bins, 1) or 1.0)
    idx = np.floor((t - t.min()) / width).astype(np.int64)
    w = 1.0 / e**2
    df = pd.DataFrame({"b": idx, "t": t, "y": y, "w": w, "wy": w * y, "y2": y * y})
    g = df.groupby("b")
    n = g.size()
    wsum = g["w"].sum()
    mean = g["wy"].sum() / wsum
    if error is None:
        var = (g["y2"].mean() - g["y"].mean() ** 2).clip(lower=0.0) * n / (n - 1).clip(lower=1)
        err = np.sqrt(var / n)
    else:
        err = 1.0 / np.sqrt(wsum)
    return pd.DataFrame(
        {
            "time": g["t"].mean().to_numpy(),
            "value": mean.to_numpy(),
            "error": err.to_numpy(),
            "n": n.to_numpy(),
        }
    )


def select_lightcurves(
    ds: xr.Dataset, ids: Sequence[int] | np.ndarray, *, variables: Sequence[str] | None = None
) -> xr.Dataset:
    """The light curves of some sources, loaded, in the order of ``ids``.

    Parameters
    ----------
    ds
        The light-curve Dataset (lazy or loaded).
    ids
        ``source_id`` values.
    variables
        The data variables to read (those of ``ds`` that exist; its coordinates always come
        along); default all. A plot that needs two of the 14 variables of a lazy Dataset reads
        them in a fifth of the time.

    Returns
    -------
    xarray.Dataset
        The selection, in memory.

    Raises
    ------
    ValueError
        When an id is not in the light curves.
    """
    ids = np.asarray(ids, dtype=np.int64)
    sid = ds["source_id"].to_numpy()
    order = np.argsort(sid, kind="stable")
    pos = np.searchsorted(sid[order], ids)
    pos = np.minimum(pos, max(sid.size - 1, 0))
    ok = sid[order][pos] == ids if sid.size else np.zeros(ids.size, bool)
    if not ok.all():
        raise ValueError(f"source ids {ids[~ok][:10].tolist()} are not in the light curves")
    if variables is not None:
        ds = ds[[v for v in variables if v in ds.data_vars]]
    return ds.isel(source=order[pos]).load()


def with_frame_coords(frames: pd.DataFrame | None, ds: xr.Dataset) -> pd.DataFrame:
    """The per-frame table completed with the light curves' frame coordinates it lacks.

    Parameters
    ----------
    frames
        ``frames.parquet`` (or None).
    ds
        The light-curve Dataset (``transparency`` and the other coordinates on ``frame``).

    Returns
    -------
    pandas.DataFrame
        ``frames`` with the missing columns added (matched on ``frame``), or the Dataset's frame
        coordinates alone when ``frames`` is None.
    """
    from lcdask.io.products import frames_table

    coords = frames_table(ds)
    if frames is None:
        return coords
    extra = [c for c in coords.columns if c not in frames.columns]
    if not extra or "frame" not in frames.columns:
        return frames
    return frames.merge(coords[["frame", *extra]], on="frame", how="left")


def _measured(flags: np.ndarray) -> np.ndarray:
    """Entries that hold a measurement (detected or forced)."""
    return ((flags & _MISSING) == 0) | ((flags & _FORCED) != 0)


def ranked_variables(sources: pd.DataFrame, *, include_target: bool = False) -> pd.DataFrame:
    """The variable sources, the most significant first (larger of the scatter ratios).

    Parameters
    ----------
    sources
        The sources table.
    include_target
        Keep the target when it is variable.

    Returns
    -------
    pandas.DataFrame
        The rows of the variables, ranked.
    """
    var = sources[sources["kind"] == "variable"]
    if not include_target:
        var = var[~var["is_target"].to_numpy(bool)]
    score = np.fmax(
        var.get("scatter_ratio", pd.Series(np.nan, index=var.index)).to_numpy(float),
        var.get("binned_ratio", pd.Series(np.nan, index=var.index)).to_numpy(float),
    )
    return var.iloc[np.argsort(-np.nan_to_num(score, nan=-np.inf), kind="stable")]


def mover_tracks(ds: xr.Dataset, sources: pd.DataFrame) -> pd.DataFrame:
    """The measured positions of the moving sources and their fitted motion.

    Parameters
    ----------
    ds
        The light-curve Dataset; only the movers are read.
    sources
        The sources table (``kind``, ``ra``, ``dec``, ``epoch_mjd``, ``rate_ra_arcsec_h``,
        ``rate_dec_arcsec_h``).

    Returns
    -------
    pandas.DataFrame
        One row per measured (mover, frame): ``source_id``, ``frame``, ``time_mjd``, ``ra``,
        ``dec``, and ``ra_fit``, ``dec_fit`` (the fitted linear motion at that time; NaN when
        the sources table has no fit).
    """
    movers = sources[sources["kind"] == "moving"]
    cols = ["source_id", "frame", "time_mjd", "ra", "dec", "ra_fit", "dec_fit"]
    if movers.empty:
        return pd.DataFrame({c: [] for c in cols})
    sub = select_lightcurves(
        ds, movers["source_id"].to_numpy(np.int64), variables=("flags", "ra", "dec")
    )
    t = sub["time_mjd"].to_numpy().astype(float)
    ok = _measured(sub["flags"].to_numpy()) & np.isfinite(sub["ra"].to_numpy())
    si, fi = np.nonzero(ok)
    table = pd.DataFrame(
        {
            "source_id": sub["source_id"].to_numpy()[si].astype(np.int64),
            "frame": sub["frame"].to_numpy()[fi].astype(np.int64),
            "time_mjd": t[fi],
            "ra": sub["ra"].to_numpy()[si, fi],
            "dec": sub["dec"].to_numpy()[si, fi],
        }
    )
    fit = movers.set_index("source_id").loc[table["source_id"]]
    epoch = fit.get("epoch_mjd", pd.Series(np.nan, index=fit.index)).to_numpy(float)
    dt_h = (table["time_mjd"].to_numpy() - epoch) * 24.0
    dec0 = fit["dec"].to_numpy(float)
    rate_ra = fit.get("rate_ra_arcsec_h", pd.Series(np.nan, index=fit.index)).to_numpy(float)
    rate_dec = fit.get("rate_dec_arcsec_h", pd.Series(np.nan, index=fit.index)).to_numpy(float)
    table["dec_fit"] = dec0 + rate_dec * dt_h / 3600.0
    table["ra_fit"] = fit["ra"].to_numpy(float) + rate_ra * dt_h / 3600.0 / np.cos(np.deg2rad(dec0))
    return table


def read_coadd(coadd: str | Path | tuple[np.ndarray, object]) -> tuple[np.ndarray, object]:
    """The co-added image (float32) and its astropy WCS.

    Parameters
    ----------
    coadd
        ``coadd.fits`` (its first 2-d image) or ``(image, wcs)``.

    Returns
    -------
    tuple
        ``(image, wcs)``.
    """
    from astropy.io import fits
    from astropy.wcs import WCS

    if isinstance(coadd, str | Path):
        with fits.open(coadd, memmap=True) as hdul:
            hdu = next((h for h in hdul if h.data is not None and h.data.ndim == 2), None)
            if hdu is None:
                raise ValueError(f"{coadd} holds no 2-d image")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                wcs = WCS(hdu.header)
            return np.asarray(hdu.data, dtype=np.float32), wcs
    image, wcs = coadd
    return np.asarray(image, dtype=np.float32), wcs


def scatter_curve(mag: np.ndarray, value: np.ndarray, *, n_bins: int = 20) -> pd.DataFrame:
    """A smooth curve through per-source values against magnitude: medians in magnitude bins.

    Parameters
    ----------
    mag, value
        Per-source magnitude and value (``expected_scatter``, ``noise_model``); non-finite
        pairs are ignored.
    n_bins
        Bins of equal counts (fewer when there are fewer than 5 sources per bin).

    Returns
    -------
    pandas.DataFrame
        ``mag`` (median magnitude of the bin) and ``value`` (median value), by magnitude.
    """
    m = np.asarray(mag, dtype=float)
    v = np.asarray(value, dtype=float)
    ok = np.isfinite(m) & np.isfinite(v)
    m, v = m[ok], v[ok]
    if m.size == 0:
        return pd.DataFrame({"mag": [], "value": []})
    order = np.argsort(m, kind="stable")
    parts = np.array_split(order, max(1, min(n_bins, m.size // 5)))
    return pd.DataFrame(
        {
            "mag": [float(np.median(m[p])) for p in parts],
            "value": [float(np.median(v[p])) for p in parts],
        }
    )


# --------------------------------------------------------------------------------------------
# the views: one per figure of the plots and the report


@dataclass(frozen=True, eq=False)
class TargetView:
    """The target's light curve with its comparison stars (`target_view`).

    Attributes
    ----------
    row : pandas.Series
        The target's row of the sources table (``source_id``, ``ra``, ``dec``, ``mag``,
        ``kind``...).
    t0 : float
        Subtracted from the times in `time` (0 when they are the MJD itself).
    time_mjd, time : numpy.ndarray
        Mid-exposure times (MJD) of the frames, and ``time_mjd - t0``.
    frame : numpy.ndarray
        The frame indices (int64).
    rel_flux, rel_flux_err : numpy.ndarray
        The target's light curve.
    mag, flags : numpy.ndarray or None
        Its magnitudes and flags (int64); None when the light curves lack them.
    binned : pandas.DataFrame
        `bin_lightcurve` of ``rel_flux`` against `time` in ``n_bins`` bins.
    n_bins : int
        The bins asked for.
    comparison_ids : numpy.ndarray
        The comparison stars shown (int64), in their order.
    n_comparison_stars : int
        All the comparison stars of the run.
    comparison_rel_flux : numpy.ndarray
        Their ``rel_flux`` (star, frame).
    comparison_step : float
        The offset between two stars' curves: 4 times the largest deviation of a star's 2nd or
        98th percentile from 1, at least 0.01 (NaN without comparison stars).
    comparison_offset : numpy.ndarray
        ``k * comparison_step`` for the k-th star: the curves are drawn at ``rel_flux - offset``.
    transparency : numpy.ndarray or None
        The ensemble transparency per frame, when the light curves have it.
    """

    row: pd.Series
    t0: float
    time_mjd: np.ndarray
    time: np.ndarray
    frame: np.ndarray
    rel_flux: np.ndarray
    rel_flux_err: np.ndarray
    mag: np.ndarray | None
    flags: np.ndarray | None
    binned: pd.DataFrame
    n_bins: int
    comparison_ids: np.ndarray
    n_comparison_stars: int
    comparison_rel_flux: np.ndarray
    comparison_step: float
    comparison_offset: np.ndarray
    transparency: np.ndarray | None

    @property
    def source_id(self) -> int:
        """The target's ``source_id``."""
        return int(self.row["source_id"])


def target_view(
    ds: xr.Dataset,
    sources: pd.DataFrame,
    *,
    n_comparison: int = 8,
    n_bins: int = 25,
    comparison_order: Literal["weight", "mag"] = "weight",
    offset_time: bool = True,
) -> TargetView | None:
    """The data of the target's figure: its light curve, binned, and its comparison stars.

    Parameters
    ----------
    ds
        The light-curve Dataset (after the ensemble photometry); only the target and the shown
        comparison stars are read.
    sources
        The sources table (``is_target``, ``is_comparison``, ``mag``).
    n_comparison
        At most this many comparison stars.
    n_bins
        Bins of the binned light curve (`bin_lightcurve`).
    comparison_order
        ``"weight"``: the heaviest weights first when the Dataset has ``comparison_weight``,
        else the brightest (the PNG); ``"mag"``: the brightest first (the report).
    offset_time
        Times relative to the whole MJD before the first frame (`time_offset`), as the PNGs
        show them; else the MJD itself (the report). The bins are made on these times.

    Returns
    -------
    TargetView or None
        None when no source is the target.
    """
    target = sources[sources["is_target"].to_numpy(bool)]
    if target.empty:
        return None
    row = target.iloc[0]
    comp = sources[sources["is_comparison"].to_numpy(bool)]
    if comparison_order == "weight" and "comparison_weight" in ds and len(comp):
        weight = ds["comparison_weight"].to_series()
        weight.index = ds["source_id"].to_numpy()
        comp = comp.assign(_w=comp["source_id"].map(weight).to_numpy())
        comp = comp.sort_values("_w", ascending=False)
    else:
        comp = comp.sort_values("mag")
    comp_ids = comp["source_id"].to_numpy(np.int64)[:n_comparison]
    sub = select_lightcurves(
        ds,
        [int(row["source_id"]), *comp_ids],
        variables=("rel_flux", "rel_flux_err", "mag", "flags"),
    )
    t = np.asarray(sub["time_mjd"].to_numpy(), dtype=float)
    t0 = time_offset(t) if offset_time else 0.0
    time = t - t0
    rel = sub["rel_flux"].to_numpy()[0]
    err = sub["rel_flux_err"].to_numpy()[0]
    crel = sub["rel_flux"].to_numpy()[1:]
    step = np.nan
    if comp_ids.size:
        spread = 0.0
        if crel.size:
            with warnings.catch_warnings():  # a star without a measurement: All-NaN slice
                warnings.simplefilter("ignore", RuntimeWarning)
                spread = np.nanmax(np.abs(np.nanpercentile(crel, [2, 98], axis=1) - 1.0))
        step = max(4.0 * float(np.nan_to_num(spread)), 0.01)
    return TargetView(
        row=row,
        t0=t0,
        time_mjd=t,
        time=time,
        frame=sub["frame"].to_numpy().astype(np.int64),
        rel_flux=rel,
        rel_flux_err=err,
        mag=sub["mag"].to_numpy()[0] if "mag" in sub else None,
        flags=sub["flags"].to_numpy()[0].astype(np.int64) if "flags" in sub else None,
        binned=bin_lightcurve(time, rel, err, n_bins=n_bins),
        n_bins=n_bins,
        comparison_ids=comp_ids,
        n_comparison_stars=len(comp),
        comparison_rel_flux=crel,
        comparison_step=step,
        comparison_offset=np.arange(comp_ids.size) * step,
        transparency=sub["transparency"].to_numpy() if "transparency" in sub.coords else None,
    )


@dataclass(frozen=True, eq=False)
class VariablesView:
    """The variable sources' light curves (`variables_view`).

    Attributes
    ----------
    ranked : pandas.DataFrame
        The rows of every variable source, the most significant first (`ranked_variables`).
    shown : pandas.DataFrame
        The first of them, those shown.
    t0 : float
        Subtracted from the times in `time` (0 when they are the MJD itself).
    time_mjd, time : numpy.ndarray
        The frames' times (MJD), and ``time_mjd - t0`` (empty when none is shown).
    rel_flux, rel_flux_err : numpy.ndarray
        The shown sources' light curves (source, frame), in the order of `shown`.
    binned : list of pandas.DataFrame
        `bin_lightcurve` of each shown source against `time` (25 bins).
    """

    ranked: pd.DataFrame
    shown: pd.DataFrame
    t0: float
    time_mjd: np.ndarray
    time: np.ndarray
    rel_flux: np.ndarray
    rel_flux_err: np.ndarray
    binned: list[pd.DataFrame]


def variables_view(
    ds: xr.Dataset,
    sources: pd.DataFrame,
    *,
    max_shown: int = 12,
    include_target: bool = False,
    offset_time: bool = True,
) -> VariablesView:
    """The data of the variables' figure: the most significant variables' light curves.

    Parameters
    ----------
    ds
        The light-curve Dataset; only the shown sources are read.
    sources
        The sources table (``kind``; ``scatter_ratio`` and ``binned_ratio`` rank them).
    max_shown
        At most this many sources, the most significant first.
    include_target
        Keep the target when it is variable (it has its own figure).
    offset_time
        Times relative to the whole MJD before the first frame (`time_offset`), as the PNGs
        show them; else the MJD itself (the report).

    Returns
    -------
    VariablesView
    """
    ranked = ranked_variables(sources, include_target=include_target)
    shown = ranked.iloc[:max_shown]
    if shown.empty:
        none, curves = np.empty(0), np.empty((0, 0))
        return VariablesView(ranked, shown, 0.0, none, none, curves, curves, [])
    sub = select_lightcurves(
        ds, shown["source_id"].to_numpy(np.int64), variables=("rel_flux", "rel_flux_err")
    )
    t = np.asarray(sub["time_mjd"].to_numpy(), dtype=float)
    t0 = time_offset(t) if offset_time else 0.0
    time = t - t0
    rel = sub["rel_flux"].to_numpy()
    err = sub["rel_flux_err"].to_numpy()
    return VariablesView(
        ranked=ranked,
        shown=shown,
        t0=t0,
        time_mjd=t,
        time=time,
        rel_flux=rel,
        rel_flux_err=err,
        binned=[bin_lightcurve(time, rel[k], err[k]) for k in range(len(shown))],
    )


@dataclass(frozen=True, eq=False)
class MoversView:
    """The moving sources' tracks (`movers_view`).

    Attributes
    ----------
    movers : pandas.DataFrame
        The rows of the moving sources shown.
    tracks : pandas.DataFrame
        One row per measured (mover, frame), movers in the order of `movers`: the columns of
        `mover_tracks` (``source_id``, ``frame``, ``time_mjd``, ``ra``, ``dec``, ``ra_fit``,
        ``dec_fit``), and ``time`` (``time_mjd - t0``), ``rate_arcsec_h`` (the mover's rate),
        ``east``, ``north`` (arcsec from the mover's position at its epoch, east along
        RA cos Dec), ``east_fit``, ``north_fit`` (the same of the fitted motion), ``ra_residual``
        (RA cos Dec), ``dec_residual`` (arcsec from the fitted motion).
    t0 : float
        The whole MJD before the first measurement (`time_offset`).
    """

    movers: pd.DataFrame
    tracks: pd.DataFrame
    t0: float


def movers_view(
    ds: xr.Dataset, sources: pd.DataFrame, *, max_movers: int | None = None
) -> MoversView:
    """The data of the movers' figures: their measured positions, fitted motion and offsets.

    Parameters
    ----------
    ds
        The light-curve Dataset; only the movers are read.
    sources
        The sources table (``kind``, ``ra``, ``dec``, ``epoch_mjd``, ``rate_ra_arcsec_h``,
        ``rate_dec_arcsec_h``).
    max_movers
        At most this many movers, the fastest first (the PNGs); None: all of them, in the order
        of the sources table (the report).

    Returns
    -------
    MoversView
    """
    movers = sources[sources["kind"] == "moving"]
    if max_movers is not None:
        speed = np.hypot(movers["rate_ra_arcsec_h"], movers["rate_dec_arcsec_h"]).to_numpy(float)
        order = np.argsort(-np.nan_to_num(speed, nan=-1.0), kind="stable")[:max_movers]
        movers = movers.iloc[order]
    tracks = mover_tracks(ds, movers)
    t0 = time_offset(tracks["time_mjd"].to_numpy())
    rate = np.hypot(movers["rate_ra_arcsec_h"], movers["rate_dec_arcsec_h"])
    rate.index = movers["source_id"].to_numpy(np.int64)
    at = movers.set_index("source_id").loc[tracks["source_id"]]
    ra0, dec0 = at["ra"].to_numpy(float), at["dec"].to_numpy(float)
    cosd = np.cos(np.deg2rad(dec0))
    cos_fit = np.cos(np.deg2rad(tracks["dec_fit"].to_numpy()))
    tracks = tracks.assign(
        time=tracks["time_mjd"].to_numpy() - t0,
        rate_arcsec_h=tracks["source_id"].map(rate).to_numpy(float),
        east=(tracks["ra"].to_numpy() - ra0) * cosd * 3600.0,
        north=(tracks["dec"].to_numpy() - dec0) * 3600.0,
        east_fit=(tracks["ra_fit"].to_numpy() - ra0) * cosd * 3600.0,
        north_fit=(tracks["dec_fit"].to_numpy() - dec0) * 3600.0,
        ra_residual=(tracks["ra"] - tracks["ra_fit"]).to_numpy() * cos_fit * 3600.0,
        dec_residual=(tracks["dec"] - tracks["dec_fit"]).to_numpy() * 3600.0,
    )
    return MoversView(movers=movers, tracks=tracks, t0=t0)


@dataclass(frozen=True, eq=False)
class CoaddView:
    """The co-add with the movers' tracks in its pixels (`coadd_view`).

    Attributes
    ----------
    shape : tuple of int
        The co-add's ``(ny, nx)``.
    step : int
        The decimation: `image` is every ``step``-th pixel of the co-add on each axis.
    image : numpy.ndarray
        The decimated co-add (float32).
    vmin, vmax : float
        Its z-scale display limits.
    tracks : pandas.DataFrame
        The movers' tracks (`MoversView.tracks`) with their pixel positions in the co-add:
        ``x``, ``y`` (measured) and ``x_fit``, ``y_fit`` (fitted motion).
    labels : pandas.DataFrame
        One row per mover: ``source_id``, ``x_median``, ``y_median`` (the middle of its track)
        and ``x_last``, ``y_last`` (its last measured position).
    target_x, target_y : numpy.ndarray
        The target's pixel position (empty without a target).
    """

    shape: tuple[int, int]
    step: int
    image: np.ndarray
    vmin: float
    vmax: float
    tracks: pd.DataFrame
    labels: pd.DataFrame
    target_x: np.ndarray
    target_y: np.ndarray

    def grey(self) -> np.ndarray:
        """`image` scaled to 8 bits between `vmin` and `vmax` (NaN as `vmin`)."""
        scaled = (np.nan_to_num(self.image, nan=self.vmin) - self.vmin) / max(
            self.vmax - self.vmin, 1e-12
        )
        return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def coadd_view(
    coadd: str | Path | tuple[np.ndarray, object],
    movers: MoversView,
    sources: pd.DataFrame,
    *,
    max_pixels: int,
) -> CoaddView:
    """The data of the movers-over-the-co-add figure.

    Parameters
    ----------
    coadd
        ``coadd.fits`` or ``(image, wcs)`` (`read_coadd`).
    movers
        The movers' tracks (`movers_view`).
    sources
        The sources table (``is_target``, ``ra``, ``dec``).
    max_pixels
        The co-add is decimated to about this many pixels on a side.

    Returns
    -------
    CoaddView
    """
    from astropy.visualization import ZScaleInterval

    image, wcs = read_coadd(coadd)
    step = max(1, int(np.ceil(max(image.shape) / max_pixels)))
    shown = image[::step, ::step]
    finite = shown[np.isfinite(shown)]
    vmin, vmax = ZScaleInterval().get_limits(finite) if finite.size else (0.0, 1.0)
    tracks = movers.tracks
    x, y = wcs.world_to_pixel_values(tracks["ra"].to_numpy(), tracks["dec"].to_numpy())
    fx, fy = wcs.world_to_pixel_values(tracks["ra_fit"].to_numpy(), tracks["dec_fit"].to_numpy())
    tracks = tracks.assign(x=x, y=y, x_fit=fx, y_fit=fy)
    labels = [
        (
            sid,
            np.median(g["x"].to_numpy()),
            np.median(g["y"].to_numpy()),
            g["x"].iloc[-1],
            g["y"].iloc[-1],
        )
        for sid, g in tracks.groupby("source_id", sort=False)
    ]
    target = sources[sources["is_target"].to_numpy(bool)]
    tx, ty = wcs.world_to_pixel_values(target["ra"].to_numpy(), target["dec"].to_numpy())
    return CoaddView(
        shape=image.shape,
        step=step,
        image=shown,
        vmin=vmin,
        vmax=vmax,
        tracks=tracks,
        labels=pd.DataFrame(
            labels, columns=["source_id", "x_median", "y_median", "x_last", "y_last"]
        ),
        target_x=np.asarray(tx, dtype=float),
        target_y=np.asarray(ty, dtype=float),
    )


@dataclass(frozen=True, eq=False)
class ScatterView:
    """The sources' robust scatter against magnitude (`scatter_view`).

    Attributes
    ----------
    sources : pandas.DataFrame
        The sources table (its other columns for hover texts: ``expected_scatter``,
        ``scatter_ratio``, ``n_frames``...).
    mag, mad_scatter : numpy.ndarray
        Each source's magnitude and robust scatter (1.4826 MAD of the relative flux).
    kind : numpy.ndarray
        Each source's class, as text.
    is_comparison, is_target : numpy.ndarray
        Boolean masks.
    curves : dict of str to pandas.DataFrame
        ``expected_scatter`` and ``noise_model`` (those in the table) of the non-moving
        sources, as `scatter_curve` tables (``mag``, ``value``).
    """

    sources: pd.DataFrame
    mag: np.ndarray
    mad_scatter: np.ndarray
    kind: np.ndarray
    is_comparison: np.ndarray
    is_target: np.ndarray
    curves: dict[str, pd.DataFrame]

    @property
    def positive_scatter(self) -> np.ndarray:
        """`mad_scatter` with NaN where it is not positive (what a log axis can show)."""
        return np.where(self.mad_scatter > 0, self.mad_scatter, np.nan)


def scatter_view(sources: pd.DataFrame) -> ScatterView:
    """The data of the scatter-against-magnitude figure.

    Parameters
    ----------
    sources
        The sources table (``mag``, ``mad_scatter``, ``kind``, ``is_comparison``,
        ``is_target``; ``expected_scatter`` and ``noise_model`` when present).

    Returns
    -------
    ScatterView
    """
    mag = sources["mag"].to_numpy(float)
    kind = sources["kind"].astype(str).to_numpy()
    fixed = kind != "moving"
    curves = {
        col: scatter_curve(mag[fixed], sources[col].to_numpy(float)[fixed])
        for col in ("expected_scatter", "noise_model")
        if col in sources
    }
    return ScatterView(
        sources=sources,
        mag=mag,
        mad_scatter=sources["mad_scatter"].to_numpy(float),
        kind=kind,
        is_comparison=sources["is_comparison"].to_numpy(bool),
        is_target=sources["is_target"].to_numpy(bool),
        curves=curves,
    )


@dataclass(frozen=True, eq=False)
class FramesView:
    """Per-frame conditions against time (`frames_view`).

    Attributes
    ----------
    table : pandas.DataFrame
        The per-frame table.
    panels : list of tuple
        ``(column, label)`` of `FRAME_PANELS` that the table has with a value.
    time_mjd : numpy.ndarray or None
        The frames' times (MJD); None when the table has no ``time_mjd``.
    t0 : float
        The whole MJD before the first frame (`time_offset`).
    time : numpy.ndarray or None
        ``time_mjd - t0``.
    """

    table: pd.DataFrame
    panels: list[tuple[str, str]]
    time_mjd: np.ndarray | None
    t0: float
    time: np.ndarray | None


def frames_view(frames: pd.DataFrame | None, ds: xr.Dataset | None = None) -> FramesView:
    """The data of the per-frame conditions' figure.

    Parameters
    ----------
    frames
        The per-frame table (``frames.parquet``), or None.
    ds
        The light-curve Dataset: its frame coordinates complete the table
        (`with_frame_coords`); the table is taken as it is when None.

    Returns
    -------
    FramesView
    """
    table = with_frame_coords(frames, ds) if ds is not None else frames
    panels = [(c, lab) for c, lab in FRAME_PANELS if c in table and table[c].notna().any()]
    if "time_mjd" not in table:
        return FramesView(table, panels, None, 0.0, None)
    t = table["time_mjd"].to_numpy(float)
    t0 = time_offset(t)
    return FramesView(table, panels, t, t0, t - t0)
