"""`FitConfig`: every setting of splat fitting, and the hash of those that change its result."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from streamfit.config import check_at_least, check_choice
from streamfit.schedule import warmup_cosine

# Version of the fitting method: bumped whenever the code (not the settings) changes what a fit
# produces, so splats cached by an older method are never served as current.
FIT_VERSION = 3  # 3: equal-mass cut fractions in float64, flat cells isotropic

# Settings that only change how fast a fit runs, never what it produces: excluded from the hash
# so the splat cache stays valid across backends and batch sizes.
_NOT_IN_HASH = frozenset({"backend", "device"})
INITS = ("adaptive", "structured", "paper", "random")
COLOUR_SOLVES = ("none", "init", "final", "init+final")
COLOUR_SOLVERS = ("auto", "cholesky", "cg")


@dataclass
class FitConfig:
    """How to fit splats to images.

    The defaults are the method tuned for short fits (BENCHMARKS.md): adaptive initialisation,
    exact colours solved at the start and after the last iteration (skipped after the start
    when ``l1 > 0``: the solve would undo the penalty), warm-up, a hold at the full rate, then
    cosine decay. Learning rates are per parameter group (positions in pixels, the
    log-Cholesky covariance, colours); the schedule multiplies all of them. Pruning removes
    splats whose colour luminance falls below ``prune_luminance`` at the pruning steps
    between ``prune_start`` and ``prune_end`` (fractions of ``iters``).
    """

    gaussians: int = 400
    """Splats per image."""
    iters: int = 16
    """Fitting iterations (the default reaches the old method's 100-iteration quality)."""
    init: str = "adaptive"
    """Initialisation: adaptive | structured | paper | random."""
    init_detail: float = 0.9
    """Adaptive init: the share of the splat density that follows the image's detail."""
    init_detail_power: float = 1.4
    """Adaptive init: the density goes as the gradient magnitude to this power."""
    init_scale: float = 1.0
    """Adaptive init: a splat's sigmas are this times half its cell's sides."""
    init_anisotropy: float = 0.5
    """Adaptive init: stretch along edges by ``1 + init_anisotropy * coherence``."""
    init_normalize_color: bool = True
    """Structured init: divide colours by the grid's overlap, undoing its brightening."""
    backend: str = "auto"
    """auto | torch | cpu | cuda (auto: cuda on a GPU, else cpu)."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N."""
    lr_position: float = 2.0
    """Learning rate of the centres, in pixels (the rates are tuned for 20-100 iterations at
    224x224 and 400 splats on the train photos)."""
    lr_covariance: float = 0.15
    """Learning rate of the log-Cholesky covariance."""
    lr_color: float = 0.02
    """Learning rate of the colours."""
    colour_solve: str = "init+final"
    """When the exact colours are solved: none | init | final | init+final."""
    colour_solve_every: int = 0
    """Also re-solve the colours every k iterations (0: never)."""
    colour_ridge: float = 1e-3
    """Regularisation of the colour solve, relative to the Gram's mean diagonal."""
    colour_solver: str = "auto"
    """How the colour systems are solved: cholesky (exact), cg (conjugate gradients: no host
    sync, so a fit can be a CUDA graph), auto (the backend's: cg on cuda, cholesky
    elsewhere; the two reach the same mean PSNR, BENCHMARKS.md)."""
    colour_cg_iters: int = 16
    """Conjugate-gradient steps of one solve."""
    lr_schedule: str = "cosine"
    """cosine | constant."""
    lr_final_fraction: float = 0.2
    """The cosine schedule ends at this fraction of the rates."""
    lr_hold: float = 0.7
    """Fraction of the iterations after warm-up at the full rate, before the decay."""
    warmup_iters: int = 3
    """Iterations of linear warm-up."""
    betas: tuple[float, float] = (0.7, 0.95)
    """Adam's betas."""
    l1: float = 0.0
    """Weight of an L1 penalty on the colours (normalised per splat)."""
    prune_luminance: float = 0.0
    """Luminance below which a splat is pruned at a pruning step (0: no pruning)."""
    prune_start: float = 0.3
    """First pruning step, as a fraction of ``iters``."""
    prune_end: float = 0.7
    """Last pruning step, as a fraction of ``iters``."""
    prune_every: int = 20
    """Iterations between pruning steps."""
    seed: int = 0
    """Seed of the random initialisation (with the image's content)."""

    def __post_init__(self) -> None:
        check_at_least(
            fit__gaussians=(self.gaussians, 1),
            fit__iters=(self.iters, 0),
            fit__colour_solve_every=(self.colour_solve_every, 0),
            fit__colour_cg_iters=(self.colour_cg_iters, 1),
            fit__prune_every=(self.prune_every, 1),
        )
        check_choice("fit.backend", self.backend, ("auto", "torch", "cpu", "cuda"))
        check_choice("fit.init", self.init, INITS)
        check_choice("fit.colour_solve", self.colour_solve, COLOUR_SOLVES)
        check_choice("fit.colour_solver", self.colour_solver, COLOUR_SOLVERS)
        check_choice("fit.lr_schedule", self.lr_schedule, ("cosine", "constant"))
        if self.colour_ridge <= 0.0:
            raise ValueError(f"fit.colour_ridge must be > 0, got {self.colour_ridge}")
        if not 0.0 <= self.prune_start <= self.prune_end <= 1.0:
            raise ValueError("fit.prune_start <= fit.prune_end must lie in [0, 1]")
        if not 0.0 <= self.lr_hold < 1.0:
            raise ValueError(f"fit.lr_hold must lie in [0, 1), got {self.lr_hold}")

    def settings_hash(self) -> str:
        """Short hex digest of every setting that changes the fitted splats."""
        settings = {k: v for k, v in asdict(self).items() if k not in _NOT_IN_HASH}
        settings["fit_version"] = FIT_VERSION
        blob = json.dumps(settings, sort_keys=True, default=list).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def lr_factor(self, step: int) -> float:
        """Multiplier of every learning rate at iteration ``step`` (0-based)."""
        constant = self.lr_schedule == "constant" or self.iters <= 1
        floor = 1.0 if constant else self.lr_final_fraction
        start = self.warmup_iters + int(self.lr_hold * (self.iters - self.warmup_iters))
        return warmup_cosine(step, self.warmup_iters, start, self.iters - 1, floor)

    def is_prune_step(self, step: int) -> bool:
        """Whether luminance pruning runs after iteration ``step`` (0-based)."""
        if self.prune_luminance <= 0.0:
            return False
        first = int(self.prune_start * self.iters)
        last = int(self.prune_end * self.iters)
        return first <= step <= last and (step - first) % self.prune_every == 0
