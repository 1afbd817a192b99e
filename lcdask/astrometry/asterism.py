"""`AsterismSolver`: the built-in offline solver, by triangle asterisms against a catalog.

It matches the frame's brightest detections to a reference catalog near the header pointing by
hashing triangles of neighbouring stars into invariants (side ratios, which do not change under
rotation, parity flip or scale), votes for the similarity transform, verifies the best
hypotheses by counting matched stars, then fits a TAN (and TAN-SIP when there are enough stars)
WCS with all matches, iterating.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from lcdask._utils.skygeom import tangent_plane
from lcdask.astrometry.inputs import catalog_arrays, detection_arrays
from lcdask.astrometry.matching import iterate_fit, significant
from lcdask.astrometry.solution import (
    AstrometrySolution,
    SolveHints,
    failed_solution,
    hint_wcs,
    pixel_scale_deg,
    register_solver,
)
from lcdask.astrometry.wcsfit import check_fitter, fit_wcs_linear

if TYPE_CHECKING:
    from lcdask.astrometry.config import AstrometryConfig

__all__ = ["AsterismSolver"]


def _triangles(points: np.ndarray, k: int) -> np.ndarray:
    """Index triples (n, 3) of the triangles each point makes with pairs of its k neighbours."""
    n = len(points)
    if n < 3:
        return np.zeros((0, 3), dtype=int)
    k = min(k, n - 1)
    _, nbr = cKDTree(points).query(points, k=k + 1)
    a_idx, b_idx = np.triu_indices(k, 1)
    tri = np.column_stack(
        [
            np.repeat(np.arange(n), len(a_idx)),
            nbr[:, 1:][:, a_idx].ravel(),
            nbr[:, 1:][:, b_idx].ravel(),
        ]
    )
    tri.sort(axis=1)
    return np.unique(tri, axis=0)


def _triangle_invariants(
    points: np.ndarray, tri: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Invariants, ordered vertices, orientation sign and longest side of each triangle.

    The invariants are (shortest / longest, middle / longest side): unchanged by translation,
    rotation, scale and mirroring. Vertices are ordered by the length of the side opposite them
    (shortest first), which makes the correspondence between two matching triangles.
    """
    p = points[tri]  # (n, 3, 2)
    opp = np.stack(
        [
            np.hypot(*(p[:, 1] - p[:, 2]).T),
            np.hypot(*(p[:, 0] - p[:, 2]).T),
            np.hypot(*(p[:, 0] - p[:, 1]).T),
        ],
        axis=1,
    )
    order = np.argsort(opp, axis=1)
    sides = np.take_along_axis(opp, order, axis=1)
    verts = np.take_along_axis(tri, order, axis=1)
    longest = sides[:, 2]
    inv = np.column_stack([sides[:, 0] / longest, sides[:, 1] / longest])
    q = points[verts]
    cross = (q[:, 1, 0] - q[:, 0, 0]) * (q[:, 2, 1] - q[:, 0, 1]) - (q[:, 1, 1] - q[:, 0, 1]) * (
        q[:, 2, 0] - q[:, 0, 0]
    )
    return inv, verts, np.sign(cross), longest


@register_solver("asterism")
@dataclass(frozen=True)
class AsterismSolver:
    """Built-in solver: triangle-asterism matching to a reference catalog near the pointing.

    Parameters
    ----------
    n_detections : int
        Brightest detections used to build triangles.
    n_catalog : int, optional
        Brightest catalog stars used to build triangles; default scaled from ``n_detections`` by
        the ratio of the search area (field plus pointing error) to the field.
    n_neighbours : int
        Each star makes triangles with pairs of its ``n_neighbours`` nearest neighbours (the
        catalog side uses 1.6 times as many, since it holds stars the frame may not show).
    max_pointing_error_arcmin : float
        Largest distance of the true field centre from the guessed one.
    scale_tolerance : float
        Largest relative error of the guessed pixel scale.
    invariant_tolerance : float
        Radius of the match in triangle-invariant space.
    verify_radius_px : float
        Radius within which a transformed detection counts as matched when verifying.
    min_matches : int
        Matched stars needed to accept a hypothesis and a final solution.
    sip_degree : int or None
        SIP degree of the final fit (None for TAN); SIP is used only with at least
        ``min_matches_sip`` matches.
    min_matches_sip : int
        Matches needed before fitting SIP terms.
    fitter : {"astropy", "linear"}
        Final fit: astropy's ``fit_wcs_from_points`` or `fit_wcs_linear` (weighted, faster).
    mag_column : str
        Catalog magnitude column used to pick the brightest stars.
    max_fit_stars : int
        Use at most this many (brightest) matches in a fit.
    scale_arcsec : float, optional
        Pixel scale (arcsec/px) to start from when no ``wcs_guess`` is given (with
        ``center_deg``: a header with a pointing and a scale but no WCS).
    center_deg : tuple of float, optional
        Field centre ``(ra, dec)`` to start from when no ``wcs_guess`` is given.
    """

    n_detections: int = 40
    n_catalog: int | None = None
    n_neighbours: int = 5
    max_pointing_error_arcmin: float = 8.0
    scale_tolerance: float = 0.15
    invariant_tolerance: float = 0.015
    verify_radius_px: float = 4.0
    min_matches: int = 6
    sip_degree: int | None = 2
    min_matches_sip: int = 100
    fitter: str = "astropy"
    mag_column: str = "mag"
    max_fit_stars: int = 400
    scale_arcsec: float | None = None
    center_deg: tuple[float, float] | None = None
    name: str = "asterism"

    def __post_init__(self) -> None:
        check_fitter(self.fitter)
        if self.n_detections < 4:
            raise ValueError(f"n_detections must be >= 4, got {self.n_detections}")
        if not 0 < self.scale_tolerance < 1:
            raise ValueError(f"scale_tolerance must be in (0, 1), got {self.scale_tolerance}")

    @classmethod
    def from_config(
        cls, config: AstrometryConfig, *, hints: SolveHints, mag_column: str
    ) -> AsterismSolver:
        """The solver of ``[astrometry] solver = "asterism"`` (its defaults; the catalog's band).

        Parameters
        ----------
        config : AstrometryConfig
        hints : SolveHints
            The header's scale and pointing: the start when no guess WCS is given.
        mag_column : str
            The catalog's magnitude column.

        Returns
        -------
        AsterismSolver
        """
        return cls(mag_column=mag_column, scale_arcsec=hints.scale_arcsec, center_deg=hints.center)

    def solve(
        self,
        detections: pd.DataFrame,
        image_shape: tuple[int, int],
        *,
        wcs_guess: WCS | None = None,
        catalog: pd.DataFrame | None = None,
    ) -> AstrometrySolution:
        """Solve one frame against ``catalog`` near ``wcs_guess`` (see the class docstring).

        Parameters
        ----------
        detections : pandas.DataFrame
            The frame's detections (``x``, ``y``, ``flux``; ``snr``, ``flags`` when present).
        image_shape : tuple of int
            ``(ny, nx)`` of the frame.
        wcs_guess : astropy.wcs.WCS
            The header WCS: its centre and pixel scale are the starting point; its rotation and
            parity are not used.
        catalog : pandas.DataFrame
            Reference stars (``ra``, ``dec``, ``mag_column``).

        Returns
        -------
        AstrometrySolution
            ``status == "failed"`` with the reason when no hypothesis verifies.
        """
        if catalog is None:
            return failed_solution(self.name, "no reference catalog")
        if wcs_guess is None and self.center_deg is not None and self.scale_arcsec is not None:
            wcs_guess = hint_wcs(self.center_deg, self.scale_arcsec, image_shape)
        if wcs_guess is None:
            raise ValueError(
                "AsterismSolver.solve needs wcs_guess (the header WCS, or a header pointing and "
                "pixel scale) and a catalog"
            )
        x, y, _, weight = detection_arrays(detections)
        if len(x) < self.min_matches:
            return failed_solution(self.name, f"only {len(x)} usable detections")
        cat_ra, cat_dec, _ = catalog_arrays(catalog, self.mag_column)
        ny, nx = image_shape
        cx0, cy0 = (nx - 1) / 2.0, (ny - 1) / 2.0
        try:
            ra0, dec0 = (float(v) for v in wcs_guess.pixel_to_world_values(cx0, cy0))
            scale0 = pixel_scale_deg(wcs_guess)
        except Exception as exc:  # a broken header WCS is a bad frame, not a crash
            return failed_solution(self.name, f"unusable header WCS: {exc}")
        if not (np.isfinite(ra0) and np.isfinite(dec0) and scale0 > 0):
            return failed_solution(self.name, "unusable header WCS (no centre or scale)")

        # Catalog in "guess pixels": standard coordinates divided by the guessed scale.
        xi, eta = tangent_plane(cat_ra, cat_dec, ra0, dec0, unit="deg")
        qx, qy = xi / scale0, eta / scale0
        half_diag = 0.5 * math.hypot(nx, ny) * (1 + self.scale_tolerance)
        search = half_diag + self.max_pointing_error_arcmin / 60.0 / scale0
        region = np.isfinite(qx) & (np.hypot(qx, qy) < search)
        q_idx = np.nonzero(region)[0]
        if len(q_idx) < self.min_matches:
            return failed_solution(
                self.name,
                f"only {len(q_idx)} catalog stars within {search * scale0 * 60:.1f} arcmin of "
                "the header pointing",
            )
        n_det = min(self.n_detections, len(x))
        p = np.column_stack([x[:n_det] - cx0, y[:n_det] - cy0])
        # Match the catalog's surface density to the detections': the number of catalog stars
        # taken scales with the area the catalog covers in the search region (a catalog may
        # cover less than the whole circle), estimated from the occupied cells of a grid.
        cell = max(nx, ny) / 8.0
        cells = np.unique(np.floor(np.column_stack([qx[q_idx], qy[q_idx]]) / cell), axis=0)
        area_ratio = max(len(cells) * cell * cell / (nx * ny), 1.0)
        tiers = (self.n_catalog,) if self.n_catalog else (1.2, 2.0, 0.7, 3.0)
        best: tuple[int, np.ndarray, np.ndarray] | None = None
        q_sel = q_idx
        for tier in tiers:
            n_cat = int(tier) if self.n_catalog else round(tier * n_det * area_ratio)
            sel = q_idx[: max(n_cat, 3)]  # the catalog is sorted brightest first
            q = np.column_stack([qx[sel], qy[sel]])
            found = self._best_hypothesis(p, q)
            if found is not None and (best is None or found[0] > best[0]):
                best, q_sel = found, sel
            if best is not None and best[0] >= max(12, 0.3 * n_det):
                break
        if best is None:
            return failed_solution(
                self.name, "no triangle asterism of the detections matched the catalog"
            )
        n_verified, i_match, j_match = best
        n_random = n_det * len(q_sel) / (area_ratio * nx * ny) * math.pi * self.verify_radius_px**2
        if not significant(n_verified, n_random, self.min_matches):
            return failed_solution(
                self.name,
                f"best asterism hypothesis matched only {n_verified} of {n_det} stars "
                f"({n_random:.1f} expected by chance)",
                n_verified,
            )
        # First WCS from the verified matches, then iterate with all detections.
        try:
            wcs = fit_wcs_linear(
                x[:n_det][i_match],
                y[:n_det][i_match],
                cat_ra[q_sel][j_match],
                cat_dec[q_sel][j_match],
                image_shape=image_shape,
            )
        except (ValueError, np.linalg.LinAlgError) as exc:
            return failed_solution(self.name, f"initial WCS fit failed: {exc}", n_verified)
        near = q_idx  # catalog stars near the field only
        return iterate_fit(
            self.name,
            x,
            y,
            weight,
            cat_ra[near],
            cat_dec[near],
            wcs,
            image_shape,
            radii_px=(self.verify_radius_px, 2.0, 1.5),
            sip_degree=self.sip_degree,
            min_matches_sip=self.min_matches_sip,
            min_matches=self.min_matches,
            fitter="linear",
            final_fitter=self.fitter,
            max_fit_stars=self.max_fit_stars,
        )

    def _best_hypothesis(
        self, p: np.ndarray, q: np.ndarray
    ) -> tuple[int, np.ndarray, np.ndarray] | None:
        """Vote on similarity transforms from matched triangles; verify the most voted."""
        tri_p = _triangles(p, self.n_neighbours)
        tri_q = _triangles(q, round(self.n_neighbours * 1.6))
        if len(tri_p) == 0 or len(tri_q) == 0:
            return None
        inv_p, vp, sp, lp = _triangle_invariants(p, tri_p)
        inv_q, vq, sq, lq = _triangle_invariants(q, tri_q)
        keep_p = inv_p[:, 0] > 0.1  # nearly degenerate (collinear) triangles are unstable
        keep_q = inv_q[:, 0] > 0.1
        inv_p, vp, sp, lp = inv_p[keep_p], vp[keep_p], sp[keep_p], lp[keep_p]
        inv_q, vq, sq, lq = inv_q[keep_q], vq[keep_q], sq[keep_q], lq[keep_q]
        if len(inv_p) == 0 or len(inv_q) == 0:
            return None
        pairs = cKDTree(inv_p).query_ball_tree(cKDTree(inv_q), r=self.invariant_tolerance)
        a = np.repeat(np.arange(len(pairs)), [len(v) for v in pairs])
        if len(a) == 0:
            return None
        b = np.concatenate([np.asarray(v, dtype=int) for v in pairs if v])
        ratio = lq[b] / lp[a]
        ok = np.abs(np.log(ratio)) < np.log(1 + self.scale_tolerance)
        a, b = a[ok], b[ok]
        if len(a) == 0:
            return None
        # Similarity transform (with a mirror when the orientations differ) from each pair.
        flip = sp[a] != sq[b]
        zp = p[vp[a], 0] + 1j * p[vp[a], 1]  # (k, 3)
        zp = np.where(flip[:, None], np.conj(zp), zp)
        zq = q[vq[b], 0] + 1j * q[vq[b], 1]
        mp, mq = zp.mean(axis=1, keepdims=True), zq.mean(axis=1, keepdims=True)
        rot = ((zq - mq) * np.conj(zp - mp)).sum(axis=1) / (np.abs(zp - mp) ** 2).sum(axis=1)
        shift = mq[:, 0] - rot * mp[:, 0]
        # Vote in (flip, angle, log scale, shift) bins.
        ang = np.angle(rot)
        keys = np.column_stack(
            [
                flip.astype(int),
                np.floor(ang / np.deg2rad(2.0)),
                np.floor(np.log(np.abs(rot)) / 0.02),
                np.floor(shift.real / 10.0),
                np.floor(shift.imag / 10.0),
            ]
        ).astype(np.int64)
        _, first, counts = np.unique(keys, axis=0, return_index=True, return_counts=True)
        top = first[np.argsort(-counts, kind="stable")[:200]]
        tree_q = cKDTree(q)
        zp_all = p[:, 0] + 1j * p[:, 1]
        # Vectorised verification of all top hypotheses at once.
        zt = np.where(flip[top, None], np.conj(zp_all)[None, :], zp_all[None, :])
        zt = rot[top, None] * zt + shift[top, None]
        dist, j = tree_q.query(
            np.column_stack([zt.real.ravel(), zt.imag.ravel()]),
            distance_upper_bound=self.verify_radius_px,
        )
        hit = np.isfinite(dist).reshape(zt.shape)
        n_hit = hit.sum(axis=1)
        h_best = int(np.argmax(n_hit))
        j = j.reshape(zt.shape)[h_best]
        i_match = np.nonzero(hit[h_best])[0]
        j_match = j[i_match]
        # One catalog star per detection.
        _, uniq = np.unique(j_match, return_index=True)
        i_match, j_match = i_match[uniq], j_match[uniq]
        return len(i_match), i_match, j_match
