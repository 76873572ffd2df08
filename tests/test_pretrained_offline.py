"""Adapting from a public open_clip checkpoint with no network: ``model.pretrained=TAG`` with
``HF_HUB_OFFLINE=1`` and a warm Hugging Face cache. The cache is built here from a small,
randomly initialised open_clip model saved under the file names the tag resolves to (the
real weights are too large for a test); proxies that refuse every connection make sure that
nothing is fetched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip.factory
import pytest
import torch
import yaml
from open_clip.pretrained import get_pretrained_cfg
from safetensors.torch import save_file
from tiny_models import TINY_CLIP

from streamfit.data.synthetic import write_synthetic_dataset
from streamfit.models import load_teacher

REPO = Path(__file__).resolve().parents[1]
# a process group made in this pytest process (other tests) must not leak its rank or port
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
MODEL, TAG = "ViT-B-16", "datacomp_xl_s13b_b90k"
MODEL_KWARGS = TINY_CLIP
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def warm_hf_cache(hf_home: Path, state: dict[str, torch.Tensor]) -> Path:
    """Put ``state`` where ``hf_hub_download`` finds the tag's weights offline: the Hub cache
    layout (``models--org--name/refs/main`` naming a snapshot that holds the file)."""
    repo_id = get_pretrained_cfg(MODEL, TAG)["hf_hub"].rstrip("/")
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    path = snapshot / "open_clip_model.safetensors"  # open_clip's first choice of file
    save_file({k: v.contiguous() for k, v in state.items()}, path)
    return path


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    root = tmp_path_factory.mktemp("offline")
    torch.manual_seed(0)
    state = load_teacher(MODEL, None, **MODEL_KWARGS).state_dict()
    warm_hf_cache(root / "hf", state)
    data = write_synthetic_dataset(root / "data", 16, 16, image_size=16, shard_size=16)
    dead = "http://127.0.0.1:9"  # the discard port: every connection is refused
    env = {
        **{k: v for k, v in os.environ.items() if k not in DIST_VARS},
        "HF_HOME": str(root / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HTTP_PROXY": dead,
        "HTTPS_PROXY": dead,
        "ALL_PROXY": dead,
        "NO_PROXY": "",
    }
    return {"root": root, "state": state, "data": data, "env": env}


def _run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


def test_the_adapt_recipe_adapts_from_a_pretrained_tag_offline(offline):
    root, data = offline["root"], offline["data"]
    config = {
        "run": {"name": "tag", "dir": str(root / "runs")},
        "data": {
            "shards": data.train, "image_size": 16, "batch_size": 8, "shuffle_buffer": 8,
            "decode_workers": 0, "cache_dir": str(root / "cache"), "context_length": 16,
            "tokenizer": MODEL, "log_every": 0,
        },
        "fit": {"gaussians": 8, "iters": 2, "backend": "torch"},
        "model": {
            "model_name": MODEL, "pretrained": TAG, "model_kwargs": MODEL_KWARGS,
            "num_tokens": 4, "latent_dim": 32, "stem_dim": 32, "resampler_layers": 1,
            "resampler_heads": 2, "unfrozen_blocks": 1,
        },
        "train": {"epochs": 1, "lr": 1e-3, "warmup_steps": 1, "log_every": 1, "progress": False,
                  "stop_after_steps": 1},
    }  # fmt: skip
    path = root / "tag.yaml"
    path.write_text(yaml.safe_dump(config))
    run = _run(["recipes/gsclip_adapt.py", "--config", str(path)], offline["env"])
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "stopped after 1 steps" in run.stdout
    # the frozen text tower is the tag's weights, not a random initialisation
    ckpt = root / "runs" / "tag" / "checkpoints"
    tag_dir = ckpt / (ckpt / "latest").read_text().strip()
    module = torch.load(tag_dir / "mp_rank_00_model_states.pt", weights_only=False)["module"]
    for name in ("token_embedding.weight", "text_projection", "ln_final.weight"):
        assert torch.equal(module[f"clip.{name}"].float(), offline["state"][name]), name


def test_zeroshot_eval_takes_a_pretrained_tag_offline(offline):
    root, data = offline["root"], offline["data"]
    out = root / "zs.json"
    run = _run(
        [
            "tools/zeroshot_eval.py", "--model", MODEL, "--pretrained", TAG,
            "--model-kwargs", json.dumps(MODEL_KWARGS), "--data", data.heldout,
            "--classnames", str(root / "data" / "classes.json"), "--json", str(out),
        ],
        offline["env"],
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads(out.read_text())["samples"] == 16


def test_a_tag_missing_from_the_offline_cache_or_unknown_is_a_clear_error(monkeypatch):
    def offline_miss(*args, **kwargs):
        raise OSError("cannot find the requested files in the local cache")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline_miss)
    with pytest.raises(FileNotFoundError, match="are neither downloadable nor in the Hugging"):
        load_teacher(MODEL, TAG, **MODEL_KWARGS)
    with pytest.raises(FileNotFoundError, match="neither a file nor an open_clip pretrained tag"):
        load_teacher(MODEL, "no_such_tag")
