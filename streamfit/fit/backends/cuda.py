"""The ``cuda`` backend: the batched Numba-CUDA kernels of :mod:`cuda_kernels.gpu` behind the
:class:`FitBackend` interface.

Tensors reach the kernels without copies through ``__cuda_array_interface__``, and every launch
goes on PyTorch's current stream, so a fitting iteration (project + bin, forward, backward,
Adam; the fitter's L1 and pruning are a few torch ops on the same stream) never waits for or
copies to the host. Work buffers are allocated through PyTorch's caching allocator.

Under the Numba CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the same code runs on CPU tensors,
which is how the kernels are tested without a GPU.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from numba import cuda

from cuda_kernels import gpu as kernels
from streamfit.fit.backends.base import FitBackend, check_target
from streamfit.render import Q_CUTOFF

DEFAULT_TILE = 16
SIMULATOR = bool(numba.config.ENABLE_CUDASIM)


class CudaBackend(FitBackend):
    """Numba-CUDA backend. ``tile``: tile edge in pixels (8, 16 or 32; one block per tile)."""

    name = "cuda"

    def __init__(self, device: torch.device | str = "cuda", tile: int = DEFAULT_TILE) -> None:
        super().__init__(device)
        if SIMULATOR:
            self.device = torch.device("cpu")
        elif self.device.type != "cuda":
            raise ValueError(f"the cuda backend needs a CUDA device, got {self.device}")
        kernels.build(tile)  # validates the tile size
        self.tile = tile
        self.qcut = np.float32(Q_CUTOFF)

    # ------------------------------------------------------------------ tensor plumbing
    def _array(self, tensor: torch.Tensor):
        """Zero-copy kernel argument for a contiguous tensor on ``self.device``."""
        if tensor.device != self.device and not (SIMULATOR and tensor.device.type == "cpu"):
            raise ValueError(f"expected a tensor on {self.device}, got one on {tensor.device}")
        if not tensor.is_contiguous():
            raise ValueError("kernel arguments must be contiguous")
        if SIMULATOR:
            return tensor.detach().numpy()
        # the launches below are queued on the same stream, so no synchronisation is needed
        return cuda.as_cuda_array(tensor.detach(), sync=False)

    def _stream(self):
        if SIMULATOR:
            return 0
        return cuda.external_stream(torch.cuda.current_stream(self.device).cuda_stream)

    def _run(
        self,
        params: torch.Tensor,
        mask: torch.Tensor,
        target: torch.Tensor | None,
        height: int,
        width: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n_img, n_spl = mask.shape
        if params.shape != (n_img, n_spl, 8):
            raise ValueError(f"params {tuple(params.shape)} and mask {tuple(mask.shape)} disagree")
        dev = self.device
        params = params.detach().to(dev, torch.float32).contiguous()
        mask = mask.to(dev, torch.bool).contiguous()
        tiles = math.ceil(width / self.tile) * math.ceil(height / self.tile)
        words = math.ceil(n_spl / 32)
        proj = torch.empty(n_img, n_spl, 8, device=dev)
        bits = torch.zeros(n_img, tiles, words, dtype=torch.int32, device=dev)
        bad = torch.zeros(n_img, dtype=torch.int32, device=dev)
        image = torch.empty(n_img, height, width, 3, device=dev)
        loss = torch.zeros(n_img, device=dev)
        grad = torch.zeros(n_img, n_spl, 8, device=dev)
        if target is None:
            target = torch.empty(0, 0, 0, 3, device=dev)
        else:
            target = target.detach().to(dev, torch.float32).contiguous()
        if n_img > 0:
            kernels.launch_loss_and_grad(
                self._array(params),
                self._array(mask),
                self._array(target),
                self.tile,
                self.qcut,
                self._array(proj),
                self._array(bits).view(np.uint32),
                self._array(bad),
                self._array(image),
                self._array(loss),
                self._array(grad),
                stream=self._stream(),
            )
        return image, loss, grad, bad.bool()

    # ------------------------------------------------------------------ FitBackend
    @torch.no_grad()
    def render(
        self, params: torch.Tensor, mask: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """``[B, H, W, 3]`` float32 image on the device; NaN for an image with a non-finite
        valid splat."""
        image, _, _, bad = self._run(params, mask, None, height, width)
        return image.masked_fill_(bad[:, None, None, None], float("nan"))

    @torch.no_grad()
    def loss_and_grad(
        self, params: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MSE ``[B]`` and ``d(sum_b mse_b)/d params [B, N, 8]``; both NaN for an image with a
        non-finite valid splat (the fitter then drops it)."""
        height, width = check_target(params, target)
        _, loss, grad, bad = self._run(params, mask, target, height, width)
        loss.masked_fill_(bad, float("nan"))
        grad.masked_fill_(bad[:, None, None], float("nan"))
        return loss, grad

    @torch.no_grad()
    def adam_step(
        self,
        params: torch.Tensor,
        grad: torch.Tensor,
        exp_avg: torch.Tensor,
        exp_avg_sq: torch.Tensor,
        lr: torch.Tensor,
        step: int,
        betas: tuple[float, float],
        eps: float = 1e-8,
    ) -> None:
        """Fused in-place Adam: one kernel instead of torch's seven element-wise passes."""
        tensors = (params, grad, exp_avg, exp_avg_sq)
        if not all(t.is_contiguous() and t.dtype == torch.float32 for t in tensors):
            super().adam_step(params, grad, exp_avg, exp_avg_sq, lr, step, betas, eps)
            return
        flat = [self._array(t.view(-1)) for t in tensors]
        lr = lr.to(self.device, torch.float32).contiguous()
        kernels.launch_adam(*flat, self._array(lr), betas, step, eps, stream=self._stream())

    def tile_entries(
        self, params: torch.Tensor, mask: torch.Tensor, height: int, width: int
    ) -> int:
        """(splat, tile) pairs in the batch's tile lists, for FLOP counts (reads to the host)."""
        n_img, n_spl = mask.shape
        tiles = math.ceil(width / self.tile) * math.ceil(height / self.tile)
        bits = torch.zeros(
            n_img, tiles, math.ceil(n_spl / 32), dtype=torch.int32, device=self.device
        )
        if n_img * n_spl == 0:
            return 0
        params = params.detach().to(self.device, torch.float32).contiguous()
        mask = mask.to(self.device, torch.bool).contiguous()
        bad = torch.zeros(n_img, dtype=torch.int32, device=self.device)
        kernels.project[(n_img * n_spl + 255) // 256, 256, self._stream()](
            self._array(params),
            self._array(mask),
            height,
            width,
            self.tile,
            math.ceil(width / self.tile),
            self.qcut,
            self._array(torch.empty_like(params)),
            self._array(bits).view(np.uint32),
            self._array(bad),
        )
        return int(np.bitwise_count(bits.cpu().numpy().view(np.uint32)).sum())

    def colour_system(
        self, params: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The colour normal equations by the tile kernel of :mod:`cuda_kernels.colour_gpu`."""
        from cuda_kernels import colour_gpu
        from streamfit.fit.backends.tiles import tile_lists

        height, width = check_target(params, target)
        params = params.detach().to(self.device, torch.float32).contiguous()
        mask = mask.to(self.device, torch.bool).contiguous()
        target = target.to(self.device, torch.float32).contiguous()
        proj, offsets, order = tile_lists(params, mask, height, width, self.tile)
        n_img, n_spl = mask.shape
        gram = torch.zeros(n_img, n_spl, n_spl, dtype=torch.float32, device=self.device)
        rhs = torch.zeros(n_img, n_spl, 3, dtype=torch.float32, device=self.device)
        tiles_x, tiles_y = math.ceil(width / self.tile), math.ceil(height / self.tile)
        if order.numel():
            colour_gpu.gram_tiles[n_img * tiles_x * tiles_y, 64, self._stream()](
                self._array(proj),
                self._array(offsets),
                self._array(order),
                self._array(target),
                self.tile,
                tiles_x,
                tiles_y,
                self.qcut,
                self._array(gram),
                self._array(rhs),
            )
        return gram, rhs
