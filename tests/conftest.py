"""Shared fixtures: real photos when the shared sample is present, else skip."""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split
import os
import sys
from pathlib import Path

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    # The simulator runs every GPU thread as a Python thread and polls them at barriers:
    # with the default 5 ms switch interval a barrier costs milliseconds, with 0.5 ms a tenth
    sys.setswitchinterval(5e-4)

SHARED_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


@pytest.fixture(scope="session")
def imagenet_sample() -> Path:
    """Folder of real-photo DataComp shards; tests using it skip where it is absent."""
    if not (SHARED_SAMPLE / "train-000000.tar").is_file():
        pytest.skip(f"real-photo sample not found at {SHARED_SAMPLE}")
    return SHARED_SAMPLE
