"""Benchmark helpers: the zeroscope_v2_576w architecture with random weights, FLOP counting and timing.

Used by jobs/benchmark.py; nothing here runs at import.
"""

from __future__ import annotations

import statistics
import time

# zeroscope_v2_576w / text-to-video-ms-1.7b: UNet3D 1.41 B parameters, SD VAE, OpenCLIP-H text encoder.
ZEROSCOPE_UNET = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=1024,
                      attention_head_dim=64, norm_num_groups=32, sample_size=32)
ZEROSCOPE_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                     down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                     sample_size=512, scaling_factor=0.18215)
ZEROSCOPE_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                      max_position_embeddings=77, hidden_act="gelu", projection_dim=1024, vocab_size=49408)


def random_zeroscope(folder: str, device: str = "cuda") -> None:
    """Write a zeroscope_v2_576w-shaped model with random weights (fp16 safetensors) to `folder`."""
    import json
    from pathlib import Path

    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from v2v.model.tiny import _SCHEDULER_CONFIG, save_components, tiny_tokenizer

    tok = tiny_tokenizer()  # ids < 514 fit the 49408-token embedding; the weights are random anyway
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet3DConditionModel(**ZEROSCOPE_UNET).half()
        vae = AutoencoderKL(**ZEROSCOPE_VAE).half()
        text = CLIPTextModel(CLIPTextConfig(**ZEROSCOPE_TEXT, bos_token_id=tok.bos_token_id,
                                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).half()
    sched = DDIMScheduler.from_config({k: v for k, v in _SCHEDULER_CONFIG.items() if k != "_class_name"})
    save_components({"unet": unet, "vae": vae, "text_encoder": text, "tokenizer": tok, "scheduler": sched}, folder)
    (Path(folder) / "v2v.json").write_text(json.dumps({"width": 576, "height": 320, "frames": 24}))


# Wan2.1-T2V-1.3B-Diffusers' configs: its transformer, and google/umt5-xxl's encoder (the full-size text encoder);
# the Wan VAE's defaults are Wan 2.1's.
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                decoder_start_token_id=0)


def random_wan(folder: str, device: str = "cuda") -> None:
    """Write a Wan2.1-T2V-1.3B-shaped model with random weights (bf16 safetensors; the VAE float32, as Wan keeps
    it) and the full-size UMT5 encoder to `folder`, at its native 832x480, 81 frames (no v2v.json: the family's)."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from v2v.model.tiny import _WAN_SCHEDULER_CONFIG, save_components, tiny_t5_tokenizer

    torch.manual_seed(0)
    with torch.device(device):
        transformer = WanTransformer3DModel(**WAN_1_3B).to(torch.bfloat16)
        vae = AutoencoderKLWan()
        text = UMT5EncoderModel(UMT5Config(**UMT5_XXL)).to(torch.bfloat16)
    sched = UniPCMultistepScheduler(**_WAN_SCHEDULER_CONFIG)
    save_components({"transformer": transformer, "vae": vae, "text_encoder": text, "tokenizer": tiny_t5_tokenizer(),
                     "scheduler": sched}, folder, "WanVideoToVideoPipeline")


# What a style LoRA for a Stable Diffusion UNet adapts (kohya's and diffusers' training scripts alike): every
# attention's projections, spatial and temporal, and the text encoder's self-attention.
LORA_TARGETS = {"unet": (".to_q", ".to_k", ".to_v", ".to_out.0"),
                "text_encoder": (".q_proj", ".k_proj", ".v_proj", ".out_proj")}


def random_lora(path: str, folder: str, rank: int, seed: int = 0) -> int:
    """Write a LoRA of `rank` with random fp16 weights for the model in `folder` (diffusers' safetensors keys, alpha
    = rank) over LORA_TARGETS; the model is built on the meta device for its module names and shapes only.
    Returns the number of adapted layers."""
    import torch
    from diffusers import UNet3DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        parts = {"unet": UNet3DConditionModel.from_config(UNet3DConditionModel.load_config(folder, subfolder="unet")),
                 "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder, subfolder="text_encoder"))}
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for component, module in parts.items():
        for name, m in module.named_modules():
            if isinstance(m, torch.nn.Linear) and name.endswith(LORA_TARGETS[component]):
                out_f, in_f = m.weight.shape
                # small enough that the merged weights stay the model's (a speed benchmark: values matter little)
                tensors[f"{component}.{name}.lora_A.weight"] = (torch.randn(rank, in_f, generator=g) / in_f).half()
                tensors[f"{component}.{name}.lora_B.weight"] = (torch.randn(out_f, rank, generator=g) / rank).half()
                tensors[f"{component}.{name}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, path)
    return len(tensors) // 3


def unzero_temporal_layers(module) -> None:
    """diffusers starts each temporal layer's last projection/convolution at zero (an identity layer): give the
    zeroed Conv3d and Linear weights random values, so a probe of random weights times layers that do something."""
    import torch

    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (torch.nn.Conv3d, torch.nn.Linear)) and not m.weight.abs().sum():
                m.weight.normal_(0, 0.02)


def unet_step_flop_counts(forward, sample, timestep, encoder_hidden_states) -> dict[str, dict]:
    """FLOPs of one UNet forward on these inputs by module and op, as torch's FlopCounterMode counts them:
    {"Global": {op: flops}, "UNet3DConditionModel.down_blocks.0...": {op: flops}, ...}.

    forward: the UNet's eager forward where the UNet is compiled (the counter cannot see inside compiled code).
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward(sample, timestep, encoder_hidden_states=encoder_hidden_states)
    return counter.get_flop_counts()


def unet_step_flops(forward, sample, timestep, encoder_hidden_states) -> float:
    """FLOPs of one UNet forward on these inputs (unet_step_flop_counts, all modules)."""
    return float(sum(unet_step_flop_counts(forward, sample, timestep, encoder_hidden_states)["Global"].values()))


def cuda_seconds_per_call(fn, repeat: int = 10) -> float:
    """Seconds per fn() on the GPU, `repeat` calls back to back (as within a step: no sync between calls),
    timed by CUDA events after two untimed calls."""
    import torch

    fn(), fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / repeat


def timed(fn, repeat: int = 3, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall seconds of fn() (synchronizing CUDA around it), after `warmup` untimed calls."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def matmul_tflops(n: int = 8192, dtype=None, repeat: int = 10) -> float:
    """The card's measured dense bf16 matmul rate (random data), the ceiling UNet steps are compared to."""
    import torch

    dtype = dtype or torch.bfloat16
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * n**3 * repeat / (start.elapsed_time(end) / 1000) / 1e12


def actor_rates(rows: list[dict]) -> dict:
    """Steady clips per hour of a Ray job, from its index rows ('ok' ones with worker and restyle times).

    Per actor: the clips it finished after its first one, over the time from its first clip's end to its last
    clip's end, so start-up and compile stay out while any wait for input counts. Summed over actors. `busy` is
    the fraction of that span with at least one of the actor's clips in the model (clips in flight overlap);
    `idle` the lengths of the rest's periods, longest first (in a job: mostly between the actor's calls).
    """
    spans: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r.get("status") == "ok" and r.get("worker"):
            spans.setdefault(r["worker"], []).append((r["restyle_started_at"], r["restyle_finished_at"]))
    per_actor = {}
    for worker, clips in spans.items():
        first_end = min(end for _, end in clips)
        later = [(max(start, first_end), end) for start, end in clips if end > first_end]
        if not later:
            continue
        span = max(end for _, end in later) - first_end
        inside, reach, idle = 0.0, first_end, []  # the union of the later clips' spans, in start order
        for start, end in sorted(later):
            if start > reach:
                idle.append(start - reach)
            if end > reach:
                inside += end - max(start, reach)
                reach = end
        per_actor[worker] = {"clips_per_hour": 3600 * len(later) / span, "busy": inside / span, "clips": len(clips),
                             "idle": sorted(idle, reverse=True)}
    return {"clips_per_hour": sum(v["clips_per_hour"] for v in per_actor.values()) if per_actor else float("nan"),
            "actors": per_actor}


def max_unwritten(rows: list[dict]) -> int:
    """The most clips restyled but not yet written at any moment of a job, from its index rows ('ok' ones: a
    clip leaves the model at restyle_finished_at and its row is written at finished_at): what a kill at the worst
    moment would have lost of the model's work, besides one flush of index rows."""
    events = []
    for r in rows:
        if r.get("status") == "ok" and r.get("restyle_finished_at") is not None:
            events += [(r["restyle_finished_at"], 1), (r["finished_at"], -1)]
    most = held = 0
    for _, d in sorted(events, key=lambda e: (e[0], e[1])):  # a write at the same instant first
        held += d
        most = max(most, held)
    return most


class GpuUtilization:
    """NVML's GPU utilization (the share of each sample period in which a kernel ran), sampled by `nvidia-smi -lms`
    in the background while the context is open; `mean(t0, t1)` over unix times. Empty where nvidia-smi is absent."""

    def __init__(self, period_ms: int = 500):
        self.period_ms = period_ms
        self.samples: list[tuple[float, float]] = []

    def __enter__(self):
        import shutil
        import subprocess
        import tempfile

        self.proc = None
        if shutil.which("nvidia-smi"):
            self.log = tempfile.TemporaryFile("w+")  # a file, not a pipe: an hour of samples would fill a pipe
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,utilization.gpu",
                                          "--format=csv,noheader,nounits", f"-lms={self.period_ms}"],
                                         stdout=self.log, text=True)
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.log.seek(0)
            self.samples = parse_smi_utilization(self.log.read().splitlines())
            self.log.close()

    def mean(self, t0: float, t1: float) -> float:
        inside = [u for t, u in self.samples if t0 <= t <= t1]
        return sum(inside) / len(inside) / 100 if inside else float("nan")


def parse_smi_utilization(lines: list[str]) -> list[tuple[float, float]]:
    """[(unix time, percent)] of `nvidia-smi --query-gpu=timestamp,utilization.gpu --format=csv,noheader,nounits`
    lines ('2026/12/06 21:59:01.123, 97'; the first GPU's where there are several; the machine's local time)."""
    import datetime

    out, seen = [], set()
    for ln in lines:
        stamp, _, util = ln.partition(",")
        try:
            t = datetime.datetime.strptime(stamp.strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
            u = float(util)
        except ValueError:
            continue
        if t not in seen:
            seen.add(t)
            out.append((t, u))
    return out


# torch.compile's phases worth naming at an actor's start: (label, dynamo_timed key), the keys as
# torch._dynamo.utils.compilation_time_metrics holds them (seconds per compiled frame). They nest: the backend's time
# holds the graphs' load, which holds the wait for their kernels' compile (a first start; ~0 on a cached start).
COMPILE_PHASES = [("tracing", "bytecode_tracing"), ("backend", "OutputGraph.call_user_compiler"),
                  ("graphs loaded", "PyCodeCache.load_by_key_path"), ("kernels compiled", "async_compile.wait")]


def compile_breakdown(metrics: dict[str, list[float]]) -> str:
    """Where torch.compile's time went in a process, from dynamo's timers ('' where nothing was compiled):
    'torch.compile 8.1 s in 3 graphs: tracing 5.6, backend 1.7, graphs loaded 1.1, kernels compiled 0.0'.
    The rest of a warm-up is the compiled graphs' first calls (on GPUs: cuDNN's algorithm search, kernel loads)."""
    total = metrics.get("_compile.compile_inner", [])
    if not total:
        return ""
    parts = [f"{label} {sum(metrics[key]):.1f}" for label, key in COMPILE_PHASES if key in metrics]
    return f"torch.compile {sum(total):.1f} s in {len(total)} graphs: " + ", ".join(parts)


# Kernel kinds by name, first match wins (lower-case substrings of the names the CUDA profiler reports).
# Inductor's generated kernels come first: their names carry what they fuse only loosely.
KERNEL_KINDS = [
    ("generated: reduction (norm + fused elementwise)", ("triton_red", "triton_per")),
    ("generated: pointwise", ("triton_poi",)),
    ("generated: template matmul/conv", ("triton_tem",)),
    ("attention", ("flash", "fmha", "sdpa", "attention")),
    ("layout conversion", ("nchwtonhwc", "nhwctonchw", "transpose")),
    ("convolution", ("conv", "fprop", "implicit", "winograd")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "cublas", "addmm", "aten::mm", "bmm")),
    ("norm (eager)", ("norm", "moments")),  # GroupNorm statistics: RowwiseMoments
    ("elementwise (eager)", ("elementwise", "vectorized", "reduce", "copy", "cat", "fill", "memcpy", "memset")),
]


def kernel_kind(name: str) -> str:
    """A kernel's kind as KERNEL_KINDS names it, else 'other'."""
    low = name.lower()
    return next((k for k, keys in KERNEL_KINDS if any(key in low for key in keys)), "other")


def kernel_kinds(kernels: list[tuple[str, float]], kind_of=kernel_kind) -> dict[str, float]:
    """[(kernel name, seconds)] -> {kind: seconds}, kinds as kind_of names them (by default KERNEL_KINDS's, the
    rest 'other')."""
    out: dict[str, float] = {}
    for name, secs in kernels:
        kind = kind_of(name)
        out[kind] = out.get(kind, 0.0) + secs
    return out


def profiler_kernels(prof, cuda: bool) -> list[tuple[str, float, int]]:
    """[(kernel name, seconds, calls)] of a finished torch.profiler run, slowest first: the GPU kernels when
    `cuda`, else the CPU operators (a CPU run has no kernels of its own)."""
    import torch

    gpu = torch.autograd.DeviceType.CUDA
    rows = [(e.key, (e.self_device_time_total if cuda else e.self_cpu_time_total) / 1e6, e.count)
            for e in prof.key_averages() if not cuda or e.device_type == gpu]
    return sorted((r for r in rows if r[1] > 0), key=lambda r: -r[1])


def sdpa_calls(forward) -> list[dict]:
    """The attention calls one `forward()` makes, grouped by their inputs' shapes and strides.

    Returns [{"q": (shape, strides), "k": ..., "v": ..., "dtype", "calls"}] in first-seen order. Wraps
    torch.nn.functional.scaled_dot_product_attention for the call (diffusers looks it up on each call).
    """
    import torch
    import torch.nn.functional as F

    seen: dict[tuple, dict] = {}
    sdpa = F.scaled_dot_product_attention

    def record(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        if attn_mask is not None or is_causal or dropout_p or kw.get("enable_gqa"):
            raise NotImplementedError("sdpa_calls times plain attention only (no mask, causality or dropout)")
        key = tuple((tuple(t.shape), t.stride()) for t in (q, k, v)) + (q.dtype,)
        seen.setdefault(key, {"q": key[0], "k": key[1], "v": key[2], "dtype": q.dtype, "calls": 0})["calls"] += 1
        return sdpa(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)

    F.scaled_dot_product_attention = record
    try:
        with torch.no_grad():
            forward()
    finally:
        F.scaled_dot_product_attention = sdpa
    return list(seen.values())


def sdpa_inputs(call: dict, device: str, generator=None):
    """Random (q, k, v) for one `sdpa_calls` entry, laid out with the recorded shapes and strides."""
    import torch

    def strided(shape, stride):  # the smallest storage that holds every element the strides reach
        n = 1 + sum((size - 1) * st for size, st in zip(shape, stride))
        return torch.randn(n, device=device, dtype=call["dtype"], generator=generator).as_strided(shape, stride)

    return tuple(strided(*call[name]) for name in "qkv")


# torch's own choice, then each backend alone (torch.nn.attention.SDPBackend names)
SDPA_BACKENDS = {"default": None, "cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION",
                 "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}


def time_sdpa(call: dict, device: str, repeat: int = 10) -> dict[str, float]:
    """Seconds per call of one attention shape (an `sdpa_calls` entry) under each of SDPA_BACKENDS, on random
    inputs laid out with the recorded strides. NaN where a backend cannot run the shape on this device."""
    import contextlib

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = sdpa_inputs(call, device)

    def attend():
        return F.scaled_dot_product_attention(q, k, v)

    def seconds_per_call():
        return timed(attend, repeat=repeat)[0] if device == "cpu" else cuda_seconds_per_call(attend, repeat)

    out = {}
    for name, backend in SDPA_BACKENDS.items():
        only = sdpa_kernel([getattr(SDPBackend, backend)]) if backend else contextlib.nullcontext()
        try:
            with torch.no_grad(), only:
                out[name] = seconds_per_call()
        except RuntimeError:  # "No available kernel": this backend rejects the shape, dtype or device
            out[name] = float("nan")
    return out


def attention_flops(call: dict) -> float:
    """FLOPs of one attention call: QK^T and PV, 2 * B*H * L * S * D each (D: q's last dim)."""
    (b, h, lq, d), (_, _, s, _) = call["q"][0], call["k"][0]
    return 4.0 * b * h * lq * s * d


# Issue 5's targets: (what, threshold, whether higher is better); target_verdicts reads them off a run's rows.
TARGETS = (
    ("sampler ≥ 2.5 × the reference's clips/hour", 2.5, True),
    ("UNet steps ≥ 60 % of the measured bf16 matmul rate", 0.60, True),
    ("peak memory per clip ≤ the reference's", 1.0, False),
    ("Ray job ≥ 90 % of the bare sampler's clips/hour", 0.90, True),
    ("actor ready ≤ 60 s on its second start", 60.0, False),
    ("two GPUs ≥ 1.9 × one", 1.9, True),
)


def target_verdicts(info: dict, rows: list[dict]) -> list[dict]:
    """Issue 5's six targets against one benchmark run: [{target, measured, verdict}], the verdict 'met',
    'missed' or 'not measured' (the run lacked the section, or the figure needs a GPU)."""
    best = info.get("best_sampler") or {}
    ref_s, ref_peak = info.get("reference_s_per_clip"), info.get("reference_peak_gib")
    ceiling = info.get("bf16_matmul_tflops")
    ray = {r.get("gpus"): r for r in rows if r.get("what") == "ray job end to end" and "steady_clips_per_hour" in r}
    second = [r for r in rows if r.get("what") == "actor ready (second start)"
              and not str(r.get("note", "")).startswith("failed")]
    tag = f"{best.get('variant')}, batch {best.get('batch')}"
    got: list[tuple[float, str] | None] = [None] * len(TARGETS)  # (value compared, what the table says)
    if best and ref_s:
        x = ref_s / best["s_per_clip"]
        got[0] = x, f"{x:.2f} × ({tag}: {best['s_per_clip']:.3g} s vs {ref_s:.3g} s per clip)"
    if best.get("tflops") and ceiling:
        x = best["tflops"] / ceiling
        got[1] = x, f"{best['tflops']:.0f} of {ceiling:.0f} TFLOP/s = {100 * x:.0f} % ({tag})"
    if best.get("peak_gib_per_clip") is not None and ref_peak:
        x = best["peak_gib_per_clip"] / ref_peak
        got[2] = x, (f"{best['peak_gib_per_clip']:.1f} GiB per clip ({best['peak_gib']:.1f} GiB for "
                     f"{best['batch']}) vs {ref_peak:.1f} GiB")
    if 1 in ray:
        x = ray[1]["steady_vs_bare_sampler"]
        got[3] = x, f"{x:.3f} of the bare sampler (1 GPU, steady rate, actors {ray[1]['gpu_busy']:.1%} busy)"
    if second:
        x = second[0]["seconds"]
        got[4] = x, f"{x:.1f} s ({second[0]['variant']}, batch {second[0]['batch']})"
    if 1 in ray and 2 in ray:
        x = ray[2]["scaling_vs_1gpu"]
        got[5] = x, (f"{x:.2f} × ({ray[2]['steady_clips_per_hour']:.0f} vs {ray[1]['steady_clips_per_hour']:.0f} "
                     "clips/hour, steady)")
    out = []
    for (name, threshold, higher), g in zip(TARGETS, got):
        if g is None or g[0] != g[0]:  # absent or NaN (e.g. peak memory on CPU)
            out.append({"target": name, "measured": "not measured in this run", "verdict": "not measured"})
        else:
            met = g[0] >= threshold if higher else g[0] <= threshold
            out.append({"target": name, "measured": g[1], "verdict": "met" if met else "missed"})
    return out
