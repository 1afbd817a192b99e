"""Normalise the FITS headers of raw CCD frames from many cameras into one `FrameMeta`.

Every camera and acquisition program spells the same facts differently (``IMAGETYP='Light Frame'``
or ``OBSTYPE='OBJECT'``; ``DATE-OBS`` with the time, or a bare date plus ``UTCSTART``; ``EGAIN`` or
``AGAIN_01``; longitudes east- or west-positive). This module reads them all into plain numbers in
one convention, and records what it had to assume in ``FrameMeta.notes``. It is pure: no file IO,
no global state; `lcdask.io.fits` reads the headers and calls `normalize_header`.

Time-key precedence (`parse_time`), first match wins:

1. keys that already give the mid-exposure time: ``DATE-AVG``, ``DATE-MID`` (ISO), ``MJD-AVG``,
   ``MJD-MID``, ``MJDMID``, ``MIDTIMJD``, ``JD-MID``, ``JD-AVG``, ``MIDJD`` (a numeric value above
   2 400 000.5 is read as a JD, below as an MJD, whatever the key is called);
2. exposure-start keys, plus ``exptime_s / 2``: ``DATE-OBS`` / ``DATE_OBS`` / ``DATE-BEG``
   carrying a time of day; a date-only ``DATE-OBS`` plus a clock key (``TIME-OBS``,
   ``TIME_OBS``, ``UT``, ``UT-OBS``, ``UTSTART``, ``UT-START``, ``UTCSTART``, ``UTC-OBS``,
   ``UTC``, ``TIME-BEG``, ``STRTTIME``, ``START``); ``MJD-OBS``, ``MJD-BEG``, ``MJD_OBS``,
   ``MJDSTART``; ``JD-OBS``, ``JD``, ``JULDAT``, ``JD_OBS``, ``JD-BEG``, ``JDSTART``;
3. a local start time ``DATE-LOC`` (converted with the UTC offset);
4. exposure-end keys, minus ``exptime_s / 2``: ``DATE-END``, ``MJD-END``, ``JD-END``, a date plus
   ``UTCEND`` / ``UT-END`` / ``TIME-END`` / ``UTEND``.

Clock strings may be ``'2018-10-13T02:03:10.984'``, ``'2018-10-13 02:03:10.984Z'``, with any
number of fractional digits, an ISO offset (``+02:00``) or an odd suffix (``' UT'``), the old
``'dd/mm/yy'`` date (years 1950-2049), ``'2:03:05.1'`` or decimal hours. Times are local rather
than UTC when ``utc_offset_h`` is given, when ``TIMESYS`` says ``LOCAL``, when
``LOCALTIM = T``, when the ``DATE-OBS`` comment says "local", or for ``DATE-LOC``; the offset
(local = UTC + offset) is then ``utc_offset_h`` or the ``TIMEZONE`` / ``UTCOFFSET`` /
``UTC-OFFS`` / ``UTCOFFS`` / ``TZ`` key.
``TIMESYS`` of ``TT``, ``TAI``, ``GPS`` or ``TDB`` is converted to UTC.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import erfa
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from lcdask.errors import HeaderError

__all__ = [
    "FrameMeta",
    "UntypedFrameError",
    "airmass_of_altitude",
    "bjd_tdb",
    "classify_frame",
    "header_wcs",
    "normalize_header",
    "parse_section",
    "parse_time",
]

NAN = float("nan")


class UntypedFrameError(HeaderError):
    """A header has no frame-type key at all and the file and folder names tell nothing."""


_MJD_EPOCH_ORDINAL = dt.date(1858, 11, 17).toordinal()
_JD_MINUS_MJD = 2400000.5
# MJD 0 is 1858-11-17 and MJD 100000 is 2132-09-01: anything outside is not a plausible frame time.
_MJD_RANGE = (0.0, 100000.0)

FRAME_TYPES = ("light", "dark", "bias", "flat")

# ---------------------------------------------------------------------------------------------
# Keyword tables (the order is the precedence)
# ---------------------------------------------------------------------------------------------
_TYPE_KEYS = ("IMAGETYP", "OBSTYPE", "IMAGTYPE", "FRAMETYP", "FRAME", "EXPTYPE", "IMGTYPE")
_EXPTIME_KEYS = (
    ("EXPTIME", 1.0),
    ("EXPOSURE", 1.0),
    ("EXP_TIME", 1.0),
    ("EXPTIM", 1.0),
    ("XPOSURE", 1.0),
    ("ITIME", 1.0),
    ("TELAPSE", 1.0),
    ("EXPTIMEMS", 1e-3),
    ("EXPMS", 1e-3),
    ("EXPOINUS", 1e-6),
)
_FILTER_KEYS = ("FILTER", "FILTER1", "FILTNAME", "FILTERS", "FILT", "INSFLNAM")
_OBJECT_KEYS = ("OBJECT", "OBJNAME", "TARGET", "TARGNAME")
_RADEC_KEYS = (
    ("RA", "DEC"),
    ("OBJCTRA", "OBJCTDEC"),
    ("TELRA", "TELDEC"),
    ("RA_OBJ", "DEC_OBJ"),
    ("OBJRA", "OBJDEC"),
    ("RA_TARG", "DEC_TARG"),
    ("CAT-RA", "CAT-DEC"),
    ("OBSRA", "OBSDEC"),
    ("RA-D", "DEC-D"),
)
_GAIN_KEYS = ("EGAIN", "GAINE", "CCDGAIN", "GAIN")
_RDNOISE_KEYS = ("RDNOISE", "READNOIS", "RON", "READNOISE", "RDNOISE1", "ENOISE")
_SATURATE_KEYS = ("SATURATE", "SATLEVEL", "MAXLIN", "SATURATION", "DATAMAX")
_AIRMASS_KEYS = ("AIRMASS", "SECZ", "AIRM", "AMSTART")
_ALTITUDE_KEYS = ("OBJCTALT", "ALT-OBJ", "CENTALT", "TELALT", "ALT_OBJ")  # degrees
_LAT_KEYS = ("SITELAT", "LAT-OBS", "OBSLAT", "LATITUDE", "OBSGEO-B", "LAT")
_LON_KEYS = ("SITELONG", "LONG-OBS", "OBSLONG", "LONGITUD", "OBSGEO-L", "LONGITUDE", "LON")
_HEIGHT_KEYS = ("SITEELEV", "ALT-OBS", "OBSALT", "HEIGHT", "OBSGEO-H", "ELEVATIO", "ALTITUDE")
# FITS standard (WCS paper VII) keys for which east-positive is defined, not a local habit.
_EAST_POSITIVE_STANDARD = ("LONG-OBS", "OBSGEO-L")

_MID_KEYS_ISO = ("DATE-AVG", "DATE-MID")
_MID_KEYS_NUM = ("MJD-AVG", "MJD-MID", "MJDMID", "MIDTIMJD", "JD-MID", "JD-AVG", "MIDJD")
_START_KEYS_ISO = ("DATE-OBS", "DATE_OBS", "DATE-BEG")
_DATE_KEYS = ("DATE-OBS", "DATE_OBS", "DATE-BEG")
_START_CLOCK_KEYS = (
    "TIME-OBS",
    "TIME_OBS",
    "UT",
    "UT-OBS",
    "UTSTART",
    "UT-START",
    "UTCSTART",
    "UTC-OBS",
    "UTC",
    "TIME-BEG",
    "STRTTIME",
    "START",
)
_START_KEYS_NUM = (
    "MJD-OBS",
    "MJD-BEG",
    "MJD_OBS",
    "MJDSTART",
    "JD-OBS",
    "JD",
    "JULDAT",
    "JD_OBS",
    "JD-BEG",
    "JDSTART",
)
_END_KEYS_ISO = ("DATE-END",)
_END_CLOCK_KEYS = ("UTCEND", "UT-END", "TIME-END", "UTEND")
_END_KEYS_NUM = ("MJD-END", "JD-END")
_OFFSET_KEYS = ("TIMEZONE", "UTCOFFSET", "UTC-OFFS", "UTCOFFS", "TZ")
_LOCAL_TIMESYS = ("LOCAL", "LT", "LOCALTIME", "LOCAL TIME", "LMT")

# Values of the frame-type keys, lower case with non-letters removed, then matched in this order so
# that 'dark flat' is a dark and 'twilight flat' is not a light.
_TYPE_WORDS = (
    ("dark", ("dark",)),
    ("bias", ("bias", "zero", "offset")),
    ("flat", ("flat",)),
    ("light", ("light", "object", "science", "sci", "obj", "target", "astro")),
)
# Whole words in folder and file names (nearest first: file, its folder, the folder above ...).
_PATH_WORDS = {
    "bias": "bias",
    "biases": "bias",
    "biasframe": "bias",
    "zero": "bias",
    "zeros": "bias",
    "dark": "dark",
    "darks": "dark",
    "darkframe": "dark",
    "flat": "flat",
    "flats": "flat",
    "flatfield": "flat",
    "flatfields": "flat",
    "skyflat": "flat",
    "skyflats": "flat",
    "domeflat": "flat",
    "domeflats": "flat",
    "twflat": "flat",
    "light": "light",
    "lights": "light",
    "lightframe": "light",
    "science": "light",
    "sci": "light",
    "object": "light",
    "objects": "light",
}
# SBIG PICTTYPE index: 0 unknown, 1 light, 2 bias, 3 dark, 4 flat.
_PICTTYPE = {1: "light", 2: "bias", 3: "dark", 4: "flat"}


# ---------------------------------------------------------------------------------------------
# FrameMeta
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FrameMeta:
    """What the pipeline needs to know about one raw frame, in one set of units.

    Times are UTC MJD at mid-exposure, angles in degrees (longitude east-positive), heights in
    metres, gain in e-/ADU, read noise in e-, saturation in ADU. Missing numbers are NaN, missing
    strings ``""``, missing binning 1.
    """

    frame_type: str
    time_mjd: float = NAN
    time_source: str = ""
    exptime_s: float = NAN
    filter: str = ""
    object: str = ""
    ra_deg: float = NAN
    dec_deg: float = NAN
    airmass: float = NAN
    binning_x: int = 1
    binning_y: int = 1
    gain_e_adu: float = NAN
    rdnoise_e: float = NAN
    saturate_adu: float = NAN
    trimsec: str = ""
    biassec: str = ""
    site_lat_deg: float = NAN
    site_lon_deg: float = NAN
    site_height_m: float = NAN
    date_obs: str = ""
    wcs_header: str = ""
    notes: tuple[str, ...] = ()

    def as_row(self) -> dict[str, Any]:
        """Return the fields as a flat dict of plain Python scalars, for one pandas row.

        Returns
        -------
        dict
            One entry per field; ``notes`` joined by ``"; "``.
        """
        row: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "notes":
                value = "; ".join(value)
            elif isinstance(value, np.generic):
                value = value.item()
            row[field.name] = value
        return row


# ---------------------------------------------------------------------------------------------
# Small value readers
# ---------------------------------------------------------------------------------------------
def _raw(header: Mapping[str, Any], key: str) -> Any:
    """The value of ``key``, or None when absent, undefined or blank."""
    try:
        if key not in header:
            return None
        value = header[key]
    except (KeyError, ValueError, IndexError, fits.VerifyError):  # an unparsable card: no value
        return None
    if value is None or isinstance(value, fits.card.Undefined):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
    return value


def _comment(header: Any, key: str) -> str:
    try:
        return str(header.comments[key]).lower()
    except (AttributeError, KeyError, IndexError, ValueError, fits.VerifyError):
        return ""


def _to_float(value: Any) -> float | None:
    """A finite float from a number or a numeric string, else None (bools are not numbers)."""
    if value is None or isinstance(value, bool | np.bool_):
        return None
    if isinstance(value, str):
        text = value.strip().rstrip("sS").strip()
        text = text.replace("D", "E").replace("d", "e")
        try:
            number = float(text)
        except ValueError:
            return None
    else:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            return None
    return number if math.isfinite(number) else None


def _first_float(header: Mapping[str, Any], keys: Iterable[str]) -> tuple[float | None, str]:
    for key in keys:
        number = _to_float(_raw(header, key))
        if number is not None:
            return number, key
    return None, ""


def _first_str(header: Mapping[str, Any], keys: Iterable[str]) -> str:
    for key in keys:
        value = _raw(header, key)
        if value is not None and not isinstance(value, bool):
            return str(value).strip()
    return ""


_SEXA_SPLIT = re.compile(r"[\s:hHmMsSdD°'\"′″]+")


def _parse_angle(value: Any) -> tuple[float, bool] | None:
    """Parse a number or a (sexagesimal) string into ``(value, was_sexagesimal)``.

    The sign is taken from the text, so ``'-00 30 00'`` is -0.5. A trailing or leading N/E is
    positive, S/W negative. Returns None when the value cannot be read.
    """
    if value is None or isinstance(value, bool | np.bool_):
        return None
    if not isinstance(value, str):
        number = _to_float(value)
        return None if number is None else (number, False)
    text = value.strip().upper()
    sign = 1.0
    match = re.fullmatch(r"([NSEW])?\s*(.*?)\s*([NSEW])?", text)
    if match is None:  # pragma: no cover - the pattern matches any string
        return None
    hemisphere = match.group(1) or match.group(3)
    if match.group(3) == "S" and re.search(r"\d[HM]", text):
        # '04h12m12.4s': a seconds mark, not South
        hemisphere = None
        match = re.fullmatch(r"([NSEW])?\s*(.*?)", text)
        if match is None:  # pragma: no cover
            return None
    if match.group(1) and match.group(3):
        return None
    text = match.group(2)
    if hemisphere in ("S", "W"):
        sign = -1.0
    if text.startswith(("-", "+")):
        if text[0] == "-":
            sign = -sign
        text = text[1:].strip()
    if not text or text[0] in "+-":
        return None
    if re.fullmatch(r"\d+(\.\d*)?([eE][+-]?\d+)?|\.\d+", text):
        return sign * float(text), False
    parts = [p for p in _SEXA_SPLIT.split(text) if p]
    if not 1 <= len(parts) <= 3 or not re.search(r"[\s:hHmMdD°'\"]", text):
        return None
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        return None
    if any(not math.isfinite(n) or n < 0 for n in numbers):
        return None
    if any(n >= 60 for n in numbers[1:]):
        return None
    total = numbers[0] + sum(n / 60.0**i for i, n in enumerate(numbers[1:], start=1))
    return sign * total, True


def _parse_ra(value: Any, comment: str = "") -> float | None:
    """RA in degrees: sexagesimal strings and colon forms are hours, plain numbers degrees."""
    parsed = _parse_angle(value)
    if parsed is None:
        return None
    number, sexagesimal = parsed
    text = value.strip().lower() if isinstance(value, str) else ""
    in_degrees = "d" in text or "°" in text
    hours = (sexagesimal and not in_degrees) or (
        not sexagesimal and ("hour" in comment or "(h)" in comment) and 0 <= number < 24
    )
    degrees = number * 15.0 if hours else number
    if not 0.0 <= degrees < 360.0 + 1e-9:
        return None
    return degrees % 360.0


def _parse_dec(value: Any) -> float | None:
    parsed = _parse_angle(value)
    if parsed is None or not -90.0 <= parsed[0] <= 90.0:
        return None
    return parsed[0]


# ---------------------------------------------------------------------------------------------
# Frame type
# ---------------------------------------------------------------------------------------------
def _type_from_value(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    text = re.sub(r"[^a-z]", "", value.lower())
    if not text:
        return None
    for frame_type, words in _TYPE_WORDS:
        for word in words:
            if word in ("sci", "obj", "zero", "offset", "astro"):
                if text == word or (text.startswith(word) and text[len(word) :] in ("frame", "s")):
                    return frame_type
            elif word in text:
                return frame_type
    return None


def _type_from_path(path: str | Path) -> str | None:
    parts = list(Path(path).parts)[::-1][:4]
    for part in parts:
        words = [w for w in re.split(r"[^a-z]+", part.lower()) if w]
        for word in words:
            if word in _PATH_WORDS:
                return _PATH_WORDS[word]
    return None


def _exptime(header: Mapping[str, Any]) -> tuple[float | None, str, str]:
    """``(seconds, key, bad_value)``: the exposure time, or None and the unreadable value."""
    for key, scale in _EXPTIME_KEYS:
        value = _raw(header, key)
        if value is None:
            continue
        number = _to_float(value)
        if number is None or number < 0:
            return None, key, repr(value)
        return number * scale, key, ""
    return None, "", ""


def classify_frame(header: Mapping[str, Any], path: str | Path | None = None) -> str:
    """Tell whether a raw frame is a light, dark, bias or flat.

    The frame-type keys are tried in order (``IMAGETYP``, ``OBSTYPE``, ``IMAGTYPE``,
    ``FRAMETYP``, ``FRAME``, ``EXPTYPE``, ``IMGTYPE``), then SBIG's numeric ``PICTTYPE``, then the
    words of the file and folder names (``bias/``, ``darks/``, ``flat_0001.fits``, ``lights/`` ...),
    then ``OBJECT`` when it is just a calibration word ('bias', 'flat'). A "dark" with an exposure
    time of 0 is a bias.

    Parameters
    ----------
    header : astropy.io.fits.Header or mapping
        The primary header of the frame.
    path : str or Path, optional
        The file, whose folder and file names are the fallback.

    Returns
    -------
    str
        One of ``"light"``, ``"dark"``, ``"bias"``, ``"flat"``.

    Raises
    ------
    UntypedFrameError
        When no type key is in the header (none of the keys above, no ``PICTTYPE`` other than
        0) and the path tells nothing: `lcdask.stages.ingest` then looks at the exposure time,
        ``OBJECT`` and the pixels (`lcdask.stages.ingest.guess_untyped_frame`).
    HeaderError
        When a type key holds a value that is not a light, dark, bias or flat (``'COMPARISON'``).
    """
    frame_type = None
    for key in _TYPE_KEYS:
        frame_type = _type_from_value(_raw(header, key))
        if frame_type:
            break
    if frame_type is None:
        pict = _to_float(_raw(header, "PICTTYPE"))
        frame_type = _PICTTYPE.get(int(pict)) if pict is not None and pict.is_integer() else None
    if frame_type is None and path is not None:
        frame_type = _type_from_path(path)
    if frame_type is None:
        obj = _raw(header, "OBJECT")
        if isinstance(obj, str):
            words = re.split(r"[^a-z]+", obj.lower())
            calib = {
                _PATH_WORDS[w] for w in words if _PATH_WORDS.get(w) in ("bias", "dark", "flat")
            }
            if len(calib) == 1:
                frame_type = calib.pop()
    if frame_type is None:
        # FRAME often holds the coordinate frame ('FK5'), and PICTTYPE 0 means "unknown": neither
        # is a frame type that could not be read.
        keys = [k for k in (*_TYPE_KEYS, "PICTTYPE") if k != "FRAME"]
        found = [(k, _raw(header, k)) for k in keys if _raw(header, k) not in (None, 0)]
        where = f"{path}: " if path is not None else ""
        if found:
            key, value = found[0]
            raise HeaderError(
                f"{where}cannot tell the frame type: {key}={value!r} is not a light, dark, bias or "
                "flat"
            )
        raise UntypedFrameError(
            f"{where}cannot tell the frame type: no IMAGETYP (nor another type key) and no "
            "bias/dark/flat/light in the file or folder names"
        )
    if frame_type == "dark":
        exptime, _, _ = _exptime(header)
        if exptime == 0.0:
            frame_type = "bias"
    return frame_type


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
_SECTION_FULL = re.compile(r"^\s*\[\s*(\*|\d+\s*:\s*\d+)\s*,\s*(\*|\d+\s*:\s*\d+)\s*\]\s*$")


def parse_section(section: str) -> tuple[slice, slice]:
    """Turn a FITS/IRAF image section into numpy ``(y, x)`` slices.

    ``'[x1:x2,y1:y2]'`` is 1-based and inclusive on both ends, x (columns) first; the result is
    0-based, half-open and (row, column) ordered, so ``data[parse_section(s)]`` is the section.
    Reversed ranges (``'[100:1,1:50]'``) give the same pixels (in increasing order: flipping is not
    the job of a section parser), and ``'*'`` means the whole axis.

    Parameters
    ----------
    section : str
        For example ``'[18:1382,1:1370]'``.

    Returns
    -------
    tuple of slice
        ``(slice(y1 - 1, y2), slice(x1 - 1, x2))``; a ``'*'`` axis gives ``slice(None)``.

    Raises
    ------
    ValueError
        When the text is not a 2-D section of positive pixel numbers.

    Examples
    --------
    >>> parse_section("[18:1382,1:1370]")
    (slice(0, 1370, None), slice(17, 1382, None))
    """
    if not isinstance(section, str):
        raise TypeError(f"parse_section needs a string like '[1:100,1:50]', got {section!r}")
    match = _SECTION_FULL.match(section)
    if match is None:
        raise ValueError(
            f"{section!r} is not a FITS image section; expected '[x1:x2,y1:y2]' with 1-based "
            "inclusive pixel numbers, e.g. '[18:1382,1:1370]'"
        )
    out = []
    for axis_text in (match.group(2), match.group(1)):
        if axis_text == "*":
            out.append(slice(None))
            continue
        first, last = (int(v) for v in axis_text.split(":"))
        if first < 1 or last < 1:
            raise ValueError(f"{section!r}: FITS section pixel numbers start at 1")
        lo, hi = min(first, last), max(first, last)
        out.append(slice(lo - 1, hi))
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------
# Time
# ---------------------------------------------------------------------------------------------
_ISO = re.compile(
    r"^\s*(\d{4})[-/](\d{1,2})[-/](\d{1,2})"
    r"(?:(?:[Tt]|\s+|_)(\d{1,2}):(\d{1,2})(?::(\d{1,2}(?:\.\d*)?))?)?"
    r"(.*)$"
)
_OLD_DATE = re.compile(r"^\s*(\d{1,2})/(\d{1,2})/(\d{2}|\d{4})\s*$")
_CLOCK = re.compile(r"^\s*(\d{1,2})[:\sh](\d{1,2})(?:[:\sm](\d{1,2}(?:\.\d*)?)s?)?\s*(.*)$")
_TZ_SUFFIX = re.compile(r"^\s*([+-])(\d{2}):?(\d{2})?\s*$")


def _mjd_of_date(year: int, month: int, day: int) -> int:
    return dt.date(year, month, day).toordinal() - _MJD_EPOCH_ORDINAL


def _utc_mjd(ymd: tuple[int, int, int], seconds: float) -> float:
    """UTC MJD of a calendar date plus seconds of that day, in astropy's (ERFA) convention.

    On a day with a leap second ERFA divides by 86401 s, so ``Time(mjd, format="mjd")`` gives back
    the same clock reading; elsewhere this is ``day + seconds / 86400``.
    """
    day = _mjd_of_date(*ymd)
    if not 0.0 <= seconds < 86401.0:
        return day + seconds / 86400.0
    hour = min(int(seconds // 3600), 23)
    minute = min(int((seconds - hour * 3600) // 60), 59)
    second = seconds - hour * 3600 - minute * 60
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ERFA's "dubious year" before 1960
        try:
            jd1, jd2 = erfa.dtf2d("UTC", *ymd, hour, minute, second)
        except erfa.ErfaError:
            return day + seconds / 86400.0
    return float(jd1 - _JD_MINUS_MJD) + float(jd2)


def _check_clock(hour: int, minute: int, second: float) -> None:
    if not (0 <= hour <= 23 and 0 <= minute < 60 and 0 <= second < 61):
        raise ValueError(f"time of day {hour}:{minute}:{second} is out of range")


def _suffix_offset_h(suffix: str) -> tuple[float, str]:
    """An ISO zone suffix as hours ahead of UTC, plus a note for unrecognised suffixes."""
    text = suffix.strip()
    if text.upper() in ("", "Z", "UT", "UTC", "GMT", "UT1", "(UTC)"):
        return 0.0, ""
    match = _TZ_SUFFIX.match(text)
    if match:
        hours = int(match.group(2)) + int(match.group(3) or 0) / 60.0
        return (hours if match.group(1) == "+" else -hours), ""
    return 0.0, f"ignored the suffix {text!r}"


def _parse_datetime(text: str) -> tuple[float, bool, str, tuple[int, int, int]]:
    """Parse an ISO or old-style date(-time) into ``(mjd, has_time, note, (y, m, d))``.

    A zone offset in the text is applied (the result is UTC).
    """
    match = _ISO.match(text)
    if match:
        year, month, day = (int(match.group(i)) for i in (1, 2, 3))
        ymd = (year, month, day)
        mjd = float(_mjd_of_date(*ymd))
        if match.group(4) is None:
            if match.group(7).strip():
                raise ValueError(f"unexpected text after the date in {text!r}")
            return mjd, False, "", ymd
        hour, minute = int(match.group(4)), int(match.group(5))
        second = float(match.group(6)) if match.group(6) else 0.0
        _check_clock(hour, minute, second)
        offset_h, note = _suffix_offset_h(match.group(7))
        mjd = _utc_mjd(ymd, hour * 3600.0 + minute * 60.0 + second) - offset_h / 24.0
        return mjd, True, note, ymd
    match = _OLD_DATE.match(text)
    if match:
        day, month, year = (int(match.group(i)) for i in (1, 2, 3))
        if year < 100:  # 'dd/mm/yy': FITS meant 19yy; read 1950-2049 to survive Y2K-era software
            year += 1900 if year >= 50 else 2000
        return float(_mjd_of_date(year, month, day)), False, "", (year, month, day)
    raise ValueError(f"{text!r} is not a date ('YYYY-MM-DD[Thh:mm:ss.sss]' or 'dd/mm/yy')")


def _parse_clock(value: Any) -> tuple[float, str]:
    """A time of day in seconds from ``'hh:mm:ss.sss'`` (or a number of hours), plus a note."""
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{value!r} is not a time of day")
    if not isinstance(value, str):
        hours = _to_float(value)
        if hours is None or not 0 <= hours < 24:
            raise ValueError(f"{value!r} is not a time of day")
        return hours * 3600.0, ""
    match = _CLOCK.match(value)
    if match is None:
        hours = _to_float(value)
        if hours is not None and 0 <= hours < 24:
            return hours * 3600.0, ""
        raise ValueError(f"{value!r} is not a time of day ('hh:mm:ss.sss')")
    hour, minute = int(match.group(1)), int(match.group(2))
    second = float(match.group(3)) if match.group(3) else 0.0
    _check_clock(hour, minute, second)
    offset_h, note = _suffix_offset_h(match.group(4))
    return hour * 3600.0 + minute * 60.0 + second - offset_h * 3600.0, note


def _day_number_to_mjd(value: float) -> tuple[float, str]:
    if value > _JD_MINUS_MJD:
        mjd, unit = value - _JD_MINUS_MJD, "JD"
    else:
        mjd, unit = value, "MJD"
    if not _MJD_RANGE[0] < mjd < _MJD_RANGE[1]:
        raise ValueError(f"{value!r} is not a plausible JD or MJD")
    return mjd, unit


def _parse_offset_h(value: Any) -> float | None:
    """A UTC offset in hours from -7, '-7', 'UTC-7', 'GMT+05:30', '-07:00'."""
    if isinstance(value, bool | np.bool_):
        return None
    number = _to_float(value)
    if number is None and isinstance(value, str):
        match = re.fullmatch(
            r"\s*(?:UTC|GMT|UT)?\s*([+-])\s*(\d{1,2})(?::?(\d{2}))?\s*", value.upper()
        )
        if match is None:
            return None
        number = int(match.group(2)) + int(match.group(3) or 0) / 60.0
        number = -number if match.group(1) == "-" else number
    if number is None or not -14 <= number <= 14:
        return None
    return number


def _find_time(
    header: Mapping[str, Any], exptime_s: float
) -> tuple[float, str, str] | tuple[None, str, list[str]]:
    """Find the mid-exposure time as ``(mjd, description, key)`` in the header's own time scale.

    Returns ``(None, "", problems)`` when nothing usable is found.
    """
    half_day = exptime_s / 2.0 / 86400.0 if math.isfinite(exptime_s) else 0.0
    problems: list[str] = []

    def iso(key: str, shift: float, what: str) -> tuple[float, str, str] | None:
        value = _raw(header, key)
        if value is None:
            return None
        if not isinstance(value, str):
            problems.append(f"{key}={value!r} is not a date string")
            return None
        try:
            mjd, has_time, note, _ = _parse_datetime(value)
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
            return None
        if not has_time:
            return None
        desc = f"{key}{what}" + (f" ({note})" if note else "")
        return mjd + shift, desc, key

    def number(key: str, shift: float, what: str) -> tuple[float, str, str] | None:
        value = _raw(header, key)
        if value is None:
            return None
        day = _to_float(value)
        if day is None:
            problems.append(f"{key}={value!r} is not a number")
            return None
        try:
            mjd, unit = _day_number_to_mjd(day)
        except ValueError as exc:
            problems.append(f"{key}: {exc}")
            return None
        return mjd + shift, f"{key} ({unit}){what}", key

    def date_plus_clock(clock_keys: Iterable[str], shift: float, what: str):
        date_key, ymd = "", None
        for key in _DATE_KEYS:
            value = _raw(header, key)
            if isinstance(value, str):
                try:
                    _, _, _, ymd = _parse_datetime(value)
                except ValueError:
                    continue
                date_key = key
                break
        if ymd is None:
            return None
        for key in clock_keys:
            value = _raw(header, key)
            if value is None:
                continue
            # A clock key holding a full ISO date-time (e.g. TIME-OBS='2019-03-26T02:27:31').
            if isinstance(value, str) and _ISO.match(value):
                found = iso(key, shift, what)
                if found:
                    return found
                continue
            try:
                seconds, note = _parse_clock(value)
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
                continue
            desc = f"{date_key} (date) + {key}{what}" + (f" ({note})" if note else "")
            return _utc_mjd(ymd, seconds) + shift, desc, key
        return None

    start = " + EXPTIME/2"
    end = " - EXPTIME/2"
    candidates = (
        *[lambda k=k: iso(k, 0.0, " (mid-exposure)") for k in _MID_KEYS_ISO],
        *[lambda k=k: number(k, 0.0, " (mid-exposure)") for k in _MID_KEYS_NUM],
        *[lambda k=k: iso(k, half_day, start) for k in _START_KEYS_ISO],
        lambda: date_plus_clock(_START_CLOCK_KEYS, half_day, start),
        *[lambda k=k: number(k, half_day, start) for k in _START_KEYS_NUM],
        lambda: iso("DATE-LOC", half_day, start),
        *[lambda k=k: iso(k, -half_day, end) for k in _END_KEYS_ISO],
        lambda: date_plus_clock(_END_CLOCK_KEYS, -half_day, end),
        *[lambda k=k: number(k, -half_day, end) for k in _END_KEYS_NUM],
    )
    for candidate in candidates:
        found = candidate()
        if found is not None:
            return found
    return None, "", problems


def _time_is_local(header: Mapping[str, Any], key: str) -> str:
    """Why the clock times of this header are local rather than UTC, or ``""``."""
    if key == "DATE-LOC":
        return "DATE-LOC is local time"
    timesys = _raw(header, "TIMESYS")
    if isinstance(timesys, str) and timesys.upper() in _LOCAL_TIMESYS:
        return f"TIMESYS = {timesys!r}"
    localtim = _raw(header, "LOCALTIM")
    if isinstance(localtim, bool | np.bool_) and localtim:
        return "LOCALTIM = T"
    comment = _comment(header, key)
    if "local" in comment and not re.search(r"\butc?\b", comment):
        return f"the {key} comment says local time"
    return ""


def _convert_timesys(mjd: float, timesys: str) -> float:
    from astropy.time import Time

    scale = {"TT": "tt", "TDT": "tt", "TAI": "tai", "TDB": "tdb", "GPS": "tai"}[timesys]
    t = Time(mjd, format="mjd", scale=scale)
    if timesys == "GPS":  # GPS = TAI - 19 s
        t = Time(mjd + 19.0 / 86400.0, format="mjd", scale="tai")
    return float(t.utc.mjd)


def _parse_time(
    header: Mapping[str, Any], exptime_s: float, utc_offset_h: float | None
) -> tuple[float, str, list[str]]:
    mjd, desc, key_or_problems = _find_time(header, exptime_s)
    if mjd is None:
        problems = key_or_problems
        tried = ", ".join(
            (
                *_MID_KEYS_ISO,
                *_MID_KEYS_NUM,
                *_START_KEYS_ISO,
                "DATE-OBS + " + "/".join(_START_CLOCK_KEYS),
                *_START_KEYS_NUM,
                "DATE-LOC",
                *_END_KEYS_ISO,
                *_END_KEYS_NUM,
            )
        )
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise HeaderError(
            f"no usable observation time in the header{detail}; looked for {tried}. "
            "Add DATE-OBS='YYYY-MM-DDThh:mm:ss' (UTC start of the exposure)"
        )
    key = str(key_or_problems)
    notes: list[str] = []
    timesys = _raw(header, "TIMESYS")
    timesys = timesys.upper() if isinstance(timesys, str) else ""
    reason = _time_is_local(header, key)
    offset_h: float | None = None
    if utc_offset_h is not None:
        offset_h = float(utc_offset_h)
        if not math.isfinite(offset_h) or not -24 < offset_h < 24:
            raise ValueError(f"utc_offset_h must be a number of hours in (-24, 24), got {offset_h}")
        reason = reason or "utc_offset_h was given"
    elif reason:
        for offset_key in _OFFSET_KEYS:
            offset_h = _parse_offset_h(_raw(header, offset_key))
            if offset_h is not None:
                reason += f"; offset from {offset_key}"
                break
        if offset_h is None:
            raise HeaderError(
                f"{key} is local time ({reason}) but the header gives no UTC offset "
                f"({'/'.join(_OFFSET_KEYS)}); pass utc_offset_h (hours, local = UTC + offset)"
            )
    if offset_h is not None:
        mjd -= offset_h / 24.0
        notes.append(
            f"{key} is local time, shifted by {-offset_h:+g} h to UTC (UTC{offset_h:+g}; {reason})"
        )
        desc += f", local UTC{offset_h:+g} -> UTC"
    elif timesys in ("TT", "TDT", "TAI", "TDB", "GPS"):
        mjd = _convert_timesys(mjd, timesys)
        notes.append(f"TIMESYS = {timesys!r}: converted {key} to UTC")
        desc += f", {timesys} -> UTC"
    return mjd, desc, notes


def parse_time(
    header: Mapping[str, Any], exptime_s: float, *, utc_offset_h: float | None = None
) -> tuple[float, str]:
    """Find the mid-exposure UTC time of a frame.

    See the module docstring for the key precedence and the accepted formats. Start-time keys
    get ``exptime_s / 2`` added, end-time keys subtracted; mid-exposure keys are used as they are.

    Parameters
    ----------
    header : astropy.io.fits.Header or mapping
        The primary header.
    exptime_s : float
        Exposure time in seconds (NaN is treated as 0).
    utc_offset_h : float, optional
        When given, the header's clock times are local, ``utc_offset_h`` hours ahead of UTC
        (-7 for Arizona): UTC = local - offset. When None, local time is used only where the
        header says so (``TIMESYS='LOCAL'``, ``LOCALTIM=T``, ``DATE-LOC``) with the offset in
        ``TIMEZONE``/``UTCOFFSET``/``TZ``.

    Returns
    -------
    time_mjd : float
        Mid-exposure time, UTC, as a Modified Julian Date.
    source : str
        Which keys gave it, e.g. ``'DATE-OBS + EXPTIME/2'``.

    Raises
    ------
    HeaderError
        When no time key is present or none can be parsed; the message names the keys.
    """
    mjd, desc, _ = _parse_time(header, exptime_s, utc_offset_h)
    return mjd, desc


# ---------------------------------------------------------------------------------------------
# Barycentric time
# ---------------------------------------------------------------------------------------------
def bjd_tdb(
    time_mjd: float | np.ndarray,
    ra_deg: float | np.ndarray,
    dec_deg: float | np.ndarray,
    lat_deg: float | np.ndarray,
    lon_deg: float | np.ndarray,
    height_m: float | np.ndarray,
) -> float | np.ndarray:
    """Barycentric Julian Date in TDB of UTC MJD times, for a target seen from a site.

    Parameters
    ----------
    time_mjd : float or array
        UTC Modified Julian Dates (mid-exposure).
    ra_deg, dec_deg : float or array
        ICRS target coordinates in degrees.
    lat_deg, lon_deg : float or array
        Geodetic site latitude and east-positive longitude in degrees.
    height_m : float or array
        Site height above the WGS84 ellipsoid in metres; NaN is taken as 0 (an error of at most
        ~20 microseconds per 6 km).

    Returns
    -------
    float or numpy.ndarray
        BJD_TDB as a full Julian Date (``2458568.6...``), NaN where the time, the target or the
        site latitude/longitude is missing. A float when all inputs are scalars.

    Notes
    -----
    The light travel time is astropy's (`astropy.time.Time.light_travel_time`: the site's
    barycentric position, Earth by ``erfa.epv00``, along the target's direction) with the site
    put in the GCRS by ``erfa.c2t06a`` with UT1 taken as UTC and no polar motion, so that the
    IERS tables are not read (2.5-3 s in every new process). Both are below 1 s and 0.5",
    i.e. at most ~2 microseconds of light time, below the float64 resolution of a full JD
    (~40 microseconds); tested against astropy.
    """
    import erfa
    from astropy import constants
    from astropy import units as u
    from astropy.coordinates import EarthLocation
    from astropy.time import Time

    arrays = np.broadcast_arrays(
        *(np.asarray(a, dtype=float) for a in (time_mjd, ra_deg, dec_deg, lat_deg, lon_deg))
    )
    height = np.broadcast_to(np.asarray(height_m, dtype=float), arrays[0].shape)
    height = np.where(np.isfinite(height), height, 0.0)
    scalar = arrays[0].ndim == 0
    t, ra, dec, lat, lon = (np.atleast_1d(a).ravel() for a in arrays)
    height = np.atleast_1d(height).ravel()
    out = np.full(t.shape, np.nan)
    good = np.isfinite(t) & np.isfinite(ra) & np.isfinite(dec) & np.isfinite(lat)
    good &= np.isfinite(lon) & (np.abs(lat) <= 90) & (np.abs(dec) <= 90)
    if good.any():
        site = EarthLocation.from_geodetic(lon[good] * u.deg, lat[good] * u.deg, height[good] * u.m)
        times = Time(t[good], format="mjd", scale="utc", location=site)
        tdb, tt = times.tdb, times.tt  # TDB's topocentric term needs no IERS table either
        _, earth = erfa.epv00(tdb.jd1, tdb.jd2)  # barycentric position and velocity, au
        to_terrestrial = erfa.c2t06a(tt.jd1, tt.jd2, times.jd1, times.jd2, 0.0, 0.0)
        itrs = np.stack([site.x.to_value(u.m), site.y.to_value(u.m), site.z.to_value(u.m)], -1)
        gcrs = np.einsum("nji,nj->ni", to_terrestrial, itrs)  # the transposed rotation
        position = earth["p"] * constants.au.value + gcrs
        ra_r, dec_r = np.deg2rad(ra[good]), np.deg2rad(dec[good])
        toward = np.stack(
            [np.cos(dec_r) * np.cos(ra_r), np.cos(dec_r) * np.sin(ra_r), np.sin(dec_r)], -1
        )
        light_s = np.sum(position * toward, axis=-1) / constants.c.value
        out[good] = tdb.jd1 + (tdb.jd2 + light_s / 86400.0)
    out = out.reshape(arrays[0].shape)
    return float(out) if scalar else out


# ---------------------------------------------------------------------------------------------
# WCS
# ---------------------------------------------------------------------------------------------
_WCS_FLOAT_KEYS = re.compile(
    r"^(?:(?:CRVAL|CRPIX|CDELT|CROTA|CRDER|CSYER)\d{1,2}[A-Z]?"
    r"|(?:CD|PC|PV)\d{1,2}_\d{1,2}[A-Z]?"
    r"|(?:A|B|AP|BP)_\d{1,2}_\d{1,2}"
    r"|EQUINOX[A-Z]?|EPOCH|LONPOLE[A-Z]?|LATPOLE[A-Z]?|MJD-OBS|MJDREF)$"
)
_WCS_INT_KEYS = re.compile(r"^(?:A|B|AP|BP)_ORDER$|^WCSAXES[A-Z]?$")
_WCS_DROP_KEYS = ("RADECSYS",)  # deprecated copy of RADESYS; astropy warns and may misuse it


def _wcs_ready_header(header: Mapping[str, Any]) -> fits.Header:
    out = fits.Header()
    for card in header.cards if isinstance(header, fits.Header) else []:
        key = card.keyword
        if key in ("", "COMMENT", "HISTORY") or key in _WCS_DROP_KEYS or len(key) > 8:
            continue  # WCS keywords are all standard 8-character ones
        try:
            value = card.value
        except fits.VerifyError:  # an unparsable card (bytes astropy cannot read): not WCS
            continue
        if isinstance(value, fits.card.Undefined):
            continue
        if isinstance(value, str) and (_WCS_FLOAT_KEYS.match(key) or _WCS_INT_KEYS.match(key)):
            number = _to_float(value)
            if number is None:
                continue  # an unreadable value: drop it rather than let astropy guess
            value = int(number) if _WCS_INT_KEYS.match(key) else number
        try:
            out[key] = value
        except (ValueError, TypeError):
            continue
    if not isinstance(header, fits.Header):
        for key, value in header.items():
            if len(str(key)) > 8:
                continue
            if isinstance(value, str) and _WCS_FLOAT_KEYS.match(str(key)):
                value = _to_float(value)
            if value is not None:
                try:
                    out[str(key)] = value
                except (ValueError, TypeError, KeyError):
                    continue
    return out


def header_wcs(header: Mapping[str, Any]) -> WCS | None:
    """The celestial WCS of a frame's header, or None when it has no usable one.

    String-valued ``CRVAL``/``CRPIX``/``CD``/``PC``/``CDELT``/``PV``/SIP keys (as the Lowell LOIS
    pipeline writes them) are cast to numbers first: astropy would otherwise silently build a
    null WCS. SCAMP ``TAN`` + ``PV`` headers are read as TPV.

    Parameters
    ----------
    header : astropy.io.fits.Header or mapping
        The frame header.

    Returns
    -------
    astropy.wcs.WCS or None
        A 2-axis celestial WCS; None without ``RA``/``DEC`` ``CTYPE`` keys, without a pixel scale
        (``CD``/``CDELT``), with a singular matrix, or when astropy cannot build it.
    """
    h = _wcs_ready_header(header)
    ctypes = [str(h.get(f"CTYPE{i}", "")).upper() for i in (1, 2)]
    if not (any(c.startswith("RA") for c in ctypes) and any(c.startswith("DEC") for c in ctypes)):
        return None
    has_scale = any(re.match(r"^(CD\d_\d|CDELT\d)$", k) for k in h.keys())
    if not has_scale or not all(f"CRVAL{i}" in h for i in (1, 2)):
        return None
    h["NAXIS"] = 2
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(h, naxis=2, fix=True)
            if not wcs.has_celestial:
                return None
            wcs = wcs.celestial
            matrix = wcs.pixel_scale_matrix
            if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) == 0:
                return None
            centre = np.asarray(wcs.wcs.crpix, dtype=float) - 1.0
            world = wcs.pixel_to_world_values(*centre)
    except Exception:  # wcslib raises many exception types; any of them means "unusable"
        return None
    if not np.all(np.isfinite(world)):
        return None
    return wcs


# ---------------------------------------------------------------------------------------------
# Camera numbers
# ---------------------------------------------------------------------------------------------
def _binning(header: Mapping[str, Any], notes: list[str]) -> tuple[int, int]:
    def as_bin(value: Any) -> int | None:
        number = _to_float(value)
        if number is None or not number.is_integer() or not 1 <= number <= 64:
            return None
        return int(number)

    for kx, ky in (("XBINNING", "YBINNING"), ("BINX", "BINY"), ("CCDXBIN", "CCDYBIN")):
        bx, by = as_bin(_raw(header, kx)), as_bin(_raw(header, ky))
        if bx or by:
            return bx or by or 1, by or bx or 1
    for key in ("CCDSUM", "BINNING", "CCDBIN"):
        value = _raw(header, key)
        if value is None:
            continue
        parts = [p for p in re.split(r"[\s,x*X]+", str(value).strip()) if p]
        bins = [as_bin(p) for p in parts]
        if len(bins) in (1, 2) and all(bins):
            return int(bins[0]), int(bins[-1])
        notes.append(f"could not read binning {key}={value!r}; assumed 1x1")
        return 1, 1
    return 1, 1


def _amp_value(header: Mapping[str, Any], prefix: str) -> tuple[float | None, str]:
    """A per-amplifier value (LOIS ``AGAIN_01``/``ARDNS_01``) for the one amplifier in use."""
    used = [
        n
        for n in range(1, 17)
        if _to_float(_raw(header, f"AAMP_{n:02d}")) == 1.0
        and _to_float(_raw(header, f"{prefix}_{n:02d}")) is not None
    ]
    if len(used) == 1:
        key = f"{prefix}_{used[0]:02d}"
        return _to_float(_raw(header, key)), key
    if not used and _raw(header, "AAMP_01") is None:
        value = _to_float(_raw(header, f"{prefix}_01"))
        if value is not None and _raw(header, f"{prefix}_02") is None:
            return value, f"{prefix}_01"
    return None, ""


def _gain(header: Mapping[str, Any], notes: list[str]) -> float:
    for key in _GAIN_KEYS:
        value = _to_float(_raw(header, key))
        if value is None:
            continue
        if value <= 0 or value > 30:
            # CMOS drivers write the camera's gain *setting* (0-600) as GAIN; it is not e-/ADU.
            notes.append(f"{key}={value:g} is not a gain in e-/ADU (a camera setting?); ignored")
            continue
        return value
    value, key = _amp_value(header, "AGAIN")
    if value is not None and value > 0:
        return value
    return NAN


def _rdnoise(header: Mapping[str, Any]) -> float:
    value, _ = _first_float(header, _RDNOISE_KEYS)
    if value is None:
        value, _ = _amp_value(header, "ARDNS")
    return value if value is not None and value >= 0 else NAN


def _saturate(header: Mapping[str, Any], notes: list[str]) -> float:
    value, _ = _first_float(header, _SATURATE_KEYS)
    if value is not None and value > 0:
        return value
    bits, _ = _first_float(header, ("ADCBITS", "BITDEPTH", "ADC_BITS"))
    if bits is not None and bits.is_integer() and 8 <= bits <= 32:
        notes.append(f"no SATURATE key: {2 ** int(bits) - 1} from a {int(bits)}-bit ADC")
        return float(2 ** int(bits) - 1)
    bitpix = _to_float(_raw(header, "BITPIX"))
    if bitpix is None or bitpix not in (8.0, 16.0, 32.0, 64.0):
        if bitpix is not None and bitpix < 0:
            notes.append("no SATURATE key and float data: saturation level unknown")
        return NAN
    bzero = _to_float(_raw(header, "BZERO")) or 0.0
    bscale = _to_float(_raw(header, "BSCALE")) or 1.0
    n_bits = int(bitpix)
    top = 2**n_bits - 1 if n_bits == 8 else 2 ** (n_bits - 1) - 1  # BITPIX 8 is unsigned
    level = float(bzero + bscale * top)
    notes.append(
        f"no SATURATE key: {level:g} ADU from BITPIX {n_bits} / BZERO {bzero:g}; a 12- or 14-bit "
        "camera saturates lower and cannot be told from the header alone"
    )
    return level


def airmass_of_altitude(altitude_deg: float) -> float:
    """Relative air mass at an apparent altitude: Kasten & Young (1989), good to the horizon."""
    h = float(altitude_deg)
    if not 0.0 < h <= 90.0:
        return NAN
    return 1.0 / (math.sin(math.radians(h)) + 0.50572 * (h + 6.07995) ** -1.6364)


def _airmass(header: Mapping[str, Any], notes: list[str]) -> float:
    """The header's airmass, checked against its altitude keyword when it has one.

    MaxIm DL has written a stale AIRMASS (13.37 while OBJCTALT went from 77 to 84 deg: the
    XO-1 b night in ../shared/data): when the two disagree by more than 5%, the altitude's is
    taken, with a note.
    """
    value, key = _first_float(header, _AIRMASS_KEYS)
    airmass = value if value is not None and 1.0 <= value < 100.0 else NAN
    altitude, alt_key = _first_float(header, _ALTITUDE_KEYS)
    from_altitude = airmass_of_altitude(altitude) if altitude is not None else NAN
    if math.isfinite(from_altitude) and not abs(airmass / from_altitude - 1.0) <= 0.05:
        if math.isfinite(airmass):
            notes.append(
                f"{key}={airmass:.3f} disagrees with {alt_key}={altitude:.2f} deg (airmass "
                f"{from_altitude:.3f}): the altitude's airmass is used"
            )
        return from_altitude
    return airmass


# ---------------------------------------------------------------------------------------------
# Site
# ---------------------------------------------------------------------------------------------
def _local_offset_from_localtim(header: Mapping[str, Any], utc_mjd: float) -> float | None:
    """UTC offset (hours) implied by a local-time string such as SBIG's LOCALTIM."""
    for key in ("LOCALTIM", "DATE-LOC", "LOCTIME"):
        value = _raw(header, key)
        if not isinstance(value, str) or not math.isfinite(utc_mjd):
            continue
        match = re.match(
            r"^\s*(\d{1,4})[/-](\d{1,2})[/-](\d{1,4})[T\s]+(\d{1,2}):(\d{2})(?::(\d{2}(?:\.\d*)?))?"
            r"\s*([AP]M)?",
            value.upper(),
        )
        if match is None:
            continue
        a, b, c = (int(match.group(i)) for i in (1, 2, 3))
        hour, minute = int(match.group(4)), int(match.group(5))
        second = float(match.group(6) or 0)
        if match.group(7):
            hour = hour % 12 + (12 if match.group(7) == "PM" else 0)
        orders = [(a, b, c)] if a > 31 else [(c, a, b), (c, b, a)]  # Y-M-D, or M/D/Y and D/M/Y
        for year, month, day in orders:
            try:
                local = (
                    _mjd_of_date(year, month, day) + (hour * 3600 + minute * 60 + second) / 86400
                )
            except ValueError:
                continue
            offset_h = (local - utc_mjd) * 24.0
            if abs(offset_h) <= 14.5:
                return round(offset_h * 4) / 4
    return None


def _site(
    header: Mapping[str, Any], utc_mjd: float, notes: list[str]
) -> tuple[float, float, float]:
    lat = lon = height = NAN
    for key in _LAT_KEYS:
        parsed = _parse_angle(_raw(header, key))
        if parsed is not None and -90 <= parsed[0] <= 90:
            lat = parsed[0]
            break
    for key in _LON_KEYS:
        value = _raw(header, key)
        parsed = _parse_angle(value)
        if parsed is None or not -360 <= parsed[0] <= 360:
            continue
        lon = parsed[0]
        if lon > 180:
            lon -= 360.0
        comment = _comment(header, key)
        explicit_hemisphere = isinstance(value, str) and re.search(r"[EWew]", value)
        software = str(_raw(header, "SWCREATE") or "") + str(_raw(header, "PROGRAM") or "")
        offset_h = _local_offset_from_localtim(header, utc_mjd)
        west = False
        reason = ""
        if key in _EAST_POSITIVE_STANDARD or explicit_hemisphere:
            pass
        elif "west" in comment and "east" not in comment:
            west, reason = True, f"its comment says west ({comment.strip()!r})"
        elif "east" in comment:
            pass
        elif offset_h is not None and abs(offset_h) >= 1 and abs(lon) >= 15:
            # The local clock is roughly longitude/15 h ahead of UTC (zones, DST: within ~3.5 h).
            if abs(offset_h + lon / 15) < abs(offset_h - lon / 15) and abs(offset_h + lon / 15) < 4:
                west, reason = True, f"the local time is UTC{offset_h:+g} h"
        elif "thesky" in software.lower():
            west, reason = True, "TheSkyX writes west-positive longitudes"
        if west:
            lon = -lon
            notes.append(
                f"{key}={value!r} read as west-positive ({reason}); longitude {lon:.4f} deg east"
            )
        break
    for key in _HEIGHT_KEYS:
        value = _to_float(_raw(header, key))
        if value is None or not -500 <= value <= 9000:
            continue
        if key == "ALTITUDE":
            comment = _comment(header, key)
            # ALTITUDE is the telescope's elevation angle in some programs: need a value above 90
            # or a word for metres.
            if value <= 90 and not re.search(r"meter|metre|\bm\b|elev|site|height|sea", comment):
                continue
        height = value
        break
    if math.isnan(lat) or math.isnan(lon):
        geo = [_to_float(_raw(header, f"OBSGEO-{c}")) for c in "XYZ"]
        if all(g is not None for g in geo) and sum(g * g for g in geo) > 6.3e6**2:
            from astropy import units as u
            from astropy.coordinates import EarthLocation

            location = EarthLocation.from_geocentric(*geo, unit=u.m).to_geodetic()
            lat, lon = float(location.lat.deg), float(location.lon.deg)
            height = float(location.height.to_value(u.m))
    return lat, lon, height


# ---------------------------------------------------------------------------------------------
# Pointing
# ---------------------------------------------------------------------------------------------
def _pointing(header: Mapping[str, Any], notes: list[str]) -> tuple[float, float]:
    for ra_key, dec_key in _RADEC_KEYS:
        ra_value, dec_value = _raw(header, ra_key), _raw(header, dec_key)
        if ra_value is None or dec_value is None:
            continue
        ra = _parse_ra(ra_value, _comment(header, ra_key))
        dec = _parse_dec(dec_value)
        if ra is None or dec is None:
            notes.append(
                f"could not read the pointing {ra_key}={ra_value!r}, {dec_key}={dec_value!r}"
            )
            continue
        equinox = _to_float(_raw(header, "EQUINOX"))
        if equinox is not None and 1850 <= equinox <= 2150 and abs(equinox - 2000) > 0.5:
            from astropy import units as u
            from astropy.coordinates import FK5, SkyCoord

            coord = SkyCoord(ra * u.deg, dec * u.deg, frame=FK5(equinox=f"J{equinox}"))
            icrs = coord.icrs
            ra, dec = float(icrs.ra.deg), float(icrs.dec.deg)
            notes.append(f"{ra_key}/{dec_key} precessed from equinox {equinox:g} to ICRS")
        return ra, dec
    return NAN, NAN


# ---------------------------------------------------------------------------------------------
# The whole header
# ---------------------------------------------------------------------------------------------
def normalize_header(
    header: Mapping[str, Any],
    *,
    path: str | Path | None = None,
    utc_offset_h: float | None = None,
    frame_type: str | None = None,
) -> FrameMeta:
    """Read a raw frame's header into a `FrameMeta`.

    Parameters
    ----------
    header : astropy.io.fits.Header or mapping
        The primary header (or the image extension's header merged with it).
    path : str or Path, optional
        The file, used for error messages and as the frame-type fallback.
    utc_offset_h : float, optional
        The header's clock times are local, this many hours ahead of UTC; see `parse_time`.
    frame_type : {"light", "dark", "bias", "flat"}, optional
        The frame type, when the caller has told it otherwise (an untyped frame that looks like
        a light); `classify_frame` decides when None.

    Returns
    -------
    FrameMeta
        The normalised facts; what had to be assumed is in ``notes``.

    Raises
    ------
    UntypedFrameError
        When the header has no frame-type key and the path tells nothing (see `classify_frame`).
    HeaderError
        When the frame type cannot be told, a light, dark or flat has no exposure time, or a light
        frame has no readable time (bias, dark and flat frames get NaN and a note instead).
    """
    name = str(path) if path is not None else str(_raw(header, "FILENAME") or "header")
    if frame_type is None:
        frame_type = classify_frame(header, path)
    elif frame_type not in FRAME_TYPES:
        raise ValueError(f"frame_type must be one of {FRAME_TYPES}, not {frame_type!r}")
    notes: list[str] = []

    exptime, exp_key, bad = _exptime(header)
    if exptime is None:
        if frame_type == "bias":
            exptime = 0.0
            if bad:
                notes.append(f"{exp_key}={bad} is not a time; bias taken as 0 s")
        else:
            what = f"{exp_key}={bad} is not a number of seconds" if bad else "no exposure time"
            raise HeaderError(
                f"{name}: {what} (EXPTIME/EXPOSURE) in the header; a {frame_type} frame needs it "
                "for the mid-exposure time and dark scaling. Add EXPTIME in seconds"
            )

    try:
        time_mjd, time_source, time_notes = _parse_time(header, exptime, utc_offset_h)
        notes.extend(time_notes)
    except HeaderError as exc:
        if frame_type == "light":
            raise HeaderError(f"{name}: {exc}") from exc
        time_mjd, time_source = NAN, ""
        notes.append(f"no usable time: {exc}")

    ra, dec = _pointing(header, notes)
    binning_x, binning_y = _binning(header, notes)
    lat, lon, height = _site(header, time_mjd, notes)
    wcs = header_wcs(header)
    date_obs = _raw(header, "DATE-OBS")

    return FrameMeta(
        frame_type=frame_type,
        time_mjd=float(time_mjd),
        time_source=time_source,
        exptime_s=float(exptime),
        filter=_first_str(header, _FILTER_KEYS),
        object=_first_str(header, _OBJECT_KEYS),
        ra_deg=ra,
        dec_deg=dec,
        airmass=_airmass(header, notes),
        binning_x=binning_x,
        binning_y=binning_y,
        gain_e_adu=_gain(header, notes),
        rdnoise_e=_rdnoise(header),
        saturate_adu=_saturate(header, notes),
        trimsec=_section_str(header, ("TRIMSEC", "DATASEC"), notes),
        biassec=_section_str(header, ("BIASSEC",), notes),
        site_lat_deg=lat,
        site_lon_deg=lon,
        site_height_m=height,
        date_obs="" if date_obs is None else str(date_obs),
        wcs_header="" if wcs is None else wcs.to_header_string(relax=True),
        notes=tuple(notes),
    )


def _section_str(header: Mapping[str, Any], keys: Iterable[str], notes: list[str]) -> str:
    for key in keys:
        value = _raw(header, key)
        if value is None:
            continue
        text = str(value).strip()
        try:
            parse_section(text)
        except (ValueError, TypeError):
            notes.append(f"{key}={text!r} is not an image section; ignored")
            continue
        return text
    return ""
