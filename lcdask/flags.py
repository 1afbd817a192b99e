"""Quality flags: bit masks stored with frames (and later with detections and sources)."""

from __future__ import annotations

from enum import IntFlag

__all__ = ["ARTEFACT", "LEVEL2_FLAGS", "SATURATED_FRACTION", "UNUSABLE", "FrameFlag"]


class FrameFlag(IntFlag):
    """Why a frame is not (fully) usable; stored as the cube's ``flags`` coordinate.

    The reason in words is in the ``flag_reason`` coordinate.
    """

    OK = 0
    UNREADABLE = 1
    """The pixel data could not be read whole; the frame holds no data."""
    NONFINITE = 2
    """Some pixels are NaN or infinite (they are kept as they are; calibration masks them)."""
    DUPLICATE = 4
    """The same exposure as an earlier frame (same time, type and pixels)."""
    ASTROMETRY_FAILED = 8
    """No plate solution: the frame's detections have no sky positions."""
    PHOTCAL_FAILED = 16
    """No zero point: the frame has relative fluxes only."""
    SATURATED = 32
    """Most of the frame's pixels are at or above saturation (`SATURATED_FRACTION`)."""
    REJECTED = 64
    """A calibration frame left out of the masters as an outlier (light leak, glow, stars, ...)."""
    POINTING = 128
    """Informational: the header's pointing is far from the plate solution (the frame is used)."""


UNUSABLE = FrameFlag.UNREADABLE | FrameFlag.DUPLICATE | FrameFlag.SATURATED
"""Frames with these bits hold no usable pixels and are left out of every later stage."""

LEVEL2_FLAGS = FrameFlag.ASTROMETRY_FAILED | FrameFlag.PHOTCAL_FAILED | FrameFlag.POINTING
"""The bits the Level 2 stage sets; it clears them when it runs again."""

SATURATED_FRACTION = 0.5
"""A frame with more than this fraction of its pixels at or above saturation is flagged SATURATED:
it cannot hold measurable stars (an open shutter in daylight, a flat of a wrong exposure)."""

ARTEFACT = 2048
"""Detection (and light-curve) bit: a detector artefact - a hot pixel, a warm column or another
source that stands still on the detector while the field moves (`lcdask.classify.find_artefacts`).
Set by the light-curve stage on the detections it groups into artefact sources; above the
detection bits (0-7) and the light-curve bits (256-1024) of `lcdask.lightcurves.LightCurveFlag`
(whose OUTLIER, 4096, comes after it)."""
