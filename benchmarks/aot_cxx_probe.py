"""Which C++ compilers build AOTInductor packages that load on this machine?

    python3 benchmarks/aot_cxx_probe.py OUT_FILE [COMPILER...]

For each compiler (default: every g++*, c++ and clang++* in /usr/bin), a child process with CXX set to it
compiles a one-Linear CUDA model into a package (its own inductor cache, so no compiler reuses another's
objects), and a second child (PROBE_DEVICE=cpu to try it without a GPU) loads the package and checks its output against eager. One line per compiler is
appended to OUT_FILE as soon as it is known (a device call cut short keeps what it found). Children, not
threads: the loader that fails on the fifth session's GPU image does so with a segmentation fault.
"""

import glob
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

BUILD = r"""
import os, sys, torch
DEV = os.environ.get("PROBE_DEVICE", "cuda")
torch.manual_seed(0)
m = torch.nn.Linear(64, 32).to(DEV).eval()
x = torch.randn(8, 64, device=DEV)
ep = torch.export.export(m, (x,))
torch._inductor.aoti_compile_and_package(ep, package_path=sys.argv[1])
torch.save({"x": x.cpu(), "y": m(x).detach().cpu()}, sys.argv[1] + ".io")
"""
LOAD = r"""
import os, sys, torch
DEV = os.environ.get("PROBE_DEVICE", "cuda")
io = torch.load(sys.argv[1] + ".io")
runner = torch._inductor.aoti_load_package(sys.argv[1])
y = runner(io["x"].to(DEV))
y = y[0] if isinstance(y, (list, tuple)) else y
err = (y.cpu() - io["y"]).abs().max().item()
print("max abs err", err)
sys.exit(0 if err < 1e-3 else 3)
"""


def version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    except Exception as e:  # a dangling alternative link
        return f"no version: {e}"


def probe(cxx: str, work: str) -> str:
    d = tempfile.mkdtemp(prefix=os.path.basename(cxx) + "-", dir=work)
    env = {**os.environ, "CXX": cxx, "TORCHINDUCTOR_CACHE_DIR": os.path.join(d, "inductor")}
    pkg = os.path.join(d, "linear.pt2")
    t0 = time.time()
    b = subprocess.run([sys.executable, "-c", BUILD, pkg], env=env, capture_output=True, text=True, timeout=400)
    if b.returncode != 0:
        return f"{cxx}\t{version(cxx)}\tbuild FAILED rc {b.returncode} ({time.time() - t0:.0f} s): " \
               f"{b.stderr.strip()[-300:]!r}"
    ld = subprocess.run([sys.executable, "-c", LOAD, pkg], env=env, capture_output=True, text=True, timeout=200)
    verdict = "LOADS" if ld.returncode == 0 else f"load FAILED rc {ld.returncode}"
    return f"{cxx}\t{version(cxx)}\tbuilt, {verdict} ({time.time() - t0:.0f} s) " \
           f"{(ld.stdout.strip() or ld.stderr.strip()[-300:])!r}"


def main():
    out = sys.argv[1]
    cands = sys.argv[2:] or sorted(set(glob.glob("/usr/bin/g++*") + glob.glob("/usr/bin/c++")
                                       + glob.glob("/usr/bin/clang++*")))
    cands = [c for c in cands if os.access(c, os.X_OK)]
    with open(out, "a") as f:
        f.write(f"candidates: {cands}\n")
    work = tempfile.mkdtemp(prefix="aot-cxx-")
    with ThreadPoolExecutor(max_workers=min(8, len(cands) or 1)) as pool:
        for fut in as_completed([pool.submit(probe, c, work) for c in cands]):
            line = fut.result()
            with open(out, "a") as f:
                f.write(line + "\n")
            print(line, flush=True)


if __name__ == "__main__":
    main()
