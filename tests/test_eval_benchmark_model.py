"""streamfit runs as clip_benchmark models: the GS and RGB model types encode the images of a
split as ``tools/zeroshot_eval.py`` does, share its cached classifier, fit through the splat
cache, and refuse a directory that is no run. With clip_benchmark installed, its own CLI
(``tools/clip_benchmark.py``) gives the top-1/top-5 ``zeroshot_eval.py`` gives on the demo's
held-out split in clip_benchmark's layout; without it those tests skip."""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import tarfile
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import TINY_CLIP

from streamfit.config import load_config, save_config
from streamfit.data import DataConfig
from streamfit.data.synthetic import write_synthetic_dataset
from streamfit.eval import EvalConfig, LabelledLoader, class_prompts, zero_shot_setup
from streamfit.eval.benchmark_model import PixelTransform, load_benchmark_model
from streamfit.eval.run_model import NotARun
from streamfit.fit import FitConfig, FitGraphs, get_backend
from streamfit.models import GSModelConfig, RGBModelConfig, build_gs_clip, load_teacher
from streamfit.train.checkpoint import save_weights
from streamfit.train.config import AdaptConfig, RGBPretrainConfig

REPO = Path(__file__).resolve().parents[1]
MODEL_KWARGS = TINY_CLIP
HAS_CLIP_BENCHMARK = importlib.util.find_spec("clip_benchmark") is not None
needs_clip_benchmark = pytest.mark.skipif(
    not HAS_CLIP_BENCHMARK, reason="clip_benchmark not installed (pip install -e '.[eval]')"
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A synthetic dataset and two finished runs on it: an RGB teacher and a GS-CLIP of it."""
    root = tmp_path_factory.mktemp("bench")
    data = write_synthetic_dataset(root / "data", 16, 40, image_size=16, shard_size=16)
    classes = str(root / "data" / "classes.json")
    data_cfg = DataConfig(
        shards=data.train, image_size=16, tokenizer="ViT-M-16", context_length=16,
        cache_dir=str(root / "splat_cache"),
    )  # fmt: skip
    eval_cfg = EvalConfig(data=data.heldout, classnames=classes, batch_size=16)
    torch.manual_seed(0)
    teacher = load_teacher("ViT-M-16", None, **MODEL_KWARGS)
    rgb_dir = root / "runs" / "teacher"
    save_config(
        RGBPretrainConfig(
            data=data_cfg, model=RGBModelConfig(model_kwargs=MODEL_KWARGS), eval=eval_cfg
        ),
        _mkdir(rgb_dir) / "config.yaml",
    )
    save_weights(teacher.state_dict(), rgb_dir / "best_model.pt")
    gs_model = GSModelConfig(
        model_kwargs=MODEL_KWARGS, num_tokens=4, latent_dim=32, stem_dim=32, resampler_heads=2
    )
    gs = build_gs_clip(gs_model, teacher=copy.deepcopy(teacher))
    fit = FitConfig(gaussians=16, iters=3, backend="torch")
    gs_dir = root / "runs" / "gs"
    save_config(
        AdaptConfig(data=data_cfg, fit=fit, model=gs_model, eval=eval_cfg),
        _mkdir(gs_dir) / "config.yaml",
    )
    save_weights(gs.state_dict(), gs_dir / "best_model.pt")
    return SimpleNamespace(root=root, data=data, classes=classes, rgb=rgb_dir, gs=gs_dir)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def _heldout_images(runs) -> tuple[list[Image.Image], list[int]]:
    images, labels = [], []
    for shard in sorted((runs.root / "data").glob("heldout-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name in sorted(n for n in members if n.endswith(".png")):
            images.append(Image.open(io.BytesIO(members[name])))
            labels.append(json.loads(members[name[:-4] + ".json"])["label"])
    return images, labels


def test_the_gs_type_encodes_as_the_zero_shot_evaluation_does_and_caches_its_fits(runs, tmp_path):
    model, transform, tokenizer = load_benchmark_model(
        "gs", runs.gs, splat_cache=str(tmp_path / "splats")
    )
    images, _ = _heldout_images(runs)
    pixels = torch.stack([transform(im) for im in images])
    assert pixels.shape == (40, 3, 16, 16) and pixels.dtype == torch.uint8
    # clip_benchmark's batches need not be the evaluation's: fits do not depend on them
    features = torch.cat([model.encode_image(pixels[:24]), model.encode_image(pixels[24:])])
    assert model.splat_summary()["fitted"] == 40 and model.cache_hits == 0

    setup = zero_shot_setup(EvalConfig(data=runs.data.heldout, classnames=runs.classes))
    fit = FitConfig(gaussians=16, iters=3, backend="torch")
    data_cfg = DataConfig(image_size=16, tokenizer="ViT-M-16", context_length=16)
    loader = LabelledLoader(
        setup.cfg.data, data_cfg, 40, torch.device("cpu"), fit, FitGraphs(fit, get_backend("torch"))
    )
    batch = next(iter(loader))
    expected = model.model.encode_splats(batch.splats)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)

    again = model.encode_image(pixels)  # the run's splat cache now holds every image
    assert model.cache_hits == 40 and model.fitted == 40
    torch.testing.assert_close(again, features, rtol=1e-5, atol=1e-5)

    # the zero-shot classifier is the one zeroshot_eval.py and training cache
    prompts = class_prompts(setup.classnames, setup.templates)
    mine = model.zero_shot_classifier(setup.classnames, prompts)
    theirs = setup.classifier(model.model, data_cfg, torch.device("cpu"))
    assert theirs.from_cache and theirs.key == mine.key
    assert tokenizer(["a picture of the star."]).shape == (1, 16)


def test_the_gs_type_stores_splats_in_the_runs_splat_format(runs, tmp_path):
    """A run trained on fp16 splats is evaluated on fp16 splats, as its own loader gives them."""
    cfg = load_config(AdaptConfig, runs.gs / "config.yaml")
    cfg.data.splat_format = "fp16"
    run = _mkdir(tmp_path / "gs_fp16")
    save_config(cfg, run / "config.yaml")
    (run / "best_model.pt").write_bytes((runs.gs / "best_model.pt").read_bytes())
    model, transform, _ = load_benchmark_model("gs", run, splat_cache="")
    assert model.splat_source.splat_format == "fp16"
    images, _ = _heldout_images(runs)
    features = model.encode_image(torch.stack([transform(im) for im in images[:8]]))

    setup = zero_shot_setup(EvalConfig(data=runs.data.heldout, classnames=runs.classes))
    data_cfg = replace(cfg.data, cache_dir="", shards="")
    loader = LabelledLoader(setup.cfg.data, data_cfg, 8, torch.device("cpu"), cfg.fit)
    expected = model.model.encode_splats(next(iter(loader)).splats)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


def test_the_rgb_type_normalises_as_the_model_wants(runs):
    model, transform, _ = load_benchmark_model("rgb", runs.rgb)
    images, _ = _heldout_images(runs)
    pixels = torch.stack([transform(im) for im in images[:8]])
    features = model.encode_image(pixels)
    rgb = pixels.float() / 255
    mean = torch.tensor(model.model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(features, model.model.encode_image((rgb - mean) / std))


def test_the_transform_makes_the_decoders_pixels():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (30, 50, 3), dtype=np.uint8))
    encoded = io.BytesIO()
    photo.save(encoded, format="PNG")
    from streamfit.data.decode import decode_image

    expected = decode_image(encoded.getvalue(), 16, 10**8)
    got = PixelTransform(16)(Image.open(io.BytesIO(encoded.getvalue())))
    assert np.array_equal(got.permute(1, 2, 0).numpy(), expected)


def test_a_directory_that_is_no_run_or_the_wrong_kind_is_refused(runs, tmp_path):
    with pytest.raises(NotARun, match="expected a streamfit run directory"):
        load_benchmark_model("gs", tmp_path)
    with pytest.raises(NotARun, match="not a directory"):
        load_benchmark_model("gs", tmp_path / "missing")
    with pytest.raises(NotARun, match="model type streamfit_gs"):
        load_benchmark_model("rgb", runs.gs)
    with pytest.raises(NotARun, match="model type streamfit_rgb"):
        load_benchmark_model("gs", runs.rgb)


def test_zeroshot_eval_of_a_run_evaluates_as_its_eval_section_says(runs, tmp_path, program):
    tool = program("tools/zeroshot_eval")
    out = tool.main(["--run", str(runs.gs), "--classifier-cache", str(tmp_path)])
    assert (out["samples"], out["classes"], out["model"]) == (40, 16, "gs")
    assert out["data"] == runs.data.heldout and out["classifier_from_cache"] == 0.0
    again = tool.main(["--run", str(runs.rgb), "--classifier-cache", str(tmp_path)])
    assert again["model"] == "rgb" and again["classifier_from_cache"] == 1.0  # the teacher's
    assert tool.main(["--run", str(runs.gs), "max_samples=8"])["samples"] == 8


def test_topk_accuracy_is_clip_benchmarks_without_its_numpy_bug(program):
    tool = program("tools/clip_benchmark")
    torch.manual_seed(0)
    logits, labels = torch.randn(50, 7), torch.randint(0, 7, (50,))
    top = logits.topk(5, dim=1).indices
    expected = [float((top[:, :k] == labels[:, None]).any(1).float().mean()) for k in (1, 5)]
    assert tool.topk_accuracy(logits, labels, topk=(1, 5)) == pytest.approx(expected)


@needs_clip_benchmark
@pytest.mark.parametrize("kind", ["gs", "rgb"])
def test_clip_benchmark_gives_the_zero_shot_evaluations_figures(runs, tmp_path, kind, program):
    run = runs.gs if kind == "gs" else runs.rgb
    out = tmp_path / "out.json"
    rc = program("tools/clip_benchmark").main(
        [
            "eval", "--model_type", f"streamfit_{kind}", "--model", str(run),
            "--dataset", "wds/shapes", "--dataset_root", runs.data.clip_benchmark,
            "--output", str(out), "--num_workers", "0", "--batch_size", "16",
        ]
    )  # fmt: skip
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["pretrained"] == "streamfit"
    reference = program("tools/zeroshot_eval").main(["--run", str(run)])  # the run's own eval split
    assert reference["samples"] == 40
    assert result["metrics"]["acc1"] == pytest.approx(reference["top1"], abs=1e-9)
    assert result["metrics"]["acc5"] == pytest.approx(reference["top5"], abs=1e-9)


@needs_clip_benchmark
def test_clip_benchmark_refuses_a_directory_that_is_no_run(tmp_path, capsys, program):
    rc = program("tools/clip_benchmark").main(
        ["eval", "--model_type", "streamfit_gs", "--model", str(tmp_path), "--dataset", "wds/x",
         "--dataset_root", str(tmp_path), "--num_workers", "0"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("error:") and "expected a streamfit run directory" in err
