"""Named configurations of the simulator: ``standard`` and ``small-telescope``.

``small-telescope`` is a night from a small robotic telescope as observers bring them, with the
traits that trip a pipeline up (issue 15):

- no calibration frames; no IMAGETYP, and light-frame names that do not say "light"
  (``TrES-2_NNNN.fits``); no WCS keys: only the mount's pointing (``RA``/``DEC`` in degrees or
  ``OBJCTRA``/``OBJCTDEC``, by seed, off by up to 3' from the truth);
- 4.2-5.8 "/px (by seed), undersampled (FWHM about 1.5-2.5 px), the scale in one keyword only:
  ``PIXSCALE``, or ``XPIXSZ`` with ``FOCALLEN`` (by seed);
- the field turned by 180 deg (half the seeds) or by 30-330 deg;
- a tracking drift of 220-320 px over a night of about 6 h, and a re-pointing jump of 20-60 px at
  the middle frame (the second block in 30 s exposures instead of 60 s for half the seeds);
- many hot pixels (0.12% of the detector: hundreds) and 4 warm columns;
- DATE-OBS on the local clock (Arizona, UTC-7) with the zone as a suffix (``-07:00`` or
  ``-0700``); SITELONG west positive, said by its comment or only by ``SWCREATE`` = TheSkyX;
- movers of r 12-14 (the bright asteroids such a telescope records: under its bright sky per
  pixel, 16.3 mag at 5.5"/px, an undersampled star of r 16 is detected in 1 frame of 10; the
  standard preset's 15.5-19 were never detected);
- the real sky: every Tycho-2 star of the astrometry.net index files at its position, so that
  ``solve-field`` can solve the frames blind and offline, plus synthetic stars of r 11.5-19.

The target is TrES-2 (Kepler-1, GSC 03549-02811; ICRS 19:07:14.035 +49:18:59.07, Tycho-2 VT
11.32; in the Kepler field, b = +13 deg, about 60 Tycho-2 stars per deg^2), observed on
2025-07-04/05 local time, when it crosses the meridian near local midnight. Its transit is
simulated as the simulator's others (1.4% deep, 1.8 h, mid-transit at mid-night), not at TrES-2b's
ephemeris.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lcdask.simulate.config import SimConfig

__all__ = ["PRESETS", "TRES2_DEC_DEG", "TRES2_RA_DEG", "preset_config", "small_telescope_config"]

TRES2_RA_DEG = 286.808479  # 19:07:14.035
TRES2_DEC_DEG = 49.316408  # +49:18:59.07
PRESETS = ("standard", "small-telescope")
_PRESET_STREAM = 99


def small_telescope_config(
    *, n_frames: int = 60, size: int = 1024, seed: int = 1, index_dir: str = "", **overrides: Any
) -> SimConfig:
    """The ``small-telescope`` night (see the module docstring).

    Parameters
    ----------
    n_frames, size, seed
        Light frames, detector side (pixels), random seed; the night lasts about 6 h whatever
        the number of frames (the readout gap is stretched).
    index_dir
        Folder of the astrometry.net index files (``""``: the default folders).
    **overrides
        Any other `SimConfig` field.

    Returns
    -------
    SimConfig
        The configuration; its traits that vary by seed (scale, rotation, drift, header keys) are
        drawn from ``SeedSequence([seed, 99])``.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, _PRESET_STREAM]))
    scale = float(rng.uniform(4.2, 5.8))
    rotation = 180.0 if rng.uniform() < 0.5 else float(rng.uniform(30.0, 330.0))
    drift = float(rng.uniform(220.0, 320.0))
    repoint = float(rng.uniform(20.0, 60.0))
    two_exposures = bool(rng.uniform() < 0.5)
    scale_keyword = str(rng.choice(["PIXSCALE", "FOCALLEN"]))
    pointing_keys = str(rng.choice(["RA/DEC", "OBJCTRA/OBJCTDEC"]))
    offset_format = str(rng.choice(["colon", "compact"]))
    longitude = str(rng.choice(["west-comment", "west-theskyx"]))
    exptime, exptime2 = 60.0, (30.0 if two_exposures else 0.0)
    night_s = 6.0 * 3600.0
    mean_exptime = exptime if not two_exposures else 0.5 * (exptime + exptime2)
    readout = min(3600.0, max(10.0, night_s / max(n_frames, 1) - mean_exptime - 0.5))
    values: dict[str, Any] = {
        "n_frames": n_frames,
        "size": size,
        "seed": seed,
        "ra_deg": TRES2_RA_DEG,
        "dec_deg": TRES2_DEC_DEG,
        "target_ra_deg": TRES2_RA_DEG,
        "target_dec_deg": TRES2_DEC_DEG,
        "object_name": "TrES-2",
        "file_stem": "TrES-2",
        "pixel_scale_arcsec": scale,
        "rotation_deg": rotation,
        "pointing_error_arcmin": 3.0,
        "rotation_error_deg": 0.5,
        "drift_px_total": drift,
        "drift_centred": True,
        "jitter_px": 0.5,
        "repoint_px": repoint,
        "exptime_s": exptime,
        "exptime2_s": exptime2,
        "readout_s": readout,
        "site_lat_deg": 31.96,
        "site_lon_deg": -111.60,
        "site_elev_m": 2096.0,
        "observatory": "Small robotic telescope (simulated)",
        "telescope": "Simulated 0.2m f/1.7 astrograph",
        "night_utc": "2025-07-05T07:00:00",
        "zero_point_zenith": 19.5,
        "sky_mag_arcsec2": 20.0,
        "seeing_fwhm_arcsec": 1.7 * scale,
        "psf_ellipticity": 0.08,
        "mag_bright": 11.5,
        "mag_faint": 19.0,
        "stars_per_deg2_r20": 4000.0,
        "n_close_pairs": 2,
        "n_saturated_stars": 0,
        "mover_mag_bright": 12.0,
        "mover_mag_faint": 14.0,
        "variable_mag_shift": -2.5,  # the variables at r 11-13, as the movers (see above)
        "target_mag": 11.32,
        "transit_depth": 0.014,
        "transit_duration_h": 1.8,
        "gain_e_adu": 1.3,
        "read_noise_e": 9.0,
        "dark_current_e_s": 0.1,
        "ccd_temp_c": -10.0,
        "hot_pixel_fraction": 0.0012,
        "n_hot_columns": 4,
        "vignetting": 0.2,
        "n_darks": 0,
        "n_darkflats": 0,
        "n_flats": 0,
        "n_bias": 0,
        "sky_catalog": "tycho2",
        "index_dir": index_dir,
        "imagetyp_key": False,
        "header_wcs": False,
        "scale_keyword": scale_keyword,
        "pointing_keys": pointing_keys,
        "date_obs_utc_offset_h": -7.0,
        "date_offset_format": offset_format,
        "longitude_convention": longitude,
    }
    known = {f.name for f in dataclasses.fields(SimConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown SimConfig fields {unknown}; known fields: {sorted(known)}")
    values.update(overrides)
    return SimConfig(**values)


def preset_config(name: str, *, n_frames: int, size: int, seed: int) -> SimConfig:
    """The configuration of a named preset (`PRESETS`) for a number of frames, size and seed.

    Raises
    ------
    ValueError
        For an unknown preset name.
    """
    if name == "standard":
        return SimConfig(n_frames=n_frames, size=size, seed=seed)
    if name == "small-telescope":
        return small_telescope_config(n_frames=n_frames, size=size, seed=seed)
    raise ValueError(f"unknown simulator preset {name!r}; choose one of {', '.join(PRESETS)}")
