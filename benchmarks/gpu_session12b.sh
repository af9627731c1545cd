#!/usr/bin/env bash
# Twelfth session, second machine (nvidia-h200, the session's last device minutes): benchmarks/layout_probe.py on
# the job's GPU variant compiled as usual and with inductor's coalescing tiling analysis off (`@nocoalesce`), which
# the prefer_nd_tiling run suggested is what chose the untiled kernels. To $OUT/probe13/ and $OUT/log-probe13.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
timeout "${1:-440}" bash benchmarks/gpu_run.sh probe13 benchmarks/layout_probe.py "${OUT:-/tmp/out}/probe13" \
  JOB JOB@nocoalesce
