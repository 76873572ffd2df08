"""Splat fitting: initialisation, pruning, the batched fitting loop, backend selection."""

from streamfit.fit.backends import BACKENDS, FitBackend, get_backend
from streamfit.fit.config import FitConfig
from streamfit.fit.fitter import FitResult, fit

__all__ = ["BACKENDS", "FitBackend", "FitConfig", "FitResult", "fit", "get_backend"]
