"""Simulated detection catalogs with their truth, for tests and benchmarks of the light curves.

Matching, light curves and classification work on the gathered detections of all frames, not on
images; rendering hundreds of frames only to detect the stars again is slow. These factories
draw the per-frame detection catalogs straight from the truth of a simulated night
(`lcdask.simulate`): the same stars, movers, variables, transparency, seeing and sky, with the
noise a real pipeline would measure.

- `simulate_truth`: the truth tables of a night (``stars``, ``movers``, ``frames``) without
  rendering any image (the same draws as `lcdask.simulate.simulate_night`).
- `inject_variables`: turn random stable field stars into sinusoidal variables (pulsators) with
  amplitudes given in units of the noise at their magnitude, for recall statistics.
- `make_detections`: one row per detection per frame in the detections schema (``frame``,
  ``time_mjd``, ``x``, ``y``, ``ra``, ``dec``, ``flux``, ``flux_err``, ``mag``, ``mag_err``,
  ``flux_jy``, ``flags``) plus the truth column ``star_id`` (-1 for spurious detections; the
  pipeline has no such column).
- `frame_table`: the per-frame table (``frame``, ``time_mjd``, ``zero_point``, ``airmass``,
  ``fwhm_px``, ``sky``, ``rms_arcsec``).
- `make_benchmark_detections`: a large, simple catalog (``frame``, ``ra``, ``dec``,
  ``star_id``) for the matching benchmark (millions of rows in seconds).

Noise model of `make_detections` (aperture of radius ``aperture_fwhm * fwhm_px``)::

    flux      = ee * F_true        (ee: Moffat encircled energy in the aperture, constant)
    var(flux) = flux / gain + n_pix * (sky / gain + (read_noise / gain)**2)
    sigma_pos = sqrt(floor**2 + (centroid_factor * fwhm_arcsec / snr)**2)    per axis

``F_true`` is `lcdask.simulate.catalog_flux_adu` times `lcdask.simulate.flux_factor`, with the
frame's true ``zero_point`` (which carries extinction and clouds: the transparency changes). The
calibrated ``mag`` uses the frame's zero point plus a random calibration error
(``zp_error_mag`` rms per frame) that the ensemble photometry must take out. A detection is kept
when its measured S/N reaches ``detection_snr``; stars whose peak reaches ``saturate_adu`` are
flagged saturated (bit 4) and lose flux; a fraction ``missing_fraction`` of the detections is
dropped at random and ``n_spurious_per_frame`` spurious detections (Poisson mean) are added.
Blends are not modelled (two stars closer than the seeing are two detections here).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from astropy.wcs import WCS

from lcdask.simulate.conditions import frame_conditions, night_geometry
from lcdask.simulate.config import SimConfig
from lcdask.simulate.field import make_stars
from lcdask.simulate.night import night_rng
from lcdask.simulate.render import catalog_flux_adu, mover_radec
from lcdask.simulate.tan import pixel_to_world, world_to_pixel
from lcdask.simulate.variability import flux_factor

__all__ = [
    "DETECTIONS_COLUMNS",
    "FRAME_COLUMNS",
    "NightTruth",
    "aperture_noise",
    "frame_table",
    "inject_variables",
    "make_benchmark_detections",
    "make_detections",
    "simulate_truth",
    "truth_wcs",
]

DETECTIONS_COLUMNS = (
    "frame",
    "time_mjd",
    "x",
    "y",
    "ra",
    "dec",
    "flux",
    "flux_err",
    "mag",
    "mag_err",
    "flux_jy",
    "flags",
)
"""The detections schema gathered by the pipeline (``detections.parquet``)."""

FRAME_COLUMNS = ("frame", "time_mjd", "zero_point", "airmass", "fwhm_px", "sky", "rms_arcsec")
"""The per-frame table the light-curve stages read."""

SATURATED = 4  # lcdask.detect.DetectionFlag.SATURATED
EDGE = 2  # lcdask.detect.DetectionFlag.EDGE
AB_JY = 3631.0


@dataclass(frozen=True)
class NightTruth:
    """Truth tables of a simulated night (the subset of `lcdask.simulate.SimTruth` used here).

    Attributes
    ----------
    config
        The `SimConfig`.
    stars, movers, frames
        ``stars.parquet``, ``movers.parquet`` and ``frames.parquet`` (see `lcdask.simulate`).
    """

    config: SimConfig
    stars: pd.DataFrame
    movers: pd.DataFrame
    frames: pd.DataFrame


def simulate_truth(config: SimConfig | None = None) -> NightTruth:
    """The truth tables of a simulated night, without rendering any frame.

    Parameters
    ----------
    config
        The configuration (default ``SimConfig()``); the draws are those of
        `lcdask.simulate.simulate_night` with the same configuration.

    Returns
    -------
    NightTruth
        ``config``, ``stars``, ``movers``, ``frames``.
    """
    cfg = SimConfig() if config is None else config
    geom = night_geometry(cfg, night_rng(cfg.seed, "geometry"))
    frames = frame_conditions(cfg, geom, night_rng(cfg.seed, "conditions"))
    stars, movers = make_stars(
        cfg, geom, frames["time_mjd"].to_numpy(), night_rng(cfg.seed, "stars")
    )
    return NightTruth(config=cfg, stars=stars, movers=movers, frames=frames)


def _ee(aperture_fwhm: float, beta: float) -> float:
    """Encircled energy of a Moffat profile within ``aperture_fwhm`` FWHM (radius)."""
    alpha_per_fwhm = 1.0 / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    r = aperture_fwhm / alpha_per_fwhm
    return float(1.0 - (1.0 + r * r) ** (1.0 - beta))


def aperture_noise(
    flux_adu: np.ndarray | float,
    sky_adu: np.ndarray | float,
    fwhm_px: np.ndarray | float,
    *,
    gain_e_adu: float,
    read_noise_e: float,
    aperture_fwhm: float = 1.5,
) -> np.ndarray:
    """1-sigma error (ADU) of an aperture flux: photon noise of source and sky, read noise.

    Parameters
    ----------
    flux_adu
        Flux in the aperture (ADU, >= 0).
    sky_adu
        Sky per pixel (ADU).
    fwhm_px
        Seeing FWHM (px); the aperture radius is ``aperture_fwhm * fwhm_px``.
    gain_e_adu, read_noise_e
        Detector gain and read noise.
    aperture_fwhm
        Aperture radius in FWHM.

    Returns
    -------
    numpy.ndarray
        The error in ADU.
    """
    n_pix = np.pi * (aperture_fwhm * np.asarray(fwhm_px, dtype=float)) ** 2
    var = np.maximum(np.asarray(flux_adu, dtype=float), 0.0) / gain_e_adu + n_pix * (
        np.asarray(sky_adu, dtype=float) / gain_e_adu + (read_noise_e / gain_e_adu) ** 2
    )
    return np.sqrt(var)


def inject_variables(
    truth: NightTruth,
    n_variables: int,
    *,
    amplitude_in_sigma: tuple[float, float] = (3.0, 10.0),
    mag_range: tuple[float, float] = (12.0, 19.0),
    seed: int = 0,
    aperture_fwhm: float = 1.5,
) -> NightTruth:
    """Turn random stable field stars into sinusoidal variables of known amplitude.

    The semi-amplitude is drawn uniformly in ``amplitude_in_sigma`` times the star's fractional
    noise in a median frame (`aperture_noise` at its flux), capped at 0.5; the period between a
    third of and twice the sequence, random phase. The stars get ``kind = "variable"``,
    ``var_type = "pulsator"`` and ``role = "injected"``, and a column ``amplitude_sigma`` (the
    amplitude in units of that noise; NaN for the other stars) is added.

    Parameters
    ----------
    truth
        The night.
    n_variables
        How many stars to change (fewer if there are not enough candidates).
    amplitude_in_sigma
        Range of the semi-amplitude in units of the per-frame fractional noise.
    mag_range
        Catalog magnitudes of the candidate stars.
    seed
        Random seed.
    aperture_fwhm
        Aperture radius (FWHM) of the noise model, as in `make_detections`.

    Returns
    -------
    NightTruth
        A copy with the new variables.
    """
    cfg = truth.config
    rng = np.random.default_rng(seed)
    stars = truth.stars.copy()
    if "amplitude_sigma" not in stars.columns:
        stars["amplitude_sigma"] = np.nan
    cand = np.flatnonzero(
        (stars["kind"] == "stable").to_numpy()
        & (stars["role"] == "field").to_numpy()
        & stars["mag"].between(*mag_range).to_numpy()
    )
    pick = rng.choice(cand, size=min(n_variables, cand.size), replace=False)
    frames = truth.frames
    med = frames[["zero_point", "exptime_s", "slope", "sky_adu", "fwhm_px"]].median()
    flux = catalog_flux_adu(
        stars["mag"].to_numpy(float)[pick], med["zero_point"], med["slope"], med["exptime_s"]
    ) * _ee(aperture_fwhm, cfg.psf_beta)
    sigma = (
        aperture_noise(
            flux,
            med["sky_adu"],
            med["fwhm_px"],
            gain_e_adu=cfg.gain_e_adu,
            read_noise_e=cfg.read_noise_e,
            aperture_fwhm=aperture_fwhm,
        )
        / flux
    )
    k = rng.uniform(*amplitude_in_sigma, pick.size)
    amplitude = np.minimum(k * sigma, 0.5)
    t = frames["time_mjd"].to_numpy(float)
    span = max(t[-1] - t[0], 1e-3)
    col = stars.columns
    stars.iloc[pick, col.get_loc("kind")] = "variable"
    stars.iloc[pick, col.get_loc("var_type")] = "pulsator"
    stars.iloc[pick, col.get_loc("role")] = "injected"
    stars.iloc[pick, col.get_loc("amplitude")] = amplitude
    stars.iloc[pick, col.get_loc("period_d")] = rng.uniform(span / 3.0, 2.0 * span, pick.size)
    stars.iloc[pick, col.get_loc("t0_mjd")] = t[0] + rng.uniform(0.0, span, pick.size)
    stars.iloc[pick, col.get_loc("amplitude_sigma")] = amplitude / sigma
    return replace(truth, stars=stars)


def _frame_wcs(frame: pd.Series):
    crval = (float(frame["crval1"]), float(frame["crval2"]))
    crpix = (float(frame["crpix1"]), float(frame["crpix2"]))
    cd = np.array(
        [
            [float(frame["cd1_1"]), float(frame["cd1_2"])],
            [float(frame["cd2_1"]), float(frame["cd2_2"])],
        ]
    )
    return crval, crpix, cd


def make_detections(
    truth: NightTruth,
    *,
    seed: int = 0,
    aperture_fwhm: float = 1.5,
    detection_snr: float = 5.0,
    missing_fraction: float = 0.01,
    n_spurious_per_frame: float = 3.0,
    astrometric_floor_arcsec: float = 0.08,
    centroid_factor: float = 0.6,
    frame_offset_arcsec: float = 0.03,
    zp_error_mag: float = 0.02,
    saturate_adu: float | None = None,
) -> pd.DataFrame:
    """Per-frame detection catalogs drawn from the truth of a night (module docstring).

    Parameters
    ----------
    truth
        The night (`simulate_truth`, or a `lcdask.simulate.SimTruth`).
    seed
        Random seed of the noise.
    aperture_fwhm
        Aperture radius in FWHM (sets the sky noise and the encircled energy).
    detection_snr
        A detection is kept when its measured flux / flux_err reaches this.
    missing_fraction
        Fraction of the detections dropped at random (glitches, cosmic rays on the star...).
    n_spurious_per_frame
        Mean number of spurious detections per frame (uniform over the detector, near the
        detection limit, ``star_id = -1``).
    astrometric_floor_arcsec, centroid_factor
        Per-axis position error ``sqrt(floor**2 + (centroid_factor * fwhm_arcsec / snr)**2)``.
    frame_offset_arcsec
        Rms of a per-frame offset common to all detections (the plate solution's error).
    zp_error_mag
        Rms of the per-frame error of the photometric calibration (``mag`` and ``flux_jy``).
    saturate_adu
        Peak (above 0, sky included) at which a star is saturated; default the configuration's
        ``saturate_adu``.

    Returns
    -------
    pandas.DataFrame
        `DETECTIONS_COLUMNS` plus ``star_id`` (truth; -1 for spurious detections), sorted by
        frame.
    """
    cfg = truth.config
    rng = np.random.default_rng(np.random.SeedSequence([seed, 99]))
    sat = cfg.saturate_adu if saturate_adu is None else saturate_adu
    ee = _ee(aperture_fwhm, cfg.psf_beta)
    stars = truth.stars
    fixed = stars[stars["kind"] != "moving"]
    fixed_ra = fixed["ra"].to_numpy(float)
    fixed_dec = fixed["dec"].to_numpy(float)
    fixed_mag = fixed["mag"].to_numpy(float)
    fixed_id = fixed["star_id"].to_numpy(np.int64)
    movers = truth.movers
    frames = truth.frames
    factors = flux_factor(fixed, frames["time_mjd"].to_numpy(float))  # (n_star, n_frame)
    alpha_per_fwhm = 1.0 / (2.0 * np.sqrt(2.0 ** (1.0 / cfg.psf_beta) - 1.0))
    parts = []
    for j, (_, frame) in enumerate(frames.iterrows()):
        crval, crpix, cd = _frame_wcs(frame)
        t = float(frame["time_mjd"])
        zp, slope, exptime = (
            float(frame["zero_point"]),
            float(frame["slope"]),
            float(frame["exptime_s"]),
        )
        fwhm = float(frame["fwhm_px"])
        sky = float(frame["sky_adu"])
        ra_m, dec_m = mover_radec(movers, t)
        ra = np.concatenate([fixed_ra, ra_m])
        dec = np.concatenate([fixed_dec, dec_m])
        ids = np.concatenate([fixed_id, movers["star_id"].to_numpy(np.int64)])
        true_flux = np.concatenate(
            [
                catalog_flux_adu(fixed_mag, zp, slope, exptime) * factors[:, j],
                catalog_flux_adu(movers["mag"].to_numpy(float), zp, slope, exptime),
            ]
        )
        x, y = world_to_pixel(ra, dec, crval, crpix, cd)
        inside = (x >= 0) & (x <= cfg.size - 1) & (y >= 0) & (y <= cfg.size - 1)
        x, y, ids, true_flux = x[inside], y[inside], ids[inside], true_flux[inside]
        # photometry
        ap_flux = ee * true_flux
        err = aperture_noise(
            ap_flux,
            sky,
            fwhm,
            gain_e_adu=cfg.gain_e_adu,
            read_noise_e=cfg.read_noise_e,
            aperture_fwhm=aperture_fwhm,
        )
        flux = ap_flux + rng.normal(0.0, 1.0, ap_flux.size) * err
        alpha = alpha_per_fwhm * fwhm
        peak = true_flux * (cfg.psf_beta - 1.0) / (np.pi * alpha * alpha) + sky
        flags = np.zeros(flux.size, dtype=np.int32)
        saturated = peak >= sat
        flags[saturated] |= SATURATED
        flux = np.where(saturated, flux * (sat / peak) ** 0.3, flux)
        r_ap = aperture_fwhm * fwhm
        near_edge = (x < r_ap) | (y < r_ap) | (x > cfg.size - 1 - r_ap) | (y > cfg.size - 1 - r_ap)
        flags[near_edge] |= EDGE
        flux_err = aperture_noise(
            np.maximum(flux, 0.0),
            sky,
            fwhm,
            gain_e_adu=cfg.gain_e_adu,
            read_noise_e=cfg.read_noise_e,
            aperture_fwhm=aperture_fwhm,
        )
        snr = flux / flux_err
        keep = (snr >= detection_snr) & (rng.uniform(0.0, 1.0, flux.size) >= missing_fraction)
        # spurious detections near the limit
        n_sp = int(rng.poisson(n_spurious_per_frame))
        sp_x = rng.uniform(0, cfg.size - 1, n_sp)
        sp_y = rng.uniform(0, cfg.size - 1, n_sp)
        sp_err = aperture_noise(
            0.0,
            sky,
            fwhm,
            gain_e_adu=cfg.gain_e_adu,
            read_noise_e=cfg.read_noise_e,
            aperture_fwhm=aperture_fwhm,
        )
        sp_flux = sp_err * rng.uniform(detection_snr, detection_snr + 3.0, n_sp)
        x = np.concatenate([x[keep], sp_x])
        y = np.concatenate([y[keep], sp_y])
        flux = np.concatenate([flux[keep], sp_flux])
        flux_err = np.concatenate([flux_err[keep], np.full(n_sp, sp_err)])
        flags = np.concatenate([flags[keep], np.zeros(n_sp, np.int32)])
        ids = np.concatenate([ids[keep], np.full(n_sp, -1, np.int64)])
        snr = flux / flux_err
        # astrometry: centroid noise, then the frame's plate-solution offset
        scale = float(np.sqrt(abs(np.linalg.det(cd)))) * 3600.0
        sigma_arcsec = np.sqrt(
            astrometric_floor_arcsec**2 + (centroid_factor * fwhm * scale / snr) ** 2
        )
        x = x + rng.normal(0.0, 1.0, x.size) * sigma_arcsec / scale
        y = y + rng.normal(0.0, 1.0, y.size) * sigma_arcsec / scale
        ra_d, dec_d = pixel_to_world(x, y, crval, crpix, cd)
        off = rng.normal(0.0, frame_offset_arcsec, 2)
        dec_d = dec_d + off[1] / 3600.0
        ra_d = ra_d + off[0] / 3600.0 / np.cos(np.deg2rad(dec_d))
        zp_meas = zp + rng.normal(0.0, zp_error_mag)
        with np.errstate(invalid="ignore", divide="ignore"):
            mag = zp_meas + slope * (-2.5 * np.log10(flux / ee / exptime))
            mag_err = 2.5 / np.log(10.0) * flux_err / flux
        parts.append(
            pd.DataFrame(
                {
                    "frame": np.full(x.size, int(frame["frame_index"]), dtype=np.int64),
                    "time_mjd": t,
                    "x": x,
                    "y": y,
                    "ra": ra_d,
                    "dec": dec_d,
                    "flux": flux,
                    "flux_err": flux_err,
                    "mag": mag,
                    "mag_err": mag_err,
                    "flux_jy": AB_JY * 10.0 ** (-0.4 * mag),
                    "flags": flags,
                    "star_id": ids,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def frame_table(truth: NightTruth, detections: pd.DataFrame | None = None) -> pd.DataFrame:
    """The per-frame table of a simulated night (`FRAME_COLUMNS`).

    Parameters
    ----------
    truth
        The night.
    detections
        Detections from `make_detections` (with ``star_id``): ``rms_arcsec`` is then the
        measured rms of the 2-D distance between the detections of stars with S/N >= 10 and
        their true positions (as a plate solve against an exact catalog would report);
        without them it is NaN.

    Returns
    -------
    pandas.DataFrame
        One row per frame.
    """
    frames = truth.frames
    table = pd.DataFrame(
        {
            "frame": frames["frame_index"].to_numpy(np.int64),
            "time_mjd": frames["time_mjd"].to_numpy(float),
            "zero_point": frames["zero_point"].to_numpy(float),
            "airmass": frames["airmass"].to_numpy(float),
            "fwhm_px": frames["fwhm_px"].to_numpy(float),
            "sky": frames["sky_adu"].to_numpy(float),
            "rms_arcsec": np.nan,
        }
    )
    if detections is not None and len(detections):
        stars = truth.stars.set_index("star_id")
        fixed = detections[
            (detections["star_id"] >= 0)
            & (detections["flux"] >= 10 * detections["flux_err"])
            & detections["star_id"].map(stars["kind"]).ne("moving").to_numpy()
        ]
        ra0 = fixed["star_id"].map(stars["ra"]).to_numpy(float)
        dec0 = fixed["star_id"].map(stars["dec"]).to_numpy(float)
        d_ra = (fixed["ra"].to_numpy(float) - ra0) * np.cos(np.deg2rad(dec0)) * 3600.0
        d_dec = (fixed["dec"].to_numpy(float) - dec0) * 3600.0
        sq = pd.Series(d_ra**2 + d_dec**2).groupby(fixed["frame"].to_numpy()).mean()
        table["rms_arcsec"] = np.sqrt(table["frame"].map(sq).to_numpy(float))
    return table


def make_benchmark_detections(
    n_frames: int,
    n_sources: int,
    *,
    seed: int = 0,
    field_arcsec: float = 3600.0,
    sigma_arcsec: tuple[float, float] = (0.05, 0.4),
    detection_fraction: float = 0.98,
    n_spurious_per_frame: float = 2.0,
    ra0_deg: float = 150.0,
    dec0_deg: float = 20.0,
) -> pd.DataFrame:
    """A large simulated detection catalog for the matching benchmark (no images, no photometry).

    Sources are spread uniformly over a square field; each is detected in a frame with
    probability ``detection_fraction`` at its position plus Gaussian noise of its own rms
    (uniform in ``sigma_arcsec`` per axis); spurious detections are added uniformly.

    Parameters
    ----------
    n_frames, n_sources
        Size of the run: about ``n_frames * n_sources * detection_fraction`` rows.
    seed
        Random seed.
    field_arcsec
        Side of the field.
    sigma_arcsec
        Range of the per-axis position error of the sources.
    detection_fraction
        Probability that a source is detected in a frame.
    n_spurious_per_frame
        Mean number of spurious detections per frame.
    ra0_deg, dec0_deg
        Field centre.

    Returns
    -------
    pandas.DataFrame
        ``frame`` (int64), ``ra``, ``dec`` (degrees), ``star_id`` (int64, -1 spurious), sorted
        by frame.
    """
    rng = np.random.default_rng(seed)
    half = field_arcsec / 2.0
    sx = rng.uniform(-half, half, n_sources)
    sy = rng.uniform(-half, half, n_sources)
    sig = rng.uniform(*sigma_arcsec, n_sources).astype(np.float32)
    frame_parts, x_parts, y_parts, id_parts = [], [], [], []
    block = max(1, 2_000_000 // max(n_sources, 1))
    for f0 in range(0, n_frames, block):
        nf = min(block, n_frames - f0)
        seen = rng.uniform(0.0, 1.0, (nf, n_sources)) < detection_fraction
        fi, si = np.nonzero(seen)
        noise = rng.standard_normal((2, fi.size)).astype(np.float32) * sig[si]
        n_sp = rng.poisson(n_spurious_per_frame, nf)
        fs = np.repeat(np.arange(nf), n_sp)
        frame_parts += [fi + f0, fs + f0]
        x_parts += [sx[si] + noise[0], rng.uniform(-half, half, fs.size)]
        y_parts += [sy[si] + noise[1], rng.uniform(-half, half, fs.size)]
        id_parts += [si.astype(np.int64), np.full(fs.size, -1, np.int64)]
    frame = np.concatenate(frame_parts).astype(np.int64)
    xi = np.concatenate(x_parts).astype(float)
    eta = np.concatenate(y_parts).astype(float)
    order = np.argsort(frame, kind="stable")
    from lcdask.match import untangent_plane

    ra, dec = untangent_plane(xi[order], eta[order], ra0_deg, dec0_deg)
    return pd.DataFrame(
        {
            "frame": frame[order],
            "ra": ra,
            "dec": dec,
            "star_id": np.concatenate(id_parts)[order],
        }
    )


def truth_wcs(frame) -> WCS:
    """The simulator's true TAN WCS of a frame, from its row of ``truth/frames.parquet``.

    Parameters
    ----------
    frame : pandas.Series or namedtuple
        With ``crval1``, ``crval2``, ``crpix1``, ``crpix2`` (FITS, 1-based) and ``cd1_1`` ...
        ``cd2_2`` (degrees per pixel).

    Returns
    -------
    astropy.wcs.WCS
    """
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [frame.crval1, frame.crval2]
    wcs.wcs.crpix = [frame.crpix1, frame.crpix2]
    wcs.wcs.cd = [[frame.cd1_1, frame.cd1_2], [frame.cd2_1, frame.cd2_2]]
    wcs.wcs.set()
    return wcs
