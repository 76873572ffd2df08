"""Rate and distortion beside image codecs: JPEG, WebP and AVIF (Pillow) at their best
quality under a byte budget, PSNR as a viewer sees it (8-bit), and the Bjøntegaard delta
PSNR between two rate–distortion curves over a byte range.

Splat files are judged the way image codecs are: the same photos, the same 8-bit PSNR, and
each image codec at the highest quality setting whose file fits in the splat file's bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, features


@dataclass(frozen=True)
class ImageCodecSpec:
    """A Pillow encoder: its format name, the feature that says Pillow has it, its quality
    settings (worst to best) and the other options it is saved with."""

    pillow_format: str
    feature: str
    qualities: tuple[int, ...]
    options: dict = field(default_factory=dict)


IMAGE_CODECS: dict[str, ImageCodecSpec] = {
    # Pillow's advice: JPEG qualities above 95 only grow the file
    "jpeg": ImageCodecSpec("JPEG", "jpg", tuple(range(1, 96)), {"optimize": True}),
    "webp": ImageCodecSpec("WEBP", "webp", tuple(range(0, 101)), {"method": 6}),
    "avif": ImageCodecSpec("AVIF", "avif", tuple(range(0, 101))),
}


def available_image_codecs() -> list[str]:
    """The codecs of :data:`IMAGE_CODECS` this Pillow can write."""
    return [name for name, spec in IMAGE_CODECS.items() if features.check(spec.feature)]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``[B, H, W, 3]`` float (any range) -> uint8, clamped and rounded as a display would."""
    return (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def psnr_8bit(images: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of uint8 ``[B, H, W, 3]`` images against uint8 targets."""
    diff = images.astype(np.float64) - targets.astype(np.float64)
    mse = (diff**2).reshape(len(images), -1).mean(1)
    return 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12))


class ImageCodec:
    """One image codec over a fixed set of images, every encode remembered (an image at a
    quality is encoded once however many budgets ask for it).

    ``images``: uint8 ``[B, H, W, 3]``, the very pixels the splats were fitted to.
    """

    def __init__(self, name: str, images: np.ndarray) -> None:
        if name not in IMAGE_CODECS:
            raise ValueError(f"unknown image codec {name!r}; choose from {', '.join(IMAGE_CODECS)}")
        self.name, self.spec, self.images = name, IMAGE_CODECS[name], images
        self._done: dict[tuple[int, int], tuple[int, float]] = {}

    def encode(self, index: int, quality: int) -> tuple[int, float]:
        """``(bytes, PSNR)`` of image ``index`` at ``quality``."""
        key = (index, quality)
        if key not in self._done:
            out = io.BytesIO()
            Image.fromarray(self.images[index]).save(
                out, self.spec.pillow_format, quality=quality, **self.spec.options
            )
            decoded = np.asarray(Image.open(io.BytesIO(out.getvalue())).convert("RGB"))
            value = float(psnr_8bit(decoded[None], self.images[index][None])[0])
            self._done[key] = (out.tell(), value)
        return self._done[key]

    def best_under(self, index: int, budget: int) -> tuple[int, float] | None:
        """``(bytes, PSNR)`` at the highest quality whose file fits ``budget`` bytes (None when
        even the lowest does not). Bisects the qualities: file size grows with quality."""
        qualities = self.spec.qualities
        if self.encode(index, qualities[0])[0] > budget:
            return None
        lo, hi = 0, len(qualities) - 1  # qualities[lo] fits; find the last that does
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.encode(index, qualities[mid])[0] <= budget:
                lo = mid
            else:
                hi = mid - 1
        return self.encode(index, qualities[lo])

    def curve(self, step: int = 1) -> list[dict[str, float]]:
        """The codec's rate–distortion curve over every ``step``-th quality: mean bytes and
        mean PSNR over the images at each quality, smallest files first."""
        points = []
        for quality in self.spec.qualities[::step]:
            got = [self.encode(i, quality) for i in range(len(self.images))]
            points.append(
                {
                    "quality": quality,
                    "bytes_mean": float(np.mean([b for b, _ in got])),
                    "psnr_mean": float(np.mean([p for _, p in got])),
                }
            )
        return sorted(points, key=lambda p: p["bytes_mean"])


def bd_psnr(
    curve: Sequence[tuple[float, float]],
    reference: Sequence[tuple[float, float]],
    low: float,
    high: float,
) -> float | None:
    """Bjøntegaard delta PSNR (dB) of ``curve`` over ``reference``: the mean vertical gap
    between the two ``(bytes, PSNR)`` curves over ``low..high`` bytes, on a log byte axis.

    Each curve is interpolated piecewise linearly in ``log(bytes)`` (not the original cubic
    fit, which swings between few, unevenly spaced points). None when either curve does not
    span the whole range: a gap is never extrapolated.
    """
    if not low < high:
        raise ValueError(f"bd_psnr needs low < high, got {low}..{high}")
    grid = np.linspace(np.log(low), np.log(high), 256)
    gaps = []
    for points, sign in ((curve, 1.0), (reference, -1.0)):
        rate, quality = (np.asarray(v, dtype=np.float64) for v in zip(*sorted(points), strict=True))
        if len(rate) < 2 or rate[0] > low or rate[-1] < high:
            return None
        gaps.append(sign * np.interp(grid, np.log(rate), quality))
    difference = gaps[0] + gaps[1]
    # trapezoid mean over the evenly spaced grid
    return float((difference[1:] + difference[:-1]).mean() / 2)
