"""Run metrics: JSONL (one object a line) and TensorBoard scalars from rank 0, the step
timer behind the log lines (samples/s, fitting share, cache hit rate, utilisation), and the
FLOP count the utilisation figure is based on."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from streamfit.hardware import peak_tflops


def peak_flops(configured_tflops: float, device: torch.device) -> float:
    """Peak FLOP/s of one device: the configured figure, else a known GPU's dense bf16
    peak, else 0 (unknown: the utilisation figure is then the compute share of step time)."""
    if configured_tflops > 0:
        return configured_tflops * 1e12
    return (peak_tflops(device, "bf16") or 0.0) * 1e12


def count_flops(fn: Any, *args: Any) -> float:
    """FLOPs of one call ``fn(*args)`` (forward only), counted by PyTorch's flop counter."""
    # with autograd on: the counter's module tracker fails on no-grad forwards of
    # parameters that require grad
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return float(counter.get_total_flops())


class MetricsWriter:
    """Writes ``metrics.jsonl`` and ``tensorboard/`` under ``run_dir`` on rank 0 (no-op on
    other ranks). Appends, so a resumed run continues the same files."""

    def __init__(self, run_dir: str | Path, enabled: bool) -> None:
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(run_dir / "metrics.jsonl", "a")
            self._tb = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, kind: str, values: dict[str, Any]) -> None:
        """One record ``{"kind", "step", "time", **values}``; numbers also go to TensorBoard
        as ``kind/name``."""
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": time.time(), **values}
        self._jsonl.write(json.dumps(record, default=_jsonable) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if math.isfinite(value):
                    self._tb.add_scalar(f"{kind}/{name}", value, step)
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


def _jsonable(x: Any) -> Any:
    return float(x) if isinstance(x, torch.Tensor) else str(x)


class StepTimer:
    """Accumulates, between two log lines, samples, wall time, the part spent waiting for the
    loader and the part the loader spent fitting (inside the wait when the loader falls
    behind; overlapped with compute when it keeps up), and cache lookups. On a GPU it also
    times each training step with CUDA events on the training stream and sums the loader's
    CUDA-event fitting time: both are read when a line is logged, never during a step.

    ``window()`` returns the figures of the log line and starts a new window.
    """

    def __init__(
        self,
        flops_per_sample: float,
        peak: float,
        world_size: int,
        device: torch.device | None = None,
    ) -> None:
        self.flops_per_sample, self.peak, self.world = flops_per_sample, peak, world_size
        self.gpu = device is not None and device.type == "cuda"
        self._reset()

    def _reset(self) -> None:
        self.start = time.perf_counter()
        self.samples = 0
        self.wait_s = 0.0
        self.fit_s = 0.0
        self.fit_gpu_s = 0.0
        self.hits = 0
        self.fitted = 0
        self._steps: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._begin: torch.cuda.Event | None = None

    def step_started(self) -> None:
        """A training step is about to be queued (on a GPU: its start event)."""
        if self.gpu:
            self._begin = torch.cuda.Event(enable_timing=True)
            self._begin.record()

    def add(self, samples: int, wait_s: float, timing: dict[str, float] | None) -> None:
        """A step was queued: its samples, the wait for its batch and the batch's timing."""
        if self._begin is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self._steps.append((self._begin, end))
            self._begin = None
        self.samples += samples
        self.wait_s += wait_s
        if timing is not None:
            self.fit_s += timing["fit_s"]
            self.fit_gpu_s += timing.get("fit_gpu_s", 0.0)
            self.hits += int(timing["hits"])
            self.fitted += int(timing["fitted"])

    def window(self) -> dict[str, float]:
        seconds = max(time.perf_counter() - self.start, 1e-9)
        looked_up = self.hits + self.fitted
        out = {
            # this rank's samples x ranks: all ranks run in lockstep
            "samples_per_s": self.samples * self.world / seconds,
            "samples": self.samples,  # this rank's, and the window's seconds: rates over windows
            "seconds": seconds,
            "data_wait_share": self.wait_s / seconds,
            "fit_share": min(1.0, self.fit_s / seconds),
            "cache_hit_rate": self.hits / looked_up if looked_up else float("nan"),
            "compute_share": 1.0 - self.wait_s / seconds,
        }
        if self.gpu:
            if self._steps:
                self._steps[-1][1].synchronize()  # a log line may wait; a step never does
            steps_gpu_s = sum(begin.elapsed_time(end) for begin, end in self._steps) / 1e3
            busy = self.fit_gpu_s + steps_gpu_s
            out.update(
                steps=len(self._steps),
                steps_gpu_s=steps_gpu_s,  # CUDA-event seconds of the training steps
                fit_gpu_s=self.fit_gpu_s,  # CUDA-event seconds of the loader's device work
                fit_gpu_share=min(1.0, self.fit_gpu_s / seconds),
                # fitting's part of the GPU time of fitting and training
                fit_share_gpu_time=self.fit_gpu_s / busy if busy else float("nan"),
                gpu_memory_gb=torch.cuda.max_memory_allocated() / 2**30,
            )
        if self.peak > 0 and self.flops_per_sample > 0:
            # training FLOPs ~ 3x forward (backward ~ 2x forward)
            achieved = 3.0 * self.flops_per_sample * self.samples / seconds
            out["mfu"] = achieved / self.peak
        self._reset()
        return out
