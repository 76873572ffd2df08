"""The ``cuda`` backend: the batched Numba-CUDA kernels of :mod:`cuda_kernels.gpu` behind the
:class:`FitBackend` interface.

Tensors reach the kernels without copies through ``__cuda_array_interface__``. Every launch
runs in the CUDA context of the backend's own GPU and on PyTorch's current stream of that GPU,
whichever thread calls (the data loader fits in a prefetch thread, whose default context would
be GPU 0's), so a fitting iteration (project + bin, the fused tile kernel, Adam; the fitter's
L1 and pruning are a few torch ops on the same stream) is ordered with the torch work around
it and never waits for or copies to the host. Work buffers come from PyTorch's caching
allocator.

Under the Numba CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) the same code runs on CPU tensors,
which is how the kernels are tested without a GPU.
"""

from __future__ import annotations

import contextlib
import math

import numba
import numpy as np
import torch
from numba import cuda

from cuda_kernels import colour_gpu, init_gpu, init_math
from cuda_kernels import gpu as kernels
from streamfit.fit.backends.base import AdamTensors, Betas, FitBackend, check_target
from streamfit.fit.init import FLAT_ENERGY, check_splat_count
from streamfit.render import Q_CUTOFF

DEFAULT_TILE = 16
# bytes of work arrays of the adaptive initialisation allocated at once (its summed-area
# tables take 2.8 MB an image at 224x224: a launch takes at most ~370 such images)
INIT_WORK_BYTES = 1 << 30
SIMULATOR = bool(numba.config.ENABLE_CUDASIM)


def cuda_device(device: torch.device | str, visible: int) -> torch.device:
    """``device`` as ``cuda:N`` with ``N`` an existing GPU index; a clear error otherwise."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"the cuda backend needs a CUDA device, got {device}")
    index = 0 if device.index is None else device.index
    if not 0 <= index < visible:
        raise ValueError(
            f"CUDA device {index} does not exist: {visible} GPU(s) visible "
            f"(valid: {', '.join(f'cuda:{i}' for i in range(visible)) or 'none'})"
        )
    return torch.device("cuda", index)


class CudaBackend(FitBackend):
    """Numba-CUDA backend on one GPU. ``tile``: tile edge in pixels (one of
    :data:`cuda_kernels.gpu.TILES`; one block per tile and image)."""

    name = "cuda"
    # conjugate gradients: batched products, no host sync, so a whole fit can be a CUDA graph
    colour_solver = "cg"

    def __init__(self, device: torch.device | str = "cuda", tile: int = DEFAULT_TILE) -> None:
        super().__init__(device)
        kernels.check_tile(tile)
        if SIMULATOR:
            cuda_device(device, visible=1)  # the simulator has one device
            self.device = torch.device("cpu")
        else:
            self.device = cuda_device(device, torch.cuda.device_count())
        self.tile = tile
        self.qcut = np.float32(Q_CUTOFF)

    def _context(self) -> contextlib.AbstractContextManager:
        """Makes the backend's GPU current for Numba in the calling thread."""
        if SIMULATOR:
            return contextlib.nullcontext()
        return cuda.gpus[self.device.index]

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

    def _work(
        self, params: torch.Tensor, mask: torch.Tensor, height: int, width: int
    ) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Checked device inputs and the work arrays of one launch sequence: ``(params,
        bad, [params, mask, proj, bits, bad] as kernel arguments)``."""
        n_img, n_spl = mask.shape
        if params.shape != (n_img, n_spl, 8):
            raise ValueError(f"params {tuple(params.shape)} and mask {tuple(mask.shape)} disagree")
        dev = self.device
        params = params.detach().to(dev, torch.float32).contiguous()
        mask = mask.to(dev, torch.bool).contiguous()
        tiles = math.ceil(width / self.tile) * math.ceil(height / self.tile)
        proj = torch.empty(n_img, n_spl, 8, device=dev)
        bits = torch.zeros(n_img, tiles, math.ceil(n_spl / 32), dtype=torch.int32, device=dev)
        bad = torch.zeros(n_img, dtype=torch.int32, device=dev)
        arrays = [
            self._array(params),
            self._array(mask),
            self._array(proj),
            self._array(bits).view(np.uint32),
            self._array(bad),
        ]
        return params, bad, arrays

    # ------------------------------------------------------------------ FitBackend
    @torch.no_grad()
    def render(
        self, params: torch.Tensor, mask: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """``[B, H, W, 3]`` float32 image on the device; NaN for an image with a non-finite
        valid splat."""
        image = torch.empty(mask.shape[0], height, width, 3, device=self.device)
        if mask.shape[0] == 0:
            return image
        with self._context():
            _, bad, (p, m, proj, bits, flags) = self._work(params, mask, height, width)
            kernels.launch_render(
                p,
                m,
                self.tile,
                self.qcut,
                proj,
                bits,
                flags,
                self._array(image),
                stream=self._stream(),
            )
        return image.masked_fill_(bad.bool()[:, None, None, None], float("nan"))

    @torch.no_grad()
    def loss_and_grad(
        self, params: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MSE ``[B]`` and ``d(sum_b mse_b)/d params [B, N, 8]``; both NaN for an image with a
        non-finite valid splat (the fitter then drops it). The rendered image never leaves
        the kernel."""
        height, width = check_target(params, target)
        n_img, n_spl = mask.shape
        loss = torch.zeros(n_img, device=self.device)
        grad = torch.zeros(n_img, n_spl, 8, device=self.device)
        if n_img == 0:
            return loss, grad
        target = target.detach().to(self.device, torch.float32).contiguous()
        with self._context():
            _, bad, (p, m, proj, bits, flags) = self._work(params, mask, height, width)
            kernels.launch_loss_and_grad(
                p,
                m,
                self._array(target),
                self.tile,
                self.qcut,
                proj,
                bits,
                flags,
                self._array(loss),
                self._array(grad),
                stream=self._stream(),
            )
        bad = bad.bool()
        loss.masked_fill_(bad, float("nan"))
        grad.masked_fill_(bad[:, None, None], float("nan"))
        return loss, grad

    @torch.no_grad()
    def fused_adam(
        self, tensors: AdamTensors, lr: torch.Tensor, step: int, betas: Betas, eps: float
    ) -> bool:
        """Adam in one kernel of :mod:`cuda_kernels.gpu`, on flat views."""
        lr = lr.to(self.device, torch.float32).contiguous()
        with self._context():
            flat = [self._array(t.view(-1)) for t in tensors]
            kernels.launch_adam(*flat, self._array(lr), betas, step, eps, stream=self._stream())
        return True

    @torch.no_grad()
    def adaptive_layout(self, images: torch.Tensor, n: int, *settings: float) -> torch.Tensor:
        """The adaptive layout by the kernel of :mod:`cuda_kernels.init_gpu` (``settings``: the
        reference's detail, detail power, scale and anisotropy): ``[B, n, 8]`` float64 on the
        device, a chunk of images a launch (work arrays of at most :data:`INIT_WORK_BYTES`),
        no host synchronisation."""
        n_img, height, width, _ = images.shape
        check_splat_count(n, height, width)
        images = images.detach().to(self.device, torch.float32).contiguous()
        params = torch.empty(n_img, n, 8, dtype=torch.float64, device=self.device)
        per_image = 8 * (init_math.TABLES * (height + 1) * (width + 1) + height * width)
        per_image += 8 * 2 * n * init_math.BOX_FIELDS
        chunk = max(1, min(n_img, INIT_WORK_BYTES // per_image))
        work = {"dtype": torch.float64, "device": self.device}
        tables = torch.empty(chunk, init_math.TABLES, height + 1, width + 1, **work)
        energy = torch.empty(chunk, height, width, **work)
        boxes = torch.empty(chunk, 2, n, init_math.BOX_FIELDS, **work)
        with self._context():
            for lo in range(0, n_img, chunk):
                hi = min(n_img, lo + chunk)
                init_gpu.adaptive_layout[hi - lo, init_gpu.THREADS, self._stream()](
                    self._array(images[lo:hi]),
                    *map(float, settings),
                    FLAT_ENERGY,
                    init_math.levels(n),
                    self._array(tables[: hi - lo]),
                    self._array(energy[: hi - lo]),
                    self._array(boxes[: hi - lo]),
                    self._array(params[lo:hi]),
                )
        return params

    def tile_entries(
        self, params: torch.Tensor, mask: torch.Tensor, height: int, width: int
    ) -> int:
        """(splat, tile) pairs in the batch's tile lists, for FLOP counts (reads to the host)."""
        n_img, n_spl = mask.shape
        if n_img * n_spl == 0:
            return 0
        with self._context():
            _, _, (p, m, proj, bits, flags) = self._work(params, mask, height, width)
            kernels.launch_project(
                p, m, self.tile, self.qcut, height, width, proj, bits, flags, self._stream()
            )
            words = bits.copy_to_host() if not SIMULATOR else bits
        return int(np.unpackbits(np.ascontiguousarray(words).view(np.uint8)).sum())

    @torch.no_grad()
    def colour_system(
        self, params: torch.Tensor, mask: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The colour normal equations by the tile kernel of :mod:`cuda_kernels.colour_gpu`,
        over the tile lists of the raster kernels' projection: no host synchronisation."""
        height, width = check_target(params, target)
        n_img, n_spl = mask.shape
        if math.ceil(n_spl / 32) > colour_gpu.MAX_WORDS:
            raise ValueError(
                f"the cuda colour solve takes at most {32 * colour_gpu.MAX_WORDS} splats an "
                f"image, got {n_spl}"
            )
        gram = torch.zeros(n_img, n_spl, n_spl, device=self.device)
        rhs = torch.zeros(n_img, n_spl, 3, device=self.device)
        if n_img == 0:
            return gram, rhs
        target = target.detach().to(self.device, torch.float32).contiguous()
        with self._context():
            _, _, (p, m, proj, bits, flags) = self._work(params, mask, height, width)
            tiles_x, n_tiles = kernels.launch_project(
                p, m, self.tile, self.qcut, height, width, proj, bits, flags, self._stream()
            )
            qcut_scaled = kernels.scaled_qcut(self.qcut)
            for lo, hi in kernels.image_chunks(n_img):
                colour_gpu.gram_tiles[(n_tiles, hi - lo), colour_gpu.THREADS, self._stream()](
                    proj[lo:hi],
                    bits[lo:hi],
                    self._array(target[lo:hi]),
                    self.tile,
                    tiles_x,
                    qcut_scaled,
                    self._array(gram[lo:hi]),
                    self._array(rhs[lo:hi]),
                )
        return gram, rhs
