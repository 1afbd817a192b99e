"""Light-curve export: CSV, ECSV and FITS round trips against the light-curve cube."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.table import Table
from test_report import write_simulated_run

from lcdask.export import EXPORT_COLUMNS, export_lightcurves, lightcurve_table, select_sources

VALUE_COLUMNS = [c for c in EXPORT_COLUMNS if c not in ("source_id", "frame")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    _, ds, sources = write_simulated_run(run_dir, coadd=False)
    return run_dir, ds.load(), sources


def _read(path, fmt: str) -> pd.DataFrame:
    if fmt == "csv":
        return pd.read_csv(path)
    if fmt == "ecsv":
        return Table.read(path, format="ascii.ecsv").to_pandas()
    return Table.read(path, format="fits", hdu="LIGHTCURVES").to_pandas()


def _cube_values(ds, table: pd.DataFrame) -> dict[str, np.ndarray]:
    """The cube's values at the (source_id, frame) of each exported row."""
    si = np.searchsorted(ds["source_id"].to_numpy(), table["source_id"].to_numpy())
    fi = np.searchsorted(ds["frame"].to_numpy(), table["frame"].to_numpy())
    out = {}
    for name in VALUE_COLUMNS:
        var = ds[name]
        out[name] = var.to_numpy()[fi] if var.dims == ("frame",) else var.to_numpy()[si, fi]
    return out


def _measured(ds, ids) -> int:
    flags = ds["flags"].sel(source=np.isin(ds["source_id"], ids)).to_numpy()
    return int((((flags & 256) == 0) | ((flags & 512) != 0)).sum())


@pytest.mark.parametrize("fmt", ["csv", "ecsv", "fits"])
def test_round_trip_is_exact(run, tmp_path, fmt):
    run_dir, ds, sources = run
    # the variables, the movers and every 10th source: all classes, quick to write
    ids = np.union1d(
        sources.loc[sources["kind"] != "stable", "source_id"], sources["source_id"][::10]
    )
    (path,) = export_lightcurves(run_dir, tmp_path / f"lc.{fmt}", fmt=fmt, sources=ids)
    assert path == tmp_path / f"lc.{fmt}"
    table = _read(path, fmt)
    assert list(table.columns) == list(EXPORT_COLUMNS)  # bjd_tdb included: the cube has it
    assert len(table) == _measured(ds, ids)  # entries without a measurement are left out
    assert set(table["source_id"]) == set(ids)
    cube = _cube_values(ds, table)
    for name in VALUE_COLUMNS:
        # exact: CSV floats are written in their shortest round-trip form, ECSV and FITS too
        np.testing.assert_array_equal(table[name].to_numpy(), cube[name], err_msg=name)


def test_ecsv_units_and_metadata(run, tmp_path):
    run_dir, _, sources = run
    (path,) = export_lightcurves(run_dir, tmp_path, fmt="ecsv", sources="moving")
    assert path == tmp_path / "lightcurves.ecsv"
    table = Table.read(path, format="ascii.ecsv")
    assert table["time_mjd"].unit == "d"
    assert table["flux"].unit == "adu"
    assert table["flux_jy"].unit == "Jy"
    assert table["mag"].unit == "mag"
    assert table["ra"].unit == "deg" and table["dec"].unit == "deg"
    assert table["rel_flux"].unit is None
    assert table.meta["time_scale"] == "utc"
    movers = sources[sources["kind"] == "moving"].set_index("source_id")
    meta = {m["source_id"]: m for m in table.meta["sources"]}
    assert set(meta) == set(movers.index)
    for sid, m in meta.items():
        assert m["kind"] == "moving"
        assert m["ra"] == movers.loc[sid, "ra"] and m["dec"] == movers.loc[sid, "dec"]
        assert m["rate_ra_arcsec_h"] == movers.loc[sid, "rate_ra_arcsec_h"]


def test_fits_units_and_sources_extension(run, tmp_path):
    run_dir, _, sources = run
    (path,) = export_lightcurves(run_dir, tmp_path / "v.fits", fmt="fits", sources="variable")
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "LIGHTCURVES", "SOURCES"]
        assert hdul["LIGHTCURVES"].header["TIMESYS"] == "UTC"
    table = Table.read(path, hdu="LIGHTCURVES")
    assert table["flux_jy"].unit == "Jy" and table["time_mjd"].unit == "d"
    assert table["bjd_tdb"].unit == "d"
    src = Table.read(path, hdu="SOURCES")
    variables = sources[sources["kind"] == "variable"]
    np.testing.assert_array_equal(src["source_id"], variables["source_id"])
    np.testing.assert_array_equal(src["ra"], variables["ra"])
    assert src["ra"].unit == "deg"
    assert set(np.asarray(src["kind"]).astype(str)) == {"variable"}


@pytest.mark.parametrize("fmt", ["csv", "ecsv", "fits"])
def test_target_per_source_file(run, tmp_path, fmt):
    run_dir, ds, sources = run
    target = sources[sources["is_target"]].iloc[0]
    sid = int(target["source_id"])
    (path,) = export_lightcurves(run_dir, tmp_path, fmt=fmt, sources="target", per_source=True)
    assert path == tmp_path / f"source_{sid}.{fmt}"
    table = _read(path, fmt)
    assert (table["source_id"] == sid).all()
    assert len(table) == _measured(ds, [sid])
    if fmt == "ecsv":
        meta = Table.read(path, format="ascii.ecsv").meta["source"]
        assert meta["source_id"] == sid and meta["is_target"] is True
        assert meta["ra"] == target["ra"]
    if fmt == "fits":
        header = fits.getheader(path, "LIGHTCURVES")
        assert header["SRC_ID"] == sid and header["TARGET"] is True
        assert header["RA"] == pytest.approx(target["ra"], abs=1e-10)
        assert header["KIND"] == target["kind"]


def test_include_missing_gives_the_whole_cube(run):
    _, ds, sources = run
    ids = sources["source_id"].to_numpy()[:7]
    table = lightcurve_table(ds, ids, include_missing=True)
    assert len(table) == 7 * ds.sizes["frame"]
    np.testing.assert_array_equal(table["frame"].to_numpy()[: ds.sizes["frame"]], ds["frame"])


def test_selections(run):
    _, _, sources = run
    assert select_sources(sources, None).size == len(sources)
    assert select_sources(sources, "all").size == len(sources)
    assert select_sources(sources, "comparison").size == sources["is_comparison"].sum()
    assert select_sources(sources, 5).tolist() == [5]
    assert select_sources(sources, [9, 3]).tolist() == [9, 3]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fmt": "xlsx"}, "not an export format"),
        ({"sources": "bright"}, "not a selection"),
        ({"sources": [0, 10**9]}, "not in the sources table"),
    ],
)
def test_bad_arguments(run, tmp_path, kwargs, match):
    run_dir, _, _ = run
    with pytest.raises(ValueError, match=match):
        export_lightcurves(run_dir, tmp_path / "x.csv", **{"fmt": "csv", **kwargs})


def test_no_target_and_missing_run(run, tmp_path):
    _, _, sources = run
    with pytest.raises(ValueError, match="no target"):
        select_sources(sources.assign(is_target=False), "target")
    with pytest.raises(FileNotFoundError, match="lcdask run"):
        export_lightcurves(tmp_path, tmp_path / "x.csv")
