"""The reliability suite's fixtures, a plugin its test modules load (``pytest_plugins``).

Not a conftest.py: one here would be imported as the module ``conftest`` and shadow
tests/conftest.py, which other test modules import from. As a plugin it is registered once, so
the night is simulated and run once per session however many modules use it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from _night import NIGHT, OTHER_FIELD, RunResult, run_here

from lcdask.simulate import simulate_night


@pytest.fixture(scope="session")
def night(tmp_path_factory) -> Path:
    """The simulated night (`NIGHT`)."""
    out = tmp_path_factory.mktemp("reliability") / "night"
    simulate_night(out, NIGHT, n_workers=1)
    return out


@pytest.fixture(scope="session")
def clean(night, tmp_path_factory) -> RunResult:
    """The run of the untouched night: what every case's good products must equal."""
    return run_here(night / "raw", tmp_path_factory.mktemp("clean") / "run", night)


@pytest.fixture(scope="session")
def other_night(tmp_path_factory) -> Path:
    """One light of another field, for the frame whose plate solve must fail."""
    out = tmp_path_factory.mktemp("other") / "night"
    simulate_night(out, OTHER_FIELD, n_workers=1)
    return out
