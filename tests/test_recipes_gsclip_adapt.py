"""Integration tests of ``recipes/gsclip_adapt.py``: the real entry point in a subprocess with
a tiny config. Resume equivalence (N steps straight == N/2, stop, resume, N/2), the atomic
checkpoint layout, the summary, and the loader state (no sample twice, none missed); a
teacher pre-trained first, with a validation split choosing both stages' models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from tiny_models import TINY_CLIP

from streamfit.data.synthetic import write_split, write_synthetic_dataset
from streamfit.eval.weights import read_weights
from streamfit.models import load_teacher
from streamfit.train.checkpoint import save_weights

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "gsclip_adapt.py"
MODEL_KWARGS = TINY_CLIP
N_TRAIN = 48  # 4 shards of 12, batches of 8: 6 batches an epoch


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A synthetic dataset, a random teacher checkpoint and a tiny config file."""
    root = tmp_path_factory.mktemp("adapt")
    data = write_synthetic_dataset(root / "data", N_TRAIN, 16, image_size=16, shard_size=12)
    teacher = root / "teacher.pt"
    save_weights(load_teacher("ViT-M-16", None, **MODEL_KWARGS).state_dict(), teacher)
    config = {
        "run": {"name": "tiny", "dir": str(root / "runs"), "record_samples": True},
        "data": {
            "shards": data.train,
            "image_size": 16,
            "batch_size": 8,
            "shuffle_buffer": 16,
            "decode_workers": 0,
            "cache_dir": str(root / "cache"),
            "context_length": 16,
            "tokenizer": "ViT-M-16",
            "log_every": 0,
        },
        "fit": {"gaussians": 16, "iters": 3, "backend": "torch"},
        "model": {
            "model_name": "ViT-M-16",
            "pretrained": str(teacher),
            "model_kwargs": MODEL_KWARGS,
            "num_tokens": 8,
            "latent_dim": 32,
            "stem_dim": 32,
            "resampler_layers": 1,
            "resampler_heads": 2,
            "unfrozen_blocks": 1,
        },
        "train": {"epochs": 2, "lr": 1e-3, "warmup_steps": 2, "log_every": 1, "progress": False},
        "eval": {"data": data.heldout, "classnames": str(root / "data" / "classes.json")},
    }
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"root": root, "config": path, "data": data}


def run_recipe(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    # a process group made in this pytest process (other tests) must not leak its rank or port
    dist_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    return subprocess.run(
        [sys.executable, str(RECIPE), "--config", str(config), *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    tag = (run_dir / "checkpoints" / "latest").read_text().strip()
    return read_weights(run_dir / "checkpoints" / tag)


def test_resume_gives_the_same_parameters_as_a_straight_run(tiny):
    straight = run_recipe(tiny["config"], "run.name=straight")
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    # 12 steps in all: stop after 5 (mid-epoch 0), then resume to the end
    first = run_recipe(tiny["config"], "run.name=resumed", "train.stop_after_steps=5")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped after 5 steps" in first.stdout
    second = run_recipe(tiny["config"], "run.name=resumed")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout

    a = final_params(tiny["root"] / "runs" / "straight")
    b = final_params(tiny["root"] / "runs" / "resumed")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)

    # every training sample exactly once per epoch, across the interruption
    for name in ("straight", "resumed"):
        rows = (tiny["root"] / "runs" / name / "samples_rank0.tsv").read_text().split()
        per_epoch = Counter(zip(rows[::2], rows[1::2], strict=True))
        assert set(per_epoch.values()) == {1}
        assert Counter(epoch for epoch, _ in per_epoch) == {"0": N_TRAIN, "1": N_TRAIN}

    # the loss curve continues: the resumed run logged each step once, 1..12
    records = [
        json.loads(line)
        for line in (tiny["root"] / "runs" / "resumed" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 13))

    # the summary of a finished run, and atomic checkpoints: latest names a complete one
    summary = json.loads((tiny["root"] / "runs" / "resumed" / "summary.json").read_text())
    for key in ("gs_top1", "chance_top1", "compression_ratio", "splats_per_image", "wall_seconds"):
        assert summary[key] is not None, key
    assert summary["chance_top1"] == pytest.approx(1 / 16)
    assert summary["compression_ratio"] == pytest.approx(16 * 16 * 3 / (16 * 16))
    ckpts = tiny["root"] / "runs" / "resumed" / "checkpoints"
    tag = (ckpts / "latest").read_text().strip()
    assert {"loader_rank000.pt", "config.yaml", "mp_rank_00_model_states.pt"} <= {
        p.name for p in (ckpts / tag).iterdir()
    }
    assert not list(ckpts.glob(".tmp-*"))
    assert str(tiny["root"] / "runs" / "resumed" / "summary.json") in second.stdout.splitlines()[-1]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_validation_split_chooses_the_models_and_the_held_out_split_measures_them(tiny):
    root = tiny["root"]
    val = write_split(root / "data", "val", 16, 16, 8, seed=1)
    config = yaml.safe_load(tiny["config"].read_text())
    teacher = {
        "run": {"name": "unused"},
        "data": {k: v for k, v in config["data"].items() if k != "cache_dir"},
        "model": {k: config["model"][k] for k in ("model_name", "model_kwargs")},
        "train": {**config["train"], "epochs": 3},
        "eval": {**config["eval"], "val_data": val},
    }
    teacher_path = root / "teacher.yaml"
    teacher_path.write_text(yaml.safe_dump(teacher))
    run = run_recipe(
        tiny["config"],
        "run.name=val",
        "model.pretrained=null",
        f"teacher_config={teacher_path}",
        f"eval.val_data={val}",
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    run_dir = root / "runs" / "val"
    summary = json.loads((run_dir / "summary.json").read_text())
    for stage_dir, prefix in ((run_dir / "teacher", "rgb"), (run_dir, "gs")):
        records = _records(stage_dir)
        chose = [r for r in records if r["kind"] == "val"]
        measured = [r for r in records if r["kind"] == "heldout"]
        # every epoch evaluated on the validation split, the held-out split once, at the end
        assert len(chose) == (3 if prefix == "rgb" else 2) and len(measured) == 1
        assert not [r for r in records if r["kind"] == "eval"]
        assert summary[f"{prefix}_val_top1"] == max(r["top1"] for r in chose)
        assert summary[f"{prefix}_top1"] == measured[0]["top1"]
        assert summary[f"{prefix}_top5"] == measured[0]["top5"]
        assert (stage_dir / "best_model.pt").is_file()
    assert summary["teacher"] == str(run_dir / "teacher" / "best_model.pt")
    assert "validation top-1, RGB teacher" in run.stdout
    assert "zero-shot top-5, RGB teacher" in run.stdout


def test_the_rgb_reference_trains_the_teacher_on_pixels_with_the_same_parts_frozen(tiny):
    """``data.fit=none``: no fitting, no cache; the teacher itself trains on pixels with what
    GS-CLIP would train of it, and is evaluated on pixels."""
    run = run_recipe(tiny["config"], "run.name=rgb", "data.fit=none", "train.epochs=1")
    assert run.returncode == 0, run.stderr[-3000:]
    run_dir = tiny["root"] / "runs" / "rgb"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["cache_hit_rate"] is None and summary["gs_top1"] is not None
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "train" and r["samples_per_s"] > 0 for r in records)
    trained = final_params(run_dir)
    teacher = torch.load(tiny["root"] / "teacher.pt", weights_only=True)
    changed = {k for k, v in trained.items() if not torch.equal(v.float(), teacher[k].float())}
    assert (
        "visual.conv1.weight" in changed
        and "visual.transformer.resblocks.0.attn.in_proj_weight" in changed
    )
    assert not any(k.startswith(("transformer.", "token_embedding")) for k in changed)
    assert not any(k.startswith("visual.transformer.resblocks.1.") for k in changed)
