"""What a zero-shot evaluation reads: the labelled splits, class names and templates."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    """Zero-shot classification on a labelled split (webdataset shards with a ``.cls`` or a
    ``.json`` ``label``, or an ImageFolder directory).

    ``classnames``: ``imagenet`` (open_clip's list), a ``.txt`` file (one name a line) or a
    ``.json`` file (a list, or an object with ``classnames`` and optionally ``templates``).
    ``templates``: ``openai`` / ``simple`` (open_clip's ImageNet sets), a ``.txt`` file of
    ``str.format`` patterns with ``{}``, or empty: the class file's own, else ``openai``.
    An empty ``data`` disables evaluation.

    ``val_data``: a validation split (same forms as ``data``, same classes) that chooses the
    best epoch; ``data`` is then held out, evaluated once on the chosen model. Empty: the
    evaluations during training run on ``data`` and choose on it.

    ``classifier_cache``: the directory of cached zero-shot classifiers
    (:mod:`streamfit.eval.classifier_cache`; used for frozen text towers only); empty:
    ``$STREAMFIT_CACHE/zeroshot_classifiers``, by default in the user's cache directory
    (``~/.cache/streamfit/zeroshot_classifiers``); ``none``: no cache.
    """

    data: str = ""
    classnames: str = "imagenet"
    templates: str = ""
    batch_size: int = 128
    max_samples: int = 0  # 0: all
    val_data: str = ""
    classifier_cache: str = ""
