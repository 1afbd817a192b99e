"""What the online queries share (`lcdask.catalogs`, `lcdask.targets`)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["query_versions", "socket_timeout"]


@contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Temporarily set the default socket timeout (astroquery's TAP client takes none)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def query_versions() -> dict[str, str]:
    """The versions that answer a query (lcdask, astroquery, astropy), for the cached answer."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("lcdask", "astroquery", "astropy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out
