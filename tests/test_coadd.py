"""The co-add against truth: no trace of cosmic rays or fast movers at their positions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from astropy.stats import mad_std
from astropy.wcs import WCS, Sip

from lcdask.coadd import (
    coadd,
    coadd_tile,
    combine_stack,
    optimal_wcs,
    tile_size_for,
    tile_slices,
)
from lcdask.simulate import SimConfig, load_truth, simulate_night, truth_light_image
from lcdask.simulate.detector import cosmic_rays
from lcdask.simulate.render import mover_radec, sky_image, truth_image
from lcdask.sky import subtract_sky

SIM = SimConfig(
    n_frames=9,
    size=384,
    seed=5,
    n_darks=0,
    n_darkflats=0,
    n_flats=0,
    n_bias=0,
    n_fast_movers=3,
    n_slow_movers=1,
)


def frame_wcs(row) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [row["crval1"], row["crval2"]]
    w.wcs.crpix = [row["crpix1"], row["crpix2"]]
    w.wcs.cd = [[row["cd1_1"], row["cd1_2"]], [row["cd2_1"], row["cd2_2"]]]
    return w


@pytest.fixture(scope="module")
def stacked(tmp_path_factory):
    """Co-add of 9 noisy frames with cosmic rays (40x the default rate) and movers, and the
    co-add of the same frames' noiseless static sky (stars only) on the same grid."""
    out = tmp_path_factory.getbasetemp() / "level3_coadd_night"
    if not (out / "truth" / "cosmic_rays.parquet").exists():
        simulate_night(out, SIM, n_workers=1)
    tr = load_truth(out)
    cfg = tr.config
    static = tr.stars[tr.stars["kind"] != "moving"]
    frames, refs, wcss, hits = [], [], [], []
    for i in range(cfg.n_frames):
        row = tr.frames.iloc[i]
        truth = truth_light_image(out, i)
        rng = np.random.default_rng(300 + i)
        cx, cy, ce = cosmic_rays(dataclasses.replace(cfg, cosmic_rate_cm2_s=2.0), 60.0, rng)
        e = rng.poisson(truth * cfg.gain_e_adu).astype(np.float64)
        e[cy, cx] += ce
        e = np.minimum(e, cfg.full_well_e) + rng.normal(0.0, cfg.read_noise_e, truth.shape)
        sub, _ = subtract_sky(e / cfg.gain_e_adu)
        frames.append(sub)
        refs.append(
            truth_image(row, static, tr.movers.iloc[:0], cfg.size) - sky_image(row, cfg.size)
        )
        wcss.append(frame_wcs(row))
        hits.append((cx, cy, ce))
    image, n_used, wcs = coadd(frames, wcss, tile_size=128)
    ref, _, _ = coadd(refs, wcss, target=(wcs, image.shape), tile_size=128)
    return tr, frames, wcss, hits, image, n_used, wcs, ref


def _noise(image, ref):
    resid = image - ref
    return resid, mad_std(resid[np.isfinite(resid)])


def _local_sigma(tr, ref, sigma_bg, yy, xx):
    """Noise of the median co-add at pixels: background plus the stars' photon noise."""
    n = tr.config.n_frames
    star = np.clip(ref[yy, xx], 0.0, None) / tr.config.gain_e_adu * 1.2533**2 / n
    return np.sqrt(sigma_bg**2 + star)


def test_no_trace_of_cosmic_rays(stacked):
    tr, frames, wcss, hits, image, n_used, wcs, ref = stacked
    resid, sigma = _noise(image, ref)
    n_checked = 0
    for i, (cx, cy, ce) in enumerate(hits):
        strong = ce > 1000.0  # > 670 ADU, i.e. > 25 sigma of one frame's sky
        ra, dec = wcss[i].pixel_to_world_values(cx[strong], cy[strong])
        px, py = wcs.world_to_pixel_values(ra, dec)
        xx, yy = np.rint(px).astype(int), np.rint(py).astype(int)
        # not on saturated stars (the noiseless reference knows no full well)
        # and where the median has layers to reject from (the drift leaves thin edges)
        ok = (ref[yy, xx] < 2e4) & (n_used[yy, xx] >= 5)
        xx, yy = xx[ok], yy[ok]
        local = _local_sigma(tr, ref, sigma, yy, xx)
        assert np.nanmax(np.abs(resid[yy, xx]) / local) < 5.0
        assert np.min(frames[i][cy[strong], cx[strong]]) > 300.0  # they were there
        n_checked += strong.sum()
    assert n_checked > 150


def test_no_trace_of_fast_movers(stacked):
    tr, _frames, _wcss, _, image, _, wcs, ref = stacked
    resid, sigma = _noise(image, ref)
    fast = tr.movers[tr.movers["speed"] == "fast"]
    assert len(fast) >= 2
    for k in range(len(fast)):
        worst = 0.0
        for i in range(tr.config.n_frames):
            ra, dec = mover_radec(fast.iloc[[k]], float(tr.frames["time_mjd"].iloc[i]))
            px, py = wcs.world_to_pixel_values(ra, dec)
            x0, y0 = round(px[0]), round(py[0])
            box = np.s_[y0 - 2 : y0 + 3, x0 - 2 : x0 + 3]
            yy, xx = np.mgrid[box]
            worst = max(worst, np.nanmax(np.abs(resid[box]) / _local_sigma(tr, ref, sigma, yy, xx)))
        assert worst < 5.0, (fast.iloc[k]["star_id"], worst)


def test_coadd_deeper_and_stars_kept(stacked):
    tr, frames, _, _, image, n_used, _, ref = stacked
    _, sigma = _noise(image, ref)
    single = mad_std(frames[0])
    # a median of 9 frames: noise 1.25 / 3 of one frame's
    assert sigma < 0.55 * single
    assert n_used.max() == tr.config.n_frames
    good = np.isfinite(image) & (ref > 100) & (ref < 2e4) & (n_used >= 5)  # unsaturated stars
    # the median of 9 noisy layers vs of 9 noiseless ones: equal to the noise of the sum (~1%)
    np.testing.assert_allclose(np.nansum(image[good]), np.nansum(ref[good]), rtol=0.02)


def test_tiles_match_whole_and_helpers(stacked):
    _, frames, wcss, _, image, _, wcs, _ = stacked
    tile = tile_slices(image.shape, 100)[5]
    part, _ = coadd_tile(frames, wcss, [f.shape for f in frames], wcs, tile)
    np.testing.assert_allclose(part, image[tile], rtol=1e-5, atol=1e-3, equal_nan=True)
    # readers: only a window of each frame is read
    calls = []

    def reader(k):
        def read(rows, cols):
            calls.append((rows.stop - rows.start) * (cols.stop - cols.start))
            return frames[k][rows, cols]

        return read

    part2, _ = coadd_tile(
        [reader(k) for k in range(len(frames))], wcss, [f.shape for f in frames], wcs, tile
    )
    np.testing.assert_allclose(part2, part, equal_nan=True)
    assert max(calls) < frames[0].size / 4
    _w, shape = optimal_wcs(wcss, [f.shape for f in frames])
    assert shape == image.shape
    assert tile_size_for(5000, 512e6) < tile_size_for(10, 512e6)


def test_combine_stack_rejects_outliers():
    stack = np.ones((7, 4, 4), np.float32)
    stack[2, 1, 1] = 1000.0
    stack[3, :, 0] = np.nan
    for method in ("median", "sigma_clip"):
        image, n = combine_stack(stack, method=method)
        assert np.allclose(image, 1.0)
    assert n[0, 0] == 6
    with pytest.raises(ValueError, match="method"):
        combine_stack(stack, method="max")


def test_tile_reprojection_equals_reproject_interp():
    """The grid-interpolated pixel mapping gives reproject's own reprojection (rotated, shifted,
    distorted frame onto a north-up tile)."""
    from reproject import reproject_interp

    scale = 1.1 / 3600
    angle = np.deg2rad(7.0)
    frame_wcs = WCS(naxis=2)
    frame_wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    frame_wcs.wcs.crval, frame_wcs.wcs.crpix = [150.0, 30.0], [150.0, 140.0]
    frame_wcs.wcs.cd = scale * np.array(
        [[-np.cos(angle), np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    )
    a, b = np.zeros((3, 3)), np.zeros((3, 3))
    a[2, 0], b[0, 2] = 2e-5, -1.5e-5  # 0.4 px at the corners
    frame_wcs.sip = Sip(a, b, None, None, frame_wcs.wcs.crpix)
    target = WCS(naxis=2)
    target.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    target.wcs.crval, target.wcs.crpix = [150.004, 30.002], [170.0, 160.0]
    target.wcs.cd = np.diag([-scale, scale])
    rng = np.random.default_rng(4)
    frame = rng.normal(100.0, 10.0, (300, 280))
    tile = (slice(20, 320), slice(10, 333))
    mine, n_used = coadd_tile([frame], [frame_wcs], [frame.shape], target, tile, method="mean")
    theirs, _ = reproject_interp(
        (frame, frame_wcs), target[tile], shape_out=mine.shape, order="bicubic"
    )
    covered = np.isfinite(theirs)
    assert covered.mean() > 0.5 and np.array_equal(np.isfinite(mine), covered)
    assert np.array_equal(n_used, covered.astype(np.int16))
    np.testing.assert_allclose(mine[covered], theirs[covered], rtol=0, atol=1e-3)  # of sigma 10
    with pytest.raises(ValueError, match="order"):
        coadd_tile([frame], [frame_wcs], [frame.shape], target, tile, order="lanczos")
