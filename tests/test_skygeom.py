"""lcdask._utils.skygeom against astropy (its TAN projection and SkyCoord separations)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS

from lcdask._utils.skygeom import (
    mean_radec,
    separation_arcsec,
    separation_deg,
    tangent_plane,
    unit_vectors,
    untangent_plane,
)


def _tan(ra0: float, dec0: float) -> WCS:
    """A TAN WCS whose intermediate world coordinates are the standard coordinates in degrees:
    pixel offsets from CRPIX equal (-xi, eta) / 1 deg (CDELT1 = -1 so that +x is east)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra0, dec0]
    wcs.wcs.crpix = [0.0, 0.0]
    wcs.wcs.cdelt = [-1.0, 1.0]
    wcs.wcs.set()
    return wcs


@pytest.mark.parametrize("ra0, dec0", [(10.0, 20.0), (359.9, -45.0), (150.0, 88.5), (0.0, -89.0)])
def test_tangent_plane_is_astropys_tan_projection(ra0, dec0):
    rng = np.random.default_rng(1)
    ra = (ra0 + rng.normal(0, 1.0, 200) / np.cos(np.radians(dec0))) % 360
    dec = np.clip(dec0 + rng.normal(0, 1.0, 200), -89.999, 89.999)
    xi, eta = tangent_plane(ra, dec, ra0, dec0, unit="deg")
    px, py = _tan(ra0, dec0).wcs_world2pix(ra, dec, 0)
    # wcslib's projection in double precision: agreement to ~1e-13 deg on fields of degrees;
    # 1e-10 deg (0.4 micro-arcsec) leaves room for its different order of operations.
    np.testing.assert_allclose(xi, -(px + 1), atol=1e-10)
    np.testing.assert_allclose(eta, py + 1, atol=1e-10)
    xi_as, eta_as = tangent_plane(ra, dec, ra0, dec0)  # arcsec by default
    np.testing.assert_allclose(xi_as, xi * 3600, rtol=1e-14, atol=1e-9)
    np.testing.assert_allclose(eta_as, eta * 3600, rtol=1e-14, atol=1e-9)
    for unit, scale in (("deg", 1.0), ("arcsec", 3600.0)):
        back_ra, back_dec = untangent_plane(xi * scale, eta * scale, ra0, dec0, unit=unit)
        sep = separation_arcsec(back_ra, back_dec, ra, dec)
        assert np.max(sep) < 1e-8  # round trip to 10 micro-arcsec (float64 on 1-deg offsets)


def test_tangent_plane_is_nan_behind_the_plane():
    xi, eta = tangent_plane([180.0, 89.0, 91.0], [-20.0, 0.0, 0.0], 0.0, 20.0, unit="deg")
    assert np.isnan(xi[0]) and np.isnan(eta[0])  # the antipode would project onto the centre
    assert np.isfinite(xi[1])  # 84 deg away: in front
    xi, _ = tangent_plane([91.0], [0.0], 0.0, 0.0)
    assert np.isnan(xi[0])
    with pytest.raises(ValueError, match="unit"):
        tangent_plane([1.0], [1.0], 0.0, 0.0, unit="rad")


def test_separations_are_astropys():
    rng = np.random.default_rng(2)
    ra1, ra2 = rng.uniform(0, 360, (2, 500))
    dec1, dec2 = np.degrees(np.arcsin(rng.uniform(-1, 1, (2, 500))))
    truth = SkyCoord(ra1, dec1, unit="deg").separation(SkyCoord(ra2, dec2, unit="deg")).deg
    # The same Vincenty formula: equal to rounding (1e-12 deg at 180 deg).
    np.testing.assert_allclose(separation_deg(ra1, dec1, ra2, dec2), truth, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
        separation_arcsec(ra1, dec1, ra2, dec2), truth * 3600, rtol=0, atol=1e-8
    )
    # Small separations keep their precision (no arccos): 1 milli-arcsec near the pole.
    tiny = separation_arcsec(10.0, 89.9, 10.0 + 1e-3 / 3600 / np.cos(np.radians(89.9)), 89.9)
    assert abs(tiny - 1e-3) < 1e-9


def test_unit_vectors_and_mean_radec():
    v = unit_vectors([0.0, 90.0, 45.0], [0.0, 0.0, 90.0])
    np.testing.assert_allclose(v, [[1, 0, 0], [0, 1, 0], [0, 0, 1]], atol=1e-15)
    assert unit_vectors(10.0, 20.0).shape == (3,)
    # Across RA 0 the mean is at RA 0, not 180 (an arithmetic mean would give 180).
    ra, dec = mean_radec([359.0, 1.0], [10.0, 10.0])
    assert min(ra, 360 - ra) < 1e-12 and dec == pytest.approx(10.0 + 0.0015, abs=1e-3)
    # Two points symmetric about the equator on one meridian: the mean is on the equator.
    ra, dec = mean_radec([30.0, 30.0], [25.0, -25.0])
    assert ra == pytest.approx(30.0, abs=1e-12) and abs(dec) < 1e-12
    assert np.isnan(mean_radec([1.0, np.nan], [1.0, 2.0])[0])
