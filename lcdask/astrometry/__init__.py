"""Plate solving: from a frame's detections to its WCS, with one interface and four solvers.

Every solver has ``solve(detections, image_shape, *, wcs_guess=None, catalog=None)`` and returns an
`AstrometrySolution` (the WCS, the number of matched stars, the residual rms, a status and a
message). A frame that cannot be solved gives ``status == "failed"`` with the reason; solvers never
raise for a bad frame (they do raise ``ValueError``/``TypeError`` for wrong arguments).

- `AsterismSolver` (built in, offline): matches the frame's brightest detections to a reference
  catalog near the header pointing by hashing triangles of neighbouring stars into invariants
  (side ratios, which do not change under rotation, parity flip or scale), votes for the
  similarity transform, verifies the best hypotheses by counting matched stars, then fits a TAN
  (and TAN-SIP when there are enough stars) WCS with all matches, iterating.
- `SolveFieldSolver`: astrometry.net's local ``solve-field`` on an xylist of the detections, with
  the system's index files or a directory built by `build_index` from a reference catalog.
- `AstrometryNetWebSolver`: the nova.astrometry.net web service through
  ``astroquery.astrometry_net`` (``solve_from_source_list``).
- `HeaderWCSSolver`: the header's own WCS, accepted when enough detections fall within a few
  arcsec of catalog stars.

The solvers are registered by name (`PLATE_SOLVERS`, `register_solver`: a new solver is one
class with ``from_config``); ``[astrometry] solver`` (`AstrometryConfig`) picks one, or "auto"
tries `AUTO_SOLVERS` in turn (`plate_solvers`, `solve_in_turn`), with the pixel scale and
pointing of the header as hints (`header_pixel_scale`, `solve_hints`).

`refine_wcs` is the cheap per-frame step of a sequence: from a neighbouring frame's solution it
finds the drift, matches and refits (see `lcdask.astrometry.refine`).

The package's modules:

- `~lcdask.astrometry.solution`: `AstrometrySolution`, the `PlateSolver` interface, the registry,
  the header's scale and pointing hints;
- `~lcdask.astrometry.wcsfit`: fitting a WCS to matched points (`fit_wcs_linear`);
- `~lcdask.astrometry.inputs`: detections and catalogs as arrays (`sharper_than_stars`);
- `~lcdask.astrometry.matching`: matching, residuals, the iterated fit;
- `~lcdask.astrometry.asterism`, `~lcdask.astrometry.solve_field`, `~lcdask.astrometry.web`,
  `~lcdask.astrometry.header`: the four solvers;
- `~lcdask.astrometry.refine`: refinement from a neighbour's solution;
- `~lcdask.astrometry.config`: `AstrometryConfig` and the configured solvers in turn.

Conventions: detections are a table with ``x``, ``y`` (0-based pixels, numpy convention) and
``flux`` (and optionally ``snr``, ``flags``), as `lcdask.detect.detect_frame` makes; catalogs
have ``ra``, ``dec`` (degrees) and a magnitude column (``mag`` by default). WCS objects follow
astropy: ``wcs.pixel_to_world_values(x, y)`` takes 0-based pixels. Files handed to astrometry.net
use its FITS 1-based pixel convention (the xylist gets ``x + 1``, ``y + 1``), so that the WCS it
returns is a standard FITS WCS.
"""

# The solvers register themselves (`register_solver`) when their module is imported: in this
# order (asterism, solve-field, web, header), that of `PLATE_SOLVERS` and of its error messages.
# isort: off
from lcdask.astrometry.solution import (
    AUTO_SOLVERS,
    PLATE_SOLVERS,
    AstrometrySolution,
    PlateSolver,
    SolveHints,
    header_pixel_scale,
    register_solver,
    solve_hints,
    wcs_rotation_deg,
)
from lcdask.astrometry.wcsfit import fit_wcs_linear
from lcdask.astrometry.inputs import sharper_than_stars
from lcdask.astrometry.matching import match_catalog, solution_residuals, wcs_grid_error_px
from lcdask.astrometry.asterism import AsterismSolver
from lcdask.astrometry.refine import pixel_offset, refine_wcs
from lcdask.astrometry.solve_field import (
    SolveFieldSolver,
    build_index,
    default_index_dirs,
    installed_index_files,
)
from lcdask.astrometry.web import AstrometryNetWebSolver
from lcdask.astrometry.header import HeaderWCSSolver
from lcdask.astrometry.config import AstrometryConfig, plate_solvers, solve_in_turn

# isort: on

__all__ = [
    "AUTO_SOLVERS",
    "PLATE_SOLVERS",
    "AsterismSolver",
    "AstrometryConfig",
    "AstrometryNetWebSolver",
    "AstrometrySolution",
    "HeaderWCSSolver",
    "PlateSolver",
    "SolveFieldSolver",
    "SolveHints",
    "build_index",
    "default_index_dirs",
    "fit_wcs_linear",
    "header_pixel_scale",
    "installed_index_files",
    "match_catalog",
    "pixel_offset",
    "plate_solvers",
    "refine_wcs",
    "register_solver",
    "sharper_than_stars",
    "solution_residuals",
    "solve_hints",
    "solve_in_turn",
    "wcs_grid_error_px",
    "wcs_rotation_deg",
]
