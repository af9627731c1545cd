#!/usr/bin/env bash
# Seventh session, first call on a fresh nvidia-h100-x1 machine: the machine's software and compilers to
# $OUT/env.txt, then benchmarks/queue-seventh.txt through gpu_explore.sh (later calls:
# `bash benchmarks/gpu_explore.sh wait`).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/out}; mkdir -p "$out"
mkdir -p /tmp/site && [ -f /tmp/site/.done ] || { tar -xJf .gpu/site.tar.xz -C /tmp/site && touch /tmp/site/.done; }
{ nvidia-smi --query-gpu=name,driver_version --format=csv; which -a g++; readlink -f "$(which g++)" /usr/bin/g++
  PYTHONPATH=/tmp/site python3 -c "import torch; print(torch.__version__)"
} > "$out/env.txt" 2>&1
bash benchmarks/gpu_explore.sh start benchmarks/queue-seventh.txt "${1:-540}"
