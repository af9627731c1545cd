#!/usr/bin/env bash
# One call on a lent GPU machine (no network): unpack the carried bundle, check, measure or test.
#   bash benchmarks/gpu_run.sh NAME [benchmarks.run arguments...]
#   bash benchmarks/gpu_run.sh NAME tests [pytest arguments...]   (tests/gpu; bundle: gpu-bundle pytest pluggy iniconfig ftfy wcwidth)
#   bash benchmarks/gpu_run.sh NAME SCRIPT.py [arguments...]   (a probe instead: output to log-NAME.txt)
# Results go to $OUT/RESULTS-NAME.md, bench-NAME.json, log-NAME.txt. The random model is built once
# per machine under /tmp/bench and reused by later calls while the machine stays warm.
set -uo pipefail
name=$1; shift
mkdir -p /tmp/site && [ -f /tmp/site/.done ] || { tar -xJf .gpu/site.tar.xz -C /tmp/site && touch /tmp/site/.done; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 V2V_CACHE=/tmp/v2v-cache
# One compile cache for the benchmark's own compiled variants and the Ray job's actors (which it hands on);
# a run beside another on the same machine names its own (and its own --work-dir).
export V2V_COMPILE_CACHE=${V2V_COMPILE_CACHE:-/tmp/bench/inductor}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
out=${OUT:-/tmp/out}; mkdir -p "$out"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv | tee "$out/gpu-$name.txt"
echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-all}" | tee -a "$out/gpu-$name.txt"
python3 -c "import torch, diffusers, ray, av; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'ray', ray.__version__, 'av', av.__version__, 'gpus', torch.cuda.device_count())"
if [[ "${1:-}" == tests ]]; then
  shift
  python3 -c 'import sys, pytest; sys.exit(pytest.main(sys.argv[1:]))' -q -p no:cacheprovider -rA tests/gpu "$@" 2>&1 \
    | tee "$out/log-$name.txt"; exit
fi
if [[ "${1:-}" == *.py ]]; then
  python3 "$@" 2>&1 | grep -v "Loading weights\|USDT" | tee "$out/log-$name.txt"; exit
fi
python3 -m benchmarks.run --model random-576w --work-dir /tmp/bench --results "$out/RESULTS-$name.md" \
  --json "$out/bench-$name.json" "$@" 2>&1 | grep -v "Loading weights" | tee "$out/log-$name.txt"
