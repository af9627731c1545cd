#!/usr/bin/env bash
# A queue of benchmark runs that outlasts one device call (10 minutes): `start` launches a runner in its own
# process session, which the machine keeps while it is held; each later `wait` call sleeps while the queue
# works, then sends back everything so far. Issue the next call within the machine's 30-s warm window.
#   call 1:  bash benchmarks/gpu_explore.sh start QUEUE_FILE
#   later:   bash benchmarks/gpu_explore.sh wait [SECONDS]
# QUEUE_FILE: one line per run (# starts a comment line), `NAME [VAR=VALUE...] jobs.benchmark-arguments...`; each run is a fresh process (inductor
# settings are per process) over one model and one compile cache. Results: $OUT/explore.tar.gz holding
# RESULTS-NAME.md, bench-NAME.json, log-NAME.txt (and what --profile wrote), plus runner.log.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/explore
out=${OUT:-/tmp/out}; mkdir -p "$out" "$res"
pack() { tar -czf "$out/explore.tar.gz" -C "$res" . ; tail -n 25 "$res/runner.log"; }
case "$1" in
start)
  mkdir -p /tmp/site && [ -f /tmp/site/.done ] || { tar -xJf .gpu/site.tar.xz -C /tmp/site && touch /tmp/site/.done; }
  cp "$2" "$res/queue.txt"
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv > "$res/gpu.txt"
  setsid bash -c '
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 V2V_CACHE=/tmp/v2v-cache
    export V2V_COMPILE_CACHE=/tmp/bench/inductor
    python3 -c "import torch, diffusers, ray, av; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"diffusers\", diffusers.__version__, \"ray\", ray.__version__, \"av\", av.__version__)"
    while read -r name args; do
      [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
      envs=""; while [[ "$args" =~ ^([A-Z_]+=[^ ]*)\ (.*)$ ]]; do envs="$envs ${BASH_REMATCH[1]}"; args=${BASH_REMATCH[2]}; done
      echo "$(date -u +%T) start $name: $args"
      t0=$(date +%s)
      eval $envs python3 -m jobs.benchmark --model random-576w --work-dir /tmp/bench --results /tmp/explore/RESULTS-$name.md \
        --json /tmp/explore/bench-$name.json $args > /tmp/explore/log-$name.txt 2>&1 < /dev/null
      echo "$(date -u +%T) end $name: rc $? after $(( $(date +%s) - t0 )) s"
      grep "^| v2v\|^| actor\|^| ray\|^| ref" /tmp/explore/RESULTS-$name.md 2>/dev/null
    done < /tmp/explore/queue.txt
    echo "$(date -u +%T) queue done"
  ' > "$res/runner.log" 2>&1 < /dev/null &
  sleep 5; wait_s=${3:-520} ;;
wait) wait_s=${2:-560} ;;
*) echo "usage: $0 start QUEUE_FILE | wait [SECONDS]" >&2; exit 2 ;;
esac
end=$(( $(date +%s) + wait_s ))
while [ "$(date +%s)" -lt "$end" ] && ! grep -q "queue done" "$res/runner.log"; do sleep 10; done
pack
