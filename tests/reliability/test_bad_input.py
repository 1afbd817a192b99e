"""Bad input: one bad item injected into a simulated night, the whole run, against the clean run.

For each case the run finishes; the bad item is *skipped* (a file that cannot be a frame: listed in
``run.json["skipped"]``), *flagged* (a frame in the cube that is not used, or used with care: listed
in ``run.json["flagged"]`` and set in the frame's ``flags`` with its ``flag_reason``) or, for
harmless oddities (the image in an extension, names out of time order, non-ASCII header text),
*accepted* as a good frame without a word; the user sees exactly one line naming the bad file
(none for accepted ones); and every product of the good frames is the same as in the clean run of
the same night -- exactly, since the good frames are the same pixels through the same
deterministic functions, unless a case says why not beside its tolerance.

Each case's run is made once and shared by its three tests. ``test_cli_*`` run every case at once
through ``lcdask run`` in a subprocess and read what the user sees on stderr.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _night import (
    NONFINITE_PIXELS,
    RunResult,
    assert_same_detections,
    assert_same_frames,
    assert_same_products,
    bad_time,
    cloudy,
    cube_frames,
    duplicate,
    extension_only,
    frame_of,
    light_leak_dark,
    lightcurves_by_time,
    matched_sources,
    no_exptime,
    no_time,
    non_ascii,
    nonfinite,
    not_fits,
    other_field,
    other_shape,
    out_of_order,
    run_cli,
    run_here,
    saturated,
    stable_sources,
    truncated,
    wrong_pointing,
    zero_length,
)
from astropy.io import fits
from astropy.time import Time

from lcdask.flags import FrameFlag

pytest_plugins = ["_fixtures"]  # the suite's fixtures: night, clean, other_night


@dataclass(frozen=True)
class Case:
    """A bad item: how to inject it, what must become of it, the words its reason must hold."""

    inject: Callable[..., str]
    outcome: str  # "skipped", "flagged" or "accepted"
    reason: str = ""  # a regular expression the reason (and the user's line) must match
    flag: FrameFlag = FrameFlag.OK


def _reference_light(clean: RunResult) -> str:
    """The light Level 2 plate-solves first: the one with most detections (first of equals)."""
    frames = pd.read_parquet(clean.out / "frames.parquet")
    best = frames.loc[frames["n_sources"].idxmax()]
    return Path(best["path"]).name


CASES = {
    "truncated": Case(lambda raw, **_: truncated(raw), "skipped", r"truncated file"),
    "zero_length": Case(lambda raw, **_: zero_length(raw), "skipped", r"empty file, 0 bytes"),
    "not_fits": Case(lambda raw, **_: not_fits(raw), "skipped", r"not a readable FITS file"),
    "extension_only": Case(lambda raw, **_: extension_only(raw), "accepted"),
    "nonfinite": Case(
        lambda raw, **_: nonfinite(raw), "flagged", r"30 NaN or infinite", FrameFlag.NONFINITE
    ),
    "saturated": Case(
        lambda raw, **_: saturated(raw), "flagged", r"saturated frame, 100%", FrameFlag.SATURATED
    ),
    "other_shape": Case(
        lambda raw, **_: other_shape(raw), "skipped", r"shape \(200, 256\) differs"
    ),
    "no_exptime": Case(lambda raw, **_: no_exptime(raw), "skipped", r"no exposure time"),
    "no_time": Case(lambda raw, **_: no_time(raw), "skipped", r"no usable observation time"),
    "bad_time": Case(lambda raw, **_: bad_time(raw), "skipped", r"25:61.* out of range"),
    "duplicate": Case(
        lambda raw, **_: duplicate(raw),
        "flagged",
        r"duplicate of .*light_0005\.fits",
        FrameFlag.DUPLICATE,
    ),
    "out_of_order": Case(lambda raw, **_: out_of_order(raw), "accepted"),
    "cloudy": Case(
        lambda raw, night, **_: cloudy(raw, night),
        "flagged",
        r"plate solve failed: too few detections",
        FrameFlag.ASTROMETRY_FAILED,
    ),
    "other_field": Case(
        lambda raw, other, **_: other_field(raw, other),
        "flagged",
        r"plate solve failed",
        FrameFlag.ASTROMETRY_FAILED,
    ),
    "wrong_pointing": Case(
        lambda raw, reference, **_: wrong_pointing(raw, reference),
        "flagged",
        r"pointing",
    ),
    "light_leak_dark": Case(
        lambda raw, **_: light_leak_dark(raw),
        "flagged",
        r"dark frame not used in the masters: .*light leak",
        FrameFlag.REJECTED,
    ),
    "non_ascii": Case(lambda raw, **_: non_ascii(raw), "accepted"),
}


@pytest.fixture(scope="module")
def case_runs(night, other_night, clean, tmp_path_factory):
    """Each case's run, made on first use: ``get(name) -> (RunResult, bad file name)``."""
    made: dict[str, tuple[RunResult, str]] = {}

    def get(name: str) -> tuple[RunResult, str]:
        if name not in made:
            import shutil

            folder = tmp_path_factory.mktemp(name)
            raw = folder / "raw"
            shutil.copytree(night / "raw", raw)
            bad = CASES[name].inject(
                raw, night=night, other=other_night, reference=_reference_light(clean)
            )
            made[name] = (run_here(raw, folder / "run", night), bad)
        return made[name]

    return get


# --- the run finishes and the good frames' products are the same -------------------------------


@pytest.mark.parametrize("name", CASES)
def test_run_finishes_with_the_same_products(name, case_runs, clean):
    result, bad = case_runs(name)
    assert all(s["status"] == "complete" for s in result.record["stages"].values())
    if name == "nonfinite":
        _assert_same_but_the_nonfinite_frame(result.out, clean.out, result.out.parent / "raw", bad)
    elif name == "wrong_pointing":
        _assert_same_from_another_reference(result.out, clean.out)
    else:
        assert_same_products(result.out, clean.out)


def _assert_same_from_another_reference(case: Path, clean: Path) -> None:
    """The wrong header fails the reference solve of its frame: another frame is the reference.

    Each frame's solution keeps the reference's scale and rotation when a full fit to its few
    stars would not be better (`lcdask.astrometry`), so every plate solution moves within its
    errors: positions by up to 0.03" (measured; asserted 0.05", a third of the fits' 0.15" rms),
    the fit rms by a few percent. Pixels, fluxes, detections and zero points are the same.
    """
    import xarray as xr

    assert_same_frames(case, clean, rtol={"astrometry_rms_arcsec": 0.05})
    arcsec = 1 / 3600
    assert_same_detections(case, clean, tol={"ra": (0, 0.05 * arcsec), "dec": (0, 0.05 * arcsec)})
    a, b = lightcurves_by_time(case), lightcurves_by_time(clean)
    a = a.sel(frame=b["frame"].values)
    for name in ("ra", "dec"):
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=0.05 * arcsec, err_msg=name)
    moved = ["ra", "dec", "rms_arcsec"]
    xr.testing.assert_allclose(a.drop_vars(moved), b.drop_vars(moved), rtol=1e-9)
    sa, sb = (pd.read_parquet(d / "sources.parquet") for d in (case, clean))
    pd.testing.assert_series_equal(sa["kind"], sb["kind"])
    np.testing.assert_allclose(sa["ra"], sb["ra"], rtol=0, atol=0.05 * arcsec)


NONFINITE_FRAME_RTOL = {
    "n_sources": 0.02,  # 1 of its 55 detections sits on a NaN pixel
    "zero_point": 0.005 / 22.5,  # 5 mmag: that star's absence from the fit moved it by 1.6 mmag
    "sky": 1e-4,  # 30 masked pixels of 65536 move its sky level by 0.05 of 2000 ADU...
    "sky_rms": 1e-3,  # ...and its sky noise by 0.02 of 39 ADU
    "astrometry_rms_arcsec": 0.01,  # one star fewer in its WCS fit (seen: 0.4%)
}


def _assert_same_but_the_nonfinite_frame(case: Path, clean: Path, raw: Path, bad: str) -> None:
    """The frame with NaN/inf pixels differs a little, and only through its own measurements."""
    frames = pd.read_parquet(clean / "frames.parquet")
    t_bad = float(frames.loc[[Path(p).name == bad for p in frames["path"]], "time_mjd"].iloc[0])
    # The other frames' results and detections are exact; the bad frame's within its tolerances.
    assert_same_frames(case, clean, rtol=NONFINITE_FRAME_RTOL)
    assert_same_detections(case, clean, skip_times=[t_bad])
    a = pd.read_parquet(case / "detections.parquet")
    b = pd.read_parquet(clean / "detections.parquet")
    a, b = (d[np.isclose(d["time_mjd"], t_bad, rtol=0, atol=1e-7)] for d in (a, b))
    y, x = np.nonzero(~np.isfinite(fits.getdata(raw / bad)))
    assert len(y) == sum(NONFINITE_PIXELS.values())
    far = np.hypot(b["x"].to_numpy()[:, None] - x, b["y"].to_numpy()[:, None] - y).min(axis=1) > 10
    for _, star in b[far].iterrows():  # stars clear of the bad pixels by more than an aperture
        near = np.hypot(a["x"] - star["x"], a["y"] - star["y"])
        twin = a.loc[near.idxmin()]
        assert near.min() < 1e-3  # the same centroid: the masked pixels are not in its window
        # the sky under it moves by ~0.05 ADU/px: well under a tenth of its flux error
        assert abs(twin["flux"] - star["flux"]) < 0.1 * star["flux_err"]
    # light curves: raw fluxes exact in the other frames; the ensemble-relative fluxes of the
    # stable stars move by under 0.5% (seen 0.3%: one comparison star in one frame changed by
    # 0.5% shifts its normalisation and weight), 4x below the 2% the classifier calls variable
    lc_a, lc_b = lightcurves_by_time(case), lightcurves_by_time(clean)
    others = [t for t in lc_b["frame"].values if not np.isclose(t, t_bad, rtol=0, atol=1e-7)]
    np.testing.assert_array_equal(
        lc_a["flux"].sel(frame=others).values, lc_b["flux"].sel(frame=others).values
    )
    stable = lc_b["source_id"].isin(stable_sources(clean)["source_id"].to_numpy()).values
    diff = np.abs(lc_a["rel_flux"].values[stable] - lc_b["rel_flux"].values[stable])
    assert np.nanmax(diff) < 0.005
    matched = matched_sources(case, clean)
    assert (matched["kind_case"] == "stable").all()
    assert (matched["n_frames_case"] == matched["n_frames"]).all()
    # median magnitudes over 8 frames: the star with a NaN pixel 3 px from its centre changed by
    # 0.5% in that frame, which moved its median by 0.003 mag; the others by 0.0004 or less
    np.testing.assert_allclose(matched["mag_case"], matched["mag"], atol=0.005)


# --- the bad item is recorded, with its reason ----------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_bad_item_recorded_with_reason(name, case_runs):
    result, bad = case_runs(name)
    case = CASES[name]
    record = result.record
    on_disk = json.loads((result.out / "run.json").read_text())
    assert on_disk["skipped"] == record["skipped"] and on_disk["flagged"] == record["flagged"]
    skipped = [s for s in record["skipped"] if Path(s["path"]).name == bad]
    flagged = [f for f in record["flagged"] if Path(f["path"]).name == bad]
    cube = cube_frames(result.out)
    if case.outcome == "skipped":
        assert len(skipped) == 1 and not flagged
        assert re.search(case.reason, skipped[0]["reason"]), skipped[0]["reason"]
        assert bad not in set(cube["name"])  # not in the cube
    elif case.outcome == "flagged":
        assert len(flagged) == 1 and not skipped, record["flagged"]
        assert re.search(case.reason, flagged[0]["reason"]), flagged[0]["reason"]
        index = frame_of(cube, bad)
        assert flagged[0]["frame"] == index
        if case.flag:
            assert cube["flags"].iloc[index] & case.flag
        assert re.search(case.reason, cube["flag_reason"].iloc[index])
    else:
        assert not skipped and not flagged
        assert cube["flags"].iloc[frame_of(cube, bad)] == 0
    # nothing else is skipped or flagged: the clean night has no bad frame
    assert len(record["skipped"]) + len(record["flagged"]) == (case.outcome != "accepted")


@pytest.mark.parametrize("name", list(CASES))
def test_user_sees_one_line(name, case_runs):
    result, bad = case_runs(name)
    case = CASES[name]
    lines = [line for line in result.lines if bad in line]
    if case.outcome == "accepted":
        assert lines == []
    else:
        assert len(lines) == 1, result.lines
        assert re.search(case.reason, lines[0]), lines[0]


def test_frames_out_of_order_are_put_in_time_order(case_runs):
    result, bad = case_runs("out_of_order")
    cube = cube_frames(result.out)
    times = cube.loc[cube["frame_type"] == "light", "time_mjd"].to_numpy()
    assert np.all(np.diff(times) > 0)  # the cube is in time order...
    header = fits.getheader(result.out.parent / "raw" / bad)
    start = cube["time_mjd"].iloc[frame_of(cube, bad)] - header["EXPTIME"] / 2 / 86400
    # ...and the renamed file keeps its own time (to a millisecond: float64 MJD resolves 1 us)
    assert abs(start - Time(header["DATE-OBS"], scale="utc").mjd) * 86400 < 1e-3


# --- all at once, through the command line ------------------------------------------------------


COMBINED = [n for n in CASES if n != "wrong_pointing"]  # its frame is the nonfinite one's


@pytest.fixture(scope="module")
def combined(night, other_night, tmp_path_factory):
    """Every bad item in one night, run by ``lcdask run`` in a subprocess."""
    import shutil

    folder = tmp_path_factory.mktemp("combined")
    raw = folder / "raw"
    shutil.copytree(night / "raw", raw)
    bad = {}
    for name in [n for n in COMBINED if n != "out_of_order"] + ["out_of_order"]:
        bad[name] = CASES[name].inject(raw, night=night, other=other_night, reference=None)
    assert len(set(bad.values())) == len(bad)
    process = run_cli(raw, folder / "run", night)
    return process, bad, folder / "run"


def test_cli_run_finishes_without_a_traceback(combined, clean):
    process, bad, out = combined
    assert process.returncode == 0, process.stderr
    assert "Traceback" not in process.stderr
    record = json.loads((out / "run.json").read_text())
    n_bad = sum(CASES[n].outcome != "accepted" for n in bad)
    assert len(record["skipped"]) + len(record["flagged"]) == n_bad
    assert_same_frames(out, clean.out, rtol=NONFINITE_FRAME_RTOL)  # it holds the nonfinite frame


@pytest.mark.parametrize("name", COMBINED)
def test_cli_one_line_per_bad_item(name, combined):
    process, bad, _ = combined
    lines = [line for line in process.stderr.splitlines() if bad[name] in line]
    if CASES[name].outcome == "accepted":
        assert lines == []
    else:
        assert len(lines) == 1, process.stderr
        assert lines[0].startswith("lcdask: ") and re.search(CASES[name].reason, lines[0])
