"""Atomic products: write under a temporary name, then rename into place.

A crash leaves at most a ``.tmp-*`` sibling, never a product that looks whole but is not.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_json_atomic"]


def _tmp_sibling(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Give a temporary path to write a product to, renamed to ``final`` when the block succeeds.

    Works for files and directories (zarr stores). An existing product at ``final`` is replaced
    only once the new one is whole; on an error the temporary is removed and ``final`` is untouched.

    Parameters
    ----------
    final : str or Path
        Where the product belongs.

    Yields
    ------
    Path
        The temporary path, in the same folder (so the rename is atomic on one filesystem).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            old = _tmp_sibling(final)
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON to ``path`` atomically (see `atomic_path`).

    Parameters
    ----------
    path : str or Path
        The file.
    payload : object
        Anything `json.dumps` takes; other objects are written with `str`.
    """
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str, ensure_ascii=False) + "\n")
