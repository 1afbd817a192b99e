"""PNG plots of a run (``RUN/plots/``): light curves, mover tracks, scatter, per-frame conditions.

Each plot has a function that builds a matplotlib `~matplotlib.figure.Figure` from data
(``*_figure``: for notebooks and tests) and one that writes it as a PNG (``plot_*``: returns the
path). `write_plots` writes them all from a light-curve Dataset and a sources table;
`write_run_plots` reads a run directory first (with a ``client``, one task per figure on the
cluster: `write_run_plot`, `submit_run_plots`). What they draw is prepared in
`lcdask.products.views` (shared with the HTML report; its helpers ``bin_lightcurve``,
``select_lightcurves``, ``mover_tracks``... are importable from here too). matplotlib is imported
inside the functions, with the non-interactive Agg canvas, so importing this module costs nothing
and needs no display.

===========================  ================================================================
file                         content
===========================  ================================================================
``target.png``               the target's ``rel_flux`` with errors and binned points; its
                             comparison stars (offset) and the ensemble transparency
``variables.png``            ``rel_flux`` of the variables, one panel each (at most
                             ``max_panels``, the most significant first)
``movers.png``               RA/Dec tracks of the moving sources with their fitted motion, and
                             their offsets from the fit against time
``movers_coadd.png``         the tracks drawn over the co-add (when there is one)
``scatter_magnitude.png``    robust scatter against magnitude, classes coloured, with the
                             expected scatter and the noise model
``frames.png``               per-frame zero point, FWHM, sky, airmass (and transparency, number
                             of sources, astrometric rms when present) against time
===========================  ================================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from lcdask.io.atomic import atomic_path
from lcdask.products.views import (
    FRAME_PANELS,
    KIND_COLOURS,
    bin_lightcurve,
    coadd_view,
    frames_view,
    mover_tracks,
    movers_view,
    ranked_variables,
    read_coadd,
    scatter_curve,
    scatter_view,
    select_lightcurves,
    target_view,
    time_offset,
    variables_view,
    with_frame_coords,
)
from lcdask.stages._parallel import gather_results, submit_task

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from matplotlib.gridspec import GridSpec

__all__ = [
    "KIND_COLOURS",
    "RUN_PLOTS",
    "bin_lightcurve",
    "frames_figure",
    "mover_tracks",
    "movers_coadd_figure",
    "movers_figure",
    "plot_frames",
    "plot_movers",
    "plot_movers_coadd",
    "plot_scatter_magnitude",
    "plot_target",
    "plot_variables",
    "ranked_variables",
    "read_coadd",
    "run_plot_names",
    "scatter_curve",
    "scatter_magnitude_figure",
    "select_lightcurves",
    "submit_run_plots",
    "target_figure",
    "time_offset",
    "variables_figure",
    "warm_up",
    "with_frame_coords",
    "write_plots",
    "write_run_plot",
    "write_run_plots",
]

RUN_PLOTS = ("target", "variables", "movers", "movers_coadd", "scatter_magnitude", "frames")
"""The run's plots (``RUN/plots/<name>.png``), in the order they are written."""

# Relative cost of each figure (measured on a 40-frame 2048^2 run): the dearest start first
# when they are spread over a cluster.
_PLOT_COST = {"variables": 5, "frames": 4, "movers_coadd": 3, "target": 3, "movers": 2}

_DPI = 100


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=_DPI)


def _grid(
    fig: Figure,
    n_rows: int = 1,
    n_cols: int = 1,
    *,
    left: float = 0.9,
    right: float = 0.2,
    top: float = 0.4,
    bottom: float = 0.55,
    h_gap: float = 0.0,
    w_gap: float = 0.0,
    **ratios: Any,
) -> GridSpec:
    """A grid of panels with fixed margins and gaps between the panels, in inches.

    A layout engine measures every tick label before the draw, which costs as much as the draw
    itself (half of ``write_plots``); the contents of these plots are known, so fixed room for
    their labels is enough. ``ratios``: ``width_ratios``, ``height_ratios``.
    """
    width, height = fig.get_size_inches()
    panel_w = (width - left - right - (n_cols - 1) * w_gap) / n_cols
    panel_h = (height - top - bottom - (n_rows - 1) * h_gap) / n_rows
    return fig.add_gridspec(
        n_rows,
        n_cols,
        left=left / width,
        right=1.0 - right / width,
        bottom=bottom / height,
        top=1.0 - top / height,
        wspace=w_gap / panel_w,
        hspace=h_gap / panel_h,
        **ratios,
    )


def _save(fig: Figure, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        # zlib level 3 writes these plots in 2/3 of the time of the default 6, in files as small
        fig.savefig(tmp, format="png", dpi=_DPI, pil_kwargs={"compress_level": 3})
    return path


def warm_up() -> None:
    """Import what the figures need and draw a small one into memory, writing no file.

    A process's first figure pays for importing matplotlib and for loading its fonts (text,
    the log axes' mathtext): about a second, as much as drawing the figure. A worker that ran
    this while it was idle (`lcdask.report.warm_workers`) draws its first run plot without it.
    """
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    import lcdask.io.products  # noqa: F401  (read_run, in write_run_plot)

    fig = _new_figure(2.0, 2.0)
    ax = fig.add_gridspec(1, 1).subplots()
    ax.errorbar([1.0, 2.0], [0.1, 1.0], yerr=[0.01, 0.1], fmt=".", ms=2, elinewidth=0.5)
    ax.plot([1.0, 2.0], [0.2, 0.5], "o-", ms=3, lw=1, label="warm")
    ax.set_yscale("log")
    ax.set_title("warm", fontsize="small")
    ax.legend(fontsize="x-small")
    ax.tick_params(labelsize="x-small")
    fig.supxlabel("x")
    FigureCanvasAgg(fig)
    fig.savefig(io.BytesIO(), format="png", dpi=_DPI, pil_kwargs={"compress_level": 3})


# --------------------------------------------------------------------------------------------
# target


def target_figure(
    ds: xr.Dataset,
    sources: pd.DataFrame,
    *,
    n_comparison: int = 8,
    n_bins: int = 25,
) -> Figure:
    """The target's light curve with its comparison ensemble.

    Parameters
    ----------
    ds
        The light-curve Dataset (after the ensemble photometry); only the target and the plotted
        comparison stars are read.
    sources
        The sources table (``is_target``, ``is_comparison``).
    n_comparison
        At most this many comparison stars are drawn (the heaviest weights first when the
        Dataset has ``comparison_weight``, else the brightest).
    n_bins
        Bins of the binned target light curve (`bin_lightcurve`).

    Returns
    -------
    matplotlib.figure.Figure
        Top: target ``rel_flux`` with errors and binned points. Middle: comparison stars'
        ``rel_flux``, offset. Bottom: the ensemble transparency when the Dataset has it.

    Raises
    ------
    ValueError
        When no source is the target.
    """
    view = target_view(ds, sources, n_comparison=n_comparison, n_bins=n_bins)
    if view is None:
        raise ValueError(
            "the sources table has no target (is_target); give one with `lcdask run --target`"
        )
    target = view.row
    tt = view.time
    has_transparency = view.transparency is not None
    n_rows = 2 + int(has_transparency)
    fig = _new_figure(9, 3.2 * n_rows)
    grid = _grid(
        fig, n_rows, 1, left=0.95, right=0.3, h_gap=0.4, height_ratios=[1.4, 1.2, 0.6][:n_rows]
    )
    axes = grid.subplots(sharex=True)
    ax = axes[0]
    ax.errorbar(
        tt,
        view.rel_flux,
        yerr=view.rel_flux_err,
        fmt=".",
        ms=3,
        color="0.55",
        elinewidth=0.6,
        label="frames",
    )
    binned = view.binned
    ax.errorbar(
        binned["time"],
        binned["value"],
        yerr=binned["error"],
        fmt="o",
        ms=5,
        color="#d62728",
        label=f"binned ({view.n_bins} bins)",
    )
    ax.set_ylabel("relative flux")
    ax.set_title(
        f"target: source {view.source_id}, RA {target['ra']:.5f} Dec "
        f"{target['dec']:+.5f}, mag {target['mag']:.2f} ({target['kind']})"
    )
    ax.legend(loc="best", fontsize="small")
    ax = axes[1]
    if view.comparison_ids.size:
        crel, offset = view.comparison_rel_flux, view.comparison_offset
        for k, sid in enumerate(view.comparison_ids):
            ax.plot(tt, crel[k] - offset[k], ".", ms=2)
            ax.text(tt[-1], 1.0 - offset[k], f" {sid}", fontsize="x-small", va="center")
        ax.set_ylabel(f"comparison rel. flux (offsets of {view.comparison_step:.3g})")
        ax.set_title(f"{view.comparison_ids.size} of {view.n_comparison_stars} comparison stars")
    else:
        ax.text(0.5, 0.5, "no comparison stars", transform=ax.transAxes, ha="center")
    if has_transparency:
        ax = axes[2]
        ax.plot(tt, view.transparency, "-", color="k", lw=1)
        ax.set_ylabel("transparency")
    axes[-1].set_xlabel(f"MJD - {view.t0:.0f} (d)")
    return fig


def plot_target(ds: xr.Dataset, sources: pd.DataFrame, path: str | Path, **kwargs: Any) -> Path:
    """Write `target_figure` as a PNG at ``path`` and return the path."""
    return _save(target_figure(ds, sources, **kwargs), path)


# --------------------------------------------------------------------------------------------
# variables


def variables_figure(
    ds: xr.Dataset,
    sources: pd.DataFrame,
    *,
    max_panels: int = 12,
    n_columns: int = 3,
    include_target: bool = False,
) -> Figure:
    """Light curves of the variable sources, one panel each.

    Parameters
    ----------
    ds
        The light-curve Dataset; only the plotted sources are read.
    sources
        The sources table (``kind``; ``scatter_ratio`` and ``binned_ratio`` rank them).
    max_panels
        At most this many panels, the most significant variables first.
    n_columns
        Panels per row.
    include_target
        Also show the target when it is variable (it has its own plot).

    Returns
    -------
    matplotlib.figure.Figure
        ``rel_flux`` against time with errors and binned points; a note when there are none.
    """
    view = variables_view(ds, sources, max_shown=max_panels, include_target=include_target)
    shown = view.shown
    n = len(shown)
    if n == 0:
        fig = _new_figure(6, 2)
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no variable sources", ha="center", va="center")
        ax.set_axis_off()
        return fig
    cols = min(n_columns, n)
    rows = int(np.ceil(n / cols))
    fig = _new_figure(4.2 * cols, 2.8 * rows + 0.6)
    more = len(view.ranked) > n  # a suptitle says how many are shown
    grid = _grid(
        fig,
        rows,
        cols,
        left=0.85,
        right=0.15,
        top=0.65 if more else 0.35,
        bottom=0.6,
        h_gap=0.55,
        w_gap=0.5,
    )
    axes = grid.subplots(squeeze=False).ravel()
    for k, (_, row) in enumerate(shown.iterrows()):
        ax = axes[k]
        ax.errorbar(
            view.time,
            view.rel_flux[k],
            yerr=view.rel_flux_err[k],
            fmt=".",
            ms=2,
            color="0.5",
            elinewidth=0.5,
        )
        b = view.binned[k]
        ax.plot(b["time"], b["value"], "o-", ms=3, lw=1, color=KIND_COLOURS["variable"])
        ratio = row.get("scatter_ratio", np.nan)
        ax.set_title(
            f"source {int(row['source_id'])}  mag {row['mag']:.2f}  ratio {ratio:.1f}",
            fontsize="small",
        )
        ax.tick_params(labelsize="x-small")
    for ax in axes[n:]:
        ax.set_axis_off()
    fig.supxlabel(f"MJD - {view.t0:.0f} (d)")
    fig.supylabel("relative flux")
    if more:
        fig.suptitle(f"{n} of {len(view.ranked)} variable sources (most significant first)")
    return fig


def plot_variables(ds: xr.Dataset, sources: pd.DataFrame, path: str | Path, **kwargs: Any) -> Path:
    """Write `variables_figure` as a PNG at ``path`` and return the path."""
    return _save(variables_figure(ds, sources, **kwargs), path)


# --------------------------------------------------------------------------------------------
# movers


def movers_figure(ds: xr.Dataset, sources: pd.DataFrame, *, max_movers: int = 20) -> Figure:
    """RA/Dec tracks of the moving sources and their offsets from the fitted motion.

    Parameters
    ----------
    ds
        The light-curve Dataset; only the movers are read.
    sources
        The sources table.
    max_movers
        At most this many movers (the fastest first).

    Returns
    -------
    matplotlib.figure.Figure
        Left: the field, Dec against RA (east to the left), each track with its fitted motion
        and labelled with its id and rate. Middle: each track relative to its fitted position
        at the epoch (arcsec), points coloured by time. Right: offsets from the fit (arcsec)
        in RA cos Dec and Dec against time.
    """
    from matplotlib.ticker import MaxNLocator, ScalarFormatter

    view = movers_view(ds, sources, max_movers=max_movers)
    fig = _new_figure(15, 5.2)
    if view.movers.empty:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no moving sources", ha="center", va="center")
        ax.set_axis_off()
        return fig
    movers, t0 = view.movers, view.t0
    # the gap after the middle panel holds its colour bar
    grid = _grid(fig, 1, 5, left=0.85, right=0.15, width_ratios=[1, 0.25, 1, 0.6, 1])
    ax_sky, ax_rel, ax_res = (fig.add_subplot(grid[k]) for k in (0, 2, 4))
    sc = None
    for k, (sid, g) in enumerate(view.tracks.groupby("source_id", sort=False)):
        colour = f"C{k % 10}"
        rate = float(g["rate_arcsec_h"].iloc[0])
        ax_sky.plot(g["ra"], g["dec"], ".", ms=2, color=colour)
        ax_sky.plot(g["ra_fit"], g["dec_fit"], "-", color=colour, lw=1.5)
        last = g.iloc[-1]
        ax_sky.annotate(
            f'{sid}: {rate:.1f}"/h',
            (last["ra"], last["dec"]),
            fontsize="x-small",
            color=colour,
            xytext=(3, 3),
            textcoords="offset points",
        )
        gt = g["time"].to_numpy()
        sc = ax_rel.scatter(g["east"].to_numpy(), g["north"].to_numpy(), c=gt, s=5, cmap="viridis")
        ax_rel.plot(
            g["east_fit"].to_numpy(),
            g["north_fit"].to_numpy(),
            "-",
            color=colour,
            lw=1,
            label=f'{sid}: {rate:.1f}"/h',
        )
        ax_res.plot(
            gt, g["ra_residual"].to_numpy(), ".", ms=3, color=colour, label=f"{sid} RA cos Dec"
        )
        ax_res.plot(gt, g["dec_residual"].to_numpy(), "x", ms=3, color=colour, label=f"{sid} Dec")
    if sc is not None:
        cax = ax_rel.inset_axes((1.04, 0.0, 0.04, 1.0))
        fig.colorbar(sc, cax=cax, label=f"MJD - {t0:.0f} (d)")
    for ax in (ax_sky, ax_rel):
        ax.invert_xaxis()
    for axis in (ax_sky.xaxis, ax_sky.yaxis):
        axis.set_major_formatter(ScalarFormatter(useOffset=False))
        axis.set_major_locator(MaxNLocator(4))
    ax_sky.set_xlabel("RA (deg)")
    ax_sky.set_ylabel("Dec (deg)")
    ax_sky.set_title(f"tracks of {len(movers)} moving sources")
    ax_rel.set_aspect("equal", adjustable="datalim")
    ax_rel.set_xlabel("east offset from the epoch position (arcsec)")
    ax_rel.set_ylabel("north offset (arcsec)")
    ax_rel.set_title("motion over the night")
    ax_rel.legend(fontsize="x-small")
    ax_res.axhline(0.0, color="k", lw=0.5)
    ax_res.set_xlabel(f"MJD - {t0:.0f} (d)")
    ax_res.set_ylabel("offset from the linear fit (arcsec)")
    ax_res.set_title("residuals")
    ax_res.legend(fontsize="xx-small", ncols=2)
    return fig


def plot_movers(ds: xr.Dataset, sources: pd.DataFrame, path: str | Path, **kwargs: Any) -> Path:
    """Write `movers_figure` as a PNG at ``path`` and return the path."""
    return _save(movers_figure(ds, sources, **kwargs), path)


def movers_coadd_figure(
    coadd: str | Path | tuple[np.ndarray, object],
    ds: xr.Dataset,
    sources: pd.DataFrame,
    *,
    max_movers: int = 20,
    max_pixels: int = 1500,
) -> Figure:
    """The movers' tracks drawn over the co-added image.

    Parameters
    ----------
    coadd
        ``coadd.fits`` (the first 2-d image and its WCS), or ``(image, wcs)`` with an astropy
        `~astropy.wcs.WCS`.
    ds, sources
        Light curves and sources table (`mover_tracks`).
    max_movers
        At most this many movers, the fastest first.
    max_pixels
        Larger images are decimated to about this many pixels on a side for display.

    Returns
    -------
    matplotlib.figure.Figure
        The co-add (z-scale stretch) in pixel coordinates, each mover's measured positions and
        fitted motion, labelled with its id; the target circled.
    """
    movers = movers_view(ds, sources, max_movers=max_movers)
    view = coadd_view(coadd, movers, sources, max_pixels=max_pixels)
    ny, nx = view.shape
    fig = _new_figure(8, 8 * ny / max(nx, 1) + 0.6)
    ax = fig.add_subplot(_grid(fig, left=0.75, right=0.15)[0])
    ax.imshow(
        view.image,
        origin="lower",
        cmap="gray",
        vmin=view.vmin,
        vmax=view.vmax,
        extent=(-0.5, nx - 0.5, -0.5, ny - 0.5),
        interpolation="nearest",
    )
    bright = ("#00e5ff", "#ffd400", "#ff4df0", "#7dff3a", "#ff8c1a", "#4d9dff")
    groups = view.tracks.groupby("source_id", sort=False)
    for k, ((sid, g), label) in enumerate(zip(groups, view.labels.itertuples(), strict=True)):
        colour = bright[k % len(bright)]
        ax.plot(g["x"].to_numpy(), g["y"].to_numpy(), ".", ms=2, color=colour)
        ax.plot(g["x_fit"].to_numpy(), g["y_fit"].to_numpy(), "-", lw=1.5, color=colour)
        ax.plot(label.x_median, label.y_median, "s", ms=16, mfc="none", mec=colour, mew=1.2)
        ax.annotate(
            str(sid),
            (label.x_last, label.y_last),
            color=colour,
            fontsize="medium",
            xytext=(10, 10),
            textcoords="offset points",
            bbox={"facecolor": "black", "alpha": 0.6, "linewidth": 0, "pad": 1},
        )
    if view.target_x.size:
        ax.plot(
            view.target_x,
            view.target_y,
            "o",
            ms=14,
            mfc="none",
            mec="#d62728",
            mew=1.5,
            label="target",
        )
        ax.legend(loc="upper right", fontsize="small")
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(-0.5, ny - 0.5)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    ax.set_title(f"{len(movers.movers)} moving sources over the co-add")
    return fig


def plot_movers_coadd(
    coadd: str | Path | tuple[np.ndarray, object],
    ds: xr.Dataset,
    sources: pd.DataFrame,
    path: str | Path,
    **kwargs: Any,
) -> Path:
    """Write `movers_coadd_figure` as a PNG at ``path`` and return the path."""
    return _save(movers_coadd_figure(coadd, ds, sources, **kwargs), path)


# --------------------------------------------------------------------------------------------
# scatter against magnitude


def scatter_magnitude_figure(sources: pd.DataFrame) -> Figure:
    """Robust scatter of the light curves against magnitude, by class.

    Parameters
    ----------
    sources
        The sources table (``mag``, ``mad_scatter``, ``expected_scatter``, ``noise_model``,
        ``kind``, ``is_comparison``, ``is_target``).

    Returns
    -------
    matplotlib.figure.Figure
        One scatter collection per class (labelled with the class name, the points in the
        order of the sources table), the comparison stars ringed, the target starred; the
        expected scatter (line) and the noise model (dashed) of the non-moving sources, as
        medians in magnitude bins (`scatter_curve`).
    """
    view = scatter_view(sources)
    fig = _new_figure(8, 5.5)
    ax = fig.add_subplot(_grid(fig, left=0.85)[0])
    mag = view.mag
    scatter = view.mad_scatter
    for kind, colour in KIND_COLOURS.items():
        sel = view.kind == kind
        ax.scatter(
            mag[sel],
            scatter[sel],
            s=8 if kind == "stable" else 18,
            color=colour,
            label=f"{kind} ({int(sel.sum())})",
            alpha=0.7 if kind == "stable" else 0.9,
            gid=f"scatter_{kind}",
        )
    comp = view.is_comparison
    if comp.any():
        ax.scatter(
            mag[comp],
            scatter[comp],
            s=40,
            facecolors="none",
            edgecolors="k",
            lw=0.8,
            label=f"comparison ({int(comp.sum())})",
            gid="scatter_comparison",
        )
    target = view.is_target
    if target.any():
        ax.scatter(
            mag[target],
            scatter[target],
            s=160,
            marker="*",
            color="gold",
            edgecolors="k",
            label="target",
            gid="scatter_target",
            zorder=5,
        )
    if "expected_scatter" in view.curves:
        curve = view.curves["expected_scatter"]
        ax.plot(
            curve["mag"],
            curve["value"],
            "-",
            color="k",
            lw=1.2,
            label="expected scatter",
            gid="expected_scatter",
        )
    if "noise_model" in view.curves:
        curve = view.curves["noise_model"]
        ax.plot(
            curve["mag"],
            curve["value"],
            "--",
            color="k",
            lw=0.8,
            label="noise model",
            gid="noise_model",
        )
    ax.set_yscale("log")
    ax.set_xlabel("magnitude")
    ax.set_ylabel("robust scatter of the relative flux (1.4826 MAD)")
    ax.set_title(f"scatter against magnitude, {len(sources)} sources")
    ax.legend(fontsize="small", loc="upper left")
    return fig


def plot_scatter_magnitude(sources: pd.DataFrame, path: str | Path) -> Path:
    """Write `scatter_magnitude_figure` as a PNG at ``path`` and return the path."""
    return _save(scatter_magnitude_figure(sources), path)


# --------------------------------------------------------------------------------------------
# per-frame conditions


def frames_figure(frames: pd.DataFrame) -> Figure:
    """Per-frame zero point, FWHM, sky and airmass (and the others present) against time.

    Parameters
    ----------
    frames
        The per-frame table (``time_mjd`` and any of `FRAME_PANELS`).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per quantity present, sharing the time axis.

    Raises
    ------
    ValueError
        When the table has no ``time_mjd`` or none of the quantities.
    """
    view = frames_view(frames)
    if view.time_mjd is None:
        raise ValueError("the per-frame table needs a 'time_mjd' column")
    if not view.panels:
        raise ValueError("the per-frame table has none of " + ", ".join(c for c, _ in FRAME_PANELS))
    panels, t0 = view.panels, view.t0
    fig = _new_figure(9, 1.7 * len(panels) + 0.8)
    grid = _grid(fig, len(panels), 1, top=0.35, h_gap=0.2)
    axes = np.atleast_1d(grid.subplots(sharex=True))
    for ax, (col, label) in zip(axes, panels, strict=True):
        ax.plot(view.time, view.table[col].to_numpy(float), ".-", ms=3, lw=0.6)
        ax.set_ylabel(label, fontsize="small")
    if "zero_point" in view.table:
        axes[0].set_title("per-frame conditions")
    axes[-1].set_xlabel(f"MJD - {t0:.0f} (d)")
    return fig


def plot_frames(frames: pd.DataFrame, path: str | Path) -> Path:
    """Write `frames_figure` as a PNG at ``path`` and return the path."""
    return _save(frames_figure(frames), path)


# --------------------------------------------------------------------------------------------
# all of them


def run_plot_names(sources: pd.DataFrame, *, coadd: bool = False) -> list[str]:
    """The plots that a run's data allow, in the order `write_plots` writes them.

    Parameters
    ----------
    sources
        The sources table (``is_target``, ``kind``).
    coadd
        The run has a co-add (``movers_coadd.png`` then goes with ``movers.png``).

    Returns
    -------
    list of str
        Names of `RUN_PLOTS`: ``target`` when there is a target, ``variables``, ``movers``
        and ``movers_coadd`` when there are such sources; ``scatter_magnitude`` and ``frames``
        always.
    """
    names = []
    if sources["is_target"].to_numpy(bool).any():
        names.append("target")
    if len(ranked_variables(sources)):
        names.append("variables")
    if (sources["kind"] == "moving").any():
        names.append("movers")
        if coadd:
            names.append("movers_coadd")
    return [*names, "scatter_magnitude", "frames"]


def _write_plot(
    name: str,
    ds: xr.Dataset,
    sources: pd.DataFrame,
    out: Path,
    *,
    frames: pd.DataFrame | None,
    coadd: str | Path | tuple[np.ndarray, object] | None,
    max_variables: int,
) -> Path:
    """Write one of `RUN_PLOTS` into ``out`` (`write_plots` and `write_run_plot`)."""
    path = out / f"{name}.png"
    if name == "target":
        return plot_target(ds, sources, path)
    if name == "variables":
        return plot_variables(ds, sources, path, max_panels=max_variables)
    if name == "movers":
        return plot_movers(ds, sources, path)
    if name == "movers_coadd":
        if coadd is None:
            raise ValueError("movers_coadd.png needs a co-add; this run has no coadd.fits")
        return plot_movers_coadd(coadd, ds, sources, path)
    if name == "scatter_magnitude":
        return plot_scatter_magnitude(sources, path)
    if name == "frames":
        return plot_frames(with_frame_coords(frames, ds), path)
    raise ValueError(f"unknown plot {name!r}; the plots are {', '.join(RUN_PLOTS)}")


def write_plots(
    ds: xr.Dataset,
    sources: pd.DataFrame,
    out_dir: str | Path,
    *,
    frames: pd.DataFrame | None = None,
    coadd: str | Path | tuple[np.ndarray, object] | None = None,
    max_variables: int = 12,
) -> list[Path]:
    """Write every plot that the data allow into ``out_dir`` (module docstring).

    Parameters
    ----------
    ds
        The light-curve Dataset (may be lazy: only the plotted sources are read).
    sources
        The sources table.
    out_dir
        The folder (``RUN/plots``); created when missing.
    frames
        The per-frame table; default the light curves' frame coordinates.
    coadd
        ``coadd.fits`` or ``(image, wcs)``: the movers are also drawn over it.
    max_variables
        Panels of ``variables.png``.

    Returns
    -------
    list of Path
        The files written (`run_plot_names`). ``target.png`` only when there is a target;
        ``variables.png``, ``movers.png`` and ``movers_coadd.png`` only when there are such
        sources.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        _write_plot(name, ds, sources, out, frames=frames, coadd=coadd, max_variables=max_variables)
        for name in run_plot_names(sources, coadd=coadd is not None)
    ]


def write_run_plot(run_dir: str | Path, name: str, *, out_dir: str | Path | None = None) -> Path:
    """Read a run directory and write one of its plots: a task of `write_run_plots`.

    Parameters
    ----------
    run_dir
        The run directory.
    name
        One of `RUN_PLOTS` that the run allows (`run_plot_names`).
    out_dir
        Another folder for the PNG file (default ``RUN/plots``); created when missing.

    Returns
    -------
    Path
        The file written.

    Raises
    ------
    ValueError
        For an unknown name, or ``movers_coadd`` in a run without a co-add.
    """
    from lcdask.io.products import read_run

    run = read_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    # read the few chunks in this task: through the cluster, each small read is a round trip
    # of the scheduler and waits for a worker's thread, busy with the other figures
    with dask.config.set(scheduler="synchronous"):
        return _write_plot(
            name,
            run.lightcurves,
            run.sources,
            out,
            frames=run.frames,
            coadd=run.coadd_path,
            max_variables=12,
        )


def submit_run_plots(run_dir: str | Path, client, *, out_dir: str | Path | None = None) -> list:
    """Start writing a run's plots on a Dask cluster, one task per figure; do not wait.

    Parameters
    ----------
    run_dir
        The run directory, seen by the workers at the same path.
    client : distributed.Client
        The cluster.
    out_dir
        Another folder for the PNG files.

    Returns
    -------
    list of distributed.Future
        One per plot, in the order of `run_plot_names`; each gives the `~pathlib.Path` written
        (`lcdask.stages._parallel.gather_results`).
    """
    from lcdask.io.products import RunProducts

    run = RunProducts(Path(run_dir))
    names = run_plot_names(run.sources, coadd=run.coadd_path is not None)
    futures = {
        name: submit_task(
            client,
            write_run_plot,
            str(run.path),
            name,
            out_dir=None if out_dir is None else str(out_dir),
            name=f"plot-{name}",
            priority=_PLOT_COST.get(name, 0),
        )
        for name in sorted(names, key=lambda n: -_PLOT_COST.get(n, 0))
    }
    return [futures[name] for name in names]


def write_run_plots(
    run_dir: str | Path, *, out_dir: str | Path | None = None, client=None
) -> list[Path]:
    """Read a run directory and write its plots (`write_plots`) into ``RUN/plots``.

    Parameters
    ----------
    run_dir
        The run directory.
    out_dir
        Another folder for the PNG files.
    client : distributed.Client, optional
        Draw the figures on this cluster, one task per figure (`submit_run_plots`), in
        parallel; in this process, one after the other, when None.

    Returns
    -------
    list of Path
        The files written.
    """
    if client is not None:
        return gather_results(client, submit_run_plots(run_dir, client, out_dir=out_dir), "plots")
    from lcdask.io.products import read_run

    run = read_run(run_dir)
    return write_plots(
        run.lightcurves,
        run.sources,
        Path(out_dir) if out_dir is not None else run.run_dir / "plots",
        frames=run.frames,
        coadd=run.coadd_path,
    )
