"""Where loading an AOTInductor package goes: its files by kind, then the load timed (run twice, in two processes,
to see whether the driver's compute cache changes it)."""
import collections, glob, os, sys, time, zipfile
import torch
p = sorted(glob.glob("/tmp/bench/inductor/aot/unet-*.pt2"))[0]
z = zipfile.ZipFile(p)
kinds = collections.Counter(); size = collections.Counter()
for i in z.infolist():
    ext = os.path.splitext(i.filename)[1]; kinds[ext] += 1; size[ext] += i.file_size
print({k: (kinds[k], size[k]) for k in kinds}, flush=True)
print([i.filename for i in z.infolist() if not i.filename.endswith((".cubin", ".ptx", ".fatbin"))][:20], flush=True)
t = time.perf_counter(); r = torch._inductor.aoti_load_package(p); print("aoti_load_package", time.perf_counter() - t, flush=True)
