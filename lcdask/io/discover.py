"""Finding raw frames on disk: folders, globs, lists of files."""

from __future__ import annotations

import glob
from collections.abc import Iterable
from pathlib import Path

__all__ = ["FITS_SUFFIXES", "discover_frames", "is_fits_name"]

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fz")
"""File name endings taken as FITS, each also with ``.gz`` (``.fz`` is tile-compressed FITS)."""

LIST_SUFFIXES = (".txt", ".lst", ".list")


def is_fits_name(path: str | Path) -> bool:
    """Tell whether a file name ends like FITS (``.fits``, ``.fit``, ``.fts``, ``.fz``, ``.gz``).

    Parameters
    ----------
    path : str or Path
        A file name.

    Returns
    -------
    bool
    """
    name = str(path).lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return name.endswith(FITS_SUFFIXES)


def _expand(item: str | Path) -> Iterable[Path]:
    path = Path(item)
    if path.is_dir():
        yield from (p for p in sorted(path.rglob("*")) if p.is_file() and is_fits_name(p))
    elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                entry = Path(line)
                yield from _expand(entry if entry.is_absolute() else path.parent / entry)
    elif path.is_file():
        yield path
    elif glob.has_magic(str(item)):
        for match in sorted(glob.glob(str(item), recursive=True)):
            if Path(match).is_file() and is_fits_name(match):
                yield Path(match)
            elif Path(match).is_dir():
                yield from _expand(match)
    else:
        raise FileNotFoundError(f"{item}: no such file, folder or glob match")


def discover_frames(inputs: str | Path | Iterable[str | Path]) -> list[Path]:
    """List the FITS frames named by folders, globs, files or list files.

    Folders are searched recursively for FITS names (see `is_fits_name`); a ``.txt``/``.lst``
    file lists one path per line (relative to the list, ``#`` starts a comment); a file named
    directly is taken whatever its name, so that a mis-named file is reported, not ignored.

    Parameters
    ----------
    inputs : str, Path or iterable of them
        What to search.

    Returns
    -------
    list of Path
        Unique resolved paths, sorted.

    Raises
    ------
    FileNotFoundError
        If an input names nothing that exists.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    found: dict[Path, None] = {}
    for item in inputs:
        for path in _expand(item):
            found.setdefault(path.resolve(), None)
    return sorted(found)
