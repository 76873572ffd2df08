"""Splat fitting: initialisation, pruning, the batched fitting loop, backend selection, and
whole fits captured as CUDA graphs."""

from streamfit.fit.backends import BACKENDS, FitBackend, get_backend
from streamfit.fit.config import FitConfig
from streamfit.fit.fitter import DeviceFit, FitResult, fit, fit_on_device, fit_result
from streamfit.fit.graphs import FitGraphs

__all__ = [
    "BACKENDS",
    "DeviceFit",
    "FitBackend",
    "FitConfig",
    "FitGraphs",
    "FitResult",
    "fit",
    "fit_on_device",
    "fit_result",
    "get_backend",
]
