"""What a zero-shot evaluation reads: the labelled splits, class names and templates."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    """Zero-shot classification on a labelled split (webdataset shards with a ``.cls`` or a
    ``.json`` ``label``, or an ImageFolder directory). An empty ``data`` disables
    evaluation."""

    data: str = ""
    """The held-out split: shards (a pattern) or an ImageFolder directory."""
    classnames: str = "imagenet"
    """``imagenet`` (open_clip's list), a ``.txt`` file (one name a line) or a ``.json`` file
    (a list, or an object with ``classnames`` and optionally ``templates``)."""
    templates: str = ""
    """``openai`` / ``simple`` (open_clip's ImageNet sets), a ``.txt`` file of
    ``str.format`` patterns with ``{}``, or empty: the class file's own, else ``openai``."""
    batch_size: int = 128
    """Images an evaluation batch."""
    max_samples: int = 0
    """Evaluate at most this many samples (0: all)."""
    val_data: str = ""
    """A validation split (same forms and classes as ``data``) that chooses the best epoch;
    ``data`` is then held out, evaluated once on the chosen model. Empty: the evaluations
    during training run on ``data`` and choose on it."""
    classifier_cache: str = ""
    """Directory of cached zero-shot classifiers (:mod:`streamfit.eval.classifier_cache`;
    frozen text towers only); empty: ``$STREAMFIT_CACHE/zeroshot_classifiers``, by default
    in the user's cache directory; ``none``: no cache."""
