"""lcdask: raw CCD frames to calibrated light curves of every source in the field, on Dask.

The public entry points are imported on first use, so that ``import lcdask`` stays light:
``lcdask.open_run(path)`` (notebooks), ``lcdask.run(...)`` (the whole pipeline).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "open_run", "run"]


def __getattr__(name: str):
    if name == "open_run":
        from lcdask.api import open_run

        return open_run
    if name == "run":
        from lcdask.run import run

        return run
    raise AttributeError(f"module 'lcdask' has no attribute {name!r}")
