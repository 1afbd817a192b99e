"""The small-telescope preset: each trait in the files, the truth, the real sky, a blind solve."""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.wcs import WCS

from lcdask.cli import main
from lcdask.io.anindex import find_index_files, index_stars, read_index_stars
from lcdask.io.headers import header_wcs, normalize_header, parse_time
from lcdask.simulate import (
    load_truth,
    preset_config,
    simulate_night,
    small_telescope_config,
)
from lcdask.simulate.preset import TRES2_DEC_DEG, TRES2_RA_DEG
from lcdask.simulate.render import frame_wcs
from lcdask.simulate.tan import angular_separation_arcsec, pixel_to_world, world_to_pixel

HAVE_INDEX = bool(find_index_files())
NO_INDEX = "no astrometry.net index files in /usr/share/astrometry (astrometry-data-tycho2)"
WCS_KEY = re.compile(
    r"^(CTYPE|CRVAL|CRPIX|CUNIT|CDELT|CROTA|CD\d_\d|PC\d_\d|PV\d_\d+|A_|B_|WCSAXES)"
)
SEED = 2  # rotation 180 deg, PIXSCALE, RA/DEC keys, TheSkyX longitude, 60 s + 30 s blocks


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    cfg = small_telescope_config(n_frames=8, size=512, seed=SEED)
    return simulate_night(tmp_path_factory.mktemp("smalltel"), cfg, n_workers=1)


def lights_path(path: Path) -> Path:
    """The same file name under a lights/ folder (frame typing is not what is tested here)."""
    return Path("lights") / path.name


def test_preset_traits_vary_by_seed_and_stay_in_range():
    cfgs = [small_telescope_config(n_frames=40, size=600, seed=s) for s in range(16)]
    assert {c.scale_keyword for c in cfgs} == {"PIXSCALE", "FOCALLEN"}
    assert {c.pointing_keys for c in cfgs} == {"RA/DEC", "OBJCTRA/OBJCTDEC"}
    assert {c.longitude_convention for c in cfgs} == {"west-comment", "west-theskyx"}
    assert {c.date_offset_format for c in cfgs} == {"colon", "compact"}
    assert {c.exptime2_s for c in cfgs} == {0.0, 30.0}
    assert any(c.rotation_deg == 180.0 for c in cfgs)
    for c in cfgs:
        assert 4.2 <= c.pixel_scale_arcsec <= 5.8
        assert 30.0 <= c.rotation_deg <= 330.0  # never north up
        assert c.drift_px_total >= 220.0 and 20.0 <= c.repoint_px <= 60.0
        assert c.n_darks == c.n_flats == c.n_bias == c.n_darkflats == 0
    # the same seed gives the same night; the standard preset is the default configuration
    assert small_telescope_config(n_frames=40, size=600, seed=3) == cfgs[3]
    assert preset_config("standard", n_frames=5, size=300, seed=4).header_wcs
    with pytest.raises(ValueError, match="unknown simulator preset"):
        preset_config("huge", n_frames=5, size=300, seed=4)


def test_no_calibration_frames_no_imagetyp_no_wcs_no_light_in_names(night):
    raw = sorted(p.name for p in (night.out_dir / "raw").iterdir())
    assert raw == sorted(night.frames["filename"])  # lights only
    assert len(night.truth.calib_frames) == 0
    for path in night.light_paths:
        assert "light" not in path.name.lower()
        header = fits.getheader(path)
        assert "IMAGETYP" not in header
        assert not [k for k in header if WCS_KEY.match(k)], path
        assert header["OBJECT"] == "TrES-2"


def test_header_pointing_scale_time_and_site(night):
    cfg = night.config
    frames = night.frames
    for i, path in enumerate(night.light_paths):
        header = fits.getheader(path)
        # the scale in one keyword only
        if cfg.scale_keyword == "PIXSCALE":
            assert "FOCALLEN" not in header and "XPIXSZ" not in header
            scale = header["PIXSCALE"]
        else:
            assert "PIXSCALE" not in header
            scale = 206.264806 * header["XPIXSZ"] / header["FOCALLEN"]
        assert scale == pytest.approx(cfg.pixel_scale_arcsec, rel=1e-3)  # FOCALLEN has 0.1 mm
        # local clock with the zone as a suffix; parsed back to the truth's mid-exposure time
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}-07:?00", header["DATE-OBS"])
        mjd, _ = parse_time(header, header["EXPTIME"])
        # DATE-OBS has milliseconds: 1 ms
        assert abs(mjd - frames["time_mjd"].iloc[i]) * 86400.0 < 1e-3
        meta = normalize_header(header, path=lights_path(path))
        assert meta.site_lon_deg == pytest.approx(cfg.site_lon_deg, abs=1e-6)  # west positive read
        assert float(re.sub(r"\s.*", "", header["SITELONG"])) > 0  # written west positive
        # the mount's pointing: the commanded centre, in the keys of the seed
        assert (meta.ra_deg, meta.dec_deg) == pytest.approx((TRES2_RA_DEG, TRES2_DEC_DEG), abs=1e-5)
        assert ("RA" in header) == (cfg.pointing_keys == "RA/DEC")
        assert ("OBJCTRA" in header) == (cfg.pointing_keys == "OBJCTRA/OBJCTDEC")
        assert header["EXPTIME"] == frames["exptime_s"].iloc[i]
    assert sorted(set(frames["exptime_s"])) == ([30.0, 60.0] if cfg.exptime2_s else [60.0])


def test_drift_repointing_rotation_and_sampling_in_the_truth(night):
    cfg, frames = night.config, night.frames
    drift = frames[["drift_x_px", "drift_y_px"]].to_numpy()
    # the target's detector position over the night moves by hundreds of pixels
    xy = np.array(
        [
            world_to_pixel(np.array([TRES2_RA_DEG]), np.array([TRES2_DEC_DEG]), *frame_wcs(f))
            for _, f in frames.iterrows()
        ]
    )[:, :, 0]
    # drift = the stars' motion (exact at the tangent point; the target is within 3' of it, and
    # moving the tangent point by ~0.3 deg at Dec 49 turns the projection a little: 2 px)
    assert np.allclose(xy - xy[0], drift - drift[0], atol=2.0)
    assert np.hypot(*(xy.max(axis=0) - xy.min(axis=0))) >= 200.0
    assert ((xy > 10) & (xy < cfg.size - 11)).all()  # the target stays in every frame
    # re-pointing: a jump of repoint_px in the second block only, on top of a smooth drift
    jump = frames[["repoint_x_px", "repoint_y_px"]].to_numpy()
    half = cfg.n_frames // 2
    assert not jump[:half].any()
    assert np.allclose(np.hypot(*jump[half:].T), cfg.repoint_px)
    tracking = drift - jump
    steps = np.diff(tracking, axis=0)
    # the tracking alone is smooth: a straight drift plus a bow of 0.15 of it (steps up to
    # (1 + 0.15 pi) D / (n - 1)), plus 0.5 px rms jitter (4 sigma on two frames: 3 px)
    bound = (1.0 + 0.15 * np.pi) * cfg.drift_px_total / (cfg.n_frames - 1) + 3.0
    assert np.hypot(*steps.T).max() < bound
    assert np.hypot(*(tracking[-1] - tracking[0])) >= 200.0
    # rotation: the true CD matrix turns north (+Dec) to the configured angle (+ the night's error)
    _, _, cd = frame_wcs(frames.iloc[0])
    angle = np.rad2deg(np.arctan2(cd[0, 1], cd[1, 1]))  # position angle of +y, east of north
    err = frames["rotation_error_deg"].iloc[0]
    assert np.mod(angle - (cfg.rotation_deg + err) + 180.0, 360.0) - 180.0 == pytest.approx(
        0, abs=1e-9
    )
    assert np.sqrt(abs(np.linalg.det(cd))) * 3600.0 == pytest.approx(cfg.pixel_scale_arcsec)
    # undersampled: FWHM 1.2-3 px (1.7 x scale at the zenith, airmass and seeing wander)
    assert frames["fwhm_px"].between(1.2, 3.0).all()
    # many hot pixels and warm columns
    bad = night.bad_pixels
    assert ((bad["kind"] == "hot") & (bad["origin"] == "pixel")).sum() >= 200
    assert bad.loc[(bad["kind"] == "hot") & (bad["origin"] == "column"), "x"].nunique() == 4


@pytest.mark.skipif(not HAVE_INDEX, reason=NO_INDEX)
def test_truth_is_the_tycho2_sky_plus_synthetic_stars(night):
    stars = night.stars
    assert night.config.sky_catalog == "tycho2"
    target = stars[stars["is_target"]]
    assert len(target) == 1
    # the target is TrES-2 at its real position, with its Tycho-2 VT magnitude
    assert (
        angular_separation_arcsec(target["ra"], target["dec"], TRES2_RA_DEG, TRES2_DEC_DEG)[0]
        < 1e-3
    )
    assert target["mag"].iloc[0] == pytest.approx(11.32, abs=0.01)
    # every Tycho-2 star inside the first frame is in the truth at its position and magnitude
    frame = night.frames.iloc[0]
    crval, crpix, cd = frame_wcs(frame)
    size = night.config.size
    ra_c, dec_c = pixel_to_world(
        np.array([(size - 1) / 2]), np.array([(size - 1) / 2]), crval, crpix, cd
    )
    tyc = index_stars(
        float(ra_c[0]), float(dec_c[0]), 0.75 * size * night.config.pixel_scale_arcsec / 3600
    )
    x, y = world_to_pixel(tyc["ra"], tyc["dec"], crval, crpix, cd)
    inside = tyc[(x > 0) & (x < size - 1) & (y > 0) & (y < size - 1)]
    assert len(inside) >= 15
    truth = stars[stars["role"].isin(["tycho2", "target"])]
    sc_t = SkyCoord(truth["ra"].to_numpy(), truth["dec"].to_numpy(), unit="deg")
    sc_i = SkyCoord(inside["ra"].to_numpy(), inside["dec"].to_numpy(), unit="deg")
    idx, sep, _ = sc_i.match_to_catalog_sky(sc_t)
    # missing: those dropped to isolate the injected variables (within 8 FWHM of them)
    found = sep.arcsec < 1e-3
    assert found.mean() >= 0.9
    assert np.allclose(truth["mag"].to_numpy()[idx[found]], inside["mag"].to_numpy()[found])
    # synthetic stars only fainter than the Tycho-2 limit; the reference catalog holds both
    assert stars.loc[stars["role"] == "field", "mag"].min() >= night.config.mag_bright
    refcat_ids = set(night.truth.refcat_truth["star_id"])
    tycho_ids = set(stars.loc[stars["role"] == "tycho2", "star_id"])
    assert len(tycho_ids & refcat_ids) >= 0.95 * len(tycho_ids)  # 3% wrong/blended entries
    assert len(refcat_ids - tycho_ids) > 10 * len(tycho_ids)
    # truth tables consistent: ids unique, movers listed in stars, variables isolated
    assert stars["star_id"].is_unique
    assert set(night.movers["star_id"]) == set(stars.loc[stars["kind"] == "moving", "star_id"])
    assert set(stars.loc[stars["kind"] == "variable", "role"]) == {
        "target",
        "eclipsing",
        "pulsator",
    }
    assert load_truth(night.out_dir).config == night.config


@pytest.mark.skipif(not HAVE_INDEX, reason=NO_INDEX)
def test_index_reader_decodes_known_bright_stars():
    path = next(p for p in find_index_files() if "tycho2-10" in p.name)
    stars = read_index_stars(path)
    # SIMBAD ICRS J2000 positions and V of Pleiades members (Hipparcos): an independent truth
    known = {
        "Maia": ("03:45:49.607", "+24:22:03.89", 3.87),
        "Merope": ("03:46:19.574", "+23:56:54.08", 4.18),
        "Atlas": ("03:49:09.742", "+24:03:12.30", 3.62),
        "Taygeta": ("03:45:12.496", "+24:28:02.21", 4.30),
    }
    cat = SkyCoord(stars["ra"].to_numpy(), stars["dec"].to_numpy(), unit="deg")
    for name, (ra, dec, v) in known.items():
        star = SkyCoord(ra, dec, unit=("hourangle", "deg"))
        idx, sep, _ = star.match_to_catalog_sky(cat)
        # Tycho-2 at epoch J2000 vs SIMBAD: proper motions < 0.05"/yr, so 0.5"
        assert sep.arcsec < 0.5, name
        # VT against Johnson V: VT - V = 0.09 (B-V) and less for these blue stars; 0.2 mag
        assert stars["mag"].iloc[int(idx)] == pytest.approx(v, abs=0.2), name
    # TrES-2 (V = 11.4, in -07..-09 only): found by the cone search over every index file
    near = index_stars(TRES2_RA_DEG, TRES2_DEC_DEG, 0.1)
    sep = angular_separation_arcsec(near["ra"], near["dec"], TRES2_RA_DEG, TRES2_DEC_DEG)
    assert sep.min() < 0.5 and near["mag"].iloc[int(np.argmin(sep))] == pytest.approx(11.4, abs=0.2)
    assert ((stars["dec"] >= -90) & (stars["dec"] <= 90)).all() and stars["ra"].between(
        0, 360
    ).all()


def test_index_reader_rejects_a_file_that_is_not_an_index(tmp_path):
    path = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((4, 4), np.float32)).writeto(path)
    with pytest.raises(ValueError, match=r"not an astrometry\.net index file"):
        read_index_stars(path)
    with pytest.raises(FileNotFoundError, match=r"no astrometry\.net index files"):
        index_stars(10.0, 20.0, 1.0, index_dir=tmp_path)


def test_index_stars_land_on_the_stars_of_a_real_gaia_referenced_frame(lowell_dir):
    if not HAVE_INDEX:
        pytest.skip(NO_INDEX)
    path = sorted((lowell_dir / "science").glob("*.fits*"))[0]
    with fits.open(path) as hdul:
        header, image = hdul[0].header, hdul[0].data.astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = header_wcs(header)
    ny, nx = image.shape
    ra, dec = wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
    stars = index_stars(float(ra), float(dec), 0.3)
    x, y = wcs.world_to_pixel_values(stars["ra"].to_numpy(), stars["dec"].to_numpy())
    # inside the exposed area (TRIMSEC [18:1382,1:1370]) with room for an 8 px box
    ok = (x > 30) & (x < 1370) & (y > 10) & (y < ny - 10)
    assert ok.sum() >= 5
    image = image - np.median(image)
    scale = np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0
    r = 8
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    for xi, yi in zip(x[ok], y[ok], strict=True):
        x0, y0 = round(xi), round(yi)
        box = image[y0 - r : y0 + r + 1, x0 - r : x0 + r + 1]
        weight = np.clip(box - np.median(box), 0.0, None)
        cx = (weight * xx).sum() / weight.sum() + x0
        cy = (weight * yy).sum() / weight.sum() + y0
        # < 2": the header WCS without its PV distortion, and saturated stars' centroids
        assert np.hypot(cx - xi, cy - yi) * scale < 2.0


@pytest.mark.skipif(not HAVE_INDEX, reason=NO_INDEX)
@pytest.mark.skipif(
    shutil.which("solve-field") is None, reason="solve-field (astrometry.net) not installed"
)
def test_blind_solve_field_recovers_the_true_wcs(night, tmp_path):
    index = 3
    frame = night.frames.iloc[index]
    work = tmp_path / "solve"
    work.mkdir()
    shutil.copy(night.light_paths[index], work / "frame.fits")
    cmd = [
        "solve-field", "frame.fits", "--overwrite", "--no-plots", "--no-verify",
        "--scale-units", "arcsecperpix", "--scale-low", "4", "--scale-high", "6",
        "--cpulimit", "120", "--new-fits", "none", "--no-remove-lines",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600)
    assert (work / "frame.solved").exists(), done.stdout[-2000:] + done.stderr[-2000:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        solved = WCS(fits.getheader(work / "frame.wcs"))
    size = night.config.size
    xs = np.array([(size - 1) / 2, 0.0, size - 1.0])
    ra_t, dec_t = pixel_to_world(xs, xs, *frame_wcs(frame))
    ra_s, dec_s = solved.all_pix2world(xs, xs, 0)
    sep = angular_separation_arcsec(ra_t, dec_t, ra_s, dec_s)
    assert sep[0] < 5.0  # the brief's requirement: the centre to 5" (1 px = 4-6")
    assert sep.max() < 10.0  # corners: 2 px
    _, _, cd = frame_wcs(frame)
    scale_true = np.sqrt(abs(np.linalg.det(cd)))
    scale_solved = np.sqrt(abs(np.linalg.det(solved.pixel_scale_matrix)))
    assert scale_solved / scale_true == pytest.approx(1.0, abs=0.01)


def test_without_index_files_the_preset_falls_back_to_a_synthetic_sky(tmp_path, caplog):
    empty = tmp_path / "no_index"
    empty.mkdir()
    cfg = small_telescope_config(n_frames=2, size=200, seed=1, index_dir=str(empty))
    with caplog.at_level("WARNING", logger="lcdask.simulate"):
        night = simulate_night(tmp_path / "night", cfg, n_workers=1)
    assert night.config.sky_catalog == "synthetic"
    assert load_truth(night.out_dir).config.sky_catalog == "synthetic"
    assert "tycho2" not in set(night.stars["role"])
    lines = [r.getMessage() for r in caplog.records if r.name == "lcdask.simulate"]
    assert len(lines) == 1 and "blind plate solving will not work" in lines[0]


def test_cli_simulate_small_telescope_preset(tmp_path, capsys):
    out = tmp_path / "night"
    code = main(
        ["simulate", str(out), "--preset", "small-telescope", "--frames", "2", "--size", "200",
         "--seed", "5", "--jobs", "1"]
    )  # fmt: skip
    assert code == 0
    truth = load_truth(out)
    assert truth.config == small_telescope_config(n_frames=2, size=200, seed=5) or (
        not HAVE_INDEX and truth.config.sky_catalog == "synthetic"
    )
    assert sorted(p.name for p in (out / "raw").iterdir()) == [
        "TrES-2_0000.fits",
        "TrES-2_0001.fits",
    ]
    assert "small-telescope" in capsys.readouterr().out
