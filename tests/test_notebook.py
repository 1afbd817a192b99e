"""notebooks/walkthrough.ipynb, executed in a real Jupyter kernel on a simulated run.

The run is `test_report.write_simulated_run` (detections drawn from a simulated night's truth, then
matched, linked, built into light curves and classified; no images, so no cube) plus a
``run.json``. The notebook's last cell prints a JSON summary of what it found; the target's
transit, the variables and the movers in it are held against the simulation's truth.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbclient
import nbformat
import numpy as np
import pytest
from test_report import write_simulated_run

import lcdask

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


def _write_record(run_dir: Path, sources) -> dict:
    """A ``run.json`` as `lcdask.run.run` writes it, for the stages this run went through."""
    record = {
        "lcdask_version": lcdask.__version__,
        "started": "2024-05-01T20:00:00+00:00",
        "config": {},
        "versions": {"lcdask": lcdask.__version__, "numpy": np.__version__},
        "inputs": [],
        "stages": {
            "lightcurves": {
                "status": "complete",
                "seconds": 1.5,
                "n_sources": len(sources),
                "kinds": sources["kind"].value_counts().to_dict(),
                "n_target": 1,
            },
            "report": {"status": "complete", "seconds": 0.5, "reused": True},
        },
        "skipped": [],
        "flagged": [],
        "notes": [],
        "target": None,
        "finished": "2024-05-01T20:00:02+00:00",
    }
    (run_dir / "run.json").write_text(json.dumps(record))
    return record


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed on a simulated run: (notebook, summary, truth, sources, record)."""
    # demo-run/run: the notebook is given the parent folder, as after `make demo`
    run_dir = tmp_path_factory.mktemp("demo-run") / "run"
    truth, _, sources = write_simulated_run(run_dir)
    record = _write_record(run_dir, sources)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = {**os.environ, "LCDASK_RUN": str(run_dir.parent)}
    # the kernel must import the lcdask under test (a worktree or a fresh clone), not another copy
    package_root = str(Path(lcdask.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    client = nbclient.NotebookClient(
        nb,
        kernel_name="python3",
        timeout=300,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute(env=env)  # raises CellExecutionError on the first cell that fails
    cells = [c for c in nb.cells if "summary" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    text = "".join(o.get("text", "") for o in cells[0].outputs if o.output_type == "stream")
    return nb, json.loads(text.strip().splitlines()[-1]), truth, sources, record


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_every_cell_ran_without_error_in_this_lcdask(executed):
    nb, summary, *_ = executed
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.execution_count is not None
            assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
    assert Path(summary["lcdask_file"]) == Path(lcdask.__file__).resolve()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    # target, transit, variables, movers, movers over the co-add, scatter, per-frame conditions
    assert figures >= 7


def test_notebook_reports_the_record_and_the_sources(executed):
    _, summary, _, sources, record = executed
    assert summary["stages"] == {k: v["status"] for k, v in record["stages"].items()}
    assert summary["n_sources"] == len(sources)
    assert summary["kinds"] == sources["kind"].value_counts().to_dict()
    target = sources[sources["is_target"]].iloc[0]
    assert summary["target"]["source_id"] == int(target["source_id"])
    assert summary["n_comparison"] == int(sources["is_comparison"].sum()) > 5


def _truth_star(truth, ra: float, dec: float, radius_arcsec: float = 2.0) -> int:
    stars = truth.stars
    cos_dec = np.cos(np.radians(dec))
    dist = 3600 * np.hypot((stars["ra"] - ra) * cos_dec, stars["dec"] - dec)
    i = int(np.argmin(dist.to_numpy()))
    return int(stars["star_id"].iloc[i]) if dist.iloc[i] < radius_arcsec else -1


def test_transit_depth_and_time_against_truth(executed):
    _, summary, truth, *_ = executed
    star = truth.stars[truth.stars["is_target"]].iloc[0]
    assert _truth_star(truth, summary["target"]["ra"], summary["target"]["dec"]) == star["star_id"]
    transit = summary["transit"]
    # S/N ~250 per frame on the target; a box fitted to a trapezoid averages in part of the ingress
    # and egress, which biases the depth low by up to ingress/duration (here ~10%)
    assert transit["depth"] == pytest.approx(truth.config.transit_depth, rel=0.2)
    assert transit["snr"] > 5
    assert abs(transit["mid_mjd"] - star["t0_mjd"]) * 1440 < 10  # minutes: ~8 frames of 70 s
    assert transit["duration_h"] == pytest.approx(star["duration_d"] * 24, rel=0.3)


def test_variables_against_truth(executed):
    _, summary, truth, *_ = executed
    listed = {_truth_star(truth, v["ra"], v["dec"]) for v in summary["variables"]}
    true_variables = truth.stars[(truth.stars["kind"] == "variable") & ~truth.stars["is_target"]]
    assert set(true_variables["star_id"]) <= listed  # the eclipsing binary and the pulsator
    for v in summary["variables"]:
        assert max(v["scatter_ratio"], v["binned_ratio"]) > 1.5


def test_movers_against_truth(executed):
    _, summary, truth, *_ = executed
    movers = truth.movers.set_index("star_id")
    found = {}
    for m in summary["movers"]:
        # where each true mover was at the listed epoch
        dt_h = (m["epoch_mjd"] - movers["t0_mjd"]) * 24
        dec = movers["dec0"] + movers["rate_dec_arcsec_h"] * dt_h / 3600
        ra = movers["ra0"] + movers["rate_ra_arcsec_h"] * dt_h / 3600 / np.cos(
            np.radians(movers["dec0"])
        )
        sep = 3600 * np.hypot((ra - m["ra"]) * np.cos(np.radians(dec)), dec - m["dec"])
        assert sep.min() < 2.0, f"mover {m['source_id']} is no true mover"
        found[sep.idxmin()] = m
    assert set(found) == set(movers.index) and len(summary["movers"]) == len(movers)
    for star_id, m in found.items():
        true = movers.loc[star_id]
        true_rate = np.hypot(true["rate_ra_arcsec_h"], true["rate_dec_arcsec_h"])
        error = np.hypot(
            m["rate_ra_arcsec_h"] - true["rate_ra_arcsec_h"],
            m["rate_dec_arcsec_h"] - true["rate_dec_arcsec_h"],
        )
        assert error / true_rate < 0.02  # as tests/test_run.py: tracks over the whole night
