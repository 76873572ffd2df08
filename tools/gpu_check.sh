#!/usr/bin/env bash
# The GPU check of the main job, on one H100/H200, in about 6 minutes:
#   1. the CUDA tests (tests/test_gpu.py, tests/test_kernels_cudasim.py: kernels against
#      their references, graphed fits against eager ones, no host sync in a fit or a step);
#   2. the default fit (400 splats, 224x224, adaptive + exact colours, 16 iterations) at
#      batches 256 and 4096 as CUDA graphs, and at 256 launched op by op and with the
#      Cholesky colour solver (tools/benchmark_fit.py, on imagenet-sample's train photos);
#   3. its mean PSNR on the first 48 held-out photos on the cuda and the cpu backend;
#   4. the training job (recipes/configs/gpu_check.yaml) in three modes of one config: RGB
#      pixels, splats fitted cold (no cache), splats from a warm cache; and cold with the
#      fits on the training stream instead of a stream of their own;
#   5. OUT/gpu_report.json (tools/gpu_report.py; refreshed after each stage) with every
#      figure, OUT/gpu_check.log, and OUT/raw.tar.gz (the files the report was made from).
#
#   bash tools/gpu_check.sh OUT [SAMPLE]
#
# SAMPLE: the imagenet-sample folder (default data/imagenet-sample, else ../shared/data/...).
# Packages the machine lacks may wait as wheels in .whl/ (installed into /tmp/site first).
set -uo pipefail
cd "$(dirname "$0")/.."
out="$(mkdir -p "${1:-runs/gpu_check}" && cd "${1:-runs/gpu_check}" && pwd)"
sample="${2:-data/imagenet-sample}"
[ -f "$sample/train-000000.tar" ] || sample=../shared/data/imagenet-sample
work="${GPU_CHECK_WORK:-/tmp/gpu_check}"
rm -rf "$work" && mkdir -p "$work/runs" "$work/data"
exec > >(tee "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
start=$SECONDS
stamp() { echo "=== [$((SECONDS - start)) s] $*"; }
# OUT/gpu_report.json from what has been measured so far (a cut-short run keeps its figures)
report() { python3 tools/gpu_report.py "$work" --json "$out/gpu_report.json" > "$work/report.log" 2>&1; }

if compgen -G ".whl/*.whl" >/dev/null; then
    stamp "installing the carried wheels"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

stamp "the device"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit \
    --format=csv
python3 - "$work/device.json" <<'EOF'
import datetime, json, subprocess, sys
import numba, numpy, torch
fields = "name,driver_version,clocks.max.sm,clocks.mem,power.limit,memory.total"
row = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip().split(", ")
info = dict(zip(fields.split(","), row))
info.update(date=datetime.date.today().isoformat(), torch=torch.__version__,
            numba=numba.__version__, numpy=numpy.__version__,
            name=torch.cuda.get_device_name(0))
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(info)
EOF

stamp "in the background: the cpu backend's PSNR, the training data and a random teacher"
(NUMBA_NUM_THREADS=6 timeout 240 python3 tools/fit_images.py "$sample/heldout-000000.tar" \
    --limit 48 --backend cpu --json "$work/psnr_cpu.json" > "$work/psnr_cpu.log" 2>&1) &
cpu_psnr=$!
(for i in $(seq -w 0 15); do for s in 0 1 2 3; do
    ln -sf "$(cd "$sample" && pwd)/train-00000$s.tar" "$work/data/train-$i$s.tar"; done; done
 timeout 120 python3 -c "
from streamfit.models import load_teacher
from streamfit.train.checkpoint import save_weights
save_weights(load_teacher('ViT-M-16').state_dict(), '$work/teacher.pt')") &
prepare=$!

stamp "CUDA tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider -m cuda --junitxml="$work/tests.xml" \
    tests/test_gpu.py tests/test_kernels_cudasim.py

bench() {  # name, timeout, arguments
    local name=$1 limit=$2
    shift 2
    stamp "default fit: $name"
    timeout "$limit" python3 tools/benchmark_fit.py --device cuda --gaussians 400 --iters 16 \
        --repeats 3 --no-torch --single-images 0 --shards "$sample"/train-00000{0..3}.tar \
        --json "$work/bench_$name.json" "$@"
}
bench default 90 --batches 256,4096
report
bench eager 45 --batches 256 --eager
bench cholesky 60 --batches 256 colour_solver=cholesky

stamp "default fit: mean PSNR of the first 48 held-out photos, cuda"
timeout 60 python3 tools/fit_images.py "$sample/heldout-000000.tar" --limit 48 --batch 48 \
    --backend cuda --json "$work/psnr_cuda.json"
stamp "waiting for the background jobs"
wait "$prepare"
wait "$cpu_psnr" && tail -n 12 "$work/psnr_cpu.log"

train() {  # mode, timeout, overrides
    local mode=$1 limit=$2
    shift 2
    stamp "training: $mode"
    timeout "$limit" python3 recipes/gsclip_adapt.py --config recipes/configs/gpu_check.yaml \
        run.dir="$work/runs" run.name="$mode" data.shards="$work/data/train-*.tar" \
        data.cache_dir="$work/cache_$mode" model.pretrained="$work/teacher.pt" "$@" \
        > "$work/train_$mode.log" 2>&1
    echo "exit $?"
    grep -vE "^(# resolved|[a-z_]+:$|  )" "$work/train_$mode.log" | tail -n 20
    report
}
train rgb 100 data.fit=none
train cold 100 'data.cache_dir=""'
train warm 120 train.epochs=2
if [ $((SECONDS - start)) -lt 330 ]; then
    train cold_default_stream 100 'data.cache_dir=""' data.fit_stream=default
fi

stamp "the report"
cat "$work/report.log"
# three files come back: the report, this log, and the files the report was made from
(cd "$work" && tar czf "$out/raw.tar.gz" ./*.json ./*.log tests.xml runs/*/metrics.jsonl)
stamp "done"
