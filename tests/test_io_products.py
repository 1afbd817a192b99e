"""The one reader of a run directory (`lcdask.io.products`), on a simulated run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from test_report import write_simulated_run

import lcdask
from lcdask.api import Run
from lcdask.io.products import RunProducts, frames_table, read_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    truth, ds, sources = write_simulated_run(run_dir, n_frames=30, size=512, coadd=False)
    return run_dir, truth, ds, sources


def test_read_run_opens_each_product_when_asked(run):
    run_dir, truth, ds, sources = run
    products = read_run(run_dir)
    assert products.run_dir == products.path == run_dir
    assert not {"sources", "lightcurves", "frames", "record"} & set(vars(products))  # lazy
    pd.testing.assert_frame_equal(products.sources, sources)
    assert "sources" in vars(products) and products.sources is products.sources  # read once
    lc = products.lightcurves
    assert lc["rel_flux"].chunks is not None  # opened lazily (dask), not loaded
    np.testing.assert_array_equal(lc["source_id"].to_numpy(), ds["source_id"].to_numpy())
    np.testing.assert_array_equal(lc["rel_flux"].to_numpy(), ds["rel_flux"].to_numpy())
    # frames.parquet as written: one row per simulated frame, at the truth's times
    np.testing.assert_array_equal(products.frames["time_mjd"], truth.frames["time_mjd"])
    assert "astrometry_rms_arcsec" in products.frames
    # no run.json, co-add or ePSF in this run directory
    assert products.record == {} and products.coadd_path is None and products.psf_path is None


def test_frames_come_from_the_light_curves_without_frames_parquet(run, tmp_path):
    run_dir, truth, ds, _ = run
    other = tmp_path / "run"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("frames.parquet"))
    (other / "run.json").write_text(json.dumps({"target": {"ra": 1.5}}))
    products = read_run(other)
    # the stored coordinates come back in another order
    pd.testing.assert_frame_equal(products.frames, frames_table(ds), check_like=True)
    np.testing.assert_array_equal(products.frames["time_mjd"], truth.frames["time_mjd"])
    assert products.record == {"target": {"ra": 1.5}}
    # the notebook API's Run is the same reader, with its queries added
    opened = lcdask.open_run(other)
    assert isinstance(opened, Run) and isinstance(opened, RunProducts)
    pd.testing.assert_frame_equal(opened.frames, products.frames, check_like=True)


def test_read_run_names_what_is_missing(tmp_path):
    (tmp_path / "sources.parquet").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"has no lightcurves\.zarr; run `lcdask run"):
        read_run(tmp_path)


def test_products_can_be_given_in_place_of_the_directorys(run):
    # dataclasses.replace keeps working as with the eager reader (test_target_location uses it)
    import dataclasses

    run_dir, _, ds, sources = run
    products = read_run(run_dir)
    fewer = dataclasses.replace(
        products, sources=sources.iloc[:3], record={"target": {"message": "given"}}
    )
    assert fewer.path == run_dir and len(fewer.sources) == 3
    assert fewer.record == {"target": {"message": "given"}}
    assert len(products.sources) == len(sources) and products.record == {}  # unchanged
    # the products not given are the directory's
    np.testing.assert_array_equal(fewer.lightcurves["rel_flux"], ds["rel_flux"])
    assert fewer.coadd_path is None
    assert repr(fewer) == f"RunProducts(path={run_dir!r})"  # no product read to show it
    assert fewer == products and hash(fewer) == hash(products)  # the same directory
