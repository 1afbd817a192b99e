"""The notebook API on a real run (the Lowell night's run from test_real_runs)."""

from __future__ import annotations

import numpy as np
import pytest

import lcdask


def test_open_run_gives_products_and_light_curves(lowell_run):
    run = lcdask.open_run(lowell_run)
    assert len(run.frames) == 11 and run.lightcurves.sizes["frame"] == 11
    assert set(run.sources["kind"]) <= {"stable", "variable", "moving"}
    asteroid = run.find("08:18:28.5 +25:19:44", radius_arcsec=120)  # near the field centre
    table = run.lightcurve(asteroid)
    assert (table["source_id"] == asteroid).all() and len(table) >= 5
    stable = int(run.sources.loc[run.sources["kind"] == "stable", "source_id"].iloc[0])
    ra, dec = run.sources.set_index("source_id").loc[stable, ["ra", "dec"]]
    assert run.find(ra, dec) == stable
    assert np.isfinite(run.lightcurve(ra=ra, dec=dec)["rel_flux"]).sum() >= 5
    with pytest.raises(LookupError, match="no source within"):
        run.find(10.0, -80.0)
    with pytest.raises(LookupError, match="no target"):
        run.lightcurve("target")
    ax = run.plot_lightcurve(stable)
    assert len(ax.lines) + len(ax.collections) > 0


def test_open_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no run\.json"):
        lcdask.open_run(tmp_path)
