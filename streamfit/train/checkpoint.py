"""Complete, atomic checkpoints of a DeepSpeed run.

A checkpoint ``{root}/step-NNNNNNNN/`` holds DeepSpeed's model, optimiser and scheduler
states, the run's counters (``client_state``: step, epoch, ...), each rank's data loader state
(``loader_rank{r}.pt``) and the resolved ``config.yaml``. It is written under a hidden
temporary name and renamed when every rank has finished; ``{root}/latest`` (the tag) is
replaced last, so it never names a half-written checkpoint.

Resuming reads every file as data only (:func:`streamfit.eval.weights.load_tensors`), also the
ones DeepSpeed reads itself, so a checkpoint directory from elsewhere cannot run code.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from streamfit.config import ConfigError
from streamfit.eval.weights import LATEST, CheckpointReadError, load_tensors
from streamfit.train.distributed import barrier

logger = logging.getLogger("streamfit.train")

_PREFIX = "step-"


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    engine: Any,
    root: str | Path,
    step: int,
    client_state: dict[str, Any],
    loader_state: dict[str, Any],
    config_yaml: str,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step-{step}`` on every rank (a collective call); returns its path.

    The ``keep`` newest checkpoints are kept, older ones removed after ``latest`` moved.
    """
    root = Path(root)
    tag = f"{_PREFIX}{step:08d}"
    tmp_tag = f".tmp-{tag}"
    final, tmp = root / tag, root / tmp_tag
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
    barrier()
    state = {**client_state, "world_size": _world()}
    engine.save_checkpoint(str(root), tag=tmp_tag, client_state=state, save_latest=False)
    tmp.mkdir(parents=True, exist_ok=True)
    buffer = _to_bytes(loader_state)
    _write_atomic(tmp / f"loader_rank{_rank():03d}.pt", buffer)
    barrier()
    if _rank() == 0:
        _write_atomic(tmp / "config.yaml", config_yaml.encode())
        if final.exists():  # the same step saved again (e.g. end of a resumed run)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(root / LATEST, tag.encode())
        for old in sorted(p for p in root.glob(f"{_PREFIX}*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    logger.info("checkpoint %s written", final)
    return final


def _to_bytes(obj: Any) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def find_checkpoint(resume: str, root: str | Path) -> Path | None:
    """The checkpoint to resume from: ``none`` -> None; ``auto`` -> the one ``latest`` names
    in ``root`` (None if there is none yet); else ``resume`` itself, which must exist."""
    if resume == "none":
        return None
    if resume == "auto":
        latest = Path(root) / LATEST
        return Path(root) / latest.read_text().strip() if latest.is_file() else None
    path = Path(resume)
    if not (path / f"loader_rank{0:03d}.pt").is_file():
        raise ConfigError(f"run.resume: {path} is not a streamfit checkpoint directory")
    return path


def load_checkpoint(engine: Any, path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore model, optimiser and scheduler into ``engine`` from ``path`` (a collective
    call); returns (client_state, this rank's loader state).

    Every file is read with ``weights_only=True``; one holding anything else raises
    :class:`ConfigError` (one line, naming the file and what it needed) before it runs.
    """
    path = Path(path)
    try:
        with _tensors_only(engine):
            loaded, client_state = engine.load_checkpoint(str(path.parent), tag=path.name)
        if loaded is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path}")
        # before the loader's file: a rank the writing run did not have has none
        if client_state.get("world_size", _world()) != _world():
            raise RuntimeError(
                f"{path} was written by {client_state['world_size']} ranks; the data loader "
                f"state is per rank, so resume with the same number (now {_world()})"
            )
        loader_state = load_tensors(path / f"loader_rank{_rank():03d}.pt")
    except CheckpointReadError as err:
        raise ConfigError(f"run.resume: {err}") from None
    logger.info("resumed from %s (step %s)", path, client_state.get("step"))
    return client_state, loader_state


class _TensorsOnlyLoads:
    """A DeepSpeed checkpoint engine whose ``load`` reads with :func:`load_tensors`; all else
    is the wrapped engine's. DeepSpeed's own ``load`` unpickles in full."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def load(self, path: str, map_location: Any = None) -> Any:
        return load_tensors(path, map_location)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@contextmanager
def _tensors_only(engine: Any) -> Iterator[None]:
    """DeepSpeed reads model, optimiser and scheduler states through ``engine.checkpoint_engine``
    (ZeRO stages 0-3 alike): within this block, it reads them as data only."""
    own = engine.checkpoint_engine
    engine.checkpoint_engine = _TensorsOnlyLoads(own)
    try:
        yield
    finally:
        engine.checkpoint_engine = own


def save_weights(state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    """A model's ``state_dict`` alone (what :func:`streamfit.models.load_teacher` reads),
    written atomically; call on one rank."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu()
        for k, v in state_dict.items()
    }
    _write_atomic(path, _to_bytes(cpu))
