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
predicts the catalog positions, finds the drift (tens of pixels) by voting on offsets, matches
within a radius and refits (a weighted linear least-squares TAN or TAN-SIP fit, a few ms). When
no drift is found within its search radius it searches the whole field (`pixel_offset`, a 2-D
histogram of all pairwise offsets: drifts of hundreds of pixels, ~10-30 ms). With few stars in
common (a frame drifted mostly off its neighbour) the neighbour's WCS moved by a shift is kept
rather than a full fit that would extrapolate its noise. A frame turned against its neighbour
(a meridian flip: 180 deg; field rotation, re-framing: any angle) is found when both searches
fail, from the neighbour's WCS turned by 180 deg, then by triangle asterisms at its scale.
Detections sharper than the stars (`sharper_than_stars`: hot pixels of frames with no dark) are
left out of every match.

Conventions: detections are a table with ``x``, ``y`` (0-based pixels, numpy convention) and
``flux`` (and optionally ``snr``, ``flags``), as `lcdask.detect.detect_frame` makes; catalogs
have ``ra``, ``dec`` (degrees) and a magnitude column (``mag`` by default). WCS objects follow
astropy: ``wcs.pixel_to_world_values(x, y)`` takes 0-based pixels. Files handed to astrometry.net
use its FITS 1-based pixel convention (the xylist gets ``x + 1``, ``y + 1``), so that the WCS it
returns is a standard FITS WCS.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS, Sip
from scipy.spatial import cKDTree

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

_ARCSEC = 1.0 / 3600.0
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


def _failed(solver: str, message: str, n_matches: int = 0) -> AstrometrySolution:
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
        centre = _celestial(wcs).pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
        ra, dec = (float(v) for v in centre)
        if np.isfinite(ra) and np.isfinite(dec):
            scale = _pixel_scale_deg(wcs) * 3600
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
    m = _celestial(wcs).pixel_scale_matrix  # d(ra cos dec, dec)/d(x, y), ra increasing east
    east, north = m[0, 1], m[1, 1]  # a unit step along +y: its east (xi) and north parts
    return float(np.degrees(np.arctan2(east, north)) % 360.0)


def _solve_field_index_id(header: fits.Header) -> str:
    """The id of the index solve-field matched (``COMMENT index id: 4110``), or ""."""
    for line in header.get("COMMENT", []):
        text = str(line)
        if text.strip().startswith("index id:"):
            return text.split(":", 1)[1].strip()
    return ""


# ---------------------------------------------------------------------------------------------
# Small geometry
# ---------------------------------------------------------------------------------------------
def _tangent(
    ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic standard coordinates (degrees) of (ra, dec) about the tangent point (ra0, dec0)."""
    ra = np.deg2rad(np.asarray(ra, dtype=float))
    dec = np.deg2rad(np.asarray(dec, dtype=float))
    a0, d0 = math.radians(ra0), math.radians(dec0)
    dra = ra - a0
    cos_c = math.sin(d0) * np.sin(dec) + math.cos(d0) * np.cos(dec) * np.cos(dra)
    cos_c = np.where(cos_c > 1e-6, cos_c, np.nan)  # behind the tangent plane
    xi = np.cos(dec) * np.sin(dra) / cos_c
    eta = (math.cos(d0) * np.sin(dec) - math.sin(d0) * np.cos(dec) * np.cos(dra)) / cos_c
    return np.rad2deg(xi), np.rad2deg(eta)


def _untangent(
    xi: np.ndarray, eta: np.ndarray, ra0: float, dec0: float
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `_tangent`: (ra, dec) in degrees from standard coordinates in degrees."""
    xi = np.deg2rad(np.asarray(xi, dtype=float))
    eta = np.deg2rad(np.asarray(eta, dtype=float))
    a0, d0 = math.radians(ra0), math.radians(dec0)
    denom = math.cos(d0) - eta * math.sin(d0)
    ra = a0 + np.arctan2(xi, denom)
    dec = np.arctan2(math.sin(d0) + eta * math.cos(d0), np.hypot(xi, denom))
    return np.mod(np.rad2deg(ra), 360.0), np.rad2deg(dec)


def _pixel_scale_deg(wcs: WCS) -> float:
    """Mean pixel scale (degrees per pixel) of a celestial WCS."""
    return float(np.sqrt(abs(np.linalg.det(_celestial(wcs).pixel_scale_matrix))))


def _celestial(wcs: WCS) -> WCS:
    """``wcs.celestial``, without its copy (~0.4 ms) when ``wcs`` is already (lon, lat)."""
    if wcs.naxis == 2 and wcs.wcs.lng == 0 and wcs.wcs.lat == 1:
        return wcs
    return wcs.celestial


def _sep_arcsec(ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray) -> np.ndarray:
    r1, d1, r2, d2 = (np.deg2rad(np.asarray(v, dtype=float)) for v in (ra1, dec1, ra2, dec2))
    sdr, cdr = np.sin(r2 - r1), np.cos(r2 - r1)
    num = np.hypot(np.cos(d2) * sdr, np.cos(d1) * np.sin(d2) - np.sin(d1) * np.cos(d2) * cdr)
    den = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * cdr
    return np.rad2deg(np.arctan2(num, den)) * 3600.0


def _monomials(degree: int, start: int) -> list[tuple[int, int]]:
    return [(p, d - p) for d in range(start, degree + 1) for p in range(d, -1, -1)]


def _design(u: np.ndarray, v: np.ndarray, terms: Sequence[tuple[int, int]]) -> np.ndarray:
    return np.column_stack([u**p * v**q for p, q in terms]) if terms else np.zeros((len(u), 0))


# ---------------------------------------------------------------------------------------------
# Fitting a WCS to matched points
# ---------------------------------------------------------------------------------------------
def fit_wcs_linear(
    x: np.ndarray,
    y: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    *,
    crpix: tuple[float, float] | None = None,
    sip_degree: int | None = None,
    weights: np.ndarray | None = None,
    image_shape: tuple[int, int] | None = None,
) -> WCS:
    """Fit a TAN or TAN-SIP WCS to matched pixel and sky positions by linear least squares.

    With the reference pixel held fixed (the image centre by default), the standard coordinates
    of the stars about a trial tangent point are linear in the CD matrix and the SIP
    coefficients; the fitted constant term moves the tangent point, and two or three iterations
    converge. This is exact for TAN (no small-field approximation) and takes about a millisecond.

    Parameters
    ----------
    x, y : numpy.ndarray
        0-based pixel positions of the matched detections.
    ra, dec : numpy.ndarray
        Their catalog positions (degrees).
    crpix : tuple of float, optional
        0-based reference pixel; default the centre of ``image_shape`` or of the points.
    sip_degree : int, optional
        Degree of the SIP distortion polynomials (2 or more); None for a pure TAN WCS.
    weights : numpy.ndarray, optional
        Least-squares weights (e.g. 1 / centroid variance).
    image_shape : tuple of int, optional
        ``(ny, nx)``; sets the default ``crpix``, the grid over which the inverse SIP
        polynomials are fitted, and ``wcs.pixel_shape``.

    Returns
    -------
    astropy.wcs.WCS
        The fitted WCS (``RA---TAN``/``DEC--TAN``, with ``-SIP`` and forward and inverse SIP
        polynomials when ``sip_degree`` is given).

    Raises
    ------
    ValueError
        With fewer points than the fit has parameters.
    """
    x, y, ra, dec = (np.asarray(v, dtype=float) for v in (x, y, ra, dec))
    sip = sip_degree if sip_degree is not None and sip_degree >= 2 else None
    terms = _monomials(sip, 2) if sip else []
    n_par = 3 + len(terms)
    if len(x) < n_par + 1:
        raise ValueError(
            f"fit_wcs_linear needs more than {n_par} matched stars for sip_degree={sip_degree}, "
            f"got {len(x)}"
        )
    if crpix is None:
        if image_shape is not None:
            crpix = ((image_shape[1] - 1) / 2.0, (image_shape[0] - 1) / 2.0)
        else:
            crpix = (float(np.mean(x)), float(np.mean(y)))
    u, v = x - crpix[0], y - crpix[1]
    # Scale u, v for a well-conditioned design matrix.
    norm = max(float(np.max(np.abs(np.concatenate([u, v])))), 1.0)
    un, vn = u / norm, v / norm
    design = np.column_stack([np.ones_like(u), un, vn, _design(un, vn, terms)])
    w = np.ones_like(u) if weights is None else np.asarray(weights, dtype=float)
    sw = np.sqrt(np.clip(w, 0.0, None))
    # Tangent point: start at the mean of the stars, move it by the fitted constant term.
    ra0, dec0 = _mean_radec(ra, dec)
    for _ in range(4):
        xi, eta = _tangent(ra, dec, ra0, dec0)
        rhs = np.column_stack([xi * sw, eta * sw])
        coef = np.linalg.lstsq(design * sw[:, None], rhs, rcond=None)[0]
        coef_xi, coef_eta = coef[:, 0], coef[:, 1]
        ra0, dec0 = (float(v[0]) for v in _untangent(coef_xi[:1], coef_eta[:1], ra0, dec0))
        if math.hypot(coef_xi[0], coef_eta[0]) < 1e-10:
            break
    cd = np.array([[coef_xi[1], coef_xi[2]], [coef_eta[1], coef_eta[2]]]) / norm
    wcs = WCS(naxis=2)
    wcs.wcs.crpix = [crpix[0] + 1.0, crpix[1] + 1.0]
    wcs.wcs.crval = [ra0, dec0]
    wcs.wcs.cd = cd
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = "ICRS"
    if not sip:
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    else:
        wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        # Forward SIP: CD (f, g) = distortion part of (xi, eta) per monomial.
        inv = np.linalg.inv(cd)
        dist = np.vstack([coef_xi[3:], coef_eta[3:]])  # (2, n_terms), in normalised units
        fg = inv @ dist
        a = np.zeros((sip + 1, sip + 1))
        b = np.zeros((sip + 1, sip + 1))
        for k, (p, q) in enumerate(terms):
            a[p, q] = fg[0, k] / norm ** (p + q)
            b[p, q] = fg[1, k] / norm ** (p + q)
        ap, bp = _inverse_sip(a, b, sip, crpix, image_shape, x, y)
        wcs.sip = Sip(a, b, ap, bp, wcs.wcs.crpix)
    if image_shape is not None:
        wcs.pixel_shape = (int(image_shape[1]), int(image_shape[0]))
    wcs.wcs.set()
    return wcs


def _mean_radec(ra: np.ndarray, dec: np.ndarray) -> tuple[float, float]:
    r, d = np.deg2rad(ra), np.deg2rad(dec)
    vec = np.array([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)]).mean(axis=1)
    return (
        float(np.mod(np.rad2deg(np.arctan2(vec[1], vec[0])), 360.0)),
        float(np.rad2deg(np.arctan2(vec[2], np.hypot(vec[0], vec[1])))),
    )


def _inverse_sip(
    a: np.ndarray,
    b: np.ndarray,
    degree: int,
    crpix: tuple[float, float],
    image_shape: tuple[int, int] | None,
    x: np.ndarray,
    y: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit the inverse SIP polynomials (AP, BP, one degree higher) on a grid over the image."""
    if image_shape is not None:
        gx = np.linspace(0, image_shape[1] - 1, 25)
        gy = np.linspace(0, image_shape[0] - 1, 25)
    else:
        gx = np.linspace(x.min(), x.max(), 25)
        gy = np.linspace(y.min(), y.max(), 25)
    gu, gv = (g.ravel() for g in np.meshgrid(gx - crpix[0], gy - crpix[1]))
    terms = _monomials(degree, 2)
    f = sum(a[p, q] * gu**p * gv**q for p, q in terms)
    g = sum(b[p, q] * gu**p * gv**q for p, q in terms)
    uu, vv = gu + f, gv + g
    inv_degree = degree + 1
    inv_terms = _monomials(inv_degree, 1)
    norm = max(float(np.max(np.abs(np.concatenate([uu, vv])))), 1.0)
    design = _design(uu / norm, vv / norm, inv_terms)
    cu = np.linalg.lstsq(design, gu - uu, rcond=None)[0]
    cv = np.linalg.lstsq(design, gv - vv, rcond=None)[0]
    ap = np.zeros((inv_degree + 1, inv_degree + 1))
    bp = np.zeros((inv_degree + 1, inv_degree + 1))
    for k, (p, q) in enumerate(inv_terms):
        ap[p, q] = cu[k] / norm ** (p + q)
        bp[p, q] = cv[k] / norm ** (p + q)
    return ap, bp


def _fit_wcs_astropy(
    x: np.ndarray,
    y: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    sip_degree: int | None,
    image_shape: tuple[int, int] | None,
) -> WCS:
    from astropy.coordinates import SkyCoord
    from astropy.wcs.utils import fit_wcs_from_points

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wcs = fit_wcs_from_points(
            (np.asarray(x, dtype=float), np.asarray(y, dtype=float)),
            SkyCoord(ra, dec, unit="deg"),
            proj_point="center",
            projection="TAN",
            sip_degree=sip_degree,
        )
    if image_shape is not None:
        wcs.pixel_shape = (int(image_shape[1]), int(image_shape[0]))
    return wcs


def _fit(
    fitter: str,
    x: np.ndarray,
    y: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    sip_degree: int | None,
    weights: np.ndarray | None,
    image_shape: tuple[int, int] | None,
) -> WCS:
    if fitter == "astropy":
        return _fit_wcs_astropy(x, y, ra, dec, sip_degree, image_shape)
    return fit_wcs_linear(
        x, y, ra, dec, sip_degree=sip_degree, weights=weights, image_shape=image_shape
    )


def _check_fitter(fitter: str) -> None:
    if fitter not in ("linear", "astropy"):
        raise ValueError(f"fitter must be 'linear' or 'astropy', got {fitter!r}")


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
def _detection_arrays(
    detections: pd.DataFrame, *, drop_flags: int = 2 | 16
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x, y, flux, centroid weight of usable detections, brightest first."""
    if not isinstance(detections, pd.DataFrame):
        raise TypeError(f"detections must be a pandas DataFrame, got {type(detections).__name__}")
    missing = {"x", "y", "flux"} - set(detections.columns)
    if missing:
        raise ValueError(f"detections lack the columns {sorted(missing)} (need x, y, flux)")
    columns = detections.columns
    keep = np.ones(len(detections), dtype=bool)
    if "flags" in columns and drop_flags:
        keep = (detections["flags"].to_numpy() & drop_flags) == 0
    if "fwhm_px" in columns:
        keep[keep] = ~sharper_than_stars(detections["fwhm_px"].to_numpy(dtype=float)[keep])
    x = detections["x"].to_numpy(dtype=float)[keep]
    y = detections["y"].to_numpy(dtype=float)[keep]
    flux = detections["flux"].to_numpy(dtype=float)[keep]
    good = np.isfinite(x) & np.isfinite(y) & np.isfinite(flux) & (flux > 0)
    if "snr" in columns:
        snr = detections["snr"].to_numpy(dtype=float)[keep]
        snr = np.where(np.isfinite(snr) & (snr > 0), snr, 1.0)
    else:
        snr = np.sqrt(np.clip(flux, 1.0, None))
    # Centroid error ~ 2 px / (S/N) for seeing-limited stars, in quadrature with a floor of
    # 0.1 px for the catalog's own errors and the systematics of bright stars.
    weight = 1.0 / ((2.0 / snr) ** 2 + 0.1**2)
    order = np.argsort(-flux[good], kind="stable")
    return x[good][order], y[good][order], flux[good][order], weight[good][order]


def sharper_than_stars(fwhm_px: np.ndarray) -> np.ndarray:
    """Which detections are much sharper than the stars of their frame: hot pixels, cosmic rays.

    In frames with no dark (nothing maps the hot pixels) they are found at the same pixels in
    every frame, and would pin the alignment of drifting frames at no drift. A detection is
    sharp when its ``fwhm_px`` (`lcdask.detect`: single pixels give 0.8) is under 1 px, or
    under half the upper quartile of the frame's (the stars', even when the hot pixels are
    nearly half the detections).

    Parameters
    ----------
    fwhm_px : numpy.ndarray
        The ``fwhm_px`` column of one frame's detections.

    Returns
    -------
    numpy.ndarray
        Boolean, True for the sharp ones (NaN widths are not sharp).
    """
    fwhm = np.asarray(fwhm_px, dtype=float)
    finite = np.isfinite(fwhm)
    if not finite.any():
        return np.zeros(fwhm.shape, dtype=bool)
    limit = max(1.0, 0.5 * float(np.percentile(fwhm[finite], 75)))
    return finite & (fwhm < limit)


def _catalog_arrays(
    catalog: pd.DataFrame, mag_column: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ra, dec, mag of the catalog, brightest first (rows without a magnitude last)."""
    if not isinstance(catalog, pd.DataFrame):
        raise TypeError(f"catalog must be a pandas DataFrame, got {type(catalog).__name__}")
    missing = {"ra", "dec"} - set(catalog.columns)
    if missing:
        raise ValueError(f"catalog lacks the columns {sorted(missing)} (need ra, dec)")
    ra = catalog["ra"].to_numpy(dtype=float)
    dec = catalog["dec"].to_numpy(dtype=float)
    if mag_column in catalog.columns:
        mag = catalog[mag_column].to_numpy(dtype=float)
    else:
        mag = np.zeros(len(ra))
    good = np.isfinite(ra) & np.isfinite(dec)
    ra, dec, mag = ra[good], dec[good], mag[good]
    order = np.argsort(np.where(np.isfinite(mag), mag, np.inf), kind="stable")
    return ra[order], dec[order], mag[order]


# ---------------------------------------------------------------------------------------------
# Matching and residuals
# ---------------------------------------------------------------------------------------------
def _mutual_match(
    px: np.ndarray, py: np.ndarray, qx: np.ndarray, qy: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (i, j) of mutual nearest neighbours of points p and q closer than ``radius``."""
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
    ra0, dec0 = _mean_radec(np.asarray(ra), np.asarray(dec))
    xi_d, eta_d = _tangent(ra, dec, ra0, dec0)
    xi_c, eta_c = _tangent(catalog["ra"].to_numpy(float), catalog["dec"].to_numpy(float), ra0, dec0)
    ok_c = np.isfinite(xi_c)
    idx_c = np.nonzero(ok_c)[0]
    i, j = _mutual_match(
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
    return _sep_arcsec(r, d, ra, dec)


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


def _significant(n_matches: int, n_random: float, min_matches: int) -> bool:
    """True when ``n_matches`` is well above the ``n_random`` matches expected by chance."""
    return n_matches >= max(min_matches, n_random + 5.0 * math.sqrt(n_random) + 3.0)


def _iterate_fit(
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

    ``start_xy``, when given, is the catalog's pixel positions through ``wcs`` (saves their
    projection in the first step).
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
        ii, j = _mutual_match(x, y, cx[idx], cy[idx], radius)
        jj = idx[j]
        n_matches = len(ii)
        if n_matches < min_matches:
            return _failed(
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
            new = _fit(use, x[ii], y[ii], cat_ra[jj], cat_dec[jj], sip, w, image_shape)
            # Reject outliers (wrong matches, blends) once and refit.
            res = solution_residuals(new, x[ii], y[ii], cat_ra[jj], cat_dec[jj])
            scale = _pixel_scale_deg(new) * 3600
            res_px = res / scale
            # Distances of a 2-D Gaussian scatter: median = 1.177 sigma.
            sigma = float(np.median(res_px)) / 1.177 + 1e-3
            good = res_px < clip_sigma * sigma
            if good.sum() >= min_matches and good.sum() < len(ii):
                ii, jj, w = ii[good], jj[good], w[good]
                sip = sip_degree if (sip_degree and len(ii) >= min_matches_sip) else None
                new = _fit(use, x[ii], y[ii], cat_ra[jj], cat_dec[jj], sip, w, image_shape)
        except (ValueError, np.linalg.LinAlgError) as exc:
            return _failed(solver, f"WCS fit failed: {exc}", n_matches)
        wcs = new
        if last:
            # Chance matches: detections x catalog surface density x match area.
            density = len(idx) / ((nx + 2 * radius) * (ny + 2 * radius))
            n_random = len(x) * density * math.pi * radius**2
            if not _significant(n_matches, n_random, min_matches):
                return _failed(
                    solver,
                    f"{n_matches} matches within {radius:.2g} px are not significant "
                    f"({n_random:.1f} expected by chance)",
                    n_matches,
                )
    res = solution_residuals(wcs, x[ii], y[ii], cat_ra[jj], cat_dec[jj])
    rms = float(np.sqrt(np.mean(res**2)))
    scale = _pixel_scale_deg(wcs) * 3600
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


# ---------------------------------------------------------------------------------------------
# Triangle asterisms
# ---------------------------------------------------------------------------------------------
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
        _check_fitter(self.fitter)
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
            return _failed(self.name, "no reference catalog")
        if wcs_guess is None and self.center_deg is not None and self.scale_arcsec is not None:
            wcs_guess = _hint_wcs(self.center_deg, self.scale_arcsec, image_shape)
        if wcs_guess is None:
            raise ValueError(
                "AsterismSolver.solve needs wcs_guess (the header WCS, or a header pointing and "
                "pixel scale) and a catalog"
            )
        x, y, _, weight = _detection_arrays(detections)
        if len(x) < self.min_matches:
            return _failed(self.name, f"only {len(x)} usable detections")
        cat_ra, cat_dec, _ = _catalog_arrays(catalog, self.mag_column)
        ny, nx = image_shape
        cx0, cy0 = (nx - 1) / 2.0, (ny - 1) / 2.0
        try:
            ra0, dec0 = (float(v) for v in wcs_guess.pixel_to_world_values(cx0, cy0))
            scale0 = _pixel_scale_deg(wcs_guess)
        except Exception as exc:  # a broken header WCS is a bad frame, not a crash
            return _failed(self.name, f"unusable header WCS: {exc}")
        if not (np.isfinite(ra0) and np.isfinite(dec0) and scale0 > 0):
            return _failed(self.name, "unusable header WCS (no centre or scale)")

        # Catalog in "guess pixels": standard coordinates divided by the guessed scale.
        xi, eta = _tangent(cat_ra, cat_dec, ra0, dec0)
        qx, qy = xi / scale0, eta / scale0
        half_diag = 0.5 * math.hypot(nx, ny) * (1 + self.scale_tolerance)
        search = half_diag + self.max_pointing_error_arcmin / 60.0 / scale0
        region = np.isfinite(qx) & (np.hypot(qx, qy) < search)
        q_idx = np.nonzero(region)[0]
        if len(q_idx) < self.min_matches:
            return _failed(
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
            return _failed(self.name, "no triangle asterism of the detections matched the catalog")
        n_verified, i_match, j_match = best
        n_random = n_det * len(q_sel) / (area_ratio * nx * ny) * math.pi * self.verify_radius_px**2
        if not _significant(n_verified, n_random, self.min_matches):
            return _failed(
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
            return _failed(self.name, f"initial WCS fit failed: {exc}", n_verified)
        near = q_idx  # catalog stars near the field only
        return _iterate_fit(
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


# ---------------------------------------------------------------------------------------------
# Refinement from a neighbour's solution
# ---------------------------------------------------------------------------------------------
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
    _check_fitter(fitter)
    if wcs_guess is None:
        raise ValueError("refine_wcs needs a wcs_guess (a neighbouring frame's solution)")
    x, y, _, weight = _detection_arrays(detections)
    if len(x) < min_matches:
        return _failed(name, f"only {len(x)} usable detections")
    if image_shape is None:
        image_shape = (int(np.ceil(y.max())) + 1, int(np.ceil(x.max())) + 1)
    ny, nx = image_shape
    cat_ra, cat_dec, _ = _catalog_arrays(catalog, mag_column)
    if sip_degree is None and wcs_guess.sip is not None:
        sip_degree = int(wcs_guess.sip.a_order)

    def shifted_fit(guess0, ra, dec, cx, cy, dx, dy, radii_px):
        """The fit from the guess shifted by (dx, dy), kept as a pure shift when that is better.

        The catalog through the shifted guess is its projection ``(cx, cy)`` moved by the shift.
        """
        guess, guess_xy = _shifted(guess0, dx, dy), (cx + dx, cy + dy)
        solution = _iterate_fit(
            name,
            x,
            y,
            weight,
            ra,
            dec,
            guess,
            image_shape,
            radii_px=radii_px,
            sip_degree=sip_degree,
            min_matches_sip=min_matches_sip,
            min_matches=min_matches,
            fitter=fitter,
            final_fitter=fitter,
            max_fit_stars=max_fit_stars,
            start_xy=guess_xy,
        )
        if not solution.ok:
            return solution
        return _shift_if_better(
            solution, guess, x, y, weight, ra, dec, image_shape, match_radius_px, guess_xy=guess_xy
        )

    nb = min(n_bright, len(x))

    def search(guess0: WCS) -> AstrometrySolution:
        """The fast drift vote from ``guess0``, then (``wide_search``) the whole field."""
        try:
            ra, dec, cx, cy = _project_catalog(guess0, cat_ra, cat_dec, image_shape, max_shift_px)
        except Exception as exc:  # a broken guess is a failed frame, not a crash
            return _failed(name, f"cannot project the catalog through the guess WCS: {exc}")
        failure = _failed(name, f"only {len(ra)} catalog stars fall on the frame through the guess")
        if len(ra) >= min_matches:
            # Drift: vote on the offsets between the brightest detections and the brightest stars.
            ib = slice(0, 2 * nb)
            dx, dy, n_vote = _offset_vote(cx[ib], cy[ib], x[:nb], y[:nb], max_shift_px, 2.0)
            if n_vote >= min(min_matches, 3):
                radii = (max(3.0, 1.5 * match_radius_px), match_radius_px)
                failure = shifted_fit(guess0, ra, dec, cx, cy, dx, dy, radii)
                if failure.ok:
                    return failure
                if not wide_search:
                    return failure
            else:
                failure = _failed(name, f"no common drift found within {max_shift_px:.0f} px")
        if not wide_search:
            return failure

        # The whole field: catalog stars up to a field width off, at the detections' density.
        try:
            ra, dec, cx, cy = _project_catalog(guess0, cat_ra, cat_dec, image_shape, max(nx, ny))
        except Exception as exc:
            return _failed(name, f"cannot project the catalog through the guess WCS: {exc}")
        if len(ra) < min_matches:
            return failure
        cell = max(nx, ny) / 8.0
        n_cells = len(np.unique(np.floor(np.column_stack([cx, cy]) / cell), axis=0))
        area_ratio = max(n_cells * cell * cell / (nx * ny), 1.0)
        n_q = max(round(2 * nb * area_ratio), 2 * nb)
        bin_px = 4.0
        dx, dy, n_vote, n_chance = pixel_offset(cx[:n_q], cy[:n_q], x[:nb], y[:nb], bin_px=bin_px)
        if not _significant(n_vote, n_chance, min_matches):
            return _failed(
                name,
                f"{failure.message}; no common drift over the whole field either (best {n_vote} "
                f"stars in common, {n_chance:.1f} by chance)",
                failure.n_matches,
            )
        radii = (2 * bin_px, max(3.0, 1.5 * match_radius_px), match_radius_px)
        solution = shifted_fit(guess0, ra, dec, cx, cy, dx, dy, radii)
        found = (
            f"drift ({dx:.0f}, {dy:.0f}) px found over the whole field ({n_vote} stars in common)"
        )
        return dataclasses.replace(solution, message=f"{found}: {solution.message}")

    solution = search(wcs_guess)

    def convincing(found: AstrometrySolution) -> bool:
        # Chance matches (uniform within the last radius) have an rms of 0.7 radius; a frame
        # turned away from the guess can give a few of them a significant-looking fit.
        return found.ok and (
            found.n_matches >= 3 * min_matches and found.rms_px <= 0.5 * match_radius_px
        )

    if not rotation_search or convincing(solution):
        return solution
    # A meridian flip: the camera turned 180 deg with the tube, often with a shift.
    candidates = [solution]
    turned = _turned_180(wcs_guess, image_shape)
    flipped = search(turned)
    if flipped.ok:
        _, dx, dy = _turn_and_drift(flipped.wcs, wcs_guess, image_shape)
        found = "turned 180 deg (meridian flip?) and "
        if not flipped.message.startswith("drift ("):
            found += f"drift ({dx:.0f}, {dy:.0f}) px: "
        candidates.append(dataclasses.replace(flipped, message=found + flipped.message))
    if wide_search and not convincing(flipped):
        # Any angle: triangle asterisms (rotation-invariant) at the guess's scale, within a
        # field width of its pointing; the match is then refined as any frame's.
        asterism = AsterismSolver(
            n_detections=max(nb, 4),
            max_pointing_error_arcmin=max(nx, ny) * _pixel_scale_deg(wcs_guess) * 60,
            scale_tolerance=0.03,
            min_matches=min_matches,
            sip_degree=sip_degree,
            min_matches_sip=min_matches_sip,
            fitter="linear",
            mag_column=mag_column,
            max_fit_stars=max_fit_stars,
            name=name,
        ).solve(detections, image_shape, wcs_guess=wcs_guess, catalog=catalog)
        if asterism.ok:
            refined = search(asterism.wcs)
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
    return _failed(
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
    turn = np.linalg.inv(_celestial(wcs).pixel_scale_matrix) @ _celestial(guess).pixel_scale_matrix
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
    scale = _pixel_scale_deg(wcs)
    xi, eta = _tangent(ra, dec, ra0, dec0)
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
    i, j = _mutual_match(x, y, cx, cy, radius_px)
    # The stars the fit kept: without wrong matches and blends (4 sigma, as `_iterate_fit`).
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
    scale = _pixel_scale_deg(shifted) * 3600
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


# ---------------------------------------------------------------------------------------------
# astrometry.net: local solve-field
# ---------------------------------------------------------------------------------------------
def _scale_hint(
    wcs_guess: WCS | None, tolerance: float, scale_arcsec: float | None = None
) -> dict[str, float]:
    """The scale range to search: around ``scale_arcsec`` when given, else the guess's scale."""
    if scale_arcsec is None:
        if wcs_guess is None:
            return {}
        scale_arcsec = _pixel_scale_deg(wcs_guess) * 3600.0
    scale = float(scale_arcsec)
    return {"scale_low": scale * (1 - tolerance), "scale_high": scale * (1 + tolerance)}


def _hint_wcs(
    center_deg: tuple[float, float], scale_arcsec: float, image_shape: tuple[int, int]
) -> WCS:
    """A tangent plane at a pointing with a scale (north up: only its centre and scale count)."""
    ny, nx = image_shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [float(center_deg[0]), float(center_deg[1])]
    wcs.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    wcs.wcs.cd = np.array([[-1.0, 0.0], [0.0, 1.0]]) * float(scale_arcsec) / 3600
    wcs.pixel_shape = (int(nx), int(ny))
    return wcs


def _center_hint(
    wcs_guess: WCS | None, image_shape: tuple[int, int], center_deg: tuple[float, float] | None
) -> tuple[float, float] | None:
    """The field centre to search around: ``center_deg`` when given, else the guess's centre."""
    if center_deg is not None:
        return float(center_deg[0]), float(center_deg[1])
    if wcs_guess is None:
        return None
    ny, nx = image_shape
    ra, dec = wcs_guess.pixel_to_world_values((nx - 1) / 2, (ny - 1) / 2)
    return float(ra), float(dec)


def _write_xylist(path: Path, x: np.ndarray, y: np.ndarray, flux: np.ndarray) -> None:
    """An astrometry.net xylist: FITS 1-based X, Y and FLUX, brightest first."""
    cols = [
        fits.Column(name="X", format="D", array=np.asarray(x, float) + 1.0),
        fits.Column(name="Y", format="D", array=np.asarray(y, float) + 1.0),
        fits.Column(name="FLUX", format="D", array=np.asarray(flux, float)),
    ]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(
        path, overwrite=True
    )


def _solution_from_header(
    header: fits.Header | dict,
    solver: str,
    x: np.ndarray,
    y: np.ndarray,
    image_shape: tuple[int, int],
    catalog: pd.DataFrame | None,
    mag_column: str,
    corr: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> AstrometrySolution:
    """An AstrometrySolution from a solver's WCS header and its matches (or the catalog's)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            wcs = WCS(fits.Header(header), naxis=2, relax=True).celestial
        except Exception as exc:
            return _failed(solver, f"unreadable WCS header from the solver: {exc}")
    if not wcs.has_celestial:
        return _failed(solver, "the solver returned a header without a celestial WCS")
    wcs.pixel_shape = (int(image_shape[1]), int(image_shape[0]))
    scale = _pixel_scale_deg(wcs) * 3600.0
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


def _run(cmd: list[str], timeout_s: float, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
    )


@register_solver("solve-field")
@dataclass(frozen=True)
class SolveFieldSolver:
    """astrometry.net's local ``solve-field`` on an xylist of the detections.

    Parameters
    ----------
    index_dir : str or Path, optional
        Directory of index files (e.g. from `build_index`); default the system configuration
        (``/etc/astrometry.cfg``, Debian's ``astrometry-data-*`` packages).
    timeout_s : float
        Wall-clock limit of one solve (also passed as ``--cpulimit``).
    n_detections : int
        Brightest detections written to the xylist.
    scale_tolerance : float
        Relative width of the pixel-scale hint around the guess's scale.
    search_radius_deg : float or None
        With a guess, search only this far from its centre; None for a blind search of the sky.
    tweak_order : int
        SIP order of astrometry.net's tweak (0 or 1 disables distortion).
    executable : str
        The ``solve-field`` program.
    mag_column : str
        Catalog magnitude column (for computing residuals against a catalog).
    scale_arcsec : float, optional
        A pixel-scale hint (arcsec/px, e.g. from `header_pixel_scale`), used instead of the
        guess's scale.
    center_deg : tuple of float, optional
        A pointing hint ``(ra, dec)`` used instead of the guess's centre (searched within
        ``search_radius_deg``).
    hint_sources : str
        Where the hints came from, for the solution's message.
    """

    index_dir: str | Path | None = None
    timeout_s: float = 120.0
    n_detections: int = 150
    scale_tolerance: float = 0.2
    search_radius_deg: float | None = 1.0
    tweak_order: int = 2
    executable: str = "solve-field"
    mag_column: str = "mag"
    scale_arcsec: float | None = None
    center_deg: tuple[float, float] | None = None
    hint_sources: str = ""
    name: str = "solve-field"
    costly: ClassVar[bool] = True
    """Seconds to a minute a solve: a reference search tries it on one frame, not three."""

    @classmethod
    def from_config(
        cls, config: AstrometryConfig, *, hints: SolveHints, mag_column: str
    ) -> SolveFieldSolver:
        """The solver of ``[astrometry] solver = "solve-field"``, with a frame's header hints.

        Parameters
        ----------
        config : AstrometryConfig
            ``index_dir``, ``timeout_s``, ``n_detections``, ``scale_tolerance`` and
            ``search_radius_deg``.
        hints : SolveHints
            The frame's pixel scale and pointing from its header (`solve_hints`).
        mag_column : str
            The catalog's magnitude column.

        Returns
        -------
        SolveFieldSolver
        """
        sources = []
        if hints.scale_arcsec is not None:
            sources.append(f'scale hint {hints.scale_arcsec:.2f}"/px from {hints.scale_source}')
        if hints.center is not None:
            sources.append(f"position hint from the {hints.pointing_source}")
        return cls(
            index_dir=config.index_dir or None,
            timeout_s=config.timeout_s,
            n_detections=config.n_detections,
            scale_tolerance=config.scale_tolerance,
            search_radius_deg=config.search_radius_deg,
            mag_column=mag_column,
            scale_arcsec=hints.scale_arcsec,
            center_deg=hints.center,
            hint_sources="; ".join(sources),
        )

    def available(self) -> bool:
        """True when the ``solve-field`` executable is on the PATH."""
        return shutil.which(self.executable) is not None

    def command(
        self, xylist: Path, work: Path, image_shape: tuple[int, int], wcs_guess: WCS | None
    ) -> list[str]:
        """The ``solve-field`` command line for an xylist (exposed for logging and tests).

        Parameters
        ----------
        xylist : Path
            The xylist FITS file.
        work : Path
            Scratch directory for the outputs.
        image_shape : tuple of int
            ``(ny, nx)``.
        wcs_guess : astropy.wcs.WCS, optional
            Gives the scale and position hints.

        Returns
        -------
        list of str
            The arguments.
        """
        ny, nx = image_shape
        cmd = [
            self.executable,
            str(xylist),
            "--no-plots",
            "--overwrite",
            "--no-remove-lines",
            "--no-verify-uniformize",
            "--width", str(nx),
            "--height", str(ny),
            "--x-column", "X",
            "--y-column", "Y",
            "--sort-column", "FLUX",
            "--dir", str(work),
            "--temp-dir", str(work),
            "--new-fits", "none",
            "--index-xyls", "none",
            "--rdls", "none",
            "--match", "none",
            "--solved", str(work / "solved"),
            "--wcs", str(work / "solution.wcs"),
            "--corr", str(work / "solution.corr"),
            "--cpulimit", str(math.ceil(self.timeout_s)),
            "--crpix-center",
            "--objs", str(self.n_detections),
        ]  # fmt: skip
        if self.tweak_order >= 2:
            cmd += ["--tweak-order", str(self.tweak_order)]
        else:
            cmd += ["--no-tweak"]
        hint = _scale_hint(wcs_guess, self.scale_tolerance, self.scale_arcsec)
        if hint:
            cmd += ["--scale-units", "arcsecperpix"]
            cmd += ["--scale-low", f"{hint['scale_low']:.6f}"]
            cmd += ["--scale-high", f"{hint['scale_high']:.6f}"]
        center = _center_hint(wcs_guess, image_shape, self.center_deg)
        if center is not None and self.search_radius_deg is not None:
            cmd += ["--ra", f"{center[0]:.8f}", "--dec", f"{center[1]:.8f}"]
            cmd += ["--radius", f"{self.search_radius_deg:.6f}"]
        if self.index_dir is not None:
            cfg = work / "astrometry.cfg"
            cfg.write_text(
                f"inparallel\ncpulimit {math.ceil(self.timeout_s)}\n"
                f"add_path {Path(self.index_dir).resolve()}\nautoindex\n"
            )
            cmd += ["--config", str(cfg)]
        return cmd

    def _failure(self, output: list[str], image_shape, wcs_guess: WCS | None) -> str:
        """Why solve-field did not solve, in one line: the index files and hints it had."""
        n_index = len(installed_index_files(self.index_dir))
        hint = _scale_hint(wcs_guess, self.scale_tolerance, self.scale_arcsec)
        low, high = hint.get("scale_low"), hint.get("scale_high")
        scale = f', scale {low:.2f}-{high:.2f}"/px' if hint else ", no scale hint"
        errors = [line for line in output if "error" in line.lower()][:1]
        detail = f": {errors[0].strip()[:160]}" if errors else ""
        return f"solve-field did not solve ({n_index} index files{scale}){detail}"

    def solve(
        self,
        detections: pd.DataFrame,
        image_shape: tuple[int, int],
        *,
        wcs_guess: WCS | None = None,
        catalog: pd.DataFrame | None = None,
    ) -> AstrometrySolution:
        """Run ``solve-field`` on the detections (see the class docstring).

        Parameters
        ----------
        detections : pandas.DataFrame
            The frame's detections.
        image_shape : tuple of int
            ``(ny, nx)``.
        wcs_guess : astropy.wcs.WCS, optional
            Scale and position hints; None for a fully blind solve.
        catalog : pandas.DataFrame, optional
            Unused by the solver itself; the residuals come from astrometry.net's matches.

        Returns
        -------
        AstrometrySolution
            ``status == "failed"`` when ``solve-field`` is missing, times out or does not solve.
        """
        if not self.available():
            return _failed(self.name, f"{self.executable} is not installed (see scripts/)")
        if not installed_index_files(self.index_dir):
            where = self.index_dir or ", ".join(map(str, default_index_dirs()))
            return _failed(
                self.name,
                f"no astrometry.net index files in {where}: install astrometry-data-tycho2 "
                "(scripts/install-system-deps.sh) or set [astrometry] index_dir",
            )
        x, y, flux, _ = _detection_arrays(detections)
        if len(x) < 4:
            return _failed(self.name, f"only {len(x)} usable detections")
        with tempfile.TemporaryDirectory(prefix="lcdask-solve-") as tmp:
            work = Path(tmp)
            xylist = work / "field.xyls"
            n = self.n_detections
            _write_xylist(xylist, x[:n], y[:n], flux[:n])
            cmd = self.command(xylist, work, image_shape, wcs_guess)
            try:
                proc = _run(cmd, self.timeout_s + 30.0, work)
            except subprocess.TimeoutExpired:
                return _failed(self.name, f"solve-field timed out after {self.timeout_s:.0f} s")
            except OSError as exc:
                return _failed(self.name, f"solve-field could not run: {exc}")
            wcs_path = work / "solution.wcs"
            if not (work / "solved").exists() or not wcs_path.exists():
                output = (proc.stdout + proc.stderr).strip().splitlines()
                return _failed(self.name, self._failure(output, image_shape, wcs_guess))
            header = fits.getheader(wcs_path)
            corr = None
            corr_path = work / "solution.corr"
            if corr_path.exists():
                with fits.open(corr_path) as hdul:
                    data = hdul[1].data
                    corr = (
                        np.asarray(data["field_x"], float) - 1.0,
                        np.asarray(data["field_y"], float) - 1.0,
                        np.asarray(data["index_ra"], float),
                        np.asarray(data["index_dec"], float),
                    )
        solution = _solution_from_header(
            header, self.name, x, y, image_shape, catalog, self.mag_column, corr
        )
        if not solution.ok:
            return solution
        center = _center_hint(wcs_guess, image_shape, self.center_deg)
        how = "blind" if center is None or self.search_radius_deg is None else "near the pointing"
        index = _solve_field_index_id(header)
        details = ", ".join(
            part
            for part in (
                f"index {index}" if index else "",
                f'{_pixel_scale_deg(solution.wcs) * 3600:.2f}"/px',
                f"rotation {wcs_rotation_deg(solution.wcs):.1f} deg",
            )
            if part
        )
        hints = f"; {self.hint_sources}" if self.hint_sources else ""
        message = (
            f"solved {how} by solve-field ({details}); {solution.n_matches} matched stars{hints}"
        )
        return dataclasses.replace(solution, message=message)


def build_index(
    catalog: pd.DataFrame,
    out_dir: str | Path,
    *,
    field_width_arcmin: float | None = None,
    scale_numbers: Sequence[int] | None = None,
    mag_column: str = "mag",
    index_id: int = 9000,
    executable: str = "build-astrometry-index",
    timeout_s: float = 600.0,
) -> list[Path]:
    """Build astrometry.net index files from a reference catalog with ``build-astrometry-index``.

    Parameters
    ----------
    catalog : pandas.DataFrame
        ``ra``, ``dec`` (degrees) and ``mag_column`` (brightest stars make the quads).
    out_dir : str or Path
        Directory for the index files (created); give it to `SolveFieldSolver` as ``index_dir``.
    field_width_arcmin : float, optional
        Width of the images to solve: the scale presets whose quads span 15-80% of it are built.
    scale_numbers : sequence of int, optional
        The ``-P`` presets to build (0: quads of 2-2.8', each step sqrt(2) larger); overrides
        ``field_width_arcmin``.
    mag_column : str, optional
        Sort column.
    index_id : int, optional
        Unique id of the first index (the next ones count up).
    executable : str, optional
        The ``build-astrometry-index`` program.
    timeout_s : float, optional
        Limit of each build.

    Returns
    -------
    list of Path
        The index files written.

    Raises
    ------
    FileNotFoundError
        When ``build-astrometry-index`` is not installed.
    ValueError
        Without a field width or scale numbers, or for an unusable catalog.
    RuntimeError
        When a build fails (its output is in the message).
    """
    exe = shutil.which(executable)
    if exe is None:
        raise FileNotFoundError(
            f"{executable} not found; install astrometry.net (scripts/install-system-deps.sh)"
        )
    ra, dec, mag = _catalog_arrays(catalog, mag_column)
    if len(ra) < 10:
        raise ValueError(f"build_index needs at least 10 catalog stars, got {len(ra)}")
    if scale_numbers is None:
        if field_width_arcmin is None:
            raise ValueError("build_index needs field_width_arcmin or scale_numbers")
        scale_numbers = [
            k
            for k in range(0, 20)
            if 2.0 * math.sqrt(2) ** (k + 1) > 0.15 * field_width_arcmin
            and 2.0 * math.sqrt(2) ** k < 0.8 * field_width_arcmin
        ] or [0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mag = np.where(np.isfinite(mag), mag, 99.0)
    written = []
    with tempfile.TemporaryDirectory(prefix="lcdask-index-") as tmp:
        cat_path = Path(tmp) / "catalog.fits"
        cols = [
            fits.Column(name="RA", format="D", array=ra),
            fits.Column(name="DEC", format="D", array=dec),
            fits.Column(name="MAG", format="D", array=mag),
        ]
        fits.BinTableHDU.from_columns(cols).writeto(cat_path, overwrite=True)
        for n, scale in enumerate(scale_numbers):
            path = out / f"index-{index_id + n}-{int(scale):02d}.fits"
            cmd = [
                exe, "-i", str(cat_path), "-o", str(path), "-P", str(int(scale)),
                "-S", "MAG", "-E", "-M", "-I", str(index_id + n), "-t", tmp,
            ]  # fmt: skip
            proc = _run(cmd, timeout_s, Path(tmp))
            if proc.returncode != 0 or not path.exists():
                raise RuntimeError(
                    f"build-astrometry-index failed for preset {scale}: "
                    + (proc.stdout + proc.stderr)[-800:]
                )
            written.append(path)
    return written


# ---------------------------------------------------------------------------------------------
# astrometry.net web service
# ---------------------------------------------------------------------------------------------
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
        hint = _scale_hint(wcs_guess, self.scale_tolerance, self.scale_arcsec)
        if hint:
            settings.update(
                scale_units="arcsecperpix",
                scale_type="ul",
                scale_lower=hint["scale_low"],
                scale_upper=hint["scale_high"],
            )
        center = _center_hint(wcs_guess, image_shape, self.center_deg)
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
            return _failed(self.name, "offline: the astrometry.net web service is not asked")
        if self.resolved_api_key() is None:
            return _failed(
                self.name,
                "no astrometry.net API key: pass api_key or set ASTROMETRY_NET_API_KEY",
            )
        x, y, _, _ = _detection_arrays(detections)
        if len(x) < 4:
            return _failed(self.name, f"only {len(x)} usable detections")
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
            return _failed(self.name, f"astrometry.net did not answer in {self.timeout_s:.0f} s")
        except Exception as exc:  # network, HTTP and API errors all mean "not solved"
            return _failed(self.name, f"astrometry.net request failed: {type(exc).__name__}: {exc}")
        if not header:
            return _failed(self.name, "astrometry.net could not solve the field")
        return _solution_from_header(header, self.name, x, y, image_shape, catalog, self.mag_column)


# ---------------------------------------------------------------------------------------------
# The header's own WCS, checked against the catalog
# ---------------------------------------------------------------------------------------------
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
            return _failed(self.name, "no WCS in the header")
        if catalog is None or not len(catalog):
            return _failed(self.name, "no catalog to check the header WCS against")
        x, y, _, _ = _detection_arrays(detections)
        x, y = x[: self.n_detections], y[: self.n_detections]
        if len(x) < self.min_matches:
            return _failed(self.name, f"only {len(x)} usable detections")
        ny, nx = image_shape
        wcs = _celestial(wcs_guess).deepcopy()
        wcs.pixel_shape = (int(nx), int(ny))
        cat_ra, cat_dec, _ = _catalog_arrays(catalog, self.mag_column)
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore")
            try:
                cx, cy = wcs.world_to_pixel_values(cat_ra, cat_dec)
            except Exception as exc:  # a broken header WCS is a bad frame, not a crash
                return _failed(self.name, f"unusable header WCS: {exc}")
        inside = np.isfinite(cx) & (cx > -0.5) & (cx < nx - 0.5) & (cy > -0.5) & (cy < ny - 0.5)
        stars = np.flatnonzero(inside)[: 2 * len(x)]
        if len(stars) < self.min_matches:
            return _failed(
                self.name, f"only {len(stars)} catalog stars inside the field of the header WCS"
            )
        found = match_catalog(
            pd.DataFrame({"x": x, "y": y}),
            wcs,
            pd.DataFrame({"ra": cat_ra[stars], "dec": cat_dec[stars]}),
            radius_arcsec=self.match_radius_arcsec,
        )
        scale = _pixel_scale_deg(wcs) * 3600
        area = nx * ny * scale**2
        n_random = len(x) * len(stars) / area * math.pi * self.match_radius_arcsec**2
        n = len(found)
        if not _significant(n, n_random, self.min_matches):
            return _failed(
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


# ---------------------------------------------------------------------------------------------
# Configuration, and the configured solvers in turn
# ---------------------------------------------------------------------------------------------
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
    config: AstrometryConfig, *, hints: SolveHints = SolveHints(), mag_column: str = "mag"
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
            solution = _failed(solver.name, str(exc))
        if solution.ok:
            return solution
        reasons.append(f"{solver.name}: {solution.message}")
    name = solvers[0].name if len(solvers) == 1 else "auto"
    return _failed(name, "; ".join(reasons) or "no solver configured")


def default_index_dirs() -> list[Path]:
    """Where solve-field looks for index files without ``index_dir``.

    The ``add_path`` lines of ``/etc/astrometry.cfg`` (and of the Homebrew/conda
    ``astrometry.cfg`` next to the ``solve-field`` program), else ``/usr/share/astrometry``
    and ``/usr/local/astrometry/data``.

    Returns
    -------
    list of Path
    """
    configs = [Path("/etc/astrometry.cfg")]
    program = shutil.which("solve-field")
    if program:
        root = Path(program).resolve().parent.parent
        configs += [root / "etc" / "astrometry.cfg"]
    dirs = []
    for cfg in configs:
        try:
            lines = cfg.read_text().splitlines()
        except OSError:
            continue
        paths = [line.split(None, 1) for line in lines if line.startswith("add_path")]
        dirs += [Path(p[1].strip()) for p in paths if len(p) == 2]
    return dirs or [Path("/usr/share/astrometry"), Path("/usr/local/astrometry/data")]


def installed_index_files(index_dir: str | Path | None = None) -> list[Path]:
    """The astrometry.net index files solve-field would use.

    Parameters
    ----------
    index_dir : str or Path, optional
        A directory of index files; default `default_index_dirs`.

    Returns
    -------
    list of Path
        ``index-*.fits`` (and ``.fits.fz``) files, sorted; empty when there are none.
    """
    dirs = [Path(index_dir).expanduser()] if index_dir else default_index_dirs()
    files: list[Path] = []
    for folder in dirs:
        if folder.is_dir():
            files += sorted(folder.glob("index-*.fits")) + sorted(folder.glob("index-*.fits.fz"))
    return files
