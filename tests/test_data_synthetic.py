"""The synthetic shapes dataset teaches shapes: every class has one silhouette whatever the
nuisances (colour, size, position, background), the silhouettes tell the classes apart, the
caption names the shape and nothing else, and train / validation / held-out come from distinct
random streams."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamfit.data.shards import ShardReader, expand_shards
from streamfit.data.synthetic import (
    BACKGROUNDS,
    CLASSNAMES,
    COLOURS,
    TEMPLATES,
    render_sample,
    shape_mask,
    write_synthetic_dataset,
)

MASK = 32  # side of the canonical silhouette frame


def _silhouette(image: Image.Image, meta: dict) -> np.ndarray:
    """The dark pixels of ``image`` in the shape's own frame (its bounding square, from the
    metadata), as a boolean ``MASK`` x ``MASK`` array."""
    side = image.width
    r = meta["size"] * side / 2
    cx, cy = (c * side for c in meta["centre"])
    dark = Image.fromarray(((np.asarray(image.convert("L")) < 145) * 255).astype(np.uint8))
    frame = dark.resize((MASK, MASK), Image.Resampling.BOX, box=(cx - r, cy - r, cx + r, cy + r))
    return np.asarray(frame) > 127


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_each_class_has_one_silhouette_that_no_other_class_shares() -> None:
    references = [np.asarray(shape_mask(name, MASK)) > 127 for name in CLASSNAMES]
    # the silhouettes themselves are distinct
    for i in range(len(CLASSNAMES)):
        for j in range(i):
            assert _iou(references[i], references[j]) < 0.85, (CLASSNAMES[i], CLASSNAMES[j])
    rng = random.Random(0)
    nuisances = {"colour": set(), "background": set()}
    for label, name in enumerate(CLASSNAMES):
        for _ in range(6):
            image, caption, meta = render_sample(rng, label, 64)
            for key in nuisances:
                nuisances[key].add(meta[key])
            ious = [_iou(_silhouette(image, meta), ref) for ref in references]
            assert ious[label] > 0.8, (name, meta, ious[label])
            assert int(np.argmax(ious)) == label, (name, meta, ious)
    # the nuisances did vary across the classes' images
    assert len(nuisances["colour"]) > 3 and len(nuisances["background"]) > 3


def test_caption_names_the_shape_and_no_nuisance() -> None:
    rng = random.Random(1)
    nuisance_words = {w for name in (*COLOURS, *BACKGROUNDS) for w in name.split()}
    for label, name in enumerate(CLASSNAMES):
        _, caption, meta = render_sample(rng, label, 16)
        assert meta["classname"] == name
        assert caption in {t.format(name) for t in TEMPLATES}
        assert not nuisance_words & set(caption.rstrip(".").split()), caption


def _images(pattern: str) -> list[bytes]:
    return [s.members["png"] for s in ShardReader(expand_shards(pattern), shuffle_buffer=1)]


def test_train_val_heldout_are_distinct_streams(tmp_path: Path) -> None:
    data = write_synthetic_dataset(tmp_path / "a", 32, 32, image_size=16, shard_size=20, n_val=32)
    assert (data.n_val, data.val) == (32, str(tmp_path / "a" / "val-{000000..000001}.tar"))
    classes = json.loads((tmp_path / "a" / "classes.json").read_text())
    assert (classes["val"], classes["n_val"]) == (data.val, 32)
    val = ShardReader(expand_shards(data.val), shuffle_buffer=1)
    labels = sorted(json.loads(s.members["json"])["label"] for s in val)
    assert labels == sorted(list(range(16)) * 2)  # balanced
    splits = {name: _images(getattr(data, name)) for name in ("train", "val", "heldout")}
    assert all(len(set(images)) == 32 for images in splits.values())
    assert not set(splits["val"]) & (set(splits["train"]) | set(splits["heldout"]))
    assert not set(splits["train"]) & set(splits["heldout"])
    # adding a validation split leaves the other two as they were, and the same seed repeats
    again = write_synthetic_dataset(tmp_path / "b", 32, 32, image_size=16, shard_size=20)
    assert (again.val, again.n_val) == ("", 0) and not list((tmp_path / "b").glob("val-*"))
    assert _images(again.train) == splits["train"] and _images(again.heldout) == splits["heldout"]


def test_negative_validation_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_val"):
        write_synthetic_dataset(tmp_path, 4, 4, image_size=16, n_val=-1)
