#!/usr/bin/env bash
# The GPU calls behind benchmarks/RESULTS.md's second section, on one nvidia-h200-x2 machine, back to back
# (the device keeps a machine warm 30 s between calls; B and C reuse the compile cache A and B left):
#   call A: bash benchmarks/gpu_session.sh A   start-up (fresh compile cache), fused projections
#   call B: bash benchmarks/gpu_session.sh B   the seed pipeline, compiled batch 4, the Ray job on 1 and 2 GPUs
#   call C: bash benchmarks/gpu_session.sh C   eager and compiled at batch 1 and 4, with the quality guard
# Each stays under the device's 10-minute limit and writes 4 files to $OUT (at most 8 come back a call).
# The kernel profile of a compiled step, planned here as a call D, ran later in queue-explore.txt (gpu_explore.sh).
# As run, call A also started call C's benchmark on GPU 0 in parallel; it overran, so C runs it alone.
set -uo pipefail
cd "$(dirname "$0")/.."
case "$1" in
A) CUDA_VISIBLE_DEVICES=1 bash benchmarks/gpu_run.sh startup --variants bfloat16,bfloat16+fuse_qkv \
     --batch-sizes 4 --startup --startup-variant bfloat16+compile --startup-batch 4 ;;
B) bash benchmarks/gpu_run.sh e2e --reference --variants bfloat16+compile --batch-sizes 4 --e2e-clips 48 \
     --e2e-gpus 1,2 ;;
C) bash benchmarks/gpu_run.sh sampler --reference --quality --variants bfloat16,bfloat16+compile \
     --batch-sizes 1,4 ;;
*) echo "usage: $0 A|B|C" >&2; exit 2 ;;
esac
