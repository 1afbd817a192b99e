"""Plate solving that needs no help: the pixel scale of the headers, the registry of solvers and
"auto"'s order, blind ``solve-field`` (with the installed Debian Tycho-2 index files, and on a
real Lowell frame), frames of another field, and the ``[astrometry]`` section."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from astropy.io import fits
from astropy.wcs import WCS
from conftest import catalog_of, lowell_frame, shared_data

from lcdask import astrometry as A
from lcdask._utils.skygeom import separation_arcsec
from lcdask.astrometry import (
    AstrometryConfig,
    AstrometrySolution,
    SolveHints,
    build_index,
    header_pixel_scale,
    installed_index_files,
    plate_solvers,
    solve_hints,
    solve_in_turn,
    wcs_grid_error_px,
    wcs_rotation_deg,
)
from lcdask.astrometry.frame import nominal_wcs
from lcdask.config import ConfigError, default_toml, load_config
from lcdask.stages.level2 import _another_field

HAVE_SOLVE_FIELD = bool(shutil.which("solve-field") and shutil.which("build-astrometry-index"))


def _need_solve_field() -> None:
    if not HAVE_SOLVE_FIELD:
        pytest.skip(
            "solve-field / build-astrometry-index not found: scripts/install-system-deps.sh"
        )


def _tan(crval, shape, scale_arcsec, rotation_deg, *, flip=False) -> WCS:
    """A TAN WCS whose +y axis points ``rotation_deg`` east of north."""
    ny, nx = shape
    t = np.deg2rad(rotation_deg)
    # columns: the sky step (xi east, eta north) of a step along +x and +y
    y_step = np.array([np.sin(t), np.cos(t)])
    x_step = np.array([-np.cos(t), np.sin(t)]) * (-1 if flip else 1)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = list(crval)
    wcs.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    wcs.wcs.cd = np.column_stack([x_step, y_step]) * scale_arcsec / 3600
    wcs.wcs.set()
    wcs.pixel_shape = (nx, ny)
    return wcs


def _centre(wcs: WCS, shape) -> tuple[float, float]:
    ny, nx = shape
    return tuple(float(v) for v in wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2))


def _sep_arcsec(a, b) -> float:
    return float(separation_arcsec(np.array([a[0]]), np.array([a[1]]), b[0], b[1])[0])


def _scale(wcs: WCS) -> float:
    return float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600


def _detections(wcs: WCS, shape, ra, dec, mag, rng, jitter_px=0.05) -> pd.DataFrame:
    """The catalog stars inside the frame as detections (brightest first), centroids jittered."""
    x, y = wcs.world_to_pixel_values(ra, dec)
    inside = (x > 2) & (x < shape[1] - 3) & (y > 2) & (y < shape[0] - 3)
    flux = 10 ** (-0.4 * (mag[inside] - 25))
    table = pd.DataFrame(
        {
            "x": x[inside] + rng.normal(0, jitter_px, inside.sum()),
            "y": y[inside] + rng.normal(0, jitter_px, inside.sum()),
            "flux": flux,
            "snr": np.sqrt(flux),
            "flags": 0,
        }
    )
    return table.sort_values("flux", ascending=False, ignore_index=True)


# ---------------------------------------------------------------------------------------------
# The pixel scale from the headers
# ---------------------------------------------------------------------------------------------
def _header(cards) -> fits.Header:
    header = fits.Header()
    for key, value, *comment in cards:
        header[key] = (value, comment[0]) if comment else value
    return header


@pytest.mark.parametrize(
    ("cards", "scale", "source"),
    [
        ([("PIXSCALE", 5.2)], 5.2, "PIXSCALE"),
        ([("SECPIX", 1.1)], 1.1, "SECPIX"),
        ([("SECPIX1", 0.75), ("SECPIX2", 0.75)], 0.75, "SECPIX1"),
        ([("SECPIXX", "0.981")], 0.981, "SECPIXX"),  # Lowell: a number in a string
        ([("IM_SCALE", 2.06)], 2.06, "IM_SCALE"),
        ([("SCALE", 1.5)], 1.5, "SCALE"),
        ([("PIXSCAL1", -0.4)], 0.4, "PIXSCAL1"),  # a sign for the axis direction
        ([("CDELT1", -5.2 / 3600), ("CDELT2", 5.2 / 3600)], 5.2, "CDELT1/CDELT2"),
        ([("CDELT1", 1.0 / 3600)], 1.0, "CDELT1"),
        (
            [("CD1_1", 0.0), ("CD1_2", 2 / 3600), ("CD2_1", 2 / 3600), ("CD2_2", 0.0)],
            2.0,
            "CD matrix",
        ),
        # MaxIm DL / SBIG / N.I.N.A.: XPIXSZ is the binned pixel: not multiplied by XBINNING
        ([("XPIXSZ", 13.0), ("XBINNING", 1), ("FOCALLEN", 4014.0)], 0.6680, "XPIXSZ / FOCALLEN"),
        ([("XPIXSZ", 18.0), ("XBINNING", 2), ("FOCALLEN", 714.0)], 5.200, "XPIXSZ / FOCALLEN"),
        # ... unless its comment says it is the unbinned pixel
        (
            [("XPIXSZ", 9.0, "unbinned pixel width [um]"), ("XBINNING", 2), ("FOCALLEN", 714.0)],
            5.200,
            "XPIXSZ x XBINNING / FOCALLEN",
        ),
        # PIXSIZE1 is the detector's own pixel: times the binning (CCDSUM '3 3')
        (
            [("PIXSIZE1", 15.0), ("CCDSUM", "3 3"), ("FOCALLEN", 8000.0)],
            1.1602,
            "PIXSIZE1 x CCDSUM / FOCALLEN",
        ),
        ([("PIXSCALE", 0.0), ("SECPIX", 1.1)], 1.1, "SECPIX"),  # an empty 0 is passed over
        ([("XPIXSZ", 9.0)], None, None),  # no focal length: no scale
        ([("OBJECT", "M 13")], None, None),
    ],
)
def test_header_pixel_scale_keywords(cards, scale, source):
    found = header_pixel_scale(_header(cards))
    if scale is None:
        assert found is None
        return
    assert found is not None
    # 206.265 um/mm per arcsec: the printed values are rounded to 1e-4 "/px
    assert found[0] == pytest.approx(scale, abs=1e-4) and found[1] == source


def test_header_pixel_scale_of_the_real_nights(c14_frames, lowell_dir):
    """XO-1 (ARCSAT, MaxIm DL): 13 um / 4014 mm = 0.668"/px, PinPoint's WCS 0.67"/px;
    C14: 24 um / 3910 mm = 1.266"/px (PROVENANCE: about 1.27); Lowell: SECPIXX 0.981."""
    from lcdask.io.headers import header_wcs

    xo1 = sorted((shared_data("transit_xo1b_arcsat") / "frames").glob("XO1*"))
    with_wcs, without = fits.getheader(xo1[0]), fits.getheader(xo1[-1])
    assert header_wcs(without) is None  # the last 24 frames have no WCS
    scale, source = header_pixel_scale(without)
    assert source == "XPIXSZ / FOCALLEN"
    # the keywords against PinPoint's plate solution of the first frame: within 1%
    assert scale == pytest.approx(_scale(header_wcs(with_wcs)), rel=0.01)
    assert header_pixel_scale(with_wcs)[1] == "CDELT1/CDELT2"  # PinPoint's, when it solved
    light = sorted(c14_frames.glob("*Light*"))[0]
    assert header_pixel_scale(fits.getheader(light))[0] == pytest.approx(1.266, abs=0.001)
    lowell = sorted((lowell_dir / "science").glob("*.fits*"))[0]
    assert header_pixel_scale(fits.getheader(lowell)) == (pytest.approx(0.981), "SECPIXX")


def test_nominal_wcs_says_what_it_assumes():
    wcs, description = nominal_wcs(_header([("PIXSCALE", 5.2)]), (400, 600), 150.0, 20.0)
    assert _scale(wcs) == pytest.approx(5.2)
    assert '5.20"/px from PIXSCALE' in description and "orientation unknown" in description
    assert "aligning the frames only" in description
    wcs, description = nominal_wcs(None, (400, 600), np.nan, np.nan)
    assert _scale(wcs) == pytest.approx(1.0) and "no pixel scale" in description


def test_solve_hints_prefer_the_header_wcs():
    shape = (400, 600)
    wcs = _tan((150.0, 20.0), shape, 2.0, 30.0)
    hints = solve_hints(_header([("PIXSCALE", 5.2)]), image_shape=shape, wcs=wcs)
    assert hints.scale_arcsec == pytest.approx(2.0) and hints.scale_source == "header WCS"
    assert _sep_arcsec(hints.center, _centre(wcs, shape)) < 1e-6
    hints = solve_hints(_header([("PIXSCALE", 5.2)]), image_shape=shape, ra_deg=1.0, dec_deg=2.0)
    assert hints == SolveHints(5.2, "PIXSCALE", 1.0, 2.0, "header pointing")
    assert solve_hints(None, image_shape=shape).center is None


@pytest.mark.parametrize("angle", [0.0, 90.0, 180.3, 271.0])
def test_wcs_rotation(angle):
    assert wcs_rotation_deg(_tan((10.0, 50.0), (100, 100), 1.0, angle)) == pytest.approx(angle)


# ---------------------------------------------------------------------------------------------
# The registry and "auto"
# ---------------------------------------------------------------------------------------------
def test_registry_picks_the_configured_solver():
    for name, cls in A.PLATE_SOLVERS.items():
        solvers = plate_solvers(AstrometryConfig(solver=name))
        assert [type(s) for s in solvers] == [cls]
    auto = plate_solvers(AstrometryConfig())
    assert [type(s) for s in auto] == [A.PLATE_SOLVERS[n] for n in A.AUTO_SOLVERS]
    assert A.AUTO_SOLVERS == ("header", "asterism", "solve-field", "web")
    for solver in auto:
        assert isinstance(solver, A.PlateSolver)


def test_a_new_solver_is_one_class():
    @A.register_solver("always-here")
    @dataclass(frozen=True)
    class Here:
        name: str = "always-here"

        @classmethod
        def from_config(cls, config, *, hints, mag_column):
            return cls()

        def solve(self, detections, image_shape, *, wcs_guess=None, catalog=None):
            return AstrometrySolution(wcs_guess, 0, 0.0, 0.0, "ok", "here", self.name)

    try:
        solvers = plate_solvers(AstrometryConfig(solver="always-here"))
        assert [s.name for s in solvers] == ["always-here"]
        config = load_config(None, astrometry={"solver": "always-here"})
        assert config.astrometry.solver == "always-here"
    finally:
        del A.PLATE_SOLVERS["always-here"]
    with pytest.raises(ValueError, match=r"astrometry\.solver"):
        AstrometryConfig(solver="always-here")


@pytest.fixture(scope="module")
def star_field():
    """A 20'x20' field of 400 catalog stars at 2"/px, turned 30 deg; detections of its stars."""
    rng = np.random.default_rng(15)
    n = 400
    centre = (150.0, 20.0)
    ra = centre[0] + rng.uniform(-0.22, 0.22, n) / np.cos(np.deg2rad(centre[1]))
    dec = centre[1] + rng.uniform(-0.22, 0.22, n)
    mag = rng.uniform(12, 19, n)
    catalog = pd.DataFrame({"ra": ra, "dec": dec, "mag": mag})
    shape = (600, 600)
    truth = _tan(centre, shape, 2.0, 30.0)
    detections = _detections(truth, shape, ra, dec, mag, rng)
    return {"catalog": catalog, "shape": shape, "truth": truth, "detections": detections}


def _auto(star_field, *, header, catalog, **config):
    shape = star_field["shape"]
    hints = solve_hints(
        _header([("PIXSCALE", 2.0)]),
        image_shape=shape,
        wcs=header,
        ra_deg=150.05,  # the mount's pointing: 3' off
        dec_deg=20.02,
    )
    solvers = plate_solvers(AstrometryConfig(offline=True, **config), hints=hints)
    return solve_in_turn(
        solvers, star_field["detections"], shape, wcs_guess=header, catalog=catalog
    )


def test_auto_accepts_a_header_wcs_that_matches_the_catalog(star_field):
    solution = _auto(star_field, header=star_field["truth"], catalog=star_field["catalog"])
    assert solution.ok and solution.solver == "header", solution.message
    assert solution.n_matches >= 100  # most of the ~200 stars in the frame, within 3"


def test_auto_goes_on_to_the_asterism_solver(star_field):
    """A header WCS 1' off (a stale one) fails the 3" check: the asterism solver solves."""
    off = star_field["truth"].deepcopy()
    off.wcs.crval = [off.wcs.crval[0] + 1 / 60, off.wcs.crval[1]]
    off.wcs.set()
    solution = _auto(star_field, header=off, catalog=star_field["catalog"])
    assert solution.ok and solution.solver == "asterism", solution.message
    # centroids jittered by 0.05 px: the fit within a tenth of that over the field
    assert wcs_grid_error_px(solution.wcs, star_field["truth"], star_field["shape"]) < 0.02


def test_auto_goes_on_to_solve_field_without_a_catalog(star_field, tmp_path):
    """No catalog, no header WCS: solve-field near the header pointing, with the PIXSCALE hint."""
    _need_solve_field()
    index = tmp_path / "index"
    build_index(star_field["catalog"], index, field_width_arcmin=20.0)
    solution = _auto(star_field, header=None, catalog=None, index_dir=str(index))
    assert solution.ok and solution.solver == "solve-field", solution.message
    assert "near the pointing" in solution.message and "PIXSCALE" in solution.message
    assert "rotation 30.0 deg" in solution.message
    # index positions exact, centroids jittered by 0.05 px: 0.05 px over the field
    assert wcs_grid_error_px(solution.wcs, star_field["truth"], star_field["shape"]) < 0.05


def test_auto_says_why_each_solver_failed(star_field, tmp_path):
    empty = tmp_path / "no-index"
    empty.mkdir()
    solution = _auto(star_field, header=None, catalog=None, index_dir=str(empty))
    assert not solution.ok and solution.solver == "auto"
    parts = solution.message.split("; ")
    assert [p.split(":")[0] for p in parts] == [
        "header",
        "asterism",
        "solve-field",
        "astrometry.net-web",
    ]
    assert "no WCS in the header" in parts[0] and "no reference catalog" in parts[1]
    assert "index files" in parts[2] and "offline" in parts[3]


# ---------------------------------------------------------------------------------------------
# Blind solve-field with the installed Debian Tycho-2 index files
# ---------------------------------------------------------------------------------------------
def _tycho_index(number: str) -> Path:
    _need_solve_field()
    files = [p for p in installed_index_files() if p.name.startswith(f"index-tycho2-{number}")]
    if not files or not shutil.which("query-starkd"):
        pytest.skip(
            f"Debian's index-tycho2-{number} not found in {A.default_index_dirs()}: "
            "scripts/install-system-deps.sh installs astrometry-data-tycho2-*"
        )
    return files[0]


def test_blind_solve_field_with_the_debian_tycho2_files(tmp_path):
    """The issue's small-telescope frame: 646x496 at 5.2"/px (56'x43'), turned 180.3 deg, no WCS,
    no pointing; its stars are Tycho-2's own (read from the installed -09 index with
    query-starkd), centroids jittered by 0.2 px. Solved blind with every installed index file."""
    index = _tycho_index("09")
    stars = tmp_path / "stars.fits"
    centre = (240.55, 28.17)  # XO-1's sky
    subprocess.run(
        [
            "query-starkd",
            "-r",
            str(centre[0]),
            "-d",
            str(centre[1]),
            "-R",
            "1",
            "-T",
            "-o",
            str(stars),
            str(index),
        ],
        check=True,
        capture_output=True,
    )
    table = fits.getdata(stars)
    shape = (496, 646)
    truth = _tan(centre, shape, 5.2, 180.3)
    rng = np.random.default_rng(9)
    detections = _detections(
        truth, shape, table["RA"], table["DEC"], table["MAG_VT"], rng, jitter_px=0.2
    )
    assert len(detections) >= 8  # Tycho-2 stars of the -09 index in the frame
    hints = solve_hints(_header([("PIXSCALE", 5.2)]), image_shape=shape)
    solver = plate_solvers(AstrometryConfig(solver="solve-field"), hints=hints)[0]
    solution = solver.solve(detections, shape)
    assert solution.ok, solution.message
    print(f"\nDebian Tycho-2, blind: {solution.message}")
    assert solution.message.startswith("solved blind by solve-field (index 41")
    # 0.2 px jitter over ~10 stars: the centre within 0.5 px (2.6"), the scale within 0.3%
    assert _sep_arcsec(_centre(solution.wcs, shape), centre) < 2.6
    assert _scale(solution.wcs) == pytest.approx(5.2, rel=0.003)
    assert wcs_rotation_deg(solution.wcs) == pytest.approx(180.3, abs=0.2)


def test_blind_solve_field_on_a_real_lowell_frame(lowell_dir, tmp_path):
    """A real Lowell frame, its WCS stripped, solved blind (no position hint; the scale hint from
    SECPIXX, 0.981"/px, 11% below the true 1.107"/px) against an index built from another frame's
    stars through its Gaia-referenced header WCS; centre and scale compared with its own header.
    (With only the Debian Tycho-2 files this 25' field does not solve: Tycho-2 has 4 stars in it,
    18' apart at most, fewer than the 22'-30' quads of index-tycho2-07 need.)"""
    _need_solve_field()
    paths = sorted((lowell_dir / "science").glob("*.fits*"))
    _, _, wcs0, det0 = lowell_frame(paths[0])
    build_index(catalog_of(det0, wcs0), tmp_path, field_width_arcmin=25)
    header, image, wcs, detections = lowell_frame(paths[-1])  # 5.7 h later, drifted
    shape = image.shape
    hints = solve_hints(header, image_shape=shape)  # no WCS given: the keywords only
    assert hints.scale_source == "SECPIXX"
    config = AstrometryConfig(solver="solve-field", index_dir=str(tmp_path))
    # no pointing given: blind
    solution = plate_solvers(config, hints=hints)[0].solve(detections, shape)
    assert solution.ok, solution.message
    print(f"\nLowell, blind: {solution.message}")
    assert solution.message.startswith("solved blind")
    # the header WCS is Gaia-referenced (0.1-0.2" between frames, test_astrometry): 0.5"
    assert _sep_arcsec(_centre(solution.wcs, shape), _centre(wcs, shape)) < 0.5
    assert _scale(solution.wcs) == pytest.approx(_scale(wcs), rel=0.001)


# ---------------------------------------------------------------------------------------------
# Another field
# ---------------------------------------------------------------------------------------------
def test_a_frame_of_another_field_is_said_so():
    """XO-1's night (0.67"/px, 1024^2) with the header pointing of its 43 Bet Com frame."""
    cube = xr.Dataset(
        {
            "wcs_header": ("frame", ["", ""]),
            "ra_deg": ("frame", [240.5493, 197.9683]),
            "dec_deg": ("frame", [28.1696, 27.8781]),
        }
    )
    field, shape, scale = (240.55, 28.17), (1024, 1024), 0.668 / 3600
    assert _another_field(cube, 0, field, shape, scale) == ""
    why = _another_field(cube, 1, field, shape, scale)
    # 37.4 deg by the cosine formula; the limit: two field diagonals of 16.1'
    assert why.startswith("another field: the header points 37.4 deg from the night's field")
    assert "more than 32.2'" in why


# ---------------------------------------------------------------------------------------------
# [astrometry]
# ---------------------------------------------------------------------------------------------
def test_config_section(tmp_path, capsys):
    from lcdask.cli import main

    text = default_toml()
    assert "\n[astrometry]\n" in text and '\nsolver = "auto"\n' in text
    main(["config"])
    printed = capsys.readouterr().out
    assert "[astrometry]" in printed and 'solver = "auto"' in printed
    path = tmp_path / "c.toml"
    path.write_text('[astrometry]\nsolver = "solve-field"\ntimeout_s = 20\napi_key = "secret"\n')
    config = load_config(path)
    assert config.astrometry.solver == "solve-field" and config.astrometry.timeout_s == 20.0
    assert config.as_dict()["astrometry"]["api_key"] == "(given)"  # never written to run.json
    assert "secret" not in repr(config.astrometry)
    path.write_text('[astrometry]\nsolver = "pinpoint"\n')
    with pytest.raises(ConfigError, match=r"astrometry\.solver must be one of 'auto', "):
        load_config(path)
    path.write_text('[astrometry]\nindex_dir = "/no/such/dir"\n')
    with pytest.raises(ConfigError, match="index_dir"):
        load_config(path)
