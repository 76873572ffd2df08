#!/usr/bin/env bash
# Wheels of the packages a bare GPU machine (Python 3.12, torch, numba-cuda and triton
# installed, no network) lacks, into .whl/ for tools/gpu_check.sh to install first. Run it
# here, where PyPI is reachable; the versions are those this checkout is tested with.
#
#   bash tools/gpu_wheels.sh [DIR]        # default .whl (git-ignored: add it to .git/info/exclude)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="${1:-.whl}"
mkdir -p "$dir"
binary=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir")
# numpy 2.4: the machine's numba-cuda calls np.row_stack, which NumPy 2.5 removed
python3 -m pip download -q "${binary[@]}" numpy==2.4.6 pydantic-core==2.50.5 \
    constriction==0.5.0 wcwidth==0.9.4
python3 -m pip download -q --no-deps --only-binary=:all: -d "$dir" hjson==3.1.0 \
    pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5 \
    typing_extensions==4.16.0 open_clip_torch==3.3.0 ftfy==6.3.1 torchdata==0.11.0 \
    webdataset==1.0.2 braceexpand==0.1.7 omegaconf==2.4.0
# deepspeed is an sdist: a pure-Python wheel of it, built against this environment's torch
DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps --no-build-isolation deepspeed==0.19.8 -w "$dir"
ls "$dir"
