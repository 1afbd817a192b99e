"""The run's HTML report (``RUN/report.html``): interactive bokeh plots in one offline page.

`write_report` reads a run directory and writes a standalone page with bokeh's JavaScript inline
(`bokeh.resources.INLINE`), so that it opens without a network. `build_report` returns the
bokeh layout for notebooks (``bokeh.io.show(build_report(lcdask.open_run(RUN)))``). Each section
draws the data of its view from `lcdask.products.views`, as the PNG plots (`lcdask.plots`) do.

Every plot and data source carries a stable ``name`` (`REPORT_NAMES`), so that scripts and tests
find them with ``doc.select_one({"name": ...})`` or, in the page,
``Bokeh.documents[0].get_model_by_name(...)``:

==========================  =====================================================================
name                        content
==========================  =====================================================================
``summary``                 Div: counts per class, frames, time span, target, comparison stars
``target_lightcurve``       target ``rel_flux`` against time with errors (source
                            ``target_source``: ``time_mjd``, ``rel_flux``, ``rel_flux_err``...)
                            and binned points (``target_binned_source``)
``target_comparison``       the comparison stars' ``rel_flux`` (offset) and the transparency
``variables``               grid of the variables' light curves (``variable_<source_id>``)
``mover_tracks``            RA/Dec of the movers' detections and fitted motion
                            (``mover_tracks_source``)
``movers_coadd``            the tracks over the co-add (when ``coadd.fits`` exists)
``scatter_magnitude``       robust scatter against magnitude by class, with hover (source id)
                            (``scatter_source``), expected scatter and noise model
``frame_<quantity>``        per-frame zero point, FWHM, sky, airmass... against time
                            (``frames_source``)
==========================  =====================================================================
"""

from __future__ import annotations

import html
from dataclasses import replace
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import xarray as xr

from lcdask.io.atomic import atomic_path
from lcdask.io.products import RunProducts, read_run
from lcdask.plots import submit_run_plots, warm_up, write_run_plots
from lcdask.products.views import (
    KIND_COLOURS,
    MoversView,
    coadd_view,
    frames_view,
    movers_view,
    scatter_view,
    target_view,
    variables_view,
)
from lcdask.stages._parallel import gather_results, on_each_worker, submit_task

__all__ = ["REPORT_NAMES", "build_report", "warm_workers", "write_report", "write_run_report"]

REPORT_NAMES = (
    "summary",
    "target_lightcurve",
    "target_comparison",
    "variables",
    "mover_tracks",
    "movers_coadd",
    "scatter_magnitude",
    "frames",
)
"""Names of the report's sections (``frames`` holds the ``frame_<quantity>`` plots)."""

_WIDTH = 900
_REPORT_PRIORITY = 10  # the page starts before the figures (lcdask.plots._PLOT_COST: 2 to 5)
_TOOLS = ("pan", "box_zoom", "wheel_zoom", "reset", "save")
_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def _finite(a: np.ndarray) -> np.ndarray:
    """NaN where not finite (bokeh sends NaN as a gap; infinities break JSON)."""
    a = np.asarray(a, dtype=float)
    return np.where(np.isfinite(a), a, np.nan)


def _note(text: str, name: str):
    from bokeh.models import Div

    return Div(text=f"<p><i>{html.escape(text)}</i></p>", name=name, width=_WIDTH)


def _heading(text: str):
    from bokeh.models import Div

    return Div(text=f"<h2>{html.escape(text)}</h2>", width=_WIDTH)


def _summary(run: RunProducts, ds: xr.Dataset) -> Any:
    from bokeh.models import Div

    sources = run.sources
    counts = sources["kind"].value_counts()
    t = np.asarray(ds["time_mjd"].to_numpy(), dtype=float)
    span_h = float(np.nanmax(t) - np.nanmin(t)) * 24.0 if t.size else 0.0
    rows = [
        ("run", str(run.run_dir)),
        ("frames", f"{ds.sizes['frame']}"),
        (
            "time span",
            f"MJD {np.nanmin(t):.5f} to {np.nanmax(t):.5f} ({span_h:.2f} h)" if t.size else "-",
        ),
        ("sources", f"{len(sources)}"),
    ]
    shown = {"artefact": "artefact (fixed on the detector: hot pixels, columns)"}
    rows += [(f"&nbsp;&nbsp;{shown.get(k, k)}", f"{int(counts.get(k, 0))}") for k in KIND_COLOURS]
    rows.append(("comparison stars", f"{int(sources['is_comparison'].sum())}"))
    target = sources[sources["is_target"].to_numpy(bool)]
    if len(target):
        r = target.iloc[0]
        rows.append(
            (
                "target",
                f"source {int(r['source_id'])}: RA {r['ra']:.6f}, Dec {r['dec']:+.6f}, "
                f"mag {r['mag']:.3f}, {r['kind']}, {int(r['n_frames'])} frames",
            )
        )
        rows.append(("target photometry", _target_photometry_line(run.record)))
    else:
        rows.append(("target", _target_absent(run.record)))
    if run.coadd_path is not None:
        rows.append(("co-add", html.escape(run.coadd_path.name)))
    body = "".join(
        f"<tr><th style='text-align:left;padding-right:1em'>{k}</th>"
        f"<td>{v if k.startswith('&') else html.escape(v)}</td></tr>"
        for k, v in rows
    )
    return Div(
        text=f"<h1>lcdask run report</h1><table id='summary-table'>{body}</table>",
        name="summary",
        width=_WIDTH,
    )


def _hover(fig, renderers, tooltips):
    from bokeh.models import HoverTool

    fig.add_tools(HoverTool(renderers=list(renderers), tooltips=tooltips))


def _figure(name: str, title: str, *, height: int = 300, width: int = _WIDTH, **kwargs: Any):
    from bokeh.models import Tool
    from bokeh.plotting import figure

    fig = figure(name=name, title=title, width=width, height=height, tools=[], **kwargs)
    # the same tools as figure(tools="pan,box_zoom,..."), added after: figure() compares every
    # pair of its tools for repeats, a fifth of the time of building the report's figures
    fig.add_tools(*(Tool.from_string(tool) for tool in _TOOLS))
    return fig


def _mjd_axis(fig) -> None:
    from bokeh.models import BasicTickFormatter

    fig.xaxis.formatter = BasicTickFormatter(use_scientific=False)
    fig.xaxis.axis_label = "MJD"


def _target_photometry_line(record: dict) -> str:
    """What the light-curve stage chose for the target (`lcdask.target_photometry`), and why."""
    chosen = record.get("stages", {}).get("lightcurves", {}).get("target_photometry")
    if not chosen:
        return "the run-wide relative flux (no choice recorded)"
    cv = chosen.get("cv") or {}
    judged = (
        f"; on the frames not chosen on {cv['judged_chosen_pct']:.3f}% against "
        f"{cv['judged_default_pct']:.3f}%"
        if cv.get("judged_chosen_pct") is not None and cv.get("judged_default_pct") is not None
        else ""
    )
    if not chosen.get("adopted"):
        return f"the run-wide relative flux kept: {chosen.get('why', '')}{judged}"
    radius, unit = chosen.get("aperture_radius"), chosen.get("aperture_unit", "")
    ids = ", ".join(str(i) for i in chosen.get("comparison_ids", []))
    return (
        f"aperture {chosen.get('aperture')} ({radius:g} {unit}), "
        f"{chosen.get('n_comparison', 0)} comparison stars ({ids}); scatter "
        f"{chosen.get('scatter_chosen_pct', float('nan')):.3f}% against the run-wide "
        f"{chosen.get('scatter_default_pct', float('nan')):.3f}%{judged}; "
        f"{chosen.get('n_outliers', 0)} outliers flagged"
    )


def _number(value: float) -> str:
    """A parameter's value: times (BJD) to 1e-6 d (0.09 s), the others to 6 digits."""
    return f"{value:.6f}" if abs(value) >= 1000 else f"{value:.6g}"


def _transit_fit_section(run_dir: Path) -> list:
    """The fitted transit (`lcdask transit RUN`, `lcdask.transit.transit_section`): a table of
    the parameters with their errors and status, the residual scatter; nothing without a fit."""
    from bokeh.models import Div

    from lcdask.transit import transit_section

    section = transit_section(run_dir)
    if section is None:
        return []
    rows = []
    for name, p in (section.get("parameters") or {}).items():
        value, minus, plus = p.get("value"), p.get("minus"), p.get("plus")
        if value is None:
            continue
        error = f"-{minus:.6g} +{plus:.6g}" if minus is not None and plus is not None else ""
        note = p.get("note") or ""
        rows.append(
            f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(name)}</th>"
            f"<td>{_number(value)} {html.escape(str(p.get('unit') or ''))}</td>"
            f"<td>{html.escape(error)}</td><td>{html.escape(str(p.get('status', '')))}</td>"
            f"<td>{html.escape(str(note))}</td></tr>"
        )
    rms, rms10 = section.get("rms"), section.get("rms_10min")
    scatter = (
        f"residual scatter {100 * rms:.3f}% per frame, {100 * rms10:.3f}% per 10 minutes"
        if rms is not None and rms10 is not None
        else ""
    )
    figure = (section.get("files") or {}).get("figure", "")
    text = (
        f"<p>{html.escape(str(section.get('planet_name') or ''))}: "
        f"{section.get('n_points', 0)} points fitted, {section.get('n_flagged', 0)} flagged, "
        f"{section.get('n_clipped', 0)} clipped; {html.escape(scatter)}"
        + (f"; figure <code>{html.escape(figure)}</code>" if figure else "")
        + f"</p><table id='transit-table'>{''.join(rows)}</table>"
    )
    return [_heading("Transit fit"), Div(text=text, name="transit_fit", width=_WIDTH)]


def _target_absent(record: dict) -> str:
    """What the report says when no source is the target: none given, or why not found."""
    given = record.get("target") or {}
    if not given:
        return 'No target given (lcdask run --target "RA DEC" or a name).'
    if given.get("message"):
        return str(given["message"])
    return (
        f"target given at RA {given.get('ra', float('nan')):.5f} "
        f"Dec {given.get('dec', float('nan')):+.5f}, not found (the run did not say why)"
    )


def _target_section(
    ds: xr.Dataset, sources: pd.DataFrame, record: dict, *, n_comparison: int, n_bins: int
):
    from bokeh.layouts import column
    from bokeh.models import ColumnDataSource, Whisker

    view = target_view(
        ds,
        sources,
        n_comparison=n_comparison,
        n_bins=n_bins,
        comparison_order="mag",
        offset_time=False,
    )
    if view is None:
        return _note(_target_absent(record), "target_none")
    row = view.row
    sid = view.source_id
    t = view.time_mjd
    rel = _finite(view.rel_flux)
    err = _finite(view.rel_flux_err)
    source = ColumnDataSource(
        {
            "time_mjd": t,
            "frame": view.frame,
            "rel_flux": rel,
            "rel_flux_err": err,
            "lower": rel - err,
            "upper": rel + err,
            "mag": _finite(view.mag),
            "flags": view.flags,
        },
        name="target_source",
    )
    binned = view.binned
    bsource = ColumnDataSource(
        {
            "time_mjd": binned["time"].to_numpy(),
            "rel_flux": binned["value"].to_numpy(),
            "rel_flux_err": binned["error"].to_numpy(),
            "lower": (binned["value"] - binned["error"]).to_numpy(),
            "upper": (binned["value"] + binned["error"]).to_numpy(),
            "n": binned["n"].to_numpy().astype(np.int64),
        },
        name="target_binned_source",
    )
    fig = _figure(
        "target_lightcurve",
        f"target: source {sid}, RA {row['ra']:.5f} Dec {row['dec']:+.5f}, "
        f"mag {row['mag']:.2f} ({row['kind']})",
        height=380,
        y_axis_label="relative flux",
    )
    _mjd_axis(fig)
    fig.add_layout(
        Whisker(
            source=source,
            base="time_mjd",
            lower="lower",
            upper="upper",
            line_alpha=0.35,
            line_color="gray",
            upper_head=None,
            lower_head=None,
        )
    )
    pts = fig.scatter(
        "time_mjd", "rel_flux", source=source, size=4, color="gray", legend_label="frames"
    )
    fig.add_layout(
        Whisker(source=bsource, base="time_mjd", lower="lower", upper="upper", line_color="red")
    )
    bins = fig.scatter(
        "time_mjd",
        "rel_flux",
        source=bsource,
        size=8,
        color=KIND_COLOURS["variable"],
        legend_label=f"binned ({n_bins} bins)",
        name="target_binned",
    )
    _hover(
        fig,
        [pts],
        [
            ("frame", "@frame"),
            ("MJD", "@time_mjd{0.00000}"),
            ("rel. flux", "@rel_flux{0.0000} ± @rel_flux_err{0.0000}"),
            ("mag", "@mag{0.000}"),
            ("flags", "@flags"),
        ],
    )
    _hover(
        fig, [bins], [("MJD", "@time_mjd{0.00000}"), ("binned", "@rel_flux{0.0000}"), ("n", "@n")]
    )
    fig.legend.location = "bottom_left"
    fig.legend.click_policy = "hide"
    children = [fig]
    comp_ids = view.comparison_ids
    if comp_ids.size:
        crel = view.comparison_rel_flux
        step = view.comparison_step
        cfig = _figure(
            "target_comparison",
            f"{comp_ids.size} of {view.n_comparison_stars} comparison stars "
            f"(offsets of {step:.3g})",
            height=320,
            x_range=fig.x_range,
            y_axis_label="relative flux - offset",
        )
        _mjd_axis(cfig)
        # one source and one glyph for all the stars (a renderer per star made the page slow)
        n_comp = comp_ids.size
        offset = np.repeat(view.comparison_offset, t.size)
        colours = [_PALETTE[k % len(_PALETTE)] for k in range(n_comp)]
        csrc = ColumnDataSource(
            {
                "time_mjd": np.tile(t, n_comp),
                "rel_flux": _finite(crel).ravel(),
                "shown": _finite(crel).ravel() - offset,
                "source_id": np.repeat(comp_ids, t.size),
                "colour": np.repeat(colours, t.size),
            },
            name="comparison_source",
        )
        pts = cfig.scatter("time_mjd", "shown", source=csrc, size=3, color="colour")
        _hover(
            cfig,
            [pts],
            [("source", "@source_id"), ("MJD", "@time_mjd{0.00000}"), ("rel. flux", "@rel_flux")],
        )
        children.append(cfig)
    return column(children, name="target_section")


def _variables_section(ds: xr.Dataset, sources: pd.DataFrame, *, max_variables: int):
    from bokeh.layouts import gridplot
    from bokeh.models import ColumnDataSource

    view = variables_view(ds, sources, max_shown=max_variables, offset_time=False)
    var, shown = view.ranked, view.shown
    if var.empty:
        return _note("No variable sources (besides the target).", "variables_none")
    t = view.time_mjd
    figs = []
    for k, (_, row) in enumerate(shown.iterrows()):
        sid = int(row["source_id"])
        rel = _finite(view.rel_flux[k])
        err = _finite(view.rel_flux_err[k])
        src = ColumnDataSource(
            {"time_mjd": t, "rel_flux": rel, "rel_flux_err": err}, name=f"variable_source_{sid}"
        )
        fig = _figure(
            f"variable_{sid}",
            f"source {sid}, mag {row['mag']:.2f}, ratio {row.get('scatter_ratio', np.nan):.1f}",
            height=240,
            width=_WIDTH // 3,
        )
        _mjd_axis(fig)
        fig.xaxis.ticker.desired_num_ticks = 3
        pts = fig.scatter("time_mjd", "rel_flux", source=src, size=3, color="gray")
        b = view.binned[k]
        fig.line(b["time"].to_numpy(), b["value"].to_numpy(), color=KIND_COLOURS["variable"])
        _hover(fig, [pts], [("MJD", "@time_mjd{0.00000}"), ("rel. flux", "@rel_flux{0.0000}")])
        figs.append(fig)
    grid = gridplot(figs, ncols=3)
    grid.name = "variables"
    if len(var) > len(shown):
        from bokeh.layouts import column

        return column(
            [_note(f"{len(shown)} of {len(var)} variables, most significant first.", "v"), grid]
        )
    return grid


def _with_colours(view: MoversView) -> MoversView:
    """The movers' tracks with a ``colour`` column: the palette in the order of the movers."""
    ids = view.movers["source_id"].to_numpy(np.int64)
    colour = {int(s): _PALETTE[k % len(_PALETTE)] for k, s in enumerate(ids)}
    return replace(view, tracks=view.tracks.assign(colour=view.tracks["source_id"].map(colour)))


def _movers_section(ds: xr.Dataset, sources: pd.DataFrame, coadd_path, *, coadd_pixels: int):
    from bokeh.layouts import column
    from bokeh.models import ColumnDataSource

    view = movers_view(ds, sources)
    if view.tracks.empty:
        return _note("No moving sources.", "movers_none")
    view = _with_colours(view)
    tracks = view.tracks
    src = ColumnDataSource(
        {
            "source_id": tracks["source_id"].to_numpy(np.int64),
            "time_mjd": tracks["time_mjd"].to_numpy(float),
            "ra": tracks["ra"].to_numpy(float),
            "dec": tracks["dec"].to_numpy(float),
            "rate_arcsec_h": _finite(tracks["rate_arcsec_h"].to_numpy()),
            "colour": tracks["colour"].to_numpy(str),
        },
        name="mover_tracks_source",
    )
    n = tracks["source_id"].nunique()
    fig = _figure(
        "mover_tracks",
        f"tracks of {n} moving sources (RA increases to the left)",
        height=520,
        x_axis_label="RA (deg)",
        y_axis_label="Dec (deg)",
        match_aspect=True,
    )
    fig.x_range.flipped = True
    pts = fig.scatter("ra", "dec", source=src, color="colour", size=4)
    for sid, g in tracks.groupby("source_id", sort=False):
        fig.line(
            _finite(g["ra_fit"].to_numpy()),
            _finite(g["dec_fit"].to_numpy()),
            color=str(g["colour"].iloc[0]),
            line_width=1.5,
            legend_label=f'{sid}: {g["rate_arcsec_h"].iloc[0]:.1f}"/h',
        )
    fig.legend.click_policy = "hide"
    _hover(
        fig,
        [pts],
        [
            ("source", "@source_id"),
            ("MJD", "@time_mjd{0.00000}"),
            ("RA, Dec", "@ra{0.000000}, @dec{0.000000}"),
            ("rate", '@rate_arcsec_h{0.00} "/h'),
        ],
    )
    children = [fig]
    if coadd_path is not None:
        try:
            children.append(_coadd_figure(coadd_path, view, sources, coadd_pixels=coadd_pixels))
        except (OSError, ValueError) as exc:
            children.append(_note(f"The co-add could not be shown: {exc}", "movers_coadd_error"))
    return column(children, name="movers_section")


def _coadd_figure(coadd_path: Path, movers: MoversView, sources: pd.DataFrame, *, coadd_pixels):
    from bokeh.models import ColumnDataSource

    view = coadd_view(coadd_path, movers, sources, max_pixels=coadd_pixels)
    ny, nx = view.shape
    grey = view.grey()
    height = int(min(700, 700 * ny / max(nx, 1)))
    fig = _figure(
        "movers_coadd",
        f"moving sources over the co-add ({nx}x{ny} px)",
        height=height + 40,
        width=int(height * nx / max(ny, 1)) + 60,
        x_axis_label="x (px)",
        y_axis_label="y (px)",
        x_range=(-0.5, nx - 0.5),
        y_range=(-0.5, ny - 0.5),
        match_aspect=True,
    )
    from bokeh.palettes import Greys256

    fig.image(
        image=[grey],
        x=-0.5,
        y=-0.5,
        dw=nx,
        dh=ny,
        palette=Greys256,
        name="coadd_image",
    )
    tracks = view.tracks
    src = ColumnDataSource(
        {
            "x": _finite(tracks["x"].to_numpy()),
            "y": _finite(tracks["y"].to_numpy()),
            "source_id": tracks["source_id"].to_numpy(np.int64),
            "time_mjd": tracks["time_mjd"].to_numpy(float),
            "colour": tracks["colour"].to_numpy(str),
        },
        name="movers_coadd_source",
    )
    pts = fig.scatter("x", "y", source=src, color="colour", size=3)
    _hover(fig, [pts], [("source", "@source_id"), ("MJD", "@time_mjd{0.00000}")])
    if view.target_x.size:
        fig.scatter(
            _finite(view.target_x),
            _finite(view.target_y),
            marker="circle",
            size=24,
            fill_alpha=0,
            line_color="red",
            line_width=2,
            legend_label="target",
        )
    return fig


def _scatter_section(sources: pd.DataFrame):
    from bokeh.models import ColumnDataSource

    view = scatter_view(sources)
    mag = view.mag
    scatter = view.positive_scatter
    kind = view.kind
    src = ColumnDataSource(
        {
            "source_id": sources["source_id"].to_numpy(np.int64),
            "mag": _finite(mag),
            "mad_scatter": _finite(scatter),
            "expected_scatter": _finite(sources["expected_scatter"].to_numpy(float)),
            "scatter_ratio": _finite(sources["scatter_ratio"].to_numpy(float)),
            "kind": kind,
            "colour": np.array([KIND_COLOURS.get(k, "black") for k in kind]),
            "is_comparison": view.is_comparison,
            "is_target": view.is_target,
            "n_frames": sources["n_frames"].to_numpy(np.int64),
        },
        name="scatter_source",
    )
    fig = _figure(
        "scatter_magnitude",
        f"robust scatter against magnitude, {len(sources)} sources",
        height=520,
        y_axis_type="log",
        x_axis_label="magnitude",
        y_axis_label="robust scatter of the relative flux (1.4826 MAD)",
    )
    pts = fig.scatter(
        "mag", "mad_scatter", source=src, color="colour", legend_field="kind", size=5, alpha=0.8
    )
    for col, dash, label in (
        ("expected_scatter", "solid", "expected scatter"),
        ("noise_model", "dashed", "noise model"),
    ):
        if col in view.curves:
            curve = view.curves[col]
            fig.line(
                curve["mag"].to_numpy(),
                curve["value"].to_numpy(),
                color="black",
                line_dash=dash,
                legend_label=label,
                name=f"curve_{col}",
            )
    comp = view.is_comparison
    if comp.any():
        fig.scatter(
            mag[comp],
            scatter[comp],
            size=10,
            fill_alpha=0,
            line_color="black",
            legend_label="comparison",
        )
    target = view.is_target
    if target.any():
        fig.scatter(
            mag[target],
            scatter[target],
            marker="star",
            size=18,
            fill_color="gold",
            line_color="black",
            legend_label="target",
        )
    _hover(
        fig,
        [pts],
        [
            ("source", "@source_id"),
            ("kind", "@kind"),
            ("mag", "@mag{0.000}"),
            ("scatter", "@mad_scatter{0.00000}"),
            ("expected", "@expected_scatter{0.00000}"),
            ("ratio", "@scatter_ratio{0.00}"),
            ("frames", "@n_frames"),
        ],
    )
    fig.legend.location = "top_left"
    fig.legend.click_policy = "hide"
    return fig


def _frames_section(frames: pd.DataFrame, ds: xr.Dataset):
    from bokeh.layouts import column
    from bokeh.models import ColumnDataSource

    view = frames_view(frames, ds)
    table, panels = view.table, view.panels
    if view.time_mjd is None:
        return _note("The per-frame table has no time_mjd.", "frames_none")
    if not panels:
        return _note("No per-frame quantities to show.", "frames_none")
    data = {"time_mjd": view.time_mjd}
    if "frame" in table:
        data["frame"] = table["frame"].to_numpy(np.int64)
    for col, _ in panels:
        data[col] = _finite(table[col].to_numpy(float))
    src = ColumnDataSource(data, name="frames_source")
    figs = []
    x_range = None
    for col, label in panels:
        kw = {"x_range": x_range} if x_range is not None else {}
        fig = _figure(f"frame_{col}", label, height=180, y_axis_label=label, **kw)
        _mjd_axis(fig)
        x_range = fig.x_range
        fig.line("time_mjd", col, source=src, line_width=1)
        pts = fig.scatter("time_mjd", col, source=src, size=3)
        tips = [("MJD", "@time_mjd{0.00000}"), (label, f"@{col}")]
        if "frame" in data:
            tips.insert(0, ("frame", "@frame"))
        _hover(fig, [pts], tips)
        figs.append(fig)
    return column(figs, name="frames")


def build_report(
    run: RunProducts,
    *,
    max_variables: int = 12,
    n_comparison: int = 8,
    n_bins: int = 25,
    coadd_pixels: int = 500,
) -> Any:
    """The report's bokeh layout (module docstring) for a run.

    Parameters
    ----------
    run
        From `lcdask.io.products.read_run` (or `lcdask.open_run`).
    max_variables
        At most this many variables' light curves, the most significant first.
    n_comparison
        Comparison stars shown with the target.
    n_bins
        Bins of the binned target light curve.
    coadd_pixels
        The co-add is decimated to about this many pixels on a side.

    Returns
    -------
    bokeh.models.LayoutDOM
        A column of the sections.
    """
    from bokeh.layouts import column

    ds = run.lightcurves
    sections = [
        _summary(run, ds),
        _heading("Target"),
        _target_section(ds, run.sources, run.record, n_comparison=n_comparison, n_bins=n_bins),
        *_transit_fit_section(run.run_dir),
        _heading("Variable sources"),
        _variables_section(ds, run.sources, max_variables=max_variables),
        _heading("Moving sources"),
        _movers_section(ds, run.sources, run.coadd_path, coadd_pixels=coadd_pixels),
        _heading("Scatter against magnitude"),
        _scatter_section(run.sources),
        _heading("Per-frame conditions"),
        _frames_section(run.frames, ds),
    ]
    return column(sections, name="report")


class _Collected:
    """A document's models, already collected, where bokeh's bundle looks for ``references()``."""

    def __init__(self, doc: Any) -> None:
        self._models = set(doc.models)

    def references(self) -> set:
        return self._models


def _page(layout: Any, *, title: str) -> str:
    """The standalone HTML page of a layout, bokeh's JavaScript inline.

    What `bokeh.embed.file_html` writes with ``resources=INLINE``, with its document's models
    collected once (by ``add_root``) rather than four times. Left out: the validation of the
    document (a quarter of a second for the ~1000 models of a report, to log warnings only;
    tests/test_report.py checks that the report's document has no issue), and the warning
    about Python callbacks, which the report has none of; the bundle of JavaScript (which
    components: widgets, tables, WebGL, MathJax) is chosen from the collected models, as bokeh
    would from the document's roots.
    """
    from bokeh.document import Document
    from bokeh.embed.bundle import bundle_for_objs_and_resources
    from bokeh.embed.elements import html_page_for_render_items
    from bokeh.embed.util import RenderItem
    from bokeh.resources import INLINE
    from bokeh.util.serialization import (
        make_globally_unique_css_safe_id,
        make_globally_unique_id,
    )

    doc = Document()
    doc.add_root(layout)
    docid = make_globally_unique_id()
    docs_json = {docid: doc.to_json(deferred=False)}
    render_items = [RenderItem(docid, roots={layout: make_globally_unique_css_safe_id()})]
    bundle = bundle_for_objs_and_resources([_Collected(doc)], INLINE)
    return html_page_for_render_items(bundle, docs_json, render_items, title=title)


def write_report(
    run_dir: str | Path, *, out: str | Path | None = None, client=None, **kwargs: Any
) -> Path:
    """Write ``RUN/report.html``: the run's plots as one standalone, offline bokeh page.

    Parameters
    ----------
    run_dir
        The run directory (``sources.parquet``, ``lightcurves.zarr``; ``frames.parquet`` and
        ``coadd.fits`` when present).
    out
        Another path for the page.
    client : distributed.Client, optional
        Build the page in a task on this cluster (the run directory seen by the workers at the
        same path); in this process when None.
    **kwargs
        Passed to `build_report` (``max_variables``, ``n_comparison``, ``n_bins``,
        ``coadd_pixels``).

    Returns
    -------
    Path
        The page, written atomically.
    """
    if client is not None:
        page = _submit_report(run_dir, client, out=out, **kwargs)
        return gather_results(client, [page], "report")[0]
    run = read_run(run_dir)
    # the light curves' few selected chunks are read here, not sent through the cluster (with a
    # default Client, a round trip per read, behind the workers' other tasks: the figures)
    with dask.config.set(scheduler="synchronous"):
        layout = build_report(run, **kwargs)
    page = _page(layout, title=f"lcdask report: {run.run_dir.name}")
    path = Path(out) if out is not None else run.run_dir / "report.html"
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def _submit_report(run_dir: str | Path, client, *, out: str | Path | None = None, **kwargs: Any):
    """Start `write_report` in a task on the cluster, before the figures; return its future."""
    return submit_task(
        client,
        write_report,
        str(run_dir),
        out=None if out is None else str(out),
        name="report",
        priority=_REPORT_PRIORITY,
        **kwargs,
    )


def _warm_up() -> None:
    """`lcdask.plots.warm_up`, then bokeh imported and a small page built in memory."""
    from bokeh.layouts import column, gridplot

    warm_up()
    fig = _figure("warm_up", "warm up", height=100, width=100)
    _mjd_axis(fig)
    pts = fig.scatter([0.0, 1.0], [0.0, 1.0], size=3, color="gray")
    fig.line([0.0, 1.0], [0.0, 1.0], color=KIND_COLOURS["variable"])
    _hover(fig, [pts], [("x", "@x")])
    _page(column([_heading("warm up"), gridplot([fig], ncols=1)]), title="warm up")


def warm_workers(client) -> None:
    """Prepare each of the cluster's workers for the report stage, in a task; do not wait.

    Each worker imports matplotlib and loads its fonts (`lcdask.plots.warm_up`), imports bokeh
    and builds a small page, while it would be idle, before the report stage gives it a figure
    or the page (`write_run_report`): about 1 s of the first figure and 0.7 s of the page.
    `lcdask.run` calls this as the light-curve stage starts (the driver then matches and
    classifies for seconds, the workers wait). The tasks come last (low priority) and are not
    waited for (`lcdask.stages._parallel.on_each_worker`).

    Parameters
    ----------
    client : distributed.Client
        The cluster.
    """
    on_each_worker(client, _warm_up, name="warm-up")


def write_run_report(run_dir: str | Path, *, client=None) -> tuple[Path, list[Path]]:
    """Write a run's report page and its PNG plots: the run's last stage.

    Parameters
    ----------
    run_dir
        The run directory.
    client : distributed.Client, optional
        The cluster's workers build the page and draw the PNG figures, one task each
        (`lcdask.plots.submit_run_plots`), the page first (the dearest: ~2.5 s of CPU on a
        100-frame 2048^2 run, the figures 0.4-1.3 s each on a worker warmed by
        `warm_workers`), while this process waits: it would be a third busy process on a
        2-core machine, importing bokeh within the stage. All of it here, one after the
        other, when None.

    Returns
    -------
    tuple
        ``report.html`` (`write_report`) and the PNG files (`lcdask.plots.write_run_plots`).
    """
    if client is None:
        plots = write_run_plots(run_dir)
        return write_report(run_dir), plots
    page = _submit_report(run_dir, client)
    pending = submit_run_plots(run_dir, client)
    page_path, *plots = gather_results(client, [page, *pending], "report")
    return page_path, plots
