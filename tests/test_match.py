"""Matching detections into sources: exact DBSCAN, tiles, and results against the truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lcdask.match import (
    dbscan,
    dbscan_partitioned,
    match_detections,
    match_eps,
    match_min_samples,
    resolve_duplicates,
    same_clusters,
    tangent_plane,
    untangent_plane,
)
from lcdask.simulate import SimConfig
from lcdask.testing import frame_table, make_detections, simulate_truth


@pytest.fixture(scope="module")
def blobs() -> np.ndarray:
    """Dense star-like clouds, a chained slow mover, a sparse fast one and uniform noise."""
    rng = np.random.default_rng(1)
    n_src, n_frm = 150, 80
    centres = rng.uniform(0, 400, (n_src, 2))
    sig = rng.uniform(0.1, 0.5, n_src)
    pts = (centres[:, None, :] + rng.normal(size=(n_src, n_frm, 2)) * sig[:, None, None]).reshape(
        -1, 2
    )
    t = np.linspace(0, 1, n_frm)[:, None]
    slow = np.array([50.0, 50.0]) + t * np.array([20.0, 4.0]) + rng.normal(size=(n_frm, 2)) * 0.2
    fast = np.array([200.0, 20.0]) + t * np.array([150.0, 90.0])
    noise = rng.uniform(0, 400, (1500, 2))
    return np.vstack([pts, slow, fast, noise])


@pytest.fixture(scope="module")
def night():
    """150 frames of simulated detections with their truth (no images)."""
    truth = simulate_truth(SimConfig(n_frames=150, seed=3))
    det = make_detections(truth, seed=1)
    frames = frame_table(truth, det)
    return truth, det, frames, match_detections(det, frames)


@pytest.mark.parametrize(("eps", "min_samples"), [(1.0, 8), (0.6, 8), (0.8, 3)])
def test_grid_dbscan_equals_sklearn(blobs, eps, min_samples):
    from sklearn.cluster import DBSCAN

    grid = dbscan(blobs, eps, min_samples, method="grid")
    ref = DBSCAN(eps=eps, min_samples=min_samples).fit(blobs)
    core = np.zeros(len(blobs), bool)
    core[ref.core_sample_indices_] = True
    # the same clusters of core points, the same noise
    assert same_clusters(grid[core], ref.labels_[core]) == 1.0
    assert np.array_equal(grid < 0, ref.labels_ < 0)
    # a border point within eps of cores of two clusters may go to either (DBSCAN's own
    # ambiguity): only such points may differ
    agree = same_clusters(grid, ref.labels_)
    assert agree >= 0.999
    mapping = pd.Series(ref.labels_[core]).groupby(grid[core]).first()
    differ = np.flatnonzero((grid >= 0) & (mapping.reindex(grid).to_numpy() != ref.labels_))
    for i in differ:
        near = core & (np.hypot(*(blobs - blobs[i]).T) <= eps)
        assert ref.labels_[i] in set(ref.labels_[near]) and grid[i] in set(grid[near])
        assert not core[i]


def test_partitioned_equals_global(blobs):
    ref = dbscan(blobs, 0.8, 8)
    for tile in (25.0, 60.0):  # many tiles: clusters and the mover chain cross tile edges
        assert np.array_equal(dbscan_partitioned(blobs, 0.8, 8, tile_size=tile), ref)
    assert np.array_equal(dbscan_partitioned(blobs, 0.8, 8, tile_size=40.0, n_workers=2), ref)


def test_partitioned_equals_global_on_a_night(night):
    _, det, frames, result = night
    xi, eta = tangent_plane(det["ra"], det["dec"], *result.centre)
    xy = np.column_stack([xi, eta])
    ref = dbscan(xy, result.eps_arcsec, result.min_samples)
    tiled = dbscan_partitioned(xy, result.eps_arcsec, result.min_samples, max_points_per_tile=5000)
    assert np.array_equal(tiled, ref)
    grid = match_detections(det, frames, method="grid")
    assert np.array_equal(grid.source_id, result.source_id)


def test_matching_against_truth(night):
    truth, det, _, result = night
    stars = truth.stars.set_index("star_id")
    d = det.assign(source_id=result.source_id)
    real = d[d["star_id"] >= 0]
    star_of_source = (
        real[real["source_id"] >= 0]
        .groupby("source_id")["star_id"]
        .agg(lambda s: s.value_counts().index[0])
    )
    source_of_star = real.groupby("star_id")["source_id"].agg(lambda s: s.value_counts().index[0])
    n_det = real.groupby("star_id").size()
    stable = real[real["star_id"].map(stars["kind"]).eq("stable").to_numpy()]
    # a star seen in fewer than min_samples frames is not a source (sporadic detections)
    stable = stable[stable["star_id"].map(n_det).to_numpy() >= result.min_samples]
    right = (stable["source_id"].to_numpy() == stable["star_id"].map(source_of_star).to_numpy()) & (
        stable["source_id"].map(star_of_source).to_numpy() == stable["star_id"].to_numpy()
    )
    assert right.mean() >= 0.99, right.mean()
    # no two true stars 2 FWHM or more apart in one source
    fwhm_arcsec = truth.frames["fwhm_px"].median() * truth.config.pixel_scale_arcsec
    counts = real[real["source_id"] >= 0].groupby(["source_id", "star_id"]).size()
    share = counts / counts.groupby(level=0).transform("sum")
    members = share[share >= 0.05].reset_index()
    merged = members.groupby("source_id").filter(lambda g: len(g) > 1)
    fixed = stars[stars["kind"] != "moving"]
    for _, group in merged.groupby("source_id"):
        ids = group["star_id"].to_numpy()
        if stars.loc[ids, "kind"].eq("moving").any():
            continue
        xi, eta = tangent_plane(fixed.loc[ids, "ra"], fixed.loc[ids, "dec"], *result.centre)
        sep = np.hypot(xi[:, None] - xi[None, :], eta[:, None] - eta[None, :])
        assert sep[np.triu_indices(ids.size, 1)].min() < 2 * fwhm_arcsec


def test_one_detection_per_frame_and_source(night):
    _, det, _, result = night
    d = det.assign(source_id=result.source_id)
    assert not d[d["source_id"] >= 0].duplicated(["source_id", "frame"]).any()


def test_resolve_duplicates_keeps_the_closest():
    frame = np.array([0, 1, 1, 2, 3])
    xi = np.array([0.0, 0.1, 0.9, -0.1, 0.0])
    eta = np.zeros(5)
    time = np.arange(5.0)
    labels = resolve_duplicates(frame, xi, eta, time, np.zeros(5, dtype=np.int64))
    assert labels.tolist() == [0, 0, -1, 0, 0]


def test_tangent_plane_round_trip():
    ra = np.array([359.99, 0.01, 0.02])
    dec = np.array([-30.0, -30.01, -29.99])
    xi, eta = tangent_plane(ra, dec, 0.0, -30.0)
    ra2, dec2 = untangent_plane(xi, eta, 0.0, -30.0)
    np.testing.assert_allclose(np.mod(ra2 - ra + 180, 360) - 180, 0, atol=1e-10)
    np.testing.assert_allclose(dec2, dec, atol=1e-10)


def test_parameter_rules():
    assert match_eps([0.2, 0.25, 0.3]) == pytest.approx(0.75)  # 3 x median rms
    assert match_eps([0.01]) == 0.5  # floor
    assert match_eps([5.0]) == 2.0  # ceiling
    assert match_eps([np.nan]) == 1.0  # unknown rms
    assert match_min_samples(150) == 15
    assert match_min_samples(10) == 3


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: dbscan(np.zeros((3, 3)), 1.0, 2), "shape"),
        (lambda: dbscan(np.full((3, 2), np.nan), 1.0, 2), "finite"),
        (lambda: dbscan(np.zeros((3, 2)), 0.0, 2), "eps"),
        (lambda: dbscan(np.zeros((3, 2)), 1.0, 2, method="optics"), "method"),
        (lambda: match_min_samples(0), "n_frames"),
        (lambda: match_eps([0.1], eps_min_arcsec=3, eps_max_arcsec=1), "eps_min"),
        (lambda: match_detections(pd.DataFrame({"ra": [1.0]})), "columns"),
    ],
)
def test_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()
