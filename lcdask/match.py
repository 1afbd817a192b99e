"""Cross-match detections of all frames into sources: DBSCAN on the tangent plane, by sky tiles.

The detections of every frame (``detections.parquet``) are projected on the tangent plane around
the field centre (``xi`` east, ``eta`` north, arcsec) and clustered with DBSCAN: a source is a dense
cloud of detections, one per frame.

Parameters from the data
------------------------
``eps`` (`match_eps`)
    ``eps = clip(eps_factor * rms, eps_min_arcsec, eps_max_arcsec)`` with ``rms`` the median
    over frames of the measured astrometric rms (``rms_arcsec`` of the per-frame table: the rms
    of the 2-D distance between matched detections and the reference catalog) and
    ``eps_factor = 3``. For Gaussian errors of ``sigma`` per axis the 2-D rms is
    ``sqrt(2) sigma`` and two detections of one star are ``2 sigma`` apart in rms, so
    ``eps = 3 rms`` is about twice the rms pair distance: most detections of a star at that rms
    have most of the others within ``eps``. The floor (0.5") keeps faint stars, whose centroids
    scatter more than the frame rms, whole; the ceiling (2") keeps two stars 2 FWHM apart
    (>= 4" in ordinary seeing) from being chained.
``min_samples`` (`match_min_samples`)
    ``max(minimum, round(fraction * n_frames))`` with ``fraction = 0.1``, ``minimum = 3``: a
    source must be seen in about 10% of the frames to be a dense cloud. Sporadic detections
    (spurious ones, stars at the detection limit, movers too fast to cluster) are left
    unassigned (-1) for `lcdask.classify.link_tracks`.

Exact DBSCAN, in tiles
----------------------
scikit-learn's `~sklearn.cluster.DBSCAN` stores every point's neighbourhood. A star seen in 5000
frames is a cloud of 5000 detections within an arcsec, so every detection has thousands of
neighbours and a whole night needs ``n * n_neighbours`` indices (hundreds of GB for 10 million
detections). `dbscan_grid` computes the same clustering without listing neighbourhoods: points are
binned in cells of side ``eps / sqrt(2)`` (any two points of a cell are within ``eps``), so a cell
holding ``min_samples`` points makes all of them core without a distance; other points count
their neighbours with a k-d tree (only when the cells around them could hold enough); two core
cells are connected when any pair of their core points is within ``eps`` (sampled pairs first,
then a k-d tree); clusters are the connected components of the core cells. Border points join the
cluster of their nearest core point within ``eps`` (scikit-learn gives a border point reachable from
two clusters to whichever reached it first; that is the only possible difference).

`dbscan_partitioned` splits the tangent plane into square tiles and processes them one at a time
(or on a thread pool), each with a halo of ``eps`` around it, so memory is bounded by the largest
tile: (1) the core flag of each point is computed in its own tile (its ``eps`` neighbourhood is
complete there); (2) each tile clusters the core points it owns and those of its halo; (3) tiles
are stitched through the halo core points they share (a halo core point has a cluster in its own
tile and in the neighbour's: the two are one cluster). Every core-core link is seen by a tile, so
the result is exactly the global clustering, whatever the size of the clusters (long mover
chains included); a cluster's id is assigned in the order of its first detection, so the labels
equal those of one global call. A cluster "belongs" to the tile that holds its centre in the
sources table only as a bookkeeping convention (`tile_of_clusters`).

After clustering, `resolve_duplicates` keeps one detection per (source, frame): the one closest
to the source's position predicted at that frame's time by a least-squares line in time (the
median for a star; along the track for a slow mover); the others become unassigned.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from lcdask._utils.skygeom import mean_radec, tangent_plane, untangent_plane

__all__ = [
    "MatchResult",
    "dbscan",
    "dbscan_grid",
    "dbscan_partitioned",
    "field_centre",
    "match_detections",
    "match_eps",
    "match_min_samples",
    "resolve_duplicates",
    "same_clusters",
    "tangent_plane",
    "tile_of_clusters",
    "untangent_plane",
]

_SQRT2 = np.sqrt(2.0)
# cell offsets whose cells can hold points within eps of a point (cells of side eps/sqrt(2))
_OFFSETS = np.array(
    [(di, dj) for di in range(-2, 3) for dj in range(-2, 3) if abs(di) + abs(dj) < 4],
    dtype=np.int64,
)
# half of them (without (0, 0)): each unordered pair of cells once
_HALF_OFFSETS = np.array(
    [(di, dj) for di, dj in _OFFSETS if di > 0 or (di == 0 and dj > 0)], dtype=np.int64
)
_SMALL_PAIR = 1024  # brute-force all point pairs of two cells below this many pairs
_N_SAMPLE = 12  # points per cell tried first when two large cells are compared


# --------------------------------------------------------------------------------------------
# geometry and parameters


def field_centre(ra_deg: ArrayLike, dec_deg: ArrayLike) -> tuple[float, float]:
    """Centre of a set of sky positions: the normalised mean unit vector (RA wrap-safe).

    Parameters
    ----------
    ra_deg, dec_deg
        Sky positions in degrees (non-finite values are ignored).

    Returns
    -------
    tuple of float
        (RA, Dec) in degrees.
    """
    ra = np.asarray(ra_deg, dtype=float)
    dec = np.asarray(dec_deg, dtype=float)
    ok = np.isfinite(ra) & np.isfinite(dec)
    if not ok.any():
        raise ValueError("field_centre needs at least one finite RA/Dec position")
    return mean_radec(ra[ok], dec[ok])


def match_eps(
    rms_arcsec: ArrayLike | float,
    *,
    eps_factor: float = 3.0,
    eps_min_arcsec: float = 0.5,
    eps_max_arcsec: float = 2.0,
) -> float:
    """DBSCAN radius from the measured astrometric rms (see the module docstring for the rule).

    Parameters
    ----------
    rms_arcsec
        Per-frame astrometric rms (2-D, arcsec); the median of the finite, positive values is
        used. When there is none, ``eps = min(2 * eps_min_arcsec, eps_max_arcsec)`` (1" by
        default).
    eps_factor, eps_min_arcsec, eps_max_arcsec
        ``eps = clip(eps_factor * median(rms), eps_min_arcsec, eps_max_arcsec)``.

    Returns
    -------
    float
        ``eps`` in arcsec.
    """
    if not (0 < eps_min_arcsec <= eps_max_arcsec):
        raise ValueError(
            f"need 0 < eps_min_arcsec <= eps_max_arcsec, got {eps_min_arcsec}, {eps_max_arcsec}"
        )
    rms = np.atleast_1d(np.asarray(rms_arcsec, dtype=float))
    rms = rms[np.isfinite(rms) & (rms > 0)]
    if rms.size == 0:
        return float(min(2.0 * eps_min_arcsec, eps_max_arcsec))
    return float(np.clip(eps_factor * np.median(rms), eps_min_arcsec, eps_max_arcsec))


def match_min_samples(n_frames: int, *, fraction: float = 0.1, minimum: int = 3) -> int:
    """DBSCAN ``min_samples`` from the number of frames: ``max(minimum, round(fraction * n))``.

    Parameters
    ----------
    n_frames
        Number of frames in the run.
    fraction
        Fraction of the frames in which a source must be seen to make a dense cloud.
    minimum
        Lower bound (a cluster needs a few points whatever the run's length).

    Returns
    -------
    int
        ``min_samples`` (counting the point itself, as scikit-learn does).
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be within [0, 1], got {fraction}")
    return int(max(minimum, round(fraction * n_frames)))


# --------------------------------------------------------------------------------------------
# exact grid DBSCAN


class _Grid:
    """Points binned in square cells; cells looked up by integer key."""

    def __init__(self, xy: NDArray[np.float64], cell: float, origin: NDArray[np.float64]):
        ij = np.floor((xy - origin) / cell).astype(np.int64)
        self.i0 = ij.min(axis=0) - 2 if len(ij) else np.zeros(2, np.int64)
        ij = ij - self.i0
        self.width = int(ij[:, 1].max()) + 3 if len(ij) else 1
        key = ij[:, 0] * self.width + ij[:, 1]
        self.order = np.argsort(key, kind="stable")
        self.keys, self.start, self.count = np.unique(
            key[self.order], return_index=True, return_counts=True
        )
        self.cell_of = np.empty(len(xy), dtype=np.int64)
        self.cell_of[self.order] = np.repeat(np.arange(len(self.keys)), self.count)

    def lookup(self, keys: NDArray[np.int64]) -> NDArray[np.int64]:
        """Cell index of each key, -1 where there is no such cell."""
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        found = self.keys[pos] == keys if len(self.keys) else np.zeros(len(keys), bool)
        return np.where(found, pos, -1)

    def offset_keys(self, offsets: NDArray[np.int64]) -> NDArray[np.int64]:
        """(n_cells, n_offsets) keys of the neighbouring cells."""
        delta = offsets[:, 0] * self.width + offsets[:, 1]
        return self.keys[:, None] + delta[None, :]


def _core_flags(xy: NDArray[np.float64], eps: float, min_samples: int) -> NDArray[np.bool_]:
    """Whether each point has ``min_samples`` points (itself included) within ``eps``."""
    n = len(xy)
    core = np.zeros(n, dtype=bool)
    if n == 0:
        return core
    grid = _Grid(xy, eps / _SQRT2, xy.min(axis=0))
    dense = grid.count >= min_samples
    nb = grid.lookup(grid.offset_keys(_OFFSETS).ravel()).reshape(len(grid.keys), -1)
    upper = np.where(nb >= 0, grid.count[np.maximum(nb, 0)], 0).sum(axis=1)
    core[grid.order] = np.repeat(dense, grid.count)
    maybe_cell = ~dense & (upper >= min_samples)
    maybe = np.repeat(maybe_cell, grid.count)
    idx = grid.order[maybe]
    if idx.size:
        tree = cKDTree(xy)
        counts = tree.query_ball_point(xy[idx], eps, return_length=True)
        core[idx] = counts >= min_samples
    return core


def _connected_cells(
    xy: NDArray[np.float64], grid: _Grid, eps: float
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Pairs of cells (a, b) holding a pair of points within ``eps`` (all points are core)."""
    nb = grid.lookup(grid.offset_keys(_HALF_OFFSETS).ravel()).reshape(len(grid.keys), -1)
    a = np.repeat(np.arange(len(grid.keys)), nb.shape[1])
    b = nb.ravel()
    keep = b >= 0
    a, b = a[keep], b[keep]
    if a.size == 0:
        return a, b
    pts = xy[grid.order]  # points sorted by cell
    eps2 = eps * eps
    na, nbc = grid.count[a], grid.count[b]
    n_pairs = na * nbc
    linked = np.zeros(a.size, dtype=bool)

    def brute(sel: NDArray[np.int64], sa, ca, sb, cb) -> NDArray[np.bool_]:
        """All ca x cb pairs of points starting at sa, sb for the pairs ``sel``; any within eps."""
        out = np.zeros(sel.size, dtype=bool)
        tot = ca * cb
        cum = np.cumsum(tot)
        lo = 0
        while lo < sel.size:  # chunks of at most ~4 million point pairs
            base = cum[lo - 1] if lo else 0
            hi = max(int(np.searchsorted(cum, base + 4_000_000, side="right")), lo + 1)
            t = tot[lo:hi]
            owner = np.repeat(np.arange(lo, hi), t)
            local = np.arange(t.sum()) - np.repeat(np.cumsum(t) - t, t)
            ia = sa[owner] + local // cb[owner]
            ib = sb[owner] + local % cb[owner]
            d2 = ((pts[ia] - pts[ib]) ** 2).sum(axis=1)
            out[lo:hi] = np.bincount(owner - lo, weights=(d2 <= eps2), minlength=hi - lo) > 0
            lo = hi
        return out

    small = n_pairs <= _SMALL_PAIR
    s = np.flatnonzero(small)
    if s.size:
        linked[s] = brute(s, grid.start[a[s]], na[s], grid.start[b[s]], nbc[s])
    large = np.flatnonzero(~small)
    if large.size:
        # evenly spaced sample of each cell (the order within a cell is arbitrary in space)
        ka = np.minimum(na[large], _N_SAMPLE)
        kb = np.minimum(nbc[large], _N_SAMPLE)
        # sample pairs: brute force on the samples by building explicit index lists
        tot = ka * kb
        owner = np.repeat(np.arange(large.size), tot)
        local = np.arange(tot.sum()) - np.repeat(np.cumsum(tot) - tot, tot)
        ra_, rb_ = local // kb[owner], local % kb[owner]
        ia = grid.start[a[large]][owner] + (ra_ * na[large][owner]) // ka[owner]
        ib = grid.start[b[large]][owner] + (rb_ * nbc[large][owner]) // kb[owner]
        d2 = ((pts[ia] - pts[ib]) ** 2).sum(axis=1)
        hit = np.bincount(owner, weights=(d2 <= eps2), minlength=large.size) > 0
        linked[large[hit]] = True
        rest = large[~hit]
        trees: dict[int, cKDTree] = {}
        for p in rest:
            ca, cb = int(a[p]), int(b[p])
            if grid.count[ca] > grid.count[cb]:
                ca, cb = cb, ca
            tree = trees.get(cb)
            if tree is None:
                tree = cKDTree(pts[grid.start[cb] : grid.start[cb] + grid.count[cb]])
                trees[cb] = tree
            q = pts[grid.start[ca] : grid.start[ca] + grid.count[ca]]
            d, _ = tree.query(q, k=1, distance_upper_bound=eps)
            linked[p] = bool(np.isfinite(d).any())
    return a[linked], b[linked]


def _core_components(xy_core: NDArray[np.float64], eps: float) -> NDArray[np.int64]:
    """Connected components (labels 0..k-1) of core points linked within ``eps``."""
    n = len(xy_core)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    grid = _Grid(xy_core, eps / _SQRT2, xy_core.min(axis=0))
    a, b = _connected_cells(xy_core, grid, eps)
    n_cells = len(grid.keys)
    graph = coo_matrix((np.ones(a.size, dtype=np.int8), (a, b)), shape=(n_cells, n_cells))
    _, cell_label = connected_components(graph, directed=False)
    return cell_label[grid.cell_of].astype(np.int64)


def _attach_border(
    xy: NDArray[np.float64],
    core: NDArray[np.bool_],
    core_label: NDArray[np.int64],  # per point of xy (only core entries are read)
    targets: NDArray[np.int64],
    eps: float,
) -> NDArray[np.int64]:
    """Labels of the non-core points ``targets``: nearest core point within eps, else -1."""
    out = np.full(targets.size, -1, dtype=np.int64)
    core_idx = np.flatnonzero(core)
    if targets.size == 0 or core_idx.size == 0:
        return out
    tree = cKDTree(xy[core_idx])
    d, j = tree.query(xy[targets], k=1, distance_upper_bound=eps)
    ok = np.isfinite(d)
    out[ok] = core_label[core_idx[j[ok]]]
    return out


def _canonical(labels: NDArray[np.int64]) -> NDArray[np.int64]:
    """Renumber labels >= 0 in the order of their first point; -1 stays -1."""
    out = np.full(labels.shape, -1, dtype=np.int64)
    ok = labels >= 0
    if not ok.any():
        return out
    uniq, first = np.unique(labels[ok], return_index=True)
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(uniq.size)
    out[ok] = rank[np.searchsorted(uniq, labels[ok])]
    return out


def _check_xy(xy: ArrayLike, eps: float, min_samples: int) -> NDArray[np.float64]:
    arr = np.asarray(xy, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"xy must have shape (n, 2), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("xy must be finite; drop detections without a position first")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    return arr


def dbscan_grid(xy: ArrayLike, eps: float, min_samples: int) -> NDArray[np.int64]:
    """Exact DBSCAN on 2-D points without neighbourhood lists (see the module docstring).

    Parameters
    ----------
    xy
        (n, 2) positions.
    eps
        Neighbourhood radius (Euclidean, same units as ``xy``).
    min_samples
        Points (the point itself included) within ``eps`` that make a core point.

    Returns
    -------
    numpy.ndarray
        int64 cluster label per point, -1 for noise, numbered in the order of each cluster's
        first point.
    """
    arr = _check_xy(xy, eps, min_samples)
    core = _core_flags(arr, eps, min_samples)
    labels = np.full(len(arr), -1, dtype=np.int64)
    core_idx = np.flatnonzero(core)
    labels[core_idx] = _core_components(arr[core_idx], eps)
    full = np.full(len(arr), -1, dtype=np.int64)
    full[core_idx] = labels[core_idx]
    rest = np.flatnonzero(~core)
    labels[rest] = _attach_border(arr, core, full, rest, eps)
    return _canonical(labels)


def dbscan(
    xy: ArrayLike, eps: float, min_samples: int, *, method: str = "grid"
) -> NDArray[np.int64]:
    """DBSCAN labels of 2-D points, by `dbscan_grid` or by scikit-learn in one call.

    Parameters
    ----------
    xy, eps, min_samples
        As for `sklearn.cluster.DBSCAN`.
    method
        ``"grid"`` (`dbscan_grid`, memory O(n)) or ``"sklearn"`` (`sklearn.cluster.DBSCAN`,
        memory O(n * neighbours)).

    Returns
    -------
    numpy.ndarray
        int64 labels (-1 noise), numbered in the order of each cluster's first point.
    """
    if method == "grid":
        return dbscan_grid(xy, eps, min_samples)
    if method == "sklearn":
        from sklearn.cluster import DBSCAN

        arr = _check_xy(xy, eps, min_samples)
        if len(arr) == 0:
            return np.zeros(0, dtype=np.int64)
        labels = DBSCAN(eps=eps, min_samples=min_samples).fit(arr).labels_
        return _canonical(labels.astype(np.int64))
    raise ValueError(f"method must be 'grid' or 'sklearn', got {method!r}")


def _tiles(
    xy: NDArray[np.float64], tile_size: float
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64], NDArray[np.float64], int]:
    """Sort points by square tile; return (order, tile keys, tile starts, origin, n_cols)."""
    origin = xy.min(axis=0)
    tij = np.floor((xy - origin) / tile_size).astype(np.int64)
    n_cols = int(tij[:, 1].max()) + 1
    key = tij[:, 0] * n_cols + tij[:, 1]
    order = np.argsort(key, kind="stable")
    keys, start = np.unique(key[order], return_index=True)
    return order, keys, start, origin, n_cols


def dbscan_partitioned(
    xy: ArrayLike,
    eps: float,
    min_samples: int,
    *,
    tile_size: float | None = None,
    max_points_per_tile: int = 1_000_000,
    n_workers: int = 1,
) -> NDArray[np.int64]:
    """Exact DBSCAN processed tile by tile with an ``eps`` halo, stitched (module docstring).

    Parameters
    ----------
    xy, eps, min_samples
        As for `dbscan_grid`.
    tile_size
        Side of the square tiles (units of ``xy``); by default chosen so that an average tile
        holds ``max_points_per_tile`` points. Must be > 2 ``eps``.
    max_points_per_tile
        Target tile occupancy when ``tile_size`` is None (bounds the working memory).
    n_workers
        Tiles processed concurrently on a thread pool (k-d trees and numpy release the GIL).

    Returns
    -------
    numpy.ndarray
        The same labels as ``dbscan_grid(xy, eps, min_samples)`` (clusters numbered in the order
        of their first point).
    """
    arr = _check_xy(xy, eps, min_samples)
    n = len(arr)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if tile_size is None:
        extent = np.ptp(arr, axis=0)
        area = max(float(extent[0] * extent[1]), (4 * eps) ** 2)
        tile_size = float(np.sqrt(area * max_points_per_tile / n))
    tile_size = max(float(tile_size), 4.0 * eps)
    order, keys, start, origin, n_cols = _tiles(arr, tile_size)
    stop = np.append(start[1:], n)
    tile_key = np.empty(n, dtype=np.int64)
    tile_key[order] = np.repeat(keys, np.diff(np.append(start, n)))
    key_pos = {int(k): t for t, k in enumerate(keys)}

    def members(t: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Indices of the points owned by tile t and of its halo (within eps of the tile)."""
        k = int(keys[t])
        ti, tj = divmod(k, n_cols)
        own = order[start[t] : stop[t]]
        lo = origin + np.array([ti, tj]) * tile_size - eps
        hi = lo + tile_size + 2 * eps
        halo_parts = []
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if di == 0 and dj == 0:
                    continue
                if not (0 <= tj + dj < n_cols):
                    continue
                u = key_pos.get((ti + di) * n_cols + (tj + dj))
                if u is None:
                    continue
                cand = order[start[u] : stop[u]]
                p = arr[cand]
                inside = (p[:, 0] >= lo[0]) & (p[:, 0] < hi[0]) & (p[:, 1] >= lo[1])
                inside &= p[:, 1] < hi[1]
                halo_parts.append(cand[inside])
        halo = np.concatenate(halo_parts) if halo_parts else np.zeros(0, dtype=np.int64)
        return own, halo

    def run(fn: Callable[[int], object]) -> list:
        if n_workers > 1 and len(keys) > 1:
            with ThreadPoolExecutor(max_workers=n_workers) as pool:
                return list(pool.map(fn, range(len(keys))))
        return [fn(t) for t in range(len(keys))]

    # phase 1: exact core flags of each tile's own points
    core = np.zeros(n, dtype=bool)

    def phase1(t: int) -> None:
        own, halo = members(t)
        idx = np.concatenate([own, halo])
        core[own] = _core_flags(arr[idx], eps, min_samples)[: own.size]

    run(phase1)

    # phase 2: components of the core points of each tile plus halo; border points of own
    def phase2(t: int) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        own, halo = members(t)
        idx = np.concatenate([own, halo])
        c = core[idx]
        lab = np.full(idx.size, -1, dtype=np.int64)
        lab[c] = _core_components(arr[idx[c]], eps)
        own_noncore = np.flatnonzero(~c[: own.size])
        border = _attach_border(arr[idx], c, lab, own_noncore, eps)
        # records: (point index, local label) for core points (own and halo), own border points
        pts = np.concatenate([idx[c], own[own_noncore]])
        loc = np.concatenate([lab[c], border])
        is_core = np.concatenate([np.ones(int(c.sum()), bool), np.zeros(own_noncore.size, bool)])
        return pts, loc, is_core

    results = run(phase2)
    offsets = np.cumsum([0] + [int(r[1].max()) + 1 if r[1].size else 0 for r in results])
    n_local = int(offsets[-1])
    labels = np.full(n, -1, dtype=np.int64)
    edge_a, edge_b = [], []
    for t, (pts, loc, _) in enumerate(results):
        glob = np.where(loc >= 0, loc + offsets[t], -1)
        own_mask = tile_key[pts] == keys[t]
        labels[pts[own_mask]] = glob[own_mask]
    for t, (pts, loc, is_core) in enumerate(results):
        halo_core = is_core & (tile_key[pts] != keys[t])
        edge_a.append(loc[halo_core] + offsets[t])
        edge_b.append(labels[pts[halo_core]])
    ea = np.concatenate(edge_a) if edge_a else np.zeros(0, np.int64)
    eb = np.concatenate(edge_b) if edge_b else np.zeros(0, np.int64)
    if n_local:
        graph = coo_matrix((np.ones(ea.size, dtype=np.int8), (ea, eb)), shape=(n_local, n_local))
        _, merged = connected_components(graph, directed=False)
        labels = np.where(labels >= 0, merged[np.maximum(labels, 0)], -1)
    return _canonical(labels)


def same_clusters(a: ArrayLike, b: ArrayLike) -> float:
    """Fraction of points on which two clusterings agree, up to the naming of the clusters.

    Each cluster of ``a`` is paired with the cluster of ``b`` that shares most of its points
    (noise with noise); the fraction of points whose pair holds is returned (1.0: the same
    clusters).

    Parameters
    ----------
    a, b
        Label arrays of the same points (-1 noise).

    Returns
    -------
    float
        Agreement in [0, 1].
    """
    la, lb = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    if la.shape != lb.shape:
        raise ValueError(f"label arrays differ in shape: {la.shape} vs {lb.shape}")
    if la.size == 0:
        return 1.0
    table = pd.DataFrame({"a": la, "b": lb}).value_counts().reset_index(name="n")
    table = table.sort_values("n", ascending=False)
    best_a = table.drop_duplicates("a")  # most common b for each a
    best_b = table.drop_duplicates("b")
    pair_a = dict(zip(best_a["a"], best_a["b"], strict=True))
    pair_b = dict(zip(best_b["b"], best_b["a"], strict=True))
    ok = (table["b"].to_numpy() == table["a"].map(pair_a).to_numpy()) & (
        table["a"].to_numpy() == table["b"].map(pair_b).to_numpy()
    )
    return float(table["n"].to_numpy()[ok].sum() / la.size)


def tile_of_clusters(xy: ArrayLike, labels: ArrayLike, tile_size: float) -> pd.DataFrame:
    """The tile that owns each cluster: the one containing the cluster's mean position.

    Parameters
    ----------
    xy
        (n, 2) positions.
    labels
        Cluster labels (-1 noise).
    tile_size
        Side of the tiles (tiles start at the minimum of ``xy``).

    Returns
    -------
    pandas.DataFrame
        ``label``, ``x``, ``y`` (mean position), ``tile_i``, ``tile_j``.
    """
    arr = np.asarray(xy, dtype=float)
    lab = np.asarray(labels, dtype=np.int64)
    ok = lab >= 0
    table = pd.DataFrame({"label": lab[ok], "x": arr[ok, 0], "y": arr[ok, 1]})
    centre = table.groupby("label", sort=True).mean().reset_index()
    origin = arr.min(axis=0) if len(arr) else np.zeros(2)
    centre["tile_i"] = np.floor((centre["x"] - origin[0]) / tile_size).astype(np.int64)
    centre["tile_j"] = np.floor((centre["y"] - origin[1]) / tile_size).astype(np.int64)
    return centre


# --------------------------------------------------------------------------------------------
# detections to sources


def resolve_duplicates(
    frame: ArrayLike,
    xi: ArrayLike,
    eta: ArrayLike,
    time: ArrayLike,
    labels: ArrayLike,
) -> NDArray[np.int64]:
    """Keep one detection per (cluster, frame): the closest to the cluster's predicted position.

    The prediction is each cluster's least-squares line of ``xi`` and ``eta`` against ``time``
    (for a star, its mean position; for a slow mover, its position along the track).

    Parameters
    ----------
    frame, xi, eta, time, labels
        Per detection: frame index, tangent-plane position, time, cluster label (-1 noise).

    Returns
    -------
    numpy.ndarray
        Labels with the extra detections of a frame set to -1.
    """
    lab = np.asarray(labels, dtype=np.int64).copy()
    table = pd.DataFrame(
        {
            "label": lab,
            "frame": np.asarray(frame),
            "xi": np.asarray(xi, dtype=float),
            "eta": np.asarray(eta, dtype=float),
            "t": np.asarray(time, dtype=float),
        }
    )
    table = table[table["label"] >= 0]
    dup = table.duplicated(["label", "frame"], keep=False).to_numpy()
    if not dup.any():
        return lab
    g = table.groupby("label")
    t_mean = g["t"].transform("mean")
    dt = table["t"] - t_mean
    var_t = (dt * dt).groupby(table["label"]).transform("mean")
    pred = {}
    for c in ("xi", "eta"):
        mean = g[c].transform("mean")
        cov = (dt * (table[c] - mean)).groupby(table["label"]).transform("mean")
        slope = np.where(var_t > 0, cov / np.where(var_t > 0, var_t, 1.0), 0.0)
        pred[c] = mean + slope * dt
    dist = np.hypot(table["xi"] - pred["xi"], table["eta"] - pred["eta"])
    table = table.assign(dist=dist.to_numpy())
    sub = table[dup].sort_values(["label", "frame", "dist"])
    drop = sub.index[sub.duplicated(["label", "frame"], keep="first").to_numpy()]
    lab[drop.to_numpy()] = -1
    return lab


@dataclass(frozen=True)
class MatchResult:
    """The outcome of `match_detections`.

    Attributes
    ----------
    source_id
        int64 per detection (in the input's row order): the source it belongs to, -1 when it
        belongs to none (noise, or the farther of two detections of one frame).
    eps_arcsec, min_samples
        The DBSCAN parameters used.
    centre
        (RA, Dec) of the tangent point, degrees.
    n_sources, n_unassigned, n_duplicates
        Sources found, detections left unassigned, detections unassigned as duplicates.
    """

    source_id: NDArray[np.int64]
    eps_arcsec: float
    min_samples: int
    centre: tuple[float, float]
    n_sources: int
    n_unassigned: int
    n_duplicates: int


def match_detections(
    detections: pd.DataFrame,
    frames: pd.DataFrame | None = None,
    *,
    eps_arcsec: float | None = None,
    min_samples: int | None = None,
    centre: tuple[float, float] | None = None,
    method: str = "partitioned",
    max_points_per_tile: int = 1_000_000,
    n_workers: int = 1,
) -> MatchResult:
    """Match detections of all frames into sources (DBSCAN, then one detection per frame).

    Parameters
    ----------
    detections
        At least ``frame``, ``time_mjd``, ``ra``, ``dec`` (degrees). Rows with a non-finite
        position stay unassigned.
    frames
        The per-frame table (``frame``, ``rms_arcsec``): ``eps`` comes from its rms and
        ``min_samples`` from its number of rows. Without it, ``eps`` falls back to 1" and the
        number of frames to the distinct frames of ``detections``.
    eps_arcsec, min_samples
        Override the rules of `match_eps` and `match_min_samples`.
    centre
        Tangent point (RA, Dec) in degrees; default `field_centre` of the detections.
    method
        ``"partitioned"`` (`dbscan_partitioned`), ``"grid"`` (`dbscan_grid`, one call) or
        ``"sklearn"`` (scikit-learn's DBSCAN in one call; small runs only).
    max_points_per_tile, n_workers
        Passed to `dbscan_partitioned`.

    Returns
    -------
    MatchResult
        ``source_id`` per detection (sources numbered 0.. in the order of their first
        detection) and the parameters used.
    """
    missing = [c for c in ("frame", "time_mjd", "ra", "dec") if c not in detections.columns]
    if missing:
        raise ValueError(f"detections lack the columns {missing} needed for matching")
    if method not in ("partitioned", "grid", "sklearn"):
        raise ValueError(f"method must be 'partitioned', 'grid' or 'sklearn', got {method!r}")
    ra = detections["ra"].to_numpy(dtype=float)
    dec = detections["dec"].to_numpy(dtype=float)
    ok = np.isfinite(ra) & np.isfinite(dec)
    if eps_arcsec is None:
        rms = (
            frames["rms_arcsec"].to_numpy(dtype=float)
            if frames is not None and "rms_arcsec" in frames.columns
            else np.array([np.nan])
        )
        eps_arcsec = match_eps(rms)
    if min_samples is None:
        n_frames = len(frames) if frames is not None else int(detections["frame"].nunique())
        min_samples = match_min_samples(max(n_frames, 1))
    source_id = np.full(len(detections), -1, dtype=np.int64)
    if not ok.any():
        return MatchResult(
            source_id, float(eps_arcsec), int(min_samples), (np.nan, np.nan), 0, len(detections), 0
        )
    if centre is None:
        centre = field_centre(ra[ok], dec[ok])
    xi, eta = tangent_plane(ra[ok], dec[ok], *centre)
    xy = np.column_stack([xi, eta])
    if method == "partitioned":
        labels = dbscan_partitioned(
            xy,
            eps_arcsec,
            min_samples,
            max_points_per_tile=max_points_per_tile,
            n_workers=n_workers,
        )
    else:
        labels = dbscan(xy, eps_arcsec, min_samples, method=method)
    n_before = int((labels >= 0).sum())
    labels = resolve_duplicates(
        detections["frame"].to_numpy()[ok],
        xi,
        eta,
        detections["time_mjd"].to_numpy(dtype=float)[ok],
        labels,
    )
    labels = _canonical(labels)
    source_id[ok] = labels
    n_dup = n_before - int((labels >= 0).sum())
    return MatchResult(
        source_id=source_id,
        eps_arcsec=float(eps_arcsec),
        min_samples=int(min_samples),
        centre=(float(centre[0]), float(centre[1])),
        n_sources=int(labels.max()) + 1 if (labels >= 0).any() else 0,
        n_unassigned=int((source_id < 0).sum()),
        n_duplicates=n_dup,
    )
