"""What an actor's start that fetched its parts from the shared cache wrote beyond the archives (GPU run, 17th).

    python benchmarks/shared_cache_diff.py WORK_DIR
"""
import glob
import os
import sys
import tarfile

from v2v.shared_cache import SharedCache

work = sys.argv[1]
for shared in sorted(glob.glob(os.path.join(work, "shared-cache-*"))):
    stamp = shared.rsplit("-", 1)[1]
    other = os.path.join(work, f"inductor-startup-{stamp}-other")
    first = os.path.join(work, f"inductor-startup-{stamp}")
    held = set()
    for a in sorted(glob.glob(os.path.join(shared, "*.tar"))):
        with tarfile.open(a) as t:
            names = t.getnames()
        held |= set(names)
        print(a, len(names), "files", os.path.getsize(a) / 1e6, "MB")
    have = SharedCache(shared, other).files()
    extra = sorted(have - held)
    print("other machine's files", len(have), "archives' files", len(held), "written beyond them", len(extra))
    for e in extra[:60]:
        p = os.path.join(other, e)
        print("  +", e, os.path.getsize(p), "in first machine's cache:", os.path.exists(os.path.join(first, e)))
    firsts = SharedCache(shared, first).files()
    print("first machine's files", len(firsts), "not in archives", len(firsts - held))
    for e in sorted(firsts - held)[:30]:
        print("  first only:", e, os.path.getsize(os.path.join(first, e)))
