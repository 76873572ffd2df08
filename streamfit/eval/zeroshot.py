"""Zero-shot classification: a classifier from class names x prompt templates (as open_clip's
``build_zero_shot_classifier``), ``100 * image_features @ classifier`` logits, top-1/top-5
and per-class accuracy, summed over batches and ranks."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from open_clip import (
    IMAGENET_CLASSNAMES,
    OPENAI_IMAGENET_TEMPLATES,
    SIMPLE_IMAGENET_TEMPLATES,
    get_tokenizer,
)
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

Template = Callable[[str], str]
_BUILTIN_TEMPLATES = {"openai": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}


def load_classnames(spec: str) -> list[str]:
    """``imagenet`` -> open_clip's 1000 ImageNet class names; a ``.json`` file -> its list, or
    its ``classnames`` entry; any other file -> one name a line (blank lines ignored)."""
    if spec == "imagenet":
        return list(IMAGENET_CLASSNAMES)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"class name file {spec} does not exist")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        names = data["classnames"] if isinstance(data, dict) else data
        return [str(n) for n in names]
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_templates(spec: str, classnames_spec: str = "") -> list[Template]:
    """``openai`` / ``simple`` -> open_clip's ImageNet templates; a file -> its ``{}`` patterns,
    one a line; empty -> the ``templates`` of a ``.json`` class file, else ``openai``."""
    if not spec:
        path = Path(classnames_spec)
        if path.suffix == ".json" and path.is_file():
            data = json.loads(path.read_text())
            if isinstance(data, dict) and data.get("templates"):
                return [partial(str.format, t) for t in data["templates"]]
        spec = "openai"
    if spec in _BUILTIN_TEMPLATES:
        return list(_BUILTIN_TEMPLATES[spec])
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"template file {spec} does not exist")
    patterns = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    bad = [p for p in patterns if "{}" not in p]
    if bad:
        raise ValueError(f"templates in {spec} need a '{{}}' for the class name: {bad[:3]}")
    return [partial(str.format, p) for p in patterns]


def class_prompts(classnames: Sequence[str], templates: Sequence[Template]) -> list[list[str]]:
    """The prompts of each class: every template applied to its name, in template order."""
    return [[template(name) for template in templates] for name in classnames]


@torch.no_grad()
def build_classifier(
    model: nn.Module,
    tokenizer_name: str,
    context_length: int,
    prompts: Sequence[Sequence[str]],
    device: torch.device | str,
    progress: bool = False,
    classes_per_batch: int = 10,
) -> torch.Tensor:
    """``[D, C]`` float32 classifier: per class, the normalised mean of the normalised text
    features of its prompts (open_clip's ``build_zero_shot_classifier``, for prompt lists that
    may differ from class to class, as clip_benchmark's class-specific prompts do), encoded
    ``classes_per_batch`` classes at a time by ``model.encode_text``; ``progress`` shows a bar
    over the classes."""
    tokenizer = get_tokenizer(tokenizer_name)
    n_prompts = sum(len(p) for p in prompts)
    columns = []
    with tqdm(
        total=len(prompts),
        desc=f"zero-shot classifier ({n_prompts} prompts)",
        unit="class",
        disable=not progress,
    ) as bar:
        for start in range(0, len(prompts), classes_per_batch):
            batch = prompts[start : start + classes_per_batch]
            tokens = tokenizer([p for group in batch for p in group], context_length)
            features = F.normalize(model.encode_text(tokens.to(device)).float(), dim=-1)
            for per_class in features.split([len(p) for p in batch]):
                columns.append(F.normalize(per_class.mean(dim=0), dim=-1))
            bar.update(len(batch))
    return torch.stack(columns, dim=1)


@dataclass
class ZeroShotResult:
    """Accuracies in [0, 1]; ``per_class[c]`` is None for classes with no sample."""

    top1: float
    top5: float
    samples: int
    classnames: list[str]
    per_class_top1: list[float | None] = field(default_factory=list)
    per_class_count: list[int] = field(default_factory=list)

    @property
    def chance_top1(self) -> float:
        return 1.0 / len(self.classnames)

    def to_dict(self) -> dict:
        return {
            "top1": self.top1,
            "top5": self.top5,
            "samples": self.samples,
            "classes": len(self.classnames),
            "chance_top1": self.chance_top1,
        }

    def write_per_class_csv(self, path: str | Path) -> None:
        """``class_index,classname,samples,top1`` rows."""
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class_index", "classname", "samples", "top1"])
            for i, name in enumerate(self.classnames):
                acc = self.per_class_top1[i]
                writer.writerow([i, name, self.per_class_count[i], "" if acc is None else acc])


class ZeroShotTally:
    """Per-class counts of samples, top-1 and top-k hits; ``add`` batches, ``sum_over``
    ranks, ``result`` at the end."""

    def __init__(self, classnames: Sequence[str], k: int = 5) -> None:
        self.classnames = list(classnames)
        self.k = min(k, len(self.classnames))
        # [3, C]: samples, top-1 hits, top-k hits, float64 so sums are exact up to 2^53
        self.counts = torch.zeros(3, len(self.classnames), dtype=torch.float64)

    def add(self, image_features: torch.Tensor, classifier: torch.Tensor, labels: torch.Tensor):
        """``image_features [B, D]`` L2-normalised, ``classifier [D, C]``, ``labels [B]``."""
        logits = 100.0 * image_features.float() @ classifier.float()
        topk = logits.topk(self.k, dim=1).indices.cpu()
        labels = labels.cpu().long()
        hit = topk == labels[:, None]
        ones = torch.ones_like(labels, dtype=torch.float64)
        self.counts[0].index_add_(0, labels, ones)
        self.counts[1].index_add_(0, labels, hit[:, 0].double())
        self.counts[2].index_add_(0, labels, hit.any(dim=1).double())

    def sum_over(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Combine the counts of all ranks with ``reduce`` (e.g. an all-reduce sum)."""
        self.counts = reduce(self.counts)

    def result(self) -> ZeroShotResult:
        n, h1, hk = self.counts
        total = int(n.sum())
        per_class = [float(h1[c] / n[c]) if n[c] > 0 else None for c in range(len(n))]
        return ZeroShotResult(
            top1=float(h1.sum() / total) if total else float("nan"),
            top5=float(hk.sum() / total) if total else float("nan"),
            samples=total,
            classnames=self.classnames,
            per_class_top1=per_class,
            per_class_count=[int(x) for x in n],
        )
