#!/usr/bin/env bash
# Eighth session, first call on a fresh nvidia-h100-x1 machine: the machine's software to $OUT/env.txt; the
# first down block compiled with and without v2v.temporal (benchmarks/temporal_probe.py, $OUT/probe.txt); then
# benchmarks/queue-eighth.txt through gpu_explore.sh (later calls: `bash benchmarks/gpu_explore.sh wait`).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/out}; mkdir -p "$out"
mkdir -p /tmp/site && [ -f /tmp/site/.done ] || { tar -xJf .gpu/site.tar.xz -C /tmp/site && touch /tmp/site/.done; }
{ nvidia-smi --query-gpu=name,driver_version --format=csv
  PYTHONPATH=/tmp/site python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
} > "$out/env.txt" 2>&1
PYTHONPATH=/tmp/site:$PWD TORCHINDUCTOR_CACHE_DIR=/tmp/bench/inductor timeout 300 \
  python3 benchmarks/temporal_probe.py "$out" 4 2>&1 | grep -v "Warning\|USDT" > "$out/probe.txt"
cat "$out/probe.txt"
bash benchmarks/gpu_explore.sh start benchmarks/queue-eighth.txt "${1:-200}"
