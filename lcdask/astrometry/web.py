"""`AstrometryNetWebSolver`: the nova.astrometry.net web service.

Through ``astroquery.astrometry_net`` (``solve_from_source_list``), with an API key and not
offline. Source lists are sent in astrometry.net's FITS 1-based pixel convention.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd
from astropy.wcs import WCS

from lcdask.astrometry.inputs import detection_arrays
from lcdask.astrometry.matching import solution_from_header
from lcdask.astrometry.solution import (
    AstrometrySolution,
    SolveHints,
    center_hint,
    failed_solution,
    register_solver,
    scale_hint,
)

if TYPE_CHECKING:
    from lcdask.astrometry.config import AstrometryConfig

__all__ = ["AstrometryNetWebSolver"]


@register_solver("web")
@dataclass(frozen=True)
class AstrometryNetWebSolver:
    """nova.astrometry.net through ``astroquery.astrometry_net.AstrometryNet``.

    Parameters
    ----------
    api_key : str, optional
        The API key; default the ``ASTROMETRY_NET_API_KEY`` environment variable.
    timeout_s : float
        How long to wait for the solve.
    n_detections : int
        Brightest detections sent.
    scale_tolerance : float
        Relative width of the pixel-scale hint around the guess's scale.
    search_radius_deg : float or None
        With a guess, search only this far from its centre.
    tweak_order : int
        SIP order of the returned WCS.
    mag_column : str
        Catalog magnitude column (for the residuals against a catalog).
    scale_arcsec : float, optional
        A pixel-scale hint (arcsec/px) used instead of the guess's scale.
    center_deg : tuple of float, optional
        A pointing hint ``(ra, dec)`` used instead of the guess's centre.
    offline : bool
        Never reach the network: every solve fails at once, saying so.
    """

    api_key: str | None = dataclasses.field(default=None, repr=False)
    timeout_s: float = 300.0
    n_detections: int = 150
    scale_tolerance: float = 0.2
    search_radius_deg: float | None = 1.0
    tweak_order: int = 2
    mag_column: str = "mag"
    scale_arcsec: float | None = None
    center_deg: tuple[float, float] | None = None
    offline: bool = False
    name: str = "astrometry.net-web"
    costly: ClassVar[bool] = True
    """Minutes a solve: a reference search tries it on one frame, not three."""

    @classmethod
    def from_config(
        cls, config: AstrometryConfig, *, hints: SolveHints, mag_column: str
    ) -> AstrometryNetWebSolver:
        """The solver of ``[astrometry] solver = "web"``, with a frame's header hints.

        Parameters
        ----------
        config : AstrometryConfig
            ``api_key`` ("" for the environment's), ``timeout_s``, ``n_detections``,
            ``scale_tolerance``, ``search_radius_deg`` and ``offline``.
        hints : SolveHints
            The frame's pixel scale and pointing from its header.
        mag_column : str
            The catalog's magnitude column.

        Returns
        -------
        AstrometryNetWebSolver
        """
        return cls(
            api_key=config.api_key or None,
            timeout_s=config.timeout_s,
            n_detections=config.n_detections,
            scale_tolerance=config.scale_tolerance,
            search_radius_deg=config.search_radius_deg,
            mag_column=mag_column,
            scale_arcsec=hints.scale_arcsec,
            center_deg=hints.center,
            offline=config.offline,
        )

    def resolved_api_key(self) -> str | None:
        """The key from the argument or from ``ASTROMETRY_NET_API_KEY`` (None without one)."""
        return self.api_key or os.environ.get("ASTROMETRY_NET_API_KEY") or None

    def client(self) -> Any:
        """A configured ``AstrometryNet`` instance (no network traffic yet)."""
        from astroquery.astrometry_net import AstrometryNet

        client = AstrometryNet()
        client.api_key = self.resolved_api_key()
        return client

    def settings(self, image_shape: tuple[int, int], wcs_guess: WCS | None) -> dict[str, Any]:
        """The solve settings sent with the source list.

        Parameters
        ----------
        image_shape : tuple of int
            ``(ny, nx)``.
        wcs_guess : astropy.wcs.WCS, optional
            Scale and position hints.

        Returns
        -------
        dict
            Keyword arguments of ``solve_from_source_list``.
        """
        settings: dict[str, Any] = {"crpix_center": True, "tweak_order": int(self.tweak_order)}
        hint = scale_hint(wcs_guess, self.scale_tolerance, self.scale_arcsec)
        if hint:
            settings.update(
                scale_units="arcsecperpix",
                scale_type="ul",
                scale_lower=hint["scale_low"],
                scale_upper=hint["scale_high"],
            )
        center = center_hint(wcs_guess, image_shape, self.center_deg)
        if center is not None and self.search_radius_deg is not None:
            settings.update(
                center_ra=center[0], center_dec=center[1], radius=float(self.search_radius_deg)
            )
        return settings

    def solve(
        self,
        detections: pd.DataFrame,
        image_shape: tuple[int, int],
        *,
        wcs_guess: WCS | None = None,
        catalog: pd.DataFrame | None = None,
    ) -> AstrometrySolution:
        """Send the brightest detections to nova.astrometry.net and wait for the WCS.

        Parameters
        ----------
        detections : pandas.DataFrame
            The frame's detections.
        image_shape : tuple of int
            ``(ny, nx)``.
        wcs_guess : astropy.wcs.WCS, optional
            Scale and position hints.
        catalog : pandas.DataFrame, optional
            When given, the residuals are computed against it.

        Returns
        -------
        AstrometrySolution
            ``status == "failed"`` without an API key, on network errors, time-out or no solve.
        """
        if self.offline:
            return failed_solution(
                self.name, "offline: the astrometry.net web service is not asked"
            )
        if self.resolved_api_key() is None:
            return failed_solution(
                self.name,
                "no astrometry.net API key: pass api_key or set ASTROMETRY_NET_API_KEY",
            )
        x, y, _, _ = detection_arrays(detections)
        if len(x) < 4:
            return failed_solution(self.name, f"only {len(x)} usable detections")
        n = min(self.n_detections, len(x))
        ny, nx = image_shape
        try:
            from astroquery import cache_conf

            client = self.client()
            with cache_conf.set_temp("cache_active", False):
                header = client.solve_from_source_list(
                    x[:n] + 1.0,  # astrometry.net source lists are FITS 1-based
                    y[:n] + 1.0,
                    int(nx),
                    int(ny),
                    solve_timeout=self.timeout_s,
                    verbose=False,
                    **self.settings(image_shape, wcs_guess),
                )
        except TimeoutError:
            return failed_solution(
                self.name, f"astrometry.net did not answer in {self.timeout_s:.0f} s"
            )
        except Exception as exc:  # network, HTTP and API errors all mean "not solved"
            return failed_solution(
                self.name, f"astrometry.net request failed: {type(exc).__name__}: {exc}"
            )
        if not header:
            return failed_solution(self.name, "astrometry.net could not solve the field")
        return solution_from_header(header, self.name, x, y, image_shape, catalog, self.mag_column)
