#!/usr/bin/env bash
# Tenth session, first call on a fresh nvidia-h200 machine: the machine's software to $OUT/env.txt, then
# benchmarks/frame_attention_probe.py with Triton's kernel dumps on (each compiled copy of the frame kernel:
# eager Triton's and inductor's), inductor's generated code in $OUT/probe-stderr.txt, the dumps of the frame
# kernel in $OUT/tdump.
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_setup.sh  # bundle unpacked, $out/env.txt
PYTHONPATH=/tmp/site:$PWD TRITON_KERNEL_DUMP=1 TRITON_DUMP_DIR=/tmp/tdump TRITON_ALWAYS_COMPILE=1 \
  timeout 420 python3 benchmarks/frame_attention_probe.py "$out" > "$out/probe.txt" 2> "$out/probe-stderr.txt"
echo "probe rc $?"
grep -v "Warning\|USDT" "$out/probe.txt"
mkdir -p "$out/tdump"
for d in $(grep -l . -r /tmp/tdump --include='_frame_attention_kernel*' 2>/dev/null | xargs -r -n1 dirname | sort -u); do
  cp -r "$d" "$out/tdump/"
done
grep -n "frame_attention_kernel\|triton_meta" "$out/probe-stderr.txt" | head -20
tail -5 "$out/probe-stderr.txt"
