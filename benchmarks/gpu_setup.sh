#!/usr/bin/env bash
# Sourced by the session scripts (gpu_session*.sh) on a lent GPU machine: unpack the carried bundle
# (.gpu/site.tar.xz: diffusers, Ray, PyAV, ...) into /tmp/site once per machine, and write the machine's card,
# driver and software versions to $out/env.txt.
out=${OUT:-/tmp/out}; mkdir -p "$out"
mkdir -p /tmp/site && [ -f /tmp/site/.done ] || { tar -xJf .gpu/site.tar.xz -C /tmp/site && touch /tmp/site/.done; }
{ nvidia-smi --query-gpu=name,driver_version --format=csv
  PYTHONPATH=/tmp/site python3 -c "import torch, diffusers, triton; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'triton', triton.__version__)"
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
