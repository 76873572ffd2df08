"""The ``cpu`` backend: the tile rasteriser of :mod:`cuda_kernels.cpu` (Numba ``njit``,
parallel over (image, tile) pairs) behind the :class:`FitBackend` interface.

Tensors are handed to the kernels as zero-copy NumPy views, so everything stays float32 on
the CPU. Kernels are compiled on first use and cached on disk (``cache=True``), so the compile
cost (see :func:`warm_up`) is paid once per machine.

Torch and these kernels share one OpenMP runtime; its idle threads spin by default and steal
the cores from the working ones on a busy machine, so every entry point imports
:mod:`streamfit.openmp` before torch.
"""

from __future__ import annotations

import time
import weakref

import numba
import numpy as np
import torch

from cuda_kernels import colour_cpu, init_cpu, init_math
from cuda_kernels import cpu as kernels
from streamfit.fit.backends.base import AdamTensors, Betas, FitBackend, check_target
from streamfit.fit.init import FLAT_ENERGY, check_splat_count
from streamfit.render import Q_CUTOFF

DEFAULT_TILE = 16


def reduce_parts(n_img: int) -> int:
    """How many parts ``reduce_tiles`` splits each image's splats into: enough for every Numba
    thread to have work when there are fewer images than threads."""
    return max(1, numba.get_num_threads() // max(n_img, 1))


def _view(tensor: torch.Tensor, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """A NumPy view of a CPU tensor (a contiguous copy only when it is not one already)."""
    if tensor.device.type != "cpu":
        raise ValueError(f"the cpu backend takes CPU tensors, got one on {tensor.device}")
    return tensor.detach().to(dtype).contiguous().numpy()


class CpuBackend(FitBackend):
    """Numba CPU backend. ``tile``: tile edge in pixels (the splat lists are per tile)."""

    name = "cpu"

    def __init__(self, device: torch.device | str = "cpu", tile: int = DEFAULT_TILE) -> None:
        super().__init__(device)
        if self.device.type != "cpu":
            raise ValueError(f"the cpu backend runs on the CPU, not {self.device}")
        if tile < 1:
            raise ValueError(f"tile must be >= 1, got {tile}")
        self.tile = tile
        self.qcut = np.float32(Q_CUTOFF)
        self._target_planes: tuple[weakref.ref, int, np.ndarray] | None = None

    def _work(
        self, params: torch.Tensor, mask: torch.Tensor
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Checked kernel inputs and the work arrays of one launch sequence: ``(params, mask,
        proj [B, N, 8], box [B, N, 4], bad [B])``."""
        p = _view(params)
        m = _view(mask, torch.bool)
        n_img, n_spl = m.shape
        if p.shape != (n_img, n_spl, 8):
            raise ValueError(f"params {p.shape} and mask {m.shape} disagree")
        proj = np.empty((n_img, n_spl, kernels.PROJ_FIELDS), np.float32)
        box = np.empty((n_img, n_spl, 4), np.int32)
        return p, m, proj, box, np.zeros(n_img, np.uint8)

    def _planes(self, target: torch.Tensor) -> np.ndarray:
        """``target`` as ``[B, 3, H, W]`` colour planes, which the loss reads with unit stride.

        A fit passes one unchanged target every iteration, so the planes of the last target
        are kept while the same tensor object comes back unmodified (its version counter);
        the cache is one tuple, read once, so concurrent fits on one backend stay correct.
        """
        cached = self._target_planes
        if cached is not None and cached[0]() is target and cached[1] == target._version:
            return cached[2]
        planes = np.ascontiguousarray(_view(target).transpose(0, 3, 1, 2))
        self._target_planes = (weakref.ref(target), target._version, planes)
        return planes

    @torch.no_grad()
    def cutoff_pairs(
        self, params: torch.Tensor, mask: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """``[B]`` int64: the (pixel, splat) pairs inside the cut-off of each image, the work
        that does not depend on the tile size (for FLOP rates; 0 for a non-finite image)."""
        p, m, proj, box, bad = self._work(params, mask)
        kernels.project(p, m, height, width, self.qcut, proj, box, bad)
        counts = np.zeros(box.shape[0], np.int64)
        kernels.cutoff_pairs(proj, box, self.qcut, counts)
        return torch.from_numpy(counts)

    @torch.no_grad()
    def render(
        self, params: torch.Tensor, mask: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """``[B, H, W, 3]`` float32 CPU image; NaN for images with a non-finite valid splat."""
        p, m, proj, box, bad = self._work(params, mask)
        image = np.empty((m.shape[0], height, width, 3), np.float32)
        kernels.launch_render(p, m, self.tile, self.qcut, proj, box, bad, image)
        image[bad.astype(bool)] = np.nan
        return torch.from_numpy(image)

    @torch.no_grad()
    def loss_and_grad(
        self, params: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MSE ``[B]`` and ``d(sum_b mse_b)/d params [B, N, 8]``; both NaN for an image with a
        non-finite valid splat (the fitter then drops it)."""
        check_target(params, target)
        p, m, proj, box, bad = self._work(params, mask)
        loss = torch.empty(m.shape[0], dtype=torch.float32)
        grad = torch.zeros(*m.shape, 8, dtype=torch.float32)
        kernels.launch_loss_and_grad(
            p,
            m,
            self._planes(target),
            self.tile,
            self.qcut,
            proj,
            box,
            bad,
            loss.numpy(),
            grad.numpy(),
            reduce_parts(m.shape[0]),
        )
        return loss, grad

    @torch.no_grad()
    def fused_adam(
        self, tensors: AdamTensors, lr: torch.Tensor, step: int, betas: Betas, eps: float
    ) -> bool:
        """Adam in one pass of :mod:`cuda_kernels.cpu` (on CPU tensors only)."""
        if any(t.device.type != "cpu" for t in tensors):
            return False
        arrays = [t.numpy() for t in tensors]
        kernels.launch_adam(*arrays, _view(lr), betas, step, eps)
        return True

    @torch.no_grad()
    def adaptive_layout(self, images: torch.Tensor, n: int, *settings: float) -> torch.Tensor:
        """The adaptive layout by the kernel of :mod:`cuda_kernels.init_cpu` (``settings``:
        the reference's detail, detail power, scale and anisotropy)."""
        check_splat_count(n, images.shape[1], images.shape[2])
        params = np.zeros((images.shape[0], n, 8), np.float64)
        levels = init_math.levels(n)
        init_cpu.adaptive_layout(_view(images), *settings, FLAT_ENERGY, levels, params)
        return torch.from_numpy(params)

    @torch.no_grad()
    def colour_system(
        self, params: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The colour normal equations by the tile kernel of :mod:`cuda_kernels.colour_cpu`."""
        height, width = check_target(params, target)
        p, m, proj, box, bad = self._work(params, mask)
        offsets, order, tiles_x, n_tiles = kernels.launch_project(
            p, m, self.tile, self.qcut, height, width, proj, box, bad
        )
        tiles_y = n_tiles // tiles_x
        n_img, n_spl = mask.shape
        gram = torch.empty(n_img, n_spl, n_spl, dtype=torch.float32)
        rhs = torch.empty(n_img, n_spl, 3, dtype=torch.float32)
        colour_cpu.gram_tiles(
            proj,
            box,
            offsets,
            order,
            self._planes(target),
            self.tile,
            tiles_x,
            tiles_y,
            self.qcut,
            gram.numpy(),
            rhs.numpy(),
        )
        return gram, rhs


def warm_up() -> float:
    """Compile (or load from the on-disk cache) every kernel; returns the seconds it took."""
    start = time.perf_counter()
    backend = CpuBackend()
    params = torch.tensor([[[4.0, 4.0, 0.5, 0.1, 0.5, 0.5, 0.5, 0.5]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    target = torch.zeros(1, 8, 8, 3)
    _, grad = backend.loss_and_grad(params, mask, target)
    backend.render(params, mask, 8, 8)
    backend.adam_step(
        params,
        grad,
        torch.zeros_like(params),
        torch.zeros_like(params),
        torch.ones(8),
        1,
        (0.9, 0.99),
    )
    return time.perf_counter() - start
