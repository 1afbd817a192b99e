"""Tests of lcdask.io.headers: unit tests of each header variant, and the real frames."""

from __future__ import annotations

import collections
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import EarthLocation, SkyCoord, get_body
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS
from numpy.testing import assert_allclose

from lcdask.errors import FrameError, HeaderError
from lcdask.io.headers import (
    FrameMeta,
    bjd_tdb,
    classify_frame,
    header_wcs,
    normalize_header,
    parse_section,
    parse_time,
)

DATA = Path("/work/shared/data")
C14 = DATA / "asteroid2713_c14" / "frames"
LOWELL = DATA / "asteroid5945_lowell42"
ONE_SECOND_DAYS = 1.0 / 86400.0
ONE_MS_DAYS = 1e-3 / 86400.0


def make_header(cards: dict | None = None, **comments: str) -> fits.Header:
    """An astropy Header from a dict; keyword arguments give comments (``DATE_OBS="..."``)."""
    header = fits.Header()
    for key, value in (cards or {}).items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # HIERARCH for long keys such as READNOISE
            header[key] = value
    for key, comment in comments.items():
        header.comments[key.replace("_", "-")] = comment
    return header


def light(**cards) -> fits.Header:
    """A minimal light-frame header, with the given cards added (``_`` in names becomes ``-``)."""
    base = {"IMAGETYP": "Light Frame", "EXPTIME": 60.0, "DATE-OBS": "2020-01-02T03:04:05"}
    base.update({k.replace("__", "-"): v for k, v in cards.items()})
    return make_header(base)


def mjd_of(iso: str) -> float:
    return Time(iso, format="isot", scale="utc").mjd


# ------------------------------------------------------------------------------------------------
# Frame type
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("IMAGETYP", "Light Frame", "light"),
        ("IMAGETYP", "LIGHT", "light"),
        ("IMAGETYP", "light", "light"),
        ("IMAGETYP", "object", "light"),
        ("OBSTYPE", "OBJECT", "light"),
        ("IMAGETYP", "science", "light"),
        ("IMAGTYPE", "SCI", "light"),
        ("IMAGETYP", "Dark Frame", "dark"),
        ("FRAMETYP", "DARK", "dark"),
        ("IMAGETYP", "Dark Flat", "dark"),
        ("IMAGETYP", "Bias Frame", "bias"),
        ("IMAGETYP", "zero", "bias"),
        ("EXPTYPE", "BIAS", "bias"),
        ("IMAGETYP", "Offset", "bias"),
        ("IMAGETYP", "Flat Field", "flat"),
        ("IMGTYPE", "FLAT", "flat"),
        ("IMAGETYP", "SKYFLAT", "flat"),
        ("OBSTYPE", "DOMEFLAT", "flat"),
        ("IMAGETYP", "twilight flat", "flat"),
        ("IMAGETYP", "  Flat Frame  ", "flat"),
    ],
)
def test_classify_frame_from_type_keys(key, value, expected):
    header = make_header({key: value, "EXPTIME": 10.0})
    assert classify_frame(header) == expected


def test_classify_frame_first_recognised_key_wins():
    header = make_header({"IMAGETYP": "arc lamp", "OBSTYPE": "BIAS", "EXPTIME": 0.0})
    assert classify_frame(header) == "bias"


@pytest.mark.parametrize("value", ["DARK", "Dark Frame"])
def test_dark_with_zero_exposure_is_a_bias(value):
    assert classify_frame(make_header({"IMAGETYP": value, "EXPTIME": 0.0})) == "bias"
    assert classify_frame(make_header({"IMAGETYP": value, "EXPTIME": 30.0})) == "dark"


@pytest.mark.parametrize(
    ("pict", "expected"), [(1, "light"), (2, "bias"), (3, "dark"), (4, "flat")]
)
def test_classify_frame_from_sbig_picttype(pict, expected):
    assert classify_frame(make_header({"PICTTYPE": pict, "EXPTIME": 5.0})) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/night1/bias/0001.fits", "bias"),
        ("/night1/zero/0001.fits", "bias"),
        ("/night1/darks/d_300s_0001.fits", "dark"),
        ("/night1/flats/V/0001.fits", "flat"),
        ("/night1/calib/flat_0001.fits", "flat"),
        ("/night1/science/0001.fits.gz", "light"),
        ("/night1/lights/M51_0001.fit", "light"),
        ("/night1/lux-180.000secs.Bias.Open.00000046.fit.gz", "bias"),
        ("/data/raw/SkyFlat-V-001.fits", "flat"),
    ],
)
def test_classify_frame_from_path(path, expected):
    assert classify_frame(make_header({"EXPTIME": 1.0}), path) == expected


def test_classify_frame_from_calibration_object_name():
    assert classify_frame(make_header({"OBJECT": "bias", "EXPTIME": 0.0})) == "bias"


@pytest.mark.parametrize(
    ("cards", "path"),
    [
        ({}, None),
        ({"IMAGETYP": "COMPARISON"}, "/night1/raw/0001.fits"),
        ({"IMAGETYP": 7, "OBJECT": "M51"}, None),
    ],
)
def test_classify_frame_raises_when_it_cannot_tell(cards, path):
    with pytest.raises(HeaderError, match="cannot tell the frame type"):
        classify_frame(make_header(cards), path)


def test_header_error_is_a_frame_error():
    with pytest.raises(FrameError):
        classify_frame(make_header({}), "/x/y.fits")


# ------------------------------------------------------------------------------------------------
# Time
# ------------------------------------------------------------------------------------------------
START = "2019-03-26T02:27:31.130"
EXPTIME = 300.0
MID = mjd_of(START) + EXPTIME / 2 / 86400


@pytest.mark.parametrize(
    ("cards", "source"),
    [
        ({"DATE-OBS": "2019-03-26T02:27:31.130"}, "DATE-OBS + EXPTIME/2"),
        ({"DATE-OBS": "2019-03-26 02:27:31.130"}, "DATE-OBS"),
        ({"DATE-OBS": "2019-03-26T02:27:31.130Z"}, "DATE-OBS"),
        ({"DATE-OBS": "2019-03-26T02:27:31.1300000004"}, "DATE-OBS"),
        ({"DATE-OBS": "2019-03-26T02:27:31.130 UT"}, "DATE-OBS"),
        ({"DATE-OBS": "2019-03-26T04:27:31.130+02:00"}, "DATE-OBS"),
        ({"DATE_OBS": "2019-03-26T02:27:31.130"}, "DATE_OBS"),
        ({"DATE-BEG": "2019-03-26T02:27:31.130"}, "DATE-BEG"),
        ({"DATE-OBS": "2019-03-26", "TIME-OBS": "02:27:31.13"}, "DATE-OBS (date) + TIME-OBS"),
        ({"DATE-OBS": "2019-03-26", "UT": "02:27:31.13"}, "+ UT +"),
        ({"DATE-OBS": "2019-03-26", "UT-OBS": "2:27:31.13"}, "UT-OBS"),
        ({"DATE-OBS": "2019-03-26", "UTSTART": "02:27:31.13"}, "UTSTART"),
        ({"DATE-OBS": "2019-03-26", "UTCSTART": "02:27:31.13"}, "UTCSTART"),
        ({"DATE-OBS": "2019-03-26", "UTC-OBS": "02 27 31.13"}, "UTC-OBS"),
        ({"DATE-OBS": "2019-03-26", "TIME-BEG": "02:27:31.13"}, "TIME-BEG"),
        ({"DATE-OBS": "26/03/19", "TIME-OBS": "02:27:31.13"}, "TIME-OBS"),
        ({"DATE-OBS": "2019-03-26", "UT": 2 + 27 / 60 + 31.13 / 3600}, "+ UT +"),
        ({"MJD-OBS": mjd_of(START)}, "MJD-OBS (MJD)"),
        ({"JD": mjd_of(START) + 2400000.5}, "JD (JD)"),
        ({"JD-OBS": mjd_of(START) + 2400000.5}, "JD-OBS"),
        ({"JULDAT": mjd_of(START) + 2400000.5}, "JULDAT"),
        ({"DATE-AVG": "2019-03-26T02:30:01.130"}, "DATE-AVG (mid-exposure)"),
        ({"MJD-AVG": MID}, "MJD-AVG"),
        ({"MIDTIMJD": MID + 2400000.5}, "MIDTIMJD (JD) (mid-exposure)"),
        ({"MJD-MID": MID}, "MJD-MID"),
        ({"JD-MID": MID + 2400000.5}, "JD-MID"),
        ({"DATE-END": "2019-03-26T02:32:31.130"}, "DATE-END - EXPTIME/2"),
        ({"DATE-OBS": "2019-03-26", "UTCEND": "02:32:31.13"}, "UTCEND - EXPTIME/2"),
    ],
)
def test_parse_time_variants(cards, source):
    mjd, desc = parse_time(make_header(cards), EXPTIME)
    assert source in desc
    # float64 JD near 2.46e6 resolves 40 us; the ISO strings are exact to 1 ms
    assert abs(mjd - MID) < ONE_MS_DAYS


def test_parse_time_precedence_mid_then_start():
    header = make_header(
        {"DATE-OBS": "2019-03-26T02:27:00", "MJD-OBS": 1.0, "MIDTIMJD": MID + 2400000.5}
    )
    mjd, desc = parse_time(header, EXPTIME)
    assert desc.startswith("MIDTIMJD")
    del header["MIDTIMJD"]
    mjd, desc = parse_time(header, EXPTIME)
    assert desc.startswith("DATE-OBS")
    assert abs(mjd - (mjd_of("2019-03-26T02:27:00") + 150 / 86400)) < ONE_MS_DAYS


def test_full_date_obs_wins_over_time_obs():
    header = make_header({"DATE-OBS": "2019-03-26T02:27:31.13", "TIME-OBS": "05:00:00"})
    mjd, _ = parse_time(header, EXPTIME)
    assert abs(mjd - MID) < ONE_MS_DAYS


def test_leap_second_day_matches_astropy():
    header = make_header({"DATE-OBS": "2016-12-31T23:59:60.5"})
    mjd, _ = parse_time(header, 0.0)
    assert Time(mjd, format="mjd", scale="utc").isot == "2016-12-31T23:59:60.500"


@pytest.mark.parametrize(
    ("cards", "offset_arg", "offset_h"),
    [
        ({"TIMESYS": "LOCAL", "TIMEZONE": -7}, None, -7.0),
        ({"TIMESYS": "LOCAL", "UTCOFFSET": "-07:00"}, None, -7.0),
        ({"TIMESYS": "LOCAL", "TZ": "UTC+5:30"}, None, 5.5),
        ({"LOCALTIM": True, "TZ": 2}, None, 2.0),
        ({}, -7.0, -7.0),
        ({"TIMESYS": "LOCAL", "TIMEZONE": 3}, 1.0, 1.0),  # the argument wins
    ],
)
def test_local_time_is_converted_and_noted(cards, offset_arg, offset_h):
    base = {"IMAGETYP": "LIGHT", "EXPTIME": 60.0, "DATE-OBS": "2020-01-02T03:04:05"}
    header = make_header({**base, **cards})
    meta = normalize_header(header, utc_offset_h=offset_arg)
    expected = mjd_of("2020-01-02T03:04:05") - offset_h / 24 + 30 / 86400
    assert abs(meta.time_mjd - expected) < ONE_MS_DAYS
    assert any("local time" in note and f"UTC{offset_h:+g}" in note for note in meta.notes)


def test_date_obs_comment_saying_local():
    header = light(TIMEZONE=-5)
    header.comments["DATE-OBS"] = "local time of exposure start"
    meta = normalize_header(header)
    assert abs(meta.time_mjd - (mjd_of("2020-01-02T08:04:05") + 30 / 86400)) < ONE_MS_DAYS


def test_date_loc_used_when_no_utc_key():
    header = make_header(
        {"IMAGETYP": "LIGHT", "EXPTIME": 60.0, "DATE-LOC": "2020-01-01T20:04:05", "TZ": -7}
    )
    meta = normalize_header(header)
    assert abs(meta.time_mjd - (mjd_of("2020-01-02T03:04:05") + 30 / 86400)) < ONE_MS_DAYS
    assert "DATE-LOC" in meta.time_source


def test_local_time_without_offset_raises():
    header = light(TIMESYS="LOCAL")
    with pytest.raises(HeaderError, match=r"local time .*pass utc_offset_h"):
        parse_time(header, 60.0)


def test_sbig_localtim_string_is_not_taken_as_local_date_obs():
    header = light(LOCALTIM="01/01/2020 10:04:05.000 PM")
    mjd, _ = parse_time(header, 60.0)
    assert abs(mjd - (mjd_of("2020-01-02T03:04:05") + 30 / 86400)) < ONE_MS_DAYS


def test_timesys_tt_is_converted_to_utc():
    header = light(TIMESYS="TT")
    meta = normalize_header(header)
    utc = Time("2020-01-02T03:04:05", scale="tt").utc.mjd + 30 / 86400
    assert abs(meta.time_mjd - utc) < ONE_MS_DAYS  # TT - UTC = 69.184 s in 2020
    assert any("TIMESYS" in note for note in meta.notes)


@pytest.mark.parametrize(
    ("cards", "match"),
    [
        ({}, "no usable observation time"),
        ({"DATE-OBS": "2019-03-26"}, "no usable observation time"),
        ({"DATE-OBS": "not a date"}, r"DATE-OBS: 'not a date' is not a date"),
        ({"DATE-OBS": "2019-03-26", "UT": "25:61:00"}, "UT: .*out of range"),
        ({"MJD-OBS": "soon"}, "MJD-OBS='soon' is not a number"),
        ({"DATE-OBS": "2019-02-30T01:00:00"}, "DATE-OBS"),
    ],
)
def test_parse_time_errors(cards, match):
    with pytest.raises(HeaderError, match=match):
        parse_time(make_header(cards), 10.0)


def test_normalize_header_time_error_names_the_file():
    header = make_header({"IMAGETYP": "LIGHT", "EXPTIME": 10.0})
    with pytest.raises(HeaderError, match=r"/night/m51_001\.fits: no usable observation time"):
        normalize_header(header, path="/night/m51_001.fits")


def test_calibration_frame_without_time_gets_nan_and_a_note():
    meta = normalize_header(make_header({"IMAGETYP": "BIAS", "EXPTIME": 0.0}))
    assert np.isnan(meta.time_mjd)
    assert any("no usable time" in note for note in meta.notes)


# ------------------------------------------------------------------------------------------------
# Exposure, filter, object
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "value", "seconds"),
    [
        ("EXPTIME", 180.0, 180.0),
        ("EXPTIME", "180.0", 180.0),
        ("EXPOSURE", 30, 30.0),
        ("EXP_TIME", 2.5, 2.5),
        ("ITIME", 12.0, 12.0),
        ("TELAPSE", 301.47, 301.47),
        ("EXPTIMEMS", 1500, 1.5),
        ("EXPOINUS", 2_000_000, 2.0),
    ],
)
def test_exposure_keys(key, value, seconds):
    header = make_header({"IMAGETYP": "LIGHT", key: value, "DATE-OBS": "2020-01-02T03:04:05"})
    meta = normalize_header(header)
    assert meta.exptime_s == pytest.approx(seconds)
    assert meta.time_mjd == pytest.approx(mjd_of("2020-01-02T03:04:05") + seconds / 2 / 86400)


def test_missing_exposure_for_bias_is_zero():
    meta = normalize_header(make_header({"IMAGETYP": "BIAS", "DATE-OBS": "2020-01-02T03:04:05"}))
    assert meta.exptime_s == 0.0
    assert meta.time_mjd == pytest.approx(mjd_of("2020-01-02T03:04:05"), abs=ONE_MS_DAYS)


@pytest.mark.parametrize("frame_type", ["LIGHT", "DARK", "FLAT"])
def test_missing_exposure_raises_for_light_dark_flat(frame_type):
    header = make_header({"IMAGETYP": frame_type, "DATE-OBS": "2020-01-02T03:04:05"})
    with pytest.raises(HeaderError, match=r"f\.fits: no exposure time \(EXPTIME/EXPOSURE\)"):
        normalize_header(header, path="f.fits")


def test_unreadable_exposure_raises():
    header = make_header({"IMAGETYP": "LIGHT", "EXPTIME": "long", "DATE-OBS": "2020-01-02"})
    with pytest.raises(HeaderError, match="EXPTIME='long' is not a number of seconds"):
        normalize_header(header)


@pytest.mark.parametrize(
    ("cards", "expected"),
    [
        ({"FILTER": "V       "}, "V"),
        ({"FILTER1": "r'"}, "r'"),
        ({"FILTNAME": "VR"}, "VR"),
        ({"FILTERS": "B"}, "B"),
        ({"FILTER": "Open", "FILTNAME": "VR"}, "Open"),
        ({}, ""),
    ],
)
def test_filter(cards, expected):
    assert normalize_header(light(**cards)).filter == expected


def test_object_name():
    assert normalize_header(light(OBJECT=" 2713 Luxembourg ")).object == "2713 Luxembourg"
    assert normalize_header(light()).object == ""


# ------------------------------------------------------------------------------------------------
# Pointing
# ------------------------------------------------------------------------------------------------
RA_HMS = 63.05166666666667  # 04 12 12.4
DEC_DMS = 22.88375  # +22 53 01.5


@pytest.mark.parametrize(
    ("ra_key", "ra", "dec_key", "dec", "ra_deg", "dec_deg"),
    [
        ("OBJCTRA", "04 12 12.4", "OBJCTDEC", "+22 53 01.5", RA_HMS, DEC_DMS),
        ("RA", "04:12:12.4", "DEC", "+22:53:01.5", RA_HMS, DEC_DMS),
        ("TELRA", "04h12m12.4s", "TELDEC", "22d53m01.5s", RA_HMS, DEC_DMS),
        ("RA", 63.0516666, "DEC", 22.88375, 63.0516666, 22.88375),
        ("RA", "124.6186", "DEC", "25.3289", 124.6186, 25.3289),
        ("RA", "08:18:28", "DEC", "+25:19:59", 124.6166667, 25.3330556),
        ("RA_OBJ", 10.0, "DEC_OBJ", -5.5, 10.0, -5.5),
        ("RA", "23 59 59.99", "DEC", "-00 30 00", 359.99995833, -0.5),
        ("RA", "00 00 00", "DEC", "-89 59 59.9", 0.0, -89.99997222),
    ],
)
def test_pointing_formats(ra_key, ra, dec_key, dec, ra_deg, dec_deg):
    meta = normalize_header(light(**{ra_key: ra, dec_key: dec}))
    assert meta.ra_deg == pytest.approx(ra_deg, abs=1e-6)
    assert meta.dec_deg == pytest.approx(dec_deg, abs=1e-6)


def test_numeric_ra_with_hours_comment_is_hours():
    header = light(RA=8.3, DEC=25.0)
    header.comments["RA"] = "right ascension in hours"
    assert normalize_header(header).ra_deg == pytest.approx(124.5)


def test_pointing_absent_or_junk_is_nan():
    assert np.isnan(normalize_header(light()).ra_deg)
    meta = normalize_header(light(RA="north-ish", DEC="+95:00:00"))
    assert np.isnan(meta.ra_deg)
    assert np.isnan(meta.dec_deg)
    assert any("could not read the pointing" in note for note in meta.notes)


def test_pointing_skips_blank_pair():
    meta = normalize_header(light(OBSRA="", OBSDEC="", TELRA="01:00:00", TELDEC="+10:00:00"))
    assert (meta.ra_deg, meta.dec_deg) == pytest.approx((15.0, 10.0))


def test_jnow_pointing_is_precessed():
    meta = normalize_header(light(RA=10.0, DEC=20.0, EQUINOX=2020.0))
    # 20 years of precession move RA by ~0.28 deg at this position
    assert 0.2 < 10.0 - meta.ra_deg < 0.35


# ------------------------------------------------------------------------------------------------
# Camera numbers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cards", "binning"),
    [
        ({"XBINNING": 2, "YBINNING": 2}, (2, 2)),
        ({"XBINNING": 1, "YBINNING": 3}, (1, 3)),
        ({"CCDSUM": "3 3"}, (3, 3)),
        ({"CCDSUM": "2 1 "}, (2, 1)),
        ({"BINNING": "2x2"}, (2, 2)),
        ({"BINNING": "4"}, (4, 4)),
        ({"BINNING": 2}, (2, 2)),
        ({}, (1, 1)),
        ({"CCDSUM": "lots"}, (1, 1)),
    ],
)
def test_binning(cards, binning):
    meta = normalize_header(light(**cards))
    assert (meta.binning_x, meta.binning_y) == binning


@pytest.mark.parametrize(
    ("cards", "gain"),
    [
        ({"GAIN": 1.5}, 1.5),
        ({"EGAIN": 2.07}, 2.07),
        ({"CCDGAIN": 4.0}, 4.0),
        ({"GAINE": "0.8"}, 0.8),
        ({"GAIN": 120, "EGAIN": 0.25}, 0.25),  # CMOS: GAIN is the camera setting
        ({"GAIN": 120}, float("nan")),
        ({"AAMP_01": 1, "AAMP_02": 0, "AGAIN_01": 4.95, "AGAIN_02": 4.81}, 4.95),
        ({}, float("nan")),
    ],
)
def test_gain(cards, gain):
    assert_allclose(normalize_header(light(**cards)).gain_e_adu, gain)


@pytest.mark.parametrize(
    ("cards", "rdnoise"),
    [
        ({"RDNOISE": 9.3}, 9.3),
        ({"READNOIS": 7.0}, 7.0),
        ({"RON": 3.2}, 3.2),
        ({"READNOISE": 1.1}, 1.1),
        ({"AAMP_01": 1, "ARDNS_01": 9.3, "AAMP_02": 0, "ARDNS_02": 8.9}, 9.3),
        ({}, float("nan")),
    ],
)
def test_read_noise(cards, rdnoise):
    assert_allclose(normalize_header(light(**cards)).rdnoise_e, rdnoise)


@pytest.mark.parametrize(
    ("cards", "saturate"),
    [
        ({"SATURATE": 60000.0}, 60000.0),
        ({"SATLEVEL": 50000}, 50000.0),
        ({"MAXLIN": 45000}, 45000.0),
        ({"DATAMAX": 65000}, 65000.0),
        ({"BITPIX": 16, "BZERO": 32768}, 65535.0),
        ({"BITPIX": 16}, 32767.0),
        ({"BITPIX": 8}, 255.0),
        ({"BITPIX": 32, "BZERO": 2147483648}, 4294967295.0),
        ({"BITPIX": -32}, float("nan")),
        ({"ADCBITS": 12, "BITPIX": 16, "BZERO": 32768}, 4095.0),
    ],
)
def test_saturation(cards, saturate):
    assert_allclose(normalize_header(light(**cards)).saturate_adu, saturate)


def test_saturation_from_bitpix_notes_the_12_bit_caveat():
    meta = normalize_header(light(BITPIX=16, BZERO=32768))
    assert any("12- or 14-bit" in note for note in meta.notes)


@pytest.mark.parametrize(
    ("cards", "airmass"),
    [({"AIRMASS": 1.23}, 1.23), ({"SECZ": "1.5"}, 1.5), ({"AIRMASS": 0.2}, float("nan"))],
)
def test_airmass(cards, airmass):
    assert_allclose(normalize_header(light(**cards)).airmass, airmass)


# ------------------------------------------------------------------------------------------------
# Site
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cards", "lat", "lon", "height"),
    [
        (
            {"LATITUDE": 35.09675, "LONGITUD": -111.5355, "ALTITUDE": 2206.0},
            35.09675,
            -111.5355,
            2206.0,
        ),
        ({"LAT-OBS": 19.8, "LONG-OBS": 204.5, "ALT-OBS": 4200.0}, 19.8, -155.5, 4200.0),
        ({"SITELAT": "+42 36 36.00", "SITELONG": "-71 29 06.00"}, 42.61, -71.485, float("nan")),
        (
            {"OBSLAT": "-29:15:21", "OBSLONG": "-70:44:21", "OBSALT": 2380},
            -29.25583,
            -70.73917,
            2380,
        ),
        ({"SITELAT": "N42 36 36", "SITELONG": "71 29 06 W"}, 42.61, -71.485, float("nan")),
        ({"SITELAT": 42.61, "SITELONG": 71.485, "SITEELEV": 100.0}, 42.61, 71.485, 100.0),
    ],
)
def test_site(cards, lat, lon, height):
    meta = normalize_header(light(**cards))
    assert_allclose(
        [meta.site_lat_deg, meta.site_lon_deg, meta.site_height_m], [lat, lon, height], atol=1e-4
    )


def test_west_positive_longitude_from_theskyx_is_flipped_and_noted():
    meta = normalize_header(light(SITELAT="+42 36 36", SITELONG="+71 29 06", SWCREATE="TheSkyX 10"))
    assert meta.site_lon_deg == pytest.approx(-71.485)
    assert any("west-positive" in note for note in meta.notes)


def test_west_positive_longitude_from_local_clock():
    # Local clock 4 h behind UTC puts the site west: a +71.5 longitude must be west-positive.
    header = light(SITELONG="+71 29 06", LOCALTIM="01/01/2020 11:04:05.000 PM DST")
    meta = normalize_header(header)
    assert meta.site_lon_deg == pytest.approx(-71.485)
    assert any("UTC-4" in note for note in meta.notes)


def test_west_longitude_comment():
    header = light(SITELONG=111.5)
    header.comments["SITELONG"] = "longitude, degrees west"
    assert normalize_header(header).site_lon_deg == pytest.approx(-111.5)


def test_altitude_above_90_is_a_height():
    assert normalize_header(light(ALTITUDE=2206.0)).site_height_m == 2206.0


def test_altitude_angle_is_not_taken_as_height():
    header = light(ALTITUDE=45.0)
    header.comments["ALTITUDE"] = "telescope altitude angle"
    assert np.isnan(normalize_header(header).site_height_m)


def test_obsgeo_xyz():
    xyz = EarthLocation.from_geodetic(-111.5967, 31.9583, 2120.0).to_geocentric()
    header = light(**{f"OBSGEO-{c}": v.to_value(u.m) for c, v in zip("XYZ", xyz, strict=True)})
    meta = normalize_header(header)
    assert meta.site_lat_deg == pytest.approx(31.9583, abs=1e-6)  # Kitt Peak
    assert meta.site_lon_deg == pytest.approx(-111.5967, abs=1e-6)
    assert meta.site_height_m == pytest.approx(2120.0, abs=1e-3)


# ------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("[18:1382,1:1370]", (slice(0, 1370), slice(17, 1382))),
        ("[1388:1432,1:1370]", (slice(0, 1370), slice(1387, 1432))),
        ("[ 1 : 10 , 5 : 6 ]", (slice(4, 6), slice(0, 10))),
        ("[100:1,50:1]", (slice(0, 50), slice(0, 100))),
        ("[1:1,1:1]", (slice(0, 1), slice(0, 1))),
        ("[*,1:20]", (slice(0, 20), slice(None))),
    ],
)
def test_parse_section(section, expected):
    assert parse_section(section) == expected


def test_parse_section_indexes_the_right_pixels():
    image = np.arange(50 * 40).reshape(50, 40)  # image[y, x]
    cut = image[parse_section("[3:5,10:11]")]
    assert cut.shape == (2, 3)
    assert cut[0, 0] == image[9, 2]  # FITS pixel (x=3, y=10) is numpy [9, 2]


@pytest.mark.parametrize(
    "junk", ["", "[1:10]", "1:10,1:10", "[0:10,1:10]", "[a:b,1:2]", "[1:10,1:10,1:2]", "[-1:5,1:2]"]
)
def test_parse_section_rejects_junk(junk):
    with pytest.raises(ValueError, match="section"):
        parse_section(junk)


def test_bad_trimsec_is_noted_not_kept():
    meta = normalize_header(light(TRIMSEC="[1:100]", BIASSEC="[101:110,1:50]"))
    assert meta.trimsec == ""
    assert meta.biassec == "[101:110,1:50]"
    assert any("TRIMSEC" in note for note in meta.notes)


def test_datasec_when_no_trimsec():
    assert normalize_header(light(DATASEC="[2:99,1:50]")).trimsec == "[2:99,1:50]"


# ------------------------------------------------------------------------------------------------
# WCS
# ------------------------------------------------------------------------------------------------
def tan_cards(as_strings: bool) -> dict:
    cards = {
        "CTYPE1": "RA---TAN",
        "CTYPE2": "DEC--TAN",
        "CRVAL1": 124.6185920672,
        "CRVAL2": 25.32885681452,
        "CRPIX1": 716.0,
        "CRPIX2": 685.0,
        "CD1_1": -0.0003073728745725,
        "CD1_2": 1.223604312691e-05,
        "CD2_1": 1.223604312691e-05,
        "CD2_2": 0.0003073728745725,
    }
    return {k: (str(v) if as_strings and k[:2] in ("CR", "CD") else v) for k, v in cards.items()}


@pytest.mark.parametrize("as_strings", [False, True])
def test_header_wcs_with_numbers_or_strings(as_strings):
    wcs = header_wcs(make_header(tan_cards(as_strings)))
    assert wcs is not None
    ra, dec = wcs.pixel_to_world_values(715.0, 684.0)  # CRPIX is 1-based
    assert_allclose([ra, dec], [124.6185920672, 25.32885681452], atol=1e-9)


def test_string_wcs_is_null_without_coercion():
    """The trap header_wcs exists for: astropy alone gives CRVAL (0, 0)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = WCS(make_header(tan_cards(as_strings=True)))
    assert_allclose(raw.wcs.crval, [0.0, 0.0])


def test_header_wcs_sip_string_keys():
    cards = tan_cards(as_strings=True)
    cards.update({"CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP", "A_ORDER": "2"})
    cards.update({"B_ORDER": "2", "A_2_0": "1e-5", "B_0_2": "-1e-5"})
    wcs = header_wcs(make_header(cards))
    assert wcs is not None and wcs.sip is not None
    assert wcs.sip.a[2, 0] == pytest.approx(1e-5)


@pytest.mark.parametrize(
    "change",
    [
        {"CTYPE1": "Linear Unbinned ADC Pixels", "CTYPE2": "Linear Unbinned ADC Pixels"},
        {"CTYPE1": None, "CTYPE2": None},
        {"CD1_1": None, "CD1_2": None, "CD2_1": None, "CD2_2": None},
        {"CD1_1": 0.0, "CD1_2": 0.0, "CD2_1": 0.0, "CD2_2": 0.0},
        {"CRVAL1": "abc"},
    ],
)
def test_header_wcs_none_when_unusable(change):
    cards = tan_cards(as_strings=False)
    for key, value in change.items():
        if value is None:
            cards.pop(key)
        else:
            cards[key] = value
    assert header_wcs(make_header(cards)) is None


def test_wcs_header_string_in_frame_meta():
    meta = normalize_header(light(**tan_cards(as_strings=True)))
    wcs = WCS(fits.Header.fromstring(meta.wcs_header))
    assert_allclose(wcs.wcs.crval, [124.6185920672, 25.32885681452])


# ------------------------------------------------------------------------------------------------
# Barycentric time
# ------------------------------------------------------------------------------------------------
def test_bjd_tdb_against_geometry():
    """Towards the anti-Sun point the barycentric correction is +|r_earth|/c (~499 s)."""
    t = Time("2019-03-26T06:00:00", scale="utc")
    sun = get_body("sun", t)  # geocentric direction (GCRS); aberration (20") does not matter
    anti_ra, anti_dec = (sun.ra.deg + 180.0) % 360.0, -sun.dec.deg
    r_au = np.linalg.norm(get_body("earth", t).icrs.cartesian.xyz.to_value(u.au))
    light_s = r_au * 499.004784  # 1 au / c in seconds
    lowell = (35.09675, -111.5355, 2206.0)
    bjd_anti = bjd_tdb(t.mjd, anti_ra, anti_dec, *lowell)
    bjd_sun = bjd_tdb(t.mjd, sun.ra.deg, sun.dec.deg, *lowell)
    tdb_minus_utc = 69.184  # TT - UTC in 2019; TDB - TT is below 2 ms
    # 0.1 s: the Sun is ~0.005 AU from the barycentre direction; the site adds < 21 ms
    assert (bjd_anti - t.jd) * 86400 == pytest.approx(tdb_minus_utc + light_s, abs=3.0)
    assert (bjd_sun - t.jd) * 86400 == pytest.approx(tdb_minus_utc - light_s, abs=3.0)
    # Opposite directions: the corrections cancel (to the Roemer delay's linearity).
    assert ((bjd_anti + bjd_sun) / 2 - t.jd) * 86400 == pytest.approx(tdb_minus_utc, abs=0.01)


def test_bjd_tdb_equals_astropys_light_travel_time():
    """Without the IERS tables (UT1 = UTC, no polar motion) the same as astropy's with them.

    Site terms differ by < 3 microseconds; a full JD in float64 is rounded to ~20 microseconds.
    A site term missing (up to 21 ms) or wrong in sign would show by three orders of magnitude.
    """
    rng = np.random.default_rng(7)
    n = 60
    mjd = rng.uniform(51000, 60000, n)  # final IERS values: astropy needs no download
    ra, dec = rng.uniform(0, 360, n), np.rad2deg(np.arcsin(rng.uniform(-1, 1, n)))
    lat, lon, height = rng.uniform(-70, 70, n), rng.uniform(-180, 180, n), rng.uniform(0, 5e3, n)
    times = Time(
        mjd, format="mjd", scale="utc", location=EarthLocation.from_geodetic(lon, lat, height)
    )
    expected = times.tdb + times.light_travel_time(SkyCoord(ra, dec, unit="deg"))
    ours = bjd_tdb(mjd, ra, dec, lat, lon, height)
    assert np.max(np.abs((ours - expected.jd1) - expected.jd2)) * 86400 < 25e-6
    # a night beyond the IERS predictions (astropy would need a download) is still timed
    assert np.isfinite(bjd_tdb(70000.3, 124.6, 25.3, 35.1, -111.5, 0.0))


def test_bjd_tdb_arrays_and_nan():
    mjd = np.array([58568.1, 58568.2, 58568.3])
    out = bjd_tdb(mjd, np.array([124.6, np.nan, 124.6]), 25.3, 35.1, -111.5, np.nan)
    assert out.shape == (3,)
    assert np.isnan(out[1])
    assert np.all(np.abs(out[[0, 2]] - (mjd[[0, 2]] + 2400000.5)) < 600 / 86400)
    assert np.isnan(bjd_tdb(58568.1, 124.6, 25.3, np.nan, -111.5, 0.0))
    assert isinstance(bjd_tdb(58568.1, 124.6, 25.3, 35.1, -111.5, 0.0), float)


# ------------------------------------------------------------------------------------------------
# FrameMeta
# ------------------------------------------------------------------------------------------------
def test_frame_meta_fields_and_row():
    names = [f.name for f in dataclasses.fields(FrameMeta)]
    assert names == [
        "frame_type",
        "time_mjd",
        "time_source",
        "exptime_s",
        "filter",
        "object",
        "ra_deg",
        "dec_deg",
        "airmass",
        "binning_x",
        "binning_y",
        "gain_e_adu",
        "rdnoise_e",
        "saturate_adu",
        "trimsec",
        "biassec",
        "site_lat_deg",
        "site_lon_deg",
        "site_height_m",
        "date_obs",
        "wcs_header",
        "notes",
    ]
    meta = normalize_header(light(BITPIX=16, BZERO=32768, TRIMSEC="[1:2,1:2]"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.exptime_s = 1.0
    row = meta.as_row()
    assert list(row) == names
    assert all(isinstance(v, str | int | float) for v in row.values())
    assert isinstance(row["notes"], str) and "65535" in row["notes"]
    assert row["date_obs"] == "2020-01-02T03:04:05"


# ------------------------------------------------------------------------------------------------
# Real frames
# ------------------------------------------------------------------------------------------------
needs_c14 = pytest.mark.skipif(not C14.is_dir(), reason="asteroid2713_c14 frames not present")
needs_lowell = pytest.mark.skipif(not LOWELL.is_dir(), reason="asteroid5945_lowell42 not present")


@pytest.fixture(scope="module")
def c14_headers() -> dict[Path, fits.Header]:
    return {p: fits.getheader(p) for p in sorted(C14.glob("*.fit*"))}


@pytest.fixture(scope="module")
def lowell_headers() -> dict[Path, fits.Header]:
    return {p: fits.getheader(p) for p in sorted(LOWELL.glob("*/*.fits*"))}


@needs_c14
def test_c14_frame_types(c14_headers):
    counts = collections.Counter(classify_frame(h, p) for p, h in c14_headers.items())
    assert counts == {"light": 25, "dark": 5, "bias": 10}


@needs_c14
def test_c14_frame_types_from_file_names_alone(c14_headers):
    for path, header in c14_headers.items():
        stripped = header.copy()
        for key in ("IMAGETYP", "PICTTYPE"):
            del stripped[key]
        assert classify_frame(stripped, path) == classify_frame(header, path)


@needs_c14
def test_c14_metadata(c14_headers):
    metas = [normalize_header(h, path=p) for p, h in c14_headers.items()]
    for meta in metas:
        start = mjd_of(meta.date_obs)
        # DATE-OBS is the UTC exposure start: mid - exptime/2 must give it back (1 s)
        assert abs(meta.time_mjd - meta.exptime_s / 2 / 86400 - start) < ONE_SECOND_DAYS
        assert meta.exptime_s == (0.0 if meta.frame_type == "bias" else 180.0)
        assert meta.ra_deg == pytest.approx(63.05, abs=0.01)  # OBJCTRA ~ 04 12 12.4
        assert meta.dec_deg == pytest.approx(22.884, abs=0.01)  # OBJCTDEC ~ +22 53 01.5
        assert meta.gain_e_adu == pytest.approx(2.07)  # EGAIN
        assert meta.saturate_adu == 65535.0  # BITPIX 16, BZERO 32768
        assert (meta.binning_x, meta.binning_y) == (1, 1)
        assert meta.filter == "Open"
        # MIT Wallace Observatory: 42.61 N, 71.485 W; TheSkyX writes SITELONG west-positive
        assert meta.site_lat_deg == pytest.approx(42.61, abs=1e-3)
        assert meta.site_lon_deg == pytest.approx(-71.485, abs=1e-3)
        assert meta.wcs_header == ""
    lights = sorted(m.time_mjd for m in metas if m.frame_type == "light")
    # The lights start between 02:03 and 03:23 UT on 2018-10-13.
    assert mjd_of("2018-10-13T02:03:00") < lights[0] - 90 / 86400
    assert lights[-1] - 90 / 86400 < mjd_of("2018-10-13T03:24:00")


@needs_lowell
def test_lowell_frame_types(lowell_headers):
    counts = collections.Counter(classify_frame(h, p) for p, h in lowell_headers.items())
    assert counts == {"light": 11, "flat": 5, "bias": 5}
    for path, header in lowell_headers.items():
        assert classify_frame(header, path) == {"science": "light"}.get(
            path.parent.name, path.parent.name
        )


@needs_lowell
def test_lowell_metadata(lowell_headers):
    for path, header in lowell_headers.items():
        meta = normalize_header(header, path=path)
        assert meta.gain_e_adu == pytest.approx(4.95)  # AGAIN_01, amplifier 1 in use
        assert meta.rdnoise_e == pytest.approx(9.3)
        assert (meta.binning_x, meta.binning_y) == (3, 3)  # CCDSUM '3 3'
        assert meta.trimsec == "[18:1382,1:1370]"
        assert meta.biassec == "[1388:1432,1:1370]"
        image = np.zeros((header["NAXIS2"], header["NAXIS1"]))
        assert image[parse_section(meta.trimsec)].shape == (1370, 1365)
        assert image[parse_section(meta.biassec)].shape == (1370, 45)
        assert meta.site_lon_deg == pytest.approx(-111.5355)  # 'east longitude' comment
        assert meta.site_height_m == pytest.approx(2206.0)
        assert meta.filter == "VR"
        if meta.frame_type == "light":
            assert meta.exptime_s == 300.0
            assert meta.time_mjd == pytest.approx(header["MIDTIMJD"] - 2400000.5, abs=1e-9)
            assert meta.ra_deg == pytest.approx(124.62, abs=0.02)  # TCS RA '08:18:29.9'
        else:
            assert meta.wcs_header == ""  # 'Linear Unbinned ADC Pixels' is not celestial


@needs_lowell
def test_lowell_start_time_agrees_with_midtimjd(lowell_headers):
    for path, header in lowell_headers.items():
        if path.parent.name != "science":
            continue
        start_only = header.copy()
        del start_only["MIDTIMJD"]
        mjd, source = parse_time(start_only, header["EXPTIME"])
        assert source == "DATE-OBS (date) + UTCSTART + EXPTIME/2"
        # MIDTIMJD = UTCSTART + 150 s to its 10 ms print precision
        assert abs(mjd - (header["MIDTIMJD"] - 2400000.5)) * 86400 < 0.02


@needs_lowell
def test_lowell_science_wcs(lowell_headers):
    for path, header in lowell_headers.items():
        if path.parent.name != "science":
            continue
        wcs = header_wcs(header)
        assert wcs is not None
        assert "RA---TPV" in wcs.to_header_string(relax=True)  # SCAMP TAN + PV read as TPV
        centre = ((header["NAXIS1"] - 1) / 2, (header["NAXIS2"] - 1) / 2)
        ra, dec = wcs.pixel_to_world_values(*centre)
        assert ra == pytest.approx(124.62, abs=0.05)  # PROVENANCE: centre 124.6186, +25.3289
        assert dec == pytest.approx(25.33, abs=0.05)
        meta = normalize_header(header, path=path)
        again = WCS(fits.Header.fromstring(meta.wcs_header))
        assert_allclose(again.pixel_to_world_values(*centre), (ra, dec), atol=1e-9)


@needs_lowell
def test_lowell_classification_from_folder_when_type_keys_are_gone(lowell_headers):
    for path, header in lowell_headers.items():
        stripped = header.copy()
        for key in ("IMAGETYP", "OBSTYPE"):
            del stripped[key]
        expected = {"science": "light"}.get(path.parent.name, path.parent.name)
        assert classify_frame(stripped, path) == expected


def test_a_stale_airmass_gives_way_to_the_altitude():
    """MaxIm DL's AIRMASS = 13.37 while OBJCTALT says 77 deg (the XO-1 b night)."""
    from lcdask.io.headers import airmass_of_altitude

    header = {
        "IMAGETYP": "Light Frame", "DATE-OBS": "2025-06-02T05:26:24.460", "EXPTIME": 60.0,
        "AIRMASS": 13.3748135344, "OBJCTALT": 77.236,
    }  # fmt: skip
    meta = normalize_header(header)
    assert meta.airmass == pytest.approx(1.0253, abs=1e-3)  # 1 / sin(77.236 deg), refracted
    assert any("AIRMASS=13.375 disagrees with OBJCTALT" in n for n in meta.notes)
    consistent = normalize_header(header | {"AIRMASS": 1.139, "OBJCTALT": 61.372})
    assert consistent.airmass == 1.139 and not consistent.notes  # the header's, when it agrees
    assert airmass_of_altitude(90.0) == pytest.approx(1.0, abs=5e-4)  # the formula: 0.9997
    assert airmass_of_altitude(30.0) == pytest.approx(1.995, abs=0.005)  # Kasten & Young
