"""Writing webdataset shards: `ShardWriter` rolls over to a new tar every ``shard_size``
samples; each tar is written under a temporary name and renamed when complete, so a crashed
writer never leaves a truncated shard behind under a real name."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path


class ShardWriter:
    """Writes samples ``{ext: bytes}`` as ``<key>.<ext>`` members into
    ``directory/{prefix}-{index:06d}.tar``, ``shard_size`` samples per shard.

    Member metadata is fixed (mtime 0, uid 0, mode 0644) so equal inputs give equal bytes.
    """

    def __init__(
        self, directory: str | Path, prefix: str = "shard", shard_size: int = 1000
    ) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix, self.shard_size = prefix, shard_size
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
        path = self.directory / f"{self.prefix}-{len(self.paths):06d}.tar"
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
