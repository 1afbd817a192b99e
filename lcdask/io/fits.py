"""Reading raw FITS frames: find the image HDU, read its header, read its pixels.

Plain, gzip-compressed (``.gz``) and tile-compressed (``.fz``) files are read the same way: the
first HDU holding an image is the frame. Overscan subtraction and trimming are applied here, on
one frame, so that every later stage sees only the light-sensitive area.

Colour frames are read as one luminance image (`frame_colour` tells which kind a header holds):

- a 3-D image of one plane (``NAXIS3 = 1``) is the 2-D image it holds;
- a 3-D image of three planes (RGB, as colour cameras' drivers write a debayered frame) is the
  mean of its planes;
- a 2-D Bayer-matrix (CFA) frame, one that names its pattern in ``BAYERPAT`` or ``COLORTYP``
  (``'RGGB'``, ``'GBRG'``...), is the sum of each 2x2 block of pixels (a superpixel at half the
  resolution). Every 2x2 block of a Bayer mosaic holds one red, two green and one blue pixel,
  whatever the pattern and its offset, so the sum is the same luminance for lights and for
  calibration frames written with another pattern name: bias and dark subtraction commute with
  it exactly, and the flat is the superpixel flat of the same sensor.

Other 3-D images (data cubes of several exposures) are not frames.

These functions open and close their file in one call and hold no handle between calls, so they
can be sent to Dask workers.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning
from astropy.utils.exceptions import AstropyUserWarning

from lcdask.errors import FrameError
from lcdask.io.headers import parse_section

__all__ = [
    "FrameHeader",
    "bayer_superpixels",
    "frame_colour",
    "native_dtype",
    "overscan_model",
    "read_frame",
    "read_frame_header",
    "read_frame_sample",
]

_IMAGE_HDUS = (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)


@dataclass(frozen=True)
class FrameHeader:
    """The header of a frame's image HDU and where the image is.

    Attributes
    ----------
    path : str
        The file.
    hdu_index : int
        Index of the first HDU with an image (2-D, or 3-D of one or three planes).
    header : astropy.io.fits.Header
        That HDU's header (for a tile-compressed HDU, the header of the image it holds).
    shape : tuple of int
        ``(ny, nx)`` of the stored image (of one plane), before any trimming and before the 2x2
        sums of a Bayer frame.
    colour : str
        ``""`` for a monochrome frame, ``"rgb"`` for three planes, ``"bayer"`` for a Bayer
        matrix (see `frame_colour`).
    """

    path: str
    hdu_index: int
    header: fits.Header
    shape: tuple[int, int]
    colour: str = ""


_COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"PK\x03\x04")  # gzip, bzip2, zip (astropy opens them)


def _what_is_wrong(path: str | Path, exc: Exception) -> str:
    """Why a file astropy cannot open is not a FITS file, in words a user can act on."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(40)
    except OSError:
        return f"{type(exc).__name__}: {exc}"
    if size == 0:
        return "empty file, 0 bytes"
    if not head.startswith(b"SIMPLE") and not head.startswith(_COMPRESSED_MAGIC):
        return f"{size} bytes starting {head[:24]!r}, not with a FITS header card SIMPLE"
    return f"{type(exc).__name__}: {exc}"


def _open(path: str | Path) -> fits.HDUList:
    try:
        return fits.open(path, memmap=False, lazy_load_hdus=False, ignore_missing_simple=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # astropy raises OSError, ValueError, TypeError... on corrupt files
        reason = _what_is_wrong(path, exc)
        raise FrameError(f"{path}: not a readable FITS file ({reason})") from exc


_BAYER_KEYS = ("BAYERPAT", "COLORTYP")
_BAYER_PATTERN = re.compile(r"^[RGB]{4}$")


def frame_colour(header: fits.Header) -> str:
    """Tell a monochrome frame from a colour one, by its image header.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The header of the image HDU.

    Returns
    -------
    str
        ``"rgb"`` for a 3-D image of three planes, ``"bayer"`` for a 2-D image whose
        ``BAYERPAT`` or ``COLORTYP`` names a 2x2 pattern of R, G and B (``'RGGB'``, ``'BGGR'``,
        ``'GRBG'``, ``'GBRG'``...), ``""`` otherwise (a 3-D image of one plane is monochrome).
    """
    naxis = int(header.get("NAXIS", 0) or 0)
    if naxis == 3 and int(header.get("NAXIS3", 1) or 1) == 3:
        return "rgb"
    if naxis == 2:
        for key in _BAYER_KEYS:
            value = header.get(key)
            if isinstance(value, str) and _BAYER_PATTERN.match(value.strip().upper()):
                return "bayer"
    return ""


def _is_frame(header: fits.Header) -> bool:
    """A 2-D image, or a 3-D one of one plane or three (RGB)."""
    naxis = int(header.get("NAXIS", 0) or 0)
    if naxis == 2:
        return int(header.get("NAXIS1", 0) or 0) > 0 and int(header.get("NAXIS2", 0) or 0) > 0
    return naxis == 3 and int(header.get("NAXIS3", 0) or 0) in (1, 3)


def _image_hdu_index(hdul: fits.HDUList, path: str | Path) -> int:
    cubes = []
    for index, hdu in enumerate(hdul):
        if not isinstance(hdu, _IMAGE_HDUS):
            continue
        if _is_frame(hdu.header):
            return index
        if hdu.header.get("NAXIS", 0) == 3:
            cubes.append(int(hdu.header.get("NAXIS3", 0) or 0))
    if cubes:
        raise FrameError(
            f"{path}: a 3-D image of {cubes[0]} planes, not a frame (one plane, or three of an "
            "RGB frame); split it into one file per exposure"
        )
    raise FrameError(f"{path}: no 2-D image HDU in the file (HDUs: {[h.name for h in hdul]})")


def _check_complete(hdul: fits.HDUList, index: int, path: str | Path) -> None:
    """Raise FrameError when an uncompressed file is shorter than its header says."""
    if str(path).endswith((".gz", ".fz")):
        return  # the byte count of compressed files is checked when the data are read
    info = hdul.fileinfo(index)
    if info is None:
        return
    needed = info["datLoc"] + info["datSpan"]
    size = os.path.getsize(path)
    # The last 2880-byte block may legitimately be unpadded in files from some writers.
    if size < needed - 2880 + 1:
        raise FrameError(f"{path}: truncated file ({size} bytes, the header needs {needed})")


def read_frame_header(path: str | Path) -> FrameHeader:
    """Read the header of a frame's image HDU, without reading its pixels.

    Parameters
    ----------
    path : str or Path
        A FITS file (``.fits``, ``.fit``, ``.fts``, optionally ``.gz``; or ``.fz``).

    Returns
    -------
    FrameHeader

    Raises
    ------
    FrameError
        If the file is not FITS, has no 2-D image HDU, or is shorter than its header says.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (VerifyWarning, AstropyUserWarning))
        hdul = _open(path)
        try:
            index = _image_hdu_index(hdul, path)
            header = hdul[index].header.copy()
            _check_complete(hdul, index, path)
        finally:
            hdul.close()
    shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
    colour = frame_colour(header)
    return FrameHeader(path=str(path), hdu_index=index, header=header, shape=shape, colour=colour)


@contextmanager
def _image_hdu(path: str | Path, hdu_index: int | None) -> Iterator[fits.ImageHDU]:
    """The frame's image HDU while its file is open (odd headers' warnings silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (VerifyWarning, AstropyUserWarning))
        hdul = _open(path)
        try:
            yield hdul[_image_hdu_index(hdul, path) if hdu_index is None else hdu_index]
        finally:
            hdul.close()


def _unreadable(path: str | Path, exc: Exception) -> FrameError:
    return FrameError(f"{path}: pixel data unreadable ({type(exc).__name__}: {exc})")


def read_frame_sample(
    path: str | Path, *, hdu_index: int | None = None, size: int = 512
) -> np.ndarray:
    """Read the central block of a frame's pixels, without reading the whole image.

    Only the rows of the block are read from a file that is not gzipped (``ImageHDU.section``); a
    colour frame's block is its luminance, as `read_frame` gives it. No overscan is subtracted:
    the block is for a look at the sky (are there stars? how high is the level?).

    Parameters
    ----------
    path : str or Path
        The FITS file.
    hdu_index : int, optional
        Index of the image HDU; found when not given.
    size : int, optional
        The block's side in stored pixels (at most the image's).

    Returns
    -------
    numpy.ndarray
        float32, 2-D.

    Raises
    ------
    FrameError
        If the file cannot be read.
    """
    with _image_hdu(path, hdu_index) as hdu:
        colour = frame_colour(hdu.header)
        ny, nx = int(hdu.header["NAXIS2"]), int(hdu.header["NAXIS1"])
        hy, hx = min(size, ny) // 2, min(size, nx) // 2
        y0, x0 = (ny // 2 - hy) // 2 * 2, (nx // 2 - hx) // 2 * 2  # even: whole Bayer blocks
        rows, cols = slice(y0, y0 + 2 * hy), slice(x0, x0 + 2 * hx)
        # A gzip stream cannot seek: reading its rows one section at a time took 4 s for a
        # 512-row block of a 3k x 2k frame, against 0.1 s for the whole image.
        source = hdu.data if str(path).endswith(".gz") else hdu.section
        try:
            if hdu.header.get("NAXIS", 0) == 3:
                block = np.asarray(source[:, rows, cols], dtype=np.float64).mean(axis=0)
            else:
                block = np.asarray(source[rows, cols], dtype=np.float64)
        except Exception as exc:  # a short or corrupt file: astropy raises many kinds
            raise _unreadable(path, exc) from exc
    if colour == "bayer":
        return bayer_superpixels(block)
    return block.astype(np.float32)


def overscan_model(overscan: np.ndarray, *, along: str, order: int | None = None) -> np.ndarray:
    """Model the overscan level along the readout direction.

    The strip is reduced by a median across its width, one level per row (``along="y"``) or per
    column. By default that per-row median is the model (as ccdproc's ``subtract_overscan``
    does): it follows the fast bias transients that some controllers show at the start of the
    readout (the Lowell 42" frames settle over their first 15 rows), at the cost of about
    ``1.25 sigma_read / sqrt(width)`` of noise per row. With ``order`` a Legendre polynomial is
    fitted instead (IRAF ``ccdproc``'s approach), with two passes of 3-sigma rejection.

    Parameters
    ----------
    overscan : numpy.ndarray
        The overscan strip, 2-D.
    along : {"y", "x"}
        ``"y"`` when the strip is a block of columns (one level per row), ``"x"`` for rows.
    order : int, optional
        Polynomial order of a smooth fit; None for the per-row median, 0 for one constant level.

    Returns
    -------
    numpy.ndarray
        One level per row (``along="y"``) or per column.
    """
    if along not in ("y", "x"):
        raise ValueError(f"along must be 'y' or 'x', not {along!r}")
    level = np.median(overscan, axis=1 if along == "y" else 0).astype(np.float64)
    if order is None:
        return level
    if order <= 0 or level.size <= order + 1:
        return np.full(level.shape, np.median(level))
    t = np.linspace(-1.0, 1.0, level.size)
    keep = np.ones(level.size, bool)
    for _ in range(2):
        coef = np.polynomial.legendre.legfit(t[keep], level[keep], order)
        resid = level - np.polynomial.legendre.legval(t, coef)
        mad = 1.4826 * np.median(np.abs(resid[keep] - np.median(resid[keep])))
        if mad == 0:
            break
        keep = np.abs(resid) < 3 * mad
    return np.polynomial.legendre.legval(t, coef)


def native_dtype(header: fits.Header) -> np.dtype:
    """The numpy dtype that holds a FITS image's physical values exactly.

    Parameters
    ----------
    header : astropy.io.fits.Header
        The image header (BITPIX, BZERO, BSCALE).

    Returns
    -------
    numpy.dtype
        ``uint16`` for BITPIX 16 with BZERO 32768 (the usual camera frame), the signed integer of
        BITPIX for BZERO 0, ``uint32`` for BITPIX 32 with BZERO 2**31, and float32 otherwise
        (float data, or integers with a scale).
    """
    bitpix = int(header.get("BITPIX", -32))
    bzero = float(header.get("BZERO", 0) or 0)
    bscale = float(header.get("BSCALE", 1) or 1)
    if bitpix > 0 and bscale == 1:
        if bzero == 0:
            return np.dtype({8: "uint8", 16: "int16", 32: "int32", 64: "int64"}[bitpix])
        if (bitpix, bzero) == (16, 32768):
            return np.dtype("uint16")
        if (bitpix, bzero) == (32, 2**31):
            return np.dtype("uint32")
    return np.dtype("float32")


def read_frame(
    path: str | Path,
    *,
    hdu_index: int | None = None,
    trimsec: str = "",
    biassec: str = "",
    overscan_order: int | None = None,
    dtype: np.dtype | str | None = "float32",
) -> np.ndarray:
    """Read a frame's pixels, overscan-subtracted and trimmed.

    Parameters
    ----------
    path : str or Path
        The FITS file.
    hdu_index : int, optional
        Index of the image HDU; found when not given.
    trimsec, biassec : str, optional
        FITS sections (1-based, inclusive, ``"[x1:x2,y1:y2]"``). When ``biassec`` is given the
        overscan model (see `overscan_model`) is subtracted; when ``trimsec`` is given the image is
        cut to it.
    overscan_order : int, optional
        Order of a smooth overscan fit along the strip; None (default) for the per-row median.
    dtype : numpy dtype, str or None, optional
        Type of the result; None keeps the file's physical type (float32 once an overscan is
        subtracted).

    Returns
    -------
    numpy.ndarray
        2-D image. A colour frame is its luminance (see the module's notes), in float32 unless
        ``dtype`` says otherwise: the mean of three RGB planes, or the 2x2 sums of a Bayer
        matrix taken after the overscan subtraction and trimming (an odd last row or column
        is dropped), at half the resolution.

    Raises
    ------
    FrameError
        If the file cannot be read whole or has no image.
    """
    with _image_hdu(path, hdu_index) as hdu:
        colour = frame_colour(hdu.header)
        expected = (int(hdu.header["NAXIS2"]), int(hdu.header["NAXIS1"]))
        if hdu.header.get("NAXIS", 0) == 3:
            expected = (int(hdu.header["NAXIS3"]), *expected)
        try:
            data = hdu.data
        except Exception as exc:
            raise _unreadable(path, exc) from exc
        if data is None or data.shape != expected:
            got = None if data is None else data.shape
            raise FrameError(f"{path}: truncated pixel data (shape {got}, header {expected})")
        image = np.array(data, dtype=data.dtype.newbyteorder("="))
    if image.ndim == 3:  # one plane, or the mean of three (RGB) as luminance
        image = image[0] if image.shape[0] == 1 else image.mean(axis=0, dtype=np.float64)
        if colour == "rgb":
            image = image.astype(np.float32)
    if biassec:
        image = image.astype(np.float32)
        ys, xs = parse_section(biassec)
        strip = image[ys, xs]
        along = "y" if strip.shape[0] >= strip.shape[1] else "x"
        level = overscan_model(strip, along=along, order=overscan_order).astype(np.float32)
        if along == "y" and strip.shape[0] == image.shape[0]:
            image = image - level[:, None]
        elif along == "x" and strip.shape[1] == image.shape[1]:
            image = image - level[None, :]
        else:  # a strip that does not span the image gives one level
            image = image - np.float32(np.median(level))
    if trimsec:
        ys, xs = parse_section(trimsec)
        image = image[ys, xs]
    if colour == "bayer":
        image = bayer_superpixels(image)
    return np.ascontiguousarray(image, dtype=dtype or image.dtype)


def bayer_superpixels(image: np.ndarray) -> np.ndarray:
    """Sum each 2x2 block of a Bayer-matrix image into one luminance pixel.

    Parameters
    ----------
    image : numpy.ndarray
        The 2-D mosaic; an odd last row or column is dropped.

    Returns
    -------
    numpy.ndarray
        float32, of shape ``(ny // 2, nx // 2)``; sums of integer pixels are exact (below 2**24).
    """
    ny, nx = (image.shape[0] // 2) * 2, (image.shape[1] // 2) * 2
    blocks = image[:ny, :nx].astype(np.float32).reshape(ny // 2, 2, nx // 2, 2)
    return blocks.sum(axis=(1, 3), dtype=np.float32)
