"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder: ``$MATSEG_SHARED_DATA``, else ``../shared/data`` beside the repo.

    Tests that need it are skipped (with the path in the reason) when it is absent.
    """
    env = os.environ.get("MATSEG_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set MATSEG_SHARED_DATA to its location)")
    return path
