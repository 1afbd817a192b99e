"""The night's geometry and the per-frame observing conditions (the truth ``frames.parquet``).

Per light frame ``i`` (mid-exposure time ``t``, airmass ``X``):

- ``zero_point = zero_point_zenith - extinction_k * (X - 1) - cloud(t)``, with ``cloud(t)`` a smooth
  random function between 0 and ``cloud_mag`` (thin cirrus varying over 15 min - 3 h);
- ``fwhm_px = seeing_fwhm_arcsec * X**0.6 * (1 + seeing_variation * s(t)) / pixel_scale_arcsec``,
  ``s(t)`` smooth in [-1, 1];
- ``sky_adu = exptime_s * pixel_scale^2 * 10**(-0.4 (sky_mag_arcsec2 - zero_point_zenith))
  * sqrt(X) * twilight(sun altitude) * (1 + 0.05 s'(t))``, with a linear gradient of fractional
  amplitude ``sky_gradient`` whose direction wanders slowly (stronger in twilight);
- the true WCS: a TAN projection centred on the detector (CRPIX at the centre), the CD matrix of
  the configured scale and rotation plus the night's rotation error, CRVAL at the commanded centre
  plus the night's pointing offset, moved so that stars drift by ``drift_px_total`` over the
  sequence (a straight drift plus a gentle bow) with ``jitter_px`` rms guiding jitter per frame,
  plus the re-pointing jump (``repoint_x_px``, ``repoint_y_px``; in ``drift_x_px``/``drift_y_px``)
  from the middle frame on; with ``drift_centred`` the drift is zero at mid-sequence;
- the header WCS: CRVAL at the commanded centre (``ra_deg``, ``dec_deg``), the nominal rotation;
  ``pointing_error_arcsec`` is the separation between the header and the true CRVAL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from astropy.time import Time

from lcdask.simulate.config import SimConfig
from lcdask.simulate.site import (
    airmass_from_altitude,
    altitude_deg,
    sun_altitude_deg,
    transit_mjd,
    twilight_sky_factor,
)
from lcdask.simulate.tan import angular_separation_arcsec, cd_matrix, offset_radec, pixel_to_world

WCS_COLUMNS = ("crval1", "crval2", "crpix1", "crpix2", "cd1_1", "cd1_2", "cd2_1", "cd2_2")


@dataclass(frozen=True)
class NightGeometry:
    """Night-level pointing: nominal and true orientation, pointing offset, drift pattern."""

    rotation_deg: float
    rotation_error_deg: float
    pointing_offset_east_arcsec: float
    pointing_offset_north_arcsec: float
    drift_angle_deg: float
    crpix: tuple[float, float]
    cd_true: np.ndarray
    cd_header: np.ndarray
    crval_true: tuple[float, float]
    crval_header: tuple[float, float]

    def reference_wcs(self) -> tuple[tuple[float, float], tuple[float, float], np.ndarray]:
        """The true WCS with no drift (the pixel frame in which the field is laid out)."""
        return self.crval_true, self.crpix, self.cd_true


def night_geometry(cfg: SimConfig, rng: np.random.Generator) -> NightGeometry:
    """Draw the night's orientation, pointing error and drift direction.

    The pointing error is drawn between 20% and 100% of ``pointing_error_arcmin`` (capped at a
    quarter of the field width so that small test frames keep their field), in a random direction.
    """
    rotation = float(rng.uniform(0.0, 360.0)) if cfg.rotation_deg is None else cfg.rotation_deg
    width_arcsec = cfg.size * cfg.pixel_scale_arcsec
    max_err = min(cfg.pointing_error_arcmin * 60.0, 0.25 * width_arcsec)
    err = float(rng.uniform(0.2, 1.0)) * max_err
    direction = float(rng.uniform(0.0, 2.0 * np.pi))
    rot_err = float(rng.uniform(-1.0, 1.0)) * cfg.rotation_error_deg
    drift_angle = float(rng.uniform(0.0, 360.0))
    east, north = err * np.sin(direction), err * np.cos(direction)
    crval_true = offset_radec(cfg.ra_deg, cfg.dec_deg, east, north)
    centre = (cfg.size + 1) / 2.0
    return NightGeometry(
        rotation_deg=rotation,
        rotation_error_deg=rot_err,
        pointing_offset_east_arcsec=east,
        pointing_offset_north_arcsec=north,
        drift_angle_deg=drift_angle,
        crpix=(centre, centre),
        cd_true=cd_matrix(cfg.pixel_scale_arcsec, rotation + rot_err, flip=cfg.flip),
        cd_header=cd_matrix(cfg.pixel_scale_arcsec, rotation, flip=cfg.flip),
        crval_true=crval_true,
        crval_header=(cfg.ra_deg, cfg.dec_deg),
    )


def smooth_random(
    rng: np.random.Generator, n_terms: int = 6, min_h: float = 0.25, max_h: float = 3
):
    """A smooth random function of time (MJD) with values in [-1, 1], periods ``min_h``-``max_h``.

    The coefficients are drawn now; the function is deterministic afterwards, so its value at a
    time does not depend on how many frames are made.
    """
    periods_d = np.exp(rng.uniform(np.log(min_h), np.log(max_h), n_terms)) / 24.0
    phases = rng.uniform(0.0, 2.0 * np.pi, n_terms)
    amps = rng.uniform(0.3, 1.0, n_terms)
    amps = amps / amps.sum()

    def f(t_mjd: np.ndarray) -> np.ndarray:
        t = np.asarray(t_mjd, dtype=float)[..., None]
        return np.sum(amps * np.sin(2.0 * np.pi * t / periods_d + phases), axis=-1)

    return f


def start_mjd(cfg: SimConfig) -> float:
    """UTC MJD of the start of the first light exposure (see ``SimConfig.start_utc``)."""
    if cfg.start_utc:
        try:
            return float(Time(cfg.start_utc, scale="utc").mjd)
        except ValueError as err:
            raise ValueError(
                f"SimConfig.start_utc must be an ISO UTC time such as '2026-03-15T02:00:00', "
                f"got {cfg.start_utc!r}"
            ) from err
    try:
        night = float(Time(cfg.night_utc, scale="utc").mjd)
    except ValueError as err:
        raise ValueError(
            f"SimConfig.night_utc must be an ISO UTC time, got {cfg.night_utc!r}"
        ) from err
    span_d = cfg.n_frames * (cfg.exptime_s + cfg.readout_s + 0.5) / 86400.0
    if cfg.exptime2_s > 0:
        n2 = int(second_block(cfg).sum())
        span_d += n2 * (cfg.exptime2_s - cfg.exptime_s) / 86400.0
    return transit_mjd(cfg.ra_deg, night, cfg.site_lon_deg) - 0.5 * span_d


def iso_utc(mjd: np.ndarray) -> list[str]:
    """ISO 8601 UTC strings with milliseconds (as cameras write DATE-OBS)."""
    t = Time(np.atleast_1d(np.asarray(mjd, dtype=float)), format="mjd", scale="utc")
    t.precision = 3
    return list(t.isot)


def light_filename(index: int, stem: str = "light") -> str:
    """File name of light frame ``index``."""
    return f"{stem}_{index:04d}.fits"


def second_block(cfg: SimConfig) -> np.ndarray:
    """Per light frame: True in the second block (after the re-pointing, or with ``exptime2_s``)."""
    split = cfg.n_frames > 1 and (cfg.repoint_px > 0 or cfg.exptime2_s > 0)
    return (np.arange(cfg.n_frames) >= cfg.n_frames // 2) & split


def frame_conditions(cfg: SimConfig, geom: NightGeometry, rng: np.random.Generator) -> pd.DataFrame:
    """The per-light-frame truth table (``frames.parquet``); see the module docstring.

    Parameters
    ----------
    cfg
        The configuration.
    geom
        The night geometry from `night_geometry`.
    rng
        The night's observing-conditions stream.

    Returns
    -------
    pandas.DataFrame
        One row per light frame.
    """
    n = cfg.n_frames
    cloud_f = smooth_random(rng, min_h=0.25, max_h=3.0)
    seeing_f = smooth_random(rng, min_h=0.3, max_h=4.0)
    sky_f = smooth_random(rng, min_h=0.5, max_h=4.0)
    grad_f = smooth_random(rng, min_h=1.0, max_h=6.0)
    ell_f = smooth_random(rng, min_h=0.5, max_h=4.0)
    grad_angle0 = rng.uniform(0.0, 2.0 * np.pi)
    theta0 = rng.uniform(0.0, 180.0)
    overhead = rng.uniform(0.0, 1.0, n)
    jitter = rng.normal(0.0, cfg.jitter_px, (n, 2))
    bow_sign = rng.choice([-1.0, 1.0])

    block2 = second_block(cfg)
    exptime = np.where(block2 & (cfg.exptime2_s > 0), cfg.exptime2_s, cfg.exptime_s)
    cadence_s = exptime + cfg.readout_s + overhead
    start = start_mjd(cfg) + np.concatenate([[0.0], np.cumsum(cadence_s[:-1])]) / 86400.0
    mid = start + 0.5 * exptime / 86400.0
    alt = altitude_deg(cfg.ra_deg, cfg.dec_deg, mid, cfg.site_lat_deg, cfg.site_lon_deg)
    airmass = airmass_from_altitude(alt)
    sun_alt = sun_altitude_deg(mid, cfg.site_lat_deg, cfg.site_lon_deg)

    cloud = cfg.cloud_mag * (0.5 + 0.5 * cloud_f(mid))
    zero_point = cfg.zero_point_zenith - cfg.extinction_k * (airmass - 1.0) - cloud
    fwhm_arcsec = (
        cfg.seeing_fwhm_arcsec * airmass**0.6 * (1.0 + cfg.seeing_variation * seeing_f(mid))
    )
    fwhm_px = fwhm_arcsec / cfg.pixel_scale_arcsec
    ellipticity = cfg.psf_ellipticity * (0.7 + 0.3 * ell_f(mid))
    theta = np.mod(theta0 + 15.0 * ell_f(mid + 0.37), 180.0)

    twilight = twilight_sky_factor(sun_alt)
    sky_rate = cfg.pixel_scale_arcsec**2 * 10.0 ** (
        -0.4 * (cfg.sky_mag_arcsec2 - cfg.zero_point_zenith)
    )
    sky_adu = exptime * sky_rate * np.sqrt(airmass) * twilight * (1.0 + 0.05 * sky_f(mid))
    grad_amp = cfg.sky_gradient * (1.0 + 0.5 * np.log10(twilight))
    grad_angle = grad_angle0 + np.deg2rad(30.0) * grad_f(mid)

    # drift of the stars on the detector: straight line plus a bow, plus guiding jitter
    span = max(mid[-1] - mid[0], 1e-9)
    s = (mid - mid[0]) / span if n > 1 else np.zeros(1)
    ang = np.deg2rad(geom.drift_angle_deg)
    along = np.array([np.cos(ang), np.sin(ang)])
    perp = np.array([-np.sin(ang), np.cos(ang)])
    drift = cfg.drift_px_total * (
        s[:, None] * along[None, :] + bow_sign * 0.15 * np.sin(np.pi * s)[:, None] * perp[None, :]
    )
    repoint = np.zeros((n, 2))
    if cfg.repoint_px > 0:  # drawn last: the other draws are those of a night without it
        jump_angle = rng.uniform(0.0, 2.0 * np.pi)
        jump = cfg.repoint_px * np.array([np.cos(jump_angle), np.sin(jump_angle)])
        repoint = block2[:, None] * jump[None, :]
        drift = drift + repoint
    if cfg.drift_centred:
        mid_drift = cfg.drift_px_total * (0.5 * along + bow_sign * 0.15 * perp)
        if cfg.repoint_px > 0:
            mid_drift = mid_drift + 0.5 * jump
        drift = drift - mid_drift[None, :]
    drift = drift + jitter
    centre0 = geom.crpix[0] - 1.0
    crval1, crval2 = pixel_to_world(
        centre0 - drift[:, 0], centre0 - drift[:, 1], geom.crval_true, geom.crpix, geom.cd_true
    )
    pointing_err = angular_separation_arcsec(
        crval1, crval2, geom.crval_header[0], geom.crval_header[1]
    )

    table = pd.DataFrame(
        {
            "frame_index": np.arange(n, dtype=np.int64),
            "filename": [light_filename(i, cfg.file_stem) for i in range(n)],
            "date_obs": iso_utc(start),
            "time_mjd": mid,
            "exptime_s": exptime.astype(float),
            "airmass": airmass,
            "altitude_deg": alt,
            "sun_altitude_deg": sun_alt,
            "zero_point": zero_point,
            "slope": np.full(n, float(cfg.slope)),
            "cloud_mag": cloud,
            "fwhm_px": fwhm_px,
            "psf_beta": np.full(n, float(cfg.psf_beta)),
            "psf_ellipticity": ellipticity,
            "psf_theta_deg": theta,
            "sky_adu": sky_adu,
            "sky_grad_x": grad_amp * np.cos(grad_angle),
            "sky_grad_y": grad_amp * np.sin(grad_angle),
            "crval1": crval1,
            "crval2": crval2,
            "crpix1": np.full(n, geom.crpix[0]),
            "crpix2": np.full(n, geom.crpix[1]),
            "cd1_1": np.full(n, geom.cd_true[0, 0]),
            "cd1_2": np.full(n, geom.cd_true[0, 1]),
            "cd2_1": np.full(n, geom.cd_true[1, 0]),
            "cd2_2": np.full(n, geom.cd_true[1, 1]),
            "drift_x_px": drift[:, 0],
            "drift_y_px": drift[:, 1],
            "repoint_x_px": repoint[:, 0],
            "repoint_y_px": repoint[:, 1],
            "header_crval1": np.full(n, geom.crval_header[0]),
            "header_crval2": np.full(n, geom.crval_header[1]),
            "header_cd1_1": np.full(n, geom.cd_header[0, 0]),
            "header_cd1_2": np.full(n, geom.cd_header[0, 1]),
            "header_cd2_1": np.full(n, geom.cd_header[1, 0]),
            "header_cd2_2": np.full(n, geom.cd_header[1, 1]),
            "pointing_error_arcsec": pointing_err,
            "rotation_error_deg": np.full(n, geom.rotation_error_deg),
        }
    )
    return table


def calibration_schedule(
    cfg: SimConfig, frames: pd.DataFrame, rng: np.random.Generator
) -> pd.DataFrame:
    """Times, exposures and (for flats) levels of the calibration frames (``calib_frames.parquet``).

    Twilight flats (and their darks) are taken an hour before the first light; bias frames and
    darks after the last light.
    """
    rows = []
    t_first = float(frames["time_mjd"].iloc[0])
    t_last = float(frames["time_mjd"].iloc[-1])
    step_flat = (cfg.flat_exptime_s + cfg.readout_s) / 86400.0
    step_dark = (cfg.exptime_s + cfg.readout_s) / 86400.0
    step_bias = cfg.readout_s / 86400.0
    t = t_first - 1.0 / 24.0
    levels = cfg.flat_level_adu * rng.uniform(0.85, 1.15, cfg.n_flats)
    plan = [
        ("flat", cfg.n_flats, cfg.flat_exptime_s, step_flat, t),
        ("darkflat", cfg.n_darkflats, cfg.flat_exptime_s, step_flat, t + 0.01),
        ("bias", cfg.n_bias, 0.0, step_bias, t_last + 10.0 / 1440.0),
        ("dark", cfg.n_darks, cfg.exptime_s, step_dark, t_last + 20.0 / 1440.0),
    ]
    for kind, count, exptime, step, t0 in plan:
        for i in range(count):
            rows.append(
                {
                    "kind": kind,
                    "index": i,
                    "filename": f"{kind}_{i:04d}.fits",
                    "start_mjd": t0 + i * step,
                    "exptime_s": float(exptime),
                    "level_adu": float(levels[i]) if kind == "flat" else 0.0,
                }
            )
    table = pd.DataFrame(
        rows, columns=["kind", "index", "filename", "start_mjd", "exptime_s", "level_adu"]
    )
    table["date_obs"] = iso_utc(table["start_mjd"].to_numpy()) if len(table) else []
    return table
