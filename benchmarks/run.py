"""Benchmark: the seed pipeline against v2v's sampler and the whole Ray job, on one machine in one run.

    python -m benchmarks.run --model random-576w --reference --e2e-clips 32 --results benchmarks/RESULTS.md
    python -m benchmarks.run --model tiny --device cpu --steps 4 --e2e-clips 4   # a smoke run anywhere
    ray job submit --working-dir . -- python -m benchmarks.run --e2e-clips 64 --e2e-gpus 1,2,4,8   # on a GPU node

`random-576w` builds the zeroscope_v2_576w architecture with random weights (no download). Appends a
markdown table (card, versions, command) to --results and writes every number to --json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

# The job's GPU switches as a variant (JobConfig's defaults with compile: temporal layers, frame attention,
# GroupNorm statistics per channel, a guided step's shared prefix computed once, the upsamplers by output phase,
# the VAE compiled too); the dtype is bf16, the job's `--dtype auto` on GPUs.
JOB_GPU_VARIANT = "bfloat16+temporal+frameattn+chanstats+prefix+phaseup+graph+compile+pre+vae+bg"


def _section_variant(best: dict | None, cuda: bool, variant: str | None = None,
                     batch: int | None = None) -> tuple[str, int]:
    """(variant, batch) for the attention, start-up and Ray job sections: the section's own setting where given,
    else the fastest sampler row's, or, when no sampler row was measured, what the job runs on a GPU (at its best
    measured batch) or on the CPU."""
    default = (best["variant"], best["batch"]) if best else (JOB_GPU_VARIANT, 4) if cuda else ("float32", 1)
    return variant or default[0], batch or default[1]


RANDOM_MODELS = {"random-576w": "random_zeroscope", "random-wan": "random_wan"}


def model_folder(model: str, work: str, device: str) -> tuple[str, float | None]:
    """The model folder for `--model` and the seconds spent building it: `random-576w` (zeroscope_v2_576w's shape)
    and `random-wan` (Wan2.1-T2V-1.3B's, with the full-size UMT5) are written once under `work` (random weights, no
    download), anything else is resolved as the job resolves models."""
    from benchmarks import harness
    from v2v.model.loading import resolve_model

    if model not in RANDOM_MODELS:
        return str(resolve_model(model)), None
    folder = os.path.join(work, model)
    if os.path.exists(os.path.join(folder, "model_index.json")):
        return folder, None
    t0 = time.perf_counter()
    getattr(harness, RANDOM_MODELS[model])(folder, device)
    return folder, time.perf_counter() - t0


def _args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="random-576w",
                   help="random-576w, random-wan, tiny, tiny-wan, or a model folder (a Wan model: the wan section, "
                        "with --reference and --batch-sizes, then the Ray job)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--strength", type=float, default=0.6)
    p.add_argument("--guidance-scale", type=float, default=15.0)
    p.add_argument("--batch-sizes", default="1,2,4")
    p.add_argument("--variants", default=f"bfloat16,{JOB_GPU_VARIANT}",
                   help="comma list of DTYPE[+temporal][+frameattn][+chanstats][+prefix]"
                        "[+phaseup][+graph][+compile|+pre[+vae]][+nobench] ('' for none)")
    p.add_argument("--repeat", type=int, default=1, help="timed sampler calls per row after the warm-up (median)")
    p.add_argument("--reference", action="store_true", help="also time diffusers' VideoToVideoSDPipeline")
    p.add_argument("--quality", action="store_true", help="compare each variant's latents with float32 eager")
    p.add_argument("--attention", action="store_true",
                   help="time each attention shape of a UNet step under every SDPA backend (fastest variant's dtype)")
    p.add_argument("--manifest-mix", default="",
                   help="comma list of uniform|mixed|lora: clips kept in flight by the continuous batcher, in this "
                        "process and in the Ray job (mixed: strengths 0.4-0.8, guidance 1-15, two schedulers, "
                        "every fourth clip shorter; lora: uniform settings, each video one of 8 random LoRAs of "
                        "rank 16 and 64, the Ray job only); '' runs the job's manifest uniform and skips the "
                        "batcher rows")
    p.add_argument("--mix-clips", type=int, default=16, help="clips per --manifest-mix batcher row")
    p.add_argument("--last-clip", default="overlap", choices=("overlap", "short"),
                   help="how the mixed manifest's videos' last clips run, in this process and in the Ray job (the "
                        "job's --last-clip): whole with context frames (overlap) or as shorter clips (short)")
    p.add_argument("--mix-batch", type=int, default=None, help="batch size for --manifest-mix (default: fastest)")
    p.add_argument("--mix-modes", default="grouped,continuous",
                   help="--manifest-mix rows: clips in flight (continuous), grouped as actors ran them before, or both")
    p.add_argument("--e2e-clips", type=int, default=0, help="clips for the end-to-end Ray job (0: skip)")
    p.add_argument("--e2e-gpus", default="1", help="comma list of GPU counts for the Ray job")
    p.add_argument("--e2e-variant", default=None, help="variant for the Ray job (default: fastest measured)")
    p.add_argument("--e2e-batch", type=int, default=None, help="batch size for the Ray job (default: fastest)")
    p.add_argument("--startup", action="store_true",
                   help="time a restyle actor's first and second start in fresh processes (compile cache) and, for "
                        "a variant that stores its compiled parts, another machine's first from a shared cache")
    p.add_argument("--startup-variant", default=None, help="variant for --startup (default: fastest measured)")
    p.add_argument("--startup-batch", type=int, default=None, help="batch size for --startup (default: fastest)")
    p.add_argument("--startup-cache", default=None,
                   help="compile cache for --startup (default: a new empty one); one that already holds this "
                        "variant's kernels or packages makes the first start a cached one too")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster for the job (default: RAY_ADDRESS, as `ray job submit` sets it, else a local one "
                        "per GPU count); the sampler figures are measured in this process, on this node")
    p.add_argument("--work-dir", default=None,
                   help="model, videos and outputs; on a cluster of several nodes, a folder all of them see")
    p.add_argument("--results", default=None, help="markdown file to append the table to")
    p.add_argument("--json", default=None)
    p.add_argument("--profile", default=None,
                   help="write a kernel-time table of one guided UNet step per variant and batch to this file")
    return p.parse_args(argv)


def _card() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"


# a variant's parts -> the speed switch each turns on (`nobench` turns cudnn_benchmark off)
_PART_SWITCHES = {"temporal": "temporal_layers", "frameattn": "frame_attention", "chanstats": "channel_stats",
                  "prefix": "shared_prefix", "phaseup": "upsample_phases", "graph": "cuda_graphs", "compile": "compile",
                  "pre": "precompile", "vae": "compile_vae", "bg": "background_compile"}
_PARTS = (*_PART_SWITCHES, "nobench")


def _variant_cfg(variant: str):
    """'bfloat16+compile+vae' -> ('bfloat16', a SpeedSettings with exactly those switches on, every other off).

    `compile` alone compiles the UNet only (torch.compile, kernels cached); `+vae` also the VAE (the job's default
    when compiling); `pre` stores torch.compile's compiled functions (the job's default when compiling) and implies
    compile. `bg` (the job's default, implies pre): a start whose caches lack the stored parts is ready eager while
    they compile in the background (the restyle actor's; the sampler rows compile before they run). `nobench`:
    cuDNN's heuristics pick each convolution's algorithm (no timing search,
    `cudnn_benchmark=False`)."""
    from v2v.config import SpeedSettings

    dtype, *parts = variant.split("+")
    unknown = [p for p in parts if p not in _PARTS]
    if unknown:
        raise ValueError(f"variant {variant!r}: unknown part(s) {unknown}; known: {list(_PARTS)}")
    switches = {name: part in parts for part, name in _PART_SWITCHES.items()}
    switches["precompile"] |= switches["background_compile"]
    switches["compile"] |= switches["precompile"]
    switches["cudnn_benchmark"] = "nobench" not in parts
    if switches["compile_vae"] and not switches["compile"]:
        raise ValueError(f"variant {variant!r}: vae needs compile (the VAE is compiled alongside the UNet)")
    return dtype, SpeedSettings(**switches)


def _load(folder: str, device: str, variant: str, unet_batch: int | None = None):
    """The model with `variant`'s switches; `unet_batch`: latents per compiled UNet call (else set per batch)."""
    from v2v.model.loading import load_components
    from v2v.speed import apply_speed_settings

    dtype, speed = _variant_cfg(variant)
    c = load_components(folder, device=device, dtype=dtype)
    _own_forward(c.unet)
    apply_speed_settings(c, speed, unet_batch=unet_batch)
    return c


def _own_forward(unet) -> None:
    """Give this UNet a forward with a code object of its own. Dynamo keeps compiled graphs per code object (the
    UNet class's forward, shared by every model loaded in the process) and guards neither module hooks
    (`skip_nnmodule_hook_guards`) nor inductor settings: a variant differing from an earlier one only in those would
    run the earlier one's graph (a hook-only variant tried in the did, on the CPU)."""
    import types

    f = type(unet).forward
    fn = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    fn.__kwdefaults__ = f.__kwdefaults__
    unet.forward = types.MethodType(fn, unet)


def _video(b, f, h, w, seed=0):
    import torch

    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, f, h, w, 3), dtype=np.uint8))


def _actor(folder: str, device: str, variant: str, batch: str, shared: str = "", clip: str = "{}") -> int:
    """The child of --startup: construct the job's restyle actor (without Ray) and say how long parts took.
    shared: the shared compile cache's URI, or ''. Where the actor is ready eager while its parts compile in the
    background (`bg`), it then restyles batches of `clip` (JSON: strength, num_inference_steps, guidance_scale)
    until it has taken the compiled parts up, and two batches more, and says what each cost per clip-step."""
    t0 = time.perf_counter()
    from v2v.config import JobConfig
    from v2v.job.resources import resources
    from v2v.job.stages import Restyle

    dtype, speed = _variant_cfg(variant)
    # batched as on a GPU (not the CPU's batch-invariant default, which compiles before the actor is ready)
    cfg = JobConfig(manifest="-", output="-", model=folder, batch_size=int(batch), dtype=dtype,
                    shared_compile_cache=shared or None, speed=speed, batch_invariant=False)
    t1 = time.perf_counter()
    actor = Restyle(cfg, resources(cfg, {"GPU": 1} if device == "cuda" else {"CPU": os.cpu_count()}))
    ready = time.perf_counter() - t1
    from torch._dynamo.utils import compilation_time_metrics

    from benchmarks.harness import compile_breakdown

    compiled = compile_breakdown(compilation_time_metrics)
    print(f"READY v2v imports {t1 - t0:.1f} s, actor built and warm {ready:.1f} s ({actor.start_report()})"
          + (f"; {compiled}" if compiled else ""), flush=True)
    if actor.background is not None:
        print("BACKGROUND " + json.dumps(_eager_then_compiled(actor, int(batch), json.loads(clip), t1)), flush=True)
    return 0


def _eager_then_compiled(actor, batch: int, clip: dict, t_start: float) -> dict:
    """Batches of `batch` clips through the actor's stream while its parts compile in the background, then two
    after it took them up: seconds per clip-step of each kind (the batch in which it took them up left out), and
    when the actor ran compiled (seconds since `t_start`)."""
    import torch

    from v2v.model.loading import model_geometry

    if actor.components.device.type == "cpu":  # half the cores: the rest are the background compile's, which a
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # CPU actor busy with eager batches would starve
    width, height, frames = model_geometry(actor.cfg.model)
    video = _video(batch, frames, height, width).numpy()
    steps = batch * int(clip["strength"] * clip["num_inference_steps"])
    seconds: dict[str, list[float]] = {"eager": [], "compiled": []}
    compiled_at = None
    while len(seconds["compiled"]) < 2:
        before = actor.background is not None
        t = time.perf_counter()
        rows = [dict(id="v", clip_index=i, frames=video[i], prompt=f"style {i}", seed=i, error=None, **clip)
                for i in range(batch)]
        bad = [r["error"] for r in actor.stream(rows) if r["error"]]
        if bad:
            raise RuntimeError(f"restyle failed: {bad[0]}")
        after = actor.background is not None
        if before and not after:
            compiled_at = time.perf_counter() - t_start
            if not actor.speed.compile or "background_compile" not in actor.start_s:  # failed: stays eager
                return {"failed": actor.start_report(), **{k: _median(v) for k, v in seconds.items()}}
        elif before:
            seconds["eager"].append((time.perf_counter() - t) / steps)
        else:
            seconds["compiled"].append((time.perf_counter() - t) / steps)
    return {"compiled_at_s": compiled_at, "eager_batches": len(seconds["eager"]),
            "eager_s_per_clip_step": _median(seconds["eager"]),
            "compiled_s_per_clip_step": _median(seconds["compiled"]), **actor.start_s}


def _median(xs: list[float]) -> float:
    return float(np.median(xs)) if xs else float("nan")


class Bench:
    """What every section uses: the arguments, the model folder and clip geometry, and the rows so far."""

    def __init__(self, a, folder: str, argv: list[str]):
        from v2v.job.pipeline import versions
        from v2v.model.loading import model_geometry

        self.a, self.folder = a, folder
        self.width, self.height, self.frames = model_geometry(folder)
        self.cuda = a.device == "cuda"
        self.clip = dict(strength=a.strength, num_inference_steps=a.steps, guidance_scale=a.guidance_scale)
        self.rows: list[dict] = []
        self.info = {"card": _card(), "versions": versions(),
                     "command": "python -m benchmarks.run " + shlex.join(argv),
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}

    def record(self, **r) -> dict:
        self.rows.append(r)
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()), flush=True)
        return r

    def mem_reset(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        import torch

        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else float("nan")

    def video(self, b: int, seed: int = 0):
        return _video(b, self.frames, self.height, self.width, seed)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_actor"]:
        return _actor(*argv[1:])

    from benchmarks.harness import matmul_tflops
    from v2v.model.loading import WAN, model_family

    a = _args(argv)
    work = a.work_dir or tempfile.mkdtemp(prefix="v2v-bench-")
    os.makedirs(work, exist_ok=True)
    folder, built = model_folder(a.model, work, a.device)
    b = Bench(a, folder, argv)
    if built is not None:
        b.record(what=f"build the {a.model} model", seconds=built)
    if b.cuda:
        b.info["bf16_matmul_tflops"] = matmul_tflops()
        b.record(what="bf16 matmul 8192^3", tflops=b.info["bf16_matmul_tflops"])
    # A run lasts many GPU minutes: when a section fails, the table still reports what came before it.
    try:
        if model_family(folder) is WAN:  # its own section; the UNet3D's speed variants do not apply
            wan(b)
            if a.startup:  # the job's Wan actor on a GPU: bf16, compile, precompile, background_compile; batch 2
                startup(b, work, {"variant": "bfloat16+bg" if b.cuda else "float32+bg", "batch": 2})
            if a.e2e_clips:
                ray_job(b, work, None)
            return 0
        if a.reference:
            reference(b)
        ref = quality_reference(b) if a.quality else None
        best = sampler(b, ref)
        b.info["best_sampler"] = best
        if a.attention:
            attention(b, best)
        for mix in [m for m in a.manifest_mix.split(",") if m and m != "lora"]:  # adapters: the job's only
            if a.mix_modes:
                continuous(b, best, mix)
        if a.startup:
            startup(b, work, best)
        if a.e2e_clips:
            ray_job(b, work, best)
    except BaseException as e:
        b.record(what="run stopped", note=f"{type(e).__name__}: {e}"[:300])
        raise
    finally:
        _report(a, b.info, b.rows)
    return 0


def reference(b: Bench) -> None:
    """The seed pipeline (diffusers' VideoToVideoSDPipeline, fp16), one clip per call: it cannot batch."""
    import torch
    from diffusers.pipelines.deprecated.text_to_video_synthesis.pipeline_text_to_video_synth_img2img import (
        VideoToVideoSDPipeline,
    )

    from benchmarks.harness import timed

    variant = "float16" if b.cuda else "float32"
    c = _load(b.folder, b.a.device, variant)
    pipe = VideoToVideoSDPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                  scheduler=c.scheduler)
    pipe.set_progress_bar_config(disable=True)
    video = b.video(1).numpy().astype(np.float32) / 255.0  # (1, F, H, W, 3) in [0, 1], as the pipeline takes it
    b.mem_reset()
    s, _ = timed(lambda: pipe("a watercolor painting", video=video, generator=torch.Generator().manual_seed(0),
                              **b.clip), repeat=2)
    b.record(what="reference pipeline", variant=variant, batch=1, s_per_clip=s, clips_per_hour=3600 / s,
             peak_gib=b.peak_gib())
    b.info["reference_s_per_clip"] = s
    b.info["reference_peak_gib"] = b.peak_gib()


def wan(b: Bench) -> None:
    """A Wan model: with --reference, diffusers' WanVideoToVideoPipeline (one clip a call: it cannot batch clips of
    their own settings; bf16 on GPUs, the VAE in float32 as Wan keeps it); then v2v's wan.restyle per --variants
    (a transformer takes `compile` of the speed switches) and --batch-sizes, clips in flight sharing each
    transformer forward: s per clip, peak memory, one guided transformer step's time and TFLOP/s, and one prompt's
    text encoding (the UMT5 on the actor's GPU), and the first call's time (compiling, cuDNN trying the VAE's
    convolutions).

    One process keeps one cuDNN choice per convolution shape: the pipeline (cudnn.benchmark off, as diffusers leaves
    it) fixes the VAE's, and v2v's rows after it reuse them. Compare the two each in its own process: `--reference
    --variants ''`, then `--variants ...` alone."""
    import copy

    import torch
    from diffusers import WanVideoToVideoPipeline
    from PIL import Image

    from benchmarks.harness import cuda_seconds_per_call, timed, unet_step_flops
    from v2v.model import wan as wan_model
    from v2v.model.loading import load_components
    from v2v.model.sampler import ClipSettings
    from v2v.speed import apply_speed_settings

    batches = [int(x) for x in b.a.batch_sizes.split(",")]
    video, prompt = b.video(max(batches)), "a watercolor painting"
    seconds = (lambda fn: cuda_seconds_per_call(fn, repeat=3)) if b.cuda else (lambda fn: timed(fn, repeat=1)[0])
    if b.a.reference:
        dtype = "bfloat16" if b.cuda else "float32"
        c = load_components(b.folder, device=b.a.device, dtype=dtype)
        pipe = WanVideoToVideoPipeline(tokenizer=c.tokenizer, text_encoder=c.text_encoder, transformer=c.transformer,
                                       vae=c.vae, scheduler=copy.deepcopy(c.scheduler))
        pipe.set_progress_bar_config(disable=True)
        frames = [Image.fromarray(f) for f in video[0].numpy()]
        b.mem_reset()
        s, _ = timed(lambda: pipe(video=frames, prompt=prompt, height=b.height, width=b.width, output_type="np",
                                  generator=torch.Generator().manual_seed(0), **b.clip), repeat=b.a.repeat)
        b.record(what="wan reference pipeline", variant=dtype, batch=1, s_per_clip=s, clips_per_hour=3600 / s,
                 peak_gib=b.peak_gib())
        b.info["reference_s_per_clip"] = s
        pipe = None
        loaded = {dtype: c}  # the pipeline leaves the components as they were: the first variant reuses them
    else:
        loaded = {}
    steps = int(b.a.strength * b.a.steps)
    for variant in [v for v in b.a.variants.split(",") if v]:
        dtype, speed = _variant_cfg(variant)
        for batch in batches:
            if dtype not in loaded:  # one model on the card at a time, loaded once per dtype (the UMT5 is 11 GB)
                loaded = c = None
                if b.cuda:
                    torch.cuda.empty_cache()
                loaded = {dtype: load_components(b.folder, device=b.a.device, dtype=dtype)}
            c = loaded[dtype]
            c.transformer.__dict__.pop("forward", None)  # the last row's compiled forward, if any
            apply_speed_settings(c, speed, unet_batch=2 * batch)  # 2 rows a guided clip: text and negative
            clips = [ClipSettings(prompt, seed=i, **b.clip) for i in range(batch)]
            b.mem_reset()
            first_s = timed(lambda: wan_model.restyle(c, video[:batch], clips), repeat=1, warmup=0)[0]  # compiles
            s, _ = timed(lambda: wan_model.restyle(c, video[:batch], clips), repeat=b.a.repeat, warmup=0)
            peak = b.peak_gib()
            # one guided step of `batch` clips: the text and negative halves in one forward of 2 * batch latents
            x = torch.randn(2 * batch, *c.latent_shape(b.frames, b.height, b.width), device=c.device, dtype=c.dtype)
            t = torch.full((2 * batch,), 500.0, device=c.device)
            e = torch.randn(2 * batch, wan_model.MAX_SEQUENCE_LENGTH, c.transformer.config.text_dim,
                            device=c.device, dtype=c.dtype)
            with torch.no_grad():
                step_s = seconds(lambda: c.transformer(x, t, encoder_hidden_states=e, return_dict=False))
                flops = unet_step_flops(getattr(c.transformer.forward, "eager", c.transformer), x, t, e)
                text_s = seconds(lambda: wan_model.encode_prompts(c.tokenizer, c.text_encoder, [prompt]))
            ref = b.info.get("reference_s_per_clip")
            b.record(what="wan v2v", variant=variant, batch=batch, s_per_clip=s / batch,
                     clips_per_hour=3600 * batch / s, speedup_vs_reference=ref / (s / batch) if ref else float("nan"),
                     step_s=step_s, tflops=flops / step_s / 1e12, peak_gib=peak, peak_gib_per_clip=peak / batch,
                     first_call_s=first_s,
                     note=f"{steps} steps a clip; one prompt's text encoding {text_s * 1e3:.0f} ms; the first call "
                          f"(compiling where compiled, from the kernel cache as found) {first_s:.1f} s")
    c = loaded = None
    if b.cuda:
        torch.cuda.empty_cache()


def quality_reference(b: Bench) -> dict:
    """float32 eager (TF32 off), the quality guard's reference: one clip's final latents, and one guided UNet
    step's output per batch size on `_step_inputs`. Computed up front, so the float32 model leaves the card
    before the variants are measured (their peak memory stays their own)."""
    import torch

    from v2v.model.sampler import restyle

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    c = _load(b.folder, b.a.device, "float32")
    ref = {"latents": restyle(c, b.video(1), [_quality_clip(b)], output="latents").float().cpu(), "steps": {}}
    with torch.no_grad():
        for batch in _batch_sizes(b):
            x, e, t = _step_inputs(c, batch)
            ref["steps"][batch] = c.unet(x, t, encoder_hidden_states=e).sample.float().cpu()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = b.cuda
    return ref


def _quality_clip(b: Bench):
    from v2v.model.sampler import ClipSettings

    return ClipSettings("a watercolor painting", seed=7, **b.clip)


def _batch_sizes(b: Bench) -> list[int]:
    return [int(x) for x in b.a.batch_sizes.split(",") if x]


def unet_step(folder: str, device: str, variant: str, batch: int):
    """For the probes in benchmarks/: the model in `folder` with `variant`'s switches, its UNet's compiled graph (if
    any) built for one guided step of `batch` clips, and that step as `step()` -> the UNet's output, returned once
    the device has finished it. Inputs as `_step_inputs` makes them, at the folder's clip shape."""
    import torch

    c = _load(folder, device, variant, unet_batch=2 * batch)  # cond + uncond latents per call
    x, e, t = _step_inputs(c, batch)

    def step():
        with torch.no_grad():
            y = c.unet(x, t, encoder_hidden_states=e, return_dict=False)[0]
        if c.device.type == "cuda":
            torch.cuda.synchronize()
        return y

    return c, step


def _step_inputs(c, batch: int):
    """One guided UNet step's inputs for `batch` clips at the model's native clip shape (c.width, c.height,
    c.frames), as the sampler passes them to the UNet's forward: the latents (B, 4, F, h, w) once where the forward
    takes a guided step's pairs (`shared_prefix`), else twice (2B, ...) for the uncond and text halves; embeddings
    (2B, 77, D), uncond first. Seeded, with values exact in bf16 and fp16 so that every dtype's step starts from the
    same numbers; the timesteps as the sampler passes them (one per clip, int64 on the model's device, the compiled
    graph's input)."""
    import torch

    from v2v.model.sampler import clip_timesteps, guided_latents

    g = torch.Generator().manual_seed(batch)
    h8, w8 = c.height // c.vae_scale_factor, c.width // c.vae_scale_factor
    x = torch.randn(batch, c.unet.config.in_channels, c.frames, h8, w8, generator=g).bfloat16()
    e = torch.randn(2 * batch, 77, c.text_encoder.config.hidden_size, generator=g).bfloat16()
    t = guided_latents(c.unet, clip_timesteps([torch.tensor(500)] * batch, c.device))
    return guided_latents(c.unet, x.to(c.device, c.dtype)), e.to(c.device, c.dtype), t


def sampler(b: Bench, ref: dict | None) -> dict | None:
    """v2v's sampler, each variant at each batch size: seconds per clip, one UNet step, FLOPs, memory; the
    quality guard against `ref`; a kernel table with --profile. Returns the fastest row."""
    import torch

    from v2v.speed import FixedBatch

    best = None
    for variant in [v for v in b.a.variants.split(",") if v]:
        t_load = time.perf_counter()
        c = _load(b.folder, b.a.device, variant)
        load_s = time.perf_counter() - t_load
        for i, batch in enumerate(_batch_sizes(b)):
            if isinstance(c.unet.forward, FixedBatch):
                c.unet.forward.size = 2 * batch  # the compiled graph's batch: cond + uncond latents
            r = _sampler_row(b, c, variant, batch, ref, final_latents=i == 0)
            if r is not None:
                r["load_s"] = load_s
                if best is None or r["s_per_clip"] < best["s_per_clip"]:
                    best = r
        c = None
        if b.cuda:
            torch.cuda.empty_cache()
    return best


def _sampler_row(b: Bench, c, variant: str, batch: int, ref: dict | None, final_latents: bool) -> dict | None:
    import torch

    from benchmarks.harness import timed, unet_step_flops
    from v2v.model.sampler import ClipSettings, restyle, to_uint8_checked

    clips = [ClipSettings(f"style {i}", seed=i, **b.clip) for i in range(batch)]
    video = b.video(batch, seed=batch)

    def call():  # what the job's actor runs: uint8 frames on the host (float32 ones before the 21st session)
        return to_uint8_checked(restyle(c, video, clips, output="device_frames"))

    b.mem_reset()
    t0 = time.perf_counter()
    try:
        call()  # warm-up: compiles where compiled
        first_s = time.perf_counter() - t0
        s, _ = timed(call, repeat=b.a.repeat, warmup=0)  # a call lasts seconds
    except torch.OutOfMemoryError:
        b.record(what="v2v sampler", variant=variant, batch=batch, note="out of memory")
        return None
    peak = b.peak_gib()
    # One guided UNet step alone: 2B latents (cond + uncond).
    x, e, t = _step_inputs(c, batch)

    def step():
        return c.unet(x, t, encoder_hidden_states=e, return_dict=False)

    with torch.no_grad():
        step_s, _ = timed(step, repeat=5, warmup=2)
    # counted through the eager forward (the counter cannot see inside compiled code): the FLOPs this variant runs
    flops = unet_step_flops(getattr(c.unet.forward, "eager", c.unet), x, t, e)
    r = dict(what="v2v sampler", variant=variant, batch=batch, s_per_clip=s / batch,
             clips_per_hour=3600 * batch / s, step_s=step_s, step_tflop=flops / 1e12, tflops=flops / step_s / 1e12,
             peak_gib=peak, peak_gib_per_clip=peak / batch, first_call_s=first_s)
    if "reference_s_per_clip" in b.info:
        r["speedup_vs_reference"] = b.info["reference_s_per_clip"] / (s / batch)
    if ref is not None:
        with torch.no_grad():  # one UNet forward against float32 on the same input: the local error
            out = step()[0].float().cpu()
        want = ref["steps"][batch]
        r["step_rel_err_vs_fp32"] = float((out - want).norm() / want.norm())
        if final_latents:  # the reference clip's final latents, once per variant
            lat = restyle(c, b.video(1), [_quality_clip(b)], output="latents").float().cpu()
            r["rel_err_vs_fp32"] = float((lat - ref["latents"]).norm() / ref["latents"].norm())
    if b.a.profile:
        r.update(_profile(b, step, f"{variant} batch {batch}"))
    return b.record(**r)


MIXES = ("uniform", "mixed", "lora")
LORA_RANKS = (16, 64, 16, 64, 16, 64, 16, 64)  # the lora mix's 8 styles


def mixed_settings(b: Bench, mix: str, n: int) -> list[dict]:
    """n clips' settings for a manifest `mix`: uniform (the run's --strength, --steps, --guidance-scale), or mixed
    (strengths 0.4-0.8, guidance scales 1-15 with guidance off at 1, DDIM and DPM-Solver++ alternating, every fourth
    clip a video's last, its remainder a third shorter than a clip: with --last-clip overlap, as the job runs it, a
    whole clip of which a third is context (`context` frames); with short, a shorter clip)."""
    if mix not in MIXES:
        raise ValueError(f"--manifest-mix: {mix!r} is not one of {list(MIXES)}")
    out = []
    for i in range(n):
        c = dict(b.clip, frames=b.frames, context=0, scheduler=None)
        if mix == "mixed":
            c.update(strength=(0.4, 0.5, 0.6, 0.7, 0.8)[i % 5], guidance_scale=(1.0, 5.0, 9.0, 15.0)[i % 4],
                     num_inference_steps=max(3, c["num_inference_steps"]),  # strength 0.4 leaves a step
                     scheduler=("ddim", "dpm")[i % 2])
            if i % 4 == 3 and b.a.last_clip == "short":
                c["frames"] = b.frames - b.frames // 3
            elif i % 4 == 3:
                c["context"] = b.frames // 3
        out.append(c)
    return out


def continuous(b: Bench, best: dict | None, mix: str) -> None:
    """--mix-clips clips kept in flight by the continuous batcher (v2v.model.continuous), and the same clips grouped
    as actors ran them before, at the best variant and batch: clip-steps a second, seconds per clip-step, and the
    share of forward slots that carried a clip (the rest is padding to the compiled batch)."""
    import torch

    from v2v.job.stages import ClipWorker
    from v2v.model.continuous import StepBatcher, fill_order, run_all
    from v2v.model.loading import make_scheduler
    from v2v.model.sampler import ClipSettings, denoising_steps, restyle, to_uint8_checked

    variant, batch = _section_variant(best, b.cuda, None, b.a.mix_batch)
    c = _load(b.folder, b.a.device, variant, unet_batch=2 * batch)
    settings = mixed_settings(b, mix, b.a.mix_clips)
    scheds = {name: make_scheduler(c.scheduler, name) for name in {s["scheduler"] for s in settings}}
    video = b.video(1)[0]

    def run(items):
        """As one actor of the job runs them: in the job's calls (`ClipWorker.call_size`), each call's clips admitted
        longest first (`fill_order`) and read as the actor reads them (run_all with as_actor), its clips in flight
        drained at its end. Counts the forwards of clips shorter than the full length (their own stream, eager where
        the UNet is compiled)."""
        batcher = StepBatcher(c, batch)
        batcher.calls = 0
        batcher.shorter_forwards, full_f = 0, batcher.stream_of(video[: b.frames])[1]
        predict = batcher.backbone.predict

        def counted(latents, *args):
            batcher.shorter_forwards += latents[0].shape[2] < full_f
            return predict(latents, *args)

        batcher.backbone.predict = counted
        size = ClipWorker.call_size(batch, len(items), actors=1)
        for k in range(0, len(items), size):
            call = items[k : k + size]
            call = [call[j] for j in fill_order([denoising_steps(s["num_inference_steps"], s["strength"])
                                                 for _, s in call])]
            out = run_all(batcher, [(i, video[: s["frames"]], ClipSettings(
                f"style {i}", seed=i, strength=s["strength"], num_inference_steps=s["num_inference_steps"],
                guidance_scale=s["guidance_scale"]), scheds[s["scheduler"]]) for i, s in call], as_actor=True,
                on_done=lambda bt, clip: to_uint8_checked(bt.finish(clip)[None]))
            failed = [k for k, v in out.items() if not isinstance(v, torch.Tensor)]
            assert not failed, {k: out[k] for k in failed}
            batcher.calls += 1
        return batcher

    def grouped(items):
        """What actors ran before clips were kept in flight: `batch` clips a call, split by frame count and
        scheduler, then by (steps, strength, guidance on/off) inside `restyle`, each group padded to the batch."""
        forwards = [0]
        unet_forward = c.unet.forward

        def counted(*args, **kw):
            forwards[0] += 1
            return unet_forward(*args, **kw)

        c.unet.forward = counted
        try:
            for k in range(0, len(items), batch):
                call = items[k : k + batch]
                for key in sorted({(s["frames"], s["scheduler"] or "") for _, s in call}):
                    group = [(i, s) for i, s in call if (s["frames"], s["scheduler"] or "") == key]
                    clips = [ClipSettings(f"style {i}", seed=i, strength=s["strength"],
                                          num_inference_steps=s["num_inference_steps"],
                                          guidance_scale=s["guidance_scale"]) for i, s in group]
                    frames = restyle(c, video[None, : key[0]].expand(len(group), -1, -1, -1, -1), clips,
                                     scheduler=scheds[key[1] or None], output="device_frames")
                    to_uint8_checked(frames)
        finally:
            c.unet.forward = unet_forward
        return forwards[0]

    items = list(enumerate(settings))
    clip_steps = sum(int(s["strength"] * s["num_inference_steps"]) for s in settings)
    for how in [m for m in b.a.mix_modes.split(",") if m]:
        if how not in ("grouped", "continuous"):
            raise ValueError(f"--mix-modes: {how!r} is not grouped or continuous")
        (run if how == "continuous" else grouped)(items[:batch])  # warm-up: compiles where compiled
        if b.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        batcher = run(items) if how == "continuous" else None
        forwards = batcher.forwards if batcher else grouped(items)
        if b.cuda:
            torch.cuda.synchronize()
        s = time.perf_counter() - t0
        b.record(what=f"{how} batching, {mix}", variant=variant, batch=batch, clips=len(settings),
                 clip_steps_per_s=clip_steps / s, s_per_clip_step=s / clip_steps,
                 # the share of the frame-steps computed that are output (the rest: last clips' context frames)
                 output_share=sum(int(c["strength"] * c["num_inference_steps"]) * (c["frames"] - c["context"])
                                  for c in settings) / sum(int(c["strength"] * c["num_inference_steps"]) * c["frames"]
                                                           for c in settings),
                 slot_fill=clip_steps / (forwards * batch), s_per_clip=s / len(settings), forwards=forwards,
                 shorter_forwards=batcher.shorter_forwards if batcher else None,
                 calls=batcher.calls if batcher else -(-len(items) // batch))


def _profile(b: Bench, step, title: str) -> dict:
    """Where one step's time goes, kernel by kernel (the guide for the next speed-up): appends the kernel
    table and the time per kernel kind to --profile; returns the kinds' shares for the row."""
    import torch

    from benchmarks.harness import kernel_kinds, profiler_kernels

    with torch.no_grad(), torch.profiler.profile() as prof:
        step()
        if b.cuda:
            torch.cuda.synchronize()
    kernels = profiler_kernels(prof, b.cuda)
    kinds = kernel_kinds([(name, secs) for name, secs, _ in kernels])
    total = sum(kinds.values()) or float("nan")
    by = "self_cuda_time_total" if b.cuda else "self_cpu_time_total"
    with open(b.a.profile, "a") as f:
        f.write(f"## {title}\n\nkernel time {total * 1e3:.1f} ms in {len(kernels)} kernels; by kind:\n")
        for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]):
            f.write(f"  {k:50s} {v * 1e3:9.1f} ms  {100 * v / total:5.1f} %\n")
        f.write(f"\n{prof.key_averages().table(sort_by=by, row_limit=40)}\n\n"
                "every kernel, slowest first (ms, calls, name):\n")
        for name, secs, calls in kernels:
            f.write(f"  {secs * 1e3:9.3f} {calls:5d}  {name}\n")
        f.write("\n")
    return {"kernel_ms": total * 1e3}


def attention(b: Bench, best: dict | None) -> None:
    """Every attention shape one guided UNet step calls (eager, in the fastest variant's dtype and batch), each
    timed under each SDPA backend: what attention costs a step, and which backend would serve each shape best.
    Rows go to a table of their own (info["attention"])."""
    import torch

    from benchmarks.harness import SDPA_BACKENDS, attention_flops, sdpa_calls, time_sdpa

    variant, batch = _section_variant(best, b.cuda)
    dtype = _variant_cfg(variant)[0]
    c = _load(b.folder, b.a.device, dtype)
    x, e, t = _step_inputs(c, batch)
    rows, total = [], dict.fromkeys([*SDPA_BACKENDS, "best"], 0.0)
    for call in sdpa_calls(lambda: c.unet(x, t, encoder_hidden_states=e)):
        secs = time_sdpa(call, c.device.type)
        fastest = min((k for k in SDPA_BACKENDS if secs[k] == secs[k]), key=secs.get)
        for k in SDPA_BACKENDS:
            total[k] += call["calls"] * secs[k]  # NaN where the backend cannot run some shape
        total["best"] += call["calls"] * secs[fastest]
        rows.append({"q (N, heads, L, D)": "×".join(map(str, call["q"][0])), "kv_len": call["k"][0][2],
                     "calls": call["calls"], **{f"{k}_ms": 1e3 * secs[k] for k in SDPA_BACKENDS},
                     "fastest": fastest, "default_tflops": attention_flops(call) / secs["default"] / 1e12})
    rows.append({"q (N, heads, L, D)": "per step", "calls": sum(r["calls"] for r in rows),
                 **{f"{k}_ms": 1e3 * total[k] for k in SDPA_BACKENDS}, "fastest": f"{1e3 * total['best']:.1f} ms"})
    b.info["attention"] = {"dtype": dtype, "batch": batch, "rows": rows}
    b.record(what="attention per step", variant=dtype, batch=batch,
             note=f"torch's choice {1e3 * total['default']:.1f} ms, fastest per shape {1e3 * total['best']:.1f} ms")
    c = None
    if b.cuda:
        torch.cuda.empty_cache()


def startup(b: Bench, work: str, best: dict | None) -> None:
    """A fresh process builds a restyle actor (imports, model load, perf switches, compile or cached kernels,
    warm-up), twice over one empty compile cache: the first start, then the second. Where the variant stores its
    compiled parts (pre) and the cache starts empty, a third start stands for another machine's first: an
    empty compile cache of its own, and the shared compile cache (a folder here) the first start filled."""
    variant, batch = _section_variant(best, b.cuda, b.a.startup_variant, b.a.startup_batch)
    stamp = int(time.time())
    cache = b.a.startup_cache or os.path.join(work, f"inductor-startup-{stamp}")
    shared = os.path.join(work, f"shared-cache-{stamp}")
    # over a given cache the first start is a cached one too (what that cache holds), so not called "first start"
    first = "start over the given cache" if b.a.startup_cache else "first start"
    starts = [(first, cache), ("second start", cache)]
    stores = _variant_cfg(variant)[1].precompile
    if stores and not b.a.startup_cache:
        starts.append(("another machine's first start, shared cache", f"{cache}-other"))
    for attempt, folder in starts:
        t0 = time.perf_counter()
        # the child's lines as they come: ready is when it says READY (a background-compiling one then restyles)
        child = subprocess.Popen([sys.executable, "-m", "benchmarks.run", "--_actor", b.folder, b.a.device, variant,
                                  str(batch), shared if stores else "", json.dumps(b.clip)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True,
                                 env={**os.environ, "V2V_COMPILE_CACHE": folder, "TQDM_DISABLE": "1"})
        ready = bg = None
        err = []
        threading.Thread(target=lambda: err.extend(child.stderr), daemon=True).start()
        for line in child.stdout:
            if line.startswith("READY"):
                ready = line[6:].strip(), time.perf_counter() - t0
            elif line.startswith("BACKGROUND"):
                bg = json.loads(line[11:])
        child.wait()
        wall = time.perf_counter() - t0
        # a crash (e.g. a segmentation fault, exit code -11) leaves no traceback: say the code and the last lines
        # (no progress bars in them: TQDM_DISABLE)
        said = [ln.strip() for ln in err if ln.strip()]
        failed = f"failed (exit code {child.returncode}): " + " ".join(said[-3:])[-300:]
        b.record(what=f"actor ready ({attempt})", variant=variant, batch=batch,
                 seconds=ready[1] if ready else wall, note=ready[0] if ready and child.returncode == 0 else failed)
        if bg and "failed" not in bg:
            eager, comp = bg["eager_s_per_clip_step"], bg["compiled_s_per_clip_step"]
            # over a node's first hour: what the eager minutes cost against compiled ones, and the take-up pause
            lost = (bg["compiled_at_s"] - ready[1]) * (1 - comp / eager) if eager == eager else 0.0
            b.record(what=f"actor compiled in the background ({attempt})", variant=variant, batch=batch,
                     seconds=bg["compiled_at_s"], eager_s_per_clip_step=eager, compiled_s_per_clip_step=comp,
                     first_hour_cost=(lost + bg.get("take_up_compiled", 0.0)) / 3600,
                     note=f"{bg['eager_batches']} batches eager; compiled in the background in "
                          f"{bg['background_compile']:.0f} s, taken up in {bg['take_up_compiled']:.1f} s")
        elif bg:
            b.record(what=f"actor compiled in the background ({attempt})", variant=variant, batch=batch,
                     note=f"failed: {bg['failed']}"[:300])


def ray_job(b: Bench, work: str, best: dict | None) -> None:
    """The whole Ray job over generated videos (4 clips each), per GPU count and manifest mix, against the bare
    sampler."""
    a = b.a
    for mix in [m for m in a.manifest_mix.split(",") if m] or ["uniform"]:
        _ray_job(b, work, best, mix)


def _ray_job(b: Bench, work: str, best: dict | None, mix: str) -> None:
    import pyarrow.parquet as pq
    import ray

    from benchmarks.harness import GpuUtilization, actor_rates, max_unwritten, random_lora
    from jobs.demo import make_video
    from v2v.config import JobConfig
    from v2v.job.pipeline import run_job

    a = b.a
    suffix = "" if mix == "uniform" else f"-{mix}"  # the uniform job's rows and folder keep their names
    vids = os.path.join(work, f"videos{suffix}")
    os.makedirs(vids, exist_ok=True)
    per_video = 4
    videos = -(-a.e2e_clips // per_video)
    # mixed: each row its strength, guidance and scheduler, and every video's last clip a third shorter;
    # lora: video i in style i % 8, a LoRA file (the job groups clips by LoRA set: 8 switches a job per actor)
    settings = mixed_settings(b, mix, videos)
    loras = []
    if mix == "lora":
        for k, rank in enumerate(LORA_RANKS):
            loras.append(os.path.join(vids, f"style{k}-rank{rank}.safetensors"))
            if not os.path.exists(loras[-1]):
                random_lora(loras[-1], b.folder, rank, seed=k)
    with open(os.path.join(vids, "manifest.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "prompt", "strength", "num_inference_steps", "guidance_scale", "scheduler", "lora"])
        for i, c in enumerate(settings):
            frames = b.frames * per_video - (b.frames // 3 if mix == "mixed" else 0)
            make_video(os.path.join(vids, f"v{i}.mp4"), frames, b.width, b.height, seed=i)
            lora = json.dumps([{"uri": loras[i % len(loras)], "scale": 0.8}]) if loras else ""
            w.writerow([f"v{i}.mp4", f"style {i}", c["strength"], c["num_inference_steps"], c["guidance_scale"],
                        c["scheduler"] or "", lora])
    variant, batch = _section_variant(best, b.cuda, a.e2e_variant, a.e2e_batch)
    dtype, speed = _variant_cfg(variant)
    bare = next((r["clips_per_hour"] for r in b.rows if r.get("what") == "v2v sampler"
                 and r["variant"] == variant and r["batch"] == batch), None)
    base_rate = None
    address = a.ray_address or os.environ.get("RAY_ADDRESS")
    for gpus in [int(g) for g in a.e2e_gpus.split(",")]:
        if address:  # `ray job submit` or --ray-address: the cluster has what it has; ask for `gpus` actors
            ray.init(address=address)
            have = int(ray.cluster_resources().get("GPU", 0))
            if b.cuda and have < gpus:
                b.record(what="ray job end to end", gpus=gpus, note=f"skipped: the cluster has {have} GPU(s)")
                ray.shutdown()
                continue
        else:  # a local cluster of exactly `gpus` GPUs
            ray.init(num_gpus=gpus if b.cuda else 0, num_cpus=os.cpu_count(), include_dashboard=False,
                     runtime_env={"env_vars": {"V2V_COMPILE_CACHE": os.path.join(work, "inductor")}})
        cfg = JobConfig(manifest=os.path.join(vids, "manifest.csv"), output=os.path.join(work, f"e2e{suffix}-{gpus}"),
                        model=b.folder, steps=a.steps, strength=a.strength, guidance_scale=a.guidance_scale,
                        batch_size=batch, dtype=dtype, num_actors=gpus if b.cuda else 1, codec="h264",
                        max_clips=per_video, speed=speed, last_clip=a.last_clip)
        t0 = time.perf_counter()
        with GpuUtilization() as util:
            s = run_job(cfg, log=lambda m: print(m, flush=True))
        wall = time.perf_counter() - t0
        ray.shutdown()
        index = pq.read_table(os.path.join(cfg.output, "index")).to_pylist()
        steady = actor_rates(index)
        ends = sorted(r["restyle_finished_at"] for r in index if r["status"] == "ok")
        rate = steady["clips_per_hour"]
        base_rate = base_rate or rate
        busy = [v["busy"] for v in steady["actors"].values()]
        ok = [r for r in index if r["status"] == "ok"]
        steps_per_clip = sum(int(r["strength"] * r["num_inference_steps"]) for r in ok) / max(1, len(ok))
        clip_steps_per_s = rate * steps_per_clip / 3600
        uniform = next((r["clip_steps_per_s"] for r in b.rows if r.get("what") == "ray job end to end"
                        and r.get("gpus") == gpus), None)
        b.record(what=f"ray job end to end{suffix.replace('-', ', ')}", variant=variant, batch=batch, gpus=gpus,
                 clips=s.ok, failed=s.failed, clip_steps_per_s=clip_steps_per_s,
                 # a clip-step's cost against the uniform manifest's job in this run (run uniform first)
                 cost_vs_uniform=uniform / clip_steps_per_s if uniform and mix != "uniform" else float("nan"),
                 wall_s=wall, clips_per_hour=3600 * s.ok / wall, steady_clips_per_hour=rate,
                 gpu_busy=min(busy) if busy else float("nan"),
                 # the model's idle periods inside the steady span (between an actor's calls, mostly): count; longest
                 idle_periods=sum(len(v["idle"]) for v in steady["actors"].values()),
                 longest_idle_s=max((v["idle"][0] for v in steady["actors"].values() if v["idle"]), default=0.0),
                 # NVML's share of time a kernel ran, from the first clip out of the model to the last
                 gpu_utilization=util.mean(ends[0], ends[-1]) if len(ends) > 1 else float("nan"),
                 max_unwritten=max_unwritten(index),
                 steady_vs_bare_sampler=(rate / (bare * gpus)) if bare else float("nan"),
                 scaling_vs_1gpu=rate / base_rate)


def _fmt(v):
    if isinstance(v, float):
        return "–" if v != v else (f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}")
    return "" if v is None else str(v)


def _table(rows: list[dict], cols: list[str]) -> list[str]:
    return (["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            + ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows])


def _report(a, info, rows) -> None:
    from benchmarks.harness import target_verdicts

    cols = ["what", "variant", "batch", "gpus", "s_per_clip", "clips_per_hour", "steady_clips_per_hour",
            "speedup_vs_reference", "step_s", "tflops", "peak_gib", "peak_gib_per_clip", "rel_err_vs_fp32",
            "step_rel_err_vs_fp32", "first_call_s", "kernel_ms",
            "clip_steps_per_s", "s_per_clip_step", "output_share", "slot_fill", "forwards", "shorter_forwards", "calls",
            "cost_vs_uniform",
            "gpu_busy", "idle_periods", "longest_idle_s", "gpu_utilization", "max_unwritten", "steady_vs_bare_sampler",
            "scaling_vs_1gpu", "seconds", "wall_s", "note"]
    used = [c for c in cols if any(c in r for r in rows)]
    v = info["versions"]
    lines = [f"### {info['date']} — {info['card']}", "",
             f"torch {v['torch']}, diffusers {v['diffusers']}, ray {v['ray']}, python {v['python']}, v2v {v['v2v']}",
             f"`{info['command']}`", ""]
    if "bf16_matmul_tflops" in info:
        lines.append(f"Measured bf16 matmul ceiling: {info['bf16_matmul_tflops']:.0f} TFLOP/s.")
        lines.append("")
    lines += _table(rows, used)
    if "attention" in info:
        att = info["attention"]
        lines += ["", f"Attention in one guided UNet step ({att['dtype']}, batch {att['batch']}, eager): ms per call "
                      "by SDPA backend ('default' is torch's own choice; – where the backend cannot run it)", ""]
        lines += _table(att["rows"], list(att["rows"][0]))
    info["targets"] = target_verdicts(info, rows)
    lines += ["", "Issue 5's targets, as this run measured them:", ""]
    lines += _table(info["targets"], ["target", "measured", "verdict"])
    text = "\n".join(lines) + "\n\n"
    print(text)
    if a.results:
        with open(a.results, "a") as f:
            f.write(text)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=2, default=str)


if __name__ == "__main__":
    sys.exit(main())
