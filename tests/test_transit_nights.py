"""An injected transit through the whole pipeline and the transit fit, against its truth.

One simulated night of benchmarks/validate_transit_nights.py (the small-telescope preset: no
calibration frames, so the flat's vignetting, dust and 1% pixel response stay in the frames as
the stars drift and jitter; extinction and thin clouds; seeing wandering by +-20%; solved blind)
with a limb-darkened transit. The benchmark runs 50 such nights
(benchmarks/results/transit_nights.json); the must-show's fractions are measured there.
"""

from __future__ import annotations

import shutil

import pytest

SEED = 6  # a full transit, (Rp/Rs)^2 = 2.45%, T14 = 2.0 h, b = 0.13
# the benchmark's own night 6 (60 frames of 512 px over 4.5 h): shorter or smaller nights were
# tried and are worse tests: on 384 px frames the blind solve failed on some seeds, and the
# 48-frame version of this night met a dust donut just after egress (a 3-5% dip of its own)
FRAMES, SIZE, HOURS = 60, 512, 4.5


@pytest.fixture(scope="module")
def transit_night(tmp_path_factory, session_client):
    """The night simulated, run (`lcdask.run.run` with the target's RA/Dec, offline) and fitted
    (`lcdask.transit.fit_run_transit_full`, as ``lcdask transit RUN``)."""
    from lcdask.io.anindex import find_index_files

    if shutil.which("solve-field") is None or not find_index_files():
        pytest.skip("solve-field or its index files missing (scripts/install-system-deps.sh)")
    from validate_transit_nights import do_night, night_plan

    plan = night_plan(SEED, n_frames=FRAMES, size=SIZE, night_hours=HOURS)
    row = do_night(plan, tmp_path_factory.mktemp("transit_nights"), session_client, refit=False)
    print({k: v for k, v in row.items() if k not in ("plan", "truth", "target_photometry")})
    return plan, row


def test_the_night_is_what_the_plan_says(transit_night):
    plan, row = transit_night
    assert row["ok"], row["error"]
    truth = row["truth"]
    assert truth["shape"] == "limb-darkened" and truth["coverage"]["kind"] == "full"
    assert truth["depth"] == pytest.approx(plan["depth"])
    assert 24 * truth["t14_d"] == pytest.approx(plan["t14_h_planned"], rel=0.02)
    # the fit saw it whole (4 points in ingress, 4 in egress): a/Rs and b free with t0, Rp/Rs
    assert set(row["free"]) == {"t0", "rp_rs", "a_rs", "b"}


def test_mid_time_and_depth_within_three_sigma_of_the_truth(transit_night):
    _, row = transit_night
    # 3 sigma: the must-show asks 97% of nights within 3 sigma; one night is a draw from that
    assert abs(row["t0_z"]) < 3, row["t0_diff_min"]
    assert abs(row["depth_z"]) < 3, (row["depth_fit"], row["depth_true"])
    # and the errors are useful: minutes on a 2.4% transit seen whole at a 4.5-min cadence
    # (2.1 min measured)
    assert row["t0_sigma_min"] < 5


def test_residual_scatter_against_the_noise_model(transit_night):
    _, row = transit_night
    # the light curve's errors carry the white noise beyond the photon noise (the flat's pixel
    # response under the drift: target_photometry step 7); ~30 used points put the standard
    # error of an rms at 1/sqrt(2 n) ~ 13%, so 0.75-1.3 is 2 standard errors either way of 1
    assert 0.75 < row["scatter_ratio"] < 1.3, (row["rms"], row["noise_model_median"])
    tp = row["target_photometry"]
    assert tp["target_source_id"] > 0
