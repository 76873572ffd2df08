"""Images from local files, folders and webdataset ``.tar`` shards, decoded to fixed-size RGB
tensors: what the offline tools (fitting, sweeps) read. Bad files are skipped and counted."""

from __future__ import annotations

import itertools
import logging
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from streamfit.data.config import DataConfig
from streamfit.data.decode import ImageTooLarge, decode_image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_PIXELS = DataConfig.max_image_pixels


class BadImage(ValueError):
    """An input that is not a usable image (the message says why)."""


def decode_rgb(data: bytes, size: int | None) -> torch.Tensor:
    """Encoded image bytes -> ``[size, size, 3]`` float32 in 0..1 on the CPU, decoded as the
    data graph decodes (:func:`streamfit.data.decode.decode_image`); ``size=None`` keeps the
    original size. Raises :class:`BadImage` for anything undecodable."""
    if not data:
        raise BadImage("empty file")
    try:
        array = decode_image(data, size, MAX_PIXELS)
    except (ImageTooLarge, Image.DecompressionBombError) as err:
        raise BadImage(f"too large: {err}") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise BadImage(f"cannot decode: {err}") from None
    return torch.from_numpy(array.astype(np.float32) / 255.0)


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
                        key = str(child.relative_to(path).with_suffix(""))
                        yield from self._file(key, child)
                    elif child.suffix == ".tar":
                        yield from self._tar(child)
            elif path.suffix == ".tar":
                yield from self._tar(path)
            elif path.exists():
                yield from self._file(path.stem, path)
            else:
                raise FileNotFoundError(f"no such image, folder or shard: {path}")

    def _file(self, key: str, path: Path) -> Iterator[tuple[str, bytes]]:
        try:
            data = path.read_bytes()
        except OSError as err:  # unreadable, a broken link, a folder named like an image
            log.warning("skipping %s: %s", path, err)
            self.skipped["unreadable"] += 1
            return
        yield key, data

    def _tar(self, path: Path) -> Iterator[tuple[str, bytes]]:
        opened = False
        try:
            with tarfile.open(path) as tar:
                opened = True
                for member in tar:
                    name = Path(member.name)
                    if member.isfile() and name.suffix.lower() in IMAGE_SUFFIXES:
                        key = f"{path.stem}/{name.with_suffix('')}"
                        yield key, tar.extractfile(member).read()
        except (tarfile.TarError, OSError, EOFError) as err:
            if opened:
                log.warning("skipping the rest of shard %s: %s", path, err)
                self.skipped["truncated shard"] += 1
            else:
                log.warning("skipping %s: not a tar (%s)", path, err)
                self.skipped["not a tar"] += 1


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


def load_images(
    inputs: list[Path], count: int, size: int, skipped: Counter | None = None
) -> torch.Tensor:
    """The first ``count`` decodable images of ``inputs`` (files, folders, shards), resized
    and centre-cropped: ``[n, size, size, 3]`` float32 in 0..1 on the CPU; ``n`` is 0 when
    nothing decodes. What is skipped is logged and counted in ``skipped`` by reason."""
    source = ImageSource(list(inputs), Counter() if skipped is None else skipped)
    images = [img for _, img in itertools.islice(iter_decoded(source, size, source.skipped), count)]
    return torch.stack(images) if images else torch.empty(0, size, size, 3)
