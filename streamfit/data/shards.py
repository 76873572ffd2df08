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
import json
import logging
import os
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from braceexpand import UnbalancedBracesError, braceexpand
from torchdata.nodes import BaseNode

from streamfit.data.schedule import NodeSchedule, RankPlan, global_plan
from streamfit.data.stats import LoaderStats

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXT = "txt"
JSON_EXT = "json"
SPLATS_EXT = "splats"
# Files img2dataset writes beside its shards; a glob over its output folder skips them.
SIDE_FILE_SUFFIXES = (".parquet", "_stats.json")
# A member above this is not read into memory (its sample is skipped as ``too_large``): far
# above any web image, and a corrupt size field must not cost the reader gigabytes.
MAX_MEMBER_BYTES = 256 * 1024**2

logger = logging.getLogger("streamfit.data")

_SKIP_CHUNK = 1 << 20


@dataclass
class RawSample:
    """One sample as stored: ``members`` maps extension -> bytes. ``position`` is
    ``(shard index in this rank's order, byte offset of its first tar header)``; ``end`` is
    the offset where the next sample's headers start. ``copies`` > 1: some member appeared
    that many times under this key (samples merged by a repeated key; never used).
    ``unread``: ext -> size of members above ``MAX_MEMBER_BYTES``, left unread."""

    key: str
    shard: str
    position: tuple[int, int]
    members: dict[str, bytes]
    end: int
    copies: int = 1
    unread: dict[str, int] = field(default_factory=dict)


def _pattern_parts(pattern: str) -> list[str]:
    """The ``::``-separated parts of a pattern; raises ``ValueError`` (one line) for a part
    whose braces do not balance."""
    parts = [p for p in (p.strip() for p in pattern.split("::")) if p]
    for part in parts:
        try:
            braceexpand(part)  # parses eagerly, expands lazily
        except UnbalancedBracesError:
            raise ValueError(f"shard pattern {part!r}: unbalanced braces") from None
    return parts


def check_pattern(pattern: str) -> None:
    """Raise ``ValueError`` for a malformed shard pattern, before anything is read."""
    _pattern_parts(pattern)


def expand_shards(pattern: str) -> list[str]:
    """Shard paths/URLs of a pattern: ``::``-separated parts, each brace-expanded; local parts
    with ``*``/``?`` are globbed (sorted), leaving out img2dataset's side files (``.parquet``,
    ``_stats.json``). Raises ``FileNotFoundError`` when nothing matches and ``ValueError`` for
    unbalanced braces. Listed files that turn out missing or not tars are skipped (counted)
    by the reader and by :func:`count_shard`, not here."""
    shards: list[str] = []
    side_files = 0
    for part in _pattern_parts(pattern):
        for item in braceexpand(part):
            if is_local(item) and any(c in item for c in "*?["):
                matched = sorted(glob.glob(_local_path(item)))
                kept = [m for m in matched if not m.endswith(SIDE_FILE_SUFFIXES)]
                side_files += len(matched) - len(kept)
                shards.extend(kept)
            else:
                shards.append(item)
    if side_files:
        logger.info(
            "%s: left out %d img2dataset side files (.parquet, _stats.json)", pattern, side_files
        )
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
    """A shard ended inside a tar header or member (``reason`` ``truncated_shard``; ``key`` is
    the sample being read), or is no tar at all (``not_a_tar``, ``empty_shard``)."""

    def __init__(self, shard: str, key: str, detail: str, reason: str = "truncated_shard") -> None:
        super().__init__(f"{shard}: {reason} at sample {key!r}: {detail}")
        self.shard, self.key, self.detail, self.reason = shard, key, detail, reason


def open_problem(err: Exception) -> str:
    """The skip reason of a shard that cannot be opened."""
    if isinstance(err, FileNotFoundError):
        return "missing_shard"
    if isinstance(err, IsADirectoryError):
        return "not_a_tar"
    return "unreadable_shard"


def _first_block_problem(block: bytes) -> tuple[str, str]:
    """``(reason, detail)`` when ``block``, the first 512 bytes of a shard, cannot start a tar
    archive (an empty tar, all zeros, passes); ``("", "")`` when it can."""
    if not block:
        return "empty_shard", "0 bytes"
    if len(block) < tarfile.BLOCKSIZE:
        if block[257:262] == b"ustar":  # a tar cut inside its first header
            return "truncated_shard", f"{len(block)} bytes, inside the first tar header"
        return "not_a_tar", f"{len(block)} bytes, not a tar archive"
    if not block.strip(b"\0"):
        return "", ""
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as err:
        return "not_a_tar", f"not a tar archive ({err or type(err).__name__})"
    return "", ""


def iter_tar_samples(
    stream: BinaryIO, shard: str, shard_index: int, base_offset: int = 0, limit: int | None = None
) -> Iterator[RawSample]:
    """Samples of a tar stream that starts at ``base_offset`` of the shard, in file order.

    Stops after ``limit`` samples when given. A tar cut short raises :class:`TruncatedShard`
    after the last complete sample; the incomplete one is never yielded. (A stream that cannot
    seek is trusted to its last header: a cut between two members goes unnoticed there.) A
    stream that is no tar raises it with reason ``not_a_tar`` (or ``empty_shard``) at once.
    """
    key: str | None = None
    members: dict[str, bytes] = {}
    unread: dict[str, int] = {}
    copies: Counter[str] = Counter()
    start = base_offset
    count = 0
    seekable = getattr(stream, "seekable", lambda: False)()
    if base_offset == 0 and seekable:
        reason, detail = _first_block_problem(stream.read(tarfile.BLOCKSIZE))
        stream.seek(0)
        if reason:
            raise TruncatedShard(shard, "<none>", detail, reason)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                member_key, ext = split_member_name(info.name)
                if member_key != key:
                    if key is not None:
                        end = base_offset + info.offset
                        yield RawSample(
                            key,
                            shard,
                            (shard_index, start),
                            members,
                            end,
                            max(copies.values()),
                            unread,
                        )
                        count += 1
                        if limit is not None and count >= limit:
                            return
                    key, members, start = member_key, {}, base_offset + info.offset
                    copies, unread = Counter(), {}
                copies[ext] += 1
                if info.size > MAX_MEMBER_BYTES:
                    unread[ext] = info.size  # tarfile skips its bytes without keeping them
                    continue
                data = tar.extractfile(info).read()  # type: ignore[union-attr]
                if len(data) != info.size:
                    raise tarfile.ReadError(
                        f"member {info.name} has {len(data)} of {info.size} bytes"
                    )
                members[ext] = data
        end = base_offset + tar.offset
        if key is not None and seekable and not _end_marker_at(stream, end):
            # tarfile ends quietly when a shard is cut inside or just before a header, so
            # the last sample may be missing members: without the marker it is not trusted
            raise tarfile.ReadError("no end-of-archive marker")
    except (tarfile.ReadError, EOFError, OSError) as err:
        if key is None and base_offset == 0 and not seekable:
            # nothing parsed: the stream is no tar (seekable ones were checked above)
            reason = "empty_shard" if str(err) == "empty file" else "not_a_tar"
            raise TruncatedShard(shard, "<none>", str(err), reason) from err
        raise TruncatedShard(shard, key or "<none>", str(err)) from err
    if key is not None:
        yield RawSample(
            key, shard, (shard_index, start), members, end, max(copies.values()), unread
        )


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
                        self.stats.skip(open_problem(err), shard, "<shard>", str(err))
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
            from_start, read = self._offset == 0, 0
            try:
                for sample in iter_tar_samples(handle, shard, self._shard, self._offset):
                    # the offset advances past a sample before it is judged, so a resumed
                    # reader neither re-reads nor re-counts it
                    self._offset = sample.end
                    self._seen += 1
                    read += 1
                    if (self._seen - 1) % self._plan.stride != self._plan.slot:
                        continue
                    reason = invalid_reason(sample)
                    if reason:
                        self.stats.skip(reason, shard, sample.key, count=sample.copies)
                        continue
                    yield sample
            except TruncatedShard as err:
                if self._owns(self._seen):
                    self.stats.skip(err.reason, shard, err.key, err.detail)
                return
            if from_start and not read and self._owns(self._shard):
                self.stats.skip("empty_shard", shard, "<shard>", "a tar with no members")

    def _owns(self, index: int) -> bool:
        """Whether this rank reports a problem of a shard several ranks read (a sample split),
        so that skip counts summed over ranks count each problem once."""
        return index % self._plan.stride == self._plan.slot

    def _next_shard(self) -> None:
        self._shard += 1
        self._offset = 0
        self._stream = None


def invalid_reason(sample: RawSample) -> str:
    """Why a sample cannot be used, judged without decoding its image ('' when it can)."""
    sizes = {**{ext: len(data) for ext, data in sample.members.items()}, **sample.unread}
    return member_reason(
        sizes, sample.copies, sample.members.get(CAPTION_EXT), sample.members.get(JSON_EXT)
    )


def member_reason(
    sizes: dict[str, int], copies: int, caption: bytes | None, meta: bytes | None
) -> str:
    """Why a sample with members of these ``sizes`` (ext -> bytes), this caption and JSON
    cannot be used ('' when it can): the judgement the reader and :func:`count_shard` share."""
    if copies > 1:
        return "duplicate_member"
    if max(sizes.values(), default=0) > MAX_MEMBER_BYTES:
        return "too_large"
    if SPLATS_EXT not in sizes:
        image_ext = next((e for e in IMAGE_EXTS if e in sizes), None)
        if image_ext is None:
            return "no_image"
        if not sizes[image_ext]:
            return "empty_image"
    if caption is None or not caption.strip():
        return "no_caption"
    try:
        parse_caption(caption)
    except ValueError:
        return "bad_caption"
    if meta is not None:
        try:
            parse_meta(meta)
        except ValueError:
            return "bad_json"
    return ""


def parse_caption(data: bytes) -> str:
    """A ``.txt`` member as text, stripped; ``ValueError`` when it is not UTF-8."""
    return data.decode("utf-8").strip()


def parse_meta(data: bytes) -> dict[str, Any]:
    """A ``.json`` member as a dict; ``ValueError`` when it is not a JSON object."""
    try:
        meta = json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(meta, dict):
        raise ValueError(f"expected a JSON object, got {type(meta).__name__}")
    return meta


def count_shard(shard: str) -> tuple[int, Counter[str]]:
    """``(usable samples, skip reason -> count)`` of one local shard, judged as the reader
    judges it (:func:`member_reason`, truncation, non-tars) from the tar headers plus the
    small ``.txt``/``.json`` members: fast, since image bytes are never read. Images that
    will not decode are only found when decoding."""
    skipped: Counter[str] = Counter()
    path = _local_path(shard)
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as err:
        skipped[open_problem(err)] += 1
        return 0, skipped
    samples = 0
    key: str | None = None
    sizes: dict[str, int] = {}
    small: dict[str, bytes] = {}
    copies: Counter[str] = Counter()

    def judge() -> None:
        nonlocal samples
        if key is None:
            return
        reason = member_reason(
            sizes, max(copies.values()), small.get(CAPTION_EXT), small.get(JSON_EXT)
        )
        if reason:
            skipped[reason] += max(copies.values()) if reason == "duplicate_member" else 1
        else:
            samples += 1

    with stream:
        reason, _ = _first_block_problem(stream.read(tarfile.BLOCKSIZE))
        if reason:
            skipped[reason] += 1
            return 0, skipped
        stream.seek(0)
        size = os.fstat(stream.fileno()).st_size
        try:
            with tarfile.open(fileobj=stream, mode="r:") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    member_key, ext = split_member_name(info.name)
                    if member_key != key:
                        judge()
                        key, sizes, small, copies = member_key, {}, {}, Counter()
                    if info.offset_data + info.size > size:
                        raise tarfile.ReadError(f"member {info.name} cut short")
                    sizes[ext] = info.size
                    copies[ext] += 1
                    if ext in (CAPTION_EXT, JSON_EXT) and info.size <= MAX_MEMBER_BYTES:
                        small[ext] = tar.extractfile(info).read()  # type: ignore[union-attr]
                end = tar.offset
            if key is not None and not _end_marker_at(stream, end):
                raise tarfile.ReadError("no end-of-archive marker")
        except (tarfile.ReadError, EOFError, OSError):
            skipped["truncated_shard"] += 1  # the sample being read is lost, as in the reader
            return samples, skipped
    if key is None:
        skipped["empty_shard"] += 1
    judge()
    return samples, skipped
