"""Why the tiny model's AOTInductor package crashed its load check on the H200 image (RESULTS.md, twenty-sixth
section: exit code -11 in v2v.aot.check_loads' child, which only opens the package). Run in the twenty-seventh
session: every way crashed, in both dtypes; the cause was the compiler the package was built with (that section).

    bash benchmarks/gpu_run.sh NAME benchmarks/aot_crash_probe.py [float32|bfloat16]

Builds the tiny model's UNet package on the GPU as the job does (`compile_aot`, with the compiler inductor took from
`CXX` when the process started, else the `g++` on PATH; printed, as `v2v.aot.cxx` resolves it),
then opens it in fresh child processes in several ways, each printing its exit code and the end of its stderr
(Python's fault handler on; a gdb backtrace too where gdb exists):
  check_loads     as v2v.aot.check_loads does it (torch imported, CUDA not yet initialized)
  cuda_init       torch.cuda.init() first
  cuda_tensor     a CUDA tensor made first (the caching allocator in use)
  device_0        the loader given device index 0 instead of -1
  aoti_load       torch._inductor.aoti_load_package (torch's own Python path, with its machine check)
  run             as an actor: bound to a fresh tiny UNet's weights (load_package), called once
If only check_loads (and device_0) crash, the check process needs CUDA initialized before it opens a package.
"""
import glob
import os
import shutil
import subprocess
import sys

import torch

from tests.test_perf import CLIPS, _video
from v2v.aot import cxx, signature
from v2v.models import load_components
from v2v.perf import apply_perf_settings
from v2v.sampler import restyle

dtype = sys.argv[1] if len(sys.argv) > 1 else "float32"
device = os.environ.get("PROBE_DEVICE", "cuda")  # cpu: a dry run of the probe itself (the CUDA ways then fail)
cache = os.environ.get("V2V_COMPILE_CACHE", "/tmp/bench/inductor")
c = load_components("tiny", device=device, dtype=dtype)
aot = apply_perf_settings(c, compile=True, compile_aot=True, unet_batch=4)
build, seen = aot["unet"]._runner, []  # the inputs the package is built for, as the job calls it


def recorded(path, tensors):
    seen.append(signature(tensors))  # ((shape, dtype, device type, contiguous), ...)
    return build(path, tensors)


aot["unet"]._runner = recorded
restyle(c, _video(2), CLIPS, output="latents")
print(f"compiler {cxx()} dtype={dtype}; unet package failed: {aot['unet'].failed}", flush=True)
path = max(glob.glob(f"{cache}/aot/unet-*.pt2"), key=os.path.getmtime)
print("package", path, os.path.getsize(path), "bytes", flush=True)

sig = seen[0]
print("inputs", sig, flush=True)
inputs = "args = [(torch.rand(s) * 999).to(getattr(torch, d[6:])).to(v) for s, d, v, _ in SIG]"
ways = {
    "check_loads": "from v2v.aot import _open_package; _open_package(P)",
    "cuda_init": "torch.cuda.init(); from v2v.aot import _open_package; _open_package(P)",
    "cuda_tensor": "torch.zeros(1, device='cuda'); from v2v.aot import _open_package; _open_package(P)",
    "device_0": "from v2v.aot import _open_package; _open_package(P, 0)",
    "aoti_load": "torch._inductor.aoti_load_package(P)",
    # as an actor does: the package bound to a module's own weights (v2v.aot.load_package), then called
    "run": "from v2v.aot import load_package; from v2v.models import load_components; "
           f"c = load_components('tiny', device='{device}', dtype='{dtype}'); r = load_package(c.unet, P); "
           + inputs + "; o = r(*args); print('ran', [tuple(t.shape) for t in o] if isinstance(o, (list, tuple)) "
           "else tuple(o.shape))",
}
head = f"import sys, torch; P = sys.argv[1]; SIG = {sig!r}; "
env = {**os.environ, "PYTHONFAULTHANDLER": "1", "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(),
                                                                                             os.environ.get("PYTHONPATH")]))}
for name, code in ways.items():
    p = subprocess.run([sys.executable, "-c", head + code, path], capture_output=True, text=True, env=env,
                       timeout=600)
    print(f"--- {name}: exit {p.returncode}\n{p.stdout.strip()[-400:]}\n{p.stderr.strip()[-1500:]}", flush=True)
    if p.returncode < 0 and shutil.which("gdb"):
        g = subprocess.run(["gdb", "-batch", "-ex", "run", "-ex", "bt 25", "--args", sys.executable, "-c",
                            head + code, path], capture_output=True, text=True, env=env, timeout=600)
        print(g.stdout[-3000:], flush=True)
