"""Moffat PSF stamps, integrated over pixels, added to an image with exact total flux.

A star's stamp is the elliptical Moffat profile
``I(r) ~ (1 + q(dx, dy) / alpha^2) ** -beta`` (``q`` the elliptical radius squared, geometric-mean
FWHM ``2 alpha sqrt(2^(1/beta) - 1)``) integrated over each pixel:

- within ``core_radius`` pixels of the star (the table zone, at least 4 FWHM) the pixel integral is
  taken from a table of the profile integrated over a pixel with a midpoint rule at ``oversample``
  (default 10) sub-pixels per axis, tabulated every 1/oversample px and interpolated bilinearly
  to the star's sub-pixel phase;
- beyond it (bright stars only) the profile is sampled at the pixel centre, which is accurate there
  to better than 1e-3 of the (already tiny) pixel value.

Each stamp is then normalised so that its pixels sum to exactly 1: the flux a star puts into the
image equals its truth flux exactly (less only what falls outside the detector). The stamp is a
square of half-width ``stamp_radius`` chosen per star so that the profile at the stamp edge is below
``edge_adu`` (default 0.05 ADU): 2.5 FWHM for faint stars up to 128 px for the brightest; the
Moffat wing beyond it (a fraction ``(1 + (R/alpha)^2)^(1-beta)`` of the flux, < 1e-3 for any star
bright enough to need R > 25 px) is folded into the stamp by the normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RADIUS_STEPS = (4, 6, 8, 11, 16, 22, 32, 45, 64, 90, 128)


@dataclass(frozen=True)
class Moffat:
    """An elliptical Moffat PSF.

    Attributes
    ----------
    fwhm_px
        Geometric-mean FWHM (pixels).
    beta
        Moffat beta.
    ellipticity
        ``1 - b/a``.
    theta_deg
        Position angle of the major axis, from +x towards +y (degrees).
    """

    fwhm_px: float
    beta: float = 3.0
    ellipticity: float = 0.0
    theta_deg: float = 0.0

    @property
    def alpha(self) -> float:
        """Moffat core width (pixels) of the geometric-mean profile."""
        return self.fwhm_px / (2.0 * np.sqrt(2.0 ** (1.0 / self.beta) - 1.0))

    def _quad(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Elliptical radius squared divided by alpha^2."""
        axis_ratio = 1.0 - self.ellipticity
        a2 = self.alpha**2 / axis_ratio
        b2 = self.alpha**2 * axis_ratio
        th = np.deg2rad(self.theta_deg)
        c, s = np.cos(th), np.sin(th)
        u = c * dx + s * dy
        v = -s * dx + c * dy
        return u * u / a2 + v * v / b2

    def profile(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Surface brightness per unit flux at offsets (dx, dy) (integrates to 1 over the plane)."""
        norm = (self.beta - 1.0) / (np.pi * self.alpha**2)
        return norm * (1.0 + self._quad(dx, dy)) ** (-self.beta)

    def peak_fraction(self) -> float:
        """Fraction of the flux in the central pixel of a star centred on a pixel (approximate)."""
        return float((self.beta - 1.0) / (np.pi * self.alpha**2))


def stamp_radius(flux: np.ndarray, psf: Moffat, *, edge_adu: float = 0.05) -> np.ndarray:
    """Half-width of each star's stamp (pixels), from the set ``RADIUS_STEPS``.

    The radius is the smallest step at which the profile along the major axis falls below
    ``edge_adu``, and at least 2.5 FWHM.
    """
    flux = np.maximum(np.asarray(flux, dtype=float), 1e-30)
    peak = flux * psf.peak_fraction()
    ratio = np.maximum(peak / edge_adu, 1.0) ** (1.0 / psf.beta)
    a_major = psf.alpha / np.sqrt(1.0 - psf.ellipticity)
    need = a_major * np.sqrt(ratio - 1.0)
    need = np.maximum(need, 2.5 * psf.fwhm_px)
    steps = np.asarray(RADIUS_STEPS)
    idx = np.minimum(np.searchsorted(steps, need), len(steps) - 1)
    return steps[idx]


@dataclass(frozen=True)
class PixelTable:
    """The PSF integrated over a pixel, tabulated every 1/oversample px over [-core, core]."""

    values: np.ndarray
    oversample: int
    core_radius: int

    @classmethod
    def build(cls, psf: Moffat, *, oversample: int = 10, core_radius: int | None = None):
        """Tabulate the pixel-integrated PSF (midpoint rule, ``oversample`` per axis)."""
        if oversample < 5:
            raise ValueError(f"oversample must be >= 5 sub-pixels per axis, got {oversample}")
        if core_radius is None:
            core_radius = int(np.ceil(4.0 * psf.fwhm_px)) + 2
        o = oversample
        half = core_radius + 1  # table centres reach +-(core_radius + 1) px for interpolation
        n_fine = 2 * half * o + o  # fine samples covering [-half - 0.5, half + 0.5]
        fine = (np.arange(n_fine) + 0.5) / o - (half + 0.5)
        prof = psf.profile(fine[None, :], fine[:, None]) / (o * o)
        # box sum of o x o consecutive fine samples = integral over one pixel whose centre is the
        # mean of those samples; centres then fall on a 1/o grid from -half to +half.
        csum = np.cumsum(np.cumsum(prof, axis=0), axis=1)
        csum = np.pad(csum, ((1, 0), (1, 0)))
        table = csum[o:, o:] - csum[:-o, o:] - csum[o:, :-o] + csum[:-o, :-o]
        return cls(values=table, oversample=o, core_radius=core_radius)

    @property
    def half(self) -> int:
        """Largest tabulated pixel-centre offset (pixels)."""
        return self.core_radius + 1


def render_stars(
    shape: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    psf: Moffat,
    *,
    oversample: int = 10,
    edge_adu: float = 0.05,
) -> np.ndarray:
    """Image of point sources with a Moffat PSF; each stamp sums to exactly its flux.

    Parameters
    ----------
    shape
        ``(ny, nx)`` of the image.
    x, y
        0-based positions (pixel centres at integers).
    flux
        Total flux of each star (same unit as the returned image).
    psf
        The PSF (the same for every star).
    oversample
        Sub-pixels per axis for the pixel integration in the core (>= 5).
    edge_adu
        Profile level at which a stamp may stop (see `stamp_radius`).

    Returns
    -------
    numpy.ndarray
        float64 image of ``shape``.
    """
    ny, nx = shape
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    flux = np.asarray(flux, dtype=float)
    radius = stamp_radius(flux, psf, edge_adu=edge_adu)
    inside = (
        (flux > 0) & (x > -radius - 1) & (x < nx + radius) & (y > -radius - 1) & (y < ny + radius)
    )
    table = PixelTable.build(psf, oversample=oversample)
    indices: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for r in np.unique(radius[inside]):
        sel = inside & (radius == r)
        idx, w = _stamps(x[sel], y[sel], flux[sel], int(r), psf, table, nx, ny)
        indices.append(idx)
        weights.append(w)
    if not indices:
        return np.zeros(shape)
    image = np.bincount(np.concatenate(indices), np.concatenate(weights), minlength=nx * ny)
    return image.reshape(shape)


def _stamps(
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    r: int,
    psf: Moffat,
    table: PixelTable,
    nx: int,
    ny: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat image indices and values of the stamps of stars sharing one stamp radius."""
    ix = np.rint(x).astype(np.int64)
    iy = np.rint(y).astype(np.int64)
    k = np.arange(-r, r + 1)
    values = np.empty((len(x), 2 * r + 1, 2 * r + 1))
    rc = min(r, table.core_radius)
    o = table.oversample
    # table index of the centre (offset 0) is half * o; pixel offset u = k + (ix - x)
    fx = (ix - x) * o + table.half * o
    fy = (iy - y) * o + table.half * o
    jx0 = np.floor(fx).astype(np.int64)
    jy0 = np.floor(fy).astype(np.int64)
    wx = (fx - jx0)[:, None, None]
    wy = (fy - jy0)[:, None, None]
    kc = np.arange(-rc, rc + 1) * o
    cols = (jx0[:, None] + kc[None, :])[:, None, :]
    rows = (jy0[:, None] + kc[None, :])[:, :, None]
    t = table.values
    core = (1.0 - wy) * ((1.0 - wx) * t[rows, cols] + wx * t[rows, cols + 1]) + wy * (
        (1.0 - wx) * t[rows + 1, cols] + wx * t[rows + 1, cols + 1]
    )
    if rc < r:
        dx = (ix - x)[:, None, None] + k[None, None, :]
        dy = (iy - y)[:, None, None] + k[None, :, None]
        values[:] = psf.profile(dx, dy)
        values[:, r - rc : r + rc + 1, r - rc : r + rc + 1] = core
    else:
        values[:] = core
    gx = ix[:, None, None] + k[None, None, :]
    gy = iy[:, None, None] + k[None, :, None]
    ok = (gx >= 0) & (gx < nx) & (gy >= 0) & (gy < ny)
    values *= (flux / values.sum(axis=(1, 2)))[:, None, None]
    flat_index = np.broadcast_to(gy * nx + gx, values.shape)
    return flat_index[ok], values[ok]
