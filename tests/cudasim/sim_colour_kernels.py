"""The CUDA colour kernel under the Numba CUDA simulator (tiny sizes), against the dense
reference. Run only in a process started with ``NUMBA_ENABLE_CUDASIM=1``
(``tests/test_colour.py`` does that); the file name keeps it out of ordinary collection."""

from __future__ import annotations

import numba
import pytest
from colour_cases import colour_case, reference_system, relative_error

if not numba.config.ENABLE_CUDASIM:
    pytest.skip(
        "needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported", allow_module_level=True
    )

from streamfit.fit.backends.cuda import CudaBackend  # noqa: E402


def test_gram_matches_dense_reference():
    """Partial edge tiles, splats listed in several tiles, masked and non-finite splats."""
    params, mask, target = colour_case(2, 12, 12, 20, seed=8)
    gram, rhs = CudaBackend(tile=8).colour_system(params, mask, target)
    ref_gram, ref_rhs = reference_system(params, mask, target)
    assert relative_error(gram, ref_gram) < 1e-5
    assert relative_error(rhs, ref_rhs) < 1e-5
    assert relative_error(gram, gram.transpose(1, 2)) < 1e-6  # atomics add in any order
