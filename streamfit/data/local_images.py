"""Images from local files, folders and webdataset ``.tar`` shards, decoded to fixed-size RGB
tensors: what the offline tools (fitting, sweeps) read. Bad files are skipped and counted."""

from __future__ import annotations

import io
import logging
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Refuse decompression bombs before decoding: a header claiming more pixels than this is a
# bad sample, not a reason to allocate gigabytes.
MAX_PIXELS = 64_000_000


class BadImage(ValueError):
    """An input that is not a usable image (the message says why)."""


def decode_rgb(data: bytes, size: int | None) -> torch.Tensor:
    """Encoded image bytes -> ``[size, size, 3]`` float32 in 0..1 on the CPU.

    Greyscale, palette and RGBA images are converted to RGB (alpha dropped, as over black).
    The shorter side is resized to ``size`` (bicubic, with antialiasing) and the centre cropped;
    ``size=None`` keeps the original size. Raises :class:`BadImage` for anything undecodable.
    """
    if not data:
        raise BadImage("empty file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise BadImage(f"{width}x{height} exceeds the {MAX_PIXELS} pixel limit")
            img.load()
            rgb = img.convert("RGB")
    except BadImage:
        raise
    except Exception as err:  # PIL raises many types for corrupt data
        raise BadImage(f"cannot decode: {err}") from None
    if size is not None:
        rgb = resize_center_crop(rgb, size)
    return torch.from_numpy(np.array(rgb, dtype=np.float32) / 255.0)


def resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size``, then crop the central ``size x size`` square."""
    width, height = img.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return img.crop((left, top, left + size, top + size))


@dataclass
class ImageSource:
    """Iterates ``(key, encoded bytes)`` over files, folders and ``.tar`` shards in order."""

    inputs: list[Path]
    skipped: Counter = field(default_factory=Counter)

    def __iter__(self) -> Iterator[tuple[str, bytes]]:
        for path in self.inputs:
            if path.is_dir():
                for child in sorted(path.rglob("*")):
                    if child.suffix.lower() in IMAGE_SUFFIXES:
                        yield str(child.relative_to(path).with_suffix("")), child.read_bytes()
                    elif child.suffix == ".tar":
                        yield from self._tar(child)
            elif path.suffix == ".tar":
                yield from self._tar(path)
            elif path.is_file():
                yield path.stem, path.read_bytes()
            else:
                raise FileNotFoundError(f"no such image, folder or shard: {path}")

    def _tar(self, path: Path) -> Iterator[tuple[str, bytes]]:
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    name = Path(member.name)
                    if member.isfile() and name.suffix.lower() in IMAGE_SUFFIXES:
                        key = f"{path.stem}/{name.with_suffix('')}"
                        yield key, tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as err:
            log.warning("skipping the rest of shard %s: %s", path, err)
            self.skipped["truncated shard"] += 1


def iter_decoded(
    source: Iterable[tuple[str, bytes]], size: int | None, skipped: Counter
) -> Iterator[tuple[str, torch.Tensor]]:
    """Decode each ``(key, bytes)``; undecodable ones are logged, counted in ``skipped``, dropped."""
    for key, data in source:
        try:
            yield key, decode_rgb(data, size)
        except BadImage as err:
            log.warning("skipping %s: %s", key, err)
            skipped[str(err).split(":")[0]] += 1
