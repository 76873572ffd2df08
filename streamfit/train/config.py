"""The config trees of the training recipes: the data, fitting and model configs of the lower
layers composed with the run, training-loop and evaluation settings defined here.

``streamfit.cli.parse_recipe_args`` turns ``--config FILE key=value ...`` into a validated
tree; ``check_inputs`` then stops a run at start when a file it needs is missing, naming the
key and the path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from streamfit.config import ConfigError, check_at_least, check_choice
from streamfit.data import DataConfig
from streamfit.data.shards import expand_shards
from streamfit.eval.config import EvalConfig
from streamfit.fit import FitConfig
from streamfit.models import GSModelConfig, RGBModelConfig

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class RunConfig:
    """Where a run lives: ``{dir}/{name}/`` holds config.yaml, metrics.jsonl, tensorboard/,
    checkpoints/ and summary.json."""

    name: str = "run"
    """The run's folder name under ``dir``."""
    dir: str = "runs"
    """Where runs live."""
    seed: int = 0
    """Seed of the model's initialisation."""
    resume: str = "auto"
    """auto (the run's latest checkpoint, if any) | none | a checkpoint directory."""
    record_samples: bool = False
    """Append ``epoch<TAB>key`` of every trained sample to ``samples_rank{r}.tsv``."""

    @property
    def path(self) -> Path:
        return Path(self.dir) / self.name


@dataclass
class TrainConfig:
    """The optimisation loop.

    ``lr`` is the base (peak) lr; each parameter group keeps its own multiple of it through
    warm-up and cosine decay to ``min_lr_ratio`` of its peak. ``batch_size`` per rank lives in
    ``data.batch_size``; the global batch is ``data.batch_size * grad_accum * world_size``.
    ``samples_per_epoch`` (all ranks) sizes the schedule; 0 counts the local shards.
    ``stop_after_steps`` ends this invocation (with a checkpoint) after that many optimiser
    steps without changing the schedule: a time-boxed job resumes where it stopped.
    """

    epochs: int = 1
    """Passes over the data."""
    lr: float = 1e-3
    """Base (peak) learning rate."""
    weight_decay: float = 0.2
    """AdamW's weight decay (matrices only)."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW's betas."""
    eps: float = 1e-6
    """AdamW's epsilon."""
    warmup_steps: int = 0
    """Optimiser steps of linear warm-up."""
    min_lr_ratio: float = 0.0
    """The cosine decay ends at this fraction of each group's peak."""
    grad_accum: int = 1
    """Micro-batches a step."""
    grad_clip: float = 0.0
    """Clip the gradients' total norm to this (0: no clipping)."""
    precision: str = "auto"
    """auto (bf16 on a GPU, fp32 on a CPU) | fp32 | bf16 | fp16."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage: 0, 1 or 2."""
    samples_per_epoch: int = 0
    """Samples an epoch over all ranks, sizing the schedule (0: count the local shards)."""
    stop_after_steps: int = 0
    """End this invocation after that many steps, with a checkpoint (0: run to the end)."""
    log_every: int = 10
    """Optimiser steps between log lines."""
    eval_every_steps: int = 0
    """Optimiser steps between zero-shot evaluations (0: at the end of every epoch)."""
    checkpoint_every_steps: int = 0
    """Optimiser steps between checkpoints (0: at the end of every epoch)."""
    keep_checkpoints: int = 2
    """Checkpoints kept (the oldest go first)."""
    save_checkpoints: bool = True
    """False: no checkpoints at all (throughput checks; such a run cannot resume)."""
    peak_tflops: float = 0.0
    """Peak TFLOP/s of one device, for the utilisation figure (0: known GPUs by name)."""
    progress: bool = True
    """A progress bar on rank 0."""
    flush_denormal: bool = False
    """CPU only: flush denormal floats to zero. Random layers underflow into them, and a CPU
    handles them far slower (BENCHMARKS.md)."""

    def __post_init__(self) -> None:
        check_at_least(
            train__epochs=(self.epochs, 1),
            train__grad_accum=(self.grad_accum, 1),
            train__keep_checkpoints=(self.keep_checkpoints, 1),
            train__warmup_steps=(self.warmup_steps, 0),
            train__samples_per_epoch=(self.samples_per_epoch, 0),
            train__stop_after_steps=(self.stop_after_steps, 0),
            train__log_every=(self.log_every, 0),
        )
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        check_choice("train.precision", self.precision, PRECISIONS)
        # ZeRO 3 would shard the weights each rank evaluates with
        check_choice("train.zero_stage", self.zero_stage, (0, 1, 2))
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"train.min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")


@dataclass
class SyntheticConfig:
    """The procedural shapes dataset, written to ``dir`` when ``data.shards`` matches nothing
    and ``generate`` is on (the offline demo)."""

    generate: bool = False
    """Write the dataset when ``data.shards`` matches nothing."""
    dir: str = "data/synthetic"
    """Where it is written."""
    n_train: int = 2000
    """Training samples."""
    n_heldout: int = 400
    """Held-out samples (heldout-*.tar)."""
    n_val: int = 0
    """Validation samples (val-*.tar), drawn apart from the training and held-out ones."""
    image_size: int = 64
    """Side of the square images."""
    shard_size: int = 500
    """Samples a shard."""
    seed: int = 0
    """Seed of the dataset."""


@dataclass
class RGBPretrainConfig:
    """``recipes/rgb_pretrain.py``: open_clip CLIP trained on RGB batches of the data graph."""

    run: RunConfig = field(default_factory=lambda: RunConfig(name="rgb_pretrain"))
    """Where the run lives."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The optimisation loop."""
    data: DataConfig = field(default_factory=lambda: DataConfig(yield_rgb=True))
    """The streaming data (pixels only)."""
    model: RGBModelConfig = field(default_factory=RGBModelConfig)
    """The CLIP to train."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Zero-shot evaluation."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """The demo's dataset, written when ``data.shards`` matches nothing."""


@dataclass
class AdaptConfig:
    """``recipes/gsclip_adapt.py``: GS-CLIP trained on splats fitted in the loader.

    With ``model.pretrained`` unset and ``teacher_config`` naming an RGB pre-training config,
    the teacher is pre-trained first (into ``{run}/teacher``) and its best checkpoint used.
    """

    run: RunConfig = field(default_factory=lambda: RunConfig(name="gsclip_adapt"))
    """Where the run lives."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """The optimisation loop."""
    data: DataConfig = field(default_factory=DataConfig)
    """The streaming data, its splat cache and where fits run."""
    fit: FitConfig = field(default_factory=FitConfig)
    """How the loader fits splats."""
    model: GSModelConfig = field(default_factory=GSModelConfig)
    """GS-CLIP and its teacher."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Zero-shot evaluation."""
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    """The demo's dataset, written when ``data.shards`` matches nothing."""
    teacher_config: str = ""
    """An RGB pre-training config, run first when ``model.pretrained`` is unset."""


def check_inputs(cfg: RGBPretrainConfig | AdaptConfig) -> None:
    """Stop at start, naming the key and path, when a file the run needs does not exist
    (the training shards are checked by :func:`streamfit.train.run.ensure_data`)."""
    pretrained = cfg.model.pretrained
    if pretrained and _is_path(pretrained) and not Path(pretrained).is_file():
        raise ConfigError(f"model.pretrained: teacher checkpoint {pretrained} does not exist")
    teacher = getattr(cfg, "teacher_config", "")
    from_scratch = getattr(cfg.model, "from_scratch", False)
    if not pretrained and not from_scratch and teacher and not Path(teacher).is_file():
        raise ConfigError(f"teacher_config: file {teacher} does not exist")
    if cfg.eval.val_data and not cfg.eval.data:
        raise ConfigError("eval.val_data: a validation split needs a held-out one (eval.data)")
    for key in ("data", "val_data"):
        source = getattr(cfg.eval, key)
        if source and not Path(source).is_dir():
            try:
                expand_shards(source)
            except FileNotFoundError:
                raise ConfigError(f"eval.{key}: no shards match {source!r}") from None
    if cfg.eval.data:
        for key in ("classnames", "templates"):
            value = getattr(cfg.eval, key)
            if value and _is_path(value) and not Path(value).is_file():
                raise ConfigError(f"eval.{key}: file {value} does not exist")


def _is_path(value: str) -> bool:
    return "/" in value or Path(value).suffix != ""
