"""Shared fixtures: the location of ../shared/data (tests skip with a reason when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WSSS_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of ../shared/data; skips the test when the folder is not there."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real reference data not found at {SHARED_DATA} (set WSSS_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def hpa_sample(shared_data: Path) -> Path:
    """Path of ../shared/data/hpa_sample (three real HPA fields of view with reference masks)."""
    path = shared_data / "hpa_sample"
    if not (path / "images").is_dir():
        pytest.skip(f"{path}/images not found")
    return path
