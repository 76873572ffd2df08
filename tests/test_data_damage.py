"""Damaged shards: a damaged stretch costs only the samples it touches, every sample is
yielded or counted, the schedule's sample count agrees with the reader, and a resumed reader
carries on exactly across a resync. Ends with a seeded fuzz run of ``tools/fuzz_shards.py``."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamfit.data.shards import (
    LostSamples,
    RawSample,
    ShardReader,
    count_shard,
    invalid_reason,
    shard_events,
)

TOOLS = Path(__file__).resolve().parents[1] / "tools"
SAMPLES = 12


def noise_jpeg(seed: int, size: int = 48) -> bytes:
    """A JPEG of a few KB (noise compresses badly): samples larger than the biggest damage."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_shard(
    path: Path, n: int = SAMPLES, fmt: int = tarfile.USTAR_FORMAT, key: str = "{:09d}"
) -> Path:
    """img2dataset's layout: ``<key>.jpg``, ``.txt``, ``.json`` per sample."""
    with tarfile.open(path, "w", format=fmt) as tar:
        for i in range(n):
            name = key.format(i)
            meta = json.dumps({"key": name, "status": "success"}).encode()
            for ext, data in (
                ("jpg", noise_jpeg(i)),
                ("txt", f"photo {i}".encode()),
                ("json", meta),
            ):
                info = tarfile.TarInfo(f"{name}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return {info.name: info for info in tar}


def account(path: Path) -> tuple[list[str], Counter[str]]:
    """Keys the reader yields and its skips by reason, checked against ``count_shard``."""
    reader = ShardReader([str(path)], shuffle_buffer=1, shuffle_shards=False)
    keys = [sample.key for sample in reader]
    skipped = Counter(reader.stats.current.skipped)
    assert count_shard(str(path)) == (len(keys), skipped)
    return keys, skipped


def keys_but(*dropped: int) -> list[str]:
    return [f"{i:09d}" for i in range(SAMPLES) if i not in dropped]


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shard(tmp_path_factory.mktemp("clean") / "00000.tar")


def damaged(clean: Path, tmp_path: Path, edit) -> Path:
    data = bytearray(clean.read_bytes())
    data = edit(data, members(clean)) or data
    path = tmp_path / "damaged.tar"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("ext", ["jpg", "txt", "json"])
# name, the key's dot, size, checksum, magic, unused
@pytest.mark.parametrize("field", [0, 9, 124, 150, 258, 400])
def test_a_damaged_header_costs_its_sample_only(
    clean: Path, tmp_path: Path, ext: str, field: int
) -> None:
    def flip(data, info):
        data[info[f"000000005.{ext}"].offset + field] ^= 0x5A

    keys, skipped = account(damaged(clean, tmp_path, flip))
    assert keys == keys_but(5) and skipped == {"damaged_member": 1}


@pytest.mark.parametrize(
    ("member", "part", "at", "n", "lost"),
    [
        ("000000004.jpg", "data", 100, 1, 4),  # inside an image: its sample
        ("000000004.jpg", "data", 100, 1000, 4),
        ("000000004.json", "data", 20, 300, 4),  # inside the last member of a sample
        ("000000005.txt", "header", 300, 300, 5),  # into a header, past its magic
        ("000000005.jpg", "header", 150, 700, 5),  # into a sample's first header, past its mode
        # right at a sample's end: the reader cannot tell it from damage begun inside it
        ("000000005.jpg", "header", 0, 700, 4),
    ],
)
def test_inserted_bytes_cost_the_sample_they_fall_in(
    clean: Path, tmp_path: Path, member: str, part: str, at: int, n: int, lost: int
) -> None:
    def insert(data, info):
        where = (info[member].offset_data if part == "data" else info[member].offset) + at
        return data[:where] + b"\x17" * n + data[where:]

    keys, skipped = account(damaged(clean, tmp_path, insert))
    assert keys == keys_but(lost) and skipped == {"damaged_member": 1}


def test_a_random_block_costs_the_samples_it_covers(clean: Path, tmp_path: Path) -> None:
    def overwrite(data, info):
        start = info["000000006.json"].offset_data + 50  # through 7's jpg header
        data[start : start + 1500] = np.random.default_rng(0).bytes(1500)

    keys, skipped = account(damaged(clean, tmp_path, overwrite))
    assert keys == keys_but(6, 7) and skipped == {"damaged_member": 2}


def test_a_damaged_first_header_and_leading_garbage(clean: Path, tmp_path: Path, caplog) -> None:
    def first(data, info):
        data[10] ^= 0xFF

    keys, skipped = account(damaged(clean, tmp_path, first))
    assert keys == keys_but(0) and skipped == {"damaged_member": 1}

    with caplog.at_level(logging.WARNING, logger="streamfit.data"):
        keys, skipped = account(damaged(clean, tmp_path, lambda data, info: b"junk" * 50 + data))
    assert keys == keys_but() and skipped == {"damaged_bytes": 1}  # names no sample
    assert "skipped bytes 0-200 of shard" in caplog.text


def test_zeroed_blocks_inside_the_archive(clean: Path, tmp_path: Path) -> None:
    def zero(data, info):
        start = info["000000003.txt"].offset
        data[start : start + 1024] = bytes(1024)  # the caption's header and data

    keys, skipped = account(damaged(clean, tmp_path, zero))
    assert keys == keys_but(3) and skipped == {"damaged_member": 1}


def test_a_cut_keeps_the_whole_sample_before_it(clean: Path, tmp_path: Path, caplog) -> None:
    info = members(clean)
    data = clean.read_bytes()
    cases = {
        info["000000008.jpg"].offset_data + 10: ({"truncated_shard": 1}, 8),  # inside 8's image
        info["000000008.jpg"].offset + 100: ({"truncated_shard": 1}, 8),  # inside its header
        info["000000008.jpg"].offset: ({"truncated_shard": 1}, 8),  # at the boundary
        info["000000007.json"].offset_data + 10: ({"truncated_shard": 1}, 7),
        info["000000007.json"].offset + 10: ({"truncated_shard": 1}, 7),
        len(data) - 1000: ({}, SAMPLES),  # inside the end-of-archive padding: nothing lost
    }
    for cut, (expected, whole) in cases.items():
        path = tmp_path / "cut.tar"
        path.write_bytes(data[:cut])
        with caplog.at_level(logging.WARNING, logger="streamfit.data"):
            keys, skipped = account(path)
        assert keys == keys_but(*range(whole, SAMPLES)), cut
        assert skipped == expected, cut
        if expected:
            assert "the shard ends" in caplog.text and str(cut) in caplog.text
        caplog.clear()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
def test_long_names_extension_headers(tmp_path: Path, fmt: int) -> None:
    """Keys over 100 characters: a PAX record or GNU long-name header before each member."""
    long = "a-very-long-directory-name/" * 4 + "{:09d}"
    path = write_shard(tmp_path / "long.tar", fmt=fmt, key=long)
    reader = ShardReader([str(path)], shuffle_buffer=1, shuffle_shards=False)
    assert [s.key for s in reader] == [long.format(i) for i in range(SAMPLES)]
    info = members(path)[long.format(5) + ".txt"]
    data = bytearray(path.read_bytes())
    data[info.offset_data - 512 + 20] ^= 0x5A  # the member's own header, after its extension
    path.write_bytes(bytes(data))
    reader = ShardReader([str(path)], shuffle_buffer=1, shuffle_shards=False)
    keys = [s.key for s in reader]
    assert keys == [long.format(i) for i in range(SAMPLES) if i != 5]
    assert reader.stats.current.skipped == {"damaged_member": 1}
    assert count_shard(str(path)) == (SAMPLES - 1, {"damaged_member": 1})


@pytest.mark.parametrize("damage", ["flip", "zero"])
def test_img2dataset_pax_headers(tmp_path: Path, caplog, damage: str) -> None:
    """webdataset's TarWriter (img2dataset's) puts a PAX header (the mtime) before each
    member: a damaged one costs nothing when it still reads as one and its member follows
    whole; zeroed, it splits its sample, which is counted."""
    from webdataset import TarWriter

    path = tmp_path / "00000.tar"
    with TarWriter(str(path)) as sink:
        for i in range(SAMPLES):
            sink.write({"__key__": f"{i:09d}", "jpg": noise_jpeg(i), "txt": b"a photo"})
    info = members(path)["000000005.txt"]
    assert info.offset_data - info.offset == 3 * 512  # PAX header, its records, the header
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[info.offset + 140] ^= 0x10
    else:
        data[info.offset : info.offset + 1024] = bytes(1024)
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="streamfit.data"):
        keys, skipped = account(path)
    if damage == "flip":
        assert keys == keys_but() and skipped == {}
        assert "a damaged tar extension header at byte" in caplog.text
    else:
        assert keys == keys_but(5) and skipped == {"damaged_member": 1}


class Unseekable(io.RawIOBase):
    """A stream read front to back, as from a URL."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), len(self.data) - self.pos, 777)  # short reads
        buffer[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def summary(events) -> list[tuple]:
    return [
        (e.key, e.end) if isinstance(e, RawSample) else (e.reason, e.key, e.count) for e in events
    ]


def test_a_stream_is_read_as_the_file_is(clean: Path, tmp_path: Path) -> None:
    def several(data, info):
        data[info["000000002.json"].offset + 3] ^= 1
        data[info["000000006.jpg"].offset_data + 99 : info["000000006.jpg"].offset_data + 3000] = (
            b"\xff" * 2901
        )
        return (
            data[: info["000000009.txt"].offset + 7]
            + b"x" * 77
            + data[info["000000009.txt"].offset + 7 :]
        )

    path = damaged(clean, tmp_path, several)
    with open(path, "rb") as f:
        from_file = summary(shard_events(f, str(path), 0))
    from_stream = summary(shard_events(Unseekable(path.read_bytes()), str(path), 0))
    assert from_stream == from_file
    assert [e for e in from_file if len(e) == 3] == [
        ("damaged_member", "000000002", 1),
        ("damaged_member", "000000009", 1),
    ]


@pytest.fixture(scope="module")
def damaged_shards(clean: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three shards, each with damage of another kind, one beside a sample boundary."""
    folder = tmp_path_factory.mktemp("damaged")
    info = members(clean)
    data = clean.read_bytes()
    flip = bytearray(data)
    flip[info["000000004.jpg"].offset + 5] ^= 0x40
    at = info["000000009.jpg"].offset  # garbage right at a sample boundary
    edits = [bytes(flip), data[:at] + b"\x01" * 600 + data[at:], data[: len(data) // 2]]
    paths = []
    for i, blob in enumerate(edits):
        path = folder / f"{i:05d}.tar"
        path.write_bytes(blob)
        paths.append(str(path))
    return paths


def read_all(reader: ShardReader, limit: int | None = None) -> list[str]:
    out = []
    for sample in reader:
        out.append(sample.key + "@" + sample.shard[-9:])
        if limit is not None and len(out) == limit:
            break
    return out


@pytest.mark.parametrize(("world", "split"), [(1, "shard"), (2, "sample")])
def test_resume_is_exact_across_a_resync(damaged_shards: list[str], world: int, split: str) -> None:
    def make() -> ShardReader:
        return ShardReader(
            damaged_shards, rank=world - 1, world_size=world, split=split, seed=2, shuffle_buffer=3
        )

    full = make()
    everything = read_all(full)
    full_skips = Counter(full.stats.current.skipped)
    assert full_skips or world > 1  # the damage is counted (by one rank of several)
    for stop in range(len(everything) + 1):
        head_reader = make()
        head = read_all(head_reader, stop) if stop else []
        state = head_reader.state_dict()
        resumed = make()
        resumed.reset(state)
        assert head + read_all(resumed) == everything, stop
        skips = Counter(head_reader.stats.current.skipped) + Counter(resumed.stats.current.skipped)
        assert skips == full_skips, stop


def test_ranks_splitting_samples_count_damage_once(damaged_shards: list[str]) -> None:
    one = ShardReader(damaged_shards, shuffle_buffer=1)
    keys = read_all(one)
    ranks = [ShardReader(damaged_shards, rank=r, world_size=2, split="sample") for r in range(2)]
    per_rank = [read_all(r) for r in ranks]
    assert sorted(per_rank[0] + per_rank[1]) == sorted(keys)
    total = Counter(ranks[0].stats.current.skipped) + Counter(ranks[1].stats.current.skipped)
    assert total == Counter(one.stats.current.skipped)


def test_every_event_of_a_damaged_shard_is_a_sample_or_a_count(
    clean: Path, damaged_shards: list[str]
) -> None:
    cut = len(Path(damaged_shards[2]).read_bytes())
    started = len({name[:9] for name, info in members(clean).items() if info.offset < cut})
    for shard, held in zip(damaged_shards, (SAMPLES, SAMPLES, started), strict=True):
        with open(shard, "rb") as f:
            events = list(shard_events(f, shard, 0))
        lost = sum(e.count for e in events if isinstance(e, LostSamples))
        whole = [e for e in events if isinstance(e, RawSample)]
        assert all(not invalid_reason(e) for e in whole)
        assert len(whole) + lost == held, shard


def test_seeded_fuzz(tmp_path: Path, capsys, program) -> None:
    """Every judged kind of damage, 15 copies each, over generated img2dataset-style shards."""
    for i in range(3):
        write_shard(tmp_path / f"{i:05d}.tar", n=20 + 5 * i)
    out = tmp_path / "fuzz.json"
    tool = program("tools/fuzz_shards")
    pattern = f"{tmp_path}/{{00000..00002}}.tar"
    assert tool.main([pattern, "--cases", "75", "--seed", "7", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    overall = result["summary"][-1]
    assert overall["kind"] == "all" and overall["cases"] == 75
    assert overall["crashes_or_hangs"] == 0
    assert overall["untouched_yielded"] >= 0.99
    assert overall["count_shard_agrees"] == 1.0
    assert overall["truncations_counted"] == 1.0
    intact_after = [c for c in result["cases"] if c["kind"] != "truncate"]
    assert all(abs(c["miscount"]) <= 1 for c in intact_after)
    assert sum(c["miscount"] == 0 for c in intact_after) >= 0.95 * len(intact_after)
    assert max(c["seconds"] for c in result["cases"]) < 5
    assert "untouched yielded" in capsys.readouterr().out
    # the img2dataset rewrite (webdataset's TarWriter) reads and fuzzes the same way
    assert tool.main([pattern, "--img2dataset", "--cases", "10", "--kinds", "header,insert"]) == 0
