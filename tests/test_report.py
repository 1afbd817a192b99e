"""The HTML report: its bokeh models, and the page rendered in a real headless Chromium.

`write_simulated_run` (also used by test_plots.py and test_export.py) writes a run directory as
the pipeline would, from a simulated night with its truth (a 1% transit on the target, an
eclipsing binary, a pulsator, slow and fast movers), without rendering any image: detections
drawn from the truth, matched, linked, built into light curves, ensemble photometry, classified.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lcdask.classify import classify_sources, link_tracks
from lcdask.export import read_run
from lcdask.io.atomic import atomic_path
from lcdask.lightcurves import apply_ensemble, build_lightcurves, ensemble_photometry
from lcdask.match import match_detections
from lcdask.report import build_report, write_report
from lcdask.simulate import SimConfig
from lcdask.testing import frame_table, make_detections, simulate_truth

# --------------------------------------------------------------------------------------------
# a simulated run directory


def write_simulated_run(
    run_dir: Path, *, n_frames: int = 120, size: int = 768, seed: int = 3, coadd: bool = True
):
    """Write sources.parquet, lightcurves.zarr, frames.parquet (and coadd.fits) into run_dir.

    Returns the truth (`lcdask.testing.NightTruth`), the light curves and the sources table.
    """
    cfg = SimConfig(n_frames=n_frames, size=size, seed=seed, n_slow_movers=2, n_fast_movers=1)
    truth = simulate_truth(cfg)
    det = make_detections(truth, seed=seed)
    frames = frame_table(truth, det)
    match = match_detections(det, frames)
    tracks = link_tracks(det, match.source_id, centre=match.centre)
    ds = build_lightcurves(det, tracks.source_id, frames)
    ds = apply_ensemble(ds, ensemble_photometry(ds))
    target = truth.stars[truth.stars["is_target"]].iloc[0]
    sources = classify_sources(ds, target=(target["ra"], target["dec"]))
    # a BJD_TDB frame coordinate, as the pipeline adds when the site and target allow
    ds = ds.assign_coords(bjd_tdb=("frame", ds["time_mjd"].to_numpy() + 2400000.5 + 0.0031))
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    with atomic_path(run / "lightcurves.zarr") as tmp:
        ds.to_zarr(tmp, mode="w", consolidated=False)
    sources.to_parquet(run / "sources.parquet")
    pd.DataFrame(
        {
            "frame": frames["frame"],
            "time_mjd": frames["time_mjd"],
            "zero_point": frames["zero_point"],
            "fwhm_px": frames["fwhm_px"],
            "sky": frames["sky"],
            "airmass": frames["airmass"],
            "n_sources": np.isfinite(ds["flux"]).sum("source").to_numpy().astype(np.int64),
            "astrometry_rms_arcsec": frames["rms_arcsec"],
        }
    ).to_parquet(run / "frames.parquet")
    if coadd:
        write_coadd(run / "coadd.fits", truth)
    return truth, ds, sources


def coadd_wcs(truth):
    """The TAN WCS of the first frame (astropy)."""
    from astropy.wcs import WCS

    f = truth.frames.iloc[0]
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(f["crval1"]), float(f["crval2"])]
    w.wcs.crpix = [float(f["crpix1"]), float(f["crpix2"])]
    w.wcs.cd = np.array([[f["cd1_1"], f["cd1_2"]], [f["cd2_1"], f["cd2_2"]]], dtype=float)
    return w


def write_coadd(path: Path, truth) -> None:
    """A synthetic co-add: sky noise and Gaussian stars (mag < 18) on the first frame's WCS."""
    from astropy.io import fits

    size = truth.config.size
    wcs = coadd_wcs(truth)
    image = np.random.default_rng(0).normal(100.0, 3.0, (size, size)).astype(np.float32)
    stars = truth.stars[(truth.stars["kind"] != "moving") & (truth.stars["mag"] < 18)]
    x, y = wcs.world_to_pixel_values(stars["ra"].to_numpy(), stars["dec"].to_numpy())
    yy, xx = np.mgrid[-6:7, -6:7]
    for xi, yi, mag in zip(x, y, stars["mag"].to_numpy(), strict=True):
        ix, iy = round(float(xi)), round(float(yi))
        if 6 <= ix < size - 6 and 6 <= iy < size - 6:
            amp = 10 ** (-0.4 * (mag - 22.0)) / 20.0
            blob = amp * np.exp(-((xx + ix - xi) ** 2 + (yy + iy - yi) ** 2) / 3.0)
            image[iy - 6 : iy + 7, ix - 6 : ix + 7] += blob
    fits.PrimaryHDU(image, header=wcs.to_header()).writeto(path, overwrite=True)


def transit_depth(truth, time_mjd: np.ndarray, rel_flux: np.ndarray) -> float:
    """1 - median in the flat bottom of the target's transit / median out of transit."""
    star = truth.stars[truth.stars["is_target"]].iloc[0]
    dt = np.abs(np.asarray(time_mjd) - star["t0_mjd"])
    half = 0.5 * star["duration_d"]
    inside = dt < half - star["ingress_d"]
    outside = dt > half + 0.003  # a few minutes clear of the contact points
    rel = np.asarray(rel_flux, dtype=float)
    assert inside.sum() >= 20 and outside.sum() >= 20  # the fixture's night covers the transit
    return float(1.0 - np.nanmedian(rel[inside]) / np.nanmedian(rel[outside]))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    truth, ds, sources = write_simulated_run(run_dir)
    return run_dir, truth, ds, sources


# --------------------------------------------------------------------------------------------
# the bokeh models (no browser)

PLOT_NAMES = (
    "target_lightcurve",
    "target_comparison",
    "mover_tracks",
    "movers_coadd",
    "scatter_magnitude",
    "frame_zero_point",
    "frame_fwhm_px",
    "frame_sky",
    "frame_airmass",
)


def _document(run_dir: Path):
    from bokeh.document import Document

    doc = Document()
    doc.add_root(build_report(read_run(run_dir)))
    return doc


@pytest.fixture(scope="module")
def document(run):
    return _document(run[0])


@pytest.fixture(scope="module")
def page(run):
    return write_report(run[0])


def test_report_written_atomically_with_inline_resources(run, page):
    run_dir, *_ = run
    path = page
    assert path == run_dir / "report.html"
    page = path.read_text()
    assert "<script" in page and "Bokeh" in page
    # offline: bokeh's JavaScript is inline, nothing is loaded from a CDN
    assert re.findall(r"<(?:script|link)\b[^>]*\b(?:src|href)=", page) == []
    assert not list(run_dir.glob(".report.html.tmp-*"))


def test_report_models_have_stable_names(run, document):
    _, _, _, sources = run
    doc = document
    for name in (*PLOT_NAMES, "summary", "target_source", "scatter_source", "frames_source"):
        assert doc.select_one({"name": name}) is not None, name
    variables = sources[(sources["kind"] == "variable") & ~sources["is_target"]]
    assert len(variables) >= 2  # the eclipsing binary and the pulsator
    for sid in variables["source_id"]:
        assert doc.select_one({"name": f"variable_{sid}"}) is not None
    summary = doc.select_one({"name": "summary"}).text
    for kind in ("stable", "variable", "moving"):
        assert f"<td>{int((sources['kind'] == kind).sum())}</td>" in summary
    assert f"source {int(sources.loc[sources['is_target'], 'source_id'].iloc[0])}:" in summary


def test_report_document_passes_bokeh_validation(document):
    # write_report skips bokeh's validation (it costs time and only logs): it is checked here
    from bokeh.core.validation import check_integrity

    issues = check_integrity(document.models)
    assert issues.error == [] and issues.warning == []


def test_report_scatter_source_matches_sources_table(run, document):
    _, _, _, sources = run
    data = document.select_one({"name": "scatter_source"}).data
    np.testing.assert_array_equal(data["source_id"], sources["source_id"])
    np.testing.assert_array_equal(data["mag"], sources["mag"])
    np.testing.assert_array_equal(data["kind"], sources["kind"])
    tools = document.select_one({"name": "scatter_magnitude"}).tools
    assert any("@source_id" in str(getattr(t, "tooltips", "")) for t in tools)


def test_report_target_data_show_the_transit(run, document):
    _, truth, ds, _ = run
    data = document.select_one({"name": "target_source"}).data
    np.testing.assert_array_equal(data["time_mjd"], ds["time_mjd"].to_numpy())
    depth = transit_depth(truth, data["time_mjd"], data["rel_flux"])
    expected = truth.config.transit_depth
    assert depth == pytest.approx(expected, rel=0.2)  # ~50 points at S/N ~250 each in transit


def _without_ids(page: str) -> str:
    """A page with its model ids and UUIDs numbered in order of appearance."""
    ids: dict[str, str] = {}
    pattern = r"\bp\d{4,}\b|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    return re.sub(pattern, lambda m: ids.setdefault(m.group(), f"<id{len(ids)}>"), page)


def test_report_page_is_bokehs_file_html(run):
    # write_report's page collects the document's models once, bokeh's four times: the same page
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    from lcdask.report import _page

    products = read_run(run[0])
    ours = _page(build_report(products), title="t")
    theirs = file_html(build_report(products), INLINE, title="t")
    assert _without_ids(ours) == _without_ids(theirs)


def test_report_without_target_or_movers(run, tmp_path):
    run_dir, *_ = run
    other = tmp_path / "run"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("report.html", "plots"))
    sources = pd.read_parquet(other / "sources.parquet")
    sources["is_target"] = False
    sources = sources[sources["kind"] != "moving"]
    sources.to_parquet(other / "sources.parquet")
    (other / "frames.parquet").unlink()  # the frame coordinates of the light curves stand in
    doc = _document(other)
    assert doc.select_one({"name": "target_none"}) is not None
    assert doc.select_one({"name": "movers_none"}) is not None
    assert doc.select_one({"name": "target_lightcurve"}) is None
    assert doc.select_one({"name": "frame_zero_point"}) is not None
    assert write_report(other).exists()


# --------------------------------------------------------------------------------------------
# the page in headless Chromium, driven through the DevTools protocol


def chromium_binary() -> str | None:
    """LCDASK_CHROMIUM, else Debian's chromium (scripts/install-browser.sh installs it)."""
    for candidate in (os.environ.get("LCDASK_CHROMIUM"), "/usr/bin/chromium", "chromium"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


# Evaluated in the page once bokeh has rendered: names found, canvases drawn, target data.
_PAGE_PROBE = """(() => {
  const doc = Bokeh.documents[0];
  const models = Array.from(doc.all_models);
  const plots = models.filter(m => m.type === "Figure" || m.type === "Plot");
  const names = %s;
  const found = Object.fromEntries(names.map(n => [n, doc.get_model_by_name(n) !== null]));
  const canvases = [];
  const walk = (node) => {
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.children || []) {
      if (child.tagName === "CANVAS") canvases.push(child);
      walk(child);
    }
  };
  walk(document.body);
  const inked = canvases.filter(c => c.width >= 100 && c.height >= 100).map(c => {
    const px = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < px.length; i += 4) {
      if (px[i + 3] > 0 && !(px[i] > 245 && px[i + 1] > 245 && px[i + 2] > 245)) n++;
    }
    return n;
  });
  const data = doc.get_model_by_name("target_source").data;
  const column = (k) => Array.from(data instanceof Map ? data.get(k) : data[k]);
  return {
    n_plots: plots.length,
    plot_names: plots.map(p => p.name),
    found: found,
    inked: inked,
    time_mjd: column("time_mjd"),
    rel_flux: column("rel_flux").map(v => (Number.isFinite(v) ? v : null)),
    height: document.documentElement.scrollHeight,
  };
})()"""


async def _browse(binary: str, page: Path, names: list[str], timeout_s: float = 60.0) -> dict:
    """Open ``page`` in headless Chromium; return the probe, console/exception events, a PNG."""
    from tornado.websocket import websocket_connect

    profile = tempfile.mkdtemp(prefix="lcdask-chromium-")
    proc = subprocess.Popen(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
            "--window-size=1200,900",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout_s
        port_file = Path(profile) / "DevToolsActivePort"
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{binary} did not start (exit code {proc.poll()})")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        ws = await websocket_connect(target["webSocketDebuggerUrl"], max_message_size=1 << 28)
        events: list[dict] = []
        counter = iter(range(1, 1 << 30))

        async def call(method: str, **params) -> dict:
            mid = next(counter)
            await ws.write_message(json.dumps({"id": mid, "method": method, "params": params}))
            while True:
                remaining = deadline - time.monotonic()
                msg = await asyncio.wait_for(ws.read_message(), timeout=max(remaining, 0.1))
                if msg is None:
                    raise RuntimeError("the DevTools connection closed")
                msg = json.loads(msg)
                if msg.get("id") == mid:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg["result"]
                events.append(msg)

        for domain in ("Runtime", "Log", "Page"):
            await call(f"{domain}.enable")
        await call("Page.navigate", url=page.resolve().as_uri())
        ready = (
            "typeof Bokeh !== 'undefined' && Bokeh.documents.length > 0 && "
            "Object.keys(Bokeh.index).length > 0"
        )
        while True:
            res = await call("Runtime.evaluate", expression=ready, returnByValue=True)
            if res["result"].get("value"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("bokeh did not render the page in time")
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # let the last plots paint
        res = await call(
            "Runtime.evaluate", expression=_PAGE_PROBE % json.dumps(names), returnByValue=True
        )
        if "exceptionDetails" in res:
            raise RuntimeError(f"the probe failed: {res['exceptionDetails']}")
        probe = res["result"]["value"]
        shot = await call("Page.captureScreenshot", format="png")
        ws.close()
        return {"probe": probe, "events": events, "png": base64.b64decode(shot["data"])}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browsed(page):
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium not found: run scripts/install-browser.sh (or set LCDASK_CHROMIUM)")
    return asyncio.run(_browse(binary, page, [*PLOT_NAMES, "target_source", "summary"]))


def _errors(events: list[dict]) -> list[str]:
    out = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            out.append(json.dumps(params["exceptionDetails"])[:500])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append(" ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            out.append(params["entry"]["text"])
    return out


def test_chromium_renders_the_report_without_errors(browsed):
    assert _errors(browsed["events"]) == []
    probe = browsed["probe"]
    # every bokeh plot drew on its canvas (each plot has one canvas with ink on it)
    assert probe["n_plots"] >= len(PLOT_NAMES)
    drawn = [n for n in probe["inked"] if n > 500]
    assert len(drawn) >= probe["n_plots"], (probe["inked"], probe["plot_names"])


def test_chromium_report_has_its_plots(browsed):
    missing = [name for name, ok in browsed["probe"]["found"].items() if not ok]
    assert missing == []


def test_chromium_target_lightcurve_shows_the_transit(browsed, run):
    _, truth, ds, _ = run
    probe = browsed["probe"]
    t = np.asarray(probe["time_mjd"], dtype=float)
    rel = np.array([np.nan if v is None else v for v in probe["rel_flux"]], dtype=float)
    np.testing.assert_array_equal(t, ds["time_mjd"].to_numpy())
    depth = transit_depth(truth, t, rel)
    assert depth == pytest.approx(truth.config.transit_depth, rel=0.2)  # S/N ~250 per frame


def test_chromium_screenshot_is_not_blank(browsed):
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(browsed["png"])).convert("L"), dtype=float)
    assert image.shape[1] == 1200 and image.shape[0] >= 500  # the window, less its chrome
    assert (image < 200).mean() > 0.02  # text, axes and points on a white page
    assert image.std() > 10


def test_report_says_what_the_target_photometry_chose():
    """The summary's "target photometry" row: the aperture, the comparison stars and the
    scatter with the cross-validated numbers, or why the run-wide curve was kept."""
    from lcdask.report import _target_photometry_line

    chosen = {
        "adopted": True,
        "aperture": 3,
        "aperture_radius": 2.0,
        "aperture_unit": "fwhm",
        "n_comparison": 2,
        "comparison_ids": [4, 9],
        "scatter_chosen_pct": 0.449,
        "scatter_default_pct": 0.48,
        "cv": {"judged_chosen_pct": 0.5, "judged_default_pct": 0.61},
        "n_outliers": 1,
    }
    line = _target_photometry_line({"stages": {"lightcurves": {"target_photometry": chosen}}})
    assert line.startswith("aperture 3 (2 fwhm), 2 comparison stars (4, 9); scatter 0.449%")
    assert "run-wide 0.480%" in line and "0.500% against 0.610%" in line
    kept = {"adopted": False, "why": "no choice beat the run-wide curve", "cv": {}}
    line = _target_photometry_line({"stages": {"lightcurves": {"target_photometry": kept}}})
    assert line == "the run-wide relative flux kept: no choice beat the run-wide curve"
