"""Zero-shot evaluation of a model on a labelled split, as a library: the recipes call it
during training (summed over ranks), ``tools/zeroshot_eval.py`` on a finished run."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from streamfit.data import DataConfig
from streamfit.eval.classifier_cache import Classifier, open_cache, zero_shot_classifier
from streamfit.eval.config import EvalConfig
from streamfit.eval.labelled import LabelledBatch, LabelledLoader
from streamfit.eval.zeroshot import (
    ZeroShotResult,
    ZeroShotTally,
    class_prompts,
    load_classnames,
    load_templates,
)
from streamfit.fit import FitConfig, FitGraphs
from streamfit.splats import compression_ratio


@dataclass
class ZeroShotSetup:
    """A labelled split, its class names and templates, resolved from :class:`EvalConfig`."""

    cfg: EvalConfig
    classnames: list[str]
    templates: list[Callable[[str], str]]

    def on(self, source: str) -> ZeroShotSetup:
        """The same classes and templates on another split of them (the validation split)."""
        return replace(self, cfg=replace(self.cfg, data=source))

    def classifier(
        self,
        model: torch.nn.Module,
        data_cfg: DataConfig,
        device: torch.device,
        progress: bool = True,
    ) -> Classifier:
        """``model``'s classifier of these classes and templates, through the classifier
        cache of ``cfg.classifier_cache`` when its text tower is frozen."""
        return zero_shot_classifier(
            model,
            data_cfg.tokenizer,
            data_cfg.context_length,
            self.classnames,
            class_prompts(self.classnames, self.templates),
            device,
            open_cache(self.cfg.classifier_cache),
            progress,
        )


def zero_shot_setup(cfg: EvalConfig) -> ZeroShotSetup | None:
    """The setup of ``cfg.data``; None when it is empty (no evaluation)."""
    if not cfg.data:
        return None
    return ZeroShotSetup(
        cfg, load_classnames(cfg.classnames), load_templates(cfg.templates, cfg.classnames)
    )


def _no_reduce(t: torch.Tensor) -> torch.Tensor:
    return t


@torch.no_grad()
def zero_shot(
    model: torch.nn.Module,
    encode: Callable[[LabelledBatch], torch.Tensor],
    setup: ZeroShotSetup,
    data_cfg: DataConfig,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    fit_cfg: FitConfig | None = None,
    fitter: FitGraphs | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] = _no_reduce,
) -> tuple[ZeroShotResult, dict[str, float]]:
    """Zero-shot accuracy of ``model`` on ``setup``'s split.

    ``encode(batch)`` gives ``[B, D]`` normalised image features (from ``batch.rgb`` or
    ``batch.splats``); pass ``fit_cfg`` for GS models (and
    ``fitter``, the :class:`LabelledLoader`'s, to keep one across evaluations). With several ranks each reads its share
    and ``reduce`` sums a tensor over them in place (the trainer's ``all_sum``). Returns
    (result, extras: seconds, of them the classifier's, and whether the classifier came from
    the classifier cache; for GS splats per image, compression ratio, cache hit rate and the
    samples left out because their fit failed).
    """
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    classifier = setup.classifier(model, data_cfg, device, progress=rank == 0)
    tally = ZeroShotTally(setup.classnames)
    loader = LabelledLoader(
        setup.cfg.data,
        data_cfg,
        setup.cfg.batch_size,
        device,
        fit_cfg,
        fitter,
        rank,
        world_size,
        setup.cfg.max_samples,
    )
    # samples, splats, hits, lookups, failed fits
    counts = torch.zeros(5, dtype=torch.float64)
    for batch in loader:
        counts[4] += batch.failed
        if not batch.keys:
            continue
        tally.add(encode(batch), classifier.weights, batch.labels)
        counts[0] += len(batch.keys)
        if batch.splats is not None:
            counts[1] += float(batch.splats.mask.sum())
            counts[2] += batch.hits
            counts[3] += batch.hits + batch.fitted
    tally.sum_over(reduce)
    reduce(counts)
    model.train(was_training)
    extras = {
        "seconds": time.perf_counter() - start,
        "classifier_seconds": classifier.seconds,
        "classifier_from_cache": float(classifier.from_cache),
    }
    if fit_cfg is not None and counts[1] > 0:
        per_image = float(counts[1] / counts[0])
        extras["splats_per_image"] = per_image
        extras["compression_ratio"] = compression_ratio(
            data_cfg.image_size, data_cfg.image_size, per_image
        )
        extras["cache_hit_rate"] = float(counts[2] / counts[3]) if counts[3] else float("nan")
        extras["fit_failed"] = float(counts[4])
    return tally.result(), extras
