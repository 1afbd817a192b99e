"""The errors lcdask raises for failures a user can act on."""


class LcdaskError(Exception):
    """Base of the pipeline failures a user can act on; the message names the input and the fix."""


class FrameError(LcdaskError):
    """One frame cannot be used (unreadable file, no image, bad header); the run skips it."""


class HeaderError(FrameError):
    """A header lacks a key the pipeline needs, or holds a value that cannot be parsed."""


class SchedulerLostError(LcdaskError):
    """The Dask scheduler went away during a run; what is finished is kept, a rerun resumes."""
