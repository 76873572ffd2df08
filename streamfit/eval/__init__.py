"""Evaluation as a library: labelled splits (ImageFolder or shards), zero-shot classification
of CLIP-style models (RGB or GS: class lists and templates, the text classifier, top-k and
per-class accuracy), the classifiers cached on disk, and the evaluation run over a split that
training and ``tools/zeroshot_eval.py`` both call."""

from streamfit.eval.classifier_cache import (
    Classifier,
    ClassifierCache,
    open_cache,
    zero_shot_classifier,
)
from streamfit.eval.config import EvalConfig
from streamfit.eval.evaluate import ZeroShotSetup, zero_shot, zero_shot_setup
from streamfit.eval.labelled import LabelledBatch, LabelledLoader, default_fitter, iter_labelled
from streamfit.eval.zeroshot import (
    ZeroShotResult,
    ZeroShotTally,
    build_classifier,
    class_prompts,
    load_classnames,
    load_templates,
)

__all__ = [
    "Classifier",
    "ClassifierCache",
    "EvalConfig",
    "LabelledBatch",
    "LabelledLoader",
    "ZeroShotResult",
    "default_fitter",
    "ZeroShotSetup",
    "ZeroShotTally",
    "build_classifier",
    "class_prompts",
    "iter_labelled",
    "load_classnames",
    "load_templates",
    "open_cache",
    "zero_shot",
    "zero_shot_classifier",
    "zero_shot_setup",
]
