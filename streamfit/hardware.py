"""Facts about the machine a tool or run uses: which device ``auto`` means, and the peak
FLOP rates of known GPUs (for utilisation figures)."""

from __future__ import annotations

import torch

# TFLOP/s by device-name fragment (the first fragment in the name wins, so the more specific
# comes first): FP32 without tensor cores (the splat kernels), dense BF16 on tensor cores
# (training). NVIDIA's data sheets.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"fp32": 51.2, "bf16": 756.0},
    "H100": {"fp32": 66.9, "bf16": 989.0},
    "H200": {"fp32": 66.9, "bf16": 989.0},
    "A100": {"fp32": 19.5, "bf16": 312.0},
    "L40S": {"fp32": 91.6, "bf16": 362.0},
    "A10": {"fp32": 31.2, "bf16": 125.0},
}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when one is visible, else the CPU; any other name as is."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def peak_tflops(device: torch.device, kind: str) -> float | None:
    """The ``kind`` (``fp32`` or ``bf16``) peak of a known GPU, TFLOP/s; None for a CPU or
    an unknown card."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peaks in PEAK_TFLOPS.items():
        if fragment in name:
            return peaks[kind]
    return None
