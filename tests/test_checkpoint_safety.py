"""Checkpoints are read as data, never as code: a crafted model-states, optimiser-states or
loader-state file is refused with a one-line error before anything in it runs, when evaluated
(tools/zeroshot_eval.py --checkpoint) or resumed from (run.resume=DIR); the project's own
checkpoints (ZeRO stages 0, 1, 2) still resume exactly and evaluate."""

from __future__ import annotations

import importlib.util
import shutil
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from tiny_models import CONTEXT_LENGTH, TINY_CLIP

from streamfit.config import ConfigError
from streamfit.data.synthetic import write_synthetic_dataset
from streamfit.eval import weights
from streamfit.eval.weights import (
    DEEPSPEED_TYPES,
    MODEL_STATES,
    CheckpointReadError,
    UnsafeCheckpointError,
    load_tensors,
    read_weights,
)
from streamfit.models import load_teacher
from streamfit.train.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from streamfit.train.config import TrainConfig
from streamfit.train.distributed import init_distributed
from streamfit.train.engine import build_engine, clip_param_groups

REPO = Path(__file__).resolve().parents[1]
MODEL_KWARGS = TINY_CLIP
LOADER_STATE = {"epoch": 0, "offsets": torch.arange(3), "shards": ["a.tar", "b.tar"]}


class _WritesFile:
    """Unpickled in full, this opens (creates) ``marker``: the stand-in for any code a
    crafted checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def craft(path: Path, marker: Path) -> None:
    """Overwrite ``path`` with a file shaped like a checkpoint file that runs code."""
    torch.save({"module": {"w": torch.zeros(2)}, "optimizer": _WritesFile(marker)}, path)


def _engine(stage: int, seed: int):
    _, world, device = init_distributed()
    torch.manual_seed(seed)
    model = load_teacher("ViT-M-16", None, **MODEL_KWARGS)
    train = TrainConfig(lr=1e-2, warmup_steps=4, zero_stage=stage, precision="fp32")
    groups = clip_param_groups(model, train.lr, train.weight_decay)
    engine, _ = build_engine(model, groups, train, 2, world, 8, device)
    return engine


def _step(engine) -> None:
    torch.manual_seed(123)
    images, tokens = torch.rand(2, 3, 16, 16), torch.randint(0, 49000, (2, CONTEXT_LENGTH))
    out = engine(images, tokens)
    image_features, text_features = out[0], out[1]
    engine.backward((image_features * text_features).sum())
    engine.step()


def _params(engine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> SimpleNamespace:
    """One training step of a tiny CLIP at ZeRO stages 0, 1 and 2, each saved as a
    checkpoint (with an RGB run's config.yaml) and its engine kept to step on."""
    root = tmp_path_factory.mktemp("safety")
    data = write_synthetic_dataset(root / "data", 4, 8, image_size=16, shard_size=8)
    config = yaml.safe_dump(
        {
            "data": {"image_size": 16, "tokenizer": "ViT-M-16", "context_length": CONTEXT_LENGTH},
            "model": {"model_name": "ViT-M-16", "model_kwargs": MODEL_KWARGS},
        }
    )
    saved = {}
    for stage in (0, 1, 2):
        engine = _engine(stage, seed=0)
        _step(engine)
        path = save_checkpoint(engine, root / f"zero{stage}", 1, {"step": 1}, LOADER_STATE, config)
        saved[stage] = SimpleNamespace(engine=engine, path=path, params=_params(engine))
    return SimpleNamespace(root=root, data=data, saved=saved)


def _crafted_copy(src: Path, dst: Path, name: str) -> tuple[Path, Path]:
    """A copy of checkpoint ``src`` whose file ``name`` is crafted; (its path, the marker)."""
    shutil.copytree(src, dst)
    marker = dst.parent / f"{dst.name}-ran"
    craft(dst / name, marker)
    return dst, marker


def _one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(err.value)
    assert "\n" not in message, message
    for part in ("refused", "never as code", "weights_only=False", *parts):
        assert part in message, (part, message)


def test_the_crafted_file_does_run_code_when_unpickled_in_full(tmp_path):
    # the check the tests below rely on: were it unpickled in full, the marker would appear
    craft(tmp_path / "x.pt", tmp_path / "ran")
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert (tmp_path / "ran").exists()


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_own_checkpoints_resume_exactly(runs, stage):
    saved = runs.saved[stage]
    if stage > 0:  # the ZeRO optimiser states hold DeepSpeed's own (allowlisted) classes
        (optim,) = saved.path.glob("*optim_states.pt")
        with zipfile.ZipFile(optim) as z:
            pickled = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
        assert b"deepspeed.runtime.fp16.loss_scaler" in pickled
    resumed = _engine(stage, seed=1)
    client_state, loader_state = load_checkpoint(resumed, find_checkpoint(str(saved.path), ""))
    assert client_state["step"] == 1
    assert loader_state.keys() == LOADER_STATE.keys()
    assert torch.equal(loader_state["offsets"], LOADER_STATE["offsets"])
    for name, value in _params(resumed).items():
        assert torch.equal(value, saved.params[name]), name
    # the next step matches the uninterrupted run's only if the optimiser moments and the
    # schedule came back too
    _step(saved.engine)
    _step(resumed)
    assert resumed.get_lr() == saved.engine.get_lr()
    for name, value in _params(resumed).items():
        assert torch.equal(value, _params(saved.engine)[name]), name


@pytest.mark.parametrize(
    "name", [MODEL_STATES, "zero_pp_rank_0_mp_rank_00_optim_states.pt", "loader_rank000.pt"]
)
def test_a_crafted_checkpoint_is_refused_before_anything_runs(runs, tmp_path, name):
    path, marker = _crafted_copy(runs.saved[1].path, tmp_path / "step-00000001", name)
    engine = _engine(1, seed=0)
    with pytest.raises(ConfigError) as err:
        load_checkpoint(engine, find_checkpoint(str(path), ""))
    _one_line(err, "run.resume", name, "io.open")
    assert not marker.exists()


def test_what_the_static_scan_misses_the_unpickler_still_refuses(tmp_path, monkeypatch):
    # the scan of the pickle's globals only decides early; weights_only loading is the guard
    monkeypatch.setattr(weights, "_globals_needed", lambda path: [])
    marker = tmp_path / "ran"
    craft(tmp_path / "x.pt", marker)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_tensors(tmp_path / "x.pt")
    _one_line(err, "x.pt", "io.open")
    assert not marker.exists()


@pytest.mark.parametrize("damage", [b"", b"not a checkpoint\n", bytes(range(256)) * 4, "truncated"])
def test_a_damaged_file_is_a_one_line_error(runs, tmp_path, damage):
    path = tmp_path / "x.pt"
    if damage == "truncated":
        damage = (runs.saved[0].path / MODEL_STATES).read_bytes()[:5000]
    path.write_bytes(damage)
    with pytest.raises(CheckpointReadError) as err:
        load_tensors(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_deepspeed_types_are_named_by_their_import_path_and_load(tmp_path):
    # fp16 runs (GPU only) pickle a DynamicLossScaler into their ZeRO optimiser states
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

    for name in DEEPSPEED_TYPES:
        module, _, attr = name.rpartition(".")
        cls = getattr(importlib.import_module(module), attr)
        assert f"{cls.__module__}.{cls.__qualname__}" == name
    scaler = DynamicLossScaler(2.0**16, 1000, 1.0, 2, False, dtype=torch.float16)
    torch.save({"loss_scaler": scaler}, tmp_path / "x.pt")
    loaded = load_tensors(tmp_path / "x.pt")["loss_scaler"]
    assert type(loaded) is DynamicLossScaler and vars(loaded) == vars(scaler)


def _evaluate(runs, checkpoint: Path, program) -> dict:
    return program("tools/zeroshot_eval").main(
        [
            "--checkpoint", str(checkpoint),
            "--data", runs.data.heldout,
            "--classnames", str(runs.root / "data" / "classes.json"),
            "--device", "cpu",
        ]
    )  # fmt: skip


def test_own_checkpoints_evaluate(runs, program):
    saved = runs.saved[2]
    state = read_weights(saved.path)
    assert state.keys() == saved.params.keys()
    for name, value in state.items():
        assert torch.equal(value, saved.params[name]), name
    assert _evaluate(runs, saved.path, program)["samples"] == 8


def test_evaluating_a_crafted_checkpoint_runs_nothing(runs, tmp_path, program):
    path, marker = _crafted_copy(runs.saved[0].path, tmp_path / "step-00000001", MODEL_STATES)
    with pytest.raises(SystemExit) as err:  # the tool's one-line error, no traceback
        _evaluate(runs, path, program)
    message = str(err.value.code)
    assert message.startswith("error: ") and "\n" not in message
    assert MODEL_STATES in message and "io.open" in message
    assert not marker.exists()
