"""Level 2 over a calibrated cube: detection, plate solving and zero points, end to end."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from lcdask.astrometry import wcs_grid_error_px
from lcdask.catalogs import load_catalog
from lcdask.ingest import ingest
from lcdask.io.cube import open_cube
from lcdask.level2 import Level2Config, run_level2
from lcdask.pipeline import calibrate_cube
from lcdask.simulate import SimConfig, load_truth, simulate_night


def _truth_wcs(row) -> WCS:
    """The simulator's true WCS of a frame, from the columns of truth/frames.parquet."""
    header = fits.Header()
    header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
    header["CRVAL1"], header["CRVAL2"] = row.crval1, row.crval2
    header["CRPIX1"], header["CRPIX2"] = row.crpix1, row.crpix2
    for key in ("cd1_1", "cd1_2", "cd2_1", "cd2_2"):
        header[key.upper()] = getattr(row, key)
    return WCS(header)


@pytest.fixture(scope="module")
def solved_night(tmp_path_factory):
    out = tmp_path_factory.mktemp("level2")
    cfg = SimConfig(n_frames=6, size=512, seed=4, pointing_error_arcmin=4.0, drift_px_total=30)
    simulate_night(out / "night", cfg, n_workers=1)
    ingest(out / "night" / "raw", out / "run")
    calibrate_cube(out / "run")
    cube = open_cube(out / "run")
    catalog = load_catalog(out / "night" / "refcat.parquet")
    detections, frames, psf = run_level2(
        cube, out / "run" / "cube.zarr", catalog, config=Level2Config()
    )
    assert psf is not None  # the reference frame's ePSF
    return out, cube, detections, frames


def test_every_frame_solved_to_a_tenth_of_a_pixel(solved_night):
    out, cube, _, frames = solved_night
    truth = load_truth(out / "night").frames
    assert (frames["astrometry_status"] == "ok").all(), frames["astrometry_message"].tolist()
    light_order = np.flatnonzero(cube["frame_type"].values == "light")
    for row in frames.itertuples():
        position = int(np.flatnonzero(light_order == row.frame)[0])
        solved = WCS(fits.Header.fromstring(row.wcs_solved))
        true = _truth_wcs(truth.iloc[position])
        # the goal: 0.1 px RMS against the truth over the field
        assert wcs_grid_error_px(solved, true, (512, 512)) < 0.1


def test_zero_points_and_slopes_against_truth(solved_night):
    out, _, detections, frames = solved_night
    truth = load_truth(out / "night").frames
    # Fluxes are the Level 3 aperture-corrected 1.5 FWHM apertures (total fluxes), so the
    # calibration should hold to the 0.01 mag (measured: -0.005 to -0.003 mag).
    # Compare the calibrations where the stars are (a 15th-magnitude star), not at instrumental
    # magnitude 0 where the zero point is defined and a slope error is multiplied by ~7 mag.
    m_inst = (15.0 - truth["zero_point"].to_numpy()) / truth["slope"].to_numpy()
    fitted = frames["zero_point"].to_numpy() + frames["zp_slope"].to_numpy() * m_inst
    dm = fitted - 15.0
    assert np.all(np.abs(dm) < 0.01), dm
    assert np.all(np.abs(frames["zp_slope"] - truth["slope"].to_numpy()) < 0.02)
    assert (frames["zp_n_stars"] >= 10).all()  # 512 px frames: ~17 stars with mag errors < 0.05
    assert {"ra", "dec", "mag", "flux_jy", "frame"} <= set(detections.columns)
    assert detections["mag"].notna().mean() > 0.9
