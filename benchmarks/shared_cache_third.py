"""A third machine's start from the shared cache the first two filled (GPU run, 17th): does it put archives back,
and what would they gain? Copies the archives aside, starts an actor over an empty cache, compares.

    python benchmarks/shared_cache_third.py WORK_DIR MODEL_FOLDER VARIANT BATCH
"""
import glob
import os
import shutil
import subprocess
import sys
import tarfile
import time

work, folder, variant, batch = sys.argv[1:5]
(shared,) = sorted(glob.glob(os.path.join(work, "shared-cache-*")))[-1:]
aside = shared + "-before-third"
shutil.copytree(shared, aside)
cache = os.path.join(work, "inductor-third")
t0 = time.perf_counter()
p = subprocess.run([sys.executable, "-m", "jobs.benchmark", "--_actor", folder, "cuda", variant, batch, shared],
                   capture_output=True, text=True, env={**os.environ, "V2V_COMPILE_CACHE": cache, "TQDM_DISABLE": "1"})
print("third start", round(time.perf_counter() - t0, 1), "s, rc", p.returncode)
print([ln for ln in p.stdout.splitlines() if ln.startswith("READY")])
print("\n".join(ln for ln in p.stderr.splitlines() if "shared compile cache" in ln or "Error" in ln)[-3000:])


def members(path):
    with tarfile.open(path) as t:
        return {m.name: m.size for m in t.getmembers()}


for a in sorted(glob.glob(os.path.join(aside, "*.tar"))):
    name = os.path.basename(a)
    before, after = members(a), members(os.path.join(shared, name))
    print(name, "before", len(before), "after", len(after), "same" if before == after else "DIFFERENT")
    for k in sorted(set(after) - set(before))[:40]:
        print("   + ", k, after[k])
    for k in sorted(set(before) - set(after))[:40]:
        print("   - ", k, before[k])
    for k in sorted(k for k in set(before) & set(after) if before[k] != after[k])[:20]:
        print("   ~ ", k, before[k], after[k])
