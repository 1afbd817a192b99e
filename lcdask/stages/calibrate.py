"""The calibration stage: masters, bad-pixel maps and calibrated lights in the cube
(`lcdask.pipeline.calibrate_cube`)."""

from __future__ import annotations

import logging

from lcdask.pipeline import calibrate_cube
from lcdask.stages.context import RunContext

__all__ = ["append_calibrate", "run_calibrate"]

log = logging.getLogger("lcdask")

_RECORDED = ("dark_strategy", "n_hot_pixels", "n_dead_pixels", "n_bad_columns", "notes")


def run_calibrate(ctx: RunContext) -> dict:
    """The whole cube calibrated; its summary's main lines for ``run.json``."""
    summary = calibrate_cube(ctx.cube_path, client=ctx.client, config=ctx.config.calibration)
    return {k: summary[k] for k in _RECORDED} | {"rejected": summary["rejected"]}


def append_calibrate(ctx: RunContext) -> dict:
    """The appended lights calibrated with the earlier masters."""
    frames = ctx.appending.frames
    log.info("calibrate: %d new frame(s)", len(frames))
    calibrate_cube(ctx.cube_path, client=ctx.client, config=ctx.config.calibration, frames=frames)
    return {}
