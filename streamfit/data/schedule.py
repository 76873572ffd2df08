"""Which shards each rank reads in each epoch: today's global shuffle, and node-affine shards.

Design note (multi-node epochs and the node-local splat cache)
---------------------------------------------------------------
The splat cache is one SQLite file per node (SQLite locking is unsafe on network file
systems), so a sample is served from the cache only if *the same node* fitted it in an
earlier epoch. The ``global`` schedule shuffles the whole shard list every epoch and deals it
``rank::world_size``: on ``K`` nodes a node meets again only ~1/K of its shards, so a
multi-epoch run refits ~(K-1)/K of every epoch (64 shards, 4 nodes of 2 ranks: 18 of 64).

The ``node`` schedule (the default as soon as a run spans several nodes) keeps the cache
useful instead of sharing it:

* **Fixed node shares.** Each node owns a fixed share of the shards for the whole run,
  balanced by *samples* (not shard count) in proportion to the node's ranks. Shares come
  from rendezvous hashing with bounded loads: every shard ranks the nodes by a hash of
  (seed, shard, node) and goes to its first choice that still has room below the node's
  target; shards are placed largest first and a shard that fits nowhere goes to the least
  loaded node. Rendezvous hashing moves only the shards whose first choice changes when the
  node count changes (~1/K of them when a node is added), so resizing a run keeps most of
  each node's cache; the load bound keeps the shares within about one shard of the target.
* **Fresh order every epoch.** Within its share a node shuffles the shard order every epoch
  (seeded by seed, epoch and node) and its ranks split the share: whole shards dealt to the
  rank with the fewest samples so far (``split="shard"``), or, with ``split="sample"`` or
  when a node owns fewer shards than it has ranks (a logged fallback), every rank of the
  node reads all its shards and keeps every ``ranks``-th sample. The reader's shuffle buffer
  then mixes samples across the rank's shards as before.
* **Exactly once.** Shares partition the shards and ranks partition a share, so every
  sample is read by exactly one rank per epoch, whatever the sizes.

Measured (``tools/benchmark_loader.py --world-size 8 --nodes 4``, 64 shards of 10 synthetic
samples, BENCHMARKS.md "Many nodes"): the second epoch is served 28% from the nodes' caches
with ``global`` (the third 42%), 100% with ``node``; a node added to 8 moves 139 of 1000
shards (ideal 111) and node shares stay within one shard of their target.

What it costs: a sample only ever meets the samples of its own node's share in a batch
(with 8+ nodes and thousands of shards each share is itself a large random subset, and
the order still changes every epoch), and shares are balanced to within a shard, as the
global schedule is. The alternative, a shared sidecar store of fitted splat shards, keeps a
global shuffle but needs a shared file system or object store, a writer that never exposes
half-written shards, and a read of every splat shard over the network every epoch; the node
schedule needs none of that, so it comes first.

Per-shard sample counts come from img2dataset's ``<shard>_stats.json`` (``successes``)
when present, else from the tar headers of local shards (no member is read); remote shards
without stats count as the mean of the known ones (equal weights when none is known).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import random
import tarfile
from dataclasses import dataclass

logger = logging.getLogger("streamfit.data")

SCHEDULES = ("auto", "node", "global")
_SAMPLE_EXTS = ("jpg", "jpeg", "png", "webp", "splats")


@dataclass(frozen=True)
class RankPlan:
    """What one rank reads in one epoch: ``shards`` in reading order, of whose samples (in
    file order, counted over all of them) it keeps those with ``index % stride == slot``."""

    shards: list[str]
    stride: int = 1
    slot: int = 0
    layout: tuple[int, ...] = ()  # ranks per node of the whole run (global schedule: world)

    @functools.cached_property
    def digest(self) -> str:
        """A short fingerprint, kept in the reader's state: a resume under another plan (node
        layout, schedule, seed or shard list changed) would repeat or skip samples, on this
        rank or another, even when this rank's own shards happen to be the same."""
        blob = json.dumps([self.shards, self.stride, self.slot, list(self.layout)])
        return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()


def ranks_per_node_from_env(world_size: int) -> int:
    """Ranks on this node as the launcher says (torchrun: ``LOCAL_WORLD_SIZE``, DeepSpeed:
    ``LOCAL_SIZE``); without either, the whole world is taken as one node."""
    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        value = os.environ.get(name)
        if value:
            return int(value)
    return world_size


def resolve_schedule(schedule: str, world_size: int, ranks_per_node: int) -> str:
    """``auto`` -> ``node`` when the ranks span several nodes, else ``global``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"data.schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "auto":
        return "node" if world_size > ranks_per_node else "global"
    return schedule


def global_plan(
    shards: list[str], rank: int, world_size: int, seed: int, epoch: int, shuffle: bool, split: str
) -> RankPlan:
    """The global schedule: the whole list shuffled by (seed, epoch), then shards
    ``rank::world_size`` (``split="shard"``) or every shard, keeping samples
    ``rank::world_size`` (``split="sample"``)."""
    order = list(shards)
    if shuffle:
        random.Random(f"{seed}/{epoch}").shuffle(order)
    if split == "shard":
        return RankPlan(order[rank::world_size], layout=(world_size,))
    return RankPlan(order, world_size, rank, layout=(world_size,))


def _hrw(seed: int, shard: str, node: int) -> int:
    """Rendezvous weight of ``node`` for ``shard`` (stable across runs and node counts)."""
    digest = hashlib.blake2b(f"{seed}|{shard}|{node}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def assign_nodes(
    shards: list[str], sizes: list[float], capacity: list[int], seed: int
) -> list[int]:
    """The node of each shard: rendezvous hashing with bounded loads (module docstring).

    ``capacity[n]``: ranks on node ``n`` (its target is that fraction of all samples).
    Every node gets at least one shard; raises ``ValueError`` when there are fewer shards
    than nodes.
    """
    nodes = len(capacity)
    if len(shards) < nodes:
        raise ValueError(
            f"{len(shards)} shards cannot give each of {nodes} nodes a share; use more (smaller) "
            "shards, fewer nodes, or data.schedule=global with data.split=sample"
        )
    total = float(sum(sizes))
    target = [total * c / sum(capacity) for c in capacity]
    load = [0.0] * nodes
    count = [0] * nodes
    owner = [0] * len(shards)
    for i in sorted(range(len(shards)), key=lambda i: (-sizes[i], shards[i])):
        prefs = sorted(range(nodes), key=lambda n: _hrw(seed, shards[i], n), reverse=True)
        room = [n for n in prefs if load[n] + sizes[i] <= target[n] * (1 + 1e-9)]
        node = room[0] if room else min(prefs, key=lambda n: load[n] / target[n])
        owner[i] = node
        load[node] += sizes[i]
        count[node] += 1
    for empty in [n for n in range(nodes) if count[n] == 0]:
        # possible only with very unequal shards: take the smallest shard of the node
        # with the most shards
        donor = max(range(nodes), key=lambda n: count[n])
        i = min((i for i in range(len(shards)) if owner[i] == donor), key=lambda i: sizes[i])
        owner[i] = empty
        count[donor] -= 1
        count[empty] += 1
    return owner


def node_layout(world_size: int, ranks_per_node: int) -> list[int]:
    """Ranks on each node: ranks ``r`` live on node ``r // ranks_per_node`` (the last node
    may hold fewer)."""
    if ranks_per_node < 1:
        raise ValueError(f"ranks per node must be >= 1, got {ranks_per_node}")
    full, rest = divmod(world_size, ranks_per_node)
    return [ranks_per_node] * full + ([rest] if rest else [])


class NodeSchedule:
    """The node-affine schedule of a run (module docstring): fixed node shares, a fresh order
    within each share every epoch, ranks of a node splitting its share.

    ``sizes``: samples per shard (None: unknown, see :func:`shard_sizes`).
    """

    def __init__(
        self,
        shards: list[str],
        world_size: int,
        ranks_per_node: int,
        seed: int = 0,
        shuffle: bool = True,
        split: str = "shard",
        sizes: list[int | None] | None = None,
    ) -> None:
        self.shards, self.world_size, self.ranks_per_node = list(shards), world_size, ranks_per_node
        self.seed, self.shuffle, self.split = seed, shuffle, split
        self.layout = node_layout(world_size, ranks_per_node)
        self.sizes = _fill_unknown(sizes if sizes is not None else [None] * len(shards))
        owner = assign_nodes(self.shards, self.sizes, self.layout, seed)
        self.shares = [[i for i in range(len(shards)) if owner[i] == n] for n in self.layout_ids]
        self.sample_split = [
            split == "sample" or len(share) < ranks
            for share, ranks in zip(self.shares, self.layout, strict=True)
        ]

    @property
    def layout_ids(self) -> range:
        return range(len(self.layout))

    def fallbacks(self) -> list[int]:
        """Nodes whose ranks split samples although ``split="shard"`` was asked for (the node
        owns fewer shards than it has ranks)."""
        return [n for n in self.layout_ids if self.sample_split[n] and self.split == "shard"]

    def plan(self, rank: int, epoch: int) -> RankPlan:
        """What ``rank`` reads in ``epoch``."""
        node, local = divmod(rank, self.ranks_per_node)
        order = list(self.shares[node])
        if self.shuffle:
            random.Random(f"{self.seed}/{epoch}/node{node}").shuffle(order)
        ranks = self.layout[node]
        if self.sample_split[node]:
            return RankPlan([self.shards[i] for i in order], ranks, local, tuple(self.layout))
        load = [0.0] * ranks
        mine: list[str] = []
        for i in order:
            # deal each shard to the rank of the node with the fewest samples so far
            r = min(range(ranks), key=lambda r: load[r])
            load[r] += self.sizes[i]
            if r == local:
                mine.append(self.shards[i])
        return RankPlan(mine, layout=tuple(self.layout))

    def rank_samples(self, epoch: int = 0) -> list[float]:
        """Expected samples of each rank in ``epoch`` (from the shard sizes)."""
        index = {s: i for i, s in enumerate(self.shards)}
        out = []
        for rank in range(self.world_size):
            plan = self.plan(rank, epoch)
            out.append(sum(self.sizes[index[s]] for s in plan.shards) / plan.stride)
        return out


def _fill_unknown(sizes: list[int | None]) -> list[float]:
    known = [s for s in sizes if s is not None]
    default = sum(known) / len(known) if known else 1.0
    return [max(float(s), 1.0) if s is not None else max(default, 1.0) for s in sizes]


def shard_sizes(shards: list[str]) -> list[int | None]:
    """Samples per shard, read cheaply: img2dataset's ``<shard>_stats.json`` (``successes``)
    when present, else the tar headers of a local shard (no member data is read); None for
    remote shards without stats and for shards that cannot be read."""
    out: list[int | None] = []
    for shard in shards:
        path = shard[len("file://") :] if shard.startswith("file://") else shard
        if "://" in path or path.startswith("pipe:"):
            out.append(None)
            continue
        try:
            stat = os.stat(path)
        except OSError:
            out.append(None)
            continue
        out.append(_local_size(path, stat.st_mtime_ns, stat.st_size))
    return out


@functools.lru_cache(maxsize=65536)
def _local_size(path: str, mtime_ns: int, size: int) -> int | None:
    """Samples of a local shard (memoised on path, mtime and size: every simulated rank of a
    process asks)."""
    stats = os.path.splitext(path)[0] + "_stats.json"
    if os.path.isfile(stats):
        try:
            with open(stats) as f:
                return int(json.load(f)["successes"])
        except (OSError, ValueError, KeyError, TypeError):
            logger.warning("%s: unreadable img2dataset stats; counting tar headers", stats)
    keys = set()
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                stem, _, ext = os.path.basename(info.name).partition(".")
                if ext.lower() in _SAMPLE_EXTS:
                    keys.add(os.path.join(os.path.dirname(info.name), stem))
    except (OSError, tarfile.TarError) as err:
        logger.warning("%s: cannot count its samples (%s); weighted as an average shard", path, err)
        return None if not keys else len(keys)
    return len(keys)
