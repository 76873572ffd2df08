"""The shard reader: rank split, deterministic shuffles, exact mid-epoch resume."""

from __future__ import annotations

import pytest

from streamfit.data.shards import ShardReader, expand_shards
from streamfit.data.synthetic import write_split


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("shards")
    return expand_shards(write_split(out, "train", 50, image_size=8, shard_size=12, seed=0))


def keys(reader: ShardReader, limit: int | None = None) -> list[str]:
    out = []
    for sample in reader:
        out.append(sample.key)
        if limit is not None and len(out) == limit:
            break
    return out


def test_expand_brace_and_glob(shards: list[str]) -> None:
    assert len(shards) == 5
    directory = shards[0].rsplit("/", 1)[0]
    assert expand_shards(f"{directory}/train-*.tar") == shards
    assert expand_shards(f"{shards[0]}::{shards[1]}") == shards[:2]
    with pytest.raises(FileNotFoundError):
        expand_shards(f"{directory}/nothing-*.tar")


@pytest.mark.parametrize("split", ["shard", "sample"])
def test_ranks_disjoint_and_complete(shards: list[str], split: str) -> None:
    everything = keys(ShardReader(shards, shuffle_buffer=1))
    assert len(everything) == len(set(everything)) == 50
    per_rank = [
        keys(ShardReader(shards, rank=r, world_size=2, split=split, shuffle_buffer=7))
        for r in range(2)
    ]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == sorted(everything)


def test_shuffle_deterministic_per_seed_and_epoch(shards: list[str]) -> None:
    a = keys(ShardReader(shards, seed=3, shuffle_buffer=10))
    assert a == keys(ShardReader(shards, seed=3, shuffle_buffer=10))
    assert a != keys(ShardReader(shards, seed=4, shuffle_buffer=10))
    reader = ShardReader(shards, seed=3, shuffle_buffer=10)
    first = keys(reader)
    reader.reset()  # after a finished epoch: the next one
    second = keys(reader)
    assert first == a and reader.epoch == 1
    assert second != first and sorted(second) == sorted(first)


@pytest.mark.parametrize("stop", [0, 1, 11, 12, 13, 30, 49, 50])
def test_resume_mid_epoch_is_exact(shards: list[str], stop: int) -> None:
    reader = ShardReader(shards, seed=1, shuffle_buffer=8, rank=1, world_size=2)
    full = keys(ShardReader(shards, seed=1, shuffle_buffer=8, rank=1, world_size=2))
    head = keys(reader, limit=stop) if stop else []
    state = reader.state_dict()
    resumed = ShardReader(shards, seed=1, shuffle_buffer=8, rank=1, world_size=2)
    resumed.reset(state)
    assert head + keys(resumed) == full


def test_resume_does_not_reread_consumed_shards(shards: list[str], tmp_path) -> None:
    # copies, so the consumed shard can be destroyed after the state is taken
    copies = []
    for path in shards:
        copy = tmp_path / path.rsplit("/", 1)[1]
        copy.write_bytes(open(path, "rb").read())
        copies.append(str(copy))
    reader = ShardReader(copies, shuffle_shards=False, shuffle_buffer=1)
    head = keys(reader, limit=15)  # all of shard 0, 3 samples of shard 1
    state = reader.state_dict()
    open(copies[0], "wb").write(b"\0garbage" * 100)
    resumed = ShardReader(copies, shuffle_shards=False, shuffle_buffer=1)
    resumed.reset(state)
    rest = keys(resumed)
    assert len(head) + len(rest) == 50 and not set(head) & set(rest)
    assert resumed.stats.current.skipped == {}


def test_truncated_shard_counted_once_across_ranks(shards: list[str], tmp_path) -> None:
    cut = tmp_path / "cut.tar"
    data = open(shards[0], "rb").read()
    cut.write_bytes(data[: len(data) // 3])
    totals = 0
    for rank in range(2):
        reader = ShardReader([str(cut), *shards[1:]], rank=rank, world_size=2, split="sample")
        keys(reader)
        totals += reader.stats.current.skipped.get("truncated_shard", 0)
    assert totals == 1
