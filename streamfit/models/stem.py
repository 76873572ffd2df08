"""The GS stem: one token per splat from its position, shape and colour.

Each splat is embedded on its own (no mixing across splats), so the stem is equivariant to the
order of the splats and blind to the padding; the resampler after it makes the set invariant.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from streamfit.splats import COLOR, PARAMS_PER_SPLAT

# Added under the square root of the covariance's eigen-gap so that its gradient stays finite
# for isotropic splats (gap exactly 0, as after structured initialisation); negligible next to
# any real variance (a 1-pixel splat on a 1000-pixel image has variance 1e-6 in image units).
_GAP_EPS = 1e-24


def num_splat_features(fourier_freqs: int) -> int:
    """Length of the :func:`splat_features` vector: position 2 + Fourier ``4 * fourier_freqs``
    + log standard deviations 2 + orientation 2 + colour 3."""
    return 9 + 4 * fourier_freqs


def splat_features(
    params: torch.Tensor, height: int, width: int, fourier_freqs: int
) -> torch.Tensor:
    """Hand-made, resolution-independent features of each splat.

    Args:
        params: ``[..., 8]`` splat parameters in the layout of :mod:`streamfit.splats`.
        height, width: the image size the pixel-unit parameters refer to.
        fourier_freqs: octaves of the position encoding.

    Returns:
        ``[..., num_splat_features(fourier_freqs)]`` float32, on ``params``' device:

        - the centre ``p = (x / width, y / height)`` in [0, 1] and its Fourier features
          ``sin, cos(pi * 2^k * p)`` for ``k < fourier_freqs``;
        - the log standard deviations along the major and minor axes of the covariance
          expressed in image units (pixels / image side), i.e. half the log eigenvalues;
        - the orientation of the major axis as ``a * (cos 2t, sin 2t)`` with ``a`` the
          anisotropy ``(l1 - l2) / (l1 + l2)``: continuous, and 0 for round splats whose
          angle is undefined;
        - the colour, centred (``rgb - 0.5``).
    """
    if params.shape[-1] != PARAMS_PER_SPLAT:
        raise ValueError(
            f"expected [..., {PARAMS_PER_SPLAT}] parameters, got {tuple(params.shape)}"
        )
    p = params.float()
    scale = p.new_tensor([width, height])
    pos = p[..., 0:2] / scale

    freqs = math.pi * 2.0 ** torch.arange(fourier_freqs, device=p.device, dtype=p.dtype)
    angles = (pos[..., None] * freqs).flatten(-2)  # [..., 2 * F]
    fourier = torch.cat([angles.sin(), angles.cos()], dim=-1)

    # Covariance of the splat in image units: Sigma_n = D L L^T D with D = diag(1/W, 1/H).
    log_l11, l21, log_l22 = p[..., 2], p[..., 3], p[..., 4]
    a = log_l11.exp() / width  # (D L)[0, 0]
    b = l21 / height  # (D L)[1, 0]
    c = log_l22.exp() / height  # (D L)[1, 1]
    sxx, sxy, syy = a * a, a * b, b * b + c * c
    half_trace = 0.5 * (sxx + syy)
    half_gap = torch.sqrt((0.5 * (sxx - syy)) ** 2 + sxy**2 + _GAP_EPS)
    log_major = torch.log(half_trace + half_gap)
    # The minor eigenvalue from det / major: no cancellation for thin splats.
    log_det = 2.0 * (log_l11 + log_l22 - math.log(width) - math.log(height))
    log_minor = log_det - log_major
    log_std = 0.5 * torch.stack([log_major, log_minor], dim=-1)
    orientation = torch.stack([sxx - syy, 2.0 * sxy], dim=-1) / (2.0 * half_trace[..., None])

    color = p[..., COLOR] - 0.5
    return torch.cat([pos, fourier, log_std, orientation, color], dim=-1)


class GSStem(nn.Module):
    """Splat parameters -> splat tokens.

    ``features -> linear(f) * sigmoid(gate(f)) -> z-score over the feature axis -> linear``.
    The gate lets each splat's own parameters scale its features up or down (e.g. faint
    splats); the z-score (a LayerNorm without affine parameters) puts every token on the same
    scale whatever the image size or splat density.
    """

    def __init__(self, out_dim: int, fourier_freqs: int = 8, hidden_dim: int = 256) -> None:
        super().__init__()
        in_dim = num_splat_features(fourier_freqs)
        self.fourier_freqs = fourier_freqs
        self.linear = nn.Linear(in_dim, hidden_dim)
        self.gate = nn.Linear(in_dim, hidden_dim)
        self.proj = nn.Linear(hidden_dim, out_dim)

    def forward(
        self, params: torch.Tensor, mask: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """Embed a padded batch of splat sets.

        Args:
            params: ``[B, N, 8]`` splat parameters (any float dtype).
            mask: ``[B, N]`` bool, True for real splats.
            height, width: image size the parameters refer to.

        Returns:
            ``[B, N, out_dim]`` tokens in the stem's parameter dtype. Rows of padding splats
            are finite but meaningless; consumers must mask them.
        """
        # Padding rows may hold anything (NaN included); zero them so that nothing non-finite
        # can reach a masked-out attention score, where 0 * NaN would still poison the sum.
        params = params.masked_fill(~mask[..., None], 0.0)
        f = splat_features(params, height, width, self.fourier_freqs).to(self.linear.weight.dtype)
        h = self.linear(f) * torch.sigmoid(self.gate(f))
        h = F.layer_norm(h, h.shape[-1:])
        return self.proj(h)
