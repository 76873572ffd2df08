"""Finding and reading the weights a training run left behind, for evaluating it after the
fact: the chosen ``best_model.pt`` when the run kept one, else the checkpoint ``latest``
names (the layout :mod:`streamfit.train.checkpoint` writes)."""

from __future__ import annotations

from pathlib import Path

import torch

LATEST = "latest"  # the file in a run's checkpoints/ that names its newest complete checkpoint
BEST = "best_model.pt"
MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's model file in a checkpoint


def locate_weights(path: Path, is_run: bool) -> tuple[Path, Path]:
    """(config.yaml, weights: a state-dict file or a checkpoint directory) of a run directory
    (``is_run``) or of one checkpoint directory; FileNotFoundError names what is missing."""
    if is_run:
        if (path / BEST).is_file():
            return path / "config.yaml", path / BEST
        latest = path / "checkpoints" / LATEST
        if not latest.is_file():
            raise FileNotFoundError(f"{path}: no {BEST} and no checkpoints/{LATEST}")
        path = path / "checkpoints" / latest.read_text().strip()
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(f"{path} has no config.yaml (not a streamfit run or checkpoint)")
    return path / "config.yaml", path


def read_weights(weights: Path) -> dict[str, torch.Tensor]:
    """The model's state dict from a weights file or a checkpoint directory."""
    if weights.is_dir():
        # DeepSpeed's model states: pickled by DeepSpeed itself, not a plain tensor file
        states = torch.load(weights / MODEL_STATES, weights_only=False)
        return states["module"]
    return torch.load(weights, weights_only=True)
