"""The `Splats` batch container: padded splat parameters, validity mask, float16 packing,
byte/compression accounting and a pickle-free on-disk format.

Parameter layout of one splat (8 numbers, the last axis of ``params``), in pixel units of
an image of ``height x width`` whose pixel ``(row i, column j)`` has its centre at
``(x, y) = (j + 0.5, i + 0.5)``:

====  ===========  ==========================================================
idx   name         meaning
====  ===========  ==========================================================
0     ``x``        centre, horizontal, pixels
1     ``y``        centre, vertical, pixels
2     ``log_l11``  log of the Cholesky factor's first diagonal entry
3     ``l21``      Cholesky factor's off-diagonal entry, pixels
4     ``log_l22``  log of the Cholesky factor's second diagonal entry
5-7   ``r g b``    colour added at the centre (weight 1), 0..1 scale
====  ===========  ==========================================================

The covariance is ``Sigma = L L^T`` with ``L = [[exp(log_l11), 0], [l21, exp(log_l22)]]``:
positive definite for every real parameter vector, which is why the diagonal is stored as a
logarithm.

On-disk format (``Splats.save``/``Splats.load``): a safetensors file with the tensors
``params`` (float16, ``[B, N, 8]``) and ``counts`` (int32, ``[B]``); valid splats of image
``b`` are ``params[b, :counts[b]]``.  The metadata holds ``format = "streamfit.splats"``,
``version``, ``height``, ``width`` and optionally ``keys`` (JSON list of sample keys).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PARAM_NAMES: tuple[str, ...] = ("x", "y", "log_l11", "l21", "log_l22", "r", "g", "b")
PARAMS_PER_SPLAT = len(PARAM_NAMES)
BYTES_PER_SPLAT = PARAMS_PER_SPLAT * 2  # float16
POSITION = slice(0, 2)
COVARIANCE = slice(2, 5)
COLOR = slice(5, 8)
FORMAT_NAME = "streamfit.splats"
FORMAT_VERSION = 1


def compression_ratio(
    height: int, width: int, n_splats: float | torch.Tensor, images: int = 1
) -> float | torch.Tensor:
    """Raw 8-bit RGB bytes over float16 splat bytes: ``images*H*W*3 / (16*n)`` for ``n``
    splats in all over ``images`` images of ``H x W`` (a set's ratio is its total bytes over
    its total bytes, not a mean of per-image ratios); inf for n = 0."""
    rgb_bytes = images * height * width * 3
    if isinstance(n_splats, torch.Tensor):
        return rgb_bytes / (BYTES_PER_SPLAT * n_splats.to(torch.float64))
    return rgb_bytes / (BYTES_PER_SPLAT * n_splats) if n_splats > 0 else float("inf")


@dataclass
class Splats:
    """A batch of splat sets of different sizes, padded to a common ``N``.

    ``params``: ``[B, N, 8]`` float32 (any device), layout in the module docstring.
    ``mask``: ``[B, N]`` bool, True where a splat is real. Padding rows hold zeros.
    ``height``/``width``: the image size the pixel-unit parameters refer to.
    """

    params: torch.Tensor
    mask: torch.Tensor
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.params.ndim != 3 or self.params.shape[-1] != PARAMS_PER_SPLAT:
            raise ValueError(
                f"params must be [B, N, {PARAMS_PER_SPLAT}], got {tuple(self.params.shape)}"
            )
        if self.mask.shape != self.params.shape[:2] or self.mask.dtype != torch.bool:
            raise ValueError(
                f"mask must be bool [B, N] = {tuple(self.params.shape[:2])}, "
                f"got {self.mask.dtype} {tuple(self.mask.shape)}"
            )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_list(cls, sets: Sequence[torch.Tensor], height: int, width: int) -> Splats:
        """Pad a list of ``[n_b, 8]`` tensors into one batch (valid splats first)."""
        n_max = max((s.shape[0] for s in sets), default=0)
        device = sets[0].device if sets else torch.device("cpu")
        params = torch.zeros(len(sets), n_max, PARAMS_PER_SPLAT, device=device)
        mask = torch.zeros(len(sets), n_max, dtype=torch.bool, device=device)
        for b, s in enumerate(sets):
            params[b, : s.shape[0]] = s.to(params.dtype)
            mask[b, : s.shape[0]] = True
        return cls(params, mask, height, width)

    def to_list(self) -> list[torch.Tensor]:
        """The valid splats of each image, ``[n_b, 8]`` each."""
        return [self.params[b][self.mask[b]] for b in range(len(self))]

    def compact(self) -> Splats:
        """Move valid splats to the front of each row and trim the padding to the longest set."""
        return Splats.from_list(self.to_list(), self.height, self.width)

    def select(self, index: torch.Tensor | Sequence[int]) -> Splats:
        """The images at ``index`` (a bool mask or integer indices over the batch)."""
        return Splats(self.params[index], self.mask[index], self.height, self.width)

    def to(self, device: torch.device | str) -> Splats:
        return Splats(self.params.to(device), self.mask.to(device), self.height, self.width)

    def __len__(self) -> int:
        return self.params.shape[0]

    # ------------------------------------------------------------------ accounting
    def counts(self) -> torch.Tensor:
        """Valid splats per image, ``[B]`` int64."""
        return self.mask.sum(dim=1)

    def nbytes(self) -> torch.Tensor:
        """float16 storage bytes per image, ``[B]``."""
        return self.counts() * BYTES_PER_SPLAT

    def rgb_nbytes(self) -> int:
        """Raw 8-bit RGB bytes of one image of this size."""
        return self.height * self.width * 3

    def compression_ratios(self) -> torch.Tensor:
        """``H*W*3 / (16*n)`` per image, ``[B]`` float64 (inf where n = 0)."""
        return compression_ratio(self.height, self.width, self.counts())

    # ------------------------------------------------------------------ packing
    def pack(self, b: int) -> bytes:
        """Image ``b``'s valid splats as raw little-endian float16 bytes (16 per splat)."""
        return pack_params(self.params[b][self.mask[b]])

    @classmethod
    def unpack(cls, blobs: Sequence[bytes], height: int, width: int) -> Splats:
        """Inverse of :meth:`pack` for a list of images."""
        return cls.from_list([unpack_params(blob) for blob in blobs], height, width)

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, keys: Sequence[str] | None = None) -> None:
        """Write the batch as a safetensors file (format in the module docstring)."""
        if keys is not None and len(keys) != len(self):
            raise ValueError(f"{len(keys)} keys for {len(self)} images")
        compact = self.compact()
        meta = {
            "format": FORMAT_NAME,
            "version": str(FORMAT_VERSION),
            "height": str(self.height),
            "width": str(self.width),
        }
        if keys is not None:
            meta["keys"] = json.dumps(list(keys))
        tensors = {
            "params": compact.params.detach().to("cpu", torch.float16).contiguous(),
            "counts": compact.counts().to("cpu", torch.int32).contiguous(),
        }
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> tuple[Splats, list[str] | None]:
        """Read a file written by :meth:`save`; returns the batch (float32, CPU) and its keys."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT_NAME:
            raise ValueError(f"{path}: not a streamfit splats file (format={meta.get('format')!r})")
        if int(meta.get("version", -1)) > FORMAT_VERSION:
            raise ValueError(
                f"{path}: format version {meta['version']} is newer than {FORMAT_VERSION}"
            )
        tensors = load_file(str(path))
        params = tensors["params"].to(torch.float32)
        counts = tensors["counts"].to(torch.int64)
        mask = torch.arange(params.shape[1])[None, :] < counts[:, None]
        keys = json.loads(meta["keys"]) if "keys" in meta else None
        return cls(params * mask[..., None], mask, int(meta["height"]), int(meta["width"])), keys


def pack_params(params: torch.Tensor) -> bytes:
    """``[n, 8]`` float parameters -> ``16 * n`` bytes of little-endian float16."""
    if params.ndim != 2 or params.shape[1] != PARAMS_PER_SPLAT:
        raise ValueError(f"expected [n, {PARAMS_PER_SPLAT}] parameters, got {tuple(params.shape)}")
    return params.detach().to("cpu", torch.float32).numpy().astype("<f2").tobytes()


def unpack_params(blob: bytes) -> torch.Tensor:
    """Inverse of :func:`pack_params`: ``[n, 8]`` float32 on the CPU."""
    if len(blob) % BYTES_PER_SPLAT:
        raise ValueError(
            f"packed splats must be a multiple of {BYTES_PER_SPLAT} bytes, got {len(blob)}"
        )
    array = np.frombuffer(blob, dtype="<f2").astype(np.float32).reshape(-1, PARAMS_PER_SPLAT)
    return torch.from_numpy(array)
