#!/usr/bin/env bash
# Ninth session, first call on a fresh nvidia-h200 machine: the machine's software to $OUT/env.txt; every
# attention shape of a step under each SDPA backend and v2v.frame_attention's kernel
# (benchmarks/attention_probe.py, $OUT/probe.txt, $OUT/attention_probe.json); then benchmarks/queue-ninth.txt
# through gpu_explore.sh (later calls: `bash benchmarks/gpu_explore.sh wait`).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/out}; mkdir -p "$out"
mkdir -p /tmp/site && [ -f /tmp/site/.done ] || { tar -xJf .gpu/site.tar.xz -C /tmp/site && touch /tmp/site/.done; }
{ nvidia-smi --query-gpu=name,driver_version --format=csv
  PYTHONPATH=/tmp/site python3 -c "import torch, diffusers, triton; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'triton', triton.__version__)"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
PYTHONPATH=/tmp/site:$PWD timeout 300 python3 benchmarks/attention_probe.py "$out" 4 2>&1 \
  | grep -v "Warning\|USDT" > "$out/probe.txt"
cat "$out/probe.txt"
bash benchmarks/gpu_explore.sh start benchmarks/queue-ninth.txt "${1:-200}"
