"""The configuration of a simulated night: one frozen dataclass, validated once."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines a simulated night; every field has a default.

    The same configuration and seed always give the same files, byte for byte.

    Attributes
    ----------
    n_frames, size, seed
        Number of light frames, side of the square detector in pixels, random seed.
    ra_deg, dec_deg
        Commanded field centre (ICRS, degrees).
    pixel_scale_arcsec
        Pixel scale (0.3-10 arcsec/px).
    rotation_deg
        Position angle of the detector y axis, east of north; ``None`` draws it uniformly in
        0-360 from the seed.
    flip
        Mirror the x axis (parity flip, as after a meridian flip on some optical trains).
    pointing_error_arcmin
        Largest error of the header pointing (CRVAL, RA/DEC keys); the night's error is drawn
        between 20% and 100% of it (capped at a quarter of the field width), in a random
        direction, fixed for the night; the drift of the telescope adds to it.
    rotation_error_deg
        Largest error of the header rotation (drawn in +-this).
    drift_px_total, jitter_px
        Smooth drift of the stars on the detector over the whole sequence (px), and the rms of
        the frame-to-frame guiding jitter (px).
    site_lat_deg, site_lon_deg, site_elev_m, observatory, telescope
        Site (longitude east positive) and the TELESCOP name.
    start_utc
        ISO UTC start of the first light exposure; ``""`` centres the sequence on the field's
        meridian transit nearest to ``night_utc``.
    night_utc
        Reference time of the night used when ``start_utc`` is empty.
    exptime_s, readout_s, filter_name, object_name
        Light exposure, dead time between exposures (readout, download), filter and object names.
    zero_point_zenith, slope, extinction_k, cloud_mag
        Photometric truth: zero point at airmass 1 under a clear sky (the catalog mag giving
        1 ADU/s), slope of catalog mag against instrumental mag, extinction coefficient
        (mag/airmass), largest extra extinction of the slowly varying thin clouds (mag); per frame
        ``zero_point = zero_point_zenith - extinction_k * (airmass - 1) - cloud(t)``.
    seeing_fwhm_arcsec, seeing_variation, psf_beta, psf_ellipticity
        Zenith seeing FWHM, relative amplitude of its slow wandering, Moffat beta, ellipticity
        ``1 - b/a`` of the PSF.
    sky_mag_arcsec2, sky_gradient
        Dark-sky brightness at the zenith (catalog mag per arcsec^2) and the fractional change of
        the sky across the frame from its linear gradient.
    mag_bright, mag_faint, stars_per_deg2_r20
        Magnitude range of the field stars and their cumulative surface density brighter than
        r = 20 (the luminosity function is dN/dm ~ 10^(0.3 m)).
    n_close_pairs, n_saturated_stars
        Close pairs (separation 1-3 FWHM) for blend tests; extra very bright stars (r 9-11.5)
        inside the frame so that every frame has saturated stars.
    target_mag, transit_depth, transit_duration_h
        The target's catalog mag and its planetary transit (fractional depth, total duration;
        shortened to half the sequence when the sequence is shorter than twice the duration).
    transit_shape
        ``"trapezoid"`` (the default): a trapezoid of ``transit_depth`` and
        ``transit_duration_h`` with ingress and egress 12% of the duration each;
        ``"limb-darkened"``: Mandel & Agol's quadratically limb-darkened transit (batman,
        `lcdask.transit.model.transit_model`) of ``transit_rp_rs``, ``transit_a_rs``,
        ``transit_b``, ``transit_u1``, ``transit_u2`` and ``transit_period_d`` (the duration
        follows from them; ``transit_duration_h`` is not used), its truth in
        ``truth/transit.json`` (`lcdask.simulate.variability.transit_truth`).
    transit_rp_rs, transit_a_rs, transit_b, transit_u1, transit_u2
        The limb-darkened transit's Rp/Rs (``None``: ``sqrt(transit_depth)``), a/Rs, impact
        parameter and quadratic limb darkening in the frames' band.
    transit_period_d
        The orbital period (days); ``None``: drawn in 2-5 d from the seed (as always).
    transit_offset_h
        Mid-transit minus the middle of the sequence (hours; either shape): a transit seen in
        part (ingress only, egress only) or missed altogether.
    eclipse_depth, pulsator_amplitude
        Primary eclipse depth of the eclipsing binary, semi-amplitude of the pulsator (fractions
        of the flux).
    variable_mag_shift
        Added to the eclipsing binary's (r 14-15.5) and the pulsator's (r 13.5-15.5)
        magnitudes: negative for skies where those are too faint to measure.
    n_slow_movers, n_fast_movers
        Moving objects that move 1-3 FWHM over the sequence, and 30-300 px over the sequence.
    mover_mag_bright, mover_mag_faint
        The movers' magnitudes are drawn uniformly between these two (catalog r).
    gain_e_adu, read_noise_e, bias_adu, bias_column_rms_adu
        Detector gain, read noise, bias level and rms of its column pattern.
    dark_current_e_s, ccd_temp_c
        Dark current of ordinary pixels and the (header) CCD temperature.
    hot_pixel_fraction, n_hot_columns, dead_pixel_fraction, n_dead_columns
        Bad pixels: fraction of hot pixels (1-500 e-/s, log-uniform), hot columns (1-5 e-/s),
        fraction of dead pixels (response 0-0.3), dead (low-response) columns.
    vignetting, n_dust, prnu
        Flat field: fractional fall-off at the corners, number of dust donuts, pixel response
        non-uniformity (rms).
    full_well_e, saturate_adu, pixel_size_um
        Full well (electrons), the SATURATE header value (linearity limit, ADU; the ADC clips
        at 65535), physical pixel size (for the cosmic-ray rate).
    cosmic_rate_cm2_s
        Cosmic-ray events per cm^2 of detector per second of exposure.
    n_darks, n_darkflats, n_flats, n_bias, flat_exptime_s, flat_level_adu
        Calibration frames: counts, flat exposure and the mean level of the twilight flats.
    refcat_bad_fraction
        Fraction of reference-catalog entries that are wrong (magnitude off by 0.3-2 mag) or
        blends of two close stars.
    sky_catalog, index_dir
        ``"synthetic"``: every star drawn; ``"tycho2"``: every star of the astrometry.net index
        files in ``index_dir`` (``""``: the default folders of `lcdask.io.anindex`) over the
        field, at its real position with its VT magnitude as catalog r, plus synthetic stars
        from ``mag_bright`` to ``mag_faint`` (the real sky, so that the frames can be solved
        blind with those index files).
    target_ra_deg, target_dec_deg
        A real position for the target (``None``: drawn near the centre); a catalog star within
        3 arcsec of it is replaced by the target (with its magnitude).
    drift_centred
        The drift (and the re-pointing jump) is centred on the middle of the sequence, and the
        variables and movers are kept inside the frame over the whole drift.
    repoint_px, exptime2_s
        Re-pointing between two blocks: the stars jump by ``repoint_px`` px (random direction)
        at the middle frame; the second block's exposure is ``exptime2_s`` (0: ``exptime_s``).
    file_stem
        Light frames are ``{file_stem}_NNNN.fits``.
    imagetyp_key, header_wcs
        Write IMAGETYP; write the (mount-pointing) header WCS.
    gain_keys
        Write the gain and read noise (GAIN, EGAIN, RDNOISE); many small cameras' software
        writes neither.
    scale_keyword
        ``""``: XPIXSZ only (no scale in the header); ``"PIXSCALE"``: PIXSCALE (arcsec/px) only;
        ``"FOCALLEN"``: XPIXSZ (um) and FOCALLEN (mm).
    pointing_keys
        ``"both"``: RA/DEC in degrees and OBJCTRA/OBJCTDEC; ``"RA/DEC"`` or
        ``"OBJCTRA/OBJCTDEC"`` only.
    date_obs_utc_offset_h, date_offset_format
        Non-zero: DATE-OBS is the local clock with the zone offset as a suffix,
        ``-07:00`` (``"colon"``) or ``-0700`` (``"compact"``).
    longitude_convention
        ``"east"``: SITELONG east positive; ``"west-comment"``: west positive, its comment says
        so; ``"west-theskyx"``: west positive, written by TheSkyX (SWCREATE).
    """

    n_frames: int = 60
    size: int = 1024
    seed: int = 0
    # field and optics
    ra_deg: float = 150.0
    dec_deg: float = 20.0
    pixel_scale_arcsec: float = 1.0
    rotation_deg: float | None = None
    flip: bool = False
    pointing_error_arcmin: float = 3.0
    rotation_error_deg: float = 0.3
    drift_px_total: float = 20.0
    jitter_px: float = 0.3
    # site and time
    site_lat_deg: float = 31.96
    site_lon_deg: float = -111.60
    site_elev_m: float = 2096.0
    observatory: str = "lcdask simulated observatory"
    telescope: str = "Simulated 0.6m f/6.5 RC"
    start_utc: str = ""
    night_utc: str = "2026-03-15T06:00:00"
    exptime_s: float = 60.0
    readout_s: float = 10.0
    filter_name: str = "r"
    object_name: str = "SIM-TARGET"
    # atmosphere
    zero_point_zenith: float = 22.5
    slope: float = 1.0
    extinction_k: float = 0.12
    cloud_mag: float = 0.04
    seeing_fwhm_arcsec: float = 2.7
    seeing_variation: float = 0.2
    psf_beta: float = 3.0
    psf_ellipticity: float = 0.05
    sky_mag_arcsec2: float = 20.0
    sky_gradient: float = 0.06
    # stars
    mag_bright: float = 9.0
    mag_faint: float = 21.5
    stars_per_deg2_r20: float = 6000.0
    n_close_pairs: int = 3
    n_saturated_stars: int = 3
    # variables
    target_mag: float = 14.8
    transit_depth: float = 0.01
    transit_duration_h: float = 2.0
    transit_shape: str = "trapezoid"
    transit_rp_rs: float | None = None
    transit_a_rs: float = 10.0
    transit_b: float = 0.3
    transit_u1: float = 0.40
    transit_u2: float = 0.25
    transit_period_d: float | None = None
    transit_offset_h: float = 0.0
    eclipse_depth: float = 0.3
    pulsator_amplitude: float = 0.05
    variable_mag_shift: float = 0.0
    # moving objects
    n_slow_movers: int = 2
    n_fast_movers: int = 2
    mover_mag_bright: float = 15.5
    mover_mag_faint: float = 19.0
    # detector
    gain_e_adu: float = 1.5
    read_noise_e: float = 8.0
    bias_adu: float = 1000.0
    bias_column_rms_adu: float = 2.0
    dark_current_e_s: float = 0.02
    ccd_temp_c: float = -20.0
    hot_pixel_fraction: float = 0.0008
    n_hot_columns: int = 2
    dead_pixel_fraction: float = 0.0002
    n_dead_columns: int = 1
    vignetting: float = 0.15
    n_dust: int = 6
    prnu: float = 0.01
    full_well_e: float = 100000.0
    saturate_adu: float = 60000.0
    pixel_size_um: float = 9.0
    cosmic_rate_cm2_s: float = 0.05
    # calibration frames
    n_darks: int = 7
    n_darkflats: int = 5
    n_flats: int = 7
    n_bias: int = 9
    flat_exptime_s: float = 5.0
    flat_level_adu: float = 25000.0
    # reference catalog
    refcat_bad_fraction: float = 0.03
    # real sky and small-telescope traits (see lcdask.simulate.preset)
    sky_catalog: str = "synthetic"
    index_dir: str = ""
    target_ra_deg: float | None = None
    target_dec_deg: float | None = None
    drift_centred: bool = False
    repoint_px: float = 0.0
    exptime2_s: float = 0.0
    file_stem: str = "light"
    imagetyp_key: bool = True
    header_wcs: bool = True
    gain_keys: bool = True
    scale_keyword: str = ""
    pointing_keys: str = "both"
    date_obs_utc_offset_h: float = 0.0
    date_offset_format: str = "colon"
    longitude_convention: str = "east"

    def __post_init__(self) -> None:
        _check_range(self, "n_frames", 1, 1_000_000)
        _check_range(self, "seed", 0, 2**63 - 1)
        _check_range(self, "size", 64, 16384)
        _check_range(self, "pixel_scale_arcsec", 0.3, 10.0)
        _check_range(self, "dec_deg", -89.0, 89.0)
        _check_range(self, "site_lat_deg", -90.0, 90.0)
        _check_range(self, "exptime_s", 0.001, 36000.0)
        _check_range(self, "readout_s", 0.0, 3600.0)
        _check_range(self, "slope", 0.5, 2.0)
        _check_range(self, "psf_beta", 1.5, 20.0)
        _check_range(self, "psf_ellipticity", 0.0, 0.5)
        _check_range(self, "seeing_fwhm_arcsec", 0.3, 20.0)
        _check_range(self, "seeing_variation", 0.0, 0.6)
        _check_range(self, "gain_e_adu", 0.05, 100.0)
        _check_range(self, "read_noise_e", 0.0, 1000.0)
        _check_range(self, "transit_depth", 0.0, 0.9)
        _check_range(self, "eclipse_depth", 0.0, 0.95)
        _check_range(self, "pulsator_amplitude", 0.0, 0.9)
        _check_range(self, "refcat_bad_fraction", 0.0, 0.5)
        _check_range(self, "vignetting", 0.0, 0.9)
        _check_range(self, "prnu", 0.0, 0.2)
        _check_range(self, "hot_pixel_fraction", 0.0, 0.1)
        _check_range(self, "dead_pixel_fraction", 0.0, 0.1)
        _check_range(self, "saturate_adu", 1000.0, 65535.0)
        _check_range(self, "date_obs_utc_offset_h", -14.0, 14.0)
        _check_range(self, "transit_a_rs", 1.5, 500.0)
        _check_range(self, "transit_b", 0.0, 1.5)
        _check_range(self, "transit_u1", -1.0, 2.0)
        _check_range(self, "transit_u2", -1.0, 2.0)
        _check_range(self, "transit_offset_h", -1000.0, 1000.0)
        if self.transit_rp_rs is not None:
            _check_range(self, "transit_rp_rs", 0.001, 0.9)
        if self.transit_period_d is not None:
            _check_range(self, "transit_period_d", 0.05, 10000.0)
        choices = {
            "transit_shape": ("trapezoid", "limb-darkened"),
            "sky_catalog": ("synthetic", "tycho2"),
            "scale_keyword": ("", "PIXSCALE", "FOCALLEN"),
            "pointing_keys": ("both", "RA/DEC", "OBJCTRA/OBJCTDEC"),
            "date_offset_format": ("colon", "compact"),
            "longitude_convention": ("east", "west-comment", "west-theskyx"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"SimConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if (self.target_ra_deg is None) != (self.target_dec_deg is None):
            raise ValueError("SimConfig.target_ra_deg and target_dec_deg must be given together")
        if not self.file_stem or "/" in self.file_stem:
            raise ValueError(
                f"SimConfig.file_stem must be a plain file-name stem, got {self.file_stem!r}"
            )
        if self.mag_faint <= self.mag_bright:
            raise ValueError(
                f"SimConfig.mag_faint ({self.mag_faint}) must be fainter (larger) than "
                f"mag_bright ({self.mag_bright})"
            )
        if self.mover_mag_faint < self.mover_mag_bright:
            raise ValueError(
                f"SimConfig.mover_mag_faint ({self.mover_mag_faint}) must not be brighter "
                f"(smaller) than mover_mag_bright ({self.mover_mag_bright})"
            )
        for name in (
            "n_close_pairs",
            "n_saturated_stars",
            "n_slow_movers",
            "n_fast_movers",
            "n_hot_columns",
            "n_dead_columns",
            "n_dust",
            "n_darks",
            "n_darkflats",
            "n_flats",
            "n_bias",
            "stars_per_deg2_r20",
            "drift_px_total",
            "jitter_px",
            "pointing_error_arcmin",
            "rotation_error_deg",
            "cloud_mag",
            "dark_current_e_s",
            "cosmic_rate_cm2_s",
            "repoint_px",
            "exptime2_s",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"SimConfig.{name} must be >= 0, got {getattr(self, name)!r}")

    def to_json(self) -> str:
        """The configuration as a JSON object (``SimConfig.from_json`` reads it back)."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SimConfig:
        """Read a configuration written by `to_json`; unknown keys are an error."""
        data: dict[str, Any] = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SimConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**data)


def _check_range(cfg: SimConfig, name: str, low: float, high: float) -> None:
    value = getattr(cfg, name)
    if not (low <= value <= high):
        raise ValueError(f"SimConfig.{name} must be within [{low}, {high}], got {value!r}")
