"""A realistic simulated CCD night with its truth, for testing lcdask against known answers.

``simulate_night(out_dir, SimConfig(...), n_workers=2)`` writes::

    OUT/raw/light_NNNN.fits      lights (default 60 s), BITPIX 16 / BZERO 32768, header WCS with a
                                 pointing error
    OUT/raw/dark_NNNN.fits       darks at the lights' exposure
    OUT/raw/darkflat_NNNN.fits   darks at the flats' exposure
    OUT/raw/flat_NNNN.fits       twilight flats (default 5 s, ~25 kADU)
    OUT/raw/bias_NNNN.fits       bias frames
    OUT/refcat.parquet           SDSS-like catalog: objid, ra, dec, g, g_err, r, r_err
    OUT/truth/                   config.json, stars, movers, frames, bad_pixels, cosmic_rays,
                                 calib_frames, refcat_truth (Parquet); flat.fits (true response,
                                 mean exactly 1), dark_current.fits (e-/s/px), bias.fits (ADU);
                                 transit.json (a limb-darkened target transit only:
                                 ``SimConfig.transit_shape``, `SimTruth.transit`)

Photometric truth
-----------------
For light frame ``i`` (row of ``frames.parquet``) and a star of catalog r magnitude ``mag``::

    m_inst   = -2.5 log10(flux_adu / exptime_s)
    mag      = zero_point + slope * m_inst                      (the truth relation)
    flux_adu = exptime_s * 10 ** (-0.4 * (mag - zero_point) / slope) * flux_factor(star, time_mjd)

``flux_adu`` is the star's total flux in the truth image (`truth_light_image`), i.e. in a
perfectly calibrated frame (electrons / gain, before the flat response); the rendering uses exactly
this formula (stamps are normalised to sum to it, see `lcdask.simulate.psf`).
``zero_point = zero_point_zenith - extinction_k * (airmass - 1) - cloud_mag(t)`` and ``slope`` is
``SimConfig.slope``.
``sky_adu`` is the mean sky per pixel at the same level. Movers use their ``mag`` (no variability).

The raw frame is ``round((Poisson(gain * truth * flat + dark_e_s * t) + cosmic rays, capped at the
full well, + read noise) / gain + bias)`` clipped to 0-65535, so ``(raw - dark) / flat`` equals
the truth image within noise (see `lcdask.simulate.detector`).

Presets: ``preset_config("small-telescope", ...)`` (`lcdask.simulate.preset`) is a small-telescope
night on the real Tycho-2 sky (no calibration frames, no IMAGETYP, no WCS, local DATE-OBS, ...),
its light frames named ``TrES-2_NNNN.fits``.

Coordinates: pixel positions are 0-based (numpy); ``crpix1/2`` in ``frames.parquet`` and in the
headers are FITS 1-based. The WCS columns of ``frames.parquet`` are the true TAN WCS of each frame;
the ``header_*`` columns and the FITS headers hold the mount's (erroneous) pointing.
"""

from lcdask.simulate.config import SimConfig
from lcdask.simulate.night import (
    SimTruth,
    SimulatedNight,
    load_truth,
    simulate_night,
    truth_light_image,
)
from lcdask.simulate.preset import PRESETS, preset_config, small_telescope_config
from lcdask.simulate.render import catalog_flux_adu
from lcdask.simulate.variability import flux_factor

__all__ = [
    "PRESETS",
    "SimConfig",
    "SimTruth",
    "SimulatedNight",
    "catalog_flux_adu",
    "flux_factor",
    "load_truth",
    "preset_config",
    "simulate_night",
    "small_telescope_config",
    "truth_light_image",
]
