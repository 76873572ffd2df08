"""Reading DataComp / img2dataset webdataset shards: shard lists, tar streaming grouped into
samples, and :class:`ShardReader`, the resumable, rank-aware, shuffling source node.

A shard is an uncompressed tar whose members ``<key>.<ext>`` are grouped into samples by
``key`` (consecutive members, webdataset's convention); ``ext`` is everything after the first
dot of the file name, lower-cased (``jpg``, ``txt``, ``json``, ``splats``, ...).

Resuming: the reader's state names *where* things are, never the things themselves: the
epoch, the position in this rank's shard order, the byte offset of the next unread sample,
and the (shard, offset) of each sample waiting in the shuffle buffer. Restoring seeks to those
offsets (local files) or skips bytes in the stream (URLs), so nothing already yielded is read,
decoded or fitted again.
"""

from __future__ import annotations

import glob
import hashlib
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from braceexpand import braceexpand
from torchdata.nodes import BaseNode

from streamfit.data.schedule import NodeSchedule, RankPlan, global_plan
from streamfit.data.stats import LoaderStats

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXT = "txt"
JSON_EXT = "json"
SPLATS_EXT = "splats"

_SKIP_CHUNK = 1 << 20


@dataclass
class RawSample:
    """One sample as stored: ``members`` maps extension -> bytes. ``position`` is
    ``(shard index in this rank's order, byte offset of its first tar header)``; ``end`` is
    the offset where the next sample's headers start."""

    key: str
    shard: str
    position: tuple[int, int]
    members: dict[str, bytes]
    end: int


def expand_shards(pattern: str) -> list[str]:
    """Shard paths/URLs of a pattern: ``::``-separated parts, each brace-expanded; local parts
    with ``*``/``?`` are globbed (sorted). Raises ``FileNotFoundError`` when nothing matches."""
    shards: list[str] = []
    for part in filter(None, (p.strip() for p in pattern.split("::"))):
        for item in braceexpand(part):
            if is_local(item) and any(c in item for c in "*?["):
                shards.extend(sorted(glob.glob(_local_path(item))))
            else:
                shards.append(item)
    if not shards:
        raise FileNotFoundError(f"no shards match {pattern!r}")
    return shards


def is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:") or url.startswith("file://")


def _local_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def open_shard(url: str, offset: int = 0) -> BinaryIO:
    """A binary stream of ``url`` positioned at byte ``offset`` (seek for local files; for
    URLs webdataset's ``gopen`` stream, with the first ``offset`` bytes skipped)."""
    if is_local(url):
        stream: BinaryIO = open(_local_path(url), "rb")  # noqa: SIM115 - caller closes
        stream.seek(offset)
        return stream
    from webdataset.gopen import gopen

    stream = gopen(url, "rb")
    remaining = offset
    while remaining > 0:
        chunk = stream.read(min(remaining, _SKIP_CHUNK))
        if not chunk:
            raise EOFError(f"{url}: ended before offset {offset}")
        remaining -= len(chunk)
    return stream


def split_member_name(name: str) -> tuple[str, str]:
    """``dir/abc.seg.png`` -> (``dir/abc``, ``seg.png``), webdataset's key/extension split."""
    directory, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (os.path.join(directory, stem) if directory else stem), ext.lower() if dot else ""


class TruncatedShard(Exception):
    """A shard ended inside a tar header or member; ``key`` is the sample being read."""

    def __init__(self, shard: str, key: str, detail: str) -> None:
        super().__init__(f"{shard}: truncated at sample {key!r}: {detail}")
        self.shard, self.key, self.detail = shard, key, detail


def iter_tar_samples(
    stream: BinaryIO, shard: str, shard_index: int, base_offset: int = 0, limit: int | None = None
) -> Iterator[RawSample]:
    """Samples of a tar stream that starts at ``base_offset`` of the shard, in file order.

    Stops after ``limit`` samples when given. A tar cut short raises :class:`TruncatedShard`
    after the last complete sample; the incomplete one is never yielded. (A stream that cannot
    seek is trusted to its last header: a cut between two members goes unnoticed there.)
    """
    key: str | None = None
    members: dict[str, bytes] = {}
    start = base_offset
    count = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                member_key, ext = split_member_name(info.name)
                if member_key != key:
                    if key is not None:
                        end = base_offset + info.offset
                        yield RawSample(key, shard, (shard_index, start), members, end)
                        count += 1
                        if limit is not None and count >= limit:
                            return
                    key, members, start = member_key, {}, base_offset + info.offset
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                if len(data) != info.size:
                    raise tarfile.ReadError(
                        f"member {info.name} has {len(data)} of {info.size} bytes"
                    )
                members[ext] = data
        end = base_offset + tar.offset
        seekable = getattr(stream, "seekable", lambda: False)()
        if key is not None and seekable and not _end_marker_at(stream, end):
            # tarfile ends quietly when a shard is cut inside or just before a header, so
            # the last sample may be missing members: without the marker it is not trusted
            raise tarfile.ReadError("no end-of-archive marker")
    except (tarfile.ReadError, EOFError, OSError) as err:
        raise TruncatedShard(shard, key or "<none>", str(err)) from err
    if key is not None:
        yield RawSample(key, shard, (shard_index, start), members, end)


def _end_marker_at(stream: BinaryIO, offset: int) -> bool:
    """Whether a zero block (a tar's end-of-archive marker) starts at ``offset``."""
    stream.seek(offset)
    block = stream.read(tarfile.BLOCKSIZE)
    return len(block) == tarfile.BLOCKSIZE and not block.strip(b"\0")


def read_sample_at(shard: str, shard_index: int, offset: int) -> RawSample:
    """The one sample whose first tar header is at ``offset`` (to refill a shuffle buffer)."""
    with open_shard(shard, offset) as stream:
        for sample in iter_tar_samples(stream, shard, shard_index, offset, limit=1):
            return sample
    raise TruncatedShard(shard, "<none>", f"no sample at offset {offset}")


def _draw(n: int, *words: int) -> int:
    """A deterministic pseudo-random index in ``[0, n)`` from integer words: stateless, so the
    reader's state needs no generator state."""
    digest = hashlib.blake2b(repr(words).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n


class ShardReader(BaseNode[RawSample]):
    """Source node: this rank's samples of one epoch, shuffled, resumable.

    Epoch ``e`` shuffles the shard list with ``seed`` and ``e`` (same order on every rank),
    splits it between ranks (``split="shard"``: shards ``rank::world_size``; ``"sample"``:
    every rank reads every shard and keeps samples ``rank::world_size``), then shuffles samples
    within a buffer of ``shuffle_buffer``. With a ``node_schedule`` (node-affine shards, see
    :mod:`streamfit.data.schedule`) the schedule decides instead which shards and samples the
    rank reads. Across ranks every sample comes exactly once per epoch. Samples missing an image (or splats) or a caption, or with a 0-byte image, and the
    rest of a truncated shard, are skipped and counted in ``stats``.

    ``reset(None)`` starts the next epoch (the first is ``epoch``) after a finished one, and
    restarts the current epoch otherwise; :meth:`set_epoch` picks one explicitly.
    """

    def __init__(
        self,
        shards: list[str],
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        shuffle_buffer: int = 1000,
        shuffle_shards: bool = True,
        split: str = "shard",
        stats: LoaderStats | None = None,
        node_schedule: NodeSchedule | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        if node_schedule is None and split == "shard" and len(shards) < world_size:
            raise ValueError(
                f"{len(shards)} shards cannot be split between {world_size} ranks; "
                "use split='sample' or more shards"
            )
        self.shards = list(shards)
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle_buffer, self.shuffle_shards, self.split = shuffle_buffer, shuffle_shards, split
        self.stats = stats or LoaderStats()
        self.node_schedule = node_schedule
        self._plan = RankPlan([])
        self.epoch = epoch
        self._finished = False
        self._stream: Iterator[RawSample] | None = None
        self._buffer: list[RawSample] = []

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``reset(None)`` start ``epoch``."""
        self.epoch = epoch
        self._finished = False

    def epoch_plan(self, epoch: int) -> RankPlan:
        """This rank's shards of ``epoch`` in reading order, and which of their samples it keeps."""
        if self.node_schedule is not None:
            return self.node_schedule.plan(self.rank, epoch)
        return global_plan(
            self.shards,
            self.rank,
            self.world_size,
            self.seed,
            epoch,
            self.shuffle_shards,
            self.split,
        )

    def epoch_shards(self, epoch: int) -> list[str]:
        """This rank's shards of ``epoch``, in reading order."""
        return self.epoch_plan(epoch).shards

    # ------------------------------------------------------------------ BaseNode contract
    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if initial_state is None:
            if self._finished:
                self.epoch += 1
            state = {
                "epoch": self.epoch,
                "shard": 0,
                "offset": 0,
                "seen": 0,
                "yielded": 0,
                "buffer": [],
            }
        else:
            state = initial_state
        self.epoch = int(state["epoch"])
        self._finished = False
        self._plan = self.epoch_plan(self.epoch)
        self._order = self._plan.shards
        if state.get("plan", self._plan.digest) != self._plan.digest:
            raise ValueError(
                f"rank {self.rank}: the loader state was saved under another shard schedule "
                f"for epoch {self.epoch} (node layout, data.schedule, seed or shard list "
                "changed); resuming it would repeat or skip samples"
            )
        self._shard, self._offset = int(state["shard"]), int(state["offset"])
        self._seen, self._yielded = int(state["seen"]), int(state["yielded"])
        self._stream = None
        self._buffer = [read_sample_at(self._order[s], s, o) for s, o in state["buffer"]]
        self.stats.begin_epoch(self.epoch)

    def get_state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "shard": self._shard,
            "offset": self._offset,
            "seen": self._seen,
            "yielded": self._yielded,
            "buffer": [list(s.position) for s in self._buffer],
            "plan": self._plan.digest,
        }

    def next(self) -> RawSample:
        while len(self._buffer) < self.shuffle_buffer:
            sample = self._read_one()
            if sample is None:
                break
            self._buffer.append(sample)
        if not self._buffer:
            self._finished = True
            raise StopIteration
        j = _draw(len(self._buffer), self.seed, self.epoch, self.rank, self._yielded)
        # swap-remove: O(1), and the buffer order stays a pure function of the state
        self._buffer[j], self._buffer[-1] = self._buffer[-1], self._buffer[j]
        self._yielded += 1
        return self._buffer.pop()

    # ------------------------------------------------------------------ reading
    def _read_one(self) -> RawSample | None:
        """The next valid sample of this rank in file order, or None at the end of the epoch."""
        while self._shard < len(self._order):
            if self._stream is None:
                shard = self._order[self._shard]
                try:
                    handle = open_shard(shard, self._offset)
                except (OSError, EOFError) as err:
                    if self._owns(self._shard):
                        self.stats.skip("unreadable_shard", shard, "<shard>", str(err))
                    self._next_shard()
                    continue
                self._stream = self._samples(handle, shard)
            sample = next(self._stream, None)
            if sample is None:
                self._next_shard()
                continue
            return sample
        return None

    def _samples(self, handle: BinaryIO, shard: str) -> Iterator[RawSample]:
        with handle:
            try:
                for sample in iter_tar_samples(handle, shard, self._shard, self._offset):
                    # the offset advances past a sample before it is judged, so a resumed
                    # reader neither re-reads nor re-counts it
                    self._offset = sample.end
                    self._seen += 1
                    if (self._seen - 1) % self._plan.stride != self._plan.slot:
                        continue
                    reason = invalid_reason(sample)
                    if reason:
                        self.stats.skip(reason, shard, sample.key)
                        continue
                    yield sample
            except TruncatedShard as err:
                if self._owns(self._seen):
                    self.stats.skip("truncated_shard", shard, err.key, err.detail)

    def _owns(self, index: int) -> bool:
        """Whether this rank reports a problem of a shard several ranks read (a sample split),
        so that skip counts summed over ranks count each problem once."""
        return index % self._plan.stride == self._plan.slot

    def _next_shard(self) -> None:
        self._shard += 1
        self._offset = 0
        self._stream = None


def invalid_reason(sample: RawSample) -> str:
    """Why a sample cannot be used, judged without decoding ('' when it can)."""
    if SPLATS_EXT not in sample.members:
        image_ext = next((e for e in IMAGE_EXTS if e in sample.members), None)
        if image_ext is None:
            return "no_image"
        if not sample.members[image_ext]:
            return "empty_image"
    caption = sample.members.get(CAPTION_EXT)
    if caption is None or not caption.strip():
        return "no_caption"
    return ""
