"""Fitting backends behind one interface; `get_backend` picks one by name."""

from __future__ import annotations

import importlib

import torch

from streamfit.fit.backends.base import FitBackend
from streamfit.hardware import resolve_device

# name -> (module, class); imported lazily so numba is only loaded when asked for
_REGISTRY: dict[str, tuple[str, str]] = {
    "torch": ("streamfit.fit.backends.torch_backend", "TorchBackend"),
    "cpu": ("streamfit.fit.backends.cpu", "CpuBackend"),
    "cuda": ("streamfit.fit.backends.cuda", "CudaBackend"),
}
BACKENDS = tuple(_REGISTRY)


def get_backend(name: str = "auto", device: str = "auto") -> FitBackend:
    """A backend instance. ``auto`` picks ``cuda`` on a CUDA device, else the Numba ``cpu`` one."""
    dev = resolve_device(device)
    if name == "auto":
        name = "cuda" if dev.type == "cuda" else "cpu"
    if name not in _REGISTRY:
        raise ValueError(f"unknown fitting backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "cuda" and dev.type != "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(
                "the cuda backend needs a CUDA GPU; none is visible (use --backend cpu)"
            )
        dev = torch.device("cuda")
    if name == "cpu":
        dev = torch.device("cpu")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)(dev)


__all__ = ["BACKENDS", "FitBackend", "get_backend", "resolve_device"]
