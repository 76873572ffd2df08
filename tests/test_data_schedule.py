"""The epoch schedule: node-affine shards keep each node's shards across epochs, every sample
comes exactly once per epoch over all ranks, resume mid-epoch is exact, bad layouts fail
clearly."""

from __future__ import annotations

import json

import pytest

from streamfit.data import DataConfig
from streamfit.data.loader import build_reader
from streamfit.data.schedule import (
    NodeSchedule,
    assign_nodes,
    global_plan,
    resolve_schedule,
    shard_sizes,
)
from streamfit.data.shards import ShardReader, expand_shards
from streamfit.data.stats import LoaderStats
from streamfit.data.synthetic import write_split


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """11 shards: 10 of 12 samples and one of 10 (130 samples)."""
    out = tmp_path_factory.mktemp("sched")
    return expand_shards(write_split(out, "train", 130, image_size=8, shard_size=12, seed=0))


def node_reader(shards: list[str], rank: int, world: int, per_node: int, **kw) -> ShardReader:
    schedule = NodeSchedule(shards, world, per_node, seed=2, sizes=shard_sizes(shards), **kw)
    return ShardReader(
        shards, rank=rank, world_size=world, seed=2, shuffle_buffer=5, node_schedule=schedule
    )


def epoch_keys(reader: ShardReader, epoch: int, limit: int | None = None) -> list[str]:
    reader.set_epoch(epoch)
    reader.reset()
    out = []
    for sample in reader:
        out.append(f"{sample.shard}/{sample.key}")
        if limit is not None and len(out) == limit:
            break
    return out


@pytest.mark.parametrize(
    ("world", "per_node", "split"),
    [(1, 1, "shard"), (2, 1, "shard"), (2, 2, "shard"), (8, 2, "shard"), (8, 4, "sample"),
     (8, 3, "shard"), (8, 1, "shard")],
)  # fmt: skip
def test_exactly_once_per_epoch(shards: list[str], world: int, per_node: int, split: str) -> None:
    everything = {f"{s}/{k}" for s in shards for k in _keys_of(s)}
    assert len(everything) == 130
    for epoch in range(2):
        seen = []
        for rank in range(world):
            seen += epoch_keys(node_reader(shards, rank, world, per_node, split=split), epoch)
        assert len(seen) == len(set(seen)) == 130, (world, per_node, epoch)
        assert set(seen) == everything


def _keys_of(shard: str) -> list[str]:
    return [s.key for s in ShardReader([shard], shuffle_shards=False, shuffle_buffer=1)]


def test_node_keeps_its_shards_and_reshuffles_them(shards: list[str]) -> None:
    schedule = NodeSchedule(shards, 8, 2, seed=2, sizes=shard_sizes(shards))
    for node in range(4):
        ranks = range(2 * node, 2 * node + 2)
        per_epoch = [[s for r in ranks for s in schedule.plan(r, e).shards] for e in range(4)]
        assert all(sorted(p) == sorted(per_epoch[0]) for p in per_epoch)
        assert len({tuple(p) for p in per_epoch}) > 1  # the order changes between epochs
    # the global schedule of today moves shards between nodes
    moved = sum(
        set(global_plan(shards, r, 8, 2, 0, True, "shard").shards)
        != set(global_plan(shards, r, 8, 2, 1, True, "shard").shards)
        for r in range(8)
    )
    assert moved > 0


def test_few_shards_per_node_fall_back_to_a_sample_split(shards: list[str]) -> None:
    # 11 shards on 8 nodes of 2 ranks: most nodes own one shard, which its two ranks share
    schedule = NodeSchedule(shards, 16, 2, sizes=shard_sizes(shards))
    assert schedule.fallbacks()
    node = schedule.fallbacks()[0]
    plans = [schedule.plan(r, 0) for r in (2 * node, 2 * node + 1)]
    assert plans[0].shards == plans[1].shards
    assert (plans[0].stride, plans[0].slot, plans[1].slot) == (2, 0, 1)


@pytest.mark.parametrize("stop", [0, 1, 7, 20])
def test_resume_mid_epoch_with_node_schedule(shards: list[str], stop: int) -> None:
    full = epoch_keys(node_reader(shards, 3, 8, 2), 1)
    reader = node_reader(shards, 3, 8, 2)
    head = epoch_keys(reader, 1, limit=stop) if stop else []
    if not stop:
        reader.set_epoch(1)
        reader.reset()
    state = reader.state_dict()
    resumed = node_reader(shards, 3, 8, 2)
    resumed.reset(state)
    assert head + [f"{s.shard}/{s.key}" for s in resumed] == full


def test_more_nodes_than_shards_is_a_clear_error(shards: list[str]) -> None:
    with pytest.raises(ValueError, match="11 shards cannot give each of 12 nodes"):
        NodeSchedule(shards, 12, 1)


def test_unequal_shards_balance_samples_not_shards() -> None:
    names = [f"s{i}" for i in range(12)]
    sizes = [1000.0, 1000.0] + [100.0] * 10  # 3000 samples on 2 nodes
    owner = assign_nodes(names, sizes, [1, 1], seed=0)
    loads = [sum(s for s, o in zip(sizes, owner, strict=True) if o == n) for n in range(2)]
    assert loads == [1500.0, 1500.0]
    # one huge shard: every node still gets a share, and each shard one node
    owner = assign_nodes(names[:3], [10000.0, 1.0, 1.0], [1, 1, 1], seed=0)
    assert sorted(owner) == [0, 1, 2]


def test_adding_a_node_moves_few_shards() -> None:
    names = [f"shard-{i:05d}" for i in range(1000)]
    before = assign_nodes(names, [1.0] * 1000, [8] * 8, seed=0)
    after = assign_nodes(names, [1.0] * 1000, [8] * 9, seed=0)
    moved = sum(a != b for a, b in zip(before, after, strict=True))
    # the ideal is 1000/9 = 111 (the new node's share); a fresh deal would move ~8/9 of all
    assert moved < 2 * 1000 / 9


def test_shard_sizes_from_headers_and_img2dataset_stats(shards: list[str], tmp_path) -> None:
    assert shard_sizes(shards) == [12] * 10 + [10]
    copy = tmp_path / "00000.tar"
    copy.write_bytes(open(shards[0], "rb").read())
    (tmp_path / "00000_stats.json").write_text(json.dumps({"successes": 7}))
    assert shard_sizes([str(copy), "https://example.org/remote.tar", str(tmp_path / "no.tar")]) == [
        7,
        None,
        None,
    ]


def test_auto_schedule_and_reader_from_config(shards: list[str]) -> None:
    assert resolve_schedule("auto", 16, 8) == "node"
    assert resolve_schedule("auto", 8, 8) == "global"
    assert resolve_schedule("global", 16, 8) == "global"
    pattern = "::".join(shards)
    cfg = DataConfig(shards=pattern, ranks_per_node=2)
    assert build_reader(cfg, 0, 4, 0, LoaderStats()).node_schedule is not None
    cfg = DataConfig(shards=pattern, ranks_per_node=2, schedule="global")
    assert build_reader(cfg, 0, 4, 0, LoaderStats()).node_schedule is None
    with pytest.raises(ValueError, match="data.schedule"):
        DataConfig(schedule="nodes")


def test_resume_under_another_node_layout_is_refused(shards: list[str]) -> None:
    reader = node_reader(shards, 3, 8, 2)
    epoch_keys(reader, 0, limit=5)
    state = reader.state_dict()
    with pytest.raises(ValueError, match="another shard schedule"):
        node_reader(shards, 3, 8, 4).reset(state)
    node_reader(shards, 3, 8, 2).reset(state)  # the same layout resumes


def test_unequal_ranks_are_warned_about(tmp_path, caplog) -> None:
    big = write_split(tmp_path / "big", "train", 40, image_size=8, shard_size=40, seed=0)
    small = write_split(tmp_path / "small", "train", 9, image_size=8, shard_size=3, seed=1)
    cfg = DataConfig(shards=f"{big}::{small}", ranks_per_node=2)
    with caplog.at_level("WARNING", logger="streamfit.data"):
        build_reader(cfg, 0, 4, 0, LoaderStats())
    assert "ranks read" in caplog.text
