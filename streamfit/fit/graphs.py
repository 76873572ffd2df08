"""Whole fits as CUDA graphs: one capture per batch shape, replayed for every batch of it.

At the loader's batch a fit is a few hundred small launches (numba kernels and torch ops);
issued one by one from Python they cost more host time than the GPU takes to run them. A
fit on the device (:func:`streamfit.fit.fitter.fit_on_device`) reads nothing back, and its
step-dependent numbers (learning-rate factors, bias corrections) are the same for every
batch, so the whole fit is captured once per ``(batch, height, width)`` and replayed with
the next batch's pixels copied into the captured input. Batch sizes are padded up to a power
of two (with black images), so the short batches of a partly cached epoch reuse a few
graphs; all graphs share one memory pool (they never run at the same time).

A capture that fails (a backend or setting whose fit needs the host, such as ``init=random``)
falls back to eager fits, logged once with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from streamfit.fit.backends import FitBackend
from streamfit.fit.config import FitConfig
from streamfit.fit.fitter import DeviceFit, check_images, fit_on_device

logger = logging.getLogger("streamfit.fit")


def padded_batch(batch: int) -> int:
    """The captured batch size that serves ``batch`` images: the next power of two."""
    return 1 << max(0, batch - 1).bit_length()


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    images: torch.Tensor  # the captured input, [B, H, W, 3] float32
    out: DeviceFit  # the captured outputs, overwritten by every replay


class FitGraphs:
    """Fits batches with ``cfg`` on ``backend`` as CUDA graphs (eager where the backend is
    not on a GPU, or with ``enabled=False``).

    Calling it with ``images [B, H, W, 3]`` (float in 0..1, on the backend's device) returns
    the :class:`DeviceFit` of :func:`fit_on_device`, in tensors of its own (copied from the
    graph's outputs), queued on the current stream: nothing waits for the GPU.
    """

    def __init__(self, cfg: FitConfig, backend: FitBackend, enabled: bool = True) -> None:
        self.cfg, self.backend = cfg, backend
        self.enabled = enabled and backend.device.type == "cuda"
        self._graphs: dict[tuple[int, int, int], _Captured] = {}
        self._pool = None

    @property
    def captured(self) -> list[tuple[int, int, int]]:
        """The ``(batch, height, width)`` shapes captured so far."""
        return sorted(self._graphs)

    def __call__(self, images: torch.Tensor) -> DeviceFit:
        check_images(images)
        if not self.enabled:
            return fit_on_device(images, self.cfg, self.backend)
        batch, height, width, _ = images.shape
        key = (padded_batch(batch), height, width)
        with torch.cuda.device(self.backend.device):
            captured = self._graphs.get(key) or self._capture(key)
            if captured is None:
                return fit_on_device(images, self.cfg, self.backend)
            captured.images[:batch].copy_(images)
            captured.images[batch:].zero_()
            captured.graph.replay()
            out = captured.out
            return DeviceFit(
                out.params[:batch].clone(),
                out.mask[:batch].clone(),
                out.psnr[:batch].clone(),
                out.ok[:batch].clone(),
            )

    def _capture(self, key: tuple[int, int, int]) -> _Captured | None:
        """Capture the fit of a batch of ``key``'s shape: one eager fit first (compiles the
        kernels, creates the library handles), then the capture. None when it fails."""
        batch, height, width = key
        device = self.backend.device
        images = torch.zeros(batch, height, width, 3, device=device)
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                fit_on_device(images, self.cfg, self.backend)
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            # thread_local: the training thread goes on launching work while the loader's
            # thread captures
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                out = fit_on_device(images, self.cfg, self.backend)
        except Exception as err:  # any failure to capture means eager fits
            self.enabled = False
            logger.warning(
                "fitting: CUDA graph capture failed (%s: %s); fitting eagerly from now on",
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
            )
            return None
        captured = _Captured(graph, images, out)
        self._graphs[key] = captured
        logger.info("fitting: captured a CUDA graph of a %dx%dx%d fit", batch, height, width)
        return captured
