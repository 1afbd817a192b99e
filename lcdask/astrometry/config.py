"""The ``[astrometry]`` configuration, and the configured solvers tried in turn.

``[astrometry] solver`` (`AstrometryConfig`) picks one solver of `PLATE_SOLVERS`, or "auto"
tries `AUTO_SOLVERS` in turn (`plate_solvers`, `solve_in_turn`).
"""

from __future__ import annotations

from collections.abc import Sequence

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
from lcdask.config import AstrometryConfig

__all__ = ["AstrometryConfig", "plate_solvers", "solve_in_turn"]


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
