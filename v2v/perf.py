"""Performance switches, applied in this one place after the model loads (gpt-fast style).

Each is a JobConfig setting; none changes what is computed beyond floating-point rounding. Their measured
gains are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def apply_perf_settings(components, *, channels_last: bool = False, fuse_qkv: bool = False,
                        compile: bool = False, unet_batch: int | None = None, compile_vae: bool = False,
                        vae_chunk: int = 8, compile_aot: bool = False, precompile: bool = False,
                        temporal_layers: bool = False, frame_attention: bool = False,
                        channel_stats: bool = False, shared_prefix: bool = False, upsample_phases: bool = False,
                        cuda_graphs: bool = False, cudnn_benchmark: bool = True,
                        shared_cache: str | None = None) -> dict:
    """The switches as JobConfig names them (with `compile` decided, see config.resources).

    unet_batch: rows per UNet forward the compiled graph is built for (2 x clips per batch with guidance: its
    embeddings, and its latents unless `shared_prefix`); smaller calls are padded up to it so a short last batch
    does not trigger a second compile.
    compile_vae: with `compile`, the VAE's encoder and decoder too, each padded to `vae_chunk` frames a call.
    compile_aot: with `compile`, each compiled part is an AOTInductor package stored in the cache (v2v.aot), so
    later starts load it instead of tracing the model again.
    precompile: with `compile` (not `compile_aot`), each compiled part is torch.compile's own saved form of it
    (v2v.aot.PrecompiledForward) in the cache: later starts load it instead of tracing; no C++ compiler needed.
    A torch without that API (older ones; 2.11 and 2.13 have it) gets torch.compile with its kernel cache, said once.
    temporal_layers: the UNet's temporal layers without permuted copies or layout conversions (v2v.temporal).
    frame_attention: the temporal transformers' attention over the frames as one Triton kernel
    (v2v.frame_attention); SDPA where the kernel does not apply (the CPU).
    channel_stats: the UNet's and the VAE's GroupNorms take their statistics per channel, then combine them per
    group (v2v.group_norm): reductions over contiguous channels-last rows.
    shared_prefix: a guided step's two halves share the layers before the first cross-attention, computed once on
    the clips' latents (v2v.unet); the UNet's forward then takes the latents once (`takes_pairs`), and
    `unet_batch` counts the embeddings (2 x clips), the compiled graph's latents being half of them.
    upsample_phases: the UNet's upsamplers (nearest 2x, then a 3x3 convolution) computed as four 2x2 convolutions
    of their input, one per output phase (v2v.upsample).
    cuda_graphs: with `compile`, on CUDA, the compiled UNet's call is recorded once as a CUDA graph and replayed
    (v2v.cuda_graph): one launch a step instead of ~2,000 from Python; the same kernels. Nothing on the CPU.
    cudnn_benchmark (GPU): cuDNN times each convolution shape's algorithms on its first call and keeps the
    fastest; off, its heuristics pick one with no search at start.
    shared_cache: with compile_aot or precompile, a URI every machine reaches (v2v.shared_cache): a part the
    local compile cache lacks is fetched from there, and a part built here is put there.
    Returns {part name: v2v.aot.AotForward or PrecompiledForward} of the parts stored in the cache (empty
    without compile_aot or precompile): what each part's stored form did, for the start-up log (`aot_status`).
    Measured and left out because they did not pay (benchmarks/RESULTS.md): inductor freezing, the temporal
    convolution layers run in 2-D (seventh section; its CUDA graphs, dropped there, were likely skipped by
    inductor for the CPU timestep: `cuda_graphs` records one itself, 1.5 % a step, twenty-fifth section);
    coordinate-descent tuning and max-autotune (eighteenth section: 0.6-3.4 % on the blocks measured, for 3-14
    times their compile; nineteenth: the whole UNet under coordinate descent 1.6 % a step, for 3.7 times its
    compile; twentieth: the persistent TMA product templates, 1.2 % slower on three blocks for 5-12 times their
    compile).
    """
    import torch

    unet = components.unet
    aot: dict = {}
    # Process-wide flags that only act on CUDA kernels (set on CPU actors too, where they change nothing).
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = cudnn_benchmark
    if temporal_layers:
        from v2v.temporal import swap_temporal_layers

        swap_temporal_layers(unet)
    if channel_stats:  # after temporal_layers: its layers read the choice off their norms
        from v2v.group_norm import use_channel_stats

        use_channel_stats(unet)
        # and the VAE's (2-D, per frame; 32 groups of 4-16 channels): 207 -> 159 ms a clip for its encoder and
        # decoder on an H200 (benchmarks/RESULTS.md, twenty-first section)
        use_channel_stats(components.vae)
    if upsample_phases:
        from v2v.upsample import use_upsample_phases

        # the UNet's only: the VAE decoder's three (512-256 channels, up to 576x320) ran 23 % slower this way on an
        # H200 (benchmarks/RESULTS.md, twenty-fourth section)
        use_upsample_phases(unet)
    if channels_last:
        # UNet3D's 2D convolutions see (B*F, C, H, W); channels-last weights let cuDNN skip layout conversions.
        # Only rank-4 (Conv2d) weights: temporal_layers gives the temporal Conv3d layers theirs.
        for model in (unet, components.vae):
            for m in model.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.to(memory_format=torch.channels_last)
    if fuse_qkv:
        # One (D, 3D) projection instead of three (D, D) in self-attention, one (D', 2D) for cross-attention's
        # key and value: fewer, larger matrix products over the same weights.
        unet.fuse_qkv_projections()
    if frame_attention:  # after fuse_qkv, which sets every layer's processor
        from v2v.frame_attention import install_frame_attention

        install_frame_attention(unet)
    if shared_prefix:
        from v2v.unet import PairsForward

        unet.forward = PairsForward(unet)
    if compile:
        # A persistent cache: an actor's second start reuses compiled kernels instead of recompiling. Set
        # outright: torch writes its own /tmp default into TORCHINDUCTOR_CACHE_DIR the first time it asks.
        from v2v.models import default_cache_dir

        cache = os.environ.get("V2V_COMPILE_CACHE") or str(default_cache_dir() / "inductor")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
        os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
        eager = unet.forward  # diffusers' forward, or PairsForward (torch.compile traces its __call__)
        unet_fn = torch.compile(eager, fullgraph=False, dynamic=False)
        tensors_fn = None  # the UNet as a function of three tensors, where it is stored or graphed (UNetCall)
        vae = components.vae
        parts = [(vae.encoder, "vae_encoder"), (vae.decoder, "vae_decoder")] if compile_vae else []
        vae_fns = [torch.compile(p.forward, fullgraph=False, dynamic=False) for p, _ in parts]
        if precompile and not compile_aot and not precompile_supported():
            logger.info("torch %s cannot save compiled functions (precompile): torch.compile with its kernel cache "
                        "instead, so later starts trace the model again", torch.__version__)
            precompile = False
        if compile_aot or precompile:
            from pathlib import Path

            from v2v.aot import AotForward, PrecompiledForward, device_id, part_tensors, unet_tensors
            from v2v.shared_cache import SharedCache

            # What a compiled part is valid for besides its input shapes (v2v.aot.package_key adds those and torch).
            base = {"model": components.sha256, "dtype": str(unet.dtype),
                    "device": device_id(unet.device), "channels_last": channels_last, "fuse_qkv": fuse_qkv,
                    "temporal_layers": temporal_layers, "frame_attention": frame_attention,
                    "channel_stats": channel_stats, "shared_prefix": shared_prefix,
                    "upsample_phases": upsample_phases}
            shared = SharedCache(shared_cache, cache) if shared_cache else None
            # AOTInductor packages, or torch.compile's saved functions: both of (module, tensors)
            form, folder = (AotForward, "aot") if compile_aot else (PrecompiledForward, "precompiled")
            from v2v import unet as v2v_unet

            # the function stored: the UNet's forward as one of (module, three tensors); v2v's takes the pairs
            fn = v2v_unet.forward if shared_prefix else unet_tensors
            tensors_fn = aot["unet"] = form(unet, fn, "unet", {**base, "part": "unet"}, Path(cache) / folder,
                                            fallback=UNetCall.tensors_only(unet_fn), shared=shared)
            for i, (p, name) in enumerate(parts):
                vae_fns[i] = aot[name] = form(p, part_tensors, name, {**base, "part": name}, Path(cache) / folder,
                                              fallback=vae_fns[i], shared=shared)
        if cuda_graphs and unet.device.type == "cuda":
            from v2v.cuda_graph import GraphedCall

            # over the function of three tensors (the timestep moved to the GPU by UNetCall: recorded, a CPU value
            # would be replayed as it was); one graph for the one batch FixedBatch pads every call to
            tensors_fn = GraphedCall(UNetCall.tensors_only(unet_fn) if tensors_fn is None else tensors_fn)
        if tensors_fn is not None:
            unet_fn = UNetCall(tensors_fn, eager)
        unet.forward = FixedBatch(unet_fn, unet_batch, eager)
        for (part, _), fn in zip(parts, vae_fns):
            part.forward = PadFrames(fn, vae_chunk, part.forward)
    if shared_cache and not aot:
        logger.warning("shared compile cache %s unused: it holds stored compiled parts, and this actor stores none "
                       "(they need compile with precompile or compile_aot)", shared_cache)
    return aot


def precompile_supported() -> bool:
    """Whether this torch can save torch.compile's compiled functions and load them (2.11 and 2.13 can)."""
    import torch

    return all(hasattr(torch.compiler, n) for n in ("load_compiled_function", "keep_tensor_guards_unsafe"))


class UNetCall:
    """The UNet's call convention (sample, timestep, encoder_hidden_states=..., return_dict=...) over a function
    of three tensors (an AOTInductor package takes tensors only, all on the model's device)."""

    def __init__(self, fn, eager):
        self.fn, self.eager = fn, eager

    @staticmethod
    def tensors_only(forward):
        return lambda sample, t, e: forward(sample, t, encoder_hidden_states=e, return_dict=False)[0]

    def __call__(self, sample, timestep, encoder_hidden_states, return_dict: bool = True, **kwargs):
        import torch

        from v2v.unet import as_unet_output

        if kwargs:  # the sampler passes none; anything else (e.g. cross_attention_kwargs) runs eager
            return self.eager(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                              return_dict=return_dict, **kwargs)
        # diffusers moves a 0-d timestep to the sample's device itself: same values either way
        out = self.fn(sample, torch.as_tensor(timestep, device=sample.device), encoder_hidden_states)
        return as_unet_output(out, return_dict)


def pad_rows(x, size: int):
    """(n, ...) -> (size, ...) by repeating the last row (n <= size): what the padded rows compute is cut away."""
    import torch

    return x if x.shape[0] >= size else torch.cat([x, x[-1:].expand(size - x.shape[0], *x.shape[1:])])


class FixedBatch:
    """Calls a shape-specialized (compiled) UNet forward at one batch size and one clip shape.

    A call with fewer than `size` latents is padded by repeating its last latent (and text embedding) and the
    result is cut back, so every call reuses the one compiled graph; padded rows cost compute, not a compile.
    Larger calls, or `size=None`, pass through unchanged (and compile for their own shape).
    The first call fixes the clip shape (C, F, h, w). Latents of another shape (a video's shorter last clip)
    go to `eager` when given: each new frame count would otherwise cost a full compile.

    Over a forward that takes a guided step's pairs (`eager.takes_pairs`, v2v.unet), `size` counts embeddings and
    the graph takes size / 2 latents: a guided call's two halves of embeddings are padded each to size / 2; an
    unguided call of up to size / 2 latents runs as a pair of itself and keeps the first half (one graph for
    both, at the cost an unguided call padded to `size` had before).
    """

    def __init__(self, forward, size: int | None, eager=None):
        self.forward = forward
        self.size = size
        self.eager = eager
        self.shape = None
        self.takes_pairs = getattr(eager, "takes_pairs", False)

    def __call__(self, sample, timestep, encoder_hidden_states, **kwargs):
        import torch

        if self.shape is None:
            self.shape = tuple(sample.shape[1:])
        elif tuple(sample.shape[1:]) != self.shape and self.eager is not None:
            return self.eager(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs)
        n, e = sample.shape[0], encoder_hidden_states
        latents = self.size // 2 if self.takes_pairs and self.size else self.size  # the graph's
        if latents is None or n > latents or (n == latents and e.shape[0] == self.size):
            return self.forward(sample, timestep, encoder_hidden_states=e, **kwargs)
        if isinstance(timestep, torch.Tensor) and timestep.ndim == 1 and timestep.shape[0] == n:
            timestep = pad_rows(timestep, latents)
        if not self.takes_pairs:
            keep = slice(0, n)
        else:  # (uncond, text) halves padded each; an unguided call as the pair of itself
            pairs = e.shape[0] == 2 * n
            e = torch.cat([pad_rows(h, latents) for h in (e.chunk(2) if pairs else (e, e))])
            keep = [*range(n), *range(latents, latents + n)] if pairs else slice(0, n)
        out = self.forward(pad_rows(sample, latents), timestep, encoder_hidden_states=pad_rows(e, self.size),
                           **kwargs)
        if isinstance(out, tuple):  # return_dict=False
            return (out[0][keep],) + tuple(out[1:])
        out.sample = out.sample[keep]
        return out


class PadFrames:
    """Calls a shape-specialized (compiled) VAE encoder or decoder on exactly `size` contiguous frames.

    The VAE is 2-D: each frame is computed alone (its GroupNorms are per frame), so a short chunk (a batch's
    last) is padded with copies of its last frame and the result cut back; larger chunks and other frame
    sizes go to `eager`. One compiled graph per part, never a compile mid-job.
    """

    def __init__(self, forward, size: int, eager):
        self.forward, self.size, self.eager = forward, size, eager
        self.shape = None

    def __call__(self, sample, *args, **kwargs):
        if self.shape is None:
            self.shape = tuple(sample.shape[1:])
        n = sample.shape[0]
        if n > self.size or tuple(sample.shape[1:]) != self.shape:
            return self.eager(sample, *args, **kwargs)
        # One memory layout too: the sampler's pixels are a permuted view of (F, H, W, 3) frames, and a graph
        # is specialized to its input's strides (another layout would compile a second graph mid-job).
        return self.forward(pad_rows(sample, self.size).contiguous(), *args, **kwargs)[:n]


def warm_up(components, unet_batch: int, frames: int, height: int, width: int) -> dict[str, float]:
    """One UNet forward at the working shape (and one VAE encoder and decoder call where those are compiled),
    so compilation and autotuning happen at actor start-up rather than inside the first batch (the actor is
    'ready' once this returns). Returns each part's seconds (compile or cached-kernel load included)."""
    import time

    import torch

    from v2v.sampler import schedule
    from v2v.unet import guided_latents

    unet = components.unet

    def sync():  # so each part's time is its own, not queued GPU work of the one before
        if unet.device.type == "cuda":
            torch.cuda.synchronize()

    h8, w8 = height // components.vae_scale_factor, width // components.vae_scale_factor
    g = torch.Generator("cpu").manual_seed(0)
    # a guided step's call: embeddings for 2 x clips, the clips' latents as the forward takes them
    x = torch.randn(unet_batch // 2, unet.config.in_channels, frames, h8, w8, generator=g)
    x = guided_latents(unet, x.to(unet.device, unet.dtype))
    dim = components.text_encoder.config.hidden_size
    e = torch.randn(unet_batch, components.tokenizer.model_max_length, dim, generator=g).to(unet.device, unet.dtype)
    # A timestep exactly as the sampler passes it (a 0-d CPU tensor of the scheduler's dtype): another device or
    # dtype would be another compiled graph.
    t = schedule(components.scheduler, 10, 1.0)[1][0]
    vae = components.vae
    seconds = {}
    with torch.no_grad():
        t0 = time.perf_counter()
        unet(x, t, encoder_hidden_states=e, return_dict=False)
        sync()
        seconds["unet"] = time.perf_counter() - t0
        # (frames, C, H, W) pixels into the encoder, latents into the decoder, `vae_chunk` frames a call
        for name, part, shape in (("vae_encoder", vae.encoder, (3, height, width)),
                                  ("vae_decoder", vae.decoder, (vae.config.latent_channels, h8, w8))):
            if isinstance(part.forward, PadFrames):
                t0 = time.perf_counter()
                part(torch.randn(part.forward.size, *shape, generator=g).to(vae.device, vae.dtype))
                sync()
                seconds[name] = time.perf_counter() - t0
    return seconds


def aot_status(aot: dict) -> dict[str, str]:
    """{part: 'built' (compiled in this process) | 'fetched' (from the shared cache, then loaded) | 'loaded' (from
    the local cache) | 'failed: why'} of what apply_perf_settings returned, for the start-up log."""
    return {k: f"failed: {p.failed}" if p.failed else "built" if p.built else "fetched" if p.fetched else "loaded"
            for k, p in aot.items()}
