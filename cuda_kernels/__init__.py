"""Numba kernels of the splat image model: the per-pixel maths written once
(:mod:`cuda_kernels.splat_math`), compiled for the CPU (:mod:`cuda_kernels.cpu`, ``njit``) and
for CUDA GPUs (:mod:`cuda_kernels.gpu`, ``numba.cuda``). Arrays in, arrays out: nothing here
knows about tensors, configs or the rest of streamfit.

Every kernel takes the cut-off ``qcut`` (the largest ``q`` with a non-zero weight) as an
argument so the image model stays defined in one place, by its caller.
"""
