"""Read the star lists of astrometry.net index files (e.g. Debian's Tycho-2 ``index-tycho2-NN``).

An index file (``build-astrometry-index`` output) holds its stars in a kd-tree: the binary-table
extension whose column is named ``kdtree_data_stars`` stores, per star, the unit vector
``(x, y, z)`` on the celestial sphere as 3 native-endian unsigned 32-bit integers; the extension
``kdtree_range_stars`` holds 7 native-endian doubles ``minval[3], maxval[3], scale``, and a
coordinate is ``minval + u32 / scale`` (``KDT_DATA = 'u32'`` and ``KDT_EXT = 'double'`` in the
``kdtree_header_stars`` extension). The byte order is the file's ``ENDIAN`` key
(``'04:03:02:01'``: little-endian). A tag-along table (``AN_FILE = 'TAGALONG'``) carries the sort
column in the same row order, ``MAG_VT`` (Tycho VT magnitude) in the Tycho-2 files.

The indices of one series are cut from the same catalog at different densities (in Debian's
Tycho-2 set every star of ``-08`` .. ``-19`` is also in ``-07``); `index_stars` merges the files and
removes the duplicates. Positions are those of the catalog the index was built from (Tycho-2:
ICRS at epoch J2000).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from astropy.io import fits

__all__ = ["DEFAULT_INDEX_DIRS", "find_index_files", "index_stars", "read_index_stars"]

DEFAULT_INDEX_DIRS = (
    "/usr/share/astrometry",
    "/usr/local/astrometry/data",
    "/usr/share/astrometry/data",
)
_MAG_COLUMNS = ("MAG_VT", "MAG", "MAG_V", "MAG_G", "PHOT_G_MEAN_MAG", "MAG_BT")


def _columns(hdul: fits.HDUList) -> dict[str, fits.BinTableHDU]:
    """The binary-table extensions by their (first) column name."""
    out: dict[str, fits.BinTableHDU] = {}
    for hdu in hdul[1:]:
        name = hdu.header.get("TTYPE1")
        if isinstance(name, str):
            out.setdefault(name, hdu)
    return out


def _byte_order(header: fits.Header) -> str:
    endian = str(header.get("ENDIAN", "04:03:02:01")).strip()
    if endian == "04:03:02:01":
        return "<"
    if endian == "01:02:03:04":
        return ">"
    raise ValueError(f"unknown ENDIAN {endian!r} (expected '04:03:02:01' or '01:02:03:04')")


def read_index_stars(path: str | os.PathLike[str]) -> pd.DataFrame:
    """All the stars of one astrometry.net index file.

    Parameters
    ----------
    path
        The index FITS file (e.g. ``/usr/share/astrometry/index-tycho2-10.littleendian.fits``).

    Returns
    -------
    pandas.DataFrame
        ``ra``, ``dec`` (degrees, ICRS) and ``mag`` (the tag-along magnitude, ``MAG_VT`` for
        Tycho-2; NaN when the file carries none), in the file's order.

    Raises
    ------
    ValueError
        When the file holds no ``kdtree_data_stars``/``kdtree_range_stars`` extension (not an
        index file), or its star data are not 3-D u32.
    """
    path = Path(path)
    with fits.open(path, memmap=True) as hdul:
        order = _byte_order(hdul[0].header)
        ext = _columns(hdul)
        missing = [n for n in ("kdtree_data_stars", "kdtree_range_stars") if n not in ext]
        if missing:
            raise ValueError(
                f"{path} is not an astrometry.net index file: no {', '.join(missing)} extension; "
                "give an index-*.fits file built by build-astrometry-index"
            )
        head = ext.get("kdtree_header_stars")
        if head is not None:
            ndim = int(head.header.get("KDT_NDIM", 3))
            kind = str(head.header.get("KDT_DATA", "u32")).strip()
            if ndim != 3 or kind != "u32":
                raise ValueError(
                    f"{path}: star kd-tree has KDT_NDIM={ndim}, KDT_DATA={kind!r}; only 3-D u32 "
                    "trees (every build-astrometry-index output) can be read"
                )
        rng = np.frombuffer(ext["kdtree_range_stars"].data.tobytes(), dtype=f"{order}f8")
        if rng.size != 7:
            raise ValueError(f"{path}: kdtree_range_stars holds {rng.size} doubles, expected 7")
        raw = np.frombuffer(ext["kdtree_data_stars"].data.tobytes(), dtype=f"{order}u4")
        xyz = rng[0:3] + raw.reshape(-1, 3).astype(np.float64) / rng[6]
        mag = np.full(len(xyz), np.nan)
        for hdu in hdul[1:]:
            if str(hdu.header.get("AN_FILE", "")).strip() != "TAGALONG":
                continue
            names = [c.upper() for c in hdu.columns.names]
            for col in _MAG_COLUMNS:
                if col in names and len(hdu.data) == len(xyz):
                    mag = np.asarray(hdu.data[hdu.columns.names[names.index(col)]], dtype=float)
                    break
            break
    norm = np.linalg.norm(xyz, axis=1)
    ra = np.mod(np.rad2deg(np.arctan2(xyz[:, 1], xyz[:, 0])), 360.0)
    dec = np.rad2deg(np.arcsin(np.clip(xyz[:, 2] / norm, -1.0, 1.0)))
    return pd.DataFrame({"ra": ra, "dec": dec, "mag": mag})


def find_index_files(index_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """The index files (``index-*.fits``) in ``index_dir``, or in the first default folder with any.

    Parameters
    ----------
    index_dir
        A folder; None tries `DEFAULT_INDEX_DIRS` (Debian's is ``/usr/share/astrometry``).

    Returns
    -------
    list of Path
        Sorted; empty when there are none.
    """
    dirs = [Path(index_dir)] if index_dir is not None else [Path(d) for d in DEFAULT_INDEX_DIRS]
    for folder in dirs:
        if folder.is_dir():
            files = sorted(folder.glob("index-*.fits"))
            if files:
                return files
    return []


def index_stars(
    ra: float,
    dec: float,
    radius_deg: float,
    *,
    index_dir: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """The index stars within ``radius_deg`` of (``ra``, ``dec``), merged over every index file.

    Parameters
    ----------
    ra, dec
        Centre (degrees, ICRS).
    radius_deg
        Cone radius (degrees).
    index_dir
        Folder of the index files; None tries `DEFAULT_INDEX_DIRS`.

    Returns
    -------
    pandas.DataFrame
        ``ra``, ``dec``, ``mag``, sorted by magnitude; a star found in several files (the same
        catalog star in indices of several scales) once.

    Raises
    ------
    FileNotFoundError
        When the folder holds no ``index-*.fits`` file.
    """
    files = find_index_files(index_dir)
    if not files:
        where = index_dir if index_dir is not None else " or ".join(DEFAULT_INDEX_DIRS)
        raise FileNotFoundError(
            f"no astrometry.net index files (index-*.fits) in {where}; install Debian's "
            "astrometry-data-tycho2 packages or give index_dir"
        )
    r0, d0 = np.deg2rad(ra), np.deg2rad(dec)
    centre = np.array([np.cos(d0) * np.cos(r0), np.cos(d0) * np.sin(r0), np.sin(d0)])
    cos_radius = np.cos(np.deg2rad(radius_deg))
    parts = []
    for path in files:
        stars = read_index_stars(path)
        rr, dd = np.deg2rad(stars["ra"].to_numpy()), np.deg2rad(stars["dec"].to_numpy())
        dot = (
            np.cos(dd) * (np.cos(rr) * centre[0] + np.sin(rr) * centre[1]) + np.sin(dd) * centre[2]
        )
        parts.append(stars[dot >= cos_radius])
    found = pd.concat(parts, ignore_index=True)
    # the same star in several files has the same stored integers: equal to ~1e-9 deg
    key = np.round(found[["ra", "dec"]].to_numpy() * 1e6).astype(np.int64)
    keep = ~pd.DataFrame(key).duplicated().to_numpy()
    found = found[keep].sort_values("mag", kind="stable").reset_index(drop=True)
    return found
