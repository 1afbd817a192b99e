"""The target's aperture and comparison stars chosen on the data (issue 17), against truth.

Three kinds of night: synthetic light-curve cubes whose noise per aperture is known (the best
aperture is the widest, the run's default the middle one; the brightest comparison star follows
the clouds), the small-telescope preset's 30-frame night of `conftest.smalltel_run`, and a
90-frame night of the same preset (a module fixture: the 30 frames are too few for any choice to
beat the run-wide curve on the frames it was not chosen on).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from lcdask.lightcurves import (
    LightCurveFlag,
    apply_ensemble,
    build_lightcurves,
    ensemble_photometry,
)
from lcdask.simulate import load_truth
from lcdask.target_photometry import (
    apply_target_photometry,
    choose_target_photometry,
    comparison_candidates,
    detrended_scatter,
    dip_shape,
    find_dip,
    flag_outliers,
)

APERTURES = ((1.0, "fwhm"), (1.5, "fwhm"), (3.0, "fwhm"))
START, END = 0.12, 0.20  # the transit, days after the first frame


def _night(seed: int, *, n_frames: int = 120, low: dict[int, float] | None = None):
    """A synthetic cube: the target (source 0, a 1% transit) and 10 comparison stars.

    Each point's noise is a part common to the apertures (photon noise, 0.2% at the target's
    flux, larger under the clouds) and a part of each aperture (0.4%, 0.3%, 0.12% at the
    target's flux: the widest aperture is the best, the run's ``flux`` is the middle one).
    Source 1, the brightest, rises by 3.5% against the others when the transparency halves (a
    cloud episode at 0.075-0.11 d). ``low`` lowers the target's flux in some frames (frame ->
    fraction). Returns the Dataset after the run-wide ensemble, and the truth.
    """
    rng = np.random.default_rng(seed)
    t = 60000.0 + np.linspace(0, 0.25, n_frames)
    transparency = np.ones(n_frames)
    episode = (t - t[0] > 0.075) & (t - t[0] < 0.11)
    transparency[episode] = 0.5 + 0.1 * rng.standard_normal(episode.sum())
    transparency *= np.exp(0.01 * rng.standard_normal(n_frames))
    transit = 1 - 0.01 * dip_shape(t, t[0] + START, t[0] + END)
    ratio = np.concatenate([[1.0, 3.0], rng.uniform(0.6, 2.5, 9)])
    sig_common = 0.002 / np.sqrt(ratio[:, None, None] * transparency[None, :, None])
    sig_ap = np.array([0.004, 0.003, 0.0012])[None, None, :] / np.sqrt(ratio)[:, None, None]
    noise = sig_common * rng.standard_normal((ratio.size, n_frames, 1))
    noise = noise + sig_ap * rng.standard_normal((ratio.size, n_frames, 3))
    base = 1e6 * ratio[:, None] * transparency[None, :]
    base[0] *= transit
    base[1] *= transparency**-0.05
    for frame, fraction in (low or {}).items():
        base[0, frame] *= 1 - fraction
    flux = base[:, :, None] * (1 + noise)
    err = base[:, :, None] * np.sqrt(sig_common**2 + sig_ap**2)
    n_src = ratio.size
    det = pd.DataFrame(
        {
            "frame": np.tile(np.arange(n_frames), n_src),
            "flags": 0,
            "x": np.repeat(100.0 + 10 * np.arange(n_src), n_frames),
            "y": 100.0,
            **{f"flux_ap{k + 1}": flux[:, :, k].ravel() for k in range(3)},
            **{f"flux_ap{k + 1}_err": err[:, :, k].ravel() for k in range(3)},
        }
    )
    det["flux"], det["flux_err"] = det["flux_ap2"], det["flux_ap2_err"]
    frames = pd.DataFrame({"frame": np.arange(n_frames), "time_mjd": t, "fwhm_px": 3.0})
    sid = np.repeat(np.arange(n_src), n_frames)
    ds = build_lightcurves(det, sid, frames, apertures=APERTURES)
    ds = apply_ensemble(ds, ensemble_photometry(ds, exclude_ids=[0]))
    # the noise the target's best curve should reach: the widest aperture's, the ensemble's
    target_noise = np.hypot(sig_common[0, :, 0], sig_ap[0, 0, 2])
    return ds, {"transit": transit, "oot": transit == 1, "noise": target_noise}


def _oot_scatter(rel: np.ndarray, truth: dict) -> float:
    """Standard deviation of the curve over its truth, out of transit."""
    y = (rel / truth["transit"])[truth["oot"]]
    y = y[np.isfinite(y)]
    return float(np.std(y / np.mean(y)))


def _choose(ds: xr.Dataset, **options):
    candidates = comparison_candidates(ds, 0)
    return choose_target_photometry(ds, 0, candidates=candidates, **options)


# -- the score ----------------------------------------------------------------------------


def test_detrended_scatter_is_the_white_noise_about_a_transit_and_a_trend():
    rng = np.random.default_rng(3)
    t = 60000.0 + np.linspace(0, 0.25, 200)
    dip = dip_shape(t, t[0] + START, t[0] + END)
    y = np.log(1 - 0.01 * dip) + 0.02 * ((t - t[0]) / 0.25) ** 2 + 0.003 * rng.standard_normal(200)
    found = find_dip(y, np.ones(200, bool), t)
    cadence = 0.25 / 199
    # the dip's edges to two frames (a trapezoid fitted to 0.3% noise on a 1% dip)
    assert found is not None
    assert abs(found[0] - (t[0] + START)) < 2 * cadence
    assert abs(found[1] - (t[0] + END)) < 2 * cadence
    scatter = detrended_scatter(y[None], np.ones(200, bool), t, dip=found)[0]
    # 0.3% white noise: 200 points give it to 5% (1 sigma); 12% is 2.4 sigma
    assert scatter == pytest.approx(0.003, rel=0.12)
    # without the dip the transit is left in the residuals
    assert detrended_scatter(y[None], np.ones(200, bool), t)[0] > 1.3 * scatter
    # no dip where there is none
    assert find_dip(0.003 * rng.standard_normal(200), np.ones(200, bool), t) is None


# -- synthetic nights ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_best_aperture_and_a_lower_scatter_than_the_run_wide_curve(seed):
    ds, truth = _night(seed)
    result = _choose(ds)
    assert result.adopted, result.why
    assert result.aperture == 3  # the aperture of the least noise (0.12% against 0.3%)
    chosen = _oot_scatter(result.rel_flux, truth)
    default = _oot_scatter(ds["rel_flux"].to_numpy()[0], truth)
    noise = float(np.median(truth["noise"][truth["oot"]]))
    # measured: chosen 0.242-0.257%, run-wide 0.356-0.422%, true noise 0.233%
    assert chosen < 0.8 * default, (chosen, default)
    assert chosen < 1.3 * noise, (chosen, noise)
    # the errors given are the noise: the median error within 15% of the true noise
    model = float(np.median(result.rel_flux_err[truth["oot"]]))
    assert model == pytest.approx(noise, rel=0.15)
    # the star that follows the clouds weighs little: dropped, or less than 5%
    weight = dict(zip(result.comparison_ids.tolist(), result.weights.tolist(), strict=True))
    assert weight.get(1, 0.0) < 0.05, weight


def test_within_1p1_of_the_noise_over_nights():
    ratios = []
    for seed in range(4):
        ds, truth = _night(seed)
        result = _choose(ds)
        ratios.append(
            _oot_scatter(result.rel_flux, truth) / np.median(truth["noise"][truth["oot"]])
        )
    # measured 1.04-1.10 per night (mean 1.08): each night's 102 out-of-transit points give
    # the scatter to 7%, their mean to 4%
    assert np.mean(ratios) < 1.1, ratios


def test_the_choice_never_sees_the_points_it_is_judged_on():
    """The choice made on the even frames is the same whatever the target does on the odd
    frames: those are the points it is judged on."""
    ds, _ = _night(0)
    first = _choose(ds).as_record()["cv"]
    noisy = ds.copy(deep=True)
    rng = np.random.default_rng(9)
    odd = np.flatnonzero(np.isfinite(ds["flux"].to_numpy()[0]))[1::2]
    for name in ("flux", "flux_ap"):
        values = noisy[name].to_numpy()
        scale = 1 + 0.03 * rng.standard_normal(odd.size)
        values[0, odd] *= scale if values.ndim == 2 else scale[:, None]
    noisy = apply_ensemble(noisy, ensemble_photometry(noisy, exclude_ids=[0]))
    second = _choose(noisy).as_record()["cv"]
    even_first, even_second = first["folds"][0], second["folds"][0]
    assert even_first["chosen_on"] == even_second["chosen_on"] == "even frames"
    assert even_second["aperture"] == even_first["aperture"]
    assert even_second["comparison_ids"] == even_first["comparison_ids"]
    assert even_second["scatter_chosen_on_pct"] == pytest.approx(
        even_first["scatter_chosen_on_pct"], rel=1e-6
    )
    # and the 3% noise shows where it is judged
    assert even_second["judged_chosen_pct"] > 2 * even_first["judged_chosen_pct"]


def test_cross_validation_is_stable_and_recorded():
    ds, _ = _night(1)
    record = _choose(ds).as_record()
    folds = record["cv"]["folds"]
    assert [f["chosen_on"] for f in folds] == ["even frames", "odd frames"]
    assert {f["aperture"] for f in folds} == {3}  # both halves choose the best aperture
    for fold in folds:  # each half's choice beats the run-wide curve where it is judged
        assert fold["judged_chosen_pct"] < fold["judged_default_pct"]
    assert record["cv"]["gain_sigma"] > 2
    assert json.loads(json.dumps(record)) == record  # JSON-ready for run.json


def test_the_run_wide_curve_is_kept_when_no_choice_beats_it():
    ds, truth = _night(2)
    rng = np.random.default_rng(4)
    excellent = truth["transit"] * (1 + 0.0005 * rng.standard_normal(truth["transit"].size))
    result = _choose(ds, default_rel_flux=excellent)
    assert not result.adopted
    assert "kept" in result.why and "%" in result.why
    np.testing.assert_array_equal(result.rel_flux, excellent)
    out = apply_target_photometry(ds.assign(rel_flux=ds["rel_flux"].copy()), result)
    assert out.attrs["target_adopted"] == 0
    assert float(out["target_comparison_weight"].sum()) == 0.0


def test_outliers_are_flagged_and_kept():
    low = {10: 0.12, 40: 0.30, 41: 0.65, 70: 0.20, 119: 0.40}  # as on the held-out night
    ds, _ = _night(5, low=low)
    ds["flags"].values[0, 55] |= int(LightCurveFlag.BLENDED)  # a bit the run set
    result = _choose(ds)
    assert result.adopted
    assert np.flatnonzero(result.outlier).tolist() == sorted(low)
    out = apply_target_photometry(ds, result)
    flags = out["flags"].to_numpy()[0]
    assert np.flatnonzero(flags & int(LightCurveFlag.OUTLIER)).tolist() == sorted(low)
    assert flags[55] & int(LightCurveFlag.BLENDED)  # the run's bits stay
    rel = out["rel_flux"].to_numpy()[0]
    assert np.isfinite(rel[sorted(low)]).all()  # kept in the products
    for frame, fraction in low.items():  # at their true depth (0.3% noise, 1% transit)
        assert rel[frame] == pytest.approx((1 - fraction), abs=0.02)
    # the other sources are untouched
    assert not (out["flags"].to_numpy()[1:] & int(LightCurveFlag.OUTLIER)).any()


def test_flag_outliers_leaves_a_transit_alone():
    rng = np.random.default_rng(1)
    t = np.linspace(0, 0.25, 30)  # a coarse cadence: the transit's ingress in one frame
    rel = 1 - 0.014 * dip_shape(t, 0.1, 0.175) + 0.004 * rng.standard_normal(30)
    assert not flag_outliers(rel, np.full(30, 0.004), t).any()
    rel[7] *= 0.85
    assert np.flatnonzero(flag_outliers(rel, np.full(30, 0.004), t)).tolist() == [7]


def test_candidates_leave_out_what_they_must():
    ds, _ = _night(0)
    flags = ds["flags"].to_numpy()
    flags[2, 5] |= int(LightCurveFlag.SATURATED)
    flags[3, :80] |= int(LightCurveFlag.BLENDED)
    flags[4, :40] = int(LightCurveFlag.MISSING)
    ds["flags"].values[...] = flags
    ds["is_artefact"] = ("source", np.isin(ds["source_id"].to_numpy(), [5]))
    table = comparison_candidates(ds, 0, exclude_ids=[6], min_candidates=2)
    assert 0 not in table["source_id"].to_numpy()
    assert not set(table["source_id"]) & {2, 3, 4, 5, 6}
    counts = table.attrs["counts"]
    assert counts["saturated"] == 1 and counts["artefact"] == 1
    assert counts["excluded (mover or variable)"] == 1
    assert counts["blended in more than 0.5 of its frames"] == 1
    assert counts["coverage below 0.75"] == 1
    ratios = table["flux_ratio"].to_numpy()
    assert ((ratios >= 0.25) & (ratios <= 4)).all()
    # nearest the target's brightness first
    assert np.all(np.diff(np.abs(np.log(ratios))) >= 0)
    with pytest.raises(ValueError, match="target_id"):
        comparison_candidates(ds, 999)


def test_the_products_say_what_was_chosen():
    ds, _ = _night(3)
    before = ds["rel_flux"].to_numpy().copy()
    result = _choose(ds)
    out = apply_target_photometry(ds, result)
    np.testing.assert_array_equal(out["rel_flux"].to_numpy()[0], result.rel_flux)
    np.testing.assert_array_equal(out["target_rel_flux_default"].to_numpy(), before[0])
    np.testing.assert_array_equal(out["rel_flux"].to_numpy()[1:], before[1:])
    weight = out["target_comparison_weight"].to_series()
    assert weight.sum() == pytest.approx(1.0)
    assert sorted(weight[weight > 0].index) == sorted(result.comparison_ids.tolist())
    assert out.attrs["target_aperture"] == result.aperture == 3
    assert out.attrs["target_aperture_radius"] == 3.0
    assert out.attrs["target_aperture_unit"] == "fwhm"
    assert out.attrs["target_comparison_ids"] == result.comparison_ids.tolist()


# -- the small-telescope preset -----------------------------------------------------------


def _target_curves(out: Path, sim: Path) -> dict:
    ds = xr.open_zarr(out / "lightcurves.zarr").load()
    sources = pd.read_parquet(out / "sources.parquet")
    sid = int(sources.loc[sources["is_target"], "source_id"].iloc[0])
    index = int(np.flatnonzero(ds["source_id"].to_numpy() == sid)[0])
    stars = load_truth(sim).stars
    truth = stars[stars["is_target"]].iloc[0]
    t = ds["time_mjd"].to_numpy()
    phase = ((t - truth["t0_mjd"]) / truth["period_d"] + 0.5) % 1 - 0.5
    oot = np.abs(phase * truth["period_d"]) > 0.6 * truth["duration_d"]

    def scatter(rel: np.ndarray) -> float:
        """Out of transit, about a quadratic in time (the run's slow drifts), per point."""
        ok = oot & np.isfinite(rel)
        y = rel[ok] / np.median(rel[ok])
        resid = y - np.polyval(np.polyfit(t[ok], y, 2), t[ok])
        return float(np.sqrt(np.sum(resid**2) / (ok.sum() - 3)))

    chosen = ds["rel_flux"].to_numpy()[index]
    return {
        "ds": ds,
        "index": index,
        "chosen": scatter(chosen),
        "default": scatter(ds["target_rel_flux_default"].to_numpy()),
        "noise": float(np.median(ds["rel_flux_err"].to_numpy()[index][oot])),
        "noise_default": float(np.median(ds["target_rel_flux_default_err"].to_numpy()[oot])),
    }


def test_every_aperture_in_the_light_curves(smalltel_run):
    base, _ = smalltel_run
    ds = xr.open_zarr(base / "run" / "lightcurves.zarr")
    assert ds["flux_ap"].dims == ("source", "frame", "aperture")
    assert ds["flux_ap"].dtype == np.float32 and ds["flux_ap_err"].dtype == np.float32
    assert ds["aperture"].to_numpy().tolist() == [1, 2, 3, 4, 5, 6]
    assert ds["aperture_radius"].to_numpy().tolist() == [1.0, 1.5, 2.0, 3.0, 5.0, 10.0]
    assert ds["aperture_unit"].to_numpy().tolist() == ["fwhm"] * 4 + ["px"] * 2
    radius = ds["aperture_radius_px"].to_numpy()
    fwhm = ds["fwhm_px"].to_numpy()
    np.testing.assert_allclose(radius[:, 1], 1.5 * fwhm, rtol=1e-6)  # float32
    np.testing.assert_allclose(radius[:, 4], 5.0)
    flux = ds["flux"].to_numpy()
    ap2 = ds["flux_ap"].to_numpy()[:, :, 1].astype(float)
    forced = (ds["flags"].to_numpy() & int(LightCurveFlag.FORCED)) != 0
    detected = np.isfinite(flux) & ~forced
    assert forced.sum() > 100  # the forced points (642 on this night) have every aperture
    # the run's flux is the 1.5 FWHM aperture's (to float32's precision), forced points too
    for points in (detected, forced):
        np.testing.assert_allclose(ap2[points], flux[points], rtol=1e-6)
    every = np.isfinite(ds["flux_ap"].to_numpy()[forced]).all(axis=1)
    assert every.mean() > 0.95, every.mean()


def test_small_telescope_night_keeps_or_beats_the_run_wide_curve(smalltel_run):
    base, record = smalltel_run
    chosen = record["stages"]["lightcurves"]["target_photometry"]
    curves = _target_curves(base / "run", base / "sim")
    print(json.dumps({k: v for k, v in chosen.items() if k != "cv"}), chosen["cv"])
    print({k: v for k, v in curves.items() if k not in ("ds", "index")})
    # 30 frames, 15 in each half: no choice beat the run-wide curve on the frames it was not
    # chosen on (judged 0.78% against 0.62%), and the run-wide curve is kept
    if not chosen["adopted"]:
        assert "kept" in chosen["why"]
        assert curves["chosen"] == curves["default"]
    assert curves["chosen"] <= curves["default"] * 1.0001
    # out of transit 0.378% per 12-minute point against a noise model of 0.362%: the stars'
    # flat-field errors as they drift (the star flat leaves 0.5% rms) are not in the model
    assert curves["chosen"] < 1.15 * curves["noise"], curves


@pytest.fixture(scope="module")
def night90(tmp_path_factory, session_client) -> tuple[Path, dict]:
    """The small-telescope preset's night (seed 1) in 90 frames of 512 px, run as the 30."""
    import shutil

    from lcdask.config import load_config
    from lcdask.io.anindex import find_index_files
    from lcdask.run import run
    from lcdask.simulate import simulate_night, small_telescope_config

    if shutil.which("solve-field") is None or not find_index_files():
        pytest.skip("solve-field or its index files missing (scripts/install-system-deps.sh)")
    base = tmp_path_factory.mktemp("smalltel90")
    simulate_night(base / "sim", small_telescope_config(n_frames=90, size=512, seed=1))
    record = run(
        base / "sim" / "raw",
        base / "run",
        config=load_config(catalog={"offline": True}),
        target="19:07:14.035 +49:18:59.07",
        client=session_client,
    )
    return base, record


def test_ninety_frames_the_chosen_curve_beats_the_run_wide_one(night90):
    base, record = night90
    chosen = record["stages"]["lightcurves"]["target_photometry"]
    curves = _target_curves(base / "run", base / "sim")
    print(json.dumps({k: v for k, v in chosen.items() if k != "cv"}), chosen["cv"])
    print({k: v for k, v in curves.items() if k not in ("ds", "index")})
    assert chosen["adopted"], chosen["why"]
    # both halves chose the same aperture: 2 FWHM (the run's is 1.5)
    assert {f["aperture"] for f in chosen["cv"]["folds"]} == {chosen["aperture"]} == {3}
    assert chosen["cv"]["judged_chosen_pct"] < chosen["cv"]["judged_default_pct"]
    # measured out of transit (58 points): 0.449% against the run-wide 0.480%
    assert curves["chosen"] < 0.97 * curves["default"], curves
    # and 1.14 times its noise model (0.394%); the run-wide curve 1.33 times its own (0.361%):
    # the drift over the imperfect flat is not in either model
    assert curves["chosen"] < 1.2 * curves["noise"], curves
    ds = curves["ds"]
    assert ds.attrs["target_aperture"] == 3
    weight = ds["target_comparison_weight"].to_numpy()
    assert weight.sum() == pytest.approx(1.0)
    assert (weight > 0).sum() == chosen["n_comparison"]
