#!/usr/bin/env bash
# Tenth session, second call on a fresh nvidia-h200 machine, after the frame kernel's fix: the machine's software
# to $OUT/env.txt; benchmarks/frame_attention_probe.py (the block eager, compiled, behind an opaque op and through
# an AOTInductor package) to $OUT/probe.txt; then benchmarks/queue-tenth.txt through gpu_explore.sh (later calls:
# `bash benchmarks/gpu_explore.sh wait`).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_setup.sh  # bundle unpacked, $out/env.txt
PYTHONPATH=/tmp/site:$PWD timeout 240 python3 benchmarks/frame_attention_probe.py "$out" 2>&1 \
  | grep -v "Warning\|USDT\|_warn_once\|nvdisasm" > "$out/probe.txt"
cat "$out/probe.txt" | grep -v "^ \|^\[\|^\]"
bash benchmarks/gpu_explore.sh start benchmarks/queue-tenth.txt "${1:-300}"
