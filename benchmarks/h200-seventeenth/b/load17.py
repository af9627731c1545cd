# As run (inline, `python3 - <<EOF`) on the GPU machine after benchmarks/shared_cache_first.py: a second start over
# the first start's cache, and the files it wrote.
import os, subprocess, sys, time, collections
from v2v.shared_cache import SharedCache
cache, shared = "/tmp/bench/first-cache", "/tmp/bench/first-shared"
before = SharedCache(shared, cache).files()
t0 = time.time()
p = subprocess.run([sys.executable, "-m", "jobs.benchmark", "--_actor", "/tmp/bench/random-576w", "cuda",
                    "bfloat16+temporal+frameattn+chanstats+compile+pre+vae", "4", shared], capture_output=True, text=True,
                   env={**os.environ, "V2V_COMPILE_CACHE": cache, "TQDM_DISABLE": "1"})
print("second start", round(time.time() - t0, 1), "rc", p.returncode, [l for l in p.stdout.splitlines() if l.startswith("READY")])
new = sorted(SharedCache(shared, cache).files() - before)
print("files the load wrote", len(new), sum(os.path.getsize(os.path.join(cache, f)) for f in new) / 1e6, "MB")
kinds = collections.Counter((f.split("/")[0] if not f.startswith("triton/") else "triton/" + f.rsplit(".", 1)[-1]) for f in new)
print(kinds.most_common(20))
for f in new[:40]:
    print("  ", os.path.getsize(os.path.join(cache, f)), f)
