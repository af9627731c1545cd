#!/usr/bin/env bash
# Ninth session, first call on a fresh nvidia-h200 machine: the machine's software to $OUT/env.txt; every
# attention shape of a step under each SDPA backend and v2v.frame_attention's kernel
# (benchmarks/attention_probe.py, $OUT/probe.txt, $OUT/attention_probe.json); then benchmarks/queue-ninth.txt
# through gpu_explore.sh (later calls: `bash benchmarks/gpu_explore.sh wait`).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_setup.sh  # bundle unpacked, $out/env.txt
PYTHONPATH=/tmp/site:$PWD timeout 300 python3 benchmarks/attention_probe.py "$out" 4 2>&1 \
  | grep -v "Warning\|USDT" > "$out/probe.txt"
cat "$out/probe.txt"
bash benchmarks/gpu_explore.sh start benchmarks/queue-ninth.txt "${1:-200}"
