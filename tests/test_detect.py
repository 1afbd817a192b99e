"""Detection against the simulator's truth: completeness, centroids, fluxes, FWHM, sky, schema."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose
from scipy.spatial import cKDTree

from lcdask.detect import DETECTION_SCHEMA, DetectionFlag, detect_frame, empty_detections

pytest.importorskip("lcdask.simulate")
from lcdask.simulate import SimConfig, catalog_flux_adu, simulate_night, truth_light_image
from lcdask.testing import truth_wcs

CFG = SimConfig(
    n_frames=1,
    size=1024,
    seed=11,
    rotation_deg=30.0,
    n_darks=1,
    n_darkflats=1,
    n_flats=1,
    n_bias=1,
    n_close_pairs=0,
)


@pytest.fixture(scope="module")
def sim_frame(tmp_path_factory):
    """One 1024x1024 simulated light: noisy calibrated image, truth stars in pixels, frame truth."""
    out = tmp_path_factory.mktemp("detect_sim")
    night = simulate_night(out, CFG, n_workers=1)
    frame = night.truth.frames.iloc[0]
    rng = np.random.default_rng(5)
    truth = truth_light_image(out, 0)
    gain = CFG.gain_e_adu
    image = rng.poisson(truth * gain) / gain
    image += rng.normal(0.0, CFG.read_noise_e / gain, image.shape)
    stars = night.truth.stars
    stars = stars[stars["kind"] == "stable"].copy()
    x, y = truth_wcs(frame).world_to_pixel_values(stars["ra"], stars["dec"])
    stars["x"], stars["y"] = x, y
    stars["flux"] = catalog_flux_adu(stars["mag"], frame.zero_point, frame.slope, frame.exptime_s)
    return image, stars, frame


def _match(detections: pd.DataFrame, stars: pd.DataFrame, radius: float = 1.5):
    tree = cKDTree(detections[["x", "y"]].to_numpy())
    dist, idx = tree.query(stars[["x", "y"]].to_numpy(), distance_upper_bound=radius)
    return np.isfinite(dist), idx


def _isolated_inside(stars: pd.DataFrame, size: int, margin: float = 10.0) -> np.ndarray:
    xy = stars[["x", "y"]].to_numpy()
    dist, _ = cKDTree(xy).query(xy, k=2)
    inside = (xy > margin).all(axis=1) & (xy < size - 1 - margin).all(axis=1)
    return inside & (dist[:, 1] > 12.0)


@pytest.fixture(scope="module")
def sep_result(sim_frame):
    image, _, _ = sim_frame
    return detect_frame(image, saturation=CFG.saturate_adu, gain=CFG.gain_e_adu)


def test_schema_and_types(sep_result):
    table, stats = sep_result
    assert list(table.columns) == list(DETECTION_SCHEMA)
    assert {c: str(t) for c, t in table.dtypes.items()} == dict(DETECTION_SCHEMA)
    assert stats["n_sources"] == len(table) > 50
    assert (np.diff(table["flux"].to_numpy()) <= 0).all()  # brightest first


def test_completeness_and_centroids(sim_frame, sep_result):
    image, stars, _ = sim_frame
    table, stats = sep_result
    good = _isolated_inside(stars, image.shape[0])
    # Expected S/N of a star: flux over the noise of the sky in ~ pi (1.5 FWHM)^2 pixels.
    noise = stats["sky_rms"] * np.sqrt(np.pi * (1.5 * stats["fwhm_px"]) ** 2)
    expected_snr = stars["flux"].to_numpy() / noise
    found, idx = _match(table, stars)
    bright = good & (expected_snr > 20)
    assert bright.sum() > 30
    # Every isolated star at S/N > 20 is found (saturated ones included).
    assert found[bright].mean() >= 0.98
    sel = bright & found
    det = table.iloc[idx[sel]]
    dx = det["x"].to_numpy() - stars["x"].to_numpy()[sel]
    dy = det["y"].to_numpy() - stars["y"].to_numpy()[sel]
    snr = det["snr"].to_numpy()
    unsat = (det["flags"].to_numpy() & DetectionFlag.SATURATED) == 0
    high = (snr > 100) & unsat
    # Windowed centroids at S/N > 100: photon noise ~ FWHM / S/N ~ 0.03 px, no bias.
    assert np.sqrt(np.mean(dx[high] ** 2 + dy[high] ** 2)) < 0.05
    assert abs(np.median(dx[high])) < 0.02 and abs(np.median(dy[high])) < 0.02
    mid = (snr > 20) & (snr <= 100)
    assert np.sqrt(np.mean(dx[mid] ** 2 + dy[mid] ** 2)) < 0.15


def test_fluxes_fwhm_and_sky(sim_frame, sep_result):
    image, stars, frame = sim_frame
    table, stats = sep_result
    good = _isolated_inside(stars, image.shape[0])
    found, idx = _match(table, stars)
    sel = good & found
    det = table.iloc[idx[sel]]
    unsat = (det["flags"].to_numpy() & DetectionFlag.SATURATED) == 0
    high = unsat & (det["snr"].to_numpy() > 100)
    ratio = det["flux"].to_numpy()[high] / stars["flux"].to_numpy()[sel][high]
    # The aperture (2.5 FWHM) holds ~97-98% of a beta=3 Moffat; photon noise at S/N > 100 is 1%.
    assert 0.95 < np.median(ratio) < 1.0
    assert np.std(ratio) < 0.03
    # Errors: the scatter of the ratio is explained by flux_err (within 50%).
    pull = (ratio - np.median(ratio)) * stars["flux"].to_numpy()[sel][high]
    pull /= det["flux_err"].to_numpy()[high]
    assert 0.5 < np.std(pull) < 1.6
    # FWHM within 7% (pixel sampling correction residual + ellipticity), sky within 1%.
    assert_allclose(stats["fwhm_px"], frame.fwhm_px, rtol=0.07)
    assert_allclose(stats["sky"], frame.sky_adu, rtol=0.01)
    expected_rms = np.sqrt(frame.sky_adu * CFG.gain_e_adu + CFG.read_noise_e**2) / CFG.gain_e_adu
    assert_allclose(stats["sky_rms"], expected_rms, rtol=0.05)


def test_saturated_stars_flagged(sep_result):
    table, _ = sep_result
    saturated = (table["flags"].to_numpy() & DetectionFlag.SATURATED) != 0
    # The simulator puts n_saturated_stars very bright stars in every frame.
    assert saturated.sum() >= 1
    assert (table["peak"].to_numpy()[saturated] > 0.5 * CFG.saturate_adu - 1000).all()


def test_big_endian_input_gives_the_same_table(sim_frame):
    image, _, _ = sim_frame
    native, _ = detect_frame(image.astype("<f4"))
    swapped, _ = detect_frame(image.astype(">f4"))
    pd.testing.assert_frame_equal(native, swapped)


def test_backends_agree(sim_frame, sep_result):
    image, _, _ = sim_frame
    table_sep, stats_sep = sep_result
    table_pu, stats_pu = detect_frame(
        image, backend="photutils", saturation=CFG.saturate_adu, gain=CFG.gain_e_adu
    )
    assert list(table_pu.columns) == list(DETECTION_SCHEMA)
    assert_allclose(stats_pu["sky"], stats_sep["sky"], rtol=0.005)
    assert_allclose(stats_pu["sky_rms"], stats_sep["sky_rms"], rtol=0.03)
    assert_allclose(stats_pu["fwhm_px"], stats_sep["fwhm_px"], rtol=0.03)
    # Same sources found (within 10%) ...
    assert abs(len(table_pu) - len(table_sep)) < 0.1 * len(table_sep)
    # ... and, for clean bright ones, the same windowed centroids and aperture fluxes.
    bright = table_sep[(table_sep["snr"] > 50) & (table_sep["flags"] == 0)]
    dist, idx = cKDTree(table_pu[["x", "y"]].to_numpy()).query(bright[["x", "y"]].to_numpy())
    assert (dist < 0.5).mean() > 0.95
    close = dist < 0.5
    # The same algorithm on different background maps: differences well below photon noise.
    assert np.sqrt(np.mean(dist[close] ** 2)) < 0.02
    ratio = table_pu["flux"].to_numpy()[idx[close]] / bright["flux"].to_numpy()[close]
    assert_allclose(np.median(ratio), 1.0, atol=0.01)


def test_mask_excludes_pixels(sim_frame, sep_result):
    image, _, _ = sim_frame
    table, _ = sep_result
    mask = np.zeros(image.shape, dtype=bool)
    mask[:, :400] = True
    masked_table, _ = detect_frame(image, mask=mask)
    assert (masked_table["x"] > 395).all()
    # Sources whose aperture reaches the masked area are flagged.
    near = masked_table["x"] < 400 + 5
    assert ((masked_table["flags"].to_numpy()[near] & DetectionFlag.MASKED) != 0).all()
    assert len(masked_table) < len(table)


def test_nonfinite_pixels_are_masked(sim_frame):
    image, _, _ = sim_frame
    image = image.copy()
    image[300:310, 300:310] = np.nan
    table, stats = detect_frame(image)
    assert np.isfinite(stats["sky"]) and len(table) > 50
    assert np.isfinite(table[["x", "y", "flux"]].to_numpy()).all()


@pytest.mark.parametrize("backend", ["sep", "photutils"])
def test_empty_frame_gives_empty_table(backend):
    image = np.random.default_rng(1).normal(100.0, 5.0, (128, 128))
    table, stats = detect_frame(image, threshold_sigma=10.0, backend=backend)
    assert len(table) == 0 and stats["n_sources"] == 0
    pd.testing.assert_frame_equal(table, empty_detections())
    assert np.isnan(stats["fwhm_px"])
    assert_allclose(stats["sky"], 100.0, atol=0.5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"backend": "daophot"}, ValueError, "backend"),
        ({"threshold_sigma": 0}, ValueError, "threshold_sigma"),
        ({"min_area": 0}, ValueError, "min_area"),
        ({"mask": np.zeros((3, 3), bool)}, ValueError, "mask shape"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        detect_frame(np.zeros((64, 64)), **kwargs)


def test_bad_image():
    with pytest.raises(ValueError, match="2-D"):
        detect_frame(np.zeros((2, 64, 64)))
    with pytest.raises(TypeError, match="numeric"):
        detect_frame(np.array([["a", "b"], ["c", "d"]]))
