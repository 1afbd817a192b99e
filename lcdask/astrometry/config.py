"""The ``[astrometry]`` configuration, and the configured solvers tried in turn.

``[astrometry] solver`` (`AstrometryConfig`) picks one solver of `PLATE_SOLVERS`, or "auto"
tries `AUTO_SOLVERS` in turn (`plate_solvers`, `solve_in_turn`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from astropy.wcs import WCS

from lcdask.astrometry.solution import (
    AUTO_SOLVERS,
    PLATE_SOLVERS,
    AstrometrySolution,
    PlateSolver,
    SolveHints,
    failed_solution,
)

__all__ = ["AstrometryConfig", "plate_solvers", "solve_in_turn"]


@dataclass(frozen=True)
class AstrometryConfig:
    """Plate solving of the reference frame and of frames that fail to follow it.

    Attributes
    ----------
    solver : {"auto", "header", "asterism", "solve-field", "web"}
        "auto" tries in turn: the header WCS checked against the catalog (enough detections
        within header_match_arcsec of catalog stars), the asterism solver against the
        catalog, astrometry.net's solve-field with the installed index files (blind, with the
        pixel scale and pointing of the headers as hints), the astrometry.net web API (with
        an API key, not offline). A name uses that solver alone (`PLATE_SOLVERS`). With no
        solution, frames are aligned to each other on a nominal tangent plane (relative
        positions only).
    index_dir : str
        Directory of astrometry.net index files for solve-field ("" for the system's:
        /etc/astrometry.cfg, /usr/share/astrometry). Debian's astrometry-data-tycho2 files
        solve fields from about 22'; add 4200/5200-series files for narrower ones.
    timeout_s : float
        Seconds one solve may take (solve-field's CPU limit; the web API's wait).
    n_detections : int
        Brightest detections given to solve-field and the web API.
    scale_tolerance : float
        Relative width of the pixel-scale hint (a header's scale keywords can be 10% off).
    search_radius_deg : float
        How far from the header pointing solve-field and the web API search (generous: header
        pointings can be far off).
    header_match_arcsec : float
        Largest distance of a detection from its catalog star for the header WCS to be
        accepted.
    api_key : str
        astrometry.net API key ("" for the ASTROMETRY_NET_API_KEY environment variable).
    offline : bool
        Never reach the network (the web API is not tried); also set by catalog.offline.
    """

    solver: str = "auto"
    index_dir: str = ""
    timeout_s: float = 60.0
    n_detections: int = 80
    scale_tolerance: float = 0.25
    search_radius_deg: float = 5.0
    header_match_arcsec: float = 3.0
    api_key: str = dataclasses.field(default="", repr=False)
    offline: bool = False

    def __post_init__(self) -> None:
        allowed = ("auto", *PLATE_SOLVERS)
        if self.solver not in allowed:
            raise ValueError(
                f"astrometry.solver must be one of {', '.join(map(repr, allowed))}, "
                f"not {self.solver!r}"
            )
        if self.index_dir and not Path(self.index_dir).expanduser().is_dir():
            raise ValueError(
                f"astrometry.index_dir {self.index_dir!r} is not a directory: give the folder "
                'of the index files, or "" for the system\'s'
            )
        for name in ("timeout_s", "search_radius_deg", "header_match_arcsec"):
            if not getattr(self, name) > 0:
                raise ValueError(f"astrometry.{name} must be positive, not {getattr(self, name)!r}")
        if not 0 < self.scale_tolerance < 1:
            raise ValueError(
                f"astrometry.scale_tolerance must be between 0 and 1, not {self.scale_tolerance!r}"
            )
        if self.n_detections < 4:
            raise ValueError(f"astrometry.n_detections must be 4 or more, not {self.n_detections}")


def plate_solvers(
    config: AstrometryConfig,
    *,
    hints: SolveHints = SolveHints(),  # noqa: B008 (a frozen dataclass)
    mag_column: str = "mag",
) -> list[PlateSolver]:
    """The configured solvers, in the order to try them (`AUTO_SOLVERS` for "auto").

    Parameters
    ----------
    config : AstrometryConfig
    hints : SolveHints, optional
        The frame's header hints (`solve_hints`), for the solvers that take them.
    mag_column : str, optional
        The catalog's magnitude column.

    Returns
    -------
    list of PlateSolver
    """
    names = AUTO_SOLVERS if config.solver == "auto" else (config.solver,)
    return [PLATE_SOLVERS[n].from_config(config, hints=hints, mag_column=mag_column) for n in names]


def solve_in_turn(
    solvers: Sequence[PlateSolver],
    detections: pd.DataFrame,
    image_shape: tuple[int, int],
    *,
    wcs_guess: WCS | None = None,
    catalog: pd.DataFrame | None = None,
) -> AstrometrySolution:
    """The first solution of ``solvers`` tried in turn, else a failure with every reason.

    A solver that cannot work without a guess or a catalog (the asterism solver) is passed
    over, saying so.

    Parameters
    ----------
    solvers : sequence of PlateSolver
        E.g. `plate_solvers`.
    detections : pandas.DataFrame
        The frame's detections.
    image_shape : tuple of int
        ``(ny, nx)``.
    wcs_guess : astropy.wcs.WCS, optional
        The header WCS, or a nominal one at the header pointing and scale.
    catalog : pandas.DataFrame, optional
        The reference catalog.

    Returns
    -------
    AstrometrySolution
        The solving one; when none solves, ``status == "failed"`` and the message gives each
        solver's reason (``"header: no WCS in the header; asterism: ..."``).
    """
    reasons = []
    for solver in solvers:
        try:
            solution = solver.solve(detections, image_shape, wcs_guess=wcs_guess, catalog=catalog)
        except ValueError as exc:  # a solver that needs what this frame lacks
            solution = failed_solution(solver.name, str(exc))
        if solution.ok:
            return solution
        reasons.append(f"{solver.name}: {solution.message}")
    name = solvers[0].name if len(solvers) == 1 else "auto"
    return failed_solution(name, "; ".join(reasons) or "no solver configured")
