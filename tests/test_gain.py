"""Gain and read noise from the frames (`lcdask.gain`), against truth: synthetic exposures of known
gain, the simulator's nights (flats and bias; lights only), and the real nights' headers."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import shared_data

from lcdask import gain
from lcdask.io import cube as cube_io
from lcdask.io.cube import open_cube
from lcdask.stages.calibrate import calibrate_cube
from lcdask.stages.ingest import ingest

# --- synthetic exposures: Poisson electrons, read noise, a bias with structure, a flat pattern ---


def _detector(rng: np.random.Generator, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A flat response (vignetting, 2% pixel-to-pixel) and a bias (level, column pattern)."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    flat = (1.0 - 0.6 * (xx**2 + yy**2)) * (1.0 + 0.02 * rng.standard_normal((size, size)))
    bias = 500.0 + rng.normal(0.0, 3.0, size)[None, :] + np.zeros((size, size))
    return flat, bias


def _expose(rng, mean_e, *, gain_e_adu, read_noise_e, bias) -> np.ndarray:
    electrons = rng.poisson(np.broadcast_to(mean_e, bias.shape)).astype(float)
    electrons += read_noise_e * rng.standard_normal(electrons.shape)
    return np.rint(electrons / gain_e_adu + bias)


def _stars(rng, size: int, n: int, shift: tuple[float, float]) -> np.ndarray:
    """Gaussian stars (FWHM 3.5 px, 2e3-2e5 e-), moved by ``shift`` px (drift between frames)."""
    x0, y0 = rng.uniform(5, size - 5, n), rng.uniform(5, size - 5, n)
    flux = np.exp(rng.uniform(np.log(2e3), np.log(2e5), n))
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.zeros((size, size))
    sigma = 3.5 / 2.3548
    for x, y, f in zip(x0 + shift[0], y0 + shift[1], flux, strict=True):
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        image += f * np.exp(-0.5 * r2 / sigma**2) / (2 * np.pi * sigma**2)
    return image


def test_photon_transfer_of_flats_and_biases_gives_the_true_gain_and_read_noise():
    rng = np.random.default_rng(1)
    g, rn = 2.3, 7.0
    flat, bias = _detector(rng)
    biases = [_expose(rng, 0.0, gain_e_adu=g, read_noise_e=rn, bias=bias) for _ in range(8)]
    # twilight flats: each pair at its own level, the second of a pair 6% fainter
    flats = []
    for level_adu in (18000.0, 22000.0, 26000.0, 30000.0):
        for scale in (1.0, 0.94):
            flats.append(
                _expose(rng, level_adu * scale * g * flat, gain_e_adu=g, read_noise_e=rn, bias=bias)
            )
    reads = gain.PairStatistics.concatenate(
        [gain.pair_statistics(biases[i], biases[i + 1], scale=False) for i in range(0, 8, 2)]
    )
    sigma_adu, sigma_err = gain.read_noise_adu(reads)
    # 4 pairs x 64 boxes of 1024 px: the variance to ~0.3%, sigma to ~0.15%
    assert sigma_adu * g == pytest.approx(rn, rel=0.01)
    assert 0 < sigma_err < 0.01 * sigma_adu
    master_bias = np.median(biases, axis=0)
    stats = gain.PairStatistics.concatenate(
        [
            gain.pair_statistics(flats[i], flats[i + 1], reference=master_bias)
            for i in range(0, 8, 2)
        ]
    )
    fit = gain.fit_gain(stats, read_variance_adu2=sigma_adu**2)
    assert fit.ok and fit.method == "ratio" and fit.n_pairs == 4
    # 256 boxes, each 4.4% (1024 px): the median to ~0.35%; the 2% pixel pattern must cancel
    assert fit.gain_e_adu == pytest.approx(g, rel=0.015)
    assert abs(fit.gain_e_adu - g) < 4 * fit.gain_err_e_adu + 0.002
    # without the scaling of the second flat, its 6% lower level leaves the 2% pattern in the
    # difference: (0.06 * 0.02 * 24000 ADU)^2 ~ 830 ADU^2 beside ~10000: the gain 8% low
    unscaled = gain.PairStatistics.concatenate(
        [
            gain.pair_statistics(flats[i], flats[i + 1], reference=master_bias, scale=False)
            for i in range(0, 8, 2)
        ]
    )
    assert gain.fit_gain(unscaled, read_variance_adu2=sigma_adu**2).gain_e_adu < 0.95 * g


def test_the_sky_of_lights_with_stars_masked_gives_the_gain():
    rng = np.random.default_rng(2)
    g, rn, size = 1.7, 9.0, 256
    flat, bias = _detector(rng, size)
    lights = []
    for k in range(8):
        stars = _stars(np.random.default_rng(3), size, 120, shift=(1.5 * k, 0.7 * k))
        sky_e = (900.0 + 20.0 * k) * g
        lights.append(
            _expose(rng, (sky_e + stars) * flat, gain_e_adu=g, read_noise_e=rn, bias=bias)
        )
    pairs = [(i, i + 1) for i in range(0, 8, 2)]
    masked = gain.PairStatistics.concatenate(
        [
            gain.pair_statistics(lights[a], lights[b], reference=bias, mask_sources=True)
            for a, b in pairs
        ]
    )
    fit = gain.fit_gain(masked, read_variance_adu2=(rn / g) ** 2)
    # 120 stars on 256^2 px: ~240 boxes at 4.4% each (measured 0.6% low: wings left), within 3%
    assert fit.gain_e_adu == pytest.approx(g, rel=0.03)
    # the stars' own photon noise, left in, makes the sky look noisier: the gain 17% low
    bare = gain.PairStatistics.concatenate(
        [gain.pair_statistics(lights[a], lights[b], reference=bias) for a, b in pairs]
    )
    assert gain.fit_gain(bare, read_variance_adu2=(rn / g) ** 2).gain_e_adu < 0.92 * g


def test_unknown_bias_the_slope_of_variance_against_level():
    rng = np.random.default_rng(4)
    g, rn, size = 2.0, 8.0, 256
    flat, bias = _detector(rng, size)  # vignetting: the sky from 0.7 to 1.0 of its centre
    lights = [
        _expose(rng, 1500.0 * g * flat * (1 + 0.3 * k), gain_e_adu=g, read_noise_e=rn, bias=bias)
        for k in range(4)
        for _ in range(2)
    ]
    stats = gain.PairStatistics.concatenate(
        [gain.pair_statistics(lights[i], lights[i + 1]) for i in range(0, 8, 2)]
    )
    fit = gain.fit_gain(stats, bias_known=False)
    assert fit.ok and fit.method == "slope"
    assert np.isnan(fit.read_variance_adu2)  # read noise and bias not separable
    # levels 1500-3000 ADU across 256 boxes of 4.4%: the slope to ~2%
    assert fit.gain_e_adu == pytest.approx(g, rel=0.05)
    # one level only (a pair, vignetting alone): too little span for the slope, refused
    one = gain.pair_statistics(
        *[_expose(rng, 1500.0 * g, gain_e_adu=g, read_noise_e=rn, bias=bias) for _ in range(2)]
    )
    refused = gain.fit_gain(one, bias_known=False)
    assert not refused.ok and "span too little" in refused.reason


def test_source_mask_takes_stars_not_noise():
    rng = np.random.default_rng(5)
    noise = rng.normal(1000.0, 30.0, (256, 256))
    # pure noise crosses the 4-sigma cut of the smoothed image in ~3e-5 of the pixels (each
    # grown to 7x7): under 0.5% masked
    assert gain.source_mask(noise).mean() < 0.005
    stars = _stars(np.random.default_rng(6), 256, 30, (0.0, 0.0))
    mask = gain.source_mask(noise + stars)
    peaks = stars > 150.0  # 5 sigma of the pixel noise
    assert mask[peaks].all()


def test_header_judged_against_the_estimate():
    assert gain.gain_consistent(2.07, 2.04)
    assert gain.gain_consistent(4.95, 3.67)  # 26% off: not grossly wrong
    assert not gain.gain_consistent(1.0, 2.3)
    assert not gain.gain_consistent(100.0, 1.5)  # a gain setting, not e-/ADU
    assert gain.gain_consistent(np.nan, 1.5)


def test_pair_statistics_bad_input():
    with pytest.raises(ValueError, match="two 2-D frames of one shape"):
        gain.pair_statistics(np.zeros((10, 10)), np.zeros((10, 12)))
    with pytest.raises(ValueError, match="box_px"):
        gain.pair_statistics(np.zeros((10, 10)), np.zeros((10, 10)), box_px=2)


def _lightcurves(rng, model_scale: float) -> tuple[xr.Dataset, pd.DataFrame]:
    """Stars whose flux scatters as the CCD equation says (sky 400 ADU^2, gain 2), and whose
    recorded error is ``model_scale`` times that."""
    n_src, n_frames = 60, 50
    flux = np.exp(rng.uniform(np.log(1e3), np.log(5e5), n_src))[:, None] * np.ones(n_frames)
    sigma = np.sqrt(400.0 + flux / 2.0)
    measured = flux + sigma * rng.standard_normal(flux.shape)
    ds = xr.Dataset(
        {
            "flux": (("source", "frame"), measured),
            "flux_err": (("source", "frame"), model_scale * sigma),
            "rel_flux": (("source", "frame"), measured / flux),
            "rel_flux_err": (("source", "frame"), model_scale * sigma / flux),
            "flags": (("source", "frame"), np.zeros(flux.shape, np.int32)),
        },
        coords={"source_id": ("source", np.arange(n_src))},
    )
    sources = pd.DataFrame({"source_id": np.arange(n_src), "kind": "stable", "is_target": False})
    return ds, sources


def test_photon_fraction_and_the_noise_model_check():
    rng = np.random.default_rng(7)
    ds, sources = _lightcurves(rng, 1.0)
    fraction = gain.photon_fraction(ds["flux"].values, ds["flux_err"].values)
    flux = ds["flux"].values
    truth = (flux / 2.0) / (400.0 + flux / 2.0)
    # the line fitted on 60 stars, and the flux measured (noisy) where the error is the truth's
    np.testing.assert_allclose(fraction, truth, atol=0.05)
    check = gain.noise_model_check(ds, sources)
    # stars with flux > 800 ADU... those above half photon noise: ~50 stars of 50 points, each
    # scatter to ~17% (MAD of differences): the median ratio to ~5%
    assert check["n_stars"] > 30
    assert check["ratio"] == pytest.approx(1.0, abs=0.08)
    assert gain.noise_model_check(*_lightcurves(rng, 1.5))["ratio"] == pytest.approx(
        1 / 1.5, abs=0.06
    )
    sources.loc[:, "kind"] = "variable"
    assert gain.noise_model_check(ds, sources) == {
        "n_stars": 0,
        "ratio": None,
        "selection": check["selection"],
    }


# --- the calibration stage on simulated nights (the simulator's gain and read noise are truth) ---

FLATS_GAIN, FLATS_READ_NOISE = 2.4, 7.0  # not the simulator's defaults, and not 1 e-/ADU


def _calibrated(night, out, **config):
    from lcdask.config import CalibrationConfig

    ingest(night / "raw", out)
    return calibrate_cube(out, config=CalibrationConfig(**config))


@pytest.fixture(scope="module")
def flats_night(tmp_path_factory):
    """A simulated night with flats, darks and bias and no GAIN/RDNOISE keys, calibrated."""
    from lcdask.simulate import SimConfig, simulate_night

    base = tmp_path_factory.mktemp("flats_night")
    cfg = SimConfig(
        n_frames=4,
        size=384,
        seed=2,
        gain_e_adu=FLATS_GAIN,
        read_noise_e=FLATS_READ_NOISE,
        gain_keys=False,
    )
    simulate_night(base / "sim", cfg, n_workers=1)
    summary = _calibrated(base / "sim", base / "run")
    return base, summary


def _lights(ds: xr.Dataset) -> np.ndarray:
    return np.flatnonzero(ds["frame_type"].values == "light")


def test_photon_transfer_of_the_simulated_flats(flats_night):
    base, summary = flats_night
    noise = summary["noise"]
    assert noise["header_gain_e_adu"] is None and noise["gain_source"] == "flats"
    estimate = noise["estimate"]
    assert estimate["reference"] == "master bias" and "flats" in estimate["gain_from"]
    # 3 pairs of 384^2 flats at ~25000 ADU: the gain to ~0.5%; asked within 5%
    assert noise["gain_e_adu"] == pytest.approx(FLATS_GAIN, rel=0.05)
    assert noise["gain_e_adu"] == pytest.approx(FLATS_GAIN, rel=0.01)
    # 4 pairs of bias frames: the read noise to ~0.5% (times the gain's error)
    assert noise["rdnoise_source"] == "bias"
    assert noise["rdnoise_e"] == pytest.approx(FLATS_READ_NOISE, rel=0.02)
    ds = open_cube(base / "run")
    lights = _lights(ds)
    np.testing.assert_array_equal(ds["gain_e_adu"].values[lights], noise["gain_e_adu"])
    assert set(ds["gain_source"].values[lights]) == {"flats"}
    assert set(ds["rdnoise_source"].values[lights]) == {"bias"}
    record = json.loads(ds.attrs["calibration"])["noise"]
    assert record["gain_e_adu"] == noise["gain_e_adu"]


def test_a_second_calibration_judges_the_headers_not_the_estimate(flats_night):
    base, first = flats_night
    again = calibrate_cube(base / "run")["noise"]
    # the cube's gain_e_adu now holds the estimate; it is not taken for a header's value
    assert again["header_gain_e_adu"] is None and again["gain_source"] == "flats"
    assert again["gain_e_adu"] == first["noise"]["gain_e_adu"]
    # a light appended to the calibrated cube (no gain in its header) gets the same estimate,
    # without measuring again
    store = base / "run" / "cube.zarr"
    last = _lights(open_cube(store))[-1:]
    cube_io.set_frame_values(store, "gain_e_adu", last, [np.nan])
    cube_io.set_frame_values(store, "gain_source", last, [""])
    cube_io.consolidate(store)
    summary = calibrate_cube(store, frames=last)
    appended = summary["noise"]
    assert appended["gain_source"] == "flats" and "gain" not in summary["timings_s"]
    assert open_cube(store)["gain_e_adu"].values[last[0]] == first["noise"]["gain_e_adu"]
    assert appended["estimate"] == again["estimate"]


def test_a_grossly_wrong_header_gain_is_replaced_and_said(flats_night, tmp_path, caplog):
    base, _ = flats_night
    out = tmp_path / "run"
    store = out / "cube.zarr"
    for header, replaced in ((10.0, True), (2.0, False)):  # 4.2x off; 1.2x off
        ingest(base / "sim" / "raw", out, overwrite=True)  # as if the headers said so
        lights = _lights(open_cube(out))
        cube_io.set_frame_values(store, "gain_e_adu", lights, [header] * len(lights))
        cube_io.consolidate(store)
        with caplog.at_level(logging.WARNING, logger="lcdask"):
            caplog.clear()
            noise = calibrate_cube(out)["noise"]
        assert noise["header_gain_e_adu"] == header
        said = [r.message for r in caplog.records if "inconsistent with the data" in r.message]
        if replaced:
            assert noise["gain_source"] == "flats"
            assert noise["n_gain_replaced"] == len(lights)
            assert noise["gain_e_adu"] == pytest.approx(FLATS_GAIN, rel=0.01)
            assert len(said) == 1 and "10 e-/ADU" in said[0]
        else:
            assert noise["gain_source"] == "header" and noise["gain_e_adu"] == header
            assert not said
    # the configuration's value wins; "off" leaves the headers' (none): 1 e-/ADU at Level 3
    noise = _calibrated_again(out, gain_e_adu=1.9)
    assert noise["gain_source"] == "config" and noise["gain_e_adu"] == 1.9
    cube_io.set_frame_values(store, "gain_e_adu", lights, [np.nan] * len(lights))
    cube_io.consolidate(store)
    noise = _calibrated_again(out, noise_estimate="off")
    assert noise["gain_source"] == "none" and noise["gain_e_adu"] is None
    assert not noise["estimate"]


def _calibrated_again(out, **config):
    from lcdask.config import CalibrationConfig

    return calibrate_cube(out, config=CalibrationConfig(**config))["noise"]


def test_lights_only_small_telescope_night(tmp_path):
    """The small-telescope preset without GAIN keys: no calibration frames at all, so the gain
    comes from the slope of the sky's variance against its level (the bias unknown)."""
    from lcdask.io.anindex import find_index_files
    from lcdask.simulate import simulate_night, small_telescope_config

    if not find_index_files():  # the preset draws the real Tycho-2 sky from them
        pytest.skip("no astrometry.net index files (scripts/install-system-deps.sh)")
    cfg = small_telescope_config(n_frames=20, size=512, seed=1, gain_keys=False)
    simulate_night(tmp_path / "sim", cfg, n_workers=1)
    noise = _calibrated(tmp_path / "sim", tmp_path / "run")["noise"]
    estimate = noise["estimate"]
    assert estimate["reference"] == "none (bias level unknown)"
    assert estimate["fit"]["method"] == "slope" and noise["gain_source"] == "lights"
    # the sky spans only its vignetting (~10%) and the night's changes: the slope to ~5%
    # (1.348 measured on 30 frames, 1.38 on 16; truth 1.3); asked within 15%
    assert noise["gain_e_adu"] == pytest.approx(cfg.gain_e_adu, rel=0.15)
    assert abs(noise["gain_e_adu"] - cfg.gain_e_adu) < 3 * estimate["gain_err_e_adu"]
    assert noise["rdnoise_e"] is None  # not measurable without a bias: Level 3 assumes one


def test_noise_model_matches_the_scatter_of_photon_limited_stars(tmp_path, session_client):
    """A whole run of a night whose headers give no gain, at 3 e-/ADU (1 e-/ADU, the old
    assumption, made the model 1.5x the scatter here: ratio 0.66)."""
    from lcdask.run import run
    from lcdask.simulate import SimConfig, simulate_night

    cfg = SimConfig(
        n_frames=30,
        size=512,
        seed=11,
        gain_e_adu=3.0,
        read_noise_e=6.0,
        gain_keys=False,
        sky_mag_arcsec2=21.0,  # a darker sky and a denser field: more photon-limited stars
        stars_per_deg2_r20=15000.0,
    )
    simulate_night(tmp_path / "sim", cfg, n_workers=1)
    record = run(
        tmp_path / "sim" / "raw",
        tmp_path / "run",
        catalog=tmp_path / "sim" / "refcat.parquet",
        client=session_client,
    )
    noise = record["stages"]["calibrate"]["noise"]
    assert noise["gain_source"] == "flats"
    assert noise["gain_e_adu"] == pytest.approx(cfg.gain_e_adu, rel=0.05)
    check = record["stages"]["lightcurves"]["noise_model"]
    # 15 photon-limited stars, ~380 point-to-point differences: the pooled ratio to ~4%
    # (measured 0.94 with the ensemble's error, 0.985 with the star's own, 1.01 per star)
    assert check["n_stars"] >= 10
    assert 0.9 <= check["ratio"] <= 1.1
    assert 0.9 <= check["ratio_flux_err"] <= 1.1
    assert 0.9 <= check["ratio_per_star_median"] <= 1.1


# --- real nights: the estimate against what their PROVENANCE.md says of the gain ---


def _sky_gain(run_dir, read_noise_adu: float, n_pairs: int = 8) -> gain.GainFit:
    """The gain from the sky of the night's consecutive lights (master bias subtracted)."""
    ds = open_cube(run_dir)
    lights = np.flatnonzero((ds["frame_type"].values == "light") & (ds["flags"].values == 0))
    lights = lights[np.argsort(ds["time_mjd"].values[lights])]
    exptime = ds["exptime_s"].values
    bias, bad = ds["master_bias"].values, ds["bad_pixels"].values != 0
    parts = []
    for a, b in zip(lights[0:-1:2], lights[1::2], strict=False):
        if exptime[a] == exptime[b] and len(parts) < n_pairs:
            raw_a, raw_b = ds["raw"][a].values, ds["raw"][b].values
            parts.append(
                gain.pair_statistics(raw_a, raw_b, reference=bias, mask=bad, mask_sources=True)
            )
    return gain.fit_gain(
        gain.PairStatistics.concatenate(parts), read_variance_adu2=read_noise_adu**2
    )


def test_c14_sky_gain_against_the_header(c14_frames, tmp_path):
    """asteroid2713_c14: lights, darks and bias, no flats; EGAIN 2.07 e-/ADU, no read noise."""
    ingest(c14_frames, tmp_path / "run")
    noise = calibrate_cube(tmp_path / "run")["noise"]
    estimate = noise["estimate"]
    assert estimate["reference"] == "master bias" and "lights" in estimate["gain_from"]
    # 3 pairs of 1024^2 180 s lights on a ~4900 ADU sky: the gain to ~0.5% (2.042 measured)
    assert estimate["gain_e_adu"] == pytest.approx(2.07, rel=0.05)
    assert noise["gain_source"] == "header" and noise["gain_e_adu"] == 2.07  # kept
    # no read noise in the headers: 4 pairs of bias (6.18 ADU) times the headers' gain
    assert noise["rdnoise_source"] == "bias"
    assert noise["rdnoise_e"] == pytest.approx(estimate["read_noise_adu"] * 2.07, rel=1e-3)


def test_lowell_flats_against_the_header(lowell_dir, tmp_path):
    """asteroid5945_lowell42: bias and twilight flats; AGAIN_01 4.95 e-/ADU, ARDNS_01 9.3 e-.

    Photon transfer on the flats finds 3.67 e-/ADU (the same at every level from 13 to 25 kADU,
    and in each pair), and the sky of the lights 3.9: the data agree with each other, not with
    the header's nominal value (26% above). That is within the factor 1.5 that counts as gross:
    the header is kept."""
    ingest([lowell_dir / "bias", lowell_dir / "flat", lowell_dir / "science"], tmp_path / "run")
    noise = calibrate_cube(tmp_path / "run")["noise"]
    estimate = noise["estimate"]
    assert "flats" in estimate["gain_from"] and estimate["reference"] == "master bias"
    assert noise["gain_source"] == "header" and noise["gain_e_adu"] == 4.95
    assert noise["rdnoise_source"] == "header" and noise["rdnoise_e"] == 9.3
    flats = estimate["gain_e_adu"]
    assert 4.95 / 1.5 < flats < 4.95  # below the header's, not grossly
    sky = _sky_gain(tmp_path / "run", estimate["read_noise_adu"])
    # two independent measurements: 3.67 (flats) and 3.95 (11 lights' sky, 750-3800 ADU)
    assert sky.gain_e_adu == pytest.approx(flats, rel=0.1)


def test_xo1b_flats_give_the_gain_the_headers_lack(tmp_path):
    """transit_xo1b_arcsat: bias, darks and dome flats (76-83 s); no gain or read noise in the
    headers (the run took 1 e-/ADU before)."""
    ingest(shared_data("transit_xo1b_arcsat") / "frames", tmp_path / "run")
    summary = calibrate_cube(tmp_path / "run")
    noise, estimate = summary["noise"], summary["noise"]["estimate"]
    assert noise["header_gain_e_adu"] is None and noise["gain_source"] == "flats"
    assert noise["rdnoise_source"] == "bias"
    flats = estimate["gain_e_adu"]  # 1.336 e-/ADU; read noise 12.1 ADU = 16.1 e-
    assert estimate["fit"]["n_pairs"] == 2 and estimate["gain_err_e_adu"] < 0.01 * flats
    ds = open_cube(tmp_path / "run")
    lights = np.flatnonzero(ds["frame_type"].values == "light")
    np.testing.assert_array_equal(ds["gain_e_adu"].values[lights], flats)
    # the lights' sky is faint (z, 60 s: ~130 ADU of sky under 146 ADU^2 of read noise), so
    # its gain rests on a small excess over the read noise: 1.54, 15% above the flats'
    sky = _sky_gain(tmp_path / "run", estimate["read_noise_adu"])
    assert sky.gain_e_adu == pytest.approx(flats, rel=0.2)


def test_every_other_box_is_the_same_boxes():
    rng = np.random.default_rng(8)
    flat, bias = _detector(rng, 256)
    a, b = (_expose(rng, 5000.0 * flat, gain_e_adu=2.0, read_noise_e=5.0, bias=bias) for _ in "ab")
    full = gain.pair_statistics(a, b, reference=bias)  # 8 x 8 boxes of 32 px
    half = gain.pair_statistics(a, b, reference=bias, box_step=2)
    even = (np.arange(64).reshape(8, 8)[::2, ::2]).ravel()
    np.testing.assert_allclose(half.level, full.level[even])
    np.testing.assert_allclose(half.variance, full.variance[even])
