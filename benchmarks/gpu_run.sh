#!/usr/bin/env bash
# One full benchmark on a lent GPU machine (no network): unpack the carried bundle, check, measure.
# Usage there: bash benchmarks/gpu_run.sh PART   (PART: sampler | e2e | compile; each fits one 10-minute call)
set -uo pipefail
part=${1:-sampler}
mkdir -p /tmp/site && [ -f /tmp/site/.done ] || { tar -xJf .gpu/site.tar.xz -C /tmp/site && touch /tmp/site/.done; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 V2V_CACHE=/tmp/v2v-cache
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
out=${OUT:-/tmp/out}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu-$part.txt"
python3 -c "import torch, diffusers, ray, av; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'ray', ray.__version__, 'av', av.__version__, 'gpus', torch.cuda.device_count())"
gpus=$(python3 -c "import torch; print(','.join(str(i) for i in range(1, torch.cuda.device_count() + 1)))")
common=(--model random-576w --work-dir /tmp/bench --results "$out/RESULTS-$part.md" --json "$out/bench-$part.json")
if [ "$part" = sampler ]; then
  python3 -m jobs.benchmark "${common[@]}" --reference --quality --variants float16,bfloat16,bfloat16+channels_last \
    --batch-sizes 1,2,4 2>&1 | grep -v "Loading weights" | tee "$out/log-$part.txt"
elif [ "$part" = e2e ]; then
  python3 -m jobs.benchmark "${common[@]}" --variants "${VARIANT:-float16}" --batch-sizes "${BATCH:-2}" \
    --e2e-clips 32 --e2e-gpus "$gpus" 2>&1 | grep -v "Loading weights" | tee "$out/log-$part.txt"
else
  python3 -m jobs.benchmark "${common[@]}" --variants bfloat16+channels_last+compile --batch-sizes 2 \
    --startup 2>&1 | grep -v "Loading weights" | tee "$out/log-$part.txt"
fi
