"""Helpers of the reliability suite: the night, the runners, the injections of bad items.

One small simulated night is made once per session; every case copies its ``raw/`` folder, injects
one bad item and runs the whole pipeline on it. The clean run of the same night is the reference
"without the bad item". Runs in this process stub the HTML report (the report is not under test
here and costs as much as the rest of a small run); runs through the CLI make the real one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import astropy.units as u
import numpy as np
import pandas as pd
from astropy.coordinates import Angle
from astropy.io import fits
from astropy.time import Time

from lcdask.run import run
from lcdask.simulate import SimConfig, load_truth

LCDASK = [sys.executable, "-m", "lcdask"]

NIGHT = SimConfig(
    n_frames=8,
    size=256,
    seed=5,
    pixel_scale_arcsec=1.8,  # a 7.7' field: about 50 stars in 256 px, enough for every zero point
    n_fast_movers=0,
    n_slow_movers=1,
    n_darks=4,
    n_darkflats=3,
    n_flats=3,
    n_bias=3,
)
"""The night every case starts from: 8 lights, 4+3 darks, 3 flats, 3 bias of 256x256."""

CONFIG_TOML = """\
# The reliability suite measures fluxes at detection (Level2Config.flux = "detection"): it tests
# the run's skeleton -- ingest, calibration, plate solving, zero points, matching, light curves,
# products, faults. Level 3 photometry (cosmic rays, apertures, the ePSF) has its own tests; on
# these small frames its ePSF build alone takes minutes (photutils' missing-data interpolation).
# The calibrated frames are kept as float32: the suite asserts that a fault changes nothing
# beyond the frame it hits, exactly, and a quantised frame that a fault touched is put on a
# grid of its own (its noise estimate, its dither seed), a change of 0.01 sigma in every pixel
# that then reaches the night's astrometric catalog and ensemble. The quantised default is
# tested whole (runs, resume after a kill) in tests/test_run.py and tests/test_codecs.py.
[calibration]
calibrated_storage = "float32"

[level2]
flux = "detection"
"""


def config_file(folder: Path) -> Path:
    """The suite's configuration as the TOML file ``lcdask run --config`` takes."""
    path = folder / "reliability.toml"
    if not path.exists():
        path.write_text(CONFIG_TOML)
    return path


def config(*, workers: int | None = None):
    """The suite's configuration; with ``workers``, exactly as ``lcdask run --workers N`` makes
    it (the cluster settings are part of what a rerun compares to reuse stages)."""
    from lcdask.config import load_config

    with tempfile.TemporaryDirectory() as folder:
        return load_config(config_file(Path(folder)), cluster={"workers": workers})


@dataclass
class RunResult:
    """A finished run: its directory, record and the lines the user saw."""

    out: Path
    record: dict
    lines: list[str] = field(default_factory=list)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"lcdask: {record.getMessage()}")


def _stub_report(run_dir, **_kwargs) -> Path:
    path = Path(run_dir) / "report.html"
    path.write_text("<html>report not under test here</html>\n")
    return path


def _stub_plots(run_dir, **_kwargs) -> list[Path]:
    (Path(run_dir) / "plots").mkdir(exist_ok=True)
    return []


@contextmanager
def stubbed_report():
    """The report and plots replaced by stubs wherever `lcdask.run` finds them."""
    import lcdask.run

    with ExitStack() as stack:
        for name, stub in (("write_report", _stub_report), ("write_run_plots", _stub_plots)):
            if hasattr(lcdask.run, name):
                stack.enter_context(mock.patch.object(lcdask.run, name, stub))
        stack.enter_context(mock.patch("lcdask.report.write_report", _stub_report))
        yield


def target_of(night: Path) -> str:
    stars = load_truth(night).stars
    target = stars[stars["is_target"]].iloc[0]
    return f"{target['ra']:.6f} {target['dec']:.6f}"


@contextmanager
def captured_lines():
    """The ``lcdask`` logger's messages as the CLI prints them (``lcdask: ...``)."""
    logger = logging.getLogger("lcdask")
    handler = _Lines()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def run_here(
    raw: Path, out: Path, night: Path, *, client=None, workers: int | None = None
) -> RunResult:
    """Run the pipeline in this process (report stubbed); collect the user's lines.

    ``workers`` makes the configuration that of ``lcdask run --workers N`` (see `config`), for
    a rerun here of a run made by the CLI; the work is still done here, serially.
    """
    with captured_lines() as lines, stubbed_report():
        record = run(
            raw,
            out,
            config=config(workers=workers),
            catalog=night / "refcat.parquet",
            target=target_of(night),
            client=client,
        )
    return RunResult(out, record, list(lines))


def cli_args(raw: Path, out: Path, night: Path, *extra: str) -> list[str]:
    return [
        *LCDASK,
        "run",
        str(raw),
        "--out",
        str(out),
        "--catalog",
        str(night / "refcat.parquet"),
        "--target",
        target_of(night),
        "--config",
        str(config_file(night)),
        *extra,
    ]


def run_cli(
    raw: Path, out: Path, night: Path, *extra: str, **kwargs
) -> subprocess.CompletedProcess:
    """``lcdask run`` in a subprocess (a LocalCluster of one worker unless told otherwise)."""
    extra = extra or ("--workers", "1")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        cli_args(raw, out, night, *extra),
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        **kwargs,
    )


# --- injections ---------------------------------------------------------------------------------
#
# Each takes a copy of the night's raw folder, injects one bad item and returns the bad file's name.
# Added frames get a start time half-way between two lights, so that, were they read as good
# frames, they would be frames of their own (not duplicates by time).


def lights(raw: Path) -> list[Path]:
    return sorted(raw.glob("light_[0-9][0-9][0-9][0-9].fits"))  # the simulated ones only


def read(path: Path) -> tuple[np.ndarray, fits.Header]:
    """The pixels and header of the file's image HDU (the first holding data)."""
    with fits.open(path) as hdul:
        hdu = next(h for h in hdul if h.data is not None)
        return hdu.data.copy(), hdu.header.copy()


def write(path: Path, data: np.ndarray, header: fits.Header) -> None:
    header = header.copy()
    for key in ("BSCALE", "BZERO"):  # astropy sets the scaling the data type needs
        header.remove(key, ignore_missing=True)
    fits.PrimaryHDU(data, header=header).writeto(path, overwrite=True)


def between(raw: Path, i: int) -> str:
    """A DATE-OBS half-way between the starts of lights i and i + 1."""
    t0 = Time(read(lights(raw)[i])[1]["DATE-OBS"], scale="utc")
    t1 = Time(read(lights(raw)[i + 1])[1]["DATE-OBS"], scale="utc")
    return (t0 + (t1 - t0) / 2).isot


def _added_light(raw: Path, name: str, i: int = 2) -> tuple[np.ndarray, fits.Header, Path]:
    """Light i's pixels and header, re-timed between lights i and i + 1, and the new path."""
    data, header = read(lights(raw)[i])
    header["DATE-OBS"] = between(raw, i)
    return data, header, raw / name


def truncated(raw: Path) -> str:
    data, header, path = _added_light(raw, "bad_truncated.fits")
    write(path, data, header)
    size = path.stat().st_size
    path.write_bytes(path.read_bytes()[: size // 2])  # cut in the middle of the pixels
    return path.name


def zero_length(raw: Path) -> str:
    (raw / "bad_empty.fits").write_bytes(b"")
    return "bad_empty.fits"


def not_fits(raw: Path) -> str:
    # what a failed download saves under the name asked for
    page = "<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"
    (raw / "bad_notfits.fits").write_text(page * 40)
    return "bad_notfits.fits"


def extension_only(raw: Path) -> str:
    """Light 3 rewritten with an empty primary HDU and the image in extension 1."""
    path = lights(raw)[3]
    data, header = read(path)
    for key in ("SIMPLE", "BSCALE", "BZERO", "EXTEND"):
        header.remove(key, ignore_missing=True)
    image = fits.ImageHDU(data, header=header)
    fits.HDUList([fits.PrimaryHDU(), image]).writeto(path, overwrite=True)
    return path.name


NONFINITE_PIXELS = {"nan": 20, "posinf": 5, "neginf": 5}


def nonfinite(raw: Path) -> str:
    """Light 4 as float32 with a few NaN and infinite pixels."""
    path = lights(raw)[4]
    data, header = read(path)
    data = data.astype(np.float32)
    rng = np.random.default_rng(4)
    flat = data.reshape(-1)
    where = rng.choice(flat.size, sum(NONFINITE_PIXELS.values()), replace=False)
    values = np.repeat([np.nan, np.inf, -np.inf], list(NONFINITE_PIXELS.values()))
    flat[where] = values
    write(path, data, header)
    return path.name


def saturated(raw: Path) -> str:
    data, header, path = _added_light(raw, "bad_saturated.fits", 1)
    write(path, np.full_like(data, 65535), header)
    return path.name


def other_shape(raw: Path) -> str:
    data, header, path = _added_light(raw, "bad_shape.fits")
    write(path, data[:200].copy(), header)
    return path.name


def no_exptime(raw: Path) -> str:
    data, header, path = _added_light(raw, "bad_noexptime.fits")
    for key in ("EXPTIME", "EXPOSURE"):
        header.remove(key)
    write(path, data, header)
    return path.name


def no_time(raw: Path) -> str:
    data, header, path = _added_light(raw, "bad_notime.fits")
    header.remove("DATE-OBS")
    write(path, data, header)
    return path.name


def bad_time(raw: Path) -> str:
    data, header, path = _added_light(raw, "bad_badtime.fits")
    header["DATE-OBS"] = "2026-03-15T25:61:00"  # hour 25, minute 61
    write(path, data, header)
    return path.name


def duplicate(raw: Path) -> str:
    path = raw / "light_0005_copy.fits"
    shutil.copyfile(lights(raw)[5], path)
    return path.name


def out_of_order(raw: Path) -> str:
    """Lights 2 and 6 swap names (and modification times): names no longer follow time."""
    a, b = lights(raw)[2], lights(raw)[6]
    tmp = raw / "swap.tmp"
    os.replace(a, tmp)
    os.replace(b, a)
    os.replace(tmp, b)
    os.utime(a, (1e9, 1e9))
    return a.name


def cloudy(raw: Path, night: Path) -> str:
    """Thick cloud: bias, dark current and a bright sky through the true flat field; no stars."""
    _, header, path = _added_light(raw, "bad_cloudy.fits", 5)
    dark, _ = read(raw / "dark_0000.fits")
    flat = fits.getdata(night / "truth" / "flat.fits")
    sky_e = 3000.0 * flat * 1.5  # 3000 ADU of sky
    rng = np.random.default_rng(7)
    frame = dark + rng.poisson(sky_e) / 1.5
    write(path, np.clip(np.round(frame), 0, 65535).astype(np.uint16), header)
    return path.name


def other_field(raw: Path, other: Path) -> str:
    """A light of another night's field (its own header), timed within this night."""
    data, header = read(sorted((other / "raw").glob("light_*.fits"))[0])
    header["DATE-OBS"] = between(raw, 3)
    write(raw / "bad_otherfield.fits", data, header)
    return "bad_otherfield.fits"


OTHER_FIELD = dataclasses.replace(NIGHT, n_frames=1, seed=11, ra_deg=210.0, dec_deg=-5.0)
"""A night elsewhere on the sky, for `other_field`."""


def wrong_pointing(raw: Path, name: str, offset_deg: float = 0.5) -> str:
    """Light ``name``'s header pointing (CRVAL, RA/DEC, OBJCTRA/DEC) moved by offset_deg in Dec."""
    path = raw / name
    data, header = read(path)
    dec = header["DEC"] + offset_deg
    header["CRVAL2"] = dec
    header["DEC"] = dec
    header["OBJCTDEC"] = Angle(dec, "deg").to_string(sep=" ", precision=2, alwayssign=True)
    write(path, data, header)
    return name


def light_leak_dark(raw: Path) -> str:
    """An extra dark of the lights' exposure with a light leak: a glow rising to one corner."""
    data, header = read(raw / "dark_0000.fits")
    y, x = np.mgrid[: data.shape[0], : data.shape[1]] / data.shape[0]
    leak = 4000.0 * np.exp(-((x - 1) ** 2 + (y - 1) ** 2) / 0.3) + 300.0
    header["DATE-OBS"] = (Time(header["DATE-OBS"], scale="utc") - 120 * u.s).isot
    write(raw / "dark_leak.fits", np.round(data + leak).astype(np.uint16), header)
    return "dark_leak.fits"


def non_ascii(raw: Path) -> str:
    """Light 6 with non-ASCII (UTF-8 and Latin-1) bytes in OBSERVER and a COMMENT card."""
    path = lights(raw)[6]
    data, header = read(path)
    header["OBSERVER"] = "Jxxrgen Mxxller"
    header["COMMENT"] = "seeing ~ 2 arcsec, Dome temp 5 Cxx"
    write(path, data, header)
    raw_bytes = path.read_bytes()
    end = raw_bytes.index(b"END" + b" " * 77)
    head = raw_bytes[:end]
    head = head.replace(b"Jxxrgen Mxxller", "Jürgen Müller".encode()[:15].ljust(15))
    head = head.replace(b"5 Cxx", "5 °C".encode("latin-1").ljust(5))
    assert len(head) == end
    path.write_bytes(head + raw_bytes[end:])
    return path.name


def cube_frames(run_dir: Path) -> pd.DataFrame:
    """The cube's per-frame file, type, time and flags, read straight from the store."""
    import zarr

    group = zarr.open_group(str(run_dir / "cube.zarr"), mode="r")
    columns = ("path", "frame_type", "time_mjd", "flags", "flag_reason")
    table = pd.DataFrame({name: group[name][:] for name in columns})
    return table.assign(name=[Path(str(p)).name for p in table["path"]])


def frame_of(frames: pd.DataFrame, name: str) -> int:
    """Index in the cube of the frame read from the file called ``name``."""
    matches = np.flatnonzero(frames["name"].to_numpy() == name)
    assert len(matches) == 1, (name, matches)
    return int(matches[0])


def frames_table(run_dir: Path) -> pd.DataFrame:
    frames = pd.read_parquet(run_dir / "frames.parquet")
    return frames.assign(name=[Path(p).name for p in frames["path"]])


# --- "the same products" -------------------------------------------------------------------------
#
# Frames are matched between a case and the clean run by their mid-exposure time (cube indices and
# file names can differ: an added frame shifts the indices, a renamed file changes the names).
# Sources are matched by position. Unless a case says otherwise, "the same" is exact: the good
# frames are the same pixels passed through the same deterministic functions, up to the rounding of
# the last bits (FLOAT_RTOL) in the plate solutions' least squares, which can differ between two
# processes (measured: 7e-11 relative in astrometry_rms_arcsec, 6e-10 px in CRPIX).

FLOAT_RTOL = 1e-9

TIME_KEY_DECIMALS = 7  # 1e-7 d = 9 ms: far below the 70 s between frames, above float noise


def _time_key(values) -> np.ndarray:
    return np.round(np.asarray(values, float), TIME_KEY_DECIMALS)


def good_frames(case: Path, clean: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """frames.parquet of both runs, the case's reduced to the clean run's frames, same order."""
    a, b = pd.read_parquet(case / "frames.parquet"), pd.read_parquet(clean / "frames.parquet")
    a, b = a.assign(t=_time_key(a["time_mjd"])), b.assign(t=_time_key(b["time_mjd"]))
    assert not a["t"].duplicated().any(), "a frame appears twice in frames.parquet"
    missing = set(b["t"]) - set(a["t"])
    assert not missing, f"good frames missing from the case's frames.parquet: {sorted(missing)}"
    a = a.set_index("t").loc[b["t"]].reset_index()
    return a, b


FRAME_NUMBERS = ("n_sources", "sky", "sky_rms", "fwhm_px", "zero_point", "astrometry_rms_arcsec")


def assert_same_frames(case: Path, clean: Path, *, rtol: dict | None = None) -> None:
    """The good frames' Level 2 results: solved, and the same numbers (``rtol`` per column)."""
    a, b = good_frames(case, clean)
    assert (a["astrometry_status"] == "ok").all(), a[["path", "astrometry_message"]]
    for column in FRAME_NUMBERS:
        np.testing.assert_allclose(
            a[column].to_numpy(float),
            b[column].to_numpy(float),
            rtol=(rtol or {}).get(column, FLOAT_RTOL),
            err_msg=column,
        )


DETECTION_COLUMNS = ("x", "y", "flux", "flux_err", "flags", "ra", "dec", "mag")


def assert_same_detections(
    case: Path, clean: Path, *, tol: dict | None = None, skip_times=()
) -> None:
    """Each good frame's detections: the same rows (``tol``: column -> (rtol, atol))."""
    a = pd.read_parquet(case / "detections.parquet")
    b = pd.read_parquet(clean / "detections.parquet")
    a, b = a.assign(t=_time_key(a["time_mjd"])), b.assign(t=_time_key(b["time_mjd"]))
    skip = set(_time_key(list(skip_times)))
    for t, rows_b in b.groupby("t"):
        if t in skip:
            continue
        rows_a = a[a["t"] == t]
        assert len(rows_a) == len(rows_b), f"frame at MJD {t}: {len(rows_a)} != {len(rows_b)}"
        rows_a = rows_a.sort_values(["y", "x"]).reset_index(drop=True)
        rows_b = rows_b.sort_values(["y", "x"]).reset_index(drop=True)
        for column in DETECTION_COLUMNS:
            rtol, atol = (tol or {}).get(column, (FLOAT_RTOL, 0))
            np.testing.assert_allclose(
                rows_a[column].to_numpy(float),
                rows_b[column].to_numpy(float),
                rtol=rtol,
                atol=atol,
                err_msg=f"{column} of the frame at MJD {t}",
            )


def stable_sources(run_dir: Path) -> pd.DataFrame:
    """Sources classed stable and found in every frame: the run's steady, bright backbone."""
    sources = pd.read_parquet(run_dir / "sources.parquet")
    n_lights = int(sources["n_frames"].max())
    return sources[(sources["kind"] == "stable") & (sources["n_frames"] == n_lights)]


def matched_sources(case: Path, clean: Path, radius_arcsec: float = 1.0) -> pd.DataFrame:
    """Each stable clean source with its nearest case source (columns suffixed _case)."""
    from astropy.coordinates import SkyCoord

    b = stable_sources(clean).reset_index(drop=True)
    a = pd.read_parquet(case / "sources.parquet")
    ca = SkyCoord(a["ra"].to_numpy(), a["dec"].to_numpy(), unit="deg")
    cb = SkyCoord(b["ra"].to_numpy(), b["dec"].to_numpy(), unit="deg")
    index, sep, _ = cb.match_to_catalog_sky(ca)
    assert (sep.arcsec < radius_arcsec).all(), "stable sources of the clean run not found"
    return pd.concat([b, a.iloc[index].reset_index(drop=True).add_suffix("_case")], axis=1)


def lightcurves_by_time(run_dir: Path):
    import xarray as xr

    ds = xr.open_zarr(run_dir / "lightcurves.zarr", consolidated=None).load()
    return ds.assign_coords(frame=_time_key(ds["time_mjd"].values))


def assert_same_lightcurves(case: Path, clean: Path) -> None:
    """lightcurves.zarr and sources.parquet identical, frames matched by time."""
    import xarray as xr

    a, b = lightcurves_by_time(case), lightcurves_by_time(clean)
    assert set(b["frame"].values) <= set(a["frame"].values)
    xr.testing.assert_allclose(a.sel(frame=b["frame"].values), b, rtol=FLOAT_RTOL, atol=0)
    pd.testing.assert_frame_equal(
        pd.read_parquet(case / "sources.parquet"), pd.read_parquet(clean / "sources.parquet")
    )


def assert_same_products(case: Path, clean: Path) -> None:
    """Every product of the good frames exactly as in the clean run."""
    assert_same_frames(case, clean)
    assert_same_detections(case, clean)
    assert_same_lightcurves(case, clean)


# --- whole or absent ----------------------------------------------------------------------------

PRODUCTS = (
    "run.json",
    "cube.zarr",
    "frames.parquet",
    "detections.parquet",
    "lightcurves.zarr",
    "sources.parquet",
    "report.html",
    "plots",
    "catalog-cache",
    "catalog.parquet",
    "coadd.fits",
    "psf.fits",
)


def assert_same_wcs(a: pd.Series, b: pd.Series, *, tol_px: float = 1e-6) -> None:
    """Two columns of WCS headers (``wcs_solved``) map every pixel to the same sky position."""
    from astropy.io import fits
    from astropy.wcs import WCS

    assert len(a) == len(b)
    for text_a, text_b in zip(a, b, strict=True):
        assert bool(text_a) == bool(text_b)
        if not text_a:
            continue
        wa, wb = (WCS(fits.Header.fromstring(t)) for t in (text_a, text_b))
        px = np.array([[0.0, 0.0], [1000.0, 0.0], [0.0, 1000.0], [1000.0, 1000.0]])
        back = wb.all_world2pix(wa.all_pix2world(px, 0), 0)
        assert np.abs(back - px).max() < tol_px, (text_a, text_b)


def assert_products_whole(out: Path, clean: Path) -> list[str]:
    """Every product in ``out`` opens and is the whole product: equal to the clean run's.

    A product that is there must be complete: the same as the one of an uninterrupted run of the
    same frames (the runs are deterministic). Temporaries (``.NAME.tmp-*``, and ``tmp_*`` arrays
    inside the cube) may remain; nothing else may. Returns the products found.
    """
    import xarray as xr

    from lcdask.io.cube import open_cube

    found = []
    for entry in sorted(out.iterdir()) if out.exists() else []:
        assert entry.name in PRODUCTS or ".tmp-" in entry.name, f"unexpected {entry}"
        if entry.name in PRODUCTS:
            found.append(entry.name)
    if "run.json" in found:
        record = json.loads((out / "run.json").read_text())
        assert isinstance(record["stages"], dict)
    if "cube.zarr" in found:
        a, b = open_cube(out), open_cube(clean)
        np.testing.assert_array_equal(a["raw"].values, b["raw"].values)
        for name in ("time_mjd", "frame_type", "flags", "flag_reason"):
            np.testing.assert_array_equal(a[name].values, b[name].values)
        if "calibration" in a.attrs:  # the marker the calibration writes last
            for name in ("master_dark", "master_flat", "bad_pixels", "calibrated", "pixel_flags"):
                np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
    for name in ("coadd.fits", "psf.fits"):
        if name in found:
            from astropy.io import fits

            with fits.open(out / name) as a, fits.open(clean / name) as b:
                # float32 images from float64 inputs (zero points, WCS) that may differ in the
                # last bits between runs: the tolerance assert_frame_equal gives the tables
                for hdu_a, hdu_b in zip(a, b, strict=True):
                    if hdu_a.data is not None and hdu_a.data.dtype.kind == "f":
                        np.testing.assert_allclose(
                            hdu_a.data, hdu_b.data, rtol=1e-5, atol=1e-4, err_msg=name
                        )
                    else:
                        np.testing.assert_array_equal(hdu_a.data, hdu_b.data, err_msg=name)
    for name in ("catalog.parquet", "frames.parquet", "sources.parquet"):
        if name in found:
            a, b = pd.read_parquet(out / name), pd.read_parquet(clean / name)
            if "wcs_solved" in a:
                # plate solutions as numbers: the driver's least squares may round differently
                # in the last bits from run to run (measured: 6e-10 px in CRPIX)
                assert_same_wcs(a.pop("wcs_solved"), b.pop("wcs_solved"))
            pd.testing.assert_frame_equal(a, b)
    if "detections.parquet" in found:
        a, b = (pd.read_parquet(d / "detections.parquet") for d in (out, clean))
        pd.testing.assert_frame_equal(a, b)
    if "lightcurves.zarr" in found:
        a, b = (xr.open_zarr(d / "lightcurves.zarr", consolidated=None) for d in (out, clean))
        # positions from the plate solutions: equal to the last bits' rounding (see above)
        xr.testing.assert_allclose(a.load(), b.load(), rtol=FLOAT_RTOL, atol=0)
    if "report.html" in found:
        assert (out / "report.html").read_text().rstrip().endswith("</html>")
    if "plots" in found:
        for png in (out / "plots").glob("*.png"):
            data = png.read_bytes()
            assert data.startswith(b"\x89PNG") and data.rstrip(b"\0").endswith(b"IEND\xaeB`\x82")
    return found


def slow_detections(seconds: float):
    """A function for ``client.run``: each detection task on that worker sleeps first.

    It widens the per-frame stage so that a fault lands inside it. A closure, so that it travels
    by value to workers that cannot import this module.
    """

    def patch() -> None:
        import time

        import lcdask.stages.level2 as level2

        original = level2.frame_detections
        if getattr(original, "slowed", False):
            return

        def slowed(*args, **kwargs):
            time.sleep(seconds)
            return original(*args, **kwargs)

        slowed.slowed = True
        level2.frame_detections = slowed

    return patch
