#!/usr/bin/env bash
# The GPU calls behind benchmarks/RESULTS.md's 2026-11-27 (second) section, on one nvidia-h200-x2 machine:
#   call 1: bash benchmarks/gpu_session.sh 1     (two benchmark processes at once, one per GPU)
#   call 2: bash benchmarks/gpu_session.sh 2     (the Ray job on 1 and 2 GPUs; reuses call 1's compile cache)
# Each call stays under the device's 10-minute limit; outputs land in $OUT (see gpu_run.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
case "$1" in
1)
  bash benchmarks/gpu_run.sh build --variants '' >/dev/null  # build the random model once, before the two processes
  CUDA_VISIBLE_DEVICES=0 bash benchmarks/gpu_run.sh sampler --reference --quality \
    --variants bfloat16,bfloat16+compile --batch-sizes 1,4 >/dev/null 2>&1 &
  CUDA_VISIBLE_DEVICES=1 bash benchmarks/gpu_run.sh startup --variants bfloat16,bfloat16+fuse_qkv \
    --batch-sizes 4 --startup --startup-variant bfloat16+compile --startup-batch 4
  wait
  tail -n 30 "${OUT:-/tmp/out}/log-sampler.txt"
  ;;
2)
  bash benchmarks/gpu_run.sh e2e --variants bfloat16+compile --batch-sizes 4 --e2e-clips 64 --e2e-gpus 1,2
  ;;
esac
