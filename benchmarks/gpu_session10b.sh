#!/usr/bin/env bash
# Tenth session, second call on a fresh nvidia-h200 machine, after the frame kernel's fix: the machine's software
# to $OUT/env.txt; benchmarks/frame_attention_probe.py (the block eager, compiled, behind an opaque op and through
# an AOTInductor package) to $OUT/probe.txt; then benchmarks/queue-tenth.txt through gpu_explore.sh (later calls:
# `bash benchmarks/gpu_explore.sh wait`).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/out}; mkdir -p "$out"
mkdir -p /tmp/site && [ -f /tmp/site/.done ] || { tar -xJf .gpu/site.tar.xz -C /tmp/site && touch /tmp/site/.done; }
{ nvidia-smi --query-gpu=name,driver_version --format=csv
  PYTHONPATH=/tmp/site python3 -c "import torch, diffusers, triton; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'triton', triton.__version__)"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
PYTHONPATH=/tmp/site:$PWD timeout 240 python3 benchmarks/frame_attention_probe.py "$out" 2>&1 \
  | grep -v "Warning\|USDT\|_warn_once\|nvdisasm" > "$out/probe.txt"
cat "$out/probe.txt" | grep -v "^ \|^\[\|^\]"
bash benchmarks/gpu_explore.sh start benchmarks/queue-tenth.txt "${1:-300}"
