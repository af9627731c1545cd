"""Which files a first start writes that no part's archive holds (GPU run, 17th): one actor start over an empty
compile cache with a shared cache (a folder), then the cache's files against the archives' members.

    python benchmarks/shared_cache_first.py WORK_DIR MODEL_FOLDER VARIANT BATCH
"""
import collections
import glob
import os
import subprocess
import sys
import tarfile
import time

from v2v.shared_cache import SharedCache

work, folder, variant, batch = sys.argv[1:5]
cache, shared = os.path.join(work, "first-cache"), os.path.join(work, "first-shared")
t0 = time.time()
p = subprocess.run([sys.executable, "-m", "jobs.benchmark", "--_actor", folder, "cuda", variant, batch, shared],
                   capture_output=True, text=True, env={**os.environ, "V2V_COMPILE_CACHE": cache, "TQDM_DISABLE": "1"})
print("first start", round(time.time() - t0, 1), "s, rc", p.returncode)
print([ln for ln in p.stdout.splitlines() if ln.startswith("READY")])
print("\n".join(ln for ln in p.stderr.splitlines() if "v2v" in ln)[-4000:])
held = collections.defaultdict(set)
for a in sorted(glob.glob(os.path.join(shared, "*.tar"))):
    with tarfile.open(a) as t:
        for n in t.getnames():
            held[n].add(os.path.basename(a).split("-")[0])
have = SharedCache(shared, cache).files()
outside = sorted(have - set(held))
print("cache files", len(have), "in archives", len(held), "in none", len(outside),
      sum(os.path.getsize(os.path.join(cache, f)) for f in outside) / 1e6, "MB;",
      "in several archives", sum(len(v) > 1 for v in held.values()))
for f in outside[:80]:
    path = os.path.join(cache, f)
    print(f"  {os.path.getmtime(path) - t0:7.1f} s {os.path.getsize(path):9d} {f}")
