"""Refinement of a frame's WCS from a neighbouring frame's solution (`refine_wcs`).

`refine_wcs` is the cheap per-frame step of a sequence: from a neighbouring frame's solution it
predicts the catalog positions, finds the drift (tens of pixels) by voting on offsets, matches
within a radius and refits (a weighted linear least-squares TAN or TAN-SIP fit, a few ms). When
no drift is found within its search radius it searches the whole field (`pixel_offset`, a 2-D
histogram of all pairwise offsets: drifts of hundreds of pixels, ~10-30 ms). With few stars in
common (a frame drifted mostly off its neighbour) the neighbour's WCS moved by a shift is kept
rather than a full fit that would extrapolate its noise. A frame turned against its neighbour
(a meridian flip: 180 deg; field rotation, re-framing: any angle) is found when both searches
fail, from the neighbour's WCS turned by 180 deg, then by triangle asterisms at its scale.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd
from astropy.wcs import WCS, Sip

from lcdask._utils.skygeom import tangent_plane
from lcdask.astrometry.asterism import AsterismSolver
from lcdask.astrometry.inputs import catalog_arrays, detection_arrays
from lcdask.astrometry.matching import iterate_fit, mutual_match, significant, solution_residuals
from lcdask.astrometry.solution import (
    AstrometrySolution,
    celestial_wcs,
    failed_solution,
    pixel_scale_deg,
)
from lcdask.astrometry.wcsfit import check_fitter

__all__ = ["pixel_offset", "refine_wcs"]


def _offset_vote(
    px: np.ndarray, py: np.ndarray, qx: np.ndarray, qy: np.ndarray, max_shift: float, bin_px: float
) -> tuple[float, float, int]:
    """Most common offset q - p among all pairs closer than ``max_shift`` (a 2-D histogram)."""
    dx = (qx[None, :] - px[:, None]).ravel()
    dy = (qy[None, :] - py[:, None]).ravel()
    near = (np.abs(dx) < max_shift) & (np.abs(dy) < max_shift)
    dx, dy = dx[near], dy[near]
    if len(dx) == 0:
        return 0.0, 0.0, 0
    n_bins = max(int(np.ceil(2 * max_shift / bin_px)), 1)
    hist, ex, ey = np.histogram2d(
        dx, dy, bins=n_bins, range=[[-max_shift, max_shift], [-max_shift, max_shift]]
    )
    # Sum 2x2 neighbouring bins so that a peak on a bin edge is not split.
    summed = hist[:-1, :-1] + hist[1:, :-1] + hist[:-1, 1:] + hist[1:, 1:] if n_bins > 1 else hist
    ix, iy = np.unravel_index(int(np.argmax(summed)), summed.shape)
    sel = (dx >= ex[ix]) & (dx < ex[min(ix + 2, n_bins)])
    sel &= (dy >= ey[iy]) & (dy < ey[min(iy + 2, n_bins)])
    if not sel.any():
        return 0.0, 0.0, 0
    return float(np.median(dx[sel])), float(np.median(dy[sel])), int(sel.sum())


def pixel_offset(
    px: np.ndarray,
    py: np.ndarray,
    qx: np.ndarray,
    qy: np.ndarray,
    *,
    bin_px: float = 4.0,
) -> tuple[float, float, int, float]:
    """The translation that takes most points p onto points q, however large it is.

    Every pair (p, q) votes for its offset ``q - p`` in a 2-D histogram that spans all the
    offsets the two sets allow (no search radius); the translation shared by the stars the two
    sets have in common piles up in one place, while chance pairs spread over the whole plane.
    The peak is the largest sum of 2 x 2 neighbouring bins; the translation is the median
    offset of the pairs in it. A small rotation between the sets spreads the peak over
    ``rotation x field radius`` pixels: 4 px bins hold 0.5 degree on a 1000 px field.

    Points are 0-based pixel positions, brightest first is best: the cost is ``len(p) x len(q)``
    (50 x 100 points take about a millisecond).

    Parameters
    ----------
    px, py : numpy.ndarray
        The first set (e.g. a frame's brightest detections).
    qx, qy : numpy.ndarray
        The second set (e.g. the same field's stars through a neighbour's WCS).
    bin_px : float, optional
        Histogram bin; the peak window is two bins wide.

    Returns
    -------
    dx, dy : float
        The translation ``q - p`` (0, 0 when either set is empty).
    n_votes : int
        Pairs in the peak window (about the number of stars in common).
    n_chance : float
        Mean count of the windows around the peak (a ring from 3 to 12 bins away): the votes
        expected by chance there. Compare with ``n_votes`` before trusting the peak.

    Raises
    ------
    ValueError
        When ``bin_px`` is not positive.
    """
    if not bin_px > 0:
        raise ValueError(f"bin_px must be positive, not {bin_px!r}")
    px, py, qx, qy = (np.asarray(v, float).ravel() for v in (px, py, qx, qy))
    if len(px) == 0 or len(qx) == 0:
        return 0.0, 0.0, 0, 0.0
    dx = (qx[None, :] - px[:, None]).ravel()
    dy = (qy[None, :] - py[:, None]).ravel()
    ok = np.isfinite(dx) & np.isfinite(dy)
    dx, dy = dx[ok], dy[ok]
    if len(dx) == 0:
        return 0.0, 0.0, 0, 0.0
    # Bins aligned on a grid that covers every offset (plus one bin for the 2 x 2 sums).
    x0, y0 = dx.min() - bin_px, dy.min() - bin_px
    n_x = int((dx.max() - x0) // bin_px) + 2
    n_y = int((dy.max() - y0) // bin_px) + 2
    hist, ex, ey = np.histogram2d(
        dx, dy, bins=[n_x, n_y], range=[[x0, x0 + n_x * bin_px], [y0, y0 + n_y * bin_px]]
    )
    summed = hist[:-1, :-1] + hist[1:, :-1] + hist[:-1, 1:] + hist[1:, 1:]
    ix, iy = np.unravel_index(int(np.argmax(summed)), summed.shape)
    sel = (dx >= ex[ix]) & (dx < ex[ix + 2]) & (dy >= ey[iy]) & (dy < ey[iy + 2])
    # The chance level near the peak: the mean window in a ring around it.
    lo_x, hi_x = max(ix - 12, 0), min(ix + 13, summed.shape[0])
    lo_y, hi_y = max(iy - 12, 0), min(iy + 13, summed.shape[1])
    box = summed[lo_x:hi_x, lo_y:hi_y]
    gx, gy = np.meshgrid(np.arange(lo_x, hi_x) - ix, np.arange(lo_y, hi_y) - iy, indexing="ij")
    ring = np.maximum(np.abs(gx), np.abs(gy)) >= 3
    n_chance = float(box[ring].mean()) if ring.any() else 0.0
    return float(np.median(dx[sel])), float(np.median(dy[sel])), int(sel.sum()), n_chance


def refine_wcs(
    detections: pd.DataFrame,
    wcs_guess: WCS,
    catalog: pd.DataFrame,
    *,
    image_shape: tuple[int, int] | None = None,
    max_shift_px: float = 60.0,
    match_radius_px: float = 2.0,
    n_bright: int = 60,
    sip_degree: int | None = None,
    min_matches: int = 6,
    min_matches_sip: int = 40,
    fitter: str = "linear",
    mag_column: str = "mag",
    max_fit_stars: int = 300,
    wide_search: bool = True,
    rotation_search: bool = True,
) -> AstrometrySolution:
    """Refine a neighbouring frame's WCS for this frame: find the drift, match, refit.

    The drift is first looked for within ``max_shift_px`` (a vote on the offsets between the
    brightest detections and the brightest predicted stars, 2 px bins). When that finds no
    drift, or the fit from it fails, and ``wide_search`` is set, the drift is looked for over
    the whole field with `pixel_offset` (any shift that leaves stars in common, and a rotation
    of up to about half a degree): the catalog stars within one field width of the frame are
    taken, as many of the brightest as match the detections' surface density.

    When both fail (or find only a doubtful match: fewer than ``3 * min_matches`` stars, or an
    rms over half the match radius) and ``rotation_search`` is set, the frame may be turned
    against the guess: the same searches start from the guess turned by 180 deg about the
    frame centre (a German equatorial mount's meridian flip, ~10-30 ms more), then (with
    ``wide_search``) triangle asterisms of the detections (`AsterismSolver`, rotation
    invariant) are matched to the catalog stars within a field width of the guess's pointing
    at its scale (any angle, ~50-300 ms). The solution with the most matched stars is kept;
    its message starts with the rotation and the drift found.

    Parameters
    ----------
    detections : pandas.DataFrame
        This frame's detections (``x``, ``y``, ``flux``; ``snr``, ``flags`` when present).
    wcs_guess : astropy.wcs.WCS
        A nearby frame's solution (any WCS of the same field: within ``max_shift_px`` for the
        fast search, up to a field width off with ``wide_search``, and a small rotation).
    catalog : pandas.DataFrame
        Reference stars (``ra``, ``dec``, and ``mag_column`` to pick the brightest).
    image_shape : tuple of int, optional
        ``(ny, nx)``; default from the extent of the detections.
    max_shift_px : float, optional
        Largest drift between the guess and this frame of the fast search.
    match_radius_px : float, optional
        Match radius once the drift is removed.
    n_bright : int, optional
        Brightest detections and predicted stars used to vote on the drift.
    sip_degree : int, optional
        SIP degree of the fit (None: TAN; with a SIP guess, its degree is kept by default).
    min_matches, min_matches_sip : int, optional
        Matches needed for a solution and before fitting SIP terms.
    fitter : {"linear", "astropy"}, optional
        `fit_wcs_linear` (weighted, ~1 ms) or astropy's ``fit_wcs_from_points`` (~30-120 ms).
    mag_column : str, optional
        Catalog magnitude column.
    max_fit_stars : int, optional
        Use at most this many (brightest) matches in the fit.
    wide_search : bool, optional
        Search the whole field (`pixel_offset`) when the fast search fails.
    rotation_search : bool, optional
        When the searches fail, search again with the guess turned by 180 deg, then at any
        angle (triangle asterisms, with ``wide_search`` only).

    Returns
    -------
    AstrometrySolution
        ``status == "failed"`` (never an exception) when the frame does not match; the message
        of a solution found by the wide search starts with the drift it found, of one found
        turned with the rotation and drift: ``"turned 180 deg (meridian flip?) and drift
        (dx, dy) px ..."``, ``"turned 30.0 deg and drift (dx, dy) px found by triangle
        asterisms: ..."`` (the drift of the frame centre after turning about it).
    """
    name = "refine"
    check_fitter(fitter)
    if wcs_guess is None:
        raise ValueError("refine_wcs needs a wcs_guess (a neighbouring frame's solution)")
    x, y, _, weight = detection_arrays(detections)
    if len(x) < min_matches:
        return failed_solution(name, f"only {len(x)} usable detections")
    if image_shape is None:
        image_shape = (int(np.ceil(y.max())) + 1, int(np.ceil(x.max())) + 1)
    cat_ra, cat_dec, _ = catalog_arrays(catalog, mag_column)
    if sip_degree is None and wcs_guess.sip is not None:
        sip_degree = int(wcs_guess.sip.a_order)
    drift = _DriftSearch(
        name=name,
        x=x,
        y=y,
        weight=weight,
        cat_ra=cat_ra,
        cat_dec=cat_dec,
        image_shape=image_shape,
        max_shift_px=max_shift_px,
        match_radius_px=match_radius_px,
        nb=min(n_bright, len(x)),
        sip_degree=sip_degree,
        min_matches=min_matches,
        min_matches_sip=min_matches_sip,
        fitter=fitter,
        mag_column=mag_column,
        max_fit_stars=max_fit_stars,
        wide_search=wide_search,
    )
    solution = drift.search(wcs_guess)
    if not rotation_search or drift.convincing(solution):
        return solution
    return _search_turned(drift, solution, detections, wcs_guess, catalog)


@dataclasses.dataclass(frozen=True)
class _DriftSearch:
    """The drift searches of `refine_wcs` on one frame: its detections (``x``, ``y``,
    ``weight``), the catalog (``cat_ra``, ``cat_dec``) and the options (``nb``: the brightest
    detections that vote on the drift)."""

    name: str
    x: np.ndarray
    y: np.ndarray
    weight: np.ndarray
    cat_ra: np.ndarray
    cat_dec: np.ndarray
    image_shape: tuple[int, int]
    max_shift_px: float
    match_radius_px: float
    nb: int
    sip_degree: int | None
    min_matches: int
    min_matches_sip: int
    fitter: str
    mag_column: str
    max_fit_stars: int
    wide_search: bool

    def shifted_fit(
        self,
        guess0: WCS,
        ra: np.ndarray,
        dec: np.ndarray,
        cx: np.ndarray,
        cy: np.ndarray,
        dx: float,
        dy: float,
        radii_px: tuple[float, ...],
    ) -> AstrometrySolution:
        """The fit from the guess shifted by (dx, dy), kept as a pure shift when that is better.

        The catalog through the shifted guess is its projection ``(cx, cy)`` moved by the shift.
        """
        x, y, weight, image_shape = self.x, self.y, self.weight, self.image_shape
        guess, guess_xy = _shifted(guess0, dx, dy), (cx + dx, cy + dy)
        solution = iterate_fit(
            self.name,
            x,
            y,
            weight,
            ra,
            dec,
            guess,
            image_shape,
            radii_px=radii_px,
            sip_degree=self.sip_degree,
            min_matches_sip=self.min_matches_sip,
            min_matches=self.min_matches,
            fitter=self.fitter,
            final_fitter=self.fitter,
            max_fit_stars=self.max_fit_stars,
            start_xy=guess_xy,
        )
        if not solution.ok:
            return solution
        return _shift_if_better(
            solution,
            guess,
            x,
            y,
            weight,
            ra,
            dec,
            image_shape,
            self.match_radius_px,
            guess_xy=guess_xy,
        )

    def search(self, guess0: WCS) -> AstrometrySolution:
        """The fast drift vote from ``guess0``, then (``wide_search``) the whole field."""
        name, nb, min_matches = self.name, self.nb, self.min_matches
        max_shift_px, match_radius_px = self.max_shift_px, self.match_radius_px
        try:
            ra, dec, cx, cy = _project_catalog(
                guess0, self.cat_ra, self.cat_dec, self.image_shape, max_shift_px
            )
        except Exception as exc:  # a broken guess is a failed frame, not a crash
            return failed_solution(name, f"cannot project the catalog through the guess WCS: {exc}")
        failure = failed_solution(
            name, f"only {len(ra)} catalog stars fall on the frame through the guess"
        )
        if len(ra) >= min_matches:
            # Drift: vote on the offsets between the brightest detections and the brightest stars.
            ib = slice(0, 2 * nb)
            dx, dy, n_vote = _offset_vote(
                cx[ib], cy[ib], self.x[:nb], self.y[:nb], max_shift_px, 2.0
            )
            if n_vote >= min(min_matches, 3):
                radii = (max(3.0, 1.5 * match_radius_px), match_radius_px)
                failure = self.shifted_fit(guess0, ra, dec, cx, cy, dx, dy, radii)
                if failure.ok:
                    return failure
                if not self.wide_search:
                    return failure
            else:
                failure = failed_solution(
                    name, f"no common drift found within {max_shift_px:.0f} px"
                )
        if not self.wide_search:
            return failure
        return self.whole_field(guess0, failure)

    def whole_field(self, guess0: WCS, failure: AstrometrySolution) -> AstrometrySolution:
        """The drift over the whole field (`pixel_offset`) from ``guess0``, after the fast
        search's ``failure``."""
        name, nb, min_matches = self.name, self.nb, self.min_matches
        ny, nx = self.image_shape
        # The whole field: catalog stars up to a field width off, at the detections' density.
        try:
            ra, dec, cx, cy = _project_catalog(
                guess0, self.cat_ra, self.cat_dec, self.image_shape, max(nx, ny)
            )
        except Exception as exc:
            return failed_solution(name, f"cannot project the catalog through the guess WCS: {exc}")
        if len(ra) < min_matches:
            return failure
        cell = max(nx, ny) / 8.0
        n_cells = len(np.unique(np.floor(np.column_stack([cx, cy]) / cell), axis=0))
        area_ratio = max(n_cells * cell * cell / (nx * ny), 1.0)
        n_q = max(round(2 * nb * area_ratio), 2 * nb)
        bin_px = 4.0
        dx, dy, n_vote, n_chance = pixel_offset(
            cx[:n_q], cy[:n_q], self.x[:nb], self.y[:nb], bin_px=bin_px
        )
        if not significant(n_vote, n_chance, min_matches):
            return failed_solution(
                name,
                f"{failure.message}; no common drift over the whole field either (best {n_vote} "
                f"stars in common, {n_chance:.1f} by chance)",
                failure.n_matches,
            )
        radii = (2 * bin_px, max(3.0, 1.5 * self.match_radius_px), self.match_radius_px)
        solution = self.shifted_fit(guess0, ra, dec, cx, cy, dx, dy, radii)
        found = (
            f"drift ({dx:.0f}, {dy:.0f}) px found over the whole field ({n_vote} stars in common)"
        )
        return dataclasses.replace(solution, message=f"{found}: {solution.message}")

    def convincing(self, found: AstrometrySolution) -> bool:
        """A solution not to second-guess by turning the frame."""
        # Chance matches (uniform within the last radius) have an rms of 0.7 radius; a frame
        # turned away from the guess can give a few of them a significant-looking fit.
        return found.ok and (
            found.n_matches >= 3 * self.min_matches and found.rms_px <= 0.5 * self.match_radius_px
        )


def _search_turned(
    drift: _DriftSearch,
    solution: AstrometrySolution,
    detections: pd.DataFrame,
    wcs_guess: WCS,
    catalog: pd.DataFrame,
) -> AstrometrySolution:
    """The frame turned against the guess: the searches from the guess turned by 180 deg, then
    (``wide_search``) triangle asterisms at any angle; the solution with the most matched stars
    among these and the plain search's ``solution``."""
    name, image_shape, wide_search = drift.name, drift.image_shape, drift.wide_search
    ny, nx = image_shape
    # A meridian flip: the camera turned 180 deg with the tube, often with a shift.
    candidates = [solution]
    turned = _turned_180(wcs_guess, image_shape)
    flipped = drift.search(turned)
    if flipped.ok:
        _, dx, dy = _turn_and_drift(flipped.wcs, wcs_guess, image_shape)
        found = "turned 180 deg (meridian flip?) and "
        if not flipped.message.startswith("drift ("):
            found += f"drift ({dx:.0f}, {dy:.0f}) px: "
        candidates.append(dataclasses.replace(flipped, message=found + flipped.message))
    if wide_search and not drift.convincing(flipped):
        # Any angle: triangle asterisms (rotation-invariant) at the guess's scale, within a
        # field width of its pointing; the match is then refined as any frame's.
        asterism = AsterismSolver(
            n_detections=max(drift.nb, 4),
            max_pointing_error_arcmin=max(nx, ny) * pixel_scale_deg(wcs_guess) * 60,
            scale_tolerance=0.03,
            min_matches=drift.min_matches,
            sip_degree=drift.sip_degree,
            min_matches_sip=drift.min_matches_sip,
            fitter="linear",
            mag_column=drift.mag_column,
            max_fit_stars=drift.max_fit_stars,
            name=name,
        ).solve(detections, image_shape, wcs_guess=wcs_guess, catalog=catalog)
        if asterism.ok:
            refined = drift.search(asterism.wcs)
            found = refined if refined.ok else asterism
            angle, dx, dy = _turn_and_drift(found.wcs, wcs_guess, image_shape)
            message = (
                f"turned {angle:.1f} deg and drift ({dx:.0f}, {dy:.0f}) px found by triangle "
                f"asterisms: {found.message}"
            )
            candidates.append(dataclasses.replace(found, message=message))
    solved = [c for c in candidates if c.ok]
    if solved:
        return max(solved, key=lambda c: c.n_matches)  # the first of equals: the plain search
    return failed_solution(
        name,
        f"{solution.message}; not found turned by 180 deg either"
        + (", nor at any angle by triangle asterisms" if wide_search else ""),
        solution.n_matches,
    )


def _turned_180(wcs: WCS, image_shape: tuple[int, int]) -> WCS:
    """``wcs`` turned by 180 deg about the frame centre: pixel (x, y) is its (nx-1-x, ny-1-y).

    CD (or PC) changes sign and CRPIX goes to ``n + 1 - CRPIX`` (FITS pixels); a SIP term
    ``u**p v**q`` of the forward and inverse polynomials changes by ``(-1)**(p + q + 1)``,
    which keeps the distortion exactly.
    """
    ny, nx = image_shape
    turned = wcs.deepcopy()
    if turned.wcs.has_cd():
        turned.wcs.cd = -np.asarray(turned.wcs.cd)
    else:
        turned.wcs.pc = -np.asarray(turned.wcs.get_pc())
    turned.wcs.crpix = np.array([nx + 1.0, ny + 1.0]) - np.asarray(turned.wcs.crpix)
    if wcs.sip is not None:
        s = wcs.sip

        def odd(coeff):
            if coeff is None:
                return None
            p, q = np.indices(np.shape(coeff))
            return np.asarray(coeff) * (-1.0) ** (p + q + 1)

        turned.sip = Sip(odd(s.a), odd(s.b), odd(s.ap), odd(s.bp), turned.wcs.crpix)
    turned.wcs.set()
    return turned


def _turn_and_drift(
    wcs: WCS, guess: WCS, image_shape: tuple[int, int]
) -> tuple[float, float, float]:
    """Rotation (deg) and drift (px) taking ``guess``'s pixels to ``wcs``'s: a star at guess
    pixel ``p`` is at ``R (p - c) + c + (dx, dy)`` with ``c`` the frame centre."""
    ny, nx = image_shape
    c = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])
    turn = (
        np.linalg.inv(celestial_wcs(wcs).pixel_scale_matrix)
        @ celestial_wcs(guess).pixel_scale_matrix
    )
    angle = math.atan2(turn[1, 0], turn[0, 0])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    g = np.array([float(v) for v in guess.world_to_pixel_values(*wcs.pixel_to_world_values(*c))])
    dx, dy = -rot @ (g - c)
    return math.degrees(angle), float(dx), float(dy)


def _project_catalog(
    wcs: WCS, ra: np.ndarray, dec: np.ndarray, image_shape: tuple[int, int], margin_px: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Catalog stars (ra, dec, x, y) that fall within ``margin_px`` of the frame through a WCS.

    Keeps the catalog's order (brightest first). Raises when the WCS cannot project.
    """
    ny, nx = image_shape
    # Cheap pre-selection on the sky, then the exact projection of the survivors.
    ra0, dec0 = (float(v) for v in wcs.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2))
    scale = pixel_scale_deg(wcs)
    xi, eta = tangent_plane(ra, dec, ra0, dec0, unit="deg")
    reach = (0.5 * math.hypot(nx, ny) + margin_px) * scale * 1.2
    near = np.nonzero(np.isfinite(xi) & (np.hypot(xi, eta) < reach))[0]
    ra, dec = ra[near], dec[near]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        cx, cy = (np.asarray(v, float) for v in wcs.world_to_pixel_values(ra, dec))
    inside = np.isfinite(cx) & (cx > -margin_px) & (cx < nx - 1 + margin_px)
    inside &= (cy > -margin_px) & (cy < ny - 1 + margin_px)
    return ra[inside], dec[inside], cx[inside], cy[inside]


def _shift_if_better(
    solution: AstrometrySolution,
    guess: WCS,
    x: np.ndarray,
    y: np.ndarray,
    weight: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    image_shape: tuple[int, int],
    radius_px: float,
    *,
    guess_xy: tuple[np.ndarray, np.ndarray] | None = None,
) -> AstrometrySolution:
    """The fitted solution, or the guess moved by a shift alone when that maps the field better.

    A full fit (scale, rotation, shear, shift) to few stars, or to stars in one corner (a
    frame that has drifted most of the way off its neighbour), extrapolates its noise over the
    rest of the field; the neighbour's own scale and rotation, moved by the mean offset, do
    not. The shift is taken unless the two differ over the field significantly more than the
    full fit's own expected error there (from its residuals and the leverage of the stars'
    positions on a grid): a real change of rotation or scale between the frames.

    ``guess_xy``, when given, is the pixel positions of (ra, dec) through ``guess``: a shifted
    WCS maps them to those positions plus the shift (`_shifted`), without projecting again.
    """
    wcs = solution.wcs
    cx, cy = (np.asarray(v, float) for v in wcs.world_to_pixel_values(ra, dec))
    i, j = mutual_match(x, y, cx, cy, radius_px)
    # The stars the fit kept: without wrong matches and blends (4 sigma, as `iterate_fit`).
    distance = np.hypot(x[i] - cx[j], y[i] - cy[j])
    good = distance < 4 * (np.median(distance) / 1.177 + 1e-3) if len(i) else distance > 0
    i, j = i[good], j[good]
    n = len(i)
    if n < 3:
        return solution
    w = weight[i]
    shifted = guess
    total = np.zeros(2)  # the shift of ``shifted`` from ``guess``
    for _ in range(2):
        if guess_xy is None:
            gx, gy = (np.asarray(v, float) for v in shifted.world_to_pixel_values(ra[j], dec[j]))
        else:
            gx, gy = guess_xy[0][j] + total[0], guess_xy[1][j] + total[1]
        step = np.sum(w * (x[i] - gx)) / w.sum(), np.sum(w * (y[i] - gy)) / w.sum()
        shifted = _shifted(shifted, *step)
        total += step
    ny, nx = image_shape
    gx, gy = (g.ravel() for g in np.meshgrid(np.linspace(0, nx - 1, 8), np.linspace(0, ny - 1, 8)))
    x0, y0, size = (nx - 1) / 2, (ny - 1) / 2, max(nx, ny)
    design = np.column_stack([np.ones(n), (x[i] - x0) / size, (y[i] - y0) / size])
    grid = np.column_stack([np.ones(len(gx)), (gx - x0) / size, (gy - y0) / size])
    try:
        cov = np.linalg.inv(design.T @ (w[:, None] * design))
    except np.linalg.LinAlgError:
        cov = None
    residual2 = (x[i] - cx[j]) ** 2 + (y[i] - cy[j]) ** 2
    scale2 = float(np.sum(w * residual2)) / max(2 * n - 6, 1)  # variance per unit weight
    if cov is None:
        full2 = np.inf
    else:
        full2 = 2 * scale2 * float(np.mean(np.einsum("ij,jk,ik->i", grid, cov, grid)))
    shift2 = 2 * scale2 / float(w.sum())
    sx, sy = shifted.world_to_pixel_values(*wcs.pixel_to_world_values(gx, gy))
    distance2 = float(np.mean((np.asarray(sx) - gx) ** 2 + (np.asarray(sy) - gy) ** 2))
    # The full fit differs from the shift by its own noise (~full2) plus the true rotation or
    # scale change: kept when the difference is significant (P ~ 2% by chance with 4 extra
    # parameters), else the shift is the better map.
    if distance2 > 3 * full2 + shift2:
        return solution
    res = solution_residuals(shifted, x[i], y[i], ra[j], dec[j])
    rms = float(np.sqrt(np.mean(res**2)))
    scale = pixel_scale_deg(shifted) * 3600
    return dataclasses.replace(
        solution,
        wcs=shifted,
        n_matches=n,
        rms_arcsec=rms,
        rms_px=rms / scale,
        message=(
            f"shift of the starting WCS fitted to {n} stars, rms {rms:.3f} arcsec (a full fit "
            f"would err by {math.sqrt(full2):.2f} px over the field, the shift by "
            f"{math.sqrt(shift2):.2f}; they differ by {math.sqrt(distance2):.2f})"
        ),
    )


def _shifted(wcs: WCS, dx: float, dy: float) -> WCS:
    """A copy of ``wcs`` moved by (dx, dy) pixels (stars at x + dx, y + dy)."""
    shifted = wcs.deepcopy()
    shifted.wcs.crpix = np.asarray(shifted.wcs.crpix) + np.array([dx, dy])
    if shifted.sip is not None:
        s = shifted.sip
        shifted.sip = Sip(s.a, s.b, s.ap, s.bp, shifted.wcs.crpix)
    shifted.wcs.set()
    return shifted
