"""The one training loop both recipes run, and the parts that decide when to act in it.

A recipe builds its model, loader and engine, says how a batch becomes a loss, and hands
them to a :class:`Trainer`: the trainer resumes the run's latest checkpoint, and its loop
steps the engine, logs, and asks the :class:`Evaluator` (``should_run``) and the
:class:`Checkpointer` (``maybe_save``) whether it is their turn. Everything a resumed run
needs to carry on is in :class:`TrainState` (the counters) and the loader's own state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from streamfit.config import to_yaml
from streamfit.data import DataConfig
from streamfit.data.nodes import claim
from streamfit.eval import EvalConfig, ZeroShotResult, ZeroShotSetup, zero_shot_setup
from streamfit.eval.weights import BEST
from streamfit.report import write_json
from streamfit.train.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_weights,
)
from streamfit.train.config import TrainConfig
from streamfit.train.distributed import barrier
from streamfit.train.engine import (
    build_engine,
    clip_gradients,
    clips_itself,
    group_lrs,
    resolve_precision,
)
from streamfit.train.metrics import MetricsWriter, StepTimer, count_flops, peak_flops
from streamfit.train.run import count_samples, lockstep, scheduled_steps

logger = logging.getLogger("streamfit.train")


@dataclass
class TrainState:
    """The run's counters, saved in every checkpoint: where the loop stands (``epoch``,
    optimiser ``step``, ``micro_step``, ``samples`` seen by this rank, ``mid_epoch``), the
    best evaluation so far (``best_metric``: its top-1 on the split that chooses, at
    ``best_step``) and the last one."""

    epoch: int = 0
    step: int = 0
    micro_step: int = 0
    samples: int = 0
    mid_epoch: bool = False
    best_metric: float = -1.0
    best_step: int = 0
    best_eval: dict[str, Any] = field(default_factory=dict)
    last_eval: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the counters a checkpoint holds (a key it lacks keeps its default)."""
        for f in fields(self):
            if f.name in state:
                setattr(self, f.name, state[f.name])


class Checkpointer:
    """Writes the complete checkpoints of a run (:mod:`streamfit.train.checkpoint`): every
    ``every`` optimiser steps (0: none between epochs), at each epoch's end and when a run
    stops early; never inside a gradient accumulation, whose gradients a checkpoint would lose
    (it waits for the next optimiser step), and never twice for one step."""

    def __init__(
        self, engine: Any, root: Path, loader: Any, config: Any, train: TrainConfig
    ) -> None:
        self.engine, self.root, self.loader, self.config_yaml = (
            engine,
            root,
            loader,
            to_yaml(config),
        )
        self.every, self.keep, self.grad_accum = (
            train.checkpoint_every_steps,
            train.keep_checkpoints,
            train.grad_accum,
        )
        self.enabled = train.save_checkpoints
        self._due = False
        self._saved_step: int | None = None

    def maybe_save(self, state: TrainState, epoch_end: bool = False) -> None:
        """After an optimiser step, or (``epoch_end``) after an epoch's last batch."""
        if state.micro_step % self.grad_accum:
            self._due = self._due or epoch_end
            return
        if self._due or epoch_end or (self.every and state.step % self.every == 0):
            self.save(state)

    def save(self, state: TrainState) -> None:
        if self.enabled and self._saved_step != state.step:
            save_checkpoint(
                self.engine,
                self.root,
                state.step,
                state.state_dict(),
                self.loader.state_dict(),
                self.config_yaml,
                self.keep,
            )
            self._saved_step = state.step
        self._due = False


class Evaluator:
    """Zero-shot evaluation during training: when it runs (every ``every`` optimiser steps,
    or with 0 at each epoch's end), the split that chooses the best model (``eval.val_data``
    when set, else ``eval.data``), the best model's weights (``{run}/best_model.pt``; kept with
    ``keep_best`` or a validation split), and at the end the held-out figures of the chosen
    model (:meth:`report`).

    ``evaluate(setup)`` runs one evaluation of the model being trained on ``setup``'s split.
    """

    def __init__(
        self,
        cfg: EvalConfig,
        evaluate: Callable[[ZeroShotSetup], tuple[ZeroShotResult, dict[str, float]]],
        model: torch.nn.Module,
        run_dir: Path,
        every: int,
        rank: int,
        keep_best: bool = True,
    ) -> None:
        self.heldout = zero_shot_setup(cfg)
        self.choose = (
            self.heldout.on(cfg.val_data) if self.heldout and cfg.val_data else self.heldout
        )
        self.evaluate, self.model, self.best_path = evaluate, model, run_dir / BEST
        self.every, self.rank = every, rank
        self.keep_best = keep_best or self.has_val  # the chosen model is evaluated at the end
        self.metrics: MetricsWriter | None = None  # the trainer's

    @property
    def enabled(self) -> bool:
        return self.choose is not None

    @property
    def has_val(self) -> bool:
        return self.choose is not self.heldout

    def should_run(self, state: TrainState, epoch_end: bool = False) -> bool:
        if not self.enabled:
            return False
        return not self.every if epoch_end else bool(self.every) and state.step % self.every == 0

    def run(self, state: TrainState) -> dict[str, Any]:
        """Evaluate on the choosing split; a new best top-1 saves the weights."""
        kind = "val" if self.has_val else "eval"
        values = self._evaluate(self.choose, kind, state, f"{kind} step {state.step}")
        state.last_eval = values
        if values["top1"] > state.best_metric:
            state.best_metric, state.best_step, state.best_eval = values["top1"], state.step, values
            if self.keep_best and self.rank == 0:
                save_weights(self.model.state_dict(), self.best_path)
        return values

    def report(self, state: TrainState, last: bool = False) -> dict[str, Any]:
        """The held-out figures the run reports. With a validation split: the best weights,
        evaluated once on ``eval.data``, with ``val_top1`` (the top-1 that chose them).
        Without: the best evaluation (``last``: the last one, run now if the last step had
        none). ``{}`` when nothing is evaluated."""
        if not self.enabled:
            return {}
        if not self.has_val:
            return (state.last_eval or self.run(state)) if last else state.best_eval
        barrier()  # rank 0 wrote the best weights
        if self.best_path.is_file():
            self.model.load_state_dict(torch.load(self.best_path, weights_only=True))
        title = f"held-out, the model of step {state.best_step}"
        values = self._evaluate(self.heldout, "heldout", state, title)
        return {**values, "val_top1": state.best_metric, "chosen_step": state.best_step}

    def _evaluate(
        self, setup: ZeroShotSetup, kind: str, state: TrainState, title: str
    ) -> dict[str, Any]:
        result, extras = self.evaluate(setup)
        values = {**result.to_dict(), **extras, "epoch": state.epoch}
        if self.metrics is not None:
            self.metrics.log(state.step, kind, values)
        if self.rank == 0:
            print(f"{title}: top-1 {result.top1:.3f} top-5 {result.top5:.3f}")
        return values


def build_trainer_engine(
    model: torch.nn.Module,
    groups: list[dict[str, Any]],
    train: TrainConfig,
    data: DataConfig,
    world: int,
    device: torch.device,
) -> tuple[Any, str]:
    """The DeepSpeed engine of ``model`` with its schedule sized to the run: ``epochs`` of
    ``train.samples_per_epoch`` (0: the samples the local shards hold). Returns (engine,
    precision)."""
    samples = train.samples_per_epoch or count_samples(data.shards)
    total_steps = scheduled_steps(samples, train.epochs, data.batch_size, train.grad_accum, world)
    return build_engine(model, groups, train, data.batch_size, world, total_steps, device)


def train_step(
    engine: Any,
    batch: dict,
    loss_of: Callable[[dict], torch.Tensor],
    device: torch.device,
    timer: StepTimer,
    grad_clip: float = 0.0,
) -> torch.Tensor:
    """One micro-step as the loop runs it: the loader's batch claimed for this stream,
    forward, backward, gradients clipped on the device (``grad_clip > 0``), the optimiser
    step, timed on a GPU by CUDA events. Nothing waits for the device; the loss comes back
    as a device tensor."""
    claim(batch, device)
    timer.step_started()
    loss = loss_of(batch)
    engine.backward(loss)
    if grad_clip > 0:
        clip_gradients(engine, grad_clip)
    engine.step()
    return loss.detach()


class Trainer:
    """One run's loop: resumes from ``{run}/checkpoints`` (``run.resume``), then trains
    ``train.epochs`` with ``loss_of(batch)``, logging to ``{run}/metrics.jsonl``.

    ``probe``: the arguments of one sample's forward pass, to count FLOPs for MFU.
    """

    def __init__(
        self,
        cfg: Any,
        run_dir: Path,
        engine: Any,
        loader: Any,
        evaluator: Evaluator,
        probe: tuple[Any, ...],
        rank: int,
        world: int,
        device: torch.device,
    ) -> None:
        self.cfg, self.train = cfg, cfg.train
        self.engine, self.loader, self.evaluator = engine, loader, evaluator
        # the norm the loop clips to itself (0: DeepSpeed clips, or nothing is clipped)
        precision = resolve_precision(cfg.train.precision, device)
        self.clip_norm = cfg.train.grad_clip if clips_itself(cfg.train, precision) else 0.0
        self.rank, self.device, self.run_dir = rank, device, run_dir
        self.metrics = evaluator.metrics = MetricsWriter(run_dir, rank == 0)
        self.checkpointer = Checkpointer(engine, run_dir / "checkpoints", loader, cfg, cfg.train)
        self.state = TrainState()
        resume_from = find_checkpoint(cfg.run.resume, run_dir / "checkpoints")
        if resume_from is not None:
            client_state, loader_state = load_checkpoint(engine, resume_from)
            self.state.load_state_dict(client_state)
            # always: the finished epochs' loader stats come back even at an epoch boundary
            # (where set_epoch then starts the next epoch afresh)
            loader.load_state_dict(loader_state)
        self.start_step = self.state.step
        flops = count_flops(engine.module, *probe)
        self.timer = StepTimer(flops, peak_flops(cfg.train.peak_tflops, device), world, device)
        record = cfg.run.record_samples
        self.seen = open(run_dir / f"samples_rank{rank}.tsv", "a") if record else None

    def fit(
        self,
        loss_of: Callable[[dict], torch.Tensor],
        after_step: Callable[[], None] | None = None,
    ) -> bool:
        """Train to the end of the schedule (True) or until ``train.stop_after_steps`` (False,
        with a checkpoint to resume from). ``after_step`` runs after each optimiser step."""
        train, state, engine = self.train, self.state, self.engine
        losses: list[torch.Tensor] = []  # on the device: read only when a line is logged
        for epoch in range(state.epoch, train.epochs):
            if not state.mid_epoch:
                self.loader.set_epoch(epoch)
            state.epoch, state.mid_epoch = epoch, True
            bar = tqdm(
                desc=f"epoch {epoch}", unit="step", disable=self.rank != 0 or not train.progress
            )
            for batch, waited in lockstep(self.loader, self.device):
                losses.append(
                    train_step(engine, batch, loss_of, self.device, self.timer, self.clip_norm)
                )
                self.timer.add(len(batch["keys"]), waited, batch["timing"])
                if self.seen is not None:
                    self.seen.writelines(f"{epoch}\t{key}\n" for key in batch["keys"])
                bar.update()
                state.micro_step += 1
                state.samples += len(batch["keys"])
                if state.micro_step % train.grad_accum:
                    continue  # inside an accumulation: nothing below applies yet
                state.step += 1
                if after_step is not None:
                    after_step()
                if train.log_every and state.step % train.log_every == 0:
                    self._log(losses, bar)
                if self.evaluator.should_run(state):
                    self.evaluator.run(state)
                self.checkpointer.maybe_save(state)
                if (
                    train.stop_after_steps
                    and state.step - self.start_step >= train.stop_after_steps
                ):
                    bar.close()
                    self.checkpointer.save(state)
                    print(
                        f"stopped after {state.step - self.start_step} steps (train.stop_after_steps)"
                    )
                    return False
            bar.close()
            state.epoch, state.mid_epoch = epoch + 1, False
            if self.evaluator.should_run(state, epoch_end=True):
                self.evaluator.run(state)
            self.checkpointer.maybe_save(state, epoch_end=True)
        return True

    def _log(self, losses: list[torch.Tensor], bar: tqdm) -> None:
        # the one read-back of the loop: the window's losses, when a line is logged
        values = {"loss": float(torch.stack(losses).float().mean()), **self.timer.window()}
        values.update({f"lr/{k}": v for k, v in group_lrs(self.engine).items()})
        values["epoch"] = self.state.epoch
        self.metrics.log(self.state.step, "train", values)
        postfix = {"loss": f"{values['loss']:.3f}", "sps": f"{values['samples_per_s']:.0f}"}
        if not math.isnan(values["cache_hit_rate"]):  # a loader that fits
            postfix.update(fit=f"{values['fit_share']:.0%}", hits=f"{values['cache_hit_rate']:.0%}")
            if self.device.type == "cuda":
                postfix.update(fit_gpu=f"{values['fit_gpu_share']:.0%}")
        bar.set_postfix(**postfix)
        losses.clear()

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """End the run: ``summary`` written as ``{run}/summary.json`` (rank 0), the metrics
        closed; returns ``summary``."""
        if self.rank == 0:
            write_json(self.run_dir / "summary.json", summary)
        self.close()
        return summary

    def close(self) -> None:
        self.metrics.close()
        if self.seen is not None:
            self.seen.close()
