"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The development data folder (``$LAZYLABELS_SHARED_DATA`` or ``../shared/data``).

    Tests using it are skipped when it is absent.
    """
    path = Path(
        os.environ.get("LAZYLABELS_SHARED_DATA", Path(__file__).parents[2] / "shared" / "data")
    )
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path} (set LAZYLABELS_SHARED_DATA)")
    return path
