"""Exact colours: for fixed positions and covariances the image is linear in the colours,
``I = W c``, so the best colours solve the normal equations ``(W^T W) c = W^T t`` per image.

The backend accumulates the system over its tile lists (:meth:`FitBackend.colour_system`);
this module regularises and solves it, batched, on the backend's device: by a Cholesky
factorisation (exact), or by a fixed number of conjugate-gradient steps, which are plain
batched products with no host synchronisation, so a CUDA graph can hold them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from streamfit.config import check_choice
from streamfit.fit.backends import FitBackend
from streamfit.splats import COLOR

GRAM_BYTES = 1 << 30  # float32 Gram matrices built at once (1 GiB: 1,677 images at 400 splats)
SOLVERS = ("cholesky", "cg")
_TINY = 1e-30


@dataclass(frozen=True)
class ColourSolve:
    """How the colour systems are solved: the relative ``ridge`` (:func:`regularise`), the
    ``solver`` (``cholesky``: exact; ``cg``: ``cg_iters`` steps of conjugate gradients)."""

    ridge: float = 1e-3
    solver: str = "cholesky"
    cg_iters: int = 16

    def __post_init__(self) -> None:
        if self.ridge <= 0.0:
            raise ValueError(f"the colour solve needs ridge > 0, got {self.ridge}")
        check_choice("colour solver", self.solver, SOLVERS)


def regularise(
    gram: torch.Tensor, rhs: torch.Tensor, current: torch.Tensor, ridge: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The system of ``|W c - t|^2 + lam |c - current|^2``: ``(gram + lam I, rhs + lam
    current)`` in float32, ``lam = ridge * mean(diag(gram))`` per image.

    ``lam`` scales with the image's own weights, so the system is positive definite even when
    splats coincide, lie outside the image or are masked (their rows are zero: they keep
    ``current``). A float32 ``gram`` is overwritten (the ridge is added to its diagonal in
    place: the matrices are the largest tensors of a fit, so no copy is made).
    """
    g = gram.to(torch.float32)
    diagonal = g.diagonal(dim1=1, dim2=2)
    lam = ridge * diagonal.mean(1).clamp_min(1e-6)
    diagonal.add_(lam[:, None])
    return g, rhs.to(torch.float32) + lam[:, None, None] * current.to(torch.float32)


def solve_colours(
    gram: torch.Tensor, rhs: torch.Tensor, current: torch.Tensor, how: ColourSolve
) -> torch.Tensor:
    """``[B, N, 3]`` colours minimising ``|W c - t|^2 + lam |c - current|^2`` per image
    (:func:`regularise`), from ``gram [B, N, N]`` and ``rhs [B, N, 3]``.

    ``how.solver``: ``cholesky`` (exact; float32 is enough: the ridge bounds the condition number
    near ``1 / ridge`` times the splats overlapping a pixel, and it factorises ~5x faster
    than float64 on a CPU) or ``cg`` (``how.cg_iters`` steps of Jacobi-preconditioned
    conjugate gradients from ``current``). An image whose system is not finite, or whose solve fails
    anyway, keeps ``current``: the solve never produces NaN, and never reads back to the host.
    """
    g, b = regularise(gram, rhs, current, how.ridge)
    # a non-finite system gives a non-finite factor or solution, caught below: no check of
    # the whole [B, N, N] tensor, no host sync
    if how.solver == "cholesky":
        factor, info = torch.linalg.cholesky_ex(g)
        solved = torch.cholesky_solve(b, factor)
        ok = (info == 0) & torch.isfinite(solved).flatten(1).all(1)
    else:
        solved = conjugate_gradients(g, b, current.to(torch.float32), how.cg_iters)
        ok = torch.isfinite(solved).flatten(1).all(1)
    return torch.where(ok[:, None, None], solved, current.to(torch.float32)).to(current.dtype)


def conjugate_gradients(
    system: torch.Tensor, rhs: torch.Tensor, start: torch.Tensor, iters: int
) -> torch.Tensor:
    """``iters`` steps of Jacobi-preconditioned conjugate gradients on the positive definite
    ``system [B, N, N]`` for each column of ``rhs [B, N, C]``, from ``start [B, N, C]``."""
    inverse_diagonal = 1.0 / system.diagonal(dim1=1, dim2=2).clamp_min(_TINY)[..., None]
    x = start.clone()
    r = rhs - torch.bmm(system, x)
    z = inverse_diagonal * r
    p = z.clone()
    rz = (r * z).sum(1, keepdim=True)
    for _ in range(iters):
        q = torch.bmm(system, p)
        alpha = rz / (p * q).sum(1, keepdim=True).clamp_min(_TINY)
        x.addcmul_(alpha, p)
        r.addcmul_(alpha, q, value=-1.0)
        torch.mul(inverse_diagonal, r, out=z)
        rz_next = (r * z).sum(1, keepdim=True)
        p.mul_(rz_next / rz.clamp_min(_TINY)).add_(z)
        rz = rz_next
    return x


def exact_colours(
    backend: FitBackend,
    params: torch.Tensor,
    mask: torch.Tensor,
    target: torch.Tensor,
    how: ColourSolve,
) -> None:
    """Replace the colours of the valid splats in ``params [B, N, 8]`` (in place) by the
    solution of their regularised normal equations for ``target [B, H, W, 3]``
    (:func:`solve_colours`).

    The dense ``[B, N, N]`` Gram matrices are built and solved a chunk of images at a time,
    so memory stays near :data:`GRAM_BYTES` at any batch size and splat count.
    """
    batch, n = params.shape[:2]
    step = max(1, GRAM_BYTES // max(1, 4 * n * n))
    for lo in range(0, batch, step):
        # the whole batch passes the caller's tensors themselves, so a backend's per-target
        # caches (the cpu backend's colour planes) stay valid; a part is a view of them
        part = slice(lo, lo + step)
        p, m, t = (
            (params, mask, target) if step >= batch else (params[part], mask[part], target[part])
        )
        gram, rhs = backend.colour_system(p, m, t)
        current = p[..., COLOR]
        solved = solve_colours(gram, rhs.to(current.device), current, how)
        p[..., COLOR] = torch.where(m[..., None], solved.to(current.device), current)
