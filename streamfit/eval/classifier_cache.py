"""Zero-shot classifiers kept on disk, so a text tower that does not change encodes its
prompts once: ImageNet-1k's 1,000 classes x 80 templates are 80,000 prompts, half an hour on
a laptop CPU, for every evaluation of every checkpoint. GS-CLIP freezes its teacher's text
tower, so a GS-CLIP run and its teacher share one classifier.

A classifier is keyed by a hash of the text tower's weights (names, dtypes, shapes, bytes),
the tokenizer, the context length, the class names and every prompt (each template applied to
each class), so anything that changes it gives a new key and never a stale classifier. Each
entry is two files in the cache directory: ``<key>.pt``, the ``[D, C]`` float32 tensor alone
(``torch.save``; what clip_benchmark's ``--load_clfs`` reads), and ``<key>.json``, what it is
(tokenizer, context length, classes, prompt count, a hash of the tensor). A file that does not
load, or whose tensor does not match its hash or shape, is rebuilt with a warning.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from streamfit.eval.zeroshot import build_classifier
from streamfit.models import text_tower

logger = logging.getLogger("streamfit.eval")

FORMAT = 1  # part of every key: bump when the way a classifier is built changes
NO_CACHE = "none"  # the classifier_cache setting that turns the cache off


def default_cache_dir() -> Path:
    """``$STREAMFIT_CACHE/zeroshot_classifiers``; ``STREAMFIT_CACHE`` defaults to
    ``$XDG_CACHE_HOME/streamfit``, that to ``~/.cache/streamfit``."""
    root = os.environ.get("STREAMFIT_CACHE")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "streamfit"
    return Path(root) / "zeroshot_classifiers"


def open_cache(spec: str) -> ClassifierCache | None:
    """The cache a ``classifier_cache`` setting names: a directory, empty for the user's
    cache directory (:func:`default_cache_dir`), ``none`` for no cache."""
    if spec == NO_CACHE:
        return None
    return ClassifierCache(Path(spec) if spec else default_cache_dir())


def tower_digest(tower: dict[str, torch.Tensor]) -> str:
    """A hash of a text tower's weights (:func:`streamfit.models.text_tower`): names, dtypes,
    shapes and bytes, in name order. A ViT-B/16 text tower (63M parameters) takes ~0.4 s."""
    digest = hashlib.blake2b(digest_size=20)
    for name in sorted(tower):
        tensor = tower[name].detach()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(_tensor_bytes(tensor))
    return digest.hexdigest()


def classifier_key(
    tower_hash: str,
    tokenizer_name: str,
    context_length: int,
    classnames: Sequence[str],
    prompts: Sequence[Sequence[str]],
) -> str:
    """The cache key of the classifier of ``prompts`` (per class) by the text tower whose
    :func:`tower_digest` is ``tower_hash``."""
    blob = json.dumps(
        [FORMAT, tower_hash, tokenizer_name, context_length, list(classnames), prompts],
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class ClassifierCache:
    """``<key>.pt`` + ``<key>.json`` files in ``directory`` (made when first written)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, key: str) -> Path:
        """The tensor file of ``key``: pass it to clip_benchmark's ``--load_clfs``."""
        return self.directory / f"{key}.pt"

    def load(self, key: str, classes: int) -> torch.Tensor | None:
        """The ``[D, classes]`` classifier under ``key`` (CPU, float32); None when there is
        none, or (with a warning) when its files are damaged."""
        path, meta_path = self.path(key), self.directory / f"{key}.json"
        if not path.exists() and not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            weights = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
            if not isinstance(weights, torch.Tensor) or weights.dtype != torch.float32:
                raise ValueError("not a float32 tensor")
            if weights.ndim != 2 or weights.shape[1] != classes:
                raise ValueError(f"shape {tuple(weights.shape)}, expected [D, {classes}]")
            if _tensor_hash(weights) != meta["tensor_hash"]:
                raise ValueError("its tensor does not match the hash written with it")
        except Exception as err:  # any damage (a bad zip, JSON, hash, shape) means rebuild
            logger.warning(
                "zero-shot classifier cache entry %s is damaged (%s: %s); rebuilding it",
                path,
                type(err).__name__,
                err,
            )
            return None
        return weights

    def store(self, key: str, weights: torch.Tensor, info: dict) -> Path:
        """Write ``weights`` ``[D, C]`` under ``key`` with ``info`` beside it, each file
        atomically (a reader sees the old entry, the new one, or a half that it rebuilds)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        weights = weights.detach().to("cpu", torch.float32).contiguous()
        meta = {**info, "shape": list(weights.shape), "tensor_hash": _tensor_hash(weights)}
        buffer = io.BytesIO()
        torch.save(weights, buffer)
        path = self.path(key)
        _write_atomic(path, buffer.getvalue())
        _write_atomic(self.directory / f"{key}.json", json.dumps(meta, indent=1).encode())
        return path


@dataclass
class Classifier:
    """A zero-shot classifier and where it came from."""

    weights: torch.Tensor  # [D, C] float32 on the evaluation device
    key: str  # its cache key ("" when no cache is used)
    path: Path | None  # its cache file (clip_benchmark's --load_clfs), None without a cache
    from_cache: bool
    seconds: float


def zero_shot_classifier(
    model: nn.Module,
    tokenizer_name: str,
    context_length: int,
    classnames: Sequence[str],
    prompts: Sequence[Sequence[str]],
    device: torch.device | str,
    cache: ClassifierCache | None,
    progress: bool = False,
) -> Classifier:
    """The classifier of ``prompts`` (per class of ``classnames``) by ``model``'s text tower:
    from ``cache`` when it holds it, else built (``progress``: with a bar) and stored there.

    The cache is used only when the text tower is frozen (no parameter requires grad): a tower
    that trains gives a new classifier at every evaluation, and keeping them would only fill
    the disk. Set ``requires_grad_(False)`` on a model that is only evaluated.
    """
    start = time.perf_counter()
    tower = text_tower(model)
    if any(t.requires_grad for t in tower.values()):
        cache = None
    key = ""  # only a cached classifier needs one: hashing the tower costs a pass over it
    if cache is not None:
        digest = tower_digest(tower)
        key = classifier_key(digest, tokenizer_name, context_length, classnames, prompts)
        weights = cache.load(key, len(classnames))
        if weights is not None:
            logger.info("zero-shot classifier from the cache: %s", cache.path(key))
            return Classifier(
                weights.to(device), key, cache.path(key), True, time.perf_counter() - start
            )
    weights = build_classifier(model, tokenizer_name, context_length, prompts, device, progress)
    path = None
    if cache is not None:
        info = {
            "tokenizer": tokenizer_name,
            "context_length": context_length,
            "classnames": list(classnames),
            "prompts_per_class": sorted({len(p) for p in prompts}),
            "first_prompts": list(prompts[0][:3]) if prompts else [],
            "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        try:
            path = cache.store(key, weights, info)
            logger.info("zero-shot classifier cached: %s", path)
        except OSError as err:  # a cache that cannot be written costs time, not the evaluation
            logger.warning(
                "could not cache the zero-shot classifier in %s: %s", cache.directory, err
            )
    return Classifier(weights, key, path, False, time.perf_counter() - start)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _tensor_hash(tensor: torch.Tensor) -> str:
    return hashlib.blake2b(_tensor_bytes(tensor), digest_size=16).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
