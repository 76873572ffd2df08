"""Labelled images for zero-shot evaluation: an ImageFolder directory (classes = sorted
sub-directories, ImageNet's synset order) or webdataset shards whose samples carry a ``.cls``
or a ``.json`` ``label``. Images are decoded exactly as the training loader decodes them;
for GS models their splats come from the training run's cache, fitted (and cached) on a miss
through :class:`streamfit.data.fetch.SplatSource`, the training loader's own path: a fit with
non-finite splats is left out, counted and logged, and never cached.

Each rank reads every ``world_size``-th sample, so a multi-rank evaluation covers the split
once; the caller sums the per-class tallies over ranks.

:func:`write_clip_benchmark_split` copies a labelled split into clip_benchmark's ``wds/``
layout, so clip_benchmark evaluates the very images this module reads.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from streamfit.data import DataConfig
from streamfit.data.decode import Decoder, cache_id
from streamfit.data.fetch import SplatSource
from streamfit.data.local_images import IMAGE_SUFFIXES
from streamfit.data.shards import (
    IMAGE_EXTS,
    TruncatedShard,
    expand_shards,
    iter_tar_samples,
    open_shard,
    parse_meta,
)
from streamfit.data.writer import CLIP_BENCHMARK_WORKERS, ClipBenchmarkWriter
from streamfit.fit import FitConfig, FitGraphs, get_backend
from streamfit.splats import Splats

logger = logging.getLogger("streamfit.eval")


@dataclass
class LabelledBatch:
    """``labels [B]`` int64 (CPU); ``rgb [B, 3, S, S]`` float32 0..1 on the device, not
    mean/std normalised; ``splats`` (only when fitting was asked for) on the device."""

    keys: list[str]
    labels: torch.Tensor
    rgb: torch.Tensor
    splats: Splats | None
    hits: int = 0
    fitted: int = 0
    failed: int = 0  # samples left out: their fit gave non-finite splats (never cached)


def iter_labelled(
    source: str, rank: int = 0, world_size: int = 1
) -> Iterator[tuple[str, bytes, int]]:
    """``(key, encoded image bytes, label)`` of this rank's share of ``source`` (a directory
    is an ImageFolder; anything else a shard pattern). Samples without an image or a label are
    skipped with a warning."""
    index = -1
    for key, data, label in _iter_all(source):
        index += 1
        if index % world_size == rank:
            yield key, data, label


def _iter_all(source: str) -> Iterator[tuple[str, bytes, int]]:
    root = Path(source)
    if root.is_dir():
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            raise FileNotFoundError(f"{source} has no class sub-directories (ImageFolder layout)")
        for label, name in enumerate(classes):
            for path in sorted((root / name).iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    yield f"{name}/{path.name}", path.read_bytes(), label
        return
    for i, shard in enumerate(expand_shards(source)):
        try:
            with open_shard(shard) as stream:
                for sample in iter_tar_samples(stream, shard, i):
                    image_ext = next((e for e in IMAGE_EXTS if e in sample.members), None)
                    label = _label(sample.members)
                    if image_ext is None or label is None:
                        logger.warning(
                            "eval: sample %s in %s has no image or label", sample.key, shard
                        )
                        continue
                    yield sample.key, sample.members[image_ext], label
        except (OSError, EOFError, TruncatedShard) as err:
            logger.warning("eval: skipped the rest of shard %s (%s)", shard, err)


def _label(members: dict[str, bytes]) -> int | None:
    """The sample's class index, or None when it has none that reads as an integer."""
    try:
        if "cls" in members:
            return int(members["cls"].decode().strip())
        if "json" in members:
            meta = parse_meta(members["json"])
            if "label" in meta:
                return int(meta["label"])
    except (ValueError, TypeError):
        pass
    return None


def default_fitter(
    fit_cfg: FitConfig, data_cfg: DataConfig, device: torch.device | str
) -> FitGraphs:
    """Fits as the training loader makes them: ``fit_cfg``'s backend on ``device``, as CUDA
    graphs unless ``data_cfg.fit_graphs`` is off."""
    backend = get_backend(fit_cfg.backend, str(device))
    return FitGraphs(fit_cfg, backend, enabled=data_cfg.fit_graphs)


class LabelledLoader:
    """Batches of :class:`LabelledBatch` from ``source``.

    ``fit_cfg``: fit splats (None: RGB only), by ``fitter`` (default: one of ``fit_cfg``'s
    backend on ``device``; a caller that evaluates again passes its own, so CUDA graphs are
    captured once). The cache, when ``data_cfg.cache_dir`` is set, is the training loader's:
    same keys (content hash or sample key) and settings.
    """

    def __init__(
        self,
        source: str,
        data_cfg: DataConfig,
        batch_size: int,
        device: torch.device,
        fit_cfg: FitConfig | None = None,
        fitter: FitGraphs | None = None,
        rank: int = 0,
        world_size: int = 1,
        max_samples: int = 0,
    ) -> None:
        self.source, self.data_cfg = source, data_cfg
        self.batch_size, self.device = batch_size, device
        self.rank, self.world_size, self.max_samples = rank, world_size, max_samples
        self.decoder = Decoder(data_cfg.image_size, data_cfg.max_image_pixels, need_image=True)
        self.splat_source = None
        if fit_cfg is not None:
            fitter = fitter or default_fitter(fit_cfg, data_cfg, device)
            self.splat_source = SplatSource.of(data_cfg, fit_cfg, fitter)

    def __iter__(self) -> Iterator[LabelledBatch]:
        pending: list[tuple[str, bytes, int]] = []
        for n, item in enumerate(iter_labelled(self.source, self.rank, self.world_size)):
            if self.max_samples and n * self.world_size + self.rank >= self.max_samples:
                break
            pending.append(item)
            if len(pending) == self.batch_size:
                yield self._batch(pending)
                pending = []
        if pending:
            yield self._batch(pending)

    def _batch(self, items: list[tuple[str, bytes, int]]) -> LabelledBatch:
        images = np.stack([self.decoder.decode_image(data) for _, data, _ in items])
        keep = list(range(len(items)))
        splats, hits, fitted = None, 0, 0
        if self.splat_source is not None:
            # the training loader's cache, under the id its decoder gives the sample
            ids = [cache_id(key, data, self.data_cfg.cache_key) for key, data, _ in items]
            got = self.splat_source.fetch(ids, lambda i: images[i])
            for i in got.failed:
                logger.warning("eval: skipped %s: its fit gave non-finite splats", items[i][0])
            keep, hits, fitted = got.kept, got.hits, len(got.fitted)
            splats = got.splats.to(self.device)
        rgb = torch.from_numpy(images[keep]).to(self.device).permute(0, 3, 1, 2).float().div_(255)
        return LabelledBatch(
            keys=[items[i][0] for i in keep],
            labels=torch.tensor([items[i][2] for i in keep], dtype=torch.long),
            rgb=rgb,
            splats=splats,
            hits=hits,
            fitted=fitted,
            failed=len(items) - len(keep),
        )


# PIL's format name -> the member extension clip_benchmark decodes
_CLIP_BENCHMARK_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def write_clip_benchmark_split(
    source: str,
    root: str | Path,
    classnames: Sequence[str],
    templates: Sequence[Callable[[str], str]],
    split: str = "test",
    shard_size: int = 1000,
) -> dict:
    """Copy the labelled split ``source`` (what :func:`iter_labelled` reads) into
    clip_benchmark's layout under ``root`` (:class:`~streamfit.data.writer.ClipBenchmarkWriter`).

    JPEG, PNG and WebP images are copied byte for byte; other formats (BMP, GIF, TIFF in an
    ImageFolder) are re-encoded as PNG, losslessly, and counted as ``reencoded``. Images that
    do not open and labels outside ``classnames`` are skipped and counted. ``templates`` are
    written as their patterns (each applied to ``{c}``). Returns a summary: ``root``,
    ``split``, ``samples``, ``shards``, ``classes``, ``templates``, ``reencoded``, ``skipped``.
    """
    patterns = [template("{c}") for template in templates]
    skipped: Counter[str] = Counter()
    reencoded = 0
    with ClipBenchmarkWriter(root, list(classnames), patterns, split, shard_size) as writer:
        for key, data, label in tqdm(iter_labelled(source), desc="clip_benchmark", unit="image"):
            if not 0 <= label < len(classnames):
                skipped["label_out_of_range"] += 1
                logger.warning(
                    "skipped %s: label %d outside %d classes", key, label, len(classnames)
                )
                continue
            try:
                with Image.open(io.BytesIO(data)) as im:
                    ext = _CLIP_BENCHMARK_FORMATS.get(im.format or "")
                    if ext is None:
                        png = io.BytesIO()
                        im.save(png, format="PNG")
                        data, ext = png.getvalue(), "png"
                        reencoded += 1
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                skipped["bad_image"] += 1
                logger.warning("skipped %s: %s", key, err)
                continue
            writer.write(f"{split}{writer.samples:09d}", ext, data, label)
    shards = len(writer.shards.paths)
    if shards < CLIP_BENCHMARK_WORKERS:
        logger.warning(
            "%d shard(s): run clip_benchmark with --num_workers %d or fewer, or write smaller "
            "shards (--shard-size)",
            shards,
            shards,
        )
    return {
        "root": str(root),
        "split": split,
        "samples": writer.samples,
        "shards": shards,
        "classes": len(classnames),
        "templates": len(patterns),
        "reencoded": reencoded,
        "skipped": dict(skipped),
    }
