"""Shared fixtures: real photos when the shared sample is present, else skip. The tests (and
the tools and recipes they start) keep their zero-shot classifier cache in a folder of their
own, never the user's."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# Idle OpenMP threads of torch and the Numba kernels must sleep, not spin: on a busy 2-core
# machine spinning workers slow small fits down by 10x or more. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# streamfit's default caches (zero-shot classifiers) in a folder of the tests' own; set in the
# environment, so the tools and recipes the tests start inherit it
os.environ["STREAMFIT_CACHE"] = tempfile.mkdtemp(prefix="streamfit-test-cache-")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

atexit.register(shutil.rmtree, os.environ["STREAMFIT_CACHE"], True)

SHARED_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-sample"


@pytest.fixture(scope="session")
def imagenet_sample() -> Path:
    """Folder of real-photo DataComp shards; tests using it skip where it is absent."""
    if not (SHARED_SAMPLE / "train-000000.tar").is_file():
        pytest.skip(f"real-photo sample not found at {SHARED_SAMPLE}")
    return SHARED_SAMPLE
