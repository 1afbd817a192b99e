"""The fixes the reliability cases led to, each on its own, small and fast."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from _night import cube_frames, light_leak_dark
from astropy.io import fits

from lcdask.flags import SATURATED_FRACTION, UNUSABLE, FrameFlag
from lcdask.io.fits import read_frame_header
from lcdask.stages.calibrate import calibrate_cube
from lcdask.stages.ingest import ingest

pytest_plugins = ["_fixtures"]  # the suite's fixtures: night, clean, other_night


def _frame(path: Path, data: np.ndarray, date_obs: str, **keys) -> None:
    header = fits.Header({"IMAGETYP": "Light Frame", "DATE-OBS": date_obs, "EXPTIME": 30.0})
    header.update(keys)
    fits.PrimaryHDU(data, header=header).writeto(path)


def _lights(folder: Path, n: int = 3) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        data = np.random.default_rng(i).integers(900, 1200, (40, 50)).astype(np.uint16)
        _frame(folder / f"light_{i}.fits", data, f"2024-05-01T03:0{i}:00", SATURATE=60000.0)


def test_a_repeated_frame_is_flagged_duplicate_and_the_original_kept(tmp_path):
    _lights(tmp_path / "raw")
    shutil.copyfile(tmp_path / "raw" / "light_1.fits", tmp_path / "raw" / "light_1_again.fits")
    result = ingest(tmp_path / "raw", tmp_path / "run")
    frames = cube_frames(tmp_path / "run")
    copy = frames[frames["name"] == "light_1_again.fits"].iloc[0]
    assert copy["flags"] == FrameFlag.DUPLICATE and FrameFlag.DUPLICATE & UNUSABLE
    assert re.search(r"duplicate of .*light_1\.fits \(same frame type", copy["flag_reason"])
    assert (frames.loc[frames["name"] != "light_1_again.fits", "flags"] == 0).all()
    assert [Path(f.path).name for f in result.flagged] == ["light_1_again.fits"]


def test_a_repeated_frame_without_a_time_is_a_duplicate_too(tmp_path):
    _lights(tmp_path / "raw")
    data = np.random.default_rng(9).integers(990, 1010, (40, 50)).astype(np.uint16)
    for name in ("bias_a.fits", "bias_b.fits"):
        header = fits.Header({"IMAGETYP": "Bias Frame", "EXPTIME": 0.0})  # no DATE-OBS
        fits.PrimaryHDU(data, header=header).writeto(tmp_path / "raw" / name)
    ingest(tmp_path / "raw", tmp_path / "run")
    frames = cube_frames(tmp_path / "run").set_index("name")
    assert np.isnan(frames.loc["bias_b.fits", "time_mjd"])
    assert frames.loc["bias_a.fits", "flags"] == 0
    assert frames.loc["bias_b.fits", "flags"] == FrameFlag.DUPLICATE


def test_same_pixels_at_another_time_is_not_a_duplicate(tmp_path):
    _lights(tmp_path / "raw")
    data = fits.getdata(tmp_path / "raw" / "light_1.fits")
    _frame(tmp_path / "raw" / "later.fits", data, "2024-05-01T04:00:00", SATURATE=60000.0)
    ingest(tmp_path / "raw", tmp_path / "run")
    assert (cube_frames(tmp_path / "run")["flags"] == 0).all()


@pytest.mark.parametrize(("fraction", "flagged"), [(1.0, True), (0.6, True), (0.4, False)])
def test_a_mostly_saturated_frame_is_flagged(tmp_path, fraction, flagged):
    _lights(tmp_path / "raw")
    data = np.full((40, 50), 1000, np.uint16)
    data.reshape(-1)[: int(fraction * data.size)] = 65535
    _frame(tmp_path / "raw" / "sat.fits", data, "2024-05-01T03:30:00", SATURATE=60000.0)
    ingest(tmp_path / "raw", tmp_path / "run")
    frames = cube_frames(tmp_path / "run")
    sat = frames[frames["name"] == "sat.fits"].iloc[0]
    assert bool(sat["flags"] & FrameFlag.SATURATED) is flagged
    if flagged:
        assert f"{100 * fraction:.0f}% of the pixels at or above 60000 ADU" in sat["flag_reason"]
        assert f"limit {100 * SATURATED_FRACTION:.0f}%" in sat["flag_reason"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", r"not a readable FITS file \(empty file, 0 bytes\)"),
        (b"<html>404</html>" * 50, r"800 bytes starting b'<html>404</html><html>40', not with"),
    ],
)
def test_an_unreadable_file_says_what_it_is(tmp_path, content, reason):
    path = tmp_path / "x.fits"
    path.write_bytes(content)
    with pytest.raises(Exception, match=reason):
        read_frame_header(path)


@pytest.fixture(scope="module")
def leaky_cube(night, tmp_path_factory):
    folder = tmp_path_factory.mktemp("leak")
    shutil.copytree(night / "raw", folder / "raw")
    light_leak_dark(folder / "raw")
    ingest(folder / "raw", folder / "run")
    return folder / "run"


def test_a_rejected_dark_is_flagged_and_stays_so_when_calibrated_again(leaky_cube):
    first = calibrate_cube(leaky_cube)
    frames = cube_frames(leaky_cube)
    leak = frames[frames["name"] == "dark_leak.fits"].iloc[0]
    assert leak["flags"] == FrameFlag.REJECTED
    assert "dark frame not used in the masters: dark level" in leak["flag_reason"]
    assert (frames.loc[frames["name"] != "dark_leak.fits", "flags"] == 0).all()
    second = calibrate_cube(leaky_cube)  # judged afresh, not skipped for its own flag
    assert second["rejected"] == first["rejected"]
    again = cube_frames(leaky_cube)
    np.testing.assert_array_equal(again["flags"], frames["flags"])
    np.testing.assert_array_equal(again["flag_reason"], frames["flag_reason"])
    summary = json.loads(json.dumps(second["frames_used"]))
    assert not any("dark_leak" in p for p in summary["dark"])
