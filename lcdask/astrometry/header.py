"""`HeaderWCSSolver`: the header's own WCS, checked against the catalog.

It is accepted when enough detections fall within a few arcsec of catalog stars.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from astropy.wcs import WCS

from lcdask.astrometry.inputs import catalog_arrays, detection_arrays
from lcdask.astrometry.matching import match_catalog, significant
from lcdask.astrometry.solution import (
    STATUS_OK,
    AstrometrySolution,
    SolveHints,
    celestial_wcs,
    failed_solution,
    pixel_scale_deg,
    register_solver,
)

if TYPE_CHECKING:
    from lcdask.astrometry.config import AstrometryConfig

__all__ = ["HeaderWCSSolver"]


@register_solver("header")
@dataclass(frozen=True)
class HeaderWCSSolver:
    """Accepts the header WCS when enough detections fall within a few arcsec of catalog stars.

    The brightest detections are matched (mutual nearest neighbours) to the catalog stars inside
    the field, as many as twice the detections, brightest first; the WCS is accepted when the
    matches are well above those expected by chance (the catalog's density in the field times
    the match circle) and at least ``min_matches``. The WCS is returned as it is: the frames
    are refined from it afterwards.

    Parameters
    ----------
    match_radius_arcsec : float
        Largest distance of a match (a header WCS from a plate solution is good to an arcsec or
        two; one off by a drift is rejected).
    min_matches : int
        Matches needed.
    n_detections : int
        Brightest detections used.
    mag_column : str
        Catalog magnitude column (to take the brightest stars).
    """

    match_radius_arcsec: float = 3.0
    min_matches: int = 6
    n_detections: int = 200
    mag_column: str = "mag"
    name: str = "header"

    @classmethod
    def from_config(
        cls, config: AstrometryConfig, *, hints: SolveHints, mag_column: str
    ) -> HeaderWCSSolver:
        """The check of ``solver = "auto"``'s first step (``header_match_arcsec``).

        Parameters
        ----------
        config : AstrometryConfig
        hints : SolveHints
            Unused (the header WCS is the guess it is given).
        mag_column : str
            The catalog's magnitude column.

        Returns
        -------
        HeaderWCSSolver
        """
        return cls(match_radius_arcsec=config.header_match_arcsec, mag_column=mag_column)

    def solve(
        self,
        detections: pd.DataFrame,
        image_shape: tuple[int, int],
        *,
        wcs_guess: WCS | None = None,
        catalog: pd.DataFrame | None = None,
    ) -> AstrometrySolution:
        """Check ``wcs_guess`` (the header WCS) against ``catalog``.

        Parameters
        ----------
        detections : pandas.DataFrame
            The frame's detections.
        image_shape : tuple of int
            ``(ny, nx)``.
        wcs_guess : astropy.wcs.WCS, optional
            The header WCS; the check fails without one.
        catalog : pandas.DataFrame, optional
            Reference stars (``ra``, ``dec``, ``mag_column``); the check fails without one.

        Returns
        -------
        AstrometrySolution
            The header WCS when it agrees with the catalog, else a failure saying how far off.
        """
        if wcs_guess is None:
            return failed_solution(self.name, "no WCS in the header")
        if catalog is None or not len(catalog):
            return failed_solution(self.name, "no catalog to check the header WCS against")
        x, y, _, _ = detection_arrays(detections)
        x, y = x[: self.n_detections], y[: self.n_detections]
        if len(x) < self.min_matches:
            return failed_solution(self.name, f"only {len(x)} usable detections")
        ny, nx = image_shape
        wcs = celestial_wcs(wcs_guess).deepcopy()
        wcs.pixel_shape = (int(nx), int(ny))
        cat_ra, cat_dec, _ = catalog_arrays(catalog, self.mag_column)
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore")
            try:
                cx, cy = wcs.world_to_pixel_values(cat_ra, cat_dec)
            except Exception as exc:  # a broken header WCS is a bad frame, not a crash
                return failed_solution(self.name, f"unusable header WCS: {exc}")
        inside = np.isfinite(cx) & (cx > -0.5) & (cx < nx - 0.5) & (cy > -0.5) & (cy < ny - 0.5)
        stars = np.flatnonzero(inside)[: 2 * len(x)]
        if len(stars) < self.min_matches:
            return failed_solution(
                self.name, f"only {len(stars)} catalog stars inside the field of the header WCS"
            )
        found = match_catalog(
            pd.DataFrame({"x": x, "y": y}),
            wcs,
            pd.DataFrame({"ra": cat_ra[stars], "dec": cat_dec[stars]}),
            radius_arcsec=self.match_radius_arcsec,
        )
        scale = pixel_scale_deg(wcs) * 3600
        area = nx * ny * scale**2
        n_random = len(x) * len(stars) / area * math.pi * self.match_radius_arcsec**2
        n = len(found)
        if not significant(n, n_random, self.min_matches):
            return failed_solution(
                self.name,
                f"header WCS: only {n} of {len(x)} detections within "
                f'{self.match_radius_arcsec:g}" of a catalog star ({n_random:.1f} by chance)',
                n,
            )
        rms = float(np.sqrt(np.mean(found["sep_arcsec"].to_numpy() ** 2)))
        return AstrometrySolution(
            wcs=wcs,
            n_matches=n,
            rms_arcsec=rms,
            rms_px=rms / scale,
            status=STATUS_OK,
            message=(
                f"header WCS agrees with the catalog: {n} of {len(x)} detections within "
                f'{self.match_radius_arcsec:g}" (rms {rms:.2f}")'
            ),
            solver=self.name,
        )
