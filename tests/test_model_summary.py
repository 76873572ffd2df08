"""tools/model_summary.py run as a program: the paper's ViT-M-16 figures and a tiny config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "model_summary.py"

TINY_YAML = """\
model:
  model_name: ViT-M-16
  model_kwargs:
    embed_dim: 32
    vision_cfg: {image_size: 32, layers: 4, width: 64, head_width: 32, patch_size: 8}
    text_cfg: {context_length: 16, vocab_size: 100, width: 32, heads: 2, layers: 2}
  num_tokens: 8
  latent_dim: 32
  stem_dim: 32
  resampler_heads: 2
train:
  lr: 0.001
"""


def run_tool(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_vit_m16_summary(tmp_path):
    out = run_tool("--json", str(tmp_path / "summary.json"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["vision_params_rgb"] == 38_587_392  # 38.6M
    assert 0.06 < summary["trainable_fraction"] < 0.085
    assert summary["gs_trainable_params"] < summary["gs_total_params"]
    assert summary["embed_dim"] == 512
    assert "trainable fraction of GS-CLIP: 7." in out
    lr_scales = {g["name"]: g["lr_scale"] for g in summary["param_groups"]}
    assert lr_scales["gs_input"] == 1.0 and lr_scales["backbone"] == 0.1


def test_recipe_config_with_overrides(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text(TINY_YAML)
    run_tool("--config", str(config), "from_scratch=true", "--json", str(tmp_path / "s.json"))
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["config"]["num_tokens"] == 8 and summary["config"]["from_scratch"]
    assert summary["trainable_fraction"] == 1.0
    assert summary["embed_dim"] == 32
