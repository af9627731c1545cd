#!/usr/bin/env bash
# Twelfth session, first call on a fresh nvidia-h200-x2 machine: the machine's software to $OUT/env.txt, then
# benchmarks/queue-twelfth.txt through gpu_explore.sh (later calls: `bash benchmarks/gpu_explore.sh wait`).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_setup.sh  # bundle unpacked once, before the parallel runs; $out/env.txt
bash benchmarks/gpu_explore.sh start benchmarks/queue-twelfth.txt "${1:-520}"
