"""Which generated kernels of the compiled UNet step run far from memory bandwidth, and on which buffers.

The eleventh section's profile shows fused GroupNorm-apply + SiLU kernels at 2.0-3.6 ms a call, many times what
moving a top-level activation (354 MB in bf16 for 8 latents) costs. This compiles the job's GPU variant
(`jobs.benchmark.JOB_GPU_VARIANT`) of the random 576w UNet for one 4-clip guided step, profiles that step (every
kernel by its full name: time and calls, to OUT/kernels.json) and copies inductor's output code (the Python
wrappers that launch each kernel, with every buffer's shape and stride, and the kernels' sources) to
OUT/output-code.tar.gz, so the slow kernels' shapes and layouts can be read off afterwards.

    python benchmarks/inductor_kernels_probe.py OUT [MODEL [WORK]]   # GPU: random-576w, kept under /tmp/bench
    python benchmarks/inductor_kernels_probe.py OUT tiny              # CPU smoke run on the tiny model
"""
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import torch

from jobs.benchmark import JOB_GPU_VARIANT, model_folder, unet_step
from v2v.bench import profiler_kernels


def main(out: str, model: str = "random-576w", work: str = "/tmp/bench") -> None:
    os.makedirs(out, exist_ok=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device == "cuda"
    folder, _ = model_folder(model, work, device)  # as jobs.benchmark --model MODEL --work-dir WORK
    variant = "float32+compile" if model == "tiny" else JOB_GPU_VARIANT
    _, step = unet_step(folder, device, variant, batch=4)  # one 4-clip guided step, as the sampler's calls
    t0 = time.perf_counter()
    step()  # compiles
    print(f"compiled {variant} in {time.perf_counter() - t0:.1f} s", flush=True)
    cache = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])  # first, in case the machine's time runs out
    wrappers = [p for p in cache.rglob("*.py") if "def call(" in p.read_text(errors="ignore")]
    with tarfile.open(os.path.join(out, "output-code.tar.gz"), "w:gz") as tar:
        for p in wrappers:
            tar.add(p, arcname=p.name)
    print(f"{len(wrappers)} output-code files from {cache}", flush=True)
    step()
    with torch.profiler.profile() as prof:
        step()
    kernels = profiler_kernels(prof, cuda)
    Path(out, "kernels.json").write_text(json.dumps(kernels, indent=0))
    print(f"{len(kernels)} kernels, {1e3 * sum(s for _, s, _ in kernels):.1f} ms", flush=True)
    for name, secs, calls in kernels[:40]:
        print(f"{1e3 * secs:9.3f} ms {calls:4d}  {name}")


if __name__ == "__main__":
    main(*sys.argv[1:])
