"""The optional speed layer, applied in this one place after the model loads (gpt-fast style).

Every switch is a field of v2v.config.SpeedSettings; none changes what is computed beyond floating-point
rounding. The core, the model and the sampler never import this package: the restyle stage calls
`apply_model_switches` and `compile_parts` (together: `apply_speed_settings`) on the loaded components, then
`warm_up`. What each switch gained or cost, and the switches
tried and dropped, are in benchmarks/RESULTS.md (decisions table).

    temporal_layers   the UNet's temporal layers without permuted copies or layout conversions (temporal)
    frame_attention   the temporal attention over the frames as one Triton kernel (frame_attention)
    channel_stats     GroupNorms from per-channel statistics combined per group (group_norm)
    upsample_phases   the UNet's upsamplers as four 2x2 convolutions, one per output phase (upsample)
    shared_prefix     a guided step's two halves share the layers before the first cross-attention (shared_prefix)
    compile           torch.compile of the UNet (and the VAE: compile_vae) at one fixed shape (fixed_shapes)
    precompile        the compiled parts stored in the compile cache, loaded by later starts (stored, shared_cache)
    background_compile  a first start runs eager while a subprocess compiles and stores the parts (background)
    cuda_graphs       the compiled UNet's call replayed from a CUDA graph (cuda_graph)

A transformer denoiser (Wan's) takes compile, precompile and background_compile (TRANSFORMER_SWITCHES): its forward
compiled, stored and shared as the UNet's is; the others are written for the UNet3D and are left off for it, said
once in the log.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from v2v.config import SpeedSettings
from v2v.speed.fixed_shapes import DenoiserCall, FixedBatch, PadFrames, as_transformer_output
from v2v.speed.shared_prefix import as_unet_output

logger = logging.getLogger(__name__)

# what applies to a transformer denoiser (Wan's)
TRANSFORMER_SWITCHES = ("compile", "precompile", "background_compile", "cudnn_benchmark")


def apply_speed_settings(components, speed: SpeedSettings, *, unet_batch: int | None = None, vae_chunk: int = 8,
                         shared_cache: str | None = None) -> dict:
    """Apply `speed` (its None switches resolved for the components' device) to the loaded components, in place:
    the model switches (`apply_model_switches`), then the compiled parts (`compile_parts`).

    unet_batch: rows per UNet forward the compiled graph is built for (2 x clips per batch with guidance: its
    embeddings, and its latents unless `shared_prefix`); smaller calls are padded up to it so a short last batch
    does not trigger a second compile.
    vae_chunk: frames per VAE call, the compiled VAE parts' batch.
    shared_cache: with precompile, a URI every machine reaches (v2v.speed.shared_cache): a part the local compile
    cache lacks is fetched from there, and a part built here is put there.
    Returns {part name: v2v.speed.stored.StoredPart} of the parts stored in the compile cache (empty without
    precompile): what each part's stored form did, for the start-up log (`stored_status`).
    """
    s = speed.resolved(components.device.type)
    apply_model_switches(components, s)
    return compile_parts(components, s, unet_batch=unet_batch, vae_chunk=vae_chunk, shared_cache=shared_cache)


def apply_model_switches(components, s: SpeedSettings) -> None:
    """The switches that change the model's modules (every one but compile and what comes with it), in place.
    s: resolved settings (SpeedSettings.resolved). The model runs eager after this; `compile_parts` may follow."""
    import torch

    # Process-wide flags that only act on CUDA kernels (set on CPU actors too, where they change nothing).
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = s.cudnn_benchmark
    if components.family.denoiser != "unet":
        asked = [f.name for f in dataclasses.fields(s)
                 if getattr(s, f.name) is True and f.name not in TRANSFORMER_SWITCHES]
        if asked:
            logger.info("speed switches %s are written for UNet3D models; this %s model runs without them", asked,
                        components.family.name)
        return
    unet = components.unet
    if s.temporal_layers:
        from v2v.speed.temporal import swap_temporal_layers

        swap_temporal_layers(unet)
    if s.channel_stats:  # after temporal_layers: its layers read the choice off their norms
        from v2v.speed.group_norm import use_channel_stats

        use_channel_stats(unet)
        use_channel_stats(components.vae)  # the VAE's too (2-D, per frame; 32 groups of 4-16 channels)
    if s.upsample_phases:
        from v2v.speed.upsample import use_upsample_phases

        use_upsample_phases(unet)  # the UNet's only: the VAE decoder's ran slower this way
    if s.frame_attention:
        from v2v.speed.frame_attention import install_frame_attention

        install_frame_attention(unet)
    if s.shared_prefix:
        from v2v.speed.shared_prefix import PairsForward

        unet.forward = PairsForward(unet)


def compile_parts(components, s: SpeedSettings, *, unet_batch: int | None = None, vae_chunk: int = 8,
                  shared_cache: str | None = None, build: bool = True) -> dict:
    """With s.compile: the denoiser's forward (and the VAE's parts: compile_vae) replaced by compiled ones at one
    fixed shape, stored and loaded with precompile, replayed from CUDA graphs with cuda_graphs. s: resolved
    settings, after `apply_model_switches`. Arguments and the returned parts as `apply_speed_settings`.

    build=False (with precompile): a part that neither the compile cache nor the shared cache holds is not compiled
    here; its first call (`warm_up`) raises v2v.speed.stored.NotStored instead, and `eager_again` undoes this.
    """
    import torch

    stored: dict = {}
    name = components.family.denoiser  # "unet" (zeroscope's UNet3D) or "transformer" (Wan's)
    model = getattr(components, name)
    is_unet = name == "unet"  # the UNet3D's switches, VAE parts and CUDA graph are written for it alone
    if s.compile:
        cache = _kernel_cache()
        eager = model.forward  # diffusers' forward, or PairsForward (torch.compile traces its __call__)
        model_fn = torch.compile(eager, fullgraph=False, dynamic=False)
        tensors_fn = None  # the denoiser as a function of three tensors, where it is stored or graphed (DenoiserCall)
        output = as_unet_output if is_unet else as_transformer_output
        vae = components.vae
        parts = [(vae.encoder, "vae_encoder"), (vae.decoder, "vae_decoder")] if s.compile_vae and is_unet else []
        vae_fns = [torch.compile(p.forward, fullgraph=False, dynamic=False) for p, _ in parts]
        precompile = s.precompile
        if precompile and not precompile_supported():
            logger.info("torch %s cannot save compiled functions (precompile): torch.compile with its kernel cache "
                        "instead, so later starts trace the model again", torch.__version__)
            precompile = False
        if precompile:
            from pathlib import Path

            from v2v.speed import shared_prefix
            from v2v.speed.shared_cache import SharedCache
            from v2v.speed.stored import StoredPart, denoiser_tensors, device_id, part_tensors

            # What a stored part is valid for besides its input shapes (v2v.speed.stored.part_key adds those,
            # torch's version and v2v's code): every switch that changes the model it traces.
            base = {"model": components.sha256, "dtype": str(model.dtype), "device": device_id(model.device)}
            if is_unet:
                base.update(temporal_layers=s.temporal_layers, frame_attention=s.frame_attention,
                            channel_stats=s.channel_stats, shared_prefix=s.shared_prefix,
                            upsample_phases=s.upsample_phases)
            shared = SharedCache(shared_cache, cache) if shared_cache else None
            folder = Path(cache) / "precompiled"
            # the function stored: the denoiser's forward as one of (module, three tensors); v2v's takes the pairs
            fn = shared_prefix.forward if is_unet and s.shared_prefix else denoiser_tensors
            tensors_fn = stored[name] = StoredPart(model, fn, name, {**base, "part": name}, folder,
                                                   fallback=DenoiserCall.tensors_only(model_fn), shared=shared,
                                                   build=build)
            for i, (p, part) in enumerate(parts):
                vae_fns[i] = stored[part] = StoredPart(p, part_tensors, part, {**base, "part": part}, folder,
                                                       fallback=vae_fns[i], shared=shared, build=build)
        if s.cuda_graphs and is_unet and model.device.type == "cuda":
            from v2v.speed.cuda_graph import GraphedCall

            # over the function of three tensors (the timestep moved to the GPU by DenoiserCall: recorded, a CPU
            # value would be replayed as it was); one graph for the one batch FixedBatch pads every call to
            tensors_fn = GraphedCall(DenoiserCall.tensors_only(model_fn) if tensors_fn is None else tensors_fn)
        if tensors_fn is not None:
            model_fn = DenoiserCall(tensors_fn, eager, output)
        # one fixed batch: `batch` rows, a guided step's text and negative halves; other clip shapes, and clips
        # retried alone, run eager
        model.forward = FixedBatch(model_fn, unet_batch, eager)
        for (part, _), fn in zip(parts, vae_fns):
            part.forward = PadFrames(fn, vae_chunk, part.forward)
    if not stored:
        _say_unused(shared_cache)
    return stored


def eager_again(components) -> None:
    """Undo `compile_parts`: every part's forward back to what it was before (the model switches stay)."""
    model = getattr(components, components.family.denoiser)
    parts = [model] + ([components.vae.encoder, components.vae.decoder] if components.family.denoiser == "unet"
                       else [])
    for module in parts:
        f = module.__dict__.get("forward")
        if not isinstance(f, (FixedBatch, PadFrames)):
            continue
        eager = f.eager
        if getattr(eager, "__self__", None) is module and getattr(eager, "__func__", None) is type(module).forward:
            del module.forward  # it was the class's own forward
        else:
            module.forward = eager


def _say_unused(shared_cache: str | None) -> None:
    if shared_cache:
        logger.warning("shared compile cache %s unused: it holds stored compiled parts, and this actor stores none "
                       "(they need the speed switches compile and precompile)", shared_cache)


def _kernel_cache() -> str:
    """A persistent cache for torch.compile's kernels: an actor's second start reuses them instead of recompiling.
    Set outright: torch writes its own /tmp default into TORCHINDUCTOR_CACHE_DIR the first time it asks."""
    from v2v.model.loading import default_cache_dir

    cache = os.environ.get("V2V_COMPILE_CACHE") or str(default_cache_dir() / "inductor")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    return cache


def precompile_supported() -> bool:
    """Whether this torch can save torch.compile's compiled functions and load them (2.11 and 2.13 can)."""
    import torch

    return all(hasattr(torch.compiler, n) for n in ("load_compiled_function", "keep_tensor_guards_unsafe"))


def warm_up(components, unet_batch: int, frames: int, height: int, width: int) -> dict[str, float]:
    """One UNet forward at the working shape (and one VAE encoder and decoder call where those are compiled),
    so compilation and autotuning happen at actor start-up rather than inside the first batch (the actor is
    'ready' once this returns). Returns each part's seconds (compile or cached-kernel load included)."""
    import time

    import torch

    from v2v.model.sampler import clip_timesteps, guided_latents, schedule

    if components.family.denoiser != "unet":
        return _warm_up_transformer(components, unet_batch, frames, height, width)
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
    # Timesteps exactly as the sampler passes them (one per clip, of the scheduler's dtype, on the model's device):
    # another layout, device or dtype would be another compiled graph.
    t = guided_latents(unet, clip_timesteps([schedule(components.scheduler, 10, 1.0)[1][0]] * (unet_batch // 2),
                                            unet.device))
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


def _warm_up_transformer(components, batch: int, frames: int, height: int, width: int) -> dict[str, float]:
    """One transformer forward at the working shape where it is compiled: `batch` rows of latents (frames 4k+1 ->
    k+1 latent frames), the text encoder's padded embeddings, timesteps as the batcher passes them."""
    import time

    import torch

    from v2v.model.sampler import clip_timesteps, schedule
    from v2v.model.wan import MAX_SEQUENCE_LENGTH

    model = getattr(components, components.family.denoiser)
    if not isinstance(model.forward, FixedBatch):
        return {}
    g = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(batch, *components.latent_shape(frames, height, width), generator=g)
    e = torch.randn(batch, MAX_SEQUENCE_LENGTH, model.config.text_dim, generator=g)
    t = clip_timesteps([schedule(components.scheduler, 10, 1.0)[1][0]] * batch, model.device).float()  # as wan.predict
    t0 = time.perf_counter()
    with torch.no_grad():
        model(x.to(model.device, model.dtype), t, encoder_hidden_states=e.to(model.device, model.dtype),
              return_dict=False)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return {"transformer": time.perf_counter() - t0}


def stored_status(stored: dict) -> dict[str, str]:
    """{part: 'built' (compiled in this process) | 'fetched' (from the shared cache, then loaded) | 'loaded' (from
    the local cache) | 'failed: why'} of what apply_speed_settings returned, for the start-up log."""
    return {k: f"failed: {p.failed}" if p.failed else "built" if p.built else "fetched" if p.fetched else "loaded"
            for k, p in stored.items()}
