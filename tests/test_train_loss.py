"""The cross-rank contrastive loss: open_clip's ClipLoss on one rank, and on two gloo ranks
with different batch sizes the same loss and gradients as one rank with the whole batch."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from open_clip.loss import ClipLoss

from streamfit.train.loss import contrastive_loss


def _features(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        F.normalize(torch.randn(n, 8, generator=g), dim=-1),
        F.normalize(torch.randn(n, 8, generator=g), dim=-1),
    )


def test_single_rank_matches_open_clip():
    image, text = _features(6)
    scale = torch.tensor([10.0])
    expected = ClipLoss()(image, text, scale)
    torch.testing.assert_close(contrastive_loss(image, text, scale), expected)


def _worker(rank: int, port: int, sizes: list[int], out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=len(sizes))
    image, text = _features(sum(sizes))
    start = sum(sizes[:rank])
    mine = slice(start, start + sizes[rank])
    image, text = image[mine].clone().requires_grad_(), text[mine].clone().requires_grad_()
    loss = contrastive_loss(image, text, torch.tensor([10.0]))
    # rows weighted by their count: the global mean over all pairs
    (loss * sizes[rank] / sum(sizes)).backward()
    out[rank] = (loss.item(), image.grad.clone(), text.grad.clone())
    dist.destroy_process_group()


def test_two_ranks_with_unequal_batches_match_one_rank_with_the_whole_batch():
    sizes = [5, 3]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(port, sizes, out), nprocs=2, join=True)

    image, text = _features(sum(sizes))
    image.requires_grad_()
    text.requires_grad_()
    scale = torch.tensor([10.0])
    logits = scale * image @ text.T
    labels = torch.arange(sum(sizes))
    # per-row losses of both directions, averaged over rows: what the ranks compute together
    per_row = 0.5 * (
        F.cross_entropy(logits, labels, reduction="none")
        + F.cross_entropy(logits.T, labels, reduction="none")
    )
    per_row.mean().backward()
    for rank, (loss, g_image, g_text) in out.items():
        start = sum(sizes[:rank])
        rows = slice(start, start + sizes[rank])
        assert abs(loss - per_row[rows].mean().item()) < 1e-5
        torch.testing.assert_close(g_image, image.grad[rows], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(g_text, text.grad[rows], rtol=1e-4, atol=1e-6)
