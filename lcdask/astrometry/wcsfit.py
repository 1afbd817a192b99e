"""Fitting a TAN or TAN-SIP WCS to matched pixel and sky positions.

`fit_wcs_linear` is a weighted linear least-squares fit (exact for TAN, about a millisecond);
`fit_wcs` chooses between it and astropy's ``fit_wcs_from_points`` (``fitter="linear"`` or
``"astropy"``, checked by `check_fitter`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from astropy.wcs import WCS, Sip

from lcdask._utils.skygeom import mean_radec, tangent_plane, untangent_plane

__all__ = ["check_fitter", "fit_wcs", "fit_wcs_linear"]


def _monomials(degree: int, start: int) -> list[tuple[int, int]]:
    return [(p, d - p) for d in range(start, degree + 1) for p in range(d, -1, -1)]


def _design(u: np.ndarray, v: np.ndarray, terms: Sequence[tuple[int, int]]) -> np.ndarray:
    return np.column_stack([u**p * v**q for p, q in terms]) if terms else np.zeros((len(u), 0))


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
    ra0, dec0 = mean_radec(ra, dec)
    for _ in range(4):
        xi, eta = tangent_plane(ra, dec, ra0, dec0, unit="deg")
        rhs = np.column_stack([xi * sw, eta * sw])
        coef = np.linalg.lstsq(design * sw[:, None], rhs, rcond=None)[0]
        coef_xi, coef_eta = coef[:, 0], coef[:, 1]
        ra0, dec0 = (
            float(v[0]) for v in untangent_plane(coef_xi[:1], coef_eta[:1], ra0, dec0, unit="deg")
        )
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


def fit_wcs(
    fitter: str,
    x: np.ndarray,
    y: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    sip_degree: int | None,
    weights: np.ndarray | None,
    image_shape: tuple[int, int] | None,
) -> WCS:
    """A WCS fitted to matched points by ``fitter``: `fit_wcs_linear` or astropy's.

    Parameters
    ----------
    fitter : {"linear", "astropy"}
        `fit_wcs_linear` (weighted), or astropy's ``fit_wcs_from_points`` (unweighted, the
        tangent point at the centre of the points).
    x, y : numpy.ndarray
        0-based pixel positions.
    ra, dec : numpy.ndarray
        Catalog positions (degrees).
    sip_degree : int or None
        SIP degree; None for TAN.
    weights : numpy.ndarray or None
        Least-squares weights (``"linear"`` only).
    image_shape : tuple of int or None
        ``(ny, nx)``.

    Returns
    -------
    astropy.wcs.WCS
    """
    if fitter == "astropy":
        return _fit_wcs_astropy(x, y, ra, dec, sip_degree, image_shape)
    return fit_wcs_linear(
        x, y, ra, dec, sip_degree=sip_degree, weights=weights, image_shape=image_shape
    )


def check_fitter(fitter: str) -> None:
    """Check a ``fitter`` option.

    Parameters
    ----------
    fitter : str
        ``"linear"`` or ``"astropy"``.

    Raises
    ------
    ValueError
        For another value.
    """
    if fitter not in ("linear", "astropy"):
        raise ValueError(f"fitter must be 'linear' or 'astropy', got {fitter!r}")
