"""The training loader and the labelled evaluation loader share one fit-or-fetch path: both
leave out (and count) a fit whose splats the storage format cannot hold (non-finite, or beyond
float16), never cache it, and carry on fitting when the cache's SQLite store fails."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
import torch

from streamfit.data import DataConfig, SplatCache, build_loader
from streamfit.data.synthetic import write_synthetic_dataset
from streamfit.eval.labelled import LabelledLoader
from streamfit.fit import FitConfig, FitGraphs, get_backend

FIT = FitConfig(gaussians=4, iters=2, backend="torch", device="cpu")
N = 8  # samples of each split, batches of 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("fetch")
    data = write_synthetic_dataset(root, N, N, image_size=8, shard_size=N)
    return {"train": data.train, "heldout": data.heldout, "classes": str(root / "classes.json")}


def data_cfg(shards: str, cache_dir: Path) -> DataConfig:
    return DataConfig(
        shards=shards,
        image_size=8,
        batch_size=4,
        shuffle_buffer=1,
        cache_dir=str(cache_dir),
        decode_workers=0,
        log_every=0,
    )


@pytest.fixture()
def overflowing_first_fit(monkeypatch) -> None:
    """The first image of every fitted batch gets a value float16 cannot hold (q64 stores its
    ranges as float16): the fit reports success, only the codec can catch it."""
    real_fit = FitGraphs.__call__

    def fit(self, images):
        done = real_fit(self, images)
        done.params[0, 0, 0] = 1e6
        return done

    monkeypatch.setattr(FitGraphs, "__call__", fit)


def labelled(shards: dict[str, str], cache_dir: Path) -> LabelledLoader:
    cfg = data_cfg(shards["heldout"], cache_dir)
    return LabelledLoader(
        shards["heldout"], cfg, 4, torch.device("cpu"), FIT, FitGraphs(FIT, get_backend("torch"))
    )


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_a_non_finite_fit_is_left_out_counted_and_never_cached(
    shards, tmp_path, overflowing_first_fit
):
    loader = build_loader(data_cfg(shards["train"], tmp_path / "train"), FIT)
    assert sum(len(b["keys"]) for b in loader) == N - 2
    assert loader.epoch_stats(0).skipped == {"fit_failed": 2}

    batches = list(labelled(shards, tmp_path / "eval"))
    assert [b.failed for b in batches] == [1, 1]
    assert sum(len(b.keys) for b in batches) == N - 2
    for b in batches:
        assert len(b.labels) == len(b.rgb) == len(b.splats) == len(b.keys)
        assert torch.isfinite(b.splats.params).all()
    # only the finite fits were kept: a second pass fits the two failures again, and only them
    again = list(labelled(shards, tmp_path / "eval"))
    assert sum(b.hits for b in again) == N - 2 and sum(b.fitted for b in again) == 2


def test_an_sqlite_error_costs_fitting_not_the_run(shards, tmp_path, monkeypatch, caplog):
    def fail(self, *args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(SplatCache, "get_many", fail)
    monkeypatch.setattr(SplatCache, "put_many", fail)
    with caplog.at_level(logging.WARNING, logger="streamfit.data"):
        loader = build_loader(data_cfg(shards["train"], tmp_path / "train"), FIT)
        assert sum(len(b["keys"]) for b in loader) == N
        batches = list(labelled(shards, tmp_path / "eval"))
    assert loader.epoch_stats(0).cache_misses == N
    assert sum(len(b.keys) for b in batches) == N
    assert sum(b.fitted for b in batches) == N and sum(b.hits for b in batches) == 0
    failures = [r.getMessage() for r in caplog.records if "disk I/O error" in r.getMessage()]
    assert any(str(tmp_path / "train") in m for m in failures)
    assert any(str(tmp_path / "eval") in m for m in failures)
