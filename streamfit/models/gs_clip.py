"""GS-CLIP: an open_clip CLIP whose image tower reads 2D Gaussian splats.

The splats go through the GS stem and the Perceiver Resampler; the resulting fixed-length
sequence (pooled token in the class-token position, learned positional embeddings) then runs
through the RGB model's own ``ln_pre``, transformer blocks, ``ln_post`` and ``proj``, so the
output is a drop-in image embedding for the RGB model's text tower. The RGB patch embedding,
class token and positional embedding are dropped.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.transformer import VisionTransformer
from torch import nn

from streamfit.models.config import GSModelConfig
from streamfit.models.resampler import PerceiverResampler
from streamfit.models.stem import GSStem
from streamfit.models.teacher import load_teacher
from streamfit.splats import BYTES_PER_SPLAT, Splats, compression_ratio

# Parameter name prefix -> part of the model, in order (first match wins). Parts name the rows
# of parameter summaries; PART_GROUP maps them to optimiser groups.
_PARTS: tuple[tuple[str, str], ...] = (
    ("visual.stem.", "stem"),
    ("visual.resampler.", "resampler"),
    ("visual.token_proj.", "resampler"),
    ("visual.positional_embedding", "token_pos_embed"),
    ("visual.ln_pre.", "ln_pre"),
    ("visual.transformer.", "blocks"),
    ("visual.ln_post.", "ln_post"),
    ("visual.proj", "proj"),
    ("clip.logit_", "logit_scale"),
    ("clip.", "text"),
)
PART_GROUP: dict[str, str] = {
    "stem": "gs_input",
    "resampler": "gs_input",
    "token_pos_embed": "gs_input",
    "ln_pre": "backbone",
    "blocks": "backbone",
    "ln_post": "backbone",
    "proj": "backbone",
    "text": "text",
    "logit_scale": "logit_scale",
}
# Learned token tables: no weight decay (as for biases, norms and the logit scale).
_NO_DECAY_SUFFIXES = ("positional_embedding", "latents")


def part_of(name: str) -> str:
    """The model part (see ``PART_GROUP``) a GS-CLIP parameter name belongs to."""
    for prefix, part in _PARTS:
        if name.startswith(prefix):
            return part
    raise KeyError(f"parameter {name!r} belongs to no known part")


def input_bytes(mask: torch.Tensor, height: int, width: int) -> dict[str, float]:
    """Bytes of a batch of model input as splats vs as raw pixels.

    Args:
        mask: ``[B, N]`` bool splat mask of the batch.
        height, width: image size.

    Returns:
        ``splat_bytes`` (valid splats x 16 bytes, float16), ``rgb_bytes`` (``B * H * W * 3``,
        8-bit RGB), ``compression`` (their ratio, inf for no splats) and ``splats_per_image``.
        Reading the count synchronises with the mask's device.
    """
    n_images = mask.shape[0]
    n_splats = int(mask.sum())
    splat_bytes = n_splats * BYTES_PER_SPLAT
    rgb_bytes = n_images * height * width * 3
    return {
        "splat_bytes": float(splat_bytes),
        "rgb_bytes": float(rgb_bytes),
        "compression": compression_ratio(height, width, n_splats, n_images),
        "splats_per_image": n_splats / max(n_images, 1),
    }


class GSVisionEncoder(nn.Module):
    """Splats -> image embedding, around the blocks of an open_clip ``VisionTransformer``.

    The new parts are ``stem``, ``resampler``, ``token_proj`` (latent width -> transformer
    width) and ``positional_embedding`` (``[1 + num_tokens, width]``: slot 0 is the pooled
    token's, the rest the queries'; initialised from the RGB tower's, linearly resampled along
    the sequence when the query count differs from the patch count, so that the reused blocks
    start from inputs with the statistics they were trained on). ``ln_pre``, ``transformer``,
    ``ln_post`` and ``proj`` are the RGB tower's own modules.
    """

    def __init__(self, visual: nn.Module, cfg: GSModelConfig) -> None:
        super().__init__()
        if not isinstance(visual, VisionTransformer):
            raise ValueError(
                "GS-CLIP needs an open_clip VisionTransformer image tower, "
                f"got {type(visual).__name__}"
            )
        if visual.attn_pool is not None or visual.pool_type not in ("tok", "avg"):
            raise ValueError("GS-CLIP supports class-token or average pooling towers only")
        width = visual.transformer.width
        latent_dim = cfg.latent_dim or width
        self.stem = GSStem(latent_dim, cfg.fourier_freqs, cfg.stem_dim)
        self.resampler = PerceiverResampler(
            latent_dim,
            cfg.num_tokens,
            cfg.resampler_layers,
            cfg.resampler_heads,
            cfg.resampler_mlp_ratio,
        )
        self.token_proj = nn.Linear(latent_dim, width) if latent_dim != width else nn.Identity()
        self.positional_embedding = nn.Parameter(
            _resample_positions(visual.positional_embedding.detach(), cfg.num_tokens)
        )
        self.ln_pre = visual.ln_pre
        self.transformer = visual.transformer
        self.ln_post = visual.ln_post
        self.proj = visual.proj
        self.pool_type = visual.pool_type
        self.final_ln_after_pool = visual.final_ln_after_pool
        self.output_dim = visual.output_dim

    def forward(
        self, splat_params: torch.Tensor, mask: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """``splat_params [B, N, 8]``, ``mask [B, N]`` bool -> unnormalised ``[B, output_dim]``."""
        tokens = self.stem(splat_params, mask, height, width)
        x = self.token_proj(self.resampler(tokens, mask))  # [B, 1 + T, width]
        x = self.ln_pre(x + self.positional_embedding.to(x.dtype))
        x = self.transformer(x)
        if self.final_ln_after_pool:
            pooled = self.ln_post(self._global_pool(x))
        else:
            pooled = self._global_pool(self.ln_post(x))
        return pooled @ self.proj if self.proj is not None else pooled

    def _global_pool(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] if self.pool_type == "tok" else x[:, 1:].mean(dim=1)


def _resample_positions(pos: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``[1 + G, W]`` RGB positional embedding -> ``[1 + num_tokens, W]`` (class slot kept)."""
    grid = pos[1:]
    if grid.shape[0] != num_tokens:
        grid = F.interpolate(grid.T[None], size=num_tokens, mode="linear", align_corners=True)[0].T
    return torch.cat([pos[:1], grid], dim=0).clone()


class GSCLIP(nn.Module):
    """The GS image encoder (``visual``) beside the RGB model's text tower and logit scale
    (``clip``: the open_clip model with its image tower removed).

    Trainable parameters follow ``cfg``: by default the stem, resampler, token projection and
    positional embedding, the first ``unfrozen_blocks`` vision blocks, ``ln_post`` and
    ``proj``; with ``from_scratch`` everything.
    """

    def __init__(self, clip: nn.Module, cfg: GSModelConfig) -> None:
        super().__init__()
        if not isinstance(clip, (CLIP, CustomTextCLIP)):
            raise ValueError(
                f"expected an open_clip CLIP or CustomTextCLIP, got {type(clip).__name__}"
            )
        self.cfg = cfg
        self.visual = GSVisionEncoder(clip.visual, cfg)
        n_blocks = len(self.visual.transformer.resblocks)
        if not 0 <= cfg.unfrozen_blocks <= n_blocks:
            raise ValueError(f"unfrozen_blocks={cfg.unfrozen_blocks} outside [0, {n_blocks}]")
        # The blocks now live in self.visual; the RGB stem is not needed.
        clip.visual = None
        self.clip = clip
        self._set_trainable()

    def _set_trainable(self) -> None:
        self.requires_grad_(self.cfg.from_scratch)
        if self.cfg.from_scratch:
            return
        v = self.visual
        for module in (
            v.stem,
            v.resampler,
            v.token_proj,
            v.ln_post,
            *v.transformer.resblocks[: self.cfg.unfrozen_blocks],
        ):
            module.requires_grad_(True)
        v.positional_embedding.requires_grad_(True)
        if v.proj is not None:
            v.proj.requires_grad_(True)
        if self.cfg.train_logit_scale:
            for p in (self.clip.logit_scale, self.clip.logit_bias):
                if p is not None:
                    p.requires_grad_(True)

    # ------------------------------------------------------------------ encoders
    def encode_image(
        self,
        splat_params: torch.Tensor,
        mask: torch.Tensor,
        height: int,
        width: int,
        normalize: bool = False,
    ) -> torch.Tensor:
        """Image embeddings from splats.

        Args:
            splat_params: ``[B, N, 8]`` float (layout of :mod:`streamfit.splats`), padded.
            mask: ``[B, N]`` bool, True for real splats (any count per image, 0 included).
            height, width: image size the pixel-unit parameters refer to.
            normalize: L2-normalise the output.

        Returns:
            ``[B, embed_dim]`` on the model's device, in the model's (or autocast) dtype.
        """
        features = self.visual(splat_params, mask, height, width)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_splats(self, splats: Splats, normalize: bool = False) -> torch.Tensor:
        """:meth:`encode_image` for a :class:`~streamfit.splats.Splats` batch."""
        return self.encode_image(splats.params, splats.mask, splats.height, splats.width, normalize)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``[B, context_length]`` int64 token ids -> ``[B, embed_dim]`` (the RGB text tower)."""
        return self.clip.encode_text(text, normalize=normalize)

    def forward(
        self,
        splat_params: torch.Tensor,
        mask: torch.Tensor,
        text: torch.Tensor,
        height: int,
        width: int,
    ) -> dict[str, torch.Tensor]:
        """Normalised ``image_features`` and ``text_features`` (``[B, embed_dim]``) and
        ``logit_scale`` (already exponentiated, ``[1]``), plus ``logit_bias`` for models that
        have one: ``open_clip.ClipLoss()(**out)`` (or ``SigLipLoss``) takes them as they are."""
        out = {
            "image_features": self.encode_image(splat_params, mask, height, width, normalize=True),
            "text_features": self.encode_text(text, normalize=True),
            "logit_scale": self.clip.logit_scale.exp(),
        }
        if self.clip.logit_bias is not None:
            out["logit_bias"] = self.clip.logit_bias
        return out

    # ------------------------------------------------------------------ training helpers
    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups of the trainable parameters.

        Groups: ``gs_input`` (stem, resampler, token positions) at ``base_lr``; ``backbone``
        (trainable vision-tower parts) and, when trainable, ``text`` and ``logit_scale`` at
        ``base_lr * cfg.backbone_lr_scale`` (``base_lr`` for all in ``from_scratch`` mode).
        Each comes as a decayed group ``<name>`` and a ``<name>_no_decay`` group (biases,
        norms, learned token tables, the logit scale). Every group carries ``name``, ``lr``,
        ``base_lr`` (its own peak lr, for schedulers to scale), ``lr_scale`` and
        ``weight_decay``. Empty groups are left out.
        """
        backbone_scale = 1.0 if self.cfg.from_scratch else self.cfg.backbone_lr_scale
        scales = {
            "gs_input": 1.0,
            "backbone": backbone_scale,
            "text": backbone_scale,
            "logit_scale": backbone_scale,
        }
        groups: dict[str, dict[str, Any]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            group = PART_GROUP[part_of(name)]
            decay = p.ndim >= 2 and not name.endswith(_NO_DECAY_SUFFIXES)
            key = group if decay else f"{group}_no_decay"
            if key not in groups:
                lr = base_lr * scales[group]
                groups[key] = {
                    "name": key,
                    "params": [],
                    "lr": lr,
                    "base_lr": lr,
                    "lr_scale": scales[group],
                    "weight_decay": weight_decay if decay else 0.0,
                }
            groups[key]["params"].append(p)
        order = [k for g in scales for k in (g, f"{g}_no_decay")]
        return sorted(groups.values(), key=lambda g: order.index(g["name"]))

    def parameter_counts(self) -> dict[str, dict[str, int]]:
        """``{part: {"total": n, "trainable": n}}`` for each part of ``PART_GROUP`` (input to
        output, zeros included); ``"all"`` holds the sums."""
        counts = {part: {"total": 0, "trainable": 0} for part in PART_GROUP}
        for name, p in self.named_parameters():
            row = counts[part_of(name)]
            row["total"] += p.numel()
            row["trainable"] += p.numel() if p.requires_grad else 0
        counts["all"] = {k: sum(row[k] for row in counts.values()) for k in ("total", "trainable")}
        return counts

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the vision blocks' activations in backward (memory for compute)."""
        self.visual.transformer.grad_checkpointing = enable

    input_bytes = staticmethod(input_bytes)


def text_tower(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights ``encode_text`` reads (parameters, so ``requires_grad`` shows whether they
    train, and buffers) of an open_clip CLIP / CustomTextCLIP or a GS-CLIP, named as in the
    open_clip model for both: a GS-CLIP's text tower is its teacher's, under the same names.
    The image tower and the logit scale and bias are left out."""
    clip = model.clip if isinstance(model, GSCLIP) else model
    return {
        name: tensor
        for name, tensor in clip.state_dict(keep_vars=True).items()
        if not name.startswith("visual.") and name not in ("logit_scale", "logit_bias")
    }


def build_gs_clip(cfg: GSModelConfig, teacher: nn.Module | None = None) -> GSCLIP:
    """Build GS-CLIP from its config.

    Args:
        cfg: the model config; ``cfg.pretrained`` names the teacher's weights.
        teacher: an already-built open_clip model to take over instead of loading one from
            ``cfg`` (its weights are used as they are). The GS-CLIP takes ownership: the
            teacher's image tower is removed from it.

    Returns:
        The GS-CLIP, float32 on the CPU (or the teacher's device), in train mode, with the
        trainable parameters of ``cfg`` (see :class:`GSCLIP`).
    """
    if cfg.from_scratch and cfg.pretrained is not None:
        raise ValueError("from_scratch builds a random backbone; set pretrained to None")
    if teacher is None:
        teacher = load_teacher(cfg.model_name, cfg.pretrained, **cfg.model_kwargs)
    return GSCLIP(teacher, cfg)
