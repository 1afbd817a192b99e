"""The mid-transit time with the shape fixed, against injected transits (lcdask.transit)."""

from __future__ import annotations

import numpy as np
import pytest

from lcdask.transit import TransitShape, fit_transit_time, transit_model

# XO-1 b's shape (../shared/data/transit_xo1b_arcsat/PROVENANCE.md), z-band limb darkening
XO1B = TransitShape(period_d=3.941505, rp_rs=0.1326, a_rs=11.55, inc_deg=88.8, u=(0.25, 0.30))
PREDICTED = 2460828.7382


def test_model_depth_and_symmetry():
    t = PREDICTED + np.linspace(-0.1, 0.1, 401)
    flux = transit_model(t, PREDICTED, XO1B)
    # no limb darkening would give rp^2 = 1.76%; limb darkening deepens the centre
    assert 0.0176 < 1 - flux.min() < 0.0176 * 1.3
    assert np.argmin(flux) == 200 and np.allclose(flux, flux[::-1], atol=1e-9)
    assert flux[0] == 1.0 and flux[-1] == 1.0  # T14 = 2.89 h: +-0.1 d is outside


def test_mid_time_errors_hold_on_partial_transits():
    """100 nights like XO-1's (no egress, no baseline): pulls within 1 and 3 sigma."""
    pulls = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        t = np.linspace(2460828.6736, 2460828.757, 80)  # the series of the real night
        true = PREDICTED + rng.uniform(-0.005, 0.005)
        slope = rng.normal(0, 0.01)
        sigma = rng.uniform(0.002, 0.006)
        flux = transit_model(t, true, XO1B) * (1 + slope * (t - t.mean()))
        flux = flux + rng.normal(0, sigma, t.size)
        fit = fit_transit_time(t, flux, np.full(t.size, sigma), t0_guess=PREDICTED, shape=XO1B)
        pulls.append((fit.t0 - true) / fit.t0_err)
    inside = np.abs(np.array(pulls))
    # Gaussian: 68% and 99.7%; seeded: 100 nights put 1 sigma of binomial noise at 4.7% and 0.5%
    assert (inside < 1).mean() >= 0.60
    assert (inside < 3).mean() >= 0.97


def test_outliers_are_clipped():
    rng = np.random.default_rng(5)
    t = np.linspace(2460828.6736, 2460828.757, 80)
    flux = transit_model(t, PREDICTED, XO1B) + rng.normal(0, 0.003, t.size)
    flux[[10, 40, 41]] *= [0.7, 0.85, 0.6]  # five points 12-65% low, as a real night had
    fit = fit_transit_time(t, flux, np.full(t.size, 0.003), t0_guess=PREDICTED, shape=XO1B)
    assert fit.n_clipped == 3 and fit.n_points == 77
    assert abs(fit.t0 - PREDICTED) < 3 * fit.t0_err


def test_too_few_points():
    with pytest.raises(ValueError, match="finite points"):
        fit_transit_time([1.0, 2.0], [1.0, 1.0], [0.1, 0.1], t0_guess=1.5, shape=XO1B)
