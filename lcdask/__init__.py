"""lcdask: raw CCD frames to calibrated light curves of every source in the field, on Dask."""

__version__ = "0.1.0"
