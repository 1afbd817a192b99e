"""Ingest: discovery, reading, the cube, real frames, and bad input."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time
from conftest import write_fits

from lcdask.cli import main
from lcdask.errors import LcdaskError
from lcdask.flags import FrameFlag
from lcdask.io.cube import open_cube
from lcdask.io.discover import discover_frames
from lcdask.io.fits import read_frame
from lcdask.io.headers import header_wcs, parse_section
from lcdask.stages.ingest import NotAppendable, append, ingest


def _night(folder: Path, n: int = 4) -> list[np.ndarray]:
    """n small lights a minute apart, 2 darks and 2 bias, written to folder."""
    data = []
    for i in range(n):
        t = Time("2024-05-01T03:00:00") + i * 60 * u.s
        data.append(write_fits(folder / f"light_{i}.fits", date_obs=t.isot, seed=i))
    for i in range(2):
        write_fits(folder / f"dark_{i}.fits", imagetyp="Dark Frame", seed=10 + i)
        write_fits(folder / f"bias_{i}.fits", imagetyp="Bias Frame", exptime=0.0, seed=20 + i)
    return data


# --- discovery and reading ---------------------------------------------------------------------


def test_discover_folders_globs_and_lists(tmp_path):
    _night(tmp_path / "a")
    (tmp_path / "a" / "notes.txt").write_text("not a frame\n")
    assert len(discover_frames(tmp_path / "a")) == 8  # the .txt in a folder is not a frame
    assert len(discover_frames(str(tmp_path / "a" / "light_*.fits"))) == 4
    listing = tmp_path / "frames.lst"
    listing.write_text("# two lights\na/light_0.fits\na/light_1.fits\n")
    assert [p.name for p in discover_frames(listing)] == ["light_0.fits", "light_1.fits"]
    # the same file named twice is one frame
    assert len(discover_frames([tmp_path / "a", str(tmp_path / "a" / "light_0.fits")])) == 8
    with pytest.raises(FileNotFoundError, match="nowhere"):
        discover_frames(tmp_path / "nowhere")


def test_read_gzip_and_tile_compressed(tmp_path):
    data = write_fits(tmp_path / "f.fits", seed=3)
    with open(tmp_path / "f.fits", "rb") as src, gzip.open(tmp_path / "g.fits.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    header = fits.getheader(tmp_path / "f.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=header)]).writeto(
        tmp_path / "h.fits.fz"
    )
    for name in ("f.fits", "g.fits.gz", "h.fits.fz"):
        image = read_frame(tmp_path / name, dtype=None)
        np.testing.assert_array_equal(image, data)
        assert image.dtype == np.uint16


def test_overscan_and_trim(tmp_path):
    rng = np.random.default_rng(5)
    ny, nx = 60, 80
    level = 1000 + 5 * np.linspace(0, 1, ny)  # a bias level drifting along the rows
    sky = rng.normal(500, 3, (ny, 70))
    data = np.empty((ny, nx))
    data[:, :70] = sky + level[:, None]
    data[:, 70:] = level[:, None] + rng.normal(0, 3, (ny, 10))
    path = tmp_path / "o.fits"
    write_fits(path, data.round().astype(np.uint16), TRIMSEC="[3:68,1:60]", BIASSEC="[72:80,1:60]")
    image = read_frame(path, trimsec="[3:68,1:60]", biassec="[72:80,1:60]")
    assert image.shape == (60, 66)
    # overscan removed: what remains is the sky, to the noise of a per-row median of a 9-px strip
    # (1.25 * 3 / sqrt(9) = 1.25 ADU per row)
    diff = image.mean(axis=1) - sky[:, 2:68].mean(axis=1)
    assert abs(diff.mean()) < 0.5 and diff.std() < 1.7
    smooth = read_frame(path, trimsec="[3:68,1:60]", biassec="[72:80,1:60]", overscan_order=1)
    np.testing.assert_allclose(smooth.mean(axis=1), sky[:, 2:68].mean(axis=1), atol=1.0)


# --- real frames -------------------------------------------------------------------------------


def test_real_c14_classification_times_and_pixels(c14_frames, tmp_path):
    result = ingest(c14_frames, tmp_path / "run")
    assert result.counts == {"light": 25, "dark": 5, "bias": 10}
    assert result.skipped == [] and result.flagged == []
    cube = open_cube(tmp_path / "run")
    assert cube["raw"].dtype == np.uint16 and cube.sizes == {"frame": 40, "y": 1024, "x": 1024}
    assert np.all(np.diff(cube["time_mjd"].values) >= 0)  # ordered in time
    for index in (0, 17, 39):
        path = str(cube["path"].values[index])
        header = fits.getheader(path)
        start = Time(header["DATE-OBS"], scale="utc").mjd
        mid_minus_half = (
            cube["time_mjd"].values[index] - cube["exptime_s"].values[index] / 2 / 86400
        )
        assert abs(mid_minus_half - start) * 86400 < 1.0  # within 1 s of DATE-OBS
        np.testing.assert_array_equal(cube["raw"][index].values, fits.getdata(path))
    lights = cube.where(cube["frame_type"] == "light", drop=True)
    assert np.all(lights["exptime_s"].values == 180)
    # BJD_TDB from the pointing and... no site keys in these headers: NaN where it cannot be known
    assert np.isfinite(cube["time_mjd"].values).all()


def test_real_lowell_overscan_trim_and_wcs(lowell_dir, tmp_path):
    result = ingest(
        [lowell_dir / "bias", lowell_dir / "flat", lowell_dir / "science"], tmp_path / "run"
    )
    assert result.counts == {"light": 11, "flat": 5, "bias": 5}
    cube = open_cube(tmp_path / "run")
    assert cube.sizes["y"] == 1370 and cube.sizes["x"] == 1365  # TRIMSEC [18:1382,1:1370]
    assert cube["raw"].dtype == np.float32
    index = int(np.flatnonzero(cube["frame_type"].values == "light")[0])
    path = str(cube["path"].values[index])
    header = fits.getheader(path)
    raw = fits.getdata(path).astype(np.float64)
    ys, xs = parse_section(header["TRIMSEC"])
    by, bx = parse_section(header["BIASSEC"])
    removed = raw[ys, xs] - cube["raw"][index].values
    # the overscan model is one level per row...
    assert removed.std(axis=1).max() < 0.01
    # ...the median of the overscan strip in that row, which follows the readout transient of the
    # first rows (534 ADU in row 1, settling to 1625 by row 15)
    np.testing.assert_allclose(removed[:, 0], np.median(raw[by, bx], axis=1), atol=1e-3)
    assert 1600 < removed.mean() < 1650  # bias level about 1625 ADU
    wcs = header_wcs(fits.Header.fromstring(str(cube["wcs_header"].values[index])))
    ra, dec = wcs.all_pix2world([[1365 / 2, 1370 / 2]], 0)[0]
    assert abs(ra - 124.62) < 0.05 and abs(dec - 25.33) < 0.05


def test_cluster_path_equals_serial(c14_frames, tmp_path, dask_local_client):
    files = sorted(c14_frames.glob("*.fit.gz"))[::4]
    serial = ingest(files, tmp_path / "serial")
    parallel = ingest(files, tmp_path / "parallel", client=dask_local_client)
    assert serial.counts == parallel.counts
    a, b = open_cube(tmp_path / "serial"), open_cube(tmp_path / "parallel")
    np.testing.assert_array_equal(a["raw"].values, b["raw"].values)
    np.testing.assert_array_equal(a["time_mjd"].values, b["time_mjd"].values)


# --- bad input -----------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: 2880 + 1000])


def _non_fits(path: Path) -> None:
    path.write_text("SIMPLE? no, this is a text file with a FITS name\n" * 100)


def _table_only(path: Path) -> None:
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=np.ones(3))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path, overwrite=True)


def _other_shape(path: Path) -> None:
    write_fits(path, shape=(30, 50))


def _no_exptime(path: Path) -> None:
    write_fits(path, exptime=None)


def _no_time(path: Path) -> None:
    write_fits(path, date_obs=None)


def _bad_time(path: Path) -> None:
    write_fits(path, date_obs="yesterday at dusk")


BAD_CASES = {
    "truncated": (_truncate, "truncated"),
    "empty": (lambda p: p.write_bytes(b""), "not a readable FITS file|empty"),
    "non_fits": (_non_fits, "not a readable FITS file"),
    "table_only": (_table_only, "no 2-D image"),
    "other_shape": (_other_shape, r"frame shape \(30, 50\) differs"),
    "no_exptime": (_no_exptime, "exposure"),
    "no_time": (_no_time, "time"),
    "bad_time": (_bad_time, "time|DATE-OBS"),
}


def _bad_night(folder: Path, case: str) -> tuple[list[np.ndarray], Path]:
    good = _night(folder)
    bad = folder / f"bad_{case}.fits"
    make, _ = BAD_CASES[case]
    if case == "truncated":
        write_fits(bad)
    make(bad)
    return good, bad


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_frame_is_skipped_with_its_reason(case, tmp_path, caplog):
    good, bad = _bad_night(tmp_path / "raw", case)
    result = ingest(tmp_path / "raw", tmp_path / "run")
    messages = [r.getMessage() for r in caplog.records if r.name == "lcdask"]
    assert len([m for m in messages if bad.name in m]) == 1, messages  # one line for the problem
    assert re.search(BAD_CASES[case][1], messages[0], flags=re.I)
    assert result.counts["light"] == 4  # the rest ingested
    cube = open_cube(tmp_path / "run")
    skipped = json.loads(cube.attrs["skipped"])
    assert [Path(s["path"]).name for s in skipped] == [bad.name]
    assert re.search(BAD_CASES[case][1], skipped[0]["reason"], flags=re.I)
    lights = cube.where(cube["frame_type"] == "light", drop=True)
    np.testing.assert_array_equal(lights["raw"].values, np.stack(good))


def test_cli_reports_each_bad_frame_in_one_line(tmp_path, capsys):
    for case in BAD_CASES:
        _bad_night(tmp_path / "raw", case)
    status = main(
        ["ingest", str(tmp_path / "raw"), "--out", str(tmp_path / "run"), "--workers", "2"]
    )
    assert status == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for case in BAD_CASES:
        lines = [line for line in err.splitlines() if f"bad_{case}.fits" in line]
        assert len(lines) == 1 and lines[0].startswith("lcdask: "), err
    assert len(json.loads(open_cube(tmp_path / "run").attrs["skipped"])) == len(BAD_CASES)


def test_image_in_extension_only_is_read(tmp_path):
    _night(tmp_path / "raw")
    data = np.full((40, 50), 1234, np.uint16)
    header = fits.Header(
        {"IMAGETYP": "Light Frame", "DATE-OBS": "2024-05-01T04:00:00", "EXPTIME": 30.0}
    )
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header=header)]).writeto(
        tmp_path / "raw" / "ext.fits"
    )
    result = ingest(tmp_path / "raw", tmp_path / "run")
    assert result.counts["light"] == 5 and result.skipped == []
    cube = open_cube(tmp_path / "run")
    index = int(np.flatnonzero([str(p).endswith("ext.fits") for p in cube["path"].values])[0])
    assert np.all(cube["raw"][index].values == 1234)


def test_nonfinite_pixels_are_flagged(tmp_path):
    _night(tmp_path / "raw")
    data = np.full((40, 50), 1000.0, np.float32)
    data[3, 4], data[5, 6] = np.nan, np.inf
    write_fits(tmp_path / "raw" / "nan.fits", data)
    result = ingest(tmp_path / "raw", tmp_path / "run")
    assert [Path(f.path).name for f in result.flagged] == ["nan.fits"]
    cube = open_cube(tmp_path / "run")
    assert cube["raw"].dtype == np.float32  # mixed pixel types give float32
    index = int(np.flatnonzero([str(p).endswith("nan.fits") for p in cube["path"].values])[0])
    assert cube["flags"].values[index] == FrameFlag.NONFINITE
    assert "2 NaN or infinite" in str(cube["flag_reason"].values[index])


def test_no_usable_frame_is_a_clear_error(tmp_path):
    _non_fits(tmp_path / "x.fits")
    with pytest.raises(LcdaskError, match="no usable frames"):
        ingest(tmp_path, tmp_path / "run")


def test_failed_fill_leaves_no_product(tmp_path, monkeypatch):
    import lcdask.stages.ingest as ingest_module

    _night(tmp_path / "raw")

    def explode(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ingest_module, "_fill_frame", explode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingest(tmp_path / "raw", tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []  # neither cube.zarr nor a temporary


def test_existing_cube_is_kept_unless_overwrite(tmp_path):
    _night(tmp_path / "raw")
    ingest(tmp_path / "raw", tmp_path / "run")
    with pytest.raises(LcdaskError, match="exists"):
        ingest(tmp_path / "raw", tmp_path / "run")
    ingest(tmp_path / "raw", tmp_path / "run", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["cube.zarr"]


def test_append_later_lights_and_flag_repeats(tmp_path):
    data = _night(tmp_path / "raw")
    ingest(tmp_path / "raw", tmp_path / "run")
    late = tmp_path / "late"
    new = []
    for i in (4, 5):
        t = Time("2024-05-01T03:00:00") + i * 60 * u.s
        new.append(write_fits(late / f"light_{i}.fits", date_obs=t.isot, seed=i))
    shutil.copy(late / "light_5.fits", late / "light_5_copy.fits")  # the same frame twice
    paths = sorted(late.glob("*.fits"))
    result = append(paths, tmp_path / "run")
    cube = open_cube(tmp_path / "run")
    assert result.n_frames == cube.sizes["frame"] == 11
    names = [Path(p).name for p in cube["path"].values]
    for name, pixels in (("light_0.fits", data[0]), ("light_4.fits", new[0])):
        np.testing.assert_array_equal(cube["raw"][names.index(name)].values, pixels)
    copy = names.index("light_5_copy.fits")
    assert cube["flags"].values[copy] == FrameFlag.DUPLICATE
    assert "duplicate of" in str(cube["flag_reason"].values[copy])
    assert [Path(s.path).name for s in result.flagged] == ["light_5_copy.fits"]
    assert cube["flags"].values[names.index("light_5.fits")] == 0
    # an earlier light, or a calibration frame, cannot be appended: the cube is left as it is
    write_fits(tmp_path / "early" / "light_x.fits", date_obs="2024-05-01T02:00:00", seed=9)
    write_fits(tmp_path / "dark" / "dark_x.fits", imagetyp="Dark Frame", seed=8)
    for folder, match in (("early", "earlier than"), ("dark", "dark frames")):
        with pytest.raises(NotAppendable, match=match):
            append(sorted((tmp_path / folder).glob("*.fits")), tmp_path / "run")
    assert open_cube(tmp_path / "run").sizes["frame"] == 11
