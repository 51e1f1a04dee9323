#!/usr/bin/env bash
# The first run on a GPU, at most 10 minutes: each script for a few thousand steps on CUDA (random ViT-B-32 and
# ViT-bigG-14 checkpoints made on the spot), benchmarks/throughput.py with ViT-bigG-14 in fp16 at the default
# chunk size, then one table (steps/s, CLIP frames/s, peak GPU memory, the OpenGL renderer, errors).
#   bash benchmarks/gpu_check.sh [--out DIR]        (benchmarks/gpu_check.py --help for its flags)
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "gpu_check: no nvidia-smi here"
export MUJOCO_GL=${MUJOCO_GL:-egl}  # the NVIDIA driver's EGL draws the humanoid on the GPU
timeout -k 30 600 python benchmarks/gpu_check.py "$@"  # SIGTERM: the running script checkpoints and stops
code=$?
[ $code = 124 ] && echo "gpu_check: stopped after 10 minutes; the rows above are what finished" >&2
exit $code
