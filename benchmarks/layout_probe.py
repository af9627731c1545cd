"""Same-process A/B of compiled UNet steps that differ in a layout setting: step time interleaved, kernels, output.

The eleventh section found the up blocks' skip concatenations written NCHW and transposed by untiled GroupNorm-
apply kernels (13.6 ms of a 4-clip step). The twelfth section tried two fixes with this probe: a channels-last hint
on each up resnet's input (a forward pre-hook calling `contiguous(memory_format=torch.channels_last)` while
compiling, then the benchmark variant part `skipcl`; removed: inductor fused the copy into the same transposing
kernel, step unchanged) and inductor's `triton.prefer_nd_tiling` (2-D tiles for every pointwise kernel, a global
setting; the option `@ndtile` below). A 2 % effect is about the spread between two runs of one variant in separate
processes, so this compiles every variant in one process on one GPU, then times their steps in turns.

Each VARIANT is a jobs.benchmark variant, `JOB` for the job's GPU variant (`jobs.benchmark.JOB_GPU_VARIANT`),
optionally `@OPTION`: compiled with the inductor settings OPTIONS names (`@ndtile`: prefer_nd_tiling;
`@nocoalesce`: inductor's tiling without its coalescing analysis, which picked 1-D tiles for the kernels above;
`@coord`: coordinate-descent tuning of the generated kernels), or `@prefix-resnet`: the shared prefix without the
first spatial transformer's self-attention (the twenty-second session's form; dynamo guards that setting, so each
gets its own graph), or `@stats-view5`: the spatial GroupNorms' statistics through a (B, F, G, C/G, H*W) view of
their input, as they were until the twenty-fourth session (`norm_probe.group_norm_view5`; the temporal layers'
norms keep the 4-D form).
`@phaseidx`: the UNet's upsamplers by phase (`upsample_phases`) with the phases interleaved by indexing
(`vae_probe.upsample_conv_index`) instead of stacked.
Per variant, to OUT: one step's kernels (kernels-N.json) and their total, inductor's output code of its compile
(code-N.tar.gz; empty where the kernels came from the cache); then the interleaved step times (median,
min) and each output's relative error against the first variant's (the same inputs; a layout change alters at
most the order of a reduction), in OUT/layout.json.

    python benchmarks/layout_probe.py OUT VARIANT...       # GPU: random-576w, 4 clips, kept under /tmp/bench
    python benchmarks/layout_probe.py OUT --tiny VARIANT... # CPU smoke run on the tiny model
"""
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config as inductor

from jobs.benchmark import JOB_GPU_VARIANT, model_folder, unet_step
from norm_probe import group_norm_view5
from vae_probe import IndexUpsample2D
from v2v.bench import kernel_kinds, profiler_kernels
from v2v.group_norm import ChannelStatsGroupNorm
from v2v.upsample import PhaseUpsample2D


# VARIANT@OPTION: inductor settings for that variant's compile (inductor reads them when it compiles).
OPTIONS = {
    "": {},
    # 2-D (or 3-D) tiles for every kernel where the shapes allow
    "ndtile": {"triton.prefer_nd_tiling": True},
    # inductor's tiling from candidate strides, without its coalescing analysis (on by default in these versions)
    "nocoalesce": {"triton.coalesce_tiling_analysis": False},
    # each generated kernel's launch settings refined by coordinate descent after its autotuning (nineteenth
    # session: the whole UNet, after the eighteenth measured it per block)
    "coord": {"coordinate_descent_tuning": True},
}
# VARIANT@OPTION that changes the model instead (before its first call, which compiles it)
MODEL_OPTIONS = {
    # the shared prefix as the twenty-second session had it: through the first ResNet and temporal convolution,
    # without the first spatial transformer's self-attention (v2v.unet.forward's share_self_attention)
    "prefix-resnet": lambda c: setattr(c.unet.forward.eager, "share_self_attention", False),
    # the spatial norms' statistics as the thirteenth to twenty-third sessions took them (a view of the input)
    "stats-view5": lambda c: [setattr(m, "__class__", View5GroupNorm) for m in c.unet.modules()
                              if type(m) is ChannelStatsGroupNorm],
    # the upsamplers' phases interleaved by indexing (the VAE's probe: fused into the next operation's loads)
    "phaseidx": lambda c: [setattr(m, "__class__", IndexUpsample2D) for m in c.unet.modules()
                           if type(m) is PhaseUpsample2D],
}


class View5GroupNorm(ChannelStatsGroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return group_norm_view5(x, 1, self) if x.ndim == 4 else super().forward(x)


def _keep_output_code(path: Path, since: float) -> None:
    """inductor's output code written since `since` (the Python wrappers with every buffer's shape and stride, and
    the kernels' sources) to a tar file: which layout each buffer got, read off afterwards."""
    import tarfile

    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    new = [f for f in Path(cache).rglob("*.py") if f.stat().st_mtime >= since and "def call(" in f.read_text(
        errors="ignore")] if cache else []
    with tarfile.open(path, "w:gz") as tar:
        for f in new:
            tar.add(f, arcname=f.name)


def main(out: str, *specs: str) -> None:
    os.makedirs(out, exist_ok=True)
    tiny = specs[0] == "--tiny"
    specs = specs[1:] if tiny else specs
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device == "cuda"
    work = os.environ.get("V2V_PROBE_WORK", "/tmp/bench")
    folder, _ = model_folder("tiny" if tiny else "random-576w", work, device)
    batch = 4
    unknown = [s for s in specs if s.partition("@")[2] not in {**OPTIONS, **MODEL_OPTIONS}]
    if unknown:  # before any model loads
        raise ValueError(f"{unknown}: unknown option(s) (known: {[k for k in {**OPTIONS, **MODEL_OPTIONS} if k]})")
    runs = []
    for spec in specs:
        variant, _, option = spec.partition("@")
        # without +pre: a saved compiled function is keyed without inductor settings set in code (@OPTION)
        variant = "+".join(p for p in variant.replace("JOB", JOB_GPU_VARIANT).split("+") if p != "pre")
        if tiny:
            variant = variant.replace("bfloat16", "float32")
        # each UNet with its own compiled graph: diffusers' forward through its own code object
        # (jobs.benchmark._own_forward); v2v.unet's PairsForward (`prefix`) shares one, and dynamo's guards keep
        # the graphs apart (on the CPU: a new graph for chanstats, fuse_qkv and @prefix-resnet each)
        c, step = unet_step(folder, device, variant, batch)
        if option in MODEL_OPTIONS:
            MODEL_OPTIONS[option](c)
        t0, t_wall = time.perf_counter(), time.time()
        with inductor.patch(OPTIONS.get(option, {})):  # compiles on this first call
            y = step()
        compile_s = time.perf_counter() - t0
        _keep_output_code(Path(out, f"code-{len(runs)}.tar.gz"), since=t_wall)
        step()
        with torch.profiler.profile() as prof:
            step()
        kernels = profiler_kernels(prof, cuda)
        i = len(runs)
        Path(out, f"kernels-{i}.json").write_text(json.dumps(kernels, indent=0))
        run = {"spec": spec, "variant": variant, "compile_s": round(compile_s, 1),
               "kernels_ms": round(1e3 * sum(s for _, s, _ in kernels), 2), "kernels": len(kernels),
               # by kind (v2v.bench.kernel_kinds): the generated norm reductions, pointwise, products, ...
               "kinds_ms": {k: round(1e3 * s, 2) for k, s in kernel_kinds([(n, s) for n, s, _ in kernels]).items()},
               "slowest": [(n[:90], round(1e3 * s, 3), calls) for n, s, calls in kernels[:12]]}
        print(json.dumps({k: v for k, v in run.items() if k != "slowest"}), flush=True)
        for n, ms, calls in run["slowest"]:
            print(f"    {ms:8.3f} ms {calls:4d}  {n}", flush=True)
        runs.append({**run, "step": step, "y": y.float()})

    rounds, per = (6, 3) if cuda else (2, 1)
    times = {i: [] for i in range(len(runs))}
    for _ in range(rounds):  # in turns, so drift (clocks, temperature) falls on every variant alike
        for i, r in enumerate(runs):
            for _ in range(per):
                t0 = time.perf_counter()
                r["step"]()
                times[i].append(time.perf_counter() - t0)
    ref = runs[0]["y"]
    base = statistics.median(times[0])
    for i, r in enumerate(runs):
        med = statistics.median(times[i])
        r.update(step_ms_median=round(1e3 * med, 2), step_ms_min=round(1e3 * min(times[i]), 2),
                 vs_first=round(med / base, 4),
                 rel_err_vs_first=float((r["y"] - ref).norm() / ref.norm()))
        print(f"{r['spec']:<30} step {r['step_ms_median']:8.2f} ms median, {r['step_ms_min']:8.2f} min, "
              f"x{r['vs_first']:.4f} of the first; kernels {r['kernels_ms']} ms "
              f"{r['kinds_ms']}; output vs first {r['rel_err_vs_first']:.2e}", flush=True)
    info = {"card": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
            "batch": batch, "rounds": rounds, "steps_per_turn": per,
            "runs": [{k: v for k, v in r.items() if k not in ("step", "y")} for r in runs]}
    Path(out, "layout.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])
