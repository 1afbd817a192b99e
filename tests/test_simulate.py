"""The simulated night against its own truth: determinism, WCS, photometry, detector, catalog."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from lcdask.simulate import (
    SimConfig,
    flux_factor,
    load_truth,
    simulate_night,
    truth_light_image,
)
from lcdask.simulate.conditions import frame_conditions, night_geometry, start_mjd
from lcdask.simulate.field import LIMB_DARKENED_COLUMNS as LD_COLUMNS
from lcdask.simulate.field import luminosity_function_sample, make_stars
from lcdask.simulate.night import night_rng
from lcdask.simulate.psf import Moffat, render_stars
from lcdask.simulate.refcat import make_refcat
from lcdask.simulate.render import catalog_flux_adu, frame_wcs, sky_image
from lcdask.simulate.tan import pixel_to_world, world_to_pixel

CFG = SimConfig(
    n_frames=4,
    size=320,
    seed=7,
    n_darks=5,
    n_darkflats=3,
    n_flats=5,
    n_bias=5,
    cosmic_rate_cm2_s=0.5,  # ten times the default, so that small frames have cosmic rays
)


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    return simulate_night(tmp_path_factory.mktemp("night"), CFG, n_workers=1)


@pytest.fixture(scope="module")
def maps(night):
    return night.truth.bias(), night.truth.dark_current(), night.truth.flat()


def truth_wcs(frame: pd.Series) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [frame["crval1"], frame["crval2"]]
    w.wcs.crpix = [frame["crpix1"], frame["crpix2"]]
    w.wcs.cd = [[frame["cd1_1"], frame["cd1_2"]], [frame["cd2_1"], frame["cd2_2"]]]
    return w


def star_pixels(night, frame_index: int, stars: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    frame = night.frames.iloc[frame_index]
    return truth_wcs(frame).all_world2pix(stars["ra"], stars["dec"], 0)


def calibrated(night, maps, frame_index: int) -> np.ndarray:
    bias, dark, flat = maps
    raw = fits.getdata(night.light_paths[frame_index]).astype(float)
    exptime = night.frames["exptime_s"].iloc[frame_index]
    return (raw - bias - dark * exptime / CFG.gain_e_adu) / flat


def variance_adu(night, maps, frame_index: int, truth: np.ndarray) -> np.ndarray:
    """Per-pixel variance of the calibrated frame: photons + dark + read noise + digitisation."""
    _, dark, flat = maps
    exptime = night.frames["exptime_s"].iloc[frame_index]
    gain = CFG.gain_e_adu
    electrons = gain * truth * flat + dark * exptime
    return ((electrons + CFG.read_noise_e**2) / gain**2 + 1.0 / 12.0) / flat**2


def clean_mask(night, frame_index: int, raw: np.ndarray) -> np.ndarray:
    """Pixels free of bad pixels, cosmic rays and saturation."""
    ok = np.ones(raw.shape, dtype=bool)
    bad = night.bad_pixels
    ok[bad["y"], bad["x"]] = False
    cr = night.cosmic_rays
    cr = cr[cr["filename"] == night.frames["filename"].iloc[frame_index]]
    ok[cr["y"], cr["x"]] = False
    ok &= raw < CFG.saturate_adu
    return ok


# --- configuration and geometry -----------------------------------------------------------


def test_config_defaults_round_trip_and_validation():
    cfg = SimConfig()
    assert cfg.pixel_scale_arcsec == 1.0 and cfg.exptime_s == 60.0 and cfg.gain_e_adu == 1.5
    assert SimConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="pixel_scale_arcsec"):
        SimConfig(pixel_scale_arcsec=12.0)  # 0.3-10 "/px
    with pytest.raises(ValueError, match="n_darks"):
        SimConfig(n_darks=-1)
    with pytest.raises(ValueError, match="start_utc"):
        start_mjd(SimConfig(start_utc="not a time"))


@pytest.mark.parametrize("flip", [False, True])
def test_tan_projection_matches_astropy(flip):
    cfg = SimConfig(size=512, flip=flip, rotation_deg=37.0)
    frames = frame_conditions(
        cfg, night_geometry(cfg, night_rng(1, "geometry")), night_rng(1, "conditions")
    )
    frame = frames.iloc[3]
    crval, crpix, cd = frame_wcs(frame)
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-50, 560, (2, 200))
    ra, dec = pixel_to_world(x, y, crval, crpix, cd)
    ra_a, dec_a = truth_wcs(frame).all_pix2world(x, y, 0)
    np.testing.assert_allclose(ra, ra_a, atol=1e-9)
    np.testing.assert_allclose(dec, dec_a, atol=1e-9)
    x2, y2 = world_to_pixel(ra, dec, crval, crpix, cd)
    np.testing.assert_allclose(x2, x, atol=1e-7)
    np.testing.assert_allclose(y2, y, atol=1e-7)
    assert (np.linalg.det(cd) > 0) == flip  # usual sky parity has det(CD) < 0


def test_observing_conditions_are_realistic_over_a_long_night():
    cfg = SimConfig(n_frames=400, seed=3)  # 7.8 h centred on the meridian transit
    frames = frame_conditions(
        cfg, night_geometry(cfg, night_rng(3, "geometry")), night_rng(3, "conditions")
    )
    assert frames["airmass"].between(1.0, 2.5).all()
    assert frames["airmass"].max() > 1.5  # the field does move across the sky
    assert np.all(np.diff(frames["time_mjd"]) * 86400 >= cfg.exptime_s + cfg.readout_s)
    zp = cfg.zero_point_zenith - cfg.extinction_k * (frames["airmass"] - 1) - frames["cloud_mag"]
    np.testing.assert_allclose(frames["zero_point"], zp)
    assert frames["cloud_mag"].between(0, cfg.cloud_mag).all()
    assert frames["fwhm_px"].between(1.8, 5.5).all()
    drift = np.hypot(frames["drift_x_px"], frames["drift_y_px"])
    assert 15 < drift.iloc[-1] < 25  # drift_px_total = 20 over the sequence, plus jitter
    assert frames["pointing_error_arcsec"].max() <= 3 * 60 + 25


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_same_bytes_serial_and_parallel(night, tmp_path):
    parallel = simulate_night(tmp_path / "parallel", CFG, n_workers=2)
    pairs = zip(
        night.light_paths + night.dark_paths,
        parallel.light_paths + parallel.dark_paths,
        strict=True,
    )
    for a, b in pairs:
        assert a.read_bytes() == b.read_bytes(), a.name
    pd.testing.assert_frame_equal(night.cosmic_rays, parallel.cosmic_rays)
    assert (night.out_dir / "refcat.parquet").read_bytes() == parallel.refcat_path.read_bytes()


def test_different_seed_differs(night, tmp_path):
    (tmp_path / "other" / "raw").mkdir(parents=True)
    stale = tmp_path / "other" / "raw" / "light_0005.fits"  # from an earlier, longer night
    stale.write_bytes(b"old")
    notes = tmp_path / "other" / "raw" / "notes.txt"
    notes.write_text("mine")
    other = simulate_night(
        tmp_path / "other", dataclasses.replace(CFG, seed=8, n_frames=1), n_workers=1
    )
    assert not stale.exists() and notes.exists()
    assert other.light_paths[0].read_bytes() != night.light_paths[0].read_bytes()
    assert not np.allclose(other.stars["ra"].iloc[:3], night.stars["ra"].iloc[:3])


# --- the truth tables ----------------------------------------------------------------------


def test_truth_tables_schema(night):
    truth = load_truth(night.out_dir)
    assert truth.config == CFG
    assert json.loads((night.truth_dir / "config.json").read_text())["seed"] == CFG.seed
    stars = truth.stars
    for col in ("star_id", "ra", "dec", "mag", "g_mag", "kind", "is_target", "var_type"):
        assert col in stars
    for col in ("period_d", "t0_mjd", "depth", "duration_d", "amplitude"):
        assert col in stars
    assert stars["star_id"].is_unique
    assert set(stars["kind"]) == {"stable", "variable", "moving"}
    assert set(stars["var_type"]) == {"", "transit", "eclipsing", "pulsator"}
    assert stars["is_target"].sum() == 1
    target = stars[stars["is_target"]].iloc[0]
    assert target["var_type"] == "transit" and target["depth"] == CFG.transit_depth
    colour = stars["g_mag"] - stars["mag"]
    assert colour.between(0.2 - 1e-9, 1.5 + 1e-9).all() and colour.std() > 0.1
    field = stars[stars["role"] == "field"]
    assert field["mag"].between(CFG.mag_bright, CFG.mag_faint).all()
    # luminosity function: about twice as many stars per magnitude one magnitude fainter
    n20, n19 = ((field["mag"] > m) & (field["mag"] <= m + 1) for m in (20.0, 19.0))
    assert 1.4 < n20.sum() / n19.sum() < 2.8

    movers = truth.movers
    for col in ("star_id", "ra0", "dec0", "t0_mjd", "rate_ra_arcsec_h", "rate_dec_arcsec_h", "mag"):
        assert col in movers
    assert len(movers) == CFG.n_slow_movers + CFG.n_fast_movers
    assert set(movers["star_id"]) == set(stars.loc[stars["kind"] == "moving", "star_id"])

    frames = truth.frames
    columns = (
        "frame_index filename time_mjd exptime_s airmass zero_point slope fwhm_px sky_adu "
        "crval1 crval2 crpix1 crpix2 cd1_1 cd1_2 cd2_1 cd2_2 pointing_error_arcsec"
    ).split()
    assert all(c in frames for c in columns)
    assert len(frames) == CFG.n_frames
    assert list(frames["filename"]) == [p.name for p in night.light_paths]

    bad = truth.bad_pixels
    assert set(bad["kind"]) == {"hot", "dead"} and set(bad["origin"]) == {"pixel", "column"}
    assert {"dark_e_s", "response"} <= set(bad.columns)
    assert set(truth.cosmic_rays.columns) >= {"frame_index", "filename", "x", "y", "electrons"}
    assert truth.cosmic_rays["filename"].str.startswith("light").any()
    assert truth.cosmic_rays["filename"].str.startswith("dark").any()

    flat = truth.flat()
    assert abs(flat.mean() - 1.0) < 1e-12
    corner = np.median(flat[:20, :20]) / np.median(flat[150:170, 150:170])
    assert 0.78 < corner < 0.92  # vignetting: 15% at the corners


def test_raw_files_and_headers(night):
    assert len(night.dark_paths) == CFG.n_darks and len(night.bias_paths) == CFG.n_bias
    assert len(night.flat_paths) == CFG.n_flats and len(night.darkflat_paths) == CFG.n_darkflats
    with fits.open(night.light_paths[0], do_not_scale_image_data=True) as hdul:
        h = hdul[0].header
        assert h["BITPIX"] == 16 and h["BZERO"] == 32768 and h["BSCALE"] == 1
    for key in (
        "DATE-OBS EXPTIME EXPOSURE IMAGETYP FILTER OBJECT RA DEC OBJCTRA OBJCTDEC GAIN RDNOISE "
        "SATURATE AIRMASS SITELAT SITELONG SITEELEV OBSERVAT TELESCOP INSTRUME XBINNING YBINNING "
        "CCD-TEMP CTYPE1 CRVAL1 CRPIX1 CD1_1"
    ).split():
        assert key in h, key
    assert h["IMAGETYP"] == "Light Frame" and h["OBJCTRA"] == "10 00 00.00"
    types = {
        fits.getheader(p)["IMAGETYP"]
        for p in night.dark_paths + night.darkflat_paths + night.flat_paths + night.bias_paths
    }
    assert types == {"Dark Frame", "Flat Field", "Bias Frame"}
    assert fits.getheader(night.darkflat_paths[0])["EXPTIME"] == CFG.flat_exptime_s
    flat = fits.getdata(night.flat_paths[0]).astype(float)
    assert 18000 < np.median(flat) - CFG.bias_adu < 32000  # twilight flats ~25 kADU
    assert not list(night.out_dir.rglob(".*tmp*"))  # atomic writes leave no temporaries


# --- astrometry ----------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")  # MJD-OBS from DATE-OBS
def test_header_wcs_is_off_by_the_stated_pointing_error(night):
    stars = night.stars[night.stars["kind"] != "moving"]
    scale = CFG.pixel_scale_arcsec
    for i, path in enumerate(night.light_paths):
        frame = night.frames.iloc[i]
        x_true, y_true = star_pixels(night, i, stars)
        inside = (x_true > 0) & (x_true < CFG.size) & (y_true > 0) & (y_true < CFG.size)
        x_hdr, y_hdr = WCS(fits.getheader(path)).all_world2pix(stars["ra"], stars["dec"], 0)
        offset = np.hypot(x_hdr - x_true, y_hdr - y_true)[inside]
        radius = np.hypot(x_true - CFG.size / 2, y_true - CFG.size / 2)[inside]
        rot = np.deg2rad(abs(frame["rotation_error_deg"]))
        bound = frame["pointing_error_arcsec"] / scale * 1.01 + rot * radius + 0.05
        assert np.all(offset <= bound)
        assert np.median(offset) > 5  # the header really is wrong


def test_truth_wcs_centroid_of_the_target(night):
    target = night.stars[night.stars["is_target"]]
    for i in range(CFG.n_frames):
        x0, y0 = (float(v[0]) for v in star_pixels(night, i, target))
        image = truth_light_image(night.out_dir, i) - sky_image(night.frames.iloc[i], CFG.size)
        ix, iy, r = round(x0), round(y0), 15
        cut = image[iy - r : iy + r + 1, ix - r : ix + r + 1]
        yy, xx = np.mgrid[iy - r : iy + r + 1, ix - r : ix + r + 1]
        xc, yc = (cut * xx).sum() / cut.sum(), (cut * yy).sum() / cut.sum()
        assert np.hypot(xc - x0, yc - y0) < 0.05


# --- photometry ----------------------------------------------------------------------------


def test_render_stars_puts_exactly_the_flux_in_the_image():
    psf = Moffat(fwhm_px=3.1, beta=3.0, ellipticity=0.1, theta_deg=30.0)
    flux = np.array([1e2, 1e4, 3e7])
    image = render_stars(
        (300, 300), np.array([50.3, 150.77, 149.5]), np.array([60.1, 80.5, 200.0]), flux, psf
    )
    np.testing.assert_allclose(image.sum(), flux.sum(), rtol=1e-12)
    peak = image[200, 149:151].max()
    assert peak > 0.5 * psf.peak_fraction() * 3e7


def test_truth_image_flux_follows_the_formula(night):
    stars = night.stars
    target = stars[stars["is_target"]].iloc[0]
    for i in range(CFG.n_frames):
        frame = night.frames.iloc[i]
        expected = (
            frame["exptime_s"]
            * 10 ** (-0.4 * (target["mag"] - frame["zero_point"]) / frame["slope"])
            * flux_factor(target, frame["time_mjd"])
        )
        assert expected == pytest.approx(
            catalog_flux_adu(target["mag"], frame["zero_point"], frame["slope"], 60.0)
            * flux_factor(target, frame["time_mjd"])
        )
        x0, y0 = star_pixels(night, i, stars[stars["is_target"]])
        image = truth_light_image(night.out_dir, i) - sky_image(frame, CFG.size)
        yy, xx = np.mgrid[: CFG.size, : CFG.size]
        within = np.hypot(xx - x0[0], yy - y0[0]) < 6 * frame["fwhm_px"]
        # the Moffat wing beyond 6 FWHM holds < 0.1% of the flux
        assert image[within].sum() == pytest.approx(expected, rel=2e-3)


def test_aperture_photometry_of_the_target_matches_truth(night, maps):
    target = night.stars[night.stars["is_target"]]
    z = []
    for i in range(CFG.n_frames):
        frame = night.frames.iloc[i]
        truth = truth_light_image(night.out_dir, i)
        sky = sky_image(frame, CFG.size)
        raw = fits.getdata(night.light_paths[i]).astype(float)
        x0, y0 = star_pixels(night, i, target)
        yy, xx = np.mgrid[: CFG.size, : CFG.size]
        aperture = (np.hypot(xx - x0[0], yy - y0[0]) < 3 * frame["fwhm_px"]) & clean_mask(
            night, i, raw
        )
        measured = (calibrated(night, maps, i) - sky)[aperture].sum()
        expected = (truth - sky)[aperture].sum()
        sigma = np.sqrt(variance_adu(night, maps, i, truth)[aperture].sum())
        assert expected / sigma > 150  # the target is at S/N ~200 per frame
        z.append((measured - expected) / sigma)
    assert np.all(np.abs(z) < 3), z


def test_calibrated_frame_equals_truth_within_noise(night, maps):
    for i in range(CFG.n_frames):
        truth = truth_light_image(night.out_dir, i)
        raw = fits.getdata(night.light_paths[i]).astype(float)
        ok = clean_mask(night, i, raw)
        chi = (calibrated(night, maps, i) - truth) / np.sqrt(variance_adu(night, maps, i, truth))
        # N(0, 1) over ~1e5 pixels: mean and variance within a few 1e-3
        assert abs(chi[ok].mean()) < 0.02
        assert chi[ok].var() == pytest.approx(1.0, abs=0.03)


def test_bright_stars_saturate(night):
    for path in night.light_paths:
        data = fits.getdata(path)
        assert (data >= fits.getheader(path)["SATURATE"]).sum() >= 3


def test_flux_factor_models(night):
    stars = night.stars
    target = stars[stars["is_target"]].iloc[0]
    assert flux_factor(target, target["t0_mjd"]) == pytest.approx(1 - CFG.transit_depth)
    assert flux_factor(target, target["t0_mjd"] + 0.5) == 1.0
    eb = stars[stars["var_type"] == "eclipsing"].iloc[0]
    assert flux_factor(eb, eb["t0_mjd"]) == pytest.approx(1 - CFG.eclipse_depth)
    puls = stars[stars["var_type"] == "pulsator"].iloc[0]
    t = puls["t0_mjd"] + np.linspace(0, puls["period_d"], 1000, endpoint=False)
    assert flux_factor(puls, t).mean() == pytest.approx(1.0, abs=1e-9)
    assert flux_factor(puls, t).max() == pytest.approx(1 + CFG.pulsator_amplitude, rel=1e-4)
    table = flux_factor(stars, t[:5])
    assert table.shape == (len(stars), 5)
    assert np.all(table[stars["var_type"].to_numpy() == ""] == 1.0)
    assert flux_factor(stars, float(t[0])).shape == (len(stars),)


# --- detector ------------------------------------------------------------------------------


def test_hot_pixels_are_hot_in_the_darks(night, maps):
    bias = maps[0]
    darks = np.median([fits.getdata(p).astype(float) for p in night.dark_paths], axis=0)
    excess = darks - bias
    hot = night.bad_pixels[(night.bad_pixels["kind"] == "hot")]
    expected = hot["dark_e_s"].to_numpy() * CFG.exptime_s / CFG.gain_e_adu
    measured = excess[hot["y"], hot["x"]]
    noise = np.sqrt(expected * CFG.gain_e_adu + CFG.read_noise_e**2) / CFG.gain_e_adu
    # a median of 5 darks: within 4 sigma of a single dark of the expected current
    assert np.all(np.abs(measured - expected) < 4 * noise + 1)
    assert np.all(measured > 5 * CFG.read_noise_e / CFG.gain_e_adu)
    normal = np.ones(excess.shape, bool)
    normal[hot["y"], hot["x"]] = False
    assert abs(np.median(excess[normal]) - CFG.dark_current_e_s * 60 / CFG.gain_e_adu) < 1


def test_dead_pixels_are_dark_in_the_flats(night, maps):
    darkflat = np.median([fits.getdata(p).astype(float) for p in night.darkflat_paths], axis=0)
    # twilight flats differ in level: normalise each before the median (as a pipeline must)
    norm = [fits.getdata(p).astype(float) - darkflat for p in night.flat_paths]
    norm = np.median([f / f.mean() for f in norm], axis=0)
    dead = night.bad_pixels[night.bad_pixels["kind"] == "dead"]
    np.testing.assert_allclose(norm[dead["y"], dead["x"]], dead["response"], atol=0.03)
    np.testing.assert_allclose(norm, maps[2], atol=0.05)


def test_cosmic_ray_pixels_are_high(night, maps):
    bias, dark, flat = maps
    cr = night.cosmic_rays
    assert len(cr) > 10
    assert cr["electrons"].between(100, 20000).all()
    # in lights and darks (sky ~900 e-) every hit is strong
    assert (cr["electrons"] / CFG.gain_e_adu > 150).mean() > 0.9
    for filename, hits in cr.groupby("filename"):
        raw = fits.getdata(night.out_dir / "raw" / filename).astype(float)
        exptime = fits.getheader(night.out_dir / "raw" / filename)["EXPTIME"]
        if filename.startswith("light"):
            index = int(hits["frame_index"].iloc[0])
            light = truth_light_image(night.out_dir, index) * flat
        elif filename.startswith("flat"):
            calib = night.truth.calib_frames.set_index("filename")
            light = calib.loc[filename, "level_adu"] * flat
        else:
            light = np.zeros_like(raw)
        mean_e = light * CFG.gain_e_adu + dark * exptime
        y, x = hits["y"].to_numpy(), hits["x"].to_numpy()
        sigma = np.sqrt(mean_e[y, x] + CFG.read_noise_e**2) / CFG.gain_e_adu
        above = raw[y, x] - bias[y, x] - mean_e[y, x] / CFG.gain_e_adu
        unsaturated = raw[y, x] < 65535
        predicted = hits["electrons"].to_numpy() / CFG.gain_e_adu
        # a hit of more than 6 sigma of the pixel's noise stands out by more than 3 sigma
        strong = unsaturated & (predicted > 6 * sigma)
        assert np.all(above[strong] > 3 * sigma[strong])
        assert np.all(np.abs(above - predicted)[unsaturated] < 5 * sigma[unsaturated] + 1)


# --- reference catalog ---------------------------------------------------------------------


def test_refcat_errors_incompleteness_and_wrong_entries():
    rng = np.random.default_rng(5)
    n = 40000
    mags = luminosity_function_sample(rng, n, 12.0, 22.0)
    stars = pd.DataFrame(
        {
            "star_id": np.arange(1, n + 1),
            "ra": 150 + rng.uniform(-0.5, 0.5, n),
            "dec": 20 + rng.uniform(-0.5, 0.5, n),
            "mag": mags,
            "g_mag": mags + 0.6,
            "kind": "stable",
        }
    )
    refcat, truth = make_refcat(stars, 0.03, np.random.default_rng(6))
    assert list(refcat.columns) == ["objid", "ra", "dec", "g", "g_err", "r", "r_err"]
    # binomial scatter on ~25000 entries is 0.1%
    assert (truth["problem"] != "").mean() == pytest.approx(0.03, abs=0.005)
    assert (truth["problem"] == "blend").sum() > 20
    kept = stars.set_index("star_id").loc[truth["star_id"], "mag"].to_numpy()

    def completeness(lo: float, hi: float) -> float:
        return ((kept > lo) & (kept <= hi)).sum() / ((mags > lo) & (mags <= hi)).sum()

    assert completeness(15, 19.5) > 0.97
    assert completeness(21.0, 21.5) == pytest.approx(0.375, abs=0.05)  # linear fall 20 -> 22
    assert completeness(21.8, 22.0) < 0.15
    assert refcat["r_err"].iloc[np.argmax(refcat["r"].to_numpy())] > 0.1
    assert refcat.loc[refcat["r"] < 17, "r_err"].max() < 0.03
    wrong = truth["problem"] == "wrong_mag"
    off = np.abs(refcat["r"] - kept)[wrong]
    assert np.all(off > 0.3 - 4 * refcat["r_err"][wrong])


def test_night_refcat_has_stars_not_movers(night):
    refcat, truth = night.refcat, night.truth.refcat_truth
    mover_ids = set(night.movers["star_id"])
    assert not mover_ids & set(truth["star_id"])
    assert len(refcat) == len(truth) and refcat["objid"].is_unique
    target = night.stars[night.stars["is_target"]].iloc[0]
    row = refcat[truth["star_id"] == target["star_id"]]
    assert float(row["r"].iloc[0]) == pytest.approx(target["mag"], abs=0.1)
    # no catalog entry sits on a mover
    cosd = np.cos(np.deg2rad(20.0))
    for _, m in night.movers.iterrows():
        sep = np.hypot((refcat["ra"] - m["ra0"]) * cosd, refcat["dec"] - m["dec0"]) * 3600
        near = truth.loc[sep < 1.0, "star_id"]
        assert m["star_id"] not in set(near)


def test_movers_move_at_their_rates(night):
    first, last = night.frames.iloc[0], night.frames.iloc[-1]
    for _, m in night.movers.iterrows():
        tracks = []
        for frame in (first, last):
            dt_h = (frame["time_mjd"] - m["t0_mjd"]) * 24
            ra = m["ra0"] + m["rate_ra_arcsec_h"] * dt_h / 3600 / np.cos(np.deg2rad(m["dec0"]))
            dec = m["dec0"] + m["rate_dec_arcsec_h"] * dt_h / 3600
            tracks.append(
                np.array(world_to_pixel(np.array([ra]), np.array([dec]), *frame_wcs(frame)))
            )
        image = truth_light_image(night.out_dir, CFG.n_frames - 1)
        x, y = np.rint(tracks[1][:, 0]).astype(int)
        sky = sky_image(last, CFG.size)[y, x]
        assert image[y, x] > sky + 5  # the mover is where its rate puts it


def test_mover_speeds_over_a_sequence():
    cfg = SimConfig(n_frames=30, size=512, seed=4)
    geom = night_geometry(cfg, night_rng(4, "geometry"))
    frames = frame_conditions(cfg, geom, night_rng(4, "conditions"))
    _, movers = make_stars(cfg, geom, frames["time_mjd"].to_numpy(), night_rng(4, "stars"))
    span_h = (frames["time_mjd"].iloc[-1] - frames["time_mjd"].iloc[0]) * 24 + 60 / 3600
    rate = np.hypot(movers["rate_ra_arcsec_h"], movers["rate_dec_arcsec_h"])
    moved_px = rate * span_h / cfg.pixel_scale_arcsec
    fwhm = cfg.seeing_fwhm_arcsec / cfg.pixel_scale_arcsec
    slow = (movers["speed"] == "slow").to_numpy()
    assert np.all((moved_px[slow] > 0.99 * fwhm) & (moved_px[slow] < 3.01 * fwhm))
    assert np.all((moved_px[~slow] > 29) & (moved_px[~slow] < 301))


def test_truth_light_image_errors(night, tmp_path):
    with pytest.raises(ValueError, match="frame_index"):
        truth_light_image(night.out_dir, CFG.n_frames)
    with pytest.raises(FileNotFoundError, match="not a night"):
        load_truth(tmp_path)


# --- the limb-darkened transit (issue 17's simulated transit nights) --------------------------


def test_limb_darkened_transit_rendered_and_its_truth_written(night, tmp_path):
    """``transit_shape = "limb-darkened"``: the target's flux is batman's transit of the given
    shape, placed ``transit_offset_h`` from the middle of the frames, its truth in
    truth/transit.json; every other draw of the night is that of the trapezoid night."""
    from lcdask.io.headers import bjd_tdb
    from lcdask.simulate.render import source_positions_fluxes
    from lcdask.transit.model import TransitShape, inclination_deg, transit_model

    cfg = dataclasses.replace(
        CFG,
        n_frames=24,
        readout_s=300.0,  # 24 frames over 2.4 h
        transit_shape="limb-darkened",
        transit_rp_rs=0.12,
        transit_a_rs=9.0,
        transit_b=0.4,
        transit_u1=0.45,
        transit_u2=0.2,
        transit_period_d=2.5,
        transit_offset_h=-0.9,
        n_darks=0, n_darkflats=0, n_flats=0, n_bias=0,
    )  # fmt: skip
    ld = simulate_night(tmp_path / "ld", cfg, n_workers=1)
    truth = ld.truth.transit()
    assert night.truth.transit() is None  # the default night has no transit.json
    assert truth["shape"] == "limb-darkened"
    target = ld.stars[ld.stars["is_target"]].iloc[0]
    t = ld.frames["time_mjd"].to_numpy()
    # the mid-time: 0.9 h before the middle of the frames (to float64's rounding of an MJD)
    assert truth["offset_h"] == pytest.approx(-0.9, abs=1e-6)
    assert truth["t0_mjd"] == pytest.approx(0.5 * (t[0] + t[-1]) - 0.9 / 24, abs=1e-9)
    expected_bjd = bjd_tdb(truth["t0_mjd"], target["ra"], target["dec"], 31.96, -111.60, 2096.0)
    assert truth["t0_bjd_tdb"] == pytest.approx(expected_bjd, abs=1e-9)
    # the geometry given, and batman's curve rendered at every frame
    assert truth["depth"] == pytest.approx(0.12**2) and truth["b"] == pytest.approx(0.4)
    assert truth["inc_deg"] == pytest.approx(float(inclination_deg(9.0, 0.4)))
    shape = TransitShape(2.5, 0.12, 9.0, truth["inc_deg"], (0.45, 0.2))
    model = transit_model(t, truth["t0_mjd"], shape)
    np.testing.assert_allclose(flux_factor(target, t), model, rtol=1e-12)
    assert truth["min_flux"] < 1 - 0.12**2  # limb darkening: deeper than (Rp/Rs)^2 at centre
    for i in (0, 8, 16):
        ids, _, _, flux = source_positions_fluxes(ld.frames.iloc[i], ld.stars, ld.movers)
        frame = ld.frames.iloc[i]
        plain = catalog_flux_adu(
            target["mag"], frame["zero_point"], frame["slope"], frame["exptime_s"]
        )
        assert flux[ids == target["star_id"]][0] == pytest.approx(plain * model[i], rel=1e-12)
    # the frames see the egress only (mid-transit 0.9 h before the middle of 2.4 h)
    cov = truth["coverage"]
    assert cov["kind"] == "egress" and cov["n_egress"] >= 2 and cov["n_after"] >= 5
    assert sum(v for k, v in cov.items() if k != "kind") == cfg.n_frames
    # the rest of the night is the trapezoid night's: same geometry and field
    trap = dataclasses.replace(cfg, transit_shape="trapezoid")
    geom = night_geometry(trap, night_rng(trap.seed, "geometry"))
    frames = frame_conditions(trap, geom, night_rng(trap.seed, "conditions"))
    stars, _ = make_stars(trap, geom, frames["time_mjd"].to_numpy(), night_rng(trap.seed, "stars"))
    assert list(stars.columns) == [c for c in ld.stars.columns if c not in LD_COLUMNS]
    np.testing.assert_array_equal(stars["ra"], ld.stars["ra"])
    np.testing.assert_array_equal(stars["mag"], ld.stars["mag"])
    assert stars.loc[stars["is_target"], "t0_mjd"].iloc[0] == truth["t0_mjd"]


def test_transit_options_are_checked():
    with pytest.raises(ValueError, match="transit_shape"):
        SimConfig(transit_shape="box")
    with pytest.raises(ValueError, match="transit_b"):
        SimConfig(transit_b=2.0)
    from lcdask.simulate.field import limb_darkened_columns

    with pytest.raises(ValueError, match="never crosses"):  # b > 1 + Rp/Rs: no transit
        limb_darkened_columns(SimConfig(transit_shape="limb-darkened", transit_b=1.4), 3.0)
