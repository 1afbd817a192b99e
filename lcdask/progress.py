"""Progress bars of the long steps: in the terminal (on stderr) or in a notebook.

The orchestrating layer calls `show` on the futures of a step before it gathers them. A bar is
drawn when the run is interactive: stderr is a terminal, or the code runs in a Jupyter kernel
(there distributed's widget, when ipywidgets is installed). ``LCDASK_PROGRESS=1`` or ``0`` forces
bars on or off (batch jobs write no bars; their logs stay clean). The Dask dashboard shows the same
progress, and more, for every run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from dask.utils import format_time
from distributed.diagnostics.progressbar import TextProgressBar
from distributed.utils import is_kernel

__all__ = ["enabled", "show"]


def enabled() -> bool:
    """Whether bars are drawn: ``LCDASK_PROGRESS`` if set, else a terminal or a notebook."""
    forced = os.environ.get("LCDASK_PROGRESS", "").strip()
    if forced:
        return forced not in ("0", "false", "no", "off")
    return sys.stderr.isatty() or is_kernel()


class _Bar(TextProgressBar):
    """distributed's text bar, with a label and on stderr (stdout keeps the command's result)."""

    def __init__(self, keys, label: str, **kwargs) -> None:
        self.label = label
        super().__init__(keys, **kwargs)

    def _draw_bar(self, remaining, all, **kwargs) -> None:
        frac = (1 - remaining / all) if all else 1.0
        bar = "#" * int(self.width * frac)
        sys.stderr.write(
            f"\r{self.label:<24} [{bar:<{self.width}}] {int(100 * frac):3d}% "
            f"| {format_time(self.elapsed)}"
        )
        sys.stderr.flush()

    def _draw_stop(self, **kwargs) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def show(futures: Sequence, label: str) -> None:
    """Draw a progress bar over ``futures`` until they finish (in a notebook: a live widget).

    Parameters
    ----------
    futures : sequence of distributed.Future
        The step's tasks (anything else, e.g. results of a serial run, is ignored).
    label : str
        What the step is, written before the bar.
    """
    from distributed import Future

    futures = [f for f in futures if isinstance(f, Future)]
    if not futures or not enabled():
        return
    if is_kernel():
        try:
            from distributed import progress
            from IPython.display import display

            display(progress(futures, notebook=True, multi=False))
        except ImportError:  # no ipywidgets: the dashboard shows the progress
            pass
        return
    _Bar(futures, label, scheduler=futures[0].client.scheduler.address)
