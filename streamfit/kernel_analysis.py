"""What the fitting kernels compile to, read without a GPU: the CUDA kernels' resources, SASS
and hot loops, and how fast that should run on an H100 (``tools/kernel_report.py`` prints
it); the CPU kernels' vector instructions (``tools/cpu_time_split.py``).

Every kernel of :mod:`cuda_kernels.gpu` is compiled for sm_90 exactly as the backend launches
it (numba-cuda to PTX, ``ptxas`` to a cubin, ``nvdisasm`` to SASS). Per kernel: registers,
static shared memory, spill bytes and stack frame (``ptxas -v``), and the theoretical occupancy
on an H100 (65,536 registers, 64 warps, 32 blocks and 228 KB of shared memory per SM, registers
allocated per warp in units of 256). For the tile kernel it finds the two hot loops in the
SASS: the innermost loops that hold the ``MUFU.EX2`` of the splat weight, the one with warp
shuffles being the backward. One trip of such a loop is one splat against the ``rows`` pixels
of every thread, so its instruction count over ``rows`` is the SASS instructions issued per
(pixel, splat) pair, counted from the compiled code (predicated and branched-over
instructions included: an upper bound).

The prediction (batch 4096 x 400 splats x 224x224 x 100 iterations by default), in warp
instructions issued, since the tile kernel is issue-bound:

* tile lists: the structured initial layout of ``gaussians`` splats, binned with the same
  footprint box rule as the kernels (``E`` (splat, tile) entries and ``W`` bitmask words per
  tile): per image and iteration the tile kernel issues
  ``warps_per_block * (E * (fwd_loop + bwd_loop) + tiles * W * 2 * word_overhead
  + tiles * block_overhead)`` warp instructions, ``word_overhead`` being the enclosing word
  loop less its hot loop and ``block_overhead`` the rest of the kernel, each counted once;
* ``project`` and ``adam_step``: their whole SASS once per warp of splats / parameters;
* the issue rate is ``SMs * 4 schedulers * clock * efficiency`` (the share of cycles a
  scheduler issues; BENCHMARKS.md compares it with Nsight Compute's "issue slots busy" on an
  H100), checked against the ``MUFU`` bound (16 per SM per clock) and the target read (HBM
  bandwidth), the largest of the three winning;
* the fitter's element-wise torch ops between the launches (L1, masking, finiteness checks,
  zeroing: ~16 passes over the ``[B, N, 8]`` float32 parameters) at the same bandwidth, added.

Figures are predictions until ``tools/benchmark_fit.py`` measures them on a GPU.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import types as pytypes
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cuda_kernels import cpu as cpu_kernels
from cuda_kernels import gpu
from streamfit.fit.backends.cuda import DEFAULT_TILE

# H100 SXM per-SM limits (compute capability 9.0)
SM90 = {"registers": 65536, "warps": 64, "blocks": 32, "shared_bytes": 228 * 1024}
SHARED_RESERVED_PER_BLOCK = 1024  # the driver reserves 1 KB of shared memory per block
REGISTER_UNIT = 256  # registers are allocated per warp in units of 256
MUFU_PER_SM_CLOCK = 16
TORCH_PASSES = 16  # element-wise passes over the [B, N, 8] parameters per iteration
TILE_KERNELS = ("raster_tiles", "render_tiles")  # built per tile size


@dataclass
class KernelInfo:
    """One compiled kernel at one tile size: ``ptxas -v``'s resources, the theoretical
    occupancy, its SASS length and (the tile kernel) its hot loops (:func:`hot_loops`)."""

    name: str
    tile: int
    registers: int
    shared_bytes: int
    spill_bytes: int
    stack_bytes: int
    threads: int
    occupancy: float
    sass_instructions: int
    loops: dict = field(default_factory=dict)


@dataclass
class KernelReportConfig:
    """The tile sizes to compile, and the workload and GPU the prediction assumes (defaults:
    the paper's batch on an H100 SXM)."""

    # ---- the GPU
    sms: int = 132
    """Streaming multiprocessors (an H100 SXM's)."""
    clock_ghz: float = 1.755
    """Sustained SM clock."""
    efficiency: float = 0.85
    """Share of cycles a warp scheduler issues an instruction."""
    bandwidth_tbs: float = 3.35
    """Device memory bandwidth, TB/s (an H100 SXM's HBM3)."""
    # ---- the kernels and the workload
    tiles: list[int] = field(default_factory=lambda: list(gpu.TILES))
    """Tile sizes to compile and predict (each one the backend accepts)."""
    batch: int = 4096
    """Images fitted together (labels the prediction; the model is per image)."""
    gaussians: int = 400
    """Splats per image of the structured layout the tile lists come from."""
    size: int = 224
    """Image side in pixels."""
    iters: int = 100
    """Fitting iterations a fit."""


# ---------------------------------------------------------------------------------- tools
def find_tool(name: str) -> str | None:
    """``ptxas`` from PATH; ``nvdisasm`` from PATH or the CUDA tools in the triton wheel."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import triton
    except ImportError:
        return None
    candidate = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(candidate) if candidate.is_file() else None


def compile_ptx(kernel, signature) -> str:
    """PTX for sm_90 of a ``numba.cuda`` kernel, without a GPU.

    numba-cuda compiles the device functions a kernel calls for the *current* device's
    compute capability; with no device there is none, so it is stated as 9.0 here.
    """
    from numba import cuda
    from numba.cuda import dispatcher

    current = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=(9, 0))
    try:
        fastmath = kernel.targetoptions.get("fastmath", False)  # as the kernel was declared
        ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(9, 0), fastmath=fastmath)
    finally:
        dispatcher.get_current_device = current
    return ptx


def assemble(ptx: str, ptxas: str, nvdisasm: str, workdir: Path, stem: str) -> tuple[dict, str]:
    """``ptxas -v`` resources and the SASS text of one PTX module."""
    ptx_path = workdir / f"{stem}.ptx"
    cubin = workdir / f"{stem}.cubin"
    ptx_path.write_text(ptx)
    run = subprocess.run(
        [ptxas, "-arch=sm_90", "-v", "-o", str(cubin), str(ptx_path)],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        raise RuntimeError(f"ptxas failed for {stem}:\n{run.stderr[-2000:]}")
    log = run.stderr + run.stdout
    resources = {
        "registers": _int(r"Used (\d+) registers", log),
        "shared_bytes": _int(r"(\d+) bytes smem", log),
        "spill_bytes": _int(r"(\d+) bytes spill stores", log)
        + _int(r"(\d+) bytes spill loads", log),
        "stack_bytes": _int(r"(\d+) bytes stack frame", log),
    }
    sass = subprocess.run(
        [nvdisasm, "-c", str(cubin)], capture_output=True, text=True, check=True
    ).stdout
    return resources, sass


def _int(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else 0


# ---------------------------------------------------------------------------------- SASS
_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")
_LABEL = re.compile(r"^(\.L_x_\d+):")
_BRANCH = re.compile(r"BRA\s+`\((\.L_x_\d+)\)")


def parse_sass(sass: str) -> tuple[list[tuple[int, str, str]], dict[str, int]]:
    """``[(address, opcode, line)]`` and ``label -> address`` of the next instruction."""
    instructions: list[tuple[int, str, str]] = []
    pending: list[str] = []
    labels: dict[str, int] = {}
    for line in sass.splitlines():
        label = _LABEL.match(line.strip())
        if label:
            pending.append(label.group(1))
            continue
        match = _INSTRUCTION.search(line)
        if match:
            address = int(match.group(1), 16)
            for name in pending:
                labels[name] = address
            pending = []
            instructions.append((address, match.group(2), line))
    return instructions, labels


def loops(
    instructions: list[tuple[int, str, str]], labels: dict[str, int]
) -> list[tuple[int, int]]:
    """``(first, last)`` instruction indices of every loop: a branch back to a lower address."""
    index_of = {address: k for k, (address, _, _) in enumerate(instructions)}
    found = []
    for k, (address, opcode, line) in enumerate(instructions):
        branch = _BRANCH.search(line) if opcode.startswith("BRA") else None
        if branch and labels.get(branch.group(1), address + 1) <= address:
            found.append((index_of[labels[branch.group(1)]], k))
    return found


def hot_loops(sass: str) -> dict[str, dict]:
    """The innermost loops holding ``MUFU.EX2``: ``{"forward"|"backward": {"instructions",
    "mufu", "shuffles", "opcodes"}}`` plus ``"word_overhead"`` (enclosing loop less hot loop)."""
    instructions, labels = parse_sass(sass)
    regions = loops(instructions, labels)

    def count(region, prefix):
        return sum(op.startswith(prefix) for _, op, _ in instructions[region[0] : region[1] + 1])

    with_exp = [r for r in regions if count(r, "MUFU.EX2")]
    innermost = [
        r for r in with_exp if not any(o != r and r[0] <= o[0] and o[1] <= r[1] for o in with_exp)
    ]
    result: dict[str, dict] = {}
    for region in innermost:
        kind = "backward" if count(region, "SHFL") else "forward"
        ops: dict[str, int] = {}
        for _, op, _ in instructions[region[0] : region[1] + 1]:
            base = op.split(".")[0]
            ops[base] = ops.get(base, 0) + 1
        enclosing = [o for o in regions if o[0] <= region[0] and region[1] <= o[1] and o != region]
        outer = min(enclosing, key=lambda o: o[1] - o[0]) if enclosing else region
        size = region[1] - region[0] + 1
        result[kind] = {
            "instructions": size,
            "mufu": count(region, "MUFU.EX2"),
            "shuffles": count(region, "SHFL"),
            "word_overhead": (outer[1] - outer[0] + 1) - size,
            "opcodes": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        }
    return result


def occupancy(registers: int, shared_bytes: int, threads: int) -> float:
    """Theoretical share of an H100 SM's 64 warp slots that blocks of this kernel fill."""
    warps = math.ceil(threads / gpu.WARP)
    per_warp = math.ceil(max(registers, 1) * gpu.WARP / REGISTER_UNIT) * REGISTER_UNIT
    blocks = min(
        SM90["blocks"],
        SM90["warps"] // warps,
        SM90["registers"] // (per_warp * warps),
        SM90["shared_bytes"] // (shared_bytes + SHARED_RESERVED_PER_BLOCK),
    )
    return blocks * warps / SM90["warps"]


# ---------------------------------------------------------------------------------- layout
def structured_layout(gaussians: int, size: int, tile: int) -> dict:
    """Tile-list statistics of the structured initial layout, binned as the kernels bin."""
    import torch

    from streamfit.fit.init import structured_init
    from streamfit.render import Q_CUTOFF

    image = torch.full((1, size, size, 3), 0.5)
    params = structured_init(image, gaussians).numpy().astype(np.float32)
    mask = np.ones((1, gaussians), dtype=np.bool_)
    proj = np.empty((1, gaussians, cpu_kernels.PROJ_FIELDS), np.float32)
    box = np.empty((1, gaussians, 4), np.int32)
    cpu_kernels.project(
        params, mask, size, size, np.float32(Q_CUTOFF), proj, box, np.zeros(1, np.uint8)
    )
    tiles_x = math.ceil(size / tile)
    offsets, order = cpu_kernels.bin_tiles(box, tile, tiles_x, tiles_x)
    tiles = tiles_x * tiles_x
    words = [len({int(i) // 32 for i in order[offsets[t] : offsets[t + 1]]}) for t in range(tiles)]
    return {
        "tiles": tiles,
        "entries": int(offsets[-1]),
        "words_per_tile": math.ceil(gaussians / 32),
        "nonempty_words_per_tile": float(np.mean(words)),
        "pairs_per_pass": int(offsets[-1]) * tile * tile,
    }


def fma_counts(kernel) -> dict[str, int]:
    """Packed (``ymm``/``zmm``) and scalar single-precision FMAs in a Numba CPU ``kernel``'s
    compiled code (all its stages, inlined or not): the evidence that the pixel loops are
    vectorised. Empty when the code came from the on-disk cache (Numba cannot show that)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        asm = "".join(kernel.inspect_asm().values())
    if len(asm) < 100:
        return {}
    return {
        "packed FMA (ymm/zmm)": len(re.findall(r"vfn?m(?:add|sub)\w*ps\s[^\n]*%[yz]mm", asm)),
        "scalar FMA": len(re.findall(r"vfn?m(?:add|sub)\w*ss\s", asm)),
    }


# ---------------------------------------------------------------------------------- model
def analyse(cfg: KernelReportConfig, workdir: Path) -> dict:
    """Every kernel of :mod:`cuda_kernels.gpu` compiled for each of ``cfg.tiles`` in
    ``workdir`` (PTX, cubins, SASS), read, and the prediction per tile size: ``{"kernels":
    [KernelInfo as a dict], "model": {tile: prediction}, "predicted_images_per_s",
    "predicted_tile", "tiles"}``. Raises RuntimeError without ``ptxas`` and ``nvdisasm``."""
    ptxas, nvdisasm = find_tool("ptxas"), find_tool("nvdisasm")
    if ptxas is None or nvdisasm is None:
        raise RuntimeError("needs ptxas and nvdisasm (the CUDA toolkit, or triton's wheel)")
    kernels: list[KernelInfo] = []
    shared_done: dict[str, KernelInfo] = {}
    predictions: dict[int, dict] = {}
    for tile in cfg.tiles:
        geometry = gpu.build(tile)
        by_name: dict[str, KernelInfo] = {}
        for name, (kernel, signature) in gpu.kernel_signatures(tile).items():
            per_tile = name in TILE_KERNELS
            if not per_tile and name in shared_done:  # built once for every tile
                by_name[name] = shared_done[name]
                continue
            stem = f"{name}_t{tile}" if per_tile else name
            resources, sass = assemble(
                compile_ptx(kernel, signature), ptxas, nvdisasm, workdir, stem
            )
            threads = geometry.threads if per_tile else 256
            info = KernelInfo(
                name=name,
                tile=tile,
                threads=threads,
                occupancy=occupancy(resources["registers"], resources["shared_bytes"], threads),
                sass_instructions=len(parse_sass(sass)[0]),
                loops=hot_loops(sass) if name == "raster_tiles" else {},
                **resources,
            )
            by_name[name] = info
            if not per_tile:
                shared_done[name] = info
            kernels.append(info)
        predictions[tile] = predict(cfg, tile, geometry, by_name)
    # the backend's default tile when it was compiled, else the fastest one
    tile = (
        DEFAULT_TILE
        if DEFAULT_TILE in predictions
        else max(predictions, key=lambda t: predictions[t]["images_per_s"])
    )
    return {
        "predicted_images_per_s": predictions[tile]["images_per_s"],
        "predicted_tile": tile,
        "tiles": list(cfg.tiles),
        "kernels": [asdict(k) for k in kernels],
        "model": {str(t): p for t, p in predictions.items()},
    }


def predict(cfg: KernelReportConfig, tile: int, geometry, by_name: dict[str, KernelInfo]) -> dict:
    """Images/s of ``fit()`` on an H100 SXM for this tile size (model in the docstring)."""
    raster = by_name["raster_tiles"]
    fwd = raster.loops.get("forward")
    bwd = raster.loops.get("backward")
    if fwd is None or bwd is None:
        raise RuntimeError(f"tile {tile}: hot loops not found in the SASS")
    layout = structured_layout(cfg.gaussians, cfg.size, tile)
    warps = geometry.threads // gpu.WARP
    rows = geometry.rows
    loop_instructions = fwd["instructions"] + bwd["instructions"]
    block_overhead = raster.sass_instructions - (
        fwd["instructions"] + fwd["word_overhead"] + bwd["instructions"] + bwd["word_overhead"]
    )
    word_overhead = fwd["word_overhead"] + bwd["word_overhead"]
    per_image_raster = warps * (
        layout["entries"] * loop_instructions
        + layout["tiles"] * layout["words_per_tile"] * word_overhead
        + layout["tiles"] * block_overhead
    )
    splat_warps = math.ceil(cfg.gaussians / gpu.WARP)
    per_image_other = (
        splat_warps * by_name["project"].sass_instructions
        + math.ceil(8 * cfg.gaussians / gpu.WARP) * by_name["adam_step"].sass_instructions
    )
    issue_rate = cfg.sms * 4 * cfg.clock_ghz * 1e9 * cfg.efficiency  # warp instr / s
    t_issue = (per_image_raster + per_image_other) / issue_rate
    mufu = 2 * layout["pairs_per_pass"]
    t_mufu = mufu / (cfg.sms * MUFU_PER_SM_CLOCK * cfg.clock_ghz * 1e9)
    target_bytes = cfg.size * cfg.size * 3 * 4
    t_target = target_bytes / (cfg.bandwidth_tbs * 1e12)
    t_torch = TORCH_PASSES * cfg.gaussians * 8 * 4 / (cfg.bandwidth_tbs * 1e12)
    per_iteration = max(t_issue, t_mufu, t_target) + t_torch
    return {
        "layout": layout,
        "rows_per_thread": rows,
        "warps_per_block": warps,
        "sass_per_pair_forward": fwd["instructions"] / rows,
        "sass_per_pair_backward": bwd["instructions"] / rows,
        "warp_instructions_per_image_iteration": per_image_raster + per_image_other,
        "seconds_per_image_iteration": {
            "issue": t_issue,
            "mufu": t_mufu,
            "target_read": t_target,
            "torch_ops": t_torch,
        },
        "bound": max(
            ("issue", t_issue), ("mufu", t_mufu), ("target_read", t_target), key=lambda kv: kv[1]
        )[0],
        "images_per_s": 1.0 / (cfg.iters * per_iteration),
        "assumptions": {
            "batch": cfg.batch,
            "gaussians": cfg.gaussians,
            "size": cfg.size,
            "iters": cfg.iters,
            "sms": cfg.sms,
            "clock_ghz": cfg.clock_ghz,
            "efficiency": cfg.efficiency,
            "bandwidth_tbs": cfg.bandwidth_tbs,
        },
    }
