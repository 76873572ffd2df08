"""Writing webdataset shards: `ShardWriter` rolls over to a new tar every ``shard_size``
samples; each tar is written under a temporary name and renamed when complete, so a crashed
writer never leaves a truncated shard behind under a real name. `ClipBenchmarkWriter` writes a
labelled split in the layout clip_benchmark's ``wds/`` datasets read."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path


class ShardWriter:
    """Writes samples ``{ext: bytes}`` as ``<key>.<ext>`` members into
    ``directory/{prefix}-{index:06d}.tar``, ``shard_size`` samples per shard.

    Member metadata is fixed (mtime 0, uid 0, mode 0644) so equal inputs give equal bytes.
    ``name`` formats a shard's file name from ``prefix`` and ``index``.
    """

    def __init__(
        self,
        directory: str | Path,
        prefix: str = "shard",
        shard_size: int = 1000,
        name: str = "{prefix}-{index:06d}.tar",
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix, self.shard_size, self.name = prefix, shard_size, name
        self.paths: list[Path] = []
        self._tar: tarfile.TarFile | None = None
        self._in_shard = 0
        self.samples = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if "." in os.path.basename(key):
            raise ValueError(f"sample key {key!r} may not contain a dot")
        if self._tar is None or self._in_shard >= self.shard_size:
            self._roll()
        assert self._tar is not None
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            self._tar.addfile(info, io.BytesIO(data))
        self._in_shard += 1
        self.samples += 1

    def _roll(self) -> None:
        self._finish()
        path = self.directory / self.name.format(prefix=self.prefix, index=len(self.paths))
        self.paths.append(path)
        self._tar = tarfile.open(path.with_suffix(".tar.tmp"), "w")
        self._in_shard = 0

    def _finish(self) -> None:
        if self._tar is not None:
            self._tar.close()
            path = self.paths[-1]
            os.replace(path.with_suffix(".tar.tmp"), path)
            self._tar = None

    def close(self) -> list[Path]:
        """Finish the last shard; returns every shard written."""
        self._finish()
        return self.paths

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shard_pattern(paths: list[Path]) -> str:
    """A brace pattern for shards written by :class:`ShardWriter` (``dir/p-{000000..000003}.tar``)."""
    if not paths:
        raise ValueError("no shards")
    if len(paths) == 1:
        return str(paths[0])
    first, last = paths[0], paths[-1]
    prefix = first.name.rsplit("-", 1)[0]
    lo, hi = first.stem.rsplit("-", 1)[1], last.stem.rsplit("-", 1)[1]
    return str(first.parent / f"{prefix}-{{{lo}..{hi}}}.tar")


# clip_benchmark's wds/ classification layout (clip_benchmark.datasets.builder.build_wds_dataset)
CLIP_BENCHMARK_IMAGE_EXTS = ("webp", "png", "jpg", "jpeg")
CLASSNAMES_FILE = "classnames.txt"
# clip_benchmark eval's default --num_workers: its loader hands each worker whole shards, and a
# worker left without one fails the evaluation ("No samples found in dataset")
CLIP_BENCHMARK_WORKERS = 4
TEMPLATES_FILE = "zeroshot_classification_templates.txt"


class ClipBenchmarkWriter:
    """A labelled split as clip_benchmark reads it with ``--dataset wds/<name> --dataset_root
    ROOT``: ``ROOT/{split}/0.tar, 1.tar, ...`` (``<key>.<image ext>`` + ``<key>.cls``, the
    class index as text), ``ROOT/{split}/nshards.txt``, ``ROOT/classnames.txt`` (one a line)
    and ``ROOT/zeroshot_classification_templates.txt`` (one a line, ``{c}`` for the class).

    ``nshards.txt`` is written last (by :meth:`close`), so a conversion that died half-way is
    refused by clip_benchmark rather than read as a smaller split. clip_benchmark needs at
    least as many shards as it has loader workers (``--num_workers``, default 4). Templates may be given with
    ``{}`` (streamfit's and ``str.format``'s) or ``{c}`` (clip_benchmark's) placeholders.
    """

    def __init__(
        self,
        root: str | Path,
        classnames: list[str],
        templates: list[str],
        split: str = "test",
        shard_size: int = 1000,
    ) -> None:
        bad = [name for name in classnames if not name.strip() or "\n" in name]
        if bad:
            raise ValueError(f"class names must be non-empty single lines: {bad[:3]}")
        patterns = [clip_benchmark_template(t) for t in templates]
        if not patterns:
            raise ValueError("no zero-shot templates")
        self.root, self.classnames = Path(root), list(classnames)
        self.shards = ShardWriter(self.root / split, shard_size=shard_size, name="{index}.tar")
        (self.root / CLASSNAMES_FILE).write_text("\n".join(self.classnames) + "\n")
        (self.root / TEMPLATES_FILE).write_text("\n".join(patterns) + "\n")

    @property
    def samples(self) -> int:
        return self.shards.samples

    def write(self, key: str, image_ext: str, image: bytes, label: int) -> None:
        """One sample: encoded ``image`` bytes (``image_ext`` one of webp/png/jpg/jpeg, the
        formats clip_benchmark decodes) of class ``label``."""
        if image_ext not in CLIP_BENCHMARK_IMAGE_EXTS:
            raise ValueError(f"clip_benchmark reads {CLIP_BENCHMARK_IMAGE_EXTS}, not {image_ext}")
        if not 0 <= label < len(self.classnames):
            raise ValueError(f"label {label} outside the {len(self.classnames)} classes")
        self.shards.write(key, {image_ext: image, "cls": str(label).encode()})

    def close(self) -> list[Path]:
        """Finish the last shard and write ``nshards.txt``; returns the shards."""
        paths = self.shards.close()
        (self.shards.directory / "nshards.txt").write_text(f"{len(paths)}\n")
        return paths

    def __enter__(self) -> ClipBenchmarkWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:  # keep finished shards, but never claim an incomplete split
            self.shards.close()


def clip_benchmark_template(pattern: str) -> str:
    """A zero-shot template with clip_benchmark's ``{c}`` placeholder (from ``{}`` or ``{c}``)."""
    converted = pattern.replace("{}", "{c}")
    if "{c}" not in converted or "\n" in converted:
        raise ValueError(f"template {pattern!r} needs one line with a {{}} or {{c}} placeholder")
    return converted
