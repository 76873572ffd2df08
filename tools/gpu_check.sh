#!/usr/bin/env bash
# On a machine with a CUDA GPU: the CUDA tests, the compiled-code report, the fitting
# benchmark rows to record in BENCHMARKS.md and, where Nsight Compute is installed, a profile
# of one fused tile-kernel launch at batch 1024.
#
#   bash tools/gpu_check.sh [OUT_DIR] [--shards shard.tar ...]
#
# Writes OUT_DIR/{tests.log, kernels.json, bench_400.json, bench_400.png, ncu.txt}.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/gpu_check}"
shift || true
mkdir -p "$out"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
tests_failed=0

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv
python -c "import torch, numba, numba_cuda; print('torch', torch.__version__, 'numba', numba.__version__, 'numba-cuda', numba_cuda.__version__)"

python -m pytest -q -p no:cacheprovider -m cuda tests/test_kernels_cudasim.py 2>&1 | tee "$out/tests.log" || tests_failed=1
python tools/kernel_report.py --json "$out/kernels.json"
python tools/benchmark_fit.py --device cuda --batches 1,16,256,1024,4096 --gaussians 400 \
    --iters 100 --repeats 3 --json "$out/bench_400.json" --plot "$out/bench_400.png" "$@"

if command -v ncu >/dev/null; then
    # the second raster_tiles launch of a 1024-image, 400-splat fit (the first compiles)
    ncu --kernel-name regex:raster_tiles --launch-skip 1 --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section SchedulerStats \
        --section WarpStateStats --section ComputeWorkloadAnalysis \
        python -c "import torch; from streamfit.fit import FitConfig, fit, get_backend; \
fit(torch.rand(1024, 224, 224, 3, device='cuda'), FitConfig(gaussians=400, iters=3), \
get_backend('cuda'))" > "$out/ncu.txt" 2>&1 || true
    grep -E "Issue Slots Busy|Issued Ipc Active|Executed Ipc Active|Achieved Occupancy|Duration|SM Busy|Warp Cycles Per Issued|No Eligible|Theoretical Occupancy|Registers Per" "$out/ncu.txt" || true
fi
if [ "$tests_failed" = 1 ]; then echo "CUDA tests FAILED: see $out/tests.log"; exit 1; fi
