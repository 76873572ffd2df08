"""The CUDA backend and kernels under the Numba CUDA simulator (no GPU needed): the backend
contract with ``cuda`` as its only backend, the kernels' own tests and the colour kernel's, in
one process with the simulator on (it must be set before numba is first imported, so never
in this one)."""

from __future__ import annotations

from pathlib import Path

from cudasim.kernel_cases import run_under_simulator

TESTS = Path(__file__).resolve().parent


def test_cuda_backend_and_kernels_under_simulator():
    run_under_simulator(
        TESTS / "test_backend_contract.py",
        TESTS / "cudasim" / "sim_gpu_kernels.py",
        TESTS / "cudasim" / "sim_colour_kernels.py",
    )
