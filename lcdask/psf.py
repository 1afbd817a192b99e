"""The effective PSF: built once from the co-add, scaled per frame, fitted fast at known positions.

- `select_psf_stars` picks isolated, unsaturated, bright stars (sep detections; saturated stars
  are recognised by their flattened core, i.e. a low peak-to-flux ratio, so no saturation level is
  needed on a co-add).
- `build_epsf` builds the ePSF with photutils' `EPSFBuilder` (Anderson & King 2000) and returns a
  `PSFModel`: the oversampled ePSF normalised so that, sampled at whole-pixel offsets, it sums to 1
  (photutils' `ImagePSF` convention), and its FWHM measured by a pixel-integrated Moffat fit
  (`measure_fwhm`), i.e. the FWHM of the PSF before pixel sampling.
- `PSFModel.scaled_to(fwhm_px)` stretches the model to a frame's FWHM:
  ``P_s(dx, dy) = P(dx / s, dy / s) / s**2`` with ``s = fwhm_frame / fwhm_model`` (exact for a
  Moffat or Gaussian of fixed shape; the pixel response is stretched too, a small second-order
  error at FWHM >= 2.5 px). `refine_scale` fits ``s`` on a frame's bright stars when the frame's
  FWHM is not trusted.
- `forced_psf_photometry` is the fast PSF fit at known positions. With positions and PSF fixed,
  the model ``sum_i f_i P_i`` is linear in the fluxes: the stars are grouped where their fit
  regions (radius ``fit_radius``) overlap; isolated stars (most of them) are solved all at once
  with array arithmetic, overlapping groups (blends) each with one small dense weighted
  least-squares solve. The light a star spreads beyond its neighbours' fit regions is handled by
  iterating on the residual image (the model of all stars rendered over the PSF's full extent),
  and the weights ``1 / (rms^2 + model / gain)`` come from the model, not the data (data weights
  bias faint fluxes). Errors are ``sqrt(diag((A^T W A)^-1))``.
- ``benchmarks/baselines.py`` wraps photutils' `PSFPhotometry` with the same model, as the
  reference of the tests and benchmarks (slow: an astropy-modeling fit per source).

Pixel positions are 0-based: the centre of ``image[y, x]`` is ``(x, y)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from scipy import ndimage, optimize
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from lcdask.errors import LcdaskError

__all__ = [
    "FORCED_PSF_SCHEMA",
    "PSFModel",
    "build_epsf",
    "fit_moffat_psf",
    "forced_psf_photometry",
    "measure_fwhm",
    "refine_scale",
    "select_psf_stars",
]

FORCED_PSF_SCHEMA = {
    "x": "float64",
    "y": "float64",
    "flux": "float64",
    "flux_err": "float64",
    "chi2": "float32",
    "group_id": "int64",
    "group_size": "int32",
}
"""Columns of `forced_psf_photometry`'s table: positions (as given), flux and its 1-sigma error,
reduced chi^2 of the fit region, the id and size of the star's blend group."""

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


@dataclass(frozen=True)
class PSFModel:
    """An oversampled effective PSF, optionally stretched to another FWHM.

    Attributes
    ----------
    data : numpy.ndarray
        Oversampled ePSF (odd shape), centred on its central element and normalised so that
        ``data.sum() == oversampling**2`` (it sums to 1 sampled at whole-pixel offsets).
    oversampling : int
        Samples per detector pixel along each axis.
    fwhm_px : float
        FWHM of the unscaled model (detector pixels).
    scale : float
        Spatial stretch applied by `evaluate` (1 for the model as built).
    """

    data: np.ndarray
    oversampling: int
    fwhm_px: float
    scale: float = 1.0
    _coeffs: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        data = np.asarray(self.data, dtype=np.float64)
        if data.ndim != 2 or data.shape[0] % 2 == 0 or data.shape[1] % 2 == 0:
            raise ValueError(f"PSFModel.data must be 2-D with odd sides, got shape {data.shape}")
        if self.oversampling < 1 or self.scale <= 0 or not np.isfinite(self.fwhm_px):
            raise ValueError(
                "PSFModel needs oversampling >= 1, scale > 0 and a finite fwhm_px, got "
                f"{self.oversampling}, {self.scale}, {self.fwhm_px}"
            )
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "_coeffs", ndimage.spline_filter(data, order=3))

    @property
    def effective_fwhm_px(self) -> float:
        """FWHM of the model as evaluated (``fwhm_px * scale``)."""
        return self.fwhm_px * self.scale

    @property
    def radius_px(self) -> float:
        """Half-width of the model's support in detector pixels (after scaling)."""
        return (min(self.data.shape) // 2) / self.oversampling * self.scale

    def scaled_to(self, fwhm_px: float) -> PSFModel:
        """The model stretched to a frame's FWHM.

        Parameters
        ----------
        fwhm_px : float
            The frame's FWHM (pixels).

        Returns
        -------
        PSFModel
            Same data, ``scale = fwhm_px / self.fwhm_px``.
        """
        if not (np.isfinite(fwhm_px) and fwhm_px > 0):
            raise ValueError(f"PSFModel.scaled_to needs a positive FWHM, got {fwhm_px!r}")
        return replace(self, scale=float(fwhm_px) / self.fwhm_px)

    def evaluate(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Fraction of a star's flux in the pixel at offset ``(dx, dy)`` from the star.

        Parameters
        ----------
        dx, dy : array_like
            Offsets of pixel centres from the star (detector pixels), any matching shape.

        Returns
        -------
        numpy.ndarray
            Model values (0 outside the support), same shape as ``dx``.
        """
        dx = np.asarray(dx, dtype=np.float64)
        dy = np.asarray(dy, dtype=np.float64)
        cy, cx = (s // 2 for s in self.data.shape)
        k = self.oversampling / self.scale
        coords = np.empty((2, dx.size))
        np.multiply(dy.ravel(), k, out=coords[0])
        coords[0] += cy
        np.multiply(dx.ravel(), k, out=coords[1])
        coords[1] += cx
        values = ndimage.map_coordinates(
            self._coeffs, coords, order=3, mode="constant", cval=0.0, prefilter=False
        )
        return values.reshape(dx.shape) / self.scale**2

    def render(self, half_width: int | None = None) -> np.ndarray:
        """The model at whole-pixel offsets on a ``(2h+1, 2h+1)`` grid (sums to about 1)."""
        h = int(np.ceil(self.radius_px)) if half_width is None else int(half_width)
        oy, ox = np.mgrid[-h : h + 1, -h : h + 1]
        return self.evaluate(ox, oy)

    def to_image_psf(self):
        """The model (at its current scale) as a photutils `ImagePSF`."""
        from photutils.psf import ImagePSF

        data = self.data
        if self.scale != 1.0:
            n = 2 * int(np.ceil((min(self.data.shape) // 2) * self.scale)) + 1
            c = n // 2
            o = (np.arange(n) - c) / self.oversampling
            data = self.evaluate(o[None, :] + 0 * o[:, None], o[:, None] + 0 * o[None, :])
            data = np.clip(data, 0.0, None) * self.oversampling**2
            data *= self.oversampling**2 / data.sum()
        return ImagePSF(data, oversampling=self.oversampling)

    def to_hdu(self):
        """The model as a FITS `ImageHDU` (``OVERSAMP``, ``FWHM_PX``, ``PSFSCALE`` keys)."""
        from astropy.io import fits

        hdu = fits.ImageHDU(self.data.astype(np.float32), name="EPSF")
        hdu.header["OVERSAMP"] = (self.oversampling, "ePSF samples per detector pixel")
        hdu.header["FWHM_PX"] = (self.fwhm_px, "FWHM of the unscaled ePSF (detector px)")
        hdu.header["PSFSCALE"] = (self.scale, "spatial stretch applied to the ePSF")
        hdu.header["PSFNORM"] = ("sum(data) = OVERSAMP**2", "normalisation")
        return hdu

    @classmethod
    def from_hdu(cls, hdu) -> PSFModel:
        """Read a model written by `to_hdu`."""
        h = hdu.header
        return cls(
            np.asarray(hdu.data, dtype=np.float64),
            int(h["OVERSAMP"]),
            float(h["FWHM_PX"]),
            float(h.get("PSFSCALE", 1.0)),
        )


# ---------------------------------------------------------------------------------------------
# FWHM of a model


def _moffat_box(params: np.ndarray, u: np.ndarray, v: np.ndarray, sub: np.ndarray) -> np.ndarray:
    amp, x0, y0, fwhm, beta = params
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    du = u[..., None, None] - x0 + sub[None, :, None]
    dv = v[..., None, None] - y0 + sub[None, None, :]
    prof = (1.0 + (du * du + dv * dv) / alpha**2) ** (-beta)
    return amp * prof.mean(axis=(-2, -1))


def measure_fwhm(psf: PSFModel) -> float:
    """FWHM (detector px) of a model, by a pixel-integrated circular Moffat fit.

    The ePSF is the PSF convolved with the pixel; the fit model is a circular Moffat averaged
    over a 1-px square, so the returned FWHM is that of the PSF itself (the geometric mean of the
    axes for a mildly elliptical PSF), comparable with a simulator's or a seeing monitor's FWHM.

    Parameters
    ----------
    psf : PSFModel
        The model (its ``scale`` is applied).

    Returns
    -------
    float
        The FWHM in detector pixels.
    """
    data = psf.data
    os_ = psf.oversampling
    cy, cx = (s // 2 for s in data.shape)
    yy, xx = np.mgrid[: data.shape[0], : data.shape[1]]
    u = (xx - cx) / os_
    v = (yy - cy) / os_
    peak = data.max()
    # first guess from the half-maximum area
    area = (data >= 0.5 * peak).sum() / os_**2
    fwhm0 = max(2.0 * np.sqrt(area / np.pi), 1.0)
    sel = np.hypot(u, v) <= 2.5 * fwhm0
    sub = (np.arange(5) + 0.5) / 5.0 - 0.5
    uu, vv, dd = u[sel], v[sel], data[sel]

    def resid(p: np.ndarray) -> np.ndarray:
        return _moffat_box(p, uu, vv, sub) - dd

    p0 = np.array([peak * 1.2, 0.0, 0.0, fwhm0, 3.0])
    lo = [0.0, -1.0, -1.0, 0.3, 1.01]
    hi = [np.inf, 1.0, 1.0, 10 * fwhm0 + 5, 30.0]
    fit = optimize.least_squares(resid, p0, bounds=(lo, hi), x_scale="jac")
    return float(fit.x[3]) * psf.scale


# ---------------------------------------------------------------------------------------------
# star selection and ePSF building


def _clean_image(image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    data = np.ascontiguousarray(image, dtype=np.float32)
    bad = ~np.isfinite(data)
    if mask is not None:
        bad |= np.asarray(mask, dtype=bool)
    if bad.any():
        data = data.copy()
        data[bad] = 0.0
    return data, bad


def select_psf_stars(
    image: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    n_stars: int = 60,
    fwhm_px: float | None = None,
    cutout_fwhm: float = 5.0,
    isolation_fwhm: float = 5.0,
    saturation: float | None = None,
    min_snr: float = 50.0,
) -> pd.DataFrame:
    """Choose isolated, unsaturated, bright stars for building the PSF.

    Parameters
    ----------
    image : numpy.ndarray
        2-D sky-subtracted image (a residual sky is re-estimated and removed).
    mask : numpy.ndarray of bool, optional
        True where a pixel is bad (NaN pixels are masked too).
    n_stars : int, optional
        Largest number of stars returned (the brightest that qualify).
    fwhm_px : float, optional
        The image's FWHM; estimated from the detections when not given.
    cutout_fwhm : float, optional
        Half-size of the star cutouts in units of the FWHM: the star must be this far from the
        edge and from masked pixels.
    isolation_fwhm : float, optional
        No other detection brighter than 1% of the star within ``max(cutout, this)`` FWHM.
    saturation : float, optional
        Peak level (image units, sky included) above which a star is saturated; when not given,
        saturated stars are recognised by a peak-to-flux ratio below 80% of the median.
    min_snr : float, optional
        Smallest S/N of a chosen star.

    Returns
    -------
    pandas.DataFrame
        ``x``, ``y``, ``flux``, ``peak``, ``snr`` of the chosen stars, brightest first, and
        ``attrs["fwhm_px"]``.
    """
    import sep

    data, bad = _clean_image(image, mask)
    bkg = sep.Background(data, mask=bad if bad.any() else None, bw=64, bh=64)
    sub = data - bkg.back()
    rms = bkg.rms()
    objs = sep.extract(sub, 5.0, err=rms, mask=bad if bad.any() else None, minarea=5)
    empty = pd.DataFrame({c: np.zeros(0) for c in ("x", "y", "flux", "peak", "snr")})
    if len(objs) == 0:
        empty.attrs["fwhm_px"] = float("nan")
        return empty
    x, y, peak = objs["x"], objs["y"], objs["peak"]
    if fwhm_px is None:
        # flux-to-peak ratio of bright clean stars: FWHM ~ 0.87 sqrt(flux / peak), between a
        # Gaussian (0.94) and a Moffat beta=3 (0.81); good enough to size cutouts
        good = (objs["flag"] == 0) & (objs["peak"] > 50 * bkg.globalrms)
        good &= objs["peak"] < np.percentile(objs["peak"], 99) if good.sum() > 10 else good
        ratio = objs["flux"][good] / objs["peak"][good] if good.any() else np.array([9.0])
        fwhm_px = float(0.87 * np.sqrt(np.median(ratio)))
    rad = max(2.0 * fwhm_px, 3.0)
    flux, ferr, _ = sep.sum_circle(sub, x, y, rad, err=rms, subpix=0)
    snr = flux / np.maximum(ferr, 1e-30)
    half = int(np.ceil(cutout_fwhm * fwhm_px))
    ny, nx = data.shape
    ok = (objs["flag"] == 0) & (snr >= min_snr)
    ok &= (x >= half) & (x <= nx - 1 - half) & (y >= half) & (y <= ny - 1 - half)
    # masked pixels near the star
    if bad.any():
        nbad, _, _ = sep.sum_circle(bad.astype(np.float32), x, y, half * np.sqrt(2), subpix=1)
        ok &= nbad == 0
    # isolation
    r_iso = max(cutout_fwhm, isolation_fwhm) * fwhm_px * np.sqrt(2)
    tree = cKDTree(np.column_stack([x, y]))
    for i, j in tree.query_pairs(r_iso):
        if flux[j] > 0.01 * flux[i]:
            ok[i] = False
        if flux[i] > 0.01 * flux[j]:
            ok[j] = False
    # saturation
    if saturation is not None:
        ok &= (peak + bkg.back()[y.astype(int), x.astype(int)]) < saturation
    else:
        ratio = peak / np.maximum(flux, 1e-30)
        if ok.sum() >= 3:
            ok &= ratio > 0.8 * np.median(ratio[ok])
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(-flux[idx])][:n_stars]
    table = pd.DataFrame(
        {"x": x[idx], "y": y[idx], "flux": flux[idx], "peak": peak[idx], "snr": snr[idx]}
    )
    table.attrs["fwhm_px"] = fwhm_px
    return table


def build_epsf(
    image: np.ndarray,
    *,
    stars: pd.DataFrame | None = None,
    mask: np.ndarray | None = None,
    n_stars: int = 60,
    fwhm_px: float | None = None,
    cutout_fwhm: float = 5.0,
    oversampling: int = 4,
    maxiters: int = 8,
    smoothing_kernel: str | None = "quadratic",
    saturation: float | None = None,
) -> tuple[PSFModel, pd.DataFrame]:
    """Build the ePSF of an image (normally the co-add) with photutils' `EPSFBuilder`.

    Parameters
    ----------
    image : numpy.ndarray
        2-D sky-subtracted image.
    stars : pandas.DataFrame, optional
        ``x``, ``y`` of the stars to use; chosen by `select_psf_stars` when not given.
    mask : numpy.ndarray of bool, optional
        True where a pixel is bad.
    n_stars, fwhm_px, cutout_fwhm, saturation
        Passed to `select_psf_stars`. The cutouts are ``2 * ceil(cutout_fwhm * fwhm) + 1`` px
        wide; the ePSF is normalised to the flux inside them (5 FWHM holds all but ~0.2% of a
        Moffat beta=3 profile).
    oversampling : int, optional
        ePSF samples per pixel. With fewer than ``4 * oversampling**2`` stars (36 at x3) the
        oversampled cells cannot all be filled: photutils' `EPSFBuilder` then fills the empty
        ones by a 2-D cubic interpolation every iteration (3 s each with 8 stars) into a
        degenerate model (FWHM 0.3 px from 8 stars at x3), so a pixel-integrated Moffat fitted
        to the stars (`fit_moffat_psf`) is returned instead.
    maxiters : int, optional
        `EPSFBuilder` iterations.
    smoothing_kernel : {"quadratic", "quartic"} or None, optional
        `EPSFBuilder`'s smoothing of each iteration; "quadratic" (3x3) broadens the ePSF least.

    Returns
    -------
    psf : PSFModel
        The ePSF with its measured FWHM.
    stars : pandas.DataFrame
        The stars used.

    Raises
    ------
    LcdaskError
        When fewer than 3 stars qualify.
    """
    from astropy.nddata import NDData
    from astropy.table import Table
    from photutils.psf import EPSFBuilder, extract_stars

    if stars is None:
        stars = select_psf_stars(
            image,
            mask=mask,
            n_stars=n_stars,
            fwhm_px=fwhm_px,
            cutout_fwhm=cutout_fwhm,
            saturation=saturation,
        )
        fwhm_px = stars.attrs.get("fwhm_px", fwhm_px)
    if len(stars) < 3:
        raise LcdaskError(
            f"build_epsf found only {len(stars)} isolated unsaturated bright stars; "
            "give a deeper image (the co-add) or lower min_snr"
        )
    if fwhm_px is None:
        fwhm_px = float(stars.attrs.get("fwhm_px", 3.0))
    data, bad = _clean_image(image, mask)
    import sep

    bkg = sep.Background(data, mask=bad if bad.any() else None, bw=64, bh=64)
    sub = data - bkg.back()
    half = int(np.ceil(cutout_fwhm * fwhm_px))
    if len(stars) < 4 * oversampling**2:
        # too few stars to fill every oversampled cell (EPSFBuilder would interpolate the empty
        # ones each iteration, slowly, into a degenerate model): a parametric model instead
        return fit_moffat_psf(sub, stars, fwhm_px, half=half, oversampling=oversampling), stars
    half = int(np.ceil(cutout_fwhm * fwhm_px))
    size = 2 * half + 1
    nd = NDData(sub, mask=bad if bad.any() else None)
    cat = Table({"x": np.asarray(stars["x"], float), "y": np.asarray(stars["y"], float)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cutouts = extract_stars(nd, cat, size=(size, size))
        builder = EPSFBuilder(
            oversampling=oversampling,
            maxiters=maxiters,
            progress_bar=False,
            smoothing_kernel=smoothing_kernel,
            recentering_boxsize=(_odd(fwhm_px * 1.5), _odd(fwhm_px * 1.5)),
        )
        result = builder(cutouts)
    epsf = np.asarray(result.epsf.data, dtype=np.float64)
    epsf *= oversampling**2 / epsf.sum()
    model = PSFModel(epsf, oversampling, 1.0)
    model = replace(model, fwhm_px=measure_fwhm(model))
    return model, stars


def fit_moffat_psf(
    image: np.ndarray,
    stars: pd.DataFrame,
    fwhm_px: float,
    *,
    half: int,
    oversampling: int = 3,
) -> PSFModel:
    """A circular Moffat PSF fitted jointly to a few stars, as an oversampled `PSFModel`.

    Each star has its own amplitude and centre; FWHM and beta are shared. The model is
    integrated over the pixel (5x5 sub-samples), so it holds for undersampled stars, and is
    rendered like an ePSF: the PSF convolved with the pixel, sampled ``oversampling`` times per
    pixel, summing to ``oversampling**2``.

    Parameters
    ----------
    image : numpy.ndarray
        Sky-subtracted image.
    stars : pandas.DataFrame
        ``x``, ``y`` of the stars (at least 1; isolated, unsaturated).
    fwhm_px : float
        First guess of the FWHM.
    half : int
        Half-width of the fitted cutouts and of the rendered model (pixels).
    oversampling : int, optional

    Returns
    -------
    PSFModel
    """
    sub = (np.arange(5) + 0.5) / 5.0 - 0.5
    grid = np.arange(-half, half + 1)
    v, u = np.meshgrid(grid, grid, indexing="ij")
    cutouts, starts = [], []
    for x, y in zip(stars["x"].to_numpy(float), stars["y"].to_numpy(float), strict=True):
        ix, iy = round(x), round(y)
        if half <= ix < image.shape[1] - half and half <= iy < image.shape[0] - half:
            box = np.nan_to_num(image[iy - half : iy + half + 1, ix - half : ix + half + 1])
            cutouts.append(box)
            starts.append([max(box.max(), 1e-3), x - ix, y - iy])
    if not cutouts:
        raise LcdaskError("fit_moffat_psf: no star far enough from the edges")
    data = np.stack(cutouts)

    def resid(p: np.ndarray) -> np.ndarray:
        fwhm, beta, each = p[0], p[1], p[2:].reshape(-1, 3)
        alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
        shape = (-1, 1, 1, 1, 1)  # star, y, x, sub-y, sub-x
        du = u[None, :, :, None, None] - each[:, 1].reshape(shape) + sub[None, None, None, None]
        dv = v[None, :, :, None, None] - each[:, 2].reshape(shape) + sub[:, None]
        profile = (1.0 + (du * du + dv * dv) / alpha**2) ** (-beta)
        return (each[:, 0, None, None] * profile.mean(axis=(-2, -1)) - data).ravel()

    p0 = np.concatenate([[fwhm_px, 3.0], np.ravel(starts)])
    lo = np.concatenate([[0.3, 1.01], np.tile([0.0, -1.5, -1.5], len(starts))])
    hi = np.concatenate([[5 * fwhm_px + 5, 30.0], np.tile([np.inf, 1.5, 1.5], len(starts))])
    # A star's amplitude and centre touch its own pixels only: with that sparsity the numerical
    # Jacobian takes 5 evaluations, not 2 + 3 x stars
    n_stars, n_pix = data.shape[0], data[0].size
    sparsity = np.zeros((n_stars * n_pix, 2 + 3 * n_stars), bool)
    sparsity[:, :2] = True
    for k in range(n_stars):
        sparsity[k * n_pix : (k + 1) * n_pix, 2 + 3 * k : 5 + 3 * k] = True
    fit = optimize.least_squares(
        resid, p0, bounds=(lo, hi), x_scale="jac", jac_sparsity=sparsity, tr_solver="lsmr"
    )
    fwhm, beta = float(fit.x[0]), float(fit.x[1])
    fine = np.arange(-half * oversampling, half * oversampling + 1) / oversampling
    fv, fu = np.meshgrid(fine, fine, indexing="ij")
    rendered = _moffat_box(np.array([1.0, 0.0, 0.0, fwhm, beta]), fu, fv, sub)
    rendered *= oversampling**2 / rendered.sum()
    return PSFModel(rendered, oversampling, fwhm)


def _odd(value: float) -> int:
    n = max(3, int(np.ceil(value)))
    return n if n % 2 else n + 1


# ---------------------------------------------------------------------------------------------
# fast forced photometry


def _groups(x: np.ndarray, y: np.ndarray, link: float) -> np.ndarray:
    n = x.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pairs = cKDTree(np.column_stack([x, y])).query_pairs(link, output_type="ndarray")
    graph = coo_matrix(
        (np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])) if len(pairs) else ([], ([], [])),
        shape=(n, n),
    )
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def _stamps(
    shape: tuple[int, int], x: np.ndarray, y: np.ndarray, half: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel indices (N, S) of the square stamps around rounded positions, and inside flags."""
    o = np.arange(-half, half + 1)
    oy, ox = np.meshgrid(o, o, indexing="ij")
    xi = np.rint(x).astype(np.int64)[:, None] + ox.ravel()[None, :]
    yi = np.rint(y).astype(np.int64)[:, None] + oy.ravel()[None, :]
    inside = (xi >= 0) & (xi < shape[1]) & (yi >= 0) & (yi < shape[0])
    return np.clip(xi, 0, shape[1] - 1), np.clip(yi, 0, shape[0] - 1), inside


def _needed_radius(need: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Largest radius flagged per row (0 where none)."""
    any_ = need.any(axis=1)
    last = need.shape[1] - 1 - np.argmax(need[:, ::-1], axis=1)
    return np.where(any_, radii[last], 0)


def _variance_at(rms: float | np.ndarray | None, data: np.ndarray, mask: np.ndarray | None):
    """A function giving the sky variance at pixel indices (no full-frame copy of a map)."""
    if rms is None:
        from astropy.stats import mad_std

        good = np.isfinite(data) if mask is None else np.isfinite(data) & ~mask
        var = float(mad_std(data[good].astype(np.float64))) ** 2
        return lambda yy, xx: np.full(np.shape(yy), var)
    rms = np.asarray(rms)
    if rms.ndim == 0:
        var = float(rms) ** 2
        return lambda yy, xx: np.full(np.shape(yy), var)
    if rms.shape != data.shape:
        raise ValueError(f"rms map shape {rms.shape} differs from image shape {data.shape}")
    return lambda yy, xx: rms[yy, xx].astype(np.float64) ** 2


@dataclass
class _FitStamps:
    """The stars' square stamps (N, S) and circular fit regions for `forced_psf_photometry`.

    The model of all stars is needed only on the stamps' pixels: it is kept on that set
    (``pixels``, sorted flat indices; ``compact`` and ``at_sq`` index it from the stamps' inside
    pixels and from the whole stamps) rather than on the whole frame.
    """

    xs: np.ndarray
    ys: np.ndarray
    inside: np.ndarray
    in_fit: np.ndarray
    p_sq: np.ndarray
    p_fit: np.ndarray
    d_fit: np.ndarray
    v_fit: np.ndarray
    pixels: np.ndarray
    compact: np.ndarray
    at_sq: np.ndarray

    def on_stamps(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions in ``pixels`` of flat indices, and which of them are stamp pixels."""
        at = np.minimum(np.searchsorted(self.pixels, flat), self.pixels.size - 1)
        return at, self.pixels[at] == flat


def _fit_stamps(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    psf: PSFModel,
    *,
    r_fit: float,
    h: int,
    mask: np.ndarray | None,
    sky_star: np.ndarray,
    var_at: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> _FitStamps:
    """The stamps of half-size ``h``, the fit regions of radius ``r_fit`` (without bad pixels),
    the PSF and the data less each star's sky on them, and the sky variance."""
    nx = data.shape[1]
    xs, ys, inside = _stamps(data.shape, x, y, h)
    p_sq = np.where(inside, psf.evaluate(xs - x[:, None], ys - y[:, None]), 0.0)
    in_fit = inside & ((xs - x[:, None]) ** 2 + (ys - y[:, None]) ** 2 <= r_fit**2)
    bad = ~np.isfinite(data[ys, xs])
    in_fit &= ~(bad | mask[ys, xs] if mask is not None else bad)
    p_fit = np.where(in_fit, p_sq, 0.0)
    d_fit = np.where(in_fit, data[ys, xs].astype(np.float64), 0.0) - sky_star[:, None]
    v_fit = var_at(ys, xs)
    pixels, compact = np.unique((ys * nx + xs)[inside], return_inverse=True)
    at_sq = np.zeros(inside.shape, np.int64)
    at_sq[inside] = compact
    return _FitStamps(xs, ys, inside, in_fit, p_sq, p_fit, d_fit, v_fit, pixels, compact, at_sq)


def _blend_groups(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    psf: PSFModel,
    stamps: _FitStamps,
    labels: np.ndarray,
    sizes: np.ndarray,
    sky_star: np.ndarray,
) -> list[tuple[np.ndarray, ...]]:
    """The blends, group by group (ascending label): ``(members, py, px, at, design, rhs0)`` on
    the union of the members' fit regions (``at``: those pixels in ``stamps.pixels``; ``design``:
    every member's PSF there, from one evaluation; ``rhs0``: the data less the mean sky)."""
    nx = data.shape[1]
    groups, offsets = [], []
    in_group = np.flatnonzero(sizes[labels] > 1)
    by_group = in_group[np.argsort(labels[in_group], kind="stable")]
    for members in np.split(by_group, np.cumsum(sizes[sizes > 1])[:-1]) if in_group.size else []:
        uniq = np.unique((stamps.ys[members] * nx + stamps.xs[members])[stamps.in_fit[members]])
        py, px = np.divmod(uniq, nx)
        offsets.append((px[:, None] - x[members], py[:, None] - y[members]))
        groups.append((members, py, px, stamps.on_stamps(uniq)[0]))
    if groups:  # every member's PSF on its group's pixels, in one evaluation
        values = psf.evaluate(
            np.concatenate([dx.ravel() for dx, _ in offsets]),
            np.concatenate([dy.ravel() for _, dy in offsets]),
        )
        ends = np.cumsum([dx.size for dx, _ in offsets])[:-1]
        groups = [
            (
                members,
                py,
                px,
                at,
                design.reshape(dx.shape),
                data[py, px].astype(np.float64) - sky_star[members].mean(),
            )
            for (members, py, px, at), design, (dx, _) in zip(
                groups, np.split(values, ends), offsets, strict=True
            )
        ]
    return groups


def _solve_isolated(
    flux: np.ndarray,
    err: np.ndarray,
    single: np.ndarray,
    w: np.ndarray,
    p_fit: np.ndarray,
    resid: np.ndarray,
) -> None:
    """Isolated stars: one weighted ratio each, added to ``flux`` (``err`` set), in place."""
    a = (w[single] * p_fit[single] ** 2).sum(axis=1)
    b = (w[single] * p_fit[single] * resid[single]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        flux[single] += np.where(a > 0, b / a, np.nan)
        err[single] = np.where(a > 0, 1.0 / np.sqrt(a), np.nan)


def _solve_blends(
    flux: np.ndarray,
    err: np.ndarray,
    groups: list[tuple[np.ndarray, ...]],
    model: np.ndarray,
    *,
    it: int,
    var_at: Callable[[np.ndarray, np.ndarray], np.ndarray],
    gain: float | None,
) -> None:
    """Blends: one small dense solve per group, added to ``flux`` (``err`` set), in place."""
    for members, py, px, at, design, rhs0 in groups:
        m_here = model[at] if it > 0 else 0.0
        var_g = var_at(py, px)
        if it > 0 and gain:
            var_g = var_g + np.clip(m_here, 0, None) / gain
        wr = 1.0 / var_g
        ata = design.T @ (design * wr[:, None])
        atb = design.T @ (wr * (rhs0 - m_here))
        try:
            cov = np.linalg.inv(ata)
        except np.linalg.LinAlgError:
            cov = np.linalg.pinv(ata)
        flux[members] += cov @ atb
        err[members] = np.sqrt(np.clip(np.diag(cov), 0.0, None))


def _wing_stamps(
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    f_ok: np.ndarray,
    psf: PSFModel,
    stamps: _FitStamps,
    *,
    h: int,
    big: int,
    wing_r: np.ndarray,
    wing_frac: np.ndarray,
    sigma_med: float,
) -> list[tuple[np.ndarray, ...]]:
    """Stars whose light beyond their fit stamp matters (above 0.05 sigma of a pixel) get their
    wings on a stamp of the radius they need, in two tiers: ``(sel, at, row_b, p_wing)`` each."""
    nx = shape[1]
    wings = []
    need = np.abs(f_ok)[:, None] * wing_frac[None, :] > 0.05 * sigma_med  # (N, radii)
    r_need = _needed_radius(need, wing_r)
    mid = min(2 * h + 1, big)
    for r_lo, r_hi in ((h, mid), (mid, big)):
        sel = np.flatnonzero((r_need > r_lo) & ((r_need <= r_hi) | (r_hi == big)))
        if sel.size == 0 or r_hi <= r_lo:
            continue
        xb, yb, inside_b = _stamps(shape, x[sel], y[sel], r_hi)
        outer = np.maximum(
            np.abs(xb - np.rint(x[sel])[:, None]), np.abs(yb - np.rint(y[sel])[:, None])
        )
        keep = inside_b & (outer > h)
        at, hit = stamps.on_stamps((yb * nx + xb)[keep])  # wings matter on stamps only
        # the PSF at those pixels alone (it is evaluated pixel by pixel: the same values as
        # on the whole square, of which the stamps hold a few percent)
        p_wing = psf.evaluate((xb - x[sel][:, None])[keep][hit], (yb - y[sel][:, None])[keep][hit])
        row_b = np.broadcast_to(np.arange(sel.size)[:, None], keep.shape)[keep][hit]
        wings.append((sel, at[hit], row_b, p_wing))
    return wings


def _forced_table(
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    err: np.ndarray,
    stamps: _FitStamps,
    model_at_fit: np.ndarray,
    *,
    gain: float | None,
    labels: np.ndarray,
    sizes: np.ndarray,
    chi2_errors: bool,
) -> pd.DataFrame:
    """The `FORCED_PSF_SCHEMA` table: the fit's chi2 per star, errors scaled by it with
    ``chi2_errors``, NaN flux and error where a star has no valid pixel."""
    var = stamps.v_fit + (np.clip(model_at_fit, 0, None) / gain if gain else 0.0)
    r2 = np.where(stamps.in_fit, (stamps.d_fit - model_at_fit) ** 2 / var, 0.0)
    n_pix = stamps.in_fit.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        chi2 = r2.sum(axis=1) / np.maximum(n_pix - 1, 1)
    if chi2_errors:
        err = err * np.sqrt(np.maximum(chi2, 1.0))
    flux[n_pix == 0] = np.nan
    err[n_pix == 0] = np.nan
    return pd.DataFrame(
        {
            "x": x,
            "y": y,
            "flux": flux,
            "flux_err": err,
            "chi2": chi2.astype(np.float32),
            "group_id": labels,
            "group_size": sizes[labels].astype(np.int32),
        }
    )


def forced_psf_photometry(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    psf: PSFModel,
    *,
    rms: float | np.ndarray | None = None,
    gain: float | None = None,
    mask: np.ndarray | None = None,
    sky: np.ndarray | None = None,
    fit_radius: float | None = None,
    n_iter: int = 3,
    chi2_errors: bool = True,
) -> pd.DataFrame:
    """PSF fluxes of stars at known positions, all at once by linear least squares.

    Parameters
    ----------
    image : numpy.ndarray
        2-D sky-subtracted image.
    x, y : array_like
        0-based positions of the stars (fixed).
    psf : PSFModel
        The PSF at this frame's scale (see `PSFModel.scaled_to`).
    rms : float or numpy.ndarray, optional
        Sky RMS (scalar or map, image units); estimated from the image when not given.
    gain : float, optional
        e-/image unit; when given the stars' photon noise enters the weights and errors.
    mask : numpy.ndarray of bool, optional
        True where a pixel is bad (saturated, cosmic ray): such pixels get zero weight.
    sky : array_like, optional
        Residual local sky per star (e.g. the annulus estimate), subtracted in its fit region.
    fit_radius : float, optional
        Radius (px) of each star's fit region; default ``max(1.5 FWHM, 2.5 px)``.
    n_iter : int, optional
        Residual iterations (the first solves the fit regions alone; later ones also remove the
        wings of all other stars and use model-based weights).
    chi2_errors : bool, optional
        Multiply each error by ``sqrt(max(chi2, 1))``, so that a PSF mismatch on bright stars
        shows in their errors.

    Returns
    -------
    pandas.DataFrame
        `FORCED_PSF_SCHEMA` columns, one row per input star in input order (NaN flux where a star
        has no valid pixel).
    """
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of one length, got {x.shape} and {y.shape}")
    # Only the stamps' pixels are read (as float64), never a whole-frame copy or mask: this is
    # called once per frame and eight times more by `refine_scale`.
    data = np.asarray(image)
    if data.ndim != 2:
        raise ValueError(f"forced_psf_photometry needs a 2-D image, got shape {data.shape}")
    n = x.size
    if n == 0:
        return pd.DataFrame({k: pd.Series(dtype=v) for k, v in FORCED_PSF_SCHEMA.items()})
    mask = None if mask is None else np.asarray(mask, dtype=bool)

    fwhm = psf.effective_fwhm_px
    r_fit = max(1.5 * fwhm, 2.5) if fit_radius is None else float(fit_radius)
    h = int(np.ceil(r_fit))
    sky_star = np.zeros(n) if sky is None else np.nan_to_num(np.asarray(sky, dtype=np.float64))

    # fit regions: (N, S) square stamps, circular fit masks
    var_at = _variance_at(rms, data, mask)
    st = _fit_stamps(data, x, y, psf, r_fit=r_fit, h=h, mask=mask, sky_star=sky_star, var_at=var_at)
    labels = _groups(x, y, 2.0 * r_fit)
    sizes = np.bincount(labels)
    single = np.flatnonzero(sizes[labels] == 1)
    groups = _blend_groups(data, x, y, psf, st, labels, sizes, sky_star)

    big = int(np.ceil(min(psf.radius_px, 6.0 * fwhm)))
    wings: list = []
    wing_r = np.arange(h + 1, max(big, h + 1) + 1)
    wing_frac = psf.evaluate(wing_r - 0.5, np.zeros(wing_r.size))  # profile just inside r
    sigma_med = float(np.sqrt(np.median(st.v_fit)))
    flux = np.zeros(n)
    err = np.full(n, np.nan)
    model_at_fit = np.zeros_like(st.d_fit)
    model = np.zeros(st.pixels.size)
    for it in range(max(1, n_iter)):
        resid = st.d_fit - model_at_fit
        var = (
            st.v_fit if (it == 0 or not gain) else st.v_fit + np.clip(model_at_fit, 0, None) / gain
        )
        w = np.where(st.in_fit, 1.0 / var, 0.0)
        _solve_isolated(flux, err, single, w, st.p_fit, resid)
        _solve_blends(flux, err, groups, model, it=it, var_at=var_at, gain=gain)
        # the model of every star: fit stamps for faint stars, the full extent for bright ones
        f_ok = np.where(np.isfinite(flux), flux, 0.0)
        model = np.bincount(
            st.compact, weights=(f_ok[:, None] * st.p_sq)[st.inside], minlength=st.pixels.size
        )
        if it == 0 and big > h:
            wings = _wing_stamps(
                data.shape,
                x,
                y,
                f_ok,
                psf,
                st,
                h=h,
                big=big,
                wing_r=wing_r,
                wing_frac=wing_frac,
                sigma_med=sigma_med,
            )
        for sel, at, row_b, p_wing in wings:
            model += np.bincount(at, weights=f_ok[sel][row_b] * p_wing, minlength=st.pixels.size)
        model_at_fit = np.where(st.in_fit, model[st.at_sq], 0.0)

    return _forced_table(
        x,
        y,
        flux,
        err,
        st,
        model_at_fit,
        gain=gain,
        labels=labels,
        sizes=sizes,
        chi2_errors=chi2_errors,
    )


def refine_scale(
    image: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    psf: PSFModel,
    *,
    rms: float | np.ndarray | None = None,
    mask: np.ndarray | None = None,
    bounds: tuple[float, float] = (0.7, 1.4),
) -> PSFModel:
    """Fit the model's scale to a frame's bright isolated stars (minimum mean log chi^2).

    Parameters
    ----------
    image : numpy.ndarray
        2-D sky-subtracted image.
    x, y : array_like
        Positions of bright, isolated, unsaturated stars (a few tens are plenty).
    psf : PSFModel
        The starting model (its current scale is the first guess).
    rms : float or numpy.ndarray, optional
        Sky RMS.
    mask : numpy.ndarray of bool, optional
        Bad (e.g. saturated) pixels, left out of the fits.
    bounds : tuple of float, optional
        Search range relative to the starting scale.

    Returns
    -------
    PSFModel
        The model at the best scale.
    """
    s0 = psf.scale

    def cost(f: float) -> float:
        m = replace(psf, scale=s0 * f)
        t = forced_psf_photometry(
            image, x, y, m, rms=rms, mask=mask, fit_radius=2.0 * psf.effective_fwhm_px
        )
        # mean log chi^2: every star counts, the brightest do not dominate
        return float(np.nanmean(np.log(np.asarray(t["chi2"], dtype=np.float64) + 1e-12)))

    res = optimize.minimize_scalar(cost, bounds=bounds, method="bounded", options={"xatol": 2e-3})
    return replace(psf, scale=s0 * float(res.x))
