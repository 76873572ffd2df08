"""Shared fixtures: real photos when the shared sample is present, else skip. The tests (and
the tools and recipes they start) keep their zero-shot classifier cache in a folder of their
own, never the user's."""

from __future__ import annotations

import streamfit.openmp  # noqa: F401 (first: before torch loads its OpenMP runtime)

# isort: split
import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from programs import load_program

# streamfit's default caches (zero-shot classifiers) in a folder of the tests' own; set in the
# environment, so the tools and recipes the tests start inherit it
os.environ["STREAMFIT_CACHE"] = tempfile.mkdtemp(prefix="streamfit-test-cache-")

atexit.register(shutil.rmtree, os.environ["STREAMFIT_CACHE"], True)

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


@pytest.fixture(scope="session")
def program():
    """``program("tools/NAME")`` or ``program("recipes/NAME")``: that program as a module, the
    one way tests reach a program (:func:`programs.load_program`)."""
    return load_program
