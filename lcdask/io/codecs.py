"""Noise-preserving quantisation of floating-point frames: a zarr v3 codec, as fpack does it.

`NoiseQuantize` turns each chunk (one frame) of a float array into integers with a step that is a
fixed fraction of the frame's own noise, ``step = sigma / level``, with subtractive dithering
(CFITSIO's SUBTRACTIVE_DITHER_1; Pence, Seaman & White 2009, PASP 121, 1260)::

    I = floor((v - zero) / step + R)            # = round((v - zero) / step + R - 0.5)
    v' = (I - R + 0.5) * step + zero

with ``R`` uniform in [0, 1), the same on encoding and decoding. The error ``v' - v`` is uniform
within +-step/2 and has zero mean whatever ``v`` (plain rounding would bias a flat region by up to
step/2); it adds ``step / sqrt(12) = sigma / (level sqrt(12))`` of noise in quadrature (0.018
sigma at ``level = 16``: 0.016% more noise). ``sigma`` is `noise_sigma`, CFITSIO's "noise3"
(the median absolute second difference along rows, which the sky's gradients and the stars
hardly move).

The integers are stored zigzag-coded as little-endian uint32 (small magnitudes, small numbers:
the compressor after this codec, Blosc lz4 with bit shuffle, then keeps ~log2(level) + 3 bits
a pixel); NaN, +inf and -inf as three reserved values. A chunk whose noise is zero or not
finite (constant, all NaN: the fill), whose range does not fit 32-bit integers, or of fewer than
five columns is stored losslessly (its own bytes). Every chunk starts with a 32-byte header:
magic ``LCNQ``, version, mode, item size, flags, step, zero and the dither seed.

The dither ``R`` is a fixed table of `DITHER_TABLE_SIZE` values from SplitMix64 (defined here,
not by a library's generator, so that it never changes), read from an offset given by the
chunk's seed: the CRC-32 of the rows the noise was measured on. Encoding is deterministic (the
same frame gives the same bytes), and decoding gives back exactly the values the integers stand
for, on any machine.

Importing this module registers the codec with zarr (`CODEC_NAME`); lcdask's package metadata
declares it under the ``zarr.codecs`` entry points too, so that ``zarr.open_array`` finds it in
any process where lcdask is installed.
"""

from __future__ import annotations

import asyncio
import functools
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.core.common import parse_named_configuration
from zarr.registry import register_codec

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec

__all__ = [
    "CODEC_NAME",
    "DITHER_TABLE_SIZE",
    "NoiseQuantize",
    "decode_chunk",
    "dither_values",
    "encode_chunk",
    "noise_sigma",
    "read_header",
]

CODEC_NAME = "lcdask.noise_quantize"
"""The codec's name in zarr's metadata (``zarr.json``) and registry."""

DITHER_TABLE_SIZE = 1_048_573
"""Length of the dither table (a prime, 4 MB of float32): a chunk reads it from its own offset,
wrapping, so pixels ~1 M apart share a dither value (CFITSIO's table repeats every 10,000)."""

_MAGIC = b"LCNQ"
_VERSION = 1
_HEADER = struct.Struct("<4sBBBBddQ")  # magic, version, mode, itemsize, flags, step, zero, seed
_LOSSLESS, _QUANTISED = 0, 1
_HAS_NONFINITE = 1
# reserved integers (before zigzag coding): any other value is a pixel's
_NAN, _POS_INF, _NEG_INF = -(2**31), -(2**31) + 1, -(2**31) + 2
_MAX_INT = 2**31 - 16
_NOISE_ROWS = 128
"""Rows (evenly spaced) on which the noise and the zero point are measured: ~0.26 M pixels of a
2048-wide frame, the noise to ~0.3%."""
_NOISE3 = 0.6052697
"""1 / (0.6745 sqrt 6): sigma of Gaussian white noise from the median |2 x_i - x_(i-2) -
x_(i+2)| (the second difference of independent pixels has variance 6 sigma^2)."""
_BLOCK = 1 << 14
"""Pixels per block of the arithmetic (float64 temporaries of 128 kB stay in cache: 20 ms to
decode a 2048^2 frame against 26 ms with blocks of 2^16 and 86 ms with none)."""


def noise_sigma(image: np.ndarray, *, max_rows: int = _NOISE_ROWS) -> float:
    """A frame's pixel-to-pixel noise, robust to stars and gradients (CFITSIO's "noise3").

    ``0.6052697 * median |2 x_i - x_(i-2) - x_(i+2)|`` over the finite triplets of up to
    ``max_rows`` evenly spaced rows (the last axis): the second difference removes any smooth
    background, and the median ignores the stars, cosmic rays and bad pixels.

    Parameters
    ----------
    image : numpy.ndarray
        The pixels (any shape; rows along the last axis). NaN and infinities are ignored.
    max_rows : int, optional
        At most this many rows are used.

    Returns
    -------
    float
        The estimated sigma; NaN when no row has five consecutive finite pixels.
    """
    rows = _sample_rows(np.asarray(image), max_rows)
    return _noise3(rows)


def _sample_rows(image: np.ndarray, max_rows: int) -> np.ndarray:
    rows = image.reshape(-1, image.shape[-1]) if image.ndim else image.reshape(1, 1)
    if len(rows) > max_rows:
        rows = rows[np.linspace(0, len(rows) - 1, max_rows).round().astype(np.intp)]
    return np.ascontiguousarray(rows)


def _noise3(rows: np.ndarray) -> float:
    if rows.shape[-1] < 5:
        return float("nan")
    x = rows.astype(np.float64, copy=False)
    diff = np.abs(2.0 * x[:, 2:-2] - x[:, :-4] - x[:, 4:]).ravel()
    diff = diff[np.isfinite(diff)]
    if diff.size == 0:
        return float("nan")
    return float(_NOISE3 * np.median(diff))


@functools.cache
def _dither_table() -> np.ndarray:
    """SplitMix64 (Steele, Lea & Flood 2014) of 1..N, top 24 bits, as float32 in [0, 1)."""
    z = np.arange(1, DITHER_TABLE_SIZE + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    table = (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)
    table.flags.writeable = False
    return table


def dither_values(seed: int, start: int, count: int) -> np.ndarray:
    """The dither ``R`` (uniform in [0, 1)) of pixels ``start .. start + count - 1`` of a chunk.

    Parameters
    ----------
    seed : int
        The chunk's seed (from its header).
    start, count : int
        First flat pixel index and number of pixels.

    Returns
    -------
    numpy.ndarray
        float32, multiples of 2**-24.
    """
    table = _dither_table()
    n = DITHER_TABLE_SIZE
    pos = (int(seed) + int(start)) % n
    if pos + count <= n:
        return table[pos : pos + count]
    out = np.empty(count, dtype=np.float32)
    done = 0
    while done < count:
        take = min(count - done, n - pos)
        out[done : done + take] = table[pos : pos + take]
        done += take
        pos = 0
    return out


@dataclass(frozen=True)
class NoiseQuantize(ArrayBytesCodec):
    """zarr v3 array-to-bytes codec: floats quantised to ``sigma / level`` with dithering.

    Each chunk is quantised with its own noise (`noise_sigma`); see the module docstring for
    the scheme, the error (uniform within +-step/2, zero mean) and the encoded layout. Follow
    it with a bytes-to-bytes compressor (lcdask uses Blosc lz4 with bit shuffle,
    `lcdask.io.cube.QUANTISED_COMPRESSOR`).

    Parameters
    ----------
    level : float, optional
        Quantisation levels per noise sigma (fpack's ``-q``): the step is ``sigma / level``.
        Larger keeps more precision and costs ~1 bit a pixel per doubling.

    Notes
    -----
    Write whole chunks: zarr re-encodes a chunk written in part, quantising it again.
    """

    is_fixed_size = False

    level: float = 16.0

    def __init__(self, *, level: float = 16.0) -> None:
        level = float(level)
        if not np.isfinite(level) or level <= 0:
            raise ValueError(f"NoiseQuantize: level must be a number > 0, got {level!r}")
        object.__setattr__(self, "level", level)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        _, configuration = parse_named_configuration(data, CODEC_NAME, require_configuration=False)
        return cls(**(configuration or {}))

    def to_dict(self) -> dict[str, Any]:
        return {"name": CODEC_NAME, "configuration": {"level": self.level}}

    def validate(self, *, shape, dtype, chunk_grid) -> None:
        native = dtype.to_native_dtype()
        if native.kind != "f" or native.itemsize not in (4, 8):
            raise ValueError(
                f"NoiseQuantize stores float32 or float64 arrays, not {native}: use zarr's "
                "BytesCodec (serializer='auto') for this array"
            )

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        # zarr's protocol for codecs whose output size depends on the data (its own BloscCodec
        # and ZstdCodec answer the same): zarr then never asks for a fixed size (sharding
        # indexes only), and this codec's chunks are written and read whole
        raise NotImplementedError(f"{CODEC_NAME}: the encoded size depends on the data")

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        data = encode_chunk(np.asarray(chunk_array.as_numpy_array()), level=self.level)
        return chunk_spec.prototype.buffer.from_array_like(data)

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        dtype = chunk_spec.dtype.to_native_dtype()
        out = decode_chunk(chunk_bytes.as_numpy_array(), chunk_spec.shape, dtype)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(out)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)


def encode_chunk(values: np.ndarray, *, level: float = 16.0) -> np.ndarray:
    """One chunk's encoded bytes (header and payload), as `NoiseQuantize` stores them.

    Parameters
    ----------
    values : numpy.ndarray
        float32 or float64 pixels.
    level : float, optional
        The step is ``noise_sigma / level``.

    Returns
    -------
    numpy.ndarray
        uint8.
    """
    values = np.ascontiguousarray(values)
    itemsize = values.dtype.itemsize
    flat = values.reshape(-1)
    rows = _sample_rows(values, _NOISE_ROWS)
    sigma = _noise3(rows)
    step = sigma / level
    lo, hi = (float(flat.min()), float(flat.max())) if flat.size else (np.nan, np.nan)
    nonfinite = not (np.isfinite(lo) and np.isfinite(hi))
    if nonfinite:
        finite = flat[np.isfinite(flat)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (np.nan, np.nan)
    if not (np.isfinite(step) and step > 0 and np.isfinite(lo)):
        return _lossless(flat)
    sample = rows[np.isfinite(rows)]
    zero = float(np.median(sample)) if sample.size else lo
    if max(hi - zero, zero - lo) / step + 2 > _MAX_INT:
        return _lossless(flat)
    seed = zlib.crc32(rows.tobytes())
    header = _HEADER.pack(
        _MAGIC, _VERSION, _QUANTISED, itemsize, _HAS_NONFINITE * nonfinite, step, zero, seed
    )
    out = np.empty(_HEADER.size + 4 * flat.size, dtype=np.uint8)
    out[: _HEADER.size] = np.frombuffer(header, dtype=np.uint8)
    codes = out[_HEADER.size :].view("<u4")
    inv_step = 1.0 / step
    for start in range(0, flat.size, _BLOCK):
        block = flat[start : start + _BLOCK]
        y = block.astype(np.float64)
        y -= zero
        y *= inv_step
        y += dither_values(seed, start, block.size)
        np.floor(y, out=y)
        if nonfinite:
            bad = ~np.isfinite(y)
            y[bad] = 0.0
        ints = y.astype(np.int32)
        if nonfinite:
            ints[bad & np.isnan(block)] = _NAN
            ints[bad & (block == np.inf)] = _POS_INF
            ints[bad & (block == -np.inf)] = _NEG_INF
        # zigzag: 0, -1, 1, -2, 2 ... -> 0, 1, 2, 3, 4 ...
        codes[start : start + block.size] = ((ints << 1) ^ (ints >> 31)).view(np.uint32)
    return out


def _lossless(flat: np.ndarray) -> np.ndarray:
    header = _HEADER.pack(_MAGIC, _VERSION, _LOSSLESS, flat.dtype.itemsize, 0, 0.0, 0.0, 0)
    payload = flat.astype(flat.dtype.newbyteorder("<"), copy=False).view(np.uint8)
    return np.concatenate([np.frombuffer(header, dtype=np.uint8), payload])


def read_header(data: np.ndarray | bytes) -> dict[str, Any]:
    """The header of one encoded chunk (`encode_chunk`; before the compressor after it).

    Parameters
    ----------
    data : numpy.ndarray or bytes
        The encoded chunk.

    Returns
    -------
    dict
        ``version``, ``mode`` ("quantised" or "lossless"), ``itemsize``, ``nonfinite`` (NaN or
        infinities stored as reserved values), ``step``, ``zero`` and ``seed``.
    """
    magic, version, mode, itemsize, flags, step, zero, seed = _HEADER.unpack_from(
        np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    )
    if magic != _MAGIC:
        raise ValueError(f"{CODEC_NAME}: not a chunk of this codec (magic {magic!r})")
    return {
        "version": version,
        "mode": "quantised" if mode == _QUANTISED else "lossless",
        "itemsize": itemsize,
        "nonfinite": bool(flags & _HAS_NONFINITE),
        "step": step,
        "zero": zero,
        "seed": seed,
    }


def decode_chunk(data: np.ndarray, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The pixels of one encoded chunk (`encode_chunk`).

    Parameters
    ----------
    data : numpy.ndarray
        The chunk's bytes (uint8).
    shape : tuple of int
        The chunk's shape.
    dtype : numpy.dtype
        The array's type (float32 or float64).

    Returns
    -------
    numpy.ndarray
    """
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    magic, version, mode, itemsize, flags, step, zero, seed = _HEADER.unpack_from(data)
    if magic != _MAGIC or version != _VERSION:
        raise ValueError(
            f"{CODEC_NAME}: not a chunk of this codec version (magic {magic!r}, version "
            f"{version}; this lcdask reads version {_VERSION}): upgrade lcdask"
        )
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    payload = data[_HEADER.size :]
    if mode == _LOSSLESS:
        stored = np.dtype(f"<f{itemsize}")
        return payload.view(stored).astype(dtype).reshape(shape)
    codes = payload.view("<u4")
    if codes.size != n:
        raise ValueError(f"{CODEC_NAME}: chunk holds {codes.size} values, expected {n}")
    out = np.empty(n, dtype=dtype)
    offset = zero + 0.5 * step
    for start in range(0, n, _BLOCK):
        code = codes[start : start + _BLOCK]
        ints = (code >> np.uint32(1)).view(np.int32) ^ -(code & np.uint32(1)).view(np.int32)
        y = ints.astype(np.float64)
        y -= dither_values(seed, start, code.size)
        y *= step
        y += offset
        if flags & _HAS_NONFINITE:
            y[ints == _NAN] = np.nan
            y[ints == _POS_INF] = np.inf
            y[ints == _NEG_INF] = -np.inf
        out[start : start + code.size] = y
    return out.reshape(shape)


register_codec(CODEC_NAME, NoiseQuantize)
