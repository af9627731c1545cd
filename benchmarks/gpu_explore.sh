#!/usr/bin/env bash
# A queue of benchmark runs that outlasts one device call (10 minutes): `start` launches a runner in its own
# process session, which the machine keeps while it is held; each later `wait` call sleeps while the queue
# works, then sends back everything so far. Issue the next call within the machine's 30-s warm window.
#   call 1:  bash benchmarks/gpu_explore.sh start QUEUE_FILE
#   later:   bash benchmarks/gpu_explore.sh wait [SECONDS]
# QUEUE_FILE: one line per run, `NAME [VAR=VALUE...] jobs.benchmark-arguments...` (# starts a comment line);
# `&NAME ...` starts that run in the background beside the next lines (one GPU each: CUDA_VISIBLE_DEVICES=N),
# and a line `wait` waits for the background runs.
# Each run is `benchmarks/gpu_run.sh NAME ...` in a fresh process (inductor settings are per process), over one
# model and one compile cache, writing into /tmp/explore. Comes back as $OUT/explore.tar.gz (RESULTS-NAME.md,
# bench-NAME.json, log-NAME.txt, gpu-NAME.txt, what --profile wrote) plus the end of runner.log.
set -uo pipefail
cd "$(dirname "$0")/.."
res=/tmp/explore
out=${OUT:-/tmp/out}; mkdir -p "$out" "$res"
case "$1" in
start)
  source benchmarks/gpu_setup.sh  # the bundle unpacked once, before any parallel runs; the machine to $OUT/env.txt
  cp "$2" "$res/queue.txt"
  OUT=$res setsid bash -c '
    run() {  # NAME ARGS: one benchmark run in a fresh process; ARGS may begin with VAR=VALUE settings
      local name=$1 args=$2 envs="" t0
      while [[ "$args" =~ ^([A-Z_][A-Z0-9_]*=[^ ]*)\ (.*)$ ]]; do envs="$envs ${BASH_REMATCH[1]}"; args=${BASH_REMATCH[2]}; done
      echo "$(date -u +%T) start $name: $envs $args"
      t0=$(date +%s)
      eval env $envs bash benchmarks/gpu_run.sh $name $args > /dev/null 2>&1 < /dev/null
      echo "$(date -u +%T) end $name: rc $? after $(( $(date +%s) - t0 )) s"
      grep "^| v2v\|^| actor\|^| ray\|^| ref" "$OUT/RESULTS-$name.md" 2>/dev/null
    }
    while read -r name args; do
      [ -z "$name" ] || [ "${name:0:1}" = "#" ] && continue
      if [ "$name" = wait ]; then wait; echo "$(date -u +%T) parallel runs done"; continue; fi
      if [ "${name:0:1}" = "&" ]; then run "${name:1}" "$args" & else run "$name" "$args"; fi
    done < "$OUT/queue.txt"
    wait
    echo "$(date -u +%T) queue done"
  ' > "$res/runner.log" 2>&1 < /dev/null &
  sleep 5; wait_s=${3:-520} ;;
wait) wait_s=${2:-560} ;;
*) echo "usage: $0 start QUEUE_FILE | wait [SECONDS]" >&2; exit 2 ;;
esac
end=$(( $(date +%s) + wait_s ))
while [ "$(date +%s)" -lt "$end" ] && ! grep -q "queue done" "$res/runner.log"; do sleep 10; done
tar -czf "$out/explore.tar.gz" -C "$res" .
tail -n 25 "$res/runner.log"
