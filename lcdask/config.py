"""Run configuration: TOML in, frozen dataclasses out, validated once with errors naming the field.

A configuration file has one table per stage; every field has a default that suits ordinary data,
so a file holds only what differs. ``lcdask config`` prints the defaults as a commented TOML file
to start from. Each stage's options are one dataclass here (documented in its numpydoc
"Attributes" section, which also gives the comments of the printed file), which the stage
imports: loading a configuration imports none of the stages.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import types
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DETREND_TERMS",
    "STAR_FLAT_MODES",
    "AstrometryConfig",
    "CalibrationConfig",
    "CatalogConfig",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "Level2Config",
    "LightCurvesConfig",
    "TransitConfig",
    "default_toml",
    "load_config",
]


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and what is allowed."""


_COMBINE = ("median", "sigma_clip")


_CLEAN = ("interpolate", "median", "mask", "none")


_NOISE_ESTIMATE = ("auto", "off")


_CALIBRATED_STORAGE = ("quantised", "float32")


@dataclass(frozen=True)
class CalibrationConfig:
    """Options of Level 1 calibration; every field has a default that suits ordinary data.

    Attributes
    ----------
    combine : {"sigma_clip", "median"}
        How masters combine frames along ``frame``: sigma-clipped mean (clipped about the median
        with a MAD-based sigma, so that it works for 3-5 frames) or plain median.
    clip_sigma : float
        Clipping threshold of ``"sigma_clip"`` (in robust sigma).
    clip_iterations : int
        Clipping passes of ``"sigma_clip"``.
    reject_sigma : float
        Outlier calibration frames: a bias or dark whose median is further than this many robust
        sigma from its group's, or whose spread or bright fraction stands out (see
        `reject_frames`), is not used.
    max_saturated_fraction : float
        A calibration frame with more than this fraction of saturated pixels is not used.
    exptime_rtol : float
        Relative tolerance for a dark to count as the same exposure as a light or flat.
    hot_sigma : float
        Hot pixel: dark current above the median by more than this many robust sigma (MAD).
    dead_response : float
        Dead/cold pixel: master flat below this fraction of the smoothed flat.
    flat_smooth_px : int
        Width of the median filter that gives the smoothed flat (odd, >= 3).
    bad_column_fraction : float
        The hot or dead pixels of a column with at least this fraction of them get BAD_COLUMN.
    clean : {"interpolate", "median", "mask", "none"}
        Bad-pixel cleaning: Gaussian-weighted interpolation of good neighbours (normalised
        convolution), local median of good neighbours, NaN (plus the MASKED flag), or nothing.
    clean_sigma_px : float
        Width (sigma, px) of the interpolation kernel; the window reaches 3 sigma.
    clean_size_px : int
        Side of the local-median window (odd).
    require_flat : bool
        Raise `LcdaskError` when lights of a filter have no flat; when False they are calibrated
        without flat-fielding and a note says so.
    saturate_adu : float or None
        Saturation level overriding the frames' ``saturate_adu`` coordinate.
    noise_estimate : {"auto", "off"}
        Gain and read noise from the frames (`lcdask.gain`): "auto" measures them (photon
        transfer from pairs of flats, else from the sky of pairs of lights; read noise from pairs
        of bias frames), uses them where the headers give none and in place of a header value
        the data contradict grossly (more than 1.5x for the gain, 2x for the read noise); "off"
        keeps the headers' values (1 e-/ADU where there is none).
    gain_e_adu : float or None
        The detector's gain (e-/ADU) for every frame, in place of the headers' and the estimate.
    rdnoise_e : float or None
        The detector's read noise (e-) for every frame, likewise.
    calibrated_storage : {"quantised", "float32"}
        How the cube stores ``calibrated`` (and ``variance``): "quantised" as fpack stores
        float images (each frame's values on a grid of a fixed fraction of its own sky noise,
        dithered, then compressed: `lcdask.io.codecs.NoiseQuantize`), about 1 byte a pixel
        against 2.8 as float32, the photometry the same within 0.02 of its errors; "float32"
        keeps every bit. ``raw`` is always stored losslessly.
    quantise_level : float
        Steps per noise sigma of "quantised" (fpack's ``-q``): the step is the frame's noise
        / this. The error it adds is uniform within +-step/2, without bias: 1 / (level sqrt 12)
        of the noise in quadrature per pixel (0.009 at 32); the sky estimates (medians, modes:
        order statistics) move by more than that share of their own error, which sets the
        default: aperture fluxes move by 0.014 of their errors at 32, 0.022 at 16 (measured).
        Each doubling costs ~1 bit a pixel. At least 1.
    """

    combine: str = "sigma_clip"
    clip_sigma: float = 3.0
    clip_iterations: int = 2
    reject_sigma: float = 5.0
    max_saturated_fraction: float = 0.001
    exptime_rtol: float = 0.01
    hot_sigma: float = 5.0
    dead_response: float = 0.7
    flat_smooth_px: int = 9
    bad_column_fraction: float = 0.3
    clean: str = "interpolate"
    clean_sigma_px: float = 1.0
    clean_size_px: int = 5
    require_flat: bool = False
    saturate_adu: float | None = None
    noise_estimate: str = "auto"
    gain_e_adu: float | None = None
    rdnoise_e: float | None = None
    calibrated_storage: str = "quantised"
    quantise_level: float = 32.0

    def __post_init__(self) -> None:
        _check_choice("combine", self.combine, _COMBINE)
        _check_choice("calibrated_storage", self.calibrated_storage, _CALIBRATED_STORAGE)
        _check_positive("quantise_level", self.quantise_level)
        if self.quantise_level < 1:
            raise ValueError(
                "CalibrationConfig.quantise_level must be at least 1 (steps per noise sigma; "
                f"32 by default), got {self.quantise_level!r}"
            )
        _check_choice("noise_estimate", self.noise_estimate, _NOISE_ESTIMATE)
        _check_choice("clean", self.clean, _CLEAN)
        for name in ("clip_sigma", "reject_sigma", "hot_sigma", "clean_sigma_px"):
            _check_positive(name, getattr(self, name))
        for name in ("clip_iterations",):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"CalibrationConfig.{name} must be an integer >= 1, got {value!r}")
        for name in (
            "max_saturated_fraction",
            "exptime_rtol",
            "dead_response",
            "bad_column_fraction",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"CalibrationConfig.{name} must be in [0, 1], got {value!r}")
        for name in ("flat_smooth_px", "clean_size_px"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 3 or value % 2 == 0:
                raise ValueError(
                    f"CalibrationConfig.{name} must be an odd integer >= 3, got {value!r}"
                )
        for name in ("saturate_adu", "gain_e_adu", "rdnoise_e"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))


def _check_choice(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(
            f"CalibrationConfig.{name} must be one of {', '.join(map(repr, allowed))}; "
            f"got {value!r}"
        )


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"CalibrationConfig.{name} must be a positive number, got {value!r}")


STAR_FLAT_MODES = ("auto", "on", "off")
"""Values of ``[lightcurves] star_flat``."""


@dataclass(frozen=True)
class LightCurvesConfig:
    """Options of the light curves.

    Attributes
    ----------
    forced : bool
        Forced photometry of the missing entries (`lcdask.stages.forced`): where a source has no
        detection, measure it at its position placed on that frame by the frame's WCS, with the
        detections' flux (aperture and aperture correction, or PSF) and zero point; flagged
        FORCED. Movers and frames without a plate solution are not forced.
    forced_min_detections : int
        Sources detected in fewer frames are not forced (mostly noise and cosmic-ray residuals).
    max_rate_arcsec_h : float
        Fastest motion the track linking looks for (`lcdask.classify.link_tracks`): main-belt
        asteroids move 20-60"/h, near-Earth objects up to thousands. A faster mover must still
        be detected as a point in each frame (trailed by less than a few FWHM).
    star_flat : str
        Illumination correction from the stars themselves (`fit_star_flat`), divided out of
        the fluxes before the ensemble photometry: a smooth polynomial over the detector
        fitted to how each stable star's brightness changes as it drifts across it. "auto":
        when the lights were not flat-fielded (no master flat for their filter) and the field
        moved enough on the detector for the stars to sample it (re-pointing, tracking drift);
        "on": also after a flat field (what a flat leaves, e.g. scattered light), still only
        when the field moved; "off": never. Without it, on a night without flats, stars
        drifting across 13% of vignetting are classed variable.
    target_photometry : bool
        Choose the target's aperture and comparison stars on the data
        (`lcdask.target_photometry`): its ``rel_flux`` becomes the chosen one when a
        cross-validation says it is less scattered than the run-wide ensemble's (run.json's
        ``target_photometry`` says what was chosen and why). False: the run-wide ``rel_flux``.
    """

    forced: bool = True
    forced_min_detections: int = 3
    max_rate_arcsec_h: float = 600.0
    star_flat: str = "auto"
    target_photometry: bool = True

    def __post_init__(self) -> None:
        if self.star_flat not in STAR_FLAT_MODES:
            raise ValueError(
                f"star_flat must be one of {', '.join(map(repr, STAR_FLAT_MODES))}, "
                f"not {self.star_flat!r}"
            )
        if not self.max_rate_arcsec_h > 0:
            raise ValueError(f"max_rate_arcsec_h must be positive, not {self.max_rate_arcsec_h!r}")
        if self.forced_min_detections < 1:
            raise ValueError(
                f"forced_min_detections must be 1 or more, not {self.forced_min_detections!r}"
            )


@dataclass(frozen=True)
class Level2Config:
    """Options of detection, plate solving and photometric calibration.

    Attributes
    ----------
    threshold_sigma : float
        Detection threshold in units of the background RMS.
    min_area : int
        Minimum connected pixels of a detection.
    backend : {"sep", "photutils"}
        Detection library.
    band : str
        Catalog band the zero point refers to (a column of the reference catalog), or "auto":
        the band of the light frames' FILTER (`lcdask.catalogs.filter_band`: SDSS u g r i z,
        Johnson-Cousins B V R I; r for clear or unknown filters; the catalog's first band when
        it lacks that one).
    match_radius_arcsec : float
        Radius for matching detections to catalog stars after plate solving.
    fit_slope : bool
        Fit the slope of catalog against instrumental magnitude (else fixed to 1).
    max_shift_px : float
        Largest drift the fast refinement searches; when it finds none, the whole field is
        searched (`lcdask.astrometry.refine_wcs`, any drift that leaves stars in common).
    flux : {"aperture", "psf", "detection"}
        The flux the light curves and zero points use: the aperture-corrected 1.5 FWHM
        aperture of the Level 3 photometry (cosmic rays cleaned, sky subtracted), its PSF flux
        with the ePSF of the co-add, or the detection's own 2.5 FWHM aperture
        (fastest; 2-3% of the flux outside it).
    coadd_frames : int
        Solved frames co-added into ``coadd.fits`` (spread evenly over the night, so that
        movers and cosmic rays are rejected); its ePSF is the PSF model of every frame,
        scaled to each frame's FWHM. 0: no co-add, the ePSF comes from the reference frame.
        20 by default: on a simulated night of 40 frames of 2048^2 a co-add of 20 gave the
        same light curves as one of all 40 (ePSF within 0.8% of its peak, zero points within
        0.0005 mag, stable stars' scatter equal) at half the co-add's cost, which grows with
        the frames; more make a deeper ``coadd.fits``.
    coadd_method : {"median", "sigma_clip"}
        How the co-add combines its frames pixel by pixel: median, or a mean after clipping
        at 3 sigma about the median (deeper, as robust with 5 frames or more).
    cosmics : {"auto", "fast", "psf", "tiles", "none"}
        Cosmic-ray detection before photometry: "auto" takes the fast L.A.Cosmic for frames
        with FWHM of 2 px or more and the PSF test ("psf", `lcdask.cosmics`: a pixel sharper
        than the run's ePSF allows at any sub-pixel phase) for undersampled ones, where
        L.A.Cosmic's sharpness test cannot tell cosmic rays from star cores (on the Lowell
        frames, FWHM 1.5-1.8 px, it and astroscrappy flagged 6,500-10,000 pixels of a 300 s
        frame; the PSF test 820-1,770, by eye cosmic rays). Without an ePSF (the reference
        frame's own, built before it) "psf" does nothing. "tiles" runs astroscrappy around
        candidates whatever the FWHM.
    """

    threshold_sigma: float = 3.0
    min_area: int = 5
    backend: str = "sep"
    band: str = "auto"
    match_radius_arcsec: float = 2.0
    fit_slope: bool = True
    max_shift_px: float = 60.0
    flux: str = "aperture"
    cosmics: str = "auto"
    coadd_frames: int = 20
    coadd_method: str = "sigma_clip"

    def __post_init__(self) -> None:
        if self.backend not in ("sep", "photutils"):
            raise ValueError(f"backend must be 'sep' or 'photutils', not {self.backend!r}")
        if self.flux not in ("aperture", "psf", "detection"):
            raise ValueError(f"flux must be 'aperture', 'psf' or 'detection', not {self.flux!r}")
        if self.cosmics not in ("auto", "fast", "psf", "tiles", "none"):
            raise ValueError(
                f"cosmics must be 'auto', 'fast', 'psf', 'tiles' or 'none', not {self.cosmics!r}"
            )
        if self.coadd_method not in ("median", "sigma_clip"):
            raise ValueError(
                f"coadd_method must be 'median' or 'sigma_clip', not {self.coadd_method!r}"
            )
        if not self.coadd_frames >= 0:
            raise ValueError(f"coadd_frames must be 0 or more, not {self.coadd_frames!r}")
        for name in ("threshold_sigma", "match_radius_arcsec", "max_shift_px"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")


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
        if self.solver != "auto":
            # the registry is imported only to check a named solver (it imports every solver)
            from lcdask.astrometry import PLATE_SOLVERS

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


@dataclass(frozen=True)
class ClusterConfig:
    """Where the work runs.

    Attributes
    ----------
    kind : {"local", "scheduler", "slurm", "pbs"}
        A LocalCluster on this machine, an existing scheduler, or a dask-jobqueue batch cluster.
    workers : int
        Worker processes (local) or jobs (slurm/pbs); 0 means one per core (local).
    memory_limit : str
        Memory limit per worker, e.g. "4GB", or "auto" to share the machine's memory.
    scheduler : str
        Address of the running scheduler when kind is "scheduler" (tcp://host:port).
    queue : str
        Batch queue or partition (slurm/pbs).
    account : str
        Batch account or project (slurm/pbs).
    cores : int
        Cores per batch job (slurm/pbs); each job runs one single-threaded worker per core.
    job_memory : str
        Memory per batch job (slurm/pbs).
    walltime : str
        Wall-time limit per batch job, HH:MM:SS (slurm/pbs).
    """

    kind: str = "local"
    workers: int = 0
    memory_limit: str = "auto"
    scheduler: str = ""
    queue: str = ""
    account: str = ""
    cores: int = 1
    job_memory: str = "4GB"
    walltime: str = "01:00:00"

    def __post_init__(self) -> None:
        _choice("cluster.kind", self.kind, ("local", "scheduler", "slurm", "pbs"))
        if self.workers < 0:
            raise ConfigError(f"cluster.workers must be 0 or more, not {self.workers}")
        if self.kind == "scheduler" and not self.scheduler:
            raise ConfigError('cluster.scheduler: give the address when cluster.kind = "scheduler"')
        if not re.fullmatch(r"\d+:\d\d:\d\d", self.walltime):
            raise ConfigError(f"cluster.walltime must be HH:MM:SS, not {self.walltime!r}")


@dataclass(frozen=True)
class CatalogConfig:
    """The reference catalog for plate solving and photometric calibration.

    Attributes
    ----------
    source : {"auto", "file", "sdss", "gaia", "none"}
        "auto" takes the file when one is given, else SDSS where it has stars in the field and
        the band, else Gaia DR3 with G/BP/RP transformed to g r i V R I (Riello et al. 2021);
        queries through astroquery, cached. "sdss" and "gaia" query only that catalog;
        "none" skips photometric calibration (relative fluxes only).
    path : str
        A local catalog (FITS, ECSV, CSV, Parquet) when source is "file" or "auto".
    columns : dict
        Mapping of lcdask names to the file's columns, e.g. {ra = "RAJ2000", r = "rmag"}.
    cache_dir : str
        Where queried catalogs are cached ("" for RUN/catalog-cache).
    offline : bool
        Never reach the network: use the cache or the file only.
    """

    source: str = "auto"
    path: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    cache_dir: str = ""
    offline: bool = False

    def __post_init__(self) -> None:
        _choice("catalog.source", self.source, ("auto", "file", "sdss", "gaia", "none"))
        if self.source == "file" and not self.path:
            raise ConfigError('catalog.path: give the file when catalog.source = "file"')


DETREND_TERMS = ("airmass", "x", "y", "fwhm", "sky", "time", "time2")
"""Terms a transit fit's detrending may use (``[transit] detrend``): per-frame airmass, the
target's x and y on the detector, the frame's FWHM and sky, and a time polynomial (``time2`` is
the square)."""


@dataclass(frozen=True)
class TransitConfig:
    """Options of the transit fit (``lcdask transit RUN``); the command line overrides them.

    Attributes
    ----------
    planet : str
        The planet's name in the NASA Exoplanet Archive (e.g. "XO-1 b"): its period, reference
        mid-time, Rp/Rs, a/Rs and inclination are read from the archive's pscomppars table
        (cached in the run's catalog cache); the options below override them one by one.
    t0 : float or None
        A reference mid-transit time, BJD_TDB, of any epoch: the ephemeris that predicts the
        night's mid-time (O-C is measured against it).
    t0_err : float or None
        Its error (days).
    period_d : float or None
        Orbital period (days).
    period_err : float or None
        Its error (days).
    rp_rs : float or None
        Planet-to-star radius ratio: the start of the fit, or its value when the night has no
        out-of-transit baseline.
    a_rs : float or None
        Semi-major axis in stellar radii: the start, or the value when ingress or egress is
        missing.
    inc_deg : float or None
        Inclination (degrees): as a_rs.
    u1 : float or None
        First quadratic limb-darkening coefficient in the frames' band (u1 and u2 fixed when
        both are given).
    u2 : float or None
        Second quadratic limb-darkening coefficient.
    ecc : float
        Eccentricity (fixed).
    w_deg : float
        Argument of periastron, degrees (fixed).
    fit_limb_darkening : bool
        Fit the limb darkening (Kipping 2013's q1, q2 with uniform priors on [0, 1]) even when
        u1 and u2 are given; without u1 and u2 it is always fitted.
    detrend : str
        The detrending model multiplying the transit (linear in ln flux): "auto" takes every
        linear term available (time, airmass, x, y, fwhm, sky; one that follows the others is
        dropped) and adds time2 when it lowers the Bayesian information criterion by more
        than 2; "bic" starts from time and adds any term while the BIC falls by more than 2
        (fewer terms, errors that ignore the terms left out); a comma-separated list imposes
        the terms (e.g. "airmass,time"); "none" keeps only the normalisation.
    clip_sigma : float
        Points whose residual from the fitted model exceeds this many robust standard
        deviations are left out of the fit (kept in the outputs, marked "clipped").
    walkers : int
        emcee walkers (raised to twice the free parameters plus two when fewer).
    max_steps : int
        The chain stops at this many steps even if it has not converged (said in the result).
    min_steps : int
        The chain runs at least this many steps.
    autocorr_factor : float
        Converged when the chain is longer than this many autocorrelation times of every
        parameter (emcee's advice: 50) and the estimate changed by less than 5% since the last
        check.
    seed : int
        Seed of the sampler (the same seed gives the same chain).
    obscode : str
        AAVSO observer code for the Exoplanet Database report (#OBSCODE).
    offline : bool
        Never reach the network: the planet must be in the cache, or given by the options.
    """

    planet: str = ""
    t0: float | None = None
    t0_err: float | None = None
    period_d: float | None = None
    period_err: float | None = None
    rp_rs: float | None = None
    a_rs: float | None = None
    inc_deg: float | None = None
    u1: float | None = None
    u2: float | None = None
    ecc: float = 0.0
    w_deg: float = 90.0
    fit_limb_darkening: bool = False
    detrend: str = "auto"
    clip_sigma: float = 4.0
    walkers: int = 32
    max_steps: int = 20000
    min_steps: int = 2000
    autocorr_factor: float = 50.0
    seed: int = 0
    obscode: str = ""
    offline: bool = False

    def __post_init__(self) -> None:
        terms = [t.strip() for t in self.detrend.split(",") if t.strip()]
        if self.detrend not in ("auto", "bic", "none") and (
            not terms or any(t not in DETREND_TERMS for t in terms)
        ):
            raise ConfigError(
                f"transit.detrend must be 'auto', 'bic', 'none' or a comma-separated list of "
                f"{', '.join(DETREND_TERMS)}, not {self.detrend!r}"
            )
        for name in ("clip_sigma", "autocorr_factor", "period_d", "rp_rs", "a_rs"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"transit.{name} must be a positive number, not {value!r}")
        for name in ("t0_err", "period_err"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"transit.{name} must be 0 or more, not {value!r}")
        if self.inc_deg is not None and not 0 < self.inc_deg <= 90:
            raise ConfigError(f"transit.inc_deg must be in (0, 90], not {self.inc_deg!r}")
        if (self.u1 is None) != (self.u2 is None):
            raise ConfigError("transit.u1 and transit.u2: give both limb-darkening coefficients")
        if not 0 <= self.ecc < 1:
            raise ConfigError(f"transit.ecc must be in [0, 1), not {self.ecc!r}")
        if self.walkers < 4:
            raise ConfigError(f"transit.walkers must be 4 or more, not {self.walkers}")
        if not 100 <= self.min_steps <= self.max_steps:
            raise ConfigError(
                f"transit.min_steps ({self.min_steps}) must be 100 or more and at most "
                f"transit.max_steps ({self.max_steps})"
            )


@dataclass(frozen=True)
class Config:
    """The whole run's configuration: one section per stage."""

    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    level2: Level2Config = field(default_factory=Level2Config)
    astrometry: AstrometryConfig = field(default_factory=AstrometryConfig)
    lightcurves: LightCurvesConfig = field(default_factory=LightCurvesConfig)
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    transit: TransitConfig = field(default_factory=TransitConfig)

    def as_dict(self) -> dict[str, Any]:
        """The configuration as plain data (for run.json; an astrometry.net API key left out)."""
        data = dataclasses.asdict(self)
        if data["astrometry"]["api_key"]:
            data["astrometry"]["api_key"] = "(given)"
        return data


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, allowed))}, not {value!r}")


def _check_type(name: str, value: Any, annotation: Any) -> Any:
    """Return value converted to the annotated type, or raise ConfigError naming the field."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_type(name, value, option)
            except ConfigError:
                pass
        raise ConfigError(f"{name} must be {_type_name(annotation)}, not {value!r}")
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a table (dict), not {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, str, bool) and type(value) is annotation:
        return value
    raise ConfigError(f"{name} must be {_type_name(annotation)}, not {value!r}")


def _type_name(annotation: Any) -> str:
    args = typing.get_args(annotation)
    if args:
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        annotation, getattr(annotation, "__name__", str(annotation))
    )


REMOVED_OPTIONS = {
    ("calibration", "rows_per_chunk"): (
        "the calibration sizes its blocks of rows by memory "
        "(lcdask.stages.calibrate.calibrate_cube)"
    ),
}
"""Options of earlier versions that no longer do anything: a file that still sets one loads,
with a warning naming it and why."""


def _build_section(section: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name in [n for n in values if (section, n) in REMOVED_OPTIONS]:
        why = REMOVED_OPTIONS[(section, name)]
        warnings.warn(
            f"[{section}] {name} is no longer an option and is ignored: {why}",
            UserWarning,
            stacklevel=3,
        )
        values = {k: v for k, v in values.items() if k != name}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"[{section}] has no option {', '.join(map(repr, unknown))}; "
            f"the options are {', '.join(sorted(known))}"
        )
    kwargs = {k: _check_type(f"{section}.{k}", v, hints[k]) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        message = str(exc)
        raise ConfigError(message if section in message else f"[{section}] {message}") from exc


def load_config(path: str | Path | None = None, **overrides: dict[str, Any]) -> Config:
    """Read and validate a TOML configuration; missing fields take their defaults.

    Parameters
    ----------
    path : str or Path, optional
        The TOML file; defaults only when None.
    **overrides : dict
        Per section, values that take precedence over the file (the command line's options).

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        For an unknown section or option, a value of the wrong type, or a value out of range;
        the message names the field.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    for section, values in overrides.items():
        data.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    sections = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ConfigError(
            f"unknown section(s) {', '.join(map(repr, unknown))}; "
            f"the sections are {', '.join(sections)}"
        )
    built = {}
    for name in sections:
        values = data.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table, not {values!r}")
        built[name] = _build_section(name, typing.get_type_hints(Config)[name], values)
    return Config(**built)


def _attribute_docs(cls: type) -> dict[str, str]:
    """The one-paragraph descriptions of a dataclass's numpydoc "Attributes" section."""
    doc = cls.__doc__ or ""
    match = re.search(r"Attributes\n\s*-+\n(.*?)(\n\s*\n\S|\Z)", doc, re.S)
    docs: dict[str, str] = {}
    if not match:
        return docs
    current = None
    for line in match.group(1).splitlines():
        head = re.match(r"\s{4}(\w+)\s*:", line)
        if head:
            current = head.group(1)
            docs[current] = ""
        elif current and line.strip():
            docs[current] = (docs[current] + " " + line.strip()).strip()
    return docs


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def default_toml() -> str:
    """The default configuration as a commented TOML file (what ``lcdask config`` prints).

    Returns
    -------
    str
        Every section and option with its default value and description; options whose
        default is "none" (None) are shown commented out.
    """
    lines = [
        "# lcdask configuration: every option below shows its default.",
        "# Keep only what you change; pass the file with `lcdask run ... --config FILE`.",
    ]
    defaults = Config()
    for section in dataclasses.fields(Config):
        value = getattr(defaults, section.name)
        lines += ["", f"[{section.name}]"]
        docs = _attribute_docs(type(value))
        for option in dataclasses.fields(value):
            text = docs.get(option.name, "")
            for chunk in _wrap(text, 96):
                lines.append(f"# {chunk}")
            current = getattr(value, option.name)
            prefix = "# " if current is None else ""
            shown = '""' if current is None else _toml_value(current)
            lines.append(f"{prefix}{option.name} = {shown}")
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines
