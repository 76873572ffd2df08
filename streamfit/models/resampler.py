"""Perceiver Resampler: a variable-size, padded set of splat tokens -> a fixed-length sequence.

Learned query tokens cross-attend to the splat tokens (and to themselves, as in Flamingo, so
that every query always has something valid to attend to, even for an empty set); a masked
mean over the valid splat tokens adds one global token. Attention and the mean are both
symmetric in the splats, so the output is invariant to their order and to padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``tokens [B, N, D]`` over the rows where ``mask [B, N]`` is True -> ``[B, D]``
    (zeros for an empty set)."""
    weights = mask.to(tokens.dtype)[..., None]
    count = weights.sum(dim=1).clamp(min=1.0)
    return (tokens * weights).sum(dim=1) / count


class ResamplerLayer(nn.Module):
    """One pre-norm block: queries attend to ``[splat tokens; queries]``, then a feed-forward;
    both with residuals."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.norm_tokens = nn.LayerNorm(dim)
        self.norm_queries = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        )

    def forward(
        self, queries: torch.Tensor, tokens: torch.Tensor, key_mask: torch.Tensor
    ) -> torch.Tensor:
        """``queries [B, T, D]``, ``tokens [B, N, D]``, ``key_mask [B, N + T]`` bool (True =
        attend) -> updated queries ``[B, T, D]``."""
        b, t, d = queries.shape
        q_in = self.norm_queries(queries)
        kv_in = torch.cat([self.norm_tokens(tokens), q_in], dim=1)
        q = self.to_q(q_in).view(b, t, self.heads, -1).transpose(1, 2)
        k, v = self.to_kv(kv_in).view(b, kv_in.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        queries = queries + self.to_out(out.transpose(1, 2).reshape(b, t, d))
        return queries + self.mlp(queries)


class PerceiverResampler(nn.Module):
    """Splat tokens ``[B, N, D]`` + mask -> ``[B, 1 + num_tokens, D]``: the masked-mean token
    first (it takes the class-token position downstream), then the ``num_tokens`` queries;
    both through a final LayerNorm."""

    def __init__(
        self,
        dim: int,
        num_tokens: int = 196,
        layers: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
    ) -> None:
        super().__init__()
        if num_tokens < 1 or layers < 1:
            raise ValueError(f"need num_tokens >= 1 and layers >= 1, got {num_tokens}, {layers}")
        self.latents = nn.Parameter(torch.randn(num_tokens, dim) * dim**-0.5)
        self.layers = nn.ModuleList(ResamplerLayer(dim, heads, mlp_ratio) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    @property
    def num_tokens(self) -> int:
        return self.latents.shape[0]

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Args: ``tokens [B, N, D]`` (padding rows must be finite), ``mask [B, N]`` bool.
        Returns ``[B, 1 + num_tokens, D]`` in ``tokens``' dtype."""
        b = tokens.shape[0]
        queries = self.latents.to(tokens.dtype).expand(b, -1, -1)
        key_mask = torch.cat([mask, mask.new_ones(b, self.num_tokens)], dim=1)
        for layer in self.layers:
            queries = layer(queries, tokens, key_mask)
        pooled = masked_mean(tokens, mask)
        return self.norm(torch.cat([pooled[:, None], queries], dim=1))
