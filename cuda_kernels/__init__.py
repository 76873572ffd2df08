"""Numba kernels of the splat image model: the per-pixel maths written once
(:mod:`cuda_kernels.splat_math`), compiled for the CPU (:mod:`cuda_kernels.cpu`, ``njit``) and
for CUDA GPUs (:mod:`cuda_kernels.gpu`, ``numba.cuda``). Arrays in, arrays out: nothing here
knows about tensors, configs or the rest of streamfit.

Every kernel takes the cut-off ``qcut`` (the largest ``q`` with a non-zero weight) as an
argument so the image model stays defined in one place, by its caller.
"""

import hashlib
import os
from pathlib import Path

import numba


def _source_keyed_cache_dir() -> Path:
    """Where compiled kernels are cached: one directory per version of this package's sources.

    Numba keys its on-disk cache on the file that defines a kernel alone and misses edits to
    the files whose functions it inlines (``splat_math``, ``init_math``); a directory named by
    a hash of every source here makes any edit a fresh cache. ``NUMBA_CACHE_DIR`` overrides.
    """
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "streamfit" / "numba" / digest.hexdigest()[:16]


if not os.environ.get("NUMBA_CACHE_DIR"):
    # read when each cached kernel is defined, so it must be set before the kernel modules load
    numba.config.CACHE_DIR = str(_source_keyed_cache_dir())
