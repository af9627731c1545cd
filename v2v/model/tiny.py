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
    """Write components in the diffusers folder layout (safetensors weights, model_index.json)."""
    import diffusers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("unet", "vae", "text_encoder"):
        components[name].save_pretrained(folder / name, safe_serialization=True)
    components["tokenizer"].save_pretrained(folder / "tokenizer")
    components["scheduler"].save_pretrained(folder / "scheduler")
    index = {
        "_class_name": pipeline_class,
        "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", type(components["scheduler"]).__name__],
        "text_encoder": ["transformers", type(components["text_encoder"]).__name__],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", type(components["unet"]).__name__],
        "vae": ["diffusers", type(components["vae"]).__name__],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))


def save_tiny(components: dict, folder: str | Path) -> None:
    """The tiny model's components as a model folder: save_components, and its native clip geometry in v2v.json
    (it travels with the folder, so copies of it on s3://... keep it)."""
    save_components(components, folder)
    (Path(folder) / "v2v.json").write_text(json.dumps({"width": TINY_SIZE, "height": TINY_SIZE,
                                                       "frames": TINY_FRAMES}))


def tiny_model_dir(cache_dir: str | Path | None = None) -> Path:
    """The tiny model's folder, built on first use. Safe when several processes race to build it."""
    from v2v.model.loading import default_cache_dir, publish_folder

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    final = root / f"tiny-v{TINY_VERSION}"
    if (final / "model_index.json").exists():
        return final
    return publish_folder(final, lambda tmp: save_tiny(build_tiny_components(), tmp))
