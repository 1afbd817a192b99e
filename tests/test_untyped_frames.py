"""Frames with no type keyword (small telescopes), colour frames, and what the terminal shows.

The frames are written in folders whose names tell nothing (``a/b/c/night``): `classify_frame`
reads the last four parts of a path, and pytest's folder names carry the test's name.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import astropy.units as u
import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time
from conftest import write_fits

from lcdask.errors import FrameError, HeaderError, LcdaskError
from lcdask.io.cube import open_cube
from lcdask.io.fits import read_frame, read_frame_header, read_frame_sample
from lcdask.io.headers import UntypedFrameError, classify_frame
from lcdask.stages.ingest import (
    MIN_STARS,
    Skipped,
    count_stars,
    ingest,
    reason_lines,
    untyped_frame_type,
)

SHAPE = (128, 128)
N_STARS = 30


def _night_folder(tmp_path: Path) -> Path:
    return tmp_path / "a" / "b" / "c" / "night"


def _sky(seed: int, level: float = 1500.0, noise: float = 12.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return level + rng.normal(0.0, noise, SHAPE)


def _star_field(seed: int) -> np.ndarray:
    """Sky of 1500 ADU (noise 12) with `N_STARS` Gaussian stars, FWHM 3 px, peaks 300-3000 ADU."""
    image = _sky(seed)
    rng = np.random.default_rng(1000)  # the same stars in every frame
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    sigma = 3.0 / 2.355
    for _ in range(N_STARS):
        y, x = rng.uniform(8, SHAPE[0] - 8, 2)
        peak = rng.uniform(300, 3000)
        image += peak * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
    return image


def _untyped(path: Path, image: np.ndarray, *, minute: int = 0, **keys) -> None:
    """A frame with no IMAGETYP: ``write_fits`` writes one, and it is removed."""
    t = Time("2024-05-01T03:00:00") + minute * 60 * u.s
    write_fits(path, np.clip(image, 0, 65535).astype(np.uint16), date_obs=t.isot, **keys)
    fits.delval(path, "IMAGETYP")


def _lcdask_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lcdask" and r.levelno >= 20]


# --- the header alone ---------------------------------------------------------------------------


def test_no_type_key_is_untyped_and_says_so_in_one_short_line():
    with pytest.raises(UntypedFrameError, match="cannot tell the frame type") as info:
        classify_frame(fits.Header({"EXPTIME": 30.0}), "/n/a/b/img001.fits")
    assert len(str(info.value)) < 160  # one short line; the key list is in the docstring
    # FRAME holding a coordinate frame, and PICTTYPE 0 ("unknown"), are no frame type either
    with pytest.raises(UntypedFrameError):
        classify_frame(fits.Header({"FRAME": "FK5", "PICTTYPE": 0}), "/n/img001.fits")
    # a type key with a value that is no type is not "untyped": such frames are not lights
    with pytest.raises(HeaderError, match=r"IMAGETYP='COMPARISON' is not a light") as info:
        classify_frame(fits.Header({"IMAGETYP": "COMPARISON"}), "/n/img001.fits")
    assert not isinstance(info.value, UntypedFrameError)


# --- the pixels ---------------------------------------------------------------------------------


def test_count_stars_sees_stars_not_hot_pixels_or_cosmic_rays():
    assert count_stars(_star_field(1).astype(np.float32)) >= 0.8 * N_STARS  # faint ones may merge
    dark = _sky(2, level=1000.0, noise=6.0)
    rng = np.random.default_rng(3)
    for y, x in rng.integers(4, 124, (200, 2)):  # 200 hot pixels, single
        dark[y, x] += rng.uniform(500, 20000)
    for y, x in rng.integers(4, 120, (20, 2)):  # 20 cosmic-ray tracks, 1 px wide, 6 px long
        dark[y, x : x + 6] += 3000
    for y, x in rng.integers(4, 120, (20, 2)):  # 20 sharp 2x3 hot clusters
        dark[y : y + 2, x : x + 3] += np.array([[300, 5000, 300], [300, 800, 300]])
    assert count_stars(dark.astype(np.float32)) < MIN_STARS


@pytest.mark.parametrize(
    ("image", "exptime", "obj", "expected", "why"),
    [
        (_star_field(1), 30.0, "", "light", r"\d+ stars in its central 128x128 px"),
        (_sky(1), 30.0, "M67", "light", r"exposure 30 s and OBJECT='M67'"),
        (_sky(1, level=1000.0, noise=5.0), 0.0, "M67", None, r"exposure 0 s, a bias\?"),
        (
            _sky(1, level=30000.0, noise=150.0),
            5.0,
            "M67",
            None,
            r"level \d+ ADU \(46% of saturation\) and no stars, a flat\?",
        ),
        (_sky(1), 30.0, "", None, r"no OBJECT and no stars, a dark\?"),
    ],
    ids=["stars", "object", "bias_like", "flat_like", "nothing"],
)
def test_untyped_frame_type(image, exptime, obj, expected, why):
    kind, reason = untyped_frame_type(
        image.astype(np.float32), exptime_s=exptime, object_name=obj, saturate_adu=65535.0
    )
    assert kind == expected
    assert re.fullmatch(why, reason), reason


# --- a whole ingest -----------------------------------------------------------------------------


def test_untyped_night_is_taken_as_lights_with_one_line(tmp_path, caplog):
    folder = _night_folder(tmp_path)
    for i in range(6):  # no stars (a cloudy field), but an exposure and an OBJECT
        _untyped(folder / f"img{i:03d}.fits", _sky(i), minute=i, OBJECT="M67")
    for i in range(6, 12):  # stars, and no OBJECT
        _untyped(folder / f"img{i:03d}.fits", _star_field(i), minute=i)
    caplog.set_level(logging.INFO, logger="lcdask")
    result = ingest(folder, tmp_path / "run")
    assert result.counts == {"light": 12} and not result.skipped
    assert _lcdask_lines(caplog) == [
        "12 frames had no IMAGETYP: taken as lights (6 by the stars in them, 6 by an exposure > 0 "
        "and an OBJECT; each in run.json 'typed')"
    ]
    cube = open_cube(result.cube_path)
    typed = {Path(t["path"]).name: t for t in json.loads(cube.attrs["typed"])}
    assert len(typed) == 12 and {t["frame_type"] for t in typed.values()} == {"light"}
    for i in range(6):
        assert typed[f"img{i:03d}.fits"]["why"] == "exposure 30 s and OBJECT='M67'"
    for i in range(6, 12):
        why = typed[f"img{i:03d}.fits"]["why"]
        assert re.fullmatch(r"\d+ stars in its central 128x128 px", why)
    # and each frame's own notes say it
    assert all("taken as a light" in str(n) for n in cube["notes"].values)


def test_untyped_bias_flat_and_dark_like_frames_are_not_lights(tmp_path, caplog):
    folder = _night_folder(tmp_path)
    for i in range(4):
        _untyped(folder / f"img{i:03d}.fits", _star_field(i), minute=i)
        # exposure 0: a bias
        _untyped(folder / f"img1{i:02d}.fits", _sky(10 + i, 1000.0, 5.0), exptime=0.0)
        # high and starless: a flat, whatever its OBJECT
        _untyped(folder / f"img2{i:02d}.fits", _sky(20 + i, 30000.0, 150.0), OBJECT="M67")
        # a dark keeping the last OBJECT: 1.5 noise above the exposure-0 frames
        _untyped(folder / f"img3{i:02d}.fits", _sky(30 + i, 1010.0, 6.5), OBJECT="M67")
    caplog.set_level(logging.INFO, logger="lcdask")
    result = ingest(folder, tmp_path / "run")
    assert result.counts == {"light": 4}
    names = {Path(s.path).name[:4] for s in result.skipped}
    assert names == {"img1", "img2", "img3"} and len(result.skipped) == 12
    lines = _lcdask_lines(caplog)
    # the lights' line, then one line per problem (4 frames each), not one per file
    assert len(lines) == 4, lines
    assert lines[0].startswith("4 frames had no IMAGETYP: taken as lights (4 by the stars")
    assert re.match(r"4 frames skipped: no frame type .*exposure 0 s, a bias\?", lines[1])
    assert re.match(r"4 frames skipped: no frame type .*a flat\?", lines[2])
    assert re.match(r"4 frames skipped: .*sigma above the exposure-0 frames' .*a dark\?", lines[3])
    cube = open_cube(result.cube_path)
    assert len(json.loads(cube.attrs["skipped"])) == 12  # each file's reason kept for run.json


def test_no_usable_frames_is_one_short_error(tmp_path):
    folder = _night_folder(tmp_path)
    for i in range(40):
        _untyped(folder / f"img{i:03d}.fits", _sky(i, 1000.0, 5.0), exptime=0.0)
    with pytest.raises(LcdaskError) as info:
        ingest(folder, tmp_path / "run")
    message = str(info.value)
    assert message.startswith("no usable frames among 40 files: 40 files: no frame type")
    assert len(message) < 300 and "\n" not in message  # not 40 reasons joined


def test_reason_lines_group_identical_reasons():
    items = [Skipped(f"/n/f{i}.fits", f"/n/f{i}.fits: {i + 1} NaN pixels") for i in range(5)]
    items.append(Skipped("/n/g.fits", "/n/g.fits: truncated file"))
    assert reason_lines(items, what="frames flagged") == [
        "5 frames flagged: 1 NaN pixels (e.g. f0.fits; each file in run.json)",
        "/n/g.fits: truncated file",
    ]
    assert reason_lines(items[:3]) == [item.reason for item in items[:3]]  # few: one each


# --- colour and 3-D frames ----------------------------------------------------------------------


def _write_3d(path: Path, planes: np.ndarray, **keys) -> None:
    hdu = fits.PrimaryHDU(planes)
    hdu.header.update(IMAGETYP="Light Frame", DATE_OBS="2024-05-01T03:00:00", EXPTIME=30.0)
    hdu.header.rename_keyword("DATE_OBS", "DATE-OBS")
    hdu.header.update(keys)
    hdu.writeto(path)


def test_single_plane_3d_image_is_read_as_2d(tmp_path):
    plane = np.arange(40 * 50, dtype=np.int16).reshape(1, 40, 50)
    _write_3d(tmp_path / "one.fits", plane)
    head = read_frame_header(tmp_path / "one.fits")
    assert head.shape == (40, 50) and head.colour == ""
    np.testing.assert_array_equal(read_frame(tmp_path / "one.fits", dtype=None), plane[0])


def test_rgb_frame_is_read_as_the_mean_of_its_planes(tmp_path):
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 30000, (3, 40, 50)).astype(np.int16)
    _write_3d(tmp_path / "rgb.fits", planes)
    assert read_frame_header(tmp_path / "rgb.fits").colour == "rgb"
    image = read_frame(tmp_path / "rgb.fits", dtype=None)
    assert image.shape == (40, 50) and image.dtype == np.float32
    # float32 holds the mean of three int16 to 1 part in 2**24
    np.testing.assert_allclose(image, planes.mean(axis=0), rtol=1e-7)
    # the central 20x20 block, from an even pixel (whole 2x2 blocks of a Bayer frame)
    sample = read_frame_sample(tmp_path / "rgb.fits", size=20)
    np.testing.assert_allclose(sample, planes.mean(axis=0)[10:30, 14:34], rtol=1e-7)


def test_a_data_cube_of_several_exposures_is_not_a_frame(tmp_path):
    _write_3d(tmp_path / "cube.fits", np.zeros((5, 40, 50), np.int16))
    with pytest.raises(FrameError, match="a 3-D image of 5 planes, not a frame"):
        read_frame_header(tmp_path / "cube.fits")


@pytest.mark.parametrize("pattern", ["RGGB", "GBRG"])
def test_bayer_frame_is_read_as_2x2_sums(tmp_path, pattern):
    rng = np.random.default_rng(1)
    mosaic = rng.integers(0, 60000, (41, 50)).astype(np.uint16)  # an odd last row is dropped
    write_fits(tmp_path / "cfa.fits", mosaic, BAYERPAT=pattern)
    assert read_frame_header(tmp_path / "cfa.fits").colour == "bayer"
    image = read_frame(tmp_path / "cfa.fits", dtype=None)
    expected = mosaic[:40].astype(np.int64).reshape(20, 2, 25, 2).sum(axis=(1, 3))
    np.testing.assert_array_equal(image, expected)  # exact: sums below 2**24 in float32


def test_bayer_night_is_ingested_at_half_resolution_with_one_line(tmp_path, caplog):
    folder = _night_folder(tmp_path)
    for i in range(3):
        t = (Time("2024-05-01T03:00:00") + i * 60 * u.s).isot
        write_fits(folder / f"img{i}.fits", date_obs=t, seed=i, COLORTYP="RGGB", SATURATE=60000)
    caplog.set_level(logging.INFO, logger="lcdask")
    result = ingest(folder, tmp_path / "run")
    cube = open_cube(result.cube_path)
    assert cube["raw"].shape == (3, 20, 25) and cube["raw"].dtype == np.float32
    np.testing.assert_array_equal(cube["saturate_adu"].values, 4 * 60000.0)  # a sum of 4 pixels
    lines = [line for line in _lcdask_lines(caplog) if "Bayer" in line]
    assert lines == [
        "3 Bayer-matrix colour frame(s): read as luminance, 2x2 pixel sums (half resolution)"
    ]


# --- no worker traceback for a handled failure --------------------------------------------------


def _raise_frame_error(path: str) -> None:
    raise FrameError(f"{path}: not a readable FITS file (a test)")


def _raise_key_error(path: str) -> None:
    raise KeyError("a bug in a task")


def test_handled_failure_leaves_no_worker_traceback(capfd, tmp_path):
    from lcdask.cluster import dask_client

    folder = _night_folder(tmp_path)
    for i in range(3):
        write_fits(folder / f"img{i}.fits", seed=i, date_obs=f"2024-05-01T03:0{i}:00")
    (folder / "corrupt.fits").write_bytes(b"SIMPLE  =                    T" + b"\0" * 100)
    # the workers are started here, so that they write to the captured stderr
    with dask_client(n_workers=1, dashboard=False) as client:
        result = ingest(folder, tmp_path / "run", client=client)
        assert result.counts == {"light": 3} and len(result.skipped) == 1
        # a task raising an LcdaskError that the driver catches (as the run does with its steps)
        with pytest.raises(FrameError):
            client.submit(_raise_frame_error, "x.fits", pure=False).result()
        # a bug still shows, with its traceback
        with pytest.raises(KeyError):
            client.submit(_raise_key_error, "x.fits", pure=False).result()
        client.run(lambda: None)  # the workers' log records are written by now
    err = capfd.readouterr().err
    failed = err.split("Compute Failed")[1:]
    assert len(failed) == 1 and "KeyError" in failed[0], err  # the bug's record, only
    assert "FrameError" not in err and "corrupt.fits" not in err
