"""The zero-shot classifier cache: a second build of the same classifier comes from disk, a
GS-CLIP shares its teacher's, anything that changes the classifier changes the key, a
damaged entry is rebuilt with a warning, and the file is what clip_benchmark's
``--load_clfs`` reads (a plain tensor through ``torch.load``)."""

from __future__ import annotations

import copy
import json
import logging
from functools import partial

import pytest
import torch
from tiny_models import TINY_CLIP

from streamfit.eval import class_prompts, zero_shot_classifier
from streamfit.eval.classifier_cache import ClassifierCache, classifier_key, open_cache
from streamfit.models import GSModelConfig, build_gs_clip, load_teacher

MODEL_KWARGS = TINY_CLIP
CLASSES = ["cat", "dog", "bird"]
TEMPLATES = [partial(str.format, "a photo of a {}."), partial(str.format, "a {} picture.")]


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return load_teacher("ViT-M-16", None, **MODEL_KWARGS).eval().requires_grad_(False)


def _classifier(model, cache, classes=CLASSES, templates=TEMPLATES):
    prompts = class_prompts(classes, templates)
    return zero_shot_classifier(model, "ViT-M-16", 16, classes, prompts, "cpu", cache)


def test_a_second_build_comes_from_the_cache_and_the_file_loads_as_a_plain_tensor(
    teacher, tmp_path
):
    cache = ClassifierCache(tmp_path)
    first = _classifier(teacher, cache)
    assert not first.from_cache and first.path == tmp_path / f"{first.key}.pt"
    assert first.weights.shape == (32, 3)
    torch.testing.assert_close(first.weights.norm(dim=0), torch.ones(3))
    second = _classifier(teacher, cache)
    assert second.from_cache and second.key == first.key
    assert torch.equal(second.weights, first.weights)
    # clip_benchmark's --load_clfs: torch.load(path, map_location="cpu") of the file alone
    assert torch.equal(torch.load(first.path, map_location="cpu"), first.weights)
    info = json.loads((tmp_path / f"{first.key}.json").read_text())
    assert info["classnames"] == CLASSES and info["prompts_per_class"] == [2]


def test_anything_that_changes_the_classifier_changes_the_key(teacher, tmp_path):
    cache = ClassifierCache(tmp_path)
    key = _classifier(teacher, cache).key
    other_templates = [partial(str.format, "a photo of a {}.")]
    assert _classifier(teacher, cache, classes=["cat", "dog", "fish"]).key != key
    assert _classifier(teacher, cache, classes=["dog", "cat", "bird"]).key != key
    assert _classifier(teacher, cache, templates=other_templates).key != key
    changed = load_teacher("ViT-M-16", None, **MODEL_KWARGS).eval().requires_grad_(False)
    changed.load_state_dict(teacher.state_dict())
    with torch.no_grad():
        changed.ln_final.bias.add_(1e-3)
    assert _classifier(changed, cache).key != key
    # none of them is served the first classifier
    assert len(list(tmp_path.glob("*.pt"))) == 5
    prompts = class_prompts(CLASSES, TEMPLATES)
    same = classifier_key("tower", "ViT-M-16", 16, CLASSES, prompts)
    assert classifier_key("tower", "ViT-M-16", 16, CLASSES, prompts) == same
    assert classifier_key("tower", "ViT-M-16", 77, CLASSES, prompts) != same
    assert classifier_key("tower", "ViT-B-32", 16, CLASSES, prompts) != same
    assert classifier_key("other", "ViT-M-16", 16, CLASSES, prompts) != same


def test_a_gs_clip_reuses_its_teachers_classifier(teacher, tmp_path):
    cache = ClassifierCache(tmp_path)
    built = _classifier(teacher, cache)
    gs = build_gs_clip(
        GSModelConfig(model_kwargs=MODEL_KWARGS, num_tokens=4, latent_dim=32, stem_dim=32),
        teacher=copy.deepcopy(teacher),
    )
    assert any(p.requires_grad for p in gs.parameters())  # as in training: stem and blocks
    reused = _classifier(gs.eval(), cache)  # its text tower is frozen
    assert reused.from_cache and reused.key == built.key


def test_a_text_tower_that_trains_is_never_cached(tmp_path):
    model = load_teacher("ViT-M-16", None, **MODEL_KWARGS)  # requires_grad: training
    out = _classifier(model, ClassifierCache(tmp_path))
    assert out.path is None and not list(tmp_path.iterdir())


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_tensor", "no_json"])
def test_a_damaged_entry_is_rebuilt_with_a_warning(teacher, tmp_path, caplog, damage):
    cache = ClassifierCache(tmp_path)
    first = _classifier(teacher, cache)
    pt, meta = first.path, tmp_path / f"{first.key}.json"
    if damage == "garbage":
        pt.write_bytes(b"not a zip at all")
    elif damage == "truncated":
        pt.write_bytes(pt.read_bytes()[:100])
    elif damage == "other_tensor":
        torch.save(first.weights + 0.5, pt)
    else:
        meta.unlink()
    with caplog.at_level(logging.WARNING, logger="streamfit.eval"):
        again = _classifier(teacher, cache)
    assert "damaged" in caplog.text and str(pt) in caplog.text
    assert not again.from_cache
    torch.testing.assert_close(again.weights, first.weights)
    assert _classifier(teacher, cache).from_cache  # rebuilt whole


def test_cache_settings():
    assert open_cache("none") is None
    assert open_cache("").directory.name == "zeroshot_classifiers"
    assert str(open_cache("/x/y").directory) == "/x/y"
