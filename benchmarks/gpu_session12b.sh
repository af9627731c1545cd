#!/usr/bin/env bash
# Twelfth session, second machine (nvidia-h200, the session's last device minutes): benchmarks/layout_probe.py on
# the job's GPU variant compiled as usual and with inductor's coalescing tiling analysis off (`@nocoalesce`), which
# the prefer_nd_tiling run suggested is what chose the untiled kernels. To $OUT/probe13/ and $OUT/log-probe13.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_setup.sh  # bundle unpacked, $out/env.txt
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 V2V_CACHE=/tmp/v2v-cache V2V_COMPILE_CACHE=/tmp/bench/inductor
timeout "${1:-440}" python3 benchmarks/layout_probe.py "$out/probe13" JOB JOB@nocoalesce 2>&1 \
  | grep -v "Loading weights\|USDT\|Warning\|warn" | tee "$out/log-probe13.txt"
