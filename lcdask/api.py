"""The notebook API: open a run directory and get its products as xarray and pandas objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lcdask._utils.skygeom import separation_arcsec
from lcdask.classify import parse_target
from lcdask.export import lightcurve_table
from lcdask.io.products import RunProducts

__all__ = ["Run", "open_run"]


class Run(RunProducts):
    """A run directory's products, opened lazily as they are asked for, with queries for notebooks.

    The products (``record``, ``cube``, ``lightcurves``, ``sources``, ``frames``,
    ``detections``, ``coadd_path``, ``psf_path``) are those of `lcdask.io.products.RunProducts`,
    the one reader of a run; `find`, `lightcurve` and `plot_lightcurve` are added here.

    Attributes
    ----------
    path : Path
        The run directory.
    """

    def find(self, ra: float | str, dec: float | None = None, *, radius_arcsec: float = 3.0) -> int:
        """The id of the source nearest a position.

        Parameters
        ----------
        ra : float or str
            Right ascension in degrees, or "RA DEC" in degrees or sexagesimal.
        dec : float, optional
            Declination in degrees (when ``ra`` is a number).
        radius_arcsec : float, optional
            Largest distance accepted.

        Returns
        -------
        int
            The source id.

        Raises
        ------
        LookupError
            If no source lies within the radius.
        """
        ra_deg, dec_deg = parse_target(ra if dec is None else (float(ra), float(dec)))
        s = self.sources
        dist = separation_arcsec(s["ra"].to_numpy(float), s["dec"].to_numpy(float), ra_deg, dec_deg)
        nearest = int(np.argmin(dist))
        if dist[nearest] > radius_arcsec:
            raise LookupError(
                f'no source within {radius_arcsec}" of ({ra_deg:.6f}, {dec_deg:+.6f}); '
                f'the nearest is {dist[nearest]:.1f}" away'
            )
        return int(s["source_id"].iloc[nearest])

    def lightcurve(self, source: int | str | None = None, **position: Any) -> pd.DataFrame:
        """One source's light curve as a table (time, fluxes, magnitudes, flags...).

        Parameters
        ----------
        source : int or str, optional
            A source id, "target", or "RA DEC"; or give ``ra=``, ``dec=`` as keywords.
        **position
            ``ra``, ``dec`` (degrees) and optionally ``radius_arcsec``.

        Returns
        -------
        pandas.DataFrame
            The rows of `lcdask.export.lightcurve_table` for that source.
        """
        if source == "target":
            targets = self.sources.loc[self.sources["is_target"], "source_id"]
            if targets.empty:
                raise LookupError("this run has no target (give --target to lcdask run)")
            source = int(targets.iloc[0])
        elif isinstance(source, str) or source is None:
            radius = position.pop("radius_arcsec", 3.0)
            where = source if source is not None else (position["ra"], position["dec"])
            source = self.find(
                *(where if isinstance(where, tuple) else (where,)), radius_arcsec=radius
            )
        return lightcurve_table(self.lightcurves, [int(source)])

    def plot_lightcurve(self, source: int | str = "target", *, ax=None, relative: bool = True):
        """Plot one source's light curve (relative or calibrated flux against time).

        Parameters
        ----------
        source : int or str, optional
            As in `lightcurve`.
        ax : matplotlib.axes.Axes, optional
            Where to draw; a new figure when None.
        relative : bool, optional
            Plot the ensemble-relative flux (else the flux in Jy, or ADU when uncalibrated).

        Returns
        -------
        matplotlib.axes.Axes
        """
        import matplotlib.pyplot as plt

        table = self.lightcurve(source)
        column = (
            "rel_flux" if relative else ("flux_jy" if table["flux_jy"].notna().any() else "flux")
        )
        errors = table.get(f"{column}_err")
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 3.5))
        ax.errorbar(table["time_mjd"], table[column], yerr=errors, fmt=".", ms=3, alpha=0.7)
        ax.set_xlabel("time (MJD, UTC)")
        ax.set_ylabel(column)
        ax.set_title(f"source {int(table['source_id'].iloc[0])}")
        return ax


def open_run(path: str | Path) -> Run:
    """Open a run directory written by `lcdask.run.run` (``lcdask run``).

    Parameters
    ----------
    path : str or Path
        The run directory.

    Returns
    -------
    Run

    Raises
    ------
    FileNotFoundError
        If the directory holds no run (no ``run.json``).
    """
    path = Path(path)
    if not (path / "run.json").exists():
        raise FileNotFoundError(f"{path}: no run.json; is this a run directory of `lcdask run`?")
    return Run(path)
