#!/usr/bin/env bash
# Sixth session, first call on a fresh nvidia-h100-x1 machine: which C++ compiler builds AOTInductor packages
# that load (benchmarks/aot_cxx_probe.py -> $OUT/cxx.txt), where the model load goes (load_probe.py ->
# $OUT/load.txt), then benchmarks/queue-sixth.txt with the first compiler that works, through gpu_explore.sh
# (later calls: `bash benchmarks/gpu_explore.sh wait`).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/out}; mkdir -p "$out"
mkdir -p /tmp/site && [ -f /tmp/site/.done ] || { tar -xJf .gpu/site.tar.xz -C /tmp/site && touch /tmp/site/.done; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TQDM_DISABLE=1
{ nvidia-smi --query-gpu=name,driver_version --format=csv; ls -l /usr/bin/*++* /usr/bin/*gcc*; which -a g++ c++
  python3 -c "import torch; print(torch.__version__); print(torch.__config__.show())"
  python3 -c "import accelerate, transformers; print('accelerate', accelerate.__version__, 'transformers', transformers.__version__)"
} > "$out/env.txt" 2>&1
python3 -c "from v2v.bench import random_zeroscope as r; r('/tmp/bench/random-576w', 'cuda')" > "$out/build.txt" 2>&1 &
timeout 360 python3 benchmarks/aot_cxx_probe.py "$out/cxx.txt"
wait
cxx=$(grep -P "\tbuilt, LOADS" "$out/cxx.txt" | grep -v "^/usr/bin/g++\s\|^/usr/bin/c++\s" | head -1 | cut -f1)
[ -n "$cxx" ] || cxx=$(grep -P "\tbuilt, LOADS" "$out/cxx.txt" | head -1 | cut -f1)
echo "chosen CXX: ${cxx:-none}" | tee -a "$out/cxx.txt"
timeout 200 python3 benchmarks/load_probe.py /tmp/bench/random-576w > "$out/load.txt" 2>&1
if [ -n "$cxx" ]; then sed "s#@CXX@#$cxx#" benchmarks/queue-sixth.txt > /tmp/queue6.txt
else grep -v "@CXX@" benchmarks/queue-sixth.txt > /tmp/queue6.txt; fi
bash benchmarks/gpu_explore.sh start /tmp/queue6.txt "${1:-120}"
