"""A finished run's model, ready to evaluate: an RGB CLIP (an RGB pre-training run) or a
GS-CLIP (an adaptation run, with the settings its splats are fitted with), built from the
run's own ``config.yaml`` and weights. ``tools/zeroshot_eval.py`` and the clip_benchmark model
types both load runs this way."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import yaml

from streamfit.config import load_config
from streamfit.data import DataConfig
from streamfit.eval.weights import BEST, LATEST, MODEL_STATES, locate_weights, read_weights
from streamfit.fit import FitConfig
from streamfit.models import GSModelConfig, RGBModelConfig, build_gs_clip, load_teacher

EXPECTED = (
    f"a streamfit run directory (config.yaml with {BEST} or checkpoints/{LATEST}) or a "
    f"checkpoint directory (config.yaml and {MODEL_STATES})"
)


class NotARun(ValueError):
    """A path that holds no streamfit run or checkpoint (the message names what was expected)."""


@dataclass
class RunModel:
    """A run's model in eval mode on the CPU, float32, every parameter frozen (it is only
    evaluated, so its zero-shot classifier may be cached), with the run's decode and
    tokenizer settings (``data``) and, for GS-CLIP, its fitting settings (``fit``)."""

    model: torch.nn.Module
    data: DataConfig
    fit: FitConfig | None
    config: Path
    weights: Path

    @property
    def kind(self) -> str:
        """``gs`` or ``rgb``."""
        return "rgb" if self.fit is None else "gs"


def is_run_dir(path: Path) -> bool:
    """A run directory (rather than one checkpoint): it has the chosen weights or a
    ``checkpoints/latest``."""
    return (path / BEST).is_file() or (path / "checkpoints" / LATEST).is_file()


def load_run(path: str | Path, is_run: bool | None = None) -> RunModel:
    """The model of a run directory (``is_run``; its ``best_model.pt``, else its latest
    checkpoint) or of one checkpoint directory; ``is_run=None`` tells them apart.

    Raises :class:`NotARun` naming what was expected when ``path`` holds neither.
    """
    path = Path(path)
    if not path.is_dir():
        raise NotARun(f"{path} is not a directory; expected {EXPECTED}")
    try:
        config_path, weights = locate_weights(path, is_run_dir(path) if is_run is None else is_run)
        if weights.is_dir() and not (weights / MODEL_STATES).is_file():
            raise FileNotFoundError(f"{weights} has no {MODEL_STATES}")
    except FileNotFoundError as err:
        raise NotARun(f"{err}; expected {EXPECTED}") from None
    # the run's own settings, section by section (the recipe's whole tree is training's)
    data = load_config(DataConfig, config_path, section="data")
    fit_cfg = None
    if "fit" in yaml.safe_load(config_path.read_text()):
        gs = load_config(GSModelConfig, config_path, section="model")
        model = build_gs_clip(replace(gs, pretrained=None, from_scratch=False))
        fit_cfg = load_config(FitConfig, config_path, section="fit")
    else:
        rgb = load_config(RGBModelConfig, config_path, section="model")
        model = load_teacher(rgb.model_name, None, **rgb.model_kwargs)
    state = read_weights(weights)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return RunModel(model.eval().requires_grad_(False), data, fit_cfg, config_path, weights)
