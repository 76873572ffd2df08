"""The CUDA colour kernel under the Numba CUDA simulator (tiny sizes), against the dense
reference. Run only in a process started with ``NUMBA_ENABLE_CUDASIM=1``
(``tests/test_simulator.py`` does that); the file name keeps it out of ordinary collection."""

from __future__ import annotations

import numba
import pytest
from colour_cases import colour_case, reference_system, relative_error

if not numba.config.ENABLE_CUDASIM:
    pytest.skip(
        "needs NUMBA_ENABLE_CUDASIM=1 set before numba is imported", allow_module_level=True
    )

from streamfit.fit.backends.cuda import CudaBackend


@pytest.mark.parametrize(
    ("batch", "n", "height", "width", "tile"),
    [(2, 12, 12, 20, 8), (2, 70, 12, 20, 8), (1, 40, 20, 18, 16)],
)
def test_gram_matches_dense_reference(batch, n, height, width, tile):
    """Partial edge tiles, splats listed in several tiles, masked and non-finite splats; tile
    lists of one and of three 32-splat chunks (pairs of chunks and a chunk with itself)."""
    params, mask, target = colour_case(batch, n, height, width, seed=n)
    gram, rhs = CudaBackend(tile=tile).colour_system(params, mask, target)
    ref_gram, ref_rhs = reference_system(params, mask, target)
    assert relative_error(gram, ref_gram) < 1e-5
    assert relative_error(rhs, ref_rhs) < 1e-5
    assert relative_error(gram, gram.transpose(1, 2)) < 1e-6  # atomics add in any order
