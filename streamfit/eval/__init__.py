"""Zero-shot classification of CLIP-style models (RGB or GS): class lists and templates,
the text classifier, top-k and per-class accuracy."""

from streamfit.eval.zeroshot import (
    ZeroShotResult,
    ZeroShotTally,
    build_classifier,
    load_classnames,
    load_templates,
)

__all__ = [
    "ZeroShotResult",
    "ZeroShotTally",
    "build_classifier",
    "load_classnames",
    "load_templates",
]
