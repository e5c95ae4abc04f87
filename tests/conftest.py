"""Shared pytest fixtures."""

from __future__ import annotations

import importlib.util
import os
import sys
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


def load_benchmark(name: str):
    """A script under ``benchmarks/`` imported as a module (``benchmarks/<name>.py``)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod
