"""streamfit runs as clip_benchmark models: what a clip_benchmark model type's loader returns
(``model, transform, tokenizer``) for a GS-CLIP run (``streamfit_gs``) or an RGB run
(``streamfit_rgb``). Nothing here imports clip_benchmark; ``tools/clip_benchmark.py``
registers these loaders with it.

The transform turns each PIL image into one ``[3, S, S]`` uint8 tensor, the pixels the
training loader's decoder makes (centre square, bicubic resize to the run's image size, EXIF
orientation), so clip_benchmark's loader stacks them into a batch. ``encode_image`` does the
rest on the evaluation device: for RGB the model's own mean/std normalisation, for GS a fit
of the whole batch into splats with the run's fitting settings and backend, through the run's
splat cache. The cache keys these fits by a hash of the pixels (clip_benchmark hands over
decoded images, never their bytes), so a second evaluation of a split fits nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from open_clip import get_tokenizer
from PIL import Image
from torch import nn

from streamfit.data.decode import exif_orientation, square_pixels
from streamfit.data.fetch import SplatSource
from streamfit.eval.classifier_cache import Classifier, open_cache, zero_shot_classifier
from streamfit.eval.labelled import default_fitter
from streamfit.eval.run_model import NotARun, RunModel, load_run
from streamfit.models import rgb_normaliser
from streamfit.splats import compression_ratio

logger = logging.getLogger("streamfit.eval")


class PixelTransform:
    """PIL image -> ``[3, S, S]`` uint8 tensor (picklable: it runs in DataLoader workers)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = square_pixels(image.convert("RGB"), self.size, exif_orientation(image))
        return torch.from_numpy(pixels.copy()).permute(2, 0, 1)


def pixel_cache_id(pixels: np.ndarray) -> str:
    """The splat-cache id of ``[S, S, 3]`` uint8 pixels: a hash of the pixels and their shape
    (``px:`` keeps it apart from the training loader's ids, hashes of encoded image bytes)."""
    digest = hashlib.blake2b(str(pixels.shape).encode(), digest_size=16)
    digest.update(np.ascontiguousarray(pixels).data)
    return "px:" + digest.hexdigest()


class BenchmarkModel(nn.Module):
    """A run's model as clip_benchmark uses a CLIP: ``encode_image`` of ``[B, 3, S, S]`` uint8
    pixels and ``encode_text`` of token ids, both ``[B, D]`` unnormalised (clip_benchmark
    normalises). ``zero_shot_classifier`` gives the run's cached text classifier.

    Counts what happened to the GS images in ``images``, ``cache_hits``, ``fitted``,
    ``failed`` (fits with non-finite splats: scored with zero features, so they count as
    misclassified unless class 0 wins the ties) and ``splats``.
    """

    def __init__(
        self,
        run: RunModel,
        device: torch.device | str,
        classifier_cache: str = "",
        splat_cache: str | None = None,
    ) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.model = run.model.to(self.device)
        self.data, self.kind = run.data, run.kind
        self.classifier_cache = classifier_cache
        self.images = self.cache_hits = self.fitted = self.failed = self.splats = 0
        if run.fit is None:
            self.normalise = rgb_normaliser(self.model)
            return
        fit_cfg = replace(run.fit, device=str(self.device))
        fitter = default_fitter(fit_cfg, self.data, self.device)
        self.splat_source = SplatSource.of(self.data, fit_cfg, fitter, splat_cache)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, S, S]`` uint8 (as :class:`PixelTransform` makes them) -> ``[B, D]``."""
        if self.kind == "rgb":
            rgb = images.to(self.device).float().div_(255)
            return self.model.encode_image(self.normalise(rgb))
        pixels = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        # fitting is float32 arithmetic whatever precision clip_benchmark's autocast asks for
        with torch.autocast(self.device.type, enabled=False):
            got = self.splat_source.fetch([pixel_cache_id(p) for p in pixels], lambda i: pixels[i])
        keep = got.kept
        self.images += len(pixels)
        self.cache_hits += got.hits
        self.fitted += len(got.fitted)
        if len(keep) < len(pixels):
            self.failed += len(pixels) - len(keep)
            logger.warning(
                "%d of %d images gave non-finite splats: scored with zero features",
                len(pixels) - len(keep),
                len(pixels),
            )
        out = torch.zeros(len(pixels), self.model.visual.output_dim, device=self.device)
        if keep:
            splats = got.splats
            self.splats += int(splats.mask.sum())
            features = self.model.encode_splats(splats.to(self.device))
            out = out.to(features.dtype)
            out[keep] = features
        return out

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, context_length]`` token ids -> ``[B, D]``."""
        return self.model.encode_text(tokens.to(self.device))

    def zero_shot_classifier(
        self, classnames: Sequence[str], prompts: Sequence[Sequence[str]]
    ) -> Classifier:
        """The ``[D, C]`` classifier of ``prompts`` (per class), from the classifier cache
        (the one ``tools/zeroshot_eval.py`` and training use) or built and cached there."""
        return zero_shot_classifier(
            self.model,
            self.data.tokenizer,
            self.data.context_length,
            classnames,
            prompts,
            self.device,
            open_cache(self.classifier_cache),
            progress=True,
        )

    def splat_summary(self) -> dict[str, float]:
        """GS images seen, cache hits, fits, failed fits, splats per image, compression."""
        if not self.images:
            return {}
        per_image = self.splats / max(self.images - self.failed, 1)
        size = self.data.image_size
        return {
            "images": self.images,
            "cache_hits": self.cache_hits,
            "fitted": self.fitted,
            "failed": self.failed,
            "splats_per_image": per_image,
            "compression_ratio": compression_ratio(size, size, per_image) if per_image else 0.0,
        }


def load_benchmark_model(
    kind: str,
    model_dir: str | Path,
    device: torch.device | str = "cpu",
    classifier_cache: str = "",
    splat_cache: str | None = None,
) -> tuple[BenchmarkModel, PixelTransform, Callable[..., torch.Tensor]]:
    """``(model, transform, tokenizer)`` of the run or checkpoint in ``model_dir``, which must
    hold a ``kind`` (``gs`` or ``rgb``) model; :class:`NotARun` names what was expected.
    ``splat_cache`` overrides the run's splat cache directory (GS); ``classifier_cache`` is an
    :class:`~streamfit.eval.EvalConfig` ``classifier_cache`` setting."""
    run = load_run(model_dir)
    if run.kind != kind:
        other = {"gs": "streamfit_gs", "rgb": "streamfit_rgb"}[run.kind]
        found = "a GS-CLIP" if run.kind == "gs" else "an RGB CLIP"
        raise NotARun(f"{model_dir} holds {found} run; evaluate it as model type {other}")
    model = BenchmarkModel(run, device, classifier_cache, splat_cache)
    tokenizer = partial(get_tokenizer(run.data.tokenizer), context_length=run.data.context_length)
    return model.eval(), PixelTransform(run.data.image_size), tokenizer
