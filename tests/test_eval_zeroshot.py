"""Zero-shot evaluation agrees with open_clip's own classifier and evaluation loop
(``build_zero_shot_classifier`` + ``open_clip_train.zero_shot.run``) on the same model and
images; tools/zeroshot_eval.py end to end on an RGB model and a GS checkpoint's run."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import open_clip_train.zero_shot as open_clip_zero_shot
import pytest
import torch
from open_clip import build_zero_shot_classifier, get_tokenizer
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from tiny_models import TINY_CLIP

from streamfit.data.synthetic import write_synthetic_dataset
from streamfit.eval import ZeroShotTally, load_classnames, load_templates
from streamfit.models import load_teacher
from streamfit.train.checkpoint import save_weights

REPO = Path(__file__).resolve().parents[1]
MODEL_KWARGS = TINY_CLIP


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("zs")
    data = write_synthetic_dataset(root / "data", 16, 64, image_size=16, shard_size=32)
    torch.manual_seed(0)
    model = load_teacher("ViT-M-16", None, **MODEL_KWARGS).eval()
    weights = root / "model.pt"
    save_weights(model.state_dict(), weights)
    return SimpleNamespace(root=root, data=data, model=model, weights=weights)


def _accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """open_clip_train's ``accuracy`` with ``.item()``: its numpy ``float()`` of a 1-element
    array fails under numpy 2."""
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() for k in topk]


def _open_clip_reference(setup, monkeypatch) -> tuple[float, float, torch.Tensor]:
    """open_clip's pipeline: its preprocessing, classifier and evaluation loop."""
    monkeypatch.setattr(open_clip_zero_shot, "accuracy", _accuracy)
    model = setup.model
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    images, labels = [], []
    for shard in sorted((setup.root / "data").glob("heldout-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name in sorted(n for n in members if n.endswith(".png")):
            key = name[: -len(".png")]
            images.append(preprocess(Image.open(io.BytesIO(members[name]))))
            labels.append(json.loads(members[f"{key}.json"])["label"])
    tokenizer = get_tokenizer("ViT-M-16", context_length=16)
    classifier = build_zero_shot_classifier(
        model,
        tokenizer=tokenizer,
        classnames=setup.data.classnames,
        templates=load_templates("", str(setup.root / "data" / "classes.json")),
        device="cpu",
        use_tqdm=False,
    )
    loader = torch.utils.data.DataLoader(
        list(zip(images, torch.tensor(labels), strict=True)), batch_size=20
    )
    args = SimpleNamespace(device="cpu", precision="fp32", batch_size=20)
    top1, top5 = open_clip_zero_shot.run(model, classifier, loader, args)
    return top1, top5, classifier


def test_tool_agrees_with_open_clip_on_an_rgb_model(setup, tmp_path, monkeypatch, program):
    ref_top1, ref_top5, _ = _open_clip_reference(setup, monkeypatch)
    out = program("tools/zeroshot_eval").main(
        [
            "--model", "ViT-M-16",
            "--pretrained", str(setup.weights),
            "--model-kwargs", json.dumps(MODEL_KWARGS),
            "--data", setup.data.heldout,
            "--classnames", str(setup.root / "data" / "classes.json"),
            "--batch-size", "24",
            "--json", str(tmp_path / "out.json"),
            "--per-class-csv", str(tmp_path / "classes.csv"),
        ]
    )  # fmt: skip
    assert out["samples"] == 64
    assert out["top1"] == pytest.approx(ref_top1, abs=1e-9)
    assert out["top5"] == pytest.approx(ref_top5, abs=1e-9)
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["top1"] == pytest.approx(ref_top1)
    rows = (tmp_path / "classes.csv").read_text().splitlines()
    assert rows[0] == "class_index,classname,samples,top1"
    assert len(rows) == 1 + 16
    counts = [int(r.split(",")[2]) for r in rows[1:]]
    assert sum(counts) == 64


def test_tally_matches_open_clip_accuracy_on_given_logits():
    torch.manual_seed(1)
    features = torch.nn.functional.normalize(torch.randn(50, 8), dim=-1)
    classifier = torch.nn.functional.normalize(torch.randn(8, 7), dim=0)
    labels = torch.randint(0, 7, (50,))
    tally = ZeroShotTally([str(i) for i in range(7)])
    tally.add(features[:30], classifier, labels[:30])
    tally.add(features[30:], classifier, labels[30:])
    result = tally.result()
    logits = 100 * features @ classifier
    top5 = logits.topk(5, dim=1).indices
    assert result.top1 == pytest.approx(float((top5[:, 0] == labels).float().mean()))
    assert result.top5 == pytest.approx(float((top5 == labels[:, None]).any(1).float().mean()))
    for c in range(7):
        rows = labels == c
        expected = float((top5[rows, 0] == c).float().mean()) if rows.any() else None
        assert result.per_class_top1[c] == (
            pytest.approx(expected) if expected is not None else None
        )


def test_class_lists_and_templates(tmp_path):
    assert len(load_classnames("imagenet")) == 1000
    assert len(load_templates("openai")) == 80
    names = tmp_path / "names.txt"
    names.write_text("cat\n\ndog\n")
    assert load_classnames(str(names)) == ["cat", "dog"]
    templates = tmp_path / "templates.txt"
    templates.write_text("a photo of a {}.\n")
    assert [t("cat") for t in load_templates(str(templates))] == ["a photo of a cat."]
    templates.write_text("no placeholder\n")
    with pytest.raises(ValueError, match="need a"):
        load_templates(str(templates))


def test_the_tool_evaluates_without_the_training_package():
    # evaluation is a library below training: the tool must load without streamfit.train
    code = (
        f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r})\n"
        "from programs import load_program\n"
        "load_program('tools/zeroshot_eval')\n"
        "print(sorted(m for m in sys.modules if m.startswith('streamfit.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    loaded = ast.literal_eval(out.stdout)
    assert "streamfit.eval.evaluate" in loaded
    assert not [m for m in loaded if m.startswith("streamfit.train")]
