"""Matching detections to catalog stars through a WCS, the residuals, and the iterated fit.

`match_catalog` pairs detections and catalog stars (mutual nearest neighbours, `mutual_match`);
`solution_residuals` and `wcs_grid_error_px` measure a solution; `iterate_fit` matches all
detections through a first WCS and refits with a shrinking radius (every solver's last step);
`solution_from_header` turns an external solver's WCS header into an `AstrometrySolution`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from lcdask._utils.skygeom import mean_radec, separation_arcsec, tangent_plane
from lcdask.astrometry.solution import (
    STATUS_OK,
    AstrometrySolution,
    failed_solution,
    pixel_scale_deg,
)
from lcdask.astrometry.wcsfit import fit_wcs

__all__ = [
    "iterate_fit",
    "match_catalog",
    "mutual_match",
    "significant",
    "solution_from_header",
    "solution_residuals",
    "wcs_grid_error_px",
]


def mutual_match(
    px: np.ndarray, py: np.ndarray, qx: np.ndarray, qy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j) of mutual nearest neighbours of points p and q closer than ``radius``.

    Parameters
    ----------
    px, py, qx, qy : numpy.ndarray
        The two sets of points.
    radius : float
        Largest distance of a pair.

    Returns
    -------
    i, j : numpy.ndarray
        Indices into p and q of the pairs: each q keeps only its nearest p.
    """
    if len(px) == 0 or len(qx) == 0:
        return np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    # An unbalanced tree builds in half the time and finds the same nearest neighbours.
    tree_q = cKDTree(np.column_stack([qx, qy]), balanced_tree=False)
    dist, j = tree_q.query(np.column_stack([px, py]), distance_upper_bound=radius)
    ok = np.isfinite(dist)
    i = np.nonzero(ok)[0]
    j = j[ok]
    # Keep, for every q, only its nearest p.
    order = np.lexsort((dist[ok], j))
    j_sorted = j[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = j_sorted[1:] != j_sorted[:-1]
    keep = order[first]
    return i[keep], j[keep]


def match_catalog(
    detections: pd.DataFrame,
    wcs: WCS,
    catalog: pd.DataFrame,
    *,
    radius_arcsec: float = 2.0,
) -> pd.DataFrame:
    """Match detections to catalog stars through a WCS (mutual nearest neighbours).

    Parameters
    ----------
    detections : pandas.DataFrame
        With ``x``, ``y`` (0-based pixels).
    wcs : astropy.wcs.WCS
        The frame's solution.
    catalog : pandas.DataFrame
        With ``ra``, ``dec`` (degrees).
    radius_arcsec : float, optional
        Largest separation of a match.

    Returns
    -------
    pandas.DataFrame
        ``det_index``, ``cat_index`` (row positions in the inputs), ``sep_arcsec``; empty when
        nothing matches.
    """
    x = detections["x"].to_numpy(dtype=float)
    y = detections["y"].to_numpy(dtype=float)
    empty = pd.DataFrame(
        {"det_index": np.zeros(0, int), "cat_index": np.zeros(0, int), "sep_arcsec": []}
    )
    if len(x) == 0 or len(catalog) == 0:
        return empty
    ra, dec = wcs.pixel_to_world_values(x, y)
    ra0, dec0 = mean_radec(np.asarray(ra), np.asarray(dec))
    xi_d, eta_d = tangent_plane(ra, dec, ra0, dec0, unit="deg")
    xi_c, eta_c = tangent_plane(
        catalog["ra"].to_numpy(float), catalog["dec"].to_numpy(float), ra0, dec0, unit="deg"
    )
    ok_c = np.isfinite(xi_c)
    idx_c = np.nonzero(ok_c)[0]
    i, j = mutual_match(
        xi_d * 3600, eta_d * 3600, xi_c[ok_c] * 3600, eta_c[ok_c] * 3600, radius_arcsec
    )
    sep = np.hypot(xi_d[i] - xi_c[idx_c[j]], eta_d[i] - eta_c[idx_c[j]]) * 3600
    return pd.DataFrame({"det_index": i, "cat_index": idx_c[j], "sep_arcsec": sep})


def solution_residuals(
    wcs: WCS, x: np.ndarray, y: np.ndarray, ra: np.ndarray, dec: np.ndarray
) -> np.ndarray:
    """Separations (arcsec) between the WCS positions of pixels and their catalog positions.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        A celestial WCS.
    x, y : numpy.ndarray
        0-based pixel positions.
    ra, dec : numpy.ndarray
        Catalog positions (degrees).

    Returns
    -------
    numpy.ndarray
        One separation per point.
    """
    r, d = wcs.pixel_to_world_values(np.asarray(x, float), np.asarray(y, float))
    return separation_arcsec(r, d, ra, dec)


def wcs_grid_error_px(
    wcs: WCS, reference: WCS, image_shape: tuple[int, int], *, n_grid: int = 16
) -> float:
    """RMS distance (in ``reference`` pixels) between two WCSs over a grid of pixel positions.

    Each grid pixel is taken to the sky through ``wcs`` and back to pixels through
    ``reference``.

    Parameters
    ----------
    wcs, reference : astropy.wcs.WCS
        The solution and the truth.
    image_shape : tuple of int
        ``(ny, nx)``.
    n_grid : int, optional
        Grid points per axis.

    Returns
    -------
    float
        RMS pixel distance.
    """
    gx, gy = np.meshgrid(
        np.linspace(0, image_shape[1] - 1, n_grid), np.linspace(0, image_shape[0] - 1, n_grid)
    )
    ra, dec = wcs.pixel_to_world_values(gx.ravel(), gy.ravel())
    rx, ry = reference.world_to_pixel_values(ra, dec)
    return float(np.sqrt(np.mean((rx - gx.ravel()) ** 2 + (ry - gy.ravel()) ** 2)))


def significant(n_matches: int, n_random: float, min_matches: int) -> bool:
    """True when ``n_matches`` is well above the ``n_random`` matches expected by chance.

    Parameters
    ----------
    n_matches : int
        Matches found.
    n_random : float
        Matches expected by chance.
    min_matches : int
        Matches needed in any case.

    Returns
    -------
    bool
        ``n_matches >= max(min_matches, n_random + 5 sqrt(n_random) + 3)``.
    """
    return n_matches >= max(min_matches, n_random + 5.0 * math.sqrt(n_random) + 3.0)


def iterate_fit(
    solver: str,
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    cat_ra: np.ndarray,
    cat_dec: np.ndarray,
    wcs: WCS,
    image_shape: tuple[int, int],
    *,
    radii_px: Sequence[float],
    sip_degree: int | None,
    min_matches_sip: int,
    min_matches: int,
    fitter: str,
    final_fitter: str,
    max_fit_stars: int,
    clip_sigma: float = 4.0,
    start_xy: tuple[np.ndarray, np.ndarray] | None = None,
) -> AstrometrySolution:
    """Match all detections to the catalog through ``wcs`` and refit, shrinking the radius.

    At each radius of ``radii_px``: mutual nearest neighbours, the brightest ``max_fit_stars``
    matches fitted (``fitter``; ``final_fitter`` at the last radius; SIP with at least
    ``min_matches_sip`` matches), outliers beyond ``clip_sigma`` rejected once and refitted.
    The last step's matches must be significant against chance.

    Parameters
    ----------
    solver : str
        Name of the solver, for the solution.
    x, y, weight : numpy.ndarray
        Detections (`detection_arrays`).
    cat_ra, cat_dec : numpy.ndarray
        Catalog stars (degrees).
    wcs : astropy.wcs.WCS
        The first WCS.
    image_shape : tuple of int
        ``(ny, nx)``.
    radii_px, sip_degree, min_matches_sip, min_matches, fitter, final_fitter, max_fit_stars
        As described above.
    clip_sigma : float, optional
        Outlier rejection, in units of the residuals' sigma.
    start_xy : tuple of numpy.ndarray, optional
        The catalog's pixel positions through ``wcs`` (saves their projection in the first
        step).

    Returns
    -------
    AstrometrySolution
        Failed (with the reason) when too few stars match or the matches are not significant.
    """
    ny, nx = image_shape
    n_matches = 0
    ii = jj = np.zeros(0, dtype=int)
    for step, radius in enumerate(radii_px):
        last = step == len(radii_px) - 1
        if step == 0 and start_xy is not None:
            cx, cy = start_xy
        else:
            with warnings.catch_warnings():
                # SIP inverses extrapolated to stars far off the frame may not converge: harmless.
                warnings.simplefilter("ignore", UserWarning)
                cx, cy = wcs.world_to_pixel_values(cat_ra, cat_dec)
        cx, cy = np.asarray(cx, float), np.asarray(cy, float)
        inside = np.isfinite(cx) & (cx > -radius) & (cx < nx - 1 + radius)
        inside &= (cy > -radius) & (cy < ny - 1 + radius)
        idx = np.nonzero(inside)[0]
        ii, j = mutual_match(x, y, cx[idx], cy[idx], radius)
        jj = idx[j]
        n_matches = len(ii)
        if n_matches < min_matches:
            return failed_solution(
                solver,
                f"only {n_matches} detections matched the catalog within {radius:.2g} px "
                f"(need {min_matches})",
                n_matches,
            )
        # The brightest matches carry the fit; the faint ones add noise and time.
        if len(ii) > max_fit_stars:
            keep = np.argsort(-weight[ii], kind="stable")[:max_fit_stars]
            ii, jj = ii[keep], jj[keep]
        sip = sip_degree if (sip_degree and len(ii) >= min_matches_sip) else None
        use = fitter if not last else final_fitter
        if use == "astropy":
            # An unweighted fit: leave out the faint stars (S/N < 10) when enough bright remain.
            bright = weight[ii] >= 1.0 / (0.2**2 + 0.1**2)
            if bright.sum() >= max(2 * min_matches, 20):
                ii, jj = ii[bright], jj[bright]
            sip = sip_degree if (sip_degree and len(ii) >= min_matches_sip) else None
        w = weight[ii]
        try:
            new = fit_wcs(use, x[ii], y[ii], cat_ra[jj], cat_dec[jj], sip, w, image_shape)
            # Reject outliers (wrong matches, blends) once and refit.
            res = solution_residuals(new, x[ii], y[ii], cat_ra[jj], cat_dec[jj])
            scale = pixel_scale_deg(new) * 3600
            res_px = res / scale
            # Distances of a 2-D Gaussian scatter: median = 1.177 sigma.
            sigma = float(np.median(res_px)) / 1.177 + 1e-3
            good = res_px < clip_sigma * sigma
            if good.sum() >= min_matches and good.sum() < len(ii):
                ii, jj, w = ii[good], jj[good], w[good]
                sip = sip_degree if (sip_degree and len(ii) >= min_matches_sip) else None
                new = fit_wcs(use, x[ii], y[ii], cat_ra[jj], cat_dec[jj], sip, w, image_shape)
        except (ValueError, np.linalg.LinAlgError) as exc:
            return failed_solution(solver, f"WCS fit failed: {exc}", n_matches)
        wcs = new
        if last:
            # Chance matches: detections x catalog surface density x match area.
            density = len(idx) / ((nx + 2 * radius) * (ny + 2 * radius))
            n_random = len(x) * density * math.pi * radius**2
            if not significant(n_matches, n_random, min_matches):
                return failed_solution(
                    solver,
                    f"{n_matches} matches within {radius:.2g} px are not significant "
                    f"({n_random:.1f} expected by chance)",
                    n_matches,
                )
    res = solution_residuals(wcs, x[ii], y[ii], cat_ra[jj], cat_dec[jj])
    rms = float(np.sqrt(np.mean(res**2)))
    scale = pixel_scale_deg(wcs) * 3600
    kind = "TAN-SIP" if wcs.sip is not None else "TAN"
    return AstrometrySolution(
        wcs=wcs,
        n_matches=len(ii),
        rms_arcsec=rms,
        rms_px=rms / scale,
        status=STATUS_OK,
        message=f"{kind} fit to {len(ii)} stars, rms {rms:.3f} arcsec",
        solver=solver,
    )


def solution_from_header(
    header: fits.Header | dict,
    solver: str,
    x: np.ndarray,
    y: np.ndarray,
    image_shape: tuple[int, int],
    catalog: pd.DataFrame | None,
    mag_column: str,
    corr: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> AstrometrySolution:
    """An AstrometrySolution from a solver's WCS header and its matches (or the catalog's).

    Parameters
    ----------
    header : astropy.io.fits.Header or dict
        The WCS header an external solver returned.
    solver : str
        Its name.
    x, y : numpy.ndarray
        The detections given to it (0-based pixels).
    image_shape : tuple of int
        ``(ny, nx)``.
    catalog : pandas.DataFrame or None
        Reference stars for the residuals when ``corr`` is not given.
    mag_column : str
        The catalog's magnitude column.
    corr : tuple of numpy.ndarray, optional
        The solver's own matches: field x, y (0-based) and index ra, dec.

    Returns
    -------
    AstrometrySolution
        Failed when the header holds no readable celestial WCS.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            wcs = WCS(fits.Header(header), naxis=2, relax=True).celestial
        except Exception as exc:
            return failed_solution(solver, f"unreadable WCS header from the solver: {exc}")
    if not wcs.has_celestial:
        return failed_solution(solver, "the solver returned a header without a celestial WCS")
    wcs.pixel_shape = (int(image_shape[1]), int(image_shape[0]))
    scale = pixel_scale_deg(wcs) * 3600.0
    if corr is not None and len(corr[0]):
        fx, fy, ra, dec = corr
    elif catalog is not None and len(catalog):
        det = pd.DataFrame({"x": x, "y": y})
        m = match_catalog(det, wcs, catalog, radius_arcsec=3.0 * scale)
        fx, fy = x[m["det_index"]], y[m["det_index"]]
        cat = catalog.iloc[m["cat_index"].to_numpy()]
        ra, dec = cat["ra"].to_numpy(float), cat["dec"].to_numpy(float)
    else:
        fx = fy = ra = dec = np.zeros(0)
    if len(fx):
        res = solution_residuals(wcs, fx, fy, ra, dec)
        rms = float(np.sqrt(np.mean(res**2)))
    else:
        rms = float("nan")
    return AstrometrySolution(
        wcs=wcs,
        n_matches=len(fx),
        rms_arcsec=rms,
        rms_px=rms / scale,
        status=STATUS_OK,
        message=f"solved by {solver}; {len(fx)} matched stars",
        solver=solver,
    )
