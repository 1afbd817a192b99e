"""Reference catalogs: SDSS and Gaia parsed from recorded responses, the cache, local files.

The online paths run astroquery's real request and parsing code; only the lowest HTTP layer is
replaced: ``requests.Session.request`` for SkyServer (astroquery.sdss) and ``http.client``'s
connections for the Gaia archive's TAP client (astroquery.utils.tap). The response bodies in
``tests/data`` are written in the services' formats: SkyServer's CSV (``#Table1`` then a header)
and the Gaia archive's gzipped BINARY2 VOTable. Any socket connection fails the test.
"""

from __future__ import annotations

import gzip
import http.client
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
from numpy.testing import assert_allclose

from lcdask._utils.skygeom import separation_deg
from lcdask.catalogs import (
    CatalogError,
    FieldCircle,
    _query_circle,
    field_radius,
    filter_band,
    frames_query_circle,
    gaia_to_bands,
    load_catalog,
    query_gaia,
    query_sdss,
    reference_catalog,
    resolve_band,
)
from lcdask.config import CatalogConfig
from lcdask.errors import LcdaskError

DATA = Path(__file__).parent / "data"
SDSS_BODY = DATA / "sdss_dr17_sql_response.csv"
# SkyServer's CSV answer with no rows (a field outside the SDSS footprint): the header line only
SDSS_EMPTY_BODY = DATA / "sdss_dr17_sql_response_empty.csv"
GAIA_BODY = DATA / "gaia_dr3_sync_response.vot"
CENTRE = (150.05, 2.21)

pytestmark = pytest.mark.usefixtures("no_network")  # tests/conftest.py


@pytest.fixture
def skyserver(monkeypatch):
    """Replace requests' HTTP layer with the recorded SkyServer response; records the calls."""
    calls: list[dict] = []
    state = {"fail": False, "body": SDSS_BODY}

    def fake_request(self, method, url, **kwargs):
        calls.append({"method": method, "url": url, **kwargs})
        if state["fail"]:
            raise requests.ConnectionError("Failed to resolve 'skyserver.sdss.org'")
        response = requests.Response()
        response.status_code = 200
        response._content = state["body"].read_bytes()
        response.url = url
        response.encoding = "utf-8"
        response.headers["Content-Type"] = "text/plain; charset=utf-8"
        return response

    monkeypatch.setattr(requests.Session, "request", fake_request)
    return calls, state


class _FakeHTTPResponse:
    def __init__(self, status: int, body: bytes, headers: list[tuple[str, str]]):
        self.status = status
        self.reason = "OK" if status == 200 else "Error"
        self._body = body
        self._headers = headers

    def read(self, *args):
        body, self._body = self._body, b""
        return body

    def getheaders(self):
        return list(self._headers)

    def getheader(self, name, default=None):
        return dict((k.lower(), v) for k, v in self._headers).get(name.lower(), default)

    def __iter__(self):
        return iter(self.read().splitlines())


@pytest.fixture
def gaia_archive(monkeypatch):
    """Replace http.client's connections with the recorded Gaia archive responses."""
    calls: list[dict] = []

    class FakeConnection:
        def __init__(self, host, port=None, *args, **kwargs):
            self.host, self.port = host, port

        def request(self, method, url, body=None, headers=None, **kwargs):
            calls.append({"method": method, "host": self.host, "url": url, "body": body})

        def getresponse(self):
            url = calls[-1]["url"]
            if "notification" in url:  # the archive's status messages: none today
                return _FakeHTTPResponse(200, b"", [("Content-Type", "text/plain")])
            body = gzip.compress(GAIA_BODY.read_bytes())
            headers = [
                ("Content-Type", "application/x-votable+xml"),
                ("Content-Encoding", "gzip"),
                ("Content-Disposition", 'attachment;filename="1712337806100O-result.vot.gz"'),
            ]
            return _FakeHTTPResponse(200, body, headers)

        def close(self):
            pass

    monkeypatch.setattr(http.client, "HTTPSConnection", FakeConnection)
    monkeypatch.setattr(http.client, "HTTPConnection", FakeConnection)
    return calls


# --------------------------------------------------------------------------------------------
# SDSS


def test_query_sdss_parses_recorded_response(tmp_path, skyserver):
    calls, _ = skyserver
    cat = query_sdss(*CENTRE, 0.1, cache_dir=tmp_path)
    assert len(calls) == 1
    sql = calls[0]["params"]["cmd"]
    assert "fGetNearbyObjEq(150.050000, 2.210000, 6.0600)" in sql  # 0.101 deg in arcmin
    assert "p.type = 6" in sql and "p.clean = 1" in sql and "psfMag_r" in sql
    assert "skyserver.sdss.org/dr17" in calls[0]["url"]

    raw = pd.read_csv(SDSS_BODY, comment="#")
    assert len(cat) == len(raw) == 12
    assert list(cat.columns[:3]) == ["id", "ra", "dec"]
    for band in "ugriz":
        assert band in cat and f"{band}_err" in cat
    assert cat["id"].dtype == np.int64
    assert cat["id"].tolist() == raw["objid"].tolist()
    assert_allclose(cat["ra"], raw["ra"])
    assert_allclose(cat["r"], raw["psfMag_r"])
    assert_allclose(cat["g_err"], raw["psfMagErr_g"])
    assert np.isnan(cat["u"].iloc[-1]) and np.isnan(cat["u_err"].iloc[-1])  # SDSS's -9999
    assert (cat["source"] == "sdss-dr17").all()
    meta = cat.attrs["catalog"]
    assert meta["cache_hit"] is False and meta["service"].startswith("SDSS SkyServer DR17")


def test_sdss_cache_hit_avoids_http_and_works_offline(tmp_path, skyserver):
    calls, _ = skyserver
    first = query_sdss(*CENTRE, 0.1, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert [f.suffix for f in files] == [".parquet"], "one cache file, no temporary left"
    import pyarrow.parquet as pq

    meta = json.loads(pq.read_schema(files[0]).metadata[b"lcdask.catalog"])
    assert meta["catalog"] == "sdss-dr17" and meta["n_rows"] == 12
    assert {"query_time_utc", "service", "query", "versions"} <= set(meta)

    again = query_sdss(*CENTRE, 0.1, cache_dir=tmp_path)
    pd.testing.assert_frame_equal(again, first)
    # a smaller circle nearby is covered by the cached one: no query, rows cut to the circle
    inner = query_sdss(CENTRE[0] + 0.005, CENTRE[1], 0.03, cache_dir=tmp_path, offline=True)
    assert len(calls) == 1
    assert inner.attrs["catalog"]["cache_hit"] is True
    sep = separation_deg(CENTRE[0] + 0.005, CENTRE[1], inner["ra"], inner["dec"])
    assert (sep <= 0.03).all() and 0 < len(inner) < len(first)
    # a larger circle is not covered: a new query
    query_sdss(*CENTRE, 0.2, cache_dir=tmp_path)
    assert len(calls) == 2


def test_offline_without_cache_says_how_to_supply_a_file(tmp_path, skyserver):
    calls, _ = skyserver
    with pytest.raises(CatalogError, match="offline") as info:
        query_sdss(*CENTRE, 0.1, cache_dir=tmp_path, offline=True)
    message = str(info.value)
    assert "--catalog FILE" in message and "load_catalog" in message and str(tmp_path) in message
    assert isinstance(info.value, LcdaskError)
    assert calls == []
    with pytest.raises(CatalogError, match="offline"):
        query_gaia(*CENTRE, 0.1, cache_dir=tmp_path, offline=True)


def test_service_failure_is_a_catalog_error_and_caches_nothing(tmp_path, skyserver):
    _, state = skyserver
    state["fail"] = True
    with pytest.raises(CatalogError, match=r"failed.*ConnectionError.*--catalog FILE"):
        query_sdss(*CENTRE, 0.1, cache_dir=tmp_path)
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("ra", "dec", "radius", "message"),
    [(10.0, 95.0, 0.1, "dec"), (10.0, 0.0, 0.0, "radius_deg"), (np.nan, 0.0, 0.1, "finite")],
)
def test_query_bad_arguments(tmp_path, ra, dec, radius, message):
    with pytest.raises(ValueError, match=message):
        query_sdss(ra, dec, radius, cache_dir=tmp_path)


def test_query_circle_covers_the_request():
    rng = np.random.default_rng(0)
    for _ in range(200):
        ra, dec, radius = rng.uniform(0, 360), rng.uniform(-89, 89), rng.uniform(0.01, 2.0)
        ra_q, dec_q, radius_q = _query_circle(ra, dec, radius)
        assert separation_deg(ra, dec, ra_q, dec_q) + radius <= radius_q + 1e-12
        assert radius_q - radius < 0.003  # rounding costs at most ~3 steps of 0.001 deg


# --------------------------------------------------------------------------------------------
# Gaia


def test_query_gaia_parses_recorded_votable(tmp_path, gaia_archive):
    from astropy.table import Table

    cat = query_gaia(*CENTRE, 0.1, cache_dir=tmp_path, mag_limit=20.5)
    sync = [c for c in gaia_archive if c["url"].endswith("/sync")]
    assert len(sync) == 1 and sync[0]["method"] == "POST"
    assert sync[0]["host"] == "gea.esac.esa.int"
    body = sync[0]["body"]
    body = body.decode() if isinstance(body, bytes) else str(body)
    assert "gaiadr3.gaia_source" in body and "CONTAINS" in body and "20.50" in body

    raw = Table.read(GAIA_BODY, format="votable")
    assert len(cat) == len(raw) == 10
    assert cat["id"].dtype == np.int64 and cat["id"].tolist() == list(raw["source_id"])
    assert_allclose(cat["G"], raw["phot_g_mean_mag"], rtol=1e-6)
    # errors from the flux S/N: 2.5 / ln(10) / (flux / error)
    assert_allclose(cat["G_err"], 1.0857362 / raw["phot_g_mean_flux_over_error"], rtol=1e-5)
    assert np.isnan(cat["BP"].iloc[-1]) and np.isnan(cat["RP_err"].iloc[-1])  # masked in Gaia
    assert np.isfinite(cat["BP"].iloc[:-1]).all()
    assert "pmra" in cat and np.isnan(cat["pmra"].iloc[-1])
    assert (cat["source"] == "gaia-dr3").all()

    n_calls = len(gaia_archive)
    again = query_gaia(*CENTRE, 0.1, cache_dir=tmp_path)
    assert len(gaia_archive) == n_calls and again.attrs["catalog"]["cache_hit"]
    assert again.attrs["catalog"]["service"].startswith("ESA Gaia archive")


# --------------------------------------------------------------------------------------------
# local files


def _vizier_like(n: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "Seq": np.arange(1, n + 1, dtype=np.int64),
            "alpha": rng.uniform(150.0, 150.1, n),
            "delta": rng.uniform(2.2, 2.3, n),
            "Rc": rng.uniform(13, 18, n),
            "eRc": rng.uniform(0.01, 0.05, n),
            "notes": [f"star {i}" for i in range(n)],
        }
    )


def _write(table: pd.DataFrame, path: Path) -> None:
    from astropy.table import Table

    if path.suffix == ".parquet":
        table.to_parquet(path, index=False)
    elif path.suffix == ".csv":
        table.to_csv(path, index=False)
    elif path.suffix == ".ecsv":
        Table.from_pandas(table).write(path, format="ascii.ecsv")
    else:
        Table.from_pandas(table).write(path, format="fits")


@pytest.mark.parametrize("suffix", [".fits", ".ecsv", ".csv", ".parquet"])
def test_load_catalog_each_format_with_column_mapping(tmp_path, suffix):
    table = _vizier_like()
    path = tmp_path / f"field{suffix}"
    _write(table, path)
    cat = load_catalog(
        path, columns={"id": "Seq", "ra": "alpha", "dec": "delta", "r": "Rc", "r_err": "eRc"}
    )
    assert list(cat.columns) == ["id", "ra", "dec", "r", "r_err", "source", "notes"]
    assert cat["id"].tolist() == table["Seq"].tolist()
    assert_allclose(cat["ra"], table["alpha"])
    assert_allclose(cat["dec"], table["delta"])
    assert_allclose(cat["r"], table["Rc"])
    assert_allclose(cat["r_err"], table["eRc"])
    assert (cat["source"] == f"file:field{suffix}").all()
    assert cat.attrs["catalog"]["path"] == str(path)


@pytest.mark.parametrize("suffix", [".fits", ".parquet"])
def test_load_catalog_recognises_common_names(tmp_path, suffix):
    """The simulator's refcat and a VizieR download load without any mapping."""
    refcat = pd.DataFrame(
        {
            "objid": np.array([1237650000000000000, 1237650000000000001], dtype=np.int64),
            "ra": [150.0, 150.01],
            "dec": [20.0, 20.01],
            "g": [16.2, 17.9],
            "g_err": [0.015, 0.02],
            "r": [15.8, 17.1],
            "r_err": [0.015, 0.018],
        }
    )
    path = tmp_path / f"refcat{suffix}"
    _write(refcat, path)
    cat = load_catalog(path)
    assert list(cat.columns) == ["id", "ra", "dec", "g", "g_err", "r", "r_err", "source"]
    assert cat["id"].tolist() == refcat["objid"].tolist()
    assert_allclose(cat["r"], refcat["r"])

    vizier = pd.DataFrame(
        {"RAJ2000": [150.0], "DEJ2000": [20.0], "rmag": [15.0], "e_rmag": [0.02], "gmag": [99.0]}
    )
    path = tmp_path / f"vizier{suffix}"
    _write(vizier, path)
    cat = load_catalog(path)
    assert cat["r"].iloc[0] == 15.0 and cat["r_err"].iloc[0] == 0.02
    assert np.isnan(cat["g"].iloc[0]) and np.isnan(cat["g_err"].iloc[0])  # 99: no measurement


def test_load_catalog_sexagesimal_csv(tmp_path):
    path = tmp_path / "targets.csv"
    path.write_text("# a comment line\nname,RA,DEC,V,V_err\nA,10:00:00.0,+02:12:36.0,12.5,0.01\n")
    cat = load_catalog(path)
    assert_allclose(cat["ra"], 150.0)
    assert_allclose(cat["dec"], 2.21)
    assert cat["id"].tolist() == ["A"] and cat["V"].iloc[0] == 12.5


def test_load_catalog_errors(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "missing.fits")
    path = tmp_path / "field.csv"
    _write(_vizier_like(), path)
    with pytest.raises(CatalogError, match=r"\['RA_deg'\].*columns are"):
        load_catalog(path, columns={"ra": "RA_deg", "dec": "delta"})
    nopos = tmp_path / "nopos.csv"
    _write(_vizier_like().drop(columns=["alpha", "delta"]), nopos)
    with pytest.raises(CatalogError, match=r"ra/dec.*columns="):
        load_catalog(nopos)
    odd = tmp_path / "field.dat"
    odd.write_text("x")
    with pytest.raises(CatalogError, match="format="):
        load_catalog(odd)
    with pytest.raises(ValueError, match="format must be"):
        load_catalog(path, format="xls")


# --------------------------------------------------------------------------------------------
# field radius


def _wcs(ra: float, dec: float, rot_deg: float, n: int = 1000, scale_arcsec: float = 1.0):
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(n + 1) / 2, (n + 1) / 2]
    c, s = np.cos(np.deg2rad(rot_deg)), np.sin(np.deg2rad(rot_deg))
    w.wcs.cd = scale_arcsec / 3600.0 * np.array([[-c, s], [s, c]])
    w.pixel_shape = (n, n)
    return w


def test_field_radius_covers_every_frame():
    frames = [_wcs(150.0 + 0.01 * k, 20.0 - 0.005 * k, 10.0 * k) for k in range(5)]
    circle = field_radius(frames, margin_arcmin=0.0)
    assert isinstance(circle, FieldCircle)
    for w in frames:  # every pixel of every frame, sampled along the edges, is inside
        t = np.linspace(-0.5, 999.5, 50)
        x = np.concatenate([t, t, np.full(50, -0.5), np.full(50, 999.5)])
        y = np.concatenate([np.full(50, -0.5), np.full(50, 999.5), t, t])
        ra, dec = w.pixel_to_world_values(x, y)
        assert (separation_deg(circle.ra, circle.dec, ra, dec) <= circle.radius_deg + 1e-9).all()
    # a 1000" square frame has a half-diagonal of 707"; five offset frames need a bit more
    assert 0.196 < circle.radius_deg < 0.26
    assert field_radius(frames, margin_arcmin=2.0).radius_deg == pytest.approx(
        circle.radius_deg + 2 / 60
    )


def test_field_radius_corners_skycoord_and_ra_wrap():
    from astropy.coordinates import SkyCoord

    corners = np.array([[[359.9, -0.1], [0.1, -0.1], [0.1, 0.1], [359.9, 0.1]]])
    circle = field_radius(corners, margin_arcmin=0.0)
    assert circle.ra == pytest.approx(0.0, abs=1e-9) or circle.ra == pytest.approx(360.0)
    assert circle.radius_deg == pytest.approx(np.hypot(0.1, 0.1), rel=1e-3)
    sky = SkyCoord(corners[0, :, 0], corners[0, :, 1], unit="deg")
    assert field_radius(sky, margin_arcmin=0.0).radius_deg == pytest.approx(circle.radius_deg)


def test_field_radius_errors():
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    with pytest.raises(ValueError, match="shape"):
        field_radius([w])
    assert field_radius([w], shape=(10, 10)).radius_deg > 0
    with pytest.raises(TypeError, match="field_radius takes"):
        field_radius(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="margin_arcmin"):
        field_radius(np.zeros((1, 2)), margin_arcmin=-1)


# --------------------------------------------------------------------------------------------
# Gaia to SDSS / Johnson-Cousins bands (Riello et al. 2021, Table C.2)


def test_gaia_to_bands_hand_computed_from_recorded_votable(tmp_path, gaia_archive):
    cat = gaia_to_bands(query_gaia(*CENTRE, 0.1, cache_dir=tmp_path))
    for band in ("g", "r", "i", "V", "R", "I"):
        assert band in cat and f"{band}_err" in cat
    # star 0: G = 13.340346, BP - RP = 1.077949; star 3: G = 15.352986, BP - RP = 1.72463.
    # Written out by hand from Table C.2: G - r = -0.09837 + 0.08592 c + 0.1907 c^2
    # - 0.1701 c^3 + 0.02263 c^4; G - V = -0.02704 + 0.01424 c - 0.2156 c^2 + 0.01426 c^3;
    # G - I = 0.01753 + 0.76 c - 0.0991 c^2; G - i = -0.293 + 0.6404 c - 0.09609 c^2
    # - 0.002104 c^3. Tolerance 1e-4 mag: the VOTable's magnitudes are float32 (~1e-6 relative).
    assert cat["r"].iloc[0] == pytest.approx(13.30701, abs=1e-4)
    assert cat["V"].iloc[0] == pytest.approx(13.58470, abs=1e-4)
    assert cat["I"].iloc[0] == pytest.approx(12.61873, abs=1e-4)
    assert cat["i"].iloc[3] == pytest.approx(14.83813, abs=1e-4)
    # errors: at least the relation's scatter, and the scatter dominates for a bright star
    assert cat["r_err"].iloc[0] == pytest.approx(0.03776, abs=2e-4)
    assert (cat["V_err"].dropna() >= 0.03017).all()
    # the last star has no BP/RP: no transformed band, but its position and G stay
    assert np.isnan(cat["r"].iloc[-1]) and np.isfinite(cat["G"].iloc[-1])
    columns = list(cat.columns)
    assert columns.index("I_err") < columns.index("source")  # bands before the provenance
    assert cat.attrs["catalog"]["catalog"] == "gaia-dr3"


def test_gaia_to_bands_respects_colour_ranges():
    colours = np.array([-0.2, 0.2, 2.5, 4.2, 5.5])
    table = pd.DataFrame(
        {
            "id": np.arange(5),
            "ra": np.zeros(5),
            "dec": np.zeros(5),
            "G": np.full(5, 15.0),
            "G_err": np.full(5, 0.001),
            "BP": 15.0 + colours / 2,
            "BP_err": np.full(5, 0.01),
            "RP": 15.0 - colours / 2,
            "RP_err": np.full(5, 0.01),
            "source": "gaia-dr3",
        }
    )
    cat = gaia_to_bands(table)
    finite = {b: np.isfinite(cat[b]).tolist() for b in ("g", "r", "i", "V", "R", "I")}
    # Table C.1: g 0.3-3.0, r 0.0-3.0, i 0.5-2.0, V -0.5-5.0, R 0.0-4.0, I -0.5-4.5
    assert finite["g"] == [False, False, True, False, False]
    assert finite["r"] == [False, True, True, False, False]
    assert finite["i"] == [False, False, False, False, False]
    assert finite["V"] == [True, True, True, True, False]
    assert finite["R"] == [False, True, True, False, False]
    assert finite["I"] == [True, True, True, True, False]
    assert (np.isfinite(cat["V_err"]) == np.isfinite(cat["V"])).all()
    with pytest.raises(ValueError, match="BP"):
        gaia_to_bands(table.drop(columns=["BP"]))


# --------------------------------------------------------------------------------------------
# the run's reference catalog


def _sync_calls(gaia_calls):
    return [c for c in gaia_calls if c["url"].endswith("/sync")]


def test_reference_sdss_where_it_covers_the_field(tmp_path, skyserver, gaia_archive):
    calls, _ = skyserver
    table, how = reference_catalog(
        CatalogConfig(), path=None, ra=CENTRE[0], dec=CENTRE[1], radius_deg=0.1, cache_dir=tmp_path
    )
    assert len(calls) == 1 and _sync_calls(gaia_archive) == []
    assert len(table) == 12 and (table["source"] == "sdss-dr17").all()
    assert how.startswith("SDSS DR17 around (150.0500, +2.2100)")


def test_reference_outside_sdss_is_gaia_with_the_band(tmp_path, skyserver, gaia_archive, caplog):
    calls, state = skyserver
    state["body"] = SDSS_EMPTY_BODY
    table, how = reference_catalog(
        CatalogConfig(), path=None, ra=CENTRE[0], dec=CENTRE[1], radius_deg=0.1, cache_dir=tmp_path
    )
    assert len(calls) == 1 and len(_sync_calls(gaia_archive)) == 1
    assert len(table) == 10 and (table["source"] == "gaia-dr3").all()
    assert table["r"].iloc[0] == pytest.approx(13.30701, abs=1e-4)  # hand-computed above
    assert "outside its footprint" in how and "Riello et al. 2021" in how
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    # a band SDSS lacks (V): SDSS is not asked, Gaia gives it
    table, how = reference_catalog(
        CatalogConfig(), path=None, ra=CENTRE[0], dec=CENTRE[1], radius_deg=0.1,
        cache_dir=tmp_path, band="V",
    )  # fmt: skip
    assert len(calls) == 1 and table["V"].iloc[0] == pytest.approx(13.58470, abs=1e-4)


def test_reference_source_gaia_never_asks_sdss(tmp_path, skyserver, gaia_archive):
    calls, _ = skyserver
    table, how = reference_catalog(
        CatalogConfig(source="gaia"), path=None, ra=CENTRE[0], dec=CENTRE[1], radius_deg=0.1,
        cache_dir=tmp_path,
    )  # fmt: skip
    assert calls == [] and len(_sync_calls(gaia_archive)) == 1
    assert (table["source"] == "gaia-dr3").all() and "r" in table and how.startswith("Gaia DR3")


def test_reference_source_sdss_outside_footprint_is_none(tmp_path, skyserver, gaia_archive, caplog):
    _, state = skyserver
    state["body"] = SDSS_EMPTY_BODY
    table, line = reference_catalog(
        CatalogConfig(source="sdss"), path=None, ra=CENTRE[0], dec=CENTRE[1], radius_deg=0.1,
        cache_dir=tmp_path,
    )  # fmt: skip
    assert table is None and _sync_calls(gaia_archive) == []
    assert "SDSS has no stars here" in line
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [line]


def test_reference_offline_without_cache_one_line(tmp_path, skyserver, gaia_archive, caplog):
    calls, _ = skyserver
    caplog.set_level("DEBUG", logger="lcdask")
    table, line = reference_catalog(
        CatalogConfig(offline=True), path=None, ra=CENTRE[0], dec=CENTRE[1], radius_deg=0.1,
        cache_dir=tmp_path,
    )  # fmt: skip
    assert table is None and calls == [] and gaia_archive == []
    expected = (
        "no reference catalog (offline, nothing cached): photometry relative; plate solving "
        "blind by solve-field where installed"
    )
    assert line == expected
    assert [r.getMessage() for r in caplog.records if r.levelno >= 20] == [expected]


def test_reference_network_unreachable_is_offline(tmp_path, skyserver, gaia_archive, caplog):
    calls, state = skyserver
    state["fail"] = True  # requests.ConnectionError: name resolution failed
    table, line = reference_catalog(
        CatalogConfig(), path=None, ra=CENTRE[0], dec=CENTRE[1], radius_deg=0.1, cache_dir=tmp_path
    )
    assert table is None and len(calls) == 1
    assert _sync_calls(gaia_archive) == []  # Gaia from its cache only: no second timeout
    assert line.startswith("no reference catalog (offline, nothing cached)")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [line]


def test_reference_cache_hit_offline(tmp_path, skyserver, gaia_archive):
    calls, _ = skyserver
    online, _ = reference_catalog(
        CatalogConfig(source="gaia"), path=None, ra=CENTRE[0], dec=CENTRE[1], radius_deg=0.1,
        cache_dir=tmp_path,
    )  # fmt: skip
    n_gaia = len(gaia_archive)
    # offline, "auto": SDSS has nothing cached, the cached Gaia query is used
    cached, how = reference_catalog(
        CatalogConfig(offline=True), path=None, ra=CENTRE[0], dec=CENTRE[1], radius_deg=0.05,
        cache_dir=tmp_path,
    )  # fmt: skip
    assert calls == [] and len(gaia_archive) == n_gaia
    assert cached.attrs["catalog"]["cache_hit"] is True
    assert "no cached SDSS query" in how
    inside = separation_deg(*CENTRE, online["ra"], online["dec"]) <= 0.05
    assert cached["id"].tolist() == online["id"][inside].tolist()
    assert_allclose(cached["r"], online["r"][inside])


def test_reference_file_none_and_missing_band(tmp_path, skyserver, gaia_archive):
    calls, state = skyserver
    path = tmp_path / "field.csv"
    pd.DataFrame({"ra": [150.0], "dec": [2.2], "r": [15.0], "r_err": [0.02]}).to_csv(path)
    table, how = reference_catalog(
        CatalogConfig(source="file", path=str(path)), path=None, ra=np.nan, dec=np.nan,
        radius_deg=np.nan, cache_dir=tmp_path,
    )  # fmt: skip
    assert table["r"].tolist() == [15.0] and how == f"catalog file {path}"
    assert reference_catalog(
        CatalogConfig(source="none"), path=None, ra=0.0, dec=0.0, radius_deg=0.1,
        cache_dir=tmp_path,
    )[0] is None  # fmt: skip
    # u outside SDSS: no Gaia relation gives u, so no catalog, said why
    state["body"] = SDSS_EMPTY_BODY
    table, line = reference_catalog(
        CatalogConfig(), path=None, ra=CENTRE[0], dec=CENTRE[1], radius_deg=0.1,
        cache_dir=tmp_path, band="u",
    )  # fmt: skip
    assert table is None and "Gaia gives no 'u'" in line and "--catalog FILE" in line
    assert len(calls) == 1  # SDSS asked once (for the u run); 'none' and the file never query
    # z outside SDSS (the XO-1 frames' filter): Gaia DR3's G - z relation
    table, line = reference_catalog(
        CatalogConfig(), path=None, ra=CENTRE[0], dec=CENTRE[1], radius_deg=0.1,
        cache_dir=tmp_path, band="z",
    )  # fmt: skip
    colour = table["BP"] - table["RP"]
    expected = table["G"] - np.polynomial.Polynomial((-0.4619, 0.8992, -0.08271, 0.005029))(colour)
    assert "Gaia DR3" in line and np.isfinite(table["z"]).sum() > 0
    assert_allclose(table["z"].dropna(), expected[table["z"].notna()], atol=1e-9)


def test_frames_query_circle():
    shape = (1000, 1000)
    # header WCS: covers every frame's corners from the pointing, plus the margin
    frames = [_wcs(150.0 + 0.01 * k, 20.0, 0.0) for k in range(3)]
    circle, how = frames_query_circle(150.0, 20.0, shape=shape, wcs_list=frames)
    corners = np.concatenate(
        [w.pixel_to_world_values([-0.5, 999.5], [-0.5, 999.5]) for w in frames], axis=1
    )
    reach = separation_deg(150.0, 20.0, corners[0], corners[1]).max()
    assert circle.radius_deg == pytest.approx(reach + 10 / 60, abs=1e-9) and "WCS" in how
    # a pixel scale: half the diagonal (707 px) at 5.2"/px = 1.021 deg, plus 10'
    circle, how = frames_query_circle(150.0, 20.0, shape=shape, pixel_scale_arcsec=5.2)
    assert circle.radius_deg == pytest.approx(0.5 * np.hypot(1000, 1000) * 5.2 / 3600 + 10 / 60)
    assert "5.2" in how
    # neither: a generous 1 deg, said so
    circle, how = frames_query_circle(150.0, 20.0, shape=shape)
    assert circle.radius_deg == 1.0 and "generous 1 deg" in how
    assert frames_query_circle(np.nan, np.nan, shape=shape)[0] is None


@pytest.mark.parametrize(
    ("name", "band"),
    [
        ("r", "r"), ("R", "R"), ("z", "z"), ("Z", "z"), ("r'", "r"), ("rp", "r"),
        ("sdss r", "r"), ("Sloan_i", "i"), ("SDSS-g", "g"), ("Rc", "R"), ("Ic", "I"),
        ("V", "V"), ("Bessell V", "V"), ("B", "B"), ("clear", None), ("L", None),
        ("Lum", None), ("", None), ("Ha", None), ("OIII", None),
    ],
)  # fmt: skip
def test_filter_band(name, band):
    assert filter_band(name) == band


def test_resolve_band():
    assert resolve_band("V", ["z"]) == ("V", "V (configured)")
    band, why = resolve_band("auto", ["z"] * 80 + ["r"])  # XO-1: z, and one frame in r
    assert band == "z" and "'z'" in why and "1 other filter" in why
    band, why = resolve_band("auto", ["Clear"] * 3)
    assert band == "r" and "names no catalog band" in why
