"""CLIP's contrastive loss with features gathered across ranks.

The same loss as open_clip's ``ClipLoss(local_loss=True, gather_with_grad=True)``: each rank
scores its own images against every rank's texts (and its texts against every image), with
gradients flowing back through the gather. Unlike open_clip's gather it accepts a different
batch size on each rank (the last batch of an epoch), so no sample has to be dropped.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
import torch.nn.functional as F

from streamfit.train.distributed import all_gather_ints


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``[b_r, D]`` on each rank -> (``[sum_r b_r, D]`` all ranks' rows in rank order, the
    offset of this rank's rows). Differentiable: gradients return to their rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return x, 0
    rank = dist.get_rank()
    counts = all_gather_ints(x.shape[0])  # host numbers, over the CPU: no wait for the GPU
    padded = F.pad(x, (0, 0, 0, max(counts) - x.shape[0]))
    parts = dist_nn.all_gather(padded)
    rows = torch.cat([p[:n] for p, n in zip(parts, counts, strict=True)])
    return rows, sum(counts[:rank])


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch.

    Args:
        image_features, text_features: ``[b, D]`` L2-normalised features of this rank's pairs.
        logit_scale: the exponentiated temperature (scalar or ``[1]``).
        logit_bias: unused by CLIP's loss; accepted so a model's output dict can be splatted.

    Returns:
        The scalar loss of this rank's rows (the mean over ranks is open_clip's loss).
    """
    # float32 logits whatever the features' precision (a bf16 model under autocast hands
    # out bf16 and float32 features): a sharp temperature needs them
    image_features, text_features = image_features.float(), text_features.float()
    logit_scale = logit_scale.float()
    all_images, offset = gather_rows(image_features)
    all_texts, _ = gather_rows(text_features)
    logits_per_image = logit_scale * image_features @ all_texts.T
    logits_per_text = logit_scale * text_features @ all_images.T
    labels = torch.arange(image_features.shape[0], device=image_features.device) + offset
    return 0.5 * (
        F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)
    )
