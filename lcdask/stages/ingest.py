"""The ingest stage: the raw frames into ``cube.zarr`` (`lcdask.ingest`)."""

from __future__ import annotations

import logging

from lcdask.ingest import append as ingest_append
from lcdask.ingest import ingest
from lcdask.stages.context import RunContext

__all__ = ["append_ingest", "run_ingest"]

log = logging.getLogger("lcdask")


def run_ingest(ctx: RunContext) -> dict:
    """Every input into a new cube (`lcdask.ingest.ingest`)."""
    result = ingest(ctx.inputs, ctx.out, client=ctx.client, overwrite=True)
    return {"counts": result.counts, "n_frames": result.n_frames}


def append_ingest(ctx: RunContext) -> dict:
    """The new inputs appended to the cube (`lcdask.ingest.append`); the counts merged."""
    appending = ctx.appending
    log.info("ingest: appending %d new file(s) to the run", len(appending.files))
    result = ingest_append(appending.files, ctx.out, client=ctx.client)
    n_new = sum(result.counts.values())
    appending.frames = list(range(result.n_frames - n_new, result.n_frames))
    counts = dict(appending.before("ingest").get("counts", {}))
    for kind, n in result.counts.items():
        counts[kind] = counts.get(kind, 0) + n
    return {"counts": counts, "n_frames": result.n_frames}
