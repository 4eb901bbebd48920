"""Shared fixtures for the stage tests. Synthetic scenes and helpers live in :mod:`tests.fixtures.room`."""

from __future__ import annotations

import pytest

from vid2scene import progress


@pytest.fixture(autouse=True, scope="session")
def _quiet_progress_bars():
    progress.set_enabled(False)
    yield
    progress.set_enabled(True)
