"""Writing the simulated night: camera-like FITS headers and atomic file writes.

Every file is written to a temporary name in its directory and renamed into place (``os.replace``),
so a crash never leaves a half-written file under its final name.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.coordinates import Angle
from astropy.io import fits

from lcdask.simulate.config import SimConfig

IMAGETYP = {
    "light": "Light Frame",
    "dark": "Dark Frame",
    "darkflat": "Dark Frame",
    "flat": "Flat Field",
    "bias": "Bias Frame",
}


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_fits_atomic(path: Path, data: np.ndarray, header: fits.Header) -> None:
    """Write a primary-HDU FITS file atomically.

    ``uint16`` data are stored as BITPIX 16 with BZERO 32768 and BSCALE 1 (as cameras write them);
    float data as BITPIX -64.
    """
    hdu = fits.PrimaryHDU(data=data, header=header)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            hdu.writeto(fh)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_parquet_atomic(path: Path, table: pd.DataFrame) -> None:
    """Write a DataFrame to Parquet atomically (no index)."""
    tmp = _tmp_path(path)
    try:
        table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file atomically."""
    tmp = _tmp_path(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _sexagesimal(value_deg: float, *, hours: bool, sign: bool) -> str:
    angle = Angle(value_deg / 15.0 if hours else value_deg, unit="hourangle" if hours else "deg")
    return angle.to_string(sep=" ", precision=2, pad=True, alwayssign=sign)


def local_date_obs(date_obs_utc: str, offset_h: float, fmt: str = "colon") -> str:
    """An ISO UTC time as the local clock with its zone offset as a suffix.

    ``local_date_obs("2025-07-05T06:14:05.123", -7)`` is ``"2025-07-04T23:14:05.123-07:00"``
    (``fmt="compact"``: ``-0700``).
    """
    utc = dt.datetime.fromisoformat(date_obs_utc)
    local = utc + dt.timedelta(hours=offset_h)
    minutes = round(abs(offset_h) * 60)
    sign = "-" if offset_h < 0 else "+"
    sep = ":" if fmt == "colon" else ""
    zone = f"{sign}{minutes // 60:02d}{sep}{minutes % 60:02d}"
    return f"{local.isoformat(timespec='milliseconds')}{zone}"


def base_header(cfg: SimConfig, kind: str, date_obs: str, exptime_s: float) -> fits.Header:
    """Keys every frame carries, in the style MaxIm DL / SBIG cameras write them.

    The small-telescope options of `SimConfig` (``imagetyp_key``, ``scale_keyword``,
    ``date_obs_utc_offset_h``, ``longitude_convention``) change what is written.
    """
    h = fits.Header()
    if cfg.date_obs_utc_offset_h:
        h["DATE-OBS"] = (
            local_date_obs(date_obs, cfg.date_obs_utc_offset_h, cfg.date_offset_format),
            "start of exposure",
        )
    else:
        h["DATE-OBS"] = (date_obs, "UTC of start of exposure (ISO 8601)")
    h["EXPTIME"] = (float(exptime_s), "exposure time [s]")
    h["EXPOSURE"] = (float(exptime_s), "exposure time [s]")
    if cfg.imagetyp_key:
        h["IMAGETYP"] = (IMAGETYP[kind], "type of image")
    h["XBINNING"] = (1, "binning factor in width")
    h["YBINNING"] = (1, "binning factor in height")
    if cfg.scale_keyword == "PIXSCALE":
        h["PIXSCALE"] = (float(cfg.pixel_scale_arcsec), "image scale [arcsec/pixel]")
    else:
        h["XPIXSZ"] = (float(cfg.pixel_size_um), "pixel width in microns")
        h["YPIXSZ"] = (float(cfg.pixel_size_um), "pixel height in microns")
    if cfg.scale_keyword == "FOCALLEN":
        focal_mm = 206.264806 * cfg.pixel_size_um / cfg.pixel_scale_arcsec
        h["FOCALLEN"] = (round(focal_mm, 1), "focal length [mm]")
    h["CCD-TEMP"] = (float(cfg.ccd_temp_c), "CCD temperature [C]")
    h["SET-TEMP"] = (float(cfg.ccd_temp_c), "cooler set point [C]")
    if cfg.gain_keys:
        h["GAIN"] = (float(cfg.gain_e_adu), "electrons per ADU")
        h["EGAIN"] = (float(cfg.gain_e_adu), "electrons per ADU")
        h["RDNOISE"] = (float(cfg.read_noise_e), "read noise [e-]")
    h["SATURATE"] = (float(cfg.saturate_adu), "linearity limit [ADU]")
    h["OBSERVAT"] = (cfg.observatory, "observatory")
    h["SITELAT"] = (_sexagesimal(cfg.site_lat_deg, hours=False, sign=True), "site latitude [deg]")
    if cfg.longitude_convention == "east":
        h["SITELONG"] = (
            _sexagesimal(cfg.site_lon_deg, hours=False, sign=True),
            "site longitude [deg], east positive",
        )
    elif cfg.longitude_convention == "west-comment":
        h["SITELONG"] = (
            _sexagesimal(-cfg.site_lon_deg, hours=False, sign=False),
            "site longitude [deg], west positive",
        )
    else:  # TheSkyX: west positive, said nowhere but in SWCREATE
        h["SITELONG"] = (_sexagesimal(-cfg.site_lon_deg, hours=False, sign=False), "")
    h["SITEELEV"] = (float(cfg.site_elev_m), "site elevation [m]")
    h["TELESCOP"] = (cfg.telescope, "telescope")
    h["INSTRUME"] = ("Simulated CCD (lcdask)", "camera")
    if cfg.longitude_convention == "west-theskyx":
        h["SWCREATE"] = ("TheSkyX Professional Edition 10.5.0", "(lcdask.simulate)")
    else:
        h["SWCREATE"] = ("lcdask.simulate", "software that wrote the file")
    return h


def light_header(cfg: SimConfig, frame: pd.Series) -> fits.Header:
    """Header of a light frame: pointing (with its error), airmass, filter and the header WCS."""
    h = base_header(cfg, "light", str(frame["date_obs"]), float(frame["exptime_s"]))
    ra, dec = float(frame["header_crval1"]), float(frame["header_crval2"])
    h["FILTER"] = (cfg.filter_name, "filter")
    h["OBJECT"] = (cfg.object_name, "object name")
    if cfg.pointing_keys in ("both", "RA/DEC"):
        h["RA"] = (ra, "telescope RA of the frame centre [deg]")
        h["DEC"] = (dec, "telescope Dec of the frame centre [deg]")
    if cfg.pointing_keys in ("both", "OBJCTRA/OBJCTDEC"):
        h["OBJCTRA"] = (_sexagesimal(ra, hours=True, sign=False), "RA of the frame centre")
        h["OBJCTDEC"] = (_sexagesimal(dec, hours=False, sign=True), "Dec of the frame centre")
    h["AIRMASS"] = (float(frame["airmass"]), "air mass at mid-exposure")
    h["EQUINOX"] = (2000.0, "equinox of the coordinates")
    if not cfg.header_wcs:
        return h
    h["RADESYS"] = ("ICRS", "reference frame")
    h["CTYPE1"] = ("RA---TAN", "gnomonic projection")
    h["CTYPE2"] = ("DEC--TAN", "gnomonic projection")
    h["CUNIT1"] = ("deg", "")
    h["CUNIT2"] = ("deg", "")
    h["CRVAL1"] = (ra, "from the mount's pointing (not plate solved)")
    h["CRVAL2"] = (dec, "from the mount's pointing (not plate solved)")
    h["CRPIX1"] = (float(frame["crpix1"]), "")
    h["CRPIX2"] = (float(frame["crpix2"]), "")
    h["CD1_1"] = (float(frame["header_cd1_1"]), "")
    h["CD1_2"] = (float(frame["header_cd1_2"]), "")
    h["CD2_1"] = (float(frame["header_cd2_1"]), "")
    h["CD2_2"] = (float(frame["header_cd2_2"]), "")
    return h


def calib_header(cfg: SimConfig, row: pd.Series) -> fits.Header:
    """Header of a bias, dark or flat frame."""
    kind = str(row["kind"])
    h = base_header(cfg, kind, str(row["date_obs"]), float(row["exptime_s"]))
    if kind == "flat":
        h["FILTER"] = (cfg.filter_name, "filter")
        h["OBJECT"] = ("Twilight flat", "object name")
    else:
        h["OBJECT"] = ({"bias": "Bias", "dark": "Dark", "darkflat": "Dark"}[kind], "object name")
    return h


def truth_map_header(what: str, unit: str) -> fits.Header:
    """Header of a truth map (``flat.fits``, ``dark_current.fits``, ``bias.fits``)."""
    h = fits.Header()
    h["TRUTH"] = (what, "simulation truth")
    h["BUNIT"] = (unit, "")
    return h
