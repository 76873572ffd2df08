"""Reading DataComp / img2dataset webdataset shards: shard lists, a shard's samples with what
its damage cost, and :class:`ShardReader`, the resumable, rank-aware, shuffling source node.

A shard is an uncompressed tar whose members ``<key>.<ext>`` are grouped into samples by
``key`` (consecutive members, webdataset's convention); ``ext`` is everything after the first
dot of the file name, lower-cased (``jpg``, ``txt``, ``json``, ``splats``, ...).

Damage costs only the samples it touches (:mod:`streamfit.data.tar` resyncs past a damaged
stretch to the next valid header) and every sample is yielded or counted:
:func:`shard_events` puts each damaged stretch on the samples whose members it may have held
(``damaged_member``; ``truncated_shard`` where the shard ends early), or, when it names none,
counts the stretch itself with its byte range (``damaged_bytes``).

Resuming: the reader's state names *where* things are, never the things themselves: the
epoch, the position in this rank's shard order, the byte offset after the last sample read
(with that sample's key and member extensions, which judging the damage that may follow it
needs), and the (shard, offset) of each sample waiting in the shuffle buffer. Restoring seeks
to those offsets (local files) or skips bytes in the stream (URLs), so nothing already
yielded is read, decoded or fitted again.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from braceexpand import UnbalancedBracesError, braceexpand
from torchdata.nodes import BaseNode

from streamfit.data.schedule import NodeSchedule, RankPlan, global_plan
from streamfit.data.stats import LoaderStats
from streamfit.data.tar import (
    BLOCK,
    MAGIC_AT,
    ArchiveEnd,
    DamagedBytes,
    TarItem,
    TarMember,
    iter_members,
)

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
    ``unread``: ext -> size of members left unread (above ``MAX_MEMBER_BYTES``, or not
    wanted by the caller)."""

    key: str
    shard: str
    position: tuple[int, int]
    members: dict[str, bytes]
    end: int
    copies: int = 1
    unread: dict[str, int] = field(default_factory=dict)

    @property
    def trace(self) -> SampleTrace:
        """What judging the bytes after this sample needs to know of it."""
        return self.key, frozenset(self.members) | frozenset(self.unread)


# (key, member extensions) of the sample before an offset: the shard's usual members, against
# which a sample beside damage is judged whole or not
SampleTrace = tuple[str, frozenset[str]]


@dataclass
class LostSamples:
    """Samples of a shard that cannot be yielded: ``count`` of them under ``reason``, named by
    ``key`` (``<shard>``: the whole shard; ``<bytes A-B>``: a damaged stretch whose samples
    have no readable name)."""

    reason: str
    key: str
    detail: str
    count: int = 1


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
        stream: BinaryIO = open(_local_path(url), "rb")
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
    """A shard that yields nothing more: it ended early (``reason`` ``truncated_shard``;
    ``key`` names the sample being read), or is no tar at all (``not_a_tar``,
    ``empty_shard``)."""

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


def read_bounded(name: str, size: int) -> bool:
    """The reader's choice of member data to read: all of it up to ``MAX_MEMBER_BYTES``."""
    return size <= MAX_MEMBER_BYTES


def read_text_members(name: str, size: int) -> bool:
    """:func:`count_shard`'s choice: the captions and JSON only, never image bytes."""
    return size <= MAX_MEMBER_BYTES and split_member_name(name)[1] in (CAPTION_EXT, JSON_EXT)


def shard_events(
    stream: BinaryIO,
    shard: str,
    shard_index: int,
    offset: int = 0,
    previous: SampleTrace | None = None,
    read: Callable[[str, int], bool] = read_bounded,
) -> Iterator[RawSample | LostSamples]:
    """Every sample of a tar stream positioned at byte ``offset`` of ``shard``, in file order:
    a :class:`RawSample` for each sample whose members are whole (judged later by
    :func:`invalid_reason`), a :class:`LostSamples` for each that damage cost and for each
    shard-level problem. ``previous`` is the trace of the sample that ends at ``offset``
    (:attr:`RawSample.trace`: a resumed reader passes it so that damage right after the offset
    is judged as in an uninterrupted read). ``read(name, size)``: whose data to read.

    A damaged stretch costs (``damaged_member``, each sample once):

    - the sample before it, when the stretch splits it (its members on both sides), names it,
      does not start with a recognisable header (the damage may have begun inside the
      sample's last member), or the sample lacks members its predecessor had;
    - the sample after it, when the stretch names it or it lacks members;
    - each other sample named by a damaged header inside the stretch;
    - when it names no sample at all, the stretch itself (``damaged_bytes``, ``<bytes A-B>``),
      unless it starts with an extension header: the member after that is whole.

    A shard cut short costs one ``truncated_shard``: the sample cut, or the unknown rest after
    the last whole sample (which is yielded).
    """
    grouping = _Grouping(shard, shard_index, previous)
    items = iter_members(stream, offset, read, label=shard)
    yield from grouping.run(items, from_start=offset == 0)


@dataclass
class _Open:
    """A sample being assembled from consecutive members of one key; ``before``: the damaged
    stretch just before its first member, if any."""

    key: str
    offset: int
    end: int = 0
    members: dict[str, bytes] = field(default_factory=dict)
    unread: dict[str, int] = field(default_factory=dict)
    copies: Counter[str] = field(default_factory=Counter)
    before: _Gap | None = None
    rest: bool = False

    def add(self, ext: str, member: TarMember) -> None:
        self.copies[ext] += 1
        if member.data is None:
            self.unread[ext] = member.size
        else:
            self.members[ext] = member.data
        self.end = member.end

    def sample(self, shard: str, shard_index: int) -> RawSample:
        return RawSample(
            self.key,
            shard,
            (shard_index, self.offset),
            self.members,
            self.end,
            max(self.copies.values()),
            self.unread,
        )


@dataclass
class _Gap:
    """A damaged stretch not yet fully accounted: the names read in it that no sample has
    claimed yet, and whether a sample already carries it."""

    damage: DamagedBytes
    names: list[str]
    carried: bool


class _Grouping:
    """Members -> samples, with the accounting of :func:`shard_events`."""

    def __init__(self, shard: str, shard_index: int, previous: SampleTrace | None) -> None:
        self.shard, self.shard_index = shard, shard_index
        self.prev_key: str | None = previous[0] if previous else None
        self.prev_exts: frozenset[str] = previous[1] if previous else frozenset()
        # the members the previous sample lacked (none once it was yielded)
        self.prev_missing: frozenset[str] = frozenset()

    def run(self, items: Iterator[TarItem], from_start: bool) -> Iterator[RawSample | LostSamples]:
        current: _Open | None = None
        gap: _Gap | None = None
        anything = False  # a member or damage seen: the shard is not empty
        for item in items:
            if isinstance(item, TarMember):
                anything = True
                key, ext = split_member_name(item.name)
                if current is None or key != current.key:
                    if current is not None:
                        yield from self._finish(current, None)[0]
                    # members of the sample before a stretch, after it: the rest of a sample
                    # already judged (and counted) at the stretch
                    rest = gap is not None and key == self.prev_key
                    current = _Open(key, item.offset, before=gap, rest=rest)
                    gap = None
                current.add(ext, item)
                continue
            if from_start and not anything:
                problem = self._shard_problem(item)
                if problem is not None:
                    yield problem
                    return
            carried = False
            if current is not None:
                events, carried = self._finish(current, item)
                yield from events
                current = None
            if gap is not None:  # two stretches with no sample between them
                yield from self._settle(gap)
                gap = None
            if isinstance(item, DamagedBytes):
                anything = True
                names = [n for n in item.names if not _claims(n, self.prev_key, self.prev_missing)]
                gap = _Gap(item, names, carried)
                if item.resumed:
                    continue
                # the shard ends inside or after the stretch
                yield from self._settle(gap, "truncated_shard" if item.truncated else "")
                gap = None
                if item.truncated:
                    return
            else:
                yield from self._end(item, carried)
                return

    def _shard_problem(self, item: TarItem) -> LostSamples | None:
        """A shard with no member at all: empty, or no tar."""
        if isinstance(item, ArchiveEnd):
            detail = "a tar with no members" if item.marker else "0 bytes"
            return LostSamples("empty_shard", "<shard>", detail)
        assert isinstance(item, DamagedBytes)
        if item.resumed or item.names:
            return None  # a tar whose beginning is damaged
        if item.truncated and item.aligned and item.end > MAGIC_AT:
            # a tar cut inside its first header (the magic is there): not any short file
            return LostSamples("truncated_shard", "<shard>", f"{item.end} bytes: {item.detail}")
        return LostSamples("not_a_tar", "<shard>", f"not a tar archive: {item.detail}")

    def _finish(
        self, sample: _Open, after: TarItem | None
    ) -> tuple[list[RawSample | LostSamples], bool]:
        """What the damaged stretch before the sample cost besides it, then the sample, or
        why damage around it cost it (``after``: what follows it); and whether the sample
        was lost, so carries ``after``."""
        if sample.rest:
            assert sample.before is not None
            sample.before.carried = True
            return list(self._settle(sample.before)), True
        reason, detail = self._damage_to(sample, after)
        events: list[RawSample | LostSamples] = []
        if sample.before is not None:
            events += self._settle(sample.before)
        self.prev_key = sample.key
        self.prev_missing = self.prev_exts - set(sample.copies)
        if reason:
            events.append(LostSamples(reason, sample.key, detail))
            return events, True
        raw = sample.sample(self.shard, self.shard_index)
        self.prev_exts = raw.trace[1]
        events.append(raw)
        return events, False

    def _damage_to(self, sample: _Open, after: TarItem | None) -> tuple[str, str]:
        missing = self.prev_exts - set(sample.copies)
        lacking = f"it lacks the {'/'.join(sorted(missing))} member(s) of the sample before it"
        gap = sample.before
        if gap is not None:
            named = [n for n in gap.names if split_member_name(n)[0] == sample.key]
            if named or missing:
                gap.names = [n for n in gap.names if not _claims(n, sample.key, missing)]
                gap.carried = True
                why = f"a damaged header names it ({named[0]!r})" if named else lacking
                return "damaged_member", f"{gap.damage.span} before it: {why}"
        if isinstance(after, DamagedBytes):
            reason = "truncated_shard" if after.truncated else "damaged_member"
            where = (
                f"the shard ends at byte {after.end} ({after.detail})"
                if after.truncated
                else f"{after.span} after it ({after.detail})"
            )
            if after.next_name and split_member_name(after.next_name)[0] == sample.key:
                return reason, f"{where}: it has members on both sides"
            if not after.aligned:
                return reason, f"{where}: the damage may have begun inside its last member"
            if any(split_member_name(n)[0] == sample.key for n in after.names):
                return reason, f"{where}: a header there names it"
            if missing:
                return reason, f"{where}: {lacking}"
        if isinstance(after, ArchiveEnd) and not after.marker and missing:
            return "truncated_shard", (
                f"the shard ends at byte {after.offset} with no end-of-archive marker and {lacking}"
            )
        return "", ""

    def _settle(self, gap: _Gap, reason: str = "") -> list[LostSamples]:
        """Count what a stretch cost beyond the samples that carry it: a sample for each other
        name read in it, or, when it names and costs nothing else, the stretch itself."""
        damage = gap.damage
        keys = list(dict.fromkeys(split_member_name(name)[0] for name in gap.names))
        if damage.truncated:
            named = f"the shard ends at byte {damage.end} inside it ({damage.detail})"
            unnamed = f"the shard ends at byte {damage.end} ({damage.detail})"
        else:
            named = f"{damage.span}: a damaged header there names it ({damage.detail})"
            unnamed = f"{damage.span} name no sample: {damage.detail}"
        lost = [LostSamples(reason or "damaged_member", key, named) for key in keys]
        # a stretch that starts with a member's extension header lost that member only if a
        # neighbour shows it (a sample split or short): then it is carried; nor can a stretch
        # have held a whole sample without a header for each of its members
        too_short = damage.end - damage.start < BLOCK * len(self.prev_exts)
        harmless = not damage.truncated and (damage.extension or too_short)
        if not (keys or gap.carried or harmless):
            key = f"<bytes {damage.start}-{damage.end}>"
            lost.append(LostSamples(reason or "damaged_bytes", key, unnamed))
        return lost

    def _end(self, end: ArchiveEnd, carried: bool) -> Iterator[LostSamples]:
        if end.trailing:
            logger.info(
                "%s: %d non-zero bytes after the end-of-archive marker at byte %d (ignored)",
                self.shard,
                end.trailing,
                end.offset,
            )
        if not end.marker and not carried:
            yield LostSamples(
                "truncated_shard",
                "<rest>",
                f"the shard ends at byte {end.offset} with no end-of-archive marker: "
                "whatever followed is lost",
            )


def _claims(name: str, key: str | None, missing: frozenset[str]) -> bool:
    """Whether a member name read from a damaged header is sample ``key``'s: the same key, or
    (the name may be damaged too: bytes changed, inserted or lost) within two edits of the
    name of a member the sample lacks. Only then: img2dataset's keys are consecutive
    numbers, so a close key may well be the neighbour's."""
    if key is None:
        return False
    if split_member_name(name)[0] == key:
        return True
    return any(_edits(name, f"{key}.{ext}", 2) <= 2 for ext in missing)


def _edits(a: str, b: str, bound: int) -> int:
    """Levenshtein distance of ``a`` and ``b``, or ``bound + 1`` when it exceeds ``bound``."""
    if abs(len(a) - len(b)) > bound:
        return bound + 1
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
        if min(row) > bound:
            return bound + 1
    return row[-1]


def iter_tar_samples(stream: BinaryIO, shard: str, shard_index: int) -> Iterator[RawSample]:
    """The samples of a tar stream from its start, in file order,
    for readers that keep no statistics (evaluation, the run planner): samples lost to damage
    are logged and passed over; a shard that is not a tar, is empty or ends early raises
    :class:`TruncatedShard` after the samples before the cut. Samples are not judged
    (:func:`invalid_reason` is the caller's)."""
    final: LostSamples | None = None
    for event in shard_events(stream, shard, shard_index):
        if isinstance(event, RawSample):
            yield event
        elif event.reason in ("truncated_shard", "not_a_tar", "empty_shard"):
            final = event
        else:
            logger.warning(
                "skipped %r in shard %s (%s): %s", event.key, shard, event.reason, event.detail
            )
    if final is not None:
        raise TruncatedShard(shard, final.key, final.detail, final.reason)


def read_sample_at(shard: str, shard_index: int, offset: int) -> RawSample:
    """The one sample whose first header is at ``offset`` (to refill a shuffle buffer): its
    members up to the next key, damage or end."""
    sample: _Open | None = None
    with open_shard(shard, offset) as stream:
        for item in iter_members(stream, offset, read_bounded):
            if not isinstance(item, TarMember):
                break
            key, ext = split_member_name(item.name)
            if sample is None:
                sample = _Open(key, item.offset)
            elif key != sample.key:
                break
            sample.add(ext, item)
    if sample is None:
        raise TruncatedShard(shard, "<none>", f"no sample at offset {offset}")
    return sample.sample(shard, shard_index)


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
    rank reads. Across ranks every sample comes exactly once per epoch. Samples missing an
    image (or splats) or a caption, or with a 0-byte image, and those that damage to the
    shard cost (:func:`shard_events`), are skipped and counted in ``stats`` (each by one
    rank where ranks split a shard's samples).

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
        self._offset = 0
        self._previous: SampleTrace | None = None

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
        previous = state.get("previous")
        self._previous = (previous[0], frozenset(previous[1])) if previous else None
        self._seen, self._yielded = int(state["seen"]), int(state["yielded"])
        self._stream = None
        self._buffer = [read_sample_at(self._order[s], s, o) for s, o in state["buffer"]]
        self.stats.begin_epoch(self.epoch)

    def get_state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "shard": self._shard,
            "offset": self._offset,
            "previous": [self._previous[0], sorted(self._previous[1])] if self._previous else None,
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
            events = shard_events(handle, shard, self._shard, self._offset, self._previous)
            try:
                for event in events:
                    # every sample and every loss takes an index, so that ranks splitting a
                    # shard's samples agree which is whose, and a loss is counted by one rank
                    self._seen += 1
                    mine = self._owns(self._seen - 1)
                    if isinstance(event, LostSamples):
                        if mine:
                            self.stats.skip(
                                event.reason, shard, event.key, event.detail, count=event.count
                            )
                        continue
                    # the offset advances past a sample before it is judged, so a resumed
                    # reader neither re-reads nor re-counts it
                    self._offset, self._previous = event.end, event.trace
                    if not mine:
                        continue
                    reason = invalid_reason(event)
                    if reason:
                        self.stats.skip(reason, shard, event.key, count=event.copies)
                        continue
                    yield event
            except OSError as err:  # a read failing part-way (a bad disk, a dropped connection)
                if self._owns(self._seen - 1):
                    detail = f"reading after byte {self._offset}: {err}"
                    self.stats.skip("unreadable_shard", shard, "<rest>", detail)

    def _owns(self, index: int) -> bool:
        """Whether sample ``index`` of a shard several ranks read (a sample split) is this
        rank's, to yield or, for a problem, to count: summed over ranks, each counts once."""
        return index % self._plan.stride == self._plan.slot

    def _next_shard(self) -> None:
        self._shard += 1
        self._offset = 0
        self._previous = None
        self._stream = None


def invalid_reason(sample: RawSample) -> str:
    """Why a sample cannot be used, judged without decoding its image ('' when it can): the
    judgement the reader and :func:`count_shard` share."""
    sizes = {**{ext: len(data) for ext, data in sample.members.items()}, **sample.unread}
    caption, meta = sample.members.get(CAPTION_EXT), sample.members.get(JSON_EXT)
    if sample.copies > 1:
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
    judges it (:func:`shard_events` and :func:`invalid_reason`: damage, truncation, non-tars)
    from the tar headers plus the small ``.txt``/``.json`` members: fast, since image bytes
    are never read (a damaged stretch is scanned all the same). Images that will not decode
    are only found when decoding."""
    skipped: Counter[str] = Counter()
    samples = 0
    try:
        stream = open(_local_path(shard), "rb")
    except OSError as err:
        skipped[open_problem(err)] += 1
        return 0, skipped
    with stream:
        try:
            for event in shard_events(stream, shard, 0, read=read_text_members):
                if isinstance(event, LostSamples):
                    skipped[event.reason] += event.count
                    continue
                reason = invalid_reason(event)
                if reason:
                    skipped[reason] += event.copies
                else:
                    samples += 1
        except OSError:
            skipped["unreadable_shard"] += 1
    return samples, skipped
