"""The parts of the training loop that decide when to act, without an engine: the state a
checkpoint carries, when a checkpoint is written, when an evaluation runs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from streamfit.eval import EvalConfig
from streamfit.train import loop
from streamfit.train.config import TrainConfig


def test_train_state_round_trips_and_tolerates_older_checkpoints():
    state = loop.TrainState(epoch=2, step=17, micro_step=34, samples=272, mid_epoch=True)
    state.best_metric, state.best_eval = 0.5, {"top1": 0.5}
    restored = loop.TrainState()
    restored.load_state_dict({**state.state_dict(), "world_size": 2})
    assert restored == state
    older = loop.TrainState()
    older.load_state_dict({"step": 3, "epoch": 1, "micro_step": 3, "mid_epoch": False})
    assert (older.step, older.samples, older.best_metric) == (3, 0, -1.0)


@pytest.fixture()
def saved(monkeypatch) -> list[int]:
    steps: list[int] = []
    monkeypatch.setattr(loop, "save_checkpoint", lambda engine, root, step, *a: steps.append(step))
    return steps


def run_epochs(checkpointer, grad_accum: int) -> None:
    """Two epochs of 3 micro-steps."""
    state = loop.TrainState()
    for _ in range(2):
        for _ in range(3):
            state.micro_step += 1
            if state.micro_step % grad_accum:
                continue
            state.step += 1
            checkpointer.maybe_save(state)
        checkpointer.maybe_save(state, epoch_end=True)


@pytest.mark.parametrize(
    ("every", "grad_accum", "expected"),
    [
        (0, 1, [3, 6]),  # each epoch's end
        (2, 1, [2, 3, 4, 6]),  # every 2 steps and each epoch's end, step 6 once
        # 2 micro-steps a step: epoch 0 ends inside step 2, which is saved when complete
        (0, 2, [2, 3]),
    ],
)
def test_checkpoints_at_their_steps_never_inside_an_accumulation(
    saved, every, grad_accum, expected
):
    train = TrainConfig(checkpoint_every_steps=every, grad_accum=grad_accum)
    checkpointer = loop.Checkpointer(None, None, SimpleNamespace(state_dict=dict), train, train)
    run_epochs(checkpointer, grad_accum)
    assert saved == expected


def test_evaluation_runs_each_epoch_or_every_n_steps(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\n")
    cfg = EvalConfig(data="x.tar", classnames=str(tmp_path / "classes.txt"), templates="simple")
    state = loop.TrainState(step=4)
    at_epochs = loop.Evaluator(cfg, None, None, tmp_path, 0, 0)
    assert not at_epochs.should_run(state) and at_epochs.should_run(state, epoch_end=True)
    every_2 = loop.Evaluator(cfg, None, None, tmp_path, 2, 0)
    assert every_2.should_run(state) and not every_2.should_run(state, epoch_end=True)
    state.step = 5
    assert not every_2.should_run(state)
    off = loop.Evaluator(EvalConfig(), None, None, tmp_path, 0, 0)
    assert not off.should_run(state, epoch_end=True)
