"""The embedded default model, `tiny`: real UNet3D / VAE / CLIP mechanics at toy size, built in code.

Nothing is downloaded. The components are built with fixed seeds, saved once in the diffusers folder layout
and then loaded back through `v2v.model.loading.load_components`, the same code path real models take. Its pictures
are meaningless; its shapes, dtypes, schedulers and random draws are the real ones.
"""

from __future__ import annotations

import json
from pathlib import Path

# Bump when the architecture or seeds change, so stale caches are rebuilt instead of reused.
TINY_VERSION = 2
# 64x64 frames -> 8x8 latents (the VAE has 4 blocks, so the real 8x spatial factor), 8 frames per clip.
TINY_SIZE = 64
TINY_FRAMES = 8

_SCHEDULER_CONFIG = {
    # zeroscope_v2_576w's scheduler settings.
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode character table (byte-level BPE's base alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tiny_tokenizer():
    """A CLIP tokenizer over a byte-level vocabulary built here: every byte, alone and word-final, no merges.

    So one character is one token, and the 77-token limit is reached at about 75 characters.
    """
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_tiny_components() -> dict:
    """Build the tiny unet, vae, text_encoder, tokenizer and scheduler with fixed seeds (float32, CPU)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet3DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        torch.manual_seed(1)
        vae = AutoencoderKL(
            block_out_channels=(8, 16, 16, 16),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            norm_num_groups=8,
            layers_per_block=1,
            sample_size=TINY_SIZE,
        )
        torch.manual_seed(2)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                vocab_size=len(tokenizer),
                max_position_embeddings=77,
                projection_dim=32,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    scheduler = DDIMScheduler.from_config({k: v for k, v in _SCHEDULER_CONFIG.items() if k != "_class_name"})
    for m in (unet, vae, text_encoder):
        m.eval()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def save_components(components: dict, folder: str | Path, pipeline_class: str = "VideoToVideoSDPipeline") -> None:
    """Write components in the diffusers folder layout (safetensors weights, model_index.json naming each part's
    library and class)."""
    import diffusers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in components.items():
        if name in ("tokenizer", "scheduler"):
            part.save_pretrained(folder / name)
        else:
            part.save_pretrained(folder / name, safe_serialization=True)
    index = {"_class_name": pipeline_class, "_diffusers_version": diffusers.__version__,
             **{name: [type(components[name]).__module__.split(".")[0], type(components[name]).__name__]
                for name in sorted(components)}}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def save_tiny(components: dict, folder: str | Path) -> None:
    """The tiny model's components as a model folder: save_components, and its native clip geometry in v2v.json
    (it travels with the folder, so copies of it on s3://... keep it)."""
    save_components(components, folder)
    (Path(folder) / "v2v.json").write_text(json.dumps({"width": TINY_SIZE, "height": TINY_SIZE,
                                                       "frames": TINY_FRAMES}))


def tiny_model_dir(cache_dir: str | Path | None = None) -> Path:
    """The tiny model's folder, built on first use. Safe when several processes race to build it."""
    return _built_once(f"tiny-v{TINY_VERSION}", lambda tmp: save_tiny(build_tiny_components(), tmp), cache_dir)


def _built_once(name: str, build, cache_dir: str | Path | None) -> Path:
    """The cache's folder `name`, written by build(tmp folder) on first use (model.loading.publish_folder)."""
    from v2v.model.loading import default_cache_dir, publish_folder

    final = (Path(cache_dir) if cache_dir else default_cache_dir()) / name
    if (final / "model_index.json").exists():
        return final
    return publish_folder(final, build)


# tiny-wan: Wan 2.1's mechanics (flow-matching transformer with RoPE, causal 3-D VAE, UMT5) at toy size.
TINY_WAN_VERSION = 1
TINY_WAN_SIZE = 32  # 32x32 frames -> 4x4 latents -> 2x2 patches
TINY_WAN_FRAMES = 9  # 4k+1: 3 latent frames

_WAN_SCHEDULER_CONFIG = {  # Wan2.1-T2V-1.3B-Diffusers' scheduler settings
    "num_train_timesteps": 1000, "prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0,
}


def tiny_t5_tokenizer():
    """A T5-style fast tokenizer over bytes, built here: <pad> 0, </s> 1 (appended to every text), <unk> 2, then one
    token per byte, no merges."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{ch: i + 3 for i, ch in enumerate(chars)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def build_tiny_wan_components() -> dict:
    """The tiny Wan transformer, VAE, UMT5 text encoder, tokenizer and scheduler with fixed seeds (float32, CPU)."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = tiny_t5_tokenizer()
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                               num_heads=4, relative_attention_num_buckets=8, pad_token_id=0,
                                               eos_token_id=1, decoder_start_token_id=0))
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                        in_channels=16, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32)
    scheduler = UniPCMultistepScheduler(**_WAN_SCHEDULER_CONFIG)
    for m in (transformer, vae, text_encoder):
        m.eval()
    return {"transformer": transformer, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": scheduler}


def save_tiny_wan(components: dict, folder: str | Path) -> None:
    """As WanVideoToVideoPipeline.save_pretrained lays a model out, plus v2v.json (its clip geometry)."""
    save_components(components, folder, "WanVideoToVideoPipeline")
    (Path(folder) / "v2v.json").write_text(json.dumps({"width": TINY_WAN_SIZE, "height": TINY_WAN_SIZE,
                                                       "frames": TINY_WAN_FRAMES}))


def tiny_wan_dir(cache_dir: str | Path | None = None) -> Path:
    """The tiny Wan model's folder, built on first use (safe when processes race to build it)."""
    return _built_once(f"tiny-wan-v{TINY_WAN_VERSION}", lambda tmp: save_tiny_wan(build_tiny_wan_components(), tmp),
                       cache_dir)
