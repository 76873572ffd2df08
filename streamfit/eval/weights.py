"""Finding and reading the weights a training run left behind, for evaluating it after the
fact: the chosen ``best_model.pt`` when the run kept one, else the checkpoint ``latest``
names (the layout :mod:`streamfit.train.checkpoint` writes).

Checkpoints travel between people, so every file is read as data, never as code:
``torch.load(weights_only=True)`` builds tensors, plain containers and the few DeepSpeed
classes named in :data:`DEEPSPEED_TYPES`, and refuses anything else before it can run. There
is no fallback to full unpickling.
"""

from __future__ import annotations

import functools
import importlib
import pickle
import re
from pathlib import Path
from typing import Any

import torch

LATEST = "latest"  # the file in a run's checkpoints/ that names its newest complete checkpoint
BEST = "best_model.pt"
MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's model file in a checkpoint

# Plain-data classes DeepSpeed pickles into its checkpoints (the ZeRO optimiser states: the
# loss scaler, the stage, where each parameter sits in the flat partition). Unpickling one
# only sets its attributes, so they are allowlisted, by name, for weights_only loads.
DEEPSPEED_TYPES = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)


class CheckpointReadError(ValueError):
    """A checkpoint file that was not loaded (damaged, not a ``torch.save`` file, or refused);
    nothing in it ran. The message is one line naming the file."""


class UnsafeCheckpointError(CheckpointReadError):
    """A checkpoint file that needs more than tensors and plain data to load: refused."""


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
    """The model's state dict from a weights file or a checkpoint directory, read as data
    only (:func:`load_tensors`)."""
    path = weights / MODEL_STATES if weights.is_dir() else weights
    states = load_tensors(path, map_location="cpu")
    if weights.is_dir():  # DeepSpeed's model states: the module's state dict under "module"
        states = states.get("module") if isinstance(states, dict) else None
    if not isinstance(states, dict) or not all(
        isinstance(v, torch.Tensor) for v in states.values()
    ):
        raise CheckpointReadError(f"{path} holds no model state dict (not a streamfit checkpoint)")
    return states


def load_tensors(path: str | Path, map_location: Any = None) -> Any:
    """What ``torch.save`` wrote to ``path``, read without running code from it: tensors,
    plain containers and :data:`DEEPSPEED_TYPES`. Anything else raises
    :class:`UnsafeCheckpointError` (what was refused, and how to convert a file one trusts),
    a damaged file :class:`CheckpointReadError`."""
    needed = _globals_needed(path)
    refused = [name for name in needed or () if name not in DEEPSPEED_TYPES]
    if refused:  # known before anything is unpickled
        raise UnsafeCheckpointError(_refusal(path, f"it needs {', '.join(refused)}"))
    if needed is None or needed:
        _allow_deepspeed_types()
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # refused while unpickling (an opcode, a call)
        found = re.search(
            r"WeightsUnpickler error:(.*?)(Please use|Check the doc|$)", str(err), re.S
        )
        reason = " ".join(found.group(1).split()) if found else ""
        raise UnsafeCheckpointError(_refusal(path, reason or "not plain data")) from None
    except FileNotFoundError:
        raise
    except Exception as err:  # a damaged file, another format, data that does not fit
        first = str(err).strip().splitlines()[0] if str(err).strip() else "no detail"
        raise CheckpointReadError(
            f"{path} cannot be read as a torch.save file (damaged or another format): "
            f"{type(err).__name__}: {first}"
        ) from None


def _globals_needed(path: str | Path) -> list[str] | None:
    """The classes and functions outside torch's own allowlist that the file's pickle names,
    read statically (nothing is unpickled); None when it cannot be read so (torch's pre-zip
    format, a damaged archive: the load then decides and explains)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except FileNotFoundError:
        raise
    except Exception:
        return None


def _refusal(path: str | Path, reason: str) -> str:
    return (
        f"{path} refused ({reason}): checkpoints are read as tensors and plain data only, "
        "never as code; if you trust its source, load it with torch.load(weights_only=False) "
        "yourself and save its tensors and plain values again"
    )


@functools.cache
def _allow_deepspeed_types() -> None:
    """Allowlist :data:`DEEPSPEED_TYPES` for weights_only loads, once (imports DeepSpeed, so
    only when a file needs them)."""
    types = []
    for name in DEEPSPEED_TYPES:
        module, _, attr = name.rpartition(".")
        types.append(getattr(importlib.import_module(module), attr))
    torch.serialization.add_safe_globals(types)
