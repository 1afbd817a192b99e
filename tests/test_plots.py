"""PNG plots of a run: files written, valid images, and the plotted data against the tables."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_report import coadd_wcs, transit_depth, write_simulated_run

from lcdask.plots import (
    bin_lightcurve,
    frames_figure,
    movers_coadd_figure,
    movers_figure,
    scatter_magnitude_figure,
    target_figure,
    variables_figure,
    with_frame_coords,
    write_plots,
    write_run_plots,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    truth, ds, sources = write_simulated_run(run_dir)
    return run_dir, truth, ds, sources


@pytest.fixture(scope="module")
def written(run):
    run_dir, *_ = run
    return write_run_plots(run_dir)


def _by_gid(ax, gid):
    found = [a for a in (*ax.collections, *ax.lines) if a.get_gid() == gid]
    assert len(found) == 1, gid
    return found[0]


def test_run_plots_are_valid_pngs(run, written):
    run_dir, *_ = run
    names = [p.name for p in written]
    assert names == [
        "target.png",
        "variables.png",
        "movers.png",
        "movers_coadd.png",
        "scatter_magnitude.png",
        "frames.png",
    ]
    for path in written:
        assert path.parent == run_dir / "plots"
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert 20_000 < path.stat().st_size < 5_000_000, path
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert im.width >= 600 and im.height >= 250, (path.name, im.size)
            grey = np.asarray(im.convert("L"), dtype=float)
        assert grey.std() > 10, path.name  # not blank
    assert not list((run_dir / "plots").glob(".*tmp-*"))  # written atomically


def test_run_plots_on_a_cluster_are_the_same(run, written, tmp_path, dask_local_client):
    # one task per figure and one for the page on the workers: the same files, pixel for pixel
    from distributed import get_task_stream

    from lcdask.report import write_report, write_run_report

    run_dir, *_ = run
    other = tmp_path / "run"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("plots", "report.html"))
    with get_task_stream(dask_local_client) as tasks:
        page, paths = write_run_report(other, client=dask_local_client)
    assert page == other / "report.html" and page.exists()
    # the page too is built on a worker (the driver waits)
    assert sum(str(t["key"]).startswith("lcdask-report-") for t in tasks.data) == 1
    assert [p.name for p in paths] == [p.name for p in written]
    for serial, parallel in zip(written, paths, strict=True):
        assert parallel.parent == other / "plots"
        with Image.open(serial) as a, Image.open(parallel) as b:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the page alone, built in a task
    assert write_report(other, out=tmp_path / "r.html", client=dask_local_client).exists()


def test_run_report_reads_in_its_own_process(run, tmp_path):
    # The page and each figure's task read their few chunks themselves: through a default
    # Client, every small read was a round trip of the scheduler, waiting for a worker's thread
    # busy with another figure (a run's report stage took twice as long).
    import dask

    from lcdask.plots import write_run_plot
    from lcdask.report import write_report

    def refuse(*args, **kwargs):
        raise AssertionError("the report's reads went through the default scheduler")

    run_dir, *_ = run
    with dask.config.set(scheduler=refuse):
        assert write_report(run_dir, out=tmp_path / "r.html").exists()
        assert write_run_plot(run_dir, "variables", out_dir=tmp_path).exists()


def _ready_for_the_report() -> bool:
    import sys

    return all(
        m in sys.modules
        for m in ("matplotlib.backends.backend_agg", "PIL.PngImagePlugin", "bokeh.plotting")
    )


def test_warm_workers_loads_matplotlib_and_bokeh_on_every_worker(dask_local_client):
    # lcdask.run starts this as the light curves are built: each worker's first report figure
    # or page then pays no import nor font loading
    import time

    from lcdask.report import warm_workers

    client = dask_local_client
    assert not any(client.run(_ready_for_the_report).values())  # fresh workers
    warm_workers(client)  # returns at once; the tasks are not waited for
    deadline = time.monotonic() + 60  # ~1 s of work; a loaded machine
    ready = _ready_for_the_report
    while not all(done := client.run(ready).values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(done) == 2 and all(done)


def test_plot_labels_inside_the_figure(run):
    # the plots have fixed margins (no layout engine): every label must still fit
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    run_dir, _, ds, sources = run
    frames = with_frame_coords(pd.read_parquet(run_dir / "frames.parquet"), ds)
    figures = {
        "target": target_figure(ds, sources),
        "variables": variables_figure(ds, sources),
        "movers": movers_figure(ds, sources),
        "movers_coadd": movers_coadd_figure(run_dir / "coadd.fits", ds, sources),
        "scatter": scatter_magnitude_figure(sources),
        "frames": frames_figure(frames),
    }
    for name, fig in figures.items():
        renderer = FigureCanvasAgg(fig).get_renderer()
        drawn = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)  # pixels
        box = fig.bbox
        inside = (
            drawn.x0 >= box.x0 - 1
            and drawn.y0 >= box.y0 - 1
            and drawn.x1 <= box.x1 + 1
            and drawn.y1 <= box.y1 + 1
        )
        assert inside, (name, drawn.bounds, box.bounds)


def test_scatter_plot_data_match_sources(run):
    _, _, _, sources = run
    fig = scatter_magnitude_figure(sources)
    ax = fig.axes[0]
    for kind in ("stable", "variable", "moving"):
        sel = sources[sources["kind"] == kind]
        offsets = np.asarray(_by_gid(ax, f"scatter_{kind}").get_offsets())
        np.testing.assert_array_equal(offsets[:, 0], sel["mag"])
        np.testing.assert_array_equal(offsets[:, 1], sel["mad_scatter"])
    target = np.asarray(_by_gid(ax, "scatter_target").get_offsets())
    row = sources[sources["is_target"]]
    np.testing.assert_array_equal(target, row[["mag", "mad_scatter"]].to_numpy())
    comp = np.asarray(_by_gid(ax, "scatter_comparison").get_offsets())
    assert len(comp) == sources["is_comparison"].sum()
    # the expected-scatter curve follows the table's expected_scatter at each magnitude
    curve = _by_gid(ax, "expected_scatter")
    fixed = sources[sources["kind"] != "moving"]
    x, y = curve.get_xdata(), curve.get_ydata()
    assert np.all(np.diff(x) >= 0)
    at = np.interp(fixed["mag"], x, y)
    ratio = fixed["expected_scatter"] / at
    assert np.nanmedian(np.abs(np.log(ratio))) < 0.1  # a smooth median through the values


def test_target_plot_shows_the_transit(run):
    _, truth, ds, sources = run
    fig = target_figure(ds, sources)
    ax = fig.axes[0]
    points = ax.containers[0]  # the per-frame errorbar
    t, rel = points.lines[0].get_xdata(), points.lines[0].get_ydata()
    t0 = np.floor(ds["time_mjd"].to_numpy().min())
    np.testing.assert_allclose(t + t0, ds["time_mjd"].to_numpy(), rtol=0, atol=1e-9)
    depth = transit_depth(truth, t + t0, rel)
    assert depth == pytest.approx(truth.config.transit_depth, rel=0.2)  # S/N ~250 per frame
    assert "comparison stars" in fig.axes[1].get_title()


def test_movers_over_the_coadd_land_on_the_image(run):
    _, truth, ds, sources = run
    image = np.zeros((truth.config.size, truth.config.size), np.float32)
    fig = movers_coadd_figure((image, coadd_wcs(truth)), ds, sources)
    ax = fig.axes[0]
    n_movers = (sources["kind"] == "moving").sum()
    tracks = [ln for ln in ax.lines if ln.get_linestyle() == "-"]
    assert len(tracks) == n_movers
    for line in tracks:
        x, y = line.get_xdata(), line.get_ydata()
        assert ((x > -0.5) & (x < image.shape[1]) & (y > -0.5) & (y < image.shape[0])).all()


def test_plots_without_target_movers_or_variables(run, tmp_path):
    _, _, ds, sources = run
    quiet = sources.assign(is_target=False, kind="stable")
    written = write_plots(ds, quiet, tmp_path)
    assert [p.name for p in written] == ["scatter_magnitude.png", "frames.png"]
    with pytest.raises(ValueError, match="no target"):
        target_figure(ds, quiet)


def test_frames_figure_panels_and_errors():
    frames = pd.DataFrame(
        {"time_mjd": 60000 + np.arange(5) / 100, "zero_point": 22.0, "airmass": 1.2}
    )
    fig = frames_figure(frames)
    assert [ax.get_ylabel() for ax in fig.axes] == ["zero point (mag)", "airmass"]
    with pytest.raises(ValueError, match="time_mjd"):
        frames_figure(frames.drop(columns="time_mjd"))
    with pytest.raises(ValueError, match="none of"):
        frames_figure(frames[["time_mjd"]])


def test_bin_lightcurve_weighted_means():
    t = np.array([0.0, 0.1, 0.2, 1.0, 1.1, np.nan])
    y = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 5.0])
    e = np.array([1.0, 1.0, 0.5, 1.0, 1.0, 1.0])
    b = bin_lightcurve(t, y, e, bin_width=0.5)
    np.testing.assert_allclose(b["value"], [(1 + 2 + 4 * 3) / 6, 15.0])
    np.testing.assert_allclose(b["error"], [1 / np.sqrt(6), 1 / np.sqrt(2)])
    np.testing.assert_array_equal(b["n"], [3, 2])
    assert bin_lightcurve([], [], None).empty
