"""Many-node tools, small: benchmark_loader simulating all ranks of several nodes (exactly
once per epoch, the second epoch from the nodes' caches, bad layouts refused)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from streamfit.data.synthetic import write_split

TOOLS = Path(__file__).resolve().parents[1] / "tools"
TINY = ["--backend", "torch", "--device", "cpu", "--gaussians", "4", "--iters", "2"]


def tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    """7 shards of unequal sizes (6 of 7 samples, one of 3)."""
    return write_split(
        tmp_path_factory.mktemp("multinode"), "train", 45, image_size=8, shard_size=7, seed=0
    )


def bench(shards: str, tmp_path: Path, *extra: str) -> list[dict]:
    report = tmp_path / "bench.json"
    argv = ["--shards", shards, "--cache", str(tmp_path / "cache"), "--image-size", "8"]
    argv += ["--batch-size", "4", "--json", str(report), *TINY, *extra]
    assert tool("benchmark_loader").main(argv) == 0
    return json.loads(report.read_text())["epochs"]


def test_all_ranks_of_four_nodes(shards: str, tmp_path: Path) -> None:
    epochs = bench(shards, tmp_path, "--world-size", "8", "--nodes", "4", "--epochs", "3")
    for e in epochs:
        assert (e["samples"], e["distinct"], e["duplicates"], e["skipped"]) == (45, 45, 0, {})
        assert len(e["ranks"]) == 8 and sum(r["samples"] for r in e["ranks"]) == 45
    assert (epochs[0]["cache_hits"], epochs[0]["cache_misses"]) == (0, 45)
    assert [(e["cache_hits"], e["cache_misses"]) for e in epochs[1:]] == [(45, 0), (45, 0)]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        f"node00{n}" for n in range(4)
    ]


def test_bad_layouts_are_refused(shards: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):  # 3 nodes cannot hold 8 ranks equally
        bench(shards, tmp_path, "--world-size", "8", "--nodes", "3")
    assert "must divide --world-size" in capsys.readouterr().err
    argv = ["--shards", shards, "--cache", str(tmp_path / "c"), "--world-size", "8"]
    assert tool("benchmark_loader").main([*argv, "--nodes", "8", *TINY]) == 2
    assert "7 shards cannot give each of 8 nodes a share" in capsys.readouterr().err
