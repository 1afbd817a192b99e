"""The result of plate solving, the interface of a solver, and the registry of solvers.

Every solver has ``solve(detections, image_shape, *, wcs_guess=None, catalog=None)`` and returns an
`AstrometrySolution` (the WCS, the number of matched stars, the residual rms, a status and a
message). A frame that cannot be solved gives ``status == "failed"`` with the reason; solvers never
raise for a bad frame (they do raise ``ValueError``/``TypeError`` for wrong arguments).

The solvers are registered by name (`PLATE_SOLVERS`, `register_solver`: a new solver is one
class with ``from_config``), with the pixel scale and pointing of the header as hints
(`header_pixel_scale`, `solve_hints`, and from them `hint_wcs`, `scale_hint`, `center_hint`).

WCS objects follow astropy: ``wcs.pixel_to_world_values(x, y)`` takes 0-based pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from astropy.wcs import WCS

__all__ = [
    "AUTO_SOLVERS",
    "PLATE_SOLVERS",
    "STATUS_FAILED",
    "STATUS_OK",
    "AstrometrySolution",
    "PlateSolver",
    "SolveHints",
    "celestial_wcs",
    "center_hint",
    "failed_solution",
    "header_pixel_scale",
    "hint_wcs",
    "pixel_scale_deg",
    "register_solver",
    "scale_hint",
    "solve_hints",
    "wcs_rotation_deg",
]


STATUS_OK = "ok"
STATUS_FAILED = "failed"


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AstrometrySolution:
    """The outcome of plate solving one frame.

    Attributes
    ----------
    wcs : astropy.wcs.WCS or None
        The celestial WCS (TAN or TAN-SIP), None when the solve failed.
    n_matches : int
        Detections matched to catalog stars and used in the final fit.
    rms_arcsec, rms_px : float
        Root-mean-square distance between the matched detections (through ``wcs``) and their
        catalog positions, in arcsec and in pixels; NaN when unknown.
    status : str
        ``"ok"`` or ``"failed"``.
    message : str
        What was done, or why it failed.
    solver : str
        Name of the solver that produced it.
    """

    wcs: WCS | None
    n_matches: int
    rms_arcsec: float
    rms_px: float
    status: str
    message: str
    solver: str

    @property
    def ok(self) -> bool:
        """True when the frame was solved."""
        return self.status == STATUS_OK and self.wcs is not None

    def as_row(self) -> dict[str, Any]:
        """Scalars for a per-frame table (the WCS as a header string).

        Returns
        -------
        dict
            ``wcs_header``, ``n_matches``, ``rms_arcsec``, ``rms_px``, ``status``, ``message``,
            ``solver``.
        """
        header = "" if self.wcs is None else self.wcs.to_header(relax=True).tostring()
        return {
            "wcs_header": header,
            "n_matches": int(self.n_matches),
            "rms_arcsec": float(self.rms_arcsec),
            "rms_px": float(self.rms_px),
            "status": self.status,
            "message": self.message,
            "solver": self.solver,
        }


def failed_solution(solver: str, message: str, n_matches: int = 0) -> AstrometrySolution:
    """A failed solution: no WCS, NaN residuals, ``status == "failed"`` and the reason.

    Parameters
    ----------
    solver : str
        Name of the solver.
    message : str
        Why the frame was not solved.
    n_matches : int, optional
        Stars matched before giving up.

    Returns
    -------
    AstrometrySolution
    """
    return AstrometrySolution(
        wcs=None,
        n_matches=int(n_matches),
        rms_arcsec=float("nan"),
        rms_px=float("nan"),
        status=STATUS_FAILED,
        message=message,
        solver=solver,
    )


@runtime_checkable
class PlateSolver(Protocol):
    """What every solver offers: a name and ``solve``."""

    name: str

    def solve(
        self,
        detections: pd.DataFrame,
        image_shape: tuple[int, int],
        *,
        wcs_guess: WCS | None = None,
        catalog: pd.DataFrame | None = None,
    ) -> AstrometrySolution:
        """Solve one frame (see the module docstring)."""
        ...


# ---------------------------------------------------------------------------------------------
# The registry of solvers, and what a frame's header tells them
# ---------------------------------------------------------------------------------------------
PLATE_SOLVERS: dict[str, type] = {}
"""Solver classes by the name ``[astrometry] solver`` gives them (`register_solver`). Each has
``from_config(config, *, hints, mag_column)`` and the `PlateSolver` interface."""

AUTO_SOLVERS = ("header", "asterism", "solve-field", "web")
"""The order ``solver = "auto"`` tries: the header WCS checked against the catalog, the asterism
solver against the catalog, a blind ``solve-field`` with the installed index files, the web API."""


def register_solver(name: str):
    """A class decorator that adds a solver to `PLATE_SOLVERS` under ``name``.

    Parameters
    ----------
    name : str
        The name ``[astrometry] solver`` selects it by.

    Returns
    -------
    callable
        The decorator (it returns the class unchanged).
    """

    def add(cls: type) -> type:
        PLATE_SOLVERS[name] = cls
        return cls

    return add


@dataclass(frozen=True)
class SolveHints:
    """What a frame's header says about its field: pixel scale and pointing, each with a source.

    Attributes
    ----------
    scale_arcsec : float or None
        Pixel scale (arcsec/px), None when the header does not give it.
    scale_source : str
        The keyword(s) it came from (``"header WCS"``, ``"PIXSCALE"``, ``"XPIXSZ / FOCALLEN"``...).
    ra_deg, dec_deg : float or None
        Field centre (degrees), None when unknown.
    pointing_source : str
        Where the centre came from (``"header WCS"`` or ``"header pointing"``).
    """

    scale_arcsec: float | None = None
    scale_source: str = ""
    ra_deg: float | None = None
    dec_deg: float | None = None
    pointing_source: str = ""

    @property
    def center(self) -> tuple[float, float] | None:
        """``(ra_deg, dec_deg)``, or None when the pointing is unknown."""
        if self.ra_deg is None or self.dec_deg is None:
            return None
        return self.ra_deg, self.dec_deg


_SCALE_KEYS = ("PIXSCALE", "SECPIX", "SECPIX1", "SECPIXX", "IM_SCALE", "SCALE", "PIXSCAL1")
"""Keywords of the pixel scale in arcsec/px, in the order they are trusted."""


def _header_number(header: Any, key: str) -> float | None:
    """A finite number from a header value (numbers stored as strings included), else None."""
    value = header.get(key) if hasattr(header, "get") else None
    if value is None or isinstance(value, bool | np.bool_):
        return None
    try:
        number = float(str(value).strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _header_binning(header: Any) -> tuple[int, str]:
    """The x binning and its keyword (XBINNING, BINX, CCDXBIN, CCDSUM), or (1, "")."""
    for key in ("XBINNING", "BINX", "CCDXBIN"):
        number = _header_number(header, key)
        if number is not None and number.is_integer() and 1 <= number <= 64:
            return int(number), key
    value = header.get("CCDSUM") if hasattr(header, "get") else None
    if value is not None:
        first = str(value).replace(",", " ").replace("x", " ").split()[:1]
        if first and first[0].isdigit() and 1 <= int(first[0]) <= 64:
            return int(first[0]), "CCDSUM"
    return 1, ""


def header_pixel_scale(header: Any) -> tuple[float, str] | None:
    """The pixel scale (arcsec/px) from the usual header keywords, and where it came from.

    Tried in order: an arcsec/px keyword (PIXSCALE, SECPIX, SECPIX1, SECPIXX, IM_SCALE, SCALE,
    PIXSCAL1); CDELT1/CDELT2 (degrees); a CD matrix (degrees); the pixel size over the focal
    length: XPIXSZ (um) / FOCALLEN (mm) x 206.265. XPIXSZ is taken as the size of the binned
    pixel, as MaxIm DL, SBIG and N.I.N.A. write it ("after binning"), unless its comment says
    the pixel is unbinned; PIXSIZE1/PIXSIZE (the detector's own pixel, as NOAO and Lowell write
    it) are multiplied by the binning (XBINNING, BINX, CCDXBIN or CCDSUM). Values outside
    0.01-3600 arcsec/px are ignored.

    Parameters
    ----------
    header : astropy.io.fits.Header or mapping
        A raw frame header.

    Returns
    -------
    tuple of (float, str) or None
        The scale and the keyword(s) it came from (e.g. ``"XPIXSZ / FOCALLEN"``), None when the
        header gives no usable scale.
    """

    def plausible(scale: float | None) -> bool:
        return scale is not None and 0.01 <= scale <= 3600.0

    for key in _SCALE_KEYS:
        scale = _header_number(header, key)
        if scale is not None and plausible(abs(scale)):
            return abs(scale), key
    cdelt1, cdelt2 = (_header_number(header, k) for k in ("CDELT1", "CDELT2"))
    if cdelt1 and plausible(abs(cdelt1) * 3600):
        if cdelt2 and plausible(abs(cdelt2) * 3600):
            return math.sqrt(abs(cdelt1 * cdelt2)) * 3600, "CDELT1/CDELT2"
        return abs(cdelt1) * 3600, "CDELT1"
    cd = [_header_number(header, k) for k in ("CD1_1", "CD1_2", "CD2_1", "CD2_2")]
    if all(v is not None for v in cd):
        scale = math.sqrt(abs(cd[0] * cd[3] - cd[1] * cd[2])) * 3600
        if plausible(scale):
            return scale, "CD matrix"
    focal_mm = _header_number(header, "FOCALLEN")
    if focal_mm is None or focal_mm <= 0:
        return None
    binning, bin_key = _header_binning(header)
    pixel_um = _header_number(header, "XPIXSZ")
    if pixel_um is not None and pixel_um > 0:
        comment = str(header.comments["XPIXSZ"]).lower() if hasattr(header, "comments") else ""
        unbinned = "unbinned" in comment or "before binning" in comment
        if unbinned and binning > 1:
            scale = 206.265 * pixel_um * binning / focal_mm
            source = f"XPIXSZ x {bin_key} / FOCALLEN"
        else:
            scale, source = 206.265 * pixel_um / focal_mm, "XPIXSZ / FOCALLEN"
        return (scale, source) if plausible(scale) else None
    for key in ("PIXSIZE1", "PIXSIZE"):
        pixel_um = _header_number(header, key)
        if pixel_um is not None and pixel_um > 0:
            scale = 206.265 * pixel_um * binning / focal_mm
            source = f"{key} x {bin_key} / FOCALLEN" if bin_key else f"{key} / FOCALLEN"
            return (scale, source) if plausible(scale) else None
    return None


def solve_hints(
    header: Any,
    *,
    image_shape: tuple[int, int],
    wcs: WCS | None = None,
    ra_deg: float = float("nan"),
    dec_deg: float = float("nan"),
) -> SolveHints:
    """The scale and pointing hints of a frame: from its header WCS, else its keywords.

    Parameters
    ----------
    header : astropy.io.fits.Header or mapping or None
        The raw header (for `header_pixel_scale`); None when not at hand.
    image_shape : tuple of int
        ``(ny, nx)``.
    wcs : astropy.wcs.WCS, optional
        The header WCS (`lcdask.io.headers.header_wcs`), when it has one.
    ra_deg, dec_deg : float, optional
        The normalised header pointing (NaN when unknown).

    Returns
    -------
    SolveHints
    """
    if wcs is not None:
        ny, nx = image_shape
        centre = celestial_wcs(wcs).pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
        ra, dec = (float(v) for v in centre)
        if np.isfinite(ra) and np.isfinite(dec):
            scale = pixel_scale_deg(wcs) * 3600
            return SolveHints(scale, "header WCS", ra % 360, dec, "header WCS")
    found = header_pixel_scale(header) if header is not None else None
    scale, source = found if found is not None else (None, "")
    if np.isfinite(ra_deg) and np.isfinite(dec_deg):
        return SolveHints(scale, source, float(ra_deg), float(dec_deg), "header pointing")
    return SolveHints(scale, source)


def wcs_rotation_deg(wcs: WCS) -> float:
    """The position angle of the image's +y axis, east of north (degrees, 0-360).

    0 for north up; 180 for a field turned half a turn. With a parity flip (east to the right
    of north) the angle is that of the flipped frame.

    Parameters
    ----------
    wcs : astropy.wcs.WCS
        A celestial WCS.

    Returns
    -------
    float
    """
    m = celestial_wcs(wcs).pixel_scale_matrix  # d(ra cos dec, dec)/d(x, y), ra increasing east
    east, north = m[0, 1], m[1, 1]  # a unit step along +y: its east (xi) and north parts
    return float(np.degrees(np.arctan2(east, north)) % 360.0)


def pixel_scale_deg(wcs: WCS) -> float:
    """Mean pixel scale (degrees per pixel) of a celestial WCS.

    Parameters
    ----------
    wcs : astropy.wcs.WCS

    Returns
    -------
    float
        The square root of the pixel area (degrees).
    """
    return float(np.sqrt(abs(np.linalg.det(celestial_wcs(wcs).pixel_scale_matrix))))


def celestial_wcs(wcs: WCS) -> WCS:
    """``wcs.celestial``, without its copy (~0.4 ms) when ``wcs`` is already (lon, lat).

    Parameters
    ----------
    wcs : astropy.wcs.WCS

    Returns
    -------
    astropy.wcs.WCS
        ``wcs`` itself when it is a 2-D (lon, lat) WCS, else its celestial part (a copy).
    """
    if wcs.naxis == 2 and wcs.wcs.lng == 0 and wcs.wcs.lat == 1:
        return wcs
    return wcs.celestial


def scale_hint(
    wcs_guess: WCS | None, tolerance: float, scale_arcsec: float | None = None
) -> dict[str, float]:
    """The scale range to search: around ``scale_arcsec`` when given, else the guess's scale.

    Parameters
    ----------
    wcs_guess : astropy.wcs.WCS or None
        A guess WCS, whose pixel scale is used without ``scale_arcsec``.
    tolerance : float
        Relative half-width of the range.
    scale_arcsec : float, optional
        A pixel-scale hint (arcsec/px).

    Returns
    -------
    dict
        ``scale_low`` and ``scale_high`` (arcsec/px); empty with neither a guess nor a hint.
    """
    if scale_arcsec is None:
        if wcs_guess is None:
            return {}
        scale_arcsec = pixel_scale_deg(wcs_guess) * 3600.0
    scale = float(scale_arcsec)
    return {"scale_low": scale * (1 - tolerance), "scale_high": scale * (1 + tolerance)}


def hint_wcs(
    center_deg: tuple[float, float], scale_arcsec: float, image_shape: tuple[int, int]
) -> WCS:
    """A tangent plane at a pointing with a scale (north up: only its centre and scale count).

    Parameters
    ----------
    center_deg : tuple of float
        ``(ra, dec)`` of the frame centre (degrees).
    scale_arcsec : float
        Pixel scale (arcsec/px).
    image_shape : tuple of int
        ``(ny, nx)``.

    Returns
    -------
    astropy.wcs.WCS
    """
    ny, nx = image_shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [float(center_deg[0]), float(center_deg[1])]
    wcs.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    wcs.wcs.cd = np.array([[-1.0, 0.0], [0.0, 1.0]]) * float(scale_arcsec) / 3600
    wcs.pixel_shape = (int(nx), int(ny))
    return wcs


def center_hint(
    wcs_guess: WCS | None, image_shape: tuple[int, int], center_deg: tuple[float, float] | None
) -> tuple[float, float] | None:
    """The field centre to search around: ``center_deg`` when given, else the guess's centre.

    Parameters
    ----------
    wcs_guess : astropy.wcs.WCS or None
        A guess WCS.
    image_shape : tuple of int
        ``(ny, nx)``.
    center_deg : tuple of float or None
        A pointing hint ``(ra, dec)`` (degrees).

    Returns
    -------
    tuple of float or None
        ``(ra, dec)``, None with neither a hint nor a guess.
    """
    if center_deg is not None:
        return float(center_deg[0]), float(center_deg[1])
    if wcs_guess is None:
        return None
    ny, nx = image_shape
    ra, dec = wcs_guess.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
    return float(ra), float(dec)
