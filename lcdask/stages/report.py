"""The report stage: ``report.html`` and ``plots/`` (`lcdask.report.write_run_report`)."""

from __future__ import annotations

from lcdask.report import write_run_report
from lcdask.stages.context import RunContext

__all__ = ["run_report"]


def run_report(ctx: RunContext) -> dict:
    """The page and the PNG figures, drawn on the cluster's workers."""
    page, plots = write_run_report(ctx.out, client=ctx.client)
    return {"report": str(page), "plots": [str(p) for p in plots]}
