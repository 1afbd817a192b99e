"""Property tests of lcdask.io.headers: formats round-trip, junk never escapes as a crash."""

from __future__ import annotations

import datetime as dt
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lcdask.errors import HeaderError
from lcdask.io.headers import (
    classify_frame,
    header_wcs,
    normalize_header,
    parse_section,
    parse_time,
)

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

datetimes = st.datetimes(
    min_value=dt.datetime(1950, 1, 1), max_value=dt.datetime(2049, 12, 31, 23, 59, 59, 999999)
)


def truth_mjd(moment: dt.datetime) -> float:
    """UTC MJD in astropy's convention (the one the rest of lcdask converts back with)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ERFA "dubious year" before 1960
        return Time(moment, scale="utc").mjd


def clock(moment: dt.datetime, digits: int) -> str:
    """``hh:mm:ss`` with ``digits`` fractional digits (microseconds padded with zeros past 6)."""
    text = moment.strftime("%H:%M:%S")
    if digits:
        text += "." + f"{moment.microsecond:06d}{'0' * 12}"[:digits]
    return text


# (name, writer of header cards, resolution in seconds of what the writer keeps)
FORMATS = {
    "iso_t": (lambda m: {"DATE-OBS": f"{m:%Y-%m-%d}T{clock(m, 6)}"}, 1e-6),
    "iso_space": (lambda m: {"DATE-OBS": f"{m:%Y-%m-%d} {clock(m, 6)}"}, 1e-6),
    "iso_z": (lambda m: {"DATE-OBS": f"{m:%Y-%m-%d}T{clock(m, 6)}Z"}, 1e-6),
    "iso_12_digits": (lambda m: {"DATE-OBS": f"{m:%Y-%m-%d}T{clock(m, 12)}"}, 1e-6),
    "iso_ms": (lambda m: {"DATE-OBS": f"{m:%Y-%m-%d}T{clock(m, 3)}"}, 1e-3),
    "iso_s_suffix": (lambda m: {"DATE-OBS": f"{m:%Y-%m-%dT%H:%M:%S} UTC"}, 1.0),
    "date_time_obs": (lambda m: {"DATE-OBS": f"{m:%Y-%m-%d}", "TIME-OBS": clock(m, 6)}, 1e-6),
    "date_utcstart": (lambda m: {"DATE-OBS": f"{m:%Y-%m-%d}", "UTCSTART": clock(m, 2)}, 1e-2),
    "old_ddmmyy_ut": (lambda m: {"DATE-OBS": f"{m:%d/%m/%y}", "UT": clock(m, 4)}, 1e-4),
    "mjd_obs": (lambda m: {"MJD-OBS": truth_mjd(m)}, 1e-6),
    "jd": (lambda m: {"JD": truth_mjd(m) + 2400000.5}, 1e-4),  # float64 JD resolves 40 us
}


@pytest.mark.parametrize("name", sorted(FORMATS))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(moment=datetimes, exptime_s=st.floats(0.0, 3600.0))
def test_time_formats_round_trip(name, moment, exptime_s):
    writer, resolution_s = FORMATS[name]
    if resolution_s >= 1.0:
        moment = moment.replace(microsecond=0)
    elif resolution_s >= 1e-6:
        keep = round(resolution_s * 1e6)
        moment = moment.replace(microsecond=moment.microsecond // keep * keep)
    header = fits.Header(writer(moment))
    mjd, _ = parse_time(header, exptime_s)
    expected = truth_mjd(moment) + exptime_s / 2 / 86400
    # 1 ms, or the float64 precision of the number written for JD (40 us) and MJD (0.6 us)
    assert abs(mjd - expected) * 86400 < max(1e-3 if resolution_s > 1e-4 else 1e-4, 2e-6)


@SETTINGS
@given(moment=datetimes, offset_q=st.integers(-48, 56))
def test_local_time_round_trip(moment, offset_q):
    offset_h = offset_q / 4  # zones come in quarter hours
    local = moment + dt.timedelta(hours=offset_h)
    assume(1950 <= local.year <= 2049)
    header = fits.Header({"DATE-OBS": f"{local:%Y-%m-%d}T{clock(local, 6)}"})
    mjd, _ = parse_time(header, 0.0, utc_offset_h=offset_h)
    # 1 ms: a leap second inside the shifted span is the only thing that moves it further
    assert abs(mjd - truth_mjd(moment)) * 86400 < 1.001


def sexagesimal(value: float, unit_per_deg: float, sep: str, signed: bool) -> tuple[str, float]:
    """Format degrees as sexagesimal (in hours for RA) to 1 ms; return the text and its value."""
    sign = "-" if value < 0 else "+"
    total_ms = round(abs(value) * unit_per_deg * 3600 * 1000)
    whole, ms = divmod(total_ms, 1000)
    a, rest = divmod(whole, 3600)
    b, c = divmod(rest, 60)
    if sep == "hms":
        text = f"{a:02d}h{b:02d}m{c:02d}.{ms:03d}s" if unit_per_deg != 1 else None
        text = text or f"{a:02d}d{b:02d}m{c:02d}.{ms:03d}s"
    else:
        text = f"{a:02d}{sep}{b:02d}{sep}{c:02d}.{ms:03d}"
    if signed:
        text = sign + text
    exact = total_ms / 1000 / 3600 / unit_per_deg
    return text, -exact if value < 0 else exact


@SETTINGS
@given(
    ra=st.floats(0.0, 359.99999),
    dec=st.floats(-90.0, 90.0),
    sep=st.sampled_from([" ", ":", "hms"]),
)
def test_sexagesimal_pointing_round_trips(ra, dec, sep):
    ra_text, ra_exact = sexagesimal(ra, 1 / 15, sep, signed=False)
    dec_text, dec_exact = sexagesimal(dec, 1.0, sep, signed=True)
    assume(ra_exact < 360.0)
    header = fits.Header(
        {
            "IMAGETYP": "LIGHT",
            "EXPTIME": 1.0,
            "DATE-OBS": "2020-01-01T00:00:00",
            "OBJCTRA": ra_text,
            "OBJCTDEC": dec_text,
        }
    )
    meta = normalize_header(header)
    assert meta.ra_deg == pytest.approx(ra_exact, abs=1e-9)
    assert meta.dec_deg == pytest.approx(dec_exact, abs=1e-9)
    assert abs(meta.ra_deg - ra) < 15 * 0.0006 / 3600 + 1e-9  # the 1 ms of RA written
    assert abs(meta.dec_deg - dec) < 0.0006 / 3600


@SETTINGS
@given(
    ra=st.floats(0.0, 359.999),
    dec=st.floats(-90.0, 90.0),
    as_string=st.booleans(),
    lat=st.floats(-90.0, 90.0),
    lon=st.floats(-180.0, 180.0),
)
def test_degree_values_round_trip(ra, dec, as_string, lat, lon):
    def write(value: float):
        return repr(value) if as_string else value

    header = fits.Header(
        {
            "IMAGETYP": "LIGHT",
            "EXPTIME": 1.0,
            "DATE-OBS": "2020-01-01T00:00:00",
            "RA": write(ra),
            "DEC": write(dec),
            "LAT-OBS": write(lat),
            "LONG-OBS": write(lon),
        }
    )
    meta = normalize_header(header)
    assert meta.ra_deg == pytest.approx(ra, abs=1e-12)
    assert meta.dec_deg == pytest.approx(dec, abs=1e-12)
    assert meta.site_lat_deg == pytest.approx(lat, abs=1e-12)
    assert meta.site_lon_deg == pytest.approx(lon, abs=1e-12)


@SETTINGS
@given(
    x=st.tuples(st.integers(1, 9000), st.integers(1, 9000)),
    y=st.tuples(st.integers(1, 9000), st.integers(1, 9000)),
    space=st.sampled_from(["", " "]),
)
def test_parse_section_shape(x, y, space):
    text = f"[{x[0]}:{x[1]}{space},{space}{y[0]}:{y[1]}]"
    y_slice, x_slice = parse_section(text)
    ny = len(range(*y_slice.indices(10_000)))
    nx = len(range(*x_slice.indices(10_000)))
    assert (ny, nx) == (abs(y[1] - y[0]) + 1, abs(x[1] - x[0]) + 1)
    assert y_slice.start == min(y) - 1 and x_slice.start == min(x) - 1


@SETTINGS
@given(text=st.text(max_size=30))
def test_parse_section_junk_raises_only_value_error(text):
    try:
        parse_section(text)
    except ValueError:
        pass


KNOWN_KEYS = [
    "IMAGETYP", "OBSTYPE", "FRAMETYP", "PICTTYPE", "EXPTIME", "EXPOSURE", "ITIME", "TELAPSE",
    "DATE-OBS", "TIME-OBS", "UT", "UTCSTART", "UTC-OBS", "UTCEND", "MJD-OBS", "JD", "JULDAT",
    "DATE-AVG", "MJD-AVG", "MIDTIMJD", "DATE-END", "DATE-LOC", "TIMESYS", "TIMEZONE", "TZ",
    "LOCALTIM", "FILTER", "FILTNAME", "OBJECT", "RA", "DEC", "OBJCTRA", "OBJCTDEC", "TELRA",
    "TELDEC", "EQUINOX", "XBINNING", "YBINNING", "CCDSUM", "BINNING", "GAIN", "EGAIN",
    "AAMP_01", "AGAIN_01", "ARDNS_01", "RDNOISE", "SATURATE", "BITPIX", "BZERO", "BSCALE",
    "AIRMASS", "SECZ", "SITELAT", "SITELONG", "SITEELEV", "LAT-OBS", "LONG-OBS", "ALTITUDE",
    "OBSGEO-X", "OBSGEO-Y", "OBSGEO-Z", "TRIMSEC", "DATASEC", "BIASSEC", "SWCREATE",
    "CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CD1_1", "CD1_2", "CD2_1",
    "CD2_2", "CDELT1", "CDELT2", "PV1_1", "PV2_1", "A_ORDER", "A_2_0",
]  # fmt: skip

JUNK_STRINGS = [
    "LIGHT", "bias", "Flat Field", "DARK", "2019-03-26", "2019-03-26T02:27:31.13Z",
    "02:27:31.13", "31/12/99", "RA---TAN", "DEC--TAN", "RA---TAN-SIP", "3 3", "2x2",
    "+22 53 01.5", "04 12 12.4", "[1:10,1:10]", "LOCAL", "-7", "TheSkyX", "1e400", "nan",
]  # fmt: skip

junk_values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
    st.sampled_from(JUNK_STRINGS),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(-(2**62), 2**62),
    st.booleans(),
)


@st.composite
def junk_headers(draw) -> fits.Header:
    header = fits.Header()
    for key in draw(st.lists(st.sampled_from(KNOWN_KEYS), max_size=25, unique=True)):
        value = draw(junk_values)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header[key] = value
        except (ValueError, TypeError):
            continue
    return header


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    header=junk_headers(),
    path=st.sampled_from([None, "/n/bias/1.fits", "/n/lights/m51.fits", "/n/x.fits"]),
    offset=st.one_of(st.none(), st.floats(-14, 14)),
    exptime_s=st.floats(0, 1e5),
)
def test_junk_headers_raise_only_header_or_value_errors(header, path, offset, exptime_s):
    calls = (
        lambda: normalize_header(header, path=path, utc_offset_h=offset),
        lambda: classify_frame(header, path),
        lambda: header_wcs(header),
        lambda: parse_time(header, exptime_s, utc_offset_h=offset),
    )
    for call in calls:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = call()
        except (HeaderError, ValueError):
            continue
        if hasattr(result, "as_row"):
            row = result.as_row()
            assert row["frame_type"] in ("light", "dark", "bias", "flat")
            assert np.isnan(row["ra_deg"]) or 0 <= row["ra_deg"] < 360
            assert np.isnan(row["dec_deg"]) or -90 <= row["dec_deg"] <= 90


# Non-ASCII bytes in header values: astropy refuses to write them, but real files hold them (an
# observer's name, a degree sign in a comment, a Latin-1 filter name). As the file comes in, a
# frame is read, or skipped with a reason; nothing else.
STRING_KEYS = ["IMAGETYP", "DATE-OBS", "OBJECT", "FILTER", "OBJCTRA", "OBSERVER", "TRIMSEC"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    key=st.sampled_from(STRING_KEYS),
    raw=st.binary(min_size=1, max_size=12).filter(lambda b: any(c >= 0x80 for c in b)),
    in_comment=st.booleans(),
)
def test_non_ascii_header_bytes_are_read_or_skipped_with_a_reason(key, raw, in_comment):
    import tempfile
    from pathlib import Path

    from lcdask.stages.ingest import scan_frame

    header = fits.Header(
        {
            "IMAGETYP": "Light Frame",
            "DATE-OBS": "2024-05-01T03:00:00",
            "EXPTIME": 30.0,
            "OBJECT": "M51",
            "FILTER": "R",
            "OBJCTRA": "13 29 52.7",
            "OBSERVER": "someone",
        }
    )
    placeholder = "Q" * len(raw)
    if in_comment:
        header.set("COMMENT", placeholder)
    else:
        header[key] = placeholder
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "frame.fits"
        fits.PrimaryHDU(np.zeros((8, 8), np.uint16), header=header).writeto(path)
        data = path.read_bytes()
        end = data.index(b"END" + b" " * 77)
        assert data[:end].count(placeholder.encode()) == 1
        path.write_bytes(data[:end].replace(placeholder.encode(), raw) + data[end:])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row = scan_frame(path)
    assert isinstance(row, dict) and row["path"] == str(path)
    if "error" in row:
        assert str(path) in row["error"]
    else:
        assert row["frame_type"] in ("light", "dark", "bias", "flat")


def test_an_unparsable_type_card_is_no_type():
    """Hypothesis found it: IMAGETYP's value bytes ``\\t/\\x80`` make astropy raise VerifyError
    (not a ValueError) on reading the card; the frame is then one with no type, not a crash."""
    import tempfile
    from pathlib import Path

    from lcdask.stages.ingest import scan_frame

    header = fits.Header(
        {"IMAGETYP": "QQQ", "DATE-OBS": "2024-05-01T03:00:00", "EXPTIME": 30.0, "OBJECT": "M51"}
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "frame.fits"
        fits.PrimaryHDU(np.zeros((8, 8), np.uint16), header=header).writeto(path)
        data = path.read_bytes()
        path.write_bytes(data.replace(b"QQQ", b"\t/\x80", 1))  # within the quotes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row = scan_frame(path)
    assert "error" not in row, row
    assert row["frame_type"] == "light"  # no type: an exposure > 0 and an OBJECT
