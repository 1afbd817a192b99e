"""`SolveFieldSolver`: astrometry.net's local ``solve-field`` on an xylist of the detections.

It uses the system's index files (`default_index_dirs`, `installed_index_files`) or a directory
built by `build_index` from a reference catalog. Files handed to astrometry.net use its FITS
1-based pixel convention (the xylist gets ``x + 1``, ``y + 1``), so that the WCS it returns is a
standard FITS WCS.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd
from astropy.io import fits
from astropy.wcs import WCS

from lcdask.astrometry.inputs import catalog_arrays, detection_arrays
from lcdask.astrometry.matching import solution_from_header
from lcdask.astrometry.solution import (
    AstrometrySolution,
    SolveHints,
    center_hint,
    failed_solution,
    pixel_scale_deg,
    register_solver,
    scale_hint,
    wcs_rotation_deg,
)

if TYPE_CHECKING:
    from lcdask.astrometry.config import AstrometryConfig

__all__ = ["SolveFieldSolver", "build_index", "default_index_dirs", "installed_index_files"]


def _solve_field_index_id(header: fits.Header) -> str:
    """The id of the index solve-field matched (``COMMENT index id: 4110``), or ""."""
    for line in header.get("COMMENT", []):
        text = str(line)
        if text.strip().startswith("index id:"):
            return text.split(":", 1)[1].strip()
    return ""


def _write_xylist(path: Path, x: np.ndarray, y: np.ndarray, flux: np.ndarray) -> None:
    """An astrometry.net xylist: FITS 1-based X, Y and FLUX, brightest first."""
    cols = [
        fits.Column(name="X", format="D", array=np.asarray(x, float) + 1.0),
        fits.Column(name="Y", format="D", array=np.asarray(y, float) + 1.0),
        fits.Column(name="FLUX", format="D", array=np.asarray(flux, float)),
    ]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols)]).writeto(
        path, overwrite=True
    )


def _run(cmd: list[str], timeout_s: float, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
    )


@register_solver("solve-field")
@dataclass(frozen=True)
class SolveFieldSolver:
    """astrometry.net's local ``solve-field`` on an xylist of the detections.

    Parameters
    ----------
    index_dir : str or Path, optional
        Directory of index files (e.g. from `build_index`); default the system configuration
        (``/etc/astrometry.cfg``, Debian's ``astrometry-data-*`` packages).
    timeout_s : float
        Wall-clock limit of one solve (also passed as ``--cpulimit``).
    n_detections : int
        Brightest detections written to the xylist.
    scale_tolerance : float
        Relative width of the pixel-scale hint around the guess's scale.
    search_radius_deg : float or None
        With a guess, search only this far from its centre; None for a blind search of the sky.
    tweak_order : int
        SIP order of astrometry.net's tweak (0 or 1 disables distortion).
    executable : str
        The ``solve-field`` program.
    mag_column : str
        Catalog magnitude column (for computing residuals against a catalog).
    scale_arcsec : float, optional
        A pixel-scale hint (arcsec/px, e.g. from `header_pixel_scale`), used instead of the
        guess's scale.
    center_deg : tuple of float, optional
        A pointing hint ``(ra, dec)`` used instead of the guess's centre (searched within
        ``search_radius_deg``).
    hint_sources : str
        Where the hints came from, for the solution's message.
    """

    index_dir: str | Path | None = None
    timeout_s: float = 120.0
    n_detections: int = 150
    scale_tolerance: float = 0.2
    search_radius_deg: float | None = 1.0
    tweak_order: int = 2
    executable: str = "solve-field"
    mag_column: str = "mag"
    scale_arcsec: float | None = None
    center_deg: tuple[float, float] | None = None
    hint_sources: str = ""
    name: str = "solve-field"
    costly: ClassVar[bool] = True
    """Seconds to a minute a solve: a reference search tries it on one frame, not three."""

    @classmethod
    def from_config(
        cls, config: AstrometryConfig, *, hints: SolveHints, mag_column: str
    ) -> SolveFieldSolver:
        """The solver of ``[astrometry] solver = "solve-field"``, with a frame's header hints.

        Parameters
        ----------
        config : AstrometryConfig
            ``index_dir``, ``timeout_s``, ``n_detections``, ``scale_tolerance`` and
            ``search_radius_deg``.
        hints : SolveHints
            The frame's pixel scale and pointing from its header (`solve_hints`).
        mag_column : str
            The catalog's magnitude column.

        Returns
        -------
        SolveFieldSolver
        """
        sources = []
        if hints.scale_arcsec is not None:
            sources.append(f'scale hint {hints.scale_arcsec:.2f}"/px from {hints.scale_source}')
        if hints.center is not None:
            sources.append(f"position hint from the {hints.pointing_source}")
        return cls(
            index_dir=config.index_dir or None,
            timeout_s=config.timeout_s,
            n_detections=config.n_detections,
            scale_tolerance=config.scale_tolerance,
            search_radius_deg=config.search_radius_deg,
            mag_column=mag_column,
            scale_arcsec=hints.scale_arcsec,
            center_deg=hints.center,
            hint_sources="; ".join(sources),
        )

    def available(self) -> bool:
        """True when the ``solve-field`` executable is on the PATH."""
        return shutil.which(self.executable) is not None

    def command(
        self, xylist: Path, work: Path, image_shape: tuple[int, int], wcs_guess: WCS | None
    ) -> list[str]:
        """The ``solve-field`` command line for an xylist (exposed for logging and tests).

        Parameters
        ----------
        xylist : Path
            The xylist FITS file.
        work : Path
            Scratch directory for the outputs.
        image_shape : tuple of int
            ``(ny, nx)``.
        wcs_guess : astropy.wcs.WCS, optional
            Gives the scale and position hints.

        Returns
        -------
        list of str
            The arguments.
        """
        ny, nx = image_shape
        cmd = [
            self.executable,
            str(xylist),
            "--no-plots",
            "--overwrite",
            "--no-remove-lines",
            "--no-verify-uniformize",
            "--width", str(nx),
            "--height", str(ny),
            "--x-column", "X",
            "--y-column", "Y",
            "--sort-column", "FLUX",
            "--dir", str(work),
            "--temp-dir", str(work),
            "--new-fits", "none",
            "--index-xyls", "none",
            "--rdls", "none",
            "--match", "none",
            "--solved", str(work / "solved"),
            "--wcs", str(work / "solution.wcs"),
            "--corr", str(work / "solution.corr"),
            "--cpulimit", str(math.ceil(self.timeout_s)),
            "--crpix-center",
            "--objs", str(self.n_detections),
        ]  # fmt: skip
        if self.tweak_order >= 2:
            cmd += ["--tweak-order", str(self.tweak_order)]
        else:
            cmd += ["--no-tweak"]
        hint = scale_hint(wcs_guess, self.scale_tolerance, self.scale_arcsec)
        if hint:
            cmd += ["--scale-units", "arcsecperpix"]
            cmd += ["--scale-low", f"{hint['scale_low']:.6f}"]
            cmd += ["--scale-high", f"{hint['scale_high']:.6f}"]
        center = center_hint(wcs_guess, image_shape, self.center_deg)
        if center is not None and self.search_radius_deg is not None:
            cmd += ["--ra", f"{center[0]:.8f}", "--dec", f"{center[1]:.8f}"]
            cmd += ["--radius", f"{self.search_radius_deg:.6f}"]
        if self.index_dir is not None:
            cfg = work / "astrometry.cfg"
            cfg.write_text(
                f"inparallel\ncpulimit {math.ceil(self.timeout_s)}\n"
                f"add_path {Path(self.index_dir).resolve()}\nautoindex\n"
            )
            cmd += ["--config", str(cfg)]
        return cmd

    def _failure(self, output: list[str], image_shape, wcs_guess: WCS | None) -> str:
        """Why solve-field did not solve, in one line: the index files and hints it had."""
        n_index = len(installed_index_files(self.index_dir))
        hint = scale_hint(wcs_guess, self.scale_tolerance, self.scale_arcsec)
        low, high = hint.get("scale_low"), hint.get("scale_high")
        scale = f', scale {low:.2f}-{high:.2f}"/px' if hint else ", no scale hint"
        errors = [line for line in output if "error" in line.lower()][:1]
        detail = f": {errors[0].strip()[:160]}" if errors else ""
        return f"solve-field did not solve ({n_index} index files{scale}){detail}"

    def solve(
        self,
        detections: pd.DataFrame,
        image_shape: tuple[int, int],
        *,
        wcs_guess: WCS | None = None,
        catalog: pd.DataFrame | None = None,
    ) -> AstrometrySolution:
        """Run ``solve-field`` on the detections (see the class docstring).

        Parameters
        ----------
        detections : pandas.DataFrame
            The frame's detections.
        image_shape : tuple of int
            ``(ny, nx)``.
        wcs_guess : astropy.wcs.WCS, optional
            Scale and position hints; None for a fully blind solve.
        catalog : pandas.DataFrame, optional
            Unused by the solver itself; the residuals come from astrometry.net's matches.

        Returns
        -------
        AstrometrySolution
            ``status == "failed"`` when ``solve-field`` is missing, times out or does not solve.
        """
        if not self.available():
            return failed_solution(self.name, f"{self.executable} is not installed (see scripts/)")
        if not installed_index_files(self.index_dir):
            where = self.index_dir or ", ".join(map(str, default_index_dirs()))
            return failed_solution(
                self.name,
                f"no astrometry.net index files in {where}: install astrometry-data-tycho2 "
                "(scripts/install-system-deps.sh) or set [astrometry] index_dir",
            )
        x, y, flux, _ = detection_arrays(detections)
        if len(x) < 4:
            return failed_solution(self.name, f"only {len(x)} usable detections")
        with tempfile.TemporaryDirectory(prefix="lcdask-solve-") as tmp:
            work = Path(tmp)
            xylist = work / "field.xyls"
            n = self.n_detections
            _write_xylist(xylist, x[:n], y[:n], flux[:n])
            cmd = self.command(xylist, work, image_shape, wcs_guess)
            try:
                proc = _run(cmd, self.timeout_s + 30.0, work)
            except subprocess.TimeoutExpired:
                return failed_solution(
                    self.name, f"solve-field timed out after {self.timeout_s:.0f} s"
                )
            except OSError as exc:
                return failed_solution(self.name, f"solve-field could not run: {exc}")
            wcs_path = work / "solution.wcs"
            if not (work / "solved").exists() or not wcs_path.exists():
                output = (proc.stdout + proc.stderr).strip().splitlines()
                return failed_solution(self.name, self._failure(output, image_shape, wcs_guess))
            header = fits.getheader(wcs_path)
            corr = None
            corr_path = work / "solution.corr"
            if corr_path.exists():
                with fits.open(corr_path) as hdul:
                    data = hdul[1].data
                    corr = (
                        np.asarray(data["field_x"], float) - 1.0,
                        np.asarray(data["field_y"], float) - 1.0,
                        np.asarray(data["index_ra"], float),
                        np.asarray(data["index_dec"], float),
                    )
        solution = solution_from_header(
            header, self.name, x, y, image_shape, catalog, self.mag_column, corr
        )
        if not solution.ok:
            return solution
        center = center_hint(wcs_guess, image_shape, self.center_deg)
        how = "blind" if center is None or self.search_radius_deg is None else "near the pointing"
        index = _solve_field_index_id(header)
        details = ", ".join(
            part
            for part in (
                f"index {index}" if index else "",
                f'{pixel_scale_deg(solution.wcs) * 3600:.2f}"/px',
                f"rotation {wcs_rotation_deg(solution.wcs):.1f} deg",
            )
            if part
        )
        hints = f"; {self.hint_sources}" if self.hint_sources else ""
        message = (
            f"solved {how} by solve-field ({details}); {solution.n_matches} matched stars{hints}"
        )
        return dataclasses.replace(solution, message=message)


def build_index(
    catalog: pd.DataFrame,
    out_dir: str | Path,
    *,
    field_width_arcmin: float | None = None,
    scale_numbers: Sequence[int] | None = None,
    mag_column: str = "mag",
    index_id: int = 9000,
    executable: str = "build-astrometry-index",
    timeout_s: float = 600.0,
) -> list[Path]:
    """Build astrometry.net index files from a reference catalog with ``build-astrometry-index``.

    Parameters
    ----------
    catalog : pandas.DataFrame
        ``ra``, ``dec`` (degrees) and ``mag_column`` (brightest stars make the quads).
    out_dir : str or Path
        Directory for the index files (created); give it to `SolveFieldSolver` as ``index_dir``.
    field_width_arcmin : float, optional
        Width of the images to solve: the scale presets whose quads span 15-80% of it are built.
    scale_numbers : sequence of int, optional
        The ``-P`` presets to build (0: quads of 2-2.8', each step sqrt(2) larger); overrides
        ``field_width_arcmin``.
    mag_column : str, optional
        Sort column.
    index_id : int, optional
        Unique id of the first index (the next ones count up).
    executable : str, optional
        The ``build-astrometry-index`` program.
    timeout_s : float, optional
        Limit of each build.

    Returns
    -------
    list of Path
        The index files written.

    Raises
    ------
    FileNotFoundError
        When ``build-astrometry-index`` is not installed.
    ValueError
        Without a field width or scale numbers, or for an unusable catalog.
    RuntimeError
        When a build fails (its output is in the message).
    """
    exe = shutil.which(executable)
    if exe is None:
        raise FileNotFoundError(
            f"{executable} not found; install astrometry.net (scripts/install-system-deps.sh)"
        )
    ra, dec, mag = catalog_arrays(catalog, mag_column)
    if len(ra) < 10:
        raise ValueError(f"build_index needs at least 10 catalog stars, got {len(ra)}")
    if scale_numbers is None:
        if field_width_arcmin is None:
            raise ValueError("build_index needs field_width_arcmin or scale_numbers")
        scale_numbers = [
            k
            for k in range(0, 20)
            if 2.0 * math.sqrt(2) ** (k + 1) > 0.15 * field_width_arcmin
            and 2.0 * math.sqrt(2) ** k < 0.8 * field_width_arcmin
        ] or [0]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mag = np.where(np.isfinite(mag), mag, 99.0)
    written = []
    with tempfile.TemporaryDirectory(prefix="lcdask-index-") as tmp:
        cat_path = Path(tmp) / "catalog.fits"
        cols = [
            fits.Column(name="RA", format="D", array=ra),
            fits.Column(name="DEC", format="D", array=dec),
            fits.Column(name="MAG", format="D", array=mag),
        ]
        fits.BinTableHDU.from_columns(cols).writeto(cat_path, overwrite=True)
        for n, scale in enumerate(scale_numbers):
            path = out / f"index-{index_id + n}-{int(scale):02d}.fits"
            cmd = [
                exe, "-i", str(cat_path), "-o", str(path), "-P", str(int(scale)),
                "-S", "MAG", "-E", "-M", "-I", str(index_id + n), "-t", tmp,
            ]  # fmt: skip
            proc = _run(cmd, timeout_s, Path(tmp))
            if proc.returncode != 0 or not path.exists():
                raise RuntimeError(
                    f"build-astrometry-index failed for preset {scale}: "
                    + (proc.stdout + proc.stderr)[-800:]
                )
            written.append(path)
    return written


def default_index_dirs() -> list[Path]:
    """Where solve-field looks for index files without ``index_dir``.

    The ``add_path`` lines of ``/etc/astrometry.cfg`` (and of the Homebrew/conda
    ``astrometry.cfg`` next to the ``solve-field`` program), else ``/usr/share/astrometry``
    and ``/usr/local/astrometry/data``.

    Returns
    -------
    list of Path
    """
    configs = [Path("/etc/astrometry.cfg")]
    program = shutil.which("solve-field")
    if program:
        root = Path(program).resolve().parent.parent
        configs += [root / "etc" / "astrometry.cfg"]
    dirs = []
    for cfg in configs:
        try:
            lines = cfg.read_text().splitlines()
        except OSError:
            continue
        paths = [line.split(None, 1) for line in lines if line.startswith("add_path")]
        dirs += [Path(p[1].strip()) for p in paths if len(p) == 2]
    return dirs or [Path("/usr/share/astrometry"), Path("/usr/local/astrometry/data")]


def installed_index_files(index_dir: str | Path | None = None) -> list[Path]:
    """The astrometry.net index files solve-field would use.

    Parameters
    ----------
    index_dir : str or Path, optional
        A directory of index files; default `default_index_dirs`.

    Returns
    -------
    list of Path
        ``index-*.fits`` (and ``.fits.fz``) files, sorted; empty when there are none.
    """
    dirs = [Path(index_dir).expanduser()] if index_dir else default_index_dirs()
    files: list[Path] = []
    for folder in dirs:
        if folder.is_dir():
            files += sorted(folder.glob("index-*.fits")) + sorted(folder.glob("index-*.fits.fz"))
    return files
