"""Sky background removal on one frame: a smooth 2-D background subtracted, its RMS map kept.

`subtract_sky` is the per-frame kernel: it estimates the background on a mesh (SExtractor's
estimator through `sep.Background` by default, or `photutils.background.Background2D` with the
same estimator), subtracts it, and returns the RMS map that photometry uses for its errors.

The RMS map is the per-pixel standard deviation of the sky (read noise plus the sky's photon
noise, after calibration); it does *not* include the photon noise of the sources, which
photometry adds from the gain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SKY_BACKENDS", "SkyModel", "subtract_sky"]

SKY_BACKENDS = ("sep", "photutils")


@dataclass(frozen=True)
class SkyModel:
    """The background of one frame.

    Attributes
    ----------
    background : numpy.ndarray
        Smooth 2-D background (image units), float32.
    rms : numpy.ndarray
        Per-pixel background RMS (image units), float32.
    level : float
        Global background (median of the mesh).
    level_rms : float
        Global background RMS.
    """

    background: np.ndarray
    rms: np.ndarray
    level: float
    level_rms: float


def _prepare(image: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(image)
    if data.ndim != 2:
        raise ValueError(f"subtract_sky needs a 2-D image, got shape {data.shape}")
    data = np.ascontiguousarray(data, dtype=np.float32)
    bad = ~np.isfinite(data)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != data.shape:
            raise ValueError(
                f"subtract_sky: mask shape {mask.shape} differs from image shape {data.shape}"
            )
        bad |= mask
    return data, bad


def subtract_sky(
    image: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    backend: str = "sep",
    box_size: int = 64,
    filter_size: int = 3,
) -> tuple[np.ndarray, SkyModel]:
    """Estimate the 2-D background of a frame and subtract it.

    Parameters
    ----------
    image : numpy.ndarray
        2-D calibrated frame (any numeric dtype; non-finite pixels are masked).
    mask : numpy.ndarray of bool, optional
        True where a pixel must not enter the estimate (bad pixels, cosmic rays).
    backend : {"sep", "photutils"}, optional
        `sep.Background` (fast C) or `photutils.background.Background2D` with the
        SExtractor estimator (pure Python, slower).
    box_size : int, optional
        Mesh size in pixels; larger than the stars, smaller than the sky's structure.
    filter_size : int, optional
        Size (in meshes) of the median filter over the mesh.

    Returns
    -------
    subtracted : numpy.ndarray
        ``image - background`` as float32 (non-finite pixels stay non-finite).
    sky : SkyModel
        The background, its RMS map and global levels.

    Raises
    ------
    ValueError
        For an unknown backend, a non-2-D image, a mask of another shape or a bad box size.
    """
    if backend not in SKY_BACKENDS:
        raise ValueError(f"subtract_sky: backend must be one of {SKY_BACKENDS}, got {backend!r}")
    if box_size < 4 or filter_size < 1:
        raise ValueError(
            f"subtract_sky: box_size must be >= 4 and filter_size >= 1, "
            f"got {box_size} and {filter_size}"
        )
    data, bad = _prepare(image, mask)
    if backend == "sep":
        import sep

        # the bad pixels are sep's mask, and sep leaves masked pixels out whatever they hold
        # (NaN included; tests/test_sky.py): no copy of the frame with them zeroed
        bkg = sep.Background(
            data,
            mask=bad if bad.any() else None,
            bw=box_size,
            bh=box_size,
            fw=filter_size,
            fh=filter_size,
        )
        background = bkg.back(dtype=np.float32)
        rms = bkg.rms(dtype=np.float32)
        level, level_rms = float(bkg.globalback), float(bkg.globalrms)
    else:
        from astropy.stats import SigmaClip
        from photutils.background import Background2D, SExtractorBackground, StdBackgroundRMS

        if bad.any():  # photutils warns of non-finite values even where they are masked
            data = np.where(bad, np.float32(0.0), data)
        bkg2 = Background2D(
            data,
            box_size,
            mask=bad if bad.any() else None,
            filter_size=filter_size,
            sigma_clip=SigmaClip(sigma=3.0, maxiters=5),
            bkg_estimator=SExtractorBackground(),
            bkgrms_estimator=StdBackgroundRMS(),
        )
        background = np.asarray(bkg2.background, dtype=np.float32)
        rms = np.asarray(bkg2.background_rms, dtype=np.float32)
        level, level_rms = float(bkg2.background_median), float(bkg2.background_rms_median)
    subtracted = np.asarray(image, dtype=np.float32) - background
    return subtracted, SkyModel(background, rms, level, level_rms)
