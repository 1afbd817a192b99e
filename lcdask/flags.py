"""Quality flags: bit masks stored with frames (and later with detections and sources)."""

from __future__ import annotations

from enum import IntFlag

__all__ = ["FrameFlag"]


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
