"""Target names through SIMBAD, parsed from a recorded response; the cache; offline errors.

The online path runs astroquery's real `Simbad.query_object` and pyvo's TAP client; only the
lowest HTTP layer is replaced, ``requests.Session.request`` (as for SDSS in test_catalogs). It
serves SIMBAD's VOSI capabilities (pyvo reads the output limit there) and the TAP sync answer for
"Vega", both in ``tests/data`` in the service's formats. Any socket connection fails the test.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import requests
import urllib3
from numpy.testing import assert_allclose

from lcdask.cli import main
from lcdask.errors import LcdaskError
from lcdask.targets import TargetError, looks_like_coordinates, resolve_target

DATA = Path(__file__).parent / "data"
SYNC_BODY = DATA / "simbad_tap_sync_vega.vot"
CAPABILITIES = DATA / "simbad_tap_capabilities.xml"
VEGA = (279.23473479166665, 38.78368894444444)  # SIMBAD: 18 36 56.33635 +38 47 01.2802 (ICRS)

pytestmark = pytest.mark.usefixtures("no_network")  # tests/conftest.py


@pytest.fixture
def simbad(monkeypatch):
    """Replace requests' HTTP layer with SIMBAD's recorded answers; records the calls."""
    calls: list[dict] = []
    state = {"fail": False}

    def fake_request(self, method, url, **kwargs):
        calls.append({"method": method, "url": url, **kwargs})
        if state["fail"]:
            raise requests.ConnectionError("Failed to resolve 'simbad.cds.unistra.fr'")
        if url.endswith("/capabilities"):
            body, kind = CAPABILITIES.read_bytes(), "text/xml"
        elif url.endswith("/sync"):
            body, kind = SYNC_BODY.read_bytes(), "application/x-votable+xml"
        else:
            raise AssertionError(f"unexpected SIMBAD request {method} {url}")
        response = requests.Response()
        response.status_code = 200
        response.url = url
        response.headers["Content-Type"] = kind
        response.raw = urllib3.HTTPResponse(
            body=io.BytesIO(body), headers={"Content-Type": kind}, status=200,
            preload_content=False,
        )  # fmt: skip
        return response

    monkeypatch.setattr(requests.Session, "request", fake_request)
    return calls, state


def test_name_resolved_by_simbad_from_recorded_response(tmp_path, simbad):
    calls, _ = simbad
    target = resolve_target("Vega", cache_dir=tmp_path)
    assert target.source == "simbad"
    assert_allclose((target.ra, target.dec), VEGA, rtol=0, atol=1e-9)  # as SIMBAD gives them
    assert target.name == "* alf Lyr" and target.given == "Vega"
    sync = [c for c in calls if c["url"].endswith("/sync")]
    assert len(sync) == 1 and sync[0]["method"] == "POST"
    assert sync[0]["url"] == "https://simbad.cds.unistra.fr/simbad/sim-tap/sync"
    query = dict(sync[0]["data"])["QUERY"]
    assert "WHERE id = 'Vega'" in query and 'basic."ra"' in query
    cached = json.loads(Path(target.cache_file).read_text())
    assert cached["main_id"] == "* alf Lyr" and cached["query"] == query
    assert Path(target.cache_file).parent == tmp_path


def test_cached_name_needs_no_network_and_works_offline(tmp_path, simbad):
    calls, state = simbad
    resolve_target("Vega", cache_dir=tmp_path)
    n_calls = len(calls)
    state["fail"] = True
    for offline in (False, True):
        # the cache key ignores case and repeated spaces, as SIMBAD does
        target = resolve_target("  vega ", cache_dir=tmp_path, offline=offline)
        assert target.source == "cache"
        assert (target.ra, target.dec) == pytest.approx(VEGA, abs=1e-12)
    assert len(calls) == n_calls


def test_offline_without_cache_says_to_give_coordinates(tmp_path, simbad):
    calls, _ = simbad
    with pytest.raises(TargetError, match=r"offline.*'Vega'.*RA DEC"):
        resolve_target("Vega", cache_dir=tmp_path, offline=True)
    assert calls == []


def test_service_failure_is_one_error_and_caches_nothing(tmp_path, simbad):
    _, state = simbad
    state["fail"] = True
    with pytest.raises(TargetError, match=r"cannot resolve the target name 'Vega'.*RA DEC") as e:
        resolve_target("Vega", cache_dir=tmp_path)
    assert "\n" not in str(e.value)  # the CLI prints it as one line
    assert not list(tmp_path.glob("simbad_*"))
    assert issubclass(TargetError, LcdaskError)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("279.2347 38.7837", (279.2347, 38.7837)),
        ("18:36:56.33635 +38:47:01.2802", VEGA),
        ("18h36m56.33635s +38d47m01.2802s", VEGA),
        ((279.2347, 38.7837), (279.2347, 38.7837)),
    ],
)
def test_coordinates_are_given_not_resolved(tmp_path, simbad, given, expected):
    calls, _ = simbad
    target = resolve_target(given, cache_dir=tmp_path)
    assert target.source == "given"
    assert (target.ra, target.dec) == pytest.approx(expected, abs=1e-9)
    assert calls == []


def test_what_looks_like_coordinates():
    assert looks_like_coordinates("10:00:24.5, -20:18:00")
    assert not looks_like_coordinates("WASP-12")
    assert not looks_like_coordinates("M 101")
    with pytest.raises(ValueError, match="Dec must be within"):
        resolve_target("150 95")  # coordinates, wrong ones: never sent to SIMBAD


def test_cli_offline_unknown_name_is_one_line(tmp_path, simbad, capsys, monkeypatch):
    # serial (no cluster): the name is resolved before any work
    monkeypatch.setattr("lcdask.cluster.client_from_config", lambda c: contextlib.nullcontext())
    config = tmp_path / "offline.toml"
    config.write_text(f'[catalog]\noffline = true\ncache_dir = "{tmp_path / "cache"}"\n')
    frames = tmp_path / "frames"
    frames.mkdir()
    status = main(
        ["run", str(frames), "--out", str(tmp_path / "run"), "--config", str(config),
         "--target", "Vega"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("lcdask run: error: offline, and no cached SIMBAD answer")
    assert "RA DEC" in err
    assert not (tmp_path / "run").exists()  # nothing started
